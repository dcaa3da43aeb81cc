//! `/v1/api-keys`: create (organisation or workspace keys), list, retrieve,
//! update, revoke (DELETE) and rotate. A key is shown once, at creation or
//! rotation; only its SHA-256 is stored.

use super::{merge_limits, parse_time, rate_limits_array, usage_limit_json, Body, Page};
use crate::auth::{Caller, DEFAULT_SCOPES, SCOPES};
use crate::error::AdminError;
use crate::state::SharedState;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tollgate_core::ids;
use tollgate_core::records::{ApiKeyRecord, KeySubType, KeyType, Limits};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CreateKey {
    pub name: Option<String>,
    pub description: Option<String>,
    pub workspace_id: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub usage_limits: Option<Value>,
    pub rate_limits: Option<Value>,
    pub expires_at: Option<Value>,
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
    pub usage_limits: Option<Value>,
    pub rate_limits: Option<Value>,
    pub expires_at: Option<Value>,
    pub alert_emails: Option<Vec<String>>,
    /// Zeroes the consumed budget: only usage from now on counts.
    pub reset_usage: Option<bool>,
    pub defaults: Option<Value>,
    /// Present as `null`: cleared.
    #[serde(deserialize_with = "super::configs::present")]
    pub default_config: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ListKeys {
    pub workspace_id: Option<String>,
    #[serde(flatten)]
    pub page: Page,
}

fn kind_name(k: &ApiKeyRecord) -> String {
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

fn check_defaults(d: &Option<Value>) -> Result<(), AdminError> {
    match d {
        None | Some(Value::Null) | Some(Value::Object(_)) => Ok(()),
        Some(_) => Err(AdminError::validation("defaults must be an object")),
    }
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
    now: chrono::DateTime<chrono::Utc>,
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

pub async fn create(
    State(state): State<SharedState>,
    caller: Caller,
    Path((kind, sub_kind)): Path<(String, String)>,
    Body(body): Body<CreateKey>,
) -> Result<Json<Value>, AdminError> {
    caller.require_org()?;
    let key_type = match kind.as_str() {
        "organisation" | "organization" => KeyType::Organisation,
        "workspace" => KeyType::Workspace,
        _ => return Err(AdminError::validation("key type must be 'organisation' or 'workspace'")),
    };
    let sub_type = match sub_kind.as_str() {
        "service" => KeySubType::Service,
        "user" => KeySubType::User,
        _ => return Err(AdminError::validation("key sub-type must be 'service' or 'user'")),
    };
    if key_type == KeyType::Organisation && sub_type != KeySubType::Service {
        return Err(AdminError::validation("organisation keys are of sub-type 'service'"));
    }
    let snap = state.snapshot();
    let workspace_id = match (key_type, &body.workspace_id) {
        (KeyType::Workspace, None) => {
            return Err(AdminError::validation("workspace_id is required for a workspace key"))
        }
        (KeyType::Workspace, Some(w)) => {
            let ws = snap
                .workspaces
                .get(w)
                .or_else(|| snap.workspace_by_slug(w))
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
    let now = state.now();
    let expires_at = parse_time(body.expires_at.as_ref(), "expires_at")?;
    if expires_at.is_some_and(|t| t <= now) {
        return Err(AdminError::validation("expires_at must be in the future"));
    }
    let name = match &body.name {
        Some(n) => super::check_name("name", n)?,
        None => format!("{kind} {sub_kind} key"),
    };
    let description = super::check_text("description", body.description)?;
    let (mut rec, key) = new_key(key_type, sub_type, name, workspace_id, scopes, now);
    rec.description = description;
    rec.limits = merge_limits(
        &Limits::default(),
        body.usage_limits.as_ref(),
        body.rate_limits.as_ref(),
        now,
    )?;
    rec.expires_at = expires_at;
    rec.alert_emails = emails;
    check_defaults(&body.defaults)?;
    rec.defaults = body.defaults.unwrap_or(Value::Null);
    if let Some(v) = body.default_config {
        rec.default_config = super::configs::check_default_config(&snap, v, rec.workspace_id.as_deref())?;
    }
    rec.created_by = Some(caller.id().to_owned());
    let mut change = state.change().await?;
    change.tx.put_api_key(&rec).await?;
    let audit = state.audit_entry(
        Some(caller.id()),
        "create",
        "api_key",
        &rec.id,
        json!({"name": rec.name, "type": kind_name(&rec), "workspace_id": rec.workspace_id, "scopes": rec.scopes}),
    );
    change.commit(audit).await?;
    Ok(Json(json!({"id": rec.id, "key": key, "object": "api-key"})))
}

pub async fn list(
    State(state): State<SharedState>,
    caller: Caller,
    Query(q): Query<ListKeys>,
) -> Result<Json<Value>, AdminError> {
    caller.require_org()?;
    let snap = state.snapshot();
    let now = state.now();
    let mut keys: Vec<_> = snap
        .keys()
        .map(|k| &k.record)
        .filter(|k| {
            q.workspace_id
                .as_ref()
                .is_none_or(|w| k.workspace_id.as_ref() == Some(w))
        })
        .collect();
    keys.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    Ok(Json(q.page.list(
        keys.into_iter().map(|k| to_json(k, &snap.org_id, now)).collect(),
    )?))
}

fn find(state: &SharedState, id: &str) -> Result<ApiKeyRecord, AdminError> {
    state
        .snapshot()
        .key_by_id(id)
        .map(|k| k.record.clone())
        .ok_or_else(|| AdminError::not_found(format!("api key '{id}' not found")))
}

pub async fn retrieve(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    caller.require_org()?;
    Ok(Json(to_json(
        &find(&state, &id)?,
        &state.snapshot().org_id,
        state.now(),
    )))
}

pub async fn update(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<UpdateKey>,
) -> Result<Json<Value>, AdminError> {
    caller.require_org()?;
    let mut rec = find(&state, &id)?;
    let now = state.now();
    if let Some(n) = &body.name {
        rec.name = super::check_name("name", n)?;
    }
    if body.description.is_some() {
        rec.description = super::check_text("description", body.description)?;
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
        rec.default_config = super::configs::check_default_config(&state.snapshot(), v, rec.workspace_id.as_deref())?;
    }
    if body.expires_at.is_some() {
        rec.expires_at = parse_time(body.expires_at.as_ref(), "expires_at")?;
    }
    rec.limits = merge_limits(&rec.limits, body.usage_limits.as_ref(), body.rate_limits.as_ref(), now)?;
    if body.reset_usage == Some(true) {
        super::reset_usage(&mut rec.limits, now);
    }
    rec.last_updated_at = now;
    let mut change = state.change().await?;
    change.tx.put_api_key(&rec).await?;
    let audit = state.audit_entry(
        Some(caller.id()),
        "update",
        "api_key",
        &rec.id,
        json!({"name": rec.name}),
    );
    change.commit(audit).await?;
    Ok(Json(to_json(&rec, &state.snapshot().org_id, now)))
}

pub async fn delete(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    caller.require_org()?;
    let rec = find(&state, &id)?;
    let mut change = state.change().await?;
    change.tx.delete_api_key(&rec.id).await?;
    let audit = state.audit_entry(
        Some(caller.id()),
        "revoke",
        "api_key",
        &rec.id,
        json!({"name": rec.name}),
    );
    change.commit(audit).await?;
    Ok(Json(json!({"success": true})))
}

pub async fn rotate(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    caller.require_org()?;
    let mut rec = find(&state, &id)?;
    // Same record, new secret: the id, and with it every budget and rate
    // limit counter, carries over; the old key stops matching at once.
    let key = ids::new_api_key();
    rec.key_hash = hex::encode(ids::hash_api_key(&key));
    rec.masked_key = ids::mask_secret(&key);
    rec.last_updated_at = state.now();
    let mut change = state.change().await?;
    change.tx.put_api_key(&rec).await?;
    let audit = state.audit_entry(
        Some(caller.id()),
        "rotate",
        "api_key",
        &rec.id,
        json!({"name": rec.name}),
    );
    change.commit(audit).await?;
    Ok(Json(json!({"id": rec.id, "key": key, "object": "api-key"})))
}
