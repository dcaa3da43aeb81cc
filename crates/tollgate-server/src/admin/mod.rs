//! The admin API (control plane): routes and the helpers every admin
//! handler shares: body parsing with admin errors, pagination, list shapes,
//! and the immutability rule for limits.

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
use tollgate_core::limits::{parse_rate_limit, parse_usage_limit, RateLimit, UsageLimit};
use tollgate_core::records::{LimitSetting, Limits};

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

/// Longest display name (characters).
pub const MAX_NAME: usize = 255;
/// Longest description or note (characters).
pub const MAX_DESCRIPTION: usize = 2_000;
/// Longest URL or other configuration value (bytes).
pub const MAX_FIELD: usize = 2_048;

fn has_control(v: &str, allow_newlines: bool) -> bool {
    v.chars()
        .any(|c| c.is_control() && !(allow_newlines && matches!(c, '\n' | '\r' | '\t')))
}

/// A display name: 1 to [`MAX_NAME`] characters once trimmed, no control
/// characters. Returns it trimmed.
pub fn check_name(field: &str, v: &str) -> Result<String, AdminError> {
    let t = v.trim();
    if t.is_empty() || t.chars().count() > MAX_NAME {
        return Err(AdminError::validation(format!(
            "{field} must be 1 to {MAX_NAME} characters"
        )));
    }
    if has_control(t, false) {
        return Err(AdminError::validation(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(t.to_owned())
}

/// Free text (a description, a note): at most [`MAX_DESCRIPTION`]
/// characters; line breaks and tabs allowed, other control characters not.
pub fn check_text(field: &str, v: Option<String>) -> Result<Option<String>, AdminError> {
    if let Some(t) = &v {
        if t.chars().count() > MAX_DESCRIPTION {
            return Err(AdminError::validation(format!(
                "{field} must be at most {MAX_DESCRIPTION} characters"
            )));
        }
        if has_control(t, true) {
            return Err(AdminError::validation(format!(
                "{field} must not contain control characters other than line breaks and tabs"
            )));
        }
    }
    Ok(v)
}

/// A slug: 1 to 64 of `[a-zA-Z0-9_-]`.
pub fn check_slug(field: &str, v: &str) -> Result<(), AdminError> {
    if tollgate_core::ids::is_valid_slug(v) {
        Ok(())
    } else {
        Err(AdminError::validation(format!(
            "{field} must be 1 to {} characters of a-z, A-Z, 0-9, '_' and '-'",
            tollgate_core::ids::MAX_SLUG_LEN
        )))
    }
}

/// A single-line configuration value: at most [`MAX_FIELD`] bytes, no
/// control characters.
pub fn check_field(field: &str, v: &str) -> Result<(), AdminError> {
    if v.len() > MAX_FIELD {
        return Err(AdminError::validation(format!(
            "{field} must be at most {MAX_FIELD} bytes"
        )));
    }
    if has_control(v, false) {
        return Err(AdminError::validation(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(())
}

/// A base URL: an `http` or `https` URL with a host, written without
/// spaces or control characters.
pub fn check_url(field: &str, v: &str) -> Result<(), AdminError> {
    check_field(field, v)?;
    let bad = || {
        AdminError::validation(format!(
            "{field} must be an http(s) URL with a host, e.g. https://api.example.com/v1"
        ))
    };
    if v.contains(char::is_whitespace) {
        return Err(bad());
    }
    match url::Url::parse(v) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty()) => Ok(()),
        _ => Err(bad()),
    }
}

/// Applies a requested limit change under the immutability rule: setting a
/// limit where none is set is allowed; resending the same limit is not an
/// edit; anything else that changes a set limit is a conflict (AB07).
/// `None` (field absent or null) leaves the current setting.
pub fn merge_limit<T: PartialEq + Copy>(
    current: &Option<LimitSetting<T>>,
    requested: Option<T>,
    what: &str,
    now: DateTime<Utc>,
) -> Result<Option<LimitSetting<T>>, AdminError> {
    match (current, requested) {
        (_, None) => Ok(current.clone()),
        (None, Some(limit)) => Ok(Some(LimitSetting { limit, set_at: now })),
        (Some(c), Some(limit)) if c.limit == limit => Ok(current.clone()),
        (Some(_), Some(_)) => Err(AdminError::conflict(format!(
            "the {what} is already set and cannot be edited; remove the object and create it again"
        ))),
    }
}

/// Parses `usage_limits` and `rate_limits` (each an object or a one-element
/// array) and merges them into `current`.
pub fn merge_limits(
    current: &Limits,
    usage: Option<&Value>,
    rate: Option<&Value>,
    now: DateTime<Utc>,
) -> Result<Limits, AdminError> {
    let usage: Option<UsageLimit> = parse_usage_limit(usage).map_err(|e| AdminError::validation(e.0))?;
    let rate: Option<RateLimit> = parse_rate_limit(rate).map_err(|e| AdminError::validation(e.0))?;
    Ok(Limits {
        usage: merge_limit(&current.usage, usage, "usage limit", now)?,
        rate: merge_limit(&current.rate, rate, "rate limit", now)?,
    })
}

/// Moves a level's usage `set_at` to `now` (`reset_usage: true`): the budget
/// counts afresh from now, in a new counter window.
pub fn reset_usage(l: &mut Limits, now: DateTime<Utc>) {
    if let Some(u) = &mut l.usage {
        u.set_at = now;
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

/// Parses an optional RFC 3339 time field.
pub fn parse_time(v: Option<&Value>, field: &str) -> Result<Option<DateTime<Utc>>, AdminError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| AdminError::validation(format!("{field} must be an ISO 8601 / RFC 3339 time"))),
        Some(_) => Err(AdminError::validation(format!("{field} must be a string time"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_immutable_once_set() {
        let now = Utc::now();
        let r = |v: u64| RateLimit {
            kind: tollgate_core::limits::RateKind::Requests,
            unit: tollgate_core::limits::RateUnit::Rpm,
            value: v,
        };
        let set = merge_limit(&None, Some(r(5)), "rate limit", now).unwrap();
        assert_eq!(set.as_ref().unwrap().limit, r(5));
        assert_eq!(
            merge_limit(&set, Some(r(5)), "rate limit", now).unwrap(),
            set,
            "resending is not an edit"
        );
        assert_eq!(merge_limit(&set, None, "rate limit", now).unwrap(), set);
        let e = merge_limit(&set, Some(r(6)), "rate limit", now).unwrap_err();
        assert_eq!(e.code, crate::error::AdminCode::Conflict);
    }

    #[test]
    fn text_fields_are_bounded_and_clean() {
        assert_eq!(check_name("name", "  Team A ").unwrap(), "Team A");
        for bad in ["", "   ", "a\0b", "a\nb", "\u{7}"] {
            assert!(check_name("name", bad).is_err(), "{bad:?}");
        }
        assert!(check_name("name", &"é".repeat(255)).is_ok());
        let e = check_name("name", &"x".repeat(256)).unwrap_err();
        assert!(e.message.contains("name"), "{}", e.message);
        assert!(check_text("description", Some("two\nlines\tok".into())).is_ok());
        assert!(check_text("description", Some("nul\0".into())).is_err());
        assert!(check_text("description", Some("x".repeat(2001))).is_err());
        assert!(check_text("description", None).is_ok());
        assert!(check_slug("slug", "ok-slug_1").is_ok());
        for bad in ["", "a b", "a/b", &"s".repeat(65)] {
            assert!(check_slug("slug", bad).is_err());
        }
        for good in [
            "https://api.example.com/v1",
            "http://127.0.0.1:8080",
            "http://[::1]:1/x",
        ] {
            assert!(check_url("custom_host", good).is_ok(), "{good}");
        }
        for bad in [
            "ftp://x.example",
            "https://",
            "not a url",
            "file:///etc/passwd",
            "https://exa\nmple.com",
            "https://example.com/\0",
            "unix:/var/run/x.sock",
            "mailto:a@b.c",
        ] {
            assert!(check_url("custom_host", bad).is_err(), "{bad:?}");
        }
        assert!(check_url("custom_host", &format!("https://x.example/{}", "a".repeat(3000))).is_err());
    }

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
