//! The OpenAI-compatible chat completions provider: a thin client on
//! `reqwest` for `POST {base_url}/chat/completions`, which OpenAI and local
//! servers (Ollama, vLLM, llama.cpp server) all speak.
//!
//! # Wire format
//!
//! The request carries `model`, `messages` (the system prompt first, then the
//! conversation), `max_tokens` (which local servers understand, unlike
//! `max_completion_tokens`), `temperature` when set, `tools` as
//! `[{"type":"function","function":{name, description, parameters}}]` when
//! any, and `stream: false`.
//!
//! Parsing is tolerant, because local servers omit optional fields:
//! `message.content` may be null, missing or an array of text parts; a tool
//! call's `function.arguments` is a JSON string (parsed; kept as a string
//! value when it does not parse); a missing `usage` is replaced by the
//! [`crate::tokens`] estimate; a missing `model` is the requested one; a
//! missing tool call `id` is generated. `prompt_tokens` counts cached tokens
//! too: `prompt_tokens_details.cached_tokens` is reported as
//! `cache_read_tokens` and subtracted from `input_tokens`, so costs do not
//! count them twice.
//!
//! `finish_reason` `stop` / `length` / `tool_calls` map to
//! [`StopReason::EndTurn`] / [`StopReason::MaxTokens`] /
//! [`StopReason::ToolUse`], anything else (or none) to [`StopReason::Other`];
//! a response with tool calls is [`StopReason::ToolUse`] unless it was cut by
//! `length` (Ollama answers tool calls with `stop`).
//!
//! # Continuation
//!
//! An answer cut by `length` without tool calls is continued: the partial
//! answer is appended as an assistant message with the user message
//! "Continue exactly where you stopped.", at most
//! [`MAX_CONTINUATIONS`] times. Texts are concatenated and usage summed.
//!
//! # Errors
//!
//! 429, 500, 502, 503, 504, 529, connection errors, resets, timeouts, and a
//! 200 whose body is not JSON or has no choices are [`Error::Transient`]
//! (`retry-after` honoured) and retried by the [`RetryPolicy`]; any other
//! status is [`Error::Fatal`] with the server's message (the `error.message`
//! of an OpenAI error body, or the plain text a local server sends).
//!
//! The API key is sent only as `Authorization: Bearer` and never appears in
//! errors, logs or `Debug` output.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use crate::retry::{RetryPolicy, parse_retry_after};
use crate::tokens::{estimate_request, estimate_tokens};
use crate::{Error, MessageRole, Provider, Request, Response, Result, StopReason, TokenUsage};
use crate::{Message, ToolCall};

/// Provider name, in errors and events.
const NAME: &str = "openai";

/// Default base URL (OpenAI). Ollama: `http://localhost:11434/v1`.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// Default model when neither the request nor `LLM_MODEL` names one.
pub const DEFAULT_MODEL: &str = "gpt-4o";

/// Default whole-request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Continuations of an answer cut by `length`, at most.
pub const MAX_CONTINUATIONS: u32 = 3;

/// The user message asking the model to continue a cut answer.
pub const CONTINUE_PROMPT: &str = "Continue exactly where you stopped.";

/// HTTP statuses that are [`Error::Transient`].
const TRANSIENT_STATUSES: [u16; 6] = [429, 500, 502, 503, 504, 529];

/// Longest server message kept in an error (characters).
const MAX_ERROR_CHARS: usize = 1000;

/// Options of an [`OpenAiProvider`]. `Debug` shows the key as `***`.
#[derive(Clone, PartialEq)]
pub struct OpenAiOptions {
    /// Base URL up to the version, e.g. `https://api.openai.com/v1` or
    /// `http://localhost:11434/v1`; `/chat/completions` is appended.
    pub base_url: String,
    /// Bearer token; optional for local servers (no header when `None`).
    pub api_key: Option<String>,
    /// Model used when a request names none.
    pub model: String,
    /// Timeout of one HTTP request (connect to last byte).
    pub timeout: Duration,
    pub retry: RetryPolicy,
}

impl Default for OpenAiOptions {
    fn default() -> Self {
        OpenAiOptions {
            base_url: DEFAULT_BASE_URL.to_string(),
            api_key: None,
            model: DEFAULT_MODEL.to_string(),
            timeout: DEFAULT_TIMEOUT,
            retry: RetryPolicy::default(),
        }
    }
}

impl fmt::Debug for OpenAiOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiOptions")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

