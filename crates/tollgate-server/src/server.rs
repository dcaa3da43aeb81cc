//! Start-up and shutdown.
//!
//! [`start`] prepares everything `tollgate serve` needs (data directory,
//! master key, database and migrations, the first-run bootstrap, background
//! tasks, counters rebuilt from the request log) and binds the listener;
//! [`Running::wait`] serves until a shutdown signal, then drains: in-flight
//! requests finish, the request log is flushed, background tasks stop.

use crate::alerts::{AlertConfig, Dispatcher};
use crate::config::Config;
use crate::error::{AdminError, GatewayError};
use crate::state::{meta, AppState, Parts, SharedState};
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tollgate_core::clock::SharedClock;
use tollgate_core::ids;
use tollgate_core::records::{KeySubType, KeyType, Limits, Workspace};
use tollgate_providers::Adapters;
use tollgate_store::counters::MemoryCounters;
use tollgate_store::outbox::Outbox;
use tollgate_store::secrets::{KeySource, MasterKey};
use tollgate_store::usage::UsageLog;
use tollgate_store::Store;

/// How often the server checks whether the control plane changed outside
/// it (the CLI, another replica).
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// How often histogram samples are folded into buckets.
pub const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {0}: {1}")]
    DataDir(String, std::io::Error),
    #[error("master key: {0}")]
    MasterKey(#[from] tollgate_store::secrets::SecretError),
    #[error("the master key does not match this data directory (fingerprint {found}, expected {expected}); start with the key this data was sealed with")]
    WrongMasterKey { found: String, expected: String },
    #[error("database: {0}")]
    Db(#[from] tollgate_store::DbError),
    #[error("store: {0}")]
    Store(#[from] tollgate_store::StoreError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("provider client: {0}")]
    Providers(#[from] tollgate_providers::ProviderError),
    #[error("alerts: {0}")]
    Alerts(#[from] crate::alerts::AlertError),
    #[error("alert outbox: {0}")]
    Outbox(#[from] tollgate_store::outbox::OutboxError),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
}

/// Creates the data directory (mode 0700) if it does not exist.
pub fn ensure_data_dir(dir: &Path) -> Result<(), StartError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| StartError::DataDir(dir.display().to_string(), e))
}

/// Opens the store of a data directory with its master key, checking that
/// the key is the one the data was sealed with.
pub async fn open_store(config: &Config) -> Result<(Store, MasterKey, KeySource), StartError> {
    ensure_data_dir(&config.data_dir)?;
    let (master, source) = MasterKey::load_or_create(&config.data_dir, config.master_key.as_deref())?;
    let pool = tollgate_store::db::open_sqlite(&config.data_dir.join(tollgate_store::db::SQLITE_FILE)).await?;
    let store = Store::new(pool);
    match store.meta_get(meta::MASTER_KEY_FINGERPRINT).await? {
        Some(expected) if expected != master.fingerprint() => {
            return Err(StartError::WrongMasterKey {
                found: master.fingerprint(),
                expected,
            })
        }
        Some(_) => {}
        None => {
            store
                .meta_set(meta::MASTER_KEY_FINGERPRINT, &master.fingerprint())
                .await?
        }
    }
    Ok((store, master, source))
}

/// First run: the organisation, the `default` workspace and the first
/// organisation admin key. Returns that key (to print once), or `None` if
/// the data directory was already set up.
pub async fn bootstrap(store: &Store, now: chrono::DateTime<chrono::Utc>) -> Result<Option<String>, StartError> {
    if store.meta_get(meta::ORG_ID).await?.is_some() {
        return Ok(None);
    }
    let org_id = ids::prefixed_id("org");
    let ws = Workspace {
        id: ids::workspace_id("default"),
        slug: "default".into(),
        name: "default".into(),
        description: Some("Created on first start".into()),
        defaults: serde_json::Value::Null,
        limits: Limits::default(),
        log_bodies: false,
        created_at: now,
        last_updated_at: now,
        default_config: None,
    };
    let (key, secret) = crate::admin::api_keys::new_key(
        KeyType::Organisation,
        KeySubType::Service,
        "Admin key".into(),
        None,
        vec![],
        now,
    );
    let mut tx = store.begin().await?;
    tx.meta_set(meta::ORG_ID, &org_id).await?;
    tx.put_workspace(&ws).await?;
    tx.put_api_key(&key).await?;
    let audit = tollgate_store::control::AuditEntry {
        id: ids::prefixed_id("aud"),
        at: now,
        actor: None,
        action: "bootstrap".into(),
        object_type: "organisation".into(),
        object_id: org_id,
        details: json!({"workspace_id": ws.id, "admin_key_id": key.id}),
    };
    tx.audit(&audit).await?;
    let version = crate::state::control_version(store).await? + 1;
    tx.meta_set(meta::CONTROL_VERSION, &version.to_string()).await?;
    tx.commit().await?;
    Ok(Some(secret))
}

/// A started server.
pub struct Running {
    pub addr: SocketAddr,
    pub state: SharedState,
    /// The first-run admin key, if this start created it.
    pub first_admin_key: Option<String>,
    shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    background: Vec<JoinHandle<()>>,
    usage_writer: JoinHandle<()>,
}

impl Running {
    /// A token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until shut down, then drains.
    pub async fn wait(self) -> std::io::Result<()> {
        let result = self.server.await.unwrap_or_else(|e| Err(std::io::Error::other(e)));
        self.shutdown.cancel();
        // Every request has finished: flush the request log.
        self.state.usage.flush().await;
        for t in self.background {
            let _ = t.await;
        }
        let Running {
            state, usage_writer, ..
        } = self;
        drop(state);
        let _ = tokio::time::timeout(Duration::from_secs(10), usage_writer).await;
        result
    }

    /// Stops and drains.
    pub async fn stop(self) -> std::io::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

/// Prepares and starts the server.
pub async fn start(config: Config, clock: SharedClock) -> Result<Running, StartError> {
    let (store, master, _source) = open_store(&config).await?;
    let first_admin_key = bootstrap(&store, clock.now()).await?;
    let (usage, usage_writer) = UsageLog::spawn(store.pool().clone());
    let outbox = Outbox::new(store.pool().clone());
    outbox.init().await?;
    let alert_config = AlertConfig {
        smtp_url: config.smtp_url.clone(),
        alert_from: config.alert_from.clone(),
        alert_emails: config.alert_emails.clone(),
        webhook_url: config.alert_webhook_url.clone(),
        webhook_secret: config.alert_webhook_secret.clone(),
    };
    let shutdown = CancellationToken::new();
    let dispatcher = Dispatcher::new(outbox, &alert_config, clock.clone())?;
    let (alerts, dispatcher_task) = dispatcher.spawn(shutdown.clone());

    let parts = Parts {
        config: config.clone(),
        store,
        clock,
        adapters: Adapters::new()?,
        usage,
        counters: Arc::new(MemoryCounters::new()),
        alerts,
    };
    let state = AppState::new(parts, master).await?;
    let restored = crate::limits::restore_from_log(&state).await?;
    tracing::debug!(limits = restored, "counters rebuilt from the request log");
    let refresher = tokio::spawn(refresh_loop(state.clone(), shutdown.clone()));
    let metrics_upkeep = tokio::spawn(metrics_upkeep(shutdown.clone()));
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartError::Listen(config.listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Listen(config.listen, e))?;
    let app = router(state.clone());
    let token = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(
            listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            }),
            app.into_make_service(),
        )
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await
    });
    Ok(Running {
        addr,
        state,
        first_admin_key,
        shutdown,
        server,
        background: vec![dispatcher_task, refresher, metrics_upkeep],
        usage_writer,
    })
}

