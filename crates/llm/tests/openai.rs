//! The OpenAI-compatible provider against a hand-written HTTP/1.1 server on
//! 127.0.0.1 that answers from a script (no network, no extra dependencies).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orch_core::{Role, RunId};
use orch_llm::openai::{CONTINUE_PROMPT, OpenAiOptions};
use orch_llm::retry::RetryPolicy;
use orch_llm::{CallMeta, Error, Message, OpenAiProvider, Provider, Request, StopReason, ToolSpec};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KEY: &str = "sk-test-SECRET-0123456789";
const BOUND: Duration = Duration::from_secs(10);

/// What the server does with the n-th request (the last one repeats).
#[derive(Clone)]
enum Reply {
    /// Status, extra headers, body.
    Http(u16, Vec<(&'static str, String)>, String),
    /// Close the connection without answering.
    Reset,
    /// Never answer.
    Hang,
}

fn ok(body: Value) -> Reply {
    Reply::Http(200, vec![], body.to_string())
}

/// A recorded request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Server {
    base_url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    async fn start(replies: Vec<Reply>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            let mut n = 0usize;
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let reply = replies[n.min(replies.len() - 1)].clone();
                n += 1;
                let seen = seen2.clone();
                tokio::spawn(async move { serve(sock, reply, seen).await });
            }
        });
        Server {
            base_url: format!("http://{addr}/v1"),
            seen,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Read one request (headers, then `content-length` bytes), record it, reply.
async fn serve(mut sock: TcpStream, reply: Reply, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
    seen.lock().unwrap().push(Seen {
        method,
        path,
        headers,
        body,
    });
    match reply {
        Reply::Reset => drop(sock),
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Reply::Http(status, extra, body) => {
            let mut out = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                body.len()
            );
            for (k, v) in extra {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            out.push_str(&body);
            let _ = sock.write_all(out.as_bytes()).await;
            let _ = sock.shutdown().await;
        }
    }
}

fn fast_retry(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        base: Duration::from_millis(1),
        max: Duration::from_secs(2),
    }
}

fn provider(server: &Server, key: Option<&str>, max_retries: u32) -> OpenAiProvider {
    OpenAiProvider::new(OpenAiOptions {
        base_url: server.base_url.clone(),
        api_key: key.map(str::to_string),
        model: "default-model".into(),
        timeout: Duration::from_secs(5),
        retry: fast_retry(max_retries),
    })
    .unwrap()
}

fn request() -> Request {
    Request {
        model: "gpt-4o-mini".into(),
        system: "You are a careful engineer.".into(),
        messages: vec![Message::user("Write hello world.")],
        max_tokens: 256,
        temperature: Some(0.2),
        tools: vec![],
        meta: CallMeta {
            run_id: RunId::generate(),
            task_id: "t1".into(),
            role: Role::BackendEngineer,
            attempt: 1,
            round: 0,
            step: 0,
            expected: vec![],
            gate: None,
        },
    }
}

fn write_file_tool() -> ToolSpec {
    ToolSpec {
        name: "write_file".into(),
        description: "Write a file".into(),
        input_schema: json!({
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"]
        }),
    }
}

fn text_reply(text: &str, finish: &str, prompt: u64, completion: u64) -> Reply {
    ok(json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish
        }],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    }))
}

async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("test took too long")
}

#[tokio::test]
async fn request_shape_and_bearer_only_with_a_key() {
    bounded(async {
        let server = Server::start(vec![text_reply("hi", "stop", 10, 1)]).await;
        let mut req = request();
        req.tools = vec![write_file_tool()];
        req.messages.push(Message::assistant("Which language?"));
        req.messages.push(Message::user("Rust."));
        provider(&server, Some(KEY), 0)
            .complete(&req)
            .await
            .unwrap();

        let seen = server.seen();
        assert_eq!(seen.len(), 1);
        let s = &seen[0];
        assert_eq!(s.method, "POST");
        assert_eq!(s.path, "/v1/chat/completions");
        assert_eq!(
            s.header("authorization"),
            Some(format!("Bearer {KEY}").as_str())
        );
        assert!(
            s.header("content-type")
                .unwrap()
                .starts_with("application/json")
        );
        let b = &s.body;
        assert_eq!(b["model"], "gpt-4o-mini");
        assert_eq!(b["max_tokens"], 256);
        assert_eq!(b["temperature"], json!(0.2));
        assert_eq!(b["stream"], false);
        assert!(b.get("max_completion_tokens").is_none());
        assert_eq!(
            b["messages"],
            json!([
                {"role": "system", "content": "You are a careful engineer."},
                {"role": "user", "content": "Write hello world."},
                {"role": "assistant", "content": "Which language?"},
                {"role": "user", "content": "Rust."},
            ])
        );
        assert_eq!(
            b["tools"],
            json!([{
                "type": "function",
                "function": {
                    "name": "write_file",
                    "description": "Write a file",
                    "parameters": write_file_tool().input_schema,
                }
            }])
        );

        // No key (a local server): no authorization header, no tools, no temperature.
        let server = Server::start(vec![text_reply("hi", "stop", 10, 1)]).await;
        let mut req = request();
        req.temperature = None;
        req.model = String::new();
        provider(&server, None, 0).complete(&req).await.unwrap();
        let s = &server.seen()[0];
        assert_eq!(s.header("authorization"), None);
        assert!(s.body.get("tools").is_none());
        assert!(s.body.get("temperature").is_none());
        assert_eq!(
            s.body["model"], "default-model",
            "options model when the request names none"
        );
    })
    .await
}

