//! The request log: one row per gateway request.
//!
//! One background writer inserts whatever has queued up in one transaction
//! (group commit). A request that consumed budget hands its record to
//! [`UsageLog::commit`] and waits for its commit ticket before the client
//! gets the last byte of the answer, so a process killed at any moment
//! (even SIGKILL) has every completed request's usage on disk (committed to
//! the SQLite WAL; with `synchronous = NORMAL` a power loss can still lose
//! the last transactions). When someone waits, the writer commits at once;
//! records nobody waits for ([`UsageLog::record`]: refusals and failures
//! that consumed nothing) may linger up to [`LINGER`] to share a batch.
//! [`UsageLog::flush`] waits until everything queued before it is on disk;
//! readers of the log call it first, and graceful shutdown calls it after
//! the last request has finished, so nothing is lost.

use crate::db::Db;
use crate::query_cache::QueryCache;
use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Most rows written in one transaction.
const BATCH: usize = 512;
/// How long the writer waits for more rows before writing a partial batch.
const LINGER: std::time::Duration = std::time::Duration::from_millis(25);

/// One request as logged.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UsageRecord {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub trace_id: String,
    pub workspace_id: Option<String>,
    pub api_key_id: Option<String>,
    pub integration_id: Option<String>,
    pub integration_slug: Option<String>,
    pub provider_slug: Option<String>,
    pub ai_provider_id: Option<String>,
    pub model: Option<String>,
    /// `chat.completions`, `completions`, `embeddings`.
    pub endpoint: String,
    pub status_code: u16,
    /// The gateway error type for a failure (`upstream_error`, ...).
    pub error_type: Option<String>,
    /// Why Tollgate refused the request itself: `rate_limit`, `budget`,
    /// `policy` (model not allowed), `auth`, `permission`.
    pub refusal: Option<String>,
    pub streamed: bool,
    /// The client went away before the answer was complete.
    pub cancelled: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub total_tokens: u64,
    /// Token counts were estimated with the tokenizer, not reported upstream.
    pub tokens_estimated: bool,
    /// Exact cost in picodollars; `None` when the model has no known price.
    pub cost_picos: Option<i64>,
    pub latency_us: u64,
    /// Time to first token, for streams.
    pub ttft_us: Option<u64>,
    /// Time spent waiting on the upstream (to its last byte).
    pub upstream_latency_us: Option<u64>,
    /// `x-portkey-metadata`: a JSON object of strings.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    pub request_body: Option<String>,
    pub response_body: Option<String>,
    /// The config target this attempt went to (`config.targets[1]`), when a
    /// routing config applied.
    pub target_path: Option<String>,
    /// Which retry of its target this attempt was (0 = the first try).
    pub retry_attempt: u32,
    /// The attempt's place in its request (0, 1, ...).
    pub attempt: u32,
    /// A config retried or fell back from this attempt: the client got
    /// another attempt's answer (stored as `is_final = 0`).
    pub superseded: bool,
}

enum Msg {
    /// A record, and whoever waits for it to be committed.
    Record(Box<UsageRecord>, Option<oneshot::Sender<()>>),
    Flush(oneshot::Sender<()>),
}

impl Msg {
    fn has_waiter(&self) -> bool {
        matches!(self, Msg::Flush(_) | Msg::Record(_, Some(_)))
    }
}

/// Resolves once a record handed to [`UsageLog::commit`] is committed, or
/// the writer gave up on it (a database that stayed unwritable: logged).
pub struct CommitTicket(Option<oneshot::Receiver<()>>);

impl std::future::Future for CommitTicket {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        match self.0.as_mut() {
            None => std::task::Poll::Ready(()),
            Some(rx) => std::pin::Pin::new(rx).poll(cx).map(|_| ()),
        }
    }
}

/// Handle to the background writer. Cheap to clone.
#[derive(Clone)]
pub struct UsageLog {
    tx: mpsc::UnboundedSender<Msg>,
}

