//! The durable outbox of budget alerts: what must be delivered, on which
//! channel, and how each attempt went.
//!
//! An alert is written here in the same breath as the usage that triggered it
//! and delivered later by the server's dispatcher, so a crash, a restart or an
//! SMTP outage delays an alert but never loses it. Each alert carries a dedupe
//! key (limit id + period start + kind) with a unique index, so it is recorded
//! exactly once per limit per period however many settle calls race to
//! enqueue it. Email and webhook are tracked separately: a webhook outage is
//! retried without sending the email again.
//!
//! The table is self-contained (`Outbox::init` creates it) and its SQL sticks
//! to what SQLite and PostgreSQL share: text ids, `BIGINT` unix milliseconds,
//! `$n` parameters, `ON CONFLICT DO NOTHING`. Time always comes from the
//! caller. Several dispatchers may share one database (replicas on
//! PostgreSQL): `due` only reads, and a dispatcher [`Outbox::claim`]s a
//! channel before delivering on it, so that exactly one of them sends it.

use crate::db::{on_db, Db};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{Row, SqlitePool};
use tollgate_core::limits::BudgetKind;

/// First retry delay after a failed delivery.
pub const BACKOFF_BASE_SECS: i64 = 30;
/// Longest retry delay: the doubling stops here.
pub const BACKOFF_MAX_SECS: i64 = 3600;
/// Longest stored error message (a misbehaving server can answer anything).
const MAX_ERROR_LEN: usize = 500;

/// Why the outbox could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("alert outbox database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("alert payload cannot be encoded: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("no alert {0} in the outbox")]
    NotFound(String),
    #[error("event id {0} is already used by a different alert")]
    IdConflict(String),
    #[error("alert outbox row {id} is corrupt: {what}")]
    Corrupt { id: String, what: String },
}

impl OutboxError {
    /// Is this the database being unreachable (see [`crate::db::is_unavailable`])?
    pub fn is_unavailable(&self) -> bool {
        matches!(self, OutboxError::Db(e) if crate::db::is_unavailable(e))
    }
}

/// Why an alert fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertKind {
    /// Usage reached the alert threshold; requests still flow.
    Threshold,
    /// Usage reached the limit; requests are refused until the next reset.
    Exhausted,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Threshold => "threshold",
            AlertKind::Exhausted => "exhausted",
        }
    }
}

/// What an alert says, as the server fills it in. Amounts are decimal text
/// rendered from exact integers (dollars for `cost`, tokens for `tokens`).
/// This is also the webhook's JSON body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertPayload {
    /// Unique per alert; receivers dedupe on it.
    pub event_id: String,
    pub kind: AlertKind,
    /// The level the limit sits at: `integration_workspace`, `provider`,
    /// `api_key` or `workspace`.
    pub level: String,
    pub limit_id: String,
    /// Human name of what the limit is on (key name, provider slug, ...).
    pub name: String,
    pub workspace_id: Option<String>,
    pub limit_type: BudgetKind,
    pub consumed: String,
    pub credit_limit: String,
    pub alert_threshold: Option<String>,
    /// Start of the budget period the alert belongs to (for a limit without
    /// periodic reset: when it was set or last reset).
    pub period_start: DateTime<Utc>,
    pub next_reset_at: Option<DateTime<Utc>>,
    /// Extra email recipients (an API key's `alert_emails`), on top of the
    /// configured admin addresses.
    #[serde(default)]
    pub recipients: Vec<String>,
}

impl AlertPayload {
    /// The key that makes an alert unique: one per limit, period and kind.
    pub fn dedupe_key(&self) -> String {
        format!(
            "{}|{}|{}",
            self.limit_id,
            self.period_start.timestamp_millis(),
            self.kind.as_str()
        )
    }
}

/// A delivery channel, tracked independently of the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Email,
    Webhook,
}

