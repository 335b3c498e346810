//! The HTTP API end to end: the real `orchestrator serve` process (embedded
//! mode: SQLite file, in-process queues and workers) driven over loopback by
//! a real HTTP client, with tokens made by `orchestrator token create`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::{Value, json};

const GOAL: &str = "Build a small CRUD app for managing TODO items";

struct Server {
    dir: tempfile::TempDir,
    child: Option<Child>,
    base: String,
}

impl Server {
    fn cmd(dir: &std::path::Path, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
        c.args(args)
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "DATABASE_URL",
                format!("sqlite://{}", dir.join("orch.db").display()),
            )
            .env("LLM_PROVIDER", "scripted")
            // Slow enough that the event stream is read while the run moves.
            .env("SCRIPTED_LATENCY_MS", "15")
            .env("ORCH_LOG", "warn");
        c
    }

    /// Start `serve` on a free port and wait until it says where it listens.
    fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let ok = Self::cmd(dir.path(), &["init-db"]).output().unwrap();
        assert!(ok.status.success());
        let mut args = vec!["serve", "--bind", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut child = Self::cmd(dir.path(), &args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("HTTP API on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send(format!("http://{addr}"));
                }
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("serve printed its address");
        Server {
            dir,
            child: Some(child),
            base,
        }
    }

    fn token(&self, scope: &str) -> String {
        let out = Self::cmd(
            self.dir.path(),
            &["token", "create", "--scope", scope, "--name", "e2e"],
        )
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, and the exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn problem(resp: reqwest::blocking::Response, status: StatusCode) -> Value {
    assert_eq!(resp.status(), status);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/problem+json"), "{ct}");
    let body: Value = resp.json().unwrap();
    assert_eq!(body["status"], status.as_u16());
    assert!(!body["detail"].as_str().unwrap().is_empty());
    body
}

/// One parsed server-sent event.
#[derive(Debug)]
struct Sse {
    id: i64,
    event: String,
    data: Value,
}

/// Read events from a stream; stop after `max` events (or at its end).
fn read_sse(resp: reqwest::blocking::Response, max: usize) -> (Vec<Sse>, bool) {
    let mut reader = BufReader::new(resp);
    let mut out = Vec::new();
    let (mut id, mut event, mut data) = (None, String::new(), String::new());
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            return (out, true);
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            if let Some(i) = id.take() {
                out.push(Sse {
                    id: i,
                    event: std::mem::take(&mut event),
                    data: serde_json::from_str(&data).unwrap(),
                });
                data.clear();
                if out.len() >= max {
                    return (out, false);
                }
            }
            continue;
        }
        if let Some(v) = l.strip_prefix("id:") {
            id = Some(v.trim().parse().unwrap());
        } else if let Some(v) = l.strip_prefix("event:") {
            event = v.trim().to_string();
        } else if let Some(v) = l.strip_prefix("data:") {
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
}

#[test]
fn a_whole_run_driven_over_http_with_tokens_and_a_resumed_event_stream() {
    let mut server = Server::start(&[]);
    let http = client();
    let write = server.token("write");
    let read = server.token("read");

    // Open routes and refusals.
    let health: Value = http
        .get(server.url("/health"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    problem(
        http.get(server.url("/runs")).send().unwrap(),
        StatusCode::UNAUTHORIZED,
    );
    problem(
        http.post(server.url("/runs"))
            .bearer_auth(&read)
            .json(&json!({"goal": GOAL}))
            .send()
            .unwrap(),
        StatusCode::FORBIDDEN,
    );

    // Submit.
    let resp = http
        .post(server.url("/runs"))
        .bearer_auth(&write)
        .json(&json!({"goal": GOAL}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let run: Value = resp.json().unwrap();
    let id = run["id"].as_str().unwrap().to_string();
    assert!(location.ends_with(&id), "{location}");

    // Follow the live stream for a few events, drop it, resume from the last id.
    let stream = server.url(&format!("/runs/{id}/events/stream"));
    let resp = http.get(&stream).bearer_auth(&read).send().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let (first, ended) = read_sse(resp, 5);
    assert!(!ended, "the run is still going");
    let last = first.last().unwrap().id;
    let resp = http
        .get(&stream)
        .bearer_auth(&read)
        .header("Last-Event-ID", last.to_string())
        .send()
        .unwrap();
    let (rest, ended) = read_sse(resp, usize::MAX);
    assert!(ended, "the stream ends once the run is finished");
    let ids: Vec<i64> = first.iter().chain(&rest).map(|e| e.id).collect();
    assert_eq!(
        ids,
        (1..=ids.len() as i64).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    let done = rest.last().unwrap();
    assert_eq!(done.event, "run_status_changed", "{done:?}");
    assert_eq!(done.data["data"]["to"], "COMPLETED", "{done:?}");
    assert_eq!(done.data["seq"], done.id);

    // The finished run through the read endpoints.
    let status: Value = http
        .get(server.url(&format!("/runs/{id}/status")))
        .bearer_auth(&read)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(status["status"], "COMPLETED", "{status}");
    let events: Value = http
        .get(server.url(&format!("/runs/{id}/events?limit=1000")))
        .bearer_auth(&read)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        events["items"].as_array().unwrap().len(),
        ids.len(),
        "the stream delivered every stored event"
    );
    let tasks: Value = http
        .get(server.url(&format!("/runs/{id}/tasks")))
        .bearer_auth(&read)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let tasks = tasks.as_array().expect("a list of tasks");
    assert!(
        tasks.iter().all(|t| t["status"] == "SUCCEEDED"),
        "{tasks:?}"
    );
    assert!(tasks.iter().any(|t| t["role"] == "security_reviewer"));
    let arts: Value = http
        .get(server.url(&format!("/runs/{id}/artifacts")))
        .bearer_auth(&read)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(
        arts.to_string().contains("requirements"),
        "artifacts listed: {arts}"
    );
    let list: Value = http
        .get(server.url("/runs?status=COMPLETED"))
        .bearer_auth(&read)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(list["items"][0]["id"], id.as_str());

    // Conflicts are 409 with the reason.
    let body = problem(
        http.post(server.url(&format!("/runs/{id}/answer")))
            .bearer_auth(&write)
            .json(&json!({"text": "go on"}))
            .send()
            .unwrap(),
        StatusCode::CONFLICT,
    );
    assert!(
        body["detail"].as_str().unwrap().contains("COMPLETED"),
        "{body}"
    );

    // Metrics see the run (protected by default).
    problem(
        http.get(server.url("/metrics")).send().unwrap(),
        StatusCode::UNAUTHORIZED,
    );
    let metrics = http
        .get(server.url("/metrics"))
        .bearer_auth(&read)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("orchestrator_runs{status=\"COMPLETED\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("orchestrator_http_requests_total"));

    // Docs are served from the binary.
    let docs = http.get(server.url("/docs/")).send().unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    let spec: Value = http
        .get(server.url("/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));

    // A revoked token stops working within the cache time.
    let token_id = read.split('_').nth(1).unwrap().to_string();
    let out = Server::cmd(server.dir.path(), &["token", "revoke", &token_id])
        .output()
        .unwrap();
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = http
            .get(server.url("/runs"))
            .bearer_auth(&read)
            .send()
            .unwrap()
            .status();
        if s == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(Instant::now() < deadline, "revoked token still accepted");
        std::thread::sleep(Duration::from_millis(200));
    }

    assert!(server.stop().success(), "serve exits cleanly on SIGTERM");
}

#[test]
fn serve_refuses_a_bad_address_and_checks_bodies_with_auth_off() {
    let dir = tempfile::tempdir().unwrap();
    let out = Server::cmd(dir.path(), &["serve", "--bind", "nonsense"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HOST:PORT") && err.contains("API_BIND"),
        "{err}"
    );

    let mut server = Server::start(&["--insecure-no-auth"]);
    // No token needed, and the request body is checked.
    let resp = client()
        .post(server.url("/runs"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .unwrap();
    problem(resp, StatusCode::BAD_REQUEST);
    let mut big = String::from("{\"goal\": \"");
    big.push_str(&"x".repeat(2 * 1024 * 1024));
    big.push_str("\"}");
    let resp = client()
        .post(server.url("/runs"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .unwrap();
    problem(resp, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(server.stop().success());
}

#[test]
fn serve_on_a_non_loopback_address_without_auth_warns_loudly() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        Server::cmd(dir.path(), &["init-db"])
            .output()
            .unwrap()
            .status
            .success()
    );
    let mut child = Server::cmd(
        dir.path(),
        &["serve", "--bind", "0.0.0.0:0", "--insecure-no-auth"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut seen = String::new();
    let mut reader = BufReader::new(stderr);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.contains("HTTP API on") && Instant::now() < deadline {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.contains("AUTHENTICATION IS OFF") && seen.contains("NOT a loopback"),
        "{seen}"
    );
}
