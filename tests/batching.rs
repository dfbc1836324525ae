//! Batching must not change results: an input embedded alone, packed with inputs of other
//! lengths, or sent by concurrent queries gives the same vector (both backends).

use crate::common;

use std::sync::Arc;

use semflow::inference::tokenize::Truncation;
use semflow::inference::{BackendKind, CallOptions, EmbedInput, Inference, RerankInput};

const OPTS: CallOptions = CallOptions {
    truncation: Truncation::End,
    use_cache: false,
};

fn inputs() -> Vec<EmbedInput> {
    let texts = [
        "",
        "x",
        "Graphene is a single layer of carbon atoms.",
        "石墨烯是一种二维碳纳米材料。",
        &"a long document about heat conduction in layered materials ".repeat(30),
        "short query",
    ];
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| EmbedInput {
            text: t.to_string(),
            instruction: (i % 2 == 1).then(|| "Find passages".to_string()),
        })
        .collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

async fn check(backend: BackendKind) {
    let inference = Inference::new(common::tiny_config_with(backend));
    let all = inputs();
    let rows: Vec<usize> = (0..all.len()).collect();
    let together = inference
        .embed(all.clone(), rows.clone(), OPTS)
        .await
        .unwrap();
    for (i, input) in all.iter().enumerate() {
        let alone = inference
            .embed(vec![input.clone()], vec![0], OPTS)
            .await
            .unwrap();
        let err = max_abs(&alone[0], &together[i]);
        assert!(
            err < 1e-5,
            "{backend:?}: input {i} differs by {err} alone vs packed"
        );
    }

    // Concurrent callers share the model thread; each gets its own answers in order.
    let mut handles = Vec::new();
    for k in 0..4 {
        let inference = Arc::clone(&inference);
        let mut mine = all.clone();
        mine.rotate_left(k);
        handles.push(tokio::spawn(async move {
            let rows: Vec<usize> = (0..mine.len()).collect();
            (k, inference.embed(mine, rows, OPTS).await.unwrap())
        }));
    }
    for h in handles {
        let (k, got) = h.await.unwrap();
        for (j, v) in got.iter().enumerate() {
            let err = max_abs(v, &together[(j + k) % all.len()]);
            assert!(
                err < 1e-5,
                "{backend:?}: concurrent caller {k} item {j} differs by {err}"
            );
        }
    }

    let pairs: Vec<RerankInput> = all
        .iter()
        .map(|i| RerankInput {
            query: "graphene".into(),
            document: i.text.clone(),
            instruction: None,
        })
        .collect();
    let together = inference
        .rerank(pairs.clone(), rows.clone(), OPTS)
        .await
        .unwrap();
    for (i, p) in pairs.into_iter().enumerate() {
        let alone = inference.rerank(vec![p], vec![0], OPTS).await.unwrap();
        assert!(
            (alone[0] - together[i]).abs() < 1e-5,
            "{backend:?}: pair {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_batches_are_invariant() {
    check(BackendKind::Packed).await;
}

#[cfg(feature = "mistralrs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistralrs_batches_are_invariant() {
    check(BackendKind::MistralRs).await;
}

/// Duplicates inside a batch are computed once; the cache serves repeats across calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupe_and_cache_counters() {
    use std::sync::atomic::Ordering::Relaxed;
    let inference = Inference::new(common::tiny_config());
    let doc = |t: &str| EmbedInput {
        text: t.into(),
        instruction: None,
    };
    let batch = vec![doc("a b"), doc("c d"), doc("a b"), doc("a b")];
    let opts = CallOptions {
        truncation: Truncation::End,
        use_cache: true,
    };
    inference
        .embed(batch.clone(), vec![0, 1, 2, 3], opts)
        .await
        .unwrap();
    assert_eq!(inference.stats.embed_inferred.load(Relaxed), 2);
    inference
        .embed(batch, vec![0, 1, 2, 3], opts)
        .await
        .unwrap();
    assert_eq!(
        inference.stats.embed_inferred.load(Relaxed),
        2,
        "second call served from cache"
    );
    let stats: std::collections::HashMap<_, _> = inference.stats_rows().into_iter().collect();
    assert_eq!(
        (stats["embed_cache_hits"], stats["embed_cache_misses"]),
        (2, 2)
    );
}

/// SQL with inference works from a current-thread runtime too (no `block_in_place` there):
/// the model work runs on semflow's own runtime and threads.
#[tokio::test(flavor = "current_thread")]
async fn works_on_a_current_thread_runtime() {
    let engine = common::tiny_engine();
    let r = engine
        .run_sql("SELECT round(inner_product(embed(t), embed(t)), 4) AS n, rerank('q', t) >= 0 AS ok FROM (VALUES ('a'), ('bb cc')) AS v(t)")
        .await
        .unwrap();
    let rows: usize = r[0].batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 2);
}

/// Callers that count tokens first (the HTTP API's limits and `usage`) tokenize once: the core
/// embeds and scores the ids it is handed instead of tokenizing the text again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenized_inputs_are_not_tokenized_again() {
    let inference = Inference::new(common::tiny_config());
    let doc = |t: &str| EmbedInput {
        text: t.into(),
        instruction: None,
    };
    let texts = vec![doc("graphene conducts heat"), doc("a b"), doc("a b")];
    let ids = inference.tokenize_embed(&texts).await.unwrap();
    let plain = inference
        .embed(texts.clone(), vec![0, 1, 2], OPTS)
        .await
        .unwrap();
    let reused = inference
        .embed_tokenized(texts.clone(), ids.clone(), vec![0, 1, 2], OPTS)
        .await
        .unwrap();
    assert_eq!(plain, reused);
    assert_ne!(plain[0], plain[1], "the two texts must embed differently");
    // Handed the ids of another text, the core embeds those ids: the text is not re-read.
    let swapped = vec![ids[1].clone(), ids[0].clone(), ids[0].clone()];
    let from_ids = inference
        .embed_tokenized(texts, swapped, vec![0, 1, 2], OPTS)
        .await
        .unwrap();
    assert_eq!(from_ids[0], plain[1]);
    assert_eq!(from_ids[1], plain[0]);

    let pair = |d: &str| RerankInput {
        query: "what conducts heat".into(),
        document: d.into(),
        instruction: None,
    };
    let pairs = vec![pair("graphene conducts heat"), pair("wood")];
    let bodies = inference.tokenize_rerank(&pairs).await.unwrap();
    let plain = inference
        .rerank(pairs.clone(), vec![0, 1], OPTS)
        .await
        .unwrap();
    let swapped = vec![bodies[1].clone(), bodies[0].clone()];
    let from_ids = inference
        .rerank_tokenized(pairs, swapped, vec![0, 1], OPTS)
        .await
        .unwrap();
    assert_eq!(from_ids, vec![plain[1], plain[0]]);
    assert_ne!(
        plain[0], plain[1],
        "the two documents must score differently"
    );
    let lengths = inference.rerank_prompt_lengths(&bodies).await.unwrap();
    let (pre, post) = inference.rerank_affixes().await.unwrap();
    assert_eq!(lengths[1], pre.len() + bodies[1].len() + post.len());
}
