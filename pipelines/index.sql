-- Continuous indexing: every document on the Kafka topic is embedded and upserted into a
-- Lance vector table; a tombstone (null value) for a key deletes that document. Offsets are
-- stored in the same Lance commit as the rows, so a crash neither loses nor duplicates.
--
--   semflow run pipelines/index.sql --embed-model random:tiny
--
-- SEMFLOW_TOPIC, SEMFLOW_KAFKA, SEMFLOW_GROUP and SEMFLOW_INDEX come from the environment
-- when set (the defaults follow ":-").

CREATE EXTERNAL TABLE docs (id TEXT NOT NULL, title TEXT, body TEXT)
STORED AS KAFKA LOCATION '${SEMFLOW_TOPIC:-docs}'
OPTIONS (
  'bootstrap.servers' '${SEMFLOW_KAFKA:-127.0.0.1:9092}',
  'group.id' '${SEMFLOW_GROUP:-semflow-indexer}',
  'format' 'json',
  'start' 'earliest',
  -- micro-batches close at 1000 records or 200 ms, whichever comes first
  'batch_rows' '1000',
  'batch_ms' '200',
  -- undecodable or oversized records go to <topic>.dlq with the reason in their headers
  'on_error' 'dlq',
  'session.timeout.ms' '6000',
  'heartbeat.interval.ms' '1000'
);

CREATE EXTERNAL TABLE idx (
  id TEXT NOT NULL,
  title TEXT,
  body TEXT,
  embedding FLOAT[],
  model TEXT,
  PRIMARY KEY (id)
)
STORED AS LANCE LOCATION '${SEMFLOW_INDEX:-data/docs.lance}';

INSERT INTO idx
SELECT id, title, body, embed(body) AS embedding, embed_model() AS model
FROM docs;
