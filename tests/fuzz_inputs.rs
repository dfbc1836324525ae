//! Generated bad input for the two paths tests/fuzz_http.rs and tests/fuzz_decode.rs do not
//! reach (issue 18, part 3):
//! - pipeline files: the shipped TOML pipeline with each key dropped or set to each wrong
//!   value, unknown keys, broken `${VAR}` references, and seeded byte-level mutations of the
//!   TOML and SQL forms; each is loaded and planned up to the continuous INSERT (no broker).
//!   Every one must plan or fail with a message — no panic.
//! - caller-tokenized input (the HTTP API's token ids): seeded random sequences of valid,
//!   special, out-of-vocabulary and extreme ids, empty and over-long sequences, truncated or
//!   refused. Every call must embed (finite unit vectors) or fail with an error naming the
//!   input — no panic, no internal error.

use crate::common;

use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use rand::{Rng, SeedableRng};
use semflow::inference::tokenize::Truncation;
use semflow::inference::{CallOptions, Error};

const SHIPPED_TOML: &str = include_str!("../pipelines/index.toml");
const SHIPPED_SQL: &str = include_str!("../pipelines/index.sql");
const RANDOM_MUTATIONS: usize = 600;

/// TOML values of every kind, and strings that try to escape their SQL literal.
fn wrong_values() -> Vec<&'static str> {
    vec![
        "0",
        "-1",
        "9223372036854775807",
        "1.5",
        "nan",
        "true",
        "\"\"",
        "\"x'; DROP TABLE idx; --\"",
        "\"${UNSET_VARIABLE}\"",
        "\"${BROKEN\"",
        "\"\\u0000\"",
        "[]",
        "[1, \"a\"]",
        "{}",
        "{ a = 1 }",
        "1979-05-27T07:32:00Z",
    ]
}

/// The shipped TOML with each `key = value` line dropped, then with its value replaced by
/// each wrong value; plus unknown keys and tables.
fn toml_variants(shipped: &str) -> Vec<String> {
    let lines: Vec<&str> = shipped.lines().collect();
    let mut out = vec![shipped.to_string()];
    for (i, line) in lines.iter().enumerate() {
        let Some((key, _)) = line.split_once(" = ") else {
            continue;
        };
        if line.starts_with('#') {
            continue;
        }
        let with = |replacement: Option<String>| {
            let mut copy: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            match replacement {
                Some(r) => copy[i] = r,
                None => {
                    copy.remove(i);
                }
            }
            copy.join("\n")
        };
        out.push(with(None));
        for value in wrong_values() {
            out.push(with(Some(format!("{key} = {value}"))));
        }
    }
    for extra in [
        "unknown = 1",
        "[unknown]\nx = 1",
        "[source.extra]\ny = 2",
        "[[source]]\ntable = \"t\"",
    ] {
        out.push(format!("{shipped}\n{extra}\n"));
    }
    out
}

/// `text` with a few random bytes deleted, duplicated, replaced or inserted.
fn mutate(text: &str, rng: &mut impl Rng) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..rng.random_range(1..6) {
        if bytes.is_empty() {
            break;
        }
        let at = rng.random_range(0..bytes.len());
        match rng.random_range(0..4) {
            0 => {
                bytes.remove(at);
            }
            1 => {
                let end = (at + rng.random_range(1..40)).min(bytes.len());
                let piece = bytes[at..end].to_vec();
                bytes.splice(at..at, piece);
            }
            2 => bytes[at] = rng.random(),
            _ => {
                let b = *b"'\"${}[]=;\n\\#:-"
                    .get(rng.random_range(0..15))
                    .unwrap_or(&b'x');
                bytes.insert(at, b);
            }
        }
    }
    bytes
}

