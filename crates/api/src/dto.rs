//! Request and response bodies of the API, with their OpenAPI schemas.
//!
//! Core types do not depend on utoipa, so responses mirror them here
//! (`From<&core type>` conversions); requests refuse unknown fields.

use std::collections::BTreeMap;

use orch_core::{
    Artifact, DeadLetter, Event, EventKind, Gate, GateKind, GateStatus, Role, Run, RunSettings,
    RunStatus, Task, TaskStatus, Verdict,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// A string enum's schema, named after the core type, with its values.
macro_rules! string_schema {
    ($ty:ident, $name:literal, $desc:literal, $values:expr) => {
        #[doc = $desc]
        #[derive(Debug)]
        pub struct $ty;

        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                use utoipa::openapi::schema::{ObjectBuilder, Type};
                let values: Vec<&'static str> = $values;
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some($desc))
                    .enum_values(Some(values))
                    .into()
            }
        }

        impl utoipa::ToSchema for $ty {
            fn name() -> std::borrow::Cow<'static, str> {
                std::borrow::Cow::Borrowed($name)
            }
        }
    };
}

string_schema!(
    RunStatusSchema,
    "RunStatus",
    "Lifecycle of a run.",
    RunStatus::ALL.iter().map(|s| s.as_str()).collect()
);
string_schema!(
    TaskStatusSchema,
    "TaskStatus",
    "Lifecycle of a task.",
    TaskStatus::ALL.iter().map(|s| s.as_str()).collect()
);
string_schema!(
    GateStatusSchema,
    "GateStatus",
    "State of a quality gate.",
    GateStatus::ALL.iter().map(|s| s.as_str()).collect()
);
string_schema!(
    GateKindSchema,
    "GateKind",
    "A quality gate (code review opens first).",
    GateKind::ALL.iter().map(|s| s.as_str()).collect()
);
string_schema!(
    RoleSchema,
    "Role",
    "An agent role.",
    Role::ALL.iter().map(|s| s.as_str()).collect()
);
string_schema!(
    EventKindSchema,
    "EventKind",
    "What an event records.",
    EventKind::NAMES.to_vec()
);

// ---------------------------------------------------------------- requests

/// `POST /runs`: start a run of a workflow for a goal.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRunRequest {
    /// What to build. Must not be empty.
    #[schema(example = "Build a small CRUD app for managing TODO items")]
    pub goal: String,
    /// Free-form context given to every agent (any JSON).
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    pub context: Option<Value>,
    /// A built-in workflow's name (default `sdlc`). Not with `workflow_yaml`.
    #[serde(default)]
    #[schema(example = "sdlc")]
    pub workflow: Option<String>,
    /// An inline workflow definition (YAML text). Not with `workflow`.
    #[serde(default)]
    pub workflow_yaml: Option<String>,
    /// Spending limits of the run (override the server's defaults).
    #[serde(default)]
    pub budget: Option<BudgetRequest>,
}

/// Spending limits: USD and/or tokens (input + output). Each must be above 0.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetRequest {
    #[serde(default)]
    #[schema(example = 5.0)]
    pub usd: Option<f64>,
    #[serde(default)]
    #[schema(example = 2_000_000)]
    pub tokens: Option<i64>,
}

