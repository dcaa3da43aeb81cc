//! Limit counters in Redis, shared by every replica of the gateway.
//!
//! Every call is one run of one Lua script (`redis.lua`), atomic over all the
//! keys it names: admission reserves against every applicable limit in one
//! step, settlement (or release) replaces the reservation with the actual
//! usage in one step, so a request costs two round trips, and alerts are
//! marked in the same step that crosses them, so each fires once across
//! replicas. The rules stay in [`tollgate_core::admission`]: this side works
//! out each check's bounds and alert ranges, and the script compares and adds.
//!
//! Keys are `<prefix>{<group>}:…`: the hash tag keeps a request's keys in
//! one Redis Cluster slot. A reservation is an entry with a lease
//! ([`RedisSettings::lease`]) in its counter, so a replica that dies holding
//! one cannot hold budget for longer than that; counters expire a minute
//! after their window ends. The group's `epoch` key marks its counters as
//! rebuilt from the request log on one Redis server (it holds that server's
//! `run_id`): when Redis restarts (empty, or from a snapshot that misses the
//! latest writes) or a failover promotes a replica (which may have missed
//! the last writes its master acknowledged: replication is asynchronous),
//! admission answers [`CounterError::NeedsRestore`] until one replica of the
//! gateway has rebuilt the group.
//!
//! Every call is bounded by [`RedisSettings::timeout`]; the connection
//! reconnects by itself (one server or a Redis Cluster with
//! [`RedisSettings::cluster`], see `redis_conn`), so the counters come back
//! by themselves when Redis does. While Redis cannot be reached, admission
//! fails ([`CounterError::Unavailable`]), or with [`OnRedisError::Open`]
//! admits without counting and logs so at error level.

use super::redis_conn::{eval, Lua, RedisClient, RedisConn};
use super::{
    AdmitError, Consumption, CounterError, Counters, Held, Place, ReleaseOnDrop, Reservation, RestoreTurn, MAX_CHECKS,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use rand::RngCore;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tollgate_core::admission::{
    Actual, AlertEvent, AlertKind, CounterKey, Counts, Demand, LimitCheck, LimitId, Plan, RateHeaders, Rule, Window,
};
use tollgate_core::limits::Amount;

const SCRIPT: &str = include_str!("redis.lua");

/// The default key prefix.
pub const DEFAULT_KEY_PREFIX: &str = "tollgate:";
/// The default bound on one call to Redis.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long after its window ends a counter is kept (clocks of replicas and
/// Redis may differ a little).
const WINDOW_GRACE_MS: i64 = 60_000;
/// How long one replica may hold a group's rebuild before another takes over.
const RESTORE_LOCK_MS: u64 = 10_000;
/// Admitting without limits is logged at most this often.
const OPEN_LOG_EVERY: Duration = Duration::from_secs(10);

/// What admission does while Redis cannot be reached
/// (`limits_on_redis_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnRedisError {
    /// Refuse (the gateway answers 503).
    #[default]
    Closed,
    /// Admit without counting, logged at error level.
    Open,
}

impl OnRedisError {
    /// `closed` or `open`.
    pub fn parse(text: &str) -> Option<OnRedisError> {
        match text {
            "closed" => Some(OnRedisError::Closed),
            "open" => Some(OnRedisError::Open),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OnRedisError::Closed => "closed",
            OnRedisError::Open => "open",
        }
    }
}

/// How to reach Redis and use it.
#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`; with `cluster`, one or
    /// more seed nodes of a Redis Cluster, comma separated.
    pub url: String,
    /// `url` names a Redis Cluster (`redis_cluster`).
    pub cluster: bool,
    /// Put before every key, so that deployments can share one Redis; no
    /// braces (they would change the hash tag).
    pub key_prefix: String,
    pub on_error: OnRedisError,
    /// How long a reservation holds its worst case if it is never settled or
    /// released (its replica died): longer than any request may take.
    pub lease: Duration,
    /// The longest one call to Redis may take, connecting included.
    pub timeout: Duration,
}

