//! Resolving configuration into implementations: the store from
//! `DATABASE_URL`, the broker, the LLM provider, and the engine around them.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use orch_broker::Broker;
use orch_engine::{Deps, Engine, EngineOptions, SystemClock};
use orch_llm::{Provider, ScriptedProvider};
use orch_store::Store;

use crate::config::Config;

/// Stores this process opened, closed by [`close_stores`] before it exits.
static OPENED: std::sync::Mutex<Vec<Arc<dyn Store>>> = std::sync::Mutex::new(Vec::new());

/// Open the store named by `DATABASE_URL`, creating and migrating it if needed.
pub async fn open_store(cfg: &Config) -> Result<Arc<dyn Store>> {
    open(cfg, true).await
}

/// [`open_store`] for commands about runs that must already exist (`status`,
/// `events`, `tick`, ...): a SQLite file that is not there is an error that
/// says so, not a new empty database at a mistyped path.
pub async fn open_existing_store(cfg: &Config) -> Result<Arc<dyn Store>> {
    open(cfg, false).await
}

async fn open(cfg: &Config, create: bool) -> Result<Arc<dyn Store>> {
    let options = orch_store::StoreOptions {
        pool_size: cfg.database_pool_size,
    };
    let opened = match create {
        true => orch_store::connect_with(&cfg.database_url, &options).await,
        false => orch_store::connect_existing_with(&cfg.database_url, &options).await,
    };
    let store = opened
        .with_context(|| format!("opening DATABASE_URL={}", redact_url(&cfg.database_url)))?;
    OPENED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(store.clone());
    Ok(store)
}

/// Close every store [`open_store`] opened (the command is done with them):
/// a SQLite file then holds every commit, without its WAL beside it.
pub async fn close_stores() {
    let stores = std::mem::take(&mut *OPENED.lock().unwrap_or_else(|p| p.into_inner()));
    for store in stores {
        store.close().await;
    }
}

/// Hide a password in a database URL before it is printed.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}://{}:***{}", &url[..s], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

const HOW_TO_CHOOSE: &str = "choose an LLM provider: set ANTHROPIC_API_KEY (Anthropic), or OPENAI_BASE_URL and/or OPENAI_API_KEY (OpenAI, or a local Ollama, vLLM or llama.cpp server), or LLM_PROVIDER=anthropic|openai|scripted; `--provider scripted` runs deterministic fixture responses for demos and tests (no model is called)";

/// The provider chosen with `--provider` or `LLM_PROVIDER`; else Anthropic if
/// `ANTHROPIC_API_KEY` is set; else OpenAI-compatible if `OPENAI_BASE_URL` or
/// `OPENAI_API_KEY` is set. The scripted provider is only ever chosen by
/// name. With nothing configured this is an error that says how to choose.
pub fn choose_provider(cfg: &Config, flag: Option<&str>) -> Result<Arc<dyn Provider>> {
    let name = flag.map(str::to_string).or_else(|| cfg.provider.clone());
    let name = match name {
        Some(n) => n.to_ascii_lowercase(),
        None if cfg.anthropic_key_set => "anthropic".to_string(),
        None if cfg.openai_set => "openai".to_string(),
        None => bail!("no LLM provider configured; {HOW_TO_CHOOSE}"),
    };
    match name.as_str() {
        "scripted" => {
            let p = match &cfg.scripted_fixture {
                Some(path) => ScriptedProvider::from_file(path)
                    .with_context(|| format!("loading SCRIPTED_FIXTURE={path}"))?,
                None => ScriptedProvider::builtin(),
            };
            Ok(Arc::new(p.with_latency(cfg.scripted_latency)))
        }
        "anthropic" => Ok(Arc::new(
            orch_llm::AnthropicProvider::from_env()
                .context("configuring the Anthropic provider")?,
        )),
        "openai" | "ollama" | "vllm" | "llamacpp" | "llama.cpp" => Ok(Arc::new(
            orch_llm::OpenAiProvider::from_env()
                .context("configuring the OpenAI-compatible provider")?,
        )),
        other => bail!("unknown LLM provider {other:?}; {HOW_TO_CHOOSE}"),
    }
}

