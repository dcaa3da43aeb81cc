//! The request log: one row per gateway request.
//!
//! One background writer inserts whatever has queued up in one transaction
//! (group commit), within [`LINGER`] of its arrival or at once when a batch
//! is full or someone flushes. A request that consumed budget hands its
//! record to [`LogWriter::commit`] and waits for its ticket before the client
//! gets the last byte of the answer. In the server the writer first appends
//! every record to the journal (see [`crate::journal`]: one `write` per
//! wake-up) and resolves the tickets then, so a process killed at any moment
//! (even SIGKILL) has every completed request's usage on disk, and the next
//! start writes what the database did not get yet. Without a journal
//! ([`Store::spawn_log_writer`](crate::Store::spawn_log_writer), for tools)
//! a ticket waits for the database commit, which is then due at once.
//! Either way a power loss can lose the last records (nothing is fsync'd;
//! SQLite runs with `synchronous = NORMAL`).
//! [`LogWriter::flush`] waits until everything queued before it is in the
//! database; readers of the log call it first, and graceful shutdown calls
//! [`LogWriter::close`] after the last request has finished, so nothing is
//! lost. On PostgreSQL the server's writer also rides out an outage of the
//! database (see [`OutageBuffer`]).

use crate::db::Db;
use crate::dialect::{statement_chunks, Backend};
use crate::journal::Journal;
use crate::query_cache::QueryCache;
use crate::StoreError;
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sqlx::error::BoxDynError;
use sqlx::Arguments as _;
use sqlx::{Connection, PgConnection, PgPool, Pool, Postgres, QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Most rows written in one transaction.
const BATCH: usize = 512;
/// Most rows in one `INSERT` statement (of 35 bound values each: SQLite
/// allows 32766 per statement, PostgreSQL 65535); a batch is inserted in
/// [`statement_chunks`] of at most this many.
const INSERT_ROWS: usize = 64;
/// How long the writer waits for more rows before writing a partial batch.
/// Answers wait only for the journal, so this is how fresh the database is:
/// at 100 req/s, 200 ms (16-row batches, [`DUE_ROWS`]) took about 15% less
/// CPU per request than 50 ms (5-row batches), each transaction paying its
/// roll-ups, page writes (32 `pwrite`s) and locks (docs/PERFORMANCE.md).
const LINGER: Duration = Duration::from_millis(200);
/// Rows that make a batch due at once. Building a batch's statements and
/// roll-ups runs on the runtime that serves requests, about 27,000
/// instructions a row: small batches keep each such burst short (around
/// 0.1 ms) and the queue in memory small (peak RSS at 3,000 req/s 29 MB,
/// against 52-60 MB with the 150-row batches a 50 ms linger gave).
const DUE_ROWS: usize = 16;
/// A record is in the database within this of its request's answer, while
/// the database keeps up: [`LINGER`], then the batch's transaction. What
/// sums the log for every replica (rebuilding limit counters that Redis
/// lost) waits this out first, after flushing its own writer, so that the
/// answers other replicas gave just before are counted.
pub const WRITTEN_WITHIN: Duration = Duration::from_millis(500);

/// One request as logged.
/// Serialized into the journal and the spill file (see `spill`) without the
/// fields that hold their default (most are, for most requests: the line is
/// shorter and cheaper to write); a missing field reads back as its default,
/// so lines written with every field read the same.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogRecord {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub trace_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub integration_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub integration_slug: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_slug: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ai_provider_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `chat.completions`, `completions`, `embeddings`.
    pub endpoint: String,
    #[serde(skip_serializing_if = "is_default")]
    pub status_code: u16,
    /// The gateway error type for a failure (`upstream_error`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    /// Why Tollgate refused the request itself: `rate_limit`, `budget`,
    /// `policy` (model not allowed), `auth`, `permission`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    #[serde(skip_serializing_if = "is_default")]
    pub streamed: bool,
    /// The client went away before the answer was complete.
    #[serde(skip_serializing_if = "is_default")]
    pub cancelled: bool,
    #[serde(skip_serializing_if = "is_default")]
    pub prompt_tokens: u64,
    #[serde(skip_serializing_if = "is_default")]
    pub completion_tokens: u64,
    #[serde(skip_serializing_if = "is_default")]
    pub cached_tokens: u64,
    #[serde(skip_serializing_if = "is_default")]
    pub total_tokens: u64,
    /// Token counts were estimated with the tokenizer, not reported upstream.
    #[serde(skip_serializing_if = "is_default")]
    pub tokens_estimated: bool,
    /// Exact cost in picodollars; `None` when the model has no known price.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_picos: Option<i64>,
    #[serde(skip_serializing_if = "is_default")]
    pub latency_us: u64,
    /// Time to first token, for streams.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttft_us: Option<u64>,
    /// Time spent waiting on the upstream (to its last byte).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_latency_us: Option<u64>,
    /// `x-portkey-metadata`: a JSON object of strings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
    /// The config target this attempt went to (`config.targets[1]`), when a
    /// routing config applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_path: Option<String>,
    /// Which retry of its target this attempt was (0 = the first try).
    #[serde(skip_serializing_if = "is_default")]
    pub retry_attempt: u32,
    /// The attempt's place in its request (0, 1, ...).
    #[serde(skip_serializing_if = "is_default")]
    pub attempt: u32,
    /// A config retried or fell back from this attempt: the client got
    /// another attempt's answer (stored as `is_final = 0`).
    #[serde(skip_serializing_if = "is_default")]
    pub superseded: bool,
}

impl LogRecord {
    /// Who and what the request was for, in the log's column order:
    /// workspace, key, integration (id and slug), provider slug, AI provider,
    /// model.
    fn attribution(&self) -> [&Option<String>; 7] {
        [
            &self.workspace_id,
            &self.api_key_id,
            &self.integration_id,
            &self.integration_slug,
            &self.provider_slug,
            &self.ai_provider_id,
            &self.model,
        ]
    }

    /// The metadata as JSON text, as the log stores it (a map of JSON
    /// values always serialises; written without copying it into a `Value`).
    fn metadata_json(&self) -> Option<String> {
        self.metadata.as_ref().and_then(|m| serde_json::to_string(m).ok())
    }
}

/// Whether `v` holds its type's default (a field left out of the journal).
fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

enum Msg {
    /// A record, and whoever waits for it to be committed.
    Record(Box<LogRecord>, Option<oneshot::Sender<()>>),
    Flush(oneshot::Sender<()>),
    /// Write what is queued (or keep it in the outage buffer's spill file),
    /// answer, and stop, whoever else still holds a handle.
    Close(oneshot::Sender<()>),
}

/// Resolves once a record handed to [`LogWriter::commit`] is on disk: in the
/// journal, or without one committed (or, while PostgreSQL is unreachable,
/// kept by the writer: see [`OutageBuffer`]), or the writer gave up on it (a
/// database that stayed unwritable for another reason: logged).
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

