//! Durable state: the store traits the engine sees, and their SQLite
//! (embedded default) and PostgreSQL implementations.
//!
//! The store is the source of truth. Every state change and the events that
//! describe it are written in one transaction. Workers change task rows only
//! through fenced operations ([`TaskStore::claim_task`],
//! [`TaskStore::complete_task`]) that check the attempt and lease, so a worker
//! that lost its lease cannot write. The engine saves run state with
//! optimistic concurrency ([`RunStore::save_run`]).
//!
//! Column ownership on `runs`: the engine writes status, reason, iterations,
//! settings, version and times; workers only add to cost and token totals;
//! the event sequence counter is bumped by whoever appends events.
//!
//! Parts: the traits (split by capability) and [`Error`] here, `sqlite` (one
//! module, SQL in `.sql` files under `queries/sqlite`, migrations under
//! `migrations/sqlite`), `postgres` (the same under `queries/postgres` and
//! `migrations/postgres`, with ordinary transactions and row locks), `rows`
//! (decoding rows into the model, shared by both), `conformance` (one suite
//! run against every backend).
//! This crate depends on `orch-core` only; it knows nothing of brokers,
//! providers or the engine.

use std::sync::Arc;

use async_trait::async_trait;
use orch_core::{
    Artifact, DeadLetter, Event, GateKind, GateStatus, Millis, NewArtifact, NewEvent, Role, Run,
    RunId, RunState, RunStatus, StateDiff, Task, TaskStatus, Usage, Verdict,
};

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod doc;
mod jsonb;
pub mod postgres;
mod rows;
pub mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Errors of every store backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no run {0}; list runs with `orchestrator list`")]
    RunNotFound(String),
    #[error("no task {task} in run {run}")]
    TaskNotFound { run: String, task: String },
    #[error("no artifact {name:?} in run {run}")]
    ArtifactNotFound { run: String, name: String },
    #[error("no dead letter {0}; list them with `orchestrator dlq list`")]
    DeadLetterNotFound(i64),
    #[error("no API token {0}; list them with `orchestrator token list`")]
    TokenNotFound(String),
    #[error("an API token with id {0} already exists; create another")]
    TokenExists(String),
    /// Someone else changed the run since it was loaded: reload and retry.
    #[error("concurrent update of run {0}; reload and retry")]
    Conflict(String),
    /// The worker no longer holds this attempt's lease: its result is discarded.
    #[error(
        "lease lost on task {task} attempt {attempt} of run {run}: the task was reclaimed, cancelled or finished by someone else"
    )]
    LeaseLost {
        run: String,
        task: String,
        attempt: u32,
    },
    #[error(
        "database is locked by another process ({0}); stop the other orchestrator or wait, then retry"
    )]
    Locked(String),
    #[error(
        "database file is not usable ({0}); it may be corrupt or not an orchestrator database. Move it aside and run `orchestrator init-db`"
    )]
    Corrupt(String),
    #[error("cannot open database {url}: {message}")]
    Connect { url: String, message: String },
    /// The database URL, credentials or database name are wrong: waiting
    /// for the server cannot help (unlike [`Error::Connect`]).
    #[error("cannot use database {url}: {message}")]
    Config { url: String, message: String },
    #[error("database schema error: {0}. Run `orchestrator init-db` to create or upgrade it")]
    Migrate(String),
    #[error("stored data is invalid: {0}")]
    Decode(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("unsupported DATABASE_URL {0:?}: use sqlite://PATH (the default) or postgres://...")]
    UnsupportedUrl(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether a save must be on disk before [`RunStore::save_run`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Wait for the disk: the step records what cannot be derived again
    /// (a person's input, a replay, a new run).
    Durable,
    /// A step derived only from what is already stored (a reconcile), which
    /// the engine would take again, the same way, were the save lost. A
    /// backend may return before it is on disk (PostgreSQL: asynchronous
    /// commit for this transaction); it is as atomic, isolated and visible
    /// as any other, and the next durable commit (a worker's completion)
    /// makes it durable too. Outcomes of work, human input and the journal
    /// are never saved this way.
    Derived,
}

/// Filter for listing runs.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub status: Option<RunStatus>,
    pub limit: u32,
    pub offset: u32,
}

/// A dead letter to record with a state save.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDeadLetter {
    pub task_id: String,
    pub role: Role,
    pub attempts: u32,
    pub error: String,
}

/// Proof that a worker holds a task attempt's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub run_id: RunId,
    pub task_id: String,
    pub attempt: u32,
    pub owner: String,
}

