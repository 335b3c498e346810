//! Redis Streams broker: the distributed backend (`REDIS_URL=redis://...`).
//!
//! **Keys.** One stream per role queue, `{prefix}q_ba` ... `{prefix}q_sec`
//! (and `{prefix}q_orch`), each read through the consumer group `workers`;
//! one wake-up stream, `{prefix}orch:wakes`, read through the consumer group
//! `engines`. The prefix is empty in production, so the streams are named
//! exactly like the seed's queues; tests use a random prefix. Groups are
//! created with `XGROUP CREATE <key> <group> 0 MKSTREAM` (an existing group is
//! kept), and re-created whenever a command reports `NOGROUP` (the stream was
//! deleted, e.g. by `FLUSHALL` or a failover without persistence): the
//! command is then retried once.
//!
//! **Entries** carry the fields `run_id`, `task_id`, `role` and `attempt`:
//! readable with `redis-cli XRANGE q_be - +`. The same dispatch published
//! twice is two entries and is delivered twice; deduplication is the store's
//! job (its conditional claim drops the second one).
//!
//! **Delivery.** [`Broker::receive`] first reclaims, with `XAUTOCLAIM`, one
//! entry that has been pending (delivered, not acknowledged) for longer than
//! [`RedisBroker::reclaim_after`] (default 30 s): its consumer died, or is
//! still running a long attempt, in which case the store drops the duplicate.
//! Otherwise it reads one new entry with `XREADGROUP ... BLOCK`. Once a pass
//! over the pending entries finds nothing, the next pass waits
//! [`RedisBroker::reclaim_every`], so a receive is usually one command. `XAUTOCLAIM`
//! reports no delivery count: attempts come from the store (the `attempt`
//! field), never from Redis. A malformed entry is acknowledged and deleted,
//! then reported as [`Error::Malformed`], so it can never be delivered again.
//!
//! **Trimming.** [`Broker::ack`] is `XACK` + `XDEL`, so a role stream holds
//! only entries not yet acknowledged and needs no `MAXLEN` (which could drop
//! entries not yet delivered). [`Broker::depth`] is therefore `XLEN`: entries
//! waiting plus entries delivered and not yet acknowledged.
//!
//! **Wake-ups.** Several engine processes may run. Each one reads the wake-up
//! stream as its own consumer of the `engines` group (`XREADGROUP COUNT 256
//! BLOCK`), so every wake-up reaches exactly one running engine (at least one
//! is what the engine needs), which acknowledges and deletes what it read at
//! once and deduplicates the run ids within one call. Wake-ups published
//! while no engine runs wait in the stream (bounded by `MAXLEN ~ 10000`: a
//! wake-up is only a hint, the engine's sweeper finds every run anyway).
//!
//! **Channels.** [`Broker::publish_channel`] is `PUBLISH
//! {prefix}chan:{run_id}:{channel} <json>`, the JSON being the
//! [`ChannelMessage`]: readable with `redis-cli SUBSCRIBE chan:<run>:team`.
//! [`Broker::subscribe_channel`] opens a dedicated pub/sub connection per
//! subscription (a subscribed connection can run no other command) and
//! returns once the server confirmed the `SUBSCRIBE`. Pub/sub keeps nothing:
//! a message published while nobody is subscribed, or while a subscriber's
//! connection is down, is gone from Redis; the event log has it.
//!
//! **Connections and errors.** Non-blocking commands share one multiplexed
//! [`ConnectionManager`], which reconnects in the background after a
//! connection is lost. A blocking read holds its connection until it returns,
//! so blocking reads each take a connection of their own from a small pool.
//! Failing to reach Redis in [`RedisBroker::connect`] is [`Error::Connect`]
//! (password redacted); a Redis error mid-operation is [`Error::Backend`], and
//! the caller retries with backoff (the worker and engine loops do).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use orch_core::{Role, RunId};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamInfoConsumersReply, StreamReadReply};
use redis::{AsyncConnectionConfig, Client, Cmd, ErrorKind, FromRedisValue, RedisError};
use tracing::{debug, warn};

