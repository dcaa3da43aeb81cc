//! The control-plane service: every change to workspaces, API keys,
//! integrations, providers and saved configs, with typed inputs and outputs
//! and no HTTP in sight. The admin API's handlers (`admin/*`) only map HTTP
//! to it; the dashboard reaches it through them, and a declarative `apply`
//! can call it directly.
//!
//! Every change runs the same sequence, written once in [`Control::run`]:
//! take the write lock and open a transaction, read the snapshot (under the
//! lock, so two changes never build on the same stale copy), let the
//! object's *plan* function validate the request, check the caller's scopes,
//! clone and edit the records (limits merged under the immutability rule,
//! secrets sealed, provisioning materialised) and name its audit entry,
//! then write the records, the audit entry and the bumped control version in
//! one transaction and swap in the new snapshot. Plan functions are pure
//! (snapshot, caller, clock, master key in; records out), so they are unit
//! tested without a store or HTTP.

pub mod api_keys;
pub mod configs;
pub mod ids;
pub mod integrations;
pub mod providers;
pub mod validate;
pub mod workspaces;

use crate::error::AdminError;
use crate::snapshot::Snapshot;
use crate::state::AppState;
use chrono::{DateTime, Utc};
use ids::{ApiKeyId, ConfigId, IntegrationId, ObjectType, ProviderId, WorkspaceId};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::sync::Arc;
use tollgate_core::limits::{parse_rate_limit, parse_usage_limit, RateLimit, UsageLimit};
use tollgate_core::records::{ApiKeyRecord, Integration, KeyType, ProviderRecord, SavedConfig, Workspace};
use tollgate_store::secrets::MasterKey;
use tollgate_store::{StoreError, Tx};

/// Who is asking: an organisation admin key, or a workspace key with its
/// workspace and scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's id: the audit trail's actor.
    id: ApiKeyId,
    kind: CallerKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerKind {
    Organisation,
    Workspace {
        workspace_id: WorkspaceId,
        scopes: Vec<String>,
    },
}

impl Caller {
    pub fn organisation(id: impl Into<String>) -> Caller {
        Caller {
            id: ApiKeyId::new(id),
            kind: CallerKind::Organisation,
        }
    }

    pub fn workspace(id: impl Into<String>, workspace_id: impl Into<String>, scopes: Vec<String>) -> Caller {
        Caller {
            id: ApiKeyId::new(id),
            kind: CallerKind::Workspace {
                workspace_id: WorkspaceId::new(workspace_id),
                scopes,
            },
        }
    }

    /// The caller an API key record acts as. A workspace key without a
    /// workspace (which the API never creates) may act on no workspace.
    pub fn of_key(k: &ApiKeyRecord) -> Caller {
        match k.key_type {
            KeyType::Organisation => Caller::organisation(k.id.clone()),
            KeyType::Workspace => Caller::workspace(
                k.id.clone(),
                k.workspace_id.clone().unwrap_or_default(),
                k.scopes.clone(),
            ),
        }
    }

    pub fn id(&self) -> &str {
        self.id.as_str()
    }

    pub fn key_id(&self) -> &ApiKeyId {
        &self.id
    }

    pub fn is_org(&self) -> bool {
        self.kind == CallerKind::Organisation
    }

    /// The workspace of a workspace key.
    pub fn workspace_id(&self) -> Option<&str> {
        match &self.kind {
            CallerKind::Organisation => None,
            CallerKind::Workspace { workspace_id, .. } => Some(workspace_id.as_str()),
        }
    }

    /// Organisation keys only.
    pub fn require_org(&self) -> Result<(), AdminError> {
        if self.is_org() {
            Ok(())
        } else {
            Err(AdminError::forbidden("this operation needs an organisation admin key"))
        }
    }

    /// An organisation key, or a workspace key with `scope`.
    pub fn require_scope(&self, scope: &str) -> Result<(), AdminError> {
        match &self.kind {
            CallerKind::Organisation => Ok(()),
            CallerKind::Workspace { scopes, .. } if crate::auth::grants(scopes, scope) => Ok(()),
            CallerKind::Workspace { .. } => {
                Err(AdminError::forbidden(format!("this API key lacks the '{scope}' scope")))
            }
        }
    }

    /// May this caller act on objects of `workspace_id`?
    pub fn require_workspace(&self, workspace_id: &str) -> Result<(), AdminError> {
        match self.workspace_id() {
            None => Ok(()),
            Some(w) if w == workspace_id => Ok(()),
            Some(_) => Err(AdminError::forbidden("this API key cannot act on another workspace")),
        }
    }
}

