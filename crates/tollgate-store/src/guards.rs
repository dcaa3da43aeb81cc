//! Start-up guards and readiness probes: the first-start verifier write
//! ([`Store::meta_init`]), the replica lock ([`Store::lock_replica`])
//! and the cheap liveness queries behind `GET /health/ready` ([`Store::ping`],
//! [`ping_redis`]).

use crate::counters::redis_conn::RedisClient;
use crate::db::{on_db, Db};
use crate::{Store, StoreError};
use sqlx::{Connection, PgConnection, PgPool};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// The advisory-lock key every `serve` holds on PostgreSQL ("tollgate" in
/// ASCII). Advisory locks are scoped to the database, so two deployments on
/// one server never see each other's.
const REPLICA_LOCK: i64 = 0x746f_6c6c_6761_7465;

/// How a replica holds the replica lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaMode {
    /// Alone (limit counters in process): no other replica may run.
    Sole,
    /// Beside others that share state (limit counters in Redis): any number
    /// of `Shared` holders, but never beside a `Sole` one.
    Shared,
}

/// How often the replica lock's connection is checked (and, once lost,
/// how often it is taken again while PostgreSQL does not answer).
pub const REPLICA_LOCK_CHECK_EVERY: Duration = Duration::from_secs(2);
/// How long the check may take before the connection counts as lost.
const REPLICA_LOCK_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Held while this process serves. On PostgreSQL it is a session-level
/// advisory lock on a connection of its own, kept by a task of its own:
/// releasing or dropping it (or the process ending, however it ends) closes
/// the connection and the server releases the lock.
///
/// A session lock dies with its connection (PostgreSQL restarted, the
/// connection was cut). The keeper checks the connection every
/// [`REPLICA_LOCK_CHECK_EVERY`]; when it is gone, it takes the lock again on
/// a new connection as soon as PostgreSQL answers (and ends this process's
/// own stale sessions that still hold it). If another process took the lock
/// meanwhile (a replica that started while this one's was gone), the lock is
/// lost for good: [`ReplicaLock::lost`] resolves, with the reason, and the
/// server stops.
pub struct ReplicaLock {
    /// Tells the keeper to close the connection and end.
    stop: Option<oneshot::Sender<()>>,
    keeper: Option<JoinHandle<()>>,
    /// Set (once) to why the lock is lost for good.
    lost: watch::Receiver<Option<String>>,
}

impl std::fmt::Debug for ReplicaLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaLock")
            .field("kept", &self.keeper.is_some())
            .field("lost", &*self.lost.borrow())
            .finish()
    }
}

impl ReplicaLock {
    /// A lock that needs no keeping (the embedded database).
    fn unkept() -> ReplicaLock {
        let (_, lost) = watch::channel(None);
        ReplicaLock {
            stop: None,
            keeper: None,
            lost,
        }
    }

    /// Resolves, with the reason, once another process took the lock while
    /// this one's connection was gone; never while the lock is held or
    /// being taken again, nor on the embedded database.
    pub fn lost(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut lost = self.lost.clone();
        async move {
            loop {
                if let Some(why) = lost.borrow_and_update().clone() {
                    return why;
                }
                if lost.changed().await.is_err() {
                    // The keeper ended without losing it (released).
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// Closes the lock's connection (PostgreSQL releases the lock at once)
    /// and waits for it, at most a second.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut keeper) = self.keeper.take() {
            if tokio::time::timeout(Duration::from_secs(1), &mut keeper).await.is_err() {
                keeper.abort();
            }
        }
    }
}

impl Drop for ReplicaLock {
    fn drop(&mut self) {
        // Dropping the keeper's task drops the connection, which closes it.
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
    }
}

/// How the keeper holds the lock: its connection and the mode it holds it in.
struct Keeper {
    pool: PgPool,
    mode: ReplicaMode,
    conn: Option<PgConnection>,
    /// The server process ids of this process's sessions that held the lock:
    /// one of them may outlive its connection on the server (a half-open
    /// TCP connection) and still hold it.
    ours: Vec<i32>,
    lost: watch::Sender<Option<String>>,
}

/// What taking the lock again found.
enum Retake {
    Held(PgConnection, i32),
    /// PostgreSQL does not answer (yet): try again later.
    Unreachable(String),
    /// Only this process's stale sessions hold it: they were ended; try again.
    Stale,
    /// Another process holds it.
    Taken(Vec<i32>),
}

impl Keeper {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut lost_since: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(REPLICA_LOCK_CHECK_EVERY) => {}
            }
            if lost_since.is_none() {
                if self.alive().await {
                    continue;
                }
                // The session (and so the lock) is gone, or cannot be told
                // from gone: drop it and take the lock again.
                self.conn = None;
                lost_since = Some(std::time::Instant::now());
                tracing::warn!(
                    "the replica lock's connection to PostgreSQL is lost, and the lock with it; taking it again as soon as PostgreSQL answers"
                );
            }
            match self.retake().await {
                Retake::Held(conn, pid) => {
                    self.conn = Some(conn);
                    self.ours.push(pid);
                    let after = lost_since.take().map(|t| t.elapsed().as_millis()).unwrap_or(0);
                    tracing::warn!(after_ms = after as u64, "the replica lock is held again");
                }
                Retake::Unreachable(e) => tracing::debug!(error = %e, "taking the replica lock again failed; retrying"),
                Retake::Stale => {}
                Retake::Taken(pids) => {
                    let why = format!(
                        "the replica lock was taken by another `tollgate serve` (PostgreSQL backend {pids:?}) while this one's connection to PostgreSQL was lost: {}",
                        match self.mode {
                            ReplicaMode::Sole => "a replica without `redis_url` must be the only one, and another now runs",
                            ReplicaMode::Shared => "a replica without `redis_url` now runs, whose limit counters cannot be shared",
                        }
                    );
                    tracing::error!("{why}; this replica stops serving");
                    let _ = self.lost.send(Some(why));
                    return;
                }
            }
        }
        if let Some(conn) = self.conn.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
        }
    }

    /// Whether the lock's session answers.
    async fn alive(&mut self) -> bool {
        let Some(conn) = self.conn.as_mut() else { return false };
        matches!(
            tokio::time::timeout(REPLICA_LOCK_CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(conn)).await,
            Ok(Ok(_))
        )
    }

    async fn retake(&mut self) -> Retake {
        let mut conn = match self.pool.acquire().await {
            Ok(c) => c.detach(),
            Err(e) => return Retake::Unreachable(e.to_string()),
        };
        match try_lock(&mut conn, self.mode).await {
            Ok(Some(pid)) => return Retake::Held(conn, pid),
            Ok(None) => {}
            Err(e) => return Retake::Unreachable(e.to_string()),
        }
        // Who holds it in a mode that excludes ours?
        let holders: Result<Vec<i32>, sqlx::Error> = sqlx::query_scalar(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1 \
             AND (mode = 'ExclusiveLock' OR $3)",
        )
        .bind(REPLICA_LOCK >> 32)
        .bind(REPLICA_LOCK & 0xffff_ffff)
        .bind(self.mode == ReplicaMode::Sole)
        .fetch_all(&mut conn)
        .await;
        let holders = match holders {
            Ok(h) => h,
            Err(e) => {
                let _ = conn.close().await;
                return Retake::Unreachable(e.to_string());
            }
        };
        if holders.iter().any(|p| !self.ours.contains(p)) {
            let _ = conn.close().await;
            return Retake::Taken(holders);
        }
        // Only sessions of ours that the server still keeps (or none: it
        // was released meanwhile): end them and try again.
        for pid in &holders {
            if let Err(e) = sqlx::query("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .execute(&mut conn)
                .await
            {
                tracing::warn!(error = %e, pid, "ending this process's stale PostgreSQL session that holds the replica lock failed");
            }
        }
        let _ = conn.close().await;
        Retake::Stale
    }
}

