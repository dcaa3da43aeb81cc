//! The data plane through the OpenAI-compatible mock: whole and streamed
//! answers, resolution, access, policy, upstream failures, the request log.

use crate::support::{App, Resp};
use serde_json::{json, Value};
use tollgate_testkit::control::Control;
use tollgate_testkit::openai::{self, OpenAiMock};
use tollgate_testkit::MockServer;

pub const UPSTREAM_KEY: &str = "sk-upstream-0123456789abcdef";

pub struct Setup {
    pub app: App,
    pub mock: MockServer,
    pub control: Control,
    pub ws: String,
    pub key: String,
}

/// A server, an OpenAI mock, a workspace with the integration `oai`
/// provisioned, and a workspace key.
pub async fn setup() -> Setup {
    setup_on(App::start().await, "GW", true).await
}

/// An OpenAI mock that wants [`UPSTREAM_KEY`], steered by `control`.
pub async fn upstream(control: &Control) -> MockServer {
    openai::start(OpenAiMock {
        api_key: Some(UPSTREAM_KEY.into()),
        control: control.clone(),
    })
    .await
    .unwrap()
}

/// On `app`: an OpenAI mock, a workspace `ws_name`, the integration `oai`
/// (provisioned to the workspace if `provision`), and a workspace key that
/// may write completions and view logs.
pub async fn setup_on(app: App, ws_name: &str, provision: bool) -> Setup {
    let control = Control::new();
    let mock = upstream(&control).await;
    let ws = app.workspace(ws_name).await;
    let to: &[&str] = if provision { &[&ws] } else { &[] };
    app.openai_integration("oai", &openai::base_url(&mock), UPSTREAM_KEY, to)
        .await;
    let (_, key) = app.workspace_key(&ws, &["completions.write", "logs.view"]).await;
    Setup {
        app,
        mock,
        control,
        ws,
        key,
    }
}

impl Setup {
    /// A chat completion for `model` as the workspace key.
    pub async fn chat(&self, model: &str) -> Resp {
        self.send(chat(model)).await
    }

    /// POSTs `body` to the chat completions endpoint as the workspace key.
    pub async fn send(&self, body: Value) -> Resp {
        self.app.completion(&self.key, body).await
    }
}

pub fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]})
}