/// What the request log does while PostgreSQL is unreachable
/// ([`Store::spawn_log_writer_buffered`](crate::Store::spawn_log_writer_buffered)).
///
/// A batch that cannot be written for that reason (see
/// [`crate::db::is_unavailable`]) is kept in memory, behind whatever already
/// waits, and its tickets resolve at once, so requests never wait for the
/// database to come back. Beyond `memory_records` the records in memory are
/// appended to the spill file `dir/request-log.spill` (JSON lines, fsync'd,
/// see `spill`). Every 500 ms the writer checks whether PostgreSQL answers
/// (a connection within 250 ms) and, once it does, writes what waits in
/// order (the spill file, then memory), then removes the file. Rows are
/// inserted `ON CONFLICT (id) DO NOTHING` and only new rows are folded into
/// the roll-ups, so a record written twice (a crash in the middle of the
/// replay, a commit whose answer was lost) is stored and counted once.
///
/// Durability during an outage: a record in the spill file survives a
/// crash; so does one still in memory, because the journal is not cut back
/// while the backlog waits (a graceful stop also spills memory). A process
/// that starts with a spill file or a journal writes them before it serves.
#[derive(Debug, Clone)]
pub struct OutageBuffer {
    /// Where the spill file lives: the data directory.
    pub dir: PathBuf,
    /// Records kept in memory before they are spilled to disk.
    pub memory_records: usize,
}

/// The default of [`OutageBuffer::memory_records`].
pub const DEFAULT_OUTAGE_MEMORY_RECORDS: usize = 10_000;

/// Longest a PostgreSQL batch may take before it counts as failed (a
/// connection that went silent rather than closed).
const PG_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the writer waits for a connection when it checks whether
/// PostgreSQL is back.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// How often the writer checks whether PostgreSQL is back.
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// Batches one drain of the backlog writes before it hands the sink back,
/// so that new batches get their turn (their records are journaled and
/// answered meanwhile).
const DRAIN_BATCHES: usize = 8;
/// Attempts at one backlog batch that fails for a reason other than the
/// database being unreachable, before it is given up as lost.
const DRAIN_ATTEMPTS: u32 = 5;

/// Handle to the background writer. Cheap to clone.
#[derive(Clone)]
pub struct LogWriter {
    tx: mpsc::UnboundedSender<Msg>,
}

impl LogWriter {
    /// Starts the writer on `db` ([`Store::spawn_log_writer`](crate::Store::spawn_log_writer)),
    /// with a backlog for outages on PostgreSQL when `backlog` is given and
    /// a journal when `journal` is. The task ends when every handle is
    /// dropped and the queue is drained.
    pub(crate) fn spawn(
        db: Db,
        cache: Arc<QueryCache>,
        backlog: Option<Backlog>,
        journal: Option<Journal>,
    ) -> (LogWriter, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let w = Writer {
            sink: Some(Sink {
                db,
                cache,
                held: None,
                backlog,
            }),
            journal,
            batch: Vec::with_capacity(BATCH),
            waiters: Vec::new(),
            due: None,
            journal_failing: false,
        };
        (LogWriter { tx }, tokio::spawn(writer(w, rx)))
    }

    /// The writer as the server runs it: with the journal in `buffer.dir`
    /// (see [`crate::journal`]) and, on PostgreSQL, the outage buffer of
    /// `buffer`. First writes what an earlier process left in the spill
    /// file and the journal.
    pub(crate) async fn spawn_buffered(
        db: Db,
        cache: Arc<QueryCache>,
        buffer: &OutageBuffer,
    ) -> Result<(LogWriter, JoinHandle<()>), StoreError> {
        let backlog = match &db {
            Db::Sqlite(_) => None,
            Db::Postgres(pool) => {
                let mut backlog = Backlog::open(buffer).await?;
                if backlog.is_pending() {
                    tracing::warn!(
                        path = %backlog.path.display(),
                        "writing the request-log records that an earlier run spilled while PostgreSQL was unreachable"
                    );
                    while backlog.drain(pool, &cache).await {}
                }
                Some(backlog)
            }
        };
        let path = buffer.dir.join(crate::journal::JOURNAL_FILE).display().to_string();
        let dir = buffer.dir.clone();
        let mut journal = blocking(move || Journal::open(&dir))
            .await
            .map_err(|e| StoreError::Spill(path, e))?;
        replay_journal(&db, &cache, &mut journal).await;
        Ok(Self::spawn(db, cache, backlog, Some(journal)))
    }

    /// Queues a record nobody waits for; never blocks. It may linger briefly
    /// to share a batch.
    pub fn record(&self, r: impl Into<Box<LogRecord>>) {
        if self.tx.send(Msg::Record(r.into(), None)).is_err() {
            tracing::error!("usage log writer is gone; a request record was dropped");
        }
    }

