//! [`ApiError`]: every failure of the admin API, rendered in one place as
//! `{"error", "code", "details"}` with the right status. Internal details go to
//! the log, never to the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fleetgate_core::ValidationError;
use fleetgate_store::StoreError;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

/// The error envelope of every API error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Human readable message naming what was wrong.
    pub error: String,
    /// Machine readable code, e.g. `VALIDATION_FAILED`.
    pub code: String,
    /// Extra facts: the failing `field`, the list of `errors`, the current version.
    #[schema(value_type = Object)]
    pub details: Value,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: json!({}),
            retry_after: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// Adds the fields of `more` to the details (an object), keeping those
    /// already there.
    pub fn and_details(mut self, more: Value) -> Self {
        if let Value::Object(more) = more {
            if !self.details.is_object() {
                self.details = Value::Object(Default::default());
            }
            if let Value::Object(d) = &mut self.details {
                for (k, v) in more {
                    d.entry(k).or_insert(v);
                }
            }
        }
        self
    }

    pub fn bad_request(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::new(
            StatusCode::BAD_REQUEST,
            "VALIDATION_FAILED",
            format!("{field}: {message}"),
        )
        .with_details(json!({ "field": field, "errors": [{ "field": field, "message": message }] }))
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("{} not found", what.into()),
        )
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "FORBIDDEN", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "CONFLICT", message)
    }

    pub fn too_many(message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED", message)
            .with_details(json!({ "retry_after": retry_after }));
        e.retry_after = Some(retry_after);
        e
    }

    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "{context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "internal error; see the server log for this request id",
        )
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        let field = e.first_field().unwrap_or("body").to_string();
        Self::new(StatusCode::BAD_REQUEST, "VALIDATION_FAILED", e.to_string())
            .with_details(json!({ "field": field, "errors": e.errors }))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::not_found(what),
            StoreError::Conflict(m) => ApiError::conflict(m),
            StoreError::VersionMismatch { current } => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "PRECONDITION_FAILED",
                format!("If-Match does not match the current version \"{current}\""),
            )
            .with_details(json!({ "current_version": current })),
            StoreError::Rejected(v) => v.into(),
            StoreError::Invalid(m) => {
                ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION_FAILED", m)
            }
            e if e.is_unavailable() => {
                tracing::error!(error = %e, "store unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "STORE_UNAVAILABLE",
                    "the store is unavailable; retry later",
                )
            }
            other => ApiError::internal("store error", other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            code: self.code.to_string(),
            details: self.details,
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}
