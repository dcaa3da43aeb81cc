//! Analytics: every metric against values computed by hand from a known set
//! of logged requests, roll-ups against raw rows, filters, empty ranges,
//! CSV, workspace confinement, per-limit figures, alerts and /metrics.

use crate::support::{manual_clock, App};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tollgate_store::request_log::LogRecord;

const NOW: &str = "2026-03-12T12:00:00Z";
/// Covers the data set without containing a whole UTC day: raw rows only,
/// so percentiles are exact.
const RAW: &str = "time_of_generation_min=2026-03-10T00:00:01Z&time_of_generation_max=2026-03-11T23:59:58Z";
/// The two whole days: served from the daily roll-ups.
const DAYS: &str = "time_of_generation_min=2026-03-10T00:00:00Z&time_of_generation_max=2026-03-11T23:59:59.999Z";

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

struct Data {
    app: App,
    ws_a: String,
    ws_b: String,
    k_a1: String,
    k_a2: String,
    k_b1: String,
}

#[allow(clippy::too_many_arguments)]
fn rec(
    n: u32,
    at: &str,
    ws: Option<&str>,
    key: Option<&str>,
    prov: Option<(&str, &str, &str)>,
    status: u16,
) -> LogRecord {
    LogRecord {
        id: format!("r{n}"),
        created_at: t(at),
        trace_id: format!("t{n}"),
        workspace_id: ws.map(str::to_owned),
        api_key_id: key.map(str::to_owned),
        provider_slug: prov.map(|p| p.0.to_owned()),
        integration_slug: prov.map(|p| p.0.to_owned()),
        ai_provider_id: prov.map(|p| p.1.to_owned()),
        model: prov.map(|p| p.2.to_owned()),
        endpoint: "chat.completions".into(),
        status_code: status,
        ..Default::default()
    }
}

fn tokens(mut r: LogRecord, p: u64, c: u64, cost: Option<i64>) -> LogRecord {
    r.prompt_tokens = p;
    r.completion_tokens = c;
    r.total_tokens = p + c;
    r.cost_picos = cost;
    r
}

fn timing(mut r: LogRecord, latency: u64, upstream: Option<u64>, ttft: Option<u64>) -> LogRecord {
    r.latency_us = latency;
    r.upstream_latency_us = upstream;
    r.ttft_us = ttft;
    r
}

fn refused(mut r: LogRecord, why: &str, kind: &str, latency: u64) -> LogRecord {
    r.refusal = Some(why.into());
    r.error_type = Some(kind.into());
    r.latency_us = latency;
    r
}

fn meta(mut r: LogRecord, env: &str) -> LogRecord {
    let mut m = serde_json::Map::new();
    m.insert("env".into(), json!(env));
    r.metadata = Some(m);
    r
}