    /// Queues a record and returns the ticket that resolves once it is on
    /// disk: journaled, or without a journal committed (the writer then
    /// commits at once, together with everything else queued).
    pub fn commit(&self, r: impl Into<Box<LogRecord>>) -> CommitTicket {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Record(r.into(), Some(done))).is_err() {
            tracing::error!("usage log writer is gone; a request record was dropped");
            return CommitTicket(None);
        }
        CommitTicket(Some(wait))
    }

    /// Waits until every record queued before this call is written (or,
    /// while PostgreSQL is unreachable, kept in the outage buffer).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// Writes every record queued before this call (while PostgreSQL is
    /// unreachable: moves the outage buffer's memory to its spill file) and
    /// stops the writer, even if other handles are still alive (a connection
    /// that has not let go of the server's state yet). Records sent after it
    /// are not written. Called once the server has stopped serving.
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Close(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

/// What the writer's loop woke up for.
enum Wake {
    /// This many messages arrived; 0: every handle is gone.
    Received(usize),
    /// The batch in flight was written (or kept): the sink is back, with
    /// whoever waited for that batch.
    Landed(Sink, Vec<oneshot::Sender<()>>),
    /// The batch is due.
    Due,
    /// Time to try the outage backlog again.
    Retry,
}

/// Where batches go: the database, and on PostgreSQL the outage backlog.
/// While a batch is in flight the sink travels with it.
struct Sink {
    db: Db,
    cache: Arc<QueryCache>,
    /// The SQLite writer's own connection (see [`insert`]).
    held: Option<SqliteConnection>,
    backlog: Option<Backlog>,
}

/// A batch (or a backlog drain) on its way to the database.
type Flight = std::pin::Pin<Box<dyn std::future::Future<Output = (Sink, Vec<oneshot::Sender<()>>)> + Send>>;

/// The writer's state between wake-ups.
struct Writer {
    /// `None` while a batch is in flight.
    sink: Option<Sink>,
    journal: Option<Journal>,
    /// Records received and not yet handed to the database.
    batch: Vec<LogRecord>,
    /// Who waits for `batch` to be written.
    waiters: Vec<oneshot::Sender<()>>,
    /// When `batch` is to be written.
    due: Option<tokio::time::Instant>,
    /// The journal failed and has not worked since (for the log).
    journal_failing: bool,
}

/// The writer's loop. Receiving and journaling never wait for the
/// database: a due batch is written by a future of its own (one at a time,
/// so order is kept) while the loop goes on journaling and answering the
/// records that arrive meanwhile. (When the loop waited for each batch's
/// transaction, every request answered during it waited too: added p99 at
/// 1,000 req/s 2.2 ms with batches, 0.29 ms without.)
async fn writer(mut w: Writer, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let mut msgs = Vec::with_capacity(BATCH);
    let mut acked = Vec::new();
    let mut flight: Option<Flight> = None;
    let mut open = true;
    let mut closing: Option<oneshot::Sender<()>> = None;
    loop {
        let stopping = !open || closing.is_some();
        if flight.is_none() {
            let now = tokio::time::Instant::now();
            let due = stopping || w.due.is_some_and(|d| d <= now);
            if due && (!w.batch.is_empty() || !w.waiters.is_empty()) {
                flight = w.launch();
            } else if stopping {
                w.finish().await;
                if let Some(done) = closing {
                    let _ = done.send(());
                }
                return;
            }
        }
        // With a batch in flight, a due batch waits for it to land (the
        // `Landed` wake-up launches it): the timer would only fire again
        // and again meanwhile.
        let idle = flight.is_none();
        let retry = match (idle, &w.sink) {
            (true, Some(sink)) => sink.backlog.as_ref().filter(|b| b.is_pending()).map(|b| b.next_try),
            _ => None,
        };
        let in_flight = async {
            match flight.as_mut() {
                Some(f) => f.await,
                None => std::future::pending().await,
            }
        };
        let wake = tokio::select! {
            n = rx.recv_many(&mut msgs, BATCH), if !stopping => Wake::Received(n),
            (sink, waiters) = in_flight => Wake::Landed(sink, waiters),
            () = until(w.due), if idle && !stopping => Wake::Due,
            () = until(retry) => Wake::Retry,
        };
        match wake {
            Wake::Received(0) => open = false,
            Wake::Received(_) => {
                let first = w.batch.len();
                for m in msgs.drain(..) {
                    match m {
                        Msg::Record(r, done) => {
                            w.batch.push(*r);
                            acked.extend(done);
                        }
                        Msg::Flush(done) => {
                            w.waiters.push(done);
                            w.due_now();
                        }
                        Msg::Close(done) => closing = Some(done),
                    }
                }
                w.received(first, &mut acked);
            }
            Wake::Landed(sink, waiters) => {
                flight = None;
                w.landed(sink, waiters);
            }
            Wake::Due => {}
            Wake::Retry => flight = w.drain_backlog(),
        }
    }
}

/// Sleeps until `at`; forever without one.
async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Writer {
    fn due_now(&mut self) {
        self.due = Some(tokio::time::Instant::now());
    }

    /// `batch[first..]` just arrived, `acked` waiting for them: journals
    /// them and answers `acked` at once, or (no journal, or it failed)
    /// makes `acked` wait for the batch's commit, which is then due now.
    /// Records nobody waits for are written within [`LINGER`], or at once
    /// once [`DUE_ROWS`] have queued.
    fn received(&mut self, first: usize, acked: &mut Vec<oneshot::Sender<()>>) {
        let journaled = match self.journal.as_mut() {
            None => false,
            Some(j) => match j.append(&self.batch[first..]) {
                Ok(()) => {
                    if self.journal_failing {
                        tracing::warn!(journal = %j.path().display(), "the request log's journal works again");
                        self.journal_failing = false;
                    }
                    true
                }
                Err(e) => {
                    if !self.journal_failing {
                        tracing::error!(
                            error = %e,
                            journal = %j.path().display(),
                            "cannot append to the request log's journal: requests wait for the database's commit instead"
                        );
                        self.journal_failing = true;
                    }
                    false
                }
            },
        };
        if journaled {
            for done in acked.drain(..) {
                let _ = done.send(());
            }
        } else if !acked.is_empty() {
            self.waiters.append(acked);
            self.due_now();
        }
        if self.batch.len() >= DUE_ROWS {
            self.due_now();
        } else if self.due.is_none() && self.batch.len() > first {
            self.due = Some(tokio::time::Instant::now() + LINGER);
        }
    }

    /// Sends the batch and its waiters on their way, with the sink.
    fn launch(&mut self) -> Option<Flight> {
        let mut sink = self.sink.take()?;
        self.due = None;
        let mut batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        let waiters = std::mem::take(&mut self.waiters);
        Some(Box::pin(async move {
            if !batch.is_empty() {
                write(&sink.db, &sink.cache, &mut sink.held, sink.backlog.as_mut(), &mut batch).await;
            }
            (sink, waiters)
        }))
    }

    /// A flight is back: answers its waiters; once everything journaled is
    /// in the database, the journal may be cut back.
    fn landed(&mut self, sink: Sink, waiters: Vec<oneshot::Sender<()>>) {
        let all_written = self.batch.is_empty() && !sink.backlog.as_ref().is_some_and(Backlog::is_pending);
        self.sink = Some(sink);
        for done in waiters {
            let _ = done.send(());
        }
        if let (Some(j), true) = (self.journal.as_mut(), all_written) {
            if let Err(e) = j.committed() {
                tracing::warn!(error = %e, journal = %j.path().display(), "cannot cut back the request log's journal");
            }
        }
    }

    /// Writes what the outage backlog holds, as a flight of its own.
    fn drain_backlog(&mut self) -> Option<Flight> {
        let mut sink = self.sink.take()?;
        Some(Box::pin(async move {
            if let (Db::Postgres(pool), Some(b)) = (&sink.db, sink.backlog.as_mut()) {
                if b.is_pending() && tokio::time::Instant::now() >= b.next_try {
                    b.drain(pool, &sink.cache).await;
                }
            }
            (sink, Vec::new())
        }))
    }

    /// The writer stops, with nothing in flight and nothing queued: either
    /// everything is in the database and the journal is emptied (the next
    /// start has nothing to replay), or PostgreSQL is unreachable and what
    /// waits goes to the spill file (and stays in the journal too: a replay
    /// skips what is stored).
    async fn finish(&mut self) {
        let Some(sink) = self.sink.as_mut() else {
            return;
        };
        match sink.backlog.as_mut() {
            Some(b) if b.is_pending() => b.park().await,
            _ => {
                if let Some(j) = self.journal.as_mut() {
                    if let Err(e) = j.clear() {
                        tracing::warn!(error = %e, journal = %j.path().display(), "cannot empty the request log's journal");
                    }
                }
            }
        }
    }
}

/// Writes what an earlier process left in `journal` (records already
/// stored are skipped), then empties it. Start-up never fails because of
/// the journal: a journal that cannot be read or written is moved aside for
/// an operator, loudly, and the server starts with an empty one.
async fn replay_journal(db: &Db, cache: &QueryCache, journal: &mut Journal) {
    if journal.len() == 0 {
        return;
    }
    tracing::info!(
        journal = %journal.path().display(),
        bytes = journal.len(),
        "writing the request-log records an earlier run journaled (it stopped before they reached the database)"
    );
    let mut from = 0;
    let mut held = None;
    let result: Result<(), String> = loop {
        let read = match journal.read(from, BATCH) {
            Ok(read) => read,
            Err(e) => break Err(e.to_string()),
        };
        if read.corrupt > 0 {
            tracing::error!(
                lines = read.corrupt,
                journal = %journal.path().display(),
                "damaged lines in the request log's journal were skipped: those records are lost"
            );
        }
        if read.next == from {
            break Ok(());
        }
        let written = match db {
            Db::Sqlite(pool) => insert(&mut held, pool, &read.records).await,
            Db::Postgres(pool) => insert_pg(pool, &read.records).await,
        };
        if let Err(e) = written {
            break Err(e.to_string());
        }
        from = read.next;
    };
    cache.committed();
    let done = match result {
        Ok(()) => journal.clear().map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    if let Err(e) = done {
        let suffix = format!("unwritten-{}", Utc::now().timestamp());
        match journal.set_aside(&suffix) {
            Ok(aside) => tracing::error!(
                error = %e,
                kept = %aside.display(),
                "the request log's journal could not be written to the database at start-up: its records are kept in this file and NOT counted"
            ),
            Err(e2) => tracing::error!(
                error = %e,
                error_moving = %e2,
                journal = %journal.path().display(),
                "the request log's journal could not be written at start-up nor moved aside"
            ),
        }
    }
}

/// Writes `batch` (leaving it empty), or keeps it in `backlog` behind what
/// already waits there, or when the database is unreachable. Other failures
/// are retried a few times (a locked database clears); after that the rows
/// are logged as lost rather than blocking every later one.
async fn write(
    db: &Db,
    cache: &QueryCache,
    held: &mut Option<SqliteConnection>,
    backlog: Option<&mut Backlog>,
    batch: &mut Vec<LogRecord>,
) {
    if let Some(b) = backlog {
        if b.is_pending() {
            return b.push(batch).await;
        }
        return write_now(db, cache, held, Some(b), batch).await;
    }
    write_now(db, cache, held, None, batch).await
}

/// Writes `batch` now: on SQLite on the writer's own connection (`held`,
/// opened on first use and replaced after a failure).
async fn write_now(
    db: &Db,
    cache: &QueryCache,
    held: &mut Option<SqliteConnection>,
    mut backlog: Option<&mut Backlog>,
    batch: &mut Vec<LogRecord>,
) {
    let mut attempt = 0;
    loop {
        // The roll-ups differ per backend.
        let result = match db {
            Db::Sqlite(pool) => insert(held, pool, batch).await,
            Db::Postgres(pool) => insert_pg(pool, batch).await,
        };
        match result {
            Ok(()) => {
                cache.committed();
                break;
            }
            Err(e) => match backlog.as_deref_mut() {
                Some(b) if crate::db::is_unavailable(&e) => {
                    b.outage(&e);
                    return b.push(batch).await;
                }
                _ if attempt < 5 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "usage log batch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
                _ => {
                    tracing::error!(error = %e, rows = batch.len(), "usage log batch lost");
                    break;
                }
            },
        }
    }
    batch.clear();
}

/// The records waiting for PostgreSQL (see [`OutageBuffer`]), oldest first:
/// the unread part of the spill file, then memory.
pub(crate) struct Backlog {
    path: PathBuf,
    bound: usize,
    memory: VecDeque<LogRecord>,
    /// Bytes of the spill file already in the database.
    spill_read: u64,
    /// Bytes of the spill file.
    spill_len: u64,
    /// When to try the database again.
    next_try: tokio::time::Instant,
    /// When this outage began (for the log), while one lasts.
    since: Option<tokio::time::Instant>,
    /// Whether this outage has spilled to disk yet (for the log).
    spilled: bool,
    /// Failed attempts at the oldest batch for a reason other than the
    /// database being unreachable.
    failures: u32,
}

/// Where the oldest batch came from, and how far it reached.
enum Written {
    /// The spill file, up to this byte.
    Spill(u64),
    /// The first this many records in memory.
    Memory(usize),
}

/// Runs blocking file work off the runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(std::io::Error::other)?
}

impl Backlog {
    /// The backlog of `buffer`, holding what a spill file left by an earlier
    /// process holds (a torn last record cut off).
    async fn open(buffer: &OutageBuffer) -> Result<Backlog, StoreError> {
        let path = buffer.dir.join(crate::spill::SPILL_FILE);
        let p = path.clone();
        let len = blocking(move || crate::spill::recover(&p))
            .await
            .map_err(|e| StoreError::Spill(path.display().to_string(), e))?;
        let now = tokio::time::Instant::now();
        Ok(Backlog {
            path,
            bound: buffer.memory_records,
            memory: VecDeque::new(),
            spill_read: 0,
            spill_len: len,
            next_try: now,
            since: (len > 0).then_some(now),
            spilled: len > 0,
            failures: 0,
        })
    }

    fn is_pending(&self) -> bool {
        self.spill_read < self.spill_len || !self.memory.is_empty()
    }

    /// A write failed because the database is unreachable.
    fn outage(&mut self, e: &sqlx::Error) {
        let now = tokio::time::Instant::now();
        if self.since.is_none() {
            tracing::warn!(
                error = %e,
                memory_records = self.bound,
                spill = %self.path.display(),
                "PostgreSQL is unreachable: request-log records are kept in memory, then in the spill file, until it returns"
            );
            self.since = Some(now);
        }
        self.next_try = now + RETRY_EVERY;
    }

    /// Keeps `batch` (leaving it empty) behind what waits; spills memory to
    /// disk once it holds more than the bound.
    async fn push(&mut self, batch: &mut Vec<LogRecord>) {
        self.memory.extend(batch.drain(..));
        if self.memory.len() > self.bound {
            self.spill_memory().await;
        }
    }

    /// Appends every record in memory to the spill file. If that fails they
    /// stay in memory (beyond the bound) and the next overflow tries again.
    async fn spill_memory(&mut self) {
        if self.memory.is_empty() {
            return;
        }
        let records: Vec<LogRecord> = self.memory.drain(..).collect();
        let (path, len) = (self.path.clone(), self.spill_len);
        let done = tokio::task::spawn_blocking(move || {
            let r = crate::spill::append(&path, len, &records);
            (records, r)
        })
        .await;
        match done {
            Ok((_, Ok(new_len))) => {
                self.spill_len = new_len;
                if !self.spilled {
                    tracing::warn!(
                        spill = %self.path.display(),
                        "PostgreSQL is still unreachable and the request log's memory buffer is full: records go to the spill file"
                    );
                    self.spilled = true;
                }
            }
            Ok((records, Err(e))) => {
                tracing::error!(
                    error = %e,
                    spill = %self.path.display(),
                    records = records.len(),
                    "cannot append to the request log's spill file: the records stay in memory"
                );
                self.memory = records.into();
            }
            Err(e) => tracing::error!(error = %e, "the spill task failed: request-log records lost"),
        }
    }

    /// Writes what waits, oldest first, up to [`DRAIN_BATCHES`] batches.
    /// True when it should be called again at once (it wrote a batch and
    /// more waits); otherwise it is done, or it set the next try.
    async fn drain(&mut self, pool: &PgPool, cache: &QueryCache) -> bool {
        for _ in 0..DRAIN_BATCHES {
            if !self.is_pending() {
                return false;
            }
            let mut conn = match tokio::time::timeout(PROBE_TIMEOUT, pool.acquire()).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => return self.retry_later(&e.to_string()),
                Err(_) => return self.retry_later("no connection within the probe timeout"),
            };
            let (result, done) = if self.spill_read < self.spill_len {
                let (path, from) = (self.path.clone(), self.spill_read);
                let read = match blocking(move || crate::spill::read(&path, from, BATCH)).await {
                    Ok(read) => read,
                    Err(e) => {
                        tracing::error!(error = %e, spill = %self.path.display(), "reading the request log's spill file failed");
                        return self.retry_later(&e.to_string());
                    }
                };
                if read.corrupt > 0 {
                    tracing::error!(
                        lines = read.corrupt,
                        spill = %self.path.display(),
                        "damaged lines in the request log's spill file were skipped: those records are lost"
                    );
                }
                if read.next == from {
                    // Nothing whole left to read (cannot happen after
                    // `recover`, but must not loop).
                    self.spill_read = self.spill_len;
                    continue;
                }
                (
                    within(insert_pg_on(&mut conn, &read.records)).await,
                    Written::Spill(read.next),
                )
            } else {
                let n = self.memory.len().min(BATCH);
                (
                    within(insert_pg_on(&mut conn, &self.memory.make_contiguous()[..n])).await,
                    Written::Memory(n),
                )
            };
            match result {
                Ok(()) => {
                    self.failures = 0;
                    self.advance(done);
                    cache.committed();
                }
                Err(e) if crate::db::is_unavailable(&e) => return self.retry_later(&e.to_string()),
                Err(e) => {
                    self.failures += 1;
                    if self.failures < DRAIN_ATTEMPTS {
                        tracing::warn!(error = %e, attempt = self.failures, "writing buffered request-log records failed; retrying");
                        return self.retry_later(&e.to_string());
                    }
                    tracing::error!(error = %e, "buffered request-log records lost");
                    self.failures = 0;
                    self.advance(done);
                }
            }
            if !self.is_pending() {
                self.recovered().await;
                return false;
            }
        }
        true
    }

    fn retry_later(&mut self, why: &str) -> bool {
        tracing::debug!(
            error = why,
            "PostgreSQL is still unreachable; request-log records keep waiting"
        );
        self.next_try = tokio::time::Instant::now() + RETRY_EVERY;
        false
    }

    /// Moves past the oldest batch: written, or given up.
    fn advance(&mut self, done: Written) {
        match done {
            Written::Spill(next) => self.spill_read = next,
            Written::Memory(n) => drop(self.memory.drain(..n)),
        }
    }

    /// Everything that waited is written: removes the spill file.
    async fn recovered(&mut self) {
        if self.spill_len > 0 {
            let path = self.path.clone();
            match blocking(move || crate::spill::remove(&path)).await {
                // Written again at the next start if it stays: harmless, as
                // rows already present are skipped.
                Err(e) => {
                    tracing::error!(error = %e, spill = %self.path.display(), "removing the request log's spill file failed")
                }
                Ok(()) => {
                    self.spill_read = 0;
                    self.spill_len = 0;
                }
            }
        }
        let after = self.since.map(|s| s.elapsed());
        tracing::warn!(outage = ?after, "PostgreSQL is reachable again: the request-log records kept meanwhile are written");
        self.since = None;
        self.spilled = false;
    }

    /// The writer is stopping: what is in memory goes to the spill file, to
    /// be written by the next start.
    async fn park(&mut self) {
        if !self.is_pending() {
            return;
        }
        self.spill_memory().await;
        tracing::warn!(
            spill = %self.path.display(),
            "stopping while PostgreSQL is unreachable: the request-log records kept meanwhile wait in the spill file for the next start"
        );
    }
}

