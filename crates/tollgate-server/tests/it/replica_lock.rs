//! The replica lock after its connection to PostgreSQL is lost (the
//! database restarted, the connection was cut): a TCP proxy in front of the
//! real server (`tollgate_testkit::tcp_proxy`) is cut and restored. The
//! holder takes the lock again when PostgreSQL answers, so a second replica
//! is refused as before (also when PostgreSQL still keeps the old session:
//! the holder ends it); if another replica took it meanwhile, the holder
//! stops serving and says why.

use sqlx::postgres::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_core::clock::SystemClock;
use tollgate_server::config::Config;
use tollgate_server::server::{self, Running, StartError};
use tollgate_testkit::backend::RedisKeys;
use tollgate_testkit::tcp_proxy::TcpProxy;

use crate::postgres::{config, TestDb};

/// The lock's key, as `pg_locks` shows a bigint advisory lock: its high
/// half in `classid`, its low half in `objid`.
const LOCK: i64 = 0x746f_6c6c_6761_7465;

fn replica(dir: &std::path::Path, url: &str, redis: Option<&RedisKeys>) -> Config {
    let mut c = config(dir, url);
    if let Some(r) = redis {
        c.redis_url = Some(r.url().into());
        c.redis_key_prefix = r.prefix().into();
    }
    c
}

async fn start(c: &Config) -> Result<Running, StartError> {
    server::start(c.clone(), Arc::new(SystemClock)).await
}

/// The sessions (server process ids) that hold the replica lock.
async fn holder_pids(direct: &PgPool) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1 ORDER BY pid",
    )
    .bind(LOCK >> 32)
    .bind(LOCK & 0xffff_ffff)
    .fetch_all(direct)
    .await
    .unwrap()
}

/// How many sessions hold the replica lock.
async fn holders(direct: &PgPool) -> i64 {
    holder_pids(direct).await.len() as i64
}

async fn holders_become(direct: &PgPool, want: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let n = holders(direct).await;
        if n == want {
            return;
        }
        assert!(Instant::now() < deadline, "{n} holders of the replica lock, not {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_holder_takes_the_replica_lock_again_after_a_cut() {
    let db = TestDb::create().await;
    let direct = PgPool::connect(&db.url).await.unwrap();
    let (proxy, through) = TcpProxy::for_url(&db.url).await.unwrap();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = start(&replica(d1.path(), &through, None)).await.unwrap();
    assert_eq!(holders(&direct).await, 1);

    // The cut ends the lock's session: the lock is free.
    proxy.cut().await;
    holders_become(&direct, 0, Duration::from_secs(5)).await;

    // Back: the first takes it again within a few checks (every 2 s),
    // and a second replica without redis_url is refused as before.
    proxy.restore().await.unwrap();
    holders_become(&direct, 1, Duration::from_secs(10)).await;
    let second = replica(d2.path(), &db.url, None);
    match start(&second).await {
        Err(StartError::AnotherReplica) => {}
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a second replica started beside the first"),
    }
    let r = reqwest::get(format!("http://{}/health", first.addr)).await.unwrap();
    assert_eq!(r.status(), 200, "the first still serves");

    // A stop releases it at once.
    first.stop().await.unwrap();
    holders_become(&direct, 0, Duration::from_secs(1)).await;
    start(&second).await.unwrap().stop().await.unwrap();
    drop(direct);
    db.drop_db().await;
}

/// The lock's connection is lost on this side only (the network failed;
/// PostgreSQL still keeps the session, and the lock with it): the holder
/// ends its own stale session and takes the lock again on a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_holder_ends_its_own_stale_session_and_takes_the_lock_again() {
    let db = TestDb::create().await;
    let direct = PgPool::connect(&db.url).await.unwrap();
    let (proxy, through) = TcpProxy::for_url(&db.url).await.unwrap();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = start(&replica(d1.path(), &through, None)).await.unwrap();
    let before = holder_pids(&direct).await;
    assert_eq!(before.len(), 1);

    proxy.strand();
    let deadline = Instant::now() + Duration::from_secs(12);
    let after = loop {
        let now = holder_pids(&direct).await;
        if now.len() == 1 && now != before {
            break now;
        }
        assert!(now.len() <= 1, "{now:?}");
        assert!(Instant::now() < deadline, "still held by {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(proxy.stranded() > 0, "the old session was kept open by the network");
    let alive: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
        .bind(before[0])
        .fetch_one(&direct)
        .await
        .unwrap();
    assert_eq!(alive, 0, "the stale session was ended");
    match start(&replica(d2.path(), &db.url, None)).await {
        Err(StartError::AnotherReplica) => {}
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a second replica started beside the first"),
    }
    assert_eq!(holder_pids(&direct).await, after);
    first.stop().await.unwrap();
    proxy.release_stranded();
    drop(direct);
    db.drop_db().await;
}

/// Another replica takes the lock while the holder's connection is cut
/// (one without redis_url; the holder with or without): once PostgreSQL
/// answers, the holder stops serving, naming the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_whose_lock_was_taken_meanwhile_stops_serving() {
    for holder_has_redis in [false, true] {
        let db = TestDb::create().await;
        let redis = RedisKeys::new();
        let direct = PgPool::connect(&db.url).await.unwrap();
        let (proxy, through) = TcpProxy::for_url(&db.url).await.unwrap();
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = start(&replica(d1.path(), &through, holder_has_redis.then_some(&redis)))
            .await
            .unwrap();
        let stopped = first.shutdown_token();

        proxy.cut().await;
        holders_become(&direct, 0, Duration::from_secs(5)).await;
        let second = start(&replica(d2.path(), &db.url, None)).await.unwrap();
        // While PostgreSQL is away from the first, it keeps serving.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!stopped.is_cancelled());
        let r = reqwest::get(format!("http://{}/health", first.addr)).await.unwrap();
        assert_eq!(r.status(), 200);

        proxy.restore().await.unwrap();
        tokio::time::timeout(Duration::from_secs(15), stopped.cancelled())
            .await
            .expect("the first replica stops once it sees the lock taken");
        let e = first.wait().await.expect_err("wait fails with the reason");
        let msg = e.to_string();
        assert!(msg.contains("replica lock") && msg.contains("redis_url"), "{msg}");
        // The second holds it, alone, and serves on.
        assert_eq!(holders(&direct).await, 1);
        let r = reqwest::get(format!("http://{}/health", second.addr)).await.unwrap();
        assert_eq!(r.status(), 200);
        second.stop().await.unwrap();
        drop(direct);
        db.drop_db().await;
    }
}
