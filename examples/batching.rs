//! Measures how batch composition affects embedding throughput: 32 inputs of equal token
//! length vs 32 of mixed lengths (same total tokens), cache off, on a random model.
//!
//!     cargo run --release --example batching -- [PRESET] [REPEATS] [BACKEND]
//!
//! PRESET is tiny, small or 0.6b (default small); BACKEND packed (default) or mistralrs.
//! Prints milliseconds per batch (median).

use std::time::Instant;

use semflow::inference::config::LoadOptions;
use semflow::inference::device::{DTypeSpec, DeviceSpec};
use semflow::inference::tokenize::Truncation;
use semflow::inference::{BackendKind, CallOptions, EmbedInput, Inference, InferenceConfig};

fn words(n: usize, salt: usize) -> String {
    (0..n)
        .map(|i| format!("w{}", (i * 7 + salt) % 97))
        .collect::<Vec<_>>()
        .join(" ")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    for refused in semflow::inference::allocator::configure() {
        eprintln!("{refused}");
    }
    let args: Vec<String> = std::env::args().collect();
    let preset = args.get(1).cloned().unwrap_or_else(|| "small".into());
    let repeats: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(5);
    let backend: BackendKind = args
        .get(3)
        .map(|b| b.parse())
        .transpose()?
        .unwrap_or_default();
    let inference = Inference::new(InferenceConfig {
        embed_model: format!("random:{preset}"),
        backend,
        load: LoadOptions {
            device: DeviceSpec::Cpu,
            dtype: DTypeSpec::Auto,
            max_batch: 64,
        },
        cache_size: semflow::inference::cache::CacheSize(0),
        ..InferenceConfig::default()
    });
    let opts = CallOptions {
        truncation: Truncation::End,
        use_cache: false,
    };
    // Equal: 32 texts of 64 words. Mixed: 32 texts of 8..120 words (same mean).
    let equal: Vec<EmbedInput> = (0..32)
        .map(|i| EmbedInput {
            text: words(64, i),
            instruction: None,
        })
        .collect();
    let mixed: Vec<EmbedInput> = (0..32)
        .map(|i| EmbedInput {
            text: words(8 + (i * 112) / 31, i),
            instruction: None,
        })
        .collect();
    let rows: Vec<usize> = (0..32).collect();
    // Warm-up loads the model.
    inference
        .embed(equal[..2].to_vec(), rows[..2].to_vec(), opts)
        .await?;
    for (name, batch) in [("equal", &equal), ("mixed", &mixed)] {
        let mut times = Vec::new();
        for _ in 0..repeats {
            let start = Instant::now();
            let before = inference
                .stats
                .embed_tokens
                .load(std::sync::atomic::Ordering::Relaxed);
            inference.embed(batch.clone(), rows.clone(), opts).await?;
            let tokens = inference
                .stats
                .embed_tokens
                .load(std::sync::atomic::Ordering::Relaxed)
                - before;
            times.push(start.elapsed().as_secs_f64() * 1000.0);
            if times.len() == 1 {
                println!("{name}: {tokens} tokens per batch");
            }
        }
        println!(
            "{name}: 32 inputs, median {:.1} ms over {repeats} runs (preset {preset})",
            median(times)
        );
    }
    Ok(())
}
