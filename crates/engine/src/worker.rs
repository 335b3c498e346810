//! Role workers: claim a dispatched attempt, keep its lease alive, run the
//! agent, and commit the outcome behind the lease fence.
//!
//! **Channels.** Before the agent runs, the worker loads the run's channel
//! messages so far (its `channel_message` events) posted by the task's
//! upstream tasks (or by no task) as the task's inbox: a message from a task
//! running beside it may or may not be there yet, so it is left out and the
//! prompt does not depend on timing (replays match the journal). The
//! messages a successful attempt posts become `channel_message` events of its
//! outcome, committed with it behind the fence, and are then published on
//! the broker for live subscribers, best effort: the event is the durable
//! record, so a message is never lost when nobody listens or the publish
//! fails. A failed or fenced-out attempt posts nothing.
//!
//! **Hand-off.** A completion that takes the run's next step may dispatch
//! tasks of roles this process serves. The step hands one of them to the
//! worker that completed, if a permit of its role is free ([`Permits`]: at
//! most `concurrency` attempts of a role run at once in a process, whichever
//! loop runs them): it saves that task claimed by the worker (RUNNING under
//! its lease, with its `task_started` event) instead of publishing it, reads
//! what the task reads (the run's channel messages, the upstream artifacts)
//! in the same transaction, and the worker runs it next. That saves the
//! queue's round trips and the claim's own transaction, and the engine here
//! holds the run as just saved. The rest are published. The store stays the
//! truth: the handed task is leased as any claimed one, so if this process
//! dies, its lease expires and the sweeper re-runs it.
//!
//! **Pipelined hand-off.** When the completing attempt was itself handed
//! over and neither read nor posted a channel message, and the task it is
//! handed reads from no task but it and its own upstream (a chain; not a
//! review that also reads a branch run beside it), and no other task writes
//! artifacts of the names it wrote (their versions are then the first), the
//! worker knows what that task will read before the step is saved: what it
//! holds plus what it just wrote. The step's save then goes on as a task of
//! its own ([`Landing`]) while the worker runs the handed task's agent on
//! those inputs. Once the save is done: not saved, the attempt is dropped
//! (the task is not this worker's); saved but on other inputs (a person's
//! channel message meanwhile), the attempt is dropped and runs again on what
//! was read. A dropped attempt's agent is stopped at once and its calls are
//! recorded as events, not in the journal (`JournalingProvider::gated`). A
//! task without a plan here yet (one the step adds) waits for the save. A
//! task received from a queue is not pipelined: its message is acknowledged
//! once its completion has committed.
//!
//! The worker's own queue comes first. Unless another loop of the process
//! waits on it (that loop takes what comes), the worker looks at it without
//! waiting before committing. A message there runs next — after a handed
//! task if one is taken, and then only a task of a role no loop here waits
//! for (a waiting loop would start it sooner from its queue); with a
//! message waiting, nothing more is handed over. So under load a loop runs
//! at most one handed task before returning to its queue, and the tasks it
//! is handed are ones no idle loop would have started earlier.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use orch_agents::{AgentOutput, ChannelPost, EventSink, TaskInput};
use orch_broker::{ChannelMessage, Delivery, Dispatch};
use orch_core::{Event, EventKind, Input, NewEvent, Role, RunId, TaskStatus, Usage};
use orch_store::{Fence, TaskOutcome};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{Deps, Engine, EngineOptions, Result};

static NEXT_WORKER: AtomicU64 = AtomicU64::new(1);

/// A worker's identity: `host:pid:role-n`. The sweeper uses the host and pid to
/// reclaim at once the leases of a local process that died.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerId(pub String);

impl WorkerId {
    pub fn new(role: Role) -> Self {
        let n = NEXT_WORKER.fetch_add(1, Ordering::Relaxed);
        WorkerId(format!(
            "{}:{}:{}-{n}",
            hostname(),
            std::process::id(),
            role.short()
        ))
    }

    /// The same worker running an attempt of `role` (a task handed off to
    /// it): `host:pid:role-n` with its own `n`.
    pub fn as_role(&self, role: Role) -> WorkerId {
        match self.0.rsplit_once(':') {
            Some((base, last)) => {
                let n = last.rsplit_once('-').map_or(last, |(_, n)| n);
                WorkerId(format!("{base}:{}-{n}", role.short()))
            }
            None => WorkerId(format!("{}:{}", self.0, role.short())),
        }
    }

    /// `(host, pid)` if the id has the `host:pid:...` form.
    pub fn parse_host_pid(owner: &str) -> Option<(&str, u32)> {
        let mut parts = owner.splitn(3, ':');
        let host = parts.next()?;
        let pid = parts.next()?.parse().ok()?;
        Some((host, pid))
    }
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// How long LLM events may wait to be committed with the attempt's outcome
/// before they are written on their own.
const LLM_EVENT_FLUSH: Duration = Duration::from_millis(250);

/// Records the LLM events of one attempt. A call's events are held for at
/// most [`LLM_EVENT_FLUSH`]: if the attempt finishes within that time they
/// commit in the same transaction as its outcome (one write instead of three
/// on the hot path); otherwise a flusher writes them on their own, so a slow
/// call shows in the log while it runs and stays there if the worker dies.
/// The cost: a worker killed within 250 ms of a call loses that call's events
/// (the call itself is re-made by the retry).
struct StoreSink {
    deps: Deps,
    run_id: RunId,
    /// Events not yet written. Held across the flusher's write, so the outcome
    /// never commits before events that were taken out to be written.
    pending: Arc<tokio::sync::Mutex<Vec<NewEvent>>>,
}

impl StoreSink {
    fn new(deps: Deps, run_id: RunId) -> Self {
        StoreSink {
            deps,
            run_id,
            pending: Arc::new(tokio::sync::Mutex::new(Vec::new())),
        }
    }

