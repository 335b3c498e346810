//! One handler per endpoint, the extractors that turn axum's rejections into
//! problem documents, and [`ROUTES`], the one list of what the API serves.
//!
//! Handlers only translate HTTP to engine calls: runs are created with
//! [`Engine::submit`](orch_engine::Engine::submit), human inputs go through
//! [`Engine::apply_input`](orch_engine::Engine::apply_input), like the CLI.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequest, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use orch_core::machine::Input;
use orch_core::{GateKind, RunId, RunStatus, Workflow};
use orch_engine::store::{EventQuery, RunFilter};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::IntoParams;

use crate::auth::{Admin, Auth, Read, Write};
use crate::dto::*;
use crate::error::Problem;
use crate::{ApiError, AppState};

/// Every API route as `(method, path template)`: the router serves exactly
/// these (besides the docs pages) and the OpenAPI document describes them.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("POST", "/runs"),
    ("GET", "/runs"),
    ("GET", "/runs/{id}"),
    ("GET", "/runs/{id}/status"),
    ("GET", "/runs/{id}/tasks"),
    ("GET", "/runs/{id}/events"),
    ("GET", "/runs/{id}/events/stream"),
    ("GET", "/runs/{id}/artifacts"),
    ("GET", "/runs/{id}/artifacts/{name}"),
    ("POST", "/runs/{id}/tick"),
    ("POST", "/runs/{id}/cancel"),
    ("POST", "/runs/{id}/answer"),
    ("POST", "/runs/{id}/gates/{gate}/waive"),
    ("POST", "/runs/{id}/budget"),
    ("GET", "/dlq"),
    ("POST", "/dlq/{id}/replay"),
    ("GET", "/workflows"),
    ("GET", "/workflows/{name}"),
    ("POST", "/workflows/validate"),
];

/// Default and largest page of `GET /runs`.
pub const RUNS_DEFAULT_LIMIT: u32 = 50;
pub const RUNS_MAX_LIMIT: u32 = 500;
/// Default and largest page of `GET /runs/{id}/events`.
pub const EVENTS_DEFAULT_LIMIT: u32 = 100;
pub const EVENTS_MAX_LIMIT: u32 = 1000;

// ------------------------------------------------------------- rejections

fn from_rejection(status: StatusCode, text: String) -> ApiError {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(format!(
            "the request body is larger than this server accepts ({text}); send less"
        )),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(format!(
            "{text}; send the body as JSON with `Content-Type: application/json`"
        )),
        StatusCode::UNPROCESSABLE_ENTITY => {
            ApiError::Unprocessable(format!("{text}; see the request schema in /openapi.json"))
        }
        s if s.is_server_error() => ApiError::Internal(text),
        _ => ApiError::BadRequest(text),
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        from_rejection(r.status(), r.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        from_rejection(r.status(), r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(format!("bad query parameter: {}", r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest(format!("bad path parameter: {}", r.body_text()))
    }
}

/// `Json` whose rejections are problem documents (400 syntax, 415 content
/// type, 422 shape, 413 size).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(v) = <Json<T> as FromRequest<S>>::from_request(req, state).await?;
        Ok(ApiJson(v))
    }
}

/// An optional JSON body: none when the request has no body and no content type.
impl<T: DeserializeOwned, S: Send + Sync> OptionalFromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        let empty = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v == "0");
        if empty && !req.headers().contains_key(header::CONTENT_TYPE) {
            return Ok(None);
        }
        let v = <Json<T> as OptionalFromRequest<S>>::from_request(req, state).await?;
        Ok(v.map(|Json(v)| ApiJson(v)))
    }
}

/// `Query` whose rejections are 400 problem documents.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(v) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(v))
    }
}

/// `Path` whose rejections are 400 problem documents.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(v) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(ApiPath(v))
    }
}

/// A run id from the path: malformed ids are 400, unknown ones 404 (from the store).
pub fn parse_run_id(raw: &str) -> Result<RunId, ApiError> {
    raw.parse::<RunId>().map_err(|_| {
        ApiError::BadRequest(format!(
            "{raw:?} is not a run id (letters, digits and `-`, at most 64); list runs with GET /runs"
        ))
    })
}

fn store_err(e: orch_engine::store::Error) -> ApiError {
    e.into()
}

// ----------------------------------------------------------------- health

