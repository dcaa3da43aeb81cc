//! Where the gateway meets the limit counters: which limits apply to a
//! request (integration × workspace, provider, API key, workspace, in that
//! order), its worst case, admission, settlement, the provider `exhausted`
//! status, and rebuilding consumed budgets from the request log (at
//! start-up, and in Redis whenever it lost a workspace's counters).
//!
//! Every limit of a request belongs to its workspace, so the counters' group
//! is the workspace: [`group`].

use crate::error::GatewayError;
use crate::state::SharedState;
use chrono::{DateTime, Utc};
use std::time::Duration;
use tollgate_core::admission::{
    Actual, Demand, Level, LimitCheck, LimitId, LimitOwner, RateHeaders, RefusalReason, Rule, Window,
};
use tollgate_core::ids::ProviderId;
use tollgate_core::limit_owner::counter_group;
use tollgate_core::limits::{BudgetKind, RateKind};
use tollgate_core::money::Money;
use tollgate_core::records::{Limits, ProviderRecord};
use tollgate_store::counters::{AdmitError, CounterError, Reservation, RestoreTurn};
use tollgate_store::request_log::Scope;
use tollgate_store::StoreError;

/// The counter group of a workspace's limits: `ws:<workspace id>` (in
/// Redis, the hash tag `{ws:<workspace id>}` of all its keys).
pub fn group(workspace: &str) -> String {
    counter_group(workspace)
}

/// How long an admission waits while another replica rebuilds its
/// workspace's counters, before it answers 503.
const REBUILD_WAIT: Duration = Duration::from_secs(5);
/// How often it looks whether the rebuild is done.
const REBUILD_POLL: Duration = Duration::from_millis(25);

/// The limit id of a provider record's own limits.
pub fn provider_limit(p: &ProviderRecord) -> LimitId {
    LimitId::new(LimitOwner::Provider(ProviderId::new(p.id.clone())))
}

/// The checks an owner's limits make, budget first.
pub fn checks(owner: LimitOwner, limits: &Limits) -> Vec<LimitCheck> {
    let id = LimitId::new(owner);
    let mut out = Vec::with_capacity(2);
    if let Some(u) = &limits.usage {
        out.push(LimitCheck {
            id: id.clone(),
            rule: Rule::Budget {
                limit: u.limit,
                set_at: u.set_at,
            },
        });
    }
    if let Some(r) = &limits.rate {
        out.push(LimitCheck {
            id,
            rule: Rule::Rate(r.limit),
        });
    }
    out
}

