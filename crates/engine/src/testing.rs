//! Test support (feature `testing`): an engine on a SQLite file in a
//! temporary folder with the in-process broker — the embedded mode, with
//! real components — for the integration tests of this crate and of the
//! crates above it.

use std::sync::Arc;
use std::time::Duration;

use orch_broker::{Broker, MemoryBroker};
use orch_core::{Run, RunId, RunSettings};
use orch_llm::{Provider, ScriptedProvider};
use orch_store::Store;

use crate::{Clock, Deps, Engine, EngineOptions, SystemClock};

/// The URL of the engine's database file in its temporary folder `dir`.
fn database_url(dir: &std::path::Path) -> String {
    format!("sqlite://{}", dir.join("test.db").display())
}

/// An embedded engine and the handles a test inspects. The database lives
/// as long as this value.
pub struct TestEngine {
    pub engine: Engine,
    pub store: Arc<dyn Store>,
    pub broker: Arc<dyn Broker>,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for TestEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEngine")
            .field("dir", &self._dir.path())
            .finish_non_exhaustive()
    }
}

impl TestEngine {
    /// An engine with this provider, clock and options on a fresh database.
    pub async fn with(
        provider: Arc<dyn Provider>,
        clock: Arc<dyn Clock>,
        opts: EngineOptions,
    ) -> TestEngine {
        TestEngine::with_broker(provider, clock, opts, Arc::new(MemoryBroker::new())).await
    }

    /// [`TestEngine::with`] on `broker` (an in-process broker a test
    /// watches, say).
    pub async fn with_broker(
        provider: Arc<dyn Provider>,
        clock: Arc<dyn Clock>,
        opts: EngineOptions,
        broker: Arc<dyn Broker>,
    ) -> TestEngine {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let store = orch_store::connect(&database_url(dir.path()))
            .await
            .expect("a fresh SQLite store");
        let deps = Deps {
            store: store.clone(),
            broker: broker.clone(),
            provider,
            agents: Arc::new(orch_agents::Agents::new().expect("the agents' templates")),
            clock,
        };
        TestEngine {
            engine: Engine::new(deps, opts),
            store,
            broker,
            _dir: dir,
        }
    }

    /// The URL of the engine's SQLite file, for a test's own connection.
    pub fn database_url(&self) -> String {
        database_url(self._dir.path())
    }

    /// An engine with this provider, the system clock and default options.
    pub async fn new(provider: Arc<dyn Provider>) -> TestEngine {
        TestEngine::with(provider, Arc::new(SystemClock), EngineOptions::default()).await
    }

    /// Run `goal` through `workflow` with every role's workers in process
    /// (started for it, shut down after) and fast retries: the run's id and
    /// the run once it is terminal or needs input. A workflow without
    /// review tasks runs with neither gate required ([`ungated_settings`]).
    pub async fn run_to_end(&self, goal: &str, workflow: &orch_core::Workflow) -> (RunId, Run) {
        let runtime =
            crate::Runtime::start(self.engine.clone(), &orch_core::Role::SPECIALISTS, true);
        let mut settings = fast_settings();
        if orch_core::machine::check_required_gates(workflow, &settings).is_err() {
            settings = ungated_settings();
        }
        let id = self
            .engine
            .submit(goal, serde_json::Value::Null, workflow, settings)
            .await
            .expect("the run is submitted");
        let run = self.wait(&id).await;
        runtime.shutdown().await;
        (id, run)
    }

    /// Wait until `run` is terminal or needs input (at most a minute).
    pub async fn wait(&self, run: &RunId) -> Run {
        wait_for_end(&self.engine, run).await
    }
}

/// Wait until `run` is terminal or needs input (at most a minute), as
/// `engine` sees it: for a test's own engine beside a [`TestEngine`].
pub async fn wait_for_end(engine: &Engine, run: &RunId) -> Run {
    engine
        .wait(
            run,
            Duration::from_millis(20),
            Some(Duration::from_secs(60)),
        )
        .await
        .expect("the run can be read")
}

/// The scripted provider with no fixture entries: a generic valid answer
/// for every role.
pub fn generic_provider() -> ScriptedProvider {
    ScriptedProvider::from_yaml("generic", "roles: {}").expect("an empty fixture parses")
}

/// Run settings with millisecond retry backoff.
pub fn fast_settings() -> RunSettings {
    RunSettings {
        retry_backoff_ms: 5,
        retry_backoff_max_ms: 20,
        ..RunSettings::default()
    }
}

/// [`fast_settings`] for a workflow without review tasks: neither gate
/// required (a run that requires one refuses such a workflow).
pub fn ungated_settings() -> RunSettings {
    RunSettings {
        require_code_review: false,
        require_security_review: false,
        ..fast_settings()
    }
}
