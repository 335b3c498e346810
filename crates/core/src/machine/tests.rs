//! Tests of the state machine: they assert on actions and state, with no I/O.
//!
//! Workers change task rows directly (claim: QUEUED -> RUNNING, completion:
//! RUNNING -> SUCCEEDED or FAILED); the helpers below do the same to the
//! in-memory state, through the checked transitions, between two steps.

use serde_json::json;

use super::*;
use crate::{Verdict, VerdictKind};

const T0: Millis = 1_700_000_000_000;

fn settings() -> RunSettings {
    RunSettings::default()
}

fn new_state(settings: RunSettings) -> RunState {
    new_state_with_events(settings).0
}

fn new_state_with_events(settings: RunSettings) -> (RunState, Vec<NewEvent>) {
    let wf = Workflow::builtin("sdlc").unwrap();
    RunState::new_run(
        RunId("run-1".into()),
        "build a todo app",
        json!({"team": "tests"}),
        &wf,
        settings,
        "scripted",
        T0,
    )
}

fn step(state: &mut RunState, now: Millis) -> Vec<Action> {
    apply(state, Input::Reconcile, now).unwrap()
}

/// `(task, role, attempt)` of every dispatch, in order.
fn dispatches(actions: &[Action]) -> Vec<(String, Role, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Dispatch {
                task_id,
                role,
                attempt,
                run_id,
            } => {
                assert_eq!(run_id.as_str(), "run-1");
                Some((task_id.clone(), *role, *attempt))
            }
            _ => None,
        })
        .collect()
}

fn dispatched(actions: &[Action]) -> Vec<String> {
    dispatches(actions).into_iter().map(|(t, _, _)| t).collect()
}

fn events(actions: &[Action]) -> Vec<&NewEvent> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Emit(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn kinds(actions: &[Action]) -> Vec<EventKind> {
    events(actions).iter().map(|e| e.kind).collect()
}

fn event(actions: &[Action], kind: EventKind) -> &NewEvent {
    events(actions)
        .into_iter()
        .find(|e| e.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} event in {actions:#?}"))
}

fn status(state: &RunState, id: &str) -> TaskStatus {
    state
        .task(id)
        .unwrap_or_else(|| panic!("no task {id}"))
        .status
}

fn worker_task<'a>(state: &'a mut RunState, id: &str) -> &'a mut Task {
    state.task_mut(id).unwrap_or_else(|| panic!("no task {id}"))
}

/// A worker claims the task (QUEUED -> RUNNING).
fn claim(state: &mut RunState, id: &str, now: Millis) {
    let t = worker_task(state, id);
    t.status = t.status.transition(TaskStatus::Running).unwrap();
    t.lease_owner = Some("worker-1".into());
    t.lease_expires_at = Some(now + 30_000);
    t.started_at = Some(now);
}

/// A worker claims and completes the task (-> SUCCEEDED), with a verdict
/// for review tasks.
fn complete(state: &mut RunState, id: &str, verdict: Option<Verdict>, now: Millis) {
    if state.task(id).unwrap().status == TaskStatus::Queued {
        claim(state, id, now);
    }
    let t = worker_task(state, id);
    t.status = t.status.transition(TaskStatus::Succeeded).unwrap();
    t.verdict = verdict;
    t.lease_owner = None;
    t.lease_expires_at = None;
    t.finished_at = Some(now);
    t.result_summary = Some(format!("{id} done"));
}

fn succeed(state: &mut RunState, id: &str, now: Millis) {
    complete(state, id, None, now);
}

fn pass() -> Option<Verdict> {
    Some(Verdict {
        verdict: VerdictKind::Pass,
        findings: vec![],
    })
}

fn fail_verdict(findings: &[&str]) -> Option<Verdict> {
    Some(Verdict {
        verdict: VerdictKind::Fail,
        findings: findings.iter().map(|f| f.to_string()).collect(),
    })
}

/// A worker claims the task and its attempt fails.
fn fail(state: &mut RunState, id: &str, retryable: bool, error: &str, now: Millis) {
    claim(state, id, now);
    let t = worker_task(state, id);
    t.status = t.status.transition(TaskStatus::Failed).unwrap();
    t.retryable = retryable;
    t.last_error = Some(error.to_string());
    t.lease_owner = None;
    t.lease_expires_at = None;
    t.finished_at = Some(now);
}

/// Complete every dispatched task (reviews PASS) and step, until nothing is
/// dispatched. Returns the dispatched tasks of each step.
fn drive(state: &mut RunState, mut pending: Vec<String>, now: Millis) -> Vec<Vec<String>> {
    let mut batches = Vec::new();
    while !pending.is_empty() {
        for id in &pending {
            let verdict = state.task(id).unwrap().gate.and(pass());
            complete(state, id, verdict, now);
        }
        let out = step(state, now);
        pending = dispatched(&out);
        if !pending.is_empty() {
            batches.push(pending.clone());
        }
    }
    batches
}

/// Drive a fresh sdlc run until the code review is dispatched.
fn run_to_code_review(state: &mut RunState) {
    let first = dispatched(&step(state, T0));
    drive_until(state, first, "code_review");
}

