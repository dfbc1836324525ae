//! `semflow synth` settings: a TOML file (`pipelines/synth.toml` is the annotated example)
//! with every key optional; command-line flags override the file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Everything a synthesis run needs besides its input and output.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthConfig {
    pub generator: GeneratorConfig,
    pub recipe: RecipeConfig,
    pub filter: FilterConfig,
    pub negatives: NegativesConfig,
    pub docs: DocsConfig,
    pub run: RunConfig,
    /// Engine settings (models, backend…), as in `semflow --config` files.
    pub engine: crate::config::Settings,
}

impl SynthConfig {
    pub fn from_path(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let text = crate::text::substitute_env(&text)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
        let mut cfg: SynthConfig = toml::from_str(&text)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
        // Relative template directories are relative to the config file, not the cwd.
        if let (Some(dir), Some(parent)) = (&cfg.recipe.templates, path.parent()) {
            if dir.is_relative() {
                cfg.recipe.templates = Some(parent.join(dir));
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges so a bad value is reported before any request is sent.
    pub fn validate(&self) -> Result<()> {
        let bad = |k: &str, why: &str| Err(Error::InvalidArgument(format!("synth {k}: {why}")));
        let g = &self.generator;
        if g.base_url.trim().is_empty() {
            return bad("generator.base_url", "is empty");
        }
        if g.timeout_s.is_nan() || g.timeout_s <= 0.0 {
            return bad("generator.timeout_s", "must be > 0");
        }
        if g.max_concurrency == 0 {
            return bad("generator.max_concurrency", "must be at least 1");
        }
        if g.max_attempts == 0 {
            return bad("generator.max_attempts", "must be at least 1");
        }
        if !["auto", "json_schema", "off"].contains(&g.structured_output.as_str()) {
            return bad(
                "generator.structured_output",
                "must be 'auto', 'json_schema' or 'off'",
            );
        }
        if !["llm", "sample"].contains(&self.recipe.choose.as_str()) {
            return bad("recipe.choose", "must be 'llm' or 'sample'");
        }
        for (k, list) in [
            ("recipe.personas", &self.recipe.personas),
            ("recipe.query_types", &self.recipe.query_types),
            ("recipe.difficulties", &self.recipe.difficulties),
            ("recipe.lengths", &self.recipe.lengths),
            ("recipe.languages", &self.recipe.languages),
        ] {
            if list.is_empty() || list.iter().any(|s| s.trim().is_empty()) {
                return bad(k, "needs at least one non-empty value");
            }
        }
        if self.recipe.persona_candidates == 0 {
            return bad("recipe.persona_candidates", "must be at least 1");
        }
        if !self.filter.threshold.is_finite() || self.filter.threshold.abs() > 1.0 {
            return bad("filter.threshold", "must be a cosine between -1 and 1");
        }
        if !["drop", "keep"].contains(&self.negatives.incomplete.as_str()) {
            return bad("negatives.incomplete", "must be 'drop' or 'keep'");
        }
        if self.run.chunk_docs == 0 {
            return bad("run.chunk_docs", "must be at least 1");
        }
        Ok(())
    }
}

/// The OpenAI-compatible chat endpoint that writes queries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeneratorConfig {
    /// Base URL up to `/v1` (`/chat/completions` is appended).
    pub base_url: String,
    pub model: String,
    /// Environment variable holding the API key (the key itself never appears in files or logs).
    pub api_key_env: String,
    /// Seconds for one request, connection to last byte.
    pub timeout_s: f64,
    /// Requests in flight at once.
    pub max_concurrency: usize,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    /// Tries per request for retryable failures (429, 5xx, timeouts, connection errors).
    pub max_attempts: u32,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// `auto`: ask for `response_format` JSON schema and fall back to plain text when the
    /// endpoint rejects it; `json_schema`: always ask; `off`: never ask.
    pub structured_output: String,
    pub temperature: f32,
    pub max_tokens: u32,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8000/v1".into(),
            model: "Qwen/Qwen3-32B".into(),
            api_key_env: "SEMFLOW_GENERATOR_API_KEY".into(),
            timeout_s: 60.0,
            max_concurrency: 8,
            requests_per_minute: None,
            tokens_per_minute: None,
            max_attempts: 5,
            backoff_initial_ms: 500,
            backoff_max_ms: 30_000,
            structured_output: "auto".into(),
            temperature: 0.7,
            max_tokens: 512,
        }
    }
}

