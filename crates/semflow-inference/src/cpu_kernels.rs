//! F32 CPU kernels for the packed forward pass: the steps between the big projections that
//! candle runs as several single-threaded passes with an intermediate each.
//!
//! - [`qk_norm_rope`]: Qwen3's per-head RMSNorm of q and k and the rotary embedding, in one
//!   pass over the fused qkv projection, token rows on all cores; the result keeps the qkv
//!   layout (`[tokens, (heads + 2 * kv_heads) * head_dim]`), so nothing is transposed.
//! - [`attention`]: causal attention over the packed sequences, read straight from that layout
//!   (grouped-query heads share their k/v rows, never copied), one task per (query block,
//!   head) on all cores. A task walks the keys in tiles with an online softmax (running max
//!   and sum per query, FlashAttention's forward), so its scores stay a cache-sized tile at
//!   any length instead of a row per key; scores and values go through `gemm` (AVX-512 where
//!   the CPU has it) and the softmax through a vectorised exp. Writes `[rows, heads *
//!   head_dim]`, the o projection's input; [`Rows::Last`] computes only each sequence's last
//!   query.
//! - [`add_rms_norm`]: the residual add and the next RMSNorm in one pass; [`silu_mul`]: the
//!   MLP's `silu(gate) * up`.
//! - [`linear_skinny`]: `x · wᵀ` for a few rows of x (a batch of one short query), streaming
//!   each weight row once; gemm would first copy (pack) the whole weight, which at a few rows
//!   costs more than the product.
//!
//! - [`bf16::linear`]: linear layers whose weights stay bf16 in memory, on AVX512-BF16's
//!   `vdpbf16ps` where the CPU has it.
//!
//! Loops are compiled three times (AVX-512, AVX2+FMA, baseline x86-64) and the best the CPU
//! has is chosen at run time (`by_isa!`), so one binary runs everywhere.

use std::cell::RefCell;
use std::sync::OnceLock;

use rayon::prelude::*;

/// Query rows per attention task.
const QUERY_BLOCK: usize = 64;

/// Keys per attention tile: a task's scores are at most `QUERY_BLOCK x KEY_BLOCK` floats
/// (64 KiB), which stay in a core's L2 cache while they are exponentiated and multiplied by
/// the values, however long the sequence.
const KEY_BLOCK: usize = 256;

/// The instruction sets the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Baseline,
}

/// The best instruction set this CPU runs (detected once).
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Baseline
    })
}

/// Defines `fn $name` whose body is compiled for AVX-512, AVX2+FMA and baseline x86-64 and
/// runs the variant [`isa`] picks. The body's helpers must be `#[inline(always)]` to be
/// compiled into each variant.
macro_rules! by_isa {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn generic($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    generic($($arg),*)
                }
                match $crate::cpu_kernels::isa() {
                    // Safety: `isa` detected these features on this CPU.
                    $crate::cpu_kernels::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::cpu_kernels::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::cpu_kernels::Isa::Baseline => {}
                }
            }
            generic($($arg),*)
        }
    };
}

// After `by_isa!`, which it uses.
pub mod bf16;

/// Sum of squares with 16 independent lanes, so the loop vectorises without reordering
/// a single serial sum.
#[inline(always)]
fn sum_squares(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..16 {
            acc[i] += c[i] * c[i];
        }
    }
    acc.iter().sum::<f32>() + tail.iter().map(|v| v * v).sum::<f32>()
}

/// `1 / sqrt(mean(x²) + eps)`, the RMSNorm scale of `x`.
#[inline(always)]
fn rms_scale(x: &[f32], eps: f32) -> f32 {
    1.0 / (sum_squares(x) / x.len() as f32 + eps).sqrt()
}

/// `e^x` for f32 without branches or calls, so a loop over it vectorises: Cephes' expf
/// (range reduction by ln 2 in two parts, degree-5 polynomial), relative error ~1e-7;
/// inputs are clamped to [-87.3, 88.7] (the softmax only feeds it values ≤ 0).
#[inline(always)]
fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Rounds to the nearest integer by adding and removing 1.5 * 2^23.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.7);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5e-1;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// The shape of a fused qkv row: `heads` query heads, then `kv_heads` key heads, then
/// `kv_heads` value heads, each `head_dim` wide.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl Heads {
    /// Floats per qkv row.
    pub fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    /// Floats per attention output row.
    pub fn out_width(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// Rotary tables, `[positions, head_dim / 2]` each.
pub struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
}