/// Eleven requests over 2026-03-10 and 2026-03-11 (see the hand
/// computations in `every_metric_matches_hand_computed_values`).
async fn data() -> Data {
    let (_clock, shared) = manual_clock(NOW);
    let app = App::start_with(|_| {}, shared).await;
    let ws_a = app.workspace("team-a").await;
    let ws_b = app.workspace("team-b").await;
    let (a, b) = (Some(ws_a.as_str()), Some(ws_b.as_str()));
    let (k_a1, k_a2, k_b1) = ("key-a1".to_owned(), "key-a2".to_owned(), "key-b1".to_owned());
    let oa = Some(("openai-a", "openai", "gpt-4o"));
    let oam = Some(("openai-a", "openai", "gpt-4o-mini"));
    let ab = Some(("anth-b", "anthropic", "claude"));
    let ka1 = Some(k_a1.as_str());
    let ka2 = Some(k_a2.as_str());
    let kb1 = Some(k_b1.as_str());
    let mut r2 = timing(
        tokens(
            rec(2, "2026-03-10T10:00:30Z", a, ka1, oa, 200),
            200,
            100,
            Some(3_000_000_000),
        ),
        200_000,
        Some(195_000),
        Some(50_000),
    );
    r2.streamed = true;
    let mut r3 = timing(
        tokens(rec(3, "2026-03-10T10:05:00Z", a, ka2, oam, 200), 10, 5, None),
        300_000,
        Some(280_000),
        Some(100_000),
    );
    r3.streamed = true;
    r3.cancelled = true;
    let mut r1 = timing(
        tokens(
            rec(1, "2026-03-10T10:00:00Z", a, ka1, oa, 200),
            100,
            50,
            Some(1_000_000_000),
        ),
        100_000,
        Some(90_000),
        None,
    );
    r1.cached_tokens = 10;
    let rows = vec![
        meta(r1, "prod"),
        r2,
        r3,
        refused(
            rec(4, "2026-03-10T11:00:00Z", a, ka2, oa, 429),
            "rate_limit",
            "workspace_rate_limit_error",
            1_000,
        ),
        refused(
            rec(5, "2026-03-10T11:01:00Z", a, ka1, oa, 412),
            "budget",
            "api_key_exhaust_error",
            2_000,
        ),
        refused(
            rec(6, "2026-03-10T11:02:00Z", a, ka1, oam, 412),
            "policy",
            "model_not_allowed_error",
            3_000,
        ),
        {
            let mut r = timing(
                rec(7, "2026-03-11T09:00:00Z", b, kb1, ab, 502),
                500_000,
                Some(499_000),
                None,
            );
            r.error_type = Some("upstream_error".into());
            r
        },
        {
            let mut r = timing(
                rec(8, "2026-03-11T09:30:00Z", b, kb1, ab, 504),
                30_000_000,
                Some(29_998_000),
                None,
            );
            r.error_type = Some("timeout_error".into());
            r
        },
        refused(
            rec(9, "2026-03-11T10:00:00Z", None, None, None, 401),
            "auth",
            "authentication_error",
            500,
        ),
        meta(
            timing(
                tokens(
                    rec(10, "2026-03-11T09:45:00Z", b, kb1, ab, 200),
                    400,
                    100,
                    Some(6_000_000_000),
                ),
                400_000,
                Some(396_000),
                None,
            ),
            "staging",
        ),
        refused(
            rec(11, "2026-03-11T10:30:00Z", b, kb1, None, 403),
            "permission",
            "permission_error",
            700,
        ),
    ];
    for r in rows {
        app.state().usage.record(r);
    }
    app.flush_logs().await;
    Data {
        app,
        ws_a,
        ws_b,
        k_a1,
        k_a2,
        k_b1,
    }
}

async fn summary(d: &Data, query: &str) -> Value {
    let r = d
        .app
        .get(&format!("/v1/analytics/summary?{query}"), &d.app.admin_key)
        .await;
    assert_eq!(r.status, 200, "{query}: {:?}", r.body);
    assert_eq!(r.body["object"], "analytics-summary");
    r.body["data"].clone()
}

#[tokio::test]
async fn every_metric_matches_hand_computed_values() {
    let d = data().await;
    let s = summary(&d, RAW).await;
    let expect = json!({
        "requests": 11,
        "successful_requests": 4,            // r1 r2 r3 r10
        "failed_requests": 7,
        "error_rate": 63.64,                 // 7 / 11
        "status_4xx": 5,                     // 429 412 412 401 403
        "status_5xx": 2,                     // 502 504
        "upstream_errors": 1,
        "timeouts": 1,
        "refused_rate_limit": 1,
        "refused_budget": 1,
        "refused_policy": 1,
        "refused_auth": 1,
        "refused_permission": 1,
        "cancelled": 1,
        "streamed": 2,
        "prompt_tokens": 710,                // 100 + 200 + 10 + 400
        "completion_tokens": 255,            // 50 + 100 + 5 + 100
        "cached_tokens": 10,
        "total_tokens": 965,
    });
    let expect2 = json!({
        "avg_tokens_per_request": 87.73,     // 965 / 11
        "cost": 0.01,                        // (1 + 3 + 6) × 10⁹ picodollars
        "cost_exact": "0.01",
        "priced_requests": 3,                // r3 has no price
        "avg_cost_per_request": 0.003333333333,
        "cost_per_1k_tokens": 0.010526315789, // 10¹⁰ × 1000 / 950 priced tokens
        "latency_mean_ms": 2864.291,         // 31 507 200 µs / 11
        "latency_p50_ms": 100.0,             // 6th of 11 sorted
        "latency_p90_ms": 500.0,             // 10th
        "latency_p95_ms": 30000.0,           // 11th
        "latency_p99_ms": 30000.0,
        "latency_max_ms": 30000.0,
        "ttft_p50_ms": 50.0,                 // r2 50 ms, r3 100 ms
        "ttft_p95_ms": 100.0,
        "ttft_p99_ms": 100.0,
        "gateway_overhead_p50_ms": 4.0,      // 1 2 4 5 10 20 ms
        "gateway_overhead_p99_ms": 20.0,
        "output_tokens_per_second": 265.35,  // 255 tokens / 0.961 s upstream
        "unique_api_keys": 3,
        "unique_models": 3,
        "unique_workspaces": 2,
        "unique_providers": 2,
        "peak_requests_per_minute": 2,       // r1 and r2 at 10:00
        "peak_minute": "2026-03-10T10:00:00Z",
        "alerts_sent": 0,
        "budgets": [],
        "rate_limits": [],
    });
    for (k, v) in expect.as_object().unwrap().iter().chain(expect2.as_object().unwrap()) {
        assert_eq!(&s[k], v, "metric {k}");
    }
}