/// Liveness and readiness: reads the store once. No token needed.
#[utoipa::path(
    get, path = "/health", tag = "system",
    responses(
        (status = 200, description = "The store and the queues can be read", body = Health),
        (status = 503, description = "The store or the queues cannot be read", body = Problem, content_type = "application/problem+json"),
    ),
    security(())
)]
pub async fn health(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    let deps = state.engine.deps();
    deps.store
        .list_runs(&RunFilter {
            status: None,
            limit: 1,
            offset: 0,
        })
        .await
        .map_err(|e| ApiError::Unavailable(format!("the store cannot be read: {e}")))?;
    // The queues too: with Redis down nothing is dispatched, whatever the store says.
    match tokio::time::timeout(
        std::time::Duration::from_secs(2),
        deps.broker.depth(orch_core::Role::BusinessAnalyst),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return Err(ApiError::Unavailable(format!(
                "the {} queues cannot be read: {e}",
                deps.broker.backend()
            )));
        }
        Err(_) => {
            return Err(ApiError::Unavailable(format!(
                "the {} queues did not answer within 2 s",
                deps.broker.backend()
            )));
        }
    }
    Ok(Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        store: deps.store.backend().into(),
        broker: deps.broker.backend().into(),
    }))
}

/// Prometheus metrics (text format 0.0.4).
#[utoipa::path(
    get, path = "/metrics", tag = "system",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain; version=0.0.4"),
    ),
    security(("bearer" = ["read"]), ())
)]
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !state.config.metrics_public {
        state
            .auth
            .authenticate(&headers)
            .await?
            .require(crate::auth::Scope::Read)?;
    }
    let text = state.metrics.render(&state.engine).await?;
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(resp)
}

// ------------------------------------------------------------------- runs

/// Load the named built-in workflow or parse the inline YAML.
fn choose_workflow(req: &CreateRunRequest) -> Result<Workflow, ApiError> {
    match (&req.workflow, &req.workflow_yaml) {
        (Some(_), Some(_)) => Err(ApiError::BadRequest(
            "give either `workflow` (a built-in name) or `workflow_yaml` (a definition), not both"
                .into(),
        )),
        (_, Some(yaml)) => parse_workflow(yaml),
        (name, None) => {
            let name = name.as_deref().unwrap_or("sdlc");
            Workflow::builtin(name).ok_or_else(|| {
                ApiError::Unprocessable(format!(
                    "no built-in workflow {name:?}; built-in workflows are {} (GET /workflows), or send a definition as `workflow_yaml`",
                    orch_core::dsl::BUILTIN_WORKFLOWS.join(", ")
                ))
            })
        }
    }
}

/// Parse a workflow definition; 422 naming the line and column.
fn parse_workflow(yaml: &str) -> Result<Workflow, ApiError> {
    Workflow::parse("workflow", yaml).map_err(|e| {
        let at = match (e.line, e.column) {
            (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
            (Some(l), None) => format!(" at line {l}"),
            _ => String::new(),
        };
        ApiError::Unprocessable(format!("invalid workflow{at}: {e}"))
    })
}

fn check_budget(usd: Option<f64>, tokens: Option<i64>) -> Result<(), ApiError> {
    orch_core::RunSettings::check_budget(usd, tokens).map_err(ApiError::Unprocessable)
}

/// Refuse text with a NUL character (U+0000): no database column can hold it
/// (PostgreSQL's `TEXT` rejects it), so it would fail deep in the store.
fn without_nul(field: &str, text: &str) -> Result<(), ApiError> {
    if text.contains('\0') {
        return Err(ApiError::Unprocessable(format!(
            "`{field}` contains a NUL character (\\u0000), which cannot be stored; remove it"
        )));
    }
    Ok(())
}

/// Start a run: create it and take its first step (tasks are queued for the workers).
#[utoipa::path(
    post, path = "/runs", tag = "runs",
    request_body(content = CreateRunRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; `Location` names the run", body = RunDto,
            headers(("Location" = String, description = "/runs/{id}"))),
        (status = 400, description = "Malformed JSON, or both `workflow` and `workflow_yaml`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Empty goal, unknown workflow, invalid `workflow_yaml` (the detail names line and column), bad budget", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["write"]))
)]
pub async fn create_run(
    _auth: Auth<Write>,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateRunRequest>,
) -> Result<Response, ApiError> {
    let goal = req.goal.trim().to_string();
    without_nul("goal", &goal)?;
    if goal.is_empty() {
        return Err(ApiError::Unprocessable(
            "the goal is empty; say what to build, e.g. \"Build a small CRUD app for managing TODO items\"".into(),
        ));
    }
    let workflow = choose_workflow(&req)?;
    let budget = req.budget.clone().unwrap_or_default();
    check_budget(budget.usd, budget.tokens)?;
    let base = &state.config.run_settings;
    let settings = orch_core::RunSettings {
        budget_usd: budget.usd.or(base.budget_usd),
        budget_tokens: budget.tokens.or(base.budget_tokens),
        ..base.clone()
    };
    let context = req.context.clone().unwrap_or(serde_json::Value::Null);
    let id = state
        .engine
        .submit(&goal, context, &workflow, settings)
        .await?;
    let run = state.engine.run(&id).await?;
    let mut resp = (StatusCode::CREATED, Json(RunDto::from(&run))).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/runs/{id}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// Query of `GET /runs`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListRunsQuery {
    /// Only runs in this status (PENDING, PLANNING, RUNNING, NEEDS_INPUT, COMPLETED, FAILED, CANCELLED).
    pub status: Option<String>,
    /// Page size: 1 to 500 (default 50; larger values are capped at 500).
    pub limit: Option<u32>,
    /// Runs to skip (default 0).
    pub offset: Option<u32>,
}

