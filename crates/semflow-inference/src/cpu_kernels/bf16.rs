//! Linear layers with bf16 weights on CPU: `x · wᵀ` for f32 activations `x` and a weight kept
//! in bf16 (half the memory of f32, as Qwen3 checkpoints store it), accumulated in f32.
//!
//! On CPUs with AVX512-BF16 (Intel since Cooper Lake, AMD Zen 4) the product runs on
//! `vdpbf16ps`, which multiplies two bf16 pairs per f32 lane and adds both products into it:
//! the weight is packed once at load into panels of 16 output columns whose lanes hold each
//! column's pair of consecutive input positions ([`PackedBf16`]); each row of x is rounded to
//! bf16 pairs once per call and broadcast against the panels. Other CPUs run the same math
//! (the bf16-rounded operands, f32 sums) in plain code the compiler vectorises, at a fifth to
//! a half of the f32 gemm's speed (BENCHMARKS §11b): there bf16 buys memory, not time.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::OutPtr;

/// Output columns per panel: one 512-bit register of f32 sums.
const PANEL: usize = 16;
/// Rows of x per micro-kernel call: 8 rows x 2 panels = 16 accumulators in registers.
const ROWS: usize = 8;
/// Panels per task (and per micro-kernel call: two).
const PANELS_PER_TASK: usize = 2;

/// Whether this CPU has AVX512-BF16 (detected once).
pub fn has_avx512_bf16() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// A linear layer's weight `[n, k]` in bf16, packed for [`linear`]: for each panel of 16
/// output columns and each pair of input positions `(2q, 2q + 1)`, the 16 columns' two bf16
/// values side by side (the even position in the low half), zero past `n` and `k`.
#[derive(Debug, Clone)]
pub struct PackedBf16 {
    n: usize,
    k: usize,
    /// `[panels (even count)][pairs][PANEL]`.
    pairs: Vec<u32>,
}

impl PackedBf16 {
    /// Packs the bf16 bit patterns `w` (`[n, k]` row-major, as safetensors stores a weight).
    pub fn from_bits(w: &[u16], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "PackedBf16: the weight is not [n, k]");
        let pairs_per_row = k.div_ceil(2);
        let panels = n.div_ceil(PANEL).next_multiple_of(PANELS_PER_TASK);
        let mut pairs = vec![0u32; panels * pairs_per_row * PANEL];
        for (j, row) in w.chunks_exact(k.max(1)).enumerate().take(n) {
            let (panel, lane) = (j / PANEL, j % PANEL);
            for (q, two) in row.chunks(2).enumerate() {
                let lo = u32::from(two[0]);
                let hi = two.get(1).map_or(0, |&h| u32::from(h));
                pairs[(panel * pairs_per_row + q) * PANEL + lane] = lo | (hi << 16);
            }
        }
        Self { n, k, pairs }
    }

    /// Rounds an f32 weight to bf16 (to nearest, ties to even) and packs it.
    pub fn from_f32(w: &[f32], n: usize, k: usize) -> Self {
        let bits: Vec<u16> = w
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_bits())
            .collect();
        Self::from_bits(&bits, n, k)
    }

    /// Output width.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input width.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Memory the packed weight holds.
    pub fn bytes(&self) -> usize {
        self.pairs.len() * std::mem::size_of::<u32>()
    }

    fn pairs_per_row(&self) -> usize {
        self.k.div_ceil(2)
    }
}

/// Each row of `x` (`[m, k]`) rounded to bf16 pairs like the weight's, `[m padded to ROWS,
/// pairs]`; the padding rows are zero.
fn round_rows(x: &[f32], m: usize, k: usize) -> Vec<u32> {
    let pairs_per_row = k.div_ceil(2);
    let mut out = vec![0u32; m.next_multiple_of(ROWS) * pairs_per_row];
    out.par_chunks_mut(pairs_per_row)
        .zip(x.par_chunks(k))
        .for_each(|(dst, row)| {
            for (d, two) in dst.iter_mut().zip(row.chunks(2)) {
                *d = pair(two);
            }
        });
    out
}

/// One or two f32 values rounded to bf16 and paired as the kernels read them (the first in
/// the low half; a missing second is zero).
fn pair(two: &[f32]) -> u32 {
    let bits = |v: f32| u32::from(half::bf16::from_f32(v).to_bits());
    bits(two[0]) | two.get(1).map_or(0, |&h| bits(h) << 16)
}

