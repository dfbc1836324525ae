//! Criterion micro-benchmarks of the packed forward pass's CPU kernels at the Qwen3-0.6B shape:
//! q/k-norm + RoPE, attention and add + RMSNorm over 8 sequences of 512 tokens, attention over
//! 2 sequences of 2048 (where the score rows outgrow the caches), and the linear
//! layers: f32 (candle's gemm, and the skinny kernel a short query takes) against bf16 weights
//! at a query's 40 rows and at 512 rows.
//!
//!     cargo bench -p semflow-inference --bench kernels

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// The packed forward pass's CPU kernels at the Qwen3-0.6B shape (16 query heads, 8 kv
/// heads of 128, hidden 1024) over 8 sequences of 512 tokens.
fn cpu_kernels(c: &mut Criterion) {
    use semflow_inference::cpu_kernels::{self as k, Heads, Rope, Rows};
    let shape = Heads {
        heads: 16,
        kv_heads: 8,
        head_dim: 128,
    };
    let (seqs, len, hidden) = (8usize, 512usize, 1024usize);
    let tokens = seqs * len;
    let noise = |n: usize, seed: usize| -> Vec<f32> {
        (0..n)
            .map(|i| (((i + seed) * 7919) % 2000) as f32 / 1000.0 - 1.0)
            .collect()
    };
    let qkv = noise(tokens * shape.qkv_width(), 1);
    let packed: Vec<(usize, usize)> = (0..seqs).map(|s| (s * len, len)).collect();
    let positions: Vec<usize> = (0..seqs).flat_map(|_| 0..len).collect();
    let inv_freq: Vec<f32> = (0..64)
        .map(|i| 1.0 / 1_000_000f32.powf(i as f32 / 64.0))
        .collect();
    let rope = Rope::new(&inv_freq, len);
    let (w, x, delta) = (
        noise(hidden, 2),
        noise(tokens * hidden, 3),
        noise(tokens * hidden, 4),
    );
    let mut g = c.benchmark_group("cpu_kernels_0.6b_8x512");
    g.throughput(Throughput::Elements(tokens as u64));
    g.sample_size(10);
    g.bench_function("qk_norm_rope", |b| {
        let norm = k::QkNorm {
            q: &w[..128],
            k: &w[..128],
            eps: 1e-6,
        };
        b.iter(|| k::qk_norm_rope(&qkv, shape, &positions, norm, &rope))
    });
    g.bench_function("attention_all_rows", |b| {
        b.iter(|| k::attention(&qkv, shape, &packed, Rows::All))
    });
    g.bench_function("add_rms_norm", |b| {
        b.iter(|| k::add_rms_norm(&x, &delta, &w, 1e-6))
    });
    g.finish();

    // Long sequences: one query block's scores against all keys would be 64 x 2048 floats.
    let (seqs, len) = (2usize, 2048usize);
    let qkv = noise(seqs * len * shape.qkv_width(), 5);
    let packed: Vec<(usize, usize)> = (0..seqs).map(|s| (s * len, len)).collect();
    let mut g = c.benchmark_group("cpu_kernels_0.6b_2x2048");
    g.throughput(Throughput::Elements((seqs * len) as u64));
    g.sample_size(10);
    g.bench_function("attention_all_rows", |b| {
        b.iter(|| k::attention(&qkv, shape, &packed, Rows::All))
    });
    g.finish();
}

/// The 0.6B MLP's gate/up projection (`[rows, 1024] · [6144, 1024]ᵀ`) with f32 weights (gemm as
/// the packed pass calls it, and the skinny kernel) and with bf16 weights; throughput in
/// multiply-adds.
fn linear(c: &mut Criterion) {
    use semflow_inference::cpu_kernels::{self as k, bf16};
    let (hidden, out) = (1024usize, 6144usize);
    let noise = |n: usize, seed: usize| -> Vec<f32> {
        (0..n)
            .map(|i| (((i + seed) * 7919) % 2000) as f32 / 1000.0 - 1.0)
            .collect()
    };
    let w = noise(out * hidden, 5);
    let packed = bf16::PackedBf16::from_f32(&w, out, hidden);
    for rows in [40usize, 128, 512] {
        let x = noise(rows * hidden, 6);
        let mut g = c.benchmark_group(format!("linear_0.6b_gate_up_{rows}_rows"));
        g.throughput(Throughput::Elements((rows * hidden * out) as u64));
        g.sample_size(10);
        let (xt, wt) = (
            candle_core::Tensor::from_vec(x.clone(), (rows, hidden), &candle_core::Device::Cpu)
                .expect("x"),
            candle_core::Tensor::from_vec(w.clone(), (out, hidden), &candle_core::Device::Cpu)
                .expect("w"),
        );
        g.bench_function("f32_gemm", |b| {
            b.iter(|| xt.matmul(&wt.t().expect("t")).expect("matmul"))
        });
        if rows <= 128 {
            g.bench_function("f32_skinny", |b| {
                b.iter(|| k::linear_skinny(&x, rows, &w, out))
            });
        }
        g.bench_function("bf16_weights", |b| {
            b.iter(|| bf16::linear(&x, rows, &packed))
        });
        g.finish();
    }
}

criterion_group!(benches, cpu_kernels, linear);
criterion_main!(benches);
