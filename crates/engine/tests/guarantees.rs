//! The execution guarantees of DESIGN.md, tested on the real SQLite store
//! and the in-process broker, with injected time where leases matter.

use std::sync::Arc;
use std::time::Duration;

use orch_broker::{Broker, Delivery};
use orch_core::machine::Input;
use orch_core::{
    EventKind, GateKind, GateStatus, Role, RunId, RunSettings, RunStatus, TaskStatus, Workflow,
};
use orch_engine::{
    Clock, EngineOptions, ManualClock, Runtime, SystemClock, WorkerId, execute_delivery,
};
use orch_llm::{Provider, ScriptedProvider};
use orch_store::{EventQuery, Fence, Store, TaskOutcome};

const GOAL: &str = "Build a small CRUD app for managing TODO items";

use orch_engine::testing::{TestEngine as Harness, fast_settings, generic_provider};

async fn harness(
    provider: Arc<dyn Provider>,
    clock: Arc<dyn Clock>,
    opts: EngineOptions,
) -> Harness {
    Harness::with(provider, clock, opts).await
}

/// Submit the demo goal as an `sdlc` run with millisecond retry backoff.
async fn submit_sdlc(engine: &orch_engine::Engine) -> RunId {
    let wf = Workflow::builtin("sdlc").unwrap();
    engine
        .submit(GOAL, serde_json::Value::Null, &wf, fast_settings())
        .await
        .unwrap()
}

fn generic() -> Arc<dyn Provider> {
    Arc::new(generic_provider())
}

async fn next_delivery(broker: &Arc<dyn Broker>, role: Role) -> Delivery {
    broker
        .receive(role, "test", Duration::from_millis(500))
        .await
        .unwrap()
        .expect("a dispatch on the queue")
}

async fn events_of(store: &Arc<dyn Store>, run: &RunId, kind: EventKind, task: &str) -> usize {
    store
        .list_events(run, EventQuery::default())
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind == kind && e.task_id.as_deref() == Some(task))
        .count()
}

#[tokio::test]
async fn a_message_delivered_twice_runs_the_task_once() {
    let h = harness(generic(), Arc::new(SystemClock), EngineOptions::default()).await;
    let run = submit_sdlc(&h.engine).await;
    let d = next_delivery(&h.broker, Role::BusinessAnalyst).await;
    let deps = h.engine.deps().clone();
    let opts = h.engine.options().clone();
    execute_delivery(&deps, &opts, &WorkerId::new(Role::BusinessAnalyst), &d)
        .await
        .unwrap();
    // The same message again, to another worker: dropped by the claim.
    execute_delivery(&deps, &opts, &WorkerId::new(Role::BusinessAnalyst), &d)
        .await
        .unwrap();

    assert_eq!(
        events_of(&h.store, &run, EventKind::TaskStarted, "requirements").await,
        1
    );
    assert_eq!(
        events_of(&h.store, &run, EventKind::TaskSucceeded, "requirements").await,
        1
    );
    assert_eq!(
        events_of(&h.store, &run, EventKind::LlmRequest, "requirements").await,
        1
    );
    let arts = h.store.list_artifacts(&run, false).await.unwrap();
    assert_eq!(arts.iter().filter(|a| a.name == "requirements").count(), 1);
    let task = task_of(&h.store, &run, "requirements").await;
    assert_eq!((task.status, task.attempt), (TaskStatus::Succeeded, 1));
}

