//! The Vertex AI adapter against the Vertex mock: the JWT-bearer token
//! exchange and its cache (one exchange for many requests, concurrent or
//! not; a new one once the clock passes the refresh point), URLs and bearer
//! header, Gemini-format translation, `:predict` embeddings and errors.

use crate::support::{body_of, collect, expect_err, http, tokens, upstream, whole, Fixture};
use chrono::Utc;
use serde_json::{json, Value};
use std::sync::Arc;
use tollgate_core::clock::ManualClock;
use tollgate_core::secrets::PlainSecrets;
use tollgate_providers::vertex::Vertex;
use tollgate_providers::{Adapter, Endpoint, ProviderError};
use tollgate_testkit::control::Control;
use tollgate_testkit::google::{self as mock, VertexConfig, TEST_CLIENT_EMAIL};
use tollgate_testkit::MockServer;

const PROJECT: &str = "test-project";
const REGION: &str = "europe-west4";
const MODEL: &str = "gemini-1.5-pro";

/// The mock and a fixture whose service account points at its token
/// endpoint.
async fn start() -> (MockServer, Control, Fixture) {
    let control = Control::new();
    let server = mock::start_vertex(VertexConfig::new(PROJECT, REGION, control.clone()))
        .await
        .unwrap();
    let fx = fixture(
        &server,
        &mock::service_account_json(TEST_CLIENT_EMAIL, &format!("{}/token", server.url()), PROJECT),
    );
    (server, control, fx)
}

fn fixture(server: &MockServer, sa_json: &str) -> Fixture {
    let mut fx = Fixture::new(Some(server.url()), None, MODEL);
    fx.secrets = PlainSecrets(vec![("vertex_service_account_json".into(), sa_json.into())]);
    fx.config.insert("vertex_project_id".into(), json!(PROJECT));
    fx.config.insert("vertex_region".into(), json!(REGION));
    fx
}

fn chat() -> Value {
    json!({"model": MODEL, "messages": [{"role": "system", "content": "terse"}, {"role": "user", "content": "Hi"}]})
}

fn form_value(body: &[u8], name: &str) -> Option<String> {
    std::str::from_utf8(body)
        .ok()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .map(str::to_owned)
}

#[tokio::test]
async fn chat_exchanges_a_jwt_for_a_token_and_sends_it_as_bearer() {
    let (server, control, fx) = start().await;
    control.set_usage(30, 10, 0);
    control.set_reply("Hello.");
    let vertex = Vertex::default();
    let (out, usage) = whole(fx.send(&vertex, Endpoint::ChatCompletions, &chat(), false, false).await);

    let reqs = server.journal.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].path, "/token");
    assert_eq!(
        form_value(&reqs[0].body, "grant_type").as_deref(),
        Some("urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer")
    );
    let assertion = form_value(&reqs[0].body, "assertion").unwrap();
    assert_eq!(assertion.split('.').count(), 3, "a signed JWT");
    assert_eq!(
        reqs[1].path,
        "/v1/projects/test-project/locations/europe-west4/publishers/google/models/gemini-1.5-pro:generateContent"
    );
    assert_eq!(reqs[1].header("authorization"), Some("Bearer ya29.mock-access-token-1"));
    assert_eq!(
        reqs[1].json()["systemInstruction"],
        json!({"parts": [{"text": "terse"}]})
    );
    assert_eq!(out["choices"][0]["message"]["content"], "Hello.");
    assert_eq!(usage, Some(tokens(30, 10, 0)));
    assert_eq!(control.auth_calls(), 1);
}

#[tokio::test]
async fn the_token_is_cached_until_shortly_before_expiry() {
    let (server, control, fx) = start().await;
    let clock = ManualClock::new(Utc::now());
    let vertex = Vertex::with_clock(Arc::new(clock.clone()));
    for _ in 0..3 {
        whole(fx.send(&vertex, Endpoint::ChatCompletions, &chat(), false, false).await);
    }
    assert_eq!(control.auth_calls(), 1);

    // 50 minutes on, the token (valid 3599 s) is still outside the margin.
    clock.advance(chrono::Duration::minutes(50));
    whole(fx.send(&vertex, Endpoint::ChatCompletions, &chat(), false, false).await);
    assert_eq!(control.auth_calls(), 1);

    // 55 minutes on it is within five minutes of expiry: refreshed.
    clock.advance(chrono::Duration::minutes(5));
    whole(fx.send(&vertex, Endpoint::ChatCompletions, &chat(), false, false).await);
    assert_eq!(control.auth_calls(), 2);
    assert_eq!(
        server.journal.last().unwrap().header("authorization"),
        Some("Bearer ya29.mock-access-token-2")
    );
}