/// `f`, failed as a timeout after [`PG_WRITE_TIMEOUT`].
async fn within<T>(f: impl std::future::Future<Output = Result<T, sqlx::Error>>) -> Result<T, sqlx::Error> {
    tokio::time::timeout(PG_WRITE_TIMEOUT, f).await.unwrap_or_else(|_| {
        Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {} s", PG_WRITE_TIMEOUT.as_secs()),
        )))
    })
}

/// The columns of `usage_log` that [`insert_rows`] writes, in the order
/// [`add_row`] adds their values.
const INSERT_COLUMNS: [&str; 35] = [
    "id",
    "created_at_ms",
    "trace_id",
    "workspace_id",
    "api_key_id",
    "integration_id",
    "integration_slug",
    "provider_slug",
    "ai_provider_id",
    "model",
    "endpoint",
    "status_code",
    "error_type",
    "refusal",
    "streamed",
    "cancelled",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "total_tokens",
    "tokens_estimated",
    "cost_picos",
    "latency_us",
    "ttft_us",
    "upstream_latency_us",
    "metadata",
    "request_body",
    "response_body",
    "target_path",
    "retry_attempt",
    "attempt",
    "is_final",
    "latency_bucket",
    "ttft_bucket",
    "overhead_bucket",
];

/// `INSERT INTO usage_log …` of `rows`, with their histogram buckets, on
/// both backends: a row whose id is already stored, or came earlier in
/// `rows`, is skipped (`ON CONFLICT (id) DO NOTHING`). With `returning` the
/// statement answers the ids it inserted, for [`inserted`].
///
/// Its text depends only on the backend, the row count and `returning`, so
/// it is built once for each ([`insert_sql`]) and the batch only adds its
/// values: building it with a `QueryBuilder` per batch (a formatted push
/// for each value and each comma) cost about 5,000 instructions a row on
/// the runtime that serves requests (docs/PERFORMANCE.md).
fn insert_rows<DB: Backend>(rows: &[LogRecord], returning: bool) -> Result<InsertQuery<'_, DB>, sqlx::Error> {
    let mut args = DB::Arguments::default();
    args.reserve(rows.len() * INSERT_COLUMNS.len(), 0);
    for r in rows {
        add_row::<DB>(&mut args, r).map_err(sqlx::Error::Encode)?;
    }
    Ok(DB::query_with(insert_sql::<DB>(rows.len(), returning), args))
}

