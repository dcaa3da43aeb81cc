//! The Responses API and the Anthropic Messages API through the whole
//! server: relayed natively (Responses to OpenAI, Messages to Anthropic) and
//! translated through chat (the other way round), whole and streamed, with
//! usage and cost logged under the endpoint, and limits holding as on chat.

use crate::gateway::{upstream, UPSTREAM_KEY};
use crate::support::{manual_clock, App};
use futures::future::join_all;
use serde_json::{json, Value};
use tollgate_testkit::control::Control;
use tollgate_testkit::openai;
use tollgate_testkit::{anthropic, MockServer};

const ANT_KEY: &str = "sk-ant-test-key";

struct Both {
    app: App,
    oai: MockServer,
    ant: MockServer,
    control: Control,
    ws: String,
    key: String,
}

/// One workspace with an OpenAI integration `oai` and an Anthropic one
/// `ant`, both on mocks sharing one control.
async fn both() -> Both {
    let (_clock, shared) = manual_clock("2026-11-26T10:00:30Z");
    let app = App::start_with(|_| {}, shared).await;
    let control = Control::new();
    let oai = upstream(&control).await;
    let ant = anthropic::start(anthropic::AnthropicMock {
        api_key: ANT_KEY.into(),
        control: control.clone(),
    })
    .await
    .unwrap();
    let ws = app.workspace("Dialects").await;
    app.openai_integration("oai", &openai::base_url(&oai), UPSTREAM_KEY, &[&ws])
        .await;
    app.integration(
        "anthropic",
        "ant",
        ANT_KEY,
        json!({"custom_host": anthropic::base_url(&ant)}),
        &[&ws],
    )
    .await;
    let key = app.workspace_key(&ws, &["completions.write", "logs.view"]).await.1;
    control.set_usage(21, 13, 0);
    control.set_reply("Paris is the capital of France.");
    Both {
        app,
        oai,
        ant,
        control,
        ws,
        key,
    }
}

impl Both {
    /// POSTs `body` to `path` with the key as `x-api-key` plus `headers`;
    /// returns status, headers and the raw text.
    async fn send(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let mut req = self
            .app
            .http
            .post(format!("{}{path}", self.app.url))
            .header("x-api-key", &self.key)
            .json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let h = resp.headers().clone();
        (status, h, resp.text().await.unwrap())
    }

    async fn json(&self, path: &str, body: &Value) -> (u16, Value) {
        let (s, _, t) = self.send(path, body, &[]).await;
        (s, serde_json::from_str(&t).unwrap_or(Value::String(t)))
    }

    async fn logged(&self, endpoint: &str) -> Vec<Value> {
        self.app.flush_logs().await;
        let r = self.app.get("/v1/logs?page_size=1000", &self.app.admin_key).await;
        r.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["endpoint"] == endpoint)
            .cloned()
            .collect()
    }
}

/// `(event name, data)` of an SSE body.
fn events(text: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut name = String::new();
        let mut data = String::new();
        for line in block.lines() {
            if let Some(n) = line.strip_prefix("event: ") {
                name = n.to_owned();
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push_str(d);
            }
        }
        let v: Value = serde_json::from_str(&data).unwrap_or_else(|e| panic!("{e}: {data:?} in {text}"));
        out.push((name, v));
    }
    out
}

/// A logged record carries the usage the mocks report (21 in, 13 out), as
/// reported, not estimated.
fn assert_mock_usage(rec: &Value) {
    assert_eq!(rec["usage"]["prompt_tokens"], 21, "{rec}");
    assert_eq!(rec["usage"]["completion_tokens"], 13, "{rec}");
    assert_eq!(rec["usage"]["estimated"], false);
}

fn names(ev: &[(String, Value)]) -> Vec<&str> {
    ev.iter().map(|(n, _)| n.as_str()).collect()
}