#[tokio::test]
async fn concurrent_requests_share_one_exchange() {
    let (_server, control, fx) = start().await;
    let vertex = Vertex::default();
    let http = http();
    let body = body_of(Endpoint::ChatCompletions, &chat());
    let calls = (0..8).map(|_| vertex.send(&http, fx.call(Endpoint::ChatCompletions, &body, false, false)));
    for r in futures::future::join_all(calls).await {
        whole(r);
    }
    assert_eq!(control.auth_calls(), 1);
}

#[tokio::test]
async fn streams_and_tool_calls_use_the_gemini_format() {
    let (server, control, fx) = start().await;
    control.set_reply("streamed from vertex");
    let vertex = Vertex::default();
    let got = collect(fx.send(&vertex, Endpoint::ChatCompletions, &chat(), true, true).await).await;
    let req = server.journal.last().unwrap();
    assert!(req.path.ends_with("/models/gemini-1.5-pro:streamGenerateContent"));
    assert_eq!(req.query.as_deref(), Some("alt=sse"));
    assert_eq!(got.text("/choices/0/delta/content"), "streamed from vertex");
    assert_eq!(got.usage.len(), 1);
    assert!(got.error.is_none());

    let tools =
        json!({"messages": [{"role": "user", "content": "weather?"}], "tools": crate::support::weather_tools()});
    let (out, _) = whole(fx.send(&vertex, Endpoint::ChatCompletions, &tools, false, false).await);
    assert_eq!(
        out["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
}

#[tokio::test]
async fn embeddings_use_predict_with_reported_token_counts() {
    let (server, _control, fx) = start().await;
    let fx = Fixture {
        model: "text-embedding-005".into(),
        ..fx
    };
    let body = json!({"input": ["one two three", "four"], "dimensions": 3});
    let (out, usage) = whole(
        fx.send(&Vertex::default(), Endpoint::Embeddings, &body, false, false)
            .await,
    );
    let req = server.journal.last().unwrap();
    assert!(req
        .path
        .ends_with("/publishers/google/models/text-embedding-005:predict"));
    assert_eq!(
        req.json(),
        json!({"instances": [{"content": "one two three"}, {"content": "four"}], "parameters": {"outputDimensionality": 3}})
    );
    assert_eq!(out["data"][0]["embedding"].as_array().unwrap().len(), 3);
    assert_eq!(usage.unwrap().prompt_tokens, 4, "3 + 1 words as the mock counts them");
}

#[tokio::test]
async fn bad_configuration_is_a_config_error() {
    let (server, control, _) = start().await;
    let vertex = Vertex::default();
    for sa in ["{not json", r#"{"client_email": "a@b"}"#, r#"{"private_key": "x"}"#] {
        let fx = fixture(&server, sa);
        let e = expect_err(fx.send(&vertex, Endpoint::ChatCompletions, &chat(), false, false).await);
        assert!(matches!(e, ProviderError::Config(_)), "{sa}: {e:?}");
    }
    // A key that is not PEM.
    let sa =
        json!({"client_email": "a@b", "private_key": "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n",
        "token_uri": format!("{}/token", server.url())})
        .to_string();
    let e = expect_err(
        fixture(&server, &sa)
            .send(&vertex, Endpoint::ChatCompletions, &chat(), false, false)
            .await,
    );
    assert!(
        matches!(e, ProviderError::Config(ref m) if !m.contains("nope")),
        "{e:?}"
    );
    // No service account at all.
    let mut fx = fixture(&server, "");
    fx.secrets = PlainSecrets::default();
    let e = expect_err(fx.send(&vertex, Endpoint::ChatCompletions, &chat(), false, false).await);
    assert!(matches!(e, ProviderError::Config(_)), "{e:?}");
    // No project anywhere.
    let sa = mock::service_account_json(TEST_CLIENT_EMAIL, &format!("{}/token", server.url()), "");
    let mut fx = fixture(&server, &sa);
    fx.config.remove("vertex_project_id");
    let sa_without_project: Value = serde_json::from_str(&sa).unwrap();
    let mut sa_without_project = sa_without_project.as_object().unwrap().clone();
    sa_without_project.remove("project_id");
    fx.secrets = PlainSecrets(vec![(
        "vertex_service_account_json".into(),
        Value::Object(sa_without_project).to_string().into(),
    )]);
    let e = expect_err(fx.send(&vertex, Endpoint::ChatCompletions, &chat(), false, false).await);
    assert!(
        matches!(e, ProviderError::Config(ref m) if m.contains("vertex_project_id")),
        "{e:?}"
    );
    assert_eq!(control.auth_calls(), 0, "nothing was exchanged");
}

#[tokio::test]
async fn a_refused_assertion_is_an_auth_error() {
    let (server, control, _) = start().await;
    let sa = mock::service_account_json(
        "intruder@evil.iam.gserviceaccount.com",
        &format!("{}/token", server.url()),
        PROJECT,
    );
    let fx = fixture(&server, &sa);
    let e = expect_err(
        fx.send(&Vertex::default(), Endpoint::ChatCompletions, &chat(), false, false)
            .await,
    );
    assert!(
        matches!(e, ProviderError::Auth(ref m) if m.contains("400") && m.contains("Invalid JWT")),
        "{e:?}"
    );
    assert_eq!(control.auth_calls(), 0);
}

#[tokio::test]
async fn upstream_errors_and_wrong_projects_are_mapped() {
    let (_server, control, fx) = start().await;
    let vertex = Vertex::default();
    control.fail(404, "Publisher Model `gemini-9` was not found.");
    let (status, message) = upstream(fx.send(&vertex, Endpoint::ChatCompletions, &chat(), false, false).await);
    assert_eq!(
        (status, message.as_str()),
        (404, "Publisher Model `gemini-9` was not found.")
    );
    control.succeed();

    let mut other = Fixture { ..fx };
    other.config.insert("vertex_project_id".into(), json!("someone-else"));
    let (status, _) = upstream(
        other
            .send(&vertex, Endpoint::ChatCompletions, &chat(), false, false)
            .await,
    );
    assert_eq!(status, 403);

    other.config.insert("vertex_region".into(), json!("us-central1/../x"));
    let e = expect_err(
        other
            .send(&vertex, Endpoint::ChatCompletions, &chat(), false, false)
            .await,
    );
    assert!(matches!(e, ProviderError::Config(_)), "{e:?}");
}

#[tokio::test]
async fn a_cut_vertex_stream_surfaces_an_error() {
    let (_server, control, fx) = start().await;
    control.set_reply("w1 w2 w3 w4");
    control.cut_stream(true);
    let got = collect(
        fx.send(&Vertex::default(), Endpoint::ChatCompletions, &chat(), true, false)
            .await,
    )
    .await;
    assert_eq!(got.text("/choices/0/delta/content"), "w1 w2 ");
    assert!(got.error.is_some());
}

#[tokio::test]
async fn hostile_model_names_stay_one_encoded_path_segment() {
    use crate::support::{assert_confined, DOT_MODELS, HOSTILE_MODELS};
    let (server, _control, mut fx) = start().await;
    let prefix = format!("/v1/projects/{PROJECT}/locations/{REGION}/publishers/google/models/");
    for model in HOSTILE_MODELS {
        server.journal.clear();
        fx.model = (*model).to_owned();
        let _ = fx
            .send(&Vertex::default(), Endpoint::ChatCompletions, &chat(), false, false)
            .await;
        let _ = fx
            .send(
                &Vertex::default(),
                Endpoint::Embeddings,
                &json!({"input": "a"}),
                false,
                false,
            )
            .await;
        let sent: Vec<_> = server
            .journal
            .requests()
            .into_iter()
            .filter(|r| r.path != "/token")
            .collect();
        assert_confined(&sent, &prefix, None);
        assert!(sent.iter().all(|r| !r.path[prefix.len()..].contains('/')), "{sent:?}");
    }
    for model in DOT_MODELS {
        server.journal.clear();
        fx.model = (*model).to_owned();
        let e = expect_err(
            fx.send(&Vertex::default(), Endpoint::ChatCompletions, &chat(), false, false)
                .await,
        );
        assert!(matches!(e, ProviderError::Unsupported(_)), "{model}: {e:?}");
        assert!(
            server.journal.requests().iter().all(|r| r.path == "/token"),
            "{model} must not be sent"
        );
    }
}
