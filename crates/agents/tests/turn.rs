//! The agent turn loop against the scripted provider and small fake providers.

use std::sync::Mutex;

use async_trait::async_trait;
use orch_agents::{AgentError, AgentOutput, Agents, ChannelPost, CollectingSink, TaskInput};
use orch_core::{Artifact, EventKind, NewArtifact, RunId, RunState, Task, VerdictKind, Workflow};
use orch_llm::{Provider, Request, Response, ScriptedProvider, StopReason, TokenUsage};

const GOAL: &str = "Build a small CRUD app for managing TODO items";

fn new_state() -> RunState {
    let wf = Workflow::builtin("sdlc").unwrap();
    let (state, _) = RunState::new_run(
        RunId::generate(),
        GOAL,
        serde_json::Value::Null,
        &wf,
        Default::default(),
        "scripted",
        0,
    );
    state
}

/// Stored versions of the artifacts written so far (what a store would return).
#[derive(Default)]
struct Artifacts(Vec<Artifact>);

impl Artifacts {
    fn store(&mut self, run: &RunId, task: &Task, new: &[NewArtifact]) {
        for a in new {
            let version = self
                .0
                .iter()
                .filter(|x| x.name == a.name && x.path == a.path)
                .count() as i64
                + 1;
            self.0.push(Artifact {
                run_id: run.clone(),
                name: a.name.clone(),
                version,
                kind: a.kind.clone(),
                path: a.path.clone(),
                task_id: task.id.clone(),
                attempt: task.attempt,
                content: a.content.clone(),
                metadata: a.metadata.clone(),
                created_at: 0,
            });
        }
    }

    /// Latest version per (name, path).
    fn latest(&self) -> Vec<Artifact> {
        let mut out: Vec<Artifact> = Vec::new();
        for a in &self.0 {
            match out
                .iter_mut()
                .find(|x| x.name == a.name && x.path == a.path)
            {
                Some(x) => *x = a.clone(),
                None => out.push(a.clone()),
            }
        }
        out
    }

    fn content(&self, path: &str) -> String {
        self.latest()
            .into_iter()
            .find(|a| a.path.as_deref() == Some(path))
            .unwrap()
            .content
    }
}

async fn run(
    agents: &Agents,
    provider: &dyn Provider,
    state: &RunState,
    task: &Task,
    upstream: &[Artifact],
    sink: &CollectingSink,
) -> Result<AgentOutput, orch_agents::AgentFailure> {
    let input = TaskInput {
        run: &state.run,
        task,
        upstream,
        messages: &[],
        model: "scripted",
    };
    agents.run_task(input, provider, sink).await
}

fn rework_task(base: &Task, id: &str, round: u32, findings: &[String]) -> Task {
    Task {
        id: id.into(),
        round,
        findings: findings.to_vec(),
        attempt: 1,
        ..base.clone()
    }
}