/// List runs, newest first.
#[utoipa::path(
    get, path = "/runs", tag = "runs",
    params(ListRunsQuery),
    responses(
        (status = 200, description = "A page of runs", body = RunPage),
        (status = 400, description = "Unknown status or bad limit/offset", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]))
)]
pub async fn list_runs(
    _auth: Auth<Read>,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListRunsQuery>,
) -> Result<Json<RunPage>, ApiError> {
    let status = q
        .status
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.parse::<RunStatus>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "unknown status {s:?}; use one of {}",
                    RunStatus::ALL
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(RUNS_DEFAULT_LIMIT);
    if limit == 0 {
        return Err(ApiError::BadRequest(
            "limit must be 1 to 500 (default 50)".into(),
        ));
    }
    let limit = limit.min(RUNS_MAX_LIMIT);
    let offset = q.offset.unwrap_or(0);
    let mut runs = state
        .engine
        .deps()
        .store
        .list_runs(&RunFilter {
            status,
            limit: limit + 1,
            offset,
        })
        .await
        .map_err(store_err)?;
    let more = runs.len() > limit as usize;
    runs.truncate(limit as usize);
    Ok(Json(RunPage {
        items: runs.iter().map(RunDto::from).collect(),
        limit,
        offset,
        next_offset: more.then_some(offset + limit),
    }))
}