/// Complete dispatched tasks until `target` is dispatched (it is left QUEUED).
fn drive_until(state: &mut RunState, mut pending: Vec<String>, target: &str) {
    for _ in 0..50 {
        if pending.iter().any(|t| t == target) {
            return;
        }
        for id in &pending {
            complete(state, id, None, T0);
        }
        pending = dispatched(&step(state, T0));
    }
    panic!("{target} was never dispatched");
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

// -- starting a run -----------------------------------------------------------

#[test]
fn new_run_creates_pending_tasks_and_gates() {
    let (state, events) = new_state_with_events(settings());
    assert_eq!(state.run.status, RunStatus::Pending);
    assert_eq!(state.run.workflow, "sdlc");
    assert_eq!(state.run.iterations, 0);
    assert_eq!(state.tasks.len(), 9);
    assert!(state.tasks.iter().all(|t| t.status == TaskStatus::Pending));
    assert!(state.tasks.iter().all(|t| t.attempt == 0));
    let backend = state.task("backend").unwrap();
    assert_eq!(backend.max_attempts, 3);
    assert_eq!(backend.timeout_ms, 600_000);
    assert_eq!(backend.dedupe_key, "run-1/backend/0");
    assert_eq!(state.task("plan").unwrap().timeout_ms, 300_000);
    assert_eq!(
        state.gates.iter().map(|g| g.kind).collect::<Vec<_>>(),
        GateKind::ALL
    );
    assert!(state.gates.iter().all(|g| g.status == GateStatus::Pending));
    assert_eq!(
        state
            .gate(GateKind::SecurityReview)
            .unwrap()
            .review_task
            .as_deref(),
        Some("security_review")
    );
    assert_eq!(events[0].kind, EventKind::RunCreated);
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == EventKind::TaskCreated)
            .count(),
        9
    );
}

#[test]
fn first_reconcile_starts_the_run_and_dispatches_only_requirements() {
    let mut state = new_state(settings());
    let out = step(&mut state, T0);
    assert_eq!(state.run.status, RunStatus::Running);
    assert_eq!(
        dispatches(&out),
        [("requirements".to_string(), Role::BusinessAnalyst, 1)]
    );
    assert_eq!(
        kinds(&out),
        [EventKind::RunStatusChanged, EventKind::TaskQueued]
    );
    let queued = event(&out, EventKind::TaskQueued);
    assert_eq!(queued.task_id.as_deref(), Some("requirements"));
    assert_eq!(queued.data["queue"], "q_ba");
    // The event is appended before the dispatch is published.
    assert!(matches!(out.last(), Some(Action::Dispatch { .. })));
    let t = state.task("requirements").unwrap();
    assert_eq!(
        (t.status, t.attempt, t.queued_at),
        (TaskStatus::Queued, 1, Some(T0))
    );
    assert_eq!(state.run.iterations, 1);
    assert_eq!(status(&state, "plan"), TaskStatus::Pending);
}

#[test]
fn a_step_that_changes_the_run_row_stamps_updated_at_as_the_store_does() {
    let mut state = new_state(settings());
    step(&mut state, T0 + 5);
    assert_eq!(state.run.updated_at, T0 + 5, "RUNNING, iterations 1");
    succeed(&mut state, "requirements", T0 + 6);
    step(&mut state, T0 + 7);
    assert_eq!(
        (state.run.status, state.run.iterations, state.run.updated_at),
        (RunStatus::Running, 2, T0 + 7),
        "only the iteration count changed: the store stamps that save too"
    );
    step(&mut state, T0 + 8);
    assert_eq!(state.run.updated_at, T0 + 7, "a step that changes nothing");
}

#[test]
fn reconcile_is_idempotent_while_work_is_in_flight() {
    let mut state = new_state(settings());
    step(&mut state, T0);
    let before = state.clone();
    assert!(step(&mut state, T0 + 1).is_empty());
    claim(&mut state, "requirements", T0 + 2);
    let claimed = state.clone();
    assert!(step(&mut state, T0 + 3).is_empty());
    assert_eq!(state, claimed);
    assert_eq!(before.run, state.run);
}

// -- the whole lifecycle ------------------------------------------------------

#[test]
fn sdlc_with_passing_reviews_runs_in_lifecycle_order_and_completes() {
    let mut state = new_state(settings());
    let first = step(&mut state, T0);
    let mut batches = vec![dispatched(&first)];
    batches.extend(drive(&mut state, dispatched(&first), T0 + 10));
    let expected: Vec<Vec<String>> = [
        &["requirements"][..],
        &["plan"],
        &["ux_design"],
        &["architecture"],
        &["database"],
        &["backend", "frontend"],
        &["code_review"],
        &["security_review"],
    ]
    .iter()
    .map(|b| strings(b))
    .collect();
    assert_eq!(batches, expected);
    assert_eq!(state.run.status, RunStatus::Completed);
    assert_eq!(
        state.run.status_reason.as_deref(),
        Some("all tasks succeeded; code_review PASSED, security_review PASSED")
    );
    assert_eq!(state.run.finished_at, Some(T0 + 10));
    assert_eq!(state.run.iterations, 9);
    assert!(state.gates.iter().all(|g| g.status == GateStatus::Passed));
    // Completed: reconcile is a no-op.
    let done = state.clone();
    assert!(step(&mut state, T0 + 20).is_empty());
    assert_eq!(state, done);
    assert!(StateDiff::between(&done, &state).is_empty());
}

#[test]
fn dispatches_carry_the_role_of_each_task() {
    let mut state = new_state(settings());
    let mut roles = Vec::new();
    let mut pending = dispatched(&step(&mut state, T0));
    while !pending.is_empty() {
        for id in &pending {
            roles.push(state.task(id).unwrap().role);
            let verdict = state.task(id).unwrap().gate.and(pass());
            complete(&mut state, id, verdict, T0);
        }
        let out = step(&mut state, T0);
        for (id, role, attempt) in dispatches(&out) {
            assert_eq!(state.task(&id).unwrap().role, role);
            assert_eq!(attempt, 1);
        }
        pending = dispatched(&out);
    }
    assert_eq!(roles, Role::SPECIALISTS);
}