#[tokio::test]
async fn the_builtin_fixture_drives_the_whole_sdlc_with_one_rework_round() {
    let agents = Agents::new().unwrap();
    let provider = ScriptedProvider::builtin();
    let state = new_state();
    let sink = CollectingSink::new();
    let mut store = Artifacts::default();
    let run_id = state.run.id.clone();

    let mut findings = Vec::new();
    for t in &state.tasks {
        let task = Task {
            attempt: 1,
            ..t.clone()
        };
        let out = run(&agents, &provider, &state, &task, &store.latest(), &sink)
            .await
            .unwrap_or_else(|f| panic!("task {} failed: {}", task.id, f.error));
        for exp in &task.expected {
            assert!(
                out.artifacts.iter().any(|a| a.name == exp.name
                    && a.kind == exp.kind
                    && !a.content.trim().is_empty()),
                "task {} did not write {exp:?}: {:?}",
                task.id,
                out.artifacts
                    .iter()
                    .map(|a| (&a.name, &a.kind, &a.path))
                    .collect::<Vec<_>>()
            );
        }
        assert!(
            !out.events.iter().any(|e| e.kind == EventKind::ToolDenied),
            "{}",
            task.id
        );
        assert!(
            out.events
                .iter()
                .all(|e| e.task_id.as_deref() == Some(task.id.as_str()))
        );
        assert_eq!(out.usage.cost_usd, 0.0);
        assert!(out.usage.input_tokens > 0 && out.usage.output_tokens > 0);
        store.store(&run_id, &task, &out.artifacts);
        match task.id.as_str() {
            "requirements" => assert!(
                out.summary.starts_with("wrote requirements ("),
                "{}",
                out.summary
            ),
            "backend" => {
                assert!(
                    out.summary.starts_with("wrote backend_code: 5 files ("),
                    "{}",
                    out.summary
                );
                assert!(
                    out.artifacts
                        .iter()
                        .all(|a| a.path.is_some() && a.kind == "code")
                );
            }
            "database" => assert_eq!(out.artifacts[0].path.as_deref(), Some("db/schema.sql")),
            "code_review" => {
                let v = out.verdict.clone().expect("verdict");
                assert_eq!(v.verdict, VerdictKind::Fail);
                assert_eq!(v.findings.len(), 2, "{:?}", v.findings);
                assert_eq!(out.summary, "verdict FAIL: 2 finding(s)");
                findings = v.findings;
                break; // the gate failed: rework before the security review
            }
            _ => assert!(out.verdict.is_none()),
        }
    }
    assert!(store.content("frontend/app.js").contains(".innerHTML = `"));

    // Rework round 1, as the state machine creates it: fix tasks carrying the findings.
    for (base, id) in [
        ("backend", "fix_backend_code_review_r1"),
        ("frontend", "fix_frontend_code_review_r1"),
    ] {
        let task = rework_task(state.task(base).unwrap(), id, 1, &findings);
        let out = run(&agents, &provider, &state, &task, &store.latest(), &sink)
            .await
            .unwrap();
        store.store(&run_id, &task, &out.artifacts);
        let request = sink
            .events()
            .into_iter()
            .rfind(|e| e.kind == EventKind::LlmRequest && e.task_id.as_deref() == Some(id))
            .unwrap();
        let prompt = request.data["messages"][0]["content"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            prompt.contains("Findings to address (rework round 1)"),
            "{prompt}"
        );
        assert!(prompt.contains(&findings[0]) && prompt.contains(&findings[1]));
    }
    assert!(
        store
            .content("backend/models.py")
            .contains("max_length=200")
    );
    assert!(!store.content("frontend/app.js").contains("innerHTML"));

    let review = rework_task(
        state.task("code_review").unwrap(),
        "code_review_r1",
        1,
        &findings,
    );
    let out = run(&agents, &provider, &state, &review, &store.latest(), &sink)
        .await
        .unwrap();
    assert!(out.verdict.as_ref().unwrap().passed(), "{:?}", out.verdict);
    assert_eq!(out.summary, "verdict PASS: 0 finding(s)");
    store.store(&run_id, &review, &out.artifacts);

    let security = Task {
        attempt: 1,
        ..state.task("security_review").unwrap().clone()
    };
    let out = run(
        &agents,
        &provider,
        &state,
        &security,
        &store.latest(),
        &sink,
    )
    .await
    .unwrap();
    assert!(out.verdict.unwrap().passed());
    assert!(out.artifacts[0].content.contains("Note (not blocking)"));

    // Every LLM event says it is scripted.
    let llm: Vec<_> = sink
        .events()
        .into_iter()
        .filter(|e| matches!(e.kind, EventKind::LlmRequest | EventKind::LlmResponse))
        .collect();
    assert_eq!(
        llm.len(),
        2 * 12,
        "one request and one response per task, no repairs"
    );
    for e in &llm {
        assert!(e.message.contains("scripted"), "{}", e.message);
        assert_eq!(e.data["scripted"], true);
        assert_eq!(e.data["provider"], "scripted");
    }
    let first = &llm[0];
    assert!(
        first
            .message
            .starts_with("LLM request to scripted/scripted"),
        "{}",
        first.message
    );
    assert!(
        first.data["system"]
            .as_str()
            .unwrap()
            .contains("Business Analyst")
    );
    assert!(first.data["estimated_tokens"].as_u64().unwrap() > 100);
    assert!(llm[1].data["latency_ms"].is_u64());
    assert_eq!(llm[1].data["stop_reason"], "end_turn");
}

