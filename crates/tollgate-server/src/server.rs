//! Start-up and shutdown.
//!
//! [`start`] prepares everything `tollgate serve` needs (data directory,
//! master key, database and migrations, the first-run bootstrap, background
//! tasks, counters rebuilt from the request log) and binds the listener;
//! [`Running::wait`] serves until a shutdown signal, then drains: in-flight
//! requests finish, the request log is flushed, background tasks stop.
//!
//! Connections are accepted here rather than by `axum::serve`, so that they
//! are bounded: at most `max_connections` at once (more wait in the listen
//! backlog), a request's headers must arrive within `header_read_timeout_ms`
//! (hyper's timer, which also runs while an HTTP/1 connection waits for its
//! next request), and a connection with no request in flight is closed
//! after `idle_timeout_ms` without traffic.

use crate::alerts::{AlertConfig, Dispatcher};
use crate::auth::Caller;
use crate::config::Config;
use crate::error::{AdminError, GatewayError};
use crate::gateway::routing::{BreakerStore, LocalBreakers};
use crate::state::{meta, AppState, Parts, SharedState};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tollgate_core::clock::SharedClock;
use tollgate_core::ids;
use tollgate_core::records::{KeySubType, KeyType, Limits, Workspace};
use tollgate_providers::Adapters;
use tollgate_store::counters::{CounterError, Counters, MemoryCounters, RedisCounters, RedisSettings};
use tollgate_store::guards::{ReplicaLock, ReplicaMode};
use tollgate_store::secrets::{KeySource, MasterKey};
use tollgate_store::Store;
use tower::ServiceExt;

/// How often the server checks whether the control plane changed outside
/// it (the CLI, another replica). On PostgreSQL a notification normally
/// brings the change within milliseconds (see [`refresh_loop`]); this poll is
/// the backstop for a notification missed, and on SQLite the only path.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// How often histogram samples are folded into buckets.
pub const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {0}: {1}")]
    DataDir(String, std::io::Error),
    #[error("master key: {0}")]
    MasterKey(#[from] tollgate_store::secrets::SecretError),
    #[error("the master key does not match this database (fingerprint {found}, expected {expected}): start with the key this data was sealed with; every replica on one database must be given the same TOLLGATE_MASTER_KEY")]
    WrongMasterKey { found: String, expected: String },
    #[error("another `tollgate serve` is already running on this PostgreSQL database, and this one has no `redis_url`: each replica would keep its own limit counters, so every budget and rate limit would be multiplied. Set `redis_url` (TOLLGATE_REDIS_URL, --redis-url) on every replica to run several, or stop the other one first")]
    AnotherReplica,
    #[error("a `tollgate serve` without `redis_url` is running on this PostgreSQL database: its limit counters are its own, so budgets and rate limits cannot be shared with it. Restart it with the same `redis_url` (TOLLGATE_REDIS_URL) as this one, or stop it first")]
    ReplicaWithoutRedis,
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
    #[error("data directory {0} is in use by another `tollgate serve` (lock file {1}); stop it first, or pick another --data-dir")]
    Locked(String, String),
    #[error("cannot lock the data directory ({0}): {1}")]
    Lock(String, std::io::Error),
    #[error("limit counters: {0}")]
    Counters(#[from] CounterError),
}

/// How long past `request_timeout_ms` a reservation in Redis outlives a
/// replica that died holding it.
const LEASE_MARGIN: std::time::Duration = std::time::Duration::from_secs(300);

/// Limit counters and circuit-breaker state, in process or both in Redis.
pub type CountersAndBreakers = (Arc<dyn Counters>, Arc<dyn BreakerStore>);

/// The limit counters and circuit breakers the settings ask for: in Redis
/// (one connection) with `redis_url`, else in process.
pub fn counters(config: &Config) -> Result<CountersAndBreakers, CounterError> {
    let Some(url) = &config.redis_url else {
        return Ok((Arc::new(MemoryCounters::new()), Arc::new(LocalBreakers::default())));
    };
    let mut settings = RedisSettings::new(
        url.expose().clone(),
        std::time::Duration::from_millis(config.request_timeout_ms).saturating_add(LEASE_MARGIN),
    );
    settings.cluster = config.redis_cluster;
    settings.key_prefix = config.redis_key_prefix.clone();
    settings.on_error = config.limits_on_redis_error;
    tracing::info!(
        cluster = settings.cluster,
        prefix = %settings.key_prefix,
        on_error = settings.on_error.as_str(),
        "limit counters and circuit breakers in Redis"
    );
    let counters = RedisCounters::new(settings)?;
    let breakers = counters.breakers();
    Ok((Arc::new(counters), Arc::new(breakers)))
}

/// The lock file that keeps a second `serve` off a data directory.
pub const LOCK_FILE: &str = "serve.lock";

/// An exclusive advisory lock (`flock`) on the data directory's lock file,
/// held while the server runs. The kernel drops it when the process ends,
/// however it ends, so a `kill -9` never keeps the next start out.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

/// Takes the data directory's lock, or says who holds it.
pub fn lock_data_dir(dir: &Path) -> Result<DataDirLock, StartError> {
    use rustix::fs::{flock, FlockOperation};
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path: PathBuf = dir.join(LOCK_FILE);
    let shown = || path.display().to_string();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| StartError::Lock(shown(), e))?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            return Err(StartError::Locked(dir.display().to_string(), shown()));
        }
        Err(e) => return Err(StartError::Lock(shown(), e.into())),
    }
    // The holder's pid, for whoever wonders which process it is.
    let _ = file.set_len(0).and_then(|()| writeln!(file, "{}", std::process::id()));
    Ok(DataDirLock { _file: file })
}

