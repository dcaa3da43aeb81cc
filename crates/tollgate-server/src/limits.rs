//! Where the gateway meets the limit counters: which limits apply to a
//! request (integration × workspace, provider, API key, workspace, in that
//! order), its worst case, admission, settlement, the provider `exhausted`
//! status, and rebuilding consumed budgets from the request log at start-up.

use crate::error::GatewayError;
use crate::state::SharedState;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use tollgate_core::admission::{Actual, Demand, Level, LimitCheck, RefusalReason, Rule, Window};
use tollgate_core::limits::{BudgetKind, RateKind};
use tollgate_core::money::Money;
use tollgate_core::records::{Limits, ProviderRecord};
use tollgate_store::counters::{AdmitError, Reservation};
use tollgate_store::usage::{self, Scope};
use tollgate_store::DbError;

/// Counter id of an integration × workspace level.
pub fn iw_id(integration_id: &str, workspace_id: &str) -> String {
    format!("iw:{integration_id}:{workspace_id}")
}
pub fn provider_id(p: &ProviderRecord) -> String {
    format!("prv:{}", p.id)
}
pub fn key_id(key_id: &str) -> String {
    format!("key:{key_id}")
}
pub fn workspace_id(ws: &str) -> String {
    format!("ws:{ws}")
}

/// The checks a level's limits make, budget first.
pub fn checks(level: Level, id: &str, limits: &Limits) -> Vec<LimitCheck> {
    let id: Arc<str> = Arc::from(id);
    let mut out = Vec::with_capacity(2);
    if let Some(u) = &limits.usage {
        out.push(LimitCheck {
            id: id.clone(),
            level,
            rule: Rule::Budget {
                limit: u.limit,
                set_at: u.set_at,
            },
        });
    }
    if let Some(r) = &limits.rate {
        out.push(LimitCheck {
            id,
            level,
            rule: Rule::Rate(r.limit),
        });
    }
    out
}

/// Turns a counter refusal into the gateway error API.md prescribes.
pub fn refusal_error(e: AdmitError) -> GatewayError {
    let r = match e {
        AdmitError::Refused(r) => r,
        AdmitError::Counter(c) => return GatewayError::Internal(c.to_string()),
    };
    let level = r.level;
    let what = match level {
        Level::IntegrationWorkspace => "integration's budget for this workspace",
        Level::Provider => "provider's budget",
        Level::ApiKey => "API key's budget",
        Level::Workspace => "workspace's budget",
    };
    match r.reason {
        RefusalReason::Budget {
            kind,
            credit_limit,
            consumed,
            reserved,
            next_reset,
            ..
        } => {
            let fmt = |a: i64| match kind {
                BudgetKind::Cost => format!("${}", Money(a)),
                BudgetKind::Tokens => format!("{a} tokens"),
            };
            let reset = next_reset
                .map(|t| format!("; it resets at {}", t.to_rfc3339()))
                .unwrap_or_default();
            GatewayError::BudgetExhausted {
                level,
                message: format!(
                    "the {what} is exhausted: {} of {} used, {} reserved by requests in flight, and this request's worst case does not fit{reset}",
                    fmt(consumed),
                    fmt(credit_limit),
                    fmt(reserved)
                ),
            }
        }
        RefusalReason::Rate {
            kind,
            unit,
            retry_after,
            figures,
        } => {
            let what = match kind {
                RateKind::Requests => "requests",
                RateKind::Tokens => "tokens",
            };
            let unit = match unit {
                tollgate_core::limits::RateUnit::Rpm => "minute",
                tollgate_core::limits::RateUnit::Rph => "hour",
                tollgate_core::limits::RateUnit::Rpd => "day",
            };
            let message = if figures.limit == 0 {
                format!(
                    "the {} rate limit is 0 {what} per {unit}: this provider is disabled",
                    level.error_prefix()
                )
            } else {
                format!(
                    "{} rate limit exceeded: {} {what} per {unit}; retry in {retry_after} s",
                    level.error_prefix(),
                    figures.limit
                )
            };
            GatewayError::RateLimited {
                level,
                message,
                retry_after_secs: retry_after,
            }
        }
    }
}

