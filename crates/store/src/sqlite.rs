//! The SQLite store: the embedded default backend (one file, WAL mode).
//!
//! Durability: the database runs in WAL mode with `synchronous=NORMAL`. A
//! commit is durable against a crash of the process (the WAL is written
//! before the commit returns); on power loss or an OS crash the last few
//! commits may be lost, but the database stays consistent. That trade buys
//! the write throughput the engine needs (no fsync per commit).
//!
//! One statement per write. sqlx runs each SQLite connection on a thread of
//! its own, and every statement's result crosses back to the async side: a
//! thread wake-up that costs more (tens of microseconds on a small VM) than
//! SQLite takes to execute a statement. So each write operation is *one*
//! statement: an `INSERT` into a procedure, a TEMP view whose `INSTEAD OF`
//! trigger performs the whole change (`queries/sqlite/proc_*.sql`, installed
//! on the write connection when it opens). A single statement is atomic and,
//! run alone, its own transaction; as a write statement it takes the write
//! lock before reading anything (the `BEGIN IMMEDIATE` behaviour, so no lock
//! upgrade can fail with `SQLITE_BUSY` in WAL mode). Its parameters travel
//! as one JSON document (artifact contents as a second one) read with `->>`
//! and `jsonb_each`, so batches of events, tasks, gates and artifacts cost
//! nothing extra. The documents are bound in SQLite's binary JSONB form
//! (encoded by the crate's `jsonb` module), which its JSON functions read
//! without parsing: the writer thread, the one all writes wait on, neither
//! parses them nor unescapes their strings. A condition that must stop the
//! write (version conflict, lease lost, task not claimable) is a
//! `RAISE(ABORT, 'orch-assert:...')`: the statement's changes are undone,
//! and the store maps the message to its error or result.
//!
//! Writers are queued on one dedicated connection (see [`SqliteStore`]);
//! readers use connections of their own. Other processes sharing the file
//! are waited for up to [`BUSY_TIMEOUT`].
//!
//! Group commit. A write that finds the connection free runs at once, its
//! own transaction. Writes that arrive while it is busy queue up, and the
//! writer thread runs all that have queued (up to 64, `MAX_BATCH`) in one
//! transaction, answering each only once that transaction has committed:
//! one commit (its WAL frames, its locks) for many writes, and pages that
//! several of them change (the tail of the event log, the task indexes, the
//! database header) written once instead of once each. A refused statement
//! (`RAISE(ABORT)`) undoes only itself; any other failure rolls the batch
//! back and runs its writes again one at a time, so one write's error is
//! never another's. Undoing one statement inside a transaction takes a
//! statement journal, which the write connection keeps in memory
//! (`temp_store=memory`) rather than in a temporary file.
//!
//! Checkpoints run beside the writer, not in its commits: a connection of
//! its own copies the WAL back into the database at most every
//! `CHECKPOINT_EVERY` after writes (see `WriterThread::checkpoint`); the
//! write connection's automatic checkpoint is left only as a bound
//! (`wal_autocheckpoint=10000` pages) should that fall behind. The last
//! connection to close checkpoints what is left and removes the WAL.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use orch_core::{
    Artifact, DeadLetter, Event, Gate, Millis, NewEvent, Run, RunId, RunState, RunStatus,
    StateDiff, Task,
};
use serde::Serialize;

use crate::doc::{
    ClaimDoc, Doc, Encoding, Jsonb, NoFields, complete_docs, complete_step_docs, create_doc,
    reads_doc, save_doc, started_event, to_json, token_param,
};
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Connection, Sqlite};
use tokio::sync::{Mutex, OwnedMutexGuard};

mod batch;

use batch::{Answer, Job, Write, WriteQueue};

use crate::rows::{
    artifact_from_row, col, dead_letter_from_row, event_from_row, gate_from_row, llm_call_from_row,
    opt_json_col, parse_col, run_from_row, task_from_row, task_ref_from_row, token_from_row,
    u32_col, u64_col,
};
use crate::{
    ApiToken, ArtifactStore, AttemptInputs, Claim, ClaimedAttempt, DeadLetterStore, Durability,
    Error, EventQuery, EventStore, Fence, JournalStore, LlmCallRecord, LlmTotals, NewDeadLetter,
    Result, RunFilter, RunStore, Stats, StatsStore, Step, Stepped, Store, TaskOutcome, TaskRef,
    TaskStore, TokenStore,
};

/// How long a connection waits for another process's lock before failing with
/// [`Error::Locked`].
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Read connections of a file database (besides the one write connection).
const MAX_READERS: usize = 7;

/// The most writes [`WriterThread`] commits in one transaction.
const MAX_BATCH: usize = 64;

/// How long after a write the checkpointer copies the WAL back into the
/// database file (about what SQLite's default automatic checkpoint, every
/// 1,000 pages, would let through at the rate this store writes).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// The embedded migrations of the SQLite schema.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The queries, one file each (`queries/sqlite`).
mod sql {
    /// The concatenation of these files of `queries/sqlite`.
    macro_rules! files {
        ($($file:literal),+ $(,)?) => {
            concat!($(include_str!(concat!("../queries/sqlite/", $file))),+)
        };
    }

    // Reads.
    pub const GET_RUN: &str = files!("get_run.sql");
    pub const LIST_RUNS: &str = files!("list_runs.sql");
    pub const ACTIVE_RUNS: &str = files!("active_runs.sql");
    pub const RUN_EXISTS: &str = files!("run_exists.sql");
    pub const LIST_TASKS: &str = files!("list_tasks.sql");
    pub const EXPIRED_LEASES: &str = files!("expired_leases.sql");
    pub const RUNNING_TASKS: &str = files!("running_tasks.sql");
    pub const STALE_QUEUED: &str = files!("stale_queued.sql");
    pub const LIST_EVENTS: &str = files!("list_events.sql");
    pub const GET_ARTIFACT_VERSIONS: &str = files!("get_artifact_versions.sql");
    pub const KEEP_TEXT: &str = files!("keep_text.sql");
    pub const GET_TEXTS: &str = files!("get_texts.sql");
    /// `LIST_EVENTS` of one kind: a form the planner can serve from the kind index.
    pub const LIST_EVENTS_OF_KIND: &str = files!("list_events_of_kind.sql");
    pub const LIST_ARTIFACTS: &str = files!("list_artifacts.sql");
    pub const GET_ARTIFACT: &str = files!("get_artifact.sql");
    pub const LIST_LATEST_ARTIFACTS_NAMED: &str = files!("list_latest_artifacts_named.sql");
    pub const LIST_DEAD_LETTERS: &str = files!("list_dead_letters.sql");
    /// The run, its tasks and its gates (?1: the run id) in one round trip.
    pub const LOAD_RUN: &str = files!("get_run.sql", "list_tasks.sql", "list_gates.sql");
    /// The run, what workers change of its tasks, and its gates (?1: the run
    /// id) in one round trip.
    pub const LOAD_RUN_PROGRESS: &str =
        files!("get_run.sql", "list_task_progress.sql", "list_gates.sql");

    // Writes of single rows.
    pub const HEARTBEAT: &str = files!("heartbeat.sql");
    pub const MARK_REPLAYED: &str = files!("mark_replayed.sql");
    pub const RECORD_LLM_CALL: &str = files!("record_llm_call.sql");
    pub const FIND_LLM_CALL: &str = files!("find_llm_call.sql");
    pub const LIST_LLM_CALLS: &str = files!("list_llm_calls.sql");

    // API tokens: reads, and single-row writes.
    pub const INSERT_TOKEN: &str = files!("insert_token.sql");
    pub const GET_TOKEN: &str = files!("get_token.sql");
    pub const LIST_TOKENS: &str = files!("list_tokens.sql");
    pub const REVOKE_TOKEN: &str = files!("revoke_token.sql");