impl RedisSettings {
    /// Settings with the default prefix, fail closed, a 1 s timeout and the
    /// given lease.
    pub fn new(url: impl Into<String>, lease: Duration) -> RedisSettings {
        RedisSettings {
            url: url.into(),
            cluster: false,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            on_error: OnRedisError::Closed,
            lease,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.debug_struct("RedisSettings")
            .field("url", &"<set>")
            .field("cluster", &self.cluster)
            .field("key_prefix", &self.key_prefix)
            .field("on_error", &self.on_error)
            .field("lease", &self.lease)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Limit counters in Redis. Clones share the connection.
#[derive(Clone)]
pub struct RedisCounters {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCounters")
            .field("prefix", &self.inner.prefix)
            .field("on_error", &self.inner.on_error)
            .finish_non_exhaustive()
    }
}

pub(super) struct Inner {
    /// Itself, for releasing a dropped reservation from a spawned task.
    me: Weak<Inner>,
    client: RedisClient,
    /// Connected on first use, so that the gateway starts while Redis is down.
    conn: tokio::sync::OnceCell<RedisConn>,
    script: Lua,
    pub(super) prefix: String,
    on_error: OnRedisError,
    lease_ms: i64,
    pub(super) timeout: Duration,
    /// This process: names its reservations and its rebuild lock.
    pub(super) token: String,
    /// The groups this process is rebuilding, each with the `run_id` of the
    /// Redis server the rebuild began on (see `restored` in `redis.lua`).
    rebuilding: Mutex<std::collections::HashMap<String, String>>,
    pub(super) next_id: AtomicU64,
    /// When admitting without limits was last logged, and how often since.
    open_log: Mutex<(Option<Instant>, u64)>,
}

impl RedisCounters {
    /// Checks the settings; connects on first use.
    pub fn new(settings: RedisSettings) -> Result<RedisCounters, CounterError> {
        if settings.key_prefix.contains(['{', '}']) {
            return Err(CounterError::Settings(format!(
                "redis_key_prefix {:?} must not contain '{{' or '}}' (they would change the keys' hash tag)",
                settings.key_prefix
            )));
        }
        if settings.timeout.is_zero() || settings.lease.is_zero() {
            return Err(CounterError::Settings(
                "the Redis timeout and reservation lease must be positive".into(),
            ));
        }
        let client =
            RedisClient::open(&settings.url, settings.cluster, settings.timeout).map_err(CounterError::Settings)?;
        let mut token = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut token);
        let inner = Arc::new_cyclic(|me| Inner {
            me: me.clone(),
            client,
            conn: tokio::sync::OnceCell::new(),
            script: Lua::new(SCRIPT),
            prefix: settings.key_prefix,
            on_error: settings.on_error,
            lease_ms: i64::try_from(settings.lease.as_millis()).unwrap_or(i64::MAX),
            timeout: settings.timeout,
            token: hex::encode(token),
            rebuilding: Mutex::default(),
            next_id: AtomicU64::new(0),
            open_log: Mutex::new((None, 0)),
        });
        Ok(RedisCounters { inner })
    }

    /// The hash tag of a group's keys with the prefix: `<prefix>{<group>}`.
    pub fn group_key_prefix(&self, group: &str) -> Result<String, CounterError> {
        self.inner.tag(group)
    }

    /// Circuit breakers in the same Redis, on the same connection and under
    /// the same key prefix.
    pub fn breakers(&self) -> super::RedisBreakers {
        super::RedisBreakers::new(self.inner.clone())
    }

    fn owner_ptr(&self) -> *const () {
        Arc::as_ptr(&self.inner) as *const ()
    }

    fn key(id: &LimitId, rule: &Rule, now: DateTime<Utc>) -> CounterKey {
        CounterKey::new(id.clone(), rule, now)
    }
}

impl Inner {
    fn tag(&self, group: &str) -> Result<String, CounterError> {
        if group.contains(['{', '}']) {
            return Err(CounterError::InvalidGroup(group.to_owned()));
        }
        Ok(format!("{}{{{group}}}", self.prefix))
    }

    pub(super) async fn connection(&self) -> redis::RedisResult<RedisConn> {
        self.conn
            .get_or_try_init(|| self.client.connect(self.timeout))
            .await
            .cloned()
    }

