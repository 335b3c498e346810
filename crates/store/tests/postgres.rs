//! The PostgreSQL store: the conformance suite, concurrency across pools
//! (standing for processes), connection errors and migrations.
//!
//! Every test that needs a server works in a database of its own
//! (`orch_test_<random>`), created on the server `ORCH_TEST_PG_URL` names
//! (default `postgres://postgres@127.0.0.1:5432/test`) and dropped at the end,
//! so tests may run in parallel. Without a reachable server these tests fail
//! with how to start one, unless `ORCH_SKIP_PG=1`.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orch_core::{Action, EventKind, Input, NewEvent, RunState, StateDiff, machine};
use orch_store::conformance::{self, T0};
use orch_store::{Durability, Error, EventQuery, EventStore, PostgresStore, RunStore, Store};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A database created for one test, dropped (best effort) when this is
/// dropped, even if the test panicked.
struct TestDb {
    /// The server's admin URL (`ORCH_TEST_PG_URL`).
    admin: String,
    name: String,
    /// The URL of the test's own database.
    url: String,
}

impl TestDb {
    /// A fresh database, or `None` (after a skip line) if the server is
    /// unreachable and `ORCH_SKIP_PG=1`.
    async fn create() -> Option<TestDb> {
        let admin = std::env::var("ORCH_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_URL.into());
        let mut conn = match PgConnection::connect(&admin).await {
            Ok(conn) => conn,
            Err(e) => {
                if std::env::var("ORCH_SKIP_PG").is_ok_and(|v| v == "1") {
                    println!("skipped: PostgreSQL is not reachable at {admin} ({e})");
                    return None;
                }
                panic!(
                    "PostgreSQL is not reachable at {admin}: {e}\n\
                     Start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`,\n\
                     point ORCH_TEST_PG_URL at another server, or set ORCH_SKIP_PG=1 to skip these tests."
                );
            }
        };
        let name = format!("orch_test_{:016x}", random());
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {admin}: {e}"));
        let _ = conn.close().await;
        let url = with_database(&admin, &name);
        Some(TestDb { admin, name, url })
    }

    async fn store(&self) -> PostgresStore {
        PostgresStore::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop runs inside the test's runtime: drop the database from a
        // runtime of its own, on a thread of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let mut conn = PgConnection::connect(&admin).await?;
                // The name is ours (hex digits): safe to splice.
                sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await?;
                conn.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// `url` with its database (path) replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let query = tail.split_once('?').map(|(_, q)| q);
    match query {
        Some(q) => format!("{scheme}://{authority}/{name}?{q}"),
        None => format!("{scheme}://{authority}/{name}"),
    }
}

/// 64 random bits (std's hasher keys are randomly seeded per process),
/// mixed with the time and a counter so that tests in one process differ.
fn random() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// Store a fresh run and queue its first task (as the engine's first step).
async fn queued_run(store: &dyn Store) -> RunState {
    let (state, events) = conformance::new_run(T0);
    queue_first(store, state, events).await
}

/// Store `state` and queue its first task (as the engine's first step).
async fn queue_first(store: &dyn Store, state: RunState, events: Vec<NewEvent>) -> RunState {
    store.create_run(&state, &events, T0).await.unwrap();
    let mut queued = state.clone();
    let actions = machine::apply(&mut queued, Input::Reconcile, T0 + 1).unwrap();
    let emitted: Vec<NewEvent> = actions
        .into_iter()
        .filter_map(|a| match a {
            Action::Emit(e) => Some(e),
            _ => None,
        })
        .collect();
    let diff = StateDiff::between(&state, &queued);
    queued.run.version = store
        .save_run(
            &state.run.id,
            0,
            &diff,
            &queued,
            &emitted,
            &[],
            T0 + 1,
            Durability::Durable,
        )
        .await
        .unwrap();
    queued
}

#[tokio::test]
async fn conformance() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = db.store().await;
    assert_eq!(store.backend(), "postgres");
    conformance::run_all(&store).await;
    store.close().await;
}

#[tokio::test]
async fn stats_of_an_empty_store() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = db.store().await;
    conformance::stats_of_an_empty_store(&store).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_of_many_runs() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = db.store().await;
    conformance::concurrent_claims_of_many_runs(Arc::new(store.clone()), 20).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_have_one_winner() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = db.store().await;
    let shared: Arc<dyn Store> = Arc::new(store.clone());
    for _ in 0..5 {
        conformance::concurrent_claims(shared.clone(), 32).await;
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_from_two_processes_have_one_winner() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    // Two pools stand for two processes: they contend through row locks.
    let a: Arc<dyn Store> = Arc::new(db.store().await);
    let b: Arc<dyn Store> = Arc::new(db.store().await);
    for round in 0..3 {
        let state = queued_run(a.as_ref()).await;
        let id = state.run.id.clone();
        let mut handles = Vec::new();
        for i in 0..16 {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let id = id.clone();
            handles.push(tokio::spawn(async move {
                store
                    .claim_task(&id, "requirements", 1, &format!("w{i}"), i64::MAX, T0 + 5)
                    .await
                    .expect("claim")
                    .is_some()
            }));
        }
        let mut wins = 0;
        for h in handles {
            wins += usize::from(h.await.unwrap());
        }
        assert_eq!(wins, 1, "round {round}");
        let started = a
            .list_events(&id, EventQuery::default())
            .await
            .unwrap()
            .iter()
            .filter(|e| e.kind == EventKind::TaskStarted)
            .count();
        assert_eq!(started, 1, "round {round}: one task_started");
    }
}

/// Many writers append to one run at once, through the three paths that
/// allocate sequence numbers: seqs stay 1..=n with no gaps or duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_number_events_without_gaps() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let a: Arc<dyn Store> = Arc::new(db.store().await);
    let b: Arc<dyn Store> = Arc::new(db.store().await);
    let state = queued_run(a.as_ref()).await;
    let id = state.run.id.clone();
    let before = a
        .list_events(&id, EventQuery::default())
        .await
        .unwrap()
        .len();
    let mut handles = Vec::new();
    for i in 0..24 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let id = id.clone();
        handles.push(tokio::spawn(async move {
            let events: Vec<NewEvent> = (0..=i % 3)
                .map(|j| NewEvent::run(EventKind::Checkpoint, format!("writer {i} event {j}")))
                .collect();
            let seqs = store.append_events(&id, &events, T0 + 2).await.unwrap();
            assert_eq!(seqs.len(), events.len());
            assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
            seqs.len()
        }));
    }
    // An engine save racing the appends (it allocates seqs as well).
    let saved = a
        .save_run(
            &id,
            state.run.version,
            &StateDiff::default(),
            &state,
            &[NewEvent::run(EventKind::Checkpoint, "engine")],
            &[],
            T0 + 3,
            Durability::Durable,
        )
        .await
        .unwrap();
    assert_eq!(saved, state.run.version + 1);
    let mut appended = 1;
    for h in handles {
        appended += h.await.unwrap();
    }
    let seqs: Vec<i64> = a
        .list_events(&id, EventQuery::default())
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, (1..=(before + appended) as i64).collect::<Vec<_>>());
}

