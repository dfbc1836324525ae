//! A Hugging Face hub on 127.0.0.1 for the download path: the subset of the hub's file API that
//! clients use (`GET /api/models/{repo}/revision/{rev}` for the commit and file list,
//! `GET /{repo}/resolve/{rev}/{file}` with `Range`, `ETag` and `X-Repo-Commit`), serving
//! fixture repositories held in memory. Repositories can be gated behind a token, branches can
//! move between loads, and one download can be cut midway to test resuming.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use sha2::{Digest, Sha256};

/// One commit: file path → contents.
pub type Files = BTreeMap<String, Arc<Vec<u8>>>;

#[derive(Default)]
struct Repo {
    /// Branch or tag → commit.
    refs: HashMap<String, String>,
    commits: HashMap<String, Files>,
    /// The token a request must carry, when gated.
    token: Option<String>,
}

/// A request the hub answered: the file (or `api`), the revision asked and the Range header.
#[derive(Debug, Clone)]
pub struct Logged {
    pub repo: String,
    pub file: String,
    pub revision: String,
    pub range: Option<String>,
}

#[derive(Default)]
struct Hub {
    repos: HashMap<String, Repo>,
    log: Vec<Logged>,
    /// The next download of a file that reaches an offset is cut there.
    cut: Option<Cut>,
}

/// Where a download is cut, and what the cut waits for after sending the bytes before it.
struct Cut {
    file: String,
    at: usize,
    after: Hold,
}

/// A condition the cut waits for (polled, at most a minute), so a test can order the break
/// after something the client does.
pub type Hold = Arc<dyn Fn() -> bool + Send + Sync>;

type Shared = Arc<Mutex<Hub>>;

pub struct FakeHub {
    pub url: String,
    state: Shared,
    _task: tokio::task::JoinHandle<()>,
}

impl FakeHub {
    pub async fn start() -> Self {
        let state: Shared = Arc::default();
        let app = Router::new()
            .route("/api/models/{org}/{name}/revision/{rev}", get(info))
            .route("/{org}/{name}/resolve/{rev}/{*file}", get(resolve))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url: format!("http://{addr}"),
            state,
            _task: task,
        }
    }

    /// Adds commit `sha` to `repo` with `files` and points `branch` at it.
    pub fn commit(&self, repo: &str, branch: &str, sha: &str, files: Files) {
        let mut hub = self.state.lock().unwrap();
        let r = hub.repos.entry(repo.to_string()).or_default();
        r.commits.insert(sha.to_string(), files);
        r.refs.insert(branch.to_string(), sha.to_string());
    }

    /// Requires `Authorization: Bearer {token}` for `repo`.
    pub fn gate(&self, repo: &str, token: &str) {
        let mut hub = self.state.lock().unwrap();
        hub.repos.entry(repo.to_string()).or_default().token = Some(token.to_string());
    }

    /// Cuts the next download of `file` that reaches byte `offset`, once the bytes before it
    /// are sent and `after` holds.
    pub fn cut_once(&self, file: &str, offset: usize, after: Hold) {
        self.state.lock().unwrap().cut = Some(Cut {
            file: file.to_string(),
            at: offset,
            after,
        });
    }

    /// Every request answered so far, oldest first.
    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }
}

/// Every file under `dir` (recursively), keyed by its path relative to `dir`.
pub fn files_of(dir: &Path) -> Files {
    let mut out = Files::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, Arc::new(std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

fn authorized(repo: &Repo, headers: &HeaderMap) -> bool {
    let Some(token) = &repo.token else {
        return true;
    };
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {token}"))
}

/// Commit and files of `repo` at `rev` (a ref or a commit), or the status to answer.
fn lookup(
    hub: &Hub,
    repo: &str,
    rev: &str,
    headers: &HeaderMap,
) -> Result<(String, Files), StatusCode> {
    let r = hub.repos.get(repo).ok_or(StatusCode::NOT_FOUND)?;
    if !authorized(r, headers) {
        return Err(StatusCode::UNAUTHORIZED);
    }
    let sha = r.refs.get(rev).cloned().unwrap_or_else(|| rev.to_string());
    let files = r.commits.get(&sha).cloned().ok_or(StatusCode::NOT_FOUND)?;
    Ok((sha, files))
}

async fn info(
    State(state): State<Shared>,
    UrlPath((org, name, rev)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let repo = format!("{org}/{name}");
    let mut hub = state.lock().unwrap();
    hub.log.push(Logged {
        repo: repo.clone(),
        file: "api".into(),
        revision: rev.clone(),
        range: None,
    });
    match lookup(&hub, &repo, &rev, &headers) {
        Ok((sha, files)) => {
            let siblings: Vec<_> = files
                .keys()
                .map(|f| serde_json::json!({ "rfilename": f }))
                .collect();
            axum::Json(serde_json::json!({ "id": repo, "sha": sha, "siblings": siblings }))
                .into_response()
        }
        Err(status) => (status, "{\"error\": \"no access\"}").into_response(),
    }
}

async fn resolve(
    State(state): State<Shared>,
    UrlPath((org, name, rev, file)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let repo = format!("{org}/{name}");
    let range = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let mut hub = state.lock().unwrap();
    hub.log.push(Logged {
        repo: repo.clone(),
        file: file.clone(),
        revision: rev.clone(),
        range: range.clone(),
    });
    let (sha, files) = match lookup(&hub, &repo, &rev, &headers) {
        Ok(found) => found,
        Err(status) => return status.into_response(),
    };
    let Some(body) = files.get(&file).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let len = body.len();
    let (start, end) = match range.as_deref().and_then(parse_range) {
        // Clients may ask past the end (hf-hub's last chunk does): clamp.
        Some((a, b)) => (a.min(len), b.min(len.saturating_sub(1))),
        None => (0, len.saturating_sub(1)),
    };
    let etag = hex::encode(Sha256::digest(body.as_slice()));
    let mut response_headers = HeaderMap::new();
    response_headers.insert(
        "etag",
        HeaderValue::from_str(&format!("\"{etag}\"")).unwrap(),
    );
    response_headers.insert("x-repo-commit", HeaderValue::from_str(&sha).unwrap());
    let slice = if len == 0 || start > end {
        Vec::new()
    } else {
        body[start..=end].to_vec()
    };
    if range.is_some() {
        response_headers.insert(
            "content-range",
            HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")).unwrap(),
        );
    }
    let cut = match hub.cut.take() {
        Some(c) if c.file == file && start < c.at && c.at <= end => Some((c.at - start, c.after)),
        other => {
            hub.cut = other;
            None
        }
    };
    let status = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let body = match cut {
        Some((keep, after)) => {
            // The bytes before the cut, then (once `after` holds) the connection breaks.
            let head = slice[..keep].to_vec();
            let cut = futures::stream::once(async move {
                for _ in 0..3_000 {
                    if after() {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(std::io::Error::other("connection cut by the test hub"))
            });
            Body::from_stream(futures::stream::iter([Ok::<_, std::io::Error>(head)]).chain(cut))
        }
        None => Body::from(slice),
    };
    (status, response_headers, body).into_response()
}

fn parse_range(h: &str) -> Option<(usize, usize)> {
    let (a, b) = h.strip_prefix("bytes=")?.split_once('-')?;
    Some((a.parse().ok()?, b.parse().unwrap_or(usize::MAX)))
}
