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
use orch_core::{Role, Task, ValidationRule};
use serde_json::{Value, json};

use crate::{AgentError, TaskInput};

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

fn role_context(role: Role, writes: bool) -> Value {
    let (name, kind, path) = example(role);
    json!({
        "role": role.as_str(),
        "role_title": role.title(),
        "is_reviewer": is_reviewer(role),
        "writes_files": writes,
        "example_name": name,
        "example_type": kind,
        "example_path": if writes { path } else { None },
    })
}

pub(crate) fn system_prompt(
    env: &Environment<'static>,
    role: Role,
    writes: bool,
) -> Result<String, AgentError> {
    let name = format!("{}.md.j2", role.as_str());
    env.get_template(&name)
        .and_then(|t| t.render(Serde(role_context(role, writes))))
        .map_err(template_error)
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

pub(crate) fn task_message(
    env: &Environment<'static>,
    input: &TaskInput<'_>,
    writes: bool,
) -> Result<String, AgentError> {
    let task = input.task;
    let context = if input.run.context.is_null() {
        None
    } else {
        Some(serde_json::to_string_pretty(&input.run.context).unwrap_or_default())
    };
    let upstream: Vec<Value> = input
        .upstream
        .iter()
        .map(|a| {
            json!({
                "name": a.name, "kind": a.kind, "path": a.path, "version": a.version,
                "task_id": a.task_id, "content": a.content,
            })
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
    let mut ctx = role_context(task.role, writes);
    let extra = json!({
        "goal": input.run.goal.trim(),
        "context": context,
        "task": {
            "id": task.id, "title": task.title, "instructions": task.instructions,
            "round": task.round,
        },
        "findings": task.findings,
        "findings_gate": findings_gate,
        "upstream": upstream,
        "expected": task.expected,
        "rules": describe_rules(task),
        "gate": task.gate.map(|g| g.as_str()),
    });
    if let (Value::Object(base), Value::Object(more)) = (&mut ctx, extra) {
        base.extend(more);
    }
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
