//! The arithmetic of admission and settlement, with no storage: which counter
//! a limit counts in at a given time, whether a request's worst case still
//! fits, what a refusal or a success reports (`Retry-After`, the
//! `x-ratelimit-*` figures), what a settlement adds, and when a budget alert
//! fires.
//!
//! The counter stores (in process, Redis) keep `consumed` and `reserved` per
//! [`CounterKey`] and call these functions, so every implementation applies
//! the same rules. A request is checked against a list of [`LimitCheck`]s;
//! each becomes a [`Plan`] for the current time and the request's [`Demand`].

pub use crate::limit_owner::{LimitId, LimitOwner};
use crate::limits::{next_reset, Amount, BudgetKind, RateKind, RateLimit, RateUnit, UsageLimit};
use crate::money::Money;
use chrono::{DateTime, Utc};
use std::fmt;

/// The level a limit is set at. Limits at several levels layer: a request must
/// pass all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    IntegrationWorkspace,
    Provider,
    ApiKey,
    Workspace,
}

impl Level {
    /// The level's name in alerts and analytics: `integration_workspace`,
    /// `provider`, `api_key`, `workspace`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::IntegrationWorkspace => "integration_workspace",
            Level::Provider => "provider",
            Level::ApiKey => "api_key",
            Level::Workspace => "workspace",
        }
    }

    /// The prefix of this level's gateway error types
    /// (`<prefix>_exhaust_error`, `<prefix>_rate_limit_error`).
    pub fn error_prefix(self) -> &'static str {
        match self {
            Level::IntegrationWorkspace => "integration",
            Level::Provider => "provider",
            Level::ApiKey => "api_key",
            Level::Workspace => "workspace",
        }
    }
}

/// The rule one limit enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// A budget, counting from `set_at` (only usage after the limit was set counts).
    Budget {
        limit: UsageLimit,
        set_at: DateTime<Utc>,
    },
    Rate(RateLimit),
}

impl Rule {
    /// The limit in its counter's unit: picodollars, tokens or requests.
    pub fn limit(&self) -> Amount {
        match self {
            Rule::Budget { limit, .. } => limit.credit_limit,
            Rule::Rate(r) => rate_amount(r.value),
        }
    }

    /// The budget's alert marks; `None` for a rate limit.
    pub fn marks(&self) -> Option<BudgetMarks> {
        match self {
            Rule::Budget { limit, .. } => Some(BudgetMarks {
                credit_limit: limit.credit_limit,
                alert_threshold: limit.alert_threshold,
            }),
            Rule::Rate(_) => None,
        }
    }
}

/// One limit that applies to a request. `id` names its owner (which gives
/// its level) and the counter key, stable for the life of the limit; a
/// replaced or reset limit must get a new `id` or a new `set_at`, so that it
/// counts afresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitCheck {
    pub id: LimitId,
    pub rule: Rule,
}

impl LimitCheck {
    /// The level of the limit's owner.
    pub fn level(&self) -> Level {
        self.id.level()
    }
}

/// The worst case of one request. One request is implicit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Demand {
    /// Estimated prompt tokens plus the maximum output.
    pub tokens: u64,
    /// The cost of `tokens` at the model's price (prompt at input price, output at output price).
    pub cost: Money,
}

/// What a request actually used, known once the upstream has answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Actual {
    pub tokens: u64,
    /// `None` when the price is unknown: settles no cost.
    pub cost: Option<Money>,
}

/// What one counter counts. Part of the counter key, so that a budget and a
/// rate limit sharing an id (or a rate limit whose unit changed) never share a
/// counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Measure {
    CostBudget,
    TokenBudget,
    Requests(RateUnit),
    Tokens(RateUnit),
}

impl Measure {
    pub fn of(rule: &Rule) -> Measure {
        match rule {
            Rule::Budget { limit, .. } => match limit.kind {
                BudgetKind::Cost => Measure::CostBudget,
                BudgetKind::Tokens => Measure::TokenBudget,
            },
            Rule::Rate(r) => match r.kind {
                RateKind::Requests => Measure::Requests(r.unit),
                RateKind::Tokens => Measure::Tokens(r.unit),
            },
        }
    }

    pub fn is_budget(self) -> bool {
        matches!(self, Measure::CostBudget | Measure::TokenBudget)
    }

    /// Whether admission reserves on this counter, a hold that settlement
    /// or release later replaces: every measure but requests, which are
    /// counted as consumed at admission and never given back.
    pub fn reserves(self) -> bool {
        !matches!(self, Measure::Requests(_))
    }

    /// A short stable name, used in external counter keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Measure::CostBudget => "budget.cost",
            Measure::TokenBudget => "budget.tokens",
            Measure::Requests(RateUnit::Rpm) => "requests.rpm",
            Measure::Requests(RateUnit::Rph) => "requests.rph",
            Measure::Requests(RateUnit::Rpd) => "requests.rpd",
            Measure::Tokens(RateUnit::Rpm) => "tokens.rpm",
            Measure::Tokens(RateUnit::Rph) => "tokens.rph",
            Measure::Tokens(RateUnit::Rpd) => "tokens.rpd",
        }
    }

    /// What a settlement adds to this counter. Requests were counted at
    /// admission and stay counted, so they add nothing here.
    pub fn settled(self, actual: &Actual) -> Amount {
        match self {
            Measure::Requests(_) => 0,
            Measure::Tokens(_) | Measure::TokenBudget => tokens_amount(actual.tokens),
            Measure::CostBudget => actual.cost.map_or(0, |c| c.picos().max(0)),
        }
    }
}

