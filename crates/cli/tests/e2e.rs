//! End-to-end tests: they run the real `orchestrator` binary against a
//! SQLite file in a temporary folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
        c.args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", format!("sqlite://{}", self.db().display()))
            .env("ORCH_LOG", "error");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "orchestrator {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let text = self.ok(args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {text}"))
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn the_demo_runs_end_to_end_and_every_read_command_answers() {
    let env = Env::new();
    env.ok(&["init-db"]);
    let out = env.ok(&["run", GOAL, "--provider", "scripted"]);
    assert!(
        out.contains("SCRIPTED"),
        "the output must say the provider is scripted: {out}"
    );
    assert!(out.contains("COMPLETED"), "{out}");
    assert!(
        out.contains("code_review gate FAILED"),
        "the demo shows one rework round: {out}"
    );
    // The command closed its store: the database file alone holds the run.
    let wal = env.dir.path().join("orch.db-wal");
    assert!(!wal.exists(), "no WAL left beside the database");

    let runs = env.json(&["list", "--json"]);
    let id = runs[0]["id"].as_str().unwrap().to_string();
    assert_eq!(runs[0]["status"], "COMPLETED");
    assert!(runs[0]["provider"].as_str().unwrap().contains("scripted"));

    let status = env.json(&["status", &id, "--json"]);
    assert_eq!(status["run"]["status"], "COMPLETED");
    let gates = status["gates"].as_array().unwrap();
    assert!(gates.iter().all(|g| g["status"] == "PASSED"), "{gates:?}");
    let human = env.ok(&["status", &id]);
    assert!(
        human.contains("security_review") && human.contains("PASSED"),
        "{human}"
    );

    let events = env.json(&["events", &id, "--json"]);
    let events = events.as_array().unwrap();
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "gap-free per-run order"
    );
    assert!(events.iter().any(|e| e["kind"] == "llm_request"));
    assert!(
        env.ok(&["events", &id, "-v"])
            .contains("\"scripted\": true")
    );

    let arts = env.ok(&["artifacts", &id, "--content"]);
    assert!(
        arts.contains("requirements v1") && arts.contains("backend/app.py"),
        "{arts}"
    );

    let export_dir = env.dir.path().join("out");
    env.ok(&["export", &id, "--out", export_dir.to_str().unwrap()]);
    assert!(export_dir.join("backend/app.py").exists());
    assert!(export_dir.join("docs/requirements.md").exists());

    // Idempotent tick of a finished run.
    assert!(
        env.ok(&["tick", &id, "--provider", "scripted"])
            .contains("already COMPLETED")
    );
}

