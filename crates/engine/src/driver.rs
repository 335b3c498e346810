//! The engine proper: submit runs, tick them, apply human inputs.

use orch_broker::Dispatch;
use orch_core::machine::{self, Action, Input, RunState, StateDiff};
use orch_core::{
    EventKind, NewEvent, Run, RunId, RunSettings, RunStatus, Task, TaskStatus, Workflow,
};
use orch_store::{Fence, NewDeadLetter, TaskOutcome};
use serde_json::Value;
use tracing::{debug, warn};

use crate::worker::{Hand, Landed, Landing, Next, record_alone};
use crate::{Deps, EngineOptions, Error, Result};

/// How many times a tick reloads and retries after a concurrent update.
const MAX_CONFLICT_RETRIES: usize = 32;

/// Drives runs through the pure state machine.
#[derive(Debug, Clone)]
pub struct Engine {
    pub(crate) deps: Deps,
    pub(crate) opts: EngineOptions,
    /// The steps this engine saved, sent after each: in-process waiters
    /// ([`Engine::wait`], event streams) wake at once instead of polling.
    steps: std::sync::Arc<tokio::sync::watch::Sender<Steps>>,
    /// Runs as this engine last saved them: the next step of a run that no
    /// other engine saved since reads only what workers changed of its tasks
    /// ([`orch_store::RunStore::load_run_from`]) instead of decoding them all.
    saved: std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<RunId, std::sync::Arc<RunState>>>,
    >,
    /// Completions of one run in this process take their steps one at a
    /// time ([`Engine::complete`]).
    stepping: std::sync::Arc<RunTurns>,
    /// When the sweeper last pruned the broker's idle consumers (engine
    /// clock, ms); shared by clones so they prune once between them.
    pub(crate) last_prune: std::sync::Arc<std::sync::atomic::AtomicI64>,
    /// When a sweep last ticked every active run (engine clock, ms); shared
    /// by clones.
    pub(crate) last_tick_all: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

/// Bound on the runs kept in `Engine::saved`; the map is cleared when reached.
const MAX_SAVED_RUNS: usize = 4096;

/// A turn per run: one holder at a time for each run, others wait. A run's
/// entry lives while someone holds or waits for its turn.
#[derive(Debug, Default)]
struct RunTurns {
    turns:
        std::sync::Mutex<std::collections::HashMap<RunId, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

/// A run's turn, given back when dropped. Owned, so that a completion whose
/// save goes on after its worker moved on (a pipelined hand-off) keeps it.
struct Turn {
    turns: std::sync::Arc<RunTurns>,
    run_id: RunId,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl RunTurns {
    fn map(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<RunId, std::sync::Arc<tokio::sync::Mutex<()>>>,
    > {
        self.turns.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn take(self: &std::sync::Arc<Self>, run_id: &RunId) -> Turn {
        let turn = self.map().entry(run_id.clone()).or_default().clone();
        Turn {
            turns: self.clone(),
            run_id: run_id.clone(),
            guard: Some(turn.lock_owned().await),
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.turns.map();
        // Only the map holds it: no one holds or waits for this run's turn.
        if map
            .get(&self.run_id)
            .is_some_and(|t| std::sync::Arc::strong_count(t) == 1)
        {
            map.remove(&self.run_id);
        }
    }
}

/// The steps an [`Engine`] saved ([`Engine::changes`]): how many, and the
/// run and status of the last one, so a waiter can tell whether its run may
/// have changed.
#[derive(Debug, Clone, Default)]
pub struct Steps {
    pub count: u64,
    pub last: Option<(RunId, RunStatus)>,
}

/// What a tick did.
#[derive(Debug, Clone, PartialEq)]
pub struct TickOutcome {
    pub status: RunStatus,
    pub dispatched: usize,
    pub events: usize,
}

impl Engine {
    pub fn new(deps: Deps, opts: EngineOptions) -> Self {
        Engine {
            deps,
            opts,
            steps: std::sync::Arc::new(tokio::sync::watch::channel(Steps::default()).0),
            saved: Default::default(),
            stepping: Default::default(),
            last_prune: std::sync::Arc::new(std::sync::atomic::AtomicI64::new(i64::MIN)),
            last_tick_all: std::sync::Arc::new(std::sync::atomic::AtomicI64::new(i64::MIN)),
        }
    }

    /// A receiver that changes whenever this engine saved a step.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<Steps> {
        self.steps.subscribe()
    }

    /// Wait until the run is terminal or needs input (or `timeout` passes);
    /// returns the run as it is then. Wakes on this process's own steps and
    /// polls the store every `poll` for steps taken elsewhere. The run is
    /// read again only when it may have reached such a status: not after a
    /// single step of this engine that left it running or was another run's.
    pub async fn wait(
        &self,
        run_id: &RunId,
        poll: std::time::Duration,
        timeout: Option<std::time::Duration>,
    ) -> Result<Run> {
        let mut rx = self.changes();
        let mut seen = rx.borrow_and_update().count;
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            let run = self.deps.store.get_run(run_id).await?;
            if ends_a_wait(run.status) {
                return Ok(run);
            }
            loop {
                let left =
                    deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
                if left.is_some_and(|l| l.is_zero()) {
                    return Ok(self.deps.store.get_run(run_id).await?);
                }
                let wait = left.map_or(poll, |l| l.min(poll));
                if !matches!(tokio::time::timeout(wait, rx.changed()).await, Ok(Ok(()))) {
                    break; // polled: steps may have been taken elsewhere
                }
                let steps = rx.borrow_and_update().clone();
                let one_more = steps.count == seen + 1;
                seen = steps.count;
                let unchanged = one_more
                    && steps
                        .last
                        .as_ref()
                        .is_some_and(|(id, status)| id != run_id || !ends_a_wait(*status));
                if !unchanged {
                    break;
                }
            }
        }
    }

    /// The version of `run_id` as this engine last saved it, if it holds it.
    pub(crate) fn saved_version(&self, run_id: &RunId) -> Option<i64> {
        self.saved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(run_id)
            .map(|state| state.run.version)
    }

    pub fn deps(&self) -> &Deps {
        &self.deps
    }

    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// Create a run of `workflow` for `goal` and take its first step. The
    /// step commits with the run, in the same transaction: a crash leaves
    /// either nothing or the run with its first tasks queued (published
    /// again by the sweeper if the publish after the commit was lost).
    pub async fn submit(
        &self,
        goal: &str,
        context: Value,
        workflow: &Workflow,
        settings: RunSettings,
    ) -> Result<RunId> {
        let (state, mut events) =
            self.new_run(goal, context, workflow, settings, &self.provider_label())?;
        let id = state.run.id.clone();
        let decided = Decided::from(&state, Input::Reconcile, state.run.created_at)?;
        if !decided.dead.is_empty() {
            // Not from a fresh run; but should it be, the tick records them.
            self.deps
                .store
                .create_run(&state, &events, state.run.created_at)
                .await?;
            self.tick(&id).await?;
            return Ok(id);
        }
        events.extend(decided.events.iter().cloned());
        let version = decided.after.run.version;
        self.deps
            .store
            .create_run(&decided.after, &events, state.run.created_at)
            .await?;
        self.saved(&id, decided, version).await;
        Ok(id)
    }

    /// Create a run without taking any step (`run --detach`).
    pub async fn create(
        &self,
        goal: &str,
        context: Value,
        workflow: &Workflow,
        settings: RunSettings,
    ) -> Result<RunId> {
        self.create_labelled(goal, context, workflow, settings, &self.provider_label())
            .await
    }

    /// [`Engine::create`], recording `provider` as the run's provider label
    /// (`replay of RUN` for a replayed run) instead of the provider's name.
    pub async fn create_labelled(
        &self,
        goal: &str,
        context: Value,
        workflow: &Workflow,
        settings: RunSettings,
        provider: &str,
    ) -> Result<RunId> {
        let (state, events) = self.new_run(goal, context, workflow, settings, provider)?;
        self.deps
            .store
            .create_run(&state, &events, state.run.created_at)
            .await?;
        Ok(state.run.id)
    }

    /// The provider as runs record it: marked scripted if it is.
    fn provider_label(&self) -> String {
        let provider = &self.deps.provider;
        if provider.is_scripted() && !provider.name().contains("scripted") {
            format!("{} (scripted)", provider.name())
        } else {
            provider.name().to_string()
        }
    }

    /// A new run (not stored) and its creation events, now.
    fn new_run(
        &self,
        goal: &str,
        context: Value,
        workflow: &Workflow,
        settings: RunSettings,
        provider: &str,
    ) -> Result<(RunState, Vec<NewEvent>)> {
        orch_core::machine::check_required_gates(workflow, &settings)?;
        let now = self.deps.clock.now_ms();
        let (state, mut events) = RunState::new_run(
            RunId::generate(),
            goal,
            context,
            workflow,
            settings,
            provider,
            now,
        );
        if self.deps.provider.is_scripted() {
            events.insert(
                1,
                NewEvent::run(
                    EventKind::RunCreated,
                    "LLM provider is SCRIPTED: responses come from a fixture, not a model",
                )
                .with_data(
                    serde_json::json!({"provider": self.deps.provider.name(), "scripted": true}),
                ),
            );
        }
        Ok((state, events))
    }

    /// Reconcile a run: move everything that can move and publish what became ready.
    pub async fn tick(&self, run_id: &RunId) -> Result<TickOutcome> {
        self.step(run_id, || Input::Reconcile).await
    }

    /// Apply a human or system input to a run, then reconcile.
    pub async fn apply_input(&self, run_id: &RunId, input: Input) -> Result<TickOutcome> {
        self.step(run_id, || input.clone()).await
    }

    /// Load, apply, save (retrying on concurrent updates), then publish.
    async fn step(&self, run_id: &RunId, input: impl Fn() -> Input) -> Result<TickOutcome> {
        // A reconcile derives everything from stored state: were its save
        // lost in a crash, the next tick would take the same step again. So
        // it need not wait for the disk; a person's input or a replay must.
        let durability = if matches!(input(), Input::Reconcile) {
            orch_store::Durability::Derived
        } else {
            orch_store::Durability::Durable
        };
        for retry in 0..MAX_CONFLICT_RETRIES {
            let known = self
                .saved
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(run_id)
                .cloned();
            let before = match known {
                Some(known) => self.deps.store.load_run_from(run_id, &known).await?,
                None => self.deps.store.load_run(run_id).await?,
            };
            let now = self.deps.clock.now_ms();
            let decided = Decided::from(&before, input(), now)?;
            if decided.is_empty() {
                // A step taken elsewhere (a worker process) may have ended
                // the run: waiters here hear of it from this tick.
                if ends_a_wait(before.run.status) {
                    self.announce(run_id, before.run.status);
                }
                return Ok(TickOutcome {
                    status: decided.after.run.status,
                    dispatched: 0,
                    events: 0,
                });
            }
            match self
                .deps
                .store
                .save_run(
                    run_id,
                    before.run.version,
                    &decided.diff,
                    &decided.after,
                    &decided.events,
                    &decided.dead,
                    now,
                    durability,
                )
                .await
            {
                Ok(version) => return Ok(self.saved(run_id, decided, version).await),
                Err(orch_store::Error::Conflict(_)) => {
                    debug!(run = %run_id, retry, "concurrent update; reloading");
                    tokio::task::yield_now().await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Contended(run_id.to_string()))
    }

    /// Commit a worker's outcome of the `claimed` attempt (as its claim
    /// returned it, with the run row read then) and, in the same transaction,
    /// the reconcile step it leads to ([`orch_store::Store::complete_and_save`]),
    /// so the run moves on without a wake-up, a re-read and a save of its own.
    /// The step starts from the run as this engine last saved it (possibly
    /// after the claim: an engine step cannot move a RUNNING task without
    /// fencing its worker out), with the completion applied; it is saved only
    /// if no one saved the run since.
    /// Tasks in flight beside the completed one may have ended since that
    /// save without changing the version; the store tells whether any did
    /// (the step is then not current, as any engine step may be: what it
    /// changes is compare-and-set) and the engine is woken to look again.
    /// A view of the run that is missing or older than the claim's (another
    /// process's engine or worker saved it since) is replaced by
    /// `claimed_state` (the run read with the claim), else read from the
    /// store: a worker process steps the runs it works on as an engine
    /// process would.
    /// Completions of one run in this process take their steps one at a
    /// time: the second of two tasks finishing together (a backend and a
    /// frontend) steps from the run as the first left it, where it would
    /// otherwise be refused for the version the first moved and leave its
    /// step to the loop (a wake-up, a re-read and a save).
    /// Returns whether an engine loop must be woken: when the step was not
    /// saved or not current, and, if `loop_here` is false (no engine loop in
    /// this process, so no waiter of a run here), when it ended the run or
    /// made it wait for input, so the loop's waiters hear of it; and the
    /// task handed to the completing worker, if `hand` allows one (see
    /// [`hand_over`]). Errors are the completion's; the attempt's LLM events
    /// (the first `n_llm` of the outcome's) and journal records are then
    /// written on their own.
    ///
    /// **Pipelined hand-off.** With `hand.pipeline`, a handed task whose
    /// inputs the completing worker can tell in advance is returned at once,
    /// with the save still under way ([`Landing`]): the worker runs the
    /// handed task's agent while the store commits this completion, and
    /// checks before that task's own completion that the save landed and
    /// read what it assumed ([`crate::worker`], "Pipelined hand-off").
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn complete(
        &self,
        fence: &Fence,
        mut outcome: TaskOutcome,
        n_llm: usize,
        claimed: &Task,
        run: &Run,
        claimed_state: Option<RunState>,
        loop_here: bool,
        hand: Option<Hand<'_>>,
    ) -> orch_store::Result<(bool, Option<Next>)> {
        let turn = self.stepping.take(&fence.run_id).await;
        let cached = self
            .saved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fence.run_id)
            .cloned();
        let known = match (cached, claimed_state) {
            (Some(known), _) if known.run.version >= run.version => Some(known),
            // None, or older than the claim's read of the run (another
            // engine saved it since: a step from that view would be
            // refused): the run as read with the claim, or as it is now.
            (_, Some(state)) => Some(std::sync::Arc::new(state)),
            (cached, None) => {
                let loaded = match &cached {
                    Some(known) => self.deps.store.load_run_from(&fence.run_id, known).await,
                    None => self.deps.store.load_run(&fence.run_id).await,
                };
                match loaded {
                    Ok(state) => Some(std::sync::Arc::new(state)),
                    Err(e) => {
                        debug!(run = %fence.run_id, error = %e, "no view of the run for the completion's step");
                        None
                    }
                }
            }
        };
        let now = self.deps.clock.now_ms();
        let step = known.and_then(|known| {
            let i = known
                .tasks
                .iter()
                .position(|t| t.id == fence.task_id && t.attempt == fence.attempt)?;
            let in_flight: Vec<(String, u32)> = known
                .tasks
                .iter()
                .enumerate()
                .filter(|&(j, t)| {
                    j != i && matches!(t.status, TaskStatus::Queued | TaskStatus::Running)
                })
                .map(|(_, t)| (t.id.clone(), t.attempt))
                .collect();
            let mut before = (*known).clone();
            before.tasks[i] = claimed.clone();
            // Totals only grow: the later of the two reads.
            let totals = &mut before.run;
            totals.cost_usd = totals.cost_usd.max(run.cost_usd);
            totals.tokens_in = totals.tokens_in.max(run.tokens_in);
            totals.tokens_out = totals.tokens_out.max(run.tokens_out);
            outcome.apply_to(&mut before.tasks[i], &mut before.run, now);
            match Decided::from(&before, Input::Reconcile, now) {
                Ok(decided) => Some((known.run.version, decided, in_flight)),
                Err(e) => {
                    debug!(run = %fence.run_id, error = %e, "no step with the completion");
                    None
                }
            }
        });
        let Some((expected_version, mut decided, in_flight)) = step else {
            if let Err(e) = self.deps.store.complete_task(fence, &outcome, now).await {
                record_alone(&self.deps, &fence.run_id, &mut outcome, n_llm).await;
                return Err(e);
            }
            return Ok((true, None));
        };
        let lease_until = now + self.opts.lease_ttl.as_millis() as i64;
        let mut handed = hand.and_then(|h| hand_over(&mut decided, h, lease_until, now));
        // What the handed task reads, read with the step.
        let upstream = handed.as_ref().map(|next| {
            let tasks = decided.after.upstream_of(&next.task.id);
            let names = crate::worker::upstream_names(&decided.after, &tasks);
            (tasks, names)
        });
        let held = hand.map(|h| h.held).unwrap_or_default();
        // Only if the handed task reads from no task but the completing one
        // and those whose artifacts the worker holds: otherwise its inputs
        // cannot be told in advance.
        // And only if no other task of the run writes artifacts of the names
        // the completion writes: their versions are then the first, and
        // known (another's, such as a second review's, follow versions the
        // worker may not hold).
        let pipelined = hand.zip(upstream.as_ref()).is_some_and(|(h, (tasks, _))| {
            h.pipeline
                && tasks
                    .iter()
                    .all(|t| *t == fence.task_id || h.held_from.contains(t))
                && outcome.artifacts.iter().all(|a| {
                    decided.after.tasks.iter().all(|t| {
                        t.id == fence.task_id || t.expected.iter().all(|e| e.name != a.name)
                    })
                })
        });
        if let (true, Some(next), Some((tasks, names))) = (pipelined, &mut handed, &upstream) {
            let predicted = predict_inputs(fence, &outcome, held, names, tasks, now);
            // The log says the handed task may start before this commit.
            if let Some(queued) = decided.events.iter_mut().find(|e| {
                e.kind == EventKind::TaskQueued
                    && e.task_id.as_deref() == Some(next.task.id.as_str())
            }) {
                queued
                    .message
                    .push_str("; pipelined: it may start before this step commits");
                queued.data["pipelined"] = Value::Bool(true);
            }
            let landing = Landing {
                predicted,
                handle: tokio::spawn(self.clone().land(
                    turn,
                    fence.clone(),
                    outcome,
                    n_llm,
                    Landable {
                        expected_version,
                        decided,
                        in_flight,
                        inputs_of: (tasks.clone(), names.clone(), held.to_vec()),
                        now,
                        loop_here,
                    },
                )),
            };
            next.landing = Some(landing);
            // Let the save start (hand its write to the store) before this
            // worker goes on: on a single-threaded runtime it would otherwise
            // wait until the handed task's agent yields, which a fast one
            // may never do.
            tokio::task::yield_now().await;
            return Ok((false, handed));
        }
        let stepped = self
            .deps
            .store
            .complete_and_save(
                fence,
                &outcome,
                now,
                &decided.step(
                    expected_version,
                    &in_flight,
                    upstream
                        .as_ref()
                        .map(|(tasks, names)| orch_store::InputsOf {
                            upstream: names,
                            upstream_tasks: tasks,
                            held,
                        }),
                ),
            )
            .await;
        let stepped = match stepped {
            Ok(stepped) => stepped,
            Err(e) => {
                record_alone(&self.deps, &fence.run_id, &mut outcome, n_llm).await;
                return Err(e);
            }
        };
        let Some(version) = stepped.version else {
            // Not saved: nor is the hand-over; the engine takes the step.
            return Ok((true, None));
        };
        let next = handed.map(|mut next| {
            next.run.version = version;
            next.inputs = stepped.inputs;
            next
        });
        let status = self.saved(&fence.run_id, decided, version).await.status;
        drop(turn);
        let wake = !stepped.current || (!loop_here && ends_a_wait(status));
        Ok((wake, next))
    }

    /// The save of a pipelined hand-off ([`Engine::complete`]), run as a task
    /// of its own while the worker runs the handed task: the completion with
    /// its step, then what follows a saved step (the run remembered, waiters
    /// told, dispatches published, an engine woken if needed). Holds the
    /// run's turn until done. `None` if the step was not saved (nor, then, the
    /// hand-over; the completion may have been).
    async fn land(
        self,
        turn: Turn,
        fence: Fence,
        mut outcome: TaskOutcome,
        n_llm: usize,
        step: Landable,
    ) -> Option<Landed> {
        let Landable {
            expected_version,
            decided,
            in_flight,
            inputs_of: (tasks, names, held),
            now,
            loop_here,
        } = step;
        let stepped = self
            .deps
            .store
            .complete_and_save(
                &fence,
                &outcome,
                now,
                &decided.step(
                    expected_version,
                    &in_flight,
                    Some(orch_store::InputsOf {
                        upstream: &names,
                        upstream_tasks: &tasks,
                        held: &held,
                    }),
                ),
            )
            .await;
        let (wake, landed) = match stepped {
            Ok(orch_store::Stepped {
                version: Some(version),
                current,
                inputs,
            }) => {
                let status = self.saved(&fence.run_id, decided, version).await.status;
                let wake = !current || (!loop_here && ends_a_wait(status));
                (wake, Some(Landed { version, inputs }))
            }
            // The completion committed, the step did not: the engine takes it.
            Ok(_) => (true, None),
            Err(e) => {
                match &e {
                    orch_store::Error::LeaseLost { .. } => {
                        warn!(task = %fence.task_id, attempt = fence.attempt, "lease lost before commit; result discarded")
                    }
                    e => {
                        warn!(task = %fence.task_id, attempt = fence.attempt, error = %e, "attempt not recorded; its lease will expire and it will be retried")
                    }
                }
                record_alone(&self.deps, &fence.run_id, &mut outcome, n_llm).await;
                (false, None)
            }
        };
        drop(turn);
        if wake && let Err(e) = self.deps.broker.wake(&fence.run_id).await {
            warn!(run = %fence.run_id, error = %e, "wake-up not delivered; the sweeper will tick the run");
        }
        landed
    }

    /// After a step's save committed at `version`: remember the run as saved,
    /// tell waiters, publish the dispatches.
    async fn saved(&self, run_id: &RunId, decided: Decided, version: i64) -> TickOutcome {
        let Decided {
            mut after,
            diff,
            events,
            dispatches,
            ..
        } = decided;
        self.wake_for_retries(run_id, &diff);
        after.run.version = version;
        let status = after.run.status;
        {
            let mut runs = self.saved.lock().unwrap_or_else(|p| p.into_inner());
            if status.is_terminal() {
                runs.remove(run_id);
            } else {
                if runs.len() >= MAX_SAVED_RUNS {
                    runs.clear();
                }
                runs.insert(run_id.clone(), std::sync::Arc::new(after));
            }
        }
        self.announce(run_id, status);
        // Published only after the commit: a crash here leaves QUEUED
        // tasks that the sweeper publishes again.
        for d in &dispatches {
            if let Err(e) = self.deps.broker.publish(d).await {
                warn!(run = %run_id, task = %d.task_id, error = %e, "publish failed; the sweeper will publish it again");
            }
        }
        TickOutcome {
            status,
            dispatched: dispatches.len(),
            events: events.len(),
        }
    }

    /// Tell this process's waiters that `run_id` is now at `status`.
    fn announce(&self, run_id: &RunId, status: RunStatus) {
        self.steps.send_modify(|s| {
            s.count += 1;
            s.last = Some((run_id.clone(), status));
        });
    }

    /// A retry the step scheduled (a task made READY with a `not_before`)
    /// is queued by the tick that follows its time: wake the engine then,
    /// rather than leaving it to the sweeper's next round of every active run.
    fn wake_for_retries(&self, run_id: &RunId, diff: &StateDiff) {
        let now = self.deps.clock.now_ms();
        let Some(at) = diff
            .changed_tasks
            .iter()
            .filter(|c| c.task.status == TaskStatus::Ready)
            .filter_map(|c| c.task.not_before)
            .filter(|&at| at > now)
            .min()
        else {
            return;
        };
        let (broker, run_id) = (self.deps.broker.clone(), run_id.clone());
        let delay = std::time::Duration::from_millis(u64::try_from(at - now).unwrap_or(0));
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(e) = broker.wake(&run_id).await {
                debug!(run = %run_id, error = %e, "retry wake-up not delivered; the sweeper will tick the run");
            }
        });
    }

    /// Replay a dead letter: its task gets another attempt.
    pub async fn replay_dead_letter(&self, id: i64) -> Result<TickOutcome> {
        let letters = self.deps.store.list_dead_letters(None, false).await?;
        let letter = letters
            .into_iter()
            .find(|l| l.id == id)
            .ok_or(Error::DeadLetterNotFound(id))?;
        let outcome = self
            .apply_input(
                &letter.run_id,
                Input::ReplayDead {
                    task_id: letter.task_id.clone(),
                },
            )
            .await?;
        self.deps
            .store
            .mark_replayed(id, self.deps.clock.now_ms())
            .await?;
        Ok(outcome)
    }

    /// The run row.
    pub async fn run(&self, id: &RunId) -> Result<Run> {
        Ok(self.deps.store.get_run(id).await?)
    }
}

/// What [`Engine::land`] saves: the step decided with the completion.
struct Landable {
    expected_version: i64,
    decided: Decided,
    in_flight: Vec<(String, u32)>,
    /// The handed task's upstream tasks, the names it reads, and the
    /// artifacts the completing worker holds ([`orch_store::InputsOf`]).
    inputs_of: (Vec<String>, Vec<String>, Vec<orch_core::Artifact>),
    now: orch_core::Millis,
    loop_here: bool,
}

/// The upstream artifacts a handed task will read, as the completing
/// worker can tell them before the step is saved: of what it holds (`held`)
/// and what its completion writes (versioned after the latest it holds of
/// the same name and path, as the store numbers them), the latest of each
/// (name, path) that `names` names and `tasks` wrote. Exact unless the run
/// has versions the worker does not hold; [`crate::worker`] compares it
/// with what the save read before keeping what was run on it.
fn predict_inputs(
    fence: &Fence,
    outcome: &TaskOutcome,
    held: &[orch_core::Artifact],
    names: &[String],
    tasks: &[String],
    now: orch_core::Millis,
) -> Vec<orch_core::Artifact> {
    let written: Vec<orch_core::Artifact> = outcome
        .artifacts
        .iter()
        .map(|a| {
            let version = held
                .iter()
                .filter(|h| h.name == a.name && h.path == a.path)
                .map(|h| h.version)
                .max()
                .unwrap_or(0)
                + 1;
            orch_core::Artifact {
                run_id: fence.run_id.clone(),
                name: a.name.clone(),
                version,
                kind: a.kind.clone(),
                path: a.path.clone(),
                task_id: fence.task_id.clone(),
                attempt: fence.attempt,
                content: a.content.clone(),
                metadata: a.metadata.clone(),
                created_at: now,
            }
        })
        .collect();
    let mut latest = Vec::new();
    orch_store::keep_latest(&mut latest, held.iter().chain(&written), names, tasks);
    latest
}

/// Hand one task the step dispatches to the worker completing the step
/// (`hand.worker`), if its role has a free permit in `hand.permits`: the
/// step saves it claimed, RUNNING under that worker's lease until
/// `lease_until` with its `task_started` event, exactly as a claim would,
/// and does not publish it. The step's save is conditional on the run's
/// version and its tasks' statuses, so it stands for the claim's
/// conditional update; if the step is not saved, neither is the claim. The
/// permit goes with the task; the run's version is set once it is saved.
fn hand_over(
    decided: &mut Decided,
    hand: Hand<'_>,
    lease_until: orch_core::Millis,
    now: orch_core::Millis,
) -> Option<Next> {
    let (at, permit) = decided
        .dispatches
        .iter()
        .enumerate()
        .filter(|(_, d)| !(hand.unwatched_only && hand.permits.watched(d.role)))
        .find_map(|(i, d)| hand.permits.try_take(d.role).map(|p| (i, p)))?;
    let d = &decided.dispatches[at];
    // The step changes or adds the task it dispatches: that entry of its
    // diff is saved claimed too.
    let diffed = decided
        .diff
        .new_tasks
        .iter_mut()
        .chain(decided.diff.changed_tasks.iter_mut().map(|c| &mut c.task))
        .find(|t| t.id == d.task_id)?;
    let task = decided
        .after
        .tasks
        .iter_mut()
        .find(|t| t.id == d.task_id && t.attempt == d.attempt)?;
    let status = task.status.transition(TaskStatus::Running).ok()?;
    let owner = hand.worker.as_role(d.role);
    task.status = status;
    task.lease_owner = Some(owner.0.clone());
    task.lease_expires_at = Some(lease_until);
    task.started_at = Some(now);
    task.finished_at = None;
    let task = task.clone();
    *diffed = task.clone();
    let dispatch = decided.dispatches.remove(at);
    // The machine's `task_queued` event says where the task was queued; it
    // was handed over instead, and says so.
    if let Some(queued) = decided
        .events
        .iter_mut()
        .find(|e| e.kind == EventKind::TaskQueued && e.task_id.as_deref() == Some(task.id.as_str()))
    {
        queued.message = format!(
            "handed to worker {} (attempt {}; not published on {})",
            owner.0,
            task.attempt,
            task.role.queue()
        );
        queued.data["handed_to"] = Value::String(owner.0.clone());
    }
    decided.events.push(orch_store::task_started_event(
        &task.id,
        &owner.0,
        task.attempt,
    ));
    Some(Next {
        dispatch,
        task,
        run: decided.after.run.clone(),
        owner,
        inputs: None,
        landing: None,
        _permit: permit,
    })
}

/// A status that ends [`Engine::wait`]: terminal, or waiting for a person.
fn ends_a_wait(status: RunStatus) -> bool {
    status.is_terminal() || status == RunStatus::NeedsInput
}

/// What the state machine decided from one state of a run: the state after,
/// what changed, and its actions taken apart for the store and the broker.
#[derive(Debug)]
struct Decided {
    after: RunState,
    diff: StateDiff,
    events: Vec<NewEvent>,
    dead: Vec<NewDeadLetter>,
    dispatches: Vec<Dispatch>,
}

impl Decided {
    /// Apply `input` to (a copy of) `before` at `now`.
    fn from(before: &RunState, input: Input, now: orch_core::Millis) -> Result<Decided> {
        let mut after = before.clone();
        let actions = machine::apply(&mut after, input, now)?;
        let diff = StateDiff::between(before, &after);
        let mut decided = Decided {
            after,
            diff,
            events: Vec::new(),
            dead: Vec::new(),
            dispatches: Vec::new(),
        };
        for action in actions {
            match action {
                Action::Emit(e) => decided.events.push(e),
                Action::Dispatch {
                    run_id,
                    task_id,
                    role,
                    attempt,
                } => decided.dispatches.push(Dispatch {
                    run_id,
                    task_id,
                    role,
                    attempt,
                }),
                Action::DeadLetter {
                    task_id,
                    role,
                    attempts,
                    error,
                } => decided.dead.push(NewDeadLetter {
                    task_id,
                    role,
                    attempts,
                    error,
                }),
            }
        }
        Ok(decided)
    }

