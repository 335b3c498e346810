//! The HTTP API of the orchestrator (axum router, DTOs, OpenAPI document,
//! server-sent events, metrics, dashboard assets).
//!
//! Not built yet: it is the next milestone after distributed mode. It will
//! depend on `orch-core` and `orch-engine` only, never on a store or broker
//! implementation.
