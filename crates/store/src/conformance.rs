//! The conformance suite every store backend must pass (as sqlx runs one test
//! suite against every database).
//!
//! Each check is a public async function taking a [`Store`]; [`run_all`] runs
//! them in turn. Checks create their own runs (fresh [`RunId`]s) and never
//! assume the database is empty, so they may share one database. Run states
//! and diffs come from the real state machine (`orch_core::machine::apply`
//! on the built-in `sdlc` workflow), as the engine would produce them.
//! Failures panic with a message naming what the backend got wrong.

use std::collections::BTreeMap;
use std::sync::Arc;

use orch_core::{
    Action, Artifact, Event, EventKind, Input, Millis, NewArtifact, NewEvent, RunId, RunSettings,
    RunState, RunStatus, StateDiff, Task, TaskStatus, Usage, Verdict, VerdictKind, Workflow,
    machine,
};
use serde_json::json;

use crate::{
    ApiToken, Durability, Error, EventQuery, Fence, LlmTotals, NewDeadLetter, RunFilter, Stats,
    Step, Stepped, Store, TASK_DURATION_BUCKETS_MS, TaskOutcome, TaskRef,
};

/// Base time of the suite (the clock is the suite's, never the system's).
pub const T0: Millis = 1_700_000_000_000;
/// Lease length the suite's workers take.
const LEASE_MS: Millis = 30_000;
/// The first task of the `sdlc` workflow (no dependencies).
const FIRST: &str = "requirements";

/// Run every check against `store`, one after the other.
pub async fn run_all(store: &dyn Store) {
    create_and_load_round_trip(store).await;
    event_seqs_have_no_gaps(store).await;
    claim_is_exclusive(store).await;
    heartbeat_needs_the_lease(store).await;
    complete_is_fenced(store).await;
    save_run_is_compare_and_set(store).await;
    save_run_conflicts_with_workers(store).await;
    new_tasks_keep_creation_order(store).await;
    artifacts_are_versioned(store).await;
    files_of_one_artifact_are_versioned_apart(store).await;
    prompts_read_back_whole(store).await;
    sweeper_queries(store).await;
    dead_letters_round_trip(store).await;
    list_runs_filters_and_pages(store).await;
    unknown_ids_are_not_found(store).await;
    events_filter_by_kind(store).await;
    llm_journal_round_trip(store).await;
    journal_commits_with_the_outcome(store).await;
    load_run_from_a_known_state(store).await;
    claim_attempt_reads_the_context(store).await;
    derived_saves_are_saves(store).await;
    complete_and_save_takes_the_step(store).await;
    a_step_saves_a_task_claimed_and_reads_its_inputs(store).await;
    a_step_takes_held_artifacts_from_the_caller(store).await;
    api_tokens_round_trip(store).await;
    stats_count_what_is_stored(store).await;
}

/// An LLM call as a worker would journal it.
fn llm_call(run_id: &RunId, attempt: u32, hash: &str, response: &str) -> crate::LlmCallRecord {
    crate::LlmCallRecord {
        run_id: run_id.clone(),
        task_id: FIRST.to_string(),
        attempt,
        step: 0,
        request_hash: hash.to_string(),
        provider: "scripted".to_string(),
        model: "scripted-1".to_string(),
        request: "{\"model\":\"scripted-1\"}".to_string(),
        response: response.to_string(),
        input_tokens: 10,
        output_tokens: 20,
        cache_read_tokens: 3,
        cache_write_tokens: 4,
        latency_ms: 7,
        cost_usd: 0.25,
        created_at: T0 + Millis::from(attempt),
    }
}

/// `claim_attempt` claims as `claim_task` does (once per attempt) and
/// returns what the separate reads return: the run row, the channel
/// messages and the latest version of each named upstream artifact.
pub async fn claim_attempt_reads_the_context(store: &dyn Store) {
    let state = create_queued(store, T0).await;
    let id = state.run.id.clone();
    let names = vec![FIRST.to_string(), "not-an-artifact".to_string()];
    let writers = vec![FIRST.to_string()];
    let claim = |attempt: u32, owner: &'static str, now: Millis| crate::Claim {
        run_id: &state.run.id,
        task_id: FIRST,
        attempt,
        owner,
        lease_until: now + LEASE_MS,
        now,
        upstream: &names,
        upstream_tasks: &writers,
        with_state: true,
        known_version: None,
    };
    let first = store
        .claim_attempt(&claim(1, "w1", T0 + 20))
        .await
        .expect("claim_attempt")
        .expect("claimed");
    // The whole run, if the backend reads it with the claim: as load_run has it.
    if let Some(read) = &first.state {
        assert_eq!(read, &store.load_run(&id).await.expect("load_run"));
    }
    assert_eq!(first.task.status, TaskStatus::Running);
    assert_eq!(first.task.lease_owner.as_deref(), Some("w1"));
    assert_eq!(first.run.id, id);
    assert!(first.messages.is_empty() && first.upstream.is_empty());
    assert!(
        store
            .claim_attempt(&claim(1, "w2", T0 + 21))
            .await
            .expect("second claim")
            .is_none(),
        "an attempt is claimed once"
    );

    // Attempt 1 writes two versions of the artifact and posts a message, then fails.
    let mut outcome = failed(
        FIRST,
        true,
        vec![artifact(FIRST, "draft 1"), artifact(FIRST, "draft 2")],
    );
    outcome.events.insert(
        0,
        NewEvent::task(EventKind::ChannelMessage, FIRST, "posted to design")
            .with_data(json!({"channel": "design", "from_role": "business_analyst", "text": "hi"})),
    );
    store
        .complete_task(&fence(&id, FIRST, 1, "w1"), &outcome, T0 + 30)
        .await
        .expect("complete attempt 1");
    let state = store.load_run(&id).await.expect("load_run");
    let state = step(store, &state, Input::Reconcile, T0 + 40)
        .await
        .expect("retry scheduled");
    let retry_at = state.task(FIRST).unwrap().not_before.expect("a retry time");
    step(store, &state, Input::Reconcile, retry_at)
        .await
        .expect("retry queued");

    // The caller holds the run at its current version: nothing to read.
    let held = store.get_run(&id).await.expect("get_run").version;
    let second = store
        .claim_attempt(&crate::Claim {
            known_version: Some(held),
            ..claim(2, "w2", retry_at + 10)
        })
        .await
        .expect("claim attempt 2")
        .expect("claimed");
    assert_eq!(
        second.state, None,
        "the run is not read for a caller that holds it at its version"
    );
    assert_eq!(second.task.attempt, 2);
    assert_eq!(
        second.task.last_error.as_deref(),
        Some("the model returned no artifact")
    );
    assert_eq!(second.run, store.get_run(&id).await.expect("get_run"));
    assert!(
        second.run.cost_usd > 0.0,
        "the run row is read after the claim"
    );
    let messages = events_of_kind(store, &id, EventKind::ChannelMessage).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(second.messages, messages);
    let latest = store
        .latest_artifacts_named(&id, &writers, &names)
        .await
        .expect("latest_artifacts_named");
    assert_eq!(latest.len(), 1);
    assert_eq!(
        (latest[0].version, latest[0].content.as_str()),
        (2, "draft 2")
    );
    assert_eq!(second.upstream, latest);
}

/// `complete_and_save` commits the completion and the step that follows from
/// it together, the step only while it still applies (the run at its
/// expected version), and nothing when the fence does not hold; the step is
/// current only while the tasks it saw in flight still are.
pub async fn complete_and_save_takes_the_step(store: &dyn Store) {
    // Taken: one load shows both the completion and the step.
    let (state, outcome, mut claimed) = claim_first(store).await;
    let id = state.run.id.clone();
    let f = fence(&id, FIRST, 1, "w1");
    let stepped = complete_with_step(store, &f, &outcome, &state, &claimed, &[]).await;
    assert_eq!(
        stepped,
        Stepped {
            version: Some(state.run.version + 1),
            current: true,
            inputs: None,
        },
        "the step was saved, with nothing else in flight"
    );
    claimed.after.run.version = state.run.version + 1;
    assert_eq!(
        store.load_run(&id).await.expect("load_run"),
        claimed.after,
        "the stored run is the completion and the step"
    );
    assert_eq!(
        store
            .list_artifacts(&id, false)
            .await
            .expect("artifacts")
            .len(),
        1
    );
    assert_seqs_contiguous(store, &id).await;

    // A failed attempt: its step schedules the retry; the store's completion
    // and `TaskOutcome::apply_to` agree on every field of the failed task.
    let state = create_queued(store, T0).await;
    let outcome = failed(FIRST, true, vec![]);
    let before = claim_and_apply(store, &state, FIRST, "w1", &outcome).await;
    let mut retry = decide(&before, Input::Reconcile, T0 + 30);
    let f = fence(&state.run.id, FIRST, 1, "w1");
    let stepped = complete_with_step(store, &f, &outcome, &state, &retry, &[]).await;
    assert_eq!(
        stepped.version,
        Some(state.run.version + 1),
        "the retry is scheduled"
    );
    retry.after.run.version = state.run.version + 1;
    let stored = store.load_run(&state.run.id).await.expect("load_run");
    assert_eq!(
        stored, retry.after,
        "the stored run is the failure and the retry"
    );
    let first = stored.task(FIRST).expect("the first task");
    assert_eq!((first.status, first.attempt), (TaskStatus::Ready, 1));
    assert!(
        first.not_before.is_some_and(|t| t > T0 + 30),
        "after a backoff"
    );

    // Not taken: another step saved the run first; the completion commits alone.
    let (state, outcome, claimed) = claim_first(store).await;
    let id = state.run.id.clone();
    let other = step(store, &state, Input::Reconcile, T0 + 25)
        .await
        .expect("another engine's step");
    let events_before = event_count(store, &id).await;
    let f = fence(&id, FIRST, 1, "w1");
    let stepped = complete_with_step(store, &f, &outcome, &state, &claimed, &[]).await;
    assert_eq!(
        stepped,
        Stepped::default(),
        "a step from an older version is not saved"
    );
    let stored = store.load_run(&id).await.expect("load_run");
    assert_eq!(
        stored.run.version, other.run.version,
        "no save after the other"
    );
    assert_eq!(stored.task(FIRST).unwrap().status, TaskStatus::Succeeded);
    for t in stored.tasks.iter().filter(|t| t.id != FIRST) {
        assert_eq!(
            t.status,
            other.task(&t.id).unwrap().status,
            "{}: the step's changes are not written",
            t.id
        );
    }
    assert_eq!(
        event_count(store, &id).await,
        events_before + outcome.events.len(),
        "the completion's events alone"
    );
    assert_seqs_contiguous(store, &id).await;

    // A step that cannot be saved (here: the same new task twice) does not
    // keep the completion from committing.
    let (state, outcome, mut claimed) = claim_first(store).await;
    let id = state.run.id.clone();
    let mut twin = claimed.after.task("plan").expect("a planned task").clone();
    twin.id = "twin".into();
    claimed.diff.new_tasks = vec![twin.clone(), twin];
    let f = fence(&id, FIRST, 1, "w1");
    let stepped = complete_with_step(store, &f, &outcome, &state, &claimed, &[]).await;
    assert_eq!(stepped, Stepped::default(), "the broken step is not saved");
    let stored = store.load_run(&id).await.expect("load_run");
    assert_eq!(stored.task(FIRST).unwrap().status, TaskStatus::Succeeded);
    assert!(
        stored.task("twin").is_none(),
        "nothing of the step is written"
    );
    assert_eq!(stored.run.version, state.run.version);

    // Refused: the fence does not hold; nothing is written.
    let (state, outcome, claimed) = claim_first(store).await;
    let id = state.run.id.clone();
    let events_before = event_count(store, &id).await;
    let run_before = store.get_run(&id).await.expect("get_run");
    let f = fence(&id, FIRST, 1, "w2");
    let refused = store
        .complete_and_save(&f, &outcome, T0 + 30, &step_of(&state, &claimed, &[]))
        .await;
    assert_lease_lost(refused, "complete_and_save by a worker without the lease");
    assert_eq!(
        event_count(store, &id).await,
        events_before,
        "no event written"
    );
    assert_eq!(
        store.get_run(&id).await.expect("get_run"),
        run_before,
        "run unchanged"
    );
    assert_eq!(task(store, &id, FIRST).await.status, TaskStatus::Running);
    assert!(
        store
            .list_artifacts(&id, false)
            .await
            .expect("artifacts")
            .is_empty()
    );

    // Two tasks in flight: the first to finish has nothing to save, and
    // its empty step is current while the other is still running.
    let workflow = Workflow::parse(
        "two.yaml",
        "name: two\ndescription: two tasks in parallel, then a third\ntasks:\n\
         - {id: left, role: backend_engineer, title: L, instructions: L}\n\
         - {id: right, role: frontend_engineer, title: R, instructions: R}\n\
         - {id: join, role: code_reviewer, title: J, instructions: J, needs: [left, right]}\n",
    )
    .expect("the workflow parses");
    let (created, events) = RunState::new_run(
        RunId::generate(),
        "two at once",
        json!({}),
        &workflow,
        RunSettings::default(),
        "scripted",
        T0,
    );
    store
        .create_run(&created, &events, T0)
        .await
        .expect("create_run");
    let state = step(store, &created, Input::Reconcile, T0 + 10)
        .await
        .expect("both queued");
    let id = state.run.id.clone();
    let mut views = Vec::new();
    for (task_id, owner) in [("left", "wl"), ("right", "wr")] {
        let outcome = succeeded(task_id, vec![artifact(task_id, "done")]);
        let before = claim_and_apply(store, &state, task_id, owner, &outcome).await;
        views.push((fence(&id, task_id, 1, owner), outcome, before));
    }
    let in_flight = |task: &str| vec![(task.to_string(), 1)];
    let (f, outcome, before) = &views[0];
    let left = decide(before, Input::Reconcile, T0 + 30);
    assert!(
        left.diff.is_empty() && left.events.is_empty(),
        "join waits for right"
    );
    let stepped = complete_with_step(store, f, outcome, &state, &left, &in_flight("right")).await;
    assert_eq!(
        stepped,
        Stepped {
            version: Some(state.run.version + 1),
            current: true,
            inputs: None,
        },
        "nothing to change but the version, and right is still running"
    );
    // Right finishes seeing left in flight (an outdated view at the new
    // version): saved, but not current, as left has ended since.
    let (f, outcome, before) = &views[1];
    let mut view = before.clone();
    view.run.version += 1;
    let right = decide(&view, Input::Reconcile, T0 + 31);
    let stepped = complete_with_step(store, f, outcome, &view, &right, &in_flight("left")).await;
    assert_eq!(
        stepped,
        Stepped {
            version: Some(state.run.version + 2),
            current: false,
            inputs: None,
        },
        "left has ended since the step's view"
    );
    assert_eq!(task(store, &id, "join").await.status, TaskStatus::Pending);
    assert_seqs_contiguous(store, &id).await;
}

