//! LLM providers: the [`Provider`] trait the agents call, the request and
//! response types, and the implementations: [`anthropic`] (the Messages API),
//! [`openai`] (any OpenAI-compatible chat completions server: OpenAI, Ollama,
//! vLLM, a llama.cpp server), and [`scripted`] (deterministic responses from
//! a fixture, for tests, benchmarks and dry runs; always labelled "scripted").
//!
//! Parts: this file (types, trait, [`Error`] with its retry meaning, prices),
//! [`retry`] (backoff with jitter and `retry-after` for the HTTP clients),
//! `tokens` (a token estimate used before a call; the provider's usage is the
//! truth). The HTTP clients are thin, on reqwest: we need exact control of
//! `cache_control`, tool blocks and usage.
//!
//! This crate depends on `orch-core` only; it knows nothing of stores,
//! brokers or the engine.

use std::time::Duration;

use async_trait::async_trait;
use orch_core::{ExpectedArtifact, GateKind, Role, RunId};
use serde::{Deserialize, Serialize};

pub mod anthropic;
pub mod openai;
pub mod retry;
pub mod scripted;
pub mod tokens;

pub use anthropic::AnthropicProvider;
pub use openai::OpenAiProvider;
pub use scripted::ScriptedProvider;

/// Provider errors, each saying whether a retry can help.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Worth retrying (429, 529/overloaded, 5xx, reset, timeout), after `retry_after` if given.
    #[error("{provider} transient error: {message}")]
    Transient {
        provider: String,
        message: String,
        retry_after: Option<Duration>,
    },
    /// Retrying will not help (400, 401, 403, 404, a refused request).
    #[error("{provider} error: {message}")]
    Fatal { provider: String, message: String },
    /// A fixture or configuration problem, found before any call.
    #[error("{0}")]
    Config(String),
    /// The run's budget would be exceeded; the call was not made. Not retryable.
    #[error("budget exceeded: {0}")]
    Budget(String),
}

impl Error {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Transient { .. })
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who said a conversation turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageRole {
    User,
    Assistant,
}

/// One conversation turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: MessageRole,
    pub content: String,
}

impl Message {
    pub fn user(content: impl Into<String>) -> Self {
        Message {
            role: MessageRole::User,
            content: content.into(),
        }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Message {
            role: MessageRole::Assistant,
            content: content.into(),
        }
    }
}

/// Where a call comes from. Providers may use it (the scripted provider picks
/// its response by role, task, round and attempt); real providers ignore it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallMeta {
    pub run_id: RunId,
    pub task_id: String,
    pub role: Role,
    pub attempt: u32,
    /// Rework round of the task (0 for planned tasks).
    pub round: u32,
    /// Step within the attempt (0 for the first call; repair turns count up).
    pub step: u32,
    pub expected: Vec<ExpectedArtifact>,
    pub gate: Option<GateKind>,
}

/// A tool the model may call (name, description, JSON schema of its input).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub input_schema: serde_json::Value,
}

/// One completion request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub model: String,
    pub system: String,
    pub messages: Vec<Message>,
    pub max_tokens: u32,
    pub temperature: Option<f32>,
    pub tools: Vec<ToolSpec>,
    pub meta: CallMeta,
}

/// A tool call the model asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub input: serde_json::Value,
}

/// Why the model stopped answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    EndTurn,
    MaxTokens,
    ToolUse,
    StopSequence,
    Other,
}

/// Token usage as the provider reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
}

/// One completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub usage: TokenUsage,
    pub stop_reason: StopReason,
    /// The model that answered.
    pub model: String,
}

