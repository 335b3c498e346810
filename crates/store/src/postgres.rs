//! The PostgreSQL store: the distributed backend (`DATABASE_URL=postgres://...`),
//! shared by every `serve` and `worker` process.
//!
//! Same tables and meaning as the SQLite store (`migrations/postgres`, applied
//! by [`PostgresStore::connect`]; SQL in `queries/postgres`, one statement per
//! file, runtime-checked). Times are `BIGINT` milliseconds, enums `TEXT` in
//! their text forms, flags `BOOLEAN`, and JSON values `TEXT`: the store never
//! queries inside them, and `TEXT` gives back exactly what was written.
//!
//! Isolation: every transaction runs at the server's default, READ COMMITTED.
//! Correctness comes from row locks and conditional updates, not from
//! snapshots:
//! - Every write that touches a run takes the run's row lock *first*, with the
//!   `UPDATE runs ... RETURNING last_seq` that allocates the sequence numbers
//!   of the events it appends (claim, completion, append), or with the
//!   compare-and-set on `runs.version` (engine saves). The lock is held to
//!   commit, so appends to one run are serialized and its events are numbered
//!   1, 2, 3, ... with no gaps, and artifact versions (max + 1) cannot race.
//! - Task rows are locked only after their run's row, so no two transactions
//!   wait on each other in a cycle. Heartbeats lock one task row and wait for
//!   nothing else while holding it.
//! - Fences are `WHERE` clauses of the updates themselves (`status = 'QUEUED'
//!   AND attempt = $n` for a claim; status, attempt, owner and lease expiry
//!   for a completion; expected status and attempt for each task an engine
//!   save changes). Under READ COMMITTED a writer that waited for a row lock
//!   re-checks the clause against the row as committed by the winner, so of
//!   concurrent claims exactly one matches. When a check fails the whole
//!   transaction is rolled back: nothing is written.
//! - Reads are single statements without a transaction ([`RunStore::load_run`]
//!   reads the run, its gates and its tasks in one, a single snapshot). Where
//!   a run is read in two (a claim's row and gates, then the tasks), the row
//!   comes first: a save committed in between at worst pairs an older version
//!   with newer tasks, and a save from that state fails its version check
//!   (reload and retry), as with SQLite.
//!
//! Serialization failures and deadlocks (SQLSTATE 40001, 40P01), which the
//! lock order above should never produce, are retried a few times and then
//! reported as [`Error::Conflict`]. Lost connections are [`Error::Connect`].
//!
//! Durability: a commit is as durable as the server is configured to make it
//! (with PostgreSQL's default, `synchronous_commit = on`, it returns only once
//! its WAL record is flushed to disk), except claims and
//! [`Durability::Derived`] saves, which set `synchronous_commit = off` for
//! their own transaction: both are repaired if a crash loses them (see
//! [`Durability`]), and any later durable commit flushes them first.
//!
//! Writes: creating a run, an engine save, a completion (alone or with the
//! step that follows it) and an append are each one call of a write
//! procedure (`migrations/postgres/0007_write_functions.sql`): one statement,
//! its own transaction, one round trip, whatever the number of rows. The
//! procedures take the same JSON documents as the SQLite store's
//! (`doc.rs`) and do what SQLite's do; a refusal is an exception whose
//! message starts with `orch-assert:`. A claim is one statement too
//! (`claim_task.sql`), returning with the task what its worker reads. Where a completion with its step was eight round
//! trips (`BEGIN`, totals, task, `SAVEPOINT`, version, tasks, events,
//! `COMMIT`), it is one.

use std::time::Duration;

use async_trait::async_trait;
use orch_core::{
    Artifact, DeadLetter, Event, Gate, Millis, NewEvent, Run, RunId, RunState, RunStatus,
    StateDiff, Task, TaskStatus,
};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, Postgres};

use crate::doc::{
    Doc, JsonText, NoFields, complete_docs, complete_step_docs, create_doc, save_doc,
    started_event, to_json, token_param,
};
use crate::rows::{
    JsonRow, Prefixed, artifact_from_row, col, dead_letter_from_row, event_from_row, gate_from_row,
    llm_call_from_row, parse_col, run_from_row, task_from_row, task_ref_from_row, token_from_row,
    u64_col,
};
use crate::{
    ApiToken, ArtifactStore, AttemptInputs, Claim, ClaimedAttempt, DeadLetterStore, Durability,
    Error, EventQuery, EventStore, Fence, JournalStore, LlmCallRecord, LlmTotals, NewDeadLetter,
    Result, RunFilter, RunStore, Stats, StatsStore, Step, Stepped, Store, TaskOutcome, TaskRef,
    TaskStore, TokenStore,
};

/// The most connections of one store's pool, whatever is asked for: the
/// server's default `max_connections` (100) leaves room for a few processes.
pub const MAX_POOL_SIZE: u32 = 16;

/// Connections of one store's pool when none is asked for: one per core of
/// this machine and one more, at least 2 and at most [`MAX_POOL_SIZE`]. Each
/// operation holds one connection for its duration (one transaction at
/// most), so this bounds the operations in flight. More is not faster: on a
/// two-core machine running the server, S3 (three processes) did ~990
/// tasks/s with 16 connections each, ~1,080 with 4, ~1,140 with 3 or 2 —
/// statements beyond the cores the server has only take turns, and cost it
/// switching between them and contending for the same rows and pages.
pub fn default_pool_size() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    u32::try_from(cores + 1)
        .unwrap_or(MAX_POOL_SIZE)
        .clamp(2, MAX_POOL_SIZE)
}

/// How long an operation waits for a free pooled connection (or for a new
/// one to open) before failing.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`PostgresStore::connect`] waits for the server to answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A pooled connection idle for this long is pinged before it is used again.
const PING_AFTER_IDLE: Duration = Duration::from_secs(5);

/// Attempts of an operation that meets a serialization failure or deadlock.
const MAX_TRIES: u32 = 4;

/// The embedded migrations of the PostgreSQL schema.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The queries, one statement per file (`queries/postgres`).
mod sql {
    macro_rules! file {
        ($file:literal) => {
            include_str!(concat!("../queries/postgres/", $file))
        };
    }

