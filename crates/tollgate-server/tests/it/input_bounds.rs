//! Bounds on what a caller can ask for: analytics over any range, pages far
//! beyond the end, names and fields of admin input, and what a workspace key
//! can learn about other workspaces.

use crate::gateway::{chat, setup};
use serde_json::json;
use std::time::{Duration, Instant};
use tollgate_store::request_log::LogRecord;

#[tokio::test]
async fn analytics_over_any_range_answers_at_once() {
    let s = setup().await;
    let admin = s.app.admin_key.clone();
    for _ in 0..3 {
        assert_eq!(s.chat("@oai/gpt-4o").await.status, 200);
    }
    let (_, ws_key) = s.app.workspace_key(&s.ws, &["analytics.view"]).await;
    let far = "time_of_generation_min=1000-01-01&time_of_generation_max=9999-12-31T23:59:59Z";
    for (path, key) in [
        (format!("/v1/analytics/summary?{far}"), &admin),
        (format!("/v1/analytics/summary?{far}"), &ws_key),
        (
            format!("/v1/analytics/summary?{far}&metadata=%7B%22a%22%3A%22b%22%7D"),
            &ws_key,
        ),
        (format!("/v1/analytics/summary?{far}&total_units_min=1"), &admin),
        (format!("/v1/analytics/graphs/requests?{far}"), &admin),
        (
            "/v1/analytics/graphs/latency?time_of_generation_min=1000-01-01".to_owned(),
            &ws_key,
        ),
        (format!("/v1/analytics/groups/ai-models?{far}"), &ws_key),
        (format!("/v1/analytics/groups/metadata/env?{far}"), &admin),
        (format!("/v1/analytics/summary/cache?{far}"), &admin),
    ] {
        let started = Instant::now();
        let r = s.app.get(&path, key).await;
        let took = started.elapsed();
        assert_eq!(r.status, 200, "{path}: {:?}", r.body);
        assert!(took < Duration::from_secs(1), "{path} took {took:?}");
    }
    let r = s.app.get(&format!("/v1/analytics/summary?{far}"), &admin).await;
    assert_eq!(r.body["data"]["requests"], 3);
    // Without an interval, a graph over the whole of time has its points
    // where the requests are.
    let r = s.app.get(&format!("/v1/analytics/graphs/requests?{far}"), &admin).await;
    assert_eq!(r.body["summary"]["total"], 3, "{:?}", r.body);
    let points = r.body["data"].as_array().unwrap();
    assert!(!points.is_empty() && points.len() <= 10_000, "{} points", points.len());
    let total: u64 = points.iter().map(|p| p["total"].as_u64().unwrap()).sum();
    assert_eq!(total, 3);
    // With an interval, too long a range is narrowed to the data as well.
    let r = s
        .app
        .get(&format!("/v1/analytics/graphs/requests?interval=day&{far}"), &admin)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let points = r.body["data"].as_array().unwrap();
    assert!(!points.is_empty() && points.len() <= 2, "{} points", points.len());
    let total: u64 = points.iter().map(|p| p["total"].as_u64().unwrap()).sum();
    assert_eq!(total, 3);
}

#[tokio::test]
async fn a_graph_without_interval_over_sparse_far_data_stays_bounded() {
    let s = setup().await;
    let admin = s.app.admin_key.clone();
    // Two requests 30 years apart: weeks between them fit under the cap.
    let now = chrono::Utc::now();
    for (i, at) in [now - chrono::Duration::days(365 * 30), now].into_iter().enumerate() {
        s.app.state().usage.record(LogRecord {
            id: format!("req-far-{i}"),
            created_at: at,
            trace_id: "t".into(),
            workspace_id: Some(s.ws.clone()),
            endpoint: "chat.completions".into(),
            status_code: 200,
            total_tokens: 5,
            ..Default::default()
        });
    }
    let started = Instant::now();
    let r = s
        .app
        .get("/v1/analytics/graphs/tokens?time_of_generation_min=1000-01-01", &admin)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(r.body["interval"], "week");
    assert_eq!(r.body["summary"]["total"], 10);
    // Data itself too long for the interval asked for (30 years of days) is
    // refused, naming why.
    let r = s
        .app
        .get(
            "/v1/analytics/graphs/tokens?interval=day&time_of_generation_min=1000-01-01",
            &admin,
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "AB01"), "{:?}", r.body);
    assert!(r.body["data"]["message"].as_str().unwrap().contains("buckets"));
    let r = s
        .app
        .get(
            "/v1/analytics/summary?time_of_generation_min=1000-01-01&total_units_min=1",
            &admin,
        )
        .await;
    assert_eq!(r.body["data"]["requests"], 2, "{:?}", r.body);
}