/// `x · wᵀ` for `x` `[m, k]` (f32) and a packed bf16 weight `[n, k]`: `[m, n]` in f32, with x
/// rounded to bf16 and the products summed in f32. Tasks over pairs of panels (32 output
/// columns) on all cores; each reads its panels once per 8 rows of x.
pub fn linear(x: &[f32], m: usize, w: &PackedBf16) -> Vec<f32> {
    let (n, k) = (w.n, w.k);
    assert!(m > 0 && k > 0, "bf16::linear: empty input");
    assert_eq!(x.len(), m * k, "bf16::linear: x is not [m, k]");
    let xs = round_rows(x, m, k);
    let pairs = w.pairs_per_row();
    let mut out = vec![0f32; m * n];
    let ptr = OutPtr(out.as_mut_ptr());
    let task_len = PANELS_PER_TASK * pairs * PANEL;
    w.pairs
        .par_chunks(task_len)
        .enumerate()
        .for_each(|(task, panels)| {
            let col0 = task * PANELS_PER_TASK * PANEL;
            let cols = n.saturating_sub(col0).min(PANELS_PER_TASK * PANEL);
            if cols == 0 {
                return;
            }
            let mut tile = [0f32; ROWS * PANELS_PER_TASK * PANEL];
            for (block, rows) in xs.chunks_exact(ROWS * pairs).enumerate() {
                let row0 = block * ROWS;
                tile_sums(&mut tile, rows, panels, pairs);
                for r in 0..ROWS.min(m - row0) {
                    let src = &tile[r * PANELS_PER_TASK * PANEL..][..cols];
                    let at = (row0 + r) * n + col0;
                    assert!(at + cols <= m * n);
                    // Safety: in bounds (checked above); tasks write disjoint column blocks.
                    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), ptr.get().add(at), cols) };
                }
            }
        });
    out
}

/// One tile, `[ROWS, 2 * PANEL]` sums, on `vdpbf16ps` where the CPU has it.
fn tile_sums(tile: &mut [f32], rows: &[u32], panels: &[u32], pairs: usize) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512_bf16() {
        // Safety: the CPU has AVX-512F and AVX512-BF16 (detected); the slices hold ROWS rows
        // and two panels of `pairs` pairs each.
        return unsafe { tile_avx512_bf16(tile, rows, panels, pairs) };
    }
    tile_portable(tile, rows, panels, pairs)
}

/// The two bf16 values of a pair as f32 (exact: bf16 is f32's upper half).
#[inline(always)]
fn unpair(p: u32) -> (f32, f32) {
    (f32::from_bits(p << 16), f32::from_bits(p & 0xffff_0000))
}

by_isa! {
    /// One tile, `[ROWS, 2 * PANEL]` sums, in plain code the compiler vectorises (AVX-512,
    /// AVX2 or baseline, as the f32 kernels): each lane adds its pair's two products, as
    /// `vdpbf16ps` does. A panel's pair of weights is widened to f32 once for all the rows.
    fn tile_portable(tile: &mut [f32], rows: &[u32], panels: &[u32], pairs: usize) {
        for (p, panel) in panels.chunks_exact(pairs * PANEL).take(PANELS_PER_TASK).enumerate() {
            let mut acc = [[0f32; PANEL]; ROWS];
            for (q, wq) in panel.chunks_exact(PANEL).enumerate() {
                let (mut w0, mut w1) = ([0f32; PANEL], [0f32; PANEL]);
                for i in 0..PANEL {
                    (w0[i], w1[i]) = unpair(wq[i]);
                }
                for (r, a) in acc.iter_mut().enumerate() {
                    let (x0, x1) = unpair(rows[r * pairs + q]);
                    for i in 0..PANEL {
                        a[i] += x0 * w0[i] + x1 * w1[i];
                    }
                }
            }
            for (r, a) in acc.iter().enumerate() {
                tile[(r * PANELS_PER_TASK + p) * PANEL..][..PANEL].copy_from_slice(a);
            }
        }
    }
}