#[tokio::test]
async fn rollup_days_agree_with_raw_rows() {
    let d = data().await;
    let raw = summary(&d, RAW).await;
    let days = summary(&d, DAYS).await;
    for (k, v) in raw.as_object().unwrap() {
        if k.contains("_p") || k.starts_with("time_of") {
            continue;
        }
        assert_eq!(&days[k], v, "{k}");
    }
    // Percentiles from histograms are within 1/32 of the exact ones.
    for k in [
        "latency_p50_ms",
        "latency_p90_ms",
        "latency_p99_ms",
        "ttft_p50_ms",
        "ttft_p95_ms",
        "gateway_overhead_p50_ms",
    ] {
        let (e, a) = (raw[k].as_f64().unwrap(), days[k].as_f64().unwrap());
        assert!((e - a).abs() <= e / 32.0, "{k}: exact {e}, from roll-ups {a}");
    }
    // A day graph over the same range reads the roll-ups too.
    let g = d
        .app
        .get(
            &format!("/v1/analytics/graphs/requests?interval=day&{DAYS}"),
            &d.app.admin_key,
        )
        .await;
    assert_eq!(g.status, 200);
    let pts: Vec<(String, u64)> = g.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["timestamp"].as_str().unwrap().to_owned(),
                p["total"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        pts,
        vec![
            ("2026-03-10T00:00:00Z".to_owned(), 6),
            ("2026-03-11T00:00:00Z".to_owned(), 5)
        ]
    );
    assert_eq!(g.body["summary"], json!({"total": 11, "successful": 4, "failed": 7}));
    assert_eq!(g.body["data"], g.body["data_points"]);
}

#[tokio::test]
async fn empty_ranges_and_filters_that_match_nothing() {
    let d = data().await;
    for q in [
        "time_of_generation_min=2026-01-01T00:00:00Z&time_of_generation_max=2026-01-02T00:00:00Z",
        "time_of_generation_min=2026-03-10T10:00:00Z&time_of_generation_max=2026-03-10T10:00:00Z&status_code=404",
        &format!("{RAW}&status_code=418"),
        &format!("{RAW}&cache_status=HIT"),
        &format!("{RAW}&api_key_ids=nobody"),
        &format!("{RAW}&metadata=%7B%22env%22%3A%22nowhere%22%7D"),
        &format!("{DAYS}&workspace_slug=no-such-workspace"),
    ] {
        let s = summary(&d, q).await;
        assert_eq!(s["requests"], 0, "{q}");
        assert_eq!(s["cost"], 0.0, "{q}");
        assert_eq!(s["error_rate"], Value::Null, "{q}");
        assert_eq!(s["latency_p50_ms"], Value::Null, "{q}");
        assert_eq!(s["avg_cost_per_request"], Value::Null, "{q}");
        assert_eq!(s["peak_requests_per_minute"], 0, "{q}");
        assert_eq!(s["unique_api_keys"], 0, "{q}");
    }
    // A single instant is a valid, inclusive range.
    let one = summary(
        &d,
        "time_of_generation_min=2026-03-10T10:00:00Z&time_of_generation_max=2026-03-10T10:00:00Z",
    )
    .await;
    assert_eq!(one["requests"], 1);
    let g = d.app.get("/v1/analytics/graphs/cost?interval=hour&time_of_generation_min=2026-01-01T00:00:00Z&time_of_generation_max=2026-01-01T02:59:00Z", &d.app.admin_key).await;
    assert_eq!(g.status, 200);
    assert_eq!(
        g.body["data"].as_array().unwrap().len(),
        3,
        "empty buckets are listed with zeros"
    );
    assert_eq!(g.body["data"][0]["total"], 0.0);
    let grp = d.app.get("/v1/analytics/groups/users?time_of_generation_min=2026-01-01T00:00:00Z&time_of_generation_max=2026-01-02T00:00:00Z", &d.app.admin_key).await;
    assert_eq!(grp.body, json!({"object": "analytics-group", "total": 0, "data": []}));
}

