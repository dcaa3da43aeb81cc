//! The three ways analytics reads the log (raw rows one by one, raw rows
//! summed by the database, daily roll-ups summed by the database) give the
//! same figures for every grouping, interval and filter: counts, sums and
//! distinct sets exactly, percentiles to the same histogram bucket. Every
//! test runs on each backend ([`on_each_backend!`]): SQLite, and PostgreSQL
//! in a database of its own.

use chrono::{DateTime, Duration, TimeZone, Utc};
use tollgate_store::analytics::{bucket_of, Agg, Cells, Filter, GroupBy, Interval, ModelMatch, Query, DAY_MS};
use tollgate_store::db::Location;
use tollgate_store::request_log::LogRecord;
use tollgate_store::Store;

use crate::postgres::{AtLocation, TestDb};

#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each `async fn name(backend: Backend)` as two tests,
/// `name::sqlite` and `name::postgres`.
macro_rules! on_each_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await;
            }
            #[tokio::test]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await;
            }
        }
    )*};
}

on_each_backend!(
    raw_rows_summed_in_sql_match_reading_them_one_by_one,
    roll_ups_summed_in_sql_match_the_raw_rows,
    an_empty_or_inverted_range_has_no_cells,
    rows_logged_before_their_buckets_were_stored_are_bucketed_alike,
);

/// A store holding [`rows`], on one backend.
struct Seeded {
    store: Store,
    _dir: tempfile::TempDir,
    pg: Option<TestDb>,
}

impl Seeded {
    /// Runs one statement straight on the database.
    async fn execute(&self, sql: &str) {
        match &self.pg {
            None => {
                sqlx::query(sql)
                    .execute(self.store.sqlite_pool().unwrap())
                    .await
                    .unwrap();
            }
            Some(db) => {
                let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
                sqlx::query(sql).execute(&pool).await.unwrap();
                pool.close().await;
            }
        }
    }

    /// Drops the PostgreSQL database.
    async fn finish(self) {
        drop(self.store);
        if let Some(db) = self.pg {
            db.drop_db().await;
        }
    }
}

/// A small deterministic generator, so that a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap()
}

/// 2,000 varied requests over 5 days, from mid-day on the first.
fn rows() -> Vec<LogRecord> {
    let mut rng = Rng(7);
    let span = 5 * DAY_MS;
    (0..2_000u64)
        .map(|i| {
            let at = start() + Duration::milliseconds(DAY_MS / 2 + (i as i64 * span / 2_000));
            let status = [200, 200, 200, 429, 412, 502, 504, 499][rng.below(8) as usize];
            let prompt = rng.below(5_000);
            let completion = if status == 200 { rng.below(2_000) } else { 0 };
            let latency = 1 + rng.below(3_000_000) * if rng.below(10) == 0 { 50 } else { 1 };
            let upstream = (rng.below(4) > 0).then(|| latency.saturating_sub(rng.below(2_000)));
            let mut metadata = serde_json::Map::new();
            if rng.below(2) == 0 {
                metadata.insert("env".into(), serde_json::json!(["prod", "dev"][rng.below(2) as usize]));
            }
            LogRecord {
                id: format!("r{i}"),
                created_at: at,
                trace_id: format!("t{}", i / 2),
                workspace_id: (rng.below(10) > 0).then(|| format!("ws-{}", rng.below(3))),
                api_key_id: Some(format!("key,{}", rng.below(5))),
                provider_slug: Some(["openai", "anthropic", "bedrock"][rng.below(3) as usize].into()),
                ai_provider_id: Some(["openai", "anthropic"][rng.below(2) as usize].into()),
                model: Some(["gpt-4o", "claude,sonnet", "m'odel"][rng.below(3) as usize].into()),
                endpoint: "chat.completions".into(),
                status_code: status,
                error_type: match status {
                    502 => Some("upstream_error".into()),
                    504 => Some("timeout_error".into()),
                    _ => None,
                },
                refusal: match status {
                    429 => Some("rate_limit".into()),
                    412 => Some("budget".into()),
                    _ => None,
                },
                streamed: rng.below(3) == 0,
                cancelled: status == 499,
                prompt_tokens: prompt,
                completion_tokens: completion,
                cached_tokens: rng.below(100),
                total_tokens: prompt + completion,
                cost_picos: (rng.below(5) > 0).then(|| (prompt * 2_500_000 + completion * 10_000_000) as i64),
                latency_us: latency,
                ttft_us: (rng.below(3) == 0).then_some(latency / 3),
                upstream_latency_us: upstream,
                metadata: (!metadata.is_empty()).then_some(metadata),
                superseded: rng.below(7) == 0,
                ..Default::default()
            }
        })
        .collect()
}