impl UsageLog {
    /// Starts the writer on `db` ([`Store::spawn_usage_log`](crate::Store::spawn_usage_log)).
    /// The task ends when every handle is dropped and the queue is drained.
    pub(crate) fn spawn(db: Db, cache: Arc<QueryCache>) -> (UsageLog, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(writer(db, cache, rx));
        (UsageLog { tx }, task)
    }

    /// Queues a record nobody waits for; never blocks. It may linger briefly
    /// to share a batch.
    pub fn record(&self, r: UsageRecord) {
        if self.tx.send(Msg::Record(Box::new(r), None)).is_err() {
            tracing::error!("usage log writer is gone; a request record was dropped");
        }
    }

    /// Queues a record and returns the ticket that resolves once it is
    /// committed. The writer commits at once when someone waits, together
    /// with everything else queued (group commit).
    pub fn commit(&self, r: UsageRecord) -> CommitTicket {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Record(Box::new(r), Some(done))).is_err() {
            tracing::error!("usage log writer is gone; a request record was dropped");
            return CommitTicket(None);
        }
        CommitTicket(Some(wait))
    }

    /// Waits until every record queued before this call is written.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

async fn writer(db: Db, cache: Arc<QueryCache>, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let mut msgs = Vec::with_capacity(BATCH);
    let mut batch: Vec<UsageRecord> = Vec::with_capacity(BATCH);
    loop {
        if rx.recv_many(&mut msgs, BATCH).await == 0 {
            return;
        }
        // Nobody waiting: linger briefly so that records share a transaction
        // (with their roll-ups folded once). Someone waiting: commit now;
        // whatever queues meanwhile goes into the next batch, so a busy
        // gateway still writes few, large transactions.
        let deadline = tokio::time::Instant::now() + LINGER;
        while msgs.len() < BATCH && !msgs.iter().any(Msg::has_waiter) {
            let room = BATCH - msgs.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut msgs, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let mut waiters = Vec::new();
        for m in msgs.drain(..) {
            match m {
                Msg::Record(r, w) => {
                    batch.push(*r);
                    waiters.extend(w);
                }
                Msg::Flush(w) => waiters.push(w),
            }
        }
        if !batch.is_empty() {
            // Retry a failed batch a few times (a locked database clears);
            // after that the rows are logged as lost rather than blocking
            // every later one.
            let mut attempt = 0;
            loop {
                // SQLite dialect (the roll-ups).
                let result = match &db {
                    Db::Sqlite(pool) => insert(pool, &batch).await,
                    // Not reached: Store::spawn_usage_log refuses PostgreSQL.
                    Db::Postgres(_) => Err(sqlx::Error::Configuration(
                        crate::db::not_yet_on_postgres("the request log").into(),
                    )),
                };
                match result {
                    Ok(()) => {
                        cache.committed();
                        break;
                    }
                    Err(e) if attempt < 5 => {
                        attempt += 1;
                        tracing::warn!(error = %e, attempt, "usage log batch failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, rows = batch.len(), "usage log batch lost");
                        break;
                    }
                }
            }
            batch.clear();
        }
        for w in waiters {
            let _ = w.send(());
        }
    }
}

async fn insert(pool: &SqlitePool, rows: &[UsageRecord]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // SQLite allows 32766 bound parameters; 35 columns × 512 rows fits.
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
        "INSERT INTO usage_log (id, created_at_ms, trace_id, workspace_id, api_key_id, integration_id, integration_slug, \
         provider_slug, ai_provider_id, model, endpoint, status_code, error_type, refusal, streamed, cancelled, \
         prompt_tokens, completion_tokens, cached_tokens, total_tokens, tokens_estimated, cost_picos, latency_us, \
         ttft_us, upstream_latency_us, metadata, request_body, response_body, target_path, retry_attempt, attempt, \
         is_final, latency_bucket, ttft_bucket, overhead_bucket) ",
    );
    qb.push_values(rows, |mut b, r| {
        b.push_bind(&r.id)
            .push_bind(r.created_at.timestamp_millis())
            .push_bind(&r.trace_id)
            .push_bind(&r.workspace_id)
            .push_bind(&r.api_key_id)
            .push_bind(&r.integration_id)
            .push_bind(&r.integration_slug)
            .push_bind(&r.provider_slug)
            .push_bind(&r.ai_provider_id)
            .push_bind(&r.model)
            .push_bind(&r.endpoint)
            .push_bind(r.status_code as i64)
            .push_bind(&r.error_type)
            .push_bind(&r.refusal)
            .push_bind(r.streamed)
            .push_bind(r.cancelled)
            .push_bind(stored(r.prompt_tokens))
            .push_bind(stored(r.completion_tokens))
            .push_bind(stored(r.cached_tokens))
            .push_bind(stored(r.total_tokens))
            .push_bind(r.tokens_estimated)
            .push_bind(r.cost_picos)
            .push_bind(stored(r.latency_us))
            .push_bind(r.ttft_us.map(stored))
            .push_bind(r.upstream_latency_us.map(stored))
            .push_bind(
                r.metadata
                    .as_ref()
                    .map(|m| serde_json::Value::Object(m.clone()).to_string()),
            )
            .push_bind(&r.request_body)
            .push_bind(&r.response_body)
            .push_bind(&r.target_path)
            .push_bind(i64::from(r.retry_attempt))
            .push_bind(i64::from(r.attempt))
            .push_bind(!r.superseded);
        let buckets = crate::analytics::Buckets::of(r);
        b.push_bind(buckets.latency)
            .push_bind(buckets.ttft)
            .push_bind(buckets.overhead);
    });
    qb.build().execute(&mut *tx).await?;
    // The analytics roll-ups move with the log, in the same transaction.
    crate::analytics::roll_up(&mut tx, rows).await?;
    tx.commit().await
}

/// Filters for [`RequestLog::list`](crate::RequestLog::list). Every field narrows; `None` means any.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub workspace_id: Option<String>,
    pub api_key_id: Option<String>,
    pub provider_slug: Option<String>,
    pub integration_slug: Option<String>,
    pub model: Option<String>,
    pub status_code: Option<u16>,
    pub trace_id: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Cost bounds in picodollars, inclusive (a record without a cost
    /// matches neither).
    pub cost_min: Option<i64>,
    pub cost_max: Option<i64>,
    /// Every key must be present in the record's metadata with this value.
    pub metadata: Vec<(String, String)>,
    /// Count every matching record (a scan of all of them); without it the
    /// page alone is read, through the time index.
    pub count_total: bool,
    pub offset: i64,
    pub limit: i64,
}

fn push_filter<'a>(qb: &mut QueryBuilder<'a, Sqlite>, f: &'a LogFilter) {
    qb.push(" WHERE 1 = 1");
    let eq = |qb: &mut QueryBuilder<'a, Sqlite>, col: &str, v: &'a Option<String>| {
        if let Some(v) = v {
            qb.push(format!(" AND {col} = ")).push_bind(v.as_str());
        }
    };
    eq(qb, "workspace_id", &f.workspace_id);
    eq(qb, "api_key_id", &f.api_key_id);
    eq(qb, "provider_slug", &f.provider_slug);
    eq(qb, "integration_slug", &f.integration_slug);
    eq(qb, "model", &f.model);
    eq(qb, "trace_id", &f.trace_id);
    if let Some(s) = f.status_code {
        qb.push(" AND status_code = ").push_bind(s as i64);
    }
    if let Some(t) = f.from {
        qb.push(" AND created_at_ms >= ").push_bind(t.timestamp_millis());
    }
    if let Some(t) = f.to {
        qb.push(" AND created_at_ms <= ").push_bind(t.timestamp_millis());
    }
    if let Some(c) = f.cost_min {
        qb.push(" AND cost_picos >= ").push_bind(c);
    }
    if let Some(c) = f.cost_max {
        qb.push(" AND cost_picos <= ").push_bind(c);
    }
    for (k, v) in &f.metadata {
        // json_extract takes a JSON path; quote the key so any string is safe.
        let path = format!("$.{}", serde_json::Value::String(k.clone()));
        qb.push(" AND json_extract(metadata, ")
            .push_bind(path)
            .push(") = ")
            .push_bind(v.as_str());
    }
}

