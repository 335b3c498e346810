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
//! **Channels.** Agents post [`ChannelMessage`]s on named channels of a run
//! (`team`, `backend_engineer`, ...). The broker delivers them live to
//! whoever subscribed ([`Broker::subscribe_channel`]): a tokio broadcast per
//! run and channel in process, Redis pub/sub (`{prefix}chan:{run}:{channel}`)
//! in distributed mode. Live delivery is best effort and lossy by design:
//! every message is first committed as a `channel_message` event of the run,
//! so nothing is lost when nobody is listening; readers catch up from the
//! event log.
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
        Some(url) => Err(Error::Config {
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
    /// The broker URL or its credentials are wrong: waiting for the server
    /// cannot help (unlike [`Error::Connect`]).
    #[error("cannot use the broker at {url}: {message}")]
    Config { url: String, message: String },
    #[error("broker error: {0}")]
    Backend(String),
    #[error("malformed queue message: {0}")]
    Malformed(String),
    /// A channel name outside `[a-z0-9_-]{1,64}`.
    #[error(
        "invalid channel name {0:?}: use 1-64 lowercase letters, digits, '_' or '-' (e.g. team)"
    )]
    InvalidChannel(String),
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

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_NAME: usize = 64;

/// Check a channel name: 1 to [`MAX_CHANNEL_NAME`] of `[a-z0-9_-]`.
pub fn check_channel_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CHANNEL_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidChannel(name.to_string()))
    }
}

/// A message an agent posted on a named channel of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelMessage {
    pub run_id: RunId,
    /// `[a-z0-9_-]{1,64}` (see [`check_channel_name`]).
    pub channel: String,
    /// Role of the agent that posted it.
    pub from_role: Role,
    /// Task whose (successful) attempt posted it.
    pub task_id: String,
    pub text: String,
    /// Sequence number of the `channel_message` event recording it, when the
    /// sender knows it (messages read back from the event log); `None` on
    /// live delivery from a worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
}

/// A live subscription to one channel of one run, from
/// [`Broker::subscribe_channel`]. Dropping it unsubscribes.
///
/// **Lossy.** It yields the messages published after `subscribe_channel`
/// returned, in publish order, while it is held. It misses messages
/// published before, messages published while the Redis connection is down,
/// and (in process) messages it fell more than [`MemoryBroker::CHANNEL_CAPACITY`]
/// behind on; [`ChannelSubscription::missed`] counts those it knows about.
/// The event log of the run has every message (`channel_message` events).
pub struct ChannelSubscription {
    run_id: RunId,
    channel: String,
    source: SubscriptionSource,
    missed: u64,
}

/// Where a subscription's messages come from.
pub(crate) enum SubscriptionSource {
    /// The in-process broadcast of the run's channel.
    Memory(tokio::sync::broadcast::Receiver<ChannelMessage>),
    /// A dedicated Redis pub/sub connection subscribed to the channel's key
    /// (held by the stream: dropping it closes the connection).
    Redis {
        key: String,
        stream: ::redis::aio::PubSubStream,
    },
}

impl std::fmt::Debug for ChannelSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.source {
            SubscriptionSource::Memory(_) => "in-process".to_string(),
            SubscriptionSource::Redis { key, .. } => format!("redis {key}"),
        };
        f.debug_struct("ChannelSubscription")
            .field("run_id", &self.run_id)
            .field("channel", &self.channel)
            .field("source", &source)
            .field("missed", &self.missed)
            .finish()
    }
}

impl ChannelSubscription {
    pub(crate) fn new(run_id: &RunId, channel: &str, source: SubscriptionSource) -> Self {
        ChannelSubscription {
            run_id: run_id.clone(),
            channel: channel.to_string(),
            source,
            missed: 0,
        }
    }

    pub fn run_id(&self) -> &RunId {
        &self.run_id
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Messages known to have been missed so far (fallen behind in process,
    /// or malformed on Redis).
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// The next message; `None` when the subscription has ended (the broker
    /// was dropped or the Redis connection was lost: subscribe again and
    /// catch up from the event log). Cancel-safe. Wrap it in
    /// `tokio::time::timeout` to wait a bounded time.
    pub async fn next(&mut self) -> Option<ChannelMessage> {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let msg = match &mut self.source {
                SubscriptionSource::Memory(rx) => match rx.recv().await {
                    Ok(m) => m,
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(run = %self.run_id, channel = %self.channel, missed = n, "channel subscriber fell behind; messages skipped (they are in the event log)");
                        self.missed += n;
                        continue;
                    }
                    Err(RecvError::Closed) => return None,
                },
                SubscriptionSource::Redis { key, stream } => {
                    match crate::redis::next_channel_message(key, stream).await? {
                        Some(m) => m,
                        None => {
                            self.missed += 1;
                            continue;
                        }
                    }
                }
            };
            // Keys are per run and channel; this only guards against a
            // payload that names another run or channel.
            if msg.run_id == self.run_id && msg.channel == self.channel {
                return Some(msg);
            }
        }
    }
}

/// Role queues and engine wake-ups, as the engine and workers see them.
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
    /// Deliver `msg` to the current subscribers of its run's channel (none is
    /// fine: the message is not kept). [`Error::InvalidChannel`] for a bad
    /// channel name. Callers record the message as an event first.
    async fn publish_channel(&self, msg: &ChannelMessage) -> Result<()>;
    /// Subscribe to `channel` of `run_id`: messages published from the time
    /// this returns (see [`ChannelSubscription`] for what may be missed).
    async fn subscribe_channel(&self, run_id: &RunId, channel: &str)
    -> Result<ChannelSubscription>;
    /// Forget the consumers (workers and engines) idle for at least `idle`
    /// that hold no pending message: those of processes that exited. Every
    /// process start names new consumers, so without this their records
    /// would only grow. Returns how many were removed. A live consumer
    /// removed by mistake is recreated by its next read; one with pending
    /// messages is never removed (its messages would become unclaimable).
    /// In process there is nothing to forget.
    async fn prune_consumers(&self, idle: Duration) -> Result<usize> {
        let _ = idle;
        Ok(0)
    }
}
