//! `/v1/integrations`: provider credentials stored once (secrets sealed),
//! their model allow-lists and custom models, and their provisioning to
//! workspaces (which creates each workspace's default provider).

use super::{merge_limits, rate_limit_json, usage_limit_json, Body, Page};
use crate::auth::Caller;
use crate::error::AdminError;
use crate::snapshot::Snapshot;
use crate::state::SharedState;
use axum::extract::{Path, Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use tollgate_core::catalogue::{self, Protocol, ProviderSpec};
use tollgate_core::ids;
use tollgate_core::money::Price;
use tollgate_core::records::{
    GlobalAccess, Integration, IntegrationModel, IntegrationStatus, Limits, ProviderRecord, WorkspaceAccess,
};
use tollgate_core::usage::ModelPrice;
use tollgate_store::secrets::SealedFields;
use tollgate_store::Tx;

#[derive(Debug, Deserialize)]
pub struct CreateIntegration {
    pub name: String,
    pub ai_provider_id: String,
    #[serde(default)]
    pub slug: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub workspace_id: Option<String>,
    #[serde(default)]
    pub configurations: Option<Map<String, Value>>,
    #[serde(default)]
    pub allow_all_models: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UpdateIntegration {
    pub name: Option<String>,
    pub key: Option<String>,
    pub description: Option<String>,
    pub configurations: Option<Map<String, Value>>,
    pub status: Option<IntegrationStatus>,
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub workspace_id: Option<String>,
    #[serde(flatten)]
    pub page: Page,
}

/// The wire object of an integration.
pub fn to_json(i: &Integration, org_id: &str, workspace_count: usize, now: DateTime<Utc>) -> Value {
    let mut configurations = i.configurations.clone();
    for (name, masked) in &i.masked_secrets {
        configurations.insert(format!("masked_{name}"), json!(masked));
    }
    let g = &i.global_access;
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
        "global_workspace_access": {
            "enabled": g.enabled,
            "usage_limits": usage_limit_json(&g.limits, now),
            "rate_limits": rate_limit_json(&g.limits),
        },
        "created_at": i.created_at,
        "last_updated_at": i.last_updated_at,
        "object": "integration",
    })
}

/// How many workspaces can use the integration now.
fn workspace_count(snap: &Snapshot, i: &Integration) -> usize {
    snap.workspaces.keys().filter(|w| i.access_for(w).is_some()).count()
}

use super::check_url;

/// Longest secret field accepted (a service-account JSON is a few KiB).
const MAX_SECRET: usize = 64 * 1024;

/// A configuration split into its non-secret fields and its secret ones
/// (name, plain text) still to be sealed.
pub type SplitConfiguration = (Map<String, Value>, Vec<(String, String)>);

/// Validates a provider's configuration and splits it into the non-secret
/// fields (stored as they are) and the secret ones (to be sealed).
/// Unknown fields are refused: a misspelt secret field must never be stored
/// in plain text.
pub fn split_configuration(
    spec: &ProviderSpec,
    key: Option<String>,
    mut cfg: Map<String, Value>,
) -> Result<SplitConfiguration, AdminError> {
    if let Some(k) = key {
        cfg.insert("key".into(), Value::String(k));
    }
    let mut plain = Map::new();
    let mut secrets = Vec::new();
    for (name, value) in cfg {
        if value.is_null() {
            continue;
        }
        let Some(field) = spec.field(&name) else {
            let known: Vec<_> = spec.credential_fields.iter().map(|f| f.name.as_str()).collect();
            return Err(AdminError::validation(format!(
                "unknown configuration field '{name}' for provider '{}'; known fields: {}",
                spec.id,
                known.join(", ")
            )));
        };
        if field.secret {
            let text = match value {
                Value::String(s) => s,
                // A service-account JSON may come as an object.
                Value::Object(_) if name == "vertex_service_account_json" => value.to_string(),
                _ => return Err(AdminError::validation(format!("{name} must be a string"))),
            };
            if text.is_empty() {
                return Err(AdminError::validation(format!("{name} must not be empty")));
            }
            if text.len() > MAX_SECRET {
                return Err(AdminError::validation(format!(
                    "{name} must be at most {MAX_SECRET} bytes"
                )));
            }
            // A key goes into a header: no control characters. A JSON
            // document may span lines.
            let json_doc = name == "vertex_service_account_json";
            if text
                .chars()
                .any(|c| c.is_control() && !(json_doc && matches!(c, '\n' | '\r' | '\t')))
            {
                return Err(AdminError::validation(format!(
                    "{name} must not contain control characters"
                )));
            }
            secrets.push((name, text));
        } else {
            validate_plain_field(&name, &value)?;
            plain.insert(name, value);
        }
    }
    Ok((plain, secrets))
}

