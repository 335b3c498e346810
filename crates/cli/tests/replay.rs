//! `orchestrator replay`: a run re-executed from its LLM call journal, on
//! the real binary and a SQLite file in a temporary folder.

use std::collections::BTreeSet;
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

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_orchestrator"))
            .args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "DATABASE_URL",
                format!("sqlite://{}", self.dir.path().join("orch.db").display()),
            )
            .env("ORCH_LOG", "error")
            .output()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "orchestrator {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e})"))
    }

    /// The latest artifacts of a run as (name, path, content).
    fn artifacts(&self, run: &str) -> BTreeSet<(String, String, String)> {
        self.json(&["artifacts", run, "--json", "--content"])
            .as_array()
            .expect("a list of artifacts")
            .iter()
            .map(|a| {
                (
                    a["name"].as_str().unwrap().to_string(),
                    a["path"].as_str().unwrap_or_default().to_string(),
                    a["content"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

#[test]
fn a_replayed_run_reproduces_the_source_artifacts() {
    let env = Env::new();
    let source = env.json(&["run", GOAL, "--provider", "scripted", "--json"]);
    assert_eq!(source["run"]["status"], "COMPLETED", "{source}");
    let source_id = source["run"]["id"].as_str().unwrap().to_string();

    let replay = env.json(&["replay", &source_id, "--json"]);
    assert_eq!(replay["status"], "COMPLETED", "{replay}");
    assert_eq!(replay["source_run_id"], source_id.as_str());
    assert_eq!(replay["artifacts_identical"], true, "{replay}");
    let replay_id = replay["run_id"].as_str().unwrap().to_string();
    assert_ne!(replay_id, source_id);

    let status = env.json(&["status", &replay_id, "--json"]);
    assert_eq!(
        status["run"]["provider"],
        format!("replay of {source_id}").as_str()
    );
    let before = env.artifacts(&source_id);
    assert!(!before.is_empty());
    assert_eq!(before, env.artifacts(&replay_id));
}

#[test]
fn replaying_an_unknown_run_is_a_one_line_error() {
    let env = Env::new();
    assert!(env.run(&["init-db"]).status.success());
    let out = env.run(&["replay", "0199aaaa-0000-7000-8000-000000000000"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no run"), "{err}");
}
