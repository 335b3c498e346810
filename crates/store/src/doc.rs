//! The parameter documents of the stores' write procedures: one JSON
//! document per write, read by SQLite's `proc_*` triggers and PostgreSQL's
//! `orch_*` functions alike, so that both backends take a write in one
//! statement and encode it the same way.

use orch_core::{Gate, Millis, NewEvent, RunId, RunState, StateDiff, Task, TaskStatus};
use serde::Serialize;

use crate::{Claim, Error, Fence, LlmCallRecord, NewDeadLetter, Result, Step, TaskOutcome};

/// The parameter document (`?1`) of a procedure call: what any call may carry
/// (read by the shared procedures `proc_add_events`, `proc_add_tasks` and
/// `proc_put_gates`) and the operation's own fields.
#[derive(Debug, Serialize)]
pub(crate) struct Doc<'a, T> {
    pub(crate) run_id: &'a str,
    pub(crate) now: Millis,
    pub(crate) events: Vec<EventDoc<'a>>,
    pub(crate) tasks: Vec<TaskDoc<'a>>,
    pub(crate) gates: Vec<GateDoc<'a>>,
    #[serde(flatten)]
    pub(crate) op: T,
}

impl<'a, T> Doc<'a, T> {
    pub(crate) fn new(
        run_id: &'a RunId,
        now: Millis,
        events: &'a [NewEvent],
        op: T,
    ) -> Result<Self> {
        Ok(Doc {
            run_id: run_id.as_str(),
            now,
            events: events.iter().map(EventDoc::new).collect::<Result<_>>()?,
            tasks: Vec::new(),
            gates: Vec::new(),
            op,
        })
    }
}

/// An event to append: `[kind, task_id, message, data as JSON text]`.
#[derive(Debug, Serialize)]
pub(crate) struct EventDoc<'a>(&'static str, Option<&'a str>, &'a str, String);

impl<'a> EventDoc<'a> {
    pub(crate) fn new(e: &'a NewEvent) -> Result<Self> {
        Ok(EventDoc(
            e.kind.as_str(),
            e.task_id.as_deref(),
            &e.message,
            to_json(&e.data)?,
        ))
    }
}

/// A task row; JSON columns as JSON text. `expected_*` only for updates.
#[derive(Debug, Serialize)]
pub(crate) struct TaskDoc<'a> {
    pub(crate) id: &'a str,
    pub(crate) role: &'static str,
    pub(crate) title: &'a str,
    pub(crate) instructions: &'a str,
    pub(crate) needs: String,
    pub(crate) expected: String,
    pub(crate) validation: String,
    pub(crate) gate: Option<&'static str>,
    pub(crate) round: u32,
    pub(crate) findings: String,
    pub(crate) status: &'static str,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) timeout_ms: i64,
    pub(crate) dedupe_key: &'a str,
    pub(crate) not_before: Option<Millis>,
    pub(crate) lease_owner: Option<&'a str>,
    pub(crate) lease_expires_at: Option<Millis>,
    pub(crate) last_error: Option<&'a str>,
    pub(crate) retryable: bool,
    pub(crate) result_summary: Option<&'a str>,
    pub(crate) verdict: Option<String>,
    pub(crate) queued_at: Option<Millis>,
    pub(crate) started_at: Option<Millis>,
    pub(crate) finished_at: Option<Millis>,
    pub(crate) cost_usd: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) expected_status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) expected_attempt: Option<u32>,
}

