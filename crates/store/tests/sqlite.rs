//! The SQLite store: the conformance suite on a file and in memory, and what
//! only SQLite has (WAL, corrupt files, opening without creating).

use std::sync::Arc;

use orch_store::conformance;
use orch_store::{Durability, Error, JournalStore, RunStore, SqliteStore, Store};

fn temp_db() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("orchestrator.db");
    let url = format!("sqlite://{}", path.display());
    (dir, url)
}

#[tokio::test]
async fn conformance_on_a_file() {
    let (_dir, url) = temp_db();
    let store = SqliteStore::open(&url).await.expect("open");
    assert_eq!(store.backend(), "sqlite");
    conformance::run_all(&store).await;
}

#[tokio::test]
async fn conformance_in_memory() {
    let store = SqliteStore::open("sqlite::memory:").await.expect("open");
    conformance::run_all(&store).await;
}

#[tokio::test]
async fn stats_of_an_empty_store() {
    let (_dir, url) = temp_db();
    let store = SqliteStore::open(&url).await.expect("open");
    conformance::stats_of_an_empty_store(&store).await;
    let memory = SqliteStore::open("sqlite::memory:").await.expect("open");
    conformance::stats_of_an_empty_store(&memory).await;
}

#[tokio::test]
async fn in_memory_stores_are_separate() {
    let a = SqliteStore::open("sqlite::memory:").await.expect("open a");
    let b = SqliteStore::open("sqlite::memory:").await.expect("open b");
    let (state, events) = conformance::new_run(conformance::T0);
    a.create_run(&state, &events, conformance::T0)
        .await
        .unwrap();
    assert!(a.get_run(&state.run.id).await.is_ok());
    assert!(matches!(
        b.get_run(&state.run.id).await,
        Err(Error::RunNotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_on_a_file_have_one_winner() {
    let (_dir, url) = temp_db();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await.expect("open"));
    for _ in 0..5 {
        conformance::concurrent_claims(store.clone(), 32).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_of_many_runs_are_batched_correctly() {
    let (_dir, url) = temp_db();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await.expect("open"));
    conformance::concurrent_claims_of_many_runs(store, 40).await;
    let memory: Arc<dyn Store> =
        Arc::new(SqliteStore::open("sqlite::memory:").await.expect("open"));
    conformance::concurrent_claims_of_many_runs(memory, 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_from_two_processes_have_one_winner() {
    // Two stores on one file stand for two processes: they contend through
    // SQLite's file locks (and the busy timeout), not the in-process queue.
    let (_dir, url) = temp_db();
    let a: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await.expect("open a"));
    let b: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await.expect("open b"));
    let (state, events) = conformance::new_run(conformance::T0);
    let id = state.run.id.clone();
    a.create_run(&state, &events, conformance::T0)
        .await
        .unwrap();
    let mut queued = state.clone();
    let actions = orch_core::machine::apply(
        &mut queued,
        orch_core::Input::Reconcile,
        conformance::T0 + 1,
    )
    .unwrap();
    let emitted: Vec<_> = actions
        .into_iter()
        .filter_map(|a| match a {
            orch_core::Action::Emit(e) => Some(e),
            _ => None,
        })
        .collect();
    let diff = orch_core::StateDiff::between(&state, &queued);
    a.save_run(
        &id,
        0,
        &diff,
        &queued,
        &emitted,
        &[],
        conformance::T0 + 1,
        Durability::Durable,
    )
    .await
    .unwrap();
    let mut handles = Vec::new();
    for i in 0..16 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let id = id.clone();
        handles.push(tokio::spawn(async move {
            store
                .claim_task(&id, "requirements", 1, &format!("w{i}"), i64::MAX, 5)
                .await
                .expect("claim")
                .is_some()
        }));
    }
    let mut wins = 0;
    for h in handles {
        wins += usize::from(h.await.unwrap());
    }
    assert_eq!(wins, 1);
}

#[tokio::test]
async fn files_use_wal_and_memory_does_not() {
    let (_dir, url) = temp_db();
    let store = SqliteStore::open(&url).await.expect("open");
    assert_eq!(store.journal_mode().await.unwrap(), "wal");
    let memory = SqliteStore::open("sqlite::memory:").await.expect("open");
    assert_eq!(memory.journal_mode().await.unwrap(), "memory");
}

#[tokio::test]
async fn every_url_form_opens_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("forms.db");
    let (state, events) = conformance::new_run(conformance::T0);
    {
        let store = SqliteStore::open(path.to_str().unwrap())
            .await
            .expect("bare path");
        store
            .create_run(&state, &events, conformance::T0)
            .await
            .unwrap();
        store.close().await;
    }
    for url in [
        format!("sqlite://{}", path.display()),
        format!("sqlite:{}", path.display()),
    ] {
        let store = orch_store::connect(&url).await.expect(&url);
        assert_eq!(store.backend(), "sqlite");
        assert_eq!(store.get_run(&state.run.id).await.unwrap().id, state.run.id);
    }
}

/// Regression guard: a file that is not a database is reported, never overwritten.
#[tokio::test]
async fn a_corrupt_file_is_corrupt_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.db");
    let garbage: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &garbage).unwrap();
    let p = path.to_str().unwrap();
    for result in [
        SqliteStore::open(p).await,
        SqliteStore::open_existing(p).await,
    ] {
        match result {
            Err(Error::Corrupt(message)) => assert!(!message.is_empty()),
            other => panic!("expected Error::Corrupt, got {other:?}"),
        }
    }
    let text = path.with_extension("txt");
    std::fs::write(&text, "just some notes, not a database\n".repeat(40)).unwrap();
    assert!(matches!(
        SqliteStore::open(text.to_str().unwrap()).await,
        Err(Error::Corrupt(_))
    ));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        garbage,
        "the file is unchanged"
    );
    assert_eq!(
        std::fs::read_to_string(&text).unwrap(),
        "just some notes, not a database\n".repeat(40)
    );
}