/// Concurrent engine saves from the same version: exactly one wins, the
/// others conflict and write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_saves_have_one_winner() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(db.store().await);
    let (state, events) = conformance::new_run(T0);
    store.create_run(&state, &events, T0).await.unwrap();
    let id = state.run.id.clone();
    let mut handles = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        let state = state.clone();
        handles.push(tokio::spawn(async move {
            let mut after = state.clone();
            let actions = machine::apply(&mut after, Input::Reconcile, T0 + 10).unwrap();
            let emitted: Vec<NewEvent> = actions
                .into_iter()
                .filter_map(|a| match a {
                    Action::Emit(e) => Some(e),
                    _ => None,
                })
                .collect();
            let diff = StateDiff::between(&state, &after);
            after.run.iterations += i;
            store
                .save_run(
                    &state.run.id,
                    0,
                    &diff,
                    &after,
                    &emitted,
                    &[],
                    T0 + 10,
                    Durability::Durable,
                )
                .await
        }));
    }
    let mut wins = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(version) => {
                assert_eq!(version, 1);
                wins += 1;
            }
            Err(Error::Conflict(_)) => {}
            Err(other) => panic!("expected Ok or Conflict, got {other:?}"),
        }
    }
    assert_eq!(wins, 1);
    let run = store.get_run(&id).await.unwrap();
    assert_eq!(run.version, 1);
    let seqs: Vec<i64> = store
        .list_events(&id, EventQuery::default())
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let first = db.store().await;
    let (state, events) = conformance::new_run(T0);
    first.create_run(&state, &events, T0).await.unwrap();
    first.migrate().await.expect("migrate again");
    // A second store (process) on the same database migrates nothing and
    // sees the data.
    let second = db.store().await;
    assert_eq!(second.get_run(&state.run.id).await.unwrap(), state.run);
    first.close().await;
    second.close().await;
    // Through the URL dispatch too, both schemes.
    for url in [
        db.url.clone(),
        db.url.replacen("postgres://", "postgresql://", 1),
    ] {
        let store = orch_store::connect(&url).await.expect(&url);
        assert_eq!(store.backend(), "postgres");
        assert_eq!(store.get_run(&state.run.id).await.unwrap().id, state.run.id);
        let store = orch_store::connect_existing(&url).await.expect(&url);
        assert_eq!(store.backend(), "postgres");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_connects_migrate_once() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let (a, b, c) = tokio::join!(db.store(), db.store(), db.store());
    let (state, events) = conformance::new_run(T0);
    a.create_run(&state, &events, T0).await.unwrap();
    assert_eq!(c.get_run(&state.run.id).await.unwrap(), state.run);
    for store in [a, b, c] {
        store.close().await;
    }
}

