//! Prompt templates: the ten role system prompts, the task message and the
//! repair message, kept as files under `crates/agents/templates/` and compiled
//! in with `include_str!`.
//!
//! Templates are minijinja with `trim_blocks` and `lstrip_blocks`, no
//! auto-escaping (prompts are Markdown, and artifact content must reach the
//! model verbatim), and undefined values refused when printed.

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use orch_core::{Artifact, Role, Task, ValidationRule};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{AgentError, ChannelPost, TaskInput};

/// Most channel messages a task message shows (the latest ones).
pub(crate) const MAX_SHOWN_MESSAGES: usize = 20;
/// Most bytes of channel message text a task message shows.
pub(crate) const MAX_SHOWN_MESSAGE_BYTES: usize = 4096;

/// What a role's allowlist lets it do, as far as the prompts tell it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Abilities {
    /// May write workspace files (`write_file`): blocks with a `path`.
    pub writes_files: bool,
    /// May post on the run's channels (`post_message`): `<message>` blocks.
    pub posts_messages: bool,
}

/// Every template, by name.
const TEMPLATES: &[(&str, &str)] = &[
    (
        "_output_format.md.j2",
        include_str!("../templates/_output_format.md.j2"),
    ),
    (
        "orchestrator.md.j2",
        include_str!("../templates/orchestrator.md.j2"),
    ),
    (
        "business_analyst.md.j2",
        include_str!("../templates/business_analyst.md.j2"),
    ),
    (
        "project_manager.md.j2",
        include_str!("../templates/project_manager.md.j2"),
    ),
    (
        "ux_engineer.md.j2",
        include_str!("../templates/ux_engineer.md.j2"),
    ),
    (
        "tech_lead.md.j2",
        include_str!("../templates/tech_lead.md.j2"),
    ),
    (
        "database_engineer.md.j2",
        include_str!("../templates/database_engineer.md.j2"),
    ),
    (
        "backend_engineer.md.j2",
        include_str!("../templates/backend_engineer.md.j2"),
    ),
    (
        "frontend_engineer.md.j2",
        include_str!("../templates/frontend_engineer.md.j2"),
    ),
    (
        "code_reviewer.md.j2",
        include_str!("../templates/code_reviewer.md.j2"),
    ),
    (
        "security_reviewer.md.j2",
        include_str!("../templates/security_reviewer.md.j2"),
    ),
    ("task.md.j2", include_str!("../templates/task.md.j2")),
    ("repair.md.j2", include_str!("../templates/repair.md.j2")),
];

/// The template environment with every template loaded and checked.
pub(crate) fn environment() -> Result<Environment<'static>, AgentError> {
    let mut env = Environment::new();
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(template_error)?,
    );
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    for (name, source) in TEMPLATES {
        env.add_template(name, source).map_err(template_error)?;
    }
    Ok(env)
}

pub(crate) fn template_error(e: minijinja::Error) -> AgentError {
    let mut msg = e.to_string();
    if let (Some(name), Some(line)) = (e.name(), e.line())
        && !msg.contains(name)
    {
        msg = format!("{name}:{line}: {msg}");
    }
    AgentError::Template(msg)
}

/// Whether the role reviews (its tasks end with a verdict).
pub(crate) fn is_reviewer(role: Role) -> bool {
    matches!(role, Role::CodeReviewer | Role::SecurityReviewer)
}

/// The example block shown to a role: `(name, type, path)`.
fn example(role: Role) -> (&'static str, &'static str, Option<&'static str>) {
    match role {
        Role::Orchestrator => ("workflow", "workflow", None),
        Role::BusinessAnalyst => ("requirements", "requirements", None),
        Role::ProjectManager => ("project_plan", "plan", None),
        Role::UxEngineer => ("ux_design", "design", None),
        Role::TechLead => ("architecture", "architecture", None),
        Role::DatabaseEngineer => ("schema", "schema", Some("db/schema.sql")),
        Role::BackendEngineer => ("backend_code", "code", Some("backend/app.py")),
        Role::FrontendEngineer => ("frontend_code", "code", Some("frontend/app.js")),
        Role::CodeReviewer => ("code_review", "review", None),
        Role::SecurityReviewer => ("security_review", "review", None),
    }
}

/// What every template of a role sees.
#[derive(Debug, Serialize)]
struct RoleContext {
    role: &'static str,
    role_title: &'static str,
    is_reviewer: bool,
    writes_files: bool,
    posts_messages: bool,
    example_name: &'static str,
    example_type: &'static str,
    example_path: Option<&'static str>,
}

