//! `semflow serve`'s HTTP API with a real client against a server on 127.0.0.1:0: OpenAI
//! embeddings and Cohere/Jina rerank shapes, base64, limits, bearer-token auth.

use crate::common;

use std::net::SocketAddr;

use base64::Engine as _;
use semflow::serve::access::Listener;
use semflow::serve::http::{serve, HttpOptions};
use serde_json::{json, Value};

async fn start(
    token: Option<&str>,
    max_items: usize,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    start_with(HttpOptions {
        listener: Listener {
            secret: token.map(String::from),
            ..Listener::default()
        },
        max_items,
        max_body_bytes: 64 << 10,
        ..HttpOptions::default()
    })
    .await
}

async fn start_with(options: HttpOptions) -> (String, tokio::sync::oneshot::Sender<()>) {
    let engine = common::tiny_engine();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel::<SocketAddr>();
    tokio::spawn(async move {
        serve(
            &engine,
            options,
            async move {
                let _ = stopped.await;
            },
            move |a| {
                let _ = bound_tx.send(a);
            },
        )
        .await
        .unwrap();
    });
    (format!("http://{}", bound_rx.await.unwrap()), stop)
}

/// POST JSON on a blocking thread (ureq), returning (status, body).
async fn post(url: String, body: Value, token: Option<&'static str>) -> (u16, Value) {
    tokio::task::spawn_blocking(move || {
        let mut req = ureq::post(&url);
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        match req.send_json(body) {
            Ok(r) => (r.status(), r.into_json().unwrap()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
            // The server may answer 413 and close before an oversized body is fully sent.
            Err(ureq::Error::Transport(t)) if t.kind() == ureq::ErrorKind::Io => (0, Value::Null),
            Err(e) => panic!("{e}"),
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_and_rerank_in_the_openai_and_cohere_shapes() {
    let (base, stop) = start(None, 4).await;
    let (status, v) = post(
        format!("{base}/v1/embeddings"),
        json!({"input": ["graphene is carbon", "pasta"], "dimensions": 32}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][1]["object"], "embedding");
    assert_eq!(v["data"][1]["index"], 1);
    let first: Vec<f32> = serde_json::from_value(v["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(first.len(), 32);
    let norm: f32 = first.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 2);
    assert_eq!(v["usage"]["total_tokens"], v["usage"]["prompt_tokens"]);

    // The same vector as SQL computes, and base64 decodes to the same floats.
    let engine = common::tiny_engine();
    let sql = engine
        .run_sql("SELECT embed('graphene is carbon', '', 32)")
        .await
        .unwrap();
    let col = sql[0].batches[0].column(0);
    let list = col
        .as_any()
        .downcast_ref::<arrow::array::FixedSizeListArray>()
        .unwrap();
    let values = list.value(0);
    let expected = values
        .as_any()
        .downcast_ref::<arrow::array::Float32Array>()
        .unwrap();
    for (a, b) in first.iter().zip(expected.values()) {
        assert!((a - b).abs() < 1e-6);
    }
    let (_, b64) = post(
        format!("{base}/v1/embeddings"),
        json!({"input": "graphene is carbon", "dimensions": 32, "encoding_format": "base64"}),
        None,
    )
    .await;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(decoded, first);

    // Rerank: sorted by P(yes), top_n, documents on request, indices into the request.
    let (status, r) = post(
        format!("{base}/v1/rerank"),
        json!({"query": "what is graphene", "documents": ["pasta", {"text": "graphene is carbon"}, "kafka"], "top_n": 2, "return_documents": true}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let results = r["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    let s0 = results[0]["relevance_score"].as_f64().unwrap();
    let s1 = results[1]["relevance_score"].as_f64().unwrap();
    assert!(s0 >= s1 && (0.0..=1.0).contains(&s0));
    let docs = ["pasta", "graphene is carbon", "kafka"];
    for hit in results {
        let i = hit["index"].as_u64().unwrap() as usize;
        assert_eq!(hit["document"]["text"], docs[i]);
    }

    // Errors: OpenAI's error shape, 400 for bad values, 413 for too many items or bytes.
    let (status, e) = post(
        format!("{base}/v1/embeddings"),
        json!({"input": "x", "dimensions": 0}),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(e["error"]["param"], "dimensions");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    let (status, _) = post(
        format!("{base}/v1/embeddings"),
        json!({"input": ["a", "b", "c", "d", "e"]}),
        None,
    )
    .await;
    assert_eq!(status, 413);
    let (status, _) = post(
        format!("{base}/v1/embeddings"),
        json!({"input": "x".repeat(100_000)}),
        None,
    )
    .await;
    // 413, or the connection closed by the server mid-body (status 0); never accepted.
    assert!(status == 413 || status == 0, "oversized body got {status}");
    let (status, _) = post(
        format!("{base}/v1/embeddings"),
        json!({"input": [[1], [2], [3], [4], [5]]}),
        None,
    )
    .await;
    assert_eq!(status, 413, "token-id items count against --max-items too");
    stop.send(()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn score_endpoint_pairs_texts_in_the_vllm_shape() {
    let (base, stop) = start(None, 4).await;
    let (q, d) = semflow::inference::prompts::rerank_pair_texts("cook pasta", "Boil water", None);
    let (status, body) = post(
        format!("{base}/v1/score"),
        json!({"text_1": q, "text_2": [d, "<Document>: Kafka<|im_end|>\n"]}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["index"], 1);
    assert_eq!(data[0]["object"], "score");
    // The first pair is the exact reranker prompt: the same score as /v1/rerank.
    let (_, reranked) = post(
        format!("{base}/v1/rerank"),
        json!({"query": "cook pasta", "documents": ["Boil water"]}),
        None,
    )
    .await;
    let (a, b) = (
        data[0]["score"].as_f64().unwrap(),
        reranked["results"][0]["relevance_score"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-6, "/v1/score {a} vs /v1/rerank {b}");
    // Lists of different lengths, empty lists and unknown fields are refused, naming the field.
    for (bad, param) in [
        (
            json!({"text_1": ["a", "b"], "text_2": ["c", "d", "e"]}),
            "text_2",
        ),
        (json!({"text_1": [], "text_2": "x"}), "text_1"),
    ] {
        let (status, e) = post(format!("{base}/v1/score"), bad, None).await;
        assert_eq!(status, 400, "{e}");
        assert_eq!(e["error"]["param"], param);
    }
    let (status, _) = post(
        format!("{base}/v1/score"),
        json!({"text_1": "a", "text_2": "b", "nope": 1}),
        None,
    )
    .await;
    assert!((400..500).contains(&status), "unknown field got {status}");
    let (status, _) = post(
        format!("{base}/v1/score"),
        json!({"text_1": "a", "text_2": ["1", "2", "3", "4", "5"]}),
        None,
    )
    .await;
    assert_eq!(status, 413);
    stop.send(()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_when_configured() {
    let (base, stop) = start(Some("s3cret"), 16).await;
    let body = json!({"input": "hello"});
    let (status, e) = post(format!("{base}/v1/embeddings"), body.clone(), None).await;
    assert_eq!(status, 401);
    assert_eq!(e["error"]["type"], "authentication_error");
    assert_eq!(
        post(format!("{base}/v1/embeddings"), body.clone(), Some("wrong"))
            .await
            .0,
        401
    );
    assert_eq!(
        post(format!("{base}/v1/embeddings"), body, Some("s3cret"))
            .await
            .0,
        200
    );
    let health = tokio::task::spawn_blocking(move || {
        ureq::get(&format!("{base}/health"))
            .call()
            .unwrap()
            .status()
    })
    .await
    .unwrap();
    assert_eq!(health, 200, "/health needs no token");
    stop.send(()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_capacity_requests_get_429_with_retry_after() {
    let admission = semflow::serve::admission::Admission::new(1, 0);
    let (base, stop) = start_with(HttpOptions {
        listener: Listener {
            admission: admission.clone(),
            ..Listener::default()
        },
        max_items: 10_000,
        max_body_bytes: 4 << 20,
        ..HttpOptions::default()
    })
    .await;
    // One long request holds the only slot …
    let texts: Vec<String> = (0..4000)
        .map(|i| format!("document {i} about streaming, indexing and retrieval"))
        .collect();
    let long = tokio::spawn(post(
        format!("{base}/v1/embeddings"),
        json!({"input": texts}),
        None,
    ));
    // (If it finished first, the assertion below says so.)
    let taken = || admission.admitted() == 1 || long.is_finished();
    let limit = std::time::Duration::from_secs(30);
    common::wait_until("the long request to take the slot", limit, taken).await;
    // … so another is refused at once, with a hint when to retry.
    let url = format!("{base}/v1/embeddings");
    let (status, retry_after) = tokio::task::spawn_blocking(move || {
        match ureq::post(&url).send_json(json!({"input": "hello"})) {
            Ok(r) => (r.status(), None),
            Err(ureq::Error::Status(code, r)) => (code, r.header("Retry-After").map(String::from)),
            Err(e) => panic!("{e}"),
        }
    })
    .await
    .unwrap();
    assert_eq!(
        status,
        429,
        "expected a refusal while the long request runs (long request finished: {})",
        long.is_finished()
    );
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(long.await.unwrap().0, 200);
    // With the slot free again, requests succeed.
    assert_eq!(
        post(
            format!("{base}/v1/embeddings"),
            json!({"input": "hello"}),
            None
        )
        .await
        .0,
        200
    );
    stop.send(()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_id_inputs_embed_like_text() {
    let (base, _stop) = start(None, 8).await;
    let engine = common::tiny_engine();
    let ids = engine
        .inference()
        .embed_tokenize("graphene is carbon")
        .await
        .unwrap();
    let text = post(
        format!("{base}/v1/embeddings"),
        json!({"input": "graphene is carbon"}),
        None,
    )
    .await;
    let one = post(format!("{base}/v1/embeddings"), json!({"input": ids}), None).await;
    let many = post(
        format!("{base}/v1/embeddings"),
        json!({"input": [ids.clone(), vec![ids[0]]]}),
        None,
    )
    .await;
    assert_eq!((text.0, one.0, many.0), (200, 200, 200), "{}", one.1);
    let vec_of = |v: &Value, i: usize| -> Vec<f32> {
        serde_json::from_value(v["data"][i]["embedding"].clone()).unwrap()
    };
    for (a, b) in vec_of(&text.1, 0).iter().zip(vec_of(&one.1, 0)) {
        assert!((a - b).abs() < 1e-5);
    }
    assert_eq!(one.1["usage"]["prompt_tokens"], ids.len() + 1);
    assert_eq!(many.1["data"].as_array().unwrap().len(), 2);
    // Ids outside the vocabulary and an instruction with ids are refused, naming the input.
    let (status, v) = post(
        format!("{base}/v1/embeddings"),
        json!({"input": [[1, 2], [3, 999999999]]}),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("input 1"),
        "{v}"
    );
    let (status, _) = post(
        format!("{base}/v1/embeddings"),
        json!({"input": [1, 2], "instruction": "q"}),
        None,
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_limits_per_item_and_per_request_answer_413() {
    let (base, _stop) = start_with(HttpOptions {
        max_item_tokens: Some(8),
        max_request_tokens: Some(12),
        ..HttpOptions::default()
    })
    .await;
    let url = format!("{base}/v1/embeddings");
    let (status, _) = post(url.clone(), json!({"input": ["short one"]}), None).await;
    assert_eq!(status, 200);
    let long = "many words ".repeat(10);
    let (status, v) = post(url.clone(), json!({"input": ["ok", long]}), None).await;
    assert_eq!(status, 413);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("input[1]"),
        "{v}"
    );
    let (status, v) = post(
        url,
        json!({"input": ["a b c", "d e f", "g h i", "j k l"]}),
        None,
    )
    .await;
    assert_eq!(status, 413, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("per request"),
        "{v}"
    );
    let (status, v) = post(
        format!("{base}/v1/rerank"),
        json!({"query": "q", "documents": ["fine", long]}),
        None,
    )
    .await;
    assert_eq!(status, 413, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_limits_count_the_whole_reranker_prompt() {
    // The Qwen3-Reranker prompt around a query and a document is ~80 tokens: a document of
    // ~30 tokens fits 120, one of ~60 does not (though query and document alone would).
    let (base, _stop) = start_with(HttpOptions {
        max_item_tokens: Some(120),
        ..HttpOptions::default()
    })
    .await;
    let url = format!("{base}/v1/rerank");
    let fits = "many words ".repeat(15);
    let (status, v) = post(
        url.clone(),
        json!({"query": "q", "documents": [fits]}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let over = "many words ".repeat(30);
    let (status, v) = post(url, json!({"query": "q", "documents": [fits, over]}), None).await;
    assert_eq!(status, 413, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("documents[1]"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_endpoint_answers_json_and_arrow() {
    let (base, _stop) = start(None, 8).await;
    let (status, v) = post(
        format!("{base}/v1/sql"),
        json!({"sql": "CREATE TABLE t AS SELECT 'a' AS id, 'graphene is carbon' AS body; SELECT id, embed(body, '', 4) AS v, cosine_similarity(embed(body), embed(body)) AS s FROM t"}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["row_count"], 1);
    assert_eq!(v["columns"][0]["name"], "id");
    assert_eq!(v["rows"][0]["id"], "a");
    assert_eq!(v["rows"][0]["v"].as_array().unwrap().len(), 4);
    assert!((v["rows"][0]["s"].as_f64().unwrap() - 1.0).abs() < 1e-6);

    let (status, v) = post(
        format!("{base}/v1/sql"),
        json!({"sql": "SELECT * FROM nope"}),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("42P01"),
        "{v}"
    );

    // Arrow IPC stream.
    let url = format!("{base}/v1/sql");
    let bytes = tokio::task::spawn_blocking(move || {
        let r = ureq::post(&url)
            .send_json(json!({"sql": "SELECT id FROM t", "format": "arrow"}))
            .unwrap();
        assert_eq!(r.content_type(), "application/vnd.apache.arrow.stream");
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut r.into_reader(), &mut buf).unwrap();
        buf
    })
    .await
    .unwrap();
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
    let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
    assert_eq!(batches[0].num_rows(), 1);

    // Without --chat-model there is no chat endpoint.
    let (status, v) = post(
        format!("{base}/v1/chat/completions"),
        json!({"messages": [{"role": "user", "content": "hi"}]}),
        None,
    )
    .await;
    assert_eq!(status, 404, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--chat-model"));
}

/// Without mistral.rs in the build, `--chat-model` is refused, saying how to get it.
#[cfg(not(feature = "mistralrs"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_model_needs_the_mistralrs_feature() {
    use semflow::inference::config::LoadOptions;
    use semflow::inference::device::{DTypeSpec, DeviceSpec};
    let refused = semflow::serve::chat::ChatModel::load(
        "random:tiny",
        LoadOptions {
            device: DeviceSpec::Cpu,
            dtype: DTypeSpec::F32,
            max_batch: 8,
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(refused.contains("--chat-model"), "{refused}");
    assert!(refused.contains("--features mistralrs"), "{refused}");
}

#[cfg(feature = "mistralrs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_hosted_generator_returns_schema_valid_json_and_drives_synth() {
    use semflow::inference::config::LoadOptions;
    use semflow::inference::device::{DTypeSpec, DeviceSpec};
    use semflow::model::random::ModelKind;
    let dir = common::tiny_model(ModelKind::Reranker, common::RERANK_SEED);
    let chat = semflow::serve::chat::ChatModel::load(
        dir.to_str().unwrap(),
        LoadOptions {
            device: DeviceSpec::Cpu,
            dtype: DTypeSpec::F32,
            max_batch: 8,
        },
    )
    .await
    .unwrap();
    let (base, _stop) = start_with(HttpOptions {
        chat: Some(std::sync::Arc::new(chat)),
        ..HttpOptions::default()
    })
    .await;
    let schema = json!({
        "type": "object",
        "properties": {"query": {"type": "string", "minLength": 1, "maxLength": 24}},
        "required": ["query"],
        "additionalProperties": false
    });
    for _ in 0..3 {
        let (status, v) = post(
            format!("{base}/v1/chat/completions"),
            json!({
                "model": "tiny-chat",
                "messages": [{"role": "user", "content": "Write a search query about Rust as JSON."}],
                "max_tokens": 64,
                "response_format": {"type": "json_schema", "json_schema": {"name": "query", "schema": schema, "strict": true}}
            }),
            None,
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "tiny-chat");
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        // Random weights, but constrained decoding: the reply is valid for the schema.
        let parsed: Value =
            serde_json::from_str(content).unwrap_or_else(|e| panic!("{e}: {content:?}"));
        let q = parsed["query"].as_str().unwrap();
        assert!((1..=24).contains(&q.chars().count()), "{q:?}");
        assert_eq!(parsed.as_object().unwrap().len(), 1);
        assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    }

    // Generation stays within the model's context (512 tokens for tiny): a long prompt with
    // the default max_tokens (512) is answered, not failed in the KV cache …
    let long = "streams carry documents into the index ".repeat(50);
    let (status, v) = post(
        format!("{base}/v1/chat/completions"),
        json!({"messages": [{"role": "user", "content": long}]}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let used = v["usage"]["prompt_tokens"].as_u64().unwrap()
        + v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(used <= 512, "{v}");
    // … and one that fills the context is refused in one line, naming the field.
    let (status, v) = post(
        format!("{base}/v1/chat/completions"),
        json!({"messages": [{"role": "user", "content": long.repeat(3)}]}),
        None,
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "messages", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("512-token context") && !message.contains('\n'),
        "{message}"
    );

    // semflow synth end to end against it.
    let work = tempfile::tempdir().unwrap();
    let docs = work.path().join("docs.jsonl");
    std::fs::write(
        &docs,
        "{\"id\": \"a\", \"text\": \"Rust is a systems programming language.\"}\n\
         {\"id\": \"b\", \"text\": \"Kafka is a distributed log.\"}\n\
         {\"id\": \"c\", \"text\": \"Pasta cooks in salted boiling water.\"}\n",
    )
    .unwrap();
    let mut config = semflow::synth::config::SynthConfig::default();
    config.generator.base_url = format!("{base}/v1");
    config.generator.max_tokens = 64;
    config.recipe.choose = "sample".into();
    config.recipe.max_query_chars = 24;
    config.filter.threshold = -1.0;
    config.negatives.count = 1;
    let engine = common::tiny_engine();
    let out = work.path().join("pairs.parquet");
    let report = semflow::synth::run(
        &engine,
        semflow::synth::SynthJob {
            docs: docs.to_string_lossy().into_owned(),
            out: out.to_string_lossy().into_owned(),
            state_dir: None,
            limit: None,
            config,
        },
        |_| {},
    )
    .await
    .unwrap();
    let failed: u64 = report.failures.values().sum();
    assert_eq!(report.generated + failed, 3, "{report:?}");
    assert!(
        report.structured_output,
        "the server accepts response_format"
    );
    assert!(report.generated >= 1, "{report:?}");
    let rows: usize = semflow::synth::output::read_parquet(&out)
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows as u64, report.kept);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_requests_latency_batches_tokens_queue_and_cache() {
    let (base, _stop) = start(None, 8).await;
    for _ in 0..2 {
        let (status, _) = post(
            format!("{base}/v1/embeddings"),
            json!({"input": ["metrics one", "metrics two"]}),
            None,
        )
        .await;
        assert_eq!(status, 200);
    }
    let url = format!("{base}/metrics");
    let text =
        tokio::task::spawn_blocking(move || ureq::get(&url).call().unwrap().into_string().unwrap())
            .await
            .unwrap();
    for name in [
        "semflow_http_requests_total",
        "semflow_http_request_seconds",
        "semflow_http_batch_items",
        "semflow_http_tokens_total",
        "semflow_queue_depth",
        "semflow_inference_embed_inputs",
        "semflow_inference_embed_inferred",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
}

/// HTTP, Postgres and Flight SQL draw on one budget: with its only slot taken (here by the
/// test itself) each refuses at once in its own protocol's words, and answers once it is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_draws_on_one_admission_budget() {
    use arrow_flight::sql::client::FlightSqlServiceClient;
    use semflow::serve::admission::Admission;
    let engine = common::tiny_engine();
    let admission = Admission::new(1, 0);
    let http = {
        let (engine, admission) = (engine.clone(), admission.clone());
        common::spawn_bound(|bound| async move {
            let options = HttpOptions {
                listener: Listener {
                    admission,
                    ..Listener::default()
                },
                ..HttpOptions::default()
            };
            serve(&engine, options, std::future::pending(), bound).await
        })
        .await
    };
    let pg = {
        let (engine, admission) = (engine.clone(), admission.clone());
        common::spawn_bound(|bound| async move {
            let options = semflow::serve::pg::PgOptions {
                admission,
                ..Default::default()
            };
            semflow::serve::pg::serve(&engine, options, std::future::pending(), bound).await
        })
        .await
    };
    let flight = {
        let (engine, admission) = (engine.clone(), admission.clone());
        common::spawn_bound(|bound| async move {
            let options = semflow::serve::flight::FlightOptions {
                admission,
                ..Default::default()
            };
            semflow::serve::flight::serve(&engine, options, std::future::pending(), bound).await
        })
        .await
    };
    let conf = format!("host={} port={} user=semflow", pg.ip(), pg.port());
    let (pg, conn) = tokio_postgres::connect(&conf, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let channel = tonic::transport::Endpoint::new(format!("http://{flight}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut flight = FlightSqlServiceClient::new(channel);
    let embed = || {
        post(
            format!("http://{http}/v1/embeddings"),
            json!({"input": "hi"}),
            None,
        )
    };
    let sql = "SELECT embed('hello', '', 4) AS v";

    let held = admission.enter("test").await.unwrap();
    assert_eq!(embed().await.0, 429);
    let err = pg.query(sql, &[]).await.unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "53000", "{}", db.message());
    let info = flight.execute(sql.into(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    match flight.do_get(ticket.clone()).await {
        Err(arrow_flight::error::FlightError::Tonic(status)) => {
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
        }
        other => panic!("expected RESOURCE_EXHAUSTED, got {:?}", other.map(|_| ())),
    }

    drop(held);
    assert_eq!(embed().await.0, 200);
    assert_eq!(pg.query(sql, &[]).await.unwrap().len(), 1);
    use futures::TryStreamExt;
    let batches: Vec<_> = flight
        .do_get(ticket)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
}
