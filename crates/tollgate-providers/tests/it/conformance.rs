//! The provider conformance suite: one set of tests, run against every
//! adapter and its testkit mock. Whatever the wire protocol, an adapter
//! must answer in the same OpenAI shape: a whole answer, a streamed one,
//! the usage reported both to the client and to the gateway's books,
//! upstream 4xx/5xx errors mapped with the upstream's own message, tool
//! calls both ways, a broken stream reported as such, a dropped stream
//! dropping the upstream request, an unreachable host named, custom
//! headers passed on (and bad ones refused), blank credentials treated as
//! unset, and a model name that stays one URL path
//! segment whatever it holds.
//!
//! Adding a provider is one line in [`CASES`] (plus its rig below, which
//! starts the mock and points a fixture at it).

use crate::support::{
    assert_cut, assert_usage, collect, dead_url, expect_err, tokens, upstream, weather_tools, whole, Fixture, REPLY,
};
use futures::future::BoxFuture;
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;
use tollgate_core::secrets::{PlainSecrets, Secret};
use tollgate_providers::anthropic::Anthropic;
use tollgate_providers::azure::Azure;
use tollgate_providers::bedrock::Bedrock;
use tollgate_providers::google::Gemini;
use tollgate_providers::openai::OpenAi;
use tollgate_providers::vertex::Vertex;
use tollgate_providers::{Adapter, Endpoint, ProviderError, StreamItem, UpstreamResponse};
use tollgate_testkit::control::Control;
use tollgate_testkit::{anthropic, azure, bedrock, google, openai, MockServer};

/// A model name with `/`, `..` and `%`: it must reach the upstream as one
/// path segment, [`HOSTILE_SEGMENT`] once encoded.
const HOSTILE_MODEL: &str = "a/../b%2Fc";
const HOSTILE_SEGMENT: &str = "a%2F..%2Fb%252Fc";

/// One adapter under test.
struct Case {
    name: &'static str,
    adapter: fn() -> Box<dyn Adapter>,
    /// Starts the mock, steered by the control, and a fixture pointing at it.
    rig: fn(Control) -> BoxFuture<'static, (MockServer, Fixture)>,
    /// The path of a whole chat call, given the model's encoded segment
    /// (ignored where the model travels in the body).
    chat_path: fn(&str) -> String,
    /// The model goes into the URL path (so `.` and `..` are refused).
    model_in_path: bool,
    /// The upstream can be called without a credential (local
    /// OpenAI-compatible servers).
    keyless: bool,
}

/// Every adapter with its mock: adding a provider is one line here.
#[rustfmt::skip]
const CASES: &[Case] = &[
    Case { name: "openai", adapter: || Box::new(OpenAi), rig: rigs::openai, chat_path: |_| "/v1/chat/completions".into(), model_in_path: false, keyless: true },
    Case { name: "azure", adapter: || Box::new(Azure), rig: rigs::azure, chat_path: |m| format!("/openai/deployments/{m}/chat/completions"), model_in_path: true, keyless: false },
    Case { name: "anthropic", adapter: || Box::new(Anthropic), rig: rigs::anthropic, chat_path: |_| "/v1/messages".into(), model_in_path: false, keyless: false },
    Case { name: "google", adapter: || Box::new(Gemini), rig: rigs::google, chat_path: |m| format!("/v1beta/models/{m}:generateContent"), model_in_path: true, keyless: false },
    Case { name: "vertex", adapter: || Box::new(Vertex::default()), rig: rigs::vertex, chat_path: |m| format!("/v1/projects/{}/locations/{}/publishers/google/models/{m}:generateContent", rigs::PROJECT, rigs::REGION), model_in_path: true, keyless: false },
    Case { name: "bedrock", adapter: || Box::new(Bedrock::default()), rig: rigs::bedrock, chat_path: |m| format!("/model/{m}/converse"), model_in_path: true, keyless: false },
];

/// Starting each mock and pointing a fixture at it.
mod rigs {
    use super::*;

    pub const PROJECT: &str = "conformance-project";
    pub const REGION: &str = "europe-west4";
    const KEY: &str = "conformance-key-1";

