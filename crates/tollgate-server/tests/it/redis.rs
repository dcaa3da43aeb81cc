//! Limit counters in Redis through the gateway (`redis_url`): a 429 at the
//! limit, a 503 while Redis is down (or an admission without limits with
//! `limits_on_redis_error = "open"`), and Redis back empty, or failed over
//! to a replica that missed the last writes, rebuilt from the request log,
//! so that nobody gets a fresh budget.

use crate::gateway::{chat, upstream, UPSTREAM_KEY};
use crate::support::{manual_clock, App};
use serde_json::json;
use std::time::{Duration, Instant};
use tollgate_core::clock::ManualClock;
use tollgate_store::counters::OnRedisError;
use tollgate_testkit::control::Control;
use tollgate_testkit::openai;
use tollgate_testkit::redis_server::RedisServer;
use tollgate_testkit::tcp_proxy::TcpProxy;
use tollgate_testkit::MockServer;

struct Gw {
    app: App,
    mock: MockServer,
    clock: ManualClock,
    key: String,
}

/// A gateway with its counters in `redis`, and 5 requests a minute on the
/// integration × workspace.
async fn gateway(redis: &RedisServer, on_error: OnRedisError) -> Gw {
    gateway_at(redis.url(), on_error).await
}

/// [`gateway`] with its counters in the Redis at `url`.
async fn gateway_at(url: String, on_error: OnRedisError) -> Gw {
    let (clock, shared) = manual_clock("2026-11-26T10:00:30Z");
    let app = App::start_with(
        |c| {
            c.redis_url = Some(url.into());
            c.redis_key_prefix = "gw:".into();
            c.limits_on_redis_error = on_error;
        },
        shared,
    )
    .await;
    let mock = upstream(&Control::new()).await;
    let ws = app.workspace("Shared").await;
    app.openai_integration("oai", &openai::base_url(&mock), UPSTREAM_KEY, &[])
        .await;
    let key = app.workspace_key(&ws, &["completions.write"]).await.1;
    let r = app
        .put(
            "/v1/integrations/oai/workspaces",
            &app.admin_key,
            json!({"workspaces": [{"id": ws, "enabled": true,
                "rate_limits": [{"type": "requests", "unit": "rpm", "value": 5}]}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    Gw { app, mock, clock, key }
}

impl Gw {
    async fn send(&self) -> crate::support::Resp {
        self.app.completion(&self.key, chat("@oai/gpt-4o")).await
    }

    /// Sends until the answer is not 503 (Redis is back), for up to 15 s;
    /// returns the last answer.
    async fn first_answer_but_503(&self) -> crate::support::Resp {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = self.send().await;
            if r.status != 503 || Instant::now() > deadline {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counters_in_redis_refuse_at_the_limit_fail_closed_and_are_rebuilt() {
    // A one-node cluster: a script whose keys spanned two slots would fail.
    let mut redis = RedisServer::start(true);
    let g = gateway(&redis, OnRedisError::Closed).await;
    for _ in 0..4 {
        let r = g.send().await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }

    redis.kill();
    let started = Instant::now();
    let r = g.send().await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.error_type(), "limits_unavailable_error");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("limit counters"));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(g.mock.calls(), 4, "nothing reached the upstream");

    // Back, empty: the first request rebuilds the workspace's counters from
    // the request log: 4 requests this minute (the 503 was not admitted), so
    // one more fits and the next is refused.
    redis.restart();
    let r = g.first_answer_but_503().await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = g.send().await;
    assert_eq!(r.status, 429, "{:?}", r.body);
    assert_eq!(r.error_type(), "integration_rate_limit_error");
    assert_eq!(r.header("retry-after"), Some("30"));
    assert_eq!(g.mock.calls(), 5);
    // The next minute is a new window.
    g.clock.advance(chrono::Duration::seconds(30));
    assert_eq!(g.send().await.status, 200);
    assert_eq!(g.mock.calls(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fail_open_admits_while_redis_is_down() {
    let mut redis = RedisServer::start(false);
    let g = gateway(&redis, OnRedisError::Open).await;
    for _ in 0..5 {
        assert_eq!(g.send().await.status, 200);
    }
    assert_eq!(g.send().await.status, 429);
    redis.kill();
    for _ in 0..3 {
        let r = g.send().await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    assert_eq!(g.mock.calls(), 8);
}

/// A gateway started while Redis is down starts, answers 503, and admits
/// once Redis is up, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn starts_while_redis_is_down_and_recovers() {
    let mut redis = RedisServer::start(false);
    redis.kill();
    let g = gateway(&redis, OnRedisError::Closed).await;
    let r = g.send().await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    redis.restart();
    let r = g.first_answer_but_503().await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    for _ in 0..4 {
        assert_eq!(g.send().await.status, 200);
    }
    assert_eq!(g.send().await.status, 429);
}

/// A failover that loses writes: the master acknowledged them, but the
/// replica promoted when it died never received them (Redis replicates
/// asynchronously). The counters the replica holds were rebuilt on another
/// server, so the first admission rebuilds them from the request log, and
/// nobody gets back what the lost writes counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_that_lost_writes_rebuilds_the_counters_from_the_log() {
    let mut master = RedisServer::start(false);
    let replica = RedisServer::start(false);
    // The replication link, which the test cuts.
    let link = TcpProxy::start(master.addr()).await.unwrap();
    tokio::task::block_in_place(|| replica.replicate(&master, link.addr));
    // The address clients use, moved to the promoted replica by the failover.
    let address = TcpProxy::start(master.addr()).await.unwrap();
    let g = gateway_at(format!("redis://{}", address.addr), OnRedisError::Closed).await;
    for _ in 0..2 {
        assert_eq!(g.send().await.status, 200);
    }
    tokio::task::block_in_place(|| replica.catch_up(&master));
    // The replica stops receiving; the master acknowledges two more.
    link.cut().await;
    for _ in 0..2 {
        assert_eq!(g.send().await.status, 200);
    }
    // The master dies with them, and the replica takes its place.
    master.kill();
    replica.promote();
    address.retarget(replica.addr());
    assert!(replica.info("INFO replication").contains("role:master"));

    // The promoted replica counts 2 of this minute's 5 requests; the log
    // holds 4: one more is admitted, then the limit holds.
    let r = g.first_answer_but_503().await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = g.send().await;
    assert_eq!(r.status, 429, "{:?}", r.body);
    assert_eq!(g.mock.calls(), 5);
}
