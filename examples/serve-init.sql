-- Tables for `semflow serve --init examples/serve-init.sql` (README, "Serving applications").
CREATE TABLE docs AS SELECT * FROM (VALUES
  ('rust', 'Rust is a systems programming language focused on safety.'),
  ('kafka', 'Kafka is a distributed log for streaming data.'),
  ('pasta', 'Boil salted water and cook the pasta until al dente.')) AS t(id, body);
CREATE TABLE idx AS SELECT id, body, embed(body) AS embedding FROM docs;
