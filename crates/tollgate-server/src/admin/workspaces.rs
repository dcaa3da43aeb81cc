//! `/v1/admin/workspaces`: create, list, retrieve, update, delete.

use super::{merge_limits, rate_limits_array, usage_limit_json, Body, Page};
use crate::auth::Caller;
use crate::error::AdminError;
use crate::state::SharedState;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tollgate_core::ids;
use tollgate_core::records::{Limits, Workspace};

#[derive(Debug, Deserialize)]
pub struct CreateWorkspace {
    pub name: String,
    #[serde(default)]
    pub slug: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub defaults: Option<Value>,
    #[serde(default)]
    pub usage_limits: Option<Value>,
    #[serde(default)]
    pub rate_limits: Option<Value>,
    #[serde(default)]
    pub log_bodies: Option<bool>,
    /// The routing config applied when a request sends none.
    #[serde(default)]
    pub default_config: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UpdateWorkspace {
    /// Zeroes the consumed budget: only usage from now on counts.
    pub reset_usage: Option<bool>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub defaults: Option<Value>,
    pub usage_limits: Option<Value>,
    pub rate_limits: Option<Value>,
    pub log_bodies: Option<bool>,
    /// Present as `null`: cleared.
    #[serde(deserialize_with = "super::configs::present")]
    pub default_config: Option<Value>,
}

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

fn check_defaults(d: &Option<Value>) -> Result<(), AdminError> {
    match d {
        None | Some(Value::Null) | Some(Value::Object(_)) => Ok(()),
        Some(_) => Err(AdminError::validation("defaults must be an object")),
    }
}

pub async fn create(
    State(state): State<SharedState>,
    caller: Caller,
    Body(body): Body<CreateWorkspace>,
) -> Result<Json<Value>, AdminError> {
    caller.require_org()?;
    let name = super::check_name("name", &body.name)?;
    let description = super::check_text("description", body.description)?;
    check_defaults(&body.defaults)?;
    let slug = match &body.slug {
        Some(s) => {
            super::check_slug("slug", s)?;
            s.clone()
        }
        None => ids::slugify(&name),
    };
    let now = state.now();
    let limits = merge_limits(
        &Limits::default(),
        body.usage_limits.as_ref(),
        body.rate_limits.as_ref(),
        now,
    )?;
    let id = ids::workspace_id(&slug);
    let default_config = match body.default_config {
        Some(v) => super::configs::check_default_config(&state.snapshot(), v, Some(&id))?,
        None => None,
    };
    let w = Workspace {
        default_config,
        id,
        slug,
        name,
        description,
        defaults: body.defaults.unwrap_or(Value::Null),
        limits,
        log_bodies: body.log_bodies.unwrap_or(false),
        created_at: now,
        last_updated_at: now,
    };
    let mut change = state.change().await?;
    change.tx.put_workspace(&w).await?;
    // Integrations open to "All Workspaces" appear in the new one at once.
    let snap = state.snapshot();
    for i in snap.integrations() {
        if i.record.workspace_id.is_none() && i.record.global_access.enabled {
            super::integrations::ensure_default_provider(&mut change.tx, &snap, &i.record, &w.id, None, now).await?;
        }
    }
    let audit = state.audit_entry(
        Some(caller.id()),
        "create",
        "workspace",
        &w.id,
        json!({"slug": w.slug, "name": w.name}),
    );
    change.commit(audit).await?;
    Ok(Json(to_json(&w, now)))
}

/// The name filters of `GET /v1/admin/workspaces`, as the `portkey-ai` SDK
/// sends them: `name` matches part of the name, `exact_name` all of it;
/// both are case-sensitive, as in Portkey.
#[derive(Debug, Default, Deserialize)]
pub struct NameFilter {
    pub name: Option<String>,
    pub exact_name: Option<String>,
}

impl NameFilter {
    fn matches(&self, name: &str) -> bool {
        self.name.as_deref().is_none_or(|part| name.contains(part))
            && self.exact_name.as_deref().is_none_or(|exact| name == exact)
    }
}

pub async fn list(
    State(state): State<SharedState>,
    caller: Caller,
    Query(page): Query<Page>,
    Query(names): Query<NameFilter>,
) -> Result<Json<Value>, AdminError> {
    let snap = state.snapshot();
    let now = state.now();
    let mut ws: Vec<_> = snap
        .workspaces
        .values()
        .filter(|w| caller.is_org() || caller.workspace_id() == Some(w.id.as_str()))
        .filter(|w| names.matches(&w.name))
        .collect();
    ws.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    Ok(Json(page.list(ws.into_iter().map(|w| to_json(w, now)).collect())?))
}

/// Finds a workspace by id or slug, as the caller may see it.
pub fn find(state: &SharedState, caller: &Caller, id: &str) -> Result<std::sync::Arc<Workspace>, AdminError> {
    let snap = state.snapshot();
    let w = snap
        .workspaces
        .get(id)
        .or_else(|| snap.workspace_by_slug(id))
        .cloned()
        .filter(|w| caller.require_workspace(&w.id).is_ok())
        // Another workspace answers as an unknown one does: its existence is
        // not revealed.
        .ok_or_else(|| AdminError::not_found(format!("workspace '{id}' not found")))?;
    Ok(w)
}

pub async fn retrieve(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let w = find(&state, &caller, &id)?;
    Ok(Json(to_json(&w, state.now())))
}

pub async fn update(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<UpdateWorkspace>,
) -> Result<Json<Value>, AdminError> {
    caller.require_org()?;
    let current = find(&state, &caller, &id)?;
    let now = state.now();
    let mut w = (*current).clone();
    if let Some(n) = &body.name {
        w.name = super::check_name("name", n)?;
    }
    check_defaults(&body.defaults)?;
    if body.description.is_some() {
        w.description = super::check_text("description", body.description)?;
    }
    if let Some(d) = body.defaults {
        w.defaults = d;
    }
    if let Some(b) = body.log_bodies {
        w.log_bodies = b;
    }
    if let Some(v) = body.default_config {
        w.default_config = super::configs::check_default_config(&state.snapshot(), v, Some(&w.id))?;
    }
    w.limits = merge_limits(&w.limits, body.usage_limits.as_ref(), body.rate_limits.as_ref(), now)?;
    if body.reset_usage == Some(true) {
        super::reset_usage(&mut w.limits, now);
    }
    w.last_updated_at = now;
    let mut change = state.change().await?;
    change.tx.put_workspace(&w).await?;
    let audit = state.audit_entry(Some(caller.id()), "update", "workspace", &w.id, json!({"slug": w.slug}));
    change.commit(audit).await?;
    Ok(Json(to_json(&w, now)))
}

pub async fn delete(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    caller.require_org()?;
    let w = find(&state, &caller, &id)?;
    let snap = state.snapshot();
    let mut change = state.change().await?;
    // Organisation integrations forget their grant to this workspace; its
    // keys, providers and own integrations go with it (foreign keys cascade).
    for i in snap.integrations() {
        if i.record.workspaces.contains_key(&w.id) {
            let mut rec = i.record.clone();
            rec.workspaces.remove(&w.id);
            change.tx.put_integration(&rec).await?;
        }
    }
    change.tx.delete_workspace(&w.id).await?;
    let audit = state.audit_entry(Some(caller.id()), "delete", "workspace", &w.id, json!({"slug": w.slug}));
    change.commit(audit).await?;
    Ok(Json(json!({"success": true})))
}

#[cfg(test)]
mod tests {
    use super::NameFilter;

    #[test]
    fn name_filters_are_case_sensitive_part_and_whole_matches() {
        let none = NameFilter::default();
        assert!(none.matches("Team Search"));
        let part = NameFilter {
            name: Some("Search".into()),
            exact_name: None,
        };
        assert!(part.matches("Team Search"));
        assert!(!part.matches("Team search"));
        let exact = NameFilter {
            name: None,
            exact_name: Some("Team".into()),
        };
        assert!(exact.matches("Team"));
        assert!(!exact.matches("Team Search"));
        let both = NameFilter {
            name: Some("ea".into()),
            exact_name: Some("Team".into()),
        };
        assert!(both.matches("Team"));
        assert!(!both.matches("Tam"));
    }
}