async fn seeded(backend: Backend) -> Seeded {
    let dir = tempfile::tempdir().unwrap();
    let pg = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(TestDb::create().await),
    };
    let location = match &pg {
        None => Location::Sqlite(dir.path().join("t.db")),
        Some(db) => db.location(),
    };
    let seeded = Seeded {
        store: Store::open(&location).await.unwrap(),
        _dir: dir,
        pg,
    };
    // Roll-ups cover everything written from now on, back to the epoch.
    seeded
        .execute("UPDATE analytics_meta SET value = 0 WHERE key = 'rollup_from_ms'")
        .await;
    let store = &seeded.store;
    let (log, writer) = store.spawn_log_writer().unwrap();
    for r in rows() {
        log.record(r);
    }
    log.flush().await;
    drop(log);
    writer.await.unwrap();
    seeded
}

/// `q` read with raw stretches of at most `exact_rows` requests row by row.
async fn read(store: &Store, q: &Query, exact_rows: i64) -> Cells {
    store.analytics().aggregate_with(q, exact_rows).await.unwrap()
}

/// Everything but the percentiles, which are compared by bucket.
fn same(a: &Cells, b: &Cells, what: &str) {
    let keys = |c: &Cells| c.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(a), keys(b), "{what}: cells");
    for (k, x) in a {
        let y = &b[k];
        let fig = |g: &Agg| {
            (
                [
                    g.requests,
                    g.attempts,
                    g.successful,
                    g.status_4xx,
                    g.status_5xx,
                    g.upstream_errors,
                    g.timeouts,
                    g.refused_rate_limit,
                    g.refused_budget,
                    g.cancelled,
                    g.streamed,
                    g.prompt_tokens,
                    g.completion_tokens,
                    g.cached_tokens,
                    g.total_tokens,
                    g.priced_requests,
                    g.priced_tokens,
                    g.latency_max_us,
                    g.gen_tokens,
                    g.gen_us,
                ],
                g.cost_picos,
                g.latency_sum_us,
                [&g.api_keys, &g.models, &g.workspaces, &g.providers].map(|s| {
                    let mut v: Vec<_> = s.iter().cloned().collect();
                    v.sort();
                    v
                }),
                [&g.latency, &g.ttft, &g.overhead].map(|d| d.count()),
            )
        };
        assert_eq!(fig(x), fig(y), "{what}: cell {k:?}");
        for (dx, dy) in [(&x.latency, &y.latency), (&x.ttft, &y.ttft), (&x.overhead, &y.overhead)] {
            for pm in [500, 950, 990] {
                assert_eq!(
                    dx.quantile(pm).map(bucket_of),
                    dy.quantile(pm).map(bucket_of),
                    "{what}: cell {k:?} p{pm}"
                );
            }
        }
    }
}

fn filter() -> Filter {
    Filter {
        from_ms: start().timestamp_millis(),
        to_ms: (start() + Duration::days(7)).timestamp_millis(),
        ..Default::default()
    }
}

