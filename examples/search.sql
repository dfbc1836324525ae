-- semflow in one file: embed a few documents, search them with an instructed query,
-- and rerank the top hits. Run with:
--   cargo run -- sql -f examples/search.sql --embed-model random:tiny --rerank-model random:tiny
-- (random weights: the pipeline is real, the ranking is not; use the default Qwen3 models
-- for meaningful scores).

CREATE TABLE docs(id INT, body TEXT) AS VALUES
  (1, 'Graphene is a single layer of carbon atoms arranged in a hexagonal lattice.'),
  (2, 'The capital of France is Paris, known for the Eiffel Tower.'),
  (3, 'Rust is a systems programming language focused on safety and speed.'),
  (4, 'Carbon nanotubes are rolled-up sheets of graphene with remarkable strength.'),
  (5, 'Photosynthesis converts light energy into chemical energy in plants.'),
  (6, 'Graphene conducts heat and electricity better than copper.');

-- The vector table: one embedding per document.
CREATE TABLE idx AS SELECT id, body, embed(body) AS embedding FROM docs;

-- Top-3 by cosine similarity to an instructed query, then reranked by Qwen3-Reranker.
WITH hits AS (
  SELECT id, body,
         cosine_similarity(embedding, embed('what is graphene',
           'Given a web search query, retrieve relevant passages that answer the query')) AS score
  FROM idx
  ORDER BY score DESC
  LIMIT 3
)
SELECT id, round(score, 4) AS score, round(rerank('what is graphene', body), 4) AS relevance, body
FROM hits
ORDER BY relevance DESC;