/// A worker completing and an engine reclaiming the same attempt at once:
/// exactly one of them commits, the other is refused and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn completion_racing_a_reclaim_has_one_winner() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let worker: Arc<dyn Store> = Arc::new(db.store().await);
    let engine: Arc<dyn Store> = Arc::new(db.store().await);
    for round in 0..12 {
        let state = queued_run(engine.as_ref()).await;
        let id = state.run.id.clone();
        worker
            .claim_task(&id, "requirements", 1, "w1", T0 + 1_000, T0 + 5)
            .await
            .unwrap()
            .expect("claimed");
        let running = engine.load_run(&id).await.unwrap();
        let complete = {
            let worker = worker.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let fence = orch_store::Fence {
                    run_id: id,
                    task_id: "requirements".into(),
                    attempt: 1,
                    owner: "w1".into(),
                };
                let outcome = orch_store::TaskOutcome {
                    status: orch_core::TaskStatus::Succeeded,
                    summary: Some("done".into()),
                    verdict: None,
                    error: None,
                    retryable: true,
                    artifacts: vec![orch_core::NewArtifact {
                        name: "requirements".into(),
                        kind: "requirements".into(),
                        path: None,
                        content: "reqs".into(),
                        metadata: serde_json::json!({}),
                    }],
                    events: vec![NewEvent::task(
                        EventKind::TaskSucceeded,
                        "requirements",
                        "done",
                    )],
                    usage: orch_core::Usage::default(),
                    llm_calls: Vec::new(),
                };
                worker.complete_task(&fence, &outcome, T0 + 500).await
            })
        };
        let reclaim = {
            let engine = engine.clone();
            tokio::spawn(async move {
                let mut after = running.clone();
                let actions = machine::apply(
                    &mut after,
                    Input::LeaseExpired {
                        task_id: "requirements".into(),
                        attempt: 1,
                        owner: Some("w1".into()),
                    },
                    T0 + 500,
                )
                .unwrap();
                let emitted: Vec<NewEvent> = actions
                    .into_iter()
                    .filter_map(|a| match a {
                        Action::Emit(e) => Some(e),
                        _ => None,
                    })
                    .collect();
                let diff = StateDiff::between(&running, &after);
                engine
                    .save_run(
                        &running.run.id,
                        running.run.version,
                        &diff,
                        &after,
                        &emitted,
                        &[],
                        T0 + 500,
                        Durability::Durable,
                    )
                    .await
            })
        };
        let completed = complete.await.unwrap();
        let reclaimed = reclaim.await.unwrap();
        let artifacts = engine.list_artifacts(&id, false).await.unwrap();
        match (&completed, &reclaimed) {
            (Ok(()), Err(Error::Conflict(_))) => assert_eq!(artifacts.len(), 1),
            (Err(Error::LeaseLost { .. }), Ok(_)) => assert!(artifacts.is_empty()),
            other => panic!("round {round}: expected exactly one winner, got {other:?}"),
        }
        let seqs: Vec<i64> = engine
            .list_events(&id, EventQuery::default())
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_connect_error_quickly() {
    // Port 1 on the loopback: nothing listens there, the connection is refused.
    let url = "postgres://orch:s3cret@127.0.0.1:1/orch";
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(15), PostgresStore::connect(url))
        .await
        .expect("connect gives up within 15 s");
    let err = result.expect_err("nothing listens on port 1");
    assert!(started.elapsed() < Duration::from_secs(15));
    let Error::Connect {
        url: shown,
        message,
    } = &err
    else {
        panic!("expected Error::Connect, got {err:?}");
    };
    assert_eq!(shown, "postgres://orch:***@127.0.0.1:1/orch");
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(message.contains("running"), "{message}");
    let text = err.to_string();
    assert!(
        !text.contains("s3cret"),
        "the password is not shown: {text}"
    );

    // Through the URL dispatch as well.
    match orch_store::connect(url).await {
        Err(Error::Connect { .. }) => {}
        Err(other) => panic!("expected Error::Connect, got {other:?}"),
        Ok(_) => panic!("expected Error::Connect, got a store"),
    }
}

