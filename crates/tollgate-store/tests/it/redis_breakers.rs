//! Circuit breakers in Redis: two replicas (two `RedisBreakers` on one
//! Redis) share failures and open state, the cool-down follows the clock
//! passed in, a success closes, keys expire, and Redis down reads closed,
//! fast.

use crate::counters::{redis_counters, LEASE};
use std::time::{Duration, Instant};
use tollgate_store::counters::RedisBreakers;
use tollgate_testkit::backend::{redis_url, RedisKeys};
use tollgate_testkit::redis_server::RedisServer;

const NOW: i64 = 1_795_000_000_000;
const KEY: &str = "ws-1/openai";

fn replica(url: &str, prefix: &str) -> RedisBreakers {
    redis_counters(url, prefix, LEASE).breakers()
}

fn cmd<T: ::redis::FromRedisValue>(c: &mut ::redis::Cmd) -> T {
    let mut conn = ::redis::Client::open(redis_url()).unwrap().get_connection().unwrap();
    c.query(&mut conn).unwrap()
}

/// 3 failures in 10 s open for 30 s.
async fn fail(b: &RedisBreakers, at: i64) {
    b.note(KEY, 3, 10_000, 30_000, at, false).await;
}

#[tokio::test]
async fn replicas_share_failures_cool_down_and_success() {
    let keys = RedisKeys::new();
    let prefix = keys.prefix();
    let (a, b) = (replica(keys.url(), prefix), replica(keys.url(), prefix));
    let fails = format!("{prefix}{{cb:{KEY}}}:fails");
    let open = format!("{prefix}{{cb:{KEY}}}:open");

    // Two failures through A, at the same millisecond as one through B: all count.
    fail(&a, NOW).await;
    fail(&a, NOW + 1_000).await;
    assert!(!a.is_open(KEY, NOW + 1_000).await && !b.is_open(KEY, NOW + 1_000).await);
    let pttl: i64 = cmd(::redis::cmd("PTTL").arg(&fails));
    assert!(pttl > 60_000 && pttl <= 70_000, "{pttl}");
    fail(&b, NOW + 1_000).await;
    assert!(a.is_open(KEY, NOW + 1_000).await, "opened through B, seen by A");
    assert!(b.is_open(KEY, NOW + 31_000 - 1).await);
    assert!(
        !a.is_open(KEY, NOW + 31_000).await,
        "cool-down over by the clock passed in"
    );
    let exists: i64 = cmd(::redis::cmd("EXISTS").arg(&fails));
    assert_eq!(exists, 0, "the count starts again");
    let pttl: i64 = cmd(::redis::cmd("PTTL").arg(&open));
    assert!(pttl > 80_000 && pttl <= 90_000, "{pttl}");

    // After the cool-down, failures spread wider than the window do not open.
    let t = NOW + 40_000;
    fail(&a, t).await;
    fail(&b, t + 5_000).await;
    fail(&a, t + 10_000).await;
    assert!(!b.is_open(KEY, t + 10_000).await, "the first fell out of the window");
    fail(&b, t + 12_000).await;
    assert!(a.is_open(KEY, t + 12_000).await);

    // A success through B closes it for A, and clears the count.
    b.note(KEY, 3, 10_000, 30_000, t + 13_000, true).await;
    assert!(!a.is_open(KEY, t + 13_000).await);
    let exists: i64 = cmd(::redis::cmd("EXISTS").arg(&fails).arg(&open));
    assert_eq!(exists, 0);
    fail(&a, t + 14_000).await;
    fail(&a, t + 14_000).await;
    assert!(!b.is_open(KEY, t + 14_000).await);

    // Another target and another prefix are other breakers.
    assert!(!a.is_open("ws-1/other", t).await);
    let other_keys = RedisKeys::new();
    let c = replica(other_keys.url(), other_keys.prefix());
    fail(&a, t + 15_000).await;
    assert!(a.is_open(KEY, t + 15_000).await);
    assert!(!c.is_open(KEY, t + 15_000).await);
}

#[tokio::test]
async fn redis_down_reads_closed_fast_then_recovers() {
    // A one-node cluster: the script's two keys must share a slot.
    let mut server = RedisServer::start(true);
    let b = replica(&server.url(), "cbdown:");
    for i in 0..3 {
        fail(&b, NOW + i).await;
    }
    assert!(b.is_open(KEY, NOW + 10).await, "works on a cluster node");

    server.kill();
    let started = Instant::now();
    assert!(!b.is_open(KEY, NOW + 10).await, "closed while Redis is down");
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "{:?}",
        started.elapsed()
    );
    // Within the next second Redis is left alone: no wait at all.
    let started = Instant::now();
    for _ in 0..3 {
        fail(&b, NOW + 10).await;
        assert!(!b.is_open(KEY, NOW + 10).await);
    }
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    // And afterwards it is tried again, still bounded.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let started = Instant::now();
    fail(&b, NOW + 10).await;
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "{:?}",
        started.elapsed()
    );

    // Back (empty): the connection comes back by itself.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for i in 0..3 {
            fail(&b, NOW + 20 + i).await;
        }
        if b.is_open(KEY, NOW + 30).await {
            break;
        }
        assert!(Instant::now() < deadline, "breakers did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
