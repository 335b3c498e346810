//! The Anthropic provider against a local HTTP/1.1 server speaking the
//! Messages API wire format (no network).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orch_core::{Role, RunId};
use orch_llm::anthropic::AnthropicOptions;
use orch_llm::retry::RetryPolicy;
use orch_llm::{
    AnthropicProvider, CallMeta, Error, Message, Provider, Request, StopReason, ToolSpec,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KEY: &str = "sk-ant-test-SECRET-1234567890";

/// What the server does with one request.
#[derive(Clone)]
enum Reply {
    /// Status, extra headers, body.
    Http(u16, Vec<(&'static str, String)>, String),
    /// Close the socket without answering.
    Close,
    /// Sleep, then answer 200 with this body.
    Slow(Duration, String),
}

fn ok(body: Value) -> Reply {
    Reply::Http(200, vec![], body.to_string())
}

fn error_reply(status: u16, kind: &str, message: &str) -> Reply {
    Reply::Http(
        status,
        vec![],
        json!({"type": "error", "error": {"type": kind, "message": message}}).to_string(),
    )
}

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Value,
}

struct Server {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    /// Request n gets `replies[n]` (the last one repeats).
    async fn start(replies: Vec<Reply>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen2.clone();
                let replies = replies.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, seen, replies).await;
                });
            }
        });
        Server { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Serve requests on one connection until the client or the reply closes it.
async fn serve(
    mut stream: TcpStream,
    seen: Arc<Mutex<Vec<Seen>>>,
    replies: Vec<Reply>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        // Headers.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let mut start = lines.next().unwrap_or_default().split(' ');
        let method = start.next().unwrap_or_default().to_string();
        let path = start.next().unwrap_or_default().to_string();
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
        buf.drain(..head_end + len);
        let index = {
            let mut seen = seen.lock().unwrap();
            seen.push(Seen {
                method,
                path,
                headers,
                body,
            });
            seen.len() - 1
        };
        let reply = replies[index.min(replies.len() - 1)].clone();
        let (status, extra, body) = match reply {
            Reply::Close => return Ok(()),
            Reply::Http(status, extra, body) => (status, extra, body),
            Reply::Slow(wait, body) => {
                tokio::time::sleep(wait).await;
                (200, vec![], body)
            }
        };
        let mut out = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (k, v) in extra {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.push_str(&body);
        stream.write_all(out.as_bytes()).await?;
        stream.flush().await?;
    }
}

fn fast_retry(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        base: Duration::from_millis(1),
        max: Duration::from_millis(50),
    }
}

fn provider(server: &Server, retry: RetryPolicy, timeout: Duration) -> AnthropicProvider {
    AnthropicProvider::new(AnthropicOptions {
        api_key: KEY.to_string(),
        base_url: format!("{}/", server.url),
        model: "claude-test-default".to_string(),
        timeout,
        retry,
        version: "2023-06-01".to_string(),
    })
    .unwrap()
}

fn request() -> Request {
    Request {
        model: String::new(),
        system: "You are the tech lead.".to_string(),
        messages: vec![
            Message::user("Goal: a TODO app"),
            Message::assistant("Noted."),
            Message::user("Write the plan."),
        ],
        max_tokens: 1024,
        temperature: Some(0.25),
        tools: vec![],
        meta: CallMeta {
            run_id: RunId("r".into()),
            task_id: "plan".into(),
            role: Role::TechLead,
            attempt: 1,
            round: 0,
            step: 0,
            expected: vec![],
            gate: None,
        },
    }
}

fn text_answer(text: &str, stop: &str, usage: Value) -> Value {
    json!({
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-20250514",
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop,
        "stop_sequence": null,
        "usage": usage,
    })
}

fn simple_answer(text: &str) -> Reply {
    ok(text_answer(
        text,
        "end_turn",
        json!({"input_tokens": 10, "output_tokens": 5}),
    ))
}

/// Every test is bounded in time.
async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("test took longer than 10 s")
}

const LONG: Duration = Duration::from_secs(5);

