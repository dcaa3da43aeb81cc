//! Field rules every control-plane object shares: names, free text, slugs,
//! configuration values, URLs, and the immutability rule for limits.

use super::{RateRequest, UsageRequest};
use crate::error::AdminError;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tollgate_core::records::{LimitSetting, Limits};

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

/// `defaults` (of a workspace or key): an object, or null.
pub fn check_defaults(d: &Option<Value>) -> Result<(), AdminError> {
    match d {
        None | Some(Value::Null) | Some(Value::Object(_)) => Ok(()),
        Some(_) => Err(AdminError::validation("defaults must be an object")),
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

/// Merges a requested budget and rate limit into `current`: an invalid one
/// is refused (the budget's error first), then each is merged under
/// [`merge_limit`]. With `reset_usage`, the budget counts afresh from `now`.
pub fn merge_limits(
    current: &Limits,
    usage: &UsageRequest,
    rate: &RateRequest,
    reset: bool,
    now: DateTime<Utc>,
) -> Result<Limits, AdminError> {
    let usage = usage.get()?;
    let rate = rate.get()?;
    let mut limits = Limits {
        usage: merge_limit(&current.usage, usage, "usage limit", now)?,
        rate: merge_limit(&current.rate, rate, "rate limit", now)?,
    };
    if reset {
        reset_usage(&mut limits, now);
    }
    Ok(limits)
}

/// Moves a level's usage `set_at` to `now` (`reset_usage: true`): the budget
/// counts afresh from now, in a new counter window.
pub fn reset_usage(l: &mut Limits, now: DateTime<Utc>) {
    if let Some(u) = &mut l.usage {
        u.set_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Requested;
    use crate::error::AdminCode;
    use chrono::Duration;
    use tollgate_core::limits::{RateKind, RateLimit, RateUnit};

    fn r(v: u64) -> RateLimit {
        RateLimit {
            kind: RateKind::Requests,
            unit: RateUnit::Rpm,
            value: v,
        }
    }

    #[test]
    fn limits_are_immutable_once_set() {
        let now = Utc::now();
        let set = merge_limit(&None, Some(r(5)), "rate limit", now).unwrap();
        assert_eq!(set.as_ref().unwrap().limit, r(5));
        assert_eq!(
            merge_limit(&set, Some(r(5)), "rate limit", now).unwrap(),
            set,
            "resending is not an edit"
        );
        assert_eq!(merge_limit(&set, None, "rate limit", now).unwrap(), set);
        let e = merge_limit(&set, Some(r(6)), "rate limit", now).unwrap_err();
        assert_eq!(e.code, AdminCode::Conflict);
    }

    #[test]
    fn merged_limits_report_the_budget_first_and_reset_on_request() {
        let t0 = Utc::now();
        let usage: UsageRequest = serde_json::from_value(serde_json::json!({"credit_limit": 10})).unwrap();
        let set = merge_limits(&Limits::default(), &usage, &Requested::Set(r(5)), false, t0).unwrap();
        assert_eq!(set.usage.as_ref().unwrap().set_at, t0);
        let later = t0 + Duration::hours(1);
        let reset = merge_limits(&set, &Requested::Absent, &Requested::Absent, true, later).unwrap();
        assert_eq!(reset.usage.as_ref().unwrap().set_at, later);
        assert_eq!(reset.rate, set.rate, "a reset leaves the rate limit alone");
        let both_bad = merge_limits(
            &set,
            &Requested::Invalid("bad budget".into()),
            &Requested::Invalid("bad rate".into()),
            false,
            later,
        )
        .unwrap_err();
        assert_eq!(both_bad.message, "bad budget");
        let e = merge_limits(&set, &Requested::Absent, &Requested::Set(r(7)), false, later).unwrap_err();
        assert_eq!(
            e.message,
            "the rate limit is already set and cannot be edited; remove the object and create it again"
        );
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
        assert!(check_defaults(&Some(serde_json::json!({"a": 1}))).is_ok());
        assert_eq!(
            check_defaults(&Some(serde_json::json!([1]))).unwrap_err().message,
            "defaults must be an object"
        );
    }
}