    /// Take the events not yet written (to commit them with the outcome).
    async fn take(&self) -> Vec<NewEvent> {
        std::mem::take(&mut *self.pending.lock().await)
    }
}

async fn flush(deps: &Deps, run_id: &RunId, pending: &tokio::sync::Mutex<Vec<NewEvent>>) {
    let mut guard = pending.lock().await;
    if guard.is_empty() {
        return;
    }
    let events = std::mem::take(&mut *guard);
    if let Err(e) = deps
        .store
        .append_events(run_id, &events, deps.clock.now_ms())
        .await
    {
        warn!(run = %run_id, error = %e, "could not record LLM events");
    }
}

/// Have the store keep a request's system prompt once and name it in the
/// event instead (`data.system_text`, [`orch_core::elision`]): every request
/// of a role carries the same few kB. Kept in the event if the store cannot.
async fn keep_system(deps: &Deps, data: &mut serde_json::Value) {
    use orch_core::elision::{MIN_ELIDED_LEN, SYSTEM_TEXT};
    let Some(text) = data.get("system").and_then(serde_json::Value::as_str) else {
        return;
    };
    if text.len() < MIN_ELIDED_LEN {
        return;
    }
    match deps.store.keep_text(text, deps.clock.now_ms()).await {
        Ok(reference) => {
            if let Some(obj) = data.as_object_mut() {
                obj.remove("system");
                obj.insert(SYSTEM_TEXT.into(), reference.into());
            }
        }
        Err(e) => warn!(error = %e, "could not keep a system prompt apart; the event holds it"),
    }
}

#[async_trait]
impl EventSink for StoreSink {
    async fn emit(&self, mut events: Vec<NewEvent>) {
        for e in &mut events {
            if e.kind == orch_core::EventKind::LlmRequest {
                keep_system(&self.deps, &mut e.data).await;
            }
        }
        let mut pending = self.pending.lock().await;
        let first = pending.is_empty();
        pending.extend(events);
        drop(pending);
        if first {
            let (deps, run_id, pending) =
                (self.deps.clone(), self.run_id.clone(), self.pending.clone());
            tokio::spawn(async move {
                tokio::time::sleep(LLM_EVENT_FLUSH).await;
                flush(&deps, &run_id, &pending).await;
            });
        }
    }
}

/// Per-role permits of a process's workers: an attempt of a role runs only
/// while holding one of its role's `concurrency` permits, whether a loop of
/// that role received it or a loop of another role was handed it. Also
/// counts, per role, the loops waiting on the role's queue.
#[derive(Debug, Clone, Default)]
pub(crate) struct Permits {
    roles: Arc<std::collections::HashMap<Role, RolePermits>>,
    /// Cancelled when the process starts shutting down: a completion then
    /// hands no task over to its worker (the next tasks go to the queues,
    /// for other processes), so that the drain only finishes what runs.
    stopping: CancellationToken,
    /// Cancelled when the process stops waiting for its attempts in flight
    /// to finish: each then gives its task back ([`Input::Released`]).
    give_back: CancellationToken,
}

#[derive(Debug)]
struct RolePermits {
    permits: Arc<tokio::sync::Semaphore>,
    /// Loops of the role in a blocking receive on its queue.
    waiting: AtomicU64,
}

/// A loop counted as waiting on its role's queue while this is held.
pub(crate) struct Waiting<'a>(&'a AtomicU64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A task handed to the worker that completed the step dispatching it
/// (see the module's "Hand-off"): saved claimed by `owner`, with the permit
/// of its role it runs under.
#[derive(Debug)]
pub(crate) struct Next {
    pub(crate) dispatch: Dispatch,
    /// The task as the step saved it: RUNNING under `owner`'s lease.
    pub(crate) task: orch_core::Task,
    /// The run row as the step saved it.
    pub(crate) run: orch_core::Run,
    pub(crate) owner: WorkerId,
    /// What the task reads, if read with the step (else read before it runs).
    pub(crate) inputs: Option<orch_store::AttemptInputs>,
    /// The step handing the task over, still being saved (a pipelined
    /// hand-off; see the module's "Pipelined hand-off").
    pub(crate) landing: Option<Landing>,
    /// Held until the task's attempt is done (dropped with the `Next`).
    pub(crate) _permit: tokio::sync::OwnedSemaphorePermit,
}

/// The save of a pipelined hand-off under way ([`crate::Engine::complete`]),
/// and the inputs the handed task is run on meanwhile.
#[derive(Debug)]
pub(crate) struct Landing {
    /// The save, as a task of its own: it goes on whatever the worker does.
    pub(crate) handle: tokio::task::JoinHandle<Option<Landed>>,
    /// The upstream artifacts the worker expects the save to read.
    pub(crate) predicted: Vec<orch_core::Artifact>,
}

/// A pipelined hand-off's step, saved: the run's version and what the save
/// read for the handed task.
#[derive(Debug)]
pub(crate) struct Landed {
    pub(crate) version: i64,
    pub(crate) inputs: Option<orch_store::AttemptInputs>,
}

/// Write on their own what an attempt's outcome would have committed of its
/// model calls — the first `n_llm` events (its LLM events) and its journal
/// records — when the outcome cannot be committed: a call that was made
/// stays on record.
pub(crate) async fn record_alone(
    deps: &Deps,
    run_id: &RunId,
    outcome: &mut TaskOutcome,
    n_llm: usize,
) {
    let events: Vec<NewEvent> = outcome
        .events
        .drain(..n_llm.min(outcome.events.len()))
        .collect();
    let calls = std::mem::take(&mut outcome.llm_calls);
    record_calls(deps, run_id, events, calls).await;
}

async fn record_calls(
    deps: &Deps,
    run_id: &RunId,
    events: Vec<NewEvent>,
    calls: Vec<orch_store::LlmCallRecord>,
) {
    for call in &calls {
        if let Err(e) = deps.store.record_llm_call(call).await {
            warn!(run = %run_id, task = %call.task_id, error = %e, "could not journal an LLM call");
        }
    }
    if !events.is_empty()
        && let Err(e) = deps
            .store
            .append_events(run_id, &events, deps.clock.now_ms())
            .await
    {
        warn!(run = %run_id, error = %e, "could not record LLM events");
    }
}

/// Who may be handed a task by a completion's step: the completing worker
/// (a task's owner is this id for the task's role), under `permits`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hand<'a> {
    pub(crate) permits: &'a Permits,
    pub(crate) worker: &'a WorkerId,
    /// Only a task of a role no loop of this process waits for.
    pub(crate) unwatched_only: bool,
    /// The artifacts the completing attempt read: a handed task reads only
    /// the others ([`orch_store::InputsOf::held`]).
    pub(crate) held: &'a [orch_core::Artifact],
    /// The completing task's upstream tasks: those whose artifacts `held`
    /// holds.
    pub(crate) held_from: &'a [String],
    /// The handed task may start before the step is saved (the module's
    /// "Pipelined hand-off") if it reads from no task but the completing one
    /// and those of `held_from`.
    pub(crate) pipeline: bool,
}