    /// The step to save with a completion: this, if the run is still at
    /// `expected_version` and the tasks of `in_flight` still in flight at
    /// their attempts ([`orch_store::Step`]).
    fn step<'a>(
        &'a self,
        expected_version: i64,
        in_flight: &'a [(String, u32)],
        inputs_of: Option<orch_store::InputsOf<'a>>,
    ) -> orch_store::Step<'a> {
        orch_store::Step {
            expected_version,
            diff: &self.diff,
            state: &self.after,
            events: &self.events,
            dead: &self.dead,
            in_flight,
            inputs_of,
        }
    }

    /// Nothing to save.
    fn is_empty(&self) -> bool {
        self.diff.is_empty() && self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new `sdlc` run and the step that queues its first task.
    fn first_step() -> Decided {
        let wf = Workflow::builtin("sdlc").unwrap();
        let (state, _) = RunState::new_run(
            RunId::generate(),
            "goal",
            Value::Null,
            &wf,
            RunSettings::default(),
            "scripted",
            1_000,
        );
        let decided = Decided::from(&state, Input::Reconcile, 1_000).unwrap();
        assert_eq!(decided.dispatches.len(), 1, "the requirements task");
        decided
    }

    /// The step saves the handed task claimed by the worker, for its role,
    /// and no longer dispatches it; without a free permit of its role, or
    /// with a loop of its role waiting when only unwatched roles may be
    /// taken, nothing is handed over and the dispatch stays.
    #[test]
    fn a_step_hands_over_a_task_it_can_run() {
        use crate::worker::{Permits, WorkerId};
        let ba = orch_core::Role::BusinessAnalyst;
        let worker = WorkerId::new(orch_core::Role::ProjectManager);
        let permits = Permits::new(&[ba], 1, Default::default(), Default::default());
        let hand = Hand {
            permits: &permits,
            worker: &worker,
            unwatched_only: false,
            held: &[],
            held_from: &[],
            pipeline: false,
        };

        let mut decided = first_step();
        let next = hand_over(&mut decided, hand, 31_000, 1_000).expect("handed over");
        assert!(decided.dispatches.is_empty(), "not published");
        assert_eq!(next.dispatch.role, ba);
        assert_eq!(next.owner, worker.as_role(ba));
        let saved = decided.after.task(&next.task.id).unwrap();
        assert_eq!(saved, &next.task);
        assert_eq!(saved.status, TaskStatus::Running);
        assert_eq!(saved.lease_owner.as_deref(), Some(next.owner.0.as_str()));
        assert_eq!(
            (saved.lease_expires_at, saved.started_at),
            (Some(31_000), Some(1_000))
        );
        let change = decided
            .diff
            .changed_tasks
            .iter()
            .find(|c| c.task.id == saved.id)
            .expect("the task is in the diff");
        assert_eq!(&change.task, saved, "saved as claimed");
        let started = decided.events.last().unwrap();
        assert_eq!(started.kind, EventKind::TaskStarted);
        assert_eq!(started.data["owner"], next.owner.0.as_str());
        let queued = decided
            .events
            .iter()
            .find(|e| e.kind == EventKind::TaskQueued)
            .expect("the machine's task_queued event");
        assert_eq!(queued.data["handed_to"], next.owner.0.as_str());
        assert!(
            queued.message.starts_with("handed to worker"),
            "{}",
            queued.message
        );

        // Its permit is held: another step hands nothing over.
        let mut decided = first_step();
        assert!(hand_over(&mut decided, hand, 31_000, 1_000).is_none());
        assert_eq!(decided.dispatches.len(), 1, "still dispatched");
        drop(next);

        // A loop of the role waits: it takes the task from its queue.
        let waiting = permits.waiting(ba);
        let unwatched = Hand {
            unwatched_only: true,
            ..hand
        };
        assert!(hand_over(&mut decided, unwatched, 31_000, 1_000).is_none());
        assert!(hand_over(&mut decided, hand, 31_000, 1_000).is_some());
        drop(waiting);

        // A role this process does not serve.
        let none = Permits::new(
            &[orch_core::Role::FrontendEngineer],
            1,
            Default::default(),
            Default::default(),
        );
        let mut decided = first_step();
        let other = Hand {
            permits: &none,
            ..hand
        };
        assert!(hand_over(&mut decided, other, 31_000, 1_000).is_none());
    }

    /// One holder of a run's turn at a time; other runs are not held up;
    /// a turn no one holds or waits for leaves nothing behind.
    #[tokio::test(start_paused = true)]
    async fn a_run_has_one_turn_at_a_time() {
        use std::time::Duration;
        let turns = std::sync::Arc::new(RunTurns::default());
        let (a, b) = (RunId::generate(), RunId::generate());
        let first = turns.take(&a).await;
        // Another run's turn is free meanwhile.
        let other = tokio::time::timeout(Duration::from_secs(1), turns.take(&b)).await;
        assert!(other.is_ok(), "another run's turn was held up");
        drop(other);
        // The same run's is not, until the first is given back.
        let waited = tokio::time::timeout(Duration::from_secs(1), turns.take(&a)).await;
        assert!(waited.is_err(), "two holders of one run's turn");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(1), turns.take(&a)).await;
        assert!(second.is_ok(), "a turn given back was not free");
        assert_eq!(turns.map().len(), 1, "only the held turn is kept");
        drop(second);
        assert!(turns.map().is_empty(), "turns no one holds are forgotten");
    }