#[tokio::test]
async fn each_filter_narrows_as_documented() {
    let d = data().await;
    let cases: Vec<(String, u64)> = vec![
        ("workspace_slug=team-a".to_owned(), 6),
        (format!("workspace_slug={}", d.ws_b), 4),
        (format!("api_key_ids={}", d.k_b1), 4),
        (format!("api_key_ids={},{}", d.k_a1, d.k_a2), 6),
        ("virtual_keys=anth-b".into(), 3),
        ("virtual_keys=anth-b,openai-a".into(), 9),
        ("ai_org_model=openai__gpt-4o".into(), 4),
        ("ai_org_model=openai-a__gpt-4o-mini".into(), 2),
        ("ai_org_model=gpt-4o-mini".into(), 2),
        ("ai_org_model=anthropic__gpt-4o".into(), 0),
        ("status_code=200,429".into(), 5),
        ("total_units_min=200".into(), 2),
        ("total_units_max=100".into(), 8),
        ("total_units_min=100&total_units_max=300".into(), 2),
        ("cost_min=0.002".into(), 2),
        ("cost_max=0.001".into(), 1),
        ("metadata=%7B%22env%22%3A%22prod%22%7D".into(), 1),
        ("cache_status=DISABLED".into(), 11),
    ];
    for (q, n) in cases {
        for range in [RAW, DAYS] {
            let s = summary(&d, &format!("{range}&{q}")).await;
            assert_eq!(s["requests"], n, "{q} over {range}");
        }
    }
    // Time bounds are inclusive.
    let s = summary(
        &d,
        "time_of_generation_min=2026-03-10T10:00:00Z&time_of_generation_max=2026-03-10T10:05:00Z",
    )
    .await;
    assert_eq!(s["requests"], 3);
    // Offsets are honoured: 15:30+05:30 is 10:00Z.
    let s = summary(
        &d,
        "time_of_generation_min=2026-03-10T15:30:00%2B05:30&time_of_generation_max=2026-03-10T15:30:30%2B05:30",
    )
    .await;
    assert_eq!(s["requests"], 2);
    // Default range: the 30 days before now.
    assert_eq!(summary(&d, "").await["requests"], 11);
}