/// The end of one task attempt, committed with [`TaskStore::complete_task`].
#[derive(Debug, Clone, PartialEq)]
pub struct TaskOutcome {
    /// `Succeeded` or `Failed`.
    pub status: TaskStatus,
    pub summary: Option<String>,
    pub verdict: Option<Verdict>,
    pub error: Option<String>,
    pub retryable: bool,
    pub artifacts: Vec<NewArtifact>,
    /// Events committed with the outcome (tool calls, artifacts written, result).
    pub events: Vec<NewEvent>,
    /// Added to the task's and the run's totals.
    pub usage: Usage,
    /// Journal records of the attempt's LLM calls not yet written, committed
    /// with the outcome (behind the same fence; a record already journaled
    /// for the same run, task, attempt and step is kept as it is). If the
    /// outcome is refused, nothing of them is written: the caller records
    /// them on their own ([`JournalStore::record_llm_call`]).
    pub llm_calls: Vec<LlmCallRecord>,
}

impl TaskOutcome {
    /// `task` (the attempt's row as claimed) as [`TaskStore::complete_task`]
    /// leaves it on committing this outcome at `now`, and `run` with the
    /// outcome's usage added to its totals: what an engine step taken with the
    /// completion ([`Store::complete_and_save`]) starts from.
    pub fn apply_to(&self, task: &mut Task, run: &mut Run, now: Millis) {
        task.status = self.status;
        task.result_summary.clone_from(&self.summary);
        task.verdict.clone_from(&self.verdict);
        task.last_error.clone_from(&self.error);
        task.retryable = self.retryable;
        task.finished_at = Some(now);
        task.lease_owner = None;
        task.lease_expires_at = None;
        task.cost_usd += self.usage.cost_usd;
        run.cost_usd += self.usage.cost_usd;
        run.tokens_in += self.usage.input_tokens;
        run.tokens_out += self.usage.output_tokens;
    }
}

/// A queued or running task the sweeper looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRef {
    pub run_id: RunId,
    pub task_id: String,
    pub role: Role,
    pub attempt: u32,
    pub lease_owner: Option<String>,
}

/// Runs: creation, loading, saving engine state, listing.
#[async_trait]
pub trait RunStore: Send + Sync {
    /// Insert a new run with its tasks, gates and events (one transaction).
    async fn create_run(&self, state: &RunState, events: &[NewEvent], now: Millis) -> Result<()>;
    /// The run with all its tasks (plan order: creation order) and gates.
    async fn load_run(&self, id: &RunId) -> Result<RunState>;
    /// [`RunStore::load_run`] for a caller that holds the run as it was at
    /// `known.run.version` (e.g. as it last saved it): when the run is still
    /// at that version (no engine saved it since), only what workers change
    /// of the tasks is read and the rest is taken from `known`; else the run
    /// is loaded whole. The result is the same either way.
    async fn load_run_from(&self, id: &RunId, known: &RunState) -> Result<RunState> {
        let _ = known;
        self.load_run(id).await
    }
    /// The run row alone.
    async fn get_run(&self, id: &RunId) -> Result<Run>;
    /// Save what the engine changed, the events it emitted and dead letters,
    /// in one transaction. The run row must still have `expected_version`
    /// and each changed task its expected status and attempt, else
    /// [`Error::Conflict`] and nothing is written. Returns the new version
    /// (`expected_version + 1`). `durability` says whether it must be on
    /// disk before this returns.
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
    ) -> Result<i64>;
    /// Runs, newest first.
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<Run>>;
    /// Ids of runs in PENDING, PLANNING or RUNNING.
    async fn active_runs(&self) -> Result<Vec<RunId>>;
}

/// Task rows as workers and the sweeper touch them.
#[async_trait]
pub trait TaskStore: Send + Sync {
    /// `QUEUED -> RUNNING` for exactly this attempt, taking the lease, and
    /// append `task_started`. `None` if the task is not QUEUED at that
    /// attempt (a duplicate or stale message): acknowledge and drop.
    async fn claim_task(
        &self,
        run_id: &RunId,
        task_id: &str,
        attempt: u32,
        owner: &str,
        lease_until: Millis,
        now: Millis,
    ) -> Result<Option<Task>>;
    /// Extend the lease. `false` if the lease is no longer held.
    async fn heartbeat(&self, fence: &Fence, lease_until: Millis) -> Result<bool>;
    /// Commit an attempt's outcome if the fence still holds (status RUNNING,
    /// same attempt, same owner, lease not expired at `now`): artifacts
    /// (versioned), events, task status and totals, in one transaction. Else
    /// [`Error::LeaseLost`] and nothing is written.
    async fn complete_task(&self, fence: &Fence, outcome: &TaskOutcome, now: Millis) -> Result<()>;
    /// RUNNING tasks whose lease expired before `now`.
    async fn expired_leases(&self, now: Millis, limit: u32) -> Result<Vec<TaskRef>>;
    /// RUNNING tasks (for reclaiming the leases of dead local processes).
    async fn running_tasks(&self, limit: u32) -> Result<Vec<TaskRef>>;
    /// QUEUED tasks queued before `before` (their message may be lost).
    async fn stale_queued(&self, before: Millis, limit: u32) -> Result<Vec<TaskRef>>;
    /// Tasks of a run, in creation order.
    async fn list_tasks(&self, run_id: &RunId) -> Result<Vec<Task>>;
}

