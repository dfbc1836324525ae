//! The `semflow.*` session settings the SQL functions read (`SET semflow.<name> = <value>`).

use datafusion::common::config::ConfigExtension;
use datafusion::common::extensions_options;

extensions_options! {
    /// `semflow.*` session settings; change them with `SET semflow.<name> = <value>`.
    pub struct SemflowOptions {
        /// Inputs longer than the model's maximum length: 'end' truncates them (keeping the
        /// trailing <|endoftext|> or the reranker prompt's suffix), 'error' fails the query.
        pub truncate: String, default = "end".to_string()
        /// Serve repeated inputs from the inference content cache.
        pub cache: bool, default = true
        /// generate_query(): synthesis settings file (pipelines/synth.toml); '' for defaults.
        pub synth_config: String, default = std::env::var("SEMFLOW_SYNTH_CONFIG").unwrap_or_default()
        /// generate_query(): OpenAI-compatible base URL (overrides the settings file).
        pub generator_url: String, default = std::env::var("SEMFLOW_GENERATOR_URL").unwrap_or_default()
        /// generate_query(): model name (overrides the settings file).
        pub generator_model: String, default = std::env::var("SEMFLOW_GENERATOR_MODEL").unwrap_or_default()
        /// semflow run: compact the index and bring its indexes up to date after this many
        /// commits (0: never), carrying the stream positions forward.
        pub maintenance_commits: u64, default = 100
        /// semflow run: …or once this many seconds have passed since the last round and
        /// something was committed (0: not by time).
        pub maintenance_seconds: u64, default = 0
        /// semflow run: …or once this many rows were written since the last round (0: not
        /// by rows).
        pub maintenance_rows: u64, default = 0
        /// semflow run / semflow optimize: a round rewrites a fragment without its deleted
        /// rows once this fraction of its rows is deleted (0: any; above 1: never). Searches
        /// through an index mask the deleted rows of every fragment it covers.
        pub maintenance_deleted_fraction: f64, default = 0.1
        /// semflow run / semflow optimize: segments an index keeps after a round (at least
        /// 1); a search visits each one. Beyond it a round merges its newest segments with
        /// the new rows instead of appending a segment.
        pub maintenance_index_segments: u64, default = 2
        /// Vector search through an index: how many IVF partitions to probe, from 0 (as few
        /// as find k rows) to 1 (all), Lance's adaptive probing (0.5 is its default).
        pub search_effort: f64, default = SearchEffort::DEFAULT.effort
        /// Vector search through a quantized index: re-rank this many times k candidates
        /// by their exact vectors (1: no re-ranking beyond k).
        pub search_refine: u32, default = SearchEffort::DEFAULT.refine
    }
}

impl ConfigExtension for SemflowOptions {
    const PREFIX: &'static str = "semflow";
}

/// How hard a vector search through an index works: the `semflow.search_*` settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SearchEffort {
    /// Lance's IVF search effort in [0, 1] (the share of partitions its probing starts with).
    pub effort: f64,
    /// Candidates re-ranked by their exact vectors, as a multiple of k.
    pub refine: u32,
}

impl SearchEffort {
    /// Lance's own effort; re-ranking 16k candidates, which in R1 (BENCHMARKS.md §8) lifted
    /// recall@10 from 0.80 to 1.00 on a maintained IVF_PQ index at the same latency.
    pub const DEFAULT: Self = Self {
        effort: 0.5,
        refine: 16,
    };

    /// The session's settings, checked.
    pub fn from_options(
        options: &crate::udf::options::SemflowOptions,
    ) -> crate::error::Result<Self> {
        Self {
            effort: options.search_effort,
            refine: options.search_refine,
        }
        .checked()
    }

    /// Refuses values Lance would reject or misread, naming the setting.
    pub fn checked(self) -> crate::error::Result<Self> {
        if !(0.0..=1.0).contains(&self.effort) {
            return Err(crate::error::Error::InvalidArgument(format!(
                "semflow.search_effort must be between 0 and 1, not {}",
                self.effort
            )));
        }
        if self.refine == 0 {
            return Err(crate::error::Error::InvalidArgument(
                "semflow.search_refine must be at least 1".into(),
            ));
        }
        Ok(self)
    }
}
