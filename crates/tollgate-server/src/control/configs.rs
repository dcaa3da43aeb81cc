//! Saved routing configs. A config belongs to the organisation (every
//! workspace may use it) or to one workspace. An organisation key manages
//! all of them; a workspace key with `configs.write` manages its
//! workspace's, and with `configs.read` sees its own and the
//! organisation's. Every update keeps a new version.

use super::ids::{ConfigId, ObjectType};
use super::{workspace_named, Audit, Caller, Control, Ctx, Planned, Write};
use crate::error::AdminError;
use crate::snapshot::{ConfigEntry, Snapshot};
use chrono::{DateTime, Utc};
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
    /// The config object, or its JSON text.
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

/// What a create answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub id: ConfigId,
    pub slug: String,
    pub version_id: String,
}

/// One stored version of a config.
#[derive(Debug, Clone, PartialEq)]
pub struct Version {
    pub version_id: String,
    pub created_at: DateTime<Utc>,
    pub config: Value,
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

/// The workspace a new config belongs to: a workspace key's own, the one an
/// organisation key names, or none (the organisation's).
fn owner(snap: &Snapshot, caller: &Caller, asked: Option<&str>) -> Result<Option<String>, AdminError> {
    let asked = match asked {
        None | Some("") => None,
        Some(w) => Some(
            workspace_named(snap, w)
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

fn check_config_name(name: &str) -> Result<String, AdminError> {
    let name = name.trim().to_owned();
    if name.is_empty() || name.len() > 200 {
        return Err(AdminError::validation("name must be 1 to 200 characters"));
    }
    Ok(name)
}

/// The configs the caller may see (of one workspace, and the
/// organisation's), oldest first.
pub fn list(snap: &Snapshot, caller: &Caller, workspace_id: Option<&str>) -> Result<Vec<SavedConfig>, AdminError> {
    caller.require_scope("configs.read")?;
    let only = match workspace_id {
        None | Some("") => None,
        Some(w) => {
            let id = workspace_named(snap, w)
                .map(|w| w.id.clone())
                .ok_or_else(|| AdminError::validation(format!("workspace_id '{w}' does not exist")))?;
            caller.require_workspace(&id)?;
            Some(id)
        }
    };
    let scope = only.as_deref().or(caller.workspace_id());
    let mut configs: Vec<SavedConfig> = snap
        .configs()
        .map(|c| &c.record)
        .filter(|c| match (&c.workspace_id, scope) {
            (None, _) | (_, None) => true,
            (Some(w), Some(s)) => w == s,
        })
        .cloned()
        .collect();
    configs.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    Ok(configs)
}

pub fn retrieve(snap: &Snapshot, caller: &Caller, slug: &str) -> Result<SavedConfig, AdminError> {
    caller.require_scope("configs.read")?;
    Ok(visible(snap, caller, slug)?.record.clone())
}

pub fn plan_create(
    snap: &Snapshot,
    caller: &Caller,
    ctx: &Ctx,
    body: CreateConfig,
) -> Result<Planned<Created>, AdminError> {
    caller.require_scope("configs.write")?;
    let name = check_config_name(&body.name)?;
    let (config, _) = parse_config(body.config, "config")?;
    let workspace_id = owner(snap, caller, body.workspace_id.as_deref())?;
    let c = SavedConfig {
        id: uuid::Uuid::new_v4().to_string(),
        slug: new_slug(&name),
        name,
        workspace_id,
        config,
        version_id: uuid::Uuid::new_v4().to_string(),
        created_by: Some(caller.id().to_owned()),
        created_at: ctx.now,
        last_updated_at: ctx.now,
    };
    Ok(Planned {
        audit: Audit::new(
            "create",
            ObjectType::Config,
            &c.id,
            json!({"slug": c.slug, "name": c.name, "workspace_id": c.workspace_id, "version_id": c.version_id}),
        ),
        output: Created {
            id: ConfigId::new(c.id.clone()),
            slug: c.slug.clone(),
            version_id: c.version_id.clone(),
        },
        writes: vec![Write::Config(c)],
    })
}

/// Updates a config's name or object; every update is a new version.
/// Returns the new version id.
pub fn plan_update(
    snap: &Snapshot,
    caller: &Caller,
    ctx: &Ctx,
    slug: &str,
    body: UpdateConfig,
) -> Result<Planned<String>, AdminError> {
    caller.require_scope("configs.write")?;
    if body.slug.as_deref().is_some_and(|s| s != slug) {
        return Err(AdminError::validation(
            "slug in the body differs from the config in the path",
        ));
    }
    if body.status.as_deref().is_some_and(|s| s != "active") {
        return Err(AdminError::validation("status must be 'active'"));
    }
    let current = writable(snap, caller, slug)?;
    let mut c = current.record.clone();
    if let Some(n) = body.name {
        c.name = check_config_name(&n)?;
    }
    if let Some(v) = body.config {
        c.config = parse_config(v, "config")?.0;
    }
    c.version_id = uuid::Uuid::new_v4().to_string();
    c.last_updated_at = ctx.now;
    Ok(Planned {
        audit: Audit::new(
            "update",
            ObjectType::Config,
            &c.id,
            json!({"slug": c.slug, "name": c.name, "version_id": c.version_id}),
        ),
        output: c.version_id.clone(),
        writes: vec![Write::Config(c)],
    })
}

/// Deletes a config that no workspace or key names as its default.
pub fn plan_delete(snap: &Snapshot, caller: &Caller, slug: &str) -> Result<Planned<()>, AdminError> {
    caller.require_scope("configs.write")?;
    let c = writable(snap, caller, slug)?;
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
    Ok(Planned {
        writes: vec![Write::DeleteConfig(ConfigId::new(c.record.id.clone()))],
        audit: Audit::new(
            "delete",
            ObjectType::Config,
            &c.record.id,
            json!({"slug": c.record.slug}),
        ),
        output: (),
    })
}

impl Control<'_> {
    pub async fn create_config(&self, caller: &Caller, body: CreateConfig) -> Result<Created, AdminError> {
        self.run(caller, |snap, ctx| plan_create(snap, caller, ctx, body)).await
    }

    pub async fn update_config(&self, caller: &Caller, slug: &str, body: UpdateConfig) -> Result<String, AdminError> {
        self.run(caller, |snap, ctx| plan_update(snap, caller, ctx, slug, body))
            .await
    }

    pub async fn delete_config(&self, caller: &Caller, slug: &str) -> Result<(), AdminError> {
        self.run(caller, |snap, _| plan_delete(snap, caller, slug)).await
    }

    /// Every version of a config the caller may see, newest first.
    pub async fn config_versions(&self, caller: &Caller, slug: &str) -> Result<Vec<Version>, AdminError> {
        caller.require_scope("configs.read")?;
        let c = visible(&self.snapshot(), caller, slug)?;
        Ok(self
            .state
            .store
            .config_versions(&c.record.id)
            .await?
            .into_iter()
            .map(|(version_id, created_at, config)| Version {
                version_id,
                created_at,
                config,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testing::*;
    use crate::error::AdminCode;
    use tollgate_store::ControlData;

    const CONFIG: &str = r#"{"strategy": {"mode": "fallback"}, "targets": [{"provider": "@a"}, {"provider": "@b"}]}"#;

    fn create(data: &mut ControlData, ctx: &Ctx, caller: &Caller, body: Value) -> Result<Created, AdminError> {
        let snap = snapshot(data.clone(), ctx);
        let p = plan_create(&snap, caller, ctx, serde_json::from_value(body).unwrap())?;
        apply(data, &p.writes);
        Ok(p.output)
    }

    #[test]
    fn configs_are_validated_owned_and_versioned() {
        let ctx = ctx();
        let mut data = two_workspaces();
        let org_cfg = create(&mut data, &ctx, &org(), json!({"name": "Fallback", "config": CONFIG})).unwrap();
        assert!(org_cfg.slug.starts_with("pc-fallback-"), "{}", org_cfg.slug);
        let writer = ws_key("ws-a", &["configs.write"]);
        let own = create(&mut data, &ctx, &writer, json!({"name": "Mine", "config": CONFIG})).unwrap();
        assert_eq!(data.configs[1].workspace_id.as_deref(), Some("ws-a"));
        for (caller, body, code, message) in [
            (
                org(),
                json!({"name": " ", "config": CONFIG}),
                AdminCode::Validation,
                "name must be 1 to 200 characters",
            ),
            (
                org(),
                json!({"name": "x", "config": CONFIG, "workspace_id": "zz"}),
                AdminCode::Validation,
                "workspace_id 'zz' does not exist",
            ),
            (
                writer.clone(),
                json!({"name": "x", "config": CONFIG, "workspace_id": "b"}),
                AdminCode::Forbidden,
                "this API key cannot act on another workspace",
            ),
            (
                ws_key("ws-a", &["configs.read"]),
                json!({"name": "x", "config": CONFIG}),
                AdminCode::Forbidden,
                "this API key lacks the 'configs.write' scope",
            ),
        ] {
            let e = create(&mut data, &ctx, &caller, body.clone()).unwrap_err();
            assert_eq!((e.code, e.message.as_str()), (code, message), "{body}");
        }
        let e = create(&mut data, &ctx, &org(), json!({"name": "x", "config": "{"})).unwrap_err();
        assert!(e.message.starts_with("config is not valid JSON: "), "{}", e.message);
        let e = create(&mut data, &ctx, &org(), json!({"name": "x", "config": {"targets": 5}})).unwrap_err();
        assert!(e.message.starts_with("invalid config"), "{}", e.message);
        let snap = snapshot(data.clone(), &ctx);
        // A workspace key sees its own and the organisation's, changes only its own.
        assert_eq!(list(&snap, &ws_key("ws-b", &["configs.read"]), None).unwrap().len(), 1);
        assert_eq!(list(&snap, &writer, None).unwrap().len(), 2);
        let e = plan_update(&snap, &writer, &ctx, &org_cfg.slug, UpdateConfig::default()).unwrap_err();
        assert_eq!(e.message, "this API key cannot change the organisation's configs");
        let p = plan_update(
            &snap,
            &writer,
            &ctx,
            &own.slug,
            UpdateConfig {
                name: Some("Renamed".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_ne!(p.output, own.version_id, "every update is a new version");
        assert_eq!(p.audit.details["version_id"], json!(p.output));
        let bad_slug = UpdateConfig {
            slug: Some("other".into()),
            ..Default::default()
        };
        assert_eq!(
            plan_update(&snap, &org(), &ctx, &own.slug, bad_slug)
                .unwrap_err()
                .message,
            "slug in the body differs from the config in the path"
        );
    }

    #[test]
    fn a_default_config_cannot_be_deleted() {
        let ctx = ctx();
        let mut data = two_workspaces();
        let c = create(&mut data, &ctx, &org(), json!({"name": "F", "config": CONFIG})).unwrap();
        data.workspaces[0].default_config = Some(Value::String(c.slug.clone()));
        let snap = snapshot(data.clone(), &ctx);
        let e = plan_delete(&snap, &org(), &c.slug).unwrap_err();
        assert_eq!(e.code, AdminCode::Conflict);
        assert!(e.message.contains("default config of workspace 'a'"), "{}", e.message);
        data.workspaces[0].default_config = None;
        let snap = snapshot(data.clone(), &ctx);
        let p = plan_delete(&snap, &org(), &c.slug).unwrap();
        assert_eq!(p.writes, vec![Write::DeleteConfig(c.id)]);
        assert_eq!(
            check_default_config(&snap, json!(7), None).unwrap_err().message,
            "default_config must be a saved config's id or a config object"
        );
        assert_eq!(check_default_config(&snap, Value::Null, None).unwrap(), None);
    }
}
