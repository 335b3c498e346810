//! The live display of a run: one line per meaningful event, by role.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use orch_core::{Event, EventKind, Run, RunId, RunState, TaskStatus};
use orch_engine::Engine;
use orch_llm::Provider;
use orch_store::{EventQuery, Store};

use crate::render;

/// The lines that open a run's live display: id, workflow, goal, provider
/// (a scripted one said loudly).
pub fn header(run: &Run, provider: &dyn Provider) -> Result<()> {
    render::outln!("run {}  ({})", run.id, run.workflow)?;
    render::outln!("goal: {}", run.goal)?;
    if provider.is_scripted() {
        render::outln!(
            "provider: SCRIPTED — responses come from a fixture file, no LLM is called"
        )?;
    } else {
        render::outln!(
            "provider: {} ({})",
            provider.name(),
            provider.default_model()
        )?;
    }
    Ok(())
}

/// Follows a run's events until it finishes or needs input.
pub struct Follower {
    store: Arc<dyn Store>,
    run_id: RunId,
    show: bool,
    after: i64,
    /// Processes elsewhere do the work: a long silence is worth a hint.
    remote: bool,
}

/// With the work done elsewhere, how long without a new event before the
/// follower says what may be missing (and again as long as it lasts).
const QUIET_HINT_AFTER: Duration = Duration::from_secs(30);

/// How long the follower waits out a database it cannot read before it
/// gives up (the run itself goes on without it).
const GIVE_UP_AFTER: Duration = Duration::from_secs(300);

impl Follower {
    /// Show events after `after` (0: all of them).
    pub fn new(store: Arc<dyn Store>, run_id: RunId, show: bool, after: i64, remote: bool) -> Self {
        Follower {
            store,
            run_id,
            show,
            after,
            remote,
        }
    }

    pub async fn follow(mut self, engine: &Engine) -> Result<Run> {
        let mut changes = engine.changes();
        let mut failing: Option<(std::time::Instant, Duration)> = None;
        let mut last_news = std::time::Instant::now();
        let mut hinted = last_news;
        loop {
            match self.step().await {
                Ok((run, news)) => {
                    if let Some((since, _)) = failing.take() {
                        eprintln!(
                            "the database answers again (after {:.1} s); following run {}",
                            since.elapsed().as_secs_f64(),
                            self.run_id
                        );
                    }
                    if let Some(run) = run {
                        return Ok(run);
                    }
                    let now = std::time::Instant::now();
                    if news {
                        last_news = now;
                    } else if self.remote
                        && now.duration_since(last_news) >= QUIET_HINT_AFTER
                        && now.duration_since(hinted) >= QUIET_HINT_AFTER
                    {
                        hinted = now;
                        eprintln!(
                            "no progress on run {} for {} s: are `orchestrator serve` and workers for its roles running against this DATABASE_URL and REDIS_URL?",
                            self.run_id,
                            now.duration_since(last_news).as_secs()
                        );
                    }
                }
                Err(e) if crate::commands::is_transient(&e) => {
                    let (since, delay) = failing
                        .get_or_insert((std::time::Instant::now(), Duration::from_millis(250)));
                    if since.elapsed() > GIVE_UP_AFTER {
                        return Err(e.context(format!(
                            "gave up following run {} after {} s; the run goes on without this command: follow it again with `orchestrator status {}`",
                            self.run_id,
                            GIVE_UP_AFTER.as_secs(),
                            self.run_id
                        )));
                    }
                    eprintln!(
                        "cannot read run {}: {e:#}; retrying in {:.1} s (the run goes on)",
                        self.run_id,
                        delay.as_secs_f64()
                    );
                    tokio::time::sleep(*delay).await;
                    *delay = (*delay * 2).min(Duration::from_secs(10));
                    continue;
                }
                Err(e) => return Err(e),
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), changes.changed()).await;
        }
    }

    /// Show new events; the run if it finished or needs input, and whether
    /// there were new events.
    async fn step(&mut self) -> Result<(Option<Run>, bool)> {
        let before = self.after;
        self.drain_events().await?;
        let run = self.store.get_run(&self.run_id).await?;
        if run.status.is_terminal() || run.status == orch_core::RunStatus::NeedsInput {
            self.drain_events().await?;
            return Ok((Some(run), true));
        }
        Ok((None, self.after > before))
    }

    async fn drain_events(&mut self) -> Result<()> {
        let events = self
            .store
            .list_events(
                &self.run_id,
                EventQuery {
                    after_seq: self.after,
                    limit: 0,
                    kind: None,
                },
            )
            .await?;
        for e in &events {
            self.after = self.after.max(e.seq);
            if self.show
                && let Some(line) = line_for(e)
            {
                render::outln!("{line}")?;
            }
        }
        Ok(())
    }
}

