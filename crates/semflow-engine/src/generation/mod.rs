//! LLM query generation, shared by `generate_query()` in SQL and `semflow synth`: the client
//! for OpenAI-compatible chat endpoints (retries, rate limits), the recipe templates, reply
//! parsing, and the synthesis configuration file they are read from.

pub mod client;
pub mod config;
pub mod generate;
pub mod limiter;
pub mod parse;
pub mod recipe;
