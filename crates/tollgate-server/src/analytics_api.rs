//! The analytics API (`/v1/analytics/...`): the paths and filters of the
//! `portkey-ai` SDK's `client.analytics` (graphs, groups, cache summary) and
//! `GET /v1/analytics/summary` with every metric. Parsing the filters,
//! confining workspace keys to their workspace, turning aggregates into
//! metrics (money from exact picodollars, converted for display last), and
//! rendering JSON or CSV live here; the sums themselves come from
//! [`tollgate_store::analytics`].

use crate::auth::Caller;
use crate::error::AdminError;
use crate::state::SharedState;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use tollgate_core::admission::{LimitCheck, Rule};
use tollgate_core::limits::{BudgetKind, RateKind, RateUnit};
use tollgate_core::money::Money;
use tollgate_store::analytics::{self as store, Agg, Cells, Filter, GroupBy, Interval, ModelMatch};

/// The range used when `time_of_generation_min` is absent: 30 days before
/// the end of the range.
pub const DEFAULT_RANGE_DAYS: i64 = 30;
/// Most buckets a graph may have.
pub const MAX_BUCKETS: i64 = 10_000;

pub fn router() -> Router<SharedState> {
    Router::new()
        .route("/v1/analytics/summary", get(summary))
        .route("/v1/analytics/summary/cache", get(cache_summary))
        .route("/v1/analytics/graphs/{name}", get(graph_one))
        .route("/v1/analytics/graphs/{name}/{sub}", get(graph_two))
        .route("/v1/analytics/groups/metadata/{key}", get(group_metadata))
        .route("/v1/analytics/groups/{name}", get(group))
}

/// Every query parameter the analytics endpoints take. All are text so that
/// a malformed value gets a clear AB01 message rather than a generic
/// deserialisation error.
#[derive(Debug, Default, Deserialize)]
pub struct Params {
    pub time_of_generation_min: Option<String>,
    pub time_of_generation_max: Option<String>,
    pub total_units_min: Option<String>,
    pub total_units_max: Option<String>,
    pub cost_min: Option<String>,
    pub cost_max: Option<String>,
    pub status_code: Option<String>,
    pub virtual_keys: Option<String>,
    pub workspace_slug: Option<String>,
    pub api_key_ids: Option<String>,
    pub ai_org_model: Option<String>,
    pub metadata: Option<String>,
    pub cache_status: Option<String>,
    pub configs: Option<String>,
    pub prompt_slug: Option<String>,
    pub interval: Option<String>,
    pub format: Option<String>,
    #[serde(alias = "currentPage")]
    pub current_page: Option<String>,
    #[serde(alias = "pageSize")]
    pub page_size: Option<String>,
    pub order_by: Option<String>,
    pub order_by_type: Option<String>,
}

/// A request's filters, resolved.
struct Resolved {
    /// Its time range narrowed to the requests that exist.
    filter: Filter,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    /// The workspace the caller is confined to, or the one it named.
    workspace_scope: Option<Vec<String>>,
}

fn bad(m: impl Into<String>) -> AdminError {
    AdminError::validation(m)
}

fn parse_time(s: &str, name: &str) -> Result<DateTime<Utc>, AdminError> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    // A URL-decoded '+' offset arrives as a space.
    if let Ok(t) = DateTime::parse_from_rfc3339(&s.replacen(' ', "+", 1)) {
        return Ok(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    Err(bad(format!(
        "{name} must be an ISO 8601 time, e.g. 2026-01-31T00:00:00Z (got '{s}')"
    )))
}

fn list(v: &Option<String>) -> Vec<String> {
    v.as_deref()
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn whole(v: &Option<String>, name: &str) -> Result<Option<u64>, AdminError> {
    v.as_deref()
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| bad(format!("{name} must be a whole number of tokens, 0 or more")))
        })
        .transpose()
}

fn dollars(v: &Option<String>, name: &str) -> Result<Option<i64>, AdminError> {
    v.as_deref()
        .filter(|s| !s.trim().is_empty())
        .map(|s| match Money::parse_usd(s.trim()) {
            Some(m) if m.picos() >= 0 => Ok(m.picos()),
            _ => Err(bad(format!(
                "{name} must be an amount of US dollars, 0 or more (e.g. 0.25)"
            ))),
        })
        .transpose()
}

