//! `database_url = postgres://…` through the commands: the control-plane
//! commands and `serve` work on a real PostgreSQL database (each test its
//! own, created fresh and dropped). The server is `TOLLGATE_TEST_POSTGRES` (a URL without a
//! database), default `postgres://postgres@127.0.0.1:5432`.

use std::sync::Arc;
use tollgate_core::clock::SystemClock;
use tollgate_server::cli;
use tollgate_server::config::{Config, FileConfig};
use tollgate_store::{Location, Store};
use tollgate_testkit::control::Control;
use tollgate_testkit::openai;

use crate::gateway::{chat, setup_on, upstream, Setup, UPSTREAM_KEY};
use crate::support::App;

pub(crate) use tollgate_testkit::postgres_db::{server, TestDb};

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
    rotated.master_key = Some(new_key.into());
    cli::create_admin_key(rotated, "new".into()).await.unwrap();
    db.drop_db().await;
}

#[tokio::test]
async fn serve_runs_on_postgres_from_gateway_to_logs_and_analytics() {
    let db = TestDb::create().await;
    let url = db.url.clone();
    let app = App::start_with(move |c| c.database = Location::Postgres(url), Arc::new(SystemClock)).await;
    let Setup {
        mut app,
        mock: _mock,
        control,
        key,
        ..
    } = setup_on(app, "PG", true).await;
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

/// `tollgate migrate --to`: a server's SQLite data (workspace, integration
/// with its sealed key, a budgeted API key, requests) copied into PostgreSQL
/// serves the same on a replica with the same master key; a second copy into
/// the now non-empty target is refused and changes nothing.
#[tokio::test]
async fn migrate_to_copies_sqlite_into_postgres_for_a_replica() {
    use serde_json::json;
    let db = TestDb::create().await;
    let mut app = App::start().await;
    let control = Control::new();
    let mock = upstream(&control).await;
    let ws = app.workspace("Old").await;
    app.openai_integration("oai", &openai::base_url(&mock), UPSTREAM_KEY, &[&ws])
        .await;
    // 1,000 output tokens at 0.03 cents cost exactly $0.30.
    let r = app
        .put("/v1/integrations/oai/models", &app.admin_key, json!({"models": [{"slug": "gpt-4o", "enabled": true,
            "pricing_config": {"type": "static", "pay_as_you_go": {"request_token": {"price": 0}, "response_token": {"price": 0.03}}}}]}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    control.set_usage(10, 1000, 0);
    let mut body = chat("@oai/gpt-4o");
    body["max_tokens"] = json!(1000);
    let r = app
        .post(
            "/v1/api-keys/workspace/service",
            &app.admin_key,
            json!({"name": "budgeted", "workspace_id": ws, "scopes": ["completions.write"],
                "usage_limits": {"type": "cost", "credit_limit": 1}}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let key = r.body["key"].as_str().unwrap().to_owned();
    for i in 0..2 {
        let trace = format!("old-{i}");
        let r = app
            .chat_raw(
                &key,
                &[
                    ("x-portkey-trace-id", &trace),
                    ("x-portkey-metadata", r#"{"team":"search"}"#),
                ],
                &body,
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    app.flush_logs().await;
    if let Some(r) = app.running.take() {
        r.stop().await.unwrap();
    }

    // Only a PostgreSQL URL is a target, and a refused one is not echoed.
    for bad in ["mysql://root:hunter2@127.0.0.1/t", "tollgate.db", ""] {
        let e = cli::migrate_to(app.config.clone(), bad).await.unwrap_err();
        assert!(e.to_string().contains("must be a PostgreSQL URL"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
    // The source must be the embedded database.
    let mut on_pg = app.config.clone();
    on_pg.database = Location::Postgres(db.url.clone());
    let e = cli::migrate_to(on_pg, &db.url).await.unwrap_err();
    assert!(e.to_string().contains("embedded SQLite"), "{e}");

    let copied = cli::migrate_to(app.config.clone(), &db.url).await.unwrap();
    let rows = |t: &str| copied.iter().find(|c| c.table == t).map(|c| c.rows).unwrap();
    assert_eq!(rows("usage_log"), 2, "{copied:?}");
    assert_eq!(rows("integrations"), 1, "{copied:?}");
    assert_eq!(rows("workspaces"), 2, "the default workspace and Old: {copied:?}");
    assert_eq!(
        rows("api_keys"),
        2,
        "the first admin key and the budgeted one: {copied:?}"
    );
    assert!(rows("usage_daily") >= 1 && rows("usage_minute") >= 1, "{copied:?}");
    assert!(rows("meta") >= 3 && rows("audit_logs") >= 4, "{copied:?}");
    assert_eq!(rows("analytics_meta"), 1, "{copied:?}");

    // A replica on PostgreSQL with the same master key and no SQLite file.
    let replica_dir = tempfile::tempdir().unwrap();
    let mut config = crate::support::config_for(replica_dir.path());
    config.database = Location::Postgres(db.url.clone());
    let running = tollgate_server::server::start(config.clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    assert!(running.first_admin_key.is_none(), "the copied admin key is kept");
    let replica = App {
        url: format!("http://{}", running.addr),
        admin_key: app.admin_key.clone(),
        http: reqwest::Client::new(),
        running: Some(running),
        dir: replica_dir,
        config,
        _storage: tollgate_testkit::backend::Storage::embedded(),
    };
    let logs = replica
        .get(r#"/v1/logs?metadata={"team":"search"}"#, &replica.admin_key)
        .await;
    assert_eq!(logs.body["total"], 2, "{:?}", logs.body);
    let traces: Vec<&str> = logs.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["trace_id"].as_str().unwrap())
        .collect();
    assert_eq!(traces, ["old-1", "old-0"], "newest first, as before");
    assert_eq!(logs.body["data"][0]["cost_exact"], "0.3");
    let summary = replica.get("/v1/analytics/summary", &replica.admin_key).await;
    assert_eq!(summary.status, 200, "{:?}", summary.body);
    assert_eq!(summary.body["data"]["requests"], 2, "{:?}", summary.body);
    assert_eq!(summary.body["data"]["cost_exact"], "0.6", "{:?}", summary.body);

    // The integration's sealed key opens (the mock checks it), and the
    // budget's $0.60 came along: one more $0.30 request fits, the next not.
    let r = replica.completion(&key, body.clone()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = replica.completion(&key, body.clone()).await;
    assert_eq!(
        (r.status, r.error_type()),
        (412, "api_key_exhaust_error"),
        "{:?}",
        r.body
    );

    // A second copy into the now non-empty target is refused and changes nothing.
    replica.flush_logs().await;
    let before = replica.get("/v1/logs", &replica.admin_key).await.body["total"].clone();
    let e = cli::migrate_to(app.config.clone(), &db.url).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("not empty") && msg.contains("workspaces") && msg.contains("usage_log"),
        "{msg}"
    );
    assert!(!msg.contains("postgres://"), "{msg}");
    let after = replica.get("/v1/logs", &replica.admin_key).await.body["total"].clone();
    assert_eq!(before, after);
    let pg = Store::open(&Location::Postgres(db.url.clone())).await.unwrap();
    assert_eq!(pg.load_all().await.unwrap().workspaces.len(), 2);
    drop(pg);

    let mut replica = replica;
    if let Some(r) = replica.running.take() {
        r.stop().await.unwrap();
    }
    db.drop_db().await;
}

/// The `tollgate migrate --to` command as a user runs it: a line per table on
/// stdout, and the URL's password never printed, whether it copies, refuses
/// a non-empty target or refuses a URL of another kind.
#[tokio::test]
async fn the_migrate_to_command_prints_counts_and_never_the_password() {
    use std::process::Command;
    let db = TestDb::create().await;
    // Trust authentication ignores the password; the command must not show it.
    let url = db.url.replacen("://postgres@", "://postgres:hunter2@", 1);
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .env_remove("TOLLGATE_DATABASE_URL")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!text.contains("hunter2"), "{text}");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            text,
        )
    };
    let (ok, _, text) = run(&["migrate", "--to", &url]);
    assert!(!ok && text.contains("no database to copy"), "{text}");
    assert!(run(&["migrate"]).0, "plain migrate creates the SQLite schema");
    let sqlite = Store::open(&Location::embedded(dir.path())).await.unwrap();
    sqlite.meta_set("probe", "1").await.unwrap();
    drop(sqlite);
    let (ok, stdout, text) = run(&["migrate", "--to", &url]);
    assert!(ok, "{text}");
    assert!(stdout.contains("meta             1 rows"), "{stdout}");
    assert!(stdout.contains("usage_log        0 rows"), "{stdout}");
    assert_eq!(stdout.lines().count(), 13, "{stdout}");
    let (ok, _, text) = run(&["migrate", "--to", &url]);
    assert!(!ok && text.contains("not empty") && text.contains("meta"), "{text}");
    let (ok, _, text) = run(&["migrate", "--to", "mysql://root:hunter2@127.0.0.1/t"]);
    assert!(!ok && text.contains("must be a PostgreSQL URL"), "{text}");
    db.drop_db().await;
}