/// Admits a request with worst case `demand` against `checks`.
pub async fn admit(state: &SharedState, checks: &[LimitCheck], demand: Demand) -> Result<Reservation, GatewayError> {
    state
        .counters
        .admit(state.now(), checks, demand)
        .await
        .map_err(refusal_error)
}

/// Settles an admitted request with what it used; alerts it set off go to
/// the outbox.
pub async fn settle(state: &SharedState, reservation: Reservation, tokens: u64, cost: Option<Money>) {
    match state.counters.settle(reservation, Actual { tokens, cost }).await {
        Ok(alerts) if !alerts.is_empty() => crate::alerting::enqueue(state, alerts).await,
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "settling a reservation failed"),
    }
}

/// Gives a failed request's worst case back.
pub async fn release(state: &SharedState, reservation: Reservation) {
    if let Err(e) = state.counters.release(reservation).await {
        tracing::error!(error = %e, "releasing a reservation failed");
    }
}

/// Is a budget of the provider used up?
pub async fn provider_exhausted(state: &SharedState, p: &ProviderRecord, now: DateTime<Utc>) -> bool {
    let Some(u) = &p.limits.usage else { return false };
    let rule = Rule::Budget {
        limit: u.limit,
        set_at: u.set_at,
    };
    match state.counters.status(&provider_id(p), &rule, now).await {
        Ok(c) => c.exhausted(),
        Err(_) => false,
    }
}

/// Every limit in the control plane with the request-log rows it applies to.
fn every_limit(state: &SharedState) -> Vec<(LimitCheck, Scope)> {
    let snap = state.snapshot();
    let mut out = Vec::new();
    for w in snap.workspaces.values() {
        for c in checks(Level::Workspace, &workspace_id(&w.id), &w.limits) {
            out.push((c, Scope::Workspace(w.id.clone())));
        }
        for r in snap.routes_of(&w.id) {
            for c in checks(Level::Provider, &provider_id(&r.provider), &r.provider.limits) {
                out.push((c, Scope::Provider(w.id.clone(), r.provider.slug.clone())));
            }
        }
    }
    for i in snap.integrations() {
        for w in snap.workspaces.keys() {
            if i.record.access_for(w).is_some() {
                for c in checks(
                    Level::IntegrationWorkspace,
                    &iw_id(&i.record.id, w),
                    &i.record.workspace_limits(w),
                ) {
                    out.push((c, Scope::IntegrationWorkspace(i.record.id.clone(), w.clone())));
                }
            }
        }
    }
    for k in snap.keys() {
        for c in checks(Level::ApiKey, &key_id(&k.record.id), &k.record.limits) {
            out.push((c, Scope::ApiKey(k.record.id.clone())));
        }
    }
    out
}

/// Rebuilds the consumed amount of every limit's current window from the
/// request log, so that a restart never hands out a fresh budget.
pub async fn restore_from_log(state: &SharedState) -> Result<usize, DbError> {
    let now = state.now();
    let limits = every_limit(state);
    for (check, scope) in &limits {
        let from = Window::of(&check.rule, now).start;
        let (cost, tokens, requests) = usage::consumed_since(state.store.pool(), scope, from).await?;
        let consumed = match &check.rule {
            Rule::Budget { limit, .. } => match limit.kind {
                BudgetKind::Cost => cost,
                BudgetKind::Tokens => tokens,
            },
            Rule::Rate(r) => match r.kind {
                RateKind::Requests => requests,
                RateKind::Tokens => tokens,
            },
        };
        if consumed > 0 {
            if let Err(e) = state.counters.restore(&check.id, &check.rule, now, consumed).await {
                tracing::error!(error = %e, limit = %check.id, "restoring a counter failed");
            }
        }
    }
    Ok(limits.len())
}
