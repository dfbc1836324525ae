//! Retrieval measures over a run and qrels with trec_eval's conventions, so numbers computed
//! here equal `trec_eval` / `pytrec_eval`'s (checked in CI against pytrec-eval-terrier and
//! ranx: `tests/clients/ir_measures.py`).
//!
//! The conventions, each as trec_eval has them:
//! - a query's ranking is its run rows by score, highest first; **ties are broken by document
//!   id, descending, compared as bytes** (trec_eval's `strcmp`);
//! - only queries present in both the run and the qrels are evaluated; a query whose qrels
//!   hold no relevant document scores 0 on every measure;
//! - a document is relevant when its grade is ≥ the relevance level (1 by default); nDCG's gain
//!   is the grade itself (Järvelin & Kekäläinen), grades ≤ 0 gain nothing, the discount is
//!   `log2(rank + 1)` and the ideal ranking is every judged document by grade;
//! - P@k divides by k even when fewer than k documents were retrieved; recall and MAP divide
//!   by every relevant document in the qrels, retrieved or not;
//! - `judged_only` (trec_eval `-J`) drops unjudged documents from the ranking before measuring.
//!
//! A document twice in one query's run, or judged twice for one query, is an error (trec_eval
//! refuses both), as is a score that is not a number.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

/// What can be wrong with a measure's name or with a run or qrels.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MeasureError {
    #[error("unknown measure {0:?}: expected ndcg, map, mrr, recall or precision (P), optionally with @k, e.g. ndcg@10")]
    UnknownMeasure(String),
    #[error("measure {0:?}: the cutoff after @ must be a positive integer")]
    BadCutoff(String),
    #[error("measure {0:?} needs a cutoff, e.g. {0}@10")]
    CutoffRequired(String),
    #[error("run: document {doc:?} appears twice for query {query:?}")]
    DuplicateRunDocument { query: String, doc: String },
    #[error("qrels: document {doc:?} is judged twice for query {query:?}")]
    DuplicateJudgement { query: String, doc: String },
    #[error("run: score of document {doc:?} for query {query:?} is not a number")]
    NotANumber { query: String, doc: String },
}

/// The family of a measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ndcg,
    Map,
    Mrr,
    Recall,
    Precision,
}

/// One measure: a family and an optional cutoff (`None`: the whole ranking).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measure {
    pub kind: Kind,
    pub cutoff: Option<usize>,
}

impl FromStr for Measure {
    type Err = MeasureError;

    /// `ndcg@10`, `map`, `mrr@10`, `recall@100`, `precision@5` (or `P@5`); case-insensitive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let (name, cutoff) = match text.split_once('@') {
            Some((name, k)) => match k.trim().parse::<usize>() {
                Ok(k) if k > 0 => (name.trim(), Some(k)),
                _ => return Err(MeasureError::BadCutoff(text.to_string())),
            },
            None => (text, None),
        };
        let kind = match name.to_ascii_lowercase().as_str() {
            "ndcg" => Kind::Ndcg,
            "map" => Kind::Map,
            "mrr" => Kind::Mrr,
            "recall" => Kind::Recall,
            "precision" | "p" => Kind::Precision,
            _ => return Err(MeasureError::UnknownMeasure(text.to_string())),
        };
        if kind == Kind::Precision && cutoff.is_none() {
            return Err(MeasureError::CutoffRequired(name.to_string()));
        }
        Ok(Measure { kind, cutoff })
    }
}

impl fmt::Display for Measure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.kind {
            Kind::Ndcg => "ndcg",
            Kind::Map => "map",
            Kind::Mrr => "mrr",
            Kind::Recall => "recall",
            Kind::Precision => "precision",
        };
        match self.cutoff {
            Some(k) => write!(f, "{name}@{k}"),
            None => f.write_str(name),
        }
    }
}

/// Parses a list of measures separated by commas or spaces.
pub fn parse_measures(list: &str) -> Result<Vec<Measure>, MeasureError> {
    list.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect()
}

/// How documents are judged.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The lowest grade that counts as relevant (trec_eval `-l`, default 1).
    pub relevance_level: i64,
    /// Unjudged documents leave the ranking before measuring (trec_eval `-J`).
    pub judged_only: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            relevance_level: 1,
            judged_only: false,
        }
    }
}

/// Relevance judgements: query → document → grade.
#[derive(Debug, Default)]
pub struct Qrels {
    queries: HashMap<String, HashMap<String, i64>>,
}

