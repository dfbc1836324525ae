-- Continuous indexing of document chunks: every document on the Kafka topic is split into
-- pieces of at most 256 tokens of the embedding model's own tokenizer (so embed() never
-- truncates), and each piece becomes a row keyed by (document, seq). An update replaces all
-- of the document's chunks (a document that shrank from 5 chunks to 3 keeps exactly 3 rows),
-- a tombstone (null value) removes them all, in the same Lance commit as the offsets.
--
--   semflow run pipelines/index-chunks.sql --embed-model random:tiny
--
-- SEMFLOW_TOPIC, SEMFLOW_KAFKA, SEMFLOW_GROUP and SEMFLOW_INDEX come from the environment
-- when set (the defaults follow ":-"). The topic's record keys are the document ids.

CREATE EXTERNAL TABLE docs (id TEXT NOT NULL, title TEXT, body TEXT)
STORED AS KAFKA LOCATION '${SEMFLOW_TOPIC:-docs}'
OPTIONS (
  'bootstrap.servers' '${SEMFLOW_KAFKA:-127.0.0.1:9092}',
  'group.id' '${SEMFLOW_GROUP:-semflow-chunk-indexer}',
  'format' 'json',
  'start' 'earliest',
  'batch_rows' '1000',
  'batch_ms' '200',
  'on_error' 'dlq',
  'session.timeout.ms' '6000',
  'heartbeat.interval.ms' '1000'
);

-- document_key names the column that says which document a row belongs to: a batch's
-- documents are replaced whole, not upserted chunk by chunk.
CREATE EXTERNAL TABLE chunks (
  chunk_id TEXT NOT NULL,
  doc_id TEXT NOT NULL,
  seq INT NOT NULL,
  title TEXT,
  text TEXT,
  start_char BIGINT,
  end_char BIGINT,
  embedding FLOAT[],
  model TEXT,
  PRIMARY KEY (chunk_id)
)
STORED AS LANCE LOCATION '${SEMFLOW_INDEX:-data/chunks.lance}'
OPTIONS ('document_key' 'doc_id');

INSERT INTO chunks
SELECT id || '#' || CAST(c['seq'] AS TEXT) AS chunk_id,
       id AS doc_id,
       c['seq'] AS seq,
       title,
       c['text'] AS text,
       c['start_char'] AS start_char,
       c['end_char'] AS end_char,
       embed(c['text']) AS embedding,
       embed_model() AS model
FROM (SELECT id, title, unnest(chunk(body, 256, 32)) AS c FROM docs);
