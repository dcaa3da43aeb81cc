//! Providers: integrations as they appear in one workspace's catalogue.
//! Provisioning creates a default one per integration; a workspace admin
//! may add more, each with its own slug, note, expiry and limits.

use super::ids::{ObjectType, ProviderId};
use super::validate::{check_name, check_slug, check_text, merge_limits};
use super::{workspace_named, Audit, Caller, Control, Ctx, Planned, RateRequest, TimeRequest, UsageRequest, Write};
use crate::error::AdminError;
use crate::snapshot::{Route, Snapshot};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use tollgate_core::ids;
use tollgate_core::records::{Limits, ProviderRecord};

#[derive(Debug, Deserialize)]
pub struct CreateProvider {
    pub name: String,
    /// The integration's slug or id.
    pub integration_id: String,
    #[serde(default)]
    pub workspace_id: Option<String>,
    #[serde(default)]
    pub slug: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub usage_limits: UsageRequest,
    #[serde(default)]
    pub rate_limits: RateRequest,
    #[serde(default)]
    pub expires_at: TimeRequest,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UpdateProvider {
    pub name: Option<String>,
    pub note: Option<String>,
    pub usage_limits: UsageRequest,
    pub rate_limits: RateRequest,
    pub expires_at: TimeRequest,
    pub reset_usage: Option<bool>,
}

/// What a create answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub id: ProviderId,
    pub slug: String,
}

