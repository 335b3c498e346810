//! The named tools an executor can run.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::Tool;
use crate::builtin::{ReadArtifact, WriteArtifact, WriteFile};
use crate::channel::{PostMessage, ReadMessages};

/// Tools by name. Cheap to clone (tools are shared). The default is
/// [`Registry::builtin`].
#[derive(Debug, Clone)]
pub struct Registry {
    tools: BTreeMap<String, Arc<dyn Tool>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::builtin()
    }
}

impl Registry {
    /// No tools.
    pub fn empty() -> Self {
        Registry {
            tools: BTreeMap::new(),
        }
    }

    /// The built-in tools: `write_artifact`, `write_file`, `read_artifact`,
    /// `post_message`, `read_messages`.
    pub fn builtin() -> Self {
        Registry::empty()
            .with(WriteArtifact)
            .with(WriteFile)
            .with(ReadArtifact)
            .with(PostMessage)
            .with(ReadMessages)
    }

    /// Add (or replace) a tool under its own name.
    pub fn with(mut self, tool: impl Tool + 'static) -> Self {
        self.register(Arc::new(tool));
        self
    }

    /// Add (or replace) a tool under its own name.
    pub fn register(&mut self, tool: Arc<dyn Tool>) {
        self.tools.insert(tool.name().to_string(), tool);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Tool>> {
        self.tools.get(name)
    }

    /// Tool names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.tools.keys().map(String::as_str).collect()
    }

    /// Every tool, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Tool>> {
        self.tools.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_has_the_five_tools_with_object_schemas() {
        let r = Registry::builtin();
        assert_eq!(
            r.names(),
            [
                "post_message",
                "read_artifact",
                "read_messages",
                "write_artifact",
                "write_file"
            ]
        );
        for t in r.iter() {
            assert_eq!(t.input_schema()["type"], "object", "{}", t.name());
            assert!(!t.description().is_empty());
        }
        assert!(r.get("shell").is_none());
    }
}