#[tokio::test]
async fn text_and_usage_are_parsed() {
    bounded(async {
        let server = Server::start(vec![ok(json!({
            "id": "chatcmpl-1",
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello, world!"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 120, "completion_tokens": 7, "total_tokens": 127,
                      "prompt_tokens_details": {"cached_tokens": 100}}
        }))])
        .await;
        let p = provider(&server, Some(KEY), 0);
        assert_eq!(p.name(), "openai");
        assert!(!p.is_scripted());
        assert_eq!(p.default_model(), "default-model");
        let r = p.complete(&request()).await.unwrap();
        assert_eq!(r.text, "Hello, world!");
        assert_eq!(r.stop_reason, StopReason::EndTurn);
        assert_eq!(r.model, "gpt-4o-mini-2024-07-18");
        assert!(r.tool_calls.is_empty());
        assert_eq!(r.usage.input_tokens, 20, "prompt_tokens minus cached");
        assert_eq!(r.usage.cache_read_tokens, 100);
        assert_eq!(r.usage.output_tokens, 7);
        assert_eq!(r.usage.cache_write_tokens, 0);
    })
    .await
}

#[tokio::test]
async fn minimal_local_server_response_works_with_estimated_usage() {
    bounded(async {
        // llama.cpp / Ollama style: no id, no model, no usage, no finish_reason.
        let server = Server::start(vec![ok(json!({
            "choices": [{"message": {"content": "Sure, here it is."}}]
        }))])
        .await;
        let req = request();
        let r = provider(&server, None, 0).complete(&req).await.unwrap();
        assert_eq!(r.text, "Sure, here it is.");
        assert_eq!(r.model, "gpt-4o-mini", "the requested model");
        assert_eq!(r.stop_reason, StopReason::Other);
        assert_eq!(
            r.usage.input_tokens,
            orch_llm::tokens::estimate_request(&req)
        );
        assert_eq!(
            r.usage.output_tokens,
            orch_llm::tokens::estimate_tokens("Sure, here it is.")
        );
        assert_eq!(r.usage.cache_read_tokens, 0);
    })
    .await
}

#[tokio::test]
async fn tool_calls_with_string_arguments_and_null_content() {
    bounded(async {
        let server = Server::start(vec![ok(json!({
            "id": "chatcmpl-2",
            "model": "gpt-4o",
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": null,
                    "tool_calls": [
                        {"id": "call_a", "type": "function",
                         "function": {"name": "write_file", "arguments": "{\"path\":\"main.rs\",\"content\":\"fn main() {}\"}"}},
                        {"type": "function",
                         "function": {"name": "write_file", "arguments": "{not json"}}
                    ]
                },
                "finish_reason": "tool_calls"
            }],
            "usage": {"prompt_tokens": 50, "completion_tokens": 20}
        }))])
        .await;
        let mut req = request();
        req.tools = vec![write_file_tool()];
        let r = provider(&server, Some(KEY), 0).complete(&req).await.unwrap();
        assert_eq!(r.text, "");
        assert_eq!(r.stop_reason, StopReason::ToolUse);
        assert_eq!(r.tool_calls.len(), 2);
        assert_eq!(r.tool_calls[0].id, "call_a");
        assert_eq!(r.tool_calls[0].name, "write_file");
        assert_eq!(
            r.tool_calls[0].input,
            json!({"path": "main.rs", "content": "fn main() {}"})
        );
        assert!(!r.tool_calls[1].id.is_empty(), "a missing id is generated");
        assert_eq!(r.tool_calls[1].input, json!("{not json"), "kept as a string");

        // Content missing entirely, Ollama-style finish_reason "stop".
        let server = Server::start(vec![ok(json!({
            "choices": [{"message": {"role": "assistant", "tool_calls": [
                {"id": "c1", "function": {"name": "write_file", "arguments": "{\"path\":\"a\",\"content\":\"b\"}"}}
            ]}, "finish_reason": "stop"}]
        }))])
        .await;
        let r = provider(&server, None, 0).complete(&req).await.unwrap();
        assert_eq!(r.text, "");
        assert_eq!(r.stop_reason, StopReason::ToolUse);
        assert_eq!(r.tool_calls[0].input, json!({"path": "a", "content": "b"}));
        assert!(r.usage.output_tokens > 0, "estimated");
    })
    .await
}