impl Qrels {
    /// Adds one judgement.
    pub fn insert(&mut self, query: &str, doc: &str, grade: i64) -> Result<(), MeasureError> {
        let docs = self.queries.entry(query.to_string()).or_default();
        if docs.insert(doc.to_string(), grade).is_some() {
            return Err(MeasureError::DuplicateJudgement {
                query: query.to_string(),
                doc: doc.to_string(),
            });
        }
        Ok(())
    }
}

/// A run: query → (document, score) rows in any order.
#[derive(Debug, Default)]
pub struct Run {
    queries: HashMap<String, HashMap<String, f64>>,
}

impl Run {
    /// Adds one retrieved document.
    pub fn insert(&mut self, query: &str, doc: &str, score: f64) -> Result<(), MeasureError> {
        if score.is_nan() {
            return Err(MeasureError::NotANumber {
                query: query.to_string(),
                doc: doc.to_string(),
            });
        }
        let docs = self.queries.entry(query.to_string()).or_default();
        if docs.insert(doc.to_string(), score).is_some() {
            return Err(MeasureError::DuplicateRunDocument {
                query: query.to_string(),
                doc: doc.to_string(),
            });
        }
        Ok(())
    }
}

/// Every measure of every evaluated query, by query id (ascending, as trec_eval prints them);
/// each query's values are in the order of `measures`.
pub fn evaluate(
    run: &Run,
    qrels: &Qrels,
    measures: &[Measure],
    options: Options,
) -> BTreeMap<String, Vec<f64>> {
    run.queries
        .iter()
        .filter_map(|(query, docs)| {
            let judged = qrels.queries.get(query)?;
            let judgement = Judgement::of(docs, judged, options);
            let values = measures.iter().map(|m| judgement.measure(*m)).collect();
            Some((query.clone(), values))
        })
        .collect()
}

/// One query's ranking as grades, with what its qrels hold.
struct Judgement {
    /// The grade of each ranked document, best first (0 for unjudged ones).
    ranked: Vec<i64>,
    /// Every positive grade in the qrels, highest first: the ideal ranking's gains.
    ideal: Vec<i64>,
    /// Relevant documents in the qrels, retrieved or not.
    relevant: usize,
    level: i64,
}

impl Judgement {
    fn of(docs: &HashMap<String, f64>, judged: &HashMap<String, i64>, options: Options) -> Self {
        let mut ranking: Vec<(&str, f64)> = docs
            .iter()
            .filter(|(doc, _)| !options.judged_only || judged.contains_key(doc.as_str()))
            .map(|(doc, score)| (doc.as_str(), *score))
            .collect();
        ranking.sort_by(|(da, sa), (db, sb)| {
            sb.partial_cmp(sa)
                .unwrap_or(Ordering::Equal)
                .then_with(|| db.as_bytes().cmp(da.as_bytes()))
        });
        let ranked = ranking
            .iter()
            .map(|(doc, _)| judged.get(*doc).copied().unwrap_or(0))
            .collect();
        let mut ideal: Vec<i64> = judged.values().copied().filter(|&g| g > 0).collect();
        ideal.sort_unstable_by(|a, b| b.cmp(a));
        let relevant = judged
            .values()
            .filter(|&&g| g >= options.relevance_level)
            .count();
        Judgement {
            ranked,
            ideal,
            relevant,
            level: options.relevance_level,
        }
    }

    fn measure(&self, m: Measure) -> f64 {
        let depth = m.cutoff.unwrap_or(usize::MAX);
        let top = &self.ranked[..self.ranked.len().min(depth)];
        let is_relevant = |g: &i64| *g >= self.level;
        match m.kind {
            Kind::Precision => top.iter().filter(|g| is_relevant(g)).count() as f64 / depth as f64,
            Kind::Recall => ratio(top.iter().filter(|g| is_relevant(g)).count(), self.relevant),
            Kind::Mrr => top
                .iter()
                .position(is_relevant)
                .map_or(0.0, |i| 1.0 / (i + 1) as f64),
            Kind::Map => {
                let mut hits = 0;
                let mut sum = 0.0;
                for (i, g) in top.iter().enumerate() {
                    if is_relevant(g) {
                        hits += 1;
                        sum += hits as f64 / (i + 1) as f64;
                    }
                }
                if self.relevant == 0 {
                    0.0
                } else {
                    sum / self.relevant as f64
                }
            }
            Kind::Ndcg => {
                let ideal = dcg(&self.ideal[..self.ideal.len().min(depth)]);
                if ideal > 0.0 {
                    dcg(top) / ideal
                } else {
                    0.0
                }
            }
        }
    }
}

/// Discounted cumulative gain of grades in rank order: grade / log2(rank + 1), positive
/// grades only.
fn dcg(grades: &[i64]) -> f64 {
    grades
        .iter()
        .enumerate()
        .filter(|(_, &g)| g > 0)
        .map(|(i, &g)| g as f64 / ((i + 2) as f64).log2())
        .sum()
}

fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Run, Qrels) {
        let mut qrels = Qrels::default();
        for (doc, grade) in [("d1", 2), ("d2", 1), ("d3", 0), ("d4", 3)] {
            qrels.insert("q1", doc, grade).unwrap();
        }
        qrels.insert("q2", "a", 0).unwrap();
        let mut run = Run::default();
        // d1, d2 and d4 tie: trec_eval ranks them d4, d2, d1 (document id descending).
        for (doc, score) in [
            ("d1", 0.5),
            ("d2", 0.5),
            ("d3", 0.9),
            ("d5", 0.1),
            ("d4", 0.5),
        ] {
            run.insert("q1", doc, score).unwrap();
        }
        run.insert("q2", "a", 1.0).unwrap();
        run.insert("q3", "x", 1.0).unwrap(); // not in the qrels: not evaluated
        (run, qrels)
    }

    fn values(list: &str, options: Options) -> BTreeMap<String, Vec<f64>> {
        let (run, qrels) = sample();
        evaluate(&run, &qrels, &parse_measures(list).unwrap(), options)
    }

    /// Expected values worked by hand (the ranking is d3 d4 d2 d1 d5, grades 0 3 1 2 0) and
    /// equal to pytrec_eval's for the same input.
    #[test]
    fn measures_follow_trec_eval() {
        let got = values("ndcg@3 ndcg map@2 map mrr P@2 recall@2", Options::default());
        assert_eq!(got.keys().collect::<Vec<_>>(), ["q1", "q2"]);
        let l = |r: f64| (r + 1.0).log2();
        let ideal3 = 3.0 + 2.0 / l(2.0) + 1.0 / l(3.0);
        let expected = [
            (3.0 / l(2.0) + 1.0 / l(3.0)) / ideal3,
            (3.0 / l(2.0) + 1.0 / l(3.0) + 2.0 / l(4.0)) / ideal3,
            (1.0 / 2.0) / 3.0,
            (1.0 / 2.0 + 2.0 / 3.0 + 3.0 / 4.0) / 3.0,
            0.5,
            0.5,
            1.0 / 3.0,
        ];
        for (g, e) in got["q1"].iter().zip(expected) {
            assert!((g - e).abs() < 1e-12, "{:?} vs {expected:?}", got["q1"]);
        }
        assert!((got["q1"][0] - 0.502_490_520_168_670_5).abs() < 1e-12);
        assert!(got["q2"].iter().all(|v| *v == 0.0), "no relevant document");
    }

    #[test]
    fn judged_only_drops_unjudged_documents() {
        let options = Options {
            judged_only: true,
            ..Options::default()
        };
        // d5 is unjudged: P@5 counts 3 relevant of the 4 judged, still over 5.
        let got = values("P@5", options);
        assert_eq!(got["q1"], [3.0 / 5.0]);
    }

    #[test]
    fn relevance_level_raises_the_bar_for_binary_measures_only() {
        let options = Options {
            relevance_level: 2,
            ..Options::default()
        };
        let got = values("recall@2 ndcg@3", options);
        assert_eq!(got["q1"][0], 0.5, "d4 of d4 and d1");
        assert!((got["q1"][1] - 0.502_490_520_168_670_5).abs() < 1e-12);
    }

    #[test]
    fn names_parse_and_print() {
        let m = parse_measures("NDCG@10, p@5 recall mrr@10,map").unwrap();
        let names: Vec<String> = m.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["ndcg@10", "precision@5", "recall", "mrr@10", "map"]);
        assert!(matches!(
            parse_measures("ndcg@0"),
            Err(MeasureError::BadCutoff(_))
        ));
        assert!(matches!(
            parse_measures("bleu"),
            Err(MeasureError::UnknownMeasure(_))
        ));
        assert!(matches!(
            parse_measures("precision"),
            Err(MeasureError::CutoffRequired(_))
        ));
    }

    #[test]
    fn duplicates_and_nan_are_refused() {
        let mut run = Run::default();
        run.insert("q", "d", 1.0).unwrap();
        assert!(matches!(
            run.insert("q", "d", 2.0),
            Err(MeasureError::DuplicateRunDocument { .. })
        ));
        assert!(matches!(
            run.insert("q", "e", f64::NAN),
            Err(MeasureError::NotANumber { .. })
        ));
        let mut qrels = Qrels::default();
        qrels.insert("q", "d", 1).unwrap();
        assert!(matches!(
            qrels.insert("q", "d", 0),
            Err(MeasureError::DuplicateJudgement { .. })
        ));
    }
}
