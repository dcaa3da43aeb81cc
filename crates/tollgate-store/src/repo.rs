//! The typed repositories a [`Store`] hands out besides the control plane:
//! the request log's writer and reader, analytics, and the alert outbox. Each
//! holds the store's [`Db`] and dispatches on its backend, so the server
//! never sees a connection pool or a driver type.

use crate::analytics::{self, Cells, Filter, Query};
use crate::db::Db;
use crate::outbox::Outbox;
use crate::request_log::{self, LogFilter, LogRecord, LogWriter, OutageBuffer, Scope};
use crate::{Store, StoreError};
use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;

impl Store {
    /// Starts the request log's batching writer (see [`LogWriter`]). The task
    /// ends when every handle is dropped and the queue is drained.
    /// Without a journal, a record handed to [`LogWriter::commit`] waits for
    /// its database commit; without an outage buffer, on PostgreSQL a batch
    /// that cannot be written is retried a few times, then logged as lost
    /// (tools that fill the log; the server uses
    /// [`Store::spawn_log_writer_buffered`]).
    pub fn spawn_log_writer(&self) -> Result<(LogWriter, JoinHandle<()>), StoreError> {
        Ok(LogWriter::spawn(self.db.clone(), self.cache.clone(), None, None))
    }

    /// The request log's writer as the server runs it: every record goes
    /// to the journal in `buffer.dir` before its request is answered (see
    /// [`crate::journal`]), and the database gets it in batches; on
    /// PostgreSQL it keeps records while the database is unreachable, in
    /// memory and then in the spill file in `buffer.dir`, and writes them
    /// when it returns (see [`OutageBuffer`]). What a spill file and a
    /// journal left by an earlier process hold is written first.
    pub async fn spawn_log_writer_buffered(
        &self,
        buffer: &OutageBuffer,
    ) -> Result<(LogWriter, JoinHandle<()>), StoreError> {
        LogWriter::spawn_buffered(self.db.clone(), self.cache.clone(), buffer).await
    }

    /// Reads the request log.
    pub fn request_log(&self) -> RequestLog {
        RequestLog { db: self.db.clone() }
    }

    /// Analytics over the request log and its roll-ups.
    pub fn analytics(&self) -> Analytics {
        Analytics {
            db: self.db.clone(),
            cache: self.cache.clone(),
        }
    }

    /// The durable outbox of budget alerts (call [`Outbox::init`] once).
    pub fn outbox(&self) -> Outbox {
        Outbox::on(self.db.clone())
    }
}

/// Reads the request log. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RequestLog {
    db: Db,
}

impl RequestLog {
    /// Records matching `f`, newest first, with the total that match when
    /// `f.count_total`.
    pub async fn list(&self, f: &LogFilter) -> Result<(Option<i64>, Vec<LogRecord>), StoreError> {
        Ok(match &self.db {
            Db::Sqlite(pool) => request_log::list(pool, f).await?,
            Db::Postgres(pool) => request_log::list(pool, f).await?,
        })
    }

    /// What the admitted requests of `scope` since `from` consumed: (cost in
    /// picodollars, unknown prices counting 0; total tokens; requests), exact
    /// and saturating whatever the log holds (see the SQLite implementation).
    pub async fn consumed_since(&self, scope: &Scope, from: DateTime<Utc>) -> Result<(i64, i64, i64), StoreError> {
        // SQLite's untyped columns need typeof; PostgreSQL's are BIGINT.
        Ok(match &self.db {
            Db::Sqlite(pool) => request_log::consumed_since(pool, scope, from).await?,
            Db::Postgres(pool) => request_log::consumed_since_pg(pool, scope, from).await?,
        })
    }
}

/// Analytics queries. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Analytics {
    db: Db,
    cache: std::sync::Arc<crate::query_cache::QueryCache>,
}

impl Analytics {
    /// Answers `q` from roll-ups for whole days and raw rows for the rest.
    pub async fn aggregate(&self, q: &Query) -> Result<Cells, StoreError> {
        self.aggregate_with(q, analytics::RAW_ROWS_EXACT).await
    }

    /// [`Analytics::aggregate`], reading raw stretches of at most
    /// `exact_rows` requests row by row (exact percentiles) and summing
    /// longer ones in SQL; tests compare the two ways.
    /// The same question asked again before the log moves, or by several
    /// callers at once, is answered once (see `query_cache`).
    pub async fn aggregate_with(&self, q: &Query, exact_rows: i64) -> Result<Cells, StoreError> {
        Ok(match &self.db {
            Db::Sqlite(pool) => {
                self.cache
                    .answer(q, exact_rows, || analytics::aggregate_with(pool, q, exact_rows))
                    .await?
            }
            Db::Postgres(pool) => {
                self.cache
                    .answer(q, exact_rows, || analytics::aggregate_with(pool, q, exact_rows))
                    .await?
            }
        })
    }

    /// The busiest minute: (requests in it, its start), or `None` without
    /// requests.
    pub async fn peak_minute(&self, f: &Filter) -> Result<Option<(u64, i64)>, StoreError> {
        Ok(match &self.db {
            Db::Sqlite(pool) => analytics::peak_minute(pool, f).await?,
            Db::Postgres(pool) => analytics::peak_minute(pool, f).await?,
        })
    }

    /// Narrows `f`'s time range to the requests that exist, so that the cost
    /// of a query follows the data, not the range asked for.
    pub async fn clamp_to_data(&self, f: &mut Filter) -> Result<(), StoreError> {
        match &self.db {
            Db::Sqlite(pool) => f.clamp_to_data(pool).await?,
            Db::Postgres(pool) => f.clamp_to_data(pool).await?,
        }
        Ok(())
    }
}