/// The append-only event log.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventQuery {
    /// Only events with `seq > after_seq`.
    pub after_seq: i64,
    /// At most this many (0: no limit).
    pub limit: u32,
    /// Only events of this kind (an indexed read).
    pub kind: Option<orch_core::EventKind>,
}

/// The append-only, per-run ordered event log.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Append events to a run's log; returns their sequence numbers.
    async fn append_events(
        &self,
        run_id: &RunId,
        events: &[NewEvent],
        now: Millis,
    ) -> Result<Vec<i64>>;
    /// Events of a run in sequence order.
    async fn list_events(&self, run_id: &RunId, query: EventQuery) -> Result<Vec<Event>>;
    /// Keep `text` once (a system prompt that many `llm_request` events
    /// share, [`orch_core::elision`]) and return the reference events name
    /// it by, `sha256:<hex>`. Keeping a text kept already changes nothing;
    /// a store remembers what it kept, so only the first time in a process
    /// costs a write. The text is durable when this returns.
    async fn keep_text(&self, text: &str, now: Millis) -> Result<String>;
    /// Texts kept by [`EventStore::keep_text`], as `(reference, text)`;
    /// unknown references are left out.
    async fn get_texts(&self, refs: &[String]) -> Result<Vec<(String, String)>>;
}