/// Validates the filters and confines a workspace key to its workspace;
/// then waits until every request already answered is in the log (read
/// your own writes).
async fn resolve(state: &SharedState, caller: &Caller, p: &Params) -> Result<Resolved, AdminError> {
    let own = caller.workspace_id().map(str::to_owned);
    if own.is_some() {
        caller.require_scope("analytics.view")?;
    } else if !caller.is_org() {
        return Err(AdminError::forbidden("this API key cannot read analytics"));
    }
    let now = state.now();
    let to = match &p.time_of_generation_max {
        Some(s) if !s.trim().is_empty() => parse_time(s, "time_of_generation_max")?,
        _ => now,
    };
    let from = match &p.time_of_generation_min {
        Some(s) if !s.trim().is_empty() => parse_time(s, "time_of_generation_min")?,
        _ => to - chrono::Duration::days(DEFAULT_RANGE_DAYS),
    };
    if from > to {
        return Err(bad("time_of_generation_min must not be after time_of_generation_max"));
    }
    let snap = state.snapshot();
    let mut workspace_ids = None;
    let named = list(&p.workspace_slug);
    if !named.is_empty() {
        // A slug, or a workspace id (so that a deleted workspace's
        // requests stay reachable).
        let ids: Vec<String> = named
            .iter()
            .map(|s| {
                snap.workspace_by_slug(s)
                    .map(|w| w.id.clone())
                    .unwrap_or_else(|| s.clone())
            })
            .collect();
        if let Some(own) = &own {
            if ids.iter().any(|i| i != own) {
                return Err(AdminError::forbidden(
                    "this API key can read only its own workspace's analytics",
                ));
            }
        }
        workspace_ids = Some(ids);
    }
    if let Some(own) = &own {
        workspace_ids = Some(vec![own.clone()]);
    }
    let mut status_codes = Vec::new();
    for s in list(&p.status_code) {
        match s.parse::<u16>() {
            Ok(c) if (100..=599).contains(&c) => status_codes.push(c),
            _ => {
                return Err(bad(format!(
                    "status_code must be comma-separated HTTP status codes (got '{s}')"
                )))
            }
        }
    }
    let models = list(&p.ai_org_model)
        .into_iter()
        .map(|m| match m.split_once("__") {
            Some((prov, model)) if !prov.is_empty() && !model.is_empty() => Ok(ModelMatch {
                provider: Some(prov.to_owned()),
                model: model.to_owned(),
            }),
            Some(_) => Err(bad(format!("ai_org_model entries are provider__model (got '{m}')"))),
            None => Ok(ModelMatch {
                provider: None,
                model: m,
            }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = match p.metadata.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => Vec::new(),
        Some(text) => {
            let v: Map<String, Value> = serde_json::from_str(text)
                .map_err(|_| bad("metadata must be a JSON object, e.g. {\"env\":\"prod\"}"))?;
            v.into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k, s)),
                    _ => Err(bad("metadata values must be strings")),
                })
                .collect::<Result<_, _>>()?
        }
    };
    // Tollgate has no response cache: every request's cache status is
    // DISABLED, so a filter for any other status matches nothing.
    let mut nothing = false;
    for s in list(&p.cache_status) {
        match s.to_ascii_uppercase().as_str() {
            "DISABLED" => {}
            "HIT" | "MISS" | "SEMANTIC HIT" | "SEMANTIC_HIT" | "REFRESH" => nothing = true,
            _ => {
                return Err(bad(format!(
                    "cache_status must be HIT, SEMANTIC HIT, MISS, REFRESH or DISABLED (got '{s}')"
                )))
            }
        }
    }
    if !list(&p.configs).is_empty() {
        return Err(bad("Tollgate has no configs: the configs filter is not supported"));
    }
    if !list(&p.prompt_slug).is_empty() {
        return Err(bad(
            "Tollgate has no prompt templates: the prompt_slug filter is not supported",
        ));
    }
    let (tmin, tmax) = (
        whole(&p.total_units_min, "total_units_min")?,
        whole(&p.total_units_max, "total_units_max")?,
    );
    let (cmin, cmax) = (dollars(&p.cost_min, "cost_min")?, dollars(&p.cost_max, "cost_max")?);
    if tmin.zip(tmax).is_some_and(|(a, b)| a > b) {
        return Err(bad("total_units_min must not be above total_units_max"));
    }
    if cmin.zip(cmax).is_some_and(|(a, b)| a > b) {
        return Err(bad("cost_min must not be above cost_max"));
    }
    let filter = Filter {
        from_ms: from.timestamp_millis(),
        // The range is inclusive at millisecond precision.
        to_ms: to.timestamp_millis() + 1,
        workspace_ids: workspace_ids.clone(),
        api_key_ids: list(&p.api_key_ids),
        provider_slugs: list(&p.virtual_keys),
        models,
        status_codes,
        total_tokens_min: tmin,
        total_tokens_max: tmax,
        cost_min_picos: cmin,
        cost_max_picos: cmax,
        metadata,
        nothing,
    };
    state.usage.flush().await;
    let mut filter = filter;
    state.store.analytics().clamp_to_data(&mut filter).await?;
    Ok(Resolved {
        filter,
        from,
        to,
        workspace_scope: workspace_ids,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

fn format_of(p: &Params) -> Result<Format, AdminError> {
    match p.format.as_deref().map(str::trim) {
        None | Some("") | Some("json") => Ok(Format::Json),
        Some("csv") => Ok(Format::Csv),
        Some(o) => Err(bad(format!("format must be json or csv (got '{o}')"))),
    }
}

// ---------------------------------------------------------------- figures

/// `num / den` rounded half up to `decimals` places, computed on integers
/// and converted to a float only for display.
fn ratio(num: u128, den: u128, decimals: u32) -> Option<f64> {
    if den == 0 {
        return None;
    }
    let scale = 10u128.pow(decimals);
    let scaled = (num * scale * 2 + den) / (den * 2);
    Some((scaled / scale) as f64 + (scaled % scale) as f64 / scale as f64)
}

/// Picodollars as display dollars.
fn usd(picos: i128) -> f64 {
    Money(picos.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64).as_usd_f64()
}

/// Exact decimal dollars.
fn usd_exact(picos: i128) -> String {
    Money(picos.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64).to_string()
}

/// `num / den` picodollars, rounded half up to a whole picodollar.
fn div_picos(num: i128, den: u128) -> Option<i128> {
    if den == 0 {
        return None;
    }
    let den = den as i128;
    Some((num * 2 + den).div_euclid(den * 2))
}

fn ms(us: Option<u64>) -> Value {
    us.map(|v| json!(v as f64 / 1000.0)).unwrap_or(Value::Null)
}

fn opt(v: Option<f64>) -> Value {
    v.map(|x| json!(x)).unwrap_or(Value::Null)
}

/// Fields in a fixed order (serde_json's maps sort their keys; CSV
/// columns should not).
pub type Row = Vec<(String, Value)>;

fn field<'a>(row: &'a Row, k: &str) -> Option<&'a Value> {
    row.iter().find(|(n, _)| n == k).map(|(_, v)| v)
}

