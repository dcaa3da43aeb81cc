//! What only the Redis counters have: leases, key expiry, round trips, hash
//! tags, Redis going away and coming back empty. The behaviour they share
//! with the in-process counters is in `counters.rs`.

use crate::counters::{budget, check, keys, lid, rate, redis_counters, refusal, t, tokens, Store, G, LEASE};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_core::admission::{Actual, Demand};
use tollgate_core::limits::{BudgetKind, PeriodicReset, RateKind, RateUnit};
use tollgate_core::money::Money;
use tollgate_store::counters::{
    AdmitError, CounterError, Counters, OnRedisError, RedisCounters, RedisSettings, RestoreTurn,
};
use tollgate_testkit::backend::{redis_url, RedisKeys};
use tollgate_testkit::redis_server::RedisServer;
use tollgate_testkit::tcp_proxy::TcpProxy;

const NOW: &str = "2026-11-26T10:00:30Z";

fn pttl(key: &str) -> i64 {
    let mut conn = ::redis::Client::open(redis_url()).unwrap().get_connection().unwrap();
    ::redis::cmd("PTTL").arg(key).query(&mut conn).unwrap()
}

fn exists(key: &str) -> bool {
    let mut conn = ::redis::Client::open(redis_url()).unwrap().get_connection().unwrap();
    ::redis::cmd("EXISTS").arg(key).query::<i64>(&mut conn).unwrap() == 1
}

/// A counter's key (`c`: its hash, `l`: its leases).
fn redis_key(prefix: &str, kind: &str, id: &str, measure: &str, start: &str) -> String {
    format!("{prefix}{{{G}}}:{kind}:{id}|{measure}|{}", t(start).timestamp_micros())
}

/// A replica that dies holding a reservation (it is never settled, released
/// or dropped) holds its worst case only until the lease ends.
/// A command Redis counts for a client that only runs the counters' scripts:
/// `EVALSHA` itself, what the scripts call, and the test's own inspection
/// (`CONFIG`, `INFO`).
pub(crate) fn from_the_scripts(cmd: &str) -> bool {
    const SCRIPT_COMMANDS: [&str; 11] = [
        "exists",
        "get",
        "hget",
        "hmget",
        "hset",
        "hsetnx",
        "zadd",
        "zrem",
        "zrangebyscore",
        "zremrangebyscore",
        "pexpire",
    ];
    cmd == "evalsha" || cmd.starts_with("config") || cmd == "info" || SCRIPT_COMMANDS.contains(&cmd)
}

#[tokio::test]
async fn an_abandoned_reservation_is_given_back_when_its_lease_ends() {
    let store = Store::redis().await;
    let (url, prefix) = (store.redis_keys().url(), store.redis_keys().prefix());
    let lease = Duration::from_secs(60);
    let crashed: Arc<dyn Counters> = Arc::new(redis_counters(url, prefix, lease));
    let now = t(NOW);
    let rule = budget(BudgetKind::Tokens, 1_000, None, None);
    let checks = [check("key:lease", rule)];
    std::mem::forget(crashed.admit(now, G, &checks, tokens(600)).await.unwrap());

    let almost = now + chrono::Duration::milliseconds(59_999);
    refusal(store.admit(almost, &checks, tokens(500)).await.unwrap_err());
    assert_eq!(store.status("key:lease", &rule, almost).await.reserved, 600);

    let ended = now + chrono::Duration::seconds(60);
    assert_eq!(store.status("key:lease", &rule, ended).await.reserved, 0);
    let r = store.admit(ended, &checks, tokens(500)).await.unwrap();
    assert_eq!(store.status("key:lease", &rule, ended).await.reserved, 500);
    store.settle(r, 400, None).await;
    let s = store.status("key:lease", &rule, ended).await;
    assert_eq!((s.consumed, s.reserved), (400, 0));
}

