//! The API's one error type, rendered as RFC 9457 `application/problem+json`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Every error a handler can return. Each variant has one HTTP status; the
/// message is the problem's `detail` and must say what to do.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed (bad JSON, bad query parameter).
    #[error("{0}")]
    BadRequest(String),
    /// 401: no token, or an unknown, malformed or revoked one.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the token lacks the scope the route needs.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such run, task, artifact, dead letter, workflow or route.
    #[error("{0}")]
    NotFound(String),
    /// 409: the action does not apply to the resource as it is now.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is larger than the configured limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415: the body's content type is not one the route accepts.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: well-formed but invalid (empty goal, workflow that fails validation).
    #[error("{0}")]
    Unprocessable(String),
    /// 503: the database or broker is unreachable; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a fault of ours; the detail names it, the log has more.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The problem document of this error.
    pub fn problem(&self) -> Problem {
        let status = self.status();
        Problem {
            r#type: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail: self.to_string(),
        }
    }
}

/// An RFC 9457 problem details document.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Problem {
    /// `about:blank`: the status code says what kind of problem it is.
    pub r#type: String,
    /// The status code's reason phrase.
    pub title: String,
    pub status: u16,
    /// What went wrong and what to do about it.
    pub detail: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), "{self}");
        }
        let mut response = (status, axum::Json(self.problem())).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"orchestrator\""),
            );
        }
        response
    }
}

impl From<orch_engine::Error> for ApiError {
    fn from(e: orch_engine::Error) -> Self {
        use orch_engine::Error as E;
        match e {
            E::Store(s) => s.into(),
            E::Broker(b) => ApiError::Unavailable(format!("queue broker: {b}; retry later")),
            E::Conflict(m) => ApiError::Conflict(m),
            E::Contended(_) => ApiError::Conflict(e.to_string()),
            E::DeadLetterNotFound(_) => ApiError::NotFound(e.to_string()),
            E::Core(c) => ApiError::Unprocessable(c.to_string()),
        }
    }
}

impl From<orch_engine::store::Error> for ApiError {
    fn from(e: orch_engine::store::Error) -> Self {
        use orch_engine::store::Error as E;
        match e {
            E::RunNotFound(_)
            | E::TaskNotFound { .. }
            | E::ArtifactNotFound { .. }
            | E::DeadLetterNotFound(_)
            | E::TokenNotFound(_) => ApiError::NotFound(e.to_string()),
            E::Conflict(_) | E::LeaseLost { .. } | E::TokenExists(_) => {
                ApiError::Conflict(e.to_string())
            }
            E::Locked(_) | E::Connect { .. } | E::Database(_) => {
                ApiError::Unavailable(format!("database: {e}; retry later"))
            }
            E::Corrupt(_)
            | E::Migrate(_)
            | E::Decode(_)
            | E::UnsupportedUrl(_)
            | E::Config { .. } => ApiError::Internal(e.to_string()),
        }
    }
}