/// The provider to continue a run with, whose provider label is `recorded`:
/// the one chosen with `--provider` or `LLM_PROVIDER` if any; else the one
/// the run started with, when that names a provider of this binary (said on
/// stderr, so that continuing a scripted run is never silent); else as
/// [`choose_provider`].
pub fn provider_for_run(
    cfg: &Config,
    flag: Option<&str>,
    run_id: &str,
    recorded: &str,
) -> Result<Arc<dyn Provider>> {
    if flag.is_some() || cfg.provider.is_some() {
        return choose_provider(cfg, flag);
    }
    match recorded_provider(recorded) {
        Some(name) => {
            eprintln!(
                "continuing run {run_id} with the provider it started with: {name} (choose another with --provider NAME)"
            );
            choose_provider(cfg, Some(name))
        }
        None => choose_provider(cfg, None),
    }
}

/// The provider name a run's label (`scripted`, `anthropic`, `openai`,
/// `NAME (scripted)`, `replay of RUN`) stands for, if this binary has it.
fn recorded_provider(label: &str) -> Option<&'static str> {
    if label.ends_with("(scripted)") {
        return Some("scripted");
    }
    match label {
        "scripted" => Some("scripted"),
        "anthropic" => Some("anthropic"),
        "openai" => Some("openai"),
        _ => None,
    }
}

/// Engine options from the configuration.
pub fn engine_options(cfg: &Config) -> EngineOptions {
    EngineOptions {
        lease_ttl: cfg.lease_ttl,
        heartbeat_every: cfg.lease_ttl / 3,
        concurrency: cfg.concurrency,
        requeue_after: cfg.requeue_after,
        sweep_every: cfg.sweep_every,
        tick_all_every: cfg.tick_all_every,
        drain_timeout: cfg.drain_timeout,
        // Empty: the provider's default model (see `engine`).
        model: cfg.model.clone().unwrap_or_default(),
        role_models: cfg.role_models.clone(),
        ..EngineOptions::default()
    }
}

/// The role queues: Redis Streams when `REDIS_URL` is set, else in process.
pub async fn open_broker(cfg: &Config) -> Result<Arc<dyn Broker>> {
    orch_broker::connect(cfg.redis_url.as_deref(), &cfg.queue_prefix)
        .await
        .with_context(|| match &cfg.redis_url {
            Some(url) => format!("connecting to REDIS_URL={}", redact_url(url)),
            None => "starting the in-process broker".to_string(),
        })
}

/// An engine over `store` and `broker`.
pub fn engine(
    store: Arc<dyn Store>,
    broker: Arc<dyn Broker>,
    provider: Arc<dyn Provider>,
    mut opts: EngineOptions,
) -> Result<Engine> {
    if opts.model.is_empty() {
        opts.model = provider.default_model().to_string();
    }
    let agents = orch_agents::Agents::new().context("loading the agent prompt templates")?;
    let deps = Deps {
        store,
        broker,
        provider,
        agents: Arc::new(agents),
        clock: Arc::new(SystemClock),
    };
    Ok(Engine::new(deps, opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }

    #[test]
    fn a_run_s_provider_label_names_the_provider_to_continue_it_with() {
        assert_eq!(recorded_provider("scripted"), Some("scripted"));
        assert_eq!(recorded_provider("my-fixture (scripted)"), Some("scripted"));
        assert_eq!(recorded_provider("anthropic"), Some("anthropic"));
        assert_eq!(recorded_provider("openai"), Some("openai"));
        assert_eq!(recorded_provider("replay of 0193abcd"), None);
        assert_eq!(recorded_provider("none"), None);
    }
}

/// Stands in for a provider in commands that never call a model (`gate
/// waive`, `cancel`, `tick --once`): any call fails and says how to choose one.
#[derive(Debug)]
pub struct NoProvider;

#[async_trait::async_trait]
impl Provider for NoProvider {
    fn name(&self) -> &str {
        "none"
    }
    fn is_scripted(&self) -> bool {
        false
    }
    fn default_model(&self) -> &str {
        "none"
    }
    async fn complete(&self, _request: &orch_llm::Request) -> orch_llm::Result<orch_llm::Response> {
        Err(orch_llm::Error::Config(format!(
            "no LLM provider configured; {HOW_TO_CHOOSE}"
        )))
    }
}
