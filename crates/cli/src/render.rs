//! Human and JSON output of the read commands.
//!
//! Output goes through [`outln!`], which returns a write error instead of
//! panicking the way `println!` does: a reader that goes away early
//! (`orchestrator events RUN | head -1`) ends the command quietly with exit
//! code 0 (see `main`).

use std::fmt;
use std::io;

use orch_core::{Artifact, DeadLetter, Event, Run, RunState};
use serde::Serialize;

/// Writing to stdout failed. [`StdoutError::is_closed`]: the reader went
/// away, which `main` treats as success.
#[derive(Debug)]
pub struct StdoutError(pub io::Error);

impl StdoutError {
    /// Whether the reader closed the pipe (EPIPE).
    pub fn is_closed(&self) -> bool {
        self.0.kind() == io::ErrorKind::BrokenPipe
    }
}

impl fmt::Display for StdoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot write to stdout: {}", self.0)
    }
}

impl std::error::Error for StdoutError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The result of writing output.
pub type Out = Result<(), StdoutError>;

/// `println!` that returns [`Out`] instead of panicking on a write error.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::render::StdoutError)
    }};
}
pub(crate) use outln;

/// `print!` that returns [`Out`] instead of panicking on a write error.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*).map_err($crate::render::StdoutError)
    }};
}
pub(crate) use out;

/// A value as pretty JSON on stdout (every `--json`).
pub fn write_json<T: Serialize + ?Sized>(value: &T) -> Out {
    let s = serde_json::to_string_pretty(value).map_err(|e| StdoutError(io::Error::other(e)))?;
    outln!("{s}")
}

pub fn fmt_time(ms: i64) -> String {
    // UTC, second precision, without pulling in a date crate.
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}:{s:02}Z")
}

pub fn status_json(state: &RunState, dead: &[DeadLetter]) -> serde_json::Value {
    serde_json::json!({
        "run": state.run,
        "gates": state.gates,
        "tasks": state.tasks.iter().map(|t| serde_json::json!({
            "id": t.id, "role": t.role, "queue": t.role.queue(), "status": t.status, "attempt": t.attempt,
            "max_attempts": t.max_attempts, "round": t.round, "needs": t.needs, "gate": t.gate,
            "result_summary": t.result_summary, "last_error": t.last_error, "verdict": t.verdict,
            "cost_usd": t.cost_usd, "started_at": t.started_at, "finished_at": t.finished_at,
        })).collect::<Vec<_>>(),
        "dead_letters": dead,
    })
}

/// `orchestrator status`: the run, its budget, gates, tasks and dead letters.
pub fn write_status(state: &RunState, dead: &[DeadLetter]) -> Out {
    let r = &state.run;
    outln!("run       {}", r.id)?;
    outln!("goal      {}", r.goal)?;
    outln!("workflow  {}", r.workflow)?;
    outln!("provider  {}", r.provider)?;
    match &r.status_reason {
        Some(reason) => outln!("status    {} — {reason}", r.status)?,
        None => outln!("status    {}", r.status)?,
    }
    outln!("created   {}", fmt_time(r.created_at))?;
    if let Some(f) = r.finished_at {
        outln!(
            "finished  {} ({:.1} s)",
            fmt_time(f),
            (f - r.created_at) as f64 / 1000.0
        )?;
    }
    outln!(
        "cost      ${:.4}  ({} tokens in, {} out; {} task attempts of at most {})",
        r.cost_usd,
        r.tokens_in,
        r.tokens_out,
        r.iterations,
        r.settings.max_iterations
    )?;
    if r.settings.budget_usd.is_some() || r.settings.budget_tokens.is_some() {
        let mut parts = Vec::new();
        if let Some(u) = r.settings.budget_usd {
            parts.push(format!("${:.4} of ${u:.4}", r.cost_usd));
        }
        if let Some(t) = r.settings.budget_tokens {
            parts.push(format!("{} of {t} tokens", r.tokens_in + r.tokens_out));
        }
        outln!("budget    {}", parts.join(", "))?;
    }
    for g in &state.gates {
        outln!(
            "gate      {:<16} {:<8} rework rounds {}{}",
            g.kind.as_str(),
            g.status.as_str(),
            g.rework_rounds,
            g.reason
                .as_deref()
                .map(|x| format!("  ({x})"))
                .unwrap_or_default()
        )?;
    }
    outln!()?;
    outln!(
        "{:<34} {:<18} {:<10} {:>7}  result",
        "task",
        "role",
        "status",
        "attempt"
    )?;
    for t in &state.tasks {
        let result = t
            .result_summary
            .clone()
            .or_else(|| t.last_error.clone().map(|e| format!("error: {e}")))
            .unwrap_or_default();
        outln!(
            "{:<34} {:<18} {:<10} {:>3}/{:<3}  {}",
            t.id,
            t.role.as_str(),
            t.status.as_str(),
            t.attempt,
            t.max_attempts,
            truncate(&result, 70)
        )?;
    }
    if !dead.is_empty() {
        outln!()?;
        write_dead_letters(dead)?;
    }
    Ok(())
}

