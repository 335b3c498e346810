//! The pure run state machine.
//!
//! [`apply`] takes a run's state, one [`Input`] and the current time, changes
//! the state in memory and returns the [`Action`]s the driver must perform
//! (append events, publish dispatches, record dead letters). The driver saves
//! the changed state (see [`StateDiff`]) and the events in one transaction,
//! then publishes. Nothing here does I/O or reads a clock.
//!
//! The machine is level-triggered: [`Input::Reconcile`] looks at the whole
//! state and moves everything that can move (retries, gate verdicts, ready
//! tasks, completion), so a driver that crashed between two steps simply
//! reconciles again. Workers change task rows directly (claim and fenced
//! completion); the machine sees the result on its next reconcile.

use serde::{Deserialize, Serialize};

use crate::{
    Error, EventKind, Gate, GateKind, GateStatus, Millis, NewEvent, Result, Role, Run, RunId,
    RunSettings, RunStatus, Task, TaskStatus, Workflow,
};

/// Everything the machine needs to know about one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub run: Run,
    pub tasks: Vec<Task>,
    pub gates: Vec<Gate>,
}

/// Something that happened to a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Input {
    /// Move everything that can move. Idempotent.
    Reconcile,
    /// A worker's lease on `task_id` for `attempt` ran out.
    LeaseExpired {
        task_id: String,
        attempt: u32,
        owner: Option<String>,
    },
    /// A worker that shuts down gives back `attempt` of `task_id`, which it
    /// holds under `owner`'s lease, before finishing it: the task is queued
    /// again at once and the attempt is not counted (neither against the
    /// task's retries nor against `MAX_ITERATIONS`).
    Released {
        task_id: String,
        attempt: u32,
        owner: String,
    },
    /// A person waives a gate.
    WaiveGate { gate: GateKind, reason: String },
    /// A person answers a run that waits in `NEEDS_INPUT`.
    Answer { text: String },
    /// A person cancels the run.
    Cancel { reason: String },
    /// Put a dead task back in play (dead letter queue replay).
    ReplayDead { task_id: String },
    /// A person raises the run's budget: tasks stopped by it get another attempt.
    RaiseBudget {
        usd: Option<f64>,
        tokens: Option<i64>,
    },
}

/// How the error of a task stopped by the run's budget begins.
pub const BUDGET_EXCEEDED: &str = "budget exceeded";

fn is_budget_error(task: &Task) -> bool {
    task.last_error
        .as_deref()
        .is_some_and(|e| e.starts_with(BUDGET_EXCEEDED))
}

/// What the driver must do after a step, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Append this event (in the same transaction as the state).
    Emit(NewEvent),
    /// Publish the task on its role's queue (after the transaction commits).
    Dispatch {
        run_id: RunId,
        task_id: String,
        role: Role,
        attempt: u32,
    },
    /// Record the task in the dead letter queue (same transaction).
    DeadLetter {
        task_id: String,
        role: Role,
        attempts: u32,
        error: String,
    },
}

/// Whether `settings` require gate `kind`, and the variable that says so.
fn gate_requirement(kind: GateKind, settings: &RunSettings) -> (bool, &'static str) {
    match kind {
        GateKind::CodeReview => (settings.require_code_review, "REQUIRE_CODE_REVIEW"),
        GateKind::SecurityReview => (settings.require_security_review, "REQUIRE_SECURITY_REVIEW"),
    }
}

/// Refuse a run of `workflow` under `settings` that requires a gate the
/// workflow has no review task for ([`Error::GateWithoutReview`]): such a
/// run would complete without the review the settings demand.
pub fn check_required_gates(workflow: &Workflow, settings: &RunSettings) -> Result<()> {
    for kind in GateKind::ALL {
        let (required, var) = gate_requirement(kind, settings);
        if required && !workflow.tasks.iter().any(|t| t.gate == Some(kind)) {
            return Err(Error::GateWithoutReview {
                workflow: workflow.name.clone(),
                gate: kind.as_str(),
                var,
            });
        }
    }
    Ok(())
}

