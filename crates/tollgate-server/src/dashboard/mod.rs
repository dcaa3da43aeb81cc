//! The admin dashboard: server-rendered HTML over the admin API.
//!
//! Every page and form goes through the admin API in process (the same axum
//! router `/v1/...` answers, called with [`tower::ServiceExt::oneshot`] and
//! the session's key), so validation, permissions and workspace confinement
//! are decided in one place, the API, and the dashboard only renders.
//!
//! - [`session`]: sign-in with an API key, server-side sessions, CSRF.
//! - [`html`]: the layout, form pieces and SVG charts (maud escapes all
//!   output).
//! - [`integrations`], [`resources`], [`reports`]: the screens.
//!
//! Assets (one CSS and one JS file) are embedded in the binary.

pub mod html;
pub mod integrations;
pub mod reports;
pub mod resources;
pub mod session;

use crate::state::SharedState;
use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use session::{Session, Sessions};
use std::sync::Arc;
use tower::ServiceExt;

/// The dashboard's shared state.
pub struct Dashboard {
    pub state: SharedState,
    /// The admin and analytics API, called in process.
    api: Router,
    /// `public_base_path`: "" or "/prefix" (no trailing slash).
    pub base: String,
    pub sessions: Sessions,
}

pub type Dash = Arc<Dashboard>;

/// Longest API response the dashboard reads (a CSV export of a long range).
const MAX_API_BODY: usize = 64 * 1024 * 1024;

pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'";

impl Dashboard {
    /// A path under the base path, e.g. `url("/ui/logs")`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Calls the API as the session's key. `path` includes the query.
    pub async fn call(&self, s: &Session, method: Method, path: &str, body: Option<&Value>) -> ApiReply {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("x-portkey-api-key", s.key.expose().as_str());
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let req = match req.body(body) {
            Ok(r) => r,
            Err(e) => return ApiReply::failed(500, format!("bad internal request: {e}")),
        };
        let resp = match self.api.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = match axum::body::to_bytes(resp.into_body(), MAX_API_BODY).await {
            Ok(b) => b,
            Err(e) => return ApiReply::failed(500, format!("reading the API's answer failed: {e}")),
        };
        ApiReply {
            status,
            content_type,
            bytes,
        }
    }

    /// Calls the API and parses a JSON answer; an error status becomes
    /// [`ApiError`] with the API's message.
    pub async fn json(&self, s: &Session, method: Method, path: &str, body: Option<&Value>) -> Result<Value, ApiError> {
        self.call(s, method, path, body).await.into_json()
    }

    pub async fn get(&self, s: &Session, path: &str) -> Result<Value, ApiError> {
        self.json(s, Method::GET, path, None).await
    }
}

/// The raw answer of an in-process API call.
pub struct ApiReply {
    pub status: u16,
    pub content_type: String,
    pub bytes: bytes::Bytes,
}

impl ApiReply {
    fn failed(status: u16, message: String) -> ApiReply {
        ApiReply {
            status,
            content_type: "application/json".into(),
            bytes: serde_json::json!({"success": false, "data": {"message": message}})
                .to_string()
                .into(),
        }
    }

    pub fn into_json(self) -> Result<Value, ApiError> {
        let v: Value = serde_json::from_slice(&self.bytes).unwrap_or(Value::Null);
        if (200..300).contains(&self.status) {
            return Ok(v);
        }
        let message = v
            .pointer("/data/message")
            .or_else(|| v.pointer("/error/message"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("the API answered {}", self.status));
        Err(ApiError {
            status: self.status,
            message,
        })
    }
}

/// An error answer of the API: its status and message.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

/// A page that could not be shown: the API refused it (its message is shown),
/// or the session is gone (back to sign-in).
pub enum PageError {
    Api(Dash, ApiError),
    SignIn(String),
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::SignIn(to) => Redirect::to(&to).into_response(),
            PageError::Api(d, e) if e.status == 401 => Redirect::to(&d.url("/ui/sign-in?expired=1")).into_response(),
            PageError::Api(d, e) => {
                let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let body = html::error_page(&d, &e.message);
                (status, body).into_response()
            }
        }
    }
}

pub type PageResult = Result<Response, PageError>;

/// Adds `d` to an API error, for `?`.
pub trait OrPage<T> {
    fn or_page(self, d: &Dash) -> Result<T, PageError>;
}

impl<T> OrPage<T> for Result<T, ApiError> {
    fn or_page(self, d: &Dash) -> Result<T, PageError> {
        self.map_err(|e| PageError::Api(d.clone(), e))
    }
}

/// A signed-in request: the session, touched (idle expiry restarts).
pub struct Signed(pub Session);