#[tokio::test]
async fn responses_are_relayed_to_openai_and_stored_ones_can_be_fetched() {
    let b = both().await;
    let (s, r) = b
        .json(
            "/v1/responses",
            &json!({"model": "@oai/gpt-4o", "input": "Capital of France?", "max_output_tokens": 100}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["object"], "response");
    assert_eq!(r["output"][0]["content"][0]["text"], "Paris is the capital of France.");
    let seen = b.oai.journal.last().unwrap();
    assert_eq!(seen.path, "/v1/responses");
    assert_eq!(seen.json()["model"], "gpt-4o", "model rewritten, body relayed");
    assert_eq!(seen.json()["input"], "Capital of France?");
    let id = r["id"].as_str().unwrap().to_owned();

    // Stored: fetched through Tollgate, and usable as previous_response_id.
    let got = b.app.get(&format!("/v1/responses/{id}"), &b.key).await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    assert_eq!(got.body["id"], id.as_str());
    let (s, r) = b
        .json(
            "/v1/responses",
            &json!({"model": "@oai/gpt-4o", "input": "And Spain?", "previous_response_id": id}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let missing = b.app.get("/v1/responses/resp_unknown", &b.key).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_type(), "not_found_error");
    // Another workspace does not see it.
    let other_ws = b.app.workspace("Other").await;
    let other = b.app.workspace_key(&other_ws, &["completions.write"]).await.1;
    assert_eq!(b.app.get(&format!("/v1/responses/{id}"), &other).await.status, 404);

    // Streamed: the upstream's events, with their names, and the stored id.
    let (s, _, text) = b
        .send(
            "/v1/responses",
            &json!({"model": "@oai/gpt-4o", "input": "Hi", "stream": true}),
            &[],
        )
        .await;
    assert_eq!(s, 200);
    let ev = events(&text);
    assert_eq!(ev[0].0, "response.created");
    assert_eq!(ev.last().unwrap().0, "response.completed");
    assert!(!text.contains("[DONE]"));
    let streamed_id = ev[0].1["response"]["id"].as_str().unwrap();
    assert_eq!(
        b.app.get(&format!("/v1/responses/{streamed_id}"), &b.key).await.status,
        200
    );

    let logged = b.logged("responses").await;
    assert_eq!(logged.len(), 3);
    for rec in &logged {
        assert_eq!(rec["status_code"], 200);
        assert_mock_usage(rec);
        // gpt-4o: 21 × $2.50/M + 13 × $10/M = $0.0001825.
        assert_eq!(rec["cost_exact"], "0.0001825", "{rec}");
    }
}

#[tokio::test]
async fn responses_are_relayed_to_azure_openai_and_stored_ones_can_be_fetched() {
    let b = both().await;
    let azure = tollgate_testkit::azure::start(tollgate_testkit::azure::AzureMock {
        control: b.control.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    b.app
        .integration(
            "azure-openai",
            "az",
            "azure-test-key",
            json!({"custom_host": azure.url(), "azure_resource_name": "acme",
              "azure_api_version": "2024-10-21",
              "azure_deployment_config": [{"azure_deployment_name": "prod-4o", "azure_model_slug": "gpt-4o", "is_default": true}]}),
            &[&b.ws],
        )
        .await;

    let (s, r) = b
        .json(
            "/v1/responses",
            &json!({"model": "@az/gpt-4o", "input": "Capital of France?", "max_output_tokens": 100}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["object"], "response");
    assert_eq!(r["output"][0]["content"][0]["text"], "Paris is the capital of France.");
    let seen = azure.journal.last().unwrap();
    assert_eq!(seen.path, "/openai/responses", "relayed natively, not through chat");
    assert_eq!(
        seen.query.as_deref(),
        Some(format!("api-version={}", tollgate_providers::azure::RESPONSES_API_VERSION).as_str())
    );
    assert_eq!(seen.header("api-key"), Some("azure-test-key"));
    assert_eq!(seen.json()["model"], "prod-4o", "model is the deployment");
    assert_eq!(seen.json()["input"], "Capital of France?");
    let id = r["id"].as_str().unwrap().to_owned();

    // Stored: fetched through Tollgate, and usable as previous_response_id.
    let got = b.app.get(&format!("/v1/responses/{id}"), &b.key).await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    assert_eq!(got.body["id"], id.as_str());
    let seen = azure.journal.last().unwrap();
    assert_eq!(seen.path, format!("/openai/responses/{id}"));
    assert_eq!(seen.header("api-key"), Some("azure-test-key"));
    let (s, r) = b
        .json(
            "/v1/responses",
            &json!({"model": "@az/gpt-4o", "input": "And Spain?", "previous_response_id": id}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        azure.journal.last().unwrap().json()["previous_response_id"],
        id.as_str()
    );
    // An id the upstream does not hold is refused by it, not stored.
    let (s, r) = b
        .json(
            "/v1/responses",
            &json!({"model": "@az/gpt-4o", "input": "x", "previous_response_id": "resp_unknown"}),
        )
        .await;
    assert_eq!(s, 400, "{r}");

    // Streamed: the upstream's events and the stored id.
    let (s, _, text) = b
        .send(
            "/v1/responses",
            &json!({"model": "@az/gpt-4o", "input": "Hi", "stream": true}),
            &[],
        )
        .await;
    assert_eq!(s, 200);
    let ev = events(&text);
    assert_eq!(ev.last().unwrap().0, "response.completed");
    let streamed_id = ev[0].1["response"]["id"].as_str().unwrap();
    assert_eq!(
        b.app.get(&format!("/v1/responses/{streamed_id}"), &b.key).await.status,
        200
    );

    let logged = b.logged("responses").await;
    let ok: Vec<_> = logged.iter().filter(|r| r["status_code"] == 200).collect();
    assert_eq!(ok.len(), 3, "{logged:?}");
    for rec in ok {
        assert_mock_usage(rec);
        assert_eq!(rec["cost_exact"], "0.0001825", "{rec}");
    }
}

#[tokio::test]
async fn responses_are_translated_for_anthropic_whole_and_streamed() {
    let b = both().await;
    let tools = json!([{"type": "function", "name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);
    let (s, r) = b
        .json(
            "/v1/responses",
            &json!({"model": "@ant/claude-sonnet-4-5", "instructions": "Be brief.", "input": "Weather in Paris?",
                    "tools": tools, "max_output_tokens": 200, "metadata": {"team": "a"}}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["object"], "response");
    let call = &r["output"][0];
    assert_eq!(call["type"], "function_call");
    assert_eq!(call["name"], "get_weather");
    assert_eq!(call["arguments"], r#"{"city":"mock"}"#);
    assert_eq!(r["metadata"]["team"], "a");
    let sent = b.ant.journal.last().unwrap().json();
    assert_eq!(sent["system"], "Be brief.");
    assert_eq!(sent["max_tokens"], 200);
    assert_eq!(sent["tools"][0]["name"], "get_weather");

    // The tool's result goes back; the model answers with text.
    let call_id = call["call_id"].as_str().unwrap();
    let (s, r) = b
        .json(
            "/v1/responses",
            &json!({"model": "@ant/claude-sonnet-4-5", "tools": tools, "input": [
                {"role": "user", "content": "Weather in Paris?"},
                {"type": "function_call", "call_id": call_id, "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call_output", "call_id": call_id, "output": "sunny"}]}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["output"][0]["type"], "message");
    assert_eq!(r["output_text"], "Paris is the capital of France.");
    assert_eq!(r["usage"]["input_tokens"], 21);

    let (s, _, text) = b
        .send(
            "/v1/responses",
            &json!({"model": "@ant/claude-sonnet-4-5", "input": "Hi", "stream": true}),
            &[],
        )
        .await;
    assert_eq!(s, 200);
    let ev = events(&text);
    let n = names(&ev);
    assert_eq!(n[0], "response.created");
    assert!(n.contains(&"response.output_text.delta"), "{n:?}");
    assert_eq!(*n.last().unwrap(), "response.completed");
    let deltas: String = ev
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(deltas, "Paris is the capital of France.");
    assert_eq!(ev.last().unwrap().1["response"]["usage"]["output_tokens"], 13);

    // Without a provider that stores responses, previous_response_id is refused.
    let (s, r) = b
        .json(
            "/v1/responses",
            &json!({"model": "@ant/claude-sonnet-4-5", "input": "x", "previous_response_id": "resp_1"}),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(r["error"]["param"], "previous_response_id");
    assert!(r["error"]["message"].as_str().unwrap().contains("stores responses"));
    // Nothing Tollgate cannot translate reaches the upstream.
    let calls = b.ant.calls();
    let (s, r) = b
        .json(
            "/v1/responses",
            &json!({"model": "@ant/claude-sonnet-4-5", "input": "x", "tools": [{"type": "web_search"}]}),
        )
        .await;
    assert_eq!(s, 400, "{r}");
    assert_eq!(r["error"]["param"], "tools");
    assert_eq!(b.ant.calls(), calls);

    let logged = b.logged("responses").await;
    assert_eq!(logged.iter().filter(|r| r["status_code"] == 200).count(), 3);
    for rec in logged.iter().filter(|r| r["status_code"] == 200) {
        assert_eq!(rec["usage"]["completion_tokens"], 13, "{rec}");
        assert!(rec["cost_exact"].is_string(), "{rec}");
    }
}

#[tokio::test]
async fn messages_are_relayed_to_anthropic_with_versions_and_count_tokens() {
    let b = both().await;
    let body = json!({"model": "@ant/claude-sonnet-4-5", "max_tokens": 100, "system": "Be brief.",
                      "messages": [{"role": "user", "content": "Capital of France?"}]});
    let (s, h, text) = b
        .send(
            "/v1/messages",
            &body,
            &[
                ("anthropic-version", "2023-06-01"),
                ("anthropic-beta", "tools-2024-04-04"),
            ],
        )
        .await;
    assert_eq!(s, 200, "{text}");
    assert!(h.get("x-portkey-trace-id").is_some());
    let m: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(m["type"], "message");
    assert_eq!(m["content"][0]["text"], "Paris is the capital of France.");
    let seen = b.ant.journal.last().unwrap();
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.header("anthropic-beta"), Some("tools-2024-04-04"));
    assert_eq!(
        seen.header("x-api-key"),
        Some(ANT_KEY),
        "the integration's key, not the client's"
    );
    assert_eq!(seen.json()["model"], "claude-sonnet-4-5");
    assert_eq!(seen.json()["system"], "Be brief.");

    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let (s, _, text) = b.send("/v1/messages", &stream, &[]).await;
    assert_eq!(s, 200);
    let ev = events(&text);
    assert_eq!(ev[0].0, "message_start");
    assert_eq!(ev.last().unwrap().0, "message_stop");
    assert!(!text.contains("[DONE]"));

    let (s, c) = b
        .json(
            "/v1/messages/count_tokens",
            &json!({"model": "@ant/claude-sonnet-4-5", "messages": [{"role": "user", "content": "one two three"}]}),
        )
        .await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(c, json!({"input_tokens": 3}), "the mock's count, relayed");
    assert_eq!(b.ant.journal.last().unwrap().path, "/v1/messages/count_tokens");

    let logged = b.logged("messages").await;
    assert_eq!(logged.len(), 2, "count_tokens is not a billed request");
    for rec in &logged {
        assert_mock_usage(rec);
        assert!(rec["cost_exact"].is_string(), "{rec}");
    }
}

#[tokio::test]
async fn messages_are_translated_for_openai_with_tools_and_anthropic_errors() {
    let b = both().await;
    let tools = json!([{"name": "get_weather", "description": "Weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);
    let (s, m) = b
        .json(
            "/v1/messages",
            &json!({"model": "@oai/gpt-4o", "max_tokens": 100, "tools": tools,
                    "messages": [{"role": "user", "content": "Weather in Paris?"}]}),
        )
        .await;
    assert_eq!(s, 200, "{m}");
    assert_eq!(m["stop_reason"], "tool_use");
    let tool_use = &m["content"][0];
    assert_eq!(tool_use["type"], "tool_use");
    assert_eq!(tool_use["input"], json!({"city": "mock"}));
    assert_eq!(m["usage"]["input_tokens"], 21);
    let sent = b.oai.journal.last().unwrap().json();
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(sent["max_tokens"], 100);

    let (s, m) = b
        .json(
            "/v1/messages",
            &json!({"model": "@oai/gpt-4o", "max_tokens": 100, "tools": tools, "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [tool_use]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use["id"], "content": "sunny"}]}]}),
        )
        .await;
    assert_eq!(s, 200, "{m}");
    assert_eq!(m["stop_reason"], "end_turn");
    assert_eq!(m["content"][0]["text"], "Paris is the capital of France.");

    let (s, _, text) = b
        .send(
            "/v1/messages",
            &json!({"model": "@oai/gpt-4o", "max_tokens": 100, "stream": true,
                    "messages": [{"role": "user", "content": "Hi"}]}),
            &[],
        )
        .await;
    assert_eq!(s, 200);
    let ev = events(&text);
    let n = names(&ev);
    assert_eq!(n.first(), Some(&"message_start"));
    assert_eq!(n.last(), Some(&"message_stop"));
    let text_out: String = ev
        .iter()
        .filter_map(|(_, d)| d.pointer("/delta/text").and_then(Value::as_str))
        .collect();
    assert_eq!(text_out, "Paris is the capital of France.");
    let delta = ev.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta.1["usage"]["output_tokens"], 13);

    // count_tokens is estimated with the tokenizer.
    let (s, c) = b
        .json(
            "/v1/messages/count_tokens",
            &json!({"model": "@oai/gpt-4o", "messages": [{"role": "user", "content": "Hello there"}]}),
        )
        .await;
    assert_eq!(s, 200, "{c}");
    assert!(c["input_tokens"].as_u64().unwrap() > 0);

    // Errors come in Anthropic's shape.
    let (s, e) = b
        .json(
            "/v1/messages",
            &json!({"model": "@oai/gpt-4o", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    let resp = b
        .app
        .http
        .post(format!("{}/v1/messages", b.app.url))
        .header("x-api-key", "wrong")
        .json(&json!({"model": "@oai/gpt-4o", "max_tokens": 5, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["type"], "authentication_error");
    let (s, e) = b
        .json(
            "/v1/messages/count_tokens",
            &json!({"model": "@nope/x", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(s, 404);
    assert_eq!(e["error"]["type"], "not_found_error");
    // An upstream failure: the gateway's 502, in Anthropic's shape.
    b.control.fail(529, "Overloaded");
    let (s, e) = b
        .json(
            "/v1/messages",
            &json!({"model": "@oai/gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(s, 502, "{e}");
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["type"], "api_error");
    b.control.succeed();

    let logged = b.logged("messages").await;
    assert_eq!(logged.iter().filter(|r| r["status_code"] == 200).count(), 3);
}

/// Prices gpt-4o at $0.30 per 1,000 output tokens (nothing for input) on `oai`.
async fn thirty_cent_model(b: &Both) {
    let r = b
        .app
        .put("/v1/integrations/oai/models", &b.app.admin_key, json!({"models": [{"slug": "gpt-4o", "enabled": true,
            "pricing_config": {"type": "static", "pay_as_you_go": {"request_token": {"price": 0}, "response_token": {"price": 0.03}}}}]}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    b.control.set_usage(10, 1000, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_holds_on_responses_and_messages_as_on_chat() {
    let b = both().await;
    thirty_cent_model(&b).await;
    let r = b
        .app
        .put(
            "/v1/integrations/oai/workspaces",
            &b.app.admin_key,
            json!({"workspaces": [{"id": b.ws, "enabled": true, "usage_limits": {"type": "cost", "credit_limit": 1}}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // Worst case 1,000 output tokens = $0.30 each: three fit in $1, whatever the API.
    let responses = json!({"model": "@oai/gpt-4o", "input": "x", "max_output_tokens": 1000});
    let messages = json!({"model": "@oai/gpt-4o", "max_tokens": 1000, "messages": [{"role": "user", "content": "x"}]});
    let rs = join_all((0..6).map(|i| {
        let (path, body) = if i % 2 == 0 {
            ("/v1/responses", &responses)
        } else {
            ("/v1/messages", &messages)
        };
        b.json(path, body)
    }))
    .await;
    assert_eq!(rs.iter().filter(|(s, _)| *s == 200).count(), 3, "{rs:?}");
    let refused: Vec<&Value> = rs.iter().filter(|(s, _)| *s == 412).map(|(_, b)| b).collect();
    assert_eq!(refused.len(), 3, "{rs:?}");
    for r in refused {
        // Each in its API's shape.
        assert!(
            r["error"]["type"] == "integration_exhaust_error" || r["error"]["type"] == "invalid_request_error",
            "{r}"
        );
    }
    assert_eq!(b.oai.calls(), 3);
    let mut logged = b.logged("responses").await;
    logged.extend(b.logged("messages").await);
    let ok: Vec<&Value> = logged.iter().filter(|r| r["status_code"] == 200).collect();
    assert_eq!(ok.len(), 3);
    for rec in ok {
        assert_eq!(rec["cost_exact"], "0.3", "{rec}");
    }
    assert_eq!(logged.iter().filter(|r| r["status_code"] == 412).count(), 3);
}

#[tokio::test]
async fn a_rate_limit_holds_on_responses_and_messages_with_headers() {
    let b = both().await;
    let r = b
        .app
        .put(
            "/v1/integrations/ant/workspaces",
            &b.app.admin_key,
            json!({"workspaces": [{"id": b.ws, "enabled": true, "rate_limits": [{"type": "requests", "unit": "rpm", "value": 2}]}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let m =
        json!({"model": "@ant/claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]});
    let r = json!({"model": "@ant/claude-sonnet-4-5", "input": "x"});
    let (s, h, _) = b.send("/v1/messages", &m, &[]).await;
    assert_eq!(s, 200);
    assert_eq!(h["x-ratelimit-limit-requests"], "2");
    assert_eq!(b.send("/v1/responses", &r, &[]).await.0, 200);
    let (s, h, text) = b.send("/v1/messages", &m, &[]).await;
    assert_eq!(s, 429);
    assert_eq!(h["retry-after"], "30");
    let e: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["type"], "rate_limit_error");
    let (s, _, text) = b.send("/v1/responses", &r, &[]).await;
    assert_eq!(s, 429);
    let e: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(e["error"]["type"], "integration_rate_limit_error");
    assert_eq!(b.ant.calls(), 2);
}

#[tokio::test]
async fn models_can_be_retrieved_and_unknown_routes_answer_openai_shaped() {
    let b = both().await;
    let list = b.app.get("/v1/models", &b.key).await;
    let ids: Vec<String> = list.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(ids.iter().any(|i| i == "@oai/gpt-4o"), "{ids:?}");
    for id in &ids {
        let r = b.app.get(&format!("/v1/models/{id}"), &b.key).await;
        assert_eq!(r.status, 200, "{id}");
        assert_eq!(r.body["id"], id.as_str());
        assert_eq!(r.body["object"], "model");
    }
    let r = b.app.get("/v1/models/@oai/no-such-model", &b.key).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_type(), "not_found_error");
    assert_eq!(b.app.get("/v1/models/@oai/gpt-4o", "bad").await.status, 401);

    let r = b.app.post("/v1/audio/speech", &b.key, json!({})).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_type(), "invalid_request_error");
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("POST /v1/audio/speech"));
    // Admin paths keep the admin shape.
    let r = b.app.get("/v1/admin/nothing-here", &b.app.admin_key).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["success"], false);
}

#[tokio::test]
async fn a_failed_stream_ends_with_the_apis_error_event_and_is_logged() {
    let b = both().await;
    b.control.fail_stream("overloaded_error", "Overloaded");
    // Translated Messages (OpenAI upstream): Anthropic's error event.
    let (s, _, text) = b
        .send(
            "/v1/messages",
            &json!({"model": "@oai/gpt-4o", "max_tokens": 10, "stream": true,
                    "messages": [{"role": "user", "content": "x"}]}),
            &[],
        )
        .await;
    assert_eq!(s, 200);
    let ev = events(&text);
    let (name, data) = ev.last().unwrap();
    assert_eq!(name, "error", "{text}");
    assert_eq!(data["type"], "error");
    assert!(
        data["error"]["message"].as_str().unwrap().contains("Overloaded"),
        "{data}"
    );
    // Translated Responses (Anthropic upstream): the Responses error event.
    let (s, _, text) = b
        .send(
            "/v1/responses",
            &json!({"model": "@ant/claude-sonnet-4-5", "input": "x", "stream": true}),
            &[],
        )
        .await;
    assert_eq!(s, 200);
    let ev = events(&text);
    assert_eq!(ev.last().unwrap().0, "error", "{text}");
    assert!(!text.contains("response.completed"));
    // Native Messages (Anthropic upstream): the upstream's events, then the error.
    let (_, _, text) = b
        .send(
            "/v1/messages",
            &json!({"model": "@ant/claude-sonnet-4-5", "max_tokens": 10, "stream": true,
                    "messages": [{"role": "user", "content": "x"}]}),
            &[],
        )
        .await;
    let ev = events(&text);
    assert_eq!(ev.first().unwrap().0, "message_start");
    assert_eq!(ev.last().unwrap().0, "error", "{text}");
    b.control.succeed();
    let mut logged = b.logged("messages").await;
    logged.extend(b.logged("responses").await);
    assert_eq!(logged.len(), 3);
    assert!(logged.iter().all(|r| r["status_code"] != 200), "{logged:?}");
}

#[tokio::test]
async fn an_unreadable_answer_to_translate_is_a_502_and_still_settled() {
    // An "OpenAI-compatible" upstream that answers 200 with no chat answer.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|| async { ([("content-type", "application/json")], "not a chat answer") }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    let b = both().await;
    b.app
        .openai_integration("broken", &format!("http://{addr}/v1"), UPSTREAM_KEY, &[&b.ws])
        .await;
    let (s, e) = b
        .json(
            "/v1/messages",
            &json!({"model": "@broken/gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(s, 502, "{e}");
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["type"], "api_error");
    let logged = b.logged("messages").await;
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0]["status_code"], 502);
    assert_eq!(logged[0]["usage"]["estimated"], true, "settled with an estimate");
}
