-- Searches the index the pipeline writes: semflow sql -f pipelines/search.sql
CREATE EXTERNAL TABLE idx STORED AS LANCE LOCATION '${SEMFLOW_INDEX:-data/docs.lance}';

SELECT count(*) AS documents, min(model) AS model FROM idx;

SELECT id, title,
       cosine_similarity(embedding, embed('how do I stream data between services?',
                                          'Given a question, retrieve passages that answer it')) AS score
FROM idx
ORDER BY score DESC
LIMIT 3;