/// A step may save a task it dispatches claimed by the worker that will run
/// it (RUNNING under its lease, with its `task_started` event: the hand-off
/// of `orch-engine`); `complete_and_save` then returns what that worker
/// reads, read after the step: the completion's own artifact among them.
/// The lease holds as a claim's would.
pub async fn a_step_saves_a_task_claimed_and_reads_its_inputs(store: &dyn Store) {
    let (state, next, handed, stepped) = step_handing_over(store, &[]).await;
    let id = state.run.id.clone();
    let lease_until = handed.lease_expires_at.expect("leased");
    let (names, writers) = (vec![FIRST.to_string()], vec![FIRST.to_string()]);
    assert_eq!(stepped.version, Some(state.run.version + 1), "saved");
    let inputs = stepped.inputs.expect("the inputs are read with the step");
    let upstream = store
        .latest_artifacts_named(&id, &writers, &names)
        .await
        .expect("latest_artifacts_named");
    assert_eq!(upstream.len(), 1, "the completion's artifact");
    assert_eq!(upstream[0].content, "The app manages TODO items.");
    assert_eq!(inputs.upstream, upstream);
    let messages = events_of_kind(store, &id, EventKind::ChannelMessage).await;
    assert_eq!(inputs.messages, messages);
    let stored = task(store, &id, &next).await;
    assert_eq!(stored, handed, "the task is stored as the step saved it");
    let started = events_of_kind(store, &id, EventKind::TaskStarted).await;
    assert!(
        started
            .iter()
            .any(|e| e.task_id.as_deref() == Some(next.as_str()) && e.message.contains("w2")),
        "its task_started event is recorded"
    );
    assert_seqs_contiguous(store, &id).await;
    // The lease is the worker's: it can be renewed by it, not claimed again.
    let held = fence(&id, &next, 1, "w2");
    assert!(
        store
            .heartbeat(&held, lease_until + 1_000)
            .await
            .expect("heartbeat")
    );
    assert!(
        store
            .claim_task(&id, &next, 1, "w3", lease_until, T0 + 40)
            .await
            .expect("claim")
            .is_none(),
        "a dispatch of the handed task finds it claimed"
    );

    // A step that cannot be saved (the same new task twice) with reads
    // asked for: nothing is read, nothing handed over, and the completion
    // still commits.
    let (state, outcome, mut claimed) = claim_first(store).await;
    let id = state.run.id.clone();
    let mut twin = claimed.after.task("plan").expect("a planned task").clone();
    twin.id = "twin".into();
    claimed.diff.new_tasks = vec![twin.clone(), twin];
    let step = Step {
        inputs_of: Some(crate::InputsOf {
            upstream: &names,
            upstream_tasks: &writers,
            held: &[],
        }),
        ..step_of(&state, &claimed, &[])
    };
    let stepped = store
        .complete_and_save(&fence(&id, FIRST, 1, "w1"), &outcome, T0 + 30, &step)
        .await
        .expect("complete_and_save");
    assert_eq!(stepped, Stepped::default(), "not saved, nothing read");
    assert_eq!(
        task(store, &id, FIRST).await.status,
        TaskStatus::Succeeded,
        "the completion commits alone"
    );
    assert_seqs_contiguous(store, &id).await;
}

/// The first task of a new run completes with a step that saves the next
/// one claimed by `w2` and reads its inputs (the first task's artifact),
/// telling the store the caller holds `held`: the run, the handed task's
/// id, the task as the step saved it, and what the store returned.
async fn step_handing_over(
    store: &dyn Store,
    held: &[Artifact],
) -> (RunState, String, Task, Stepped) {
    let (state, outcome, mut claimed) = claim_first(store).await;
    let id = state.run.id.clone();
    let next = claimed
        .after
        .tasks
        .iter()
        .find(|t| t.status == TaskStatus::Queued)
        .expect("the step queues the next task")
        .id
        .clone();
    let lease_until = T0 + 30 + LEASE_MS;
    let handed = {
        let t = claimed
            .after
            .tasks
            .iter_mut()
            .find(|t| t.id == next)
            .unwrap();
        t.status = TaskStatus::Running;
        t.lease_owner = Some("w2".into());
        t.lease_expires_at = Some(lease_until);
        t.started_at = Some(T0 + 30);
        t.clone()
    };
    for c in &mut claimed.diff.changed_tasks {
        if c.task.id == next {
            c.task = handed.clone();
        }
    }
    claimed
        .events
        .push(crate::task_started_event(&next, "w2", 1));
    let (names, writers) = (vec![FIRST.to_string()], vec![FIRST.to_string()]);
    let step = Step {
        inputs_of: Some(crate::InputsOf {
            upstream: &names,
            upstream_tasks: &writers,
            held,
        }),
        ..step_of(&state, &claimed, &[])
    };
    let stepped = store
        .complete_and_save(&fence(&id, FIRST, 1, "w1"), &outcome, T0 + 30, &step)
        .await
        .expect("complete_and_save");
    (state, next, handed, stepped)
}

/// Artifacts the caller holds ([`crate::InputsOf::held`]) are not read
/// again but taken from the caller, and only where they are the latest of
/// the task's upstream: a held version the store has a newer one of, or an
/// artifact outside the upstream, changes nothing.
pub async fn a_step_takes_held_artifacts_from_the_caller(store: &dyn Store) {
    let copy = |version: i64, name: &str, content: &str| Artifact {
        run_id: RunId::generate(),
        name: name.into(),
        version,
        kind: "requirements".into(),
        path: None,
        task_id: FIRST.into(),
        attempt: 1,
        content: content.into(),
        metadata: json!({}),
        created_at: T0,
    };
    // The version the completion writes (1), held: taken from the caller.
    let held = [
        copy(1, "requirements", "held copy"),
        copy(1, "elsewhere", "not upstream"),
    ];
    let (_, _, _, stepped) = step_handing_over(store, &held).await;
    let upstream = stepped.inputs.expect("read with the step").upstream;
    assert_eq!(upstream.len(), 1, "{upstream:?}");
    assert_eq!(upstream[0].content, "held copy", "not read again");
    // An older version held: the store's latest is read.
    let (state, _, _, stepped) =
        step_handing_over(store, &[copy(0, "requirements", "stale")]).await;
    let upstream = stepped.inputs.expect("read with the step").upstream;
    let latest = store
        .latest_artifacts_named(
            &state.run.id,
            &[FIRST.to_string()],
            &["requirements".to_string()],
        )
        .await
        .expect("latest");
    assert_eq!(upstream, latest);
    assert_eq!(upstream[0].content, "The app manages TODO items.");
}

/// The events of `kind` of run `id`, oldest first.
async fn events_of_kind(store: &dyn Store, id: &RunId, kind: EventKind) -> Vec<orch_core::Event> {
    store
        .list_events(
            id,
            EventQuery {
                kind: Some(kind),
                ..EventQuery::default()
            },
        )
        .await
        .expect("list_events")
}

/// Store a new `sdlc` run, reconcile it and claim its first task as `w1`; returns
/// the run as saved, the attempt's outcome, and the step the completion
/// leads to, taken from the saved run with the completion applied.
async fn claim_first(store: &dyn Store) -> (RunState, TaskOutcome, Decided) {
    let state = create_queued(store, T0).await;
    let outcome = succeeded(FIRST, vec![artifact(FIRST, "The app manages TODO items.")]);
    let before = claim_and_apply(store, &state, FIRST, "w1", &outcome).await;
    let decided = decide(&before, Input::Reconcile, T0 + 30);
    assert!(
        !decided.diff.is_empty(),
        "the completion lets the run move on"
    );
    (state, outcome, decided)
}

/// Claim attempt 1 of `task_id` of `state`'s run as `owner`; returns `state`
/// with the claimed task as `outcome` at `T0 + 30` leaves it: the view an
/// engine takes the completion's step from.
async fn claim_and_apply(
    store: &dyn Store,
    state: &RunState,
    task_id: &str,
    owner: &str,
    outcome: &TaskOutcome,
) -> RunState {
    let claimed = store
        .claim_task(
            &state.run.id,
            task_id,
            1,
            owner,
            T0 + 20 + LEASE_MS,
            T0 + 20,
        )
        .await
        .expect("claim")
        .expect("claimed");
    let mut before = state.clone();
    let i = before.tasks.iter().position(|t| t.id == task_id).unwrap();
    before.tasks[i] = claimed;
    outcome.apply_to(&mut before.tasks[i], &mut before.run, T0 + 30);
    before
}

fn step_of<'a>(state: &RunState, d: &'a Decided, in_flight: &'a [(String, u32)]) -> Step<'a> {
    Step {
        expected_version: state.run.version,
        diff: &d.diff,
        state: &d.after,
        events: &d.events,
        dead: &d.dead,
        in_flight,
        inputs_of: None,
    }
}

async fn complete_with_step(
    store: &dyn Store,
    f: &Fence,
    outcome: &TaskOutcome,
    state: &RunState,
    decided: &Decided,
    in_flight: &[(String, u32)],
) -> Stepped {
    store
        .complete_and_save(f, outcome, T0 + 30, &step_of(state, decided, in_flight))
        .await
        .expect("complete_and_save")
}

/// A [`Durability::Derived`] save is a save: compare-and-set on the
/// version, and what it saved is what loads.
pub async fn derived_saves_are_saves(store: &dyn Store) {
    let created = create(store, T0).await;
    let queued = step(store, &created, Input::Reconcile, T0 + 10)
        .await
        .expect("derived save");
    assert_eq!(
        store.load_run(&queued.run.id).await.expect("load_run"),
        queued
    );
    let mut again = created.clone();
    machine::apply(&mut again, Input::Reconcile, T0 + 20).expect("apply");
    let stale = store
        .save_run(
            &created.run.id,
            created.run.version,
            &StateDiff::between(&created, &again),
            &again,
            &[],
            &[],
            T0 + 20,
            Durability::Derived,
        )
        .await;
    assert!(
        matches!(stale, Err(crate::Error::Conflict(_))),
        "a derived save at a stale version conflicts: {stale:?}"
    );
}

