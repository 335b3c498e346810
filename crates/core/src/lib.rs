//! Domain core of the orchestrator: what a run, task, gate, event and artifact
//! are, which status transitions are legal, the task DSL that turns a workflow
//! file into a plan, and the pure state machine that drives a run.
//!
//! Parts: [`role`] (the ten roles and their queues), [`status`] (statuses and
//! the one table of legal transitions), [`model`] (the durable records),
//! [`dsl`] (workflow files: parsing, line-accurate errors, validation, the
//! built-in `sdlc` workflow), [`machine`] (`apply(state, input, now) ->
//! actions`), [`validate`] (checks of a task's output), [`elision`] (prompts
//! stored by reference to the artifacts they quote).
//!
//! This crate does no I/O: no database, no network, no clock, no tokio. The
//! driver (the `engine` crate) supplies the time and performs the actions. It
//! depends on no other crate of the workspace.

pub mod dsl;
pub mod elision;
pub mod error;
pub mod machine;
pub mod model;
pub mod role;
pub mod status;
pub mod validate;

pub use dsl::{DslError, TaskSpec, Workflow};
pub use error::{Error, Result};
pub use machine::{Action, BUDGET_EXCEEDED, Input, RunState, StateDiff, TaskChange};
pub use model::*;
pub use role::Role;
pub use status::{GateStatus, RunStatus, TaskStatus};
