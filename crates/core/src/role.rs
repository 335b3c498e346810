//! Agent roles and the queue each one is served from.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// A specialist (or the orchestrator itself) that can be assigned a task.
///
/// Roles are written in `snake_case` everywhere a user types them (workflow
/// files, `--roles`, the API). Each specialist has its own queue, named as in
/// the seed (`q_ba`, `q_pm`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Orchestrator,
    BusinessAnalyst,
    ProjectManager,
    UxEngineer,
    TechLead,
    DatabaseEngineer,
    BackendEngineer,
    FrontendEngineer,
    CodeReviewer,
    SecurityReviewer,
}

impl Role {
    /// Every role, orchestrator first, then the lifecycle order.
    pub const ALL: [Role; 10] = [
        Role::Orchestrator,
        Role::BusinessAnalyst,
        Role::ProjectManager,
        Role::UxEngineer,
        Role::TechLead,
        Role::DatabaseEngineer,
        Role::BackendEngineer,
        Role::FrontendEngineer,
        Role::CodeReviewer,
        Role::SecurityReviewer,
    ];

    /// The nine specialists that workers serve (everything but the orchestrator).
    pub const SPECIALISTS: [Role; 9] = [
        Role::BusinessAnalyst,
        Role::ProjectManager,
        Role::UxEngineer,
        Role::TechLead,
        Role::DatabaseEngineer,
        Role::BackendEngineer,
        Role::FrontendEngineer,
        Role::CodeReviewer,
        Role::SecurityReviewer,
    ];

    /// The name users type: `business_analyst`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Orchestrator => "orchestrator",
            Role::BusinessAnalyst => "business_analyst",
            Role::ProjectManager => "project_manager",
            Role::UxEngineer => "ux_engineer",
            Role::TechLead => "tech_lead",
            Role::DatabaseEngineer => "database_engineer",
            Role::BackendEngineer => "backend_engineer",
            Role::FrontendEngineer => "frontend_engineer",
            Role::CodeReviewer => "code_reviewer",
            Role::SecurityReviewer => "security_reviewer",
        }
    }

    /// The queue this role's workers consume, as named in the seed.
    pub fn queue(self) -> &'static str {
        match self {
            Role::Orchestrator => "q_orch",
            Role::BusinessAnalyst => "q_ba",
            Role::ProjectManager => "q_pm",
            Role::UxEngineer => "q_ux",
            Role::TechLead => "q_tl",
            Role::DatabaseEngineer => "q_db",
            Role::BackendEngineer => "q_be",
            Role::FrontendEngineer => "q_fe",
            Role::CodeReviewer => "q_cr",
            Role::SecurityReviewer => "q_sec",
        }
    }

    /// A human title: "Business Analyst".
    pub fn title(self) -> &'static str {
        match self {
            Role::Orchestrator => "Orchestrator",
            Role::BusinessAnalyst => "Business Analyst",
            Role::ProjectManager => "Project Manager",
            Role::UxEngineer => "UX Engineer",
            Role::TechLead => "Tech Lead",
            Role::DatabaseEngineer => "Database Engineer",
            Role::BackendEngineer => "Backend Engineer",
            Role::FrontendEngineer => "Frontend Engineer",
            Role::CodeReviewer => "Code Reviewer",
            Role::SecurityReviewer => "Security Reviewer",
        }
    }

    /// Short label used in compact progress output: `ba`, `pm`, ...
    pub fn short(self) -> &'static str {
        &self.queue()[2..]
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;

    /// Accepts the snake_case name, the queue name (`q_be`) or its short form (`be`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s || r.queue() == s || r.short() == s)
            .ok_or_else(|| Error::UnknownRole(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_match_the_seed() {
        let queues: Vec<_> = Role::SPECIALISTS.iter().map(|r| r.queue()).collect();
        assert_eq!(
            queues,
            [
                "q_ba", "q_pm", "q_ux", "q_tl", "q_db", "q_be", "q_fe", "q_cr", "q_sec"
            ]
        );
    }

    #[test]
    fn parses_names_queues_and_short_forms() {
        assert_eq!(
            "backend_engineer".parse::<Role>().unwrap(),
            Role::BackendEngineer
        );
        assert_eq!("q_sec".parse::<Role>().unwrap(), Role::SecurityReviewer);
        assert_eq!("ux".parse::<Role>().unwrap(), Role::UxEngineer);
        let err = "designer".parse::<Role>().unwrap_err();
        assert!(err.to_string().contains("designer"), "{err}");
    }
}
