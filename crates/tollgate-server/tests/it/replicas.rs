//! Several replicas on one PostgreSQL database: the same master key on
//! every one, no second replica without shared limit counters, and
//! `GET /health/ready`. Each test has its own database (created and
//! dropped) and its own Redis key prefix or private Redis server.

use reqwest::Method;
use std::sync::Arc;
use std::time::Duration;
use tollgate_core::clock::SystemClock;
use tollgate_server::cli;
use tollgate_server::config::Config;
use tollgate_server::server::{self, Running, StartError};
use tollgate_store::Location;
use tollgate_testkit::backend::RedisKeys;
use tollgate_testkit::redis_server::RedisServer;

use crate::postgres::{config, TestDb};
use crate::support::App;

/// A replica's settings: its own data directory, the shared database, and
/// the test's Redis key prefix if any.
fn replica(dir: &std::path::Path, url: &str, key: &str, redis: Option<&RedisKeys>) -> Config {
    let mut c = config(dir, url);
    c.master_key = Some(key.into());
    if let Some(r) = redis {
        c.redis_url = Some(r.url().into());
        c.redis_key_prefix = r.prefix().into();
    }
    c
}

async fn start(c: &Config) -> Result<Running, StartError> {
    server::start(c.clone(), Arc::new(SystemClock)).await
}

