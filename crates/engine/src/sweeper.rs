//! The sweeper: repairs what crashes and lost messages leave behind.
//!
//! - RUNNING attempts whose lease expired are failed (and so retried or sent
//!   to the dead letter queue by the state machine);
//! - RUNNING attempts leased by a process on this host that no longer exists
//!   are treated the same at once, without waiting for the lease to expire;
//! - QUEUED tasks whose message may be lost are published again (a duplicate
//!   is harmless: the claim is conditional);
//! - every `tick_all_every` (10 s), active runs are ticked: the safety net
//!   for a lost wake-up (a retry whose timer died with its process, a
//!   completion whose wake-up was lost);
//! - every [`PRUNE_EVERY`], the broker forgets consumers idle for
//!   [`CONSUMER_IDLE`] with nothing pending (those of exited processes).

use std::sync::atomic::Ordering;

use orch_broker::Dispatch;
use orch_core::machine::Input;
use orch_store::TaskRef;
use tracing::{info, warn};

use crate::worker::{WorkerId, hostname};
use crate::{Engine, Result};

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub expired: usize,
    pub orphaned: usize,
    pub republished: usize,
    pub ticked: usize,
    pub pruned_consumers: usize,
}

const BATCH: u32 = 500;

/// Whether something done `every` is due at `now`, it having last been done
/// at `last` (`i64::MIN`: never).
fn due(last: i64, now: i64, every: std::time::Duration) -> bool {
    let every = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
    last == i64::MIN || now.saturating_sub(last) >= every
}

/// Take the turn of a sweep at `now` to do what is done `every` (the last
/// time in `last`, shared by the engine's clones): true for one sweep only
/// when it is due.
fn take_turn(last: &std::sync::atomic::AtomicI64, now: i64, every: std::time::Duration) -> bool {
    let at = last.load(Ordering::Relaxed);
    due(at, now, every)
        && last
            .compare_exchange(at, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// How often a sweep also prunes the broker's idle consumers.
pub const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);
/// How long a consumer with nothing pending must have been idle to be
/// forgotten: far beyond any live worker's blocking read.
pub const CONSUMER_IDLE: std::time::Duration = std::time::Duration::from_secs(3600);

impl Engine {
    /// One pass of the sweeper.
    pub async fn sweep(&self) -> Result<SweepReport> {
        let mut report = SweepReport::default();
        let now = self.deps.clock.now_ms();
        let store = &self.deps.store;

        for t in store.expired_leases(now, BATCH).await? {
            info!(run = %t.run_id, task = %t.task_id, attempt = t.attempt, owner = ?t.lease_owner, "lease expired; reclaiming");
            self.expire(&t).await;
            report.expired += 1;
        }

        let host = hostname();
        let me = std::process::id();
        for t in store.running_tasks(BATCH).await? {
            let Some(owner) = t.lease_owner.as_deref() else {
                continue;
            };
            let Some((h, pid)) = WorkerId::parse_host_pid(owner) else {
                continue;
            };
            if h == host && pid != me && !process_alive(pid) {
                info!(run = %t.run_id, task = %t.task_id, owner, "lease owner process is gone; reclaiming");
                self.expire(&t).await;
                report.orphaned += 1;
            }
        }

        let before = now - self.opts.requeue_after.as_millis() as i64;
        for t in store.stale_queued(before, BATCH).await? {
            let d = Dispatch {
                run_id: t.run_id.clone(),
                task_id: t.task_id.clone(),
                role: t.role,
                attempt: t.attempt,
            };
            match self.deps.broker.publish(&d).await {
                Ok(()) => report.republished += 1,
                Err(e) => warn!(task = %t.task_id, error = %e, "republish failed"),
            }
        }

        if take_turn(&self.last_tick_all, now, self.opts.tick_all_every) {
            for run in store.active_runs().await? {
                match self.tick(&run).await {
                    Ok(_) => report.ticked += 1,
                    Err(e) => warn!(run = %run, error = %e, "tick failed"),
                }
            }
        }

        if take_turn(&self.last_prune, now, PRUNE_EVERY) {
            match self.deps.broker.prune_consumers(CONSUMER_IDLE).await {
                Ok(n) => {
                    if n > 0 {
                        info!(consumers = n, "forgot idle queue consumers");
                    }
                    report.pruned_consumers = n;
                }
                Err(e) => warn!(error = %e, "pruning idle queue consumers failed; will try again"),
            }
        }
        Ok(report)
    }

    /// Re-publish the dispatches of every QUEUED task of `runs` now (used when
    /// a process starts: the in-process queues of a dead process are gone).
    pub async fn republish_queued(&self) -> Result<usize> {
        let now = self.deps.clock.now_ms();
        let mut n = 0;
        for t in self.deps.store.stale_queued(now + 1, BATCH * 20).await? {
            let d = Dispatch {
                run_id: t.run_id,
                task_id: t.task_id,
                role: t.role,
                attempt: t.attempt,
            };
            self.deps.broker.publish(&d).await?;
            n += 1;
        }
        Ok(n)
    }

    async fn expire(&self, t: &TaskRef) {
        let input = Input::LeaseExpired {
            task_id: t.task_id.clone(),
            attempt: t.attempt,
            owner: t.lease_owner.clone(),
        };
        if let Err(e) = self.apply_input(&t.run_id, input).await {
            warn!(run = %t.run_id, task = %t.task_id, error = %e, "could not reclaim lease");
        }
    }
}

fn process_alive(pid: u32) -> bool {
    // Linux: a live process has /proc/<pid>. Elsewhere, assume alive and let
    // the lease expire.
    if !std::path::Path::new("/proc/self").exists() {
        return true;
    }
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::{PRUNE_EVERY, due};

    fn prune_due(last: i64, now: i64) -> bool {
        due(last, now, PRUNE_EVERY)
    }

    #[test]
    fn consumers_are_pruned_at_the_first_sweep_then_every_ten_minutes() {
        let every = PRUNE_EVERY.as_millis() as i64;
        let t0 = 1_700_000_000_000;
        assert!(prune_due(i64::MIN, t0), "the first sweep prunes");
        assert!(!prune_due(t0, t0 + 1_000));
        assert!(!prune_due(t0, t0 + every - 1));
        assert!(prune_due(t0, t0 + every));
        assert!(
            !prune_due(t0, t0 - 5_000),
            "a clock that steps back does not prune"
        );
    }
}