    // Reads.
    pub const GET_RUN: &str = file!("get_run.sql");
    pub const LIST_RUNS: &str = file!("list_runs.sql");
    pub const ACTIVE_RUNS: &str = file!("active_runs.sql");
    pub const RUN_EXISTS: &str = file!("run_exists.sql");
    pub const LIST_TASKS: &str = file!("list_tasks.sql");
    pub const LOAD_RUN_TASKS: &str = file!("load_run_tasks.sql");
    pub const LOAD_RUN: &str = file!("load_run.sql");
    pub const EXPIRED_LEASES: &str = file!("expired_leases.sql");
    pub const RUNNING_TASKS: &str = file!("running_tasks.sql");
    pub const STALE_QUEUED: &str = file!("stale_queued.sql");
    pub const LIST_EVENTS: &str = file!("list_events.sql");
    pub const GET_ARTIFACT_VERSIONS: &str = file!("get_artifact_versions.sql");
    pub const KEEP_TEXT: &str = file!("keep_text.sql");
    pub const GET_TEXTS: &str = file!("get_texts.sql");
    pub const LIST_EVENTS_OF_KIND: &str = file!("list_events_of_kind.sql");
    pub const LIST_LATEST_ARTIFACTS_NAMED: &str = file!("list_latest_artifacts_named.sql");
    pub const LIST_ARTIFACTS: &str = file!("list_artifacts.sql");
    pub const GET_ARTIFACT: &str = file!("get_artifact.sql");
    pub const LIST_DEAD_LETTERS: &str = file!("list_dead_letters.sql");

    // Single-statement writes.
    pub const HEARTBEAT: &str = file!("heartbeat.sql");
    pub const MARK_REPLAYED: &str = file!("mark_replayed.sql");
    pub const RECORD_LLM_CALL: &str = file!("record_llm_call.sql");
    pub const FIND_LLM_CALL: &str = file!("find_llm_call.sql");
    pub const LIST_LLM_CALLS: &str = file!("list_llm_calls.sql");

    // API tokens.
    pub const INSERT_TOKEN: &str = file!("insert_token.sql");
    pub const GET_TOKEN: &str = file!("get_token.sql");
    pub const LIST_TOKENS: &str = file!("list_tokens.sql");
    pub const REVOKE_TOKEN: &str = file!("revoke_token.sql");

    // The aggregates of `stats`.
    pub const STATS_RUNS: &str = file!("stats_runs.sql");
    pub const STATS_TASKS: &str = file!("stats_tasks.sql");
    pub const STATS_DURATIONS: &str = file!("stats_durations.sql");
    pub const STATS_GATES: &str = file!("stats_gates.sql");
    pub const STATS_DEAD_LETTERS: &str = file!("stats_dead_letters.sql");
    pub const STATS_LLM: &str = file!("stats_llm.sql");

    // Writes of several rows: calls of the write procedures
    // (`migrations/postgres/0007_write_functions.sql`), and the claim.
    pub const CREATE_RUN: &str = file!("call_create_run.sql");
    pub const SAVE_RUN: &str = file!("call_save_run.sql");
    pub const APPEND_EVENTS: &str = file!("call_append_events.sql");
    pub const COMPLETE_TASK: &str = file!("call_complete_task.sql");
    pub const COMPLETE_STEP: &str = file!("call_complete_step.sql");
    pub const COMPLETE_STEP_READING: &str = file!("call_complete_step_reading.sql");
    pub const CLAIM_TASK: &str = file!("claim_task.sql");
}

type Query = sqlx::query::Query<'static, Postgres, PgArguments>;

/// The PostgreSQL implementation of every store capability.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    /// Connections shared by every operation; see [`default_pool_size`].
    pool: PgPool,
    /// The pool's size, for messages.
    pool_size: u32,
    /// The URL connected to, password redacted, for messages.
    url: String,
    /// Prompt texts kept already ([`EventStore::keep_text`]).
    kept: crate::KeptTexts,
}

impl PostgresStore {
    /// Connect to the database `url` names (`postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`
    /// or `postgresql://...`) and apply the missing migrations. The database
    /// itself must exist. A server that cannot be reached, refuses the
    /// credentials or has no such database is an [`Error::Connect`] that says
    /// what to check, within [`CONNECT_TIMEOUT`].
    pub async fn connect(url: &str) -> Result<PostgresStore> {
        PostgresStore::connect_with(url, None).await
    }

    /// [`PostgresStore::connect`] with a pool of `pool_size` connections
    /// (1 to [`MAX_POOL_SIZE`]; `None`: [`default_pool_size`]).
    pub async fn connect_with(url: &str, pool_size: Option<u32>) -> Result<PostgresStore> {
        let pool_size = pool_size.map_or_else(default_pool_size, |n| n.clamp(1, MAX_POOL_SIZE));
        let shown = redact_url(url);
        let mut options = parse_url(url, &shown)?;
        if options.get_application_name().is_none() {
            options = options.application_name("orchestrator");
        }
        // Every statement is prepared once per connection and looked up by
        // key columns (ids, literal statuses that match the partial indexes):
        // a generic plan fits them all, where the default re-plans the first
        // executions and keeps re-planning the big multi-statement writes on
        // every call (measured: binding the completion 308 -> 26 µs of server
        // time; distributed S1 4.2 -> 3.8 ms, S3 +10%). A URL that sets the
        // mode (`?options=-c plan_cache_mode=...`) keeps its own.
        if !url.contains("plan_cache_mode") {
            options = options.options([("plan_cache_mode", "force_generic_plan")]);
        }
        // One connection first, outside the pool: the pool retries a refused
        // connection until its timeout and then reports only that it timed
        // out, where this reports why.
        let mut probe = connect_once(&shown, &options).await?;
        // It applies the migrations too (`migrate`, without a pool).
        let migrated = MIGRATOR
            .run(&mut probe)
            .await
            .map_err(|e| migrate_err(&shown, e));
        if let Err(e) = probe.close().await {
            tracing::debug!(error = %e, "closing the first connection");
        }
        migrated?;
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // Ping only connections that sat idle for a while (the server
            // may have restarted meanwhile): a ping per operation would be
            // one more round trip on every call.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_AFTER_IDLE {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(options);
        let store = PostgresStore {
            pool,
            pool_size,
            url: shown,
            kept: Default::default(),
        };
        tracing::debug!(database = %store.url, "postgres store open");
        Ok(store)
    }

