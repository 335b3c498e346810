//! The agents of the orchestrator: the nine specialist roles and the
//! orchestrator role, their prompts, the output format they answer in, and
//! the turn loop that runs one task attempt.
//!
//! Parts: this file (the public API the engine calls: [`Agents`],
//! [`TaskInput`], [`AgentOutput`], [`AgentFailure`], [`AgentError`],
//! [`EventSink`]), `prompts` (minijinja templates under
//! `crates/agents/templates/`, compiled in), [`parse`] (the tagged
//! `<artifact>` and `<message>` output format), `turn` (one attempt: prompt,
//! LLM call, parse, tool calls through the allowlist, verdict, validation, at
//! most one repair turn).
//!
//! Agents talk to each other through the run's channels: a task sees the
//! messages posted before it started ([`TaskInput::messages`], in its task
//! message) and posts with `<message channel="...">` blocks, which run
//! `post_message` through the tool executor and come back in
//! [`AgentOutput::messages`] for the engine to record and publish.
//!
//! This crate depends on `orch-core`, `orch-llm` (the provider trait only) and
//! `orch-tools`; it knows nothing of stores, brokers or the engine. LLM
//! events go to an [`EventSink`] as they happen; tool audit events come back
//! with the result, for the engine to commit behind the task's lease.

use async_trait::async_trait;
use minijinja::Environment;
use orch_core::{Artifact, NewArtifact, NewEvent, Role, Run, Task, Usage, Verdict};
use orch_tools::ToolExecutor;
use orch_tools::builtin::WRITE_FILE;
use orch_tools::channel::POST_MESSAGE;

pub mod parse;
mod prompts;
mod turn;

pub use orch_tools::ChannelPost;
pub use parse::{ParseError, ParsedAnswer, ParsedBlock, ParsedMessage, parse_answer, parse_output};

/// Why a task attempt failed, and whether retrying can help.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The LLM call failed; the provider error says whether to retry.
    #[error("LLM call failed: {0}")]
    Provider(#[from] orch_llm::Error),
    /// The answer stayed unusable after the repair turn.
    #[error("invalid output after a repair turn: {}", problems.join("; "))]
    InvalidOutput { problems: Vec<String> },
    /// A prompt template failed to render (a bug, not worth retrying).
    #[error("prompt template error: {0}")]
    Template(String),
}

impl AgentError {
    /// Whether a new attempt may succeed: provider errors say so themselves;
    /// invalid output may well be different next time; template errors never.
    pub fn retryable(&self) -> bool {
        match self {
            AgentError::Provider(e) => e.is_retryable(),
            AgentError::InvalidOutput { .. } => true,
            AgentError::Template(_) => false,
        }
    }
}

/// Everything one task attempt needs.
#[derive(Debug, Clone, Copy)]
pub struct TaskInput<'a> {
    pub run: &'a Run,
    pub task: &'a Task,
    /// Latest versions of the upstream artifacts, in the order to show them.
    pub upstream: &'a [Artifact],
    /// Messages posted on the run's channels before this attempt, oldest
    /// first (the task message shows the latest of them).
    pub messages: &'a [ChannelPost],
    /// Model to ask (the provider's default if the engine has no better idea).
    pub model: &'a str,
}

/// Where LLM events go as they happen (they are facts even if the attempt
/// is later abandoned).
#[async_trait]
pub trait EventSink: Send + Sync {
    async fn emit(&self, events: Vec<NewEvent>);
}

/// A sink that keeps events in memory (tests, dry runs, estimates).
#[derive(Debug, Default)]
pub struct CollectingSink {
    /// A plain mutex: it is only held to push or copy, never across an `.await`.
    events: std::sync::Mutex<Vec<NewEvent>>,
}

impl CollectingSink {
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of the events emitted so far.
    pub fn events(&self) -> Vec<NewEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[async_trait]
impl EventSink for CollectingSink {
    async fn emit(&self, events: Vec<NewEvent>) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(events);
    }
}