/// Loads and plans one pipeline file; `Err` only for a panic or an empty error message.
async fn load_and_plan(path: &std::path::Path) -> Result<bool, String> {
    let engine = common::tiny_engine();
    let attempt = AssertUnwindSafe(async {
        let sql = semflow::pipeline::spec::load(path)?;
        semflow::pipeline::prepare(&engine, &sql).await.map(|_| ())
    })
    .catch_unwind()
    .await;
    match attempt {
        Err(_) => Err(format!("panic on {}", path.display())),
        Ok(Ok(())) => Ok(true),
        Ok(Err(e)) if e.user_message().trim().is_empty() => {
            Err(format!("empty error on {}", path.display()))
        }
        Ok(Err(_)) => Ok(false),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_files_plan_or_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    // Lance locations under the temp dir; the Kafka table is only planned.
    // The Lance location under the temp dir (the Kafka table is only planned); written into
    // the files, not the environment, which other tests' child processes would inherit.
    let index = dir.path().join("idx.lance").to_string_lossy().into_owned();
    let shipped_toml = SHIPPED_TOML.replace("data/docs.lance", &index);
    let shipped_sql = SHIPPED_SQL.replace("data/docs.lance", &index);
    let mut files: Vec<(String, Vec<u8>)> = toml_variants(&shipped_toml)
        .into_iter()
        .map(|t| ("toml".to_string(), t.into_bytes()))
        .collect();
    let structured = files.len();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(18);
    for i in 0..RANDOM_MUTATIONS {
        let (ext, base) = if i % 2 == 0 {
            ("toml", shipped_toml.as_str())
        } else {
            ("sql", shipped_sql.as_str())
        };
        files.push((ext.to_string(), mutate(base, &mut rng)));
    }
    let (mut planned, mut refused, mut failures) = (0, 0, Vec::new());
    for (i, (ext, bytes)) in files.iter().enumerate() {
        let path = dir.path().join(format!("p{i}.{ext}"));
        std::fs::write(&path, bytes).unwrap();
        match load_and_plan(&path).await {
            Ok(true) => planned += 1,
            Ok(false) => refused += 1,
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
    // The shipped file itself plans, and most structured breakage is refused.
    assert!(
        planned >= 1 && refused > structured / 2,
        "{planned} planned"
    );
    println!(
        "pipeline files: {} tried ({structured} structured variants, {RANDOM_MUTATIONS} byte mutations): {planned} planned, {refused} refused with a message, 0 panics",
        files.len()
    );
}

/// One random token-id sequence: valid ids, special ids, ids at and past the vocabulary's
/// end, empty or longer than the model takes.
fn token_ids(rng: &mut impl Rng, vocab: u32, limit: usize) -> Vec<u32> {
    let len = match rng.random_range(0..20) {
        0 => 0,
        1 => limit + rng.random_range(0..64),
        2 => rng.random_range(limit.saturating_sub(4)..=limit + 1),
        _ => rng.random_range(1..48),
    };
    let mut ids: Vec<u32> = (0..len)
        .map(|_| match rng.random_range(0..10) {
            0 => vocab - 1,
            1 => 151_643, // <|endoftext|>, also mid-sequence
            2 => 151_644,
            _ => rng.random_range(0..vocab),
        })
        .collect();
    // One sequence in eight carries an id outside the vocabulary.
    if !ids.is_empty() && rng.random_range(0..8) == 0 {
        let at = rng.random_range(0..ids.len());
        ids[at] = if rng.random() { vocab } else { u32::MAX };
    }
    ids
}

/// Every call computes: the fuzzed inputs are what is under test, not the cache.
fn options(truncation: Truncation) -> CallOptions {
    CallOptions {
        truncation,
        use_cache: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_id_inputs_embed_or_fail_cleanly() {
    const CALLS: usize = 1500;
    let engine = common::tiny_engine();
    let inference = engine.inference();
    let limit = inference.embed_token_limit().await.unwrap();
    // The vocabulary's size, from the refusal of an id far past it.
    let probe = inference
        .embed_ids(vec![vec![u32::MAX]], options(Truncation::End))
        .await
        .unwrap_err()
        .to_string();
    let vocab: u32 = probe
        .rsplit("size ")
        .next()
        .and_then(|s| s.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no vocabulary size in {probe:?}"));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1818);
    let (mut embedded, mut refused, mut sequences) = (0, 0, 0);
    for call in 0..CALLS {
        let seqs: Vec<Vec<u32>> = (0..rng.random_range(1..4))
            .map(|_| token_ids(&mut rng, vocab, limit))
            .collect();
        sequences += seqs.len();
        let truncation = if call % 2 == 0 {
            Truncation::End
        } else {
            Truncation::Error
        };
        let n = seqs.len();
        let result = AssertUnwindSafe(inference.embed_ids(seqs.clone(), options(truncation)))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| panic!("panic on {seqs:?}"));
        match result {
            Ok(vectors) => {
                assert_eq!(vectors.len(), n);
                for v in &vectors {
                    let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                    assert!(
                        v.iter().all(|x| x.is_finite()) && (norm - 1.0).abs() < 1e-3,
                        "not a unit vector for {seqs:?}"
                    );
                }
                embedded += 1;
            }
            Err(e @ (Error::InvalidArgument(_) | Error::TooLong { .. })) => {
                let message = e.to_string();
                assert!(
                    message.contains("input ")
                        || message.contains("row ")
                        || message.contains("tokens"),
                    "{message}"
                );
                refused += 1;
            }
            Err(other) => panic!("not a clean refusal for {seqs:?}: {other}"),
        }
    }
    assert!(
        embedded > 0 && refused > 0,
        "{embedded} embedded, {refused} refused"
    );
    println!(
        "token ids: {CALLS} calls ({sequences} sequences, vocabulary {vocab}, limit {limit}): {embedded} embedded, {refused} refused with a message naming the input, 0 panics"
    );
}
