//! API keys: organisation or workspace keys, created, updated, revoked and
//! rotated by organisation keys. A key is shown once, at creation or
//! rotation; only its SHA-256 is stored.

use super::configs::check_default_config;
use super::ids::{ApiKeyId, ObjectType};
use super::validate::{check_defaults, check_name, check_text, merge_limits};
use super::{workspace_named, Audit, Caller, Control, Ctx, Planned, RateRequest, TimeRequest, UsageRequest, Write};
use crate::auth::{DEFAULT_SCOPES, SCOPES};
use crate::error::AdminError;
use crate::snapshot::Snapshot;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use tollgate_core::ids;
use tollgate_core::records::{ApiKeyRecord, KeySubType, KeyType, Limits};
use tollgate_core::secrets::Secret;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CreateKey {
    pub name: Option<String>,
    pub description: Option<String>,
    pub workspace_id: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub usage_limits: UsageRequest,
    pub rate_limits: RateRequest,
    pub expires_at: TimeRequest,
    pub alert_emails: Option<Vec<String>>,
    pub defaults: Option<Value>,
    /// The routing config applied when a request sends none.
    pub default_config: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UpdateKey {
    pub name: Option<String>,
    pub description: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub usage_limits: UsageRequest,
    pub rate_limits: RateRequest,
    pub expires_at: TimeRequest,
    pub alert_emails: Option<Vec<String>>,
    /// Zeroes the consumed budget: only usage from now on counts.
    pub reset_usage: Option<bool>,
    pub defaults: Option<Value>,
    /// Present as `null`: cleared.
    #[serde(deserialize_with = "super::configs::present")]
    pub default_config: Option<Value>,
}

/// A key just issued: its id and the key itself, shown once.
#[derive(Debug)]
pub struct NewKey {
    pub id: ApiKeyId,
    pub key: Secret<String>,
}

/// `organisation-service`, `workspace-user`, ...
pub fn kind_name(k: &ApiKeyRecord) -> String {
    let t = match k.key_type {
        KeyType::Organisation => "organisation",
        KeyType::Workspace => "workspace",
    };
    let s = match k.sub_type {
        KeySubType::Service => "service",
        KeySubType::User => "user",
    };
    format!("{t}-{s}")
}

fn check_scopes(scopes: &[String]) -> Result<(), AdminError> {
    if let Some(bad) = scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
        return Err(AdminError::validation(format!(
            "unknown scope '{bad}'; known scopes: {}",
            SCOPES.join(", ")
        )));
    }
    Ok(())
}

/// Most alert addresses on one key.
const MAX_ALERT_EMAILS: usize = 100;

fn check_emails(emails: &[String]) -> Result<(), AdminError> {
    if emails.len() > MAX_ALERT_EMAILS {
        return Err(AdminError::validation(format!(
            "alert_emails may list at most {MAX_ALERT_EMAILS} addresses"
        )));
    }
    if let Some(bad) = emails.iter().find(|e| e.len() > 254) {
        return Err(AdminError::validation(format!(
            "alert_emails: '{}...' is longer than an email address can be (254)",
            bad.chars().take(40).collect::<String>()
        )));
    }
    if let Some(bad) = emails.iter().find(|e| e.parse::<lettre::Address>().is_err()) {
        return Err(AdminError::validation(format!("'{bad}' is not an email address")));
    }
    Ok(())
}

/// A new key record and its plain-text key (to show once).
pub fn new_key(
    key_type: KeyType,
    sub_type: KeySubType,
    name: String,
    workspace_id: Option<String>,
    scopes: Vec<String>,
    now: DateTime<Utc>,
) -> (ApiKeyRecord, String) {
    let key = ids::new_api_key();
    let rec = ApiKeyRecord {
        id: ids::prefixed_id("ak"),
        name,
        description: None,
        key_hash: hex::encode(ids::hash_api_key(&key)),
        masked_key: ids::mask_secret(&key),
        key_type,
        sub_type,
        workspace_id,
        scopes,
        limits: Limits::default(),
        expires_at: None,
        alert_emails: Vec::new(),
        defaults: Value::Null,
        default_config: None,
        created_by: None,
        created_at: now,
        last_updated_at: now,
    };
    (rec, key)
}

fn find(snap: &Snapshot, caller: &Caller, id: &str) -> Result<ApiKeyRecord, AdminError> {
    caller.require_org()?;
    snap.key_by_id(id)
        .map(|k| k.record.clone())
        .ok_or_else(|| AdminError::not_found(format!("api key '{id}' not found")))
}