/// Counters of windows that end expire a minute after the end; a budget
/// that never resets does not; a settlement after its counter expired does
/// not bring it back without an expiry.
#[tokio::test]
async fn ended_windows_expire() {
    let store = Store::redis().await;
    let (url, prefix) = (store.redis_keys().url(), store.redis_keys().prefix());
    let now = t(NOW);
    let rpm = rate(RateKind::Requests, RateUnit::Rpm, 100);
    let tpm = rate(RateKind::Tokens, RateUnit::Rpm, 100_000);
    let monthly = budget(BudgetKind::Tokens, 100_000, None, Some(PeriodicReset::Monthly));
    let forever = budget(BudgetKind::Tokens, 100_000, None, None);
    let checks = [
        check("ws:ttl", rpm),
        check("ws:ttl", tpm),
        check("ws:ttl", monthly),
        check("ws:ttl", forever),
    ];
    let r = store.admit(now, &checks, tokens(10)).await.unwrap();
    let counter = |measure: &str, start: &str| redis_key(prefix, "c", "ws:ttl", measure, start);
    let leases = |measure: &str, start: &str| redis_key(prefix, "l", "ws:ttl", measure, start);
    // 30 s to the end of the minute, and a minute's grace.
    let minute = 90_000;
    for k in [
        counter("requests.rpm", "2026-11-26T10:00:00Z"),
        counter("tokens.rpm", "2026-11-26T10:00:00Z"),
        leases("tokens.rpm", "2026-11-26T10:00:00Z"),
    ] {
        let ms = pttl(&k);
        assert!(ms > minute - 5_000 && ms <= minute, "{k}: {ms}");
    }
    // To the 1st of December, and a minute.
    let month = (t("2026-12-01T00:00:00Z") - now).num_milliseconds() + 60_000;
    for k in [
        counter("budget.tokens", "2026-11-01T00:00:00Z"),
        leases("budget.tokens", "2026-11-01T00:00:00Z"),
    ] {
        let ms = pttl(&k);
        assert!(ms > month - 5_000 && ms <= month, "{k}: {ms}");
    }
    let forever_key = counter("budget.tokens", "2026-01-01T00:00:00Z");
    assert_eq!(pttl(&forever_key), -1, "a budget without reset keeps its counter");
    assert_eq!(
        keys(url, &format!("{prefix}*")).len(),
        1 + 4 + 3,
        "epoch, 4 counters, 3 lease sets"
    );

    // The minute's counters expire (here: by hand) while the request runs.
    let gone = counter("tokens.rpm", "2026-11-26T10:00:00Z");
    let mut conn = ::redis::Client::open(url).unwrap().get_connection().unwrap();
    let _: () = ::redis::cmd("DEL")
        .arg(&gone)
        .arg(leases("tokens.rpm", "2026-11-26T10:00:00Z"))
        .query(&mut conn)
        .unwrap();
    store.settle(r, 8, None).await;
    assert!(
        !exists(&gone),
        "settling into an expired counter does not bring it back"
    );
    assert_eq!(store.status("ws:ttl", &forever, now).await.consumed, 8);
    // Restoring sets the expiry too.
    store
        .counters
        .restore(G, &lid("ws:restored"), &rpm, now, 3)
        .await
        .unwrap();
    let restored = redis_key(prefix, "c", "ws:restored", "requests.rpm", "2026-11-26T10:00:00Z");
    let ms = pttl(&restored);
    assert!(ms > minute - 5_000 && ms <= minute, "{restored}: {ms}");
}

/// A group Redis holds nothing for answers "rebuild first"; one caller
/// rebuilds at a time; once rebuilt, admission goes on.
#[tokio::test]
async fn a_group_redis_never_saw_must_be_rebuilt_first() {
    let store = Store::redis().await;
    let (url, prefix) = (store.redis_keys().url(), store.redis_keys().prefix());
    let a = redis_counters(url, prefix, LEASE);
    let b = redis_counters(url, prefix, LEASE);
    let now = t(NOW);
    let rule = rate(RateKind::Requests, RateUnit::Rpm, 10);
    let checks = [check("ws:new", rule)];
    match a.admit(now, "ws:new", &checks, Demand::default()).await {
        Err(AdmitError::Counter(CounterError::NeedsRestore(g))) => assert_eq!(g, "ws:new"),
        other => panic!("{other:?}"),
    }
    assert_eq!(a.begin_restore("ws:new").await.unwrap(), RestoreTurn::Ours);
    assert_eq!(b.begin_restore("ws:new").await.unwrap(), RestoreTurn::Theirs);
    a.restore("ws:new", &lid("ws:new"), &rule, now, 9).await.unwrap();
    a.restored("ws:new").await.unwrap();
    assert_eq!(b.begin_restore("ws:new").await.unwrap(), RestoreTurn::Done);
    assert!(
        keys(url, &format!("{prefix}{{ws:new}}:restoring")).is_empty(),
        "the lock is gone"
    );
    let r = b.admit(now, "ws:new", &checks, Demand::default()).await.unwrap();
    assert_eq!(r.headers().requests.map(|f| f.remaining), Some(0));
    refusal(b.admit(now, "ws:new", &checks, Demand::default()).await.unwrap_err());
    // Other groups were not touched, and a group with braces is refused.
    store.admit(now, &checks, Demand::default()).await.unwrap();
    assert!(matches!(
        a.admit(now, "ws:{x}", &checks, Demand::default()).await,
        Err(AdmitError::Counter(CounterError::InvalidGroup(_)))
    ));
}

