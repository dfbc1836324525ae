"""Reads a topic the way a Kafka shop's service would: confluent-kafka's Consumer with the
official AvroDeserializer, writer schemas from the schema registry by the id in each message.

usage: avro_consume.py BOOTSTRAP REGISTRY_URL TOPIC COUNT; prints a JSON list of
{"key", "value"} (timestamps as ISO text) once COUNT messages were read.
"""

import json
import sys
import time
import uuid

from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

BOOTSTRAP, REGISTRY, TOPIC, COUNT = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
deserialize = AvroDeserializer(SchemaRegistryClient({"url": REGISTRY}))
consumer = Consumer({
    "bootstrap.servers": BOOTSTRAP,
    "group.id": f"avro-consume-{uuid.uuid4()}",
    "auto.offset.reset": "earliest",
})
consumer.subscribe([TOPIC])
out = []
deadline = time.time() + 60
while len(out) < COUNT and time.time() < deadline:
    message = consumer.poll(1.0)
    if message is None or message.error():
        continue
    value = deserialize(message.value(), SerializationContext(TOPIC, MessageField.VALUE))
    out.append({"key": message.key().decode() if message.key() else None, "value": value})
consumer.close()
print(json.dumps(out, default=lambda v: v.isoformat()))