impl Response {
    /// Replace every NUL character (U+0000) in the text and in the strings of
    /// the tool calls' inputs with U+FFFD; returns how many there were.
    /// PostgreSQL's `TEXT` cannot hold NUL, so an answer with one could not
    /// be stored: the attempt would fail again on every retry and its paid
    /// answer would be lost. No real answer means a NUL, so nothing of value
    /// is lost by replacing it.
    pub fn scrub_nul(&mut self) -> usize {
        fn scrub(s: &mut String) -> usize {
            let n = s.matches('\0').count();
            if n > 0 {
                *s = s.replace('\0', "\u{FFFD}");
            }
            n
        }
        fn scrub_value(v: &mut serde_json::Value) -> usize {
            match v {
                serde_json::Value::String(s) => scrub(s),
                serde_json::Value::Array(items) => items.iter_mut().map(scrub_value).sum(),
                serde_json::Value::Object(fields) => fields
                    .iter_mut()
                    .map(|(_, v)| scrub_value(v))
                    .sum::<usize>(),
                _ => 0,
            }
        }
        scrub(&mut self.text)
            + self
                .tool_calls
                .iter_mut()
                .map(|c| scrub_value(&mut c.input))
                .sum::<usize>()
    }
}

/// A source of completions.
#[async_trait]
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// `scripted`, `anthropic`, `openai`.
    fn name(&self) -> &str;
    /// True for the scripted provider: output and events must say so.
    fn is_scripted(&self) -> bool;
    /// The model used when a request names none.
    fn default_model(&self) -> &str;
    async fn complete(&self, request: &Request) -> Result<Response>;
}

/// A provider that keeps a copy of every request it is sent, then passes it
/// on to `inner`: for tests that compare what a provider received with what
/// the run recorded. Its name and labels are `inner`'s.
#[derive(Debug)]
pub struct Recording<P> {
    pub inner: P,
    requests: std::sync::Mutex<Vec<Request>>,
}

impl<P> Recording<P> {
    pub fn new(inner: P) -> Self {
        Recording {
            inner,
            requests: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The requests received so far, oldest first.
    pub fn requests(&self) -> Vec<Request> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[async_trait]
impl<P: Provider> Provider for Recording<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn is_scripted(&self) -> bool {
        self.inner.is_scripted()
    }
    fn default_model(&self) -> &str {
        self.inner.default_model()
    }
    async fn complete(&self, request: &Request) -> Result<Response> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(request.clone());
        self.inner.complete(request).await
    }
}

/// Price of a model in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    pub cache_read: f64,
    pub cache_write: f64,
}

/// Known prices (USD per million tokens). Unknown models cost 0 and say so.
pub fn price_of(model: &str) -> Option<Price> {
    let m = model.to_ascii_lowercase();
    let p = |input: f64, output: f64| Price {
        input,
        output,
        cache_read: input * 0.1,
        cache_write: input * 1.25,
    };
    if m == "scripted" || m.starts_with("scripted") {
        Some(Price {
            input: 0.0,
            output: 0.0,
            cache_read: 0.0,
            cache_write: 0.0,
        })
    } else if m.contains("opus-4-5") || m.contains("opus-4.5") {
        Some(p(5.0, 25.0))
    } else if m.contains("opus") {
        Some(p(15.0, 75.0))
    } else if m.contains("sonnet") {
        Some(p(3.0, 15.0))
    } else if m.contains("haiku-4") || m.contains("haiku-4-5") {
        Some(p(1.0, 5.0))
    } else if m.contains("haiku") {
        Some(p(0.8, 4.0))
    } else if m.starts_with("gpt-4o-mini") {
        Some(p(0.15, 0.6))
    } else if m.starts_with("gpt-4o") {
        Some(p(2.5, 10.0))
    } else if m.starts_with("gpt-4.1-mini") {
        Some(p(0.4, 1.6))
    } else if m.starts_with("gpt-4.1") {
        Some(p(2.0, 8.0))
    } else {
        None
    }
}

/// Cost in USD of `usage` on `model` (0 for unknown models).
pub fn cost_usd(model: &str, usage: &TokenUsage) -> f64 {
    let Some(p) = price_of(model) else { return 0.0 };
    (usage.input_tokens as f64 * p.input
        + usage.output_tokens as f64 * p.output
        + usage.cache_read_tokens as f64 * p.cache_read
        + usage.cache_write_tokens as f64 * p.cache_write)
        / 1_000_000.0
}