/// The attempt [`execute`] runs: one received from a queue, to claim, or
/// one handed over already claimed.
enum Job<'a> {
    Dispatched(&'a Dispatch),
    /// With what it reads, if read with the step that handed it over, or
    /// the save of that step still under way.
    Handed(&'a Next, Option<orch_store::AttemptInputs>, Option<Landing>),
}

/// What [`execute`] leaves its loop to do next.
enum Ran {
    /// Run this task next, if one was handed over.
    Next(Option<Next>),
    /// Run the handed task again, on these inputs (`None`: read them): its
    /// pipelined attempt assumed inputs other than its step read.
    Again(Option<orch_store::AttemptInputs>),
}

impl<'a> Job<'a> {
    fn dispatch(&self) -> &'a Dispatch {
        match *self {
            Job::Dispatched(d) => d,
            Job::Handed(n, ..) => &n.dispatch,
        }
    }
}

/// Where [`execute`] may look for the next message of the worker's queue
/// before committing (and so be handed a task only if there is none).
struct Peek<'a> {
    role: Role,
    consumer: &'a str,
    slot: &'a mut Option<Delivery>,
}

impl Permits {
    pub(crate) fn new(
        roles: &[Role],
        concurrency: usize,
        stopping: CancellationToken,
        give_back: CancellationToken,
    ) -> Self {
        Permits {
            stopping,
            give_back,
            roles: Arc::new(
                roles
                    .iter()
                    .map(|&r| {
                        let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
                        let waiting = AtomicU64::new(0);
                        (r, RolePermits { permits, waiting })
                    })
                    .collect(),
            ),
        }
    }

    /// Whether this process serves any role (a default has none).
    fn any(&self) -> bool {
        !self.roles.is_empty()
    }

    /// Wait for a permit of `role`; `None` if this process does not serve it.
    async fn acquire(&self, role: Role) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permits = self.roles.get(&role)?.permits.clone();
        permits.acquire_owned().await.ok()
    }

    /// A free permit of `role`, now, if this process serves it.
    pub(crate) fn try_take(&self, role: Role) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permits = self.roles.get(&role)?.permits.clone();
        permits.try_acquire_owned().ok()
    }

    /// Count a loop of `role` as waiting on its queue while the guard lives.
    pub(crate) fn waiting(&self, role: Role) -> Option<Waiting<'_>> {
        let waiting = &self.roles.get(&role)?.waiting;
        waiting.fetch_add(1, Ordering::SeqCst);
        Some(Waiting(waiting))
    }

    /// Whether a loop of `role` is waiting on its queue: a message arriving
    /// there is taken at once without the loop that asks.
    pub(crate) fn watched(&self, role: Role) -> bool {
        self.roles
            .get(&role)
            .is_some_and(|r| r.waiting.load(Ordering::SeqCst) > 0)
    }
}

/// The engine whose completions take the run's next step
/// ([`Engine::complete`]), and whether its loop runs in this process.
#[derive(Debug, Clone)]
pub(crate) struct Stepper {
    pub(crate) engine: Engine,
    pub(crate) loop_here: bool,
}

/// One worker loop: receive from `role`'s queue until cancelled, and run
/// the tasks completions hand to it (module doc, "Hand-off").
pub(crate) async fn worker_loop(
    deps: Deps,
    opts: EngineOptions,
    stepper: Option<Stepper>,
    permits: Permits,
    role: Role,
    cancel: CancellationToken,
) {
    let id = WorkerId::new(role);
    debug!(worker = %id.0, queue = role.queue(), "worker started");
    let mut backoff = Duration::from_millis(100);
    // A handed task, or a message taken from the queue while committing.
    let mut handed: Option<Next> = None;
    let mut queued: Option<Delivery> = None;
    loop {
        // A handed task is claimed: it runs even on shutdown (as any
        // in-flight attempt, within the drain timeout), handing nothing on.
        if let Some(mut next) = handed.take() {
            let worker = &next.owner;
            debug!(worker = %worker.0, run = %next.dispatch.run_id, task = %next.dispatch.task_id, "running a task handed over by the step before");
            let peek = (!cancel.is_cancelled()).then_some(Peek {
                role,
                consumer: &id.0,
                slot: &mut queued,
            });
            let inputs = next.inputs.take();
            let landing = next.landing.take();
            let job = Job::Handed(&next, inputs, landing);
            match execute(&deps, &opts, stepper.as_ref(), &permits, peek, worker, job).await {
                Ok(Ran::Next(n)) => handed = n,
                Ok(Ran::Again(inputs)) => {
                    next.inputs = inputs;
                    handed = Some(next);
                }
                Err(e) => {
                    warn!(worker = %worker.0, task = %next.dispatch.task_id, error = %e, "attempt not recorded; its lease will expire and it will be retried")
                }
            }
            continue;
        }
        let delivery = match queued.take() {
            Some(delivery) => delivery,
            None => {
                let waiting = permits.waiting(role);
                let received = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break,
                    r = deps.broker.receive(role, &id.0, opts.poll_timeout) => r,
                };
                drop(waiting);
                match received {
                    Ok(Some(delivery)) => delivery,
                    Ok(None) => continue,
                    Err(orch_broker::Error::Closed) => break,
                    Err(e) => {
                        warn!(worker = %id.0, error = %e, retry_in = ?backoff, "broker receive failed");
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                }
            }
        };
        backoff = Duration::from_millis(100);
        // Not started, and not acknowledged, once shutting down (a message
        // that arrived as the loop was cancelled): the task stays QUEUED in
        // the store, a broker that redelivers will redeliver, and the next
        // process re-publishes it. Only attempts already in flight drain.
        if cancel.is_cancelled() {
            break;
        }
        let permit = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            p = permits.acquire(role) => p,
        };
        // The attempt is not cancelled by shutdown directly: the runtime
        // waits for it up to the drain timeout.
        let d = &delivery.dispatch;
        let peek = (!cancel.is_cancelled()).then_some(Peek {
            role,
            consumer: &id.0,
            slot: &mut queued,
        });
        let job = Job::Dispatched(d);
        match execute(&deps, &opts, stepper.as_ref(), &permits, peek, &id, job).await {
            Ok(Ran::Next(n)) => handed = n,
            // Only a handed task runs again.
            Ok(Ran::Again(_)) => {}
            Err(e) => {
                warn!(worker = %id.0, task = %d.task_id, error = %e, "attempt not recorded; its lease will expire and it will be retried");
                continue; // not acked: a broker that redelivers will redeliver
            }
        }
        drop(permit);
        if let Err(e) = deps.broker.ack(&delivery).await {
            warn!(worker = %id.0, error = %e, "ack failed");
        }
    }
    debug!(worker = %id.0, "worker stopped");
}