/// The reference [`EventStore::keep_text`] gives a text.
pub(crate) fn text_ref(text: &str) -> String {
    use sha2::{Digest, Sha256};
    use std::fmt::Write;
    let digest = Sha256::digest(text.as_bytes());
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// References of the texts a store has kept (or found kept) in this
/// process: [`EventStore::keep_text`] writes each at most once.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeptTexts(Arc<std::sync::Mutex<std::collections::HashSet<String>>>);

impl KeptTexts {
    pub(crate) fn contains(&self, reference: &str) -> bool {
        self.0.lock().is_ok_and(|set| set.contains(reference))
    }
    pub(crate) fn insert(&self, reference: String) {
        if let Ok(mut set) = self.0.lock() {
            set.insert(reference);
        }
    }
}

/// Put back the artifacts the engine cut out of prompts before writing them
/// ([`orch_core::elision`]): every read of events goes through this, so a
/// reader sees each prompt as it was sent. Reads the run's artifacts only if
/// an event has cuts.
pub(crate) async fn expand_elided(
    store: &(impl ArtifactStore + EventStore + ?Sized),
    run_id: &RunId,
    events: &mut [Event],
) -> Result<()> {
    use orch_core::elision::{self, ArtifactKey, expand, expand_system, has_elided};
    if !events.iter().any(|e| has_elided(&e.data)) {
        return Ok(());
    }
    let mut keys: Vec<ArtifactKey> = events
        .iter()
        .filter_map(|e| e.data.get(elision::FIELD))
        .filter_map(|list| serde_json::from_value::<Vec<elision::Elided>>(list.clone()).ok())
        .flatten()
        .map(|c| c.artifact)
        .collect();
    keys.sort_by(|a, b| (&a.name, &a.path, a.version).cmp(&(&b.name, &b.path, b.version)));
    keys.dedup();
    let artifacts = if keys.is_empty() {
        Vec::new()
    } else {
        store.artifact_versions(run_id, &keys).await?
    };
    let by_key: std::collections::HashMap<ArtifactKey, &str> = artifacts
        .iter()
        .map(|a| (ArtifactKey::of(a), a.content.as_str()))
        .collect();
    let mut refs: Vec<String> = events
        .iter()
        .filter_map(|e| elision::system_ref(&e.data).map(str::to_owned))
        .collect();
    refs.sort();
    refs.dedup();
    let texts: std::collections::HashMap<String, String> = if refs.is_empty() {
        Default::default()
    } else {
        store.get_texts(&refs).await?.into_iter().collect()
    };
    for e in events.iter_mut().filter(|e| has_elided(&e.data)) {
        let mut missing = expand(&mut e.data, |k| by_key.get(k).copied());
        missing += usize::from(expand_system(&mut e.data, |r| {
            texts.get(r).map(String::as_str)
        }));
        if missing > 0 {
            tracing::warn!(run = %run_id, seq = e.seq, missing, "a prompt names artifacts or texts that are not in the store");
        }
    }
    Ok(())
}

/// Versioned artifacts of runs.
#[async_trait]
pub trait ArtifactStore: Send + Sync {
    /// Artifacts of a run: every version, or only the latest of each name.
    async fn list_artifacts(&self, run_id: &RunId, latest_only: bool) -> Result<Vec<Artifact>>;
    /// The latest version of each artifact (of each file) of a run whose name
    /// is one of `names`, among the versions written by one of `tasks`: what
    /// a task reads of its upstream, without reading the rest of the run. A
    /// task running beside it may be writing a newer version of the same
    /// name (a fix task in a rework round), which it must not see: its prompt
    /// would depend on timing and replays would not match the journal. An
    /// unknown run has none.
    async fn latest_artifacts_named(
        &self,
        run_id: &RunId,
        tasks: &[String],
        names: &[String],
    ) -> Result<Vec<Artifact>> {
        let all = match self.list_artifacts(run_id, false).await {
            Ok(all) => all,
            Err(Error::RunNotFound(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut latest: Vec<Artifact> = Vec::new();
        keep_latest(&mut latest, &all, names, tasks);
        Ok(latest)
    }
    /// The artifact versions `keys` name (name, path, version), in no
    /// particular order; keys no artifact has are left out.
    async fn artifact_versions(
        &self,
        run_id: &RunId,
        keys: &[orch_core::elision::ArtifactKey],
    ) -> Result<Vec<Artifact>> {
        let all = self.list_artifacts(run_id, false).await?;
        Ok(all
            .into_iter()
            .filter(|a| {
                keys.iter()
                    .any(|k| k.name == a.name && k.path == a.path && k.version == a.version)
            })
            .collect())
    }
    /// One artifact: the given version or the latest.
    async fn get_artifact(
        &self,
        run_id: &RunId,
        name: &str,
        version: Option<i64>,
    ) -> Result<Artifact>;
}

/// Tasks that failed every attempt, kept for replay.
#[async_trait]
pub trait DeadLetterStore: Send + Sync {
    /// Dead letters, newest first; of one run, or all; replayed ones too if asked.
    async fn list_dead_letters(
        &self,
        run_id: Option<&RunId>,
        include_replayed: bool,
    ) -> Result<Vec<DeadLetter>>;
    /// Mark a dead letter replayed.
    async fn mark_replayed(&self, id: i64, now: Millis) -> Result<DeadLetter>;
}

/// One journaled LLM call of a task attempt (the `llm_calls` table).
#[derive(Debug, Clone, PartialEq)]
pub struct LlmCallRecord {
    pub run_id: RunId,
    pub task_id: String,
    pub attempt: u32,
    pub step: u32,
    /// Hash of the request's prompt (see `orch_llm::request_hash`).
    pub request_hash: String,
    pub provider: String,
    pub model: String,
    /// The request as JSON. The engine's journal leaves out the prompt
    /// (system and messages), which the `llm_request` event of the same
    /// attempt and step holds; `request_hash` covers it.
    pub request: String,
    /// The response, as JSON (an `orch_llm::Response`).
    pub response: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub latency_ms: i64,
    pub cost_usd: f64,
    pub created_at: Millis,
}

/// The journal of LLM calls, so retried attempts and replays need not pay again.
#[async_trait]
pub trait JournalStore: Send + Sync {
    /// Record a call; a second record with the same run, task, attempt and step is ignored.
    async fn record_llm_call(&self, call: &LlmCallRecord) -> Result<()>;
    /// The most recent call of any attempt of this task with this request hash.
    async fn find_llm_call(
        &self,
        run_id: &RunId,
        task_id: &str,
        request_hash: &str,
    ) -> Result<Option<LlmCallRecord>>;
    /// Every journaled call of a run, in recording order.
    async fn list_llm_calls(&self, run_id: &RunId) -> Result<Vec<LlmCallRecord>>;
}

/// An API bearer token as stored: never the secret itself, only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// Public identifier (the token's second part, `orch_<id>_<secret>`).
    pub id: String,
    /// A label for people (`ci`, `dashboard`).
    pub name: String,
    /// Scope names (`read`, `write`, `admin`).
    pub scopes: Vec<String>,
    /// SHA-256 of the secret, lowercase hex.
    pub secret_hash: String,
    pub created_at: Millis,
    pub revoked_at: Option<Millis>,
}

/// Bearer tokens of the HTTP API (the `api_tokens` table).
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Insert a token; an existing id is [`Error::TokenExists`].
    async fn create_token(&self, token: &ApiToken) -> Result<()>;
    /// One token by id, revoked or not.
    async fn get_token(&self, id: &str) -> Result<Option<ApiToken>>;
    /// Tokens, oldest first; revoked ones too if asked.
    async fn list_tokens(&self, include_revoked: bool) -> Result<Vec<ApiToken>>;
    /// Revoke a token (idempotent: revoking twice keeps the first time).
    /// [`Error::TokenNotFound`] if there is no such id.
    async fn revoke_token(&self, id: &str, now: Millis) -> Result<ApiToken>;
}

/// Upper bounds (milliseconds, inclusive) of the task duration histogram
/// buckets in [`Stats::task_durations`]; a last, implicit bucket is `+Inf`.
pub const TASK_DURATION_BUCKETS_MS: [i64; 12] = [
    10, 50, 100, 500, 1_000, 5_000, 10_000, 30_000, 60_000, 300_000, 900_000, 3_600_000,
];

/// Durations of finished task attempts of one role (finished_at - started_at
/// of tasks in a final status).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DurationHistogram {
    /// Count per bucket of [`TASK_DURATION_BUCKETS_MS`] plus the `+Inf`
    /// bucket (length 13); NOT cumulative.
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum_ms: i64,
}

/// LLM call totals of one provider and model, from the call journal.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LlmTotals {
    pub provider: String,
    pub model: String,
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_usd: f64,
}

