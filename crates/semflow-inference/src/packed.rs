//! The packed (padding-free) Qwen3 forward pass on candle — semflow's default backend.
//!
//! mistral.rs 0.8.1 runs only sequences of equal length together and has no padding mask, so
//! a batch of mixed-length documents collapses into many small forward passes. Here every
//! sequence of a batch is concatenated into one `[tokens, hidden]` matrix: all projections
//! and MLPs are single large matmuls over real tokens only (no padding), and attention runs
//! per sequence (block-diagonal causal attention), chunked over queries so long inputs keep
//! memory bounded. Only the last token of each sequence goes through the last layer's
//! output projection and MLP: that is all last-token pooling and the reranker read.
//!
//! A dedicated thread owns the model and takes jobs from a queue, packing the jobs of
//! concurrent queries into token-budgeted forward passes (the TEI design).
//!
//! On the CPU, `--dtype bf16` keeps the linear layers' weights and the embedding table in bf16
//! (half the memory; Qwen3 checkpoints are stored so) and computes everything else in f32:
//! the linear layers run [`cpu_kernels::bf16::linear`] (f32 sums of bf16 products).

use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use candle_core::{safetensors::MmapedSafetensors, DType, Device, Tensor, D};
use candle_nn::ops::{rms_norm, silu, softmax_last_dim};
use candle_nn::rotary_emb::rope;

use super::config::LoadOptions;
use super::cpu_kernels::bf16::{self, PackedBf16};
use super::cpu_kernels::{self, Heads, Isa, QkNorm, Rows};
use super::device::DTypeSpec;
use super::prompts::{NO_TOKEN_ID, YES_TOKEN_ID};
use crate::error::{Error, Result};
use crate::model::config::QwenConfig;
use crate::model::dir::ModelDir;

/// Tokens per forward pass the worker aims for; one longer sequence runs alone.
const TOKEN_BUDGET: usize = 8192;
/// Queries per attention block: bounds the score matrix to heads x 256 x length.
const QUERY_CHUNK: usize = 256;

fn candle_err(e: candle_core::Error) -> Error {
    Error::Inference(format!("packed forward: {e}"))
}

/// A forward pass's sequences packed back to back.
struct Pack {
    /// `(offset, len)` of each sequence in the packed rows.
    seqs: Vec<(usize, usize)>,
    /// Each row's position within its sequence.
    positions: Vec<usize>,
    /// Each sequence's last row.
    last_rows: Tensor,
}

impl Pack {
    fn new(seqs: &[&[u32]], device: &Device) -> candle_core::Result<Self> {
        let mut packed = Vec::with_capacity(seqs.len());
        let mut offset = 0;
        for s in seqs {
            packed.push((offset, s.len()));
            offset += s.len();
        }
        let positions = seqs.iter().flat_map(|s| 0..s.len()).collect();
        let last: Vec<u32> = packed.iter().map(|&(o, l)| (o + l - 1) as u32).collect();
        Ok(Self {
            seqs: packed,
            positions,
            last_rows: Tensor::new(last, device)?,
        })
    }

    fn longest(&self) -> usize {
        self.seqs.iter().map(|&(_, l)| l).max().unwrap_or(0)
    }
}

/// Rotary tables: host tables by position for the CPU kernels, else cos/sin rows per token.
enum RopeTables {
    Host(cpu_kernels::Rope),
    Device { cos: Tensor, sin: Tensor },
}

/// The rotary embedding of `x` `[tokens, heads, hd]` into `[heads, tokens, hd]`.
fn rope_tokens(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    rope(&x.transpose(0, 1)?.unsqueeze(0)?.contiguous()?, cos, sin)?.squeeze(0)
}

/// Runs `f` on the contiguous F32 host data of `t`.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    use candle_core::{CpuStorage, Storage};
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(CpuStorage::F32(data)) => {
            let start = layout.start_offset();
            Ok(f(&data[start..start + t.elem_count()]))
        }
        _ => Err(candle_core::Error::Msg(
            "the CPU kernels take F32 host tensors".into(),
        )),
    }
}

/// A linear layer's weight, `[out, in]` as stored.
enum Weight {
    /// In the compute dtype, multiplied by candle (or [`cpu_kernels::linear_skinny`]).
    Dense(Tensor),
    /// bf16 on the CPU, multiplied in f32 by [`bf16::linear`].
    Bf16(PackedBf16),
}