use crate::{
    Broker, ChannelMessage, ChannelSubscription, Delivery, Dispatch, Error, Result,
    SubscriptionSource, check_channel_name,
};

/// Consumer group of every role stream.
const WORKERS: &str = "workers";
/// Consumer group of the wake-up stream.
const ENGINES: &str = "engines";
/// Name of the wake-up stream, after the prefix.
const WAKES_STREAM: &str = "orch:wakes";
/// Start of every channel's pub/sub key, after the prefix.
const CHANNEL_KEY: &str = "chan:";
/// Most wake-ups read by one [`Broker::wakes`] call.
const WAKES_BATCH: usize = 256;
/// Approximate bound of the wake-up stream's length.
const WAKES_MAXLEN: usize = 10_000;
/// Bound of one attempt to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound of a non-blocking command's reply.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How much longer than its `BLOCK` a blocking read may take before its
/// connection is given up as dead.
const BLOCK_GRACE: Duration = Duration::from_secs(5);
/// Idle blocking connections kept for reuse; more are closed.
const MAX_IDLE_BLOCKING: usize = 64;

/// Redis Streams implementation of [`Broker`] (see the module docs).
pub struct RedisBroker {
    /// The URL with its password replaced, for messages.
    url: String,
    /// Prepended to every key (empty in production).
    prefix: String,
    /// Opens the pooled blocking connections.
    client: Client,
    /// Shared multiplexed connection for every non-blocking command.
    conn: ConnectionManager,
    /// Idle connections for blocking reads. A blocking `XREADGROUP` holds its
    /// connection until it returns, so concurrent blocking reads cannot share
    /// `conn`: each takes one from here (or opens one) and puts it back when
    /// the read completes. A read that fails or is cancelled drops its
    /// connection instead, which closes it and unblocks the server side.
    idle: Mutex<Vec<ConnectionManager>>,
    /// How long an entry stays pending before another consumer may take it.
    reclaim_after: Duration,
    /// `XAUTOCLAIM` cursor per role stream, so successive reclaims walk the
    /// whole pending list instead of rescanning its head.
    cursors: Mutex<HashMap<Role, String>>,
    /// When a pass over each role stream's pending entries last ended
    /// without finding one to reclaim: the next pass waits
    /// [`RedisBroker::reclaim_every`] (a receive is then one command, not two).
    passes: Mutex<HashMap<Role, std::time::Instant>>,
    /// This broker's consumer name in the `engines` group.
    engine_consumer: String,
}

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroker")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("reclaim_after", &self.reclaim_after)
            .field("engine_consumer", &self.engine_consumer)
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Default of [`RedisBroker::with_reclaim_after`].
    pub const DEFAULT_RECLAIM_AFTER: Duration = Duration::from_secs(30);

    /// Connect to `url` (`redis://[user:password@]host[:port][/db]`) and
    /// create the consumer groups of every stream under `prefix` (`""` in
    /// production). Fails with [`Error::Connect`] within a few seconds when
    /// the server cannot be reached.
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisBroker> {
        let shown = redact(url);
        let connect_error = |message: String| Error::Connect {
            url: shown.clone(),
            message,
        };
        let client = Client::open(url).map_err(|e| Error::Config {
            url: shown.clone(),
            message: format!(
                "invalid Redis URL ({e}); expected redis://[user:password@]host[:port][/db]"
            ),
        })?;

        // One plain attempt first: the connection manager retries with
        // backoff, which is right after a connection drops, not for a typo.
        let probe = async {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(CONNECT_TIMEOUT));
            let mut c = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("PING").query_async::<String>(&mut c).await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT * 2, probe).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if is_config_error(&e) => {
                return Err(Error::Config {
                    url: shown.clone(),
                    message: connect_hint(&e),
                });
            }
            Ok(Err(e)) => return Err(connect_error(connect_hint(&e))),
            Err(_) => {
                return Err(connect_error(format!(
                    "no answer within {:?}; check that redis-server is running and reachable \
                     at that address (host, port, firewall)",
                    CONNECT_TIMEOUT * 2
                )));
            }
        }
        let conn = ConnectionManager::new_with_config(
            client.clone(),
            manager_config(Some(RESPONSE_TIMEOUT)),
        )
        .await
        .map_err(|e| connect_error(connect_hint(&e)))?;

        let broker = RedisBroker {
            url: shown.clone(),
            prefix: prefix.to_string(),
            client,
            conn,
            idle: Mutex::new(Vec::new()),
            reclaim_after: Self::DEFAULT_RECLAIM_AFTER,
            cursors: Mutex::new(HashMap::new()),
            passes: Mutex::new(HashMap::new()),
            engine_consumer: format!("engine-{}-{}", std::process::id(), uuid::Uuid::new_v4()),
        };
        for role in Role::ALL {
            broker
                .create_group(&broker.stream_key(role), WORKERS)
                .await
                .map_err(|e| connect_error(e.to_string()))?;
        }
        broker
            .create_group(&broker.wakes_key(), ENGINES)
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        debug!(url = %broker.url, prefix = %broker.prefix, "connected to Redis");
        Ok(broker)
    }

    /// Let another consumer take an entry once it has been pending (delivered,
    /// not acknowledged) for `after` (at least 1 ms). Default: 30 s. Keep it
    /// well above the time a worker needs between receiving and acknowledging
    /// when it is healthy, or attempts will be delivered twice (harmless, as
    /// the store drops the duplicate, but wasteful).
    pub fn with_reclaim_after(mut self, after: Duration) -> Self {
        self.reclaim_after = after.max(Duration::from_millis(1));
        self
    }

    /// See [`RedisBroker::with_reclaim_after`].
    pub fn reclaim_after(&self) -> Duration {
        self.reclaim_after
    }

    /// The key prefix given to [`RedisBroker::connect`].
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The stream of `role`'s queue: `{prefix}q_be`, ...
    pub fn stream_key(&self, role: Role) -> String {
        format!("{}{}", self.prefix, role.queue())
    }

    /// The wake-up stream: `{prefix}orch:wakes`.
    pub fn wakes_key(&self) -> String {
        format!("{}{WAKES_STREAM}", self.prefix)
    }

    /// The pub/sub key of `channel` of `run_id`: `{prefix}chan:{run_id}:{channel}`.
    pub fn channel_key(&self, run_id: &RunId, channel: &str) -> String {
        format!("{}{CHANNEL_KEY}{}:{channel}", self.prefix, run_id.as_str())
    }

    /// Delete every stream of this broker (role queues and wake-ups), with
    /// their groups. The broker stays usable: groups are re-created on the
    /// next use. For tests and maintenance; the store keeps the truth.
    pub async fn purge(&self) -> Result<()> {
        let mut cmd = redis::cmd("DEL");
        for role in Role::ALL {
            cmd.arg(self.stream_key(role));
        }
        cmd.arg(self.wakes_key());
        cmd.exec_async(&mut self.conn.clone())
            .await
            .map_err(|e| backend("DEL", &self.prefix, e))
    }

    /// `XGROUP CREATE <key> <group> 0 MKSTREAM`, keeping an existing group.
    /// From id 0, so entries added while the group was missing are delivered.
    async fn create_group(&self, key: &str, group: &str) -> Result<()> {
        let created = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(key)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .exec_async(&mut self.conn.clone())
            .await;
        match created {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(backend("XGROUP CREATE", key, e)),
        }
    }

    /// Run a command that needs `group` on `key`; on `NOGROUP` re-create the
    /// group and retry once.
    async fn group_query<T: FromRedisValue>(
        &self,
        conn: &mut ConnectionManager,
        key: &str,
        group: &str,
        cmd: &Cmd,
        what: &str,
    ) -> Result<T> {
        match cmd.query_async(conn).await {
            Err(e) if e.code() == Some("NOGROUP") => {
                warn!(
                    stream = key,
                    group, "consumer group missing; re-creating it"
                );
                self.create_group(key, group).await?;
                cmd.query_async(conn)
                    .await
                    .map_err(|e| backend(what, key, e))
            }
            other => other.map_err(|e| backend(what, key, e)),
        }
    }

    /// `XREADGROUP GROUP <group> <consumer> COUNT <count> [BLOCK <ms>]
    /// STREAMS <key> >`. A timeout under 1 ms reads without blocking
    /// (`BLOCK 0` would block forever).
    async fn read_group(
        &self,
        key: &str,
        group: &str,
        consumer: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<StreamId>> {
        let block_ms = millis(timeout);
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count);
        if block_ms > 0 {
            cmd.arg("BLOCK").arg(block_ms);
        }
        cmd.arg("STREAMS").arg(key).arg(">");

        let reply: Option<StreamReadReply> = if block_ms == 0 {
            let mut conn = self.conn.clone();
            self.group_query(&mut conn, key, group, &cmd, "XREADGROUP")
                .await?
        } else {
            let mut conn = self.take_blocking()?;
            let limit = timeout + BLOCK_GRACE;
            let read = tokio::time::timeout(
                limit,
                self.group_query(&mut conn, key, group, &cmd, "XREADGROUP"),
            )
            .await;
            match read {
                Ok(Ok(reply)) => {
                    self.put_back(conn);
                    reply
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(Error::Backend(format!(
                        "XREADGROUP {key}: no reply within {limit:?}"
                    )));
                }
            }
        };
        Ok(reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default())
    }

    /// An idle blocking connection, or a new one (connected on first use).
    fn take_blocking(&self) -> Result<ConnectionManager> {
        if let Some(conn) = lock(&self.idle).pop() {
            return Ok(conn);
        }
        // No response timeout: the read is bounded by `read_group` instead.
        ConnectionManager::new_lazy_with_config(self.client.clone(), manager_config(None))
            .map_err(|e| backend("connect", &self.url, e))
    }

    fn put_back(&self, conn: ConnectionManager) {
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE_BLOCKING {
            idle.push(conn);
        }
    }

    /// How long after a pass over a role stream's pending entries that
    /// found nothing to reclaim the next pass begins: a tenth of
    /// `reclaim_after`, at most a second. An entry pending too long is taken
    /// within `reclaim_after` plus this.
    pub fn reclaim_every(&self) -> Duration {
        (self.reclaim_after / 10).min(Duration::from_secs(1))
    }

    /// `XAUTOCLAIM` one entry of `role`'s stream pending for longer than
    /// `reclaim_after`, continuing from the last call's cursor; nothing
    /// (without asking Redis) within [`RedisBroker::reclaim_every`] of a
    /// pass that found nothing.
    async fn reclaim(&self, role: Role, key: &str, consumer: &str) -> Result<Option<StreamId>> {
        if lock(&self.passes)
            .get(&role)
            .is_some_and(|ended| ended.elapsed() < self.reclaim_every())
        {
            return Ok(None);
        }
        let cursor = lock(&self.cursors)
            .get(&role)
            .cloned()
            .unwrap_or_else(|| "0-0".to_string());
        let mut cmd = redis::cmd("XAUTOCLAIM");
        cmd.arg(key)
            .arg(WORKERS)
            .arg(consumer)
            .arg(millis(self.reclaim_after))
            .arg(cursor)
            .arg("COUNT")
            .arg(1);
        let reply: StreamAutoClaimReply = self
            .group_query(&mut self.conn.clone(), key, WORKERS, &cmd, "XAUTOCLAIM")
            .await?;
        let entry = reply.claimed.into_iter().find(|e| !e.id.is_empty());
        if entry.is_none() && reply.next_stream_id == "0-0" {
            lock(&self.passes).insert(role, std::time::Instant::now());
        } else {
            lock(&self.passes).remove(&role);
        }
        lock(&self.cursors).insert(role, reply.next_stream_id);
        if let Some(e) = &entry {
            debug!(stream = key, entry = %e.id, consumer, "reclaimed an entry pending too long");
        }
        Ok(entry)
    }

    /// Turn an entry into a delivery; a malformed entry is acknowledged and
    /// deleted, then reported.
    async fn decode(&self, key: &str, entry: StreamId) -> Result<Delivery> {
        match parse_dispatch(&entry) {
            Ok(dispatch) => Ok(Delivery {
                dispatch,
                receipt: entry.id,
            }),
            Err(why) => {
                warn!(stream = key, entry = %entry.id, error = %why, "malformed queue message deleted");
                self.ack_ids(key, WORKERS, &[entry.id.as_str()]).await?;
                Err(Error::Malformed(format!("{key} entry {}: {why}", entry.id)))
            }
        }
    }

    /// `XACK` + `XDEL` in one round trip. Both are no-ops for ids, groups or
    /// streams that no longer exist.
    async fn ack_ids(&self, key: &str, group: &str, ids: &[&str]) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(key)
            .arg(group)
            .arg(ids)
            .ignore()
            .cmd("XDEL")
            .arg(key)
            .arg(ids)
            .ignore();
        pipe.exec_async(&mut self.conn.clone())
            .await
            .map_err(|e| backend("XACK/XDEL", key, e))
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn backend(&self) -> &'static str {
        "redis"
    }

    /// `XINFO CONSUMERS` of every role stream's `workers` group and of the
    /// wake-up stream's `engines` group, then `XGROUP DELCONSUMER` for each
    /// consumer with no pending entry that has been idle for `idle` (a live
    /// worker's blocking reads keep its idle time near zero).
    async fn prune_consumers(&self, idle: Duration) -> Result<usize> {
        let idle_ms = usize::try_from(idle.as_millis()).unwrap_or(usize::MAX);
        let streams = Role::ALL
            .iter()
            .map(|&role| (self.stream_key(role), WORKERS))
            .chain(std::iter::once((self.wakes_key(), ENGINES)));
        let mut removed = 0;
        for (key, group) in streams {
            let info: StreamInfoConsumersReply = match redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(&key)
                .arg(group)
                .query_async(&mut self.conn.clone())
                .await
            {
                Ok(info) => info,
                // A stream or group not created yet has no consumers.
                Err(e) if e.code() == Some("NOGROUP") || e.to_string().contains("no such key") => {
                    continue;
                }
                Err(e) => return Err(backend("XINFO CONSUMERS", &key, e)),
            };
            for c in info.consumers {
                if c.pending > 0 || c.idle < idle_ms {
                    continue;
                }
                let deleted: i64 = redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&key)
                    .arg(group)
                    .arg(&c.name)
                    .query_async(&mut self.conn.clone())
                    .await
                    .map_err(|e| backend("XGROUP DELCONSUMER", &key, e))?;
                if deleted > 0 {
                    // It took messages since XINFO: only a live consumer
                    // can. The store repairs: their QUEUED tasks are
                    // published again, RUNNING ones reclaimed at lease expiry.
                    warn!(
                        stream = key,
                        consumer = c.name,
                        pending = deleted,
                        "an idle consumer took messages while being forgotten; the sweeper will re-dispatch their tasks"
                    );
                } else {
                    debug!(stream = key, consumer = c.name, "forgot an idle consumer");
                }
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn publish(&self, dispatch: &Dispatch) -> Result<()> {
        let key = self.stream_key(dispatch.role);
        redis::cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("run_id")
            .arg(dispatch.run_id.as_str())
            .arg("task_id")
            .arg(&dispatch.task_id)
            .arg("role")
            .arg(dispatch.role.as_str())
            .arg("attempt")
            .arg(dispatch.attempt)
            .exec_async(&mut self.conn.clone())
            .await
            .map_err(|e| backend("XADD", &key, e))
    }

    async fn receive(
        &self,
        role: Role,
        consumer: &str,
        timeout: Duration,
    ) -> Result<Option<Delivery>> {
        let key = self.stream_key(role);
        if let Some(entry) = self.reclaim(role, &key, consumer).await? {
            return self.decode(&key, entry).await.map(Some);
        }
        let entries = self.read_group(&key, WORKERS, consumer, 1, timeout).await?;
        match entries.into_iter().next() {
            Some(entry) => self.decode(&key, entry).await.map(Some),
            None => Ok(None),
        }
    }

    async fn ack(&self, delivery: &Delivery) -> Result<()> {
        if delivery.receipt.is_empty() {
            return Err(Error::Malformed(
                "delivery has no Redis entry id (received from another broker?)".into(),
            ));
        }
        let key = self.stream_key(delivery.dispatch.role);
        self.ack_ids(&key, WORKERS, &[delivery.receipt.as_str()])
            .await
    }

    /// `XLEN`: entries waiting plus entries delivered and not yet
    /// acknowledged (acknowledged ones are deleted).
    async fn depth(&self, role: Role) -> Result<u64> {
        let key = self.stream_key(role);
        redis::cmd("XLEN")
            .arg(&key)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| backend("XLEN", &key, e))
    }

    async fn wake(&self, run_id: &RunId) -> Result<()> {
        let key = self.wakes_key();
        redis::cmd("XADD")
            .arg(&key)
            .arg("MAXLEN")
            .arg("~")
            .arg(WAKES_MAXLEN)
            .arg("*")
            .arg("run_id")
            .arg(run_id.as_str())
            .exec_async(&mut self.conn.clone())
            .await
            .map_err(|e| backend("XADD", &key, e))
    }

    async fn wakes(&self, timeout: Duration) -> Result<Vec<RunId>> {
        let key = self.wakes_key();
        let entries = self
            .read_group(&key, ENGINES, &self.engine_consumer, WAKES_BATCH, timeout)
            .await?;
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        if let Err(e) = self.ack_ids(&key, ENGINES, &ids).await {
            // They were read: hand them to the engine anyway. Left pending,
            // they are never delivered again, only trimmed.
            warn!(error = %e, "could not acknowledge wake-ups");
        }
        let mut out: Vec<RunId> = Vec::new();
        for entry in &entries {
            match entry.get::<String>("run_id") {
                Some(id) => {
                    let id = RunId(id);
                    if !out.contains(&id) {
                        out.push(id);
                    }
                }
                None => warn!(stream = %key, entry = %entry.id, "malformed wake-up deleted"),
            }
        }
        Ok(out)
    }

    async fn publish_channel(&self, msg: &ChannelMessage) -> Result<()> {
        check_channel_name(&msg.channel)?;
        let key = self.channel_key(&msg.run_id, &msg.channel);
        let payload = serde_json::to_string(msg)
            .map_err(|e| Error::Backend(format!("cannot encode a channel message: {e}")))?;
        redis::cmd("PUBLISH")
            .arg(&key)
            .arg(payload)
            .exec_async(&mut self.conn.clone())
            .await
            .map_err(|e| backend("PUBLISH", &key, e))
    }

    async fn subscribe_channel(
        &self,
        run_id: &RunId,
        channel: &str,
    ) -> Result<ChannelSubscription> {
        check_channel_name(channel)?;
        let key = self.channel_key(run_id, channel);
        let subscribe = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&key).await?;
            Ok::<_, RedisError>(pubsub)
        };
        let limit = CONNECT_TIMEOUT + RESPONSE_TIMEOUT;
        let pubsub = match tokio::time::timeout(limit, subscribe).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Err(backend("SUBSCRIBE", &key, e)),
            Err(_) => {
                return Err(Error::Backend(format!(
                    "Redis SUBSCRIBE {key}: no reply within {limit:?}"
                )));
            }
        };
        debug!(channel = %key, "subscribed");
        Ok(ChannelSubscription::new(
            run_id,
            channel,
            SubscriptionSource::Redis {
                key,
                stream: pubsub.into_on_message(),
            },
        ))
    }
}