/// Handle one delivery: claim, run, commit, wake the engine. Returns `Ok`
/// when the message can be acknowledged (including a duplicate that was
/// dropped). A worker beside an engine uses [`Engine::execute_delivery`].
pub async fn execute_delivery(
    deps: &Deps,
    opts: &EngineOptions,
    worker: &WorkerId,
    delivery: &Delivery,
) -> Result<()> {
    let job = Job::Dispatched(&delivery.dispatch);
    execute(deps, opts, None, &Permits::default(), None, worker, job)
        .await
        .map(|_| ())
}

impl Engine {
    /// [`execute_delivery`] by a worker in this engine's process: the
    /// completion commits with the run's next step, which this engine takes
    /// from the run as it last saved it (see
    /// [`orch_store::Store::complete_and_save`]); the engine is woken only
    /// when that step was not saved or may have missed other tasks' progress.
    pub async fn execute_delivery(&self, worker: &WorkerId, delivery: &Delivery) -> Result<()> {
        let stepper = Stepper {
            engine: self.clone(),
            loop_here: true,
        };
        execute(
            &self.deps,
            &self.opts,
            Some(&stepper),
            &Permits::default(),
            None,
            worker,
            Job::Dispatched(&delivery.dispatch),
        )
        .await
        .map(|_| ())
    }
}