/// The span a counter counts in: `[start, end)`; `end` is `None` for a budget
/// with no periodic reset, which counts from when it was set until exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
}

impl Window {
    /// The window of `rule` that contains `now`.
    pub fn of(rule: &Rule, now: DateTime<Utc>) -> Window {
        match rule {
            Rule::Rate(r) => {
                let (start, end) = r.unit.window(now);
                Window { start, end: Some(end) }
            }
            Rule::Budget { limit, set_at } => {
                let start = limit.period_start(now, *set_at);
                // From the start rather than from `now`, so that a clock slightly
                // behind `set_at` still gets an end after the start.
                let end = limit.periodic_reset.map(|r| next_reset(r, start));
                Window { start, end }
            }
        }
    }

    /// Whether this window is over at `now`.
    pub fn is_over(&self, now: DateTime<Utc>) -> bool {
        self.end.is_some_and(|e| e <= now)
    }
}

/// The identity of one counter: a limit's id, what it counts and the start of
/// its window. A new window is a new key, so resets need no job.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CounterKey {
    pub id: LimitId,
    pub measure: Measure,
    pub start: DateTime<Utc>,
}

impl CounterKey {
    pub fn new(id: LimitId, rule: &Rule, now: DateTime<Utc>) -> CounterKey {
        CounterKey {
            id,
            measure: Measure::of(rule),
            start: Window::of(rule, now).start,
        }
    }
}

impl fmt::Display for CounterKey {
    /// `<id>|<measure>|<window start in µs since the epoch>`: a flat key for external stores.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}|{}|{}",
            self.id,
            self.measure.as_str(),
            self.start.timestamp_micros()
        )
    }
}

/// The state of one counter: settled usage and in-flight worst cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub consumed: Amount,
    pub reserved: Amount,
}

impl Counts {
    /// Consumed plus reserved: what is spoken for.
    pub fn used(&self) -> Amount {
        self.consumed.saturating_add(self.reserved)
    }
}

/// The figures behind the `x-ratelimit-limit-*`, `-remaining-*` and `-reset-*`
/// headers of one rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateFigures {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window ends, rounded up.
    pub reset_secs: u64,
}

impl RateFigures {
    /// Of two figures for the same kind of rate limit, the one a client should
    /// heed: the fewer remaining, then the later reset.
    pub fn tighter(a: Option<RateFigures>, b: RateFigures) -> RateFigures {
        match a {
            Some(a)
                if (a.remaining, std::cmp::Reverse(a.reset_secs)) <= (b.remaining, std::cmp::Reverse(b.reset_secs)) =>
            {
                a
            }
            _ => b,
        }
    }
}

/// The rate-limit header figures of an admitted request: of the request-rate
/// and the token-rate limits that applied, the tightest of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateHeaders {
    pub requests: Option<RateFigures>,
    pub tokens: Option<RateFigures>,
}

impl RateHeaders {
    /// Folds in the figures of one more rate limit.
    pub fn add(&mut self, kind: RateKind, f: RateFigures) {
        let slot = match kind {
            RateKind::Requests => &mut self.requests,
            RateKind::Tokens => &mut self.tokens,
        };
        *slot = Some(RateFigures::tighter(*slot, f));
    }
}

/// Why a request was refused, and by which limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} limit {} refused the request", .level.error_prefix(), .id)]
pub struct Refusal {
    pub id: LimitId,
    pub level: Level,
    pub reason: RefusalReason,
    /// The `x-ratelimit-*` figures of every rate limit that applied, as they
    /// stand without this request: a refusal carries them too (API.md).
    pub headers: RateHeaders,
}

/// What kind of limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The budget's remainder cannot hold the request's worst case (HTTP 412).
    Budget {
        kind: BudgetKind,
        credit_limit: Amount,
        consumed: Amount,
        reserved: Amount,
        /// The worst case that did not fit.
        wanted: Amount,
        /// When the budget starts again, if it resets.
        next_reset: Option<DateTime<Utc>>,
    },
    /// The rate limit's window is full, or the limit is 0 (HTTP 429).
    Rate {
        kind: RateKind,
        unit: RateUnit,
        /// Seconds to the end of the window, rounded up, at least 1.
        retry_after: u64,
        figures: RateFigures,
    },
}

impl Refusal {
    /// 412 for a budget, 429 for a rate limit.
    pub fn http_status(&self) -> u16 {
        match self.reason {
            RefusalReason::Budget { .. } => 412,
            RefusalReason::Rate { .. } => 429,
        }
    }

    /// The gateway error type, e.g. `provider_exhaust_error`, `api_key_rate_limit_error`.
    pub fn error_type(&self) -> &'static str {
        match (self.level, &self.reason) {
            (Level::IntegrationWorkspace, RefusalReason::Budget { .. }) => "integration_exhaust_error",
            (Level::Provider, RefusalReason::Budget { .. }) => "provider_exhaust_error",
            (Level::ApiKey, RefusalReason::Budget { .. }) => "api_key_exhaust_error",
            (Level::Workspace, RefusalReason::Budget { .. }) => "workspace_exhaust_error",
            (Level::IntegrationWorkspace, RefusalReason::Rate { .. }) => "integration_rate_limit_error",
            (Level::Provider, RefusalReason::Rate { .. }) => "provider_rate_limit_error",
            (Level::ApiKey, RefusalReason::Rate { .. }) => "api_key_rate_limit_error",
            (Level::Workspace, RefusalReason::Rate { .. }) => "workspace_rate_limit_error",
        }
    }

    /// The `Retry-After` seconds, for a rate limit.
    pub fn retry_after(&self) -> Option<u64> {
        match self.reason {
            RefusalReason::Rate { retry_after, .. } => Some(retry_after),
            RefusalReason::Budget { .. } => None,
        }
    }
}

