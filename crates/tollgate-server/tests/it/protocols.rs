//! Every protocol through the whole server: an integration per provider
//! pointing at its mock (which checks keys, versions and signatures), called
//! with OpenAI-format requests, whole and streamed, with usage logged.

use crate::gateway::chat;
use crate::support::App;
use serde_json::{json, Value};
use tollgate_testkit::control::Control;
use tollgate_testkit::{anthropic, azure, bedrock, google, MockServer};

/// Creates the integration, provisions it to a new workspace, and checks a
/// whole and a streamed chat completion and the logged usage.
async fn round_trip(app: &App, slug: &str, body: Value, model: &str, control: &Control, mock: &MockServer) {
    let mut body = body;
    body["slug"] = json!(slug);
    body["name"] = json!(slug);
    let r = app.post("/v1/integrations", &app.admin_key, body).await;
    assert_eq!(r.status, 200, "{slug}: {:?}", r.body);
    let ws = app.workspace(&format!("ws {slug}")).await;
    let r = app
        .put(
            &format!("/v1/integrations/{slug}/workspaces"),
            &app.admin_key,
            json!({"workspaces": [{"id": ws}]}),
        )
        .await;
    assert_eq!(r.status, 200);
    let key = app.workspace_key(&ws, &["completions.write", "logs.view"]).await.1;
    control.set_usage(21, 13, 0);
    control.set_reply("Paris is the capital of France.");
    let r = app
        .post("/v1/chat/completions", &key, chat(&format!("@{slug}/{model}")))
        .await;
    assert_eq!(r.status, 200, "{slug}: {:?}", r.body);
    assert_eq!(
        r.body["choices"][0]["message"]["content"], "Paris is the capital of France.",
        "{slug}"
    );
    assert_eq!(r.body["usage"]["prompt_tokens"], 21, "{slug}");
    assert_eq!(r.body["usage"]["completion_tokens"], 13, "{slug}");
    let mut stream = chat(&format!("@{slug}/{model}"));
    stream["stream"] = json!(true);
    stream["stream_options"] = json!({"include_usage": true});
    let resp = app
        .http
        .post(format!("{}/v1/chat/completions", app.url))
        .bearer_auth(&key)
        .json(&stream)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{slug}");
    let text = resp.text().await.unwrap();
    let mut content = String::new();
    let mut usage = Value::Null;
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{slug}: {e}: {line}"));
        assert_eq!(chunk["object"], "chat.completion.chunk", "{slug}: {line}");
        if let Some(c) = chunk["choices"][0]["delta"]["content"].as_str() {
            content.push_str(c);
        }
        if chunk["usage"].is_object() {
            usage = chunk["usage"].clone();
        }
    }
    assert!(text.trim_end().ends_with("data: [DONE]"), "{slug}: {text}");
    assert_eq!(content, "Paris is the capital of France.", "{slug}: {text}");
    assert_eq!(usage["completion_tokens"], 13, "{slug}: {text}");
    assert!(mock.calls() >= 2, "{slug}");
    app.flush_logs().await;
    let logs = app.get(&format!("/v1/logs?provider={slug}"), &app.admin_key).await;
    assert_eq!(logs.body["total"], 2, "{slug}");
    for rec in logs.body["data"].as_array().unwrap() {
        assert_eq!(rec["usage"]["prompt_tokens"], 21, "{slug}: {rec}");
        assert_eq!(rec["usage"]["estimated"], false, "{slug}");
    }
}

#[tokio::test]
async fn anthropic_messages() {
    let app = App::start().await;
    let control = Control::new();
    let mock = anthropic::start(anthropic::AnthropicMock {
        api_key: "sk-ant-test-key".into(),
        control: control.clone(),
    })
    .await
    .unwrap();
    let body = json!({"ai_provider_id": "anthropic", "key": "sk-ant-test-key", "configurations": {"custom_host": anthropic::base_url(&mock)}});
    round_trip(&app, "claude", body, "claude-sonnet-4-5", &control, &mock).await;
    let seen = mock.journal.last().unwrap();
    assert_eq!(seen.header("x-api-key"), Some("sk-ant-test-key"));
    assert_eq!(
        seen.json()["system"],
        "be brief",
        "system prompt moved to the top level"
    );
}