    /// Every aggregate of `stats` in one round trip (`part` tells rows apart).
    pub const STATS: &str = files!(
        "stats_runs.sql",
        "stats_tasks.sql",
        "stats_durations.sql",
        "stats_gates.sql",
        "stats_dead_letters.sql",
        "stats_llm.sql",
    );

    /// The procedures, installed on the write connection.
    pub const PROCEDURES: &str = files!(
        "proc_add_events.sql",
        "proc_add_tasks.sql",
        "proc_put_gates.sql",
        "proc_create_run.sql",
        "proc_save_run.sql",
        "proc_append_events.sql",
        "proc_claim_task.sql",
        "proc_complete_task.sql",
        "proc_complete_step.sql",
    );

    // Procedure calls (?1: the JSON parameter document).
    pub const CREATE_RUN: &str = files!("call_create_run.sql");
    pub const SAVE_RUN: &str = files!("call_save_run.sql");
    pub const APPEND_EVENTS: &str = files!("call_append_events.sql");
    pub const CLAIM_TASK: &str = files!("call_claim_task.sql");
    /// The claim, then what the worker reads (`claim_attempt`).
    pub const CLAIM_ATTEMPT: &str =
        files!("call_claim_task.sql", "claim_run.sql", "attempt_inputs.sql");
    pub const COMPLETE_TASK: &str = files!("call_complete_task.sql");
    /// A completion and the engine step that follows, then the new version.
    pub const COMPLETE_STEP: &str = files!("call_complete_step.sql");
    pub const COMPLETE_STEP_READING: &str =
        files!("call_complete_step_reading.sql", "attempt_inputs.sql");
}

type Query = sqlx::query::Query<'static, Sqlite, SqliteArguments>;

/// The SQLite implementation of every store capability.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conns: Conns,
    /// What was opened, for messages (`sqlite::memory:` or the file path).
    location: String,
    /// Prompt texts kept already ([`EventStore::keep_text`]).
    kept: crate::KeptTexts,
}

/// A connection behind a fair lock; `None` once the store is closed (or,
/// for a reader, before its first use).
type Slot = Arc<Mutex<Option<SqliteConnection>>>;

/// A connection taken for one operation.
type Taken = OwnedMutexGuard<Option<SqliteConnection>>;

/// The connection inside a taken slot.
fn conn(taken: &mut Taken) -> Result<&mut SqliteConnection> {
    taken.as_mut().ok_or_else(closed)
}

/// The connections of a store. Neither is a sqlx pool: a pool pings every
/// connection it takes back, one more round trip per operation.
#[derive(Debug, Clone)]
struct Conns {
    /// The one write connection, with the procedures installed. SQLite admits
    /// one writer at a time; queueing this process's writers on this lock
    /// (fairly, without sleeping) is much faster than letting several
    /// connections contend through SQLite's busy handler, which sleeps in
    /// millisecond steps.
    writer: Slot,
    /// Read connections: WAL readers neither block nor wait for the writer.
    /// `None` for an in-memory database, whose one connection (the writer)
    /// holds the whole database.
    readers: Option<Arc<Readers>>,
    /// The thread that drives the write connection's calls.
    thread: Arc<WriterThread>,
}

/// A thread of its own, with a one-thread tokio runtime, on which the calls
/// to the write connection are driven ([`SqliteStore::on_writer`]). A call
/// hands its statement to sqlx's connection thread and waits for the answer;
/// driven on the caller's runtime, the next queued call could start only
/// when that runtime got round to polling the finished one and waking the
/// next — while it rendered prompts and parsed outputs, the connection sat
/// idle. Here the next call starts as soon as the last one is answered.
#[derive(Debug)]
struct WriterThread {
    handle: tokio::runtime::Handle,
    /// Writes waiting for the connection, committed in batches.
    queue: Arc<WriteQueue>,
    /// Told of every write; the checkpointer waits for it.
    wrote: Arc<tokio::sync::Notify>,
    /// The checkpointer's connection (file databases), closed before the
    /// writer so that the writer's close is the last one. Opened with the
    /// writer, from the caller's runtime: a connection opened from this
    /// thread would run on a thread of its scheduling policy (see
    /// [`yield_to_the_connection`]), and the checkpoint's second pass holds
    /// the write connection, so it must not wait for a core.
    checkpointer: Slot,
    /// Dropped with the store: ends the thread.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl WriterThread {
    fn start() -> Result<WriterThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Database(format!("cannot start the SQLite writer thread: {e}")))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("orch-sqlite-writer".into())
            .spawn(move || {
                yield_to_the_connection();
                let _ = runtime.block_on(stopped);
            })
            .map_err(|e| Error::Database(format!("cannot start the SQLite writer thread: {e}")))?;
        Ok(WriterThread {
            handle,
            queue: Arc::new(WriteQueue::default()),
            wrote: Arc::new(tokio::sync::Notify::new()),
            checkpointer: Arc::new(Mutex::new(None)),
            _stop: stop,
        })
    }

    /// Start committing the queued writes on `writer`, in batches (see the
    /// module's "Group commit"): take the connection, take every write
    /// queued by then, run them in one transaction, answer them; again until
    /// none is left. The connection is let go between batches so that the
    /// checkpointer and writers that find it free get their turn.
    fn drive(&self, writer: Slot) {
        let queue = self.queue.clone();
        self.handle.spawn(async move {
            loop {
                queue.ready.notified().await;
                loop {
                    let mut taken = writer.clone().lock_owned().await;
                    let batch = queue.take(MAX_BATCH);
                    if batch.is_empty() {
                        break;
                    }
                    // Closed: every write, now and later, is told so.
                    let Some(c) = taken.as_mut() else {
                        for job in batch {
                            let _ = job.reply.send(Err(closed()));
                        }
                        continue;
                    };
                    queue.run(c, batch).await;
                }
            }
        });
    }

    /// Start checkpointing the file `options` opens, on this thread: after
    /// each write (at most every [`CHECKPOINT_EVERY`]), on a connection of
    /// its own, in two passes. The first copies the WAL back beside the
    /// writer; under a steady stream of writes it never finishes (each
    /// commit appends more), and SQLite starts the WAL over only after a
    /// checkpoint that did. So the second pass holds `writer` (this
    /// process's write connection, idle meanwhile) and copies what was
    /// appended since: a few pages, after which the next write starts the
    /// WAL from its beginning. A failure is logged and tried again after
    /// the next write.
    fn checkpoint(&self, writer: Slot) {
        let (wrote, slot) = (self.wrote.clone(), self.checkpointer.clone());
        self.handle.spawn(async move {
            loop {
                wrote.notified().await;
                tokio::time::sleep(CHECKPOINT_EVERY).await;
                match checkpoint_once(&slot, &writer).await {
                    Ok(true) => {}
                    Ok(false) => return, // the store is closed
                    Err(e) => {
                        tracing::warn!(error = %e, "checkpoint failed; will try again after the next write");
                    }
                }
            }
        });
    }
}

/// Let the write connection's thread run on when it wakes this one.
///
/// The writer thread is woken for every statement the connection's thread
/// finishes (sqlx answers each statement and each row on its own), tens of
/// thousands of times a second under load, and each time does a few
/// microseconds of work. On Linux a thread woken that way preempts the one
/// that woke it when both cores are busy: the connection's thread, the one
/// every write waits on, was switched out after each wake-up it made
/// (`perf sched`: 47,000 switches in one S3, 40 µs of work between them)
/// while this thread waited 630 ms in all for a core. Under `SCHED_BATCH`
/// (same priority; only wake-up preemption is given up) this thread waits
/// for a free core or the end of a time slice instead, and picks up several
/// answers at once. Threads started from this one would inherit the policy,
/// so the store opens every connection (each runs on a thread of its own)
/// from the caller's runtime. A system that refuses the policy (a
/// restricted container) keeps the default, which is only slower.
fn yield_to_the_connection() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::unix::{
            NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
            thread_native_id,
        };
        let batch = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);
        // `Os(0)`: the default niceness (the policy is the point).
        let nice = thread_priority::ThreadPriority::Os(Default::default());
        if let Err(e) = set_thread_priority_and_policy(thread_native_id(), nice, batch) {
            tracing::debug!(error = ?e, "the SQLite writer thread keeps the default scheduling");
        }
    }
}