/// Tries to take the lock on `conn`: this session's process id if it did.
async fn try_lock(conn: &mut PgConnection, mode: ReplicaMode) -> Result<Option<i32>, sqlx::Error> {
    let sql = match mode {
        ReplicaMode::Sole => "SELECT pg_try_advisory_lock($1), pg_backend_pid()",
        ReplicaMode::Shared => "SELECT pg_try_advisory_lock_shared($1), pg_backend_pid()",
    };
    let (got, pid): (bool, i32) = sqlx::query_as(sql).bind(REPLICA_LOCK).fetch_one(conn).await?;
    Ok(got.then_some(pid))
}

impl Store {
    /// Sets the meta `key` to `value` unless it is already set, atomically
    /// (two replicas starting at once never both write), and returns the
    /// value now stored.
    pub async fn meta_init(&self, key: &str, value: &str) -> Result<String, StoreError> {
        on_db!(&self.db, |pool| {
            sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
                .bind(key)
                .bind(value)
                .execute(pool)
                .await?;
        });
        self.meta_get(key)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("meta key {key}")))
    }

    /// Whether the database answers `SELECT 1`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_db!(&self.db, |pool| {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    /// Takes the replica lock in `mode`: `Ok(None)` when other processes
    /// hold it in a mode that excludes this one. The embedded database needs
    /// none (its data directory lock keeps a second `serve` out), so there
    /// it always succeeds.
    pub async fn lock_replica(&self, mode: ReplicaMode) -> Result<Option<ReplicaLock>, StoreError> {
        let pool = match &self.db {
            Db::Sqlite(_) => return Ok(Some(ReplicaLock::unkept())),
            Db::Postgres(pool) => pool,
        };
        // A connection of its own, never returned to the pool: the lock
        // lives exactly as long as it.
        let mut conn = pool.acquire().await?.detach();
        let Some(pid) = try_lock(&mut conn, mode).await? else {
            let _ = conn.close().await;
            return Ok(None);
        };
        let (lost_tx, lost) = watch::channel(None);
        let (stop, stopped) = oneshot::channel();
        let keeper = Keeper {
            pool: pool.clone(),
            mode,
            conn: Some(conn),
            ours: vec![pid],
            lost: lost_tx,
        };
        Ok(Some(ReplicaLock {
            stop: Some(stop),
            keeper: Some(tokio::spawn(keeper.run(stopped))),
            lost,
        }))
    }
}

/// Whether Redis answers `PING` within `timeout`: the server at `url`, or
/// with `cluster` every master of the Redis Cluster whose seed nodes `url`
/// lists (comma separated). The error names what failed, never the URL (it
/// may carry a password).
pub async fn ping_redis(url: &str, cluster: bool, timeout: Duration) -> Result<(), String> {
    let client = RedisClient::open(url, cluster, timeout)?;
    let ping = async { client.connect(timeout).await?.ping().await };
    match tokio::time::timeout(timeout, ping).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("redis: {e}")),
        Err(_) => Err(format!("redis: no answer within {} ms", timeout.as_millis())),
    }
}
