//! The durable records: runs, tasks, gates, events, artifacts and verdicts.
//!
//! Times are milliseconds since the Unix epoch (`i64`), supplied by the
//! driver: nothing in this crate reads a clock.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, GateStatus, Role, RunStatus, TaskStatus};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// Identifier of a run: a UUIDv7 (time-ordered) in its hyphenated form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub String);

impl RunId {
    /// A fresh, time-ordered id.
    pub fn generate() -> Self {
        RunId(uuid::Uuid::now_v7().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RunId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() || s.len() > 64 || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(Error::InvalidId(s.to_string()));
        }
        Ok(RunId(s.to_string()))
    }
}

/// The two quality gates, in the order they must open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateKind {
    CodeReview,
    SecurityReview,
}

impl GateKind {
    pub const ALL: [GateKind; 2] = [GateKind::CodeReview, GateKind::SecurityReview];

    pub fn as_str(self) -> &'static str {
        match self {
            GateKind::CodeReview => "code_review",
            GateKind::SecurityReview => "security_review",
        }
    }

    /// Position in the fixed gate order (code review first).
    pub fn order(self) -> u8 {
        match self {
            GateKind::CodeReview => 0,
            GateKind::SecurityReview => 1,
        }
    }
}

impl fmt::Display for GateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GateKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "code_review" | "code" | "cr" => Ok(GateKind::CodeReview),
            "security_review" | "security" | "sec" => Ok(GateKind::SecurityReview),
            other => Err(Error::UnknownGate(other.to_string())),
        }
    }
}

/// Limits and switches that shape how a run is driven.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// Rework rounds a failed gate may open before the run asks a person.
    pub max_rework: u32,
    /// Cap on task attempts dispatched for the whole run (the seed's `MAX_ITERATIONS`).
    pub max_iterations: u32,
    /// Default per-task timeout, used where the workflow sets none.
    pub task_timeout_ms: i64,
    pub require_code_review: bool,
    pub require_security_review: bool,
    /// First retry delay; doubles each attempt, capped at `retry_backoff_max_ms`.
    pub retry_backoff_ms: i64,
    pub retry_backoff_max_ms: i64,
    /// Spending limit of the run in USD, checked before every LLM call.
    #[serde(default)]
    pub budget_usd: Option<f64>,
    /// Token limit of the run (input + output), checked before every LLM call.
    #[serde(default)]
    pub budget_tokens: Option<i64>,
}

impl RunSettings {
    /// Check budget limits a person gives (a new run's or a raised one):
    /// each, if given, must be above 0. The error says which and why.
    pub fn check_budget(usd: Option<f64>, tokens: Option<i64>) -> Result<(), String> {
        if let Some(u) = usd
            && !(u.is_finite() && u > 0.0)
        {
            return Err(format!("the USD budget must be a number above 0 (got {u})"));
        }
        if let Some(t) = tokens
            && t <= 0
        {
            return Err(format!("the token budget must be above 0 (got {t})"));
        }
        Ok(())
    }
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            max_rework: 2,
            max_iterations: 50,
            task_timeout_ms: 300_000,
            require_code_review: true,
            require_security_review: true,
            retry_backoff_ms: 1_000,
            retry_backoff_max_ms: 60_000,
            budget_usd: None,
            budget_tokens: None,
        }
    }
}

/// One orchestration of a goal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: RunId,
    pub goal: String,
    /// Free-form context supplied with the goal.
    pub context: serde_json::Value,
    pub workflow: String,
    pub status: RunStatus,
    /// Why the run is waiting, failed or was cancelled.
    pub status_reason: Option<String>,
    pub success_criteria: Vec<String>,
    pub settings: RunSettings,
    /// LLM provider name, recorded so that output can say "scripted".
    pub provider: String,
    /// Task attempts dispatched so far (checked against `max_iterations`).
    pub iterations: u32,
    pub cost_usd: f64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    /// Optimistic-concurrency version, bumped by every engine save.
    pub version: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub finished_at: Option<Millis>,
}

