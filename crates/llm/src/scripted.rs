//! The scripted provider: deterministic responses from a YAML fixture, for
//! tests, benchmarks, demos and dry runs. It never calls a model and always
//! names itself `scripted` (provider name, model and price), so output and
//! events can say so.
//!
//! # Fixture format
//!
//! ```yaml
//! # delay_ms: default delay (milliseconds) before every response
//! delay_ms: 0
//! roles:                        # keyed by role name (snake_case)
//!   code_reviewer:
//!     - text: '{"verdict": "FAIL", "findings": ["..."]}'   # round 0
//!     - text: '{"verdict": "PASS", "findings": []}'        # round 1 and later
//! tasks:                        # optional, keyed by task id; wins over roles
//!   backend:
//!     - text: "..."
//!       error: { status: 500, message: "overloaded" }  # fail instead of answering
//!       on_attempts: [1]        # the error only applies on these attempts (default: all)
//!       delay_ms: 200           # delay before this answer
//! ```
//!
//! # Selection
//!
//! The entries of the task (if listed under `tasks`) or else of the role are
//! indexed by the call's rework round (`meta.round`), clamped to the last
//! entry: the last entry repeats. Repair turns (`meta.step > 0`) get the same
//! entry. An entry's `error` applies when `on_attempts` is empty or contains
//! `meta.attempt`: statuses 429, 500, 502, 503 and 529 give
//! [`Error::Transient`], any other status [`Error::Fatal`]. An entry without
//! `text` (e.g. one that only fails on some attempts) answers like a missing
//! entry.
//!
//! When neither the task nor the role has an entry, the provider writes a
//! generic, deterministic answer: one tagged `<artifact>` block per expected
//! artifact (naming the task and the goal, taken from the first user
//! message's `Goal:` line), and for review tasks a PASS verdict. So any
//! workflow runs on the scripted provider.
//!
//! Text is used verbatim: no templating. Usage is the token *estimate* of the
//! request and of the text ([`crate::tokens`]); the price of model
//! `scripted` is zero.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use orch_core::{Role, dsl::is_valid_task_id};
use serde::Deserialize;

use crate::tokens::{estimate_request, estimate_tokens};
use crate::{Error, MessageRole, Provider, Request, Response, Result, StopReason, TokenUsage};

/// The demo fixture compiled into the binary (goal: a TODO CRUD app).
const BUILTIN_NAME: &str = "todo_app.yaml";
const BUILTIN: &str = include_str!("../fixtures/todo_app.yaml");

/// HTTP statuses a fixture error turns into [`Error::Transient`].
const TRANSIENT_STATUSES: [u16; 5] = [429, 500, 502, 503, 529];

/// A provider that answers from a fixture. See the module docs for the format.
#[derive(Debug, Clone)]
pub struct ScriptedProvider {
    /// Where the fixture came from, for messages.
    source: String,
    fixture: Fixture,
    /// Extra delay on every call (benchmarks, demos); zero means no sleep at all.
    latency: Duration,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    roles: BTreeMap<String, Vec<Entry>>,
    #[serde(default)]
    tasks: BTreeMap<String, Vec<Entry>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    error: Option<FixtureError>,
    #[serde(default)]
    on_attempts: Vec<u32>,
    #[serde(default)]
    delay_ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureError {
    status: u16,
    #[serde(default)]
    message: Option<String>,
}

impl ScriptedProvider {
    /// The built-in demo fixture (`crates/llm/fixtures/todo_app.yaml`).
    pub fn builtin() -> Self {
        Self::from_yaml(BUILTIN_NAME, BUILTIN).expect("the built-in fixture is valid (tested)")
    }

    /// A provider with an empty fixture: every call gets the generic answer.
    pub fn generic() -> Self {
        ScriptedProvider {
            source: "generic".into(),
            fixture: Fixture::default(),
            latency: Duration::ZERO,
        }
    }