#[test]
fn the_code_review_gate_passes_in_the_step_that_dispatches_security_review() {
    let mut state = new_state(settings());
    run_to_code_review(&mut state);
    assert_eq!(status(&state, "security_review"), TaskStatus::Pending);
    complete(&mut state, "code_review", pass(), T0);
    let out = step(&mut state, T0);
    let passed = event(&out, EventKind::GatePassed);
    assert_eq!(passed.data["gate"], "code_review");
    assert_eq!(passed.data["review_task"], "code_review");
    assert_eq!(dispatched(&out), ["security_review"]);
    let gate = state.gate(GateKind::CodeReview).unwrap();
    assert_eq!(gate.status, GateStatus::Passed);
    assert_eq!(gate.reason.as_deref(), Some("code_review passed"));
}

// -- gates and rework -----------------------------------------------------------

#[test]
fn security_review_waits_for_the_code_review_gate_even_when_its_task_succeeded() {
    let mut state = new_state(settings());
    run_to_code_review(&mut state);
    // Reconciling while the review runs does not release security review.
    claim(&mut state, "code_review", T0);
    assert!(dispatched(&step(&mut state, T0)).is_empty());
    // The review task SUCCEEDED (so `needs` is met) but its verdict is FAIL.
    let findings = ["SQL injection in /todos"];
    complete(&mut state, "code_review", fail_verdict(&findings), T0);
    let out = step(&mut state, T0);
    assert!(!dispatched(&out).contains(&"security_review".to_string()));
    assert_eq!(status(&state, "security_review"), TaskStatus::Pending);
    // Through the whole rework round, until the re-review passes.
    let mut pending = dispatched(&out);
    for _ in 0..5 {
        for id in &pending {
            assert_ne!(id, "security_review");
            let verdict = if id == "code_review_r1" {
                // Still pending right up to the verdict.
                assert_eq!(status(&state, "security_review"), TaskStatus::Pending);
                pass()
            } else {
                None
            };
            complete(&mut state, id, verdict, T0);
        }
        pending = dispatched(&step(&mut state, T0));
        if pending.contains(&"security_review".to_string()) {
            assert_eq!(
                state.gate(GateKind::CodeReview).unwrap().status,
                GateStatus::Passed
            );
            return;
        }
    }
    panic!("security review was never dispatched");
}

#[test]
fn code_review_fail_opens_rework_for_backend_and_frontend() {
    let mut state = new_state(settings());
    run_to_code_review(&mut state);
    let findings = ["no input validation on POST /todos", "XSS in the list view"];
    complete(&mut state, "code_review", fail_verdict(&findings), T0 + 5);
    let before = state.clone();
    let out = step(&mut state, T0 + 5);

    let k = kinds(&out);
    let failed_at = k.iter().position(|k| *k == EventKind::GateFailed).unwrap();
    let rework_at = k
        .iter()
        .position(|k| *k == EventKind::ReworkOpened)
        .unwrap();
    assert!(failed_at < rework_at, "{k:?}");
    let failed = event(&out, EventKind::GateFailed);
    assert_eq!(failed.data["findings"], json!(findings));
    let rework = event(&out, EventKind::ReworkOpened);
    assert_eq!(rework.data["round"], 1);
    assert_eq!(rework.data["review_task"], "code_review_r1");

    let fix_ids = ["fix_backend_code_review_r1", "fix_frontend_code_review_r1"];
    assert_eq!(rework.data["fix_tasks"], json!(fix_ids));
    assert!(state.task("fix_database_code_review_r1").is_none());
    for (id, base, role) in [
        (fix_ids[0], "backend", Role::BackendEngineer),
        (fix_ids[1], "frontend", Role::FrontendEngineer),
    ] {
        let t = state.task(id).unwrap();
        assert_eq!(t.role, role);
        assert_eq!(t.round, 1);
        assert_eq!(t.needs, ["code_review"]);
        assert_eq!(t.findings, findings);
        assert_eq!(t.gate, None);
        assert_eq!(t.expected, state.task(base).unwrap().expected);
        assert_eq!(t.dedupe_key, format!("run-1/{id}/1"));
        assert!(t.instructions.contains("Rework"), "{}", t.instructions);
        assert_eq!((t.status, t.attempt), (TaskStatus::Queued, 1));
    }
    // Both fixes go out at once; the new review waits for them.
    assert_eq!(dispatched(&out), fix_ids);
    let review = state.task("code_review_r1").unwrap();
    assert_eq!(review.needs, fix_ids);
    assert_eq!(review.gate, Some(GateKind::CodeReview));
    assert_eq!(review.role, Role::CodeReviewer);
    assert_eq!((review.round, review.status), (1, TaskStatus::Pending));
    assert_eq!(review.findings, findings);

    let gate = state.gate(GateKind::CodeReview).unwrap();
    assert_eq!(gate.status, GateStatus::Pending);
    assert_eq!(gate.rework_rounds, 1);
    assert_eq!(gate.review_task.as_deref(), Some("code_review_r1"));
    assert_eq!(gate.findings, findings);

    let diff = StateDiff::between(&before, &state);
    let new: Vec<&str> = diff.new_tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(new, [fix_ids[0], fix_ids[1], "code_review_r1"]);
    assert_eq!(diff.changed_gates.len(), 1);
    assert_eq!(diff.changed_gates[0].kind, GateKind::CodeReview);

    // Fixes done -> the re-review; PASS -> gate PASSED -> security review.
    for id in fix_ids {
        succeed(&mut state, id, T0 + 6);
    }
    let out = step(&mut state, T0 + 6);
    assert_eq!(
        dispatches(&out),
        [("code_review_r1".to_string(), Role::CodeReviewer, 1)]
    );
    complete(&mut state, "code_review_r1", pass(), T0 + 7);
    let out = step(&mut state, T0 + 7);
    assert_eq!(
        event(&out, EventKind::GatePassed).data["review_task"],
        "code_review_r1"
    );
    assert_eq!(dispatched(&out), ["security_review"]);
    complete(&mut state, "security_review", pass(), T0 + 8);
    step(&mut state, T0 + 8);
    assert_eq!(state.run.status, RunStatus::Completed);
}