/// The request log's insert of some rows, ready to run.
type InsertQuery<'a, DB> = sqlx::query::Query<'a, DB, <DB as sqlx::Database>::Arguments<'a>>;

/// Adds the values of one row of [`insert_rows`], in the order of
/// [`INSERT_COLUMNS`].
fn add_row<'a, DB: Backend>(args: &mut DB::Arguments<'a>, r: &'a LogRecord) -> Result<(), BoxDynError> {
    DB::add_str(args, &r.id)?;
    DB::add_i64(args, r.created_at.timestamp_millis())?;
    DB::add_str(args, &r.trace_id)?;
    for v in r.attribution() {
        DB::add_opt_str(args, v.as_deref())?;
    }
    DB::add_str(args, &r.endpoint)?;
    DB::add_i64(args, i64::from(r.status_code))?;
    DB::add_opt_str(args, r.error_type.as_deref())?;
    DB::add_opt_str(args, r.refusal.as_deref())?;
    DB::add_bool(args, r.streamed)?;
    DB::add_bool(args, r.cancelled)?;
    for v in [r.prompt_tokens, r.completion_tokens, r.cached_tokens, r.total_tokens] {
        DB::add_i64(args, stored(v))?;
    }
    DB::add_bool(args, r.tokens_estimated)?;
    DB::add_opt_i64(args, r.cost_picos)?;
    DB::add_i64(args, stored(r.latency_us))?;
    DB::add_opt_i64(args, r.ttft_us.map(stored))?;
    DB::add_opt_i64(args, r.upstream_latency_us.map(stored))?;
    DB::add_json(args, r.metadata_json())?;
    for v in [&r.request_body, &r.response_body, &r.target_path] {
        DB::add_opt_str(args, v.as_deref())?;
    }
    DB::add_i64(args, i64::from(r.retry_attempt))?;
    DB::add_i64(args, i64::from(r.attempt))?;
    DB::add_bool(args, !r.superseded)?;
    let buckets = crate::analytics::Buckets::of(r);
    DB::add_i64(args, buckets.latency)?;
    DB::add_opt_i64(args, buckets.ttft)?;
    DB::add_opt_i64(args, buckets.overhead)
}

