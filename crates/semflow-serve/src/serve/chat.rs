//! `POST /v1/chat/completions` with a self-hosted generator (`semflow serve --chat-model`): a
//! Qwen3 causal LM on mistral.rs, with `response_format` JSON schemas enforced by constrained
//! decoding (llguidance), so the synthesis stage can run without another server. In builds
//! without the `mistralrs` cargo feature `--chat-model` is refused and the route answers 404.

use serde::Deserialize;
use serde_json::Value;

use crate::error::Result;
use crate::inference::config::LoadOptions;

/// A loaded chat model.
pub struct ChatModel {
    pub id: String,
    model: Generator,
    /// The model's context in tokens (`max_position_embeddings`): prompt plus completion.
    #[cfg_attr(not(feature = "mistralrs"), allow(dead_code))]
    context: usize,
}

/// Completion tokens when the request sets no limit.
#[cfg_attr(not(feature = "mistralrs"), allow(dead_code))]
const DEFAULT_MAX_TOKENS: usize = 512;

/// The model behind a [`ChatModel`]; in builds without mistral.rs there is none, so no
/// `ChatModel` can be made.
#[cfg(feature = "mistralrs")]
type Generator = mistralrs::Model;
#[cfg(not(feature = "mistralrs"))]
type Generator = std::convert::Infallible;

impl std::fmt::Debug for ChatModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatModel").field("id", &self.id).finish()
    }
}

/// The request fields semflow reads; others (`user`, `n`, …) are accepted and ignored.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    pub max_completion_tokens: Option<usize>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub response_format: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// A request the server refuses (400), naming the field.
#[derive(Debug)]
pub struct BadRequest {
    pub param: &'static str,
    pub message: String,
}

impl ChatModel {
    /// Loads a Qwen3 causal LM directory (or `random:PRESET[:SEED]`).
    #[cfg(not(feature = "mistralrs"))]
    pub async fn load(_spec: &str, _opts: LoadOptions) -> Result<Self> {
        Err(crate::inference::config::without_mistralrs("--chat-model").into())
    }

    /// Loads a Qwen3 causal LM directory (or `random:PRESET[:SEED]`).
    #[cfg(feature = "mistralrs")]
    pub async fn load(spec: &str, opts: LoadOptions) -> Result<Self> {
        use crate::model::dir::{ModelDir, Role};
        let dir = ModelDir::resolve(spec, Role::Reranker).await?;
        // No prefix cache: mistral.rs 0.8.1's restores cached KV blocks for prompts that share
        // a prefix (synth's recipe prompts all do) and the sequence then outgrows the KV
        // cache's capacity ("kv-cache: requested capacity (1024) above max seq len (512)" on
        // the tiny model, a failed request and a reboot of the engine).
        let model = crate::inference::local::load_causal_lm(&dir, opts, false, None).await?;
        Ok(Self {
            id: dir.id.clone(),
            model,
            context: dir.config.max_position_embeddings,
        })
    }

    /// The constraint a `response_format` asks for. Schemas are compiled without free
    /// whitespace (llguidance's `x-guidance` options, unless the client sets its own): with
    /// flexible whitespace a weak or random model can emit newlines until `max_tokens` and
    /// never close the object.
    #[cfg(feature = "mistralrs")]
    fn constraint(
        format: Option<&Value>,
    ) -> std::result::Result<mistralrs::Constraint, BadRequest> {
        fn compact(mut schema: Value) -> Value {
            if let Some(obj) = schema.as_object_mut() {
                obj.entry("x-guidance").or_insert_with(|| {
                    serde_json::json!({
                        "whitespace_flexible": false,
                        "item_separator": ", ",
                        "key_separator": ": "
                    })
                });
            }
            schema
        }
        let bad = |m: &str| BadRequest {
            param: "response_format",
            message: m.to_string(),
        };
        let Some(f) = format else {
            return Ok(mistralrs::Constraint::None);
        };
        match f.get("type").and_then(Value::as_str) {
            None | Some("text") => Ok(mistralrs::Constraint::None),
            Some("json_object") => Ok(mistralrs::Constraint::JsonSchema(compact(
                serde_json::json!({"type": "object"}),
            ))),
            Some("json_schema") => {
                let schema = f
                    .get("json_schema")
                    .and_then(|j| j.get("schema"))
                    .ok_or_else(|| bad("json_schema.schema is required"))?;
                Ok(mistralrs::Constraint::JsonSchema(compact(schema.clone())))
            }
            Some(other) => Err(bad(&format!(
                "type must be text, json_object or json_schema, not {other}"
            ))),
        }
    }

    /// Runs one chat completion; the response is OpenAI's `chat.completion` object.
    pub async fn complete(&self, req: ChatRequest) -> std::result::Result<Value, ChatError> {
        if req.stream == Some(true) {
            return Err(ChatError::Bad(BadRequest {
                param: "stream",
                message: "streaming is not supported; send stream: false".into(),
            }));
        }
        if req.messages.is_empty() {
            return Err(ChatError::Bad(BadRequest {
                param: "messages",
                message: "messages must not be empty".into(),
            }));
        }
        self.generate(req).await
    }

