//! Logs (filtered, paginated on the server, one request's detail),
//! analytics (SVG charts, group-by tables, CSV export) and the audit log.

use super::html::{self, cell, chart, fmt_num, input, select, str_of, Errors, Nav};
use super::integrations::visible_workspaces;
use super::{enc, Dash, OrPage, PageResult, Signed};
use axum::extract::{Query, State};
use axum::http::{header, Method, StatusCode};
use axum::response::IntoResponse;
use maud::html;
use serde::Deserialize;
use serde_json::Value;

/// Rows per page of logs and audit entries.
const PAGE_SIZE: usize = 50;

/// A query string of the non-blank `pairs`.
fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) {
            out.append_pair(k, v);
        }
    }
    out.finish()
}

/// A `datetime-local` value (minutes, no zone) as UTC RFC 3339; other text
/// passes unchanged for the API to judge.
fn utc(v: Option<&str>) -> Option<String> {
    let v = v?.trim();
    if v.is_empty() {
        return None;
    }
    Some(match v.len() {
        16 => format!("{v}:00Z"),
        19 => format!("{v}Z"),
        _ => v.to_owned(),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LogsQuery {
    from: Option<String>,
    to: Option<String>,
    workspace_id: Option<String>,
    provider: Option<String>,
    model: Option<String>,
    status_code: Option<String>,
    cost_min: Option<String>,
    cost_max: Option<String>,
    page: Option<usize>,
}

fn workspace_options(list: &[Value], value_key: &str) -> Vec<(String, String)> {
    std::iter::once((String::new(), "All workspaces".to_owned()))
        .chain(
            list.iter()
                .map(|w| (str_of(w, value_key).to_owned(), str_of(w, "name").to_owned())),
        )
        .collect()
}

pub async fn logs(State(d): State<Dash>, Signed(s): Signed, Query(q): Query<LogsQuery>) -> PageResult {
    let page = q.page.unwrap_or(0);
    let from = utc(q.from.as_deref());
    let to = utc(q.to.as_deref());
    let page_s = page.to_string();
    let size_s = PAGE_SIZE.to_string();
    let api_query = query(&[
        ("time_of_generation_min", from.as_deref()),
        ("time_of_generation_max", to.as_deref()),
        ("workspace_id", q.workspace_id.as_deref()),
        ("provider", q.provider.as_deref()),
        ("model", q.model.as_deref()),
        ("status_code", q.status_code.as_deref()),
        ("cost_min", q.cost_min.as_deref()),
        ("cost_max", q.cost_max.as_deref()),
        ("current_page", Some(&page_s)),
        ("page_size", Some(&size_s)),
        // Counting every match would scan the whole log: pages only.
        ("with_total", Some("false")),
    ]);
    let workspaces = visible_workspaces(&d, &s).await.or_page(&d)?;
    let (rows, errors) = match d.get(&s, &format!("/v1/logs?{api_query}")).await {
        Ok(v) => (
            v.get("data").and_then(Value::as_array).cloned().unwrap_or_default(),
            Errors::default(),
        ),
        Err(e) if e.status == 401 => return Err(super::PageError::Api(d.clone(), e)),
        Err(e) => (
            Vec::new(),
            Errors::from_api(
                &e,
                &[
                    "time_of_generation_min",
                    "time_of_generation_max",
                    "status_code",
                    "cost_min",
                    "cost_max",
                ],
            ),
        ),
    };
    let keep = |p: usize| {
        let p = p.to_string();
        d.url(&format!(
            "/ui/logs?{}",
            query(&[
                ("from", q.from.as_deref()),
                ("to", q.to.as_deref()),
                ("workspace_id", q.workspace_id.as_deref()),
                ("provider", q.provider.as_deref()),
                ("model", q.model.as_deref()),
                ("status_code", q.status_code.as_deref()),
                ("cost_min", q.cost_min.as_deref()),
                ("cost_max", q.cost_max.as_deref()),
                ("page", Some(&p)),
            ])
        ))
    };
    let err_for = |api: &str| errors.field(api).map(str::to_owned);
    let field_errors = Errors {
        top: errors.top.clone(),
        fields: [
            ("from", "time_of_generation_min"),
            ("to", "time_of_generation_max"),
            ("status_code", "status_code"),
            ("cost_min", "cost_min"),
            ("cost_max", "cost_max"),
        ]
        .iter()
        .filter_map(|(f, api)| err_for(api).map(|m| ((*f).to_owned(), m)))
        .collect(),
    };
    let shown_to = page * PAGE_SIZE + rows.len();
    let body = html! {
        form.filters method="get" action=(d.url("/ui/logs")) {
            (input("From (UTC)", "from", "datetime-local", q.from.as_deref(), &field_errors, None))
            (input("To (UTC)", "to", "datetime-local", q.to.as_deref(), &field_errors, None))
            @if s.is_org() { (select("Workspace", "workspace_id", &workspace_options(&workspaces, "id"), q.workspace_id.as_deref())) }
            (input("Provider", "provider", "text", q.provider.as_deref(), &field_errors, None))
            (input("Model", "model", "text", q.model.as_deref(), &field_errors, None))
            (input("Status", "status_code", "number", q.status_code.as_deref(), &field_errors, None))
            (input("Cost at least (USD)", "cost_min", "text", q.cost_min.as_deref(), &field_errors, None))
            (input("Cost at most (USD)", "cost_max", "text", q.cost_max.as_deref(), &field_errors, None))
            button type="submit" { "Filter" }
        }
        (field_errors.banner())
        p role="status" {
            @if rows.is_empty() { "No matching requests" @if page > 0 { " on this page" } "." }
            @else { "Matching requests " (page * PAGE_SIZE + 1) "–" (shown_to) ", newest first." }
        }
        div.scroll { table {
            thead { tr { th { "Time" } th { "Workspace" } th { "Provider" } th { "Model" } th { "Status" } th { "Tokens" } th { "Cost (USD)" } th { "Latency (ms)" } th { "Detail" } } }
            tbody { @for r in &rows { tr {
                td { (str_of(r, "created_at")) } td { (cell(&r["workspace_id"])) } td { (cell(&r["provider"])) }
                td { (cell(&r["model"])) } td { (cell(&r["status_code"])) }
                td { (cell(&r["usage"]["total_tokens"])) } td { (cell(&r["cost_exact"])) }
                td { (cell(&r["latency_ms"])) }
                td { a href=(d.url(&format!("/ui/logs/{}", enc(str_of(r, "trace_id"))))) { "View" span.vh { " request " (str_of(r, "trace_id")) } } }
            } } }
        } }
        nav.pager aria-label="Pages" {
            @if page > 0 { a href=(keep(page - 1)) rel="prev" { "Newer" } }
            @if rows.len() == PAGE_SIZE { a href=(keep(page + 1)) rel="next" { "Older" } }
        }
    };
    Ok(html::page(&d, &s, "Logs", Nav::Logs, body))
}

pub async fn log_detail(
    State(d): State<Dash>,
    Signed(s): Signed,
    axum::extract::Path(trace): axum::extract::Path<String>,
) -> PageResult {
    let v = d
        .get(&s, &format!("/v1/logs?trace_id={}&page_size=20", enc(&trace)))
        .await
        .or_page(&d)?;
    let rows = v.get("data").and_then(Value::as_array).cloned().unwrap_or_default();
    let body = html! {
        p { a href=(d.url("/ui/logs")) { "Back to logs" } }
        @if rows.is_empty() { p { "No request with this trace id is visible to you." } }
        @for r in &rows {
            dl.facts {
                @for (k, v) in r.as_object().into_iter().flatten() {
                    @if k != "object" {
                        dt { (k) }
                        dd { @match v { Value::Object(_) | Value::Array(_) => { pre { (serde_json::to_string_pretty(v).unwrap_or_default()) } }, other => (cell(other)) } }
                    }
                }
            }
        }
    };
    Ok(html::page(&d, &s, &format!("Request {trace}"), Nav::Logs, body))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AnalyticsQuery {
    range: Option<String>,
    interval: Option<String>,
    workspace: Option<String>,
    group: Option<String>,
}

/// The group-by tables: (API group, title).
const GROUPS: &[(&str, &str)] = &[
    ("model", "By model"),
    ("workspace", "By workspace"),
    ("api_key", "By API key"),
    ("provider", "By provider"),
];

/// The time range choices: (value, label, hours).
const RANGES: &[(&str, &str, i64)] = &[
    ("1h", "Last hour", 1),
    ("24h", "Last 24 hours", 24),
    ("7d", "Last 7 days", 24 * 7),
    ("30d", "Last 30 days", 24 * 30),
];

impl AnalyticsQuery {
    fn api_query(&self, now: chrono::DateTime<chrono::Utc>) -> String {
        let hours = RANGES
            .iter()
            .find(|r| Some(r.0) == self.range.as_deref())
            .map(|r| r.2)
            .unwrap_or(24);
        let from = (now - chrono::Duration::hours(hours)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let to = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        query(&[
            ("time_of_generation_min", Some(&from)),
            ("time_of_generation_max", Some(&to)),
            ("interval", self.interval.as_deref()),
            ("workspace_slug", self.workspace.as_deref()),
        ])
    }

    fn own_query(&self) -> String {
        query(&[
            ("range", self.range.as_deref()),
            ("interval", self.interval.as_deref()),
            ("workspace", self.workspace.as_deref()),
            ("group", self.group.as_deref()),
        ])
    }
}

/// One graph's series: (labels, [(name, values)]).
fn series(v: &Value, fields: &[(&str, &str)]) -> (Vec<String>, Vec<(String, Vec<f64>)>) {
    let points = v.get("data").and_then(Value::as_array).cloned().unwrap_or_default();
    let labels = points
        .iter()
        .map(|p| {
            str_of(p, "timestamp")
                .chars()
                .take(16)
                .collect::<String>()
                .replace('T', " ")
        })
        .collect();
    let out = fields
        .iter()
        .map(|(key, name)| {
            (
                (*name).to_owned(),
                points.iter().map(|p| p[*key].as_f64().unwrap_or(0.0)).collect(),
            )
        })
        .collect();
    (labels, out)
}

/// A chart: (API graph, title, unit, [(point field, series name)]).
type Graph = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

pub async fn analytics(State(d): State<Dash>, Signed(s): Signed, Query(q): Query<AnalyticsQuery>) -> PageResult {
    let api = q.api_query(d.state.now());
    let graphs: [Graph; 5] = [
        (
            "requests",
            "Requests",
            "",
            &[("total", "requests"), ("failed", "failed")],
        ),
        ("cost", "Cost", "USD", &[("total", "cost")]),
        ("tokens", "Tokens", "", &[("total", "tokens")]),
        (
            "latency",
            "Latency",
            "ms",
            &[("p50", "p50"), ("p95", "p95"), ("p99", "p99")],
        ),
        ("errors", "Errors", "", &[("total", "errors")]),
    ];
    let group = GROUPS
        .iter()
        .find(|g| Some(g.0) == q.group.as_deref())
        .unwrap_or(&GROUPS[0]);
    // The API answers each graph and the group table from its own query:
    // run them side by side.
    let graph_calls = graphs.iter().map(|(name, ..)| {
        let path = format!("/v1/analytics/graphs/{name}?{api}");
        let (d, s) = (&d, &s);
        async move { d.get(s, &path).await }
    });
    let group_path = format!("/v1/analytics/groups/{}?{api}", group.0);
    let (graph_answers, group_answer) = futures::join!(futures::future::join_all(graph_calls), d.get(&s, &group_path));
    let mut charts = Vec::new();
    let mut summary = None;
    for ((name, title, unit, fields), v) in graphs.iter().zip(graph_answers) {
        let v = v.or_page(&d)?;
        if *name == "cost" {
            summary = v
                .pointer("/summary/total_exact")
                .or_else(|| v.pointer("/summary/total"))
                .cloned();
        }
        let (labels, ser) = series(&v, fields);
        let refs: Vec<(&str, Vec<f64>)> = ser.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
        charts.push((*name, chart(title, &labels, &refs, unit)));
    }
    let rows = group_answer
        .or_page(&d)?
        .get("data")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let tables = [(group.0, group.1, rows)];
    let workspaces = if s.is_org() {
        visible_workspaces(&d, &s).await.or_page(&d)?
    } else {
        Vec::new()
    };
    let group_opts: Vec<(String, String)> = GROUPS
        .iter()
        .map(|(v, l)| ((*v).to_owned(), l.trim_start_matches("By ").to_owned()))
        .collect();
    let range_opts: Vec<(String, String)> = RANGES.iter().map(|r| (r.0.to_owned(), r.1.to_owned())).collect();
    let interval_opts: Vec<(String, String)> = [
        ("", "Automatic"),
        ("minute", "Minute"),
        ("hour", "Hour"),
        ("day", "Day"),
        ("week", "Week"),
    ]
    .iter()
    .map(|(v, l)| ((*v).to_owned(), (*l).to_owned()))
    .collect();
    let own = q.own_query();
    let csv = |kind: &str| d.url(&format!("/ui/analytics/export.csv?kind={}&{own}", enc(kind)));
    let body = html! {
        form.filters method="get" action=(d.url("/ui/analytics")) {
            (select("Time range", "range", &range_opts, Some(q.range.as_deref().unwrap_or("24h"))))
            (select("Interval", "interval", &interval_opts, q.interval.as_deref()))
            (select("Group by", "group", &group_opts, Some(group.0)))
            @if s.is_org() { (select("Workspace", "workspace", &workspace_options(&workspaces, "slug"), q.workspace.as_deref())) }
            button type="submit" { "Apply" }
        }
        @if let Some(total) = summary { p.summary { "Total cost: " strong { (cell(&total)) " USD" } } }
        div.charts {
            @for (name, c) in &charts {
                div { (c) a href=(csv(name)) { "Export " (name) " as CSV" } }
            }
        }
        @for (name, title, rows) in &tables {
            h2 { (title) }
            @if rows.is_empty() { p { "No requests in this range." } }
            @else {
                @let id_cols: Vec<&str> = ["model", "workspace_slug", "name", "api_key_id", "provider"].into_iter().filter(|c| rows[0].get(*c).is_some()).collect();
                @let metric_cols: Vec<&str> = ["requests", "failed_requests", "total_tokens", "cost", "latency_p95_ms"].into_iter().filter(|c| rows[0].get(*c).is_some()).collect();
                div.scroll { table {
                    thead { tr { @for c in id_cols.iter().chain(metric_cols.iter()) { th { (c.replace('_', " ")) } } } }
                    tbody { @for r in rows { tr { @for c in id_cols.iter().chain(metric_cols.iter()) {
                        td { @match r.get(*c) { Some(Value::Number(n)) => (fmt_num(n.as_f64().unwrap_or(0.0))), Some(v) => (cell(v)), None => "—" } }
                    } } } }
                } }
                a href=(csv(name)) { "Export " (title.to_lowercase()) " as CSV" }
            }
        }
    };
    Ok(html::page(&d, &s, "Analytics", Nav::Analytics, body))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ExportQuery {
    kind: Option<String>,
    #[serde(flatten)]
    q: AnalyticsQuery,
}

/// The API's CSV for a graph or a group, through the session.
pub async fn export_csv(State(d): State<Dash>, Signed(s): Signed, Query(e): Query<ExportQuery>) -> PageResult {
    let kind = e.kind.as_deref().unwrap_or("requests");
    let path = match kind {
        "requests" | "cost" | "tokens" | "latency" | "errors" => format!("/v1/analytics/graphs/{kind}"),
        "model" | "workspace" | "api_key" | "provider" => format!("/v1/analytics/groups/{kind}"),
        _ => {
            return Err(super::PageError::Api(
                d.clone(),
                super::ApiError {
                    status: 400,
                    message: format!("no export named '{kind}'"),
                },
            ))
        }
    };
    let api = e.q.api_query(d.state.now());
    let reply = d.call(&s, Method::GET, &format!("{path}?{api}&format=csv"), None).await;
    if reply.status != 200 {
        return Err(super::PageError::Api(
            d.clone(),
            reply.into_json().err().unwrap_or(super::ApiError {
                status: 500,
                message: "export failed".into(),
            }),
        ));
    }
    let name = format!("attachment; filename=\"tollgate-{}.csv\"", kind.replace('_', "-"));
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, name),
        ],
        reply.bytes,
    )
        .into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AuditQuery {
    object_type: Option<String>,
    object_id: Option<String>,
    actor: Option<String>,
    from: Option<String>,
    to: Option<String>,
    page: Option<usize>,
}

pub async fn audit(State(d): State<Dash>, Signed(s): Signed, Query(q): Query<AuditQuery>) -> PageResult {
    let page = q.page.unwrap_or(0);
    let (from, to) = (utc(q.from.as_deref()), utc(q.to.as_deref()));
    let (page_s, size_s) = (page.to_string(), PAGE_SIZE.to_string());
    let api_query = query(&[
        ("object_type", q.object_type.as_deref()),
        ("object_id", q.object_id.as_deref()),
        ("actor", q.actor.as_deref()),
        ("from", from.as_deref()),
        ("to", to.as_deref()),
        ("current_page", Some(&page_s)),
        ("page_size", Some(&size_s)),
    ]);
    let v = d.get(&s, &format!("/v1/audit-logs?{api_query}")).await.or_page(&d)?;
    let rows = v.get("data").and_then(Value::as_array).cloned().unwrap_or_default();
    let total = v["total"].as_u64().unwrap_or(0);
    let keep = |p: usize| {
        let p = p.to_string();
        d.url(&format!(
            "/ui/audit?{}",
            query(&[
                ("object_type", q.object_type.as_deref()),
                ("object_id", q.object_id.as_deref()),
                ("actor", q.actor.as_deref()),
                ("from", q.from.as_deref()),
                ("to", q.to.as_deref()),
                ("page", Some(&p)),
            ])
        ))
    };
    let none = Errors::default();
    let shown_to = page * PAGE_SIZE + rows.len();
    let body = html! {
        form.filters method="get" action=(d.url("/ui/audit")) {
            (input("Object type", "object_type", "text", q.object_type.as_deref(), &none, None))
            (input("Object id", "object_id", "text", q.object_id.as_deref(), &none, None))
            (input("Actor key id", "actor", "text", q.actor.as_deref(), &none, None))
            (input("From (UTC)", "from", "datetime-local", q.from.as_deref(), &none, None))
            (input("To (UTC)", "to", "datetime-local", q.to.as_deref(), &none, None))
            button type="submit" { "Filter" }
        }
        p role="status" { (total) " entries" }
        div.scroll { table {
            thead { tr { th { "Time" } th { "Actor" } th { "Action" } th { "Object" } th { "Details" } } }
            tbody { @for r in &rows { tr {
                td { (str_of(r, "created_at")) } td { (cell(&r["actor_key_id"])) } td { (str_of(r, "action")) }
                td { (str_of(r, "object_type")) " " code { (str_of(r, "object_id")) } }
                td { code { (r["details"].to_string()) } }
            } } }
        } }
        nav.pager aria-label="Pages" {
            @if page > 0 { a href=(keep(page - 1)) rel="prev" { "Newer" } }
            @if (shown_to as u64) < total { a href=(keep(page + 1)) rel="next" { "Older" } }
        }
    };
    Ok(html::page(&d, &s, "Audit log", Nav::Audit, body))
}