#[tokio::test]
async fn a_reviewer_answer_without_json_fails_after_exactly_one_repair_turn() {
    let agents = Agents::new().unwrap();
    let provider = ScriptedProvider::from_yaml(
        "bad_reviewer.yaml",
        "roles:\n  code_reviewer:\n    - text: |\n        <artifact name=\"code_review\" type=\"review\">\n        Looks good to me!\n        </artifact>\n",
    )
    .unwrap();
    let state = new_state();
    let task = Task {
        attempt: 1,
        ..state.task("code_review").unwrap().clone()
    };
    let sink = CollectingSink::new();
    let failure = run(&agents, &provider, &state, &task, &[], &sink)
        .await
        .unwrap_err();
    let AgentError::InvalidOutput { problems } = &failure.error else {
        panic!("{:?}", failure.error)
    };
    assert!(
        problems.iter().any(|p| p.contains("verdict")),
        "{problems:?}"
    );
    assert!(failure.error.retryable());
    let requests: Vec<_> = sink
        .events()
        .into_iter()
        .filter(|e| e.kind == EventKind::LlmRequest)
        .collect();
    assert_eq!(requests.len(), 2, "the first call and one repair turn");
    assert_eq!(requests[0].data["step"], 0);
    assert_eq!(requests[1].data["step"], 1);
    let repair = requests[1].data["messages"].as_array().unwrap();
    assert_eq!(repair.len(), 3);
    assert_eq!(repair[1]["role"], "assistant");
    assert!(
        repair[2]["content"].as_str().unwrap().contains("verdict"),
        "{}",
        repair[2]["content"]
    );
    let rejected: Vec<_> = failure
        .events
        .iter()
        .filter(|e| e.kind == EventKind::ValidationFailed)
        .collect();
    assert_eq!(rejected.len(), 2);
    assert!(failure.usage.input_tokens > 0);
}

#[tokio::test]
async fn provider_errors_keep_their_retry_meaning() {
    let agents = Agents::new().unwrap();
    let provider = ScriptedProvider::from_yaml(
        "errors.yaml",
        "tasks:\n  requirements:\n    - error: { status: 401, message: invalid x-api-key }\n  plan:\n    - error: { status: 529, message: overloaded }\n",
    )
    .unwrap();
    let state = new_state();
    let sink = CollectingSink::new();
    let task = Task {
        attempt: 1,
        ..state.task("requirements").unwrap().clone()
    };
    let failure = run(&agents, &provider, &state, &task, &[], &sink)
        .await
        .unwrap_err();
    assert!(
        matches!(
            failure.error,
            AgentError::Provider(orch_llm::Error::Fatal { .. })
        ),
        "{:?}",
        failure.error
    );
    assert!(!failure.error.retryable());
    assert!(failure.error.to_string().contains("invalid x-api-key"));
    let err = sink
        .events()
        .into_iter()
        .find(|e| e.kind == EventKind::LlmError)
        .unwrap();
    assert!(
        err.message.contains("scripted") && err.message.contains("401"),
        "{}",
        err.message
    );
    assert_eq!(err.data["retryable"], false);
    assert_eq!(err.data["scripted"], true);

    let task = Task {
        attempt: 1,
        ..state.task("plan").unwrap().clone()
    };
    let failure = run(&agents, &provider, &state, &task, &[], &sink)
        .await
        .unwrap_err();
    assert!(failure.error.retryable(), "{}", failure.error);
}

