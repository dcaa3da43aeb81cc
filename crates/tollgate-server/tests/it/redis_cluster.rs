//! The gateway on a real Redis Cluster of three masters (`redis_url` with
//! the seed nodes, `redis_cluster = true`), started by the test and killed
//! at its end: two workspaces whose keys live on different nodes, an rpm
//! limit exact under concurrency, a token budget settled to the token and
//! then refusing, and two round trips per request, counted by the nodes;
//! a workspace's slot moved to another node while the gateway runs
//! (resharding), its counts carried over; and a master lost and failed
//! over to its replica.

use crate::gateway::{chat, UPSTREAM_KEY};
use crate::support::{manual_clock, App, Resp};
use futures::future::join_all;
use serde_json::{json, Value};
use tollgate_testkit::control::Control;
use tollgate_testkit::openai::{self, OpenAiMock};
use tollgate_testkit::redis_cluster::RedisCluster;
use tollgate_testkit::MockServer;

const PREFIX: &str = "gwc:";

fn tag(ws: &str) -> String {
    format!("{PREFIX}{{ws:{ws}}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_counts_limits_on_a_redis_cluster() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.unwrap();
    let app = gateway_on(&cluster).await;
    let control = Control::new();
    control.set_usage(10, 40, 0);
    let mock = openai::start(OpenAiMock {
        api_key: Some(UPSTREAM_KEY.into()),
        control,
    })
    .await
    .unwrap();

    // Two workspaces whose hash tags land on different nodes.
    let a = app.workspace("A").await;
    let node_a = cluster.node_of(&tag(&a));
    let mut b = None;
    for i in 0..30 {
        let ws = app.workspace(&format!("B{i}")).await;
        let node = cluster.node_of(&tag(&ws));
        if node != node_a {
            b = Some((ws, node));
            break;
        }
    }
    let (b, node_b) = b.expect("a workspace on another node");

    // A: 20 requests a minute on the integration; B: a 1,000-token budget.
    app.openai_integration("oai", &openai::base_url(&mock), UPSTREAM_KEY, &[])
        .await;
    let r = app
        .put(
            "/v1/integrations/oai/workspaces",
            &app.admin_key,
            json!({"workspaces": [
                {"id": a, "enabled": true, "rate_limits": [{"type": "requests", "unit": "rpm", "value": 20}]},
                {"id": b, "enabled": true}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = app
        .put(
            &format!("/v1/admin/workspaces/{b}"),
            &app.admin_key,
            json!({"usage_limits": [{"type": "tokens", "credit_limit": 1000}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let key_a = app.workspace_key(&a, &["completions.write"]).await.1;
    let key_b = app.workspace_key(&b, &["completions.write"]).await.1;
    let mut body = chat("@oai/gpt-4o");
    body["max_tokens"] = json!(40);

    // The first request of each workspace rebuilds its counters (and
    // loads the script on its node).
    assert_eq!(send(&app, &key_a, &body).await.status, 200);
    assert_eq!(send(&app, &key_b, &body).await.status, 200);

    // Two round trips per request: admission and settlement, one EVALSHA
    // each, on the workspace's node; nothing else reaches Redis.
    assert!(cluster
        .on_every_node("CONFIG RESETSTAT")
        .iter()
        .all(|a| a.as_deref() == Some("+OK")));
    let requests = 6;
    for _ in 0..requests {
        let r = send(&app, &key_b, &body).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    assert_eq!(cluster.calls_of("evalsha"), 2 * requests);
    for (port, calls) in cluster.command_calls() {
        for (c, n) in &calls {
            match c.as_str() {
                "evalsha" => assert_eq!((port, *n), (node_b, 2 * requests), "{calls:?}"),
                // The test's own, and the admission script's `INFO` (the node's run_id).
                c if c.starts_with("config") || c == "info" => {}
                // Run by the script, on the script's node.
                "exists" | "get" | "hget" | "hmget" | "hset" | "hsetnx" | "zadd" | "zrem" | "zrangebyscore"
                | "zremrangebyscore" | "pexpire" => assert_eq!(port, node_b, "{calls:?}"),
                other => panic!("{other} reached {port}: {calls:?}"),
            }
        }
    }

    // A: exactly 19 of 60 concurrent requests fit what is left of 20.
    let rs: Vec<Resp> = join_all((0..60).map(|_| send(&app, &key_a, &body))).await;
    let ok = rs.iter().filter(|r| r.status == 200).count();
    let refused = rs.iter().filter(|r| r.status == 429).count();
    assert_eq!((ok, refused), (19, 41));
    assert_eq!(
        rs.iter().find(|r| r.status == 429).unwrap().error_type(),
        "integration_rate_limit_error"
    );

    // B: the budget settles each request's 50 tokens, and refuses the one
    // that might pass 1,000.
    let mut sent_b = 1 + requests;
    let last = loop {
        let r = send(&app, &key_b, &body).await;
        if r.status != 200 {
            break r;
        }
        sent_b += 1;
        assert!(sent_b <= 20, "more than 1,000 tokens admitted");
    };
    assert_eq!(last.status, 412, "{:?}", last.body);
    assert_eq!(last.error_type(), "workspace_exhaust_error");
    let counters = cluster.keys_on(node_b, &format!("{}:c:*budget.tokens*", tag(&b)));
    assert_eq!(counters.len(), 1, "{counters:?}");
    let consumed: u64 = cluster
        .hget_on(node_b, &counters[0], "n")
        .and_then(|n| n.parse().ok())
        .expect("a consumed count");
    assert_eq!(consumed, 50 * sent_b, "the counter holds every settled token");
    assert!(consumed <= 1000);
    assert_eq!(mock.calls() as u64, 20 + sent_b);

    // Each workspace's keys are on its node, and only there.
    for (ws, node) in [(&a, node_a), (&b, node_b)] {
        for port in &cluster.ports {
            let found = cluster.keys_on(*port, &format!("{}*", tag(ws)));
            assert_eq!(!found.is_empty(), *port == node, "{ws} on {port}: {found:?}");
        }
    }
    drop(app);
}

/// Resharding: the slot of a workspace's hash tag moves to another master
/// (its keys `MIGRATE`d, the new owner announced) between two requests. The
/// gateway follows the `MOVED` answers without a restart, loads its script
/// on the new node, and the limit goes on from what was counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_workspaces_slot_moved_to_another_node_keeps_its_counts() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.unwrap();
    let (app, mock, ws, key, body) = five_requests_under_an_rpm_of_20(&cluster).await;

    let (tag, keys) = (tag(&ws), format!("{}*", tag(&ws)));
    let from = cluster.node_of(&tag);
    let to = *cluster.ports.iter().find(|p| **p != from).unwrap();
    assert!(!cluster.keys_on(from, &keys).is_empty());
    tokio::task::block_in_place(|| cluster.move_slot_of(&tag, to));
    assert_eq!(cluster.node_of(&tag), to);
    assert!(cluster.keys_on(from, &keys).is_empty());
    assert!(!cluster.keys_on(to, &keys).is_empty());

    // 15 of the 20 are left, whichever node counts them now.
    assert_eq!(burst(&app, &key, &body, 60).await, (15, 45));
    assert_eq!(mock.calls(), 20);
    assert!(cluster.keys_on(from, &keys).is_empty());
    drop(app);
}

/// Failover: the master of a workspace's slot dies and its replica takes
/// over. The gateway, which knew the old master, finds the new one by
/// itself (no restart; a request that met the cluster mid-change would fail
/// closed with 503, the only other answer allowed), and the limit goes on:
/// the replica's counters were rebuilt on another server (it may miss the
/// last writes of its master), so the first request rebuilds them from the
/// request log, which holds all five.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_lost_to_its_replica_keeps_the_counts() {
    let mut cluster = tokio::task::spawn_blocking(RedisCluster::start_with_replicas)
        .await
        .unwrap();
    let (app, mock, ws, key, body) = five_requests_under_an_rpm_of_20(&cluster).await;

    let master = cluster.node_of(&tag(&ws));
    tokio::task::block_in_place(|| cluster.kill_and_fail_over(master));
    let promoted = cluster.node_of(&tag(&ws));
    assert_ne!(promoted, master);

    // The gateway finds the new master by itself: a few requests may still
    // meet the old one's absence (503, never an admission it cannot count).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut unavailable = 0;
    loop {
        let r = send(&app, &key, &body).await;
        match r.status {
            200 => break,
            503 => {
                assert_eq!(r.error_type(), "limits_unavailable_error", "{:?}", r.body);
                unavailable += 1;
                assert!(std::time::Instant::now() < deadline, "still 503 after 20 s");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => panic!("{other}: {:?}", r.body),
        }
    }
    // 6 admitted so far: 14 of the 20 are left.
    assert_eq!(
        burst(&app, &key, &body, 60).await,
        (14, 46),
        "{unavailable} unavailable before"
    );
    assert_eq!(mock.calls(), 20);
    drop(app);
}

/// A gateway on `cluster` and a workspace whose integration allows 20
/// requests a minute, 5 of them already sent: the gateway, the upstream,
/// the workspace, its key and the request body.
async fn five_requests_under_an_rpm_of_20(cluster: &RedisCluster) -> (App, MockServer, String, String, Value) {
    let app = gateway_on(cluster).await;
    let mock = openai::start(OpenAiMock {
        api_key: Some(UPSTREAM_KEY.into()),
        control: Control::new(),
    })
    .await
    .unwrap();
    let ws = app.workspace("A").await;
    app.openai_integration("oai", &openai::base_url(&mock), UPSTREAM_KEY, &[])
        .await;
    app.provision(
        "oai",
        json!([{"id": ws, "enabled": true, "rate_limits": [{"type": "requests", "unit": "rpm", "value": 20}]}]),
    )
    .await;
    let key = app.workspace_key(&ws, &["completions.write"]).await.1;
    let body = chat("@oai/gpt-4o");
    for _ in 0..5 {
        let r = send(&app, &key, &body).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }

    (app, mock, ws, key, body)
}

/// A gateway (on a manual clock) whose limit counters are on `cluster`.
async fn gateway_on(cluster: &RedisCluster) -> App {
    let (_clock, shared) = manual_clock("2026-11-26T10:00:30Z");
    let url = cluster.url();
    App::start_with(
        |c| {
            c.redis_url = Some(url.into());
            c.redis_cluster = true;
            c.redis_key_prefix = PREFIX.into();
        },
        shared,
    )
    .await
}

/// Sends `n` requests at once: how many were answered and how many refused
/// with 429 (nothing else is allowed).
async fn burst(app: &App, key: &str, body: &Value, n: usize) -> (usize, usize) {
    let rs: Vec<Resp> = join_all((0..n).map(|_| send(app, key, body))).await;
    if let Some(r) = rs.iter().find(|r| r.status != 200 && r.status != 429) {
        panic!("{}: {:?}", r.status, r.body);
    }
    let ok = rs.iter().filter(|r| r.status == 200).count();
    (ok, n - ok)
}

async fn send(app: &App, key: &str, body: &Value) -> Resp {
    app.post("/v1/chat/completions", key, body.clone()).await
}