/// A request field read into its type when the request is parsed. An
/// invalid value is kept as its error and reported where the service checks
/// the field, after the caller's permissions and the fields before it, so
/// that a request gets the same first error however it reached the service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Requested<T> {
    /// Absent, `null` or `[]`: leave the current setting.
    #[default]
    Absent,
    Set(T),
    Invalid(String),
}

impl<T: Clone> Requested<T> {
    /// The requested value, or the validation error it was read with.
    pub fn get(&self) -> Result<Option<T>, AdminError> {
        match self {
            Requested::Absent => Ok(None),
            Requested::Set(v) => Ok(Some(v.clone())),
            Requested::Invalid(m) => Err(AdminError::validation(m.clone())),
        }
    }
}

/// How a limit is read from its wire form: an object or a one-element array.
pub trait FromWire: Sized {
    fn from_wire(v: &Value) -> Result<Option<Self>, String>;
}

impl FromWire for UsageLimit {
    fn from_wire(v: &Value) -> Result<Option<Self>, String> {
        parse_usage_limit(Some(v)).map_err(|e| e.0)
    }
}

impl FromWire for RateLimit {
    fn from_wire(v: &Value) -> Result<Option<Self>, String> {
        parse_rate_limit(Some(v)).map_err(|e| e.0)
    }
}

impl<'de, T: FromWire> Deserialize<'de> for Requested<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Ok(match T::from_wire(&v) {
            Ok(None) => Requested::Absent,
            Ok(Some(t)) => Requested::Set(t),
            Err(m) => Requested::Invalid(m),
        })
    }
}

/// A budget as requested (`usage_limits`).
pub type UsageRequest = Requested<UsageLimit>;
/// A rate limit as requested (`rate_limits`).
pub type RateRequest = Requested<RateLimit>;

/// A time field as requested (`expires_at`): an RFC 3339 string or null.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TimeRequest {
    #[default]
    Absent,
    At(DateTime<Utc>),
    NotRfc3339,
    NotString,
}

impl TimeRequest {
    /// Was the field sent (with a value other than null)?
    pub fn is_present(&self) -> bool {
        *self != TimeRequest::Absent
    }

    /// The time, or the validation error naming `field`.
    pub fn get(&self, field: &str) -> Result<Option<DateTime<Utc>>, AdminError> {
        match self {
            TimeRequest::Absent => Ok(None),
            TimeRequest::At(t) => Ok(Some(*t)),
            TimeRequest::NotRfc3339 => Err(AdminError::validation(format!(
                "{field} must be an ISO 8601 / RFC 3339 time"
            ))),
            TimeRequest::NotString => Err(AdminError::validation(format!("{field} must be a string time"))),
        }
    }
}

impl<'de> Deserialize<'de> for TimeRequest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Null => TimeRequest::Absent,
            Value::String(s) => DateTime::parse_from_rfc3339(&s)
                .map(|t| TimeRequest::At(t.with_timezone(&Utc)))
                .unwrap_or(TimeRequest::NotRfc3339),
            _ => TimeRequest::NotString,
        })
    }
}

/// A record to write, or one to delete (by id), in a change.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Workspace(Workspace),
    DeleteWorkspace(WorkspaceId),
    ApiKey(ApiKeyRecord),
    DeleteApiKey(ApiKeyId),
    Integration(Integration),
    DeleteIntegration(IntegrationId),
    Provider(ProviderRecord),
    DeleteProvider(ProviderId),
    Config(SavedConfig),
    DeleteConfig(ConfigId),
}

/// The audit entry of a change; the actor and time are the change's.
#[derive(Debug, Clone, PartialEq)]
pub struct Audit {
    pub action: &'static str,
    pub object_type: ObjectType,
    pub object_id: String,
    pub details: Value,
}

impl Audit {
    pub fn new(action: &'static str, object_type: ObjectType, object_id: impl Into<String>, details: Value) -> Self {
        Audit {
            action,
            object_type,
            object_id: object_id.into(),
            details,
        }
    }
}

/// What a plan function decided: the records to write, in order, the
/// audit entry, and what to answer once committed.
#[derive(Debug)]
pub struct Planned<T> {
    pub writes: Vec<Write>,
    pub audit: Audit,
    pub output: T,
}

/// What a plan may use besides the snapshot and the caller.
pub struct Ctx {
    pub now: DateTime<Utc>,
    pub master: Arc<MasterKey>,
}

/// The service over the application state.
#[derive(Clone, Copy)]
pub struct Control<'a> {
    state: &'a AppState,
}

impl<'a> Control<'a> {
    pub fn new(state: &'a AppState) -> Self {
        Control { state }
    }