#[test]
fn security_review_fail_reworks_the_implementation_and_re_reviews_security() {
    let mut state = new_state(settings());
    run_to_code_review(&mut state);
    complete(&mut state, "code_review", pass(), T0);
    step(&mut state, T0);
    complete(
        &mut state,
        "security_review",
        fail_verdict(&["secrets in the repo"]),
        T0,
    );
    let out = step(&mut state, T0);
    assert_eq!(
        dispatched(&out),
        [
            "fix_backend_security_review_r1",
            "fix_frontend_security_review_r1"
        ]
    );
    let review = state.task("security_review_r1").unwrap();
    assert_eq!(review.gate, Some(GateKind::SecurityReview));
    assert_eq!(
        state.gate(GateKind::CodeReview).unwrap().status,
        GateStatus::Passed
    );
}

#[test]
fn rework_limit_asks_a_person_to_waive_the_gate() {
    let mut state = new_state(RunSettings {
        max_rework: 1,
        ..settings()
    });
    run_to_code_review(&mut state);
    complete(&mut state, "code_review", fail_verdict(&["bug 1"]), T0);
    let out = step(&mut state, T0);
    for id in dispatched(&out) {
        succeed(&mut state, &id, T0);
    }
    assert_eq!(dispatched(&step(&mut state, T0)), ["code_review_r1"]);
    complete(&mut state, "code_review_r1", fail_verdict(&["bug 2"]), T0);
    let out = step(&mut state, T0 + 1);

    assert!(dispatched(&out).is_empty());
    assert!(!kinds(&out).contains(&EventKind::ReworkOpened));
    assert!(kinds(&out).contains(&EventKind::GateFailed));
    assert!(kinds(&out).contains(&EventKind::Escalated));
    assert_eq!(state.run.status, RunStatus::NeedsInput);
    let reason = state.run.status_reason.clone().unwrap();
    assert!(reason.contains("gate waive"), "{reason}");
    assert!(reason.contains("limit 1"), "{reason}");
    let gate = state.gate(GateKind::CodeReview).unwrap();
    assert_eq!(gate.status, GateStatus::Failed);
    assert_eq!(gate.findings, ["bug 2"]);
    // Waiting: reconcile changes nothing and emits nothing.
    let waiting = state.clone();
    assert!(step(&mut state, T0 + 2).is_empty());
    assert_eq!(state, waiting);

    // Option 1: a person waives the gate.
    let mut waived = state.clone();
    let out = apply(
        &mut waived,
        Input::WaiveGate {
            gate: GateKind::CodeReview,
            reason: "accepted risk".into(),
        },
        T0 + 3,
    )
    .unwrap();
    assert_eq!(waived.run.status, RunStatus::Running);
    assert_eq!(
        waived.gate(GateKind::CodeReview).unwrap().status,
        GateStatus::Waived
    );
    assert_eq!(
        event(&out, EventKind::GateWaived).data["reason"],
        "accepted risk"
    );
    assert_eq!(dispatched(&out), ["security_review"]);

    // Option 2: a person answers with guidance: one more round.
    let mut answered = state.clone();
    let out = apply(
        &mut answered,
        Input::Answer {
            text: "validate every input".into(),
        },
        T0 + 3,
    )
    .unwrap();
    assert_eq!(answered.run.status, RunStatus::Running);
    assert!(kinds(&out).contains(&EventKind::HumanInput));
    assert_eq!(event(&out, EventKind::ReworkOpened).data["round"], 2);
    assert_eq!(
        dispatched(&out),
        ["fix_backend_code_review_r2", "fix_frontend_code_review_r2"]
    );
    let fix = answered.task("fix_backend_code_review_r2").unwrap();
    assert_eq!(fix.needs, ["code_review_r1"]);
    assert_eq!(
        fix.findings,
        ["bug 2", "Guidance from a person: validate every input"]
    );
    assert_eq!(
        answered.task("code_review_r2").unwrap().needs,
        ["fix_backend_code_review_r2", "fix_frontend_code_review_r2"]
    );
    let gate = answered.gate(GateKind::CodeReview).unwrap();
    assert_eq!((gate.status, gate.rework_rounds), (GateStatus::Pending, 2));
    assert_eq!(status(&answered, "security_review"), TaskStatus::Pending);
}

#[test]
fn code_review_not_required_is_skipped_and_security_review_waits_for_the_code() {
    let (mut state, events) = new_state_with_events(RunSettings {
        require_code_review: false,
        ..settings()
    });
    assert_eq!(status(&state, "code_review"), TaskStatus::Skipped);
    let gate = state.gate(GateKind::CodeReview).unwrap();
    assert_eq!(gate.status, GateStatus::Waived);
    assert!(!gate.required);
    assert!(
        gate.reason
            .as_deref()
            .unwrap()
            .contains("REQUIRE_CODE_REVIEW=false")
    );
    assert!(
        events.iter().any(
            |e| e.kind == EventKind::TaskSkipped && e.task_id.as_deref() == Some("code_review")
        )
    );

    let first = step(&mut state, T0);
    assert_eq!(dispatched(&first), ["requirements"]);
    let batches = drive(&mut state, dispatched(&first), T0);
    let flat: Vec<String> = batches.concat();
    assert!(!flat.contains(&"code_review".to_string()));
    assert_eq!(
        batches.last().unwrap(),
        &strings(&["security_review"]),
        "{batches:?}"
    );
    assert_eq!(
        batches[batches.len() - 2],
        strings(&["backend", "frontend"])
    );
    assert_eq!(state.run.status, RunStatus::Completed);
    assert!(
        state
            .run
            .status_reason
            .as_deref()
            .unwrap()
            .contains("code_review WAIVED")
    );
}