fn refused(r: Result<Running, StartError>) -> StartError {
    match r {
        Ok(_) => panic!("the replica started"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn every_replica_needs_the_master_key_the_database_was_sealed_with() {
    let db = TestDb::create().await;
    let redis = RedisKeys::new();
    let (d1, d2, d3) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let key = "22".repeat(32);
    let first = start(&replica(d1.path(), &db.url, &key, Some(&redis))).await.unwrap();

    // Another key: refused, naming the setting.
    let other = replica(d2.path(), &db.url, &"33".repeat(32), Some(&redis));
    let e = refused(start(&other).await);
    assert!(matches!(e, StartError::WrongMasterKey { .. }), "{e}");
    assert!(e.to_string().contains("TOLLGATE_MASTER_KEY"), "{e}");
    // So are the commands that open secrets.
    let e = cli::create_admin_key(other.clone(), "x".into()).await.unwrap_err();
    assert!(e.to_string().contains("does not match"), "{e}");
    let e = cli::rotate_master_key(other).await.unwrap_err();
    assert!(e.to_string().contains("does not match"), "{e}");
    // No key given: the replica's own new key file is another key too.
    let mut own_file = replica(d3.path(), &db.url, &key, Some(&redis));
    own_file.master_key = None;
    let e = refused(start(&own_file).await);
    assert!(matches!(e, StartError::WrongMasterKey { .. }), "{e}");

    // The same key: a second replica runs beside the first.
    let second = start(&replica(d2.path(), &db.url, &key, Some(&redis))).await.unwrap();
    second.stop().await.unwrap();

    // After a rotation, only the new key opens it; the verifier moved in
    // the rotation's transaction.
    first.stop().await.unwrap();
    let new_key = cli::rotate_master_key(replica(d1.path(), &db.url, &key, Some(&redis)))
        .await
        .unwrap()
        .expect("printed");
    let e = refused(start(&replica(d1.path(), &db.url, &key, Some(&redis))).await);
    assert!(matches!(e, StartError::WrongMasterKey { .. }), "{e}");
    let again = start(&replica(d1.path(), &db.url, &new_key, Some(&redis)))
        .await
        .unwrap();
    again.stop().await.unwrap();
    db.drop_db().await;
}

#[tokio::test]
async fn of_two_first_starts_with_different_keys_exactly_one_seals_the_database() {
    let db = TestDb::create().await;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = replica(d1.path(), &db.url, &"44".repeat(32), None);
    let b = replica(d2.path(), &db.url, &"55".repeat(32), None);
    let (ra, rb) = tokio::join!(server::open_store(&a), server::open_store(&b));
    let oks = [ra.is_ok(), rb.is_ok()];
    assert_eq!(oks.iter().filter(|ok| **ok).count(), 1, "{oks:?}");
    let e = ra.err().or(rb.err()).expect("one refused");
    assert!(matches!(e, StartError::WrongMasterKey { .. }), "{e}");
    db.drop_db().await;
}

#[tokio::test]
async fn a_second_replica_without_redis_url_refuses_to_start_naming_it() {
    let db = TestDb::create().await;
    let redis = RedisKeys::new();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let key = "22".repeat(32);
    let alone = start(&replica(dirs[0].path(), &db.url, &key, None)).await.unwrap();

    let e = refused(start(&replica(dirs[1].path(), &db.url, &key, None)).await);
    assert!(matches!(e, StartError::AnotherReplica), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("redis_url") && msg.contains("TOLLGATE_REDIS_URL"), "{msg}");
    // One with redis_url cannot join it either: the first counts alone.
    let e = refused(start(&replica(dirs[1].path(), &db.url, &key, Some(&redis))).await);
    assert!(matches!(e, StartError::ReplicaWithoutRedis), "{e}");
    assert!(e.to_string().contains("redis_url"), "{e}");

    // Once it stops (its connection closes), the lock is free again.
    alone.stop().await.unwrap();
    let next = start(&replica(dirs[1].path(), &db.url, &key, None)).await.unwrap();
    next.stop().await.unwrap();

    // With redis_url on every replica, any number run; then one without
    // is refused.
    let r1 = start(&replica(dirs[0].path(), &db.url, &key, Some(&redis)))
        .await
        .unwrap();
    let r2 = start(&replica(dirs[1].path(), &db.url, &key, Some(&redis)))
        .await
        .unwrap();
    let e = refused(start(&replica(dirs[2].path(), &db.url, &key, None)).await);
    assert!(matches!(e, StartError::AnotherReplica), "{e}");
    r1.stop().await.unwrap();
    r2.stop().await.unwrap();
    db.drop_db().await;
}

async fn ready(app: &App) -> crate::support::Resp {
    app.call(Method::GET, "/health/ready", None, None).await
}

#[tokio::test]
async fn ready_answers_503_naming_what_is_down() {
    let db = TestDb::create().await;
    let mut redis = RedisServer::start(false);
    let (url, redis_url) = (db.url.clone(), redis.url());
    let app = App::start_with(
        move |c| {
            c.database = Location::Postgres(url);
            c.redis_url = Some(redis_url.into());
        },
        Arc::new(SystemClock),
    )
    .await;
    let r = ready(&app).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["checks"]["database"]["status"], "up", "{:?}", r.body);
    assert_eq!(r.body["checks"]["redis"]["status"], "up", "{:?}", r.body);

    redis.kill();
    let started = std::time::Instant::now();
    let r = ready(&app).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded: {:?}",
        started.elapsed()
    );
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.body["down"], serde_json::json!(["redis"]), "{:?}", r.body);
    assert_eq!(r.body["checks"]["database"]["status"], "up", "{:?}", r.body);
    assert!(r.body["checks"]["redis"]["error"]
        .as_str()
        .is_some_and(|e| !e.is_empty()));
    // Liveness is not readiness.
    assert_eq!(app.call(Method::GET, "/health", None, None).await.status, 200);

    redis.restart();
    let r = ready(&app).await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // The database gone: named as down.
    let admin = sqlx::PgPool::connect(&format!("{}/postgres", crate::postgres::server()))
        .await
        .unwrap();
    let name = db.url.rsplit('/').next().unwrap().to_owned();
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let r = ready(&app).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.body["down"], serde_json::json!(["database"]), "{:?}", r.body);
    assert_eq!(r.body["checks"]["redis"]["status"], "up", "{:?}", r.body);
}

#[tokio::test]
async fn ready_without_redis_checks_only_the_database() {
    let app = App::start_with(|c| c.redis_url = None, Arc::new(SystemClock)).await;
    let r = ready(&app).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "ready");
    assert_eq!(r.body["checks"]["database"]["status"], "up", "{:?}", r.body);
    assert!(r.body["checks"].get("redis").is_none(), "{:?}", r.body);
}