#[tokio::test]
async fn a_reviewer_cannot_write_files() {
    let agents = Agents::new().unwrap();
    let provider = ScriptedProvider::from_yaml(
        "sneaky.yaml",
        r#"roles:
  code_reviewer:
    - text: |
        I fixed it myself:
        <artifact name="backend_code" type="code" path="backend/app.py">
        print("patched by the reviewer")
        </artifact>
        <artifact name="code_review" type="review">
        All good now. {"verdict": "PASS", "findings": []}
        </artifact>
"#,
    )
    .unwrap();
    let state = new_state();
    let task = Task {
        attempt: 1,
        ..state.task("code_review").unwrap().clone()
    };
    let sink = CollectingSink::new();
    let out = run(&agents, &provider, &state, &task, &[], &sink)
        .await
        .unwrap();
    assert_eq!(out.artifacts.len(), 1, "the file write was dropped");
    assert_eq!(out.artifacts[0].name, "code_review");
    let denied: Vec<_> = out
        .events
        .iter()
        .filter(|e| e.kind == EventKind::ToolDenied)
        .collect();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].data["tool"], "write_file");
    assert_eq!(denied[0].data["role"], "code_reviewer");
    assert_eq!(denied[0].data["allowed"], false);
    assert!(
        out.events
            .iter()
            .any(|e| e.kind == EventKind::ToolCall && e.data["tool"] == "write_artifact")
    );
    assert!(out.verdict.unwrap().passed());
}

/// A provider that answers from a list, then repeats the last answer.
#[derive(Debug)]
struct Fake {
    model: &'static str,
    answers: Mutex<Vec<&'static str>>,
}

#[async_trait]
impl Provider for Fake {
    fn name(&self) -> &str {
        "fake"
    }
    fn is_scripted(&self) -> bool {
        false
    }
    fn default_model(&self) -> &str {
        self.model
    }
    async fn complete(&self, _request: &Request) -> orch_llm::Result<Response> {
        let mut answers = self.answers.lock().unwrap();
        let text = if answers.len() > 1 {
            answers.remove(0)
        } else {
            answers[0]
        };
        Ok(Response {
            text: text.into(),
            tool_calls: vec![],
            usage: TokenUsage {
                input_tokens: 1_000_000,
                output_tokens: 100_000,
                ..Default::default()
            },
            stop_reason: StopReason::EndTurn,
            model: self.model.into(),
        })
    }
}

#[tokio::test]
async fn a_repair_turn_can_rescue_an_answer_and_usage_adds_up() {
    let agents = Agents::new().unwrap();
    let provider = Fake {
        model: "claude-sonnet-4-5",
        answers: Mutex::new(vec![
            "<artifact name=\"architecture\" type=\"architecture\">\n# Arch\n",
            "Sorry.\n<artifact name=\"architecture\" type=\"architecture\">\n# Architecture\n\nFastAPI + SQLite.\n</artifact>",
        ]),
    };
    let state = new_state();
    let task = Task {
        attempt: 2,
        ..state.task("architecture").unwrap().clone()
    };
    let sink = CollectingSink::new();
    let input = TaskInput {
        run: &state.run,
        task: &task,
        upstream: &[],
        messages: &[],
        model: "claude-sonnet-4-5",
    };
    let out = agents.run_task(input, &provider, &sink).await.unwrap();
    assert_eq!(
        out.artifacts[0].content,
        "# Architecture\n\nFastAPI + SQLite."
    );
    assert_eq!(
        out.summary,
        "wrote architecture (33 B), after a repair turn"
    );
    let rejected = out
        .events
        .iter()
        .find(|e| e.kind == EventKind::ValidationFailed)
        .unwrap();
    assert!(
        rejected.message.contains("\"architecture\"") && rejected.message.contains("never closed"),
        "{}",
        rejected.message
    );
    assert_eq!(out.usage.input_tokens, 2_000_000);
    assert_eq!(out.usage.output_tokens, 200_000);
    assert!(
        (out.usage.cost_usd - 2.0 * (3.0 + 1.5)).abs() < 1e-9,
        "{}",
        out.usage.cost_usd
    );
    for e in sink.events() {
        assert!(!e.message.contains("scripted"), "{}", e.message);
        assert_eq!(e.data["scripted"], false);
        assert_eq!(e.data["attempt"], 2);
    }
}

