//! One document → one query: the configuration stage (when the generator chooses) and the
//! query stage, each a chat request whose reply is checked; a malformed reply is counted by
//! kind and asked again once.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::Value;

use super::client::{ChatClient, RequestError};
use super::parse::{query_from_reply, Malformed};
use super::recipe::{QueryConfig, Recipe};
use crate::error::Result;

/// A generated query and the configuration it was written for.
#[derive(Debug, Clone)]
pub struct Generated {
    pub query: String,
    pub config: QueryConfig,
}

/// Why a document produced no query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Two malformed replies in a row; the kind of the last one.
    Malformed(Malformed),
    /// The request failed after its retries.
    Request(RequestError),
}

impl Failure {
    pub fn label(&self) -> String {
        match self {
            Failure::Malformed(m) => m.label().to_string(),
            Failure::Request(e) => e.label(),
        }
    }
}

/// The generator: a chat client plus the recipe, with counters of malformed replies.
#[derive(Debug)]
pub struct Generator {
    pub client: ChatClient,
    pub recipe: Recipe,
    malformed: Mutex<BTreeMap<&'static str, u64>>,
}

impl Generator {
    pub fn new(client: ChatClient, recipe: Recipe) -> Self {
        Self {
            client,
            recipe,
            malformed: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn from_config(cfg: &super::config::SynthConfig) -> Result<Self> {
        Ok(Self::new(
            ChatClient::new(&cfg.generator)?,
            Recipe::new(&cfg.recipe)?,
        ))
    }

    /// Malformed replies so far, by kind (including ones a second ask fixed).
    pub fn malformed_counts(&self) -> BTreeMap<&'static str, u64> {
        self.malformed.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// A query for the document with this id and text.
    pub async fn generate(
        &self,
        doc_id: &str,
        text: &str,
    ) -> std::result::Result<Generated, Failure> {
        let draw = self.recipe.draw(doc_id);
        let config = if self.recipe.llm_chooses() {
            let prompt = self.recipe.configure_prompt(text, &draw);
            let schema = self.recipe.configure_schema(&draw);
            self.ask(&prompt, "configuration", &schema, |t| {
                self.recipe.configuration_from_reply(t, &draw)
            })
            .await?
        } else {
            draw.config.clone()
        };
        self.generate_with(text, config).await
    }

    /// The query stage alone, for a configuration fixed by the caller.
    pub async fn generate_with(
        &self,
        text: &str,
        config: QueryConfig,
    ) -> std::result::Result<Generated, Failure> {
        let prompt = self.recipe.query_prompt(text, &config);
        let schema = self.recipe.query_schema();
        let max = self.recipe.cfg.max_query_chars;
        let query = self
            .ask(&prompt, "query", &schema, |t| {
                query_from_reply(t, text, max)
            })
            .await?;
        Ok(Generated { query, config })
    }

    async fn ask<T>(
        &self,
        prompt: &str,
        name: &str,
        schema: &Value,
        parse: impl Fn(&str) -> std::result::Result<T, Malformed>,
    ) -> std::result::Result<T, Failure> {
        let mut last = Malformed::InvalidJson;
        for _ in 0..2 {
            let text = self
                .client
                .complete(prompt, Some((name, schema)))
                .await
                .map_err(Failure::Request)?;
            match parse(&text) {
                Ok(v) => return Ok(v),
                Err(kind) => {
                    if let Ok(mut m) = self.malformed.lock() {
                        *m.entry(kind.label()).or_default() += 1;
                    }
                    last = kind;
                }
            }
        }
        Err(Failure::Malformed(last))
    }
}
