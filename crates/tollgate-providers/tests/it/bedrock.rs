//! The Bedrock adapter against the Bedrock mock, which recomputes every
//! SigV4 signature: Converse and ConverseStream translation, tool use both
//! ways, STS AssumeRole and its cache, Titan and Cohere embeddings, errors
//! and broken streams; and a recorded ConverseStream replayed as real
//! event-stream bytes.

use crate::support::{
    assert_usage, body_of, collect, expect_err, http, tokens, upstream, weather_tools, whole, Fixture,
};
use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use chrono::Utc;
use serde_json::{json, Value};
use std::sync::Arc;
use tollgate_core::clock::ManualClock;
use tollgate_core::secrets::PlainSecrets;
use tollgate_providers::bedrock::Bedrock;
use tollgate_providers::{Adapter, Endpoint, ProviderError};
use tollgate_testkit::bedrock::{self as mock, BedrockConfig};
use tollgate_testkit::control::Control;
use tollgate_testkit::MockServer;

const REGION: &str = "eu-west-3";
const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";

async fn start() -> (MockServer, Control, BedrockConfig, Fixture) {
    let control = Control::new();
    let config = BedrockConfig::new(REGION, control.clone());
    let server = mock::start(config.clone()).await.unwrap();
    let fx = fixture(&server, &config.access_key_id, &config.secret_access_key);
    (server, control, config, fx)
}

fn fixture(server: &MockServer, key_id: &str, secret: &str) -> Fixture {
    let mut fx = Fixture::new(Some(server.url()), None, MODEL);
    fx.secrets = PlainSecrets(vec![
        ("aws_access_key_id".into(), key_id.into()),
        ("aws_secret_access_key".into(), secret.into()),
    ]);
    fx.config.insert("aws_region".into(), json!(REGION));
    fx
}

/// Switches a fixture to `assumedRole` through the mock's STS.
fn assume(fx: &mut Fixture, server: &MockServer, config: &BedrockConfig) {
    fx.config.insert("aws_auth_type".into(), json!("assumedRole"));
    fx.config.insert("aws_role_arn".into(), json!(config.role_arn));
    fx.config.insert("aws_external_id".into(), json!(config.external_id));
    fx.config
        .insert("aws_sts_endpoint".into(), json!(format!("{}/", server.url())));
}

fn chat() -> Value {
    json!({"model": MODEL, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"}
    ], "max_tokens": 100, "temperature": 0.5, "top_p": 0.9, "stop": "END"})
}

#[tokio::test]
async fn converse_is_signed_and_translated_both_ways() {
    let (server, control, config, fx) = start().await;
    control.set_usage(25, 8, 5);
    control.set_reply("Hello there.");
    let (out, usage) = whole(
        fx.send(&Bedrock::default(), Endpoint::ChatCompletions, &chat(), false, false)
            .await,
    );

    let req = server.journal.last().unwrap();
    assert_eq!(req.path, "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse");
    assert_eq!(req.header("content-type"), Some("application/json"));
    let auth = req.header("authorization").unwrap();
    assert!(
        auth.starts_with(&format!("AWS4-HMAC-SHA256 Credential={}/", config.access_key_id)),
        "{auth}"
    );
    assert!(auth.contains(&format!("/{REGION}/bedrock/aws4_request")), "{auth}");
    assert!(req.header("x-amz-date").is_some());
    assert_eq!(req.header("x-amz-security-token"), None);
    assert_eq!(
        req.json(),
        json!({
            "system": [{"text": "Be brief."}],
            "messages": [{"role": "user", "content": [{"text": "Hi"}]}],
            "inferenceConfig": {"maxTokens": 100, "temperature": 0.5, "topP": 0.9, "stopSequences": ["END"]}
        })
    );
    assert_eq!(out["object"], "chat.completion");
    assert_eq!(out["choices"][0]["message"]["content"], "Hello there.");
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    assert_usage(&out, usage, tokens(25, 8, 5));
}

