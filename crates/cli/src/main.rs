//! `orchestrator`: the one binary. It parses the command line and the
//! configuration, wires the store, broker, provider and engine together, and
//! runs the command. The embedded default needs no setup: state in a SQLite
//! file, an in-process broker, every role worker inside this process.
//!
//! Parts: `config` (environment variables and `.env`), `wiring` (resolving
//! configuration into implementations), `commands` (one function per
//! command), `render` (human and `--json` output), `progress` (the live
//! display of a run), `bench` (the benchmark scenarios). `anyhow` is used here
//! only; the library crates return their own error types.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// mimalloc instead of glibc's allocator, for Rust and (feature `override`)
/// for SQLite's C code too: every task allocates and frees many short
/// strings, JSON values and statement buffers across threads. Without
/// transparent huge pages (feature `no_thp`) an idle `serve` stays at
/// ~22 MB resident (20 MB with glibc; 37 MB with them). Measured in
/// `docs/benchmarks.md`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod channels;
mod commands;
mod config;
mod progress;
mod render;
mod replay;
mod wiring;

/// Multi-agent workflow orchestrator: decomposes a goal into a role-based
/// task DAG and drives specialist LLM agents through the software lifecycle,
/// behind a code review gate and a security review gate.
#[derive(Debug, Parser)]
#[command(name = "orchestrator", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or upgrade the database named by DATABASE_URL.
    InitDb(JsonFlag),
    /// Start a run for a goal and follow it to the end.
    Run(RunArgs),
    /// Show a run: status, gates, tasks, cost.
    Status(RunRef),
    /// List runs, newest first.
    List(ListArgs),
    /// Show a run's event log.
    Events(EventsArgs),
    /// Show a run's artifacts.
    Artifacts(ArtifactsArgs),
    /// Show the messages agents posted to a run's channels (--follow: as they come).
    Channels(ChannelsArgs),
    /// Drive a run forward: reclaim work of dead processes and run its tasks until it finishes or needs input.
    Tick(TickArgs),
    /// Quality gates: waive one.
    #[command(subcommand)]
    Gate(GateCommand),
    /// Answer a run that waits in NEEDS_INPUT, and continue it.
    Answer(AnswerArgs),
    /// Raise a run's budget (USD or tokens) and continue it if the budget stopped it.
    Budget(BudgetArgs),
    /// Cancel a run.
    Cancel(CancelArgs),
    /// The dead letter queue: tasks that failed every attempt.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Workflows: list the built-in ones, show or validate one.
    #[command(subcommand)]
    Workflows(WorkflowCommand),
    /// Write a run's code and documents to a folder.
    Export(ExportArgs),
    /// Re-execute a run from its LLM call journal, calling no model, as a new run.
    Replay(ReplayArgs),
    /// Run the benchmark scenarios (scripted provider, zero latency).
    Bench(bench::BenchArgs),
    /// Run the orchestrator loop and sweeper until stopped (in embedded mode also every worker).
    Serve(ServeArgs),
    /// Run role workers until stopped (distributed mode: needs REDIS_URL).
    Worker(WorkerArgs),
    /// Bearer tokens of the HTTP API: create, list, revoke.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print it (the only time it is shown; only its hash is stored).
    Create {
        /// Scopes, comma-separated: read, write, admin (each covers the ones before it).
        #[arg(long, value_name = "SCOPES")]
        scope: String,
        /// A label for people (who or what uses the token).
        #[arg(long, default_value = "default")]
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never their secrets).
    List {
        /// Include revoked tokens.
        #[arg(long)]
        all: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id (`orch_<id>_...`); every `serve` refuses it within seconds.
    Revoke {
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    provider: ProviderArgs,
    /// Also run workers for every role in this process (always so with in-process queues).
    #[arg(long)]
    with_workers: bool,
    /// Attempts per role at once (overrides WORKER_CONCURRENCY).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Address the HTTP API listens on (overrides API_BIND; default 127.0.0.1:8000).
    #[arg(long, value_name = "ADDR")]
    bind: Option<String>,
    /// Serve the API without any authentication. Only for a trusted network: anyone who reaches the port can create and cancel runs.
    #[arg(long)]
    insecure_no_auth: bool,
    /// Serve /metrics without a token (overrides METRICS_PUBLIC).
    #[arg(long)]
    metrics_public: bool,
    /// Run the orchestrator loop and workers only, without the HTTP API.
    #[arg(long, conflicts_with_all = ["bind", "insecure_no_auth", "metrics_public"])]
    no_api: bool,
}

#[derive(Debug, Args)]
struct WorkerArgs {
    /// Roles to serve, comma-separated (names, queues or short forms), or `all` (default).
    #[arg(long)]
    roles: Option<String>,
    /// Attempts per role at once (overrides WORKER_CONCURRENCY).
    #[arg(long)]
    concurrency: Option<usize>,
    #[command(flatten)]
    provider: ProviderArgs,
}

#[derive(Debug, Args)]
struct JsonFlag {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ProviderArgs {
    /// LLM provider: anthropic (needs ANTHROPIC_API_KEY), openai (OPENAI_API_KEY and/or OPENAI_BASE_URL; ollama, vllm and llamacpp name it too, for a local server) or scripted (a deterministic fixture; labelled as such everywhere). Overrides LLM_PROVIDER.
    #[arg(long, value_name = "NAME")]
    provider: Option<String>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The goal, e.g. "Build a small CRUD app for managing TODO items".
    #[arg(required_unless_present = "resume")]
    goal: Option<String>,
    /// A workflow file, or the name of a built-in workflow (default: sdlc).
    #[arg(long, value_name = "FILE|NAME")]
    workflow: Option<String>,
    /// Extra context for the agents, as JSON (or plain text).
    #[arg(long)]
    context: Option<String>,
    #[command(flatten)]
    provider: ProviderArgs,
    /// Only record the run; do not execute it (`orchestrator tick RUN` runs it later).
    #[arg(long)]
    detach: bool,
    /// Continue an existing run instead of starting one.
    #[arg(long, value_name = "RUN", conflicts_with_all = ["goal", "workflow", "context", "detach"])]
    resume: Option<String>,
    /// Print only the final result.
    #[arg(long, short)]
    quiet: bool,
    /// Print the final status as JSON (progress goes to stderr).
    #[arg(long)]
    json: bool,
    /// Spending limit of the run in USD: a call that would exceed it is not made and the run waits in NEEDS_INPUT.
    #[arg(long, value_name = "USD", conflicts_with = "resume")]
    budget_usd: Option<f64>,
    /// Token limit of the run (input + output), checked like --budget-usd.
    #[arg(long, value_name = "TOKENS", conflicts_with = "resume")]
    budget_tokens: Option<i64>,
}

#[derive(Debug, Args)]
struct BudgetArgs {
    run: String,
    /// New spending limit in USD.
    #[arg(long, value_name = "USD", required_unless_present = "tokens")]
    usd: Option<f64>,
    /// New token limit (input + output).
    #[arg(long, value_name = "TOKENS")]
    tokens: Option<i64>,
    #[command(flatten)]
    provider: ProviderArgs,
    /// Only the result when the run continues, no progress.
    #[arg(long, short)]
    quiet: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RunRef {
    run: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Only runs in this status (RUNNING, NEEDS_INPUT, COMPLETED, ...).
    #[arg(long)]
    status: Option<String>,
    #[arg(long, default_value_t = 20)]
    limit: u32,
    #[arg(long, default_value_t = 0)]
    offset: u32,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct EventsArgs {
    run: String,
    /// Verbose: include each event's data (prompts, responses, findings).
    #[arg(short, long)]
    verbose: bool,
    /// Only events after this sequence number.
    #[arg(long, default_value_t = 0)]
    after: i64,
    /// At most this many events (0: all).
    #[arg(long, default_value_t = 0)]
    limit: u32,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ArtifactsArgs {
    run: String,
    /// Print each artifact's content.
    #[arg(long)]
    content: bool,
    /// Every version, not only the latest.
    #[arg(long)]
    all_versions: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct TickArgs {
    run: String,
    /// One reconcile step only; run no task.
    #[arg(long)]
    once: bool,
    #[command(flatten)]
    provider: ProviderArgs,
    /// Print only the final result.
    #[arg(long, short)]
    quiet: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum GateCommand {
    /// Waive a gate (code_review or security_review) so the run can go on.
    Waive {
        run: String,
        gate: String,
        /// Why it is waived (recorded in the event log).
        #[arg(long)]
        reason: String,
        /// Continue the run after waiving (needs a provider).
        #[command(flatten)]
        provider: ProviderArgs,
        /// Only the result when the run continues, no progress.
        #[arg(long, short)]
        quiet: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct AnswerArgs {
    run: String,
    /// The answer or guidance; the blocked work is retried with it.
    text: String,
    #[command(flatten)]
    provider: ProviderArgs,
    /// Only the result when the run continues, no progress.
    #[arg(long, short)]
    quiet: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct CancelArgs {
    run: String,
    #[arg(long, default_value = "cancelled by user")]
    reason: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters.
    List {
        /// Only this run's.
        #[arg(long)]
        run: Option<String>,
        /// Include replayed ones.
        #[arg(long)]
        all: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Give a dead task another attempt and continue its run.
    Replay {
        id: i64,
        #[command(flatten)]
        provider: ProviderArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum WorkflowCommand {
    /// List the built-in workflows.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a built-in workflow (or a file) as YAML.
    Show {
        name: String,
        /// Print the workflow as JSON instead of YAML.
        #[arg(long)]
        json: bool,
    },
    /// Validate a workflow file; errors name the file, line and field.
    Validate {
        file: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct ExportArgs {
    run: String,
    /// Folder to write into (created if missing).
    #[arg(long, short, default_value = "orchestrator-export")]
    out: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ChannelsArgs {
    /// The run (its id, or a unique prefix).
    run: String,
    /// Only this channel's messages.
    #[arg(long)]
    channel: Option<String>,
    /// Keep printing new messages until the run finishes or needs input
    /// (live from Redis pub/sub in distributed mode when --channel is given).
    #[arg(long, short)]
    follow: bool,
    /// Print one JSON object per message instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// The run to replay (its id, or a unique prefix).
    run: String,
    /// Only the result, no progress.
    #[arg(long, short)]
    quiet: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Exit codes: 0 success (or a run that completed), 1 error, 2 usage,
/// 3 the run waits for input, 4 the run failed or was cancelled.
fn main() -> ExitCode {
    let cli = Cli::parse();
    // sqlx's warnings (a statement slowed by a lock another process holds)
    // span several lines and repeat what the one-line error then says:
    // ORCH_LOG=warn shows them.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ORCH_LOG")
                .unwrap_or_else(|_| "warn,sqlx=error".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    // One thread measured fastest for the engine and workers on 2 cores; the
    // HTTP API of `serve` answers more requests with a thread per core.
    // ORCH_THREADS overrides (1: current-thread runtime).
    let threads = std::env::var("ORCH_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(match cli.command {
            Command::Serve(_) => std::thread::available_parallelism().map_or(1, |n| n.get()),
            _ => 1,
        });
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let result = commands::dispatch(cli.command).await;
        wiring::close_stores().await;
        result
    });
    match result {
        Ok(code) => code,
        // The reader of stdout went away (`orchestrator events RUN | head`):
        // it has all it wanted.
        Err(e)
            if e.downcast_ref::<render::StdoutError>()
                .is_some_and(render::StdoutError::is_closed) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
