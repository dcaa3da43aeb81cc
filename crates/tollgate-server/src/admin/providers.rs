//! `/v1/providers`: HTTP over [`crate::control::providers`], and the wire
//! object of a provider with its status.

use super::{rate_limit_json, rate_limits_array, usage_limit_json, Body, Page};
use crate::auth::Caller;
use crate::control::providers::{self as service, CreateProvider, UpdateProvider};
use crate::control::Control;
use crate::error::AdminError;
use crate::snapshot::Snapshot;
use crate::state::SharedState;
use axum::extract::{Path, Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use tollgate_core::records::ProviderRecord;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct WorkspaceQuery {
    pub workspace_id: Option<String>,
    #[serde(flatten)]
    pub page: Page,
}

/// `active`, `expired`, or `exhausted` (a budget of the provider used up).
pub async fn status(state: &SharedState, p: &ProviderRecord, now: DateTime<Utc>) -> &'static str {
    if p.expires_at.is_some_and(|t| t <= now) {
        "expired"
    } else if crate::limit_check::provider_exhausted(state, p, now).await {
        "exhausted"
    } else {
        "active"
    }
}

async fn to_json(state: &SharedState, snap: &Snapshot, p: &ProviderRecord, detail: bool, now: DateTime<Utc>) -> Value {
    let integration = snap.integration(&p.integration_id);
    json!({
        "id": p.id,
        "slug": p.slug,
        "name": p.name,
        "integration_id": integration.map(|i| i.record.slug.as_str()),
        "ai_provider_id": integration.map(|i| i.record.ai_provider_id.as_str()),
        "workspace_id": p.workspace_id,
        "note": p.note,
        "status": status(state, p, now).await,
        "usage_limits": usage_limit_json(&p.limits, now),
        "rate_limits": if detail { rate_limits_array(&p.limits) } else { rate_limit_json(&p.limits) },
        "expires_at": p.expires_at,
        "is_default": p.is_default,
        "created_at": p.created_at,
        "last_updated_at": p.last_updated_at,
        "object": "provider",
    })
}

pub async fn list(
    State(state): State<SharedState>,
    caller: Caller,
    Query(q): Query<WorkspaceQuery>,
) -> Result<Json<Value>, AdminError> {
    let snap = state.snapshot();
    let providers = service::list(&snap, &caller.principal(), q.workspace_id.as_deref())?;
    let now = state.now();
    let mut data = Vec::with_capacity(providers.len());
    for p in &providers {
        data.push(to_json(&state, &snap, p, false, now).await);
    }
    Ok(Json(q.page.list(data)?))
}

pub async fn create(
    State(state): State<SharedState>,
    caller: Caller,
    Body(body): Body<CreateProvider>,
) -> Result<Json<Value>, AdminError> {
    let p = Control::new(&state).create_provider(&caller.principal(), body).await?;
    Ok(Json(json!({"id": p.id, "slug": p.slug, "object": "provider"})))
}

pub async fn retrieve(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
    Query(q): Query<WorkspaceQuery>,
) -> Result<Json<Value>, AdminError> {
    let snap = state.snapshot();
    let p = service::retrieve(&snap, &caller.principal(), &slug, q.workspace_id.as_deref())?;
    Ok(Json(to_json(&state, &snap, &p, true, state.now()).await))
}

pub async fn update(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
    Query(q): Query<WorkspaceQuery>,
    Body(body): Body<UpdateProvider>,
) -> Result<Json<Value>, AdminError> {
    let p = Control::new(&state)
        .update_provider(&caller.principal(), &slug, q.workspace_id.as_deref(), body)
        .await?;
    // Rendered at the time of the change, from the new snapshot.
    Ok(Json(
        to_json(&state, &state.snapshot(), &p, true, p.last_updated_at).await,
    ))
}

pub async fn delete(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
    Query(q): Query<WorkspaceQuery>,
) -> Result<Json<Value>, AdminError> {
    Control::new(&state)
        .delete_provider(&caller.principal(), &slug, q.workspace_id.as_deref())
        .await?;
    Ok(Json(json!({"success": true})))
}