/// Regression: a skipped review counted as a met dependency at once, so a
/// task after it ran before the work the review was waiting for.
#[test]
fn waiving_a_gate_early_does_not_let_later_tasks_jump_ahead() {
    let mut state = new_state(settings());
    step(&mut state, T0);
    let out = apply(
        &mut state,
        Input::WaiveGate {
            gate: GateKind::CodeReview,
            reason: "prototype".into(),
        },
        T0,
    )
    .unwrap();
    assert_eq!(status(&state, "code_review"), TaskStatus::Skipped);
    assert!(kinds(&out).contains(&EventKind::TaskSkipped));
    assert!(dispatched(&out).is_empty(), "{out:#?}");
    assert_eq!(status(&state, "security_review"), TaskStatus::Pending);
    let batches = drive(&mut state, strings(&["requirements"]), T0);
    assert_eq!(batches.last().unwrap(), &strings(&["security_review"]));
    assert_eq!(state.run.status, RunStatus::Completed);
}

// -- retries, dead letters, leases ----------------------------------------------

#[test]
fn a_retryable_failure_is_retried_after_the_backoff() {
    let mut state = new_state(settings());
    step(&mut state, T0);
    fail(
        &mut state,
        "requirements",
        true,
        "provider timeout",
        T0 + 100,
    );
    let out = step(&mut state, T0 + 100);
    assert_eq!(kinds(&out), [EventKind::TaskRetryScheduled]);
    assert!(dispatched(&out).is_empty());
    let t = state.task("requirements").unwrap();
    assert_eq!(t.status, TaskStatus::Ready);
    assert_eq!(t.not_before, Some(T0 + 100 + 1_000));
    assert_eq!(
        event(&out, EventKind::TaskRetryScheduled).data["delay_ms"],
        1_000
    );

    // Not before its time.
    assert!(step(&mut state, T0 + 1_099).is_empty());
    let out = step(&mut state, T0 + 1_100);
    assert_eq!(
        dispatches(&out),
        [("requirements".to_string(), Role::BusinessAnalyst, 2)]
    );
    assert_eq!(state.task("requirements").unwrap().not_before, None);
    assert_eq!(state.run.iterations, 2);

    // The second retry waits twice as long.
    fail(
        &mut state,
        "requirements",
        true,
        "provider timeout",
        T0 + 2_000,
    );
    step(&mut state, T0 + 2_000);
    assert_eq!(
        state.task("requirements").unwrap().not_before,
        Some(T0 + 4_000)
    );
}

