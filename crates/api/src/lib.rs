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

use orch_core::RunSettings;
use orch_engine::Engine;

pub mod auth;
pub mod error;
pub mod metrics;

pub use error::ApiError;

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