#[tokio::test]
async fn untagged_single_document_answers_are_accepted() {
    let agents = Agents::new().unwrap();
    let provider = Fake {
        model: "gpt-4o",
        answers: Mutex::new(vec![
            "{\"verdict\": \"FAIL\", \"findings\": [\"app.py: no tests\"]}",
        ]),
    };
    let state = new_state();
    let task = Task {
        attempt: 1,
        ..state.task("security_review").unwrap().clone()
    };
    let input = TaskInput {
        run: &state.run,
        task: &task,
        upstream: &[],
        messages: &[],
        model: "gpt-4o",
    };
    let out = agents
        .run_task(input, &provider, &CollectingSink::new())
        .await
        .unwrap();
    assert_eq!(out.artifacts[0].name, "security_review");
    assert_eq!(out.verdict.unwrap().findings, vec!["app.py: no tests"]);
}

#[test]
fn prompts_cover_every_role_and_the_task() {
    let agents = Agents::new().unwrap();
    for role in orch_core::Role::ALL {
        let p = agents.system_prompt(role).unwrap();
        assert!(p.contains(role.title()), "{role}");
        assert!(
            p.contains("## Output format") && p.contains("</artifact>"),
            "{role}"
        );
        assert!(!p.contains("{{") && !p.contains("{%"), "{role}");
        let reviewer = matches!(
            role,
            orch_core::Role::CodeReviewer | orch_core::Role::SecurityReviewer
        );
        assert_eq!(p.contains("\"verdict\": \"FAIL\""), reviewer, "{role}");
        if reviewer {
            assert!(p.contains("FAIL sends the findings back to the"), "{role}");
        }
        let writes = matches!(
            role,
            orch_core::Role::BackendEngineer
                | orch_core::Role::FrontendEngineer
                | orch_core::Role::DatabaseEngineer
        );
        assert_eq!(p.contains("path=\""), writes, "{role}");
    }

    let mut state = new_state();
    state.run.context = serde_json::json!({"stack": "python"});
    let task = state.task("backend").unwrap().clone();
    let upstream = vec![Artifact {
        run_id: state.run.id.clone(),
        name: "schema".into(),
        version: 2,
        kind: "schema".into(),
        path: Some("db/schema.sql".into()),
        task_id: "database".into(),
        attempt: 1,
        content: "CREATE TABLE todos (id INTEGER);".into(),
        metadata: serde_json::json!({}),
        created_at: 0,
    }];
    let input = TaskInput {
        run: &state.run,
        task: &task,
        upstream: &upstream,
        messages: &[],
        model: "m",
    };
    let m = agents.task_message(&input).unwrap();
    assert!(m.contains(&format!("Goal: {GOAL}\n")), "{m}");
    assert!(m.contains("\"stack\": \"python\""), "{m}");
    assert!(m.contains(&task.instructions));
    assert!(m.contains("<upstream name=\"schema\" type=\"schema\" path=\"db/schema.sql\" version=\"2\" task=\"database\">\nCREATE TABLE todos (id INTEGER);\n</upstream>"), "{m}");
    assert!(
        m.contains("- `backend_code` (type `code`): one block per file, each with its `path`\n"),
        "{m}"
    );
    assert!(!m.contains("Findings"), "{m}");

    let req = state.task("requirements").unwrap().clone();
    let input = TaskInput {
        run: &state.run,
        task: &req,
        upstream: &[],
        messages: &[],
        model: "m",
    };
    let m = agents.task_message(&input).unwrap();
    assert!(
        m.contains("- `requirements` has at least 200 characters"),
        "{m}"
    );
    assert!(m.contains("None: this task is the first"), "{m}");
}

#[test]
fn run_task_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let agents = Agents::new().unwrap();
    let provider = ScriptedProvider::builtin();
    let state = new_state();
    let sink = CollectingSink::new();
    let input = TaskInput {
        run: &state.run,
        task: &state.tasks[0],
        upstream: &[],
        messages: &[],
        model: "scripted",
    };
    let fut = agents.run_task(input, &provider, &sink);
    assert_send(&fut);
}

