//! Model directories: where a model's files are (local or fetched from the hub), checks that
//! they are what semflow can run, and the fingerprint that identifies the weights.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::config::QwenConfig;
pub use super::hub::Files;
use crate::error::{Error, Result};

/// What the model is used for; decides which files must exist and which flag names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Embedding,
    Reranker,
}

impl Role {
    pub(crate) fn flag(self) -> &'static str {
        match self {
            Role::Embedding => "--embed-model",
            Role::Reranker => "--rerank-model",
        }
    }
    pub(crate) fn env(self) -> &'static str {
        match self {
            Role::Embedding => "SEMFLOW_EMBED_MODEL",
            Role::Reranker => "SEMFLOW_RERANK_MODEL",
        }
    }
}

/// A model ready to load: a local directory with every file checked.
#[derive(Debug, Clone)]
pub struct ModelDir {
    /// What the user named: a hub id or a path.
    pub id: String,
    pub path: PathBuf,
    pub config: QwenConfig,
    /// Digest of the weights (see [`weights_digest`]).
    pub weights_digest: String,
    /// Named embedding prompts (`embed(text, 'query')`): Qwen3-Embedding's defaults overlaid
    /// with the model's `config_sentence_transformers.json`; empty for rerankers.
    pub prompts: BTreeMap<String, String>,
}

impl ModelDir {
    /// Resolves `spec` (a local directory, a Hugging Face id `org/name[@revision]` fetched into
    /// the hub cache, or `random:PRESET[:SEED]`) and checks it holds a Qwen3 model semflow can
    /// run for `role`.
    pub async fn resolve(spec: &str, role: Role) -> Result<Self> {
        Self::resolve_files(spec, role, Files::All).await
    }

    /// As [`ModelDir::resolve`], fetching only config and tokenizer files when `files` is
    /// [`Files::NoWeights`] (remote inference: the weights live on the endpoints).
    pub async fn resolve_files(spec: &str, role: Role, files: Files) -> Result<Self> {
        let local = Path::new(spec);
        let path = if let Some(rest) = spec.strip_prefix("random:") {
            random_model_dir(rest, role)?
        } else if local.is_dir() {
            local.to_path_buf()
        } else if looks_like_path(spec) {
            return Err(Error::model(
                spec,
                format!(
                    "no such directory (pass a model directory or a Hugging Face id with {})",
                    role.flag()
                ),
            ));
        } else {
            super::hub::fetch(spec, role, files).await?
        };
        Self::open_files(spec, &path, role, files)
    }

    /// Checks a local directory.
    pub fn open(id: &str, path: &Path, role: Role) -> Result<Self> {
        Self::open_files(id, path, role, Files::All)
    }

    /// Checks a local directory; with [`Files::NoWeights`] the weights may be absent.
    pub fn open_files(id: &str, path: &Path, role: Role, files: Files) -> Result<Self> {
        let config = QwenConfig::from_dir(path)?;
        for f in ["tokenizer.json"] {
            if !path.join(f).is_file() {
                return Err(Error::model(
                    id,
                    format!("{f} is missing in {}", path.display()),
                ));
            }
        }
        if role == Role::Embedding {
            check_pooling(id, path, config.hidden_size)?;
        }
        let weights_digest = match files {
            Files::NoWeights if safetensors_files(path).is_err() => config_digest(path)?,
            _ => weights_digest(path)?,
        };
        let prompts = match role {
            Role::Embedding => named_prompts(id, path)?,
            Role::Reranker => BTreeMap::new(),
        };
        Ok(Self {
            id: id.to_string(),
            path: path.to_path_buf(),
            config,
            weights_digest,
            prompts,
        })
    }

    /// The safetensors files of the model, sorted.
    pub fn weight_files(&self) -> Result<Vec<PathBuf>> {
        safetensors_files(&self.path)
    }
}

/// `random:PRESET[:SEED]`: a random-weight model written once into semflow's cache
/// directory (`SEMFLOW_CACHE_DIR`, default `~/.cache/semflow`). Lets the README and tests run
/// the whole engine on a machine that cannot download weights.
fn random_model_dir(rest: &str, role: Role) -> Result<PathBuf> {
    use super::config::Preset;
    use super::random::{write_random_model, ModelKind, RandomModelSpec, WeightDtype};
    use clap::ValueEnum;
    let mut parts = rest.splitn(2, ':');
    let preset_name = parts.next().unwrap_or("tiny");
    let preset = Preset::from_str(preset_name, true).map_err(|_| {
        Error::InvalidArgument(format!(
            "{}: unknown preset in 'random:{rest}' (use tiny, small, 0.6b, 4b or 8b)",
            role.flag()
        ))
    })?;
    let seed: u64 = match parts.next() {
        None => 0,
        Some(s) => s.parse().map_err(|_| {
            Error::InvalidArgument(format!(
                "{}: seed in 'random:{rest}' must be an integer",
                role.flag()
            ))
        })?,
    };
    let kind = match role {
        Role::Embedding => ModelKind::Embedding,
        Role::Reranker => ModelKind::Reranker,
    };
    let dir = semflow_cache_dir()
        .join("random")
        .join(format!("{kind:?}-{preset_name}-{seed}").to_lowercase());
    write_once(&dir, "model.safetensors", |tmp| {
        write_random_model(
            &RandomModelSpec {
                kind,
                preset,
                seed,
                dtype: WeightDtype::Bf16,
            },
            tmp,
        )
        .map(|_| ())
    })?;
    Ok(dir)
}