impl OpenAiOptions {
    /// Options from the environment: `OPENAI_BASE_URL`, `OPENAI_API_KEY`,
    /// `LLM_MODEL`, `LLM_TIMEOUT_SECONDS`. See [`OpenAiOptions::from_lookup`].
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Options from `lookup` (an environment; empty values count as unset).
    /// With neither a base URL nor an API key there is nothing to call:
    /// [`Error::Config`] says how to configure.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |k: &str| {
            lookup(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let base_url = get("OPENAI_BASE_URL");
        let api_key = get("OPENAI_API_KEY");
        if base_url.is_none() && api_key.is_none() {
            return Err(Error::Config(
                "the openai provider needs OPENAI_API_KEY (for api.openai.com) or \
                 OPENAI_BASE_URL (for a local OpenAI-compatible server, e.g. \
                 http://localhost:11434/v1 for Ollama; the key is then optional)"
                    .to_string(),
            ));
        }
        let timeout = match get("LLM_TIMEOUT_SECONDS") {
            None => DEFAULT_TIMEOUT,
            Some(v) => match v.parse::<f64>() {
                Ok(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s.min(86_400.0)),
                _ => {
                    return Err(Error::Config(format!(
                        "LLM_TIMEOUT_SECONDS must be a positive number of seconds, got {v:?}"
                    )));
                }
            },
        };
        Ok(OpenAiOptions {
            base_url: base_url.unwrap_or_else(|| DEFAULT_BASE_URL.to_string()),
            api_key,
            model: get("LLM_MODEL").unwrap_or_else(|| DEFAULT_MODEL.to_string()),
            timeout,
            retry: RetryPolicy::default(),
        })
    }
}

/// An OpenAI-compatible chat completions client. `Debug` hides the key.
#[derive(Clone)]
pub struct OpenAiProvider {
    opts: OpenAiOptions,
    client: reqwest::Client,
    /// `{base_url}/chat/completions`.
    url: String,
}

impl fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("url", &self.url)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// One HTTP round trip's result, before continuations are merged.
#[derive(Debug)]
struct Turn {
    text: String,
    tool_calls: Vec<ToolCall>,
    usage: TokenUsage,
    stop_reason: StopReason,
    model: Option<String>,
}

impl OpenAiProvider {
    pub fn new(opts: OpenAiOptions) -> Result<Self> {
        let base = opts.base_url.trim().trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Config(format!(
                "openai base URL must start with http:// or https://, got {base:?}"
            )));
        }
        if opts.model.trim().is_empty() {
            return Err(Error::Config("openai model must not be empty".to_string()));
        }
        let url = format!("{base}/chat/completions");
        let client = reqwest::Client::builder()
            .timeout(opts.timeout)
            .build()
            .map_err(|e| Error::Config(format!("openai HTTP client: {}", chain(&e))))?;
        Ok(OpenAiProvider { opts, client, url })
    }

    /// [`OpenAiOptions::from_env`] then [`OpenAiProvider::new`].
    pub fn from_env() -> Result<Self> {
        Self::new(OpenAiOptions::from_env()?)
    }

    pub fn options(&self) -> &OpenAiOptions {
        &self.opts
    }

    /// The JSON body of one call.
    fn body(&self, model: &str, request: &Request, messages: &[Value]) -> Value {
        let mut body = Map::new();
        body.insert("model".into(), json!(model));
        body.insert("messages".into(), Value::Array(messages.to_vec()));
        body.insert("max_tokens".into(), json!(request.max_tokens));
        if let Some(t) = request.temperature {
            // Via the decimal text, so 0.2f32 is sent as 0.2 and not 0.20000000298.
            let t = t.to_string().parse::<f64>().unwrap_or(t as f64);
            body.insert("temperature".into(), json!(t));
        }
        if !request.tools.is_empty() {
            let tools: Vec<Value> = request
                .tools
                .iter()
                .map(|t| {
                    json!({
                        "type": "function",
                        "function": {
                            "name": t.name,
                            "description": t.description,
                            "parameters": t.input_schema,
                        }
                    })
                })
                .collect();
            body.insert("tools".into(), Value::Array(tools));
        }
        body.insert("stream".into(), json!(false));
        Value::Object(body)
    }

    /// One HTTP round trip, classified into [`Error::Transient`] / [`Error::Fatal`].
    async fn send(&self, body: &Value, estimated_input: u64) -> Result<Turn> {
        let mut req = self.client.post(&self.url).json(body);
        if let Some(key) = &self.opts.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let text = resp.text().await.map_err(|e| self.transport_error(&e))?;
        if !status.is_success() {
            let message = format!(
                "HTTP {} from {}: {}",
                status.as_u16(),
                self.url,
                self.redact(&error_message(&text))
            );
            return Err(if TRANSIENT_STATUSES.contains(&status.as_u16()) {
                Error::Transient {
                    provider: NAME.into(),
                    message,
                    retry_after,
                }
            } else {
                Error::Fatal {
                    provider: NAME.into(),
                    message,
                }
            });
        }
        parse_turn(&text, estimated_input).map_err(|why| Error::Transient {
            provider: NAME.into(),
            message: format!("malformed response from {}: {why}", self.url),
            retry_after: None,
        })
    }

    /// A connection error, reset or timeout: transient. reqwest errors name
    /// the URL, never headers; the key is redacted anyway.
    fn transport_error(&self, e: &reqwest::Error) -> Error {
        let what = if e.is_timeout() {
            format!("timed out after {:?}", self.opts.timeout)
        } else if e.is_connect() {
            "connection failed".to_string()
        } else {
            "request failed".to_string()
        };
        Error::Transient {
            provider: NAME.into(),
            message: self.redact(&format!("{what} ({}): {}", self.url, chain(e))),
            retry_after: None,
        }
    }

    /// `text` with every occurrence of the API key replaced by `***`.
    fn redact(&self, text: &str) -> String {
        match &self.opts.api_key {
            Some(key) if !key.is_empty() => text.replace(key.as_str(), "***"),
            _ => text.to_string(),
        }
    }
}

