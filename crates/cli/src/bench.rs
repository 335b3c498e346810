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

/// Options of `orchestrator bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which scenario: s1, s2, s3, s4 (only with --distributed) or all.
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
    /// Distributed mode: the store at DATABASE_URL, Redis queues at
    /// REDIS_URL, and `--workers` worker processes; adds S4 (a worker killed
    /// mid-task: time until the task is done).
    #[arg(long)]
    distributed: bool,
    /// Worker processes in distributed mode.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Print the report as JSON instead of text.
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

/// Worker processes started by the distributed benchmark; killed on drop.
struct Workers {
    children: Vec<std::process::Child>,
    env: Vec<(String, String)>,
}

impl Workers {
    fn spawn(&mut self, extra: &[(&str, &str)]) -> Result<()> {
        let exe = std::env::current_exe().context("finding the orchestrator binary")?;
        let mut cmd = std::process::Command::new(exe);
        cmd.args(["worker"]).stdout(std::process::Stdio::null());
        // ORCH_BENCH_WORKER_LOG=FILE: the workers' logs (ORCH_LOG sets the
        // level), appended to FILE; otherwise discarded.
        match std::env::var_os("ORCH_BENCH_WORKER_LOG") {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("opening {}", path.to_string_lossy()))?;
                cmd.stderr(file);
            }
            None => {
                cmd.stderr(std::process::Stdio::null());
            }
        }
        for (k, v) in self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(extra.iter().copied())
        {
            cmd.env(k, v);
        }
        self.children
            .push(cmd.spawn().context("starting a worker process")?);
        Ok(())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub async fn run(cfg: &Config, a: BenchArgs) -> Result<ExitCode> {
    let dir = tempfile::tempdir().context("creating a temporary folder")?;
    // An empty fixture: every task gets the generic deterministic answer
    // (its expected artifacts; PASS for reviews).
    let fixture = dir.path().join("bench-fixture.yaml");
    std::fs::write(&fixture, "roles: {}\n").context("writing the benchmark fixture")?;
    let provider = Arc::new(ScriptedProvider::from_file(&fixture)?);
    let mut opts = wiring::engine_options(cfg);
    opts.concurrency = a.concurrency;
    opts.sweep_every = Duration::from_secs(1);
    let mut report = serde_json::Map::new();
    let mut workers = Workers {
        children: Vec::new(),
        env: Vec::new(),
    };
    let (engine, runtime) = if a.distributed {
        let Some(redis) = cfg.redis_url.clone() else {
            bail!("--distributed needs REDIS_URL (and a shared DATABASE_URL, e.g. postgres://...)");
        };
        let prefix = format!("bench:{}:", std::process::id());
        let store = wiring::open_store(cfg).await?;
        let broker = orch_broker::connect(Some(&redis), &prefix).await?;
        report.insert(
            "store".into(),
            format!(
                "{} ({})",
                store.backend(),
                wiring::redact_url(&cfg.database_url)
            )
            .into(),
        );
        report.insert(
            "queues".into(),
            format!("redis, {} worker processes", a.workers).into(),
        );
        workers.env = vec![
            ("QUEUE_PREFIX".into(), prefix),
            ("LLM_PROVIDER".into(), "scripted".into()),
            ("SCRIPTED_FIXTURE".into(), fixture.display().to_string()),
            ("SCRIPTED_LATENCY_MS".into(), "0".into()),
            ("WORKER_CONCURRENCY".into(), a.concurrency.to_string()),
        ];
        for _ in 0..a.workers {
            workers.spawn(&[])?;
        }
        let engine = wiring::engine(store, broker, provider, opts)?;
        let runtime = Runtime::start(engine.clone(), &[], true);
        (engine, runtime)
    } else {
        let path =
            a.db.clone()
                .unwrap_or_else(|| dir.path().join("bench.db").display().to_string());
        let store = orch_store::connect(&format!("sqlite://{path}")).await?;
        report.insert(
            "store".into(),
            "sqlite (file, WAL, synchronous=NORMAL)".into(),
        );
        report.insert("queues".into(), "in-process, workers in process".into());
        let engine = wiring::engine(
            store,
            Arc::new(orch_broker::MemoryBroker::new()),
            provider,
            opts,
        )?;
        let runtime = Runtime::start(engine.clone(), &Role::SPECIALISTS, true);
        (engine, runtime)
    };
    let sdlc = Workflow::builtin("sdlc").expect("built-in");
    report.insert("provider".into(), "scripted (zero latency)".into());
    report.insert("concurrency_per_role".into(), a.concurrency.into());
    // The issues' targets: embedded (SQLite, in process) and distributed
    // (PostgreSQL + Redis, worker processes).
    let (t1, t2, t3) = if a.distributed {
        ("2 ms", "25 ms", "1,000")
    } else {
        ("0.5 ms", "10 ms", "3,000")
    };
    let which = a.scenario.to_ascii_lowercase();
    let want = |s: &str| which == "all" || which == s;

    if want("s1") {
        let wf = chain_workflow(a.chain);
        let mut per_task = Vec::new();
        for i in 0..=a.samples {
            let t0 = Instant::now();
            let id = engine
                .submit(
                    "benchmark chain",
                    serde_json::Value::Null,
                    &wf,
                    RunSettings {
                        // The chain has no review tasks.
                        require_code_review: false,
                        require_security_review: false,
                        ..settings()
                    },
                )
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
                "S1 {}-task chain: overhead per task median {med:.3} ms (p90 {:.3} ms) over {} runs — target <= {t1}",
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
                "S2 one sdlc run end to end: median {med:.2} ms (p90 {:.2} ms) over {} runs — target <= {t2}",
                percentile(&lat, 0.9),
                lat.len()
            );
        }
        report.insert("s2_ms_median".into(), med.into());
        report.insert("s2_ms_p90".into(), percentile(&lat, 0.9).into());
    }

    if want("s3") {
        let t0 = Instant::now();
        // At once: all submitted together, as that many clients would, not
        // one after another (each submit returns once its run is committed,
        // so a loop measures that latency 500 times over).
        let ids = futures_util::future::try_join_all((0..a.runs).map(|_| {
            engine.submit(
                "Build a small CRUD app for managing TODO items",
                serde_json::Value::Null,
                &sdlc,
                settings(),
            )
        }))
        .await?;
        let tasks = wait_all(&engine, &ids).await?;
        let secs = t0.elapsed().as_secs_f64();
        let tps = tasks as f64 / secs;
        if !a.json {
            println!(
                "S3 {} sdlc runs at once: {tasks} tasks in {secs:.2} s = {tps:.0} tasks/s — target >= {t3}",
                a.runs
            );
        }
        report.insert("s3_runs".into(), a.runs.into());
        report.insert("s3_tasks".into(), tasks.into());
        report.insert("s3_seconds".into(), secs.into());
        report.insert("s3_tasks_per_second".into(), tps.into());
    }
    if want("s4") && a.distributed {
        let secs = s4(&engine, &mut workers, &sdlc).await?;
        if !a.json {
            println!(
                "S4 worker SIGKILL mid-task -> task done: {secs:.2} s (lease TTL {:.1} s) — target <= lease TTL + 1 s",
                engine.options().lease_ttl.as_secs_f64()
            );
        }
        report.insert("s4_seconds".into(), secs.into());
        report.insert(
            "s4_lease_ttl_seconds".into(),
            engine.options().lease_ttl.as_secs_f64().into(),
        );
    }
    runtime.shutdown().await;
    drop(workers);
    if a.json {
        crate::render::write_json(&report)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// S4: every worker stopped; a slow worker claims the first task and is
/// killed; a fresh worker is already waiting. Seconds from the kill until the
/// task has succeeded.
async fn s4(engine: &Engine, workers: &mut Workers, sdlc: &Workflow) -> Result<f64> {
    for mut c in workers.children.drain(..) {
        let _ = c.kill();
        let _ = c.wait();
    }
    workers.spawn(&[("SCRIPTED_LATENCY_MS", "600000")])?;
    let store = engine.deps().store.clone();
    let id = engine
        .submit("benchmark S4", serde_json::Value::Null, sdlc, settings())
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tasks = store.list_tasks(&id).await?;
        if tasks
            .iter()
            .any(|t| t.status == orch_core::TaskStatus::Running)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("S4: the slow worker never claimed a task");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    workers.spawn(&[])?;
    tokio::time::sleep(Duration::from_millis(500)).await; // the fresh worker is up
    let mut victim = workers.children.remove(0);
    let t0 = Instant::now();
    let killed = victim.kill();
    let _ = victim.wait();
    killed.context("killing the slow worker")?;
    loop {
        let tasks = store.list_tasks(&id).await?;
        if tasks
            .iter()
            .find(|t| t.id == "requirements")
            .is_some_and(|t| t.status == orch_core::TaskStatus::Succeeded)
        {
            return Ok(t0.elapsed().as_secs_f64());
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("S4: the killed task was not done within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