/// `load_run_from` reads what `load_run` reads, whether the known state is
/// current (workers changed tasks since) or stale (an engine saved since).
pub async fn load_run_from_a_known_state(store: &dyn Store) {
    let saved = create_queued(store, T0).await;
    let id = saved.run.id.clone();
    loads_alike(store, &id, &saved, "nothing changed").await;
    store
        .claim_task(&id, FIRST, 1, "w1", T0 + 20 + LEASE_MS, T0 + 20)
        .await
        .expect("claim")
        .expect("claimed");
    store
        .complete_task(
            &fence(&id, FIRST, 1, "w1"),
            &succeeded(FIRST, vec![artifact("requirements", "x")]),
            T0 + 30,
        )
        .await
        .expect("complete");
    loads_alike(store, &id, &saved, "a worker completed a task").await;
    let loaded = store.load_run(&id).await.expect("load_run");
    let next = step(store, &loaded, Input::Reconcile, T0 + 40)
        .await
        .expect("reconcile");
    loads_alike(
        store,
        &id,
        &saved,
        "an engine saved since (stale known state)",
    )
    .await;
    loads_alike(store, &id, &next, "as saved").await;
    match store.load_run_from(&RunId::generate(), &next).await {
        Err(Error::RunNotFound(_)) => {}
        other => panic!("unknown run: expected RunNotFound, got {other:?}"),
    }
}

/// `load_run_from(id, known)` returns what `load_run(id)` does.
async fn loads_alike(store: &dyn Store, id: &RunId, known: &RunState, what: &str) {
    assert_eq!(
        store.load_run_from(id, known).await.expect("load_run_from"),
        store.load_run(id).await.expect("load_run"),
        "{what}"
    );
}

/// Journal records carried by an outcome commit with it, behind its fence: a
/// refused completion writes none; one already journaled is kept as it was.
pub async fn journal_commits_with_the_outcome(store: &dyn Store) {
    let state = create_queued(store, T0).await;
    let id = state.run.id.clone();
    let lease_until = T0 + 20 + LEASE_MS;
    store
        .claim_task(&id, FIRST, 1, "w1", lease_until, T0 + 20)
        .await
        .expect("claim")
        .expect("claimed");
    let written = llm_call(&id, 1, "h0", "{\"text\":\"zero\"}");
    store.record_llm_call(&written).await.expect("record");
    let mut again = llm_call(&id, 1, "h0", "{\"text\":\"changed\"}");
    again.created_at = T0 + 50;
    let mut next = llm_call(&id, 1, "h1", "{\"text\":\"one\"}");
    next.step = 1;
    let mut outcome = succeeded(FIRST, vec![artifact("requirements", "x")]);
    outcome.llm_calls = vec![again, next.clone()];

    assert_lease_lost(
        store
            .complete_task(&fence(&id, FIRST, 1, "w2"), &outcome, T0 + 30)
            .await,
        "wrong owner",
    );
    assert_eq!(
        store.list_llm_calls(&id).await.expect("list"),
        vec![written.clone()],
        "a refused completion journals nothing"
    );
    store
        .complete_task(&fence(&id, FIRST, 1, "w1"), &outcome, T0 + 30)
        .await
        .expect("complete");
    assert_eq!(
        store.list_llm_calls(&id).await.expect("list"),
        vec![written, next],
        "committed with the outcome; the step already journaled is kept"
    );
}

/// Journaled LLM calls: recording is idempotent, look-ups find the latest.
pub async fn llm_journal_round_trip(store: &dyn Store) {
    let (state, events) = new_run(T0);
    store
        .create_run(&state, &events, T0)
        .await
        .expect("create_run");
    let id = state.run.id.clone();
    let first = llm_call(&id, 1, "h1", "{\"text\":\"one\"}");
    store.record_llm_call(&first).await.expect("record");
    let mut again = first.clone();
    again.response = "{\"text\":\"changed\"}".to_string();
    store
        .record_llm_call(&again)
        .await
        .expect("recording twice is not an error");
    let calls = store.list_llm_calls(&id).await.expect("list");
    assert_eq!(
        calls,
        vec![first.clone()],
        "a second record of one step is ignored"
    );

    let stray = llm_call(&RunId("no-such-run".into()), 1, "h1", "{\"text\":\"lost\"}");
    assert!(
        store.record_llm_call(&stray).await.is_err(),
        "no journal record for a run that does not exist"
    );

    let second = llm_call(&id, 2, "h1", "{\"text\":\"two\"}");
    store
        .record_llm_call(&second)
        .await
        .expect("record attempt 2");
    let found = store.find_llm_call(&id, FIRST, "h1").await.expect("find");
    assert_eq!(found, Some(second.clone()), "find returns the latest call");
    assert_eq!(
        store.find_llm_call(&id, FIRST, "nope").await.expect("find"),
        None
    );
    assert_eq!(
        store.find_llm_call(&id, "other", "h1").await.expect("find"),
        None
    );
    assert_eq!(
        store
            .find_llm_call(&RunId::generate(), FIRST, "h1")
            .await
            .expect("find in an unknown run"),
        None
    );
    assert_eq!(
        store.list_llm_calls(&id).await.expect("list"),
        vec![first, second]
    );
}

/// An event query by kind returns exactly that kind, in order.
pub async fn events_filter_by_kind(store: &dyn Store) {
    let (state, events) = new_run(T0);
    store
        .create_run(&state, &events, T0)
        .await
        .expect("create_run");
    let id = state.run.id.clone();
    store
        .append_events(
            &id,
            &[
                NewEvent::task(EventKind::ChannelMessage, FIRST, "to team"),
                NewEvent::run(EventKind::HumanInput, "hello"),
                NewEvent::task(EventKind::ChannelMessage, FIRST, "again"),
            ],
            T0 + 1,
        )
        .await
        .expect("append");
    let query = EventQuery {
        kind: Some(EventKind::ChannelMessage),
        ..EventQuery::default()
    };
    let got = store.list_events(&id, query).await.expect("by kind");
    let messages: Vec<&str> = got.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(messages, ["to team", "again"]);
    assert!(got[0].seq < got[1].seq);
    let after = EventQuery {
        after_seq: got[1].seq,
        ..query
    };
    assert!(
        store
            .list_events(&id, after)
            .await
            .expect("none of that kind after")
            .is_empty()
    );
    let one = EventQuery { limit: 1, ..query };
    assert_eq!(store.list_events(&id, one).await.expect("limit").len(), 1);
    match store.list_events(&RunId::generate(), query).await {
        Err(Error::RunNotFound(_)) => {}
        other => panic!("unknown run by kind: expected RunNotFound, got {other:?}"),
    }
    let all = store
        .list_events(&id, EventQuery::default())
        .await
        .expect("all");
    assert_eq!(all.len(), events.len() + 3);
}

/// A token as the API would mint it (the hash is of nothing in particular).
fn api_token(id: &str, name: &str, scopes: &[&str], created_at: Millis) -> ApiToken {
    ApiToken {
        id: id.to_string(),
        name: name.to_string(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        secret_hash: format!("{:064x}", created_at),
        created_at,
        revoked_at: None,
    }
}

/// API tokens: create, get, list (oldest first, revoked ones on request),
/// revoke (idempotent); duplicate and unknown ids.
pub async fn api_tokens_round_trip(store: &dyn Store) {
    // Ids of this check's own: the database may hold other tokens.
    let prefix = RunId::generate().to_string();
    let older = api_token(&format!("{prefix}a"), "ci", &["read", "write"], T0);
    let newer = api_token(&format!("{prefix}b"), "dashboard", &[], T0 + 5);
    let ours = |tokens: Vec<ApiToken>| -> Vec<ApiToken> {
        tokens
            .into_iter()
            .filter(|t| t.id.starts_with(&prefix))
            .collect()
    };

    // The newer one first: listing goes by creation time, not insertion.
    store.create_token(&newer).await.expect("create newer");
    store.create_token(&older).await.expect("create older");
    let mut imposter = api_token(&older.id, "imposter", &["admin"], T0 + 9);
    imposter.secret_hash = "0".repeat(64);
    assert!(
        matches!(store.create_token(&imposter).await, Err(Error::TokenExists(ref id)) if *id == older.id),
        "creating a token with an existing id is refused"
    );
    assert_eq!(
        store.get_token(&older.id).await.expect("get"),
        Some(older.clone()),
        "a token round-trips, and a refused duplicate changed nothing"
    );
    assert_eq!(
        store.get_token(&newer.id).await.expect("get"),
        Some(newer.clone()),
        "empty scopes round-trip"
    );
    assert_eq!(
        store
            .get_token(&format!("{prefix}none"))
            .await
            .expect("get unknown"),
        None
    );
    assert_eq!(
        ours(store.list_tokens(false).await.expect("list")),
        vec![older.clone(), newer.clone()],
        "oldest first"
    );

    let unknown = format!("{prefix}none");
    match store.revoke_token(&unknown, T0 + 10).await {
        Err(Error::TokenNotFound(id)) => assert_eq!(id, unknown),
        other => panic!("revoking an unknown token: expected TokenNotFound, got {other:?}"),
    }

    let revoked = store
        .revoke_token(&older.id, T0 + 10)
        .await
        .expect("revoke");
    assert_eq!(
        revoked,
        ApiToken {
            revoked_at: Some(T0 + 10),
            ..older.clone()
        },
        "revoke returns the revoked token"
    );
    assert_eq!(
        store
            .revoke_token(&older.id, T0 + 20)
            .await
            .expect("revoke again"),
        revoked,
        "revoking twice keeps the first time"
    );
    assert_eq!(
        store.get_token(&older.id).await.expect("get revoked"),
        Some(revoked.clone()),
        "a revoked token is still found by id"
    );
    assert_eq!(
        ours(store.list_tokens(false).await.expect("list")),
        vec![newer.clone()],
        "revoked tokens are left out by default"
    );
    assert_eq!(
        ours(store.list_tokens(true).await.expect("list all")),
        vec![revoked, newer],
        "revoked tokens are listed on request, in creation order"
    );
}

/// The stats of a store that holds nothing: every list empty, no dead
/// letters. Needs a fresh database (it is not part of [`run_all`]).
pub async fn stats_of_an_empty_store(store: &dyn Store) {
    assert_eq!(store.stats().await.expect("stats"), Stats::default());
}

/// The histogram bucket of a duration, as `stats` must compute it.
fn bucket_of(duration: Millis) -> usize {
    TASK_DURATION_BUCKETS_MS
        .iter()
        .position(|&bound| duration <= bound)
        .unwrap_or(TASK_DURATION_BUCKETS_MS.len())
}

/// Counts keyed by text forms, for comparing stats taken at two times.
type Counts = BTreeMap<String, i64>;

fn counts<'a>(pairs: impl IntoIterator<Item = (String, &'a u64)>) -> Counts {
    pairs
        .into_iter()
        .map(|(k, n)| (k, i64::try_from(*n).expect("a count fits i64")))
        .collect()
}

/// `after - before`, without the keys that did not change.
fn delta(before: &Counts, after: &Counts) -> Counts {
    after
        .iter()
        .map(|(k, n)| (k.clone(), n - before.get(k).copied().unwrap_or(0)))
        .chain(
            before
                .iter()
                .filter(|(k, _)| !after.contains_key(*k))
                .map(|(k, n)| (k.clone(), -n)),
        )
        .filter(|(_, n)| *n != 0)
        .collect()
}

fn run_counts(stats: &Stats) -> Counts {
    counts(
        stats
            .runs_by_status
            .iter()
            .map(|(s, n)| (s.as_str().to_string(), n)),
    )
}

fn task_counts(stats: &Stats) -> Counts {
    counts(
        stats
            .tasks_by_role_status
            .iter()
            .map(|(r, s, n)| (format!("{} {}", r.as_str(), s.as_str()), n)),
    )
}

fn gate_counts(stats: &Stats) -> Counts {
    counts(
        stats
            .gates_by_kind_status
            .iter()
            .map(|(k, s, n)| (format!("{} {}", k.as_str(), s.as_str()), n)),
    )
}

/// Histograms by role: `(buckets, count, sum_ms)` as signed numbers.
type Histograms = BTreeMap<String, (Vec<i64>, i64, i64)>;