#[test]
fn run_refuses_without_a_provider_and_creates_nothing() {
    let env = Env::new();
    let out = env.run(&["run", GOAL]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("--provider scripted") && err.contains("LLM_PROVIDER"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        !env.db().exists(),
        "nothing is created before the provider is known"
    );
}

#[test]
fn a_malformed_workflow_is_refused_with_file_and_line() {
    let env = Env::new();
    let bad = env.dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "name: bad\ntasks:\n  - id: a\n    role: business_analyst\n    produces: [{name: x, kind: doc}]\n  - id: b\n    role: tech_lead\n    needs: [nope]\n    produces: [{name: y, kind: doc}]\n",
    )
    .unwrap();
    let out = env.run(&["workflows", "validate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("bad.yaml:8") && err.contains("nope"), "{err}");
    let out = env.run(&[
        "run",
        GOAL,
        "--provider",
        "scripted",
        "--workflow",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(!env.db().exists(), "a bad workflow creates nothing");
}

#[test]
fn unknown_runs_and_corrupt_databases_get_one_line_errors() {
    let env = Env::new();
    env.ok(&["init-db"]);
    let out = env.run(&["status", "0193aaaa-0000-7000-8000-000000000000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("orchestrator list"),
        "{}",
        stderr(&out)
    );

    let corrupt = env.dir.path().join("corrupt.db");
    let garbage =
        b"this is not a database, it is a text file with enough bytes to look like a header....."
            .repeat(20);
    std::fs::write(&corrupt, &garbage).unwrap();
    let out = env
        .cmd(&["list"])
        .env("DATABASE_URL", format!("sqlite://{}", corrupt.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("corrupt") || err.contains("not a database"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&corrupt).unwrap(),
        garbage,
        "the file is left as it was"
    );

    // A mistyped path: read commands say there is no database there and
    // create none.
    let typo = env.dir.path().join("orhc.db");
    for args in [
        &["list"][..],
        &["status", "0193aaaa"],
        &["events", "0193aaaa"],
    ] {
        let out = env
            .cmd(args)
            .env("DATABASE_URL", format!("sqlite://{}", typo.display()))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("no database file") && err.contains("init-db"),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!typo.exists(), "{args:?} created {}", typo.display());
    }
}

#[test]
fn a_detached_run_is_recorded_and_tick_finishes_it() {
    let env = Env::new();
    let run = env.json(&["run", GOAL, "--provider", "scripted", "--detach", "--json"]);
    assert_eq!(run["status"], "PENDING");
    let id = run["id"].as_str().unwrap().to_string();
    // As the hint says: no provider named again, the run's own is used, and
    // the output says which.
    let out = env.run(&["tick", &id, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("with the provider it started with: scripted"),
        "{}",
        stderr(&out)
    );
    let out: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out["run"]["status"], "COMPLETED");
}

#[test]
fn run_resume_finishes_a_detached_run_with_its_own_provider() {
    let env = Env::new();
    let run = env.json(&["run", GOAL, "--provider", "scripted", "--detach", "--json"]);
    let id = run["id"].as_str().unwrap().to_string();
    let out = env.json(&["run", "--resume", &id, "--json"]);
    assert_eq!(out["run"]["status"], "COMPLETED", "{out}");
    assert_eq!(out["run"]["id"], id.as_str());
    // A provider named on the command line wins over the run's own.
    let other = Env::new();
    let run = other.json(&["run", GOAL, "--provider", "scripted", "--detach", "--json"]);
    let id = run["id"].as_str().unwrap().to_string();
    let out = other.run(&["run", "--resume", &id, "--provider", "nonesuch"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown LLM provider"),
        "{}",
        stderr(&out)
    );
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn succeeded_tasks(env: &Env, id: &str) -> usize {
    let out = env.run(&["status", id, "--json"]);
    if !out.status.success() {
        return 0;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["tasks"]
        .as_array()
        .map(|t| t.iter().filter(|t| t["status"] == "SUCCEEDED").count())
        .unwrap_or(0)
}

/// Regression guard for the resumability promise: SIGKILL in the middle of a
/// run, then `tick` finishes it with nothing lost and nothing done twice.
#[test]
fn a_run_killed_mid_flight_is_finished_by_tick_with_nothing_done_twice() {
    let env = Env::new();
    let run = env.json(&["run", GOAL, "--provider", "scripted", "--detach", "--json"]);
    let id = run["id"].as_str().unwrap().to_string();
    let mut child = env
        .cmd(&["tick", &id, "--provider", "scripted", "--quiet"])
        .env("SCRIPTED_LATENCY_MS", "200")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("four tasks to succeed", Duration::from_secs(60), || {
        succeeded_tasks(&env, &id) >= 4
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let status = env.json(&["status", &id, "--json"]);
    assert_eq!(status["run"]["status"], "RUNNING", "killed mid-run");

    let out = env.json(&["tick", &id, "--provider", "scripted", "--json"]);
    assert_eq!(out["run"]["status"], "COMPLETED", "{out}");

    let events = env.json(&["events", &id, "--json"]);
    let events = events.as_array().unwrap();
    let tasks = out["tasks"].as_array().unwrap();
    for t in tasks {
        let tid = t["id"].as_str().unwrap();
        let n = events
            .iter()
            .filter(|e| e["kind"] == "task_succeeded" && e["task_id"] == tid)
            .count();
        assert_eq!(n, 1, "task {tid} succeeded {n} times");
    }
    // Exactly the artifacts of a run that was never interrupted.
    let clean = Env::new();
    let clean_run = clean.json(&["run", GOAL, "--provider", "scripted", "--json"]);
    let clean_id = clean_run["run"]["id"].as_str().unwrap().to_string();
    let count = |e: &Env, id: &str| {
        e.json(&["artifacts", id, "--all-versions", "--json"])
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(count(&env, &id), count(&clean, &clean_id));
}

#[test]
fn workflows_are_listed_shown_and_validated() {
    let env = Env::new();
    assert!(env.ok(&["workflows", "list"]).contains("sdlc"));
    let shown = env.ok(&["workflows", "show", "sdlc"]);
    let file = env.dir.path().join("sdlc.yaml");
    std::fs::write(&file, &shown).unwrap();
    assert!(
        env.ok(&["workflows", "validate", file.to_str().unwrap()])
            .contains("valid")
    );
    let _ = Path::new(&file);
}

#[test]
fn a_fixture_that_does_not_parse_is_refused_before_anything_is_created() {
    let env = Env::new();
    let fixture = env.dir.path().join("fixture.yaml");
    std::fs::write(&fixture, "roles:\n  code_reviewer:\n    - txt: oops\n").unwrap();
    let out = env
        .cmd(&["run", GOAL, "--provider", "scripted"])
        .env("SCRIPTED_FIXTURE", &fixture)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("fixture.yaml") && err.contains("line 3"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!env.db().exists());
}

#[test]
fn a_review_that_keeps_failing_halts_the_run_until_a_person_waives_the_gate() {
    let env = Env::new();
    let fixture = env.dir.path().join("strict.yaml");
    std::fs::write(
        &fixture,
        "roles:\n  code_reviewer:\n    - text: |\n        <artifact name=\"code_review\" type=\"review\">\n        {\"verdict\": \"FAIL\", \"findings\": [\"no tests\"]}\n        </artifact>\n",
    )
    .unwrap();
    let out = env
        .cmd(&["run", GOAL, "--provider", "scripted", "--json"])
        .env("SCRIPTED_FIXTURE", &fixture)
        .env("MAX_REWORK", "1")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit 3: waiting for input; {}",
        stderr(&out)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["run"]["status"], "NEEDS_INPUT");
    let id = status["run"]["id"].as_str().unwrap().to_string();
    // `tick` refuses a waiting run and says what to do.
    let out = env
        .cmd(&["tick", &id, "--provider", "scripted"])
        .env("SCRIPTED_FIXTURE", &fixture)
        .output()
        .unwrap();
    assert!(stderr(&out).contains("waits for input"), "{}", stderr(&out));
    let out = env
        .cmd(&[
            "gate",
            "waive",
            &id,
            "code_review",
            "--reason",
            "tests come next sprint",
            "--provider",
            "scripted",
            "--quiet",
        ])
        .env("SCRIPTED_FIXTURE", &fixture)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // Quiet: the result only, no progress lines.
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("COMPLETED"), "{shown}");
    assert!(
        !shown.contains("RUNNING again") && !shown.contains("[sec]"),
        "{shown}"
    );
    let status = env.json(&["status", &id, "--json"]);
    assert_eq!(status["run"]["status"], "COMPLETED");
    let gate = status["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["kind"] == "code_review")
        .unwrap()
        .clone();
    assert_eq!(gate["status"], "WAIVED");
    assert_eq!(gate["reason"], "tests come next sprint");
    // Waiving again, or answering a finished run, is refused with the reason.
    let out = env.run(&["answer", &id, "more please"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not waiting"), "{}", stderr(&out));
}

/// Processes that open one fresh database file at once (`serve`, workers
/// and the CLI starting together) take turns from connecting to having
/// migrated it: none fails with "database is locked" (a connection
/// switching the new file to WAL, or a migration, used to make another
/// opener's connect fail before its busy timeout applied; about one start
/// in forty of five processes).
#[test]
fn processes_opening_a_fresh_database_at_once_all_succeed() {
    for _ in 0..20 {
        let env = Env::new();
        let children: Vec<_> = (0..5)
            .map(|_| {
                env.cmd(&["init-db"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "init-db failed: {}", stderr(&out));
        }
        let runs = env.json(&["list", "--json"]);
        assert_eq!(runs.as_array().map(Vec::len), Some(0), "{runs}");
    }
}

/// A pool size out of range is refused, in one line naming the variable
/// and the fix, before anything is opened.
#[test]
fn a_bad_database_pool_size_is_refused_before_anything_is_opened() {
    let env = Env::new();
    for value in ["0", "17", "many"] {
        let out = env
            .cmd(&["init-db"])
            .env("DATABASE_POOL_SIZE", value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "DATABASE_POOL_SIZE={value} accepted");
        let err = stderr(&out);
        assert!(err.contains("DATABASE_POOL_SIZE"), "{value}: {err}");
        assert!(err.contains("unset it"), "{value}: says the fix: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(!env.db().exists(), "nothing opened for {value}");
    }
    env.cmd(&["init-db"])
        .env("DATABASE_POOL_SIZE", "3")
        .status()
        .unwrap()
        .success()
        .then_some(())
        .expect("a size in range is accepted");
}

/// A reader that stops early (`orchestrator events RUN -v | head -1`) is
/// not an error: each read command ends at once, exit code 0, nothing on
/// stderr (it used to panic with "failed printing to stdout: Broken pipe").
#[test]
fn read_commands_writing_to_a_closed_pipe_end_quietly() {
    let env = Env::new();
    let run = env.json(&["run", GOAL, "--provider", "scripted", "--detach", "--json"]);
    let id = run["id"].as_str().unwrap().to_string();
    let commands: [&[&str]; 7] = [
        &["events", &id, "-v"],
        &["events", &id, "--json"],
        &["status", &id],
        &["list"],
        &["list", "--json"],
        &["workflows", "show", "sdlc"],
        &["workflows", "list", "--json"],
    ];
    for args in commands {
        // The read end is closed before the command starts: its first write
        // fails with EPIPE.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = env
            .cmd(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "{args:?}");
    }
}

/// `workflows validate` reports every error of the file, one line each,
/// and fails; `--json` says the same as a document.
#[test]
fn workflow_validation_reports_every_error() {
    let env = Env::new();
    let bad = env.dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "name: bad\ntasks:\n  - id: a\n    role: business_analyst\n    produces: [{name: x, kind: doc}]\n  - id: b\n    role: tech_lead\n    needs: [nope]\n    produces: [{name: y, kind: doc}]\n  - id: c\n    role: tech_lead\n    needs: [ghost]\n    retries: 99\n    produces: [{name: z, kind: doc}]\n",
    )
    .unwrap();
    let file = bad.to_str().unwrap();
    let out = env.run(&["workflows", "validate", file]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(lines.iter().all(|l| l.starts_with("error: ")), "{err}");
    assert!(
        lines[0].contains("bad.yaml:8") && lines[0].contains("nope"),
        "{err}"
    );
    assert!(
        lines[1].contains("bad.yaml:12") && lines[1].contains("ghost"),
        "{err}"
    );
    assert!(
        lines[2].contains("bad.yaml:13") && lines[2].contains("retries"),
        "{err}"
    );

    let out = env.run(&["workflows", "validate", file, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(3), "{v}");
    assert_eq!(v["errors"][0]["line"], 8);
}

/// `workflows show --json` prints the workflow that `workflows list --json`
/// lists.
#[test]
fn a_workflow_is_shown_as_json() {
    let env = Env::new();
    let wf = env.json(&["workflows", "show", "sdlc", "--json"]);
    let listed = env.json(&["workflows", "list", "--json"]);
    assert_eq!(wf["name"], "sdlc");
    assert_eq!(wf, listed[0]);
}

/// A status filter that is not a status says which ones are, in one line.
#[test]
fn an_unknown_status_filter_lists_the_valid_ones() {
    let env = Env::new();
    let out = env.run(&["list", "--status", "bogus"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("\"bogus\"") && err.contains("NEEDS_INPUT") && err.contains("CANCELLED"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

/// A database another process holds a write lock on: the default log
/// filter (no ORCH_LOG) prints the one-line error only — not sqlx's
/// multi-line slow-statement warning — and no colour codes into a pipe.
#[test]
fn a_locked_database_gets_one_plain_line() {
    use sqlx::Connection as _;
    let env = Env::new();
    env.ok(&["init-db"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut holder = rt.block_on(async {
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", env.db().display()))
            .await
            .unwrap();
        sqlx::raw_sql("BEGIN EXCLUSIVE")
            .execute(&mut c)
            .await
            .unwrap();
        c
    });
    let out = env
        .cmd(&["run", GOAL, "--provider", "scripted", "--detach"])
        .env_remove("ORCH_LOG")
        .output()
        .unwrap();
    rt.block_on(async {
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut holder)
            .await
            .unwrap();
        holder.close().await.unwrap();
    });
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("locked"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!err.contains('\x1b'), "no ANSI codes into a pipe: {err:?}");
}

/// A long-running process waits for a server that is down, but a URL that no
/// server can fix (a bad port, a scheme that is not Redis) fails at once.
#[test]
fn serve_and_worker_refuse_a_bad_url_at_once_instead_of_retrying() {
    let env = Env::new();
    for (args, var, url, says) in [
        (
            &["serve", "--no-api"][..],
            "DATABASE_URL",
            "postgres://u@127.0.0.1:notaport/db",
            "not a valid PostgreSQL URL",
        ),
        (
            &["worker"][..],
            "REDIS_URL",
            "http://127.0.0.1:6379",
            "unsupported broker URL",
        ),
    ] {
        let mut child = env
            .cmd(args)
            .env("LLM_PROVIDER", "scripted")
            .env(var, url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > Duration::from_secs(20) {
                child.kill().unwrap();
                panic!("{args:?} with {var}={url} kept retrying");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(!status.success(), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("retrying"), "{args:?}: {err}");
    }
}

/// A fixture whose tech lead posts on `team` (the other roles answer
/// generically).
const POSTING_FIXTURE: &str = r#"tasks:
  architecture:
    - text: |
        <message channel="team">
        API contract is final: errors are {"detail": ...}.
        </message>
        <artifact name="architecture" type="architecture">
        # Architecture
        FastAPI + SQLite.
        </artifact>
"#;

#[test]
fn channel_messages_are_listed_and_followed_from_the_event_log() {
    let env = Env::new();
    let fixture = env.dir.path().join("posting.yaml");
    std::fs::write(&fixture, POSTING_FIXTURE).unwrap();
    let out = env
        .cmd(&["run", GOAL, "--provider", "scripted", "--json"])
        .env("SCRIPTED_FIXTURE", &fixture)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = run["run"]["id"].as_str().unwrap().to_string();
    assert_eq!(run["run"]["status"], "COMPLETED");

    let text = env.ok(&["channels", &id]);
    assert!(text.contains("#team"), "{text}");
    assert!(
        text.contains("tech_lead") && text.contains("API contract is final"),
        "{text}"
    );
    let lines = env.ok(&["channels", &id, "--channel", "team", "--json"]);
    let messages: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(messages.len(), 1, "{lines}");
    assert_eq!(messages[0]["task_id"], "architecture");
    assert_eq!(messages[0]["from_role"], "tech_lead");
    assert!(messages[0]["seq"].as_i64().unwrap() > 0);
    assert!(
        env.ok(&["channels", &id, "--channel", "other"])
            .contains("no channel messages")
    );
    // Following a finished run prints what there is and ends.
    let followed = env.ok(&["channels", &id, "--follow", "--json"]);
    assert_eq!(followed.lines().count(), 1, "{followed}");
    let out = env.run(&["channels", &id, "--channel", "Not A Name"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("invalid channel name"),
        "{}",
        stderr(&out)
    );
}
