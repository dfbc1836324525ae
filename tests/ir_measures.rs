//! `ir_measures()` equals the references (issue 36): on a generated run and graded qrels of
//! over 1,000 queries — tied scores, queries with no relevant document, queries only one side
//! holds — every measure of every query, and their means, equal pytrec_eval's (trec_eval's own
//! code) and ranx's to 1e-6, with the default options, `judged_only` and `relevance_level=2`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use arrow::array::AsArray;
use arrow::datatypes::Float64Type;
use rand::{Rng, SeedableRng};

use crate::common;

const MEASURES: &str =
    "ndcg@10 ndcg map@100 map mrr mrr@10 precision@5 precision@20 recall@10 recall@100";

/// Query → measure → value.
type Scores = BTreeMap<String, BTreeMap<String, f64>>;

/// What the generated data holds, to check that the hard cases are there.
#[derive(Default)]
struct Shape {
    tied_queries: usize,
    no_relevant: usize,
    run_only: usize,
    qrels_only: usize,
}

/// Writes run.csv and qrels.csv: scores on a 0.05 grid (so ties are common), grades 0–3.
fn generate(dir: &std::path::Path) -> Shape {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(36);
    let (mut run, mut qrels) = (
        String::from("query_id,doc_id,score\n"),
        String::from("query_id,doc_id,relevance\n"),
    );
    let mut shape = Shape::default();
    for q in 0..1200 {
        let side: f64 = rng.random();
        let in_run = side > 0.04;
        let in_qrels = side < 0.92;
        shape.run_only += usize::from(in_run && !in_qrels);
        shape.qrels_only += usize::from(!in_run && in_qrels);
        if in_run {
            let mut docs: Vec<u32> = (0..rng.random_range(1..80))
                .map(|_| rng.random_range(0..300))
                .collect();
            docs.sort_unstable();
            docs.dedup();
            let mut seen = std::collections::HashSet::new();
            let mut tied = false;
            for d in docs {
                let score = f64::from(rng.random_range(0..=20u32)) / 20.0;
                tied |= !seen.insert(score.to_bits());
                writeln!(run, "q{q},d{d},{score}").unwrap();
            }
            shape.tied_queries += usize::from(tied);
        }
        if in_qrels {
            let mut docs: Vec<u32> = (0..rng.random_range(1..40))
                .map(|_| rng.random_range(0..300))
                .collect();
            docs.sort_unstable();
            docs.dedup();
            let none_relevant = rng.random_bool(0.05);
            shape.no_relevant += usize::from(none_relevant);
            for d in docs {
                let grade = if none_relevant {
                    0
                } else {
                    [0, 0, 1, 2, 3][rng.random_range(0..5)]
                };
                writeln!(qrels, "q{q},d{d},{grade}").unwrap();
            }
        }
    }
    std::fs::write(dir.join("run.csv"), run).unwrap();
    std::fs::write(dir.join("qrels.csv"), qrels).unwrap();
    shape
}

/// `ir_measures` with `options`, per query, and its means by SQL's avg().
async fn semflow_scores(
    engine: &semflow::Engine,
    options: &str,
) -> (Scores, BTreeMap<String, f64>) {
    let call = format!("ir_measures('run', 'qrels', '{MEASURES}', '{options}')");
    let mut scores = Scores::new();
    for result in engine
        .run_sql(&format!("SELECT * FROM {call}"))
        .await
        .unwrap()
    {
        for batch in &result.batches {
            let (q, m) = (
                batch.column(0).as_string::<i32>(),
                batch.column(1).as_string::<i32>(),
            );
            let v = batch.column(2).as_primitive::<Float64Type>();
            for i in 0..batch.num_rows() {
                scores
                    .entry(q.value(i).to_string())
                    .or_default()
                    .insert(m.value(i).to_string(), v.value(i));
            }
        }
    }
    let mut means = BTreeMap::new();
    let sql = format!("SELECT measure, avg(value) FROM {call} GROUP BY measure");
    for result in engine.run_sql(&sql).await.unwrap() {
        for batch in &result.batches {
            let m = batch.column(0).as_string::<i32>();
            let v = batch.column(1).as_primitive::<Float64Type>();
            for i in 0..batch.num_rows() {
                means.insert(m.value(i).to_string(), v.value(i));
            }
        }
    }
    (scores, means)
}

/// Every measure the reference has for every query equals semflow's, the same queries are
/// evaluated, and the means agree; returns how many values were compared.
fn compare(
    name: &str,
    ours: &Scores,
    means: &BTreeMap<String, f64>,
    reference: &serde_json::Value,
) -> usize {
    let reference: Scores = serde_json::from_value(reference.clone()).unwrap();
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        reference.keys().collect::<Vec<_>>(),
        "{name}: the evaluated queries differ"
    );
    let mut compared = 0;
    let mut sums: BTreeMap<&str, f64> = BTreeMap::new();
    for (query, values) in &reference {
        for (measure, expected) in values {
            let got = ours[query][measure];
            assert!(
                (got - expected).abs() <= 1e-6,
                "{name}: {query} {measure}: semflow {got}, reference {expected}"
            );
            *sums.entry(measure).or_default() += expected;
            compared += 1;
        }
    }
    for (measure, sum) in sums {
        let mean = sum / reference.len() as f64;
        assert!(
            (means[measure] - mean).abs() <= 1e-6,
            "{name}: mean {measure}: semflow {}, reference {mean}",
            means[measure]
        );
    }
    compared
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ir_measures_equal_pytrec_eval_and_ranx() {
    let dir = tempfile::tempdir().unwrap();
    let shape = generate(dir.path());
    assert!(shape.tied_queries > 900 && shape.no_relevant > 20);
    assert!(shape.run_only > 50 && shape.qrels_only > 20);
    let path = |f: &str| dir.path().join(f).display().to_string();
    let Some(reference) = common::python_client(
        "ir_measures.py",
        vec![path("run.csv"), path("qrels.csv")],
        "SEMFLOW_TEST_IR",
        "pip install pytrec-eval-terrier ranx",
    )
    .await
    else {
        return;
    };
    let engine = common::tiny_engine();
    engine
        .run_sql(&format!(
            "CREATE EXTERNAL TABLE run STORED AS CSV LOCATION '{}' OPTIONS ('format.has_header' 'true');
             CREATE EXTERNAL TABLE qrels STORED AS CSV LOCATION '{}' OPTIONS ('format.has_header' 'true')",
            path("run.csv"),
            path("qrels.csv")
        ))
        .await
        .unwrap();
    let mut compared = 0;
    for options in ["", "judged_only", "relevance_level=2"] {
        let (ours, means) = semflow_scores(&engine, options).await;
        assert!(ours.len() >= 1000, "{} queries evaluated", ours.len());
        let name = format!("pytrec_eval [{options}]");
        compared += compare(&name, &ours, &means, &reference["pytrec_eval"][options]);
        if options.is_empty() {
            compared += compare("ranx", &ours, &means, &reference["ranx"]);
        }
    }
    println!(
        "{compared} values equal to the references ({})",
        reference["versions"]
    );
}
