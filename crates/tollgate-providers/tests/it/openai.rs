//! The OpenAI-compatible adapter against the OpenAI mock.

use crate::support::{
    assert_cut, collect, dead_url, expect_err, http, tokens, upstream, weather_tools, whole, Fixture, REPLY,
};
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;
use tollgate_providers::openai::OpenAi;
use tollgate_providers::{Endpoint, ProviderError, StreamItem, UpstreamResponse};
use tollgate_testkit::control::Control;
use tollgate_testkit::openai::{self as mock, OpenAiMock};
use tollgate_testkit::MockServer;

const KEY: &str = "sk-test-0123456789";

async fn start(key: Option<&str>) -> (MockServer, Control) {
    let control = Control::new();
    control.set_reply(REPLY);
    let server = mock::start(OpenAiMock {
        api_key: key.map(str::to_owned),
        control: control.clone(),
    })
    .await
    .unwrap();
    (server, control)
}

fn chat_body(stream: bool) -> Value {
    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0.1, "stream": stream})
}

#[tokio::test]
async fn whole_chat_is_relayed_with_headers_and_usage() {
    let (server, control) = start(Some(KEY)).await;
    control.set_usage(123, 45, 7);
    // Trailing slash on the base URL is tolerated.
    let mut fx = Fixture::new(Some(format!("{}/", mock::base_url(&server))), Some(KEY), "gpt-4o");
    fx.config.insert("openai_organization".into(), json!("org-1"));
    fx.config.insert("openai_project".into(), json!("proj-1"));
    fx.headers.push(("x-tenant".into(), "a".into()));
    let body = chat_body(false);
    let r = fx.send(&OpenAi, Endpoint::ChatCompletions, &body, false, false).await;
    let (answer, usage) = whole(r);
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["choices"][0]["message"]["content"], REPLY);
    assert_eq!(usage, Some(tokens(123, 45, 7)));
    let req = server.journal.last().unwrap();
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(req.header("authorization"), Some(format!("Bearer {KEY}").as_str()));
    assert_eq!(req.header("openai-organization"), Some("org-1"));
    assert_eq!(req.header("openai-project"), Some("proj-1"));
    assert_eq!(req.header("x-tenant"), Some("a"));
    assert_eq!(req.header("content-type"), Some("application/json"));
    // The body goes upstream as the client sent it.
    assert_eq!(req.json(), body);
}

#[tokio::test]
async fn whole_body_bytes_are_relayed_unchanged() {
    let (server, _) = start(None).await;
    let fx = Fixture::new(Some(mock::base_url(&server)), None, "gpt-4o");
    let body = chat_body(false);
    let direct = http()
        .post(format!("{}/chat/completions", mock::base_url(&server)))
        .json(&body)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    match fx.send(&OpenAi, Endpoint::ChatCompletions, &body, false, false).await {
        Ok(UpstreamResponse::Whole { body: relayed, .. }) => {
            // Ids differ per answer; everything else is byte for byte the same.
            let strip = |b: &[u8]| String::from_utf8_lossy(b).replace(char::is_numeric, "");
            assert_eq!(strip(&relayed), strip(&direct));
        }
        _ => panic!("expected a whole answer"),
    }
}

#[tokio::test]
async fn local_servers_get_no_authorization_header() {
    let (server, _) = start(None).await;
    let fx = Fixture::new(Some(mock::base_url(&server)), None, "llama3");
    let body = chat_body(false);
    whole(fx.send(&OpenAi, Endpoint::ChatCompletions, &body, false, false).await);
    assert_eq!(server.journal.last().unwrap().header("authorization"), None);
}

#[tokio::test]
async fn missing_base_url_is_a_config_error() {
    let fx = Fixture::new(None, Some(KEY), "gpt-4o");
    let body = chat_body(false);
    let e = expect_err(fx.send(&OpenAi, Endpoint::ChatCompletions, &body, false, false).await);
    assert!(matches!(e, ProviderError::Config(_)), "{e:?}");
}