fn histograms(stats: &Stats) -> Histograms {
    stats
        .task_durations
        .iter()
        .map(|(role, h)| {
            assert_eq!(
                h.buckets.len(),
                TASK_DURATION_BUCKETS_MS.len() + 1,
                "the histogram of {role} has a bucket per bound and +Inf"
            );
            assert_eq!(
                h.buckets.iter().sum::<u64>(),
                h.count,
                "the buckets of {role} are not cumulative and add up to the count"
            );
            assert!(h.count > 0, "only roles with durations are listed");
            let buckets = h.buckets.iter().map(|&n| n as i64).collect();
            (
                role.as_str().to_string(),
                (buckets, h.count as i64, h.sum_ms),
            )
        })
        .collect()
}

fn histogram_delta(before: &Histograms, after: &Histograms) -> Histograms {
    let empty = (vec![0; TASK_DURATION_BUCKETS_MS.len() + 1], 0, 0);
    after
        .iter()
        .map(|(role, (buckets, count, sum))| {
            let (b0, c0, s0) = before.get(role).unwrap_or(&empty);
            let buckets = buckets.iter().zip(b0).map(|(a, b)| a - b).collect();
            (role.clone(), (buckets, count - c0, sum - s0))
        })
        .filter(|(_, (_, count, sum))| *count != 0 || *sum != 0)
        .collect()
}

/// Every list of the stats is sorted by its text forms, without duplicates.
fn assert_sorted(stats: &Stats) {
    fn strictly_sorted(keys: &[String], what: &str) {
        assert!(
            keys.windows(2).all(|w| w[0] < w[1]),
            "{what} are sorted by their text forms: {keys:?}"
        );
    }
    let runs: Vec<String> = stats
        .runs_by_status
        .iter()
        .map(|(s, _)| s.as_str().into())
        .collect();
    strictly_sorted(&runs, "runs by status");
    let tasks: Vec<String> = stats
        .tasks_by_role_status
        .iter()
        .map(|(r, s, _)| format!("{}\0{}", r.as_str(), s.as_str()))
        .collect();
    strictly_sorted(&tasks, "tasks by role and status");
    let roles: Vec<String> = stats
        .task_durations
        .iter()
        .map(|(r, _)| r.as_str().into())
        .collect();
    strictly_sorted(&roles, "task durations");
    let gates: Vec<String> = stats
        .gates_by_kind_status
        .iter()
        .map(|(k, s, _)| format!("{}\0{}", k.as_str(), s.as_str()))
        .collect();
    strictly_sorted(&gates, "gates by kind and status");
    let llm: Vec<String> = stats
        .llm
        .iter()
        .map(|t| format!("{}\0{}", t.provider, t.model))
        .collect();
    strictly_sorted(&llm, "LLM totals");
    for (what, counts) in [
        ("runs", run_counts(stats)),
        ("tasks", task_counts(stats)),
        ("gates", gate_counts(stats)),
    ] {
        assert!(
            counts.values().all(|&n| n > 0),
            "only non-zero groups of {what} are listed: {counts:?}"
        );
    }
}

/// Run, task, gate, dead letter and LLM call aggregates count exactly what
/// was stored, and task durations land in their buckets. Compares the stats
/// before and after, so other runs in the database do not matter (as long
/// as nothing else writes meanwhile).
pub async fn stats_count_what_is_stored(store: &dyn Store) {
    let before = store.stats().await.expect("stats before");
    assert_sorted(&before);

    // Run A: the first task succeeds after 700 ms (bucket 4, 500 < d <= 1000).
    let a = create_queued(store, T0).await.run.id;
    store
        .claim_task(&a, FIRST, 1, "w1", T0 + 20 + LEASE_MS, T0 + 20)
        .await
        .expect("claim")
        .expect("claimed");
    store
        .complete_task(
            &fence(&a, FIRST, 1, "w1"),
            &succeeded(FIRST, vec![]),
            T0 + 720,
        )
        .await
        .expect("complete");
    let a_state = store.load_run(&a).await.expect("load_run");
    step(store, &a_state, Input::Reconcile, T0 + 730)
        .await
        .expect("reconcile after success");

    // Run B: the first task fails for good after exactly 10 s (a bound is
    // inclusive: bucket 6), and goes to the dead letter queue.
    let b = create_queued(store, T0).await.run.id;
    store
        .claim_task(&b, FIRST, 1, "w1", T0 + 20 + LEASE_MS, T0 + 20)
        .await
        .expect("claim")
        .expect("claimed");
    store
        .complete_task(
            &fence(&b, FIRST, 1, "w1"),
            &failed(FIRST, false, vec![]),
            T0 + 10_020,
        )
        .await
        .expect("fail");
    let b_state = store.load_run(&b).await.expect("load_run");
    let b_state = step(store, &b_state, Input::Reconcile, T0 + 10_030)
        .await
        .expect("dead letter saved");
    assert_eq!(b_state.task(FIRST).unwrap().status, TaskStatus::Dead);

    // Run C: the first task succeeds after more than an hour (+Inf).
    let c = create_queued(store, T0).await.run.id;
    let long = TASK_DURATION_BUCKETS_MS[TASK_DURATION_BUCKETS_MS.len() - 1] + 1;
    store
        .claim_task(&c, FIRST, 1, "w1", T0 + 20 + 2 * long, T0 + 20)
        .await
        .expect("claim")
        .expect("claimed");
    store
        .complete_task(
            &fence(&c, FIRST, 1, "w1"),
            &succeeded(FIRST, vec![]),
            T0 + 20 + long,
        )
        .await
        .expect("complete");

    // LLM calls of a provider of this check's own: two of one model, one of another.
    let provider = format!("stats-{a}");
    for (attempt, model) in [(1, "model-a"), (2, "model-a"), (3, "model-b")] {
        let mut call = llm_call(&a, attempt, "h", "{}");
        call.provider = provider.clone();
        call.model = model.to_string();
        store.record_llm_call(&call).await.expect("record");
    }

    let after = store.stats().await.expect("stats after");
    assert_sorted(&after);

    // What the three runs hold, counted here.
    let mut runs = Counts::new();
    let mut tasks = Counts::new();
    let mut gates = Counts::new();
    let mut durations = Histograms::new();
    for id in [&a, &b, &c] {
        let state = store.load_run(id).await.expect("load_run");
        *runs.entry(state.run.status.as_str().into()).or_default() += 1;
        for t in &state.tasks {
            let key = format!("{} {}", t.role.as_str(), t.status.as_str());
            *tasks.entry(key).or_default() += 1;
            if let (true, Some(started), Some(finished)) =
                (t.status.is_terminal(), t.started_at, t.finished_at)
            {
                let d = finished - started;
                let h = durations
                    .entry(t.role.as_str().into())
                    .or_insert_with(|| (vec![0; TASK_DURATION_BUCKETS_MS.len() + 1], 0, 0));
                h.0[bucket_of(d)] += 1;
                h.1 += 1;
                h.2 += d;
            }
        }
        for g in &state.gates {
            *gates
                .entry(format!("{} {}", g.kind.as_str(), g.status.as_str()))
                .or_default() += 1;
        }
    }
    assert_eq!(delta(&run_counts(&before), &run_counts(&after)), runs);
    assert_eq!(runs.values().sum::<i64>(), 3);
    assert_eq!(delta(&task_counts(&before), &task_counts(&after)), tasks);
    let first_role = a_state.task(FIRST).unwrap().role.as_str();
    assert_eq!(tasks[&format!("{first_role} SUCCEEDED")], 2);
    assert_eq!(tasks[&format!("{first_role} DEAD")], 1);
    assert_eq!(delta(&gate_counts(&before), &gate_counts(&after)), gates);
    assert!(!gates.is_empty(), "the sdlc workflow has gates");

    // Durations: exactly the three first tasks, in buckets 4, 6 and +Inf.
    let mut expected = vec![0; TASK_DURATION_BUCKETS_MS.len() + 1];
    expected[4] = 1;
    expected[6] = 1;
    expected[TASK_DURATION_BUCKETS_MS.len()] = 1;
    assert_eq!(
        durations,
        BTreeMap::from([(first_role.to_string(), (expected, 3, 700 + 10_000 + long))]),
        "only the three finished tasks have durations"
    );
    assert_eq!(
        histogram_delta(&histograms(&before), &histograms(&after)),
        durations
    );

    // Dead letters: B's, until it is replayed.
    assert_eq!(after.dead_letters, before.dead_letters + 1);
    let letter = store
        .list_dead_letters(Some(&b), false)
        .await
        .expect("list_dead_letters")
        .into_iter()
        .next()
        .expect("B has a dead letter");
    store
        .mark_replayed(letter.id, T0 + 20_000)
        .await
        .expect("mark_replayed");
    assert_eq!(
        store.stats().await.expect("stats").dead_letters,
        before.dead_letters,
        "a replayed dead letter is not counted"
    );

    // LLM totals of this check's provider, by model.
    let ours: Vec<LlmTotals> = after
        .llm
        .into_iter()
        .filter(|t| t.provider == provider)
        .collect();
    let totals = |model: &str, calls: u64| LlmTotals {
        provider: provider.clone(),
        model: model.to_string(),
        calls,
        input_tokens: 10 * calls,
        output_tokens: 20 * calls,
        cache_read_tokens: 3 * calls,
        cache_write_tokens: 4 * calls,
        cost_usd: 0.25 * calls as f64,
    };
    assert_eq!(ours, vec![totals("model-a", 2), totals("model-b", 1)]);
}

// ---------------------------------------------------------------------------
// Helpers

/// A fresh run of the `sdlc` workflow (not yet stored) and its creation events.
pub fn new_run(now: Millis) -> (RunState, Vec<NewEvent>) {
    let workflow = Workflow::builtin("sdlc").expect("the built-in sdlc workflow exists");
    RunState::new_run(
        RunId::generate(),
        "Build a small CRUD app for managing TODO items",
        json!({"stack": "python", "notes": ["keep it small"], "budget": 1.5}),
        &workflow,
        RunSettings::default(),
        "scripted",
        now,
    )
}

/// Store a fresh run and return its state as stored.
async fn create(store: &dyn Store, now: Millis) -> RunState {
    let (state, events) = new_run(now);
    store
        .create_run(&state, &events, now)
        .await
        .expect("create_run");
    state
}

/// What the state machine decides from `state` on `input`, as the engine
/// takes it apart to save it.
struct Decided {
    after: RunState,
    diff: StateDiff,
    events: Vec<NewEvent>,
    dead: Vec<NewDeadLetter>,
}

fn decide(state: &RunState, input: Input, now: Millis) -> Decided {
    let mut after = state.clone();
    let actions =
        machine::apply(&mut after, input, now).expect("the state machine accepts the input");
    let diff = StateDiff::between(state, &after);
    let mut events = Vec::new();
    let mut dead = Vec::new();
    for action in actions {
        match action {
            Action::Emit(ev) => events.push(ev),
            Action::DeadLetter {
                task_id,
                role,
                attempts,
                error,
            } => dead.push(NewDeadLetter {
                task_id,
                role,
                attempts,
                error,
            }),
            Action::Dispatch { .. } => {}
        }
    }
    Decided {
        after,
        diff,
        events,
        dead,
    }
}

/// What the engine does on a step: apply `input`, save the diff, the events
/// and dead letters. Returns the saved state (with its new version).
/// Apply `input` to `state` and save the step as the engine does (a
/// reconcile as [`Durability::Derived`], anything else as durable).
async fn step(
    store: &dyn Store,
    state: &RunState,
    input: Input,
    now: Millis,
) -> crate::Result<RunState> {
    let reconcile = matches!(input, Input::Reconcile);
    let Decided {
        mut after,
        diff,
        events,
        dead,
    } = decide(state, input, now);
    // As the engine saves: a reconcile is a derived step.
    let durability = if reconcile {
        Durability::Derived
    } else {
        Durability::Durable
    };
    let (id, version) = (&state.run.id, state.run.version);
    let version = store
        .save_run(id, version, &diff, &after, &events, &dead, now, durability)
        .await?;
    assert_eq!(
        version,
        state.run.version + 1,
        "save_run returns the next version"
    );
    after.run.version = version;
    Ok(after)
}

/// Create a run and reconcile it once: RUNNING, with `requirements` QUEUED at attempt 1.
async fn create_queued(store: &dyn Store, now: Millis) -> RunState {
    let state = create(store, now).await;
    let state = step(store, &state, Input::Reconcile, now + 10)
        .await
        .expect("first reconcile");
    let first = state.task(FIRST).expect("the first task");
    assert_eq!(first.status, TaskStatus::Queued);
    assert_eq!(first.attempt, 1);
    state
}

