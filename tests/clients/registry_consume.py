"""Reads a topic the way a Kafka shop's service would, with confluent-kafka's Consumer and the
official deserializer for FORMAT:

- avro: AvroDeserializer, writer schemas from the registry by the id in each message;
- protobuf: the .proto registered for the topic's values, compiled with protoc (grpcio-tools)
  into a message class, read by ProtobufDeserializer.

usage: registry_consume.py FORMAT BOOTSTRAP REGISTRY_URL TOPIC COUNT; prints a JSON list of
{"key", "value"} once COUNT messages were read (Avro timestamps as ISO text, decimals as
text; Protobuf values
with the .proto field names, plus "present": the fields set on the wire).
"""

import importlib
import importlib.resources
import json
import pathlib
import sys
import tempfile
import time
import uuid

from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.serialization import MessageField, SerializationContext

FORMAT, BOOTSTRAP, REGISTRY, TOPIC = sys.argv[1:5]
COUNT = int(sys.argv[5])
registry = SchemaRegistryClient({"url": REGISTRY})


def avro_reader():
    from confluent_kafka.schema_registry.avro import AvroDeserializer

    deserialize = AvroDeserializer(registry)
    return lambda value, context: {"value": deserialize(value, context)}


def protobuf_reader():
    from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer
    from google.protobuf import json_format
    from grpc_tools import protoc

    registered = registry.get_latest_version(f"{TOPIC}-value")
    out_dir = pathlib.Path(tempfile.mkdtemp())
    (out_dir / "value.proto").write_text(registered.schema.schema_str)
    # The well-known types (google/protobuf/*.proto) ship inside grpc_tools.
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    arguments = ["protoc", f"-I{out_dir}", f"-I{well_known}", f"--python_out={out_dir}"]
    if protoc.main(arguments + ["value.proto"]) != 0:
        sys.exit("protoc could not compile the registered schema")
    sys.path.insert(0, str(out_dir))
    module = importlib.import_module("value_pb2")
    (name,) = module.DESCRIPTOR.message_types_by_name
    deserialize = ProtobufDeserializer(getattr(module, name), {"use.deprecated.format": False})

    def read(value, context):
        message = deserialize(value, context)
        return {
            "value": json_format.MessageToDict(message, preserving_proto_field_name=True),
            "present": sorted(f.name for f, _ in message.ListFields()),
        }

    return read


read = {"avro": avro_reader, "protobuf": protobuf_reader}[FORMAT]()
consumer = Consumer({
    "bootstrap.servers": BOOTSTRAP,
    "group.id": f"registry-consume-{uuid.uuid4()}",
    "auto.offset.reset": "earliest",
})
consumer.subscribe([TOPIC])
out = []
deadline = time.time() + 60
while len(out) < COUNT and time.time() < deadline:
    message = consumer.poll(1.0)
    if message is None or message.error():
        continue
    context = SerializationContext(TOPIC, MessageField.VALUE)
    key = message.key().decode() if message.key() else None
    out.append({"key": key, **read(message.value(), context)})
consumer.close()
# Avro timestamps as ISO text, decimals as their exact text.
print(json.dumps(out, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v)))