/// The text of [`insert_rows`] for `rows` rows on `DB`, built on first use
/// and kept for the process's life: [`statement_chunks`] makes the row
/// counts a handful of powers of two up to [`INSERT_ROWS`], so there are a
/// few dozen texts at most.
fn insert_sql<DB: Backend>(rows: usize, returning: bool) -> &'static str {
    type Texts = Vec<((&'static str, usize, bool), &'static str)>;
    static TEXTS: parking_lot::Mutex<Texts> = parking_lot::Mutex::new(Vec::new());
    let key = (DB::NAME, rows, returning);
    let mut texts = TEXTS.lock();
    if let Some((_, text)) = texts.iter().find(|(k, _)| *k == key) {
        return text;
    }
    let metadata = INSERT_COLUMNS.iter().position(|c| *c == "metadata");
    let mut sql = format!("INSERT INTO usage_log ({}) VALUES ", INSERT_COLUMNS.join(", "));
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..INSERT_COLUMNS.len() {
            if column > 0 {
                sql.push_str(", ");
            }
            let n = row * INSERT_COLUMNS.len() + column + 1;
            if Some(column) == metadata {
                DB::json_placeholder(&mut sql, n);
            } else {
                DB::placeholder(&mut sql, n);
            }
        }
        sql.push(')');
    }
    sql.push_str(" ON CONFLICT (id) DO NOTHING");
    if returning {
        sql.push_str(" RETURNING id");
    }
    let text: &'static str = Box::leak(sql.into_boxed_str());
    texts.push((key, text));
    text
}

/// Inserts `rows` on `conn` in [`statement_chunks`], answering the ids it
/// stored (for [`inserted`]).
async fn insert_answering_ids<DB: Backend>(
    conn: &mut DB::Connection,
    rows: &[LogRecord],
) -> Result<Vec<String>, sqlx::Error> {
    let mut new = Vec::with_capacity(rows.len());
    for chunk in statement_chunks(rows, INSERT_ROWS) {
        for r in DB::fetch_all_on(conn, insert_rows::<DB>(chunk, true)?).await? {
            new.extend(DB::get_opt_str(&r, 0)?);
        }
    }
    Ok(new)
}

/// The rows of `rows` that [`insert_rows`] stored, given the ids it
/// answered (`new`): the first copy of each new id, to be rolled up. So a
/// batch written twice (a replay of the journal or the spill file after a
/// crash, a commit whose answer was lost) is stored and counted once.
fn inserted<'a>(rows: Cow<'a, [LogRecord]>, new: Vec<String>) -> Cow<'a, [LogRecord]> {
    if new.len() == rows.len() {
        // Every id was new and came once.
        return rows;
    }
    let mut new: HashSet<String> = new.into_iter().collect();
    Cow::Owned(rows.iter().filter(|r| new.remove(&r.id)).cloned().collect())
}

/// Writes `rows` on the writer's own connection, `held`: taken out of the
/// pool on first use and kept from batch to batch. Every batch then runs on
/// one connection thread with warm page and statement caches, without the
/// pool's liveness check on each acquire and release (each a round trip to
/// the connection's thread) and without taking turns with the pool's other
/// connections, each of which would find its caches stale. Its temporary
/// storage (statement journals, bounded by one batch) stays in memory: past
/// 64 KiB SQLite would otherwise spill it to a file created and deleted in
/// the transaction. A failed batch closes the connection, so the retry
/// starts on a fresh one.
async fn insert(held: &mut Option<SqliteConnection>, pool: &SqlitePool, rows: &[LogRecord]) -> Result<(), sqlx::Error> {
    let conn = match held {
        Some(conn) => conn,
        None => {
            let mut conn = pool.acquire().await?.detach();
            sqlx::query("PRAGMA temp_store = MEMORY").execute(&mut conn).await?;
            held.insert(conn)
        }
    };
    let result = insert_on(conn, rows).await;
    if result.is_err() {
        *held = None;
    }
    result
}

/// Inserts `rows` with their roll-ups in one transaction; see
/// [`insert_rows`] for the rows it skips.
///
/// Nearly every batch is all new, and the count of rows stored says so: the
/// insert answers no ids then, since SQLite's connection thread would hand
/// each one over to the writer on its own (a wake-up per record). A batch
/// that stored fewer rows than it holds (a replay after a crash, an id
/// repeated) is undone and inserted again answering its new ids.
async fn insert_on(conn: &mut SqliteConnection, rows: &[LogRecord]) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    let mut stored = 0;
    for chunk in statement_chunks(rows, INSERT_ROWS) {
        stored += insert_rows::<Sqlite>(chunk, false)?
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    let fresh = if stored == rows.len() as u64 {
        Cow::Borrowed(rows)
    } else {
        tx.rollback().await?;
        tx = conn.begin().await?;
        let new = insert_answering_ids::<Sqlite>(&mut tx, rows).await?;
        inserted(Cow::Borrowed(rows), new)
    };
    // The analytics roll-ups move with the log, in the same transaction.
    if !fresh.is_empty() {
        crate::analytics::roll_up(&mut tx, &fresh).await?;
    }
    tx.commit().await
}

/// [`insert_pg_on`] a connection of `pool`, within [`PG_WRITE_TIMEOUT`].
async fn insert_pg(pool: &PgPool, rows: &[LogRecord]) -> Result<(), sqlx::Error> {
    within(async {
        let mut conn = pool.acquire().await?;
        insert_pg_on(&mut conn, rows).await
    })
    .await
}

/// Inserts `rows` with their roll-ups in one transaction; see
/// [`insert_rows`] for the rows it skips.
async fn insert_pg_on(conn: &mut PgConnection, rows: &[LogRecord]) -> Result<(), sqlx::Error> {
    // PostgreSQL text cannot hold NUL characters (nor JSONB `\u0000`): a
    // record carrying one is stored with U+FFFD in its place, rather than
    // failing the batch it shares.
    let rows: Cow<[LogRecord]> = if rows.iter().any(|r| texts(r).iter().any(|s| s.contains('\0'))) {
        Cow::Owned(rows.iter().map(without_nul).collect())
    } else {
        Cow::Borrowed(rows)
    };
    let mut tx = conn.begin().await?;
    let new = insert_answering_ids::<Postgres>(&mut tx, &rows).await?;
    let fresh = inserted(rows, new);
    if !fresh.is_empty() {
        crate::analytics::roll_up_pg(&mut tx, &fresh).await?;
    }
    tx.commit().await
}