    /// Apply the embedded migrations (`migrations/postgres`) that are
    /// missing. Safe to run from several processes at once: the migrator
    /// holds an advisory lock while it works.
    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| migrate_err(&self.url, e))
    }

    /// The URL connected to, with any password redacted.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Close every connection; later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    // -----------------------------------------------------------------------
    // Plumbing

    /// Run `op` (one attempt of an operation, typically one transaction),
    /// again after a serialization failure or deadlock (both roll the
    /// transaction back), up to [`MAX_TRIES`] times; then [`Error::Conflict`]
    /// on `run`. Other database errors are mapped by [`Self::db_err`].
    async fn retrying<T, F, Fut>(&self, run: &RunId, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Attempt<T>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            match op().await {
                Ok(value) => return Ok(value),
                Err(Failure::Store(e)) => return Err(e),
                Err(Failure::Sql(e)) if is_retryable(&e) => {
                    if tries >= MAX_TRIES {
                        return Err(Error::Conflict(format!(
                            "{run} ({} after {tries} tries)",
                            message(&e)
                        )));
                    }
                    tracing::debug!(run = %run, error = %e, tries, "retrying a store operation");
                    tokio::time::sleep(Duration::from_millis(5 << tries)).await;
                }
                Err(Failure::Sql(e)) => return Err(self.db_err(e)),
            }
        }
    }

    /// Map a sqlx error met while using the store.
    fn db_err(&self, e: sqlx::Error) -> Error {
        if is_connection_error(&e) {
            let message = match &e {
                sqlx::Error::PoolTimedOut => format!(
                    "no database connection within {} s (all {} busy, or the server is unreachable); check that PostgreSQL is running and reachable",
                    ACQUIRE_TIMEOUT.as_secs(),
                    self.pool_size
                ),
                sqlx::Error::PoolClosed => "the store is closed".to_string(),
                e => format!(
                    "lost the connection to PostgreSQL ({}); check that the server is running and reachable",
                    message(e)
                ),
            };
            return Error::Connect {
                url: self.url.clone(),
                message,
            };
        }
        match e {
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
                Error::Decode(e.to_string())
            }
            e if is_retryable(&e) => Error::Conflict(message(&e)),
            e => Error::Database(message(&e)),
        }
    }

    async fn read_all(&self, query: Query) -> Result<Vec<PgRow>> {
        query
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db_err(e))
    }

    async fn read_one(&self, query: Query) -> Result<Option<PgRow>> {
        query
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.db_err(e))
    }

    /// `Ok(())` if the run exists, else [`Error::RunNotFound`].
    async fn require_run(&self, id: &RunId) -> Result<()> {
        match self
            .read_one(sqlx::query(sql::RUN_EXISTS).bind(id.as_str()))
            .await?
        {
            Some(_) => Ok(()),
            None => Err(Error::RunNotFound(id.to_string())),
        }
    }

    // -----------------------------------------------------------------------
    // One attempt of each write operation: one call of a write procedure
    // (`migrations/postgres/0007_write_functions.sql`), one round trip.

    async fn create_run_once(&self, run_id: &RunId, doc: &str) -> Attempt<()> {
        match sqlx::query(sql::CREATE_RUN)
            .bind(doc)
            .execute(&self.pool)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(Failure::Store(Error::Conflict(format!(
                "{run_id} (the run already exists)"
            )))),
            Err(e) => Err(e.into()),
        }
    }

    async fn save_run_once(
        &self,
        run_id: &RunId,
        expected_version: i64,
        diff: &StateDiff,
        doc: &str,
        relaxed: bool,
    ) -> Attempt<i64> {
        let saved = sqlx::query(sql::SAVE_RUN)
            .bind(doc)
            .bind(relaxed)
            .fetch_one(&self.pool)
            .await;
        match saved {
            Ok(row) => Ok(col(&row, "version")?),
            Err(e) => Err(match refusal(&e) {
                Some("run_version") => {
                    self.require_run(run_id).await?;
                    Error::Conflict(format!(
                        "{run_id} (it is no longer at version {expected_version})"
                    ))
                    .into()
                }
                Some("tasks_unchanged") => self.moved_task(run_id, diff).await.into(),
                _ if is_unique_violation(&e) => Error::Conflict(format!(
                    "{run_id} (a new task already exists: {})",
                    message(&e)
                ))
                .into(),
                _ => e.into(),
            }),
        }
    }

    /// The completion of [`Self::complete_task_once`] and, in the same
    /// transaction, the step of [`Self::save_run_once`] if it still applies
    /// (`orch_complete_step`). One durable commit for both. `reading`: also
    /// what the task the step saves claimed reads, after the step, as the
    /// completion's document names it (`orch_complete_step_reading`).
    async fn complete_and_save_once(
        &self,
        fence: &Fence,
        doc: &str,
        artifacts: &str,
        step: &str,
        reading: bool,
    ) -> Attempt<Stepped> {
        let query = if reading {
            sqlx::query(sql::COMPLETE_STEP_READING)
        } else {
            sqlx::query(sql::COMPLETE_STEP)
        };
        let row = query
            .bind(doc)
            .bind(artifacts)
            .bind(step)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| fenced(fence, e))?;
        let version: Option<i64> = col(&row, "saved_version")?;
        if version.is_none() {
            tracing::debug!(run = %fence.run_id, "step after a completion no longer applies");
        }
        let inputs = match version {
            Some(_) if reading => Some(inputs_from_row(&row)?),
            _ => None,
        };
        Ok(Stepped {
            version,
            current: col(&row, "still_current")?,
            inputs,
        })
    }

    /// The conflict of a save whose changed task moved: names the task
    /// (best effort: it may move again).
    async fn moved_task(&self, run_id: &RunId, diff: &StateDiff) -> Error {
        let stored = self.list_tasks(run_id).await.unwrap_or_default();
        let moved = diff.changed_tasks.iter().find(|c| {
            !stored.iter().any(|t| {
                t.id == c.task.id
                    && t.status == c.expected_status
                    && t.attempt == c.expected_attempt
            })
        });
        Error::Conflict(match moved {
            Some(c) => format!(
                "{run_id} (task {} is no longer {} at attempt {})",
                c.task.id, c.expected_status, c.expected_attempt
            ),
            None => format!("{run_id} (a task changed meanwhile)"),
        })
    }

    /// A claim ([`sql::CLAIM_TASK`]) with what its worker reads (the
    /// `upstream` artifact names among those `upstream_tasks` wrote); `None`
    /// if the task was not QUEUED at that attempt.
    async fn claim(&self, claim: &Claim<'_>) -> Result<Option<Claimed>> {
        let started = started_event(claim);
        let data = to_json(&started.data)?;
        self.retrying(claim.run_id, || self.claim_once(claim, &started, &data))
            .await
    }

    async fn claim_once(
        &self,
        claim: &Claim<'_>,
        started: &NewEvent,
        started_data: &str,
    ) -> Attempt<Option<Claimed>> {
        let claimed = sqlx::query(sql::CLAIM_TASK)
            .bind(claim.run_id.as_str())
            .bind(claim.task_id)
            .bind(i64::from(claim.attempt))
            .bind(claim.owner)
            .bind(claim.lease_until)
            .bind(claim.now)
            .bind(started.kind.as_str())
            .bind(&started.message)
            .bind(started_data)
            .bind(TaskStatus::Queued.as_str())
            .bind(claim.upstream)
            .bind(claim.upstream_tasks)
            .bind(claim.with_state)
            .bind(claim.known_version)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = claimed else {
            return Ok(None);
        };
        let run = run_from_row(&Prefixed {
            row: &row,
            prefix: "r_",
        })?;
        let AttemptInputs { messages, upstream } = inputs_from_row(&row)?;
        Ok(Some(Claimed {
            task: task_from_row(&row)?,
            run,
            messages,
            gates: col::<Option<String>>(&row, "r_gates")?
                .map(|gates| gates_from_json(&gates))
                .transpose()?,
            upstream,
        }))
    }

    async fn complete_task_once(&self, fence: &Fence, doc: &str, artifacts: &str) -> Attempt<()> {
        sqlx::query(sql::COMPLETE_TASK)
            .bind(doc)
            .bind(artifacts)
            .execute(&self.pool)
            .await
            .map_err(|e| fenced(fence, e))?;
        Ok(())
    }
}

