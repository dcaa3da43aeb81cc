//! `/v1/admin/workspaces`: HTTP over [`crate::control::workspaces`], and the
//! wire object of a workspace.

use super::{rate_limits_array, usage_limit_json, Body, Page};
use crate::auth::Caller;
use crate::control::workspaces::{self as service, CreateWorkspace, NameFilter, UpdateWorkspace};
use crate::control::Control;
use crate::error::AdminError;
use crate::state::SharedState;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde_json::{json, Value};
use tollgate_core::records::Workspace;

/// The wire object of a workspace.
pub fn to_json(w: &Workspace, now: chrono::DateTime<chrono::Utc>) -> Value {
    let usage = usage_limit_json(&w.limits, now);
    json!({
        "id": w.id,
        "slug": w.slug,
        "name": w.name,
        "description": w.description,
        "created_at": w.created_at,
        "last_updated_at": w.last_updated_at,
        "defaults": if w.defaults.is_null() { json!({}) } else { w.defaults.clone() },
        "usage_limits": if usage.is_null() { json!([]) } else { json!([usage]) },
        "rate_limits": rate_limits_array(&w.limits),
        "log_bodies": w.log_bodies,
        "default_config": w.default_config,
        "object": "workspace",
    })
}

pub async fn create(
    State(state): State<SharedState>,
    caller: Caller,
    Body(body): Body<CreateWorkspace>,
) -> Result<Json<Value>, AdminError> {
    let w = Control::new(&state).create_workspace(&caller.principal(), body).await?;
    // Rendered at the time of the change.
    Ok(Json(to_json(&w, w.last_updated_at)))
}

pub async fn list(
    State(state): State<SharedState>,
    caller: Caller,
    Query(page): Query<Page>,
    Query(names): Query<NameFilter>,
) -> Result<Json<Value>, AdminError> {
    let now = state.now();
    let ws = service::list(&state.snapshot(), &caller.principal(), &names);
    Ok(Json(page.list(ws.iter().map(|w| to_json(w, now)).collect())?))
}

pub async fn retrieve(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let w = service::find(&state.snapshot(), &caller.principal(), &id)?;
    Ok(Json(to_json(&w, state.now())))
}

pub async fn update(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<UpdateWorkspace>,
) -> Result<Json<Value>, AdminError> {
    let w = Control::new(&state)
        .update_workspace(&caller.principal(), &id, body)
        .await?;
    Ok(Json(to_json(&w, w.last_updated_at)))
}

pub async fn delete(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    Control::new(&state).delete_workspace(&caller.principal(), &id).await?;
    Ok(Json(json!({"success": true})))
}
