-- Continuous synthesis: every document arriving on the Kafka topic gets an LLM-written query;
-- pairs whose cosine(query, document) is above the threshold are upserted into a Lance table
-- (one pair per document id; a new version of the document replaces its pair). Offsets commit
-- with the rows, as in pipelines/index.sql.
--
--   SEMFLOW_GENERATOR_URL=http://127.0.0.1:8000/v1 semflow run pipelines/synth-stream.sql
--
-- Hard negatives need the whole corpus: mine them in batch with `semflow synth --docs
-- <this table's .lance>` (see README). Documents the generator fails on get no pair here.

SET semflow.generator_url = '${SEMFLOW_GENERATOR_URL:-http://127.0.0.1:8000/v1}';
SET semflow.generator_model = '${SEMFLOW_GENERATOR_MODEL:-Qwen/Qwen3-32B}';

CREATE EXTERNAL TABLE docs (id TEXT NOT NULL, text TEXT)
STORED AS KAFKA LOCATION '${SEMFLOW_TOPIC:-docs}'
OPTIONS (
  'bootstrap.servers' '${SEMFLOW_KAFKA:-127.0.0.1:9092}',
  'group.id' '${SEMFLOW_GROUP:-semflow-synth}',
  'format' 'json',
  'start' 'earliest',
  'batch_rows' '64',
  'session.timeout.ms' '6000',
  'heartbeat.interval.ms' '1000'
);

CREATE EXTERNAL TABLE pairs (
  id TEXT NOT NULL,
  anchor TEXT,
  positive TEXT,
  instruction TEXT,
  score DOUBLE,
  persona TEXT,
  query_type TEXT,
  difficulty TEXT,
  length TEXT,
  language TEXT,
  embedder_model TEXT,
  PRIMARY KEY (id)
)
STORED AS LANCE LOCATION '${SEMFLOW_PAIRS:-data/pairs.lance}';

INSERT INTO pairs
SELECT id, anchor, positive, instruction, score, persona, query_type, difficulty, length, language,
       embed_model() AS embedder_model
FROM (
  SELECT id, g['query'] AS anchor, text AS positive,
         'Given a web search query, retrieve relevant passages that answer the query' AS instruction,
         cosine_similarity(
           embed(g['query'], 'Given a web search query, retrieve relevant passages that answer the query'),
           embed(text)) AS score,
         g['persona'] AS persona, g['query_type'] AS query_type, g['difficulty'] AS difficulty,
         g['length'] AS length, g['language'] AS language
  FROM (SELECT id, text, generate_query(text) AS g FROM docs)
  WHERE g['query'] IS NOT NULL
)
WHERE score > ${SEMFLOW_SYNTH_THRESHOLD:-0.7};
