//! `semflow merge`: checkpoints of one architecture merged tensor by tensor with spherical
//! linear interpolation, as the Qwen3-Embedding recipe merges its fine-tuning checkpoints.
//! Each tensor is treated as one flat vector: the result moves along the arc between the two
//! at angle fraction `t` (linear interpolation where they are nearly parallel, as mergekit
//! does). More than two models merge pairwise in order, model k entering the running result
//! with `t = w_k / (w_1 + … + w_k)`, so equal weights give each model the same share.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::error::{Error, Result};

/// Above this |cos| the two tensors count as parallel and are interpolated linearly.
const PARALLEL: f64 = 0.9995;

/// What a merge did.
#[derive(Debug, Default, Clone, Copy)]
pub struct MergeStats {
    pub tensors: usize,
    /// Tensors interpolated linearly (nearly parallel or zero).
    pub linear: usize,
}

/// Slerp of `a` and `b` at `t` in f64; returns whether it fell back to linear.
pub fn slerp(a: &[f64], b: &[f64], t: f64, out: &mut Vec<f64>) -> bool {
    let (mut dot, mut na, mut nb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    out.clear();
    let denom = na.sqrt() * nb.sqrt();
    let cos = if denom > 0.0 { dot / denom } else { 1.0 };
    if cos.abs() > PARALLEL || !cos.is_finite() {
        out.extend(a.iter().zip(b).map(|(x, y)| (1.0 - t) * x + t * y));
        return true;
    }
    let theta = cos.acos();
    let sin = theta.sin();
    let (s0, s1) = (((1.0 - t) * theta).sin() / sin, (t * theta).sin() / sin);
    out.extend(a.iter().zip(b).map(|(x, y)| s0 * x + s1 * y));
    false
}

/// Interpolation factors for `n` models from `--t` or `--weights` (see the module docs).
/// Entry k (k ≥ 1) is the factor model k is merged in with.
pub fn weights(n: usize, t: Option<f64>, weights: Option<Vec<f64>>) -> Result<Vec<f64>> {
    if n < 2 {
        return Err(Error::InvalidArgument(
            "merge needs at least two models".into(),
        ));
    }
    let w = match (t, weights) {
        (Some(t), _) => {
            if n != 2 {
                return Err(Error::InvalidArgument(
                    "--t merges exactly two models; use --weights for more".into(),
                ));
            }
            if !(0.0..=1.0).contains(&t) {
                return Err(Error::InvalidArgument(format!(
                    "--t {t}: must be in [0, 1]"
                )));
            }
            return Ok(vec![0.0, t]);
        }
        (None, Some(w)) => w,
        (None, None) => vec![1.0; n],
    };
    if w.len() != n {
        return Err(Error::InvalidArgument(format!(
            "--weights has {} values for {n} models",
            w.len()
        )));
    }
    if w.iter().any(|x| !x.is_finite() || *x < 0.0) || w[0] + w[1] <= 0.0 {
        return Err(Error::InvalidArgument(
            "--weights must be non-negative, and the first two not both 0".into(),
        ));
    }
    let mut acc = 0.0;
    Ok(w.iter()
        .map(|x| {
            acc += x;
            if acc > 0.0 {
                x / acc
            } else {
                0.0
            }
        })
        .collect())
}

fn to_f64(view: &TensorView<'_>, name: &str) -> Result<Vec<f64>> {
    let d = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        Dtype::F64 => d
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        other => {
            return Err(Error::Safetensors(format!(
                "tensor {name}: dtype {other:?} cannot be interpolated"
            )))
        }
    })
}

fn from_f64(values: &[f64], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F64 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|v| bf16::from_f64(*v).to_le_bytes())
            .collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|v| f16::from_f64(*v).to_le_bytes())
            .collect(),
        _ => values
            .iter()
            .flat_map(|v| (*v as f32).to_le_bytes())
            .collect(),
    }
}

fn safetensors_files(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        if p.extension().and_then(|x| x.to_str()) == Some("safetensors") {
            if let Some(n) = p.file_name().and_then(|n| n.to_str()) {
                names.push(n.to_string());
            }
        }
    }
    names.sort();
    if names.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{}: no .safetensors files",
            dir.display()
        )));
    }
    Ok(names)
}

fn map(path: &Path) -> Result<memmap2::Mmap> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: read-only map of a checkpoint nobody should modify during the merge.
    unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(path, e))
}

