//! Role queues: the broker trait the engine and workers see, and its
//! implementations: in-process ([`MemoryBroker`], the embedded default) and
//! Redis Streams ([`RedisBroker`], distributed mode). [`connect`] picks one
//! from an optional URL.
//!
//! The broker only carries *which task attempt to run* ([`Dispatch`]); the
//! store holds the truth. Losing a message loses nothing: the engine's sweeper
//! re-publishes queued tasks whose message went missing, and a duplicate
//! message is dropped by the store's conditional claim. The broker also
//! carries *wake-ups* (a run id whose state changed) from workers to the
//! engine loop, so the engine reacts at once instead of polling.
//!
//! This crate depends on `orch-core` only.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use orch_core::{Role, RunId};
use serde::{Deserialize, Serialize};

mod memory;
mod redis;

pub use crate::redis::RedisBroker;
pub use memory::MemoryBroker;

/// The broker for `url`: none (or empty) is the in-process [`MemoryBroker`];
/// `redis://...` (also `rediss://`, `redis+unix://`, `unix://`) is a
/// [`RedisBroker`] whose keys start with `prefix` (`""` in production;
/// ignored in process).
pub async fn connect(url: Option<&str>, prefix: &str) -> Result<Arc<dyn Broker>> {
    match url.map(str::trim).filter(|u| !u.is_empty()) {
        None => Ok(Arc::new(MemoryBroker::new())),
        Some(url) if url.starts_with("redis") || url.starts_with("unix://") => {
            Ok(Arc::new(RedisBroker::connect(url, prefix).await?))
        }
        Some(url) => Err(Error::Connect {
            url: crate::redis::redact(url),
            message: "unsupported broker URL: expected redis://host[:port][/db], \
                      or no URL for the in-process broker"
                .into(),
        }),
    }
}

/// Errors of every broker backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("broker is closed")]
    Closed,
    #[error("cannot reach the broker at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("broker error: {0}")]
    Backend(String),
    #[error("malformed queue message: {0}")]
    Malformed(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One task attempt to run, published on the role's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispatch {
    pub run_id: RunId,
    pub task_id: String,
    pub role: Role,
    pub attempt: u32,
}

/// A received message; pass it back to [`Broker::ack`] when handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub dispatch: Dispatch,
    /// Backend-specific receipt (Redis stream entry id; empty in process).
    pub receipt: String,
}

#[async_trait]
pub trait Broker: Send + Sync {
    /// Backend name for logs (`in-process`, `redis`).
    fn backend(&self) -> &'static str;
    /// Publish a dispatch on `dispatch.role`'s queue.
    async fn publish(&self, dispatch: &Dispatch) -> Result<()>;
    /// Wait up to `timeout` for the next message on `role`'s queue.
    async fn receive(
        &self,
        role: Role,
        consumer: &str,
        timeout: Duration,
    ) -> Result<Option<Delivery>>;
    /// Acknowledge a handled message.
    async fn ack(&self, delivery: &Delivery) -> Result<()>;
    /// Messages waiting on `role`'s queue.
    async fn depth(&self, role: Role) -> Result<u64>;
    /// Tell the engine loop that `run_id` changed.
    async fn wake(&self, run_id: &RunId) -> Result<()>;
    /// Wait up to `timeout` for wake-ups; returns the run ids (deduplicated, possibly empty).
    async fn wakes(&self, timeout: Duration) -> Result<Vec<RunId>>;
}
