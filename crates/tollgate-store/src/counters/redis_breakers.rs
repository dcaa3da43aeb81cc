//! Circuit breakers of routing targets in Redis, shared by every replica of
//! the gateway (`redis_url`): a target that failed through one replica is
//! skipped by all of them.
//!
//! A breaker is two keys under the counters' prefix and one hash tag,
//! `<prefix>{cb:<key>}:fails` (a sorted set of failure times) and
//! `<prefix>{cb:<key>}:open` (until when the target is skipped). Noting an
//! outcome is one run of one Lua script (`redis_breakers.lua`): a failure
//! drops the failures older than the window, adds itself, and at the
//! threshold sets `open` and clears the set; a success deletes both.
//! Asking whether a breaker is open is one `GET`. Times are the gateway
//! clock's, passed in (not Redis's); both keys expire (in Redis time) a
//! minute after their window or cool-down, so nothing lingers.
//!
//! The connection, its prefix and its 1 s bound are the Redis counters'
//! ([`super::RedisCounters::breakers`]). A breaker is an optimisation, not a
//! guarantee: while Redis cannot be reached, every breaker reads closed and
//! outcomes are not counted, logged at warn level at most every 10 s. After
//! a failed call, Redis is left alone for a second, so that a request pays
//! the timeout at most once a second rather than on every attempt.

use super::redis::Inner;
use super::redis_conn::{eval, Lua};
use parking_lot::Mutex;
use redis::AsyncCommands;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SCRIPT: &str = include_str!("redis_breakers.lua");
/// How long after its window or cool-down a key is kept (clocks of replicas
/// and Redis may differ a little).
const GRACE_MS: u64 = 60_000;
/// The longest expiry given to Redis (about 30 years; far beyond any
/// sensible cool-down, well within what Redis accepts).
const MAX_KEEP_MS: u64 = 1 << 40;
/// Redis failures are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// How long Redis is left alone after a failed call.
const BACK_OFF: Duration = Duration::from_secs(1);

/// Circuit breakers in Redis. Clones share the state.
#[derive(Clone)]
pub struct RedisBreakers {
    inner: Arc<Inner>,
    script: Arc<Lua>,
    /// Redis failures: when one was last logged and how many since, and
    /// until when Redis is left alone.
    log: Arc<Mutex<Failures>>,
}

#[derive(Default)]
struct Failures {
    logged: Option<Instant>,
    since_logged: u64,
    back_off_until: Option<Instant>,
}

impl std::fmt::Debug for RedisBreakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBreakers")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisBreakers {
    pub(super) fn new(inner: Arc<Inner>) -> RedisBreakers {
        RedisBreakers {
            inner,
            script: Arc::new(Lua::new(SCRIPT)),
            log: Arc::new(Mutex::new(Failures::default())),
        }
    }

    /// The breaker's two keys: its failures and until when it is open.
    fn keys(&self, key: &str) -> (String, String) {
        let tag = format!("{}{{cb:{key}}}", self.inner.prefix);
        (format!("{tag}:fails"), format!("{tag}:open"))
    }

    /// Is the breaker `key` open at `now_ms` (Unix ms)? Closed when Redis
    /// cannot answer within the timeout.
    pub async fn is_open(&self, key: &str, now_ms: i64) -> bool {
        if self.backing_off() {
            return false;
        }
        let (_, open) = self.keys(key);
        let get = async {
            let mut conn = self.inner.connection().await?;
            conn.get::<_, Option<i64>>(&open).await
        };
        match self.bounded(get).await {
            Ok(until) => until.is_some_and(|until| until > now_ms),
            Err(e) => {
                self.warn(&e);
                false
            }
        }
    }

    /// Notes an attempt's outcome at `now_ms`: `failures` failures within
    /// `window_ms` open the breaker for `cooldown_ms`; a success closes it
    /// and clears the count. Not counted when Redis cannot answer.
    pub async fn note(&self, key: &str, failures: u32, window_ms: u64, cooldown_ms: u64, now_ms: i64, ok: bool) {
        if self.backing_off() {
            return;
        }
        let (fails, open) = self.keys(key);
        let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let since = now_ms.saturating_sub(ms(window_ms));
        let until = now_ms.saturating_add(ms(cooldown_ms));
        let keep = |v: u64| v.saturating_add(GRACE_MS).min(MAX_KEEP_MS);
        // Unique across replicas, so that two failures at the same
        // millisecond count twice.
        let member = format!(
            "{now_ms}:{}:{}",
            self.inner.token,
            self.inner.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let keys = [fails, open];
        let args = [
            if ok { "ok" } else { "fail" }.to_owned(),
            now_ms.to_string(),
            since.to_string(),
            failures.to_string(),
            until.to_string(),
            keep(window_ms).to_string(),
            keep(cooldown_ms).to_string(),
            member,
        ];
        let run = async {
            let mut conn = self.inner.connection().await?;
            eval::<i64>(&mut conn, &self.script, &keys, &args).await
        };
        if let Err(e) = self.bounded(run).await {
            self.warn(&e);
        }
    }

    async fn bounded<T>(&self, fut: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
        match tokio::time::timeout(self.inner.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("Redis: {e}")),
            Err(_) => Err(format!(
                "Redis did not answer within {} ms",
                self.inner.timeout.as_millis()
            )),
        }
    }

    /// Is Redis left alone after a failed call?
    fn backing_off(&self) -> bool {
        self.log
            .lock()
            .back_off_until
            .is_some_and(|until| Instant::now() < until)
    }

    fn warn(&self, error: &str) {
        let now = Instant::now();
        let mut log = self.log.lock();
        log.back_off_until = Some(now + BACK_OFF);
        log.since_logged += 1;
        if log.logged.is_none_or(|at| now.duration_since(at) >= LOG_EVERY) {
            tracing::warn!(
                error,
                failed_calls = log.since_logged,
                "circuit breakers unavailable: reading them as closed and not counting outcomes"
            );
            log.logged = Some(now);
            log.since_logged = 0;
        }
    }
}
