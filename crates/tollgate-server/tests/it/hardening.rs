//! Hostile and absurd input at the gateway: model ids, token counts,
//! refusals' headers, unreachable or misbehaving upstreams, cancelled
//! requests, timeouts and large prompts.

use crate::gateway::{chat, setup, upstream, UPSTREAM_KEY};
use crate::support::App;
use axum::routing::post;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tollgate_testkit::control::Control;
use tollgate_testkit::openai::{self, OpenAiMock};
use tollgate_testkit::{Journal, MockServer};

/// Provisions `oai` to the setup's workspace with `limits` (rate_limits,
/// usage_limits).
async fn provision(s: &crate::gateway::Setup, limits: Value) {
    let mut entry = limits;
    entry["id"] = json!(s.ws);
    entry["enabled"] = json!(true);
    let r = s
        .app
        .put(
            "/v1/integrations/oai/workspaces",
            &s.app.admin_key,
            json!({"workspaces": [entry]}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

async fn logs(app: &App, key: &str) -> Vec<Value> {
    app.flush_logs().await;
    let r = app.get("/v1/logs?page_size=1000", key).await;
    r.body["data"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn hostile_model_ids_are_refused_before_anything_is_sent() {
    let s = setup().await;
    let long = format!("@oai/{}", "m".repeat(257));
    let huge = format!("@oai/{}", "m".repeat(1 << 20));
    for model in [
        long.as_str(),
        huge.as_str(),
        "@oai/gpt 4o",
        "@oai/gpt-4o\t",
        "@oai/gpt\u{0}4o",
        "@oai/caf\u{e9}",
        "@oai/line\nbreak",
        "@oai/\u{7f}",
    ] {
        let r = s.chat(model).await;
        assert_eq!(
            (r.status, r.error_type()),
            (400, "invalid_request_error"),
            "{model:.40}"
        );
        assert_eq!(r.body["error"]["param"], "model");
        assert!(
            r.body["error"]["message"].as_str().unwrap().len() < 300,
            "the id is not echoed"
        );
    }
    // The longest accepted id is sent (the mock knows no such model).
    let edge = format!("@oai/{}", "m".repeat(256));
    let r = s.chat(&edge).await;
    assert_ne!(r.status, 400, "{:?}", r.body);
    assert_eq!(s.mock.calls(), 1);
}

#[tokio::test]
async fn absurd_max_tokens_and_n_are_refused() {
    let s = setup().await;
    for (field, value) in [
        ("max_tokens", json!(u64::MAX)),
        ("max_tokens", json!(u64::MAX - 100)),
        ("max_tokens", json!(100_000_001u64)),
        ("max_tokens", json!(-1)),
        ("max_tokens", json!(1.5)),
        ("max_tokens", json!("10")),
        ("max_completion_tokens", json!(1u64 << 63)),
        ("n", json!(129)),
        ("n", json!(0)),
        ("n", json!(u64::MAX)),
    ] {
        let mut body = chat("@oai/gpt-4o");
        body[field] = value.clone();
        let r = s.send(body).await;
        assert_eq!(r.status, 400, "{field}={value}: {:?}", r.body);
        assert_eq!(r.body["error"]["param"], field);
    }
    assert_eq!(s.mock.calls(), 0);
    let mut body = chat("@oai/gpt-4o");
    body["max_tokens"] = json!(100_000_000u64);
    body["n"] = json!(128);
    assert_eq!(s.send(body).await.status, 200);
}

#[tokio::test]
async fn huge_max_tokens_cannot_walk_past_a_token_budget_or_a_token_rate_limit() {
    for (limits, refused) in [
        (json!({"usage_limits": {"type": "tokens", "credit_limit": 1000}}), 412),
        (
            json!({"rate_limits": {"type": "tokens", "unit": "rpm", "value": 1000}}),
            429,
        ),
    ] {
        let s = setup().await;
        provision(&s, limits).await;
        for field in ["max_tokens", "max_completion_tokens"] {
            for (max_tokens, n) in [(100_000_000u64, 128u64), (100_000_000, 1), (990, 2), (500, 3)] {
                let mut body = chat("@oai/gpt-4o");
                body[field] = json!(max_tokens);
                body["n"] = json!(n);
                let r = s.send(body).await;
                assert_eq!(r.status, refused, "{field}={max_tokens} × {n}: {:?}", r.body);
            }
        }
        assert_eq!(s.mock.calls(), 0, "nothing was admitted");
        let mut body = chat("@oai/gpt-4o");
        body["max_tokens"] = json!(100);
        assert_eq!(s.send(body).await.status, 200);
    }
}

#[tokio::test]
async fn absurd_usage_from_the_upstream_is_clamped() {
    let max = tollgate_core::token_usage::MAX_REQUEST_TOKENS;
    for (prompt, completion) in [(u64::MAX, u64::MAX), (i64::MAX as u64, i64::MAX as u64), (u64::MAX, 5)] {
        let s = setup().await;
        provision(
            &s,
            json!({"usage_limits": {"type": "tokens", "credit_limit": 1_000_000}}),
        )
        .await;
        s.control.set_usage(prompt, completion, prompt);
        let r = s.chat("@oai/gpt-4o").await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let recs = logs(&s.app, &s.key).await;
        let rec = &recs[0];
        assert_eq!(rec["usage"]["prompt_tokens"], max, "{rec}");
        assert_eq!(rec["usage"]["completion_tokens"], completion.min(max), "{rec}");
        assert_eq!(rec["usage"]["cached_tokens"], max, "{rec}");
        assert!(rec["cost_exact"].as_str().is_some(), "{rec}");
        // The budget is spent, not wrapped round.
        let r = s.chat("@oai/gpt-4o").await;
        assert_eq!(r.status, 412, "{:?}", r.body);
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("{} tokens of 1000000", max + completion.min(max))),
            "{message}"
        );
    }
}

fn ratelimit_headers(r: &crate::support::Resp, kind: &str) -> (String, String, String) {
    let h = |what: &str| {
        r.header(&format!("x-ratelimit-{what}-{kind}"))
            .unwrap_or_else(|| panic!("no x-ratelimit-{what}-{kind} on {}: {:?}", r.status, r.headers))
            .to_owned()
    };
    (h("limit"), h("remaining"), h("reset"))
}

/// A setup whose integration × workspace has `iw` limits and whose
/// workspace has a 100,000 tokens-per-minute rate limit.
async fn limited(iw: Value) -> crate::gateway::Setup {
    let s = setup().await;
    provision(&s, iw).await;
    let r = s
        .app
        .put(
            &format!("/v1/admin/workspaces/{}", s.ws),
            &s.app.admin_key,
            json!({"rate_limits": [{"type": "tokens", "unit": "rpm", "value": 100000}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    s
}

#[tokio::test]
async fn refusals_carry_the_rate_limit_headers() {
    // 429 from a request rate limit: both trios.
    let s = limited(json!({"rate_limits": {"type": "requests", "unit": "rpm", "value": 2}})).await;
    for _ in 0..2 {
        let ok = s.chat("@oai/gpt-4o").await;
        assert_eq!(ok.status, 200);
        assert_eq!(ratelimit_headers(&ok, "requests").0, "2");
        assert_eq!(ratelimit_headers(&ok, "tokens").0, "100000");
    }
    let r = s.chat("@oai/gpt-4o").await;
    assert_eq!(r.status, 429, "{:?}", r.body);
    let (limit, remaining, reset) = ratelimit_headers(&r, "requests");
    assert_eq!((limit.as_str(), remaining.as_str()), ("2", "0"));
    assert!(reset.ends_with('s') && reset != "0s", "{reset}");
    let (limit, remaining, _) = ratelimit_headers(&r, "tokens");
    assert_eq!(limit, "100000");
    assert!(remaining.parse::<u64>().unwrap() > 90_000, "{remaining}");
    assert!(r.header("retry-after").is_some());

    // 429 from a token rate limit: the request trio comes along.
    let s = limited(json!({"rate_limits": {"type": "requests", "unit": "rpm", "value": 1000}})).await;
    let mut big = chat("@oai/gpt-4o");
    big["max_tokens"] = json!(200_000);
    let r = s.send(big).await;
    assert_eq!(
        (r.status, r.error_type()),
        (429, "workspace_rate_limit_error"),
        "{:?}",
        r.body
    );
    assert_eq!(ratelimit_headers(&r, "tokens").0, "100000");
    assert_eq!(ratelimit_headers(&r, "tokens").1, "100000", "nothing was taken");
    assert_eq!(
        ratelimit_headers(&r, "requests"),
        ("1000".into(), "1000".into(), ratelimit_headers(&r, "requests").2)
    );

    // 412 from a budget: the rate limits that apply are reported too.
    let s = limited(
        json!({"rate_limits": {"type": "requests", "unit": "rpm", "value": 1000},
               "usage_limits": {"type": "tokens", "credit_limit": 100}}),
    )
    .await;
    let mut over = chat("@oai/gpt-4o");
    over["max_tokens"] = json!(500);
    let r = s.send(over).await;
    assert_eq!(r.status, 412, "{:?}", r.body);
    let (limit, remaining, reset) = ratelimit_headers(&r, "requests");
    assert_eq!((limit.as_str(), remaining.as_str()), ("1000", "1000"));
    assert!(reset.ends_with('s'));
    assert_eq!(ratelimit_headers(&r, "tokens").0, "100000");
}

/// Captures the server's log lines at warn and above in this test process
/// (nextest runs each test in a process of its own).
fn capture_warnings() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    #[derive(Clone)]
    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Sink(buf.clone());
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .try_init();
    buf
}

#[tokio::test]
async fn an_unreachable_upstream_is_named_with_its_cause() {
    let warnings = capture_warnings();
    let app = App::start().await;
    let ws = app.workspace("Dead").await;
    let l = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    app.openai_integration(
        "dead",
        &format!("http://{addr}/v1?key=SECRET-IN-QUERY"),
        UPSTREAM_KEY,
        &[&ws],
    )
    .await;
    let (_, key) = app.workspace_key(&ws, &["completions.write"]).await;
    for stream in [false, true] {
        let mut body = chat("@dead/gpt-4o");
        body["stream"] = json!(stream);
        let r = app.completion(&key, body).await;
        assert_eq!((r.status, r.error_type()), (502, "upstream_error"), "{:?}", r.body);
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(&addr.to_string()), "{message}");
        assert!(message.to_lowercase().contains("connection refused"), "{message}");
        assert!(
            !message.contains("SECRET") && !message.contains(UPSTREAM_KEY),
            "{message}"
        );
    }
    let log = String::from_utf8(warnings.lock().unwrap().clone()).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("upstream unreachable"))
        .unwrap_or_else(|| panic!("no warning in {log}"));
    assert!(line.contains("WARN") && line.contains(&addr.to_string()), "{line}");
    assert!(line.to_lowercase().contains("connection refused"), "{line}");
    assert!(!log.contains("SECRET") && !log.contains(UPSTREAM_KEY), "{log}");
}

#[tokio::test]
async fn a_200_that_is_not_json_is_a_502() {
    let app = App::start().await;
    let ws = app.workspace("Junk").await;
    let journal = Journal::default();
    let router = axum::Router::new().route(
        "/v1/chat/completions",
        post(|| async { ([("content-type", "application/json")], "<html>not json</html>") }),
    );
    let junk = MockServer::start(router, journal).await.unwrap();
    app.openai_integration("junk", &format!("{}/v1", junk.url()), UPSTREAM_KEY, &[&ws])
        .await;
    let (_, key) = app.workspace_key(&ws, &["completions.write", "logs.view"]).await;
    let r = app.completion(&key, chat("@junk/gpt-4o")).await;
    assert_eq!((r.status, r.error_type()), (502, "upstream_error"), "{:?}", r.body);
    let recs = logs(&app, &key).await;
    assert_eq!(recs[0]["status_code"], 502);
    // The upstream answered, so it billed the prompt: settled, estimated.
    assert_eq!(recs[0]["usage"]["estimated"], true, "{:?}", recs[0]);
    assert!(recs[0]["usage"]["prompt_tokens"].as_u64().unwrap() > 0, "{:?}", recs[0]);
}

#[tokio::test]
async fn the_client_timeout_cannot_exceed_the_servers() {
    let app = App::start_with(
        |c| c.request_timeout_ms = 300,
        std::sync::Arc::new(tollgate_core::clock::SystemClock),
    )
    .await;
    let control = Control::new();
    control.set_latency(Duration::from_secs(5));
    let mock = upstream(&control).await;
    let ws = app.workspace("T").await;
    app.openai_integration("oai", &openai::base_url(&mock), UPSTREAM_KEY, &[&ws])
        .await;
    let (_, key) = app.workspace_key(&ws, &["completions.write"]).await;
    let started = Instant::now();
    let r = app
        .chat_raw(&key, &[("x-portkey-request-timeout", "60000")], &chat("@oai/gpt-4o"))
        .await;
    assert_eq!(r.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_cancelled_whole_request_is_logged_as_499_and_settled_once() {
    let s = setup().await;
    provision(
        &s,
        json!({"usage_limits": {"type": "tokens", "credit_limit": 1_000_000}}),
    )
    .await;
    // A first request rebuilds the workspace's counters (with Redis it
    // first waits for every replica's request log), so that the one below
    // is cancelled while the upstream answers, not while it is admitted.
    s.control.set_usage(10, 10, 0);
    assert_eq!(s.send(chat("@oai/gpt-4o")).await.status, 200);
    s.control.set_latency(Duration::from_millis(1500));
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut body = chat("@oai/gpt-4o");
    body["max_tokens"] = json!(500_000);
    let gone = impatient
        .post(format!("{}/v1/chat/completions", s.app.url))
        .bearer_auth(&s.key)
        .header("x-portkey-trace-id", "gone-1")
        .json(&body)
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up");
    // The server notices the closed connection and closes the books.
    let mut rec = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(r) = logs(&s.app, &s.key)
            .await
            .into_iter()
            .find(|r| r["trace_id"] == "gone-1")
        {
            rec = Some(r);
            break;
        }
    }
    let rec = rec.expect("a record of the cancelled request");
    assert_eq!(rec["status_code"], 499, "{rec}");
    assert_eq!(rec["cancelled"], true);
    assert!(rec["usage"]["prompt_tokens"].as_u64().unwrap() > 0, "{rec}");
    assert_eq!(rec["usage"]["estimated"], true);

    // Settled once: the 500,000-token worst case was given back, and only
    // the prompt stays counted, so a request needing 999,000 still fits.
    s.control.set_latency(Duration::ZERO);
    s.control.set_usage(10, 10, 0);
    let mut body = chat("@oai/gpt-4o");
    body["max_tokens"] = json!(999_000);
    let r = s.send(body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let all = logs(&s.app, &s.key).await;
    assert_eq!(all.iter().filter(|r| r["trace_id"] == "gone-1").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_stays_responsive_while_large_prompts_are_counted() {
    // Only the server runs on this runtime; the mock upstream and the
    // clients sending the large prompts run on another, so that what is
    // measured is the server's own workers.
    let side = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = App::start().await;
    let control = Control::new();
    let mock_control = control.clone();
    let mock = side
        .spawn(async move {
            openai::start(OpenAiMock {
                api_key: Some(UPSTREAM_KEY.into()),
                control: mock_control,
            })
            .await
        })
        .await
        .unwrap()
        .unwrap();
    let ws = app.workspace("Big").await;
    app.openai_integration("oai", &openai::base_url(&mock), UPSTREAM_KEY, &[])
        .await;
    app.provision(
        "oai",
        json!([{"id": ws, "enabled": true, "usage_limits": {"type": "cost", "credit_limit": 1000}}]),
    )
    .await;
    let (_, key) = app.workspace_key(&ws, &["completions.write"]).await;
    // Varied words (about 700 KB), so that the tokenizer has real work.
    let words: String = (0..100_000).map(|i| format!("w{} ", i % 9973)).collect();
    let body = json!({"model": "@oai/gpt-4o", "messages": [{"role": "user", "content": words}]});
    let big: Vec<_> = (0..4)
        .map(|_| {
            let (key, url, body) = (key.clone(), app.url.clone(), body.clone());
            side.spawn(async move {
                reqwest::Client::new()
                    .post(format!("{url}/v1/chat/completions"))
                    .bearer_auth(key)
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    let http = reqwest::Client::new();
    let mut worst = Duration::ZERO;
    let mut probes = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !big.iter().all(|h| h.is_finished()) && Instant::now() < deadline {
        let t = Instant::now();
        let r = http.get(format!("{}/health", app.url)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        worst = worst.max(t.elapsed());
        probes += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for h in big {
        assert_eq!(h.await.unwrap().unwrap(), 200);
    }
    drop(mock);
    side.shutdown_background();
    assert!(probes > 3, "the prompts were counted too fast to measure anything");
    assert!(worst < Duration::from_millis(200), "/health took {worst:?}");
}