    /// Load a fixture file. Unreadable or invalid files give [`Error::Config`]
    /// naming the file, the line and the problem.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!(
                "scripted fixture {}: cannot read it: {e} (check the path given for the fixture)",
                path.display()
            ))
        })?;
        Self::from_yaml(&path.display().to_string(), &text)
    }

    /// Parse a fixture from `text`; `name` is used in error messages.
    pub fn from_yaml(name: &str, text: &str) -> Result<Self> {
        let fixture: Fixture = if text.trim().is_empty() {
            Fixture::default()
        } else {
            yaml_serde::from_str(text).map_err(|e| {
                let mut problem = e.to_string();
                let mut at = String::new();
                if let Some(l) = e.location() {
                    at = format!(" line {} column {}:", l.line(), l.column());
                    let suffix = format!(" at line {} column {}", l.line(), l.column());
                    if let Some(p) = problem.strip_suffix(&suffix) {
                        problem = p.to_string();
                    }
                }
                Error::Config(format!(
                    "scripted fixture {name}:{at} {problem}; fix: the file is a mapping with optional \
                     `delay_ms`, `roles` and `tasks`, each of `roles`/`tasks` mapping a name to a \
                     list of entries with `text`, `error: {{status, message}}`, `on_attempts` and \
                     `delay_ms`"
                ))
            })?
        };
        check(name, text, &fixture)?;
        Ok(ScriptedProvider {
            source: name.to_string(),
            fixture,
            latency: Duration::ZERO,
        })
    }

    /// Add `latency` before every response (on top of fixture delays).
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Where the fixture came from (`todo_app.yaml`, a path, `generic`).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The entry for a call, if the fixture has one.
    fn entry(&self, request: &Request) -> Option<&Entry> {
        let meta = &request.meta;
        let list = self
            .fixture
            .tasks
            .get(&meta.task_id)
            .or_else(|| self.fixture.roles.get(meta.role.as_str()))?;
        let i = (meta.round as usize).min(list.len().checked_sub(1)?);
        list.get(i)
    }
}

/// Checks serde cannot do: role names, task ids, non-empty lists, statuses.
fn check(name: &str, text: &str, f: &Fixture) -> Result<()> {
    let fail = |section: &str, key: &str, problem: String| {
        let line = find_key_line(text, section, key)
            .map(|l| format!(" line {l}:"))
            .unwrap_or_default();
        Err(Error::Config(format!(
            "scripted fixture {name}:{line} {section}.{key}: {problem}"
        )))
    };
    for (section, map) in [("roles", &f.roles), ("tasks", &f.tasks)] {
        for (key, entries) in map {
            if section == "roles" && !Role::ALL.iter().any(|r| r.as_str() == key) {
                let known: Vec<_> = Role::ALL.iter().map(|r| r.as_str()).collect();
                return fail(
                    section,
                    key,
                    format!("unknown role; fix: use one of {}", known.join(", ")),
                );
            }
            if section == "tasks" && !is_valid_task_id(key) {
                return fail(
                    section,
                    key,
                    "not a valid task id; fix: use the id of a workflow task (letters, digits, `_`, `-`)".into(),
                );
            }
            if entries.is_empty() {
                return fail(
                    section,
                    key,
                    "empty list; fix: give at least one entry (`- text: ...`) or remove the key"
                        .into(),
                );
            }
            for (i, e) in entries.iter().enumerate() {
                if e.text.is_none() && e.error.is_none() {
                    return fail(
                        section,
                        key,
                        format!(
                            "entry {} has neither `text` nor `error`; fix: add one",
                            i + 1
                        ),
                    );
                }
                if let Some(err) = &e.error
                    && !(100..=599).contains(&err.status)
                {
                    return fail(
                        section,
                        key,
                        format!(
                            "entry {}: error status {} is not an HTTP status; fix: use 100..599 (e.g. 500, 429, 401)",
                            i + 1,
                            err.status
                        ),
                    );
                }
                if e.error.is_none() && !e.on_attempts.is_empty() {
                    return fail(
                        section,
                        key,
                        format!(
                            "entry {}: `on_attempts` without `error` has no effect; fix: add `error` or remove `on_attempts`",
                            i + 1
                        ),
                    );
                }
            }
        }
    }
    Ok(())
}

/// 1-based line of `key:` inside the top-level `section:` of a YAML text.
fn find_key_line(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut in_section = false;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indented = line.len() != trimmed.len();
        if !indented {
            in_section = trimmed.starts_with(&format!("{section}:"));
            continue;
        }
        if in_section {
            let k = trimmed.trim_matches(|c| c == '"' || c == '\'');
            if let Some(rest) = k.strip_prefix(key)
                && rest
                    .trim_start_matches(['"', '\''])
                    .trim_start()
                    .starts_with(':')
            {
                return Some(i + 1);
            }
        }
    }
    None
}

#[async_trait]
impl Provider for ScriptedProvider {
    fn name(&self) -> &str {
        "scripted"
    }

    fn is_scripted(&self) -> bool {
        true
    }

    fn default_model(&self) -> &str {
        "scripted"
    }

