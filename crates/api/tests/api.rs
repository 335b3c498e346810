//! The HTTP API through the router in process (`oneshot`, no sockets), on a
//! real engine: SQLite in a temp dir, the in-process broker and the scripted
//! provider.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use orch_api::auth::{self, Scope};
use orch_api::{ApiConfig, AppState, AuthMode, ROUTES, app};
use orch_core::{Role, RunId, RunStatus};
use orch_engine::store::Store;
use orch_engine::testing::{TestEngine, fast_settings};
use orch_engine::{Engine, Runtime};
use orch_llm::{Provider, ScriptedProvider};
use serde_json::{Value, json};
use tower::ServiceExt;

const GOAL: &str = "Build a small CRUD app for managing TODO items";

/// An embedded engine (SQLite in a temp dir, in-process broker) and the API over it.
struct Harness {
    /// Owns the database folder.
    _embedded: TestEngine,
    engine: Engine,
    store: Arc<dyn Store>,
    state: AppState,
}

impl Harness {
    fn app(&self) -> Router {
        app(self.state.clone())
    }
}

async fn harness_with(provider: Arc<dyn Provider>, config: ApiConfig) -> Harness {
    let embedded = TestEngine::new(provider).await;
    let engine = embedded.engine.clone();
    let store = embedded.store.clone();
    let state = AppState::new(engine.clone(), config);
    Harness {
        _embedded: embedded,
        engine,
        store,
        state,
    }
}

/// Auth disabled, the built-in scripted fixture, fast retries.
async fn harness() -> Harness {
    harness_with(
        Arc::new(ScriptedProvider::builtin()),
        ApiConfig {
            auth: AuthMode::Disabled,
            run_settings: fast_settings(),
            ..ApiConfig::default()
        },
    )
    .await
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn content_type(&self) -> String {
        self.headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
    /// Assert a problem document with this status whose detail contains `needle`.
    #[track_caller]
    fn problem(&self, status: StatusCode, needle: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.content_type(), "application/problem+json");
        let p = self.json();
        assert_eq!(p["status"], status.as_u16());
        let detail = p["detail"].as_str().unwrap();
        assert!(
            detail.to_lowercase().contains(&needle.to_lowercase()),
            "detail {detail:?} lacks {needle:?}"
        );
        p
    }
}