fn to_object(row: Row) -> Value {
    Value::Object(row.into_iter().collect())
}

/// Every per-request metric of an aggregate, flat, in documentation order.
pub fn metrics(a: &Agg) -> Row {
    let n = u128::from(a.requests);
    let mut m = Row::new();
    let mut put = |k: &str, v: Value| {
        m.push((k.to_owned(), v));
    };
    put("requests", json!(a.requests));
    put("successful_requests", json!(a.successful));
    put("failed_requests", json!(a.failed()));
    put("error_rate", opt(ratio(u128::from(a.failed()) * 100, n, 2)));
    put("status_4xx", json!(a.status_4xx));
    put("status_5xx", json!(a.status_5xx));
    put("upstream_errors", json!(a.upstream_errors));
    put("timeouts", json!(a.timeouts));
    put("refused_rate_limit", json!(a.refused_rate_limit));
    put("refused_budget", json!(a.refused_budget));
    put("refused_policy", json!(a.refused_policy));
    put("refused_auth", json!(a.refused_auth));
    put("refused_permission", json!(a.refused_permission));
    put("cancelled", json!(a.cancelled));
    put("streamed", json!(a.streamed));
    put("attempts", json!(a.attempts));
    put("prompt_tokens", json!(a.prompt_tokens));
    put("completion_tokens", json!(a.completion_tokens));
    put("cached_tokens", json!(a.cached_tokens));
    put("total_tokens", json!(a.total_tokens));
    put("avg_tokens_per_request", opt(ratio(u128::from(a.total_tokens), n, 2)));
    put("cost", json!(usd(a.cost_picos)));
    put("cost_exact", json!(usd_exact(a.cost_picos)));
    put("priced_requests", json!(a.priced_requests));
    put(
        "avg_cost_per_request",
        opt(div_picos(a.cost_picos, u128::from(a.priced_requests)).map(usd)),
    );
    put(
        "cost_per_1k_tokens",
        opt(div_picos(a.cost_picos * 1000, u128::from(a.priced_tokens)).map(usd)),
    );
    put("latency_mean_ms", opt(ratio(a.latency_sum_us, n * 1000, 3)));
    put("latency_p50_ms", ms(a.latency.quantile(500)));
    put("latency_p90_ms", ms(a.latency.quantile(900)));
    put("latency_p95_ms", ms(a.latency.quantile(950)));
    put("latency_p99_ms", ms(a.latency.quantile(990)));
    put("latency_max_ms", ms((a.requests > 0).then_some(a.latency_max_us)));
    put("ttft_p50_ms", ms(a.ttft.quantile(500)));
    put("ttft_p95_ms", ms(a.ttft.quantile(950)));
    put("ttft_p99_ms", ms(a.ttft.quantile(990)));
    put("gateway_overhead_p50_ms", ms(a.overhead.quantile(500)));
    put("gateway_overhead_p99_ms", ms(a.overhead.quantile(990)));
    put(
        "output_tokens_per_second",
        opt(ratio(u128::from(a.gen_tokens) * 1_000_000, u128::from(a.gen_us), 2)),
    );
    put("unique_api_keys", json!(a.api_keys.len()));
    put("unique_models", json!(a.models.len()));
    put("unique_workspaces", json!(a.workspaces.len()));
    put("unique_providers", json!(a.providers.len()));
    m
}

