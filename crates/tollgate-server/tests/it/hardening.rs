//! Bounds on what a caller can ask for: analytics over any range, pages far
//! beyond the end, names and fields of admin input, and what a workspace key
//! can learn about other workspaces.

use crate::gateway::{chat, setup};
use serde_json::json;
use std::time::{Duration, Instant};
use tollgate_store::usage::UsageRecord;

#[tokio::test]
async fn analytics_over_any_range_answers_at_once() {
    let s = setup().await;
    let admin = s.app.admin_key.clone();
    for _ in 0..3 {
        assert_eq!(
            s.app
                .post("/v1/chat/completions", &s.key, chat("@oai/gpt-4o"))
                .await
                .status,
            200
        );
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
            format!("/v1/analytics/graphs/latency?time_of_generation_min=1000-01-01"),
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
    // An interval that would need too many points is refused, naming why.
    let r = s
        .app
        .get(&format!("/v1/analytics/graphs/requests?interval=day&{far}"), &admin)
        .await;
    assert_eq!((r.status, r.code()), (400, "AB01"), "{:?}", r.body);
    assert!(r.body["data"]["message"].as_str().unwrap().contains("buckets"));
}

#[tokio::test]
async fn a_graph_without_interval_over_sparse_far_data_stays_bounded() {
    let s = setup().await;
    let admin = s.app.admin_key.clone();
    // Two requests 30 years apart: weeks between them fit under the cap.
    let now = chrono::Utc::now();
    for (i, at) in [now - chrono::Duration::days(365 * 30), now].into_iter().enumerate() {
        s.app.state().usage.record(UsageRecord {
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
    let r = s
        .app
        .get(
            "/v1/analytics/summary?time_of_generation_min=1000-01-01&total_units_min=1",
            &admin,
        )
        .await;
    assert_eq!(r.body["data"]["requests"], 2, "{:?}", r.body);
}