    /// Runs `fut` within the timeout; any failure is `Unavailable`.
    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, CounterError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(CounterError::Unavailable(format!("Redis: {e}"))),
            Err(_) => Err(CounterError::Unavailable(format!(
                "Redis did not answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    /// One run of the script: one round trip (one more, once, after the
    /// node lost the script: the call again with its text).
    async fn run(&self, keys: &[String], args: &[String]) -> Result<Vec<String>, CounterError> {
        self.bounded(async {
            let mut conn = self.connection().await?;
            eval(&mut conn, &self.script, keys, args).await
        })
        .await
    }

    fn empty_reservation(&self) -> Option<Reservation> {
        let me: Arc<dyn ReleaseOnDrop> = self.me.upgrade()?;
        Some(Reservation::new(Default::default(), RateHeaders::default(), None, me))
    }

    /// Admission when Redis failed: refused, or admitted without limits.
    fn unchecked(&self, e: CounterError) -> Result<Reservation, AdmitError> {
        if self.on_error == OnRedisError::Closed {
            return Err(e.into());
        }
        {
            let mut log = self.open_log.lock();
            log.1 += 1;
            if log.0.is_none_or(|at| at.elapsed() >= OPEN_LOG_EVERY) {
                tracing::error!(
                    error = %e,
                    admitted_unchecked = log.1,
                    "limit counters unavailable: admitting requests WITHOUT checking limits (limits_on_redis_error = open)"
                );
                *log = (Some(Instant::now()), 0);
            }
        }
        self.empty_reservation().ok_or_else(|| e.into())
    }

    /// Settles (`actual` given) or releases what a reservation holds.
    async fn finish(
        &self,
        held: &[Option<Held>; MAX_CHECKS],
        place: Option<&Place>,
        actual: Option<&Actual>,
    ) -> Result<Vec<AlertEvent>, CounterError> {
        let Some(place) = place else { return Ok(Vec::new()) };
        let entries: Vec<&Held> = held.iter().flatten().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let tag = self.tag(&place.group)?;
        let mut keys = Vec::with_capacity(2 * entries.len());
        let mut args = Vec::with_capacity(1 + 7 * entries.len());
        args.push("settle".to_owned());
        let mut added = Vec::with_capacity(entries.len());
        for h in &entries {
            let (hash, leases) = counter_keys(&tag, &h.key);
            keys.push(hash);
            keys.push(leases);
            let add = actual.map_or(0, |a| h.key.measure.settled(a));
            added.push(add);
            args.push(member(&place.id, h.index, h.reserved));
            args.push(h.reserved.to_string());
            args.push(add.to_string());
            let ranges = match (actual, h.marks) {
                (Some(_), Some(marks)) => marks.firing(add),
                _ => [None, None],
            };
            for r in ranges {
                match r {
                    Some(r) => {
                        args.push(r.start.to_string());
                        args.push(r.end.to_string());
                    }
                    None => args.extend([String::new(), String::new()]),
                }
            }
        }
        let answer = self.run(&keys, &args).await?;
        if answer.len() != 3 * entries.len() {
            return Err(unexpected(&answer));
        }
        let mut events = Vec::new();
        for (h, out) in entries.iter().zip(answer.chunks(3)) {
            let (Some(marks), false) = (h.marks, out[0].is_empty()) else {
                continue;
            };
            let consumed = number(&out[0], &answer)?;
            for (kind, fired) in [(AlertKind::Threshold, &out[1]), (AlertKind::Exhausted, &out[2])] {
                if fired == "1" {
                    events.push(AlertEvent {
                        id: h.key.id.clone(),
                        level: h.level,
                        kind,
                        consumed,
                        limit: marks.credit_limit,
                        period_start: h.key.start,
                    });
                }
            }
        }
        Ok(events)
    }
}

impl ReleaseOnDrop for Inner {
    fn release_dropped(&self, held: &[Option<Held>; MAX_CHECKS], place: Option<&Place>) {
        let (Some(place), Some(me)) = (place, self.me.upgrade()) else {
            return;
        };
        if held.iter().all(Option::is_none) {
            return;
        }
        let (held, place) = (held.clone(), place.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = me.finish(&held, Some(&place), None).await {
                        tracing::warn!(error = %e, "releasing a dropped reservation failed; its lease will give it back");
                    }
                });
            }
            Err(_) => tracing::warn!("a reservation dropped outside the runtime is given back when its lease ends"),
        }
    }
}

/// A counter's hash and its reservations' sorted set.
fn counter_keys(tag: &str, key: &CounterKey) -> (String, String) {
    (format!("{tag}:c:{key}"), format!("{tag}:l:{key}"))
}

/// A reservation's entry in a counter's sorted set: `<id>:<check>|<amount>`
/// (empty when nothing is reserved).
fn member(id: &str, index: usize, reserved: Amount) -> String {
    if reserved > 0 {
        format!("{id}:{index}|{reserved}")
    } else {
        String::new()
    }
}

/// A group's epoch and rebuild lock, the keys of `begin` and `restored` in
/// `redis.lua`.
fn rebuild_keys(tag: &str) -> [String; 2] {
    [format!("{tag}:epoch"), format!("{tag}:restoring")]
}

/// Milliseconds a counter of `window` is kept from `now`; empty (no expiry)
/// for a budget that never resets.
fn ttl_ms(window: &Window, now: DateTime<Utc>) -> String {
    window
        .end
        .map(|end| {
            (end - now)
                .num_milliseconds()
                .max(0)
                .saturating_add(WINDOW_GRACE_MS)
                .to_string()
        })
        .unwrap_or_default()
}

fn unexpected(answer: &[String]) -> CounterError {
    CounterError::Unavailable(format!("unexpected answer from the counter script: {answer:?}"))
}

fn number(text: &str, answer: &[String]) -> Result<Amount, CounterError> {
    text.parse().map_err(|_| unexpected(answer))
}

fn counts_at(answer: &[String], at: usize) -> Result<Counts, CounterError> {
    match (answer.get(at), answer.get(at + 1)) {
        (Some(c), Some(r)) => Ok(Counts {
            consumed: number(c, answer)?,
            reserved: number(r, answer)?,
        }),
        _ => Err(unexpected(answer)),
    }
}

/// Escapes a glob pattern's special characters (for `SCAN MATCH`).
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[async_trait]
impl Counters for RedisCounters {
    async fn admit(
        &self,
        now: DateTime<Utc>,
        group: &str,
        checks: &[LimitCheck],
        demand: Demand,
    ) -> Result<Reservation, AdmitError> {
        let inner = &self.inner;
        if checks.len() > MAX_CHECKS {
            return Err(CounterError::TooManyChecks(checks.len()).into());
        }
        let tag = inner.tag(group)?;
        if checks.is_empty() {
            return inner
                .empty_reservation()
                .ok_or_else(|| AdmitError::Counter(CounterError::Unavailable("the counter store is gone".into())));
        }
        let plans: Vec<Plan> = checks.iter().map(|c| Plan::new(c, now, &demand)).collect();
        let id = format!("{}.{}", inner.token, inner.next_id.fetch_add(1, Ordering::Relaxed));
        let now_ms = now.timestamp_millis();
        let mut keys = Vec::with_capacity(1 + 2 * plans.len());
        keys.push(format!("{tag}:epoch"));
        let mut args = Vec::with_capacity(3 + 7 * plans.len());
        args.extend([
            "admit".to_owned(),
            now_ms.to_string(),
            now_ms.saturating_add(inner.lease_ms).to_string(),
        ]);
        for (i, p) in plans.iter().enumerate() {
            let (hash, leases) = counter_keys(&tag, &p.key);
            keys.push(hash);
            keys.push(leases);
            match p.bounds() {
                Some(b) => args.extend([b.max_used.to_string(), b.max_consumed.to_string()]),
                None => args.extend([String::new(), String::new()]),
            }
            args.push(p.consume.to_string());
            args.push(p.reserve.to_string());
            args.push(member(&id, i, p.reserve));
            args.push(ttl_ms(&p.window, now));
            // The script reads no leases of a counter that never holds any.
            args.push(if p.key.measure.reserves() { "1" } else { "0" }.to_owned());
        }
        let answer = match inner.run(&keys, &args).await {
            Ok(a) => a,
            Err(e) => return inner.unchecked(e),
        };
        match answer.first().map(String::as_str) {
            Some("restore") => Err(CounterError::NeedsRestore(group.to_owned()).into()),
            Some("refused") => {
                let i: usize = answer
                    .get(1)
                    .and_then(|i| i.parse().ok())
                    .ok_or_else(|| unexpected(&answer))?;
                let plan = i
                    .checked_sub(1)
                    .and_then(|i| plans.get(i))
                    .ok_or_else(|| unexpected(&answer))?;
                let mut refusal = plan.refusal(counts_at(&answer, 2)?, now);
                // The figures of every rate limit that applies, as they stand
                // with nothing taken.
                for (j, p) in plans.iter().enumerate() {
                    p.add_headers(&mut refusal.headers, counts_at(&answer, 4 + 2 * j)?, now);
                }
                Err(refusal.into())
            }
            Some("ok") if answer.len() == 1 + 2 * plans.len() => {
                let mut headers = RateHeaders::default();
                let mut held: [Option<Held>; MAX_CHECKS] = Default::default();
                let mut n = 0;
                for (index, plan) in plans.into_iter().enumerate() {
                    plan.add_headers(&mut headers, counts_at(&answer, 1 + 2 * index)?, now);
                    // A request-rate limit has nothing left to settle or release.
                    if !plan.key.measure.reserves() {
                        continue;
                    }
                    let marks = plan.budget();
                    held[n] = Some(Held {
                        key: plan.key,
                        level: plan.level,
                        reserved: plan.reserve,
                        marks,
                        index,
                    });
                    n += 1;
                }
                let place = Place {
                    group: Arc::from(group),
                    id: Arc::from(id),
                };
                Ok(Reservation::new(held, headers, Some(place), self.inner.clone()))
            }
            _ => Err(unexpected(&answer).into()),
        }
    }