#[tokio::test]
async fn bad_filters_are_rejected_with_ab01() {
    let d = data().await;
    for q in [
        "time_of_generation_min=yesterday",
        "time_of_generation_min=2026-03-11T00:00:00Z&time_of_generation_max=2026-03-10T00:00:00Z",
        "status_code=abc",
        "status_code=99",
        "total_units_min=-1",
        "total_units_min=10&total_units_max=5",
        "cost_min=lots",
        "cost_min=-1",
        "cost_min=2&cost_max=1",
        "metadata=not-json",
        "metadata=%7B%22a%22%3A1%7D",
        "ai_org_model=__gpt",
        "cache_status=maybe",
        "configs=pc-1",
        "prompt_slug=p",
    ] {
        let r = d.app.get(&format!("/v1/analytics/summary?{q}"), &d.app.admin_key).await;
        assert_eq!((r.status, r.code()), (400, "AB01"), "{q}: {:?}", r.body);
        assert!(!r.body["data"]["message"].as_str().unwrap().is_empty());
    }
    for path in [
        "/v1/analytics/graphs/requests?interval=fortnight",
        "/v1/analytics/graphs/requests?format=xml",
        "/v1/analytics/groups/users?order_by=shoe_size",
        "/v1/analytics/groups/users?order_by_type=sideways",
        "/v1/analytics/groups/users?page_size=0",
        "/v1/analytics/groups/config",
    ] {
        let r = d.app.get(path, &d.app.admin_key).await;
        assert_eq!((r.status, r.code()), (400, "AB01"), "{path}: {:?}", r.body);
    }
    let r = d.app.get("/v1/analytics/graphs/feelings", &d.app.admin_key).await;
    assert_eq!((r.status, r.code()), (404, "AB08"));
    let r = d.app.get("/v1/analytics/groups/shoes", &d.app.admin_key).await;
    assert_eq!((r.status, r.code()), (404, "AB08"));
    let r = d
        .app
        .call(reqwest::Method::GET, "/v1/analytics/summary", None, None)
        .await;
    assert_eq!((r.status, r.code()), (401, "AB05"));
}

#[tokio::test]
async fn workspace_keys_see_only_their_workspace() {
    let d = data().await;
    let (_, viewer) = d.app.workspace_key(&d.ws_a, &["analytics.view"]).await;
    let (_, plain) = d.app.workspace_key(&d.ws_a, &["completions.write"]).await;
    let r = d.app.get(&format!("/v1/analytics/summary?{RAW}"), &viewer).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["data"]["requests"], 6);
    assert_eq!(r.body["data"]["unique_workspaces"], 1);
    for q in ["workspace_slug=team-a", &format!("workspace_slug={}", d.ws_a)] {
        let r = d.app.get(&format!("/v1/analytics/summary?{RAW}&{q}"), &viewer).await;
        assert_eq!(r.body["data"]["requests"], 6, "{q}");
    }
    for path in [
        format!("/v1/analytics/summary?{RAW}&workspace_slug=team-b"),
        format!("/v1/analytics/graphs/requests?{RAW}&workspace_slug={}", d.ws_b),
        format!("/v1/analytics/groups/users?{RAW}&workspace_slug=team-a,team-b"),
    ] {
        let r = d.app.get(&path, &viewer).await;
        assert_eq!((r.status, r.code()), (403, "AB03"), "{path}");
    }
    let r = d
        .app
        .get(&format!("/v1/analytics/groups/workspaces?{RAW}"), &viewer)
        .await;
    assert_eq!(r.body["total"], 1);
    assert_eq!(r.body["data"][0]["workspace_id"], d.ws_a.as_str());
    assert_eq!(r.body["data"][0]["workspace_slug"], "team-a");
    let r = d.app.get(&format!("/v1/analytics/summary?{RAW}"), &plain).await;
    assert_eq!((r.status, r.code()), (403, "AB03"));
    // The organisation key sees both workspaces.
    let r = d
        .app
        .get(&format!("/v1/analytics/groups/workspaces?{RAW}"), &d.app.admin_key)
        .await;
    assert_eq!(r.body["total"], 3, "team-a, team-b and the unauthenticated request");
}

