//! The Qwen3-Embedding synthesis recipe: a configuration stage (persona, query type,
//! difficulty — chosen by the generator from candidates, or drawn by semflow), then a query
//! stage. Prompts are editable template files with `{{name}}` placeholders; draws depend only
//! on (seed, document id), so reruns and resumed runs repeat them.

use std::path::Path;

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::config::RecipeConfig;
use super::parse::{extract_object, string_field, Malformed};
use crate::error::{Error, Result};

const BUILTIN_CONFIGURE: &str = include_str!("../../../../pipelines/synth/configure.txt");
const BUILTIN_QUERY: &str = include_str!("../../../../pipelines/synth/query.txt");

/// What the query should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryConfig {
    pub persona: String,
    pub query_type: String,
    pub difficulty: String,
    pub length: String,
    pub language: String,
}

/// One document's draws: the persona candidates offered to the generator and a full
/// configuration (used as is when semflow chooses).
#[derive(Debug, Clone)]
pub struct Draw {
    pub personas: Vec<String>,
    pub config: QueryConfig,
}

/// A prompt template with `{{name}}` placeholders.
#[derive(Debug, Clone)]
struct Template {
    text: String,
}

impl Template {
    fn new(name: &str, text: String, allowed: &[&str]) -> Result<Self> {
        let mut rest = text.as_str();
        while let Some(i) = rest.find("{{") {
            let after = &rest[i + 2..];
            let Some(j) = after.find("}}") else {
                return Err(Error::InvalidArgument(format!(
                    "synth template {name}: unclosed '{{{{'"
                )));
            };
            let key = after[..j].trim();
            if !allowed.contains(&key) {
                return Err(Error::InvalidArgument(format!(
                    "synth template {name}: unknown placeholder {{{{{key}}}}} (known: {})",
                    allowed.join(", ")
                )));
            }
            rest = &after[j + 2..];
        }
        Ok(Self { text })
    }

    fn render(&self, values: &[(&str, &str)]) -> String {
        let mut out = String::with_capacity(self.text.len() + 256);
        let mut rest = self.text.as_str();
        while let Some(i) = rest.find("{{") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            // Checked at load: every "{{" has a "}}" and a known key.
            let j = after.find("}}").unwrap_or(after.len());
            let key = after[..j].trim();
            if let Some((_, v)) = values.iter().find(|(k, _)| *k == key) {
                out.push_str(v);
            }
            rest = after.get(j + 2..).unwrap_or("");
        }
        out.push_str(rest);
        out
    }
}

/// Templates plus the lists draws come from.
#[derive(Debug, Clone)]
pub struct Recipe {
    configure: Template,
    query: Template,
    pub cfg: RecipeConfig,
}

impl Recipe {
    pub fn new(cfg: &RecipeConfig) -> Result<Self> {
        let read = |dir: &Path, file: &str| {
            let p = dir.join(file);
            std::fs::read_to_string(&p).map_err(|e| Error::io(p, e))
        };
        let (configure, query) = match &cfg.templates {
            Some(dir) => (read(dir, "configure.txt")?, read(dir, "query.txt")?),
            None => (BUILTIN_CONFIGURE.to_string(), BUILTIN_QUERY.to_string()),
        };
        Ok(Self {
            configure: Template::new(
                "configure.txt",
                configure,
                &["document", "personas", "query_types", "difficulties"],
            )?,
            query: Template::new(
                "query.txt",
                query,
                &[
                    "document",
                    "persona",
                    "query_type",
                    "difficulty",
                    "length",
                    "language",
                ],
            )?,
            cfg: cfg.clone(),
        })
    }

    /// Whether the generator runs the configuration stage.
    pub fn llm_chooses(&self) -> bool {
        self.cfg.choose == "llm"
    }