fn validate_plain_field(name: &str, value: &Value) -> Result<(), AdminError> {
    match name {
        "custom_host" => check_url(
            name,
            value
                .as_str()
                .ok_or_else(|| AdminError::validation("custom_host must be a string"))?,
        ),
        "aws_sts_endpoint" => check_url(name, value.as_str().unwrap_or_default()),
        "aws_auth_type" => match value.as_str() {
            Some("accessKey" | "assumedRole") => Ok(()),
            _ => Err(AdminError::validation(
                "aws_auth_type must be 'accessKey' or 'assumedRole'",
            )),
        },
        "azure_deployment_config" => {
            let ok = value.as_array().is_some_and(|a| {
                !a.is_empty()
                    && a.iter().all(|d| {
                        d.get("azure_deployment_name")
                            .and_then(Value::as_str)
                            .is_some_and(|s| !s.is_empty())
                            && d.get("azure_model_slug")
                                .and_then(Value::as_str)
                                .is_some_and(|s| !s.is_empty())
                    })
            });
            if ok {
                Ok(())
            } else {
                Err(AdminError::validation(
                    "azure_deployment_config must be a non-empty array of {azure_deployment_name, azure_model_slug, is_default}",
                ))
            }
        }
        _ => match value.as_str() {
            Some(s) => super::check_field(name, s),
            None => Err(AdminError::validation(format!("{name} must be a string"))),
        },
    }
}

/// Checks that every required field is present once `plain` and `secrets`
/// are merged with what the integration already holds.
fn check_required(spec: &ProviderSpec, i: &Integration) -> Result<(), AdminError> {
    for f in spec.credential_fields.iter().filter(|f| f.required) {
        let present = if f.secret {
            i.sealed_secrets.contains_key(&f.name)
        } else {
            i.configurations.contains_key(&f.name)
        };
        if !present {
            return Err(AdminError::validation(format!(
                "provider '{}' requires '{}'",
                spec.id, f.name
            )));
        }
    }
    if spec.protocol == Protocol::Bedrock
        && i.configurations.get("aws_auth_type").and_then(Value::as_str) == Some("assumedRole")
        && !i.configurations.contains_key("aws_role_arn")
    {
        return Err(AdminError::validation(
            "aws_auth_type 'assumedRole' requires aws_role_arn",
        ));
    }
    Ok(())
}

/// Validates a service-account JSON before it is sealed, so that a broken
/// one is refused at creation rather than at the first request.
fn check_secret_shape(name: &str, value: &str) -> Result<(), AdminError> {
    if name == "vertex_service_account_json" {
        let v: Value = serde_json::from_str(value).map_err(|_| {
            AdminError::validation("vertex_service_account_json must be a service-account JSON document")
        })?;
        for f in ["client_email", "private_key", "token_uri"] {
            if v.get(f).and_then(Value::as_str).is_none() {
                return Err(AdminError::validation(format!(
                    "vertex_service_account_json lacks '{f}'"
                )));
            }
        }
    }
    Ok(())
}

/// Seals `secrets` into `i` (replacing fields of the same name).
fn seal_into(state: &SharedState, i: &mut Integration, secrets: Vec<(String, String)>) -> Result<(), AdminError> {
    let master = state.master_key();
    let context = format!("integration:{}", i.id);
    for (name, value) in secrets {
        check_secret_shape(&name, &value)?;
        let sealed = tollgate_store::secrets::seal(&master, &SealedFields::aad(&context, &name), &value)
            .map_err(AdminError::internal)?;
        i.masked_secrets.insert(name.clone(), ids::mask_secret(&value));
        i.sealed_secrets.insert(name, sealed.to_string());
    }
    Ok(())
}

/// Stores a changed integration with its audit entry and swaps the snapshot.
async fn save(
    state: &SharedState,
    caller: &Caller,
    i: &Integration,
    action: &str,
    details: Value,
) -> Result<(), AdminError> {
    let mut change = state.change().await?;
    change.tx.put_integration(i).await?;
    let audit = state.audit_entry(Some(caller.id()), action, "integration", &i.slug, details);
    change.commit(audit).await
}