/// The checkpointer's two passes ([`WriterThread::checkpoint`]) on the
/// connection in `slot`; `Ok(false)` if the store is closed.
async fn checkpoint_once(slot: &Slot, writer: &Slot) -> std::result::Result<bool, sqlx::Error> {
    const PASSIVE: &str = "PRAGMA wal_checkpoint(PASSIVE)";
    let mut taken = slot.clone().lock_owned().await;
    let Some(c) = taken.as_mut() else {
        return Ok(false);
    };
    sqlx::query(PASSIVE).fetch_all(&mut *c).await?;
    let writer = writer.lock().await;
    if writer.is_none() {
        return Ok(false);
    }
    sqlx::query(PASSIVE).fetch_all(&mut *c).await?;
    drop(writer);
    Ok(true)
}

/// The error of a write that finds the store closed.
fn closed() -> Error {
    Error::Database("the store is closed".into())
}

impl Conns {
    async fn writer(&self) -> Taken {
        self.thread.wrote.notify_one();
        self.writer.clone().lock_owned().await
    }

    async fn reader(&self) -> Result<Taken> {
        match &self.readers {
            Some(readers) => readers.take().await,
            None => Ok(self.writer().await),
        }
    }
}

/// Read connections of a file database, each opened on first use.
#[derive(Debug)]
struct Readers {
    options: SqliteConnectOptions,
    slots: Vec<Slot>,
    /// Where the next search for a free connection starts (round robin).
    next: AtomicUsize,
}

impl Readers {
    fn new(options: SqliteConnectOptions, count: usize) -> Readers {
        Readers {
            options,
            slots: (0..count).map(|_| Arc::new(Mutex::new(None))).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// A free connection, or (all busy) the next one in turn once free.
    async fn take(&self) -> Result<Taken> {
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let free = (0..n).find_map(|i| self.slots[(start + i) % n].clone().try_lock_owned().ok());
        let mut taken = match free {
            Some(taken) => taken,
            None => self.slots[start].clone().lock_owned().await,
        };
        if taken.is_none() {
            let opened = SqliteConnection::connect_with(&self.options)
                .await
                .map_err(db_err)?;
            *taken = Some(opened);
        }
        Ok(taken)
    }

    async fn close(&self) {
        for slot in &self.slots {
            if let Some(c) = slot.lock().await.take()
                && let Err(e) = c.close().await
            {
                tracing::warn!(error = %e, "closing a read connection");
            }
        }
    }
}

/// Where a URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Memory,
    File(PathBuf),
}

/// Parse `sqlite://path`, `sqlite:path`, `sqlite::memory:` or a bare path.
fn parse_target(url: &str) -> Result<Target> {
    let s = url.trim();
    if matches!(
        s,
        "sqlite::memory:" | "sqlite://:memory:" | ":memory:" | "sqlite:memory:"
    ) {
        return Ok(Target::Memory);
    }
    let path = if let Some(rest) = s.strip_prefix("sqlite://") {
        rest
    } else if let Some(rest) = s.strip_prefix("sqlite:") {
        rest
    } else if s.contains("://") {
        return Err(Error::UnsupportedUrl(url.to_string()));
    } else {
        s
    };
    // Connection parameters (`?mode=rwc`) are ours to set: drop them.
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    if path.is_empty() {
        return Err(Error::Connect {
            url: url.to_string(),
            message: "no file path given; use sqlite://PATH or sqlite::memory:".into(),
        });
    }
    Ok(Target::File(PathBuf::from(path)))
}

impl SqliteStore {
    /// Open (creating the file if missing) and migrate the database at
    /// `url_or_path`: `sqlite://PATH`, `sqlite:PATH`, `sqlite::memory:` or a
    /// bare path.
    pub async fn open(url_or_path: &str) -> Result<SqliteStore> {
        Self::open_with(url_or_path, true).await
    }

    /// Open and migrate an existing database; a missing file is an
    /// [`Error::Connect`] that says to run `orchestrator init-db` (the file is
    /// not created). For read commands.
    pub async fn open_existing(url_or_path: &str) -> Result<SqliteStore> {
        Self::open_with(url_or_path, false).await
    }

    async fn open_with(url: &str, create: bool) -> Result<SqliteStore> {
        // Processes that open the same file at once (`serve`, workers and
        // the CLI starting together) take turns from connecting to having
        // migrated it: a connection switching a fresh file to WAL, or a
        // migration, can make another opener's connect fail with "locked"
        // before its busy timeout applies.
        let mut turn = None;
        let store = match parse_target(url)? {
            Target::Memory => {
                let options = SqliteConnectOptions::from_str("sqlite::memory:")
                    .map_err(|e| connect_err(url, e))?
                    .foreign_keys(true)
                    .busy_timeout(BUSY_TIMEOUT);
                // One connection, the writer: it *is* the database.
                let writer = SqliteConnection::connect_with(&options)
                    .await
                    .map_err(|e| connect_err(url, e))?;
                let writer = Arc::new(Mutex::new(Some(writer)));
                let thread = WriterThread::start()?;
                thread.drive(writer.clone());
                SqliteStore {
                    conns: Conns {
                        writer,
                        readers: None,
                        thread: Arc::new(thread),
                    },
                    location: "sqlite::memory:".into(),
                    kept: Default::default(),
                }
            }
            Target::File(path) => {
                if !create && !path.exists() {
                    return Err(Error::Connect {
                        url: url.to_string(),
                        message: format!(
                            "no database file at {}; run `orchestrator init-db` to create it (or check DATABASE_URL)",
                            path.display()
                        ),
                    });
                }
                turn = migration_lock(&path.display().to_string()).await?;
                let options = file_options(&path)
                    .create_if_missing(create)
                    .journal_mode(SqliteJournalMode::Wal)
                    // The checkpointer does it, beside this connection
                    // (this only bounds the WAL if it cannot).
                    .pragma("wal_autocheckpoint", "10000")
                    // Statement journals of batched writes: see "Group commit".
                    .pragma("temp_store", "memory");
                let writer = SqliteConnection::connect_with(&options)
                    .await
                    .map_err(|e| connect_err(url, e))?;
                // Readers find the file in WAL mode already.
                let readers = Readers::new(file_options(&path), MAX_READERS);
                let checkpointer = SqliteConnection::connect_with(&file_options(&path))
                    .await
                    .map_err(|e| connect_err(url, e))?;
                let thread = WriterThread::start()?;
                *thread.checkpointer.lock().await = Some(checkpointer);
                let writer = Arc::new(Mutex::new(Some(writer)));
                thread.drive(writer.clone());
                thread.checkpoint(writer.clone());
                SqliteStore {
                    conns: Conns {
                        writer,
                        readers: Some(Arc::new(readers)),
                        thread: Arc::new(thread),
                    },
                    location: path.display().to_string(),
                    kept: Default::default(),
                }
            }
        };
        store.migrate().await?;
        drop(turn);
        let mut writer = store.conns.writer().await;
        sqlx::raw_sql(sql::PROCEDURES)
            .execute(conn(&mut writer)?)
            .await
            .map_err(|e| Error::Migrate(format!("installing the store procedures: {e}")))?;
        drop(writer);
        tracing::debug!(database = %store.location, "sqlite store open");
        Ok(store)
    }

