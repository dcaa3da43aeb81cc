//! `/v1/providers`: the providers of a workspace (integrations as they
//! appear in its model catalogue). Provisioning creates a default one per
//! integration; a workspace admin may add more, each with its own slug, note,
//! expiry and limits.

use super::{merge_limits, parse_time, rate_limit_json, rate_limits_array, usage_limit_json, Body, Page};
use crate::auth::Caller;
use crate::error::AdminError;
use crate::snapshot::Snapshot;
use crate::state::SharedState;
use axum::extract::{Path, Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use tollgate_core::ids;
use tollgate_core::records::{Limits, ProviderRecord};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct WorkspaceQuery {
    pub workspace_id: Option<String>,
    #[serde(flatten)]
    pub page: Page,
}

#[derive(Debug, Deserialize)]
pub struct CreateProvider {
    pub name: String,
    pub integration_id: String,
    #[serde(default)]
    pub workspace_id: Option<String>,
    #[serde(default)]
    pub slug: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub usage_limits: Option<Value>,
    #[serde(default)]
    pub rate_limits: Option<Value>,
    #[serde(default)]
    pub expires_at: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UpdateProvider {
    pub name: Option<String>,
    pub note: Option<String>,
    pub usage_limits: Option<Value>,
    pub rate_limits: Option<Value>,
    pub expires_at: Option<Value>,
    pub reset_usage: Option<bool>,
}

/// `active`, `expired`, or `exhausted` (a budget of the provider used up).
pub async fn status(state: &SharedState, p: &ProviderRecord, now: DateTime<Utc>) -> &'static str {
    if p.expires_at.is_some_and(|t| t <= now) {
        "expired"
    } else if crate::limits::provider_exhausted(state, p, now).await {
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

/// The workspace a providers call acts on: a workspace key's own, or the
/// `workspace_id` an organisation key names.
fn target_workspace(snap: &Snapshot, caller: &Caller, asked: Option<&str>, scope: &str) -> Result<String, AdminError> {
    caller.require_scope(scope)?;
    let named = |w: &str| {
        snap.workspaces
            .get(w)
            .or_else(|| snap.workspace_by_slug(w))
            .map(|w| w.id.clone())
    };
    match (caller.workspace_id(), asked) {
        (Some(own), None) => Ok(own.to_owned()),
        // A workspace key naming any other workspace, existing or not, is
        // refused alike: nothing about other workspaces is revealed.
        (Some(own), Some(w)) => match named(w) {
            Some(id) if id == own => Ok(id),
            _ => Err(AdminError::forbidden("this API key can act only in its own workspace")),
        },
        (None, Some(w)) => named(w).ok_or_else(|| AdminError::validation(format!("workspace_id '{w}' does not exist"))),
        (None, None) => Err(AdminError::validation("workspace_id is required")),
    }
}

fn find(snap: &Snapshot, ws: &str, slug: &str) -> Result<Arc<crate::snapshot::Route>, AdminError> {
    snap.route(ws, slug)
        .cloned()
        .ok_or_else(|| AdminError::not_found(format!("provider '{slug}' not found in workspace '{ws}'")))
}

pub async fn list(
    State(state): State<SharedState>,
    caller: Caller,
    Query(q): Query<WorkspaceQuery>,
) -> Result<Json<Value>, AdminError> {
    let snap = state.snapshot();
    let ws = target_workspace(&snap, &caller, q.workspace_id.as_deref(), "providers.read")?;
    let now = state.now();
    let mut routes: Vec<_> = snap.routes_of(&ws).collect();
    routes.sort_by(|a, b| {
        a.provider
            .created_at
            .cmp(&b.provider.created_at)
            .then(a.provider.slug.cmp(&b.provider.slug))
    });
    let mut data = Vec::with_capacity(routes.len());
    for r in routes {
        data.push(to_json(&state, &snap, &r.provider, false, now).await);
    }
    Ok(Json(q.page.list(data)?))
}

pub async fn create(
    State(state): State<SharedState>,
    caller: Caller,
    Body(body): Body<CreateProvider>,
) -> Result<Json<Value>, AdminError> {
    let snap = state.snapshot();
    let ws = target_workspace(&snap, &caller, body.workspace_id.as_deref(), "providers.write")?;
    let unknown = || AdminError::validation(format!("integration '{}' does not exist", body.integration_id));
    let integration = snap
        .integration_by_slug(&body.integration_id)
        .or_else(|| snap.integration(&body.integration_id))
        .ok_or_else(unknown)?;
    if integration.record.access_for(&ws).is_none() {
        // A workspace key learns nothing of another workspace's integrations.
        if !caller.is_org() && integration.record.workspace_id.is_some() {
            return Err(unknown());
        }
        return Err(AdminError::forbidden(format!(
            "integration '{}' is not provisioned to workspace '{ws}'",
            integration.record.slug
        )));
    }
    let name = super::check_name("name", &body.name)?;
    let note = super::check_text("note", body.note)?;
    let slug = match body.slug {
        Some(s) => {
            super::check_slug("slug", &s)?;
            s
        }
        None => ids::slugify(&name),
    };
    if snap.route(&ws, &slug).is_some() {
        return Err(AdminError::conflict(format!(
            "provider '{slug}' already exists in this workspace"
        )));
    }
    let now = state.now();
    let expires_at = parse_time(body.expires_at.as_ref(), "expires_at")?;
    let p = ProviderRecord {
        id: ids::prefixed_id("prv"),
        slug,
        name,
        workspace_id: ws,
        integration_id: integration.record.id.clone(),
        note,
        limits: merge_limits(
            &Limits::default(),
            body.usage_limits.as_ref(),
            body.rate_limits.as_ref(),
            now,
        )?,
        expires_at,
        is_default: false,
        created_at: now,
        last_updated_at: now,
    };
    let mut change = state.change().await?;
    change.tx.put_provider(&p).await?;
    let audit = state.audit_entry(
        Some(caller.id()),
        "create",
        "provider",
        &p.id,
        json!({"slug": p.slug, "workspace_id": p.workspace_id, "integration": integration.record.slug}),
    );
    change.commit(audit).await?;
    Ok(Json(json!({"id": p.id, "slug": p.slug, "object": "provider"})))
}

pub async fn retrieve(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
    Query(q): Query<WorkspaceQuery>,
) -> Result<Json<Value>, AdminError> {
    let snap = state.snapshot();
    let ws = target_workspace(&snap, &caller, q.workspace_id.as_deref(), "providers.read")?;
    let r = find(&snap, &ws, &slug)?;
    Ok(Json(to_json(&state, &snap, &r.provider, true, state.now()).await))
}

pub async fn update(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
    Query(q): Query<WorkspaceQuery>,
    Body(body): Body<UpdateProvider>,
) -> Result<Json<Value>, AdminError> {
    let snap = state.snapshot();
    let ws = target_workspace(&snap, &caller, q.workspace_id.as_deref(), "providers.write")?;
    let mut p = find(&snap, &ws, &slug)?.provider.clone();
    let now = state.now();
    if let Some(n) = &body.name {
        p.name = super::check_name("name", n)?;
    }
    if body.note.is_some() {
        p.note = super::check_text("note", body.note)?;
    }
    if body.expires_at.is_some() {
        p.expires_at = parse_time(body.expires_at.as_ref(), "expires_at")?;
    }
    p.limits = merge_limits(&p.limits, body.usage_limits.as_ref(), body.rate_limits.as_ref(), now)?;
    if body.reset_usage == Some(true) {
        super::reset_usage(&mut p.limits, now);
    }
    p.last_updated_at = now;
    let mut change = state.change().await?;
    change.tx.put_provider(&p).await?;
    let audit = state.audit_entry(
        Some(caller.id()),
        "update",
        "provider",
        &p.id,
        json!({"slug": p.slug, "reset_usage": body.reset_usage}),
    );
    change.commit(audit).await?;
    Ok(Json(to_json(&state, &state.snapshot(), &p, true, now).await))
}

pub async fn delete(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
    Query(q): Query<WorkspaceQuery>,
) -> Result<Json<Value>, AdminError> {
    let snap = state.snapshot();
    let ws = target_workspace(&snap, &caller, q.workspace_id.as_deref(), "providers.write")?;
    let r = find(&snap, &ws, &slug)?;
    let mut change = state.change().await?;
    change.tx.delete_provider(&r.provider.id).await?;
    let audit = state.audit_entry(
        Some(caller.id()),
        "delete",
        "provider",
        &r.provider.id,
        json!({"slug": slug, "workspace_id": ws}),
    );
    change.commit(audit).await?;
    Ok(Json(json!({"success": true})))
}