#[tokio::test]
async fn a_wrong_secret_or_missing_keys_are_refused() {
    let (server, _control, config, _fx) = start().await;
    let wrong = fixture(&server, &config.access_key_id, "not-the-secret");
    let (status, message) = upstream(
        wrong
            .send(&Bedrock::default(), Endpoint::ChatCompletions, &chat(), false, false)
            .await,
    );
    assert_eq!(status, 403);
    assert!(
        message.starts_with("The request signature we calculated does not match"),
        "{message}"
    );

    let unknown = fixture(&server, "AKIAUNKNOWN", &config.secret_access_key);
    let (status, message) = upstream(
        unknown
            .send(&Bedrock::default(), Endpoint::ChatCompletions, &chat(), false, false)
            .await,
    );
    assert_eq!(status, 403);
    assert!(
        message.contains("security token included in the request is invalid"),
        "{message}"
    );

    let mut missing = fixture(&server, "", "");
    missing.secrets = PlainSecrets(vec![("aws_access_key_id".into(), config.access_key_id.clone().into())]);
    let e = expect_err(
        missing
            .send(&Bedrock::default(), Endpoint::ChatCompletions, &chat(), false, false)
            .await,
    );
    assert!(
        matches!(e, ProviderError::Config(ref m) if m.contains("aws_secret_access_key")),
        "{e:?}"
    );
    missing.secrets = PlainSecrets::default();
    let e = expect_err(
        missing
            .send(&Bedrock::default(), Endpoint::ChatCompletions, &chat(), false, false)
            .await,
    );
    assert!(matches!(e, ProviderError::Config(_)), "{e:?}");
    assert_eq!(server.calls(), 2, "no request left without keys");
}

