//! The limit counters under concurrency, across windows, and through their
//! whole lifecycle (admit, settle, release, drop, status, reset, restore).

use chrono::{DateTime, Duration, Utc};
use std::sync::Arc;
use tollgate_core::admission::{Actual, AlertKind, Demand, Level, LimitCheck, RateFigures, RefusalReason, Rule};
use tollgate_core::clock::{Clock, ManualClock};
use tollgate_core::limits::{BudgetKind, PeriodicReset, RateKind, RateLimit, RateUnit, UsageLimit};
use tollgate_core::money::{Money, PICOS_PER_USD};
use tollgate_store::counters::{AdmitError, CounterError, Counters, MemoryCounters, MAX_CHECKS};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn usd_cents(c: i64) -> Money {
    Money(c * PICOS_PER_USD / 100)
}

fn rate(kind: RateKind, unit: RateUnit, value: u64) -> Rule {
    Rule::Rate(RateLimit { kind, unit, value })
}

fn budget(kind: BudgetKind, credit_limit: i64, threshold: Option<i64>, reset: Option<PeriodicReset>) -> Rule {
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

fn check(id: &str, level: Level, rule: Rule) -> LimitCheck {
    LimitCheck {
        id: Arc::from(id),
        level,
        rule,
    }
}

fn refusal(e: AdmitError) -> tollgate_core::admission::Refusal {
    match e {
        AdmitError::Refused(r) => *r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

const NOW: &str = "2026-11-26T10:00:30Z";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_the_rate_limit_gets_through_under_concurrency() {
    let counters: Arc<dyn Counters> = Arc::new(MemoryCounters::new());
    let limit = serde_json::json!({"type":"requests","unit":"rpm","value":50});
    let rule = Rule::Rate(RateLimit::from_json(&limit).unwrap());
    let checks = Arc::new(vec![check("ws:1", Level::Workspace, rule)]);
    let now = t(NOW);
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (counters, checks) = (counters.clone(), checks.clone());
            tokio::spawn(async move { counters.admit(now, &checks, Demand::default()).await })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(r) => {
                admitted += 1;
                counters.settle(r, Actual::default()).await.unwrap();
            }
            Err(e) => assert_eq!(refusal(e).http_status(), 429),
        }
    }
    assert_eq!(admitted, 50);
    let status = counters.status("ws:1", &rule, now).await.unwrap();
    assert_eq!((status.consumed, status.reserved, status.limit), (50, 0, 50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cost_budget_admits_only_worst_cases_that_fit() {
    let counters: Arc<dyn Counters> = Arc::new(MemoryCounters::new());
    let rule = budget(BudgetKind::Cost, PICOS_PER_USD, None, None);
    let checks = Arc::new(vec![check("key:1", Level::ApiKey, rule)]);
    let now = t(NOW);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (counters, checks) = (counters.clone(), checks.clone());
            tokio::spawn(async move {
                let demand = Demand {
                    tokens: 1000,
                    cost: usd_cents(30),
                };
                match counters.admit(now, &checks, demand).await {
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
    let status = counters.status("key:1", &rule, now).await.unwrap();
    assert_eq!(Money(status.consumed), usd_cents(90));
    assert_eq!(status.reserved, 0);
    assert!(!status.exhausted());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settled_tokens_never_pass_a_token_budget() {
    let counters: Arc<dyn Counters> = Arc::new(MemoryCounters::new());
    let rule = budget(BudgetKind::Tokens, 1_000, None, Some(PeriodicReset::Monthly));
    let checks = Arc::new(vec![check("p:1", Level::Provider, rule)]);
    let now = t(NOW);
    let tasks: Vec<_> = (0..64u64)
        .map(|i| {
            let (counters, checks) = (counters.clone(), checks.clone());
            tokio::spawn(async move {
                let worst = 60 + i % 50;
                let demand = Demand {
                    tokens: worst,
                    cost: Money::ZERO,
                };
                let Ok(r) = counters.admit(now, &checks, demand).await else {
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
    let status = counters.status("p:1", &rule, now).await.unwrap();
    assert_eq!(status.consumed as u64, settled);
    assert!(settled <= 1_000, "settled {settled} tokens");
    assert!(
        settled >= 1_000 - 2 * 110,
        "the budget was used, not refused wholesale: {settled}"
    );
    assert_eq!(status.reserved, 0);
}

#[tokio::test]
async fn release_gives_back_tokens_and_cost_but_not_the_request() {
    let counters = MemoryCounters::new();
    let now = t(NOW);
    let cost = budget(BudgetKind::Cost, PICOS_PER_USD, None, None);
    let rpm = rate(RateKind::Requests, RateUnit::Rpm, 10);
    let tpm = rate(RateKind::Tokens, RateUnit::Rpm, 1_000);
    let checks = [
        check("w", Level::Workspace, cost),
        check("w", Level::Workspace, rpm),
        check("w", Level::Workspace, tpm),
    ];
    let demand = Demand {
        tokens: 800,
        cost: usd_cents(80),
    };
    let r = counters.admit(now, &checks, demand).await.unwrap();
    assert_eq!(
        counters.status("w", &cost, now).await.unwrap().reserved,
        usd_cents(80).0
    );
    assert_eq!(counters.status("w", &tpm, now).await.unwrap().reserved, 800);
    // A second worst case does not fit beside the first.
    refusal(counters.admit(now, &checks, demand).await.unwrap_err());
    counters.release(r).await.unwrap();
    for rule in [cost, tpm] {
        let s = counters.status("w", &rule, now).await.unwrap();
        assert_eq!((s.consumed, s.reserved), (0, 0));
    }
    // Both requests counted against the request rate (the refused one took nothing).
    assert_eq!(counters.status("w", &rpm, now).await.unwrap().consumed, 1);
    counters.admit(now, &checks, demand).await.unwrap();
}

#[tokio::test]
async fn a_dropped_reservation_releases_itself_once() {
    let counters = MemoryCounters::new();
    let now = t(NOW);
    let rule = budget(BudgetKind::Tokens, 1_000, None, None);
    let checks = [check("k", Level::ApiKey, rule)];
    let demand = Demand {
        tokens: 600,
        cost: Money::ZERO,
    };
    let r = counters.admit(now, &checks, demand).await.unwrap();
    drop(r);
    let s = counters.status("k", &rule, now).await.unwrap();
    assert_eq!((s.consumed, s.reserved), (0, 0));

    // A cancelled client: the task holding the reservation is aborted mid-call.
    let shared: Arc<dyn Counters> = Arc::new(counters.clone());
    let (admitted_tx, admitted_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn({
        let shared = shared.clone();
        let checks = checks.clone();
        async move {
            let r = shared.admit(now, &checks, demand).await.unwrap();
            let _ = admitted_tx.send(());
            std::future::pending::<()>().await;
            drop(r);
        }
    });
    admitted_rx.await.unwrap();
    assert_eq!(counters.status("k", &rule, now).await.unwrap().reserved, 600);
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(counters.status("k", &rule, now).await.unwrap().reserved, 0);

    // Settled, then dropped: nothing is given back twice.
    let r = counters.admit(now, &checks, demand).await.unwrap();
    counters
        .settle(
            r,
            Actual {
                tokens: 500,
                cost: None,
            },
        )
        .await
        .unwrap();
    let s = counters.status("k", &rule, now).await.unwrap();
    assert_eq!((s.consumed, s.reserved), (500, 0));
}

#[tokio::test]
async fn alerts_fire_once_per_period_and_again_in_the_next() {
    let counters = MemoryCounters::new();
    // 2026-11-26 is a Thursday: the week turns on Sunday the 29th.
    let clock = ManualClock::new(t("2026-11-26T10:00:00Z"));
    let rule = budget(
        BudgetKind::Cost,
        PICOS_PER_USD,
        Some(PICOS_PER_USD / 2),
        Some(PeriodicReset::Weekly),
    );
    let checks = [check("iw:a:b", Level::IntegrationWorkspace, rule)];
    let spend = |counters: &MemoryCounters, now, cents| {
        let r = counters
            .admit_now(
                now,
                &checks,
                Demand {
                    tokens: 1,
                    cost: usd_cents(cents),
                },
            )
            .unwrap();
        counters.settle_now(
            r,
            Actual {
                tokens: 1,
                cost: Some(usd_cents(cents)),
            },
        )
    };
    assert!(spend(&counters, clock.now(), 40).unwrap().is_empty());
    let events = spend(&counters, clock.now(), 20).unwrap();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(
        (e.kind, e.level, &*e.id),
        (AlertKind::Threshold, Level::IntegrationWorkspace, "iw:a:b")
    );
    assert_eq!((Money(e.consumed), e.limit), (usd_cents(60), PICOS_PER_USD));
    assert_eq!(e.period_start, t("2026-11-22T00:00:00Z"));
    assert!(
        spend(&counters, clock.now(), 20).unwrap().is_empty(),
        "no second threshold alert"
    );
    let events = spend(&counters, clock.now(), 20).unwrap();
    assert_eq!(
        events.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [AlertKind::Exhausted]
    );
    // Exhausted: even a free request is refused now.
    let r = refusal(counters.admit_now(clock.now(), &checks, Demand::default()).unwrap_err());
    assert_eq!((r.http_status(), r.error_type()), (412, "integration_exhaust_error"));
    assert!(counters.status("iw:a:b", &rule, clock.now()).await.unwrap().exhausted());

    // The next week starts afresh and alerts again.
    clock.set(t("2026-11-29T00:00:00Z"));
    let s = counters.status("iw:a:b", &rule, clock.now()).await.unwrap();
    assert_eq!((s.consumed, s.window.end), (0, Some(t("2026-12-06T00:00:00Z"))));
    let events = spend(&counters, clock.now(), 100).unwrap();
    assert_eq!(
        events.iter().map(|e| (e.kind, e.period_start)).collect::<Vec<_>>(),
        [
            (AlertKind::Threshold, t("2026-11-29T00:00:00Z")),
            (AlertKind::Exhausted, t("2026-11-29T00:00:00Z"))
        ]
    );

    // reset_usage: the same period counts from zero and may alert again.
    counters.reset("iw:a:b", &rule, clock.now()).await.unwrap();
    assert_eq!(counters.status("iw:a:b", &rule, clock.now()).await.unwrap().consumed, 0);
    let events = spend(&counters, clock.now(), 50).unwrap();
    assert_eq!(
        events.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [AlertKind::Threshold]
    );
}

#[tokio::test]
async fn rate_windows_roll_over_with_the_clock() {
    let counters = MemoryCounters::new();
    let clock = ManualClock::new(t("2026-11-26T10:00:45.500Z"));
    let rule = rate(RateKind::Requests, RateUnit::Rpm, 2);
    let checks = [check("p:x", Level::Provider, rule)];
    let first = counters.admit_now(clock.now(), &checks, Demand::default()).unwrap();
    assert_eq!(
        first.headers().requests,
        Some(RateFigures {
            limit: 2,
            remaining: 1,
            reset_secs: 15
        })
    );
    counters.admit_now(clock.now(), &checks, Demand::default()).unwrap();
    let r = refusal(counters.admit_now(clock.now(), &checks, Demand::default()).unwrap_err());
    assert_eq!(
        (r.level, r.error_type(), r.retry_after()),
        (Level::Provider, "provider_rate_limit_error", Some(15))
    );
    match r.reason {
        RefusalReason::Rate { figures, .. } => assert_eq!((figures.limit, figures.remaining), (2, 0)),
        other => panic!("{other:?}"),
    }
    clock.advance(Duration::milliseconds(14_499));
    refusal(counters.admit_now(clock.now(), &checks, Demand::default()).unwrap_err());
    clock.advance(Duration::milliseconds(1));
    assert!(counters.admit_now(clock.now(), &checks, Demand::default()).is_ok());
}

#[tokio::test]
async fn settlement_lands_in_the_window_of_the_admission() {
    let counters = MemoryCounters::new();
    let clock = ManualClock::new(t("2026-11-30T23:59:59Z"));
    let tpm = rate(RateKind::Tokens, RateUnit::Rpm, 1_000);
    let monthly = budget(BudgetKind::Tokens, 5_000, None, Some(PeriodicReset::Monthly));
    let checks = [check("w", Level::Workspace, tpm), check("w", Level::Workspace, monthly)];
    let demand = Demand {
        tokens: 900,
        cost: Money::ZERO,
    };
    let r = counters.admit_now(clock.now(), &checks, demand).unwrap();
    let november = clock.now();
    clock.advance(Duration::seconds(2));
    counters
        .settle_now(
            r,
            Actual {
                tokens: 700,
                cost: None,
            },
        )
        .unwrap();
    assert_eq!(counters.status("w", &tpm, november).await.unwrap().consumed, 700);
    assert_eq!(counters.status("w", &monthly, november).await.unwrap().consumed, 700);
    assert_eq!(counters.status("w", &tpm, clock.now()).await.unwrap().consumed, 0);
    assert_eq!(counters.status("w", &monthly, clock.now()).await.unwrap().consumed, 0);
}

#[tokio::test]
async fn a_rate_limit_of_zero_refuses() {
    let counters = MemoryCounters::new();
    let now = t(NOW);
    for kind in [RateKind::Requests, RateKind::Tokens] {
        let checks = [check("p:off", Level::Provider, rate(kind, RateUnit::Rpd, 0))];
        let r = refusal(counters.admit_now(now, &checks, Demand::default()).unwrap_err());
        assert_eq!((r.http_status(), r.level), (429, Level::Provider));
        assert_eq!(r.retry_after(), Some(13 * 3600 + 59 * 60 + 30));
    }
}

#[tokio::test]
async fn a_refusal_at_one_level_reserves_nothing_at_the_others() {
    let counters = MemoryCounters::new();
    let now = t(NOW);
    let iw_budget = budget(BudgetKind::Cost, 10 * PICOS_PER_USD, None, None);
    let iw_rate = rate(RateKind::Requests, RateUnit::Rpm, 100);
    let provider_tokens = rate(RateKind::Tokens, RateUnit::Rph, 100_000);
    let key_budget = budget(BudgetKind::Tokens, 1_000, None, None);
    let ws_rate = rate(RateKind::Requests, RateUnit::Rpm, 100);
    let checks = [
        check("iw:i:w", Level::IntegrationWorkspace, iw_budget),
        check("iw:i:w", Level::IntegrationWorkspace, iw_rate),
        check("p:slug", Level::Provider, provider_tokens),
        check("k:1", Level::ApiKey, key_budget),
        check("w:1", Level::Workspace, ws_rate),
    ];
    let demand = Demand {
        tokens: 1_001,
        cost: usd_cents(5),
    };
    let r = refusal(counters.admit_now(now, &checks, demand).unwrap_err());
    assert_eq!((r.level, &*r.id, r.http_status()), (Level::ApiKey, "k:1", 412));
    assert_eq!(r.error_type(), "api_key_exhaust_error");
    for (id, rule) in [
        ("iw:i:w", iw_budget),
        ("iw:i:w", iw_rate),
        ("p:slug", provider_tokens),
        ("k:1", key_budget),
        ("w:1", ws_rate),
    ] {
        let s = counters.status(id, &rule, now).await.unwrap();
        assert_eq!((s.consumed, s.reserved), (0, 0), "{id} {rule:?}");
    }
    // The first refusing check in the caller's order is the one reported.
    let both_full = [
        check("w:2", Level::Workspace, rate(RateKind::Requests, RateUnit::Rpm, 0)),
        check("k:2", Level::ApiKey, rate(RateKind::Requests, RateUnit::Rpm, 0)),
    ];
    assert_eq!(
        refusal(counters.admit_now(now, &both_full, demand).unwrap_err()).level,
        Level::Workspace
    );

    // A fitting request reserves at every level and reports the tightest rates.
    let demand = Demand {
        tokens: 400,
        cost: usd_cents(5),
    };
    let ok = counters.admit_now(now, &checks, demand).unwrap();
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
    assert_eq!(counters.status("k:1", &key_budget, now).await.unwrap().reserved, 400);
    assert_eq!(
        counters.status("iw:i:w", &iw_budget, now).await.unwrap().reserved,
        usd_cents(5).0
    );
    let events = counters
        .settle_now(
            ok,
            Actual {
                tokens: 350,
                cost: Some(usd_cents(4)),
            },
        )
        .unwrap();
    assert!(events.is_empty());
    assert_eq!(counters.status("k:1", &key_budget, now).await.unwrap().consumed, 350);
    assert_eq!(
        counters.status("p:slug", &provider_tokens, now).await.unwrap().consumed,
        350
    );
    assert_eq!(
        counters.status("iw:i:w", &iw_budget, now).await.unwrap().consumed,
        usd_cents(4).0
    );
    assert_eq!(counters.status("w:1", &ws_rate, now).await.unwrap().consumed, 1);
}

#[tokio::test]
async fn the_same_counter_twice_in_one_request_counts_twice() {
    let counters = MemoryCounters::new();
    let now = t(NOW);
    let rule = rate(RateKind::Requests, RateUnit::Rpm, 1);
    let checks = [
        check("dup", Level::Workspace, rule),
        check("dup", Level::Workspace, rule),
    ];
    refusal(counters.admit_now(now, &checks, Demand::default()).unwrap_err());
    assert_eq!(counters.status("dup", &rule, now).await.unwrap().consumed, 0);
}

#[tokio::test]
async fn an_unknown_price_settles_no_cost() {
    let counters = MemoryCounters::new();
    let now = t(NOW);
    let rule = budget(BudgetKind::Cost, PICOS_PER_USD, None, None);
    let checks = [check("w", Level::Workspace, rule)];
    let r = counters
        .admit_now(
            now,
            &checks,
            Demand {
                tokens: 10,
                cost: usd_cents(10),
            },
        )
        .unwrap();
    counters.settle_now(r, Actual { tokens: 10, cost: None }).unwrap();
    let s = counters.status("w", &rule, now).await.unwrap();
    assert_eq!((s.consumed, s.reserved), (0, 0));
}

#[tokio::test]
async fn restore_rebuilds_budgets_without_repeating_alerts() {
    let counters = MemoryCounters::new();
    let now = t(NOW);
    let rule = budget(BudgetKind::Tokens, 1_000, Some(800), Some(PeriodicReset::Monthly));
    let checks = [check("k", Level::ApiKey, rule)];
    counters.restore("k", &rule, now, 850).await.unwrap();
    let s = counters.status("k", &rule, now).await.unwrap();
    assert_eq!((s.consumed, s.remaining()), (850, 150));
    assert_eq!(s.window.start, t("2026-11-01T00:00:00Z"));
    refusal(
        counters
            .admit_now(
                now,
                &checks,
                Demand {
                    tokens: 151,
                    cost: Money::ZERO,
                },
            )
            .unwrap_err(),
    );
    let r = counters
        .admit_now(
            now,
            &checks,
            Demand {
                tokens: 150,
                cost: Money::ZERO,
            },
        )
        .unwrap();
    let events = counters
        .settle_now(
            r,
            Actual {
                tokens: 150,
                cost: None,
            },
        )
        .unwrap();
    assert_eq!(
        events.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [AlertKind::Exhausted]
    );
    // Restoring a rate limit works the same way; negative amounts are taken as 0.
    let rpm = rate(RateKind::Requests, RateUnit::Rpm, 5);
    counters.restore("k", &rpm, now, -3).await.unwrap();
    assert_eq!(counters.status("k", &rpm, now).await.unwrap().consumed, 0);
    counters.restore("k", &rpm, now, 5).await.unwrap();
    refusal(
        counters
            .admit_now(now, &[check("k", Level::ApiKey, rpm)], Demand::default())
            .unwrap_err(),
    );
    counters.forget("k").await.unwrap();
    assert_eq!(counters.counter_count(), 0);
    assert_eq!(counters.status("k", &rule, now).await.unwrap().consumed, 0);
}

#[tokio::test]
async fn old_windows_do_not_hold_memory() {
    let counters = MemoryCounters::new();
    let clock = ManualClock::new(t("2026-11-26T10:00:00Z"));
    let rule = rate(RateKind::Tokens, RateUnit::Rpm, 1_000_000);
    let demand = Demand {
        tokens: 10,
        cost: Money::ZERO,
    };
    let held = counters
        .admit_now(clock.now(), &[check("held", Level::Workspace, rule)], demand)
        .unwrap();
    for minute in 0..10 {
        for id in ["a", "b", "c"] {
            let r = counters
                .admit_now(clock.now(), &[check(id, Level::Workspace, rule)], demand)
                .unwrap();
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
    assert_eq!(counters.status("held", &rule, start).await.unwrap().reserved, 10);
    counters.settle_now(held, Actual { tokens: 10, cost: None }).unwrap();
    assert_eq!(counters.status("held", &rule, start).await.unwrap().consumed, 10);
    clock.advance(Duration::seconds(61));
    counters.admit_now(clock.now(), &[], demand).unwrap();
    assert_eq!(counters.counter_count(), 0);
}

#[tokio::test]
async fn too_many_checks_is_an_error_not_a_refusal() {
    let counters = MemoryCounters::new();
    let rule = rate(RateKind::Requests, RateUnit::Rpm, 5);
    let checks: Vec<_> = (0..=MAX_CHECKS)
        .map(|i| check(&format!("c{i}"), Level::Workspace, rule))
        .collect();
    match counters.admit_now(t(NOW), &checks, Demand::default()) {
        Err(AdmitError::Counter(CounterError::TooManyChecks(n))) => assert_eq!(n, MAX_CHECKS + 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(counters.counter_count(), 0);
    assert!(counters
        .admit_now(t(NOW), &checks[..MAX_CHECKS], Demand::default())
        .is_ok());
}

#[tokio::test]
async fn a_reservation_settles_only_where_it_was_made() {
    let mine = MemoryCounters::new();
    let other = MemoryCounters::new();
    let now = t(NOW);
    let rule = budget(BudgetKind::Tokens, 1_000, None, None);
    let checks = [check("k", Level::ApiKey, rule)];
    let demand = Demand {
        tokens: 100,
        cost: Money::ZERO,
    };
    let r = mine.admit_now(now, &checks, demand).unwrap();
    assert!(matches!(
        other.settle(r, Actual::default()).await,
        Err(CounterError::ForeignReservation)
    ));
    // Refused elsewhere, the reservation went back to its own store on drop.
    assert_eq!(mine.status("k", &rule, now).await.unwrap().reserved, 0);
    let r = mine.admit_now(now, &checks, demand).unwrap();
    assert!(matches!(other.release(r).await, Err(CounterError::ForeignReservation)));
    assert_eq!(mine.status("k", &rule, now).await.unwrap().reserved, 0);
    assert_eq!(other.counter_count(), 0);
    // A clone shares the counters.
    let r = mine.admit_now(now, &checks, demand).unwrap();
    mine.clone().settle_now(r, Actual { tokens: 1, cost: None }).unwrap();
    assert_eq!(mine.status("k", &rule, now).await.unwrap().consumed, 1);
}