/// [`create_queued`], then the first task claimed by `w1` (attempt 1).
async fn create_claimed(store: &dyn Store, now: Millis) -> RunState {
    let state = create_queued(store, now).await;
    store
        .claim_task(&state.run.id, FIRST, 1, "w1", now + 20 + LEASE_MS, now + 20)
        .await
        .expect("claim")
        .expect("claimed");
    state
}

fn fence(run: &RunId, task: &str, attempt: u32, owner: &str) -> Fence {
    Fence {
        run_id: run.clone(),
        task_id: task.to_string(),
        attempt,
        owner: owner.to_string(),
    }
}

fn succeeded(task: &str, artifacts: Vec<NewArtifact>) -> TaskOutcome {
    TaskOutcome {
        status: TaskStatus::Succeeded,
        summary: Some(format!("{task} done")),
        verdict: None,
        error: None,
        retryable: true,
        events: vec![
            NewEvent::task(EventKind::ToolCall, task, "write_artifact")
                .with_data(json!({"tool": "write_artifact"})),
            NewEvent::task(EventKind::TaskSucceeded, task, format!("{task} succeeded")),
        ],
        artifacts,
        usage: Usage {
            input_tokens: 100,
            output_tokens: 50,
            cache_read_tokens: 10,
            cache_write_tokens: 0,
            cost_usd: 0.25,
        },
        llm_calls: Vec::new(),
    }
}

fn failed(task: &str, retryable: bool, artifacts: Vec<NewArtifact>) -> TaskOutcome {
    TaskOutcome {
        status: TaskStatus::Failed,
        summary: None,
        verdict: None,
        error: Some("the model returned no artifact".into()),
        retryable,
        events: vec![NewEvent::task(
            EventKind::TaskFailed,
            task,
            format!("{task} failed"),
        )],
        artifacts,
        usage: Usage {
            input_tokens: 10,
            output_tokens: 5,
            cost_usd: 0.125,
            ..Usage::default()
        },
        llm_calls: Vec::new(),
    }
}

fn artifact(name: &str, content: &str) -> NewArtifact {
    NewArtifact {
        name: name.to_string(),
        kind: "requirements".into(),
        path: None,
        content: content.to_string(),
        metadata: json!({"words": content.split_whitespace().count()}),
    }
}

async fn task(store: &dyn Store, run: &RunId, id: &str) -> Task {
    store
        .list_tasks(run)
        .await
        .expect("list_tasks")
        .into_iter()
        .find(|t| t.id == id)
        .unwrap_or_else(|| panic!("task {id} of run {run} is stored"))
}

async fn event_count(store: &dyn Store, run: &RunId) -> usize {
    store
        .list_events(run, EventQuery::default())
        .await
        .expect("list_events")
        .len()
}

/// Sequence numbers of the run's events are exactly 1..=n.
async fn assert_seqs_contiguous(store: &dyn Store, run: &RunId) -> usize {
    let events = store
        .list_events(run, EventQuery::default())
        .await
        .expect("list_events");
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let expected: Vec<i64> = (1..=events.len() as i64).collect();
    assert_eq!(
        seqs, expected,
        "event seqs of run {run} are 1..=n with no gaps"
    );
    events.len()
}

fn assert_conflict<T>(result: crate::Result<T>, what: &str) {
    match result {
        Err(Error::Conflict(_)) => {}
        other => panic!(
            "{what}: expected Error::Conflict, got {:?}",
            other.map(|_| "Ok")
        ),
    }
}

fn assert_lease_lost<T>(result: crate::Result<T>, what: &str) {
    match result {
        Err(Error::LeaseLost { .. }) => {}
        other => panic!(
            "{what}: expected Error::LeaseLost, got {:?}",
            other.map(|_| "Ok")
        ),
    }
}

fn assert_run_not_found<T>(result: crate::Result<T>, what: &str) {
    match result {
        Err(Error::RunNotFound(_)) => {}
        other => panic!(
            "{what}: expected Error::RunNotFound, got {:?}",
            other.map(|_| "Ok")
        ),
    }
}

fn refs_of<'a>(refs: &'a [TaskRef], run: &RunId) -> Vec<&'a TaskRef> {
    refs.iter().filter(|r| &r.run_id == run).collect()
}

// ---------------------------------------------------------------------------
// Checks

/// A created run loads back exactly: run row, tasks in plan order, gates.
pub async fn create_and_load_round_trip(store: &dyn Store) {
    let (state, events) = new_run(T0);
    store
        .create_run(&state, &events, T0)
        .await
        .expect("create_run");
    let loaded = store.load_run(&state.run.id).await.expect("load_run");
    assert_eq!(loaded.run, state.run, "the run row round-trips");
    assert_eq!(loaded.tasks, state.tasks, "tasks round-trip in plan order");
    assert_eq!(loaded.gates, state.gates, "gates round-trip");
    assert_eq!(
        store.get_run(&state.run.id).await.expect("get_run"),
        state.run
    );
    assert_eq!(
        store.list_tasks(&state.run.id).await.expect("list_tasks"),
        state.tasks
    );
    let stored = store
        .list_events(&state.run.id, EventQuery::default())
        .await
        .expect("list_events");
    assert_eq!(stored.len(), events.len());
    for (i, (got, want)) in stored.iter().zip(&events).enumerate() {
        assert_eq!(got.seq, i as i64 + 1);
        assert_eq!(got.run_id, state.run.id);
        assert_eq!(got.kind, want.kind);
        assert_eq!(got.task_id, want.task_id);
        assert_eq!(got.message, want.message);
        assert_eq!(got.data, want.data);
        assert_eq!(got.created_at, T0);
    }
    assert!(
        store
            .active_runs()
            .await
            .expect("active_runs")
            .contains(&state.run.id),
        "a PENDING run is active"
    );
    // The same run twice is refused and changes nothing.
    assert!(
        store.create_run(&state, &events, T0).await.is_err(),
        "creating a run twice fails"
    );
    assert_eq!(event_count(store, &state.run.id).await, events.len());
}

