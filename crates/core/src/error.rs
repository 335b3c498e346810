//! The core crate's error type.

use crate::dsl::DslError;

/// Everything that can go wrong in pure domain logic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "unknown role {0:?}; known roles: business_analyst, project_manager, ux_engineer, tech_lead, database_engineer, backend_engineer, frontend_engineer, code_reviewer, security_reviewer (or their queues q_ba ... q_sec)"
    )]
    UnknownRole(String),
    #[error("unknown {kind} value {value:?}{}", valid_values(.kind))]
    UnknownStatus { kind: &'static str, value: String },
    #[error("unknown gate {0:?}; gates are code_review and security_review")]
    UnknownGate(String),
    #[error("invalid id {0:?}: ids are letters, digits and '-'")]
    InvalidId(String),
    #[error("illegal {entity} transition {from} -> {to}")]
    IllegalTransition {
        entity: &'static str,
        from: &'static str,
        to: &'static str,
    },
    #[error("review verdict is not usable: {0}")]
    BadVerdict(String),
    #[error(transparent)]
    Dsl(#[from] DslError),
    /// The input does not apply to the run in its current state (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    #[error("no task {0:?} in this run")]
    UnknownTask(String),
    /// A required gate has no review task in the workflow: the run could
    /// never pass it, so it would complete unreviewed.
    #[error(
        "workflow {workflow:?} has no {gate} task but {var} is true: add a task with `gate: {gate}`, or set {var}=false to run it without that gate"
    )]
    GateWithoutReview {
        workflow: String,
        gate: &'static str,
        var: &'static str,
    },
}

/// `; valid values: ...` for the enum named `kind`, for
/// [`Error::UnknownStatus`] (empty for a name it does not know).
fn valid_values(kind: &str) -> String {
    use crate::{EventKind, GateStatus, RunStatus, TaskStatus};
    fn join<T: Copy>(all: &[T], name: fn(T) -> &'static str) -> String {
        all.iter().map(|v| name(*v)).collect::<Vec<_>>().join(", ")
    }
    let list = match kind {
        "RunStatus" => join(RunStatus::ALL, RunStatus::as_str),
        "TaskStatus" => join(TaskStatus::ALL, TaskStatus::as_str),
        "GateStatus" => join(GateStatus::ALL, GateStatus::as_str),
        "EventKind" => EventKind::NAMES.join(", "),
        _ => return String::new(),
    };
    format!("; valid values: {list}")
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use crate::{EventKind, GateStatus, RunStatus, TaskStatus};

    #[test]
    fn unknown_values_name_the_valid_ones_in_one_line() {
        let err = "bogus".parse::<RunStatus>().unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown RunStatus value \"bogus\"; valid values: PENDING, PLANNING, RUNNING, NEEDS_INPUT, COMPLETED, FAILED, CANCELLED"
        );
        for err in [
            "x".parse::<TaskStatus>().unwrap_err().to_string(),
            "x".parse::<GateStatus>().unwrap_err().to_string(),
            "x".parse::<EventKind>().unwrap_err().to_string(),
        ] {
            assert!(err.contains("; valid values: "), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let err = "x".parse::<EventKind>().unwrap_err().to_string();
        assert!(err.contains("run_created, "), "{err}");
    }
}
