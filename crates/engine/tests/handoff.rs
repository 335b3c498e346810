//! The hand-off (crates/engine/src/worker.rs, "Hand-off"): a completion's
//! step gives the task it dispatches to the worker that completed, claimed
//! by the step's own save, instead of publishing it — on the real SQLite
//! store and in-process broker, with every role's workers in process.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use orch_broker::{Broker, ChannelMessage, ChannelSubscription, Delivery, Dispatch, MemoryBroker};
use orch_core::{EventKind, Role, RunId, RunStatus, TaskStatus, Workflow};
use orch_engine::testing::{TestEngine, generic_provider};
use orch_engine::{EngineOptions, SystemClock};
use orch_store::EventQuery;

/// The in-process broker, noting the tasks published on the role queues.
struct Counting {
    inner: MemoryBroker,
    published: Mutex<BTreeSet<String>>,
}

#[async_trait]
impl Broker for Counting {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn publish(&self, dispatch: &Dispatch) -> orch_broker::Result<()> {
        self.published
            .lock()
            .unwrap()
            .insert(dispatch.task_id.clone());
        self.inner.publish(dispatch).await
    }
    async fn receive(
        &self,
        role: Role,
        consumer: &str,
        timeout: Duration,
    ) -> orch_broker::Result<Option<Delivery>> {
        self.inner.receive(role, consumer, timeout).await
    }
    async fn ack(&self, delivery: &Delivery) -> orch_broker::Result<()> {
        self.inner.ack(delivery).await
    }
    async fn depth(&self, role: Role) -> orch_broker::Result<u64> {
        self.inner.depth(role).await
    }
    async fn wake(&self, run_id: &RunId) -> orch_broker::Result<()> {
        self.inner.wake(run_id).await
    }
    async fn wakes(&self, timeout: Duration) -> orch_broker::Result<Vec<RunId>> {
        self.inner.wakes(timeout).await
    }
    async fn publish_channel(&self, msg: &ChannelMessage) -> orch_broker::Result<()> {
        self.inner.publish_channel(msg).await
    }
    async fn subscribe_channel(
        &self,
        run_id: &RunId,
        channel: &str,
    ) -> orch_broker::Result<ChannelSubscription> {
        self.inner.subscribe_channel(run_id, channel).await
    }
}

/// An `sdlc` run with nothing else running: after the first task, which
/// its submission publishes, each step hands its task to the worker that
/// completed — except one of the two engineers, dispatched together, which
/// is published for another worker. Every task runs once, under a lease
/// named for its role, and reads what its upstream wrote.
#[tokio::test]
async fn a_run_alone_is_handed_from_worker_to_worker() {
    let broker = Arc::new(Counting {
        inner: MemoryBroker::new(),
        published: Mutex::default(),
    });
    let h = TestEngine::with_broker(
        Arc::new(generic_provider()),
        Arc::new(SystemClock),
        EngineOptions::default(),
        broker.clone(),
    )
    .await;
    let store = &h.store;
    let wf = Workflow::builtin("sdlc").unwrap();
    let (id, run) = h
        .run_to_end("Build a small CRUD app for managing TODO items", &wf)
        .await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.status_reason);

    let state = store.load_run(&id).await.unwrap();
    let events = store.list_events(&id, EventQuery::default()).await.unwrap();
    for t in &state.tasks {
        assert_eq!(
            (t.status, t.attempt),
            (TaskStatus::Succeeded, 1),
            "{}",
            t.id
        );
        let started = of(&events, EventKind::TaskStarted, &t.id);
        assert_eq!(started.len(), 1, "{} started once", t.id);
        let owner = started[0].data["owner"].as_str().unwrap();
        assert!(
            owner.contains(&format!(":{}-", t.role.short())),
            "{}: owner {owner} is named for its role",
            t.id
        );
    }
    // (The engine loop's start-up may publish the first task again: a
    // duplicate, dropped by its claim.)
    let published = broker.published.lock().unwrap().clone();
    assert_eq!(
        published.len(),
        2,
        "published: the first task and one of the two engineers; the rest handed over: {published:?}"
    );
    assert!(published.contains("requirements"));
    assert!(published.contains("backend") || published.contains("frontend"));
    // A handed task reads what its upstream wrote (read with the step that
    // handed it over): the code review's prompt carries the backend's code.
    let artifacts = store.list_artifacts(&id, true).await.unwrap();
    let code = artifacts
        .iter()
        .find(|a| a.task_id == "backend")
        .expect("the backend wrote an artifact");
    let prompt = events
        .iter()
        .find(|e| e.kind == EventKind::LlmRequest && e.task_id.as_deref() == Some("code_review"))
        .expect("the code review was prompted");
    assert!(
        prompt.data["messages"].to_string().contains(&code.name),
        "the code review's prompt names {}",
        code.name
    );
    // The code review reads both engineers' code: whichever engineer hands
    // it over does not hold the other's, so it never starts before that
    // step is saved (pipelined); the tasks of the chain before it may.
    let pipelined: BTreeSet<&str> = pipelined(&events).into_iter().collect();
    assert!(!pipelined.contains("code_review"), "{pipelined:?}");
    assert!(pipelined.contains("architecture"), "{pipelined:?}");
}

