//! Errors: [`StoreError`] from the storage layer, [`ApiError`] on the wire.
//!
//! Every error answer has the same JSON shape:
//! `{"errorCode": "...", "statusCode": 400, "msg": "...", "details": {...}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{msg}")]
    Invalid { field: String, msg: String },
    #[error("{0}")]
    Conflict(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl StoreError {
    pub fn invalid(field: impl Into<String>, msg: impl Into<String>) -> Self {
        StoreError::Invalid { field: field.into(), msg: msg.into() }
    }
}

impl From<crate::crypto::CryptoError> for StoreError {
    fn from(e: crate::crypto::CryptoError) -> Self {
        StoreError::Internal(format!("crypto: {e}"))
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Internal(format!("io: {e}"))
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Internal(format!("stored json: {e}"))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug)]
pub enum ApiError {
    /// 400. `code` is e.g. `invalid_field`, `invalid_json`, `unknown_field`.
    BadRequest {
        code: &'static str,
        msg: String,
        field: Option<String>,
    },
    Unauthorized,
    /// 403: the caller's role does not cover the route.
    InsufficientRole {
        required: crate::api::principal::Role,
        role: crate::api::principal::Role,
    },
    NotFound(String),
    MethodNotAllowed,
    Conflict(String),
    BodyTooLarge,
    /// Logged, never shown.
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, msg: impl Into<String>) -> Self {
        ApiError::BadRequest { code: "invalid_field", msg: msg.into(), field: Some(field.into()) }
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::InsufficientRole { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn error_code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } => code,
            ApiError::Unauthorized => "unauthorized",
            ApiError::InsufficientRole { .. } => "insufficient_role",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::BodyTooLarge => "body_too_large",
            ApiError::Internal(_) => "internal_error",
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiError::NotFound(m),
            StoreError::Invalid { field, msg } => ApiError::invalid(field, msg),
            StoreError::Conflict(m) => ApiError::Conflict(m),
            StoreError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let (msg, details) = match &self {
            ApiError::BadRequest { msg, field, .. } => (
                msg.clone(),
                match field {
                    Some(f) => json!({ "field": f }),
                    None => json!({}),
                },
            ),
            ApiError::Unauthorized => ("missing or invalid bearer token for this API".to_string(), json!({})),
            ApiError::InsufficientRole { required, role } => (
                format!("this call needs the {} role; this credential has {}", required.as_str(), role.as_str()),
                json!({ "required": required, "role": role }),
            ),
            ApiError::NotFound(m) | ApiError::Conflict(m) => (m.clone(), json!({})),
            ApiError::MethodNotAllowed => ("method not allowed on this route".to_string(), json!({})),
            ApiError::BodyTooLarge => (
                format!("request body exceeds {} bytes", crate::api::BODY_LIMIT),
                json!({ "limit": crate::api::BODY_LIMIT }),
            ),
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                ("internal error".to_string(), json!({}))
            }
        };
        let body = json!({
            "errorCode": self.error_code(),
            "statusCode": status.as_u16(),
            "msg": msg,
            "details": details,
        });
        (status, axum::Json(body)).into_response()
    }
}