/// A run's gates in gate order, from a JSON array of rows (`r_gates` of
/// claim_task.sql and load_run.sql).
fn gates_from_json(text: &str) -> Result<Vec<Gate>> {
    let mut gates = JsonRow::parse_all(Some(text))?
        .iter()
        .map(gate_from_row)
        .collect::<Result<Vec<_>>>()?;
    gates.sort_by_key(|g| g.kind.order());
    Ok(gates)
}

/// What a worker reads, as a claim (claim_task.sql) or a completion that
/// saved a task claimed (call_complete_step_reading.sql) returns it: JSON
/// arrays of rows in `r_messages` and `r_upstream` (NULL for none).
fn inputs_from_row(row: &PgRow) -> Result<AttemptInputs> {
    let rows = |name| -> Result<Vec<JsonRow>> {
        JsonRow::parse_all(col::<Option<String>>(row, name)?.as_deref())
    };
    Ok(AttemptInputs {
        messages: rows("r_messages")?
            .iter()
            .map(event_from_row)
            .collect::<Result<_>>()?,
        upstream: rows("r_upstream")?
            .iter()
            .map(artifact_from_row)
            .collect::<Result<_>>()?,
    })
}

/// What a claim statement returns.
struct Claimed {
    task: Task,
    run: Run,
    /// The run's gates, if the claim read them (the run must be read).
    gates: Option<Vec<Gate>>,
    messages: Vec<Event>,
    upstream: Vec<Artifact>,
}

/// The prefix of a write procedure's refusal (`RAISE EXCEPTION
/// 'orch-assert:...'`).
const REFUSED: &str = "orch-assert:";

/// What a write procedure refused (the part after [`REFUSED`]), if `e` is a
/// refusal.
fn refusal(e: &sqlx::Error) -> Option<&str> {
    match e {
        sqlx::Error::Database(d) => d.message().strip_prefix(REFUSED),
        _ => None,
    }
}

/// A completion's error: the fence's refusal as [`Error::LeaseLost`].
fn fenced(fence: &Fence, e: sqlx::Error) -> Failure {
    if refusal(&e) == Some("lease_held") {
        Failure::Store(Error::LeaseLost {
            run: fence.run_id.to_string(),
            task: fence.task_id.clone(),
            attempt: fence.attempt,
        })
    } else {
        Failure::Sql(e)
    }
}

// ---------------------------------------------------------------------------
// Errors

/// How one attempt of an operation failed: a database error (maybe worth
/// retrying, see [`PostgresStore::retrying`]) or the store's verdict.
#[derive(Debug)]
enum Failure {
    Sql(sqlx::Error),
    Store(Error),
}

type Attempt<T> = std::result::Result<T, Failure>;

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Sql(e)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Store(e)
    }
}

/// Create the database `url` names if the server has none of that name
/// (`orchestrator init-db`): connects to the server's `postgres` database
/// (else `template1`) as the URL's user. `true` if it was created.
pub async fn create_database_if_missing(url: &str) -> Result<bool> {
    let shown = redact_url(url);
    let options = parse_url(url, &shown)?;
    let name = options
        .get_database()
        .unwrap_or(options.get_username())
        .to_string();
    let mut admin = None;
    let mut last = None;
    for maintenance in ["postgres", "template1"] {
        if maintenance == name {
            // It exists: it is the one connected to.
            return Ok(false);
        }
        match connect_once(&shown, &options.clone().database(maintenance)).await {
            Ok(c) => {
                admin = Some(c);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(mut admin) = admin else {
        return Err(last.expect("a connection was tried"));
    };
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_optional(&mut admin)
        .await
        .map_err(|e| connect_err(&shown, &options, e))?;
    if exists.is_some() {
        return Ok(false);
    }
    let create = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
    // The name is quoted as an identifier (any `"` doubled).
    match sqlx::query(sqlx::AssertSqlSafe(create))
        .execute(&mut admin)
        .await
    {
        Ok(_) => Ok(true),
        // Created meanwhile by another process.
        Err(e) if sqlstate(&e).as_deref() == Some("42P04") => Ok(false),
        Err(e) if sqlstate(&e).as_deref() == Some("42501") => Err(Error::Config {
            url: shown,
            message: format!(
                "user {} may not create databases ({}); create {name:?} as a user who may (`createdb {name}`), or grant CREATEDB",
                options.get_username(),
                message(&e)
            ),
        }),
        Err(e) => Err(connect_err(&shown, &options, e)),
    }
}

/// One connection, given up after [`CONNECT_TIMEOUT`]; errors say why
/// (`shown` is the URL without its password).
async fn connect_once(shown: &str, options: &PgConnectOptions) -> Result<PgConnection> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(connect_err(shown, options, e)),
        Err(_) => Err(Error::Connect {
            url: shown.to_string(),
            message: format!(
                "no answer from {}:{} within {} s; check the host, the port and the network (firewall)",
                options.get_host(),
                options.get_port(),
                CONNECT_TIMEOUT.as_secs()
            ),
        }),
    }
}

/// Parse a PostgreSQL URL; a bad one is an [`Error::Config`].
fn parse_url(url: &str, shown: &str) -> Result<PgConnectOptions> {
    url.trim().parse().map_err(|e| Error::Config {
        url: shown.to_string(),
        message: format!(
            "not a valid PostgreSQL URL ({e}); expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
        ),
    })
}

/// SQLSTATE of a database error.
fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(d) => d.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// A serialization failure or deadlock: the transaction was rolled back and
/// may simply be run again.
fn is_retryable(e: &sqlx::Error) -> bool {
    matches!(sqlstate(e).as_deref(), Some("40001" | "40P01"))
}

/// The connection, not the statement, failed.
fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(_) => {
            let code = sqlstate(e).unwrap_or_default();
            // connection_exception, admin/crash shutdown, cannot_connect_now.
            code.starts_with("08") || matches!(code.as_str(), "57P01" | "57P02" | "57P03")
        }
        _ => false,
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// The database's own message (without sqlx's prefixes) where there is one.
fn message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_string(),
        e => e.to_string(),
    }
}