    pub fn openai(control: Control) -> BoxFuture<'static, (MockServer, Fixture)> {
        Box::pin(async move {
            let server = openai::start(openai::OpenAiMock {
                api_key: Some(KEY.into()),
                control,
            })
            .await
            .unwrap();
            let fx = Fixture::new(Some(openai::base_url(&server)), Some(KEY), "gpt-4o");
            (server, fx)
        })
    }

    pub fn azure(control: Control) -> BoxFuture<'static, (MockServer, Fixture)> {
        Box::pin(async move {
            let server = azure::start(azure::AzureMock {
                api_key: KEY.into(),
                deployments: Vec::new(),
                control,
            })
            .await
            .unwrap();
            let mut fx = Fixture::new(Some(server.url()), Some(KEY), "gpt-4o");
            fx.config.insert("azure_resource_name".into(), json!("acme"));
            (server, fx)
        })
    }

    pub fn anthropic(control: Control) -> BoxFuture<'static, (MockServer, Fixture)> {
        Box::pin(async move {
            let server = anthropic::start(anthropic::AnthropicMock {
                api_key: KEY.into(),
                control,
            })
            .await
            .unwrap();
            let fx = Fixture::new(Some(anthropic::base_url(&server)), Some(KEY), "claude-sonnet-4-5");
            (server, fx)
        })
    }

    pub fn google(control: Control) -> BoxFuture<'static, (MockServer, Fixture)> {
        Box::pin(async move {
            let server = google::start_gemini(KEY, control).await.unwrap();
            let fx = Fixture::new(Some(format!("{}/v1beta", server.url())), Some(KEY), "gemini-1.5-flash");
            (server, fx)
        })
    }

    pub fn vertex(control: Control) -> BoxFuture<'static, (MockServer, Fixture)> {
        Box::pin(async move {
            let server = google::start_vertex(google::VertexConfig::new(PROJECT, REGION, control))
                .await
                .unwrap();
            let sa =
                google::service_account_json(google::TEST_CLIENT_EMAIL, &format!("{}/token", server.url()), PROJECT);
            let mut fx = Fixture::new(Some(server.url()), None, "gemini-1.5-pro");
            fx.secrets = PlainSecrets(vec![("vertex_service_account_json".into(), sa.into())]);
            fx.config.insert("vertex_project_id".into(), json!(PROJECT));
            fx.config.insert("vertex_region".into(), json!(REGION));
            (server, fx)
        })
    }

    pub fn bedrock(control: Control) -> BoxFuture<'static, (MockServer, Fixture)> {
        Box::pin(async move {
            let config = bedrock::BedrockConfig::new("eu-west-3", control);
            let server = bedrock::start(config.clone()).await.unwrap();
            let mut fx = Fixture::new(Some(server.url()), None, "anthropic.claude-3-haiku-20240307-v1:0");
            fx.secrets = PlainSecrets(vec![
                ("aws_access_key_id".into(), config.access_key_id.clone().into()),
                ("aws_secret_access_key".into(), config.secret_access_key.clone().into()),
            ]);
            fx.config.insert("aws_region".into(), json!("eu-west-3"));
            (server, fx)
        })
    }
}

/// A running case: its mock, the control steering it, and a fixture.
struct Rig {
    server: MockServer,
    control: Control,
    fx: Fixture,
    adapter: Box<dyn Adapter>,
}

impl Case {
    async fn start(&self) -> Rig {
        let control = Control::new();
        control.set_reply(REPLY);
        let (server, fx) = (self.rig)(control.clone()).await;
        Rig {
            server,
            control,
            fx,
            adapter: (self.adapter)(),
        }
    }
}

impl Rig {
    /// A chat call, its `model` set to the upstream's name as the gateway
    /// does.
    async fn chat(&self, body: &Value, stream: bool, wants_usage: bool) -> Result<UpstreamResponse, ProviderError> {
        let mut body = body.clone();
        body["model"] = json!(self.fx.model);
        self.fx
            .send(
                self.adapter.as_ref(),
                Endpoint::ChatCompletions,
                &body,
                stream,
                wants_usage,
            )
            .await
    }
}

fn chat_body() -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]})
}

fn tool_body() -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "Weather in Paris?"}],
           "tools": weather_tools(), "tool_choice": "required"})
}

#[tokio::test]
async fn whole_answers_are_openai_chat_completions() {
    for case in CASES {
        let rig = case.start().await;
        rig.control.set_usage(30, 10, 5);
        let (answer, usage) = whole(rig.chat(&chat_body(), false, false).await);
        let name = case.name;
        assert_eq!(answer["object"], "chat.completion", "{name}");
        assert!(answer["id"].as_str().is_some_and(|id| !id.is_empty()), "{name}");
        assert!(answer["created"].is_u64(), "{name}");
        let choice = &answer["choices"][0];
        assert_eq!(choice["index"], 0, "{name}");
        assert_eq!(choice["message"]["role"], "assistant", "{name}");
        assert_eq!(choice["message"]["content"], REPLY, "{name}");
        assert_eq!(choice["finish_reason"], "stop", "{name}");
        assert_usage(&answer, usage, tokens(30, 10, 5));
        assert_eq!(answer["usage"]["total_tokens"], 40, "{name}");
    }
}