#[tokio::test]
async fn a_worker_that_lost_its_lease_cannot_commit() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let opts = EngineOptions {
        lease_ttl: Duration::from_secs(30),
        ..EngineOptions::default()
    };
    let h = harness(generic(), clock.clone(), opts).await;
    let run = submit_sdlc(&h.engine).await;
    let d = next_delivery(&h.broker, Role::BusinessAnalyst).await;

    // Worker A claims attempt 1, then goes silent past its lease.
    let now = clock.now_ms();
    let claimed = h
        .store
        .claim_task(&run, "requirements", 1, "elsewhere:1:a", now + 30_000, now)
        .await
        .unwrap();
    assert!(claimed.is_some());
    clock.advance(Duration::from_secs(31));
    let report = h.engine.sweep().await.unwrap();
    assert_eq!(report.expired, 1);

    // A's late result is refused and writes nothing.
    let fence = Fence {
        run_id: run.clone(),
        task_id: "requirements".into(),
        attempt: d.dispatch.attempt,
        owner: "elsewhere:1:a".into(),
    };
    assert!(
        !h.store
            .heartbeat(&fence, clock.now_ms() + 30_000)
            .await
            .unwrap()
    );
    let outcome = TaskOutcome {
        status: TaskStatus::Succeeded,
        summary: Some("late".into()),
        verdict: None,
        error: None,
        retryable: true,
        artifacts: vec![orch_core::NewArtifact {
            name: "requirements".into(),
            kind: "requirements".into(),
            path: None,
            content: "late".into(),
            metadata: serde_json::Value::Null,
        }],
        events: vec![],
        usage: Default::default(),
        llm_calls: Vec::new(),
    };
    let err = h
        .store
        .complete_task(&fence, &outcome, clock.now_ms())
        .await
        .unwrap_err();
    assert!(matches!(err, orch_store::Error::LeaseLost { .. }), "{err}");
    assert!(
        h.store
            .list_artifacts(&run, false)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        events_of(&h.store, &run, EventKind::LeaseExpired, "requirements").await,
        1
    );
    let task = task_of(&h.store, &run, "requirements").await;
    assert_eq!(
        task.status,
        TaskStatus::Ready,
        "a retry is scheduled after backoff"
    );
}

#[tokio::test]
async fn a_task_whose_worker_vanished_is_rerun_after_its_lease_expires() {
    let clock = Arc::new(ManualClock::new(5_000_000));
    let opts = EngineOptions {
        lease_ttl: Duration::from_secs(10),
        ..EngineOptions::default()
    };
    let h = harness(generic(), clock.clone(), opts).await;
    let run = submit_sdlc(&h.engine).await;
    let first = next_delivery(&h.broker, Role::BusinessAnalyst).await;
    let now = clock.now_ms();
    h.store
        .claim_task(
            &run,
            "requirements",
            1,
            "gone-host:4242:ba-1",
            now + 10_000,
            now,
        )
        .await
        .unwrap()
        .unwrap();

    // Before the lease runs out nothing happens.
    clock.advance(Duration::from_secs(9));
    assert_eq!(h.engine.sweep().await.unwrap().expired, 0);
    // After it, the attempt is failed and, once the backoff passed, re-dispatched.
    clock.advance(Duration::from_secs(2));
    assert_eq!(h.engine.sweep().await.unwrap().expired, 1);
    clock.advance(Duration::from_secs(1));
    h.engine.tick(&run).await.unwrap();
    let second = next_delivery(&h.broker, Role::BusinessAnalyst).await;
    assert_eq!((first.dispatch.attempt, second.dispatch.attempt), (1, 2));
    let deps = h.engine.deps().clone();
    execute_delivery(
        &deps,
        h.engine.options(),
        &WorkerId::new(Role::BusinessAnalyst),
        &second,
    )
    .await
    .unwrap();
    let task = task_of(&h.store, &run, "requirements").await;
    assert_eq!((task.status, task.attempt), (TaskStatus::Succeeded, 2));
    assert_eq!(
        events_of(&h.store, &run, EventKind::TaskSucceeded, "requirements").await,
        1
    );
}

#[tokio::test]
async fn the_demo_run_completes_through_both_gates_with_one_rework_round() {
    let h = harness(
        Arc::new(ScriptedProvider::builtin()),
        Arc::new(SystemClock),
        EngineOptions::default(),
    )
    .await;
    let rt = Runtime::start(h.engine.clone(), &Role::SPECIALISTS, true);
    let run = submit_sdlc(&h.engine).await;
    let done = h
        .engine
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
    let state = h.store.load_run(&run).await.unwrap();
    assert_eq!(
        state.gate(GateKind::CodeReview).unwrap().status,
        GateStatus::Passed
    );
    assert_eq!(
        state.gate(GateKind::SecurityReview).unwrap().status,
        GateStatus::Passed
    );
    assert_eq!(state.gate(GateKind::CodeReview).unwrap().rework_rounds, 1);
    assert!(state.task("code_review_r1").is_some());
    assert!(
        state
            .tasks
            .iter()
            .all(|t| t.status == TaskStatus::Succeeded)
    );
    // Security review started only after the code review gate passed.
    let events = h
        .store
        .list_events(&run, EventQuery::default())
        .await
        .unwrap();
    let passed = events
        .iter()
        .position(|e| e.kind == EventKind::GatePassed)
        .unwrap();
    let sec = events
        .iter()
        .position(|e| {
            e.kind == EventKind::TaskQueued && e.task_id.as_deref() == Some("security_review")
        })
        .unwrap();
    assert!(passed < sec);
    // Every LLM event says the provider is scripted.
    assert!(
        events
            .iter()
            .filter(|e| e.kind == EventKind::LlmRequest)
            .all(|e| e.data["scripted"] == true)
    );
}