impl RunState {
    /// Instantiate a workflow as a new run in `PENDING`. The returned state is
    /// what the driver stores with the `run_created` events.
    pub fn new_run(
        id: RunId,
        goal: &str,
        context: serde_json::Value,
        workflow: &Workflow,
        settings: RunSettings,
        provider: &str,
        now: Millis,
    ) -> (RunState, Vec<NewEvent>) {
        let run = Run {
            id: id.clone(),
            goal: goal.to_string(),
            context,
            workflow: workflow.name.clone(),
            status: RunStatus::Pending,
            status_reason: None,
            success_criteria: workflow.success_criteria.clone(),
            settings: settings.clone(),
            provider: provider.to_string(),
            iterations: 0,
            cost_usd: 0.0,
            tokens_in: 0,
            tokens_out: 0,
            version: 0,
            created_at: now,
            updated_at: now,
            finished_at: None,
        };
        let mut tasks: Vec<Task> = workflow
            .tasks
            .iter()
            .map(|spec| Task {
                run_id: id.clone(),
                id: spec.id.clone(),
                role: spec.role,
                title: if spec.title.is_empty() {
                    spec.id.clone()
                } else {
                    spec.title.clone()
                },
                instructions: spec.instructions.clone(),
                needs: spec.needs.clone(),
                expected: spec.produces.clone(),
                validation: spec.validation.clone(),
                gate: spec.gate,
                round: 0,
                findings: Vec::new(),
                status: TaskStatus::Pending,
                attempt: 0,
                max_attempts: spec.retries.saturating_add(1),
                timeout_ms: spec
                    .timeout_secs
                    .map(|s| (s as i64).saturating_mul(1000))
                    .unwrap_or(settings.task_timeout_ms),
                dedupe_key: spec
                    .dedupe_key
                    .clone()
                    .unwrap_or_else(|| format!("{id}/{}/0", spec.id)),
                not_before: None,
                lease_owner: None,
                lease_expires_at: None,
                last_error: None,
                retryable: true,
                result_summary: None,
                verdict: None,
                queued_at: None,
                started_at: None,
                finished_at: None,
                cost_usd: 0.0,
            })
            .collect();
        let mut events = vec![NewEvent::run(EventKind::RunCreated, format!("run created: {goal}")).with_data(
            serde_json::json!({"goal": goal, "workflow": workflow.name, "provider": provider, "tasks": tasks.len()}),
        )];
        let mut gates = Vec::new();
        for kind in GateKind::ALL {
            let review = tasks
                .iter()
                .find(|t| t.gate == Some(kind))
                .map(|t| t.id.clone());
            let Some(review) = review else { continue };
            let (required, var) = gate_requirement(kind, &settings);
            let (status, reason) = if required {
                (GateStatus::Pending, None)
            } else {
                (
                    GateStatus::Waived,
                    Some(format!("not required ({var}=false)")),
                )
            };
            if !required {
                if let Some(t) = tasks.iter_mut().find(|t| t.id == review) {
                    t.status = TaskStatus::Skipped;
                    t.result_summary = reason.clone();
                }
                events.push(NewEvent::task(
                    EventKind::TaskSkipped,
                    &review,
                    format!("{kind} gate not required"),
                ));
            }
            gates.push(Gate {
                run_id: id.clone(),
                kind,
                status,
                required,
                review_task: Some(review),
                rework_rounds: 0,
                reason,
                findings: Vec::new(),
                updated_at: now,
            });
        }
        for t in &tasks {
            events.push(
                NewEvent::task(EventKind::TaskCreated, &t.id, format!("{} task created ({})", t.role, t.title))
                    .with_data(serde_json::json!({"role": t.role, "needs": t.needs, "dedupe_key": t.dedupe_key})),
            );
        }
        (RunState { run, tasks, gates }, events)
    }

    pub fn task(&self, id: &str) -> Option<&Task> {
        self.tasks.iter().find(|t| t.id == id)
    }

    fn task_mut(&mut self, id: &str) -> Option<&mut Task> {
        self.tasks.iter_mut().find(|t| t.id == id)
    }

    pub fn gate(&self, kind: GateKind) -> Option<&Gate> {
        self.gates.iter().find(|g| g.kind == kind)
    }

    fn gate_mut(&mut self, kind: GateKind) -> Option<&mut Gate> {
        self.gates.iter_mut().find(|g| g.kind == kind)
    }