fn role_context(role: Role, can: Abilities) -> RoleContext {
    let (name, kind, path) = example(role);
    RoleContext {
        role: role.as_str(),
        role_title: role.title(),
        is_reviewer: is_reviewer(role),
        writes_files: can.writes_files,
        posts_messages: can.posts_messages,
        example_name: name,
        example_type: kind,
        example_path: if can.writes_files { path } else { None },
    }
}

/// What the task message template sees (a struct rather than JSON maps: the
/// template engine takes it field by field, with no map built in between).
#[derive(Debug, Serialize)]
struct TaskContext<'a> {
    #[serde(flatten)]
    role: RoleContext,
    goal: &'a str,
    context: Option<String>,
    task: TaskFields<'a>,
    findings: &'a [String],
    findings_gate: String,
    upstream: Vec<UpstreamFields<'a>>,
    messages: Vec<Value>,
    messages_omitted: usize,
    expected: &'a [orch_core::ExpectedArtifact],
    rules: Vec<String>,
    gate: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct TaskFields<'a> {
    id: &'a str,
    title: &'a str,
    instructions: &'a str,
    round: u32,
}

#[derive(Debug, Serialize)]
struct UpstreamFields<'a> {
    name: &'a str,
    kind: &'a str,
    path: Option<&'a str>,
    version: i64,
    task_id: &'a str,
    /// The content, or its quote mark.
    content: std::borrow::Cow<'a, str>,
}

pub(crate) fn system_prompt(
    env: &Environment<'static>,
    role: Role,
    can: Abilities,
) -> Result<String, AgentError> {
    let name = format!("{}.md.j2", role.as_str());
    env.get_template(&name)
        .and_then(|t| t.render(Serde(role_context(role, can))))
        .map_err(template_error)
}

/// The latest channel messages to show: at most [`MAX_SHOWN_MESSAGES`] and
/// [`MAX_SHOWN_MESSAGE_BYTES`] of text (the newest message is always shown,
/// shortened if it alone is too long), oldest first; and how many earlier
/// ones were left out.
fn shown_messages(messages: &[ChannelPost]) -> (Vec<Value>, usize) {
    let mut shown = Vec::new();
    let mut bytes = 0;
    for m in messages.iter().rev() {
        if shown.len() == MAX_SHOWN_MESSAGES {
            break;
        }
        let mut text = m.text.trim().to_string();
        if bytes + text.len() > MAX_SHOWN_MESSAGE_BYTES {
            if !shown.is_empty() {
                break;
            }
            let mut cut = MAX_SHOWN_MESSAGE_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str("… (shortened)");
        }
        bytes += text.len();
        shown.push(json!({
            "channel": m.channel, "from_role": m.from_role.as_str(), "task_id": m.task_id,
            "text": text,
        }));
    }
    shown.reverse();
    let omitted = messages.len() - shown.len();
    (shown, omitted)
}

