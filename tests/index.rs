//! Lance tables: top-k vector queries are served by Lance's search (flat without an index,
//! IVF after CREATE INDEX) and agree with DataFusion's exact evaluation.

use crate::common;

use arrow::array::AsArray;
use arrow::util::pretty::pretty_format_batches;
use semflow::Engine;

async fn ids(engine: &Engine, sql: &str) -> Vec<String> {
    let results = engine.run_sql(sql).await.unwrap();
    let mut out = Vec::new();
    for batch in &results.last().unwrap().batches {
        let col = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
        out.extend(
            col.as_string::<i32>()
                .iter()
                .map(|v| v.unwrap_or_default().to_string()),
        );
    }
    out
}

async fn explain(engine: &Engine, sql: &str) -> String {
    let results = engine.run_sql(&format!("EXPLAIN {sql}")).await.unwrap();
    pretty_format_batches(&results[0].batches)
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_k_vector_queries_use_lance_search_and_match_exact_results() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("idx").to_string_lossy().into_owned();
    let engine = common::tiny_engine();
    engine
        .run_sql(&format!(
            "CREATE EXTERNAL TABLE idx (id TEXT NOT NULL, body TEXT, embedding FLOAT[], PRIMARY KEY (id))
               STORED AS LANCE LOCATION '{location}';
             INSERT INTO idx SELECT 'doc ' || v, 'document number ' || v || ' about subject ' || (v % 17), embed('document number ' || v || ' about subject ' || (v % 17))
               FROM generate_series(1, 400) AS t(v);"
        ))
        .await
        .unwrap();
    let query = "embed('document number 17 about subject 0')";
    let knn = format!(
        "SELECT id, cosine_similarity(embedding, {query}) AS score FROM idx WHERE id <> 'doc 3' ORDER BY score DESC LIMIT 5"
    );
    // `+ 0` hides the function from the rewrite: DataFusion scores every row itself.
    let exact = format!(
        "SELECT id, cosine_similarity(embedding, {query}) + 0 AS score FROM idx WHERE id <> 'doc 3' ORDER BY score DESC LIMIT 5"
    );
    let plan = explain(&engine, &knn).await;
    assert!(
        plan.contains("KNN"),
        "Lance's flat search serves the query:\n{plan}"
    );
    assert!(!explain(&engine, &exact).await.contains("KNN"));
    let expected = ids(&engine, &exact).await;
    assert_eq!(expected[0], "doc 17");
    assert_eq!(ids(&engine, &knn).await, expected, "flat search is exact");

    // Other functions and directions: inner_product DESC is rewritten, ASC is not.
    let l2 = format!("SELECT id FROM idx ORDER BY l2_distance(embedding, {query}) LIMIT 3");
    let plan = explain(&engine, &l2).await;
    assert!(plan.contains("KNN"), "{plan}");
    assert_eq!(ids(&engine, &l2).await[0], "doc 17");
    let wrong_way =
        format!("SELECT id FROM idx ORDER BY cosine_similarity(embedding, {query}) ASC LIMIT 3");
    assert!(!explain(&engine, &wrong_way).await.contains("KNN"));

    // With an IVF-PQ index the search is approximate but finds the exact match.
    engine
        .run_sql(
            "CREATE INDEX idx_embedding ON idx USING ivf_pq (embedding) WITH (num_partitions = 4)",
        )
        .await
        .unwrap();
    let plan = explain(&engine, &knn).await;
    assert!(plan.contains("ANN"), "the index serves the query:\n{plan}");
    assert_eq!(ids(&engine, &knn).await[0], "doc 17");

    // The session's search settings reach Lance's scanner, and bad ones are named.
    engine
        .run_sql("SET semflow.search_effort = 1.0; SET semflow.search_refine = 20")
        .await
        .unwrap();
    let plan = explain(&engine, &knn).await;
    // LIMIT 5 re-ranked 20 times: the index is asked for 100 candidates (80 by default).
    assert!(plan.contains("k=100"), "{plan}");
    assert_eq!(ids(&engine, &knn).await[0], "doc 17");
    engine
        .run_sql("SET semflow.search_effort = 2")
        .await
        .unwrap();
    let err = engine.run_sql(&knn).await.unwrap_err().user_message();
    assert!(
        err.contains("semflow.search_effort must be between 0 and 1"),
        "{err}"
    );
    engine
        .run_sql("SET semflow.search_effort = 0.5; SET semflow.search_refine = 0")
        .await
        .unwrap();
    let err = engine.run_sql(&knn).await.unwrap_err().user_message();
    assert!(
        err.contains("semflow.search_refine must be at least 1"),
        "{err}"
    );
    engine
        .run_sql("SET semflow.search_refine = 4")
        .await
        .unwrap();

    // Bad CREATE INDEX statements name what is wrong.
    let err = engine
        .run_sql("CREATE INDEX ON idx USING hnsw_sq (embedding)")
        .await
        .unwrap_err()
        .user_message();
    assert!(err.contains("ivf_pq, ivf_flat and inverted"), "{err}");
    let err = engine
        .run_sql("CREATE INDEX ON idx USING ivf_pq (body)")
        .await
        .unwrap_err()
        .user_message();
    assert!(err.contains("not a vector"), "{err}");
    // IVF_PQ trains 256 centroids per sub-vector: on fewer rows it says so (Lance would
    // build an empty index with only a warning); IVF_FLAT builds.
    let small = dir.path().join("small").to_string_lossy().into_owned();
    engine
        .run_sql(&format!(
            "CREATE EXTERNAL TABLE small (id TEXT NOT NULL, embedding FLOAT[], PRIMARY KEY (id))
               STORED AS LANCE LOCATION '{small}';
             INSERT INTO small SELECT 'doc ' || v, embed('doc ' || v) FROM generate_series(1, 6) AS t(v);"
        ))
        .await
        .unwrap();
    let err = engine
        .run_sql("CREATE INDEX ON small USING ivf_pq (embedding)")
        .await
        .unwrap_err()
        .user_message();
    assert!(
        err.contains("at least 256 rows") && err.contains("6 rows"),
        "{err}"
    );
    engine
        .run_sql("CREATE INDEX ON small USING ivf_flat (embedding)")
        .await
        .unwrap();
}

