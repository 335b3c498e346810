//! The task DSL: workflow files (YAML) that describe a plan as tasks with
//! roles, dependencies, expected artifacts, validation, gates, retries and
//! timeouts. Parsing reports errors with the file, line and field.
//!
//! PLACEHOLDER: parsing and validation are being completed (line-accurate
//! errors, all DAG checks, built-in workflows).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{ExpectedArtifact, GateKind, Role, ValidationRule};

/// A validated workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Criteria a run of this workflow must meet; copied into the run.
    #[serde(default)]
    pub success_criteria: Vec<String>,
    pub tasks: Vec<TaskSpec>,
}

/// One task of a workflow, as written in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub id: String,
    pub role: Role,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub instructions: String,
    #[serde(default)]
    pub needs: Vec<String>,
    #[serde(default)]
    pub produces: Vec<ExpectedArtifact>,
    #[serde(default)]
    pub validation: Vec<ValidationRule>,
    #[serde(default)]
    pub gate: Option<GateKind>,
    /// Retries after the first attempt (max attempts = retries + 1).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Per-task timeout in seconds; the run's default when absent.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Overrides the default dedupe key (`<run>/<task id>/<round>`).
    #[serde(default)]
    pub dedupe_key: Option<String>,
}

fn default_retries() -> u32 {
    2
}

/// A workflow error, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DslError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted path of the offending field (`tasks[3].needs`).
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for DslError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl Workflow {
    /// Parse and validate a workflow file. `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Workflow, DslError> {
        let wf: Workflow = yaml_serde::from_str(text).map_err(|e| DslError {
            file: file.to_string(),
            line: e.location().map(|l| l.line()),
            column: e.location().map(|l| l.column()),
            field: None,
            message: e.to_string(),
        })?;
        Ok(wf)
    }

    /// The built-in workflow called `name`.
    pub fn builtin(name: &str) -> Option<Workflow> {
        let (file, text) = builtin_source(name)?;
        Some(Workflow::parse(file, text).expect("built-in workflows are valid"))
    }

    pub fn task(&self, id: &str) -> Option<&TaskSpec> {
        self.tasks.iter().find(|t| t.id == id)
    }
}

/// Names of the workflows that ship with the binary.
pub const BUILTIN_WORKFLOWS: &[&str] = &["sdlc"];

/// `(file name, YAML text)` of a built-in workflow.
pub fn builtin_source(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "sdlc" => Some(("sdlc.yaml", include_str!("../workflows/sdlc.yaml"))),
        _ => None,
    }
}
