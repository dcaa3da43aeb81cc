//! The cost of one admission plus its settlement, through `Arc<dyn Counters>`
//! as the gateway calls it, with four applicable limits: two budgets (cost,
//! tokens) and two rate limits (requests, tokens), in process and (when it
//! answers) in the Redis at 127.0.0.1:6379, under a key prefix of its own
//! that is removed afterwards. Run with
//! `cargo bench -p tollgate-store --bench admission`.

// Benchmark: a failed setup step should stop the run loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::sync::Arc;
use tollgate_core::admission::{Actual, Demand, LimitCheck, LimitId, LimitOwner, Rule};
use tollgate_core::ids::{ApiKeyId, IntegrationId, ProviderId, WorkspaceId};
use tollgate_core::limit_owner::counter_group;
use tollgate_core::limits::{BudgetKind, PeriodicReset, RateKind, RateLimit, RateUnit, UsageLimit};
use tollgate_core::money::{Money, PICOS_PER_USD};
use tollgate_store::counters::{Counters, MemoryCounters, RedisCounters, RedisSettings, RestoreTurn};

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
            id: LimitId::new(LimitOwner::IntegrationWorkspace {
                integration: IntegrationId::new("01J9ZQ4R6W8Y2X3T5V7N9P1K3M"),
                workspace: WorkspaceId::new("01J9ZQ4R6W8Y2X3T5V7N9P1K3N"),
            }),
            rule: budget(BudgetKind::Cost, 1_000_000 * PICOS_PER_USD),
        },
        LimitCheck {
            id: LimitId::new(LimitOwner::Provider(ProviderId::new("01J9ZQ4R6W8Y2X3T5V7N9P1K3P"))),
            rule: Rule::Rate(RateLimit {
                kind: RateKind::Requests,
                unit: RateUnit::Rpm,
                value: u64::MAX,
            }),
        },
        LimitCheck {
            id: LimitId::new(LimitOwner::ApiKey(ApiKeyId::new("01J9ZQ4R6W8Y2X3T5V7N9P1K3Q"))),
            rule: budget(BudgetKind::Tokens, i64::MAX),
        },
        LimitCheck {
            id: LimitId::new(LimitOwner::Workspace(WorkspaceId::new("01J9ZQ4R6W8Y2X3T5V7N9P1K3R"))),
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
    let group = counter_group("bench");
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
                let r = counters.admit(now, &group, black_box(&checks), demand).await;
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
    redis(c, now, &checks, demand, actual);
}

/// The same through Redis: two round trips over loopback.
fn redis(c: &mut Criterion, now: DateTime<Utc>, checks: &[LimitCheck], demand: Demand, actual: Actual) {
    const URL: &str = "redis://127.0.0.1:6379";
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return;
    };
    let group = counter_group("bench");
    let prefix = format!("tgbench:{:016x}:", rand::random::<u64>());
    let mut settings = RedisSettings::new(URL, std::time::Duration::from_secs(600));
    settings.key_prefix = prefix.clone();
    let Ok(counters) = RedisCounters::new(settings) else {
        return;
    };
    let ready = rt.block_on(async {
        matches!(counters.begin_restore(&group).await, Ok(RestoreTurn::Ours)) && counters.restored(&group).await.is_ok()
    });
    if !ready {
        eprintln!("no Redis at {URL}: the Redis benchmark is skipped");
        return;
    }
    c.bench_function("admit + settle in Redis (loopback), 4 limits", |b| {
        b.iter(|| {
            rt.block_on(async {
                if let Ok(r) = counters.admit(now, &group, black_box(checks), demand).await {
                    black_box(counters.settle(r, actual).await.ok());
                }
            })
        })
    });
    // Leave the shared Redis as it was.
    if let Ok(mut conn) = redis::Client::open(URL).and_then(|c| c.get_connection()) {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}

criterion_group!(benches, admit_and_settle);
criterion_main!(benches);