/// Events of one run are numbered 1, 2, 3, ... across every writer.
pub async fn event_seqs_have_no_gaps(store: &dyn Store) {
    let state = create(store, T0).await;
    let id = state.run.id.clone();
    let n0 = assert_seqs_contiguous(store, &id).await;

    let seqs = store
        .append_events(
            &id,
            &[
                NewEvent::run(EventKind::Checkpoint, "one"),
                NewEvent::run(EventKind::ChannelMessage, "two").with_data(json!({"to": "pm"})),
            ],
            T0 + 1,
        )
        .await
        .expect("append_events");
    assert_eq!(seqs, vec![n0 as i64 + 1, n0 as i64 + 2]);
    assert_eq!(
        store
            .append_events(&id, &[], T0 + 1)
            .await
            .expect("append nothing"),
        Vec::<i64>::new()
    );

    step(store, &state, Input::Reconcile, T0 + 10)
        .await
        .expect("reconcile");
    let owner = "worker-a";
    let claimed = store
        .claim_task(&id, FIRST, 1, owner, T0 + 20 + LEASE_MS, T0 + 20)
        .await
        .expect("claim")
        .expect("the queued task is claimed");
    assert_eq!(claimed.status, TaskStatus::Running);
    store
        .complete_task(
            &fence(&id, FIRST, 1, owner),
            &succeeded(FIRST, vec![]),
            T0 + 30,
        )
        .await
        .expect("complete");
    let state = store.load_run(&id).await.expect("load_run");
    let _ = step(store, &state, Input::Reconcile, T0 + 40)
        .await
        .expect("reconcile after completion");

    let n = assert_seqs_contiguous(store, &id).await;
    assert!(n > n0 + 5, "every writer appended events ({n0} -> {n})");
    let events = store
        .list_events(&id, EventQuery::default())
        .await
        .expect("list_events");
    let started = events
        .iter()
        .find(|e| e.kind == EventKind::TaskStarted)
        .expect("claim_task appends task_started");
    assert_eq!(started.task_id.as_deref(), Some(FIRST));
    assert_eq!(started.data["owner"], json!(owner));
    assert_eq!(started.data["attempt"], json!(1));
    assert!(
        events.iter().any(|e| e.kind == EventKind::TaskSucceeded),
        "complete_task appends the outcome's events"
    );

    // Paging through the log.
    let page = store
        .list_events(
            &id,
            EventQuery {
                after_seq: 2,
                limit: 3,
                kind: None,
            },
        )
        .await
        .expect("list_events page");
    assert_eq!(
        page.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    let tail = store
        .list_events(
            &id,
            EventQuery {
                after_seq: n as i64,
                limit: 0,
                kind: None,
            },
        )
        .await
        .expect("list_events at the end");
    assert!(tail.is_empty());
}

/// Only one claim of an attempt wins; stale attempts are not claimed.
pub async fn claim_is_exclusive(store: &dyn Store) {
    let state = create_queued(store, T0).await;
    let id = state.run.id.clone();
    let before = event_count(store, &id).await;

    assert!(
        store
            .claim_task(&id, FIRST, 2, "w1", T0 + LEASE_MS, T0 + 20)
            .await
            .expect("claim of a future attempt")
            .is_none(),
        "an attempt that was not queued is not claimed"
    );
    assert!(
        store
            .claim_task(&id, "plan", 1, "w1", T0 + LEASE_MS, T0 + 20)
            .await
            .expect("claim of a pending task")
            .is_none(),
        "a task that is not QUEUED is not claimed"
    );
    assert_eq!(
        event_count(store, &id).await,
        before,
        "failed claims write nothing"
    );

    let task = store
        .claim_task(&id, FIRST, 1, "w1", T0 + 20 + LEASE_MS, T0 + 20)
        .await
        .expect("claim")
        .expect("the first claim wins");
    assert_eq!(task.run_id, id);
    assert_eq!(task.id, FIRST);
    assert_eq!(task.status, TaskStatus::Running);
    assert_eq!(task.attempt, 1);
    assert_eq!(task.lease_owner.as_deref(), Some("w1"));
    assert_eq!(task.lease_expires_at, Some(T0 + 20 + LEASE_MS));
    assert_eq!(task.started_at, Some(T0 + 20));
    assert_eq!(
        task,
        self::task(store, &id, FIRST).await,
        "claim returns the stored row"
    );
    assert_eq!(event_count(store, &id).await, before + 1);

    assert!(
        store
            .claim_task(&id, FIRST, 1, "w2", T0 + 30 + LEASE_MS, T0 + 30)
            .await
            .expect("duplicate claim")
            .is_none(),
        "a duplicate claim of the same attempt returns None"
    );
    let stored = self::task(store, &id, FIRST).await;
    assert_eq!(
        stored.lease_owner.as_deref(),
        Some("w1"),
        "the duplicate changed nothing"
    );
    assert_eq!(event_count(store, &id).await, before + 1);
}

/// Heartbeats extend the lease only while it is held.
pub async fn heartbeat_needs_the_lease(store: &dyn Store) {
    let state = create_queued(store, T0).await;
    let id = state.run.id.clone();
    let owner = "w1";
    store
        .claim_task(&id, FIRST, 1, owner, T0 + 20 + LEASE_MS, T0 + 20)
        .await
        .expect("claim")
        .expect("claimed");
    let f = fence(&id, FIRST, 1, owner);
    assert!(store.heartbeat(&f, T0 + 90_000).await.expect("heartbeat"));
    assert_eq!(
        task(store, &id, FIRST).await.lease_expires_at,
        Some(T0 + 90_000)
    );
    assert!(
        !store
            .heartbeat(&fence(&id, FIRST, 1, "w2"), T0 + 99_000)
            .await
            .expect("heartbeat of another owner"),
        "another owner cannot heartbeat"
    );
    assert!(
        !store
            .heartbeat(&fence(&id, FIRST, 2, owner), T0 + 99_000)
            .await
            .expect("heartbeat of another attempt"),
        "another attempt cannot heartbeat"
    );
    assert_eq!(
        task(store, &id, FIRST).await.lease_expires_at,
        Some(T0 + 90_000)
    );

    // The sweeper reclaims the task: the lease is lost.
    let state = store.load_run(&id).await.expect("load_run");
    let state = step(
        store,
        &state,
        Input::LeaseExpired {
            task_id: FIRST.into(),
            attempt: 1,
            owner: Some(owner.into()),
        },
        T0 + 100_000,
    )
    .await
    .expect("lease expiry saved");
    assert_ne!(state.task(FIRST).unwrap().status, TaskStatus::Running);
    assert!(
        !store.heartbeat(&f, T0 + 200_000).await.expect("heartbeat"),
        "heartbeat after losing the lease returns false"
    );
    assert_lease_lost(
        store
            .complete_task(&f, &succeeded(FIRST, vec![]), T0 + 100_001)
            .await,
        "completion after the lease was reclaimed",
    );
}

/// Completion commits only for the holder of the attempt's unexpired lease,
/// and writes nothing otherwise.
pub async fn complete_is_fenced(store: &dyn Store) {
    let state = create_queued(store, T0).await;
    let id = state.run.id.clone();
    let owner = "w1";
    let lease_until = T0 + 20 + LEASE_MS;
    store
        .claim_task(&id, FIRST, 1, owner, lease_until, T0 + 20)
        .await
        .expect("claim")
        .expect("claimed");
    let events_before = event_count(store, &id).await;
    let run_before = store.get_run(&id).await.expect("get_run");
    let task_before = task(store, &id, FIRST).await;
    let outcome = succeeded(
        FIRST,
        vec![artifact("requirements", "The app manages TODO items.")],
    );

    let cases = [
        (fence(&id, FIRST, 1, "w2"), T0 + 30, "wrong owner"),
        (fence(&id, FIRST, 2, owner), T0 + 30, "wrong attempt"),
        (
            fence(&id, FIRST, 1, owner),
            lease_until + 1,
            "expired lease",
        ),
        (fence(&id, "plan", 1, owner), T0 + 30, "task not running"),
    ];
    for (f, now, what) in &cases {
        assert_lease_lost(store.complete_task(f, &outcome, *now).await, what);
        assert_eq!(
            event_count(store, &id).await,
            events_before,
            "{what}: no event written"
        );
        assert!(
            store
                .list_artifacts(&id, false)
                .await
                .expect("list_artifacts")
                .is_empty(),
            "{what}: no artifact written"
        );
        assert_eq!(
            task(store, &id, FIRST).await,
            task_before,
            "{what}: task unchanged"
        );
        assert_eq!(
            store.get_run(&id).await.expect("get_run"),
            run_before,
            "{what}: run unchanged"
        );
    }

    // An outcome must end the attempt.
    let mut bad = outcome.clone();
    bad.status = TaskStatus::Queued;
    assert!(
        store
            .complete_task(&fence(&id, FIRST, 1, owner), &bad, T0 + 30)
            .await
            .is_err(),
        "an outcome other than SUCCEEDED or FAILED is refused"
    );
    assert_eq!(task(store, &id, FIRST).await, task_before);

    // The holder commits, at the last moment of its lease.
    let mut outcome = outcome;
    outcome.verdict = Some(Verdict {
        verdict: VerdictKind::Pass,
        findings: vec!["clear scope".into()],
    });
    store
        .complete_task(&fence(&id, FIRST, 1, owner), &outcome, lease_until)
        .await
        .expect("the holder completes");
    let done = task(store, &id, FIRST).await;
    assert_eq!(done.status, TaskStatus::Succeeded);
    assert_eq!(done.result_summary.as_deref(), Some("requirements done"));
    assert_eq!(done.verdict, outcome.verdict);
    assert_eq!(done.lease_owner, None);
    assert_eq!(done.lease_expires_at, None);
    assert_eq!(done.finished_at, Some(lease_until));
    assert_eq!(done.cost_usd, 0.25);
    let run = store.get_run(&id).await.expect("get_run");
    assert_eq!(run.cost_usd, 0.25, "usage is added to the run");
    assert_eq!(run.tokens_in, 100);
    assert_eq!(run.tokens_out, 50);
    assert_eq!(
        run.version, run_before.version,
        "workers do not bump the version"
    );
    assert_eq!(
        event_count(store, &id).await,
        events_before + outcome.events.len()
    );
    let artifacts = store
        .list_artifacts(&id, false)
        .await
        .expect("list_artifacts");
    assert_eq!(artifacts.len(), 1);
    assert_eq!(artifacts[0].version, 1);
    assert_eq!(artifacts[0].task_id, FIRST);
    assert_eq!(artifacts[0].attempt, 1);
    assert_eq!(artifacts[0].content, "The app manages TODO items.");
    assert_eq!(artifacts[0].metadata, json!({"words": 5}));
    assert_eq!(artifacts[0].created_at, lease_until);

    // A second completion of the same attempt is refused.
    assert_lease_lost(
        store
            .complete_task(&fence(&id, FIRST, 1, owner), &outcome, T0 + 40)
            .await,
        "second completion",
    );
    assert_eq!(store.list_artifacts(&id, false).await.unwrap().len(), 1);
}

/// `save_run` is compare-and-set on the run version: a stale save writes
/// nothing; every save bumps the version; worker-owned totals are kept.
pub async fn save_run_is_compare_and_set(store: &dyn Store) {
    let state = create(store, T0).await;
    let id = state.run.id.clone();
    let v0 = state.run.version;
    let saved = step(store, &state, Input::Reconcile, T0 + 10)
        .await
        .expect("first save");
    assert_eq!(saved.run.version, v0 + 1);
    let loaded = store.load_run(&id).await.expect("load_run");
    assert_eq!(loaded.run.version, v0 + 1);
    assert_eq!(loaded.run.status, RunStatus::Running);
    assert_eq!(loaded.run.updated_at, T0 + 10);
    assert_eq!(loaded.tasks, saved.tasks, "task changes are saved");
    assert_eq!(loaded.gates, saved.gates);
    let events_after_first = assert_seqs_contiguous(store, &id).await;

    // A save from the stale state (version v0) conflicts and writes nothing.
    let mut stale = state.clone();
    let actions = machine::apply(
        &mut stale,
        Input::Cancel {
            reason: "stale".into(),
        },
        T0 + 20,
    )
    .expect("cancel");
    let events: Vec<NewEvent> = actions
        .into_iter()
        .filter_map(|a| match a {
            Action::Emit(e) => Some(e),
            _ => None,
        })
        .collect();
    let dead = vec![NewDeadLetter {
        task_id: FIRST.into(),
        role: state.task(FIRST).unwrap().role,
        attempts: 1,
        error: "never written".into(),
    }];
    assert_conflict(
        store
            .save_run(
                &id,
                v0,
                &StateDiff::between(&state, &stale),
                &stale,
                &events,
                &dead,
                T0 + 20,
                Durability::Durable,
            )
            .await,
        "save with a stale version",
    );
    let after = store.load_run(&id).await.expect("load_run");
    assert_eq!(after, loaded, "a conflicting save writes nothing");
    assert_eq!(event_count(store, &id).await, events_after_first);
    assert!(
        store
            .list_dead_letters(Some(&id), true)
            .await
            .expect("list_dead_letters")
            .is_empty()
    );

    // An empty save still bumps the version (it serializes engines), and
    // never writes the worker-owned totals from the engine's copy.
    let mut copy = after.clone();
    copy.run.cost_usd = 999.0;
    copy.run.tokens_in = 999;
    let version = store
        .save_run(
            &id,
            after.run.version,
            &StateDiff::default(),
            &copy,
            &[],
            &[],
            T0 + 30,
            Durability::Durable,
        )
        .await
        .expect("empty save");
    assert_eq!(version, after.run.version + 1);
    let run = store.get_run(&id).await.expect("get_run");
    assert_eq!(run.version, version);
    assert_eq!(run.cost_usd, 0.0, "the engine does not write cost");
    assert_eq!(run.tokens_in, 0, "the engine does not write tokens");
    assert_eq!(event_count(store, &id).await, events_after_first);
}

/// A save whose changed task was moved by a worker meanwhile (claimed or
/// completed) conflicts and writes nothing.
pub async fn save_run_conflicts_with_workers(store: &dyn Store) {
    // Claimed meanwhile: the engine cancels from a state where the task was QUEUED.
    let state = create_claimed(store, T0).await;
    let id = state.run.id.clone();
    let before = store.load_run(&id).await.expect("load_run");
    let events_before = event_count(store, &id).await;
    assert_conflict(
        step(
            store,
            &state,
            Input::Cancel {
                reason: "stop".into(),
            },
            T0 + 30,
        )
        .await,
        "save over a claimed task",
    );
    assert_eq!(
        store.load_run(&id).await.unwrap(),
        before,
        "nothing written"
    );
    assert_eq!(event_count(store, &id).await, events_before);

    // Completed meanwhile: the engine expires the lease from a state where
    // the task was RUNNING, but the worker completed it first.
    let running = before;
    store
        .complete_task(
            &fence(&id, FIRST, 1, "w1"),
            &succeeded(FIRST, vec![]),
            T0 + 40,
        )
        .await
        .expect("complete");
    let before = store.load_run(&id).await.expect("load_run");
    let events_before = event_count(store, &id).await;
    assert_conflict(
        step(
            store,
            &running,
            Input::LeaseExpired {
                task_id: FIRST.into(),
                attempt: 1,
                owner: Some("w1".into()),
            },
            T0 + 50,
        )
        .await,
        "save over a completed task",
    );
    let after = store.load_run(&id).await.expect("load_run");
    assert_eq!(after, before, "nothing written");
    assert_eq!(after.task(FIRST).unwrap().status, TaskStatus::Succeeded);
    assert_eq!(event_count(store, &id).await, events_before);

    // From the fresh state the same engine step goes through.
    step(store, &after, Input::Reconcile, T0 + 60)
        .await
        .expect("save from the fresh state");
}

/// Tasks added by a save come after the plan's tasks when loaded.
pub async fn new_tasks_keep_creation_order(store: &dyn Store) {
    let state = create(store, T0).await;
    let id = state.run.id.clone();
    let mut after = state.clone();
    let mut extra = state.task("backend").expect("a backend task").clone();
    extra.id = "aaa_added_first".into();
    extra.dedupe_key = format!("{id}/aaa_added_first/0");
    after.tasks.push(extra.clone());
    let mut second = extra.clone();
    second.id = "000_added_second".into();
    second.dedupe_key = format!("{id}/000_added_second/0");
    after.tasks.push(second);
    let diff = StateDiff::between(&state, &after);
    assert_eq!(diff.new_tasks.len(), 2);
    store
        .save_run(
            &id,
            state.run.version,
            &diff,
            &after,
            &[],
            &[],
            T0 + 10,
            Durability::Durable,
        )
        .await
        .expect("save new tasks");
    let ids: Vec<String> = store
        .load_run(&id)
        .await
        .expect("load_run")
        .tasks
        .into_iter()
        .map(|t| t.id)
        .collect();
    let want: Vec<String> = after.tasks.iter().map(|t| t.id.clone()).collect();
    assert_eq!(ids, want, "tasks load in creation order");

    // A save that fails halfway (a new task that already exists) writes
    // nothing, not even the parts before the failure.
    let saved = store.load_run(&id).await.expect("load_run");
    let events_before = event_count(store, &id).await;
    let mut again = saved.clone();
    again.run.status_reason = Some("should not be saved".into());
    let diff = StateDiff {
        run_changed: true,
        new_tasks: vec![extra],
        ..StateDiff::default()
    };
    let result = store
        .save_run(
            &id,
            saved.run.version,
            &diff,
            &again,
            &[NewEvent::run(EventKind::Checkpoint, "never written")],
            &[],
            T0 + 20,
            Durability::Durable,
        )
        .await;
    assert!(result.is_err(), "a duplicate task id is refused");
    assert_eq!(
        store.load_run(&id).await.expect("load_run"),
        saved,
        "nothing written"
    );
    assert_eq!(event_count(store, &id).await, events_before);
}

/// Artifact versions count up per name; latest-only listing and lookups.
pub async fn artifacts_are_versioned(store: &dyn Store) {
    let state = create_queued(store, T0).await;
    let id = state.run.id.clone();

    // Attempt 1 fails (after writing a draft), is retried, attempt 2 succeeds.
    store
        .claim_task(&id, FIRST, 1, "w1", T0 + 20 + LEASE_MS, T0 + 20)
        .await
        .expect("claim")
        .expect("claimed");
    store
        .complete_task(
            &fence(&id, FIRST, 1, "w1"),
            &failed(FIRST, true, vec![artifact("requirements", "draft")]),
            T0 + 30,
        )
        .await
        .expect("fail attempt 1");
    assert_eq!(task(store, &id, FIRST).await.status, TaskStatus::Failed);
    let state = store.load_run(&id).await.expect("load_run");
    let state = step(store, &state, Input::Reconcile, T0 + 40)
        .await
        .expect("retry scheduled");
    let retry_at = state.task(FIRST).unwrap().not_before.expect("a retry time");
    let state = step(store, &state, Input::Reconcile, retry_at)
        .await
        .expect("retry queued");
    assert_eq!(state.task(FIRST).unwrap().status, TaskStatus::Queued);
    assert_eq!(state.task(FIRST).unwrap().attempt, 2);
    assert!(
        store
            .claim_task(&id, FIRST, 1, "w1", retry_at + LEASE_MS, retry_at)
            .await
            .expect("stale claim")
            .is_none(),
        "the old attempt can no longer be claimed"
    );
    store
        .claim_task(&id, FIRST, 2, "w2", retry_at + 10 + LEASE_MS, retry_at + 10)
        .await
        .expect("claim attempt 2")
        .expect("claimed");
    store
        .complete_task(
            &fence(&id, FIRST, 2, "w2"),
            &succeeded(
                FIRST,
                vec![
                    artifact("requirements", "final requirements"),
                    artifact("glossary", "todo: an item"),
                ],
            ),
            retry_at + 20,
        )
        .await
        .expect("complete attempt 2");
    assert_seqs_contiguous(store, &id).await;

    let all = store
        .list_artifacts(&id, false)
        .await
        .expect("list_artifacts");
    let listed: Vec<(&str, i64, u32)> = all
        .iter()
        .map(|a| (a.name.as_str(), a.version, a.attempt))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("requirements", 1, 1),
            ("glossary", 1, 2),
            ("requirements", 2, 2)
        ],
        "every version, by time then name then version"
    );
    let latest = store
        .list_artifacts(&id, true)
        .await
        .expect("latest artifacts");
    let listed: Vec<(&str, i64)> = latest
        .iter()
        .map(|a| (a.name.as_str(), a.version))
        .collect();
    assert_eq!(listed, vec![("glossary", 1), ("requirements", 2)]);
    let writers = [FIRST.to_string()];
    let named = store
        .latest_artifacts_named(&id, &writers, &["requirements".into(), "nothing".into()])
        .await
        .expect("latest artifacts named");
    let listed: Vec<(&str, i64, &str)> = named
        .iter()
        .map(|a| (a.name.as_str(), a.version, a.content.as_str()))
        .collect();
    assert_eq!(listed, vec![("requirements", 2, "final requirements")]);
    assert!(
        store
            .latest_artifacts_named(&id, &writers, &[])
            .await
            .expect("no names")
            .is_empty()
    );
    assert!(
        store
            .latest_artifacts_named(&id, &["plan".into()], &["requirements".into()])
            .await
            .expect("another writer")
            .is_empty(),
        "only the versions the given tasks wrote"
    );

    let a = store
        .get_artifact(&id, "requirements", None)
        .await
        .expect("latest requirements");
    assert_eq!((a.version, a.content.as_str()), (2, "final requirements"));
    let a = store
        .get_artifact(&id, "requirements", Some(1))
        .await
        .expect("requirements v1");
    assert_eq!((a.version, a.content.as_str(), a.attempt), (1, "draft", 1));
    for (name, version) in [("requirements", Some(3)), ("nothing", None)] {
        match store.get_artifact(&id, name, version).await {
            Err(Error::ArtifactNotFound { .. }) => {}
            other => {
                panic!("artifact {name} {version:?}: expected ArtifactNotFound, got {other:?}")
            }
        }
    }
    let run = store.get_run(&id).await.expect("get_run");
    assert_eq!(run.cost_usd, 0.375, "usage of both attempts");
    assert_eq!(task(store, &id, FIRST).await.cost_usd, 0.375);
}

