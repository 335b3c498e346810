//! Distributed mode with real processes: `serve` and `worker` processes
//! sharing a store and Redis Streams queues, under faults — a worker killed
//! mid-task, `serve` killed mid-run, the queues' data lost (and Redis
//! itself restarted empty), PostgreSQL restarted, a task that always
//! fails, a message delivered twice. Each test has its own database
//! and Redis key prefix, so tests run in parallel without colliding.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const GOAL: &str = "Build a small CRUD app for managing TODO items";
const REDIS: &str = "redis://127.0.0.1:6379";

/// Whether a local service answers on `addr`. If not: skip (false) when
/// `skip_var=1`, else fail with how to start it.
fn service_available(name: &str, addr: &str, skip_var: &str, start: &str) -> bool {
    if std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).is_ok()
    {
        return true;
    }
    if std::env::var(skip_var).as_deref() == Ok("1") {
        eprintln!("skipped: {name} is not reachable and {skip_var}=1");
        return false;
    }
    panic!("{name} is not reachable on {addr}; start it with `{start}` (or set {skip_var}=1)");
}

fn redis_available() -> bool {
    service_available(
        "Redis",
        "127.0.0.1:6379",
        "ORCH_SKIP_REDIS",
        "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no",
    )
}

const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/test";

/// PostgreSQL tests share the server; the restart test takes this for writing
/// so that no other PostgreSQL test of this binary runs while it restarts.
static PG_LOCK: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn pg_available() -> bool {
    service_available(
        "PostgreSQL",
        "127.0.0.1:5432",
        "ORCH_SKIP_PG",
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    )
}

fn psql(sql: &str) -> Output {
    Command::new("psql")
        .args([PG_ADMIN, "-v", "ON_ERROR_STOP=1", "-qc", sql])
        .output()
        .unwrap()
}

/// One deployment: a database, a key prefix, and the processes started.
struct Cluster {
    dir: tempfile::TempDir,
    prefix: String,
    env: Vec<(String, String)>,
    children: Vec<(String, Child)>,
    /// A PostgreSQL database of this test's own, dropped at the end.
    pg_db: Option<String>,
}

impl Cluster {
    fn new(extra: &[(&str, &str)]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!(
            "test:{}:",
            std::process::id() as u128 * 1_000_000 + rand_suffix()
        );
        let mut env = vec![
            (
                "DATABASE_URL".to_string(),
                format!("sqlite://{}", dir.path().join("state.db").display()),
            ),
            ("REDIS_URL".to_string(), REDIS.to_string()),
            ("QUEUE_PREFIX".to_string(), prefix.clone()),
            ("LLM_PROVIDER".to_string(), "scripted".to_string()),
            ("LEASE_TTL_SECONDS".to_string(), "2".to_string()),
            ("REQUEUE_AFTER_SECONDS".to_string(), "1".to_string()),
            ("SWEEP_INTERVAL_MS".to_string(), "200".to_string()),
            ("ORCH_LOG".to_string(), "warn".to_string()),
            // Several `serve` processes run at once: each takes a free port.
            ("API_BIND".to_string(), "127.0.0.1:0".to_string()),
        ];
        for (k, v) in extra {
            env.push((k.to_string(), v.to_string()));
        }
        Cluster {
            dir,
            prefix,
            env,
            children: Vec::new(),
            pg_db: None,
        }
    }