/// Claim (unless handed over), run and commit an attempt. With `peek`, the
/// worker's queue is looked at before the commit (unless another loop waits
/// on it): a message there goes to `peek.slot`, to run after any handed
/// task; the completion's step may hand this worker a task under `permits`
/// (the module's "Hand-off" says which), which is returned.
#[allow(clippy::too_many_arguments)]
async fn execute(
    deps: &Deps,
    opts: &EngineOptions,
    stepper: Option<&Stepper>,
    permits: &Permits,
    peek: Option<Peek<'_>>,
    worker: &WorkerId,
    job: Job<'_>,
) -> Result<Ran> {
    let d = job.dispatch();
    let handed = matches!(job, Job::Handed(..));
    // A pipelined hand-off of a task this process has no plan for (one the
    // step adds, as rework's fix tasks): the plan is read once the step that
    // adds the task is saved, and the task then runs on what that step read.
    let mut job = job;
    let mut landed_version = None;
    if let Job::Handed(next, _, landing @ Some(_)) = &mut job
        && cached_plan(&d.run_id, &d.task_id).is_none()
    {
        let landed = match landing.take() {
            Some(l) => l.handle.await.ok().flatten(),
            None => None,
        };
        let Some(Landed { version, inputs }) = landed else {
            debug!(run = %d.run_id, task = %d.task_id, "the step handing this task over was not saved; attempt dropped");
            return Ok(Ran::Next(None));
        };
        landed_version = Some(version);
        job = Job::Handed(next, inputs, None);
    }
    // The plan (cached) names the artifacts the task reads; they are read
    // with the claim, in the same round trip.
    let (plan, loaded) = match plan_of(deps, &d.run_id, &d.task_id).await {
        Ok(plan) => plan,
        Err(orch_store::Error::RunNotFound(_)) => {
            debug!(run = %d.run_id, task = %d.task_id, "dispatch of an unknown run dropped");
            return Ok(Ran::Next(None));
        }
        Err(e) => return Err(e.into()),
    };
    let upstream_tasks = plan.upstream_of(&d.task_id);
    let upstream_names = upstream_names(&plan, &upstream_tasks);
    let now = deps.clock.now_ms();
    let lease_until = now + opts.lease_ttl.as_millis() as i64;
    // The save of the step that handed the task over, if still under way.
    let mut landing = None;
    let claimed = match job {
        Job::Dispatched(d) => {
            let fresh = loaded.then_some(&plan);
            claim(
                deps,
                stepper,
                worker,
                d,
                fresh,
                &upstream_names,
                &upstream_tasks,
                now,
                lease_until,
            )
            .await?
        }
        Job::Handed(next, inputs, pipelined) => {
            // Claimed by the step's save; what the claim would have read
            // with it was read with the step, or is read now — or, while
            // the step is being saved, is what the worker expects it to read
            // (checked once it is saved).
            let orch_store::AttemptInputs { messages, upstream } = match (pipelined, inputs) {
                (Some(Landing { handle, predicted }), _) => {
                    debug!(run = %d.run_id, task = %d.task_id, "running while the step that handed it over is saved (pipelined)");
                    landing = Some(handle);
                    orch_store::AttemptInputs {
                        messages: Vec::new(),
                        upstream: predicted,
                    }
                }
                (None, Some(inputs)) => inputs,
                (None, None) => {
                    deps.store
                        .attempt_inputs(&d.run_id, &upstream_tasks, &upstream_names)
                        .await?
                }
            };
            Some(orch_store::ClaimedAttempt {
                task: next.task.clone(),
                run: next.run.clone(),
                messages,
                upstream,
                state: None,
            })
        }
    };
    let Some(orch_store::ClaimedAttempt {
        task,
        mut run,
        messages,
        upstream,
        state,
    }) = claimed
    else {
        debug!(task = %d.task_id, attempt = d.attempt, "duplicate or stale dispatch dropped");
        return Ok(Ran::Next(None));
    };
    if let Some(version) = landed_version {
        run.version = version;
    }
    let fence = Fence {
        run_id: d.run_id.clone(),
        task_id: d.task_id.clone(),
        attempt: d.attempt,
        owner: worker.0.clone(),
    };
    info!(run = %d.run_id, task = %task.id, role = %task.role, attempt = d.attempt, "attempt started");

    // Heartbeat the lease while the agent runs; if the lease is lost the
    // attempt is abandoned (its result could not be committed anyway).
    let lost = CancellationToken::new();
    let stop_heartbeat = CancellationToken::new();
    // A pipelined attempt: whether it is kept, once its step's save is done
    // (until then its lease may not be in the store yet).
    let (keep_tx, keep_rx) = tokio::sync::watch::channel(None);
    let heartbeat = {
        let deps = deps.clone();
        let fence = fence.clone();
        let lost = lost.clone();
        let stop = stop_heartbeat.clone();
        let every = opts.heartbeat_every;
        let ttl = opts.lease_ttl.as_millis() as i64;
        let mut kept = landing.is_some().then(|| keep_rx.clone());
        tokio::spawn(async move {
            if let Some(kept) = &mut kept {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    k = kept.wait_for(Option::is_some) => if k.ok().and_then(|k| *k) != Some(true) {
                        return;
                    },
                }
            }
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                match deps
                    .store
                    .heartbeat(&fence, deps.clock.now_ms() + ttl)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        lost.cancel();
                        return;
                    }
                    Err(e) => {
                        warn!(task = %fence.task_id, error = %e, "heartbeat failed; will try again")
                    }
                }
            }
        })
    };

    let sink = StoreSink::new(deps.clone(), d.run_id.clone());
    // Journal records of fast calls, like LLM events, wait to commit with the outcome.
    let provider = Arc::new(
        crate::JournalingProvider::new(
            deps.provider.clone(),
            deps.store.clone(),
            deps.clock.clone(),
        )
        .replay(!failed_on_output(&task))
        .buffered(LLM_EVENT_FLUSH)
        // A pipelined attempt journals its calls once it is known to be kept.
        .gated(landing.is_some().then_some(keep_rx)),
    );
    let mut upstream = upstream;
    // Plan order, not the order concurrent tasks happened to finish in: the
    // prompt must not depend on timing, or replays would not match the journal.
    upstream.sort_by_cached_key(|a| {
        let at = upstream_names.iter().position(|n| *n == a.name);
        (at, a.path.clone())
    });
    // Read no channel message: with none posted either, the task handed
    // over next reads none, and its step's save may be pipelined.
    let no_messages = messages.is_empty();
    let context = Context {
        plan: &plan,
        upstream_tasks: &upstream_tasks,
        task: &task,
        run: &run,
        messages,
        upstream: &upstream,
    };
    let agent = run_agent(
        deps,
        opts,
        context,
        &lost,
        &permits.give_back,
        &sink,
        &provider,
    );
    let (result, landed) = match landing {
        None => (agent.await, None),
        Some(handle) => {
            // The agent runs while the step handing the task over is saved;
            // if that save fails, the task is not this worker's, and if it
            // read other inputs, the attempt is not the one to keep: stop.
            let land = async {
                let landed = handle.await.ok().flatten();
                let kept = landed.as_ref().is_some_and(|l| {
                    assumed_inputs_hold(l.inputs.as_ref(), &upstream, &upstream_tasks)
                });
                let _ = keep_tx.send(Some(kept));
                if !kept {
                    lost.cancel();
                }
                Some((landed, kept))
            };
            tokio::join!(agent, land)
        }
    };
    stop_heartbeat.cancel();
    let _ = heartbeat.await;
    if let Some((landed, kept)) = landed {
        // A dropped pipelined attempt's calls stay on record as events, not in
        // the journal (see `JournalingProvider::gated`).
        let discard = |why: &str| {
            debug!(run = %d.run_id, task = %task.id, attempt = d.attempt, "{why}");
            async {
                drop(provider.take_buffered().await);
                record_calls(deps, &d.run_id, sink.take().await, Vec::new()).await
            }
        };
        match landed {
            None => {
                discard("the step handing this task over was not saved; attempt dropped").await;
                return Ok(Ran::Next(None));
            }
            Some(Landed { version, inputs }) => {
                run.version = version;
                if !kept {
                    discard("the step read other inputs than the pipelined attempt assumed; running it again").await;
                    return Ok(Ran::Again(inputs));
                }
            }
        }
    }
    // LLM events not yet written commit with the outcome, before its own events.
    let llm_events = sink.take().await;
    let llm_calls = provider.take_buffered().await;
    // Messages posted by a successful attempt, published once it committed.
    let mut posted: Vec<ChannelPost> = Vec::new();
    let mut outcome = match result {
        AttemptResult::Done(out) => TaskOutcome {
            status: TaskStatus::Succeeded,
            summary: Some(out.summary.clone()),
            verdict: out.verdict.clone(),
            error: None,
            retryable: true,
            events: {
                let mut ev = out.events;
                ev.extend(out.messages.iter().map(|m| channel_event(&task.id, m)));
                posted = out.messages;
                ev.push(
                    NewEvent::task(orch_core::EventKind::TaskSucceeded, &task.id, format!("{} succeeded: {}", task.id, out.summary))
                        .with_data(serde_json::json!({"attempt": d.attempt, "verdict": out.verdict, "cost_usd": out.usage.cost_usd})),
                );
                ev
            },
            artifacts: out.artifacts,
            usage: out.usage,
            llm_calls: Vec::new(),
        },
        AttemptResult::Failed {
            error,
            retryable,
            events,
            usage,
        } => TaskOutcome {
            status: TaskStatus::Failed,
            summary: None,
            verdict: None,
            error: Some(error.clone()),
            retryable,
            artifacts: Vec::new(),
            events: {
                let mut ev = events;
                ev.push(
                    NewEvent::task(orch_core::EventKind::TaskFailed, &task.id, format!("attempt {} failed: {error}", d.attempt))
                        .with_data(serde_json::json!({"attempt": d.attempt, "retryable": retryable, "error": error})),
                );
                ev
            },
            usage,
            llm_calls: Vec::new(),
        },
        AttemptResult::LeaseLost => {
            warn!(task = %task.id, attempt = d.attempt, "lease lost while running; result discarded");
            record_calls(deps, &d.run_id, llm_events, llm_calls).await;
            return Ok(Ran::Next(None));
        }
        AttemptResult::GivenBack => {
            // The calls made so far stay on record (and in the journal, so
            // the next attempt replays them rather than paying again).
            record_calls(deps, &d.run_id, llm_events, llm_calls).await;
            give_back(stepper, &fence).await;
            return Ok(Ran::Next(None));
        }
    };
    let n_llm = llm_events.len();
    outcome.events.splice(0..0, llm_events);
    outcome.llm_calls = llm_calls;
    // A message waiting on the worker's queue runs next; otherwise the
    // step may hand the worker one of its tasks. No need to look while
    // another loop of this process waits on that queue: it takes what comes.
    let any = Hand {
        permits,
        worker,
        unwatched_only: false,
        held: &upstream,
        held_from: &upstream_tasks,
        // Not for a task received from a queue: its message is acknowledged
        // once this returns, which must follow its completion's commit.
        pipeline: handed && no_messages && posted.is_empty(),
    };
    let can_hand = stepper.is_some() && permits.any() && !permits.stopping.is_cancelled();
    let hand = match peek {
        // A message already waits for this loop: it runs next.
        Some(peek) if peek.slot.is_some() => None,
        Some(peek) if can_hand && permits.watched(peek.role) => Some(any),
        Some(peek) if can_hand => {
            match deps
                .broker
                .receive(peek.role, peek.consumer, Duration::ZERO)
                .await
            {
                // It runs after a task handed over, if one is: a task no
                // loop of its role waits for here (one that waits takes it
                // from its queue sooner).
                Ok(Some(delivery)) => {
                    *peek.slot = Some(delivery);
                    Some(Hand {
                        unwatched_only: true,
                        ..any
                    })
                }
                Ok(None) => Some(any),
                Err(e) => {
                    debug!(worker = %worker.0, error = %e, "queue not looked at; nothing handed over");
                    None
                }
            }
        }
        _ => None,
    };
    // With an engine the completion takes the run's next step with it;
    // otherwise an engine is woken to take it.
    // Errors leave the attempt's model calls on record (record_alone).
    let completed = match stepper {
        Some(s) => {
            s.engine
                .complete(
                    &fence,
                    outcome,
                    n_llm,
                    &task,
                    &run,
                    state,
                    s.loop_here,
                    hand,
                )
                .await
        }
        None => match deps
            .store
            .complete_task(&fence, &outcome, deps.clock.now_ms())
            .await
        {
            Ok(()) => Ok((true, None)),
            Err(e) => {
                record_alone(deps, &d.run_id, &mut outcome, n_llm).await;
                Err(e)
            }
        },
    };
    let (wake, next) = match completed {
        Ok(done) => done,
        Err(orch_store::Error::LeaseLost { .. }) => {
            warn!(task = %task.id, attempt = d.attempt, "lease lost before commit; result discarded");
            return Ok(Ran::Next(None));
        }
        Err(e) => return Err(e.into()),
    };
    if wake && let Err(e) = deps.broker.wake(&d.run_id).await {
        warn!(run = %d.run_id, error = %e, "wake-up not delivered; the sweeper will tick the run");
    }
    for m in posted {
        let msg = ChannelMessage {
            run_id: d.run_id.clone(),
            channel: m.channel,
            from_role: m.from_role,
            task_id: m.task_id,
            text: m.text,
            seq: None,
        };
        if let Err(e) = deps.broker.publish_channel(&msg).await {
            warn!(run = %d.run_id, channel = %msg.channel, error = %e, "channel message not published live; it is in the event log");
        }
    }
    Ok(Ran::Next(next))
}

