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
use orch_engine::testing::{TestEngine, fast_settings, generic_provider};
use orch_engine::{EngineOptions, Runtime, SystemClock};
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
    let (engine, store) = (&h.engine, &h.store);
    let runtime = Runtime::start(engine.clone(), &Role::SPECIALISTS, true);
    let wf = Workflow::builtin("sdlc").unwrap();
    let id = engine
        .submit(
            "Build a small CRUD app for managing TODO items",
            serde_json::Value::Null,
            &wf,
            fast_settings(),
        )
        .await
        .unwrap();
    let run = h.wait(&id).await;
    runtime.shutdown().await;
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
        let started: Vec<_> = events
            .iter()
            .filter(|e| e.kind == EventKind::TaskStarted && e.task_id.as_deref() == Some(&t.id))
            .collect();
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
}
