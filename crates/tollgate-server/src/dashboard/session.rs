//! Sign-in and sessions.
//!
//! Signing in with an API key creates a session: a random 256-bit id in an
//! HttpOnly, SameSite=Strict cookie (Secure when the request came over
//! HTTPS), scoped to the base path. Sessions live in the database
//! (`tollgate_store::sessions`), so every replica behind a load balancer
//! serves every session: the database holds the id's SHA-256 only, and the
//! key the session acts as sealed under the master key. The key is opened
//! into a zeroized buffer per request and is what the dashboard sends to the
//! API. Each session has its own CSRF token, checked on every POST
//! ([`super::Post`]); a session idle for [`IDLE`] is gone.

use super::{html, ApiError, Dash, PageError, Post};
use crate::state::SharedState;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tollgate_core::ids::{hash_api_key, random_hex};
use tollgate_core::secrets::Secret;
use tollgate_store::secrets::{self, SealedSecret};
use tollgate_store::sessions::SessionRow;
use tollgate_store::StoreError;

pub const COOKIE: &str = "tollgate_session";
/// A session unused this long is signed out.
pub const IDLE: Duration = Duration::minutes(30);
/// A session's last use is written at most this often (a page view is a
/// read, not a write, most of the time); idle expiry is exact to this.
const TOUCH_EVERY: Duration = Duration::minutes(1);

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

/// What the database knows a session by: the SHA-256 of its id.
fn id_hash(id: &str) -> String {
    hex::encode(hash_api_key(id))
}

/// The sealed key's associated data: a sealed key copied to another
/// session's row does not open.
fn aad(id_hash: &str) -> String {
    format!("dashboard_session:{id_hash}")
}

/// Every live session, in the database.
pub struct Sessions {
    state: SharedState,
}

impl Sessions {
    pub fn new(state: SharedState) -> Sessions {
        Sessions { state }
    }

    /// Starts a session; drops sessions that have idled out.
    pub async fn create(
        &self,
        key: String,
        workspace_id: Option<String>,
        key_name: String,
        now: DateTime<Utc>,
    ) -> Result<Session, StoreError> {
        let id = random_hex(32);
        let hash = id_hash(&id);
        let sealed = secrets::seal(&self.state.master_key(), &aad(&hash), &key)
            .map_err(|e| StoreError::Corrupt("dashboard session", e.to_string()))?;
        let csrf = random_hex(32);
        let table = self.state.store.dashboard_sessions();
        table.purge_idle(now - IDLE).await?;
        table
            .insert(&SessionRow {
                id_hash: hash,
                key_hash: hex::encode(hash_api_key(&key)),
                sealed_key: sealed.to_string(),
                csrf: csrf.clone(),
                workspace_id: workspace_id.clone(),
                key_name: key_name.clone(),
                last_seen: now,
            })
            .await?;
        Ok(Session {
            id: id.into(),
            key: Arc::new(Secret::new(key)),
            csrf: csrf.into(),
            workspace_id,
            key_name,
        })
    }

    /// The live session `id`, its idle time restarted. A session whose key
    /// no longer opens (the master key was rotated) is ended.
    pub async fn touch(&self, id: &str, now: DateTime<Utc>) -> Result<Option<Session>, StoreError> {
        let hash = id_hash(id);
        let table = self.state.store.dashboard_sessions();
        let Some(row) = table.get(&hash).await? else {
            return Ok(None);
        };
        let opened = SealedSecret::parse(&row.sealed_key)
            .and_then(|sealed| secrets::open(&self.state.master_key(), &aad(&hash), &sealed));
        let key = match opened {
            Ok(key) if now - row.last_seen < IDLE => key,
            _ => {
                table.remove(&hash).await?;
                return Ok(None);
            }
        };
        if now - row.last_seen >= TOUCH_EVERY {
            table.touch(&hash, now).await?;
        }
        Ok(Some(Session {
            id: id.into(),
            key: Arc::new(key),
            csrf: row.csrf.into(),
            workspace_id: row.workspace_id,
            key_name: row.key_name,
        }))
    }