#[async_trait]
impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        NAME
    }

    fn is_scripted(&self) -> bool {
        false
    }

    fn default_model(&self) -> &str {
        &self.opts.model
    }

    async fn complete(&self, request: &Request) -> Result<Response> {
        let model = if request.model.trim().is_empty() {
            self.opts.model.clone()
        } else {
            request.model.clone()
        };
        let mut messages = Vec::with_capacity(request.messages.len() + 1);
        if !request.system.is_empty() {
            messages.push(json!({"role": "system", "content": request.system}));
        }
        messages.extend(request.messages.iter().map(wire_message));

        let mut estimated_input = estimate_request(request);
        let mut text = String::new();
        let mut usage = TokenUsage::default();
        let mut continuations = 0;
        loop {
            let body = self.body(&model, request, &messages);
            tracing::debug!(
                url = %self.url,
                model = %model,
                messages = messages.len(),
                continuation = continuations,
                "openai chat completion"
            );
            let turn = self
                .opts
                .retry
                .run(
                    || self.send(&body, estimated_input),
                    |n, e, wait| {
                        tracing::warn!(
                            provider = NAME,
                            retry = n,
                            wait_ms = wait.as_millis() as u64,
                            error = %e,
                            "retrying LLM call"
                        );
                    },
                )
                .await?;
            text.push_str(&turn.text);
            usage.input_tokens += turn.usage.input_tokens;
            usage.output_tokens += turn.usage.output_tokens;
            usage.cache_read_tokens += turn.usage.cache_read_tokens;
            usage.cache_write_tokens += turn.usage.cache_write_tokens;

            let cut = turn.stop_reason == StopReason::MaxTokens && turn.tool_calls.is_empty();
            if cut && continuations < MAX_CONTINUATIONS {
                continuations += 1;
                tracing::debug!(
                    continuation = continuations,
                    "answer cut by max_tokens; asking to continue"
                );
                estimated_input +=
                    estimate_tokens(&turn.text) + estimate_tokens(CONTINUE_PROMPT) + 2 * 4;
                messages.push(json!({"role": "assistant", "content": turn.text}));
                messages.push(json!({"role": "user", "content": CONTINUE_PROMPT}));
                continue;
            }
            return Ok(Response {
                text,
                tool_calls: turn.tool_calls,
                usage,
                stop_reason: turn.stop_reason,
                model: turn.model.unwrap_or(model),
            });
        }
    }
}

fn wire_message(m: &Message) -> Value {
    let role = match m.role {
        MessageRole::User => "user",
        MessageRole::Assistant => "assistant",
    };
    json!({"role": role, "content": m.content})
}

/// `retry-after` (seconds) or, failing that, `retry-after-ms`.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    get("retry-after").and_then(parse_retry_after).or_else(|| {
        get("retry-after-ms")
            .and_then(parse_retry_after)
            .map(|d| d / 1000)
    })
}

