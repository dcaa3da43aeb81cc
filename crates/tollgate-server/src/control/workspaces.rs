//! Workspaces: created, updated and deleted by organisation keys; a
//! workspace key sees its own. A new workspace gets the default provider of
//! every integration open to all workspaces.

use super::configs::check_default_config;
use super::ids::{ObjectType, WorkspaceId};
use super::integrations::default_provider;
use super::validate::{check_defaults, check_name, check_slug, check_text, merge_limits};
use super::{workspace_named, Audit, Caller, Control, Ctx, Planned, RateRequest, UsageRequest, Write};
use crate::error::AdminError;
use crate::snapshot::Snapshot;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
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
    pub usage_limits: UsageRequest,
    #[serde(default)]
    pub rate_limits: RateRequest,
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
    pub usage_limits: UsageRequest,
    pub rate_limits: RateRequest,
    pub log_bodies: Option<bool>,
    /// Present as `null`: cleared.
    #[serde(deserialize_with = "super::configs::present")]
    pub default_config: Option<Value>,
}

/// The name filters of a workspace list, as the `portkey-ai` SDK sends
/// them: `name` matches part of the name, `exact_name` all of it; both are
/// case-sensitive, as in Portkey.
#[derive(Debug, Default, Clone, Deserialize)]
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

/// The workspaces the caller may see, oldest first.
pub fn list(snap: &Snapshot, caller: &Caller, names: &NameFilter) -> Vec<Arc<Workspace>> {
    let mut ws: Vec<_> = snap
        .workspaces
        .values()
        .filter(|w| caller.is_org() || caller.workspace_id() == Some(w.id.as_str()))
        .filter(|w| names.matches(&w.name))
        .cloned()
        .collect();
    ws.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    ws
}

/// Finds a workspace by id or slug, as the caller may see it.
pub fn find(snap: &Snapshot, caller: &Caller, id: &str) -> Result<Arc<Workspace>, AdminError> {
    workspace_named(snap, id)
        .cloned()
        .filter(|w| caller.require_workspace(&w.id).is_ok())
        // Another workspace answers as an unknown one does: its existence is
        // not revealed.
        .ok_or_else(|| AdminError::not_found(format!("workspace '{id}' not found")))
}

