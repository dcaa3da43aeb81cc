//! Mock Azure OpenAI: `/openai/deployments/{deployment}/{chat/completions,
//! completions,embeddings}?api-version=...` with the `api-key` header,
//! answering with the OpenAI mock's answers under the deployment's model;
//! and the Responses API, `POST /openai/responses` and
//! `GET /openai/responses/{id}`, answered by the OpenAI mock's Responses logic.

use crate::control::Control;
use crate::openai::{
    before_answer, chat_answer, completion_answer, embeddings_answer, json_response, missing, parse_body, take,
};
use crate::{Journal, MockServer};
use axum::extract::{Path, Request, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use std::sync::Arc;

/// Configuration of the Azure mock.
#[derive(Debug, Clone)]
pub struct AzureMock {
    /// The key the `api-key` header must carry.
    pub api_key: String,
    /// `(deployment name, model)`; empty: every deployment exists and is
    /// named after its model.
    pub deployments: Vec<(String, String)>,
    pub control: Control,
}

impl Default for AzureMock {
    fn default() -> Self {
        Self {
            api_key: "azure-test-key".into(),
            deployments: Vec::new(),
            control: Control::default(),
        }
    }
}

#[derive(Clone)]
struct AppState {
    journal: Journal,
    config: Arc<AzureMock>,
    stored: crate::responses::Stored,
}

#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Completions,
    Embeddings,
}

/// Starts the Azure mock; point an integration's `custom_host` at
/// [`MockServer::url`].
pub async fn start(config: AzureMock) -> std::io::Result<MockServer> {
    let journal = Journal::default();
    MockServer::start(router(config, journal.clone()), journal).await
}

/// The mock's routes for a long-running process (`tollgate mock-upstream
/// --protocol azure`): requests are checked as usual but not kept.
pub fn standalone_router(config: AzureMock) -> Router {
    let journal = Journal::default();
    crate::forgetful(router(config, journal.clone()), journal)
}

fn router(config: AzureMock, journal: Journal) -> Router {
    let state = AppState {
        journal,
        config: Arc::new(config),
        stored: crate::responses::Stored::default(),
    };
    Router::new()
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(|s: State<AppState>, p: Path<String>, r: Request| handle(s, p, r, Kind::Chat)),
        )
        .route(
            "/openai/deployments/{deployment}/completions",
            post(|s: State<AppState>, p: Path<String>, r: Request| handle(s, p, r, Kind::Completions)),
        )
        .route(
            "/openai/deployments/{deployment}/embeddings",
            post(|s: State<AppState>, p: Path<String>, r: Request| handle(s, p, r, Kind::Embeddings)),
        )
        .route("/openai/responses", post(responses))
        .route("/openai/responses/{id}", get(stored_response))
        .fallback(|| async { not_found() })
        .with_state(state)
}

fn azure_error(status: u16, code: &str, message: &str) -> Response {
    json_response(status, &json!({"error": {"code": code, "message": message}}))
}

fn not_found() -> Response {
    azure_error(404, "404", "Resource not found")
}

/// Azure accepts `YYYY-MM-DD` and `YYYY-MM-DD-preview` versions.
fn valid_version(v: &str) -> bool {
    let date = v.strip_suffix("-preview").unwrap_or(v);
    let b = date.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
}

async fn responses(State(state): State<AppState>, req: Request) -> Response {
    let rec = take(Some(&state.journal), req).await;
    if let Some(refused) = check(&rec, &state.config) {
        return refused;
    }
    if let Some(refused) = fault(&state.config).await {
        return refused;
    }
    match parse_body(&rec) {
        Ok(body) => crate::responses::create(&body, &state.config.control, &state.stored),
        Err(r) => r,
    }
}

async fn stored_response(State(state): State<AppState>, Path(id): Path<String>, req: Request) -> Response {
    let rec = take(Some(&state.journal), req).await;
    if let Some(refused) = check(&rec, &state.config) {
        return refused;
    }
    crate::responses::get(&id, &state.stored)
}

/// The `api-version` and `api-key` checks.
fn check(rec: &crate::Recorded, cfg: &AzureMock) -> Option<Response> {
    let version = rec
        .query
        .as_deref()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("api-version=")));
    let Some(version) = version else {
        return Some(not_found());
    };
    if !valid_version(version) {
        return Some(azure_error(400, "BadRequest", "API version not supported"));
    }
    if rec.header("api-key") != Some(cfg.api_key.as_str()) {
        return Some(azure_error(
            401,
            "401",
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.",
        ));
    }
    None
}

/// The control's scripted fault, if any, as an Azure error.
async fn fault(cfg: &AzureMock) -> Option<Response> {
    let (status, message) = before_answer(&cfg.control).await?;
    Some(azure_error(status, &status.to_string(), &message))
}

async fn handle(State(state): State<AppState>, Path(deployment): Path<String>, req: Request, kind: Kind) -> Response {
    let rec = take(Some(&state.journal), req).await;
    let cfg = &state.config;
    if let Some(refused) = check(&rec, cfg) {
        return refused;
    }
    if let Some(refused) = fault(cfg).await {
        return refused;
    }
    let model = if cfg.deployments.is_empty() {
        deployment.clone()
    } else {
        match cfg.deployments.iter().find(|(d, _)| *d == deployment) {
            Some((_, m)) => m.clone(),
            None => {
                return azure_error(
                    404,
                    "DeploymentNotFound",
                    "The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again.",
                )
            }
        }
    };
    let body = match parse_body(&rec) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match kind {
        Kind::Chat if !body.get("messages").is_some_and(Value::is_array) => missing("messages"),
        Kind::Chat => chat_answer(&body, &model, &cfg.control),
        Kind::Completions if body.get("prompt").is_none() => missing("prompt"),
        Kind::Completions => completion_answer(&body, &model, &cfg.control),
        Kind::Embeddings => embeddings_answer(&body, &model, &cfg.control),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions() {
        assert!(valid_version("2024-10-21"));
        assert!(valid_version("2025-01-01-preview"));
        assert!(!valid_version("latest"));
        assert!(!valid_version("2024-1-21"));
    }
}
