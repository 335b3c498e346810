//! The tool boundary of the orchestrator: what an agent may *do*, besides
//! talking. Every effect an agent has on a run (writing an artifact or a file
//! of the run's workspace, reading upstream artifacts, posting to and reading
//! from the run's channels) goes through a [`Tool`]
//! called by the [`ToolExecutor`], which checks the role's allowlist first and
//! returns an audit event for every call, allowed or denied.
//!
//! Parts: this file (the [`Tool`] trait, [`ToolContext`], [`ToolOutput`],
//! [`Error`]), [`registry`] (the named tools), [`allowlist`] (which role may
//! call which tool), [`executor`] (allowlist check, call, audit event),
//! [`builtin`] (`write_artifact`, `write_file`, `read_artifact`), [`channel`]
//! (`post_message`, `read_messages`, [`ChannelPost`]), [`path`]
//! ([`sanitize_path`], the strict check of workspace paths that `export`
//! relies on).
//!
//! Tools work on an in-memory, per-task workspace: they never touch the file
//! system, the network or a store. This crate depends on `orch-core` only.

use std::sync::{Mutex, MutexGuard};

use orch_core::{Artifact, NewArtifact, Role, RunId};

pub mod allowlist;
pub mod builtin;
pub mod channel;
pub mod executor;
pub mod path;
pub mod registry;

pub use allowlist::Allowlists;
pub use channel::ChannelPost;
pub use executor::{ToolExecution, ToolExecutor};
pub use path::sanitize_path;
pub use registry::Registry;

/// Everything that can go wrong at the tool boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The role may not call this tool (the tool was not run).
    #[error("role {role} may not use tool {tool:?}")]
    Denied { role: Role, tool: String },
    #[error("unknown tool {0:?}")]
    UnknownTool(String),
    /// The input does not match the tool's schema.
    #[error("tool {tool}: invalid input: {message}")]
    InvalidInput { tool: String, message: String },
    /// A workspace path that is not a safe relative path.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    /// `read_artifact` found no upstream artifact of that name.
    #[error("no upstream artifact named {0:?}")]
    NotFound(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A tool an agent may call. Calls are synchronous: tools only touch the
/// in-memory [`ToolContext`].
pub trait Tool: Send + Sync + std::fmt::Debug {
    /// The name agents and allowlists use (`write_file`).
    fn name(&self) -> &str;
    /// One sentence for the model.
    fn description(&self) -> &str;
    /// JSON schema of the input object.
    fn input_schema(&self) -> serde_json::Value;
    /// Run the tool. Errors are reported to the model, not raised further.
    fn call(&self, ctx: &ToolContext, input: &serde_json::Value) -> Result<ToolOutput>;
}

/// What a tool returns.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutput {
    /// Text for the model (`wrote backend/app.py (1.2 KB)`, an artifact's content).
    pub text: String,
    /// Structured details for the audit event.
    pub data: serde_json::Value,
}

impl ToolOutput {
    pub fn new(text: impl Into<String>) -> Self {
        ToolOutput {
            text: text.into(),
            data: serde_json::Value::Null,
        }
    }

    pub fn with_data(mut self, data: serde_json::Value) -> Self {
        self.data = data;
        self
    }
}

/// The per-task workspace tools work on: what the task may read (its
/// upstream artifacts, the run's earlier channel messages) and what it has
/// written and posted so far.
#[derive(Debug)]
pub struct ToolContext {
    pub run_id: RunId,
    pub task_id: String,
    pub role: Role,
    /// Latest versions of the artifacts the task may read.
    pub upstream: Vec<Artifact>,
    /// Messages posted on the run's channels before the task started, oldest
    /// first (empty unless set with [`ToolContext::with_inbox`]).
    pub inbox: Vec<ChannelPost>,
    /// Artifacts written by this task's tool calls, in order. A mutex so that
    /// tools take `&ToolContext` (and a context can be shared by reference);
    /// it is only held for the duration of one push or read, never across an
    /// `.await`.
    written: Mutex<Vec<NewArtifact>>,
    /// Messages posted by this task's tool calls, in order (the outbox; a
    /// mutex for the same reason as `written`).
    posted: Mutex<Vec<ChannelPost>>,
}

impl ToolContext {
    pub fn new(
        run_id: RunId,
        task_id: impl Into<String>,
        role: Role,
        upstream: Vec<Artifact>,
    ) -> Self {
        ToolContext {
            run_id,
            task_id: task_id.into(),
            role,
            upstream,
            inbox: Vec::new(),
            written: Mutex::new(Vec::new()),
            posted: Mutex::new(Vec::new()),
        }
    }

    /// Set the run's earlier channel messages the task may read.
    pub fn with_inbox(mut self, inbox: Vec<ChannelPost>) -> Self {
        self.inbox = inbox;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Vec<NewArtifact>> {
        // A panic while pushing cannot leave the Vec half-updated: recover.
        self.written.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record an artifact. A document with the same name, or a file with the
    /// same name and path, replaces the earlier one (the latest write wins).
    pub fn write(&self, artifact: NewArtifact) {
        let mut written = self.lock();
        match written
            .iter_mut()
            .find(|a| a.name == artifact.name && a.path == artifact.path)
        {
            Some(existing) => *existing = artifact,
            None => written.push(artifact),
        }
    }

    fn outbox(&self) -> MutexGuard<'_, Vec<ChannelPost>> {
        self.posted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue a message for posting (when the attempt succeeds).
    pub fn post(&self, message: ChannelPost) {
        self.outbox().push(message);
    }

    /// A copy of the messages posted so far, in order.
    pub fn posted(&self) -> Vec<ChannelPost> {
        self.outbox().clone()
    }

    /// Take the messages posted so far, leaving the outbox empty.
    pub fn take_posted(&self) -> Vec<ChannelPost> {
        std::mem::take(&mut *self.outbox())
    }

    /// A copy of what has been written so far.
    pub fn written(&self) -> Vec<NewArtifact> {
        self.lock().clone()
    }

    /// Take what has been written, leaving the workspace empty.
    pub fn take_written(&self) -> Vec<NewArtifact> {
        std::mem::take(&mut *self.lock())
    }

    /// The latest upstream versions named `name` (several for multi-file code
    /// artifacts: the latest version per path), in path order.
    pub fn upstream_named(&self, name: &str) -> Vec<&Artifact> {
        let mut latest: Vec<&Artifact> = Vec::new();
        for a in self.upstream.iter().filter(|a| a.name == name) {
            match latest.iter_mut().find(|l| l.path == a.path) {
                Some(l) if l.version < a.version => *l = a,
                Some(_) => {}
                None => latest.push(a),
            }
        }
        latest.sort_by(|a, b| a.path.cmp(&b.path));
        latest
    }
}