impl FromRequestParts<Dash> for Signed {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, d: &Dash) -> Result<Self, PageError> {
        let now = d.state.now();
        let signed_out = || PageError::SignIn(d.url("/ui/sign-in"));
        let id = session::cookie_id(&parts.headers).ok_or_else(signed_out)?;
        let session = d
            .sessions
            .touch(&id, now)
            .await
            .map_err(|e| session::unavailable(d, &e))?
            .ok_or_else(signed_out)?;
        // A key revoked, rotated or expired since sign-in ends its sessions.
        if !session::key_still_valid(&d.state, &session) {
            d.sessions
                .remove_key(session.key.expose())
                .await
                .map_err(|e| session::unavailable(d, &e))?;
            return Err(PageError::SignIn(d.url("/ui/sign-in?expired=1")));
        }
        Ok(Signed(session))
    }
}

/// A form POST from a signed-in session whose CSRF token matched. Every
/// state-changing dashboard route takes this, so none can skip the check.
pub struct Post {
    pub session: Session,
    pub form: Form,
}

impl FromRequest<Dash> for Post {
    type Rejection = Response;

    async fn from_request(req: Request, d: &Dash) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let Signed(session) = Signed::from_request_parts(&mut parts, d)
            .await
            .map_err(IntoResponse::into_response)?;
        let req = Request::from_parts(parts, body);
        let axum::Form(pairs) = axum::Form::<Vec<(String, String)>>::from_request(req, d)
            .await
            .map_err(IntoResponse::into_response)?;
        let form = Form(pairs);
        if !session.csrf_matches(form.get("_csrf").unwrap_or("")) {
            return Err((
                StatusCode::FORBIDDEN,
                html::error_page(d, "This form has expired or did not come from this dashboard. Go back, reload the page and try again."),
            )
                .into_response());
        }
        Ok(Post { session, form })
    }
}

/// Submitted form fields, in order.
#[derive(Debug, Clone, Default)]
pub struct Form(pub Vec<(String, String)>);

impl Form {
    /// The trimmed value of `name`, if present and not blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// Every non-blank value of `name` (checkbox groups).
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }
}

/// Percent-encodes a query or path component.
pub fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The dashboard's routes under `base`, with the security headers on every
/// answer.
pub fn router(state: SharedState, api: Router) -> Router {
    let base = state.config.public_base_path.clone();
    let d: Dash = Arc::new(Dashboard {
        sessions: Sessions::new(state.clone()),
        state,
        api,
        base: base.clone(),
    });
    let p = |path: &str| format!("{base}{path}");
    let mut ui = Router::new()
        .route(&p("/ui/assets/app.css"), get(css))
        .route(&p("/ui/assets/app.js"), get(js))
        .route(&p("/ui/sign-in"), get(session::sign_in_page).post(session::sign_in))
        .route(&p("/ui/sign-out"), post(session::sign_out))
        .route(&p("/ui/integrations"), get(integrations::list))
        .route(
            &p("/ui/integrations/new"),
            get(integrations::new_page).post(integrations::create),
        )
        .route(
            &p("/ui/integrations/{slug}"),
            get(integrations::detail).post(integrations::update),
        )
        .route(&p("/ui/integrations/{slug}/delete"), post(integrations::delete))
        .route(
            &p("/ui/integrations/{slug}/workspaces"),
            get(integrations::workspaces_page).post(integrations::save_workspaces),
        )
        .route(
            &p("/ui/integrations/{slug}/models"),
            get(integrations::models_page).post(integrations::save_models),
        )
        .route(
            &p("/ui/workspaces"),
            get(resources::workspaces).post(resources::create_workspace),
        )
        .route(&p("/ui/workspaces/{id}"), get(resources::workspace))
        .route(&p("/ui/keys"), get(resources::keys).post(resources::create_key))
        .route(&p("/ui/keys/{id}/revoke"), post(resources::revoke_key))
        .route(&p("/ui/keys/{id}/rotate"), post(resources::rotate_key))
        .route(&p("/ui/logs"), get(reports::logs))
        .route(&p("/ui/logs/{trace_id}"), get(reports::log_detail))
        .route(&p("/ui/analytics"), get(reports::analytics))
        .route(&p("/ui/analytics/export.csv"), get(reports::export_csv))
        .route(&p("/ui/audit"), get(reports::audit))
        .route(&p("/ui"), get(home))
        .route(&p("/"), get(home));
    if !base.is_empty() {
        ui = ui.route(&base, get(home));
    }
    ui.layer(axum::middleware::from_fn(security_headers)).with_state(d)
}

async fn home(State(d): State<Dash>, signed: Option<Signed>) -> Redirect {
    match signed {
        Some(_) => Redirect::to(&d.url("/ui/integrations")),
        None => Redirect::to(&d.url("/ui/sign-in")),
    }
}

impl axum::extract::OptionalFromRequestParts<Dash> for Signed {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        d: &Dash,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(<Signed as FromRequestParts<Dash>>::from_request_parts(parts, d)
            .await
            .ok())
    }
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

const APP_CSS: &str = include_str!("assets/app.css");
const APP_JS: &str = include_str!("assets/app.js");

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        APP_CSS,
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        APP_JS,
    )
        .into_response()
}
