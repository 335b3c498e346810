//! The floor under every SQLite store call: the time of one trivial
//! statement through sqlx (whose SQLite connections each run on a thread of
//! their own, so a call is two thread hand-offs), on a current-thread
//! runtime as the `orchestrator` binary uses, against a fresh WAL file with
//! the store's durability (`synchronous=NORMAL`).
//!
//! ```bash
//! cargo run --release -p orch-store --example sqlite_round_trip
//! ```
//!
//! Figures are in docs/benchmarks.md.

use std::time::Instant;

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};

const CALLS: u32 = 2_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("round_trip.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
        let mut conn = SqliteConnection::connect_with(&options)
            .await
            .expect("open");
        sqlx::raw_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'x');")
            .execute(&mut conn)
            .await
            .expect("schema");
        for round in 1..=3 {
            let started = Instant::now();
            for _ in 0..CALLS {
                sqlx::query("SELECT 1")
                    .fetch_optional(&mut conn)
                    .await
                    .expect("select 1");
            }
            let select = started.elapsed() / CALLS;
            let started = Instant::now();
            for _ in 0..CALLS {
                sqlx::query("SELECT v FROM t WHERE id = ?1")
                    .bind(1_i64)
                    .fetch_optional(&mut conn)
                    .await
                    .expect("select by key");
            }
            let by_key = started.elapsed() / CALLS;
            let started = Instant::now();
            for i in 0..CALLS {
                sqlx::query("UPDATE t SET v = ?1 WHERE id = 1")
                    .bind(i64::from(i))
                    .execute(&mut conn)
                    .await
                    .expect("update");
            }
            let update = started.elapsed() / CALLS;
            println!(
                "round {round}: SELECT 1 {select:?}/call, SELECT by key {by_key:?}/call, UPDATE + commit {update:?}/call"
            );
        }
    });
}
