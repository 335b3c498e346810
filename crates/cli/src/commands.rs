//! One function per command.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use orch_core::machine::Input;
use orch_core::{GateKind, Role, RunId, RunStatus, Workflow};
use orch_engine::{Engine, Runtime};
use orch_store::{EventQuery, RunFilter, Store};

use crate::config::Config;
use crate::wiring::{self, NoProvider};
use crate::{
    AnswerArgs, ArtifactsArgs, BudgetArgs, CancelArgs, Command, DlqCommand, EventsArgs, ExportArgs,
    GateCommand, ListArgs, RunArgs, RunRef, ServeArgs, TickArgs, TokenCommand, WorkerArgs,
    WorkflowCommand, progress, render,
};

pub async fn dispatch(command: Command) -> Result<ExitCode> {
    if let Command::Workflows(cmd) = command {
        return workflows(cmd);
    }
    let cfg = Config::from_env()?;
    match command {
        Command::InitDb(a) => init_db(&cfg, a.json).await,
        Command::Run(a) => run(&cfg, a).await,
        Command::Status(a) => status(&cfg, a).await,
        Command::List(a) => list(&cfg, a).await,
        Command::Events(a) => events(&cfg, a).await,
        Command::Artifacts(a) => artifacts(&cfg, a).await,
        Command::Channels(a) => crate::channels::channels(&cfg, a).await,
        Command::Tick(a) => tick(&cfg, a).await,
        Command::Gate(GateCommand::Waive {
            run,
            gate,
            reason,
            provider,
            quiet,
            json,
        }) => {
            let gate: GateKind = gate.parse()?;
            let input = Input::WaiveGate { gate, reason };
            let provider = provider.provider.as_deref();
            human_input(&cfg, &run, input, provider, quiet, json).await
        }
        Command::Answer(AnswerArgs {
            run,
            text,
            provider,
            quiet,
            json,
        }) => {
            if text.trim().is_empty() {
                bail!("the answer is empty; give the guidance as text");
            }
            human_input(
                &cfg,
                &run,
                Input::Answer { text },
                provider.provider.as_deref(),
                quiet,
                json,
            )
            .await
        }
        Command::Budget(BudgetArgs {
            run,
            usd,
            tokens,
            provider,
            quiet,
            json,
        }) => {
            check_budget(usd, tokens)?;
            human_input(
                &cfg,
                &run,
                Input::RaiseBudget { usd, tokens },
                provider.provider.as_deref(),
                quiet,
                json,
            )
            .await
        }
        Command::Cancel(a) => cancel(&cfg, a).await,
        Command::Dlq(cmd) => dlq(&cfg, cmd).await,
        Command::Export(a) => export(&cfg, a).await,
        Command::Replay(a) => crate::replay::replay(&cfg, a).await,
        Command::Bench(a) => crate::bench::run(&cfg, a).await,
        Command::Serve(a) => serve(&cfg, a).await,
        Command::Worker(a) => worker(&cfg, a).await,
        Command::Token(cmd) => tokens(&cfg, cmd).await,
        Command::Workflows(_) => unreachable!("handled above"),
    }
}

/// Budget limits must be positive numbers.
fn check_budget(usd: Option<f64>, tokens: Option<i64>) -> Result<()> {
    orch_core::RunSettings::check_budget(usd, tokens).map_err(anyhow::Error::msg)
}

fn parse_run_id(s: &str) -> Result<RunId> {
    s.parse::<RunId>()
        .with_context(|| format!("{s:?} is not a run id; list runs with `orchestrator list`"))
}

/// Resolve a possibly abbreviated run id (a unique prefix) against the store.
pub async fn resolve_run(store: &Arc<dyn Store>, s: &str) -> Result<RunId> {
    let id = parse_run_id(s)?;
    match store.get_run(&id).await {
        Ok(_) => Ok(id),
        Err(orch_store::Error::RunNotFound(_)) if s.len() >= 4 => {
            let runs = store
                .list_runs(&RunFilter {
                    status: None,
                    limit: 0,
                    offset: 0,
                })
                .await?;
            let hits: Vec<_> = runs
                .into_iter()
                .filter(|r| r.id.as_str().starts_with(s))
                .collect();
            match hits.len() {
                1 => Ok(hits[0].id.clone()),
                0 => bail!("no run {s}; list runs with `orchestrator list`"),
                n => bail!("{n} runs start with {s}; give more of the id"),
            }
        }
        Err(e) => Err(e.into()),
    }
}