    /// The draws for a document, a function of (seed, document id) only.
    pub fn draw(&self, doc_id: &str) -> Draw {
        let digest = Sha256::new()
            .chain_update(self.cfg.seed.to_le_bytes())
            .chain_update(doc_id.as_bytes())
            .finalize();
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&digest);
        let mut rng = ChaCha8Rng::from_seed(seed);
        let c = &self.cfg;
        let n = c.persona_candidates.min(c.personas.len());
        let personas: Vec<String> = sample(&mut rng, c.personas.len(), n)
            .into_iter()
            .map(|i| c.personas[i].clone())
            .collect();
        let mut pick = |xs: &[String]| xs[rng.random_range(0..xs.len())].clone();
        let config = QueryConfig {
            persona: personas[0].clone(),
            query_type: pick(&c.query_types),
            difficulty: pick(&c.difficulties),
            length: pick(&c.lengths),
            language: pick(&c.languages),
        };
        Draw { personas, config }
    }

    fn document<'a>(&self, text: &'a str) -> &'a str {
        match text.char_indices().nth(self.cfg.max_document_chars) {
            Some((i, _)) => &text[..i],
            None => text,
        }
    }

    pub fn configure_prompt(&self, document: &str, draw: &Draw) -> String {
        let personas: Vec<String> = draw.personas.iter().map(|p| format!("  - {p}")).collect();
        self.configure.render(&[
            ("document", self.document(document)),
            ("personas", &personas.join("\n")),
            ("query_types", &self.cfg.query_types.join(", ")),
            ("difficulties", &self.cfg.difficulties.join(", ")),
        ])
    }

    pub fn query_prompt(&self, document: &str, c: &QueryConfig) -> String {
        self.query.render(&[
            ("document", self.document(document)),
            ("persona", &c.persona),
            ("query_type", &c.query_type),
            ("difficulty", &c.difficulty),
            ("length", &c.length),
            ("language", &c.language),
        ])
    }

    /// JSON schema of the configuration reply (choices as enums, so constrained decoding
    /// can only produce offered values).
    pub fn configure_schema(&self, draw: &Draw) -> Value {
        json!({
            "type": "object",
            "properties": {
                "persona": {"type": "string", "enum": draw.personas},
                "query_type": {"type": "string", "enum": self.cfg.query_types},
                "difficulty": {"type": "string", "enum": self.cfg.difficulties},
            },
            "required": ["persona", "query_type", "difficulty"],
            "additionalProperties": false,
        })
    }

    pub fn query_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {"query": {"type": "string", "minLength": 1, "maxLength": self.cfg.max_query_chars}},
            "required": ["query"],
            "additionalProperties": false,
        })
    }

    /// The configuration in a reply, each value matched (case-insensitively) to an offered one.
    pub fn configuration_from_reply(
        &self,
        text: &str,
        draw: &Draw,
    ) -> std::result::Result<QueryConfig, Malformed> {
        let obj = extract_object(text).ok_or(Malformed::InvalidJson)?;
        let choose = |field: &str, options: &[String]| -> std::result::Result<String, Malformed> {
            let v = string_field(&obj, field)?;
            options
                .iter()
                .find(|o| o.trim().eq_ignore_ascii_case(v.trim()))
                .cloned()
                .ok_or(Malformed::InvalidValue)
        };
        Ok(QueryConfig {
            persona: choose("persona", &draw.personas)?,
            query_type: choose("query_type", &self.cfg.query_types)?,
            difficulty: choose("difficulty", &self.cfg.difficulties)?,
            length: draw.config.length.clone(),
            language: draw.config.language.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_reproducible_per_document() {
        let r = Recipe::new(&RecipeConfig::default()).unwrap();
        let a = r.draw("doc-1");
        assert_eq!(a.config, r.draw("doc-1").config);
        assert_eq!(a.personas.len(), 5);
        let differs = (0..20).any(|i| r.draw(&format!("doc-{i}")).config != a.config);
        assert!(differs);
        let cfg = RecipeConfig {
            seed: 7,
            ..Default::default()
        };
        let other = Recipe::new(&cfg).unwrap();
        let differs = (0..20)
            .any(|i| other.draw(&format!("doc-{i}")).config != r.draw(&format!("doc-{i}")).config);
        assert!(differs, "the seed changes the draws");
    }

    #[test]
    fn one_value_lists_fix_the_configuration() {
        let cfg = RecipeConfig {
            languages: vec!["German".into()],
            query_types: vec!["keywords".into()],
            ..Default::default()
        };
        let r = Recipe::new(&cfg).unwrap();
        for i in 0..10 {
            let d = r.draw(&i.to_string());
            assert_eq!(d.config.language, "German");
            assert_eq!(d.config.query_type, "keywords");
        }
    }

    #[test]
    fn prompts_fill_every_placeholder() {
        let r = Recipe::new(&RecipeConfig::default()).unwrap();
        let d = r.draw("x");
        let p = r.query_prompt("THE DOC", &d.config);
        assert!(p.contains("THE DOC") && p.contains(&d.config.persona) && !p.contains("{{"));
        let p = r.configure_prompt("THE DOC", &d);
        assert!(p.contains(&d.personas[4]) && !p.contains("{{"), "{p}");
    }

    #[test]
    fn bad_templates_and_replies_are_named() {
        let err = Template::new("query.txt", "{{documnet}}".into(), &["document"]).unwrap_err();
        assert!(err.to_string().contains("documnet"), "{err}");
        let r = Recipe::new(&RecipeConfig::default()).unwrap();
        let d = r.draw("x");
        let ok = format!(
            r#"{{"persona": "{}", "query_type": "FACTUAL", "difficulty": "phd"}}"#,
            d.personas[1]
        );
        let c = r.configuration_from_reply(&ok, &d).unwrap();
        assert_eq!(
            (c.query_type.as_str(), c.difficulty.as_str()),
            ("factual", "PhD")
        );
        let bad = r#"{"persona": "a pirate", "query_type": "factual", "difficulty": "PhD"}"#;
        assert_eq!(
            r.configuration_from_reply(bad, &d),
            Err(Malformed::InvalidValue)
        );
    }
}
