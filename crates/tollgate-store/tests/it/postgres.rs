//! The PostgreSQL backend against a real server: each test creates its own
//! database (`tollgate_test_<random>`) and drops it afterwards. The server
//! is `TOLLGATE_TEST_POSTGRES` (a URL without a database), default
//! `postgres://postgres@127.0.0.1:5432`.

use chrono::{TimeZone, Utc};
use serde_json::json;
use sqlx::postgres::PgPool;
use tollgate_core::limits::BudgetKind;
use tollgate_core::records::{ApiKeyRecord, Integration, ProviderRecord, SavedConfig, Workspace};
use tollgate_store::analytics::{Filter, Query};
use tollgate_store::control::{AuditEntry, AuditFilter};
use tollgate_store::outbox::{AlertKind, AlertPayload, Channel, ChannelState, OutboxError};
use tollgate_store::request_log::{LogFilter, LogRecord, Scope};
use tollgate_store::{Location, Store, StoreError};

pub(crate) use tollgate_testkit::postgres_db::TestDb;

/// Where a [`TestDb`] is, as the store opens it.
pub(crate) trait AtLocation {
    fn location(&self) -> Location;
}

impl AtLocation for TestDb {
    fn location(&self) -> Location {
        Location::from_url(Some(&self.url), std::path::Path::new("/nonexistent")).unwrap()
    }
}

fn t(secs: i64) -> chrono::DateTime<Utc> {
    Utc.timestamp_opt(1_750_000_000 + secs, 0).unwrap()
}

fn workspace(id: &str, slug: &str) -> Workspace {
    serde_json::from_value(json!({
        "id": id, "slug": slug, "name": slug,
        "created_at": t(0), "last_updated_at": t(0),
    }))
    .unwrap()
}

fn api_key(id: &str, hash: &str, ws: Option<&str>) -> ApiKeyRecord {
    serde_json::from_value(json!({
        "id": id, "name": id, "key_hash": hash, "masked_key": "pk-…", "key_type": "workspace",
        "sub_type": "service", "workspace_id": ws, "scopes": ["completions.write"],
        "created_at": t(0), "last_updated_at": t(0),
    }))
    .unwrap()
}

fn integration(id: &str, slug: &str) -> Integration {
    serde_json::from_value(json!({
        "id": id, "slug": slug, "name": slug, "ai_provider_id": "openai", "allow_all_models": true,
        "status": "active", "created_at": t(0), "last_updated_at": t(0),
    }))
    .unwrap()
}

fn provider(id: &str, slug: &str, ws: &str, integration: &str) -> ProviderRecord {
    serde_json::from_value(json!({
        "id": id, "slug": slug, "name": slug, "workspace_id": ws, "integration_id": integration,
        "created_at": t(0), "last_updated_at": t(0),
    }))
    .unwrap()
}

fn config(id: &str, version: &str, at: i64, retries: u32) -> SavedConfig {
    serde_json::from_value(json!({
        "id": id, "slug": "pc-x", "name": "x", "config": {"retry": {"attempts": retries}},
        "version_id": version, "created_at": t(0), "last_updated_at": t(at),
    }))
    .unwrap()
}

fn audit(id: &str, at: i64, object: &str) -> AuditEntry {
    AuditEntry {
        id: id.into(),
        at: t(at),
        actor: Some("key-1".into()),
        action: "create".into(),
        object_type: "workspace".into(),
        object_id: object.into(),
        details: json!({"n": at}),
    }
}