/// One limit check worked out for one request at one time: which counter, and
/// what admission takes from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub key: CounterKey,
    pub level: Level,
    pub rule: Rule,
    pub window: Window,
    /// The limit in the counter's unit (picodollars, tokens or requests).
    pub limit: Amount,
    /// Counted as consumed at admission and never given back: the request
    /// itself, for request-rate limits.
    pub consume: Amount,
    /// Reserved at admission until settlement or release: the worst case.
    pub reserve: Amount,
}

impl Plan {
    pub fn new(check: &LimitCheck, now: DateTime<Utc>, demand: &Demand) -> Plan {
        let measure = Measure::of(&check.rule);
        let window = Window::of(&check.rule, now);
        let (consume, reserve) = match measure {
            Measure::Requests(_) => (1, 0),
            Measure::CostBudget => (0, demand.cost.picos().max(0)),
            Measure::TokenBudget | Measure::Tokens(_) => (0, tokens_amount(demand.tokens)),
        };
        let limit = check.rule.limit();
        Plan {
            key: CounterKey {
                id: check.id.clone(),
                measure,
                start: window.start,
            },
            level: check.level(),
            rule: check.rule,
            window,
            limit,
            consume,
            reserve,
        }
    }

    /// What admission asks of the counter.
    pub fn wanted(&self) -> Amount {
        self.consume.saturating_add(self.reserve)
    }

    /// Whether the request fits given the counter's current `counts`:
    /// consumed + reserved + worst case ≤ limit. A rate limit of 0 refuses
    /// everything, and an exhausted budget (consumed ≥ limit) refuses even a
    /// request whose worst case is 0 (e.g. a model with no known price).
    pub fn fits(&self, counts: Counts) -> bool {
        self.bounds()
            .is_some_and(|b| counts.used() <= b.max_used && counts.consumed <= b.max_consumed)
    }

    /// The rule of [`fits`](Plan::fits) as two upper bounds, so that a store
    /// can check it where the counts live (the Redis script compares, and
    /// knows no rule): for counts that are never negative, the request fits
    /// iff consumed + reserved ≤ `max_used` and consumed ≤ `max_consumed`.
    /// `None` if nothing fits: a rate limit of 0, a worst case above the
    /// limit, a budget of 0.
    pub fn bounds(&self) -> Option<Bounds> {
        let wanted = self.wanted();
        let max_consumed = match self.rule {
            Rule::Rate(r) if r.value == 0 => return None,
            Rule::Rate(_) => Amount::MAX,
            // An exhausted budget (consumed ≥ limit) refuses even a free request.
            Rule::Budget { .. } => self.limit.checked_sub(1).filter(|m| *m >= 0)?,
        };
        if wanted > self.limit {
            return None;
        }
        // consumed + reserved + wanted ≤ limit, the sum saturating: at the
        // largest limit everything fits.
        let max_used = if self.limit == Amount::MAX {
            Amount::MAX
        } else {
            self.limit - wanted
        };
        Some(Bounds { max_used, max_consumed })
    }

    /// Applies the admission to `counts` (which must fit).
    pub fn apply(&self, counts: &mut Counts) {
        counts.consumed = counts.consumed.saturating_add(self.consume);
        counts.reserved = counts.reserved.saturating_add(self.reserve);
    }

    /// Takes the admission back out of `counts`, as if it never happened
    /// (when a later check refused).
    pub fn unapply(&self, counts: &mut Counts) {
        counts.consumed = counts.consumed.saturating_sub(self.consume).max(0);
        counts.reserved = counts.reserved.saturating_sub(self.reserve).max(0);
    }

    /// The header figures for a rate limit given `counts` (after this request
    /// if it was admitted); `None` for a budget.
    pub fn figures(&self, counts: Counts, now: DateTime<Utc>) -> Option<RateFigures> {
        let Rule::Rate(r) = self.rule else { return None };
        Some(RateFigures {
            limit: r.value,
            remaining: u64::try_from(self.limit.saturating_sub(counts.used())).unwrap_or(0),
            reset_secs: self.window.end.map_or(0, |end| seconds_until(now, end)),
        })
    }

    /// Folds this plan's figures (after admission) into `headers`.
    pub fn add_headers(&self, headers: &mut RateHeaders, counts: Counts, now: DateTime<Utc>) {
        if let (Rule::Rate(r), Some(f)) = (self.rule, self.figures(counts, now)) {
            headers.add(r.kind, f);
        }
    }

    /// The refusal to report when this check does not fit `counts`.
    pub fn refusal(&self, counts: Counts, now: DateTime<Utc>) -> Refusal {
        let reason = match self.rule {
            Rule::Budget { limit, .. } => RefusalReason::Budget {
                kind: limit.kind,
                credit_limit: self.limit,
                consumed: counts.consumed,
                reserved: counts.reserved,
                wanted: self.wanted(),
                next_reset: self.window.end,
            },
            Rule::Rate(r) => {
                let retry_after = self.window.end.map_or(1, |end| seconds_until(now, end).max(1));
                let figures = self.figures(counts, now).unwrap_or(RateFigures {
                    limit: r.value,
                    remaining: 0,
                    reset_secs: retry_after,
                });
                RefusalReason::Rate {
                    kind: r.kind,
                    unit: r.unit,
                    retry_after,
                    figures,
                }
            }
        };
        Refusal {
            id: self.key.id.clone(),
            level: self.level,
            reason,
            headers: RateHeaders::default(),
        }
    }