pub fn plan_create(
    snap: &Snapshot,
    caller: &Caller,
    ctx: &Ctx,
    body: CreateWorkspace,
) -> Result<Planned<Workspace>, AdminError> {
    caller.require_org()?;
    let name = check_name("name", &body.name)?;
    let description = check_text("description", body.description)?;
    check_defaults(&body.defaults)?;
    let slug = match &body.slug {
        Some(s) => {
            check_slug("slug", s)?;
            s.clone()
        }
        None => ids::slugify(&name),
    };
    let now = ctx.now;
    let limits = merge_limits(&Limits::default(), &body.usage_limits, &body.rate_limits, false, now)?;
    let id = ids::workspace_id(&slug);
    let default_config = match body.default_config {
        Some(v) => check_default_config(snap, v, Some(&id))?,
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
    let mut writes = vec![Write::Workspace(w.clone())];
    // Integrations open to "All Workspaces" appear in the new one at once.
    for i in snap.integrations() {
        if i.record.workspace_id.is_none() && i.record.global_access.enabled {
            writes.extend(default_provider(snap, &i.record, &w.id, None, now)?.map(Write::Provider));
        }
    }
    Ok(Planned {
        writes,
        audit: Audit::new(
            "create",
            ObjectType::Workspace,
            &w.id,
            json!({"slug": w.slug, "name": w.name}),
        ),
        output: w,
    })
}

pub fn plan_update(
    snap: &Snapshot,
    caller: &Caller,
    ctx: &Ctx,
    id: &str,
    body: UpdateWorkspace,
) -> Result<Planned<Workspace>, AdminError> {
    caller.require_org()?;
    let current = find(snap, caller, id)?;
    let now = ctx.now;
    let mut w = (*current).clone();
    if let Some(n) = &body.name {
        w.name = check_name("name", n)?;
    }
    check_defaults(&body.defaults)?;
    if body.description.is_some() {
        w.description = check_text("description", body.description)?;
    }
    if let Some(d) = body.defaults {
        w.defaults = d;
    }
    if let Some(b) = body.log_bodies {
        w.log_bodies = b;
    }
    if let Some(v) = body.default_config {
        w.default_config = check_default_config(snap, v, Some(&w.id))?;
    }
    w.limits = merge_limits(
        &w.limits,
        &body.usage_limits,
        &body.rate_limits,
        body.reset_usage == Some(true),
        now,
    )?;
    w.last_updated_at = now;
    Ok(Planned {
        writes: vec![Write::Workspace(w.clone())],
        audit: Audit::new("update", ObjectType::Workspace, &w.id, json!({"slug": w.slug})),
        output: w,
    })
}

/// Deletes a workspace: organisation integrations forget their grant to
/// it; its keys, providers and own integrations go with it.
pub fn plan_delete(snap: &Snapshot, caller: &Caller, id: &str) -> Result<Planned<()>, AdminError> {
    caller.require_org()?;
    let w = find(snap, caller, id)?;
    let mut writes = Vec::new();
    for i in snap.integrations() {
        if i.record.workspaces.contains_key(&w.id) {
            let mut rec = i.record.clone();
            rec.workspaces.remove(&w.id);
            writes.push(Write::Integration(rec));
        }
    }
    writes.push(Write::DeleteWorkspace(WorkspaceId::new(w.id.clone())));
    Ok(Planned {
        writes,
        audit: Audit::new("delete", ObjectType::Workspace, &w.id, json!({"slug": w.slug})),
        output: (),
    })
}

impl Control<'_> {
    pub async fn create_workspace(&self, caller: &Caller, body: CreateWorkspace) -> Result<Workspace, AdminError> {
        self.run(caller, |snap, ctx| plan_create(snap, caller, ctx, body)).await
    }

    pub async fn update_workspace(
        &self,
        caller: &Caller,
        id: &str,
        body: UpdateWorkspace,
    ) -> Result<Workspace, AdminError> {
        self.run(caller, |snap, ctx| plan_update(snap, caller, ctx, id, body))
            .await
    }

    pub async fn delete_workspace(&self, caller: &Caller, id: &str) -> Result<(), AdminError> {
        self.run(caller, |snap, _| plan_delete(snap, caller, id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::integrations::{self, CreateIntegration, PutWorkspaces};
    use crate::control::testing::*;
    use crate::error::AdminCode;
    use tollgate_store::ControlData;

    fn create(
        data: &mut ControlData,
        ctx: &Ctx,
        caller: &Caller,
        body: Value,
    ) -> Result<(Workspace, Audit), AdminError> {
        let snap = snapshot(data.clone(), ctx);
        let p = plan_create(&snap, caller, ctx, serde_json::from_value(body).unwrap())?;
        apply(data, &p.writes);
        Ok((p.output, p.audit))
    }

    fn update(data: &mut ControlData, ctx: &Ctx, id: &str, body: Value) -> Result<Workspace, AdminError> {
        let snap = snapshot(data.clone(), ctx);
        let p = plan_update(&snap, &org(), ctx, id, serde_json::from_value(body).unwrap())?;
        apply(data, &p.writes);
        Ok(p.output)
    }

    #[test]
    fn create_validates_and_opens_global_integrations_to_the_new_workspace() {
        let ctx = ctx();
        let mut data = two_workspaces();
        let snap = snapshot(data.clone(), &ctx);
        let body: CreateIntegration =
            serde_json::from_value(json!({"name": "OpenAI", "ai_provider_id": "openai", "key": "sk-abcdefghijklmnop"}))
                .unwrap();
        let p = integrations::plan_create(&snap, &org(), &ctx, body).unwrap();
        apply(&mut data, &p.writes);
        let snap = snapshot(data.clone(), &ctx);
        let open: PutWorkspaces =
            serde_json::from_value(json!({"global_workspace_access": {"enabled": true}})).unwrap();
        let p = integrations::plan_put_workspaces(&snap, &org(), &ctx, "openai", open).unwrap();
        apply(&mut data, &p.writes);
        assert_eq!(data.providers.len(), 2);
        let (w, audit) = create(
            &mut data,
            &ctx,
            &org(),
            json!({"name": " Team C ", "usage_limits": [{"type": "tokens", "credit_limit": 1000}]}),
        )
        .unwrap();
        assert_eq!((w.name.as_str(), w.slug.as_str()), ("Team C", "team-c"));
        assert!(w.id.starts_with("ws-team-c-"));
        assert_eq!(w.limits.usage.as_ref().map(|u| u.limit.credit_limit), Some(1000));
        assert_eq!(
            (audit.action, audit.object_type),
            ("create", crate::control::ids::ObjectType::Workspace)
        );
        assert!(data
            .providers
            .iter()
            .any(|p| p.workspace_id == w.id && p.slug == "openai"));
        for (body, code, message) in [
            (
                json!({"name": ""}),
                AdminCode::Validation,
                "name must be 1 to 255 characters",
            ),
            (
                json!({"name": "x", "defaults": 1}),
                AdminCode::Validation,
                "defaults must be an object",
            ),
            (
                json!({"name": "x", "slug": "a/b"}),
                AdminCode::Validation,
                "slug must be 1 to 64 characters of a-z, A-Z, 0-9, '_' and '-'",
            ),
            (
                json!({"name": "x", "rate_limits": 5}),
                AdminCode::Validation,
                "a limit must be an object or a one-element array",
            ),
            (
                json!({"name": "x", "default_config": "pc-none"}),
                AdminCode::Validation,
                "default_config: config 'pc-none' not found",
            ),
        ] {
            let e = create(&mut data, &ctx, &org(), body.clone()).unwrap_err();
            assert_eq!((e.code, e.message.as_str()), (code, message), "{body}");
        }
        // Permission comes before validation.
        let e = create(&mut data, &ctx, &ws_key("ws-a", &["providers.*"]), json!({"name": ""})).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (AdminCode::Forbidden, "this operation needs an organisation admin key")
        );
    }

    #[test]
    fn limits_are_set_once_and_budgets_reset_on_request() {
        let ctx = ctx();
        let mut data = two_workspaces();
        let w = update(
            &mut data,
            &ctx,
            "a",
            json!({"usage_limits": {"credit_limit": 10}, "log_bodies": true}),
        )
        .unwrap();
        assert!(w.log_bodies);
        let set_at = w.limits.usage.as_ref().map(|u| u.set_at);
        let e = update(&mut data, &ctx, "a", json!({"usage_limits": {"credit_limit": 11}})).unwrap_err();
        assert_eq!(e.code, AdminCode::Conflict);
        let same = update(&mut data, &ctx, "a", json!({"usage_limits": {"credit_limit": 10}})).unwrap();
        assert_eq!(
            same.limits.usage.as_ref().map(|u| u.set_at),
            set_at,
            "resending is not an edit"
        );
        let later = Ctx {
            now: ctx.now + chrono::Duration::hours(1),
            master: ctx.master.clone(),
        };
        let reset = update(&mut data, &later, "ws-a", json!({"reset_usage": true})).unwrap();
        assert_eq!(reset.limits.usage.as_ref().map(|u| u.set_at), Some(later.now));
        assert_eq!(
            update(&mut data, &ctx, "zz", json!({})).unwrap_err().code,
            AdminCode::NotFound
        );
    }

    #[test]
    fn workspace_keys_see_only_their_own_and_change_none() {
        let ctx = ctx();
        let data = two_workspaces();
        let snap = snapshot(data, &ctx);
        let k = ws_key("ws-a", &[]);
        let ids: Vec<String> = list(&snap, &k, &NameFilter::default())
            .iter()
            .map(|w| w.id.clone())
            .collect();
        assert_eq!(ids, ["ws-a"]);
        assert_eq!(find(&snap, &k, "b").unwrap_err().code, AdminCode::NotFound);
        assert_eq!(plan_delete(&snap, &k, "a").unwrap_err().code, AdminCode::Forbidden);
        assert_eq!(list(&snap, &org(), &NameFilter::default()).len(), 2);
    }

    #[test]
    fn delete_drops_the_grants_of_organisation_integrations() {
        let ctx = ctx();
        let mut data = two_workspaces();
        let snap = snapshot(data.clone(), &ctx);
        let body: CreateIntegration =
            serde_json::from_value(json!({"name": "OpenAI", "ai_provider_id": "openai", "key": "sk-abcdefghijklmnop"}))
                .unwrap();
        apply(
            &mut data,
            &integrations::plan_create(&snap, &org(), &ctx, body).unwrap().writes,
        );
        let snap = snapshot(data.clone(), &ctx);
        let grant: PutWorkspaces = serde_json::from_value(json!({"workspaces": [{"id": "a"}, {"id": "b"}]})).unwrap();
        apply(
            &mut data,
            &integrations::plan_put_workspaces(&snap, &org(), &ctx, "openai", grant)
                .unwrap()
                .writes,
        );
        let snap = snapshot(data.clone(), &ctx);
        let p = plan_delete(&snap, &org(), "a").unwrap();
        assert_eq!(p.audit.details, json!({"slug": "a"}));
        assert!(matches!(p.writes.last(), Some(Write::DeleteWorkspace(id)) if id.as_str() == "ws-a"));
        apply(&mut data, &p.writes);
        assert!(!data.integrations[0].workspaces.contains_key("ws-a"));
        assert!(data.integrations[0].workspaces.contains_key("ws-b"));
    }

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