/// Every text of `r`; the metadata as its JSON text.
fn texts(r: &LogRecord) -> Vec<Cow<'_, str>> {
    let mut out: Vec<Cow<str>> = [&r.id, &r.trace_id, &r.endpoint]
        .into_iter()
        .map(|s| Cow::Borrowed(s.as_str()))
        .collect();
    out.extend(
        r.attribution()
            .into_iter()
            .chain([
                &r.error_type,
                &r.refusal,
                &r.request_body,
                &r.response_body,
                &r.target_path,
            ])
            .flatten()
            .map(|s| Cow::Borrowed(s.as_str())),
    );
    if let Some(json) = r.metadata_json() {
        // serde_json writes a NUL as `\u0000`.
        out.push(Cow::Owned(json.replace("\\u0000", "\0")));
    }
    out
}

/// `r` with every NUL character (metadata keys and values included)
/// replaced by U+FFFD.
fn without_nul(r: &LogRecord) -> LogRecord {
    fn clean(s: &mut String) {
        if s.contains('\0') {
            *s = s.replace('\0', "\u{FFFD}");
        }
    }
    fn json(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::String(mut s) => {
                clean(&mut s);
                serde_json::Value::String(s)
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(json).collect()),
            serde_json::Value::Object(m) => serde_json::Value::Object(object(m)),
            v => v,
        }
    }
    fn object(m: serde_json::Map<String, serde_json::Value>) -> serde_json::Map<String, serde_json::Value> {
        m.into_iter()
            .map(|(mut k, v)| {
                clean(&mut k);
                (k, json(v))
            })
            .collect()
    }
    let mut r = r.clone();
    for s in [&mut r.id, &mut r.trace_id, &mut r.endpoint] {
        clean(s);
    }
    for s in [
        &mut r.workspace_id,
        &mut r.api_key_id,
        &mut r.integration_id,
        &mut r.integration_slug,
        &mut r.provider_slug,
        &mut r.ai_provider_id,
        &mut r.model,
        &mut r.error_type,
        &mut r.refusal,
        &mut r.request_body,
        &mut r.response_body,
        &mut r.target_path,
    ]
    .into_iter()
    .flatten()
    {
        clean(s);
    }
    r.metadata = r.metadata.take().map(object);
    r
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

fn push_filter<'a, DB: Backend>(qb: &mut QueryBuilder<'a, DB>, f: &'a LogFilter) {
    qb.push(" WHERE TRUE");
    let eq = |qb: &mut QueryBuilder<'a, DB>, col: &str, v: &'a Option<String>| {
        if let Some(v) = v {
            qb.push(format!(" AND {col} = "));
            DB::bind_str(qb, v);
        }
    };
    eq(qb, "workspace_id", &f.workspace_id);
    eq(qb, "api_key_id", &f.api_key_id);
    eq(qb, "provider_slug", &f.provider_slug);
    eq(qb, "integration_slug", &f.integration_slug);
    eq(qb, "model", &f.model);
    eq(qb, "trace_id", &f.trace_id);
    let int = |qb: &mut QueryBuilder<'a, DB>, cond: &str, v: Option<i64>| {
        if let Some(v) = v {
            qb.push(format!(" AND {cond} "));
            DB::bind_i64(qb, v);
        }
    };
    int(qb, "status_code =", f.status_code.map(i64::from));
    int(qb, "created_at_ms >=", f.from.map(|t| t.timestamp_millis()));
    int(qb, "created_at_ms <=", f.to.map(|t| t.timestamp_millis()));
    int(qb, "cost_picos >=", f.cost_min);
    int(qb, "cost_picos <=", f.cost_max);
    for (k, v) in &f.metadata {
        qb.push(" AND ");
        DB::push_metadata(qb, k);
        qb.push(" = ");
        DB::bind_str(qb, v);
    }
}

