//! Start-up guards and readiness probes: the first-start verifier write
//! ([`Store::meta_init`]), the replica lock ([`Store::lock_replica`])
//! and the cheap liveness queries behind `GET /health/ready` ([`Store::ping`],
//! [`ping_redis`]).

use crate::counters::redis_conn::RedisClient;
use crate::db::{on_db, Db};
use crate::{Store, StoreError};
use sqlx::{Connection, PgConnection};
use std::time::Duration;

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

/// Held while this process serves. On PostgreSQL it is a session-level
/// advisory lock on a connection of its own: dropping it (or the process
/// ending, however it ends) closes the connection and the server releases
/// the lock.
#[derive(Debug)]
pub struct ReplicaLock {
    _conn: Option<PgConnection>,
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
            Db::Sqlite(_) => return Ok(Some(ReplicaLock { _conn: None })),
            Db::Postgres(pool) => pool,
        };
        let sql = match mode {
            ReplicaMode::Sole => "SELECT pg_try_advisory_lock($1)",
            ReplicaMode::Shared => "SELECT pg_try_advisory_lock_shared($1)",
        };
        // A connection of its own, never returned to the pool: the lock
        // lives exactly as long as it.
        let mut conn = pool.acquire().await?.detach();
        let got: bool = sqlx::query_scalar(sql).bind(REPLICA_LOCK).fetch_one(&mut conn).await?;
        if got {
            Ok(Some(ReplicaLock { _conn: Some(conn) }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
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