    /// Apply the embedded migrations (`migrations/sqlite`) that are missing.
    pub async fn migrate(&self) -> Result<()> {
        let mut writer = self.conns.writer().await;
        let conn = conn(&mut writer)?;
        let first = match MIGRATOR.run(&mut *conn).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        // Another process may be migrating the same fresh file at the same
        // moment (one transaction per migration): what it applied is recorded
        // as it goes, so try again a few times while it finishes.
        for pause_ms in [10, 25, 50, 100, 200, 400] {
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            if MIGRATOR.run(&mut *conn).await.is_ok() {
                return Ok(());
            }
        }
        Err(migrate_err(first))
    }

    /// The journal mode in effect (`wal` for files, `memory` in memory).
    pub async fn journal_mode(&self) -> Result<String> {
        let mut reader = self.conns.reader().await?;
        sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(conn(&mut reader)?)
            .await
            .map_err(db_err)
    }

    /// The database file path, or `sqlite::memory:`.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Close every connection (the last one checkpoints the WAL); later
    /// calls fail.
    pub async fn close(&self) {
        if let Some(readers) = &self.conns.readers {
            readers.close().await;
        }
        // Held until the writer is closed too: the writer's close is the
        // last one, which checkpoints what is left and removes the WAL.
        let mut checkpointer = self.conns.thread.checkpointer.lock().await;
        if let Some(c) = checkpointer.take()
            && let Err(e) = c.close().await
        {
            tracing::warn!(error = %e, "closing the checkpoint connection");
        }
        let writer = self.conns.writer.lock().await.take();
        if let Some(writer) = writer
            && let Err(e) = writer.close().await
        {
            tracing::warn!(error = %e, database = %self.location, "closing the database");
        }
        drop(checkpointer);
    }

    /// Call a procedure with the parameter document `doc`.
    async fn call<T: Serialize>(
        &self,
        sql: &'static str,
        doc: &Doc<'_, T>,
        map: impl FnOnce(sqlx::Error) -> Error,
    ) -> Result<Call> {
        self.call_with(Write::new(sql).blob(Jsonb::encode(doc)?), map)
            .await
    }

    /// Run a procedure call (and the `SELECT` of its result) on the write
    /// connection, in one round trip. `map` turns database errors into ours.
    async fn call_with(
        &self,
        write: Write,
        map: impl FnOnce(sqlx::Error) -> Error,
    ) -> Result<Call> {
        match self.on_writer(write).await? {
            Ok(rows) => Ok(Call::Done(rows)),
            Err(e) => match Refusal::of(&e) {
                Some(refusal) => Ok(Call::Refused(refusal)),
                None => Err(map(e)),
            },
        }
    }

    /// Run a single-statement read query, returning all rows.
    async fn read_all(&self, query: Query) -> Result<Vec<SqliteRow>> {
        let mut reader = self.conns.reader().await?;
        query.fetch_all(conn(&mut reader)?).await.map_err(db_err)
    }

    /// Run a single-statement read query, returning its first row if any.
    async fn read_one(&self, query: Query) -> Result<Option<SqliteRow>> {
        let mut reader = self.conns.reader().await?;
        query
            .fetch_optional(conn(&mut reader)?)
            .await
            .map_err(db_err)
    }

    /// Run a single-statement write on the write connection.
    async fn write_one(&self, write: Write) -> Result<Vec<SqliteRow>> {
        self.on_writer(write).await?.map_err(db_err)
    }

    /// Run the statement `make` builds on the write connection: at once on
    /// the caller's task if the connection is free and no write is queued
    /// (no hand-off, and nothing waits on this caller's runtime), else
    /// queued for the writer thread, which commits it in a batch with the
    /// others queued ([`WriterThread::drive`]). The outer error is the
    /// store's (closed), the inner the statement's.
    async fn on_writer(&self, write: Write) -> Result<Answer> {
        let thread = &self.conns.thread;
        thread.wrote.notify_one();
        if thread.queue.is_empty()
            && let Ok(mut writer) = self.conns.writer.clone().try_lock_owned()
        {
            let conn = conn(&mut writer)?;
            return Ok(write.query().fetch_all(conn).await);
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        thread.queue.push(Job { write, reply });
        answer
            .await
            .map_err(|_| Error::Database("the SQLite writer thread stopped".into()))?
    }

    /// Run a claim procedure call (`sql`: [`sql::CLAIM_TASK`] or
    /// [`sql::CLAIM_ATTEMPT`], which also reads the claim's `upstream`
    /// artifacts); `None` if the task was not QUEUED at that attempt.
    async fn claim(&self, sql: &'static str, claim: &Claim<'_>) -> Result<Option<Vec<SqliteRow>>> {
        let started = [started_event(claim)];
        let op = ClaimDoc {
            task_id: claim.task_id,
            attempt: claim.attempt,
            owner: claim.owner,
            lease_until: claim.lease_until,
            upstream: claim.upstream,
            upstream_tasks: claim.upstream_tasks,
        };
        let doc = Doc::new(claim.run_id, claim.now, &started, op)?;
        match self.call(sql, &doc, db_err).await? {
            Call::Done(rows) => Ok(Some(rows)),
            Call::Refused(Refusal::Claimed) => Ok(None),
            Call::Refused(other) => Err(other.unexpected()),
        }
    }

    /// `Ok(())` if the run exists, else [`Error::RunNotFound`].
    async fn require_run(&self, id: &RunId) -> Result<()> {
        let row = self
            .read_one(sqlx::query(sql::RUN_EXISTS).bind(id.as_str()))
            .await?;
        match row {
            Some(_) => Ok(()),
            None => Err(Error::RunNotFound(id.to_string())),
        }
    }
}

/// Add a row of attempt_inputs.sql (`part` 'message' or 'artifact') to
/// `inputs`; `false` for a row of another part.
fn add_input(inputs: &mut AttemptInputs, part: &str, row: &SqliteRow) -> Result<bool> {
    match part {
        "message" => inputs.messages.push(event_from_row(row)?),
        "artifact" => inputs.upstream.push(artifact_from_row(row)?),
        _ => return Ok(false),
    }
    Ok(true)
}

/// An exclusive lock held while this process opens and migrates the database at
/// `location`, on a sidecar file `<database>.migrate-lock` (flock). Not on
/// the database file itself: closing any extra descriptor of a SQLite file
/// would release SQLite's own POSIX locks held by this process. In-memory
/// databases need none.
async fn migration_lock(location: &str) -> Result<Option<std::fs::File>> {
    if location.starts_with("sqlite::memory:") {
        return Ok(None);
    }
    let path = format!("{location}.migrate-lock");
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
    {
        Ok(file) => file,
        // No folder: no database anyone could share; connecting says so.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Migrate(format!(
                "cannot open the migration lock {path}: {e}"
            )));
        }
    };
    tokio::task::spawn_blocking(move || file.lock().map(|()| file))
        .await
        .map_err(|e| Error::Migrate(format!("waiting for the migration lock: {e}")))?
        .map(Some)
        .map_err(|e| Error::Migrate(format!("cannot take the migration lock {path}: {e}")))
}

/// Options of every connection to a database file.
fn file_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        // Durable against process crashes; see the module documentation.
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(BUSY_TIMEOUT)
}

// ---------------------------------------------------------------------------
// Procedure calls

/// How a procedure call ended.
#[derive(Debug)]
enum Call {
    /// Committed; the rows of the call's `SELECT`, if it has one.
    Done(Vec<SqliteRow>),
    /// The procedure refused: rolled back, nothing written.
    Refused(Refusal),
}

/// Why a procedure refused (`RAISE(ROLLBACK, 'orch-assert:...')`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No such run.
    RunExists,
    /// The run is no longer at the expected version.
    RunVersion,
    /// A changed task is no longer at its expected status and attempt.
    TasksUnchanged,
    /// The task is not QUEUED at that attempt.
    Claimed,
    /// The fence does not hold.
    LeaseHeld,
}

