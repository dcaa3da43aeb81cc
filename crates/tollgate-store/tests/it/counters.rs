//! The limit counters under concurrency, across windows, and through their
//! whole lifecycle (admit, settle, release, drop, status, reset, restore).
//!
//! One suite for both stores: each test takes a [`Store`] and runs once in
//! process (`counters::memory::…`) and once in the shared Redis
//! (`counters::redis::…`, each test under a key prefix of its own, whose keys
//! are deleted with the store: `tollgate_testkit::backend::RedisKeys`).

use chrono::{DateTime, Duration, Utc};
use std::sync::Arc;
use tollgate_core::admission::{
    Actual, AlertEvent, AlertKind, Demand, Level, LimitCheck, LimitId, LimitOwner, RateFigures, RefusalReason, Rule,
};
use tollgate_core::clock::{Clock, ManualClock};
use tollgate_core::limits::{BudgetKind, PeriodicReset, RateKind, RateLimit, RateUnit, UsageLimit};
use tollgate_core::money::{Money, PICOS_PER_USD};
use tollgate_store::counters::{
    AdmitError, Consumption, CounterError, Counters, MemoryCounters, RedisCounters, RedisSettings, Reservation,
    RestoreTurn, MAX_CHECKS,
};
use tollgate_testkit::backend::RedisKeys;

pub fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

pub fn usd_cents(c: i64) -> Money {
    Money(c * PICOS_PER_USD / 100)
}

pub fn rate(kind: RateKind, unit: RateUnit, value: u64) -> Rule {
    Rule::Rate(RateLimit { kind, unit, value })
}

pub fn budget(kind: BudgetKind, credit_limit: i64, threshold: Option<i64>, reset: Option<PeriodicReset>) -> Rule {
    Rule::Budget {
        limit: UsageLimit {
            kind,
            credit_limit,
            alert_threshold: threshold,
            periodic_reset: reset,
        },
        set_at: t("2026-01-01T00:00:00Z"),
    }
}

/// The limit id a counter key names (see `tollgate_core::limit_owner`).
pub fn lid(key: &str) -> LimitId {
    LimitId::new(LimitOwner::parse(key).unwrap_or_else(|| panic!("not a limit key: {key}")))
}

/// A check of the limit whose counter key is `id` (its owner gives the level).
pub fn check(id: &str, rule: Rule) -> LimitCheck {
    LimitCheck { id: lid(id), rule }
}