#[tokio::test]
async fn invalid_custom_header_is_a_config_error() {
    let (server, _) = start(None).await;
    let mut fx = Fixture::new(Some(mock::base_url(&server)), None, "gpt-4o");
    fx.headers.push(("bad header".into(), "x".into()));
    let body = chat_body(false);
    let e = expect_err(fx.send(&OpenAi, Endpoint::ChatCompletions, &body, false, false).await);
    assert!(matches!(e, ProviderError::Config(_)), "{e:?}");
    assert_eq!(server.calls(), 0);
}

#[tokio::test]
async fn stream_relays_frames_and_usage_chunk_when_asked() {
    let (server, control) = start(Some(KEY)).await;
    control.set_usage(11, 6, 2);
    let fx = Fixture::new(Some(mock::base_url(&server)), Some(KEY), "gpt-4o");
    let body = chat_body(true);
    let got = collect(fx.send(&OpenAi, Endpoint::ChatCompletions, &body, true, true).await).await;
    assert!(got.error.is_none(), "{:?}", got.error);
    assert_eq!(got.text("/choices/0/delta/content"), REPLY);
    assert_eq!(got.frames[0]["choices"][0]["delta"]["role"], "assistant");
    let last = got.frames.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"], 11);
    assert_eq!(got.usage, vec![tokens(11, 6, 2)]);
    let sent = server.journal.last().unwrap().json();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
}

#[tokio::test]
async fn stream_drops_usage_chunk_the_client_did_not_ask_for() {
    let (server, _) = start(None).await;
    let fx = Fixture::new(Some(mock::base_url(&server)), None, "gpt-4o");
    let body = chat_body(true);
    let got = collect(fx.send(&OpenAi, Endpoint::ChatCompletions, &body, true, false).await).await;
    assert!(got.error.is_none());
    assert!(got.frames.iter().all(|f| !f["choices"].as_array().unwrap().is_empty()));
    assert_eq!(got.frames.last().unwrap()["choices"][0]["finish_reason"], "stop");
    assert_eq!(got.usage.len(), 1, "usage is still reported for accounting");
    // The upstream was asked for usage anyway.
    assert_eq!(
        server.journal.last().unwrap().json()["stream_options"]["include_usage"],
        true
    );
}