    async fn settle(&self, mut reservation: Reservation, actual: Actual) -> Result<Vec<AlertEvent>, CounterError> {
        if !reservation.is_owned_by(self.owner_ptr()) {
            return Err(CounterError::ForeignReservation);
        }
        let (held, place) = reservation.close();
        self.inner.finish(&held, place.as_ref(), Some(&actual)).await
    }

    async fn release(&self, mut reservation: Reservation) -> Result<(), CounterError> {
        if !reservation.is_owned_by(self.owner_ptr()) {
            return Err(CounterError::ForeignReservation);
        }
        let (held, place) = reservation.close();
        self.inner.finish(&held, place.as_ref(), None).await.map(drop)
    }

    async fn status(
        &self,
        group: &str,
        id: &LimitId,
        rule: &Rule,
        now: DateTime<Utc>,
    ) -> Result<Consumption, CounterError> {
        let (hash, leases) = counter_keys(&self.inner.tag(group)?, &Self::key(id, rule, now));
        let args = ["status".to_owned(), now.timestamp_millis().to_string()];
        let answer = self.inner.run(&[hash, leases], &args).await?;
        let counts = counts_at(&answer, 0)?;
        Ok(Consumption {
            consumed: counts.consumed,
            reserved: counts.reserved,
            limit: rule.limit(),
            window: Window::of(rule, now),
        })
    }

