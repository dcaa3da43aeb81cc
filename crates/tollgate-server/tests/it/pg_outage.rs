//! PostgreSQL unreachable while the gateway serves: a TCP proxy in front of
//! the real server (`tollgate_testkit::tcp_proxy`) is cut (every connection
//! dropped, new ones refused) and restored. The gateway keeps answering from
//! its snapshot, request-log records wait in memory and in the spill file
//! and are written exactly once when PostgreSQL returns (or by the next
//! start), admin writes answer 503 `AB09` quickly, and `/health/ready`
//! follows the database.

use reqwest::Method;
use serde_json::{json, Value};
use sqlx::postgres::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_core::clock::SystemClock;
use tollgate_store::spill::SPILL_FILE;
use tollgate_store::Location;
use tollgate_testkit::postgres_db::TestDb;
use tollgate_testkit::tcp_proxy::TcpProxy;

use crate::gateway::chat;
use crate::support::App;

/// The longest an admin write may take to answer 503 while PostgreSQL is
/// cut: the 2 s acquire timeout plus slack for a loaded machine.
const REFUSED_WITHIN: Duration = Duration::from_secs(4);

struct Setup {
    app: App,
    proxy: TcpProxy,
    db: TestDb,
    /// Straight to the database, not through the proxy.
    direct: PgPool,
    key: String,
    _mock: tollgate_testkit::MockServer,
}

async fn setup(buffer: usize) -> Setup {
    let db = TestDb::create().await;
    let (proxy, url) = TcpProxy::for_url(&db.url).await.unwrap();
    let app = App::start_with(
        move |c| {
            c.database = Location::Postgres(url);
            c.log_buffer_records = buffer;
        },
        Arc::new(SystemClock),
    )
    .await;
    let gw = crate::gateway::setup_on(app, "Outage", true).await;
    gw.control.set_usage(10, 5, 0);
    let direct = PgPool::connect(&db.url).await.unwrap();
    Setup {
        app: gw.app,
        proxy,
        db,
        direct,
        key: gw.key,
        _mock: gw.mock,
    }
}

impl Setup {
    /// Stops the server and drops its database.
    async fn stop_and_drop(self) {
        let Setup {
            mut app, db, direct, ..
        } = self;
        if let Some(r) = app.running.take() {
            r.stop().await.unwrap();
        }
        direct.close().await;
        db.drop_db().await;
    }

    /// Restarts on the same database and spill file, and checks that the
    /// start wrote the spill: it is gone, and the log holds `traces` once
    /// each, rolled up.
    async fn restart_writes_the_spill(&mut self, traces: &[String]) {
        self.app.restart(Arc::new(SystemClock)).await;
        assert!(!self.app.dir.path().join(SPILL_FILE).exists());
        logged_once(&self.direct, traces).await;
    }
}

/// One chat request under `trace`, whole or streamed, read to its end.
async fn request(s: &Setup, trace: &str, stream: bool) {
    let mut body = chat("@oai/gpt-4o");
    if stream {
        body["stream"] = json!(true);
    }
    let r = s.app.chat_raw(&s.key, &[("x-portkey-trace-id", trace)], &body).await;
    assert_eq!(r.status(), 200, "{trace}");
    let text = r.text().await.unwrap();
    if stream {
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    } else {
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["usage"]["total_tokens"], 15, "{v}");
    }
}

/// How many rows each trace id has in the request log.
async fn rows_per_trace(direct: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT trace_id, COUNT(*) FROM usage_log GROUP BY trace_id ORDER BY trace_id")
        .fetch_all(direct)
        .await
        .unwrap()
}

/// Waits until the log holds `traces`, each exactly once.
async fn wait_for_log(direct: &PgPool, traces: &[String]) {
    let mut want: Vec<(String, i64)> = traces.iter().map(|t| (t.clone(), 1)).collect();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = rows_per_trace(direct).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline && got.iter().all(|(_, n)| *n == 1),
            "request log {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the log holds `traces` once each, and checks the roll-ups.
async fn logged_once(direct: &PgPool, traces: &[String]) {
    wait_for_log(direct, traces).await;
    assert_rollups_match_rows(direct).await;
}

/// The roll-ups count exactly the rows: requests and tokens.
async fn assert_rollups_match_rows(direct: &PgPool) {
    let rows: (i64, i64) = sqlx::query_as("SELECT COUNT(*), COALESCE(SUM(total_tokens), 0)::BIGINT FROM usage_log")
        .fetch_one(direct)
        .await
        .unwrap();
    let rolled: (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(SUM(requests), 0)::BIGINT, COALESCE(SUM(total_tokens), 0)::BIGINT FROM usage_daily",
    )
    .fetch_one(direct)
    .await
    .unwrap();
    assert_eq!(rows, rolled, "rows (count, tokens) vs roll-ups");
    let minutes: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(requests), 0)::BIGINT FROM usage_minute")
        .fetch_one(direct)
        .await
        .unwrap();
    assert_eq!(minutes, rows.0, "minute roll-ups");
}