/// Finds an integration by slug and checks that the caller may see it:
/// organisation keys see all; a workspace key with `scope` only its own
/// workspace's.
pub fn find(
    snap: &Snapshot,
    caller: &Caller,
    slug: &str,
    scope: &str,
) -> Result<Arc<crate::snapshot::IntegrationEntry>, AdminError> {
    // The scope first, so that its refusal does not depend on the slug;
    // then another workspace's integration answers as an unknown one does,
    // revealing nothing of other workspaces. The organisation's own are
    // refused as such.
    caller.require_scope(scope)?;
    let entry = snap
        .integration_by_slug(slug)
        .filter(|e| {
            caller.is_org()
                || e.record
                    .workspace_id
                    .as_deref()
                    .is_none_or(|w| Some(w) == caller.workspace_id())
        })
        .cloned()
        .ok_or_else(|| AdminError::not_found(format!("integration '{slug}' not found")))?;
    if !caller.is_org() && entry.record.workspace_id.is_none() {
        return Err(AdminError::forbidden(
            "this API key cannot access the organisation's integrations",
        ));
    }
    Ok(entry)
}

pub async fn create(
    State(state): State<SharedState>,
    caller: Caller,
    Body(body): Body<CreateIntegration>,
) -> Result<Json<Value>, AdminError> {
    let snap = state.snapshot();
    // A workspace admin creates integrations owned by its own workspace only.
    let workspace_id = if caller.is_org() {
        match &body.workspace_id {
            Some(w) => Some(
                snap.workspaces
                    .get(w)
                    .or_else(|| snap.workspace_by_slug(w))
                    .map(|w| w.id.clone())
                    .ok_or_else(|| AdminError::validation(format!("workspace_id '{w}' does not exist")))?,
            ),
            None => None,
        }
    } else {
        caller.require_scope("workspace_integrations.write")?;
        let own = caller.workspace_id().map(str::to_owned);
        if let Some(w) = &body.workspace_id {
            let target = snap
                .workspaces
                .get(w)
                .or_else(|| snap.workspace_by_slug(w))
                .map(|w| w.id.clone());
            if target != own {
                return Err(AdminError::forbidden(
                    "a workspace key can create integrations only in its own workspace",
                ));
            }
        }
        own
    };
    let name = super::check_name("name", &body.name)?;
    let description = super::check_text("description", body.description)?;
    let spec = catalogue::provider(&body.ai_provider_id).ok_or_else(|| {
        AdminError::validation(format!(
            "unknown ai_provider_id '{}'; see GET /v1/ai-providers",
            body.ai_provider_id
        ))
    })?;
    let slug = match &body.slug {
        Some(s) => {
            super::check_slug("slug", s)?;
            if snap.integration_by_slug(s).is_some() {
                return Err(AdminError::conflict(format!(
                    "integration with slug '{s}' already exists"
                )));
            }
            s.clone()
        }
        None => {
            let base = ids::slugify(&name);
            if snap.integration_by_slug(&base).is_none() {
                base
            } else {
                format!("{base}-{}", ids::random_hex(2))
            }
        }
    };
    let (plain, secrets) = split_configuration(spec, body.key, body.configurations.unwrap_or_default())?;
    let now = state.now();
    let mut i = Integration {
        id: ids::prefixed_id("int"),
        slug,
        name,
        description,
        ai_provider_id: spec.id.clone(),
        workspace_id: workspace_id.clone(),
        configurations: plain,
        sealed_secrets: BTreeMap::new(),
        masked_secrets: BTreeMap::new(),
        allow_all_models: body.allow_all_models.unwrap_or(true),
        models: Vec::new(),
        workspaces: BTreeMap::new(),
        global_access: GlobalAccess::default(),
        status: IntegrationStatus::Active,
        created_by: Some(caller.id().to_owned()),
        created_at: now,
        last_updated_at: now,
    };
    seal_into(&state, &mut i, secrets)?;
    check_required(spec, &i)?;
    let mut change = state.change().await?;
    // A workspace's own integration is provisioned to it from the start.
    if let Some(w) = &workspace_id {
        i.workspaces.insert(
            w.clone(),
            WorkspaceAccess {
                enabled: true,
                limits: Limits::default(),
                models: None,
                updated_at: now,
            },
        );
    }
    change.tx.put_integration(&i).await?;
    if let Some(w) = &workspace_id {
        ensure_default_provider(&mut change.tx, &snap, &i, w, None, now).await?;
    }
    let audit = state.audit_entry(
        Some(caller.id()),
        "create",
        "integration",
        &i.slug,
        json!({"ai_provider_id": i.ai_provider_id, "workspace_id": i.workspace_id, "secret_fields": i.sealed_secrets.keys().collect::<Vec<_>>()}),
    );
    change.commit(audit).await?;
    Ok(Json(json!({"id": i.id, "slug": i.slug, "object": "integration"})))
}