#[tokio::test]
async fn a_missing_database_says_to_create_it() {
    let admin = std::env::var("ORCH_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_URL.into());
    if PgConnection::connect(&admin).await.is_err() {
        // The other tests report the unreachable server.
        return;
    }
    let url = with_database(&admin, &format!("orch_missing_{:016x}", random()));
    match PostgresStore::connect(&url).await {
        Err(Error::Config { message, .. }) => {
            assert!(message.contains("createdb"), "{message}")
        }
        Err(other) => panic!("expected Error::Config, got {other:?}"),
        Ok(_) => panic!("expected Error::Config, got a store"),
    }
}

#[tokio::test]
async fn an_invalid_url_is_a_configuration_error() {
    match PostgresStore::connect("postgres://u:pw@host:notaport/db").await {
        Err(Error::Config { url, message }) => {
            assert!(!url.contains("pw"), "{url}");
            assert!(message.contains("postgres://USER"), "{message}");
        }
        Err(other) => panic!("expected Error::Config, got {other:?}"),
        Ok(_) => panic!("expected Error::Config, got a store"),
    }
}

/// The hot single-task statements find their task by primary key, even with
/// the plan PostgreSQL caches for a prepared statement (a generic plan,
/// made once, here while the table is empty): not by a partial index of all
/// queued or running tasks, nor by a scan of the run's tasks.
#[tokio::test]
async fn single_task_statements_use_the_primary_key() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    db.store().await.close().await;
    let mut conn = PgConnection::connect(&db.url).await.expect("connect");
    sqlx::raw_sql("SET plan_cache_mode = force_generic_plan")
        .execute(&mut conn)
        .await
        .expect("generic plans");
    let statements = [
        (
            "claim",
            include_str!("../queries/postgres/claim_task.sql"),
            "'r', 't', 1, 'w', 1, 1, 'task_started', 'm', '{}', 'QUEUED', '{}', '{}', false, NULL",
        ),
        (
            "heartbeat",
            include_str!("../queries/postgres/heartbeat.sql"),
            "'r', 't', 1, 'w', 1, 'RUNNING'",
        ),
    ];
    for (name, sql, args) in statements {
        sqlx::raw_sql(AssertSqlSafe(format!("PREPARE {name} AS {sql}")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("PREPARE {name}: {e}"));
        let plan: Vec<String> =
            sqlx::query_scalar(AssertSqlSafe(format!("EXPLAIN EXECUTE {name}({args})")))
                .fetch_all(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("EXPLAIN {name}: {e}"));
        let plan = plan.join("\n");
        let tasks_scan = plan
            .lines()
            .find(|l| l.contains("Scan") && l.contains(" on tasks"))
            .unwrap_or_else(|| panic!("{name}: no scan of tasks in\n{plan}"));
        assert!(
            tasks_scan.contains("using tasks_pkey"),
            "{name} reads tasks by {tasks_scan:?}, not the primary key:\n{plan}"
        );
    }
}

/// A worker that must read the whole run with its claim gets it, also for a
/// run without gates (its gates are none, not unread: the worker must not
/// read the run again after its attempt).
#[tokio::test]
async fn a_claim_reads_the_whole_run_of_a_run_without_gates() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = db.store().await;
    let (mut state, events) = conformance::new_run(T0);
    state.gates.clear();
    for t in &mut state.tasks {
        t.gate = None;
    }
    let queued = queue_first(&store, state, events).await;
    let first = queued
        .tasks
        .iter()
        .find(|t| t.status == orch_core::TaskStatus::Queued)
        .expect("a queued task")
        .clone();
    let claim = |owner: &'static str, known_version: Option<i64>| orch_store::Claim {
        with_state: true,
        known_version,
        ..orch_store::Claim::bare(
            &queued.run.id,
            &first.id,
            first.attempt,
            owner,
            T0 + 60_000,
            T0 + 2,
        )
    };
    let claimed = store
        .claim_attempt(&claim("w1", None))
        .await
        .expect("claim_attempt")
        .expect("claimed");
    let read = claimed.state.expect("the whole run, read with the claim");
    assert!(read.gates.is_empty());
    assert_eq!(
        read,
        store.load_run(&queued.run.id).await.expect("load_run")
    );

    store.close().await;
}