#[test]
fn exhausted_attempts_go_to_the_dead_letter_queue_and_can_be_replayed() {
    let mut state = new_state(settings());
    step(&mut state, T0);
    let mut now = T0;
    for attempt in 1..=2 {
        fail(&mut state, "requirements", true, "rate limited", now);
        step(&mut state, now);
        now += 60_000;
        assert_eq!(
            dispatches(&step(&mut state, now)),
            [(
                "requirements".to_string(),
                Role::BusinessAnalyst,
                attempt + 1
            )]
        );
    }
    fail(&mut state, "requirements", true, "rate limited", now);
    let out = step(&mut state, now);
    assert_eq!(status(&state, "requirements"), TaskStatus::Dead);
    assert!(out.contains(&Action::DeadLetter {
        task_id: "requirements".into(),
        role: Role::BusinessAnalyst,
        attempts: 3,
        error: "rate limited".into(),
    }));
    assert!(
        event(&out, EventKind::TaskDead)
            .message
            .contains("all 3 attempts failed")
    );
    assert!(kinds(&out).contains(&EventKind::Escalated));
    assert_eq!(state.run.status, RunStatus::NeedsInput);
    assert!(
        state
            .run
            .status_reason
            .as_deref()
            .unwrap()
            .contains("dead letter queue")
    );
    assert!(step(&mut state, now + 1).is_empty());

    // Replay a task that is not dead: conflict.
    let mut copy = state.clone();
    let err = apply(
        &mut copy,
        Input::ReplayDead {
            task_id: "plan".into(),
        },
        now,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");

    let out = apply(
        &mut state,
        Input::ReplayDead {
            task_id: "requirements".into(),
        },
        now + 2,
    )
    .unwrap();
    assert!(kinds(&out).contains(&EventKind::DlqReplayed));
    assert_eq!(state.run.status, RunStatus::Running);
    assert_eq!(
        dispatches(&out),
        [("requirements".to_string(), Role::BusinessAnalyst, 4)]
    );
    assert_eq!(state.task("requirements").unwrap().max_attempts, 4);
}

#[test]
fn a_permanent_failure_goes_dead_at_once() {
    let mut state = new_state(settings());
    step(&mut state, T0);
    fail(&mut state, "requirements", false, "invalid API key", T0);
    let out = step(&mut state, T0);
    assert_eq!(status(&state, "requirements"), TaskStatus::Dead);
    assert!(out.contains(&Action::DeadLetter {
        task_id: "requirements".into(),
        role: Role::BusinessAnalyst,
        attempts: 1,
        error: "invalid API key".into(),
    }));
    assert!(
        event(&out, EventKind::TaskDead)
            .message
            .contains("failed permanently")
    );
    assert!(!kinds(&out).contains(&EventKind::TaskRetryScheduled));
    assert_eq!(state.run.status, RunStatus::NeedsInput);
}

#[test]
fn an_answer_replays_dead_tasks_with_the_guidance() {
    let mut state = new_state(settings());
    step(&mut state, T0);
    fail(&mut state, "requirements", false, "bad output", T0);
    step(&mut state, T0);
    let out = apply(
        &mut state,
        Input::Answer {
            text: "keep it short".into(),
        },
        T0 + 1,
    )
    .unwrap();
    assert_eq!(state.run.status, RunStatus::Running);
    assert_eq!(dispatched(&out), ["requirements"]);
    assert_eq!(
        state.task("requirements").unwrap().findings,
        ["Guidance from a person: keep it short"]
    );
}

#[test]
fn an_expired_lease_of_the_current_attempt_fails_it_and_schedules_a_retry() {
    let mut state = new_state(settings());
    step(&mut state, T0);
    claim(&mut state, "requirements", T0);
    let out = apply(
        &mut state,
        Input::LeaseExpired {
            task_id: "requirements".into(),
            attempt: 1,
            owner: Some("worker-7".into()),
        },
        T0 + 30_000,
    )
    .unwrap();
    assert_eq!(
        kinds(&out),
        [EventKind::LeaseExpired, EventKind::TaskRetryScheduled]
    );
    let t = state.task("requirements").unwrap();
    assert_eq!(t.status, TaskStatus::Ready);
    assert!(t.retryable);
    assert_eq!(t.lease_owner, None);
    assert_eq!(t.not_before, Some(T0 + 31_000));
    let err = t.last_error.as_deref().unwrap();
    assert!(
        err.contains("lease expired") && err.contains("worker-7"),
        "{err}"
    );
    assert_eq!(
        dispatches(&step(&mut state, T0 + 31_000)),
        [("requirements".to_string(), Role::BusinessAnalyst, 2)]
    );
}

#[test]
fn an_attempt_given_back_is_queued_again_at_once_and_not_counted() {
    let mut state = new_state(settings());
    step(&mut state, T0);
    claim(&mut state, "requirements", T0);
    let before = state.task("requirements").unwrap().max_attempts;
    let iterations = state.run.iterations;
    let out = apply(
        &mut state,
        Input::Released {
            task_id: "requirements".into(),
            attempt: 1,
            owner: "worker-1".into(),
        },
        T0 + 5,
    )
    .unwrap();
    assert_eq!(
        kinds(&out),
        [EventKind::TaskReleased, EventKind::TaskQueued]
    );
    assert_eq!(
        dispatches(&out),
        [("requirements".to_string(), Role::BusinessAnalyst, 2)],
        "queued again with no backoff"
    );
    let t = state.task("requirements").unwrap();
    assert_eq!(t.status, TaskStatus::Queued);
    assert_eq!(t.lease_owner, None);
    assert_eq!(t.last_error, None, "a release is not a failure");
    assert_eq!(
        t.max_attempts,
        before + 1,
        "the given-back attempt is not counted"
    );
    assert_eq!(
        state.run.iterations, iterations,
        "nor against MAX_ITERATIONS"
    );
}

#[test]
fn a_release_by_a_worker_that_no_longer_holds_the_lease_changes_nothing() {
    let mut state = new_state(settings());
    step(&mut state, T0);
    claim(&mut state, "requirements", T0);
    for (attempt, owner) in [(1, "worker-2"), (2, "worker-1")] {
        let before = state.clone();
        let out = apply(
            &mut state,
            Input::Released {
                task_id: "requirements".into(),
                attempt,
                owner: owner.into(),
            },
            T0 + 5,
        )
        .unwrap();
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(state, before);
    }
}

#[test]
fn an_expired_lease_of_a_stale_attempt_changes_nothing() {
    let mut state = new_state(settings());
    step(&mut state, T0);
    claim(&mut state, "requirements", T0);
    let before = state.clone();
    let stale = |attempt| Input::LeaseExpired {
        task_id: "requirements".into(),
        attempt,
        owner: None,
    };
    assert!(apply(&mut state, stale(0), T0).unwrap().is_empty());
    assert_eq!(state, before);
    // The task completed before the sweeper saw the lease: the stale input
    // changes nothing (the next reconcile moves the run on).
    succeed_running(&mut state, "requirements", T0);
    let completed = state.clone();
    assert!(apply(&mut state, stale(1), T0).unwrap().is_empty());
    assert_eq!(state, completed);
    assert_eq!(dispatched(&step(&mut state, T0)), ["plan"]);
    let err = apply(
        &mut state,
        Input::LeaseExpired {
            task_id: "nope".into(),
            attempt: 1,
            owner: None,
        },
        T0,
    )
    .unwrap_err();
    assert!(matches!(err, Error::UnknownTask(_)), "{err}");
}

fn succeed_running(state: &mut RunState, id: &str, now: Millis) {
    let t = worker_task(state, id);
    t.status = t.status.transition(TaskStatus::Succeeded).unwrap();
    t.finished_at = Some(now);
}

// -- people: cancel, answer, waive ------------------------------------------------

#[test]
fn cancel_cancels_every_unfinished_task_and_the_run() {
    let mut state = new_state(settings());
    step(&mut state, T0);
    succeed(&mut state, "requirements", T0);
    step(&mut state, T0);
    claim(&mut state, "plan", T0);
    let out = apply(
        &mut state,
        Input::Cancel {
            reason: "wrong goal".into(),
        },
        T0 + 1,
    )
    .unwrap();
    assert_eq!(state.run.status, RunStatus::Cancelled);
    assert_eq!(state.run.status_reason.as_deref(), Some("wrong goal"));
    assert_eq!(state.run.finished_at, Some(T0 + 1));
    assert_eq!(status(&state, "requirements"), TaskStatus::Succeeded);
    for t in state.tasks.iter().filter(|t| t.id != "requirements") {
        assert_eq!(t.status, TaskStatus::Cancelled, "{}", t.id);
    }
    assert_eq!(state.task("plan").unwrap().lease_owner, None);
    let cancelled = events(&out)
        .iter()
        .filter(|e| e.kind == EventKind::TaskCancelled)
        .count();
    assert_eq!(cancelled, 8);
    assert_eq!(
        events(&out).last().unwrap().kind,
        EventKind::RunStatusChanged
    );
    assert!(dispatched(&out).is_empty());

    let err = apply(
        &mut state,
        Input::Cancel {
            reason: "again".into(),
        },
        T0 + 2,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    assert!(step(&mut state, T0 + 3).is_empty());
}

#[test]
fn cancel_also_cancels_dead_tasks() {
    let mut state = new_state(settings());
    step(&mut state, T0);
    fail(&mut state, "requirements", false, "boom", T0);
    step(&mut state, T0);
    apply(
        &mut state,
        Input::Cancel {
            reason: "give up".into(),
        },
        T0,
    )
    .unwrap();
    assert_eq!(status(&state, "requirements"), TaskStatus::Cancelled);
}

#[test]
fn an_answer_to_a_run_that_is_not_waiting_is_a_conflict() {
    let mut state = new_state(settings());
    step(&mut state, T0);
    let err = apply(
        &mut state,
        Input::Answer {
            text: "hello".into(),
        },
        T0,
    )
    .unwrap_err();
    match err {
        Error::Conflict(m) => {
            assert!(m.contains("not waiting"), "{m}");
            assert!(m.contains("RUNNING"), "{m}");
        }
        other => panic!("expected a conflict, got {other}"),
    }
}

#[test]
fn gates_of_a_finished_run_cannot_be_waived() {
    let mut state = new_state(settings());
    let first = dispatched(&step(&mut state, T0));
    drive(&mut state, first, T0);
    assert_eq!(state.run.status, RunStatus::Completed);
    let err = apply(
        &mut state,
        Input::WaiveGate {
            gate: GateKind::SecurityReview,
            reason: "late".into(),
        },
        T0,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
}

#[test]
fn an_open_gate_cannot_be_waived_again() {
    let mut state = new_state(RunSettings {
        require_security_review: false,
        ..settings()
    });
    step(&mut state, T0);
    let err = apply(
        &mut state,
        Input::WaiveGate {
            gate: GateKind::SecurityReview,
            reason: "twice".into(),
        },
        T0,
    )
    .unwrap_err();
    assert!(err.to_string().contains("already WAIVED"), "{err}");
}

// -- the iteration cap ----------------------------------------------------------

#[test]
fn max_iterations_stops_dispatching_and_asks_a_person() {
    let mut state = new_state(RunSettings {
        max_iterations: 3,
        ..settings()
    });
    let first = dispatched(&step(&mut state, T0));
    let mut sent = first.clone();
    let mut pending = first;
    let mut last = Vec::new();
    for _ in 0..5 {
        for id in &pending {
            succeed(&mut state, id, T0);
        }
        last = step(&mut state, T0);
        pending = dispatched(&last);
        sent.extend(pending.clone());
        if state.run.status != RunStatus::Running {
            break;
        }
    }
    assert_eq!(sent, ["requirements", "plan", "ux_design"]);
    assert_eq!(state.run.iterations, 3);
    assert_eq!(state.run.status, RunStatus::NeedsInput);
    assert!(
        state
            .run
            .status_reason
            .as_deref()
            .unwrap()
            .contains("MAX_ITERATIONS")
    );
    assert!(kinds(&last).contains(&EventKind::Escalated));
    assert_eq!(status(&state, "architecture"), TaskStatus::Ready);
    assert!(step(&mut state, T0).is_empty());

    // An answer allows as many again.
    let out = apply(
        &mut state,
        Input::Answer {
            text: "go on".into(),
        },
        T0,
    )
    .unwrap();
    assert_eq!(state.run.settings.max_iterations, 6);
    assert_eq!(dispatched(&out), ["architecture"]);
    assert_eq!(state.run.status, RunStatus::Running);
}

// -- StateDiff and backoff ----------------------------------------------------------

#[test]
fn state_diff_reports_what_a_step_changed() {
    let before = new_state(settings());
    assert!(StateDiff::between(&before, &before).is_empty());
    assert_eq!(StateDiff::between(&before, &before), StateDiff::default());

    let mut after = before.clone();
    step(&mut after, T0);
    let diff = StateDiff::between(&before, &after);
    assert!(diff.run_changed);
    assert!(diff.new_tasks.is_empty());
    assert!(diff.changed_gates.is_empty());
    assert_eq!(diff.changed_tasks.len(), 1);
    let change = &diff.changed_tasks[0];
    assert_eq!(change.task.id, "requirements");
    assert_eq!(change.task.status, TaskStatus::Queued);
    assert_eq!(change.task.attempt, 1);
    assert_eq!(change.expected_status, TaskStatus::Pending);
    assert_eq!(change.expected_attempt, 0);

    // A worker's change is a task change expected from its claimed status.
    let mut worked = after.clone();
    claim(&mut worked, "requirements", T0);
    let diff = StateDiff::between(&after, &worked);
    assert!(!diff.run_changed);
    assert_eq!(diff.changed_tasks[0].expected_status, TaskStatus::Queued);
    assert_eq!(diff.changed_tasks[0].expected_attempt, 1);

    // Only a gate changes.
    let mut gated = after.clone();
    gated.gates[1].status = GateStatus::Waived;
    let diff = StateDiff::between(&after, &gated);
    assert_eq!(diff.changed_gates.len(), 1);
    assert_eq!(diff.changed_gates[0].kind, GateKind::SecurityReview);
    assert!(!diff.run_changed && diff.changed_tasks.is_empty());
    assert!(!diff.is_empty());
}

#[test]
fn backoff_doubles_and_is_capped() {
    let s = RunSettings {
        retry_backoff_ms: 1_000,
        retry_backoff_max_ms: 60_000,
        ..settings()
    };
    let delays: Vec<i64> = (1..=8).map(|a| backoff_ms(&s, a)).collect();
    assert_eq!(
        delays,
        [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000]
    );
    assert_eq!(backoff_ms(&s, 0), 1_000);
    assert_eq!(backoff_ms(&s, u32::MAX), 60_000);
    let huge = RunSettings {
        retry_backoff_ms: i64::MAX / 2,
        retry_backoff_max_ms: i64::MAX,
        ..settings()
    };
    assert_eq!(backoff_ms(&huge, 40), i64::MAX);
}

#[test]
fn inputs_round_trip_through_json() {
    let inputs = [
        Input::Reconcile,
        Input::WaiveGate {
            gate: GateKind::CodeReview,
            reason: "r".into(),
        },
        Input::ReplayDead {
            task_id: "plan".into(),
        },
        Input::RaiseBudget {
            usd: Some(2.5),
            tokens: None,
        },
    ];
    for input in inputs {
        let text = serde_json::to_string(&input).unwrap();
        assert_eq!(serde_json::from_str::<Input>(&text).unwrap(), input);
    }
}

#[test]
fn a_budget_failure_asks_for_a_bigger_budget() {
    let mut state = new_state(settings());
    step(&mut state, T0);
    fail(
        &mut state,
        "requirements",
        false,
        "budget exceeded: the run has spent 0 of 1 tokens; this call needs about 900 more",
        T0,
    );
    let out = step(&mut state, T0);
    assert_eq!(status(&state, "requirements"), TaskStatus::Dead);
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::DeadLetter { task_id, .. } if task_id == "requirements"))
    );
    assert_eq!(state.run.status, RunStatus::NeedsInput);
    let reason = state.run.status_reason.clone().unwrap();
    assert!(
        reason.starts_with("budget exceeded: raise it with `orchestrator budget run-1 --usd N`"),
        "{reason}"
    );
}