    /// Task ids this task depends on, directly or transitively, in plan order.
    ///
    /// Linear in the run's tasks: the worker asks for every attempt it
    /// runs, and a chain of `n` tasks made the search by scanning `n²`.
    pub fn upstream_of(&self, task_id: &str) -> Vec<String> {
        use std::collections::{HashMap, HashSet};
        let mut by_id: HashMap<&str, &Task> = HashMap::with_capacity(self.tasks.len());
        for t in &self.tasks {
            // The first of an id, as `task` finds it.
            by_id.entry(t.id.as_str()).or_insert(t);
        }
        let mut seen: HashSet<&str> = HashSet::new();
        let mut stack: Vec<&str> = by_id
            .get(task_id)
            .map(|t| t.needs.iter().map(String::as_str).collect())
            .unwrap_or_default();
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            if let Some(t) = by_id.get(id) {
                stack.extend(t.needs.iter().map(String::as_str));
            }
        }
        let mut ordered: Vec<String> = self
            .tasks
            .iter()
            .filter(|t| seen.contains(t.id.as_str()))
            .map(|t| t.id.clone())
            .collect();
        ordered.dedup();
        ordered
    }

    fn set_run_status(
        &mut self,
        to: RunStatus,
        reason: Option<String>,
        now: Millis,
        out: &mut Vec<Action>,
    ) {
        let from = self.run.status;
        if from == to {
            self.run.status_reason = reason;
            return;
        }
        debug_assert!(from.can_transition_to(to), "run {from} -> {to}");
        self.run.status = to;
        self.run.status_reason = reason.clone();
        self.run.updated_at = now;
        if to.is_terminal() {
            self.run.finished_at = Some(now);
        }
        let message = match &reason {
            Some(r) => format!("run {from} -> {to}: {r}"),
            None => format!("run {from} -> {to}"),
        };
        out.push(Action::Emit(
            NewEvent::run(EventKind::RunStatusChanged, message)
                .with_data(serde_json::json!({"from": from, "to": to, "reason": reason})),
        ));
    }
}

/// Apply one input to a run. On `Err` the state may be partly changed and
/// must be discarded by the caller (reload it). A run whose engine-owned
/// fields change gets `updated_at = now`, as the store records it.
pub fn apply(state: &mut RunState, input: Input, now: Millis) -> Result<Vec<Action>> {
    let before = state.run.clone();
    let out = apply_input(state, input, now)?;
    if run_changed(&before, &state.run) {
        state.run.updated_at = now;
    }
    Ok(out)
}

/// Whether the engine-owned fields of the run row differ (what a save writes).
fn run_changed(b: &Run, a: &Run) -> bool {
    a.status != b.status
        || a.status_reason != b.status_reason
        || a.iterations != b.iterations
        || a.settings != b.settings
        || a.finished_at != b.finished_at
}

/// `task_id` if it is `RUNNING` at `attempt`; `None` if it moved on.
fn running_attempt<'a>(
    state: &'a mut RunState,
    task_id: &str,
    attempt: u32,
) -> Result<Option<&'a mut Task>> {
    let task = state
        .task_mut(task_id)
        .ok_or_else(|| Error::UnknownTask(task_id.to_string()))?;
    Ok((task.status == TaskStatus::Running && task.attempt == attempt).then_some(task))
}