/// A pool of one connection (`DATABASE_POOL_SIZE=1`) serves operations made
/// at once: they take turns for the connection, none fails.
#[tokio::test]
async fn a_pool_of_one_connection_serves_operations_made_at_once() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = Arc::new(
        PostgresStore::connect_with(&db.url, Some(1))
            .await
            .expect("connect"),
    );
    let ops: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let (state, events) = conformance::new_run(T0);
                store.create_run(&state, &events, T0).await?;
                let loaded = store.load_run(&state.run.id).await?;
                assert_eq!(loaded.tasks.len(), state.tasks.len());
                assert_eq!(loaded.gates.len(), state.gates.len());
                store
                    .list_events(&state.run.id, EventQuery::default())
                    .await
                    .map(|e| e.len())
            })
        })
        .collect();
    for op in ops {
        let events = op.await.expect("joined").expect("served");
        assert!(events > 0, "the run's creation events");
    }
    store.close().await;
}

#[tokio::test]
async fn init_creates_a_missing_database_once() {
    let admin = std::env::var("ORCH_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_URL.into());
    if PgConnection::connect(&admin).await.is_err() {
        // The other tests report the unreachable server.
        return;
    }
    let name = format!("orch_created_{:016x}", random());
    let url = with_database(&admin, &name);
    assert!(matches!(
        PostgresStore::connect(&url).await,
        Err(Error::Config { .. })
    ));
    assert!(orch_store::create_database_if_missing(&url).await.unwrap());
    assert!(
        !orch_store::create_database_if_missing(&url).await.unwrap(),
        "created once"
    );
    let store = PostgresStore::connect(&url)
        .await
        .expect("the new database opens");
    store.close().await;
    let mut c = PgConnection::connect(&admin).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
        .execute(&mut c)
        .await
        .unwrap();
    // SQLite files are created when opened: nothing to do here.
    assert!(
        !orch_store::create_database_if_missing("sqlite://x.db")
            .await
            .unwrap()
    );
}
