//! The control-plane store: records as JSON documents with their unique and
//! indexed columns beside them, and the append-only audit trail.
//!
//! Writes go through a [`Tx`] so that an admin operation that touches several
//! records (provisioning an integration creates providers, and every change
//! writes an audit entry) lands whole or not at all. Reads for the gateway
//! never come here: the server loads everything once into its snapshot
//! ([`Store::load_all`]) and again after each change.

use crate::db::{on_db, Db, Location};
use chrono::{DateTime, TimeZone, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, Row, Sqlite, SqlitePool, Transaction};
use tollgate_core::records::{ApiKeyRecord, Integration, ProviderRecord, SavedConfig, Workspace};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique column (slug, key hash) already holds this value.
    #[error("{0} already exists")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    /// A stored document no longer parses: a bug or a hand-edited database.
    #[error("stored {0} is corrupt: {1}")]
    Corrupt(&'static str, String),
    /// A backend or setting this build cannot serve; the message says which.
    #[error("{0}")]
    Unsupported(String),
    /// The target of a copy already holds data (in the tables named).
    #[error("the target database is not empty (rows in: {0}); migrate --to copies only into an empty database")]
    NotEmpty(String),
    /// The request log's spill file (its path) cannot be read or written.
    #[error("request log spill file {0}: {1}")]
    Spill(String, std::io::Error),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl StoreError {
    /// Is this the database being unreachable (see [`crate::db::is_unavailable`])?
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Db(e) if crate::db::is_unavailable(e))
    }
}

/// Everything the snapshot is built from.
#[derive(Debug, Clone, Default)]
pub struct ControlData {
    pub workspaces: Vec<Workspace>,
    pub api_keys: Vec<ApiKeyRecord>,
    pub integrations: Vec<Integration>,
    pub providers: Vec<ProviderRecord>,
    pub configs: Vec<SavedConfig>,
}

/// One audit-trail entry: who did what to which object, when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: String,
    pub at: DateTime<Utc>,
    /// The id of the API key that made the change (`None` for the CLI).
    pub actor: Option<String>,
    pub action: String,
    pub object_type: String,
    pub object_id: String,
    /// What changed, without secrets.
    pub details: serde_json::Value,
}

/// Filters for [`Store::audit_logs`].
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub object_type: Option<String>,
    pub object_id: Option<String>,
    pub actor: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub offset: i64,
    pub limit: i64,
}

/// The `meta` key of the control version: bumped by every control-plane
/// change ([`Tx::bump_control_version`]), so that every process serving
/// from this database knows when to reload.
pub const CONTROL_VERSION: &str = "control_version";

/// The store: the one handle on the database, whichever backend it is.
/// It serves the control plane itself and hands out the request log
/// ([`Store::spawn_log_writer`], [`Store::request_log`]), analytics
/// ([`Store::analytics`]) and the alert outbox ([`Store::outbox`]).
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) db: Db,
    /// Shared analytics answers, moved on by the request-log writer.
    pub(crate) cache: std::sync::Arc<crate::query_cache::QueryCache>,
}

fn to_doc<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt("record", e.to_string()))
}

fn from_doc<T: DeserializeOwned>(what: &'static str, s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(what, e.to_string()))
}

/// Maps a unique-constraint violation to [`StoreError::Conflict`].
fn unique(what: String) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(what),
        _ => StoreError::Db(e),
    }
}

impl Store {
    /// Opens (creating and migrating if needed) the database at `location`.
    pub async fn open(location: &Location) -> Result<Store, StoreError> {
        let db = Db::open(location).await?;
        // Only an embedded database has this process as its only writer.
        let keep = matches!(db, Db::Sqlite(_));
        Ok(Store {
            db,
            cache: std::sync::Arc::new(crate::query_cache::QueryCache::new(keep)),
        })
    }

