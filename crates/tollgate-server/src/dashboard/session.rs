//! Sign-in and sessions.
//!
//! Signing in with an API key creates a server-side session: a random
//! 256-bit id in an HttpOnly, SameSite=Strict cookie (Secure when the
//! request came over HTTPS), scoped to the base path. The key stays on the
//! server, in a zeroized buffer, and is what the dashboard sends to the API.
//! Each session has its own CSRF token, checked on every POST
//! ([`super::Post`]); a session idle for [`IDLE`] is gone.

use super::{html, Dash, Post};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Duration, Utc};
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tollgate_core::secrets::Secret;

pub const COOKIE: &str = "tollgate_session";
/// A session unused this long is signed out.
pub const IDLE: Duration = Duration::minutes(30);

/// One signed-in browser.
#[derive(Clone)]
pub struct Session {
    pub id: Arc<str>,
    /// The API key, only ever sent to the in-process API.
    pub key: Arc<Secret<String>>,
    pub csrf: Arc<str>,
    /// The key's workspace; `None` for an organisation key.
    pub workspace_id: Option<String>,
    pub key_name: String,
}

impl Session {
    pub fn is_org(&self) -> bool {
        self.workspace_id.is_none()
    }

    pub fn csrf_matches(&self, sent: &str) -> bool {
        bool::from(self.csrf.as_bytes().ct_eq(sent.as_bytes()))
    }
}

struct Entry {
    session: Session,
    last_seen: DateTime<Utc>,
}

/// Every live session, by id.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<Arc<str>, Entry>>,
}

impl Sessions {
    /// Starts a session; drops sessions that have idled out.
    pub fn create(&self, key: String, workspace_id: Option<String>, key_name: String, now: DateTime<Utc>) -> Session {
        let session = Session {
            id: tollgate_core::ids::random_hex(32).into(),
            key: Arc::new(Secret::new(key)),
            csrf: tollgate_core::ids::random_hex(32).into(),
            workspace_id,
            key_name,
        };
        let mut map = self.map.lock();
        map.retain(|_, e| now - e.last_seen < IDLE);
        map.insert(
            session.id.clone(),
            Entry {
                session: session.clone(),
                last_seen: now,
            },
        );
        session
    }

    /// The live session `id`, its idle time restarted.
    pub fn touch(&self, id: &str, now: DateTime<Utc>) -> Option<Session> {
        let mut map = self.map.lock();
        let entry = map.get_mut(id)?;
        if now - entry.last_seen >= IDLE {
            map.remove(id);
            return None;
        }
        entry.last_seen = now;
        Some(entry.session.clone())
    }

    pub fn remove(&self, id: &str) {
        self.map.lock().remove(id);
    }

    /// Ends every session of a key that no longer authenticates.
    pub fn remove_key(&self, key: &str) {
        self.map.lock().retain(|_, e| e.session.key.expose().as_str() != key);
    }

    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The session id from the request's cookies.
pub fn cookie_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

fn cookie(d: &Dash, value: &str, max_age: Option<i64>, secure: bool) -> Option<HeaderValue> {
    let path = if d.base.is_empty() { "/" } else { d.base.as_str() };
    let mut c = format!("{COOKIE}={value}; Path={path}; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if secure {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).ok()
}

#[derive(Debug, Default, Deserialize)]
pub struct SignInQuery {
    #[serde(default)]
    expired: Option<String>,
}

pub async fn sign_in_page(State(d): State<Dash>, Query(q): Query<SignInQuery>) -> Response {
    let note = q
        .expired
        .map(|_| "Your session ended or its key stopped working. Sign in again.");
    html::sign_in(&d, note, None).into_response()
}

pub async fn sign_in(State(d): State<Dash>, headers: HeaderMap, axum::Form(form): axum::Form<SignInForm>) -> Response {
    let key = form.api_key.trim().to_owned();
    let mut auth = HeaderMap::new();
    let Ok(value) = HeaderValue::from_str(&key) else {
        return refuse(&d, "invalid API key");
    };
    auth.insert("x-portkey-api-key", value);
    let entry = match crate::auth::authenticate(&d.state.snapshot(), d.state.now(), &auth) {
        Ok(e) => e,
        Err(f) => return refuse(&d, f.message()),
    };
    let workspace_id = match entry.record.key_type {
        tollgate_core::records::KeyType::Organisation => None,
        tollgate_core::records::KeyType::Workspace => entry.record.workspace_id.clone(),
    };
    let session = d
        .sessions
        .create(key, workspace_id, entry.record.name.clone(), d.state.now());
    let mut resp = Redirect::to(&d.url("/ui/integrations")).into_response();
    if let Some(c) = cookie(&d, &session.id, None, over_https(&headers)) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    resp
}

/// Does the session's key still authenticate?
pub fn key_still_valid(state: &crate::state::SharedState, s: &Session) -> bool {
    let snap = state.snapshot();
    let hash = tollgate_core::ids::hash_api_key(s.key.expose());
    snap.key_by_hash(&hash)
        .is_some_and(|e| e.record.expires_at.is_none_or(|t| t > state.now()))
}

fn refuse(d: &Dash, message: &str) -> Response {
    (StatusCode::UNAUTHORIZED, html::sign_in(d, None, Some(message))).into_response()
}

#[derive(Debug, Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    api_key: String,
}

pub async fn sign_out(State(d): State<Dash>, headers: HeaderMap, post: Post) -> Response {
    d.sessions.remove(&post.session.id);
    let mut resp = Redirect::to(&d.url("/ui/sign-in")).into_response();
    if let Some(c) = cookie(&d, "", Some(0), over_https(&headers)) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_idle_out() {
        let s = Sessions::default();
        let t0 = Utc::now();
        let a = s.create("k".into(), None, "n".into(), t0);
        assert_eq!(a.id.len(), 64);
        assert!(s.touch(&a.id, t0 + Duration::minutes(29)).is_some());
        // Touching restarted the idle time.
        assert!(s.touch(&a.id, t0 + Duration::minutes(58)).is_some());
        assert!(s.touch(&a.id, t0 + Duration::minutes(89)).is_none());
        assert!(s.is_empty());
        assert!(s.touch("nope", t0).is_none());
    }

    #[test]
    fn csrf_is_compared_whole() {
        let s = Sessions::default().create("k".into(), None, "n".into(), Utc::now());
        let token = s.csrf.to_string();
        assert!(s.csrf_matches(&token));
        assert!(!s.csrf_matches(&token[..10]));
        assert!(!s.csrf_matches(""));
    }

    #[test]
    fn cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; tollgate_session=abc; b=2"),
        );
        assert_eq!(cookie_id(&h).as_deref(), Some("abc"));
        assert_eq!(cookie_id(&HeaderMap::new()), None);
    }
}
