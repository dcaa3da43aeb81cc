//! Calls that reach an upstream but generate nothing, so they are not
//! admitted against limits nor billed: `POST /v1/messages/count_tokens` and
//! `GET /v1/responses/{id}`. Both authenticate and resolve the provider as
//! a gateway request does.

use super::dialect::anthropic_error;
use super::{base_url, gateway_key, resolve_route, upstream_error};
use crate::error::GatewayError;
use crate::state::SharedState;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::time::Duration;
use tollgate_core::catalogue::Protocol;
use tollgate_providers::dialects::messages::MessagesRequest;
use tollgate_providers::{tokens, Endpoint, Target};
use tollgate_store::request_log::LogRecord;

/// `POST /v1/messages/count_tokens`: Anthropic's own count where the
/// provider is Anthropic, else the tokenizer's estimate. Errors in
/// Anthropic's shape.
pub async fn count_tokens(State(state): State<SharedState>, headers: HeaderMap, body: Bytes) -> Response {
    match count(&state, &headers, &body).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => anthropic_error(e),
    }
}

fn timeout(state: &SharedState) -> Duration {
    Duration::from_millis(state.config.request_timeout_ms)
}

async fn count(state: &SharedState, headers: &HeaderMap, raw: &[u8]) -> Result<Value, GatewayError> {
    let bad = |m: String| GatewayError::InvalidRequest {
        message: m,
        param: None,
    };
    let snap = state.snapshot();
    let key = gateway_key(&snap, state.now(), headers)?;
    let ws = key.record.workspace_id.clone().unwrap_or_default();
    let mut body: Value =
        serde_json::from_slice(raw).map_err(|e| bad(format!("request body is not valid JSON: {e}")))?;
    let model_field = body
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| bad("'model' is required: use '@provider/model'".into()))?;
    let mut rec = LogRecord::default();
    let (route, model) = resolve_route(state, &snap, &ws, headers, None, &model_field, &mut rec)?;
    // Checked here for every provider, so a bad body is refused alike.
    MessagesRequest::parse(&body).map_err(super::dialect::invalid)?;
    if let Some(o) = body.as_object_mut() {
        o.insert("model".into(), Value::String(model.clone()));
        // count_tokens takes no max_tokens or stream.
        o.remove("max_tokens");
        o.remove("stream");
    }
    let integration = &route.integration;
    if integration.spec.protocol == Protocol::Anthropic {
        let base = base_url(&route, &model);
        let mut extra = integration
            .models
            .get(model.as_str())
            .map(|e| e.custom_headers.clone())
            .unwrap_or_default();
        extra.extend(super::anthropic_headers(headers));
        let target = Target {
            base_url: base.as_deref(),
            config: &integration.record.configurations,
            secrets: &integration.secrets,
            headers: &extra,
            model: &model,
        };
        let answer = state
            .adapters
            .anthropic_count_tokens(&target, &body, timeout(state))
            .await
            .map_err(upstream_error)?;
        return serde_json::from_slice(&answer)
            .map_err(|e| GatewayError::Upstream(format!("unreadable count_tokens answer: {e}")));
    }
    let provider = integration.record.ai_provider_id.as_str();
    let tokenizer = snap
        .prices
        .model(provider, &model)
        .map(|i| i.tokenizer)
        .unwrap_or_default();
    let body = tollgate_providers::chat::Body::Json(body);
    Ok(json!({"input_tokens": tokens::estimate_prompt(Endpoint::Messages, &body, tokenizer)}))
}

/// `GET /v1/responses/{id}`: a response Tollgate relayed to a provider that
/// stores responses, fetched from that provider. Any other id is 404.
pub async fn get_response(State(state): State<SharedState>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    match fetch(&state, &headers, &id).await {
        Ok(bytes) => {
            let mut r = Response::new(Body::from(bytes));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Err(e) => e.into_response(),
    }
}

async fn fetch(state: &SharedState, headers: &HeaderMap, id: &str) -> Result<Bytes, GatewayError> {
    let snap = state.snapshot();
    let key = gateway_key(&snap, state.now(), headers)?;
    let ws = key.record.workspace_id.clone().unwrap_or_default();
    let not_found = || {
        GatewayError::NotFound(format!(
            "response '{id}' not found: Tollgate keeps only the ids of responses it relayed to a provider that stores them (OpenAI, Azure OpenAI)"
        ))
    };
    let (owner, slug) = state.response_ids.get(id).ok_or_else(not_found)?;
    if owner != ws {
        return Err(not_found());
    }
    let route = snap.route(&ws, &slug).cloned().ok_or_else(not_found)?;
    let integration = &route.integration;
    if route.access.is_none()
        || integration.record.status != tollgate_core::records::IntegrationStatus::Active
        || route.provider_record.expires_at.is_some_and(|t| t <= state.now())
    {
        return Err(GatewayError::Permission(format!(
            "provider '@{slug}' that holds this response is no longer available to this workspace"
        )));
    }
    let base = base_url(&route, "");
    let target = Target {
        base_url: base.as_deref(),
        config: &integration.record.configurations,
        secrets: &integration.secrets,
        headers: &[],
        model: "",
    };
    state
        .adapters
        .get_response(integration.spec.protocol, &target, id, timeout(state))
        .await
        .map_err(upstream_error)
}