/// The events of `kind` about `task`, in order.
fn of<'a>(
    events: &'a [orch_core::Event],
    kind: EventKind,
    task: &str,
) -> Vec<&'a orch_core::Event> {
    events
        .iter()
        .filter(|e| e.kind == kind && e.task_id.as_deref() == Some(task))
        .collect()
}

/// The tasks handed over while the step handing them committed (their
/// `task_queued` event says `pipelined`), in order.
fn pipelined(events: &[orch_core::Event]) -> Vec<&str> {
    events
        .iter()
        .filter(|e| e.kind == EventKind::TaskQueued && e.data["pipelined"] == true)
        .filter_map(|e| e.task_id.as_deref())
        .collect()
}

/// A chain of `n` tasks, each reading the one before (and so, transitively,
/// every earlier one), as the benchmark's S1.
fn chain(n: usize) -> Workflow {
    let roles = [Role::BusinessAnalyst, Role::ProjectManager, Role::TechLead];
    let tasks = (0..n)
        .map(|i| orch_core::TaskSpec {
            id: format!("t{i}"),
            role: roles[i % roles.len()],
            title: format!("step {i}"),
            instructions: "Write the next step.".into(),
            needs: if i == 0 {
                vec![]
            } else {
                vec![format!("t{}", i - 1)]
            },
            produces: vec![orch_core::ExpectedArtifact {
                name: format!("a{i}"),
                kind: "document".into(),
            }],
            validation: vec![orch_core::ValidationRule::ArtifactsPresent],
            gate: None,
            retries: 2,
            timeout_secs: None,
            dedupe_key: None,
        })
        .collect();
    Workflow {
        name: format!("chain{n}"),
        description: "a chain".into(),
        success_criteria: vec![],
        tasks,
    }
}

/// An engine whose provider keeps a copy of every request, and that copy.
async fn recorded() -> (
    Arc<orch_llm::Recording<orch_llm::ScriptedProvider>>,
    TestEngine,
) {
    let provider = Arc::new(orch_llm::Recording::new(generic_provider()));
    let h = TestEngine::with(
        provider.clone(),
        Arc::new(SystemClock),
        EngineOptions::default(),
    )
    .await;
    (provider, h)
}

/// Run `sql` (a trigger that injects a fault or an input) on a connection
/// of the test's own to the engine's SQLite file.
async fn inject(h: &TestEngine, sql: &'static str) {
    use sqlx::Connection;
    let mut db = sqlx::SqliteConnection::connect(&h.database_url())
        .await
        .unwrap();
    sqlx::query(sql).execute(&mut db).await.unwrap();
    db.close().await.unwrap();
}

