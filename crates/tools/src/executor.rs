//! The executor: allowlist check first, then the call, and always an audit event.

use orch_core::{EventKind, NewEvent, Role};
use serde_json::{Value, json};

use crate::{Allowlists, Error, Registry, Result, ToolContext, ToolOutput};

/// Strings longer than this are shortened in audit events.
const SUMMARY_MAX_CHARS: usize = 200;

/// Runs tools for agents: checks the role's allowlist, runs the tool, and
/// describes the call in an audit event. The default has the built-in tools
/// and the default allowlists.
#[derive(Debug, Clone, Default)]
pub struct ToolExecutor {
    pub registry: Registry,
    pub allowlists: Allowlists,
}

/// The outcome of one call and the audit event that records it
/// (`tool_call` if allowed, `tool_denied` if not).
#[derive(Debug, Clone)]
pub struct ToolExecution {
    pub result: Result<ToolOutput>,
    pub event: NewEvent,
}

impl ToolExecution {
    pub fn denied(&self) -> bool {
        matches!(self.result, Err(Error::Denied { .. }))
    }
}

impl ToolExecutor {
    pub fn new(registry: Registry, allowlists: Allowlists) -> Self {
        ToolExecutor {
            registry,
            allowlists,
        }
    }

    /// Run `tool` for `role`. A tool the role may not use is never run: the
    /// result is [`Error::Denied`] and the event `tool_denied`.
    pub fn execute(
        &self,
        role: Role,
        tool: &str,
        input: &Value,
        ctx: &ToolContext,
    ) -> ToolExecution {
        let summary = summarize(input);
        let target = describe_target(input);
        if !self.allowlists.allows(role, tool) {
            tracing::warn!(%role, tool, task = %ctx.task_id, "tool call denied");
            let event = NewEvent::task(
                EventKind::ToolDenied,
                &ctx.task_id,
                format!("{role} may not use {tool}{target}: denied"),
            )
            .with_data(json!({
                "tool": tool,
                "role": role,
                "input": summary,
                "allowed": false,
                "outcome": "denied",
            }));
            return ToolExecution {
                result: Err(Error::Denied {
                    role,
                    tool: tool.to_string(),
                }),
                event,
            };
        }
        let result = match self.registry.get(tool) {
            Some(t) => t.call(ctx, input),
            None => Err(Error::UnknownTool(tool.to_string())),
        };
        let (outcome, message) = match &result {
            Ok(out) => (
                json!({"ok": true, "text": shorten(first_line(&out.text)), "data": out.data}),
                format!("{role} called {tool}: {}", shorten(first_line(&out.text))),
            ),
            Err(e) => (
                json!({"ok": false, "error": e.to_string()}),
                format!("{role} called {tool}{target}: failed: {e}"),
            ),
        };
        let event = NewEvent::task(EventKind::ToolCall, &ctx.task_id, message).with_data(json!({
            "tool": tool,
            "role": role,
            "input": summary,
            "allowed": true,
            "outcome": outcome,
        }));
        ToolExecution { result, event }
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// ` (backend/app.py)` or ` (requirements)`: what a call is about, for messages.
fn describe_target(input: &Value) -> String {
    ["path", "name", "artifact"]
        .iter()
        .find_map(|k| input.get(k).and_then(Value::as_str))
        .map(|s| format!(" ({})", shorten(s)))
        .unwrap_or_default()
}

/// Shorten `s` to [`SUMMARY_MAX_CHARS`] characters, saying how long it was.
fn shorten(s: &str) -> String {
    let n = s.chars().count();
    if n <= SUMMARY_MAX_CHARS {
        s.to_string()
    } else {
        let head: String = s.chars().take(SUMMARY_MAX_CHARS).collect();
        format!("{head}… ({n} chars)")
    }
}

/// The input with long strings shortened (content is summarised, not logged).
fn summarize(input: &Value) -> Value {
    match input {
        Value::String(s) => Value::String(shorten(s)),
        Value::Array(items) => Value::Array(items.iter().map(summarize).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), summarize(v))).collect())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_core::RunId;

    fn ctx(role: Role) -> ToolContext {
        ToolContext::new(RunId("r".into()), "code_review", role, vec![])
    }

    #[test]
    fn denied_calls_never_run_and_are_audited() {
        let ex = ToolExecutor::default();
        let c = ctx(Role::CodeReviewer);
        let input = json!({"path": "backend/app.py", "content": "x", "artifact": "backend_code"});
        let out = ex.execute(Role::CodeReviewer, "write_file", &input, &c);
        assert!(out.denied());
        assert!(c.written().is_empty(), "the tool did not run");
        assert_eq!(out.event.kind, EventKind::ToolDenied);
        assert_eq!(out.event.task_id.as_deref(), Some("code_review"));
        assert_eq!(out.event.data["allowed"], false);
        assert_eq!(out.event.data["role"], "code_reviewer");
        assert_eq!(out.event.data["tool"], "write_file");
        assert!(
            out.event.message.contains("backend/app.py"),
            "{}",
            out.event.message
        );
    }

    #[test]
    fn allowed_calls_run_and_summarise_long_input() {
        let ex = ToolExecutor::default();
        let c = ctx(Role::BackendEngineer);
        let long = "y".repeat(5000);
        let input = json!({"path": "backend/app.py", "content": long, "artifact": "backend_code"});
        let out = ex.execute(Role::BackendEngineer, "write_file", &input, &c);
        assert!(out.result.is_ok(), "{:?}", out.result);
        assert_eq!(c.written().len(), 1);
        assert_eq!(out.event.kind, EventKind::ToolCall);
        assert_eq!(out.event.data["allowed"], true);
        assert_eq!(out.event.data["outcome"]["ok"], true);
        let content = out.event.data["input"]["content"].as_str().unwrap();
        assert!(
            content.len() < 300 && content.ends_with("(5000 chars)"),
            "{content}"
        );
        assert!(
            out.event.message.contains("wrote backend/app.py (4.9 KB)"),
            "{}",
            out.event.message
        );
    }

    #[test]
    fn failures_and_unknown_tools_are_audited_as_calls() {
        let ex = ToolExecutor::new(
            Registry::builtin(),
            Allowlists::default().allow(Role::BackendEngineer, "shell"),
        );
        let c = ctx(Role::BackendEngineer);
        let out = ex.execute(Role::BackendEngineer, "shell", &json!({}), &c);
        assert!(matches!(out.result, Err(Error::UnknownTool(_))));
        assert_eq!(out.event.kind, EventKind::ToolCall);
        let input = json!({"path": "/etc/passwd", "content": "x", "artifact": "backend_code"});
        let out = ex.execute(Role::BackendEngineer, "write_file", &input, &c);
        assert_eq!(out.event.data["outcome"]["ok"], false);
        assert!(
            out.event.message.contains("absolute"),
            "{}",
            out.event.message
        );
    }
}