#[tokio::test]
async fn a_page_beyond_the_end_is_empty_however_far() {
    let s = setup().await;
    let admin = s.app.admin_key.clone();
    assert_eq!(s.chat("@oai/gpt-4o").await.status, 200);
    let lists = [
        "/v1/admin/workspaces?",
        "/v1/api-keys?",
        "/v1/integrations?",
        &format!("/v1/providers?workspace_id={}&", s.ws),
        "/v1/audit-logs?",
        "/v1/logs?",
        "/v1/analytics/groups/ai-models?",
    ];
    for list in lists {
        let r = s.app.get(&format!("{list}current_page=0"), &admin).await;
        assert_eq!(r.status, 200, "{list}: {:?}", r.body);
        assert!(
            !r.body["data"].as_array().unwrap().is_empty(),
            "{list} has something on page 0"
        );
        for page in [
            "1000000000000000",
            "9223372036854775807",
            "18446744073709551615",
            "99999999999999999999999999999999999999",
        ] {
            for size in ["1", "1000"] {
                let r = s
                    .app
                    .get(&format!("{list}current_page={page}&page_size={size}"), &admin)
                    .await;
                assert_eq!(r.status, 200, "{list} page {page}: {:?}", r.body);
                assert_eq!(r.body["data"], json!([]), "{list} page {page} size {size}");
            }
        }
        for bad in ["-1", "x", "1e3"] {
            let r = s.app.get(&format!("{list}current_page={bad}"), &admin).await;
            assert_eq!(r.status, 400, "{list} page {bad}: {:?}", r.body);
        }
    }
}