impl Rope {
    /// Tables for positions `0..len` with the model's inverse frequencies.
    pub fn new(inv_freq: &[f32], len: usize) -> Self {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for p in 0..len {
            for &f in inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Self { cos, sin, half }
    }
}

/// Qwen3's RMSNorm of each q and k head: the weights (`head_dim` each) and epsilon.
#[derive(Debug, Clone, Copy)]
pub struct QkNorm<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub eps: f32,
}

/// Per-head RMSNorm and the rotary embedding of each row's q and k heads; v is copied.
/// `positions[t]` is row t's position within its sequence.
pub fn qk_norm_rope(
    qkv: &[f32],
    shape: Heads,
    positions: &[usize],
    norm: QkNorm<'_>,
    rope: &Rope,
) -> Vec<f32> {
    let width = shape.qkv_width();
    let mut out = vec![0f32; qkv.len()];
    out.par_chunks_mut(width)
        .zip(qkv.par_chunks(width))
        .zip(positions.par_iter())
        .for_each(|((dst, src), &pos)| {
            let (cos, sin) = (
                &rope.cos[pos * rope.half..(pos + 1) * rope.half],
                &rope.sin[pos * rope.half..(pos + 1) * rope.half],
            );
            norm_rope_row(dst, src, shape, norm, cos, sin);
        });
    out
}

by_isa! {
    /// One row of [`qk_norm_rope`].
    fn norm_rope_row(
        dst: &mut [f32],
        src: &[f32],
        shape: Heads,
        norm: QkNorm<'_>,
        cos: &[f32],
        sin: &[f32],
    ) {
        let hd = shape.head_dim;
        let half = hd / 2;
        let normed = shape.heads + shape.kv_heads;
        for h in 0..normed {
            let w = if h < shape.heads { norm.q } else { norm.k };
            let x = &src[h * hd..(h + 1) * hd];
            let y = &mut dst[h * hd..(h + 1) * hd];
            let scale = rms_scale(x, norm.eps);
            let (y1, y2) = y.split_at_mut(half);
            let (x1, x2) = x.split_at(half);
            let (w1, w2) = w.split_at(half);
            for i in 0..half {
                let a = x1[i] * scale * w1[i];
                let b = x2[i] * scale * w2[i];
                y1[i] = a * cos[i] - b * sin[i];
                y2[i] = b * cos[i] + a * sin[i];
            }
        }
        dst[normed * hd..].copy_from_slice(&src[normed * hd..]);
    }
}

/// `(x + delta, rms_norm(x + delta) * w)` row by row, rows `w.len()` wide.
pub fn add_rms_norm(x: &[f32], delta: &[f32], w: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let width = w.len();
    let mut sum = vec![0f32; x.len()];
    let mut normed = vec![0f32; x.len()];
    sum.par_chunks_mut(width)
        .zip(normed.par_chunks_mut(width))
        .zip(x.par_chunks(width).zip(delta.par_chunks(width)))
        .for_each(|((s, n), (x, d))| add_norm_row(s, n, x, d, w, eps));
    (sum, normed)
}

by_isa! {
    /// One row of [`add_rms_norm`].
    fn add_norm_row(sum: &mut [f32], normed: &mut [f32], x: &[f32], delta: &[f32], w: &[f32], eps: f32) {
        for ((s, &a), &b) in sum.iter_mut().zip(x).zip(delta) {
            *s = a + b;
        }
        let scale = rms_scale(sum, eps);
        for ((n, &s), &w) in normed.iter_mut().zip(sum.iter()).zip(w) {
            *n = s * scale * w;
        }
    }
}

/// Which query rows [`attention`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// Every token: `[tokens, heads * head_dim]`.
    All,
    /// Each sequence's last token: `[sequences, heads * head_dim]`.
    Last,
}

/// One attention task: query rows `q0..q1` of the sequence at `offset`, for every query head
/// that reads key/value head `kv_head`, written to output row `out_row` on.
#[derive(Debug, Clone, Copy)]
struct Task {
    offset: usize,
    q0: usize,
    q1: usize,
    kv_head: usize,
    out_row: usize,
}