fn apply_input(state: &mut RunState, input: Input, now: Millis) -> Result<Vec<Action>> {
    let mut out = Vec::new();
    match input {
        Input::Reconcile => {}
        Input::LeaseExpired {
            task_id,
            attempt,
            owner,
        } => {
            let Some(task) = running_attempt(state, &task_id, attempt)? else {
                // Stale: the task moved on (completed, or already reclaimed).
                return Ok(out);
            };
            task.status = task.status.transition(TaskStatus::Failed)?;
            task.retryable = true;
            let who = owner
                .or_else(|| task.lease_owner.clone())
                .unwrap_or_else(|| "unknown worker".into());
            task.last_error = Some(format!("lease expired: worker {who} stopped heartbeating"));
            task.lease_owner = None;
            task.lease_expires_at = None;
            task.finished_at = Some(now);
            out.push(Action::Emit(
                NewEvent::task(
                    EventKind::LeaseExpired,
                    &task_id,
                    format!("lease of attempt {attempt} expired ({who})"),
                )
                .with_data(serde_json::json!({"attempt": attempt, "owner": who})),
            ));
        }
        Input::Released {
            task_id,
            attempt,
            owner,
        } => {
            let Some(task) = running_attempt(state, &task_id, attempt)?
                .filter(|t| t.lease_owner.as_deref() == Some(owner.as_str()))
            else {
                // Stale: the lease was lost and the task moved on without
                // this worker; what it gives back is not its to give.
                return Ok(out);
            };
            task.status = task.status.transition(TaskStatus::Ready)?;
            task.max_attempts = task.max_attempts.saturating_add(1);
            task.not_before = None;
            task.lease_owner = None;
            task.lease_expires_at = None;
            state.run.iterations = state.run.iterations.saturating_sub(1);
            out.push(Action::Emit(
                NewEvent::task(
                    EventKind::TaskReleased,
                    &task_id,
                    format!(
                        "attempt {attempt} given back by {owner}, which is shutting down; queued again, not counted"
                    ),
                )
                .with_data(serde_json::json!({"attempt": attempt, "owner": owner})),
            ));
        }
        Input::WaiveGate { gate, reason } => {
            if state.run.status.is_terminal() {
                return Err(Error::Conflict(format!(
                    "run is {}; gates of a finished run cannot be waived",
                    state.run.status
                )));
            }
            let g = state.gate_mut(gate).ok_or_else(|| {
                Error::Conflict(format!("this run's workflow has no {gate} gate"))
            })?;
            if g.status.is_open() {
                return Err(Error::Conflict(format!(
                    "the {gate} gate is already {}",
                    g.status
                )));
            }
            g.status = g.status.transition(GateStatus::Waived)?;
            g.reason = Some(reason.clone());
            g.updated_at = now;
            let review = g.review_task.clone();
            if let Some(t) = review.and_then(|id| state.task_mut(&id))
                && matches!(t.status, TaskStatus::Pending | TaskStatus::Ready)
            {
                t.status = TaskStatus::Skipped;
                t.result_summary = Some(format!("skipped: {gate} gate waived"));
                let tid = t.id.clone();
                out.push(Action::Emit(NewEvent::task(
                    EventKind::TaskSkipped,
                    &tid,
                    "gate waived before review",
                )));
            }
            out.push(Action::Emit(
                NewEvent::run(
                    EventKind::GateWaived,
                    format!("{gate} gate waived: {reason}"),
                )
                .with_data(serde_json::json!({"gate": gate, "reason": reason})),
            ));
            if state.run.status == RunStatus::NeedsInput {
                state.set_run_status(RunStatus::Running, None, now, &mut out);
            }
        }
        Input::Answer { text } => {
            if state.run.status != RunStatus::NeedsInput {
                return Err(Error::Conflict(format!(
                    "run is {}, not waiting for input (NEEDS_INPUT)",
                    state.run.status
                )));
            }
            out.push(Action::Emit(
                NewEvent::run(EventKind::HumanInput, format!("answer: {text}")).with_data(
                    serde_json::json!({"text": text, "blocked_on": state.run.status_reason}),
                ),
            ));
            answer(state, &text, now, &mut out);
            state.set_run_status(RunStatus::Running, None, now, &mut out);
        }
        Input::Cancel { reason } => {
            if state.run.status.is_terminal() {
                return Err(Error::Conflict(format!(
                    "run is already {}",
                    state.run.status
                )));
            }
            for t in state
                .tasks
                .iter_mut()
                .filter(|t| !t.status.is_terminal() || t.status == TaskStatus::Dead)
            {
                t.status = TaskStatus::Cancelled;
                t.lease_owner = None;
                t.lease_expires_at = None;
                t.finished_at = Some(now);
                out.push(Action::Emit(NewEvent::task(
                    EventKind::TaskCancelled,
                    &t.id,
                    "cancelled with the run",
                )));
            }
            state.set_run_status(RunStatus::Cancelled, Some(reason), now, &mut out);
            return Ok(out);
        }
        Input::ReplayDead { task_id } => {
            if state.run.status.is_terminal() {
                return Err(Error::Conflict(format!(
                    "run is {}; its tasks cannot be replayed",
                    state.run.status
                )));
            }
            let task = state
                .task_mut(&task_id)
                .ok_or_else(|| Error::UnknownTask(task_id.clone()))?;
            if task.status != TaskStatus::Dead {
                return Err(Error::Conflict(format!(
                    "task {task_id} is {}, not DEAD",
                    task.status
                )));
            }
            replay_dead(task, None, now, &mut out);
            if state.run.status == RunStatus::NeedsInput {
                state.set_run_status(RunStatus::Running, None, now, &mut out);
            }
        }
        Input::RaiseBudget { usd, tokens } => {
            if state.run.status.is_terminal() {
                return Err(Error::Conflict(format!(
                    "run is {}; its budget cannot be raised",
                    state.run.status
                )));
            }
            if let Some(u) = usd {
                state.run.settings.budget_usd = Some(u);
            }
            if let Some(t) = tokens {
                state.run.settings.budget_tokens = Some(t);
            }
            let describe = |u: Option<f64>, t: Option<i64>| {
                let mut parts = Vec::new();
                if let Some(u) = u {
                    parts.push(format!("${u}"));
                }
                if let Some(t) = t {
                    parts.push(format!("{t} tokens"));
                }
                if parts.is_empty() {
                    "unchanged".to_string()
                } else {
                    parts.join(", ")
                }
            };
            let settings = &state.run.settings;
            out.push(Action::Emit(
                NewEvent::run(
                    EventKind::HumanInput,
                    format!(
                        "budget raised to {}",
                        describe(settings.budget_usd, settings.budget_tokens)
                    ),
                )
                .with_data(serde_json::json!({
                    "budget_usd": settings.budget_usd,
                    "budget_tokens": settings.budget_tokens,
                })),
            ));
            for t in state
                .tasks
                .iter_mut()
                .filter(|t| t.status == TaskStatus::Dead && is_budget_error(t))
            {
                replay_dead(t, None, now, &mut out);
            }
            if state.run.status == RunStatus::NeedsInput {
                state.set_run_status(RunStatus::Running, None, now, &mut out);
            }
        }
    }
    reconcile(state, now, &mut out);
    Ok(out)
}

