//! Which role may call which tool.
//!
//! Defaults: every specialist may `read_artifact` and `write_artifact`, and
//! `post_message` and `read_messages` on the run's channels; the implementers
//! (backend, frontend and database engineers) may also `write_file`;
//! reviewers may read and write documents (their reviews) but never code; the
//! orchestrator may only `read_artifact`. Each role's list can be replaced,
//! extended or narrowed.

use std::collections::{BTreeMap, BTreeSet};

use orch_core::Role;

use crate::builtin::{READ_ARTIFACT, WRITE_ARTIFACT, WRITE_FILE};
use crate::channel::{POST_MESSAGE, READ_MESSAGES};

/// Tool names allowed per role. A role without an entry may call nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowlists {
    by_role: BTreeMap<Role, BTreeSet<String>>,
}

impl Default for Allowlists {
    fn default() -> Self {
        let mut by_role = BTreeMap::new();
        for role in Role::ALL {
            by_role.insert(
                role,
                Self::default_for(role)
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            );
        }
        Allowlists { by_role }
    }
}

impl Allowlists {
    /// No role may call anything.
    pub fn empty() -> Self {
        Allowlists {
            by_role: BTreeMap::new(),
        }
    }

    /// The default tools of `role`.
    pub fn default_for(role: Role) -> &'static [&'static str] {
        match role {
            Role::Orchestrator => &[READ_ARTIFACT],
            Role::BackendEngineer | Role::FrontendEngineer | Role::DatabaseEngineer => &[
                READ_ARTIFACT,
                WRITE_ARTIFACT,
                WRITE_FILE,
                POST_MESSAGE,
                READ_MESSAGES,
            ],
            Role::BusinessAnalyst
            | Role::ProjectManager
            | Role::UxEngineer
            | Role::TechLead
            | Role::CodeReviewer
            | Role::SecurityReviewer => {
                &[READ_ARTIFACT, WRITE_ARTIFACT, POST_MESSAGE, READ_MESSAGES]
            }
        }
    }

    /// Whether `role` may call `tool`.
    pub fn allows(&self, role: Role, tool: &str) -> bool {
        self.by_role.get(&role).is_some_and(|s| s.contains(tool))
    }

    /// The tools `role` may call, sorted.
    pub fn tools_for(&self, role: Role) -> Vec<&str> {
        self.by_role
            .get(&role)
            .map(|s| s.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// Replace the list of `role`.
    pub fn set<I, S>(mut self, role: Role, tools: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.by_role
            .insert(role, tools.into_iter().map(Into::into).collect());
        self
    }

    /// Add `tool` to the list of `role`.
    pub fn allow(mut self, role: Role, tool: impl Into<String>) -> Self {
        self.by_role.entry(role).or_default().insert(tool.into());
        self
    }

    /// Remove `tool` from the list of `role`.
    pub fn deny(mut self, role: Role, tool: &str) -> Self {
        if let Some(s) = self.by_role.get_mut(&role) {
            s.remove(tool);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_policy() {
        let a = Allowlists::default();
        for role in Role::SPECIALISTS {
            assert!(a.allows(role, READ_ARTIFACT), "{role}");
            assert!(a.allows(role, WRITE_ARTIFACT), "{role}");
            assert!(a.allows(role, POST_MESSAGE), "{role}");
            assert!(a.allows(role, READ_MESSAGES), "{role}");
        }
        for role in [
            Role::BackendEngineer,
            Role::FrontendEngineer,
            Role::DatabaseEngineer,
        ] {
            assert!(a.allows(role, WRITE_FILE), "{role}");
        }
        for role in [
            Role::CodeReviewer,
            Role::SecurityReviewer,
            Role::BusinessAnalyst,
            Role::TechLead,
        ] {
            assert!(!a.allows(role, WRITE_FILE), "{role}");
        }
        assert_eq!(a.tools_for(Role::Orchestrator), vec![READ_ARTIFACT]);
        assert!(!a.allows(Role::TechLead, "shell"));
    }

    #[test]
    fn lists_can_be_overridden() {
        let a = Allowlists::default()
            .allow(Role::TechLead, WRITE_FILE)
            .deny(Role::BackendEngineer, WRITE_FILE)
            .set(Role::Orchestrator, [WRITE_ARTIFACT]);
        assert!(a.allows(Role::TechLead, WRITE_FILE));
        assert!(!a.allows(Role::BackendEngineer, WRITE_FILE));
        assert!(!a.allows(Role::Orchestrator, READ_ARTIFACT));
        assert!(!Allowlists::empty().allows(Role::TechLead, READ_ARTIFACT));
    }
}