/// Whether what a pipelined hand-off's save read for the handed task
/// (`read`; `None`: it could not read it) is what its attempt ran on: no
/// channel message in the task's inbox (see `run_agent`) and the
/// upstream artifacts `assumed`, in any order. Artifacts are compared by
/// what identifies a stored version — run, name, path and version — and the
/// task and attempt that wrote it (so an assumed version of the completion's
/// own is the row it wrote), plus its kind: a stored version never changes,
/// so the same row has the same content, which need not be compared again.
fn assumed_inputs_hold(
    read: Option<&orch_store::AttemptInputs>,
    assumed: &[orch_core::Artifact],
    upstream_tasks: &[String],
) -> bool {
    let Some(read) = read else {
        return false;
    };
    let inbox = read.messages.iter().any(|m| {
        m.task_id
            .as_ref()
            .is_none_or(|t| upstream_tasks.contains(t))
            && channel_post(m).is_some()
    });
    let same = |a: &orch_core::Artifact, b: &orch_core::Artifact| {
        a.version == b.version
            && a.name == b.name
            && a.path == b.path
            && a.attempt == b.attempt
            && a.task_id == b.task_id
            && a.kind == b.kind
            && a.run_id == b.run_id
    };
    !inbox
        && read.upstream.len() == assumed.len()
        && read
            .upstream
            .iter()
            .all(|a| assumed.iter().any(|b| same(a, b)))
}

/// Claim the attempt `d` for `worker`, with what it reads (see
/// [`orch_store::Store::claim_attempt`]); `None` for a duplicate or stale
/// dispatch. `fresh`: the whole run, just read for its plan; if the run is
/// still at its version at the claim, the claim does not read it again and
/// it stands for the run as read with the claim.
#[allow(clippy::too_many_arguments)]
async fn claim(
    deps: &Deps,
    stepper: Option<&Stepper>,
    worker: &WorkerId,
    d: &Dispatch,
    fresh: Option<&std::sync::Arc<orch_core::RunState>>,
    upstream_names: &[String],
    upstream_tasks: &[String],
    now: orch_core::Millis,
    lease_until: orch_core::Millis,
) -> Result<Option<orch_store::ClaimedAttempt>> {
    let claim = orch_store::Claim {
        run_id: &d.run_id,
        task_id: &d.task_id,
        attempt: d.attempt,
        owner: &worker.0,
        lease_until,
        now,
        upstream: upstream_names,
        upstream_tasks,
        // A worker without the engine loop beside it rarely holds the run
        // as last saved (another process took the last step): its step will
        // start from the run as read with the claim.
        with_state: stepper.is_some_and(|s| !s.loop_here),
        // Unless this process's engine saved the run's last step itself,
        // or the run was just read whole.
        known_version: stepper
            .and_then(|s| s.engine.saved_version(&d.run_id))
            .max(fresh.map(|f| f.run.version)),
    };
    let mut claimed = deps.store.claim_attempt(&claim).await?;
    if let Some(c) = &mut claimed
        && c.state.is_none()
        && let Some(fresh) = fresh.filter(|f| Some(f.run.version) == claim.known_version)
        && claim.with_state
    {
        c.state = Some((**fresh).clone());
    }
    if let Some(c) = &claimed {
        debug!(
            run = %d.run_id,
            task = %d.task_id,
            known = ?claim.known_version,
            version = c.run.version,
            read_state = c.state.is_some(),
            "claimed"
        );
    }
    Ok(claimed)
}

