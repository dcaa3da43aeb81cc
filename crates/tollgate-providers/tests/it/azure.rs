//! The Azure OpenAI adapter against the Azure mock.

use crate::support::{assert_cut, collect, expect_err, http, tokens, upstream, whole, Fixture, REPLY};
use serde_json::json;
use std::time::Duration;
use tollgate_providers::azure::{Azure, DEFAULT_API_VERSION};
use tollgate_providers::{Endpoint, ProviderError};
use tollgate_testkit::azure::{self as mock, AzureMock};
use tollgate_testkit::control::Control;
use tollgate_testkit::MockServer;

const KEY: &str = "azure-key-1";

async fn start() -> (MockServer, Control) {
    let control = Control::new();
    control.set_reply(REPLY);
    let server = mock::start(AzureMock {
        api_key: KEY.into(),
        deployments: vec![
            ("dep-main".into(), "gpt-4o".into()),
            ("dep-mini".into(), "gpt-4o-mini".into()),
            ("dep-embed".into(), "text-embedding-3-small".into()),
        ],
        control: control.clone(),
    })
    .await
    .unwrap();
    (server, control)
}

fn fixture(server: &MockServer, model: &str) -> Fixture {
    let mut fx = Fixture::new(Some(server.url()), Some(KEY), model);
    fx.config.insert("azure_resource_name".into(), json!("acme"));
    fx.config.insert(
        "azure_deployment_config".into(),
        json!([
            {"azure_deployment_name": "dep-mini", "azure_model_slug": "gpt-4o-mini", "is_default": false},
            {"azure_deployment_name": "dep-main", "azure_model_slug": "gpt-4o", "is_default": true},
            {"azure_deployment_name": "dep-embed", "azure_model_slug": "text-embedding-3-small"}
        ]),
    );
    fx
}

#[tokio::test]
async fn chat_goes_to_the_deployment_with_api_key_and_version() {
    let (server, control) = start().await;
    control.set_usage(30, 10, 5);
    let fx = fixture(&server, "gpt-4o-mini");
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]});
    let (answer, usage) = whole(fx.send(&Azure, Endpoint::ChatCompletions, &body, false, false).await);
    assert_eq!(answer["model"], "gpt-4o-mini");
    assert_eq!(usage, Some(tokens(30, 10, 5)));
    let req = server.journal.last().unwrap();
    assert_eq!(req.path, "/openai/deployments/dep-mini/chat/completions");
    assert_eq!(
        req.query.as_deref(),
        Some(format!("api-version={DEFAULT_API_VERSION}").as_str())
    );
    assert_eq!(req.header("api-key"), Some(KEY));
    assert_eq!(req.header("authorization"), None);
    assert_eq!(req.json(), body);
}

#[tokio::test]
async fn unknown_model_uses_the_default_deployment_and_configured_version() {
    let (server, control) = start().await;
    let mut fx = fixture(&server, "gpt-4.1");
    fx.config
        .insert("azure_api_version".into(), json!("2025-01-01-preview"));
    let body = json!({"model": "gpt-4.1", "messages": [{"role": "user", "content": "Hi"}], "stream": true});
    let got = collect(fx.send(&Azure, Endpoint::ChatCompletions, &body, true, true).await).await;
    assert!(got.error.is_none(), "{:?}", got.error);
    assert_eq!(got.frames[0]["model"], "gpt-4o");
    let u = control.usage();
    assert_eq!(
        got.frames.last().unwrap()["usage"]["total_tokens"],
        u.prompt + u.completion
    );
    assert_eq!(got.usage.len(), 1);
    let req = server.journal.last().unwrap();
    assert_eq!(req.path, "/openai/deployments/dep-main/chat/completions");
    assert_eq!(req.query.as_deref(), Some("api-version=2025-01-01-preview"));
    assert_eq!(req.json()["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn stream_without_usage_for_the_client() {
    let (server, _) = start().await;
    let fx = fixture(&server, "gpt-4o");
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "stream": true});
    let got = collect(fx.send(&Azure, Endpoint::ChatCompletions, &body, true, false).await).await;
    assert!(got.frames.iter().all(|f| f.get("usage").is_none_or(|u| u.is_null())));
    assert_eq!(got.usage.len(), 1);
}

#[tokio::test]
async fn completions_and_embeddings_paths() {
    let (server, control) = start().await;
    let fx = fixture(&server, "text-embedding-3-small");
    let body = json!({"input": "hello"});
    let (answer, usage) = whole(fx.send(&Azure, Endpoint::Embeddings, &body, false, false).await);
    assert_eq!(answer["model"], "text-embedding-3-small");
    assert_eq!(usage.map(|u| u.prompt_tokens), Some(control.usage().prompt));
    assert_eq!(
        server.journal.last().unwrap().path,
        "/openai/deployments/dep-embed/embeddings"
    );

    let fx = fixture(&server, "gpt-4o");
    let body = json!({"prompt": "Say hi"});
    let (answer, _) = whole(fx.send(&Azure, Endpoint::Completions, &body, false, false).await);
    assert_eq!(answer["object"], "text_completion");
    assert_eq!(
        server.journal.last().unwrap().path,
        "/openai/deployments/dep-main/completions"
    );
}

