//! `GET /runs/{id}/events/stream`: a run's events as server-sent events.
//!
//! Each event is sent as `id: <seq>`, `event: <kind>`, `data: <event JSON>`.
//! The stream starts after the `Last-Event-ID` header (a reconnecting
//! browser sends it) or else `?after=` (default 0: from the first event);
//! events are read from the store in `seq` order, so there is no gap and no
//! duplicate. When it has sent everything, the stream waits for this
//! process's engine to save a step ([`Engine::changes`]) or for the poll
//! interval (steps may be taken by other processes), then reads again.
//!
//! End rule: the run's status is read *before* each read of the events; when
//! that status was terminal (COMPLETED, FAILED, CANCELLED) and the read
//! returned nothing new, every event has been sent and the stream ends. A run
//! in NEEDS_INPUT keeps its stream open. Keep-alive comments are sent while idle.
//!
//! [`Engine::changes`]: orch_engine::Engine::changes

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use orch_core::{Event, RunId};
use orch_engine::Engine;
use orch_engine::store::EventQuery;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::{Auth, Read};
use crate::routes::{ApiPath, ApiQuery, parse_run_id};
use crate::{ApiError, AppState};

/// How often an idle stream re-reads the store (for steps of other processes).
pub const POLL_INTERVAL: Duration = Duration::from_millis(300);
/// Events read from the store at a time.
const BATCH: u32 = 500;

/// Query of the stream.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Start after this `seq` (ignored when `Last-Event-ID` is sent).
    pub after: Option<i64>,
}

/// One server-sent event of the stream, as its fields.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SseFrame {
    /// The event's `seq` (resume after it with `Last-Event-ID`).
    #[schema(example = "17")]
    pub id: String,
    /// The event's kind, e.g. `task_succeeded`.
    #[schema(example = "task_succeeded")]
    pub event: String,
    /// The event as JSON (an `EventDto`).
    pub data: String,
}

/// A run's events, live, as server-sent events.
#[utoipa::path(
    get, path = "/runs/{id}/events/stream", tag = "events",
    params(
        ("id" = String, Path, description = "The run's full id"),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this `seq` (sent by reconnecting clients)"),
        StreamQuery,
    ),
    responses(
        (status = 200, description = "`id:` is the event's seq, `event:` its kind, `data:` the event as JSON (EventDto). Ends once the run is finished and every event was sent.", body = SseFrame, content_type = "text/event-stream"),
        (status = 400, description = "Not a run id; bad Last-Event-ID or after", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]))
)]
pub async fn stream(
    _auth: Auth<Read>,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<StreamQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let id = parse_run_id(&id)?;
    let after = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                ApiError::BadRequest(
                    "Last-Event-ID must be an event seq (a number 0 or more)".into(),
                )
            })?,
        None => q.after.unwrap_or(0),
    };
    if after < 0 {
        return Err(ApiError::BadRequest("after must be 0 or more".into()));
    }
    // 404 before the stream starts.
    state.engine.run(&id).await?;
    Ok(Sse::new(events(state.engine.clone(), id, after)).keep_alive(KeepAlive::default()))
}

struct Cursor {
    engine: Engine,
    run: RunId,
    after: i64,
    buffer: VecDeque<Event>,
    changes: tokio::sync::watch::Receiver<orch_engine::Steps>,
    /// Whether the last read found nothing new (wait before the next one).
    idle: bool,
}

/// The stream of a run's events after `after`; see the module docs for when it ends.
pub fn events(
    engine: Engine,
    run: RunId,
    after: i64,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let changes = engine.changes();
    let cursor = Cursor {
        engine,
        run,
        after,
        buffer: VecDeque::new(),
        changes,
        idle: false,
    };
    futures_util::stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some(e) = c.buffer.pop_front() {
                let item = to_sse(&e);
                return Some((Ok(item), c));
            }
            if c.idle {
                let _ = tokio::time::timeout(POLL_INTERVAL, c.changes.changed()).await;
            }
            let store = &c.engine.deps().store;
            // Status first: events committed before it are in the read below.
            let terminal = match store.get_run(&c.run).await {
                Ok(r) => r.status.is_terminal(),
                Err(e) => {
                    tracing::warn!(run = %c.run, error = %e, "event stream: cannot read the run; retrying");
                    c.idle = true;
                    continue;
                }
            };
            let read = store
                .list_events(
                    &c.run,
                    EventQuery {
                        after_seq: c.after,
                        limit: BATCH,
                        kind: None,
                    },
                )
                .await;
            match read {
                Ok(events) if events.is_empty() => {
                    if terminal {
                        return None;
                    }
                    c.idle = true;
                }
                Ok(events) => {
                    c.idle = false;
                    if let Some(last) = events.last() {
                        c.after = last.seq;
                    }
                    c.buffer.extend(events);
                }
                Err(e) => {
                    tracing::warn!(run = %c.run, error = %e, "event stream: cannot read events; retrying");
                    c.idle = true;
                }
            }
        }
    })
}

fn to_sse(e: &Event) -> SseEvent {
    let data =
        serde_json::to_string(&crate::dto::EventDto::from(e)).unwrap_or_else(|_| "{}".to_string());
    SseEvent::default()
        .id(e.seq.to_string())
        .event(e.kind.as_str())
        .data(data)
}