#[tokio::test]
async fn request_has_the_wire_shape_and_text_and_usage_are_parsed() {
    bounded(async {
        let server = Server::start(vec![ok(text_answer(
            "Hello, ",
            "end_turn",
            json!({
                "input_tokens": 12,
                "output_tokens": 7,
                "cache_read_input_tokens": 1000,
                "cache_creation_input_tokens": 200,
            }),
        ))])
        .await;
        let p = provider(&server, fast_retry(0), LONG);
        assert_eq!(p.name(), "anthropic");
        assert!(!p.is_scripted());
        assert_eq!(p.default_model(), "claude-test-default");

        let mut req = request();
        req.model = "claude-haiku-4-5".to_string();
        let out = p.complete(&req).await.unwrap();
        assert_eq!(out.text, "Hello, ");
        assert_eq!(out.stop_reason, StopReason::EndTurn);
        assert_eq!(out.model, "claude-sonnet-4-20250514");
        assert!(out.tool_calls.is_empty());
        assert_eq!(out.usage.input_tokens, 12);
        assert_eq!(out.usage.output_tokens, 7);
        assert_eq!(out.usage.cache_read_tokens, 1000);
        assert_eq!(out.usage.cache_write_tokens, 200);

        let seen = server.seen();
        assert_eq!(seen.len(), 1);
        let s = &seen[0];
        assert_eq!(s.method, "POST");
        assert_eq!(s.path, "/v1/messages");
        assert_eq!(s.headers.get("x-api-key").map(String::as_str), Some(KEY));
        assert_eq!(
            s.headers.get("anthropic-version").map(String::as_str),
            Some("2023-06-01")
        );
        assert_eq!(
            s.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
        let b = &s.body;
        assert_eq!(b["model"], "claude-haiku-4-5");
        assert_eq!(b["max_tokens"], 1024);
        assert_eq!(b["temperature"], 0.25);
        assert_eq!(
            b["system"],
            json!([{
                "type": "text",
                "text": "You are the tech lead.",
                "cache_control": {"type": "ephemeral"},
            }])
        );
        assert_eq!(
            b["messages"],
            json!([
                {"role": "user", "content": "Goal: a TODO app"},
                {"role": "assistant", "content": "Noted."},
                {"role": "user", "content": "Write the plan."},
            ])
        );
        assert!(b.get("tools").is_none(), "no tools, no tools field");
    })
    .await;
}

#[tokio::test]
async fn default_model_is_used_and_missing_usage_fields_are_zero() {
    bounded(async {
        let server = Server::start(vec![ok(json!({
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            "stop_reason": "stop_sequence",
            "usage": {"input_tokens": 3, "output_tokens": 1},
        }))])
        .await;
        let p = provider(&server, fast_retry(0), LONG);
        let mut req = request();
        req.temperature = None;
        let out = p.complete(&req).await.unwrap();
        assert_eq!(out.text, "ab");
        assert_eq!(out.stop_reason, StopReason::StopSequence);
        assert_eq!(out.model, "claude-test-default", "no model in the answer");
        assert_eq!(out.usage.cache_read_tokens, 0);
        assert_eq!(out.usage.cache_write_tokens, 0);
        let b = &server.seen()[0].body;
        assert_eq!(b["model"], "claude-test-default");
        assert!(b.get("temperature").is_none());
    })
    .await;
}

#[tokio::test]
async fn tools_are_sent_and_tool_use_blocks_parsed() {
    bounded(async {
        let server = Server::start(vec![ok(json!({
            "id": "msg_02",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-20250514",
            "content": [
                {"type": "text", "text": "Let me read it."},
                {"type": "tool_use", "id": "toolu_01", "name": "read_file",
                 "input": {"path": "src/main.rs"}},
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 20, "output_tokens": 9},
        }))])
        .await;
        let p = provider(&server, fast_retry(0), LONG);
        let mut req = request();
        req.tools = vec![
            ToolSpec {
                name: "list_files".into(),
                description: "List files".into(),
                input_schema: json!({"type": "object", "properties": {}}),
            },
            ToolSpec {
                name: "read_file".into(),
                description: "Read a file".into(),
                input_schema: json!({"type": "object",
                    "properties": {"path": {"type": "string"}}, "required": ["path"]}),
            },
        ];
        let out = p.complete(&req).await.unwrap();
        assert_eq!(out.stop_reason, StopReason::ToolUse);
        assert_eq!(out.text, "Let me read it.");
        assert_eq!(out.tool_calls.len(), 1);
        assert_eq!(out.tool_calls[0].id, "toolu_01");
        assert_eq!(out.tool_calls[0].name, "read_file");
        assert_eq!(out.tool_calls[0].input, json!({"path": "src/main.rs"}));

        let tools = server.seen()[0].body["tools"].clone();
        assert_eq!(tools.as_array().unwrap().len(), 2);
        assert_eq!(tools[0]["name"], "list_files");
        assert_eq!(tools[0]["description"], "List files");
        assert_eq!(tools[0]["input_schema"]["type"], "object");
        assert!(tools[0].get("cache_control").is_none());
        assert_eq!(tools[1]["name"], "read_file");
        assert_eq!(tools[1]["cache_control"], json!({"type": "ephemeral"}));
    })
    .await;
}

#[tokio::test]
async fn max_tokens_is_continued_with_an_assistant_prefill() {
    bounded(async {
        let server = Server::start(vec![
            ok(text_answer(
                "The plan: step one, ",
                "max_tokens",
                json!({"input_tokens": 100, "output_tokens": 50, "cache_read_input_tokens": 80}),
            )),
            ok(text_answer(
                "step two.",
                "end_turn",
                json!({"input_tokens": 150, "output_tokens": 4, "cache_read_input_tokens": 80}),
            )),
        ])
        .await;
        let p = provider(&server, fast_retry(0), LONG);
        let out = p.complete(&request()).await.unwrap();
        // The prefill may not end in whitespace: the model continues the trimmed text.
        assert_eq!(out.text, "The plan: step one,step two.");
        assert_eq!(out.stop_reason, StopReason::EndTurn);
        assert_eq!(out.usage.input_tokens, 250);
        assert_eq!(out.usage.output_tokens, 54);
        assert_eq!(out.usage.cache_read_tokens, 160);

        let seen = server.seen();
        assert_eq!(seen.len(), 2);
        let first = seen[0].body["messages"].as_array().unwrap().clone();
        let second = seen[1].body["messages"].as_array().unwrap().clone();
        assert_eq!(first.len(), 3);
        assert_eq!(second.len(), 4);
        assert_eq!(&second[..3], &first[..]);
        assert_eq!(
            second[3],
            json!({"role": "assistant", "content": "The plan: step one,"})
        );
        assert_eq!(seen[1].body["system"], seen[0].body["system"]);
    })
    .await;
}

#[tokio::test]
async fn continuations_are_capped_at_three() {
    bounded(async {
        let server = Server::start(vec![ok(text_answer(
            "x",
            "max_tokens",
            json!({"input_tokens": 1, "output_tokens": 1}),
        ))])
        .await;
        let p = provider(&server, fast_retry(0), LONG);
        let out = p.complete(&request()).await.unwrap();
        assert_eq!(out.text, "xxxx");
        assert_eq!(out.stop_reason, StopReason::MaxTokens);
        assert_eq!(out.usage.output_tokens, 4);
        let seen = server.seen();
        assert_eq!(seen.len(), 4, "first call + 3 continuations");
        assert_eq!(seen[3].body["messages"][3]["content"], "xxx");
    })
    .await;
}

#[tokio::test]
async fn rate_limit_with_retry_after_is_retried() {
    bounded(async {
        let server = Server::start(vec![
            Reply::Http(
                429,
                vec![("retry-after", "0".to_string())],
                json!({"type": "error", "error": {"type": "rate_limit_error",
                    "message": "Number of request tokens has exceeded your per-minute rate limit"}})
                .to_string(),
            ),
            simple_answer("done"),
        ])
        .await;
        // A default-sized base: only the server's retry-after: 0 keeps this fast.
        let retry = RetryPolicy {
            max_retries: 2,
            base: Duration::from_secs(30),
            max: Duration::from_secs(60),
        };
        let p = provider(&server, retry, LONG);
        let out = p.complete(&request()).await.unwrap();
        assert_eq!(out.text, "done");
        assert_eq!(server.seen().len(), 2);
    })
    .await;
}

#[tokio::test]
async fn overloaded_and_server_errors_are_retried() {
    for status in [529, 500, 502, 503, 504] {
        bounded(async {
            let server = Server::start(vec![
                error_reply(status, "overloaded_error", "Overloaded"),
                simple_answer("ok"),
            ])
            .await;
            let p = provider(&server, fast_retry(3), LONG);
            let out = p.complete(&request()).await.unwrap();
            assert_eq!(out.text, "ok", "status {status}");
            assert_eq!(server.seen().len(), 2, "status {status}");
        })
        .await;
    }
}

#[tokio::test]
async fn transient_errors_carry_the_message_after_retries_run_out() {
    bounded(async {
        let server = Server::start(vec![error_reply(529, "overloaded_error", "Overloaded")]).await;
        let p = provider(&server, fast_retry(2), LONG);
        let err = p.complete(&request()).await.unwrap_err();
        assert!(err.is_retryable());
        assert!(
            err.to_string().contains("529 overloaded_error: Overloaded"),
            "{err}"
        );
        assert_eq!(server.seen().len(), 3);
    })
    .await;
}

#[tokio::test]
async fn connection_reset_is_retried() {
    bounded(async {
        let server = Server::start(vec![Reply::Close, simple_answer("after reset")]).await;
        let p = provider(&server, fast_retry(2), LONG);
        let out = p.complete(&request()).await.unwrap();
        assert_eq!(out.text, "after reset");
        assert_eq!(server.seen().len(), 2);
    })
    .await;
}

#[tokio::test]
async fn connection_refused_is_transient() {
    bounded(async {
        // Bind then drop: nothing listens on this port any more.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let p = AnthropicProvider::new(AnthropicOptions {
            base_url: url,
            timeout: Duration::from_secs(2),
            retry: fast_retry(1),
            ..AnthropicOptions::new(KEY)
        })
        .unwrap();
        let err = p.complete(&request()).await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(!err.to_string().contains(KEY));
    })
    .await;
}