/// Records matching `f`, newest first, with the total that match when
/// `f.count_total`.
pub(crate) async fn list(pool: &SqlitePool, f: &LogFilter) -> Result<(Option<i64>, Vec<UsageRecord>), sqlx::Error> {
    let total = if f.count_total {
        let mut count: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT COUNT(*) FROM usage_log");
        push_filter(&mut count, f);
        Some(count.build_query_scalar().fetch_one(pool).await?)
    } else {
        None
    };
    // Counts are read as integers whatever a damaged row holds.
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
        "SELECT id, created_at_ms, trace_id, workspace_id, api_key_id, integration_id, integration_slug, \
         provider_slug, ai_provider_id, model, endpoint, CAST(status_code AS INTEGER) AS status_code, error_type, \
         refusal, streamed, cancelled, CAST(prompt_tokens AS INTEGER) AS prompt_tokens, \
         CAST(completion_tokens AS INTEGER) AS completion_tokens, CAST(cached_tokens AS INTEGER) AS cached_tokens, \
         CAST(total_tokens AS INTEGER) AS total_tokens, tokens_estimated, CAST(cost_picos AS INTEGER) AS cost_picos, \
         CAST(latency_us AS INTEGER) AS latency_us, CAST(ttft_us AS INTEGER) AS ttft_us, \
         CAST(upstream_latency_us AS INTEGER) AS upstream_latency_us, metadata, request_body, response_body, \
         target_path, CAST(retry_attempt AS INTEGER) AS retry_attempt, CAST(attempt AS INTEGER) AS attempt, is_final \
         FROM usage_log",
    );
    push_filter(&mut qb, f);
    qb.push(" ORDER BY created_at_ms DESC, seq DESC LIMIT ")
        .push_bind(f.limit.clamp(1, 1000))
        .push(" OFFSET ")
        .push_bind(f.offset.max(0));
    let rows = qb.build().fetch_all(pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let u = |c: &str| -> Result<u64, sqlx::Error> { Ok(r.try_get::<i64, _>(c)?.max(0) as u64) };
        let opt_u = |c: &str| -> Result<Option<u64>, sqlx::Error> {
            Ok(r.try_get::<Option<i64>, _>(c)?.map(|v| v.max(0) as u64))
        };
        let metadata: Option<String> = r.try_get("metadata")?;
        out.push(UsageRecord {
            id: r.try_get("id")?,
            created_at: Utc
                .timestamp_millis_opt(r.try_get("created_at_ms")?)
                .single()
                .unwrap_or_default(),
            trace_id: r.try_get("trace_id")?,
            workspace_id: r.try_get("workspace_id")?,
            api_key_id: r.try_get("api_key_id")?,
            integration_id: r.try_get("integration_id")?,
            integration_slug: r.try_get("integration_slug")?,
            provider_slug: r.try_get("provider_slug")?,
            ai_provider_id: r.try_get("ai_provider_id")?,
            model: r.try_get("model")?,
            endpoint: r.try_get("endpoint")?,
            status_code: u("status_code")? as u16,
            error_type: r.try_get("error_type")?,
            refusal: r.try_get("refusal")?,
            streamed: r.try_get("streamed")?,
            cancelled: r.try_get("cancelled")?,
            prompt_tokens: u("prompt_tokens")?,
            completion_tokens: u("completion_tokens")?,
            cached_tokens: u("cached_tokens")?,
            total_tokens: u("total_tokens")?,
            tokens_estimated: r.try_get("tokens_estimated")?,
            cost_picos: r.try_get("cost_picos")?,
            latency_us: u("latency_us")?,
            ttft_us: opt_u("ttft_us")?,
            upstream_latency_us: opt_u("upstream_latency_us")?,
            metadata: metadata.and_then(|m| serde_json::from_str(&m).ok()),
            request_body: r.try_get("request_body")?,
            response_body: r.try_get("response_body")?,
            target_path: r.try_get("target_path")?,
            retry_attempt: u("retry_attempt")? as u32,
            attempt: u("attempt")? as u32,
            superseded: !r.try_get::<bool, _>("is_final")?,
        });
    }
    Ok((total, out))
}