#[tokio::test]
async fn the_generic_scripted_answer_satisfies_every_sdlc_task() {
    let agents = Agents::new().unwrap();
    let provider = ScriptedProvider::from_yaml("generic", "roles: {}").unwrap();
    let state = new_state();
    let sink = CollectingSink::new();
    let mut store = Artifacts::default();
    for t in &state.tasks {
        let task = Task {
            attempt: 1,
            ..t.clone()
        };
        let out = run(&agents, &provider, &state, &task, &store.latest(), &sink)
            .await
            .unwrap_or_else(|f| panic!("task {} failed: {}", task.id, f.error));
        assert!(
            !out.summary.contains("repair"),
            "{}: {}",
            task.id,
            out.summary
        );
        assert!(
            out.artifacts.iter().all(|a| a.content.contains(GOAL)),
            "{}",
            task.id
        );
        if task.gate.is_some() {
            assert!(out.verdict.unwrap().passed());
        }
        store.store(&state.run.id, &task, &out.artifacts);
    }
}

/// The user message of the latest LLM request of `task`.
fn prompt_of(sink: &CollectingSink, task: &str) -> String {
    sink.events()
        .into_iter()
        .rfind(|e| e.kind == EventKind::LlmRequest && e.task_id.as_deref() == Some(task))
        .unwrap()
        .data["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

const POSTING_BACKEND: &str = r#"roles:
  backend_engineer:
    - text: |
        Backend done.
        <message channel="team">
        Assumption: titles are unique per user; the API answers 409 on a duplicate.
        </message>
        <artifact name="backend_code" type="code" path="backend/app.py">
        print("app")
        </artifact>
        <message to="frontend_engineer">List endpoint is GET /todos?done=true|false.</message>
"#;

#[tokio::test]
async fn a_posted_message_reaches_the_prompt_of_a_later_task() {
    let agents = Agents::new().unwrap();
    let provider = ScriptedProvider::from_yaml("posting.yaml", POSTING_BACKEND).unwrap();
    let state = new_state();
    let sink = CollectingSink::new();
    let backend = Task {
        attempt: 1,
        ..state.task("backend").unwrap().clone()
    };
    let out = run(&agents, &provider, &state, &backend, &[], &sink)
        .await
        .unwrap();
    assert_eq!(out.artifacts.len(), 1);
    assert_eq!(
        out.messages,
        vec![
            ChannelPost {
                channel: "team".into(),
                from_role: orch_core::Role::BackendEngineer,
                task_id: "backend".into(),
                text: "Assumption: titles are unique per user; the API answers 409 on a duplicate."
                    .into(),
                seq: None,
            },
            ChannelPost {
                channel: "frontend_engineer".into(),
                from_role: orch_core::Role::BackendEngineer,
                task_id: "backend".into(),
                text: "List endpoint is GET /todos?done=true|false.".into(),
                seq: None,
            },
        ]
    );
    assert_eq!(
        out.summary, "wrote backend_code (12 B), posted 2 messages",
        "{}",
        out.summary
    );
    let posts: Vec<_> = out
        .events
        .iter()
        .filter(|e| e.kind == EventKind::ToolCall && e.data["tool"] == "post_message")
        .collect();
    assert_eq!(posts.len(), 2, "every post is audited");
    assert_eq!(posts[0].data["input"]["channel"], "team");
    assert!(
        posts[0].message.contains("posted to team"),
        "{}",
        posts[0].message
    );

    // The engine records them (with sequence numbers) and a later task sees them.
    let inbox: Vec<ChannelPost> = out
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| ChannelPost {
            seq: Some(40 + i as i64),
            ..m.clone()
        })
        .collect();
    let review = Task {
        attempt: 1,
        ..state.task("code_review").unwrap().clone()
    };
    let input = TaskInput {
        run: &state.run,
        task: &review,
        upstream: &[],
        messages: &inbox,
        model: "scripted",
    };
    agents.run_task(input, &provider, &sink).await.unwrap();
    let prompt = prompt_of(&sink, "code_review");
    assert!(prompt.contains("## Team channel messages"), "{prompt}");
    assert!(
        prompt.contains(
            "<channel_message channel=\"team\" from=\"backend_engineer\" task=\"backend\">\nAssumption: titles are unique per user; the API answers 409 on a duplicate.\n</channel_message>"
        ),
        "{prompt}"
    );
    assert!(prompt.contains("channel=\"frontend_engineer\""), "{prompt}");
    assert_eq!(prompt, agents.task_message(&input).unwrap());
    // No messages, no section.
    assert!(!prompt_of(&sink, "backend").contains("Team channel messages"));
    // A long history: the latest 20 are shown.
    let many: Vec<ChannelPost> = (0..25)
        .map(|i| ChannelPost {
            text: format!("note number {i}."),
            seq: Some(i),
            ..inbox[0].clone()
        })
        .collect();
    let m = agents
        .task_message(&TaskInput {
            messages: &many,
            ..input
        })
        .unwrap();
    assert!(
        m.contains("oldest first (5 earlier ones not shown)."),
        "{m}"
    );
    assert!(
        !m.contains("note number 4.")
            && m.contains("note number 5.")
            && m.contains("note number 24.")
    );

    // The system prompt tells specialists how to post; the orchestrator may not.
    for role in orch_core::Role::ALL {
        let p = agents.system_prompt(role).unwrap();
        assert_eq!(
            p.contains("<message channel=\"team\">"),
            role != orch_core::Role::Orchestrator,
            "{role}"
        );
    }
}

#[tokio::test]
async fn bad_or_denied_posts_and_posts_of_rejected_answers_are_not_posted() {
    let state = new_state();
    let task = Task {
        attempt: 1,
        ..state.task("architecture").unwrap().clone()
    };
    // A bad channel name is a problem the repair turn fixes; only the
    // accepted answer's messages are posted.
    let provider = Fake {
        model: "m",
        answers: Mutex::new(vec![
            "<message channel=\"Team Chat\">first</message>\n<artifact name=\"architecture\" type=\"architecture\">\n# A\n</artifact>",
            "<message channel=\"team\">second</message>\n<artifact name=\"architecture\" type=\"architecture\">\n# A\n</artifact>",
        ]),
    };
    let agents = Agents::new().unwrap();
    let sink = CollectingSink::new();
    let input = TaskInput {
        run: &state.run,
        task: &task,
        upstream: &[],
        messages: &[],
        model: "m",
    };
    let out = agents.run_task(input, &provider, &sink).await.unwrap();
    let rejected = out
        .events
        .iter()
        .find(|e| e.kind == EventKind::ValidationFailed)
        .unwrap();
    assert!(
        rejected
            .message
            .contains("message to channel \"Team Chat\" (line 1)")
            && rejected.message.contains("lowercase"),
        "{}",
        rejected.message
    );
    assert_eq!(out.messages.len(), 1);
    assert_eq!(out.messages[0].text, "second");

    // A role whose allowlist lacks post_message: the post is dropped, audited
    // as denied, and the task still succeeds.
    let tools = orch_tools::ToolExecutor::new(
        orch_tools::Registry::builtin(),
        orch_tools::Allowlists::default().deny(orch_core::Role::TechLead, "post_message"),
    );
    let agents = Agents::with_tools(tools).unwrap();
    assert!(
        !agents
            .system_prompt(orch_core::Role::TechLead)
            .unwrap()
            .contains("<message channel=")
    );
    let provider = Fake {
        model: "m",
        answers: Mutex::new(vec![
            "<message channel=\"team\">hello</message>\n<artifact name=\"architecture\" type=\"architecture\">\n# Architecture\n</artifact>",
        ]),
    };
    let out = agents.run_task(input, &provider, &sink).await.unwrap();
    assert!(out.messages.is_empty());
    assert!(
        out.events
            .iter()
            .any(|e| e.kind == EventKind::ToolDenied && e.data["tool"] == "post_message")
    );
    assert_eq!(out.summary, "wrote architecture (14 B)");

    // A failed attempt has no messages to post (AgentFailure carries none),
    // and an answer of messages only is not taken as an untagged document.
    let provider = Fake {
        model: "m",
        answers: Mutex::new(vec!["<message channel=\"team\">only a note</message>"]),
    };
    let failure = agents.run_task(input, &provider, &sink).await.unwrap_err();
    let AgentError::InvalidOutput { problems } = &failure.error else {
        panic!("{:?}", failure.error)
    };
    assert!(
        problems.iter().any(|p| p.contains("architecture")),
        "{problems:?}"
    );
}

#[tokio::test]
async fn prompt_events_leave_out_the_quoted_artifacts_and_read_back_as_sent() {
    use orch_core::elision::{ArtifactKey, expand, has_elided};
    let agents = Agents::new().unwrap();
    // A goal that looks like the marks the renderer uses, and artifacts long
    // and short, one a file.
    let mut state = new_state();
    state.run.goal = "Build it \u{1}quote-0000000000000000-0\u{1} now".into();
    let task = state.task("backend").unwrap().clone();
    let long = |what: &str| format!("# {what}\n\n{}", "All of it, in detail. ".repeat(20));
    let mut upstream = Artifacts::default();
    let writer = state.task("database").unwrap().clone();
    upstream.store(
        &state.run.id,
        &writer,
        &[
            NewArtifact {
                name: "requirements".into(),
                kind: "requirements".into(),
                path: None,
                content: long("Requirements"),
                metadata: serde_json::Value::Null,
            },
            NewArtifact {
                name: "schema".into(),
                kind: "schema".into(),
                path: Some("db/schema.sql".into()),
                content: long("Schema"),
                metadata: serde_json::Value::Null,
            },
            NewArtifact {
                name: "plan".into(),
                kind: "plan".into(),
                path: None,
                content: "Short plan.".into(),
                metadata: serde_json::Value::Null,
            },
        ],
    );
    let upstream = upstream.latest();
    let provider = orch_llm::Recording::new(Fake {
        model: "m",
        answers: Mutex::new(vec![
            "no blocks at all",
            "<artifact name=\"backend_code\" type=\"code\" path=\"backend/app.py\">\nprint(1)\n</artifact>",
        ]),
    });
    let sink = CollectingSink::new();
    run(&agents, &provider, &state, &task, &upstream, &sink)
        .await
        .unwrap();
    let sent = provider.requests();
    let events: Vec<_> = sink
        .events()
        .into_iter()
        .filter(|e| e.kind == EventKind::LlmRequest)
        .collect();
    assert_eq!(
        (sent.len(), events.len()),
        (2, 2),
        "the answer and its repair"
    );
    for (request, event) in sent.iter().zip(events) {
        let stored = event.data["messages"][0]["content"].as_str().unwrap();
        assert!(
            !stored.contains("All of it, in detail."),
            "long quotes are left out of the stored prompt: {stored}"
        );
        assert!(stored.contains("Short plan."), "short ones stay");
        assert!(stored.contains(&state.run.goal), "the goal as given");
        assert!(has_elided(&event.data));
        let mut data = event.data.clone();
        let missing = expand(&mut data, |k| {
            upstream
                .iter()
                .find(|a| ArtifactKey::of(a) == *k)
                .map(|a| a.content.as_str())
        });
        assert_eq!(missing, 0);
        assert_eq!(data["messages"], serde_json::json!(request.messages));
        assert_eq!(data["system"], serde_json::json!(request.system));
        assert!(
            request.messages[0]
                .content
                .contains(&format!("\n{}\n</upstream>", long("Schema")))
        );
    }
    assert_eq!(
        agents
            .task_message(&TaskInput {
                run: &state.run,
                task: &task,
                upstream: &upstream,
                messages: &[],
                model: "m",
            })
            .unwrap(),
        sent[0].messages[0].content
    );
}
