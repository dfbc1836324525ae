-- `semflow serve --init docker/serve-init.sql`: the Lance index the indexer service writes
-- (columns declared so the server starts before the first document arrives).
CREATE EXTERNAL TABLE idx (
  id TEXT NOT NULL,
  title TEXT,
  body TEXT,
  embedding FLOAT[],
  model TEXT,
  PRIMARY KEY (id)
)
STORED AS LANCE LOCATION '${SEMFLOW_INDEX:-data/docs.lance}';