/// Aggregates over the whole store, for `/metrics`: computed by the
/// database, so a `serve` process reports the work of workers elsewhere.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stats {
    pub runs_by_status: Vec<(RunStatus, u64)>,
    pub tasks_by_role_status: Vec<(Role, TaskStatus, u64)>,
    pub task_durations: Vec<(Role, DurationHistogram)>,
    pub gates_by_kind_status: Vec<(GateKind, GateStatus, u64)>,
    /// Dead letters not yet replayed.
    pub dead_letters: u64,
    pub llm: Vec<LlmTotals>,
}

impl Stats {
    /// Add a row of a backend's duration query: `n` tasks of `role` whose
    /// durations fall in bucket `bucket` and add up to `sum_ms`. The rows
    /// come grouped by role (sorted), so a role's histogram is the last one
    /// or a new one.
    pub(crate) fn add_durations(
        &mut self,
        role: Role,
        bucket: i64,
        n: u64,
        sum_ms: i64,
    ) -> Result<()> {
        let index = usize::try_from(bucket)
            .ok()
            .filter(|&i| i <= TASK_DURATION_BUCKETS_MS.len())
            .ok_or_else(|| Error::Decode(format!("duration bucket {bucket} is out of range")))?;
        if self.task_durations.last().is_none_or(|(r, _)| *r != role) {
            let histogram = DurationHistogram {
                buckets: vec![0; TASK_DURATION_BUCKETS_MS.len() + 1],
                count: 0,
                sum_ms: 0,
            };
            self.task_durations.push((role, histogram));
        }
        if let Some((_, histogram)) = self.task_durations.last_mut() {
            histogram.buckets[index] += n;
            histogram.count += n;
            histogram.sum_ms += sum_ms;
        }
        Ok(())
    }
}

/// Aggregates for monitoring.
#[async_trait]
pub trait StatsStore: Send + Sync {
    /// Counts and totals over every run (only non-zero groups are listed).
    async fn stats(&self) -> Result<Stats>;
}

