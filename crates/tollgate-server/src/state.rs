//! The application state shared by every handler, and the control-plane
//! write path: every admin change runs under one write lock, lands in one
//! store transaction with its audit entry and a bumped control version, and
//! then swaps in a fresh snapshot so that the very next request sees it.

use crate::alerts::AlertHandle;
use crate::config::Config;
use crate::error::AdminError;
use crate::snapshot::Snapshot;
use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use std::sync::Arc;
use tollgate_core::catalogue::PriceTable;
use tollgate_core::clock::SharedClock;
use tollgate_providers::Adapters;
use tollgate_store::control::AuditEntry;
use tollgate_store::counters::Counters;
use tollgate_store::request_log::LogWriter;
use tollgate_store::secrets::MasterKey;
use tollgate_store::{Store, StoreError, Tx};

/// Meta keys in the store.
pub mod meta {
    pub const ORG_ID: &str = "org_id";
    pub const CONTROL_VERSION: &str = tollgate_store::control::CONTROL_VERSION;
    pub const MASTER_KEY_FINGERPRINT: &str = "master_key_fingerprint";
    pub const PRICE_TABLE: &str = "price_table";
}

pub struct AppState {
    pub config: Config,
    pub store: Store,
    pub clock: SharedClock,
    pub adapters: Arc<Adapters>,
    pub usage: LogWriter,
    pub counters: Arc<dyn Counters>,
    pub alerts: AlertHandle,
    /// Natively relayed Responses API ids → where they are stored.
    pub response_ids: Arc<crate::gateway::dialect::ResponseIds>,
    /// Circuit breakers of routing targets.
    pub breakers: Arc<dyn crate::gateway::routing::BreakerStore>,
    snapshot: ArcSwap<Snapshot>,
    master: Mutex<Arc<MasterKey>>,
    write_lock: tokio::sync::Mutex<()>,
}

pub type SharedState = Arc<AppState>;

/// What [`AppState::new`] is built from.
pub struct Parts {
    pub config: Config,
    pub store: Store,
    pub clock: SharedClock,
    pub adapters: Arc<Adapters>,
    pub usage: LogWriter,
    pub counters: Arc<dyn Counters>,
    pub alerts: AlertHandle,
    /// Circuit-breaker state: [`crate::gateway::routing::LocalBreakers`]
    /// (per process), or `RedisBreakers` with `redis_url`.
    pub breakers: Arc<dyn crate::gateway::routing::BreakerStore>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("stored price table is invalid: {0}")]
    Prices(String),
    #[error("master key: {0}")]
    MasterKey(String),
}

impl AppState {
    pub async fn new(parts: Parts, master: MasterKey) -> Result<Arc<AppState>, StateError> {
        let Parts {
            config,
            store,
            clock,
            adapters,
            usage,
            counters,
            alerts,
            breakers,
        } = parts;
        let master = Arc::new(master);
        let snap = load_snapshot(&store, &master).await?;
        Ok(Arc::new(AppState {
            config,
            store,
            clock,
            adapters,
            usage,
            counters,
            alerts,
            response_ids: Arc::default(),
            breakers,
            snapshot: ArcSwap::from_pointee(snap),
            master: Mutex::new(master),
            write_lock: tokio::sync::Mutex::new(()),
        }))
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn master_key(&self) -> Arc<MasterKey> {
        self.master.lock().clone()
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Starts a control-plane change: takes the write lock (so that two
    /// changes never interleave their read-modify-write) and opens a
    /// transaction. Finish with [`Change::commit`].
    pub async fn change(&self) -> Result<Change<'_>, AdminError> {
        let guard = self.write_lock.lock().await;
        let tx = self.store.begin().await?;
        Ok(Change {
            state: self,
            tx,
            _guard: guard,
        })
    }

    /// Rebuilds the snapshot from the store if its control version moved
    /// (a change by the CLI or by another replica), re-reading the master key
    /// file if it was rotated.
    pub async fn refresh_if_changed(&self) -> Result<bool, StateError> {
        let version = control_version(&self.store).await?;
        if version == self.snapshot().version {
            return Ok(false);
        }
        let _guard = self.write_lock.lock().await;
        self.reload().await?;
        Ok(true)
    }

    async fn reload(&self) -> Result<(), StateError> {
        let stored_fp = self.store.meta_get(meta::MASTER_KEY_FINGERPRINT).await?;
        let mut master = self.master_key();
        if let Some(fp) = stored_fp.filter(|fp| *fp != master.fingerprint()) {
            // The key was rotated by `tollgate rotate-master-key`: pick up the
            // new key file. With TOLLGATE_MASTER_KEY the process must be
            // restarted with the new value.
            let path = self.config.data_dir.join(tollgate_store::secrets::MASTER_KEY_FILE);
            let fresh = MasterKey::read_file(&path).map_err(|e| StateError::MasterKey(e.to_string()))?;
            if fresh.fingerprint() != fp {
                return Err(StateError::MasterKey(
                    "the master key was rotated; restart with the new TOLLGATE_MASTER_KEY".into(),
                ));
            }
            master = Arc::new(fresh);
            *self.master.lock() = master.clone();
        }
        let snap = load_snapshot(&self.store, &master).await?;
        self.snapshot.store(Arc::new(snap));
        Ok(())
    }

    /// Builds an audit entry for a change made by `actor`.
    pub fn audit_entry(
        &self,
        actor: Option<&str>,
        action: &str,
        object_type: &str,
        object_id: &str,
        details: serde_json::Value,
    ) -> AuditEntry {
        AuditEntry {
            id: tollgate_core::ids::prefixed_id("aud"),
            at: self.now(),
            actor: actor.map(str::to_owned),
            action: action.to_owned(),
            object_type: object_type.to_owned(),
            object_id: object_id.to_owned(),
            details,
        }
    }
}

/// A control-plane change in progress (holds the write lock).
pub struct Change<'a> {
    state: &'a AppState,
    pub tx: Tx,
    _guard: tokio::sync::MutexGuard<'a, ()>,
}

impl Change<'_> {
    /// Records the audit entry, bumps the control version, commits, and swaps
    /// in the new snapshot.
    pub async fn commit(mut self, audit: AuditEntry) -> Result<(), AdminError> {
        self.tx.audit(&audit).await?;
        self.tx.bump_control_version().await?;
        self.tx.commit().await?;
        // The change is committed; a reload that fails here is caught up by
        // the refresh task.
        self.state.reload().await.map_err(|e| match e {
            StateError::Store(e) => AdminError::from(e),
            e => AdminError::internal(e),
        })
    }
}

/// The stored control version (0 before the first change).
pub async fn control_version(store: &Store) -> Result<i64, StoreError> {
    store.control_version().await
}

/// The price table in force: the imported one, else the shipped one.
pub async fn load_prices(store: &Store) -> Result<Arc<PriceTable>, StateError> {
    match store.meta_get(meta::PRICE_TABLE).await? {
        Some(text) => PriceTable::from_json(&text).map(Arc::new).map_err(StateError::Prices),
        None => Ok(Arc::new(PriceTable::shipped().clone())),
    }
}

async fn load_snapshot(store: &Store, master: &Arc<MasterKey>) -> Result<Snapshot, StateError> {
    let version = control_version(store).await?;
    let org_id = store.meta_get(meta::ORG_ID).await?.unwrap_or_default();
    let prices = load_prices(store).await?;
    let data = store.load_all().await?;
    Ok(Snapshot::build(data, version, org_id, prices, master)?)
}