fn total(cells: &Cells) -> Agg {
    let mut t = Agg::default();
    for a in cells.values() {
        t.merge(a);
    }
    t
}

// ---------------------------------------------------------------- summary

async fn summary(
    State(state): State<SharedState>,
    caller: Caller,
    Query(p): Query<Params>,
) -> Result<Json<Value>, AdminError> {
    let r = resolve(&state, &caller, &p).await?;
    let analytics = state.store.analytics();
    let q = store::Query {
        filter: r.filter.clone(),
        interval: None,
        group: None,
        distinct: true,
    };
    // The peak minute is its own pass: side by side with the aggregate.
    let (cells, peak) = tokio::try_join!(analytics.aggregate(&q), analytics.peak_minute(&r.filter))?;
    let agg = total(&cells);
    let mut data: Map<String, Value> = metrics(&agg).into_iter().collect();
    data.insert("peak_requests_per_minute".into(), json!(peak.map(|p| p.0).unwrap_or(0)));
    data.insert(
        "peak_minute".into(),
        peak.and_then(|p| DateTime::from_timestamp_millis(p.1))
            .map(|t| json!(t))
            .unwrap_or(Value::Null),
    );
    let (budgets, rates) = limit_figures(&state, r.workspace_scope.as_deref()).await;
    data.insert("budgets".into(), Value::Array(budgets));
    data.insert("rate_limits".into(), Value::Array(rates));
    let ws = r
        .workspace_scope
        .as_ref()
        .filter(|w| w.len() == 1)
        .map(|w| w[0].as_str());
    let alerts = if r.workspace_scope.as_ref().is_some_and(|w| w.len() > 1) {
        let mut n = 0;
        for w in r.workspace_scope.iter().flatten() {
            n += state
                .store
                .outbox()
                .count_sent(Some(w), Some(r.from), Some(r.to))
                .await
                .map_err(AdminError::internal)?;
        }
        n
    } else {
        state
            .store
            .outbox()
            .count_sent(ws, Some(r.from), Some(r.to))
            .await
            .map_err(AdminError::internal)?
    };
    data.insert("alerts_sent".into(), json!(alerts));
    data.insert("time_of_generation_min".into(), json!(r.from));
    data.insert("time_of_generation_max".into(), json!(r.to));
    Ok(Json(json!({"object": "analytics-summary", "data": data})))
}

/// Percent of `used` over `limit`, to two places, from integers.
fn percent(used: i64, limit: i64) -> Value {
    if limit <= 0 {
        return Value::Null;
    }
    opt(ratio(used.max(0) as u128 * 100, limit as u128, 2))
}

/// Every limit the caller may see, with its current window's consumption:
/// (budgets, rate limits).
async fn limit_figures(state: &SharedState, scope: Option<&[String]>) -> (Vec<Value>, Vec<Value>) {
    let snap = state.snapshot();
    let in_scope = |ws: Option<&str>| match (scope, ws) {
        (None, _) => true,
        (Some(s), Some(w)) => s.iter().any(|x| x == w),
        (Some(_), None) => false,
    };
    let mut checks: Vec<(LimitCheck, Option<String>)> = Vec::new();
    let mut seen = HashSet::new();
    let mut push = |c: &LimitCheck, ws: Option<&str>| {
        let kind = matches!(c.rule, Rule::Budget { .. });
        if seen.insert((c.id.clone(), kind)) {
            checks.push((c.clone(), ws.map(str::to_owned)));
        }
    };
    let mut ws_ids: Vec<&String> = snap.workspaces.keys().collect();
    ws_ids.sort();
    for w in ws_ids {
        if !in_scope(Some(w)) {
            continue;
        }
        for c in snap.workspace_checks(w) {
            push(c, Some(w));
        }
        for r in snap.routes_of(w) {
            for c in &r.checks {
                push(c, Some(w));
            }
        }
    }
    let mut keys: Vec<_> = snap.keys().collect();
    keys.sort_by(|a, b| a.record.id.cmp(&b.record.id));
    for k in keys {
        if in_scope(k.record.workspace_id.as_deref()) {
            for c in &k.checks {
                push(c, k.record.workspace_id.as_deref());
            }
        }
    }
    let now = state.now();
    let (mut budgets, mut rates) = (Vec::new(), Vec::new());
    for (c, ws) in checks {
        let group = crate::limit_check::group(ws.as_deref().unwrap_or_default());
        let status = match state.counters.status(&group, &c.id, &c.rule, now).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, limit = %c.id, "reading a limit counter failed");
                continue;
            }
        };
        let window_end = status.window.end.map(|t| json!(t)).unwrap_or(Value::Null);
        match &c.rule {
            Rule::Budget { limit, .. } => budgets.push(json!({
                "limit_id": c.id.as_str(),
                "level": c.level().as_str(),
                "workspace_id": ws,
                "type": match limit.kind { BudgetKind::Cost => "cost", BudgetKind::Tokens => "tokens" },
                "credit_limit": limit.amount_json(limit.credit_limit),
                "consumed": limit.amount_json(status.consumed),
                "reserved": limit.amount_json(status.reserved),
                "consumed_percent": percent(status.consumed, status.limit),
                "window_start": status.window.start,
                "window_end": window_end,
            })),
            Rule::Rate(r) => rates.push(json!({
                "limit_id": c.id.as_str(),
                "level": c.level().as_str(),
                "workspace_id": ws,
                "type": match r.kind { RateKind::Requests => "requests", RateKind::Tokens => "tokens" },
                "unit": match r.unit { RateUnit::Rpm => "rpm", RateUnit::Rph => "rph", RateUnit::Rpd => "rpd" },
                "value": r.value,
                "used": status.consumed.saturating_add(status.reserved),
                "utilisation_percent": percent(status.consumed.saturating_add(status.reserved), status.limit),
                "window_start": status.window.start,
                "window_end": window_end,
            })),
        }
    }
    (budgets, rates)
}