    async fn reset(&self, group: &str, id: &LimitId, rule: &Rule, now: DateTime<Utc>) -> Result<(), CounterError> {
        let (hash, _) = counter_keys(&self.inner.tag(group)?, &Self::key(id, rule, now));
        self.inner.run(&[hash], &["reset".to_owned()]).await.map(drop)
    }

    async fn restore(
        &self,
        group: &str,
        id: &LimitId,
        rule: &Rule,
        now: DateTime<Utc>,
        consumed: Amount,
    ) -> Result<(), CounterError> {
        let (hash, leases) = counter_keys(&self.inner.tag(group)?, &Self::key(id, rule, now));
        let consumed = consumed.max(0);
        let passed = rule.marks().map(|m| m.passed(consumed)).unwrap_or_default();
        let flag = |b: bool| if b { "1" } else { "0" }.to_owned();
        let args = [
            "restore".to_owned(),
            consumed.to_string(),
            flag(passed.threshold),
            flag(passed.exhausted),
            ttl_ms(&Window::of(rule, now), now),
        ];
        self.inner.run(&[hash, leases], &args).await.map(drop)
    }

    async fn forget(&self, group: &str, id: &LimitId) -> Result<(), CounterError> {
        let tag = self.inner.tag(group)?;
        let pattern = format!("{}:[cl]:{}|*", glob_escape(&tag), glob_escape(id.as_str()));
        let inner = &self.inner;
        let mut conn = inner.bounded(inner.connection()).await?;
        let mut cursor: u64 = 0;
        loop {
            // On a cluster, the node that holds the group's slot.
            let (next, keys) = inner.bounded(conn.scan_slot(&tag, cursor, &pattern)).await?;
            if !keys.is_empty() {
                inner
                    .bounded(redis::cmd("UNLINK").arg(&keys).query_async::<()>(&mut conn))
                    .await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    async fn begin_restore(&self, group: &str) -> Result<RestoreTurn, CounterError> {
        let tag = self.inner.tag(group)?;
        let keys = rebuild_keys(&tag);
        let args = [
            "begin".to_owned(),
            self.inner.token.clone(),
            RESTORE_LOCK_MS.to_string(),
        ];
        let answer = self.inner.run(&keys, &args).await?;
        match answer.first().map(String::as_str) {
            Some("ours") => {
                let server = answer.get(1).ok_or_else(|| unexpected(&answer))?;
                self.inner.rebuilding.lock().insert(group.to_owned(), server.clone());
                Ok(RestoreTurn::Ours)
            }
            Some("theirs") => Ok(RestoreTurn::Theirs),
            Some("done") => Ok(RestoreTurn::Done),
            _ => Err(unexpected(&answer)),
        }
    }

    async fn restored(&self, group: &str) -> Result<(), CounterError> {
        let tag = self.inner.tag(group)?;
        let keys = rebuild_keys(&tag);
        // The server the rebuild began on ('' if it did not begin here: then
        // it is not marked). Kept until the call succeeds, for a retry.
        let began_on = self.inner.rebuilding.lock().get(group).cloned().unwrap_or_default();
        let args = ["restored".to_owned(), self.inner.token.clone(), began_on];
        let answer = self.inner.run(&keys, &args).await?;
        self.inner.rebuilding.lock().remove(group);
        match answer.first().map(String::as_str) {
            Some("ok") => Ok(()),
            // The next admission asks for the rebuild again.
            Some("lost") => {
                tracing::warn!(
                    group,
                    "the rebuilt counters were not marked: Redis changed servers during the rebuild"
                );
                Ok(())
            }
            _ => Err(unexpected(&answer)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        let lease = Duration::from_secs(60);
        assert!(RedisCounters::new(RedisSettings::new("redis://127.0.0.1:6379", lease)).is_ok());
        let bad_url = RedisCounters::new(RedisSettings::new("http://example.com", lease)).unwrap_err();
        assert!(bad_url.to_string().contains("redis_url"), "{bad_url}");
        let mut braces = RedisSettings::new("redis://127.0.0.1:6379", lease);
        braces.key_prefix = "a{b}:".into();
        let e = RedisCounters::new(braces).unwrap_err();
        assert!(e.to_string().contains("redis_key_prefix"), "{e}");
        let mut zero = RedisSettings::new("redis://127.0.0.1:6379", lease);
        zero.timeout = Duration::ZERO;
        assert!(RedisCounters::new(zero).is_err());
        let debug = format!("{:?}", RedisSettings::new("redis://:secret@127.0.0.1:6379", lease));
        assert!(!debug.contains("secret"), "{debug}");
        assert_eq!(OnRedisError::parse("open"), Some(OnRedisError::Open));
        assert_eq!(OnRedisError::parse("closed"), Some(OnRedisError::Closed));
        assert_eq!(OnRedisError::parse("maybe"), None);
    }

    #[test]
    fn keys_carry_the_group_as_hash_tag() {
        let c = RedisCounters::new(RedisSettings::new("redis://127.0.0.1:6379", Duration::from_secs(60))).unwrap();
        assert_eq!(c.group_key_prefix("ws:a").unwrap(), "tollgate:{ws:a}");
        assert!(matches!(
            c.group_key_prefix("ws:{a}"),
            Err(CounterError::InvalidGroup(_))
        ));
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(member("t.1", 2, 30), "t.1:2|30");
        assert_eq!(member("t.1", 2, 0), "");
    }
}
