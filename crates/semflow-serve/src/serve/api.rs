//! Request and response bodies of the HTTP API: OpenAI's embeddings shape and the
//! Cohere/Jina rerank shape, field for field.

use serde::{Deserialize, Serialize};

/// `POST /v1/embeddings`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsRequest {
    pub input: EmbeddingInput,
    #[serde(default)]
    pub model: Option<String>,
    /// Matryoshka: keep the first `dimensions` components, re-normalised.
    #[serde(default)]
    pub dimensions: Option<usize>,
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// semflow's extension: embed the inputs as queries with this instruction.
    #[serde(default)]
    pub instruction: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<u32>),
    ManyTokens(Vec<Vec<u32>>),
}

#[derive(Debug, Serialize)]
pub struct EmbeddingsResponse {
    pub object: &'static str,
    pub data: Vec<EmbeddingData>,
    pub model: String,
    pub usage: Usage,
}

#[derive(Debug, Serialize)]
pub struct EmbeddingData {
    pub object: &'static str,
    pub index: usize,
    pub embedding: EmbeddingValue,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum EmbeddingValue {
    Float(Vec<f32>),
    /// Little-endian f32 bytes, base64 (what OpenAI clients decode).
    Base64(String),
}

#[derive(Debug, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

/// `POST /v1/rerank`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerankRequest {
    pub query: String,
    pub documents: Vec<RerankDocument>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub top_n: Option<usize>,
    #[serde(default)]
    pub return_documents: Option<bool>,
    #[serde(default)]
    pub instruction: Option<String>,
}

/// A document as a string, or Cohere's `{"text": …}` object.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RerankDocument {
    Text(String),
    Object { text: String },
}

impl RerankDocument {
    pub fn text(&self) -> &str {
        match self {
            RerankDocument::Text(t) | RerankDocument::Object { text: t } => t,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct RerankResponse {
    pub model: String,
    pub results: Vec<RerankResult>,
}

#[derive(Debug, Serialize)]
pub struct RerankResult {
    pub index: usize,
    pub relevance_score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<RerankResultDocument>,
}

#[derive(Debug, Serialize)]
pub struct RerankResultDocument {
    pub text: String,
}

/// `POST /v1/score` (vLLM's score API): P(yes) of `text_1 + text_2` joined as they are, for
/// a client that builds the Qwen3 reranker prompt itself. A single text on either side pairs
/// with every text on the other; two lists pair element by element.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    pub text_1: ScoreTexts,
    pub text_2: ScoreTexts,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub truncate_prompt_tokens: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ScoreTexts {
    One(String),
    Many(Vec<String>),
}

impl ScoreTexts {
    pub fn as_slice(&self) -> &[String] {
        match self {
            ScoreTexts::One(t) => std::slice::from_ref(t),
            ScoreTexts::Many(v) => v,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ScoreResponse {
    pub object: &'static str,
    pub model: String,
    pub data: Vec<ScoreData>,
}

#[derive(Debug, Serialize)]
pub struct ScoreData {
    pub object: &'static str,
    pub index: usize,
    pub score: f32,
}

/// OpenAI's error body.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

/// `POST /v1/sql`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlRequest {
    pub sql: String,
    /// `json` (default) or `arrow` (an Arrow IPC stream).
    #[serde(default)]
    pub format: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SqlColumn {
    pub name: String,
    pub r#type: String,
}

#[derive(Debug, Serialize)]
pub struct SqlResponse {
    pub columns: Vec<SqlColumn>,
    pub rows: serde_json::Value,
    pub row_count: usize,
}

/// `POST /v2/rerank` (Cohere's v2 shape, what the Cohere SDK's `ClientV2` sends).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CohereRerankRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub query: String,
    pub documents: Vec<RerankDocument>,
    #[serde(default)]
    pub top_n: Option<usize>,
    /// Documents longer than this many tokens are cut; semflow cuts at the model's limit, so
    /// only values at or above it are accepted.
    #[serde(default)]
    pub max_tokens_per_doc: Option<usize>,
    /// A scheduling hint; semflow serves requests in arrival order.
    #[serde(default)]
    pub priority: Option<i64>,
    /// semflow's extension, as on `/v1/rerank`.
    #[serde(default)]
    pub instruction: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CohereRerankResponse {
    pub id: String,
    pub results: Vec<RerankResult>,
    pub meta: CohereMeta,
}

#[derive(Debug, Serialize)]
pub struct CohereMeta {
    pub api_version: CohereApiVersion,
    pub billed_units: CohereBilledUnits,
}

#[derive(Debug, Serialize)]
pub struct CohereApiVersion {
    pub version: &'static str,
}

#[derive(Debug, Serialize, Default)]
pub struct CohereBilledUnits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_units: Option<usize>,
}

/// `POST /v2/embed` (Cohere's v2 shape).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CohereEmbedRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub texts: Option<Vec<String>>,
    #[serde(default)]
    pub images: Option<serde_json::Value>,
    #[serde(default)]
    pub inputs: Option<serde_json::Value>,
    /// `search_query` embeds with the model's `query` prompt; `search_document`,
    /// `classification` and `clustering` embed as documents.
    #[serde(default)]
    pub input_type: Option<String>,
    #[serde(default)]
    pub embedding_types: Option<Vec<String>>,
    /// Matryoshka: the first `output_dimension` components, re-normalised.
    #[serde(default)]
    pub output_dimension: Option<usize>,
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// `END` (default) cuts long inputs at the end; `NONE` refuses them.
    #[serde(default)]
    pub truncate: Option<String>,
    #[serde(default)]
    pub priority: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct CohereEmbedResponse {
    pub id: String,
    pub response_type: &'static str,
    pub embeddings: CohereEmbeddings,
    pub texts: Vec<String>,
    pub meta: CohereMeta,
}

#[derive(Debug, Serialize)]
pub struct CohereEmbeddings {
    #[serde(rename = "float", skip_serializing_if = "Option::is_none")]
    pub float: Option<Vec<Vec<f32>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base64: Option<Vec<String>>,
}
