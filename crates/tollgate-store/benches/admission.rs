//! The cost of one admission plus its settlement, through `Arc<dyn Counters>`
//! as the gateway calls it, with four applicable limits: two budgets (cost,
//! tokens) and two rate limits (requests, tokens). Run with
//! `cargo bench -p tollgate-store --bench admission`.

use chrono::{DateTime, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::sync::Arc;
use tollgate_core::admission::{Actual, Demand, Level, LimitCheck, Rule};
use tollgate_core::limits::{BudgetKind, PeriodicReset, RateKind, RateLimit, RateUnit, UsageLimit};
use tollgate_core::money::{Money, PICOS_PER_USD};
use tollgate_store::counters::{Counters, MemoryCounters};

fn checks(set_at: DateTime<Utc>) -> Vec<LimitCheck> {
    let budget = |kind, credit_limit| Rule::Budget {
        limit: UsageLimit {
            kind,
            credit_limit,
            alert_threshold: Some(credit_limit / 2),
            periodic_reset: Some(PeriodicReset::Monthly),
        },
        set_at,
    };
    // Limits large enough never to refuse: the benchmark measures the admitted path.
    vec![
        LimitCheck {
            id: Arc::from("iw:01J9ZQ4R6W8Y2X3T5V7N9P1K3M:01J9ZQ4R6W8Y2X3T5V7N9P1K3N"),
            level: Level::IntegrationWorkspace,
            rule: budget(BudgetKind::Cost, 1_000_000 * PICOS_PER_USD),
        },
        LimitCheck {
            id: Arc::from("p:01J9ZQ4R6W8Y2X3T5V7N9P1K3P"),
            level: Level::Provider,
            rule: Rule::Rate(RateLimit {
                kind: RateKind::Requests,
                unit: RateUnit::Rpm,
                value: u64::MAX,
            }),
        },
        LimitCheck {
            id: Arc::from("k:01J9ZQ4R6W8Y2X3T5V7N9P1K3Q"),
            level: Level::ApiKey,
            rule: budget(BudgetKind::Tokens, i64::MAX),
        },
        LimitCheck {
            id: Arc::from("w:01J9ZQ4R6W8Y2X3T5V7N9P1K3R"),
            level: Level::Workspace,
            rule: Rule::Rate(RateLimit {
                kind: RateKind::Tokens,
                unit: RateUnit::Rph,
                value: u64::MAX,
            }),
        },
    ]
}

fn admit_and_settle(c: &mut Criterion) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    let counters: Arc<dyn Counters> = Arc::new(MemoryCounters::new());
    let now = Utc::now();
    let checks = checks(now - chrono::Duration::days(1));
    let demand = Demand {
        tokens: 1_500,
        cost: Money(3 * PICOS_PER_USD / 1_000),
    };
    let actual = Actual {
        tokens: 400,
        cost: Some(Money(PICOS_PER_USD / 1_000)),
    };
    c.bench_function("admit + settle, 4 limits (2 budgets, 2 rate limits)", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = counters.admit(now, "ws:bench", black_box(&checks), demand).await;
                if let Ok(r) = r {
                    black_box(counters.settle(r, actual).await.ok());
                }
            })
        })
    });
    let memory = MemoryCounters::new();
    c.bench_function("admit_now + settle_now (no async wrapper), 4 limits", |b| {
        b.iter(|| {
            if let Ok(r) = memory.admit_now(now, black_box(&checks), demand) {
                black_box(memory.settle_now(r, actual).ok());
            }
        })
    });
}

criterion_group!(benches, admit_and_settle);
criterion_main!(benches);
