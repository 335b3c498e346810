//! Agent channels end to end, on the real SQLite store and the in-process
//! broker: a message posted by a successful attempt is an event of the run
//! (committed with the outcome), reaches live subscribers, and is shown to
//! later tasks; a failed attempt posts nothing.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use orch_core::{Event, EventKind, Role, RunStatus, Workflow};
use orch_engine::Runtime;
use orch_engine::testing::{TestEngine, fast_settings, generic_provider};
use orch_llm::{Provider, Request, Response, ScriptedProvider, StopReason, TokenUsage};
use orch_store::EventQuery;

const GOAL: &str = "Build a small CRUD app for managing TODO items";
const NOTE: &str = "Assumption: titles are unique; the API answers 409 on a duplicate.";

/// The generic scripted answers, except the backend task: its first attempt
/// posts a message but forgets its artifact (so it fails, after a repair
/// turn), its second posts [`NOTE`] on `team` with the code.
#[derive(Debug)]
struct BackendPosts {
    generic: ScriptedProvider,
}

#[async_trait]
impl Provider for BackendPosts {
    fn name(&self) -> &str {
        "scripted"
    }
    fn is_scripted(&self) -> bool {
        true
    }
    fn default_model(&self) -> &str {
        "scripted"
    }
    async fn complete(&self, request: &Request) -> orch_llm::Result<Response> {
        if request.meta.task_id != "backend" {
            return self.generic.complete(request).await;
        }
        let text = if request.meta.attempt == 1 {
            "<message channel=\"team\">from the failed attempt</message>\nForgot the code.".into()
        } else {
            format!(
                "<message channel=\"team\">\n{NOTE}\n</message>\n\
                 <artifact name=\"backend_code\" type=\"code\" path=\"backend/app.py\">\nprint('ok')\n</artifact>"
            )
        };
        Ok(Response {
            text,
            tool_calls: vec![],
            usage: TokenUsage {
                input_tokens: 10,
                output_tokens: 10,
                ..Default::default()
            },
            stop_reason: StopReason::EndTurn,
            model: "scripted".into(),
        })
    }
}

fn prompt(e: &Event) -> &str {
    e.data["messages"][0]["content"].as_str().unwrap()
}

#[tokio::test]
async fn a_posted_message_is_an_event_reaches_subscribers_and_later_prompts() {
    let h = TestEngine::new(Arc::new(BackendPosts {
        generic: generic_provider(),
    }))
    .await;
    let (engine, store, broker) = (&h.engine, &h.store, &h.broker);
    let wf = Workflow::builtin("sdlc").unwrap();
    let settings = fast_settings();
    let run = engine
        .submit(GOAL, serde_json::Value::Null, &wf, settings)
        .await
        .unwrap();
    // Subscribed before any worker runs.
    let mut team = broker.subscribe_channel(&run, "team").await.unwrap();
    let rt = Runtime::start(engine.clone(), &Role::SPECIALISTS, true);

    let live = tokio::time::timeout(Duration::from_secs(30), team.next())
        .await
        .expect("a message within the run")
        .expect("the subscription is open");
    let done = orch_engine::testing::wait_for_end(engine, &run).await;
    rt.shutdown().await;
    assert_eq!(
        done.status,
        RunStatus::Completed,
        "{:?}",
        done.status_reason
    );

    // Live: the successful attempt's message, and only it.
    assert_eq!(
        (
            live.run_id.clone(),
            live.channel.as_str(),
            live.from_role,
            live.task_id.as_str(),
            live.text.as_str()
        ),
        (run.clone(), "team", Role::BackendEngineer, "backend", NOTE)
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), team.next())
            .await
            .is_err(),
        "the failed attempt posted nothing"
    );

    // Durable: one channel_message event, committed with the outcome.
    let events = store
        .list_events(&run, EventQuery::default())
        .await
        .unwrap();
    let posted: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == EventKind::ChannelMessage)
        .collect();
    assert_eq!(posted.len(), 1, "{posted:?}");
    let m = posted[0];
    assert_eq!(m.task_id.as_deref(), Some("backend"));
    assert_eq!(
        m.data,
        serde_json::json!({"channel": "team", "from_role": "backend_engineer", "text": NOTE})
    );
    assert!(
        m.message
            .starts_with("backend_engineer posted to team: Assumption"),
        "{}",
        m.message
    );
    let succeeded = events
        .iter()
        .find(|e| e.kind == EventKind::TaskSucceeded && e.task_id.as_deref() == Some("backend"))
        .unwrap();
    assert!(m.seq < succeeded.seq);
    let failed = events
        .iter()
        .find(|e| e.kind == EventKind::TaskFailed && e.task_id.as_deref() == Some("backend"))
        .expect("the first backend attempt failed");
    assert!(failed.seq < m.seq);

    // Later tasks (downstream of the backend) see it in their prompt;
    // earlier ones did not.
    let requests = |task: &str| -> Vec<&Event> {
        events
            .iter()
            .filter(|e| e.kind == EventKind::LlmRequest && e.task_id.as_deref() == Some(task))
            .collect()
    };
    for task in ["code_review", "security_review"] {
        let p = prompt(requests(task)[0]);
        assert!(p.contains("## Team channel messages"), "{task}: {p}");
        assert!(
            p.contains(&format!(
                "<channel_message channel=\"team\" from=\"backend_engineer\" task=\"backend\">\n{NOTE}\n</channel_message>"
            )),
            "{task}: {p}"
        );
        assert!(!p.contains("from the failed attempt"), "{task}");
    }
    // Nor does the frontend, which runs beside the backend (not after it):
    // whether the message is in yet would depend on timing.
    for task in ["requirements", "architecture", "backend", "frontend"] {
        for r in requests(task) {
            assert!(!prompt(r).contains("Team channel messages"), "{task}");
        }
    }
}