/// An artifact a task is expected to produce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedArtifact {
    /// Artifact name, unique within a run (`requirements`, `backend_code`).
    pub name: String,
    /// Artifact type (`requirements`, `plan`, `design`, `architecture`, `schema`, `code`, `review`, ...).
    pub kind: String,
}

/// A validation rule checked on a task's output before it may succeed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum ValidationRule {
    /// Every expected artifact is present and non-empty.
    ArtifactsPresent,
    /// An artifact's content is at least this many characters.
    MinLength { artifact: String, chars: usize },
    /// An artifact's content contains each of these strings (case-insensitive).
    Contains { artifact: String, text: Vec<String> },
    /// The output carries a parseable review verdict.
    Verdict,
    /// An LLM judges the artifact against a rubric (semantic validation).
    Semantic { artifact: String, rubric: String },
}

/// One unit of work for one role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub run_id: RunId,
    /// Unique within its run (`backend`, `fix_backend_r1`).
    pub id: String,
    pub role: Role,
    pub title: String,
    /// Role-specific instructions for this task.
    pub instructions: String,
    pub needs: Vec<String>,
    pub expected: Vec<ExpectedArtifact>,
    pub validation: Vec<ValidationRule>,
    /// The gate this task reviews for, if it is a review task.
    pub gate: Option<GateKind>,
    /// Rework round this task belongs to (0 for the planned tasks).
    pub round: u32,
    /// Findings this task must address (rework tasks) or a person's answer.
    pub findings: Vec<String>,
    pub status: TaskStatus,
    /// Attempt number of the current/last dispatch (0 before the first).
    pub attempt: u32,
    pub max_attempts: u32,
    pub timeout_ms: i64,
    /// `run_id/task_id/round`: makes task creation idempotent.
    pub dedupe_key: String,
    /// Earliest time a retry may be queued.
    pub not_before: Option<Millis>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<Millis>,
    pub last_error: Option<String>,
    /// Whether the last failure may be retried.
    pub retryable: bool,
    /// Short summary of what the task produced.
    pub result_summary: Option<String>,
    /// Review verdict, for review tasks that succeeded.
    pub verdict: Option<Verdict>,
    pub queued_at: Option<Millis>,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    pub cost_usd: f64,
}

/// A quality gate's record within a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    pub run_id: RunId,
    pub kind: GateKind,
    pub status: GateStatus,
    pub required: bool,
    /// The review task whose verdict decides the current round.
    pub review_task: Option<String>,
    /// Rework rounds opened so far.
    pub rework_rounds: u32,
    pub reason: Option<String>,
    pub findings: Vec<String>,
    pub updated_at: Millis,
}

/// A reviewer's decision, as the reviewer returns it: `{"verdict": "PASS"|"FAIL", "findings": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub verdict: VerdictKind,
    #[serde(default)]
    pub findings: Vec<String>,
}

/// A reviewer's decision: the gate passes or fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum VerdictKind {
    Pass,
    Fail,
}

impl Verdict {
    /// Parse a verdict from model output: the JSON object may be bare or inside
    /// a fenced code block, with prose around it. Findings may be strings or
    /// objects (which are kept as compact JSON text).
    pub fn parse(text: &str) -> Result<Verdict, Error> {
        let candidates = json_object_candidates(text);
        if candidates.is_empty() {
            return Err(Error::BadVerdict(
                "no JSON object found; expected {\"verdict\": \"PASS\"|\"FAIL\", \"findings\": [...]}".into(),
            ));
        }
        let mut last_err = String::new();
        for c in candidates {
            match serde_json::from_str::<serde_json::Value>(c) {
                Ok(v) => match Self::from_value(&v) {
                    Ok(verdict) => return Ok(verdict),
                    Err(e) => last_err = e,
                },
                Err(e) => last_err = format!("invalid JSON: {e}"),
            }
        }
        Err(Error::BadVerdict(last_err))
    }