impl Refusal {
    /// The refusal an error reports, if it is one.
    fn of(e: &sqlx::Error) -> Option<Refusal> {
        let sqlx::Error::Database(d) = e else {
            return None;
        };
        match d.message().strip_prefix("orch-assert:")? {
            "run_exists" => Some(Refusal::RunExists),
            "run_version" => Some(Refusal::RunVersion),
            "tasks_unchanged" => Some(Refusal::TasksUnchanged),
            "claimed" => Some(Refusal::Claimed),
            "lease_held" => Some(Refusal::LeaseHeld),
            _ => None,
        }
    }

    /// A refusal the operation does not expect: a bug in a procedure.
    fn unexpected(self) -> Error {
        Error::Database(format!(
            "unexpected refusal {self:?} from a store procedure"
        ))
    }
}

impl Call {
    /// The rows of a call that may only be refused because the run is unknown.
    fn rows(self, run_id: &RunId) -> Result<Vec<SqliteRow>> {
        match self {
            Call::Done(rows) => Ok(rows),
            Call::Refused(Refusal::RunExists) => Err(Error::RunNotFound(run_id.to_string())),
            Call::Refused(other) => Err(other.unexpected()),
        }
    }

    /// The rows of a completion's call; the fence's refusal as
    /// [`Error::LeaseLost`].
    fn completed(self, fence: &Fence) -> Result<Vec<SqliteRow>> {
        match self {
            Call::Done(rows) => Ok(rows),
            Call::Refused(Refusal::LeaseHeld) => Err(Error::LeaseLost {
                run: fence.run_id.to_string(),
                task: fence.task_id.clone(),
                attempt: fence.attempt,
            }),
            Call::Refused(other) => Err(other.unexpected()),
        }
    }
}

// ---------------------------------------------------------------------------
// Errors

/// Primary SQLite result codes we tell apart.
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_CORRUPT: i32 = 11;
const SQLITE_CANTOPEN: i32 = 14;
const SQLITE_NOTADB: i32 = 26;

/// The primary result code of a database error.
fn sqlite_code(e: &sqlx::Error) -> Option<i32> {
    let sqlx::Error::Database(d) = e else {
        return None;
    };
    d.code()
        .and_then(|c| c.parse::<i32>().ok())
        .map(|c| c & 0xff)
}

/// Map a sqlx error met while using an open database.
fn db_err(e: sqlx::Error) -> Error {
    match sqlite_code(&e) {
        Some(SQLITE_BUSY | SQLITE_LOCKED) => return Error::Locked(message(&e)),
        Some(SQLITE_CORRUPT | SQLITE_NOTADB) => return Error::Corrupt(message(&e)),
        _ => {}
    }
    match e {
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => Error::Decode(e.to_string()),
        sqlx::Error::PoolTimedOut => {
            Error::Database("timed out waiting for a database connection".into())
        }
        e => Error::Database(message(&e)),
    }
}

/// Map a sqlx error met while opening a database.
fn connect_err(url: &str, e: sqlx::Error) -> Error {
    match sqlite_code(&e) {
        Some(SQLITE_CANTOPEN) => Error::Connect {
            url: url.to_string(),
            message: format!(
                "{}; check that the directory exists and is writable",
                message(&e)
            ),
        },
        Some(_) => db_err(e),
        None => Error::Connect {
            url: url.to_string(),
            message: e.to_string(),
        },
    }
}

fn migrate_err(e: sqlx::migrate::MigrateError) -> Error {
    use sqlx::migrate::MigrateError;
    match e {
        MigrateError::Execute(inner) | MigrateError::ExecuteMigration(inner, _)
            if matches!(
                sqlite_code(&inner),
                Some(SQLITE_BUSY | SQLITE_LOCKED | SQLITE_CORRUPT | SQLITE_NOTADB)
            ) =>
        {
            db_err(inner)
        }
        e => Error::Migrate(e.to_string()),
    }
}

/// The database's own message (without sqlx's prefixes) where there is one.
fn message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_string(),
        e => e.to_string(),
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

// ---------------------------------------------------------------------------
// Encoding and decoding

/// `0` means "no limit": SQLite's `LIMIT -1`.
fn limit(n: u32) -> i64 {
    if n == 0 { -1 } else { i64::from(n) }
}

/// Fill `stats` from the rows of [`sql::STATS`].
fn stats_from_rows(rows: &[SqliteRow]) -> Result<Stats> {
    let mut stats = Stats::default();
    for row in rows {
        let part: String = col(row, "part")?;
        match part.as_str() {
            "runs" => stats
                .runs_by_status
                .push((parse_col(row, "status")?, u64_col(row, "n")?)),
            "tasks" => stats.tasks_by_role_status.push((
                parse_col(row, "role")?,
                parse_col(row, "status")?,
                u64_col(row, "n")?,
            )),
            "durations" => stats.add_durations(
                parse_col(row, "role")?,
                col(row, "bucket")?,
                u64_col(row, "n")?,
                col(row, "sum_ms")?,
            )?,
            "gates" => stats.gates_by_kind_status.push((
                parse_col(row, "kind")?,
                parse_col(row, "status")?,
                u64_col(row, "n")?,
            )),
            "dead_letters" => stats.dead_letters = u64_col(row, "n")?,
            "llm" => stats.llm.push(LlmTotals {
                provider: col(row, "provider")?,
                model: col(row, "model")?,
                calls: u64_col(row, "n")?,
                input_tokens: u64_col(row, "input_tokens")?,
                output_tokens: u64_col(row, "output_tokens")?,
                cache_read_tokens: u64_col(row, "cache_read_tokens")?,
                cache_write_tokens: u64_col(row, "cache_write_tokens")?,
                cost_usd: col(row, "cost_usd")?,
            }),
            other => return Err(Error::Decode(format!("unexpected row part {other:?}"))),
        }
    }
    Ok(stats)
}

/// Bind a task's columns as `?1..?27` of `insert_task.sql` / `update_task.sql`.

// ---------------------------------------------------------------------------
// The traits

#[async_trait]
impl RunStore for SqliteStore {
    async fn create_run(&self, state: &RunState, events: &[NewEvent], now: Millis) -> Result<()> {
        let run = &state.run;
        let doc = create_doc(state, events, now)?;
        let call = self
            .call(sql::CREATE_RUN, &doc, |e| {
                if is_unique_violation(&e) {
                    Error::Conflict(format!("{} (the run already exists)", run.id))
                } else {
                    db_err(e)
                }
            })
            .await?;
        call.rows(&run.id).map(drop)
    }

    async fn load_run(&self, id: &RunId) -> Result<RunState> {
        // Three statements, one round trip, no transaction (a dropped future
        // could leave one open). Each statement reads its own snapshot, all
        // within microseconds; a save committed in between at worst pairs the
        // run row with newer tasks, and the engine's save from such a state
        // fails its version check (reload and retry). Workers change task
        // rows only, and the engine's task compare-and-set covers those.
        let rows = self
            .read_all(sqlx::query(sql::LOAD_RUN).bind(id.as_str()))
            .await?;
        let mut run = None;
        let mut tasks = Vec::new();
        let mut gates = Vec::new();
        for row in &rows {
            let part: String = col(row, "part")?;
            match part.as_str() {
                "run" => run = Some(run_from_row(row)?),
                "task" => tasks.push(task_from_row(row)?),
                "gate" => gates.push(gate_from_row(row)?),
                other => return Err(Error::Decode(format!("unexpected row part {other:?}"))),
            }
        }
        let run = run.ok_or_else(|| Error::RunNotFound(id.to_string()))?;
        gates.sort_by_key(|g: &Gate| g.kind.order());
        Ok(RunState { run, tasks, gates })
    }

