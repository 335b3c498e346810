//! A whole `sdlc` run of the real binary through each provider's wire format
//! — Anthropic Messages and OpenAI-compatible chat completions — against a
//! local server on 127.0.0.1 that answers like the service would, including
//! one overloaded answer to be retried. The API key must never reach the
//! database.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const GOAL: &str = "Build a small CRUD app for managing TODO items";
const KEY: &str = "sk-test-key-do-not-leak-7f3a";

#[derive(Clone, Copy, PartialEq)]
enum Wire {
    Anthropic,
    OpenAi,
}

/// What the fake model answers: every expected artifact, with enough text to
/// pass validation; reviews pass.
fn answer(user: &str) -> String {
    let expected = user.split("## Expected output").nth(1).unwrap_or("");
    let mut out = String::new();
    for line in expected.lines() {
        let Some(rest) = line.strip_prefix("- `") else {
            continue;
        };
        let Some((name, rest)) = rest.split_once('`') else {
            continue;
        };
        let kind = rest.split('`').nth(1).unwrap_or("document");
        let body = format!(
            "# {name}\n\nThis {kind} for the TODO app covers creating, listing, updating and deleting items, with titles of 1 to 200 characters, validation on the server, clear error messages, and tests for each endpoint. It follows the upstream artifacts and the acceptance criteria.\n"
        );
        if kind == "code" {
            out.push_str(&format!("<artifact name=\"{name}\" type=\"code\" path=\"src/{name}.py\">\nprint('todo')\n</artifact>\n"));
        } else if kind == "review" {
            out.push_str(&format!(
                "<artifact name=\"{name}\" type=\"review\">\n{body}\n{{\"verdict\": \"PASS\", \"findings\": []}}\n</artifact>\n"
            ));
        } else {
            out.push_str(&format!(
                "<artifact name=\"{name}\" type=\"{kind}\">\n{body}</artifact>\n"
            ));
        }
    }
    out
}

struct Seen {
    requests: AtomicUsize,
    bad_auth: AtomicUsize,
    paths: Mutex<Vec<String>>,
}

fn handle(mut stream: TcpStream, wire: Wire, seen: &Seen) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        headers.push(line.trim().to_ascii_lowercase());
    }
    let len: usize = headers
        .iter()
        .find_map(|h| {
            h.strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    let n = seen.requests.fetch_add(1, Ordering::SeqCst);
    seen.paths.lock().unwrap().push(
        request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string(),
    );
    let auth_ok = match wire {
        Wire::Anthropic => {
            headers
                .iter()
                .any(|h| *h == format!("x-api-key: {}", KEY.to_ascii_lowercase()))
                && headers.iter().any(|h| h.starts_with("anthropic-version:"))
        }
        Wire::OpenAi => true, // a local server without a key
    };
    if !auth_ok {
        seen.bad_auth.fetch_add(1, Ordering::SeqCst);
    }
    let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let user = req["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .unwrap()["content"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let (status, payload) = if n == 0 {
        // The first call meets an overloaded service.
        match wire {
            Wire::Anthropic => (
                "529 Overloaded",
                serde_json::json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ),
            Wire::OpenAi => (
                "503 Service Unavailable",
                serde_json::json!({"error": {"message": "busy", "type": "server_error"}}),
            ),
        }
    } else {
        let text = answer(&user);
        match wire {
            Wire::Anthropic => (
                "200 OK",
                serde_json::json!({
                    "id": format!("msg_{n}"), "type": "message", "role": "assistant", "model": req["model"],
                    "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                    "usage": {"input_tokens": 1000, "output_tokens": 400, "cache_read_input_tokens": 600, "cache_creation_input_tokens": 100}
                }),
            ),
            // A llama.cpp-style minimal answer: no id, no usage.
            Wire::OpenAi => (
                "200 OK",
                serde_json::json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}),
            ),
        }
    };
    let payload = payload.to_string();
    let extra = if n == 0 { "retry-after: 0\r\n" } else { "" };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{payload}",
        payload.len()
    );
}

fn serve(wire: Wire) -> (String, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Seen {
        requests: AtomicUsize::new(0),
        bad_auth: AtomicUsize::new(0),
        paths: Mutex::new(Vec::new()),
    });
    let s = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let s = s.clone();
            std::thread::spawn(move || handle(stream, wire, &s));
        }
    });
    (url, seen)
}

fn run_through(wire: Wire) -> (serde_json::Value, Arc<Seen>, tempfile::TempDir) {
    let (url, seen) = serve(wire);
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    cmd.args(["run", GOAL, "--json"])
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("o.db").display()),
        )
        .env("ORCH_LOG", "error");
    match wire {
        Wire::Anthropic => cmd
            .env("ANTHROPIC_API_KEY", KEY)
            .env("ANTHROPIC_BASE_URL", &url),
        Wire::OpenAi => cmd
            .env("OPENAI_BASE_URL", format!("{url}/v1"))
            .env("LLM_MODEL", "llama-3.1-8b-instruct"),
    };
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "run failed: {stderr}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!stderr.contains(KEY));
    (serde_json::from_slice(&out.stdout).unwrap(), seen, dir)
}

#[test]
fn a_whole_run_through_the_anthropic_wire_format() {
    let (status, seen, dir) = run_through(Wire::Anthropic);
    assert_eq!(status["run"]["status"], "COMPLETED", "{status}");
    assert_eq!(status["run"]["provider"], "anthropic");
    assert_eq!(
        seen.bad_auth.load(Ordering::SeqCst),
        0,
        "every request carried x-api-key and anthropic-version"
    );
    // 9 tasks, 1 retried call.
    assert_eq!(seen.requests.load(Ordering::SeqCst), 10);
    assert!(
        seen.paths
            .lock()
            .unwrap()
            .iter()
            .all(|p| p == "/v1/messages")
    );
    // Priced as claude-sonnet-4: 9 x (1000 in, 400 out, 600 cache read, 100 cache write).
    let cost = status["run"]["cost_usd"].as_f64().unwrap();
    let per_call = (1000.0 * 3.0 + 400.0 * 15.0 + 600.0 * 0.3 + 100.0 * 3.75) / 1e6;
    assert!((cost - 9.0 * per_call).abs() < 1e-9, "cost {cost}");
    // The key is nowhere in the database (file and write-ahead log).
    for name in ["o.db", "o.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.path().join(name)) {
            assert!(
                !bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
                "API key found in {name}"
            );
        }
    }
}

#[test]
fn a_whole_run_through_an_openai_compatible_local_server() {
    let (status, seen, _dir) = run_through(Wire::OpenAi);
    assert_eq!(status["run"]["status"], "COMPLETED", "{status}");
    assert_eq!(status["run"]["provider"], "openai");
    assert_eq!(seen.requests.load(Ordering::SeqCst), 10);
    assert!(
        seen.paths
            .lock()
            .unwrap()
            .iter()
            .all(|p| p == "/v1/chat/completions")
    );
    // Unknown local model: no price, so no cost — and it says so by being zero.
    assert_eq!(status["run"]["cost_usd"].as_f64().unwrap(), 0.0);
}