async fn ready(app: &App) -> (u16, Value, Duration) {
    let t = Instant::now();
    let r = app.call(Method::GET, "/health/ready", None, None).await;
    (r.status, r.body, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_through_a_postgres_outage_and_loses_no_record() {
    let s = setup(3).await;
    let spill = s.app.dir.path().join(SPILL_FILE);
    let mut traces = vec!["before".to_owned()];
    request(&s, "before", false).await;
    s.app.flush_logs().await;

    s.proxy.cut().await;
    // Whole and streamed answers go on, from the snapshot.
    for i in 0..12 {
        let trace = format!("during-{i:02}");
        let t = Instant::now();
        request(&s, &trace, i % 3 == 2).await;
        // Journaled: no request waits for the database.
        assert!(t.elapsed() < REFUSED_WITHIN, "{trace} took {:?}", t.elapsed());
        traces.push(trace);
    }
    // The writer meets the outage (after the acquire timeout) and keeps them.
    s.app.flush_logs().await;
    assert!(spill.exists(), "beyond 3 records in memory, they are spilled");

    // Admin writes (and reads that need the database) answer 503 AB09, fast.
    let t = Instant::now();
    let r = s
        .app
        .post("/v1/admin/workspaces", &s.app.admin_key, json!({"name": "during"}))
        .await;
    assert_eq!((r.status, r.code()), (503, "AB09"), "{:?}", r.body);
    assert!(t.elapsed() < REFUSED_WITHIN, "{:?}", t.elapsed());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.body["success"], false);
    let logs = s.app.get("/v1/logs", &s.key).await;
    assert_eq!((logs.status, logs.code()), (503, "AB09"), "{:?}", logs.body);

    let (status, body, took) = ready(&s.app).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["down"], json!(["database"]), "{body}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    let live = s.app.call(Method::GET, "/health", None, None).await;
    assert_eq!(live.status, 200, "liveness does not depend on the database");

    s.proxy.restore().await.unwrap();
    wait_for_log(&s.direct, &traces).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while spill.exists() {
        assert!(Instant::now() < deadline, "the spill file is removed once written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_rollups_match_rows(&s.direct).await;

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body, _) = ready(&s.app).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "ready again without a restart: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let summary = s.app.get("/v1/analytics/summary", &s.app.admin_key).await;
    assert_eq!(summary.status, 200, "{:?}", summary.body);
    assert_eq!(summary.body["data"]["requests"], traces.len(), "{:?}", summary.body);
    assert_eq!(
        summary.body["data"]["total_tokens"],
        15 * traces.len(),
        "{:?}",
        summary.body
    );
    let r = s
        .app
        .post("/v1/admin/workspaces", &s.app.admin_key, json!({"name": "after"}))
        .await;
    assert_eq!(r.status, 200, "admin writes work again: {:?}", r.body);
    // And the gateway still serves, logging straight to the database.
    request(&s, "after", false).await;
    traces.push("after".into());
    s.app.flush_logs().await;
    logged_once(&s.direct, &traces).await;

    s.stop_and_drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_spilled_by_a_stopped_server_are_written_once_by_the_next_start() {
    let mut s = setup(2).await;
    let spill = s.app.dir.path().join(SPILL_FILE);
    let mut traces = vec!["before".to_owned()];
    request(&s, "before", false).await;
    s.app.flush_logs().await;
    s.proxy.cut().await;
    for i in 0..7 {
        let trace = format!("during-{i}");
        request(&s, &trace, i % 2 == 1).await;
        traces.push(trace);
    }
    // Stopping while PostgreSQL is away: what is in memory joins the spill.
    let t = Instant::now();
    if let Some(r) = s.app.running.take() {
        r.stop().await.unwrap();
    }
    assert!(t.elapsed() < Duration::from_secs(8), "stopped in {:?}", t.elapsed());
    let spilled = std::fs::read_to_string(&spill).unwrap();
    assert_eq!(spilled.lines().count(), 7, "every record of the outage is on disk");

    s.proxy.restore().await.unwrap();
    // The next start writes the spill before it serves, and removes it.
    s.restart_writes_the_spill(&traces).await;

    // A spill written again (a crash before its removal) adds nothing.
    std::fs::write(&spill, &spilled).unwrap();
    s.restart_writes_the_spill(&traces).await;

    s.stop_and_drop().await;
}