/// Every capability: what the engine is given.
#[async_trait]
pub trait Store:
    RunStore
    + TaskStore
    + EventStore
    + ArtifactStore
    + DeadLetterStore
    + JournalStore
    + TokenStore
    + StatsStore
{
    /// Backend name for logs and `status` (`sqlite`, `postgres`).
    fn backend(&self) -> &'static str;

    /// Close the store's connections once nothing uses it any more; later
    /// calls fail. On SQLite the last connection to a file copies the WAL
    /// back into the database and removes it, so the file alone holds every
    /// commit. A process that exits without closing loses nothing either:
    /// the next open replays the WAL.
    async fn close(&self) {}

    /// [`TaskStore::claim_task`], then what a worker needs to run the
    /// attempt: the run row (its budget and spending now), the run's channel
    /// messages and the latest version of each upstream artifact named in
    /// `upstream` that one of `upstream_tasks` wrote. `None` as for `claim_task`. A backend may read these in
    /// the claim's own round trip; this default reads them after it.
    async fn claim_attempt(&self, claim: &Claim<'_>) -> Result<Option<ClaimedAttempt>> {
        let Some(task) = self
            .claim_task(
                claim.run_id,
                claim.task_id,
                claim.attempt,
                claim.owner,
                claim.lease_until,
                claim.now,
            )
            .await?
        else {
            return Ok(None);
        };
        let run = async {
            if claim.with_state {
                let state = self.load_run(claim.run_id).await?;
                Ok((state.run.clone(), Some(state)))
            } else {
                Ok((self.get_run(claim.run_id).await?, None))
            }
        };
        let (run, inputs) = tokio::join!(
            run,
            self.attempt_inputs(claim.run_id, claim.upstream_tasks, claim.upstream),
        );
        let (run, state) = run?;
        let AttemptInputs { messages, upstream } = inputs?;
        Ok(Some(ClaimedAttempt {
            task,
            run,
            messages,
            upstream,
            state,
        }))
    }

    /// What a worker reads to run an attempt it holds, besides the run and
    /// the task ([`ClaimedAttempt::messages`] and [`ClaimedAttempt::upstream`]):
    /// the run's channel messages, oldest first, and the latest version of
    /// each upstream artifact named in `upstream` that one of
    /// `upstream_tasks` wrote. For an attempt claimed with the step that
    /// dispatched it ([`task_started_event`]); read after that commit.
    async fn attempt_inputs(
        &self,
        run_id: &RunId,
        upstream_tasks: &[String],
        upstream: &[String],
    ) -> Result<AttemptInputs> {
        let query = EventQuery {
            kind: Some(orch_core::EventKind::ChannelMessage),
            ..EventQuery::default()
        };
        let (messages, artifacts) = tokio::join!(
            self.list_events(run_id, query),
            self.latest_artifacts_named(run_id, upstream_tasks, upstream),
        );
        Ok(AttemptInputs {
            messages: messages?,
            upstream: artifacts?,
        })
    }

    /// [`TaskStore::complete_task`] and, in the same transaction where the
    /// backend can, the engine step that follows from the completion, saved
    /// as [`RunStore::save_run`] saves it ([`Durability::Derived`]) if it
    /// still applies then: the run still at `step.expected_version`, each
    /// changed task still at its expected status and attempt. It is saved
    /// even with nothing to change: the version then moves past every
    /// engine's view of the run without this completion, whose saves are
    /// refused. The completion commits either way, the step never without
    /// it. Errors are the completion's ([`Error::LeaseLost`]: nothing
    /// written). This default commits the completion, then tries the save,
    /// then reads the tasks to tell whether the step is current.
    async fn complete_and_save(
        &self,
        fence: &Fence,
        outcome: &TaskOutcome,
        now: Millis,
        step: &Step<'_>,
    ) -> Result<Stepped> {
        self.complete_task(fence, outcome, now).await?;
        let saved = self
            .save_run(
                &fence.run_id,
                step.expected_version,
                step.diff,
                step.state,
                step.events,
                step.dead,
                now,
                Durability::Derived,
            )
            .await;
        let version = match saved {
            Ok(version) => version,
            Err(Error::Conflict(why)) => {
                tracing::debug!(run = %fence.run_id, %why, "step after a completion no longer applies");
                return Ok(Stepped::default());
            }
            Err(e) => {
                tracing::warn!(run = %fence.run_id, error = %e, "step after a completion not saved; the engine will take it");
                return Ok(Stepped::default());
            }
        };
        // Read after the save: a task that ends later sees this completion
        // in its own check (or its step is refused by the new version).
        let current = step.in_flight.is_empty() || {
            let tasks = self.list_tasks(&fence.run_id).await.unwrap_or_default();
            still_in_flight(step.in_flight, &tasks)
        };
        let inputs = match step.inputs_of {
            Some(of) => self
                .attempt_inputs(&fence.run_id, of.upstream_tasks, of.upstream)
                .await
                .ok(),
            None => None,
        };
        Ok(Stepped {
            version: Some(version),
            current,
            inputs,
        })
    }
}

/// Whether each task of `in_flight` (id, attempt) is still QUEUED or
/// RUNNING at that attempt in `tasks` ([`Stepped::current`]).
pub(crate) fn still_in_flight(in_flight: &[(String, u32)], tasks: &[Task]) -> bool {
    in_flight.iter().all(|(id, attempt)| {
        tasks.iter().any(|t| {
            t.id == *id
                && t.attempt == *attempt
                && matches!(t.status, TaskStatus::Queued | TaskStatus::Running)
        })
    })
}