/// The `channel_message` event recording a posted message.
fn channel_event(task_id: &str, m: &ChannelPost) -> NewEvent {
    const SHOWN: usize = 120;
    let first = m.text.lines().next().unwrap_or_default();
    let shown: String = first.chars().take(SHOWN).collect();
    let more = if shown.len() < m.text.len() {
        " …"
    } else {
        ""
    };
    NewEvent::task(
        EventKind::ChannelMessage,
        task_id,
        format!("{} posted to {}: {shown}{more}", m.from_role, m.channel),
    )
    .with_data(serde_json::json!({
        "channel": m.channel,
        "from_role": m.from_role,
        "text": m.text,
    }))
}

/// A message an agent posted, read back from its `channel_message` event
/// (as a successful attempt records it); `None` for any other event, or a
/// `channel_message` event of another shape (e.g. written by another tool).
pub fn channel_post(e: &Event) -> Option<ChannelPost> {
    if e.kind != EventKind::ChannelMessage {
        return None;
    }
    let text = |k: &str| e.data.get(k).and_then(|v| v.as_str());
    Some(ChannelPost {
        channel: text("channel")?.to_string(),
        from_role: text("from_role")?.parse().ok()?,
        task_id: e.task_id.clone().unwrap_or_default(),
        text: text("text")?.to_string(),
        seq: Some(e.seq),
    })
}

enum AttemptResult {
    Done(AgentOutput),
    Failed {
        error: String,
        retryable: bool,
        events: Vec<NewEvent>,
        usage: Usage,
    },
    LeaseLost,
    /// The process shuts down and stopped waiting: the task is given back.
    GivenBack,
}

/// What an attempt runs on: the run's plan, the claimed task and what was
/// read with the claim ([`orch_store::ClaimedAttempt`]).
struct Context<'a> {
    plan: &'a orch_core::RunState,
    /// The task's upstream tasks: whose channel messages it reads.
    upstream_tasks: &'a [String],
    task: &'a orch_core::Task,
    /// The run row as read with the claim (its budget and spending then).
    run: &'a orch_core::Run,
    messages: Vec<Event>,
    /// The upstream artifacts, in plan order (see `execute`).
    upstream: &'a [orch_core::Artifact],
}

/// Names of the artifacts a task reads: those its upstream tasks
/// (`upstream_ids`) expect, in plan order.
pub(crate) fn upstream_names(plan: &orch_core::RunState, upstream_ids: &[String]) -> Vec<String> {
    plan.tasks
        .iter()
        .filter(|t| upstream_ids.contains(&t.id))
        .flat_map(|t| t.expected.iter().map(|e| e.name.clone()))
        .collect()
}

/// Give the attempt `fence` holds back to its run: queued again at once,
/// not counted. Without an engine (or if the store refuses) the lease is
/// left to expire, and the attempt is retried as a failed one.
async fn give_back(stepper: Option<&Stepper>, fence: &Fence) {
    let Some(s) = stepper else {
        warn!(task = %fence.task_id, attempt = fence.attempt, "shutting down: attempt abandoned; its lease will expire and it will be retried");
        return;
    };
    let input = Input::Released {
        task_id: fence.task_id.clone(),
        attempt: fence.attempt,
        owner: fence.owner.clone(),
    };
    match s.engine.apply_input(&fence.run_id, input).await {
        Ok(_) => {
            info!(run = %fence.run_id, task = %fence.task_id, attempt = fence.attempt, "shutting down: attempt given back; its task is queued again")
        }
        Err(e) => {
            warn!(run = %fence.run_id, task = %fence.task_id, error = %e, "shutting down: attempt not given back; its lease will expire and it will be retried")
        }
    }
}

/// Run the task's agent until it ends, times out, its lease is `lost` or
/// the process gives it back (`give_back`).
async fn run_agent(
    deps: &Deps,
    opts: &EngineOptions,
    context: Context<'_>,
    lost: &CancellationToken,
    give_back: &CancellationToken,
    sink: &StoreSink,
    provider: &Arc<crate::JournalingProvider>,
) -> AttemptResult {
    let Context {
        plan,
        upstream_tasks,
        task,
        run,
        messages,
        upstream,
    } = context;
    // Messages of upstream tasks only (and of no task: a person's): one that
    // a task running beside it posted may or may not be there yet, and the
    // prompt must not depend on that either.
    let inbox: Vec<ChannelPost> = messages
        .iter()
        .filter(|m| {
            m.task_id
                .as_ref()
                .is_none_or(|t| upstream_tasks.contains(t))
        })
        .filter_map(channel_post)
        .collect();
    let model = opts.model_for(task.role).to_string();
    let model = if deps.provider.is_scripted() {
        deps.provider.default_model().to_string()
    } else {
        model
    };
    let input = TaskInput {
        run: &plan.run,
        task,
        upstream,
        messages: &inbox,
        model: &model,
    };
    let timeout = Duration::from_millis(task.timeout_ms.max(1) as u64);
    let budgeted = crate::BudgetedProvider::new(
        provider.clone(),
        run.settings.budget_usd,
        run.settings.budget_tokens,
        run.cost_usd,
        run.tokens_in.saturating_add(run.tokens_out),
    );
    let agent = deps.agents.run_task(input, &budgeted, sink);
    let result = tokio::select! {
        _ = lost.cancelled() => AttemptResult::LeaseLost,
        _ = give_back.cancelled() => AttemptResult::GivenBack,
        r = tokio::time::timeout(timeout, agent) => match r {
            Ok(Ok(out)) => AttemptResult::Done(out),
            Ok(Err(f)) => AttemptResult::Failed {
                retryable: f.error.retryable(),
                // A budget refusal is recorded as "budget exceeded: ..." (no
                // "LLM call failed" prefix): the run's escalation keys on it.
                error: match &f.error {
                    orch_agents::AgentError::Provider(e @ orch_llm::Error::Budget(_)) => e.to_string(),
                    e => e.to_string(),
                },
                events: f.events,
                usage: f.usage,
            },
            Err(_) => failed(format!("timed out after {} s (TASK_TIMEOUT_SECONDS or the task's timeout_secs)", timeout.as_secs_f64()), true),
        }
    };
    // Records written on their own are written before the outcome commits.
    provider.flush().await;
    result
}

/// Whether the task's previous attempt failed because its answers were
/// unusable (`orch_agents::AgentError::InvalidOutput`): replaying them would fail again.
fn failed_on_output(task: &orch_core::Task) -> bool {
    task.attempt > 1
        && task
            .last_error
            .as_deref()
            .is_some_and(|e| e.starts_with(INVALID_OUTPUT))
}

