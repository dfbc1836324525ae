//! The embedding of a one-token input, computed without mistral.rs.
//!
//! mistral.rs 0.8.1's Qwen3 embedding forward reaches `unreachable!()` for a one-token
//! sequence (no causal mask is built). The only such input semflow produces is the lone
//! `<|endoftext|>` of an empty text. With one position, attention's softmax is exactly 1, so
//! each layer's attention output is `o_proj(v)` — the query/key path (and RoPE) drops out —
//! and the whole forward pass is a handful of matrix-vector products, done here in F32.

use candle_core::{safetensors::MmapedSafetensors, DType, Device, Tensor, D};

use crate::error::{Error, Result};
use crate::model::dir::ModelDir;

fn candle(e: candle_core::Error) -> Error {
    Error::Inference(format!("single-token forward: {e}"))
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(w)
}

/// Final-layer hidden state of `token` alone, L2-normalised: what last-token pooling +
/// Normalize produce for a one-token sequence.
pub fn single_token_embedding(dir: &ModelDir, token: u32) -> Result<Vec<f32>> {
    let files = dir.weight_files()?;
    // Safety: the files are only read; semflow does not modify model files while running.
    let st = unsafe { MmapedSafetensors::multi(&files) }.map_err(candle)?;
    let prefix = if st.get("embed_tokens.weight").is_ok() {
        ""
    } else {
        "model."
    };
    let dev = Device::Cpu;
    let load = |name: &str| -> Result<Tensor> {
        st.load(&format!("{prefix}{name}"), &dev)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(candle)
    };
    let cfg = &dir.config;
    let eps = cfg.rms_norm_eps;
    let groups = cfg.num_attention_heads / cfg.num_key_value_heads.max(1);
    let hd = cfg.head_dim();
    let linear = |w: &Tensor, x: &Tensor| x.matmul(&w.t()?);

    let mut x = load("embed_tokens.weight")?
        .narrow(0, token as usize, 1)
        .map_err(candle)?; // [1, hidden]
    for l in 0..cfg.num_hidden_layers {
        let p = format!("layers.{l}.");
        let w = |n: &str| load(&format!("{p}{n}"));
        let h = rms_norm(&x, &w("input_layernorm.weight")?, eps).map_err(candle)?;
        let v = linear(&w("self_attn.v_proj.weight")?, &h).map_err(candle)?; // [1, kv*hd]
                                                                             // Grouped-query attention: query head i reads kv head i / groups.
        let v_rep = v
            .reshape((cfg.num_key_value_heads, 1, hd))
            .and_then(|v| v.repeat((1, groups, 1)))
            .and_then(|v| v.reshape((1, cfg.num_attention_heads * hd)))
            .map_err(candle)?;
        let attn = linear(&w("self_attn.o_proj.weight")?, &v_rep).map_err(candle)?;
        x = (x + attn).map_err(candle)?;
        let h = rms_norm(&x, &w("post_attention_layernorm.weight")?, eps).map_err(candle)?;
        let gate = linear(&w("mlp.gate_proj.weight")?, &h)
            .and_then(|g| candle_nn_silu(&g))
            .map_err(candle)?;
        let up = linear(&w("mlp.up_proj.weight")?, &h).map_err(candle)?;
        let mlp =
            linear(&w("mlp.down_proj.weight")?, &(gate * up).map_err(candle)?).map_err(candle)?;
        x = (x + mlp).map_err(candle)?;
    }
    let x = rms_norm(&x, &load("norm.weight")?, eps).map_err(candle)?;
    let mut out: Vec<f32> = x.flatten_all().and_then(|t| t.to_vec1()).map_err(candle)?;
    super::normalize(&mut out);
    Ok(out)
}

fn candle_nn_silu(x: &Tensor) -> candle_core::Result<Tensor> {
    x * candle_core::Tensor::ones_like(x)?.broadcast_div(&(x.neg()?.exp()? + 1.0)?)?
}
