//! The runtime owns the spawned loops: the engine loop (wake-ups and the
//! sweeper) and the role workers. Each loop selects on one cancellation
//! token; shutdown cancels it and waits for the loops to drain, up to the
//! drain timeout. Attempts still running then are given back to their runs
//! (queued again at once, not counted as failed), so a rolling restart
//! costs a task neither a retry nor a lease's wait.

use std::time::Instant;

use orch_core::Role;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Engine;
use crate::worker::{Stepper, spawn_workers};

/// Running loops of one process.
#[derive(Debug)]
pub struct Runtime {
    engine: Engine,
    /// Cancels every loop of this runtime.
    cancel: CancellationToken,
    /// Tells attempts in flight to give their tasks back (after the drain timeout).
    give_back: CancellationToken,
    /// The loops, awaited on shutdown.
    tasks: JoinSet<()>,
}

impl Runtime {
    /// Start the engine loop (if `with_engine`) and workers for `roles`.
    pub fn start(engine: Engine, roles: &[Role], with_engine: bool) -> Runtime {
        let cancel = CancellationToken::new();
        let give_back = CancellationToken::new();
        let mut tasks = JoinSet::new();
        if with_engine {
            tasks.spawn(engine_loop(engine.clone(), cancel.clone()));
        }
        // Workers take each run's next step with their completions, in
        // this process or in one of their own (`orchestrator worker`).
        let stepper = Stepper {
            engine: engine.clone(),
            loop_here: with_engine,
        };
        spawn_workers(
            &mut tasks,
            engine.deps(),
            engine.options(),
            Some(&stepper),
            roles,
            &cancel,
            &give_back,
        );
        Runtime {
            engine,
            cancel,
            give_back,
            tasks,
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A token that is cancelled when the runtime shuts down.
    pub fn cancellation(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stop every loop: in-flight attempts may finish within the drain
    /// timeout; after it they give their tasks back (queued again at once,
    /// the attempt not counted). One that cannot within 5 s more is
    /// abandoned: its lease expires and it is retried. Nothing is lost
    /// either way.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        let drain = self.engine.options().drain_timeout;
        if self.join_until(tokio::time::Instant::now() + drain).await {
            return;
        }
        warn!(
            left = self.tasks.len(),
            "drain timeout: giving back the attempts still in flight (their tasks are queued again)"
        );
        self.give_back.cancel();
        if self
            .join_until(tokio::time::Instant::now() + GIVE_BACK_GRACE)
            .await
        {
            return;
        }
        warn!(
            left = self.tasks.len(),
            "attempts not given back in time abandoned (their leases expire and they are retried)"
        );
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Wait for every loop to end, until `deadline`; whether they all did.
    async fn join_until(&mut self, deadline: tokio::time::Instant) -> bool {
        loop {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(Err(e))) if e.is_panic() => warn!(error = %e, "a loop panicked"),
                Ok(Some(_)) => {}
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }
}

/// How long, after the drain timeout, attempts get to give their tasks back.
const GIVE_BACK_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// React to wake-ups at once; sweep every `sweep_every`.
async fn engine_loop(engine: Engine, cancel: CancellationToken) {
    let every = engine.options().sweep_every;
    let mut last_sweep = Instant::now();
    match engine.republish_queued().await {
        Ok(n) if n > 0 => debug!(n, "re-published queued tasks at start-up"),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "could not re-publish queued tasks at start-up"),
    }
    if let Err(e) = engine.sweep().await {
        warn!(error = %e, "sweep failed");
    }
    let mut ticks = JoinSet::new();
    let mut sweep_failures = Failures::default();
    let mut wake_failures = Failures::default();
    loop {
        let wait = every.saturating_sub(last_sweep.elapsed());
        let woken = tokio::select! {
            _ = cancel.cancelled() => break,
            w = engine.deps().broker.wakes(wait) => w,
        };
        match woken {
            Ok(runs) => {
                if let Some(n) = wake_failures.succeeded() {
                    info!(failures = n, "wake-up channel works again");
                }
                for run in runs {
                    let engine = engine.clone();
                    ticks.spawn(async move {
                        if let Err(e) = engine.tick(&run).await {
                            warn!(run = %run, error = %e, "tick failed; the sweeper will try again");
                        }
                    });
                    // Bound the ticks in flight.
                    while ticks.len() >= 16 {
                        ticks.join_next().await;
                    }
                }
            }
            Err(orch_broker::Error::Closed) => break,
            Err(e) => {
                if let Some(n) = wake_failures.failed(std::time::Instant::now()) {
                    warn!(error = %e, failures = n, "wake-up channel failed; will try again");
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        }
        while ticks.try_join_next().is_some() {}
        if last_sweep.elapsed() >= every {
            last_sweep = Instant::now();
            match engine.sweep().await {
                Ok(_) => {
                    if let Some(n) = sweep_failures.succeeded() {
                        info!(failures = n, "sweep works again");
                    }
                }
                Err(e) => {
                    if let Some(n) = sweep_failures.failed(std::time::Instant::now()) {
                        warn!(error = %e, failures = n, "sweep failed; will try again");
                    }
                }
            }
        }
    }
    while ticks.join_next().await.is_some() {}
}

/// Failures of a loop's step in a row, logged at a falling rate: the first
/// at once, the next ones 1, 2, 4 ... and at most 60 s apart, so a server
/// that is down for an hour is a few dozen log lines, not thousands.
#[derive(Debug, Default)]
struct Failures {
    /// In a row, since the last success.
    count: u64,
    /// When the next failure may be logged; the gap before that.
    next_log: Option<(std::time::Instant, std::time::Duration)>,
}

impl Failures {
    const MAX_GAP: std::time::Duration = std::time::Duration::from_secs(60);

    /// Count a failure at `now`; `Some(failures in a row)` if it is to be logged.
    fn failed(&mut self, now: std::time::Instant) -> Option<u64> {
        self.count += 1;
        match self.next_log {
            Some((at, _)) if now < at => None,
            Some((_, gap)) => {
                let gap = (gap * 2).min(Self::MAX_GAP);
                self.next_log = Some((now + gap, gap));
                Some(self.count)
            }
            None => {
                let gap = std::time::Duration::from_secs(1);
                self.next_log = Some((now + gap, gap));
                Some(self.count)
            }
        }
    }

    /// A success: `Some(failures before it)` if there were any.
    fn succeeded(&mut self) -> Option<u64> {
        let n = std::mem::take(&mut self.count);
        self.next_log = None;
        (n > 0).then_some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::Failures;
    use std::time::{Duration, Instant};

    #[test]
    fn failures_in_a_row_are_logged_at_a_falling_rate_up_to_once_a_minute() {
        let t0 = Instant::now();
        let mut f = Failures::default();
        // A step that fails every second for an hour.
        let logged: Vec<u64> = (0..3_600)
            .filter_map(|s| f.failed(t0 + Duration::from_secs(s)).map(|_| s))
            .collect();
        assert_eq!(&logged[..8], &[0, 1, 3, 7, 15, 31, 63, 123]);
        let gaps: Vec<u64> = logged.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|&g| g <= 60), "{gaps:?}");
        assert!(logged.len() < 70, "{} lines in an hour", logged.len());
        assert_eq!(f.succeeded(), Some(3_600));
        assert_eq!(f.succeeded(), None, "counted once");
        assert_eq!(f.failed(t0), Some(1), "a new outage is logged at once");
    }
}