    async fn complete(&self, request: &Request) -> Result<Response> {
        let entry = self.entry(request);
        let delay_ms = entry
            .and_then(|e| e.delay_ms)
            .unwrap_or(self.fixture.delay_ms);
        let delay = self.latency + Duration::from_millis(delay_ms);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some(e) = entry
            && let Some(err) = &e.error
            && (e.on_attempts.is_empty() || e.on_attempts.contains(&request.meta.attempt))
        {
            let message = format!(
                "HTTP {}: {}",
                err.status,
                err.message.as_deref().unwrap_or("scripted error")
            );
            tracing::debug!(task = %request.meta.task_id, status = err.status, "scripted error");
            return Err(if TRANSIENT_STATUSES.contains(&err.status) {
                Error::Transient {
                    provider: "scripted".into(),
                    message,
                    retry_after: None,
                }
            } else {
                Error::Fatal {
                    provider: "scripted".into(),
                    message,
                }
            });
        }
        let text = match entry.and_then(|e| e.text.clone()) {
            Some(text) => text,
            None => generic_response(request),
        };
        Ok(Response {
            usage: TokenUsage {
                input_tokens: estimate_request(request),
                output_tokens: estimate_tokens(&text),
                ..TokenUsage::default()
            },
            text,
            tool_calls: Vec::new(),
            stop_reason: StopReason::EndTurn,
            model: "scripted".into(),
        })
    }
}

/// The goal as the agents' task message states it (`Goal: ...` line).
fn goal_of(request: &Request) -> Option<String> {
    let first = request
        .messages
        .iter()
        .find(|m| m.role == MessageRole::User)?;
    first.content.lines().find_map(|l| {
        let l = l.trim().trim_start_matches(['#', '*', ' ']);
        let rest = l
            .strip_prefix("Goal:")
            .or_else(|| l.strip_prefix("goal:"))?;
        let rest = rest.trim().trim_matches('*').trim();
        (!rest.is_empty()).then(|| rest.to_string())
    })
}

