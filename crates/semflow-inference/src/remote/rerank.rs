//! `rerank()` on remote endpoints: Cohere/Jina-shaped `/rerank` (semflow serve, TEI, Jina,
//! vLLM) or vLLM's `/score`.
//!
//! Who builds the Qwen3 reranker prompt depends on the server ([`RerankFormat`]): semflow
//! serve takes raw query, documents and `instruction` and formats them itself (`server`);
//! vLLM serving Qwen3-Reranker scores the concatenation of the two texts it is given, so
//! semflow sends the prompt split in two (`client`, see [`prompts::rerank_pair_texts`]).
//! Either way the score is P(yes) of the exact prompt the local backend uses.

use std::collections::HashMap;

use futures::future::join_all;
use serde_json::{json, Value};

use super::pool::{size_batches, Failure, Pool, PoolOptions};
use super::RemoteConfig;
use crate::error::{Error, Result};
use crate::{prompts, RerankInput};

/// Text bytes per request at most (about 16k tokens; a longer pair goes alone).
const BYTE_BUDGET: usize = 64 * 1024;
/// Documents per request at most.
const MAX_DOCUMENTS: usize = 64;

/// Who formats the reranker prompt (`--rerank-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RerankFormat {
    /// `client` for `/score` URLs, `server` for `/rerank`.
    #[default]
    Auto,
    /// Send raw query and documents (plus `instruction` when given): the server applies
    /// the Qwen3 template (semflow serve).
    Server,
    /// Send the Qwen3 prompt split into query and document texts (vLLM).
    Client,
}

impl std::str::FromStr for RerankFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "server" => Ok(Self::Server),
            "client" => Ok(Self::Client),
            other => Err(Error::InvalidArgument(format!(
                "--rerank-format must be auto, server or client, got '{other}'"
            ))),
        }
    }
}

/// Which request shape the endpoints take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    /// `{"query", "documents"}` → `{"results": [{"index", "relevance_score"}]}`.
    Rerank,
    /// `{"text_1": [...], "text_2": [...]}` → `{"data": [{"index", "score"}]}`.
    Score,
}

/// Scores from a pool of rerank endpoints.
pub struct RemoteReranker {
    pool: Pool,
    api: Api,
    client_format: bool,
    model: Option<String>,
    identity: String,
}

impl RemoteReranker {
    pub fn new(cfg: &RemoteConfig) -> Result<Self> {
        let mut urls = Vec::new();
        let mut api = None;
        for u in &cfg.rerank_endpoints {
            let base = u.trim().trim_end_matches('/');
            let (url, this) = if base.ends_with("/score") {
                (base.to_string(), Api::Score)
            } else if base.ends_with("/rerank") {
                (base.to_string(), Api::Rerank)
            } else {
                (format!("{base}/rerank"), Api::Rerank)
            };
            if api.is_some_and(|a| a != this) {
                return Err(Error::InvalidArgument(format!(
                    "--rerank-endpoint {u}: every rerank endpoint must take the same API (all /rerank or all /score)"
                )));
            }
            api = Some(this);
            urls.push(url);
        }
        let api = api.ok_or_else(|| Error::InvalidArgument("no rerank endpoint given".into()))?;
        let client_format = match cfg.rerank_format {
            RerankFormat::Auto => api == Api::Score,
            RerankFormat::Server => {
                if api == Api::Score {
                    return Err(Error::InvalidArgument(
                        "--rerank-format server needs /rerank endpoints: /score takes two texts and no instruction".into(),
                    ));
                }
                false
            }
            RerankFormat::Client => true,
        };
        let mut sorted = urls.clone();
        sorted.sort();
        let identity = format!(
            "remote:{}@{}",
            cfg.rerank_model.as_deref().unwrap_or(""),
            sorted.join(",")
        );
        let pool = Pool::new(
            urls,
            PoolOptions::from_config(
                "rerank",
                cfg.rerank_api_key.clone().or_else(|| cfg.api_key.clone()),
                cfg,
            ),
        )?;
        Ok(Self {
            pool,
            api,
            client_format,
            model: cfg.rerank_model.clone(),
            identity,
        })
    }

