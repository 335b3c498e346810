//! The LLM call journal as a provider: a retried attempt's identical request
//! is answered from the journal, without calling the provider again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use orch_core::Role;
use orch_engine::{JournalingProvider, SystemClock};
use orch_llm::{
    CallMeta, Message, Provider, Request, Response, StopReason, TokenUsage, request_hash,
};
use orch_store::conformance;

/// Answers every call with a fresh text (or always with `answer`, if set)
/// and counts the calls.
#[derive(Debug, Default)]
struct Counting {
    calls: AtomicU32,
    answer: Option<Response>,
}

#[async_trait]
impl Provider for Counting {
    fn name(&self) -> &str {
        "counting"
    }
    fn is_scripted(&self) -> bool {
        false
    }
    fn default_model(&self) -> &str {
        "counting-1"
    }
    async fn complete(&self, _request: &Request) -> orch_llm::Result<Response> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(answer) = &self.answer {
            return Ok(answer.clone());
        }
        Ok(Response {
            text: format!("answer {n}"),
            tool_calls: vec![],
            usage: TokenUsage {
                input_tokens: 5,
                output_tokens: 7,
                ..Default::default()
            },
            stop_reason: StopReason::EndTurn,
            model: "counting-1".into(),
        })
    }
}

fn request(run_id: &orch_core::RunId, attempt: u32, prompt: &str) -> Request {
    Request {
        model: "counting-1".into(),
        system: "You are a test.".into(),
        messages: vec![Message::user(prompt)],
        max_tokens: 100,
        temperature: None,
        tools: vec![],
        meta: CallMeta {
            run_id: run_id.clone(),
            task_id: "requirements".into(),
            role: Role::BusinessAnalyst,
            attempt,
            round: 0,
            step: 0,
            expected: vec![],
            gate: None,
        },
    }
}

/// An in-memory store holding one run, and the run's id.
async fn store_with_a_run() -> (Arc<dyn orch_store::Store>, orch_core::RunId) {
    let store = orch_store::connect("sqlite::memory:").await.unwrap();
    let (state, events) = conformance::new_run(conformance::T0);
    store
        .create_run(&state, &events, conformance::T0)
        .await
        .unwrap();
    (store, state.run.id)
}

#[tokio::test]
async fn a_retried_attempt_replays_the_journaled_response() {
    let (store, run) = store_with_a_run().await;
    let inner = Arc::new(Counting::default());
    let provider = JournalingProvider::new(inner.clone(), store.clone(), Arc::new(SystemClock));

    let first = provider
        .complete(&request(&run, 1, "write the requirements"))
        .await
        .unwrap();
    let again = provider
        .complete(&request(&run, 2, "write the requirements"))
        .await
        .unwrap();
    assert_eq!(
        inner.calls.load(Ordering::SeqCst),
        1,
        "attempt 2 was replayed"
    );
    assert_eq!(again, first);

    let other = provider
        .complete(&request(&run, 2, "something else"))
        .await
        .unwrap();
    assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
    assert_ne!(other, first);

    // Journal writes overlap with the caller's work; the worker flushes
    // them before it commits an attempt's outcome.
    provider.flush().await;
    let calls = store.list_llm_calls(&run).await.unwrap();
    assert_eq!(calls.len(), 2, "replayed calls are not journaled again");
    assert_eq!(
        calls[0].request_hash,
        request_hash(&request(&run, 1, "write the requirements"))
    );
    assert_eq!(
        (calls[0].attempt, calls[0].provider.as_str()),
        (1, "counting")
    );
    assert_eq!((calls[0].input_tokens, calls[0].output_tokens), (5, 7));

    // With replay off (a retry after unusable answers), the provider is called.
    let fresh = JournalingProvider::new(inner.clone(), store.clone(), Arc::new(SystemClock))
        .replay(false)
        .complete(&request(&run, 3, "write the requirements"))
        .await
        .unwrap();
    assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
    assert_ne!(fresh, first);
}

#[tokio::test]
async fn nul_characters_in_an_answer_are_replaced_before_anything_stores_them() {
    let (store, run) = store_with_a_run().await;
    // NUL characters in the text and in a tool call's input.
    let nul = Counting {
        answer: Some(Response {
            text: "before\0after".into(),
            tool_calls: vec![orch_llm::ToolCall {
                id: "t1".into(),
                name: "write_artifact".into(),
                input: serde_json::json!({"name": "requirements", "content": "x\0y"}),
            }],
            usage: TokenUsage::default(),
            stop_reason: StopReason::EndTurn,
            model: "counting-1".into(),
        }),
        ..Counting::default()
    };
    let provider = JournalingProvider::new(Arc::new(nul), store.clone(), Arc::new(SystemClock));
    let answer = provider
        .complete(&request(&run, 1, "write the requirements"))
        .await
        .unwrap();
    assert_eq!(answer.text, "before\u{FFFD}after");
    assert_eq!(answer.tool_calls[0].input["content"], "x\u{FFFD}y");
    provider.flush().await;
    let calls = store.list_llm_calls(&run).await.unwrap();
    assert_eq!(calls.len(), 1);
    assert!(
        !calls[0].response.contains("\\u0000") && !calls[0].response.contains('\0'),
        "{}",
        calls[0].response
    );
    let journaled: Response = serde_json::from_str(&calls[0].response).unwrap();
    assert_eq!(journaled, answer);
}

/// A gated provider (a pipelined attempt, run before it is known to be
/// kept) journals nothing until told: told "dropped", its records stay held
/// for the worker to take and drop, and the journal's one record for that
/// attempt and step is left to the attempt that commits; told "kept", they
/// are written as without a gate (here: after the buffering window).
#[tokio::test(start_paused = true)]
async fn a_gated_attempt_journals_only_once_it_is_kept() {
    use std::time::Duration;
    let (store, run) = store_with_a_run().await;
    let inner = Arc::new(Counting::default());
    let window = Duration::from_millis(250);
    let gated = |gate| {
        JournalingProvider::new(inner.clone(), store.clone(), Arc::new(SystemClock))
            .buffered(window)
            .gated(Some(gate))
    };

    let (dropped_tx, dropped_rx) = tokio::sync::watch::channel(None);
    let dropped = gated(dropped_rx);
    dropped
        .complete(&request(&run, 1, "on assumed inputs"))
        .await
        .unwrap();
    tokio::time::sleep(window * 4).await;
    assert!(
        store.list_llm_calls(&run).await.unwrap().is_empty(),
        "held while not known"
    );
    dropped_tx.send(Some(false)).unwrap();
    tokio::time::sleep(window * 4).await;
    assert!(
        store.list_llm_calls(&run).await.unwrap().is_empty(),
        "never written once dropped"
    );
    let held = dropped.take_buffered().await;
    assert_eq!(held.len(), 1, "held for the worker to drop");

    let (kept_tx, kept_rx) = tokio::sync::watch::channel(None);
    let kept = gated(kept_rx);
    kept.complete(&request(&run, 1, "on the inputs read"))
        .await
        .unwrap();
    kept_tx.send(Some(true)).unwrap();
    tokio::time::sleep(window * 4).await;
    let calls = store.list_llm_calls(&run).await.unwrap();
    assert_eq!(calls.len(), 1, "written once kept");
    assert_eq!(
        calls[0].request_hash,
        request_hash(&request(&run, 1, "on the inputs read")),
        "the kept attempt's call is the journal's record of attempt 1, step 0"
    );
    assert!(kept.take_buffered().await.is_empty());
}