pub fn refusal(e: AdmitError) -> tollgate_core::admission::Refusal {
    match e {
        AdmitError::Refused(r) => *r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

pub fn tokens(n: u64) -> Demand {
    Demand {
        tokens: n,
        cost: Money::ZERO,
    }
}

/// The group every test's limits are in.
pub const G: &str = "ws:test";
/// The reservation lease of test stores.
pub const LEASE: std::time::Duration = std::time::Duration::from_secs(600);

/// A counter store under test, with what the suite needs to look inside.
pub struct Store {
    pub counters: Arc<dyn Counters>,
    kind: Kind,
}

enum Kind {
    Memory(MemoryCounters),
    Redis(RedisKeys),
}

/// Counters in Redis at `url` under `prefix`.
pub fn redis_counters(url: &str, prefix: &str, lease: std::time::Duration) -> RedisCounters {
    let mut settings = RedisSettings::new(url, lease);
    settings.key_prefix = prefix.to_owned();
    RedisCounters::new(settings).unwrap()
}

impl Store {
    pub fn memory() -> Store {
        let m = MemoryCounters::new();
        Store {
            counters: Arc::new(m.clone()),
            kind: Kind::Memory(m),
        }
    }

    /// Counters in the shared Redis under a prefix of their own, with [`G`]
    /// already rebuilt (as start-up leaves it).
    pub async fn redis() -> Store {
        Self::on(RedisKeys::new()).await
    }

    /// Counters in `keys`' Redis under its prefix, with [`G`] already
    /// rebuilt. Dropping the store deletes the keys.
    pub async fn on(keys: RedisKeys) -> Store {
        let counters: Arc<dyn Counters> = Arc::new(redis_counters(keys.url(), keys.prefix(), LEASE));
        assert_eq!(counters.begin_restore(G).await.unwrap(), RestoreTurn::Ours);
        counters.restored(G).await.unwrap();
        Store {
            counters,
            kind: Kind::Redis(keys),
        }
    }

    /// The Redis URL and key prefix of a store in Redis.
    pub fn redis_keys(&self) -> &RedisKeys {
        match &self.kind {
            Kind::Redis(keys) => keys,
            Kind::Memory(_) => panic!("counters in process have no Redis keys"),
        }
    }

    /// Another handle on the same counters: another replica.
    pub fn replica(&self) -> Arc<dyn Counters> {
        match &self.kind {
            Kind::Memory(m) => Arc::new(m.clone()),
            Kind::Redis(keys) => Arc::new(redis_counters(keys.url(), keys.prefix(), LEASE)),
        }
    }

    /// A store of its own, of the same kind.
    pub async fn other(&self) -> Store {
        match &self.kind {
            Kind::Memory(_) => Store::memory(),
            Kind::Redis(keys) => Store::on(RedisKeys::on(keys.url())).await,
        }
    }

    /// How many counters the store holds.
    pub fn stored(&self) -> usize {
        match &self.kind {
            Kind::Memory(m) => m.counter_count(),
            Kind::Redis(k) => keys(k.url(), &format!("{}*:c:*", k.prefix())).len(),
        }
    }

    pub async fn admit(
        &self,
        now: DateTime<Utc>,
        checks: &[LimitCheck],
        demand: Demand,
    ) -> Result<Reservation, AdmitError> {
        self.counters.admit(now, G, checks, demand).await
    }

    pub async fn settle(&self, r: Reservation, tokens: u64, cost: Option<Money>) -> Vec<AlertEvent> {
        self.counters.settle(r, Actual { tokens, cost }).await.unwrap()
    }

    pub async fn status(&self, id: &str, rule: &Rule, now: DateTime<Utc>) -> Consumption {
        self.counters.status(G, &lid(id), rule, now).await.unwrap()
    }

    /// Waits until what is reserved in `id`'s counter is `want` (a store
    /// that gives a dropped reservation back over the network does it in a
    /// task of its own).
    pub async fn reserved_becomes(&self, id: &str, rule: &Rule, now: DateTime<Utc>, want: i64) {
        for _ in 0..300 {
            if self.status(id, rule, now).await.reserved == want {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!(
            "{id}: reserved stayed {}, not {want}",
            self.status(id, rule, now).await.reserved
        );
    }
}

/// Every key matching `pattern` (SCAN).
pub fn keys(url: &str, pattern: &str) -> Vec<String> {
    let mut conn = ::redis::Client::open(url).unwrap().get_connection().unwrap();
    let mut out = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = ::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query(&mut conn)
            .unwrap();
        out.extend(batch);
        if next == 0 {
            return out;
        }
        cursor = next;
    }
}

/// Runs each test once per store.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Store::memory()).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Store::redis().await).await
                }
            )*
        }
    };
}

on_both_stores!(
    exactly_the_rate_limit_gets_through_under_concurrency,
    a_cost_budget_admits_only_worst_cases_that_fit,
    settled_tokens_never_pass_a_token_budget,
    release_gives_back_tokens_and_cost_but_not_the_request,
    a_dropped_reservation_releases_itself_once,
    alerts_fire_once_per_period_and_again_in_the_next,
    alerts_fire_once_across_replicas,
    rate_windows_roll_over_with_the_clock,
    settlement_lands_in_the_window_of_the_admission,
    a_rate_limit_of_zero_refuses,
    a_refusal_at_one_level_reserves_nothing_at_the_others,
    the_same_counter_twice_in_one_request_counts_twice,
    an_unknown_price_settles_no_cost,
    amounts_beyond_two_to_the_53_stay_exact,
    restore_rebuilds_budgets_without_repeating_alerts,
    too_many_checks_is_an_error_not_a_refusal,
    a_reservation_settles_only_where_it_was_made,
);

const NOW: &str = "2026-11-26T10:00:30Z";