/// [`tile_portable`] on `vdpbf16ps`: 16 accumulators (8 rows x 2 panels), per pair of input
/// positions two panel loads and eight broadcasts of x.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile_avx512_bf16(tile: &mut [f32], rows: &[u32], panels: &[u32], pairs: usize) {
    use std::arch::x86_64::*;
    debug_assert!(rows.len() >= ROWS * pairs && panels.len() >= 2 * pairs * PANEL);
    debug_assert!(tile.len() >= ROWS * 2 * PANEL);
    let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
    let (w0, w1) = (panels.as_ptr(), panels.as_ptr().add(pairs * PANEL));
    let x = rows.as_ptr();
    for q in 0..pairs {
        // Safety: q < pairs, so every read is inside the slices (asserted above).
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(w0.add(q * PANEL).cast()));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(w1.add(q * PANEL).cast()));
        for (r, a) in acc.iter_mut().enumerate() {
            let xb: __m512bh = std::mem::transmute(_mm512_set1_epi32(*x.add(r * pairs + q) as i32));
            a[0] = _mm512_dpbf16_ps(a[0], xb, b0);
            a[1] = _mm512_dpbf16_ps(a[1], xb, b1);
        }
    }
    for (r, a) in acc.iter().enumerate() {
        _mm512_storeu_ps(tile.as_mut_ptr().add(r * 2 * PANEL), a[0]);
        _mm512_storeu_ps(tile.as_mut_ptr().add(r * 2 * PANEL + PANEL), a[1]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::noise;
    use super::*;

    fn round(v: f32) -> f64 {
        f64::from(half::bf16::from_f32(v).to_f32())
    }

    /// The definition on the bf16-rounded operands, in f64; and the sum of |products|, the
    /// scale f32 summation error is relative to.
    fn reference(x: &[f32], m: usize, w: &[f32], n: usize) -> (Vec<f64>, Vec<f64>) {
        let k = x.len() / m;
        let mut out = vec![0f64; m * n];
        let mut scale = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for c in 0..k {
                    let p = round(x[i * k + c]) * round(w[j * k + c]);
                    out[i * n + j] += p;
                    scale[i * n + j] += p.abs();
                }
            }
        }
        (out, scale)
    }

    #[test]
    fn linear_matches_the_definition_on_bf16_operands() {
        // Shapes around the 8-row blocks, the 16-column panels, the 32-column tasks and an
        // odd k (the last pair half empty).
        for (m, k, n) in [
            (1, 2, 1),
            (3, 37, 7),
            (8, 64, 32),
            (9, 100, 33),
            (17, 1024, 70),
        ] {
            let (x, w) = (noise(m * k, 31), noise(n * k, 32));
            let packed = PackedBf16::from_f32(&w, n, k);
            assert_eq!((packed.n(), packed.k()), (n, k));
            let got = linear(&x, m, &packed);
            let (want, scale) = reference(&x, m, &w, n);
            for (i, (g, (w, s))) in got.iter().zip(want.iter().zip(&scale)).enumerate() {
                let err = (f64::from(*g) - w).abs();
                assert!(
                    err <= 2e-5 * s.max(1.0),
                    "m={m} k={k} n={n} at {i}: {g} vs {w} (scale {s})"
                );
            }
        }
    }

    #[test]
    fn the_portable_tile_is_the_fast_tiles_math() {
        // Both paths on the same operands agree to f32 summation order.
        if !has_avx512_bf16() {
            return; // nothing to compare against on this CPU; the definition test covers it
        }
        let (pairs, rows, panels) = (50, noise(ROWS * 100, 41), noise(2 * 16 * 100, 42));
        let pack = |v: &[f32]| -> Vec<u32> { v.chunks(2).map(pair).collect() };
        let (rows, panels) = (pack(&rows), pack(&panels));
        let (mut fast, mut portable) = ([0f32; ROWS * 32], [0f32; ROWS * 32]);
        // Safety: the CPU has AVX512-BF16 (checked above); sizes as the kernel requires.
        unsafe { tile_avx512_bf16(&mut fast, &rows, &panels, pairs) };
        tile_portable(&mut portable, &rows, &panels, pairs);
        for (a, b) in fast.iter().zip(&portable) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn the_weight_takes_half_the_memory_of_f32() {
        let (n, k) = (1024, 1024);
        let packed = PackedBf16::from_f32(&noise(n * k, 5), n, k);
        assert_eq!(packed.bytes(), n * k * 2);
    }
}