/// `GET /v1/analytics/summary/cache`. Tollgate has no response cache, so
/// every request's cache status is DISABLED and hits, misses and savings
/// are zero.
async fn cache_summary(
    State(state): State<SharedState>,
    caller: Caller,
    Query(p): Query<Params>,
) -> Result<Json<Value>, AdminError> {
    let r = resolve(&state, &caller, &p).await?;
    let q = store::Query {
        filter: r.filter,
        interval: None,
        group: None,
        distinct: false,
    };
    let cells = state.store.analytics().aggregate(&q).await?;
    let a = total(&cells);
    Ok(Json(json!({"object": "analytics-summary", "data": {
        "requests": a.requests, "hits": 0, "semantic_hits": 0, "misses": 0, "disabled": a.requests,
        "hit_rate": 0, "avg_latency_saved_ms": Value::Null, "cost_saved": 0, "cost_saved_exact": "0",
    }})))
}

// ---------------------------------------------------------------- graphs

async fn graph_one(
    State(state): State<SharedState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(p): Query<Params>,
) -> Result<Response, AdminError> {
    graph(state, caller, name, p).await
}

async fn graph_two(
    State(state): State<SharedState>,
    caller: Caller,
    Path((name, sub)): Path<(String, String)>,
    Query(p): Query<Params>,
) -> Result<Response, AdminError> {
    graph(state, caller, format!("{name}/{sub}"), p).await
}

/// The graphs, by path.
const GRAPHS: &[&str] = &[
    "requests",
    "cost",
    "latency",
    "tokens",
    "users",
    "users/requests",
    "errors",
    "errors/rate",
    "errors/status-codes",
    "requests/rescued",
    "cache/hit-rate",
    "cache/latency",
];

/// The default bucket width for a range: minutes up to 2 hours, hours up
/// to 7 days, days up to 180 days, weeks beyond.
fn auto_interval(from: DateTime<Utc>, to: DateTime<Utc>) -> Interval {
    let span = to - from;
    if span <= chrono::Duration::hours(2) {
        Interval::Minute
    } else if span <= chrono::Duration::days(7) {
        Interval::Hour
    } else if span <= chrono::Duration::days(180) {
        Interval::Day
    } else {
        Interval::Week
    }
}

/// How many `interval` buckets `[from, to]` (inclusive) touches.
fn bucket_count(interval: Interval, (from, to): (i64, i64)) -> i64 {
    let width = match interval {
        Interval::Week => 7 * store::DAY_MS,
        Interval::Day => store::DAY_MS,
        Interval::Hour => 3_600_000,
        Interval::Minute => store::MINUTE_MS,
    };
    (interval.floor(to) - interval.floor(from)) / width + 1
}

