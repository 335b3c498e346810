//! Configuration: the seed's environment variables (and a `.env` file),
//! parsed into one typed struct with documented defaults. Parsing (strings
//! from the environment) is separate from resolving (opening the store,
//! choosing the provider), which happens in `wiring`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use orch_core::RunSettings;

/// Everything configurable, with the environment variable that sets it.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DATABASE_URL`: `sqlite://PATH` (default `sqlite://orchestrator.db`) or `postgres://...`.
    pub database_url: String,
    /// `DATABASE_POOL_SIZE`: connections of this process to PostgreSQL (default:
    /// the machine's cores + 1, at least 2, at most 16).
    pub database_pool_size: Option<u32>,
    /// `REDIS_URL`: Redis Streams role queues (distributed mode); in-process queues when unset.
    pub redis_url: Option<String>,
    /// `QUEUE_PREFIX`: prefix of the Redis keys (default none: streams are `q_ba` ... `q_sec`).
    pub queue_prefix: String,
    /// `LLM_PROVIDER`: `anthropic`, `openai` (also `ollama`, `vllm`, `llamacpp`:
    /// a local OpenAI-compatible server) or `scripted`. Unset: chosen from the
    /// API keys that are set (see `wiring::choose_provider`).
    pub provider: Option<String>,
    /// `LLM_MODEL` (default: the provider's own, `claude-sonnet-4-20250514` for Anthropic).
    pub model: Option<String>,
    /// `MAX_ITERATIONS`: task attempts a run may dispatch (default 50).
    pub max_iterations: u32,
    /// `TASK_TIMEOUT_SECONDS` (default 300).
    pub task_timeout: Duration,
    /// `REQUIRE_CODE_REVIEW` (default true).
    pub require_code_review: bool,
    /// `REQUIRE_SECURITY_REVIEW` (default true).
    pub require_security_review: bool,
    /// `MAX_REWORK`: rework rounds per gate before asking a person (default 2).
    pub max_rework: u32,
    /// `LEASE_TTL_SECONDS` (default 30).
    pub lease_ttl: Duration,
    /// `DRAIN_TIMEOUT_SECONDS`: on SIGTERM, how long attempts in flight may
    /// run on before they are given back to their runs (default 10).
    pub drain_timeout: Duration,
    /// `REQUEUE_AFTER_SECONDS`: a task queued this long without being claimed is published again (default 30).
    pub requeue_after: Duration,
    /// `SWEEP_INTERVAL_MS`: how often the sweeper runs (default 1000).
    pub sweep_every: Duration,
    /// `TICK_ALL_INTERVAL_MS`: how often a sweep also ticks every active run,
    /// the net for lost wake-ups (default 10000).
    pub tick_all_every: Duration,
    /// `WORKER_CONCURRENCY`: attempts per role at once in this process (default 2).
    pub concurrency: usize,
    /// `SCRIPTED_FIXTURE`: fixture file for the scripted provider (default: built-in TODO app).
    pub scripted_fixture: Option<String>,
    /// `SCRIPTED_LATENCY_MS`: extra delay per scripted response (default 0).
    pub scripted_latency: Duration,
    /// `LLM_MODEL_<ROLE>` (e.g. `LLM_MODEL_PROJECT_MANAGER`): a model for one role.
    pub role_models: std::collections::HashMap<orch_core::Role, String>,
    /// `ANTHROPIC_API_KEY` is set (its value is never kept here).
    pub anthropic_key_set: bool,
    /// `OPENAI_BASE_URL` or `OPENAI_API_KEY` is set.
    pub openai_set: bool,
    /// `API_BIND`: address `serve` listens on for HTTP (default `127.0.0.1:8000`).
    pub api_bind: String,
    /// `METRICS_PUBLIC`: `/metrics` needs no token (default false: a `read` token).
    pub metrics_public: bool,
    /// `API_BODY_LIMIT_BYTES`: largest request body (default 1 MiB).
    pub api_body_limit: usize,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn parse_bool(name: &str, default: bool) -> Result<bool> {
    match var(name) {
        None => Ok(default),
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => bail!("{name}={v:?} is not a boolean; use true or false"),
        },
    }
}

fn parse_num<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match var(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| {
            anyhow::anyhow!("{name}={v:?} is not a valid number; unset it or give a whole number")
        }),
    }
}