/// The workspace a providers call acts on: a workspace key's own, or the
/// `workspace_id` an organisation key names.
pub fn target_workspace(
    snap: &Snapshot,
    caller: &Caller,
    asked: Option<&str>,
    scope: &str,
) -> Result<String, AdminError> {
    caller.require_scope(scope)?;
    let named = |w: &str| workspace_named(snap, w).map(|w| w.id.clone());
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

fn find(snap: &Snapshot, ws: &str, slug: &str) -> Result<Arc<Route>, AdminError> {
    snap.route(ws, slug)
        .cloned()
        .ok_or_else(|| AdminError::not_found(format!("provider '{slug}' not found in workspace '{ws}'")))
}

/// The providers of the workspace the caller acts on, oldest first.
pub fn list(snap: &Snapshot, caller: &Caller, workspace_id: Option<&str>) -> Result<Vec<ProviderRecord>, AdminError> {
    let ws = target_workspace(snap, caller, workspace_id, "providers.read")?;
    let mut routes: Vec<_> = snap.routes_of(&ws).collect();
    routes.sort_by(|a, b| {
        a.provider_record
            .created_at
            .cmp(&b.provider_record.created_at)
            .then(a.provider_record.slug.cmp(&b.provider_record.slug))
    });
    Ok(routes.into_iter().map(|r| r.provider_record.clone()).collect())
}

pub fn retrieve(
    snap: &Snapshot,
    caller: &Caller,
    slug: &str,
    workspace_id: Option<&str>,
) -> Result<ProviderRecord, AdminError> {
    let ws = target_workspace(snap, caller, workspace_id, "providers.read")?;
    Ok(find(snap, &ws, slug)?.provider_record.clone())
}

pub fn plan_create(
    snap: &Snapshot,
    caller: &Caller,
    ctx: &Ctx,
    body: CreateProvider,
) -> Result<Planned<Created>, AdminError> {
    let ws = target_workspace(snap, caller, body.workspace_id.as_deref(), "providers.write")?;
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
    let name = check_name("name", &body.name)?;
    let note = check_text("note", body.note)?;
    let slug = match body.slug {
        Some(s) => {
            check_slug("slug", &s)?;
            s
        }
        None => ids::slugify(&name),
    };
    if snap.route(&ws, &slug).is_some() {
        return Err(AdminError::conflict(format!(
            "provider '{slug}' already exists in this workspace"
        )));
    }
    let now = ctx.now;
    let expires_at = body.expires_at.get("expires_at")?;
    let p = ProviderRecord {
        id: ids::prefixed_id("prv"),
        slug,
        name,
        workspace_id: ws,
        integration_id: integration.record.id.clone(),
        note,
        limits: merge_limits(&Limits::default(), &body.usage_limits, &body.rate_limits, false, now)?,
        expires_at,
        is_default: false,
        created_at: now,
        last_updated_at: now,
    };
    Ok(Planned {
        audit: Audit::new(
            "create",
            ObjectType::Provider,
            &p.id,
            json!({"slug": p.slug, "workspace_id": p.workspace_id, "integration": integration.record.slug}),
        ),
        output: Created {
            id: ProviderId::new(p.id.clone()),
            slug: p.slug.clone(),
        },
        writes: vec![Write::Provider(p)],
    })
}

pub fn plan_update(
    snap: &Snapshot,
    caller: &Caller,
    ctx: &Ctx,
    slug: &str,
    workspace_id: Option<&str>,
    body: UpdateProvider,
) -> Result<Planned<ProviderRecord>, AdminError> {
    let ws = target_workspace(snap, caller, workspace_id, "providers.write")?;
    let mut p = find(snap, &ws, slug)?.provider_record.clone();
    let now = ctx.now;
    if let Some(n) = &body.name {
        p.name = check_name("name", n)?;
    }
    if body.note.is_some() {
        p.note = check_text("note", body.note)?;
    }
    if body.expires_at.is_present() {
        p.expires_at = body.expires_at.get("expires_at")?;
    }
    p.limits = merge_limits(
        &p.limits,
        &body.usage_limits,
        &body.rate_limits,
        body.reset_usage == Some(true),
        now,
    )?;
    p.last_updated_at = now;
    Ok(Planned {
        audit: Audit::new(
            "update",
            ObjectType::Provider,
            &p.id,
            json!({"slug": p.slug, "reset_usage": body.reset_usage}),
        ),
        writes: vec![Write::Provider(p.clone())],
        output: p,
    })
}

pub fn plan_delete(
    snap: &Snapshot,
    caller: &Caller,
    slug: &str,
    workspace_id: Option<&str>,
) -> Result<Planned<()>, AdminError> {
    let ws = target_workspace(snap, caller, workspace_id, "providers.write")?;
    let r = find(snap, &ws, slug)?;
    Ok(Planned {
        writes: vec![Write::DeleteProvider(ProviderId::new(r.provider_record.id.clone()))],
        audit: Audit::new(
            "delete",
            ObjectType::Provider,
            &r.provider_record.id,
            json!({"slug": slug, "workspace_id": ws}),
        ),
        output: (),
    })
}

impl Control<'_> {
    pub async fn create_provider(&self, caller: &Caller, body: CreateProvider) -> Result<Created, AdminError> {
        self.run(caller, |snap, ctx| plan_create(snap, caller, ctx, body)).await
    }

    pub async fn update_provider(
        &self,
        caller: &Caller,
        slug: &str,
        workspace_id: Option<&str>,
        body: UpdateProvider,
    ) -> Result<ProviderRecord, AdminError> {
        self.run(caller, |snap, ctx| {
            plan_update(snap, caller, ctx, slug, workspace_id, body)
        })
        .await
    }

    pub async fn delete_provider(
        &self,
        caller: &Caller,
        slug: &str,
        workspace_id: Option<&str>,
    ) -> Result<(), AdminError> {
        self.run(caller, |snap, _| plan_delete(snap, caller, slug, workspace_id))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::integrations::{self, CreateIntegration, PutWorkspaces};
    use crate::control::testing::*;
    use crate::error::AdminCode;
    use serde_json::Value;
    use tollgate_store::ControlData;

    /// Two workspaces; `openai` provisioned to `ws-a` only.
    fn setup(ctx: &Ctx) -> ControlData {
        let mut data = two_workspaces();
        let snap = snapshot(data.clone(), ctx);
        let body: CreateIntegration =
            serde_json::from_value(json!({"name": "OpenAI", "ai_provider_id": "openai", "key": "sk-abcdefghijklmnop"}))
                .unwrap();
        apply(
            &mut data,
            &integrations::plan_create(&snap, &org(), ctx, body).unwrap().writes,
        );
        let snap = snapshot(data.clone(), ctx);
        let grant: PutWorkspaces = serde_json::from_value(json!({"workspaces": [{"id": "a"}]})).unwrap();
        apply(
            &mut data,
            &integrations::plan_put_workspaces(&snap, &org(), ctx, "openai", grant)
                .unwrap()
                .writes,
        );
        data
    }

    fn create(data: &mut ControlData, ctx: &Ctx, caller: &Caller, body: Value) -> Result<Created, AdminError> {
        let snap = snapshot(data.clone(), ctx);
        let p = plan_create(&snap, caller, ctx, serde_json::from_value(body).unwrap())?;
        apply(data, &p.writes);
        Ok(p.output)
    }

    #[test]
    fn providers_are_created_only_where_the_integration_is_provisioned() {
        let ctx = ctx();
        let mut data = setup(&ctx);
        let k = ws_key("ws-a", &["providers.*"]);
        let c = create(
            &mut data,
            &ctx,
            &k,
            json!({"name": "Team budget", "integration_id": "openai", "usage_limits": {"credit_limit": 5},
                   "expires_at": "2030-01-01T00:00:00Z"}),
        )
        .unwrap();
        assert_eq!(c.slug, "team-budget");
        let p = data.providers.iter().find(|p| p.id == c.id.as_str()).unwrap();
        assert_eq!(p.workspace_id, "ws-a");
        assert!(p.limits.usage.is_some() && p.expires_at.is_some() && !p.is_default);
        for (caller, body, code, message) in [
            (
                org(),
                json!({"name": "x", "integration_id": "openai"}),
                AdminCode::Validation,
                "workspace_id is required",
            ),
            (
                org(),
                json!({"name": "x", "integration_id": "openai", "workspace_id": "b"}),
                AdminCode::Forbidden,
                "integration 'openai' is not provisioned to workspace 'ws-b'",
            ),
            (
                org(),
                json!({"name": "x", "integration_id": "nope", "workspace_id": "a"}),
                AdminCode::Validation,
                "integration 'nope' does not exist",
            ),
            (
                k.clone(),
                json!({"name": "x", "integration_id": "openai", "workspace_id": "b"}),
                AdminCode::Forbidden,
                "this API key can act only in its own workspace",
            ),
            (
                ws_key("ws-a", &["providers.read"]),
                json!({"name": "x", "integration_id": "openai"}),
                AdminCode::Forbidden,
                "this API key lacks the 'providers.write' scope",
            ),
            (
                k.clone(),
                json!({"name": "x", "integration_id": "openai", "slug": "openai"}),
                AdminCode::Conflict,
                "provider 'openai' already exists in this workspace",
            ),
            (
                k.clone(),
                json!({"name": "x", "integration_id": "openai", "expires_at": "soon"}),
                AdminCode::Validation,
                "expires_at must be an ISO 8601 / RFC 3339 time",
            ),
        ] {
            let e = create(&mut data, &ctx, &caller, body.clone()).unwrap_err();
            assert_eq!((e.code, e.message.as_str()), (code, message), "{body}");
        }
        let bad_rate = json!({"name": "x", "integration_id": "openai", "rate_limits": {"unit": "rps", "value": 1}});
        let e = create(&mut data, &ctx, &k, bad_rate).unwrap_err();
        assert!(e.message.starts_with("invalid rate limit: "), "{}", e.message);
    }

    #[test]
    fn updates_keep_limits_immutable_and_deletes_remove() {
        let ctx = ctx();
        let mut data = setup(&ctx);
        let k = ws_key("ws-a", &["providers.write"]);
        let snap = snapshot(data.clone(), &ctx);
        let body: UpdateProvider =
            serde_json::from_value(json!({"note": "n", "rate_limits": {"unit": "rpm", "value": 3}})).unwrap();
        let p = plan_update(&snap, &k, &ctx, "openai", None, body).unwrap();
        assert_eq!(p.output.note.as_deref(), Some("n"));
        assert_eq!(p.audit.details, json!({"slug": "openai", "reset_usage": null}));
        apply(&mut data, &p.writes);
        let snap = snapshot(data.clone(), &ctx);
        let body: UpdateProvider = serde_json::from_value(json!({"rate_limits": {"unit": "rpm", "value": 4}})).unwrap();
        assert_eq!(
            plan_update(&snap, &k, &ctx, "openai", None, body).unwrap_err().code,
            AdminCode::Conflict
        );
        let e = plan_update(&snap, &k, &ctx, "zz", None, UpdateProvider::default()).unwrap_err();
        assert_eq!(e.message, "provider 'zz' not found in workspace 'ws-a'");
        let p = plan_delete(&snap, &org(), "openai", Some("a")).unwrap();
        assert_eq!(p.audit.details, json!({"slug": "openai", "workspace_id": "ws-a"}));
        assert!(matches!(&p.writes[..], [Write::DeleteProvider(_)]));
        assert_eq!(list(&snap, &k, None).unwrap().len(), 1);
        assert_eq!(retrieve(&snap, &org(), "openai", Some("ws-a")).unwrap().slug, "openai");
    }
}