#[tokio::test]
async fn streamed_answers_are_openai_chunks() {
    for case in CASES {
        let rig = case.start().await;
        let name = case.name;
        let got = collect(rig.chat(&chat_body(), true, false).await).await;
        assert!(got.error.is_none(), "{name}: {:?}", got.error);
        assert!(
            got.frames.iter().all(|f| f["object"] == "chat.completion.chunk"),
            "{name}: {:?}",
            got.frames
        );
        let id = &got.frames[0]["id"];
        assert!(got.frames.iter().all(|f| &f["id"] == id), "{name}: one id per stream");
        assert_eq!(got.text("/choices/0/delta/content"), REPLY, "{name}");
        assert_eq!(got.strs("/choices/0/finish_reason"), ["stop"], "{name}");
        // Without `include_usage` no usage-only chunk reaches the client,
        // but the gateway's books still get the usage.
        assert!(
            got.frames
                .iter()
                .all(|f| !f["choices"].as_array().is_some_and(Vec::is_empty)),
            "{name}: {:?}",
            got.frames
        );
        assert_eq!(got.usage.len(), 1, "{name}");
    }
}

#[tokio::test]
async fn usage_is_reported_for_whole_and_streamed_answers() {
    for case in CASES {
        let rig = case.start().await;
        let name = case.name;
        rig.control.set_usage(41, 13, 8);
        let (_, usage) = whole(rig.chat(&chat_body(), false, false).await);
        assert_eq!(usage, Some(tokens(41, 13, 8)), "{name}");
        let got = collect(rig.chat(&chat_body(), true, true).await).await;
        assert_eq!(got.usage, [tokens(41, 13, 8)], "{name}");
        // The client asked for it: the last chunk is OpenAI's usage-only one.
        let last = got.frames.last().unwrap();
        assert_eq!(last["choices"], json!([]), "{name}");
        assert_eq!(last["usage"]["prompt_tokens"], 41, "{name}");
        assert_eq!(last["usage"]["completion_tokens"], 13, "{name}");
        assert_eq!(last["usage"]["total_tokens"], 54, "{name}");
        assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], 8, "{name}");
    }
}

#[tokio::test]
async fn upstream_errors_keep_their_status_and_message() {
    for case in CASES {
        let rig = case.start().await;
        let name = case.name;
        for (status, message) in [
            (400, "bad request from the mock"),
            (429, "slow down"),
            (503, "overloaded"),
        ] {
            rig.control.fail(status, message);
            for stream in [false, true] {
                let (got, text) = upstream(rig.chat(&chat_body(), stream, false).await);
                assert_eq!(got, status, "{name} stream={stream}");
                assert!(text.contains(message), "{name} stream={stream}: {text}");
            }
        }
        rig.control.succeed();
        whole(rig.chat(&chat_body(), false, false).await);
    }
}

#[tokio::test]
async fn tool_calls_come_back_whole_and_streamed() {
    for case in CASES {
        let rig = case.start().await;
        let name = case.name;
        let (answer, _) = whole(rig.chat(&tool_body(), false, false).await);
        let choice = &answer["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{name}: {answer}");
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["type"], "function", "{name}");
        assert_eq!(call["function"]["name"], "get_weather", "{name}");
        assert!(call["id"].as_str().is_some_and(|id| !id.is_empty()), "{name}");
        let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert!(args["city"].is_string(), "{name}: {args}");

        let got = collect(rig.chat(&tool_body(), true, false).await).await;
        assert!(got.error.is_none(), "{name}: {:?}", got.error);
        let first = got.first("/choices/0/delta/tool_calls/0");
        assert_eq!(first["index"], 0, "{name}");
        assert_eq!(first["function"]["name"], "get_weather", "{name}");
        assert!(first["id"].as_str().is_some_and(|id| !id.is_empty()), "{name}");
        let streamed: Value =
            serde_json::from_str(&got.text("/choices/0/delta/tool_calls/0/function/arguments")).unwrap();
        assert_eq!(streamed, args, "{name}");
        assert_eq!(got.strs("/choices/0/finish_reason"), ["tool_calls"], "{name}");
    }
}

#[tokio::test]
async fn a_cut_stream_is_an_error_after_what_arrived() {
    for case in CASES {
        let rig = case.start().await;
        rig.control.cut_stream(true);
        let got = collect(rig.chat(&chat_body(), true, true).await).await;
        assert_cut(&got);
        // The break names the host it came from, as any unreachable error.
        let host = rig.server.addr.to_string();
        assert!(
            matches!(&got.error, Some(ProviderError::Unreachable(m)) if m.contains(&host)),
            "{}: {:?}",
            case.name,
            got.error
        );
    }
}