/// The next message of a channel subscription: `None` when the connection is
/// gone, `Some(None)` for a payload that is not a [`ChannelMessage`] (logged
/// and skipped).
pub(crate) async fn next_channel_message(
    key: &str,
    stream: &mut redis::aio::PubSubStream,
) -> Option<Option<ChannelMessage>> {
    use futures_util::StreamExt;
    let msg = stream.next().await?;
    match serde_json::from_slice::<ChannelMessage>(msg.get_payload_bytes()) {
        Ok(m) => Some(Some(m)),
        Err(e) => {
            warn!(channel = %key, error = %e, "malformed channel message skipped");
            Some(None)
        }
    }
}

/// Configuration of a connection manager; `response_timeout` None for
/// connections that run blocking reads.
fn manager_config(response_timeout: Option<Duration>) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(response_timeout)
        .set_max_delay(Duration::from_secs(2))
}

/// Parse the fields written by [`Broker::publish`].
fn parse_dispatch(entry: &StreamId) -> Result<Dispatch, String> {
    let field = |name: &str| {
        entry
            .get::<String>(name)
            .ok_or_else(|| format!("missing or non-text field `{name}`"))
    };
    let role = field("role")?
        .parse::<Role>()
        .map_err(|e| format!("field `role`: {e}"))?;
    let attempt = field("attempt")?
        .parse::<u32>()
        .map_err(|e| format!("field `attempt`: {e}"))?;
    Ok(Dispatch {
        run_id: RunId(field("run_id")?),
        task_id: field("task_id")?,
        role,
        attempt,
    })
}