    fn from_value(v: &serde_json::Value) -> Result<Verdict, String> {
        let obj = v.as_object().ok_or("verdict must be a JSON object")?;
        let raw = obj
            .get("verdict")
            .and_then(|v| v.as_str())
            .ok_or("missing string field \"verdict\"")?;
        let verdict = match raw.trim().to_ascii_uppercase().as_str() {
            "PASS" | "PASSED" => VerdictKind::Pass,
            "FAIL" | "FAILED" => VerdictKind::Fail,
            other => return Err(format!("\"verdict\" must be PASS or FAIL, got {other:?}")),
        };
        let findings = match obj.get("findings") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|f| match f {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
            Some(_) => return Err("\"findings\" must be an array".into()),
        };
        Ok(Verdict { verdict, findings })
    }

    pub fn passed(&self) -> bool {
        self.verdict == VerdictKind::Pass
    }
}

/// Balanced `{...}` spans of `text`, outermost first, fenced blocks preferred.
fn json_object_candidates(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'{' {
            let mut depth = 0usize;
            let mut in_str = false;
            let mut escaped = false;
            let mut end = None;
            for (j, &b) in bytes.iter().enumerate().skip(i) {
                if in_str {
                    match (escaped, b) {
                        (true, _) => escaped = false,
                        (false, b'\\') => escaped = true,
                        (false, b'"') => in_str = false,
                        _ => {}
                    }
                    continue;
                }
                match b {
                    b'"' => in_str = true,
                    b'{' => depth += 1,
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = Some(j);
                            break;
                        }
                    }
                    _ => {}
                }
            }
            match end {
                Some(j) => {
                    out.push(&text[i..=j]);
                    i = j + 1;
                }
                None => break,
            }
        } else {
            i += 1;
        }
    }
    out
}

/// What an event records. Stored as the `kind` column; details go in `data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    RunCreated,
    RunStatusChanged,
    TaskCreated,
    TaskQueued,
    TaskStarted,
    TaskSucceeded,
    TaskFailed,
    TaskRetryScheduled,
    TaskDead,
    TaskCancelled,
    TaskSkipped,
    LeaseExpired,
    TaskReleased,
    LlmRequest,
    LlmResponse,
    LlmError,
    ToolCall,
    ToolDenied,
    ArtifactWritten,
    ValidationFailed,
    GateOpened,
    GatePassed,
    GateFailed,
    GateWaived,
    ReworkOpened,
    Escalated,
    HumanInput,
    DlqReplayed,
    ChannelMessage,
    Checkpoint,
}

impl EventKind {
    /// Every kind's name, in declaration order.
    pub const NAMES: &'static [&'static str] = &EVENT_KIND_NAMES;

    pub fn as_str(self) -> &'static str {
        // Kept in step with serde's snake_case names by `event_kind_names_match_serde`.
        EVENT_KIND_NAMES[self as usize]
    }
}

const EVENT_KIND_NAMES: [&str; 30] = [
    "run_created",
    "run_status_changed",
    "task_created",
    "task_queued",
    "task_started",
    "task_succeeded",
    "task_failed",
    "task_retry_scheduled",
    "task_dead",
    "task_cancelled",
    "task_skipped",
    "lease_expired",
    "task_released",
    "llm_request",
    "llm_response",
    "llm_error",
    "tool_call",
    "tool_denied",
    "artifact_written",
    "validation_failed",
    "gate_opened",
    "gate_passed",
    "gate_failed",
    "gate_waived",
    "rework_opened",
    "escalated",
    "human_input",
    "dlq_replayed",
    "channel_message",
    "checkpoint",
];

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
            Error::UnknownStatus {
                kind: "EventKind",
                value: s.to_string(),
            }
        })
    }
}

/// An event about to be appended; the store assigns its sequence number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    pub kind: EventKind,
    pub task_id: Option<String>,
    pub message: String,
    pub data: serde_json::Value,
}

impl NewEvent {
    pub fn run(kind: EventKind, message: impl Into<String>) -> Self {
        NewEvent {
            kind,
            task_id: None,
            message: message.into(),
            data: serde_json::Value::Null,
        }
    }