/// A run with its gates, a summary of its tasks and its dead letters.
#[utoipa::path(
    get, path = "/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = "The run's full id")),
    responses(
        (status = 200, description = "The run", body = RunDetail),
        (status = 400, description = "Not a run id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]))
)]
pub async fn get_run(
    _auth: Auth<Read>,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RunDetail>, ApiError> {
    let id = parse_run_id(&id)?;
    let store = &state.engine.deps().store;
    let s = store.load_run(&id).await.map_err(store_err)?;
    let dead = store
        .list_dead_letters(Some(&id), false)
        .await
        .map_err(store_err)?;
    Ok(Json(RunDetail {
        run: (&s.run).into(),
        gates: s.gates.iter().map(GateDto::from).collect(),
        tasks: s.tasks.iter().map(TaskSummary::from).collect(),
        dead_letters: dead.iter().map(DeadLetterDto::from).collect(),
    }))
}

/// Compact status: status, reason, gates, task counts, cost and tokens (one store read).
#[utoipa::path(
    get, path = "/runs/{id}/status", tag = "runs",
    params(("id" = String, Path, description = "The run's full id")),
    responses(
        (status = 200, description = "The run's status", body = RunStatusDto),
        (status = 400, description = "Not a run id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]))
)]
pub async fn run_status(
    _auth: Auth<Read>,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RunStatusDto>, ApiError> {
    let id = parse_run_id(&id)?;
    let s = state
        .engine
        .deps()
        .store
        .load_run(&id)
        .await
        .map_err(store_err)?;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for t in &s.tasks {
        *counts.entry(t.status.as_str().to_string()).or_default() += 1;
    }
    let r = &s.run;
    Ok(Json(RunStatusDto {
        id: r.id.to_string(),
        status: r.status,
        reason: r.status_reason.clone(),
        terminal: r.status.is_terminal(),
        gates: s
            .gates
            .iter()
            .map(|g| GateBrief {
                kind: g.kind,
                status: g.status,
                reason: g.reason.clone(),
            })
            .collect(),
        tasks: counts,
        tasks_total: s.tasks.len() as u64,
        cost_usd: r.cost_usd,
        tokens_in: r.tokens_in,
        tokens_out: r.tokens_out,
        budget_usd: r.settings.budget_usd,
        budget_tokens: r.settings.budget_tokens,
        updated_at: r.updated_at,
    }))
}

/// Every task of a run, in plan order.
#[utoipa::path(
    get, path = "/runs/{id}/tasks", tag = "runs",
    params(("id" = String, Path, description = "The run's full id")),
    responses(
        (status = 200, description = "The tasks", body = Vec<TaskDto>),
        (status = 400, description = "Not a run id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]))
)]
pub async fn list_tasks(
    _auth: Auth<Read>,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Vec<TaskDto>>, ApiError> {
    let id = parse_run_id(&id)?;
    let tasks = state
        .engine
        .deps()
        .store
        .list_tasks(&id)
        .await
        .map_err(store_err)?;
    Ok(Json(tasks.iter().map(TaskDto::from).collect()))
}

/// Query of `GET /runs/{id}/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events with a greater `seq` (default 0: from the start).
    pub after: Option<i64>,
    /// Page size: 1 to 1000 (default 100; larger values are capped).
    pub limit: Option<u32>,
    /// Only events of this kind (`task_succeeded`, `gate_passed`, ...).
    pub kind: Option<String>,
}

/// An event kind from a query parameter (400 naming the known kinds if unknown).
pub fn parse_event_kind(raw: &str) -> Result<orch_core::EventKind, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "unknown event kind {raw:?}; use one of {}",
            orch_core::EventKind::NAMES.join(", ")
        ))
    })
}

/// A run's events in sequence order, a page at a time.
#[utoipa::path(
    get, path = "/runs/{id}/events", tag = "events",
    params(("id" = String, Path, description = "The run's full id"), EventsQuery),
    responses(
        (status = 200, description = "A page of events", body = EventPage),
        (status = 400, description = "Not a run id, unknown kind or bad after/limit", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]))
)]
pub async fn list_events(
    _auth: Auth<Read>,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<EventPage>, ApiError> {
    let id = parse_run_id(&id)?;
    let kind = q
        .kind
        .as_deref()
        .filter(|k| !k.trim().is_empty())
        .map(parse_event_kind)
        .transpose()?;
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::BadRequest("after must be 0 or more".into()));
    }
    let limit = q.limit.unwrap_or(EVENTS_DEFAULT_LIMIT);
    if limit == 0 {
        return Err(ApiError::BadRequest(
            "limit must be 1 to 1000 (default 100)".into(),
        ));
    }
    let limit = limit.min(EVENTS_MAX_LIMIT);
    let store = &state.engine.deps().store;
    let events = store
        .list_events(
            &id,
            EventQuery {
                after_seq: after,
                limit,
                kind,
            },
        )
        .await
        .map_err(store_err)?;
    if events.is_empty() {
        // An unknown run and a filter that matched nothing look alike.
        store.get_run(&id).await.map_err(store_err)?;
    }
    Ok(Json(EventPage {
        next_after: events.last().map(|e| e.seq).unwrap_or(after),
        items: events.iter().map(EventDto::from).collect(),
    }))
}

/// Query of `GET /runs/{id}/artifacts`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ArtifactsQuery {
    /// Every version, not only the latest of each (name, path).
    pub all_versions: Option<bool>,
}

/// A run's artifacts without content: the latest version of each (name, path), or every version.
#[utoipa::path(
    get, path = "/runs/{id}/artifacts", tag = "artifacts",
    params(("id" = String, Path, description = "The run's full id"), ArtifactsQuery),
    responses(
        (status = 200, description = "The artifacts", body = ArtifactList),
        (status = 400, description = "Not a run id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]))
)]
pub async fn list_artifacts(
    _auth: Auth<Read>,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ArtifactsQuery>,
) -> Result<Json<ArtifactList>, ApiError> {
    let id = parse_run_id(&id)?;
    let list = state
        .engine
        .deps()
        .store
        .list_artifacts(&id, !q.all_versions.unwrap_or(false))
        .await
        .map_err(store_err)?;
    Ok(Json(ArtifactList {
        items: list.iter().map(ArtifactMeta::from).collect(),
    }))
}

