//! The HTTP API of the orchestrator: the axum router [`app`], its DTOs, the
//! one error type rendered as RFC 9457 problem details ([`ApiError`]), bearer
//! token auth with scopes ([`auth`]), the OpenAPI 3.1 document with Swagger
//! UI and ReDoc served from the binary, server-sent events, and Prometheus
//! metrics ([`metrics`]).
//!
//! Parts: `error` (problem+json), `auth` (tokens: generate, hash, verify in
//! constant time; scope extractors), `metrics` (HTTP middleware and the
//! `/metrics` page, store aggregates read at scrape time), `routes` (one
//! handler per endpoint), `docs` (OpenAPI document, `/docs`, `/redoc`), `sse`
//! (the live event stream).
//!
//! This crate depends on `orch-core` and `orch-engine` only (the store and
//! broker traits through the engine's re-exports); it never names SQLite,
//! PostgreSQL, Redis or an LLM client.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use orch_core::RunSettings;
use orch_engine::Engine;
use tower_http::catch_panic::CatchPanicLayer;

pub mod auth;
pub mod docs;
pub mod dto;
pub mod error;
pub mod metrics;
pub mod routes;
pub mod sse;

pub use error::ApiError;
pub use routes::ROUTES;

/// Whether requests must carry a bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Every route but `/health`, the docs and (if configured) `/metrics`
    /// needs a token with the route's scope.
    Required,
    /// No checks at all (`serve --insecure-no-auth`).
    Disabled,
}

/// How the API behaves.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub auth: AuthMode,
    /// `/metrics` without a token (for a Prometheus that cannot send one).
    pub metrics_public: bool,
    /// Largest request body accepted, in bytes (larger: 413).
    pub body_limit: usize,
    /// Settings of runs created over the API (a request's budget overrides
    /// the budget fields).
    pub run_settings: RunSettings,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            auth: AuthMode::Required,
            metrics_public: false,
            body_limit: 1024 * 1024,
            run_settings: RunSettings::default(),
        }
    }
}

/// What every handler sees.
#[derive(Debug, Clone)]
pub struct AppState {
    pub engine: Engine,
    pub config: Arc<ApiConfig>,
    pub auth: Arc<auth::Authenticator>,
    pub metrics: Arc<metrics::Metrics>,
}

impl AppState {
    pub fn new(engine: Engine, config: ApiConfig) -> Self {
        let auth = Arc::new(auth::Authenticator::new(
            engine.deps().store.clone(),
            engine.deps().clock.clone(),
            config.auth,
        ));
        AppState {
            engine,
            config: Arc::new(config),
            auth,
            metrics: Arc::new(metrics::Metrics::new()),
        }
    }
}

/// The API's router: every route of [`ROUTES`] and the docs pages, with
/// [`finish`]'s layers: problem+json for unknown routes, wrong methods,
/// rejected bodies and panics, the body size limit and the HTTP metrics.
pub fn app(state: AppState) -> Router {
    finish(router(), state)
}

/// The routes of [`ROUTES`] and the docs pages (`/openapi.json`, `/docs`,
/// `/redoc`), without layers.
pub fn router() -> Router<AppState> {
    use routes as r;
    Router::new()
        .route("/health", get(r::health))
        .route("/metrics", get(r::metrics))
        .route("/runs", post(r::create_run).get(r::list_runs))
        .route("/runs/{id}", get(r::get_run))
        .route("/runs/{id}/status", get(r::run_status))
        .route("/runs/{id}/tasks", get(r::list_tasks))
        .route("/runs/{id}/events", get(r::list_events))
        .route("/runs/{id}/events/stream", get(sse::stream))
        .route("/runs/{id}/artifacts", get(r::list_artifacts))
        .route("/runs/{id}/artifacts/{name}", get(r::get_artifact))
        .route("/runs/{id}/tick", post(r::tick))
        .route("/runs/{id}/cancel", post(r::cancel))
        .route("/runs/{id}/answer", post(r::answer))
        .route("/runs/{id}/gates/{gate}/waive", post(r::waive_gate))
        .route("/runs/{id}/budget", post(r::raise_budget))
        .route("/dlq", get(r::list_dlq))
        .route("/dlq/{id}/replay", post(r::replay_dlq))
        .route("/workflows", get(r::list_workflows))
        .route("/workflows/{name}", get(r::get_workflow))
        .route("/workflows/validate", post(r::validate_workflow))
        .merge(docs::router())
}

/// Add the layers and fallbacks to `router` (the API's routes, or more in
/// tests): the metrics middleware on every route (it sees the matched route
/// template), 404/405 problems, the body limit (413 problem) and a panic
/// catcher (500 problem; the server keeps serving).
pub fn finish(router: Router<AppState>, state: AppState) -> Router {
    router
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.body_limit))
        .layer(CatchPanicLayer::custom(routes::panic_response))
        .with_state(state)
}