    /// The same on a fresh PostgreSQL database.
    fn postgres(extra: &[(&str, &str)]) -> Cluster {
        let mut c = Cluster::new(extra);
        let db = format!(
            "orch_e2e_{}",
            c.prefix.trim_start_matches("test:").trim_end_matches(':')
        );
        let out = psql(&format!("CREATE DATABASE {db}"));
        assert!(
            out.status.success(),
            "createdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        c.env.retain(|(k, _)| k != "DATABASE_URL");
        c.env.push((
            "DATABASE_URL".into(),
            format!("postgres://postgres@127.0.0.1:5432/{db}"),
        ));
        c.pg_db = Some(db);
        c
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
        c.args(args).current_dir(self.dir.path()).env_clear();
        c.env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    fn spawn(&mut self, name: &str, args: &[&str]) {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        let child = self
            .cmd(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push((name.to_string(), child));
    }

    fn kill(&mut self, name: &str) {
        let i = self
            .children
            .iter()
            .position(|(n, _)| n == name)
            .expect("a process of that name");
        let (_, mut child) = self.children.remove(i);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }

    fn ok(&self, args: &[&str]) -> String {
        let out: Output = self.cmd(args).output().unwrap();
        assert!(
            out.status.success(),
            "orchestrator {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    fn submit(&self) -> String {
        let run = self.json(&["run", GOAL, "--detach", "--json"]);
        let id = run["id"].as_str().unwrap().to_string();
        self.ok(&["tick", &id, "--once"]);
        id
    }

    fn status(&self, id: &str) -> serde_json::Value {
        self.json(&["status", id, "--json"])
    }

    fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&serde_json::Value) -> bool,
        id: &str,
    ) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let s = self.status(id);
            if f(&s) {
                return s;
            }
            if start.elapsed() > timeout {
                let logs: String = self
                    .children
                    .iter()
                    .map(|(n, _)| {
                        format!(
                            "--- {n}\n{}",
                            std::fs::read_to_string(self.dir.path().join(format!("{n}.log")))
                                .unwrap_or_default()
                        )
                    })
                    .collect();
                panic!("timed out waiting for {what}; status: {s}\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Start `serve` and a worker named `worker`, submit the demo run and
    /// wait for one of its tasks to run: the run's id and that task's.
    fn serve_and_wait_for_a_running_task(&mut self, worker: &str) -> (String, String) {
        self.spawn("serve", &["serve"]);
        self.spawn(worker, &["worker"]);
        let id = self.submit();
        let s = self.wait_until(
            "a task to be running",
            Duration::from_secs(30),
            |s| running_task(s).is_some(),
            &id,
        );
        let task = running_task(&s).unwrap();
        (id, task)
    }

    /// Wait (90 s at most) for run `id` to complete with nothing done twice
    /// and every process started still running: they lived through the fault.
    fn completes_with_every_process_alive(&mut self, id: &str) {
        self.wait_until(
            "the run to complete",
            Duration::from_secs(90),
            completed,
            id,
        );
        assert_nothing_done_twice(self, id);
        for (name, child) in &mut self.children {
            assert!(child.try_wait().unwrap().is_none(), "{name} exited");
        }
    }

    /// Answer with this scripted fixture (YAML) in every process started after.
    fn use_fixture(&mut self, yaml: &str) {
        let fixture = self.dir.path().join("fixture.yaml");
        std::fs::write(&fixture, yaml).unwrap();
        self.env
            .push(("SCRIPTED_FIXTURE".into(), fixture.display().to_string()));
    }

    fn redis_keys(&self) -> Vec<String> {
        let out = Command::new("redis-cli")
            .args(["--scan", "--pattern", &format!("{}*", self.prefix)])
            .output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    fn lose_redis_data(&self) {
        for key in self.redis_keys() {
            let _ = Command::new("redis-cli").args(["del", &key]).output();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.lose_redis_data();
        if let Some(db) = &self.pg_db {
            let _ = psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
        }
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000
}

fn completed(s: &serde_json::Value) -> bool {
    s["run"]["status"] == "COMPLETED"
}

/// How many of the run's tasks succeeded (in a `status --json` document).
fn succeeded(s: &serde_json::Value) -> usize {
    s["tasks"].as_array().map_or(0, |t| {
        t.iter().filter(|t| t["status"] == "SUCCEEDED").count()
    })
}

fn running_task(s: &serde_json::Value) -> Option<String> {
    s["tasks"]
        .as_array()?
        .iter()
        .find(|t| t["status"] == "RUNNING")
        .map(|t| t["id"].as_str().unwrap().to_string())
}

/// How many events of `kind` about `task` a run's `events --json` holds.
fn count_events(events: &serde_json::Value, kind: &str, task: &str) -> usize {
    events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind && e["task_id"] == task)
        .count()
}

/// No task succeeded twice and no artifact version was written twice.
fn assert_nothing_done_twice(c: &Cluster, id: &str) {
    let all = c.json(&["events", id, "--json"]);
    let status = c.status(id);
    for t in status["tasks"].as_array().unwrap() {
        let tid = t["id"].as_str().unwrap();
        let n = count_events(&all, "task_succeeded", tid);
        assert_eq!(n, 1, "task {tid} succeeded {n} times");
    }
    let events = all.as_array().unwrap();
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    let arts = c.json(&["artifacts", id, "--all-versions", "--json"]);
    let mut keys: Vec<(String, String, i64)> = arts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].to_string(),
                a["path"].to_string(),
                a["version"].as_i64().unwrap(),
            )
        })
        .collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n, "an artifact version was written twice");
}

/// A worker holding a task is SIGKILLed; a fresh worker finishes the run,
/// re-running the killed attempt, with nothing done twice.
fn worker_kill_scenario(mut c: Cluster) {
    let (id, victim) = c.serve_and_wait_for_a_running_task("worker1");
    c.kill("worker1");
    c.spawn("worker2", &["worker"]);
    let s = c.wait_until(
        "the run to complete",
        Duration::from_secs(60),
        completed,
        &id,
    );
    let t = s["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == victim.as_str())
        .unwrap()
        .clone();
    assert!(
        t["attempt"].as_u64().unwrap() >= 2,
        "the killed attempt was re-run: {t}"
    );
    assert_nothing_done_twice(&c, &id);
}

#[test]
fn a_worker_killed_mid_task_is_replaced_and_the_run_completes() {
    if !redis_available() {
        return;
    }
    worker_kill_scenario(Cluster::new(&[("SCRIPTED_LATENCY_MS", "400")]));
}

#[test]
fn serve_killed_mid_run_and_restarted_finishes_the_run() {
    if !redis_available() {
        return;
    }
    let mut c = Cluster::new(&[("SCRIPTED_LATENCY_MS", "200")]);
    c.spawn("serve1", &["serve"]);
    c.spawn("worker", &["worker", "--concurrency", "2"]);
    let id = c.submit();
    c.wait_until(
        "three tasks to succeed",
        Duration::from_secs(30),
        |s| {
            s["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["status"] == "SUCCEEDED")
                .count()
                >= 3
        },
        &id,
    );
    c.kill("serve1");
    std::thread::sleep(Duration::from_millis(500));
    c.spawn("serve2", &["serve"]);
    c.wait_until(
        "the run to complete",
        Duration::from_secs(60),
        completed,
        &id,
    );
    assert_nothing_done_twice(&c, &id);
}

#[test]
fn losing_the_queues_data_mid_run_loses_no_task() {
    if !redis_available() {
        return;
    }
    let mut c = Cluster::new(&[("SCRIPTED_LATENCY_MS", "200")]);
    c.spawn("serve", &["serve"]);
    let id = c.submit();
    // No worker yet: the first dispatch sits in Redis. Then Redis loses it.
    c.wait_until(
        "a task to be queued",
        Duration::from_secs(10),
        |s| s["tasks"][0]["status"] == "QUEUED",
        &id,
    );
    assert!(!c.redis_keys().is_empty());
    c.lose_redis_data();
    c.spawn("worker", &["worker"]);
    c.wait_until(
        "the run to complete",
        Duration::from_secs(60),
        completed,
        &id,
    );
    assert_nothing_done_twice(&c, &id);
}

#[test]
fn a_task_that_always_fails_ends_in_the_dead_letter_queue() {
    if !redis_available() {
        return;
    }
    let mut c = Cluster::new(&[]);
    c.use_fixture("tasks:\n  plan:\n    - error: { status: 503, message: \"model overloaded\" }\n");
    c.spawn("serve", &["serve"]);
    c.spawn("worker", &["worker"]);
    let id = c.submit();
    // Retries back off 1 s, then 2 s.
    let s = c.wait_until(
        "the run to need input",
        Duration::from_secs(60),
        |s| s["run"]["status"] == "NEEDS_INPUT",
        &id,
    );
    assert!(
        s["run"]["status_reason"]
            .as_str()
            .unwrap()
            .contains("dead letter queue"),
        "{s}"
    );
    let dlq = c.json(&["dlq", "list", "--run", &id, "--json"]);
    let dlq = dlq.as_array().unwrap();
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0]["task_id"], "plan");
    assert_eq!(dlq[0]["attempts"], 3);
    assert!(
        dlq[0]["error"]
            .as_str()
            .unwrap()
            .contains("model overloaded")
    );
    let plan = s["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "plan")
        .unwrap()
        .clone();
    assert_eq!(plan["status"], "DEAD");
    // Nothing downstream of the dead task ran.
    let ux = s["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "ux_design")
        .unwrap()
        .clone();
    assert_eq!(ux["status"], "PENDING");
}

#[test]
fn the_same_queue_message_delivered_twice_runs_the_task_once() {
    if !redis_available() {
        return;
    }
    let mut c = Cluster::new(&[]);
    c.spawn("serve", &["serve"]);
    let id = c.submit();
    c.wait_until(
        "a task to be queued",
        Duration::from_secs(10),
        |s| s["tasks"][0]["status"] == "QUEUED",
        &id,
    );
    // Duplicate the first dispatch on the business analyst's stream.
    let stream = format!("{}q_ba", c.prefix);
    let out = Command::new("redis-cli")
        .args([
            "xadd",
            &stream,
            "*",
            "run_id",
            &id,
            "task_id",
            "requirements",
            "role",
            "business_analyst",
            "attempt",
            "1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    c.spawn("worker", &["worker"]);
    c.wait_until(
        "the run to complete",
        Duration::from_secs(60),
        completed,
        &id,
    );
    assert_nothing_done_twice(&c, &id);
    let events = c.json(&["events", &id, "--json"]);
    assert_eq!(count_events(&events, "task_started", "requirements"), 1);
}

#[test]
fn a_worker_started_before_its_broker_waits_with_backoff_and_stops_on_sigterm() {
    // Port 1 on loopback: nothing listens there, so every connect is refused.
    let mut c = Cluster::new(&[("REDIS_URL", "redis://127.0.0.1:1")]);
    c.env.retain(|(k, v)| k != "REDIS_URL" || v.ends_with(":1"));
    c.spawn("worker", &["worker"]);
    waits_with_backoff_and_stops_on_sigterm(c, "worker", "cannot reach the queue broker");
}

#[test]
fn serve_started_before_its_database_waits_with_backoff_and_stops_on_sigterm() {
    let mut c = Cluster::new(&[]);
    c.env.retain(|(k, _)| k != "DATABASE_URL");
    c.env.push((
        "DATABASE_URL".into(),
        "postgres://orch@127.0.0.1:1/orch".into(),
    ));
    c.spawn("serve", &["serve", "--no-api"]);
    waits_with_backoff_and_stops_on_sigterm(c, "serve", "cannot reach the database");
}

/// The last process started keeps retrying what it cannot reach (`says`),
/// with backoff, until SIGTERM stops it cleanly.
fn waits_with_backoff_and_stops_on_sigterm(mut c: Cluster, name: &str, says: &str) {
    std::thread::sleep(Duration::from_millis(2_500));
    let (_, mut child) = c.children.pop().unwrap();
    assert!(
        child.try_wait().unwrap().is_none(),
        "still running: no crash loop"
    );
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "a clean stop on SIGTERM: {status:?}");
    let log = std::fs::read_to_string(c.dir.path().join(format!("{name}.log"))).unwrap();
    let tries = log.matches(says).count();
    // 0.5 s, 1 s, 2 s backoff: three or four tries in 2.5 s, not hundreds.
    assert!((2..=5).contains(&tries), "{tries} tries:\n{log}");
    assert!(log.contains("retrying in 1.0 s"), "{log}");
}

#[test]
fn the_demo_runs_on_postgres_and_redis_with_separate_worker_processes() {
    if !redis_available() || !pg_available() {
        return;
    }
    let _shared = PG_LOCK.read().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::postgres(&[]);
    c.ok(&["init-db"]);
    c.spawn("serve", &["serve"]);
    c.spawn(
        "w1",
        &[
            "worker",
            "--roles",
            "business_analyst,project_manager,ux_engineer,tech_lead,database_engineer",
        ],
    );
    c.spawn(
        "w2",
        &[
            "worker",
            "--roles",
            "backend_engineer,frontend_engineer,code_reviewer,security_reviewer",
        ],
    );
    let out = c.json(&["run", GOAL, "--json"]);
    assert_eq!(out["run"]["status"], "COMPLETED", "{out}");
    let id = out["run"]["id"].as_str().unwrap().to_string();
    let gates = out["gates"].as_array().unwrap();
    assert!(gates.iter().all(|g| g["status"] == "PASSED"));
    assert_nothing_done_twice(&c, &id);
    assert_prompts_stored_apart_and_read_whole(&c, &id);
}

/// The prompt events of run `id` read back whole (the system prompt, the
/// quoted upstream artifacts) while the rows hold neither: the system prompt
/// is kept once in `prompt_texts` and the artifacts are referred to
/// (orch_core::elision).
fn assert_prompts_stored_apart_and_read_whole(c: &Cluster, id: &str) {
    let events = c.json(&["events", id, "--json"]);
    let requests: Vec<&serde_json::Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "llm_request")
        .collect();
    assert!(requests.len() >= 9, "a request per task");
    for e in &requests {
        let data = &e["data"];
        assert!(
            data["system"]
                .as_str()
                .is_some_and(|s| s.starts_with("You are")),
            "{data}"
        );
        assert!(data.get("system_text").is_none() && data.get("elided").is_none());
    }
    let review = requests
        .iter()
        .find(|e| e["task_id"] == "security_review")
        .expect("the security review was prompted");
    let artifacts = c.json(&["artifacts", id, "--json", "--content"]);
    let schema = artifacts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "schema")
        .expect("a schema");
    let prompt = review["data"]["messages"][0]["content"].as_str().unwrap();
    assert!(
        prompt.contains(schema["content"].as_str().unwrap()),
        "the review's prompt quotes the schema"
    );
    let db = c.pg_db.as_deref().expect("a PostgreSQL cluster");
    let stored = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", db, "-Atc"])
        .arg(format!(
            "SELECT count(*) FILTER (WHERE data::jsonb ? 'system_text' \
                                       AND NOT data::jsonb ? 'system'), \
                    count(*) FILTER (WHERE data::jsonb ? 'elided'), count(*), \
                    (SELECT count(*) FROM prompt_texts) \
             FROM events WHERE run_id = '{id}' AND kind = 'llm_request'"
        ))
        .output()
        .unwrap();
    let row = String::from_utf8_lossy(&stored.stdout).trim().to_string();
    assert!(
        stored.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&stored.stderr)
    );
    let n: Vec<usize> = row.split('|').map(|x| x.parse().unwrap()).collect();
    assert_eq!(n[0], n[2], "every system prompt kept apart: {row}");
    assert!(
        n[1] >= n[2] - 1,
        "every prompt after the first quotes by reference: {row}"
    );
    assert!((1..=10).contains(&n[3]), "a text per role at most: {row}");
}

#[test]
fn a_worker_killed_mid_task_on_postgres_is_replaced_and_the_run_completes() {
    if !redis_available() || !pg_available() {
        return;
    }
    let _shared = PG_LOCK.read().unwrap_or_else(|p| p.into_inner());
    worker_kill_scenario(Cluster::postgres(&[("SCRIPTED_LATENCY_MS", "400")]));
}

/// A `redis-server` of one test's own, on a port of its own: it can be
/// killed and restarted without touching the Redis other tests share.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    /// `None` (the test skips) when `redis-server` is not installed.
    fn start() -> Option<PrivateRedis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = PrivateRedis { port, child: None };
        r.restart().then_some(r)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Start the server (again: nothing is kept on disk, so with its data
    /// lost) and wait until it answers. False if it cannot be started.
    fn restart(&mut self) -> bool {
        let Ok(child) = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
        else {
            eprintln!("skipped: redis-server is not installed");
            return false;
        };
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the private redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Redis dies mid-run with workers blocked on their streams and comes back
/// empty (no consumer groups, no entries): the processes live through it,
/// the store re-publishes what was queued, and the run completes with
/// nothing done twice.
#[test]
fn redis_restarted_with_its_data_lost_mid_run_loses_no_task() {
    let Some(mut redis) = PrivateRedis::start() else {
        return;
    };
    let mut c = Cluster::new(&[("SCRIPTED_LATENCY_MS", "150")]);
    c.env.retain(|(k, _)| k != "REDIS_URL");
    c.env.push(("REDIS_URL".into(), redis.url()));
    c.spawn("serve", &["serve"]);
    c.spawn("worker", &["worker"]);
    let id = c.submit();
    c.wait_until(
        "two tasks to succeed",
        Duration::from_secs(30),
        |s| succeeded(s) >= 2,
        &id,
    );
    redis.kill();
    assert_ne!(c.status(&id)["run"]["status"], "COMPLETED", "not mid-run");
    std::thread::sleep(Duration::from_millis(500));
    assert!(redis.restart());
    c.completes_with_every_process_alive(&id);
}

#[test]
fn postgres_restarted_mid_run_loses_nothing() {
    if !redis_available() || !pg_available() {
        return;
    }
    let Some(version) = std::fs::read_dir("/etc/postgresql")
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
    else {
        eprintln!("skipped: no local PostgreSQL cluster to restart (/etc/postgresql)");
        return;
    };
    let _exclusive = PG_LOCK.write().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::postgres(&[("SCRIPTED_LATENCY_MS", "150")]);
    c.spawn("serve", &["serve"]);
    c.spawn("worker", &["worker"]);
    let id = c.submit();
    c.wait_until(
        "two tasks to succeed",
        Duration::from_secs(30),
        |s| succeeded(s) >= 2,
        &id,
    );
    let out = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.completes_with_every_process_alive(&id);
}

/// Several `serve` processes drive the same runs at once: each step commits
/// once (compare-and-set on the run's version), so no attempt is dispatched
/// twice and no task runs twice.
#[test]
fn two_serve_processes_never_dispatch_a_task_twice() {
    if !redis_available() || !pg_available() {
        return;
    }
    let _shared = PG_LOCK.read().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::postgres(&[("SWEEP_INTERVAL_MS", "50")]);
    c.ok(&["init-db"]);
    c.spawn("serve1", &["serve"]);
    c.spawn("serve2", &["serve"]);
    c.spawn("worker1", &["worker", "--concurrency", "3"]);
    c.spawn("worker2", &["worker", "--concurrency", "3"]);
    let ids: Vec<String> = (0..6).map(|_| c.submit()).collect();
    for id in &ids {
        c.wait_until(
            "the run to complete",
            Duration::from_secs(90),
            completed,
            id,
        );
        assert_nothing_done_twice(&c, id);
        let events = c.json(&["events", id, "--json"]);
        let mut queued: Vec<(String, u64)> = events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "task_queued")
            .map(|e| {
                (
                    e["task_id"].as_str().unwrap().to_string(),
                    e["data"]["attempt"].as_u64().unwrap(),
                )
            })
            .collect();
        let n = queued.len();
        queued.sort();
        queued.dedup();
        assert_eq!(
            queued.len(),
            n,
            "an attempt was dispatched twice in run {id}"
        );
    }
}

#[test]
fn sigterm_lets_a_worker_finish_its_in_flight_attempt_before_it_exits() {
    if !redis_available() {
        return;
    }
    let mut c = Cluster::new(&[("SCRIPTED_LATENCY_MS", "1500"), ("LEASE_TTL_SECONDS", "30")]);
    let (id, _) = c.serve_and_wait_for_a_running_task("worker");
    let (_, mut child) = c.children.pop().unwrap();
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    // The attempt in flight at SIGTERM was committed, not abandoned; the
    // stopping worker took no new task (none was handed over to it): the
    // next one waits on its queue for another process.
    let s = c.status(&id);
    let first = &s["tasks"][0];
    assert_eq!(first["status"], "SUCCEEDED", "{s}");
    assert_eq!(first["attempt"], 1);
    assert_eq!(succeeded(&s), 1, "{s}");
    assert_eq!(s["tasks"][1]["status"], "QUEUED", "{s}");
    let log = std::fs::read_to_string(c.dir.path().join("worker.log")).unwrap();
    assert!(log.contains("draining"), "{log}");
}

#[test]
fn sigterm_gives_back_an_attempt_still_running_after_the_drain_timeout() {
    if !redis_available() {
        return;
    }
    // The first worker's calls would take ten minutes; the lease is 30 s.
    let mut c = Cluster::new(&[
        ("SCRIPTED_LATENCY_MS", "600000"),
        ("LEASE_TTL_SECONDS", "30"),
        ("DRAIN_TIMEOUT_SECONDS", "0.2"),
    ]);
    let (id, task) = c.serve_and_wait_for_a_running_task("worker");
    let (_, mut child) = c.children.pop().unwrap();
    let term = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        term.elapsed() < Duration::from_secs(10),
        "the worker waited {:?} to exit",
        term.elapsed()
    );
    let s = c.status(&id);
    let t = s["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == task.as_str())
        .unwrap();
    assert_eq!(t["status"], "QUEUED", "given back and queued again: {s}");
    assert_eq!(t["attempt"], 2, "{s}");
    let log = std::fs::read_to_string(c.dir.path().join("worker.log")).unwrap();
    assert!(log.contains("giving back the attempts"), "{log}");

    // A worker with a fast provider finishes the run well within the lease:
    // nobody waited for the given-back attempt's lease to expire.
    c.env.retain(|(k, _)| k != "SCRIPTED_LATENCY_MS");
    c.spawn("worker2", &["worker"]);
    c.wait_until(
        "the run to complete",
        Duration::from_secs(25),
        completed,
        &id,
    );
    assert_nothing_done_twice(&c, &id);
    let events = c.json(&["events", &id, "--json"]);
    let of = |kind: &str| count_events(&events, kind, &task);
    assert_eq!(of("task_released"), 1);
    assert_eq!(of("lease_expired") + of("task_failed"), 0);
    assert_eq!(of("task_succeeded"), 1);
}

impl Cluster {
    /// The base URL of a spawned `serve`'s HTTP API (from its log).
    fn api_base(&self, name: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                .unwrap_or_default();
            if let Some(rest) = log.split("HTTP API on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                return format!("http://{addr}");
            }
            assert!(
                Instant::now() < deadline,
                "{name} never served HTTP:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_run_submitted_over_http_streams_the_events_of_workers_in_other_processes() {
    if !redis_available() || !pg_available() {
        return;
    }
    let _shared = PG_LOCK.read().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::postgres(&[("SCRIPTED_LATENCY_MS", "20")]);
    c.ok(&["init-db"]);
    let token = c
        .ok(&["token", "create", "--scope", "write", "--name", "e2e"])
        .trim()
        .to_string();
    c.spawn("serve", &["serve"]);
    let base = c.api_base("serve");
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let resp = http
        .post(format!("{base}/runs"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"goal": GOAL}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
    let id = resp.json::<serde_json::Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The workers start after the stream is open: every step it reports is
    // taken by another process.
    let stream = http
        .get(format!("{base}/runs/{id}/events/stream"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(stream.status(), reqwest::StatusCode::OK);
    c.spawn("workers", &["worker"]);
    let body = stream.text().unwrap();
    let mut ids = Vec::new();
    let mut last_data = serde_json::Value::Null;
    for frame in body.split("\n\n") {
        let mut id_field = None;
        for line in frame.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                id_field = Some(v.trim().parse::<i64>().unwrap());
            } else if let Some(v) = line.strip_prefix("data:") {
                last_data = serde_json::from_str(v.trim()).unwrap();
            }
        }
        ids.extend(id_field);
    }
    assert_eq!(
        ids,
        (1..=ids.len() as i64).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert_eq!(last_data["data"]["to"], "COMPLETED", "{last_data}");
    let status: serde_json::Value = http
        .get(format!("{base}/runs/{id}/status"))
        .bearer_auth(&token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(status["status"], "COMPLETED", "{status}");
    assert_nothing_done_twice(&c, &id);
}

/// `channels --follow` in distributed mode: subscribed on Redis before the
/// tech lead posts, it prints the message once (live or from the log,
/// whichever comes first) and ends with the run.
#[test]
fn a_channel_is_followed_live_while_workers_in_other_processes_post() {
    if !redis_available() {
        return;
    }
    let mut c = Cluster::new(&[("SCRIPTED_LATENCY_MS", "200")]);
    c.use_fixture("tasks:\n  architecture:\n    - text: |\n        <message channel=\"team\">\n        API contract is final.\n        </message>\n        <artifact name=\"architecture\" type=\"architecture\">\n        # Architecture\n        </artifact>\n");
    c.spawn("serve", &["serve"]);
    c.spawn("worker", &["worker"]);
    let id = c.submit();
    let follower = c
        .cmd(&["channels", &id, "--channel", "team", "--follow", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.wait_until(
        "the run to complete",
        Duration::from_secs(60),
        completed,
        &id,
    );
    let start = Instant::now();
    let out = follower.wait_with_output().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the follower ends with the run"
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let messages: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(messages.len(), 1, "printed once: {text}");
    eprintln!("followed: {text}");
    assert_eq!(messages[0]["task_id"], "architecture");
    assert!(
        messages[0]["text"]
            .as_str()
            .unwrap()
            .contains("API contract is final"),
        "{text}"
    );
}
