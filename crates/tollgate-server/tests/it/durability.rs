//! The request log as the books of record: a client that has an answer finds
//! it in the log and analytics at once, a `kill -9` loses no usage a client
//! received, and nothing in the log can stop the server from starting.

use crate::gateway::{chat, setup, upstream, UPSTREAM_KEY};
use crate::support::{call_at, wire_up, Proc};
use serde_json::{json, Value};
use tollgate_testkit::control::Control;
use tollgate_testkit::openai;

#[tokio::test]
async fn the_log_and_analytics_show_every_answered_request_at_once() {
    let s = setup().await;
    let admin = s.app.admin_key.clone();
    // A whole answer, a stream and a refusal; the log is read right after
    // each, with no flush from the test.
    assert_eq!(s.chat("@oai/gpt-4o").await.status, 200);
    let r = s.app.get("/v1/logs?page_size=100", &admin).await;
    assert_eq!(r.body["total"], 1, "{:?}", r.body);
    let mut stream = chat("@oai/gpt-4o");
    stream["stream"] = json!(true);
    let text = s.app.chat_raw(&s.key, &[], &stream).await.text().await.unwrap();
    assert!(text.contains("[DONE]"), "{text}");
    let r = s.app.get("/v1/logs?page_size=100", &s.key).await;
    assert_eq!(r.body["total"], 2, "{:?}", r.body);
    assert_eq!(s.chat("@nope/gpt-4o").await.status, 404);
    let r = s.app.get("/v1/analytics/summary", &admin).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["data"]["requests"], 3, "{:?}", r.body);
    let r = s.app.get("/v1/analytics/graphs/requests", &admin).await;
    assert_eq!(r.body["summary"]["total"], 3, "{:?}", r.body);
    let r = s.app.get("/v1/logs?page_size=100", &admin).await;
    assert_eq!(r.body["total"], 3, "{:?}", r.body);
}

/// Sends one chat completion and reads the answer to its last byte:
/// (status, total tokens the answer reported).
async fn complete(url: &str, key: &str, stream: bool) -> (u16, u64) {
    let mut body = json!({"model": "@m/gpt-4o", "max_tokens": 30,
        "messages": [{"role": "user", "content": "hi"}]});
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.expect("whole body");
    if status != 200 {
        return (status, 0);
    }
    let tokens = if stream {
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| v["usage"]["total_tokens"].as_u64())
            .sum()
    } else {
        let v: Value = serde_json::from_str(&text).expect("json");
        v["usage"]["total_tokens"].as_u64().expect("usage")
    };
    (status, tokens)
}

/// The workspace budget's consumed tokens, as the server's counters hold them.
async fn consumed(url: &str, admin: &str) -> i64 {
    let (s, b) = call_at(url, reqwest::Method::GET, "/v1/analytics/summary", admin, None).await;
    assert_eq!(s, 200, "{b}");
    b["data"]["budgets"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["level"] == "workspace"))
        .and_then(|x| x["consumed"].as_i64())
        .unwrap_or_else(|| panic!("a workspace budget: {b}"))
}