#[tokio::test]
async fn control_plane_round_trips_on_postgres() {
    let db = TestDb::create().await;
    // Two replicas starting together: the migrations run once, under a lock.
    let loc = db.location();
    let (a, b) = tokio::join!(Store::open(&loc), Store::open(&loc));
    let (store, _other) = (a.unwrap(), b.unwrap());
    assert!(store.sqlite_pool().is_none());

    assert_eq!(store.meta_get("org_id").await.unwrap(), None);
    store.meta_set("org_id", "org-1").await.unwrap();
    store.meta_set("org_id", "org-2").await.unwrap();
    assert_eq!(store.meta_get("org_id").await.unwrap().as_deref(), Some("org-2"));

    let ws = workspace("ws-1", "default");
    let key = api_key("key-1", "hash-1", Some("ws-1"));
    let int = integration("int-1", "openai");
    let prv = provider("prv-1", "openai", "ws-1", "int-1");
    let mut tx = store.begin().await.unwrap();
    tx.put_workspace(&ws).await.unwrap();
    tx.put_api_key(&key).await.unwrap();
    tx.put_integration(&int).await.unwrap();
    tx.put_provider(&prv).await.unwrap();
    tx.put_config(&config("cfg-1", "v1", 1, 1)).await.unwrap();
    tx.put_config(&config("cfg-1", "v2", 1, 2)).await.unwrap();
    tx.put_config(&config("cfg-1", "v3", 2, 3)).await.unwrap();
    tx.meta_set("control_version", "1").await.unwrap();
    for i in 0..5 {
        tx.audit(&audit(&format!("aud-{i}"), i, if i % 2 == 0 { "ws-1" } else { "ws-2" }))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();

    let data = store.load_all().await.unwrap();
    assert_eq!(data.workspaces, vec![ws.clone()]);
    assert_eq!(data.api_keys, vec![key]);
    assert_eq!(data.integrations, vec![int]);
    assert_eq!(data.providers, vec![prv]);
    assert_eq!(data.configs, vec![config("cfg-1", "v3", 2, 3)]);
    assert_eq!(store.meta_get("control_version").await.unwrap().as_deref(), Some("1"));

    // Newest first; versions saved in the same millisecond in the order written.
    let versions = store.config_versions("cfg-1").await.unwrap();
    let ids: Vec<&str> = versions.iter().map(|v| v.0.as_str()).collect();
    assert_eq!(ids, ["v3", "v2", "v1"]);
    assert_eq!(versions[0].1, t(2));
    assert_eq!(versions[2].2, json!({"retry": {"attempts": 1}}));

    // Audit filters, including the time bounds (BIGINT milliseconds).
    let all = AuditFilter {
        limit: 100,
        ..Default::default()
    };
    let (total, entries) = store.audit_logs(&all).await.unwrap();
    assert_eq!(total, 5);
    assert_eq!(entries[0], audit("aud-4", 4, "ws-1"));
    let (total, entries) = store
        .audit_logs(&AuditFilter {
            object_id: Some("ws-1".into()),
            from: Some(t(1)),
            to: Some(t(4)),
            limit: 1,
            offset: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(total, 2);
    assert_eq!(entries.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["aud-2"]);

    // Unique columns conflict; missing records are not found.
    let mut tx = store.begin().await.unwrap();
    let e = tx.put_workspace(&workspace("ws-2", "default")).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Conflict(ref w) if w.contains("'default'")),
        "{e}"
    );
    drop(tx);
    let mut tx = store.begin().await.unwrap();
    let e = tx.put_api_key(&api_key("key-2", "hash-1", None)).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    drop(tx);
    let mut tx = store.begin().await.unwrap();
    let e = tx.delete_provider("prv-missing").await.unwrap_err();
    assert!(
        matches!(e, StoreError::NotFound(ref w) if w.contains("prv-missing")),
        "{e}"
    );

    // A transaction dropped without commit leaves nothing behind.
    tx.put_workspace(&workspace("ws-3", "other")).await.unwrap();
    drop(tx);
    assert_eq!(store.load_all().await.unwrap().workspaces.len(), 1);

    // Deleting a workspace cascades to its keys and providers.
    let mut tx = store.begin().await.unwrap();
    tx.delete_workspace("ws-1").await.unwrap();
    tx.commit().await.unwrap();
    let data = store.load_all().await.unwrap();
    assert!(data.workspaces.is_empty() && data.api_keys.is_empty() && data.providers.is_empty());
    assert_eq!(data.integrations.len(), 1);

    // Opening again finds the schema in place.
    drop(store);
    let again = Store::open(&db.location()).await.unwrap();
    assert_eq!(again.meta_get("org_id").await.unwrap().as_deref(), Some("org-2"));
    drop(again);
    drop(_other);
    db.drop_db().await;
}

pub(crate) fn logged(i: i64, ws: &str, status: u16) -> LogRecord {
    LogRecord {
        id: format!("req-{i}"),
        created_at: t(i),
        trace_id: format!("trace-{}", i / 2),
        workspace_id: Some(ws.to_owned()),
        api_key_id: Some("key-1".into()),
        integration_id: Some("int-1".into()),
        integration_slug: Some("openai-prod".into()),
        provider_slug: Some("openai".into()),
        ai_provider_id: Some("openai".into()),
        model: Some("gpt-4o".into()),
        endpoint: "chat.completions".into(),
        status_code: status,
        refusal: (status == 429).then(|| "rate_limit".into()),
        streamed: i % 2 == 0,
        prompt_tokens: 10,
        completion_tokens: 5,
        total_tokens: 15,
        tokens_estimated: i % 3 == 0,
        cost_picos: (i % 4 != 0).then_some(1_000 * i),
        latency_us: 2_000 + i as u64,
        ttft_us: Some(500),
        upstream_latency_us: Some(1_500),
        metadata: Some(
            json!({"env": if i % 2 == 0 { "prod" } else { "dev" }, "n": i})
                .as_object()
                .unwrap()
                .clone(),
        ),
        request_body: Some(format!("{{\"i\":{i}}}")),
        response_body: Some("{}".into()),
        target_path: Some("config.targets[0]".into()),
        retry_attempt: 1,
        attempt: 2,
        superseded: i == 3,
        ..Default::default()
    }
}

#[tokio::test]
async fn the_request_log_round_trips_on_postgres() {
    let db = TestDb::create().await;
    let store = Store::open(&db.location()).await.unwrap();
    let (log, writer) = store.spawn_log_writer().unwrap();
    let rows: Vec<LogRecord> = (1..=8)
        .map(|i| logged(i, if i <= 6 { "ws-1" } else { "ws-2" }, if i == 5 { 429 } else { 200 }))
        .collect();
    for r in &rows {
        log.record(r.clone());
    }
    // A NUL character, which PostgreSQL text cannot hold, does not lose the batch.
    let mut nul = logged(9, "ws-2", 200);
    nul.model = Some("gpt\0x".into());
    nul.metadata = Some(json!({"k\0": "v\0"}).as_object().unwrap().clone());
    log.commit(nul).await;
    log.flush().await;

    // Everything round-trips, newest first.
    let all = LogFilter {
        count_total: true,
        limit: 100,
        ..Default::default()
    };
    let (total, got) = store.request_log().list(&all).await.unwrap();
    assert_eq!(total, Some(9));
    assert_eq!(got[0].model.as_deref(), Some("gpt\u{FFFD}x"));
    assert_eq!(got[0].metadata.as_ref().unwrap()["k\u{FFFD}"], json!("v\u{FFFD}"));
    let mut expected = rows.clone();
    expected.reverse();
    assert_eq!(got[1..], expected[..]);

    // Filters, metadata by `->>` (strings and numbers alike).
    let page = |f: LogFilter| {
        let store = store.clone();
        async move {
            let (total, rows) = store
                .request_log()
                .list(&LogFilter {
                    count_total: true,
                    limit: 100,
                    ..f
                })
                .await
                .unwrap();
            (total.unwrap(), rows.into_iter().map(|r| r.id).collect::<Vec<_>>())
        }
    };
    let ids = |v: &[i64]| v.iter().map(|i| format!("req-{i}")).collect::<Vec<_>>();
    let meta = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
    assert_eq!(
        page(LogFilter {
            workspace_id: Some("ws-2".into()),
            ..Default::default()
        })
        .await,
        (3, ids(&[9, 8, 7]))
    );
    assert_eq!(
        page(LogFilter {
            status_code: Some(429),
            ..Default::default()
        })
        .await,
        (1, ids(&[5]))
    );
    assert_eq!(
        page(LogFilter {
            trace_id: Some("trace-1".into()),
            ..Default::default()
        })
        .await,
        (2, ids(&[3, 2]))
    );
    assert_eq!(
        page(LogFilter {
            metadata: meta("env", "prod"),
            workspace_id: Some("ws-1".into()),
            ..Default::default()
        })
        .await,
        (3, ids(&[6, 4, 2]))
    );
    assert_eq!(
        page(LogFilter {
            metadata: meta("n", "7"),
            ..Default::default()
        })
        .await,
        (1, ids(&[7]))
    );
    assert_eq!(
        page(LogFilter {
            metadata: meta("missing", "x"),
            ..Default::default()
        })
        .await,
        (0, ids(&[]))
    );
    assert_eq!(
        page(LogFilter {
            from: Some(t(2)),
            to: Some(t(4)),
            ..Default::default()
        })
        .await,
        (3, ids(&[4, 3, 2]))
    );
    assert_eq!(
        page(LogFilter {
            cost_min: Some(2_000),
            cost_max: Some(6_000),
            ..Default::default()
        })
        .await,
        (4, ids(&[6, 5, 3, 2]))
    );
    assert_eq!(
        page(LogFilter {
            integration_slug: Some("openai-prod".into()),
            model: Some("gpt-4o".into()),
            provider_slug: Some("openai".into()),
            api_key_id: Some("key-1".into()),
            ..Default::default()
        })
        .await
        .0,
        8
    );
    let (_, second) = store
        .request_log()
        .list(&LogFilter {
            offset: 1,
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(second.into_iter().map(|r| r.id).collect::<Vec<_>>(), ids(&[8, 7]));

    // What ws-1 consumed since t(2): rows 2..=6 but the refused 5 (row 4 has no price).
    let (cost, tokens, requests) = store
        .request_log()
        .consumed_since(&Scope::Workspace("ws-1".into()), t(2))
        .await
        .unwrap();
    assert_eq!((cost, tokens, requests), (1_000 * (2 + 3 + 6), 15 * 4, 4));
    let by_key = store
        .request_log()
        .consumed_since(&Scope::ApiKey("key-1".into()), t(0))
        .await
        .unwrap();
    assert_eq!(by_key.2, 8);
    let by_provider = store
        .request_log()
        .consumed_since(&Scope::Provider("ws-2".into(), "openai".into()), t(0))
        .await
        .unwrap();
    assert_eq!(by_provider, (1_000 * (7 + 9), 45, 3));
    let by_int = store
        .request_log()
        .consumed_since(&Scope::IntegrationWorkspace("int-1".into(), "ws-9".into()), t(0))
        .await
        .unwrap();
    assert_eq!(by_int, (0, 0, 0));

    // Damaged rows (negative values) count as 0, and sums saturate instead of overflowing.
    let pool = PgPool::connect(&db.url).await.unwrap();
    sqlx::query("UPDATE usage_log SET total_tokens = -5, cost_picos = -7 WHERE id = 'req-2'")
        .execute(&pool)
        .await
        .unwrap();
    let ws1 = Scope::Workspace("ws-1".into());
    let consumed = store.request_log().consumed_since(&ws1, t(2)).await.unwrap();
    assert_eq!(consumed, (3_000 + 6_000, 15 * 3, 4));
    sqlx::query(
        "UPDATE usage_log SET total_tokens = 9223372036854775807, cost_picos = 9223372036854775807 \
         WHERE id IN ('req-3', 'req-6')",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let consumed = store.request_log().consumed_since(&ws1, t(2)).await.unwrap();
    assert_eq!(consumed, (i64::MAX, i64::MAX, 4));

    drop(log);
    writer.await.unwrap();
    drop(store);
    db.drop_db().await;
}

#[tokio::test]
async fn roll_ups_on_postgres_add_up_across_concurrent_writers() {
    // Two writers (as on two replicas) add to the same roll-up rows at once;
    // the row lock keeps every count.
    let db = TestDb::create().await;
    let a = Store::open(&db.location()).await.unwrap();
    let b = Store::open(&db.location()).await.unwrap();
    let (la, wa) = a.spawn_log_writer().unwrap();
    let (lb, wb) = b.spawn_log_writer().unwrap();
    for i in 0..200 {
        let mut r = logged(i % 10, "ws-1", 200);
        r.id = format!("req-{i}");
        r.superseded = false;
        if i % 2 == 0 {
            la.commit(r);
        } else {
            lb.commit(r);
        }
    }
    la.flush().await;
    lb.flush().await;
    let q = Query {
        filter: Filter {
            from_ms: 0,
            to_ms: i64::MAX,
            ..Default::default()
        },
        interval: None,
        group: None,
        distinct: true,
    };
    let cells = a.analytics().aggregate(&q).await.unwrap();
    let agg = &cells[&(0, String::new())];
    assert_eq!(agg.requests, 200);
    assert_eq!(agg.total_tokens, 200 * 15);
    assert_eq!(agg.latency.count(), 200);
    // From the minute roll-up, and from raw rows (a filter it cannot answer).
    let peak = a.analytics().peak_minute(&q.filter).await.unwrap();
    assert_eq!(peak.map(|p| p.0), Some(200));
    let by_key = Filter {
        api_key_ids: vec!["key-1".into()],
        ..q.filter.clone()
    };
    let raw_peak = a.analytics().peak_minute(&by_key).await.unwrap();
    assert_eq!(raw_peak, peak);
    let nobody = Filter {
        api_key_ids: vec!["key-9".into()],
        ..q.filter.clone()
    };
    assert_eq!(a.analytics().peak_minute(&nobody).await.unwrap(), None);
    drop((la, lb));
    wa.await.unwrap();
    wb.await.unwrap();
    drop((a, b));
    db.drop_db().await;
}

#[tokio::test]
async fn an_unreachable_postgres_is_an_error() {
    let e = Store::open(&Location::Postgres("postgres://postgres@127.0.0.1:1/none".into()))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Db(_)), "{e}");
}

#[tokio::test]
async fn the_alert_outbox_works_on_postgres() {
    let db = TestDb::create().await;
    let store = Store::open(&db.location()).await.unwrap();
    let o = store.outbox();
    o.init().await.unwrap();
    o.init().await.unwrap(); // idempotent
    let alert = AlertPayload {
        event_id: "evt-1".into(),
        kind: AlertKind::Threshold,
        level: "workspace".into(),
        limit_id: "ws:ws-1".into(),
        name: "default".into(),
        workspace_id: Some("ws-1".into()),
        limit_type: BudgetKind::Cost,
        consumed: "8".into(),
        credit_limit: "10".into(),
        alert_threshold: Some("8".into()),
        period_start: t(0),
        next_reset_at: None,
        recipients: vec![],
    };
    let first = o.enqueue(&alert, t(0)).await.unwrap();
    assert!(first.new);
    // The same limit, period and kind again: recorded once.
    let again = o
        .enqueue(
            &AlertPayload {
                event_id: "evt-2".into(),
                ..alert.clone()
            },
            t(1),
        )
        .await
        .unwrap();
    assert!(!again.new);
    assert_eq!(again.id, "evt-1");
    let due = o.due(t(0), 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].payload, alert);
    assert!(o
        .mark_failed("evt-1", Channel::Email, "smtp down", t(60))
        .await
        .unwrap());
    assert!(o.mark_sent("evt-1", Channel::Webhook, t(2)).await.unwrap());
    assert!(!o.mark_sent("evt-1", Channel::Webhook, t(3)).await.unwrap());
    let got = o.get("evt-1").await.unwrap().unwrap();
    assert_eq!(got.email.attempts, 1);
    assert_eq!(got.email.last_error.as_deref(), Some("smtp down"));
    assert_eq!(got.email.next_attempt_at, t(60));
    assert_eq!(got.webhook.state, ChannelState::Sent);
    assert_eq!(got.webhook.done_at, Some(t(2)));
    // Not due again before its retry time.
    assert!(o.due(t(30), 10).await.unwrap().is_empty());
    assert_eq!(o.count_sent(Some("ws-1"), Some(t(0)), Some(t(10))).await.unwrap(), 1);
    assert_eq!(o.count_sent(Some("ws-1"), Some(t(3)), None).await.unwrap(), 0);
    assert_eq!(o.count_sent(Some("ws-2"), None, None).await.unwrap(), 0);
    assert!(matches!(
        o.mark_skipped("evt-missing", Channel::Email, t(4)).await,
        Err(OutboxError::NotFound(_))
    ));
    drop((o, store));
    db.drop_db().await;
}