    /// What the scores come from, for cache keys: model name and endpoints.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// P(yes) per input, in order.
    pub async fn score(&self, inputs: &[&RerankInput]) -> Result<Vec<f32>> {
        let requests = match self.api {
            Api::Score => self.score_requests(inputs),
            Api::Rerank => self.rerank_requests(inputs),
        };
        let answers = join_all(requests.iter().map(|(body, slots)| {
            let n = slots.len();
            let api = self.api;
            self.pool.post(body, move |v| parse_scores(api, &v, n))
        }))
        .await;
        let mut out = vec![f32::NAN; inputs.len()];
        for ((_, slots), scores) in requests.iter().zip(answers) {
            for (&slot, s) in slots.iter().zip(scores?) {
                out[slot] = s;
            }
        }
        Ok(out)
    }

    fn with_model(&self, mut body: Value) -> Value {
        if let Some(m) = &self.model {
            body["model"] = Value::String(m.clone());
        }
        body
    }

    /// `/score`: pairs in order, cut by size.
    fn score_requests(&self, inputs: &[&RerankInput]) -> Vec<(Value, Vec<usize>)> {
        let pairs: Vec<(String, String)> = inputs
            .iter()
            .map(|i| prompts::rerank_pair_texts(&i.query, &i.document, i.instruction.as_deref()))
            .collect();
        size_batches(
            pairs.iter().map(|(a, b)| a.len() + b.len()),
            BYTE_BUDGET,
            MAX_DOCUMENTS,
        )
        .into_iter()
        .map(|r| {
            let (t1, t2): (Vec<&str>, Vec<&str>) = pairs[r.clone()]
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .unzip();
            (
                self.with_model(json!({"text_1": t1, "text_2": t2})),
                r.collect(),
            )
        })
        .collect()
    }

