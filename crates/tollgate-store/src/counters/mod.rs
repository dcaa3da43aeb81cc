//! The limit counters: where consumption and reservations live, behind one
//! trait with an in-process implementation ([`MemoryCounters`], the embedded
//! mode) and a Redis one ([`RedisCounters`], scale-out: one Lua script per
//! admit and per settle, atomic over all keys; one server or a Redis
//! Cluster).
//!
//! The rules (which counter a limit counts in, what fits, what a refusal
//! reports, when an alert fires) are in [`tollgate_core::admission`]; this
//! module only keeps the numbers. The flow for one request:
//!
//! 1. [`Counters::admit`] reserves, all or nothing, the request's worst case
//!    against every applicable limit and returns a [`Reservation`] (with the
//!    `x-ratelimit-*` figures) or a [`Refusal`].
//! 2. After the upstream answered, [`Counters::settle`] replaces the
//!    reservation with the actual usage and returns the budget alerts to send;
//!    if the upstream call failed, [`Counters::release`] gives the worst case
//!    back (the request still counts against request-rate limits).
//! 3. A reservation dropped without either (a cancelled client) releases
//!    itself, exactly once.
//!
//! Every limit belongs to a **group** (the gateway uses its workspace's,
//! [`tollgate_core::limit_owner::counter_group`]),
//! and the limits of one request are all in one group. A store outside the
//! process keeps a group's counters together (Redis: one hash tag, so one
//! cluster slot) and rebuilds them a group at a time: when it has lost them
//! (Redis restarted empty), [`Counters::admit`] answers
//! [`CounterError::NeedsRestore`], and the caller rebuilds the group from
//! the request log ([`Counters::begin_restore`], [`Counters::restore`] for
//! each of its limits, [`Counters::restored`]) and admits again.

mod memory;
mod redis;
mod redis_breakers;
pub(crate) mod redis_conn;

pub use self::redis::{
    OnRedisError, RedisCounters, RedisSettings, DEFAULT_KEY_PREFIX as DEFAULT_REDIS_KEY_PREFIX,
    DEFAULT_TIMEOUT as DEFAULT_REDIS_TIMEOUT,
};
pub use memory::MemoryCounters;
pub use redis_breakers::RedisBreakers;
pub use redis_conn::redis_nodes;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use tollgate_core::admission::{BudgetMarks, CounterKey};
// The admission vocabulary, re-exported so that callers of the counters need one import.
pub use tollgate_core::admission::{
    Actual, AlertEvent, AlertKind, Demand, Level, LimitCheck, LimitId, LimitOwner, RateFigures, RateHeaders, Refusal,
    RefusalReason, Rule, Window,
};
use tollgate_core::limits::Amount;

/// The most limits that can apply to one request: four levels, each with at
/// most one budget and one rate limit. Reservations hold this many entries
/// inline, so admission does not allocate.
pub const MAX_CHECKS: usize = 8;

/// A counter store failure.
#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    #[error("at most {MAX_CHECKS} limits can apply to one request, got {0}")]
    TooManyChecks(usize),
    #[error("the reservation was made by another counter store")]
    ForeignReservation,
    /// The store's settings are not usable (a start-up error).
    #[error("{0}")]
    Settings(String),
    /// A group name an external store cannot key on.
    #[error("invalid counter group {0:?}: it must not contain '{{' or '}}'")]
    InvalidGroup(String),
    /// The store is unreachable or failed (the gateway answers 503).
    #[error("the limit counters are unavailable: {0}")]
    Unavailable(String),
    /// The store lost the group's counters (Redis restarted empty): rebuild
    /// them from the request log, then admit again.
    #[error("the limit counters of {0} must be rebuilt from the request log")]
    NeedsRestore(String),
}

/// Who rebuilds a group's counters (see [`Counters::begin_restore`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreTurn {
    /// This caller: restore every limit of the group, then call [`Counters::restored`].
    Ours,
    /// Another process is rebuilding them: wait, then admit again.
    Theirs,
    /// Nothing to rebuild: the store has the group's counters.
    Done,
}

