//! Several models in one engine: the default [`Inference`] (`--embed-model`,
//! `--rerank-model`) plus named ones (`--model NAME=SPEC`, repeatable), each with its own
//! loaded weights and content caches, so vectors of different models never mix in a cache.
//!
//! A named model is one spec used for whichever role a call asks of it: `embed(…, 'NAME')`
//! loads it as an embedding model, `rerank(…, 'NAME')` as a reranker.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::cache::ContentStore;
use super::{Inference, InferenceConfig};
use crate::error::{Error, Result};

/// `--model NAME=SPEC`: a model SQL and the HTTP API can ask for by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedModel {
    pub name: String,
    /// Hugging Face id, local directory, or `random:PRESET[:SEED]`.
    pub spec: String,
}

impl std::str::FromStr for NamedModel {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::InvalidArgument(format!("--model {s}: {why}"));
        let (name, spec) = s.split_once('=').ok_or_else(|| {
            bad("expected NAME=MODEL (a Hugging Face id, directory or random:PRESET)")
        })?;
        let (name, spec) = (name.trim(), spec.trim());
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(bad(
                "the name may only use letters, digits, '_', '-' and '.'",
            ));
        }
        if spec.is_empty() {
            return Err(bad("no model after '='"));
        }
        Ok(Self {
            name: name.into(),
            spec: spec.into(),
        })
    }
}

/// Parses `--model` values, refusing a name given twice.
pub fn parse_all(values: &[String]) -> Result<Vec<NamedModel>> {
    let mut models: Vec<NamedModel> = Vec::new();
    for value in values.iter().filter(|v| !v.trim().is_empty()) {
        let model: NamedModel = value.parse()?;
        if models.iter().any(|m| m.name == model.name) {
            return Err(Error::InvalidArgument(format!(
                "--model {}: the name is given twice",
                model.name
            )));
        }
        models.push(model);
    }
    Ok(models)
}

/// The engine's inference services: the default and the named ones.
#[derive(Debug)]
pub struct Models {
    default: Arc<Inference>,
    named: BTreeMap<String, Arc<Inference>>,
}

impl Models {
    /// The default model from `config`, and one service per entry of `config.models` with the
    /// same device, dtype and batch settings, all filing results in one content cache (one byte
    /// budget); remote endpoints serve the default only.
    /// Of two entries with the same name the last counts ([`parse_all`] refuses them).
    pub fn new(config: InferenceConfig) -> Arc<Self> {
        // One content cache for all of them: one byte budget for the engine.
        let store = ContentStore::new(config.cache_size);
        let mut named = BTreeMap::new();
        for model in &config.models {
            let own = InferenceConfig {
                embed_model: model.spec.clone(),
                rerank_model: model.spec.clone(),
                remote: Default::default(),
                models: Vec::new(),
                ..config.clone()
            };
            named.insert(model.name.clone(), Inference::sharing(own, store.clone()));
        }
        let default = Inference::sharing(
            InferenceConfig {
                models: Vec::new(),
                ..config
            },
            store,
        );
        Arc::new(Self { default, named })
    }

    /// The default model's service (`--embed-model`, `--rerank-model`).
    pub fn default_model(&self) -> &Arc<Inference> {
        &self.default
    }

    /// The service called `name`; `None` (or an empty name) is the default.
    pub fn get(&self, name: Option<&str>) -> Result<&Arc<Inference>> {
        match name.filter(|n| !n.is_empty()) {
            None => Ok(&self.default),
            Some(n) => self.named.get(n).ok_or_else(|| {
                let known: Vec<&str> = self.named.keys().map(String::as_str).collect();
                Error::InvalidArgument(if known.is_empty() {
                    format!("no model named '{n}': this engine has none (add --model {n}=MODEL)")
                } else {
                    format!(
                        "no model named '{n}' (known: {}; add --model {n}=MODEL)",
                        known.join(", ")
                    )
                })
            }),
        }
    }

    /// The service called `name` when there is one (the HTTP API's `model` field, which
    /// OpenAI clients fill with names of their own), otherwise the default.
    pub fn by_request(&self, name: Option<&str>) -> &Arc<Inference> {
        name.and_then(|n| self.named.get(n))
            .unwrap_or(&self.default)
    }

    /// The names given with `--model`, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.named.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(models: &[&str]) -> InferenceConfig {
        InferenceConfig {
            embed_model: "random:tiny".into(),
            models: models.iter().map(|m| m.parse().unwrap()).collect(),
            ..InferenceConfig::default()
        }
    }

    #[test]
    fn parses_name_equals_spec() {
        let m: NamedModel = " v2 = random:tiny:7 ".parse().unwrap();
        assert_eq!((m.name.as_str(), m.spec.as_str()), ("v2", "random:tiny:7"));
        for bad in ["v2", "=random:tiny", "v2=", "a b=random:tiny", "v2;x=y"] {
            let e = bad.parse::<NamedModel>().unwrap_err().to_string();
            assert!(e.contains("--model"), "{bad}: {e}");
        }
    }

    #[test]
    fn named_models_are_their_own_services() {
        let models = Models::new(config(&["a=random:tiny:1", "b=random:small:2"]));
        let a = models.get(Some("a")).unwrap();
        assert_eq!(a.config().embed_model, "random:tiny:1");
        assert_eq!(a.config().rerank_model, "random:tiny:1");
        assert!(!Arc::ptr_eq(a, models.get(Some("b")).unwrap()));
        assert!(Arc::ptr_eq(
            models.get(None).unwrap(),
            models.default_model()
        ));
        assert!(Arc::ptr_eq(
            models.get(Some("")).unwrap(),
            models.default_model()
        ));
        assert_eq!(models.names().collect::<Vec<_>>(), ["a", "b"]);
        let e = models.get(Some("c")).unwrap_err().to_string();
        assert!(e.contains("'c'") && e.contains("known: a, b"), "{e}");
        assert!(Arc::ptr_eq(models.by_request(Some("a")), a));
        assert!(Arc::ptr_eq(
            models.by_request(Some("text-embedding-3-small")),
            models.default_model()
        ));
    }

    #[test]
    fn a_name_given_twice_is_refused() {
        let values = ["a=random:tiny:1".to_string(), "a=random:tiny:2".to_string()];
        let e = parse_all(&values).unwrap_err().to_string();
        assert!(e.contains("--model a") && e.contains("twice"), "{e}");
    }
}
