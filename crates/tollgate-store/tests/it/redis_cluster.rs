//! The Redis counters and breakers on a real Redis Cluster of three masters
//! (`redis_cluster`, started by the test and killed at its end): groups land
//! on different nodes, each call runs on its group's node with two round
//! trips per request, limits hold exactly under concurrency, every other
//! operation (status, reset, restore, forget's SCAN, rebuilds) works, a node
//! that lost the scripts gets them again with the call, a master that
//! crashes and comes back empty is reached again and rebuilt, and readiness
//! pings every master.

use crate::counters::{budget, check, lid, rate, t, LEASE};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tollgate_core::admission::{Actual, Demand};
use tollgate_core::limits::{BudgetKind, RateKind, RateUnit};
use tollgate_core::money::Money;
use tollgate_store::counters::{AdmitError, CounterError, Counters, RedisCounters, RedisSettings, RestoreTurn};
use tollgate_testkit::redis_cluster::RedisCluster;

const NOW: &str = "2026-11-26T10:00:30Z";
const PREFIX: &str = "cl:";

fn cluster_counters(url: &str) -> RedisCounters {
    let mut settings = RedisSettings::new(url, LEASE);
    settings.cluster = true;
    settings.key_prefix = PREFIX.to_owned();
    RedisCounters::new(settings).unwrap()
}