/// An engine step to save with a completion ([`Store::complete_and_save`]):
/// what [`RunStore::save_run`] takes, and the tasks the step saw in flight.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    pub expected_version: i64,
    pub diff: &'a StateDiff,
    /// The run after the step.
    pub state: &'a RunState,
    pub events: &'a [NewEvent],
    pub dead: &'a [NewDeadLetter],
    /// `(task id, attempt)` of the other tasks the step saw QUEUED or
    /// RUNNING: if each still is at that attempt once the step is saved,
    /// none has ended meanwhile and the step is the one a fresh reconcile
    /// would take (the machine treats QUEUED and RUNNING alike).
    pub in_flight: &'a [(String, u32)],
    /// A task the step saves claimed (RUNNING under a worker's lease, see
    /// [`task_started_event`]) whose inputs to read once the step is saved,
    /// in the same transaction where the backend can
    /// ([`Stepped::inputs`]).
    pub inputs_of: Option<InputsOf<'a>>,
}

/// What to read for a task an engine step saves claimed: the upstream
/// artifacts named `upstream` written by `upstream_tasks`, as
/// [`Claim::upstream`] and [`Claim::upstream_tasks`].
#[derive(Debug, Clone, Copy)]
pub struct InputsOf<'a> {
    pub upstream: &'a [String],
    pub upstream_tasks: &'a [String],
    /// Artifacts the caller holds already (those the completing attempt
    /// read): the store need not read their content again. A hint only:
    /// [`Stepped::inputs`] is what it would be without it (the store reads
    /// which versions are the latest and takes the held ones from here).
    pub held: &'a [Artifact],
}

/// The upstream a step reads for the task it hands over: the artifacts the
/// store `read` (the latest versions it did not find in `held`) with those
/// of `held` that are among the task's upstream, the latest version of each
/// (name, path). Exactly what a read without `held` returns: every held
/// artifact exists in the store, and the read left out only held versions.
pub(crate) fn with_held(mut read: Vec<Artifact>, of: &InputsOf<'_>) -> Vec<Artifact> {
    keep_latest(&mut read, of.held, of.upstream, of.upstream_tasks);
    read
}

/// Add to `latest` the artifacts of `candidates` named in `names` and
/// written by a task of `tasks`, keeping one artifact per (name, path): the
/// highest version. How a task's upstream is chosen from versions
/// ([`ArtifactStore::latest_artifacts_named`]), wherever they come from.
pub fn keep_latest<'a>(
    latest: &mut Vec<Artifact>,
    candidates: impl IntoIterator<Item = &'a Artifact>,
    names: &[String],
    tasks: &[String],
) {
    for a in candidates {
        if !names.contains(&a.name) || !tasks.contains(&a.task_id) {
            continue;
        }
        match latest
            .iter_mut()
            .find(|l| l.name == a.name && l.path == a.path)
        {
            Some(l) if l.version < a.version => *l = a.clone(),
            Some(_) => {}
            None => latest.push(a.clone()),
        }
    }
}

/// What a worker reads to run an attempt besides the task and the run
/// ([`Store::attempt_inputs`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttemptInputs {
    /// The run's `channel_message` events, oldest first.
    pub messages: Vec<Event>,
    /// The latest version of each (name, path) of the upstream artifacts.
    pub upstream: Vec<Artifact>,
}

/// What became of the step of [`Store::complete_and_save`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stepped {
    /// The run's new version if the step was saved.
    pub version: Option<i64>,
    /// The step was saved and current: each task of `in_flight` was still
    /// in flight at its attempt after it. The run then needs no other step
    /// for this completion; otherwise the engine must look again.
    pub current: bool,
    /// For [`Step::inputs_of`], once the step is saved: its inputs, read
    /// after the save (in its transaction where the backend can); `None` if
    /// the step was not saved, none were asked for, or they could not be
    /// read (the caller reads them with [`Store::attempt_inputs`]).
    pub inputs: Option<AttemptInputs>,
}

/// A worker's claim of one attempt ([`Store::claim_attempt`]).
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub run_id: &'a RunId,
    pub task_id: &'a str,
    pub attempt: u32,
    pub owner: &'a str,
    pub lease_until: Millis,
    pub now: Millis,
    /// Names of the artifacts the task reads (those its upstream tasks expect).
    pub upstream: &'a [String],
    /// The task's upstream tasks, whose versions of those artifacts it reads
    /// (see [`ArtifactStore::latest_artifacts_named`]).
    pub upstream_tasks: &'a [String],
    /// Also read the whole run ([`ClaimedAttempt::state`]), for a worker
    /// that takes the run's next step with its completion and holds no
    /// recent view of the run. A backend may decline (`state` is then
    /// `None` and the caller reads it when it needs it).
    pub with_state: bool,
    /// The version of the run the caller holds already, if any: the whole
    /// run is not read for [`Claim::with_state`] when the run is still at
    /// this version at the claim (`state` is then `None`: the caller's own
    /// view is current).
    pub known_version: Option<i64>,
}

