//! Store throughput with the engine's write pattern. Ignored by default (a
//! benchmark, not a check); run it with
//! `cargo test --release -p orch-store --test throughput -- --ignored --nocapture`
//! (`BENCH_URL=sqlite::memory:` to take the disk out).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use orch_core::{EventKind, NewArtifact, NewEvent, StateDiff, TaskChange, TaskStatus, Usage};
use orch_store::conformance::{T0, new_run};
use orch_store::{Durability, Fence, SqliteStore, Store, TaskOutcome};

/// Nanoseconds spent in each operation, summed over all tasks.
static NANOS: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];
const OPS: [&str; 5] = [
    "load_run",
    "save_run (queue)",
    "claim_task",
    "complete_task",
    "save_run (reconcile)",
];

fn add(op: usize, started: Instant) {
    NANOS[op].fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
}

/// One run of `tasks` independent tasks. Per task: the engine loads the run
/// and queues the task (save_run), a worker claims it and completes it with
/// one artifact and two events, the engine saves again with one event.
async fn drive(store: Arc<dyn Store>, tasks: usize) -> usize {
    let (mut state, events) = new_run(T0);
    let template = state.tasks[0].clone();
    state.tasks = (0..tasks)
        .map(|i| {
            let mut t = template.clone();
            t.id = format!("t{i}");
            t.needs.clear();
            t
        })
        .collect();
    store.create_run(&state, &events, T0).await.unwrap();
    let id = state.run.id.clone();
    let mut version = 0;
    for i in 0..tasks {
        let now = T0 + i as i64;
        let t = Instant::now();
        let before = store.load_run(&id).await.unwrap();
        add(0, t);
        let mut queued = before.tasks[i].clone();
        queued.status = TaskStatus::Queued;
        queued.attempt = 1;
        queued.queued_at = Some(now);
        let mut after = before.clone();
        after.run.iterations += 1;
        let diff = StateDiff {
            run_changed: true,
            changed_tasks: vec![TaskChange {
                task: queued.clone(),
                expected_status: TaskStatus::Pending,
                expected_attempt: 0,
            }],
            ..StateDiff::default()
        };
        let queued_event = NewEvent::task(
            EventKind::TaskQueued,
            &queued.id,
            "queued on q_ba (attempt 1)",
        )
        .with_data(serde_json::json!({"queue": "q_ba", "attempt": 1}));
        let t = Instant::now();
        version = store
            .save_run(
                &id,
                version,
                &diff,
                &after,
                &[queued_event],
                &[],
                now,
                Durability::Durable,
            )
            .await
            .unwrap();
        add(1, t);
        let t = Instant::now();
        store
            .claim_task(&id, &queued.id, 1, "worker-1", now + 30_000, now)
            .await
            .unwrap()
            .expect("claimed");
        add(2, t);
        let outcome = TaskOutcome {
            status: TaskStatus::Succeeded,
            summary: Some("done".into()),
            verdict: None,
            error: None,
            retryable: true,
            artifacts: vec![NewArtifact {
                name: format!("a{i}"),
                kind: "requirements".into(),
                path: None,
                content: "x".repeat(2000),
                metadata: serde_json::Value::Null,
            }],
            events: vec![
                NewEvent::task(EventKind::ArtifactWritten, &queued.id, "artifact written"),
                NewEvent::task(EventKind::TaskSucceeded, &queued.id, "succeeded"),
            ],
            usage: Usage {
                input_tokens: 100,
                output_tokens: 100,
                cost_usd: 0.01,
                ..Usage::default()
            },
            llm_calls: Vec::new(),
        };
        let fence = Fence {
            run_id: id.clone(),
            task_id: queued.id.clone(),
            attempt: 1,
            owner: "worker-1".into(),
        };
        let t = Instant::now();
        store.complete_task(&fence, &outcome, now).await.unwrap();
        add(3, t);
        let t = Instant::now();
        version = store
            .save_run(
                &id,
                version,
                &StateDiff::default(),
                &after,
                &[NewEvent::run(EventKind::Checkpoint, "reconciled")],
                &[],
                now,
                Durability::Durable,
            )
            .await
            .unwrap();
        add(4, t);
    }
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn throughput() {
    let dir = tempfile::tempdir().unwrap();
    let url = std::env::var("BENCH_URL")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await.unwrap());
    for runs in [1usize, 1, 8, 32] {
        let started = Instant::now();
        let handles: Vec<_> = (0..runs)
            .map(|_| tokio::spawn(drive(store.clone(), 10)))
            .collect();
        let mut tasks = 0;
        for h in handles {
            tasks += h.await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{runs} concurrent runs: {tasks} tasks in {secs:.3} s = {:.0} tasks/s",
            tasks as f64 / secs
        );
        for (i, op) in OPS.iter().enumerate() {
            let nanos = NANOS[i].swap(0, Ordering::Relaxed);
            println!(
                "  {op}: {:.0} us per task",
                nanos as f64 / 1000.0 / tasks as f64
            );
        }
    }
}
