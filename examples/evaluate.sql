-- Retrieval evaluation in SQL: embed a corpus, retrieve each query's top 3 documents, and
-- measure the rankings against relevance judgements with trec_eval's measures. Run with:
--   cargo run -- sql -f examples/evaluate.sql --embed-model random:tiny
-- (random weights: the measures are real, the model's quality is noise; use the default
-- Qwen3 model, or yours with --model, for numbers that mean something).

CREATE TABLE corpus(doc_id TEXT, body TEXT) AS VALUES
  ('d1', 'Graphene is a single layer of carbon atoms arranged in a hexagonal lattice.'),
  ('d2', 'Copper conducts heat and electricity well.'),
  ('d3', 'The capital of France is Paris, known for the Eiffel Tower.'),
  ('d4', 'Diamond and graphite are both made of carbon.'),
  ('d5', 'Photosynthesis converts light energy into chemical energy in plants.');

CREATE TABLE queries(query_id TEXT, text TEXT) AS VALUES
  ('q1', 'what is graphene'),
  ('q2', 'which metal conducts heat'),
  ('q3', 'capital of france');

-- Graded judgements (BEIR's qrels): 0 judged not relevant, higher is more relevant.
CREATE TABLE qrels(query_id TEXT, doc_id TEXT, relevance INT) AS VALUES
  ('q1', 'd1', 2), ('q1', 'd4', 1), ('q1', 'd2', 0),
  ('q2', 'd2', 1),
  ('q3', 'd3', 1);

-- The run: each query's top 3 documents by cosine similarity, queries embedded with the
-- model's 'query' prompt.
CREATE TABLE vectors AS SELECT doc_id, embed(body) AS embedding FROM corpus;
CREATE TABLE run AS
SELECT query_id, doc_id, score FROM (
  SELECT query_id, doc_id, score,
         row_number() OVER (PARTITION BY query_id ORDER BY score DESC) AS place
  FROM (SELECT q.query_id, v.doc_id,
               cosine_similarity(v.embedding, embed(q.text, 'query')) AS score
        FROM queries q CROSS JOIN vectors v))
WHERE place <= 3;

-- Per query, then averaged over the queries as trec_eval averages.
SELECT * FROM ir_measures('run', 'qrels', 'ndcg@3 recall@3 mrr') ORDER BY query_id, measure;

SELECT measure, avg(value) AS mean
FROM ir_measures('run', 'qrels', 'ndcg@3 recall@3 mrr')
GROUP BY measure ORDER BY measure;
