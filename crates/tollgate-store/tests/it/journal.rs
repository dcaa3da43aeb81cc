//! The request log's journal: what a killed process journaled is written
//! by the next start, each record once; a journal that cannot be written or replayed never stops
//! the gateway. On SQLite and on a real PostgreSQL.

use crate::postgres::{AtLocation, TestDb};
use tollgate_store::journal::JOURNAL_FILE;
use tollgate_store::request_log::{LogRecord, OutageBuffer};
use tollgate_store::{Location, Store};

fn buffer(dir: &std::path::Path) -> OutageBuffer {
    OutageBuffer {
        dir: dir.to_owned(),
        memory_records: 10,
    }
}

/// A request that counts in the roll-ups (a final attempt).
pub(crate) fn rec(i: i64) -> LogRecord {
    LogRecord {
        superseded: false,
        ..crate::postgres::logged(i, "ws-1", 200)
    }
}

/// (rows, distinct ids, requests in the daily roll-ups, in the minute ones).
pub(crate) async fn counts(at: &Location) -> (i64, i64, i64, i64) {
    let sql = "SELECT (SELECT COUNT(*) FROM usage_log), (SELECT COUNT(DISTINCT id) FROM usage_log), \
               (SELECT CAST(COALESCE(SUM(requests), 0) AS BIGINT) FROM usage_daily), \
               (SELECT CAST(COALESCE(SUM(requests), 0) AS BIGINT) FROM usage_minute)";
    match at {
        Location::Postgres(url) => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            let c = sqlx::query_as(sql).fetch_one(&pool).await.unwrap();
            pool.close().await;
            c
        }
        Location::Sqlite(path) => {
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
            let c = sqlx::query_as(sql).fetch_one(&pool).await.unwrap();
            pool.close().await;
            c
        }
    }
}

/// What a process killed right after answering leaves behind: a journal
/// holding `records` (some may have reached the database) and a torn one.
fn journal_of_a_killed_process(dir: &std::path::Path, records: &[LogRecord]) {
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r).unwrap());
        text.push('\n');
    }
    // Killed in the middle of the next append, too.
    text.push_str(r#"{"id":"req-9","crea"#);
    std::fs::write(dir.join(JOURNAL_FILE), text).unwrap();
}

/// The next start writes the journal a killed process left, each record
/// once (the first was in the database already), before the writer takes
/// new records; a clean stop then leaves nothing to replay.
async fn killed_writer_loses_nothing(at: &Location, dir: &std::path::Path) {
    let store = Store::open(at).await.unwrap();
    {
        let (log, writer) = store.spawn_log_writer().unwrap();
        log.commit(rec(1)).await;
        log.close().await;
        writer.await.unwrap();
    }
    assert_eq!(counts(at).await, (1, 1, 1, 1));
    journal_of_a_killed_process(dir, &[rec(1), rec(2), rec(3)]);

    let (log, writer) = store.spawn_log_writer_buffered(&buffer(dir)).await.unwrap();
    // Written before the writer starts, the first not twice.
    assert_eq!(counts(at).await, (3, 3, 3, 3));
    assert_eq!(std::fs::metadata(dir.join(JOURNAL_FILE)).unwrap().len(), 0);
    // A record's ticket resolves once it is journaled.
    log.commit(rec(4)).await;
    assert!(std::fs::read_to_string(dir.join(JOURNAL_FILE))
        .unwrap()
        .contains("\"req-4\""));
    log.close().await;
    writer.await.unwrap();
    assert_eq!(counts(at).await, (4, 4, 4, 4));
    // A clean stop leaves nothing to replay.
    assert_eq!(std::fs::metadata(dir.join(JOURNAL_FILE)).unwrap().len(), 0);
}

#[tokio::test]
async fn sqlite_a_killed_writer_loses_no_journaled_record() {
    let dir = tempfile::tempdir().unwrap();
    killed_writer_loses_nothing(&Location::embedded(dir.path()), dir.path()).await;
}

#[tokio::test]
async fn postgres_a_killed_writer_loses_no_journaled_record() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    killed_writer_loses_nothing(&db.location(), dir.path()).await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_journal_that_cannot_be_written_makes_requests_wait_for_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let at = Location::embedded(dir.path());
    let store = Store::open(&at).await.unwrap();
    // Every write to the journal fails (ENOSPC).
    std::os::unix::fs::symlink("/dev/full", dir.path().join(JOURNAL_FILE)).unwrap();
    let (log, writer) = store.spawn_log_writer_buffered(&buffer(dir.path())).await.unwrap();
    log.commit(rec(1)).await;
    // No flush: the ticket resolved only once the record was committed.
    assert_eq!(counts(&at).await, (1, 1, 1, 1));
    log.commit(rec(2)).await;
    assert_eq!(counts(&at).await, (2, 2, 2, 2));
    log.close().await;
    writer.await.unwrap();
}

#[tokio::test]
async fn a_journal_that_cannot_be_replayed_is_set_aside_and_the_start_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let at = Location::embedded(dir.path());
    let store = Store::open(&at).await.unwrap();
    journal_of_a_killed_process(dir.path(), &[rec(1)]);
    // The database refuses the record now.
    let Location::Sqlite(path) = &at else { unreachable!() };
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query("CREATE TRIGGER refuse BEFORE INSERT ON usage_log BEGIN SELECT RAISE(ABORT, 'refused'); END")
        .execute(&pool)
        .await
        .unwrap();

    let (log, writer) = store.spawn_log_writer_buffered(&buffer(dir.path())).await.unwrap();
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("request-log.journal.unwritten-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let kept = std::fs::read_to_string(dir.path().join(&aside[0])).unwrap();
    assert!(kept.contains("\"req-1\""), "{kept}");
    assert_eq!(std::fs::metadata(dir.path().join(JOURNAL_FILE)).unwrap().len(), 0);

    // The gateway goes on: once the database takes records again they are written.
    sqlx::query("DROP TRIGGER refuse").execute(&pool).await.unwrap();
    log.commit(rec(2)).await;
    log.close().await;
    writer.await.unwrap();
    assert_eq!(counts(&at).await, (1, 1, 1, 1));
    pool.close().await;
}