/// `orchestrator list`: one line per run.
pub fn write_runs(runs: &[Run]) -> Out {
    if runs.is_empty() {
        outln!(
            "no runs yet; start one with: orchestrator run \"Build a small CRUD app for managing TODO items\" --provider scripted"
        )?;
        return Ok(());
    }
    outln!(
        "{:<36}  {:<11}  {:<20}  {:>9}  goal",
        "run",
        "status",
        "created",
        "cost"
    )?;
    for r in runs {
        outln!(
            "{:<36}  {:<11}  {:<20}  {:>9}  {}",
            r.id,
            r.status.as_str(),
            fmt_time(r.created_at),
            format!("${:.4}", r.cost_usd),
            truncate(&r.goal, 60)
        )?;
    }
    Ok(())
}

/// One event of `orchestrator events` (with its data when `verbose`).
pub fn write_event(e: &Event, verbose: bool) -> Out {
    let task = e
        .task_id
        .as_deref()
        .map(|t| format!(" [{t}]"))
        .unwrap_or_default();
    outln!(
        "{:>5}  {}  {:<20}{} {}",
        e.seq,
        fmt_time(e.created_at),
        e.kind.as_str(),
        task,
        e.message
    )?;
    if verbose && !e.data.is_null() {
        let body = serde_json::to_string_pretty(&e.data).unwrap_or_default();
        for line in body.lines() {
            outln!("         {line}")?;
        }
    }
    Ok(())
}

/// `orchestrator artifacts` (with each one's text when `content`).
pub fn write_artifacts(list: &[Artifact], content: bool) -> Out {
    if list.is_empty() {
        outln!("no artifacts yet")?;
        return Ok(());
    }
    for a in list {
        let path = a
            .path
            .as_deref()
            .map(|p| format!("  {p}"))
            .unwrap_or_default();
        outln!(
            "{} v{}  ({}, {} bytes, by {} attempt {}){path}",
            a.name,
            a.version,
            a.kind,
            a.content.len(),
            a.task_id,
            a.attempt
        )?;
        if content {
            outln!("{}", "-".repeat(72))?;
            outln!("{}", a.content.trim_end())?;
            outln!("{}", "-".repeat(72))?;
            outln!()?;
        }
    }
    Ok(())
}

/// `orchestrator dlq list`: one line per dead letter.
pub fn write_dead_letters(list: &[DeadLetter]) -> Out {
    if list.is_empty() {
        outln!("the dead letter queue is empty")?;
        return Ok(());
    }
    outln!(
        "{:>4}  {:<36}  {:<24}  {:<18} {:>8}  error",
        "id",
        "run",
        "task",
        "role",
        "attempts"
    )?;
    for d in list {
        outln!(
            "{:>4}  {:<36}  {:<24}  {:<18} {:>8}  {}{}",
            d.id,
            d.run_id,
            d.task_id,
            d.role.as_str(),
            d.attempts,
            truncate(&d.error, 60),
            if d.replayed_at.is_some() {
                " (replayed)"
            } else {
                ""
            }
        )?;
    }
    Ok(())
}

pub fn truncate(s: &str, max: usize) -> String {
    let one_line = s.replace('\n', " ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_render_in_utc() {
        assert_eq!(fmt_time(0), "1970-01-01 00:00:00Z");
        assert_eq!(fmt_time(1_795_000_000_000), "2026-11-18 11:06:40Z");
    }

    #[test]
    fn truncation_keeps_one_line() {
        assert_eq!(truncate("a\nb", 10), "a b");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }
}