/// Map a migration error; a lost connection is [`Error::Connect`].
fn migrate_err(url: &str, e: sqlx::migrate::MigrateError) -> Error {
    use sqlx::migrate::MigrateError;
    match e {
        MigrateError::Execute(inner) | MigrateError::ExecuteMigration(inner, _)
            if is_connection_error(&inner) =>
        {
            Error::Connect {
                url: url.to_string(),
                message: format!(
                    "lost the connection to PostgreSQL while migrating ({}); check that the server is running and reachable",
                    message(&inner)
                ),
            }
        }
        e => Error::Migrate(e.to_string()),
    }
}

/// Map an error met while opening the first connection, with what to check.
fn connect_err(url: &str, options: &PgConnectOptions, e: sqlx::Error) -> Error {
    let at = format!("{}:{}", options.get_host(), options.get_port());
    let user = options.get_username();
    let database = options.get_database().unwrap_or(user);
    let state = sqlstate(&e);
    let hint = match (&e, state.as_deref()) {
        (sqlx::Error::Io(io), _) if io.kind() == std::io::ErrorKind::ConnectionRefused => format!(
            "is PostgreSQL running and listening on {at}? Check the host and port in DATABASE_URL"
        ),
        (sqlx::Error::Io(_), _) => {
            format!("check that the host and port ({at}) are right and reachable from here")
        }
        (sqlx::Error::Tls(_), _) => {
            "check the server's TLS setup and the sslmode in DATABASE_URL".to_string()
        }
        (_, Some("28P01" | "28000")) => format!(
            "check the user name ({user}) and password in DATABASE_URL, and the server's pg_hba.conf"
        ),
        (_, Some("3D000")) => format!(
            "create it with `orchestrator init-db` (or `createdb -h {} -p {} -U {user} {database}`), or fix its name in DATABASE_URL",
            options.get_host(),
            options.get_port()
        ),
        (_, Some("53300")) => {
            "the server has no connection slots left; raise max_connections or stop idle clients"
                .to_string()
        }
        (_, Some("57P03")) => {
            "the server is starting up or shutting down; retry in a moment".to_string()
        }
        _ => "check DATABASE_URL and that PostgreSQL is running".to_string(),
    };
    let message = format!("{}; {hint}", message(&e));
    let url = url.to_string();
    match state.as_deref() {
        // Wrong credentials or no such database: not fixed by waiting.
        Some("28P01" | "28000" | "3D000") => Error::Config { url, message },
        _ => Error::Connect { url, message },
    }
}