/// Creates the data directory (mode 0700) if it does not exist.
pub fn ensure_data_dir(dir: &Path) -> Result<(), StartError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    if dir.exists() {
        let e = std::io::Error::new(std::io::ErrorKind::NotADirectory, "it exists but is not a directory");
        return Err(StartError::DataDir(dir.display().to_string(), e));
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
    let (master, source) = MasterKey::load_or_create(
        &config.data_dir,
        config.master_key.as_ref().map(|k| k.expose().as_str()),
    )?;
    let store = Store::open(&config.database).await?;
    // The fingerprint is written once, atomically: of two replicas started
    // together with different keys, exactly one wins and the other refuses.
    let expected = store
        .meta_init(meta::MASTER_KEY_FINGERPRINT, &master.fingerprint())
        .await?;
    if expected != master.fingerprint() {
        return Err(StartError::WrongMasterKey {
            found: master.fingerprint(),
            expected,
        });
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
    tx.bump_control_version().await?;
    tx.commit().await?;
    Ok(Some(secret))
}

/// A started server.
pub struct Running {
    pub addr: SocketAddr,
    /// Where `/metrics` is served without a key (`metrics_listen`).
    pub metrics_addr: Option<SocketAddr>,
    pub state: SharedState,
    /// The first-run admin key, if this start created it.
    pub first_admin_key: Option<String>,
    shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    background: Vec<JoinHandle<()>>,
    usage_writer: JoinHandle<()>,
    /// Released last, once everything is flushed.
    lock: DataDirLock,
    /// On PostgreSQL: who else may serve the database (see [`replica_lock`]).
    replica: Option<ReplicaLock>,
    /// Set when another process took the replica lock (see
    /// [`stop_if_replica_lock_lost`]): [`Running::wait`] then fails with it.
    replica_lost: Arc<Mutex<Option<String>>>,
}

/// How long a stop waits for background tasks (snapshot refresh, alert
/// dispatch, metrics upkeep) before aborting them.
const BACKGROUND_GRACE: Duration = Duration::from_secs(2);

impl Running {
    /// A token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until shut down, then drains.
    pub async fn wait(self) -> std::io::Result<()> {
        let replica_lost = self.replica_lost.clone();
        let result = self.server.await.unwrap_or_else(|e| Err(std::io::Error::other(e)));
        self.shutdown.cancel();
        // Every request has finished: flush the request log.
        self.state.usage.flush().await;
        // Background tasks stop at the token; one stuck in a call to an
        // unreachable database is given a short grace, then aborted (none of
        // them holds anything that must be written: the request log is
        // closed below).
        let deadline = tokio::time::Instant::now() + BACKGROUND_GRACE;
        for mut t in self.background {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
                tracing::warn!("a background task did not stop in time and was aborted");
            }
        }
        let Running {
            state,
            usage_writer,
            lock,
            replica,
            ..
        } = self;
        // Every request has finished: the writer writes what is left (or
        // spills it, while PostgreSQL is away) and stops, even if a
        // connection task has not yet dropped its handle.
        let _ = tokio::time::timeout(Duration::from_secs(15), state.usage.close()).await;
        drop(state);
        let _ = tokio::time::timeout(Duration::from_secs(10), usage_writer).await;
        if let Some(replica) = replica {
            replica.release().await;
        }
        drop(lock);
        if let Some(why) = replica_lost.lock().take() {
            return Err(std::io::Error::other(why));
        }
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
    ensure_data_dir(&config.data_dir)?;
    let lock = lock_data_dir(&config.data_dir)?;
    let (store, master, _source) = open_store(&config).await?;
    let replica = replica_lock(&config, &store).await?;
    // Before anything is created: a backend without a request log is
    // refused here, not after printing a first admin key.
    // On PostgreSQL this first writes what an earlier run spilled during an
    // outage, so that the counters rebuilt below include it.
    let buffer = tollgate_store::request_log::OutageBuffer {
        dir: config.data_dir.clone(),
        memory_records: config.log_buffer_records,
    };
    let (usage, usage_writer) = store.spawn_log_writer_buffered(&buffer).await?;
    let first_admin_key = bootstrap(&store, clock.now()).await?;
    let (counters, breakers) = counters(&config)?;
    let outbox = store.outbox();
    outbox.init().await?;
    let alert_config = AlertConfig {
        smtp_url: config.smtp_url.clone(),
        alert_from: crate::alerts::sender(&config),
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
        counters,
        alerts,
        breakers,
    };
    let state = AppState::new(parts, master).await?;
    let restored = crate::limit_check::restore_from_log(&state).await?;
    tracing::debug!(limits = restored, "counters rebuilt from the request log");
    let refresher = tokio::spawn(refresh_loop(state.clone(), REFRESH_EVERY, shutdown.clone()));
    let metrics_upkeep = tokio::spawn(metrics_upkeep(shutdown.clone()));
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartError::Listen(config.listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Listen(config.listen, e))?;
    let bounds = ConnBounds::of(&config);
    let mut background = vec![dispatcher_task, refresher, metrics_upkeep];
    let replica_lost = Arc::new(Mutex::new(None));
    if let Some(lost) = replica.as_ref().map(ReplicaLock::lost) {
        let (token, flag) = (shutdown.clone(), replica_lost.clone());
        background.push(tokio::spawn(stop_if_replica_lock_lost(lost, token, flag)));
    }
    let mut metrics_addr = None;
    if let Some(at) = config.metrics_listen {
        let l = TcpListener::bind(at).await.map_err(|e| StartError::Listen(at, e))?;
        metrics_addr = Some(l.local_addr().map_err(|e| StartError::Listen(at, e))?);
        let token = shutdown.clone();
        background.push(tokio::spawn(async move {
            let _ = serve_connections(l, metrics_router(), bounds, token).await;
        }));
    }
    let app = router(state.clone());
    let server = tokio::spawn(serve_connections(listener, app, bounds, shutdown.clone()));
    Ok(Running {
        addr,
        metrics_addr,
        state,
        first_admin_key,
        shutdown,
        server,
        background,
        usage_writer,
        lock,
        replica,
        replica_lost,
    })
}

/// Limit counters in process are per replica, so on PostgreSQL a `serve`
/// without `redis_url` must be the only one: it holds the database's replica
/// lock exclusively for its lifetime; replicas with `redis_url` hold it
/// shared, so any number of them run together, never beside one without.
/// The embedded database takes no lock (its data directory lock keeps a
/// second `serve` out).
pub async fn replica_lock(config: &Config, store: &Store) -> Result<Option<ReplicaLock>, StartError> {
    if !matches!(config.database, tollgate_store::Location::Postgres(_)) {
        return Ok(None);
    }
    let (mode, refused) = match config.redis_url {
        Some(_) => (ReplicaMode::Shared, StartError::ReplicaWithoutRedis),
        None => (ReplicaMode::Sole, StartError::AnotherReplica),
    };
    store.lock_replica(mode).await?.map(Some).ok_or(refused)
}

/// Stops the server when the replica lock is lost for good: its connection
/// to PostgreSQL was gone long enough for another `serve` to take it, so
/// the limits would now be counted twice. In-flight requests finish and the
/// request log is flushed, as on a signal; then [`Running::wait`] fails
/// with the reason and `serve` exits with status 1, so that a supervisor
/// sees it (and a restart is refused with the usual message while the
/// other replica runs). While the lock is merely gone (PostgreSQL away),
/// the server keeps serving; the lock is taken again when it answers.
async fn stop_if_replica_lock_lost(
    lost: impl std::future::Future<Output = String>,
    shutdown: CancellationToken,
    flag: Arc<Mutex<Option<String>>>,
) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        why = lost => {
            tracing::error!(reason = %why, "stopping: the replica lock is lost");
            *flag.lock() = Some(why);
            shutdown.cancel();
        }
    }
}