struct Layer {
    input_norm: Tensor,
    post_norm: Tensor,
    /// q, k and v projections stacked: one matmul.
    qkv: Weight,
    o: Weight,
    q_norm: Tensor,
    k_norm: Tensor,
    /// gate and up projections stacked: one matmul.
    gate_up: Weight,
    down: Weight,
}

/// What the model computes for each sequence.
pub enum Head {
    /// The L2-normalised final hidden state of the last token.
    Embedding,
    /// The last position's logits of "yes" and "no" (rows of the LM head, `[2, hidden]`).
    YesNo(Tensor),
}

/// A Qwen3 model laid out for packed forward passes.
pub struct PackedQwen3 {
    cfg: QwenConfig,
    device: Device,
    /// The dtype activations are computed in.
    dtype: DType,
    /// In the compute dtype, or bf16 where the linear weights are (rows cast when looked up).
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    head: Head,
    inv_freq: Tensor,
    /// `[QUERY_CHUNK, QUERY_CHUNK]`: -inf above the diagonal, 0 elsewhere.
    causal: Tensor,
    /// F32 on the CPU: attention and the norms run semflow's kernels (`cpu_kernels`).
    cpu_f32: bool,
}

impl PackedQwen3 {
    /// Loads the weights of `dir` onto `device` in `dtype` (on the CPU, BF16 means bf16
    /// weights and f32 activations: see the module's header).
    pub fn load(dir: &ModelDir, device: &Device, dtype: DType, reranker: bool) -> Result<Self> {
        let bf16_weights = device.is_cpu() && dtype == DType::BF16;
        if bf16_weights && !bf16::has_avx512_bf16() {
            tracing::warn!(
                model = %dir.id,
                "--dtype bf16: this CPU has no AVX512-BF16, so the bf16 weights are multiplied in plain code, several times slower than --dtype f32 (half the memory, not faster)"
            );
        }
        let (dtype, weight_dtype) = if bf16_weights {
            (DType::F32, DType::BF16)
        } else {
            (dtype, dtype)
        };
        let files = dir.weight_files()?;
        // Safety: the files are only read; semflow does not modify model files while running.
        let st = unsafe { MmapedSafetensors::multi(&files) }.map_err(candle_err)?;
        let prefix = if st.get("embed_tokens.weight").is_ok() {
            ""
        } else {
            "model."
        };
        let load_as = |name: &str, dtype: DType| -> Result<Tensor> {
            st.load(name, device)
                .and_then(|t| t.to_dtype(dtype))
                .map_err(|e| Error::model(&dir.id, format!("weight {name}: {e}")))
        };
        let load = |name: &str| load_as(&format!("{prefix}{name}"), dtype);
        // The named weights stacked by rows into one linear layer.
        let linear = |names: &[String]| -> Result<Weight> {
            let parts = names
                .iter()
                .map(|n| load_as(&format!("{prefix}{n}"), weight_dtype))
                .collect::<Result<Vec<_>>>()?;
            let w = Tensor::cat(&parts, 0).map_err(candle_err)?;
            if !bf16_weights {
                return Ok(Weight::Dense(w));
            }
            let packed = w.dims2().and_then(|(n, k)| {
                let bits: Vec<u16> = w
                    .flatten_all()?
                    .to_vec1::<half::bf16>()?
                    .into_iter()
                    .map(half::bf16::to_bits)
                    .collect();
                Ok(PackedBf16::from_bits(&bits, n, k))
            });
            packed
                .map(Weight::Bf16)
                .map_err(|e| Error::model(&dir.id, format!("weights {}: {e}", names.join(", "))))
        };
        let cfg = dir.config.clone();
        if cfg.num_hidden_layers == 0 {
            return Err(Error::model(&dir.id, "num_hidden_layers is 0"));
        }
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let w = |n: &str| load(&format!("layers.{l}.{n}"));
            let lin = |ns: &[&str]| {
                linear(
                    &ns.iter()
                        .map(|n| format!("layers.{l}.{n}.weight"))
                        .collect::<Vec<_>>(),
                )
            };
            layers.push(Layer {
                input_norm: w("input_layernorm.weight")?,
                post_norm: w("post_attention_layernorm.weight")?,
                qkv: lin(&["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"])?,
                o: lin(&["self_attn.o_proj"])?,
                q_norm: w("self_attn.q_norm.weight")?,
                k_norm: w("self_attn.k_norm.weight")?,
                gate_up: lin(&["mlp.gate_proj", "mlp.up_proj"])?,
                down: lin(&["mlp.down_proj"])?,
            });
        }
        let embed = load_as(&format!("{prefix}embed_tokens.weight"), weight_dtype)?;
        let head = if reranker {
            // Tied checkpoints reuse the input embeddings as the LM head.
            let lm = if cfg.tie_word_embeddings {
                embed.clone()
            } else {
                load_as("lm_head.weight", weight_dtype)?
            };
            let rows = Tensor::new(&[YES_TOKEN_ID, NO_TOKEN_ID], device).map_err(candle_err)?;
            let yes_no = lm.index_select(&rows, 0).and_then(|t| t.to_dtype(dtype));
            Head::YesNo(yes_no.map_err(candle_err)?)
        } else {
            Head::Embedding
        };
        let hd = cfg.head_dim();
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / hd as f64) as f32)
            .collect();
        let inv_freq = Tensor::new(inv, device).map_err(candle_err)?;
        let tri: Vec<f32> = (0..QUERY_CHUNK)
            .flat_map(|i| {
                (0..QUERY_CHUNK).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })
            })
            .collect();
        // Stored in the model dtype: attention scores have that dtype, so no per-chunk cast.
        let causal = Tensor::from_vec(tri, (QUERY_CHUNK, QUERY_CHUNK), device)
            .and_then(|t| t.to_dtype(dtype))
            .map_err(candle_err)?;
        Ok(Self {
            causal,
            cpu_f32: device.is_cpu() && dtype == DType::F32,
            norm: load("norm.weight")?,
            embed,
            layers,
            head,
            inv_freq,
            device: device.clone(),
            dtype,
            cfg,
        })
    }

    fn eps(&self) -> f32 {
        self.cfg.rms_norm_eps as f32
    }

    /// Rotary tables for `pack`: host tables for the CPU kernels, else one row per token.
    fn rope_tables(&self, pack: &Pack) -> candle_core::Result<RopeTables> {
        if self.cpu_f32 {
            let longest = pack.longest();
            let inv_freq = self.inv_freq.to_vec1::<f32>()?;
            return Ok(RopeTables::Host(cpu_kernels::Rope::new(&inv_freq, longest)));
        }
        let positions: Vec<f32> = pack.positions.iter().map(|&p| p as f32).collect();
        let n = positions.len();
        let pos = Tensor::from_vec(positions, (n, 1), &self.device)?;
        let freqs = pos.broadcast_mul(&self.inv_freq.unsqueeze(0)?)?;
        Ok(RopeTables::Device {
            cos: freqs.cos()?.to_dtype(self.dtype)?,
            sin: freqs.sin()?.to_dtype(self.dtype)?,
        })
    }

    /// Attention of one layer from its fused qkv projection `[T, (heads + 2 kv) * hd]`: q/k
    /// RMSNorm, rotary embedding, causal attention per sequence; `[rows, heads * hd]`.
    fn attention(
        &self,
        qkv: &Tensor,
        layer: &Layer,
        pack: &Pack,
        rope: &RopeTables,
        rows: Rows,
    ) -> candle_core::Result<Tensor> {
        let shape = self.heads();
        let eps = self.eps();
        let (cos, sin) = match rope {
            RopeTables::Host(rope) => return self.attention_cpu(qkv, layer, pack, rope, rows),
            RopeTables::Device { cos, sin } => (cos, sin),
        };
        let Heads {
            heads,
            kv_heads,
            head_dim: hd,
        } = shape;
        let total = pack.positions.len();
        let q = qkv.narrow(1, 0, heads * hd)?.reshape((total, heads, hd))?;
        let k = qkv
            .narrow(1, heads * hd, kv_heads * hd)?
            .reshape((total, kv_heads, hd))?;
        let v = qkv
            .narrow(1, (heads + kv_heads) * hd, kv_heads * hd)?
            .reshape((total, kv_heads, hd))?;
        // Qwen3 normalises each head's q and k before the rotary embedding.
        let q = rms_norm(&q.contiguous()?, &layer.q_norm, eps)?;
        let k = rms_norm(&k.contiguous()?, &layer.k_norm, eps)?;
        // rope wants [batch, heads, tokens, hd]; positions restart per sequence via cos/sin.
        let q = rope_tokens(&q, cos, sin)?;
        let k = rope_tokens(&k, cos, sin)?;
        let v = v.transpose(0, 1)?.contiguous()?; // [kv_heads, T, hd]
        let mut attn = Vec::with_capacity(pack.seqs.len());
        for &(off, len) in &pack.seqs {
            attn.push(self.attend(
                &q.narrow(1, off, len)?,
                &k.narrow(1, off, len)?,
                &v.narrow(1, off, len)?,
            )?);
        }
        let attn = Tensor::cat(&attn, 0)?; // [T, heads * hd]
        match rows {
            Rows::All => Ok(attn),
            Rows::Last => attn.index_select(&pack.last_rows, 0),
        }
    }

    /// [`Self::attention`] on semflow's CPU kernels, straight from the qkv layout.
    fn attention_cpu(
        &self,
        qkv: &Tensor,
        layer: &Layer,
        pack: &Pack,
        rope: &cpu_kernels::Rope,
        rows: Rows,
    ) -> candle_core::Result<Tensor> {
        let shape = self.heads();
        let out = with_f32(qkv, |qkv| {
            with_f32(&layer.q_norm, |q| {
                with_f32(&layer.k_norm, |k| {
                    let norm = QkNorm {
                        q,
                        k,
                        eps: self.eps(),
                    };
                    let normed = cpu_kernels::qk_norm_rope(qkv, shape, &pack.positions, norm, rope);
                    cpu_kernels::attention(&normed, shape, &pack.seqs, rows)
                })
            })
        })???;
        let n = out.len() / shape.out_width();
        Tensor::from_vec(out, (n, shape.out_width()), &self.device)
    }

    /// `(x + delta, rms_norm(x + delta) * w)`: the residual add and the next norm.
    fn add_norm(
        &self,
        x: &Tensor,
        delta: &Tensor,
        w: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        if self.cpu_f32 {
            let (sum, normed) = with_f32(x, |x| {
                with_f32(delta, |d| {
                    with_f32(w, |w| cpu_kernels::add_rms_norm(x, d, w, self.eps()))
                })
            })???;
            let shape = x.dims2()?;
            return Ok((
                Tensor::from_vec(sum, shape, &self.device)?,
                Tensor::from_vec(normed, shape, &self.device)?,
            ));
        }
        let sum = (x + delta)?;
        let normed = rms_norm(&sum, w, self.eps())?;
        Ok((sum, normed))
    }

    /// `x · wᵀ` (a linear layer, `w` as stored `[out, in]`). A few rows on AVX2 or AVX-512 go
    /// through [`cpu_kernels::linear_skinny`], which reads the weight once instead of packing it.
    fn linear(&self, x: &Tensor, w: &Weight) -> candle_core::Result<Tensor> {
        let w = match w {
            Weight::Dense(w) => w,
            Weight::Bf16(w) => {
                let m = x.dim(0)?;
                let out = with_f32(x, |x| bf16::linear(x, m, w))?;
                return Tensor::from_vec(out, (m, w.n()), &self.device);
            }
        };
        let (m, n) = (x.dim(0)?, w.dim(0)?);
        if self.cpu_f32 && m <= cpu_kernels::SKINNY_ROWS && cpu_kernels::isa() != Isa::Baseline {
            let out = with_f32(x, |x| {
                with_f32(w, |w| cpu_kernels::linear_skinny(x, m, w, n))
            })??;
            return Tensor::from_vec(out, (m, n), &self.device);
        }
        x.matmul(&w.t()?)
    }

    /// `silu(gate) * up` for `gate_up = [gate | up]` (`[rows, 2 * intermediate]`).
    fn silu_mul(&self, gate_up: &Tensor) -> candle_core::Result<Tensor> {
        let inter = self.cfg.intermediate_size;
        if self.cpu_f32 {
            let out = with_f32(gate_up, |gu| cpu_kernels::silu_mul(gu, inter))?;
            return Tensor::from_vec(out, (gate_up.dim(0)?, inter), &self.device);
        }
        silu(&gate_up.narrow(1, 0, inter)?)? * gate_up.narrow(1, inter, inter)?
    }

    fn heads(&self) -> Heads {
        Heads {
            heads: self.cfg.num_attention_heads,
            kv_heads: self.cfg.num_key_value_heads,
            head_dim: self.cfg.head_dim(),
        }
    }

    /// Causal attention of one sequence: q `[heads, L, hd]`, k/v `[kv_heads, L, hd]`.
    ///
    /// Grouped-query attention without copying k/v per query head: the `groups` query heads
    /// that share a kv head are stacked as rows of one matmul against that head's keys.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
        let (heads, len, hd) = q.dims3()?;
        let kv_heads = k.dim(0)?;
        let groups = heads / kv_heads;
        let q = q.reshape((kv_heads, groups, len, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut outs = Vec::with_capacity(len.div_ceil(QUERY_CHUNK));
        let mut start = 0;
        while start < len {
            let end = (start + QUERY_CHUNK).min(len);
            let rows = end - start;
            let qc = q
                .narrow(2, start, rows)?
                .reshape((kv_heads, groups * rows, hd))?;
            // Keys up to the chunk's last query are all a causal chunk can see.
            let kc = k.narrow(1, 0, end)?;
            let vc = v.narrow(1, 0, end)?;
            let mut scores = (qc.matmul(&kc.t()?)? * scale)?; // [kv, groups * rows, end]
            if rows > 1 {
                // Keys before the chunk are all visible; within it, the causal triangle.
                let tri = self.causal.narrow(0, 0, rows)?.narrow(1, 0, rows)?;
                let mask = if start == 0 {
                    tri
                } else {
                    Tensor::cat(
                        &[
                            Tensor::zeros((rows, start), self.causal.dtype(), &self.device)?,
                            tri,
                        ],
                        1,
                    )?
                };
                scores = scores
                    .reshape((kv_heads, groups, rows, end))?
                    .broadcast_add(&mask)?
                    .reshape((kv_heads, groups * rows, end))?;
            }
            let probs = softmax_last_dim(&scores)?;
            outs.push(probs.matmul(&vc)?.reshape((kv_heads, groups, rows, hd))?);
            start = end;
        }
        let out = if outs.len() == 1 {
            outs.remove(0)
        } else {
            Tensor::cat(&outs, 2)?
        };
        // [kv, groups, L, hd] -> [L, heads * hd]
        out.reshape((heads, len, hd))?
            .transpose(0, 1)?
            .reshape((len, heads * hd))
    }

    /// Final-normed hidden states of each sequence's last token, `[n_seqs, hidden]`.
    fn forward_last(&self, seqs: &[&[u32]]) -> candle_core::Result<Tensor> {
        let pack = Pack::new(seqs, &self.device)?;
        let rope = self.rope_tables(&pack)?;
        let eps = self.eps();
        let ids: Vec<u32> = seqs.iter().flat_map(|s| s.iter().copied()).collect();
        let ids = Tensor::new(ids, &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?.to_dtype(self.dtype)?; // [T, H]
        let mut h = rms_norm(&x, &self.layers[0].input_norm, eps)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let qkv = self.linear(&h, &layer.qkv)?;
            let last = l + 1 == self.layers.len();
            // Pooling and the reranker read only each sequence's last position, so the last
            // layer attends from those rows alone and drops the others.
            let rows = if last { Rows::Last } else { Rows::All };
            let attn = self.attention(&qkv, layer, &pack, &rope, rows)?;
            if last {
                x = x.index_select(&pack.last_rows, 0)?;
            }
            let (mid, normed) =
                self.add_norm(&x, &self.linear(&attn, &layer.o)?, &layer.post_norm)?;
            let gate_up = self.linear(&normed, &layer.gate_up)?;
            let act = self.silu_mul(&gate_up)?;
            let next_norm = self.layers.get(l + 1).map_or(&self.norm, |n| &n.input_norm);
            (x, h) = self.add_norm(&mid, &self.linear(&act, &layer.down)?, next_norm)?;
        }
        Ok(h)
    }

    /// Runs `seqs` (all non-empty); one output vector per sequence (see [`Head`]).
    pub fn run(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        if let Some(i) = seqs.iter().position(|s| s.is_empty()) {
            return Err(Error::Inference(format!("empty token sequence at {i}")));
        }
        let vocab = self.cfg.vocab_size as u32;
        if let Some(t) = seqs.iter().flat_map(|s| s.iter()).find(|&&t| t >= vocab) {
            return Err(Error::Inference(format!(
                "token id {t} outside the vocabulary ({vocab})"
            )));
        }
        let hidden = self.forward_last(seqs).map_err(candle_err)?;
        let out = match &self.head {
            Head::Embedding => hidden.to_dtype(DType::F32).and_then(|h| {
                let norm = h.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
                h.broadcast_div(&norm)
            }),
            Head::YesNo(rows) => hidden
                .matmul(&rows.t().map_err(candle_err)?)
                .and_then(|t| t.to_dtype(DType::F32)),
        };
        out.and_then(|t| t.to_vec2()).map_err(candle_err)
    }
}