#[tokio::test]
async fn dropping_a_stream_drops_the_upstream_request() {
    for case in CASES {
        let rig = case.start().await;
        let name = case.name;
        rig.control.stall_stream(true);
        let mut stream = match rig.chat(&chat_body(), true, false).await {
            Ok(UpstreamResponse::Stream(s)) => s,
            Ok(_) => panic!("{name}: expected a stream"),
            Err(e) => panic!("{name}: {e:?}"),
        };
        let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap_or_else(|_| panic!("{name}: no first frame"));
        assert!(matches!(first, Some(Ok(StreamItem::Frame(_)))), "{name}: {first:?}");
        assert_eq!(rig.control.streams_opened(), 1, "{name}");
        assert_eq!(rig.control.streams_closed(), 0, "{name}: the upstream is still sending");
        drop(stream);
        let closed = async {
            while rig.control.streams_closed() < 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), closed)
            .await
            .unwrap_or_else(|_| panic!("{name}: the upstream stream stayed open after the drop"));
    }
}

#[tokio::test]
async fn a_model_name_stays_one_path_segment() {
    for case in CASES {
        let mut rig = case.start().await;
        let name = case.name;
        rig.fx.model = HOSTILE_MODEL.into();
        let _ = rig.chat(&chat_body(), false, false).await;
        let requests = rig.server.journal.requests();
        let sent = requests.last().unwrap_or_else(|| panic!("{name}: nothing was sent"));
        assert_eq!(sent.path, (case.chat_path)(HOSTILE_SEGMENT), "{name}");
        if let Some(q) = &sent.query {
            assert!(!q.contains(".."), "{name}: {q}");
        }
        if !case.model_in_path {
            assert_eq!(sent.json()["model"], HOSTILE_MODEL, "{name}");
        }
        for dots in [".", ".."] {
            rig.server.journal.clear();
            rig.fx.model = dots.into();
            let r = rig.chat(&chat_body(), false, false).await;
            if case.model_in_path {
                assert!(matches!(expect_err(r), ProviderError::Unsupported(_)), "{name} {dots}");
                assert_eq!(rig.server.journal.calls(), 0, "{name}: {dots} must not be sent");
            }
        }
    }
}

#[tokio::test]
async fn an_unreachable_upstream_is_named_by_host_and_port() {
    for case in CASES {
        let mut rig = case.start().await;
        let name = case.name;
        let dead = dead_url().await;
        let host = dead.trim_start_matches("http://").trim_end_matches("/v1").to_owned();
        rig.fx.base_url = Some(dead);
        match expect_err(rig.chat(&chat_body(), false, false).await) {
            ProviderError::Unreachable(m) => {
                assert!(m.contains(&host), "{name}: {m}");
                assert!(!m.contains("/v1"), "{name}: no path in {m}");
            }
            e => panic!("{name}: {e:?}"),
        }
    }
}

#[tokio::test]
async fn blank_credentials_are_unset() {
    for case in CASES {
        let mut rig = case.start().await;
        let name = case.name;
        for blank in ["", "  ", "\t\n"] {
            rig.server.journal.clear();
            let fields: Vec<(String, Secret<String>)> = rig
                .fx
                .secrets
                .0
                .iter()
                .map(|(k, _)| (k.clone(), blank.into()))
                .collect();
            rig.fx.secrets = PlainSecrets(fields);
            let r = rig.chat(&chat_body(), false, false).await;
            if case.keyless {
                // Sent without credentials: no `Authorization: Bearer   `
                // (this mock wants a key, so the answer is a 401).
                assert!(matches!(r, Err(ProviderError::Upstream { status: 401, .. })), "{name}");
                let sent = rig.server.journal.last().unwrap_or_else(|| panic!("{name}: not sent"));
                assert_eq!(sent.header("authorization"), None, "{name} {blank:?}");
            } else {
                assert!(matches!(expect_err(r), ProviderError::Config(_)), "{name} {blank:?}");
                assert_eq!(rig.server.journal.calls(), 0, "{name}: nothing is sent without a key");
            }
        }
    }
}

#[tokio::test]
async fn custom_headers_go_upstream_and_bad_ones_are_config_errors() {
    for case in CASES {
        let mut rig = case.start().await;
        let name = case.name;
        rig.fx.headers.push(("x-tenant".into(), "acme".into()));
        whole(rig.chat(&chat_body(), false, false).await);
        let sent = rig.server.journal.last().unwrap();
        assert_eq!(sent.header("x-tenant"), Some("acme"), "{name}");
        for (k, v) in [("bad header", "v"), ("x-ok", "line\nbreak")] {
            rig.server.journal.clear();
            rig.fx.headers = vec![(k.into(), v.into())];
            let e = expect_err(rig.chat(&chat_body(), false, false).await);
            assert!(matches!(e, ProviderError::Config(_)), "{name} {k:?}: {e:?}");
            assert_eq!(rig.server.journal.calls(), 0, "{name}: nothing is sent");
        }
    }
}