/// A successful attempt.
#[derive(Debug, Clone)]
pub struct AgentOutput {
    /// Artifacts written through the tools (code files as one entry per path).
    pub artifacts: Vec<NewArtifact>,
    /// The review verdict, for review tasks.
    pub verdict: Option<Verdict>,
    /// One line: `wrote requirements (1.2 KB)`, `verdict FAIL: 2 finding(s)`.
    pub summary: String,
    /// Tool audit events (and a `validation_failed` event if a repair turn was needed).
    pub events: Vec<NewEvent>,
    /// Messages posted through `post_message`, in order. They take effect
    /// only with the attempt: the engine records and publishes them.
    pub messages: Vec<ChannelPost>,
    /// Tokens and cost over every call of the attempt.
    pub usage: Usage,
}

/// A failed attempt, with what it did before failing.
#[derive(Debug)]
pub struct AgentFailure {
    pub error: AgentError,
    /// Tool audit and validation events so far.
    pub events: Vec<NewEvent>,
    /// Tokens and cost of the calls made (they are paid for).
    pub usage: Usage,
}

/// The agents: prompt templates and the tool executor every task goes through.
pub struct Agents {
    /// Every template, loaded and parsed once; rendering only reads it.
    env: Environment<'static>,
    tools: ToolExecutor,
    /// Each role's system prompt, rendered once (it depends only on the role
    /// and its allowlist).
    system: std::collections::BTreeMap<Role, String>,
}

impl std::fmt::Debug for Agents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agents")
            .field("tools", &self.tools)
            .finish_non_exhaustive()
    }
}

impl Agents {
    /// Agents with the built-in tools and the default allowlists.
    pub fn new() -> Result<Agents, AgentError> {
        Self::with_tools(ToolExecutor::default())
    }

    /// Agents with a given tool executor (registry and allowlists). Every
    /// system prompt is rendered once here, so template errors surface at
    /// start-up rather than in the middle of a run.
    pub fn with_tools(executor: ToolExecutor) -> Result<Agents, AgentError> {
        let mut agents = Agents {
            env: prompts::environment()?,
            tools: executor,
            system: Default::default(),
        };
        for role in Role::ALL {
            let prompt = prompts::system_prompt(&agents.env, role, agents.abilities(role))?;
            agents.system.insert(role, prompt);
        }
        Ok(agents)
    }

    /// The tool executor tasks run their writes through.
    pub fn tools(&self) -> &ToolExecutor {
        &self.tools
    }

    /// The system prompt of `role`.
    pub fn system_prompt(&self, role: Role) -> Result<String, AgentError> {
        match self.system.get(&role) {
            Some(prompt) => Ok(prompt.clone()),
            None => prompts::system_prompt(&self.env, role, self.abilities(role)),
        }
    }

    /// The user message of a task: goal, context, instructions, findings,
    /// upstream artifacts, team channel messages, expected artifacts and the
    /// output format reminder.
    pub fn task_message(&self, input: &TaskInput<'_>) -> Result<String, AgentError> {
        Ok(self.task_message_apart(input)?.full(input.upstream))
    }

    /// [`Agents::task_message`] with the upstream artifacts it quotes apart.
    pub(crate) fn task_message_apart(
        &self,
        input: &TaskInput<'_>,
    ) -> Result<prompts::TaskMessage, AgentError> {
        prompts::task_message(&self.env, input, self.abilities(input.task.role))
    }

    /// What the role's allowlist lets it do, as the prompts describe it.
    fn abilities(&self, role: Role) -> prompts::Abilities {
        prompts::Abilities {
            writes_files: self.tools.allowlists.allows(role, WRITE_FILE),
            posts_messages: self.tools.allowlists.allows(role, POST_MESSAGE),
        }
    }

    /// Run one attempt of `input.task`: see the `turn` module.
    pub async fn run_task(
        &self,
        input: TaskInput<'_>,
        provider: &dyn orch_llm::Provider,
        sink: &dyn EventSink,
    ) -> Result<AgentOutput, AgentFailure> {
        turn::run(self, input, provider, sink).await
    }
}
