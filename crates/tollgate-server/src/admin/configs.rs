//! `/v1/configs`: saved routing configs (create, list, retrieve, update,
//! delete, versions), in the shapes the `portkey-ai` SDK's `configs` uses.
//!
//! A config belongs to the organisation (every workspace may use it) or to
//! one workspace. An organisation key manages all of them; a workspace key
//! with `configs.write` manages its workspace's, and with `configs.read`
//! sees its own and the organisation's. Every update keeps a new version.

use super::{Body, Page};
use crate::auth::Caller;
use crate::error::AdminError;
use crate::snapshot::{ConfigEntry, Snapshot};
use crate::state::SharedState;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use std::sync::Arc;
use tollgate_core::ids;
use tollgate_core::records::SavedConfig;
use tollgate_core::routing::Plan;

/// `Some(value)` when the field is present, even as `null`.
pub fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize)]
pub struct CreateConfig {
    pub name: String,
    pub config: Value,
    #[serde(default)]
    pub workspace_id: Option<String>,
    /// Accepted for the SDK's sake; a workspace's default config is set on
    /// the workspace (`default_config`).
    #[serde(default)]
    pub is_default: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UpdateConfig {
    pub name: Option<String>,
    pub config: Option<Value>,
    /// Only `active` exists; sent by the SDK.
    pub status: Option<String>,
    /// Sent by the SDK; the path names the config.
    pub slug: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ListConfigs {
    pub workspace_id: Option<String>,
    #[serde(flatten)]
    pub page: Page,
}

/// A config object as sent (an object, or its JSON text), validated.
/// `field` prefixes the path an error names.
pub fn parse_config(v: Value, field: &str) -> Result<(Value, Plan), AdminError> {
    let v = match v {
        Value::String(text) => serde_json::from_str(&text)
            .map_err(|e| AdminError::validation(format!("{field} is not valid JSON: {e}")))?,
        other => other,
    };
    let plan = Plan::from_value(v.clone()).map_err(|e| {
        let path = if e.field == "config" {
            field.to_owned()
        } else {
            format!("{field}.{}", e.field)
        };
        AdminError::validation(format!("invalid {path}: {}", e.message))
    })?;
    Ok((v, plan))
}

/// Validates a `default_config` (a saved config's id or slug, or an object)
/// for keys and workspaces of `workspace_id`, and returns what to store:
/// `None` clears it.
pub fn check_default_config(
    snap: &Snapshot,
    v: Value,
    workspace_id: Option<&str>,
) -> Result<Option<Value>, AdminError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => snap
            .config(&s, workspace_id)
            .map(|c| Some(Value::String(c.record.slug.clone())))
            .ok_or_else(|| AdminError::validation(format!("default_config: config '{s}' not found"))),
        v @ Value::Object(_) => parse_config(v, "default_config").map(|(v, _)| Some(v)),
        _ => Err(AdminError::validation(
            "default_config must be a saved config's id or a config object",
        )),
    }
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

/// The workspace a new config belongs to: a workspace key's own, the one an
/// organisation key names, or none (the organisation's).
fn owner(snap: &Snapshot, caller: &Caller, asked: Option<&str>) -> Result<Option<String>, AdminError> {
    let asked = match asked {
        None | Some("") => None,
        Some(w) => Some(
            snap.workspaces
                .get(w)
                .or_else(|| snap.workspace_by_slug(w))
                .map(|w| w.id.clone())
                .ok_or_else(|| AdminError::validation(format!("workspace_id '{w}' does not exist")))?,
        ),
    };
    match (caller.workspace_id(), asked) {
        (Some(own), None) => Ok(Some(own.to_owned())),
        (_, Some(w)) => {
            caller.require_workspace(&w)?;
            Ok(Some(w))
        }
        (None, None) => Ok(None),
    }
}

/// A config the caller may see.
fn visible(snap: &Snapshot, caller: &Caller, slug: &str) -> Result<Arc<ConfigEntry>, AdminError> {
    snap.config(slug, caller.workspace_id())
        .cloned()
        .ok_or_else(|| AdminError::not_found(format!("config '{slug}' not found")))
}

/// A config the caller may change: an organisation key any, a workspace key
/// its own workspace's.
fn writable(snap: &Snapshot, caller: &Caller, slug: &str) -> Result<Arc<ConfigEntry>, AdminError> {
    let c = visible(snap, caller, slug)?;
    match (&c.record.workspace_id, caller.workspace_id()) {
        (_, None) => Ok(c),
        (Some(w), Some(own)) if w == own => Ok(c),
        _ => Err(AdminError::forbidden(
            "this API key cannot change the organisation's configs",
        )),
    }
}

fn new_slug(name: &str) -> String {
    let mut stem: String = ids::slugify(name).to_ascii_lowercase().chars().take(16).collect();
    if stem.is_empty() {
        stem.push_str("config");
    }
    format!("pc-{stem}-{}", ids::random_hex(3))
}

pub async fn create(
    State(state): State<SharedState>,
    caller: Caller,
    Body(body): Body<CreateConfig>,
) -> Result<Json<Value>, AdminError> {
    caller.require_scope("configs.write")?;
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.len() > 200 {
        return Err(AdminError::validation("name must be 1 to 200 characters"));
    }
    let (config, _) = parse_config(body.config, "config")?;
    let snap = state.snapshot();
    let workspace_id = owner(&snap, &caller, body.workspace_id.as_deref())?;
    let now = state.now();
    let c = SavedConfig {
        id: uuid::Uuid::new_v4().to_string(),
        slug: new_slug(&name),
        name,
        workspace_id,
        config,
        version_id: uuid::Uuid::new_v4().to_string(),
        created_by: Some(caller.id().to_owned()),
        created_at: now,
        last_updated_at: now,
    };
    let mut change = state.change().await?;
    change.tx.put_config(&c).await?;
    let audit = state.audit_entry(
        Some(caller.id()),
        "create",
        "config",
        &c.id,
        json!({"slug": c.slug, "name": c.name, "workspace_id": c.workspace_id, "version_id": c.version_id}),
    );
    change.commit(audit).await?;
    Ok(Json(
        json!({"id": c.id, "slug": c.slug, "version_id": c.version_id, "object": "config"}),
    ))
}

pub async fn list(
    State(state): State<SharedState>,
    caller: Caller,
    Query(q): Query<ListConfigs>,
) -> Result<Json<Value>, AdminError> {
    caller.require_scope("configs.read")?;
    let snap = state.snapshot();
    let only = match q.workspace_id.as_deref() {
        None | Some("") => None,
        Some(w) => {
            let id = snap
                .workspaces
                .get(w)
                .or_else(|| snap.workspace_by_slug(w))
                .map(|w| w.id.clone())
                .ok_or_else(|| AdminError::validation(format!("workspace_id '{w}' does not exist")))?;
            caller.require_workspace(&id)?;
            Some(id)
        }
    };
    let scope = only.as_deref().or(caller.workspace_id());
    let mut configs: Vec<&SavedConfig> = snap
        .configs()
        .map(|c| &c.record)
        .filter(|c| match (&c.workspace_id, scope) {
            (None, _) | (_, None) => true,
            (Some(w), Some(s)) => w == s,
        })
        .collect();
    configs.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    Ok(Json(q.page.list(
        configs.into_iter().map(|c| to_json(c, &snap.org_id)).collect(),
    )?))
}

pub async fn retrieve(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
) -> Result<Json<Value>, AdminError> {
    caller.require_scope("configs.read")?;
    let snap = state.snapshot();
    let c = visible(&snap, &caller, &slug)?;
    Ok(Json(to_json(&c.record, &snap.org_id)))
}

/// Every version of a config, newest first.
pub async fn versions(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
) -> Result<Json<Value>, AdminError> {
    caller.require_scope("configs.read")?;
    let c = visible(&state.snapshot(), &caller, &slug)?;
    let versions = state.store.config_versions(&c.record.id).await?;
    let data: Vec<Value> = versions
        .into_iter()
        .map(|(version_id, at, config)| json!({"version_id": version_id, "created_at": at, "config": config, "object": "config_version"}))
        .collect();
    Ok(Json(json!({"object": "list", "total": data.len(), "data": data})))
}

pub async fn update(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
    Body(body): Body<UpdateConfig>,
) -> Result<Json<Value>, AdminError> {
    caller.require_scope("configs.write")?;
    if body.slug.as_deref().is_some_and(|s| s != slug) {
        return Err(AdminError::validation(
            "slug in the body differs from the config in the path",
        ));
    }
    if body.status.as_deref().is_some_and(|s| s != "active") {
        return Err(AdminError::validation("status must be 'active'"));
    }
    let snap = state.snapshot();
    let current = writable(&snap, &caller, &slug)?;
    let mut c = current.record.clone();
    if let Some(n) = body.name {
        let n = n.trim().to_owned();
        if n.is_empty() || n.len() > 200 {
            return Err(AdminError::validation("name must be 1 to 200 characters"));
        }
        c.name = n;
    }
    if let Some(v) = body.config {
        c.config = parse_config(v, "config")?.0;
    }
    c.version_id = uuid::Uuid::new_v4().to_string();
    c.last_updated_at = state.now();
    let mut change = state.change().await?;
    change.tx.put_config(&c).await?;
    let audit = state.audit_entry(
        Some(caller.id()),
        "update",
        "config",
        &c.id,
        json!({"slug": c.slug, "name": c.name, "version_id": c.version_id}),
    );
    change.commit(audit).await?;
    Ok(Json(json!({"version_id": c.version_id, "object": "config"})))
}

pub async fn delete(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
) -> Result<Json<Value>, AdminError> {
    caller.require_scope("configs.write")?;
    let snap = state.snapshot();
    let c = writable(&snap, &caller, &slug)?;
    let named = |v: &Option<Value>| v.as_ref().and_then(Value::as_str) == Some(c.record.slug.as_str());
    if let Some(w) = snap.workspaces.values().find(|w| named(&w.default_config)) {
        return Err(AdminError::conflict(format!(
            "config '{}' is the default config of workspace '{}'; change that first",
            c.record.slug, w.slug
        )));
    }
    if let Some(k) = snap.keys().find(|k| named(&k.record.default_config)) {
        return Err(AdminError::conflict(format!(
            "config '{}' is the default config of API key '{}'; change that first",
            c.record.slug, k.record.id
        )));
    }
    let mut change = state.change().await?;
    change.tx.delete_config(&c.record.id).await?;
    let audit = state.audit_entry(
        Some(caller.id()),
        "delete",
        "config",
        &c.record.id,
        json!({"slug": c.record.slug}),
    );
    change.commit(audit).await?;
    Ok(Json(json!({"success": true})))
}
