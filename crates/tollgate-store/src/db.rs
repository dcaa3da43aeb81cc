//! The database backends and opening them.
//!
//! [`Db`] is the one place that knows which database a [`Store`](crate::Store)
//! runs on: an enum over backends, each variant holding that backend's
//! connection pool. Every repository (control plane, request log, analytics,
//! outbox) holds a `Db` and dispatches on it with [`on_db!`]: SQL that both
//! backends share is written once and compiled once per backend; SQL that
//! differs goes in a per-backend function. Adding a backend is one more
//! variant, and the compiler then lists every place that needs its arm.
//!
//! The embedded default is SQLite in WAL mode in the data directory: WAL lets
//! the usage-log writer and admin reads proceed while the gateway keeps
//! serving; `synchronous = NORMAL` is durable across process crashes in WAL
//! mode and far cheaper than FULL.

use crate::StoreError;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The SQLite database file inside a data directory.
pub const SQLITE_FILE: &str = "tollgate.db";

/// Where the data lives, as configured.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// The embedded SQLite database at this path.
    Sqlite(PathBuf),
    /// A PostgreSQL server (`postgres://…` or `postgresql://…`).
    Postgres(String),
}

/// Shows a PostgreSQL location by its scheme only: the URL may carry a
/// password.
impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Location::Postgres(_) => f.write_str("Postgres(postgres://…)"),
        }
    }
}

impl Location {
    /// The embedded SQLite database in `data_dir`.
    pub fn embedded(data_dir: &Path) -> Location {
        Location::Sqlite(data_dir.join(SQLITE_FILE))
    }

    /// The location a `database_url` setting names: unset means the
    /// embedded SQLite database in `data_dir`.
    pub fn from_url(database_url: Option<&str>, data_dir: &Path) -> Result<Location, StoreError> {
        let Some(url) = database_url.map(str::trim).filter(|u| !u.is_empty()) else {
            return Ok(Location::embedded(data_dir));
        };
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("postgres" | "postgresql") => Ok(Location::Postgres(url.to_owned())),
            // The URL may carry a password: name only its scheme.
            Some(s) => Err(StoreError::Unsupported(format!(
                "scheme '{s}://' is not supported: use postgres://…, or leave database_url unset for the embedded SQLite database"
            ))),
            None => Err(StoreError::Unsupported(
                "no scheme: use postgres://…, or leave database_url unset for the embedded SQLite database"
                    .to_owned(),
            )),
        }
    }
}

/// A connection pool on one backend. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Db {
    /// Opens (creating if needed) and migrates the database at `location`.
    pub(crate) async fn open(location: &Location) -> Result<Db, StoreError> {
        match location {
            Location::Sqlite(path) => Ok(Db::Sqlite(open_sqlite(path).await?)),
            Location::Postgres(url) => Ok(Db::Postgres(open_postgres(url).await?)),
        }
    }

    /// The SQLite pool, when this is the embedded database.
    pub(crate) fn sqlite(&self) -> Option<&SqlitePool> {
        match self {
            Db::Sqlite(pool) => Some(pool),
            Db::Postgres(_) => None,
        }
    }
}

/// Runs `$body` with `$pool` bound to the backend's pool, compiled once per
/// backend (so the body must be SQL that every backend accepts).
macro_rules! on_db {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($pool) => $body,
            $crate::db::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_db;

/// How long a PostgreSQL query waits for a connection. sqlx keeps retrying
/// a refused connection until then, so this is how long an admin write takes
/// to answer 503 while PostgreSQL is down (see [`is_unavailable`]).
pub const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// Is `e` the database being unreachable (refused or lost connections, no
/// connection within [`PG_ACQUIRE_TIMEOUT`], a server shutting down), rather
/// than something wrong with a query? Such errors pass when the database
/// returns: admin requests answer 503 and the request log keeps its records
/// until then.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // SQLSTATE class 08 (connection exception), 57P01-57P03 (admin or
        // crash shutdown, cannot connect now), 53300 (too many connections).
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c == "53300"),
        _ => false,
    }
}

/// Connects to the PostgreSQL database at `url` and migrates it. sqlx's
/// migrator holds a `pg_advisory_lock` while it runs, so replicas starting
/// together migrate once.
pub async fn open_postgres(url: &str) -> Result<PgPool, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(PG_ACQUIRE_TIMEOUT)
        .connect(url)
        .await?;
    sqlx::migrate!("./migrations/postgres").run(&pool).await?;
    Ok(pool)
}

/// Opens (creating if needed) the SQLite database at `path` and migrates it.
pub async fn open_sqlite(path: &Path) -> Result<SqlitePool, sqlx::Error> {
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .min_connections(1)
        .connect_with(opts)
        .await?;
    sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_selects_the_backend() {
        let dir = Path::new("/data");
        assert_eq!(
            Location::from_url(None, dir).unwrap(),
            Location::Sqlite(dir.join(SQLITE_FILE))
        );
        assert_eq!(
            Location::from_url(Some("  "), dir).unwrap(),
            Location::Sqlite(dir.join(SQLITE_FILE))
        );
        for url in ["postgres://u@h/db", "postgresql://u:p@h:5432/db", "POSTGRES://h/db"] {
            assert_eq!(
                Location::from_url(Some(url), dir).unwrap(),
                Location::Postgres(url.to_owned())
            );
        }
    }

    #[test]
    fn other_database_urls_are_refused_without_their_secrets() {
        let e = Location::from_url(Some("mysql://root:hunter2@h/db"), Path::new("/d")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("'mysql://'"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        let pg = Location::from_url(Some("postgres://u:hunter2@h/db"), Path::new("/d")).unwrap();
        assert!(!format!("{pg:?}").contains("hunter2"));
        let e = Location::from_url(Some("tollgate.db"), Path::new("/d")).unwrap_err();
        assert!(e.to_string().starts_with("no scheme"), "{e}");
    }
}
