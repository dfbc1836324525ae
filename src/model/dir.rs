//! Model directories: where a model's files are (local or fetched from the hub), checks that
//! they are what semflow can run, and the fingerprint that identifies the weights.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::config::QwenConfig;
use crate::error::{Error, Result};

/// What the model is used for; decides which files must exist and which flag names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Embedding,
    Reranker,
}

impl Role {
    fn flag(self) -> &'static str {
        match self {
            Role::Embedding => "--embed-model",
            Role::Reranker => "--rerank-model",
        }
    }
    fn env(self) -> &'static str {
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
}

impl ModelDir {
    /// Resolves `spec` (a local directory, or a Hugging Face id downloaded with progress) and
    /// checks it holds a Qwen3 model semflow can run for `role`.
    pub async fn resolve(spec: &str, role: Role) -> Result<Self> {
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
            download(spec, role).await?
        };
        Self::open(spec, &path, role)
    }

    /// Checks a local directory.
    pub fn open(id: &str, path: &Path, role: Role) -> Result<Self> {
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
        let weights_digest = weights_digest(path)?;
        Ok(Self {
            id: id.to_string(),
            path: path.to_path_buf(),
            config,
            weights_digest,
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
    let base = std::env::var_os("SEMFLOW_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("semflow"))
        })
        .unwrap_or_else(|| std::env::temp_dir().join("semflow"));
    let dir = base
        .join("random")
        .join(format!("{kind:?}-{preset_name}-{seed}").to_lowercase());
    if !dir.join("model.safetensors").is_file() {
        // Write to a temporary sibling and rename, so a concurrent or interrupted writer never
        // leaves a half-written model that a later run would trust.
        let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
        write_random_model(
            &RandomModelSpec {
                kind,
                preset,
                seed,
                dtype: WeightDtype::Bf16,
            },
            &tmp,
        )?;
        if let Err(e) = std::fs::rename(&tmp, &dir) {
            let _ = std::fs::remove_dir_all(&tmp);
            if !dir.join("model.safetensors").is_file() {
                return Err(Error::io(&dir, e));
            }
        }
    }
    Ok(dir)
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

/// Downloads the files semflow needs from the Hugging Face hub, with progress bars, into the
/// standard HF cache; returns the snapshot directory.
async fn download(id: &str, role: Role) -> Result<PathBuf> {
    let unreachable = |message: String| Error::HubUnreachable {
        model: id.to_string(),
        message,
        flag: role.flag(),
        env: role.env(),
    };
    let api = hf_hub::api::tokio::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| unreachable(e.to_string()))?;
    let repo = api.model(id.to_string());
    let config = repo
        .get("config.json")
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let mut files = vec!["tokenizer.json", "tokenizer_config.json"];
    if role == Role::Embedding {
        files.extend(["modules.json", "1_Pooling/config.json"]);
    }
    for f in files {
        repo.get(f)
            .await
            .map_err(|e| unreachable(format!("{f}: {e}")))?;
    }
    // Small models ship one model.safetensors; larger ones an index and shards.
    match repo.get("model.safetensors.index.json").await {
        Ok(index_path) => {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let index: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| Error::Json {
                    path: index_path.clone(),
                    source,
                })?;
            let mut shards: Vec<String> = index
                .get("weight_map")
                .and_then(|m| m.as_object())
                .map(|m| {
                    m.values()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for shard in shards {
                repo.get(&shard)
                    .await
                    .map_err(|e| unreachable(format!("{shard}: {e}")))?;
            }
        }
        Err(_) => {
            repo.get("model.safetensors")
                .await
                .map_err(|e| unreachable(format!("model.safetensors: {e}")))?;
        }
    }
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| Error::model(id, "hub cache path has no parent directory"))
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