/// Query of `GET /runs/{id}/artifacts/{name}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ArtifactQuery {
    /// The file of a multi-file (code) artifact; required when the name has several files.
    pub path: Option<String>,
    /// A version (default: the latest).
    pub version: Option<i64>,
}

/// One artifact file with its content. A code artifact is several files under
/// one name: choose one with `?path=` (the 400 lists them).
#[utoipa::path(
    get, path = "/runs/{id}/artifacts/{name}", tag = "artifacts",
    params(
        ("id" = String, Path, description = "The run's full id"),
        ("name" = String, Path, description = "The artifact's name (`requirements`, `backend_code`)"),
        ArtifactQuery,
    ),
    responses(
        (status = 200, description = "The artifact with its content", body = ArtifactContent),
        (status = 400, description = "Not a run id; several files and no `path`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run, artifact, path or version", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]))
)]
pub async fn get_artifact(
    _auth: Auth<Read>,
    State(state): State<AppState>,
    ApiPath((id, name)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<ArtifactQuery>,
) -> Result<Json<ArtifactContent>, ApiError> {
    let id = parse_run_id(&id)?;
    let all = state
        .engine
        .deps()
        .store
        .list_artifacts(&id, false)
        .await
        .map_err(store_err)?;
    let named: Vec<_> = all.iter().filter(|a| a.name == name).collect();
    if named.is_empty() {
        let mut names: Vec<&str> = all.iter().map(|a| a.name.as_str()).collect();
        names.sort();
        names.dedup();
        return Err(ApiError::NotFound(format!(
            "run {id} has no artifact {name:?}; it has: {}",
            if names.is_empty() {
                "none yet".to_string()
            } else {
                names.join(", ")
            }
        )));
    }
    let mut paths: Vec<Option<&str>> = named.iter().map(|a| a.path.as_deref()).collect();
    paths.sort();
    paths.dedup();
    let path = match q.path.as_deref() {
        Some(p) => {
            if !paths.contains(&Some(p)) {
                return Err(ApiError::NotFound(format!(
                    "artifact {name:?} of run {id} has no file {p:?}; its files: {}",
                    list_paths(&paths)
                )));
            }
            Some(p)
        }
        None if paths.len() > 1 => {
            return Err(ApiError::BadRequest(format!(
                "artifact {name:?} has {} files; choose one with ?path= (one of: {})",
                paths.len(),
                list_paths(&paths)
            )));
        }
        None => paths[0],
    };
    let versions = named.iter().filter(|a| a.path.as_deref() == path);
    let found = match q.version {
        Some(v) => versions.into_iter().find(|a| a.version == v).ok_or_else(|| {
            ApiError::NotFound(format!(
                "artifact {name:?} of run {id} has no version {v}; list versions with GET /runs/{id}/artifacts?all_versions=true"
            ))
        })?,
        None => versions
            .max_by_key(|a| a.version)
            .expect("a path taken from the artifact's files"),
    };
    Ok(Json(ArtifactContent::from(*found)))
}

fn list_paths(paths: &[Option<&str>]) -> String {
    paths
        .iter()
        .map(|p| p.unwrap_or("(no path)"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn step_result(id: &RunId, out: orch_engine::TickOutcome) -> Json<StepResult> {
    Json(StepResult {
        run_id: id.to_string(),
        status: out.status,
        dispatched: out.dispatched,
        events: out.events,
    })
}

/// Reconcile the run once: move what can move and queue what became ready.
#[utoipa::path(
    post, path = "/runs/{id}/tick", tag = "control",
    params(("id" = String, Path, description = "The run's full id")),
    responses(
        (status = 200, description = "What the step did (a finished run is left as it is)", body = StepResult),
        (status = 400, description = "Not a run id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The run waits for input: answer it, waive a gate or cancel it", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["write"]))
)]
pub async fn tick(
    _auth: Auth<Write>,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<StepResult>, ApiError> {
    let id = parse_run_id(&id)?;
    let run = state.engine.run(&id).await?;
    if run.status == RunStatus::NeedsInput {
        return Err(ApiError::Conflict(format!(
            "run {id} waits for input: {}. Answer it (POST /runs/{id}/answer), waive a gate or cancel it",
            run.status_reason.unwrap_or_default()
        )));
    }
    let out = state.engine.tick(&id).await?;
    Ok(step_result(&id, out))
}

/// Cancel a run: its unfinished tasks are cancelled.
#[utoipa::path(
    post, path = "/runs/{id}/cancel", tag = "control",
    params(("id" = String, Path, description = "The run's full id")),
    request_body(content = Option<CancelRequest>, content_type = "application/json", description = "Optional"),
    responses(
        (status = 200, description = "Cancelled", body = StepResult),
        (status = 400, description = "Not a run id; malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The run is already finished", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Wrong body shape", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["write"]))
)]
pub async fn cancel(
    _auth: Auth<Write>,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    body: Option<ApiJson<CancelRequest>>,
) -> Result<Json<StepResult>, ApiError> {
    let id = parse_run_id(&id)?;
    let reason = body
        .and_then(|ApiJson(b)| b.reason)
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "cancelled over the API".into());
    without_nul("reason", &reason)?;
    let out = state
        .engine
        .apply_input(&id, Input::Cancel { reason })
        .await?;
    Ok(step_result(&id, out))
}

/// Answer a run waiting in NEEDS_INPUT; it runs again.
#[utoipa::path(
    post, path = "/runs/{id}/answer", tag = "control",
    params(("id" = String, Path, description = "The run's full id")),
    request_body(content = AnswerRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Recorded; the run is RUNNING again", body = StepResult),
        (status = 400, description = "Not a run id; malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The run is not waiting for input", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Empty answer or wrong body shape", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["write"]))
)]
pub async fn answer(
    _auth: Auth<Write>,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<AnswerRequest>,
) -> Result<Json<StepResult>, ApiError> {
    let id = parse_run_id(&id)?;
    without_nul("text", &req.text)?;
    if req.text.trim().is_empty() {
        return Err(ApiError::Unprocessable(
            "the answer is empty; give the guidance as `text`".into(),
        ));
    }
    let out = state
        .engine
        .apply_input(&id, Input::Answer { text: req.text })
        .await?;
    Ok(step_result(&id, out))
}

/// Waive a quality gate (`code_review` or `security_review`).
#[utoipa::path(
    post, path = "/runs/{id}/gates/{gate}/waive", tag = "control",
    params(
        ("id" = String, Path, description = "The run's full id"),
        ("gate" = GateKindSchema, Path, description = "`code_review` or `security_review`"),
    ),
    request_body(content = WaiveRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Waived", body = StepResult),
        (status = 400, description = "Not a run id, unknown gate, malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The run is finished, has no such gate, or the gate is already open", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Empty reason or wrong body shape", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["write"]))
)]
pub async fn waive_gate(
    _auth: Auth<Write>,
    State(state): State<AppState>,
    ApiPath((id, gate)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<WaiveRequest>,
) -> Result<Json<StepResult>, ApiError> {
    let id = parse_run_id(&id)?;
    let gate: GateKind = gate.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "unknown gate {gate:?}; gates are code_review and security_review"
        ))
    })?;
    let reason = req.reason.trim().to_string();
    without_nul("reason", &reason)?;
    if reason.is_empty() {
        return Err(ApiError::Unprocessable(
            "the reason is empty; say why the gate is waived".into(),
        ));
    }
    let out = state
        .engine
        .apply_input(&id, Input::WaiveGate { gate, reason })
        .await?;
    Ok(step_result(&id, out))
}

