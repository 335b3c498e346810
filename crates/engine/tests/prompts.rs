//! Prompt events as stored and as read (orch_core::elision): an `sdlc` run on
//! the real SQLite store, every request the provider received compared with
//! the `llm_request` event read back for it.

use std::sync::Arc;

use orch_core::{EventKind, RunStatus, Workflow};
use orch_engine::testing::{TestEngine, generic_provider};
use orch_llm::Recording;
use orch_store::EventQuery;

fn sha256(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let hex: String = Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

#[tokio::test]
async fn every_prompt_reads_back_as_the_provider_received_it() {
    let provider = Arc::new(Recording::new(generic_provider()));
    let h = TestEngine::new(provider.clone()).await;
    let (id, run) = h
        .run_to_end(
            "Build a small CRUD app for managing TODO items",
            &Workflow::builtin("sdlc").unwrap(),
        )
        .await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.status_reason);

    let requests = provider.requests();
    let events: Vec<_> = h
        .store
        .list_events(&id, EventQuery::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EventKind::LlmRequest)
        .collect();
    assert_eq!(events.len(), requests.len());
    assert!(requests.len() >= 9, "one request per task at least");
    let mut quoting = 0;
    for request in &requests {
        let event = events
            .iter()
            .find(|e| e.task_id.as_deref() == Some(request.meta.task_id.as_str()))
            .expect("an event per request");
        assert_eq!(event.data["system"], serde_json::json!(request.system));
        assert_eq!(event.data["messages"], serde_json::json!(request.messages));
        assert!(event.data.get("elided").is_none() && event.data.get("system_text").is_none());
        if request.messages[0].content.contains("</upstream>") {
            quoting += 1;
        }
    }
    assert!(
        quoting >= 8,
        "every task after the first quotes upstream artifacts"
    );
    // Each role's system prompt is kept once, apart from the events.
    let mut refs: Vec<String> = requests.iter().map(|r| sha256(&r.system)).collect();
    refs.sort();
    refs.dedup();
    let kept = h.store.get_texts(&refs).await.unwrap();
    assert_eq!(kept.len(), refs.len(), "every system prompt kept");
    for (reference, text) in kept {
        assert_eq!(sha256(&text), reference);
    }
}