impl<'a> TaskDoc<'a> {
    pub(crate) fn new(t: &'a Task) -> Result<Self> {
        Ok(TaskDoc {
            id: &t.id,
            role: t.role.as_str(),
            title: &t.title,
            instructions: &t.instructions,
            needs: to_json(&t.needs)?,
            expected: to_json(&t.expected)?,
            validation: to_json(&t.validation)?,
            gate: t.gate.map(|g| g.as_str()),
            round: t.round,
            findings: to_json(&t.findings)?,
            status: t.status.as_str(),
            attempt: t.attempt,
            max_attempts: t.max_attempts,
            timeout_ms: t.timeout_ms,
            dedupe_key: &t.dedupe_key,
            not_before: t.not_before,
            lease_owner: t.lease_owner.as_deref(),
            lease_expires_at: t.lease_expires_at,
            last_error: t.last_error.as_deref(),
            retryable: t.retryable,
            result_summary: t.result_summary.as_deref(),
            verdict: t.verdict.as_ref().map(to_json).transpose()?,
            queued_at: t.queued_at,
            started_at: t.started_at,
            finished_at: t.finished_at,
            cost_usd: t.cost_usd,
            expected_status: None,
            expected_attempt: None,
        })
    }
}

/// A gate row; findings as JSON text.
#[derive(Debug, Serialize)]
pub(crate) struct GateDoc<'a> {
    pub(crate) kind: &'static str,
    pub(crate) status: &'static str,
    pub(crate) required: bool,
    pub(crate) review_task: Option<&'a str>,
    pub(crate) rework_rounds: u32,
    pub(crate) reason: Option<&'a str>,
    pub(crate) findings: String,
    pub(crate) updated_at: Millis,
}

impl<'a> GateDoc<'a> {
    pub(crate) fn new(g: &'a Gate) -> Result<Self> {
        Ok(GateDoc {
            kind: g.kind.as_str(),
            status: g.status.as_str(),
            required: g.required,
            review_task: g.review_task.as_deref(),
            rework_rounds: g.rework_rounds,
            reason: g.reason.as_deref(),
            findings: to_json(&g.findings)?,
            updated_at: g.updated_at,
        })
    }
}

/// `proc_create_run`: the run row; JSON columns as JSON text.
#[derive(Debug, Serialize)]
pub(crate) struct CreateRunDoc<'a> {
    pub(crate) goal: &'a str,
    pub(crate) context: String,
    pub(crate) workflow: &'a str,
    pub(crate) status: &'static str,
    pub(crate) status_reason: Option<&'a str>,
    pub(crate) success_criteria: String,
    pub(crate) settings: String,
    pub(crate) provider: &'a str,
    pub(crate) iterations: u32,
    pub(crate) cost_usd: f64,
    pub(crate) tokens_in: i64,
    pub(crate) tokens_out: i64,
    pub(crate) version: i64,
    pub(crate) created_at: Millis,
    pub(crate) updated_at: Millis,
    pub(crate) finished_at: Option<Millis>,
}

/// The parameter document of `proc_create_run`: the run with its tasks,
/// gates and creation events.
pub(crate) fn create_doc<'a>(
    state: &'a RunState,
    events: &'a [NewEvent],
    now: Millis,
) -> Result<Doc<'a, CreateRunDoc<'a>>> {
    let run = &state.run;
    let op = CreateRunDoc {
        goal: &run.goal,
        context: to_json(&run.context)?,
        workflow: &run.workflow,
        status: run.status.as_str(),
        status_reason: run.status_reason.as_deref(),
        success_criteria: to_json(&run.success_criteria)?,
        settings: to_json(&run.settings)?,
        provider: &run.provider,
        iterations: run.iterations,
        cost_usd: run.cost_usd,
        tokens_in: run.tokens_in,
        tokens_out: run.tokens_out,
        version: run.version,
        created_at: run.created_at,
        updated_at: run.updated_at,
        finished_at: run.finished_at,
    };
    let mut doc = Doc::new(&run.id, now, events, op)?;
    doc.tasks = state
        .tasks
        .iter()
        .map(TaskDoc::new)
        .collect::<Result<_>>()?;
    doc.gates = state
        .gates
        .iter()
        .map(GateDoc::new)
        .collect::<Result<_>>()?;
    Ok(doc)
}

