//! The Anthropic Messages API provider: a thin client on `reqwest`.
//!
//! One [`Provider::complete`] is one `POST {base}/v1/messages` (plus up to
//! [`MAX_CONTINUATIONS`] follow-ups when the answer stops at `max_tokens`),
//! each wrapped in the configured [`RetryPolicy`].
//!
//! - The system prompt is sent as one text block marked
//!   `cache_control: ephemeral`, and so is the last tool: the stable prefix
//!   (tools, system) is cached by the provider between calls.
//! - `text` blocks are concatenated; `tool_use` blocks become [`ToolCall`]s.
//! - Usage maps `cache_read_input_tokens` and `cache_creation_input_tokens`
//!   to [`TokenUsage::cache_read_tokens`] and [`TokenUsage::cache_write_tokens`].
//! - A `max_tokens` stop without tool use is continued: the partial answer
//!   is sent back as a prefilled assistant turn, which the model continues;
//!   texts are concatenated and usage summed.
//! - 429, 529, 500, 502, 503, 504, connection errors, timeouts and malformed
//!   200 bodies are [`Error::Transient`] (honouring `retry-after`); any other
//!   status is [`Error::Fatal`] with the provider's message.
//!
//! The API key never appears in errors, logs or `Debug` output.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::retry::{RetryPolicy, parse_retry_after};
use crate::{
    Error, MessageRole, Provider, Request, Response, Result, StopReason, TokenUsage, ToolCall,
};

const PROVIDER: &str = "anthropic";

/// Default API endpoint.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// Default model when neither the request nor the options name one.
pub const DEFAULT_MODEL: &str = "claude-sonnet-4-20250514";
/// Default `anthropic-version` header.
pub const DEFAULT_VERSION: &str = "2023-06-01";
/// Default per-call timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Follow-up requests after a `max_tokens` stop, at most.
pub const MAX_CONTINUATIONS: u32 = 3;

/// HTTP statuses worth retrying.
const TRANSIENT_STATUSES: [u16; 6] = [429, 500, 502, 503, 504, 529];

/// Configuration of [`AnthropicProvider`].
#[derive(Clone)]
pub struct AnthropicOptions {
    /// Secret: never printed.
    pub api_key: String,
    /// Without a trailing `/v1/messages` (default [`DEFAULT_BASE_URL`]).
    pub base_url: String,
    /// Used when a request names no model (default [`DEFAULT_MODEL`]).
    pub model: String,
    /// Per HTTP call (default 300 s).
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// The `anthropic-version` header (default [`DEFAULT_VERSION`]).
    pub version: String,
}

impl Default for AnthropicOptions {
    fn default() -> Self {
        AnthropicOptions {
            api_key: String::new(),
            base_url: DEFAULT_BASE_URL.to_string(),
            model: DEFAULT_MODEL.to_string(),
            timeout: DEFAULT_TIMEOUT,
            retry: RetryPolicy::default(),
            version: DEFAULT_VERSION.to_string(),
        }
    }
}

impl fmt::Debug for AnthropicOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicOptions")
            .field("api_key", &"***")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("version", &self.version)
            .finish()
    }
}

impl AnthropicOptions {
    /// Options with this key and the defaults.
    pub fn new(api_key: impl Into<String>) -> Self {
        AnthropicOptions {
            api_key: api_key.into(),
            ..Self::default()
        }
    }

    /// From the environment: `ANTHROPIC_API_KEY` (required),
    /// `ANTHROPIC_BASE_URL`, `LLM_MODEL`, `LLM_TIMEOUT_SECONDS`.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let api_key = get("ANTHROPIC_API_KEY").ok_or_else(|| {
            Error::Config(
                "ANTHROPIC_API_KEY is not set: set it to use the anthropic provider".to_string(),
            )
        })?;
        let mut opts = AnthropicOptions::new(api_key.trim());
        if let Some(url) = get("ANTHROPIC_BASE_URL") {
            opts.base_url = url.trim().to_string();
        }
        if let Some(model) = get("LLM_MODEL") {
            opts.model = model.trim().to_string();
        }
        if let Some(t) = get("LLM_TIMEOUT_SECONDS") {
            let secs = t
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0)
                .ok_or_else(|| {
                    Error::Config(format!(
                        "LLM_TIMEOUT_SECONDS must be a positive number of seconds, got {t:?}"
                    ))
                })?;
            opts.timeout = Duration::from_secs_f64(secs.min(86_400.0));
        }
        Ok(opts)
    }
}