fn replay_dead(task: &mut Task, note: Option<&str>, now: Millis, out: &mut Vec<Action>) {
    task.status = TaskStatus::Ready;
    task.max_attempts = task.attempt + 1;
    task.not_before = None;
    task.retryable = true;
    task.updated_note(note);
    out.push(Action::Emit(
        NewEvent::task(
            EventKind::DlqReplayed,
            &task.id,
            format!(
                "replayed from the dead letter queue (attempt {} next)",
                task.attempt + 1
            ),
        )
        .with_data(serde_json::json!({"attempt": task.attempt + 1, "at": now})),
    ));
}

impl Task {
    fn updated_note(&mut self, note: Option<&str>) {
        if let Some(n) = note {
            self.findings.push(format!("Guidance from a person: {n}"));
        }
    }
}

/// A person answered: unblock whatever the run was waiting for.
fn answer(state: &mut RunState, text: &str, now: Millis, out: &mut Vec<Action>) {
    // 1. Dead tasks get one more attempt, with the answer as guidance.
    let mut unblocked = false;
    for t in state
        .tasks
        .iter_mut()
        .filter(|t| t.status == TaskStatus::Dead)
    {
        replay_dead(t, Some(text), now, out);
        unblocked = true;
    }
    // 2. A gate that ran out of rework rounds gets one more, with the answer.
    let failed: Vec<GateKind> = state
        .gates
        .iter()
        .filter(|g| g.status == GateStatus::Failed)
        .map(|g| g.kind)
        .collect();
    for kind in failed {
        let mut findings = state
            .gate(kind)
            .map(|g| g.findings.clone())
            .unwrap_or_default();
        findings.push(format!("Guidance from a person: {text}"));
        open_rework(state, kind, findings, now, out);
        unblocked = true;
    }
    // 3. The iteration cap: allow as many again.
    if !unblocked && state.run.iterations >= state.run.settings.max_iterations {
        state.run.settings.max_iterations =
            state.run.settings.max_iterations.saturating_mul(2).max(1);
    }
}

/// Backoff before retry number `attempt` (1-based): base * 2^(attempt-1), capped.
pub fn backoff_ms(settings: &RunSettings, attempt: u32) -> i64 {
    let exp = attempt.saturating_sub(1).min(20);
    settings
        .retry_backoff_ms
        .saturating_mul(1i64 << exp)
        .min(settings.retry_backoff_max_ms)
}

const IMPLEMENTERS: [Role; 3] = [
    Role::BackendEngineer,
    Role::FrontendEngineer,
    Role::DatabaseEngineer,
];

