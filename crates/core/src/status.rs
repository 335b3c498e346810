//! Statuses of runs, tasks and gates, and the one table of legal transitions.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored and displayed form (`RUNNING`).
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let upper = s.trim().to_ascii_uppercase();
                match upper.as_str() {
                    $($text => Ok($name::$variant),)+
                    _ => Err(Error::UnknownStatus { kind: stringify!($name), value: s.to_string() }),
                }
            }
        }
    };
}

string_enum!(
    /// Lifecycle of a run.
    RunStatus {
        Pending => "PENDING",
        Planning => "PLANNING",
        Running => "RUNNING",
        NeedsInput => "NEEDS_INPUT",
        Completed => "COMPLETED",
        Failed => "FAILED",
        Cancelled => "CANCELLED",
    }
);

string_enum!(
    /// Lifecycle of a task.
    TaskStatus {
        Pending => "PENDING",
        Ready => "READY",
        Queued => "QUEUED",
        Running => "RUNNING",
        Succeeded => "SUCCEEDED",
        Failed => "FAILED",
        Dead => "DEAD",
        Skipped => "SKIPPED",
        Cancelled => "CANCELLED",
    }
);

string_enum!(
    /// State of a quality gate.
    GateStatus {
        Pending => "PENDING",
        Passed => "PASSED",
        Failed => "FAILED",
        Waived => "WAIVED",
    }
);

impl RunStatus {
    /// No further work happens in a terminal run.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled
        )
    }

    /// Whether `self -> to` is a legal run transition.
    pub fn can_transition_to(self, to: RunStatus) -> bool {
        use RunStatus::*;
        if self == to {
            return false;
        }
        match self {
            Pending => matches!(to, Planning | Running | Failed | Cancelled),
            Planning => matches!(to, Running | NeedsInput | Failed | Cancelled),
            Running => matches!(to, NeedsInput | Completed | Failed | Cancelled),
            NeedsInput => matches!(to, Running | Failed | Cancelled),
            Completed | Failed | Cancelled => false,
        }
    }

    /// Checked transition: returns the target or a [`Error::IllegalTransition`].
    pub fn transition(self, to: RunStatus) -> Result<RunStatus, Error> {
        if self.can_transition_to(to) {
            Ok(to)
        } else {
            Err(Error::IllegalTransition {
                entity: "run",
                from: self.as_str(),
                to: to.as_str(),
            })
        }
    }
}

impl TaskStatus {
    /// No worker will run a task in a terminal status again (DEAD tasks can be
    /// replayed from the dead letter queue, which is an explicit transition).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Succeeded | TaskStatus::Dead | TaskStatus::Skipped | TaskStatus::Cancelled
        )
    }

    /// Whether a dependent may start once its dependency is in this status.
    pub fn satisfies_dependency(self) -> bool {
        matches!(self, TaskStatus::Succeeded | TaskStatus::Skipped)
    }

    /// Whether `self -> to` is a legal task transition.
    ///
    /// `FAILED -> READY` is a scheduled retry, `DEAD -> READY` a replay from the
    /// dead letter queue, `QUEUED -> FAILED` a dispatch that could not be
    /// delivered, `RUNNING -> FAILED` a failed attempt or an expired lease,
    /// `RUNNING -> READY` an attempt given back by a worker that shuts down.
    pub fn can_transition_to(self, to: TaskStatus) -> bool {
        use TaskStatus::*;
        if self == to {
            return false;
        }
        match self {
            Pending => matches!(to, Ready | Skipped | Cancelled),
            Ready => matches!(to, Queued | Skipped | Cancelled),
            Queued => matches!(to, Running | Failed | Cancelled),
            Running => matches!(to, Ready | Succeeded | Failed | Cancelled),
            Failed => matches!(to, Ready | Dead | Cancelled),
            Dead => matches!(to, Ready | Cancelled),
            Succeeded | Skipped | Cancelled => false,
        }
    }

    /// Checked transition: returns the target or a [`Error::IllegalTransition`].
    pub fn transition(self, to: TaskStatus) -> Result<TaskStatus, Error> {
        if self.can_transition_to(to) {
            Ok(to)
        } else {
            Err(Error::IllegalTransition {
                entity: "task",
                from: self.as_str(),
                to: to.as_str(),
            })
        }
    }
}

impl GateStatus {
    /// A gate that lets the run go on.
    pub fn is_open(self) -> bool {
        matches!(self, GateStatus::Passed | GateStatus::Waived)
    }

    /// Whether `self -> to` is a legal gate transition. A failed gate goes back
    /// to pending when rework opens a new review round.
    pub fn can_transition_to(self, to: GateStatus) -> bool {
        use GateStatus::*;
        if self == to {
            return false;
        }
        match self {
            Pending => matches!(to, Passed | Failed | Waived),
            Failed => matches!(to, Pending | Waived),
            Passed | Waived => false,
        }
    }

    /// Checked transition.
    pub fn transition(self, to: GateStatus) -> Result<GateStatus, Error> {
        if self.can_transition_to(to) {
            Ok(to)
        } else {
            Err(Error::IllegalTransition {
                entity: "gate",
                from: self.as_str(),
                to: to.as_str(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_runs_never_move() {
        for from in RunStatus::ALL.iter().filter(|s| s.is_terminal()) {
            for to in RunStatus::ALL {
                assert!(!from.can_transition_to(*to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn terminal_tasks_never_move_except_dead_replay() {
        for from in TaskStatus::ALL.iter().filter(|s| s.is_terminal()) {
            for to in TaskStatus::ALL {
                let ok = from.can_transition_to(*to);
                let replay = *from == TaskStatus::Dead
                    && matches!(to, TaskStatus::Ready | TaskStatus::Cancelled);
                assert_eq!(ok, replay, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn a_task_cannot_skip_the_queue() {
        let err = TaskStatus::Pending
            .transition(TaskStatus::Running)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "illegal task transition PENDING -> RUNNING"
        );
    }

    #[test]
    fn statuses_round_trip_through_text() {
        for s in TaskStatus::ALL {
            assert_eq!(s.as_str().parse::<TaskStatus>().unwrap(), *s);
        }
        assert_eq!(
            "needs_input".parse::<RunStatus>().unwrap(),
            RunStatus::NeedsInput
        );
        assert!("DONE".parse::<GateStatus>().is_err());
    }

    #[test]
    fn passed_gates_are_final() {
        assert!(GateStatus::Failed.can_transition_to(GateStatus::Waived));
        assert!(!GateStatus::Passed.can_transition_to(GateStatus::Failed));
        assert!(!GateStatus::Waived.can_transition_to(GateStatus::Pending));
    }
}