/// Pipelined hand-off (worker.rs): along a chain, a worker handed a task
/// runs it while the step that handed it over commits, on the inputs it
/// expects that step to read. The log says which hand-offs were pipelined;
/// each task was asked of the provider once (no attempt was run again on
/// other inputs), ran once, and its prompt — read back from its event —
/// quotes every earlier artifact as stored.
#[tokio::test]
async fn a_chain_runs_each_task_while_the_step_before_commits() {
    let (provider, h) = recorded().await;
    let store = &h.store;
    let n = 8;
    let (id, run) = h.run_to_end("a chain", &chain(n)).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.status_reason);

    let state = store.load_run(&id).await.unwrap();
    let events = store.list_events(&id, EventQuery::default()).await.unwrap();
    for t in &state.tasks {
        assert_eq!(
            (t.status, t.attempt),
            (TaskStatus::Succeeded, 1),
            "{}",
            t.id
        );
        assert_eq!(
            of(&events, EventKind::TaskStarted, &t.id).len(),
            1,
            "{} started once",
            t.id
        );
    }
    assert_eq!(
        provider.requests().len(),
        n,
        "one call per task: none ran again"
    );
    let pipelined = pipelined(&events);
    // The first task is published; the second is handed by a worker that
    // received its task from a queue (acknowledged once this commits, so
    // not pipelined); every later one by a worker running a handed task.
    let later: Vec<String> = (2..n).map(|i| format!("t{i}")).collect();
    assert_eq!(pipelined, later, "pipelined hand-offs");
    let artifacts = store.list_artifacts(&id, true).await.unwrap();
    for i in 1..n {
        let prompt = of(&events, EventKind::LlmRequest, &format!("t{i}"));
        let text = prompt[0].data["messages"].to_string();
        for a in artifacts.iter().filter(|a| a.name < format!("a{i}")) {
            let quoted = serde_json::to_string(&a.content).unwrap();
            let quoted = quoted.trim_matches('"');
            assert!(
                text.contains(quoted),
                "t{i}'s prompt quotes {} as stored",
                a.name
            );
        }
    }
}

