"""Produces registry-framed Protobuf with confluent-kafka's official ProtobufSerializer (the
message class is built at run time from a descriptor, as no protoc runs here): documents
keyed by plain string ids {id, title, body, n, tags}, an update, a tombstone, and a message
of the nested type Doc.Note (a message-index path other than [0]).

usage: protobuf_produce.py BOOTSTRAP REGISTRY_URL TOPIC; prints one JSON object.
"""

import json
import sys

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext, StringSerializer
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

BOOTSTRAP, REGISTRY, TOPIC = sys.argv[1:4]
F = descriptor_pb2.FieldDescriptorProto

file = descriptor_pb2.FileDescriptorProto(name="docs.proto", package="shop", syntax="proto3")
doc = file.message_type.add(name="Doc")
for name, number, kind, label in [
    ("id", 1, F.TYPE_STRING, F.LABEL_OPTIONAL),
    ("title", 2, F.TYPE_STRING, F.LABEL_OPTIONAL),
    ("body", 3, F.TYPE_STRING, F.LABEL_OPTIONAL),
    ("n", 4, F.TYPE_INT64, F.LABEL_OPTIONAL),
    ("tags", 5, F.TYPE_STRING, F.LABEL_REPEATED),
]:
    doc.field.add(name=name, number=number, type=kind, label=label)
note = doc.nested_type.add(name="Note")
note.field.add(name="id", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
note.field.add(name="body", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)

pool = descriptor_pool.DescriptorPool()
pool.Add(file)
Doc = message_factory.GetMessageClass(pool.FindMessageTypeByName("shop.Doc"))
Note = message_factory.GetMessageClass(pool.FindMessageTypeByName("shop.Doc.Note"))

registry = SchemaRegistryClient({"url": REGISTRY})
config = {"use.deprecated.format": False}
serialize_doc = ProtobufSerializer(Doc, registry, config)
serialize_note = ProtobufSerializer(Note, registry, config)
producer = Producer({"bootstrap.servers": BOOTSTRAP})
strings = StringSerializer()
ctx = SerializationContext(TOPIC, MessageField.VALUE)
produced = 0


def send(key, value):
    global produced
    producer.produce(TOPIC, key=strings(key), value=value)
    # One record per produce request (see avro_produce.py: the test broker's watermarks).
    producer.flush(30)
    produced += 1


send("p1", serialize_doc(Doc(id="p1", body="Graphene is a single layer of carbon atoms.", n=1), ctx))
send("p2", serialize_doc(Doc(id="p2", title="France", body="The capital of France is Paris.",
                             tags=["geo"]), ctx))
send("p1", serialize_doc(Doc(id="p1", title="updated", body="Graphene, updated.", n=2), ctx))
send("p3", serialize_note(Note(id="p3", body="A nested message type."), ctx))
send("p2", None)
print(json.dumps({"records": produced}))