/// Why [`Counters::admit`] did not admit.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// A limit refused: 412 for a budget, 429 for a rate limit (see [`Refusal`]).
    #[error(transparent)]
    Refused(Box<Refusal>),
    #[error(transparent)]
    Counter(#[from] CounterError),
}

impl From<Refusal> for AdmitError {
    fn from(r: Refusal) -> Self {
        AdmitError::Refused(Box::new(r))
    }
}

/// The state of one limit's current window, for the admin API: a provider's
/// `exhausted` status, `next_usage_reset_at`, rate-limit utilisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consumption {
    /// Settled usage in the window (requests, tokens or picodollars).
    pub consumed: Amount,
    /// Worst cases of requests still in flight.
    pub reserved: Amount,
    /// The limit in the same unit.
    pub limit: Amount,
    /// `window.start` is when counting began; `window.end` is the next reset
    /// (`None` for a budget that never resets).
    pub window: Window,
}

impl Consumption {
    /// Whether a budget is used up (its status reads `exhausted`).
    pub fn exhausted(&self) -> bool {
        self.consumed >= self.limit
    }

    /// What is still free: limit − consumed − reserved, at least 0.
    pub fn remaining(&self) -> Amount {
        self.limit
            .saturating_sub(self.consumed.saturating_add(self.reserved))
            .max(0)
    }
}

/// Counter storage for limits. Object safe: hold it as `Arc<dyn Counters>`.
///
/// Every implementation must make [`admit`](Counters::admit) atomic over all
/// the checks it is given, so that concurrent requests can never together pass
/// a limit.
#[async_trait]
pub trait Counters: Send + Sync + 'static {
    /// Reserves `demand` against every check, all or nothing. Checks are
    /// examined in the caller's order and the first that does not fit is the
    /// one reported. At most [`MAX_CHECKS`] checks, all of `group`.
    async fn admit(
        &self,
        now: DateTime<Utc>,
        group: &str,
        checks: &[LimitCheck],
        demand: Demand,
    ) -> Result<Reservation, AdmitError>;

    /// Replaces the reservation with `actual` usage, in the windows it was
    /// made in, and returns the budget alerts this settlement set off (each
    /// at most once per limit id and period).
    async fn settle(&self, reservation: Reservation, actual: Actual) -> Result<Vec<AlertEvent>, CounterError>;

    /// Gives back the reserved tokens and cost (the upstream call failed or
    /// was cancelled). The request itself stays counted against request-rate
    /// limits.
    async fn release(&self, reservation: Reservation) -> Result<(), CounterError>;

    /// The current window of a limit (nothing consumed if it has no counter yet).
    async fn status(
        &self,
        group: &str,
        id: &LimitId,
        rule: &Rule,
        now: DateTime<Utc>,
    ) -> Result<Consumption, CounterError>;

    /// Sets the consumed amount of the limit's current window to 0 and forgets
    /// its alerts (`reset_usage: true`). Requests in flight still settle.
    async fn reset(&self, group: &str, id: &LimitId, rule: &Rule, now: DateTime<Utc>) -> Result<(), CounterError>;

    /// Sets the consumed amount of the limit's window containing `now`, at
    /// start-up, so that a restart does not hand anyone a fresh budget.
    ///
    /// The caller feeds, for each limit in the control plane, before serving
    /// traffic: the sum of the usage log rows that the limit applies to (its
    /// integration×workspace, provider, API key or workspace) whose time is at
    /// or after [`Window::of`]`(rule, now).start` — cost in picodollars for a
    /// cost budget (rows with an unknown price count 0), total tokens for token
    /// budgets and token-rate limits, the number of rows for request-rate
    /// limits (rate limits are optional: their windows are short). Alerts
    /// whose marks the restored amount already passed do not fire again.
    async fn restore(
        &self,
        group: &str,
        id: &LimitId,
        rule: &Rule,
        now: DateTime<Utc>,
        consumed: Amount,
    ) -> Result<(), CounterError>;

    /// Drops every counter of a limit id (the limit was deleted or replaced
    /// under a new id), so that retired limits do not hold memory.
    async fn forget(&self, group: &str, id: &LimitId) -> Result<(), CounterError>;

    /// Asks whether `group`'s counters must be rebuilt from the request log,
    /// and by whom; at most one caller at a time gets [`RestoreTurn::Ours`]
    /// (in Redis, a lock that expires if its holder dies). In process the
    /// answer is always `Ours`: start-up rebuilds everything.
    async fn begin_restore(&self, group: &str) -> Result<RestoreTurn, CounterError>;

    /// Marks `group`'s counters as rebuilt (after [`RestoreTurn::Ours`]), so
    /// that admission stops answering [`CounterError::NeedsRestore`].
    async fn restored(&self, group: &str) -> Result<(), CounterError>;
}