/// Open a rework round for `kind`: fix tasks for the implementers carrying the
/// findings, then a new review that needs them.
fn open_rework(
    state: &mut RunState,
    kind: GateKind,
    findings: Vec<String>,
    now: Millis,
    out: &mut Vec<Action>,
) {
    let Some(gate) = state.gate(kind).cloned() else {
        return;
    };
    let round = gate.rework_rounds + 1;
    let Some(review) = gate
        .review_task
        .as_deref()
        .and_then(|id| state.task(id))
        .cloned()
    else {
        return;
    };
    // The tasks to fix: implementer tasks of the plan (round 0) upstream of the review.
    let upstream = state.upstream_of(&review.id);
    let mut targets: Vec<Task> = state
        .tasks
        .iter()
        .filter(|t| {
            t.round == 0
                && upstream.contains(&t.id)
                && IMPLEMENTERS.contains(&t.role)
                && t.gate.is_none()
        })
        .cloned()
        .collect();
    // Prefer backend and frontend; the database engineer only when nothing else implements.
    if targets.iter().any(|t| t.role != Role::DatabaseEngineer) {
        targets.retain(|t| t.role != Role::DatabaseEngineer);
    }
    if targets.is_empty() {
        targets = review
            .needs
            .iter()
            .filter_map(|id| state.task(id))
            .cloned()
            .collect();
    }
    let run_id = state.run.id.clone();
    let mut fix_ids = Vec::new();
    for base in targets {
        let id = format!("fix_{}_{}_r{round}", base.id, kind.as_str());
        if state.task(&id).is_some() {
            continue; // idempotent: the dedupe key already exists
        }
        let task = Task {
            id: id.clone(),
            title: format!(
                "Fix {} findings in {} (round {round})",
                kind.as_str().replace('_', " "),
                base.title
            ),
            instructions: format!(
                "{}\n\nRework: the {} gate failed. Address every finding below, then write the complete, corrected versions of your artifacts.",
                base.instructions,
                kind.as_str().replace('_', " ")
            ),
            needs: vec![review.id.clone()],
            round,
            findings: findings.clone(),
            status: TaskStatus::Pending,
            attempt: 0,
            dedupe_key: format!("{run_id}/{id}/{round}"),
            not_before: None,
            lease_owner: None,
            lease_expires_at: None,
            last_error: None,
            retryable: true,
            result_summary: None,
            verdict: None,
            queued_at: None,
            started_at: None,
            finished_at: None,
            cost_usd: 0.0,
            ..base
        };
        out.push(Action::Emit(
            NewEvent::task(
                EventKind::TaskCreated,
                &id,
                format!("{} rework task created", task.role),
            )
            .with_data(
                serde_json::json!({"role": task.role, "round": round, "findings": findings}),
            ),
        ));
        fix_ids.push(id);
        state.tasks.push(task);
    }
    let suffix = format!("_r{}", review.round);
    let root_id = if review.round > 0 {
        review.id.strip_suffix(&suffix).unwrap_or(&review.id)
    } else {
        &review.id
    };
    let review_id = format!("{root_id}_r{round}");
    if state.task(&review_id).is_none() {
        let task = Task {
            id: review_id.clone(),
            title: format!("{} (round {round})", review.title),
            needs: fix_ids.clone(),
            round,
            findings: findings.clone(),
            status: TaskStatus::Pending,
            attempt: 0,
            dedupe_key: format!("{run_id}/{review_id}/{round}"),
            not_before: None,
            lease_owner: None,
            lease_expires_at: None,
            last_error: None,
            retryable: true,
            result_summary: None,
            verdict: None,
            queued_at: None,
            started_at: None,
            finished_at: None,
            cost_usd: 0.0,
            ..review
        };
        out.push(Action::Emit(
            NewEvent::task(
                EventKind::TaskCreated,
                &review_id,
                format!("{} re-review task created", task.role),
            )
            .with_data(serde_json::json!({"role": task.role, "round": round, "needs": fix_ids})),
        ));
        state.tasks.push(task);
    }
    let g = state.gate_mut(kind).expect("gate exists");
    g.rework_rounds = round;
    g.review_task = Some(review_id.clone());
    g.status = GateStatus::Pending;
    g.updated_at = now;
    out.push(Action::Emit(
        NewEvent::run(EventKind::ReworkOpened, format!("{kind} rework round {round}: {} fix task(s), then {review_id}", fix_ids.len()))
            .with_data(serde_json::json!({"gate": kind, "round": round, "fix_tasks": fix_ids, "review_task": review_id, "findings": findings})),
    ));
}