/// A code artifact is several files sharing a name: each (name, path) has its
/// own versions, and "latest" keeps every file.
pub async fn files_of_one_artifact_are_versioned_apart(store: &dyn Store) {
    let state = create_claimed(store, T0).await;
    let id = state.run.id.clone();
    let file = |path: &str, content: &str| NewArtifact {
        name: "backend_code".into(),
        kind: "code".into(),
        path: Some(path.into()),
        content: content.into(),
        metadata: json!({"path": path}),
    };
    store
        .complete_task(
            &fence(&id, FIRST, 1, "w1"),
            &succeeded(
                FIRST,
                vec![
                    file("backend/app.py", "v1"),
                    file("backend/models.py", "models"),
                    file("backend/app.py", "v2"),
                    artifact("requirements", "reqs"),
                ],
            ),
            T0 + 30,
        )
        .await
        .expect("complete");
    let all = store.list_artifacts(&id, false).await.expect("all");
    assert_eq!(all.len(), 4, "every write is kept");
    let latest = store.list_artifacts(&id, true).await.expect("latest");
    let mut files: Vec<(Option<&str>, i64, &str)> = latest
        .iter()
        .filter(|a| a.name == "backend_code")
        .map(|a| (a.path.as_deref(), a.version, a.content.as_str()))
        .collect();
    files.sort();
    assert_eq!(
        files,
        vec![
            (Some("backend/app.py"), 2, "v2"),
            (Some("backend/models.py"), 1, "models"),
        ]
    );
    assert_eq!(latest.len(), 3);
}

/// A prompt written with the artifacts it quotes cut out and its system
/// prompt kept apart ([`orch_core::elision`]) reads back as it was sent, by
/// every read of events; one naming a version or a text that is not stored
/// names it in its place.
pub async fn prompts_read_back_whole(store: &dyn Store) {
    use orch_core::elision::{ArtifactKey, Elided};
    let state = create_claimed(store, T0).await;
    let id = state.run.id.clone();
    let long = |what: &str| format!("{what}: {}", "détail ".repeat(20));
    let code = NewArtifact {
        name: "backend_code".into(),
        kind: "code".into(),
        path: Some("backend/app.py".into()),
        content: long("app"),
        metadata: json!({"path": "backend/app.py"}),
    };
    store
        .complete_task(
            &fence(&id, FIRST, 1, "w1"),
            &succeeded(
                FIRST,
                vec![
                    artifact("requirements", &long("v1")),
                    artifact("requirements", &long("v2")),
                    code,
                ],
            ),
            T0 + 30,
        )
        .await
        .expect("complete");
    let stored = store.list_artifacts(&id, false).await.expect("artifacts");
    let mut quoted: Vec<Artifact> = stored.iter().filter(|a| a.version == 1).cloned().collect();
    quoted.sort_by(|a, b| b.name.cmp(&a.name));
    assert_eq!(quoted.len(), 2, "v1 of requirements and of the file");
    // Read by key: exactly the versions named (a path is part of the key).
    let key = |name: &str, path: Option<&str>, version: i64| ArtifactKey {
        name: name.into(),
        path: path.map(Into::into),
        version,
    };
    let mut by_key = store
        .artifact_versions(
            &id,
            &[
                key("requirements", None, 1),
                key("backend_code", Some("backend/app.py"), 1),
                key("requirements", None, 9),
                key("backend_code", None, 1),
                key("backend_code", Some("other.py"), 1),
            ],
        )
        .await
        .expect("artifact_versions");
    by_key.sort_by(|a, b| b.name.cmp(&a.name));
    assert_eq!(by_key, quoted);
    let head = "# Task\n<upstream name=\"requirements\">\n";
    let middle = "\n</upstream>\n<upstream name=\"backend_code\">\n";
    let text = format!(
        "{head}{}{middle}{}\n</upstream>\nGo.",
        quoted[0].content, quoted[1].content
    );
    let sent = json!({
        "provider": "scripted", "step": 0,
        "system": "You are the Tech Lead.",
        "messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}],
    });
    let elided = |at: usize, a: &Artifact| Elided {
        message: 0,
        at,
        artifact: ArtifactKey::of(a),
    };
    let mut cut = sent.clone();
    cut["messages"][0]["content"] = json!(format!("{head}{middle}\n</upstream>\nGo."));
    cut["elided"] = json!([
        elided(head.len(), &quoted[0]),
        elided(head.len() + middle.len(), &quoted[1])
    ]);
    // The system prompt, kept apart once.
    let system = "You are the Tech Lead. ".repeat(10);
    let reference = store.keep_text(&system, T0 + 35).await.expect("keep");
    assert!(
        reference.starts_with("sha256:") && reference.len() == 7 + 64,
        "{reference}"
    );
    assert_eq!(
        store.keep_text(&system, T0 + 36).await.expect("again"),
        reference
    );
    let other = store
        .keep_text("another text", T0 + 36)
        .await
        .expect("keep");
    assert_ne!(other, reference);
    let unknown = format!("sha256:{}", "0".repeat(64));
    let mut texts = store
        .get_texts(&[reference.clone(), unknown.clone(), other.clone()])
        .await
        .expect("texts");
    texts.sort();
    let mut expected = vec![
        (reference.clone(), system.clone()),
        (other, "another text".into()),
    ];
    expected.sort();
    assert_eq!(texts, expected, "unknown references are left out");
    let mut sent_with_system = sent.clone();
    sent_with_system["system"] = json!(system);
    let mut cut_with_system = cut.clone();
    cut_with_system
        .as_object_mut()
        .expect("object")
        .remove("system");
    cut_with_system["system_text"] = json!(reference);
    let lost_system = json!({"system_text": unknown, "messages": []});
    // A version that was never written.
    let mut ghost = quoted[0].clone();
    ghost.version = 9;
    let dangling = json!({
        "messages": [{"role": "user", "content": "a  b"}],
        "elided": [elided(2, &ghost)],
    });
    store
        .append_events(
            &id,
            &[
                NewEvent::task(EventKind::LlmRequest, FIRST, "request").with_data(cut),
                NewEvent::task(EventKind::LlmRequest, FIRST, "dangling").with_data(dangling),
                NewEvent::task(EventKind::LlmRequest, FIRST, "system").with_data(cut_with_system),
                NewEvent::task(EventKind::LlmRequest, FIRST, "lost").with_data(lost_system),
            ],
            T0 + 40,
        )
        .await
        .expect("append");
    for query in [
        EventQuery::default(),
        EventQuery {
            kind: Some(EventKind::LlmRequest),
            ..EventQuery::default()
        },
    ] {
        let got: Vec<Event> = store
            .list_events(&id, query)
            .await
            .expect("events")
            .into_iter()
            .filter(|e| e.kind == EventKind::LlmRequest)
            .collect();
        assert_eq!(got.len(), 4, "{query:?}");
        assert_eq!(got[2].data, sent_with_system, "system prompt put back");
        assert_eq!(
            got[3].data,
            json!({"system": format!("[system prompt {unknown} is not in the store]"), "messages": []})
        );
        assert_eq!(got[0].data, sent, "read back as sent ({query:?})");
        assert_eq!(
            got[1].data["messages"][0]["content"],
            "a [artifact requirements version 9 is not in the store] b"
        );
        assert!(got[1].data.get("elided").is_none());
    }
}