#[tokio::test]
async fn graphs_have_their_documented_points() {
    let d = data().await;
    let get = |name: &str| {
        let app = &d.app;
        let path = format!("/v1/analytics/graphs/{name}?interval=day&{DAYS}");
        async move {
            let r = app.get(&path, &app.admin_key).await;
            assert_eq!(r.status, 200, "{path}: {:?}", r.body);
            assert_eq!(r.body["object"], "analytics-graph");
            r.body
        }
    };
    let cost = get("cost").await;
    assert_eq!(cost["data"][0]["total"], 0.004);
    assert_eq!(cost["data"][0]["avg"], 0.002);
    assert_eq!(cost["data"][1]["total"], 0.006);
    assert_eq!(cost["summary"]["total"], 0.01);
    let tokens = get("tokens").await;
    assert_eq!(tokens["data"][0]["total"], 465);
    assert_eq!(tokens["data"][1]["total"], 500);
    assert_eq!(tokens["summary"]["prompt"], 710);
    let users = get("users").await;
    assert_eq!(users["data"][0]["total"], 2);
    assert_eq!(users["data"][1]["total"], 1);
    assert_eq!(users["summary"]["total"], 3);
    let ur = get("users/requests").await;
    assert_eq!(ur["data"][0]["avg"], 3.0);
    let errors = get("errors").await;
    assert_eq!(errors["data"][0]["total"], 3);
    assert_eq!(errors["data"][1]["total"], 4);
    assert_eq!(errors["summary"]["refused_auth"], 1);
    let rate = get("errors/rate").await;
    assert_eq!(rate["data"][0]["rate"], 50.0);
    assert_eq!(rate["data"][1]["rate"], 80.0);
    let codes = get("errors/status-codes").await;
    assert_eq!(codes["data"][0]["status_codes"], json!({"412": 2, "429": 1}));
    assert_eq!(
        codes["summary"]["status_codes"],
        json!({"401": 1, "403": 1, "412": 2, "429": 1, "502": 1, "504": 1})
    );
    let lat = get("latency").await;
    assert_eq!(lat["summary"]["max"], 30000.0);
    assert!(lat["data"][0]["p50"].is_number());
    for (name, field, v) in [
        ("requests/rescued", "total", json!(0)),
        ("cache/hit-rate", "hits", json!(0)),
        ("cache/latency", "avg", Value::Null),
    ] {
        let g = get(name).await;
        assert_eq!(g["summary"][field], v, "{name}");
        assert_eq!(g["data"].as_array().unwrap().len(), 2, "{name}");
    }
    // Week buckets start on Sunday: 2026-03-08.
    let r = d
        .app
        .get(
            &format!("/v1/analytics/graphs/requests?interval=week&{DAYS}"),
            &d.app.admin_key,
        )
        .await;
    assert_eq!(
        r.body["data"],
        json!([{"timestamp": "2026-03-08T00:00:00Z", "total": 11, "successful": 4, "failed": 7}])
    );
    // Minute buckets straddling the 10:00 burst.
    let r = d
        .app
        .get("/v1/analytics/graphs/requests?interval=minute&time_of_generation_min=2026-03-10T09:59:00Z&time_of_generation_max=2026-03-10T10:01:00Z", &d.app.admin_key)
        .await;
    let totals: Vec<u64> = r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["total"].as_u64().unwrap())
        .collect();
    assert_eq!(totals, vec![0, 2, 0]);
    // Without an interval, two days are graphed by the hour.
    let r = d
        .app
        .get(&format!("/v1/analytics/graphs/requests?{DAYS}"), &d.app.admin_key)
        .await;
    assert_eq!(r.body["interval"], "hour");
    assert_eq!(r.body["data"].as_array().unwrap().len(), 48);
}