pub async fn list(
    State(state): State<SharedState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, AdminError> {
    let snap = state.snapshot();
    if !caller.is_org() {
        caller.require_scope("workspace_integrations.read")?;
    }
    let kind = q.kind.as_deref().unwrap_or("all");
    if !matches!(kind, "organisation" | "organization" | "workspace" | "all") {
        return Err(AdminError::validation(
            "type must be 'organisation', 'workspace' or 'all'",
        ));
    }
    let ws_filter = match &q.workspace_id {
        Some(w) => Some(
            snap.workspaces
                .get(w)
                .or_else(|| snap.workspace_by_slug(w))
                .map(|w| w.id.clone())
                .ok_or_else(|| AdminError::validation(format!("workspace_id '{w}' does not exist")))?,
        ),
        None => None,
    };
    let mut items: Vec<_> = snap
        .integrations()
        .map(|e| &e.record)
        .filter(|i| match caller.workspace_id() {
            // A workspace key sees only its own workspace's integrations.
            Some(own) => i.workspace_id.as_deref() == Some(own),
            None => true,
        })
        .filter(|i| match kind {
            "workspace" => i.workspace_id.is_some(),
            "organisation" | "organization" => i.workspace_id.is_none(),
            _ => true,
        })
        .filter(|i| {
            ws_filter
                .as_ref()
                .is_none_or(|w| i.workspace_id.as_ref() == Some(w) || i.access_for(w).is_some())
        })
        .collect();
    items.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.slug.cmp(&b.slug)));
    let data = items
        .into_iter()
        .map(|i| to_json(i, &snap.org_id, workspace_count(&snap, i), state.now()))
        .collect();
    Ok(Json(q.page.list(data)?))
}

pub async fn retrieve(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let snap = state.snapshot();
    let e = find(&snap, &caller, &slug, "workspace_integrations.read")?;
    Ok(Json(to_json(
        &e.record,
        &snap.org_id,
        workspace_count(&snap, &e.record),
        state.now(),
    )))
}

pub async fn update(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
    Body(body): Body<UpdateIntegration>,
) -> Result<Json<Value>, AdminError> {
    let snap = state.snapshot();
    let e = find(&snap, &caller, &slug, "workspace_integrations.write")?;
    let mut i = e.record.clone();
    if let Some(n) = &body.name {
        i.name = super::check_name("name", n)?;
    }
    if body.description.is_some() {
        i.description = super::check_text("description", body.description)?;
    }
    if let Some(s) = body.status {
        i.status = s;
    }
    let cfg = body.configurations.unwrap_or_default();
    // Fields sent as null are removed; others replace what is stored.
    let removed: Vec<String> = cfg
        .iter()
        .filter(|(_, v)| v.is_null())
        .map(|(k, _)| k.clone())
        .collect();
    let (plain, secrets) = split_configuration(e.spec, body.key, cfg)?;
    for k in removed {
        i.configurations.remove(&k);
        i.sealed_secrets.remove(&k);
        i.masked_secrets.remove(&k);
    }
    i.configurations.extend(plain);
    let changed_secrets: Vec<String> = secrets.iter().map(|(k, _)| k.clone()).collect();
    seal_into(&state, &mut i, secrets)?;
    check_required(e.spec, &i)?;
    i.last_updated_at = state.now();
    save(
        &state,
        &caller,
        &i,
        "update",
        json!({"secret_fields_changed": changed_secrets}),
    )
    .await?;
    Ok(Json(to_json(&i, &snap.org_id, workspace_count(&snap, &i), state.now())))
}