/// The parameter document of `proc_save_run` (see [`RunStore::save_run`]).
pub(crate) fn save_doc<'a>(
    run_id: &'a RunId,
    expected_version: i64,
    diff: &'a StateDiff,
    state: &'a RunState,
    events: &'a [NewEvent],
    dead: &'a [NewDeadLetter],
    now: Millis,
) -> Result<Doc<'a, SaveRunDoc<'a>>> {
    let run = &state.run;
    let changed = diff
        .changed_tasks
        .iter()
        .map(|c| {
            let mut doc = TaskDoc::new(&c.task)?;
            doc.expected_status = Some(c.expected_status.as_str());
            doc.expected_attempt = Some(c.expected_attempt);
            Ok(doc)
        })
        .collect::<Result<_>>()?;
    let op = SaveRunDoc {
        expected_version,
        run_changed: diff.run_changed,
        status: run.status.as_str(),
        status_reason: run.status_reason.as_deref(),
        iterations: run.iterations,
        settings: to_json(&run.settings)?,
        finished_at: run.finished_at,
        changed,
        dead: dead
            .iter()
            .map(|d| {
                (
                    d.task_id.as_str(),
                    d.role.as_str(),
                    d.attempts,
                    d.error.as_str(),
                )
            })
            .collect(),
    };
    let mut doc = Doc::new(run_id, now, events, op)?;
    doc.tasks = diff
        .new_tasks
        .iter()
        .map(TaskDoc::new)
        .collect::<Result<_>>()?;
    doc.gates = diff
        .changed_gates
        .iter()
        .map(GateDoc::new)
        .collect::<Result<_>>()?;
    Ok(doc)
}

/// `proc_save_run`: the engine-owned run fields, the changed tasks, the dead
/// letters (`[task_id, role, attempts, error]`).
#[derive(Debug, Serialize)]
pub(crate) struct SaveRunDoc<'a> {
    pub(crate) expected_version: i64,
    pub(crate) run_changed: bool,
    pub(crate) status: &'static str,
    pub(crate) status_reason: Option<&'a str>,
    pub(crate) iterations: u32,
    pub(crate) settings: String,
    pub(crate) finished_at: Option<Millis>,
    pub(crate) changed: Vec<TaskDoc<'a>>,
    pub(crate) dead: Vec<(&'a str, &'static str, u32, &'a str)>,
}

/// `proc_complete_step`'s step: `proc_save_run`'s document and `[task id,
/// attempt]` of the other tasks it saw in flight.
#[derive(Debug, Serialize)]
pub(crate) struct StepDoc<'a> {
    pub(crate) in_flight: &'a [(String, u32)],
    #[serde(flatten)]
    pub(crate) step: Doc<'a, SaveRunDoc<'a>>,
}

/// `proc_claim_task`.
#[derive(Debug, Serialize)]
pub(crate) struct ClaimDoc<'a> {
    pub(crate) task_id: &'a str,
    pub(crate) attempt: u32,
    pub(crate) owner: &'a str,
    pub(crate) lease_until: Millis,
    /// Names of the upstream artifacts to read with the claim
    /// (`attempt_inputs.sql`), and the tasks whose versions count.
    pub(crate) upstream: &'a [String],
    pub(crate) upstream_tasks: &'a [String],
}

/// The `task_started` event a claim appends.
pub(crate) fn started_event(claim: &Claim<'_>) -> NewEvent {
    crate::task_started_event(claim.task_id, claim.owner, claim.attempt)
}

/// The parameter documents of `proc_complete_task` (see
/// [`TaskStore::complete_task`]): the outcome, and its artifacts.
pub(crate) fn complete_docs<E: Encoding>(
    fence: &Fence,
    outcome: &TaskOutcome,
    now: Millis,
) -> Result<(E::Doc, E::Doc)> {
    complete_docs_reading::<E>(fence, outcome, now, None)
}