fn role_tag(e: &Event) -> String {
    e.data
        .get("role")
        .and_then(|r| r.as_str())
        .and_then(|r| r.parse::<orch_core::Role>().ok())
        .map(|r| format!("[{:<3}]", r.short()))
        .unwrap_or_else(|| "     ".to_string())
}

fn line_for(e: &Event) -> Option<String> {
    let task = e.task_id.as_deref().unwrap_or("");
    let text = match e.kind {
        EventKind::TaskQueued => match e.data["handed_to"].as_str() {
            // Saved claimed by the worker that completed the task before;
            // pipelined: started while that step was committing.
            Some(_) if e.data["pipelined"] == true => format!(
                "{} {task:<32} handed over (not queued; started while the step committed)",
                role_tag(e)
            ),
            Some(_) => format!("{} {task:<32} handed over (not queued)", role_tag(e)),
            None => format!(
                "{} {task:<32} queued on {}",
                role_tag(e),
                e.data["queue"].as_str().unwrap_or("")
            ),
        },
        EventKind::TaskSucceeded => format!(
            "      {task:<32} ✓ {}",
            e.message
                .split_once(": ")
                .map(|x| x.1)
                .unwrap_or(&e.message)
        ),
        EventKind::TaskFailed => format!("      {task:<32} ✗ {}", e.message),
        EventKind::TaskRetryScheduled
        | EventKind::TaskDead
        | EventKind::LeaseExpired
        | EventKind::TaskReleased
        | EventKind::DlqReplayed => {
            format!("      {task:<32} {}", e.message)
        }
        EventKind::GatePassed
        | EventKind::GateFailed
        | EventKind::GateWaived
        | EventKind::ReworkOpened => {
            format!("gate  {}", e.message)
        }
        EventKind::Escalated | EventKind::HumanInput => format!("!!    {}", e.message),
        EventKind::RunStatusChanged => format!("run   {}", e.message),
        EventKind::ToolDenied => format!("      {task:<32} tool denied: {}", e.message),
        _ => return None,
    };
    Some(text)
}

/// The summary that closes a run's live display, with what to read next.
pub fn footer(state: &RunState, elapsed: Duration) -> Result<()> {
    let r = &state.run;
    let done = state
        .tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Succeeded)
        .count();
    let gates = state
        .gates
        .iter()
        .map(|g| format!("{} {}", g.kind, g.status))
        .collect::<Vec<_>>()
        .join(", ");
    render::outln!()?;
    render::outln!(
        "run {} {} in {} — {done}/{} tasks succeeded; {gates}; cost ${:.4}",
        r.id,
        r.status,
        took(elapsed),
        state.tasks.len(),
        r.cost_usd
    )?;
    // A run that did not complete says why, and what to do next.
    if r.status != orch_core::RunStatus::Completed
        && let Some(reason) = &r.status_reason
    {
        render::outln!("{reason}")?;
    }
    render::outln!(
        "artifacts: orchestrator artifacts {} --content   events: orchestrator events {}",
        r.id,
        r.id
    )?;
    Ok(())
}

/// A duration as people read it: `12 ms` under a second (a scripted run
/// takes a few), else `4.2 s`.
fn took(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::{line_for, took};
    use std::time::Duration;

    #[test]
    fn durations_under_a_second_are_shown_in_milliseconds() {
        assert_eq!(took(Duration::from_micros(3_400)), "3 ms");
        assert_eq!(took(Duration::from_millis(999)), "999 ms");
        assert_eq!(took(Duration::from_millis(4_250)), "4.2 s");
    }
    use orch_core::{Event, EventKind, RunId};

    fn queued(data: serde_json::Value) -> String {
        let e = Event {
            run_id: RunId("r".into()),
            seq: 3,
            kind: EventKind::TaskQueued,
            task_id: Some("plan".into()),
            message: "queued".into(),
            data,
            created_at: 0,
        };
        line_for(&e).expect("a line for a queued task")
    }

    /// The live display tells a task queued from one handed over, and a
    /// hand-off that started before its step committed (pipelined).
    #[test]
    fn a_queued_task_says_how_it_was_dispatched() {
        let role = "project_manager";
        let line = queued(serde_json::json!({"role": role, "queue": "q_pm"}));
        assert!(
            line.starts_with("[pm ] plan") && line.ends_with("queued on q_pm"),
            "{line}"
        );
        let line = queued(serde_json::json!({"role": role, "handed_to": "h:1:pm-2"}));
        assert!(line.ends_with("handed over (not queued)"), "{line}");
        let pipelined =
            serde_json::json!({"role": role, "handed_to": "h:1:pm-2", "pipelined": true});
        let line = queued(pipelined);
        assert!(
            line.ends_with("(not queued; started while the step committed)"),
            "{line}"
        );
    }
}
