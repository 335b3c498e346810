//! The task DSL: workflow files (YAML) that describe a plan as tasks with
//! roles, dependencies, expected artifacts, validation, gates, retries and
//! timeouts.
//!
//! Loading a file has two stages. [`yaml_serde`] turns the text into a
//! [`Workflow`] (syntax errors, wrong types, unknown fields and unknown roles
//! or gates are reported with the line and column it gives). Then
//! [`Workflow::validate`] checks what types cannot express: ids, `needs`,
//! cycles, artifacts, validation rules, gates, retries and timeouts. For those
//! errors a small line scanner (the private `locate` module) finds the offending item in the
//! source text, so that every [`DslError`] names the file, the line (and
//! column when known) and the field. The scanner understands block and flow
//! style, comments and block scalars; when it cannot place an item the error
//! still names the field, without a line.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::{ExpectedArtifact, GateKind, Role, ValidationRule};

/// Longest task id accepted (ids also become parts of dedupe keys and file names).
pub const MAX_TASK_ID_LEN: usize = 64;
/// Most retries a task may ask for (max attempts = retries + 1).
pub const MAX_RETRIES: u32 = 10;
/// Longest per-task timeout: one day.
pub const MAX_TIMEOUT_SECS: u64 = 86_400;

/// A validated workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Criteria a run of this workflow must meet; copied into the run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub success_criteria: Vec<String>,
    pub tasks: Vec<TaskSpec>,
}

/// One task of a workflow, as written in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub id: String,
    #[serde(deserialize_with = "de_role")]
    pub role: Role,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instructions: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    #[serde(
        default,
        deserialize_with = "de_produces",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub produces: Vec<ExpectedArtifact>,
    #[serde(
        default,
        deserialize_with = "de_validation",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub validation: Vec<ValidationRule>,
    #[serde(
        default,
        deserialize_with = "de_gate",
        skip_serializing_if = "Option::is_none"
    )]
    pub gate: Option<GateKind>,
    /// Retries after the first attempt (max attempts = retries + 1).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Per-task timeout in seconds; the run's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Overrides the default dedupe key (`<run>/<task id>/<round>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedupe_key: Option<String>,
}

fn default_retries() -> u32 {
    2
}

/// A workflow error, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DslError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted path of the offending field (`tasks[3].needs`).
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for DslError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl DslError {
    /// An error at `at` (`(line, column)`, both 1-based) in `file`.
    pub fn new(
        file: &str,
        at: Option<(usize, usize)>,
        field: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        DslError {
            file: file.to_string(),
            line: at.map(|(l, _)| l),
            column: at.map(|(_, c)| c),
            field,
            message: message.into(),
        }
    }

    /// Turn a `yaml_serde` error into a located error: the location comes
    /// from the parser, the field from the path it prefixes its message with.
    fn from_yaml(file: &str, text: &str, err: &yaml_serde::Error) -> Self {
        let at = err.location().map(|l| (l.line(), l.column()));
        let mut message = err.to_string();
        if let Some((line, col)) = at {
            let suffix = format!(" at line {line} column {col}");
            if let Some(i) = message.find(&suffix) {
                message.replace_range(i..i + suffix.len(), "");
            }
        }
        let mut field = None;
        if let Some((head, rest)) = message.split_once(": ")
            && !head.is_empty()
            && head
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.[]?".contains(c))
        {
            field = Some(head.to_string());
            message = rest.to_string();
        }
        // Point unknown and missing fields at the field itself.
        for prefix in ["unknown field `", "missing field `"] {
            if let Some(rest) = message.strip_prefix(prefix)
                && let Some(name) = rest.split('`').next()
            {
                field = Some(match field {
                    Some(parent) => format!("{parent}.{name}"),
                    None => name.to_string(),
                });
            }
        }
        let task_key = field
            .as_deref()
            .and_then(|f| f.rsplit_once('.'))
            .is_some_and(|(parent, key)| {
                parent.starts_with("tasks[")
                    && !parent.contains('.')
                    && (key == "id" || key == "role")
            });
        if message.starts_with("missing field `") {
            if matches!(field.as_deref(), Some("name" | "tasks")) {
                message.push_str("; a workflow needs at least `name` and `tasks`");
            } else if task_key {
                message.push_str("; every task needs at least `id` and `role`");
            }
        }
        message = message
            .replace(
                "expected struct Workflow",
                "expected a workflow: a mapping with `name` and `tasks`",
            )
            .replace(
                "expected struct TaskSpec",
                "expected a task: a mapping with at least `id` and `role`",
            );
        if message.contains("expected a sequence") {
            message.push_str(" (write a list, e.g. `[a, b]` or one `- item` per line)");
        }
        let syntax = err.location().is_some() && field.is_none() && !is_serde_message(&message);
        if syntax {
            message = format!(
                "invalid YAML: {message} (check the indentation and the `-` and `:` markers here and on the lines above)"
            );
        }
        if text.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#') || l == "---"
        }) {
            return DslError::new(
                file,
                None,
                None,
                "the file is empty; a workflow needs `name` and `tasks`",
            );
        }
        DslError::new(file, at, field, message)
    }
}

/// Whether a parser message comes from serde (a type or field problem)
/// rather than from the YAML scanner (a syntax problem).
fn is_serde_message(message: &str) -> bool {
    [
        "invalid type",
        "invalid value",
        "invalid length",
        "unknown field",
        "unknown variant",
        "missing field",
        "duplicate field",
        "unknown role",
        "unknown gate",
    ]
    .iter()
    .any(|p| message.starts_with(p))
}

impl Workflow {
    /// Parse and validate a workflow file. `file` names it in errors. When
    /// the file has several problems, the first one (by line) is returned;
    /// [`Workflow::parse_all`] returns all of them.
    pub fn parse(file: &str, text: &str) -> Result<Workflow, DslError> {
        Workflow::parse_all(file, text).map_err(|mut errors| errors.remove(0))
    }

    /// Parse and validate a workflow file, returning every validation error
    /// (sorted by line; a syntax or type error stops parsing and comes alone).
    /// The error list is never empty.
    pub fn parse_all(file: &str, text: &str) -> Result<Workflow, Vec<DslError>> {
        let wf: Workflow =
            yaml_serde::from_str(text).map_err(|e| vec![DslError::from_yaml(file, text, &e)])?;
        wf.validate(file, text)?;
        Ok(wf)
    }

    /// Check everything the types do not: ids, `needs`, cycles, artifacts,
    /// validation rules, gates, retries and timeouts. `text` is the source the
    /// workflow was parsed from, used to find lines; pass `""` for a workflow
    /// built in code (errors then name the field but no line).
    pub fn validate(&self, file: &str, text: &str) -> Result<(), Vec<DslError>> {
        let ids: Vec<&str> = self.tasks.iter().map(|t| t.id.as_str()).collect();
        let mut v = Validator {
            wf: self,
            file,
            src: locate::Source::new(text, &ids),
            errors: Vec::new(),
        };
        v.run();
        let mut errors = v.errors;
        if errors.is_empty() {
            return Ok(());
        }
        // Stable: errors on the same line keep the order they were found in.
        errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        Err(errors)
    }

    /// The built-in workflow called `name`.
    pub fn builtin(name: &str) -> Option<Workflow> {
        let (file, text) = builtin_source(name)?;
        Some(Workflow::parse(file, text).expect("built-in workflows are valid"))
    }

    pub fn task(&self, id: &str) -> Option<&TaskSpec> {
        self.tasks.iter().find(|t| t.id == id)
    }

    /// Tasks in an order that respects `needs`; among tasks that could go
    /// next, the one written first in the file goes first. For a workflow
    /// that failed validation (a cycle, unknown needs) the tasks that cannot
    /// be ordered are appended in file order.
    pub fn topological_order(&self) -> Vec<&TaskSpec> {
        let n = self.tasks.len();
        let index: HashMap<&str, usize> = self
            .tasks
            .iter()
            .enumerate()
            .rev()
            .map(|(i, t)| (t.id.as_str(), i))
            .collect();
        let deps: Vec<Vec<usize>> = self
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                t.needs
                    .iter()
                    .filter_map(|n| index.get(n.as_str()).copied())
                    .filter(|&j| j != i)
                    .collect()
            })
            .collect();
        let mut placed = vec![false; n];
        let mut order = Vec::with_capacity(n);
        while order.len() < n {
            let next = (0..n).find(|&i| !placed[i] && deps[i].iter().all(|&j| placed[j]));
            match next {
                Some(i) => {
                    placed[i] = true;
                    order.push(&self.tasks[i]);
                }
                None => {
                    // A cycle: give up on ordering the rest.
                    order.extend((0..n).filter(|&i| !placed[i]).map(|i| &self.tasks[i]));
                    break;
                }
            }
        }
        order
    }

    /// The workflow as YAML (fields at their defaults are left out). Parsing
    /// the result gives back an equal workflow.
    pub fn to_yaml(&self) -> String {
        yaml_serde::to_string(self).expect("a workflow always serializes to YAML")
    }
}

