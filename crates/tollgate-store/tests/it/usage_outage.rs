//! The request log's writer while PostgreSQL is unreachable (a proxy in
//! front of the real server is cut and restored), and its idempotent
//! replay: a record written twice is stored and rolled up once.

use crate::postgres::{AtLocation, TestDb};
use sqlx::postgres::PgPool;
use std::time::{Duration, Instant};
use tollgate_store::request_log::{LogRecord, OutageBuffer};
use tollgate_store::spill::SPILL_FILE;
use tollgate_store::{Location, Store};
use tollgate_testkit::tcp_proxy::TcpProxy;

/// (rows, distinct ids, requests in the daily roll-ups, in the minute ones).
async fn counts(pool: &PgPool) -> (i64, i64, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM usage_log), (SELECT COUNT(DISTINCT id) FROM usage_log), \
         (SELECT COALESCE(SUM(requests), 0)::BIGINT FROM usage_daily), \
         (SELECT COALESCE(SUM(requests), 0)::BIGINT FROM usage_minute)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn wait_for(pool: &PgPool, rows: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = counts(pool).await;
        if c == (rows, rows, rows, rows) {
            return;
        }
        assert!(Instant::now() < deadline, "{c:?}, expected {rows} of each");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A request that counts in the roll-ups (a final attempt).
fn rec(i: i64, ws: &str, status: u16) -> LogRecord {
    LogRecord {
        superseded: false,
        ..crate::postgres::logged(i, ws, status)
    }
}

fn buffer(dir: &std::path::Path, memory_records: usize) -> OutageBuffer {
    OutageBuffer {
        dir: dir.to_owned(),
        memory_records,
    }
}

#[tokio::test]
async fn a_record_written_twice_is_stored_and_rolled_up_once() {
    let db = TestDb::create().await;
    let store = Store::open(&db.location()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (log, writer) = store.spawn_log_writer_buffered(&buffer(dir.path(), 10)).await.unwrap();
    let pool = PgPool::connect(&db.url).await.unwrap();
    log.commit(rec(1, "ws-1", 200)).await;
    // Again alone, and again beside a new one.
    log.commit(rec(1, "ws-1", 200)).await;
    log.record(rec(1, "ws-1", 200));
    log.commit(rec(2, "ws-1", 200)).await;
    log.flush().await;
    assert_eq!(counts(&pool).await, (2, 2, 2, 2));
    assert!(!dir.path().join(SPILL_FILE).exists());
    drop(log);
    writer.await.unwrap();
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_wait_through_a_cut_in_memory_and_on_disk_then_are_written_in_order() {
    let db = TestDb::create().await;
    let (proxy, url) = TcpProxy::for_url(&db.url).await.unwrap();
    let store = Store::open(&Location::Postgres(url)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spill = dir.path().join(SPILL_FILE);
    let (log, writer) = store.spawn_log_writer_buffered(&buffer(dir.path(), 2)).await.unwrap();
    let pool = PgPool::connect(&db.url).await.unwrap();
    log.commit(rec(0, "ws-1", 200)).await;
    log.flush().await;

    proxy.cut().await;
    for i in 1..=6 {
        let t = Instant::now();
        log.commit(rec(i, "ws-1", 200)).await;
        // Journaled: nobody waits for the database.
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "record {i}: {:?}",
            t.elapsed()
        );
    }
    // The flush waits for the acquire timeout, then finds the records kept.
    log.flush().await;
    assert!(spill.exists(), "beyond 2 in memory, records are spilled");
    assert_eq!(counts(&pool).await.0, 1);

    proxy.restore().await.unwrap();
    wait_for(&pool, 7).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while spill.exists() {
        assert!(Instant::now() < deadline, "the spill file is removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Written in the order they came: the identity column follows it.
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM usage_log ORDER BY seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    let expected: Vec<String> = (0..=6).map(|i| format!("req-{i}")).collect();
    assert_eq!(ids, expected);
    drop(log);
    writer.await.unwrap();
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_spill_file_left_behind_is_written_at_start_without_its_torn_tail() {
    let db = TestDb::create().await;
    let store = Store::open(&db.location()).await.unwrap();
    let pool = PgPool::connect(&db.url).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spill = dir.path().join(SPILL_FILE);
    let records: Vec<LogRecord> = (1..=3).map(|i| rec(i, "ws-1", 200)).collect();
    let mut text = String::new();
    for r in &records {
        text.push_str(&serde_json::to_string(r).unwrap());
        text.push('\n');
    }
    // One of them is in the database already (a crash in the middle of a
    // replay), and the file ends with a torn record.
    {
        let (log, writer) = store.spawn_log_writer().unwrap();
        log.commit(records[0].clone()).await;
        drop(log);
        writer.await.unwrap();
    }
    text.push_str(r#"{"id":"req-4","created"#);
    std::fs::write(&spill, text).unwrap();

    let (log, writer) = store.spawn_log_writer_buffered(&buffer(dir.path(), 10)).await.unwrap();
    // Written before the writer starts.
    assert_eq!(counts(&pool).await, (3, 3, 3, 3));
    assert!(!spill.exists());
    let got: Vec<String> = sqlx::query_scalar("SELECT id FROM usage_log ORDER BY seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(got, ["req-1", "req-2", "req-3"]);
    drop(log);
    writer.await.unwrap();
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn on_sqlite_a_spill_file_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&Location::embedded(dir.path())).await.unwrap();
    // Even a spill file is left alone: SQLite cannot be unreachable.
    std::fs::write(dir.path().join(SPILL_FILE), "{}\n").unwrap();
    let (log, writer) = store.spawn_log_writer_buffered(&buffer(dir.path(), 1)).await.unwrap();
    log.commit(rec(1, "ws-1", 200)).await;
    log.commit(rec(2, "ws-1", 200)).await;
    log.flush().await;
    let (total, _) = store
        .request_log()
        .list(&tollgate_store::request_log::LogFilter {
            count_total: true,
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(total, Some(2));
    assert_eq!(std::fs::read_to_string(dir.path().join(SPILL_FILE)).unwrap(), "{}\n");
    drop(log);
    writer.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_spills_and_stops_the_writer_while_another_handle_lives() {
    let db = TestDb::create().await;
    let (proxy, url) = TcpProxy::for_url(&db.url).await.unwrap();
    let store = Store::open(&Location::Postgres(url)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spill = dir.path().join(SPILL_FILE);
    let (log, writer) = store.spawn_log_writer_buffered(&buffer(dir.path(), 10)).await.unwrap();
    // A handle someone forgot to drop (a lingering connection task).
    let lingering = log.clone();
    proxy.cut().await;
    for i in 1..=3 {
        log.commit(rec(i, "ws-1", 200)).await;
    }
    assert!(!spill.exists(), "three records fit in memory");
    let t = Instant::now();
    log.close().await;
    tokio::time::timeout(Duration::from_secs(2), writer)
        .await
        .expect("the writer stops though a handle lives")
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let spilled = std::fs::read_to_string(&spill).unwrap();
    assert_eq!(spilled.lines().count(), 3, "memory moved to the spill file");
    // After close, nothing more is taken (and nothing hangs).
    lingering.commit(rec(4, "ws-1", 200)).await;
    lingering.flush().await;
    proxy.restore().await.unwrap();
    db.drop_db().await;
}
