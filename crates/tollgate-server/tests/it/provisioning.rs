//! Provisioning: workspaces, model allow-lists, custom models and prices,
//! providers, and `GET /v1/models`; every change reaches the gateway at once.

use crate::gateway::{chat, setup, upstream, Setup, UPSTREAM_KEY};
use crate::support::{App, Resp};
use serde_json::{json, Value};
use tollgate_testkit::control::Control;
use tollgate_testkit::openai::{self, OpenAiMock};

async fn model_ids(app: &App, key: &str) -> Vec<String> {
    let r = app.get("/v1/models", key).await;
    r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn two_of_three_workspaces_with_different_model_lists() {
    let app = App::start().await;
    let mock = upstream(&Control::new()).await;
    let (a, b, c) = (
        app.workspace("A").await,
        app.workspace("B").await,
        app.workspace("C").await,
    );
    app.openai_integration("shared", &openai::base_url(&mock), UPSTREAM_KEY, &[])
        .await;
    let k = &app.admin_key;
    let r = app
        .put("/v1/integrations/shared/models", k, json!({"allow_all_models": false, "models": [
            {"slug": "gpt-4o", "enabled": true}, {"slug": "gpt-4o-mini", "enabled": true}, {"slug": "o3", "enabled": false}]}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = app
        .put(
            "/v1/integrations/shared/workspaces",
            k,
            json!({"workspaces": [
            {"id": a, "enabled": true},
            {"id": b, "enabled": true, "models": ["gpt-4o-mini"]}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let ka = app.workspace_key(&a, &["completions.write"]).await.1;
    let kb = app.workspace_key(&b, &["completions.write"]).await.1;
    let kc = app.workspace_key(&c, &["completions.write"]).await.1;

    assert_eq!(app.completion(&ka, chat("@shared/gpt-4o")).await.status, 200);
    assert_eq!(app.completion(&kb, chat("@shared/gpt-4o-mini")).await.status, 200);
    let calls = mock.calls();
    // B may not use gpt-4o; nobody may use a model outside the list; C has no access.
    for (key, model, status, kind) in [
        (&kb, "@shared/gpt-4o", 412, "model_not_allowed_error"),
        (&ka, "@shared/gpt-3.5-turbo", 412, "model_not_allowed_error"),
        (&ka, "@shared/o3", 412, "model_not_allowed_error"),
        (&kc, "@shared/gpt-4o", 403, "permission_error"),
    ] {
        let r = app.completion(key, chat(model)).await;
        assert_eq!((r.status, r.error_type()), (status, kind), "{model}: {:?}", r.body);
    }
    assert_eq!(mock.calls(), calls, "refused before anything was sent upstream");

    // The catalogue of each workspace is exactly what it may use.
    assert_eq!(
        model_ids(&app, &ka).await,
        vec!["@shared/gpt-4o", "@shared/gpt-4o-mini"]
    );
    assert_eq!(model_ids(&app, &kb).await, vec!["@shared/gpt-4o-mini"]);
    assert!(model_ids(&app, &kc).await.is_empty());

    // GET shows the grants; rate_limits/usage_limits are objects here.
    let r = app.get("/v1/integrations/shared/workspaces", k).await;
    assert_eq!(r.body["total"], 2);
    let models = app.get("/v1/integrations/shared/models", k).await;
    assert_eq!(models.body["allow_all_models"], false);
    assert_eq!(models.body["total"], 3);

    // Revoking a workspace fails its very next request.
    let r = app
        .put(
            "/v1/integrations/shared/workspaces",
            k,
            json!({"workspaces": [{"id": a, "enabled": false}]}),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = app.completion(&ka, chat("@shared/gpt-4o")).await;
    assert_eq!((r.status, r.error_type()), (403, "permission_error"));
    // B was not listed in that PUT and keeps its access (entries merge).
    assert_eq!(app.completion(&kb, chat("@shared/gpt-4o-mini")).await.status, 200);
}

/// Turns `glob`'s access for all workspaces on or off.
async fn global_access(s: &Setup, enabled: bool) -> Resp {
    s.app
        .put(
            "/v1/integrations/glob/workspaces",
            &s.app.admin_key,
            json!({"global_workspace_access": {"enabled": enabled}}),
        )
        .await
}

#[tokio::test]
async fn all_workspaces_includes_workspaces_created_later() {
    let s = setup().await;
    let k = &s.app.admin_key;
    let r = s
        .app
        .post(
            "/v1/integrations",
            k,
            json!({"name": "g", "slug": "glob", "ai_provider_id": "openai", "key": UPSTREAM_KEY,
              "configurations": {"custom_host": openai::base_url(&s.mock)}}),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = global_access(&s, true).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let later = s.app.workspace("Later").await;
    let key = s.app.workspace_key(&later, &["completions.write"]).await.1;
    assert_eq!(s.app.completion(&key, chat("@glob/gpt-4o")).await.status, 200);
    let detail = s.app.get("/v1/integrations/glob", k).await;
    assert_eq!(detail.body["global_workspace_access"]["enabled"], true);
    // Turning it off revokes at once.
    let r = global_access(&s, false).await;
    assert_eq!(r.status, 200);
    assert_eq!(s.app.completion(&key, chat("@glob/gpt-4o")).await.status, 403);
}

#[tokio::test]
async fn custom_models_reach_their_own_host_with_their_headers_and_price() {
    let s = setup().await;
    let private_control = Control::new();
    private_control.set_usage(1000, 2000, 0);
    let private = openai::start(OpenAiMock {
        api_key: None,
        control: private_control,
    })
    .await
    .unwrap();
    let k = &s.app.admin_key;
    let r = s
        .app
        .put("/v1/integrations/oai/models", k, json!({"models": [{
            "slug": "acme-ft-v1", "enabled": true, "is_custom": true, "is_finetune": true, "base_model_slug": "gpt-4o",
            "configurations": {"custom_host": openai::base_url(&private), "custom_headers": {"x-tenant": "a"}},
            "pricing_config": {"type": "static", "pay_as_you_go": {"request_token": {"price": 0.00025}, "response_token": {"price": 0.001}}}}]}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = s
        .app
        .chat_raw(&s.key, &[("x-portkey-trace-id", "ft-1")], &chat("@oai/acme-ft-v1"))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(private.calls(), 1);
    assert_eq!(s.mock.calls(), 0, "not sent to the integration's own host");
    let seen = private.journal.last().unwrap();
    assert_eq!(seen.header("x-tenant"), Some("a"));
    assert_eq!(seen.json()["model"], "acme-ft-v1");
    s.app.flush_logs().await;
    let logs = s.app.get("/v1/logs?trace_id=ft-1", &s.key).await;
    // 1000 × 0.00025 cents + 2000 × 0.001 cents = 0.25 + 2 cents = $0.0225.
    assert_eq!(logs.body["data"][0]["cost_exact"], "0.0225", "{:?}", logs.body);
    // The model appears in the catalogue, and can be removed again.
    assert!(model_ids(&s.app, &s.key).await.contains(&"@oai/acme-ft-v1".to_owned()));
    assert_eq!(
        s.app
            .delete("/v1/integrations/oai/models?slugs=acme-ft-v1", k)
            .await
            .status,
        200
    );
    let r = s.app.delete("/v1/integrations/oai/models?slugs=gpt-4o", k).await;
    assert_eq!((r.status, r.code()), (404, "AB08"));
}

#[tokio::test]
async fn free_and_unpriced_models() {
    let s = setup().await;
    let k = &s.app.admin_key;
    let r = s
        .app
        .put("/v1/integrations/oai/models", k, json!({"models": [{"slug": "gpt-4o", "enabled": true,
              "pricing_config": {"type": "static", "pay_as_you_go": {"request_token": {"price": 0}, "response_token": {"price": 0}}}}]}))
        .await;
    assert_eq!(r.status, 200);
    for (model, trace) in [("gpt-4o", "free"), ("my-unknown-model", "unpriced")] {
        let r = s
            .app
            .http
            .post(format!("{}/v1/chat/completions", s.app.url))
            .bearer_auth(&s.key)
            .header("x-portkey-trace-id", trace)
            .json(&chat(&format!("@oai/{model}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "allow_all_models forwards unknown models");
    }
    s.app.flush_logs().await;
    let free = s.app.get("/v1/logs?trace_id=free", &s.key).await;
    assert_eq!(free.body["data"][0]["cost_exact"], "0");
    let unpriced = s.app.get("/v1/logs?trace_id=unpriced", &s.key).await;
    assert_eq!(
        unpriced.body["data"][0]["cost"],
        Value::Null,
        "unknown price is null, not 0"
    );
}

#[tokio::test]
async fn workspace_owned_integrations_stay_in_their_workspace() {
    let app = App::start().await;
    let a = app.workspace("A").await;
    let b = app.workspace("B").await;
    let r = app
        .post(
            "/v1/integrations",
            &app.admin_key,
            json!({"name": "own", "slug": "own", "ai_provider_id": "openai", "key": "k", "workspace_id": a}),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = app
        .put(
            "/v1/integrations/own/workspaces",
            &app.admin_key,
            json!({"workspaces": [{"id": b, "enabled": true}]}),
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "AB01"));
    let r = app
        .put(
            "/v1/integrations/own/workspaces",
            &app.admin_key,
            json!({"global_workspace_access": {"enabled": true}}),
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "AB01"));
    let r = app
        .put(
            "/v1/integrations/own/workspaces",
            &app.admin_key,
            json!({"workspaces": [{"id": "ws-nope-000000"}]}),
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "AB01"));
    // Its default provider exists in its workspace.
    let r = app
        .get(&format!("/v1/providers?workspace_id={a}"), &app.admin_key)
        .await;
    assert_eq!(r.body["data"][0]["slug"], "own");
}

#[tokio::test]
async fn providers_api_create_list_expire_delete() {
    let s = setup().await;
    let k = &s.app.admin_key;
    let ws = &s.ws;
    let r = s
        .app
        .post("/v1/providers", k, json!({"name": "Team copy", "integration_id": "oai", "workspace_id": ws, "slug": "oai-team", "note": "for team",
              "rate_limits": {"type": "requests", "unit": "rpm", "value": 1000}, "usage_limits": {"type": "tokens", "credit_limit": 100000}}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let list = s.app.get(&format!("/v1/providers?workspace_id={ws}"), k).await;
    assert_eq!(list.body["total"], 2);
    let item = list.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["slug"] == "oai-team")
        .unwrap()
        .clone();
    assert!(item["rate_limits"].is_object(), "an object in list items");
    assert_eq!(item["status"], "active");
    let detail = s.app.get(&format!("/v1/providers/oai-team?workspace_id={ws}"), k).await;
    assert!(detail.body["rate_limits"].is_array(), "an array in the detail");
    assert_eq!(detail.body["usage_limits"]["credit_limit"], 100000);
    assert_eq!(detail.body["note"], "for team");
    assert_eq!(s.chat("@oai-team/gpt-4o").await.status, 200);
    // Duplicate slug; an integration not provisioned here.
    let dup = s
        .app
        .post(
            "/v1/providers",
            k,
            json!({"name": "x", "integration_id": "oai", "workspace_id": ws, "slug": "oai-team"}),
        )
        .await;
    assert_eq!((dup.status, dup.code()), (409, "AB07"));
    let other = s.app.workspace("Other").await;
    let r = s
        .app
        .post(
            "/v1/providers",
            k,
            json!({"name": "x", "integration_id": "oai", "workspace_id": other}),
        )
        .await;
    assert_eq!((r.status, r.code()), (403, "AB03"));
    // Expiry: status expired, requests refused.
    let past = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let r = s
        .app
        .put(
            &format!("/v1/providers/oai-team?workspace_id={ws}"),
            k,
            json!({"expires_at": past}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "expired");
    let r = s.chat("@oai-team/gpt-4o").await;
    assert_eq!((r.status, r.error_type()), (403, "permission_error"));
    // A workspace key with providers.* manages its own workspace's providers only.
    let (_, wk) = s.app.workspace_key(ws, &["providers.*"]).await;
    assert_eq!(s.app.get("/v1/providers", &wk).await.body["total"], 2);
    let r = s.app.get(&format!("/v1/providers?workspace_id={other}"), &wk).await;
    assert_eq!((r.status, r.code()), (403, "AB03"));
    assert_eq!(s.app.delete("/v1/providers/oai-team", &wk).await.status, 200);
    let r = s.chat("@oai-team/gpt-4o").await;
    assert_eq!((r.status, r.error_type()), (404, "not_found_error"));
}

#[tokio::test]
async fn deleting_an_integration_revokes_it_everywhere() {
    let s = setup().await;
    assert_eq!(s.chat("@oai/gpt-4o").await.status, 200);
    assert_eq!(s.app.delete("/v1/integrations/oai", &s.app.admin_key).await.status, 200);
    let r = s.chat("@oai/gpt-4o").await;
    assert_eq!(r.status, 404);
}