/// Every key (of one workspace, if named by id), oldest first.
pub fn list(snap: &Snapshot, caller: &Caller, workspace_id: Option<&str>) -> Result<Vec<ApiKeyRecord>, AdminError> {
    caller.require_org()?;
    let mut keys: Vec<ApiKeyRecord> = snap
        .keys()
        .map(|k| &k.record)
        .filter(|k| workspace_id.is_none_or(|w| k.workspace_id.as_deref() == Some(w)))
        .cloned()
        .collect();
    keys.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    Ok(keys)
}

pub fn retrieve(snap: &Snapshot, caller: &Caller, id: &str) -> Result<ApiKeyRecord, AdminError> {
    find(snap, caller, id)
}

/// Issues a key of `kind` (`organisation`/`organization` or `workspace`)
/// and `sub_kind` (`service` or `user`).
pub fn plan_create(
    snap: &Snapshot,
    caller: &Caller,
    ctx: &Ctx,
    kind: &str,
    sub_kind: &str,
    body: CreateKey,
) -> Result<Planned<NewKey>, AdminError> {
    caller.require_org()?;
    let key_type = match kind {
        "organisation" | "organization" => KeyType::Organisation,
        "workspace" => KeyType::Workspace,
        _ => return Err(AdminError::validation("key type must be 'organisation' or 'workspace'")),
    };
    let sub_type = match sub_kind {
        "service" => KeySubType::Service,
        "user" => KeySubType::User,
        _ => return Err(AdminError::validation("key sub-type must be 'service' or 'user'")),
    };
    if key_type == KeyType::Organisation && sub_type != KeySubType::Service {
        return Err(AdminError::validation("organisation keys are of sub-type 'service'"));
    }
    let workspace_id = match (key_type, &body.workspace_id) {
        (KeyType::Workspace, None) => {
            return Err(AdminError::validation("workspace_id is required for a workspace key"))
        }
        (KeyType::Workspace, Some(w)) => {
            let ws = workspace_named(snap, w)
                .ok_or_else(|| AdminError::validation(format!("workspace_id '{w}' does not exist")))?;
            Some(ws.id.clone())
        }
        (KeyType::Organisation, _) => None,
    };
    let scopes = match (key_type, body.scopes) {
        (KeyType::Organisation, _) => Vec::new(),
        (KeyType::Workspace, None) => DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect(),
        (KeyType::Workspace, Some(s)) => {
            check_scopes(&s)?;
            s
        }
    };
    let emails = body.alert_emails.unwrap_or_default();
    check_emails(&emails)?;
    let now = ctx.now;
    let expires_at = body.expires_at.get("expires_at")?;
    if expires_at.is_some_and(|t| t <= now) {
        return Err(AdminError::validation("expires_at must be in the future"));
    }
    let name = match &body.name {
        Some(n) => check_name("name", n)?,
        None => format!("{kind} {sub_kind} key"),
    };
    let description = check_text("description", body.description)?;
    let (mut rec, key) = new_key(key_type, sub_type, name, workspace_id, scopes, now);
    rec.description = description;
    rec.limits = merge_limits(&Limits::default(), &body.usage_limits, &body.rate_limits, false, now)?;
    rec.expires_at = expires_at;
    rec.alert_emails = emails;
    check_defaults(&body.defaults)?;
    rec.defaults = body.defaults.unwrap_or(Value::Null);
    if let Some(v) = body.default_config {
        rec.default_config = check_default_config(snap, v, rec.workspace_id.as_deref())?;
    }
    rec.created_by = Some(caller.id().to_owned());
    Ok(Planned {
        audit: Audit::new(
            "create",
            ObjectType::ApiKey,
            &rec.id,
            json!({"name": rec.name, "type": kind_name(&rec), "workspace_id": rec.workspace_id, "scopes": rec.scopes}),
        ),
        output: NewKey {
            id: ApiKeyId::new(rec.id.clone()),
            key: Secret::new(key),
        },
        writes: vec![Write::ApiKey(rec)],
    })
}

