//! `database_url = postgres://…` through the commands: the control-plane
//! commands work on a real PostgreSQL database (each test its own, created
//! fresh and dropped), and `serve` / `seed-usage` refuse it before creating
//! anything. The server is `TOLLGATE_TEST_POSTGRES` (a URL without a
//! database), default `postgres://postgres@127.0.0.1:5432`.

use sqlx::postgres::PgPool;
use std::sync::Arc;
use tollgate_core::clock::SystemClock;
use tollgate_server::cli;
use tollgate_server::config::{Config, FileConfig};
use tollgate_store::{Location, Store};

fn server() -> String {
    std::env::var("TOLLGATE_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    async fn create() -> TestDb {
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

    async fn drop_db(self) {
        let admin = PgPool::connect(&format!("{}/postgres", server())).await.unwrap();
        sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
    }
}

fn config(dir: &std::path::Path, url: &str) -> Config {
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
async fn serve_and_seed_usage_refuse_postgres_before_creating_anything() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &db.url);
    let e = tollgate_server::server::start(config.clone(), Arc::new(SystemClock))
        .await
        .err()
        .expect("serve refuses PostgreSQL");
    assert!(e.to_string().contains("not yet supported"), "{e}");
    let e = tollgate_server::seed::seed_usage(config, 10, 1)
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("not yet supported"), "{e}");
    // No first admin key was created (nor printed).
    let store = Store::open(&Location::Postgres(db.url.clone())).await.unwrap();
    assert!(store.load_all().await.unwrap().api_keys.is_empty());
    drop(store);
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