/// [`complete_docs`], the outcome's document also naming what to read for
/// a task the step saves claimed (`upstream`, `upstream_tasks`: as a claim's
/// document names them, read by the same statements).
fn complete_docs_reading<E: Encoding>(
    fence: &Fence,
    outcome: &TaskOutcome,
    now: Millis,
    inputs_of: Option<crate::InputsOf<'_>>,
) -> Result<(E::Doc, E::Doc)> {
    if !matches!(outcome.status, TaskStatus::Succeeded | TaskStatus::Failed) {
        return Err(Error::Database(format!(
            "a task attempt ends SUCCEEDED or FAILED, not {}",
            outcome.status
        )));
    }
    let usage = &outcome.usage;
    let op = CompleteDoc {
        task_id: &fence.task_id,
        attempt: fence.attempt,
        owner: &fence.owner,
        status: outcome.status.as_str(),
        summary: outcome.summary.as_deref(),
        verdict: outcome.verdict.as_ref().map(to_json).transpose()?,
        error: outcome.error.as_deref(),
        retryable: outcome.retryable,
        cost_usd: usage.cost_usd,
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        llm_calls: outcome.llm_calls.iter().map(LlmCallDoc::new).collect(),
        upstream: inputs_of.map(|of| of.upstream),
        upstream_tasks: inputs_of.map(|of| of.upstream_tasks),
        held: inputs_of.map(|of| held_keys(of.held)),
    };
    let doc = Doc::new(&fence.run_id, now, &outcome.events, op)?;
    // `[name, kind, path, content, metadata, earlier entries of the same name and path]`.
    let mut artifacts = Vec::with_capacity(outcome.artifacts.len());
    for (i, a) in outcome.artifacts.iter().enumerate() {
        let earlier = outcome.artifacts[..i]
            .iter()
            .filter(|b| b.name == a.name && b.path == a.path)
            .count();
        artifacts.push((
            a.name.as_str(),
            a.kind.as_str(),
            a.path.as_deref(),
            a.content.as_str(),
            to_json(&a.metadata)?,
            earlier,
        ));
    }
    Ok((E::encode(&doc)?, E::encode(&artifacts)?))
}

/// The three parameter documents of a completion with its step
/// (`proc_complete_step`, `orch_complete_step`): the outcome, its artifacts,
/// and the step (`proc_save_run`'s document with `in_flight`).
pub(crate) fn complete_step_docs<E: Encoding>(
    fence: &Fence,
    outcome: &TaskOutcome,
    now: Millis,
    step: &Step<'_>,
) -> Result<(E::Doc, E::Doc, E::Doc)> {
    let (doc, artifacts) = complete_docs_reading::<E>(fence, outcome, now, step.inputs_of)?;
    let step = E::encode(&StepDoc {
        in_flight: step.in_flight,
        step: save_doc(
            &fence.run_id,
            step.expected_version,
            step.diff,
            step.state,
            step.events,
            step.dead,
            now,
        )?,
    })?;
    Ok((doc, artifacts, step))
}

/// What a completion's step reads for the task it saves claimed, as a
/// JSONB document of its own (only SQLite's `call_complete_step_reading.sql`
/// takes one):
/// `{run_id, upstream, upstream_tasks}`, as a claim's document names them.
pub(crate) fn reads_doc(run_id: &RunId, of: crate::InputsOf<'_>) -> Result<Vec<u8>> {
    #[derive(Serialize)]
    struct Reads<'a> {
        run_id: &'a str,
        upstream: &'a [String],
        upstream_tasks: &'a [String],
        held: Vec<HeldKey<'a>>,
    }
    Jsonb::encode(&Reads {
        run_id: run_id.as_str(),
        upstream: of.upstream,
        upstream_tasks: of.upstream_tasks,
        held: held_keys(of.held),
    })
}

/// An artifact version the reader holds, as the reads' documents name it:
/// `[name, path, version]` (`held`: versions not to read again).
pub(crate) type HeldKey<'a> = (&'a str, Option<&'a str>, i64);

pub(crate) fn held_keys(held: &[orch_core::Artifact]) -> Vec<HeldKey<'_>> {
    held.iter()
        .map(|a| (a.name.as_str(), a.path.as_deref(), a.version))
        .collect()
}