pub fn plan_update(
    snap: &Snapshot,
    caller: &Caller,
    ctx: &Ctx,
    id: &str,
    body: UpdateKey,
) -> Result<Planned<ApiKeyRecord>, AdminError> {
    let mut rec = find(snap, caller, id)?;
    let now = ctx.now;
    if let Some(n) = &body.name {
        rec.name = check_name("name", n)?;
    }
    if body.description.is_some() {
        rec.description = check_text("description", body.description)?;
    }
    if let Some(s) = body.scopes {
        if rec.key_type == KeyType::Workspace {
            check_scopes(&s)?;
            rec.scopes = s;
        }
    }
    if let Some(e) = body.alert_emails {
        check_emails(&e)?;
        rec.alert_emails = e;
    }
    check_defaults(&body.defaults)?;
    if let Some(d) = body.defaults {
        rec.defaults = d;
    }
    if let Some(v) = body.default_config {
        rec.default_config = check_default_config(snap, v, rec.workspace_id.as_deref())?;
    }
    if body.expires_at.is_present() {
        rec.expires_at = body.expires_at.get("expires_at")?;
    }
    rec.limits = merge_limits(
        &rec.limits,
        &body.usage_limits,
        &body.rate_limits,
        body.reset_usage == Some(true),
        now,
    )?;
    rec.last_updated_at = now;
    Ok(Planned {
        audit: Audit::new("update", ObjectType::ApiKey, &rec.id, json!({"name": rec.name})),
        writes: vec![Write::ApiKey(rec.clone())],
        output: rec,
    })
}

/// Revokes (deletes) a key: it fails on the very next request.
pub fn plan_revoke(snap: &Snapshot, caller: &Caller, id: &str) -> Result<Planned<()>, AdminError> {
    let rec = find(snap, caller, id)?;
    Ok(Planned {
        writes: vec![Write::DeleteApiKey(ApiKeyId::new(rec.id.clone()))],
        audit: Audit::new("revoke", ObjectType::ApiKey, &rec.id, json!({"name": rec.name})),
        output: (),
    })
}

/// Same record, new secret: the id, and with it every budget and rate
/// limit counter, carries over; the old key stops matching at once.
pub fn plan_rotate(snap: &Snapshot, caller: &Caller, ctx: &Ctx, id: &str) -> Result<Planned<NewKey>, AdminError> {
    let mut rec = find(snap, caller, id)?;
    let key = Secret::new(ids::new_api_key());
    rec.key_hash = hex::encode(ids::hash_api_key(key.expose()));
    rec.masked_key = ids::mask_secret(key.expose());
    rec.last_updated_at = ctx.now;
    Ok(Planned {
        audit: Audit::new("rotate", ObjectType::ApiKey, &rec.id, json!({"name": rec.name})),
        output: NewKey {
            id: ApiKeyId::new(rec.id.clone()),
            key,
        },
        writes: vec![Write::ApiKey(rec)],
    })
}