/// One graph's point (or summary) fields from an aggregate.
fn graph_fields(name: &str, a: &Agg, status_codes: Option<&Map<String, Value>>, summary: bool) -> Row {
    let m = metrics(a);
    let g = |k: &str| field(&m, k).cloned().unwrap_or(Value::Null);
    let mut out = Row::new();
    let mut put = |k: &str, v: Value| {
        out.push((k.to_owned(), v));
    };
    match name {
        "requests" => {
            put("total", g("requests"));
            put("successful", g("successful_requests"));
            put("failed", g("failed_requests"));
        }
        "cost" => {
            put("total", g("cost"));
            put("total_exact", g("cost_exact"));
            put("avg", g("avg_cost_per_request"));
        }
        "latency" => {
            put("avg", g("latency_mean_ms"));
            put("p50", g("latency_p50_ms"));
            put("p90", g("latency_p90_ms"));
            put("p95", g("latency_p95_ms"));
            put("p99", g("latency_p99_ms"));
            if summary {
                put("max", g("latency_max_ms"));
            }
        }
        "tokens" => {
            put("total", g("total_tokens"));
            put("prompt", g("prompt_tokens"));
            put("completion", g("completion_tokens"));
            put("cached", g("cached_tokens"));
            put("avg", g("avg_tokens_per_request"));
        }
        "users" => put("total", g("unique_api_keys")),
        "users/requests" => {
            put("total", g("requests"));
            put("users", g("unique_api_keys"));
            put("avg", opt(ratio(u128::from(a.requests), a.api_keys.len() as u128, 2)));
        }
        "errors" => {
            put("total", g("failed_requests"));
            for k in [
                "status_4xx",
                "status_5xx",
                "upstream_errors",
                "timeouts",
                "refused_rate_limit",
                "refused_budget",
                "refused_policy",
                "refused_auth",
                "refused_permission",
            ] {
                put(k, g(k));
            }
        }
        "errors/rate" => {
            put("rate", if a.requests == 0 { json!(0) } else { g("error_rate") });
            put("failed", g("failed_requests"));
            put("total", g("requests"));
        }
        "errors/status-codes" => {
            put("total", g("failed_requests"));
            put("status_codes", Value::Object(status_codes.cloned().unwrap_or_default()));
        }
        // Tollgate makes no retries or fallbacks: nothing is ever rescued.
        "requests/rescued" => {
            put("total", json!(0));
            put("requests", g("requests"));
        }
        // No response cache: no hits, and so no cache latency.
        "cache/hit-rate" => {
            put("hits", json!(0));
            put("semantic_hits", json!(0));
            put("rate", json!(0));
        }
        "cache/latency" => {
            put("avg", Value::Null);
            put("hits", json!(0));
        }
        _ => {}
    }
    out
}

async fn graph(state: SharedState, caller: Caller, name: String, p: Params) -> Result<Response, AdminError> {
    if !GRAPHS.contains(&name.as_str()) {
        let mut r = AdminError::not_found(format!("no analytics graph '{name}'; graphs are {}", GRAPHS.join(", ")))
            .into_response();
        *r.status_mut() = axum::http::StatusCode::NOT_FOUND;
        return Ok(r);
    }
    let fmt = format_of(&p)?;
    let r = resolve(&state, &caller, &p).await?;
    let asked = match p.interval.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            Interval::parse(s).ok_or_else(|| bad(format!("interval must be minute, hour, day or week (got '{s}')")))?,
        ),
    };
    // Points cover the range asked for. A range too long for its interval
    // (the year 1000 to now) is narrowed to where requests exist (none: no
    // points), and without an interval one is chosen for that; only data
    // itself too long for the interval asked for is refused.
    let requested = (r.from.timestamp_millis(), r.to.timestamp_millis());
    let mut interval = asked.unwrap_or_else(|| auto_interval(r.from, r.to));
    let mut span = Some(requested);
    if bucket_count(interval, requested) > MAX_BUCKETS {
        span = (r.filter.from_ms < r.filter.to_ms).then_some((r.filter.from_ms, r.filter.to_ms - 1));
        if let Some((a, b)) = span {
            let t = |ms| DateTime::from_timestamp_millis(ms).unwrap_or_default();
            interval = asked.unwrap_or_else(|| auto_interval(t(a), t(b)));
        }
    }
    if let Some(span) = span {
        let buckets = bucket_count(interval, span);
        if buckets > MAX_BUCKETS {
            return Err(bad(format!(
                "this range has {buckets} {} buckets, more than {MAX_BUCKETS}: choose a larger interval or a shorter range",
                interval.as_str()
            )));
        }
    }
    let (first, last) = match span {
        Some((a, b)) => (interval.floor(a), interval.floor(b)),
        // No points: the loop below does not run.
        None => (1, 0),
    };
    let group = (name == "errors/status-codes").then_some(GroupBy::StatusCode);
    let q = store::Query {
        filter: r.filter,
        interval: Some(interval),
        group: group.clone(),
        // Only the users graphs count distinct keys.
        distinct: name.starts_with("users"),
    };
    let cells = state.store.analytics().aggregate(&q).await?;
    // Fold groups into their bucket; keep failed status codes per bucket.
    let mut per_bucket: std::collections::BTreeMap<i64, (Agg, Map<String, Value>)> = Default::default();
    let mut all_codes: std::collections::BTreeMap<String, u64> = Default::default();
    for ((b, g), a) in &cells {
        let e = per_bucket.entry(*b).or_default();
        e.0.merge(a);
        if group.is_some() && a.failed() > 0 {
            e.1.insert(g.clone(), json!(a.failed()));
            *all_codes.entry(g.clone()).or_default() += a.failed();
        }
    }
    let mut data = Vec::new();
    let mut t = first;
    while t <= last {
        let (a, codes) = per_bucket.remove(&t).unwrap_or_default();
        let mut point: Row = vec![(
            "timestamp".into(),
            DateTime::from_timestamp_millis(t)
                .map(|d| json!(d))
                .unwrap_or(Value::Null),
        )];
        point.extend(graph_fields(&name, &a, Some(&codes), false));
        data.push(point);
        t = interval.next(t);
    }
    let sum = total(&cells);
    let codes: Map<String, Value> = all_codes.into_iter().map(|(k, v)| (k, json!(v))).collect();
    let summary = to_object(graph_fields(&name, &sum, Some(&codes), true));
    if fmt == Format::Csv {
        return Ok(csv(&data));
    }
    let data: Vec<Value> = data.into_iter().map(to_object).collect();
    Ok(Json(json!({
        "object": "analytics-graph",
        "interval": interval.as_str(),
        "time_of_generation_min": r.from,
        "time_of_generation_max": r.to,
        "summary": summary,
        "data": data,
        "data_points": data,
    }))
    .into_response())
}