/// Two groups whose keys live on different nodes: `(group, node port)`.
fn groups_on_two_nodes(cluster: &RedisCluster) -> [(String, u16); 2] {
    let first = ("ws:a0".to_owned(), cluster.node_of(&format!("{PREFIX}{{ws:a0}}")));
    for i in 1..100 {
        let group = format!("ws:a{i}");
        let node = cluster.node_of(&format!("{PREFIX}{{{group}}}"));
        if node != first.1 {
            return [first, (group, node)];
        }
    }
    panic!("every group hashed to one node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counters_and_breakers_on_a_three_node_cluster() {
    let mut cluster = tokio::task::spawn_blocking(RedisCluster::start).await.unwrap();
    let url = cluster.url();
    let counters: Arc<dyn Counters> = Arc::new(cluster_counters(&url));
    let now = t(NOW);
    let groups = groups_on_two_nodes(&cluster);

    let rpm = rate(RateKind::Requests, RateUnit::Rpm, 10);
    let tokens_budget = budget(BudgetKind::Tokens, 1_000_000, None, None);
    let cost_budget = budget(BudgetKind::Cost, 1_000_000_000_000, Some(1), None);
    for (group, _) in &groups {
        // A group Redis never saw is rebuilt first, as on one server.
        let checks = [check(&format!("key:k-{group}"), rpm)];
        assert!(matches!(
            counters.admit(now, group, &checks, Demand::default()).await,
            Err(AdmitError::Counter(CounterError::NeedsRestore(_)))
        ));
        assert_eq!(counters.begin_restore(group).await.unwrap(), RestoreTurn::Ours);
        counters.restored(group).await.unwrap();
    }

    // Exactly 10 of 30 concurrent requests fit each group's rpm limit, from
    // two replicas at once.
    let other: Arc<dyn Counters> = Arc::new(cluster_counters(&url));
    for (group, _) in &groups {
        let checks = [check(&format!("key:k-{group}"), rpm)];
        let mut tasks = Vec::new();
        for i in 0..30 {
            let c = if i % 2 == 0 { counters.clone() } else { other.clone() };
            let (group, checks) = (group.clone(), checks.clone());
            tasks.push(tokio::spawn(async move {
                c.admit(now, &group, &checks, Demand::default()).await
            }));
        }
        let mut admitted = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(r) => {
                    admitted += 1;
                    drop(r);
                }
                Err(AdmitError::Refused(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(admitted, 10, "{group}");
    }

    // Budgets settle, per group, on the group's node.
    let demand = Demand {
        tokens: 100,
        cost: Money(1_000),
    };
    let budget_checks = |group: &str| {
        [
            check(&format!("iw:int-1:{group}"), cost_budget),
            check(group, tokens_budget),
        ]
    };
    for (group, _) in &groups {
        let r = counters.admit(now, group, &budget_checks(group), demand).await.unwrap();
        counters
            .settle(
                r,
                Actual {
                    tokens: 40,
                    cost: Some(Money(400)),
                },
            )
            .await
            .unwrap();
        let s = counters.status(group, &lid(group), &tokens_budget, now).await.unwrap();
        assert_eq!((s.consumed, s.reserved), (40, 0));
        let s = counters
            .status(group, &lid(&format!("iw:int-1:{group}")), &cost_budget, now)
            .await
            .unwrap();
        assert_eq!((s.consumed, s.reserved), (400, 0));
    }

    // Each group's keys are all on its node, and only there.
    for (group, node) in &groups {
        let tag = format!("{PREFIX}{{{group}}}");
        for port in &cluster.ports {
            let found = cluster.keys_on(*port, &format!("{tag}*"));
            if port == node {
                assert!(found.len() >= 4, "epoch and 3 counters of {group} on {port}: {found:?}");
            } else {
                assert!(found.is_empty(), "{group}'s keys on {port}, not {node}: {found:?}");
            }
        }
    }

    // Two round trips per request, on the group's node; nothing else sent.
    assert!(cluster
        .on_every_node("CONFIG RESETSTAT")
        .iter()
        .all(|a| a.as_deref() == Some("+OK")));
    let requests = 10;
    for i in 0..requests {
        let (group, _) = &groups[i % 2];
        let r = counters.admit(now, group, &budget_checks(group), demand).await.unwrap();
        if i % 4 < 2 {
            counters.settle(r, Actual { tokens: 1, cost: None }).await.unwrap();
        } else {
            counters.release(r).await.unwrap();
        }
    }
    assert_eq!(cluster.calls_of("evalsha"), 2 * requests as u64);
    for (port, calls) in cluster.command_calls() {
        let sent: BTreeSet<&str> = calls.iter().map(|(c, _)| c.as_str()).collect();
        for c in &sent {
            assert!(crate::redis_counters::from_the_scripts(c), "{c} on {port}: {calls:?}");
        }
        let evalsha = calls.iter().find(|(c, _)| c == "evalsha").map_or(0, |(_, n)| *n);
        let node_groups = groups.iter().filter(|(_, n)| *n == port).count() as u64;
        assert_eq!(evalsha, node_groups * requests as u64, "{port}: {calls:?}");
    }

    // Every node forgets its scripts (a restart, a promoted replica): the
    // call is sent again with the script, to the same node only.
    assert!(cluster
        .on_every_node("SCRIPT FLUSH")
        .iter()
        .all(|a| a.as_deref() == Some("+OK")));
    assert!(cluster
        .on_every_node("CONFIG RESETSTAT")
        .iter()
        .all(|a| a.as_deref() == Some("+OK")));
    let (group, node) = &groups[0];
    let r = counters.admit(now, group, &budget_checks(group), demand).await.unwrap();
    counters.settle(r, Actual { tokens: 1, cost: None }).await.unwrap();
    for (port, calls) in cluster.command_calls() {
        let n = |name: &str| calls.iter().find(|(c, _)| c == name).map_or(0, |(_, n)| *n);
        if port == *node {
            assert_eq!((n("eval"), n("evalsha")), (1, 2), "{calls:?}");
        } else {
            assert_eq!(n("eval") + n("evalsha"), 0, "{port}: {calls:?}");
        }
        assert!(!calls.iter().any(|(c, _)| c.starts_with("script")), "{calls:?}");
    }

    // Status, reset, restore and forget (whose SCAN must go to the group's
    // node) on both nodes.
    for (group, node) in &groups {
        let id = format!("key:k-{group}");
        let limit = lid(&id);
        let s = counters.status(group, &limit, &rpm, now).await.unwrap();
        assert_eq!(s.consumed, 10);
        counters.reset(group, &limit, &rpm, now).await.unwrap();
        assert_eq!(counters.status(group, &limit, &rpm, now).await.unwrap().consumed, 0);
        counters.restore(group, &limit, &rpm, now, 7).await.unwrap();
        assert_eq!(counters.status(group, &limit, &rpm, now).await.unwrap().consumed, 7);
        let tag = format!("{PREFIX}{{{group}}}");
        assert!(!cluster.keys_on(*node, &format!("{tag}:*:{id}|*")).is_empty());
        counters.forget(group, &limit).await.unwrap();
        assert!(
            cluster.keys_on(*node, &format!("{tag}:*:{id}|*")).is_empty(),
            "{:?}",
            cluster.keys_on(*node, "*")
        );
        // The group's other limits are untouched.
        let s = counters.status(group, &lid(group), &tokens_budget, now).await.unwrap();
        assert!(s.consumed >= 40, "{s:?}");
    }

    // A master crashes: its group's calls fail fast while the other
    // master's group goes on. Back empty, with its slots, the same
    // connection reaches it again; its group is rebuilt before anyone is
    // admitted, and the script is sent again with the call.
    let ((g0, n0), (g1, _)) = (&groups[0], &groups[1]);
    cluster.kill(*n0);
    let started = std::time::Instant::now();
    match counters.admit(now, g0, &budget_checks(g0), demand).await {
        Err(AdmitError::Counter(CounterError::Unavailable(_))) => {}
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "{:?}",
        started.elapsed()
    );
    let r = counters.admit(now, g1, &budget_checks(g1), demand).await.unwrap();
    counters.settle(r, Actual { tokens: 1, cost: None }).await.unwrap();
    tokio::task::block_in_place(|| cluster.restart(*n0));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match counters.admit(now, g0, &budget_checks(g0), demand).await {
            Err(AdmitError::Counter(CounterError::NeedsRestore(g))) => {
                assert_eq!(&g, g0);
                break;
            }
            Err(AdmitError::Counter(CounterError::Unavailable(e))) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(counters.begin_restore(g0).await.unwrap(), RestoreTurn::Ours);
    counters
        .restore(g0, &lid(g0), &tokens_budget, now, 999_990)
        .await
        .unwrap();
    counters.restored(g0).await.unwrap();
    let refused = counters.admit(now, g0, &budget_checks(g0), demand).await;
    assert!(
        matches!(refused, Err(AdmitError::Refused(_))),
        "the rebuilt budget holds: {refused:?}"
    );
    let s = counters.status(g1, &lid(g1), &tokens_budget, now).await.unwrap();
    assert!(s.consumed >= 41, "the other master kept its counters: {s:?}");

    // Circuit breakers on the cluster too: 3 failures open the breaker for
    // both replicas.
    let (a, b) = (cluster_counters(&url).breakers(), cluster_counters(&url).breakers());
    let ms = now.timestamp_millis();
    for i in 0..3 {
        a.note("ws-1/openai", 3, 10_000, 30_000, ms + i, false).await;
    }
    assert!(b.is_open("ws-1/openai", ms + 10).await);
    b.note("ws-1/openai", 3, 10_000, 30_000, ms + 20, true).await;
    assert!(!a.is_open("ws-1/openai", ms + 30).await);

    // Readiness pings every master; a seed list without the cluster
    // setting is refused, naming it.
    let ready = tollgate_store::guards::ping_redis(&url, true, Duration::from_secs(1)).await;
    assert_eq!(ready, Ok(()));
    let e = tollgate_store::guards::ping_redis(&url, false, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(e.contains("redis_cluster"), "{e}");
    let mut one_seed = RedisSettings::new(url.clone(), LEASE);
    one_seed.key_prefix = PREFIX.into();
    assert!(
        RedisCounters::new(one_seed).is_err(),
        "several URLs need cluster = true"
    );
}
