//! Model files from the Hugging Face hub (or the mirror `HF_ENDPOINT` names), kept in the
//! standard hub cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`) so
//! Python tools and semflow share downloads.
//!
//! A model spec is `org/name` or `org/name@revision` (a branch, tag or commit). Online, the
//! revision is resolved to a commit first and files are read from that commit's snapshot, so a
//! repository that changed since the last load is fetched anew while an unchanged one costs one
//! request. `HF_HUB_OFFLINE=1` uses the cache only, without any request. Interrupted downloads
//! resume (hf-hub keeps a `.sync.part` file with its committed length).

use std::path::{Path, PathBuf};

use hf_hub::api::tokio::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use super::dir::Role;
use crate::error::{Error, Result};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// 10 MB chunks of one file downloaded at once.
const DOWNLOAD_CHUNKS_IN_FLIGHT: usize = 4;
const DEFAULT_REVISION: &str = "main";

/// Which files to fetch: everything to run the model, or only what tokenizing and planning need
/// (remote inference: the weights live on the endpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Files {
    All,
    NoWeights,
}

/// `org/name[@revision]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSpec {
    pub repo_id: String,
    pub revision: String,
}

impl HubSpec {
    pub fn parse(spec: &str) -> Self {
        match spec.split_once('@') {
            Some((id, rev)) if !rev.is_empty() => Self {
                repo_id: id.to_string(),
                revision: rev.to_string(),
            },
            _ => Self {
                repo_id: spec.trim_end_matches('@').to_string(),
                revision: DEFAULT_REVISION.to_string(),
            },
        }
    }

    fn repo(&self, revision: &str) -> Repo {
        Repo::with_revision(self.repo_id.clone(), RepoType::Model, revision.to_string())
    }
}

/// Hub settings from the environment, read once per fetch.
#[derive(Debug, Clone)]
struct HubEnv {
    endpoint: String,
    cache_dir: PathBuf,
    token: Option<String>,
    offline: bool,
}

impl HubEnv {
    fn from_env() -> Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let cache_dir = match (var("HF_HUB_CACHE"), var("HF_HOME"), var("HOME")) {
            (Some(c), _, _) => PathBuf::from(c),
            (None, Some(h), _) => PathBuf::from(h).join("hub"),
            (None, None, Some(home)) => PathBuf::from(home).join(".cache/huggingface/hub"),
            (None, None, None) => {
                return Err(Error::InvalidArgument(
                    "no Hugging Face cache directory: set HF_HOME or HOME".into(),
                ))
            }
        };
        // hf-hub reads only the token file; HF_TOKEN is what users export.
        let token = var("HF_TOKEN").or_else(|| Cache::new(cache_dir.clone()).token());
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        Ok(Self {
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| DEFAULT_ENDPOINT.into())
                .trim_end_matches('/')
                .to_string(),
            cache_dir,
            token,
            offline,
        })
    }
}

/// Fetches (or, offline, finds in the cache) the files semflow needs for `role` and returns
/// the snapshot directory holding them.
pub async fn fetch(spec: &str, role: Role, files: Files) -> Result<PathBuf> {
    let env = HubEnv::from_env()?;
    let hub = HubSpec::parse(spec);
    if env.offline {
        return from_cache(spec, &hub, &env, role, files);
    }
    let failure = Failure {
        spec,
        endpoint: &env.endpoint,
        role,
    };
    let api = ApiBuilder::from_cache(Cache::new(env.cache_dir.clone()))
        .with_endpoint(env.endpoint.clone())
        .with_token(env.token.clone())
        .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // from_cache downloads one 10 MB chunk at a time, and its chunk tasks may take that
        // one slot in any order: a stalled later chunk then kept chunk 0 (the only one that
        // advances the resume point) waiting. Several slots keep the start of the file moving
        // and fetch large weights faster.
        .with_max_files(DOWNLOAD_CHUNKS_IN_FLIGHT)
        .build()
        .map_err(|e| failure.unreachable(e.to_string()))?;
    let info = api
        .repo(hub.repo(&hub.revision))
        .info()
        .await
        .map_err(|e| failure.classify("repository information", e))?;
    let listed: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let wanted = wanted_files(spec, role, files, &listed)?;
    // Every file from the one commit the revision names now, whatever moves meanwhile.
    let pinned = api.repo(hub.repo(&info.sha));
    let mut snapshot: Option<PathBuf> = None;
    for file in &wanted {
        let path = pinned
            .get(file)
            .await
            .map_err(|e| failure.classify(file, e))?;
        if snapshot.is_none() {
            snapshot = snapshot_dir(&path, file);
        }
    }
    let snapshot =
        snapshot.ok_or_else(|| Error::model(spec, "hub snapshot path has no parent directory"))?;
    if wanted.iter().any(|f| f == "model.safetensors.index.json") {
        for shard in index_shards(&snapshot.join("model.safetensors.index.json"))? {
            pinned
                .get(&shard)
                .await
                .map_err(|e| failure.classify(&shard, e))?;
        }
    }
    // Offline runs look the revision's name up in refs/ (as Python's hub client does).
    Cache::new(env.cache_dir.clone())
        .repo(hub.repo(&hub.revision))
        .create_ref(&info.sha)
        .map_err(|e| Error::io(&env.cache_dir, e))?;
    Ok(snapshot)
}

