//! Two replicas on one PostgreSQL database: a change made through one
//! reaches the other's snapshot within a second, by notification alone (the
//! poll is set to an hour here, so it cannot be what delivers it).
//!
//! The request log is not on PostgreSQL yet (`Store::spawn_log_writer`
//! refuses it), so each replica's request log is a SQLite file of its own;
//! the control plane, which is what this tests, is the shared PostgreSQL
//! database. The server is `TOLLGATE_TEST_POSTGRES` (a URL without a
//! database), default `postgres://postgres@127.0.0.1:5432`; the test
//! creates its own database and drops it afterwards.

use super::testing::org;
use super::{api_keys, Control};
use crate::state::{AppState, SharedState};
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tollgate_testkit::postgres_db::TestDb;

/// The longest a change may take to reach another replica.
const WITHIN: Duration = Duration::from_secs(1);

/// One replica: the shared data directory (for the master key file) and
/// database, and its refresh loop polling hourly.
async fn replica(data_dir: &Path, url: &str, shutdown: &CancellationToken) -> SharedState {
    let state = super::testing::app_state_on(data_dir, Some(url)).await;
    tokio::spawn(crate::server::refresh_loop(
        state.clone(),
        Duration::from_secs(3600),
        shutdown.clone(),
    ));
    state
}

/// Waits (up to [`WITHIN`]) until `state`'s snapshot satisfies `ok`;
/// returns how long that took.
async fn within(state: &AppState, ok: impl Fn(&AppState) -> bool) -> Duration {
    let start = Instant::now();
    while !ok(state) {
        assert!(start.elapsed() < WITHIN, "not seen within {WITHIN:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

/// Creates a service key in the default workspace through `state`; returns
/// its id.
async fn new_key(state: &AppState) -> String {
    Control::new(state)
        .create_api_key(
            &org(),
            "workspace",
            "service",
            api_keys::CreateKey {
                workspace_id: Some("default".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .id
        .to_string()
}

#[tokio::test]
async fn a_key_revoked_through_one_replica_is_refused_by_every_replica_within_a_second() {
    let db = TestDb::create().await;
    let url = db.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let a = replica(dir.path(), &url, &shutdown).await;
    let b = replica(dir.path(), &url, &shutdown).await;

    let id = new_key(&a).await;
    assert!(a.snapshot().key_by_id(&id).is_some());
    within(&b, |s| s.snapshot().key_by_id(&id).is_some()).await;

    Control::new(&a).revoke_api_key(&org(), &id).await.unwrap();
    // The replica that made the change refuses the key on its next request.
    assert!(a.snapshot().key_by_id(&id).is_none());
    let took = within(&b, |s| s.snapshot().key_by_id(&id).is_none()).await;
    eprintln!("the revocation reached the other replica in {took:?}");
    assert_eq!(a.snapshot().version, b.snapshot().version);

    // A change through the other replica comes back the same way.
    let back = new_key(&b).await;
    within(&a, |s| s.snapshot().key_by_id(&back).is_some()).await;

    shutdown.cancel();
    drop((a, b));
    db.drop_db().await;
}
