//! `GET /v1/models`: exactly what the calling workspace may use, as
//! `@provider/model` ids; `GET /v1/models/{id}`: one of them.

use crate::error::GatewayError;
use crate::snapshot::Snapshot;
use crate::state::SharedState;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::collections::BTreeSet;

pub async fn list(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    match models(&state, &headers) {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// One model of the list, or an OpenAI-shaped 404.
pub async fn retrieve(State(state): State<SharedState>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let found = models(&state, &headers).and_then(|list| {
        list["data"]
            .as_array()
            .and_then(|d| d.iter().find(|m| m["id"] == id.as_str()).cloned())
            .ok_or_else(|| {
                GatewayError::NotFound(format!(
                    "The model '{id}' does not exist or this workspace may not use it"
                ))
            })
    });
    match found {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn models(state: &SharedState, headers: &HeaderMap) -> Result<Value, GatewayError> {
    let snap = state.snapshot();
    let now = state.now();
    let key = super::gateway_key(&snap, now, headers)?;
    let ws = key.record.workspace_id.as_deref().unwrap_or_default();
    let data: Vec<Value> = catalogue_of(&snap, ws, now)
        .map(|(slug, m)| json!({"id": format!("@{slug}/{m}"), "object": "model", "created": 0, "owned_by": slug}))
        .collect();
    Ok(json!({"object": "list", "data": data}))
}

/// The `@provider/model` ids workspace `ws` may call at `now` (the model
/// catalogue the dashboard shows), sorted.
pub fn catalogue(snap: &Snapshot, ws: &str, now: DateTime<Utc>) -> Vec<String> {
    catalogue_of(snap, ws, now)
        .map(|(slug, m)| format!("@{slug}/{m}"))
        .collect()
}

/// (provider slug, model) pairs workspace `ws` may call, sorted.
fn catalogue_of<'a>(snap: &'a Snapshot, ws: &str, now: DateTime<Utc>) -> impl Iterator<Item = (&'a str, &'a str)> {
    let mut ids = BTreeSet::new();
    for route in snap.routes_of(ws) {
        let i = &route.integration;
        if route.access.is_none() || route.provider_record.expires_at.is_some_and(|t| t <= now) {
            continue;
        }
        // The integration's allowed models: its enabled entries, plus the
        // catalogue's models for its provider when it allows all.
        let mut allowed: BTreeSet<&str> = i
            .record
            .models
            .iter()
            .filter(|m| m.enabled)
            .map(|m| m.slug.as_str())
            .collect();
        if i.record.allow_all_models {
            allowed.extend(
                snap.prices
                    .models_of(&i.record.ai_provider_id)
                    .filter(|m| i.models.get(*m).is_none_or(|e| e.enabled)),
            );
        }
        for m in allowed {
            if route.workspace_models.as_ref().is_none_or(|w| w.contains(m)) {
                ids.insert((route.provider_record.slug.as_str(), m));
            }
        }
    }
    ids.into_iter()
}
