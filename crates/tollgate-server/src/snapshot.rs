//! The in-memory snapshot of the control plane that the gateway reads.
//!
//! Built from every record at start-up and rebuilt after each control-plane
//! change, then swapped in atomically (`arc-swap`), so a request never reads
//! the database and a revoked key fails on the very next request. Everything
//! a request needs is precomputed here: key hash → key, (workspace, provider
//! slug) → route with its integration, access grant and allowed models.

use crate::limit_check;
use foldhash::HashMap;
use std::collections::HashSet;
use std::sync::Arc;
use tollgate_core::admission::{LimitCheck, LimitOwner};
use tollgate_core::catalogue::{self, PriceTable, ProviderSpec};
use tollgate_core::ids::{ApiKeyId, IntegrationId, ProviderId, WorkspaceId};
use tollgate_core::records::{
    ApiKeyRecord, Integration, IntegrationModel, ProviderRecord, SavedConfig, Workspace, WorkspaceAccess,
};
use tollgate_core::routing::Plan;
use tollgate_store::secrets::{MasterKey, SealedFields, SealedSecret};
use tollgate_store::ControlData;

/// An API key as the gateway sees it.
#[derive(Debug)]
pub struct KeyEntry {
    pub record: ApiKeyRecord,
    /// SHA-256 of the key, decoded once here rather than per request.
    pub hash: [u8; 32],
    /// The key's own limits, as counter checks.
    pub checks: Vec<LimitCheck>,
    /// The key's default routing config, compiled.
    pub default_config: Option<DefaultConfig>,
}

/// A saved config with its compiled plan.
#[derive(Debug)]
pub struct ConfigEntry {
    pub record: SavedConfig,
    pub plan: Arc<Plan>,
}

/// A default config (of a key or a workspace), resolved when the snapshot
/// is built.
#[derive(Debug, Clone)]
pub enum DefaultConfig {
    Plan(Arc<Plan>),
    /// It names a saved config that no longer exists or is not visible.
    Missing(String),
}

/// An integration with what requests need precomputed.
pub struct IntegrationEntry {
    pub record: Integration,
    pub spec: &'static ProviderSpec,
    /// Secret fields, opened only inside the adapter call.
    pub secrets: SealedFields,
    /// Model entries by slug.
    pub models: HashMap<String, IntegrationModel>,
    /// Every model this integration is known to serve: its own model
    /// entries and the catalogue's models of its provider (the values a
    /// metric's `model` label may take).
    pub known_models: HashSet<String>,
}

impl std::fmt::Debug for IntegrationEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntegrationEntry")
            .field("slug", &self.record.slug)
            .finish_non_exhaustive()
    }
}

/// A provider slug in one workspace, resolved to the workspace's provider
/// record and its integration.
#[derive(Debug)]
pub struct Route {
    pub provider_record: ProviderRecord,
    pub integration: Arc<IntegrationEntry>,
    /// The workspace's access grant; `None` when revoked or never granted.
    pub access: Option<WorkspaceAccess>,
    /// "Specific model access" for this workspace, if narrowed.
    pub workspace_models: Option<HashSet<String>>,
    /// The integration × workspace and provider limits, as counter checks.
    pub checks: Vec<LimitCheck>,
}

/// Why the snapshot could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("integration '{0}' names unknown provider '{1}'")]
    UnknownProvider(String, String),
    #[error("integration '{0}': sealed field '{1}' is corrupt: {2}")]
    CorruptSecret(String, String, String),
}

