//! `/metrics` over a real engine: one scripted sdlc run on a SQLite file and
//! the in-process broker, then the page rendered from the store's aggregates.

use std::sync::Arc;
use std::time::Duration;

use orch_api::metrics::{Metrics, check_exposition};
use orch_core::{Role, RunStatus, Workflow};
use orch_engine::Runtime;
use orch_engine::testing::{TestEngine, fast_settings};
use orch_llm::ScriptedProvider;

const GOAL: &str = "Build a small CRUD app for managing TODO items";

/// The value of the one sample line that starts with `prefix`.
fn value_of(page: &str, prefix: &str) -> f64 {
    let lines: Vec<&str> = page.lines().filter(|l| l.starts_with(prefix)).collect();
    assert_eq!(
        lines.len(),
        1,
        "one line starting with {prefix:?} in\n{page}"
    );
    lines[0].rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_completed_run_shows_on_the_metrics_page() {
    let h = TestEngine::new(Arc::new(ScriptedProvider::builtin())).await;
    let engine = &h.engine;
    let rt = Runtime::start(engine.clone(), &Role::SPECIALISTS, true);
    let wf = Workflow::builtin("sdlc").unwrap();
    let settings = fast_settings();
    let run = engine
        .submit(GOAL, serde_json::Value::Null, &wf, settings)
        .await
        .unwrap();
    let done = engine
        .wait(
            &run,
            Duration::from_millis(50),
            Some(Duration::from_secs(60)),
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

    let metrics = Metrics::new();
    metrics.record_http("GET", "/runs/{id}", 200, Duration::from_millis(4));
    let page = metrics.render(engine).await.unwrap();
    check_exposition(&page).unwrap_or_else(|e| panic!("{e}\n{page}"));

    assert!(
        page.lines()
            .any(|l| l == "orchestrator_runs{status=\"COMPLETED\"} 1"),
        "{page}"
    );
    assert_eq!(
        value_of(&page, "orchestrator_runs{status=\"RUNNING\"}"),
        0.0
    );
    assert!(
        value_of(
            &page,
            "orchestrator_tasks{role=\"backend_engineer\",status=\"SUCCEEDED\"}"
        ) >= 1.0
    );
    assert!(
        value_of(
            &page,
            "orchestrator_task_duration_seconds_count{role=\"backend_engineer\"}"
        ) >= 1.0
    );
    assert_eq!(
        value_of(
            &page,
            "orchestrator_task_duration_seconds_bucket{role=\"backend_engineer\",le=\"+Inf\"}"
        ),
        value_of(
            &page,
            "orchestrator_task_duration_seconds_count{role=\"backend_engineer\"}"
        )
    );
    let scripted_calls: f64 = page
        .lines()
        .filter(|l| {
            l.starts_with("orchestrator_llm_calls_total{") && l.contains("model=\"scripted\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(scripted_calls > 0.0, "{page}");
    assert_eq!(
        value_of(
            &page,
            "orchestrator_gates{gate=\"code_review\",status=\"PASSED\"}"
        ),
        1.0
    );
    assert_eq!(
        value_of(
            &page,
            "orchestrator_gates{gate=\"security_review\",status=\"PASSED\"}"
        ),
        1.0
    );
    assert_eq!(value_of(&page, "orchestrator_dead_letters "), 0.0);
    for role in Role::SPECIALISTS {
        let prefix = format!(
            "orchestrator_queue_depth{{queue=\"{}\",role=\"{}\"}}",
            role.queue(),
            role.as_str()
        );
        assert_eq!(value_of(&page, &prefix), 0.0, "{prefix}");
    }
    assert_eq!(
        value_of(
            &page,
            "orchestrator_http_requests_total{method=\"GET\",route=\"/runs/{id}\",status=\"200\"}"
        ),
        1.0
    );
}
