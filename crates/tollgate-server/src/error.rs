//! Every error the server renders, and the one table that maps each to its
//! HTTP status and wire body.
//!
//! - [`AdminError`]: control-plane errors, `{"success": false, "data":
//!   {"message", "errorCode": "ABnn"}}`.
//! - [`GatewayError`]: data-plane errors, OpenAI-shaped `{"error": {"message",
//!   "type", "param", "code"}}`.
//!
//! Details of 5xx errors are logged, never sent.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tollgate_store::StoreError;

/// Control-plane error kinds, with their `ABnn` codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminCode {
    /// AB01, 400: validation.
    Validation,
    /// AB03, 403: forbidden.
    Forbidden,
    /// AB04, 500: server error.
    Internal,
    /// AB05, 401: unauthorized.
    Unauthorized,
    /// AB07, 409: already exists or conflicts.
    Conflict,
    /// AB08, 404: not found.
    NotFound,
    /// AB09, 503: the database is unreachable (a write, or a read that
    /// needs it); retry shortly.
    Unavailable,
}

impl AdminCode {
    /// The table: status and code of each kind.
    pub fn wire(self) -> (StatusCode, &'static str) {
        match self {
            AdminCode::Validation => (StatusCode::BAD_REQUEST, "AB01"),
            AdminCode::Forbidden => (StatusCode::FORBIDDEN, "AB03"),
            AdminCode::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "AB04"),
            AdminCode::Unauthorized => (StatusCode::UNAUTHORIZED, "AB05"),
            AdminCode::Conflict => (StatusCode::CONFLICT, "AB07"),
            AdminCode::NotFound => (StatusCode::NOT_FOUND, "AB08"),
            AdminCode::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "AB09"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminError {
    pub code: AdminCode,
    pub message: String,
}

impl AdminError {
    pub fn new(code: AdminCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    pub fn validation(m: impl Into<String>) -> Self {
        Self::new(AdminCode::Validation, m)
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(AdminCode::Forbidden, m)
    }
    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(AdminCode::Unauthorized, m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(AdminCode::Conflict, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(AdminCode::NotFound, m)
    }
    /// A server error: `detail` is logged, the client sees a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "admin request failed");
        Self::new(AdminCode::Internal, "internal server error")
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => AdminError::conflict(format!("{what} already exists")),
            StoreError::NotFound(what) => AdminError::not_found(format!("{what} not found")),
            other if other.is_unavailable() => {
                tracing::warn!(error = %other, "admin request refused: the database is unreachable");
                AdminError::new(
                    AdminCode::Unavailable,
                    "the database is unreachable, so this cannot be done now; retry shortly",
                )
            }
            other => AdminError::internal(other),
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, code) = self.code.wire();
        let body = json!({"success": false, "data": {"message": self.message, "errorCode": code}});
        let mut resp = (status, axum::Json(body)).into_response();
        if self.code == AdminCode::Unavailable {
            resp.headers_mut().insert("retry-after", HeaderValue::from(1));
        }
        resp
    }
}

pub use tollgate_core::admission::Level as LimitLevel;

/// Data-plane errors.
#[derive(Debug, Clone, PartialEq)]
pub enum GatewayError {
    /// Missing, wrong, revoked or expired key.
    Authentication(String),
    /// Key lacks a scope, or the provider is not provisioned to the workspace.
    Permission(String),
    /// Unknown provider slug or model string.
    NotFound(String),
    /// A route under `/v1` that Tollgate does not serve (404, in OpenAI's
    /// `invalid_request_error` shape, as OpenAI answers unknown URLs).
    UnsupportedRoute(String),
    /// Malformed body; `param` names the field when known.
    InvalidRequest { message: String, param: Option<String> },
    /// A budget is exhausted.
    BudgetExhausted { level: LimitLevel, message: String },
    /// The model is not allowed for the integration or workspace.
    ModelNotAllowed(String),
    /// A rate limit is exceeded (or set to 0).
    RateLimited {
        level: LimitLevel,
        message: String,
        retry_after_secs: u64,
    },
    /// The upstream answered 4xx: relayed with its status and message.
    UpstreamClient { status: u16, message: String },
    /// The upstream failed (5xx, unreachable, unparseable answer).
    Upstream(String),
    /// The upstream did not answer in time.
    Timeout,
    /// A failure inside Tollgate; the detail is logged only.
    Internal(String),
    /// The limit counters (Redis) cannot be reached, so nothing can be
    /// admitted (503, `Retry-After: 1`); the detail is logged only.
    LimitsUnavailable(String),
}

impl GatewayError {
    /// The table: status, error type and code of each kind.
    pub fn wire(&self) -> (StatusCode, String, Option<&'static str>) {
        match self {
            GatewayError::Authentication(_) => (StatusCode::UNAUTHORIZED, "authentication_error".into(), None),
            GatewayError::Permission(_) => (StatusCode::FORBIDDEN, "permission_error".into(), None),
            GatewayError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found_error".into(), None),
            GatewayError::UnsupportedRoute(_) => (StatusCode::NOT_FOUND, "invalid_request_error".into(), None),
            GatewayError::InvalidRequest { .. } => (StatusCode::BAD_REQUEST, "invalid_request_error".into(), None),
            GatewayError::BudgetExhausted { level, .. } => (
                StatusCode::PRECONDITION_FAILED,
                format!("{}_exhaust_error", level.error_prefix()),
                Some("04"),
            ),
            GatewayError::ModelNotAllowed(_) => {
                (StatusCode::PRECONDITION_FAILED, "model_not_allowed_error".into(), None)
            }
            GatewayError::RateLimited { level, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                format!("{}_rate_limit_error", level.error_prefix()),
                None,
            ),
            GatewayError::UpstreamClient { status, .. } => (
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY),
                "upstream_error".into(),
                None,
            ),
            GatewayError::Upstream(_) => (StatusCode::BAD_GATEWAY, "upstream_error".into(), None),
            GatewayError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout_error".into(), None),
            GatewayError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error".into(), None),
            GatewayError::LimitsUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "limits_unavailable_error".into(), None)
            }
        }
    }

    pub fn message(&self) -> &str {
        match self {
            GatewayError::Authentication(m)
            | GatewayError::Permission(m)
            | GatewayError::NotFound(m)
            | GatewayError::UnsupportedRoute(m)
            | GatewayError::ModelNotAllowed(m)
            | GatewayError::Upstream(m) => m,
            GatewayError::InvalidRequest { message, .. }
            | GatewayError::BudgetExhausted { message, .. }
            | GatewayError::RateLimited { message, .. }
            | GatewayError::UpstreamClient { message, .. } => message,
            GatewayError::Timeout => "the upstream provider did not answer in time",
            GatewayError::Internal(_) => "internal error",
            GatewayError::LimitsUnavailable(_) => {
                "the limit counters cannot be reached, so no request can be admitted now; retry shortly"
            }
        }
    }

    /// What the request log records as the refusal cause, for analytics.
    pub fn refusal(&self) -> Option<&'static str> {
        match self {
            GatewayError::Authentication(_) => Some("auth"),
            GatewayError::Permission(_) => Some("permission"),
            GatewayError::BudgetExhausted { .. } => Some("budget"),
            GatewayError::RateLimited { .. } => Some("rate_limit"),
            GatewayError::ModelNotAllowed(_) => Some("policy"),
            // Not admitted: not counted when counters are rebuilt from the log.
            GatewayError::LimitsUnavailable(_) => Some("unavailable"),
            _ => None,
        }
    }

    /// The `Retry-After` seconds the answer carries.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            GatewayError::RateLimited { retry_after_secs, .. } => Some(*retry_after_secs),
            GatewayError::LimitsUnavailable(_) => Some(1),
            _ => None,
        }
    }

    /// Logs the detail a 5xx answer does not send.
    pub fn log_detail(&self) {
        match self {
            GatewayError::Internal(detail) => tracing::error!(error = %detail, "gateway request failed"),
            GatewayError::LimitsUnavailable(detail) => {
                tracing::error!(error = %detail, "request refused: the limit counters are unavailable")
            }
            _ => {}
        }
    }

    pub fn body(&self) -> serde_json::Value {
        let (_, kind, code) = self.wire();
        let param = match self {
            GatewayError::InvalidRequest { param, .. } => param.clone(),
            _ => None,
        };
        json!({"error": {"message": self.message(), "type": kind, "param": param, "code": code}})
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        self.log_detail();
        let (status, _, _) = self.wire();
        let mut resp = (status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after() {
            resp.headers_mut().insert("retry-after", HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_table_matches_api_md() {
        for (code, status, ab) in [
            (AdminCode::Validation, 400, "AB01"),
            (AdminCode::Forbidden, 403, "AB03"),
            (AdminCode::Internal, 500, "AB04"),
            (AdminCode::Unauthorized, 401, "AB05"),
            (AdminCode::Conflict, 409, "AB07"),
            (AdminCode::NotFound, 404, "AB08"),
            (AdminCode::Unavailable, 503, "AB09"),
        ] {
            assert_eq!(code.wire(), (StatusCode::from_u16(status).unwrap(), ab));
        }
    }

    #[test]
    fn gateway_table_matches_api_md() {
        let cases = [
            (
                GatewayError::Authentication("x".into()),
                401,
                "authentication_error",
                None,
            ),
            (GatewayError::Permission("x".into()), 403, "permission_error", None),
            (GatewayError::NotFound("x".into()), 404, "not_found_error", None),
            (
                GatewayError::UnsupportedRoute("x".into()),
                404,
                "invalid_request_error",
                None,
            ),
            (
                GatewayError::InvalidRequest {
                    message: "x".into(),
                    param: None,
                },
                400,
                "invalid_request_error",
                None,
            ),
            (
                GatewayError::BudgetExhausted {
                    level: LimitLevel::IntegrationWorkspace,
                    message: "x".into(),
                },
                412,
                "integration_exhaust_error",
                Some("04"),
            ),
            (
                GatewayError::BudgetExhausted {
                    level: LimitLevel::Provider,
                    message: "x".into(),
                },
                412,
                "provider_exhaust_error",
                Some("04"),
            ),
            (
                GatewayError::BudgetExhausted {
                    level: LimitLevel::ApiKey,
                    message: "x".into(),
                },
                412,
                "api_key_exhaust_error",
                Some("04"),
            ),
            (
                GatewayError::BudgetExhausted {
                    level: LimitLevel::Workspace,
                    message: "x".into(),
                },
                412,
                "workspace_exhaust_error",
                Some("04"),
            ),
            (
                GatewayError::ModelNotAllowed("x".into()),
                412,
                "model_not_allowed_error",
                None,
            ),
            (
                GatewayError::RateLimited {
                    level: LimitLevel::Provider,
                    message: "x".into(),
                    retry_after_secs: 3,
                },
                429,
                "provider_rate_limit_error",
                None,
            ),
            (
                GatewayError::UpstreamClient {
                    status: 422,
                    message: "x".into(),
                },
                422,
                "upstream_error",
                None,
            ),
            (GatewayError::Upstream("x".into()), 502, "upstream_error", None),
            (GatewayError::Timeout, 504, "timeout_error", None),
            (
                GatewayError::LimitsUnavailable("x".into()),
                503,
                "limits_unavailable_error",
                None,
            ),
        ];
        for (e, status, kind, code) in cases {
            let (s, k, c) = e.wire();
            assert_eq!((s.as_u16(), k.as_str(), c), (status, kind, code), "{e:?}");
            assert_eq!(e.body()["error"]["type"], kind);
        }
    }

    #[test]
    fn rate_limited_sets_retry_after_and_internal_hides_detail() {
        let r = GatewayError::RateLimited {
            level: LimitLevel::Workspace,
            message: "x".into(),
            retry_after_secs: 7,
        }
        .into_response();
        assert_eq!(r.headers()["retry-after"], "7");
        let e = GatewayError::Internal("secret detail".into());
        assert!(!e.body().to_string().contains("secret detail"));
        let e = GatewayError::LimitsUnavailable("redis://:secret@10.0.0.1".into());
        assert!(!e.body().to_string().contains("secret"));
        assert_eq!(e.into_response().headers()["retry-after"], "1");
        let a = AdminError::internal("db exploded");
        assert_eq!(a.message, "internal server error");
    }
}