async fn logged_tokens(url: &str, admin: &str) -> u64 {
    let (_, b) = call_at(url, reqwest::Method::GET, "/v1/logs?page_size=1000", admin, None).await;
    b["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["usage"]["total_tokens"].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_right_after_an_answer_loses_none_of_its_usage() {
    let control = Control::new();
    control.set_usage(10, 40, 0);
    let mock = upstream(&control).await;
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::serve(dir.path());
    let admin = p.first_key();
    let url = p.url.clone();
    let (ws, key) = wire_up(&url, &admin, UPSTREAM_KEY, &openai::base_url(&mock)).await;
    let (s, b) = call_at(
        &url,
        reqwest::Method::PUT,
        &format!("/v1/admin/workspaces/{ws}"),
        &admin,
        Some(json!({"usage_limits": [{"type": "tokens", "credit_limit": 1000}]})),
    )
    .await;
    assert_eq!(s, 200, "{b}");

    // Whole answers; killed the moment the tenth is read.
    let mut received = 0;
    for _ in 0..10 {
        let (s, t) = complete(&url, &key, false).await;
        assert_eq!(s, 200);
        received += t;
    }
    p.kill_9();
    assert_eq!(received, 500);
    let p = Proc::serve(dir.path());
    let url = p.url.clone();
    assert_eq!(
        logged_tokens(&url, &admin).await,
        received,
        "every answered request is in the log"
    );
    assert_eq!(
        consumed(&url, &admin).await,
        received as i64,
        "and in the rebuilt budget"
    );

    // Streams until the budget is used up; killed the moment the last
    // [DONE] is read, before anything else happens.
    for _ in 0..10 {
        let (s, t) = complete(&url, &key, true).await;
        assert_eq!(s, 200);
        received += t;
    }
    p.kill_9();
    assert_eq!(received, 1000);
    let p = Proc::serve(dir.path());
    let url = p.url.clone();
    assert_eq!(logged_tokens(&url, &admin).await, received);
    assert_eq!(consumed(&url, &admin).await, 1000);
    for stream in [false, true] {
        assert_eq!(
            complete(&url, &key, stream).await.0,
            412,
            "the budget is not handed out again"
        );
    }
    drop(p);
}

#[tokio::test]
async fn absurd_rows_in_the_log_never_stop_start_up_and_exhaust_the_limits() {
    let mut s = setup().await;
    let admin = s.app.admin_key.clone();
    let r = s
        .app
        .put(
            &format!("/v1/admin/workspaces/{}", s.ws),
            &admin,
            json!({"usage_limits": [{"type": "tokens", "credit_limit": 1000}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = s
        .app
        .post(
            "/v1/api-keys/workspace/service",
            &admin,
            json!({"workspace_id": s.ws, "usage_limits": {"type": "cost", "credit_limit": 5}}),
        )
        .await;
    let (key_id, key) = (
        r.body["id"].as_str().unwrap().to_owned(),
        r.body["key"].as_str().unwrap().to_owned(),
    );
    let mut body = chat("@oai/gpt-4o");
    body["max_tokens"] = json!(30);
    assert_eq!(s.app.completion(&key, body.clone()).await.status, 200);
    // What an upstream reporting absurd usage, or a damaged log, leaves
    // behind: sums far beyond i64, negative values, values that are not
    // integers.
    let now = chrono::Utc::now().timestamp_millis();
    let rows: [(&str, i64, Option<i64>); 4] = [
        ("req-absurd-1", i64::MAX, Some(i64::MAX)),
        ("req-absurd-2", i64::MAX, Some(i64::MAX)),
        ("req-absurd-3", -5, Some(-7)),
        ("req-absurd-4", i64::MAX / 2 + 1, None),
    ];
    let pool = s.app.state().store.sqlite_pool().unwrap().clone();
    for (id, tokens, cost) in rows {
        sqlx::query(
            "INSERT INTO usage_log (id, created_at_ms, trace_id, workspace_id, api_key_id, endpoint, status_code, \
             prompt_tokens, completion_tokens, total_tokens, cost_picos, latency_us) \
             VALUES ($1, $2, 't', $3, $4, 'chat.completions', 200, $5, $5, $5, $6, 1)",
        )
        .bind(id)
        .bind(now)
        .bind(&s.ws)
        .bind(&key_id)
        .bind(tokens)
        .bind(cost)
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO usage_log (id, created_at_ms, trace_id, workspace_id, api_key_id, endpoint, status_code, \
         total_tokens, cost_picos, latency_us) VALUES ('req-absurd-5', $1, 't', $2, $3, 'chat.completions', 200, \
         1e300, 'lots', 1)",
    )
    .bind(now)
    .bind(&s.ws)
    .bind(&key_id)
    .execute(&pool)
    .await
    .unwrap();
    s.app
        .restart(std::sync::Arc::new(tollgate_core::clock::SystemClock))
        .await;
    let r = s.app.completion(&key, body.clone()).await;
    assert_eq!(r.status, 412, "the limits are exhausted, not reset: {:?}", r.body);
    let r = s.send(body.clone()).await;
    assert_eq!(
        (r.status, r.error_type()),
        (412, "workspace_exhaust_error"),
        "{:?}",
        r.body
    );
    let r = s.app.get("/v1/analytics/summary", &admin).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let budgets = r.body["data"]["budgets"].as_array().unwrap();
    let ws_budget = budgets.iter().find(|b| b["level"] == "workspace").unwrap();
    assert_eq!(ws_budget["consumed"], json!(i64::MAX), "saturated: {ws_budget}");
    for path in [
        "/v1/logs?page_size=100",
        "/v1/analytics/graphs/tokens",
        "/v1/analytics/groups/ai-models",
    ] {
        let r = s.app.get(path, &admin).await;
        assert_eq!(r.status, 200, "{path}: {:?}", r.body);
    }
}
