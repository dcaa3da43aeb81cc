//! `/v1/configs`: HTTP over [`crate::control::configs`], in the shapes the
//! `portkey-ai` SDK's `configs` uses.

use super::{Body, Page};
use crate::auth::Caller;
use crate::control::configs::{self as service, CreateConfig, UpdateConfig};
use crate::control::Control;
use crate::error::AdminError;
use crate::state::SharedState;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tollgate_core::records::SavedConfig;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ListConfigs {
    pub workspace_id: Option<String>,
    #[serde(flatten)]
    pub page: Page,
}

fn to_json(c: &SavedConfig, org_id: &str) -> Value {
    json!({
        "id": c.id,
        "slug": c.slug,
        "name": c.name,
        "workspace_id": c.workspace_id,
        "organisation_id": org_id,
        "config": c.config,
        "format": "json",
        "type": "ORG_CONFIG",
        "status": "active",
        "is_default": 0,
        "owner_id": c.created_by,
        "updated_by": c.created_by,
        "version_id": c.version_id,
        "created_at": c.created_at,
        "last_updated_at": c.last_updated_at,
        "object": "config",
    })
}

pub async fn create(
    State(state): State<SharedState>,
    caller: Caller,
    Body(body): Body<CreateConfig>,
) -> Result<Json<Value>, AdminError> {
    let c = Control::new(&state).create_config(&caller.principal(), body).await?;
    Ok(Json(
        json!({"id": c.id, "slug": c.slug, "version_id": c.version_id, "object": "config"}),
    ))
}

pub async fn list(
    State(state): State<SharedState>,
    caller: Caller,
    Query(q): Query<ListConfigs>,
) -> Result<Json<Value>, AdminError> {
    let snap = state.snapshot();
    let configs = service::list(&snap, &caller.principal(), q.workspace_id.as_deref())?;
    Ok(Json(
        q.page
            .list(configs.iter().map(|c| to_json(c, &snap.org_id)).collect())?,
    ))
}

pub async fn retrieve(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let snap = state.snapshot();
    let c = service::retrieve(&snap, &caller.principal(), &slug)?;
    Ok(Json(to_json(&c, &snap.org_id)))
}

/// Every version of a config, newest first.
pub async fn versions(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let versions = Control::new(&state).config_versions(&caller.principal(), &slug).await?;
    let data: Vec<Value> = versions
        .into_iter()
        .map(|v| json!({"version_id": v.version_id, "created_at": v.created_at, "config": v.config, "object": "config_version"}))
        .collect();
    Ok(Json(json!({"object": "list", "total": data.len(), "data": data})))
}

pub async fn update(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
    Body(body): Body<UpdateConfig>,
) -> Result<Json<Value>, AdminError> {
    let version_id = Control::new(&state)
        .update_config(&caller.principal(), &slug, body)
        .await?;
    Ok(Json(json!({"version_id": version_id, "object": "config"})))
}

pub async fn delete(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
) -> Result<Json<Value>, AdminError> {
    Control::new(&state).delete_config(&caller.principal(), &slug).await?;
    Ok(Json(json!({"success": true})))
}