struct Job {
    seqs: Vec<Vec<u32>>,
    reply: tokio::sync::oneshot::Sender<Result<Vec<Vec<f32>>>>,
}

/// What one forward pass may hold: about [`TOKEN_BUDGET`] tokens and at most `--max-batch`
/// sequences (a sequence longer than the token budget runs alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassLimit {
    pub tokens: usize,
    pub seqs: usize,
}

impl PassLimit {
    /// The limit for a model loaded with `opts`.
    pub fn of(opts: &LoadOptions) -> Self {
        Self {
            tokens: TOKEN_BUDGET,
            seqs: opts.max_batch.max(1),
        }
    }
}

/// Forward passes a worker has run, and the most sequences one of them held.
#[derive(Debug, Default)]
pub struct PassCounts {
    passes: AtomicU64,
    largest: AtomicUsize,
}

impl PassCounts {
    fn record(&self, seqs: usize) {
        self.passes.fetch_add(1, Ordering::Relaxed);
        self.largest.fetch_max(seqs, Ordering::Relaxed);
    }

    /// Forward passes run so far.
    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::Relaxed)
    }

    /// The most sequences one forward pass has held.
    pub fn largest(&self) -> usize {
        self.largest.load(Ordering::Relaxed)
    }
}

/// A model on its own thread, fed by a queue; concurrent callers share forward passes.
pub struct PackedWorker {
    pub dir: ModelDir,
    tx: mpsc::Sender<Job>,
    counts: Arc<PassCounts>,
}