async fn send(app: &Router, req: Request<Body>) -> Reply {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
        .await
        .expect("body within 30 s")
        .unwrap()
        .to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn post_json(uri: &str, body: Value) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn post_empty(uri: &str) -> Request<Body> {
    Request::post(uri).body(Body::empty()).unwrap()
}

fn with_token(mut req: Request<Body>, token: &str) -> Request<Body> {
    req.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    req
}

/// Create a run over the API (no workers: it stays with its first tasks queued).
async fn create(app: &Router) -> String {
    let r = send(app, post_json("/runs", json!({"goal": GOAL}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

/// Parse an SSE body into (id, event, data) triples; comments are skipped.
fn parse_sse(text: &str) -> Vec<(i64, String, Value)> {
    text.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .filter_map(|block| {
            let (mut id, mut event, mut data) = (None, None, String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().parse::<i64>().unwrap());
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            Some((id?, event?, serde_json::from_str(&data).unwrap()))
        })
        .collect()
}

// -------------------------------------------------------------------- runs

#[tokio::test]
async fn health_is_open_and_names_the_backends() {
    let h = harness_with(Arc::new(ScriptedProvider::builtin()), ApiConfig::default()).await;
    let r = send(&h.app(), get("/health")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["store"], "sqlite");
    assert_eq!(v["broker"], h.engine.deps().broker.backend());
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn a_run_is_created_listed_and_inspected() {
    let h = harness().await;
    let app = h.app();
    let r = send(
        &app,
        post_json(
            "/runs",
            json!({"goal": GOAL, "context": {"stack": "python"}, "workflow": "sdlc", "budget": {"usd": 3.5, "tokens": 100000}}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let run = r.json();
    let id = run["id"].as_str().unwrap().to_string();
    assert_eq!(
        r.headers.get(header::LOCATION).unwrap(),
        &format!("/runs/{id}")
    );
    assert_eq!(run["goal"], GOAL);
    assert_eq!(run["context"]["stack"], "python");
    assert_eq!(run["workflow"], "sdlc");
    assert_eq!(run["settings"]["budget_usd"], 3.5);
    assert_eq!(run["settings"]["budget_tokens"], 100000);
    assert_eq!(
        run["settings"]["retry_backoff_ms"], 5,
        "server's run settings"
    );
    assert!(run["provider"].as_str().unwrap().contains("scripted"));
    // submit took the first step.
    assert_eq!(run["status"], "RUNNING");

    let r = send(&app, get(&format!("/runs/{id}"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let d = r.json();
    assert_eq!(d["run"]["id"], id.as_str());
    let gates: Vec<&str> = d["gates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["kind"].as_str().unwrap())
        .collect();
    assert_eq!(gates, ["code_review", "security_review"]);
    let tasks = d["tasks"].as_array().unwrap();
    assert!(tasks.len() >= 5);
    assert_eq!(tasks[0]["status"], "QUEUED");
    assert!(tasks[0]["queue"].as_str().unwrap().starts_with("q_"));
    assert_eq!(d["dead_letters"], json!([]));

    let r = send(&app, get(&format!("/runs/{id}/status"))).await;
    assert_eq!(r.status, StatusCode::OK);
    let s = r.json();
    assert_eq!(s["status"], "RUNNING");
    assert_eq!(s["terminal"], false);
    assert_eq!(s["tasks_total"], tasks.len());
    let counted: u64 = s["tasks"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(counted, tasks.len() as u64);
    assert_eq!(s["tasks"]["QUEUED"], 1);
    assert_eq!(s["gates"][0]["status"], "PENDING");
    assert_eq!(s["budget_usd"], 3.5);
    assert_eq!(s["cost_usd"], 0.0);

    let r = send(&app, get(&format!("/runs/{id}/tasks"))).await;
    assert_eq!(r.status, StatusCode::OK);
    let full = r.json();
    assert_eq!(full.as_array().unwrap().len(), tasks.len());
    assert!(full[0]["instructions"].is_string());
    assert!(full[0]["expected"].is_array());

    // Events, a page at a time, by sequence.
    let r = send(&app, get(&format!("/runs/{id}/events?limit=2"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let page = r.json();
    let seqs: Vec<i64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2]);
    assert_eq!(page["next_after"], 2);
    assert_eq!(page["items"][0]["kind"], "run_created");
    let r = send(&app, get(&format!("/runs/{id}/events?after=2&limit=1"))).await;
    assert_eq!(r.json()["items"][0]["seq"], 3);
    let r = send(&app, get(&format!("/runs/{id}/events?kind=task_queued"))).await;
    let items = r.json()["items"].as_array().unwrap().clone();
    assert!(!items.is_empty());
    assert!(items.iter().all(|e| e["kind"] == "task_queued"));
    let r = send(&app, get(&format!("/runs/{id}/events?after=100000"))).await;
    assert_eq!(r.json(), json!({"items": [], "next_after": 100000}));
    send(&app, get(&format!("/runs/{id}/events?kind=nope")))
        .await
        .problem(StatusCode::BAD_REQUEST, "task_succeeded");

    // No artifacts yet.
    let r = send(&app, get(&format!("/runs/{id}/artifacts"))).await;
    assert_eq!(r.json(), json!({"items": []}));
    send(&app, get(&format!("/runs/{id}/artifacts/requirements")))
        .await
        .problem(StatusCode::NOT_FOUND, "none yet");

    // Listing, with pages and a status filter.
    let second = create(&app).await;
    let r = send(&app, get("/runs?limit=1")).await;
    assert_eq!(r.status, StatusCode::OK);
    let p = r.json();
    assert_eq!(p["items"].as_array().unwrap().len(), 1);
    assert_eq!(p["items"][0]["id"], second.as_str(), "newest first");
    assert_eq!(
        (p["limit"].as_u64(), p["offset"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(p["next_offset"], 1);
    let p = send(&app, get("/runs?limit=1&offset=1")).await.json();
    assert_eq!(p["items"][0]["id"], id.as_str());
    assert_eq!(p["next_offset"], Value::Null);
    let p = send(&app, get("/runs")).await.json();
    assert_eq!(p["limit"], 50);
    assert_eq!(p["items"].as_array().unwrap().len(), 2);
    let p = send(&app, get("/runs?limit=100000")).await.json();
    assert_eq!(p["limit"], 500);
    let p = send(&app, get("/runs?status=running")).await.json();
    assert_eq!(p["items"].as_array().unwrap().len(), 2);
    let p = send(&app, get("/runs?status=COMPLETED")).await.json();
    assert_eq!(p["items"], json!([]));
    send(&app, get("/runs?status=DONE"))
        .await
        .problem(StatusCode::BAD_REQUEST, "NEEDS_INPUT");
    send(&app, get("/runs?limit=0"))
        .await
        .problem(StatusCode::BAD_REQUEST, "limit");
    send(&app, get("/runs?limit=abc"))
        .await
        .problem(StatusCode::BAD_REQUEST, "limit");
    send(&app, get("/runs?colour=red"))
        .await
        .problem(StatusCode::BAD_REQUEST, "colour");
}

#[tokio::test]
async fn creating_a_run_refuses_bad_requests_with_problems() {
    let h = harness().await;
    let app = h.app();
    send(&app, post_json("/runs", json!({"goal": "   "})))
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, "goal is empty");
    send(&app, post_json("/runs", json!({"goal": "Build\u{0}it"})))
        .await
        .problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "`goal` contains a NUL character",
        );
    send(&app, post_json("/runs", json!({"context": {}})))
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, "missing field `goal`");
    send(&app, post_json("/runs", json!({"goal": GOAL, "colour": 1})))
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, "unknown field `colour`");
    send(&app, post_json("/runs", json!({"goal": 5})))
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, "goal");
    send(
        &app,
        post_json("/runs", json!({"goal": GOAL, "workflow": "waterfall"})),
    )
    .await
    .problem(StatusCode::UNPROCESSABLE_ENTITY, "sdlc");
    send(
        &app,
        post_json(
            "/runs",
            json!({"goal": GOAL, "workflow": "sdlc", "workflow_yaml": "name: x"}),
        ),
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "not both");
    let bad_yaml = "name: broken\ntasks:\n  - id: a\n    role: business_analyst\n  - id: b\n    role: nobody\n";
    let p = send(
        &app,
        post_json("/runs", json!({"goal": GOAL, "workflow_yaml": bad_yaml})),
    )
    .await
    .problem(StatusCode::UNPROCESSABLE_ENTITY, "line 6");
    assert!(p["detail"].as_str().unwrap().contains("column"), "{p}");
    send(
        &app,
        post_json("/runs", json!({"goal": GOAL, "budget": {"usd": -1}})),
    )
    .await
    .problem(StatusCode::UNPROCESSABLE_ENTITY, "above 0");
    send(
        &app,
        post_json("/runs", json!({"goal": GOAL, "budget": {"tokens": 0}})),
    )
    .await
    .problem(StatusCode::UNPROCESSABLE_ENTITY, "above 0");
    // Syntax error: 400.
    let req = Request::post("/runs")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"goal\": "))
        .unwrap();
    send(&app, req)
        .await
        .problem(StatusCode::BAD_REQUEST, "json");
    // Not JSON: 415.
    let req = Request::post("/runs")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("build me an app"))
        .unwrap();
    send(&app, req)
        .await
        .problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "application/json");
    let req = Request::post("/runs").body(Body::from("{}")).unwrap();
    send(&app, req)
        .await
        .problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "content-type");
    // Too large: 413.
    let big = "x".repeat(2 * 1024 * 1024);
    send(&app, post_json("/runs", json!({"goal": big})))
        .await
        .problem(StatusCode::PAYLOAD_TOO_LARGE, "larger");
    // A workflow without the review tasks the server's settings require:
    // 422, naming the setting.
    let yaml = "name: tiny\ntasks:\n  - id: reqs\n    role: business_analyst\n    produces: [{ name: requirements, kind: requirements }]\n";
    send(
        &app,
        post_json("/runs", json!({"goal": GOAL, "workflow_yaml": yaml})),
    )
    .await
    .problem(StatusCode::UNPROCESSABLE_ENTITY, "REQUIRE_CODE_REVIEW");
    // A valid inline workflow is used.
    let yaml = format!(
        "{yaml}  - {{ id: cr, role: code_reviewer, needs: [reqs], gate: code_review, produces: [{{ name: code_review, kind: review }}] }}\n  - {{ id: sec, role: security_reviewer, needs: [cr], gate: security_review, produces: [{{ name: security_review, kind: review }}] }}\n"
    );
    let r = send(
        &app,
        post_json("/runs", json!({"goal": GOAL, "workflow_yaml": yaml})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.json()["workflow"], "tiny");
    // Nothing was created by the refused requests.
    let p = send(&app, get("/runs")).await.json();
    assert_eq!(p["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn unknown_and_malformed_run_ids_are_404_and_400_on_every_run_route() {
    let h = harness().await;
    let app = h.app();
    let unknown = RunId::generate().to_string();
    for (method, template) in ROUTES.iter().filter(|(_, p)| p.starts_with("/runs/{id}")) {
        for (id, status, needle) in [
            (unknown.as_str(), StatusCode::NOT_FOUND, "no run"),
            ("not..a..run", StatusCode::BAD_REQUEST, "not a run id"),
        ] {
            let uri = template
                .replace("{id}", id)
                .replace("{name}", "requirements")
                .replace("{gate}", "code_review");
            let req = if *method == "GET" {
                get(&uri)
            } else {
                let body = match template.rsplit('/').next().unwrap() {
                    "answer" => json!({"text": "go on"}),
                    "waive" => json!({"reason": "trusted"}),
                    "budget" => json!({"usd": 5.0}),
                    _ => json!({}),
                };
                post_json(&uri, body)
            };
            send(&app, req).await.problem(status, needle);
        }
    }
    send(&app, get(&format!("/dlq?run_id={unknown}")))
        .await
        .problem(StatusCode::NOT_FOUND, "no run");
}

#[tokio::test]
async fn human_inputs_apply_or_conflict_like_the_cli() {
    let h = harness().await;
    let app = h.app();
    let id = create(&app).await;

    // tick
    let r = send(&app, post_empty(&format!("/runs/{id}/tick"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["status"], "RUNNING");
    assert_eq!(r.json()["run_id"], id.as_str());

    // budget
    send(&app, post_json(&format!("/runs/{id}/budget"), json!({})))
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, "usd");
    let r = send(
        &app,
        post_json(
            &format!("/runs/{id}/budget"),
            json!({"usd": 9.5, "tokens": 5000}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let s = send(&app, get(&format!("/runs/{id}/status"))).await.json();
    assert_eq!(
        (s["budget_usd"].clone(), s["budget_tokens"].clone()),
        (json!(9.5), json!(5000))
    );

    // answer a run that is not waiting: 409
    send(
        &app,
        post_json(&format!("/runs/{id}/answer"), json!({"text": "use sqlite"})),
    )
    .await
    .problem(StatusCode::CONFLICT, "not waiting for input");
    send(
        &app,
        post_json(&format!("/runs/{id}/answer"), json!({"text": " "})),
    )
    .await
    .problem(StatusCode::UNPROCESSABLE_ENTITY, "empty");
    send(
        &app,
        post_json(
            &format!("/runs/{id}/answer"),
            json!({"text": "use\u{0}sqlite"}),
        ),
    )
    .await
    .problem(
        StatusCode::UNPROCESSABLE_ENTITY,
        "`text` contains a NUL character",
    );

    // waive a gate
    send(
        &app,
        post_json(
            &format!("/runs/{id}/gates/deploy/waive"),
            json!({"reason": "x"}),
        ),
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "security_review");
    send(
        &app,
        post_json(
            &format!("/runs/{id}/gates/code_review/waive"),
            json!({"reason": ""}),
        ),
    )
    .await
    .problem(StatusCode::UNPROCESSABLE_ENTITY, "reason");
    let r = send(
        &app,
        post_json(
            &format!("/runs/{id}/gates/security_review/waive"),
            json!({"reason": "internal tool"}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let d = send(&app, get(&format!("/runs/{id}"))).await.json();
    assert_eq!(d["gates"][1]["status"], "WAIVED");
    assert_eq!(d["gates"][1]["reason"], "internal tool");
    send(
        &app,
        post_json(
            &format!("/runs/{id}/gates/security_review/waive"),
            json!({"reason": "again"}),
        ),
    )
    .await
    .problem(StatusCode::CONFLICT, "already");

    // cancel (the body is optional), then everything conflicts
    let r = send(&app, post_empty(&format!("/runs/{id}/cancel"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["status"], "CANCELLED");
    let s = send(&app, get(&format!("/runs/{id}/status"))).await.json();
    assert_eq!(s["reason"], "cancelled over the API");
    assert_eq!(s["terminal"], true);
    send(
        &app,
        post_json(&format!("/runs/{id}/cancel"), json!({"reason": "twice"})),
    )
    .await
    .problem(StatusCode::CONFLICT, "already CANCELLED");
    send(
        &app,
        post_json(
            &format!("/runs/{id}/gates/code_review/waive"),
            json!({"reason": "late"}),
        ),
    )
    .await
    .problem(StatusCode::CONFLICT, "cannot be waived");
    send(
        &app,
        post_json(&format!("/runs/{id}/budget"), json!({"usd": 20.0})),
    )
    .await
    .problem(StatusCode::CONFLICT, "CANCELLED");
    // tick of a finished run changes nothing
    let r = send(&app, post_empty(&format!("/runs/{id}/tick"))).await;
    assert_eq!(r.json()["status"], "CANCELLED");
    assert_eq!(r.json()["dispatched"], 0);

    // a cancel with a reason
    let other = create(&app).await;
    let r = send(
        &app,
        post_json(
            &format!("/runs/{other}/cancel"),
            json!({"reason": "wrong goal"}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let s = send(&app, get(&format!("/runs/{other}/status")))
        .await
        .json();
    assert_eq!(s["reason"], "wrong goal");
    send(
        &app,
        post_json(&format!("/runs/{other}/cancel"), json!({"why": 1})),
    )
    .await
    .problem(StatusCode::UNPROCESSABLE_ENTITY, "unknown field");
}

#[tokio::test]
async fn router_level_errors_are_problems() {
    let h = harness().await;
    let app = h.app();
    send(&app, get("/nope"))
        .await
        .problem(StatusCode::NOT_FOUND, "no route GET /nope");
    let r = send(&app, Request::delete("/runs").body(Body::empty()).unwrap()).await;
    r.problem(StatusCode::METHOD_NOT_ALLOWED, "GET or POST");
    let r = send(&app, get("/runs/x/tick")).await;
    r.problem(StatusCode::METHOD_NOT_ALLOWED, "POST");
    send(&app, post_empty("/dlq/abc/replay"))
        .await
        .problem(StatusCode::BAD_REQUEST, "path");
    send(&app, post_empty("/dlq/999/replay"))
        .await
        .problem(StatusCode::NOT_FOUND, "no dead letter 999");
    send(&app, get("/dlq?include_replayed=maybe"))
        .await
        .problem(StatusCode::BAD_REQUEST, "include_replayed");
    // A panic in a handler is a 500 problem, and the server keeps serving.
    let with_bug = orch_api::finish(
        orch_api::router().route(
            "/boom",
            axum::routing::get(|| async {
                if true {
                    panic!("a bug");
                }
                "unreachable"
            }),
        ),
        h.state.clone(),
    );
    send(&with_bug, get("/boom"))
        .await
        .problem(StatusCode::INTERNAL_SERVER_ERROR, "panic");
    assert_eq!(send(&with_bug, get("/health")).await.status, StatusCode::OK);
}

// -------------------------------------------------------------- whole run

#[tokio::test]
async fn a_run_driven_to_completion_exposes_tasks_events_artifacts_and_its_stream() {
    let h = harness().await;
    let app = h.app();
    let rt = Runtime::start(h.engine.clone(), &Role::SPECIALISTS, true);
    let id = create(&app).await;
    let run_id: RunId = id.parse().unwrap();
    let done = h
        .engine
        .wait(
            &run_id,
            Duration::from_millis(50),
            Some(Duration::from_secs(90)),
        )
        .await
        .unwrap();
    rt.shutdown().await;
    assert_eq!(
        done.status,
        RunStatus::Completed,
        "{:?}",
        done.status_reason
    );

    let s = send(&app, get(&format!("/runs/{id}/status"))).await.json();
    assert_eq!(s["status"], "COMPLETED");
    assert_eq!(s["terminal"], true);
    assert_eq!(s["gates"][0]["status"], "PASSED");
    assert_eq!(s["gates"][1]["status"], "PASSED");
    assert!(s["tokens_in"].as_i64().unwrap() > 0);

    let tasks = send(&app, get(&format!("/runs/{id}/tasks"))).await.json();
    let tasks = tasks.as_array().unwrap();
    assert!(
        tasks
            .iter()
            .all(|t| t["status"] == "SUCCEEDED" || t["status"] == "SKIPPED"),
        "{tasks:?}"
    );
    assert!(tasks.iter().any(|t| t["verdict"]["verdict"] == "PASS"));

    // Events: paged reads add up to the whole log.
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let p = send(
            &app,
            get(&format!("/runs/{id}/events?after={after}&limit=25")),
        )
        .await
        .json();
        let items = p["items"].as_array().unwrap().clone();
        if items.is_empty() {
            break;
        }
        after = p["next_after"].as_i64().unwrap();
        all.extend(items);
    }
    let seqs: Vec<i64> = all.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    assert!(all.iter().any(|e| e["kind"] == "gate_passed"));

    // Artifacts: latest versions, every version, and one file's content.
    let latest = send(&app, get(&format!("/runs/{id}/artifacts")))
        .await
        .json();
    let latest = latest["items"].as_array().unwrap().clone();
    let every = send(
        &app,
        get(&format!("/runs/{id}/artifacts?all_versions=true")),
    )
    .await
    .json();
    assert!(every["items"].as_array().unwrap().len() >= latest.len());
    let req = latest
        .iter()
        .find(|a| a["name"] == "requirements")
        .expect("requirements");
    assert!(req["bytes"].as_u64().unwrap() > 0);
    assert!(req.get("content").is_none());
    let r = send(&app, get(&format!("/runs/{id}/artifacts/requirements"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let a = r.json();
    assert!(a["content"].as_str().unwrap().contains("TODO"));
    assert_eq!(
        a["bytes"].as_u64().unwrap() as usize,
        a["content"].as_str().unwrap().len()
    );
    let v = a["version"].as_i64().unwrap();
    let r = send(
        &app,
        get(&format!("/runs/{id}/artifacts/requirements?version={v}")),
    )
    .await;
    assert_eq!(r.json()["version"], v);
    send(
        &app,
        get(&format!("/runs/{id}/artifacts/requirements?version=999")),
    )
    .await
    .problem(StatusCode::NOT_FOUND, "no version 999");
    send(&app, get(&format!("/runs/{id}/artifacts/nothing_like_it")))
        .await
        .problem(StatusCode::NOT_FOUND, "requirements");
    // A code artifact: several files under one name.
    let mut by_name: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for a in &latest {
        if let Some(p) = a["path"].as_str() {
            by_name
                .entry(a["name"].as_str().unwrap())
                .or_default()
                .push(p);
        }
    }
    if let Some((name, paths)) = by_name.iter().find(|(_, p)| p.len() > 1) {
        send(&app, get(&format!("/runs/{id}/artifacts/{name}")))
            .await
            .problem(StatusCode::BAD_REQUEST, paths[0]);
        let r = send(
            &app,
            get(&format!("/runs/{id}/artifacts/{name}?path={}", paths[1])),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.json()["path"], paths[1]);
        send(
            &app,
            get(&format!("/runs/{id}/artifacts/{name}?path=nope.txt")),
        )
        .await
        .problem(StatusCode::NOT_FOUND, "no file");
    } else if let Some((name, paths)) = by_name.iter().next() {
        let r = send(
            &app,
            get(&format!("/runs/{id}/artifacts/{name}?path={}", paths[0])),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }

    // The stream of a finished run: every event once, in order, then it ends.
    let r = send(&app, get(&format!("/runs/{id}/events/stream"))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.content_type().starts_with("text/event-stream"));
    let events = parse_sse(&r.text());
    let ids: Vec<i64> = events.iter().map(|e| e.0).collect();
    assert_eq!(ids, seqs, "ids are 1..=N");
    for (seq, kind, data) in &events {
        assert_eq!(data["seq"], *seq);
        assert_eq!(data["kind"], kind.as_str());
    }
    // Resumed after Last-Event-ID (wins over ?after=).
    let k = (seqs.len() / 2) as i64;
    let req = Request::get(format!("/runs/{id}/events/stream?after=1"))
        .header("Last-Event-ID", k.to_string())
        .body(Body::empty())
        .unwrap();
    let resumed = parse_sse(&send(&app, req).await.text());
    let ids: Vec<i64> = resumed.iter().map(|e| e.0).collect();
    assert_eq!(ids, ((k + 1)..=seqs.len() as i64).collect::<Vec<_>>());
    let from_query = parse_sse(
        &send(&app, get(&format!("/runs/{id}/events/stream?after={k}")))
            .await
            .text(),
    );
    assert_eq!(from_query.first().map(|e| e.0), Some(k + 1));
    let req = Request::get(format!("/runs/{id}/events/stream"))
        .header("Last-Event-ID", "soon")
        .body(Body::empty())
        .unwrap();
    send(&app, req)
        .await
        .problem(StatusCode::BAD_REQUEST, "Last-Event-ID");
}

#[tokio::test]
async fn the_stream_of_a_live_run_follows_it_until_it_ends() {
    let h = harness().await;
    let app = h.app();
    let id = create(&app).await;
    // Open the stream before any worker runs; the run then completes.
    let resp = app
        .clone()
        .oneshot(get(&format!("/runs/{id}/events/stream")))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let rt = Runtime::start(h.engine.clone(), &Role::SPECIALISTS, true);
    let body = tokio::time::timeout(Duration::from_secs(90), resp.into_body().collect())
        .await
        .expect("the stream ends once the run is finished")
        .unwrap()
        .to_bytes();
    rt.shutdown().await;
    let events = parse_sse(&String::from_utf8_lossy(&body));
    let ids: Vec<i64> = events.iter().map(|e| e.0).collect();
    assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>());
    let last_status = events
        .iter()
        .rev()
        .find(|e| e.1 == "run_status_changed")
        .unwrap();
    assert!(
        last_status.2["message"]
            .as_str()
            .unwrap()
            .contains("COMPLETED"),
        "{:?}",
        last_status.2
    );
    let total = send(&app, get(&format!("/runs/{id}/events?limit=1000")))
        .await
        .json();
    assert_eq!(total["items"].as_array().unwrap().len(), ids.len());
}

#[tokio::test]
async fn dead_letters_are_listed_and_replayed_and_a_waiting_run_is_answered() {
    let fixture = r#"
tasks:
  requirements:
    - error: { status: 500, message: "upstream overloaded" }
      on_attempts: [1, 2, 3]
"#;
    let h = harness_with(
        Arc::new(ScriptedProvider::from_yaml("failing", fixture).unwrap()),
        ApiConfig {
            auth: AuthMode::Disabled,
            run_settings: fast_settings(),
            ..ApiConfig::default()
        },
    )
    .await;
    let app = h.app();
    let rt = Runtime::start(h.engine.clone(), &Role::SPECIALISTS, true);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let id = create(&app).await;
        let waiting = orch_engine::testing::wait_for_end(&h.engine, &id.parse().unwrap()).await;
        assert_eq!(waiting.status, RunStatus::NeedsInput);
        ids.push(id);
    }
    rt.shutdown().await;
    let (a, b) = (&ids[0], &ids[1]);

    // The stream of a waiting run stays open after its last event.
    let resp = app
        .clone()
        .oneshot(get(&format!("/runs/{a}/events/stream")))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let read = tokio::time::timeout(Duration::from_millis(1500), resp.into_body().collect()).await;
    assert!(read.is_err(), "the stream of a NEEDS_INPUT run ended");

    // tick of a waiting run: 409 saying what to do
    send(&app, post_empty(&format!("/runs/{a}/tick")))
        .await
        .problem(StatusCode::CONFLICT, "answer");
    let all = send(&app, get("/dlq")).await.json();
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    let of_a = send(&app, get(&format!("/dlq?run_id={a}"))).await.json();
    let letters = of_a["items"].as_array().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["task_id"], "requirements");
    assert_eq!(letters[0]["attempts"], 3);
    assert_eq!(letters[0]["role"], "business_analyst");
    let d = send(&app, get(&format!("/runs/{a}"))).await.json();
    assert_eq!(d["dead_letters"].as_array().unwrap().len(), 1);

    let letter = letters[0]["id"].as_i64().unwrap();
    let r = send(&app, post_empty(&format!("/dlq/{letter}/replay"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["run_id"], a.as_str());
    assert_eq!(v["task_id"], "requirements");
    assert_eq!(v["status"], "RUNNING");
    send(&app, post_empty(&format!("/dlq/{letter}/replay")))
        .await
        .problem(StatusCode::NOT_FOUND, "no dead letter");
    let of_a = send(&app, get(&format!("/dlq?run_id={a}"))).await.json();
    assert_eq!(of_a["items"], json!([]));
    let with_replayed = send(&app, get(&format!("/dlq?run_id={a}&include_replayed=true")))
        .await
        .json();
    assert!(with_replayed["items"][0]["replayed_at"].is_i64());

    // answer the other waiting run
    let r = send(
        &app,
        post_json(&format!("/runs/{b}/answer"), json!({"text": "retry it"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["run_id"], b.as_str());
    let p = send(&app, get(&format!("/runs/{b}/events?kind=human_input")))
        .await
        .json();
    assert_eq!(p["items"][0]["data"]["text"], "retry it");
}

// -------------------------------------------------------------- workflows

#[tokio::test]
async fn workflows_are_listed_shown_and_validated() {
    let h = harness().await;
    let app = h.app();
    let l = send(&app, get("/workflows")).await.json();
    assert_eq!(l["items"][0]["name"], "sdlc");
    assert!(l["items"][0]["tasks"].as_u64().unwrap() > 3);
    let r = send(&app, get("/workflows/sdlc")).await;
    assert_eq!(r.status, StatusCode::OK);
    let w = r.json();
    assert_eq!(w["definition"]["name"], "sdlc");
    assert!(w["yaml"].as_str().unwrap().contains("tasks:"));
    assert_eq!(
        w["order"].as_array().unwrap().len(),
        w["definition"]["tasks"].as_array().unwrap().len()
    );
    send(&app, get("/workflows/waterfall"))
        .await
        .problem(StatusCode::NOT_FOUND, "sdlc");

    let yaml = "name: tiny\ntasks:\n  - id: build\n    role: backend_engineer\n    needs: [reqs]\n  - id: reqs\n    role: business_analyst\n";
    for ct in ["application/yaml", "text/yaml", "text/plain; charset=utf-8"] {
        let req = Request::post("/workflows/validate")
            .header(header::CONTENT_TYPE, ct)
            .body(Body::from(yaml))
            .unwrap();
        let r = send(&app, req).await;
        assert_eq!(r.status, StatusCode::OK, "{ct}: {}", r.text());
        assert_eq!(
            r.json(),
            json!({"valid": true, "name": "tiny", "tasks": ["build", "reqs"], "order": ["reqs", "build"]})
        );
    }
    let r = send(
        &app,
        post_json("/workflows/validate", json!({"yaml": yaml})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["valid"], true);
    let bad = "name: tiny\ntasks:\n  - id: build\n    role: backend_engineer\n    needs: [ghost]\n";
    let req = Request::post("/workflows/validate")
        .header(header::CONTENT_TYPE, "application/yaml")
        .body(Body::from(bad))
        .unwrap();
    send(&app, req)
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, "line 5");
    send(
        &app,
        post_json("/workflows/validate", json!({"yaml": "name: [unclosed"})),
    )
    .await
    .problem(StatusCode::UNPROCESSABLE_ENTITY, "line 1");
    send(&app, post_json("/workflows/validate", json!({"text": "x"})))
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, "yaml");
    let req = Request::post("/workflows/validate")
        .header(header::CONTENT_TYPE, "application/xml")
        .body(Body::from("<workflow/>"))
        .unwrap();
    send(&app, req)
        .await
        .problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "application/yaml");
    let req = Request::post("/workflows/validate")
        .header(header::CONTENT_TYPE, "text/yaml")
        .body(Body::from(vec![b'#'; 2 * 1024 * 1024]))
        .unwrap();
    send(&app, req)
        .await
        .problem(StatusCode::PAYLOAD_TOO_LARGE, "larger");
}

// ------------------------------------------------------------------- docs

#[tokio::test]
async fn the_openapi_document_describes_every_route_and_the_docs_render_offline() {
    let h = harness().await;
    let app = h.app();
    let r = send(&app, get("/openapi.json")).await;
    assert_eq!(r.status, StatusCode::OK);
    let doc = r.json();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    for (method, path) in ROUTES {
        let op = &doc["paths"][path][method.to_lowercase()];
        assert!(op.is_object(), "{method} {path} is not in the document");
        assert!(op["tags"].is_array(), "{method} {path} has no tag");
        let responses = op["responses"].as_object().unwrap();
        assert!(responses.contains_key("500"), "{method} {path}");
        if *path != "/health" {
            assert!(
                op["security"].to_string().contains("bearer"),
                "{method} {path} has no bearer security"
            );
            assert!(responses.contains_key("401"), "{method} {path}");
        }
    }
    assert_eq!(doc["paths"]["/health"]["get"]["security"], json!([{}]));
    assert_eq!(
        doc["paths"]["/dlq/{id}/replay"]["post"]["security"],
        json!([{"bearer": ["admin"]}])
    );
    let n_ops: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "post", "put", "delete", "patch"].contains(&k.as_str()))
                .count()
        })
        .sum();
    assert_eq!(
        n_ops,
        ROUTES.len(),
        "the document has no route the router lacks"
    );
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    for schema in [
        "Problem",
        "RunDto",
        "CreateRunRequest",
        "RunStatus",
        "EventDto",
        "ArtifactContent",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema}"
        );
    }
    assert_eq!(
        doc["paths"]["/runs"]["post"]["responses"]["422"]["content"]["application/problem+json"]["schema"]
            ["$ref"],
        "#/components/schemas/Problem"
    );

    // Every route of the router answers (none falls through to the 404 fallback).
    for (method, path) in ROUTES {
        let uri = path
            .replace("{id}", if path.starts_with("/dlq") { "1" } else { "x" })
            .replace("{name}", "sdlc")
            .replace("{gate}", "code_review");
        let req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(&uri)
            .body(Body::empty())
            .unwrap();
        let r = send(&app, req).await;
        if r.status == StatusCode::NOT_FOUND {
            assert!(
                !r.text().contains("no route"),
                "{method} {path} is not routed"
            );
        }
    }

    let external = |html: &str| {
        html.contains("src=\"http")
            || html.contains("href=\"http")
            || html.contains("src='http")
            || html.contains("href='http")
            || html.contains("fonts.googleapis")
    };
    let r = send(&app, get("/docs/")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.content_type().starts_with("text/html"));
    let html = r.text();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(!external(&html), "{html}");
    let r = send(&app, get("/docs")).await;
    assert!(r.status.is_redirection() || r.status == StatusCode::OK);
    let r = send(&app, get("/docs/swagger-initializer.js")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().contains("/openapi.json"));

    let r = send(&app, get("/redoc")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.content_type().starts_with("text/html"));
    let html = r.text();
    assert!(html.contains("/redoc/redoc.standalone.js"));
    assert!(html.contains("/openapi.json"));
    assert!(!external(&html), "{html}");
    assert!(!html.contains("http://") && !html.contains("https://"));
    let r = send(&app, get("/redoc/redoc.standalone.js")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.content_type().contains("javascript"));
    assert!(r.body.len() > 500_000);
}

// ------------------------------------------------------------------- auth

/// Store a token; `None` while the store's token methods are not implemented.
async fn token(h: &Harness, scopes: &[Scope]) -> String {
    let t = auth::generate("test", scopes, h.engine.deps().clock.now_ms());
    h.store.create_token(&t.record).await.expect("create_token");
    t.token
}

#[tokio::test]
async fn tokens_are_required_and_scoped() {
    let h = harness_with(Arc::new(ScriptedProvider::builtin()), ApiConfig::default()).await;
    let app = h.app();
    // Without a token: 401 everywhere but /health and the docs.
    send(&app, get("/runs"))
        .await
        .problem(StatusCode::UNAUTHORIZED, "missing bearer token");
    let r = send(&app, post_json("/runs", json!({"goal": GOAL}))).await;
    r.problem(StatusCode::UNAUTHORIZED, "missing bearer token");
    assert!(r.headers.contains_key(header::WWW_AUTHENTICATE));
    send(&app, get("/metrics"))
        .await
        .problem(StatusCode::UNAUTHORIZED, "token");
    send(&app, with_token(get("/runs"), "not-a-token"))
        .await
        .problem(StatusCode::UNAUTHORIZED, "malformed");
    for open in [
        "/health",
        "/openapi.json",
        "/docs/",
        "/redoc",
        "/redoc/",
        "/redoc/redoc.standalone.js",
    ] {
        assert_eq!(send(&app, get(open)).await.status, StatusCode::OK, "{open}");
    }
    // 401 comes before body checks.
    let req = Request::post("/runs").body(Body::from("garbage")).unwrap();
    send(&app, req)
        .await
        .problem(StatusCode::UNAUTHORIZED, "token");

    let read = token(&h, &[Scope::Read]).await;
    let write = token(&h, &[Scope::Read, Scope::Write]).await;
    let admin = token(&h, &[Scope::Admin]).await;
    let revoked = token(&h, &[Scope::Admin]).await;
    let revoked_id = revoked.split('_').nth(1).unwrap().to_string();
    h.store
        .revoke_token(&revoked_id, h.engine.deps().clock.now_ms())
        .await
        .unwrap();

    // A wrong secret for a real id.
    let forged = format!(
        "orch_{}_{}",
        read.split('_').nth(1).unwrap(),
        "0".repeat(64)
    );
    send(&app, with_token(get("/runs"), &forged))
        .await
        .problem(StatusCode::UNAUTHORIZED, "unknown or revoked");
    send(&app, with_token(get("/runs"), &revoked))
        .await
        .problem(StatusCode::UNAUTHORIZED, "unknown or revoked");
    send(&app, with_token(get("/runs"), "orch_abcdef123456_deadbeef"))
        .await
        .problem(StatusCode::UNAUTHORIZED, "unknown or revoked");

    // read: GETs yes, POSTs 403.
    let r = send(&app, with_token(get("/runs"), &read)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    send(
        &app,
        with_token(post_json("/runs", json!({"goal": GOAL})), &read),
    )
    .await
    .problem(StatusCode::FORBIDDEN, "--scope write");
    // write: create yes, replay 403 (admin only).
    let r = send(
        &app,
        with_token(post_json("/runs", json!({"goal": GOAL})), &write),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let r = send(&app, with_token(get(&format!("/runs/{id}/status")), &read)).await;
    assert_eq!(r.status, StatusCode::OK);
    send(&app, with_token(post_empty("/dlq/1/replay"), &write))
        .await
        .problem(StatusCode::FORBIDDEN, "--scope admin");
    send(&app, with_token(post_empty("/dlq/1/replay"), &admin))
        .await
        .problem(StatusCode::NOT_FOUND, "no dead letter 1");
    let r = send(&app, with_token(get("/metrics"), &read)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_may_be_public() {
    let h = harness_with(
        Arc::new(ScriptedProvider::builtin()),
        ApiConfig {
            metrics_public: true,
            ..ApiConfig::default()
        },
    )
    .await;
    let app = h.app();
    assert_eq!(send(&app, get("/health")).await.status, StatusCode::OK);
    let r = send(&app, get("/metrics")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.content_type().starts_with("text/plain; version=0.0.4"));
    // The middleware recorded the request under its route template.
    assert!(
        r.text().contains(
            "orchestrator_http_requests_total{method=\"GET\",route=\"/health\",status=\"200\"} 1"
        ),
        "{}",
        r.text()
    );
    // Other routes still need a token.
    send(&app, get("/runs"))
        .await
        .problem(StatusCode::UNAUTHORIZED, "token");
}

/// `/health` answers 503 while the queues cannot be read: a private
/// `redis-server` on a port of its own is stopped under a live broker.
#[tokio::test]
async fn health_is_unavailable_while_the_queues_cannot_be_read() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = std::process::Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn();
    let Ok(mut server) = server else {
        eprintln!("skipped: redis-server is not installed");
        return;
    };
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let broker = loop {
        match orch_engine::broker::RedisBroker::connect(&url, "health:").await {
            Ok(b) => break b,
            Err(e) if std::time::Instant::now() > deadline => {
                let _ = server.kill();
                panic!("the private redis-server did not start: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let embedded = TestEngine::with_broker(
        Arc::new(ScriptedProvider::builtin()),
        Arc::new(orch_engine::SystemClock),
        orch_engine::EngineOptions::default(),
        Arc::new(broker),
    )
    .await;
    let app = app(AppState::new(
        embedded.engine.clone(),
        ApiConfig {
            auth: AuthMode::Disabled,
            ..ApiConfig::default()
        },
    ));
    let r = send(&app, get("/health")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["broker"], "redis");

    server.kill().unwrap();
    server.wait().unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), send(&app, get("/health")))
        .await
        .expect("/health answers within its own bound");
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert!(r.text().contains("queues"), "{}", r.text());
}