    fn artifact(name: &str, path: Option<&str>, version: i64, task: &str) -> orch_core::Artifact {
        orch_core::Artifact {
            run_id: RunId("r1".into()),
            name: name.into(),
            version,
            kind: "document".into(),
            path: path.map(Into::into),
            task_id: task.into(),
            attempt: 1,
            content: format!("{name} v{version}"),
            metadata: Value::Null,
            created_at: 5,
        }
    }

    /// What a pipelined hand-off assumes its task reads: the latest of each
    /// (name, path) among what the worker holds and what its completion
    /// writes (numbered after the latest it holds), of the names the task
    /// reads and the tasks it reads from — as the store would read them.
    #[test]
    fn a_pipelined_hand_off_predicts_what_the_store_reads() {
        let fence = Fence {
            run_id: RunId("r1".into()),
            task_id: "fix".into(),
            attempt: 2,
            owner: "w".into(),
        };
        let new = |name: &str, path: Option<&str>| orch_core::NewArtifact {
            name: name.into(),
            kind: "code".into(),
            path: path.map(Into::into),
            content: format!("{name} new"),
            metadata: serde_json::json!({"lines": 1}),
        };
        let outcome = TaskOutcome {
            status: TaskStatus::Succeeded,
            summary: None,
            verdict: None,
            error: None,
            retryable: true,
            artifacts: vec![
                new("code", Some("app.py")),
                new("code", Some("db.py")),
                new("notes", None),
            ],
            events: Vec::new(),
            usage: Default::default(),
            llm_calls: Vec::new(),
        };
        let held = [
            artifact("requirements", None, 1, "ba"),
            artifact("code", Some("app.py"), 1, "be"),
            artifact("code", Some("app.py"), 2, "fix0"),
            artifact("plan", None, 1, "pm"),
        ];
        let names: Vec<String> = ["requirements", "code"].map(String::from).to_vec();
        let tasks: Vec<String> = ["ba", "be", "fix0", "fix"].map(String::from).to_vec();
        let mut got = predict_inputs(&fence, &outcome, &held, &names, &tasks, 9);
        got.sort_by(|a, b| (&a.name, &a.path).cmp(&(&b.name, &b.path)));
        let keys: Vec<_> = got
            .iter()
            .map(|a| {
                (
                    a.name.as_str(),
                    a.path.as_deref(),
                    a.version,
                    a.task_id.as_str(),
                )
            })
            .collect();
        assert_eq!(
            keys,
            [
                ("code", Some("app.py"), 3, "fix"),
                ("code", Some("db.py"), 1, "fix"),
                ("requirements", None, 1, "ba"),
            ],
            "plan: not read; notes: not a name the task reads; app.py after the v2 held"
        );
        let written = &got[0];
        assert_eq!(
            (
                written.attempt,
                written.created_at,
                written.content.as_str()
            ),
            (2, 9, "code new"),
            "as the completion stores it"
        );
        assert_eq!(written.metadata, serde_json::json!({"lines": 1}));
    }
}