/// Raise a run's budget; tasks stopped by it get another attempt.
#[utoipa::path(
    post, path = "/runs/{id}/budget", tag = "control",
    params(("id" = String, Path, description = "The run's full id")),
    request_body(content = BudgetRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Raised", body = StepResult),
        (status = 400, description = "Not a run id; malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The run is finished", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Neither `usd` nor `tokens`, or a value not above 0", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["write"]))
)]
pub async fn raise_budget(
    _auth: Auth<Write>,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<BudgetRequest>,
) -> Result<Json<StepResult>, ApiError> {
    let id = parse_run_id(&id)?;
    if req.usd.is_none() && req.tokens.is_none() {
        return Err(ApiError::Unprocessable(
            "give `usd` and/or `tokens`: the new limits of the run".into(),
        ));
    }
    check_budget(req.usd, req.tokens)?;
    let out = state
        .engine
        .apply_input(
            &id,
            Input::RaiseBudget {
                usd: req.usd,
                tokens: req.tokens,
            },
        )
        .await?;
    Ok(step_result(&id, out))
}

// -------------------------------------------------------------------- dlq

/// Query of `GET /dlq`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DlqQuery {
    /// Only dead letters of this run.
    pub run_id: Option<String>,
    /// Replayed ones too.
    pub include_replayed: Option<bool>,
}