/// The control plane, frozen.
#[derive(Default)]
pub struct Snapshot {
    /// The store's control version this was built from.
    pub version: i64,
    pub org_id: String,
    pub prices: Arc<PriceTable>,
    keys: HashMap<[u8; 32], Arc<KeyEntry>>,
    keys_by_id: HashMap<String, Arc<KeyEntry>>,
    pub workspaces: HashMap<String, Arc<Workspace>>,
    integrations: HashMap<String, Arc<IntegrationEntry>>,
    integration_ids_by_slug: HashMap<String, String>,
    /// workspace id → provider slug → route.
    routes: HashMap<String, HashMap<String, Arc<Route>>>,
    /// Every workspace's provider records.
    pub provider_records: Vec<Arc<ProviderRecord>>,
    /// Each workspace's own limits, as counter checks.
    workspace_checks: HashMap<String, Vec<LimitCheck>>,
    /// Saved configs by slug, and slugs by id.
    configs: HashMap<String, Arc<ConfigEntry>>,
    config_slugs_by_id: HashMap<String, String>,
    /// Each workspace's default routing config, compiled.
    workspace_defaults: HashMap<String, DefaultConfig>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    pub fn build(
        data: ControlData,
        version: i64,
        org_id: String,
        prices: Arc<PriceTable>,
        master: &Arc<MasterKey>,
    ) -> Result<Snapshot, SnapshotError> {
        let mut s = Snapshot {
            version,
            org_id,
            prices,
            ..Default::default()
        };
        for c in data.configs {
            // Stored configs were validated when saved; one that no longer
            // compiles (a hand-edited database) is left out and reported.
            match Plan::from_value(c.config.clone()) {
                Ok(plan) => {
                    s.config_slugs_by_id.insert(c.id.clone(), c.slug.clone());
                    s.configs.insert(
                        c.slug.clone(),
                        Arc::new(ConfigEntry {
                            record: c,
                            plan: Arc::new(plan),
                        }),
                    );
                }
                Err(e) => tracing::error!(config = %c.slug, error = %e, "stored config is invalid; left out"),
            }
        }
        for k in data.api_keys {
            let Ok(hash) = hex::decode(&k.key_hash) else { continue };
            let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) else {
                continue;
            };
            let checks = limit_check::checks(LimitOwner::ApiKey(ApiKeyId::new(k.id.clone())), &k.limits);
            let default_config = k
                .default_config
                .as_ref()
                .map(|v| s.resolve_default(v, k.workspace_id.as_deref()));
            let e = Arc::new(KeyEntry {
                record: k,
                hash,
                checks,
                default_config,
            });
            s.keys_by_id.insert(e.record.id.clone(), e.clone());
            s.keys.insert(hash, e);
        }
        for w in data.workspaces {
            s.workspace_checks.insert(
                w.id.clone(),
                limit_check::checks(LimitOwner::Workspace(WorkspaceId::new(w.id.clone())), &w.limits),
            );
            if let Some(v) = &w.default_config {
                let d = s.resolve_default(v, Some(&w.id));
                s.workspace_defaults.insert(w.id.clone(), d);
            }
            s.workspaces.insert(w.id.clone(), Arc::new(w));
        }
        for i in data.integrations {
            let spec = catalogue::provider(&i.ai_provider_id)
                .ok_or_else(|| SnapshotError::UnknownProvider(i.slug.clone(), i.ai_provider_id.clone()))?;
            let context = format!("integration:{}", i.id);
            let mut fields = Vec::with_capacity(i.sealed_secrets.len());
            for (name, text) in &i.sealed_secrets {
                let sealed = SealedSecret::parse(text)
                    .map_err(|e| SnapshotError::CorruptSecret(i.slug.clone(), name.clone(), e.to_string()))?;
                fields.push((name.clone(), sealed));
            }
            let models: HashMap<String, IntegrationModel> =
                i.models.iter().map(|m| (m.slug.clone(), m.clone())).collect();
            let known_models = models
                .keys()
                .cloned()
                .chain(s.prices.models_of(&i.ai_provider_id).map(str::to_owned))
                .collect();
            let entry = IntegrationEntry {
                known_models,
                secrets: SealedFields {
                    master: master.clone(),
                    context,
                    fields,
                },
                spec,
                models,
                record: i,
            };
            s.integration_ids_by_slug
                .insert(entry.record.slug.clone(), entry.record.id.clone());
            s.integrations.insert(entry.record.id.clone(), Arc::new(entry));
        }
        for p in data.providers {
            let Some(integration) = s.integrations.get(&p.integration_id).cloned() else {
                continue;
            };
            let access = integration.record.access_for(&p.workspace_id);
            let workspace_models = access
                .as_ref()
                .and_then(|a| a.models.as_ref())
                .map(|m| m.iter().cloned().collect());
            let mut checks = limit_check::checks(
                LimitOwner::IntegrationWorkspace {
                    integration: IntegrationId::new(integration.record.id.clone()),
                    workspace: WorkspaceId::new(p.workspace_id.clone()),
                },
                &integration.record.workspace_limits(&p.workspace_id),
            );
            checks.extend(limit_check::checks(
                LimitOwner::Provider(ProviderId::new(p.id.clone())),
                &p.limits,
            ));
            let route = Arc::new(Route {
                provider_record: p.clone(),
                integration,
                access,
                workspace_models,
                checks,
            });
            s.routes
                .entry(p.workspace_id.clone())
                .or_default()
                .insert(p.slug.clone(), route);
            s.provider_records.push(Arc::new(p));
        }
        Ok(s)
    }

    /// The key whose SHA-256 is `hash`.
    pub fn key_by_hash(&self, hash: &[u8; 32]) -> Option<&Arc<KeyEntry>> {
        self.keys.get(hash)
    }

    pub fn key_by_id(&self, id: &str) -> Option<&Arc<KeyEntry>> {
        self.keys_by_id.get(id)
    }

    pub fn keys(&self) -> impl Iterator<Item = &Arc<KeyEntry>> {
        self.keys_by_id.values()
    }

    pub fn integration(&self, id: &str) -> Option<&Arc<IntegrationEntry>> {
        self.integrations.get(id)
    }

    pub fn integration_by_slug(&self, slug: &str) -> Option<&Arc<IntegrationEntry>> {
        self.integration_ids_by_slug
            .get(slug)
            .and_then(|id| self.integrations.get(id))
    }

    pub fn integrations(&self) -> impl Iterator<Item = &Arc<IntegrationEntry>> {
        self.integrations.values()
    }

    /// Is `model` one the route's integration or workspace grant names?
    pub fn is_known_model(&self, workspace_id: &str, slug: &str, model: &str) -> bool {
        self.route(workspace_id, slug).is_some_and(|r| {
            r.integration.known_models.contains(model) || r.workspace_models.as_ref().is_some_and(|m| m.contains(model))
        })
    }

    /// The provider `slug` in `workspace_id`.
    pub fn route(&self, workspace_id: &str, slug: &str) -> Option<&Arc<Route>> {
        self.routes.get(workspace_id).and_then(|r| r.get(slug))
    }

    /// Every provider of `workspace_id`.
    pub fn routes_of(&self, workspace_id: &str) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.get(workspace_id).into_iter().flat_map(|m| m.values())
    }

    /// The workspace's own limits.
    pub fn workspace_checks(&self, workspace_id: &str) -> &[LimitCheck] {
        self.workspace_checks
            .get(workspace_id)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The saved config `slug_or_id` if `workspace_id` may use it: its own
    /// or the organisation's (`None`: any).
    pub fn config(&self, slug_or_id: &str, workspace_id: Option<&str>) -> Option<&Arc<ConfigEntry>> {
        let c = self.configs.get(slug_or_id).or_else(|| {
            self.config_slugs_by_id
                .get(slug_or_id)
                .and_then(|slug| self.configs.get(slug))
        })?;
        match (&c.record.workspace_id, workspace_id) {
            (None, _) | (_, None) => Some(c),
            (Some(own), Some(w)) if own == w => Some(c),
            _ => None,
        }
    }

    pub fn configs(&self) -> impl Iterator<Item = &Arc<ConfigEntry>> {
        self.configs.values()
    }

    /// The default routing config of a workspace.
    pub fn workspace_default(&self, workspace_id: &str) -> Option<&DefaultConfig> {
        self.workspace_defaults.get(workspace_id)
    }

    /// A stored `default_config` (a saved config's slug or an object) as
    /// seen from `workspace_id`.
    fn resolve_default(&self, v: &serde_json::Value, workspace_id: Option<&str>) -> DefaultConfig {
        match v {
            serde_json::Value::String(slug) => match self.config(slug, workspace_id) {
                Some(c) => DefaultConfig::Plan(c.plan.clone()),
                None => DefaultConfig::Missing(slug.clone()),
            },
            other => match Plan::from_value(other.clone()) {
                Ok(p) => DefaultConfig::Plan(Arc::new(p)),
                Err(e) => DefaultConfig::Missing(e.to_string()),
            },
        }
    }

    pub fn workspace_by_slug(&self, slug: &str) -> Option<&Arc<Workspace>> {
        self.workspaces.values().find(|w| w.slug == slug)
    }
}