#[tokio::test]
async fn opening_a_missing_file_for_reading_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.db");
    let url = format!("sqlite://{}", path.display());
    let err = SqliteStore::open_existing(&url).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("missing.db"), "{message}");
    assert!(message.contains("init-db"), "{message}");
    assert!(!path.exists(), "the file is not created");
    assert!(matches!(
        orch_store::connect_existing(&url).await,
        Err(Error::Connect { .. })
    ));

    // `open` creates it, after which `open_existing` works.
    SqliteStore::open(&url).await.expect("create").close().await;
    assert!(path.exists());
    SqliteStore::open_existing(&url)
        .await
        .expect("open existing");
}

#[tokio::test]
async fn a_missing_directory_is_a_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/orch.db");
    let err = SqliteStore::open(path.to_str().unwrap()).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let (_dir, url) = temp_db();
    let store = SqliteStore::open(&url).await.expect("open");
    store.migrate().await.expect("migrate again");
    store.close().await;
    SqliteStore::open(&url).await.expect("reopen");
}

#[tokio::test]
async fn connect_dispatches_on_the_scheme() {
    let store = orch_store::connect("sqlite::memory:")
        .await
        .expect("memory");
    assert_eq!(store.backend(), "sqlite");
    // PostgreSQL URLs go to the PostgreSQL backend (tests/postgres.rs);
    // a server that refuses is a connection error, not an unsupported URL.
    for url in [
        "postgres://nobody@127.0.0.1:1/orch",
        "postgresql://127.0.0.1:1/orch",
    ] {
        match orch_store::connect(url).await {
            Err(Error::Connect { .. }) => {}
            Err(other) => panic!("{url}: expected Connect, got {other:?}"),
            Ok(_) => panic!("{url}: nothing listens on port 1"),
        }
    }
    assert!(matches!(
        orch_store::connect("mysql://localhost/orch").await,
        Err(Error::UnsupportedUrl(_))
    ));
}

/// A second writer process holding the write lock makes writes wait, then
/// fail as `Locked` once the busy timeout has passed.
#[tokio::test]
async fn a_held_write_lock_is_reported_as_locked() {
    use sqlx::Connection;
    let (_dir, url) = temp_db();
    let store = SqliteStore::open(&url).await.expect("open");
    let (state, events) = conformance::new_run(conformance::T0);
    let mut other = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("connect");
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let err = store
        .create_run(&state, &events, conformance::T0)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Locked(_)), "{err:?}");
    assert!(started.elapsed() >= std::time::Duration::from_secs(4));
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    store
        .create_run(&state, &events, conformance::T0)
        .await
        .expect("the lock is gone");
}

/// A database made by an earlier release (migrations 1 to 6) keeps its LLM
/// call journal through migration 7, which rebuilds that table: every row,
/// in recording order, and calls recorded afterwards come after them.
#[tokio::test]
async fn an_older_database_keeps_its_journal_through_the_upgrade() {
    use sqlx::Connection;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

    let (dir, url) = temp_db();
    let earlier = dir.path().join("earlier-migrations");
    std::fs::create_dir(&earlier).unwrap();
    let all = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    for entry in std::fs::read_dir(&all).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.as_str() < "0007" {
            std::fs::copy(&path, earlier.join(&name)).unwrap();
        }
    }
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("orchestrator.db"))
        .create_if_missing(true);
    let mut old = SqliteConnection::connect_with(&options).await.unwrap();
    sqlx::migrate::Migrator::new(earlier.as_path())
        .await
        .unwrap()
        .run(&mut old)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO runs (id, goal, context, workflow, status, success_criteria, settings, \
         provider, created_at, updated_at) \
         VALUES ('r1', 'g', '{}', 'sdlc', 'RUNNING', '[]', '{}', 'scripted', 1, 1)",
    )
    .execute(&mut old)
    .await
    .unwrap();
    for (task, step) in [("t1", 0), ("t2", 0), ("t1", 1)] {
        sqlx::query(
            "INSERT INTO llm_calls (run_id, task_id, attempt, step, request_hash, provider, \
             model, request, response, created_at) \
             VALUES ('r1', ?1, 1, ?2, 'h-' || ?1 || ?2, 'scripted', 'scripted', '{}', '{}', 1)",
        )
        .bind(task)
        .bind(step)
        .execute(&mut old)
        .await
        .unwrap();
    }
    old.close().await.unwrap();

    let store = SqliteStore::open(&url).await.expect("upgrade");
    let run = orch_core::RunId("r1".to_string());
    let calls = store.list_llm_calls(&run).await.expect("list");
    let order: Vec<_> = calls.iter().map(|c| (c.task_id.as_str(), c.step)).collect();
    assert_eq!(order, [("t1", 0), ("t2", 0), ("t1", 1)]);
    let found = store
        .find_llm_call(&run, "t1", "h-t11")
        .await
        .expect("find")
        .expect("journaled before the upgrade");
    assert_eq!(found.step, 1);
    let mut next = found.clone();
    next.task_id = "t0".into();
    next.step = 0;
    store.record_llm_call(&next).await.expect("record");
    let calls = store.list_llm_calls(&run).await.expect("list");
    assert_eq!(
        calls.last().map(|c| c.task_id.as_str()),
        Some("t0"),
        "a call recorded after the upgrade comes after the earlier ones"
    );
    assert_eq!(calls.len(), 4);
}