    pub async fn remove(&self, id: &str) -> Result<(), StoreError> {
        self.state.store.dashboard_sessions().remove(&id_hash(id)).await
    }

    /// Ends every session of a key that no longer authenticates.
    pub async fn remove_key(&self, key: &str) -> Result<(), StoreError> {
        self.state
            .store
            .dashboard_sessions()
            .remove_key(&hex::encode(hash_api_key(key)))
            .await
            .map(drop)
    }
}

/// The answer when the session store cannot be read or written.
pub fn unavailable(d: &Dash, e: &StoreError) -> PageError {
    tracing::warn!(error = %e, "dashboard sessions are unavailable");
    PageError::Api(
        d.clone(),
        ApiError {
            status: 503,
            message: "The database is unavailable, so sessions cannot be checked. Try again shortly.".into(),
        },
    )
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
    let session = match d
        .sessions
        .create(key, workspace_id, entry.record.name.clone(), d.state.now())
        .await
    {
        Ok(s) => s,
        Err(e) => return unavailable(&d, &e).into_response(),
    };
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
    if let Err(e) = d.sessions.remove(&post.session.id).await {
        return unavailable(&d, &e).into_response();
    }
    let mut resp = Redirect::to(&d.url("/ui/sign-in")).into_response();
    if let Some(c) = cookie(&d, "", Some(0), over_https(&headers)) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sessions() -> (tempfile::TempDir, Sessions) {
        let dir = tempfile::tempdir().unwrap();
        let state = crate::control::testing::app_state_on(dir.path(), None).await;
        (dir, Sessions::new(state))
    }

    #[tokio::test]
    async fn sessions_idle_out() {
        let (_dir, s) = sessions().await;
        let t0 = Utc::now();
        let a = s.create("k".into(), None, "n".into(), t0).await.unwrap();
        assert_eq!(a.id.len(), 64);
        let back = s.touch(&a.id, t0 + Duration::minutes(29)).await.unwrap().unwrap();
        assert_eq!(back.key.expose().as_str(), "k");
        assert_eq!(&*back.csrf, &*a.csrf);
        // Touching restarted the idle time.
        assert!(s.touch(&a.id, t0 + Duration::minutes(58)).await.unwrap().is_some());
        assert!(s.touch(&a.id, t0 + Duration::minutes(89)).await.unwrap().is_none());
        assert!(
            s.touch(&a.id, t0).await.unwrap().is_none(),
            "an idled-out session is gone"
        );
        assert!(s.touch("nope", t0).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn the_database_holds_neither_the_session_id_nor_the_key() {
        let (_dir, s) = sessions().await;
        let t0 = Utc::now();
        let a = s
            .create("sk-plain".into(), Some("ws".into()), "n".into(), t0)
            .await
            .unwrap();
        let table = s.state.store.dashboard_sessions();
        assert!(table.get(&a.id).await.unwrap().is_none());
        let row = table.get(&id_hash(&a.id)).await.unwrap().unwrap();
        assert!(!row.sealed_key.contains("sk-plain"));
        assert_eq!(row.workspace_id.as_deref(), Some("ws"));
        // A sealed key moved to another session's row does not open there.
        let b = s.create("other".into(), None, "n".into(), t0).await.unwrap();
        let mut forged = row.clone();
        forged.id_hash = id_hash("forged");
        table.insert(&forged).await.unwrap();
        assert!(s.touch("forged", t0).await.unwrap().is_none());
        // Ending a key's sessions leaves the others.
        s.remove_key("sk-plain").await.unwrap();
        assert!(s.touch(&a.id, t0).await.unwrap().is_none());
        assert!(s.touch(&b.id, t0).await.unwrap().is_some());
        s.remove(&b.id).await.unwrap();
        assert!(s.touch(&b.id, t0).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn csrf_is_compared_whole() {
        let (_dir, s) = sessions().await;
        let s = s.create("k".into(), None, "n".into(), Utc::now()).await.unwrap();
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