/// 200 concurrent admissions against 50 requests a minute, spread over four
/// replicas sharing the store: exactly 50 get through.
async fn exactly_the_rate_limit_gets_through_under_concurrency(s: Store) {
    let limit = serde_json::json!({"type":"requests","unit":"rpm","value":50});
    let rule = Rule::Rate(RateLimit::from_json(&limit).unwrap());
    let checks = Arc::new(vec![check("ws:1", rule)]);
    let now = t(NOW);
    let replicas: Vec<_> = (0..4).map(|_| s.replica()).collect();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (counters, checks) = (replicas[i % 4].clone(), checks.clone());
            tokio::spawn(async move {
                match counters.admit(now, G, &checks, Demand::default()).await {
                    Ok(r) => {
                        counters.settle(r, Actual::default()).await.unwrap();
                        true
                    }
                    Err(e) => {
                        assert_eq!(refusal(e).http_status(), 429);
                        false
                    }
                }
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.unwrap() as i32;
    }
    assert_eq!(admitted, 50);
    let status = s.status("ws:1", &rule, now).await;
    assert_eq!((status.consumed, status.reserved, status.limit), (50, 0, 50));
}

async fn a_cost_budget_admits_only_worst_cases_that_fit(s: Store) {
    let rule = budget(BudgetKind::Cost, PICOS_PER_USD, None, None);
    let checks = Arc::new(vec![check("key:1", rule)]);
    let now = t(NOW);
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let (counters, checks) = (
                if i % 2 == 0 { s.counters.clone() } else { s.replica() },
                checks.clone(),
            );
            tokio::spawn(async move {
                let demand = Demand {
                    tokens: 1000,
                    cost: usd_cents(30),
                };
                match counters.admit(now, G, &checks, demand).await {
                    Ok(r) => {
                        tokio::task::yield_now().await;
                        let actual = Actual {
                            tokens: 1000,
                            cost: Some(usd_cents(30)),
                        };
                        counters.settle(r, actual).await.unwrap();
                        true
                    }
                    Err(e) => {
                        let r = refusal(e);
                        assert_eq!((r.http_status(), r.level), (412, Level::ApiKey));
                        false
                    }
                }
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.unwrap() as i32;
    }
    assert_eq!(admitted, 3);
    let status = s.status("key:1", &rule, now).await;
    assert_eq!(Money(status.consumed), usd_cents(90));
    assert_eq!(status.reserved, 0);
    assert!(!status.exhausted());
}

async fn settled_tokens_never_pass_a_token_budget(s: Store) {
    let rule = budget(BudgetKind::Tokens, 1_000, None, Some(PeriodicReset::Monthly));
    let checks = Arc::new(vec![check("prv:1", rule)]);
    let now = t(NOW);
    let tasks: Vec<_> = (0..64u64)
        .map(|i| {
            let (counters, checks) = (s.counters.clone(), checks.clone());
            tokio::spawn(async move {
                let worst = 60 + i % 50;
                let Ok(r) = counters.admit(now, G, &checks, tokens(worst)).await else {
                    return 0;
                };
                tokio::task::yield_now().await;
                // Known usage, at most the worst case.
                let used = worst - i % 13;
                counters
                    .settle(
                        r,
                        Actual {
                            tokens: used,
                            cost: None,
                        },
                    )
                    .await
                    .unwrap();
                used
            })
        })
        .collect();
    let mut settled = 0;
    for task in tasks {
        settled += task.await.unwrap();
    }
    let status = s.status("prv:1", &rule, now).await;
    assert_eq!(status.consumed as u64, settled);
    assert!(settled <= 1_000, "settled {settled} tokens");
    assert!(
        settled >= 1_000 - 2 * 110,
        "the budget was used, not refused wholesale: {settled}"
    );
    assert_eq!(status.reserved, 0);
}

async fn release_gives_back_tokens_and_cost_but_not_the_request(s: Store) {
    let now = t(NOW);
    let cost = budget(BudgetKind::Cost, PICOS_PER_USD, None, None);
    let rpm = rate(RateKind::Requests, RateUnit::Rpm, 10);
    let tpm = rate(RateKind::Tokens, RateUnit::Rpm, 1_000);
    let checks = [check("ws:w", cost), check("ws:w", rpm), check("ws:w", tpm)];
    let demand = Demand {
        tokens: 800,
        cost: usd_cents(80),
    };
    let r = s.admit(now, &checks, demand).await.unwrap();
    assert_eq!(s.status("ws:w", &cost, now).await.reserved, usd_cents(80).0);
    assert_eq!(s.status("ws:w", &tpm, now).await.reserved, 800);
    // A second worst case does not fit beside the first.
    refusal(s.admit(now, &checks, demand).await.unwrap_err());
    s.counters.release(r).await.unwrap();
    for rule in [cost, tpm] {
        let st = s.status("ws:w", &rule, now).await;
        assert_eq!((st.consumed, st.reserved), (0, 0));
    }
    // Both requests counted against the request rate (the refused one took nothing).
    assert_eq!(s.status("ws:w", &rpm, now).await.consumed, 1);
    s.admit(now, &checks, demand).await.unwrap();
}

async fn a_dropped_reservation_releases_itself_once(s: Store) {
    let now = t(NOW);
    let rule = budget(BudgetKind::Tokens, 1_000, None, None);
    let checks = [check("key:k", rule)];
    let demand = tokens(600);
    let r = s.admit(now, &checks, demand).await.unwrap();
    drop(r);
    s.reserved_becomes("key:k", &rule, now, 0).await;
    assert_eq!(s.status("key:k", &rule, now).await.consumed, 0);

    // A cancelled client: the task holding the reservation is aborted mid-call.
    let (admitted_tx, admitted_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn({
        let shared = s.counters.clone();
        let checks = checks.clone();
        async move {
            let r = shared.admit(now, G, &checks, demand).await.unwrap();
            let _ = admitted_tx.send(());
            std::future::pending::<()>().await;
            drop(r);
        }
    });
    admitted_rx.await.unwrap();
    assert_eq!(s.status("key:k", &rule, now).await.reserved, 600);
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    s.reserved_becomes("key:k", &rule, now, 0).await;

    // Settled, then dropped: nothing is given back twice.
    let r = s.admit(now, &checks, demand).await.unwrap();
    s.settle(r, 500, None).await;
    let st = s.status("key:k", &rule, now).await;
    assert_eq!((st.consumed, st.reserved), (500, 0));
}

async fn spend(s: &Store, checks: &[LimitCheck], now: DateTime<Utc>, cents: i64) -> Vec<AlertEvent> {
    let r = s
        .admit(
            now,
            checks,
            Demand {
                tokens: 1,
                cost: usd_cents(cents),
            },
        )
        .await
        .unwrap();
    s.settle(r, 1, Some(usd_cents(cents))).await
}

async fn alerts_fire_once_per_period_and_again_in_the_next(s: Store) {
    // 2026-11-26 is a Thursday: the week turns on Sunday the 29th.
    let clock = ManualClock::new(t("2026-11-26T10:00:00Z"));
    let rule = budget(
        BudgetKind::Cost,
        PICOS_PER_USD,
        Some(PICOS_PER_USD / 2),
        Some(PeriodicReset::Weekly),
    );
    let checks = [check("iw:a:b", rule)];
    assert!(spend(&s, &checks, clock.now(), 40).await.is_empty());
    let events = spend(&s, &checks, clock.now(), 20).await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(
        (e.kind, e.level, e.id.as_str()),
        (AlertKind::Threshold, Level::IntegrationWorkspace, "iw:a:b")
    );
    assert_eq!((Money(e.consumed), e.limit), (usd_cents(60), PICOS_PER_USD));
    assert_eq!(e.period_start, t("2026-11-22T00:00:00Z"));
    assert!(
        spend(&s, &checks, clock.now(), 20).await.is_empty(),
        "no second threshold alert"
    );
    let events = spend(&s, &checks, clock.now(), 20).await;
    assert_eq!(
        events.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [AlertKind::Exhausted]
    );
    // Exhausted: even a free request is refused now.
    let r = refusal(s.admit(clock.now(), &checks, Demand::default()).await.unwrap_err());
    assert_eq!((r.http_status(), r.error_type()), (412, "integration_exhaust_error"));
    assert!(s.status("iw:a:b", &rule, clock.now()).await.exhausted());

    // The next week starts afresh and alerts again.
    clock.set(t("2026-11-29T00:00:00Z"));
    let st = s.status("iw:a:b", &rule, clock.now()).await;
    assert_eq!((st.consumed, st.window.end), (0, Some(t("2026-12-06T00:00:00Z"))));
    let events = spend(&s, &checks, clock.now(), 100).await;
    assert_eq!(
        events.iter().map(|e| (e.kind, e.period_start)).collect::<Vec<_>>(),
        [
            (AlertKind::Threshold, t("2026-11-29T00:00:00Z")),
            (AlertKind::Exhausted, t("2026-11-29T00:00:00Z"))
        ]
    );

    // reset_usage: the same period counts from zero and may alert again.
    s.counters.reset(G, &lid("iw:a:b"), &rule, clock.now()).await.unwrap();
    assert_eq!(s.status("iw:a:b", &rule, clock.now()).await.consumed, 0);
    let events = spend(&s, &checks, clock.now(), 50).await;
    assert_eq!(
        events.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [AlertKind::Threshold]
    );
}

/// Many replicas settle at once past both marks: each alert fires once in all.
async fn alerts_fire_once_across_replicas(s: Store) {
    let now = t(NOW);
    let rule = budget(BudgetKind::Tokens, 1_000, Some(500), Some(PeriodicReset::Monthly));
    let checks = Arc::new(vec![check("key:alerts", rule)]);
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let (counters, checks) = (s.replica(), checks.clone());
            tokio::spawn(async move {
                let r = counters.admit(now, G, &checks, tokens(25)).await.unwrap();
                tokio::task::yield_now().await;
                counters.settle(r, Actual { tokens: 25, cost: None }).await.unwrap()
            })
        })
        .collect();
    let mut kinds = Vec::new();
    for task in tasks {
        kinds.extend(task.await.unwrap().into_iter().map(|e| e.kind));
    }
    kinds.sort_by_key(|k| *k as u8);
    assert_eq!(kinds, [AlertKind::Threshold, AlertKind::Exhausted]);
    assert_eq!(s.status("key:alerts", &rule, now).await.consumed, 1_000);
}

async fn rate_windows_roll_over_with_the_clock(s: Store) {
    let clock = ManualClock::new(t("2026-11-26T10:00:45.500Z"));
    let rule = rate(RateKind::Requests, RateUnit::Rpm, 2);
    let checks = [check("prv:x", rule)];
    let first = s.admit(clock.now(), &checks, Demand::default()).await.unwrap();
    assert_eq!(
        first.headers().requests,
        Some(RateFigures {
            limit: 2,
            remaining: 1,
            reset_secs: 15
        })
    );
    s.admit(clock.now(), &checks, Demand::default()).await.unwrap();
    let r = refusal(s.admit(clock.now(), &checks, Demand::default()).await.unwrap_err());
    assert_eq!(
        (r.level, r.error_type(), r.retry_after()),
        (Level::Provider, "provider_rate_limit_error", Some(15))
    );
    match r.reason {
        RefusalReason::Rate { figures, .. } => assert_eq!((figures.limit, figures.remaining), (2, 0)),
        other => panic!("{other:?}"),
    }
    clock.advance(Duration::milliseconds(14_499));
    refusal(s.admit(clock.now(), &checks, Demand::default()).await.unwrap_err());
    clock.advance(Duration::milliseconds(1));
    assert!(s.admit(clock.now(), &checks, Demand::default()).await.is_ok());
}

async fn settlement_lands_in_the_window_of_the_admission(s: Store) {
    let clock = ManualClock::new(t("2026-11-30T23:59:59Z"));
    let tpm = rate(RateKind::Tokens, RateUnit::Rpm, 1_000);
    let monthly = budget(BudgetKind::Tokens, 5_000, None, Some(PeriodicReset::Monthly));
    let checks = [check("ws:w", tpm), check("ws:w", monthly)];
    let r = s.admit(clock.now(), &checks, tokens(900)).await.unwrap();
    let november = clock.now();
    clock.advance(Duration::seconds(2));
    s.settle(r, 700, None).await;
    assert_eq!(s.status("ws:w", &tpm, november).await.consumed, 700);
    assert_eq!(s.status("ws:w", &monthly, november).await.consumed, 700);
    assert_eq!(s.status("ws:w", &tpm, clock.now()).await.consumed, 0);
    assert_eq!(s.status("ws:w", &monthly, clock.now()).await.consumed, 0);
}

async fn a_rate_limit_of_zero_refuses(s: Store) {
    let now = t(NOW);
    for kind in [RateKind::Requests, RateKind::Tokens] {
        let checks = [check("prv:off", rate(kind, RateUnit::Rpd, 0))];
        let r = refusal(s.admit(now, &checks, Demand::default()).await.unwrap_err());
        assert_eq!((r.http_status(), r.level), (429, Level::Provider));
        assert_eq!(r.retry_after(), Some(13 * 3600 + 59 * 60 + 30));
    }
}

async fn a_refusal_at_one_level_reserves_nothing_at_the_others(s: Store) {
    let now = t(NOW);
    let iw_budget = budget(BudgetKind::Cost, 10 * PICOS_PER_USD, None, None);
    let iw_rate = rate(RateKind::Requests, RateUnit::Rpm, 100);
    let provider_tokens = rate(RateKind::Tokens, RateUnit::Rph, 100_000);
    let key_budget = budget(BudgetKind::Tokens, 1_000, None, None);
    let ws_rate = rate(RateKind::Requests, RateUnit::Rpm, 100);
    let checks = [
        check("iw:i:w", iw_budget),
        check("iw:i:w", iw_rate),
        check("prv:slug", provider_tokens),
        check("key:k:1", key_budget),
        check("ws:w:1", ws_rate),
    ];
    let demand = Demand {
        tokens: 1_001,
        cost: usd_cents(5),
    };
    let r = refusal(s.admit(now, &checks, demand).await.unwrap_err());
    assert_eq!(
        (r.level, r.id.as_str(), r.http_status()),
        (Level::ApiKey, "key:k:1", 412)
    );
    assert_eq!(r.error_type(), "api_key_exhaust_error");
    // The refusal carries the figures of every rate limit, nothing taken.
    assert_eq!(r.headers.requests.map(|f| f.remaining), Some(100));
    assert_eq!(r.headers.tokens.map(|f| f.remaining), Some(100_000));
    for (id, rule) in [
        ("iw:i:w", iw_budget),
        ("iw:i:w", iw_rate),
        ("prv:slug", provider_tokens),
        ("key:k:1", key_budget),
        ("ws:w:1", ws_rate),
    ] {
        let st = s.status(id, &rule, now).await;
        assert_eq!((st.consumed, st.reserved), (0, 0), "{id} {rule:?}");
    }
    // The first refusing check in the caller's order is the one reported.
    let both_full = [
        check("ws:w:2", rate(RateKind::Requests, RateUnit::Rpm, 0)),
        check("key:k:2", rate(RateKind::Requests, RateUnit::Rpm, 0)),
    ];
    assert_eq!(
        refusal(s.admit(now, &both_full, demand).await.unwrap_err()).level,
        Level::Workspace
    );

    // A fitting request reserves at every level and reports the tightest rates.
    let demand = Demand {
        tokens: 400,
        cost: usd_cents(5),
    };
    let ok = s.admit(now, &checks, demand).await.unwrap();
    let h = ok.headers();
    assert_eq!(
        h.requests,
        Some(RateFigures {
            limit: 100,
            remaining: 99,
            reset_secs: 30
        })
    );
    assert_eq!(
        h.tokens,
        Some(RateFigures {
            limit: 100_000,
            remaining: 99_600,
            reset_secs: 3570
        })
    );
    assert_eq!(s.status("key:k:1", &key_budget, now).await.reserved, 400);
    assert_eq!(s.status("iw:i:w", &iw_budget, now).await.reserved, usd_cents(5).0);
    let events = s.settle(ok, 350, Some(usd_cents(4))).await;
    assert!(events.is_empty());
    assert_eq!(s.status("key:k:1", &key_budget, now).await.consumed, 350);
    assert_eq!(s.status("prv:slug", &provider_tokens, now).await.consumed, 350);
    assert_eq!(s.status("iw:i:w", &iw_budget, now).await.consumed, usd_cents(4).0);
    assert_eq!(s.status("ws:w:1", &ws_rate, now).await.consumed, 1);
}

async fn the_same_counter_twice_in_one_request_counts_twice(s: Store) {
    let now = t(NOW);
    let rule = rate(RateKind::Requests, RateUnit::Rpm, 1);
    let checks = [check("ws:dup", rule), check("ws:dup", rule)];
    refusal(s.admit(now, &checks, Demand::default()).await.unwrap_err());
    assert_eq!(s.status("ws:dup", &rule, now).await.consumed, 0);
    // Twice a token budget: two reservations in one counter, settled apart.
    let b = budget(BudgetKind::Tokens, 1_000, None, None);
    let twice = [check("ws:dup2", b), check("ws:dup2", b)];
    let r = s.admit(now, &twice, tokens(300)).await.unwrap();
    assert_eq!(s.status("ws:dup2", &b, now).await.reserved, 600);
    refusal(s.admit(now, &twice, tokens(201)).await.unwrap_err());
    s.settle(r, 100, None).await;
    let st = s.status("ws:dup2", &b, now).await;
    assert_eq!((st.consumed, st.reserved), (200, 0));
}

async fn an_unknown_price_settles_no_cost(s: Store) {
    let now = t(NOW);
    let rule = budget(BudgetKind::Cost, PICOS_PER_USD, None, None);
    let checks = [check("ws:w", rule)];
    let r = s
        .admit(
            now,
            &checks,
            Demand {
                tokens: 10,
                cost: usd_cents(10),
            },
        )
        .await
        .unwrap();
    s.settle(r, 10, None).await;
    let st = s.status("ws:w", &rule, now).await;
    assert_eq!((st.consumed, st.reserved), (0, 0));
}

/// Picodollars pass 2^53 at $9,007: budgets far above it, and sums at the
/// top of the range, stay exact to the picodollar.
async fn amounts_beyond_two_to_the_53_stay_exact(s: Store) {
    let now = t(NOW);
    let big = 100_000 * PICOS_PER_USD + 7; // $100,000 and 7 picodollars
    let rule = budget(BudgetKind::Cost, big, Some(big - 1), None);
    let checks = [check("ws:big", rule)];
    let cost = |picos: i64| Demand {
        tokens: 1,
        cost: Money(picos),
    };
    let r = s.admit(now, &checks, cost(big - 10)).await.unwrap();
    assert_eq!(s.status("ws:big", &rule, now).await.reserved, big - 10);
    // 11 more do not fit beside it, 10 do.
    refusal(s.admit(now, &checks, cost(11)).await.unwrap_err());
    let small = s.admit(now, &checks, cost(10)).await.unwrap();
    s.counters.release(small).await.unwrap();
    assert!(s.settle(r, 1, Some(Money(big - 10))).await.is_empty());
    let st = s.status("ws:big", &rule, now).await;
    assert_eq!((st.consumed, st.reserved), (big - 10, 0));
    let r = s.admit(now, &checks, cost(9)).await.unwrap();
    let events = s.settle(r, 1, Some(Money(9))).await;
    assert_eq!(
        events.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [AlertKind::Threshold]
    );
    assert_eq!(events[0].consumed, big - 1);
    // Sums saturate at the largest amount instead of wrapping.
    let top = rate(RateKind::Tokens, RateUnit::Rpm, u64::MAX);
    let top_checks = [check("ws:top", top)];
    let r = s.admit(now, &top_checks, tokens(u64::MAX - 5)).await.unwrap();
    s.settle(r, u64::MAX - 5, None).await;
    let r = s.admit(now, &top_checks, tokens(u64::MAX)).await.unwrap();
    assert_eq!(s.status("ws:top", &top, now).await.reserved, i64::MAX);
    s.settle(r, 1_000, None).await;
    let st = s.status("ws:top", &top, now).await;
    assert_eq!((st.consumed, st.reserved), (i64::MAX, 0));
}

async fn restore_rebuilds_budgets_without_repeating_alerts(s: Store) {
    let now = t(NOW);
    let rule = budget(BudgetKind::Tokens, 1_000, Some(800), Some(PeriodicReset::Monthly));
    let checks = [check("key:k", rule)];
    s.counters.restore(G, &lid("key:k"), &rule, now, 850).await.unwrap();
    let st = s.status("key:k", &rule, now).await;
    assert_eq!((st.consumed, st.remaining()), (850, 150));
    assert_eq!(st.window.start, t("2026-11-01T00:00:00Z"));
    refusal(s.admit(now, &checks, tokens(151)).await.unwrap_err());
    let r = s.admit(now, &checks, tokens(150)).await.unwrap();
    let events = s.settle(r, 150, None).await;
    assert_eq!(
        events.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [AlertKind::Exhausted]
    );
    // Restoring a rate limit works the same way; negative amounts are taken as 0.
    let rpm = rate(RateKind::Requests, RateUnit::Rpm, 5);
    s.counters.restore(G, &lid("key:k"), &rpm, now, -3).await.unwrap();
    assert_eq!(s.status("key:k", &rpm, now).await.consumed, 0);
    s.counters.restore(G, &lid("key:k"), &rpm, now, 5).await.unwrap();
    refusal(
        s.admit(now, &[check("key:k", rpm)], Demand::default())
            .await
            .unwrap_err(),
    );
    assert!(s.stored() > 0);
    s.counters.forget(G, &lid("key:k")).await.unwrap();
    assert_eq!(s.stored(), 0);
    assert_eq!(s.status("key:k", &rule, now).await.consumed, 0);
}

async fn too_many_checks_is_an_error_not_a_refusal(s: Store) {
    let rule = rate(RateKind::Requests, RateUnit::Rpm, 5);
    let checks: Vec<_> = (0..=MAX_CHECKS).map(|i| check(&format!("ws:c{i}"), rule)).collect();
    match s.admit(t(NOW), &checks, Demand::default()).await {
        Err(AdmitError::Counter(CounterError::TooManyChecks(n))) => assert_eq!(n, MAX_CHECKS + 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.stored(), 0);
    assert!(s.admit(t(NOW), &checks[..MAX_CHECKS], Demand::default()).await.is_ok());
}

async fn a_reservation_settles_only_where_it_was_made(s: Store) {
    let other = s.other().await;
    let now = t(NOW);
    let rule = budget(BudgetKind::Tokens, 1_000, None, None);
    let checks = [check("key:k", rule)];
    let demand = tokens(100);
    let r = s.admit(now, &checks, demand).await.unwrap();
    assert!(matches!(
        other.counters.settle(r, Actual::default()).await,
        Err(CounterError::ForeignReservation)
    ));
    // Refused elsewhere, the reservation went back to its own store on drop.
    s.reserved_becomes("key:k", &rule, now, 0).await;
    let r = s.admit(now, &checks, demand).await.unwrap();
    assert!(matches!(
        other.counters.release(r).await,
        Err(CounterError::ForeignReservation)
    ));
    s.reserved_becomes("key:k", &rule, now, 0).await;
    assert_eq!(other.stored(), 0);
    // A replica (another handle on the same store) shares the counters.
    let replica = s.replica();
    let r = replica.admit(now, G, &checks, demand).await.unwrap();
    replica.settle(r, Actual { tokens: 1, cost: None }).await.unwrap();
    assert_eq!(s.status("key:k", &rule, now).await.consumed, 1);
}

/// In process only: the sweep that keeps ended windows out of memory (Redis
/// expires them instead: `redis_counters::ended_windows_expire`).
#[tokio::test]
async fn old_windows_do_not_hold_memory() {
    let counters = MemoryCounters::new();
    let clock = ManualClock::new(t("2026-11-26T10:00:00Z"));
    let rule = rate(RateKind::Tokens, RateUnit::Rpm, 1_000_000);
    let demand = tokens(10);
    let held = counters
        .admit_now(clock.now(), &[check("ws:held", rule)], demand)
        .unwrap();
    for minute in 0..10 {
        for id in ["ws:a", "ws:b", "ws:c"] {
            let r = counters.admit_now(clock.now(), &[check(id, rule)], demand).unwrap();
            counters.settle_now(r, Actual { tokens: 5, cost: None }).unwrap();
        }
        assert!(
            counters.counter_count() <= 7,
            "minute {minute}: {}",
            counters.counter_count()
        );
        clock.advance(Duration::seconds(61));
    }
    // The window with a reservation in flight stays until it is settled.
    let start = t("2026-11-26T10:00:00Z");
    assert_eq!(
        counters
            .status(G, &lid("ws:held"), &rule, start)
            .await
            .unwrap()
            .reserved,
        10
    );
    counters.settle_now(held, Actual { tokens: 10, cost: None }).unwrap();
    assert_eq!(
        counters
            .status(G, &lid("ws:held"), &rule, start)
            .await
            .unwrap()
            .consumed,
        10
    );
    clock.advance(Duration::seconds(61));
    counters.admit_now(clock.now(), &[], demand).unwrap();
    assert_eq!(counters.counter_count(), 0);
}