    #[cfg(not(feature = "mistralrs"))]
    async fn generate(&self, _req: ChatRequest) -> std::result::Result<Value, ChatError> {
        match self.model {}
    }

    /// The completion of a checked request.
    #[cfg(feature = "mistralrs")]
    async fn generate(&self, req: ChatRequest) -> std::result::Result<Value, ChatError> {
        let messages = text_messages(&req)?;
        let constraint = Self::constraint(req.response_format.as_ref()).map_err(ChatError::Bad)?;
        // The prompt as the model will read it (chat template applied, generation prompt
        // added), counted by the model's own tokenizer: the completion must fit in the rest
        // of the context, or the KV cache overflows mid-generation.
        let prompt = self
            .model
            .tokenize(
                either::Either::Left(messages.clone()),
                None,
                true,
                true,
                None,
            )
            .await
            .map_err(|e| ChatError::Failed(first_line(&e.to_string())))?
            .len();
        let asked = req
            .max_completion_tokens
            .or(req.max_tokens)
            .unwrap_or(DEFAULT_MAX_TOKENS);
        let max_len = bounded_completion(prompt, asked, self.context).map_err(ChatError::Bad)?;
        let mut builder = mistralrs::RequestBuilder::from(messages)
            .set_constraint(constraint)
            .set_sampler_max_len(max_len);
        if let Some(t) = req.temperature {
            builder = builder.set_sampler_temperature(t);
        }
        if let Some(p) = req.top_p {
            builder = builder.set_sampler_topp(p);
        }
        let response = self
            .model
            .send_chat_request(builder)
            .await
            .map_err(|e| ChatError::Failed(first_line(&e.to_string())))?;
        let mut v = serde_json::to_value(&response)
            .map_err(|e| ChatError::Failed(format!("response: {e}")))?;
        v["model"] = Value::String(req.model.unwrap_or_else(|| self.id.clone()));
        Ok(v)
    }
}

/// The request's messages in mistral.rs's form; an unknown role is refused.
#[cfg(feature = "mistralrs")]
fn text_messages(req: &ChatRequest) -> std::result::Result<mistralrs::TextMessages, ChatError> {
    let mut messages = mistralrs::TextMessages::new();
    for m in &req.messages {
        let role = match m.role.as_str() {
            "system" | "developer" => mistralrs::TextMessageRole::System,
            "user" => mistralrs::TextMessageRole::User,
            "assistant" => mistralrs::TextMessageRole::Assistant,
            other => {
                return Err(ChatError::Bad(BadRequest {
                    param: "messages",
                    message: format!("role must be system, user or assistant, not {other}"),
                }))
            }
        };
        messages = messages.add_message(role, &m.content);
    }
    Ok(messages)
}

/// `asked` completion tokens after a prompt of `prompt` tokens, within `context`.
#[cfg_attr(not(feature = "mistralrs"), allow(dead_code))]
fn bounded_completion(
    prompt: usize,
    asked: usize,
    context: usize,
) -> std::result::Result<usize, BadRequest> {
    match context.checked_sub(prompt) {
        Some(left) if left > 0 => Ok(asked.clamp(1, left)),
        _ => Err(BadRequest {
            param: "messages",
            message: format!(
                "the messages take {prompt} tokens of the chat model's {context}-token context, leaving none for the answer; shorten them"
            ),
        }),
    }
}

/// The first line of a backend error: the message, without the backtrace some carry.
#[cfg_attr(not(feature = "mistralrs"), allow(dead_code))]
fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().trim().to_string()
}

/// Why a chat request failed.
#[derive(Debug)]
pub enum ChatError {
    Bad(BadRequest),
    Failed(String),
}

#[cfg(all(test, feature = "mistralrs"))]
mod tests {
    use super::*;

    #[test]
    fn response_formats() {
        assert!(matches!(
            ChatModel::constraint(None),
            Ok(mistralrs::Constraint::None)
        ));
        let schema = serde_json::json!({"type": "json_schema", "json_schema": {"name": "q", "schema": {"type": "object"}}});
        assert!(matches!(
            ChatModel::constraint(Some(&schema)),
            Ok(mistralrs::Constraint::JsonSchema(_))
        ));
        let bad = serde_json::json!({"type": "json_schema"});
        match ChatModel::constraint(Some(&bad)) {
            Err(e) => assert_eq!(e.param, "response_format"),
            Ok(_) => panic!("a json_schema without schema was accepted"),
        }
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn completions_fit_the_context() {
        assert_eq!(bounded_completion(100, 512, 512).unwrap(), 412);
        assert_eq!(bounded_completion(100, 50, 512).unwrap(), 50);
        let err = bounded_completion(600, 10, 512).unwrap_err();
        assert_eq!(err.param, "messages");
        assert!(err.message.contains("512-token context"), "{}", err.message);
        assert!(bounded_completion(512, 10, 512).is_err());
        assert_eq!(
            first_line("kv-cache: full\n   0: backtrace"),
            "kv-cache: full"
        );
    }
}