    /// The budget and alert threshold, if this is a budget: what settlement needs for alerts.
    pub fn budget(&self) -> Option<BudgetMarks> {
        self.rule.marks()
    }
}

/// What [`Plan::fits`] asks of a counter, as upper bounds (see [`Plan::bounds`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub max_used: Amount,
    pub max_consumed: Amount,
}

/// The two amounts of a budget at which alerts fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetMarks {
    pub credit_limit: Amount,
    pub alert_threshold: Option<Amount>,
}

/// Which alert a budget's consumption set off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertKind {
    /// Consumption reached the alert threshold.
    Threshold,
    /// Consumption reached the credit limit.
    Exhausted,
}

/// An alert to send (email, webhook): a budget's consumption reached its
/// threshold or its limit. Fires once per limit id and period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertEvent {
    pub id: LimitId,
    pub level: Level,
    pub kind: AlertKind,
    pub consumed: Amount,
    pub limit: Amount,
    pub period_start: DateTime<Utc>,
}

/// Per-counter "already alerted" marks, so that each alert fires at most once
/// per (limit id, period).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Alerted {
    pub threshold: bool,
    pub exhausted: bool,
}

impl BudgetMarks {
    /// The alerts set off by consumption moving from `before` to `after`: a
    /// mark fires when it is crossed from below to at-or-above and has not
    /// fired yet; `alerted` records it. A mark already passed (e.g. restored
    /// at start-up) does not fire again.
    pub fn crossed(&self, before: Amount, after: Amount, alerted: &mut Alerted) -> [Option<AlertKind>; 2] {
        let mut out = [None, None];
        if let Some(t) = self.alert_threshold {
            if before < t && after >= t && !alerted.threshold {
                alerted.threshold = true;
                out[0] = Some(AlertKind::Threshold);
            }
        }
        if before < self.credit_limit && after >= self.credit_limit && !alerted.exhausted {
            alerted.exhausted = true;
            out[1] = Some(AlertKind::Exhausted);
        }
        out
    }

    /// The rule of [`crossed`](BudgetMarks::crossed) for a settlement that
    /// adds `added` to a counter whose value is not known yet (the Redis
    /// script compares, and knows no rule): for each mark (threshold,
    /// limit), the range `lo..hi` of consumption before the settlement in
    /// which it fires, if it has not fired yet. For counts that are never
    /// negative.
    pub fn firing(&self, added: Amount) -> [Option<std::ops::Range<Amount>>; 2] {
        // before < mark ≤ before + added (saturating) ⟺ mark − added ≤ before < mark.
        let range = |mark: Amount| {
            let lo = mark.saturating_sub(added.max(0)).max(0);
            (lo < mark).then_some(lo..mark)
        };
        [self.alert_threshold.and_then(range), range(self.credit_limit)]
    }

    /// The marks already passed at `consumed`, for a counter restored at start-up.
    pub fn passed(&self, consumed: Amount) -> Alerted {
        Alerted {
            threshold: self.alert_threshold.is_some_and(|t| consumed >= t),
            exhausted: consumed >= self.credit_limit,
        }
    }
}

/// Whole seconds from `now` to `end`, rounded up; 0 if `end` has passed.
pub fn seconds_until(now: DateTime<Utc>, end: DateTime<Utc>) -> u64 {
    let ms = (end - now).num_milliseconds();
    u64::try_from(ms.saturating_add(999) / 1000).unwrap_or(0)
}

fn tokens_amount(tokens: u64) -> Amount {
    Amount::try_from(tokens).unwrap_or(Amount::MAX)
}

