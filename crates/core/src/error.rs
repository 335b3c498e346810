//! The core crate's error type.

use crate::dsl::DslError;

/// Everything that can go wrong in pure domain logic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "unknown role {0:?}; known roles: business_analyst, project_manager, ux_engineer, tech_lead, database_engineer, backend_engineer, frontend_engineer, code_reviewer, security_reviewer (or their queues q_ba ... q_sec)"
    )]
    UnknownRole(String),
    #[error("unknown {kind} value {value:?}")]
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
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
