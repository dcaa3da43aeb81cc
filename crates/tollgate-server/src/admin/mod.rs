//! The admin API (control plane) over HTTP: routes, and the helpers every
//! admin handler shares: body parsing with admin errors, pagination, list
//! shapes and the wire forms of limits. The rules themselves live in the
//! control-plane service ([`crate::control`]); handlers map HTTP to it.

pub mod api_keys;
pub mod configs;
pub mod integrations;
pub mod misc;
pub mod providers;
pub mod workspaces;

use crate::error::AdminError;
use crate::state::SharedState;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tollgate_core::records::Limits;

pub fn router() -> Router<SharedState> {
    Router::new()
        .route("/v1/admin/workspaces", get(workspaces::list).post(workspaces::create))
        .route(
            "/v1/admin/workspaces/{id}",
            get(workspaces::retrieve)
                .put(workspaces::update)
                .delete(workspaces::delete),
        )
        .route("/v1/api-keys", get(api_keys::list))
        .route(
            "/v1/api-keys/{id}",
            get(api_keys::retrieve).put(api_keys::update).delete(api_keys::delete),
        )
        .route("/v1/api-keys/{id}/rotate", post(api_keys::rotate))
        .route("/v1/api-keys/{kind}/{sub_kind}", post(api_keys::create))
        .route("/v1/ai-providers", get(misc::ai_providers))
        .route("/v1/integrations", get(integrations::list).post(integrations::create))
        .route(
            "/v1/integrations/{slug}",
            get(integrations::retrieve)
                .put(integrations::update)
                .delete(integrations::delete),
        )
        .route(
            "/v1/integrations/{slug}/models",
            get(integrations::list_models)
                .put(integrations::put_models)
                .delete(integrations::delete_models),
        )
        .route(
            "/v1/integrations/{slug}/workspaces",
            get(integrations::list_workspaces).put(integrations::put_workspaces),
        )
        .route("/v1/providers", get(providers::list).post(providers::create))
        .route(
            "/v1/providers/{slug}",
            get(providers::retrieve)
                .put(providers::update)
                .delete(providers::delete),
        )
        .route("/v1/configs", get(configs::list).post(configs::create))
        .route(
            "/v1/configs/{slug}",
            get(configs::retrieve).put(configs::update).delete(configs::delete),
        )
        .route("/v1/configs/{slug}/versions", get(configs::versions))
        .route("/v1/audit-logs", get(misc::audit_logs))
        .route("/v1/logs", get(misc::logs))
}

/// A JSON body whose rejection is an admin error (AB01), never axum's text.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = AdminError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<Value>::from_request(req, state).await {
            Ok(axum::Json(v)) => {
                if !v.is_object() {
                    return Err(AdminError::validation("request body must be a JSON object"));
                }
                serde_json::from_value(v)
                    .map(Body)
                    .map_err(|e| AdminError::validation(format!("invalid request body: {e}")))
            }
            Err(JsonRejection::MissingJsonContentType(_)) => Err(AdminError::validation(
                "request body must be JSON (Content-Type: application/json)",
            )),
            Err(JsonRejection::BytesRejection(e)) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(AdminError::validation("request body is too large"))
            }
            Err(e) => Err(AdminError::validation(format!(
                "malformed JSON body: {}",
                e.body_text()
            ))),
        }
    }
}

/// `current_page` (from 0) and `page_size`; the SDK's camelCase spellings too.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Page {
    #[serde(default, alias = "currentPage")]
    pub current_page: Option<String>,
    #[serde(default, alias = "pageSize")]
    pub page_size: Option<String>,
}

impl Page {
    pub const DEFAULT_SIZE: usize = 50;
    pub const MAX_SIZE: usize = 1000;

    /// (offset, size), validated. A page beyond the end, however far (even
    /// beyond any integer type), is an empty page: the offset saturates.
    pub fn bounds(&self) -> Result<(usize, usize), AdminError> {
        let num = |v: &Option<String>, name: &str, default: usize| -> Result<usize, AdminError> {
            match v.as_deref().map(str::trim) {
                None => Ok(default),
                Some(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                    Ok(s.parse::<usize>().unwrap_or(usize::MAX))
                }
                Some(_) => Err(AdminError::validation(format!("{name} must be a whole number"))),
            }
        };
        let page = num(&self.current_page, "current_page", 0)?;
        let size = num(&self.page_size, "page_size", Self::DEFAULT_SIZE)?;
        if size == 0 || size > Self::MAX_SIZE {
            return Err(AdminError::validation(format!(
                "page_size must be between 1 and {}",
                Self::MAX_SIZE
            )));
        }
        Ok((page.saturating_mul(size), size))
    }

    /// The offset as SQL takes it (saturated: past any table's end).
    pub fn sql_offset(offset: usize) -> i64 {
        i64::try_from(offset).unwrap_or(i64::MAX)
    }

    /// One page of `items` as `{"object": "list", "total", "data"}`.
    pub fn list(&self, items: Vec<Value>) -> Result<Value, AdminError> {
        let (offset, size) = self.bounds()?;
        let total = items.len();
        let data: Vec<Value> = items.into_iter().skip(offset).take(size).collect();
        Ok(json!({"object": "list", "total": total, "data": data}))
    }
}

/// The wire form of a level's usage limit: an object or null.
pub fn usage_limit_json(l: &Limits, now: DateTime<Utc>) -> Value {
    l.usage.as_ref().map(|u| u.limit.to_json(now)).unwrap_or(Value::Null)
}

/// The wire form of a level's rate limit as an object or null.
pub fn rate_limit_json(l: &Limits) -> Value {
    l.rate.as_ref().map(|r| json!(r.limit)).unwrap_or(Value::Null)
}

/// The wire form of a level's rate limit as a (zero- or one-element) array.
pub fn rate_limits_array(l: &Limits) -> Value {
    Value::Array(l.rate.as_ref().map(|r| json!(r.limit)).into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_validated() {
        let p = Page {
            current_page: Some("2".into()),
            page_size: Some("10".into()),
        };
        assert_eq!(p.bounds().unwrap(), (20, 10));
        assert!(Page {
            page_size: Some("0".into()),
            ..Default::default()
        }
        .bounds()
        .is_err());
        for bad in ["x", "-1", "1.5", ""] {
            assert!(Page {
                current_page: Some(bad.into()),
                ..Default::default()
            }
            .bounds()
            .is_err());
        }
        for far in ["1000000000000000", "99999999999999999999999999999999"] {
            let (offset, _) = Page {
                current_page: Some(far.into()),
                ..Default::default()
            }
            .bounds()
            .unwrap();
            assert!(offset >= 1_000_000_000_000_000);
            assert!(Page::sql_offset(offset) > 0);
        }
        let l = Page {
            current_page: Some("1".into()),
            page_size: Some("2".into()),
        }
        .list((0..5).map(|i| json!(i)).collect())
        .unwrap();
        assert_eq!(l, json!({"object":"list","total":5,"data":[2,3]}));
    }
}
