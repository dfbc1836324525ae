//! Model directories: Qwen3 configs and presets, random-weight models, resolution (local,
//! hub, random) and fingerprints.

pub mod config;
pub mod dir;
pub mod hub;
pub mod merge;
pub mod random;