#[tokio::test]
async fn timeout_is_transient_after_retries() {
    bounded(async {
        let server = Server::start(vec![Reply::Slow(
            Duration::from_secs(3),
            text_answer("late", "end_turn", json!({})).to_string(),
        )])
        .await;
        let p = provider(&server, fast_retry(1), Duration::from_millis(200));
        let started = std::time::Instant::now();
        let err = p.complete(&request()).await.unwrap_err();
        assert!(
            matches!(&err, Error::Transient { message, .. } if message.contains("timeout")),
            "{err}"
        );
        assert_eq!(server.seen().len(), 2, "first try + 1 retry");
        assert!(started.elapsed() < Duration::from_secs(3));
    })
    .await;
}

#[tokio::test]
async fn malformed_success_bodies_are_transient() {
    bounded(async {
        let server = Server::start(vec![
            Reply::Http(200, vec![], "{not json".to_string()),
            ok(json!({"type": "message", "stop_reason": "end_turn"})),
        ])
        .await;
        let p = provider(&server, fast_retry(1), LONG);
        let err = p.complete(&request()).await.unwrap_err();
        assert!(
            matches!(&err, Error::Transient { message, .. } if message.contains("malformed response")),
            "{err}"
        );
        assert_eq!(server.seen().len(), 2, "retried once, still malformed");

        let server = Server::start(vec![
            Reply::Http(200, vec![], "<html>gateway</html>".to_string()),
            simple_answer("fine"),
        ])
        .await;
        let p = provider(&server, fast_retry(1), LONG);
        assert_eq!(p.complete(&request()).await.unwrap().text, "fine");
    })
    .await;
}

