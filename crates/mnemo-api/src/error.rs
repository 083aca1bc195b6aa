//! API errors, rendered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mnemo_index::IndexError;
use mnemo_search::SearchError;
use mnemo_storage::{report, StoreError};
use serde_json::json;

/// An error returned to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message.
    pub message: String,
    /// Error class (`invalid_request_error`, `not_found_error`, …).
    pub kind: &'static str,
    /// The request parameter at fault, if any (e.g. `items[2].role`).
    pub param: Option<String>,
    /// Machine-readable code, if any.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// An error with any status, error class and message.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    /// 400: the request is invalid.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 400 naming the parameter at fault.
    pub fn invalid_param(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::invalid(message).with_param(param)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found_error", message)
    }

    /// 413: the body exceeds `limit` bytes.
    pub fn too_large(limit: usize) -> Self {
        let mut e = Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("request body exceeds the limit of {limit} bytes"),
        );
        e.code = Some("body_too_large");
        e
    }

    /// 405.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method not allowed on this route",
        )
    }

    /// 500, with nothing of the cause (log it before).
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal error",
        )
    }

    /// Sets the machine-readable code.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// Sets the offending parameter.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            StoreError::Conflict(m) => {
                let mut e = ApiError::new(StatusCode::CONFLICT, "conflict_error", m);
                e.code = Some("conflict");
                e
            }
            StoreError::PreconditionFailed { message, index } => {
                let mut e = ApiError::new(
                    StatusCode::PRECONDITION_FAILED,
                    "precondition_failed",
                    message,
                );
                e.code = Some("precondition_failed");
                e.param = index.map(|i| format!("operations[{i}]"));
                e
            }
            StoreError::Forbidden { message, index } => {
                let e = ApiError::new(StatusCode::FORBIDDEN, "permission_error", message)
                    .with_code("forbidden");
                match index {
                    Some(i) => e.with_param(format!("operations[{i}].key")),
                    None => e,
                }
            }
            StoreError::Invalid(m) => ApiError::invalid(m),
            StoreError::ReadOnly => {
                ApiError::new(StatusCode::FORBIDDEN, "permission_error", e.to_string())
                    .with_code("read_only")
            }
            StoreError::Unavailable { .. } | StoreError::Fenced => {
                tracing::warn!(error = %report(&e), "store unavailable");
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                    format!("{e}; retry later"),
                );
                e.code = Some("store_unavailable");
                e
            }
            StoreError::Corrupt { .. }
            | StoreError::Encode { .. }
            | StoreError::Internal { .. } => {
                tracing::error!(error = %report(&e), "internal error");
                ApiError::internal()
            }
        }
    }
}

impl From<IndexError> for ApiError {
    fn from(e: IndexError) -> Self {
        match e {
            IndexError::Store(e) => e.into(),
            IndexError::Search(
                SearchError::InvalidVector(_)
                | SearchError::DimensionMismatch { .. }
                | SearchError::EmptyQuery(_)
                | SearchError::TopKOutOfRange { .. },
            ) => ApiError::invalid(e.to_string()),
            IndexError::Search(SearchError::Timeout) | IndexError::Behind => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "the search index did not catch up with earlier writes in time; retry later",
            )
            .with_code("index_behind"),
            IndexError::TextDimension { .. } => ApiError::invalid_param("query", e.to_string()),
            // Internal search failures, the embedder, background tasks, and anything
            // `SearchError` may grow: server-side failures.
            _ => {
                tracing::error!(error = %report(&e), "search failure");
                ApiError::internal()
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        response
    }
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;

impl From<mnemo_storage::items::ItemError> for ApiError {
    fn from(e: mnemo_storage::items::ItemError) -> Self {
        ApiError::invalid_param(e.param, e.message)
    }
}