/// One reserved entry: a counter and the worst case held in it.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub(crate) key: CounterKey,
    pub(crate) level: Level,
    /// The worst case reserved (0 for request-rate limits, whose request is
    /// consumed at admission; those are not held at all).
    pub(crate) reserved: Amount,
    /// Set for budgets: where settlement's alerts fire.
    pub(crate) marks: Option<BudgetMarks>,
    /// Which check of the admission it came from (Redis names the
    /// reservation's entry after it, so that one counter checked twice holds
    /// two entries).
    pub(crate) index: usize,
}

/// Where an external store keeps a reservation: its group and its id.
#[derive(Debug, Clone)]
pub(crate) struct Place {
    pub(crate) group: Arc<str>,
    pub(crate) id: Arc<str>,
}

/// Where a reservation goes back to when it is dropped unsettled. A store
/// whose release needs I/O (Redis) spawns it from here.
pub(crate) trait ReleaseOnDrop: Send + Sync + 'static {
    fn release_dropped(&self, held: &[Option<Held>; MAX_CHECKS], place: Option<&Place>);
}

/// An admitted request's hold on its limits. Settle it with
/// [`Counters::settle`] or give it back with [`Counters::release`]; if it is
/// dropped without either (the client went away), it releases itself.
pub struct Reservation {
    /// Boxed: a reservation is moved through every step of a request (and
    /// into each step's future), so it stays a few words wide.
    held: Box<[Option<Held>; MAX_CHECKS]>,
    headers: RateHeaders,
    place: Option<Place>,
    /// `None` once settled or released, so that drop does nothing more.
    owner: Option<Arc<dyn ReleaseOnDrop>>,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("held", &self.held.iter().flatten().collect::<Vec<_>>())
            .field("headers", &self.headers)
            .field("open", &self.owner.is_some())
            .finish()
    }
}

impl Reservation {
    pub(crate) fn new(
        held: [Option<Held>; MAX_CHECKS],
        headers: RateHeaders,
        place: Option<Place>,
        owner: Arc<dyn ReleaseOnDrop>,
    ) -> Self {
        Reservation {
            held: Box::new(held),
            headers,
            place,
            owner: Some(owner),
        }
    }

    /// The `x-ratelimit-*` figures: the tightest request-rate and token-rate
    /// limits that applied, after this request.
    pub fn headers(&self) -> RateHeaders {
        self.headers
    }

    /// Whether `owner` made this reservation.
    pub(crate) fn is_owned_by(&self, owner: *const ()) -> bool {
        self.owner
            .as_ref()
            .is_some_and(|o| std::ptr::addr_eq(Arc::as_ptr(o), owner))
    }

    /// Closes the reservation for settlement or release: what it holds and
    /// where, after which dropping it does nothing.
    pub(crate) fn close(&mut self) -> ([Option<Held>; MAX_CHECKS], Option<Place>) {
        self.owner = None;
        (std::mem::take(&mut *self.held), self.place.take())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.take() {
            owner.release_dropped(&self.held, self.place.as_ref());
        }
    }
}
