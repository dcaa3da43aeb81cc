//! Routing configs through the whole server: fallback (on upstream 5xx,
//! timeouts, budget and rate-limit refusals, across protocols), retries
//! against a mock that fails a set number of times, load balancing, saved
//! and default configs, plain model names, streams, and the log of every
//! attempt.

use crate::gateway::{chat, upstream, UPSTREAM_KEY};
use crate::support::{App, Resp};
use futures::future::join_all;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tollgate_testkit::control::Control;
use tollgate_testkit::openai;
use tollgate_testkit::{anthropic, MockServer};

const ANTHROPIC_KEY: &str = "sk-ant-routing-key";

struct R {
    app: App,
    a: MockServer,
    ca: Control,
    b: MockServer,
    cb: Control,
    claude: MockServer,
    ws: String,
    key: String,
}

/// A workspace with two OpenAI-compatible integrations (`a`, `b`) and an
/// Anthropic one (`claude`), and a key that may manage configs.
async fn setup() -> R {
    setup_on(App::start().await).await
}

async fn setup_on(app: App) -> R {
    let (ca, cb) = (Control::new(), Control::new());
    let a = upstream(&ca).await;
    let b = upstream(&cb).await;
    let claude = anthropic::start(anthropic::AnthropicMock {
        api_key: ANTHROPIC_KEY.into(),
        control: Control::new(),
    })
    .await
    .unwrap();
    let ws = app.workspace("Routing").await;
    app.openai_integration("a", &openai::base_url(&a), UPSTREAM_KEY, &[&ws])
        .await;
    app.openai_integration("b", &openai::base_url(&b), UPSTREAM_KEY, &[&ws])
        .await;
    app.integration(
        "anthropic",
        "claude",
        ANTHROPIC_KEY,
        json!({"custom_host": anthropic::base_url(&claude)}),
        &[&ws],
    )
    .await;
    let key = app
        .workspace_key(&ws, &["completions.write", "logs.view", "configs.*"])
        .await
        .1;
    R {
        app,
        a,
        ca,
        b,
        cb,
        claude,
        ws,
        key,
    }
}

impl R {
    async fn send(&self, config: &Value, body: &Value) -> Resp {
        self.send_with(&[("x-portkey-config", &config.to_string())], body).await
    }

    async fn send_with(&self, headers: &[(&str, &str)], body: &Value) -> Resp {
        let resp = self.app.chat_raw(&self.key, headers, body).await;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Resp { status, headers, body }
    }

    /// Every attempt logged under `trace`, oldest first.
    async fn attempts(&self, trace: &str, n: usize) -> Vec<Value> {
        for _ in 0..100 {
            self.app.flush_logs().await;
            let logs = self.app.get(&format!("/v1/logs?trace_id={trace}"), &self.key).await;
            if logs.body["total"].as_u64() == Some(n as u64) {
                let mut v = logs.body["data"].as_array().unwrap().clone();
                v.sort_by_key(|r| r["attempt"].as_u64());
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("expected {n} attempts for {trace}");
    }
}

fn trace(r: &Resp) -> String {
    r.header("x-portkey-trace-id").unwrap().to_owned()
}

#[tokio::test]
async fn a_failing_primary_falls_back_to_another_protocol_and_every_attempt_is_logged() {
    let s = setup().await;
    s.ca.fail(503, "overloaded");
    let config = json!({"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "@a"},
        {"provider": "@claude", "override_params": {"model": "claude-sonnet-4-5"}},
    ]});
    let r = s.send(&config, &chat("gpt-4o")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["object"], "chat.completion");
    assert_eq!(r.header("x-portkey-last-used-option-index"), Some("config.targets[1]"));
    assert_eq!(r.header("x-portkey-retry-attempt-count"), Some("0"));
    assert_eq!(s.a.calls(), 1);
    assert_eq!(s.claude.calls(), 1);
    assert_eq!(s.claude.journal.last().unwrap().json()["model"], "claude-sonnet-4-5");
    let log = s.attempts(&trace(&r), 2).await;
    assert_eq!(log[0]["provider"], "a");
    assert_eq!(log[0]["status_code"], 502);
    assert_eq!(log[0]["target"], "config.targets[0]");
    assert_eq!(log[0]["is_final_attempt"], false);
    assert_eq!(log[0]["cost"], Value::Null, "a failed attempt costs nothing");
    assert_eq!(log[1]["provider"], "claude");
    assert_eq!(log[1]["status_code"], 200);
    assert_eq!(log[1]["target"], "config.targets[1]");
    assert_eq!(log[1]["attempt"], 1);
    assert_eq!(log[1]["is_final_attempt"], true);
    assert!(log[1]["cost"].as_f64().unwrap() > 0.0);

    // Analytics counts the request once and its attempts separately.
    let a = s
        .app
        .get("/v1/analytics/summary?time_of_generation_min=2000-01-01T00:00:00Z&time_of_generation_max=2100-01-01T00:00:00Z", &s.app.admin_key)
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["data"]["requests"], 1, "{:?}", a.body);
    assert_eq!(a.body["data"]["attempts"], 2);
    assert_eq!(a.body["data"]["successful_requests"], 1);
}