/// Drains the Prometheus histograms' pending samples into their buckets.
/// The exporter keeps every sample until this runs, so without it memory
/// grows with every request.
async fn metrics_upkeep(shutdown: CancellationToken) {
    let Some(handle) = crate::metrics::install() else {
        return;
    };
    let mut tick = tokio::time::interval(METRICS_UPKEEP_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}

async fn refresh_loop(state: SharedState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = state.refresh_if_changed().await {
                    tracing::error!(error = %e, "reloading the control plane failed");
                }
            }
        }
    }
}

/// The whole HTTP surface.
pub fn router(state: SharedState) -> Router {
    let metrics = crate::metrics::install();
    Router::new()
        .merge(crate::admin::router())
        .merge(crate::gateway::router())
        .merge(crate::analytics::router())
        .route("/health", get(health))
        .route(
            "/metrics",
            get(move || {
                let body = metrics.as_ref().map(|h| h.render()).unwrap_or_default();
                async move { ([("content-type", "text/plain; version=0.0.4")], body) }
            }),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .with_state(state)
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn not_found(uri: Uri) -> Response {
    let path = uri.path();
    let msg = format!("no route for {path}");
    if path.starts_with("/v1/chat") || path.starts_with("/v1/completions") || path.starts_with("/v1/embeddings") {
        GatewayError::NotFound(msg).into_response()
    } else {
        let mut r = AdminError::not_found(msg).into_response();
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