pub async fn delete(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let snap = state.snapshot();
    let e = find(&snap, &caller, &slug, "workspace_integrations.write")?;
    let mut change = state.change().await?;
    // Its providers in every workspace go with it (foreign key cascade).
    change.tx.delete_integration(&e.record.id).await?;
    let audit = state.audit_entry(Some(caller.id()), "delete", "integration", &e.record.slug, json!({}));
    change.commit(audit).await?;
    Ok(Json(json!({"success": true})))
}

// ---- models --------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PutModels {
    pub allow_all_models: Option<bool>,
    pub models: Vec<ModelEntry>,
}

#[derive(Debug, Deserialize)]
pub struct ModelEntry {
    pub slug: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub is_custom: bool,
    #[serde(default)]
    pub is_finetune: bool,
    #[serde(default)]
    pub base_model_slug: Option<String>,
    #[serde(default)]
    pub configurations: Option<ModelConfigurations>,
    #[serde(default)]
    pub pricing_config: Option<Value>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfigurations {
    #[serde(default)]
    pub custom_host: Option<String>,
    #[serde(default)]
    pub custom_headers: Option<BTreeMap<String, String>>,
}

/// Parses Portkey's `pricing_config` (US cents per token) into an exact price.
pub fn parse_pricing(v: &Value) -> Result<Option<ModelPrice>, AdminError> {
    if v.is_null() {
        return Ok(None);
    }
    let kind = v.get("type").and_then(Value::as_str).unwrap_or("static");
    if kind != "static" {
        return Err(AdminError::validation("pricing_config.type must be 'static'"));
    }
    let payg = v
        .get("pay_as_you_go")
        .ok_or_else(|| AdminError::validation("pricing_config needs pay_as_you_go"))?;
    let price = |field: &str| -> Result<Option<Price>, AdminError> {
        match payg.get(field).and_then(|f| f.get("price")) {
            None | Some(Value::Null) => Ok(None),
            Some(n @ Value::Number(_)) => Price::parse_cents_per_token(&n.to_string()).map(Some).ok_or_else(|| {
                AdminError::validation(format!("pricing_config {field}.price must be a non-negative number"))
            }),
            Some(Value::String(s)) => Price::parse_cents_per_token(s).map(Some).ok_or_else(|| {
                AdminError::validation(format!("pricing_config {field}.price must be a non-negative number"))
            }),
            Some(_) => Err(AdminError::validation(format!(
                "pricing_config {field}.price must be a number"
            ))),
        }
    };
    let input = price("request_token")?.unwrap_or(Price::FREE);
    let output = price("response_token")?.unwrap_or(Price::FREE);
    let cached = price("cache_read_input_token")?.unwrap_or(input);
    Ok(Some(ModelPrice {
        input,
        output,
        cached_input: cached,
    }))
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

pub async fn list_models(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let snap = state.snapshot();
    let e = find(&snap, &caller, &slug, "workspace_integrations.read")?;
    let i = &e.record;
    // Under allow-all, list what the catalogue knows besides the entries.
    let mut models: Vec<Value> = i.models.iter().map(model_json).collect();
    if i.allow_all_models {
        let mut known: Vec<&str> = snap
            .prices
            .models_of(&i.ai_provider_id)
            .filter(|m| !e.models.contains_key(*m))
            .collect();
        known.sort();
        models.extend(
            known
                .into_iter()
                .map(|m| json!({"slug": m, "enabled": true, "is_custom": false, "is_finetune": false})),
        );
    }
    Ok(Json(
        json!({"object": "list", "total": models.len(), "allow_all_models": i.allow_all_models, "models": models, "data": models}),
    ))
}

pub async fn put_models(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
    Body(body): Body<PutModels>,
) -> Result<Json<Value>, AdminError> {
    let snap = state.snapshot();
    let e = find(&snap, &caller, &slug, "workspace_integrations.write")?;
    let mut i = e.record.clone();
    if let Some(a) = body.allow_all_models {
        i.allow_all_models = a;
    }
    for m in body.models {
        if m.slug.trim().is_empty() || m.slug.len() > 256 || m.slug.chars().any(char::is_control) {
            return Err(AdminError::validation(
                "models[].slug must be 1 to 256 characters, without control characters",
            ));
        }
        if let Some(b) = &m.base_model_slug {
            super::check_field("models[].base_model_slug", b)?;
        }
        let price = match &m.pricing_config {
            Some(p) => parse_pricing(p)?,
            None => None,
        };
        let cfg = m.configurations.unwrap_or(ModelConfigurations {
            custom_host: None,
            custom_headers: None,
        });
        if let Some(h) = &cfg.custom_host {
            check_url("custom_host", h)?;
        }
        let headers: Vec<(String, String)> = cfg.custom_headers.unwrap_or_default().into_iter().collect();
        for (k, v) in &headers {
            if http::HeaderName::from_bytes(k.as_bytes()).is_err() || http::HeaderValue::from_str(v).is_err() {
                return Err(AdminError::validation(format!(
                    "custom header '{k}' is not a valid HTTP header"
                )));
            }
        }
        if m.is_finetune && m.base_model_slug.is_none() {
            return Err(AdminError::validation(format!(
                "fine-tuned model '{}' needs base_model_slug",
                m.slug
            )));
        }
        let entry = IntegrationModel {
            slug: m.slug.clone(),
            enabled: m.enabled,
            is_custom: m.is_custom || m.is_finetune,
            is_finetune: m.is_finetune,
            base_model_slug: m.base_model_slug,
            custom_host: cfg.custom_host,
            custom_headers: headers,
            price,
            pricing_config: m.pricing_config.filter(|p| !p.is_null()),
        };
        match i.models.iter_mut().find(|x| x.slug == m.slug) {
            Some(x) => *x = entry,
            None => i.models.push(entry),
        }
    }
    i.last_updated_at = state.now();
    save(
        &state,
        &caller,
        &i,
        "update_models",
        json!({"allow_all_models": i.allow_all_models, "models": i.models.iter().map(|m| &m.slug).collect::<Vec<_>>()}),
    )
    .await?;
    Ok(Json(
        json!({"success": true, "total": i.models.len(), "allow_all_models": i.allow_all_models}),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DeleteModelsQuery {
    pub slugs: Option<String>,
}

pub async fn delete_models(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
    Query(q): Query<DeleteModelsQuery>,
) -> Result<Json<Value>, AdminError> {
    let snap = state.snapshot();
    let e = find(&snap, &caller, &slug, "workspace_integrations.write")?;
    let slugs: Vec<&str> = q
        .slugs
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if slugs.is_empty() {
        return Err(AdminError::validation("give the models to remove as ?slugs=a,b"));
    }
    let mut i = e.record.clone();
    for s in &slugs {
        match i.models.iter().position(|m| m.slug == *s) {
            Some(p) if i.models[p].is_custom => {
                i.models.remove(p);
            }
            Some(_) => {
                return Err(AdminError::validation(format!(
                    "'{s}' is not a custom model; disable it with PUT instead"
                )))
            }
            None => {
                return Err(AdminError::not_found(format!(
                    "model '{s}' not found in integration '{slug}'"
                )))
            }
        }
    }
    i.last_updated_at = state.now();
    save(&state, &caller, &i, "delete_models", json!({"models": slugs})).await?;
    Ok(Json(json!({"success": true})))
}

// ---- workspace provisioning ----------------------------------------------

#[derive(Debug, Deserialize)]
pub struct PutWorkspaces {
    #[serde(default)]
    pub workspaces: Vec<WorkspaceEntry>,
    #[serde(default)]
    pub global_workspace_access: Option<GlobalEntry>,
    #[serde(default, alias = "override_existing_workspaces_access")]
    pub override_existing_workspace_access: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct WorkspaceEntry {
    pub id: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub usage_limits: Option<Value>,
    #[serde(default)]
    pub rate_limits: Option<Value>,
    #[serde(default)]
    pub reset_usage: Option<bool>,
    /// Present (even as null) means "set the model list".
    #[serde(default, deserialize_with = "present")]
    pub models: Option<Option<Vec<String>>>,
    #[serde(default)]
    pub create_default_provider: Option<bool>,
    #[serde(default)]
    pub default_provider_slug: Option<String>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<Vec<String>>>, D::Error> {
    Option::<Vec<String>>::deserialize(d).map(Some)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct GlobalEntry {
    pub enabled: bool,
    pub usage_limits: Option<Value>,
    pub rate_limits: Option<Value>,
    pub reset_usage: Option<bool>,
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

pub async fn list_workspaces(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let snap = state.snapshot();
    let e = find(&snap, &caller, &slug, "workspace_integrations.read")?;
    let now = state.now();
    let i = &e.record;
    let data: Vec<Value> = i.workspaces.iter().map(|(id, a)| access_json(id, a, now)).collect();
    let g = &i.global_access;
    Ok(Json(json!({
        "object": "list",
        "total": data.len(),
        "workspaces": data,
        "global_workspace_access": {
            "enabled": g.enabled,
            "usage_limits": usage_limit_json(&g.limits, now),
            "rate_limits": rate_limit_json(&g.limits),
        },
        "override_existing_workspace_access": g.override_existing,
    })))
}

pub async fn put_workspaces(
    State(state): State<SharedState>,
    caller: Caller,
    Path(slug): Path<String>,
    Body(body): Body<PutWorkspaces>,
) -> Result<Json<Value>, AdminError> {
    let snap = state.snapshot();
    let e = find(&snap, &caller, &slug, "workspace_integrations.write")?;
    let mut i = e.record.clone();
    let now = state.now();
    // Resolve and check every entry before changing anything.
    let mut entries = Vec::with_capacity(body.workspaces.len());
    for w in body.workspaces {
        let ws = snap
            .workspaces
            .get(&w.id)
            .or_else(|| snap.workspace_by_slug(&w.id))
            .ok_or_else(|| AdminError::validation(format!("workspace '{}' does not exist", w.id)))?;
        if let Some(owner) = &i.workspace_id {
            if *owner != ws.id {
                return Err(AdminError::validation(
                    "a workspace-owned integration can be provisioned only to its own workspace",
                ));
            }
        }
        if let Some(s) = &w.default_provider_slug {
            if !ids::is_valid_slug(s) {
                return Err(AdminError::validation(
                    "default_provider_slug must match ^[a-zA-Z0-9_-]+$",
                ));
            }
        }
        entries.push((ws.id.clone(), w));
    }
    let mut provision = Vec::new();
    for (ws_id, w) in entries {
        let current = i.workspaces.get(&ws_id).cloned();
        let mut limits = merge_limits(
            &current.as_ref().map(|c| c.limits.clone()).unwrap_or_default(),
            w.usage_limits.as_ref(),
            w.rate_limits.as_ref(),
            now,
        )?;
        if w.reset_usage == Some(true) {
            super::reset_usage(&mut limits, now);
        }
        if let Some(Some(list)) = &w.models {
            if list
                .iter()
                .any(|m| m.trim().is_empty() || m.len() > 256 || m.chars().any(char::is_control))
            {
                return Err(AdminError::validation(
                    "workspaces[].models entries must be 1 to 256 characters, without control characters",
                ));
            }
        }
        let models = match w.models {
            Some(m) => m,
            None => current.as_ref().and_then(|c| c.models.clone()),
        };
        i.workspaces.insert(
            ws_id.clone(),
            WorkspaceAccess {
                enabled: w.enabled,
                limits,
                models,
                updated_at: now,
            },
        );
        if w.enabled && w.create_default_provider != Some(false) {
            provision.push((ws_id, w.default_provider_slug));
        }
    }
    if let Some(g) = body.global_workspace_access {
        if i.workspace_id.is_some() && g.enabled {
            return Err(AdminError::validation(
                "a workspace-owned integration cannot be opened to all workspaces",
            ));
        }
        let mut limits = merge_limits(
            &i.global_access.limits,
            g.usage_limits.as_ref(),
            g.rate_limits.as_ref(),
            now,
        )?;
        if g.reset_usage == Some(true) {
            super::reset_usage(&mut limits, now);
        }
        let set_at = if g.enabled && !i.global_access.enabled {
            Some(now)
        } else {
            i.global_access.set_at
        };
        i.global_access = GlobalAccess {
            enabled: g.enabled,
            limits,
            override_existing: body
                .override_existing_workspace_access
                .unwrap_or(i.global_access.override_existing),
            set_at,
        };
        if g.enabled {
            for ws in snap.workspaces.keys() {
                if !i.workspaces.contains_key(ws) {
                    provision.push((ws.clone(), None));
                }
            }
        }
    } else if let Some(o) = body.override_existing_workspace_access {
        i.global_access.override_existing = o;
    }
    i.last_updated_at = now;
    let mut change = state.change().await?;
    change.tx.put_integration(&i).await?;
    for (ws, slug) in provision {
        ensure_default_provider(&mut change.tx, &snap, &i, &ws, slug.as_deref(), now).await?;
    }
    let audit = state.audit_entry(
        Some(caller.id()),
        "provision",
        "integration",
        &i.slug,
        json!({
            "workspaces": i.workspaces.iter().map(|(k, a)| json!({"id": k, "enabled": a.enabled})).collect::<Vec<_>>(),
            "global_workspace_access": i.global_access.enabled,
        }),
    );
    change.commit(audit).await?;
    Ok(Json(json!({"success": true})))
}

/// Makes sure `workspace_id` has the integration's default provider (slug =
/// `slug` or the integration's). A provider of that slug for another
/// integration is a conflict.
pub async fn ensure_default_provider(
    tx: &mut Tx,
    snap: &Snapshot,
    i: &Integration,
    workspace_id: &str,
    slug: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), AdminError> {
    let slug = slug.unwrap_or(&i.slug);
    if let Some(existing) = snap.route(workspace_id, slug) {
        if existing.provider.integration_id == i.id {
            return Ok(());
        }
        return Err(AdminError::conflict(format!(
            "workspace '{workspace_id}' already has a provider '{slug}' for another integration; set default_provider_slug"
        )));
    }
    let p = ProviderRecord {
        id: ids::prefixed_id("prv"),
        slug: slug.to_owned(),
        name: i.name.clone(),
        workspace_id: workspace_id.to_owned(),
        integration_id: i.id.clone(),
        note: None,
        limits: Limits::default(),
        expires_at: None,
        is_default: true,
        created_at: now,
        last_updated_at: now,
    };
    tx.put_provider(&p).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pricing_config_is_parsed_exactly() {
        let p = parse_pricing(&json!({"type":"static","pay_as_you_go":{"request_token":{"price":0.00025},"response_token":{"price":0.001}}}))
            .unwrap()
            .unwrap();
        assert_eq!(p.input, Price::parse_usd_per_million("2.5").unwrap());
        assert_eq!(p.output, Price::parse_usd_per_million("10").unwrap());
        assert_eq!(p.cached_input, p.input);
        let free = parse_pricing(&json!({"pay_as_you_go":{"request_token":{"price":0},"response_token":{"price":0}}}))
            .unwrap()
            .unwrap();
        assert_eq!(free, ModelPrice::FREE);
        assert!(parse_pricing(&json!({"type":"dynamic","pay_as_you_go":{}})).is_err());
        assert!(parse_pricing(&json!({"pay_as_you_go":{"request_token":{"price":-1}}})).is_err());
        assert!(parse_pricing(&json!({"pay_as_you_go":{"request_token":{"price":"x"}}})).is_err());
        assert!(parse_pricing(&json!({"type":"static"})).is_err());
        assert_eq!(parse_pricing(&Value::Null).unwrap(), None);
    }

    #[test]
    fn configuration_is_split_and_validated() {
        let openai = catalogue::provider("openai").unwrap();
        let (plain, secrets) = split_configuration(
            openai,
            Some("sk-123".into()),
            json!({"openai_organization": "org"}).as_object().unwrap().clone(),
        )
        .unwrap();
        assert_eq!(plain.get("openai_organization").unwrap(), "org");
        assert_eq!(secrets, vec![("key".to_owned(), "sk-123".to_owned())]);
        let e = split_configuration(openai, None, json!({"api_key": "sk"}).as_object().unwrap().clone()).unwrap_err();
        assert!(e.message.contains("api_key"));
        let e = split_configuration(
            openai,
            None,
            json!({"custom_host": "ftp://x"}).as_object().unwrap().clone(),
        )
        .unwrap_err();
        assert!(e.message.contains("custom_host"));
        let azure = catalogue::provider("azure-openai").unwrap();
        assert!(split_configuration(
            azure,
            None,
            json!({"azure_deployment_config": []}).as_object().unwrap().clone()
        )
        .is_err());
        let bedrock = catalogue::provider("bedrock").unwrap();
        assert!(split_configuration(
            bedrock,
            None,
            json!({"aws_auth_type": "magic"}).as_object().unwrap().clone()
        )
        .is_err());
        assert!(check_secret_shape("vertex_service_account_json", "{}").is_err());
        assert!(check_secret_shape("vertex_service_account_json", "not json").is_err());
    }
}