/// Turns a counter refusal into the gateway error API.md prescribes.
pub fn refusal_error(e: AdmitError) -> GatewayError {
    let r = match e {
        AdmitError::Refused(r) => *r,
        AdmitError::Counter(c @ (CounterError::Unavailable(_) | CounterError::NeedsRestore(_))) => {
            return GatewayError::LimitsUnavailable(c.to_string())
        }
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

/// Admits a request of `workspace` with worst case `demand` against
/// `checks`. A refusal comes with the rate-limit header figures of the
/// limits that apply. If the counters were lost (Redis restarted empty),
/// the workspace's are rebuilt from the request log first, by this replica
/// or another.
pub async fn admit(
    state: &SharedState,
    workspace: &str,
    checks: &[LimitCheck],
    demand: Demand,
) -> Result<Reservation, (GatewayError, RateHeaders)> {
    let group = group(workspace);
    let deadline = tokio::time::Instant::now() + REBUILD_WAIT;
    loop {
        let e = match state.counters.admit(state.now(), &group, checks, demand).await {
            Ok(r) => return Ok(r),
            Err(e) => e,
        };
        if matches!(e, AdmitError::Counter(CounterError::NeedsRestore(_))) && tokio::time::Instant::now() < deadline {
            if let Err(e) = rebuild(state, &group).await {
                return Err((refusal_error(e.into()), RateHeaders::default()));
            }
            continue;
        }
        let headers = match &e {
            AdmitError::Refused(r) => r.headers,
            AdmitError::Counter(_) => RateHeaders::default(),
        };
        return Err((refusal_error(e), headers));
    }
}

/// One step towards rebuilt counters of `group`: rebuilds them if it is
/// this replica's turn (in its own task, so that a client going away cannot
/// leave it half done), else waits a moment for the replica that does.
async fn rebuild(state: &SharedState, group: &str) -> Result<(), CounterError> {
    match state.counters.begin_restore(group).await? {
        RestoreTurn::Ours => {
            let (st, g) = (state.clone(), group.to_owned());
            tokio::spawn(async move { restore_group(&st, &g).await })
                .await
                .map_err(|e| CounterError::Unavailable(format!("rebuilding the counters stopped: {e}")))?
        }
        RestoreTurn::Theirs => {
            tokio::time::sleep(REBUILD_POLL).await;
            Ok(())
        }
        RestoreTurn::Done => Ok(()),
    }
}

/// Rebuilds the counters of `group`'s limits from the request log and marks
/// them rebuilt.
async fn restore_group(state: &SharedState, group: &str) -> Result<(), CounterError> {
    // Every answered request must be in the log before it is summed: this
    // replica's queued records are written now, and other replicas write
    // theirs within `WRITTEN_WITHIN` of their answers.
    state.usage.flush().await;
    tokio::time::sleep(tollgate_store::request_log::WRITTEN_WITHIN).await;
    let now = state.now();
    let limits = every_limit(state, Some(group));
    let n = limits.len();
    for (check, scope) in &limits {
        restore_one(state, group, check, scope, now)
            .await
            .map_err(|e| match e {
                RestoreError::Db(e) => CounterError::Unavailable(format!("reading the request log: {e}")),
                RestoreError::Counter(e) => e,
            })?;
    }
    state.counters.restored(group).await?;
    tracing::warn!(group, limits = n, "limit counters rebuilt from the request log");
    Ok(())
}

/// Settles an admitted request with what it used; alerts it set off go to
/// the outbox.
pub async fn settle(state: &SharedState, reservation: Reservation, tokens: u64, cost: Option<Money>) {
    match state.counters.settle(reservation, Actual { tokens, cost }).await {
        // Rare: boxed, so that every request's state machine stays small.
        Ok(alerts) if !alerts.is_empty() => Box::pin(crate::alerts::enqueue(state, alerts)).await,
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
    match state
        .counters
        .status(&group(&p.workspace_id), &provider_limit(p), &rule, now)
        .await
    {
        Ok(c) => c.exhausted(),
        Err(_) => false,
    }
}

/// Every limit in the control plane (or of one group), as the snapshot
/// already holds it, with its group and the request-log rows it applies to.
/// An integration × workspace limit shared by several providers is listed
/// once.
fn every_limit(state: &SharedState, only: Option<&str>) -> Vec<(LimitCheck, Scope)> {
    let snap = state.snapshot();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut add = |c: &LimitCheck, scope: Scope| {
        if seen.insert((c.id.clone(), matches!(c.rule, Rule::Budget { .. }))) {
            out.push((c.clone(), scope));
        }
    };
    let wanted = |ws: &str| only.is_none_or(|g| g == group(ws));
    for w in snap.workspaces.keys().filter(|w| wanted(w)) {
        for c in snap.workspace_checks(w) {
            add(c, Scope::Workspace(w.clone()));
        }
        for r in snap.routes_of(w) {
            for c in &r.checks {
                let scope = match c.level() {
                    Level::IntegrationWorkspace => {
                        Scope::IntegrationWorkspace(r.integration.record.id.clone(), w.clone())
                    }
                    _ => Scope::Provider(w.clone(), r.provider_record.slug.clone()),
                };
                add(c, scope);
            }
        }
    }
    for k in snap.keys() {
        if !wanted(k.record.workspace_id.as_deref().unwrap_or_default()) {
            continue;
        }
        for c in &k.checks {
            add(c, Scope::ApiKey(k.record.id.clone()));
        }
    }
    out
}

/// The group of a listed limit: its scope's workspace (an API key's is the
/// key's own).
fn group_of(state: &SharedState, scope: &Scope) -> String {
    match scope {
        Scope::Workspace(w) | Scope::Provider(w, _) | Scope::IntegrationWorkspace(_, w) => group(w),
        Scope::ApiKey(k) => group(
            state
                .snapshot()
                .key_by_id(k)
                .and_then(|k| k.record.workspace_id.as_deref())
                .unwrap_or_default(),
        ),
    }
}

#[derive(Debug, thiserror::Error)]
enum RestoreError {
    #[error(transparent)]
    Db(#[from] StoreError),
    #[error(transparent)]
    Counter(#[from] CounterError),
}

/// Sets one limit's current window to what the request log holds for it.
async fn restore_one(
    state: &SharedState,
    group: &str,
    check: &LimitCheck,
    scope: &Scope,
    now: DateTime<Utc>,
) -> Result<(), RestoreError> {
    let from = Window::of(&check.rule, now).start;
    let (cost, tokens, requests) = state.store.request_log().consumed_since(scope, from).await?;
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
        state
            .counters
            .restore(group, &check.id, &check.rule, now, consumed)
            .await?;
    }
    Ok(())
}

/// Rebuilds the consumed amount of every limit's current window from the
/// request log at start-up, so that a restart never hands out a fresh
/// budget. Counters in Redis are rebuilt only for workspaces whose counters
/// Redis does not hold (others are shared with running replicas); if Redis
/// cannot be reached now, they are rebuilt on their first admission.
pub async fn restore_from_log(state: &SharedState) -> Result<usize, StoreError> {
    let now = state.now();
    let limits = every_limit(state, None);
    // Each group's turn: only `Ours` is rebuilt here.
    let mut turns: std::collections::HashMap<String, RestoreTurn> = Default::default();
    for (check, scope) in &limits {
        let group = group_of(state, scope);
        let turn = match turns.get(&group) {
            Some(t) => *t,
            None => {
                let t = state.counters.begin_restore(&group).await.unwrap_or_else(|e| {
                    tracing::error!(error = %e, group, "cannot rebuild the limit counters now; the first admission will");
                    RestoreTurn::Done
                });
                turns.insert(group.clone(), t);
                t
            }
        };
        if turn != RestoreTurn::Ours {
            continue;
        }
        match restore_one(state, &group, check, scope, now).await {
            Ok(()) => {}
            Err(RestoreError::Db(e)) => return Err(e),
            Err(RestoreError::Counter(e)) => {
                tracing::error!(error = %e, limit = %check.id, "restoring a counter failed; the first admission tries again");
                // Not marked rebuilt.
                turns.insert(group, RestoreTurn::Done);
            }
        }
    }
    for (group, turn) in turns {
        if turn == RestoreTurn::Ours {
            if let Err(e) = state.counters.restored(&group).await {
                tracing::error!(error = %e, group, "marking the limit counters rebuilt failed");
            }
        }
    }
    Ok(limits.len())
}
