//! `database_url = postgres://…` through the commands: the control-plane
//! commands and `serve` work on a real PostgreSQL database (each test its
//! own, created fresh and dropped). The server is `TOLLGATE_TEST_POSTGRES` (a URL without a
//! database), default `postgres://postgres@127.0.0.1:5432`.

use sqlx::postgres::PgPool;
use std::sync::Arc;
use tollgate_core::clock::SystemClock;
use tollgate_server::cli;
use tollgate_server::config::{Config, FileConfig};
use tollgate_store::{Location, Store};
use tollgate_testkit::control::Control;
use tollgate_testkit::openai::{self, OpenAiMock};

use crate::gateway::{chat, UPSTREAM_KEY};
use crate::support::App;

pub(crate) fn server() -> String {
    std::env::var("TOLLGATE_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

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

    pub(crate) async fn drop_db(self) {
        let admin = PgPool::connect(&format!("{}/postgres", server())).await.unwrap();
        sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
    }
}

pub(crate) fn config(dir: &std::path::Path, url: &str) -> Config {
    FileConfig {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.to_path_buf()),
        database_url: Some(url.into()),
        master_key: Some("22".repeat(32)),
        ..Default::default()
    }
    .resolve()
    .expect("config")
}

#[tokio::test]
async fn control_plane_commands_work_on_postgres() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &db.url);
    cli::migrate(config.clone()).await.unwrap();
    let key = cli::create_admin_key(config.clone(), "ci".into()).await.unwrap();
    assert!(!key.is_empty());
    let prices = dir.path().join("prices.json");
    std::fs::write(
        &prices,
        r#"{"taken_at": "2026-11-01", "models": [{"provider": "openai", "model": "gpt-4o", "input": "7", "output": "1"}]}"#,
    )
    .unwrap();
    assert_eq!(cli::import_prices(config.clone(), prices).await.unwrap(), 1);
    // The key comes from the configuration: the new one is printed.
    let new_key = cli::rotate_master_key(config.clone()).await.unwrap().expect("printed");

    let store = Store::open(&Location::Postgres(db.url.clone())).await.unwrap();
    let data = store.load_all().await.unwrap();
    // The first start's key and the CLI's, in the default workspace's organisation.
    assert_eq!(data.api_keys.len(), 2);
    assert!(data.api_keys.iter().any(|k| k.name == "ci"));
    assert_eq!(data.workspaces.len(), 1);
    assert!(store.meta_get("price_table").await.unwrap().unwrap().contains("gpt-4o"));
    let (total, audit) = store.audit_logs(&Default::default()).await.unwrap();
    assert_eq!(total, 3, "{audit:?}");
    assert_eq!(audit[0].object_type, "master_key");
    // Nothing went to SQLite.
    assert!(!dir.path().join(tollgate_store::db::SQLITE_FILE).exists());
    drop(store);

    // The old key no longer opens the data; the new one does.
    let e = cli::create_admin_key(config.clone(), "old".into()).await.unwrap_err();
    assert!(e.to_string().contains("does not match"), "{e}");
    let mut rotated = config.clone();
    rotated.master_key = Some(new_key);
    cli::create_admin_key(rotated, "new".into()).await.unwrap();
    db.drop_db().await;
}

#[tokio::test]
async fn serve_runs_on_postgres_from_gateway_to_logs_and_analytics() {
    let db = TestDb::create().await;
    let url = db.url.clone();
    let mut app = App::start_with(move |c| c.database = Location::Postgres(url), Arc::new(SystemClock)).await;
    let control = Control::new();
    let mock = openai::start(OpenAiMock {
        api_key: Some(UPSTREAM_KEY.into()),
        control: control.clone(),
    })
    .await
    .unwrap();
    let ws = app.workspace("PG").await;
    app.openai_integration("oai", &openai::base_url(&mock), UPSTREAM_KEY, &[&ws])
        .await;
    let (_, key) = app.workspace_key(&ws, &["completions.write", "logs.view"]).await;
    control.set_usage(12, 7, 0);
    let r = app
        .chat_raw(
            &key,
            &[
                ("x-portkey-trace-id", "trace-pg"),
                ("x-portkey-metadata", r#"{"team":"search"}"#),
            ],
            &chat("@oai/gpt-4o"),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.flush_logs().await;
    // Nothing went to SQLite.
    assert!(!app.dir.path().join(tollgate_store::db::SQLITE_FILE).exists());

    let logs = app.get(r#"/v1/logs?metadata={"team":"search"}"#, &key).await;
    assert_eq!(logs.body["total"], 1, "{:?}", logs.body);
    let rec = &logs.body["data"][0];
    assert_eq!(rec["trace_id"], "trace-pg");
    assert_eq!(rec["status_code"], 200);
    assert_eq!(rec["usage"]["prompt_tokens"], 12);
    assert_eq!(rec["usage"]["completion_tokens"], 7);
    assert_eq!(rec["model"], "gpt-4o");
    assert_eq!(rec["cost_exact"], "0.0001");
    let none = app.get(r#"/v1/logs?metadata={"team":"other"}"#, &key).await;
    assert_eq!(none.body["total"], 0);

    let summary = app.get("/v1/analytics/summary", &app.admin_key).await;
    assert_eq!(summary.status, 200, "{:?}", summary.body);
    let data = &summary.body["data"];
    assert_eq!(data["requests"], 1, "{data}");
    assert_eq!(data["successful_requests"], 1, "{data}");
    assert_eq!(data["total_tokens"], 19, "{data}");
    assert_eq!(data["cost_exact"], "0.0001", "{data}");
    let peak = app
        .get("/v1/analytics/graphs/requests?interval=minute", &app.admin_key)
        .await;
    assert_eq!(peak.status, 200, "{:?}", peak.body);

    // A restart on the same database keeps the log and prints no new key.
    app.restart(Arc::new(SystemClock)).await;
    let logs = app.get("/v1/logs?trace_id=trace-pg", &key).await;
    assert_eq!(logs.body["total"], 1, "{:?}", logs.body);
    // seed-usage writes to the same log.
    let seeded = tollgate_server::seed::seed_usage(app.config.clone(), 10, 1)
        .await
        .unwrap();
    assert_eq!(seeded.rows, 10);
    let all = app.get("/v1/logs", &app.admin_key).await;
    assert_eq!(all.body["total"], 11, "{:?}", all.body);
    if let Some(r) = app.running.take() {
        r.stop().await.unwrap();
    }
    db.drop_db().await;
}

#[test]
fn a_database_url_of_another_kind_is_a_configuration_error() {
    let e = FileConfig {
        database_url: Some("mysql://root:secret@127.0.0.1/tollgate".into()),
        ..Default::default()
    }
    .resolve()
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("database_url:") && e.contains("mysql://"), "{e}");
    assert!(!e.contains("secret"), "{e}");
}
