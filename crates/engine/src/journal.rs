//! The LLM call journal as a provider: [`JournalingProvider`] wraps the real
//! provider for a task attempt, answers a request the task already paid for
//! (in any attempt, by the same provider) from the store's journal, and
//! journals every new call (DESIGN.md, "Execution is at-least-once").
//!
//! Replaying is right when an attempt failed for a reason other than its
//! answers (a crash, a lost lease, a timeout, a transient error); when it
//! failed because the answers were unusable, replaying them would fail again,
//! so the worker turns replay off for that retry ([`JournalingProvider::replay`])
//! and the new answers are journaled as usual.
//!
//! A worker may buffer the records of fast calls
//! ([`JournalingProvider::buffered`]) to commit them with the attempt's
//! outcome, one write less per call: a record waits at most the buffer window,
//! then is written on its own, and a call that itself took longer than the
//! window is written at once, so an expensive answer is never held where a
//! dying worker would lose it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orch_llm::{Provider, Request, Response};
use orch_store::{LlmCallRecord, Store};

use crate::Clock;

/// What the journal keeps of a request: everything but the prompt (`system`
/// and `messages`), which the attempt's `llm_request` event already holds —
/// writing it twice doubled the bytes each completion commits. The journal
/// finds a call by `request_hash`, which covers the prompt.
#[derive(serde::Serialize)]
struct JournaledRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    /// Names of the tools offered.
    tools: Vec<&'a str>,
    meta: &'a orch_llm::CallMeta,
    /// Where the prompt is.
    prompt: &'static str,
}

impl<'a> JournaledRequest<'a> {
    fn of(request: &'a Request) -> Self {
        JournaledRequest {
            model: &request.model,
            max_tokens: request.max_tokens,
            temperature: request.temperature,
            tools: request.tools.iter().map(|t| t.name.as_str()).collect(),
            meta: &request.meta,
            prompt: "in the attempt's llm_request event (system, messages)",
        }
    }
}

/// A provider that replays journaled responses and journals new calls.
pub struct JournalingProvider {
    inner: Arc<dyn Provider>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    replay: bool,
    /// Journal writes still in flight: they overlap with parsing the answer,
    /// and [`JournalingProvider::flush`] awaits them before the attempt's
    /// outcome is committed.
    pending: tokio::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// How long a fast call's record may wait to commit with the outcome;
    /// `None`: every record is written at once.
    window: Option<Duration>,
    /// Records held for the outcome ([`JournalingProvider::take_buffered`]).
    /// Held across the flusher's write, so the outcome never takes records
    /// that are being written on their own.
    buffered: Arc<tokio::sync::Mutex<Vec<LlmCallRecord>>>,
    /// Whether the attempt's calls are to be journaled at all, once known
    /// ([`JournalingProvider::gated`]); `None` for an attempt known to be kept.
    gate: Option<tokio::sync::watch::Receiver<Option<bool>>>,
}

impl std::fmt::Debug for JournalingProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalingProvider")
            .field("inner", &self.inner.name())
            .field("store", &self.store.backend())
            .field("replay", &self.replay)
            .finish_non_exhaustive()
    }
}

impl JournalingProvider {
    /// Wrap `inner`, journaling in `store` with times from `clock`.
    pub fn new(inner: Arc<dyn Provider>, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        JournalingProvider {
            inner,
            store,
            clock,
            replay: true,
            pending: tokio::sync::Mutex::new(Vec::new()),
            window: None,
            buffered: Arc::new(tokio::sync::Mutex::new(Vec::new())),
            gate: None,
        }
    }

    /// Journal nothing on its own until `gate` says whether the attempt is
    /// kept: `Some(true)`, as without a gate; `Some(false)` (or the sender
    /// gone), records stay held for [`JournalingProvider::take_buffered`],
    /// to be dropped. For an attempt run before it is known to be this
    /// worker's to run on these inputs (a pipelined hand-off): the journal
    /// keeps one record per attempt and step, that of the attempt that
    /// commits, which is what a replay must find.
    pub fn gated(mut self, gate: Option<tokio::sync::watch::Receiver<Option<bool>>>) -> Self {
        self.gate = gate;
        self
    }

    /// Hold the records of calls faster than `window` for up to `window`, to
    /// be committed with the attempt's outcome ([`JournalingProvider::take_buffered`]);
    /// what is still held after `window` is written on its own.
    pub fn buffered(mut self, window: Duration) -> Self {
        self.window = Some(window);
        self
    }

    /// The records held for the outcome (and no longer held). The caller
    /// commits them with the outcome, or on their own if it cannot.
    pub async fn take_buffered(&self) -> Vec<LlmCallRecord> {
        std::mem::take(&mut *self.buffered.lock().await)
    }

    /// Wait for every journal write of this provider to finish.
    pub async fn flush(&self) {
        let handles = std::mem::take(&mut *self.pending.lock().await);
        for h in handles {
            let _ = h.await;
        }
    }

    /// Whether journaled responses are replayed (the default) or only new calls journaled.
    pub fn replay(mut self, replay: bool) -> Self {
        self.replay = replay;
        self
    }