/// Validation rules in words, for the task message.
fn describe_rules(task: &Task) -> Vec<String> {
    task.validation
        .iter()
        .filter_map(|r| match r {
            ValidationRule::ArtifactsPresent | ValidationRule::Verdict => None,
            ValidationRule::MinLength { artifact, chars } => {
                Some(format!("`{artifact}` has at least {chars} characters"))
            }
            ValidationRule::Contains { artifact, text } => Some(format!(
                "`{artifact}` mentions {}",
                text.iter()
                    .map(|t| format!("\"{t}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            ValidationRule::Semantic { artifact, rubric } => {
                Some(format!("`{artifact}` meets this rubric: {rubric}"))
            }
        })
        .collect()
}

/// A task message with the upstream artifacts it quotes apart: `stored` is
/// the message without them, `quotes` where each goes back (a byte offset in
/// `stored`, an index into the task's upstream), in increasing order of
/// offset. The `llm_request` event stores it so ([`orch_core::elision`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskMessage {
    pub stored: String,
    pub quotes: Vec<(usize, usize)>,
}

impl TaskMessage {
    /// The whole message, as the model reads it.
    pub fn full(&self, upstream: &[Artifact]) -> String {
        let quotes = self
            .quotes
            .iter()
            .map(|&(at, i)| (at, upstream[i].content.as_str()));
        orch_core::elision::splice(&self.stored, quotes)
            .expect("offsets of a rendered message are in order, on boundaries")
    }
}

/// What marks the place of a quoted artifact while the task message is
/// rendered: this, the artifact's index, and `\u{1}`. It starts with a
/// control character and holds a number drawn per process, so no text of a
/// run (goal, findings, messages) can hold it by chance; if one did, the
/// message is rendered again with the quotes in place.
fn quote_mark() -> &'static str {
    use std::hash::{BuildHasher, Hasher};
    static MARK: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MARK.get_or_init(|| {
        let n = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        format!("\u{1}quote-{n:016x}-")
    })
}

/// Take the quote marks out of a rendered message: `None` unless each of
/// the `marked` artifacts (indexes into the upstream whose content was
/// replaced by its mark) has exactly one well-formed mark, as the template
/// quotes each once, and there is no other.
fn cut_quotes(rendered: &str, marked: &[bool]) -> Option<TaskMessage> {
    let mark = quote_mark();
    let mut stored = String::with_capacity(rendered.len());
    let mut quotes = Vec::new();
    let mut seen = vec![false; marked.len()];
    let mut rest = rendered;
    while let Some(at) = rest.find(mark) {
        stored.push_str(&rest[..at]);
        let after = &rest[at + mark.len()..];
        let end = after.find('\u{1}')?;
        let i: usize = after[..end].parse().ok()?;
        if !marked.get(i).copied().unwrap_or(false) || std::mem::replace(&mut seen[i], true) {
            return None;
        }
        quotes.push((stored.len(), i));
        rest = &after[end + 1..];
    }
    if seen != marked {
        return None;
    }
    stored.push_str(rest);
    Some(TaskMessage { stored, quotes })
}

pub(crate) fn task_message(
    env: &Environment<'static>,
    input: &TaskInput<'_>,
    can: Abilities,
) -> Result<TaskMessage, AgentError> {
    // Long contents go in as marks, cut out after rendering: the template
    // engine copies a few short marks instead of every artifact, and the
    // event gets the message without them for free.
    let marked: Vec<bool> = input
        .upstream
        .iter()
        .map(|a| a.content.len() >= orch_core::elision::MIN_ELIDED_LEN)
        .collect();
    let rendered = render_task_message(env, input, can, &marked)?;
    if let Some(message) = cut_quotes(&rendered, &marked) {
        return Ok(message);
    }
    tracing::warn!(task = %input.task.id, "a text of the run holds a quote mark; the prompt is stored whole");
    let unmarked = vec![false; marked.len()];
    Ok(TaskMessage {
        stored: render_task_message(env, input, can, &unmarked)?,
        quotes: Vec::new(),
    })
}

/// The task message, with the content of each upstream artifact `marked`
/// replaced by its quote mark.
fn render_task_message(
    env: &Environment<'static>,
    input: &TaskInput<'_>,
    can: Abilities,
    marked: &[bool],
) -> Result<String, AgentError> {
    let task = input.task;
    let context = if input.run.context.is_null() {
        None
    } else {
        Some(serde_json::to_string_pretty(&input.run.context).unwrap_or_default())
    };
    let upstream: Vec<UpstreamFields<'_>> = input
        .upstream
        .iter()
        .zip(marked)
        .enumerate()
        .map(|(i, (a, &mark))| UpstreamFields {
            name: &a.name,
            kind: &a.kind,
            path: a.path.as_deref(),
            version: a.version,
            task_id: &a.task_id,
            content: if mark {
                format!("{}{i}\u{1}", quote_mark()).into()
            } else {
                a.content.as_str().into()
            },
        })
        .collect();
    // The gate whose findings a rework task carries: the review it follows.
    let findings_gate = task
        .gate
        .map(|g| g.as_str().replace('_', " "))
        .or_else(|| {
            task.id
                .contains("security_review")
                .then(|| "security review".to_string())
        })
        .unwrap_or_else(|| "code review".into());
    let (messages, messages_omitted) = shown_messages(input.messages);
    let ctx = TaskContext {
        role: role_context(task.role, can),
        goal: input.run.goal.trim(),
        context,
        task: TaskFields {
            id: &task.id,
            title: &task.title,
            instructions: &task.instructions,
            round: task.round,
        },
        findings: &task.findings,
        findings_gate,
        upstream,
        messages,
        messages_omitted,
        expected: &task.expected,
        rules: describe_rules(task),
        gate: task.gate.map(|g| g.as_str()),
    };
    env.get_template("task.md.j2")
        .and_then(|t| t.render(Serde(ctx)))
        .map_err(template_error)
}

pub(crate) fn repair_message(
    env: &Environment<'static>,
    task: &Task,
    problems: &[String],
) -> Result<String, AgentError> {
    let expected: Vec<String> = task
        .expected
        .iter()
        .map(|e| format!("`{}`", e.name))
        .collect();
    env.get_template("repair.md.j2")
        .and_then(|t| {
            t.render(Serde(json!({
                "problems": problems,
                "expected": expected,
                "gate": task.gate.map(|g| g.as_str()),
            })))
        })
        .map_err(template_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(i: usize, text: String) -> ChannelPost {
        ChannelPost {
            channel: "team".into(),
            from_role: Role::TechLead,
            task_id: format!("t{i}"),
            text,
            seq: Some(i as i64),
        }
    }

    #[test]
    fn the_latest_messages_are_shown_within_the_caps() {
        let many: Vec<_> = (0..25).map(|i| post(i, format!("m{i}"))).collect();
        let (shown, omitted) = shown_messages(&many);
        assert_eq!((shown.len(), omitted), (MAX_SHOWN_MESSAGES, 5));
        assert_eq!(shown[0]["text"], "m5");
        assert_eq!(shown[19]["text"], "m24");
        assert_eq!(shown[19]["from_role"], "tech_lead");

        let big: Vec<_> = (0..3).map(|i| post(i, "x".repeat(1500))).collect();
        let (shown, omitted) = shown_messages(&big);
        assert_eq!((shown.len(), omitted), (2, 1), "3 x 1500 bytes exceed 4 KB");
        assert_eq!(shown[1]["task_id"], "t2");

        let huge = vec![post(0, "é".repeat(3000))];
        let (shown, omitted) = shown_messages(&huge);
        assert_eq!(omitted, 0, "the newest is always shown");
        let text = shown[0]["text"].as_str().unwrap();
        assert!(text.ends_with("… (shortened)") && text.len() < MAX_SHOWN_MESSAGE_BYTES + 20);
        assert_eq!(shown_messages(&[]).0.len(), 0);
    }

    #[test]
    fn quote_marks_are_cut_only_when_each_is_well_formed_and_known() {
        let mark = quote_mark();
        let rendered = format!("a{mark}0\u{1}b{mark}2\u{1}c");
        let cut = cut_quotes(&rendered, &[true, false, true]).expect("well formed");
        assert_eq!(cut.stored, "abc");
        assert_eq!(cut.quotes, [(1, 0), (2, 2)]);
        assert_eq!(cut_quotes("no marks", &[false]).unwrap().quotes, []);
        for bad in [
            format!("{mark}1\u{1}{mark}1\u{1}"), // two for 1
            format!("{mark}1\u{1}{mark}2\u{1}"), // no such artifact
            format!("{mark}1\u{1}{mark}0\u{1}"), // its content was not replaced
            format!("{mark}x\u{1}"),             // not a number
            format!("{mark}1 open"),             // never closed
            "no mark for 1".to_string(),
        ] {
            assert_eq!(cut_quotes(&bad, &[false, true]), None, "{bad:?}");
        }
    }

    #[test]
    fn a_goal_holding_a_quote_mark_gets_the_prompt_stored_whole() {
        let env = environment().unwrap();
        let wf = orch_core::Workflow::builtin("sdlc").unwrap();
        let (mut state, _) = orch_core::RunState::new_run(
            orch_core::RunId::generate(),
            "goal",
            Value::Null,
            &wf,
            Default::default(),
            "scripted",
            0,
        );
        state.run.goal = format!("see {}0\u{1}", quote_mark());
        let task = state.task("architecture").unwrap().clone();
        let upstream = vec![Artifact {
            run_id: state.run.id.clone(),
            name: "requirements".into(),
            version: 1,
            kind: "requirements".into(),
            path: None,
            task_id: "requirements".into(),
            attempt: 1,
            content: "R".repeat(200),
            metadata: Value::Null,
            created_at: 0,
        }];
        let input = TaskInput {
            run: &state.run,
            task: &task,
            upstream: &upstream,
            messages: &[],
            model: "m",
        };
        let can = Abilities {
            writes_files: false,
            posts_messages: false,
        };
        let message = task_message(&env, &input, can).unwrap();
        assert_eq!(message.quotes, []);
        assert!(message.stored.contains(&state.run.goal));
        assert!(message.stored.contains(&"R".repeat(200)));
        assert_eq!(message.full(&upstream), message.stored);
        // Without the mark in the goal, the quote is cut.
        let mut plain = state.run.clone();
        plain.goal = "goal".into();
        let cut = task_message(
            &env,
            &TaskInput {
                run: &plain,
                ..input
            },
            can,
        )
        .unwrap();
        assert_eq!(cut.quotes.len(), 1);
        assert!(!cut.stored.contains(&"R".repeat(200)));
        assert_eq!(
            cut.full(&upstream),
            message.stored.replace(&state.run.goal, "goal")
        );
    }
}