async fn init_db(cfg: &Config, json: bool) -> Result<ExitCode> {
    let created = orch_store::create_database_if_missing(&cfg.database_url)
        .await
        .with_context(|| {
            format!(
                "creating the database of DATABASE_URL={}",
                wiring::redact_url(&cfg.database_url)
            )
        })?;
    if created && !json {
        render::outln!("created database {}", wiring::redact_url(&cfg.database_url))?;
    }
    let store = wiring::open_store(cfg).await?;
    if json {
        render::write_json(
            &serde_json::json!({"database": wiring::redact_url(&cfg.database_url), "backend": store.backend(), "created": created, "ok": true}),
        )?;
    } else {
        render::outln!(
            "database ready: {} ({})",
            wiring::redact_url(&cfg.database_url),
            store.backend()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Load a workflow: a built-in name, or a file.
pub fn load_workflow(spec: Option<&str>) -> Result<Workflow> {
    let spec = spec.unwrap_or("sdlc");
    if let Some(wf) = Workflow::builtin(spec) {
        return Ok(wf);
    }
    let path = Path::new(spec);
    if !path.exists() {
        bail!(
            "workflow {spec:?} is neither a built-in workflow ({}) nor a file",
            orch_core::dsl::BUILTIN_WORKFLOWS.join(", ")
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading workflow file {spec}"))?;
    Ok(Workflow::parse(spec, &text)?)
}

fn parse_context(raw: Option<&str>) -> serde_json::Value {
    match raw {
        None => serde_json::Value::Null,
        Some(t) => {
            serde_json::from_str(t).unwrap_or_else(|_| serde_json::Value::String(t.to_string()))
        }
    }
}

async fn run(cfg: &Config, a: RunArgs) -> Result<ExitCode> {
    // Everything that can be refused is checked before anything is created.
    check_budget(a.budget_usd, a.budget_tokens)?;
    let flag = a.provider.provider.as_deref();
    let provider = match &a.resume {
        // Checked once the run is found: it may name its own provider.
        Some(_) => None,
        None => Some(wiring::choose_provider(cfg, flag)?),
    };
    let workflow = match &a.resume {
        Some(_) => None,
        None => Some(load_workflow(a.workflow.as_deref())?),
    };
    let store = wiring::open_store(cfg).await?;
    let resumed = match &a.resume {
        Some(r) => Some(resolve_run(&store, r).await?),
        None => None,
    };
    let provider = match (provider, &resumed) {
        (Some(p), _) => p,
        (None, Some(id)) => {
            let run = store.get_run(id).await?;
            wiring::provider_for_run(cfg, flag, id.as_str(), &run.provider)?
        }
        (None, None) => unreachable!("a provider is chosen when not resuming"),
    };
    let engine = wiring::engine(
        store.clone(),
        wiring::open_broker(cfg).await?,
        provider,
        wiring::engine_options(cfg),
    )?;
    let run_id = match (resumed, workflow) {
        (Some(id), _) => id,
        (None, Some(wf)) => {
            let goal = a.goal.as_deref().unwrap_or_default().trim().to_string();
            if goal.is_empty() {
                bail!(
                    "the goal is empty; say what to build, e.g. \"Build a small CRUD app for managing TODO items\""
                );
            }
            engine
                .create(
                    &goal,
                    parse_context(a.context.as_deref()),
                    &wf,
                    orch_core::RunSettings {
                        budget_usd: a.budget_usd,
                        budget_tokens: a.budget_tokens,
                        ..cfg.run_settings()
                    },
                )
                .await?
        }
        (None, None) => unreachable!("a workflow is loaded when not resuming"),
    };
    if a.detach {
        let run = store.get_run(&run_id).await?;
        if a.json {
            render::write_json(&run)?;
        } else {
            render::outln!(
                "run {run_id} recorded (PENDING); start it with: orchestrator tick {run_id}"
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    drive(&engine, &run_id, a.quiet, a.json).await
}

/// Run the engine and every worker in this process until the run finishes
/// or needs input, showing progress.
async fn drive(engine: &Engine, run_id: &RunId, quiet: bool, json: bool) -> Result<ExitCode> {
    let store = engine.deps().store.clone();
    let show = !quiet && !json;
    let started = std::time::Instant::now();
    let run = follow_run(engine, run_id, show).await?;
    let state = store.load_run(run_id).await?;
    if json {
        render::write_json(&render::status_json(
            &state,
            &store.list_dead_letters(Some(run_id), false).await?,
        ))?;
    } else {
        progress::footer(&state, started.elapsed())?;
    }
    Ok(exit_for(run.status))
}

/// Take the run's first step and follow it (with every worker in this
/// process unless the broker is shared) until it finishes or needs input,
/// showing progress if `show`. Returns the run as it ended.
pub async fn follow_run(engine: &Engine, run_id: &RunId, show: bool) -> Result<orch_core::Run> {
    let store = engine.deps().store.clone();
    let run = store.get_run(run_id).await?;
    if show {
        progress::header(&run, engine.deps().provider.as_ref())?;
    }
    // A run that is continued shows what happens from now on, not again
    // what happened before.
    let mut after = 0;
    if run.status != RunStatus::Pending {
        let earlier = store
            .list_events(run_id, orch_store::EventQuery::default())
            .await?;
        after = earlier.last().map_or(0, |e| e.seq);
        if show && !earlier.is_empty() {
            render::outln!(
                "continuing after {} earlier events (`orchestrator events {run_id}` shows them)",
                earlier.len()
            )?;
        }
    }
    // In process, this process is the engine and every worker. With a shared
    // broker, `orchestrator serve` and `orchestrator worker` do the work and
    // this process only takes the first step and follows.
    let local = engine.deps().broker.backend() == "in-process";
    let runtime = local.then(|| Runtime::start(engine.clone(), &Role::SPECIALISTS, true));
    if !local && show {
        render::outln!(
            "queues: {} — progress needs `orchestrator serve` and workers running",
            engine.deps().broker.backend()
        )?;
    }
    engine.tick(run_id).await?;
    let follower = progress::Follower::new(store.clone(), run_id.clone(), show, after, !local);
    let result = follower.follow(engine).await;
    if let Some(runtime) = runtime {
        runtime.shutdown().await;
    }
    result
}

pub fn exit_for(status: RunStatus) -> ExitCode {
    match status {
        RunStatus::Completed => ExitCode::SUCCESS,
        RunStatus::NeedsInput => ExitCode::from(3),
        RunStatus::Failed | RunStatus::Cancelled => ExitCode::from(4),
        _ => ExitCode::SUCCESS,
    }
}

async fn status(cfg: &Config, a: RunRef) -> Result<ExitCode> {
    let store = wiring::open_existing_store(cfg).await?;
    let id = resolve_run(&store, &a.run).await?;
    let state = store.load_run(&id).await?;
    let dead = store.list_dead_letters(Some(&id), false).await?;
    if a.json {
        render::write_json(&render::status_json(&state, &dead))?;
    } else {
        render::write_status(&state, &dead)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(cfg: &Config, a: ListArgs) -> Result<ExitCode> {
    let status = a
        .status
        .as_deref()
        .map(str::parse::<RunStatus>)
        .transpose()?;
    let store = wiring::open_existing_store(cfg).await?;
    let runs = store
        .list_runs(&RunFilter {
            status,
            limit: a.limit,
            offset: a.offset,
        })
        .await?;
    if a.json {
        render::write_json(&runs)?;
    } else {
        render::write_runs(&runs)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn events(cfg: &Config, a: EventsArgs) -> Result<ExitCode> {
    let store = wiring::open_existing_store(cfg).await?;
    let id = resolve_run(&store, &a.run).await?;
    let events = store
        .list_events(
            &id,
            EventQuery {
                after_seq: a.after,
                limit: a.limit,
                kind: None,
            },
        )
        .await?;
    if a.json {
        render::write_json(&events)?;
    } else {
        for e in &events {
            render::write_event(e, a.verbose)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn artifacts(cfg: &Config, a: ArtifactsArgs) -> Result<ExitCode> {
    let store = wiring::open_existing_store(cfg).await?;
    let id = resolve_run(&store, &a.run).await?;
    let list = store.list_artifacts(&id, !a.all_versions).await?;
    if a.json {
        if a.content {
            render::write_json(&list)?;
        } else {
            let slim: Vec<_> = list
                .iter()
                .map(|x| {
                    serde_json::json!({"name": x.name, "version": x.version, "kind": x.kind, "path": x.path,
                        "task_id": x.task_id, "attempt": x.attempt, "bytes": x.content.len(), "created_at": x.created_at})
                })
                .collect();
            render::write_json(&slim)?;
        }
    } else {
        render::write_artifacts(&list, a.content)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn tick(cfg: &Config, a: TickArgs) -> Result<ExitCode> {
    let store = wiring::open_existing_store(cfg).await?;
    let id = resolve_run(&store, &a.run).await?;
    if a.once {
        let engine = wiring::engine(
            store.clone(),
            wiring::open_broker(cfg).await?,
            Arc::new(NoProvider),
            wiring::engine_options(cfg),
        )?;
        let out = engine.tick(&id).await?;
        if a.json {
            render::write_json(
                &serde_json::json!({"run_id": id, "status": out.status, "dispatched": out.dispatched, "events": out.events}),
            )?;
        } else {
            render::outln!(
                "run {id}: {} ({} task(s) queued, {} event(s))",
                out.status,
                out.dispatched,
                out.events
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let run = store.get_run(&id).await?;
    let provider = wiring::provider_for_run(
        cfg,
        a.provider.provider.as_deref(),
        id.as_str(),
        &run.provider,
    )?;
    let engine = wiring::engine(
        store.clone(),
        wiring::open_broker(cfg).await?,
        provider,
        wiring::engine_options(cfg),
    )?;
    if run.status.is_terminal() {
        if a.json {
            render::write_json(&run)?;
        } else {
            render::outln!("run {id} is already {}", run.status)?;
        }
        return Ok(exit_for(run.status));
    }
    if run.status == RunStatus::NeedsInput {
        bail!(
            "run {id} waits for input: {}. Answer it (orchestrator answer {id} TEXT), waive a gate, or cancel it",
            run.status_reason.unwrap_or_default()
        );
    }
    drive(&engine, &id, a.quiet, a.json).await
}

/// The engine that applies a person's input to `run_id`, and whether it can
/// continue the run afterwards: only with a provider chosen (`flag`,
/// `LLM_PROVIDER`) or named by the run itself; without one, model calls
/// fail and say how to choose.
async fn input_engine(
    cfg: &Config,
    store: &Arc<dyn Store>,
    run_id: &RunId,
    flag: Option<&str>,
) -> Result<(Engine, bool)> {
    let recorded = store.get_run(run_id).await?.provider;
    let chosen = wiring::provider_for_run(cfg, flag, run_id.as_str(), &recorded).ok();
    let continues = chosen.is_some();
    let engine = wiring::engine(
        store.clone(),
        wiring::open_broker(cfg).await?,
        chosen.unwrap_or_else(|| Arc::new(NoProvider)),
        wiring::engine_options(cfg),
    )?;
    Ok((engine, continues))
}

async fn human_input(
    cfg: &Config,
    run: &str,
    input: Input,
    provider: Option<&str>,
    quiet: bool,
    json: bool,
) -> Result<ExitCode> {
    let store = wiring::open_existing_store(cfg).await?;
    let id = resolve_run(&store, run).await?;
    let (engine, continues) = input_engine(cfg, &store, &id, provider).await?;
    let out = engine.apply_input(&id, input).await?;
    match continues {
        true if out.status == RunStatus::Running => {
            if !json && !quiet {
                render::outln!("recorded; run {id} is RUNNING again")?;
            }
            drive(&engine, &id, quiet, json).await
        }
        _ => {
            if json {
                render::write_json(&serde_json::json!({"run_id": id, "status": out.status}))?;
            } else {
                render::outln!("recorded; run {id} is {}", out.status)?;
                if out.status == RunStatus::Running {
                    render::outln!("continue it with: orchestrator tick {id} --provider NAME")?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn cancel(cfg: &Config, a: CancelArgs) -> Result<ExitCode> {
    let store = wiring::open_existing_store(cfg).await?;
    let id = resolve_run(&store, &a.run).await?;
    let engine = wiring::engine(
        store,
        wiring::open_broker(cfg).await?,
        Arc::new(NoProvider),
        wiring::engine_options(cfg),
    )?;
    let out = engine
        .apply_input(&id, Input::Cancel { reason: a.reason })
        .await?;
    if a.json {
        render::write_json(&serde_json::json!({"run_id": id, "status": out.status}))?;
    } else {
        render::outln!("run {id} is {}", out.status)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn dlq(cfg: &Config, cmd: DlqCommand) -> Result<ExitCode> {
    let store = wiring::open_existing_store(cfg).await?;
    match cmd {
        DlqCommand::List { run, all, json } => {
            let run = match run {
                Some(r) => Some(resolve_run(&store, &r).await?),
                None => None,
            };
            let letters = store.list_dead_letters(run.as_ref(), all).await?;
            if json {
                render::write_json(&letters)?;
            } else {
                render::write_dead_letters(&letters)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Replay { id, provider, json } => {
            let letter = store
                .list_dead_letters(None, false)
                .await?
                .into_iter()
                .find(|l| l.id == id)
                .with_context(|| {
                    format!("no dead letter {id} waiting for replay; see `orchestrator dlq list`")
                })?;
            let flag = provider.provider.as_deref();
            let (engine, continues) = input_engine(cfg, &store, &letter.run_id, flag).await?;
            let out = engine.replay_dead_letter(id).await?;
            if continues && out.status == RunStatus::Running {
                return drive(&engine, &letter.run_id, false, json).await;
            }
            if json {
                render::write_json(
                    &serde_json::json!({"run_id": letter.run_id, "task_id": letter.task_id, "status": out.status}),
                )?;
            } else {
                render::outln!(
                    "task {} of run {} replayed; run is {}",
                    letter.task_id,
                    letter.run_id,
                    out.status
                )?;
                render::outln!(
                    "continue it with: orchestrator tick {} --provider NAME",
                    letter.run_id
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn export(cfg: &Config, a: ExportArgs) -> Result<ExitCode> {
    let store = wiring::open_existing_store(cfg).await?;
    let id = resolve_run(&store, &a.run).await?;
    let list = store.list_artifacts(&id, true).await?;
    let out = Path::new(&a.out);
    let mut written = Vec::new();
    for art in &list {
        let rel = match &art.path {
            Some(p) => orch_tools::sanitize_path(p).with_context(|| {
                format!(
                    "artifact {} has an unsafe path {p:?}; not exported",
                    art.name
                )
            })?,
            None => format!("docs/{}.md", art.name),
        };
        let dest = out.join(&rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&dest, &art.content)
            .with_context(|| format!("writing {}", dest.display()))?;
        written.push(rel);
    }
    if a.json {
        render::write_json(&serde_json::json!({"run_id": id, "out": a.out, "files": written}))?;
    } else {
        for f in &written {
            render::outln!("{}", out.join(f).display())?;
        }
        render::outln!("{} file(s) written to {}", written.len(), out.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn workflows(cmd: WorkflowCommand) -> Result<ExitCode> {
    match cmd {
        WorkflowCommand::List { json } => {
            let all: Vec<Workflow> = orch_core::dsl::BUILTIN_WORKFLOWS
                .iter()
                .filter_map(|n| Workflow::builtin(n))
                .collect();
            if json {
                render::write_json(&all)?;
            } else {
                for wf in &all {
                    render::outln!(
                        "{:<12} {} task(s)  {}",
                        wf.name,
                        wf.tasks.len(),
                        wf.description
                    )?;
                }
            }
        }
        WorkflowCommand::Show { name, json: true } => {
            render::write_json(&load_workflow(Some(&name))?)?;
        }
        WorkflowCommand::Show { name, json: false } => {
            match orch_core::dsl::builtin_source(&name) {
                Some((_, text)) => render::out!("{text}")?,
                None => {
                    let wf = load_workflow(Some(&name))?;
                    render::out!(
                        "{}",
                        std::fs::read_to_string(&name).unwrap_or_else(|_| format!("{wf:#?}"))
                    )?;
                }
            }
        }
        WorkflowCommand::Validate { file, json } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading workflow file {file}"))?;
            let wf = match Workflow::parse_all(&file, &text) {
                Ok(wf) => wf,
                Err(errors) => return invalid_workflow(&file, &errors, json),
            };
            // Valid, but not every rule is enforced yet: say so.
            let notes: Vec<String> = wf
                .tasks
                .iter()
                .flat_map(|t| {
                    t.validation.iter().filter_map(|r| match r {
                        orch_core::ValidationRule::Semantic { artifact, .. } => Some(format!(
                            "task {:?}: the semantic rule on {artifact:?} is given to the model as guidance but not judged (no LLM judge yet)",
                            t.id
                        )),
                        _ => None,
                    })
                })
                .collect();
            if json {
                render::write_json(
                    &serde_json::json!({"file": file, "valid": true, "name": wf.name, "tasks": wf.tasks.len(), "notes": notes}),
                )?;
            } else {
                render::outln!(
                    "{file}: valid workflow {:?} with {} task(s)",
                    wf.name,
                    wf.tasks.len()
                )?;
                for n in &notes {
                    eprintln!("note: {n}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Report every error of a workflow file (one line each, on stderr; with
/// `--json` as a document on stdout) and fail.
fn invalid_workflow(file: &str, errors: &[orch_core::DslError], json: bool) -> Result<ExitCode> {
    if json {
        let errors: Vec<_> = errors
            .iter()
            .map(|e| {
                serde_json::json!({"line": e.line, "column": e.column, "field": e.field,
                    "message": e.message, "error": e.to_string()})
            })
            .collect();
        render::write_json(&serde_json::json!({"file": file, "valid": false, "errors": errors}))?;
    } else {
        for e in errors {
            eprintln!("error: {e}");
        }
    }
    Ok(ExitCode::from(1))
}

/// Parse `--roles` (names, queues or short forms, comma-separated; `all`).
fn parse_roles(raw: Option<&str>) -> Result<Vec<Role>> {
    match raw.map(str::trim) {
        None | Some("") | Some("all") => Ok(Role::SPECIALISTS.to_vec()),
        Some(list) => {
            let mut roles = Vec::new();
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let role: Role = name.parse()?;
                if role == Role::Orchestrator {
                    bail!(
                        "the orchestrator role has no worker; `orchestrator serve` runs the orchestrator loop"
                    );
                }
                if !roles.contains(&role) {
                    roles.push(role);
                }
            }
            Ok(roles)
        }
    }
}

/// Wait for SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Whether an error is worth waiting out (a server not reachable yet) rather
/// than a configuration mistake that retrying cannot fix.
pub(crate) fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<orch_store::Error>(),
            Some(
                orch_store::Error::Connect { .. }
                    | orch_store::Error::Locked(_)
                    | orch_store::Error::Database(_)
            )
        ) || matches!(
            c.downcast_ref::<orch_broker::Error>(),
            Some(orch_broker::Error::Connect { .. } | orch_broker::Error::Backend(_))
        )
    })
}

/// Connect for a long-running process: a server that is down at start-up is
/// waited for with a clear log line per try and exponential backoff (0.5 s
/// to 30 s) — no crash loop, no busy loop. A configuration error fails at once.
async fn with_retry<T, F, Fut>(what: &str, mut connect: F) -> Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut delay = std::time::Duration::from_millis(500);
    loop {
        match connect().await {
            Ok(v) => return Ok(Some(v)),
            Err(e) if is_transient(&e) => {
                eprintln!(
                    "cannot reach the {what}: {e:#}; retrying in {:.1} s",
                    delay.as_secs_f64()
                );
                tokio::select! {
                    _ = shutdown_signal() => return Ok(None),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(std::time::Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The engine of a long-running process (`serve`, `worker`): the store and
/// broker are waited for if they are down. `None` if stopped while waiting.
async fn service_engine(
    cfg: &Config,
    provider: Option<&str>,
    concurrency: Option<usize>,
) -> Result<Option<Engine>> {
    let provider = wiring::choose_provider(cfg, provider)?;
    let Some(store) = with_retry("database", || wiring::open_store(cfg)).await? else {
        return Ok(None);
    };
    let Some(broker) = with_retry("queue broker", || wiring::open_broker(cfg)).await? else {
        return Ok(None);
    };
    let mut opts = wiring::engine_options(cfg);
    if let Some(n) = concurrency {
        opts.concurrency = n.max(1);
    }
    Ok(Some(wiring::engine(store, broker, provider, opts)?))
}

/// Run until SIGINT or SIGTERM, then drain.
async fn run_until_stopped(runtime: Runtime) {
    shutdown_signal().await;
    eprintln!(
        "shutting down: draining in-flight attempts (up to {:?})",
        runtime.engine().options().drain_timeout
    );
    runtime.shutdown().await;
}

/// The orchestrator loop, the sweeper and the HTTP API; with the in-process
/// broker, every role's workers too.
async fn serve(cfg: &Config, a: ServeArgs) -> Result<ExitCode> {
    let bind = a.bind.clone().unwrap_or_else(|| cfg.api_bind.clone());
    // Refuse a bad address before waiting for any server.
    let addr: std::net::SocketAddr = match a.no_api {
        true => "127.0.0.1:0".parse().expect("valid"),
        false => bind.parse().with_context(|| {
            format!("API address {bind:?} is not HOST:PORT (e.g. 127.0.0.1:8000 or 0.0.0.0:8000); fix --bind or API_BIND")
        })?,
    };
    let Some(engine) = service_engine(cfg, a.provider.provider.as_deref(), a.concurrency).await?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    let local = engine.deps().broker.backend() == "in-process";
    let roles: Vec<Role> = if local || a.with_workers {
        Role::SPECIALISTS.to_vec()
    } else {
        Vec::new()
    };
    eprintln!(
        "orchestrator serve: store {} ({}), queues {}, {} — stop with Ctrl-C or SIGTERM",
        wiring::redact_url(&cfg.database_url),
        engine.deps().store.backend(),
        engine.deps().broker.backend(),
        if roles.is_empty() {
            "no local workers".to_string()
        } else {
            format!("workers for {} roles", roles.len())
        }
    );
    let api = if a.no_api {
        None
    } else {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr}: is another server using the port? Choose another with --bind or API_BIND")
        })?;
        let auth = if a.insecure_no_auth {
            orch_api::AuthMode::Disabled
        } else {
            orch_api::AuthMode::Required
        };
        warn_about_auth(&engine, auth, addr).await;
        let metrics_public = a.metrics_public || cfg.metrics_public;
        let state = orch_api::AppState::new(
            engine.clone(),
            orch_api::ApiConfig {
                auth,
                metrics_public,
                body_limit: cfg.api_body_limit,
                run_settings: cfg.run_settings(),
            },
        );
        let at = listener.local_addr().unwrap_or(addr);
        eprintln!(
            "HTTP API on http://{at} (docs: http://{at}/docs, metrics: http://{at}/metrics{})",
            if metrics_public {
                ", open"
            } else {
                ", read token"
            }
        );
        Some((listener, orch_api::app(state)))
    };
    let runtime = Runtime::start(engine, &roles, true);
    match api {
        None => run_until_stopped(runtime).await,
        Some((listener, app)) => {
            let stop = runtime.cancellation();
            let server = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await });
            let server = tokio::spawn(async move { server.await });
            shutdown_signal().await;
            eprintln!(
                "shutting down: closing the HTTP API, draining in-flight attempts (up to {:?})",
                runtime.engine().options().drain_timeout
            );
            let drain = runtime.engine().options().drain_timeout;
            // Cancelling the runtime also stops accepting HTTP connections;
            // open streams (SSE) get until the drain timeout.
            let shutdown = runtime.shutdown();
            let (_, served) = tokio::join!(shutdown, tokio::time::timeout(drain, server));
            if let Ok(Ok(Err(e))) = served {
                eprintln!("HTTP server ended with an error: {e}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Say loudly when the API is open to anyone, and when no token exists yet.
async fn warn_about_auth(engine: &Engine, auth: orch_api::AuthMode, addr: std::net::SocketAddr) {
    if auth == orch_api::AuthMode::Disabled {
        if addr.ip().is_loopback() {
            eprintln!(
                "WARNING: authentication is OFF (--insecure-no-auth); only this machine can reach {addr}"
            );
        } else {
            eprintln!(
                "WARNING: AUTHENTICATION IS OFF on {addr}, which is NOT a loopback address: anyone who can reach this port can create, cancel and read every run. Remove --insecure-no-auth and use `orchestrator token create`."
            );
            tracing::warn!(%addr, "HTTP API without authentication on a non-loopback address");
        }
        return;
    }
    match engine.deps().store.list_tokens(false).await {
        Ok(t) if t.is_empty() => eprintln!(
            "note: no API token exists yet; every request but /health and the docs will get 401. Create one with `orchestrator token create --scope write`"
        ),
        Ok(_) => {}
        Err(e) => eprintln!("note: could not list API tokens: {e}"),
    }
}

/// `orchestrator token create|list|revoke`.
async fn tokens(cfg: &Config, cmd: TokenCommand) -> Result<ExitCode> {
    let store = wiring::open_store(cfg).await?;
    use orch_engine::Clock as _;
    let now = orch_engine::SystemClock.now_ms();
    let show = |t: &orch_store::ApiToken| {
        serde_json::json!({
            "id": t.id,
            "name": t.name,
            "scopes": t.scopes,
            "created_at": t.created_at,
            "revoked_at": t.revoked_at,
        })
    };
    match cmd {
        TokenCommand::Create { scope, name, json } => {
            let scopes = orch_api::auth::Scope::parse_list(&scope).map_err(anyhow::Error::msg)?;
            if name.trim().is_empty() {
                bail!("the token name is empty; give a label such as --name ci");
            }
            let new = orch_api::auth::generate(name.trim(), &scopes, now);
            store.create_token(&new.record).await?;
            let written = if json {
                let mut v = show(&new.record);
                v["token"] = serde_json::Value::String(new.token.clone());
                render::write_json(&v)
            } else {
                render::outln!("{}", new.token)
            };
            // The secret is shown only here: never end quietly without it.
            if let Err(e) = written {
                bail!(
                    "{e}; token {} was created but not shown: revoke it with `orchestrator token revoke {}` and create another",
                    new.record.id,
                    new.record.id
                );
            }
            if !json {
                eprintln!(
                    "token {} ({}) created with scopes {}; it is shown only now — send it as `Authorization: Bearer <token>`",
                    new.record.id,
                    new.record.name,
                    new.record.scopes.join(",")
                );
            }
        }
        TokenCommand::List { all, json } => {
            let list = store.list_tokens(all).await?;
            if json {
                render::write_json(&list.iter().map(show).collect::<Vec<_>>())?;
            } else if list.is_empty() {
                render::outln!(
                    "no tokens; create one with `orchestrator token create --scope read`"
                )?;
            } else {
                render::outln!(
                    "{:<14} {:<20} {:<18} {:<20} REVOKED",
                    "ID",
                    "NAME",
                    "SCOPES",
                    "CREATED"
                )?;
                for t in &list {
                    render::outln!(
                        "{:<14} {:<20} {:<18} {:<20} {}",
                        t.id,
                        render::truncate(&t.name, 20),
                        t.scopes.join(","),
                        render::fmt_time(t.created_at),
                        t.revoked_at
                            .map(render::fmt_time)
                            .unwrap_or_else(|| "-".into())
                    )?;
                }
            }
        }
        TokenCommand::Revoke { id, json } => {
            let id = id.trim();
            // Accept the whole token too.
            let id = orch_api::auth::split_token(id).map_or(id, |(id, _)| id);
            let t = store.revoke_token(id, now).await?;
            if json {
                render::write_json(&show(&t))?;
            } else {
                render::outln!("token {} ({}) revoked", t.id, t.name)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Role workers only, for distributed mode.
async fn worker(cfg: &Config, a: WorkerArgs) -> Result<ExitCode> {
    let roles = parse_roles(a.roles.as_deref())?;
    if cfg.redis_url.is_none() {
        bail!(
            "`orchestrator worker` needs shared queues: set REDIS_URL (and a shared DATABASE_URL). With the in-process broker, `orchestrator serve` or `orchestrator run` runs the workers itself"
        );
    }
    let Some(engine) = service_engine(cfg, a.provider.provider.as_deref(), a.concurrency).await?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    eprintln!(
        "orchestrator worker: {} ({} at once each) — stop with Ctrl-C or SIGTERM",
        roles
            .iter()
            .map(|r| r.queue())
            .collect::<Vec<_>>()
            .join(", "),
        engine.options().concurrency
    );
    run_until_stopped(Runtime::start(engine, &roles, false)).await;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_from_names_queues_and_short_forms() {
        assert_eq!(parse_roles(None).unwrap().len(), 9);
        assert_eq!(
            parse_roles(Some("backend_engineer, q_fe,be")).unwrap(),
            vec![Role::BackendEngineer, Role::FrontendEngineer]
        );
        assert!(parse_roles(Some("orchestrator")).is_err());
        let err = parse_roles(Some("designer")).unwrap_err().to_string();
        assert!(err.contains("designer"), "{err}");
    }
}