    /// The journaled response to `request` by this provider, if any.
    async fn journaled(&self, request: &Request, hash: &str) -> Option<Response> {
        let meta = &request.meta;
        // Records still held are the most recent.
        let held = self
            .buffered
            .lock()
            .await
            .iter()
            .rev()
            .find(|c| {
                c.request_hash == hash
                    && c.task_id == meta.task_id
                    && c.run_id == meta.run_id
                    && c.provider == self.inner.name()
            })
            .cloned();
        let found = match held {
            Some(call) => Ok(Some(call)),
            None => {
                self.store
                    .find_llm_call(&meta.run_id, &meta.task_id, hash)
                    .await
            }
        };
        let call = match found {
            Ok(Some(call)) if call.provider == self.inner.name() => call,
            Ok(_) => return None,
            Err(e) => {
                tracing::warn!(run = %meta.run_id, task = %meta.task_id, error = %e, "could not read the LLM call journal; calling the provider");
                return None;
            }
        };
        match serde_json::from_str::<Response>(&call.response) {
            Ok(response) => {
                tracing::debug!(
                    run = %meta.run_id,
                    task = %meta.task_id,
                    attempt = meta.attempt,
                    step = meta.step,
                    journaled_attempt = call.attempt,
                    journal = "replayed",
                    "LLM call answered from the journal"
                );
                Some(response)
            }
            Err(e) => {
                tracing::warn!(run = %meta.run_id, task = %meta.task_id, error = %e, "unreadable journaled LLM response; calling the provider");
                None
            }
        }
    }
}

#[async_trait]
impl Provider for JournalingProvider {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn is_scripted(&self) -> bool {
        self.inner.is_scripted()
    }

    fn default_model(&self) -> &str {
        self.inner.default_model()
    }

    async fn complete(&self, request: &Request) -> orch_llm::Result<Response> {
        let hash = orch_llm::request_hash(request);
        // A task's first attempt has nothing of its own in the journal yet.
        if self.replay
            && request.meta.attempt > 1
            && let Some(response) = {
                self.flush().await;
                self.journaled(request, &hash).await
            }
        {
            return Ok(response);
        }
        let started = Instant::now();
        let mut response = self.inner.complete(request).await?;
        let scrubbed = response.scrub_nul();
        if scrubbed > 0 {
            tracing::warn!(run = %request.meta.run_id, task = %request.meta.task_id, characters = scrubbed, "the model's answer contained NUL characters; replaced with U+FFFD (a database cannot store them)");
        }
        let latency_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let meta = &request.meta;
        let record = match (
            serde_json::to_string(&JournaledRequest::of(request)),
            serde_json::to_string(&response),
        ) {
            (Ok(req), Ok(resp)) => LlmCallRecord {
                run_id: meta.run_id.clone(),
                task_id: meta.task_id.clone(),
                attempt: meta.attempt,
                step: meta.step,
                request_hash: hash,
                provider: self.inner.name().to_string(),
                model: response.model.clone(),
                request: req,
                response: resp,
                input_tokens: response.usage.input_tokens,
                output_tokens: response.usage.output_tokens,
                cache_read_tokens: response.usage.cache_read_tokens,
                cache_write_tokens: response.usage.cache_write_tokens,
                latency_ms,
                cost_usd: orch_llm::cost_usd(&response.model, &response.usage),
                created_at: self.clock.now_ms(),
            },
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(run = %meta.run_id, task = %meta.task_id, error = %e, "could not encode an LLM call for the journal");
                return Ok(response);
            }
        };
        // Held: a fast call's record, to commit with the outcome; any record
        // of a gated attempt not yet known to be kept.
        let gated = self
            .gate
            .as_ref()
            .is_some_and(|g| *g.borrow() != Some(true));
        if gated || self.window.is_some_and(|w| started.elapsed() < w) {
            let mut held = self.buffered.lock().await;
            let first = held.is_empty();
            held.push(record);
            drop(held);
            if first {
                let (store, held) = (self.store.clone(), self.buffered.clone());
                let (window, gate) = (self.window, self.gate.clone());
                tokio::spawn(async move {
                    if let Some(mut gate) = gate {
                        let kept = gate.wait_for(Option::is_some).await.ok().and_then(|v| *v);
                        if kept != Some(true) {
                            return; // held, to be taken and dropped
                        }
                    }
                    if let Some(window) = window {
                        tokio::time::sleep(window).await;
                    }
                    let mut held = held.lock().await;
                    for record in std::mem::take(&mut *held) {
                        if let Err(e) = store.record_llm_call(&record).await {
                            tracing::warn!(run = %record.run_id, task = %record.task_id, error = %e, "could not journal an LLM call");
                        }
                    }
                });
            }
            return Ok(response);
        }
        let store = self.store.clone();
        let write = tokio::spawn(async move {
            if let Err(e) = store.record_llm_call(&record).await {
                tracing::warn!(run = %record.run_id, task = %record.task_id, error = %e, "could not journal an LLM call");
            }
        });
        self.pending.lock().await.push(write);
        Ok(response)
    }
}