#[tokio::test]
async fn length_is_continued_and_concatenated() {
    bounded(async {
        let server = Server::start(vec![
            text_reply("Hello, wor", "length", 30, 5),
            text_reply("ld!", "stop", 40, 2),
        ])
        .await;
        let r = provider(&server, Some(KEY), 0)
            .complete(&request())
            .await
            .unwrap();
        assert_eq!(r.text, "Hello, world!");
        assert_eq!(r.stop_reason, StopReason::EndTurn);
        assert_eq!(r.usage.input_tokens, 70);
        assert_eq!(r.usage.output_tokens, 7);
        let seen = server.seen();
        assert_eq!(seen.len(), 2);
        let msgs = seen[1].body["messages"].as_array().unwrap().clone();
        assert_eq!(msgs.len(), 4);
        assert_eq!(
            msgs[2],
            json!({"role": "assistant", "content": "Hello, wor"})
        );
        assert_eq!(msgs[3], json!({"role": "user", "content": CONTINUE_PROMPT}));

        // At most 3 continuations: 4 requests, then the cut answer is returned.
        let server = Server::start(vec![text_reply("ab", "length", 1, 1)]).await;
        let r = provider(&server, None, 0)
            .complete(&request())
            .await
            .unwrap();
        assert_eq!(server.seen().len(), 4);
        assert_eq!(r.text, "abababab");
        assert_eq!(r.stop_reason, StopReason::MaxTokens);
        assert_eq!(r.usage.output_tokens, 4);
    })
    .await
}

#[tokio::test]
async fn rate_limit_with_retry_after_then_success() {
    bounded(async {
        let server = Server::start(vec![
            Reply::Http(
                429,
                vec![("retry-after", "0.3".into())],
                json!({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}).to_string(),
            ),
            text_reply("ok", "stop", 1, 1),
        ])
        .await;
        let started = Instant::now();
        let r = provider(&server, Some(KEY), 3)
            .complete(&request())
            .await
            .unwrap();
        assert_eq!(r.text, "ok");
        assert_eq!(server.seen().len(), 2);
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "retry-after honoured over the 1 ms backoff"
        );
    })
    .await
}

#[tokio::test]
async fn server_error_then_success() {
    bounded(async {
        let server = Server::start(vec![
            Reply::Http(500, vec![], "Internal Server Error".into()),
            text_reply("ok", "stop", 1, 1),
        ])
        .await;
        let r = provider(&server, None, 3)
            .complete(&request())
            .await
            .unwrap();
        assert_eq!(r.text, "ok");
        assert_eq!(server.seen().len(), 2);

        // Without retries the 500 (plain-text body) is Transient with the server's text.
        let server = Server::start(vec![Reply::Http(503, vec![], "model is loading".into())]).await;
        let err = provider(&server, None, 0)
            .complete(&request())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Transient { .. }), "{err:?}");
        assert!(err.to_string().contains("model is loading"), "{err}");
    })
    .await
}

#[tokio::test]
async fn connection_reset_then_success() {
    bounded(async {
        let server = Server::start(vec![Reply::Reset, text_reply("ok", "stop", 1, 1)]).await;
        let r = provider(&server, Some(KEY), 3)
            .complete(&request())
            .await
            .unwrap();
        assert_eq!(r.text, "ok");
        assert_eq!(server.seen().len(), 2);

        // Connection refused: transient too, and the key is not in the message.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let p = OpenAiProvider::new(OpenAiOptions {
            base_url: format!("http://{addr}/v1"),
            api_key: Some(KEY.into()),
            retry: RetryPolicy::none(),
            ..OpenAiOptions::default()
        })
        .unwrap();
        let err = p.complete(&request()).await.unwrap_err();
        assert!(matches!(err, Error::Transient { .. }), "{err:?}");
        assert!(!format!("{err} {err:?}").contains(KEY));
    })
    .await
}

#[tokio::test]
async fn timeout_is_transient() {
    bounded(async {
        let server = Server::start(vec![Reply::Hang]).await;
        let p = OpenAiProvider::new(OpenAiOptions {
            base_url: server.base_url.clone(),
            api_key: Some(KEY.into()),
            model: "m".into(),
            timeout: Duration::from_millis(200),
            retry: fast_retry(1),
        })
        .unwrap();
        let err = p.complete(&request()).await.unwrap_err();
        assert!(matches!(err, Error::Transient { .. }), "{err:?}");
        assert!(err.to_string().contains("timed out"), "{err}");
        assert_eq!(server.seen().len(), 2, "retried once");
    })
    .await
}