/// Move everything that can move.
fn reconcile(state: &mut RunState, now: Millis, out: &mut Vec<Action>) {
    if state.run.status.is_terminal() {
        return;
    }
    if state.run.status == RunStatus::Pending || state.run.status == RunStatus::Planning {
        state.set_run_status(RunStatus::Running, None, now, out);
    }

    // 1. Failed attempts: schedule a retry or send to the dead letter queue.
    let settings = state.run.settings.clone();
    for t in state
        .tasks
        .iter_mut()
        .filter(|t| t.status == TaskStatus::Failed)
    {
        let error = t
            .last_error
            .clone()
            .unwrap_or_else(|| "unknown error".into());
        if t.retryable && t.attempt < t.max_attempts {
            let delay = backoff_ms(&settings, t.attempt);
            t.status = TaskStatus::Ready;
            t.not_before = Some(now + delay);
            out.push(Action::Emit(
                NewEvent::task(
                    EventKind::TaskRetryScheduled,
                    &t.id,
                    format!(
                        "attempt {} failed ({error}); retry {} of {} in {delay} ms",
                        t.attempt,
                        t.attempt + 1,
                        t.max_attempts
                    ),
                )
                .with_data(
                    serde_json::json!({"attempt": t.attempt, "delay_ms": delay, "error": error}),
                ),
            ));
        } else {
            t.status = TaskStatus::Dead;
            let why = if t.retryable {
                format!("all {} attempts failed", t.max_attempts)
            } else {
                "failed permanently".to_string()
            };
            out.push(Action::Emit(
                NewEvent::task(
                    EventKind::TaskDead,
                    &t.id,
                    format!("{why}; moved to the dead letter queue: {error}"),
                )
                .with_data(serde_json::json!({"attempts": t.attempt, "error": error})),
            ));
            out.push(Action::DeadLetter {
                task_id: t.id.clone(),
                role: t.role,
                attempts: t.attempt,
                error,
            });
        }
    }

    if state.run.status == RunStatus::NeedsInput {
        return;
    }

    // 2. Gate verdicts, in gate order.
    let kinds: Vec<GateKind> = state.gates.iter().map(|g| g.kind).collect();
    for kind in kinds {
        let gate = state.gate(kind).expect("gate exists").clone();
        if gate.status != GateStatus::Pending {
            continue;
        }
        let Some(review) = gate
            .review_task
            .as_deref()
            .and_then(|id| state.task(id))
            .cloned()
        else {
            continue;
        };
        if review.status != TaskStatus::Succeeded {
            continue;
        }
        let verdict = review.verdict.clone();
        let passed = verdict.as_ref().is_some_and(|v| v.passed());
        let findings = verdict
            .map(|v| v.findings)
            .unwrap_or_else(|| vec!["the review produced no verdict".into()]);
        let g = state.gate_mut(kind).expect("gate exists");
        g.updated_at = now;
        g.findings = findings.clone();
        if passed {
            g.status = GateStatus::Passed;
            g.reason = Some(format!("{} passed", review.id));
            out.push(Action::Emit(
                NewEvent::run(EventKind::GatePassed, format!("{kind} gate PASSED ({})", review.id))
                    .with_data(serde_json::json!({"gate": kind, "review_task": review.id, "findings": findings})),
            ));
            continue;
        }
        g.status = GateStatus::Failed;
        g.reason = Some(format!(
            "{} failed with {} finding(s)",
            review.id,
            findings.len()
        ));
        let rounds = g.rework_rounds;
        out.push(Action::Emit(
            NewEvent::run(EventKind::GateFailed, format!("{kind} gate FAILED ({}): {} finding(s)", review.id, findings.len()))
                .with_data(serde_json::json!({"gate": kind, "review_task": review.id, "findings": findings, "round": rounds})),
        ));
        if rounds < settings.max_rework {
            open_rework(state, kind, findings, now, out);
        } else {
            let reason = format!(
                "{kind} gate failed after {rounds} rework round(s) (limit {}); waive it (orchestrator gate waive {} {kind} --reason ...), answer with guidance for one more round, or cancel",
                settings.max_rework, state.run.id
            );
            out.push(Action::Emit(
                NewEvent::run(EventKind::Escalated, reason.clone())
                    .with_data(serde_json::json!({"gate": kind, "findings": findings})),
            ));
            state.set_run_status(RunStatus::NeedsInput, Some(reason), now, out);
            return;
        }
    }

    // 3. A dead task blocks the run until a person replays, answers or cancels.
    let dead: Vec<String> = state
        .tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Dead)
        .map(|t| t.id.clone())
        .collect();
    if !dead.is_empty() {
        let over_budget = state
            .tasks
            .iter()
            .any(|t| t.status == TaskStatus::Dead && is_budget_error(t));
        let reason = if over_budget {
            format!(
                "{BUDGET_EXCEEDED}: raise it with `orchestrator budget {} --usd N` (or --tokens N)",
                state.run.id
            )
        } else {
            format!(
                "task(s) {} failed every attempt and are in the dead letter queue; replay one (`orchestrator dlq list --run {run}` shows its id, then `orchestrator dlq replay ID`), answer with guidance (`orchestrator answer {run} TEXT`), or cancel (`orchestrator cancel {run}`)",
                dead.join(", "),
                run = state.run.id
            )
        };
        out.push(Action::Emit(
            NewEvent::run(EventKind::Escalated, reason.clone())
                .with_data(serde_json::json!({"dead_tasks": dead})),
        ));
        state.set_run_status(RunStatus::NeedsInput, Some(reason), now, out);
        return;
    }

    // 4. Promote and dispatch.
    let open_gates: Vec<(GateKind, bool)> = state
        .gates
        .iter()
        .map(|g| (g.kind, g.status.is_open()))
        .collect();
    let done = dependencies_met(&state.tasks);
    let deps_ok = |t: &Task| {
        t.needs
            .iter()
            .all(|n| done.iter().any(|(id, ok)| id == n && *ok))
    };
    let gates_ok = |t: &Task| match t.gate {
        None => true,
        Some(kind) => open_gates
            .iter()
            .all(|(k, open)| k.order() >= kind.order() || *open),
    };
    let run_id = state.run.id.clone();
    let mut blocked_by_cap = false;
    for i in 0..state.tasks.len() {
        let t = &state.tasks[i];
        if t.status == TaskStatus::Pending && deps_ok(t) && gates_ok(t) {
            state.tasks[i].status = TaskStatus::Ready;
        }
        let t = &state.tasks[i];
        if t.status != TaskStatus::Ready || t.not_before.is_some_and(|nb| nb > now) || !gates_ok(t)
        {
            continue;
        }
        if state.run.iterations >= state.run.settings.max_iterations {
            blocked_by_cap = true;
            break;
        }
        state.run.iterations += 1;
        let t = &mut state.tasks[i];
        t.status = TaskStatus::Queued;
        t.attempt += 1;
        t.not_before = None;
        t.queued_at = Some(now);
        out.push(Action::Emit(
            NewEvent::task(
                EventKind::TaskQueued,
                &t.id,
                format!("queued on {} (attempt {})", t.role.queue(), t.attempt),
            )
            .with_data(
                serde_json::json!({"queue": t.role.queue(), "attempt": t.attempt, "role": t.role}),
            ),
        ));
        out.push(Action::Dispatch {
            run_id: run_id.clone(),
            task_id: t.id.clone(),
            role: t.role,
            attempt: t.attempt,
        });
    }
    if blocked_by_cap {
        let reason = format!(
            "MAX_ITERATIONS reached: {} task attempts dispatched; answer to allow as many again, or cancel",
            state.run.iterations
        );
        out.push(Action::Emit(NewEvent::run(
            EventKind::Escalated,
            reason.clone(),
        )));
        state.set_run_status(RunStatus::NeedsInput, Some(reason), now, out);
        return;
    }

    // 5. Completion: every task done and every gate open.
    let all_done = state.tasks.iter().all(|t| t.status.satisfies_dependency());
    let gates_open = state.gates.iter().all(|g| g.status.is_open());
    if all_done && gates_open {
        let summary = state
            .gates
            .iter()
            .map(|g| format!("{} {}", g.kind, g.status))
            .collect::<Vec<_>>()
            .join(", ");
        let reason = if summary.is_empty() {
            "all tasks succeeded".to_string()
        } else {
            format!("all tasks succeeded; {summary}")
        };
        state.set_run_status(RunStatus::Completed, Some(reason), now, out);
    }
}