#[test]
fn raising_the_budget_replays_only_budget_failures() {
    let mut state = new_state(settings());
    step(&mut state, T0);
    fail(
        &mut state,
        "requirements",
        false,
        "budget exceeded: over",
        T0,
    );
    step(&mut state, T0);
    let out = apply(
        &mut state,
        Input::RaiseBudget {
            usd: Some(5.0),
            tokens: Some(1_000),
        },
        T0 + 1,
    )
    .unwrap();
    assert_eq!(state.run.settings.budget_usd, Some(5.0));
    assert_eq!(state.run.settings.budget_tokens, Some(1_000));
    assert_eq!(state.run.status, RunStatus::Running);
    assert_eq!(
        dispatches(&out),
        [("requirements".to_string(), Role::BusinessAnalyst, 2)]
    );
    assert!(
        event(&out, EventKind::HumanInput)
            .message
            .starts_with("budget raised to $5")
    );

    // A task dead for another reason stays dead; the run still waits.
    let mut state = new_state(settings());
    step(&mut state, T0);
    fail(&mut state, "requirements", false, "invalid API key", T0);
    step(&mut state, T0);
    apply(
        &mut state,
        Input::RaiseBudget {
            usd: None,
            tokens: Some(10),
        },
        T0 + 1,
    )
    .unwrap();
    assert_eq!(status(&state, "requirements"), TaskStatus::Dead);
    assert_eq!(state.run.status, RunStatus::NeedsInput);
    assert_eq!(state.run.settings.budget_tokens, Some(10));
}