#[tokio::test]
async fn unauthorized_is_fatal_not_retried_and_hides_the_key() {
    bounded(async {
        let server = Server::start(vec![
            error_reply(401, "authentication_error", "invalid x-api-key"),
            simple_answer("never"),
        ])
        .await;
        let p = provider(&server, fast_retry(3), LONG);
        let err = p.complete(&request()).await.unwrap_err();
        assert!(matches!(err, Error::Fatal { .. }), "{err:?}");
        assert!(!err.is_retryable());
        let text = err.to_string();
        assert!(
            text.contains("401 authentication_error: invalid x-api-key"),
            "{text}"
        );
        assert!(!text.contains(KEY), "{text}");
        assert!(!format!("{err:?}").contains(KEY));
        assert_eq!(server.seen().len(), 1, "not retried");
    })
    .await;
}

#[tokio::test]
async fn client_errors_are_fatal_and_an_echoed_key_is_scrubbed() {
    for status in [400, 403, 404, 413] {
        bounded(async {
            let server = Server::start(vec![error_reply(
                status,
                "invalid_request_error",
                &format!("bad request from key {KEY}"),
            )])
            .await;
            let p = provider(&server, fast_retry(3), LONG);
            let err = p.complete(&request()).await.unwrap_err();
            assert!(matches!(err, Error::Fatal { .. }), "{status}: {err:?}");
            let text = err.to_string();
            assert!(
                text.contains(&format!("{status} invalid_request_error")),
                "{text}"
            );
            assert!(!text.contains(KEY), "{text}");
            assert_eq!(server.seen().len(), 1);
        })
        .await;
    }
}

#[tokio::test]
async fn debug_output_hides_the_key() {
    let p = AnthropicProvider::new(AnthropicOptions::new(KEY)).unwrap();
    let dbg = format!("{p:?}");
    assert!(!dbg.contains(KEY), "{dbg}");
    assert!(dbg.contains("***"), "{dbg}");
    assert!(dbg.contains("api.anthropic.com"), "{dbg}");
    let dbg = format!("{:#?}", p.options());
    assert!(!dbg.contains(KEY), "{dbg}");
}

#[test]
fn empty_key_is_a_config_error() {
    let err = AnthropicProvider::new(AnthropicOptions::new("")).unwrap_err();
    assert!(matches!(err, Error::Config(_)));
    assert!(err.to_string().contains("ANTHROPIC_API_KEY"), "{err}");
}