/// The sweeper's queries find exactly the rows they name.
pub async fn sweeper_queries(store: &dyn Store) {
    let queued_at = T0 + 10;
    let state = create_queued(store, T0).await;
    let id = state.run.id.clone();

    let stale = store
        .stale_queued(queued_at + 1, 0)
        .await
        .expect("stale_queued");
    let mine = refs_of(&stale, &id);
    assert_eq!(mine.len(), 1, "the queued task is stale");
    assert_eq!(mine[0].task_id, FIRST);
    assert_eq!(mine[0].attempt, 1);
    assert_eq!(mine[0].role, state.task(FIRST).unwrap().role);
    assert_eq!(mine[0].lease_owner, None);
    let fresh = store
        .stale_queued(queued_at, 0)
        .await
        .expect("stale_queued");
    assert!(
        refs_of(&fresh, &id).is_empty(),
        "queued at `before` is not stale"
    );
    assert!(store.stale_queued(queued_at + 1, 1).await.unwrap().len() <= 1);

    let lease_until = T0 + 20 + LEASE_MS;
    store
        .claim_task(&id, FIRST, 1, "w1", lease_until, T0 + 20)
        .await
        .expect("claim")
        .expect("claimed");
    let stale = store.stale_queued(T0 + 1_000_000, 0).await.unwrap();
    assert!(
        refs_of(&stale, &id).is_empty(),
        "a running task is not stale-queued"
    );

    let running = store.running_tasks(0).await.expect("running_tasks");
    let mine = refs_of(&running, &id);
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].lease_owner.as_deref(), Some("w1"));
    assert!(store.running_tasks(1).await.unwrap().len() <= 1);

    let expired = store
        .expired_leases(lease_until, 0)
        .await
        .expect("expired_leases");
    assert!(
        refs_of(&expired, &id).is_empty(),
        "a lease is valid up to its expiry"
    );
    let expired = store
        .expired_leases(lease_until + 1, 0)
        .await
        .expect("expired_leases");
    let mine = refs_of(&expired, &id);
    assert_eq!(mine.len(), 1, "the lease expired");
    assert_eq!(mine[0].task_id, FIRST);
    assert_eq!(mine[0].attempt, 1);
    assert_eq!(mine[0].lease_owner.as_deref(), Some("w1"));

    store
        .complete_task(
            &fence(&id, FIRST, 1, "w1"),
            &succeeded(FIRST, vec![]),
            T0 + 30,
        )
        .await
        .expect("complete");
    assert!(refs_of(&store.running_tasks(0).await.unwrap(), &id).is_empty());
    assert!(refs_of(&store.expired_leases(T0 + 1_000_000, 0).await.unwrap(), &id).is_empty());
}

/// Dead letters are saved with the state, listed newest first and replayed.
pub async fn dead_letters_round_trip(store: &dyn Store) {
    let state = create_claimed(store, T0).await;
    let id = state.run.id.clone();
    store
        .complete_task(
            &fence(&id, FIRST, 1, "w1"),
            &failed(FIRST, false, vec![]),
            T0 + 30,
        )
        .await
        .expect("fail for good");
    let state = store.load_run(&id).await.expect("load_run");
    let state = step(store, &state, Input::Reconcile, T0 + 40)
        .await
        .expect("dead letter saved");
    assert_eq!(state.task(FIRST).unwrap().status, TaskStatus::Dead);
    assert_eq!(state.run.status, RunStatus::NeedsInput);
    assert!(
        !store.active_runs().await.unwrap().contains(&id),
        "a run waiting for input is not active"
    );

    let letters = store
        .list_dead_letters(Some(&id), false)
        .await
        .expect("list_dead_letters");
    assert_eq!(letters.len(), 1);
    let first = letters[0].clone();
    assert_eq!(first.run_id, id);
    assert_eq!(first.task_id, FIRST);
    assert_eq!(first.role, state.task(FIRST).unwrap().role);
    assert_eq!(first.attempts, 1);
    assert_eq!(first.error, "the model returned no artifact");
    assert_eq!(first.created_at, T0 + 40);
    assert_eq!(first.replayed_at, None);

    // A second letter, later: listed first.
    let version = store
        .save_run(
            &id,
            state.run.version,
            &StateDiff::default(),
            &state,
            &[],
            &[NewDeadLetter {
                task_id: "plan".into(),
                role: state.task("plan").unwrap().role,
                attempts: 3,
                error: "second".into(),
            }],
            T0 + 50,
            Durability::Durable,
        )
        .await
        .expect("save a dead letter");
    assert_eq!(version, state.run.version + 1);
    let letters = store.list_dead_letters(Some(&id), false).await.unwrap();
    let tasks: Vec<&str> = letters.iter().map(|d| d.task_id.as_str()).collect();
    assert_eq!(tasks, vec!["plan", FIRST], "newest first");
    let all = store.list_dead_letters(None, false).await.unwrap();
    assert!(all.iter().any(|d| d.id == first.id), "listed across runs");

    let replayed = store
        .mark_replayed(first.id, T0 + 60)
        .await
        .expect("mark_replayed");
    assert_eq!(replayed.replayed_at, Some(T0 + 60));
    assert_eq!(replayed.id, first.id);
    assert_eq!(replayed.task_id, first.task_id);
    let open = store.list_dead_letters(Some(&id), false).await.unwrap();
    assert_eq!(open.len(), 1, "replayed letters are hidden by default");
    assert_eq!(open[0].task_id, "plan");
    let every = store.list_dead_letters(Some(&id), true).await.unwrap();
    assert_eq!(every.len(), 2);
    assert_eq!(every[1], replayed);
    match store.mark_replayed(i64::MAX, T0).await {
        Err(Error::DeadLetterNotFound(n)) => assert_eq!(n, i64::MAX),
        other => panic!("unknown dead letter: expected DeadLetterNotFound, got {other:?}"),
    }
}

/// Runs are listed newest first, filtered by status and paged.
pub async fn list_runs_filters_and_pages(store: &dyn Store) {
    // After every run already stored, so these are the newest of the database.
    let newest = store
        .list_runs(&RunFilter {
            status: None,
            limit: 1,
            offset: 0,
        })
        .await
        .expect("list_runs");
    let base = newest.first().map_or(T0, |r| r.created_at.max(T0)) + 1_000;
    let mut ids = Vec::new();
    for i in 0..5 {
        let state = create(store, base + i).await;
        ids.push(state.run.id.clone());
        if i == 1 {
            step(
                store,
                &state,
                Input::Cancel {
                    reason: "listing".into(),
                },
                base + i + 1,
            )
            .await
            .expect("cancel");
        }
    }
    let newest_first: Vec<RunId> = ids.iter().rev().cloned().collect();
    let page = |limit, offset| RunFilter {
        status: None,
        limit,
        offset,
    };
    let got: Vec<RunId> = store
        .list_runs(&page(2, 0))
        .await
        .expect("list_runs")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(got, newest_first[..2], "first page, newest first");
    let got: Vec<RunId> = store
        .list_runs(&page(2, 2))
        .await
        .expect("list_runs")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(got, newest_first[2..4], "second page");
    let all = store.list_runs(&page(0, 0)).await.expect("list_runs");
    let got: Vec<RunId> = all.iter().take(5).map(|r| r.id.clone()).collect();
    assert_eq!(got, newest_first, "limit 0 lists everything");
    assert!(
        all.windows(2).all(|w| w[0].created_at >= w[1].created_at),
        "newest first"
    );

    let cancelled = store
        .list_runs(&RunFilter {
            status: Some(RunStatus::Cancelled),
            limit: 0,
            offset: 0,
        })
        .await
        .expect("list_runs by status");
    assert!(cancelled.iter().all(|r| r.status == RunStatus::Cancelled));
    assert!(cancelled.iter().any(|r| r.id == ids[1]));
    assert!(!cancelled.iter().any(|r| r.id == ids[0]));
    let pending = store
        .list_runs(&RunFilter {
            status: Some(RunStatus::Pending),
            limit: 0,
            offset: 0,
        })
        .await
        .unwrap();
    assert!(pending.iter().any(|r| r.id == ids[0]));
    assert!(!pending.iter().any(|r| r.id == ids[1]));

    let active = store.active_runs().await.expect("active_runs");
    assert!(active.contains(&ids[0]));
    assert!(!active.contains(&ids[1]), "a cancelled run is not active");
}

/// Unknown runs are `RunNotFound` everywhere a run is named.
pub async fn unknown_ids_are_not_found(store: &dyn Store) {
    let ghost = RunId::generate();
    assert_run_not_found(store.load_run(&ghost).await, "load_run");
    assert_run_not_found(store.get_run(&ghost).await, "get_run");
    assert_run_not_found(store.list_tasks(&ghost).await, "list_tasks");
    assert_run_not_found(
        store.list_events(&ghost, EventQuery::default()).await,
        "list_events",
    );
    assert_run_not_found(store.list_artifacts(&ghost, false).await, "list_artifacts");
    assert_run_not_found(store.get_artifact(&ghost, "x", None).await, "get_artifact");
    assert_run_not_found(
        store
            .append_events(&ghost, &[NewEvent::run(EventKind::Checkpoint, "x")], T0)
            .await,
        "append_events",
    );
    let (state, _) = new_run(T0);
    assert_run_not_found(
        store
            .save_run(
                &ghost,
                0,
                &StateDiff::default(),
                &state,
                &[],
                &[],
                T0,
                Durability::Durable,
            )
            .await,
        "save_run",
    );
    assert!(
        store
            .claim_task(&ghost, FIRST, 1, "w", T0, T0)
            .await
            .expect("claim on an unknown run")
            .is_none()
    );
    assert!(
        !store
            .heartbeat(&fence(&ghost, FIRST, 1, "w"), T0)
            .await
            .unwrap()
    );
    assert_lease_lost(
        store
            .complete_task(&fence(&ghost, FIRST, 1, "w"), &succeeded(FIRST, vec![]), T0)
            .await,
        "complete on an unknown run",
    );
    assert!(
        store
            .list_dead_letters(Some(&ghost), true)
            .await
            .expect("list_dead_letters")
            .is_empty()
    );
}

/// Many concurrent claims of one queued attempt: exactly one wins, and the
/// log records exactly one `task_started`.
pub async fn concurrent_claims(store: Arc<dyn Store>, claimers: usize) {
    let state = create_queued(store.as_ref(), T0).await;
    let id = state.run.id.clone();
    let before = event_count(store.as_ref(), &id).await;
    let mut handles = Vec::new();
    for i in 0..claimers {
        let store = store.clone();
        let id = id.clone();
        handles.push(tokio::spawn(async move {
            store
                .claim_task(&id, FIRST, 1, &format!("w{i}"), T0 + LEASE_MS + 20, T0 + 20)
                .await
                .expect("claim")
                .map(|t| t.lease_owner)
        }));
    }
    let mut winners = Vec::new();
    for h in handles {
        if let Some(owner) = h.await.expect("claimer task") {
            winners.push(owner);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one claim wins: {winners:?}");
    let stored = task(store.as_ref(), &id, FIRST).await;
    assert_eq!(stored.lease_owner, winners[0]);
    assert_eq!(event_count(store.as_ref(), &id).await, before + 1);
    assert_seqs_contiguous(store.as_ref(), &id).await;
}

/// Claims of many runs at once, two claimers per task (a backend may run
/// them together, e.g. in one transaction): each task is claimed exactly
/// once, each winner gets its own task and run, and the completions that
/// follow, also at once, all commit.
pub async fn concurrent_claims_of_many_runs(store: Arc<dyn Store>, runs: usize) {
    let mut ids = Vec::new();
    for _ in 0..runs {
        ids.push(create_queued(store.as_ref(), T0).await.run.id);
    }
    let names = Arc::new(vec![FIRST.to_string()]);
    let mut claims = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        for owner in [format!("a{i}"), format!("b{i}")] {
            let (store, id, names) = (store.clone(), id.clone(), names.clone());
            claims.push(tokio::spawn(async move {
                let claim = crate::Claim {
                    run_id: &id,
                    task_id: FIRST,
                    attempt: 1,
                    owner: &owner,
                    lease_until: T0 + 20 + LEASE_MS,
                    now: T0 + 20,
                    upstream: &names,
                    upstream_tasks: &names,
                    with_state: false,
                    known_version: None,
                };
                let claimed = store.claim_attempt(&claim).await.expect("claim_attempt");
                (id.clone(), owner.clone(), claimed)
            }));
        }
    }
    let mut winners = std::collections::HashMap::new();
    for c in claims {
        let (id, owner, claimed) = c.await.expect("claimer task");
        if let Some(claimed) = claimed {
            assert_eq!(claimed.run.id, id, "the claim's run");
            assert_eq!(claimed.task.id, FIRST);
            assert_eq!(claimed.task.lease_owner.as_deref(), Some(owner.as_str()));
            assert!(claimed.upstream.is_empty() && claimed.messages.is_empty());
            assert!(winners.insert(id, owner).is_none(), "a task claimed twice");
        }
    }
    assert_eq!(winners.len(), runs, "every task claimed once");
    let mut completions = Vec::new();
    for (id, owner) in winners {
        let store = store.clone();
        completions.push(tokio::spawn(async move {
            let outcome = succeeded(FIRST, vec![artifact(FIRST, &format!("by {owner}"))]);
            store
                .complete_task(&fence(&id, FIRST, 1, &owner), &outcome, T0 + 30)
                .await
                .expect("complete");
            let stored = store
                .get_artifact(&id, FIRST, None)
                .await
                .expect("the artifact");
            assert_eq!(stored.content, format!("by {owner}"));
            assert_eq!(stored.version, 1);
        }));
    }
    for c in completions {
        c.await.expect("completion task");
    }
}