impl Channel {
    pub const ALL: [Channel; 2] = [Channel::Email, Channel::Webhook];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Webhook => "webhook",
        }
    }

    /// Column names of this channel's state. Static strings, never input.
    fn cols(self) -> (&'static str, &'static str, &'static str, &'static str, &'static str) {
        match self {
            Channel::Email => (
                "email_state",
                "email_attempts",
                "email_next_at",
                "email_error",
                "email_done_at",
            ),
            Channel::Webhook => (
                "webhook_state",
                "webhook_attempts",
                "webhook_next_at",
                "webhook_error",
                "webhook_done_at",
            ),
        }
    }
}

/// Where one channel of one alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelState {
    /// Not delivered yet (possibly after failed attempts).
    Pending,
    Sent,
    /// Not configured when its turn came; nothing to deliver.
    Skipped,
    /// Given up: the stored alert could not be read back.
    Abandoned,
}

impl ChannelState {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelState::Pending => "pending",
            ChannelState::Sent => "sent",
            ChannelState::Skipped => "skipped",
            ChannelState::Abandoned => "abandoned",
        }
    }

    fn parse(s: &str) -> Option<ChannelState> {
        Some(match s {
            "pending" => ChannelState::Pending,
            "sent" => ChannelState::Sent,
            "skipped" => ChannelState::Skipped,
            "abandoned" => ChannelState::Abandoned,
            _ => return None,
        })
    }
}

/// One channel's delivery record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelStatus {
    pub state: ChannelState,
    /// Failed attempts so far.
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    /// When it was sent, skipped or abandoned.
    pub done_at: Option<DateTime<Utc>>,
}

/// An alert in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub id: String,
    pub dedupe_key: String,
    pub payload: AlertPayload,
    pub created_at: DateTime<Utc>,
    pub email: ChannelStatus,
    pub webhook: ChannelStatus,
}

impl OutboxEntry {
    pub fn channel(&self, c: Channel) -> &ChannelStatus {
        match c {
            Channel::Email => &self.email,
            Channel::Webhook => &self.webhook,
        }
    }

    /// Whether channel `c` should be attempted at `now`.
    pub fn is_due(&self, c: Channel, now: DateTime<Utc>) -> bool {
        let s = self.channel(c);
        s.state == ChannelState::Pending && s.next_attempt_at <= now
    }
}

/// What `enqueue` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The id of the stored alert: the new one, or the one already there.
    pub id: String,
    /// False when the same limit, period and kind was already enqueued.
    pub new: bool,
}

/// When to try again after the `failures`-th failed attempt (1-based): 30 s,
/// doubling, capped at one hour.
pub fn retry_delay(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(20);
    Duration::seconds(BACKOFF_BASE_SECS.saturating_mul(1i64 << shift).min(BACKOFF_MAX_SECS))
}

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(MAX_ERROR_LEN) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS alert_outbox (
        id TEXT PRIMARY KEY,
        dedupe_key TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        limit_id TEXT NOT NULL,
        workspace_id TEXT,
        payload TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        sent_at BIGINT,
        email_state TEXT NOT NULL,
        email_attempts BIGINT NOT NULL DEFAULT 0,
        email_next_at BIGINT NOT NULL,
        email_error TEXT,
        email_done_at BIGINT,
        webhook_state TEXT NOT NULL,
        webhook_attempts BIGINT NOT NULL DEFAULT 0,
        webhook_next_at BIGINT NOT NULL,
        webhook_error TEXT,
        webhook_done_at BIGINT
    )",
    "CREATE INDEX IF NOT EXISTS alert_outbox_email_due ON alert_outbox (email_state, email_next_at)",
    "CREATE INDEX IF NOT EXISTS alert_outbox_webhook_due ON alert_outbox (webhook_state, webhook_next_at)",
];

const COLUMNS: &str = "id, dedupe_key, payload, created_at, \
    email_state, email_attempts, email_next_at, email_error, email_done_at, \
    webhook_state, webhook_attempts, webhook_next_at, webhook_error, webhook_done_at";

/// The alert outbox.
#[derive(Debug, Clone)]
pub struct Outbox {
    db: Db,
}