#[test]
fn the_budget_of_a_finished_run_cannot_be_raised() {
    let mut state = new_state(settings());
    step(&mut state, T0);
    apply(
        &mut state,
        Input::Cancel {
            reason: "stop".into(),
        },
        T0,
    )
    .unwrap();
    let err = apply(
        &mut state,
        Input::RaiseBudget {
            usd: Some(1.0),
            tokens: None,
        },
        T0 + 1,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
}

#[test]
fn upstream_of_is_every_task_a_task_depends_on_in_plan_order() {
    let state = new_state(settings());
    assert!(state.upstream_of("requirements").is_empty());
    assert!(state.upstream_of("no_such_task").is_empty());
    let before_review = [
        "requirements",
        "plan",
        "ux_design",
        "architecture",
        "database",
        "backend",
        "frontend",
    ];
    assert_eq!(state.upstream_of("code_review"), strings(&before_review));
    // A branch does not depend on its sibling.
    let backend = state.upstream_of("backend");
    assert!(!backend.contains(&"frontend".to_string()), "{backend:?}");
    assert_eq!(backend, strings(&before_review[..5]));
}

#[test]
fn a_workflow_without_a_required_gate_s_review_task_is_refused() {
    let sdlc = Workflow::builtin("sdlc").unwrap();
    assert!(check_required_gates(&sdlc, &RunSettings::default()).is_ok());
    let mut no_security = sdlc.clone();
    no_security
        .tasks
        .retain(|t| t.gate != Some(GateKind::SecurityReview));
    let err = check_required_gates(&no_security, &RunSettings::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("security_review") && err.contains("REQUIRE_SECURITY_REVIEW=false"),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");
    let not_required = RunSettings {
        require_security_review: false,
        ..RunSettings::default()
    };
    assert!(check_required_gates(&no_security, &not_required).is_ok());
    let mut none = sdlc;
    none.tasks.retain(|t| t.gate.is_none());
    let err = check_required_gates(&none, &not_required).unwrap_err();
    assert!(err.to_string().contains("REQUIRE_CODE_REVIEW"), "{err}");
}