// ---------------------------------------------------------------- groups

async fn group(
    State(state): State<SharedState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(p): Query<Params>,
) -> Result<Response, AdminError> {
    let by = match name.as_str() {
        "users" | "api_key" => GroupBy::ApiKey,
        "ai-models" => GroupBy::AiModel,
        "workspaces" | "workspace" => GroupBy::Workspace,
        "model" => GroupBy::Model,
        "status_code" => GroupBy::StatusCode,
        "provider" => GroupBy::Provider,
        "ai_service" => GroupBy::AiService,
        "config" | "prompt" => return Err(bad(format!("Tollgate has no {name}s to group by"))),
        _ => {
            let mut r = AdminError::not_found(format!(
                "no analytics group '{name}'; groups are users, ai-models, workspaces, metadata/{{key}}, model, status_code, api_key, workspace, provider, ai_service"
            ))
            .into_response();
            *r.status_mut() = axum::http::StatusCode::NOT_FOUND;
            return Ok(r);
        }
    };
    grouped(state, caller, by, p).await
}

async fn group_metadata(
    State(state): State<SharedState>,
    caller: Caller,
    Path(key): Path<String>,
    Query(p): Query<Params>,
) -> Result<Response, AdminError> {
    if key.trim().is_empty() {
        return Err(bad("the metadata key must not be empty"));
    }
    grouped(state, caller, GroupBy::Metadata(key), p).await
}

/// The identifying fields of one group row.
fn group_fields(state: &SharedState, by: &GroupBy, key: &str) -> Row {
    let snap = state.snapshot();
    let s = |v: &str| if v.is_empty() { Value::Null } else { json!(v) };
    let mut m = Vec::new();
    match by {
        GroupBy::ApiKey => {
            m.push(("api_key_id".into(), s(key)));
            m.push((
                "name".into(),
                snap.key_by_id(key).map(|k| json!(k.record.name)).unwrap_or(Value::Null),
            ));
        }
        GroupBy::Workspace => {
            m.push(("workspace_id".into(), s(key)));
            m.push((
                "workspace_slug".into(),
                snap.workspaces.get(key).map(|w| json!(w.slug)).unwrap_or(Value::Null),
            ));
        }
        GroupBy::Provider => {
            m.push(("provider".into(), s(key)));
        }
        GroupBy::Model => {
            m.push(("model".into(), s(key)));
        }
        GroupBy::AiModel => {
            let (prov, model) = key.split_once("__").unwrap_or(("", key));
            m.push(("ai_org_model".into(), json!(key)));
            m.push(("ai_provider_id".into(), s(prov)));
            m.push(("model".into(), s(model)));
        }
        GroupBy::AiService => {
            m.push(("ai_service".into(), s(key)));
        }
        GroupBy::StatusCode => {
            m.push((
                "status_code".into(),
                key.parse::<u16>().map(|c| json!(c)).unwrap_or(Value::Null),
            ));
        }
        GroupBy::Metadata(k) => {
            m.push(("metadata_key".into(), json!(k)));
            m.push(("metadata_value".into(), json!(key)));
        }
    }
    m
}