/// Dead letters (tasks that failed every attempt), newest first.
#[utoipa::path(
    get, path = "/dlq", tag = "dlq",
    params(DlqQuery),
    responses(
        (status = 200, description = "The dead letters", body = DeadLetterList),
        (status = 400, description = "Bad query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]))
)]
pub async fn list_dlq(
    _auth: Auth<Read>,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<DlqQuery>,
) -> Result<Json<DeadLetterList>, ApiError> {
    let store = &state.engine.deps().store;
    let run = match q.run_id.as_deref().filter(|r| !r.trim().is_empty()) {
        Some(r) => {
            let id = parse_run_id(r)?;
            store.get_run(&id).await.map_err(store_err)?;
            Some(id)
        }
        None => None,
    };
    let letters = store
        .list_dead_letters(run.as_ref(), q.include_replayed.unwrap_or(false))
        .await
        .map_err(store_err)?;
    Ok(Json(DeadLetterList {
        items: letters.iter().map(DeadLetterDto::from).collect(),
    }))
}

/// Replay a dead letter: its task gets another attempt.
#[utoipa::path(
    post, path = "/dlq/{id}/replay", tag = "dlq",
    params(("id" = i64, Path, description = "The dead letter's id")),
    responses(
        (status = 200, description = "Replayed", body = ReplayResult),
        (status = 400, description = "Not a number", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No dead letter waiting for replay with this id", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The run is finished", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["admin"]))
)]
pub async fn replay_dlq(
    _auth: Auth<Admin>,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<ReplayResult>, ApiError> {
    let letter = state
        .engine
        .deps()
        .store
        .list_dead_letters(None, false)
        .await
        .map_err(store_err)?
        .into_iter()
        .find(|l| l.id == id)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no dead letter {id} waiting for replay; list them with GET /dlq"
            ))
        })?;
    let out = state.engine.replay_dead_letter(id).await?;
    Ok(Json(ReplayResult {
        dead_letter: id,
        run_id: letter.run_id.to_string(),
        task_id: letter.task_id,
        status: out.status,
        dispatched: out.dispatched,
    }))
}

// -------------------------------------------------------------- workflows

/// The built-in workflows.
#[utoipa::path(
    get, path = "/workflows", tag = "workflows",
    responses((status = 200, description = "The built-in workflows", body = WorkflowList)),
    security(("bearer" = ["read"]))
)]
pub async fn list_workflows(_auth: Auth<Read>) -> Json<WorkflowList> {
    Json(WorkflowList {
        items: orch_core::dsl::BUILTIN_WORKFLOWS
            .iter()
            .filter_map(|n| Workflow::builtin(n))
            .map(|wf| WorkflowSummary {
                name: wf.name.clone(),
                description: wf.description.clone(),
                tasks: wf.tasks.len(),
            })
            .collect(),
    })
}

fn order_of(wf: &Workflow) -> Vec<String> {
    wf.topological_order()
        .into_iter()
        .map(|t| t.id.clone())
        .collect()
}

