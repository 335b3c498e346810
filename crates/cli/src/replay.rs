//! `orchestrator replay RUN`: re-execute a run from its LLM call journal.
//!
//! A new run with the source run's goal, context, workflow and settings is
//! driven in process with a [`ReplayProvider`], which answers every request
//! with the source run's journaled response for the same task and prompt and
//! never calls a model. A request the journal has no answer for means the
//! replay diverged: the call fails and says so. At the end the latest
//! artifacts of both runs are compared by name, path and content.

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use orch_core::{Role, RunId, RunStatus};
use orch_llm::{Provider, Request, Response};
use orch_store::Store;

use crate::commands::{exit_for, follow_run, load_workflow, resolve_run};
use crate::config::Config;
use crate::{ReplayArgs, render, wiring};

/// Answers requests from another run's LLM call journal.
pub struct ReplayProvider {
    store: Arc<dyn Store>,
    source_run: RunId,
}

impl std::fmt::Debug for ReplayProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayProvider")
            .field("source_run", &self.source_run)
            .finish_non_exhaustive()
    }
}

impl ReplayProvider {
    /// Replay the journal of `source_run` in `store`.
    pub fn new(store: Arc<dyn Store>, source_run: RunId) -> Self {
        ReplayProvider { store, source_run }
    }
}

#[async_trait]
impl Provider for ReplayProvider {
    fn name(&self) -> &str {
        "replay"
    }

    fn is_scripted(&self) -> bool {
        false
    }

    fn default_model(&self) -> &str {
        "replay"
    }

    async fn complete(&self, request: &Request) -> orch_llm::Result<Response> {
        let task = &request.meta.task_id;
        let hash = orch_llm::request_hash(request);
        let fatal = |message: String| orch_llm::Error::Fatal {
            provider: "replay".to_string(),
            message,
        };
        let call = self
            .store
            .find_llm_call(&self.source_run, task, &hash)
            .await
            .map_err(|e| fatal(format!("cannot read the journal of run {}: {e}", self.source_run)))?
            .ok_or_else(|| {
                fatal(format!(
                    "run diverged from its journal: no journaled call for task {task} with this request"
                ))
            })?;
        serde_json::from_str(&call.response).map_err(|e| {
            fatal(format!(
                "journaled response of task {task} in run {} is unreadable: {e}",
                self.source_run
            ))
        })
    }
}

/// The model each role's requests named in the source run (replayed requests
/// must name the same model to match the journal).
async fn journaled_models(store: &Arc<dyn Store>, run: &RunId) -> Result<HashMap<Role, String>> {
    let mut models = HashMap::new();
    for call in store.list_llm_calls(run).await? {
        let request: serde_json::Value = serde_json::from_str(&call.request)
            .with_context(|| format!("journaled request of task {} is not JSON", call.task_id))?;
        let role = request["meta"]["role"]
            .as_str()
            .and_then(|r| serde_json::from_value::<Role>(serde_json::json!(r)).ok());
        if let (Some(role), Some(model)) = (role, request["model"].as_str()) {
            models.entry(role).or_insert_with(|| model.to_string());
        }
    }
    Ok(models)
}

/// The latest artifacts of a run as (name, path) -> content.
async fn artifact_set(
    store: &Arc<dyn Store>,
    run: &RunId,
) -> Result<BTreeMap<(String, Option<String>), String>> {
    Ok(store
        .list_artifacts(run, true)
        .await?
        .into_iter()
        .map(|a| ((a.name, a.path), a.content))
        .collect())
}

/// `orchestrator replay RUN`.
pub async fn replay(cfg: &Config, a: ReplayArgs) -> Result<ExitCode> {
    let store = wiring::open_existing_store(cfg).await?;
    let source = resolve_run(&store, &a.run).await?;
    let run = store.get_run(&source).await?;
    let workflow = load_workflow(Some(&run.workflow)).with_context(|| {
        format!(
            "cannot replay run {source}: its workflow {:?} is no longer available",
            run.workflow
        )
    })?;
    if store.list_llm_calls(&source).await?.is_empty() {
        bail!("run {source} has no journaled LLM calls to replay");
    }
    let mut opts = wiring::engine_options(cfg);
    opts.role_models = journaled_models(&store, &source).await?;
    let provider = Arc::new(ReplayProvider::new(store.clone(), source.clone()));
    let engine = wiring::engine(
        store.clone(),
        wiring::open_broker(cfg).await?,
        provider,
        opts,
    )?;
    let new_run = engine
        .create_labelled(
            &run.goal,
            run.context.clone(),
            &workflow,
            run.settings.clone(),
            &format!("replay of {source}"),
        )
        .await?;
    let show = !a.quiet && !a.json;
    let done = follow_run(&engine, &new_run, show).await?;
    let (before, after) = (
        artifact_set(&store, &source).await?,
        artifact_set(&store, &new_run).await?,
    );
    let differing: Vec<String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|(name, path)| match path {
            Some(p) => format!("{name} ({p})"),
            None => name.clone(),
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let identical = differing.is_empty();
    if a.json {
        render::write_json(&serde_json::json!({
            "run_id": new_run,
            "source_run_id": source,
            "status": done.status,
            "artifacts_identical": identical,
            "differing_artifacts": differing,
        }))?;
    } else {
        render::outln!("replayed run {source} as {new_run}: {}", done.status)?;
        if identical {
            render::outln!("artifacts: identical to the source run's")?;
        } else {
            render::outln!(
                "artifacts differ from the source run's: {}",
                differing.join(", ")
            )?;
        }
    }
    if done.status == RunStatus::Completed && !identical {
        return Ok(ExitCode::FAILURE);
    }
    Ok(exit_for(done.status))
}