/// Counters rebuilt on one Redis server are not trusted on another: a
/// replica promoted by a failover may have missed its master's last writes,
/// and a server restarted from a snapshot what came after it. The epoch
/// holds the server's run_id; another server's makes admission ask for the
/// rebuild, as an empty Redis does.
#[tokio::test]
async fn counters_rebuilt_on_another_redis_server_must_be_rebuilt_again() {
    let server = RedisServer::start(false);
    let prefix = "failover:";
    let a = redis_counters(&server.url(), prefix, LEASE);
    let now = t(NOW);
    let rule = rate(RateKind::Requests, RateUnit::Rpm, 10);
    let checks = [check("ws:f", rule)];
    assert_eq!(a.begin_restore("ws:f").await.unwrap(), RestoreTurn::Ours);
    a.restored("ws:f").await.unwrap();
    a.admit(now, "ws:f", &checks, Demand::default()).await.unwrap();
    let epoch = format!("{prefix}{{ws:f}}:epoch");
    let run_id = server.info("INFO server");
    let run_id = run_id.lines().find_map(|l| l.strip_prefix("run_id:")).unwrap();
    assert_eq!(server.info(&format!("GET {epoch}")), run_id);

    // What a replica holds that was rebuilt on its old master.
    assert_eq!(
        server.command(&format!("SET {epoch} 0123456789abcdef")).as_deref(),
        Some("+OK")
    );
    match a.admit(now, "ws:f", &checks, Demand::default()).await {
        Err(AdmitError::Counter(CounterError::NeedsRestore(g))) => assert_eq!(g, "ws:f"),
        other => panic!("{other:?}"),
    }
    assert_eq!(a.begin_restore("ws:f").await.unwrap(), RestoreTurn::Ours);
    a.restore("ws:f", &lid("ws:f"), &rule, now, 10).await.unwrap();
    a.restored("ws:f").await.unwrap();
    refusal(a.admit(now, "ws:f", &checks, Demand::default()).await.unwrap_err());

    // A rebuild that outlives its lock is still marked on the server it
    // began on.
    assert_eq!(server.command(&format!("DEL {epoch}")).as_deref(), Some(":1"));
    assert_eq!(a.begin_restore("ws:f").await.unwrap(), RestoreTurn::Ours);
    let lock = format!("{prefix}{{ws:f}}:restoring");
    assert_eq!(server.command(&format!("DEL {lock}")).as_deref(), Some(":1"));
    a.restored("ws:f").await.unwrap();
    assert_eq!(server.info(&format!("GET {epoch}")), run_id);

    // One that began on another server is not marked done: the next
    // admission asks again. The failover in the middle of the rebuild moves
    // the address the counters use (a proxy) to another server.
    let other = RedisServer::start(false);
    let address = TcpProxy::start(server.addr()).await.unwrap();
    let b = redis_counters(&format!("redis://{}", address.addr), prefix, LEASE);
    server.command(&format!("DEL {epoch}"));
    assert_eq!(b.begin_restore("ws:f").await.unwrap(), RestoreTurn::Ours);
    address.retarget(other.addr());
    address.cut().await;
    address.restore().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = b.restored("ws:f").await {
        assert!(Instant::now() < deadline, "{e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        other.info(&format!("GET {epoch}")).is_empty(),
        "not marked on the new server"
    );
    assert!(matches!(
        b.admit(now, "ws:f", &checks, Demand::default()).await,
        Err(AdmitError::Counter(CounterError::NeedsRestore(_)))
    ));
}

/// A Redis that does not tell its run_id (`INFO` renamed away, as some
/// hardened or managed servers have it) still counts: the epoch then only
/// says whether the counters were rebuilt, as before there was a run_id.
#[tokio::test]
async fn a_redis_without_info_still_counts() {
    let server = RedisServer::start_with(false, &["--rename-command", "INFO", ""]);
    assert!(server.command("INFO server").is_some_and(|a| a.starts_with("-ERR")));
    let a = redis_counters(&server.url(), "noinfo:", LEASE);
    let now = t(NOW);
    let rule = rate(RateKind::Requests, RateUnit::Rpm, 2);
    let checks = [check("ws:n", rule)];
    assert!(matches!(
        a.admit(now, "ws:n", &checks, Demand::default()).await,
        Err(AdmitError::Counter(CounterError::NeedsRestore(_)))
    ));
    assert_eq!(a.begin_restore("ws:n").await.unwrap(), RestoreTurn::Ours);
    a.restore("ws:n", &lid("ws:n"), &rule, now, 1).await.unwrap();
    a.restored("ws:n").await.unwrap();
    assert_eq!(a.begin_restore("ws:n").await.unwrap(), RestoreTurn::Done);
    a.admit(now, "ws:n", &checks, Demand::default()).await.unwrap();
    refusal(a.admit(now, "ws:n", &checks, Demand::default()).await.unwrap_err());
}

/// One request costs two round trips: the admission's script and the
/// settlement's (or release's). Counted by Redis itself, on a one-node
/// Redis Cluster, which also refuses any call whose keys span two slots.
#[tokio::test]
async fn two_round_trips_per_request_all_keys_in_one_slot() {
    let server = RedisServer::start(true);
    assert!(
        server
            .command("EVAL \"return 1\" 2 {a}x {b}y")
            .is_some_and(|a| a.starts_with("-CROSSSLOT")),
        "the node refuses keys in two slots"
    );
    let store = Store::on(RedisKeys::on(&server.url())).await;
    let prefix = store.redis_keys().prefix();
    let now = t(NOW);
    let rules = [
        budget(BudgetKind::Cost, 1_000_000_000_000_000, Some(1), None),
        budget(BudgetKind::Tokens, 1_000_000, None, Some(PeriodicReset::Weekly)),
        rate(RateKind::Requests, RateUnit::Rpm, 1_000),
        rate(RateKind::Tokens, RateUnit::Rph, 1_000_000),
    ];
    let checks = [
        check("iw:int:ws", rules[0]),
        check("prv:p", rules[1]),
        check("key:k", rules[2]),
        check("ws:test", rules[3]),
    ];
    let demand = Demand {
        tokens: 100,
        cost: Money(1_000),
    };
    // Warm up: the script is loaded once.
    let r = store.admit(now, &checks, demand).await.unwrap();
    store.settle(r, 50, Some(Money(500))).await;
    assert_eq!(server.command("CONFIG RESETSTAT").as_deref(), Some("+OK"));

    let requests = 10;
    for i in 0..requests {
        let r = store.admit(now, &checks, demand).await.unwrap();
        if i % 2 == 0 {
            store.settle(r, 50, Some(Money(500))).await;
        } else {
            store.counters.release(r).await.unwrap();
        }
    }
    let calls = server.command_calls();
    let evalsha = calls.iter().find(|(c, _)| c == "evalsha").map_or(0, |(_, n)| *n);
    assert_eq!(evalsha, 2 * requests, "{calls:?}");
    // Nothing else came from the client: every other command is one the script runs.
    for (cmd, _) in &calls {
        assert!(from_the_scripts(cmd), "{cmd} in {calls:?}");
    }
    // And the scripts run few: admission reads each counter once (`HMGET`,
    // and `ZRANGEBYSCORE` for the three that hold reservations), writes it
    // once (`HSET`), adds the three reservations (`ZADD`, and `PEXPIRE` for
    // the two whose window ends), after `GET` of the epoch: 17, and `INFO`
    // for the server's run_id, which the epoch must match. Settling or
    // releasing the three reservations: `HMGET`, `ZREM`, `HSET` each: 9.
    let run: u64 = calls
        .iter()
        .filter(|(c, _)| c != "evalsha" && !c.starts_with("config") && c != "info")
        .map(|(_, n)| *n)
        .sum();
    assert_eq!(run, (17 + 9) * requests, "{calls:?}");
    // (Redis counts a command once it has run: the `INFO commandstats` that
    // read these is not among them.)
    let info = calls.iter().find(|(c, _)| c == "info").map_or(0, |(_, n)| *n);
    assert_eq!(info, requests, "{calls:?}");
    assert!(
        !calls.iter().any(|(c, _)| c == "eval" || c.starts_with("script")),
        "{calls:?}"
    );

    // Every other operation works on the cluster too, and every key carries the group's tag.
    store.counters.status(G, &lid("prv:p"), &rules[1], now).await.unwrap();
    store.counters.reset(G, &lid("prv:p"), &rules[1], now).await.unwrap();
    store
        .counters
        .restore(G, &lid("key:k"), &rules[2], now, 5)
        .await
        .unwrap();
    store.counters.forget(G, &lid("iw:int:ws")).await.unwrap();
    let found = keys(&server.url(), "*");
    assert!(!found.is_empty());
    for k in &found {
        assert!(k.starts_with(&format!("{prefix}{{{G}}}:")), "{k}");
    }
    assert!(!found.iter().any(|k| k.contains("iw:int:ws")), "forgotten: {found:?}");
}

/// Redis goes away: admission fails within the timeout (closed) or admits
/// without limits (open), and recovers by itself when Redis is back. Back
/// empty, it asks for the rebuild before admitting anyone.
#[tokio::test]
async fn redis_down_fails_fast_then_recovers_empty() {
    let mut server = RedisServer::start(false);
    let closed = Store::on(RedisKeys::on(&server.url())).await;
    let prefix = closed.redis_keys().prefix();
    let mut settings = RedisSettings::new(server.url(), LEASE);
    settings.key_prefix = prefix.into();
    settings.on_error = OnRedisError::Open;
    let open = RedisCounters::new(settings).unwrap();
    let now = t(NOW);
    let rule = rate(RateKind::Requests, RateUnit::Rpm, 3);
    let checks = [check("ws:test", rule)];
    closed.admit(now, &checks, Demand::default()).await.unwrap();
    open.admit(now, G, &checks, Demand::default()).await.unwrap();

    server.kill();
    for _ in 0..3 {
        let started = Instant::now();
        match closed.admit(now, &checks, Demand::default()).await {
            Err(AdmitError::Counter(CounterError::Unavailable(_))) => {}
            other => panic!("{other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_millis(1_500),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(matches!(
        closed.counters.status(G, &lid("ws:test"), &rule, now).await,
        Err(CounterError::Unavailable(_))
    ));
    // Open: admitted, with nothing to settle; far past the limit.
    for _ in 0..5 {
        let r = open.admit(now, G, &checks, Demand::default()).await.unwrap();
        assert!(open.settle(r, Actual::default()).await.unwrap().is_empty());
    }

    // Back, empty: no restart of ours, the connection comes back.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match closed.admit(now, &checks, Demand::default()).await {
            Err(AdmitError::Counter(CounterError::NeedsRestore(_))) => break,
            Err(AdmitError::Counter(CounterError::Unavailable(e))) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("{other:?}"),
        }
    }
    // Open does not skip the rebuild either: nobody gets a fresh budget.
    assert!(matches!(
        open.admit(now, G, &checks, Demand::default()).await,
        Err(AdmitError::Counter(CounterError::NeedsRestore(_)))
    ));
    assert_eq!(closed.counters.begin_restore(G).await.unwrap(), RestoreTurn::Ours);
    assert_eq!(open.begin_restore(G).await.unwrap(), RestoreTurn::Theirs);
    // The log says 2 requests were admitted this minute.
    closed
        .counters
        .restore(G, &lid("ws:test"), &rule, now, 2)
        .await
        .unwrap();
    closed.counters.restored(G).await.unwrap();
    let r = closed.admit(now, &checks, Demand::default()).await.unwrap();
    assert_eq!(r.headers().requests.map(|f| f.remaining), Some(0));
    refusal(open.admit(now, G, &checks, Demand::default()).await.unwrap_err());
}
