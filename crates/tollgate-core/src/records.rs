//! Control-plane records: what the admin API creates and the gateway reads.
//!
//! The store persists each record as a JSON document (with a few indexed
//! columns beside it), and the server builds its in-memory snapshot from them.
//! Secret configuration fields are held only sealed (`sealed_secrets`, the
//! store's text form) and masked (`masked_secrets`).

use crate::limits::{RateLimit, UsageLimit};
use crate::token_usage::ModelPrice;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A limit as set at some level, with the time it was set: only usage after
/// `set_at` counts, and `reset_usage` moves `set_at` to the reset time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitSetting<T> {
    pub limit: T,
    pub set_at: DateTime<Utc>,
}

/// The limits held at one level: at most one budget and one rate limit.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Limits {
    #[serde(default)]
    pub usage: Option<LimitSetting<UsageLimit>>,
    #[serde(default)]
    pub rate: Option<LimitSetting<RateLimit>>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.usage.is_none() && self.rate.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workspace {
    pub id: String,
    pub slug: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub defaults: serde_json::Value,
    #[serde(default)]
    pub limits: Limits,
    /// Store request and response bodies in the request log (off by default).
    #[serde(default)]
    pub log_bodies: bool,
    /// The routing config applied when a request sends none: a saved
    /// config's slug (`pc-…`) or a config object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_config: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub last_updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    Organisation,
    Workspace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeySubType {
    Service,
    User,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Hex SHA-256 of the key; the key itself is never stored.
    pub key_hash: String,
    /// The key's first and last characters, for recognising it in lists.
    pub masked_key: String,
    pub key_type: KeyType,
    pub sub_type: KeySubType,
    #[serde(default)]
    pub workspace_id: Option<String>,
    pub scopes: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub alert_emails: Vec<String>,
    /// Defaults applied to the key's requests (`metadata`, ...), as given.
    #[serde(default)]
    pub defaults: serde_json::Value,
    /// The routing config applied when a request sends none (before the
    /// workspace's): a saved config's slug (`pc-…`) or a config object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_config: Option<serde_json::Value>,
    #[serde(default)]
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_updated_at: DateTime<Utc>,
}

/// A model entry of an integration: an allowed standard model, or a custom one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntegrationModel {
    pub slug: String,
    pub enabled: bool,
    #[serde(default)]
    pub is_custom: bool,
    #[serde(default)]
    pub is_finetune: bool,
    #[serde(default)]
    pub base_model_slug: Option<String>,
    /// Model-level `custom_host`.
    #[serde(default)]
    pub custom_host: Option<String>,
    #[serde(default)]
    pub custom_headers: Vec<(String, String)>,
    /// Price override (`pricing_config`), exact.
    #[serde(default)]
    pub price: Option<ModelPrice>,
    /// `pricing_config` as the client sent it, echoed back on GET.
    #[serde(default)]
    pub pricing_config: Option<serde_json::Value>,
}

/// An integration's access grant to one workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceAccess {
    pub enabled: bool,
    #[serde(default)]
    pub limits: Limits,
    /// "Specific model access": narrows the integration's allowed models.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    pub updated_at: DateTime<Utc>,
}

/// "All Workspaces".
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GlobalAccess {
    pub enabled: bool,
    #[serde(default)]
    pub limits: Limits,
    /// Apply these limits to every workspace, even those with their own.
    #[serde(default)]
    pub override_existing: bool,
    #[serde(default)]
    pub set_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntegrationStatus {
    Active,
    Archived,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Integration {
    pub id: String,
    pub slug: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub ai_provider_id: String,
    /// Set for a workspace-created integration.
    #[serde(default)]
    pub workspace_id: Option<String>,
    /// Non-secret configuration fields.
    #[serde(default)]
    pub configurations: serde_json::Map<String, serde_json::Value>,
    /// Secret fields, sealed (the store's text form), by field name.
    #[serde(default)]
    pub sealed_secrets: BTreeMap<String, String>,
    /// Secret fields, masked, by field name.
    #[serde(default)]
    pub masked_secrets: BTreeMap<String, String>,
    pub allow_all_models: bool,
    #[serde(default)]
    pub models: Vec<IntegrationModel>,
    #[serde(default)]
    pub workspaces: BTreeMap<String, WorkspaceAccess>,
    #[serde(default)]
    pub global_access: GlobalAccess,
    pub status: IntegrationStatus,
    #[serde(default)]
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_updated_at: DateTime<Utc>,
}

impl Integration {
    /// `custom_host` of the integration, if set.
    pub fn custom_host(&self) -> Option<&str> {
        self.configurations
            .get("custom_host")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
    }

    /// The access grant of `workspace_id`, counting "All Workspaces".
    pub fn access_for(&self, workspace_id: &str) -> Option<WorkspaceAccess> {
        if let Some(owner) = &self.workspace_id {
            if owner != workspace_id {
                return None;
            }
        }
        match self.workspaces.get(workspace_id) {
            Some(a) => Some(a.clone()).filter(|a| a.enabled),
            None if self.global_access.enabled => Some(WorkspaceAccess {
                enabled: true,
                limits: Limits::default(),
                models: None,
                updated_at: self.global_access.set_at.unwrap_or(self.last_updated_at),
            }),
            None => None,
        }
    }

    /// The limits that apply at the integration × workspace level.
    pub fn workspace_limits(&self, workspace_id: &str) -> Limits {
        let own = self
            .workspaces
            .get(workspace_id)
            .map(|a| a.limits.clone())
            .unwrap_or_default();
        let g = &self.global_access;
        if g.enabled && (g.override_existing || own.is_empty()) {
            g.limits.clone()
        } else {
            own
        }
    }
}

/// A provider: an integration as it appears in one workspace's catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderRecord {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub workspace_id: String,
    pub integration_id: String,
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// Created by provisioning (as opposed to by a workspace admin).
    #[serde(default)]
    pub is_default: bool,
    pub created_at: DateTime<Utc>,
    pub last_updated_at: DateTime<Utc>,
}

/// A saved routing config (`/v1/configs`), referred to by its `pc-…` slug.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedConfig {
    pub id: String,
    /// `pc-…`: what `x-portkey-config` and `default_config` name.
    pub slug: String,
    pub name: String,
    /// `None`: the organisation's, visible to every workspace.
    #[serde(default)]
    pub workspace_id: Option<String>,
    /// The config object (validated when saved).
    pub config: serde_json::Value,
    /// The current version; every update keeps a new one.
    pub version_id: String,
    #[serde(default)]
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_updated_at: DateTime<Utc>,
}