#[tokio::test]
async fn tool_calls_both_ways() {
    let (server, _) = start(Some(KEY)).await;
    let fx = Fixture::new(Some(mock::base_url(&server)), Some(KEY), "gpt-4o");
    let body = json!({"model": "gpt-4o", "tools": weather_tools(), "tool_choice": "required",
                      "messages": [{"role": "user", "content": "Weather in Paris?"}]});
    let (answer, _) = whole(fx.send(&OpenAi, Endpoint::ChatCompletions, &body, false, false).await);
    let call = &answer["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], r#"{"city":"mock"}"#);
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");

    // Streamed tool call.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let got = collect(
        fx.send(&OpenAi, Endpoint::ChatCompletions, &streamed, true, false)
            .await,
    )
    .await;
    assert_eq!(
        got.text("/choices/0/delta/tool_calls/0/function/arguments"),
        r#"{"city":"mock"}"#
    );
    assert_eq!(
        got.frames[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );

    // The tool result goes back upstream unchanged.
    let back = json!({"model": "gpt-4o", "tools": weather_tools(), "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "18C"}]});
    let (answer, _) = whole(fx.send(&OpenAi, Endpoint::ChatCompletions, &back, false, false).await);
    assert_eq!(answer["choices"][0]["message"]["content"], REPLY);
    assert_eq!(
        server.journal.last().unwrap().json()["messages"][2]["tool_call_id"],
        call["id"]
    );
}

#[tokio::test]
async fn completions_and_embeddings() {
    let (server, control) = start(Some(KEY)).await;
    control.set_usage(8, 3, 0);
    let fx = Fixture::new(Some(mock::base_url(&server)), Some(KEY), "gpt-3.5-turbo-instruct");
    let body = json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi"});
    let (answer, usage) = whole(fx.send(&OpenAi, Endpoint::Completions, &body, false, false).await);
    assert_eq!(answer["object"], "text_completion");
    assert_eq!(usage.map(|u| u.total()), Some(11));
    assert_eq!(server.journal.last().unwrap().path, "/v1/completions");

    let stream = json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "stream": true});
    let got = collect(fx.send(&OpenAi, Endpoint::Completions, &stream, true, true).await).await;
    assert_eq!(got.text("/choices/0/text"), REPLY);
    assert_eq!(got.usage.len(), 1);

    let body = json!({"model": "text-embedding-3-small", "input": ["a", "b"]});
    let (answer, usage) = whole(fx.send(&OpenAi, Endpoint::Embeddings, &body, false, false).await);
    assert_eq!(answer["data"].as_array().unwrap().len(), 2);
    assert_eq!(usage, Some(tokens(8, 0, 0)));
    assert_eq!(server.journal.last().unwrap().path, "/v1/embeddings");
}

#[tokio::test]
async fn upstream_errors_keep_status_and_message() {
    let (server, control) = start(Some(KEY)).await;
    let body = chat_body(false);

    let wrong = Fixture::new(Some(mock::base_url(&server)), Some("sk-wrong"), "gpt-4o");
    let (status, message) = upstream(
        wrong
            .send(&OpenAi, Endpoint::ChatCompletions, &body, false, false)
            .await,
    );
    assert_eq!(status, 401);
    assert!(message.starts_with("Incorrect API key provided"), "{message}");
    assert!(!message.contains("sk-wrong"), "the key is not echoed in full");

    let fx = Fixture::new(Some(mock::base_url(&server)), Some(KEY), "gpt-4o");
    for (status, text) in [(429, "Rate limit reached for gpt-4o"), (500, "The server had an error")] {
        control.fail(status, text);
        let got = upstream(fx.send(&OpenAi, Endpoint::ChatCompletions, &body, false, false).await);
        assert_eq!(got, (status, text.to_owned()));
        let streamed = chat_body(true);
        let got = upstream(fx.send(&OpenAi, Endpoint::ChatCompletions, &streamed, true, true).await);
        assert_eq!(got, (status, text.to_owned()));
    }
}

#[tokio::test]
async fn error_inside_a_stream_surfaces_after_the_frames() {
    let (server, control) = start(None).await;
    control.fail_stream("server_error", "The model is overloaded");
    let fx = Fixture::new(Some(mock::base_url(&server)), None, "gpt-4o");
    let body = chat_body(true);
    let got = collect(fx.send(&OpenAi, Endpoint::ChatCompletions, &body, true, true).await).await;
    assert!(!got.frames.is_empty());
    match got.error {
        Some(ProviderError::Upstream { status, message, .. }) => {
            assert_eq!(status, 500);
            assert_eq!(message, "The model is overloaded");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn slow_upstream_times_out() {
    let (server, control) = start(None).await;
    control.set_latency(Duration::from_secs(5));
    let mut fx = Fixture::new(Some(mock::base_url(&server)), None, "gpt-4o");
    fx.timeout = Duration::from_millis(100);
    let body = chat_body(false);
    let e = expect_err(fx.send(&OpenAi, Endpoint::ChatCompletions, &body, false, false).await);
    assert!(matches!(e, ProviderError::Timeout), "{e:?}");
    let streamed = chat_body(true);
    let e = expect_err(fx.send(&OpenAi, Endpoint::ChatCompletions, &streamed, true, true).await);
    assert!(matches!(e, ProviderError::Timeout), "{e:?}");
}

#[tokio::test]
async fn stream_timeout_bounds_only_the_headers() {
    let (server, _) = start(None).await;
    let mut fx = Fixture::new(Some(mock::base_url(&server)), None, "gpt-4o");
    fx.timeout = Duration::from_millis(100);
    let body = chat_body(true);
    let Ok(UpstreamResponse::Stream(mut stream)) = fx.send(&OpenAi, Endpoint::ChatCompletions, &body, true, true).await
    else {
        panic!("expected a stream");
    };
    assert!(matches!(stream.next().await, Some(Ok(StreamItem::Frame(_)))));
    // A slow reader: the deadline passes mid-stream, which must not end it.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let rest: Vec<_> = stream.collect().await;
    assert!(rest.iter().all(Result::is_ok), "{rest:?}");
    assert!(rest.iter().any(|i| matches!(i, Ok(StreamItem::Usage(_)))));
}

#[tokio::test]
async fn unreachable_host() {
    let dead = dead_url().await;
    let host = dead.trim_start_matches("http://").trim_end_matches("/v1").to_owned();
    // A key in the query string (as some providers take it) must not leak.
    let fx = Fixture::new(Some(format!("{dead}?key=SECRET-KEY")), Some(KEY), "gpt-4o");
    let body = chat_body(false);
    let e = expect_err(fx.send(&OpenAi, Endpoint::ChatCompletions, &body, false, false).await);
    let ProviderError::Unreachable(message) = &e else {
        panic!("{e:?}")
    };
    // The message names the host and the cause, and nothing secret.
    assert!(message.contains(&host), "{message}");
    assert!(message.to_lowercase().contains("connection refused"), "{message}");
    assert!(
        !message.contains("SECRET") && !message.contains(KEY) && !message.contains("/v1"),
        "{message}"
    );
    assert!(
        !message.contains("error sending request: error sending request"),
        "{message}"
    );
    let streamed = chat_body(true);
    let e = expect_err(
        fx.send(&OpenAi, Endpoint::ChatCompletions, &streamed, true, false)
            .await,
    );
    assert!(matches!(e, ProviderError::Unreachable(_)), "{e:?}");
}

#[tokio::test]
async fn cut_stream_ends_with_an_error_after_the_frames_received() {
    let (server, control) = start(None).await;
    control.cut_stream(true);
    let fx = Fixture::new(Some(mock::base_url(&server)), None, "gpt-4o");
    let body = chat_body(true);
    let got = collect(fx.send(&OpenAi, Endpoint::ChatCompletions, &body, true, true).await).await;
    // The frames sent before the break are relayed, then the error.
    let text = got.text("/choices/0/delta/content");
    assert!(REPLY.starts_with(&text) && text.len() < REPLY.len(), "{text:?}");
    assert_cut(&got);
}

#[tokio::test]
async fn mock_rejects_what_openai_rejects() {
    let (server, _) = start(Some(KEY)).await;
    let base = mock::base_url(&server);
    let post = |path: &str, key: Option<&str>, body: &'static str| {
        let mut req = http().post(format!("{base}{path}")).body(body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req.send()
    };
    let check = |r: reqwest::Response, status: u16| async move {
        assert_eq!(r.status().as_u16(), status);
        let v: Value = r.json().await.unwrap();
        v["error"]["message"].as_str().unwrap().to_owned()
    };
    let m = check(post("/chat/completions", None, "{}").await.unwrap(), 401).await;
    assert!(m.starts_with("You didn't provide an API key"));
    let m = check(post("/chat/completions", Some(KEY), "not json").await.unwrap(), 400).await;
    assert!(m.contains("could not parse the JSON body"));
    let m = check(
        post("/chat/completions", Some(KEY), r#"{"messages": []}"#)
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_eq!(m, "you must provide a model parameter");
    let m = check(
        post("/chat/completions", Some(KEY), r#"{"model": "m"}"#).await.unwrap(),
        400,
    )
    .await;
    assert_eq!(m, "Missing required parameter: 'messages'.");
    let m = check(post("/completions", Some(KEY), r#"{"model": "m"}"#).await.unwrap(), 400).await;
    assert_eq!(m, "Missing required parameter: 'prompt'.");
    let m = check(post("/embeddings", Some(KEY), r#"{"model": "m"}"#).await.unwrap(), 400).await;
    assert_eq!(m, "Missing required parameter: 'input'.");
    let models = http()
        .get(format!("{base}/models"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    let models: Value = models.json().await.unwrap();
    assert_eq!(models["object"], "list");
    assert!(!models["data"].as_array().unwrap().is_empty());
    let denied = http()
        .get(format!("{base}/models"))
        .bearer_auth("sk-no")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status().as_u16(), 401);
    assert_eq!(server.calls(), 8);
}

#[tokio::test]
async fn mock_router_without_journal_serves_the_benchmark() {
    let journal = tollgate_testkit::Journal::default();
    let server = MockServer::start(mock::router(OpenAiMock::default(), None), journal)
        .await
        .unwrap();
    let fx = Fixture::new(Some(mock::base_url(&server)), Some("any"), "gpt-4o");
    let body = chat_body(true);
    let got = collect(fx.send(&OpenAi, Endpoint::ChatCompletions, &body, true, false).await).await;
    assert!(got.error.is_none());
    assert_eq!(got.usage.len(), 1);
    // Nothing accumulates when the mock runs as a benchmark upstream.
    assert_eq!(server.calls(), 0);
}

#[tokio::test]
async fn hostile_model_names_go_only_into_the_body() {
    use crate::support::{assert_confined, DOT_MODELS, HOSTILE_MODELS};
    let (server, _control) = start(Some(KEY)).await;
    for model in HOSTILE_MODELS.iter().chain(DOT_MODELS) {
        server.journal.clear();
        let fx = Fixture::new(Some(mock::base_url(&server)), Some(KEY), model);
        let body = json!({"model": model, "messages": [{"role": "user", "content": "Hi"}]});
        let _ = fx.send(&OpenAi, Endpoint::ChatCompletions, &body, false, false).await;
        let requests = server.journal.requests();
        assert_confined(&requests, "/v1/chat/completions", None);
        assert_eq!(requests[0].path, "/v1/chat/completions");
        assert_eq!(requests[0].json()["model"], *model);
    }
}

/// A mock that answers every request 200 with a body that is not JSON.
pub async fn junk_upstream() -> MockServer {
    let router = axum::Router::new().fallback(|| async {
        (
            [("content-type", "application/json")],
            "<html>upstream proxy page</html>",
        )
    });
    MockServer::start(router, tollgate_testkit::Journal::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_200_that_is_not_json_is_an_invalid_response() {
    use tollgate_providers::anthropic::Anthropic;
    use tollgate_providers::azure::Azure;
    use tollgate_providers::google::Gemini;
    use tollgate_providers::Adapter;
    let junk = junk_upstream().await;
    let body = chat_body(false);
    let base = format!("{}/v1", junk.url());
    let mut azure = Fixture::new(Some(junk.url()), Some(KEY), "gpt-4o");
    azure.config.insert("azure_resource_name".into(), json!("acme"));
    let cases: [(&str, &dyn Adapter, Fixture); 4] = [
        ("openai", &OpenAi, Fixture::new(Some(base.clone()), Some(KEY), "gpt-4o")),
        ("azure", &Azure, azure),
        (
            "anthropic",
            &Anthropic,
            Fixture::new(Some(base.clone()), Some(KEY), "claude"),
        ),
        (
            "gemini",
            &Gemini,
            Fixture::new(Some(base), Some(KEY), "gemini-1.5-flash"),
        ),
    ];
    for (name, adapter, fx) in cases {
        for endpoint in [Endpoint::ChatCompletions, Endpoint::Embeddings] {
            if name == "anthropic" && endpoint == Endpoint::Embeddings {
                continue;
            }
            let input = match endpoint {
                Endpoint::Embeddings => json!({"model": "m", "input": "hi"}),
                _ => body.clone(),
            };
            let e = expect_err(fx.send(adapter, endpoint, &input, false, false).await);
            assert!(
                matches!(e, ProviderError::InvalidResponse(_)),
                "{name} {endpoint:?}: {e:?}"
            );
        }
    }
}