#[tokio::test]
async fn a_task_that_always_fails_ends_in_the_dead_letter_queue_and_can_be_replayed() {
    let fixture = r#"
tasks:
  requirements:
    - error: { status: 500, message: "upstream overloaded" }
      on_attempts: [1, 2, 3]
"#;
    let provider = Arc::new(ScriptedProvider::from_yaml("failing", fixture).unwrap());
    let h = harness(provider, Arc::new(SystemClock), EngineOptions::default()).await;
    let rt = Runtime::start(h.engine.clone(), &Role::SPECIALISTS, true);
    let run = submit_sdlc(&h.engine).await;
    let waiting = h
        .engine
        .wait(
            &run,
            Duration::from_millis(20),
            Some(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert_eq!(waiting.status, RunStatus::NeedsInput);
    assert!(waiting.status_reason.unwrap().contains("dead letter queue"));
    let letters = h.store.list_dead_letters(Some(&run), false).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (letters[0].task_id.as_str(), letters[0].attempts),
        ("requirements", 3)
    );
    assert!(letters[0].error.contains("upstream overloaded"));

    // Attempt 4 is not scripted to fail: the replay completes the run.
    h.engine.replay_dead_letter(letters[0].id).await.unwrap();
    let done = h
        .engine
        .wait(
            &run,
            Duration::from_millis(20),
            Some(Duration::from_secs(30)),
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
    assert!(
        h.store
            .list_dead_letters(Some(&run), false)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_rejected_review_escalates_and_a_waiver_resumes_the_run() {
    let fixture = r#"
roles:
  code_reviewer:
    - text: |
        <artifact name="code_review" type="review">
        Still broken.
        {"verdict": "FAIL", "findings": ["handlers return 500 on bad input"]}
        </artifact>
"#;
    let provider = Arc::new(ScriptedProvider::from_yaml("strict", fixture).unwrap());
    let h = harness(provider, Arc::new(SystemClock), EngineOptions::default()).await;
    let rt = Runtime::start(h.engine.clone(), &Role::SPECIALISTS, true);
    let wf = Workflow::builtin("sdlc").unwrap();
    let settings = RunSettings {
        max_rework: 1,
        ..fast_settings()
    };
    let run = h
        .engine
        .submit(GOAL, serde_json::Value::Null, &wf, settings)
        .await
        .unwrap();
    let waiting = h
        .engine
        .wait(
            &run,
            Duration::from_millis(20),
            Some(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert_eq!(waiting.status, RunStatus::NeedsInput);
    assert!(
        waiting
            .status_reason
            .as_deref()
            .unwrap()
            .contains("gate waive")
    );
    let state = h.store.load_run(&run).await.unwrap();
    assert_eq!(
        state.task("security_review").unwrap().status,
        TaskStatus::Pending
    );

    // Answering a run that is not waiting is refused; waiving resumes it.
    h.engine
        .apply_input(
            &run,
            Input::WaiveGate {
                gate: GateKind::CodeReview,
                reason: "accepted risk".into(),
            },
        )
        .await
        .unwrap();
    let done = h
        .engine
        .wait(
            &run,
            Duration::from_millis(20),
            Some(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert_eq!(
        done.status,
        RunStatus::Completed,
        "{:?}",
        done.status_reason
    );
    let err = h
        .engine
        .apply_input(&run, Input::Answer { text: "hi".into() })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not waiting"), "{err}");
    rt.shutdown().await;
}

#[tokio::test]
async fn cancel_stops_a_run_and_fences_out_its_workers() {
    let h = harness(generic(), Arc::new(SystemClock), EngineOptions::default()).await;
    let run = submit_sdlc(&h.engine).await;
    let d = next_delivery(&h.broker, Role::BusinessAnalyst).await;
    h.engine
        .apply_input(
            &run,
            Input::Cancel {
                reason: "changed my mind".into(),
            },
        )
        .await
        .unwrap();
    // The queued message arrives after the cancel: nothing runs.
    execute_delivery(
        h.engine.deps(),
        h.engine.options(),
        &WorkerId::new(Role::BusinessAnalyst),
        &d,
    )
    .await
    .unwrap();
    let state = h.store.load_run(&run).await.unwrap();
    assert_eq!(state.run.status, RunStatus::Cancelled);
    assert!(
        state
            .tasks
            .iter()
            .all(|t| t.status == TaskStatus::Cancelled)
    );
    assert_eq!(
        events_of(&h.store, &run, EventKind::TaskStarted, "requirements").await,
        0
    );
    let err = h
        .engine
        .apply_input(
            &run,
            Input::Cancel {
                reason: "again".into(),
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already CANCELLED"), "{err}");
}

#[tokio::test]
async fn llm_events_precede_the_outcome_and_a_slow_call_is_logged_while_it_runs() {
    let provider =
        Arc::new(ScriptedProvider::from_yaml("slow", "delay_ms: 700\nroles: {}").unwrap());
    let h = harness(provider, Arc::new(SystemClock), EngineOptions::default()).await;
    let run = submit_sdlc(&h.engine).await;
    let d = next_delivery(&h.broker, Role::BusinessAnalyst).await;
    let (deps, opts) = (h.engine.deps().clone(), h.engine.options().clone());
    let attempt = tokio::spawn(async move {
        execute_delivery(&deps, &opts, &WorkerId::new(Role::BusinessAnalyst), &d)
            .await
            .unwrap();
    });
    // The call takes 700 ms; its request is in the log well before it ends.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(
        events_of(&h.store, &run, EventKind::LlmRequest, "requirements").await,
        1
    );
    assert_eq!(
        events_of(&h.store, &run, EventKind::TaskSucceeded, "requirements").await,
        0
    );
    attempt.await.unwrap();
    let events = h
        .store
        .list_events(&run, EventQuery::default())
        .await
        .unwrap();
    let seq_of = |kind: EventKind| {
        events
            .iter()
            .find(|e| e.kind == kind && e.task_id.as_deref() == Some("requirements"))
            .map(|e| e.seq)
            .unwrap()
    };
    assert!(seq_of(EventKind::TaskStarted) < seq_of(EventKind::LlmRequest));
    assert!(seq_of(EventKind::LlmRequest) < seq_of(EventKind::LlmResponse));
    assert!(seq_of(EventKind::LlmResponse) < seq_of(EventKind::TaskSucceeded));
}

async fn task_of(store: &Arc<dyn Store>, run: &RunId, task: &str) -> orch_core::Task {
    store
        .list_tasks(run)
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.id == task)
        .unwrap()
}

async fn status_of(store: &Arc<dyn Store>, run: &RunId, task: &str) -> (TaskStatus, u32) {
    let t = task_of(store, run, task).await;
    (t.status, t.attempt)
}

/// A worker beside the engine commits its outcome with the run's next step:
/// no wake-up, no tick, the next task queued and published. When another
/// engine saved the run in between, the step is left to the engine, which
/// is woken as a worker elsewhere would wake it.
#[tokio::test]
async fn a_completion_beside_the_engine_takes_the_next_step() {
    let h = harness(generic(), Arc::new(SystemClock), EngineOptions::default()).await;
    let run = submit_sdlc(&h.engine).await;
    let steps = h.engine.changes();
    let saved = steps.borrow().count;
    let d = next_delivery(&h.broker, Role::BusinessAnalyst).await;
    h.engine
        .execute_delivery(&WorkerId::new(Role::BusinessAnalyst), &d)
        .await
        .unwrap();
    assert_eq!(
        status_of(&h.store, &run, "requirements").await,
        (TaskStatus::Succeeded, 1)
    );
    assert_eq!(
        status_of(&h.store, &run, "plan").await,
        (TaskStatus::Queued, 1),
        "queued by the completion's own transaction"
    );
    assert_eq!(
        steps.borrow().count,
        saved + 1,
        "waiters are told of the step"
    );
    assert!(
        h.broker.wakes(Duration::ZERO).await.unwrap().is_empty(),
        "nothing left for the engine to do"
    );
    let d = next_delivery(&h.broker, Role::ProjectManager).await;
    assert_eq!(
        (d.dispatch.task_id.as_str(), d.dispatch.attempt),
        ("plan", 1)
    );

    // Another engine (another process) saves the run: this engine's view is
    // outdated, so the completion's step starts from the run read anew.
    let state = h.store.load_run(&run).await.unwrap();
    h.store
        .save_run(
            &run,
            state.run.version,
            &orch_core::StateDiff::default(),
            &state,
            &[],
            &[],
            state.run.updated_at,
            orch_store::Durability::Durable,
        )
        .await
        .unwrap();
    h.engine
        .execute_delivery(&WorkerId::new(Role::ProjectManager), &d)
        .await
        .unwrap();
    assert_eq!(
        status_of(&h.store, &run, "plan").await,
        (TaskStatus::Succeeded, 1)
    );
    assert_eq!(
        status_of(&h.store, &run, "ux_design").await,
        (TaskStatus::Queued, 1),
        "stepped from the run as stored, not from the outdated view"
    );
    assert!(h.broker.wakes(Duration::ZERO).await.unwrap().is_empty());
    let events = h
        .store
        .list_events(&run, EventQuery::default())
        .await
        .unwrap();
    assert!(
        events.windows(2).all(|w| w[1].seq == w[0].seq + 1),
        "one event log, no gaps"
    );
}

/// A failed attempt's retry is queued when its backoff ends, not when the
/// sweeper next ticks every active run (here: not within the test).
#[tokio::test]
async fn a_retry_is_queued_when_its_backoff_ends() {
    let fixture = "roles: {}\ntasks:\n  requirements:\n    - error: { status: 503, message: overloaded }\n      on_attempts: [1]\n";
    let provider: Arc<dyn Provider> =
        Arc::new(ScriptedProvider::from_yaml("retry", fixture).unwrap());
    let opts = EngineOptions {
        sweep_every: Duration::from_secs(3600),
        ..EngineOptions::default()
    };
    let h = harness(provider, Arc::new(SystemClock), opts).await;
    let rt = Runtime::start(h.engine.clone(), &Role::SPECIALISTS, true);
    let wf = Workflow::builtin("sdlc").unwrap();
    let settings = RunSettings {
        retry_backoff_ms: 50,
        retry_backoff_max_ms: 50,
        ..RunSettings::default()
    };
    let run = h
        .engine
        .submit(GOAL, serde_json::Value::Null, &wf, settings)
        .await
        .unwrap();
    let done = h.wait(&run).await;
    rt.shutdown().await;
    assert_eq!(
        done.status,
        RunStatus::Completed,
        "{:?}",
        done.status_reason
    );
    assert_eq!(
        events_of(
            &h.store,
            &run,
            EventKind::TaskRetryScheduled,
            "requirements"
        )
        .await,
        1
    );
    assert_eq!(
        status_of(&h.store, &run, "requirements").await,
        (TaskStatus::Succeeded, 2)
    );
}

/// Workers in a process of their own (`orchestrator worker`: no engine loop
/// there) take each run's next step with their completions, and tell the
/// engine loop elsewhere when a run ends, whose waiters then hear of it at
/// once (here the waiter's poll is an hour: only that announcement ends it).
#[tokio::test]
async fn workers_without_the_engine_loop_step_runs_and_announce_their_end() {
    let h = harness(generic(), Arc::new(SystemClock), EngineOptions::default()).await;
    // The worker process: its own engine on the same store and queues.
    let workers = orch_engine::Engine::new(h.engine.deps().clone(), EngineOptions::default());
    let stepped = workers.changes();
    let serve = Runtime::start(h.engine.clone(), &[], true);
    let worker = Runtime::start(workers, &Role::SPECIALISTS, false);
    let run = submit_sdlc(&h.engine).await;
    let saved_by_serve = h.engine.changes().borrow().count;
    let done = tokio::time::timeout(
        Duration::from_secs(60),
        h.engine.wait(&run, Duration::from_secs(3600), None),
    )
    .await
    .expect("the end of the run is announced to the waiter")
    .unwrap();
    worker.shutdown().await;
    serve.shutdown().await;
    assert_eq!(
        done.status,
        RunStatus::Completed,
        "{:?}",
        done.status_reason
    );
    let tasks = h.store.list_tasks(&run).await.unwrap();
    assert!(
        tasks
            .iter()
            .all(|t| t.status == TaskStatus::Succeeded && t.attempt == 1)
    );
    // Nine completions; the worker process saved a step with (nearly) each:
    // one of two reviews or engineers ending together may leave it to the loop.
    assert!(
        stepped.borrow().count >= 8,
        "steps saved by the worker process: {}",
        stepped.borrow().count
    );
    assert!(
        h.engine.changes().borrow().count > saved_by_serve,
        "the loop announced the end"
    );
}

/// Sweeps run every second, but tick every active run (the net for a lost
/// wake-up) only every `tick_all_every`; a run whose wake-up was lost is
/// moved on by the next such round.
#[tokio::test]
async fn a_lost_wake_up_is_repaired_by_the_next_round_of_ticks() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let opts = EngineOptions {
        tick_all_every: Duration::from_secs(10),
        ..EngineOptions::default()
    };
    let h = harness(generic(), clock.clone(), opts).await;
    let run = submit_sdlc(&h.engine).await;
    assert_eq!(
        h.engine.sweep().await.unwrap().ticked,
        1,
        "the first sweep ticks"
    );

    // A worker elsewhere completes `requirements` and its wake-up is lost.
    let d = next_delivery(&h.broker, Role::BusinessAnalyst).await;
    execute_delivery(
        h.engine.deps(),
        h.engine.options(),
        &WorkerId::new(Role::BusinessAnalyst),
        &d,
    )
    .await
    .unwrap();
    assert_eq!(
        h.broker.wakes(Duration::ZERO).await.unwrap(),
        vec![run.clone()]
    );
    assert_eq!(
        status_of(&h.store, &run, "requirements").await,
        (TaskStatus::Succeeded, 1)
    );

    clock.advance(Duration::from_secs(1));
    assert_eq!(h.engine.sweep().await.unwrap().ticked, 0, "not yet");
    assert_eq!(
        status_of(&h.store, &run, "plan").await.0,
        TaskStatus::Pending
    );
    clock.advance(Duration::from_secs(9));
    assert_eq!(h.engine.sweep().await.unwrap().ticked, 1);
    assert_eq!(
        status_of(&h.store, &run, "plan").await,
        (TaskStatus::Queued, 1),
        "moved on by the round of ticks"
    );
}

/// Shutdown lets attempts run on for the drain timeout, then gives their
/// tasks back: queued again at once, the attempt not counted, its lease
/// not waited for. A process started after it completes the run.
#[tokio::test]
async fn shutdown_gives_back_attempts_still_running_after_the_drain_timeout() {
    let slow: Arc<dyn Provider> =
        Arc::new(generic_provider().with_latency(Duration::from_secs(3_600)));
    let opts = EngineOptions {
        drain_timeout: Duration::from_millis(50),
        ..EngineOptions::default()
    };
    let h = harness(slow, Arc::new(SystemClock), opts).await;
    let run = submit_sdlc(&h.engine).await;
    let rt = Runtime::start(h.engine.clone(), &Role::SPECIALISTS, true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while status_of(&h.store, &run, "requirements").await.0 != TaskStatus::Running {
        assert!(tokio::time::Instant::now() < deadline, "never claimed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let max_before = task_of(&h.store, &run, "requirements").await.max_attempts;
    // Well under the lease's 30 s and the hour the call would take.
    tokio::time::timeout(Duration::from_secs(10), rt.shutdown())
        .await
        .expect("shutdown gives back instead of waiting");

    let t = task_of(&h.store, &run, "requirements").await;
    assert_eq!(t.status, TaskStatus::Queued, "queued again at once: {t:?}");
    assert_eq!(t.attempt, 2);
    assert_eq!(
        t.max_attempts,
        max_before + 1,
        "the given-back attempt is not counted"
    );
    assert_eq!(t.lease_owner, None);
    assert_eq!(
        events_of(&h.store, &run, EventKind::TaskReleased, "requirements").await,
        1
    );
    assert_eq!(
        events_of(&h.store, &run, EventKind::LeaseExpired, "requirements").await
            + events_of(&h.store, &run, EventKind::TaskFailed, "requirements").await,
        0,
        "a release is not a failure"
    );

    // A new process (fast provider, same store) picks the task up and ends the run.
    let fast = orch_engine::Engine::new(
        orch_engine::Deps {
            provider: generic(),
            ..h.engine.deps().clone()
        },
        EngineOptions::default(),
    );
    let rt = Runtime::start(fast.clone(), &Role::SPECIALISTS, true);
    let end = orch_engine::testing::wait_for_end(&fast, &run).await;
    rt.shutdown().await;
    assert_eq!(end.status, RunStatus::Completed, "{end:?}");
    assert_eq!(
        events_of(&h.store, &run, EventKind::TaskStarted, "requirements").await,
        2
    );
}