/// The `tollgate_session` cookie a sign-in answer sets.
fn session_cookie(resp: &reqwest::Response) -> String {
    let set = resp.headers()["set-cookie"].to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_dashboard_session_works_on_every_replica_and_ends_on_all() {
    let db = TestDb::create().await;
    let redis = RedisKeys::new();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = "22".repeat(32);
    let a = start(&replica(d1.path(), &db.url, &key, Some(&redis))).await.unwrap();
    let b = start(&replica(d2.path(), &db.url, &key, Some(&redis))).await.unwrap();
    let admin = a.first_admin_key.clone().unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (url_a, url_b) = (format!("http://{}", a.addr), format!("http://{}", b.addr));

    let signed = http
        .post(format!("{url_a}/ui/sign-in"))
        .form(&[("api_key", admin.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 303);
    let cookie = session_cookie(&signed);
    let page = |url: String| {
        let (http, cookie) = (http.clone(), cookie.clone());
        async move {
            let r = http.get(url).header("cookie", cookie).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    // Replica B serves the session A made.
    let (status, body) = page(format!("{url_b}/ui/logs")).await;
    assert_eq!(status, 200, "{body}");
    let at = body.find("name=\"_csrf\" value=\"").expect("a CSRF field") + 20;
    let csrf = body[at..at + 64].to_owned();

    // Signing out through B ends it on A too.
    let out = http
        .post(format!("{url_b}/ui/sign-out"))
        .header("cookie", &cookie)
        .form(&[("_csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert_eq!(page(format!("{url_a}/ui/logs")).await.0, 303);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    db.drop_db().await;
}

/// Redis restarted empty just after replica B answered: replica A rebuilds
/// the counters from the request log, and B's answers are in it though B
/// writes its log in batches (A waits out `WRITTEN_WITHIN` first), so
/// nobody gets those requests again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_emptied_right_after_another_replica_answered_still_counts_its_answers() {
    use crate::gateway::{chat, upstream, UPSTREAM_KEY};
    use crate::support::call_at;
    use serde_json::json;
    use tollgate_testkit::control::Control;
    use tollgate_testkit::openai;

    let db = TestDb::create().await;
    let redis = RedisServer::start(false);
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = "44".repeat(32);
    // Redis of the test's own (it empties it), one prefix for both.
    let [ca, cb] = [d1.path(), d2.path()].map(|d| {
        let mut c = replica(d, &db.url, &key, None);
        c.redis_url = Some(redis.url().into());
        c.redis_key_prefix = "shared:".into();
        c
    });
    let a = start(&ca).await.unwrap();
    let b = start(&cb).await.unwrap();
    let admin = a.first_admin_key.clone().unwrap();
    let mock = upstream(&Control::new()).await;
    let (url_a, url_b) = (format!("http://{}", a.addr), format!("http://{}", b.addr));
    let integration = json!({"name": "oai", "slug": "oai", "ai_provider_id": "openai", "key": UPSTREAM_KEY,
        "configurations": {"custom_host": openai::base_url(&mock)}});
    let (s, body) = call_at(&url_a, Method::POST, "/v1/integrations", &admin, Some(integration)).await;
    assert_eq!(s, 200, "{body}");
    let (_, ws) = call_at(&url_a, Method::GET, "/v1/admin/workspaces/default", &admin, None).await;
    let ws = ws["id"].as_str().unwrap().to_owned();
    let provision = json!({"workspaces": [{"id": ws, "enabled": true,
        "rate_limits": [{"type": "requests", "unit": "rpd", "value": 5}]}]});
    let (s, body) = call_at(
        &url_a,
        Method::PUT,
        "/v1/integrations/oai/workspaces",
        &admin,
        Some(provision),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let (s, k) = call_at(
        &url_a,
        Method::POST,
        "/v1/api-keys/workspace/service",
        &admin,
        Some(json!({"workspace_id": ws})),
    )
    .await;
    assert_eq!(s, 200, "{k}");
    let wkey = k["key"].as_str().unwrap().to_owned();
    let send = |url: &str| {
        let (url, wkey) = (url.to_owned(), wkey.clone());
        async move {
            call_at(
                &url,
                Method::POST,
                "/v1/chat/completions",
                &wkey,
                Some(chat("@oai/gpt-4o")),
            )
            .await
        }
    };
    // B learns of the key (through NOTIFY) before it serves it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut first = send(&url_b).await;
    while first.0 == 401 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        first = send(&url_b).await;
    }
    assert_eq!(first.0, 200, "{}", first.1);
    for _ in 0..2 {
        let (s, body) = send(&url_b).await;
        assert_eq!(s, 200, "{body}");
    }
    // Redis loses everything the moment B has answered its third request.
    assert_eq!(redis.command("FLUSHALL").as_deref(), Some("+OK"));
    for i in 0..2 {
        let (s, body) = send(&url_a).await;
        assert_eq!(s, 200, "request {} of the day: {body}", 4 + i);
    }
    let (s, body) = send(&url_a).await;
    assert_eq!(s, 429, "the sixth request of the day: {body}");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    db.drop_db().await;
}