/// Records matching `f`, newest first, with the total that match when
/// `f.count_total`.
pub(crate) async fn list<DB: Backend>(
    pool: &Pool<DB>,
    f: &LogFilter,
) -> Result<(Option<i64>, Vec<LogRecord>), sqlx::Error> {
    let total = if f.count_total {
        let mut count: QueryBuilder<DB> = QueryBuilder::new("SELECT COUNT(*) FROM usage_log");
        push_filter(&mut count, f);
        match DB::fetch_all(pool, count).await?.first() {
            Some(r) => Some(DB::get_i64(r, 0)?),
            None => Some(0),
        }
    } else {
        None
    };
    // Counts are read as integers whatever a damaged row holds.
    let i = DB::int;
    let mut qb: QueryBuilder<DB> = QueryBuilder::new(format!(
        "SELECT id, created_at_ms, trace_id, workspace_id, api_key_id, integration_id, integration_slug, \
         provider_slug, ai_provider_id, model, endpoint, {}, error_type, refusal, streamed, cancelled, {}, {}, {}, \
         {}, tokens_estimated, {}, {}, {}, {}, {}, request_body, response_body, target_path, {}, {}, is_final \
         FROM usage_log",
        i("status_code"),
        i("prompt_tokens"),
        i("completion_tokens"),
        i("cached_tokens"),
        i("total_tokens"),
        i("cost_picos"),
        i("latency_us"),
        i("ttft_us"),
        i("upstream_latency_us"),
        DB::json_text("metadata"),
        i("retry_attempt"),
        i("attempt"),
    ));
    push_filter(&mut qb, f);
    qb.push(" ORDER BY created_at_ms DESC, seq DESC LIMIT ");
    DB::bind_i64(&mut qb, f.limit.clamp(1, 1000));
    qb.push(" OFFSET ");
    DB::bind_i64(&mut qb, f.offset.max(0));
    let rows = DB::fetch_all(pool, qb).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let s = |c: usize| DB::get_opt_str(&r, c);
        let text = |c: usize| -> Result<String, sqlx::Error> { Ok(s(c)?.unwrap_or_default()) };
        let u = |c: usize| -> Result<u64, sqlx::Error> { Ok(DB::get_i64(&r, c)?.max(0) as u64) };
        let opt_u =
            |c: usize| -> Result<Option<u64>, sqlx::Error> { Ok(DB::get_opt_i64(&r, c)?.map(|v| v.max(0) as u64)) };
        out.push(LogRecord {
            id: text(0)?,
            created_at: Utc
                .timestamp_millis_opt(DB::get_i64(&r, 1)?)
                .single()
                .unwrap_or_default(),
            trace_id: text(2)?,
            workspace_id: s(3)?,
            api_key_id: s(4)?,
            integration_id: s(5)?,
            integration_slug: s(6)?,
            provider_slug: s(7)?,
            ai_provider_id: s(8)?,
            model: s(9)?,
            endpoint: text(10)?,
            status_code: u(11)?.min(u64::from(u16::MAX)) as u16,
            error_type: s(12)?,
            refusal: s(13)?,
            streamed: DB::get_bool(&r, 14)?,
            cancelled: DB::get_bool(&r, 15)?,
            prompt_tokens: u(16)?,
            completion_tokens: u(17)?,
            cached_tokens: u(18)?,
            total_tokens: u(19)?,
            tokens_estimated: DB::get_bool(&r, 20)?,
            cost_picos: DB::get_opt_i64(&r, 21)?,
            latency_us: u(22)?,
            ttft_us: opt_u(23)?,
            upstream_latency_us: opt_u(24)?,
            metadata: s(25)?.and_then(|m| serde_json::from_str(&m).ok()),
            request_body: s(26)?,
            response_body: s(27)?,
            target_path: s(28)?,
            retry_attempt: u(29)?.min(u64::from(u32::MAX)) as u32,
            attempt: u(30)?.min(u64::from(u32::MAX)) as u32,
            superseded: !DB::get_bool(&r, 31)?,
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
    push_scope(&mut qb, scope, from);
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

/// `created_at_ms >= from` and the conditions of `scope`.
fn push_scope<'a, DB: Backend>(qb: &mut QueryBuilder<'a, DB>, scope: &'a Scope, from: DateTime<Utc>) {
    DB::bind_i64(qb, from.timestamp_millis());
    let conds: Vec<(&str, &String)> = match scope {
        Scope::Workspace(w) => vec![("workspace_id", w)],
        Scope::Provider(w, p) => vec![("workspace_id", w), ("provider_slug", p)],
        Scope::IntegrationWorkspace(i, w) => vec![("integration_id", i), ("workspace_id", w)],
        Scope::ApiKey(k) => vec![("api_key_id", k)],
    };
    for (col, v) in conds {
        qb.push(format!(" AND {col} = "));
        DB::bind_str(qb, v);
    }
}

/// [`consumed_since`] on PostgreSQL: the columns are typed BIGINT, so only
/// negative values need care; sums are NUMERIC (exact) and saturate at
/// `i64::MAX`.
pub(crate) async fn consumed_since_pg(
    pool: &PgPool,
    scope: &Scope,
    from: DateTime<Utc>,
) -> Result<(i64, i64, i64), sqlx::Error> {
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(
        "SELECT CAST(LEAST(COALESCE(SUM(GREATEST(COALESCE(cost_picos, 0), 0)), 0), 9223372036854775807) AS BIGINT), \
         CAST(LEAST(COALESCE(SUM(GREATEST(total_tokens, 0)), 0), 9223372036854775807) AS BIGINT), COUNT(*), \
         COUNT(*) FILTER (WHERE total_tokens < 0 OR cost_picos < 0) \
         FROM usage_log WHERE refusal IS NULL AND created_at_ms >= ",
    );
    push_scope(&mut qb, scope, from);
    let (cost, tokens, requests, bad) = qb.build_query_as::<(i64, i64, i64, i64)>().fetch_one(pool).await?;
    if bad > 0 {
        tracing::warn!(
            rows = bad,
            scope = ?scope,
            "request log rows with a negative token count or cost: counted as 0"
        );
    }
    Ok((cost, tokens, requests))
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

    #[test]
    fn the_insert_text_is_built_once_per_backend_row_count_and_returning() {
        let columns = INSERT_COLUMNS.join(", ");
        let one = insert_sql::<Sqlite>(1, false);
        assert_eq!(
            one,
            format!(
                "INSERT INTO usage_log ({columns}) VALUES ({}) ON CONFLICT (id) DO NOTHING",
                ["?"; 35].join(", ")
            )
        );
        assert!(std::ptr::eq(one, insert_sql::<Sqlite>(1, false)), "built once");
        assert!(insert_sql::<Sqlite>(1, true).ends_with("DO NOTHING RETURNING id"));
        // PostgreSQL numbers its placeholders across the rows, and casts the
        // metadata (the 26th column) to JSONB.
        let row = |first: usize| {
            (first..first + 35)
                .map(|n| match n - first {
                    25 => format!("CAST(${n} AS JSONB)"),
                    _ => format!("${n}"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        assert_eq!(
            insert_sql::<Postgres>(2, true),
            format!(
                "INSERT INTO usage_log ({columns}) VALUES ({}), ({}) ON CONFLICT (id) DO NOTHING RETURNING id",
                row(1),
                row(36)
            )
        );
        assert_eq!(INSERT_COLUMNS[25], "metadata");
        // A row adds one value per column.
        let r = record("a");
        let mut args = <Sqlite as sqlx::Database>::Arguments::default();
        add_row::<Sqlite>(&mut args, &r).unwrap();
        assert_eq!(args.len(), INSERT_COLUMNS.len());
        let mut args = <Postgres as sqlx::Database>::Arguments::default();
        add_row::<Postgres>(&mut args, &r).unwrap();
        assert_eq!(args.len(), INSERT_COLUMNS.len());
    }

    fn record(id: &str) -> LogRecord {
        LogRecord {
            id: id.into(),
            created_at: Utc::now(),
            trace_id: format!("trace-{id}"),
            workspace_id: Some("ws".into()),
            endpoint: "chat.completions".into(),
            status_code: 200,
            ..LogRecord::default()
        }
    }

    /// Whether `conn` is the connection a marker was left on (a temporary
    /// table lives as long as its connection).
    async fn marked(conn: &mut SqliteConnection) -> bool {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM sqlite_temp_master WHERE name = 'marker'")
            .fetch_one(conn)
            .await
            .unwrap()
            == 1
    }

    async fn counts(pool: &SqlitePool) -> (i64, i64) {
        sqlx::query_as("SELECT (SELECT COUNT(*) FROM usage_log), (SELECT COALESCE(SUM(requests), 0) FROM usage_daily)")
            .fetch_one(pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_writer_keeps_its_connection_and_replaces_it_after_a_failed_batch() {
        let dir = tempfile::tempdir().unwrap();
        let pool = crate::db::open_sqlite(&dir.path().join("log.db")).await.unwrap();
        let mut held = None;
        insert(&mut held, &pool, &[record("a")]).await.unwrap();
        let conn = held.as_mut().expect("the writer keeps its connection");
        let temp_store: i64 = sqlx::query_scalar("PRAGMA temp_store")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(temp_store, 2, "temporary storage in memory");
        sqlx::query("CREATE TEMP TABLE marker (x)")
            .execute(&mut *conn)
            .await
            .unwrap();
        insert(&mut held, &pool, &[record("b")]).await.unwrap();
        assert!(
            marked(held.as_mut().unwrap()).await,
            "the next batch ran on the same connection"
        );
        // A batch that fails (here: a trigger refuses one of its rows) is
        // rolled back whole, roll-ups included, and its connection is let go.
        sqlx::query(
            "CREATE TRIGGER refuse BEFORE INSERT ON usage_log WHEN NEW.id = 'refused' \
             BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .execute(&pool)
        .await
        .unwrap();
        let err = insert(&mut held, &pool, &[record("c"), record("refused")]).await;
        assert!(err.is_err());
        assert!(held.is_none());
        assert_eq!(counts(&pool).await, (2, 2));
        sqlx::query("DROP TRIGGER refuse").execute(&pool).await.unwrap();
        insert(&mut held, &pool, &[record("d")]).await.unwrap();
        assert!(
            !marked(held.as_mut().unwrap()).await,
            "a fresh connection after the failure"
        );
        assert_eq!(counts(&pool).await, (3, 3));
    }
}
