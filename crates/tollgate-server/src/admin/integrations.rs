//! `/v1/integrations`: HTTP over [`crate::control::integrations`], and the
//! wire objects of integrations, their models and workspace grants.

use super::{rate_limit_json, usage_limit_json, Body, Page};
use crate::auth::Caller;
use crate::control::integrations::{self as service, ListFilter, PutModels, PutWorkspaces};
use crate::control::integrations::{CreateIntegration, UpdateIntegration};
use crate::control::Control;
use crate::error::AdminError;
use crate::state::SharedState;
use axum::extract::{Path, Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tollgate_core::records::{GlobalAccess, Integration, IntegrationModel, WorkspaceAccess};

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub workspace_id: Option<String>,
    #[serde(flatten)]
    pub page: Page,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DeleteModelsQuery {
    pub slugs: Option<String>,
}

/// The wire object of an integration: secrets only masked.
pub fn to_json(i: &Integration, org_id: &str, workspace_count: usize, now: DateTime<Utc>) -> Value {
    let mut configurations = i.configurations.clone();
    for (name, masked) in &i.masked_secrets {
        configurations.insert(format!("masked_{name}"), json!(masked));
    }
    json!({
        "id": i.id,
        "slug": i.slug,
        "name": i.name,
        "description": i.description,
        "ai_provider_id": i.ai_provider_id,
        "status": i.status,
        "organisation_id": org_id,
        "workspace_id": i.workspace_id,
        "endpoint_type": if i.custom_host().is_some() { "private" } else { "public" },
        "masked_key": i.masked_secrets.get("key"),
        "configurations": configurations,
        "allow_all_models": i.allow_all_models,
        "workspace_count": workspace_count,
        "global_workspace_access": global_json(&i.global_access, now),
        "created_at": i.created_at,
        "last_updated_at": i.last_updated_at,
        "object": "integration",
    })
}

fn global_json(g: &GlobalAccess, now: DateTime<Utc>) -> Value {
    json!({
        "enabled": g.enabled,
        "usage_limits": usage_limit_json(&g.limits, now),
        "rate_limits": rate_limit_json(&g.limits),
    })
}

fn view_json(v: &service::View, org_id: &str, now: DateTime<Utc>) -> Value {
    to_json(&v.record, org_id, v.workspace_count, now)
}

fn model_json(m: &IntegrationModel) -> Value {
    json!({
        "slug": m.slug,
        "enabled": m.enabled,
        "is_custom": m.is_custom,
        "is_finetune": m.is_finetune,
        "base_model_slug": m.base_model_slug,
        "configurations": {
            "custom_host": m.custom_host,
            "custom_headers": m.custom_headers.iter().cloned().collect::<BTreeMap<_, _>>(),
        },
        "pricing_config": m.pricing_config,
    })
}

fn access_json(id: &str, a: &WorkspaceAccess, now: DateTime<Utc>) -> Value {
    json!({
        "id": id,
        "enabled": a.enabled,
        "usage_limits": usage_limit_json(&a.limits, now),
        "rate_limits": rate_limit_json(&a.limits),
        "models": a.models,
        "object": "integration-workspace",
    })
}

pub async fn create(
    State(state): State<SharedState>,
    caller: Caller,
    Body(body): Body<CreateIntegration>,
) -> Result<Json<Value>, AdminError> {
    let c = Control::new(&state)
        .create_integration(&caller.principal(), body)
        .await?;
    Ok(Json(json!({"id": c.id, "slug": c.slug, "object": "integration"})))
}

pub async fn list(
    State(state): State<SharedState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, AdminError> {
    let control = Control::new(&state);
    let snap = control.snapshot();
    let filter = ListFilter {
        kind: q.kind,
        workspace_id: q.workspace_id,
    };
    let now = control.now();
    let data = service::list(&snap, &caller.principal(), &filter)?
        .iter()
        .map(|v| view_json(v, &snap.org_id, now))
        .collect();
    Ok(Json(q.page.list(data)?))
}

pub async fn retrieve(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let control = Control::new(&state);
    let snap = control.snapshot();
    let v = service::retrieve(&snap, &caller.principal(), &slug)?;
    Ok(Json(view_json(&v, &snap.org_id, control.now())))
}

pub async fn update(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
    Body(body): Body<UpdateIntegration>,
) -> Result<Json<Value>, AdminError> {
    let control = Control::new(&state);
    let v = control.update_integration(&caller.principal(), &slug, body).await?;
    Ok(Json(view_json(&v, &control.snapshot().org_id, control.now())))
}

pub async fn delete(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
) -> Result<Json<Value>, AdminError> {
    Control::new(&state)
        .delete_integration(&caller.principal(), &slug)
        .await?;
    Ok(Json(json!({"success": true})))
}

pub async fn list_models(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let m = service::list_models(&state.snapshot(), &caller.principal(), &slug)?;
    let mut models: Vec<Value> = m.entries.iter().map(model_json).collect();
    models.extend(
        m.catalogue
            .iter()
            .map(|slug| json!({"slug": slug, "enabled": true, "is_custom": false, "is_finetune": false})),
    );
    Ok(Json(
        json!({"object": "list", "total": models.len(), "allow_all_models": m.allow_all_models, "models": models, "data": models}),
    ))
}

pub async fn put_models(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
    Body(body): Body<PutModels>,
) -> Result<Json<Value>, AdminError> {
    let out = Control::new(&state)
        .put_integration_models(&caller.principal(), &slug, body)
        .await?;
    Ok(Json(
        json!({"success": true, "total": out.total, "allow_all_models": out.allow_all_models}),
    ))
}

pub async fn delete_models(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
    Query(q): Query<DeleteModelsQuery>,
) -> Result<Json<Value>, AdminError> {
    let slugs: Vec<&str> = q
        .slugs
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    Control::new(&state)
        .delete_integration_models(&caller.principal(), &slug, &slugs)
        .await?;
    Ok(Json(json!({"success": true})))
}

pub async fn list_workspaces(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let i = service::list_workspaces(&state.snapshot(), &caller.principal(), &slug)?;
    let now = state.now();
    let data: Vec<Value> = i.workspaces.iter().map(|(id, a)| access_json(id, a, now)).collect();
    Ok(Json(json!({
        "object": "list",
        "total": data.len(),
        "workspaces": data,
        "global_workspace_access": global_json(&i.global_access, now),
        "override_existing_workspace_access": i.global_access.override_existing,
    })))
}

pub async fn put_workspaces(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
    Body(body): Body<PutWorkspaces>,
) -> Result<Json<Value>, AdminError> {
    Control::new(&state)
        .put_integration_workspaces(&caller.principal(), &slug, body)
        .await?;
    Ok(Json(json!({"success": true})))
}
