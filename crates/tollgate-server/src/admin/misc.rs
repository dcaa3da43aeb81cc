//! Read-only admin endpoints: the AI provider catalogue, the audit trail and
//! the request log.

use super::Page;
use crate::auth::Caller;
use crate::error::AdminError;
use crate::state::SharedState;
use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use tollgate_core::money::Money;
use tollgate_store::control::AuditFilter;
use tollgate_store::request_log::{LogFilter, LogRecord};

pub async fn ai_providers(_caller: Caller) -> Json<Value> {
    let data: Vec<Value> = tollgate_core::catalogue::providers()
        .iter()
        .map(|p| {
            json!({
                "id": p.id,
                "name": p.name,
                "protocol": p.protocol,
                "default_base_url": p.default_base_url,
                "credential_fields": p.credential_fields,
                "object": "ai-provider",
            })
        })
        .collect();
    Json(json!({"object": "list", "total": data.len(), "data": data}))
}

fn time_param(v: &Option<String>, name: &str) -> Result<Option<DateTime<Utc>>, AdminError> {
    v.as_deref()
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    AdminError::validation(format!("{name} must be an ISO 8601 time, e.g. 2026-01-31T00:00:00Z"))
                })
        })
        .transpose()
}

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    pub object_type: Option<String>,
    #[serde(default)]
    pub object_id: Option<String>,
    #[serde(default)]
    pub actor: Option<String>,
    #[serde(default, alias = "start_time")]
    pub from: Option<String>,
    #[serde(default, alias = "end_time")]
    pub to: Option<String>,
    #[serde(flatten)]
    pub page: Page,
}

pub async fn audit_logs(
    State(state): State<SharedState>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, AdminError> {
    caller.require_org()?;
    let (offset, size) = q.page.bounds()?;
    let f = AuditFilter {
        object_type: q.object_type,
        object_id: q.object_id,
        actor: q.actor,
        from: time_param(&q.from, "from")?,
        to: time_param(&q.to, "to")?,
        offset: Page::sql_offset(offset),
        limit: size as i64,
    };
    let (total, rows) = state.store.audit_logs(&f).await?;
    let data: Vec<Value> = rows
        .into_iter()
        .map(|e| {
            json!({"id": e.id, "created_at": e.at, "actor_key_id": e.actor, "action": e.action,
                   "object_type": e.object_type, "object_id": e.object_id, "details": e.details, "object": "audit-log"})
        })
        .collect();
    Ok(Json(json!({"object": "list", "total": total, "data": data})))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LogsQuery {
    pub workspace_id: Option<String>,
    pub api_key_id: Option<String>,
    pub provider: Option<String>,
    pub integration: Option<String>,
    pub model: Option<String>,
    pub status_code: Option<String>,
    pub trace_id: Option<String>,
    pub time_of_generation_min: Option<String>,
    pub time_of_generation_max: Option<String>,
    /// US dollars, inclusive.
    pub cost_min: Option<String>,
    pub cost_max: Option<String>,
    pub metadata: Option<String>,
    /// `false`: skip counting every match (`total` is null); for paging
    /// through a very large log.
    pub with_total: Option<String>,
    #[serde(flatten)]
    pub page: Page,
}

/// The wire object of one request record.
pub fn record_json(r: &LogRecord) -> Value {
    json!({
        "id": r.id,
        "created_at": r.created_at,
        "trace_id": r.trace_id,
        "workspace_id": r.workspace_id,
        "api_key_id": r.api_key_id,
        "integration_id": r.integration_id,
        "integration": r.integration_slug,
        "provider": r.provider_slug,
        "ai_provider_id": r.ai_provider_id,
        "model": r.model,
        "endpoint": r.endpoint,
        "status_code": r.status_code,
        "error_type": r.error_type,
        "refusal": r.refusal,
        "streamed": r.streamed,
        "cancelled": r.cancelled,
        "usage": {
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "cached_tokens": r.cached_tokens,
            "total_tokens": r.total_tokens,
            "estimated": r.tokens_estimated,
        },
        "cost": r.cost_picos.map(|c| Money(c).as_usd_f64()),
        "cost_exact": r.cost_picos.map(|c| Money(c).to_string()),
        "latency_ms": r.latency_us as f64 / 1000.0,
        "time_to_first_token_ms": r.ttft_us.map(|v| v as f64 / 1000.0),
        "upstream_latency_ms": r.upstream_latency_us.map(|v| v as f64 / 1000.0),
        "metadata": r.metadata,
        "request_body": r.request_body,
        "response_body": r.response_body,
        "target": r.target_path,
        "retry_attempt": r.retry_attempt,
        "attempt": r.attempt,
        "is_final_attempt": !r.superseded,
        "object": "log",
    })
}

pub async fn logs(
    State(state): State<SharedState>,
    caller: Caller,
    Query(q): Query<LogsQuery>,
) -> Result<Json<Value>, AdminError> {
    // Organisation keys see every workspace; workspace keys with logs.view
    // see their own only.
    let workspace_id = match caller.workspace_id() {
        Some(own) => {
            caller.require_scope("logs.view")?;
            if q.workspace_id.as_deref().is_some_and(|w| w != own) {
                return Err(AdminError::forbidden(
                    "this API key can read only its own workspace's logs",
                ));
            }
            Some(own.to_owned())
        }
        None => q.workspace_id.clone(),
    };
    let metadata = match &q.metadata {
        None => Vec::new(),
        Some(text) => {
            let v: serde_json::Map<String, Value> = serde_json::from_str(text)
                .map_err(|_| AdminError::validation("metadata must be a JSON object of strings"))?;
            v.into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k, s)),
                    _ => Err(AdminError::validation("metadata values must be strings")),
                })
                .collect::<Result<_, _>>()?
        }
    };
    let status_code = q
        .status_code
        .as_deref()
        .map(|s| {
            s.parse::<u16>()
                .map_err(|_| AdminError::validation("status_code must be a number"))
        })
        .transpose()?;
    let cost = |v: &Option<String>, name: &str| -> Result<Option<i64>, AdminError> {
        v.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                Money::parse_usd(s)
                    .filter(|m| m.picos() >= 0)
                    .map(Money::picos)
                    .ok_or_else(|| AdminError::validation(format!("{name} must be an amount of US dollars, e.g. 0.05")))
            })
            .transpose()
    };
    let (offset, size) = q.page.bounds()?;
    let f = LogFilter {
        workspace_id,
        api_key_id: q.api_key_id,
        provider_slug: q.provider,
        integration_slug: q.integration,
        model: q.model,
        status_code,
        trace_id: q.trace_id,
        from: time_param(&q.time_of_generation_min, "time_of_generation_min")?,
        to: time_param(&q.time_of_generation_max, "time_of_generation_max")?,
        cost_min: cost(&q.cost_min, "cost_min")?,
        cost_max: cost(&q.cost_max, "cost_max")?,
        metadata,
        count_total: match q.with_total.as_deref().map(str::trim) {
            None | Some("true") => true,
            Some("false") => false,
            Some(_) => return Err(AdminError::validation("with_total must be true or false")),
        },
        offset: Page::sql_offset(offset),
        limit: size as i64,
    };
    // Read your own writes: every request already answered is in the log.
    state.usage.flush().await;
    let (total, rows) = state.store.request_log().list(&f).await?;
    Ok(Json(
        json!({"object": "list", "total": total, "data": rows.iter().map(record_json).collect::<Vec<_>>()}),
    ))
}
