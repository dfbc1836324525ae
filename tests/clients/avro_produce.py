"""Produces registry-framed Avro the way Kafka shops do: confluent-kafka's Producer with the
official AvroSerializer, schemas registered in the (test) schema registry. Two topics:

- DOCS: documents keyed by plain string ids; schema v1 {id, title?, body}, then v2 adding
  tags, a timestamp-millis and a decimal (schema evolution in one topic), an update, a tombstone, and one
  value that is not Avro at all.
- CDC: Debezium change events with Avro keys {id} and envelopes {before, after, op, ts_ms}.

usage: avro_produce.py BOOTSTRAP REGISTRY_URL DOCS_TOPIC CDC_TOPIC; prints one JSON object.
"""

import json
from decimal import Decimal
import sys

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext, StringSerializer

BOOTSTRAP, REGISTRY, DOCS, CDC = sys.argv[1:5]
registry = SchemaRegistryClient({"url": REGISTRY})
producer = Producer({"bootstrap.servers": BOOTSTRAP})

DOC_V1 = {
    "type": "record", "name": "Doc", "namespace": "semflow.test",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "title", "type": ["null", "string"], "default": None},
        {"name": "body", "type": "string"},
    ],
}
DOC_V2 = {
    **DOC_V1,
    "fields": DOC_V1["fields"] + [
        {"name": "tags", "type": {"type": "array", "items": "string"}, "default": []},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}, "default": 0},
        # A string default for a bytes decimal: valid Avro that apache-avro alone refuses.
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9,
                                   "scale": 2}, "default": "\u0000"},
    ],
}
ROW = {
    "type": "record", "name": "Value", "namespace": "cdc.public.docs",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "title", "type": ["null", "string"], "default": None},
        {"name": "body", "type": ["null", "string"], "default": None},
    ],
}
ENVELOPE = {
    "type": "record", "name": "Envelope", "namespace": "cdc.public.docs",
    "fields": [
        {"name": "before", "type": ["null", ROW], "default": None},
        {"name": "after", "type": ["null", "cdc.public.docs.Value"], "default": None},
        {"name": "op", "type": "string"},
        {"name": "ts_ms", "type": ["null", "long"], "default": None},
    ],
}
KEY = {"type": "record", "name": "Key", "namespace": "cdc.public.docs",
       "fields": [{"name": "id", "type": "string"}]}


def serializer(schema):
    return AvroSerializer(registry, json.dumps(schema))


strings = StringSerializer()
produced = {DOCS: 0, CDC: 0}


def send(topic, key, value):
    producer.produce(topic, key=key, value=value)
    # One record per produce request: the test broker (Tansu) reports the high watermark of a
    # multi-record batch short, which would end a snapshot scan early.
    producer.flush(30)
    produced[topic] += 1


def doc(key, value, schema):
    ctx = SerializationContext(DOCS, MessageField.VALUE)
    body = None if value is None else serializer(schema)(value, ctx)
    send(DOCS, strings(key), body)


doc("d1", {"id": "d1", "title": None, "body": "Graphene is a single layer of carbon atoms."}, DOC_V1)
doc("d2", {"id": "d2", "title": "France", "body": "The capital of France is Paris."}, DOC_V1)
doc("d3", {"id": "d3", "title": None, "body": "Copper conducts heat."}, DOC_V1)
doc("d4", {"id": "d4", "title": "new", "body": "Kafka topics carry Avro.", "tags": ["a", "b"],
           "at": 1700000000123, "price": Decimal("12.34")}, DOC_V2)
doc("d1", {"id": "d1", "title": "updated", "body": "Graphene, updated.", "tags": [],
           "at": 1700000000000, "price": Decimal("-0.50")}, DOC_V2)
doc("d2", None, DOC_V1)  # tombstone
send(DOCS, strings("bad"), b'{"id": "bad", "body": "JSON, not Avro"}')


def change(key, op, before, after):
    value_ctx = SerializationContext(CDC, MessageField.VALUE)
    key_ctx = SerializationContext(CDC, MessageField.KEY)
    event = {"before": before, "after": after, "op": op, "ts_ms": 1}
    send(CDC, serializer(KEY)({"id": key}, key_ctx), serializer(ENVELOPE)(event, value_ctx))


def row(i, body):
    return {"id": i, "title": None, "body": body}


change("e1", "c", None, row("e1", "first"))
change("e2", "c", None, row("e2", "second"))
change("e1", "u", row("e1", "first"), row("e1", "first, updated"))
change("e2", "d", row("e2", "second"), None)
send(CDC, serializer(KEY)({"id": "e2"}, SerializationContext(CDC, MessageField.KEY)), None)

producer.flush(30)
print(json.dumps({"docs": produced[DOCS], "cdc": produced[CDC]}))