/// The server's message from an error body: `error.message` (plus type and
/// code) of an OpenAI error, `error` as a string (some local servers), or the
/// plain text, truncated.
fn error_message(body: &str) -> String {
    let from_json = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        let err = v.get("error")?;
        if let Some(s) = err.as_str() {
            return Some(s.to_string());
        }
        let msg = err.get("message")?.as_str()?.to_string();
        let mut extra = Vec::new();
        for k in ["type", "code"] {
            match err.get(k) {
                Some(Value::String(s)) if !s.is_empty() => extra.push(format!("{k} {s}")),
                Some(Value::Number(n)) => extra.push(format!("{k} {n}")),
                _ => {}
            }
        }
        Some(if extra.is_empty() {
            msg
        } else {
            format!("{msg} ({})", extra.join(", "))
        })
    });
    let text = from_json.unwrap_or_else(|| body.trim().to_string());
    let text = if text.is_empty() {
        "(empty body)".to_string()
    } else {
        text
    };
    truncate(&text, MAX_ERROR_CHARS)
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// An error and its sources, `: `-joined.
fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// Parse a 200 body. `Err` says why it is malformed (no JSON, no choices).
fn parse_turn(body: &str, estimated_input: u64) -> std::result::Result<Turn, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("not JSON ({e})"))?;
    let choice = v
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or_else(|| "no choices".to_string())?;
    let message = choice.get("message").cloned().unwrap_or(Value::Null);

    let text = match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str).or(p.as_str()))
            .collect(),
        _ => String::new(),
    };

    let tool_calls: Vec<ToolCall> = message
        .get("tool_calls")
        .and_then(Value::as_array)
        .map(|calls| {
            calls
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    let f = c.get("function")?;
                    let name = f.get("name")?.as_str()?.to_string();
                    let id = c
                        .get("id")
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("call_{i}"));
                    let input = match f.get("arguments") {
                        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
                        Some(Value::String(s)) => {
                            serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone()))
                        }
                        Some(Value::Null) | None => json!({}),
                        Some(other) => other.clone(),
                    };
                    Some(ToolCall { id, name, input })
                })
                .collect()
        })
        .unwrap_or_default();

    let finish = choice.get("finish_reason").and_then(Value::as_str);
    let stop_reason = match finish {
        Some("length") => StopReason::MaxTokens,
        _ if !tool_calls.is_empty() => StopReason::ToolUse,
        Some("stop") => StopReason::EndTurn,
        Some("tool_calls") | Some("function_call") => StopReason::ToolUse,
        _ => StopReason::Other,
    };

    let usage_v = v.get("usage").filter(|u| u.is_object());
    let num = |u: Option<&Value>, path: &[&str]| -> Option<u64> {
        let mut cur = u?;
        for p in path {
            cur = cur.get(*p)?;
        }
        cur.as_u64()
    };
    let cached = num(usage_v, &["prompt_tokens_details", "cached_tokens"]).unwrap_or(0);
    let prompt = num(usage_v, &["prompt_tokens"]).unwrap_or(estimated_input);
    let completion = num(usage_v, &["completion_tokens"]).unwrap_or_else(|| {
        estimate_tokens(&text)
            + tool_calls
                .iter()
                .map(|c| estimate_tokens(&c.name) + estimate_tokens(&c.input.to_string()))
                .sum::<u64>()
    });
    let usage = TokenUsage {
        input_tokens: prompt.saturating_sub(cached),
        output_tokens: completion,
        cache_read_tokens: cached,
        cache_write_tokens: 0,
    };

    let model = v
        .get("model")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);

    Ok(Turn {
        text,
        tool_calls,
        usage,
        stop_reason,
        model,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_come_from_openai_bodies_or_plain_text() {
        let body = r#"{"error":{"message":"Invalid model","type":"invalid_request_error","code":"model_not_found"}}"#;
        assert_eq!(
            error_message(body),
            "Invalid model (type invalid_request_error, code model_not_found)"
        );
        assert_eq!(
            error_message(r#"{"error":"model not loaded"}"#),
            "model not loaded"
        );
        assert_eq!(error_message("  Bad Gateway \n"), "Bad Gateway");
        assert_eq!(error_message(""), "(empty body)");
    }

    #[test]
    fn minimal_responses_parse() {
        let t = parse_turn(r#"{"choices":[{"message":{"content":"hi there"}}]}"#, 10).unwrap();
        assert_eq!(t.text, "hi there");
        assert_eq!(t.usage.input_tokens, 10);
        assert_eq!(t.usage.output_tokens, 2);
        assert_eq!(t.stop_reason, StopReason::Other);
        assert_eq!(t.model, None);
        assert!(parse_turn(r#"{"choices":[]}"#, 0).is_err());
        assert!(parse_turn("<html>", 0).is_err());
    }
}