impl<'a> Claim<'a> {
    /// A claim that reads nothing with it ([`TaskStore::claim_task`]).
    pub fn bare(
        run_id: &'a RunId,
        task_id: &'a str,
        attempt: u32,
        owner: &'a str,
        lease_until: Millis,
        now: Millis,
    ) -> Self {
        Claim {
            run_id,
            task_id,
            attempt,
            owner,
            lease_until,
            now,
            upstream: &[],
            upstream_tasks: &[],
            with_state: false,
            known_version: None,
        }
    }
}

/// A claimed attempt with what its worker reads before running it.
#[derive(Debug, Clone)]
pub struct ClaimedAttempt {
    /// The task, now RUNNING under the claim's lease.
    pub task: Task,
    /// The run row as it is now.
    pub run: Run,
    /// The run's `channel_message` events, oldest first.
    pub messages: Vec<Event>,
    /// The latest version of each (name, path) of the upstream artifacts.
    pub upstream: Vec<Artifact>,
    /// The run with its tasks and gates, read after the claim, if
    /// [`Claim::with_state`] asked for it (and the backend reads it).
    pub state: Option<RunState>,
}

/// The `task_started` event of a claim of `attempt` of `task_id` by
/// `owner`: what [`TaskStore::claim_task`] records, and what an engine step
/// records when it saves a task it dispatches as claimed by the worker that
/// will run it (the step's save then stands for the claim).
pub fn task_started_event(task_id: &str, owner: &str, attempt: u32) -> NewEvent {
    NewEvent::task(
        orch_core::EventKind::TaskStarted,
        task_id,
        format!("started by {owner} (attempt {attempt})"),
    )
    .with_data(serde_json::json!({"owner": owner, "attempt": attempt}))
}

/// Open the store a `DATABASE_URL` names (creating and migrating a SQLite
/// file if needed): `sqlite://PATH`, `sqlite:PATH`, `sqlite::memory:` or a
/// bare path; or `postgres://...` / `postgresql://...` (an existing
/// database, migrated on connect).
pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
    open(url, true, &StoreOptions::default()).await
}

/// Create the database `url` names if it does not exist (`init-db`):
/// PostgreSQL only — a SQLite file is created when it is opened. `true` if
/// it was created.
pub async fn create_database_if_missing(url: &str) -> Result<bool> {
    match scheme(url).as_deref() {
        Some("postgres" | "postgresql") => postgres::create_database_if_missing(url).await,
        _ => Ok(false),
    }
}

/// How a store is opened beyond its URL.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Connections of a PostgreSQL store's pool (`DATABASE_POOL_SIZE`;
    /// `None`: [`postgres::default_pool_size`]). SQLite has one write
    /// connection whatever this says.
    pub pool_size: Option<u32>,
}

/// [`connect`] with [`StoreOptions`].
pub async fn connect_with(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>> {
    open(url, true, options).await
}

/// Like [`connect`], but a missing SQLite file is an [`Error::Connect`]
/// instead of being created (for read-only commands). PostgreSQL databases
/// are never created by the store, so this is [`connect`] for them.
pub async fn connect_existing(url: &str) -> Result<Arc<dyn Store>> {
    open(url, false, &StoreOptions::default()).await
}

/// [`connect_existing`] with [`StoreOptions`].
pub async fn connect_existing_with(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>> {
    open(url, false, options).await
}

/// The lowercased scheme of a database URL (`postgres`, `sqlite`); `None`
/// for a bare path.
fn scheme(url: &str) -> Option<String> {
    url.trim()
        .split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase())
}

async fn open(url: &str, create: bool, options: &StoreOptions) -> Result<Arc<dyn Store>> {
    match scheme(url).as_deref() {
        Some("postgres" | "postgresql") => Ok(Arc::new(
            PostgresStore::connect_with(url, options.pool_size).await?,
        )),
        None | Some("sqlite") => {
            let store = if create {
                SqliteStore::open(url).await?
            } else {
                SqliteStore::open_existing(url).await?
            };
            Ok(Arc::new(store))
        }
        Some(_) => Err(Error::UnsupportedUrl(url.to_string())),
    }
}