impl Outbox {
    /// The outbox in an SQLite database ([`Store::outbox`](crate::Store::outbox)
    /// gives the store's own).
    pub fn new(pool: SqlitePool) -> Outbox {
        Outbox { db: Db::Sqlite(pool) }
    }

    pub(crate) fn on(db: Db) -> Outbox {
        Outbox { db }
    }

    /// Creates the outbox table and its indexes if they do not exist. On
    /// PostgreSQL a migration creates them (replicas starting together would
    /// race on `CREATE TABLE IF NOT EXISTS`), so there is nothing to do.
    pub async fn init(&self) -> Result<(), OutboxError> {
        match &self.db {
            Db::Sqlite(pool) => {
                for stmt in SCHEMA {
                    sqlx::query(stmt).execute(pool).await?;
                }
                Ok(())
            }
            Db::Postgres(_) => Ok(()),
        }
    }

    /// Records an alert, due on both channels at once, unless one with the same
    /// [`AlertPayload::dedupe_key`] is already there.
    pub async fn enqueue(&self, alert: &AlertPayload, now: DateTime<Utc>) -> Result<Enqueued, OutboxError> {
        on_db!(&self.db, |pool| {
            let key = alert.dedupe_key();
            let payload = serde_json::to_string(alert)?;
            let now = millis(now);
            // No conflict target: a clash on either the id or the dedupe key is
            // "already there", sorted out below.
            let inserted = sqlx::query(
                "INSERT INTO alert_outbox (id, dedupe_key, kind, limit_id, workspace_id, payload, created_at,
                email_state, email_next_at, webhook_state, webhook_next_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $7, 'pending', $7)
             ON CONFLICT DO NOTHING",
            )
            .bind(&alert.event_id)
            .bind(&key)
            .bind(alert.kind.as_str())
            .bind(&alert.limit_id)
            .bind(&alert.workspace_id)
            .bind(&payload)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected();
            if inserted == 1 {
                return Ok(Enqueued {
                    id: alert.event_id.clone(),
                    new: true,
                });
            }
            let existing: Option<String> = sqlx::query_scalar("SELECT id FROM alert_outbox WHERE dedupe_key = $1")
                .bind(&key)
                .fetch_optional(pool)
                .await?;
            match existing {
                Some(id) => Ok(Enqueued { id, new: false }),
                None => Err(OutboxError::IdConflict(alert.event_id.clone())),
            }
        })
    }

    /// Alerts with at least one channel pending whose next attempt time has
    /// come, oldest first, at most `max`. A row whose payload cannot be read
    /// back is abandoned (logged, never retried) rather than blocking the
    /// queue forever.
    pub async fn due(&self, now: DateTime<Utc>, max: u32) -> Result<Vec<OutboxEntry>, OutboxError> {
        on_db!(&self.db, |pool| {
            let rows = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM alert_outbox
             WHERE (email_state = 'pending' AND email_next_at <= $1)
                OR (webhook_state = 'pending' AND webhook_next_at <= $1)
             ORDER BY created_at, id
             LIMIT $2"
            ))
            .bind(millis(now))
            .bind(i64::from(max))
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                match entry_from_row(&row) {
                    Ok(e) => out.push(e),
                    Err(OutboxError::Corrupt { id, what }) => {
                        tracing::error!(alert_id = %id, error = %what, "abandoning unreadable alert");
                        self.abandon(&id, &what, now).await?;
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        })
    }

    /// Takes channel `channel` of alert `id` for one delivery attempt, if
    /// no other dispatcher took it since `seen_next_at` was read (the
    /// channel's `next_attempt_at` in [`Outbox::due`]'s entry): its next
    /// attempt moves to `lease_until`, a compare-and-set that only one
    /// dispatcher wins. The winner then marks it sent, skipped or failed; if
    /// it dies first, the channel is due again at `lease_until`.
    pub async fn claim(
        &self,
        id: &str,
        channel: Channel,
        seen_next_at: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, OutboxError> {
        on_db!(&self.db, |pool| {
            let (state, _, next, _, _) = channel.cols();
            let sql = format!(
                "UPDATE alert_outbox SET {next} = $3
             WHERE id = $1 AND {state} = 'pending' AND {next} = $2"
            );
            let n = sqlx::query(&sql)
                .bind(id)
                .bind(millis(seen_next_at))
                .bind(millis(lease_until))
                .execute(pool)
                .await?
                .rows_affected();
            Ok(n == 1)
        })
    }

    /// One alert by id.
    pub async fn get(&self, id: &str) -> Result<Option<OutboxEntry>, OutboxError> {
        on_db!(&self.db, |pool| {
            let row = sqlx::query(&format!("SELECT {COLUMNS} FROM alert_outbox WHERE id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await?;
            row.map(|r| entry_from_row(&r)).transpose()
        })
    }

    /// Channel `channel` of alert `id` was delivered. Returns false when it
    /// was no longer pending (already sent or skipped).
    pub async fn mark_sent(&self, id: &str, channel: Channel, now: DateTime<Utc>) -> Result<bool, OutboxError> {
        on_db!(&self.db, |pool| {
            let (state, _, _, error, done) = channel.cols();
            let sql = format!(
                "UPDATE alert_outbox SET {state} = 'sent', {error} = NULL, {done} = $2,
                sent_at = COALESCE(sent_at, $2)
             WHERE id = $1 AND {state} = 'pending'"
            );
            let n = sqlx::query(&sql)
                .bind(id)
                .bind(millis(now))
                .execute(pool)
                .await?
                .rows_affected();
            self.updated_or_missing(id, n).await
        })
    }

    /// Channel `channel` of alert `id` is not configured: nothing to deliver.
    pub async fn mark_skipped(&self, id: &str, channel: Channel, now: DateTime<Utc>) -> Result<bool, OutboxError> {
        on_db!(&self.db, |pool| {
            let (state, _, _, _, done) = channel.cols();
            let sql = format!(
                "UPDATE alert_outbox SET {state} = 'skipped', {done} = $2
             WHERE id = $1 AND {state} = 'pending'"
            );
            let n = sqlx::query(&sql)
                .bind(id)
                .bind(millis(now))
                .execute(pool)
                .await?
                .rows_affected();
            self.updated_or_missing(id, n).await
        })
    }

    /// An attempt on `channel` failed with `error`; try again at
    /// `next_attempt_at` (see [`retry_delay`]). Returns false when the channel
    /// was no longer pending.
    pub async fn mark_failed(
        &self,
        id: &str,
        channel: Channel,
        error: &str,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<bool, OutboxError> {
        on_db!(&self.db, |pool| {
            let (state, attempts, next, err, _) = channel.cols();
            let sql = format!(
                "UPDATE alert_outbox SET {attempts} = {attempts} + 1, {err} = $2, {next} = $3
             WHERE id = $1 AND {state} = 'pending'"
            );
            let n = sqlx::query(&sql)
                .bind(id)
                .bind(truncate(error))
                .bind(millis(next_attempt_at))
                .execute(pool)
                .await?
                .rows_affected();
            self.updated_or_missing(id, n).await
        })
    }

    /// How many alerts reached someone (at least one channel delivered),
    /// optionally for one workspace and within `[since, until)` of the first
    /// delivery.
    pub async fn count_sent(
        &self,
        workspace_id: Option<&str>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Result<u64, OutboxError> {
        let mut sql = String::from("SELECT COUNT(*) FROM alert_outbox WHERE sent_at IS NOT NULL");
        let mut n = 0;
        let mut cond = |c: &str| {
            n += 1;
            sql.push_str(&format!(" AND {c} ${n}"));
        };
        if workspace_id.is_some() {
            cond("workspace_id =");
        }
        if since.is_some() {
            cond("sent_at >=");
        }
        if until.is_some() {
            cond("sent_at <");
        }
        on_db!(&self.db, |pool| {
            let mut q = sqlx::query_scalar::<_, i64>(&sql);
            if let Some(ws) = workspace_id {
                q = q.bind(ws);
            }
            if let Some(t) = since {
                q = q.bind(millis(t));
            }
            if let Some(t) = until {
                q = q.bind(millis(t));
            }
            let n = q.fetch_one(pool).await?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    async fn abandon(&self, id: &str, why: &str, now: DateTime<Utc>) -> Result<(), OutboxError> {
        on_db!(&self.db, |pool| {
            sqlx::query(
                "UPDATE alert_outbox SET
                email_state = CASE WHEN email_state = 'pending' THEN 'abandoned' ELSE email_state END,
                email_error = CASE WHEN email_state = 'pending' THEN $2 ELSE email_error END,
                email_done_at = CASE WHEN email_state = 'pending' THEN $3 ELSE email_done_at END,
                webhook_state = CASE WHEN webhook_state = 'pending' THEN 'abandoned' ELSE webhook_state END,
                webhook_error = CASE WHEN webhook_state = 'pending' THEN $2 ELSE webhook_error END,
                webhook_done_at = CASE WHEN webhook_state = 'pending' THEN $3 ELSE webhook_done_at END
             WHERE id = $1",
            )
            .bind(id)
            .bind(truncate(why))
            .bind(millis(now))
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    async fn updated_or_missing(&self, id: &str, rows: u64) -> Result<bool, OutboxError> {
        on_db!(&self.db, |pool| {
            if rows > 0 {
                return Ok(true);
            }
            let exists: Option<String> = sqlx::query_scalar("SELECT id FROM alert_outbox WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?;
            match exists {
                Some(_) => Ok(false),
                None => Err(OutboxError::NotFound(id.to_owned())),
            }
        })
    }
}

fn entry_from_row<R>(row: &R) -> Result<OutboxEntry, OutboxError>
where
    R: Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let id: String = row.try_get("id")?;
    let corrupt = |what: String| OutboxError::Corrupt { id: id.clone(), what };
    let time = |col: &str| -> Result<DateTime<Utc>, OutboxError> {
        let ms: i64 = row.try_get(col)?;
        DateTime::from_timestamp_millis(ms).ok_or_else(|| corrupt(format!("{col} is out of range")))
    };
    let opt_time = |col: &str| -> Result<Option<DateTime<Utc>>, OutboxError> {
        let ms: Option<i64> = row.try_get(col)?;
        ms.map(|ms| DateTime::from_timestamp_millis(ms).ok_or_else(|| corrupt(format!("{col} is out of range"))))
            .transpose()
    };
    let status = |c: Channel| -> Result<ChannelStatus, OutboxError> {
        let (state, attempts, next, error, done) = c.cols();
        let s: String = row.try_get(state)?;
        let a: i64 = row.try_get(attempts)?;
        Ok(ChannelStatus {
            state: ChannelState::parse(&s).ok_or_else(|| corrupt(format!("{state} is unknown")))?,
            attempts: u32::try_from(a).map_err(|_| corrupt(format!("{attempts} is out of range")))?,
            next_attempt_at: time(next)?,
            last_error: row.try_get(error)?,
            done_at: opt_time(done)?,
        })
    };
    let payload: String = row.try_get("payload")?;
    let payload: AlertPayload =
        serde_json::from_str(&payload).map_err(|e| corrupt(format!("payload is not a valid alert: {e}")))?;
    Ok(OutboxEntry {
        dedupe_key: row.try_get("dedupe_key")?,
        payload,
        created_at: time("created_at")?,
        email: status(Channel::Email)?,
        webhook: status(Channel::Webhook)?,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use sqlx::sqlite::SqlitePoolOptions;

    async fn outbox() -> Outbox {
        // One connection: every connection to :memory: is its own database.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        let o = Outbox::new(pool);
        o.init().await.unwrap();
        o.init().await.unwrap(); // idempotent
        o
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 10, 12, 0, 0).unwrap()
    }

    fn alert(event: &str, limit: &str, kind: AlertKind) -> AlertPayload {
        AlertPayload {
            event_id: event.into(),
            kind,
            level: "api_key".into(),
            limit_id: limit.into(),
            name: "prod key".into(),
            workspace_id: Some("ws-a".into()),
            limit_type: BudgetKind::Cost,
            consumed: "80.5".into(),
            credit_limit: "100".into(),
            alert_threshold: Some("80".into()),
            period_start: Utc.with_ymd_and_hms(2025, 3, 1, 0, 0, 0).unwrap(),
            next_reset_at: Some(Utc.with_ymd_and_hms(2025, 4, 1, 0, 0, 0).unwrap()),
            recipients: vec!["owner@example.com".into()],
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let secs: Vec<i64> = (1..=9).map(|n| retry_delay(n).num_seconds()).collect();
        assert_eq!(secs, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(retry_delay(0).num_seconds(), 30);
        assert_eq!(retry_delay(u32::MAX).num_seconds(), 3600);
    }

    #[test]
    fn payload_wire_shape() {
        let v = serde_json::to_value(alert("e1", "lim", AlertKind::Exhausted)).unwrap();
        assert_eq!(v["kind"], "exhausted");
        assert_eq!(v["limit_type"], "cost");
        assert_eq!(v["consumed"], "80.5");
        assert_eq!(v["period_start"], "2025-03-01T00:00:00Z");
    }

    #[tokio::test]
    async fn enqueue_is_idempotent_per_limit_period_and_kind() {
        let o = outbox().await;
        let a = o
            .enqueue(&alert("e1", "lim-1", AlertKind::Threshold), t0())
            .await
            .unwrap();
        assert_eq!(
            a,
            Enqueued {
                id: "e1".into(),
                new: true
            }
        );
        // Same limit and period, another event id (a racing settle call).
        let b = o
            .enqueue(&alert("e2", "lim-1", AlertKind::Threshold), t0())
            .await
            .unwrap();
        assert_eq!(
            b,
            Enqueued {
                id: "e1".into(),
                new: false
            }
        );
        // Exhausted is a different alert; so is another period or limit.
        assert!(
            o.enqueue(&alert("e3", "lim-1", AlertKind::Exhausted), t0())
                .await
                .unwrap()
                .new
        );
        let mut next = alert("e4", "lim-1", AlertKind::Threshold);
        next.period_start = Utc.with_ymd_and_hms(2025, 4, 1, 0, 0, 0).unwrap();
        assert!(o.enqueue(&next, t0()).await.unwrap().new);
        assert!(
            o.enqueue(&alert("e5", "lim-2", AlertKind::Threshold), t0())
                .await
                .unwrap()
                .new
        );
        assert_eq!(o.due(t0(), 100).await.unwrap().len(), 4);
        // A reused event id for a different alert is an error, not a silent drop.
        assert!(matches!(
            o.enqueue(&alert("e1", "lim-3", AlertKind::Threshold), t0()).await,
            Err(OutboxError::IdConflict(_))
        ));
    }

    #[tokio::test]
    async fn due_respects_time_order_and_max() {
        let o = outbox().await;
        o.enqueue(&alert("e1", "l1", AlertKind::Threshold), t0()).await.unwrap();
        o.enqueue(&alert("e2", "l2", AlertKind::Threshold), t0() + Duration::seconds(1))
            .await
            .unwrap();
        assert!(o.due(t0() - Duration::seconds(1), 10).await.unwrap().is_empty());
        let d = o.due(t0() + Duration::seconds(5), 10).await.unwrap();
        assert_eq!(d.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["e1", "e2"]);
        assert_eq!(d[0].payload, alert("e1", "l1", AlertKind::Threshold));
        assert!(d[0].is_due(Channel::Email, t0()));
        assert_eq!(o.due(t0() + Duration::seconds(5), 1).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn channels_are_tracked_independently_with_backoff() {
        let o = outbox().await;
        o.enqueue(&alert("e1", "l1", AlertKind::Threshold), t0()).await.unwrap();
        assert!(o.mark_sent("e1", Channel::Email, t0()).await.unwrap());
        let retry = t0() + retry_delay(1);
        assert!(o.mark_failed("e1", Channel::Webhook, "HTTP 500", retry).await.unwrap());

        // Nothing due before the retry time; afterwards only the webhook is.
        assert!(o.due(t0() + Duration::seconds(29), 10).await.unwrap().is_empty());
        let d = o.due(retry, 10).await.unwrap();
        assert_eq!(d.len(), 1);
        assert!(!d[0].is_due(Channel::Email, retry));
        assert!(d[0].is_due(Channel::Webhook, retry));
        assert_eq!(d[0].email.state, ChannelState::Sent);
        assert_eq!(d[0].email.done_at, Some(t0()));
        assert_eq!(d[0].webhook.attempts, 1);
        assert_eq!(d[0].webhook.last_error.as_deref(), Some("HTTP 500"));

        assert!(o.mark_sent("e1", Channel::Webhook, retry).await.unwrap());
        assert!(o.due(retry + Duration::days(1), 10).await.unwrap().is_empty());
        // Marking again reports "already done" and changes nothing.
        assert!(!o.mark_sent("e1", Channel::Webhook, retry).await.unwrap());
        assert!(!o.mark_failed("e1", Channel::Email, "late", retry).await.unwrap());
        assert_eq!(o.get("e1").await.unwrap().unwrap().email.state, ChannelState::Sent);
    }

    #[tokio::test]
    async fn of_two_dispatchers_that_read_a_channel_only_one_claims_it() {
        let o = outbox().await;
        o.enqueue(&alert("e1", "l1", AlertKind::Threshold), t0()).await.unwrap();
        // Both read the entry as due; the first claim wins, the second,
        // made from the same reading, loses.
        let (a, b) = (o.due(t0(), 10).await.unwrap(), o.due(t0(), 10).await.unwrap());
        let lease = t0() + Duration::minutes(5);
        let seen = a[0].email.next_attempt_at;
        assert_eq!(seen, b[0].email.next_attempt_at);
        assert!(o.claim("e1", Channel::Email, seen, lease).await.unwrap());
        assert!(!o.claim("e1", Channel::Email, seen, lease).await.unwrap());
        // The other channel is claimed on its own.
        assert!(o
            .claim("e1", Channel::Webhook, b[0].webhook.next_attempt_at, lease)
            .await
            .unwrap());
        // A claimed channel is not due until its lease ends: a dispatcher
        // that died holding it leaves it to the next one then.
        assert!(o.due(lease - Duration::seconds(1), 10).await.unwrap().is_empty());
        let again = o.due(lease, 10).await.unwrap();
        assert!(again[0].is_due(Channel::Email, lease));
        assert!(o
            .claim("e1", Channel::Email, lease, lease + Duration::minutes(5))
            .await
            .unwrap());
        // Sent: nothing to claim any more; an unknown id claims nothing.
        assert!(o.mark_sent("e1", Channel::Email, lease).await.unwrap());
        assert!(!o
            .claim("e1", Channel::Email, lease + Duration::minutes(5), lease)
            .await
            .unwrap());
        assert!(!o.claim("nope", Channel::Email, t0(), lease).await.unwrap());
    }

    #[tokio::test]
    async fn skipped_channel_is_done() {
        let o = outbox().await;
        o.enqueue(&alert("e1", "l1", AlertKind::Threshold), t0()).await.unwrap();
        assert!(o.mark_skipped("e1", Channel::Email, t0()).await.unwrap());
        assert!(!o.mark_skipped("e1", Channel::Email, t0()).await.unwrap());
        let d = o.due(t0(), 10).await.unwrap();
        assert_eq!(d[0].email.state, ChannelState::Skipped);
        o.mark_skipped("e1", Channel::Webhook, t0()).await.unwrap();
        assert!(o.due(t0(), 10).await.unwrap().is_empty());
        // Skipped everywhere is not "sent".
        assert_eq!(o.count_sent(None, None, None).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn unknown_ids_are_not_found() {
        let o = outbox().await;
        for r in [
            o.mark_sent("nope", Channel::Email, t0()).await,
            o.mark_skipped("nope", Channel::Webhook, t0()).await,
            o.mark_failed("nope", Channel::Email, "x", t0()).await,
        ] {
            assert!(matches!(r, Err(OutboxError::NotFound(_))));
        }
        assert!(o.get("nope").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn long_errors_are_truncated() {
        let o = outbox().await;
        o.enqueue(&alert("e1", "l1", AlertKind::Threshold), t0()).await.unwrap();
        let long = "é".repeat(2000);
        o.mark_failed("e1", Channel::Email, &long, t0()).await.unwrap();
        let e = o.get("e1").await.unwrap().unwrap();
        assert_eq!(e.email.last_error.unwrap().chars().count(), MAX_ERROR_LEN);
    }

    #[tokio::test]
    async fn counts_sent_alerts() {
        let o = outbox().await;
        o.enqueue(&alert("e1", "l1", AlertKind::Threshold), t0()).await.unwrap();
        o.enqueue(&alert("e2", "l2", AlertKind::Threshold), t0()).await.unwrap();
        let mut other = alert("e3", "l3", AlertKind::Exhausted);
        other.workspace_id = Some("ws-b".into());
        o.enqueue(&other, t0()).await.unwrap();
        o.mark_sent("e1", Channel::Email, t0()).await.unwrap();
        o.mark_sent("e1", Channel::Webhook, t0() + Duration::hours(1))
            .await
            .unwrap();
        o.mark_sent("e3", Channel::Webhook, t0() + Duration::hours(2))
            .await
            .unwrap();
        assert_eq!(o.count_sent(None, None, None).await.unwrap(), 2);
        assert_eq!(o.count_sent(Some("ws-a"), None, None).await.unwrap(), 1);
        assert_eq!(o.count_sent(Some("ws-c"), None, None).await.unwrap(), 0);
        let h = Duration::hours(1);
        assert_eq!(o.count_sent(None, Some(t0() + h), None).await.unwrap(), 1);
        assert_eq!(o.count_sent(None, None, Some(t0() + h)).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn corrupt_rows_are_abandoned_not_blocking() {
        let o = outbox().await;
        o.enqueue(&alert("e1", "l1", AlertKind::Threshold), t0()).await.unwrap();
        o.enqueue(&alert("e2", "l2", AlertKind::Threshold), t0()).await.unwrap();
        sqlx::query("UPDATE alert_outbox SET payload = 'not json' WHERE id = 'e1'")
            .execute(o.db.sqlite().unwrap())
            .await
            .unwrap();
        let d = o.due(t0(), 10).await.unwrap();
        assert_eq!(d.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["e2"]);
        let row = sqlx::query("SELECT email_state, webhook_error FROM alert_outbox WHERE id = 'e1'")
            .fetch_one(o.db.sqlite().unwrap())
            .await
            .unwrap();
        assert_eq!(row.get::<String, _>(0), "abandoned");
        assert!(row.get::<String, _>(1).contains("payload"));
        assert!(matches!(o.get("e1").await, Err(OutboxError::Corrupt { .. })));
        // An unknown state is corrupt too.
        sqlx::query("UPDATE alert_outbox SET email_state = 'weird' WHERE id = 'e2'")
            .execute(o.db.sqlite().unwrap())
            .await
            .unwrap();
        assert!(matches!(o.get("e2").await, Err(OutboxError::Corrupt { .. })));
    }

    #[tokio::test]
    async fn database_errors_surface() {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        let o = Outbox::new(pool); // no init: the table is missing
        assert!(matches!(o.due(t0(), 1).await, Err(OutboxError::Db(_))));
        assert!(matches!(
            o.enqueue(&alert("e1", "l1", AlertKind::Threshold), t0()).await,
            Err(OutboxError::Db(_))
        ));
    }
}