    /// `/rerank`: one request per (query, instruction) and chunk of its documents.
    fn rerank_requests(&self, inputs: &[&RerankInput]) -> Vec<(Value, Vec<usize>)> {
        let mut groups: Vec<(&RerankInput, Vec<usize>)> = Vec::new();
        let mut index: HashMap<(&str, Option<&str>), usize> = HashMap::new();
        for (i, input) in inputs.iter().enumerate() {
            let key = (input.query.as_str(), input.instruction.as_deref());
            let g = *index.entry(key).or_insert_with(|| {
                groups.push((input, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(i);
        }
        let mut requests = Vec::new();
        for (first, members) in groups {
            let instruction = first.instruction.as_deref().filter(|i| !i.is_empty());
            let (query, documents): (String, Vec<String>) = if self.client_format {
                let query = prompts::rerank_pair_texts(&first.query, "", instruction).0;
                let docs = members
                    .iter()
                    .map(|&i| prompts::rerank_pair_texts("", &inputs[i].document, None).1)
                    .collect();
                (query, docs)
            } else {
                let docs = members
                    .iter()
                    .map(|&i| inputs[i].document.clone())
                    .collect();
                (first.query.clone(), docs)
            };
            for r in size_batches(
                documents.iter().map(|d| d.len() + query.len()),
                BYTE_BUDGET,
                MAX_DOCUMENTS,
            ) {
                let mut body = json!({
                    "query": query,
                    "documents": documents[r.clone()],
                    "top_n": r.len(),
                    "return_documents": false,
                });
                if let (false, Some(instr)) = (self.client_format, instruction) {
                    body["instruction"] = Value::String(instr.to_string());
                }
                requests.push((self.with_model(body), members[r].to_vec()));
            }
        }
        requests
    }
}

/// Scores in request order from either API's answer.
fn parse_scores(api: Api, v: &Value, n: usize) -> std::result::Result<Vec<f32>, Failure> {
    let retry = |m: String| Failure::Retry(m, None);
    let (list, field) = match api {
        Api::Rerank => ("results", "relevance_score"),
        Api::Score => ("data", "score"),
    };
    let items = v
        .get(list)
        .and_then(Value::as_array)
        .ok_or_else(|| retry(format!("response has no {list} array")))?;
    let mut out: Vec<Option<f32>> = vec![None; n];
    for (pos, item) in items.iter().enumerate() {
        let index = item
            .get("index")
            .and_then(Value::as_u64)
            .map(|i| i as usize)
            .ok_or_else(|| retry(format!("{list}[{pos}] has no index")))?;
        let score = item
            .get(field)
            .and_then(Value::as_f64)
            .ok_or_else(|| retry(format!("{list}[{pos}] has no numeric {field}")))?;
        match out.get_mut(index) {
            Some(slot) => *slot = Some(score as f32),
            None => return Err(retry(format!("{list}[{pos}]: index {index} out of range"))),
        }
    }
    out.into_iter()
        .enumerate()
        .map(|(i, s)| s.ok_or_else(|| retry(format!("no score for item {i}"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(urls: &[&str], format: RerankFormat) -> RemoteConfig {
        RemoteConfig {
            rerank_endpoints: urls.iter().map(|u| u.to_string()).collect(),
            rerank_format: format,
            health_interval_s: 0.0,
            ..Default::default()
        }
    }

    fn input(q: &str, d: &str, i: Option<&str>) -> RerankInput {
        RerankInput {
            query: q.into(),
            document: d.into(),
            instruction: i.map(String::from),
        }
    }

    #[test]
    fn urls_choose_the_api_and_format() {
        let r = RemoteReranker::new(&config(&["http://h/v1"], RerankFormat::Auto)).unwrap();
        assert_eq!((r.api, r.client_format), (Api::Rerank, false));
        assert_eq!(
            r.pool.urls().collect::<Vec<_>>(),
            vec!["http://h/v1/rerank"]
        );
        let r = RemoteReranker::new(&config(&["http://h/score/"], RerankFormat::Auto)).unwrap();
        assert_eq!((r.api, r.client_format), (Api::Score, true));
        let err = RemoteReranker::new(&config(
            &["http://a/v1", "http://b/score"],
            RerankFormat::Auto,
        ))
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("same API"), "{err}");
        assert!(RemoteReranker::new(&config(&["http://h/score"], RerankFormat::Server)).is_err());
        assert!("nope".parse::<RerankFormat>().is_err());
    }

    #[test]
    fn rerank_requests_group_by_query_and_keep_slots() {
        let inputs = [
            input("q1", "a", None),
            input("q2", "b", Some("find")),
            input("q1", "c", None),
        ];
        let inputs: Vec<&RerankInput> = inputs.iter().collect();
        let server = RemoteReranker::new(&config(&["http://h/v1"], RerankFormat::Server)).unwrap();
        let reqs = server.rerank_requests(&inputs);
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].1, vec![0, 2]);
        assert_eq!(reqs[0].0["documents"], json!(["a", "c"]));
        assert_eq!(reqs[0].0["top_n"], 2);
        assert!(reqs[0].0.get("instruction").is_none());
        assert_eq!(reqs[1].0["instruction"], "find");

        // Client format: the two texts join into the exact local prompt.
        let client = RemoteReranker::new(&config(&["http://h/v1"], RerankFormat::Client)).unwrap();
        let reqs = client.rerank_requests(&inputs);
        let joined = format!(
            "{}{}",
            reqs[1].0["query"].as_str().unwrap(),
            reqs[1].0["documents"][0].as_str().unwrap()
        );
        assert_eq!(
            joined,
            format!(
                "{}{}{}",
                prompts::RERANK_PREFIX,
                prompts::rerank_body("q2", "b", Some("find")),
                prompts::RERANK_SUFFIX
            )
        );
        assert!(reqs[1].0.get("instruction").is_none());
    }

    #[test]
    fn scores_parse_by_index() {
        let v = json!({"results": [{"index": 1, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.1}]});
        assert_eq!(parse_scores(Api::Rerank, &v, 2).unwrap(), vec![0.1, 0.9]);
        let v = json!({"data": [{"index": 0, "score": 0.5}]});
        assert_eq!(parse_scores(Api::Score, &v, 1).unwrap(), vec![0.5]);
        assert!(parse_scores(Api::Score, &v, 2).is_err());
        assert!(parse_scores(
            Api::Rerank,
            &json!({"results": [{"index": 5, "relevance_score": 1}]}),
            1
        )
        .is_err());
    }
}
