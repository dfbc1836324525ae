-- Produces five JSON documents to the topic the indexing pipeline reads:
--   semflow sql -f pipelines/sample-docs.sql
CREATE EXTERNAL TABLE topic (id TEXT NOT NULL, title TEXT, body TEXT)
STORED AS KAFKA LOCATION '${SEMFLOW_TOPIC:-docs}'
OPTIONS ('bootstrap.servers' '${SEMFLOW_KAFKA:-127.0.0.1:9092}', 'key' 'id');

INSERT INTO topic VALUES
  ('rust', 'Rust', 'Rust is a systems programming language focused on safety and speed.'),
  ('kafka', 'Apache Kafka', 'Kafka is a distributed log used for streaming data between services.'),
  ('lance', 'Lance', 'Lance is a columnar format for machine learning data with fast vector search.'),
  ('qwen', 'Qwen3 Embedding', 'Qwen3-Embedding turns text into vectors for retrieval and clustering.'),
  ('pasta', 'Cooking pasta', 'Boil salted water, add the pasta and cook it until al dente.');
