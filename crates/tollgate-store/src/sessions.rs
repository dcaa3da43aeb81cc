//! Dashboard sign-in sessions, shared by every replica on the database.
//!
//! A row holds what a signed-in browser needs across requests: the SHA-256
//! of the session id (the id itself lives only in the browser's cookie), the
//! API key the session acts as, sealed by the caller under the master key,
//! its hash (so that revoking a key can end its sessions), the CSRF token and
//! when the session was last used. The SQL is what SQLite and PostgreSQL
//! share; time comes from the caller.

use crate::db::{on_db, Db};
use crate::{Store, StoreError};
use chrono::{DateTime, Utc};
use sqlx::Row;

/// One stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub id_hash: String,
    pub key_hash: String,
    /// The API key, sealed (`secrets::SealedSecret` text) by the caller.
    pub sealed_key: String,
    pub csrf: String,
    /// The key's workspace; `None` for an organisation key.
    pub workspace_id: Option<String>,
    pub key_name: String,
    pub last_seen: DateTime<Utc>,
}

/// The sessions table. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DashboardSessions {
    db: Db,
}

impl Store {
    /// Dashboard sessions.
    pub fn dashboard_sessions(&self) -> DashboardSessions {
        DashboardSessions { db: self.db.clone() }
    }
}

impl DashboardSessions {
    /// Stores a new session.
    pub async fn insert(&self, row: &SessionRow) -> Result<(), StoreError> {
        on_db!(&self.db, |pool| sqlx::query(
            "INSERT INTO dashboard_sessions \
             (id_hash, key_hash, sealed_key, csrf, workspace_id, key_name, last_seen_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)"
        )
        .bind(&row.id_hash)
        .bind(&row.key_hash)
        .bind(&row.sealed_key)
        .bind(&row.csrf)
        .bind(row.workspace_id.as_deref())
        .bind(&row.key_name)
        .bind(row.last_seen.timestamp_millis())
        .execute(pool)
        .await
        .map(drop))?;
        Ok(())
    }

    /// The session whose id hashes to `id_hash`, if any.
    pub async fn get(&self, id_hash: &str) -> Result<Option<SessionRow>, StoreError> {
        const SQL: &str = "SELECT id_hash, key_hash, sealed_key, csrf, workspace_id, key_name, last_seen_ms \
                           FROM dashboard_sessions WHERE id_hash = $1";
        let row = on_db!(&self.db, |pool| {
            match sqlx::query(SQL).bind(id_hash).fetch_optional(pool).await? {
                None => None,
                Some(r) => Some((
                    r.try_get::<String, _>(0)?,
                    r.try_get::<String, _>(1)?,
                    r.try_get::<String, _>(2)?,
                    r.try_get::<String, _>(3)?,
                    r.try_get::<Option<String>, _>(4)?,
                    r.try_get::<String, _>(5)?,
                    r.try_get::<i64, _>(6)?,
                )),
            }
        });
        let Some((id_hash, key_hash, sealed_key, csrf, workspace_id, key_name, ms)) = row else {
            return Ok(None);
        };
        let last_seen = DateTime::from_timestamp_millis(ms)
            .ok_or_else(|| StoreError::Corrupt("dashboard session", format!("last_seen_ms {ms}")))?;
        Ok(Some(SessionRow {
            id_hash,
            key_hash,
            sealed_key,
            csrf,
            workspace_id,
            key_name,
            last_seen,
        }))
    }

    /// Records that the session was used at `at` (never moving it back).
    pub async fn touch(&self, id_hash: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        on_db!(&self.db, |pool| sqlx::query(
            "UPDATE dashboard_sessions SET last_seen_ms = $2 WHERE id_hash = $1 AND last_seen_ms < $2"
        )
        .bind(id_hash)
        .bind(at.timestamp_millis())
        .execute(pool)
        .await
        .map(drop))?;
        Ok(())
    }

    /// Ends one session.
    pub async fn remove(&self, id_hash: &str) -> Result<(), StoreError> {
        on_db!(&self.db, |pool| sqlx::query(
            "DELETE FROM dashboard_sessions WHERE id_hash = $1"
        )
        .bind(id_hash)
        .execute(pool)
        .await
        .map(drop))?;
        Ok(())
    }

    /// Ends every session of the key whose hash is `key_hash`.
    pub async fn remove_key(&self, key_hash: &str) -> Result<u64, StoreError> {
        Ok(on_db!(&self.db, |pool| sqlx::query(
            "DELETE FROM dashboard_sessions WHERE key_hash = $1"
        )
        .bind(key_hash)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?)
    }

    /// Ends every session last used before `before`; returns how many.
    pub async fn purge_idle(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(on_db!(&self.db, |pool| sqlx::query(
            "DELETE FROM dashboard_sessions WHERE last_seen_ms < $1"
        )
        .bind(before.timestamp_millis())
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?)
    }
}