/// Writes a directory of semflow's cache once: `write` fills a temporary sibling, which is then
/// renamed into place, so a concurrent or interrupted writer never leaves a half-written
/// directory that a later run would trust. `marker` is the file whose presence means done.
fn write_once(dir: &Path, marker: &str, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if dir.join(marker).is_file() {
        return Ok(());
    }
    let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
    write(&tmp)?;
    if let Err(e) = std::fs::rename(&tmp, dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.join(marker).is_file() {
            return Err(Error::io(dir, e));
        }
    }
    Ok(())
}

/// The named prompts every Qwen3-Embedding model answers to, as its published
/// `config_sentence_transformers.json` defines them; a model's own file overrides them.
pub const DEFAULT_NAMED_PROMPTS: [(&str, &str); 2] = [
    (
        "query",
        "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:",
    ),
    ("document", ""),
];

/// The model's named prompts: the published defaults, then its own
/// `config_sentence_transformers.json` (a fine-tune's prompts win).
fn named_prompts(id: &str, dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut prompts: BTreeMap<String, String> = DEFAULT_NAMED_PROMPTS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let path = dir.join("config_sentence_transformers.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(prompts),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.clone(),
        source,
    })?;
    let Some(own) = json.get("prompts").filter(|p| !p.is_null()) else {
        return Ok(prompts);
    };
    let own = own.as_object().ok_or_else(|| {
        Error::model(
            id,
            format!("{}: \"prompts\" must be an object", path.display()),
        )
    })?;
    for (name, prompt) in own {
        let prompt = prompt.as_str().ok_or_else(|| {
            Error::model(
                id,
                format!("{}: prompt {name:?} must be a string", path.display()),
            )
        })?;
        prompts.insert(name.clone(), prompt.to_string());
    }
    Ok(prompts)
}

/// A stand-in embedding model directory for remote text mode, where the endpoints tokenize
/// and hold the weights: Qwen3-Embedding's config with the endpoints' dimension, the Qwen3
/// tokenizer and the published prompts, written once into semflow's cache directory.
pub fn remote_text_model_dir(dims: usize) -> Result<PathBuf> {
    use super::config::Preset;
    use super::random::{write_model_files, ModelKind};
    let dir = semflow_cache_dir()
        .join("remote")
        .join(format!("embedding-text-{dims}"));
    let mut cfg = QwenConfig::preset(Preset::Q0_6b);
    cfg.hidden_size = dims;
    write_once(&dir, "config.json", |tmp| {
        write_model_files(&cfg, ModelKind::Embedding, "bfloat16", tmp)
    })?;
    Ok(dir)
}

/// semflow's own cache directory: `SEMFLOW_CACHE_DIR`, default `~/.cache/semflow`.
fn semflow_cache_dir() -> PathBuf {
    std::env::var_os("SEMFLOW_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("semflow"))
        })
        .unwrap_or_else(|| std::env::temp_dir().join("semflow"))
}

fn looks_like_path(spec: &str) -> bool {
    spec.starts_with('.')
        || spec.starts_with('/')
        || spec.starts_with('~')
        || spec.matches('/').count() != 1
}

/// Embedding directories must pool the last token and normalise, as Qwen3-Embedding does:
/// other sentence-transformers poolings would silently give different vectors.
fn check_pooling(id: &str, dir: &Path, hidden: usize) -> Result<()> {
    let modules_path = dir.join("modules.json");
    let text = std::fs::read_to_string(&modules_path).map_err(|e| {
        Error::model(
            id,
            format!(
                "{}: {e} (embedding models need sentence-transformers modules.json)",
                modules_path.display()
            ),
        )
    })?;
    let modules: Vec<serde_json::Value> =
        serde_json::from_str(&text).map_err(|source| Error::Json {
            path: modules_path.clone(),
            source,
        })?;
    let types: Vec<&str> = modules
        .iter()
        .filter_map(|m| m.get("type").and_then(|t| t.as_str()))
        .collect();
    let has = |suffix: &str| types.iter().any(|t| t.ends_with(suffix));
    if !has("Pooling") || !has("Normalize") || has("Dense") {
        return Err(Error::model(
            id,
            format!("modules.json must be Transformer + Pooling + Normalize (got {types:?})"),
        ));
    }
    let pooling_dir = modules
        .iter()
        .find(|m| {
            m.get("type")
                .and_then(|t| t.as_str())
                .is_some_and(|t| t.ends_with("Pooling"))
        })
        .and_then(|m| m.get("path").and_then(|p| p.as_str()))
        .unwrap_or("1_Pooling");
    let pooling_path = dir.join(pooling_dir).join("config.json");
    let text = std::fs::read_to_string(&pooling_path).map_err(|e| Error::io(&pooling_path, e))?;
    let pooling: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: pooling_path.clone(),
        source,
    })?;
    let flag = |k: &str| pooling.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
    let others = [
        "pooling_mode_cls_token",
        "pooling_mode_mean_tokens",
        "pooling_mode_max_tokens",
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens",
    ];
    if !flag("pooling_mode_lasttoken") || others.iter().any(|k| flag(k)) || !flag("include_prompt")
    {
        return Err(Error::model(
            id,
            format!(
                "{} must select last-token pooling only, with include_prompt",
                pooling_path.display()
            ),
        ));
    }
    let dim = pooling
        .get("word_embedding_dimension")
        .and_then(|v| v.as_u64());
    if dim != Some(hidden as u64) {
        return Err(Error::model(
            id,
            format!(
                "{}: word_embedding_dimension {dim:?} != hidden_size {hidden}",
                pooling_path.display()
            ),
        ));
    }
    Ok(())
}

fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::model(dir.display(), "no *.safetensors weights"));
    }
    Ok(files)
}

/// The fingerprint of a model known only by its files without weights (remote inference):
/// `cfg-` and a digest of `config.json` and `tokenizer.json`, so two revisions still differ.
fn config_digest(dir: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    for f in ["config.json", "tokenizer.json"] {
        let path = dir.join(f);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(format!("cfg-{}", hex::encode(&hasher.finalize()[..16])))
}

/// A digest of the weights that is cheap even for 16 GB checkpoints: each safetensors file's
/// name, size and full header (tensor names, shapes, offsets), plus 64 KiB samples at 64
/// evenly spaced offsets (the whole file when it is under 4 MiB).
pub fn weights_digest(dir: &Path) -> Result<String> {
    const SAMPLES: u64 = 64;
    const CHUNK: u64 = 64 * 1024;
    let mut hasher = Sha256::new();
    for path in safetensors_files(dir)? {
        let mut file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        hasher.update(name.as_bytes());
        hasher.update(len.to_le_bytes());
        let mut buf = Vec::new();
        if len <= SAMPLES * CHUNK {
            file.read_to_end(&mut buf)
                .map_err(|e| Error::io(&path, e))?;
            hasher.update(&buf);
            continue;
        }
        let mut head = [0u8; 8];
        file.read_exact(&mut head)
            .map_err(|e| Error::io(&path, e))?;
        let header_len = u64::from_le_bytes(head).min(len - 8);
        buf.resize(header_len as usize, 0);
        file.read_exact(&mut buf).map_err(|e| Error::io(&path, e))?;
        hasher.update(&buf);
        let mut chunk = vec![0u8; CHUNK as usize];
        for i in 0..SAMPLES {
            let offset = (len - CHUNK) / (SAMPLES - 1) * i;
            file.seek(SeekFrom::Start(offset))
                .map_err(|e| Error::io(&path, e))?;
            file.read_exact(&mut chunk)
                .map_err(|e| Error::io(&path, e))?;
            hasher.update(&chunk);
        }
    }
    Ok(hex::encode(&hasher.finalize()[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Preset;
    use crate::model::random::{write_random_model, ModelKind, RandomModelSpec, WeightDtype};

    #[test]
    fn digest_changes_with_weights_and_paths_are_not_hub_ids() {
        let dir = tempfile::tempdir().unwrap();
        let mk = |seed, sub: &str| {
            let p = dir.path().join(sub);
            write_random_model(
                &RandomModelSpec {
                    kind: ModelKind::Embedding,
                    preset: Preset::Tiny,
                    seed,
                    dtype: WeightDtype::Bf16,
                },
                &p,
            )
            .unwrap();
            ModelDir::open("m", &p, Role::Embedding)
                .unwrap()
                .weights_digest
        };
        assert_eq!(mk(1, "a"), mk(1, "b"));
        assert_ne!(mk(1, "a"), mk(2, "c"));
        assert!(looks_like_path("./models/x"));
        assert!(looks_like_path("a/b/c"));
        assert!(!looks_like_path("Qwen/Qwen3-Embedding-0.6B"));
    }

    #[test]
    fn embedding_dir_must_pool_last_token() {
        let dir = tempfile::tempdir().unwrap();
        write_random_model(
            &RandomModelSpec {
                kind: ModelKind::Embedding,
                preset: Preset::Tiny,
                seed: 1,
                dtype: WeightDtype::Bf16,
            },
            dir.path(),
        )
        .unwrap();
        let cfg = dir.path().join("1_Pooling/config.json");
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "\"pooling_mode_mean_tokens\": false",
            "\"pooling_mode_mean_tokens\": true",
        );
        std::fs::write(&cfg, text).unwrap();
        let err = ModelDir::open("m", dir.path(), Role::Embedding)
            .unwrap_err()
            .to_string();
        assert!(err.contains("last-token"), "{err}");
    }
}
