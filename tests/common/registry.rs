//! A schema registry on 127.0.0.1:0 speaking the REST subset Confluent's serializers and
//! semflow use (no registry installs here: Confluent's is Java and not on PyPI):
//! `POST /subjects/{subject}/versions` registers a schema (the same text gets the same id),
//! `GET /schemas/ids/{id}` serves it, `GET /subjects/{subject}/versions/latest` the newest.
//! It counts the `GET /schemas/ids/…` requests, so tests can check that readers cache.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Default)]
struct Shared {
    /// Schema texts and types by id (ids start at 1).
    schemas: Vec<(String, String)>,
    /// Subject → ids registered under it, oldest first.
    subjects: HashMap<String, Vec<u32>>,
    /// `GET /schemas/ids/{id}` requests per id.
    fetches: HashMap<u32, usize>,
}

pub struct FakeRegistry {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
}

type Reply = (StatusCode, Json<Value>);

fn not_found(what: &str) -> Reply {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error_code": 40403, "message": format!("{what} not found")})),
    )
}

async fn register(
    State(shared): State<Arc<Mutex<Shared>>>,
    Path(subject): Path<String>,
    Json(body): Json<Value>,
) -> Reply {
    let Some(text) = body["schema"].as_str() else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error_code": 42201, "message": "no schema"})),
        );
    };
    let kind = body["schemaType"].as_str().unwrap_or("AVRO").to_string();
    let mut s = shared.lock().unwrap();
    let id = match s.schemas.iter().position(|(t, k)| t == text && *k == kind) {
        Some(i) => i as u32 + 1,
        None => {
            s.schemas.push((text.to_string(), kind));
            s.schemas.len() as u32
        }
    };
    let versions = s.subjects.entry(subject).or_default();
    if !versions.contains(&id) {
        versions.push(id);
    }
    (StatusCode::OK, Json(json!({"id": id})))
}

async fn schema_by_id(State(shared): State<Arc<Mutex<Shared>>>, Path(id): Path<u32>) -> Reply {
    let mut s = shared.lock().unwrap();
    *s.fetches.entry(id).or_default() += 1;
    match s.schemas.get((id as usize).wrapping_sub(1)) {
        // The registry leaves schemaType out for Avro.
        Some((text, kind)) if kind == "AVRO" => (StatusCode::OK, Json(json!({"schema": text}))),
        Some((text, kind)) => (
            StatusCode::OK,
            Json(json!({"schema": text, "schemaType": kind})),
        ),
        None => not_found(&format!("schema {id}")),
    }
}

async fn latest(State(shared): State<Arc<Mutex<Shared>>>, Path(subject): Path<String>) -> Reply {
    let s = shared.lock().unwrap();
    let Some(versions) = s.subjects.get(&subject) else {
        return not_found(&format!("subject {subject}"));
    };
    let (version, id) = (versions.len(), *versions.last().unwrap());
    let (text, kind) = &s.schemas[id as usize - 1];
    (
        StatusCode::OK,
        Json(
            json!({"subject": subject, "version": version, "id": id, "schema": text, "schemaType": kind}),
        ),
    )
}

impl FakeRegistry {
    pub async fn start() -> Self {
        Self::start_with_auth(None).await
    }

    /// The same registry requiring HTTP Basic `(user, secret)` on every request (401 else).
    pub async fn start_with_auth(auth: Option<(&str, &str)>) -> Self {
        use base64::Engine as _;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let expected = auth.map(|(user, secret)| {
            let pair = format!("{user}:{secret}");
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        let check = move |request: axum::extract::Request, next: axum::middleware::Next| {
            let expected = expected.clone();
            async move {
                let given = request
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok());
                match &expected {
                    Some(want) if given != Some(want.as_str()) => {
                        let body = json!({"error_code": 401, "message": "Unauthorized"});
                        axum::response::IntoResponse::into_response((
                            StatusCode::UNAUTHORIZED,
                            Json(body),
                        ))
                    }
                    _ => next.run(request).await,
                }
            }
        };
        let app = Router::new()
            .route("/subjects/{subject}/versions", post(register))
            .route("/subjects/{subject}/versions/latest", get(latest))
            .route("/schemas/ids/{id}", get(schema_by_id))
            .layer(axum::middleware::from_fn(check))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, shared }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How often each schema id was fetched.
    pub fn fetches(&self) -> HashMap<u32, usize> {
        self.shared.lock().unwrap().fetches.clone()
    }
}
