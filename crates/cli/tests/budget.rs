//! End-to-end: a run stopped by its budget waits in NEEDS_INPUT, and
//! `orchestrator budget` raises the limit and finishes it.

use std::path::PathBuf;
use std::process::{Command, Output};

const GOAL: &str = "Build a small CRUD app for managing TODO items";

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("orch.db")
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_orchestrator"))
            .args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", format!("sqlite://{}", self.db().display()))
            .env("ORCH_LOG", "error")
            .output()
            .unwrap()
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn a_run_over_budget_waits_and_continues_once_the_budget_is_raised() {
    let env = Env::new();
    let out = env.run(&[
        "run",
        GOAL,
        "--provider",
        "scripted",
        "--budget-tokens",
        "1",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(3), "exit 3: {}", stderr(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["run"]["status"], "NEEDS_INPUT");
    let reason = status["run"]["status_reason"].as_str().unwrap();
    assert!(reason.contains("budget"), "{reason}");
    assert_eq!(status["run"]["tokens_in"], 0, "no call was made");
    let id = status["run"]["id"].as_str().unwrap().to_string();

    let out = env.run(&["status", &id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("budget    0 of 1 tokens"), "{text}");

    let out = env.run(&[
        "budget",
        &id,
        "--tokens",
        "100000000",
        "--provider",
        "scripted",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["run"]["status"], "COMPLETED", "{status}");
    assert_eq!(status["run"]["settings"]["budget_tokens"], 100_000_000);
}

#[test]
fn budgets_must_be_positive() {
    let env = Env::new();
    let out = env.run(&["run", GOAL, "--provider", "scripted", "--budget-usd", "0"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("USD budget must be"),
        "{}",
        stderr(&out)
    );
}