/// The two-stage recipe: configuration (persona, query type, difficulty, length, language),
/// then the query.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecipeConfig {
    /// Directory with `configure.txt` and `query.txt`; the built-in copies of
    /// `pipelines/synth/` when unset.
    pub templates: Option<PathBuf>,
    /// `llm`: the generator picks persona, query type and difficulty from the candidates
    /// (the paper's configuration stage); `sample`: semflow draws all of them with the seed.
    /// Length and language are always drawn by semflow. A list with one value fixes it.
    pub choose: String,
    pub personas: Vec<String>,
    /// Personas offered to the generator per document (drawn from `personas`).
    pub persona_candidates: usize,
    pub query_types: Vec<String>,
    pub difficulties: Vec<String>,
    pub lengths: Vec<String>,
    pub languages: Vec<String>,
    /// Draws depend only on (seed, document id), so a rerun or a resumed run repeats them.
    pub seed: u64,
    /// Documents are cut to this many characters inside prompts.
    pub max_document_chars: usize,
    /// Longest accepted query in characters.
    pub max_query_chars: usize,
    /// The instruction queries are embedded with (and that training rows carry).
    pub instruction: String,
}

impl Default for RecipeConfig {
    fn default() -> Self {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect();
        Self {
            templates: None,
            choose: "llm".into(),
            personas: v(&[
                "a student preparing for an exam",
                "a software engineer debugging a production issue",
                "a researcher surveying the literature",
                "a journalist checking a fact",
                "a curious member of the public",
                "a product manager comparing options",
                "a teacher preparing a lesson",
                "a domain expert looking for a detail",
            ]),
            persona_candidates: 5,
            query_types: v(&["keywords", "factual", "summary", "yes/no", "background"]),
            difficulties: v(&["high school", "university", "PhD"]),
            lengths: v(&[
                "short (under 8 words)",
                "medium (8 to 20 words)",
                "long (20 to 40 words)",
            ]),
            languages: v(&["English"]),
            seed: 0,
            max_document_chars: 4000,
            max_query_chars: 500,
            instruction:
                "Given a web search query, retrieve relevant passages that answer the query".into(),
        }
    }
}

/// The cosine filter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// Keep a pair when cos(embed(query, instruction), embed(document)) is strictly above this.
    pub threshold: f64,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self { threshold: 0.7 }
    }
}

/// Hard-negative mining over the input corpus.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NegativesConfig {
    /// Negatives per pair (`negative_1..negative_n` columns); 0 turns mining off.
    pub count: usize,
    /// Skip this many most-similar documents (after the positive) before taking negatives.
    pub skip_top: usize,
    /// A negative must score at most `positive score - absolute_margin`.
    pub absolute_margin: Option<f64>,
    /// A negative must score at most `positive score * (1 - relative_margin)`.
    pub relative_margin: Option<f64>,
    /// Drop a candidate as a likely false negative when `rerank(query, candidate)` is above this.
    pub rerank_threshold: Option<f64>,
    /// Candidates examined per pair before giving up on filling `count`.
    pub max_candidates: usize,
    /// A kept pair with fewer than `count` negatives: `drop` it (counted) or `keep` it with NULLs.
    pub incomplete: String,
}

impl Default for NegativesConfig {
    fn default() -> Self {
        Self {
            count: 3,
            skip_top: 0,
            absolute_margin: None,
            relative_margin: None,
            rerank_threshold: None,
            max_candidates: 50,
            incomplete: "drop".into(),
        }
    }
}

/// Which input columns hold the document id and text.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DocsConfig {
    pub id_column: String,
    pub text_column: String,
}

impl Default for DocsConfig {
    fn default() -> Self {
        Self {
            id_column: "id".into(),
            text_column: "text".into(),
        }
    }
}

/// Run shape.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Documents per durable step: a crash redoes at most one chunk.
    pub chunk_docs: usize,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self { chunk_docs: 32 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_unknown_keys_are_refused() {
        SynthConfig::default().validate().unwrap();
        let err = toml::from_str::<SynthConfig>("[filter]\nthreshhold = 0.5\n").unwrap_err();
        assert!(err.to_string().contains("threshhold"), "{err}");
        let cfg: SynthConfig = toml::from_str("[filter]\nthreshold = 2.0\n").unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("filter.threshold"), "{err}");
    }

    #[test]
    fn shipped_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/synth.toml");
        let cfg = SynthConfig::from_path(&path).unwrap();
        assert_eq!(cfg.filter.threshold, 0.7);
        assert!(cfg.recipe.templates.unwrap().join("query.txt").exists());
    }
}