#[tokio::test]
async fn converse_stream_decodes_binary_frames() {
    let (server, control, _config, fx) = start().await;
    control.set_usage(14, 6, 0);
    control.set_reply("streaming from bedrock now");
    let got = collect(
        fx.send(&Bedrock::default(), Endpoint::ChatCompletions, &chat(), true, true)
            .await,
    )
    .await;
    let req = server.journal.last().unwrap();
    assert_eq!(
        req.path,
        "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream"
    );
    assert_eq!(req.header("accept"), Some("application/vnd.amazon.eventstream"));
    assert!(got.error.is_none(), "{:?}", got.error);
    assert_eq!(got.frames[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(got.text("/choices/0/delta/content"), "streaming from bedrock now");
    let finish = got.strs("/choices/0/finish_reason");
    assert_eq!(finish, ["stop"]);
    assert_eq!(got.frames.last().unwrap()["usage"]["completion_tokens"], 6);
    assert_eq!(got.usage, [tokens(14, 6, 0)]);
}

#[tokio::test]
async fn tool_use_goes_both_ways_whole_and_streamed() {
    let (server, _control, _config, fx) = start().await;
    let ask = json!({"messages": [{"role": "user", "content": "Weather in Lyon?"}],
        "tools": weather_tools(), "tool_choice": {"type": "function", "function": {"name": "get_weather"}}});
    let (out, _) = whole(
        fx.send(&Bedrock::default(), Endpoint::ChatCompletions, &ask, false, false)
            .await,
    );
    let sent = server.journal.last().unwrap().json();
    assert_eq!(
        sent["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["properties"]["city"]["type"],
        "string"
    );
    assert_eq!(
        sent["toolConfig"]["toolChoice"],
        json!({"tool": {"name": "get_weather"}})
    );
    let msg = &out["choices"][0]["message"];
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(msg["tool_calls"][0]["id"], "tooluse_mock_1");
    assert_eq!(msg["tool_calls"][0]["function"]["name"], "get_weather");
    let args: Value = serde_json::from_str(msg["tool_calls"][0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "mock"}));

    let answer = json!({"messages": [
        {"role": "user", "content": "Weather in Lyon?"},
        msg.clone(),
        {"role": "tool", "tool_call_id": "tooluse_mock_1", "content": "18 C, cloudy"}
    ], "tools": weather_tools()});
    let (out, _) = whole(
        fx.send(&Bedrock::default(), Endpoint::ChatCompletions, &answer, false, false)
            .await,
    );
    let sent = server.journal.last().unwrap().json();
    assert_eq!(
        sent["messages"][1]["content"][0],
        json!({"toolUse": {"toolUseId": "tooluse_mock_1", "name": "get_weather", "input": {"city": "mock"}}})
    );
    assert_eq!(
        sent["messages"][2]["content"][0],
        json!({"toolResult": {"toolUseId": "tooluse_mock_1", "content": [{"text": "18 C, cloudy"}]}})
    );
    assert_eq!(out["choices"][0]["finish_reason"], "stop");

    let got = collect(
        fx.send(&Bedrock::default(), Endpoint::ChatCompletions, &ask, true, false)
            .await,
    )
    .await;
    assert!(got.error.is_none(), "{:?}", got.error);
    let first = got.first("/choices/0/delta/tool_calls/0");
    assert_eq!(first["id"], "tooluse_mock_1");
    assert_eq!(first["function"]["name"], "get_weather");
    let args = got.text("/choices/0/delta/tool_calls/0/function/arguments");
    assert_eq!(serde_json::from_str::<Value>(&args).unwrap(), json!({"city": "mock"}));
    assert_eq!(got.frames.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn completions_become_one_user_turn() {
    let (server, control, _config, fx) = start().await;
    control.set_reply("done");
    let body = json!({"prompt": "Say done", "max_tokens": 3});
    let (out, _) = whole(
        fx.send(&Bedrock::default(), Endpoint::Completions, &body, false, false)
            .await,
    );
    assert_eq!(
        server.journal.last().unwrap().json()["messages"],
        json!([{"role": "user", "content": [{"text": "Say done"}]}])
    );
    assert_eq!(out["object"], "text_completion");
    assert_eq!(out["choices"][0]["text"], "done");
}

#[tokio::test]
async fn assumed_role_credentials_are_cached_until_near_expiry() {
    let (server, control, config, mut fx) = start().await;
    assume(&mut fx, &server, &config);
    let clock = ManualClock::new(Utc::now());
    let bedrock = Bedrock::with_clock(Arc::new(clock.clone()));
    for _ in 0..3 {
        whole(
            fx.send(&bedrock, Endpoint::ChatCompletions, &chat(), false, false)
                .await,
        );
    }
    assert_eq!(control.auth_calls(), 1, "one AssumeRole for three requests");
    let reqs = server.journal.requests();
    let sts = &reqs[0];
    assert_eq!(sts.path, "/");
    assert!(sts
        .header("authorization")
        .unwrap()
        .contains(&format!("/{REGION}/sts/aws4_request")));
    let form = String::from_utf8_lossy(&sts.body).into_owned();
    assert!(form.contains("Action=AssumeRole"), "{form}");
    assert!(form.contains("Version=2011-06-15"), "{form}");
    assert!(
        form.contains("RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Ftollgate-test"),
        "{form}"
    );
    assert!(form.contains("ExternalId=tollgate-external-1"), "{form}");
    assert!(form.contains("RoleSessionName=tollgate"), "{form}");
    let runtime = server.journal.last().unwrap();
    assert!(runtime
        .header("authorization")
        .unwrap()
        .contains("Credential=ASIATOLLGATEMOCK0001/"));
    assert_eq!(
        runtime.header("x-amz-security-token"),
        Some("IQoJb3JpZ2luX2VjEMock/Session+Token==1")
    );

    // 50 minutes on, still cached; 56 minutes on (within five minutes of
    // the one-hour expiry), a new AssumeRole.
    clock.advance(chrono::Duration::minutes(50));
    whole(
        fx.send(&bedrock, Endpoint::ChatCompletions, &chat(), false, false)
            .await,
    );
    assert_eq!(control.auth_calls(), 1);
    clock.advance(chrono::Duration::minutes(6));
    whole(
        fx.send(&bedrock, Endpoint::ChatCompletions, &chat(), false, false)
            .await,
    );
    assert_eq!(control.auth_calls(), 2);

    // Concurrent requests on a cold cache share one AssumeRole.
    let cold = Bedrock::default();
    let http = http();
    let body = body_of(Endpoint::ChatCompletions, &chat());
    let calls = (0..6).map(|_| cold.send(&http, fx.call(Endpoint::ChatCompletions, &body, false, false)));
    for r in futures::future::join_all(calls).await {
        whole(r);
    }
    assert_eq!(control.auth_calls(), 3);
}

#[tokio::test]
async fn assume_role_failures_are_reported() {
    let (server, control, config, mut fx) = start().await;
    assume(&mut fx, &server, &config);
    fx.config.insert("aws_external_id".into(), json!("wrong-external-id"));
    let e = expect_err(
        fx.send(&Bedrock::default(), Endpoint::ChatCompletions, &chat(), false, false)
            .await,
    );
    assert!(
        matches!(e, ProviderError::Auth(ref m) if m.contains("403") && m.contains("AccessDenied")),
        "{e:?}"
    );

    fx.config.insert("aws_external_id".into(), json!(config.external_id));
    fx.secrets = PlainSecrets(vec![
        ("aws_access_key_id".into(), config.access_key_id.clone().into()),
        ("aws_secret_access_key".into(), "wrong".into()),
    ]);
    let e = expect_err(
        fx.send(&Bedrock::default(), Endpoint::ChatCompletions, &chat(), false, false)
            .await,
    );
    assert!(
        matches!(e, ProviderError::Auth(ref m) if m.contains("SignatureDoesNotMatch")),
        "{e:?}"
    );

    fx.config.remove("aws_role_arn");
    let e = expect_err(
        fx.send(&Bedrock::default(), Endpoint::ChatCompletions, &chat(), false, false)
            .await,
    );
    assert!(
        matches!(e, ProviderError::Config(ref m) if m.contains("aws_role_arn")),
        "{e:?}"
    );
    fx.config.insert("aws_auth_type".into(), json!("magic"));
    let e = expect_err(
        fx.send(&Bedrock::default(), Endpoint::ChatCompletions, &chat(), false, false)
            .await,
    );
    assert!(matches!(e, ProviderError::Config(_)), "{e:?}");
    assert_eq!(control.auth_calls(), 0);
}

#[tokio::test]
async fn titan_and_cohere_embeddings_use_invoke_model() {
    let (server, _control, _config, fx) = start().await;
    let titan = Fixture {
        model: "amazon.titan-embed-text-v2:0".into(),
        ..fx
    };
    let body = json!({"input": ["alpha beta", "gamma"], "dimensions": 6});
    let (out, usage) = whole(
        titan
            .send(&Bedrock::default(), Endpoint::Embeddings, &body, false, false)
            .await,
    );
    let reqs = server.journal.requests();
    assert_eq!(reqs.len(), 2, "Titan takes one text per call");
    assert!(reqs
        .iter()
        .all(|r| r.path == "/model/amazon.titan-embed-text-v2%3A0/invoke"));
    let mut sent: Vec<Value> = reqs.iter().map(|r| r.json()).collect();
    sent.sort_by_key(|v| v["inputText"].as_str().unwrap().to_owned());
    assert_eq!(sent[0], json!({"inputText": "alpha beta", "dimensions": 6}));
    assert_eq!(out["data"].as_array().unwrap().len(), 2);
    assert_eq!(out["data"][0]["embedding"].as_array().unwrap().len(), 6);
    assert_eq!(usage.unwrap().prompt_tokens, 3, "inputTextTokenCount summed");

    let cohere = Fixture {
        model: "cohere.embed-english-v3".into(),
        ..titan
    };
    let (out, usage) = whole(
        cohere
            .send(&Bedrock::default(), Endpoint::Embeddings, &body, false, false)
            .await,
    );
    let req = server.journal.last().unwrap();
    assert_eq!(req.path, "/model/cohere.embed-english-v3/invoke");
    assert_eq!(
        req.json(),
        json!({"texts": ["alpha beta", "gamma"], "input_type": "search_document"})
    );
    assert_eq!(out["data"].as_array().unwrap().len(), 2);
    assert!(usage.unwrap().prompt_tokens >= 3, "estimated");

    let other = Fixture {
        model: "meta.llama3-8b-instruct-v1:0".into(),
        ..cohere
    };
    let e = expect_err(
        other
            .send(&Bedrock::default(), Endpoint::Embeddings, &body, false, false)
            .await,
    );
    assert!(matches!(e, ProviderError::Unsupported(_)), "{e:?}");
}

#[tokio::test]
async fn upstream_errors_keep_aws_messages() {
    let (_server, control, _config, fx) = start().await;
    control.fail(429, "Too many requests, please wait before trying again.");
    let (status, message) = upstream(
        fx.send(&Bedrock::default(), Endpoint::ChatCompletions, &chat(), false, false)
            .await,
    );
    assert_eq!(
        (status, message.as_str()),
        (429, "Too many requests, please wait before trying again.")
    );
    let (status, _) = upstream(
        fx.send(&Bedrock::default(), Endpoint::ChatCompletions, &chat(), true, false)
            .await,
    );
    assert_eq!(status, 429);
    control.fail(500, "Internal failure");
    let (status, message) = upstream(
        fx.send(&Bedrock::default(), Endpoint::ChatCompletions, &chat(), false, false)
            .await,
    );
    assert_eq!((status, message.as_str()), (500, "Internal failure"));
    control.fail(400, "The provided model identifier is invalid.");
    let titan = Fixture {
        model: "amazon.titan-embed-text-v1".into(),
        ..fx
    };
    let (status, _) = upstream(
        titan
            .send(
                &Bedrock::default(),
                Endpoint::Embeddings,
                &json!({"input": "x"}),
                false,
                false,
            )
            .await,
    );
    assert_eq!(status, 400);
}

#[tokio::test]
async fn stream_exceptions_and_cuts_end_with_an_error_after_the_frames() {
    let (_server, control, _config, fx) = start().await;
    control.set_reply("a b c d e f");
    control.fail_stream("throttlingException", "Rate exceeded");
    let got = collect(
        fx.send(&Bedrock::default(), Endpoint::ChatCompletions, &chat(), true, true)
            .await,
    )
    .await;
    assert!(!got.frames.is_empty());
    assert!(got.usage.is_empty());
    match got.error {
        Some(ProviderError::Upstream { status, message, .. }) => {
            assert_eq!((status, message.as_str()), (429, "Rate exceeded"))
        }
        other => panic!("expected the exception, got {other:?}"),
    }
    control.succeed();

    control.cut_stream(true);
    let got = collect(
        fx.send(&Bedrock::default(), Endpoint::ChatCompletions, &chat(), true, true)
            .await,
    )
    .await;
    assert!(got.text("/choices/0/delta/content").starts_with("a b"));
    assert!(got.usage.is_empty());
    assert!(got.error.is_some());
}

#[tokio::test]
async fn recorded_converse_stream_replays_through_the_decoder() {
    let events: Vec<Value> =
        serde_json::from_str(include_str!("../fixtures/bedrock_converse_stream_events.json")).unwrap();
    let mut bytes = Vec::new();
    for e in &events {
        let m = Message::new(bytes::Bytes::from(e["payload"].to_string()))
            .add_header(Header::new(
                ":event-type",
                HeaderValue::String(e["event"].as_str().unwrap().to_owned().into()),
            ))
            .add_header(Header::new(
                ":content-type",
                HeaderValue::String("application/json".to_owned().into()),
            ))
            .add_header(Header::new(
                ":message-type",
                HeaderValue::String("event".to_owned().into()),
            ));
        write_message_to(&m, &mut bytes).unwrap();
    }
    for chunk in [1, 7, 100, bytes.len()] {
        let server =
            tollgate_testkit::control::start_replay(bytes.clone(), "application/vnd.amazon.eventstream", chunk)
                .await
                .unwrap();
        let mut fx = Fixture::new(Some(server.url()), None, MODEL);
        fx.secrets = PlainSecrets(vec![
            ("aws_access_key_id".into(), "AKIAREPLAY".into()),
            ("aws_secret_access_key".into(), "replay".into()),
        ]);
        let body = json!({"messages": [{"role": "user", "content": "Weather in Seattle?"}], "tools": weather_tools()});
        let got = collect(
            fx.send(&Bedrock::default(), Endpoint::ChatCompletions, &body, true, false)
                .await,
        )
        .await;
        assert!(got.error.is_none(), "{:?}", got.error);
        assert_eq!(got.text("/choices/0/delta/content"), "Let me check the weather.");
        let call = got.first("/choices/0/delta/tool_calls/0/id");
        assert_eq!(call, "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q");
        assert_eq!(
            got.text("/choices/0/delta/tool_calls/0/function/arguments"),
            "{\"city\": \"Seattle\"}"
        );
        assert_eq!(got.frames.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(got.usage, [tokens(391, 57, 0)]);
    }
}

#[tokio::test]
async fn hostile_model_names_stay_one_encoded_path_segment() {
    use crate::support::{assert_confined, DOT_MODELS, HOSTILE_MODELS};
    let (server, _control, _config, mut fx) = start().await;
    let chat = json!({"model": "x", "messages": [{"role": "user", "content": "Hi"}]});
    for model in HOSTILE_MODELS {
        server.journal.clear();
        fx.model = (*model).to_owned();
        let _ = fx
            .send(&Bedrock::default(), Endpoint::ChatCompletions, &chat, false, false)
            .await;
        let _ = fx
            .send(
                &Bedrock::default(),
                Endpoint::Embeddings,
                &json!({"input": "a"}),
                false,
                false,
            )
            .await;
        let requests = server.journal.requests();
        assert_confined(&requests, "/model/", None);
        for r in &requests {
            let rest = &r.path["/model/".len()..];
            let (segment, action) = rest.split_once('/').expect("an action follows the model");
            assert!(["converse", "invoke"].contains(&action), "{}", r.path);
            assert!(!segment.is_empty());
        }
    }
    for model in DOT_MODELS {
        server.journal.clear();
        fx.model = (*model).to_owned();
        let e = expect_err(
            fx.send(&Bedrock::default(), Endpoint::ChatCompletions, &chat, false, false)
                .await,
        );
        assert!(matches!(e, ProviderError::Unsupported(_)), "{model}: {e:?}");
        assert_eq!(server.journal.calls(), 0, "{model} must not be sent");
    }
}