/// A pointer to the output that tasks write disjoint blocks of.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// Safety: every task writes only its own (rows, head) block of the buffer, which outlives
// the parallel loop.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper, not the field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// A worker thread's buffers, reused across tasks and passes. A task's query rows (its heads
/// stacked) and everything computed for them are kept column by column (`[cols][rows]`), so
/// gemm reads and writes them without packing and the softmax runs across rows in vector
/// lanes: the queries (`hd x rows`), a tile of scores (`bk x rows`), the output accumulators
/// (`hd x rows`), and per row the running maximum and sum of `exp(score - max)` over the
/// tiles seen, the tile's maximum and the factor the accumulators are rescaled by.
#[derive(Default)]
struct Scratch {
    q: Vec<f32>,
    scores: Vec<f32>,
    acc: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    tile_max: Vec<f32>,
    keep: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Causal attention of each sequence `(offset, len)` of the packed `qkv` (rows laid out as
/// [`Heads`] says, already normed and rotated), scaled by `1/sqrt(head_dim)`.
pub fn attention(qkv: &[f32], shape: Heads, seqs: &[(usize, usize)], rows: Rows) -> Vec<f32> {
    let tokens = qkv.len() / shape.qkv_width();
    let mut tasks = Vec::new();
    let mut out_rows = 0;
    for &(offset, len) in seqs {
        assert!(
            offset + len <= tokens && len > 0,
            "sequence outside the packed rows"
        );
        // The first query row computed; blocks of QUERY_BLOCK rows from there to the end.
        let first = match rows {
            Rows::All => 0,
            Rows::Last => len - 1,
        };
        for q0 in (first..len).step_by(QUERY_BLOCK) {
            for kv_head in 0..shape.kv_heads {
                tasks.push(Task {
                    offset,
                    q0,
                    q1: (q0 + QUERY_BLOCK).min(len),
                    kv_head,
                    out_row: out_rows + q0 - first,
                });
            }
        }
        out_rows += len - first;
    }
    let mut out = vec![0f32; out_rows * shape.out_width()];
    let ptr = OutPtr(out.as_mut_ptr());
    let out_len = out.len();
    tasks
        .par_iter()
        .for_each(|task| attend_block(qkv, shape, *task, ptr, out_len));
    out
}

/// One task: its query rows against the keys they see, one tile of keys at a time
/// (FlashAttention's forward on the CPU). The query heads that share the task's key/value
/// head are stacked into one block of rows (head-major), so each key and value tile is read
/// and packed once for all of them. Each tile's scores are exponentiated against the rows'
/// running maximum and added, times the tile's values, into the rows' accumulators (rescaled
/// first by how much each row's maximum grew); the rows are divided by their sums into the
/// output at the end.
fn attend_block(qkv: &[f32], shape: Heads, task: Task, out: OutPtr, out_len: usize) {
    let hd = shape.head_dim;
    let width = shape.qkv_width();
    let groups = shape.heads / shape.kv_heads;
    let (m, n) = (task.q1 - task.q0, task.q1);
    let rows = m * groups;
    let first_head = task.kv_head * groups;
    let k = task.offset * width + (shape.heads + task.kv_head) * hd;
    let v = task.offset * width + (shape.heads + shape.kv_heads + task.kv_head) * hd;
    let out_width = shape.out_width();
    // Every block read or written through a pointer lies inside its buffer: what makes the
    // `gemm` calls and the output rows below sound.
    let last_row = |start: usize, rows: usize, stride: usize| start + (rows - 1) * stride + hd;
    assert!(last_row(k.max(v), n, width) <= qkv.len());
    let dst = task.out_row * out_width + first_head * hd;
    assert!(last_row(dst + (groups - 1) * hd, m, out_width) <= out_len);
    let scale = 1.0 / (hd as f32).sqrt();
    SCRATCH.with_borrow_mut(|s| {
        // Row g * m + i: query head first_head + g at position q0 + i.
        s.q.resize(hd * rows, 0.0);
        for g in 0..groups {
            for i in 0..m {
                let at = (task.offset + task.q0 + i) * width + (first_head + g) * hd;
                let r = g * m + i;
                for (d, &x) in qkv[at..at + hd].iter().enumerate() {
                    s.q[d * rows + r] = x;
                }
            }
        }
        for (state, start) in [
            (&mut s.max, f32::NEG_INFINITY),
            (&mut s.sum, 0.0),
            (&mut s.tile_max, 0.0),
            (&mut s.keep, 0.0),
        ] {
            state.clear();
            state.resize(rows, start);
        }
        s.acc.resize(hd * rows, 0.0);
        for k0 in (0..n).step_by(KEY_BLOCK) {
            let bk = KEY_BLOCK.min(n - k0);
            s.scores.resize(bk * rows, 0.0);
            // Safety: bounds checked above; `q`, `scores` and `acc` are this thread's own
            // buffers of hd x rows, bk x rows and hd x rows.
            unsafe {
                // scores[rows, bk] = scale * q[rows, hd] · kᵀ[hd, k0..k0 + bk]
                gemm::gemm(
                    rows,
                    bk,
                    hd,
                    s.scores.as_mut_ptr(),
                    rows as isize,
                    1,
                    false,
                    s.q.as_ptr(),
                    rows as isize,
                    1,
                    qkv.as_ptr().add(k + k0 * width),
                    width as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            // Keys after a query's position are hidden from it (only in tiles that reach
            // past the block's first query).
            for (j, col) in s.scores.chunks_exact_mut(rows).enumerate() {
                let hidden_rows = (k0 + j).saturating_sub(task.q0).min(m);
                if hidden_rows == 0 {
                    continue;
                }
                for g in 0..groups {
                    col[g * m..g * m + hidden_rows].fill(f32::NEG_INFINITY);
                }
            }
            softmax_tile(
                &mut s.scores,
                &mut s.max,
                &mut s.sum,
                &mut s.tile_max,
                &mut s.keep,
            );
            // The first tile writes the accumulators; later ones add to them.
            if k0 > 0 {
                scale_rows(&mut s.acc, &s.keep);
            }
            // Safety: as above.
            unsafe {
                // acc[rows, hd] (+)= p[rows, bk] · v[k0..k0 + bk, hd]
                gemm::gemm(
                    rows,
                    hd,
                    bk,
                    s.acc.as_mut_ptr(),
                    rows as isize,
                    1,
                    k0 > 0,
                    s.scores.as_ptr(),
                    rows as isize,
                    1,
                    qkv.as_ptr().add(v + k0 * width),
                    1,
                    width as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        }
        for (r, &sum) in s.sum.iter().enumerate() {
            let (g, i) = (r / m, r % m);
            // Safety: row i, head first_head + g of this task's output block, inside `out`
            // (checked above) and written by this task only.
            let out_row = unsafe {
                std::slice::from_raw_parts_mut(out.get().add(dst + i * out_width + g * hd), hd)
            };
            let inv = 1.0 / sum;
            for (d, o) in out_row.iter_mut().enumerate() {
                *o = s.acc[d * rows + r] * inv;
            }
        }
    });
}

by_isa! {
    /// One key tile of the rows' online softmax, in place on `scores` (`[keys][rows]`, hidden
    /// keys at -inf): each score becomes `exp(score - max)` against its row's new running
    /// maximum, the running `max` and `sum` take in the tile, and `keep` is set to the factor
    /// by which what each row added before must be scaled (`exp(old max - new max)`). The rows
    /// sit in vector lanes. The first key of a sequence is seen by every query, so a row's
    /// maximum is finite from the first tile on.
    fn softmax_tile(
        scores: &mut [f32],
        max: &mut [f32],
        sum: &mut [f32],
        tile_max: &mut [f32],
        keep: &mut [f32],
    ) {
        let rows = max.len();
        tile_max.fill(f32::NEG_INFINITY);
        for col in scores.chunks_exact(rows) {
            for (t, &x) in tile_max.iter_mut().zip(col) {
                *t = t.max(x);
            }
        }
        for ((t, m), k) in tile_max.iter_mut().zip(max.iter_mut()).zip(keep.iter_mut()) {
            let new = t.max(*m);
            // exp(-inf) on the first tile: the running sum is 0 then, so the factor is moot.
            *k = fast_exp(*m - new);
            *m = new;
            *t = 0.0;
        }
        // tile_max now gathers the tile's sums.
        for col in scores.chunks_exact_mut(rows) {
            for ((x, &m), t) in col.iter_mut().zip(max.iter()).zip(tile_max.iter_mut()) {
                *x = fast_exp(*x - m);
                *t += *x;
            }
        }
        for ((s, &k), &t) in sum.iter_mut().zip(keep.iter()).zip(tile_max.iter()) {
            *s = *s * k + t;
        }
    }
}

by_isa! {
    /// Scales each row of `acc` (`[cols][rows]`) by its factor in `keep`.
    fn scale_rows(acc: &mut [f32], keep: &[f32]) {
        for col in acc.chunks_exact_mut(keep.len()) {
            for (x, &k) in col.iter_mut().zip(keep) {
                *x *= k;
            }
        }
    }
}

/// `silu(gate) * up` of each row of `gate_up = [gate | up]` (each `inter` wide).
pub fn silu_mul(gate_up: &[f32], inter: usize) -> Vec<f32> {
    let mut out = vec![0f32; gate_up.len() / 2];
    out.par_chunks_mut(inter)
        .zip(gate_up.par_chunks(2 * inter))
        .for_each(|(o, gu)| silu_row(o, gu));
    out
}

by_isa! {
    /// One row of [`silu_mul`].
    fn silu_row(out: &mut [f32], gate_up: &[f32]) {
        let (gate, up) = gate_up.split_at(out.len());
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + fast_exp(-g)) * u;
        }
    }
}

/// Rows of x at or below which the packed forward pass uses [`linear_skinny`] (on AVX2 or AVX-512).
pub const SKINNY_ROWS: usize = 64;

/// Weight rows per [`linear_skinny`] task.
const WEIGHT_ROWS_PER_TASK: usize = 64;

/// `x · wᵀ` for `x` `[m, k]` and `w` `[n, k]` (a linear layer's weight as stored): `[m, n]`.
/// Tasks over blocks of weight rows on all cores; each weight row is read once and dotted
/// with every row of x.
pub fn linear_skinny(x: &[f32], m: usize, w: &[f32], n: usize) -> Vec<f32> {
    assert!(
        m > 0 && n > 0 && x.len().is_multiple_of(m),
        "linear_skinny: x is not [m, k]"
    );
    let k = x.len() / m;
    assert_eq!(w.len(), n * k, "linear_skinny: w is not [n, k]");
    let mut out = vec![0f32; m * n];
    let ptr = OutPtr(out.as_mut_ptr());
    w.par_chunks(WEIGHT_ROWS_PER_TASK * k)
        .enumerate()
        .for_each(|(block, rows)| {
            let j0 = block * WEIGHT_ROWS_PER_TASK;
            let mut dots = vec![0f32; m * (rows.len() / k)];
            dot_rows(&mut dots, x, rows, k);
            // dots is [m, rows]; row i's block of out starts at i * n + j0.
            let width = rows.len() / k;
            for i in 0..m {
                let src = &dots[i * width..(i + 1) * width];
                assert!(i * n + j0 + width <= m * n);
                // Safety: in bounds (checked above); tasks write disjoint column blocks.
                unsafe {
                    std::ptr::copy_nonoverlapping(src.as_ptr(), ptr.get().add(i * n + j0), width);
                }
            }
        });
    out
}

/// `dots[i, j] = x_i · w_j` for the `k`-wide rows of `x` and `w`.
fn dot_rows(dots: &mut [f32], x: &[f32], w: &[f32], k: usize) {
    #[cfg(target_arch = "x86_64")]
    match isa() {
        // Safety: the CPU has AVX-512F (detected).
        Isa::Avx512 => return unsafe { dot_rows_avx512(dots, x, w, k) },
        // Safety: the CPU has AVX2 and FMA (detected).
        Isa::Avx2 => return unsafe { dot_rows_avx2(dots, x, w, k) },
        Isa::Baseline => {}
    }
    let width = w.len() / k;
    for (i, xi) in x.chunks_exact(k).enumerate() {
        for (j, wj) in w.chunks_exact(k).enumerate() {
            dots[i * width + j] = xi.iter().zip(wj).map(|(a, b)| a * b).sum();
        }
    }
}

/// Rows of x and of the weight per [`dot_rows_avx512`] block: 4 x 6 = 24 accumulators. x is
/// read again for every block of weight rows (from L2 once it outgrows L1), so more weight
/// rows per block means less of that traffic per FMA; on the 0.6B gate/up projection at 40
/// rows (a query) 4 x 6 ran 1.55x the first 2 x 4 blocks here (50 -> 78 G multiply-adds/s;
/// 3 x 8 74, 5 x 5 77, 2 x 12 52: `cargo bench -p semflow-inference --bench kernels`).
const DOT_X_ROWS: usize = 4;
const DOT_W_ROWS: usize = 6;

/// Defines `$name`, [`dot_rows`] over blocks of `$xr` x `$wr` rows of x and the weight with
/// `$lanes`-wide FMAs of one instruction set: the same loop for AVX-512 and AVX2, which differ
/// in the vector type, its operations and the block that fits their registers.
macro_rules! dot_rows_kernel {
    ($(#[$doc:meta])* $name:ident, $feature:literal, $vec:ty, $lanes:literal, $xr:expr, $wr:expr,
     zero: $zero:path, load: $load:path, fma: $fma:path, sum: |$v:ident| $sum:block) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        unsafe fn $name(dots: &mut [f32], x: &[f32], w: &[f32], k: usize) {
            use std::arch::x86_64::*;
            let (m, width) = (x.len() / k, w.len() / k);
            let lanes = k / $lanes * $lanes;
            let dot_tail = |a: &[f32], b: &[f32]| -> f32 {
                a[lanes..k]
                    .iter()
                    .zip(&b[lanes..k])
                    .map(|(p, q)| p * q)
                    .sum()
            };
            let sum = |$v: $vec| -> f32 { $sum };
            let mut j = 0;
            while j < width {
                let group = (width - j).min($wr);
                // Rows past the group's end repeat its last row; their sums are not stored.
                let rows: [&[f32]; $wr] = std::array::from_fn(|r| {
                    let row = j + r.min(group - 1);
                    &w[row * k..(row + 1) * k]
                });
                let mut i = 0;
                while i < m {
                    let some = (m - i).min($xr);
                    let xs: [&[f32]; $xr] = std::array::from_fn(|p| {
                        let row = i + p.min(some - 1);
                        &x[row * k..(row + 1) * k]
                    });
                    let mut acc = [[$zero(); $wr]; $xr];
                    let mut c = 0;
                    while c < lanes {
                        // Safety: c + $lanes <= lanes <= k, the length of every row here.
                        let xv: [$vec; $xr] =
                            std::array::from_fn(|p| $load(xs[p].as_ptr().add(c)));
                        for r in 0..$wr {
                            let wv = $load(rows[r].as_ptr().add(c));
                            for p in 0..$xr {
                                acc[p][r] = $fma(xv[p], wv, acc[p][r]);
                            }
                        }
                        c += $lanes;
                    }
                    for p in 0..some {
                        for r in 0..group {
                            dots[(i + p) * width + j + r] =
                                sum(acc[p][r]) + dot_tail(xs[p], rows[r]);
                        }
                    }
                    i += some;
                }
                j += group;
            }
        }
    };
}

dot_rows_kernel!(
    /// [`dot_rows`] with AVX-512 FMAs over blocks of [`DOT_X_ROWS`] x [`DOT_W_ROWS`] rows.
    dot_rows_avx512, "avx512f", __m512, 16, DOT_X_ROWS, DOT_W_ROWS,
    zero: _mm512_setzero_ps, load: _mm512_loadu_ps, fma: _mm512_fmadd_ps,
    sum: |v| { _mm512_reduce_add_ps(v) }
);

/// [`dot_rows`] blocks on AVX2: 3 x 4 accumulators, 3 x rows and a weight row in the 16
/// vector registers.
const DOT2_X_ROWS: usize = 3;
const DOT2_W_ROWS: usize = 4;

dot_rows_kernel!(
    /// [`dot_rows`] with AVX2 FMAs over blocks of [`DOT2_X_ROWS`] x [`DOT2_W_ROWS`] rows.
    dot_rows_avx2, "avx2,fma", __m256, 8, DOT2_X_ROWS, DOT2_W_ROWS,
    zero: _mm256_setzero_ps, load: _mm256_loadu_ps, fma: _mm256_fmadd_ps,
    sum: |v| {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random vector in [-1, 1) (the bf16 kernels' tests use it too).
    pub(super) fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn linear_skinny_matches_the_definition() {
        // Shapes around the 4-row and 2-row blocks, the 16-lane tail and the task size.
        for (m, k, n) in [(1, 16, 4), (3, 37, 7), (2, 64, 130), (5, 100, 65)] {
            let (x, w) = (noise(m * k, 21), noise(n * k, 22));
            let got = linear_skinny(&x, m, &w, n);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                        .sum();
                    let g = got[i * n + j] as f64;
                    assert!(
                        (g - want).abs() < 1e-4,
                        "m{m} k{k} n{n} [{i},{j}]: {g} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn silu_mul_matches_the_definition() {
        let inter = 37;
        let gate_up: Vec<f32> = noise(3 * 2 * inter, 31).iter().map(|v| v * 20.0).collect();
        let got = silu_mul(&gate_up, inter);
        for r in 0..3 {
            for i in 0..inter {
                let (g, u) = (
                    gate_up[r * 2 * inter + i],
                    gate_up[r * 2 * inter + inter + i],
                );
                let want = g / (1.0 + (-g).exp()) * u;
                let at = got[r * inter + i];
                assert!(
                    (at - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{g} {u}: {at} vs {want}"
                );
            }
        }
    }

    #[test]
    fn fast_exp_matches_std() {
        for i in -8700..=100 {
            let x = i as f32 / 100.0;
            let (got, want) = (fast_exp(x), x.exp());
            assert!(
                (got - want).abs() <= 4e-7 * want,
                "exp({x}): {got} vs {want}"
            );
        }
        assert!(fast_exp(-1000.0) < 1e-37);
    }

    #[test]
    fn add_rms_norm_matches_the_definition() {
        let (rows, width) = (5, 40);
        let (x, d, w) = (
            noise(rows * width, 1),
            noise(rows * width, 2),
            noise(width, 3),
        );
        let (sum, normed) = add_rms_norm(&x, &d, &w, 1e-6);
        for r in 0..rows {
            let s: Vec<f32> = (0..width)
                .map(|i| x[r * width + i] + d[r * width + i])
                .collect();
            let ms = s.iter().map(|v| v * v).sum::<f32>() / width as f32;
            let want: Vec<f32> = s
                .iter()
                .zip(&w)
                .map(|(v, w)| v / (ms + 1e-6).sqrt() * w)
                .collect();
            assert_eq!(&sum[r * width..(r + 1) * width], &s[..]);
            assert!(max_diff(&normed[r * width..(r + 1) * width], &want) < 1e-5);
        }
    }

    /// Causal attention of one head computed the plain way, in f64.
    fn reference_head(
        qkv: &[f32],
        shape: Heads,
        offset: usize,
        head: usize,
        row: usize,
    ) -> Vec<f32> {
        let width = shape.qkv_width();
        let hd = shape.head_dim;
        let kvh = head / (shape.heads / shape.kv_heads);
        let at = |t: usize, col: usize| qkv[(offset + t) * width + col] as f64;
        let scores: Vec<f64> = (0..=row)
            .map(|j| {
                (0..hd)
                    .map(|d| at(row, head * hd + d) * at(j, (shape.heads + kvh) * hd + d))
                    .sum::<f64>()
                    / (hd as f64).sqrt()
            })
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = e.iter().sum();
        (0..hd)
            .map(|d| {
                (0..=row)
                    .map(|j| e[j] / total * at(j, (shape.heads + shape.kv_heads + kvh) * hd + d))
                    .sum::<f64>() as f32
            })
            .collect()
    }

    #[test]
    fn attention_matches_the_definition_for_grouped_heads_and_packed_sequences() {
        let shape = Heads {
            heads: 4,
            kv_heads: 2,
            head_dim: 16,
        };
        // Lengths around the query block and the key tile, packed back to back.
        let lens = [1usize, 63, 64, 65, 130, 256, 257, 700];
        let mut seqs = Vec::new();
        let mut off = 0;
        for &l in &lens {
            seqs.push((off, l));
            off += l;
        }
        let mut qkv: Vec<f32> = noise(off * shape.qkv_width(), 7)
            .iter()
            .map(|v| v * 3.0)
            .collect();
        // The last sequence's keys grow with position, so later key tiles hold larger scores
        // and the rows' running maxima move (the earlier tiles' sums are rescaled).
        let (width, (last_off, last_len)) = (shape.qkv_width(), seqs[seqs.len() - 1]);
        for t in 0..last_len {
            let keys = (last_off + t) * width + shape.heads * 16;
            for x in &mut qkv[keys..keys + shape.kv_heads * 16] {
                *x *= 1.0 + t as f32 / 200.0;
            }
        }
        let all = attention(&qkv, shape, &seqs, Rows::All);
        let last = attention(&qkv, shape, &seqs, Rows::Last);
        let ow = shape.out_width();
        assert_eq!(all.len(), off * ow);
        assert_eq!(last.len(), seqs.len() * ow);
        for (s, &(offset, len)) in seqs.iter().enumerate() {
            for row in [0, len / 2, len.saturating_sub(2), len - 1] {
                for head in 0..shape.heads {
                    let want = reference_head(&qkv, shape, offset, head, row);
                    let at = (offset + row) * ow + head * 16;
                    assert!(
                        max_diff(&all[at..at + 16], &want) < 1e-5,
                        "seq {s} row {row}"
                    );
                    if row == len - 1 {
                        let at = s * ow + head * 16;
                        assert!(max_diff(&last[at..at + 16], &want) < 1e-5);
                    }
                }
            }
        }
    }

    #[test]
    fn qk_norm_rope_normalises_then_rotates_q_and_k_and_copies_v() {
        let shape = Heads {
            heads: 2,
            kv_heads: 1,
            head_dim: 8,
        };
        let width = shape.qkv_width();
        let qkv = noise(3 * width, 11);
        let (q_w, k_w) = (noise(8, 12), noise(8, 13));
        let inv_freq = [1.0f32, 0.1, 0.01, 0.001];
        let rope = Rope::new(&inv_freq, 3);
        let positions = [0usize, 1, 2];
        let norm = QkNorm {
            q: &q_w,
            k: &k_w,
            eps: 1e-6,
        };
        let out = qk_norm_rope(&qkv, shape, &positions, norm, &rope);
        for (t, &p) in positions.iter().enumerate() {
            let row = &qkv[t * width..(t + 1) * width];
            for h in 0..3 {
                let w = if h < 2 { &q_w } else { &k_w };
                let x = &row[h * 8..(h + 1) * 8];
                let ms = x.iter().map(|v| v * v).sum::<f32>() / 8.0;
                let y: Vec<f32> = x
                    .iter()
                    .zip(w)
                    .map(|(v, w)| v / (ms + 1e-6).sqrt() * w)
                    .collect();
                for i in 0..4 {
                    let a = p as f32 * inv_freq[i];
                    let want = [
                        y[i] * a.cos() - y[i + 4] * a.sin(),
                        y[i + 4] * a.cos() + y[i] * a.sin(),
                    ];
                    let got = [out[t * width + h * 8 + i], out[t * width + h * 8 + i + 4]];
                    assert!(max_diff(&got, &want) < 1e-5, "token {t} head {h} dim {i}");
                }
            }
            assert_eq!(&out[t * width + 24..(t + 1) * width], &row[24..]);
        }
    }

    /// CI runs these tests under emulated CPUs and names the variant each must pick.
    #[test]
    fn dispatch_picks_the_expected_isa() {
        let want = match std::env::var("SEMFLOW_EXPECT_ISA").as_deref() {
            Ok("avx512") => Isa::Avx512,
            Ok("avx2") => Isa::Avx2,
            Ok("baseline") => Isa::Baseline,
            _ => return,
        };
        assert_eq!(isa(), want);
    }

    #[test]
    fn softmax_tiles_on_the_dispatched_isa_add_up_to_one_softmax() {
        // Two rows over 100 keys in three tiles: row 0 sees 70 keys and its maximum is in the
        // second tile (so the first tile's share is rescaled), row 1 sees all; the third tile
        // is hidden from row 0.
        let (rows, seen) = (2usize, [70usize, 100]);
        let mut input = [noise(100, 5), noise(100, 6)];
        input[0][50] = 4.0;
        let want: Vec<Vec<f32>> = (0..rows)
            .map(|r| {
                let vis = &input[r][..seen[r]];
                let max = vis.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let total: f32 = vis.iter().map(|v| (v - max).exp()).sum();
                let mut p: Vec<f32> = vis.iter().map(|v| (v - max).exp() / total).collect();
                p.resize(100, 0.0);
                p
            })
            .collect();
        let (mut max, mut sum) = (vec![f32::NEG_INFINITY; rows], vec![0f32; rows]);
        let (mut tile_max, mut keep) = (vec![0f32; rows], vec![0f32; rows]);
        let mut got: Vec<Vec<f32>> = vec![Vec::new(); rows];
        for (t, keys) in [0..40usize, 40..80, 80..100].into_iter().enumerate() {
            // [keys][rows], hidden keys at -inf.
            let mut tile: Vec<f32> = keys
                .clone()
                .flat_map(|j| (0..rows).map(move |r| (j, r)))
                .map(|(j, r)| {
                    if j < seen[r] {
                        input[r][j]
                    } else {
                        f32::NEG_INFINITY
                    }
                })
                .collect();
            softmax_tile(&mut tile, &mut max, &mut sum, &mut tile_max, &mut keep);
            if t == 1 {
                assert!(keep[0] < 1.0, "row 0's maximum is in the second tile");
            }
            if t == 2 {
                assert_eq!(keep[0], 1.0, "a hidden tile leaves row 0 as it was");
            }
            for r in 0..rows {
                for p in got[r].iter_mut() {
                    *p *= keep[r];
                }
                got[r].extend(tile.iter().skip(r).step_by(rows));
            }
        }
        for r in 0..rows {
            let p: Vec<f32> = got[r].iter().map(|p| p / sum[r]).collect();
            assert!(max_diff(&p, &want[r]) < 1e-6, "row {r}, isa {:?}", isa());
        }
    }
}
