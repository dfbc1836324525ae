-- Hybrid search over a Lance table: BM25 keywords + vectors, fused by reciprocal rank, then
-- reranked. Run: cargo run -- sql -f examples/hybrid.sql --embed-model random:tiny --rerank-model random:tiny
CREATE EXTERNAL TABLE kb (id TEXT NOT NULL, body TEXT, embedding FLOAT[], PRIMARY KEY (id))
STORED AS LANCE LOCATION '${SEMFLOW_EXAMPLE_DIR:-/tmp/semflow-example}/kb.lance';

INSERT INTO kb SELECT id, body, embed(body) FROM (VALUES
  ('graphene', 'Graphene is a single layer of carbon atoms arranged in a hexagonal lattice.'),
  ('nanotubes', 'Carbon nanotubes are rolled-up sheets of graphene.'),
  ('paris', 'The capital of France is Paris.'),
  ('rust', 'Rust is a systems programming language.')) AS d(id, body);

-- The BM25 index (rows written later are still searched, exhaustively, until it is rebuilt).
CREATE INDEX kb_body ON kb USING inverted (body);

WITH kw AS (   -- keyword ranking, best first
  SELECT id, row_number() OVER (ORDER BY _score DESC) AS r
  FROM full_text_search('kb', 'body', 'carbon lattice', 20)),
vec AS (       -- vector ranking: top 20 by cosine (served by Lance's vector search)
  SELECT id, row_number() OVER (ORDER BY d DESC) AS r FROM (
    SELECT id, cosine_similarity(embedding, embed('carbon lattice', 'query')) AS d
    FROM kb ORDER BY d DESC LIMIT 20)),
fused AS (     -- reciprocal-rank fusion
  SELECT id, sum(1.0 / (60 + r)) AS rrf FROM (SELECT * FROM kw UNION ALL SELECT * FROM vec) GROUP BY id
  ORDER BY rrf DESC LIMIT 10)
SELECT f.id, f.rrf, rerank('carbon lattice', k.body) AS relevance
FROM fused f JOIN kb k ON k.id = f.id
ORDER BY relevance DESC;