#[tokio::test]
async fn groups_with_order_paging_and_csv() {
    let d = data().await;
    let r = d
        .app
        .get(&format!("/v1/analytics/groups/ai-models?{DAYS}"), &d.app.admin_key)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["object"], "analytics-group");
    assert_eq!(
        r.body["total"], 4,
        "gpt-4o, gpt-4o-mini, claude, and none (refused before resolution)"
    );
    assert_eq!(r.body["data"][0]["ai_org_model"], "openai__gpt-4o");
    assert_eq!(r.body["data"][0]["requests"], 4);
    assert_eq!(r.body["data"][0]["cost"], 0.004);
    let r = d
        .app
        .get(
            &format!("/v1/analytics/groups/users?{DAYS}&order_by=cost&order_by_type=desc&page_size=1&current_page=0"),
            &d.app.admin_key,
        )
        .await;
    assert_eq!(r.body["total"], 4);
    assert_eq!(r.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["data"][0]["api_key_id"], d.k_b1.as_str());
    assert_eq!(r.body["data"][0]["cost"], 0.006);
    let r = d
        .app
        .get(
            &format!("/v1/analytics/groups/users?{DAYS}&order_by=requests&order_by_type=asc&pageSize=1&currentPage=1"),
            &d.app.admin_key,
        )
        .await;
    assert_eq!(
        r.body["data"][0]["api_key_id"],
        d.k_a2.as_str(),
        "1 (none), 2 (a2), 4, 4"
    );
    let r = d
        .app
        .get(
            &format!("/v1/analytics/groups/status_code?{DAYS}&order_by=status_code&order_by_type=asc"),
            &d.app.admin_key,
        )
        .await;
    let codes: Vec<u64> = r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["status_code"].as_u64().unwrap())
        .collect();
    assert_eq!(codes, vec![200, 401, 403, 412, 429, 502, 504]);
    let r = d
        .app
        .get(
            &format!("/v1/analytics/groups/metadata/env?{DAYS}&order_by=metadata_value&order_by_type=asc"),
            &d.app.admin_key,
        )
        .await;
    assert_eq!(r.body["total"], 2);
    assert_eq!(r.body["data"][0]["metadata_value"], "prod");
    assert_eq!(r.body["data"][0]["total_tokens"], 150);
    assert_eq!(r.body["data"][1]["metadata_value"], "staging");
    for (name, key, n) in [
        ("provider", "provider", 3),
        ("model", "model", 4),
        ("workspace", "workspace_id", 3),
        ("ai_service", "ai_service", 3),
        ("api_key", "api_key_id", 4),
    ] {
        let r = d
            .app
            .get(&format!("/v1/analytics/groups/{name}?{DAYS}"), &d.app.admin_key)
            .await;
        assert_eq!(r.body["total"], n, "{name}");
        assert!(r.body["data"][0].get(key).is_some(), "{name}");
    }

    // CSV: a header row, then one line per group or bucket.
    let resp = d
        .app
        .http
        .get(format!(
            "{}/v1/analytics/groups/provider?{DAYS}&format=csv&order_by=requests",
            d.app.url
        ))
        .header("x-portkey-api-key", &d.app.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let text = resp.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(
        lines[0].starts_with("provider,requests,successful_requests,"),
        "{}",
        lines[0]
    );
    assert!(lines[1].starts_with("openai-a,6,3,"), "{}", lines[1]);
    let resp = d
        .app
        .http
        .get(format!(
            "{}/v1/analytics/graphs/errors/status-codes?interval=day&{DAYS}&format=csv",
            d.app.url
        ))
        .header("x-portkey-api-key", &d.app.admin_key)
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "timestamp,total,status_codes");
    assert_eq!(lines[1], "2026-03-10T00:00:00Z,3,\"{\"\"412\"\":2,\"\"429\"\":1}\"");
}

#[tokio::test]
async fn cache_summary_is_honestly_empty() {
    let d = data().await;
    let r = d
        .app
        .get(&format!("/v1/analytics/summary/cache?{DAYS}"), &d.app.admin_key)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["data"]["hits"], 0);
    assert_eq!(r.body["data"]["misses"], 0);
    assert_eq!(r.body["data"]["disabled"], 11);
    assert_eq!(r.body["data"]["hit_rate"], 0);
}

