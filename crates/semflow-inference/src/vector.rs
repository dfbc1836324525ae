//! Vector arithmetic on embeddings: unit length and Matryoshka truncation.

/// L2-normalises in place (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v
        .iter()
        .map(|x| (*x as f64) * (*x as f64))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        for x in v.iter_mut() {
            *x = (*x as f64 / norm) as f32;
        }
    }
}

/// Matryoshka: the first `dims` components, re-normalised.
pub fn truncate_dims(v: &[f32], dims: usize) -> Vec<f32> {
    let mut out = v[..dims.min(v.len())].to_vec();
    normalize(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matryoshka_renormalises() {
        let v = [0.6f32, 0.0, 0.8, 0.0];
        let t = truncate_dims(&v, 2);
        assert_eq!(t, vec![1.0, 0.0]);
        let mut z = vec![0.0f32; 3];
        normalize(&mut z);
        assert_eq!(z, vec![0.0; 3]);
    }
}
