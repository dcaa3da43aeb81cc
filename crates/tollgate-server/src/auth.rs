//! Authentication and scopes.
//!
//! The key comes from `x-portkey-api-key`, else `Authorization: Bearer`. It is
//! hashed (SHA-256) and looked up in the snapshot: the map is keyed by the
//! hash of a 256-bit random secret, so lookup timing reveals nothing usable
//! about the key, and the final comparison is constant-time anyway.

use crate::error::AdminError;
use crate::snapshot::{KeyEntry, Snapshot};
use crate::state::SharedState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tollgate_core::records::KeyType;

/// Scopes a workspace key may hold.
pub const SCOPES: &[&str] = &[
    "completions.write",
    "providers.read",
    "providers.write",
    "providers.*",
    "workspace_integrations.read",
    "workspace_integrations.write",
    "workspace_integrations.*",
    "analytics.view",
    "logs.view",
    "configs.read",
    "configs.write",
    "configs.*",
];

/// The default scopes of a workspace key.
pub const DEFAULT_SCOPES: &[&str] = &["completions.write"];

/// Why a key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Invalid,
    Expired,
}

impl AuthFailure {
    pub fn message(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing API key: send x-portkey-api-key, Authorization: Bearer or x-api-key",
            AuthFailure::Invalid => "invalid API key",
            AuthFailure::Expired => "API key has expired",
        }
    }
}

/// The raw key from the request headers.
pub fn key_from_headers(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-portkey-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim());
    }
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|auth| auth.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    // `x-api-key` is how the anthropic SDK (and Claude Code) send a key.
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim))
}

/// Finds and checks the key of a request in `snap`, at time `now`.
pub fn authenticate(snap: &Snapshot, now: DateTime<Utc>, headers: &HeaderMap) -> Result<Arc<KeyEntry>, AuthFailure> {
    let key = key_from_headers(headers)
        .filter(|k| !k.is_empty())
        .ok_or(AuthFailure::Missing)?;
    let hash = tollgate_core::ids::hash_api_key(key);
    let entry = snap.key_by_hash(&hash).ok_or(AuthFailure::Invalid)?;
    if !bool::from(entry.hash.ct_eq(&hash)) {
        return Err(AuthFailure::Invalid);
    }
    if entry.record.expires_at.is_some_and(|t| t <= now) {
        return Err(AuthFailure::Expired);
    }
    Ok(entry.clone())
}

/// Does `scopes` grant `wanted`? `area.*` grants every scope of the area, and
/// `area.write` implies `area.read`.
pub fn grants(scopes: &[String], wanted: &str) -> bool {
    let (area, action) = wanted.split_once('.').unwrap_or((wanted, ""));
    scopes.iter().any(|s| {
        s == wanted
            || s.strip_suffix(".*").is_some_and(|a| a == area)
            || (action == "read" && s.strip_prefix(area).is_some_and(|rest| rest == ".write"))
    })
}

/// An authenticated admin-API caller.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<KeyEntry>);

impl Caller {
    pub fn id(&self) -> &str {
        &self.0.record.id
    }

    pub fn is_org(&self) -> bool {
        self.0.record.key_type == KeyType::Organisation
    }

    /// The workspace of a workspace key.
    pub fn workspace_id(&self) -> Option<&str> {
        match self.0.record.key_type {
            KeyType::Organisation => None,
            KeyType::Workspace => self.0.record.workspace_id.as_deref(),
        }
    }

    /// The caller as the control-plane service sees it.
    pub fn principal(&self) -> crate::control::Caller {
        crate::control::Caller::of_key(&self.0.record)
    }

    /// Organisation keys only.
    pub fn require_org(&self) -> Result<(), AdminError> {
        self.principal().require_org()
    }

    /// An organisation key, or a workspace key with `scope`.
    pub fn require_scope(&self, scope: &str) -> Result<(), AdminError> {
        self.principal().require_scope(scope)
    }

    /// May this caller act on objects of `workspace_id`?
    pub fn require_workspace(&self, workspace_id: &str) -> Result<(), AdminError> {
        self.principal().require_workspace(workspace_id)
    }
}

impl FromRequestParts<SharedState> for Caller {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, Self::Rejection> {
        authenticate(&state.snapshot(), state.now(), &parts.headers)
            .map(Caller)
            .map_err(|f| AdminError::unauthorized(f.message()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn scope_rules() {
        assert!(grants(&s(&["providers.*"]), "providers.write"));
        assert!(grants(&s(&["providers.write"]), "providers.read"));
        assert!(!grants(&s(&["providers.read"]), "providers.write"));
        assert!(!grants(&s(&["completions.write"]), "logs.view"));
        assert!(grants(&s(&["logs.view"]), "logs.view"));
        assert!(!grants(&s(&["providers_x.*"]), "providers.read"));
    }

    #[test]
    fn keys_come_from_either_header() {
        let mut h = HeaderMap::new();
        assert_eq!(key_from_headers(&h), None);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(key_from_headers(&h), Some("abc"));
        h.insert("x-portkey-api-key", "def".parse().unwrap());
        assert_eq!(key_from_headers(&h), Some("def"));
        let mut basic = HeaderMap::new();
        basic.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(key_from_headers(&basic), None);
        basic.insert("x-api-key", " ghi ".parse().unwrap());
        assert_eq!(key_from_headers(&basic), Some("ghi"));
        h.insert("x-api-key", "jkl".parse().unwrap());
        assert_eq!(key_from_headers(&h), Some("def"));
    }
}