/// Which request-log rows a limit applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Workspace(String),
    /// (workspace id, provider slug).
    Provider(String, String),
    /// (integration id, workspace id).
    IntegrationWorkspace(String, String),
    ApiKey(String),
}

/// What the admitted requests of `scope` since `from` consumed:
/// (cost in picodollars, unknown prices counting 0; total tokens; requests).
/// Requests that Tollgate refused itself are not counted.
///
/// Whatever the log holds, this answers: each row's value is read as a
/// non-negative integer (a negative or non-integer value is counted as its
/// integer part, at least 0, and reported at warn), and the sums saturate at
/// `i64::MAX` instead of overflowing. They are exact: each value is summed as
/// its high and low 32 bits, which cannot overflow below 2^32 rows.
pub(crate) async fn consumed_since(
    pool: &SqlitePool,
    scope: &Scope,
    from: DateTime<Utc>,
) -> Result<(i64, i64, i64), sqlx::Error> {
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
        "SELECT COALESCE(SUM(c >> 32), 0), COALESCE(SUM(c & 4294967295), 0), \
         COALESCE(SUM(t >> 32), 0), COALESCE(SUM(t & 4294967295), 0), COUNT(*), COALESCE(SUM(bad), 0) FROM (\
         SELECT MAX(CAST(COALESCE(cost_picos, 0) AS INTEGER), 0) AS c, MAX(CAST(total_tokens AS INTEGER), 0) AS t, \
         (typeof(total_tokens) != 'integer' OR total_tokens < 0 \
          OR (cost_picos IS NOT NULL AND (typeof(cost_picos) != 'integer' OR cost_picos < 0))) AS bad \
         FROM usage_log WHERE refusal IS NULL AND created_at_ms >= ",
    );
    qb.push_bind(from.timestamp_millis());
    match scope {
        Scope::Workspace(w) => {
            qb.push(" AND workspace_id = ").push_bind(w);
        }
        Scope::Provider(w, p) => {
            qb.push(" AND workspace_id = ")
                .push_bind(w)
                .push(" AND provider_slug = ")
                .push_bind(p);
        }
        Scope::IntegrationWorkspace(i, w) => {
            qb.push(" AND integration_id = ")
                .push_bind(i)
                .push(" AND workspace_id = ")
                .push_bind(w);
        }
        Scope::ApiKey(k) => {
            qb.push(" AND api_key_id = ").push_bind(k);
        }
    }
    qb.push(")");
    let (c_hi, c_lo, t_hi, t_lo, requests, bad) = qb
        .build_query_as::<(i64, i64, i64, i64, i64, i64)>()
        .fetch_one(pool)
        .await?;
    if bad > 0 {
        tracing::warn!(
            rows = bad,
            scope = ?scope,
            "request log rows with a negative or non-integer token count or cost: counted as their integer part, at least 0"
        );
    }
    Ok((join_halves(c_hi, c_lo), join_halves(t_hi, t_lo), requests))
}

/// `hi · 2^32 + lo`, saturating at `i64::MAX`.
fn join_halves(hi: i64, lo: i64) -> i64 {
    let v = (i128::from(hi) << 32) + i128::from(lo);
    i64::try_from(v.max(0)).unwrap_or(i64::MAX)
}

/// A count as stored: SQLite integers are i64, so larger counts saturate.
fn stored(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_join_exactly_and_saturate() {
        let v: i64 = 0x1234_5678_9abc_def0;
        assert_eq!(join_halves(v >> 32, v & 0xffff_ffff), v);
        assert_eq!(join_halves(i64::MAX >> 32, i64::MAX & 0xffff_ffff), i64::MAX);
        // Two rows of i64::MAX.
        assert_eq!(
            join_halves(2 * (i64::MAX >> 32), 2 * (i64::MAX & 0xffff_ffff)),
            i64::MAX
        );
        assert_eq!(join_halves(0, 0), 0);
        assert_eq!(stored(u64::MAX), i64::MAX);
        assert_eq!(stored(7), 7);
    }
}
