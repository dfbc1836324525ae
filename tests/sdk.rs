//! The official Python SDKs as users run them against `semflow serve`: Cohere's `ClientV2`
//! (`POST /v2/rerank`, `POST /v2/embed`) and OpenAI's client (`POST /v1/embeddings`, whose
//! default encoding is base64). Results must equal the engine's own SQL answers.
//! Skipped with a message when the SDKs are not installed, unless SEMFLOW_TEST_SDKS=required
//! (CI installs them).

use crate::common;

use common::{close, floats, sql_vectors};

use arrow::array::AsArray;
use arrow::datatypes::Float32Type;

const DOCS: &str = "(VALUES (0, 'Graphene is a single layer of carbon atoms.'), \
     (1, 'The capital of France is Paris.'), (2, 'Copper conducts heat.')) AS d(id, t)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohere_v2_and_openai_sdks_get_the_engines_answers() {
    let engine = common::tiny_engine();
    let base = format!("http://{}", common::serve_http(engine.clone()).await);
    let Some(got) = common::python_client(
        "sdk.py",
        vec![base],
        "SEMFLOW_TEST_SDKS",
        "pip install cohere openai",
    )
    .await
    else {
        return;
    };
    let docs = sql_vectors(&engine, &format!("SELECT embed(t) FROM {DOCS} ORDER BY id")).await;
    for (i, want) in docs.iter().enumerate() {
        assert!(
            close(&floats(&got["cohere_documents"][i]), want),
            "cohere doc {i}"
        );
        assert!(close(&floats(&got["openai"][i]), want), "openai doc {i}");
    }
    let query = sql_vectors(&engine, "SELECT embed('what is graphene', 'query', 32)").await;
    assert!(close(&floats(&got["cohere_query32"]), &query[0]));
    let dims16 = sql_vectors(
        &engine,
        "SELECT embed('Graphene is a single layer of carbon atoms.', NULL, 16)",
    )
    .await;
    assert!(close(&floats(&got["openai_dims16"]), &dims16[0]));
    // Cohere's SDK reads billed units as floats.
    assert_eq!(
        got["cohere_input_tokens"].as_f64(),
        got["openai_usage"].as_f64()
    );

    let result = engine
        .run_sql(&format!(
            "SELECT id, rerank('what is graphene', t) AS p FROM {DOCS} ORDER BY p DESC, id LIMIT 2"
        ))
        .await
        .unwrap();
    let batch = &result[0].batches[0];
    let ranked = got["rerank"].as_array().unwrap();
    assert_eq!(ranked.len(), 2);
    for (i, r) in ranked.iter().enumerate() {
        let id = batch
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(i);
        let p = batch.column(1).as_primitive::<Float32Type>().value(i) as f64;
        assert_eq!(r[0].as_i64().unwrap(), id);
        assert!((r[1].as_f64().unwrap() - p).abs() <= 1e-6);
    }
    let err = &got["errors"]["input_type"];
    assert_eq!(err[0], 400, "{err}");
    assert!(err[1].as_str().unwrap().contains("input_type"), "{err}");
}
