//! The engine drives runs: it performs what the pure state machine of
//! `orch-core` decides, and runs the role workers.
//!
//! Parts: [`Engine`] (submit runs, tick them, apply human inputs: load state,
//! `apply`, save state and events in one transaction, then publish
//! dispatches), `worker` (claim a dispatched attempt, heartbeat its lease, run
//! the agent, commit the outcome behind the lease fence), `sweeper` (expired
//! leases, leases of dead local processes, queued tasks whose message was
//! lost, retries whose backoff ran out), [`Runtime`] (owns the spawned engine
//! loop and workers, each with a cancellation token, and drains them on
//! shutdown), [`Clock`] (injected time, so leases and backoff are tested
//! without sleeping), `testing` (feature `testing`: an embedded engine on a
//! temporary SQLite file for integration tests, here and in the crates above).
//!
//! The engine sees only the traits of the store, broker, provider and agents;
//! it never names SQLite, Redis or an HTTP client.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use orch_core::{Millis, Role};

mod budget;
mod driver;
mod journal;
mod runtime;
mod sweeper;
#[cfg(feature = "testing")]
pub mod testing;
mod worker;

pub use orch_broker as broker;
pub use orch_store as store;

pub use budget::BudgetedProvider;
pub use driver::{Engine, Steps, TickOutcome};
pub use journal::JournalingProvider;
pub use runtime::Runtime;
pub use sweeper::SweepReport;
pub use worker::{WorkerId, channel_post, execute_delivery};

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] orch_store::Error),
    #[error(transparent)]
    Broker(#[from] orch_broker::Error),
    /// The input does not apply to the run as it is now (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Core(orch_core::Error),
    #[error("run {0} is changing too fast: gave up after repeated concurrent updates")]
    Contended(String),
    #[error("no dead letter {0}; list them with `orchestrator dlq list`")]
    DeadLetterNotFound(i64),
}

impl From<orch_core::Error> for Error {
    fn from(e: orch_core::Error) -> Self {
        match e {
            orch_core::Error::Conflict(m) => Error::Conflict(m),
            other => Error::Core(other),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A source of the current time in milliseconds since the epoch.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> Millis;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to (tests of leases and backoff).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start: Millis) -> Self {
        ManualClock(AtomicI64::new(start))
    }
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }
    pub fn set(&self, to: Millis) {
        self.0.store(to, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

/// How the engine and its workers behave. Defaults suit the embedded mode.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// How long a claimed attempt is leased before the sweeper may reclaim it (default 30 s).
    pub lease_ttl: Duration,
    /// How often a worker renews its lease (default a third of the TTL).
    pub heartbeat_every: Duration,
    /// How often the sweeper runs (default 1 s).
    pub sweep_every: Duration,
    /// How often a sweep also ticks every active run (default 10 s): the
    /// safety net for a wake-up that was lost (a worker or a retry timer
    /// that died between its commit and its wake-up, a broker that lost
    /// it). Completions take their runs' next steps themselves and wake the
    /// engine loop for the rest, and retries wake it when their backoff
    /// ends, so the net is rarely needed; each of its rounds reads every
    /// active run.
    pub tick_all_every: Duration,
    /// A task queued longer than this without being claimed is published again (default 30 s).
    pub requeue_after: Duration,
    /// How long a worker waits on its queue before checking for shutdown (default 250 ms).
    pub poll_timeout: Duration,
    /// Concurrent attempts per role in this process (default 2).
    pub concurrency: usize,
    /// Model for every role without its own entry in `role_models`.
    pub model: String,
    pub role_models: HashMap<Role, String>,
    /// How long shutdown waits for in-flight attempts before abandoning them
    /// (their leases then expire and they are re-run) (default 10 s).
    pub drain_timeout: Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        let lease_ttl = Duration::from_secs(30);
        EngineOptions {
            lease_ttl,
            heartbeat_every: lease_ttl / 3,
            sweep_every: Duration::from_secs(1),
            tick_all_every: Duration::from_secs(10),
            requeue_after: Duration::from_secs(30),
            poll_timeout: Duration::from_millis(250),
            concurrency: 2,
            model: "claude-sonnet-4-20250514".into(),
            role_models: HashMap::new(),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

impl EngineOptions {
    /// The model a role's agent calls.
    pub fn model_for(&self, role: Role) -> &str {
        self.role_models
            .get(&role)
            .map(String::as_str)
            .unwrap_or(&self.model)
    }
}

/// Shared handles the engine, its workers and sweeper use.
#[derive(Clone)]
pub struct Deps {
    pub store: Arc<dyn orch_store::Store>,
    pub broker: Arc<dyn orch_broker::Broker>,
    pub provider: Arc<dyn orch_llm::Provider>,
    pub agents: Arc<orch_agents::Agents>,
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deps")
            .field("store", &self.store.backend())
            .field("broker", &self.broker.backend())
            .field("provider", &self.provider.name())
            .finish_non_exhaustive()
    }
}