/// A built-in workflow: its definition as JSON and its YAML text.
#[utoipa::path(
    get, path = "/workflows/{name}", tag = "workflows",
    params(("name" = String, Path, description = "A built-in workflow's name")),
    responses(
        (status = 200, description = "The workflow", body = WorkflowDetail),
        (status = 404, description = "No such built-in workflow", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]))
)]
pub async fn get_workflow(
    _auth: Auth<Read>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<WorkflowDetail>, ApiError> {
    let not_found = || {
        ApiError::NotFound(format!(
            "no built-in workflow {name:?}; built-in workflows are {}",
            orch_core::dsl::BUILTIN_WORKFLOWS.join(", ")
        ))
    };
    let (_, text) = orch_core::dsl::builtin_source(&name).ok_or_else(not_found)?;
    let wf = Workflow::builtin(&name).ok_or_else(not_found)?;
    Ok(Json(WorkflowDetail {
        name: wf.name.clone(),
        definition: serde_json::to_value(&wf)
            .map_err(|e| ApiError::Internal(format!("cannot render workflow {name}: {e}")))?,
        yaml: text.to_string(),
        order: order_of(&wf),
    }))
}

/// Validate a workflow definition without running it. The body is the YAML
/// text (`application/yaml`, `text/yaml`, `text/plain`) or JSON `{"yaml": "..."}`.
#[utoipa::path(
    post, path = "/workflows/validate", tag = "workflows",
    request_body(
        description = "The workflow's YAML text, or JSON `{\"yaml\": \"...\"}`",
        content(
            (String = "application/yaml"),
            (String = "text/yaml"),
            (String = "text/plain"),
            (ValidateRequest = "application/json"),
        )
    ),
    responses(
        (status = 200, description = "Valid", body = ValidateResponse),
        (status = 400, description = "Malformed JSON or body not UTF-8", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not YAML, text or JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid workflow: the detail names the line and column", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]))
)]
pub async fn validate_workflow(
    _auth: Auth<Read>,
    State(state): State<AppState>,
    req: Request,
) -> Result<Json<ValidateResponse>, ApiError> {
    let mime = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let text = match mime.as_str() {
        "application/json" => {
            let ApiJson(v) =
                <ApiJson<ValidateRequest> as FromRequest<AppState>>::from_request(req, &state)
                    .await?;
            v.yaml
        }
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" | "text/plain" => {
            let bytes = <Bytes as FromRequest<AppState>>::from_request(req, &state).await?;
            String::from_utf8(bytes.to_vec())
                .map_err(|_| ApiError::BadRequest("the body is not UTF-8 text".into()))?
        }
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "content type {:?} is not accepted here; send the YAML as `application/yaml`, `text/yaml` or `text/plain`, or JSON `{{\"yaml\": \"...\"}}` as `application/json`",
                if other.is_empty() { "(none)" } else { other }
            )));
        }
    };
    let wf = parse_workflow(&text)?;
    Ok(Json(ValidateResponse {
        valid: true,
        name: wf.name.clone(),
        tasks: wf.tasks.iter().map(|t| t.id.clone()).collect(),
        order: order_of(&wf),
    }))
}

// -------------------------------------------------------------- fallbacks

/// Unknown route: 404 problem.
pub async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!(
        "no route {} {}; the API's routes are listed at /openapi.json and /docs",
        req.method(),
        req.uri().path()
    ))
}

/// Known path, wrong method: 405 problem.
pub async fn method_not_allowed(req: Request) -> Response {
    let path = req.uri().path().to_string();
    let mut allowed: Vec<&str> = ROUTES
        .iter()
        .filter(|(_, p)| path_matches(p, &path))
        .map(|(m, _)| *m)
        .collect();
    allowed.sort_unstable();
    allowed.dedup();
    let detail = if allowed.is_empty() {
        format!("method {} is not allowed on {path}", req.method())
    } else {
        format!(
            "method {} is not allowed on {path}; use {}",
            req.method(),
            allowed.join(" or ")
        )
    };
    let mut resp = MethodNotAllowed(detail).into_response();
    if !allowed.is_empty()
        && let Ok(v) = HeaderValue::from_str(&allowed.join(", "))
    {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    resp
}

/// Whether a concrete path matches a route template (`{x}` matches one segment).
fn path_matches(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.trim_matches('/').split('/').collect();
    let p: Vec<&str> = path.trim_matches('/').split('/').collect();
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(a, b)| (a.starts_with('{') && a.ends_with('}')) || a == b)
}

/// A 405 problem (the error enum has no 405 variant: this is the router's, not a handler's).
struct MethodNotAllowed(String);

impl IntoResponse for MethodNotAllowed {
    fn into_response(self) -> Response {
        let status = StatusCode::METHOD_NOT_ALLOWED;
        let problem = Problem {
            r#type: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail: self.0,
        };
        let mut resp = (status, Json(problem)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        resp
    }
}

/// A panic in a handler: 500 problem (the server keeps serving).
pub fn panic_response(_err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::Internal(
        "the server hit a bug while handling this request (a panic); it was logged and the server keeps serving".into(),
    )
    .into_response()
}