#[tokio::test]
async fn azure_openai_deployments() {
    let app = App::start().await;
    let control = Control::new();
    let mock = azure::start(azure::AzureMock {
        control: control.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let body = json!({"ai_provider_id": "azure-openai", "key": "azure-test-key", "configurations": {
        "custom_host": mock.url(), "azure_resource_name": "acme", "azure_api_version": "2024-10-21",
        "azure_deployment_config": [{"azure_deployment_name": "prod-4o", "azure_model_slug": "gpt-4o", "is_default": true}]}});
    round_trip(&app, "azure", body, "gpt-4o", &control, &mock).await;
    let seen = mock.journal.last().unwrap();
    assert_eq!(seen.path, "/openai/deployments/prod-4o/chat/completions");
    assert_eq!(seen.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(seen.header("api-key"), Some("azure-test-key"));
}

#[tokio::test]
async fn bedrock_converse_with_sigv4_and_assumed_role() {
    let app = App::start().await;
    let control = Control::new();
    let cfg = bedrock::BedrockConfig::new("us-east-1", control.clone());
    let (id, secret, role, external) = (
        cfg.access_key_id.clone(),
        cfg.secret_access_key.clone(),
        cfg.role_arn.clone(),
        cfg.external_id.clone(),
    );
    let mock = bedrock::start(cfg).await.unwrap();
    let body = json!({"ai_provider_id": "bedrock", "configurations": {"custom_host": mock.url(), "aws_region": "us-east-1",
        "aws_access_key_id": id, "aws_secret_access_key": secret}});
    round_trip(
        &app,
        "bedrock",
        body,
        "anthropic.claude-3-haiku-20240307-v1:0",
        &control,
        &mock,
    )
    .await;
    let seen = mock.journal.last().unwrap();
    assert!(seen.header("authorization").unwrap().starts_with("AWS4-HMAC-SHA256"));
    // The same through STS AssumeRole.
    let body = json!({"ai_provider_id": "bedrock", "configurations": {"custom_host": mock.url(), "aws_region": "us-east-1",
        "aws_auth_type": "assumedRole", "aws_role_arn": role, "aws_external_id": external, "aws_sts_endpoint": mock.url(),
        "aws_access_key_id": "AKIATOLLGATETEST0001", "aws_secret_access_key": "tollgate/test+secret/AAAAAAAAAAAAAAAAAAAAAAAA"}});
    round_trip(
        &app,
        "bedrock-role",
        body,
        "anthropic.claude-3-haiku-20240307-v1:0",
        &control,
        &mock,
    )
    .await;
    assert!(control.auth_calls() >= 1, "STS was called");
}

#[tokio::test]
async fn gemini_api() {
    let app = App::start().await;
    let control = Control::new();
    let mock = google::start_gemini("gemini-test-key", control.clone()).await.unwrap();
    let body = json!({"ai_provider_id": "google", "key": "gemini-test-key", "configurations": {"custom_host": format!("{}/v1beta", mock.url())}});
    round_trip(&app, "gemini", body, "gemini-2.5-flash", &control, &mock).await;
    let seen = mock.journal.last().unwrap();
    assert_eq!(seen.header("x-goog-api-key"), Some("gemini-test-key"));
    assert!(
        seen.query.as_deref().is_none_or(|q| !q.contains("key=")),
        "the key stays out of the URL"
    );
}

#[tokio::test]
async fn vertex_ai_with_a_service_account() {
    let app = App::start().await;
    let control = Control::new();
    let mock = google::start_vertex(google::VertexConfig::new(
        "test-project",
        "us-central1",
        control.clone(),
    ))
    .await
    .unwrap();
    let sa = google::service_account_json(
        google::TEST_CLIENT_EMAIL,
        &format!("{}/token", mock.url()),
        "test-project",
    );
    let body = json!({"ai_provider_id": "vertex-ai", "configurations": {"custom_host": mock.url(), "vertex_project_id": "test-project",
        "vertex_region": "us-central1", "vertex_service_account_json": sa}});
    round_trip(&app, "vertex", body, "gemini-2.5-flash", &control, &mock).await;
    assert_eq!(
        control.auth_calls(),
        1,
        "one token exchange, cached for the second call"
    );
    let r = app.get("/v1/integrations/vertex", &app.admin_key).await;
    assert!(
        !r.body.to_string().contains("PRIVATE KEY"),
        "the service account is never returned"
    );
}