    /// The current snapshot, for reads.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.state.snapshot()
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.state.now()
    }

    /// Runs one change: write lock and transaction, snapshot, `plan`, the
    /// planned writes, the audit entry, commit, new snapshot. Nothing is
    /// written when `plan` fails.
    pub async fn run<T>(
        &self,
        caller: &Caller,
        plan: impl FnOnce(&Snapshot, &Ctx) -> Result<Planned<T>, AdminError>,
    ) -> Result<T, AdminError> {
        let mut change = self.state.change().await?;
        let snap = self.state.snapshot();
        let ctx = Ctx {
            now: self.state.now(),
            master: self.state.master_key(),
        };
        let planned = plan(&snap, &ctx)?;
        write_all(&mut change.tx, &planned.writes).await?;
        let a = planned.audit;
        let audit = self.state.audit_entry(
            Some(caller.id()),
            a.action,
            a.object_type.as_str(),
            &a.object_id,
            a.details,
        );
        change.commit(audit).await?;
        Ok(planned.output)
    }
}

/// Writes `writes` in order into `tx`.
pub async fn write_all(tx: &mut Tx, writes: &[Write]) -> Result<(), StoreError> {
    for w in writes {
        match w {
            Write::Workspace(r) => tx.put_workspace(r).await?,
            Write::DeleteWorkspace(id) => tx.delete_workspace(id.as_str()).await?,
            Write::ApiKey(r) => tx.put_api_key(r).await?,
            Write::DeleteApiKey(id) => tx.delete_api_key(id.as_str()).await?,
            Write::Integration(r) => tx.put_integration(r).await?,
            Write::DeleteIntegration(id) => tx.delete_integration(id.as_str()).await?,
            Write::Provider(r) => tx.put_provider(r).await?,
            Write::DeleteProvider(id) => tx.delete_provider(id.as_str()).await?,
            Write::Config(r) => tx.put_config(r).await?,
            Write::DeleteConfig(id) => tx.delete_config(id.as_str()).await?,
        }
    }
    Ok(())
}

/// Finds a workspace by id or slug.
pub fn workspace_named<'s>(snap: &'s Snapshot, w: &str) -> Option<&'s Arc<Workspace>> {
    snap.workspaces.get(w).or_else(|| snap.workspace_by_slug(w))
}

#[cfg(test)]
mod replicas;
#[cfg(test)]
pub(crate) mod testing {
    //! Snapshots and callers for the service's unit tests.

    use super::*;

