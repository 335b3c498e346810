//! Prometheus metrics: HTTP requests by route and status with latency
//! histograms (recorded in process by [`track`]), and the system's state —
//! runs, tasks, durations, queue depths, LLM usage, gates, dead letters —
//! read from the store and broker at scrape time, so a `serve` process
//! reports the work of workers in other processes too.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use orch_engine::Engine;

use crate::{ApiError, AppState};

/// The process's metric registry.
#[derive(Debug, Default)]
pub struct Metrics {}

impl Metrics {
    pub fn new() -> Self {
        Metrics {}
    }

    /// Record one HTTP request (`route` is the matched route template, e.g.
    /// `/runs/{id}`, or `unmatched`).
    pub fn record_http(&self, _method: &str, _route: &str, _status: u16, _elapsed: Duration) {}

    /// The `/metrics` page in Prometheus text format 0.0.4.
    pub async fn render(&self, _engine: &Engine) -> Result<String, ApiError> {
        Err(ApiError::Internal("metrics are not implemented yet".into()))
    }
}

/// Middleware: time every request and record it by method, route template and status.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let response = next.run(req).await;
    state.metrics.record_http(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