/// The parts of a [`Request`] that decide its response, in a fixed order.
#[derive(Serialize)]
struct HashedRequest<'a> {
    model: &'a str,
    system: &'a str,
    messages: &'a [Message],
    max_tokens: u32,
    temperature: Option<f32>,
    tools: &'a [ToolSpec],
}

/// Hex SHA-256 of a request's prompt (model, system, messages, max tokens,
/// temperature, tools; not its [`CallMeta`]), the journal's look-up key.
pub fn request_hash(req: &Request) -> String {
    use sha2::{Digest, Sha256};
    let canonical = HashedRequest {
        model: &req.model,
        system: &req.system,
        messages: &req.messages,
        max_tokens: req.max_tokens,
        temperature: req.temperature,
        tools: &req.tools,
    };
    /// The JSON text goes straight into the hash: a prompt is tens of kB.
    struct Hashing(Sha256);
    impl std::io::Write for Hashing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut hashing = Hashing(Sha256::new());
    // Serializing plain strings, numbers and `Value`s cannot fail, nor can
    // writing into a hash.
    let _ = serde_json::to_writer(&mut hashing, &canonical);
    let digest = hashing.0.finalize();
    let mut hex = String::with_capacity(64);
    for b in digest {
        // Writing into a `String` cannot fail.
        let _ = std::fmt::Write::write_fmt(&mut hex, format_args!("{b:02x}"));
    }
    hex
}

#[cfg(test)]
mod hash_tests {
    use super::*;

    #[test]
    fn nul_characters_are_replaced_in_text_and_tool_inputs() {
        let mut r = Response {
            text: "a\0b\0".into(),
            tool_calls: vec![ToolCall {
                id: "1".into(),
                name: "write_file".into(),
                input: serde_json::json!({"path": "x", "content": ["c\0", {"d": "\0"}], "n": 1}),
            }],
            usage: TokenUsage::default(),
            stop_reason: StopReason::EndTurn,
            model: "m".into(),
        };
        assert_eq!(r.scrub_nul(), 4);
        assert_eq!(r.text, "a\u{FFFD}b\u{FFFD}");
        assert_eq!(
            r.tool_calls[0].input,
            serde_json::json!({"path": "x", "content": ["c\u{FFFD}", {"d": "\u{FFFD}"}], "n": 1})
        );
        assert_eq!(r.scrub_nul(), 0, "nothing left to replace");
    }

    fn request(attempt: u32, text: &str) -> Request {
        Request {
            model: "m".into(),
            system: "s".into(),
            messages: vec![Message::user(text)],
            max_tokens: 100,
            temperature: None,
            tools: vec![],
            meta: CallMeta {
                run_id: RunId("r".into()),
                task_id: "t".into(),
                role: Role::TechLead,
                attempt,
                round: 0,
                step: 0,
                expected: vec![],
                gate: None,
            },
        }
    }

    #[test]
    fn hash_ignores_meta_but_not_the_prompt() {
        let a = request_hash(&request(1, "hi"));
        assert_eq!(a.len(), 64);
        assert_eq!(a, request_hash(&request(2, "hi")));
        assert_ne!(a, request_hash(&request(1, "ho")));
    }

    /// Journals written before the hash was streamed must still match: it
    /// is the SHA-256 of the canonical request's JSON text.
    #[test]
    fn hash_is_the_sha256_of_the_canonical_json() {
        use sha2::{Digest, Sha256};
        let r = request(1, "quotes \" and ünïcode\n");
        let canonical = HashedRequest {
            model: &r.model,
            system: &r.system,
            messages: &r.messages,
            max_tokens: r.max_tokens,
            temperature: r.temperature,
            tools: &r.tools,
        };
        let text = serde_json::to_vec(&canonical).unwrap();
        let expected: String = Sha256::digest(&text)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(request_hash(&r), expected);
    }
}
