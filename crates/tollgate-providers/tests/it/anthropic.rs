//! The Anthropic adapter against the Anthropic mock.

use crate::support::{
    assert_cut, assert_usage, collect, dead_url, expect_err, http, tokens, upstream, weather_tools, whole, Fixture,
    REPLY,
};
use serde_json::{json, Value};
use std::time::Duration;
use tollgate_providers::anthropic::{Anthropic, ANTHROPIC_VERSION, DEFAULT_MAX_TOKENS};
use tollgate_providers::{Endpoint, ProviderError};
use tollgate_testkit::anthropic::{self as mock, AnthropicMock};
use tollgate_testkit::control::Control;
use tollgate_testkit::MockServer;

const KEY: &str = "sk-ant-key-1";

async fn start() -> (MockServer, Control) {
    let control = Control::new();
    control.set_reply(REPLY);
    let server = mock::start(AnthropicMock {
        api_key: KEY.into(),
        control: control.clone(),
    })
    .await
    .unwrap();
    (server, control)
}

fn fixture(server: &MockServer) -> Fixture {
    Fixture::new(Some(mock::base_url(server)), Some(KEY), "claude-sonnet-4-5")
}

#[tokio::test]
async fn whole_chat_is_translated_both_ways() {
    let (server, control) = start().await;
    control.set_usage(100, 20, 30);
    let mut fx = fixture(&server);
    fx.headers.push(("x-tenant".into(), "a".into()));
    let body = json!({"model": "claude-sonnet-4-5", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"}], "temperature": 0.3, "stop": ["END"], "user": "u-7"});
    let (answer, usage) = whole(
        fx.send(&Anthropic, Endpoint::ChatCompletions, &body, false, false)
            .await,
    );
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["model"], "claude-sonnet-4-5");
    assert_eq!(
        answer["choices"][0]["message"],
        json!({"role": "assistant", "content": REPLY})
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_usage(&answer, usage, tokens(100, 20, 30));
    let req = server.journal.last().unwrap();
    assert_eq!(req.path, "/v1/messages");
    assert_eq!(req.header("x-api-key"), Some(KEY));
    assert_eq!(req.header("anthropic-version"), Some(ANTHROPIC_VERSION));
    assert_eq!(req.header("x-tenant"), Some("a"));
    assert_eq!(req.header("authorization"), None);
    assert_eq!(
        req.json(),
        json!({"model": "claude-sonnet-4-5", "system": "Be brief.",
               "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
               "max_tokens": DEFAULT_MAX_TOKENS, "temperature": 0.3, "stop_sequences": ["END"],
               "metadata": {"user_id": "u-7"}})
    );
}

fn tool_conversation() -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 200, "tools": weather_tools(), "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "user", "content": "And be quick."},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C and sunny"}]})
}

#[tokio::test]
async fn tool_history_passes_the_real_checks_and_tool_calls_come_back() {
    let (server, _) = start().await;
    let fx = fixture(&server);
    // Merged user turns, tool_use and tool_result pairing: the mock rejects
    // anything the real API would.
    let body = tool_conversation();
    let (answer, _) = whole(
        fx.send(&Anthropic, Endpoint::ChatCompletions, &body, false, false)
            .await,
    );
    assert_eq!(answer["choices"][0]["message"]["content"], REPLY);
    let sent = server.journal.last().unwrap().json();
    assert_eq!(sent["max_tokens"], 200);
    assert_eq!(sent["messages"].as_array().unwrap().len(), 3);
    assert_eq!(sent["messages"][1]["content"][1]["type"], "tool_use");
    assert_eq!(sent["messages"][2]["content"][0]["tool_use_id"], "toolu_1");
    assert_eq!(sent["tools"][0]["input_schema"]["required"], json!(["city"]));

    let ask = json!({"model": "claude-sonnet-4-5", "tools": weather_tools(), "tool_choice": "required",
                     "messages": [{"role": "user", "content": "Weather in Paris?"}]});
    let (answer, _) = whole(fx.send(&Anthropic, Endpoint::ChatCompletions, &ask, false, false).await);
    let message = &answer["choices"][0]["message"];
    assert_eq!(message["content"], Value::Null);
    assert_eq!(message["tool_calls"][0]["type"], "function");
    assert_eq!(message["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(message["tool_calls"][0]["function"]["arguments"], r#"{"city":"mock"}"#);
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        server.journal.last().unwrap().json()["tool_choice"],
        json!({"type": "any"})
    );
}

#[tokio::test]
async fn stream_is_translated_to_openai_chunks() {
    let (server, control) = start().await;
    control.set_usage(40, 9, 0);
    let fx = fixture(&server);
    let body = json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "Hi"}], "stream": true});
    let got = collect(fx.send(&Anthropic, Endpoint::ChatCompletions, &body, true, true).await).await;
    assert!(got.error.is_none(), "{:?}", got.error);
    assert!(got.frames.iter().all(|f| f["object"] == "chat.completion.chunk"));
    assert_eq!(got.frames[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(got.text("/choices/0/delta/content"), REPLY);
    let n = got.frames.len();
    assert_eq!(got.frames[n - 2]["choices"][0]["finish_reason"], "stop");
    assert_eq!(got.frames[n - 1]["choices"], json!([]));
    assert_eq!(got.frames[n - 1]["usage"]["total_tokens"], 49);
    assert_eq!(got.usage, vec![tokens(40, 9, 0)]);
    assert_eq!(server.journal.last().unwrap().json()["stream"], true);
}

#[tokio::test]
async fn stream_without_usage_chunk_still_reports_usage() {
    let (server, _) = start().await;
    let fx = fixture(&server);
    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "stream": true});
    let got = collect(fx.send(&Anthropic, Endpoint::ChatCompletions, &body, true, false).await).await;
    assert!(got.frames.iter().all(|f| f.get("usage").is_none()));
    assert_eq!(got.frames.last().unwrap()["choices"][0]["finish_reason"], "stop");
    assert_eq!(got.usage.len(), 1);
}