/// The Anthropic Messages API provider. See the module docs.
#[derive(Clone)]
pub struct AnthropicProvider {
    opts: AnthropicOptions,
    endpoint: String,
    client: reqwest::Client,
}

impl fmt::Debug for AnthropicProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicProvider")
            .field("opts", &self.opts)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl AnthropicProvider {
    /// A provider with these options (the key must be non-empty).
    pub fn new(opts: AnthropicOptions) -> Result<Self> {
        if opts.api_key.trim().is_empty() {
            return Err(Error::Config(
                "anthropic: empty API key: set ANTHROPIC_API_KEY".to_string(),
            ));
        }
        if opts.model.trim().is_empty() {
            return Err(Error::Config("anthropic: empty default model".to_string()));
        }
        let base = opts.base_url.trim().trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Config(format!(
                "anthropic: base URL must start with http:// or https://, got {base:?}"
            )));
        }
        let endpoint = format!("{base}/v1/messages");
        let client = reqwest::Client::builder()
            .timeout(opts.timeout)
            .connect_timeout(opts.timeout.min(Duration::from_secs(30)))
            .build()
            .map_err(|e| Error::Config(format!("anthropic: cannot build HTTP client: {e}")))?;
        Ok(AnthropicProvider {
            opts,
            endpoint,
            client,
        })
    }

    /// [`AnthropicOptions::from_env`], then [`AnthropicProvider::new`].
    pub fn from_env() -> Result<Self> {
        Self::new(AnthropicOptions::from_env()?)
    }

    /// The options (the key included: do not print it).
    pub fn options(&self) -> &AnthropicOptions {
        &self.opts
    }

    /// The JSON body of one call; `prefill` is the answer so far, sent as a
    /// trailing assistant turn to be continued.
    fn body(&self, request: &Request, model: &str, prefill: Option<&str>) -> Value {
        let mut messages: Vec<Value> = request
            .messages
            .iter()
            .map(|m| {
                let role = match m.role {
                    MessageRole::User => "user",
                    MessageRole::Assistant => "assistant",
                };
                json!({ "role": role, "content": m.content })
            })
            .collect();
        if let Some(prefill) = prefill {
            match messages.last_mut() {
                // The caller prefilled the answer already: extend that turn.
                Some(last) if last["role"] == "assistant" => {
                    let before = last["content"].as_str().unwrap_or_default().to_string();
                    last["content"] = Value::String(format!("{before}{prefill}"));
                }
                _ => messages.push(json!({ "role": "assistant", "content": prefill })),
            }
        }
        let mut body = json!({
            "model": model,
            "max_tokens": request.max_tokens,
            "messages": messages,
        });
        if !request.system.is_empty() {
            body["system"] = json!([{
                "type": "text",
                "text": request.system,
                "cache_control": { "type": "ephemeral" },
            }]);
        }
        if let Some(t) = request.temperature {
            body["temperature"] = json!(t);
        }
        if !request.tools.is_empty() {
            let n = request.tools.len();
            let tools: Vec<Value> = request
                .tools
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let mut v = json!({
                        "name": t.name,
                        "description": t.description,
                        "input_schema": t.input_schema,
                    });
                    if i + 1 == n {
                        v["cache_control"] = json!({ "type": "ephemeral" });
                    }
                    v
                })
                .collect();
            body["tools"] = Value::Array(tools);
        }
        body
    }

    /// One HTTP call, without retries.
    async fn call_once(&self, body: &Value) -> Result<WireResponse> {
        let resp = self
            .client
            .post(&self.endpoint)
            .header("x-api-key", &self.opts.api_key)
            .header("anthropic-version", &self.opts.version)
            .header("content-type", "application/json")
            .json(body)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        if !status.is_success() {
            let message = format!("{} {}", status.as_u16(), error_message(&bytes));
            let message = self.scrub(&message);
            return Err(if TRANSIENT_STATUSES.contains(&status.as_u16()) {
                Error::Transient {
                    provider: PROVIDER.to_string(),
                    message,
                    retry_after,
                }
            } else {
                Error::Fatal {
                    provider: PROVIDER.to_string(),
                    message,
                }
            });
        }
        serde_json::from_slice::<WireResponse>(&bytes).map_err(|e| Error::Transient {
            provider: PROVIDER.to_string(),
            message: format!("malformed response ({} bytes): {e}", bytes.len()),
            retry_after: None,
        })
    }

    /// One call with retries.
    async fn call(&self, body: &Value) -> Result<WireResponse> {
        self.opts
            .retry
            .run(
                || self.call_once(body),
                |n, e, wait| {
                    tracing::warn!(
                        provider = PROVIDER,
                        retry = n,
                        max_retries = self.opts.retry.max_retries,
                        wait_ms = wait.as_millis() as u64,
                        error = %e,
                        "LLM call failed; retrying"
                    );
                },
            )
            .await
    }

    fn transport_error(&self, e: &reqwest::Error) -> Error {
        // The endpoint carries no secret; the key is only ever in a header.
        let kind = if e.is_timeout() {
            "timeout"
        } else if e.is_connect() {
            "connection failed"
        } else if e.is_body() || e.is_decode() {
            "reading the response failed"
        } else {
            "request failed"
        };
        let mut detail = String::new();
        let mut source: Option<&dyn std::error::Error> = Some(e);
        while let Some(s) = source {
            let text = s.to_string();
            if !detail.contains(&text) {
                if !detail.is_empty() {
                    detail.push_str(": ");
                }
                detail.push_str(&text);
            }
            source = s.source();
        }
        let message = self.scrub(&format!("{kind} ({}): {detail}", self.endpoint));
        if e.is_builder() {
            Error::Fatal {
                provider: PROVIDER.to_string(),
                message,
            }
        } else {
            Error::Transient {
                provider: PROVIDER.to_string(),
                message,
                retry_after: None,
            }
        }
    }

    /// Defence in depth: no message leaves with the key in it.
    fn scrub(&self, text: &str) -> String {
        let key = self.opts.api_key.trim();
        if key.len() >= 4 && text.contains(key) {
            text.replace(key, "***")
        } else {
            text.to_string()
        }
    }
}

