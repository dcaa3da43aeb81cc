//! Control-plane change notifications: on PostgreSQL a change committed
//! through one store reaches every other store's watch within a second; a
//! rolled-back change sends nothing; a listener that loses its connection
//! reconnects and says so. On SQLite the watch never fires.

use crate::postgres::{AtLocation, TestDb};
use chrono::{TimeZone, Utc};
use serde_json::json;
use sqlx::postgres::PgPool;
use std::time::Duration;
use tokio::time::{timeout, Instant};
use tollgate_core::records::Workspace;
use tollgate_store::{ControlChanges, ControlEvent, Location, Store};

/// The longest a committed change may take to reach another replica.
const WITHIN: Duration = Duration::from_secs(1);

fn workspace(id: &str) -> Workspace {
    let t = Utc.timestamp_opt(1_750_000_000, 0).unwrap();
    serde_json::from_value(json!({
        "id": id, "slug": id, "name": id, "created_at": t, "last_updated_at": t,
    }))
    .unwrap()
}

/// A control-plane change through `store`: a workspace and a bumped
/// version, committed. Returns the new version.
async fn change(store: &Store, ws: &str) -> i64 {
    let mut tx = store.begin().await.unwrap();
    tx.put_workspace(&workspace(ws)).await.unwrap();
    let v = tx.bump_control_version().await.unwrap();
    tx.commit().await.unwrap();
    v
}

/// The next event, which must come within `limit`.
async fn next_within(w: &mut ControlChanges, limit: Duration) -> ControlEvent {
    timeout(limit, w.next()).await.expect("no control event in time")
}

/// Nothing arrives for a while.
async fn quiet(w: &mut ControlChanges) {
    if let Ok(e) = timeout(Duration::from_millis(500), w.next()).await {
        panic!("unexpected control event {e:?}");
    }
}

#[tokio::test]
async fn a_committed_change_reaches_every_store_within_a_second() {
    let db = TestDb::create().await;
    let (a, b) = (
        Store::open(&db.location()).await.unwrap(),
        Store::open(&db.location()).await.unwrap(),
    );
    let mut wa = a.watch_control();
    let mut wb = b.watch_control();
    assert!(wa.is_live() && wb.is_live());
    // Once listening, each watch says so: what came before was not seen.
    assert_eq!(
        next_within(&mut wa, Duration::from_secs(10)).await,
        ControlEvent::Resync
    );
    assert_eq!(
        next_within(&mut wb, Duration::from_secs(10)).await,
        ControlEvent::Resync
    );

    let start = Instant::now();
    let v = change(&a, "ws-1").await;
    assert_eq!(v, 1);
    assert_eq!(next_within(&mut wb, WITHIN).await, ControlEvent::Changed(1));
    // The writer's own watch hears it too.
    assert_eq!(next_within(&mut wa, WITHIN).await, ControlEvent::Changed(1));
    assert!(start.elapsed() < WITHIN, "{:?}", start.elapsed());
    assert_eq!(b.control_version().await.unwrap(), 1);

    // A rolled-back change sends nothing and leaves the version alone.
    let mut tx = a.begin().await.unwrap();
    tx.put_workspace(&workspace("ws-2")).await.unwrap();
    assert_eq!(tx.bump_control_version().await.unwrap(), 2);
    drop(tx);
    quiet(&mut wb).await;
    assert_eq!(b.control_version().await.unwrap(), 1);
    assert_eq!(b.load_all().await.unwrap().workspaces.len(), 1);

    // Two replicas changing at once get distinct versions, in commit order:
    // the second bump waits for the first transaction to end.
    let mut first = a.begin().await.unwrap();
    assert_eq!(first.bump_control_version().await.unwrap(), 2);
    let b2 = b.clone();
    let second = tokio::spawn(async move { change(&b2, "ws-3").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!second.is_finished(), "the second bump did not wait");
    quiet(&mut wa).await;
    first.commit().await.unwrap();
    assert_eq!(second.await.unwrap(), 3);
    assert_eq!(next_within(&mut wa, WITHIN).await, ControlEvent::Changed(2));
    assert_eq!(next_within(&mut wa, WITHIN).await, ControlEvent::Changed(3));
    assert_eq!(a.control_version().await.unwrap(), 3);

    drop((wa, wb, a, b));
    db.drop_db().await;
}

/// The backend process of the watch's listener (the connection whose last
/// statement was its `LISTEN`).
async fn listener_pids(admin: &PgPool) -> Vec<i32> {
    sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN %'")
        .fetch_all(admin)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_listener_that_loses_its_connection_reconnects_and_resyncs() {
    let db = TestDb::create().await;
    let (a, b) = (
        Store::open(&db.location()).await.unwrap(),
        Store::open(&db.location()).await.unwrap(),
    );
    let mut wb = b.watch_control();
    assert_eq!(
        next_within(&mut wb, Duration::from_secs(10)).await,
        ControlEvent::Resync
    );
    let admin = PgPool::connect(&db.url).await.unwrap();
    let pids = listener_pids(&admin).await;
    assert_eq!(pids.len(), 1, "{pids:?}");

    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pids[0])
        .fetch_one(&admin)
        .await
        .unwrap();
    assert!(killed);
    // It notices, listens again on a new connection and says a change may
    // have been missed.
    assert_eq!(
        next_within(&mut wb, Duration::from_secs(10)).await,
        ControlEvent::Resync
    );
    let now = listener_pids(&admin).await;
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0], pids[0]);
    // And later changes arrive as before.
    let v = change(&a, "ws-1").await;
    assert_eq!(next_within(&mut wb, WITHIN).await, ControlEvent::Changed(v));

    admin.close().await;
    drop((wb, a, b));
    db.drop_db().await;
}

#[tokio::test]
async fn an_embedded_store_bumps_the_version_but_never_signals() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&Location::embedded(dir.path())).await.unwrap();
    let mut w = store.watch_control();
    assert!(!w.is_live());
    assert_eq!(store.control_version().await.unwrap(), 0);
    assert_eq!(change(&store, "ws-1").await, 1);
    assert_eq!(change(&store, "ws-2").await, 2);
    assert_eq!(store.control_version().await.unwrap(), 2);
    quiet(&mut w).await;
}