#[tokio::test]
async fn admin_text_is_bounded_and_clean_with_the_field_named() {
    let s = setup().await;
    let admin = s.app.admin_key.clone();
    let long = "x".repeat(100_000);
    let bad_names = ["nul\u{0}byte", long.as_str(), "", "  ", "bell\u{7}", "line\nbreak"];
    let cases: Vec<(&str, &str, serde_json::Value, &str)> = bad_names
        .iter()
        .flat_map(|n| {
            [
                ("POST", "/v1/admin/workspaces".to_owned(), json!({"name": n}), "name"),
                (
                    "PUT",
                    format!("/v1/admin/workspaces/{}", s.ws),
                    json!({"name": n}),
                    "name",
                ),
                (
                    "POST",
                    "/v1/api-keys/workspace/service".to_owned(),
                    json!({"name": n, "workspace_id": s.ws}),
                    "name",
                ),
                (
                    "POST",
                    "/v1/integrations".to_owned(),
                    json!({"name": n, "ai_provider_id": "openai", "key": "sk-1"}),
                    "name",
                ),
                ("PUT", "/v1/integrations/oai".to_owned(), json!({"name": n}), "name"),
                (
                    "POST",
                    "/v1/providers".to_owned(),
                    json!({"name": n, "integration_id": "oai", "workspace_id": s.ws}),
                    "name",
                ),
                (
                    "PUT",
                    format!("/v1/providers/oai?workspace_id={}", s.ws),
                    json!({"name": n}),
                    "name",
                ),
            ]
        })
        .map(|(m, p, b, f)| (m, Box::leak(p.into_boxed_str()) as &str, b, f))
        .collect();
    let more: Vec<(&str, &str, serde_json::Value, &str)> = vec![
        (
            "POST",
            "/v1/admin/workspaces",
            json!({"name": "ok", "description": "d".repeat(2001)}),
            "description",
        ),
        (
            "POST",
            "/v1/admin/workspaces",
            json!({"name": "ok", "description": "nul\u{0}"}),
            "description",
        ),
        (
            "POST",
            "/v1/admin/workspaces",
            json!({"name": "ok", "slug": "s".repeat(65)}),
            "slug",
        ),
        (
            "POST",
            "/v1/admin/workspaces",
            json!({"name": "ok", "slug": "a/b"}),
            "slug",
        ),
        (
            "POST",
            "/v1/api-keys/workspace/service",
            json!({"workspace_id": s.ws, "description": long}),
            "description",
        ),
        (
            "POST",
            "/v1/integrations",
            json!({"name": "ok", "slug": "bad slug", "ai_provider_id": "openai", "key": "k"}),
            "slug",
        ),
        (
            "POST",
            "/v1/integrations",
            json!({"name": "ok", "ai_provider_id": "openai", "key": "sk\u{0}1"}),
            "key",
        ),
        (
            "POST",
            "/v1/integrations",
            json!({"name": "ok", "ai_provider_id": "openai", "key": "k", "configurations": {"custom_host": "ftp://x.example"}}),
            "custom_host",
        ),
        (
            "POST",
            "/v1/integrations",
            json!({"name": "ok", "ai_provider_id": "openai", "key": "k", "configurations": {"custom_host": "https://"}}),
            "custom_host",
        ),
        (
            "POST",
            "/v1/integrations",
            json!({"name": "ok", "ai_provider_id": "openai", "key": "k", "configurations": {"custom_host": "api.example.com"}}),
            "custom_host",
        ),
        (
            "POST",
            "/v1/integrations",
            json!({"name": "ok", "ai_provider_id": "openai", "key": "k", "configurations": {"custom_host": "https://exa\nmple.com"}}),
            "custom_host",
        ),
        (
            "PUT",
            "/v1/integrations/oai",
            json!({"configurations": {"custom_host": "file:///etc/passwd"}}),
            "custom_host",
        ),
        (
            "PUT",
            "/v1/integrations/oai",
            json!({"description": long}),
            "description",
        ),
        (
            "PUT",
            "/v1/integrations/oai/models",
            json!({"models": [{"slug": "m", "configurations": {"custom_host": "gopher://x"}}]}),
            "custom_host",
        ),
        (
            "PUT",
            "/v1/integrations/oai/models",
            json!({"models": [{"slug": "m\u{0}"}]}),
            "slug",
        ),
        (
            "POST",
            "/v1/providers",
            json!({"name": "ok", "integration_id": "oai", "workspace_id": s.ws, "note": "\u{1b}[31m"}),
            "note",
        ),
        (
            "PUT",
            "/v1/integrations/oai/workspaces",
            json!({"workspaces": [{"id": s.ws, "enabled": true, "models": ["gpt-4o", "x\u{0}"]}]}),
            "models",
        ),
        (
            "PUT",
            "/v1/integrations/oai/workspaces",
            json!({"workspaces": [{"id": s.ws, "enabled": true, "models": ["m".repeat(300)]}]}),
            "models",
        ),
    ];
    for (method, path, body, field) in cases.into_iter().chain(more) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = s.app.call(method.clone(), path, Some(&admin), Some(body.clone())).await;
        assert_eq!((r.status, r.code()), (400, "AB01"), "{method} {path}: {:?}", r.body);
        let message = r.body["data"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{method} {path}: '{message}' names {field}");
        assert!(message.len() < 400, "the message does not echo the input");
    }
    // Nothing was stored.
    let r = s.app.get("/v1/admin/workspaces", &admin).await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 2, "{:?}", r.body);
    // Good text still goes through: names up to 255 characters, any script.
    let r = s
        .app
        .post(
            "/v1/admin/workspaces",
            &admin,
            json!({"name": "é".repeat(255), "description": "two\nlines"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

#[tokio::test]
async fn a_workspace_key_cannot_tell_another_workspaces_objects_from_unknown_ones() {
    let s = setup().await;
    let admin = s.app.admin_key.clone();
    let other = s.app.workspace("Other").await;
    let r = s
        .app
        .post(
            "/v1/integrations",
            &admin,
            json!({"name": "theirs", "slug": "theirs", "ai_provider_id": "openai", "key": "sk-x", "workspace_id": other}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // An organisation integration never shared with this workspace.
    let r = s
        .app
        .post(
            "/v1/integrations",
            &admin,
            json!({"name": "org-only", "slug": "org-only", "ai_provider_id": "openai", "key": "sk-x"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let (_, key) = s
        .app
        .workspace_key(
            &s.ws,
            &[
                "completions.write",
                "workspace_integrations.read",
                "workspace_integrations.write",
                "providers.read",
                "providers.write",
            ],
        )
        .await;
    let same = |a: &crate::support::Resp, b: &crate::support::Resp, what: &str| {
        assert_eq!(
            (a.status, a.code(), a.error_type()),
            (b.status, b.code(), b.error_type()),
            "{what}: {:?} vs {:?}",
            a.body,
            b.body
        );
    };
    // Another workspace's integration: exactly as an unknown slug.
    for suffix in ["", "/models", "/workspaces"] {
        let a = s.app.get(&format!("/v1/integrations/theirs{suffix}"), &key).await;
        let b = s.app.get(&format!("/v1/integrations/no-such{suffix}"), &key).await;
        assert_eq!(a.status, 404, "theirs{suffix}: {:?}", a.body);
        same(&a, &b, suffix);
    }
    let a = s.app.put("/v1/integrations/theirs", &key, json!({"name": "n"})).await;
    let b = s.app.put("/v1/integrations/no-such", &key, json!({"name": "n"})).await;
    same(&a, &b, "update");
    let a = s.app.delete("/v1/integrations/theirs", &key).await;
    let b = s.app.delete("/v1/integrations/no-such", &key).await;
    same(&a, &b, "delete");
    let a = s
        .app
        .post("/v1/providers", &key, json!({"name": "p", "integration_id": "theirs"}))
        .await;
    let b = s
        .app
        .post("/v1/providers", &key, json!({"name": "p", "integration_id": "no-such"}))
        .await;
    assert_eq!(a.status, 400, "{:?}", a.body);
    same(&a, &b, "provider create");
    assert_eq!(
        a.body["data"]["message"].as_str().unwrap().replace("theirs", "no-such"),
        b.body["data"]["message"].as_str().unwrap()
    );
    let a = s.app.completion(&key, chat("@theirs/gpt-4o")).await;
    let b = s.app.completion(&key, chat("@no-such/gpt-4o")).await;
    assert_eq!(a.status, 404, "{:?}", a.body);
    same(&a, &b, "gateway");
    assert_eq!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .replace("theirs", "no-such"),
        b.body["error"]["message"].as_str().unwrap()
    );
    // The organisation's integrations not shared here are refused as such
    // (API.md: not provisioned to the key's workspace is 403).
    assert_eq!(s.app.get("/v1/integrations/org-only", &key).await.status, 403);
    let r = s.app.completion(&key, chat("@org-only/gpt-4o")).await;
    assert_eq!((r.status, r.error_type()), (403, "permission_error"));
    for path in [
        format!("/v1/admin/workspaces/{other}"),
        "/v1/admin/workspaces/other".to_owned(),
    ] {
        let a = s.app.get(&path, &key).await;
        let b = s.app.get("/v1/admin/workspaces/no-such", &key).await;
        same(&a, &b, &path);
    }
    let a = s.app.get(&format!("/v1/providers?workspace_id={other}"), &key).await;
    let b = s.app.get("/v1/providers?workspace_id=no-such", &key).await;
    assert_eq!(a.status, 403, "{:?}", a.body);
    same(&a, &b, "providers of another workspace");
    let a = s
        .app
        .post(
            "/v1/providers",
            &key,
            json!({"name": "p", "integration_id": "oai", "workspace_id": other}),
        )
        .await;
    let b = s
        .app
        .post(
            "/v1/providers",
            &key,
            json!({"name": "p", "integration_id": "oai", "workspace_id": "no-such"}),
        )
        .await;
    assert_eq!(a.status, 403, "{:?}", a.body);
    same(&a, &b, "a provider in another workspace");
    // The organisation key still sees everything.
    assert_eq!(s.app.get("/v1/integrations/theirs", &admin).await.status, 200);
}