/// `url` with the password (in the user info or a `password=` parameter)
/// replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let url = url.trim();
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => p.to_string(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

// ---------------------------------------------------------------------------
// Encoding and decoding

/// `0` means "no limit": `LIMIT NULL`.
fn limit(n: u32) -> Option<i64> {
    (n > 0).then_some(i64::from(n))
}

// ---------------------------------------------------------------------------
// The traits

#[async_trait]
impl RunStore for PostgresStore {
    async fn create_run(&self, state: &RunState, events: &[NewEvent], now: Millis) -> Result<()> {
        let doc = to_json(&create_doc(state, events, now)?)?;
        self.retrying(&state.run.id, || self.create_run_once(&state.run.id, &doc))
            .await
    }

    /// One round trip instead of load_run's three when no engine saved the
    /// run since `known` (its version is unchanged): the run's totals and its
    /// tasks are read; its other columns and its gates, which only engine
    /// saves change, are `known`'s.
    async fn load_run_from(&self, id: &RunId, known: &RunState) -> Result<RunState> {
        let rows = self
            .read_all(sqlx::query(sql::LOAD_RUN_TASKS).bind(id.as_str()))
            .await?;
        let Some(first) = rows.first() else {
            return Err(Error::RunNotFound(id.to_string()));
        };
        if col::<i64>(first, "version")? != known.run.version {
            return self.load_run(id).await;
        }
        let run = Run {
            cost_usd: col(first, "run_cost_usd")?,
            tokens_in: col(first, "tokens_in")?,
            tokens_out: col(first, "tokens_out")?,
            updated_at: col(first, "run_updated_at")?,
            ..known.run.clone()
        };
        let has_tasks = col::<Option<String>>(first, "id")?.is_some();
        let tasks = if has_tasks {
            rows.iter().map(task_from_row).collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        Ok(RunState {
            run,
            tasks,
            gates: known.gates.clone(),
        })
    }

    /// One statement (load_run.sql): the run, its gates and its tasks in
    /// one round trip and one snapshot.
    async fn load_run(&self, id: &RunId) -> Result<RunState> {
        let rows = self
            .read_all(sqlx::query(sql::LOAD_RUN).bind(id.as_str()))
            .await?;
        let Some(first) = rows.first() else {
            return Err(Error::RunNotFound(id.to_string()));
        };
        let run = run_from_row(&Prefixed {
            row: first,
            prefix: "r_",
        })?;
        let gates = gates_from_json(&col::<String>(first, "r_gates")?)?;
        let tasks = if col::<Option<String>>(first, "id")?.is_some() {
            rows.iter().map(task_from_row).collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        Ok(RunState { run, tasks, gates })
    }

    async fn get_run(&self, id: &RunId) -> Result<Run> {
        let row = self
            .read_one(sqlx::query(sql::GET_RUN).bind(id.as_str()))
            .await?
            .ok_or_else(|| Error::RunNotFound(id.to_string()))?;
        run_from_row(&row)
    }

    /// A [`Durability::Derived`] save commits asynchronously
    /// (`synchronous_commit = off` for this transaction only): it does not
    /// wait for the WAL flush (about a millisecond on this class of disk). A
    /// crash within three `wal_writer_delay`s may lose it, which the engine
    /// repairs by taking the same step again; WAL order means a later durable
    /// commit (a completion) flushes it first.
    async fn save_run(
        &self,
        run_id: &RunId,
        expected_version: i64,
        diff: &StateDiff,
        state: &RunState,
        events: &[NewEvent],
        dead: &[NewDeadLetter],
        now: Millis,
        durability: Durability,
    ) -> Result<i64> {
        let doc = to_json(&save_doc(
            run_id,
            expected_version,
            diff,
            state,
            events,
            dead,
            now,
        )?)?;
        let relaxed = durability == Durability::Derived;
        self.retrying(run_id, || {
            self.save_run_once(run_id, expected_version, diff, &doc, relaxed)
        })
        .await
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
        self.read_all(
            sqlx::query(sql::LIST_RUNS)
                .bind(filter.status.map(RunStatus::as_str))
                .bind(limit(filter.limit))
                .bind(i64::from(filter.offset)),
        )
        .await?
        .iter()
        .map(run_from_row)
        .collect()
    }

    async fn active_runs(&self) -> Result<Vec<RunId>> {
        self.read_all(sqlx::query(sql::ACTIVE_RUNS))
            .await?
            .iter()
            .map(|row| col(row, "id").map(RunId))
            .collect()
    }
}

#[async_trait]
impl TaskStore for PostgresStore {
    async fn claim_task(
        &self,
        run_id: &RunId,
        task_id: &str,
        attempt: u32,
        owner: &str,
        lease_until: Millis,
        now: Millis,
    ) -> Result<Option<Task>> {
        let claim = Claim::bare(run_id, task_id, attempt, owner, lease_until, now);
        Ok(self.claim(&claim).await?.map(|c| c.task))
    }

    async fn heartbeat(&self, fence: &Fence, lease_until: Millis) -> Result<bool> {
        let done = sqlx::query(sql::HEARTBEAT)
            .bind(fence.run_id.as_str())
            .bind(fence.task_id.as_str())
            .bind(i64::from(fence.attempt))
            .bind(fence.owner.as_str())
            .bind(lease_until)
            .bind(TaskStatus::Running.as_str())
            .execute(&self.pool)
            .await
            .map_err(|e| self.db_err(e))?;
        Ok(done.rows_affected() > 0)
    }

    async fn complete_task(&self, fence: &Fence, outcome: &TaskOutcome, now: Millis) -> Result<()> {
        let (doc, artifacts) = complete_docs::<JsonText>(fence, outcome, now)?;
        self.retrying(&fence.run_id, || {
            self.complete_task_once(fence, &doc, &artifacts)
        })
        .await
    }

    async fn expired_leases(&self, now: Millis, max: u32) -> Result<Vec<TaskRef>> {
        self.read_all(sqlx::query(sql::EXPIRED_LEASES).bind(now).bind(limit(max)))
            .await?
            .iter()
            .map(task_ref_from_row)
            .collect()
    }

    async fn running_tasks(&self, max: u32) -> Result<Vec<TaskRef>> {
        self.read_all(sqlx::query(sql::RUNNING_TASKS).bind(limit(max)))
            .await?
            .iter()
            .map(task_ref_from_row)
            .collect()
    }

    async fn stale_queued(&self, before: Millis, max: u32) -> Result<Vec<TaskRef>> {
        self.read_all(sqlx::query(sql::STALE_QUEUED).bind(before).bind(limit(max)))
            .await?
            .iter()
            .map(task_ref_from_row)
            .collect()
    }

    async fn list_tasks(&self, run_id: &RunId) -> Result<Vec<Task>> {
        let tasks = self
            .read_all(sqlx::query(sql::LIST_TASKS).bind(run_id.as_str()))
            .await?
            .iter()
            .map(task_from_row)
            .collect::<Result<Vec<_>>>()?;
        if tasks.is_empty() {
            self.require_run(run_id).await?;
        }
        Ok(tasks)
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn append_events(
        &self,
        run_id: &RunId,
        events: &[NewEvent],
        now: Millis,
    ) -> Result<Vec<i64>> {
        if events.is_empty() {
            self.require_run(run_id).await?;
            return Ok(Vec::new());
        }
        let doc = to_json(&Doc::new(run_id, now, events, NoFields {})?)?;
        let last = self
            .retrying(run_id, || async {
                let row = sqlx::query(sql::APPEND_EVENTS)
                    .bind(&doc)
                    .fetch_one(&self.pool)
                    .await?;
                Ok(col::<Option<i64>>(&row, "last_seq")?)
            })
            .await?;
        let Some(last) = last else {
            return Err(Error::RunNotFound(run_id.to_string()));
        };
        let n = events.len() as i64;
        Ok((last - n + 1..=last).collect())
    }

    async fn list_events(&self, run_id: &RunId, query: EventQuery) -> Result<Vec<Event>> {
        let rows = self
            .read_all(
                sqlx::query(if query.kind.is_some() {
                    sql::LIST_EVENTS_OF_KIND
                } else {
                    sql::LIST_EVENTS
                })
                .bind(run_id.as_str())
                .bind(query.after_seq)
                .bind(limit(query.limit))
                .bind(query.kind.map(|k| k.as_str())),
            )
            .await?;
        if rows.is_empty() {
            return Err(Error::RunNotFound(run_id.to_string()));
        }
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            // The run's row without events has NULL event columns.
            if col::<Option<i64>>(row, "seq")?.is_some() {
                events.push(event_from_row(row)?);
            }
        }
        crate::expand_elided(self, run_id, &mut events).await?;
        Ok(events)
    }

    async fn keep_text(&self, text: &str, now: Millis) -> Result<String> {
        let reference = crate::text_ref(text);
        if self.kept.contains(&reference) {
            return Ok(reference);
        }
        sqlx::query(sql::KEEP_TEXT)
            .bind(reference.as_str())
            .bind(text)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(|e| self.db_err(e))?;
        self.kept.insert(reference.clone());
        Ok(reference)
    }

    async fn get_texts(&self, refs: &[String]) -> Result<Vec<(String, String)>> {
        self.read_all(sqlx::query(sql::GET_TEXTS).bind(refs.to_vec()))
            .await?
            .iter()
            .map(|row| Ok((col(row, "hash")?, col(row, "text")?)))
            .collect()
    }
}

#[async_trait]
impl ArtifactStore for PostgresStore {
    async fn artifact_versions(
        &self,
        run_id: &RunId,
        keys: &[orch_core::elision::ArtifactKey],
    ) -> Result<Vec<Artifact>> {
        self.read_all(
            sqlx::query(sql::GET_ARTIFACT_VERSIONS)
                .bind(run_id.as_str())
                .bind(crate::doc::artifact_keys_doc(keys)?),
        )
        .await?
        .iter()
        .map(artifact_from_row)
        .collect()
    }

    async fn list_artifacts(&self, run_id: &RunId, latest_only: bool) -> Result<Vec<Artifact>> {
        let artifacts = self
            .read_all(
                sqlx::query(sql::LIST_ARTIFACTS)
                    .bind(run_id.as_str())
                    .bind(latest_only),
            )
            .await?
            .iter()
            .map(artifact_from_row)
            .collect::<Result<Vec<_>>>()?;
        if artifacts.is_empty() {
            self.require_run(run_id).await?;
        }
        Ok(artifacts)
    }

    async fn latest_artifacts_named(
        &self,
        run_id: &RunId,
        tasks: &[String],
        names: &[String],
    ) -> Result<Vec<Artifact>> {
        if names.is_empty() || tasks.is_empty() {
            return Ok(Vec::new());
        }
        self.read_all(
            sqlx::query(sql::LIST_LATEST_ARTIFACTS_NAMED)
                .bind(run_id.as_str().to_string())
                .bind(names.to_vec())
                .bind(tasks.to_vec()),
        )
        .await?
        .iter()
        .map(artifact_from_row)
        .collect()
    }

    async fn get_artifact(
        &self,
        run_id: &RunId,
        name: &str,
        version: Option<i64>,
    ) -> Result<Artifact> {
        let row = self
            .read_one(
                sqlx::query(sql::GET_ARTIFACT)
                    .bind(run_id.as_str())
                    .bind(name)
                    .bind(version),
            )
            .await?;
        match row {
            Some(row) => artifact_from_row(&row),
            None => {
                self.require_run(run_id).await?;
                Err(Error::ArtifactNotFound {
                    run: run_id.to_string(),
                    name: match version {
                        Some(v) => format!("{name} v{v}"),
                        None => name.to_string(),
                    },
                })
            }
        }
    }
}

#[async_trait]
impl DeadLetterStore for PostgresStore {
    async fn list_dead_letters(
        &self,
        run_id: Option<&RunId>,
        include_replayed: bool,
    ) -> Result<Vec<DeadLetter>> {
        self.read_all(
            sqlx::query(sql::LIST_DEAD_LETTERS)
                .bind(run_id.map(RunId::as_str))
                .bind(include_replayed),
        )
        .await?
        .iter()
        .map(dead_letter_from_row)
        .collect()
    }

    async fn mark_replayed(&self, id: i64, now: Millis) -> Result<DeadLetter> {
        let row = sqlx::query(sql::MARK_REPLAYED)
            .bind(id)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.db_err(e))?
            .ok_or(Error::DeadLetterNotFound(id))?;
        dead_letter_from_row(&row)
    }
}

#[async_trait]
impl JournalStore for PostgresStore {
    async fn record_llm_call(&self, call: &LlmCallRecord) -> Result<()> {
        let query = sqlx::query(sql::RECORD_LLM_CALL)
            .bind(call.run_id.as_str().to_string())
            .bind(call.task_id.clone())
            .bind(i64::from(call.attempt))
            .bind(i64::from(call.step))
            .bind(call.request_hash.clone())
            .bind(call.provider.clone())
            .bind(call.model.clone())
            .bind(call.request.clone())
            .bind(call.response.clone())
            .bind(token_param(call.input_tokens))
            .bind(token_param(call.output_tokens))
            .bind(token_param(call.cache_read_tokens))
            .bind(token_param(call.cache_write_tokens))
            .bind(call.latency_ms)
            .bind(call.cost_usd)
            .bind(call.created_at);
        let written = query
            .execute(&self.pool)
            .await
            .map_err(|e| self.db_err(e))?;
        if written.rows_affected() == 0 {
            // Journaled already, or no such run.
            self.require_run(&call.run_id).await?;
        }
        Ok(())
    }

    async fn find_llm_call(
        &self,
        run_id: &RunId,
        task_id: &str,
        request_hash: &str,
    ) -> Result<Option<LlmCallRecord>> {
        self.read_one(
            sqlx::query(sql::FIND_LLM_CALL)
                .bind(run_id.as_str().to_string())
                .bind(task_id.to_string())
                .bind(request_hash.to_string()),
        )
        .await?
        .as_ref()
        .map(llm_call_from_row)
        .transpose()
    }

    async fn list_llm_calls(&self, run_id: &RunId) -> Result<Vec<LlmCallRecord>> {
        self.read_all(sqlx::query(sql::LIST_LLM_CALLS).bind(run_id.as_str().to_string()))
            .await?
            .iter()
            .map(llm_call_from_row)
            .collect()
    }
}

#[async_trait]
impl TokenStore for PostgresStore {
    async fn create_token(&self, token: &ApiToken) -> Result<()> {
        let inserted = sqlx::query(sql::INSERT_TOKEN)
            .bind(token.id.as_str())
            .bind(token.name.as_str())
            .bind(to_json(&token.scopes)?)
            .bind(token.secret_hash.as_str())
            .bind(token.created_at)
            .bind(token.revoked_at)
            .execute(&self.pool)
            .await;
        match inserted {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(Error::TokenExists(token.id.clone())),
            Err(e) => Err(self.db_err(e)),
        }
    }

    async fn get_token(&self, id: &str) -> Result<Option<ApiToken>> {
        self.read_one(sqlx::query(sql::GET_TOKEN).bind(id))
            .await?
            .as_ref()
            .map(token_from_row)
            .transpose()
    }

    async fn list_tokens(&self, include_revoked: bool) -> Result<Vec<ApiToken>> {
        self.read_all(sqlx::query(sql::LIST_TOKENS).bind(include_revoked))
            .await?
            .iter()
            .map(token_from_row)
            .collect()
    }

    async fn revoke_token(&self, id: &str, now: Millis) -> Result<ApiToken> {
        let row = sqlx::query(sql::REVOKE_TOKEN)
            .bind(id)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.db_err(e))?
            .ok_or_else(|| Error::TokenNotFound(id.to_string()))?;
        token_from_row(&row)
    }
}

#[async_trait]
impl StatsStore for PostgresStore {
    async fn stats(&self) -> Result<Stats> {
        // One statement per aggregate, one after the other on the pool: no
        // snapshot across them (a scrape need not be exact to the row), and
        // no more than one connection held at a time.
        let mut stats = Stats::default();
        for row in &self.read_all(sqlx::query(sql::STATS_RUNS)).await? {
            stats
                .runs_by_status
                .push((parse_col(row, "status")?, u64_col(row, "n")?));
        }
        for row in &self.read_all(sqlx::query(sql::STATS_TASKS)).await? {
            stats.tasks_by_role_status.push((
                parse_col(row, "role")?,
                parse_col(row, "status")?,
                u64_col(row, "n")?,
            ));
        }
        for row in &self.read_all(sqlx::query(sql::STATS_DURATIONS)).await? {
            let bucket: i32 = col(row, "bucket")?;
            stats.add_durations(
                parse_col(row, "role")?,
                i64::from(bucket),
                u64_col(row, "n")?,
                col(row, "sum_ms")?,
            )?;
        }
        for row in &self.read_all(sqlx::query(sql::STATS_GATES)).await? {
            stats.gates_by_kind_status.push((
                parse_col(row, "kind")?,
                parse_col(row, "status")?,
                u64_col(row, "n")?,
            ));
        }
        if let Some(row) = self.read_one(sqlx::query(sql::STATS_DEAD_LETTERS)).await? {
            stats.dead_letters = u64_col(&row, "n")?;
        }
        for row in &self.read_all(sqlx::query(sql::STATS_LLM)).await? {
            stats.llm.push(LlmTotals {
                provider: col(row, "provider")?,
                model: col(row, "model")?,
                calls: u64_col(row, "n")?,
                input_tokens: u64_col(row, "input_tokens")?,
                output_tokens: u64_col(row, "output_tokens")?,
                cache_read_tokens: u64_col(row, "cache_read_tokens")?,
                cache_write_tokens: u64_col(row, "cache_write_tokens")?,
                cost_usd: col(row, "cost_usd")?,
            });
        }
        Ok(stats)
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn close(&self) {
        PostgresStore::close(self).await;
    }

    /// The claim returns the run's row, its channel messages and the
    /// upstream artifacts (one statement); the whole run is read after it
    /// only if asked for and the caller does not hold it at its version.
    async fn claim_attempt(&self, claim: &Claim<'_>) -> Result<Option<ClaimedAttempt>> {
        let Some(Claimed {
            task,
            run,
            gates,
            messages,
            upstream,
        }) = self.claim(claim).await?
        else {
            return Ok(None);
        };
        // The whole run: its row and gates as the claim read them, then its
        // tasks (the row before the tasks: see the module documentation).
        let state = match gates {
            Some(gates) => Some(RunState {
                run: run.clone(),
                tasks: self.list_tasks(claim.run_id).await?,
                gates,
            }),
            None => None,
        };
        Ok(Some(ClaimedAttempt {
            task,
            run,
            messages,
            upstream,
            state,
        }))
    }

    /// The completion and the step in one transaction with one durable
    /// commit (`complete_and_save_once`), where the default would
    /// commit twice and read the tasks after.
    async fn complete_and_save(
        &self,
        fence: &Fence,
        outcome: &TaskOutcome,
        now: Millis,
        step: &Step<'_>,
    ) -> Result<Stepped> {
        let reading = step.inputs_of.is_some();
        let held = step.inputs_of;
        let (doc, artifacts, step) = complete_step_docs::<JsonText>(fence, outcome, now, step)?;
        let stepped = self
            .retrying(&fence.run_id, || {
                self.complete_and_save_once(fence, &doc, &artifacts, &step, reading)
            })
            .await
            .map(|mut stepped| {
                if let (Some(inputs), Some(of)) = (&mut stepped.inputs, &held) {
                    inputs.upstream = crate::with_held(std::mem::take(&mut inputs.upstream), of);
                }
                stepped
            });
        match stepped {
            Err(e @ (Error::LeaseLost { .. } | Error::Connect { .. })) => Err(e),
            Err(e) => {
                // Whatever failed (nothing was written), the completion must
                // not wait on the step: commit it alone.
                tracing::warn!(run = %fence.run_id, error = %e, "step not saved with the completion; the engine will take it");
                self.retrying(&fence.run_id, || {
                    self.complete_task_once(fence, &doc, &artifacts)
                })
                .await?;
                Ok(Stepped::default())
            }
            ok => ok,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_pool_is_a_connection_per_core_and_one_more_within_bounds() {
        let n = default_pool_size();
        assert!((2..=MAX_POOL_SIZE).contains(&n), "{n}");
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        assert_eq!(n as usize, (cores + 1).clamp(2, MAX_POOL_SIZE as usize));
    }

    /// The bucket bounds and terminal statuses written out in the duration
    /// query are those of `TASK_DURATION_BUCKETS_MS` and `TaskStatus`.
    #[test]
    fn the_duration_query_matches_the_buckets_and_statuses() {
        let sql = sql::STATS_DURATIONS;
        for (i, bound) in crate::TASK_DURATION_BUCKETS_MS.iter().enumerate() {
            let arm = format!("WHEN duration <= {bound} THEN {i}\n");
            assert!(sql.contains(&arm), "missing {arm:?}");
        }
        let inf = format!("ELSE {}\n", crate::TASK_DURATION_BUCKETS_MS.len());
        assert!(sql.contains(&inf), "missing {inf:?}");
        let terminal: Vec<String> = TaskStatus::ALL
            .iter()
            .filter(|s| s.is_terminal())
            .map(|s| format!("'{s}'"))
            .collect();
        let filter = format!("status IN ({})", terminal.join(", "));
        assert!(sql.contains(&filter), "missing {filter:?}");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://orch:s3cret@db.example:5432/orch"),
            "postgres://orch:***@db.example:5432/orch"
        );
        assert_eq!(
            redact_url("postgresql://orch@db/orch?sslmode=require&password=s3cret"),
            "postgresql://orch@db/orch?sslmode=require&password=***"
        );
        assert_eq!(
            redact_url("postgres://localhost/orch"),
            "postgres://localhost/orch"
        );
        assert_eq!(redact_url("postgres://u:p%40ss@h"), "postgres://u:***@h");
    }

    #[test]
    fn no_limit_is_null() {
        assert_eq!(limit(0), None);
        assert_eq!(limit(7), Some(7));
    }
}
