//! The request-log writer's batches on SQLite and on a real PostgreSQL: a
//! record whose id is stored already, or comes twice in one batch, is
//! skipped and rolled up once; the rest of its batch is written, also when
//! the batch takes several statements.

use crate::journal::{counts, rec};
use crate::postgres::{AtLocation, TestDb};
use tollgate_store::{Location, Store};

async fn a_batch_skips_stored_and_repeated_ids_and_writes_the_rest(at: &Location) {
    let store = Store::open(at).await.unwrap();
    let (log, writer) = store.spawn_log_writer().unwrap();
    log.commit(rec(1)).await;
    assert_eq!(counts(at).await, (1, 1, 1, 1));

    // One batch (queued together, then flushed): 1 is stored already, 3
    // comes twice.
    for i in [2, 1, 3, 3, 4] {
        log.record(rec(i));
    }
    log.flush().await;
    assert_eq!(
        counts(at).await,
        (4, 4, 4, 4),
        "2, 3 and 4 written, each rolled up once"
    );

    // The same batch again changes nothing.
    for i in [2, 1, 3, 3, 4] {
        log.record(rec(i));
    }
    log.commit(rec(5)).await;
    assert_eq!(counts(at).await, (5, 5, 5, 5));

    // A batch of several statements (it is inserted 64 rows at most at a
    // time): a stored id and a repeat sit in other statements than the
    // first copies.
    let mut many: Vec<i64> = (100..250).collect();
    many.insert(0, 5);
    many.push(100);
    for i in many {
        log.record(rec(i));
    }
    log.flush().await;
    assert_eq!(
        counts(at).await,
        (155, 155, 155, 155),
        "150 new rows, each rolled up once"
    );
    log.close().await;
    writer.await.unwrap();
}

#[tokio::test]
async fn sqlite_a_batch_skips_stored_and_repeated_ids_and_writes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    a_batch_skips_stored_and_repeated_ids_and_writes_the_rest(&Location::embedded(dir.path())).await;
}

#[tokio::test]
async fn postgres_a_batch_skips_stored_and_repeated_ids_and_writes_the_rest() {
    let db = TestDb::create().await;
    a_batch_skips_stored_and_repeated_ids_and_writes_the_rest(&db.location()).await;
    db.drop_db().await;
}