impl Control<'_> {
    pub async fn create_api_key(
        &self,
        caller: &Caller,
        kind: &str,
        sub_kind: &str,
        body: CreateKey,
    ) -> Result<NewKey, AdminError> {
        self.run(caller, |snap, ctx| plan_create(snap, caller, ctx, kind, sub_kind, body))
            .await
    }

    pub async fn update_api_key(&self, caller: &Caller, id: &str, body: UpdateKey) -> Result<ApiKeyRecord, AdminError> {
        self.run(caller, |snap, ctx| plan_update(snap, caller, ctx, id, body))
            .await
    }

    pub async fn revoke_api_key(&self, caller: &Caller, id: &str) -> Result<(), AdminError> {
        self.run(caller, |snap, _| plan_revoke(snap, caller, id)).await
    }

    pub async fn rotate_api_key(&self, caller: &Caller, id: &str) -> Result<NewKey, AdminError> {
        self.run(caller, |snap, ctx| plan_rotate(snap, caller, ctx, id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testing::*;
    use crate::error::AdminCode;
    use tollgate_store::ControlData;

    fn create(
        data: &mut ControlData,
        ctx: &Ctx,
        kind: &str,
        sub: &str,
        body: Value,
    ) -> Result<(NewKey, Audit), AdminError> {
        let snap = snapshot(data.clone(), ctx);
        let p = plan_create(&snap, &org(), ctx, kind, sub, serde_json::from_value(body).unwrap())?;
        apply(data, &p.writes);
        Ok((p.output, p.audit))
    }

    #[test]
    fn keys_are_issued_once_and_stored_hashed() {
        let ctx = ctx();
        let mut data = two_workspaces();
        let (k, audit) = create(&mut data, &ctx, "workspace", "service", json!({"workspace_id": "a"})).unwrap();
        let rec = &data.api_keys[0];
        assert_eq!(rec.id, k.id.as_str());
        assert_eq!(rec.key_hash, hex::encode(ids::hash_api_key(k.key.expose())));
        assert_eq!(rec.scopes, ["completions.write"]);
        assert_eq!(rec.name, "workspace service key");
        assert!(
            !format!("{rec:?}{audit:?}{k:?}").contains(k.key.expose().as_str()),
            "the key is never kept or logged"
        );
        assert_eq!(audit.details["type"], json!("workspace-service"));
        let snap = snapshot(data.clone(), &ctx);
        let caller = Caller::of_key(&snap.key_by_id(k.id.as_str()).unwrap().record);
        assert_eq!(caller.workspace_id(), Some("ws-a"));
        for (kind, sub, body, message) in [
            (
                "team",
                "service",
                json!({}),
                "key type must be 'organisation' or 'workspace'",
            ),
            (
                "workspace",
                "bot",
                json!({}),
                "key sub-type must be 'service' or 'user'",
            ),
            (
                "organisation",
                "user",
                json!({}),
                "organisation keys are of sub-type 'service'",
            ),
            (
                "workspace",
                "user",
                json!({}),
                "workspace_id is required for a workspace key",
            ),
            (
                "workspace",
                "user",
                json!({"workspace_id": "zz"}),
                "workspace_id 'zz' does not exist",
            ),
            (
                "organization",
                "service",
                json!({"alert_emails": ["not-an-address"]}),
                "'not-an-address' is not an email address",
            ),
            (
                "organization",
                "service",
                json!({"expires_at": "2000-01-01T00:00:00Z"}),
                "expires_at must be in the future",
            ),
            (
                "organization",
                "service",
                json!({"defaults": "x"}),
                "defaults must be an object",
            ),
            (
                "organization",
                "service",
                json!({"usage_limits": {"type": "tokens", "credit_limit": 10}}),
                "credit_limit for a token budget must be at least 100 (tokens)",
            ),
        ] {
            let e = create(&mut data, &ctx, kind, sub, body.clone()).unwrap_err();
            assert_eq!(
                (e.code, e.message.as_str()),
                (AdminCode::Validation, message),
                "{kind} {sub} {body}"
            );
        }
        let e = create(
            &mut data,
            &ctx,
            "workspace",
            "user",
            json!({"workspace_id": "a", "scopes": ["admin"]}),
        )
        .unwrap_err();
        assert!(e.message.starts_with("unknown scope 'admin'; known scopes: "));
        let snap = snapshot(data.clone(), &ctx);
        let e = plan_create(
            &snap,
            &ws_key("ws-a", &["providers.*"]),
            &ctx,
            "organisation",
            "service",
            CreateKey::default(),
        )
        .unwrap_err();
        assert_eq!(e.code, AdminCode::Forbidden);
        assert_eq!(data.api_keys.len(), 1);
    }

    #[test]
    fn update_revoke_and_rotate() {
        let ctx = ctx();
        let mut data = two_workspaces();
        let (k, _) = create(
            &mut data,
            &ctx,
            "organisation",
            "service",
            json!({"rate_limits": {"unit": "rpm", "value": 10}}),
        )
        .unwrap();
        let snap = snapshot(data.clone(), &ctx);
        let body: UpdateKey =
            serde_json::from_value(json!({"name": "Renamed", "scopes": ["logs.view"], "expires_at": null})).unwrap();
        let p = plan_update(&snap, &org(), &ctx, k.id.as_str(), body).unwrap();
        assert_eq!(p.output.name, "Renamed");
        assert!(p.output.scopes.is_empty(), "an organisation key has no scopes");
        let body: UpdateKey = serde_json::from_value(json!({"rate_limits": {"unit": "rpm", "value": 11}})).unwrap();
        assert_eq!(
            plan_update(&snap, &org(), &ctx, k.id.as_str(), body).unwrap_err().code,
            AdminCode::Conflict
        );
        let rotated = plan_rotate(&snap, &org(), &ctx, k.id.as_str()).unwrap();
        assert_eq!(rotated.output.id, k.id, "the id carries over");
        assert_ne!(rotated.output.key.expose().as_str(), k.key.expose().as_str());
        let Write::ApiKey(rec) = &rotated.writes[0] else {
            panic!("a rotation writes the key record")
        };
        assert_eq!(
            rec.key_hash,
            hex::encode(ids::hash_api_key(rotated.output.key.expose()))
        );
        assert_eq!(rec.limits, data.api_keys[0].limits, "limits carry over");
        let revoked = plan_revoke(&snap, &org(), k.id.as_str()).unwrap();
        assert_eq!(revoked.writes, vec![Write::DeleteApiKey(k.id.clone())]);
        assert_eq!(revoked.audit.action, "revoke");
        apply(&mut data, &revoked.writes);
        let snap = snapshot(data, &ctx);
        let e = plan_revoke(&snap, &org(), k.id.as_str()).unwrap_err();
        assert_eq!(
            (e.code, e.message),
            (AdminCode::NotFound, format!("api key '{}' not found", k.id))
        );
        assert_eq!(list(&snap, &org(), None).unwrap().len(), 0);
        assert_eq!(
            list(&snap, &ws_key("ws-a", &[]), None).unwrap_err().code,
            AdminCode::Forbidden
        );
    }
}