/// How the message of `orch_agents::AgentError::InvalidOutput` begins.
const INVALID_OUTPUT: &str = "invalid output";

/// Runs' plans as workers last loaded them. What a worker needs of a run
/// besides its own task — the goal, the context, every task's `needs` and
/// `expected` — never changes once written; tasks are only ever added (by
/// rework), and a task's dependencies exist before it does. So a cached plan
/// that contains the claimed task is exact for it, and saves a read of the
/// whole run on every attempt.
static PLANS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<RunId, std::sync::Arc<orch_core::RunState>>>,
> = std::sync::LazyLock::new(Default::default);

/// Bound on cached plans; the cache is cleared when it is reached.
const MAX_CACHED_PLANS: usize = 4096;

/// The cached plan of `run_id`, if it has `task_id`.
fn cached_plan(run_id: &RunId, task_id: &str) -> Option<std::sync::Arc<orch_core::RunState>> {
    let plans = PLANS.lock().unwrap_or_else(|p| p.into_inner());
    plans
        .get(run_id)
        .filter(|s| s.task(task_id).is_some())
        .cloned()
}

/// The plan of `run_id`, cached or read (then `true`: the whole run as it
/// is now).
async fn plan_of(
    deps: &Deps,
    run_id: &RunId,
    task_id: &str,
) -> orch_store::Result<(std::sync::Arc<orch_core::RunState>, bool)> {
    if let Some(hit) = cached_plan(run_id, task_id) {
        return Ok((hit, false));
    }
    let state = std::sync::Arc::new(deps.store.load_run(run_id).await?);
    let mut plans = PLANS.lock().unwrap_or_else(|p| p.into_inner());
    if plans.len() >= MAX_CACHED_PLANS {
        plans.clear();
    }
    plans.insert(run_id.clone(), state.clone());
    Ok((state, true))
}

fn failed(error: String, retryable: bool) -> AttemptResult {
    AttemptResult::Failed {
        error,
        retryable,
        events: Vec::new(),
        usage: Usage::default(),
    }
}

/// Spawn `opts.concurrency` worker loops for each role into `set`, sharing
/// `opts.concurrency` permits per role; with `stepper`, completions take the
/// run's next step with them (and may hand a task to their worker).
pub(crate) fn spawn_workers(
    set: &mut tokio::task::JoinSet<()>,
    deps: &Deps,
    opts: &EngineOptions,
    stepper: Option<&Stepper>,
    roles: &[Role],
    cancel: &CancellationToken,
    give_back: &CancellationToken,
) {
    let permits = Permits::new(roles, opts.concurrency, cancel.clone(), give_back.clone());
    for &role in roles {
        for _ in 0..opts.concurrency.max(1) {
            set.spawn(worker_loop(
                deps.clone(),
                opts.clone(),
                stepper.cloned(),
                permits.clone(),
                role,
                cancel.clone(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{INVALID_OUTPUT, WorkerId};
    use orch_core::Role;

    #[test]
    fn a_worker_id_names_the_role_of_the_attempt_it_runs() {
        let id = WorkerId::new(Role::BusinessAnalyst);
        let (host, pid) = WorkerId::parse_host_pid(&id.0).expect("host:pid:...");
        let pm = id.as_role(Role::ProjectManager);
        assert_eq!(WorkerId::parse_host_pid(&pm.0), Some((host, pid)));
        let n = id.0.rsplit_once('-').unwrap().1;
        assert!(pm.0.ends_with(&format!(":pm-{n}")), "{}", pm.0);
        assert_eq!(pm.as_role(Role::BusinessAnalyst), id, "and back");
    }

    /// A pipelined attempt's work is kept only if its step read what it
    /// assumed: the same artifacts in any order, and no channel message in
    /// its inbox (one of an upstream task or of a person; another task's is
    /// not in the inbox).
    #[test]
    fn a_pipelined_attempt_is_kept_only_on_the_inputs_it_assumed() {
        use super::assumed_inputs_hold;
        use orch_core::{Artifact, Event, EventKind, RunId};
        use orch_store::AttemptInputs;
        let artifact = |name: &str, version: i64| Artifact {
            run_id: RunId("r".into()),
            name: name.into(),
            version,
            kind: "document".into(),
            path: None,
            task_id: "up".into(),
            attempt: 1,
            content: name.into(),
            metadata: serde_json::Value::Null,
            created_at: 1,
        };
        let message = |task: Option<&str>| Event {
            run_id: RunId("r".into()),
            seq: 7,
            kind: EventKind::ChannelMessage,
            task_id: task.map(Into::into),
            message: "posted".into(),
            data: serde_json::json!({"channel": "design", "from_role": "tech_lead", "text": "hi"}),
            created_at: 1,
        };
        let assumed = [artifact("a", 1), artifact("b", 2)];
        let upstream = ["up".to_string()];
        let read =
            |upstream: Vec<Artifact>, messages: Vec<Event>| AttemptInputs { messages, upstream };
        let holds = |r: &AttemptInputs| assumed_inputs_hold(Some(r), &assumed, &upstream);

        assert!(
            holds(&read(vec![artifact("b", 2), artifact("a", 1)], vec![])),
            "any order"
        );
        assert!(
            holds(&read(
                vec![artifact("a", 1), artifact("b", 2)],
                vec![message(Some("beside"))]
            )),
            "a message of a task not upstream is not in the inbox"
        );
        assert!(
            !holds(&read(vec![artifact("a", 1), artifact("b", 3)], vec![])),
            "a newer version"
        );
        assert!(!holds(&read(vec![artifact("a", 1)], vec![])), "one fewer");
        let more = vec![artifact("a", 1), artifact("b", 2), artifact("c", 1)];
        assert!(!holds(&read(more, vec![])), "one more");
        let both = || vec![artifact("a", 1), artifact("b", 2)];
        assert!(
            !holds(&read(both(), vec![message(Some("up"))])),
            "an upstream task's message"
        );
        assert!(
            !holds(&read(both(), vec![message(None)])),
            "a person's message"
        );
        assert!(
            !assumed_inputs_hold(None, &assumed, &upstream),
            "nothing read: read it"
        );
    }

    #[test]
    fn invalid_output_errors_are_recognised() {
        let e = orch_agents::AgentError::InvalidOutput {
            problems: vec!["no artifact".into()],
        };
        assert!(e.to_string().starts_with(INVALID_OUTPUT));
    }
}