/// Names of the workflows that ship with the binary.
pub const BUILTIN_WORKFLOWS: &[&str] = &["sdlc"];

/// `(file name, YAML text)` of a built-in workflow.
pub fn builtin_source(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "sdlc" => Some(("sdlc.yaml", include_str!("../workflows/sdlc.yaml"))),
        _ => None,
    }
}

/// Whether `id` is a valid task id: 1 to 64 of `[a-z0-9_]`.
pub fn is_valid_task_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_TASK_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Whether `id` looks like a task the engine creates during rework
/// (`fix_<task>_<gate>_r<n>`, `<review>_r<n>`): planned tasks may not use
/// those names, or rework could never create its tasks.
fn is_reserved_task_id(id: &str) -> bool {
    if id.starts_with("fix_") {
        return true;
    }
    match id.rsplit_once("_r") {
        Some((head, n)) => {
            !head.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

// ---------------------------------------------------------------------------
// Deserialization helpers: roles and gates say what is allowed, and nested
// records reject unknown fields.

fn de_role<'de, D: Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
    struct RoleVisitor;
    impl serde::de::Visitor<'_> for RoleVisitor {
        type Value = Role;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a role name (")?;
            for (i, r) in Role::SPECIALISTS.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                f.write_str(r.as_str())?;
            }
            f.write_str(")")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Role, E> {
            s.parse::<Role>().map_err(E::custom)
        }
    }
    // Reading through a visitor (not into a String first) makes the parser
    // place the error on the role's value.
    d.deserialize_str(RoleVisitor)
}

fn de_gate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<GateKind>, D::Error> {
    struct GateVisitor;
    impl<'de> serde::de::Visitor<'de> for GateVisitor {
        type Value = Option<GateKind>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a gate: code_review or security_review")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            s.parse::<GateKind>().map(Some).map_err(E::custom)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_str(GateVisitor)
        }
    }
    d.deserialize_option(GateVisitor)
}

/// [`ExpectedArtifact`] as written in a file (unknown fields rejected).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ArtifactDe {
    name: String,
    kind: String,
}

fn de_produces<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ExpectedArtifact>, D::Error> {
    let items = Vec::<ArtifactDe>::deserialize(d)?;
    Ok(items
        .into_iter()
        .map(|a| ExpectedArtifact {
            name: a.name,
            kind: a.kind,
        })
        .collect())
}

/// [`ValidationRule`] as written in a file (unknown fields rejected; unit
/// variants are empty structs so that serde checks their fields too). Keep in
/// step with `ValidationRule` (see [`rule_artifact`]).
#[derive(Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case", deny_unknown_fields)]
enum RuleDe {
    ArtifactsPresent {},
    MinLength { artifact: String, chars: usize },
    Contains { artifact: String, text: Vec<String> },
    Verdict {},
    Semantic { artifact: String, rubric: String },
}

fn de_validation<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ValidationRule>, D::Error> {
    let items = Vec::<RuleDe>::deserialize(d)?;
    Ok(items
        .into_iter()
        .map(|r| match r {
            RuleDe::ArtifactsPresent {} => ValidationRule::ArtifactsPresent,
            RuleDe::MinLength { artifact, chars } => ValidationRule::MinLength { artifact, chars },
            RuleDe::Contains { artifact, text } => ValidationRule::Contains { artifact, text },
            RuleDe::Verdict {} => ValidationRule::Verdict,
            RuleDe::Semantic { artifact, rubric } => ValidationRule::Semantic { artifact, rubric },
        })
        .collect())
}

/// `(rule name, artifact)` of a rule that checks one artifact.
fn rule_artifact(rule: &ValidationRule) -> Option<(&'static str, &str)> {
    // Exhaustive on purpose: a new rule must be added here and to `RuleDe`.
    match rule {
        ValidationRule::ArtifactsPresent | ValidationRule::Verdict => None,
        ValidationRule::MinLength { artifact, .. } => Some(("min_length", artifact)),
        ValidationRule::Contains { artifact, .. } => Some(("contains", artifact)),
        ValidationRule::Semantic { artifact, .. } => Some(("semantic", artifact)),
    }
}

// ---------------------------------------------------------------------------
// Semantic validation.

struct Validator<'a> {
    wf: &'a Workflow,
    file: &'a str,
    src: locate::Source<'a>,
    errors: Vec<DslError>,
}

fn gate_role(kind: GateKind) -> Role {
    match kind {
        GateKind::CodeReview => Role::CodeReviewer,
        GateKind::SecurityReview => Role::SecurityReviewer,
    }
}