#[tokio::test]
async fn streamed_tool_use_becomes_tool_call_chunks() {
    let (server, _) = start().await;
    let fx = fixture(&server);
    let body = json!({"tools": weather_tools(), "messages": [{"role": "user", "content": "Weather?"}], "stream": true});
    let got = collect(fx.send(&Anthropic, Endpoint::ChatCompletions, &body, true, false).await).await;
    assert!(got.error.is_none(), "{:?}", got.error);
    let first = got.first("/choices/0/delta/tool_calls/0");
    assert_eq!(first["index"], 0);
    assert_eq!(first["function"]["name"], "get_weather");
    assert!(first["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(
        got.text("/choices/0/delta/tool_calls/0/function/arguments"),
        r#"{"city":"mock"}"#
    );
    assert_eq!(got.frames.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn completions_answer_text_completion_objects() {
    let (server, _) = start().await;
    let fx = fixture(&server);
    let body = json!({"prompt": "Say hi", "max_tokens": 16});
    let (answer, usage) = whole(fx.send(&Anthropic, Endpoint::Completions, &body, false, false).await);
    assert_eq!(answer["object"], "text_completion");
    assert_eq!(answer["choices"][0]["text"], REPLY);
    assert!(usage.is_some());
    assert_eq!(
        server.journal.last().unwrap().json()["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "Say hi"}]}])
    );
    let body = json!({"prompt": "Say hi", "stream": true});
    let got = collect(fx.send(&Anthropic, Endpoint::Completions, &body, true, true).await).await;
    assert!(got.frames.iter().all(|f| f["object"] == "text_completion"));
    assert_eq!(got.text("/choices/0/text"), REPLY);
    assert_eq!(got.usage.len(), 1);
}

#[tokio::test]
async fn embeddings_are_unsupported_without_calling_upstream() {
    let (server, _) = start().await;
    let fx = fixture(&server);
    let body = json!({"input": "x"});
    let e = expect_err(fx.send(&Anthropic, Endpoint::Embeddings, &body, false, false).await);
    assert!(matches!(e, ProviderError::Unsupported(_)), "{e:?}");
    let bad = json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]});
    let e = expect_err(fx.send(&Anthropic, Endpoint::ChatCompletions, &bad, false, false).await);
    assert!(matches!(e, ProviderError::Unsupported(_)), "{e:?}");
    assert_eq!(server.calls(), 0);
}

#[tokio::test]
async fn errors_are_mapped_with_anthropic_messages() {
    let (server, control) = start().await;
    let body = json!({"messages": [{"role": "user", "content": "Hi"}]});
    let mut wrong = fixture(&server);
    wrong.secrets = tollgate_core::secrets::PlainSecrets(vec![("key".into(), "sk-ant-wrong".into())]);
    let got = upstream(
        wrong
            .send(&Anthropic, Endpoint::ChatCompletions, &body, false, false)
            .await,
    );
    assert_eq!(got, (401, "invalid x-api-key".to_owned()));

    let fx = fixture(&server);
    for (status, text) in [
        (429, "Number of requests has exceeded your rate limit"),
        (500, "Internal server error"),
        (529, "Overloaded"),
    ] {
        control.fail(status, text);
        let got = upstream(
            fx.send(&Anthropic, Endpoint::ChatCompletions, &body, false, false)
                .await,
        );
        assert_eq!(got, (status, text.to_owned()));
        let got = upstream(fx.send(&Anthropic, Endpoint::ChatCompletions, &body, true, true).await);
        assert_eq!(got, (status, text.to_owned()));
    }
}

#[tokio::test]
async fn error_event_inside_a_stream_surfaces_after_the_frames() {
    let (server, control) = start().await;
    control.fail_stream("overloaded_error", "Overloaded");
    let fx = fixture(&server);
    let body = json!({"messages": [{"role": "user", "content": "Hi"}]});
    let got = collect(fx.send(&Anthropic, Endpoint::ChatCompletions, &body, true, true).await).await;
    assert!(!got.frames.is_empty());
    assert!(got.usage.is_empty());
    assert!(
        matches!(&got.error, Some(ProviderError::Upstream { status: 529, message, .. }) if message == "Overloaded"),
        "{:?}",
        got.error
    );
}

#[tokio::test]
async fn config_errors() {
    let body = json!({"messages": [{"role": "user", "content": "Hi"}]});
    let no_base = Fixture::new(None, Some(KEY), "claude");
    let e = expect_err(
        no_base
            .send(&Anthropic, Endpoint::ChatCompletions, &body, false, false)
            .await,
    );
    assert!(matches!(e, ProviderError::Config(_)), "{e:?}");
    let (server, _) = start().await;
    let no_key = Fixture::new(Some(mock::base_url(&server)), None, "claude");
    let e = expect_err(
        no_key
            .send(&Anthropic, Endpoint::ChatCompletions, &body, false, false)
            .await,
    );
    assert!(matches!(e, ProviderError::Config(_)), "{e:?}");
    assert_eq!(server.calls(), 0);
}

#[tokio::test]
async fn timeout_unreachable_and_cut_stream() {
    let (server, control) = start().await;
    let body = json!({"messages": [{"role": "user", "content": "Hi"}]});
    let mut fx = fixture(&server);
    fx.timeout = Duration::from_millis(100);
    control.set_latency(Duration::from_secs(5));
    let e = expect_err(
        fx.send(&Anthropic, Endpoint::ChatCompletions, &body, false, false)
            .await,
    );
    assert!(matches!(e, ProviderError::Timeout), "{e:?}");
    let e = expect_err(fx.send(&Anthropic, Endpoint::ChatCompletions, &body, true, true).await);
    assert!(matches!(e, ProviderError::Timeout), "{e:?}");

    let dead = Fixture::new(Some(dead_url().await), Some(KEY), "claude");
    let e = expect_err(
        dead.send(&Anthropic, Endpoint::ChatCompletions, &body, false, false)
            .await,
    );
    assert!(matches!(e, ProviderError::Unreachable(_)), "{e:?}");

    control.set_latency(Duration::ZERO);
    control.cut_stream(true);
    fx.timeout = Duration::from_secs(10);
    let got = collect(fx.send(&Anthropic, Endpoint::ChatCompletions, &body, true, true).await).await;
    assert_eq!(got.frames[0]["choices"][0]["delta"]["role"], "assistant");
    let text = got.text("/choices/0/delta/content");
    assert!(REPLY.starts_with(&text) && text.len() < REPLY.len(), "{text:?}");
    assert_cut(&got);
}

#[tokio::test]
async fn mock_rejects_what_anthropic_rejects() {
    let (server, _) = start().await;
    let url = format!("{}/messages", mock::base_url(&server));
    let send = |headers: &[(&str, &str)], body: Value| {
        let mut req = http().post(&url).json(&body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
    };
    let ok = json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let full = [("x-api-key", KEY), ("anthropic-version", ANTHROPIC_VERSION)];
    // (headers, body, expected status, expected message)
    type Case<'a> = (Vec<(&'a str, &'a str)>, Value, u16, &'a str);
    let cases: Vec<Case> = vec![
        (vec![("anthropic-version", ANTHROPIC_VERSION)], ok.clone(), 401, "x-api-key header is required"),
        (vec![("x-api-key", KEY)], ok.clone(), 400, "anthropic-version: header is required"),
        (full.to_vec(), json!({"model": "c", "messages": []}), 400, "max_tokens: Field required"),
        (
            full.to_vec(),
            json!({"model": "c", "max_tokens": 5, "messages": [
                {"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}),
            400,
            "messages: roles must alternate between \"user\" and \"assistant\", but found multiple \"user\" roles in a row",
        ),
    ];
    for (headers, body, status, message) in cases {
        let r = send(&headers, body).await.unwrap();
        assert_eq!(r.status().as_u16(), status);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["message"], message);
    }
    let r = send(&full, ok).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn hostile_model_names_go_only_into_the_body() {
    use crate::support::{assert_confined, DOT_MODELS, HOSTILE_MODELS};
    let (server, _control) = start().await;
    for model in HOSTILE_MODELS.iter().chain(DOT_MODELS) {
        server.journal.clear();
        let fx = Fixture::new(Some(mock::base_url(&server)), Some(KEY), model);
        let body = json!({"model": model, "messages": [{"role": "user", "content": "Hi"}]});
        let _ = fx
            .send(&Anthropic, Endpoint::ChatCompletions, &body, false, false)
            .await;
        let requests = server.journal.requests();
        assert_confined(&requests, "/v1/messages", None);
        assert_eq!(requests[0].path, "/v1/messages");
        assert_eq!(requests[0].json()["model"], *model);
    }
}