#[tokio::test]
async fn malformed_responses_are_transient() {
    bounded(async {
        for body in [
            "<html>oops</html>",
            r#"{"choices": []}"#,
            r#"{"object": "chat.completion"}"#,
        ] {
            let server = Server::start(vec![Reply::Http(200, vec![], body.to_string())]).await;
            let err = provider(&server, Some(KEY), 0)
                .complete(&request())
                .await
                .unwrap_err();
            assert!(matches!(err, Error::Transient { .. }), "{body}: {err:?}");
            assert!(err.to_string().contains("malformed response"), "{err}");
        }
        // And retried into a success.
        let server = Server::start(vec![
            Reply::Http(200, vec![], "{\"choi".into()),
            text_reply("ok", "stop", 1, 1),
        ])
        .await;
        let r = provider(&server, Some(KEY), 2)
            .complete(&request())
            .await
            .unwrap();
        assert_eq!(r.text, "ok");
    })
    .await
}

#[tokio::test]
async fn unauthorized_is_fatal_once_and_hides_the_key() {
    bounded(async {
        // The server echoes the key, as some do; it must still not leak.
        let server = Server::start(vec![Reply::Http(
            401,
            vec![],
            json!({"error": {"message": format!("Incorrect API key provided: {KEY}."),
                             "type": "invalid_request_error", "code": "invalid_api_key"}})
            .to_string(),
        )])
        .await;
        let err = provider(&server, Some(KEY), 4)
            .complete(&request())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Fatal { .. }), "{err:?}");
        assert_eq!(server.seen().len(), 1, "never retried");
        let text = format!("{err} {err:?}");
        assert!(text.contains("Incorrect API key provided"), "{text}");
        assert!(text.contains("401"), "{text}");
        assert!(!text.contains(KEY), "{text}");

        // 404 with a plain-text body (a local server): Fatal with the text.
        let server = Server::start(vec![Reply::Http(
            404,
            vec![],
            "model 'llama9' not found".into(),
        )])
        .await;
        let err = provider(&server, None, 4)
            .complete(&request())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Fatal { .. }), "{err:?}");
        assert!(err.to_string().contains("model 'llama9' not found"));
        assert_eq!(server.seen().len(), 1);
    })
    .await
}

#[test]
fn debug_hides_the_key() {
    let opts = OpenAiOptions {
        api_key: Some(KEY.into()),
        ..OpenAiOptions::default()
    };
    let p = OpenAiProvider::new(opts.clone()).unwrap();
    for text in [format!("{opts:?}"), format!("{p:?}"), format!("{p:#?}")] {
        assert!(!text.contains(KEY), "{text}");
        assert!(text.contains("***"), "{text}");
    }
    let none = format!("{:?}", OpenAiOptions::default());
    assert!(none.contains("api_key: None"), "{none}");
}

#[test]
fn options_from_an_environment() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    let err = OpenAiOptions::from_lookup(env(&[("LLM_MODEL", "x")])).unwrap_err();
    assert!(matches!(err, Error::Config(_)));
    assert!(err.to_string().contains("OPENAI_API_KEY"));
    assert!(err.to_string().contains("OPENAI_BASE_URL"));
    // Empty values count as unset.
    assert!(OpenAiOptions::from_lookup(env(&[("OPENAI_API_KEY", " ")])).is_err());

    let o = OpenAiOptions::from_lookup(env(&[("OPENAI_API_KEY", KEY)])).unwrap();
    assert_eq!(o.base_url, "https://api.openai.com/v1");
    assert_eq!(o.api_key.as_deref(), Some(KEY));
    assert_eq!(o.model, "gpt-4o");
    assert_eq!(o.timeout, Duration::from_secs(300));

    let o = OpenAiOptions::from_lookup(env(&[
        ("OPENAI_BASE_URL", "http://localhost:11434/v1"),
        ("LLM_MODEL", "qwen2.5-coder"),
        ("LLM_TIMEOUT_SECONDS", "42"),
    ]))
    .unwrap();
    assert_eq!(o.api_key, None);
    assert_eq!(o.model, "qwen2.5-coder");
    assert_eq!(o.timeout, Duration::from_secs(42));
    assert!(OpenAiProvider::new(o).is_ok());

    let err = OpenAiOptions::from_lookup(env(&[
        ("OPENAI_BASE_URL", "http://localhost:11434/v1"),
        ("LLM_TIMEOUT_SECONDS", "soon"),
    ]))
    .unwrap_err();
    assert!(matches!(err, Error::Config(_)));

    let err = OpenAiProvider::new(OpenAiOptions {
        base_url: "localhost:11434".into(),
        ..OpenAiOptions::default()
    })
    .unwrap_err();
    assert!(matches!(err, Error::Config(_)));
}