/// `proc_complete_task` (the artifacts go separately, as `?2`).
#[derive(Debug, Serialize)]
pub(crate) struct CompleteDoc<'a> {
    pub(crate) task_id: &'a str,
    pub(crate) attempt: u32,
    pub(crate) owner: &'a str,
    pub(crate) status: &'static str,
    pub(crate) summary: Option<&'a str>,
    pub(crate) verdict: Option<String>,
    pub(crate) error: Option<&'a str>,
    pub(crate) retryable: bool,
    pub(crate) cost_usd: f64,
    pub(crate) input_tokens: i64,
    pub(crate) output_tokens: i64,
    pub(crate) llm_calls: Vec<LlmCallDoc<'a>>,
    /// What to read after the step, for a task it saves claimed
    /// ([`crate::Step::inputs_of`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) upstream: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) upstream_tasks: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) held: Option<Vec<HeldKey<'a>>>,
}

/// A journal record committed with an outcome (`proc_complete_task`).
#[derive(Debug, Serialize)]
pub(crate) struct LlmCallDoc<'a> {
    pub(crate) run_id: &'a str,
    pub(crate) task_id: &'a str,
    pub(crate) attempt: u32,
    pub(crate) step: u32,
    pub(crate) request_hash: &'a str,
    pub(crate) provider: &'a str,
    pub(crate) model: &'a str,
    pub(crate) request: &'a str,
    pub(crate) response: &'a str,
    pub(crate) input_tokens: i64,
    pub(crate) output_tokens: i64,
    pub(crate) cache_read_tokens: i64,
    pub(crate) cache_write_tokens: i64,
    pub(crate) latency_ms: i64,
    pub(crate) cost_usd: f64,
    pub(crate) created_at: Millis,
}

impl<'a> LlmCallDoc<'a> {
    pub(crate) fn new(c: &'a LlmCallRecord) -> Self {
        LlmCallDoc {
            run_id: c.run_id.as_str(),
            task_id: &c.task_id,
            attempt: c.attempt,
            step: c.step,
            request_hash: &c.request_hash,
            provider: &c.provider,
            model: &c.model,
            request: &c.request,
            response: &c.response,
            input_tokens: token_param(c.input_tokens),
            output_tokens: token_param(c.output_tokens),
            cache_read_tokens: token_param(c.cache_read_tokens),
            cache_write_tokens: token_param(c.cache_write_tokens),
            latency_ms: c.latency_ms,
            cost_usd: c.cost_usd,
            created_at: c.created_at,
        }
    }
}

/// No fields of its own.
#[derive(Debug, Serialize)]
pub(crate) struct NoFields {}

/// The document naming artifact versions for `get_artifact_versions.sql`
/// (both backends): `[[name, path, version], ...]`.
pub(crate) fn artifact_keys_doc(keys: &[orch_core::elision::ArtifactKey]) -> Result<String> {
    let keys: Vec<(&str, Option<&str>, i64)> = keys
        .iter()
        .map(|k| (k.name.as_str(), k.path.as_deref(), k.version))
        .collect();
    to_json(&keys)
}

/// A value as JSON text.
pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Database(format!("cannot encode JSON: {e}")))
}

/// How a backend takes its parameter documents: PostgreSQL's functions
/// as JSON text ([`JsonText`]), SQLite's procedures as JSONB ([`Jsonb`]).
/// The documents' fields are the same in both.
pub(crate) trait Encoding {
    type Doc;
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Self::Doc>;
}

/// Documents as JSON text.
pub(crate) struct JsonText;

impl Encoding for JsonText {
    type Doc = String;
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<String> {
        to_json(value)
    }
}

/// Documents as SQLite's JSONB ([`crate::jsonb`]).
pub(crate) struct Jsonb;

impl Encoding for Jsonb {
    type Doc = Vec<u8>;
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
        crate::jsonb::to_jsonb(value)
    }
}

/// A token count as a column value (saturating: counts never get near `i64::MAX`).
pub(crate) fn token_param(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
