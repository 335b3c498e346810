//! The run's budget, end to end on the real SQLite store and the in-process
//! broker: a call that would exceed it is never made, the run waits in
//! NEEDS_INPUT, and raising the budget finishes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use orch_core::{Input, Role, RunSettings, RunStatus, TaskStatus, Workflow};
use orch_engine::Runtime;
use orch_engine::testing::{TestEngine, fast_settings, generic_provider};
use orch_llm::{Provider, Request, Response, ScriptedProvider};

const GOAL: &str = "Build a small CRUD app for managing TODO items";

/// The scripted provider, counting the calls that reach it.
#[derive(Debug)]
struct Counting {
    inner: ScriptedProvider,
    calls: AtomicU32,
}

#[async_trait]
impl Provider for Counting {
    fn name(&self) -> &str {
        "scripted"
    }
    fn is_scripted(&self) -> bool {
        true
    }
    fn default_model(&self) -> &str {
        "scripted"
    }
    async fn complete(&self, request: &Request) -> orch_llm::Result<Response> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.complete(request).await
    }
}

#[tokio::test]
async fn a_call_over_budget_is_not_made_and_raising_the_budget_finishes_the_run() {
    let provider = Arc::new(Counting {
        inner: generic_provider(),
        calls: AtomicU32::new(0),
    });
    let h = TestEngine::new(provider.clone()).await;
    let (engine, store) = (&h.engine, &h.store);
    let wf = Workflow::builtin("sdlc").unwrap();
    let settings = RunSettings {
        budget_tokens: Some(1),
        ..fast_settings()
    };
    let run = engine
        .submit(GOAL, serde_json::Value::Null, &wf, settings)
        .await
        .unwrap();
    let rt = Runtime::start(engine.clone(), &Role::SPECIALISTS, true);
    let waiting = orch_engine::testing::wait_for_end(engine, &run).await;
    assert_eq!(waiting.status, RunStatus::NeedsInput);
    let reason = waiting.status_reason.clone().unwrap_or_default();
    assert!(reason.starts_with("budget exceeded"), "{reason}");
    assert_eq!(provider.calls.load(Ordering::SeqCst), 0, "no call was made");
    let state = store.load_run(&run).await.unwrap();
    let task = state.task("requirements").unwrap();
    assert_eq!(task.status, TaskStatus::Dead);
    assert_eq!(task.attempt, 1, "a budget failure is not retried");
    assert!(
        task.last_error
            .as_deref()
            .unwrap()
            .starts_with("budget exceeded: the run has spent 0 of 1 tokens"),
        "{:?}",
        task.last_error
    );

    engine
        .apply_input(
            &run,
            Input::RaiseBudget {
                usd: None,
                tokens: Some(10_000_000),
            },
        )
        .await
        .unwrap();
    let done = orch_engine::testing::wait_for_end(engine, &run).await;
    rt.shutdown().await;
    let st = store.load_run(&run).await.unwrap();
    let errs: Vec<_> = st
        .tasks
        .iter()
        .map(|t| (t.id.clone(), t.status, t.attempt, t.last_error.clone()))
        .collect();
    assert_eq!(
        done.status,
        RunStatus::Completed,
        "{:?} {errs:?} {:?}",
        done.status_reason,
        done.settings
    );
    assert!(provider.calls.load(Ordering::SeqCst) > 0);
    assert_eq!(done.settings.budget_tokens, Some(10_000_000));
}
