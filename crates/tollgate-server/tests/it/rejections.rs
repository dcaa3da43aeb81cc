//! Every error answer is JSON in the API's shape, including the ones the
//! HTTP framework produces: 404 on unknown routes, 405, 413, 415 and 400
//! from body extractors.

use crate::gateway::setup;
use crate::support::{content_type, App};
use std::sync::Arc;
use tollgate_core::clock::SystemClock;

async fn check(r: reqwest::Response, status: u16, gateway: bool) {
    assert_eq!(r.status().as_u16(), status);
    let ctype = content_type(&r);
    let text = r.text().await.unwrap();
    assert!(ctype.starts_with("application/json"), "{status}: {ctype} {text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON body");
    if gateway {
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(v["error"]["type"].is_string(), "{v}");
    } else {
        assert_eq!(v["success"], false, "{v}");
        assert!(v["data"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(
            v["data"]["errorCode"].as_str().is_some_and(|c| c.starts_with("AB")),
            "{v}"
        );
    }
}

#[tokio::test]
async fn framework_rejections_are_json() {
    let s = setup().await;
    let http = reqwest::Client::new();
    let url = &s.app.url;
    // 405 on a gateway route and an admin route, keeping `Allow`.
    let r = http
        .get(format!("{url}/v1/chat/completions"))
        .bearer_auth(&s.key)
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("allow"));
    check(r, 405, true).await;
    let r = http
        .patch(format!("{url}/v1/admin/workspaces"))
        .header("x-portkey-api-key", &s.app.admin_key)
        .send()
        .await
        .unwrap();
    check(r, 405, false).await;
    // 404 on unknown routes.
    check(http.get(format!("{url}/nope")).send().await.unwrap(), 404, false).await;
    check(
        http.post(format!("{url}/v1/chat/nope")).send().await.unwrap(),
        404,
        true,
    )
    .await;
    // 415 and 400 from the admin API's JSON extractor.
    for (ctype, body) in [("text/plain", "{\"name\":\"x\"}"), ("application/json", "{not json")] {
        let r = http
            .post(format!("{url}/v1/admin/workspaces"))
            .header("x-portkey-api-key", &s.app.admin_key)
            .header("content-type", ctype)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{ctype}");
        let st = r.status().as_u16();
        check(r, st, false).await;
    }
}

#[tokio::test]
async fn oversized_bodies_get_a_json_413() {
    let app = App::start_with(|c| c.max_body_bytes = 1024, Arc::new(SystemClock)).await;
    let http = reqwest::Client::new();
    let big = format!(
        "{{\"model\":\"@x/y\",\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
        "a".repeat(4096)
    );
    let r = http
        .post(format!("{}/v1/chat/completions", app.url))
        .bearer_auth(&app.admin_key)
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    check(r, 413, true).await;
    let r = http
        .post(format!("{}/v1/admin/workspaces", app.url))
        .header("x-portkey-api-key", &app.admin_key)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    // The admin API's own body extractor answers AB01 (400).
    let st = r.status().as_u16();
    assert!(st == 413 || st == 400, "{st}");
    check(r, st, false).await;
}