impl PackedWorker {
    /// Loads the model on a new thread; returns once it is ready (or failed to load).
    pub async fn start(dir: ModelDir, opts: LoadOptions, reranker: bool) -> Result<Self> {
        let device = DTypeSpec::device(opts.device)?;
        let dtype = opts.dtype.candle(opts.device)?;
        let limit = PassLimit::of(&opts);
        let (tx, rx) = mpsc::channel::<Job>();
        let thread_dir = dir.clone();
        let counts = Arc::new(PassCounts::default());
        let thread_counts = counts.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let name = if reranker {
            "semflow-rerank"
        } else {
            "semflow-embed"
        };
        std::thread::Builder::new()
            .name(name.into())
            .spawn(
                move || match PackedQwen3::load(&thread_dir, &device, dtype, reranker) {
                    Ok(model) => {
                        let _ = ready_tx.send(Ok(()));
                        serve(model, rx, limit, &thread_counts);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                },
            )
            .map_err(|e| Error::Inference(format!("cannot start the model thread: {e}")))?;
        ready_rx
            .await
            .map_err(|_| Error::Inference("the model thread stopped while loading".into()))??;
        Ok(Self { dir, tx, counts })
    }

    /// Runs `seqs` through the model (see [`PackedQwen3::run`]).
    pub async fn run(&self, seqs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Job { seqs, reply })
            .map_err(|_| Error::Inference("the model thread has stopped".into()))?;
        rx.await
            .map_err(|_| Error::Inference("the model thread stopped during the request".into()))?
    }

