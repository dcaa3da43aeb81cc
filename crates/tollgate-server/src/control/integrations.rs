//! Integrations: provider credentials stored once (secret fields sealed,
//! never echoed), their model allow-lists and custom models, and their
//! provisioning to workspaces, which creates each workspace's default
//! provider.

use super::ids::{IntegrationId, ObjectType};
use super::validate::{check_field, check_name, check_slug, check_text, check_url, merge_limits};
use super::{workspace_named, Audit, Caller, Control, Ctx, Planned, RateRequest, UsageRequest, Write};
use crate::error::AdminError;
use crate::snapshot::{IntegrationEntry, Snapshot};
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
use tollgate_core::token_usage::ModelPrice;
use tollgate_store::secrets::SealedFields;

const READ: &str = "workspace_integrations.read";
const WRITE: &str = "workspace_integrations.write";

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

/// Which integrations a list shows.
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    /// `organisation` (or `organization`), `workspace` or `all` (default).
    pub kind: Option<String>,
    /// Only those a workspace (id or slug) owns or may use.
    pub workspace_id: Option<String>,
}

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
    /// Portkey's `pricing_config`, echoed back as sent.
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
    pub usage_limits: UsageRequest,
    #[serde(default)]
    pub rate_limits: RateRequest,
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
    pub usage_limits: UsageRequest,
    pub rate_limits: RateRequest,
    pub reset_usage: Option<bool>,
}

/// An integration with the number of workspaces that may use it.
#[derive(Debug, Clone)]
pub struct View {
    pub record: Integration,
    pub workspace_count: usize,
}

/// What a create answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub id: IntegrationId,
    pub slug: String,
}

/// The model list of an integration: its entries, and under allow-all the
/// catalogue's other models of its provider (sorted).
#[derive(Debug, Clone)]
pub struct Models {
    pub allow_all_models: bool,
    pub entries: Vec<IntegrationModel>,
    pub catalogue: Vec<String>,
}

/// What a models update answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelsUpdated {
    pub total: usize,
    pub allow_all_models: bool,
}

/// How many workspaces can use the integration now.
pub fn workspace_count(snap: &Snapshot, i: &Integration) -> usize {
    snap.workspaces.keys().filter(|w| i.access_for(w).is_some()).count()
}

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
            Some(s) => check_field(name, s),
            None => Err(AdminError::validation(format!("{name} must be a string"))),
        },
    }
}

/// Checks that every required field is present in the integration as it
/// will be stored.
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

/// Seals `secrets` into `i` (replacing fields of the same name), bound to
/// the integration and field; only the masked form stays readable.
fn seal_into(ctx: &Ctx, i: &mut Integration, secrets: Vec<(String, String)>) -> Result<(), AdminError> {
    let context = format!("integration:{}", i.id);
    for (name, value) in secrets {
        check_secret_shape(&name, &value)?;
        let sealed = tollgate_store::secrets::seal(&ctx.master, &SealedFields::aad(&context, &name), &value)
            .map_err(AdminError::internal)?;
        i.masked_secrets.insert(name.clone(), ids::mask_secret(&value));
        i.sealed_secrets.insert(name, sealed.to_string());
    }
    Ok(())
}

