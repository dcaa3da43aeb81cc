//! Opening the embedded SQLite database and migrating it.
//!
//! WAL mode lets the usage-log writer and admin reads proceed while the
//! gateway keeps serving; `synchronous = NORMAL` is durable across process
//! crashes in WAL mode and far cheaper than FULL.

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use std::path::Path;
use std::time::Duration;

/// The SQLite database file inside a data directory.
pub const SQLITE_FILE: &str = "tollgate.db";

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