/// Whole milliseconds of `d`, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn backend(what: &str, key: &str, e: RedisError) -> Error {
    Error::Backend(format!("Redis {what} {key}: {e}"))
}

/// Wrong credentials or a bad URL: retrying the same connection cannot help.
fn is_config_error(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::AuthenticationFailed | ErrorKind::InvalidClientConfig
    ) || e.code() == Some("NOAUTH")
        || e.code() == Some("WRONGPASS")
}

/// A connection failure with what to check.
fn connect_hint(e: &RedisError) -> String {
    let check = match e.kind() {
        ErrorKind::AuthenticationFailed => "check the user name and password in the URL",
        ErrorKind::InvalidClientConfig => "check the URL: redis://[user:password@]host[:port][/db]",
        _ if e.code() == Some("NOAUTH") || e.code() == Some("WRONGPASS") => {
            "check the user name and password in the URL"
        }
        _ => {
            "check that redis-server is running and reachable at that address \
             (host, port, firewall) and that REDIS_URL is right"
        }
    };
    format!("{e}; {check}")
}

/// `url` with any password replaced by `***` (also a `pass=`/`password=`
/// query parameter, as used by `redis+unix://` URLs).
pub(crate) fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = match userinfo.split_once(':') {
                        Some((user, _)) => format!("{user}:***"),
                        // A lone user part may well be a password.
                        None => "***".to_string(),
                    };
                    format!("{scheme}://{user}@{host}{path}")
                }
                None => base.to_string(),
            }
        }
        None => base.to_string(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k == "pass" || k == "password" => format!("{k}=***"),
                _ => p.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redact("redis://user:s3cret@h:6379/0"),
            "redis://user:***@h:6379/0"
        );
        assert_eq!(redact("redis://:s3cret@h"), "redis://:***@h");
        assert_eq!(redact("redis://s3cret@h"), "redis://***@h");
        assert_eq!(
            redact("redis+unix:///tmp/r.sock?db=1&pass=s3cret"),
            "redis+unix:///tmp/r.sock?db=1&pass=***"
        );
    }

    #[test]
    fn entries_parse_and_malformed_ones_say_why() {
        use redis::Value;
        let mut entry = StreamId {
            id: "1-0".into(),
            ..StreamId::default()
        };
        for (k, v) in [
            ("run_id", "r1"),
            ("task_id", "t1"),
            ("role", "backend_engineer"),
            ("attempt", "2"),
        ] {
            entry
                .map
                .insert(k.into(), Value::BulkString(v.as_bytes().to_vec()));
        }
        assert_eq!(
            parse_dispatch(&entry).unwrap(),
            Dispatch {
                run_id: RunId("r1".into()),
                task_id: "t1".into(),
                role: Role::BackendEngineer,
                attempt: 2,
            }
        );
        entry
            .map
            .insert("attempt".into(), Value::BulkString(b"two".to_vec()));
        assert!(parse_dispatch(&entry).unwrap_err().contains("attempt"));
        entry
            .map
            .insert("attempt".into(), Value::BulkString(b"2".to_vec()));
        entry.map.remove("task_id");
        assert!(parse_dispatch(&entry).unwrap_err().contains("task_id"));
    }

    #[test]
    fn sub_millisecond_timeouts_do_not_block_forever() {
        assert_eq!(millis(Duration::from_micros(500)), 0);
        assert_eq!(millis(Duration::from_millis(20)), 20);
    }
}