    /// A whole application state on `dir` (and `database_url`, else the
    /// embedded database), bootstrapped (organisation, `default` workspace,
    /// admin key), with in-process counters and breakers.
    pub async fn app_state_on(dir: &std::path::Path, database_url: Option<&str>) -> crate::state::SharedState {
        use crate::alerts::{AlertConfig, Dispatcher};
        use tollgate_core::clock::ManualClock;
        let config = crate::config::FileConfig {
            data_dir: Some(dir.to_owned()),
            database_url: database_url.map(str::to_owned),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let (store, master, _) = crate::server::open_store(&config).await.unwrap();
        crate::server::bootstrap(&store, now()).await.unwrap();
        let clock: tollgate_core::clock::SharedClock = Arc::new(ManualClock::new(now()));
        let (usage, _writer) = store.spawn_log_writer().unwrap();
        let outbox = store.outbox();
        outbox.init().await.unwrap();
        let alerts = Dispatcher::new(outbox, &AlertConfig::default(), clock.clone())
            .unwrap()
            .handle();
        let parts = crate::state::Parts {
            config,
            store,
            clock,
            adapters: tollgate_providers::Adapters::new().unwrap(),
            usage,
            counters: Arc::new(tollgate_store::counters::MemoryCounters::new()),
            breakers: Arc::new(crate::gateway::routing::LocalBreakers::default()),
            alerts,
        };
        crate::state::AppState::new(parts, master).await.unwrap()
    }
    use chrono::TimeZone;
    use tollgate_core::catalogue::PriceTable;
    use tollgate_core::records::{KeySubType, Limits};
    use tollgate_store::ControlData;

    pub fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 26, 10, 0, 0)
            .single()
            .unwrap_or_default()
    }

    pub fn ctx() -> Ctx {
        Ctx {
            now: now(),
            master: Arc::new(MasterKey::generate().unwrap()),
        }
    }

    pub fn workspace(id: &str, slug: &str) -> Workspace {
        Workspace {
            id: id.into(),
            slug: slug.into(),
            name: slug.into(),
            description: None,
            defaults: Value::Null,
            limits: Limits::default(),
            log_bodies: false,
            default_config: None,
            created_at: now(),
            last_updated_at: now(),
        }
    }

    pub fn key(id: &str, workspace: Option<&str>, scopes: &[&str]) -> ApiKeyRecord {
        ApiKeyRecord {
            id: id.into(),
            name: id.into(),
            description: None,
            key_hash: hex::encode(tollgate_core::ids::hash_api_key(id)),
            masked_key: "****".into(),
            key_type: if workspace.is_some() {
                KeyType::Workspace
            } else {
                KeyType::Organisation
            },
            sub_type: KeySubType::Service,
            workspace_id: workspace.map(str::to_owned),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            limits: Limits::default(),
            expires_at: None,
            alert_emails: Vec::new(),
            defaults: Value::Null,
            default_config: None,
            created_by: None,
            created_at: now(),
            last_updated_at: now(),
        }
    }

    /// A snapshot of `data` (secrets sealed with `ctx`'s master key).
    pub fn snapshot(data: ControlData, ctx: &Ctx) -> Snapshot {
        Snapshot::build(
            data,
            1,
            "org-1".into(),
            Arc::new(PriceTable::shipped().clone()),
            &ctx.master,
        )
        .unwrap()
    }

    /// Two workspaces, `ws-a` and `ws-b`.
    pub fn two_workspaces() -> ControlData {
        ControlData {
            workspaces: vec![workspace("ws-a", "a"), workspace("ws-b", "b")],
            ..Default::default()
        }
    }

    pub fn org() -> Caller {
        Caller::organisation("ak-org")
    }

    pub fn ws_key(ws: &str, scopes: &[&str]) -> Caller {
        Caller::workspace("ak-ws", ws, scopes.iter().map(|s| s.to_string()).collect())
    }

    /// Applies a plan's writes to `data`, as the store would.
    pub fn apply(data: &mut ControlData, writes: &[Write]) {
        for w in writes {
            match w.clone() {
                Write::Workspace(r) => {
                    data.workspaces.retain(|x| x.id != r.id);
                    data.workspaces.push(r);
                }
                Write::DeleteWorkspace(id) => data.workspaces.retain(|x| x.id != id.as_str()),
                Write::ApiKey(r) => {
                    data.api_keys.retain(|x| x.id != r.id);
                    data.api_keys.push(r);
                }
                Write::DeleteApiKey(id) => data.api_keys.retain(|x| x.id != id.as_str()),
                Write::Integration(r) => {
                    data.integrations.retain(|x| x.id != r.id);
                    data.integrations.push(r);
                }
                Write::DeleteIntegration(id) => {
                    data.integrations.retain(|x| x.id != id.as_str());
                    data.providers.retain(|p| p.integration_id != id.as_str());
                }
                Write::Provider(r) => {
                    data.providers.retain(|x| x.id != r.id);
                    data.providers.push(r);
                }
                Write::DeleteProvider(id) => data.providers.retain(|x| x.id != id.as_str()),
                Write::Config(r) => {
                    data.configs.retain(|x| x.id != r.id);
                    data.configs.push(r);
                }
                Write::DeleteConfig(id) => data.configs.retain(|x| x.id != id.as_str()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::error::AdminCode;
    use serde_json::json;

    #[test]
    fn callers_are_confined_by_kind_scope_and_workspace() {
        let o = org();
        assert!(o.is_org() && o.require_org().is_ok() && o.require_scope("providers.write").is_ok());
        assert!(o.require_workspace("ws-a").is_ok());
        let w = ws_key("ws-a", &["providers.read"]);
        assert_eq!(w.workspace_id(), Some("ws-a"));
        assert_eq!(w.require_org().unwrap_err().code, AdminCode::Forbidden);
        assert!(w.require_scope("providers.read").is_ok());
        let e = w.require_scope("providers.write").unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (AdminCode::Forbidden, "this API key lacks the 'providers.write' scope")
        );
        assert!(w.require_workspace("ws-a").is_ok());
        assert_eq!(w.require_workspace("ws-b").unwrap_err().code, AdminCode::Forbidden);
        assert!(Caller::of_key(&key("ak-x", None, &[])).is_org());
        // A workspace key without a workspace acts on none.
        let mut broken = key("ak-y", Some("ws-a"), &[]);
        broken.workspace_id = None;
        assert!(Caller::of_key(&broken).require_workspace("ws-a").is_err());
    }

    #[test]
    fn requested_limits_keep_their_error_for_later() {
        #[derive(Deserialize)]
        struct Body {
            #[serde(default)]
            usage_limits: UsageRequest,
            #[serde(default)]
            rate_limits: RateRequest,
            #[serde(default)]
            expires_at: TimeRequest,
        }
        let b: Body = serde_json::from_value(json!({})).unwrap();
        assert_eq!(b.usage_limits, Requested::Absent);
        assert_eq!(b.rate_limits.get().unwrap(), None);
        assert!(!b.expires_at.is_present());
        let b: Body = serde_json::from_value(json!({
            "usage_limits": null,
            "rate_limits": [{"type": "requests", "unit": "rpm", "value": 5}],
            "expires_at": "2030-01-01T00:00:00Z",
        }))
        .unwrap();
        assert_eq!(b.usage_limits, Requested::Absent);
        assert_eq!(b.rate_limits.get().unwrap().map(|r| r.value), Some(5));
        assert!(b.expires_at.get("expires_at").unwrap().is_some());
        let b: Body = serde_json::from_value(json!({
            "usage_limits": {"credit_limit": 0.5},
            "rate_limits": "rpm",
            "expires_at": 5,
        }))
        .unwrap();
        let e = b.usage_limits.get().unwrap_err();
        assert_eq!(e.code, AdminCode::Validation);
        assert!(e.message.contains("credit_limit"), "{}", e.message);
        assert_eq!(
            b.rate_limits.get().unwrap_err().message,
            "a limit must be an object or a one-element array"
        );
        assert_eq!(
            b.expires_at.get("expires_at").unwrap_err().message,
            "expires_at must be a string time"
        );
        let b: Body = serde_json::from_value(json!({"expires_at": "tomorrow"})).unwrap();
        assert_eq!(
            b.expires_at.get("expires_at").unwrap_err().message,
            "expires_at must be an ISO 8601 / RFC 3339 time"
        );
    }

    async fn app_state(dir: &std::path::Path) -> crate::state::SharedState {
        super::testing::app_state_on(dir, None).await
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_change_writes_its_records_and_audit_entry_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state = app_state(dir.path()).await;
        let control = Control::new(&state);
        let before = state.snapshot().version;
        let caller = org();
        let body: integrations::CreateIntegration = serde_json::from_value(json!({
            "name": "OpenAI", "ai_provider_id": "openai", "key": "sk-live-0123456789abcdef",
            "workspace_id": "default",
        }))
        .unwrap();
        let created = control.create_integration(&caller, body).await.unwrap();
        // The new snapshot is in place: the integration and its provider.
        let snap = state.snapshot();
        assert_eq!(snap.version, before + 1);
        let ws = workspace_named(&snap, "default").unwrap().id.clone();
        assert!(snap.route(&ws, &created.slug).is_some());
        let filter = tollgate_store::control::AuditFilter {
            object_type: Some("integration".into()),
            limit: 100,
            ..Default::default()
        };
        let (n, entries) = state.store.audit_logs(&filter).await.unwrap();
        assert_eq!(n, 1);
        let e = &entries[0];
        assert_eq!(
            (e.actor.as_deref(), e.action.as_str(), e.object_id.as_str(), e.at),
            (Some("ak-org"), "create", created.slug.as_str(), now())
        );
        assert!(!e.details.to_string().contains("sk-live"), "{}", e.details);
        // A refused change writes nothing, not even its audit entry.
        let again: integrations::CreateIntegration = serde_json::from_value(json!({
            "name": "OpenAI", "ai_provider_id": "openai", "key": "sk-x", "slug": created.slug,
        }))
        .unwrap();
        let err = control.create_integration(&caller, again).await.unwrap_err();
        assert_eq!(err.code, AdminCode::Conflict);
        assert_eq!(state.snapshot().version, before + 1);
        assert_eq!(state.store.audit_logs(&filter).await.unwrap().0, 1);
        // Revoking a key takes it out of the snapshot at once.
        let key = control
            .create_api_key(
                &caller,
                "workspace",
                "service",
                api_keys::CreateKey {
                    workspace_id: Some("default".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(state.snapshot().key_by_id(key.id.as_str()).is_some());
        control.revoke_api_key(&caller, key.id.as_str()).await.unwrap();
        assert!(state.snapshot().key_by_id(key.id.as_str()).is_none());
        let revoked = tollgate_store::control::AuditFilter {
            object_id: Some(key.id.to_string()),
            limit: 100,
            ..Default::default()
        };
        let (_, entries) = state.store.audit_logs(&revoked).await.unwrap();
        let mut actions: Vec<_> = entries.iter().map(|e| e.action.as_str()).collect();
        actions.sort();
        assert_eq!(actions, ["create", "revoke"]);
    }
}