impl Config {
    /// Read `.env` (if present; existing variables win) and the environment.
    pub fn from_env() -> Result<Config> {
        match dotenvy::dotenv() {
            Ok(_) | Err(dotenvy::Error::Io(_)) => {}
            Err(e) => {
                return Err(e)
                    .context("could not read .env; fix the line it names or remove the file");
            }
        }
        let timeout_secs: u64 = parse_num("TASK_TIMEOUT_SECONDS", 300)?;
        if timeout_secs == 0 {
            bail!("TASK_TIMEOUT_SECONDS must be at least 1");
        }
        let database_pool_size = match var("DATABASE_POOL_SIZE") {
            None => None,
            Some(_) => {
                let max = orch_store::postgres::MAX_POOL_SIZE;
                let n: u32 = parse_num("DATABASE_POOL_SIZE", 0)?;
                if !(1..=max).contains(&n) {
                    bail!(
                        "DATABASE_POOL_SIZE must be between 1 and {max}; unset it for the default"
                    );
                }
                Some(n)
            }
        };
        let lease_secs: f64 = parse_num("LEASE_TTL_SECONDS", 30.0)?;
        if !(0.2..=3600.0).contains(&lease_secs) {
            bail!("LEASE_TTL_SECONDS must be between 0.2 and 3600");
        }
        Ok(Config {
            database_url: var("DATABASE_URL").unwrap_or_else(|| "sqlite://orchestrator.db".into()),
            database_pool_size,
            redis_url: var("REDIS_URL"),
            queue_prefix: var("QUEUE_PREFIX").unwrap_or_default(),
            provider: var("LLM_PROVIDER"),
            model: var("LLM_MODEL"),
            max_iterations: parse_num("MAX_ITERATIONS", 50)?,
            task_timeout: Duration::from_secs(timeout_secs),
            require_code_review: parse_bool("REQUIRE_CODE_REVIEW", true)?,
            require_security_review: parse_bool("REQUIRE_SECURITY_REVIEW", true)?,
            max_rework: parse_num("MAX_REWORK", 2)?,
            lease_ttl: Duration::from_secs_f64(lease_secs),
            drain_timeout: Duration::from_secs_f64(
                parse_num::<f64>("DRAIN_TIMEOUT_SECONDS", 10.0)?.clamp(0.0, 86_400.0),
            ),
            requeue_after: Duration::from_secs_f64(
                parse_num::<f64>("REQUEUE_AFTER_SECONDS", 30.0)?.max(0.1),
            ),
            sweep_every: Duration::from_millis(
                parse_num::<u64>("SWEEP_INTERVAL_MS", 1000)?.max(10),
            ),
            tick_all_every: Duration::from_millis(
                parse_num::<u64>("TICK_ALL_INTERVAL_MS", 10_000)?.max(10),
            ),
            concurrency: parse_num::<usize>("WORKER_CONCURRENCY", 2)?.max(1),
            scripted_fixture: var("SCRIPTED_FIXTURE"),
            scripted_latency: Duration::from_millis(parse_num("SCRIPTED_LATENCY_MS", 0)?),
            role_models: orch_core::Role::SPECIALISTS
                .into_iter()
                .filter_map(|r| {
                    var(&format!("LLM_MODEL_{}", r.as_str().to_ascii_uppercase())).map(|m| (r, m))
                })
                .collect(),
            anthropic_key_set: var("ANTHROPIC_API_KEY").is_some(),
            openai_set: var("OPENAI_BASE_URL").is_some() || var("OPENAI_API_KEY").is_some(),
            api_bind: var("API_BIND").unwrap_or_else(|| "127.0.0.1:8000".into()),
            metrics_public: parse_bool("METRICS_PUBLIC", false)?,
            api_body_limit: parse_num::<usize>("API_BODY_LIMIT_BYTES", 1024 * 1024)?.max(1024),
        })
    }

    /// Settings recorded on each new run.
    pub fn run_settings(&self) -> RunSettings {
        RunSettings {
            max_rework: self.max_rework,
            max_iterations: self.max_iterations,
            task_timeout_ms: self.task_timeout.as_millis() as i64,
            require_code_review: self.require_code_review,
            require_security_review: self.require_security_review,
            ..RunSettings::default()
        }
    }
}