/// `POST /runs/{id}/cancel`. The body is optional.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// Why (recorded as the run's status reason; default `cancelled over the API`).
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /runs/{id}/answer`: guidance for a run waiting in NEEDS_INPUT.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerRequest {
    /// The answer. Must not be empty.
    pub text: String,
}

/// `POST /runs/{id}/gates/{gate}/waive`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaiveRequest {
    /// Why the gate is waived (recorded on the gate). Must not be empty.
    pub reason: String,
}

/// `POST /workflows/validate` as JSON (the YAML text may also be the body itself).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateRequest {
    /// The workflow definition, YAML text.
    pub yaml: String,
}

// --------------------------------------------------------------- responses

/// Settings that shape how a run is driven.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunSettingsDto {
    pub max_rework: u32,
    pub max_iterations: u32,
    pub task_timeout_ms: i64,
    pub require_code_review: bool,
    pub require_security_review: bool,
    pub retry_backoff_ms: i64,
    pub retry_backoff_max_ms: i64,
    pub budget_usd: Option<f64>,
    pub budget_tokens: Option<i64>,
}

impl From<&RunSettings> for RunSettingsDto {
    fn from(s: &RunSettings) -> Self {
        RunSettingsDto {
            max_rework: s.max_rework,
            max_iterations: s.max_iterations,
            task_timeout_ms: s.task_timeout_ms,
            require_code_review: s.require_code_review,
            require_security_review: s.require_security_review,
            retry_backoff_ms: s.retry_backoff_ms,
            retry_backoff_max_ms: s.retry_backoff_max_ms,
            budget_usd: s.budget_usd,
            budget_tokens: s.budget_tokens,
        }
    }
}

/// One orchestration of a goal. Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunDto {
    #[schema(example = "0193a1b2-0000-7000-8000-000000000000")]
    pub id: String,
    pub goal: String,
    /// Any JSON value given at creation (`null` if none).
    #[schema(value_type = Value)]
    pub context: Value,
    pub workflow: String,
    #[schema(value_type = RunStatusSchema)]
    pub status: RunStatus,
    /// Why the run is waiting, failed or was cancelled.
    pub status_reason: Option<String>,
    pub success_criteria: Vec<String>,
    pub settings: RunSettingsDto,
    /// LLM provider; `(scripted)` when responses come from a fixture.
    pub provider: String,
    /// Task attempts dispatched so far.
    pub iterations: u32,
    pub cost_usd: f64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

impl From<&Run> for RunDto {
    fn from(r: &Run) -> Self {
        RunDto {
            id: r.id.to_string(),
            goal: r.goal.clone(),
            context: r.context.clone(),
            workflow: r.workflow.clone(),
            status: r.status,
            status_reason: r.status_reason.clone(),
            success_criteria: r.success_criteria.clone(),
            settings: (&r.settings).into(),
            provider: r.provider.clone(),
            iterations: r.iterations,
            cost_usd: r.cost_usd,
            tokens_in: r.tokens_in,
            tokens_out: r.tokens_out,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
        }
    }
}

/// A quality gate of a run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GateDto {
    #[schema(value_type = GateKindSchema)]
    pub kind: GateKind,
    #[schema(value_type = GateStatusSchema)]
    pub status: GateStatus,
    pub required: bool,
    /// The review task deciding the current round.
    pub review_task: Option<String>,
    pub rework_rounds: u32,
    pub reason: Option<String>,
    pub findings: Vec<String>,
    pub updated_at: i64,
}

impl From<&Gate> for GateDto {
    fn from(g: &Gate) -> Self {
        GateDto {
            kind: g.kind,
            status: g.status,
            required: g.required,
            review_task: g.review_task.clone(),
            rework_rounds: g.rework_rounds,
            reason: g.reason.clone(),
            findings: g.findings.clone(),
            updated_at: g.updated_at,
        }
    }
}

/// A reviewer's decision.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VerdictDto {
    /// `PASS` or `FAIL`.
    #[schema(example = "PASS")]
    pub verdict: String,
    pub findings: Vec<String>,
}

impl From<&Verdict> for VerdictDto {
    fn from(v: &Verdict) -> Self {
        VerdictDto {
            verdict: if v.passed() { "PASS" } else { "FAIL" }.into(),
            findings: v.findings.clone(),
        }
    }
}

/// A task as listed in a run's summary.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskSummary {
    pub id: String,
    #[schema(value_type = RoleSchema)]
    pub role: Role,
    /// The role's queue (`q_backend`).
    pub queue: String,
    #[schema(value_type = TaskStatusSchema)]
    pub status: TaskStatus,
    pub attempt: u32,
    pub max_attempts: u32,
    pub round: u32,
    pub needs: Vec<String>,
    #[schema(value_type = Option<GateKindSchema>)]
    pub gate: Option<GateKind>,
    pub result_summary: Option<String>,
    pub last_error: Option<String>,
    pub verdict: Option<VerdictDto>,
    pub cost_usd: f64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl From<&Task> for TaskSummary {
    fn from(t: &Task) -> Self {
        TaskSummary {
            id: t.id.clone(),
            role: t.role,
            queue: t.role.queue().to_string(),
            status: t.status,
            attempt: t.attempt,
            max_attempts: t.max_attempts,
            round: t.round,
            needs: t.needs.clone(),
            gate: t.gate,
            result_summary: t.result_summary.clone(),
            last_error: t.last_error.clone(),
            verdict: t.verdict.as_ref().map(Into::into),
            cost_usd: t.cost_usd,
            started_at: t.started_at,
            finished_at: t.finished_at,
        }
    }
}

/// A task with everything the store knows of it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskDto {
    pub id: String,
    #[schema(value_type = RoleSchema)]
    pub role: Role,
    pub queue: String,
    pub title: String,
    pub instructions: String,
    pub needs: Vec<String>,
    /// Artifacts the task must produce: `[{name, kind}]`.
    #[schema(value_type = Vec<Object>)]
    pub expected: Value,
    /// Validation rules checked on its output.
    #[schema(value_type = Vec<Object>)]
    pub validation: Value,
    #[schema(value_type = Option<GateKindSchema>)]
    pub gate: Option<GateKind>,
    pub round: u32,
    pub findings: Vec<String>,
    #[schema(value_type = TaskStatusSchema)]
    pub status: TaskStatus,
    pub attempt: u32,
    pub max_attempts: u32,
    pub timeout_ms: i64,
    pub not_before: Option<i64>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub last_error: Option<String>,
    pub retryable: bool,
    pub result_summary: Option<String>,
    pub verdict: Option<VerdictDto>,
    pub queued_at: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub cost_usd: f64,
}

impl From<&Task> for TaskDto {
    fn from(t: &Task) -> Self {
        TaskDto {
            id: t.id.clone(),
            role: t.role,
            queue: t.role.queue().to_string(),
            title: t.title.clone(),
            instructions: t.instructions.clone(),
            needs: t.needs.clone(),
            expected: serde_json::to_value(&t.expected).unwrap_or(Value::Null),
            validation: serde_json::to_value(&t.validation).unwrap_or(Value::Null),
            gate: t.gate,
            round: t.round,
            findings: t.findings.clone(),
            status: t.status,
            attempt: t.attempt,
            max_attempts: t.max_attempts,
            timeout_ms: t.timeout_ms,
            not_before: t.not_before,
            lease_owner: t.lease_owner.clone(),
            lease_expires_at: t.lease_expires_at,
            last_error: t.last_error.clone(),
            retryable: t.retryable,
            result_summary: t.result_summary.clone(),
            verdict: t.verdict.as_ref().map(Into::into),
            queued_at: t.queued_at,
            started_at: t.started_at,
            finished_at: t.finished_at,
            cost_usd: t.cost_usd,
        }
    }
}

/// A task that failed every attempt, kept for replay.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterDto {
    pub id: i64,
    pub run_id: String,
    pub task_id: String,
    #[schema(value_type = RoleSchema)]
    pub role: Role,
    pub attempts: u32,
    pub error: String,
    pub created_at: i64,
    pub replayed_at: Option<i64>,
}

impl From<&DeadLetter> for DeadLetterDto {
    fn from(d: &DeadLetter) -> Self {
        DeadLetterDto {
            id: d.id,
            run_id: d.run_id.to_string(),
            task_id: d.task_id.clone(),
            role: d.role,
            attempts: d.attempts,
            error: d.error.clone(),
            created_at: d.created_at,
            replayed_at: d.replayed_at,
        }
    }
}

/// `GET /runs/{id}`: the run, its gates, a summary of its tasks and its dead letters.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunDetail {
    pub run: RunDto,
    pub gates: Vec<GateDto>,
    pub tasks: Vec<TaskSummary>,
    /// Dead letters of the run not yet replayed.
    pub dead_letters: Vec<DeadLetterDto>,
}

/// A gate in the compact status.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GateBrief {
    #[schema(value_type = GateKindSchema)]
    pub kind: GateKind,
    #[schema(value_type = GateStatusSchema)]
    pub status: GateStatus,
    pub reason: Option<String>,
}

/// `GET /runs/{id}/status`: compact and cheap (one store read).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunStatusDto {
    pub id: String,
    #[schema(value_type = RunStatusSchema)]
    pub status: RunStatus,
    pub reason: Option<String>,
    /// Whether no further work happens (COMPLETED, FAILED, CANCELLED).
    pub terminal: bool,
    pub gates: Vec<GateBrief>,
    /// Number of tasks in each status (statuses with no task are left out).
    #[schema(value_type = Object, example = json!({"SUCCEEDED": 7, "RUNNING": 1}))]
    pub tasks: BTreeMap<String, u64>,
    pub tasks_total: u64,
    pub cost_usd: f64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub budget_usd: Option<f64>,
    pub budget_tokens: Option<i64>,
    pub updated_at: i64,
}

/// One page of runs, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunPage {
    pub items: Vec<RunDto>,
    pub limit: u32,
    pub offset: u32,
    /// The `offset` of the next page; null on the last page.
    pub next_offset: Option<u32>,
}

/// An event of a run's log, ordered by `seq` (1, 2, 3, ... with no gaps).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventDto {
    pub run_id: String,
    pub seq: i64,
    #[schema(value_type = EventKindSchema)]
    pub kind: EventKind,
    pub task_id: Option<String>,
    pub message: String,
    #[schema(value_type = Value)]
    pub data: Value,
    pub created_at: i64,
}

impl From<&Event> for EventDto {
    fn from(e: &Event) -> Self {
        EventDto {
            run_id: e.run_id.to_string(),
            seq: e.seq,
            kind: e.kind,
            task_id: e.task_id.clone(),
            message: e.message.clone(),
            data: e.data.clone(),
            created_at: e.created_at,
        }
    }
}

/// One page of events.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    pub items: Vec<EventDto>,
    /// Pass as `after` to get the next events (the last `seq` returned, or
    /// the `after` given when there were none).
    pub next_after: i64,
}

/// An artifact version without its content.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ArtifactMeta {
    pub name: String,
    /// Workspace path of a code artifact's file (a code artifact is several
    /// files sharing a name); null for documents.
    pub path: Option<String>,
    pub version: i64,
    pub kind: String,
    pub task_id: String,
    pub attempt: u32,
    /// Size of the content in bytes.
    pub bytes: usize,
    pub created_at: i64,
}

impl From<&Artifact> for ArtifactMeta {
    fn from(a: &Artifact) -> Self {
        ArtifactMeta {
            name: a.name.clone(),
            path: a.path.clone(),
            version: a.version,
            kind: a.kind.clone(),
            task_id: a.task_id.clone(),
            attempt: a.attempt,
            bytes: a.content.len(),
            created_at: a.created_at,
        }
    }
}

/// `GET /runs/{id}/artifacts`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ArtifactList {
    pub items: Vec<ArtifactMeta>,
}

/// One artifact file's version with its content.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ArtifactContent {
    #[serde(flatten)]
    pub meta: ArtifactMeta,
    #[schema(value_type = Value)]
    pub metadata: Value,
    pub content: String,
}

impl From<&Artifact> for ArtifactContent {
    fn from(a: &Artifact) -> Self {
        ArtifactContent {
            meta: a.into(),
            metadata: a.metadata.clone(),
            content: a.content.clone(),
        }
    }
}

/// What a step (tick, answer, waive, cancel, budget, replay) did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StepResult {
    pub run_id: String,
    /// The run's status after the step.
    #[schema(value_type = RunStatusSchema)]
    pub status: RunStatus,
    /// Tasks published on their queues by the step.
    pub dispatched: usize,
    /// Events the step appended.
    pub events: usize,
}

/// `POST /dlq/{id}/replay`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReplayResult {
    pub dead_letter: i64,
    pub run_id: String,
    pub task_id: String,
    #[schema(value_type = RunStatusSchema)]
    pub status: RunStatus,
    pub dispatched: usize,
}

/// `GET /dlq`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterList {
    pub items: Vec<DeadLetterDto>,
}

/// A built-in workflow.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkflowSummary {
    pub name: String,
    pub description: String,
    /// Number of tasks.
    pub tasks: usize,
}

/// `GET /workflows`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkflowList {
    pub items: Vec<WorkflowSummary>,
}

/// `GET /workflows/{name}`: the definition as JSON and its YAML source.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkflowDetail {
    pub name: String,
    /// The parsed workflow (`{name, description, success_criteria, tasks}`).
    #[schema(value_type = Object)]
    pub definition: Value,
    /// The YAML text it ships as.
    pub yaml: String,
    /// Task ids in an order that respects `needs`.
    pub order: Vec<String>,
}

/// `POST /workflows/validate` on a valid workflow.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ValidateResponse {
    pub valid: bool,
    pub name: String,
    /// Task ids in file order.
    pub tasks: Vec<String>,
    /// Task ids in an order that respects `needs`.
    pub order: Vec<String>,
}

/// `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// The server's version.
    pub version: String,
    /// Store backend (`sqlite`, `postgres`).
    pub store: String,
    /// Queue broker (`in-process`, `redis`).
    pub broker: String,
}