    /// The forward passes this worker has run.
    pub fn counts(&self) -> &PassCounts {
        &self.counts
    }
}

/// A reranker on a [`PackedWorker`]: the model's two outputs per prompt are the "yes" and
/// "no" logits, turned into P(yes) here.
pub struct PackedScorer(pub PackedWorker);

impl PackedScorer {
    /// P(yes) for each whole prompt.
    pub async fn score(&self, seqs: Vec<Vec<u32>>) -> Result<Vec<f32>> {
        Ok(self
            .0
            .run(seqs)
            .await?
            .into_iter()
            .map(|yn| super::prompts::p_yes(yn[0], yn[1]))
            .collect())
    }
}

/// The model thread: take a job, add whatever else is queued up to the token budget, run the
/// lot in forward passes within `limit`, answer each job.
fn serve(model: PackedQwen3, rx: mpsc::Receiver<Job>, limit: PassLimit, counts: &PassCounts) {
    while let Ok(first) = rx.recv() {
        let mut tokens: usize = first.seqs.iter().map(Vec::len).sum();
        let mut jobs = vec![first];
        while tokens < limit.tokens {
            match rx.try_recv() {
                Ok(job) => {
                    tokens += job.seqs.iter().map(Vec::len).sum::<usize>();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let all: Vec<&[u32]> = jobs
            .iter()
            .flat_map(|j| j.seqs.iter().map(Vec::as_slice))
            .collect();
        let result = run_budgeted(&model, &all, limit, counts);
        let mut outputs = match result {
            Ok(v) => v.into_iter(),
            Err(e) => {
                let msg = e.to_string();
                for job in jobs {
                    let _ = job.reply.send(Err(Error::Inference(msg.clone())));
                }
                continue;
            }
        };
        for job in jobs {
            let n = job.seqs.len();
            let _ = job.reply.send(Ok(outputs.by_ref().take(n).collect()));
        }
    }
}

/// Splits sequences of `lens` (in the order given) into consecutive forward passes within
/// `limit`: each pass takes sequences while their tokens stay within the budget and their
/// number within the batch size; a pass always takes at least one sequence.
fn plan_passes(lens: &[usize], limit: PassLimit) -> Vec<Range<usize>> {
    let mut passes = Vec::new();
    let mut start = 0;
    while start < lens.len() {
        let mut end = start;
        let mut tokens = 0;
        while end < lens.len()
            && (end == start || (tokens + lens[end] <= limit.tokens && end - start < limit.seqs))
        {
            tokens += lens[end];
            end += 1;
        }
        passes.push(start..end);
        start = end;
    }
    passes
}

/// Runs `seqs` in forward passes within `limit`, in length order so each pass holds similar
/// lengths (its attention blocks are then of similar cost). A panic inside candle becomes an
/// error for this batch instead of killing the model thread.
fn run_budgeted(
    model: &PackedQwen3,
    seqs: &[&[u32]],
    limit: PassLimit,
    counts: &PassCounts,
) -> Result<Vec<Vec<f32>>> {
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| seqs[i].len());
    let lens: Vec<usize> = order.iter().map(|&i| seqs[i].len()).collect();
    let mut out: Vec<Vec<f32>> = vec![Vec::new(); seqs.len()];
    for pass in plan_passes(&lens, limit) {
        let group: Vec<&[u32]> = order[pass.clone()].iter().map(|&i| seqs[i]).collect();
        counts.record(group.len());
        let vectors = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.run(&group)))
            .map_err(|_| Error::Inference("the packed forward pass panicked".into()))??;
        for (&i, v) in order[pass].iter().zip(vectors) {
            out[i] = v;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceSpec;
    use crate::model::dir::Role;
    use crate::model::random::{tiny_model_dir, ModelKind};

    #[test]
    fn passes_keep_to_the_token_budget_and_the_batch_size() {
        let limit = PassLimit {
            tokens: 10,
            seqs: 3,
        };
        assert_eq!(plan_passes(&[], limit), Vec::<Range<usize>>::new());
        // Batch size: four short sequences make two passes.
        assert_eq!(plan_passes(&[1, 1, 1, 1], limit), vec![0..3, 3..4]);
        // Token budget: 4 + 4 fit, a third would not.
        assert_eq!(plan_passes(&[4, 4, 4], limit), vec![0..2, 2..3]);
        // A sequence over the budget runs alone.
        assert_eq!(plan_passes(&[2, 30, 2], limit), vec![0..1, 1..2, 2..3]);
        let one = PassLimit {
            tokens: 100,
            seqs: 1,
        };
        assert_eq!(plan_passes(&[1, 1], one), vec![0..1, 1..2]);
    }

    /// `--max-batch`: no forward pass holds more sequences, however many callers queue work
    /// at once, and the results are those of unlimited passes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_forward_pass_exceeds_max_batch() {
        let dir = tiny_model_dir(ModelKind::Embedding, 7);
        let model = ModelDir::open("tiny", dir.path(), Role::Embedding).unwrap();
        let start = |max_batch| {
            let opts = LoadOptions {
                device: DeviceSpec::Cpu,
                dtype: DTypeSpec::F32,
                max_batch,
            };
            PackedWorker::start(model.clone(), opts, false)
        };
        let jobs: Vec<Vec<Vec<u32>>> = (0..4u32)
            .map(|j| {
                (0..5u32)
                    .map(|i| {
                        (0..3 + i + j)
                            .map(|t| 100 + t * 7 + j)
                            .chain([151643])
                            .collect()
                    })
                    .collect()
            })
            .collect();

        let limited = start(3).await.unwrap();
        let runs = jobs.iter().map(|seqs| limited.run(seqs.clone()));
        let got = futures::future::join_all(runs).await;
        assert!(
            limited.counts().largest() <= 3,
            "{}",
            limited.counts().largest()
        );
        // 20 sequences in passes of at most 3.
        assert!(
            limited.counts().passes() >= 7,
            "{}",
            limited.counts().passes()
        );

        let unlimited = start(64).await.unwrap();
        for (seqs, got) in jobs.iter().zip(got) {
            let want = unlimited.run(seqs.clone()).await.unwrap();
            for (g, w) in got.unwrap().iter().zip(&want) {
                let diff = g
                    .iter()
                    .zip(w)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(diff < 1e-5, "batch size changed a result by {diff}");
            }
        }
        assert!(unlimited.counts().largest() > 3);
    }
    /// Bytes the linear layers' weights hold.
    fn linear_weight_bytes(model: &PackedQwen3) -> usize {
        let bytes = |w: &Weight| match w {
            Weight::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Weight::Bf16(p) => p.bytes(),
        };
        let layer = |l: &Layer| bytes(&l.qkv) + bytes(&l.o) + bytes(&l.gate_up) + bytes(&l.down);
        model.layers.iter().map(layer).sum()
    }

    /// `--dtype bf16` on the CPU: the linear weights and the embedding table stay bf16 (half
    /// the memory), activations f32; every embedding is within cosine 0.999 of the f32 pass
    /// and every P(yes) within 0.01 (the parity bounds against transformers f32),
    /// over lengths that span several attention tiles.
    #[test]
    fn bf16_weights_on_the_cpu_stay_within_the_parity_bounds_of_f32() {
        let seqs: Vec<Vec<u32>> = [3u32, 40, 300]
            .iter()
            .map(|&n| {
                (0..n)
                    .map(|t| 100 + (t * 37) % 5000)
                    .chain([151643])
                    .collect()
            })
            .collect();
        let seqs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        for (kind, role, reranker) in [
            (ModelKind::Embedding, Role::Embedding, false),
            (ModelKind::Reranker, Role::Reranker, true),
        ] {
            let dir = tiny_model_dir(kind, 11);
            let model = ModelDir::open("tiny", dir.path(), role).unwrap();
            let load = |dtype| PackedQwen3::load(&model, &Device::Cpu, dtype, reranker).unwrap();
            let (f32_model, bf16_model) = (load(DType::F32), load(DType::BF16));
            assert_eq!(bf16_model.embed.dtype(), DType::BF16);
            let (full, half) = (
                linear_weight_bytes(&f32_model),
                linear_weight_bytes(&bf16_model),
            );
            assert!(half * 100 <= full * 55, "bf16 {half} bytes vs f32 {full}");
            let (want, got) = (
                f32_model.run(&seqs).unwrap(),
                bf16_model.run(&seqs).unwrap(),
            );
            // The bf16 pass is not the f32 pass under another name.
            assert_ne!(want, got);
            for (w, g) in want.iter().zip(&got) {
                if reranker {
                    let p_yes = |l: &[f32]| 1.0 / (1.0 + (l[1] - l[0]).exp());
                    let dp = (p_yes(w) - p_yes(g)).abs();
                    println!("bf16 weights: |dP(yes)| {dp:e}");
                    assert!(dp <= 0.01, "|dP(yes)| {dp}");
                } else {
                    let cos: f32 = w.iter().zip(g).map(|(a, b)| a * b).sum();
                    println!("bf16 weights: cosine {cos}");
                    assert!(cos >= 0.999, "cosine {cos}");
                }
            }
        }
    }
}