/// The snapshot directory of a file fetched under `snapshots/<commit>/<file>`.
fn snapshot_dir(path: &Path, file: &str) -> Option<PathBuf> {
    let mut dir = path.to_path_buf();
    for _ in Path::new(file).components() {
        dir = dir.parent()?.to_path_buf();
    }
    Some(dir)
}

/// The repository files to fetch, chosen from its listing: optional files only when present,
/// and the weights as one file or as an index plus its shards.
fn wanted_files(spec: &str, role: Role, files: Files, listed: &[String]) -> Result<Vec<String>> {
    let has = |f: &str| listed.iter().any(|l| l == f);
    let mut wanted: Vec<String> = vec!["config.json".into(), "tokenizer.json".into()];
    let optional = ["tokenizer_config.json", "config_sentence_transformers.json"];
    wanted.extend(optional.iter().filter(|f| has(f)).map(|f| f.to_string()));
    if role == Role::Embedding {
        wanted.extend(["modules.json".into(), "1_Pooling/config.json".into()]);
    }
    for required in &wanted {
        if !has(required) {
            return Err(Error::model(
                spec,
                format!("the hub repository has no {required}; is this a Qwen3-Embedding/Reranker repository?"),
            ));
        }
    }
    if files == Files::All {
        if has("model.safetensors.index.json") {
            wanted.push("model.safetensors.index.json".into());
        } else if has("model.safetensors") {
            wanted.push("model.safetensors".into());
        } else {
            return Err(Error::model(
                spec,
                "the hub repository has neither model.safetensors nor model.safetensors.index.json",
            ));
        }
    }
    Ok(wanted)
}

/// Shard files named by a downloaded `model.safetensors.index.json`, sorted and deduplicated.
pub fn index_shards(index_path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index_path).map_err(|e| Error::io(index_path, e))?;
    let index: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: index_path.to_path_buf(),
        source,
    })?;
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| {
            Error::model(
                index_path.display(),
                "model.safetensors.index.json has no weight_map object",
            )
        })?;
    let mut shards: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    shards.sort();
    shards.dedup();
    // A shard name is a file beside the index; anything else could escape the snapshot.
    if let Some(bad) = shards
        .iter()
        .find(|s| s.contains('/') || s.contains('\\') || s.starts_with('.'))
    {
        return Err(Error::model(
            index_path.display(),
            format!("weight_map names {bad:?}, not a file beside the index"),
        ));
    }
    Ok(shards)
}