    /// The embedded SQLite database's pool, for tests and tools that look
    /// inside it; `None` on other backends. The server never uses it.
    pub fn sqlite_pool(&self) -> Option<&SqlitePool> {
        self.db.sqlite()
    }

    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(Tx {
            tx: match &self.db {
                Db::Sqlite(pool) => TxInner::Sqlite(pool.begin().await?),
                Db::Postgres(pool) => TxInner::Postgres(pool.begin().await?),
            },
        })
    }

    pub async fn meta_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(on_db!(&self.db, |pool| sqlx::query_scalar(
            "SELECT value FROM meta WHERE key = $1"
        )
        .bind(key)
        .fetch_optional(pool)
        .await?))
    }

    /// The stored control version (0 before the first change, or if it does
    /// not parse).
    pub async fn control_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .meta_get(CONTROL_VERSION)
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    pub async fn meta_set(&self, key: &str, value: &str) -> Result<(), StoreError> {
        on_db!(&self.db, |pool| {
            sqlx::query(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(key)
            .bind(value)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Loads every control-plane record.
    pub async fn load_all(&self) -> Result<ControlData, StoreError> {
        const TABLES: [&str; 5] = [
            "SELECT data FROM workspaces",
            "SELECT data FROM api_keys",
            "SELECT data FROM integrations",
            "SELECT data FROM providers",
            "SELECT data FROM configs",
        ];
        let mut docs: Vec<Vec<String>> = Vec::with_capacity(TABLES.len());
        on_db!(&self.db, |pool| {
            let mut conn = pool.acquire().await?;
            for sql in TABLES {
                docs.push(sqlx::query_scalar(sql).fetch_all(&mut *conn).await?);
            }
        });
        let mut docs = docs.into_iter();
        let mut next = || docs.next().unwrap_or_default();
        Ok(ControlData {
            workspaces: load(&next(), "workspace")?,
            api_keys: load(&next(), "api key")?,
            integrations: load(&next(), "integration")?,
            providers: load(&next(), "provider")?,
            configs: load(&next(), "config")?,
        })
    }

    /// Every version of a saved config, newest first: (version id, time, config).
    pub async fn config_versions(
        &self,
        config_id: &str,
    ) -> Result<Vec<(String, DateTime<Utc>, serde_json::Value)>, StoreError> {
        // Insertion order breaks ties: SQLite's rowid, PostgreSQL's identity column.
        let tiebreak = match &self.db {
            Db::Sqlite(_) => "rowid",
            Db::Postgres(_) => "seq",
        };
        let sql = format!(
            "SELECT version_id, created_at_ms, config FROM config_versions WHERE config_id = $1
             ORDER BY created_at_ms DESC, {tiebreak} DESC"
        );
        let rows: Vec<(String, i64, String)> = on_db!(&self.db, |pool| sqlx::query_as(&sql)
            .bind(config_id)
            .fetch_all(pool)
            .await?);
        rows.into_iter()
            .map(|(v, at, c)| {
                Ok((
                    v,
                    Utc.timestamp_millis_opt(at).single().unwrap_or_default(),
                    from_doc("config version", &c)?,
                ))
            })
            .collect()
    }

    /// Audit entries, newest first, and how many match in all.
    pub async fn audit_logs(&self, f: &AuditFilter) -> Result<(i64, Vec<AuditEntry>), StoreError> {
        let mut where_ = String::from(" WHERE 1 = 1");
        let mut args: Vec<Arg> = Vec::new();
        let mut arg = |clause: &str, v: Arg, w: &mut String| {
            args.push(v);
            w.push_str(&format!(" AND {clause} ${}", args.len()));
        };
        if let Some(v) = &f.object_type {
            arg("object_type =", Arg::Text(v.clone()), &mut where_);
        }
        if let Some(v) = &f.object_id {
            arg("object_id =", Arg::Text(v.clone()), &mut where_);
        }
        if let Some(v) = &f.actor {
            arg("actor =", Arg::Text(v.clone()), &mut where_);
        }
        if let Some(v) = f.from {
            arg("at_ms >=", Arg::Int(v.timestamp_millis()), &mut where_);
        }
        if let Some(v) = f.to {
            arg("at_ms <=", Arg::Int(v.timestamp_millis()), &mut where_);
        }
        let count_sql = format!("SELECT COUNT(*) FROM audit_logs{where_}");
        let sql = format!(
            "SELECT id, at_ms, actor, action, object_type, object_id, details FROM audit_logs{where_} ORDER BY seq DESC LIMIT {} OFFSET {}",
            f.limit.clamp(1, 1000),
            f.offset.max(0)
        );
        on_db!(&self.db, |pool| {
            let mut q = sqlx::query_scalar::<_, i64>(&count_sql);
            for a in &args {
                q = match a {
                    Arg::Text(v) => q.bind(v),
                    Arg::Int(v) => q.bind(v),
                };
            }
            let total = q.fetch_one(pool).await?;
            let mut q = sqlx::query(&sql);
            for a in &args {
                q = match a {
                    Arg::Text(v) => q.bind(v),
                    Arg::Int(v) => q.bind(v),
                };
            }
            let rows = q.fetch_all(pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let at_ms: i64 = r.try_get("at_ms")?;
                let details: String = r.try_get("details")?;
                out.push(AuditEntry {
                    id: r.try_get("id")?,
                    at: Utc.timestamp_millis_opt(at_ms).single().unwrap_or_default(),
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    object_type: r.try_get("object_type")?,
                    object_id: r.try_get("object_id")?,
                    details: from_doc("audit entry", &details)?,
                });
            }
            Ok((total, out))
        })
    }
}

/// A bound argument of a filter.
enum Arg {
    Text(String),
    Int(i64),
}

fn load<T: DeserializeOwned>(rows: &[String], what: &'static str) -> Result<Vec<T>, StoreError> {
    rows.iter().map(|s| from_doc(what, s)).collect()
}

/// A write transaction over the control plane.
pub struct Tx {
    tx: TxInner,
}

/// An open transaction on one backend.
enum TxInner {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

/// Runs `$body` with `$tx` bound to the backend's transaction, compiled
/// once per backend (so the body must be SQL that every backend accepts).
macro_rules! on_tx {
    ($inner:expr, |$tx:ident| $body:expr) => {
        match $inner {
            TxInner::Sqlite($tx) => $body,
            TxInner::Postgres($tx) => $body,
        }
    };
}

impl Tx {
    pub async fn commit(self) -> Result<(), StoreError> {
        on_tx!(self.tx, |tx| tx.commit().await?);
        Ok(())
    }

    pub async fn put_workspace(&mut self, w: &Workspace) -> Result<(), StoreError> {
        let doc = to_doc(w)?;
        on_tx!(&mut self.tx, |tx| {
            sqlx::query(
                "INSERT INTO workspaces (id, slug, data) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET slug = excluded.slug, data = excluded.data",
            )
            .bind(&w.id)
            .bind(&w.slug)
            .bind(&doc)
            .execute(&mut **tx)
            .await
            .map_err(unique(format!("workspace with slug '{}'", w.slug)))?;
        });
        Ok(())
    }

    pub async fn delete_workspace(&mut self, id: &str) -> Result<(), StoreError> {
        delete(&mut self.tx, "DELETE FROM workspaces WHERE id = $1", id, "workspace").await
    }

    pub async fn put_api_key(&mut self, k: &ApiKeyRecord) -> Result<(), StoreError> {
        let doc = to_doc(k)?;
        on_tx!(&mut self.tx, |tx| {
            sqlx::query(
                "INSERT INTO api_keys (id, key_hash, workspace_id, data) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE SET key_hash = excluded.key_hash, workspace_id = excluded.workspace_id, data = excluded.data",
            )
            .bind(&k.id)
            .bind(&k.key_hash)
            .bind(&k.workspace_id)
            .bind(&doc)
            .execute(&mut **tx)
            .await
            .map_err(unique("api key".to_owned()))?;
        });
        Ok(())
    }

    pub async fn delete_api_key(&mut self, id: &str) -> Result<(), StoreError> {
        delete(&mut self.tx, "DELETE FROM api_keys WHERE id = $1", id, "api key").await
    }

    pub async fn put_integration(&mut self, i: &Integration) -> Result<(), StoreError> {
        let doc = to_doc(i)?;
        on_tx!(&mut self.tx, |tx| {
            sqlx::query(
                "INSERT INTO integrations (id, slug, workspace_id, data) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE SET slug = excluded.slug, workspace_id = excluded.workspace_id, data = excluded.data",
            )
            .bind(&i.id)
            .bind(&i.slug)
            .bind(&i.workspace_id)
            .bind(&doc)
            .execute(&mut **tx)
            .await
            .map_err(unique(format!("integration with slug '{}'", i.slug)))?;
        });
        Ok(())
    }

    pub async fn delete_integration(&mut self, id: &str) -> Result<(), StoreError> {
        delete(
            &mut self.tx,
            "DELETE FROM integrations WHERE id = $1",
            id,
            "integration",
        )
        .await
    }

    pub async fn put_provider(&mut self, p: &ProviderRecord) -> Result<(), StoreError> {
        let doc = to_doc(p)?;
        on_tx!(&mut self.tx, |tx| {
            sqlx::query(
                "INSERT INTO providers (id, workspace_id, integration_id, slug, data) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET slug = excluded.slug, data = excluded.data",
            )
            .bind(&p.id)
            .bind(&p.workspace_id)
            .bind(&p.integration_id)
            .bind(&p.slug)
            .bind(&doc)
            .execute(&mut **tx)
            .await
            .map_err(unique(format!("provider with slug '{}' in this workspace", p.slug)))?;
        });
        Ok(())
    }

    pub async fn delete_provider(&mut self, id: &str) -> Result<(), StoreError> {
        delete(&mut self.tx, "DELETE FROM providers WHERE id = $1", id, "provider").await
    }

    /// Saves a config and keeps its current version beside the others.
    pub async fn put_config(&mut self, c: &SavedConfig) -> Result<(), StoreError> {
        let doc = to_doc(c)?;
        let version = to_doc(&c.config)?;
        on_tx!(&mut self.tx, |tx| {
            sqlx::query(
                "INSERT INTO configs (id, slug, workspace_id, data) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE SET slug = excluded.slug, workspace_id = excluded.workspace_id, data = excluded.data",
            )
            .bind(&c.id)
            .bind(&c.slug)
            .bind(&c.workspace_id)
            .bind(&doc)
            .execute(&mut **tx)
            .await
            .map_err(unique(format!("config '{}'", c.slug)))?;
            sqlx::query(
                "INSERT INTO config_versions (version_id, config_id, created_at_ms, config) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (version_id) DO NOTHING",
            )
            .bind(&c.version_id)
            .bind(&c.id)
            .bind(c.last_updated_at.timestamp_millis())
            .bind(&version)
            .execute(&mut **tx)
            .await?;
        });
        Ok(())
    }

    pub async fn delete_config(&mut self, id: &str) -> Result<(), StoreError> {
        delete(&mut self.tx, "DELETE FROM configs WHERE id = $1", id, "config").await
    }

    pub async fn audit(&mut self, e: &AuditEntry) -> Result<(), StoreError> {
        let details = to_doc(&e.details)?;
        on_tx!(&mut self.tx, |tx| {
            sqlx::query(
                "INSERT INTO audit_logs (id, at_ms, actor, action, object_type, object_id, details)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&e.id)
            .bind(e.at.timestamp_millis())
            .bind(&e.actor)
            .bind(&e.action)
            .bind(&e.object_type)
            .bind(&e.object_id)
            .bind(&details)
            .execute(&mut **tx)
            .await?;
        });
        Ok(())
    }

    /// Bumps the control version (the `meta` value [`CONTROL_VERSION`]) by
    /// one and returns the new version. The row stays locked until this
    /// transaction ends, so concurrent changes, from any replica, get
    /// distinct versions in commit order. On PostgreSQL it also queues a
    /// notification on [`CONTROL_CHANNEL`](crate::notify::CONTROL_CHANNEL),
    /// which PostgreSQL delivers to every listener only if this transaction
    /// commits (see [`Store::watch_control`]).
    pub async fn bump_control_version(&mut self) -> Result<i64, StoreError> {
        let value: String = on_tx!(&mut self.tx, |tx| {
            sqlx::query_scalar(
                "INSERT INTO meta (key, value) VALUES ($1, '1')
                 ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(meta.value AS BIGINT) + 1 AS TEXT)
                 RETURNING value",
            )
            .bind(CONTROL_VERSION)
            .fetch_one(&mut **tx)
            .await?
        });
        let version: i64 = value
            .parse()
            .map_err(|_| StoreError::Corrupt("control version", value.clone()))?;
        if let TxInner::Postgres(tx) = &mut self.tx {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(crate::notify::CONTROL_CHANNEL)
                .bind(&value)
                .execute(&mut **tx)
                .await?;
        }
        Ok(version)
    }

    pub async fn meta_set(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        on_tx!(&mut self.tx, |tx| {
            sqlx::query(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(key)
            .bind(value)
            .execute(&mut **tx)
            .await?;
        });
        Ok(())
    }
}

async fn delete(tx: &mut TxInner, sql: &str, id: &str, what: &str) -> Result<(), StoreError> {
    let n = on_tx!(tx, |tx| sqlx::query(sql)
        .bind(id)
        .execute(&mut **tx)
        .await?
        .rows_affected());
    if n == 0 {
        return Err(StoreError::NotFound(format!("{what} '{id}'")));
    }
    Ok(())
}