    async fn load_run_from(&self, id: &RunId, known: &RunState) -> Result<RunState> {
        // As load_run: one round trip, statements with snapshots of their
        // own (a save in between fails its version check). On the write
        // connection: what it reads was just written there by workers, and
        // the writer's page cache is warm where a reader's starts cold after
        // every commit (measured: S1 2.00 -> 1.71 ms per task).
        let rows = self
            .write_one(Write::new(sql::LOAD_RUN_PROGRESS).text(id.as_str()))
            .await?;
        let mut run = None;
        let mut tasks = Vec::with_capacity(known.tasks.len());
        let mut gates = Vec::new();
        let mut known_tasks = known.tasks.iter();
        for row in &rows {
            let part: String = col(row, "part")?;
            match part.as_str() {
                "run" => {
                    let r = run_from_row(row)?;
                    if r.version != known.run.version {
                        return self.load_run(id).await;
                    }
                    run = Some(r);
                }
                "progress" => {
                    let task_id: String = col(row, "id")?;
                    let attempt = u32_col(row, "attempt")?;
                    let Some(k) = known_tasks
                        .next()
                        .filter(|k| k.id == task_id && k.attempt == attempt)
                    else {
                        return self.load_run(id).await;
                    };
                    tasks.push(Task {
                        status: parse_col(row, "status")?,
                        lease_owner: col(row, "lease_owner")?,
                        lease_expires_at: col(row, "lease_expires_at")?,
                        last_error: col(row, "last_error")?,
                        retryable: col(row, "retryable")?,
                        result_summary: col(row, "result_summary")?,
                        verdict: opt_json_col(row, "verdict")?,
                        started_at: col(row, "started_at")?,
                        finished_at: col(row, "finished_at")?,
                        cost_usd: col(row, "cost_usd")?,
                        ..k.clone()
                    });
                }
                "gate" => gates.push(gate_from_row(row)?),
                other => return Err(Error::Decode(format!("unexpected row part {other:?}"))),
            }
        }
        let run = run.ok_or_else(|| Error::RunNotFound(id.to_string()))?;
        if known_tasks.next().is_some() {
            return self.load_run(id).await;
        }
        gates.sort_by_key(|g: &Gate| g.kind.order());
        Ok(RunState { run, tasks, gates })
    }

    async fn get_run(&self, id: &RunId) -> Result<Run> {
        let row = self
            .read_one(sqlx::query(sql::GET_RUN).bind(id.as_str()))
            .await?
            .ok_or_else(|| Error::RunNotFound(id.to_string()))?;
        run_from_row(&row)
    }