/// A deterministic answer producing every expected artifact (and a PASS
/// verdict for review tasks), for calls the fixture has no entry for.
fn generic_response(request: &Request) -> String {
    let meta = &request.meta;
    let goal = goal_of(request).unwrap_or_else(|| "(goal not stated)".into());
    let verdict = r#"{"verdict": "PASS", "findings": []}"#;
    let writes_files = matches!(
        meta.role,
        Role::BackendEngineer | Role::FrontendEngineer | Role::DatabaseEngineer
    );
    let mut out = format!(
        "Scripted response (no model was called) for task `{}` by the {}.\n\n",
        meta.task_id,
        meta.role.title()
    );
    let mut verdict_written = false;
    for exp in &meta.expected {
        let title = exp.name.replace(['_', '-'], " ");
        let path = (exp.kind == "code" && writes_files)
            .then(|| format!(" path=\"generated/{}/{}.md\"", meta.task_id, exp.name));
        out.push_str(&format!(
            "<artifact name=\"{}\" type=\"{}\"{}>\n",
            exp.name,
            exp.kind,
            path.unwrap_or_default()
        ));
        out.push_str(&format!(
            "# {title}\n\n\
             Produced by task `{task}` ({role}) for the goal: {goal}\n\n\
             - Scope: what the goal asks for, nothing more; assumptions are listed below.\n\
             - Inputs: the upstream artifacts of task `{task}`, read in full.\n\
             - Output: this `{kind}` artifact, named `{name}`, complete and self-contained.\n\
             - Assumption: defaults are conventional and documented where they matter.\n\
             - Quality: each statement is specific enough to act on and to check.\n\n\
             This text is deterministic: the scripted provider generated it without a model.\n",
            task = meta.task_id,
            role = meta.role.title(),
            kind = exp.kind,
            name = exp.name,
        ));
        if meta.gate.is_some() && exp.kind == "review" && !verdict_written {
            out.push_str(&format!("\nNo blocking findings.\n\n{verdict}\n"));
            verdict_written = true;
        }
        out.push_str("</artifact>\n\n");
    }
    if meta.gate.is_some() && !verdict_written {
        out.push_str(verdict);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CallMeta, Message};
    use orch_core::{ExpectedArtifact, GateKind, RunId};

    fn request(role: Role, task: &str, round: u32, attempt: u32) -> Request {
        Request {
            model: "scripted".into(),
            system: "You are a test.".into(),
            messages: vec![Message::user("# Task\n\nGoal: Build a thing\n")],
            max_tokens: 100,
            temperature: None,
            tools: vec![],
            meta: CallMeta {
                run_id: RunId("r".into()),
                task_id: task.into(),
                role,
                attempt,
                round,
                step: 0,
                expected: vec![ExpectedArtifact {
                    name: "thing".into(),
                    kind: "doc".into(),
                }],
                gate: None,
            },
        }
    }

    #[tokio::test]
    async fn picks_by_round_and_repeats_the_last_entry() {
        let p = ScriptedProvider::from_yaml(
            "t.yaml",
            "roles:\n  code_reviewer:\n    - text: zero\n    - text: one\n",
        )
        .unwrap();
        for (round, want) in [(0, "zero"), (1, "one"), (5, "one")] {
            let r = p
                .complete(&request(Role::CodeReviewer, "cr", round, 1))
                .await
                .unwrap();
            assert_eq!(r.text, want);
            assert_eq!(r.model, "scripted");
            assert_eq!(r.stop_reason, StopReason::EndTurn);
            assert_eq!(r.usage.output_tokens, 1);
            assert!(r.usage.input_tokens > 0);
        }
        assert_eq!(p.name(), "scripted");
        assert!(p.is_scripted());
    }

    #[tokio::test]
    async fn task_entries_win_over_role_entries() {
        let p = ScriptedProvider::from_yaml(
            "t.yaml",
            "roles:\n  backend_engineer:\n    - text: role\ntasks:\n  backend:\n    - text: task\n",
        )
        .unwrap();
        let r = p
            .complete(&request(Role::BackendEngineer, "backend", 0, 1))
            .await
            .unwrap();
        assert_eq!(r.text, "task");
        let r = p
            .complete(&request(Role::BackendEngineer, "other", 0, 1))
            .await
            .unwrap();
        assert_eq!(r.text, "role");
    }

    #[tokio::test]
    async fn errors_apply_on_listed_attempts_with_retry_meaning() {
        let p = ScriptedProvider::from_yaml(
            "t.yaml",
            "tasks:\n  backend:\n    - text: ok\n      error: { status: 529, message: overloaded }\n      on_attempts: [1]\n  auth:\n    - error: { status: 401 }\n",
        )
        .unwrap();
        let e = p
            .complete(&request(Role::BackendEngineer, "backend", 0, 1))
            .await
            .unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert!(e.to_string().contains("overloaded"), "{e}");
        let r = p
            .complete(&request(Role::BackendEngineer, "backend", 0, 2))
            .await
            .unwrap();
        assert_eq!(r.text, "ok");
        let e = p
            .complete(&request(Role::BackendEngineer, "auth", 0, 3))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Fatal { .. }), "{e:?}");
        assert!(!e.is_retryable());
    }

    #[tokio::test]
    async fn generic_answer_covers_expected_artifacts_and_gates() {
        let p = ScriptedProvider::generic();
        let mut req = request(Role::CodeReviewer, "review_x", 0, 1);
        req.meta.gate = Some(GateKind::CodeReview);
        req.meta.expected = vec![ExpectedArtifact {
            name: "code_review".into(),
            kind: "review".into(),
        }];
        let a = p.complete(&req).await.unwrap().text;
        let b = p.complete(&req).await.unwrap().text;
        assert_eq!(a, b, "deterministic");
        assert!(a.contains("<artifact name=\"code_review\" type=\"review\">"));
        assert!(a.contains("\"verdict\": \"PASS\""));
        assert!(a.contains("review_x") && a.contains("Build a thing"));

        let mut req = request(Role::BackendEngineer, "impl", 0, 1);
        req.meta.expected = vec![ExpectedArtifact {
            name: "backend_code".into(),
            kind: "code".into(),
        }];
        let t = p.complete(&req).await.unwrap().text;
        assert!(t.contains("path=\"generated/impl/backend_code.md\""), "{t}");
        assert!(!t.contains("verdict"));
    }

    #[test]
    fn bad_fixtures_name_file_line_and_fix() {
        let e = ScriptedProvider::from_yaml("f.yaml", "roles:\n  code_reviewer:\n    - txt: x\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("f.yaml") && e.contains("line 3") && e.contains("txt"),
            "{e}"
        );
        let e = ScriptedProvider::from_yaml(
            "f.yaml",
            "delay_ms: 1\nroles:\n  designer:\n    - text: x\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("line 3") && e.contains("unknown role") && e.contains("business_analyst"),
            "{e}"
        );
        let e = ScriptedProvider::from_yaml("f.yaml", "tasks:\n  backend: []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("empty list"), "{e}");
        let e = ScriptedProvider::from_yaml("f.yaml", "roles: [1, 2\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("f.yaml") && e.contains("line"), "{e}");
        let e = ScriptedProvider::from_file("/nonexistent/fixture.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/fixture.yaml"), "{e}");
    }

    #[test]
    fn builtin_fixture_is_valid_and_small() {
        let p = ScriptedProvider::builtin();
        assert_eq!(p.source(), "todo_app.yaml");
        assert!(BUILTIN.len() < 40 * 1024, "{} bytes", BUILTIN.len());
        for role in Role::SPECIALISTS {
            assert!(
                p.fixture.roles.contains_key(role.as_str()),
                "builtin fixture has no entry for {role}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn latency_and_delays_sleep_only_when_non_zero() {
        let p = ScriptedProvider::from_yaml("t.yaml", "delay_ms: 100\n")
            .unwrap()
            .with_latency(Duration::from_millis(50));
        let start = tokio::time::Instant::now();
        p.complete(&request(Role::TechLead, "x", 0, 1))
            .await
            .unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(150));
        let p = ScriptedProvider::generic();
        let start = tokio::time::Instant::now();
        p.complete(&request(Role::TechLead, "x", 0, 1))
            .await
            .unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