#[async_trait]
impl Provider for AnthropicProvider {
    fn name(&self) -> &str {
        PROVIDER
    }

    fn is_scripted(&self) -> bool {
        false
    }

    fn default_model(&self) -> &str {
        &self.opts.model
    }

    async fn complete(&self, request: &Request) -> Result<Response> {
        let model = if request.model.trim().is_empty() {
            self.opts.model.as_str()
        } else {
            request.model.as_str()
        };
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        let mut usage = TokenUsage::default();
        let mut answered_by = None;
        let mut continuations = 0;
        loop {
            let prefill = (continuations > 0).then_some(text.as_str());
            let body = self.body(request, model, prefill);
            let wire = self.call(&body).await?;
            wire.usage.add_to(&mut usage);
            if answered_by.is_none() {
                answered_by = wire.model.clone();
            }
            let mut chunk = String::new();
            for block in wire.content {
                match block {
                    Block::Text { text } => chunk.push_str(&text),
                    Block::ToolUse { id, name, input } => {
                        tool_calls.push(ToolCall { id, name, input })
                    }
                    Block::Other => {}
                }
            }
            text.push_str(&chunk);
            let stop = stop_reason(wire.stop_reason.as_deref());
            // The API refuses a final assistant turn ending in whitespace:
            // continue from the trimmed text (the model continues from there).
            let can_continue = stop == StopReason::MaxTokens
                && tool_calls.is_empty()
                && continuations < MAX_CONTINUATIONS
                && !text.trim_end().is_empty();
            if !can_continue {
                return Ok(Response {
                    text,
                    tool_calls,
                    usage,
                    stop_reason: stop,
                    model: answered_by.unwrap_or_else(|| model.to_string()),
                });
            }
            continuations += 1;
            tracing::debug!(
                provider = PROVIDER,
                continuation = continuations,
                chars = text.len(),
                "answer stopped at max_tokens; continuing"
            );
            let trimmed = text.trim_end().len();
            text.truncate(trimmed);
        }
    }
}