async fn raw_rows_summed_in_sql_match_reading_them_one_by_one(backend: Backend) {
    let seeded = seeded(backend).await;
    let store = &seeded.store;
    let groups = [
        None,
        Some(GroupBy::ApiKey),
        Some(GroupBy::Workspace),
        Some(GroupBy::Provider),
        Some(GroupBy::Model),
        Some(GroupBy::AiModel),
        Some(GroupBy::AiService),
        Some(GroupBy::StatusCode),
        Some(GroupBy::Metadata("env".into())),
    ];
    let intervals = [None, Some(Interval::Minute), Some(Interval::Day), Some(Interval::Week)];
    let mut filters = vec![("none", filter())];
    filters.push((
        "tokens and cost",
        Filter {
            total_tokens_min: Some(1_000),
            cost_max_picos: Some(20_000_000_000),
            ..filter()
        },
    ));
    filters.push((
        "dimensions and metadata",
        Filter {
            workspace_ids: Some(vec!["ws-1".into(), "ws-2".into()]),
            models: vec![ModelMatch {
                provider: Some("openai".into()),
                model: "gpt-4o".into(),
            }],
            status_codes: vec![200, 502],
            metadata: vec![("env".into(), "prod".into())],
            ..filter()
        },
    ));
    for (name, f) in &filters {
        for g in &groups {
            for i in intervals {
                let q = Query {
                    filter: f.clone(),
                    interval: i,
                    group: g.clone(),
                    distinct: true,
                };
                // A per-request filter keeps everything raw; ask for
                // everything raw in both reads by a filter every row passes.
                let q = Query {
                    filter: Filter {
                        total_tokens_min: q.filter.total_tokens_min.or(Some(0)),
                        ..q.filter
                    },
                    ..q
                };
                let by_row = read(store, &q, i64::MAX).await;
                let by_sql = read(store, &q, 0).await;
                assert!(!by_row.is_empty(), "{name} {g:?} {i:?}: no data");
                same(&by_row, &by_sql, &format!("{name} {g:?} {i:?}"));
            }
        }
    }
    seeded.finish().await;
}

async fn roll_ups_summed_in_sql_match_the_raw_rows(backend: Backend) {
    let seeded = seeded(backend).await;
    let store = &seeded.store;
    let groups = [
        None,
        Some(GroupBy::ApiKey),
        Some(GroupBy::Workspace),
        Some(GroupBy::Provider),
        Some(GroupBy::Model),
        Some(GroupBy::AiModel),
        Some(GroupBy::AiService),
        Some(GroupBy::StatusCode),
    ];
    let filters = [
        filter(),
        Filter {
            workspace_ids: Some(vec!["ws-0".into()]),
            api_key_ids: vec!["key,1".into(), "key,2".into()],
            provider_slugs: vec!["openai".into(), "bedrock".into()],
            ..filter()
        },
    ];
    for f in &filters {
        for g in &groups {
            for i in [None, Some(Interval::Day), Some(Interval::Week)] {
                // Whole days come from roll-ups, the half days at either end raw.
                let mixed = Query {
                    filter: f.clone(),
                    interval: i,
                    group: g.clone(),
                    distinct: true,
                };
                let raw = Query {
                    filter: Filter {
                        total_tokens_min: Some(0),
                        ..f.clone()
                    },
                    ..mixed.clone()
                };
                let expected = read(store, &raw, i64::MAX).await;
                let got = read(store, &mixed, 0).await;
                assert!(!expected.is_empty());
                same(&expected, &got, &format!("{f:?} {g:?} {i:?}"));
            }
        }
    }
    seeded.finish().await;
}

async fn an_empty_or_inverted_range_has_no_cells(backend: Backend) {
    let seeded = seeded(backend).await;
    let store = &seeded.store;
    for (from, to) in [
        (0, 0),
        (10, 5),
        (start().timestamp_millis() - DAY_MS, start().timestamp_millis()),
    ] {
        let q = Query {
            filter: Filter {
                from_ms: from,
                to_ms: to,
                ..Default::default()
            },
            interval: Some(Interval::Hour),
            group: None,
            distinct: true,
        };
        assert!(read(store, &q, 0).await.is_empty());
    }
    seeded.finish().await;
}

async fn rows_logged_before_their_buckets_were_stored_are_bucketed_alike(backend: Backend) {
    let seeded = seeded(backend).await;
    let store = &seeded.store;
    let q = Query {
        filter: Filter {
            total_tokens_min: Some(0),
            ..filter()
        },
        interval: Some(Interval::Hour),
        group: Some(GroupBy::Model),
        distinct: true,
    };
    let stored = read(store, &q, 0).await;
    // As a log written before migration 0006 holds them.
    seeded
        .execute("UPDATE usage_log SET latency_bucket = NULL, ttft_bucket = NULL, overhead_bucket = NULL")
        .await;
    // (Another question than the first: the store keeps answers until its
    // own writer commits, and this change went around it.)
    let computed = read(store, &q, 1).await;
    let by_row = read(store, &q, i64::MAX).await;
    same(&stored, &computed, "computed in SQL");
    same(&by_row, &computed, "read by row");
    seeded.finish().await;
}