fn specialist_list() -> String {
    Role::SPECIALISTS
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn line_of(at: Option<(usize, usize)>) -> String {
    match at {
        Some((line, _)) => format!("line {line}"),
        None => "an earlier task".to_string(),
    }
}

impl<'a> Validator<'a> {
    fn err(&mut self, at: Option<(usize, usize)>, field: String, message: String) {
        self.errors
            .push(DslError::new(self.file, at, Some(field), message));
    }

    /// Where task `i` is: its `id:` (or the start of its item).
    fn task_at(&self, i: usize) -> Option<(usize, usize)> {
        self.src.task_pos(i)
    }

    /// Where `key` of task `i` is, else where the task is.
    fn key_at(&self, i: usize, key: &str) -> Option<(usize, usize)> {
        self.src.key_pos(i, key).or_else(|| self.task_at(i))
    }

    /// Where the `nth` occurrence of `token` inside `key` of task `i` is.
    fn token_at(&self, i: usize, key: &str, token: &str, nth: usize) -> Option<(usize, usize)> {
        self.src
            .token_pos(i, key, token, nth)
            .or_else(|| self.key_at(i, key))
    }

    /// Where the `nth` `sub: value` inside `key` of task `i` is.
    fn sub_at(
        &self,
        i: usize,
        key: &str,
        sub: &str,
        value: &str,
        nth: usize,
    ) -> Option<(usize, usize)> {
        self.src
            .sub_value_pos(i, key, sub, value, nth)
            .or_else(|| self.key_at(i, key))
    }

    fn run(&mut self) {
        let wf = self.wf;
        if wf.name.trim().is_empty() {
            let at = self.src.root_key_pos("name");
            self.err(
                at,
                "name".into(),
                "the workflow name is empty; give it a name, e.g. `name: my_workflow`".into(),
            );
        }
        if wf.tasks.is_empty() {
            let at = self.src.root_key_pos("tasks");
            self.err(
                at,
                "tasks".into(),
                "the workflow has no tasks; add at least one under `tasks:` (each with an `id` and a `role`)".into(),
            );
            return;
        }
        // First index of each id (duplicates are reported, then ignored).
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, t) in wf.tasks.iter().enumerate() {
            self.check_id(i, &index);
            index.entry(t.id.as_str()).or_insert(i);
        }
        let mut dedupe: HashMap<&str, usize> = HashMap::new();
        let mut artifacts: BTreeMap<&str, usize> = BTreeMap::new();
        let mut gates: BTreeMap<GateKind, usize> = BTreeMap::new();
        for (i, t) in wf.tasks.iter().enumerate() {
            self.check_role_limits(i);
            if let Some(key) = &t.dedupe_key {
                let field = format!("tasks[{i}].dedupe_key");
                if key.trim().is_empty() {
                    let at = self.key_at(i, "dedupe_key");
                    self.err(at, field, format!("task {}: dedupe_key is empty; leave it out to use the default (<run>/<task id>/<round>)", t.id));
                } else if let Some(&j) = dedupe.get(key.as_str()) {
                    let at = self.key_at(i, "dedupe_key");
                    let first = line_of(self.key_at(j, "dedupe_key"));
                    self.err(at, field, format!("task {}: dedupe_key {key:?} is also used by task {} ({first}); tasks with the same key would be created only once, so make it unique", t.id, wf.tasks[j].id));
                } else {
                    dedupe.insert(key, i);
                }
            }
            self.check_needs(i, &index);
            self.check_artifacts(i, &mut artifacts);
            if let Some(kind) = t.gate {
                self.check_gate(i, kind, &mut gates);
            }
        }
        let cyclic = self.check_cycles(&index);
        if !cyclic
            && let (Some(&cr), Some(&sec)) = (
                gates.get(&GateKind::CodeReview),
                gates.get(&GateKind::SecurityReview),
            )
            && !depends_on(wf, &index, sec, cr)
        {
            let (cr_id, sec_id) = (&wf.tasks[cr].id, &wf.tasks[sec].id);
            let at = if wf.tasks[sec].needs.is_empty() {
                self.key_at(sec, "gate")
            } else {
                self.key_at(sec, "needs")
            };
            self.err(
                at,
                format!("tasks[{sec}].needs"),
                format!("gates out of order: the security_review gate task {sec_id} must run after the code_review gate task {cr_id}; add {cr_id} to its needs (directly or through a task it needs)"),
            );
        }
    }

    fn check_id(&mut self, i: usize, index: &HashMap<&str, usize>) {
        let id = self.wf.tasks[i].id.as_str();
        let field = format!("tasks[{i}].id");
        let at = self.key_at(i, "id");
        if id.trim().is_empty() {
            self.err(at, field, "task id is empty; ids use lowercase letters, digits and `_` (for example `backend`)".into());
        } else if !is_valid_task_id(id) {
            let mut fixed: String = id
                .trim()
                .chars()
                .map(|c| {
                    let c = c.to_ascii_lowercase();
                    if c.is_ascii_lowercase() || c.is_ascii_digit() {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            fixed.truncate(MAX_TASK_ID_LEN);
            let why = if id.len() > MAX_TASK_ID_LEN {
                format!("is {} characters long", id.len())
            } else {
                "has characters other than lowercase letters, digits and `_`".to_string()
            };
            self.err(at, field, format!("task id {id:?} {why}; ids are 1 to {MAX_TASK_ID_LEN} lowercase letters, digits and `_` (for example `{fixed}`)"));
        } else if is_reserved_task_id(id) {
            self.err(at, field, format!("task id {id:?} is reserved: ids starting with `fix_` or ending in `_r<number>` name the tasks rework creates; choose another id"));
        } else if let Some(&j) = index.get(id) {
            let first = line_of(self.key_at(j, "id"));
            let this = line_of(at);
            self.err(at, field, format!("duplicate task id {id:?}: defined at {first} (tasks[{j}]) and again at {this} (tasks[{i}]); task ids must be unique, rename one"));
        }
    }

    fn check_role_limits(&mut self, i: usize) {
        let wf = self.wf;
        let t = &wf.tasks[i];
        if t.role == Role::Orchestrator {
            let at = self.key_at(i, "role");
            self.err(at, format!("tasks[{i}].role"), format!("task {}: the orchestrator role plans and supervises; assign the task to a specialist ({})", t.id, specialist_list()));
        }
        if t.retries > MAX_RETRIES {
            let at = self.key_at(i, "retries");
            self.err(at, format!("tasks[{i}].retries"), format!("task {}: retries is {}; at most {MAX_RETRIES} are allowed (max attempts = retries + 1)", t.id, t.retries));
        }
        match t.timeout_secs {
            Some(0) => {
                let at = self.key_at(i, "timeout_secs");
                self.err(at, format!("tasks[{i}].timeout_secs"), format!("task {}: timeout_secs must be at least 1; leave it out to use the run's default", t.id));
            }
            Some(s) if s > MAX_TIMEOUT_SECS => {
                let at = self.key_at(i, "timeout_secs");
                self.err(
                    at,
                    format!("tasks[{i}].timeout_secs"),
                    format!(
                        "task {}: timeout_secs is {s}; the limit is {MAX_TIMEOUT_SECS} (24 hours)",
                        t.id
                    ),
                );
            }
            _ => {}
        }
    }

    fn check_needs(&mut self, i: usize, index: &HashMap<&str, usize>) {
        let wf = self.wf;
        let t = &wf.tasks[i];
        for (k, need) in t.needs.iter().enumerate() {
            let field = format!("tasks[{i}].needs[{k}]");
            let nth = t.needs[..k].iter().filter(|n| *n == need).count();
            let at = self.token_at(i, "needs", need, nth);
            if *need == t.id {
                self.err(
                    at,
                    field,
                    format!("task {} needs itself; remove {need} from its needs", t.id),
                );
            } else if nth > 0 {
                self.err(
                    at,
                    field,
                    format!("task {} lists {need} twice in its needs; remove one", t.id),
                );
            } else if !index.contains_key(need.as_str()) {
                let hint = match closest(need, index.keys().copied()) {
                    Some(s) => format!("did you mean {s}?"),
                    None => {
                        let mut ids: Vec<&str> = index.keys().copied().collect();
                        ids.sort_by_key(|id| index[id]);
                        format!("tasks are: {}", ids.join(", "))
                    }
                };
                self.err(
                    at,
                    field,
                    format!(
                        "task {} needs {need:?}, which is not a task of this workflow; {hint}",
                        t.id
                    ),
                );
            }
        }
    }

    fn check_artifacts(&mut self, i: usize, seen: &mut BTreeMap<&'a str, usize>) {
        let wf = self.wf;
        let t = &wf.tasks[i];
        for (k, a) in t.produces.iter().enumerate() {
            let field = format!("tasks[{i}].produces[{k}]");
            let nth = t.produces[..k].iter().filter(|b| b.name == a.name).count();
            let at = self.sub_at(i, "produces", "name", &a.name, nth);
            if a.name.trim().is_empty() {
                self.err(at, format!("{field}.name"), format!("task {}: an artifact has an empty name; name it, e.g. `{{ name: {}_output, kind: {} }}`", t.id, t.id, a.kind));
                continue;
            }
            if a.kind.trim().is_empty() {
                self.err(at, format!("{field}.kind"), format!("task {}: artifact {} has an empty kind; give it one (requirements, plan, design, architecture, schema, code, review, ...)", t.id, a.name));
            }
            if nth > 0 {
                self.err(
                    at,
                    format!("{field}.name"),
                    format!(
                        "task {} lists artifact {} twice in produces; remove one",
                        t.id, a.name
                    ),
                );
                continue;
            }
            match seen.get(a.name.as_str()) {
                Some(&j) => {
                    let first = line_of(self.sub_at(j, "produces", "name", &a.name, 0));
                    self.err(at, format!("{field}.name"), format!("artifact {} is produced by task {} ({first}) and again by task {}; artifact names are unique within a workflow, so rename one", a.name, wf.tasks[j].id, t.id));
                }
                None => {
                    seen.insert(&a.name, i);
                }
            }
        }
        let names: Vec<&str> = t.produces.iter().map(|a| a.name.as_str()).collect();
        for (k, rule) in t.validation.iter().enumerate() {
            let Some((rule_name, artifact)) = rule_artifact(rule) else {
                continue;
            };
            if names.contains(&artifact) {
                continue;
            }
            let nth = t.validation[..k]
                .iter()
                .filter(|r| rule_artifact(r).map(|(_, a)| a) == Some(artifact))
                .count();
            let at = self.sub_at(i, "validation", "artifact", artifact, nth);
            let produces = if names.is_empty() {
                "it produces none".to_string()
            } else {
                format!("it produces {}", names.join(", "))
            };
            self.err(at, format!("tasks[{i}].validation[{k}].artifact"), format!("task {}: rule {rule_name} checks artifact {artifact:?}, which the task does not produce ({produces}); fix the name or add the artifact to `produces`", t.id));
        }
    }

    fn check_gate(&mut self, i: usize, kind: GateKind, seen: &mut BTreeMap<GateKind, usize>) {
        let wf = self.wf;
        let t = &wf.tasks[i];
        if let Some(&j) = seen.get(&kind) {
            let at = self.key_at(i, "gate");
            let first = line_of(self.key_at(j, "gate"));
            self.err(at, format!("tasks[{i}].gate"), format!("task {} is a second {kind} gate: task {} ({first}) already is; a workflow has at most one task per gate, so remove the gate from one", t.id, wf.tasks[j].id));
        } else {
            seen.insert(kind, i);
        }
        let want = gate_role(kind);
        if t.role != want && t.role != Role::Orchestrator {
            let at = self.key_at(i, "role");
            self.err(
                at,
                format!("tasks[{i}].role"),
                format!(
                    "task {} is the {kind} gate, so its role must be {want}, not {}",
                    t.id, t.role
                ),
            );
        }
        if !t.produces.iter().any(|a| a.kind == "review") {
            let at = if t.produces.is_empty() {
                self.key_at(i, "gate")
            } else {
                self.key_at(i, "produces")
            };
            self.err(at, format!("tasks[{i}].produces"), format!("task {} is the {kind} gate and must produce an artifact of kind `review`, e.g. `produces: [{{ name: {kind}, kind: review }}]`", t.id));
        }
    }

    /// Report one dependency cycle; returns whether there is one.
    fn check_cycles(&mut self, index: &HashMap<&str, usize>) -> bool {
        let wf = self.wf;
        let adj: Vec<Vec<usize>> = wf
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                t.needs
                    .iter()
                    .filter_map(|n| index.get(n.as_str()).copied())
                    .filter(|&j| j != i)
                    .collect()
            })
            .collect();
        let Some(mut cycle) = find_cycle(&adj) else {
            return false;
        };
        let first = cycle
            .iter()
            .enumerate()
            .min_by_key(|(_, t)| **t)
            .map(|(k, _)| k)
            .unwrap_or(0);
        cycle.rotate_left(first);
        let start = cycle[0];
        let mut path: Vec<&str> = cycle.iter().map(|&t| wf.tasks[t].id.as_str()).collect();
        path.push(&wf.tasks[start].id);
        let at = self.task_at(start);
        self.err(
            at,
            format!("tasks[{start}].needs"),
            format!(
                "dependency cycle: {} (each task needs the next); remove one of these needs",
                path.join(" -> ")
            ),
        );
        true
    }
}

/// Whether task `from` depends on task `to`, directly or transitively.
fn depends_on(wf: &Workflow, index: &HashMap<&str, usize>, from: usize, to: usize) -> bool {
    let mut seen = vec![false; wf.tasks.len()];
    let mut stack = vec![from];
    while let Some(i) = stack.pop() {
        for n in &wf.tasks[i].needs {
            if let Some(&j) = index.get(n.as_str()) {
                if j == to {
                    return true;
                }
                if !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
    }
    false
}

/// A cycle in `adj` (task -> tasks it needs), as the tasks on it in order.
fn find_cycle(adj: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let n = adj.len();
    let mut mark = vec![Mark::New; n];
    for root in 0..n {
        if mark[root] != Mark::New {
            continue;
        }
        // Iterative depth-first search: (node, next edge to follow).
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = Mark::Open;
        while let Some(&mut (u, ref mut edge)) = stack.last_mut() {
            if let Some(&v) = adj[u].get(*edge) {
                *edge += 1;
                match mark[v] {
                    Mark::Open => {
                        let pos = stack.iter().position(|&(w, _)| w == v).unwrap_or(0);
                        return Some(stack[pos..].iter().map(|&(w, _)| w).collect());
                    }
                    Mark::New => {
                        mark[v] = Mark::Open;
                        stack.push((v, 0));
                    }
                    Mark::Done => {}
                }
            } else {
                mark[u] = Mark::Done;
                stack.pop();
            }
        }
    }
    None
}

/// The candidate closest to `word`, if it is close enough to be a typo.
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| c)
}

/// Levenshtein distance.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------

/// A line scanner that finds tasks and their fields in a workflow's source.
///
/// It is not a YAML parser: it masks comments and block scalars, finds the
/// top-level `tasks:` key, splits its sequence (block or flow style) into
/// items and looks for `key:` tokens inside an item. Task keys and the keys of
/// nested records do not overlap, so the first `needs:` in an item is that
/// task's. When the items it finds do not match the parsed tasks one to one
/// it falls back to finding each task by its `id: <value>`.
mod locate {
    use std::ops::Range;

    /// The keys of a task; a field's region ends where the next one starts.
    const TASK_KEYS: [&str; 11] = [
        "id",
        "role",
        "title",
        "instructions",
        "needs",
        "produces",
        "validation",
        "gate",
        "retries",
        "timeout_secs",
        "dedupe_key",
    ];

    #[derive(Debug)]
    pub(super) struct Source<'a> {
        text: &'a str,
        /// `text` with comments and block scalar contents replaced by spaces
        /// (same length, same line breaks).
        masked: Vec<u8>,
        line_starts: Vec<usize>,
        /// Indentation of the top-level mapping.
        root_indent: usize,
        /// The byte range of each task's item, in task order.
        items: Vec<Range<usize>>,
    }

    impl<'a> Source<'a> {
        pub(super) fn new(text: &'a str, ids: &[&str]) -> Self {
            let masked = mask(text);
            let mut line_starts = vec![0];
            line_starts.extend(
                text.bytes()
                    .enumerate()
                    .filter(|(_, b)| *b == b'\n')
                    .map(|(i, _)| i + 1),
            );
            let mut src = Source {
                text,
                masked,
                line_starts,
                root_indent: 0,
                items: Vec::new(),
            };
            let root_indent = src
                .lines()
                .find(|&(s, e)| {
                    let code = src.code(s, e);
                    !code.trim().is_empty()
                        && !code.trim_start().starts_with("---")
                        && !code.starts_with('%')
                })
                .map(|(s, e)| src.indent(s, e))
                .unwrap_or(0);
            src.root_indent = root_indent;
            let items = src.task_items();
            src.items = if items.len() == ids.len() {
                items
            } else {
                src.items_by_id(ids)
            };
            src
        }

        /// `(start, end)` byte offsets of each line, without its line break.
        fn lines(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
            self.line_starts.iter().map(|&s| {
                let rest = &self.masked[s..];
                let len = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
                let mut e = s + len;
                if e > s && self.masked[e - 1] == b'\r' {
                    e -= 1;
                }
                (s, e)
            })
        }

        fn code(&self, s: usize, e: usize) -> &str {
            std::str::from_utf8(&self.masked[s..e]).unwrap_or("")
        }

        fn indent(&self, s: usize, e: usize) -> usize {
            self.masked[s..e].iter().take_while(|&&b| b == b' ').count()
        }

        /// 1-based `(line, column)` of a byte offset.
        pub(super) fn pos(&self, offset: usize) -> (usize, usize) {
            let line = self.line_starts.partition_point(|&s| s <= offset);
            let start = self.line_starts[line - 1];
            let col = self
                .text
                .get(start..offset)
                .map(|s| s.chars().count())
                .unwrap_or(offset - start);
            (line, col + 1)
        }

        /// If a `key:` starts at `p`, the offset just after its colon.
        fn key_at(&self, p: usize, key: &str) -> Option<usize> {
            let m = &self.masked;
            if !m[p..].starts_with(key.as_bytes()) {
                return None;
            }
            if p > 0 && !matches!(m[p - 1], b' ' | b'\t' | b'\n' | b'{' | b',') {
                return None;
            }
            let mut q = p + key.len();
            while q < m.len() && matches!(m[q], b' ' | b'\t') {
                q += 1;
            }
            if m.get(q) != Some(&b':') {
                return None;
            }
            match m.get(q + 1) {
                None | Some(b' ' | b'\t' | b'\n' | b'\r' | b',' | b'}' | b']') => Some(q + 1),
                _ => None,
            }
        }

        /// The first `key:` in `range`: `(key offset, offset after the colon)`.
        fn find_key(&self, range: Range<usize>, key: &str) -> Option<(usize, usize)> {
            range
                .clone()
                .filter(|&p| p + key.len() <= range.end)
                .find_map(|p| self.key_at(p, key).map(|after| (p, after)))
        }

        /// Whether the scalar `value` (optionally quoted) starts at `p`, not
        /// as a key; returns the offset of its first character.
        fn value_at(&self, p: usize, value: &str) -> Option<usize> {
            let m = &self.masked;
            let (start, quote) = match m.get(p) {
                Some(&q @ (b'"' | b'\'')) => (p + 1, Some(q)),
                _ => (p, None),
            };
            if value.is_empty() || !m.get(start..)?.starts_with(value.as_bytes()) {
                return None;
            }
            let mut end = start + value.len();
            if let Some(q) = quote {
                if m.get(end) != Some(&q) {
                    return None;
                }
                end += 1;
            }
            match m.get(end) {
                None | Some(b' ' | b'\t' | b'\n' | b'\r' | b',' | b'}' | b']' | b'#') => {}
                _ => return None,
            }
            // Not a key: no colon follows.
            let mut q = end;
            while q < m.len() && matches!(m[q], b' ' | b'\t') {
                q += 1;
            }
            if quote.is_none() && m.get(q) == Some(&b':') {
                return None;
            }
            Some(start)
        }

        /// The `nth` scalar `value` in `range` (an item of a list, a value).
        fn find_token(&self, range: Range<usize>, value: &str, nth: usize) -> Option<usize> {
            let m = &self.masked;
            range
                .clone()
                .filter(|&p| {
                    p == 0 || matches!(m[p - 1], b' ' | b'\t' | b'\n' | b'[' | b',' | b'-')
                })
                .filter(|&p| p < range.end)
                .filter_map(|p| self.value_at(p, value))
                .nth(nth)
        }

        /// The `nth` `key: value` in `range`; the offset of the value.
        fn find_key_value(
            &self,
            range: Range<usize>,
            key: &str,
            value: &str,
            nth: usize,
        ) -> Option<usize> {
            let m = &self.masked;
            range
                .clone()
                .filter_map(|p| self.key_at(p, key))
                .filter_map(|mut after| {
                    while after < range.end && matches!(m[after], b' ' | b'\t') {
                        after += 1;
                    }
                    self.value_at(after, value)
                })
                .nth(nth)
        }

        /// `(start, end)` of the top-level lines (at the root indentation).
        fn root_lines(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
            self.lines()
                .filter(|&(s, e)| s < e && self.indent(s, e) == self.root_indent)
        }

        /// Offsets of a top-level `key:` and of what follows its colon.
        fn root_key(&self, key: &str) -> Option<(usize, usize)> {
            self.root_lines().find_map(|(s, _)| {
                let p = s + self.root_indent;
                self.key_at(p, key).map(|after| (p, after))
            })
        }

        pub(super) fn root_key_pos(&self, key: &str) -> Option<(usize, usize)> {
            self.root_key(key).map(|(p, _)| self.pos(p))
        }

        /// The items of the top-level `tasks:` sequence.
        fn task_items(&self) -> Vec<Range<usize>> {
            let Some((_, after)) = self.root_key("tasks") else {
                return Vec::new();
            };
            let m = &self.masked;
            let mut p = after;
            while p < m.len() && matches!(m[p], b' ' | b'\t') {
                p += 1;
            }
            match m.get(p) {
                Some(b'[') => self.flow_items(p),
                Some(b'\n' | b'\r') | None => self.block_items(p),
                _ => Vec::new(),
            }
        }

        /// Items of a flow sequence starting at the `[` at `open`.
        fn flow_items(&self, open: usize) -> Vec<Range<usize>> {
            let m = &self.masked;
            let mut items = Vec::new();
            let mut depth = 0usize;
            let mut quote: Option<u8> = None;
            let mut start = open + 1;
            let mut i = open;
            while i < m.len() {
                let c = m[i];
                if let Some(q) = quote {
                    if c == b'\\' && q == b'"' {
                        i += 1;
                    } else if c == q {
                        quote = None;
                    }
                    i += 1;
                    continue;
                }
                match c {
                    b'"' | b'\'' => quote = Some(c),
                    b'[' | b'{' => depth += 1,
                    b']' | b'}' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            push_item(m, &mut items, start..i);
                            return items;
                        }
                    }
                    b',' if depth == 1 => {
                        push_item(m, &mut items, start..i);
                        start = i + 1;
                    }
                    _ => {}
                }
                i += 1;
            }
            items
        }

        /// Items of a block sequence on the lines after offset `from`.
        fn block_items(&self, from: usize) -> Vec<Range<usize>> {
            let mut items: Vec<Range<usize>> = Vec::new();
            let mut item_indent = None;
            for (s, e) in self.lines().filter(|&(s, _)| s > from) {
                let code = self.code(s, e);
                if code.trim().is_empty() {
                    continue;
                }
                let indent = self.indent(s, e);
                let is_item = code[indent..].starts_with('-')
                    && matches!(code.as_bytes().get(indent + 1), None | Some(b' ' | b'\t'));
                let want = *item_indent.get_or_insert(indent);
                if indent < want || indent < self.root_indent || (indent == want && !is_item) {
                    break;
                }
                if indent == want {
                    items.push(s + indent + 1..e);
                } else if let Some(last) = items.last_mut() {
                    last.end = e;
                } else {
                    break;
                }
            }
            items
        }

        /// Fallback: task `i` runs from its `id: <id>` to the next `id:`.
        fn items_by_id(&self, ids: &[&str]) -> Vec<Range<usize>> {
            let all = 0..self.masked.len();
            let starts: Vec<usize> = all
                .clone()
                .filter(|&p| self.key_at(p, "id").is_some())
                .collect();
            ids.iter()
                .enumerate()
                .map(|(i, id)| {
                    let nth = ids[..i].iter().filter(|x| *x == id).count();
                    let Some(v) = self.find_key_value(all.clone(), "id", id, nth) else {
                        return 0..0;
                    };
                    let start = starts.iter().rev().find(|&&s| s < v).copied().unwrap_or(v);
                    let end = starts
                        .iter()
                        .find(|&&s| s > v)
                        .copied()
                        .unwrap_or(self.masked.len());
                    start..end
                })
                .collect()
        }

        fn item(&self, i: usize) -> Option<Range<usize>> {
            self.items.get(i).filter(|r| !r.is_empty()).cloned()
        }

        /// Where task `i`'s id is (or its item starts).
        pub(super) fn task_pos(&self, i: usize) -> Option<(usize, usize)> {
            let item = self.item(i)?;
            let at = self
                .find_key(item.clone(), "id")
                .map(|(p, _)| p)
                .unwrap_or_else(|| {
                    let m = &self.masked;
                    (item.start..item.end)
                        .find(|&p| !m[p].is_ascii_whitespace())
                        .unwrap_or(item.start)
                });
            Some(self.pos(at))
        }

        /// Task `i`'s `key`: the key's offset and the region of its value.
        fn field(&self, i: usize, key: &str) -> Option<(usize, Range<usize>)> {
            let item = self.item(i)?;
            let (p, after) = self.find_key(item.clone(), key)?;
            let end = TASK_KEYS
                .iter()
                .filter(|k| **k != key)
                .filter_map(|k| self.find_key(after..item.end, k).map(|(q, _)| q))
                .min()
                .unwrap_or(item.end);
            Some((p, after..end))
        }

        pub(super) fn key_pos(&self, i: usize, key: &str) -> Option<(usize, usize)> {
            self.field(i, key).map(|(p, _)| self.pos(p))
        }

        pub(super) fn token_pos(
            &self,
            i: usize,
            key: &str,
            token: &str,
            nth: usize,
        ) -> Option<(usize, usize)> {
            let (_, region) = self.field(i, key)?;
            self.find_token(region, token, nth).map(|p| self.pos(p))
        }

        pub(super) fn sub_value_pos(
            &self,
            i: usize,
            key: &str,
            sub: &str,
            value: &str,
            nth: usize,
        ) -> Option<(usize, usize)> {
            let (_, region) = self.field(i, key)?;
            self.find_key_value(region, sub, value, nth)
                .map(|p| self.pos(p))
        }
    }

    /// Push `range` trimmed of whitespace, unless it is empty.
    fn push_item(m: &[u8], items: &mut Vec<Range<usize>>, range: Range<usize>) {
        let mut r = range;
        while r.start < r.end && m[r.start].is_ascii_whitespace() {
            r.start += 1;
        }
        while r.end > r.start && m[r.end - 1].is_ascii_whitespace() {
            r.end -= 1;
        }
        if !r.is_empty() {
            items.push(r);
        }
    }

    /// Blank out comments and the contents of block scalars (`|`, `>`).
    fn mask(text: &str) -> Vec<u8> {
        let mut out = text.as_bytes().to_vec();
        let mut block: Option<usize> = None;
        let mut start = 0;
        for line in text.split_inclusive('\n') {
            let body = line.trim_end_matches(['\n', '\r']);
            let indent = body.len() - body.trim_start_matches(' ').len();
            // Inside a block scalar: blank lines and deeper lines are content.
            if block.is_some_and(|parent| body.trim().is_empty() || indent > parent) {
                out[start..start + body.len()].fill(b' ');
                start += line.len();
                continue;
            }
            let code_len = comment_start(body).unwrap_or(body.len());
            out[start + code_len..start + body.len()].fill(b' ');
            block = block_scalar_parent(&body[..code_len]);
            start += line.len();
        }
        out
    }

    /// Byte offset of a comment in a line, outside quotes.
    fn comment_start(line: &str) -> Option<usize> {
        let b = line.as_bytes();
        let mut quote: Option<u8> = None;
        let mut prev: Option<u8> = None;
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            match quote {
                Some(b'"') => {
                    if c == b'\\' {
                        i += 2;
                        continue;
                    }
                    if c == b'"' {
                        quote = None;
                    }
                }
                Some(_) => {
                    if c == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        quote = None;
                    }
                }
                None => {
                    if c == b'#' && (i == 0 || matches!(b[i - 1], b' ' | b'\t')) {
                        return Some(i);
                    }
                    if matches!(c, b'"' | b'\'')
                        && matches!(prev, None | Some(b':' | b'-' | b'[' | b'{' | b',' | b'?'))
                    {
                        quote = Some(c);
                    }
                }
            }
            if !matches!(c, b' ' | b'\t') {
                prev = Some(c);
            }
            i += 1;
        }
        None
    }

    /// If `code` opens a block scalar (`key: |`, `- >-`), the indentation its
    /// content lines must exceed.
    fn block_scalar_parent(code: &str) -> Option<usize> {
        let t = code.trim_end();
        let last = t.rsplit([' ', '\t']).next()?;
        let mut chars = last.chars();
        if !matches!(chars.next(), Some('|' | '>')) {
            return None;
        }
        if !chars.all(|c| c == '+' || c == '-' || c.is_ascii_digit()) {
            return None;
        }
        let before = t[..t.len() - last.len()].trim_end();
        let b = code.as_bytes();
        let mut col = code.len() - code.trim_start().len();
        let mut dash = col;
        while b.get(col) == Some(&b'-') && matches!(b.get(col + 1), Some(b' ' | b'\t')) {
            dash = col;
            col += 1;
            while matches!(b.get(col), Some(b' ' | b'\t')) {
                col += 1;
            }
        }
        if before.ends_with(':') {
            Some(col)
        } else if before.ends_with('-') {
            Some(dash)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "t.yaml";

    fn parse_err(text: &str) -> DslError {
        match Workflow::parse(FILE, text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e,
        }
    }

    /// Asserts the error's line, field and a part of its message.
    #[track_caller]
    fn assert_err(text: &str, line: usize, field: &str, needle: &str) -> DslError {
        let e = parse_err(text);
        assert_eq!(e.file, FILE);
        assert_eq!(e.line, Some(line), "wrong line: {e}");
        assert_eq!(e.field.as_deref(), Some(field), "wrong field: {e}");
        assert!(e.message.contains(needle), "{needle:?} not in: {e}");
        e
    }

    fn ids(order: &[&TaskSpec]) -> Vec<String> {
        order.iter().map(|t| t.id.clone()).collect()
    }

    // -- built-in and example workflows ---------------------------------------

    #[test]
    fn builtin_sdlc_parses_in_lifecycle_order() {
        let wf = Workflow::builtin("sdlc").unwrap();
        assert_eq!(wf.name, "sdlc");
        assert_eq!(wf.tasks.len(), 9);
        let roles: Vec<&str> = wf
            .topological_order()
            .iter()
            .map(|t| t.role.short())
            .collect();
        assert_eq!(
            roles,
            ["ba", "pm", "ux", "tl", "db", "be", "fe", "cr", "sec"]
        );
        assert_eq!(
            wf.task("code_review").unwrap().gate,
            Some(GateKind::CodeReview)
        );
        assert_eq!(wf.task("backend").unwrap().timeout_secs, Some(600));
        assert_eq!(wf.task("plan").unwrap().retries, 2);
        assert!(Workflow::builtin("nope").is_none());
    }

    #[test]
    fn every_builtin_parses_and_round_trips_through_to_yaml() {
        for name in BUILTIN_WORKFLOWS {
            let (file, text) = builtin_source(name).unwrap();
            let wf = Workflow::parse(file, text).unwrap();
            let yaml = wf.to_yaml();
            let again = Workflow::parse("shown.yaml", &yaml).unwrap();
            assert_eq!(again, wf, "{name} does not round-trip:\n{yaml}");
            assert!(!yaml.contains("null"), "defaults are left out:\n{yaml}");
        }
    }

    const EXAMPLES: &[(&str, &str)] = &[(
        "api_only.yaml",
        include_str!("../../../examples/workflows/api_only.yaml"),
    )];

    #[test]
    fn every_example_workflow_parses() {
        for (file, text) in EXAMPLES {
            let wf = Workflow::parse(file, text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                Workflow::parse(file, &wf.to_yaml()).unwrap(),
                wf,
                "{file} round-trips"
            );
        }
    }

    #[test]
    fn api_only_has_no_frontend_and_keeps_the_gates_in_order() {
        let wf = Workflow::parse(EXAMPLES[0].0, EXAMPLES[0].1).unwrap();
        let roles: Vec<&str> = wf
            .topological_order()
            .iter()
            .map(|t| t.role.short())
            .collect();
        assert_eq!(roles, ["ba", "tl", "db", "be", "cr", "sec"]);
    }

    #[test]
    fn topological_order_keeps_file_order_among_equals() {
        let text = r#"name: t
tasks:
  - { id: c, role: tech_lead, needs: [b] }
  - { id: b, role: business_analyst }
  - { id: a, role: project_manager }
  - { id: d, role: ux_engineer, needs: [a] }
"#;
        let wf = Workflow::parse(FILE, text).unwrap();
        assert_eq!(ids(&wf.topological_order()), ["b", "c", "a", "d"]);
    }

    // -- error format and syntax ---------------------------------------------

    #[test]
    fn error_display_is_file_line_column_field_message() {
        let e = DslError::new(
            "wf.yaml",
            Some((12, 5)),
            Some("tasks[3].needs".into()),
            "boom",
        );
        assert_eq!(e.to_string(), "wf.yaml:12:5: tasks[3].needs: boom");
        let e = DslError { column: None, ..e };
        assert_eq!(e.to_string(), "wf.yaml:12: tasks[3].needs: boom");
        let e = DslError::new("wf.yaml", None, None, "boom");
        assert_eq!(e.to_string(), "wf.yaml: boom");
    }

    #[test]
    fn bad_indentation_is_a_syntax_error_with_a_line() {
        let text = r#"name: t
tasks:
  - id: a
    role: business_analyst
   needs: [b]
"#;
        let e = parse_err(text);
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.column.is_some(), "{e}");
        assert_eq!(e.field, None);
        assert!(e.message.starts_with("invalid YAML: "), "{e}");
        assert!(e.message.contains("indentation"), "{e}");
        assert!(e.to_string().starts_with("t.yaml:5:"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_field_and_line() {
        let text = "name: t\ntasks:\n  - id: a\n    role: tech_lead\n    retries: many\n";
        let e = assert_err(text, 5, "tasks[0].retries", "invalid type");
        assert!(!e.message.contains("at line"), "location not repeated: {e}");
    }

    #[test]
    fn empty_file_says_what_a_workflow_needs() {
        let e = parse_err("# nothing here\n");
        assert!(e.message.contains("empty"), "{e}");
        assert!(e.message.contains("`tasks`"), "{e}");
    }

    #[test]
    fn missing_role_names_the_field() {
        let text = "name: t\ntasks:\n  - id: a\n    role: tech_lead\n  - id: b\n    title: B\n";
        assert_err(text, 5, "tasks[1].role", "missing field `role`");
    }

    // -- unknown fields, roles and gates -------------------------------------

    #[test]
    fn unknown_task_field_lists_the_expected_ones() {
        let text = r#"name: t
tasks:
  - id: a
    role: tech_lead
  - id: b
    role: tech_lead
    nedds: [a]
"#;
        let e = assert_err(text, 7, "tasks[1].nedds", "unknown field `nedds`");
        for f in [
            "`id`",
            "`role`",
            "`needs`",
            "`produces`",
            "`gate`",
            "`timeout_secs`",
        ] {
            assert!(e.message.contains(f), "{f} not listed: {e}");
        }
    }

    #[test]
    fn unknown_top_level_field_is_rejected() {
        let text = "name: t\nsteps: []\ntasks:\n  - { id: a, role: tech_lead }\n";
        let e = assert_err(text, 2, "steps", "unknown field `steps`");
        assert!(e.message.contains("`success_criteria`"), "{e}");
    }

    #[test]
    fn unknown_fields_in_artifacts_and_rules_are_rejected() {
        let text = r#"name: t
tasks:
  - id: a
    role: tech_lead
    produces:
      - { name: arch, kind: architecture, path: x.md }
"#;
        let e = parse_err(text);
        assert_eq!(e.line, Some(6), "{e}");
        assert!(e.message.contains("unknown field `path`"), "{e}");
        let text = r#"name: t
tasks:
  - id: a
    role: tech_lead
    validation:
      - { rule: artifacts_present, strict: true }
"#;
        let e = parse_err(text);
        assert_eq!(e.line, Some(6), "{e}");
        assert!(e.message.contains("unknown field `strict`"), "{e}");
        let text = "name: t\ntasks:\n  - id: a\n    role: tech_lead\n    validation:\n      - { rule: spellcheck }\n";
        let e = parse_err(text);
        assert_eq!(e.line, Some(6), "{e}");
        assert!(e.message.contains("min_length"), "{e}");
    }

    #[test]
    fn unknown_role_lists_the_valid_roles() {
        let text = r#"name: t
tasks:
  - id: a
    role: tech_lead
  - id: b
    role: designer
"#;
        let e = assert_err(text, 6, "tasks[1].role", "unknown role \"designer\"");
        assert_eq!(e.column, Some(11));
        for r in Role::SPECIALISTS {
            assert!(e.message.contains(r.as_str()), "{r} not listed: {e}");
        }
    }

    #[test]
    fn unknown_role_in_flow_style_has_its_line() {
        let text = "name: t\ntasks:\n  - { id: a, role: tech_lead }\n  - { id: b, role: 7 }\n";
        let e = assert_err(text, 4, "tasks[1].role", "unknown role \"7\"");
        assert!(e.message.contains("business_analyst"), "{e}");
    }

    #[test]
    fn unknown_gate_lists_the_gates() {
        let text = "name: t\ntasks:\n  - id: a\n    role: code_reviewer\n    gate: qa_review\n";
        assert_err(text, 5, "tasks[0].gate", "code_review and security_review");
    }

    // -- ids ------------------------------------------------------------------

    #[test]
    fn empty_workflow_is_rejected() {
        let text = "name: t\ndescription: nothing\ntasks: []\n";
        assert_err(text, 3, "tasks", "no tasks");
    }

    #[test]
    fn empty_task_id_is_rejected() {
        let text =
            "name: t\ntasks:\n  - id: a\n    role: tech_lead\n  - id: \"\"\n    role: tech_lead\n";
        assert_err(text, 5, "tasks[1].id", "task id is empty");
    }

    #[test]
    fn invalid_task_id_is_rejected_with_a_suggestion() {
        let text = "name: t\ntasks:\n  - id: a\n    role: tech_lead\n  - id: Back-End\n    role: backend_engineer\n";
        let e = assert_err(text, 5, "tasks[1].id", "lowercase letters, digits and `_`");
        assert!(e.message.contains("`back_end`"), "{e}");
        let long = "x".repeat(65);
        let text = format!("name: t\ntasks:\n  - id: {long}\n    role: tech_lead\n");
        assert_err(&text, 3, "tasks[0].id", "65 characters");
        let ok = "x".repeat(64);
        let text = format!("name: t\ntasks:\n  - id: {ok}\n    role: tech_lead\n");
        Workflow::parse(FILE, &text).unwrap();
    }

    #[test]
    fn rework_task_ids_are_reserved() {
        let text = "name: t\ntasks:\n  - id: code_review_r1\n    role: tech_lead\n";
        assert_err(text, 3, "tasks[0].id", "reserved");
        let text = "name: t\ntasks:\n  - id: fix_backend\n    role: tech_lead\n";
        assert_err(text, 3, "tasks[0].id", "reserved");
        assert!(!is_reserved_task_id("r2d2") && !is_reserved_task_id("backend_run"));
    }

    #[test]
    fn duplicate_task_id_names_both_lines() {
        let text = r#"name: t
tasks:
  - id: backend
    role: backend_engineer

  - id: frontend
    role: frontend_engineer
  - id: backend
    role: backend_engineer
"#;
        let e = assert_err(text, 8, "tasks[2].id", "duplicate task id \"backend\"");
        assert!(e.message.contains("line 3"), "{e}");
        assert!(e.message.contains("line 8"), "{e}");
    }

    // -- roles, retries, timeouts --------------------------------------------

    #[test]
    fn orchestrator_role_is_rejected() {
        let text = "name: t\ntasks:\n  - id: plan\n    title: Plan\n    role: orchestrator\n";
        let e = assert_err(text, 5, "tasks[0].role", "plans and supervises");
        assert!(e.message.contains("assign the task to a specialist"), "{e}");
    }

    #[test]
    fn too_many_retries_are_rejected() {
        let text = "name: t\ntasks:\n  - id: a\n    role: tech_lead\n    retries: 11\n";
        assert_err(text, 5, "tasks[0].retries", "at most 10");
        let text = "name: t\ntasks:\n  - id: a\n    role: tech_lead\n    retries: 10\n";
        Workflow::parse(FILE, text).unwrap();
    }

    #[test]
    fn zero_or_huge_timeouts_are_rejected() {
        let text = "name: t\ntasks:\n  - id: a\n    role: tech_lead\n    timeout_secs: 0\n";
        assert_err(text, 5, "tasks[0].timeout_secs", "at least 1");
        let text = "name: t\ntasks:\n  - id: a\n    role: tech_lead\n    timeout_secs: 86401\n";
        assert_err(text, 5, "tasks[0].timeout_secs", "86400");
        let text = "name: t\ntasks:\n  - id: a\n    role: tech_lead\n    timeout_secs: 86400\n";
        Workflow::parse(FILE, text).unwrap();
    }

    // -- needs and cycles -----------------------------------------------------

    #[test]
    fn unknown_need_suggests_the_closest_id() {
        let text = r#"name: t
tasks:
  - id: backend
    role: backend_engineer
  - id: review
    role: tech_lead
    needs:
      - backend
      - backnd
"#;
        let e = assert_err(text, 9, "tasks[1].needs[1]", "\"backnd\"");
        assert!(e.message.contains("did you mean backend?"), "{e}");
        assert_eq!(e.column, Some(9));
    }

    #[test]
    fn unknown_need_far_from_every_id_lists_the_tasks() {
        let text = "name: t\ntasks:\n  - id: backend\n    role: backend_engineer\n  - { id: review, role: tech_lead, needs: [database] }\n";
        let e = assert_err(text, 5, "tasks[1].needs[0]", "not a task of this workflow");
        assert!(e.message.contains("tasks are: backend, review"), "{e}");
    }

    #[test]
    fn a_task_that_needs_itself_is_rejected() {
        let text = "name: t\ntasks:\n  - id: a\n    role: tech_lead\n    needs: [a]\n";
        assert_err(text, 5, "tasks[0].needs[0]", "needs itself");
    }

    #[test]
    fn a_need_listed_twice_is_rejected() {
        let text = "name: t\ntasks:\n  - id: a\n    role: tech_lead\n  - id: b\n    role: tech_lead\n    needs: [a,\n      a]\n";
        assert_err(text, 8, "tasks[1].needs[1]", "twice");
    }

    #[test]
    fn a_cycle_reports_its_path_at_the_first_task() {
        let text = r#"name: t
tasks:
  - id: start
    role: business_analyst
  - id: a
    role: tech_lead
    needs: [start, c]
  - id: b
    role: database_engineer
    needs: [a]
  - id: c
    role: backend_engineer
    needs: [b]
"#;
        let e = assert_err(text, 5, "tasks[1].needs", "a -> c -> b -> a");
        assert!(e.message.contains("dependency cycle"), "{e}");
    }

    // -- artifacts and validation rules ---------------------------------------

    #[test]
    fn an_artifact_produced_twice_is_rejected() {
        let text = r#"name: t
tasks:
  - id: a
    role: tech_lead
    produces:
      - { name: architecture, kind: architecture }
  - id: b
    role: database_engineer
    produces:
      - name: schema
        kind: schema
      - name: architecture
        kind: architecture
"#;
        let e = assert_err(
            text,
            12,
            "tasks[1].produces[1].name",
            "artifact architecture is produced by task a (line 6) and again by task b",
        );
        assert!(e.message.contains("rename one"), "{e}");
    }

    #[test]
    fn a_rule_on_an_artifact_the_task_does_not_produce_is_rejected() {
        let text = r#"name: t
tasks:
  - id: a
    role: business_analyst
    produces:
      - { name: requirements, kind: requirements }
    validation:
      - { rule: artifacts_present }
      - { rule: min_length, artifact: requirments, chars: 100 }
"#;
        let e = assert_err(
            text,
            9,
            "tasks[0].validation[1].artifact",
            "rule min_length checks artifact \"requirments\"",
        );
        assert!(e.message.contains("it produces requirements"), "{e}");
    }

    // -- gates ----------------------------------------------------------------

    const IMPL: &str = r#"name: t
tasks:
  - id: backend
    role: backend_engineer
    produces: [{ name: code, kind: code }]
"#;

    #[test]
    fn two_tasks_for_one_gate_are_rejected() {
        let text = format!(
            "{IMPL}  - id: cr1
    role: code_reviewer
    needs: [backend]
    gate: code_review
    produces: [{{ name: cr1, kind: review }}]
  - id: cr2
    role: code_reviewer
    needs: [cr1]
    gate: code_review
    produces: [{{ name: cr2, kind: review }}]
"
        );
        let e = assert_err(&text, 14, "tasks[2].gate", "second code_review gate");
        assert!(e.message.contains("cr1 (line 9)"), "{e}");
    }

    #[test]
    fn a_gate_task_must_have_the_reviewer_role() {
        let text = format!(
            "{IMPL}  - id: sec
    needs: [backend]
    gate: security_review
    role: code_reviewer
    produces: [{{ name: sec, kind: review }}]
"
        );
        assert_err(
            &text,
            9,
            "tasks[1].role",
            "its role must be security_reviewer, not code_reviewer",
        );
    }

    #[test]
    fn a_gate_task_must_produce_a_review() {
        let text = format!(
            "{IMPL}  - id: cr
    role: code_reviewer
    needs: [backend]
    gate: code_review
    produces:
      - {{ name: notes, kind: notes }}
"
        );
        assert_err(&text, 10, "tasks[1].produces", "artifact of kind `review`");
        let text = format!("{IMPL}  - {{ id: cr, role: code_reviewer, gate: code_review }}\n");
        assert_err(&text, 6, "tasks[1].produces", "kind `review`");
    }

    #[test]
    fn security_review_must_come_after_code_review() {
        let text = format!(
            "{IMPL}  - id: sec
    role: security_reviewer
    needs: [backend]
    gate: security_review
    produces: [{{ name: sec, kind: review }}]
  - id: cr
    role: code_reviewer
    needs: [backend]
    gate: code_review
    produces: [{{ name: cr, kind: review }}]
"
        );
        let e = assert_err(&text, 8, "tasks[1].needs", "gates out of order");
        assert!(e.message.contains("add cr to its needs"), "{e}");
        // Transitive order is enough.
        let text = format!(
            "{IMPL}  - {{ id: cr, role: code_reviewer, needs: [backend], gate: code_review, produces: [{{ name: cr, kind: review }}] }}
  - {{ id: docs, role: tech_lead, needs: [cr] }}
  - {{ id: sec, role: security_reviewer, needs: [docs], gate: security_review, produces: [{{ name: sec, kind: review }}] }}
"
        );
        Workflow::parse(FILE, &text).unwrap();
    }

    // -- the scanner ------------------------------------------------------------

    #[test]
    fn comments_and_block_scalars_do_not_confuse_the_scanner() {
        let text = r#"# a workflow
name: t   # its name
tasks:
  # the first task
  - id: a   # id: b
    role: tech_lead
    instructions: |
      needs: [zzz]
      - id: fake
        role: x

    title: "A # not a comment"
  - role: tech_lead
    id: b
    instructions: >-
      id: c
    needs:   # depends on
      - a
      - zzz   # typo
"#;
        let e = assert_err(text, 19, "tasks[1].needs[1]", "\"zzz\"");
        assert_eq!(e.column, Some(9));
    }

    #[test]
    fn flow_sequences_of_tasks_are_located() {
        let text = r#"name: t
tasks: [
  { id: a, role: tech_lead },
  { id: b, role: tech_lead,
    needs: [a, q] },
]
"#;
        assert_err(text, 5, "tasks[1].needs[1]", "\"q\"");
        let text = "name: t\ntasks: [{ id: a, role: tech_lead, retries: 50 }]\n";
        let e = assert_err(text, 2, "tasks[0].retries", "at most 10");
        assert_eq!(e.column, Some(35));
    }

    #[test]
    fn tasks_at_the_root_indentation_are_located() {
        let text = "name: t\ntasks:\n- id: a\n  role: tech_lead\n- id: b\n  role: tech_lead\n  retries: 11\nsuccess_criteria: [done]\n";
        assert_err(text, 7, "tasks[1].retries", "at most 10");
    }

    #[test]
    fn parse_all_returns_every_error_by_line() {
        let text = r#"name: t
tasks:
  - id: a
    role: tech_lead
    retries: 20
    needs: [nope]
  - id: a
    role: orchestrator
"#;
        let errors = Workflow::parse_all(FILE, text).unwrap_err();
        let got: Vec<(Option<usize>, Option<&str>)> = errors
            .iter()
            .map(|e| (e.line, e.field.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (Some(5), Some("tasks[0].retries")),
                (Some(6), Some("tasks[0].needs[0]")),
                (Some(7), Some("tasks[1].id")),
                (Some(8), Some("tasks[1].role")),
            ]
        );
        assert_eq!(Workflow::parse(FILE, text).unwrap_err(), errors[0]);
    }

    #[test]
    fn a_workflow_built_in_code_validates_without_lines() {
        let mut wf = Workflow::builtin("sdlc").unwrap();
        wf.validate("plan", "").unwrap();
        wf.tasks[2].needs.push("security_review".into());
        let errors = wf.validate("plan", "").unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].line, None);
        assert!(errors[0].message.contains("dependency cycle"), "{errors:?}");
        assert_eq!(
            errors[0].to_string(),
            format!("plan: tasks[2].needs: {}", errors[0].message)
        );
    }

    #[test]
    fn duplicate_dedupe_keys_are_rejected() {
        let text = "name: t\ntasks:\n  - { id: a, role: tech_lead, dedupe_key: k }\n  - { id: b, role: tech_lead, dedupe_key: k }\n";
        assert_err(
            text,
            4,
            "tasks[1].dedupe_key",
            "also used by task a (line 3)",
        );
    }

    #[test]
    fn truncated_or_damaged_files_never_panic() {
        let (_, text) = builtin_source("sdlc").unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for n in 0..lines.len() {
            let prefix = lines[..n].join("\n");
            let _ = Workflow::parse_all(FILE, &prefix);
            let mut damaged = lines.clone();
            damaged.remove(n);
            let _ = Workflow::parse_all(FILE, &damaged.join("\n"));
            let mut shifted = lines.clone();
            let moved = format!(" {}", lines[n]);
            shifted[n] = &moved;
            let _ = Workflow::parse_all(FILE, &shifted.join("\n"));
        }
    }

    #[test]
    fn edit_distance_and_suggestions() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(
            closest("fronted", ["backend", "frontend"].into_iter()),
            Some("frontend")
        );
        assert_eq!(closest("db", ["ux", "backend"].into_iter()), None);
    }
}