#[tokio::test]
async fn whole_chat_completion_through_the_mock() {
    let s = setup().await;
    s.control.set_usage(12, 7, 0);
    let r = s
        .app
        .call(reqwest::Method::POST, "/v1/chat/completions", None, None)
        .await;
    assert_eq!((r.status, r.error_type()), (401, "authentication_error"));
    let r = s
        .app
        .chat_raw(
            &s.key,
            &[
                ("x-portkey-trace-id", "trace-abc"),
                ("x-portkey-metadata", r#"{"team":"search"}"#),
            ],
            &chat("@oai/gpt-4o"),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-portkey-trace-id"], "trace-abc");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["usage"]["prompt_tokens"], 12);
    // The upstream saw the model without the prefix, and the upstream key.
    let seen = s.mock.journal.last().unwrap();
    assert_eq!(seen.json()["model"], "gpt-4o");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );
    assert!(
        seen.header("x-portkey-api-key").is_none(),
        "client headers are not forwarded"
    );
    s.app.flush_logs().await;
    let logs = s.app.get("/v1/logs?trace_id=trace-abc", &s.key).await;
    assert_eq!(logs.body["total"], 1, "{:?}", logs.body);
    let rec = &logs.body["data"][0];
    assert_eq!(rec["status_code"], 200);
    assert_eq!(rec["usage"]["prompt_tokens"], 12);
    assert_eq!(rec["usage"]["completion_tokens"], 7);
    assert_eq!(rec["provider"], "oai");
    assert_eq!(rec["model"], "gpt-4o");
    assert_eq!(rec["metadata"]["team"], "search");
    assert!(rec["latency_ms"].as_f64().unwrap() > 0.0);
    // gpt-4o's shipped price: 12 × $2.50/M + 7 × $10/M.
    assert_eq!(rec["cost_exact"], "0.0001");
    let by_meta = s.app.get(r#"/v1/logs?metadata={"team":"search"}"#, &s.key).await;
    assert_eq!(by_meta.body["total"], 1);
    let none = s.app.get(r#"/v1/logs?metadata={"team":"other"}"#, &s.key).await;
    assert_eq!(none.body["total"], 0);
}

#[tokio::test]
async fn streaming_is_relayed_and_logged_with_time_to_first_token() {
    let s = setup().await;
    s.control.set_usage(5, 9, 0);
    let mut body = chat("@oai/gpt-4o");
    body["stream"] = json!(true);
    let r = s.app.chat_raw(&s.key, &[], &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let trace = r.headers()["x-portkey-trace-id"].to_str().unwrap().to_owned();
    let text = r.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    // The client did not ask for usage: no usage-only chunk is relayed.
    assert!(!text.contains("\"usage\":{"), "{text}");
    let upstream = s.mock.journal.last().unwrap().json();
    assert_eq!(
        upstream["stream_options"]["include_usage"], true,
        "usage is asked for upstream"
    );
    s.app.flush_logs().await;
    let logs = s.app.get(&format!("/v1/logs?trace_id={trace}"), &s.key).await;
    let rec = &logs.body["data"][0];
    assert_eq!(rec["streamed"], true);
    assert_eq!(rec["usage"]["completion_tokens"], 9);
    assert_eq!(rec["usage"]["estimated"], false);
    assert!(rec["time_to_first_token_ms"].as_f64().is_some());

    // Asking for usage relays it.
    body["stream_options"] = json!({"include_usage": true});
    let text = s.app.chat_raw(&s.key, &[], &body).await.text().await.unwrap();
    assert!(text.contains("\"usage\":{"), "{text}");
}

#[tokio::test]
async fn completions_embeddings_and_models() {
    let s = setup().await;
    let r = s
        .app
        .post(
            "/v1/completions",
            &s.key,
            json!({"model": "@oai/gpt-3.5-turbo-instruct", "prompt": "say hi"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = s
        .app
        .post(
            "/v1/embeddings",
            &s.key,
            json!({"model": "@oai/text-embedding-3-small", "input": ["a", "b"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["data"].as_array().unwrap().len(), 2);
    let models = s.app.get("/v1/models", &s.key).await;
    let ids: Vec<&str> = models.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"@oai/gpt-4o"), "{ids:?}");
    assert!(ids.iter().all(|i| i.starts_with("@oai/")));
}

#[tokio::test]
async fn resolution_and_access_errors() {
    let s = setup().await;
    let other = s.app.workspace("Other").await;
    let (_, other_key) = s.app.workspace_key(&other, &["completions.write"]).await;
    let (_, no_scope) = s.app.workspace_key(&s.ws, &["logs.view"]).await;
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (&s.key, chat("@nope/gpt-4o"), 404, "not_found_error"),
        (&s.key, chat("gpt-4o"), 404, "not_found_error"),
        (&other_key, chat("@oai/gpt-4o"), 403, "permission_error"),
        (&no_scope, chat("@oai/gpt-4o"), 403, "permission_error"),
        (&s.app.admin_key, chat("@oai/gpt-4o"), 403, "permission_error"),
        (&s.key, json!({"model": "@oai/gpt-4o"}), 400, "invalid_request_error"),
        (
            &s.key,
            json!({"model": "@oai/gpt-4o", "messages": [], "stream": "yes"}),
            400,
            "invalid_request_error",
        ),
        (
            &s.key,
            json!({"model": "@oai/gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}),
            400,
            "invalid_request_error",
        ),
    ];
    for (key, body, status, kind) in cases {
        let r = s.app.completion(key, body.clone()).await;
        assert_eq!((r.status, r.error_type()), (status, kind), "{body}: {:?}", r.body);
        assert!(r.header("x-portkey-trace-id").is_some());
        assert!(r.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let r = s
        .app
        .http
        .post(format!("{}/v1/chat/completions", s.app.url))
        .bearer_auth(&s.key)
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // The header form resolves too.
    let r = s
        .app
        .chat_raw(&s.key, &[("x-portkey-provider", "@oai")], &chat("gpt-4o"))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(s.mock.calls(), 1, "refused requests never reach the upstream");
}

#[tokio::test]
async fn revoked_key_fails_on_the_very_next_request() {
    let s = setup().await;
    let (id, key) = s.app.workspace_key(&s.ws, &["completions.write"]).await;
    assert_eq!(s.app.completion(&key, chat("@oai/gpt-4o")).await.status, 200);
    assert_eq!(
        s.app
            .delete(&format!("/v1/api-keys/{id}"), &s.app.admin_key)
            .await
            .status,
        200
    );
    let r = s.app.completion(&key, chat("@oai/gpt-4o")).await;
    assert_eq!((r.status, r.error_type()), (401, "authentication_error"));
}

#[tokio::test]
async fn upstream_failures_map_to_gateway_errors() {
    let s = setup().await;
    s.control.fail(429, "Rate limit reached for gpt-4o");
    let r = s.chat("@oai/gpt-4o").await;
    assert_eq!(r.status, 429);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Rate limit reached"),
        "{:?}",
        r.body
    );
    s.control.fail(500, "boom");
    let r = s.chat("@oai/gpt-4o").await;
    assert_eq!((r.status, r.error_type()), (502, "upstream_error"));
    s.control.succeed();
    s.control.set_latency(std::time::Duration::from_millis(500));
    let r = s
        .app
        .chat_raw(&s.key, &[("x-portkey-request-timeout", "50")], &chat("@oai/gpt-4o"))
        .await;
    assert_eq!(r.status(), 504);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "timeout_error");
    // An unreachable upstream.
    s.app
        .openai_integration("dead", "http://127.0.0.1:9", "k", &[&s.ws])
        .await;
    let r = s.chat("@dead/gpt-4o").await;
    assert_eq!((r.status, r.error_type()), (502, "upstream_error"));
    s.app.flush_logs().await;
    let logs = s.app.get("/v1/logs?status_code=502", &s.app.admin_key).await;
    assert_eq!(logs.body["total"], 2);
}

#[tokio::test]
async fn a_cut_stream_is_settled_from_the_tokenizer() {
    let s = setup().await;
    s.control.cut_stream(true);
    let mut body = chat("@oai/gpt-4o");
    body["stream"] = json!(true);
    let r = s.app.chat_raw(&s.key, &[], &body).await;
    let trace = r.headers()["x-portkey-trace-id"].to_str().unwrap().to_owned();
    let text = r.text().await.unwrap_or_default();
    assert!(
        text.contains("\"error\""),
        "the client is told the stream broke: {text}"
    );
    // The books are closed off the response path: wait for the record.
    let mut rec = Value::Null;
    for _ in 0..50 {
        s.app.flush_logs().await;
        let logs = s.app.get(&format!("/v1/logs?trace_id={trace}"), &s.key).await;
        if logs.body["total"] == 1 {
            rec = logs.body["data"][0].clone();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(rec["usage"]["estimated"], true, "{rec}");
    assert!(rec["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(rec["error_type"], "upstream_error");
}

#[tokio::test]
async fn bodies_are_logged_only_when_the_workspace_asks() {
    let s = setup().await;
    let r = s.chat("@oai/gpt-4o").await;
    assert_eq!(r.status, 200);
    s.app.flush_logs().await;
    let logs = s.app.get("/v1/logs", &s.key).await;
    assert_eq!(logs.body["data"][0]["request_body"], Value::Null);
    assert_eq!(logs.body["data"][0]["response_body"], Value::Null);
    let r = s
        .app
        .put(
            &format!("/v1/admin/workspaces/{}", s.ws),
            &s.app.admin_key,
            json!({"log_bodies": true}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(s.chat("@oai/gpt-4o").await.status, 200);
    s.app.flush_logs().await;
    let logs = s.app.get("/v1/logs", &s.key).await;
    assert!(logs.body["data"][0]["request_body"]
        .as_str()
        .unwrap()
        .contains("be brief"));
    assert!(logs.body["data"][0]["response_body"]
        .as_str()
        .unwrap()
        .contains("chat.completion"));
}

/// Waits for the log record of `trace` (streams close their books off the
/// response path).
async fn record_of(s: &Setup, trace: &str) -> Value {
    for _ in 0..100 {
        s.app.flush_logs().await;
        let logs = s.app.get(&format!("/v1/logs?trace_id={trace}"), &s.key).await;
        if logs.body["total"] == 1 {
            return logs.body["data"][0].clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("no log record for {trace}");
}

#[tokio::test]
async fn a_stalled_stream_times_out_with_what_was_generated_settled() {
    let s = setup().await;
    s.control.stall_stream(true);
    let mut body = chat("@oai/gpt-4o");
    body["stream"] = json!(true);
    let r = s
        .app
        .chat_raw(
            &s.key,
            &[("x-portkey-request-timeout", "300"), ("x-portkey-trace-id", "stalled")],
            &body,
        )
        .await;
    assert_eq!(r.status(), 200);
    let text = tokio::time::timeout(std::time::Duration::from_secs(10), r.text())
        .await
        .expect("the stream ends")
        .unwrap();
    assert!(
        text.contains("chat.completion.chunk"),
        "frames before the stall were relayed: {text}"
    );
    assert!(text.contains("timeout_error"), "{text}");
    let rec = record_of(&s, "stalled").await;
    assert_eq!(rec["status_code"], 504);
    assert_eq!(rec["error_type"], "timeout_error");
    assert_eq!(rec["usage"]["estimated"], true);
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_stream() {
    let s = setup().await;
    s.control.stall_stream(true);
    let mut body = chat("@oai/gpt-4o");
    body["stream"] = json!(true);
    let mut r = s.app.chat_raw(&s.key, &[("x-portkey-trace-id", "gone")], &body).await;
    let first = r.chunk().await.unwrap().expect("a first frame");
    assert!(String::from_utf8_lossy(&first).contains("chat.completion.chunk"));
    drop(r);
    let rec = record_of(&s, "gone").await;
    assert_eq!(rec["cancelled"], true);
    assert_eq!(rec["usage"]["estimated"], true);
    assert!(
        rec["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "what was generated is counted: {rec}"
    );
}