#[tokio::test]
async fn errors_are_mapped() {
    let (server, control) = start().await;
    let body = json!({"messages": [{"role": "user", "content": "Hi"}]});

    let mut wrong = fixture(&server, "gpt-4o");
    wrong.secrets = tollgate_core::secrets::PlainSecrets(vec![("key".into(), "nope".into())]);
    let (status, message) = upstream(wrong.send(&Azure, Endpoint::ChatCompletions, &body, false, false).await);
    assert_eq!(status, 401);
    assert!(
        message.starts_with("Access denied due to invalid subscription key"),
        "{message}"
    );

    let mut unknown = fixture(&server, "gpt-4o");
    unknown.config.remove("azure_deployment_config");
    let (status, message) = upstream(
        unknown
            .send(&Azure, Endpoint::ChatCompletions, &body, false, false)
            .await,
    );
    assert_eq!(status, 404);
    assert!(
        message.contains("deployment for this resource does not exist"),
        "{message}"
    );

    let mut bad_version = fixture(&server, "gpt-4o");
    bad_version.config.insert("azure_api_version".into(), json!("latest"));
    let (status, message) = upstream(
        bad_version
            .send(&Azure, Endpoint::ChatCompletions, &body, false, false)
            .await,
    );
    assert_eq!((status, message.as_str()), (400, "API version not supported"));

    let fx = fixture(&server, "gpt-4o");
    control.fail(
        429,
        "Requests to the ChatCompletions_Create Operation have exceeded the rate limit.",
    );
    let (status, message) = upstream(fx.send(&Azure, Endpoint::ChatCompletions, &body, false, false).await);
    assert_eq!(status, 429);
    assert!(message.contains("exceeded the rate limit"));
    control.fail(500, "Internal server error");
    let (status, _) = upstream(fx.send(&Azure, Endpoint::ChatCompletions, &body, true, true).await);
    assert_eq!(status, 500);
}

#[tokio::test]
async fn missing_key_or_resource_is_a_config_error() {
    let (server, _) = start().await;
    let body = json!({"messages": [{"role": "user", "content": "Hi"}]});
    let mut no_key = fixture(&server, "gpt-4o");
    no_key.secrets = tollgate_core::secrets::PlainSecrets::default();
    let e = expect_err(
        no_key
            .send(&Azure, Endpoint::ChatCompletions, &body, false, false)
            .await,
    );
    assert!(matches!(e, ProviderError::Config(_)), "{e:?}");
    let mut no_resource = Fixture::new(None, Some(KEY), "gpt-4o");
    no_resource.config.clear();
    let e = expect_err(
        no_resource
            .send(&Azure, Endpoint::ChatCompletions, &body, false, false)
            .await,
    );
    assert!(matches!(e, ProviderError::Config(_)), "{e:?}");
    assert_eq!(server.calls(), 0);
}

#[tokio::test]
async fn timeout_and_cut_stream() {
    let (server, control) = start().await;
    let mut fx = fixture(&server, "gpt-4o");
    fx.timeout = Duration::from_millis(100);
    control.set_latency(Duration::from_secs(5));
    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "stream": true});
    let e = expect_err(fx.send(&Azure, Endpoint::ChatCompletions, &body, false, false).await);
    assert!(matches!(e, ProviderError::Timeout), "{e:?}");

    control.set_latency(Duration::ZERO);
    control.cut_stream(true);
    fx.timeout = Duration::from_secs(10);
    let got = collect(fx.send(&Azure, Endpoint::ChatCompletions, &body, true, true).await).await;
    assert_cut(&got);
}

#[tokio::test]
async fn mock_requires_api_version_and_messages() {
    let (server, _) = start().await;
    let url = format!("{}/openai/deployments/dep-main/chat/completions", server.url());
    let r = http()
        .post(&url)
        .header("api-key", KEY)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["message"], "Resource not found");
    let r = http()
        .post(format!("{url}?api-version={DEFAULT_API_VERSION}"))
        .header("api-key", KEY)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["message"], "Missing required parameter: 'messages'.");
}

#[tokio::test]
async fn hostile_model_and_deployment_names_stay_one_encoded_path_segment() {
    use crate::support::{assert_confined, DOT_MODELS, HOSTILE_MODELS};
    let (server, _control) = start().await;
    let body = json!({"model": "x", "messages": [{"role": "user", "content": "Hi"}]});
    let query = format!("api-version={DEFAULT_API_VERSION}");
    // Without a deployment table the model name is the deployment; with one,
    // the configured deployment name goes into the path.
    let by_model = |model: &str| {
        let mut fx = Fixture::new(Some(server.url()), Some(KEY), model);
        fx.config.insert("azure_resource_name".into(), json!("acme"));
        fx
    };
    let by_config = |name: &str| {
        let mut fx = by_model("gpt-4o");
        fx.config.insert(
            "azure_deployment_config".into(),
            json!([{"azure_deployment_name": name, "azure_model_slug": "gpt-4o"}]),
        );
        fx
    };
    for name in HOSTILE_MODELS {
        for fx in [by_model(name), by_config(name)] {
            server.journal.clear();
            let _ = fx.send(&Azure, Endpoint::ChatCompletions, &body, false, false).await;
            let requests = server.journal.requests();
            // The mock records only deployment routes: reaching it proves the
            // name stayed one segment.
            assert_confined(&requests, "/openai/deployments/", Some(&query));
            assert!(requests[0].path.ends_with("/chat/completions"), "{}", requests[0].path);
            assert_eq!(requests[0].path.matches('/').count(), 5, "{}", requests[0].path);
        }
    }
    for name in DOT_MODELS {
        for fx in [by_model(name), by_config(name)] {
            server.journal.clear();
            let e = expect_err(fx.send(&Azure, Endpoint::ChatCompletions, &body, false, false).await);
            assert!(matches!(e, ProviderError::Unsupported(_)), "{name}: {e:?}");
            assert_eq!(server.journal.calls(), 0, "{name} must not be sent");
        }
    }
}
