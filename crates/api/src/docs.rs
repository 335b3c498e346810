//! The OpenAPI 3.1 document (generated from the handlers' annotations), Swagger
//! UI at `/docs` (utoipa-swagger-ui, vendored) and ReDoc at `/redoc` (our page
//! and the ReDoc bundle from `assets/`, both served from the binary: no CDN,
//! no web fonts).

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::AppState;
use crate::error::Problem;
use crate::{dto, routes, sse};

/// The API's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Orchestrator API",
        description = "Multi-agent workflow orchestrator: a goal becomes a DAG of role tasks run by LLM agents behind a code review gate and a security review gate.\n\nEvery route but `/health` (and `/metrics` when configured public) needs `Authorization: Bearer orch_<id>_<secret>` (create one with `orchestrator token create --scope read|write|admin`). GET routes need `read`, POST routes `write`, DLQ replay `admin`. Errors are RFC 9457 `application/problem+json` documents.",
        license(name = "MIT", identifier = "MIT"),
    ),
    paths(
        routes::health,
        routes::metrics,
        routes::create_run,
        routes::list_runs,
        routes::get_run,
        routes::run_status,
        routes::list_tasks,
        routes::list_events,
        sse::stream,
        routes::list_artifacts,
        routes::get_artifact,
        routes::tick,
        routes::cancel,
        routes::answer,
        routes::waive_gate,
        routes::raise_budget,
        routes::list_dlq,
        routes::replay_dlq,
        routes::list_workflows,
        routes::get_workflow,
        routes::validate_workflow,
    ),
    components(schemas(
        Problem,
        dto::RunStatusSchema,
        dto::TaskStatusSchema,
        dto::GateStatusSchema,
        dto::GateKindSchema,
        dto::RoleSchema,
        dto::EventKindSchema,
        dto::EventDto,
    )),
    modifiers(&Security),
    tags(
        (name = "runs", description = "Start, list and inspect runs"),
        (name = "control", description = "Human inputs: tick, cancel, answer, waive a gate, raise the budget"),
        (name = "events", description = "A run's event log, paged or live (SSE)"),
        (name = "artifacts", description = "What the agents produced"),
        (name = "dlq", description = "Dead letters: tasks that failed every attempt"),
        (name = "workflows", description = "Built-in workflows and validation of definitions"),
        (name = "system", description = "Health and metrics"),
    )
)]
#[derive(Debug)]
pub struct ApiDoc;

/// Adds the bearer scheme, and the 401/403/500 problems every secured route can return.
struct Security;

fn problem(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "Problem",
                ))))
                .build(),
        )
        .build()
        .into()
}

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("orch_<id>_<secret>")
                    .description(Some(
                        "A token from `orchestrator token create`; its scope (read < write < admin) must cover the route's.",
                    ))
                    .build(),
            ),
        );
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let secured = op.security.as_ref().is_some_and(|reqs| {
                    reqs.iter().any(|r| {
                        serde_json::to_value(r)
                            .ok()
                            .and_then(|v| v.as_object().map(|o| o.contains_key("bearer")))
                            .unwrap_or(false)
                    })
                });
                let responses = &mut op.responses.responses;
                if secured {
                    responses.entry("401".into()).or_insert_with(|| {
                        problem("No token, or an unknown, malformed or revoked one")
                    });
                    responses
                        .entry("403".into())
                        .or_insert_with(|| problem("The token lacks the route's scope"));
                }
                responses.entry("500".into()).or_insert_with(|| {
                    problem("A fault of the server (never caused by the request)")
                });
            }
        }
    }
}

/// The ReDoc bundle (redoc 2.5.4, MIT; see `assets/README.md`).
pub const REDOC_JS: &[u8] = include_bytes!("../assets/redoc.standalone.js");

/// Our ReDoc page: loads the bundle from this server, uses system fonts.
pub const REDOC_HTML: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Orchestrator API — ReDoc</title>
  <style>body { margin: 0; padding: 0; }</style>
</head>
<body>
  <div id="redoc-container"></div>
  <script src="/redoc/redoc.standalone.js"></script>
  <script>
    Redoc.init('/openapi.json', {
      hideDownloadButton: false,
      theme: { typography: {
        fontFamily: 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif',
        headings: { fontFamily: 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif' },
        code: { fontFamily: 'ui-monospace, SFMono-Regular, Menlo, Consolas, monospace' }
      } }
    }, document.getElementById('redoc-container'));
  </script>
</body>
</html>
"#;

async fn redoc_page() -> Html<&'static str> {
    Html(REDOC_HTML)
}

async fn redoc_js() -> Response {
    let mut resp = (StatusCode::OK, REDOC_JS).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400"),
    );
    resp
}

/// `/openapi.json`, `/docs` (Swagger UI) and `/redoc`: open, no token.
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .route("/redoc", get(redoc_page))
        .route("/redoc/", get(redoc_page))
        .route("/redoc/redoc.standalone.js", get(redoc_js))
}