    pub fn task(kind: EventKind, task_id: &str, message: impl Into<String>) -> Self {
        NewEvent {
            kind,
            task_id: Some(task_id.to_string()),
            message: message.into(),
            data: serde_json::Value::Null,
        }
    }

    pub fn with_data(mut self, data: serde_json::Value) -> Self {
        self.data = data;
        self
    }
}

/// An appended event: ordered per run by `seq` (1, 2, 3, ... with no gaps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub run_id: RunId,
    pub seq: i64,
    pub kind: EventKind,
    pub task_id: Option<String>,
    pub message: String,
    pub data: serde_json::Value,
    pub created_at: Millis,
}

/// An artifact about to be written; the store assigns its version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewArtifact {
    pub name: String,
    pub kind: String,
    /// Workspace path for code artifacts (`backend/app.py`), written out by `export`.
    pub path: Option<String>,
    pub content: String,
    pub metadata: serde_json::Value,
}

/// A stored artifact version. Versions of one name start at 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    pub run_id: RunId,
    pub name: String,
    pub version: i64,
    pub kind: String,
    pub path: Option<String>,
    pub task_id: String,
    pub attempt: u32,
    pub content: String,
    pub metadata: serde_json::Value,
    pub created_at: Millis,
}

/// A task that exhausted its attempts (or failed for good), kept for replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: i64,
    pub run_id: RunId,
    pub task_id: String,
    pub role: Role,
    pub attempts: u32,
    pub error: String,
    pub created_at: Millis,
    pub replayed_at: Option<Millis>,
}

/// Token usage and cost totals, reported per task and per run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    pub cost_usd: f64,
}

/// Free-form key/value metadata helper type.
pub type Metadata = BTreeMap<String, serde_json::Value>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_parses_from_fenced_json_with_prose() {
        let text = "Review done.\n```json\n{\"verdict\": \"FAIL\", \"findings\": [\"no input validation\", {\"file\": \"app.py\"}]}\n```\n";
        let v = Verdict::parse(text).unwrap();
        assert_eq!(v.verdict, VerdictKind::Fail);
        assert_eq!(
            v.findings,
            vec![
                "no input validation".to_string(),
                "{\"file\":\"app.py\"}".into()
            ]
        );
    }

    #[test]
    fn verdict_rejects_non_json_with_a_clear_error() {
        let err = Verdict::parse("Looks good to me!").unwrap_err().to_string();
        assert!(err.contains("no JSON object"), "{err}");
        let err = Verdict::parse("{\"verdict\": \"MAYBE\"}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("PASS or FAIL"), "{err}");
    }

    #[test]
    fn verdict_skips_braces_inside_strings() {
        let v = Verdict::parse("{\"verdict\":\"PASS\",\"findings\":[\"use {x}\"]}").unwrap();
        assert!(v.passed());
        assert_eq!(v.findings, vec!["use {x}"]);
    }

    #[test]
    fn budget_limits_must_be_above_zero() {
        assert!(RunSettings::check_budget(None, None).is_ok());
        assert!(RunSettings::check_budget(Some(0.5), Some(10)).is_ok());
        let e = RunSettings::check_budget(Some(0.0), None).unwrap_err();
        assert!(e.contains("USD budget") && e.contains("above 0"), "{e}");
        assert!(RunSettings::check_budget(Some(f64::NAN), None).is_err());
        let e = RunSettings::check_budget(None, Some(-3)).unwrap_err();
        assert!(e.contains("token budget") && e.contains("-3"), "{e}");
    }

    #[test]
    fn event_kind_names_match_serde() {
        let all: Vec<EventKind> = EVENT_KIND_NAMES
            .iter()
            .map(|n| n.parse::<EventKind>().unwrap())
            .collect();
        for (i, k) in all.iter().enumerate() {
            assert_eq!(*k as usize, i);
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::json!(EVENT_KIND_NAMES[i])
            );
        }
    }

    #[test]
    fn run_ids_reject_path_like_input() {
        assert!("../etc".parse::<RunId>().is_err());
        assert!(
            "0193a1b2-0000-7000-8000-000000000000"
                .parse::<RunId>()
                .is_ok()
        );
    }
}