/// Merges `models` with per-model factors from [`weights`] into `out`.
pub fn merge(models: &[PathBuf], factors: &[f64], out: &Path) -> Result<MergeStats> {
    let files = safetensors_files(&models[0])?;
    for m in &models[1..] {
        let other = safetensors_files(m)?;
        if other != files {
            return Err(Error::InvalidArgument(format!(
                "{} has safetensors files {other:?}, {} has {files:?}: not the same architecture",
                m.display(),
                models[0].display()
            )));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    copy_other_files(&models[0], out)?;
    let mut stats = MergeStats::default();
    for file in &files {
        let maps = models
            .iter()
            .map(|m| map(&m.join(file)))
            .collect::<Result<Vec<_>>>()?;
        let parsed = maps
            .iter()
            .zip(models)
            .map(|(b, m)| {
                SafeTensors::deserialize(b)
                    .map_err(|e| Error::Safetensors(format!("{}: {e}", m.join(file).display())))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut names: Vec<String> = parsed[0].names().into_iter().map(String::from).collect();
        names.sort();
        let mut merged: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = BTreeMap::new();
        let mut buf = Vec::new();
        for name in &names {
            let first = parsed[0]
                .tensor(name)
                .map_err(|e| Error::Safetensors(format!("{name}: {e}")))?;
            let mut acc = to_f64(&first, name)?;
            for (k, st) in parsed.iter().enumerate().skip(1) {
                let v = st.tensor(name).map_err(|e| {
                    Error::Safetensors(format!("{}: tensor {name}: {e}", models[k].display()))
                })?;
                if v.shape() != first.shape() {
                    return Err(Error::InvalidArgument(format!(
                        "tensor {name}: shape {:?} in {} but {:?} in {}",
                        v.shape(),
                        models[k].display(),
                        first.shape(),
                        models[0].display()
                    )));
                }
                let other = to_f64(&v, name)?;
                if slerp(&acc, &other, factors[k], &mut buf) {
                    stats.linear += 1;
                }
                std::mem::swap(&mut acc, &mut buf);
            }
            merged.insert(
                name.clone(),
                (
                    first.dtype(),
                    first.shape().to_vec(),
                    from_f64(&acc, first.dtype()),
                ),
            );
            stats.tensors += 1;
        }
        let views = merged
            .iter()
            .map(|(n, (dtype, shape, data))| {
                TensorView::new(*dtype, shape.clone(), data)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| Error::Safetensors(format!("{n}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        // Keep the header's free-form metadata (e.g. {"format": "pt"}) of the first model.
        let info = SafeTensors::read_metadata(&maps[0])
            .ok()
            .and_then(|(_, m)| m.metadata().clone());
        let path = out.join(file);
        safetensors::serialize_to_file(views, info, &path)
            .map_err(|e| Error::Safetensors(format!("{}: {e}", path.display())))?;
    }
    Ok(stats)
}

/// Copies everything but the weights (config, tokenizer, pooling, index) from `src` to `dst`.
fn copy_other_files(src: &Path, dst: &Path) -> Result<()> {
    for e in std::fs::read_dir(src).map_err(|e| Error::io(src, e))? {
        let p = e.map_err(|e| Error::io(src, e))?.path();
        let Some(name) = p.file_name() else { continue };
        let target = dst.join(name);
        if p.is_dir() {
            std::fs::create_dir_all(&target).map_err(|e| Error::io(&target, e))?;
            copy_other_files(&p, &target)?;
        } else if p.extension().and_then(|x| x.to_str()) != Some("safetensors") {
            std::fs::copy(&p, &target).map_err(|e| Error::io(&target, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(v: &[f64]) -> f64 {
        v.iter().map(|x| x * x).sum::<f64>().sqrt()
    }

    #[test]
    fn slerp_endpoints_and_norms() {
        let a = [3.0, 0.0, 0.0];
        let b = [0.0, 3.0, 0.0];
        let mut out = Vec::new();
        assert!(!slerp(&a, &b, 0.0, &mut out));
        assert_eq!(out, a);
        slerp(&a, &b, 1.0, &mut out);
        assert!((out[0]).abs() < 1e-15 && (out[1] - 3.0).abs() < 1e-15);
        for t in [0.1, 0.25, 0.5, 0.9] {
            slerp(&a, &b, t, &mut out);
            // On the arc: the norm stays 3 (a lerp would dip to 2.12 at t=0.5) …
            assert!((norm(&out) - 3.0).abs() < 1e-12, "t={t}: {}", norm(&out));
            // … and the angle from a is t * 90°.
            let angle = (out[0] / 3.0).acos();
            assert!((angle - t * std::f64::consts::FRAC_PI_2).abs() < 1e-12);
        }
        // Parallel tensors interpolate linearly.
        assert!(slerp(&[1.0, 1.0], &[2.0, 2.0], 0.5, &mut out));
        assert_eq!(out, vec![1.5, 1.5]);
    }

    #[test]
    fn weights_give_equal_shares() {
        assert_eq!(weights(2, Some(0.3), None).unwrap(), vec![0.0, 0.3]);
        assert_eq!(weights(3, None, None).unwrap(), vec![1.0, 0.5, 1.0 / 3.0]);
        assert_eq!(
            weights(2, None, Some(vec![1.0, 3.0])).unwrap(),
            vec![1.0, 0.75]
        );
        assert!(weights(3, Some(0.5), None).is_err());
        assert!(weights(2, Some(1.5), None).is_err());
        assert!(weights(2, None, Some(vec![1.0])).is_err());
    }
}