/// `(task id, whether dependents may start)` for every task. A SUCCEEDED task
/// counts at once; a SKIPPED task (a review whose gate is waived or not
/// required) only once everything it needs counts, transitively, so that
/// skipping a review never lets the tasks after it overtake the work the
/// review was waiting for.
fn dependencies_met(tasks: &[Task]) -> Vec<(String, bool)> {
    let mut met: Vec<bool> = tasks
        .iter()
        .map(|t| t.status.satisfies_dependency() && t.status != TaskStatus::Skipped)
        .collect();
    let mut changed = true;
    while changed {
        changed = false;
        for (i, t) in tasks.iter().enumerate() {
            if met[i] || t.status != TaskStatus::Skipped {
                continue;
            }
            let needs_met = t.needs.iter().all(|n| {
                tasks
                    .iter()
                    .position(|u| &u.id == n)
                    .is_some_and(|j| met[j])
            });
            if needs_met {
                met[i] = true;
                changed = true;
            }
        }
    }
    tasks.iter().map(|t| t.id.clone()).zip(met).collect()
}

/// How a changed task must be written: the row is updated only if it still
/// has `expected_status` and `expected_attempt` (compare-and-set against
/// concurrent workers).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskChange {
    pub task: Task,
    pub expected_status: TaskStatus,
    pub expected_attempt: u32,
}

/// What changed between two versions of a run's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateDiff {
    /// The run row's engine-owned fields changed.
    pub run_changed: bool,
    pub new_tasks: Vec<Task>,
    pub changed_tasks: Vec<TaskChange>,
    pub changed_gates: Vec<Gate>,
}

impl StateDiff {
    /// Compare `after` with `before`.
    pub fn between(before: &RunState, after: &RunState) -> StateDiff {
        let mut diff = StateDiff {
            run_changed: run_changed(&before.run, &after.run),
            ..Default::default()
        };
        for t in &after.tasks {
            match before.task(&t.id) {
                None => diff.new_tasks.push(t.clone()),
                Some(old) if old != t => diff.changed_tasks.push(TaskChange {
                    task: t.clone(),
                    expected_status: old.status,
                    expected_attempt: old.attempt,
                }),
                Some(_) => {}
            }
        }
        for g in &after.gates {
            if before.gate(g.kind) != Some(g) {
                diff.changed_gates.push(g.clone());
            }
        }
        diff
    }

    pub fn is_empty(&self) -> bool {
        !self.run_changed
            && self.new_tasks.is_empty()
            && self.changed_tasks.is_empty()
            && self.changed_gates.is_empty()
    }
}

#[cfg(test)]
mod tests;