    /// Every commit is alike here (`synchronous=NORMAL`): `durability` does
    /// not change how a save is written.
    async fn save_run(
        &self,
        run_id: &RunId,
        expected_version: i64,
        diff: &StateDiff,
        state: &RunState,
        events: &[NewEvent],
        dead: &[NewDeadLetter],
        now: Millis,
        _durability: Durability,
    ) -> Result<i64> {
        let doc = save_doc(run_id, expected_version, diff, state, events, dead, now)?;
        let call = self
            .call(sql::SAVE_RUN, &doc, |e| {
                if is_unique_violation(&e) {
                    Error::Conflict(format!(
                        "{run_id} (a new task already exists: {})",
                        message(&e)
                    ))
                } else {
                    db_err(e)
                }
            })
            .await?;
        match call {
            // The version is compared and bumped by one in the same statement.
            Call::Done(_) => Ok(expected_version + 1),
            Call::Refused(Refusal::RunExists) => Err(Error::RunNotFound(run_id.to_string())),
            Call::Refused(Refusal::RunVersion) => Err(Error::Conflict(format!(
                "{run_id} (it is no longer at version {expected_version})"
            ))),
            Call::Refused(Refusal::TasksUnchanged) => {
                // Name the task that moved (best effort: it may move again).
                let stored = self.list_tasks(run_id).await.unwrap_or_default();
                let moved = diff.changed_tasks.iter().find(|c| {
                    !stored.iter().any(|t| {
                        t.id == c.task.id
                            && t.status == c.expected_status
                            && t.attempt == c.expected_attempt
                    })
                });
                Err(Error::Conflict(match moved {
                    Some(c) => format!(
                        "{run_id} (task {} is no longer {} at attempt {})",
                        c.task.id, c.expected_status, c.expected_attempt
                    ),
                    None => format!("{run_id} (a task changed meanwhile)"),
                }))
            }
            Call::Refused(other) => Err(other.unexpected()),
        }
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
impl TaskStore for SqliteStore {
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
        let Some(rows) = self.claim(sql::CLAIM_TASK, &claim).await? else {
            return Ok(None);
        };
        let row = rows
            .first()
            .ok_or_else(|| Error::Decode("claim returned no task".into()))?;
        task_from_row(row).map(Some)
    }

    async fn heartbeat(&self, fence: &Fence, lease_until: Millis) -> Result<bool> {
        let query = sqlx::query(sql::HEARTBEAT)
            .bind(fence.run_id.as_str())
            .bind(fence.task_id.as_str())
            .bind(i64::from(fence.attempt))
            .bind(fence.owner.as_str())
            .bind(lease_until);
        let mut writer = self.conns.writer().await;
        let done = query.execute(conn(&mut writer)?).await.map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn complete_task(&self, fence: &Fence, outcome: &TaskOutcome, now: Millis) -> Result<()> {
        let (doc, artifacts) = complete_docs::<Jsonb>(fence, outcome, now)?;
        let write = Write::new(sql::COMPLETE_TASK).blob(doc).blob(artifacts);
        self.call_with(write, db_err).await?.completed(fence)?;
        Ok(())
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
impl EventStore for SqliteStore {
    async fn append_events(
        &self,
        run_id: &RunId,
        events: &[NewEvent],
        now: Millis,
    ) -> Result<Vec<i64>> {
        let doc = Doc::new(run_id, now, events, NoFields {})?;
        let rows = self
            .call(sql::APPEND_EVENTS, &doc, db_err)
            .await?
            .rows(run_id)?;
        let row = rows
            .first()
            .ok_or_else(|| Error::Decode("append returned no sequence number".into()))?;
        let last: i64 = col(row, "last_seq")?;
        Ok((last - events.len() as i64 + 1..=last).collect())
    }

    async fn list_events(&self, run_id: &RunId, query: EventQuery) -> Result<Vec<Event>> {
        if let Some(kind) = query.kind {
            // One read: the run's row comes with its events of that kind.
            let rows = self
                .read_all(
                    sqlx::query(sql::LIST_EVENTS_OF_KIND)
                        .bind(run_id.as_str())
                        .bind(query.after_seq)
                        .bind(limit(query.limit))
                        .bind(kind.as_str()),
                )
                .await?;
            if rows.is_empty() {
                return Err(Error::RunNotFound(run_id.to_string()));
            }
            let mut events = Vec::with_capacity(rows.len());
            for row in &rows {
                let seq: Option<i64> = col(row, "seq")?;
                if seq.is_some() {
                    events.push(event_from_row(row)?);
                }
            }
            crate::expand_elided(self, run_id, &mut events).await?;
            return Ok(events);
        }
        let mut events = self
            .read_all(
                sqlx::query(sql::LIST_EVENTS)
                    .bind(run_id.as_str())
                    .bind(query.after_seq)
                    .bind(limit(query.limit))
                    .bind(None::<&str>),
            )
            .await?
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>>>()?;
        if events.is_empty() {
            self.require_run(run_id).await?;
        }
        crate::expand_elided(self, run_id, &mut events).await?;
        Ok(events)
    }

    async fn keep_text(&self, text: &str, now: Millis) -> Result<String> {
        let reference = crate::text_ref(text);
        if self.kept.contains(&reference) {
            return Ok(reference);
        }
        let query = sqlx::query(sql::KEEP_TEXT)
            .bind(reference.clone())
            .bind(text.to_owned())
            .bind(now);
        let mut writer = self.conns.writer().await;
        query.execute(conn(&mut writer)?).await.map_err(db_err)?;
        drop(writer);
        self.kept.insert(reference.clone());
        Ok(reference)
    }

    async fn get_texts(&self, refs: &[String]) -> Result<Vec<(String, String)>> {
        self.read_all(sqlx::query(sql::GET_TEXTS).bind(to_json(&refs)?))
            .await?
            .iter()
            .map(|row| Ok((col(row, "hash")?, col(row, "text")?)))
            .collect()
    }
}

#[async_trait]
impl ArtifactStore for SqliteStore {
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
                .bind(run_id.as_str())
                .bind(to_json(names)?)
                .bind(to_json(tasks)?),
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
impl DeadLetterStore for SqliteStore {
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
        let rows = self
            .write_one(Write::new(sql::MARK_REPLAYED).int(id).int(now))
            .await?;
        let row = rows.first().ok_or(Error::DeadLetterNotFound(id))?;
        dead_letter_from_row(row)
    }
}

#[async_trait]
impl JournalStore for SqliteStore {
    async fn record_llm_call(&self, call: &LlmCallRecord) -> Result<()> {
        let write = Write::new(sql::RECORD_LLM_CALL)
            .text(call.run_id.as_str())
            .text(call.task_id.as_str())
            .int(i64::from(call.attempt))
            .int(i64::from(call.step))
            .text(call.request_hash.as_str())
            .text(call.provider.as_str())
            .text(call.model.as_str())
            .text(call.request.as_str())
            .text(call.response.as_str())
            .int(token_param(call.input_tokens))
            .int(token_param(call.output_tokens))
            .int(token_param(call.cache_read_tokens))
            .int(token_param(call.cache_write_tokens))
            .int(call.latency_ms)
            .real(call.cost_usd)
            .int(call.created_at);
        self.write_one(write).await?;
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
impl TokenStore for SqliteStore {
    async fn create_token(&self, token: &ApiToken) -> Result<()> {
        let query = sqlx::query(sql::INSERT_TOKEN)
            .bind(token.id.as_str())
            .bind(token.name.as_str())
            .bind(to_json(&token.scopes)?)
            .bind(token.secret_hash.as_str())
            .bind(token.created_at)
            .bind(token.revoked_at);
        let mut writer = self.conns.writer().await;
        match query.execute(conn(&mut writer)?).await {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(Error::TokenExists(token.id.clone())),
            Err(e) => Err(db_err(e)),
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
        let rows = self
            .write_one(Write::new(sql::REVOKE_TOKEN).text(id).int(now))
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| Error::TokenNotFound(id.to_string()))?;
        token_from_row(row)
    }
}

#[async_trait]
impl StatsStore for SqliteStore {
    async fn stats(&self) -> Result<Stats> {
        stats_from_rows(&self.read_all(sqlx::query(sql::STATS)).await?)
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn close(&self) {
        SqliteStore::close(self).await;
    }

    /// The completion and the step in one statement, so one transaction and
    /// one call to the writer (`proc_complete_step`) where the engine would
    /// make three: the completion, its re-read of the run and its save.
    async fn complete_and_save(
        &self,
        fence: &Fence,
        outcome: &TaskOutcome,
        now: Millis,
        step: &Step<'_>,
    ) -> Result<Stepped> {
        // The reads take a document of their own (`reads_doc`): the
        // completion's need not name them too.
        let without_reads = Step {
            inputs_of: None,
            ..*step
        };
        let (doc, artifacts, step_doc) =
            complete_step_docs::<Jsonb>(fence, outcome, now, &without_reads)?;
        let write = match step.inputs_of {
            None => Write::new(sql::COMPLETE_STEP)
                .blob(doc)
                .blob(artifacts)
                .blob(step_doc),
            Some(of) => Write::new(sql::COMPLETE_STEP_READING)
                .blob(reads_doc(&fence.run_id, of)?)
                .blob(doc)
                .blob(artifacts)
                .blob(step_doc),
        };
        let rows = match self.call_with(write, db_err).await {
            Ok(call) => call.completed(fence)?,
            Err(e) => {
                // Whatever failed (nothing was written), the completion must
                // not wait on the step: commit it alone.
                tracing::warn!(run = %fence.run_id, error = %e, "step not saved with the completion; the engine will take it");
                self.complete_task(fence, outcome, now).await?;
                return Ok(Stepped::default());
            }
        };
        let mut stepped = Stepped::default();
        let mut inputs = AttemptInputs::default();
        for row in &rows {
            match col::<String>(row, "part")?.as_str() {
                "stepped" => {
                    stepped.version = Some(col(row, "version")?);
                    stepped.current = col(row, "current")?;
                }
                part if add_input(&mut inputs, part, row)? => {}
                other => {
                    return Err(Error::Decode(format!(
                        "completion returned a row of part {other:?}"
                    )));
                }
            }
        }
        if let (Some(_), Some(of)) = (stepped.version, &step.inputs_of) {
            inputs.upstream = crate::with_held(inputs.upstream, of);
            stepped.inputs = Some(inputs);
        }
        Ok(stepped)
    }

    /// The claim and the reads in one call on the write connection: one
    /// round trip to its thread instead of four, and reads from a warm page
    /// cache (a read connection's cache is dropped after every commit).
    async fn claim_attempt(&self, claim: &Claim<'_>) -> Result<Option<ClaimedAttempt>> {
        let Some(rows) = self.claim(sql::CLAIM_ATTEMPT, claim).await? else {
            return Ok(None);
        };
        let (mut task, mut run) = (None, None);
        let mut inputs = AttemptInputs::default();
        for row in &rows {
            match col::<String>(row, "part")?.as_str() {
                "task" => task = Some(task_from_row(row)?),
                "run" => run = Some(run_from_row(row)?),
                part if add_input(&mut inputs, part, row)? => {}
                other => {
                    return Err(Error::Decode(format!(
                        "claim returned a row of part {other:?}"
                    )));
                }
            }
        }
        let missing = |what: &str| Error::Decode(format!("claim returned no {what}"));
        Ok(Some(ClaimedAttempt {
            task: task.ok_or_else(|| missing("task"))?,
            run: run.ok_or_else(|| missing("run"))?,
            messages: inputs.messages,
            upstream: inputs.upstream,
            // Declined: an engine in this process holds the run as it saved it.
            state: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use orch_core::{EventKind, TaskStatus};

    use super::*;

    /// The bucket bounds and terminal statuses written out in the duration
    /// query are those of `TASK_DURATION_BUCKETS_MS` and `TaskStatus`.
    #[test]
    fn the_duration_query_matches_the_buckets_and_statuses() {
        let sql = sql::STATS;
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

    /// After a checkpoint, writes start the WAL over from its beginning
    /// (its file does not grow) instead of making it longer; a closed
    /// store's checkpointer stops. (Without writes beside it, the first pass
    /// alone would finish; what the second pass adds under a steady stream
    /// of writes is measured by the benchmarks, not here.)
    /// What one of [`write_at_once`]'s writes returned.
    enum Outcome {
        Appended(Result<Vec<i64>>),
        Refused(Result<Vec<i64>>),
        Duplicate(Result<()>),
    }

    /// 60 writes made at once: appends to `state`'s run; every 20th (from
    /// the 7th) to an unknown run; with `duplicates`, every 20th (from the
    /// 13th) creates the run again. The number of appends that succeeded.
    async fn write_at_once(store: &SqliteStore, state: &RunState, duplicates: bool) -> usize {
        // The connection held meanwhile, as a heartbeat would: every write
        // queues (none runs inline), so they are batched and chained
        // however fast or loaded the machine is.
        let held = store.conns.writer.clone().lock_owned().await;
        let mut writes = tokio::task::JoinSet::new();
        for i in 0..60 {
            let (store, state) = (store.clone(), state.clone());
            writes.spawn(async move {
                let note = [NewEvent::run(EventKind::Checkpoint, format!("note {i}"))];
                match i % 20 {
                    7 => Outcome::Refused(
                        store.append_events(&RunId::generate(), &note, 2_000).await,
                    ),
                    13 if duplicates => {
                        Outcome::Duplicate(store.create_run(&state, &[], 2_000).await)
                    }
                    _ => Outcome::Appended(store.append_events(&state.run.id, &note, 2_000).await),
                }
            });
        }
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        drop(held);
        let mut appended = 0;
        while let Some(outcome) = writes.join_next().await {
            match outcome.unwrap() {
                Outcome::Appended(seqs) => {
                    assert_eq!(seqs.unwrap().len(), 1);
                    appended += 1;
                }
                Outcome::Refused(r) => {
                    assert!(matches!(r, Err(Error::RunNotFound(_))), "{r:?}");
                }
                Outcome::Duplicate(r) => assert!(matches!(r, Err(Error::Conflict(_))), "{r:?}"),
            }
        }
        appended
    }

    /// The writer thread gives up wake-up preemption (see
    /// `yield_to_the_connection`); the connections' threads do not.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_writer_thread_runs_under_sched_batch() {
        const SCHED_BATCH: u32 = 3;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.db");
        let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
        let (state, events) = crate::conformance::new_run(1_000);
        store.create_run(&state, &events, 1_000).await.unwrap();
        // Each thread's name and scheduling policy (`stat`'s 41st field).
        let threads: Vec<(String, u32)> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| {
                let t = t.ok()?.path();
                let comm = std::fs::read_to_string(t.join("comm")).ok()?;
                let stat = std::fs::read_to_string(t.join("stat")).ok()?;
                // Fields after the name (which may hold spaces) start at 3.
                let after = &stat[stat.rfind(')')? + 2..];
                let policy = after.split(' ').nth(41 - 3)?.parse().ok()?;
                Some((comm.trim().to_string(), policy))
            })
            .collect();
        let writers: Vec<u32> = threads
            .iter()
            .filter(|(name, _)| name == "orch-sqlite-wri")
            .map(|&(_, policy)| policy)
            .collect();
        assert!(!writers.is_empty(), "no writer thread among {threads:?}");
        assert!(writers.iter().all(|&p| p == SCHED_BATCH), "{threads:?}");
        // Connections (each on a thread of its own, sqlx's) keep the
        // default: the checkpointer's too, opened with the writer.
        let connections = threads
            .iter()
            .filter(|(name, _)| name.starts_with("sqlx-sqlite"));
        assert!(connections.clone().count() >= 2, "{threads:?}");
        assert!(
            connections.clone().all(|&(_, p)| p != SCHED_BATCH),
            "{threads:?}"
        );
        store.close().await;
    }

    /// Writes made at once commit in batches, yet each gets its own answer:
    /// a refused one (an unknown run) undoes only itself, and a failed one
    /// (a run created twice, which rolls its batch back and runs it again
    /// one write at a time) takes nothing with it.
    #[tokio::test]
    async fn concurrent_writes_commit_together_and_fail_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("batches.db");
        let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
        let (state, events) = crate::conformance::new_run(1_000);
        store.create_run(&state, &events, 1_000).await.unwrap();
        let created = store
            .list_events(&state.run.id, EventQuery::default())
            .await
            .unwrap()
            .len();

        assert_eq!(write_at_once(&store, &state, false).await, 57);
        assert!(
            store.conns.thread.queue.batches.load(Ordering::Relaxed) > 0,
            "no writes were committed together"
        );
        assert!(
            store.conns.thread.queue.chains.load(Ordering::Relaxed) > 0,
            "no writes ran chained"
        );
        assert_eq!(write_at_once(&store, &state, true).await, 54);

        let log = store
            .list_events(&state.run.id, EventQuery::default())
            .await
            .unwrap();
        assert_eq!(log.len(), created + 57 + 54);
        // Numbered 1, 2, 3, ... with no gap: every refusal and failure took
        // back its own sequence numbers and nothing else.
        for (i, e) in log.iter().enumerate() {
            assert_eq!(e.seq, i as i64 + 1);
        }
        store.close().await;
    }

    /// Writes queued on a closed store are answered with an error, not
    /// left waiting.
    #[tokio::test]
    async fn writes_after_close_fail_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("closed.db").to_str().unwrap())
            .await
            .unwrap();
        let (state, events) = crate::conformance::new_run(1_000);
        store.create_run(&state, &events, 1_000).await.unwrap();
        store.close().await;
        for _ in 0..2 {
            // The connection held meanwhile, as a heartbeat would: the
            // writes must queue rather than run inline.
            let held = store.conns.writer.clone().lock_owned().await;
            let mut writes = tokio::task::JoinSet::new();
            for i in 0..10 {
                let (store, id) = (store.clone(), state.run.id.clone());
                writes.spawn(async move {
                    let note = [NewEvent::run(EventKind::Checkpoint, format!("late {i}"))];
                    store.append_events(&id, &note, 2_000).await
                });
            }
            tokio::task::yield_now().await;
            drop(held);
            let all = async {
                while let Some(r) = writes.join_next().await {
                    let r = r.unwrap();
                    assert!(
                        matches!(&r, Err(Error::Database(m)) if m.contains("closed")),
                        "{r:?}"
                    );
                }
            };
            tokio::time::timeout(Duration::from_secs(10), all)
                .await
                .expect("writes to a closed store were left waiting");
        }
    }

    #[tokio::test]
    async fn a_checkpoint_lets_the_wal_start_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.db");
        let wal = dir.path().join("wal.db-wal");
        let store = SqliteStore::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let now = crate::conformance::T0;
        let (state, events) = crate::conformance::new_run(now);
        store.create_run(&state, &events, now).await.unwrap();
        let big = NewEvent::run(EventKind::ChannelMessage, "x".repeat(64 * 1024));
        let write_20 = |from: i64| {
            let (store, id, big) = (&store, &state.run.id, &big);
            async move {
                for i in 0..20 {
                    store
                        .append_events(id, std::slice::from_ref(big), now + from + i)
                        .await
                        .unwrap();
                }
            }
        };
        let size = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        let (ckpt, writer) = (&store.conns.thread.checkpointer, &store.conns.writer);
        // The background checkpointer waits for its connection meanwhile.
        let held = ckpt.lock().await;
        write_20(0).await;
        write_20(20).await;
        let grown = size();
        assert!(grown > 40 * 64 * 1024, "{grown} bytes of WAL");
        drop(held);

        assert!(checkpoint_once(ckpt, writer).await.unwrap());
        write_20(40).await;
        // Appended, the 20 writes would have made it 1.3 MB longer.
        assert!(size() <= grown, "the WAL started over in the same file");
        let stored = store
            .list_events(&state.run.id, EventQuery::default())
            .await
            .unwrap();
        assert_eq!(stored.len(), events.len() + 60);

        store.close().await;
        assert!(!checkpoint_once(ckpt, writer).await.unwrap());
        assert!(ckpt.lock().await.is_none(), "no connection opened again");
        assert_eq!(size(), 0, "the last connection to close removes the WAL");
    }

    #[test]
    fn urls_parse_to_targets() {
        assert_eq!(parse_target("sqlite::memory:").unwrap(), Target::Memory);
        assert_eq!(
            parse_target("sqlite://orch.db").unwrap(),
            Target::File("orch.db".into())
        );
        assert_eq!(
            parse_target("sqlite:///var/lib/orch.db?mode=rwc").unwrap(),
            Target::File("/var/lib/orch.db".into())
        );
        assert_eq!(
            parse_target("sqlite:data/orch.db").unwrap(),
            Target::File("data/orch.db".into())
        );
        assert_eq!(
            parse_target("./orch.db").unwrap(),
            Target::File("./orch.db".into())
        );
        assert!(matches!(
            parse_target("mysql://x"),
            Err(Error::UnsupportedUrl(_))
        ));
        assert!(matches!(
            parse_target("sqlite://"),
            Err(Error::Connect { .. })
        ));
    }
}
