//! The cosine filter and hard-negative candidates: for a kept (query, positive) pair, the
//! corpus documents most similar to the query (exact search), minus the positive and its
//! verbatim duplicates, after skipping the top `skip_top` and applying the margins
//! sentence-transformers' `mine_hard_negatives` uses. The optional rerank check (likely false
//! negatives) runs in the caller, which owns the reranker.

use std::sync::Arc;

use crate::generation::config::NegativesConfig;
use crate::udf::vector::cosine_similarity;

/// The documents of a run with their (unit) embeddings.
#[derive(Debug, Default)]
pub struct Corpus {
    pub ids: Vec<String>,
    pub texts: Vec<String>,
    pub vectors: Vec<Arc<[f32]>>,
}

/// The filter: strictly above the threshold (a pair exactly at it is dropped).
pub fn keep(score: f64, threshold: f64) -> bool {
    score > threshold
}

/// A negative candidate: corpus index and cosine to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub index: usize,
    pub score: f64,
}

/// Candidates for `query` (most similar first), at most `cfg.max_candidates`.
pub fn candidates(
    corpus: &Corpus,
    query: &[f32],
    positive: usize,
    positive_score: f64,
    cfg: &NegativesConfig,
) -> Vec<Candidate> {
    let positive_text = &corpus.texts[positive];
    let mut scored: Vec<Candidate> = corpus
        .vectors
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != positive && corpus.texts[*i] != *positive_text)
        .map(|(index, v)| Candidate {
            index,
            score: cosine_similarity(query, v),
        })
        .filter(|c| c.score.is_finite())
        .collect();
    // Descending by score; ties by corpus order so runs are reproducible.
    scored.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
    let ceiling = {
        let mut c = f64::INFINITY;
        if let Some(m) = cfg.absolute_margin {
            c = c.min(positive_score - m);
        }
        if let Some(m) = cfg.relative_margin {
            c = c.min(positive_score * (1.0 - m));
        }
        c
    };
    scored
        .into_iter()
        .skip(cfg.skip_top)
        .filter(|c| c.score <= ceiling)
        .take(cfg.max_candidates.max(cfg.count))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Arc<[f32]> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect::<Vec<_>>().into()
    }

    fn corpus(vs: &[[f32; 2]], texts: &[&str]) -> Corpus {
        Corpus {
            ids: (0..vs.len()).map(|i| i.to_string()).collect(),
            texts: texts.iter().map(|s| s.to_string()).collect(),
            vectors: vs.iter().map(|v| unit(v)).collect(),
        }
    }

    #[test]
    fn filter_is_strictly_above_the_threshold() {
        // cos(60°) = 0.5 with hand-made vectors.
        let s = cosine_similarity(&[1.0, 0.0], &[0.5, 0.75f32.sqrt()]);
        assert!((s - 0.5).abs() < 1e-7, "{s}");
        assert!(!keep(0.7, 0.7));
        assert!(keep(0.7 + 1e-12, 0.7));
        assert!(!keep(0.3, 0.7));
        let orthogonal = cosine_similarity(&[1.0, 0.0], &[0.0, 2.0]);
        assert_eq!(orthogonal, 0.0);
        assert!(!keep(orthogonal, 0.0));
    }

    #[test]
    fn nearest_first_without_the_positive_or_its_copies() {
        let c = corpus(
            &[[1.0, 0.0], [1.0, 0.1], [1.0, 0.5], [0.0, 1.0], [1.0, 0.0]],
            &["pos", "a", "b", "c", "pos"],
        );
        let q = unit(&[1.0, 0.05]);
        let cfg = NegativesConfig::default();
        let got: Vec<usize> = candidates(&c, &q, 0, 0.99, &cfg)
            .iter()
            .map(|c| c.index)
            .collect();
        assert_eq!(got, vec![1, 2, 3], "index 4 repeats the positive's text");
    }

    #[test]
    fn skip_top_and_margins() {
        let c = corpus(
            &[[1.0, 0.0], [1.0, 0.1], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]],
            &["p", "a", "b", "c", "d"],
        );
        let q = unit(&[1.0, 0.0]);
        let cfg = NegativesConfig {
            skip_top: 1,
            ..Default::default()
        };
        let idx = |cfg: &NegativesConfig| -> Vec<usize> {
            candidates(&c, &q, 0, 1.0, cfg)
                .iter()
                .map(|c| c.index)
                .collect()
        };
        assert_eq!(idx(&cfg), vec![2, 3, 4]);
        // cos to q: a 0.995, b 0.894, c 0.707, d 0: an absolute margin of 0.2 keeps <= 0.8.
        let cfg = NegativesConfig {
            absolute_margin: Some(0.2),
            ..Default::default()
        };
        assert_eq!(idx(&cfg), vec![3, 4]);
        let cfg = NegativesConfig {
            relative_margin: Some(0.05),
            max_candidates: 1,
            count: 1,
            ..Default::default()
        };
        assert_eq!(idx(&cfg), vec![2]);
    }
}