/// Offline: the snapshot the revision's ref points at, with every wanted file present.
fn from_cache(
    spec: &str,
    hub: &HubSpec,
    env: &HubEnv,
    role: Role,
    files: Files,
) -> Result<PathBuf> {
    let cache = Cache::new(env.cache_dir.clone());
    let repo = cache.repo(hub.repo(&hub.revision));
    let missing = |what: &str| Error::HubOffline {
        model: spec.to_string(),
        file: what.to_string(),
        cache: env.cache_dir.display().to_string(),
    };
    let config = repo.get("config.json").or_else(|| {
        // A commit hash pin has no ref file; its snapshot directory is named after it.
        let dir = env
            .cache_dir
            .join(hub.repo(&hub.revision).folder_name())
            .join("snapshots")
            .join(&hub.revision);
        dir.join("config.json")
            .is_file()
            .then(|| dir.join("config.json"))
    });
    let config = config.ok_or_else(|| missing("config.json"))?;
    let dir = config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| missing("config.json"))?;
    let listed: Vec<String> = [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "config_sentence_transformers.json",
        "modules.json",
        "1_Pooling/config.json",
        "model.safetensors",
        "model.safetensors.index.json",
    ]
    .into_iter()
    .filter(|f| dir.join(f).is_file())
    .map(String::from)
    .collect();
    let wanted = wanted_files(spec, role, files, &listed).map_err(|_| {
        let absent = ["tokenizer.json", "modules.json", "model.safetensors"]
            .into_iter()
            .find(|f| !dir.join(f).is_file())
            .unwrap_or("a model file");
        missing(absent)
    })?;
    if wanted.iter().any(|f| f == "model.safetensors.index.json") {
        for shard in index_shards(&dir.join("model.safetensors.index.json"))? {
            if !dir.join(&shard).is_file() {
                return Err(missing(&shard));
            }
        }
    }
    Ok(dir)
}

/// Turns hf-hub errors into errors that say what to do.
struct Failure<'a> {
    spec: &'a str,
    endpoint: &'a str,
    role: Role,
}

impl Failure<'_> {
    fn unreachable(&self, message: String) -> Error {
        Error::HubUnreachable {
            model: self.spec.to_string(),
            endpoint: self.endpoint.to_string(),
            message,
            flag: self.role.flag(),
            env: self.role.env(),
        }
    }

    fn classify(&self, what: &str, e: ApiError) -> Error {
        let status = match &e {
            ApiError::RequestError(r) => r.status().map(|s| s.as_u16()),
            _ => None,
        };
        match status {
            Some(401 | 403) => Error::HubAccess {
                model: self.spec.to_string(),
                endpoint: self.endpoint.to_string(),
                status: status.unwrap_or_default(),
                flag: self.role.flag(),
            },
            Some(404) => Error::model(
                self.spec,
                format!(
                    "{what}: not found at {} (check the model id and revision)",
                    self.endpoint
                ),
            ),
            _ => self.unreachable(format!("{what}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_carry_an_optional_revision() {
        assert_eq!(
            HubSpec::parse("Qwen/Qwen3-Embedding-0.6B"),
            HubSpec {
                repo_id: "Qwen/Qwen3-Embedding-0.6B".into(),
                revision: "main".into()
            }
        );
        let pinned = HubSpec::parse("org/m@v1.0");
        assert_eq!(
            (pinned.repo_id.as_str(), pinned.revision.as_str()),
            ("org/m", "v1.0")
        );
    }

    #[test]
    fn wanted_files_follow_the_listing() {
        let listed: Vec<String> = [
            "config.json",
            "tokenizer.json",
            "modules.json",
            "1_Pooling/config.json",
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
        ]
        .map(String::from)
        .to_vec();
        let all = wanted_files("m", Role::Embedding, Files::All, &listed).unwrap();
        assert!(all.contains(&"model.safetensors.index.json".to_string()));
        assert!(!all.contains(&"tokenizer_config.json".to_string()));
        let light = wanted_files("m", Role::Embedding, Files::NoWeights, &listed).unwrap();
        assert!(
            light.iter().all(|f| !f.contains("safetensors")),
            "{light:?}"
        );
        let err = wanted_files("m", Role::Reranker, Files::All, &listed[..2]).unwrap_err();
        assert!(
            err.to_string().contains("neither model.safetensors"),
            "{err}"
        );
    }

    #[test]
    fn shard_names_must_stay_beside_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("model.safetensors.index.json");
        std::fs::write(&index, r#"{"weight_map": {"a": "s2.safetensors", "b": "s1.safetensors", "c": "s1.safetensors"}}"#).unwrap();
        assert_eq!(
            index_shards(&index).unwrap(),
            vec!["s1.safetensors", "s2.safetensors"]
        );
        std::fs::write(&index, r#"{"weight_map": {"a": "../../etc/passwd"}}"#).unwrap();
        assert!(index_shards(&index).is_err());
    }
}