fn stop_reason(s: Option<&str>) -> StopReason {
    match s {
        Some("end_turn") => StopReason::EndTurn,
        Some("max_tokens") => StopReason::MaxTokens,
        Some("tool_use") => StopReason::ToolUse,
        Some("stop_sequence") => StopReason::StopSequence,
        _ => StopReason::Other,
    }
}

/// `"{type}: {message}"` from Anthropic's error body, else the body itself
/// (truncated).
fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Envelope {
        error: Detail,
    }
    #[derive(Deserialize)]
    struct Detail {
        #[serde(rename = "type", default)]
        kind: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(env) = serde_json::from_slice::<Envelope>(body) {
        return match (env.error.kind.is_empty(), env.error.message.is_empty()) {
            (false, false) => format!("{}: {}", env.error.kind, env.error.message),
            (false, true) => env.error.kind,
            _ => env.error.message,
        };
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_string();
    }
    let mut cut: String = text.chars().take(500).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut
}

#[derive(Debug, Deserialize)]
struct WireResponse {
    content: Vec<Block>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: WireUsage,
    #[serde(default)]
    model: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Default, Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

impl WireUsage {
    fn add_to(&self, u: &mut TokenUsage) {
        u.input_tokens += self.input_tokens.unwrap_or(0);
        u.output_tokens += self.output_tokens.unwrap_or(0);
        u.cache_read_tokens += self.cache_read_input_tokens.unwrap_or(0);
        u.cache_write_tokens += self.cache_creation_input_tokens.unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn env_requires_the_key_and_reads_overrides() {
        let err = AnthropicOptions::from_lookup(lookup(&[])).unwrap_err();
        assert!(matches!(err, Error::Config(_)));
        assert!(err.to_string().contains("ANTHROPIC_API_KEY"), "{err}");

        let o = AnthropicOptions::from_lookup(lookup(&[("ANTHROPIC_API_KEY", "sk-1")])).unwrap();
        assert_eq!(o.base_url, DEFAULT_BASE_URL);
        assert_eq!(o.model, DEFAULT_MODEL);
        assert_eq!(o.timeout, DEFAULT_TIMEOUT);
        assert_eq!(o.version, DEFAULT_VERSION);

        let o = AnthropicOptions::from_lookup(lookup(&[
            ("ANTHROPIC_API_KEY", "sk-1"),
            ("ANTHROPIC_BASE_URL", "http://127.0.0.1:9"),
            ("LLM_MODEL", "claude-haiku-4-5"),
            ("LLM_TIMEOUT_SECONDS", "2.5"),
        ]))
        .unwrap();
        assert_eq!(o.base_url, "http://127.0.0.1:9");
        assert_eq!(o.model, "claude-haiku-4-5");
        assert_eq!(o.timeout, Duration::from_millis(2500));

        let err = AnthropicOptions::from_lookup(lookup(&[
            ("ANTHROPIC_API_KEY", "sk-1"),
            ("LLM_TIMEOUT_SECONDS", "soon"),
        ]))
        .unwrap_err();
        assert!(matches!(err, Error::Config(_)));
    }

    #[test]
    fn error_bodies_give_type_and_message() {
        let body =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(error_message(body), "overloaded_error: Overloaded");
        assert_eq!(error_message(b"  "), "(empty body)");
        assert_eq!(error_message(b"bad gateway"), "bad gateway");
    }

    #[test]
    fn unknown_blocks_and_missing_usage_are_tolerated() {
        let wire: WireResponse = serde_json::from_str(
            r#"{"content":[{"type":"thinking","thinking":"hm"},{"type":"text","text":"hi"}],
                "stop_reason":"refusal","usage":{"input_tokens":3,"cache_creation_input_tokens":null}}"#,
        )
        .unwrap();
        assert_eq!(wire.content.len(), 2);
        let mut u = TokenUsage::default();
        wire.usage.add_to(&mut u);
        assert_eq!(u.input_tokens, 3);
        assert_eq!(u.cache_write_tokens, 0);
        assert_eq!(stop_reason(wire.stop_reason.as_deref()), StopReason::Other);
    }
}
