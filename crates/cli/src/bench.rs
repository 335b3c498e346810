//! Benchmark scenarios, run in process on the real store (a SQLite file in
//! WAL mode with `synchronous=NORMAL`, as shipped) with the scripted provider
//! at zero latency, so that what is measured is the orchestration itself:
//!
//! - S1: a sequential chain of N tasks — overhead per task;
//! - S2: one `sdlc` run end to end — median latency over several runs;
//! - S3: many `sdlc` runs submitted at once — tasks per second.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use orch_core::{
    ExpectedArtifact, Role, RunId, RunSettings, RunStatus, TaskSpec, ValidationRule, Workflow,
};
use orch_engine::{Engine, Runtime};
use orch_llm::ScriptedProvider;

use crate::config::Config;
use crate::wiring;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which scenario: s1, s2, s3 or all.
    #[arg(long, default_value = "all")]
    scenario: String,
    /// S1: tasks in the chain.
    #[arg(long, default_value_t = 40)]
    chain: usize,
    /// S1 and S2: measured repetitions (after one warm-up).
    #[arg(long, default_value_t = 20)]
    samples: usize,
    /// S3: runs submitted at once.
    #[arg(long, default_value_t = 500)]
    runs: usize,
    /// Workers per role in the process.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Database file (default: a fresh temporary file).
    #[arg(long)]
    db: Option<String>,
    #[arg(long)]
    json: bool,
}

fn chain_workflow(n: usize) -> Workflow {
    let roles = [
        Role::BusinessAnalyst,
        Role::ProjectManager,
        Role::TechLead,
        Role::BackendEngineer,
    ];
    let tasks = (0..n)
        .map(|i| TaskSpec {
            id: format!("t{i:03}"),
            role: roles[i % roles.len()],
            title: format!("step {i}"),
            instructions: "Write the next step.".into(),
            needs: if i == 0 {
                vec![]
            } else {
                vec![format!("t{:03}", i - 1)]
            },
            produces: vec![ExpectedArtifact {
                name: format!("a{i:03}"),
                kind: "document".into(),
            }],
            validation: vec![ValidationRule::ArtifactsPresent],
            gate: None,
            retries: 2,
            timeout_secs: None,
            dedupe_key: None,
        })
        .collect();
    Workflow {
        name: format!("chain{n}"),
        description: "benchmark chain".into(),
        success_criteria: vec![],
        tasks,
    }
}

fn settings() -> RunSettings {
    RunSettings {
        max_iterations: 10_000,
        ..RunSettings::default()
    }
}

async fn wait_all(engine: &Engine, ids: &[RunId]) -> Result<usize> {
    let mut tasks = 0;
    for id in ids {
        let run = engine
            .wait(
                id,
                Duration::from_millis(20),
                Some(Duration::from_secs(600)),
            )
            .await?;
        if run.status != RunStatus::Completed {
            bail!(
                "benchmark run {id} ended {}: {}",
                run.status,
                run.status_reason.unwrap_or_default()
            );
        }
        tasks += engine.deps().store.list_tasks(id).await?.len();
    }
    Ok(tasks)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

pub async fn run(cfg: &Config, a: BenchArgs) -> Result<ExitCode> {
    let dir = tempfile::tempdir().context("creating a temporary folder")?;
    let path =
        a.db.clone()
            .unwrap_or_else(|| dir.path().join("bench.db").display().to_string());
    let store = orch_store::connect(&format!("sqlite://{path}")).await?;
    // An empty fixture: every task gets the generic deterministic answer
    // (its expected artifacts; PASS for reviews).
    let provider = Arc::new(ScriptedProvider::from_yaml("bench", "roles: {}")?);
    let mut opts = wiring::engine_options(cfg);
    opts.concurrency = a.concurrency;
    opts.sweep_every = Duration::from_secs(1);
    let engine = wiring::engine(
        store,
        Arc::new(orch_broker::MemoryBroker::new()),
        provider,
        opts,
    )?;
    let runtime = Runtime::start(engine.clone(), &Role::SPECIALISTS, true);
    let sdlc = Workflow::builtin("sdlc").expect("built-in");
    let mut report = serde_json::Map::new();
    report.insert(
        "store".into(),
        "sqlite (file, WAL, synchronous=NORMAL)".into(),
    );
    report.insert("provider".into(), "scripted (zero latency)".into());
    report.insert("concurrency_per_role".into(), a.concurrency.into());
    let which = a.scenario.to_ascii_lowercase();
    let want = |s: &str| which == "all" || which == s;

    if want("s1") {
        let wf = chain_workflow(a.chain);
        let mut per_task = Vec::new();
        for i in 0..=a.samples {
            let t0 = Instant::now();
            let id = engine
                .submit("benchmark chain", serde_json::Value::Null, &wf, settings())
                .await?;
            wait_all(&engine, std::slice::from_ref(&id)).await?;
            if i > 0 {
                per_task.push(t0.elapsed().as_secs_f64() * 1000.0 / a.chain as f64);
            }
        }
        per_task.sort_by(f64::total_cmp);
        let med = percentile(&per_task, 0.5);
        if !a.json {
            println!(
                "S1 {}-task chain: overhead per task median {med:.3} ms (p90 {:.3} ms) over {} runs — target <= 0.5 ms",
                a.chain,
                percentile(&per_task, 0.9),
                per_task.len()
            );
        }
        report.insert("s1_ms_per_task_median".into(), med.into());
        report.insert(
            "s1_ms_per_task_p90".into(),
            percentile(&per_task, 0.9).into(),
        );
    }

    if want("s2") {
        let mut lat = Vec::new();
        for i in 0..=a.samples {
            let t0 = Instant::now();
            let id = engine
                .submit(
                    "Build a small CRUD app for managing TODO items",
                    serde_json::Value::Null,
                    &sdlc,
                    settings(),
                )
                .await?;
            wait_all(&engine, std::slice::from_ref(&id)).await?;
            if i > 0 {
                lat.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
        }
        lat.sort_by(f64::total_cmp);
        let med = percentile(&lat, 0.5);
        if !a.json {
            println!(
                "S2 one sdlc run end to end: median {med:.2} ms (p90 {:.2} ms) over {} runs — target <= 10 ms",
                percentile(&lat, 0.9),
                lat.len()
            );
        }
        report.insert("s2_ms_median".into(), med.into());
        report.insert("s2_ms_p90".into(), percentile(&lat, 0.9).into());
    }

    if want("s3") {
        let t0 = Instant::now();
        let mut ids = Vec::with_capacity(a.runs);
        for _ in 0..a.runs {
            ids.push(
                engine
                    .submit(
                        "Build a small CRUD app for managing TODO items",
                        serde_json::Value::Null,
                        &sdlc,
                        settings(),
                    )
                    .await?,
            );
        }
        let tasks = wait_all(&engine, &ids).await?;
        let secs = t0.elapsed().as_secs_f64();
        let tps = tasks as f64 / secs;
        if !a.json {
            println!(
                "S3 {} sdlc runs at once: {tasks} tasks in {secs:.2} s = {tps:.0} tasks/s — target >= 3,000",
                a.runs
            );
        }
        report.insert("s3_runs".into(), a.runs.into());
        report.insert("s3_tasks".into(), tasks.into());
        report.insert("s3_seconds".into(), secs.into());
        report.insert("s3_tasks_per_second".into(), tps.into());
    }
    runtime.shutdown().await;
    if a.json {
        crate::render::print_json(&report);
    }
    Ok(ExitCode::SUCCESS)
}