/// The bounds every connection is held to.
#[derive(Debug, Clone, Copy)]
pub struct ConnBounds {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl ConnBounds {
    pub fn of(config: &Config) -> ConnBounds {
        ConnBounds {
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
            max_connections: config.max_connections,
        }
    }
}

/// Accepts connections until `shutdown`, at most `max_connections` at a
/// time, then lets the open ones finish their requests.
pub async fn serve_connections(
    listener: TcpListener,
    app: Router,
    bounds: ConnBounds,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(bounds.max_connections));
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => p.map_err(std::io::Error::other)?,
        };
        let tcp = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of descriptors or a connection reset before it was
                    // accepted: nothing to do but wait a little and go on.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        connections.spawn(serve_connection(tcp, app.clone(), bounds, shutdown.clone(), permit));
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// When a connection last had traffic, and how many of its requests are in
/// flight.
struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    /// How long the connection has been idle (zero while a request runs).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        self.last.lock().elapsed()
    }
}

/// Counts a request as in flight until its response body is finished or
/// dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(a: &Arc<Activity>) -> InFlight {
        a.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.last.lock() = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight.
struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.inner)
    }
}

async fn serve_connection(
    tcp: TcpStream,
    app: Router,
    bounds: ConnBounds,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let _ = tcp.set_nodelay(true);
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        last: Mutex::new(Instant::now()),
    });
    let seen = activity.clone();
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let in_flight = InFlight::start(&seen);
        let call = app.clone().oneshot(req);
        async move {
            let resp = call.await?;
            Ok::<_, std::convert::Infallible>(resp.map(|inner| Tracked {
                inner,
                _in_flight: in_flight,
            }))
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let idle = activity.idle_for();
        let check_at = Instant::now() + bounds.idle_timeout.saturating_sub(idle).max(Duration::from_millis(10));
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(check_at), if !closing => {
                if activity.idle_for() >= bounds.idle_timeout {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
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

/// Keeps the snapshot in step with changes made outside this process: at
/// once when the store signals a change (PostgreSQL's `NOTIFY`, see
/// `tollgate_store::notify`), and every `poll` in any case
/// ([`REFRESH_EVERY`] when serving). Either way it reloads only if the stored
/// control version moved. While the database is unreachable the gateway
/// serves from the snapshot it has; that is logged once when the outage
/// begins and once when it ends, and the first poll after it catches up.
pub(crate) async fn refresh_loop(state: SharedState, poll: Duration, shutdown: CancellationToken) {
    let mut changes = state.store.watch_control();
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut outage = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            event = changes.next() => tracing::debug!(?event, "control plane changed elsewhere"),
            _ = tick.tick() => {}
        }
        match state.refresh_if_changed().await {
            Ok(_) if outage => {
                outage = false;
                tracing::warn!("the database is reachable again: the control plane is in step");
            }
            Ok(_) => {}
            Err(crate::state::StateError::Store(e)) if e.is_unavailable() => {
                if !outage {
                    outage = true;
                    tracing::warn!(error = %e, "the database is unreachable: serving from the last snapshot until it returns");
                }
            }
            Err(e) => tracing::error!(error = %e, "reloading the control plane failed"),
        }
    }
}

/// The whole HTTP surface.
pub fn router(state: SharedState) -> Router {
    // The dashboard calls the admin and analytics API in process.
    let api = Router::new()
        .merge(crate::admin::router())
        .merge(crate::analytics_api::router())
        .with_state(state.clone());
    let dashboard = crate::dashboard::router(state.clone(), api);
    Router::new()
        .merge(crate::admin::router())
        .merge(crate::gateway::router())
        .merge(crate::analytics_api::router())
        .route("/health", get(health))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics_with_key))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(state)
        .merge(dashboard)
}