#[tokio::test]
async fn on_status_codes_limit_which_failures_move_on() {
    let s = setup().await;
    s.ca.fail(400, "bad request");
    let config = json!({"strategy": {"mode": "fallback", "on_status_codes": [429, 503]},
        "targets": [{"provider": "@a"}, {"provider": "@b"}]});
    let r = s.send(&config, &chat("gpt-4o")).await;
    assert_eq!(r.status, 400, "a 400 is not in on_status_codes: {:?}", r.body);
    assert_eq!(r.header("x-portkey-last-used-option-index"), Some("config.targets[0]"));
    assert_eq!(s.b.calls(), 0);
    let log = s.attempts(&trace(&r), 1).await;
    assert_eq!(log[0]["is_final_attempt"], true);
    // Without on_status_codes any non-2xx moves on.
    let config = json!({"strategy": {"mode": "fallback"}, "targets": [{"provider": "@a"}, {"provider": "@b"}]});
    assert_eq!(s.send(&config, &chat("gpt-4o")).await.status, 200);
    assert_eq!(s.b.calls(), 1);
}

#[tokio::test]
async fn retries_count_against_a_mock_that_fails_twice() {
    let s = setup().await;
    s.ca.fail_times(2, 503, "busy");
    let config = json!({"provider": "@a", "retry": {"attempts": 3}});
    let started = Instant::now();
    let r = s.send(&config, &chat("gpt-4o")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-portkey-retry-attempt-count"), Some("2"));
    assert_eq!(r.header("x-portkey-last-used-option-index"), Some("config"));
    assert_eq!(s.a.calls(), 3);
    // Backoff: at least half of 100 ms, then half of 200 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    let log = s.attempts(&trace(&r), 3).await;
    let retries: Vec<u64> = log.iter().map(|l| l["retry_attempt"].as_u64().unwrap()).collect();
    assert_eq!(retries, vec![0, 1, 2]);
    let finals: Vec<bool> = log.iter().map(|l| l["is_final_attempt"].as_bool().unwrap()).collect();
    assert_eq!(finals, vec![false, false, true]);

    // Attempts run out: the last failure is the answer.
    s.ca.fail_times(5, 503, "busy");
    let r = s
        .send(&json!({"provider": "@a", "retry": {"attempts": 1}}), &chat("gpt-4o"))
        .await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-portkey-retry-attempt-count"), Some("1"));
    assert_eq!(s.a.calls(), 5);
    // A status outside on_status_codes is not retried.
    s.ca.fail_times(5, 500, "boom");
    let r = s
        .send(
            &json!({"provider": "@a", "retry": {"attempts": 3, "on_status_codes": [429]}}),
            &chat("gpt-4o"),
        )
        .await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-portkey-retry-attempt-count"), Some("0"));
    assert_eq!(s.a.calls(), 6);
}

#[tokio::test]
async fn a_timed_out_target_falls_back() {
    let s = setup().await;
    s.ca.set_latency(Duration::from_secs(3));
    let config = json!({"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "@a", "request_timeout": 200}, {"provider": "@b"}]});
    let started = Instant::now();
    let r = s.send(&config, &chat("gpt-4o")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(r.header("x-portkey-last-used-option-index"), Some("config.targets[1]"));
    let log = s.attempts(&trace(&r), 2).await;
    assert_eq!(log[0]["error_type"], "timeout_error");
}

#[tokio::test]
async fn budget_and_rate_limit_refusals_degrade_to_the_next_target() {
    let s = setup().await;
    // `a` may take no requests at all in this workspace; `b` has a budget
    // far too small for any request.
    let r = s
        .app
        .put(
            "/v1/integrations/a/workspaces",
            &s.app.admin_key,
            json!({"workspaces": [{"id": s.ws, "enabled": true, "rate_limits": {"type": "requests", "unit": "rpm", "value": 0}}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = s
        .app
        .put(
            "/v1/integrations/b/workspaces",
            &s.app.admin_key,
            json!({"workspaces": [{"id": s.ws, "enabled": true, "usage_limits": {"type": "tokens", "credit_limit": 100}}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let config = json!({"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "@a"}, {"provider": "@b"},
        {"provider": "@claude", "override_params": {"model": "claude-sonnet-4-5"}}]});
    let r = s.send(&config, &chat("gpt-4o")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-portkey-last-used-option-index"), Some("config.targets[2]"));
    assert_eq!(s.a.calls() + s.b.calls(), 0, "refused attempts never reach a provider");
    let log = s.attempts(&trace(&r), 3).await;
    assert_eq!(log[0]["status_code"], 429);
    assert_eq!(log[0]["refusal"], "rate_limit");
    assert_eq!(log[1]["status_code"], 412);
    assert_eq!(log[1]["refusal"], "budget");
    assert_eq!(log[2]["status_code"], 200);
    // A refusal outside on_status_codes is the answer.
    let config = json!({"strategy": {"mode": "fallback", "on_status_codes": [429]}, "targets": [
        {"provider": "@b"}, {"provider": "@a"}]});
    let r = s.send(&config, &chat("gpt-4o")).await;
    assert_eq!(r.status, 412);
    assert_eq!(r.body["error"]["type"], "integration_exhaust_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budgets_hold_across_fallbacks_under_concurrency() {
    let s = setup().await;
    // `a`: gpt-4o at $0.30 per 1,000 output tokens, with a $1 budget.
    let r = s
        .app
        .put("/v1/integrations/a/models", &s.app.admin_key, json!({"models": [{"slug": "gpt-4o", "enabled": true,
            "pricing_config": {"type": "static", "pay_as_you_go": {"request_token": {"price": 0}, "response_token": {"price": 0.03}}}}]}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = s
        .app
        .put(
            "/v1/integrations/a/workspaces",
            &s.app.admin_key,
            json!({"workspaces": [{"id": s.ws, "enabled": true, "usage_limits": {"type": "cost", "credit_limit": 1}}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    s.ca.set_usage(10, 1000, 0);
    s.cb.set_usage(10, 1000, 0);
    let mut body = chat("gpt-4o");
    body["max_tokens"] = json!(1000);
    let config = json!({"strategy": {"mode": "fallback"}, "targets": [{"provider": "@a"}, {"provider": "@b"}]});
    let rs = join_all((0..40).map(|_| s.send(&config, &body))).await;
    assert!(rs.iter().all(|r| r.status == 200));
    let on_a = rs
        .iter()
        .filter(|r| r.header("x-portkey-last-used-option-index") == Some("config.targets[0]"))
        .count();
    assert_eq!(on_a, 3, "exactly three $0.30 answers fit a $1 budget");
    assert_eq!(s.a.calls(), 3);
    assert_eq!(s.b.calls(), 37);
    s.app.flush_logs().await;
    let logs = s.app.get("/v1/logs?provider=a&page_size=1000", &s.key).await;
    let spent: Vec<&str> = logs.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["cost_exact"].as_str())
        .collect();
    assert_eq!(spent, vec!["0.3"; 3]);
}

#[tokio::test]
async fn streams_fall_back_only_before_the_first_byte() {
    let s = setup().await;
    let mut body = chat("gpt-4o");
    body["stream"] = json!(true);
    let config = json!({"strategy": {"mode": "fallback"}, "targets": [{"provider": "@a"}, {"provider": "@b"}]});
    s.ca.fail(503, "overloaded");
    let resp = s
        .app
        .chat_raw(&s.key, &[("x-portkey-config", &config.to_string())], &body)
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-portkey-last-used-option-index"].to_str().unwrap(),
        "config.targets[1]"
    );
    let text = resp.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert_eq!(s.b.calls(), 1);
    // Once bytes have reached the client, a failure ends the stream.
    s.ca.succeed();
    s.ca.cut_stream(true);
    let resp = s
        .app
        .chat_raw(&s.key, &[("x-portkey-config", &config.to_string())], &body)
        .await;
    assert_eq!(resp.status(), 200);
    let trace = resp.headers()["x-portkey-trace-id"].to_str().unwrap().to_owned();
    let text = resp.text().await.unwrap();
    assert!(text.contains("\"error\""), "{text}");
    assert_eq!(s.b.calls(), 1, "no fallback after the first byte");
    let log = s.attempts(&trace, 1).await;
    assert_eq!(log[0]["is_final_attempt"], true);
    assert!(
        log[0]["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "what was sent is settled"
    );
}

#[tokio::test]
async fn load_balancing_follows_the_weights_and_sticks_to_a_key() {
    let s = setup().await;
    let config = json!({"strategy": {"mode": "loadbalance"}, "targets": [
        {"provider": "@a", "weight": 0.75}, {"provider": "@b", "weight": 0.25}, {"provider": "@claude", "weight": 0}]});
    let header = config.to_string();
    let body = chat("gpt-4o");
    for _ in 0..8 {
        join_all((0..50).map(|_| s.send(&config, &body))).await;
    }
    let share = s.a.calls() as f64 / 400.0;
    assert!((share - 0.75).abs() < 0.1, "a took {share}");
    assert_eq!(s.a.calls() + s.b.calls(), 400);
    assert_eq!(s.claude.calls(), 0, "weight 0 is never chosen");
    // Sticky: the same key always lands on the same target.
    let (a0, b0) = (s.a.calls(), s.b.calls());
    for _ in 0..20 {
        let r = s
            .send_with(
                &[("x-portkey-config", &header), ("x-portkey-sticky-key", "user-42")],
                &chat("gpt-4o"),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    assert!(s.a.calls() - a0 == 20 || s.b.calls() - b0 == 20);
    // And by the request's `user`.
    let (a0, b0) = (s.a.calls(), s.b.calls());
    let mut body = chat("gpt-4o");
    body["user"] = json!("someone@example.com");
    for _ in 0..20 {
        assert_eq!(s.send(&config, &body).await.status, 200);
    }
    assert!(s.a.calls() - a0 == 20 || s.b.calls() - b0 == 20);
}

#[tokio::test]
async fn a_circuit_breaker_skips_a_failing_target_for_its_cool_down() {
    let s = setup().await;
    s.ca.fail(503, "down");
    let config = json!({"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "@a", "circuit_breaker": {"failures": 2, "window_ms": 60000, "cooldown_ms": 60000}},
        {"provider": "@b"}]});
    for _ in 0..5 {
        assert_eq!(s.send(&config, &chat("gpt-4o")).await.status, 200);
    }
    assert_eq!(s.a.calls(), 2, "skipped once open");
    assert_eq!(s.b.calls(), 5);
}

/// With `redis_url`, breakers live in Redis: another replica (here a
/// `RedisBreakers` on the same Redis and prefix) sees what this gateway
/// opened, and this gateway skips what the other replica opened.
#[tokio::test]
async fn circuit_breakers_in_redis_are_shared_with_other_replicas() {
    let redis = tollgate_testkit::backend::RedisKeys::new();
    let (clock, shared) = crate::support::manual_clock("2026-11-26T10:00:30Z");
    let s = setup_on(
        App::start_with(
            |c| {
                c.redis_url = Some(redis.url().to_owned().into());
                c.redis_key_prefix = redis.prefix().to_owned();
            },
            shared,
        )
        .await,
    )
    .await;
    let mut settings = tollgate_store::counters::RedisSettings::new(redis.url(), Duration::from_secs(600));
    settings.key_prefix = redis.prefix().to_owned();
    let other = tollgate_store::counters::RedisCounters::new(settings)
        .unwrap()
        .breakers();
    let now_ms = || tollgate_core::Clock::now(&clock).timestamp_millis();
    let (key_a, key_b) = (format!("{}/a", s.ws), format!("{}/b", s.ws));

    s.ca.fail(503, "down");
    let cb = json!({"failures": 2, "window_ms": 60000, "cooldown_ms": 60000});
    let config = json!({"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "@a", "circuit_breaker": cb}, {"provider": "@b"}]});
    for _ in 0..3 {
        assert_eq!(s.send(&config, &chat("gpt-4o")).await.status, 200);
    }
    assert_eq!((s.a.calls(), s.b.calls()), (2, 3));
    assert!(other.is_open(&key_a, now_ms()).await, "the other replica sees it open");

    // The cool-down ends by the gateway's clock; a success closes it everywhere.
    clock.advance(chrono::Duration::milliseconds(60_000));
    assert!(!other.is_open(&key_a, now_ms()).await);
    s.ca.succeed();
    assert_eq!(s.send(&config, &chat("gpt-4o")).await.status, 200);
    assert_eq!((s.a.calls(), s.b.calls()), (3, 3));

    // Failures noted by the other replica open a breaker this gateway obeys.
    other.note(&key_b, 2, 60_000, 60_000, now_ms(), false).await;
    other.note(&key_b, 2, 60_000, 60_000, now_ms(), false).await;
    let config = json!({"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "@b", "circuit_breaker": cb}, {"provider": "@a"}]});
    assert_eq!(s.send(&config, &chat("gpt-4o")).await.status, 200);
    assert_eq!((s.a.calls(), s.b.calls()), (4, 3), "b skipped");
}

#[tokio::test]
async fn invalid_configs_are_refused_naming_the_field() {
    let s = setup().await;
    let bad =
        json!({"strategy": {"mode": "fallback"}, "targets": [{"provider": "@a"}, {"provider": "@b", "weight": -1}]});
    let r = s.send(&bad, &chat("gpt-4o")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["param"], "targets[1].weight");
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("targets[1].weight"));
    let r = s
        .send(&json!({"retry": {"attempts": 9}, "provider": "@a"}), &chat("gpt-4o"))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["param"], "retry.attempts");
    let r = s.send_with(&[("x-portkey-config", "{not json")], &chat("gpt-4o")).await;
    assert_eq!(r.status, 400);
    let r = s
        .send_with(&[("x-portkey-config", "pc-nope-000000")], &chat("gpt-4o"))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("pc-nope-000000"));
    // A target naming an unknown provider is a failure like any other.
    let r = s
        .send(
            &json!({"strategy": {"mode": "fallback"}, "targets": [{"provider": "@ghost"}, {"provider": "@b"}]}),
            &chat("gpt-4o"),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(s.a.calls() + s.b.calls(), 1);
}

#[tokio::test]
async fn saved_configs_by_id_with_versions_and_scopes() {
    let s = setup().await;
    let fallback = json!({"strategy": {"mode": "fallback"}, "targets": [{"provider": "@a"}, {"provider": "@b"}]});
    // A workspace key saves one for its workspace; the admin one for the organisation.
    let r = s
        .app
        .post(
            "/v1/configs",
            &s.key,
            json!({"name": "Prod fallback", "config": fallback}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let slug = r.body["slug"].as_str().unwrap().to_owned();
    assert!(slug.starts_with("pc-"), "{slug}");
    assert!(r.body["version_id"].is_string());
    let org = s
        .app
        .post(
            "/v1/configs",
            &s.app.admin_key,
            json!({"name": "org", "config": {"provider": "@b"}}),
        )
        .await;
    assert_eq!(org.status, 200);
    let org_slug = org.body["slug"].as_str().unwrap().to_owned();
    let other_ws = s.app.workspace("Other").await;
    let other = s
        .app
        .post(
            "/v1/configs",
            &s.app.admin_key,
            json!({"name": "other", "config": {"provider": "@b"}, "workspace_id": other_ws}),
        )
        .await;
    let other_slug = other.body["slug"].as_str().unwrap().to_owned();
    let list = s.app.get("/v1/configs", &s.key).await;
    assert_eq!(list.body["total"], 2, "its own and the organisation's: {:?}", list.body);
    assert_eq!(
        s.app.get(&format!("/v1/configs/{other_slug}"), &s.key).await.status,
        404
    );
    assert_eq!(s.app.get("/v1/configs", &s.app.admin_key).await.body["total"], 3);
    let got = s.app.get(&format!("/v1/configs/{slug}"), &s.key).await;
    assert_eq!(got.body["config"], fallback);
    assert_eq!(got.body["workspace_id"], s.ws);
    // A workspace key cannot change the organisation's config.
    let r = s
        .app
        .put(&format!("/v1/configs/{org_slug}"), &s.key, json!({"name": "x"}))
        .await;
    assert_eq!(r.status, 403);

    // Used by id.
    s.ca.fail(500, "boom");
    let r = s.send_with(&[("x-portkey-config", &slug)], &chat("gpt-4o")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-portkey-last-used-option-index"), Some("config.targets[1]"));
    assert_eq!(
        s.send_with(&[("x-portkey-config", &other_slug)], &chat("gpt-4o"))
            .await
            .status,
        400,
        "another workspace's config is not visible"
    );

    // Updates keep every version; invalid ones are refused with the field.
    let r = s
        .app
        .put(
            &format!("/v1/configs/{slug}"),
            &s.key,
            json!({"config": {"strategy": {"mode": "fallback"}, "targets": [{"provider": "@b"}]}}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = s
        .app
        .put(
            &format!("/v1/configs/{slug}"),
            &s.key,
            json!({"config": {"strategy": {"mode": "fallback"}, "targets": [{"provider": "@b", "weight": "x"}]}}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap_or(&r.body.to_string())
            .contains("config.targets[0].weight"),
        "{:?}",
        r.body
    );
    let versions = s.app.get(&format!("/v1/configs/{slug}/versions"), &s.key).await;
    assert_eq!(versions.body["total"], 2);
    assert_eq!(versions.body["data"][1]["config"], fallback);
    let calls = s.a.calls();
    let r = s.send_with(&[("x-portkey-config", &slug)], &chat("gpt-4o")).await;
    assert_eq!(r.header("x-portkey-last-used-option-index"), Some("config.targets[0]"));
    assert_eq!(s.a.calls(), calls, "the new version goes to b only");

    // A config in use as a default cannot be deleted; otherwise it can.
    let r = s
        .app
        .put(
            &format!("/v1/admin/workspaces/{}", s.ws),
            &s.app.admin_key,
            json!({"default_config": slug}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(s.app.delete(&format!("/v1/configs/{slug}"), &s.key).await.status, 409);
    let r = s
        .app
        .put(
            &format!("/v1/admin/workspaces/{}", s.ws),
            &s.app.admin_key,
            json!({"default_config": null}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(s.app.delete(&format!("/v1/configs/{slug}"), &s.key).await.status, 200);
    assert_eq!(s.app.get(&format!("/v1/configs/{slug}"), &s.key).await.status, 404);
    let audit = s.app.get("/v1/audit-logs?object_type=config", &s.app.admin_key).await;
    assert!(audit.body["total"].as_u64().unwrap() >= 5, "{:?}", audit.body);
}

#[tokio::test]
async fn default_configs_let_clients_send_plain_model_names() {
    let s = setup().await;
    // Without a default, a plain name names no provider.
    assert_eq!(s.send_with(&[], &chat("gpt-4o")).await.status, 404);
    let r = s
        .app
        .put(
            &format!("/v1/admin/workspaces/{}", s.ws),
            &s.app.admin_key,
            json!({"default_config": {"provider": "@a"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["default_config"]["provider"], "@a");
    let r = s.send_with(&[], &chat("gpt-4o")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(s.a.calls(), 1);
    assert_eq!(s.a.journal.last().unwrap().json()["model"], "gpt-4o");
    // x-portkey-provider and @slug/ still name the provider themselves.
    assert_eq!(
        s.send_with(&[("x-portkey-provider", "@b")], &chat("gpt-4o"))
            .await
            .status,
        200
    );
    assert_eq!(s.send_with(&[], &chat("@b/gpt-4o")).await.status, 200);
    assert_eq!(s.b.calls(), 2);
    // A key's default comes before the workspace's.
    let r = s
        .app
        .post(
            "/v1/api-keys/workspace/service",
            &s.app.admin_key,
            json!({"name": "k2", "workspace_id": s.ws, "scopes": ["completions.write"],
                   "default_config": {"strategy": {"mode": "fallback"}, "targets": [{"provider": "@b"}]}}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let key2 = r.body["key"].as_str().unwrap().to_owned();
    let resp = s.app.chat_raw(&key2, &[], &chat("gpt-4o")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(s.b.calls(), 3);
    // Bad defaults are refused when set.
    let r = s
        .app
        .put(
            &format!("/v1/admin/workspaces/{}", s.ws),
            &s.app.admin_key,
            json!({"default_config": "pc-missing-000000"}),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = s
        .app
        .put(
            &format!("/v1/admin/workspaces/{}", s.ws),
            &s.app.admin_key,
            json!({"default_config": {"retry": {"attempts": 7}}}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body.to_string().contains("default_config.retry.attempts"),
        "{:?}",
        r.body
    );
}

#[tokio::test]
async fn retries_wait_what_the_upstream_asks_for() {
    let s = setup().await;
    s.ca.set_retry_after_ms(Some(600));
    s.ca.fail_times(1, 429, "slow down");
    let started = Instant::now();
    let r = s
        .send(&json!({"provider": "@a", "retry": {"attempts": 1}}), &chat("gpt-4o"))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(r.header("x-portkey-retry-attempt-count"), Some("1"));
    // Told not to, it backs off instead (at most 100 ms for the first retry).
    s.ca.fail_times(1, 429, "slow down");
    let started = Instant::now();
    let r = s
        .send(
            &json!({"provider": "@a", "retry": {"attempts": 1, "use_retry_after_headers": false}}),
            &chat("gpt-4o"),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    // A wait beyond the 60 s cap ends the retries with the upstream's answer.
    s.ca.set_retry_after_ms(Some(61_000));
    s.ca.fail_times(1, 429, "slow down");
    let r = s
        .send(&json!({"provider": "@a", "retry": {"attempts": 1}}), &chat("gpt-4o"))
        .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-portkey-retry-attempt-count"), Some("0"));
}

#[tokio::test]
async fn a_retry_after_http_date_is_waited_out_against_the_gateways_clock() {
    // The gateway's clock stands at 2030-01-01T00:00:00Z; the real one does
    // not, so only a wait read against the injected clock lasts a second.
    let (_clock, shared) = crate::support::manual_clock("2030-01-01T00:00:00Z");
    let s = setup_on(App::start_with(|_| {}, shared).await).await;
    let retry = json!({"provider": "@a", "retry": {"attempts": 1}});
    s.ca.set_retry_after(Some("Tue, 01 Jan 2030 00:00:01 GMT"));
    s.ca.fail_times(1, 429, "slow down");
    let started = Instant::now();
    let r = s.send(&retry, &chat("gpt-4o")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-portkey-retry-attempt-count"), Some("1"));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1_000), "{took:?}");
    // A date already past (RFC 850 form): the retry goes at once.
    s.ca.set_retry_after(Some("Monday, 31-Dec-29 23:59:00 GMT"));
    s.ca.fail_times(1, 503, "busy");
    let started = Instant::now();
    let r = s.send(&retry, &chat("gpt-4o")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-portkey-retry-attempt-count"), Some("1"));
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    // A date beyond the 60 s cap ends the retries with the upstream's answer.
    s.ca.set_retry_after(Some("Tue, 01 Jan 2030 00:05:00 GMT"));
    s.ca.fail_times(1, 429, "slow down");
    let r = s.send(&retry, &chat("gpt-4o")).await;
    assert_eq!(r.status, 429, "{:?}", r.body);
    assert_eq!(r.header("x-portkey-retry-attempt-count"), Some("0"));
    // A value that is neither seconds nor a date is ignored: backoff.
    s.ca.set_retry_after(Some("whenever"));
    s.ca.fail_times(1, 429, "slow down");
    let started = Instant::now();
    let r = s.send(&retry, &chat("gpt-4o")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}