/// Finds an integration by slug and checks that the caller may see it:
/// organisation keys see all; a workspace key with `scope` only its own
/// workspace's.
pub fn find(snap: &Snapshot, caller: &Caller, slug: &str, scope: &str) -> Result<Arc<IntegrationEntry>, AdminError> {
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

/// The default provider `workspace_id` needs for the integration (slug =
/// `slug` or the integration's), or `None` when it has it already. A
/// provider of that slug for another integration is a conflict.
pub fn default_provider(
    snap: &Snapshot,
    i: &Integration,
    workspace_id: &str,
    slug: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Option<ProviderRecord>, AdminError> {
    let slug = slug.unwrap_or(&i.slug);
    if let Some(existing) = snap.route(workspace_id, slug) {
        if existing.provider_record.integration_id == i.id {
            return Ok(None);
        }
        return Err(AdminError::conflict(format!(
            "workspace '{workspace_id}' already has a provider '{slug}' for another integration; set default_provider_slug"
        )));
    }
    Ok(Some(ProviderRecord {
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
    }))
}

// ---- reads ----------------------------------------------------------------

/// The integrations the caller may see, oldest first.
pub fn list(snap: &Snapshot, caller: &Caller, f: &ListFilter) -> Result<Vec<View>, AdminError> {
    if !caller.is_org() {
        caller.require_scope(READ)?;
    }
    let kind = f.kind.as_deref().unwrap_or("all");
    if !matches!(kind, "organisation" | "organization" | "workspace" | "all") {
        return Err(AdminError::validation(
            "type must be 'organisation', 'workspace' or 'all'",
        ));
    }
    let ws_filter = match &f.workspace_id {
        Some(w) => Some(
            workspace_named(snap, w)
                .map(|w| w.id.clone())
                .ok_or_else(|| AdminError::validation(format!("workspace_id '{w}' does not exist")))?,
        ),
        None => None,
    };
    let mut items: Vec<&Integration> = snap
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
    Ok(items
        .into_iter()
        .map(|i| View {
            record: i.clone(),
            workspace_count: workspace_count(snap, i),
        })
        .collect())
}

/// One integration the caller may see.
pub fn retrieve(snap: &Snapshot, caller: &Caller, slug: &str) -> Result<View, AdminError> {
    let e = find(snap, caller, slug, READ)?;
    Ok(View {
        workspace_count: workspace_count(snap, &e.record),
        record: e.record.clone(),
    })
}

/// The integration's model list.
pub fn list_models(snap: &Snapshot, caller: &Caller, slug: &str) -> Result<Models, AdminError> {
    let e = find(snap, caller, slug, READ)?;
    let i = &e.record;
    // Under allow-all, list what the catalogue knows besides the entries.
    let mut catalogue: Vec<String> = Vec::new();
    if i.allow_all_models {
        catalogue = snap
            .prices
            .models_of(&i.ai_provider_id)
            .filter(|m| !e.models.contains_key(*m))
            .map(str::to_owned)
            .collect();
        catalogue.sort();
    }
    Ok(Models {
        allow_all_models: i.allow_all_models,
        entries: i.models.clone(),
        catalogue,
    })
}

/// The integration's workspace grants and its "All Workspaces" access.
pub fn list_workspaces(snap: &Snapshot, caller: &Caller, slug: &str) -> Result<Integration, AdminError> {
    Ok(find(snap, caller, slug, READ)?.record.clone())
}

// ---- changes --------------------------------------------------------------

/// Creates an integration, its secrets sealed; a workspace's own is
/// provisioned to that workspace at once.
pub fn plan_create(
    snap: &Snapshot,
    caller: &Caller,
    ctx: &Ctx,
    body: CreateIntegration,
) -> Result<Planned<Created>, AdminError> {
    // A workspace admin creates integrations owned by its own workspace only.
    let workspace_id = if caller.is_org() {
        match &body.workspace_id {
            Some(w) => Some(
                workspace_named(snap, w)
                    .map(|w| w.id.clone())
                    .ok_or_else(|| AdminError::validation(format!("workspace_id '{w}' does not exist")))?,
            ),
            None => None,
        }
    } else {
        caller.require_scope(WRITE)?;
        let own = caller.workspace_id().map(str::to_owned);
        if let Some(w) = &body.workspace_id {
            let target = workspace_named(snap, w).map(|w| w.id.clone());
            if target != own {
                return Err(AdminError::forbidden(
                    "a workspace key can create integrations only in its own workspace",
                ));
            }
        }
        own
    };
    let name = check_name("name", &body.name)?;
    let description = check_text("description", body.description)?;
    let spec = catalogue::provider(&body.ai_provider_id).ok_or_else(|| {
        AdminError::validation(format!(
            "unknown ai_provider_id '{}'; see GET /v1/ai-providers",
            body.ai_provider_id
        ))
    })?;
    let slug = match &body.slug {
        Some(s) => {
            check_slug("slug", s)?;
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
    let now = ctx.now;
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
    seal_into(ctx, &mut i, secrets)?;
    check_required(spec, &i)?;
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
    let mut writes = vec![Write::Integration(i.clone())];
    if let Some(w) = &workspace_id {
        writes.extend(default_provider(snap, &i, w, None, now)?.map(Write::Provider));
    }
    Ok(Planned {
        writes,
        audit: Audit::new(
            "create",
            ObjectType::Integration,
            &i.slug,
            json!({"ai_provider_id": i.ai_provider_id, "workspace_id": i.workspace_id, "secret_fields": i.sealed_secrets.keys().collect::<Vec<_>>()}),
        ),
        output: Created {
            id: IntegrationId::new(i.id),
            slug: i.slug,
        },
    })
}

/// Updates names, status and configuration: fields sent as null are
/// removed, others replace what is stored; secrets are sealed afresh.
pub fn plan_update(
    snap: &Snapshot,
    caller: &Caller,
    ctx: &Ctx,
    slug: &str,
    body: UpdateIntegration,
) -> Result<Planned<View>, AdminError> {
    let e = find(snap, caller, slug, WRITE)?;
    let mut i = e.record.clone();
    if let Some(n) = &body.name {
        i.name = check_name("name", n)?;
    }
    if body.description.is_some() {
        i.description = check_text("description", body.description)?;
    }
    if let Some(s) = body.status {
        i.status = s;
    }
    let cfg = body.configurations.unwrap_or_default();
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
    seal_into(ctx, &mut i, secrets)?;
    check_required(e.spec, &i)?;
    i.last_updated_at = ctx.now;
    Ok(Planned {
        writes: vec![Write::Integration(i.clone())],
        audit: Audit::new(
            "update",
            ObjectType::Integration,
            &i.slug,
            json!({"secret_fields_changed": changed_secrets}),
        ),
        output: View {
            workspace_count: workspace_count(snap, &i),
            record: i,
        },
    })
}

/// Deletes an integration; its providers in every workspace go with it.
pub fn plan_delete(snap: &Snapshot, caller: &Caller, slug: &str) -> Result<Planned<()>, AdminError> {
    let e = find(snap, caller, slug, WRITE)?;
    Ok(Planned {
        writes: vec![Write::DeleteIntegration(IntegrationId::new(e.record.id.clone()))],
        audit: Audit::new("delete", ObjectType::Integration, &e.record.slug, json!({})),
        output: (),
    })
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

/// Adds or replaces model entries (standard models allowed or disabled,
/// custom and fine-tuned ones), and sets `allow_all_models`.
pub fn plan_put_models(
    snap: &Snapshot,
    caller: &Caller,
    ctx: &Ctx,
    slug: &str,
    body: PutModels,
) -> Result<Planned<ModelsUpdated>, AdminError> {
    let e = find(snap, caller, slug, WRITE)?;
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
            check_field("models[].base_model_slug", b)?;
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
    i.last_updated_at = ctx.now;
    let output = ModelsUpdated {
        total: i.models.len(),
        allow_all_models: i.allow_all_models,
    };
    Ok(Planned {
        audit: Audit::new(
            "update_models",
            ObjectType::Integration,
            &i.slug,
            json!({"allow_all_models": i.allow_all_models, "models": i.models.iter().map(|m| &m.slug).collect::<Vec<_>>()}),
        ),
        writes: vec![Write::Integration(i)],
        output,
    })
}

/// Removes custom models (by slug); standard ones are disabled instead.
pub fn plan_delete_models(
    snap: &Snapshot,
    caller: &Caller,
    ctx: &Ctx,
    slug: &str,
    slugs: &[&str],
) -> Result<Planned<()>, AdminError> {
    let e = find(snap, caller, slug, WRITE)?;
    if slugs.is_empty() {
        return Err(AdminError::validation("give the models to remove as ?slugs=a,b"));
    }
    let mut i = e.record.clone();
    for s in slugs {
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
    i.last_updated_at = ctx.now;
    Ok(Planned {
        audit: Audit::new(
            "delete_models",
            ObjectType::Integration,
            &i.slug,
            json!({"models": slugs}),
        ),
        writes: vec![Write::Integration(i)],
        output: (),
    })
}

/// Grants (or revokes) the integration to workspaces, each with its own
/// limits and model list, and opens it to all workspaces or closes it.
/// Each enabled grant gets the workspace's default provider.
pub fn plan_put_workspaces(
    snap: &Snapshot,
    caller: &Caller,
    ctx: &Ctx,
    slug: &str,
    body: PutWorkspaces,
) -> Result<Planned<()>, AdminError> {
    let e = find(snap, caller, slug, WRITE)?;
    let mut i = e.record.clone();
    let now = ctx.now;
    // Resolve and check every entry before changing anything.
    let mut entries = Vec::with_capacity(body.workspaces.len());
    for w in body.workspaces {
        let ws = workspace_named(snap, &w.id)
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
        let limits = merge_limits(
            &current.as_ref().map(|c| c.limits.clone()).unwrap_or_default(),
            &w.usage_limits,
            &w.rate_limits,
            w.reset_usage == Some(true),
            now,
        )?;
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
        let limits = merge_limits(
            &i.global_access.limits,
            &g.usage_limits,
            &g.rate_limits,
            g.reset_usage == Some(true),
            now,
        )?;
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
    let mut writes = vec![Write::Integration(i.clone())];
    for (ws, slug) in provision {
        writes.extend(default_provider(snap, &i, &ws, slug.as_deref(), now)?.map(Write::Provider));
    }
    Ok(Planned {
        writes,
        audit: Audit::new(
            "provision",
            ObjectType::Integration,
            &i.slug,
            json!({
                "workspaces": i.workspaces.iter().map(|(k, a)| json!({"id": k, "enabled": a.enabled})).collect::<Vec<_>>(),
                "global_workspace_access": i.global_access.enabled,
            }),
        ),
        output: (),
    })
}

impl Control<'_> {
    pub async fn create_integration(&self, caller: &Caller, body: CreateIntegration) -> Result<Created, AdminError> {
        self.run(caller, |snap, ctx| plan_create(snap, caller, ctx, body)).await
    }

    pub async fn update_integration(
        &self,
        caller: &Caller,
        slug: &str,
        body: UpdateIntegration,
    ) -> Result<View, AdminError> {
        self.run(caller, |snap, ctx| plan_update(snap, caller, ctx, slug, body))
            .await
    }

    pub async fn delete_integration(&self, caller: &Caller, slug: &str) -> Result<(), AdminError> {
        self.run(caller, |snap, _| plan_delete(snap, caller, slug)).await
    }

    pub async fn put_integration_models(
        &self,
        caller: &Caller,
        slug: &str,
        body: PutModels,
    ) -> Result<ModelsUpdated, AdminError> {
        self.run(caller, |snap, ctx| plan_put_models(snap, caller, ctx, slug, body))
            .await
    }

    pub async fn delete_integration_models(
        &self,
        caller: &Caller,
        slug: &str,
        slugs: &[&str],
    ) -> Result<(), AdminError> {
        self.run(caller, |snap, ctx| plan_delete_models(snap, caller, ctx, slug, slugs))
            .await
    }

    pub async fn put_integration_workspaces(
        &self,
        caller: &Caller,
        slug: &str,
        body: PutWorkspaces,
    ) -> Result<(), AdminError> {
        self.run(caller, |snap, ctx| plan_put_workspaces(snap, caller, ctx, slug, body))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testing::*;
    use crate::error::AdminCode;
    use tollgate_store::secrets::SealedSecret;
    use tollgate_store::ControlData;

    fn create_body(v: Value) -> CreateIntegration {
        serde_json::from_value(v).unwrap()
    }

    /// `data` with the planned writes applied, and the plan's output.
    fn run<T>(
        data: &mut ControlData,
        ctx: &Ctx,
        plan: impl FnOnce(&Snapshot) -> Result<Planned<T>, AdminError>,
    ) -> Result<(T, Audit), AdminError> {
        let snap = snapshot(data.clone(), ctx);
        let p = plan(&snap)?;
        apply(data, &p.writes);
        Ok((p.output, p.audit))
    }

    fn openai(
        data: &mut ControlData,
        ctx: &Ctx,
        caller: &Caller,
        extra: Value,
    ) -> Result<(Created, Audit), AdminError> {
        let mut body = json!({"name": "OpenAI Prod", "ai_provider_id": "openai", "key": "sk-secret-value-1234567890"});
        if let (Some(b), Some(x)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(x.clone());
        }
        run(data, ctx, |s| plan_create(s, caller, ctx, create_body(body)))
    }

    #[test]
    fn create_seals_the_key_and_never_echoes_it() {
        let ctx = ctx();
        let mut data = two_workspaces();
        let (created, audit) = openai(&mut data, &ctx, &org(), json!({})).unwrap();
        assert_eq!(created.slug, "openai-prod");
        let i = &data.integrations[0];
        assert_eq!(i.id, created.id.as_str());
        let everything = format!("{:?} {:?} {:?}", data.integrations, audit, created);
        assert!(!everything.contains("sk-secret-value-1234567890"), "{everything}");
        assert_eq!(i.masked_secrets["key"], "sk-s********7890");
        // The sealed key opens with the master key, bound to this
        // integration and field.
        let sealed = SealedSecret::parse(&i.sealed_secrets["key"]).unwrap();
        let aad = SealedFields::aad(&format!("integration:{}", i.id), "key");
        let opened = tollgate_store::secrets::open(&ctx.master, &aad, &sealed).unwrap();
        assert_eq!(opened.expose(), "sk-secret-value-1234567890");
        assert!(
            tollgate_store::secrets::open(&ctx.master, &SealedFields::aad("integration:x", "key"), &sealed).is_err()
        );
        assert_eq!(
            (audit.action, audit.object_type, audit.object_id.as_str()),
            ("create", ObjectType::Integration, "openai-prod")
        );
        assert_eq!(audit.details["secret_fields"], json!(["key"]));
        // An organisation integration is provisioned nowhere yet.
        assert!(data.providers.is_empty());
        // The same slug again is a conflict; a derived slug gets a suffix.
        let e = openai(&mut data, &ctx, &org(), json!({"slug": "openai-prod"})).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                AdminCode::Conflict,
                "integration with slug 'openai-prod' already exists"
            )
        );
        let (again, _) = openai(&mut data, &ctx, &org(), json!({})).unwrap();
        assert!(again.slug.starts_with("openai-prod-"), "{}", again.slug);
    }

    #[test]
    fn create_validates_each_field_by_name() {
        let ctx = ctx();
        let mut data = two_workspaces();
        let cases = [
            (json!({"name": " "}), "name must be 1 to 255 characters"),
            (
                json!({"ai_provider_id": "nope"}),
                "unknown ai_provider_id 'nope'; see GET /v1/ai-providers",
            ),
            (
                json!({"slug": "a b"}),
                "slug must be 1 to 64 characters of a-z, A-Z, 0-9, '_' and '-'",
            ),
            (json!({"workspace_id": "ws-zz"}), "workspace_id 'ws-zz' does not exist"),
            (json!({"key": ""}), "key must not be empty"),
            (json!({"key": "a\nb"}), "key must not contain control characters"),
            (
                json!({"description": "x\0"}),
                "description must not contain control characters other than line breaks and tabs",
            ),
            (
                json!({"configurations": {"custom_host": "ftp://x"}}),
                "custom_host must be an http(s) URL with a host, e.g. https://api.example.com/v1",
            ),
        ];
        for (extra, message) in cases {
            let e = openai(&mut data, &ctx, &org(), extra.clone()).unwrap_err();
            assert_eq!(
                (e.code, e.message.as_str()),
                (AdminCode::Validation, message),
                "{extra}"
            );
        }
        let e = run(&mut data, &ctx, |s| {
            plan_create(
                s,
                &org(),
                &ctx,
                create_body(json!({"name": "x", "ai_provider_id": "openai"})),
            )
        })
        .unwrap_err();
        assert_eq!(e.message, "provider 'openai' requires 'key'");
        let e = openai(&mut data, &ctx, &org(), json!({"configurations": {"api_key": "sk"}})).unwrap_err();
        assert!(e
            .message
            .starts_with("unknown configuration field 'api_key' for provider 'openai'"));
        assert!(data.integrations.is_empty(), "nothing is written on a refusal");
    }

    #[test]
    fn workspace_keys_create_only_in_their_own_workspace() {
        let ctx = ctx();
        let mut data = two_workspaces();
        let no_scope = ws_key("ws-a", &["completions.write"]);
        let e = openai(&mut data, &ctx, &no_scope, json!({})).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                AdminCode::Forbidden,
                "this API key lacks the 'workspace_integrations.write' scope"
            )
        );
        let writer = ws_key("ws-a", &["workspace_integrations.write"]);
        let e = openai(&mut data, &ctx, &writer, json!({"workspace_id": "b"})).unwrap_err();
        assert_eq!(e.code, AdminCode::Forbidden);
        // Its own: owned by and provisioned to its workspace at once.
        let (created, _) = openai(&mut data, &ctx, &writer, json!({"workspace_id": "a"})).unwrap();
        let i = &data.integrations[0];
        assert_eq!(i.workspace_id.as_deref(), Some("ws-a"));
        assert!(i.workspaces["ws-a"].enabled);
        assert_eq!(data.providers.len(), 1);
        let p = &data.providers[0];
        assert_eq!(
            (p.workspace_id.as_str(), p.slug.as_str(), p.is_default),
            ("ws-a", created.slug.as_str(), true)
        );
        // Another workspace's integration answers as unknown; the
        // organisation's is refused as such.
        let snap = snapshot(data.clone(), &ctx);
        let other = ws_key("ws-b", &["workspace_integrations.*"]);
        let e = retrieve(&snap, &other, &created.slug).unwrap_err();
        assert_eq!(e.code, AdminCode::NotFound);
        assert!(list(&snap, &other, &ListFilter::default()).unwrap().is_empty());
        let (org_int, _) = openai(&mut data, &ctx, &org(), json!({"slug": "org-int"})).unwrap();
        let snap = snapshot(data.clone(), &ctx);
        let e = retrieve(&snap, &writer, &org_int.slug).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                AdminCode::Forbidden,
                "this API key cannot access the organisation's integrations"
            )
        );
        let e = plan_delete(&snap, &ws_key("ws-a", &["workspace_integrations.read"]), &created.slug).unwrap_err();
        assert_eq!(e.code, AdminCode::Forbidden);
    }

    fn provision(data: &mut ControlData, ctx: &Ctx, slug: &str, body: Value) -> Result<Audit, AdminError> {
        run(data, ctx, |s| {
            plan_put_workspaces(s, &org(), ctx, slug, serde_json::from_value(body).unwrap())
        })
        .map(|(_, a)| a)
    }

    #[test]
    fn provisioning_to_specific_workspaces_creates_their_default_providers() {
        let ctx = ctx();
        let mut data = two_workspaces();
        openai(&mut data, &ctx, &org(), json!({})).unwrap();
        let audit = provision(
            &mut data,
            &ctx,
            "openai-prod",
            json!({"workspaces": [
                {"id": "a", "rate_limits": [{"type": "requests", "unit": "rpm", "value": 5}], "models": ["gpt-4o"]},
                {"id": "ws-b", "default_provider_slug": "oai"},
            ]}),
        )
        .unwrap();
        assert_eq!(audit.action, "provision");
        assert_eq!(audit.details["global_workspace_access"], json!(false));
        let mut slugs: Vec<_> = data
            .providers
            .iter()
            .map(|p| (p.workspace_id.as_str(), p.slug.as_str()))
            .collect();
        slugs.sort();
        assert_eq!(slugs, [("ws-a", "openai-prod"), ("ws-b", "oai")]);
        let i = &data.integrations[0];
        assert_eq!(
            i.workspaces["ws-a"].limits.rate.as_ref().map(|r| r.limit.value),
            Some(5)
        );
        assert_eq!(i.workspaces["ws-a"].models, Some(vec!["gpt-4o".to_owned()]));
        // Provisioning again creates nothing new; the limit cannot change.
        provision(&mut data, &ctx, "openai-prod", json!({"workspaces": [{"id": "a"}]})).unwrap();
        assert_eq!(data.providers.len(), 2);
        assert_eq!(
            data.integrations[0].workspaces["ws-a"].models,
            Some(vec!["gpt-4o".to_owned()])
        );
        let e = provision(
            &mut data,
            &ctx,
            "openai-prod",
            json!({"workspaces": [{"id": "a", "rate_limits": {"type": "requests", "unit": "rpm", "value": 6}}]}),
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                AdminCode::Conflict,
                "the rate limit is already set and cannot be edited; remove the object and create it again"
            )
        );
        // Revoking a grant keeps the record, disabled.
        provision(
            &mut data,
            &ctx,
            "openai-prod",
            json!({"workspaces": [{"id": "a", "enabled": false}]}),
        )
        .unwrap();
        assert!(!data.integrations[0].workspaces["ws-a"].enabled);
        for (body, message) in [
            (
                json!({"workspaces": [{"id": "nope"}]}),
                "workspace 'nope' does not exist",
            ),
            (
                json!({"workspaces": [{"id": "a", "default_provider_slug": "a b"}]}),
                "default_provider_slug must match ^[a-zA-Z0-9_-]+$",
            ),
            (
                json!({"workspaces": [{"id": "b", "models": [""]}]}),
                "workspaces[].models entries must be 1 to 256 characters, without control characters",
            ),
            (
                json!({"workspaces": [{"id": "b", "usage_limits": [{"credit_limit": 5}, {"credit_limit": 6}]}]}),
                "at most one limit of each kind may be set at a level",
            ),
        ] {
            let e = provision(&mut data, &ctx, "openai-prod", body).unwrap_err();
            assert_eq!((e.code, e.message.as_str()), (AdminCode::Validation, message));
        }
    }

    #[test]
    fn provisioning_to_all_workspaces_reaches_every_one_and_conflicts_are_named() {
        let ctx = ctx();
        let mut data = two_workspaces();
        openai(&mut data, &ctx, &org(), json!({})).unwrap();
        // ws-b already has a provider `openai-prod` of another integration.
        openai(&mut data, &ctx, &org(), json!({"slug": "other"})).unwrap();
        provision(
            &mut data,
            &ctx,
            "other",
            json!({"workspaces": [{"id": "b", "default_provider_slug": "openai-prod"}]}),
        )
        .unwrap();
        let e = provision(
            &mut data,
            &ctx,
            "openai-prod",
            json!({"global_workspace_access": {"enabled": true}}),
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                AdminCode::Conflict,
                "workspace 'ws-b' already has a provider 'openai-prod' for another integration; set default_provider_slug"
            )
        );
        data.providers.clear();
        let audit = provision(
            &mut data,
            &ctx,
            "openai-prod",
            json!({"global_workspace_access": {"enabled": true, "usage_limits": {"credit_limit": 10}}}),
        )
        .unwrap();
        assert_eq!(audit.details["global_workspace_access"], json!(true));
        let i = data.integrations.iter().find(|i| i.slug == "openai-prod").unwrap();
        assert!(i.global_access.enabled);
        assert_eq!(i.global_access.set_at, Some(ctx.now));
        assert!(i.global_access.limits.usage.is_some());
        let mut ws: Vec<_> = data.providers.iter().map(|p| p.workspace_id.as_str()).collect();
        ws.sort();
        assert_eq!(ws, ["ws-a", "ws-b"]);
        let snap = snapshot(data.clone(), &ctx);
        assert_eq!(retrieve(&snap, &org(), "openai-prod").unwrap().workspace_count, 2);
        // A workspace-owned integration stays in its workspace.
        let writer = ws_key("ws-a", &["workspace_integrations.write"]);
        openai(&mut data, &ctx, &writer, json!({"slug": "mine"})).unwrap();
        let e = provision(
            &mut data,
            &ctx,
            "mine",
            json!({"global_workspace_access": {"enabled": true}}),
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "a workspace-owned integration cannot be opened to all workspaces"
        );
        let e = provision(&mut data, &ctx, "mine", json!({"workspaces": [{"id": "b"}]})).unwrap_err();
        assert_eq!(
            e.message,
            "a workspace-owned integration can be provisioned only to its own workspace"
        );
    }

    #[test]
    fn update_replaces_and_removes_configuration_and_reseals_secrets() {
        let ctx = ctx();
        let mut data = two_workspaces();
        openai(
            &mut data,
            &ctx,
            &org(),
            json!({"configurations": {"openai_organization": "org-1"}}),
        )
        .unwrap();
        let before = data.integrations[0].sealed_secrets["key"].clone();
        let body: UpdateIntegration = serde_json::from_value(
            json!({"name": "Renamed", "key": "sk-new-secret-abcdefghijkl", "configurations": {"openai_organization": null}}),
        )
        .unwrap();
        let (view, audit) = run(&mut data, &ctx, |s| plan_update(s, &org(), &ctx, "openai-prod", body)).unwrap();
        assert_eq!(view.record.name, "Renamed");
        assert!(!view.record.configurations.contains_key("openai_organization"));
        assert_ne!(view.record.sealed_secrets["key"], before);
        assert_eq!(audit.details, json!({"secret_fields_changed": ["key"]}));
        assert!(!format!("{view:?}{audit:?}").contains("sk-new-secret"));
        // Removing a required field is refused.
        let body: UpdateIntegration = serde_json::from_value(json!({"configurations": {"key": null}})).unwrap();
        let e = run(&mut data, &ctx, |s| plan_update(s, &org(), &ctx, "openai-prod", body)).unwrap_err();
        assert_eq!(e.message, "provider 'openai' requires 'key'");
        let e = run(&mut data, &ctx, |s| {
            plan_update(s, &org(), &ctx, "nope", UpdateIntegration::default())
        })
        .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (AdminCode::NotFound, "integration 'nope' not found")
        );
    }

    #[test]
    fn models_are_validated_and_only_custom_ones_deleted() {
        let ctx = ctx();
        let mut data = two_workspaces();
        openai(&mut data, &ctx, &org(), json!({})).unwrap();
        let body: PutModels = serde_json::from_value(json!({"allow_all_models": false, "models": [
            {"slug": "gpt-4o"},
            {"slug": "my-ft", "is_finetune": true, "base_model_slug": "gpt-4o",
             "pricing_config": {"pay_as_you_go": {"request_token": {"price": 0.001}}}},
        ]}))
        .unwrap();
        let (out, audit) = run(&mut data, &ctx, |s| {
            plan_put_models(s, &org(), &ctx, "openai-prod", body)
        })
        .unwrap();
        assert_eq!(
            out,
            ModelsUpdated {
                total: 2,
                allow_all_models: false
            }
        );
        assert_eq!(audit.details["models"], json!(["gpt-4o", "my-ft"]));
        let snap = snapshot(data.clone(), &ctx);
        let models = list_models(&snap, &org(), "openai-prod").unwrap();
        assert!(models.catalogue.is_empty(), "no catalogue models without allow-all");
        assert!(models.entries[1].is_custom && models.entries[1].price.is_some());
        for (m, message) in [
            (
                json!({"slug": ""}),
                "models[].slug must be 1 to 256 characters, without control characters",
            ),
            (
                json!({"slug": "x", "is_finetune": true}),
                "fine-tuned model 'x' needs base_model_slug",
            ),
            (
                json!({"slug": "x", "configurations": {"custom_headers": {"a b": "v"}}}),
                "custom header 'a b' is not a valid HTTP header",
            ),
            (
                json!({"slug": "x", "pricing_config": {"type": "dynamic"}}),
                "pricing_config.type must be 'static'",
            ),
        ] {
            let body: PutModels = serde_json::from_value(json!({"models": [m]})).unwrap();
            let e = run(&mut data, &ctx, |s| {
                plan_put_models(s, &org(), &ctx, "openai-prod", body)
            })
            .unwrap_err();
            assert_eq!((e.code, e.message.as_str()), (AdminCode::Validation, message));
        }
        let del = |data: &mut ControlData, slugs: &[&str]| {
            run(data, &ctx, |s| {
                plan_delete_models(s, &org(), &ctx, "openai-prod", slugs)
            })
        };
        assert_eq!(
            del(&mut data, &[]).unwrap_err().message,
            "give the models to remove as ?slugs=a,b"
        );
        assert_eq!(
            del(&mut data, &["gpt-4o"]).unwrap_err().message,
            "'gpt-4o' is not a custom model; disable it with PUT instead"
        );
        assert_eq!(del(&mut data, &["zz"]).unwrap_err().code, AdminCode::NotFound);
        del(&mut data, &["my-ft"]).unwrap();
        assert_eq!(data.integrations[0].models.len(), 1);
    }

    #[test]
    fn delete_removes_the_integration_and_its_providers() {
        let ctx = ctx();
        let mut data = two_workspaces();
        openai(&mut data, &ctx, &org(), json!({})).unwrap();
        provision(&mut data, &ctx, "openai-prod", json!({"workspaces": [{"id": "a"}]})).unwrap();
        let (_, audit) = run(&mut data, &ctx, |s| plan_delete(s, &org(), "openai-prod")).unwrap();
        assert_eq!((audit.action, audit.object_id.as_str()), ("delete", "openai-prod"));
        assert!(data.integrations.is_empty() && data.providers.is_empty());
    }

    #[test]
    fn lists_filter_by_kind_and_workspace() {
        let ctx = ctx();
        let mut data = two_workspaces();
        openai(&mut data, &ctx, &org(), json!({"slug": "o1"})).unwrap();
        openai(&mut data, &ctx, &org(), json!({"slug": "w1", "workspace_id": "ws-b"})).unwrap();
        let snap = snapshot(data, &ctx);
        let slugs = |f: ListFilter| -> Vec<String> {
            list(&snap, &org(), &f)
                .unwrap()
                .into_iter()
                .map(|v| v.record.slug)
                .collect()
        };
        assert_eq!(slugs(ListFilter::default()).len(), 2);
        assert_eq!(
            slugs(ListFilter {
                kind: Some("organization".into()),
                ..Default::default()
            }),
            ["o1"]
        );
        assert_eq!(
            slugs(ListFilter {
                kind: Some("workspace".into()),
                ..Default::default()
            }),
            ["w1"]
        );
        assert_eq!(
            slugs(ListFilter {
                workspace_id: Some("b".into()),
                ..Default::default()
            }),
            ["w1"]
        );
        let e = list(
            &snap,
            &org(),
            &ListFilter {
                kind: Some("x".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.message, "type must be 'organisation', 'workspace' or 'all'");
        let e = list(&snap, &ws_key("ws-a", &[]), &ListFilter::default()).unwrap_err();
        assert_eq!(e.code, AdminCode::Forbidden);
    }

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