/// The `metrics_listen` surface: `/metrics` without a key.
pub fn metrics_router() -> Router {
    Router::new()
        .route("/metrics", get(|| async { metrics_text() }))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(json_errors))
}

fn metrics_text() -> Response {
    let body = crate::metrics::install().map(|h| h.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// `/metrics` on the main listener: organisation admin keys only (the
/// series name workspaces, providers and models).
async fn metrics_with_key(caller: Caller) -> Response {
    match caller.require_org() {
        Ok(()) => metrics_text(),
        Err(e) => e.into_response(),
    }
}

/// Is `path` served by the gateway (OpenAI-shaped errors) rather than the
/// admin API?
fn is_gateway_path(path: &str) -> bool {
    let is_admin = ADMIN_PREFIXES
        .iter()
        .any(|p| path == *p || path.strip_prefix(p).is_some_and(|r| r.starts_with('/')));
    path.starts_with("/v1/") && !is_admin
}

/// The longest framework message quoted in an error body.
const MAX_REJECTION_TEXT: usize = 1024;

/// Every error answer is JSON in the API's shape: the rejections axum and
/// its extractors produce as plain text (405, 413, 415, 400, 422...) are
/// rewritten, keeping their status and headers such as `Allow`.
async fn json_errors(req: Request, next: Next) -> Response {
    let gateway = is_gateway_path(req.uri().path());
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, MAX_REJECTION_TEXT * 4)
        .await
        .unwrap_or_default();
    let mut message = String::from_utf8_lossy(&text).trim().to_owned();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        message = "request body is too large (see max_body_bytes)".to_owned();
    } else if status == StatusCode::METHOD_NOT_ALLOWED {
        message = format!("method not allowed; allowed: {}", allowed(&parts.headers));
    } else if message.is_empty() {
        message = status.canonical_reason().unwrap_or("error").to_owned();
    }
    if message.len() > MAX_REJECTION_TEXT {
        let mut cut = MAX_REJECTION_TEXT;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    let body = if gateway {
        let kind = if status == StatusCode::NOT_FOUND {
            "not_found_error"
        } else if status.is_server_error() {
            "internal_error"
        } else {
            "invalid_request_error"
        };
        json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
    } else {
        let code = if status == StatusCode::NOT_FOUND {
            crate::error::AdminCode::NotFound
        } else if status.is_server_error() {
            crate::error::AdminCode::Internal
        } else {
            crate::error::AdminCode::Validation
        };
        json!({"success": false, "data": {"message": message, "errorCode": code.wire().1}})
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(body.to_string()))
}

fn allowed(headers: &axum::http::HeaderMap) -> String {
    headers
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// How long `/health/ready` waits for each dependency.
pub const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// Readiness: the database answers `SELECT 1` and, with `redis_url`, Redis
/// answers `PING`, each within [`READY_TIMEOUT`]. 200, or 503 naming what
/// is down. No key needed, like `/health`.
async fn ready(axum::extract::State(state): axum::extract::State<SharedState>) -> Response {
    let database = async {
        match tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} ms", READY_TIMEOUT.as_millis())),
        }
    };
    let redis = async {
        match &state.config.redis_url {
            Some(url) => {
                Some(tollgate_store::guards::ping_redis(url.expose(), state.config.redis_cluster, READY_TIMEOUT).await)
            }
            None => None,
        }
    };
    let (database, redis) = tokio::join!(database, redis);
    let mut checks = serde_json::Map::new();
    let mut down = Vec::new();
    for (name, result) in [("database", Some(database)), ("redis", redis)] {
        match result {
            None => {}
            Some(Ok(())) => {
                checks.insert(name.into(), json!({"status": "up"}));
            }
            Some(Err(error)) => {
                checks.insert(name.into(), json!({"status": "down", "error": error}));
                down.push(name);
            }
        }
    }
    if down.is_empty() {
        (StatusCode::OK, Json(json!({"status": "ready", "checks": checks}))).into_response()
    } else {
        let body = json!({"status": "unavailable", "down": down, "checks": checks});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// Path prefixes under `/v1` that belong to the admin API: unknown routes
/// there answer in its shape.
const ADMIN_PREFIXES: &[&str] = &[
    "/v1/admin",
    "/v1/ai-providers",
    "/v1/analytics",
    "/v1/api-keys",
    "/v1/audit-logs",
    "/v1/configs",
    "/v1/integrations",
    "/v1/logs",
    "/v1/providers",
];

async fn not_found(method: Method, uri: Uri) -> Response {
    let path = uri.path();
    if is_gateway_path(path) {
        // OpenAI's shape, naming the endpoint: SDKs show the message.
        let path: String = path.chars().take(200).collect();
        return GatewayError::UnsupportedRoute(format!("Tollgate does not support the endpoint {method} {path}"))
            .into_response();
    }
    let mut r = AdminError::not_found(format!("no route for {path}")).into_response();
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
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
