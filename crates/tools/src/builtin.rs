//! The built-in tools: `write_artifact`, `write_file` and `read_artifact`.
//!
//! They work on the task's in-memory [`ToolContext`]: writes are collected
//! there (the engine stores them when the task completes, fenced by its
//! lease), reads see the task's upstream artifacts.

use orch_core::NewArtifact;
use serde_json::{Value, json};

use crate::{Error, Result, Tool, ToolContext, ToolOutput, sanitize_path};

pub const WRITE_ARTIFACT: &str = "write_artifact";
pub const WRITE_FILE: &str = "write_file";
pub const READ_ARTIFACT: &str = "read_artifact";

/// Largest content a single write accepts, in bytes.
pub const MAX_CONTENT_BYTES: usize = 1024 * 1024;

/// A required string field of a tool's input.
fn field<'a>(tool: &str, input: &'a Value, key: &str) -> Result<&'a str> {
    match input.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(invalid(
            tool,
            format!("field {key:?} must be a string, got {}", type_name(other)),
        )),
        None => Err(invalid(tool, format!("missing field {key:?}"))),
    }
}

/// An optional string field (absent or null means `None`).
fn opt_field<'a>(tool: &str, input: &'a Value, key: &str) -> Result<Option<&'a str>> {
    match input.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => field(tool, input, key).map(Some),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn invalid(tool: &str, message: String) -> Error {
    Error::InvalidInput {
        tool: tool.to_string(),
        message,
    }
}

/// Artifact names and kinds: 1..=64 of `[A-Za-z0-9_.-]`, starting with a letter or digit.
fn check_ident(tool: &str, what: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            tool,
            format!(
                "{what} {value:?} must be 1-64 letters, digits, '_', '-' or '.' (e.g. backend_code)"
            ),
        ))
    }
}

fn check_size(tool: &str, content: &str) -> Result<()> {
    if content.len() > MAX_CONTENT_BYTES {
        return Err(invalid(
            tool,
            format!(
                "content is {} bytes; the limit is {MAX_CONTENT_BYTES} bytes: split it into several files",
                content.len()
            ),
        ));
    }
    Ok(())
}

/// A human size: `512 B`, `1.2 KB`, `3.4 MB`.
pub fn human_size(bytes: usize) -> String {
    if bytes < 1024 {
        format!("{bytes} B")
    } else if bytes < 1024 * 1024 {
        format!("{:.1} KB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MB", bytes as f64 / (1024.0 * 1024.0))
    }
}

/// `write_artifact {name, kind, content}`: a document artifact (no path).
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteArtifact;

impl Tool for WriteArtifact {
    fn name(&self) -> &str {
        WRITE_ARTIFACT
    }

    fn description(&self) -> &str {
        "Write a document artifact (requirements, plan, design, architecture, review, ...) of this task."
    }

    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "artifact name, e.g. requirements"},
                "kind": {"type": "string", "description": "artifact type, e.g. requirements, plan, design, review"},
                "content": {"type": "string", "description": "the complete document (markdown)"}
            },
            "required": ["name", "kind", "content"],
            "additionalProperties": false
        })
    }

    fn call(&self, ctx: &ToolContext, input: &Value) -> Result<ToolOutput> {
        let name = field(WRITE_ARTIFACT, input, "name")?;
        let kind = field(WRITE_ARTIFACT, input, "kind")?;
        let content = field(WRITE_ARTIFACT, input, "content")?;
        check_ident(WRITE_ARTIFACT, "name", name)?;
        check_ident(WRITE_ARTIFACT, "kind", kind)?;
        check_size(WRITE_ARTIFACT, content)?;
        ctx.write(NewArtifact {
            name: name.to_string(),
            kind: kind.to_string(),
            path: None,
            content: content.to_string(),
            metadata: json!({}),
        });
        Ok(
            ToolOutput::new(format!("wrote {name} ({})", human_size(content.len())))
                .with_data(json!({"name": name, "kind": kind, "bytes": content.len()})),
        )
    }
}

/// `write_file {path, content, artifact, kind?}`: one file of a code artifact.
/// Several files may share one artifact name; each is its own entry.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteFile;

impl Tool for WriteFile {
    fn name(&self) -> &str {
        WRITE_FILE
    }

    fn description(&self) -> &str {
        "Write one file of the run's workspace as part of a code artifact (relative path, e.g. backend/app.py)."
    }

    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "relative file path, '/'-separated, no '..'"},
                "content": {"type": "string", "description": "the complete file content"},
                "artifact": {"type": "string", "description": "artifact the file belongs to, e.g. backend_code"},
                "kind": {"type": "string", "description": "artifact type (default code; e.g. schema)"}
            },
            "required": ["path", "content", "artifact"],
            "additionalProperties": false
        })
    }

    fn call(&self, ctx: &ToolContext, input: &Value) -> Result<ToolOutput> {
        let raw_path = field(WRITE_FILE, input, "path")?;
        let content = field(WRITE_FILE, input, "content")?;
        let name = field(WRITE_FILE, input, "artifact")?;
        let kind = opt_field(WRITE_FILE, input, "kind")?.unwrap_or("code");
        check_ident(WRITE_FILE, "artifact", name)?;
        check_ident(WRITE_FILE, "kind", kind)?;
        check_size(WRITE_FILE, content)?;
        let path = sanitize_path(raw_path)?;
        ctx.write(NewArtifact {
            name: name.to_string(),
            kind: kind.to_string(),
            path: Some(path.clone()),
            content: content.to_string(),
            metadata: json!({"path": path}),
        });
        Ok(
            ToolOutput::new(format!("wrote {path} ({})", human_size(content.len()))).with_data(
                json!({"artifact": name, "kind": kind, "path": path, "bytes": content.len()}),
            ),
        )
    }
}

