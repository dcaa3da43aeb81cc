//! The PostgreSQL backend against a real server: each test creates its own
//! database (`tollgate_test_<random>`) and drops it afterwards. The server
//! is `TOLLGATE_TEST_POSTGRES` (a URL without a database), default
//! `postgres://postgres@127.0.0.1:5432`.

use chrono::{TimeZone, Utc};
use serde_json::json;
use sqlx::postgres::PgPool;
use tollgate_core::limits::BudgetKind;
use tollgate_core::records::{ApiKeyRecord, Integration, ProviderRecord, SavedConfig, Workspace};
use tollgate_store::control::{AuditEntry, AuditFilter};
use tollgate_store::outbox::{AlertKind, AlertPayload, Channel, ChannelState, OutboxError};
use tollgate_store::usage::LogFilter;
use tollgate_store::{Location, Store, StoreError};

fn server() -> String {
    std::env::var("TOLLGATE_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A freshly created database, dropped by [`TestDb::drop_db`].
pub(crate) struct TestDb {
    name: String,
    pub(crate) url: String,
}

impl TestDb {
    pub(crate) async fn create() -> TestDb {
        let name = format!("tollgate_test_{:016x}", rand::random::<u64>());
        let admin = PgPool::connect(&format!("{}/postgres", server())).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let url = format!("{}/{name}", server());
        TestDb { name, url }
    }

    pub(crate) fn location(&self) -> Location {
        Location::from_url(Some(&self.url), std::path::Path::new("/nonexistent")).unwrap()
    }

    pub(crate) async fn drop_db(self) {
        let admin = PgPool::connect(&format!("{}/postgres", server())).await.unwrap();
        sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
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

#[tokio::test]
async fn the_request_log_on_postgres_is_refused_not_misread() {
    let db = TestDb::create().await;
    let store = Store::open(&db.location()).await.unwrap();
    let e = store.request_log().list(&LogFilter::default()).await.unwrap_err();
    assert!(e.to_string().contains("not yet supported"), "{e}");
    let e = store.analytics().peak_minute(&Default::default()).await.unwrap_err();
    assert!(e.to_string().contains("not yet supported"), "{e}");
    drop(store);
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