/// `binary_quantize` columns are stored as fixed-size `UInt8` vectors, and top-k by
/// `hamming_distance` is Lance's Hamming search; the rescoring pattern (the k·r nearest codes
/// re-ranked by their float vectors) reads only those rows' float vectors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hamming_top_k_and_rescoring_use_lance_search() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("bits").to_string_lossy().into_owned();
    let engine = common::tiny_engine();
    engine
        .run_sql(&format!(
            "CREATE EXTERNAL TABLE bits (id TEXT NOT NULL, embedding FLOAT[], code TINYINT UNSIGNED[],
               int8 TINYINT[], PRIMARY KEY (id)) STORED AS LANCE LOCATION '{location}';
             INSERT INTO bits SELECT 'doc ' || v, e, binary_quantize(e), int8_quantize(e)
               FROM (SELECT v, embed('document number ' || v || ' about subject ' || (v % 17)) AS e
                     FROM generate_series(1, 300) AS t(v));"
        ))
        .await
        .unwrap();
    let stored = engine
        .run_sql("SELECT arrow_typeof(code), arrow_typeof(int8) FROM bits LIMIT 1")
        .await
        .unwrap();
    let types = pretty_format_batches(&stored[0].batches)
        .unwrap()
        .to_string();
    assert!(
        types.contains("FixedSizeList(8 x UInt8)") && types.contains("FixedSizeList(64 x Int8)"),
        "{types}"
    );

    let query = "binary_quantize(embed('document number 17 about subject 0'))";
    let knn =
        format!("SELECT id, hamming_distance(code, {query}) AS d FROM bits ORDER BY d LIMIT 10");
    let scan = format!(
        "SELECT id, hamming_distance(code, {query}) + 0 AS d FROM bits ORDER BY d LIMIT 10"
    );
    let plan = explain(&engine, &knn).await;
    assert!(
        plan.contains("KNN"),
        "Lance serves the Hamming search:\n{plan}"
    );
    assert!(!explain(&engine, &scan).await.contains("KNN"));
    // Ties may pick other rows at the boundary; the distances are the same.
    let distances = |sql: String| {
        let engine = &engine;
        async move {
            let results = engine.run_sql(&sql).await.unwrap();
            let mut d: Vec<i64> = results[0]
                .batches
                .iter()
                .flat_map(|b| {
                    b.column(1)
                        .as_primitive::<arrow::datatypes::Int64Type>()
                        .values()
                        .to_vec()
                })
                .collect();
            d.sort();
            d
        }
    };
    let exact = distances(scan).await;
    assert_eq!(exact[0], 0, "the query's own document is at distance 0");
    assert_eq!(distances(knn).await, exact);
    // Descending Hamming is not a nearest-neighbour search.
    let far = format!("SELECT id FROM bits ORDER BY hamming_distance(code, {query}) DESC LIMIT 3");
    assert!(!explain(&engine, &far).await.contains("KNN"));

    // Rescoring: 40 candidates by Hamming, re-ranked by cosine over their float vectors.
    let rescored = "WITH c AS (SELECT id, embedding, hamming_distance(code, binary_quantize(embed('document number 17 about subject 0'))) AS d
                    FROM bits ORDER BY d LIMIT 40)
                    SELECT id FROM c ORDER BY cosine_similarity(embedding, embed('document number 17 about subject 0')) DESC LIMIT 5";
    let plan = explain(&engine, rescored).await;
    assert!(
        plan.contains("KNNVectorDistance: metric=hamming") && plan.contains("TopK(fetch=40)"),
        "{plan}"
    );
    assert_eq!(ids(&engine, rescored).await[0], "doc 17");
}