/// `read_artifact {name, path?}`: the latest upstream content of an artifact
/// (for a multi-file artifact, every file with a header, or the one `path`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadArtifact;

impl Tool for ReadArtifact {
    fn name(&self) -> &str {
        READ_ARTIFACT
    }

    fn description(&self) -> &str {
        "Read the latest version of an upstream artifact by name (optionally one file of it by path)."
    }

    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "artifact name, e.g. architecture"},
                "path": {"type": "string", "description": "one file of a code artifact"}
            },
            "required": ["name"],
            "additionalProperties": false
        })
    }

    fn call(&self, ctx: &ToolContext, input: &Value) -> Result<ToolOutput> {
        let name = field(READ_ARTIFACT, input, "name")?;
        let path = opt_field(READ_ARTIFACT, input, "path")?;
        let mut found = ctx.upstream_named(name);
        if let Some(p) = path {
            found.retain(|a| a.path.as_deref() == Some(p));
        }
        let text = match found.as_slice() {
            [] => {
                return Err(Error::NotFound(match path {
                    Some(p) => format!("{name} ({p})"),
                    None => name.to_string(),
                }));
            }
            [one] => one.content.clone(),
            many => many
                .iter()
                .map(|a| {
                    format!(
                        "--- {} (v{}) ---\n{}",
                        a.path.as_deref().unwrap_or(name),
                        a.version,
                        a.content
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
        };
        let versions: Vec<_> = found
            .iter()
            .map(|a| json!({"version": a.version, "path": a.path}))
            .collect();
        Ok(ToolOutput::new(text).with_data(json!({"name": name, "versions": versions})))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_core::{Artifact, Role, RunId};

    fn artifact(name: &str, version: i64, path: Option<&str>, content: &str) -> Artifact {
        Artifact {
            run_id: RunId("r".into()),
            name: name.into(),
            version,
            kind: "code".into(),
            path: path.map(Into::into),
            task_id: "t".into(),
            attempt: 1,
            content: content.into(),
            metadata: json!({}),
            created_at: 0,
        }
    }

    fn ctx(upstream: Vec<Artifact>) -> ToolContext {
        ToolContext::new(RunId("r".into()), "task", Role::BackendEngineer, upstream)
    }

    #[test]
    fn write_file_stores_code_entries_per_path() {
        let c = ctx(vec![]);
        for (path, content) in [
            ("./backend/app.py", "v1"),
            ("backend/models.py", "m"),
            ("backend/app.py", "v2"),
        ] {
            WriteFile
                .call(
                    &c,
                    &json!({"path": path, "content": content, "artifact": "backend_code"}),
                )
                .unwrap();
        }
        let w = c.written();
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!(w[0].path.as_deref(), Some("backend/app.py"));
        assert_eq!(w[0].content, "v2", "the latest write of a path wins");
        assert_eq!(w[0].kind, "code");
        assert_eq!(w[0].metadata, json!({"path": "backend/app.py"}));
        assert_eq!(w[1].name, "backend_code");
    }

    #[test]
    fn write_file_refuses_unsafe_paths_and_bad_input() {
        let c = ctx(vec![]);
        let e = WriteFile
            .call(
                &c,
                &json!({"path": "../x", "content": "", "artifact": "backend_code"}),
            )
            .unwrap_err();
        assert!(matches!(e, Error::InvalidPath { .. }), "{e}");
        let e = WriteFile
            .call(
                &c,
                &json!({"path": "x", "content": 3, "artifact": "backend_code"}),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"content\" must be a string"), "{e}");
        let e = WriteArtifact
            .call(&c, &json!({"name": "a b", "kind": "doc", "content": "x"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("name \"a b\""), "{e}");
        assert!(c.written().is_empty());
    }

    #[test]
    fn write_artifact_adds_a_document() {
        let c = ctx(vec![]);
        let out = WriteArtifact
            .call(&c, &json!({"name": "requirements", "kind": "requirements", "content": "x".repeat(2048)}))
            .unwrap();
        assert_eq!(out.text, "wrote requirements (2.0 KB)");
        let w = c.take_written();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].path, None);
        assert!(c.written().is_empty());
    }

    #[test]
    fn read_artifact_returns_latest_versions() {
        let c = ctx(vec![
            artifact("architecture", 1, None, "old"),
            artifact("architecture", 2, None, "new"),
            artifact("backend_code", 1, Some("b.py"), "b1"),
            artifact("backend_code", 2, Some("a.py"), "a2"),
            artifact("backend_code", 1, Some("a.py"), "a1"),
        ]);
        let out = ReadArtifact
            .call(&c, &json!({"name": "architecture"}))
            .unwrap();
        assert_eq!(out.text, "new");
        let out = ReadArtifact
            .call(&c, &json!({"name": "backend_code"}))
            .unwrap();
        assert_eq!(out.text, "--- a.py (v2) ---\na2\n--- b.py (v1) ---\nb1");
        let out = ReadArtifact
            .call(&c, &json!({"name": "backend_code", "path": "b.py"}))
            .unwrap();
        assert_eq!(out.text, "b1");
        let e = ReadArtifact.call(&c, &json!({"name": "nope"})).unwrap_err();
        assert_eq!(e, Error::NotFound("nope".into()));
    }
}