fn rate_amount(value: u64) -> Amount {
    Amount::try_from(value).unwrap_or(Amount::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::limits::PeriodicReset;
    use crate::money::PICOS_PER_USD;
    use chrono::Duration;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn rate(kind: RateKind, unit: RateUnit, value: u64) -> Rule {
        Rule::Rate(RateLimit { kind, unit, value })
    }

    fn budget(kind: BudgetKind, credit_limit: Amount, reset: Option<PeriodicReset>, set_at: &str) -> Rule {
        Rule::Budget {
            limit: UsageLimit {
                kind,
                credit_limit,
                alert_threshold: None,
                periodic_reset: reset,
            },
            set_at: t(set_at),
        }
    }

    fn check(rule: Rule) -> LimitCheck {
        LimitCheck {
            id: owner_of(Level::IntegrationWorkspace),
            rule,
        }
    }

    /// A limit id at `level`; the integration × workspace one is `iw:int:ws`.
    fn owner_of(level: Level) -> LimitId {
        use crate::ids::{ApiKeyId, IntegrationId, ProviderId, WorkspaceId};
        LimitId::new(match level {
            Level::IntegrationWorkspace => LimitOwner::IntegrationWorkspace {
                integration: IntegrationId::new("int"),
                workspace: WorkspaceId::new("ws"),
            },
            Level::Provider => LimitOwner::Provider(ProviderId::new("prv")),
            Level::ApiKey => LimitOwner::ApiKey(ApiKeyId::new("ak")),
            Level::Workspace => LimitOwner::Workspace(WorkspaceId::new("ws")),
        })
    }

    fn demand(tokens: u64, usd_cents: i64) -> Demand {
        Demand {
            tokens,
            cost: Money(usd_cents * PICOS_PER_USD / 100),
        }
    }

    #[test]
    fn absurd_demands_saturate_and_never_fit() {
        let now = t("2026-11-26T10:00:30Z");
        let checks = [
            check(budget(BudgetKind::Tokens, 1000, None, "2026-11-01T00:00:00Z")),
            check(budget(BudgetKind::Cost, PICOS_PER_USD, None, "2026-11-01T00:00:00Z")),
            check(rate(RateKind::Tokens, RateUnit::Rpm, 1000)),
            check(rate(RateKind::Tokens, RateUnit::Rpm, u64::MAX)),
        ];
        let huge = Demand {
            tokens: u64::MAX,
            cost: Money(i64::MAX),
        };
        for c in &checks {
            let plan = Plan::new(c, now, &huge);
            assert_eq!(plan.wanted(), Amount::MAX, "{c:?}");
            // Nearly full counters: the sums saturate rather than wrap.
            let full = Counts {
                consumed: Amount::MAX - 1,
                reserved: Amount::MAX - 1,
            };
            for counts in [Counts::default(), full] {
                if plan.limit < Amount::MAX {
                    assert!(!plan.fits(counts), "{c:?} {counts:?}");
                }
                let mut after = counts;
                plan.apply(&mut after);
                assert!(after.consumed >= counts.consumed && after.reserved >= counts.reserved);
                assert!(after.used() >= counts.used());
                plan.unapply(&mut after);
                assert!(after.consumed >= 0 && after.reserved >= 0);
                let _ = plan.refusal(counts, now);
                let _ = plan.figures(counts, now);
            }
        }
    }

    #[test]
    fn rate_keys_change_at_minute_hour_and_day_boundaries() {
        let clock = ManualClock::new(t("2024-02-29T23:59:59.500Z"));
        let rpm = check(rate(RateKind::Requests, RateUnit::Rpm, 10));
        let rph = check(rate(RateKind::Tokens, RateUnit::Rph, 10));
        let rpd = check(rate(RateKind::Requests, RateUnit::Rpd, 10));
        let before: Vec<_> = [&rpm, &rph, &rpd]
            .iter()
            .map(|c| Plan::new(c, clock.now(), &Demand::default()).key)
            .collect();
        assert_eq!(before[0].start, t("2024-02-29T23:59:00Z"));
        assert_eq!(before[1].start, t("2024-02-29T23:00:00Z"));
        assert_eq!(before[2].start, t("2024-02-29T00:00:00Z"));
        clock.advance(Duration::milliseconds(500));
        let after: Vec<_> = [&rpm, &rph, &rpd]
            .iter()
            .map(|c| Plan::new(c, clock.now(), &Demand::default()).key)
            .collect();
        for (b, a) in before.iter().zip(&after) {
            assert_ne!(b, a, "a new window is a new key");
            assert_eq!(a.start, t("2024-03-01T00:00:00Z"));
        }
        // Inside a minute the key is stable.
        clock.advance(Duration::seconds(59));
        assert_eq!(Plan::new(&rpm, clock.now(), &Demand::default()).key, after[0]);
        // Requests and tokens at the same id never share a counter.
        assert_ne!(
            after[0].measure,
            Measure::of(&rate(RateKind::Tokens, RateUnit::Rpm, 10))
        );
    }

    #[test]
    fn budget_keys_follow_weeks_months_and_set_at() {
        // 2026-11-28 is a Saturday; the week turns at Sunday 00:00 UTC.
        let clock = ManualClock::new(t("2026-11-28T23:59:59Z"));
        let weekly = check(budget(
            BudgetKind::Cost,
            PICOS_PER_USD,
            Some(PeriodicReset::Weekly),
            "2026-11-01T00:00:00Z",
        ));
        let w1 = Plan::new(&weekly, clock.now(), &Demand::default());
        assert_eq!(w1.window.start, t("2026-11-22T00:00:00Z"));
        assert_eq!(w1.window.end, Some(t("2026-11-29T00:00:00Z")));
        clock.advance(Duration::seconds(1));
        let w2 = Plan::new(&weekly, clock.now(), &Demand::default());
        assert_eq!(w2.window.start, t("2026-11-29T00:00:00Z"));
        assert_eq!(w2.window.end, Some(t("2026-12-06T00:00:00Z")));

        // Monthly across a leap February and a year end.
        let monthly = check(budget(
            BudgetKind::Tokens,
            1000,
            Some(PeriodicReset::Monthly),
            "2022-06-15T12:00:00Z",
        ));
        clock.set(t("2024-02-29T23:59:59.999Z"));
        let m = Plan::new(&monthly, clock.now(), &Demand::default());
        assert_eq!(m.window.start, t("2024-02-01T00:00:00Z"));
        assert_eq!(m.window.end, Some(t("2024-03-01T00:00:00Z")));
        clock.advance(Duration::milliseconds(1));
        assert_eq!(
            Plan::new(&monthly, clock.now(), &Demand::default()).window.start,
            t("2024-03-01T00:00:00Z")
        );
        clock.set(t("2023-02-28T23:00:00Z"));
        assert_eq!(
            Plan::new(&monthly, clock.now(), &Demand::default()).window.end,
            Some(t("2023-03-01T00:00:00Z"))
        );
        clock.set(t("2026-12-31T23:59:59Z"));
        assert_eq!(
            Plan::new(&monthly, clock.now(), &Demand::default()).window.end,
            Some(t("2027-01-01T00:00:00Z"))
        );

        // The first period starts when the limit was set, not at the calendar start.
        let fresh = check(budget(
            BudgetKind::Cost,
            PICOS_PER_USD,
            Some(PeriodicReset::Monthly),
            "2026-11-26T09:30:00Z",
        ));
        clock.set(t("2026-11-27T00:00:00Z"));
        let f = Plan::new(&fresh, clock.now(), &Demand::default());
        assert_eq!(f.window.start, t("2026-11-26T09:30:00Z"));
        assert_eq!(f.window.end, Some(t("2026-12-01T00:00:00Z")));

        // No reset: one window from set_at, forever.
        let forever = check(budget(BudgetKind::Cost, PICOS_PER_USD, None, "2026-11-26T09:30:00Z"));
        clock.set(t("2030-01-01T00:00:00Z"));
        let p = Plan::new(&forever, clock.now(), &Demand::default());
        assert_eq!(
            p.window,
            Window {
                start: t("2026-11-26T09:30:00Z"),
                end: None
            }
        );
        assert!(!p.window.is_over(clock.now()));
        assert_eq!(
            p.key.to_string(),
            format!("iw:int:ws|budget.cost|{}", t("2026-11-26T09:30:00Z").timestamp_micros())
        );
    }

    #[test]
    fn fit_is_consumed_plus_reserved_plus_worst_case_at_most_limit() {
        let now = t("2026-11-26T10:00:00Z");
        let cost = Plan::new(
            &check(budget(BudgetKind::Cost, PICOS_PER_USD, None, "2026-11-01T00:00:00Z")),
            now,
            &demand(10, 30),
        );
        assert_eq!(cost.reserve, 30 * PICOS_PER_USD / 100);
        let c = |consumed_cents: i64, reserved_cents: i64| Counts {
            consumed: consumed_cents * PICOS_PER_USD / 100,
            reserved: reserved_cents * PICOS_PER_USD / 100,
        };
        assert!(cost.fits(c(0, 0)));
        assert!(cost.fits(c(40, 30)), "exactly at the limit fits");
        assert!(!cost.fits(c(40, 31)));
        assert!(!cost.fits(c(71, 0)));

        let tokens = Plan::new(
            &check(budget(BudgetKind::Tokens, 1000, None, "2026-11-01T00:00:00Z")),
            now,
            &demand(400, 0),
        );
        assert_eq!((tokens.consume, tokens.reserve, tokens.limit), (0, 400, 1000));
        assert!(tokens.fits(Counts {
            consumed: 200,
            reserved: 400
        }));
        assert!(!tokens.fits(Counts {
            consumed: 201,
            reserved: 400
        }));

        // An exhausted budget refuses even a free request.
        let free = Plan::new(
            &check(budget(BudgetKind::Cost, PICOS_PER_USD, None, "2026-11-01T00:00:00Z")),
            now,
            &demand(10, 0),
        );
        assert!(free.fits(c(99, 1)));
        assert!(!free.fits(c(100, 0)));

        let rpm = Plan::new(&check(rate(RateKind::Requests, RateUnit::Rpm, 2)), now, &demand(500, 1));
        assert_eq!((rpm.consume, rpm.reserve), (1, 0));
        assert!(rpm.fits(Counts {
            consumed: 1,
            reserved: 0
        }));
        assert!(!rpm.fits(Counts {
            consumed: 2,
            reserved: 0
        }));

        let tpm = Plan::new(
            &check(rate(RateKind::Tokens, RateUnit::Rpm, 1000)),
            now,
            &demand(500, 1),
        );
        assert_eq!((tpm.consume, tpm.reserve), (0, 500));
        assert!(tpm.fits(Counts {
            consumed: 250,
            reserved: 250
        }));
        assert!(!tpm.fits(Counts {
            consumed: 250,
            reserved: 251
        }));

        let mut counts = Counts::default();
        rpm.apply(&mut counts);
        tpm.apply(&mut counts);
        assert_eq!(
            counts,
            Counts {
                consumed: 1,
                reserved: 500
            }
        );
        rpm.unapply(&mut counts);
        tpm.unapply(&mut counts);
        assert_eq!(counts, Counts::default());
    }

    #[test]
    fn a_rate_limit_of_zero_refuses_everything() {
        let now = t("2026-11-26T10:00:30Z");
        for kind in [RateKind::Requests, RateKind::Tokens] {
            let p = Plan::new(&check(rate(kind, RateUnit::Rpm, 0)), now, &Demand::default());
            assert!(!p.fits(Counts::default()));
            let r = p.refusal(Counts::default(), now);
            assert_eq!(r.http_status(), 429);
            assert_eq!(r.retry_after(), Some(30));
        }
    }

    #[test]
    fn refusals_name_the_level_and_the_wait() {
        let clock = ManualClock::new(t("2026-11-26T10:59:45.200Z"));
        let mut c = check(rate(RateKind::Requests, RateUnit::Rph, 5));
        c.id = owner_of(Level::ApiKey);
        let p = Plan::new(&c, clock.now(), &Demand::default());
        let r = p.refusal(
            Counts {
                consumed: 5,
                reserved: 0,
            },
            clock.now(),
        );
        assert_eq!(r.level, Level::ApiKey);
        assert_eq!(r.error_type(), "api_key_rate_limit_error");
        assert_eq!(r.retry_after(), Some(15), "14.8 s rounds up");
        assert_eq!(
            r.reason,
            RefusalReason::Rate {
                kind: RateKind::Requests,
                unit: RateUnit::Rph,
                retry_after: 15,
                figures: RateFigures {
                    limit: 5,
                    remaining: 0,
                    reset_secs: 15
                },
            }
        );
        // Day windows end at midnight.
        let rpd = Plan::new(
            &check(rate(RateKind::Tokens, RateUnit::Rpd, 5)),
            clock.now(),
            &demand(9, 0),
        );
        assert_eq!(
            rpd.refusal(Counts::default(), clock.now()).retry_after(),
            Some(13 * 3600 + 15)
        );

        let mut b = check(budget(
            BudgetKind::Tokens,
            100,
            Some(PeriodicReset::Weekly),
            "2026-01-01T00:00:00Z",
        ));
        for (level, ty) in [
            (Level::IntegrationWorkspace, "integration_exhaust_error"),
            (Level::Provider, "provider_exhaust_error"),
            (Level::ApiKey, "api_key_exhaust_error"),
            (Level::Workspace, "workspace_exhaust_error"),
        ] {
            b.id = owner_of(level);
            let r = Plan::new(&b, clock.now(), &demand(50, 0)).refusal(
                Counts {
                    consumed: 60,
                    reserved: 0,
                },
                clock.now(),
            );
            assert_eq!((r.http_status(), r.error_type(), r.retry_after()), (412, ty, None));
            assert_eq!(
                r.reason,
                RefusalReason::Budget {
                    kind: BudgetKind::Tokens,
                    credit_limit: 100,
                    consumed: 60,
                    reserved: 0,
                    wanted: 50,
                    next_reset: Some(t("2026-11-29T00:00:00Z")),
                }
            );
            assert!(r.to_string().contains(level.error_prefix()));
        }
        for (level, ty) in [
            (Level::IntegrationWorkspace, "integration_rate_limit_error"),
            (Level::Provider, "provider_rate_limit_error"),
            (Level::Workspace, "workspace_rate_limit_error"),
        ] {
            c.id = owner_of(level);
            let r = Plan::new(&c, clock.now(), &Demand::default()).refusal(Counts::default(), clock.now());
            assert_eq!(r.error_type(), ty);
        }
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let now = t("2026-11-26T10:00:59.999Z");
        let p = Plan::new(
            &check(rate(RateKind::Requests, RateUnit::Rpm, 1)),
            now,
            &Demand::default(),
        );
        assert_eq!(
            p.refusal(
                Counts {
                    consumed: 1,
                    reserved: 0
                },
                now
            )
            .retry_after(),
            Some(1)
        );
        // Even when asked about a window that has already ended.
        let later = now + Duration::seconds(5);
        assert_eq!(
            p.refusal(
                Counts {
                    consumed: 1,
                    reserved: 0
                },
                later
            )
            .retry_after(),
            Some(1)
        );
        assert_eq!(seconds_until(later, now), 0);
    }

    #[test]
    fn headers_report_the_tightest_limit_of_each_kind() {
        let now = t("2026-11-26T10:00:20Z");
        let mut h = RateHeaders::default();
        let rpm = Plan::new(
            &check(rate(RateKind::Requests, RateUnit::Rpm, 10)),
            now,
            &demand(100, 0),
        );
        let rph = Plan::new(
            &check(rate(RateKind::Requests, RateUnit::Rph, 100)),
            now,
            &demand(100, 0),
        );
        let tpm = Plan::new(
            &check(rate(RateKind::Tokens, RateUnit::Rpm, 1000)),
            now,
            &demand(100, 0),
        );
        let bud = Plan::new(
            &check(budget(BudgetKind::Tokens, 1000, None, "2026-01-01T00:00:00Z")),
            now,
            &demand(100, 0),
        );
        rpm.add_headers(
            &mut h,
            Counts {
                consumed: 3,
                reserved: 0,
            },
            now,
        );
        rph.add_headers(
            &mut h,
            Counts {
                consumed: 95,
                reserved: 0,
            },
            now,
        );
        tpm.add_headers(
            &mut h,
            Counts {
                consumed: 100,
                reserved: 100,
            },
            now,
        );
        bud.add_headers(
            &mut h,
            Counts {
                consumed: 999,
                reserved: 0,
            },
            now,
        );
        assert_eq!(
            h.requests,
            Some(RateFigures {
                limit: 100,
                remaining: 5,
                reset_secs: 3580
            })
        );
        assert_eq!(
            h.tokens,
            Some(RateFigures {
                limit: 1000,
                remaining: 800,
                reset_secs: 40
            })
        );
        // Equal remaining: the later reset is the one to heed.
        let a = RateFigures {
            limit: 10,
            remaining: 2,
            reset_secs: 40,
        };
        let b = RateFigures {
            limit: 50,
            remaining: 2,
            reset_secs: 3000,
        };
        assert_eq!(RateFigures::tighter(Some(a), b), b);
        assert_eq!(RateFigures::tighter(Some(b), a), b);
        assert_eq!(RateFigures::tighter(None, a), a);
    }

    #[test]
    fn settlement_adds_actual_usage_and_requests_stay_counted() {
        let cost = Actual {
            tokens: 120,
            cost: Some(Money(5)),
        };
        assert_eq!(Measure::CostBudget.settled(&cost), 5);
        assert_eq!(Measure::TokenBudget.settled(&cost), 120);
        assert_eq!(Measure::Tokens(RateUnit::Rph).settled(&cost), 120);
        assert_eq!(Measure::Requests(RateUnit::Rpm).settled(&cost), 0);
        // Only requests hold nothing to settle: they are consumed at
        // admission. `reserves` says so, and plans agree.
        for rule in [
            budget(BudgetKind::Cost, 1000, None, "2026-11-01T00:00:00Z"),
            budget(BudgetKind::Tokens, 1000, None, "2026-11-01T00:00:00Z"),
            rate(RateKind::Tokens, RateUnit::Rpd, 1000),
            rate(RateKind::Requests, RateUnit::Rpm, 1000),
        ] {
            let plan = Plan::new(&check(rule), t("2026-11-26T10:00:30Z"), &demand(10, 10));
            let measure = plan.key.measure;
            assert_eq!(measure.reserves(), !matches!(measure, Measure::Requests(_)));
            assert_eq!(measure.reserves(), plan.reserve > 0, "{measure:?}");
        }
        assert_eq!(
            Measure::CostBudget.settled(&Actual { tokens: 1, cost: None }),
            0,
            "unknown price settles no cost"
        );
        assert_eq!(
            Measure::CostBudget.settled(&Actual {
                tokens: 1,
                cost: Some(Money(-3))
            }),
            0
        );
        assert_eq!(
            Measure::Tokens(RateUnit::Rpm).settled(&Actual {
                tokens: u64::MAX,
                cost: None
            }),
            Amount::MAX
        );
    }

    #[test]
    fn alerts_fire_once_when_a_mark_is_crossed() {
        let marks = BudgetMarks {
            credit_limit: 100,
            alert_threshold: Some(80),
        };
        let mut alerted = Alerted::default();
        assert_eq!(marks.crossed(0, 79, &mut alerted), [None, None]);
        assert_eq!(marks.crossed(79, 80, &mut alerted), [Some(AlertKind::Threshold), None]);
        assert_eq!(marks.crossed(80, 90, &mut alerted), [None, None]);
        assert_eq!(marks.crossed(90, 120, &mut alerted), [None, Some(AlertKind::Exhausted)]);
        assert_eq!(
            alerted,
            Alerted {
                threshold: true,
                exhausted: true
            }
        );
        // Even if consumption could fall back below (it cannot, short of a reset), the marks hold.
        assert_eq!(marks.crossed(0, 200, &mut alerted), [None, None]);
        // One settlement may cross both marks.
        let mut fresh = Alerted::default();
        assert_eq!(
            marks.crossed(10, 100, &mut fresh),
            [Some(AlertKind::Threshold), Some(AlertKind::Exhausted)]
        );
        // A mark already passed before this settlement does not fire.
        let mut restored = marks.passed(85);
        assert_eq!(
            restored,
            Alerted {
                threshold: true,
                exhausted: false
            }
        );
        assert_eq!(marks.crossed(85, 86, &mut Alerted::default()), [None, None]);
        assert_eq!(
            marks.crossed(85, 100, &mut restored),
            [None, Some(AlertKind::Exhausted)]
        );
        // No threshold configured: only exhaustion alerts.
        let plain = BudgetMarks {
            credit_limit: 100,
            alert_threshold: None,
        };
        assert_eq!(
            plain.crossed(0, 100, &mut Alerted::default()),
            [None, Some(AlertKind::Exhausted)]
        );
    }

    /// Amounts around every edge: 0, small, and near the largest.
    const EDGES: [Amount; 9] = [0, 1, 2, 5, 9, 10, 11, Amount::MAX - 1, Amount::MAX];

    #[test]
    fn bounds_say_what_fits_says() {
        let now = t("2026-11-26T10:00:00Z");
        for limit in EDGES {
            let rules = [
                Rule::Rate(RateLimit {
                    kind: RateKind::Tokens,
                    unit: RateUnit::Rpm,
                    value: limit as u64,
                }),
                Rule::Rate(RateLimit {
                    kind: RateKind::Requests,
                    unit: RateUnit::Rpm,
                    value: limit as u64,
                }),
                budget(BudgetKind::Tokens, limit, None, "2026-01-01T00:00:00Z"),
            ];
            for rule in rules {
                for tokens in EDGES {
                    let p = Plan::new(&check(rule), now, &demand(tokens as u64, 0));
                    for consumed in EDGES {
                        for reserved in EDGES {
                            let counts = Counts { consumed, reserved };
                            let direct = match p.rule {
                                Rule::Rate(r) if r.value == 0 => false,
                                Rule::Budget { .. } if counts.consumed >= p.limit => false,
                                _ => counts.used().saturating_add(p.wanted()) <= p.limit,
                            };
                            assert_eq!(p.fits(counts), direct, "{rule:?} {tokens} {counts:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn firing_ranges_say_what_crossed_says() {
        for credit_limit in EDGES {
            for alert_threshold in [None, Some(0), Some(5), Some(Amount::MAX)] {
                let marks = BudgetMarks {
                    credit_limit,
                    alert_threshold,
                };
                for added in EDGES {
                    let ranges = marks.firing(added);
                    for before in EDGES {
                        let fired = marks.crossed(before, before.saturating_add(added), &mut Alerted::default());
                        for (range, fired) in ranges.iter().zip(fired) {
                            assert_eq!(
                                range.as_ref().is_some_and(|r| r.contains(&before)),
                                fired.is_some(),
                                "{marks:?} +{added} from {before}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn huge_demands_saturate_instead_of_wrapping() {
        let now = t("2026-11-26T10:00:00Z");
        let p = Plan::new(
            &check(rate(RateKind::Tokens, RateUnit::Rpm, u64::MAX)),
            now,
            &demand(u64::MAX, 0),
        );
        assert_eq!(p.limit, Amount::MAX);
        assert!(p.fits(Counts::default()));
        let b = Plan::new(
            &check(budget(BudgetKind::Tokens, 1000, None, "2026-01-01T00:00:00Z")),
            now,
            &demand(u64::MAX, 0),
        );
        assert!(!b.fits(Counts::default()));
        let mut c = Counts {
            consumed: Amount::MAX,
            reserved: 0,
        };
        b.apply(&mut c);
        assert_eq!(c.used(), Amount::MAX);
    }
}
