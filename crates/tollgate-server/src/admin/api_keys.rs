//! `/v1/api-keys`: HTTP over [`crate::control::api_keys`], and the wire
//! object of a key (masked).

use super::{rate_limits_array, usage_limit_json, Body, Page};
use crate::auth::Caller;
use crate::control::api_keys::{self as service, kind_name, CreateKey, NewKey, UpdateKey};
use crate::control::Control;
use crate::error::AdminError;
use crate::state::SharedState;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tollgate_core::records::ApiKeyRecord;

pub use crate::control::api_keys::new_key;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ListKeys {
    pub workspace_id: Option<String>,
    #[serde(flatten)]
    pub page: Page,
}

pub fn to_json(k: &ApiKeyRecord, org_id: &str, now: chrono::DateTime<chrono::Utc>) -> Value {
    let status = if k.expires_at.is_some_and(|t| t <= now) {
        "expired"
    } else {
        "active"
    };
    json!({
        "id": k.id,
        "name": k.name,
        "description": k.description,
        "type": kind_name(k),
        "key": k.masked_key,
        "workspace_id": k.workspace_id,
        "scopes": k.scopes,
        "usage_limits": usage_limit_json(&k.limits, now),
        "rate_limits": rate_limits_array(&k.limits),
        "expires_at": k.expires_at,
        "alert_emails": k.alert_emails,
        "defaults": if k.defaults.is_null() { json!({}) } else { k.defaults.clone() },
        "default_config": k.default_config,
        "organisation_id": org_id,
        "status": status,
        "created_at": k.created_at,
        "last_updated_at": k.last_updated_at,
        "object": "api-key",
    })
}

/// A key just issued: the only time it is shown.
fn issued(k: &NewKey) -> Json<Value> {
    Json(json!({"id": k.id, "key": k.key.expose().as_str(), "object": "api-key"}))
}

pub async fn create(
    State(state): State<SharedState>,
    caller: Caller,
    Path((kind, sub_kind)): Path<(String, String)>,
    Body(body): Body<CreateKey>,
) -> Result<Json<Value>, AdminError> {
    let k = Control::new(&state)
        .create_api_key(&caller.principal(), &kind, &sub_kind, body)
        .await?;
    Ok(issued(&k))
}

pub async fn list(
    State(state): State<SharedState>,
    caller: Caller,
    Query(q): Query<ListKeys>,
) -> Result<Json<Value>, AdminError> {
    let snap = state.snapshot();
    let now = state.now();
    let keys = service::list(&snap, &caller.principal(), q.workspace_id.as_deref())?;
    Ok(Json(
        q.page
            .list(keys.iter().map(|k| to_json(k, &snap.org_id, now)).collect())?,
    ))
}

pub async fn retrieve(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let snap = state.snapshot();
    let k = service::retrieve(&snap, &caller.principal(), &id)?;
    Ok(Json(to_json(&k, &snap.org_id, state.now())))
}

pub async fn update(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<UpdateKey>,
) -> Result<Json<Value>, AdminError> {
    let control = Control::new(&state);
    let k = control.update_api_key(&caller.principal(), &id, body).await?;
    // Rendered at the time of the change.
    Ok(Json(to_json(&k, &control.snapshot().org_id, k.last_updated_at)))
}

/// Revokes the key.
pub async fn delete(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    Control::new(&state).revoke_api_key(&caller.principal(), &id).await?;
    Ok(Json(json!({"success": true})))
}

pub async fn rotate(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let k = Control::new(&state).rotate_api_key(&caller.principal(), &id).await?;
    Ok(issued(&k))
}