#[tokio::test]
async fn limits_and_alerts_appear_in_the_summary() {
    use tollgate_core::admission::Rule;
    use tollgate_store::outbox::{AlertKind, AlertPayload, Channel};
    let d = data().await;
    let r = d
        .app
        .post(
            "/v1/api-keys/workspace/service",
            &d.app.admin_key,
            json!({"name": "limited", "workspace_id": d.ws_a, "scopes": ["completions.write", "analytics.view"],
                   "usage_limits": {"type": "cost", "credit_limit": 10, "periodic_reset": "monthly"},
                   "rate_limits": [{"type": "requests", "unit": "rpm", "value": 10}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let (key_id, key) = (
        r.body["id"].as_str().unwrap().to_owned(),
        r.body["key"].as_str().unwrap().to_owned(),
    );
    let state = d.app.state().clone();
    state.refresh_if_changed().await.unwrap();
    let snap = state.snapshot();
    let entry = snap.key_by_id(&key_id).expect("key in snapshot");
    let now = state.now();
    for c in &entry.checks {
        let amount = match c.rule {
            Rule::Budget { .. } => 2_500_000_000_000, // $2.50 of $10
            Rule::Rate(_) => 3,
        };
        let group = tollgate_server::limit_check::group(entry.record.workspace_id.as_deref().unwrap_or_default());
        state
            .counters
            .restore(&group, &c.id, &c.rule, now, amount)
            .await
            .unwrap();
    }
    let outbox = state.store.outbox();
    let alert = AlertPayload {
        event_id: "evt-1".into(),
        kind: AlertKind::Threshold,
        level: "api_key".into(),
        limit_id: format!("key:{key_id}"),
        name: "limited".into(),
        workspace_id: Some(d.ws_a.clone()),
        limit_type: tollgate_core::limits::BudgetKind::Cost,
        consumed: "2.5".into(),
        credit_limit: "10".into(),
        alert_threshold: None,
        period_start: t("2026-03-01T00:00:00Z"),
        next_reset_at: None,
        recipients: vec![],
    };
    let e = outbox.enqueue(&alert, t("2026-03-10T12:00:00Z")).await.unwrap();
    outbox
        .mark_sent(&e.id, Channel::Webhook, t("2026-03-10T12:00:01Z"))
        .await
        .unwrap();

    let s = summary(&d, DAYS).await;
    assert_eq!(s["alerts_sent"], 1);
    let budget = s["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["limit_id"] == format!("key:{key_id}"))
        .expect("budget listed")
        .clone();
    assert_eq!(budget["consumed_percent"], 25.0);
    assert_eq!(budget["level"], "api_key");
    assert_eq!(budget["consumed"], json!(2.5));
    let rate = s["rate_limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["limit_id"] == format!("key:{key_id}"))
        .expect("rate listed")
        .clone();
    assert_eq!(rate["utilisation_percent"], 30.0);
    assert_eq!(rate["unit"], "rpm");
    // Outside the alert's time, or in another workspace, nothing was sent.
    assert_eq!(
        summary(&d, RAW.replace("2026-03-11T23:59:58Z", "2026-03-10T11:00:00Z").as_str()).await["alerts_sent"],
        0
    );
    assert_eq!(
        summary(&d, &format!("{DAYS}&workspace_slug=team-b")).await["alerts_sent"],
        0
    );
    assert_eq!(
        summary(&d, &format!("{DAYS}&workspace_slug=team-b")).await["budgets"],
        json!([])
    );
    // The key itself (analytics.view) sees its workspace's limits.
    let r = d.app.get(&format!("/v1/analytics/summary?{DAYS}"), &key).await;
    assert_eq!(r.body["data"]["budgets"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["data"]["alerts_sent"], 1);
}

#[tokio::test]
async fn prometheus_series_carry_bounded_labels() {
    let d = data().await;
    let mut r = tokens(
        rec(
            99,
            NOW,
            Some(d.ws_a.as_str()),
            Some("key-a1"),
            Some(("prom-prov", "openai", "prom-model")),
            200,
        ),
        7,
        3,
        Some(2_000_000),
    );
    r.latency_us = 1_500;
    r.upstream_latency_us = Some(1_000);
    let snap = d.app.state().snapshot();
    tollgate_server::metrics::record(&snap, &r);
    let mut refused_rec = refused(
        rec(100, NOW, Some(d.ws_a.as_str()), None, None, 429),
        "rate_limit",
        "workspace_rate_limit_error",
        100,
    );
    refused_rec.model = None;
    tollgate_server::metrics::record(&snap, &refused_rec);
    let text = d
        .app
        .http
        .get(format!("{}/metrics", d.app.url))
        .bearer_auth(&d.app.admin_key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let has = |prefix: &str, parts: &[&str]| {
        text.lines()
            .any(|l| l.starts_with(prefix) && parts.iter().all(|p| l.contains(p)))
    };
    assert!(
        has(
            "tollgate_requests_total",
            &["prom-prov", "model=\"other\"", "status=\"200\""]
        ),
        "a model the snapshot does not know is `other`: {text}"
    );
    assert!(!text.contains("prom-model"), "{text}");
    let other = ["prom-prov", "model=\"other\""];
    assert!(has("tollgate_tokens_total", &[other[0], other[1], "type=\"prompt\""]));
    assert!(has("tollgate_cost_microdollars_total", &other));
    assert!(has("tollgate_request_duration_seconds_bucket", &other));
    assert!(has("tollgate_gateway_overhead_seconds_bucket", &other));
    assert!(has("tollgate_refused_total", &["reason=\"rate_limit\""]));
}