/// Orders numbers numerically, nulls last, anything else as text.
fn cmp_values(a: &Value, b: &Value) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .unwrap_or(0.0)
            .partial_cmp(&y.as_f64().unwrap_or(0.0))
            .unwrap_or(Ordering::Equal),
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        _ => a.to_string().cmp(&b.to_string()),
    }
}

async fn grouped(state: SharedState, caller: Caller, by: GroupBy, p: Params) -> Result<Response, AdminError> {
    let fmt = format_of(&p)?;
    let r = resolve(&state, &caller, &p).await?;
    let page = crate::admin::Page {
        current_page: p.current_page.clone(),
        page_size: p.page_size.clone(),
    };
    let (offset, size) = page.bounds()?;
    let desc = match p.order_by_type.as_deref().map(str::trim) {
        None | Some("") | Some("desc") => true,
        Some("asc") => false,
        Some(o) => return Err(bad(format!("order_by_type must be asc or desc (got '{o}')"))),
    };
    let q = store::Query {
        filter: r.filter,
        interval: None,
        group: Some(by.clone()),
        distinct: true,
    };
    let cells = state.store.analytics().aggregate(&q).await?;
    let mut rows: Vec<Row> = cells
        .iter()
        .map(|((_, key), a)| {
            let mut row = group_fields(&state, &by, key);
            row.extend(metrics(a));
            row
        })
        .collect();
    let order_by = p
        .order_by
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("requests")
        .to_owned();
    if rows.first().is_some_and(|r| field(r, &order_by).is_none()) {
        return Err(bad(format!(
            "order_by must name a field of the rows, e.g. requests, cost, total_tokens (got '{order_by}')"
        )));
    }
    rows.sort_by(|a, b| {
        let o = cmp_values(
            field(a, &order_by).unwrap_or(&Value::Null),
            field(b, &order_by).unwrap_or(&Value::Null),
        );
        if desc {
            o.reverse()
        } else {
            o
        }
    });
    let total = rows.len();
    let data: Vec<Row> = rows.into_iter().skip(offset).take(size).collect();
    if fmt == Format::Csv {
        return Ok(csv(&data));
    }
    let data: Vec<Value> = data.into_iter().map(to_object).collect();
    Ok(Json(json!({"object": "analytics-group", "total": total, "data": data})).into_response())
}

// ---------------------------------------------------------------- csv

fn csv_cell(v: &Value) -> String {
    let text = match v {
        Value::Null => return String::new(),
        Value::String(s) => s.clone(),
        Value::Number(n) => return n.to_string(),
        Value::Bool(b) => return b.to_string(),
        other => other.to_string(),
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// Rows as CSV with a header row: the fields of the first row, in order,
/// then any others in order of appearance.
fn csv(rows: &[Row]) -> Response {
    let mut header: Vec<String> = Vec::new();
    for r in rows {
        for (k, _) in r {
            if !header.contains(k) {
                header.push(k.clone());
            }
        }
    }
    let mut out = header.iter().map(|h| csv_cell(&json!(h))).collect::<Vec<_>>().join(",");
    out.push_str("\r\n");
    for r in rows {
        let line: Vec<String> = header
            .iter()
            .map(|h| csv_cell(field(r, h).unwrap_or(&Value::Null)))
            .collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    ([("content-type", "text/csv; charset=utf-8")], out).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::money::PICOS_PER_USD;

    #[test]
    fn ratios_round_half_up_on_integers() {
        assert_eq!(ratio(1, 3, 2), Some(0.33));
        assert_eq!(ratio(2, 3, 2), Some(0.67));
        assert_eq!(ratio(1, 0, 2), None);
        assert_eq!(div_picos(10, 4), Some(3));
        assert_eq!(div_picos(PICOS_PER_USD as i128, 3), Some(333_333_333_333));
        assert_eq!(usd_exact(1_500_000_000_000), "1.5");
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        assert_eq!(csv_cell(&json!("a,b")), "\"a,b\"");
        assert_eq!(csv_cell(&json!("say \"hi\"")), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell(&Value::Null), "");
        assert_eq!(csv_cell(&json!({"a": 1})), "\"{\"\"a\"\":1}\"");
    }

    #[test]
    fn times_parse_in_every_documented_form() {
        for s in [
            "2026-01-31T00:00:00Z",
            "2026-01-31T05:30:00+05:30",
            "2026-01-31T05:30:00 05:30",
            "2026-01-31T00:00:00",
            "2026-01-31",
        ] {
            assert_eq!(
                parse_time(s, "t").unwrap().to_rfc3339(),
                "2026-01-31T00:00:00+00:00",
                "{s}"
            );
        }
        assert_eq!(
            parse_time("yesterday", "t").unwrap_err().code,
            crate::error::AdminCode::Validation
        );
    }
}