/// Pipelined hand-off, when the step handing the task over is not saved: a
/// fault injected into the database (a trigger refusing t3's move to
/// RUNNING) fails the save of t2's step that hands t3 over, while t3's
/// attempt already ran on what it expected. The store commits t2's
/// completion on its own (the engine takes the step); t3's attempt is
/// dropped: t3 never started, its model call is on record as an event but
/// not in the journal, whose one record per attempt and step belongs to an
/// attempt that commits.
#[tokio::test]
async fn a_pipelined_attempt_whose_step_is_not_saved_is_dropped() {
    let h = TestEngine::new(Arc::new(generic_provider())).await;
    inject(
        &h,
        "CREATE TRIGGER injected_fault BEFORE UPDATE OF status ON tasks \
         WHEN NEW.id = 't3' AND NEW.status = 'RUNNING' \
         BEGIN SELECT RAISE(ABORT, 'injected fault'); END",
    )
    .await;

    let (engine, store) = (&h.engine, &h.store);
    let runtime = orch_engine::Runtime::start(engine.clone(), &Role::SPECIALISTS, true);
    let id = engine
        .submit(
            "a chain",
            serde_json::Value::Null,
            &chain(6),
            orch_engine::testing::ungated_settings(),
        )
        .await
        .unwrap();
    // The dropped attempt records its prompt once its step's save failed.
    let prompted = async {
        loop {
            let events = store.list_events(&id, EventQuery::default()).await.unwrap();
            if !of(&events, EventKind::LlmRequest, "t3").is_empty() {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let events = tokio::time::timeout(Duration::from_secs(20), prompted)
        .await
        .expect("t3's attempt ran and was recorded");
    runtime.shutdown().await;

    assert_eq!(
        of(&events, EventKind::TaskStarted, "t3").len(),
        0,
        "t3 never started"
    );
    assert_eq!(
        of(&events, EventKind::LlmResponse, "t3").len(),
        1,
        "its call is on record"
    );
    let journal = store.list_llm_calls(&id).await.unwrap();
    assert!(
        journal.iter().all(|c| c.task_id != "t3"),
        "no journal record of the dropped attempt"
    );
    assert!(
        journal.iter().any(|c| c.task_id == "t2"),
        "t2's call, with its completion"
    );
    let state = store.load_run(&id).await.unwrap();
    let status = |t: &str| {
        let t = state.task(t).unwrap();
        (t.status, t.attempt)
    };
    assert_eq!(
        status("t2"),
        (TaskStatus::Succeeded, 1),
        "t2's completion, committed on its own"
    );
    assert!(
        !matches!(status("t3").0, TaskStatus::Running | TaskStatus::Succeeded),
        "t3: {:?}",
        status("t3")
    );
    assert_eq!(status("t1").0, TaskStatus::Succeeded);
}

/// Pipelined hand-off, when the step reads other inputs than assumed: a
/// person's channel message, posted (by a trigger in the engine's SQLite
/// file) in the very transaction that saves t3 claimed, is in what that
/// step reads for t3, but not in what t3's pipelined attempt assumed. The
/// attempt is dropped and t3 runs again on what was read: its prompt
/// carries the message, the provider was asked twice, and the journal's one
/// record of t3 is the call of the attempt that committed.
#[tokio::test]
async fn a_pipelined_attempt_on_other_inputs_than_read_runs_again() {
    let (provider, h) = recorded().await;
    inject(
        &h,
        "CREATE TRIGGER a_person_posts AFTER UPDATE OF status ON tasks \
         WHEN NEW.id = 't3' AND NEW.status = 'RUNNING' BEGIN \
           UPDATE runs SET last_seq = last_seq + 1 WHERE id = NEW.run_id; \
           INSERT INTO events (run_id, seq, kind, task_id, message, data, created_at) \
           SELECT id, last_seq, 'channel_message', NULL, 'a person posted to notes', \
                  '{\"channel\": \"notes\", \"from_role\": \"tech_lead\", \"text\": \"Keep it in SQLite.\"}', 0 \
           FROM runs WHERE id = NEW.run_id; \
         END",
    )
    .await;

    let (id, run) = h.run_to_end("a chain", &chain(6)).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.status_reason);
    let store = &h.store;
    let t3 = store
        .load_run(&id)
        .await
        .unwrap()
        .task("t3")
        .unwrap()
        .clone();
    assert_eq!((t3.status, t3.attempt), (TaskStatus::Succeeded, 1));

    let asked: Vec<orch_llm::Request> = provider
        .requests()
        .into_iter()
        .filter(|r| r.meta.task_id == "t3")
        .collect();
    assert_eq!(
        asked.len(),
        2,
        "asked on the assumed inputs, then on those read"
    );
    let text = |r: &orch_llm::Request| serde_json::to_string(&r.messages).unwrap();
    assert!(!text(&asked[0]).contains("Keep it in SQLite."));
    assert!(
        text(&asked[1]).contains("Keep it in SQLite."),
        "the kept attempt read the message"
    );
    let journal: Vec<_> = store
        .list_llm_calls(&id)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.task_id == "t3")
        .collect();
    assert_eq!(journal.len(), 1, "one record for t3's attempt and step");
    assert_eq!(journal[0].request_hash, orch_llm::request_hash(&asked[1]));
    let events = store.list_events(&id, EventQuery::default()).await.unwrap();
    assert_eq!(
        of(&events, EventKind::LlmRequest, "t3").len(),
        2,
        "the dropped attempt's call is on record too"
    );
}
