//! `/metrics`: an organisation admin key on the main listener, no key on
//! `metrics_listen`; label values only from what the control plane knows.

use crate::gateway::{chat, setup};
use crate::support::{content_type, App};
use serde_json::json;
use std::sync::Arc;
use tollgate_core::clock::SystemClock;

async fn metrics(url: &str, key: Option<&str>) -> (u16, String, String) {
    let mut req = reqwest::Client::new().get(format!("{url}/metrics"));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let ctype = content_type(&r);
    (status, ctype, r.text().await.unwrap())
}

#[tokio::test]
async fn metrics_need_an_organisation_admin_key() {
    let app = App::start().await;
    let (status, ctype, body) = metrics(&app.url, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(ctype.starts_with("application/json"), "{ctype}");
    let ws = app.workspace("metrics-ws").await;
    let (_, ws_key) = app.workspace_key(&ws, &["completions.write", "analytics.view"]).await;
    assert_eq!(metrics(&app.url, Some(&ws_key)).await.0, 403);
    assert_eq!(metrics(&app.url, Some("tg-not-a-key")).await.0, 401);
    let (status, ctype, _) = metrics(&app.url, Some(&app.admin_key)).await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    // The x-portkey-api-key header works as well.
    let r = reqwest::Client::new()
        .get(format!("{}/metrics", app.url))
        .header("x-portkey-api-key", &app.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn metrics_listen_serves_metrics_without_a_key() {
    let app = App::start_with(
        |c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap()),
        Arc::new(SystemClock),
    )
    .await;
    let internal = app.running.as_ref().unwrap().metrics_addr.expect("metrics address");
    let (status, _, body) = metrics(&format!("http://{internal}"), None).await;
    assert_eq!(status, 200, "{body}");
    // Only /metrics there; the main listener still wants the key.
    let r = reqwest::get(format!("http://{internal}/v1/admin/workspaces"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(metrics(&app.url, None).await.0, 401);
}

#[tokio::test]
async fn an_8_mib_model_id_leaves_the_metrics_small() {
    let s = setup().await;
    // A catalogue model of the integration's provider is named.
    let r = s.app.chat_raw(&s.key, &[], &chat("@oai/gpt-4o")).await;
    assert_eq!(r.status(), 200);
    let huge = format!("@oai/{}", "m".repeat(8 * 1024 * 1024));
    let r = s
        .app
        .chat_raw(
            &s.key,
            &[],
            &json!({"model": huge, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert!(r.status().as_u16() < 500, "{}", r.status());
    // Unknown models, however many, are one `other` series.
    for i in 0..50 {
        let m = format!("@oai/made-up-model-{i}");
        let _ = s.app.chat_raw(&s.key, &[], &chat(&m)).await;
    }
    let (status, _, text) = metrics(&s.app.url, Some(&s.app.admin_key)).await;
    assert_eq!(status, 200);
    assert!(text.len() < 2 * 1024 * 1024, "/metrics is {} bytes", text.len());
    assert!(!text.contains("mmmmmmmmmmmmmmmm"), "the long model id became a label");
    assert!(!text.contains("made-up-model"), "unknown models became labels");
    assert!(
        text.lines()
            .any(|l| l.contains(&s.ws) && l.contains("model=\"gpt-4o\"")),
        "a known model is named"
    );
    assert!(text.lines().any(|l| l.contains(&s.ws) && l.contains("model=\"other\"")));
}
