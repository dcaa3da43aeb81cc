//! Turns the budget alerts that settlement sets off into outbox entries
//! (delivered by [`super::Dispatcher`] by email and webhook): the
//! limit is looked up in the snapshot for its name, workspace, unit,
//! threshold and extra recipients.

use crate::state::SharedState;
use tollgate_core::admission::{AlertEvent, AlertKind, LimitOwner};
use tollgate_core::limits::{BudgetKind, UsageLimit};
use tollgate_core::money::Money;
use tollgate_core::records::LimitSetting;
use tollgate_store::outbox::{AlertKind as OutKind, AlertPayload};

struct Described {
    name: String,
    workspace_id: Option<String>,
    limit: LimitSetting<UsageLimit>,
    recipients: Vec<String>,
}

fn describe(state: &SharedState, owner: &LimitOwner) -> Option<Described> {
    let snap = state.snapshot();
    match owner {
        LimitOwner::ApiKey(key) => {
            let k = snap.key_by_id(key.as_str())?;
            Some(Described {
                name: k.record.name.clone(),
                workspace_id: k.record.workspace_id.clone(),
                limit: k.record.limits.usage.clone()?,
                recipients: k.record.alert_emails.clone(),
            })
        }
        LimitOwner::Workspace(ws) => {
            let w = snap.workspaces.get(ws.as_str())?;
            Some(Described {
                name: w.name.clone(),
                workspace_id: Some(w.id.clone()),
                limit: w.limits.usage.clone()?,
                recipients: vec![],
            })
        }
        LimitOwner::Provider(provider) => {
            let p = snap.provider_records.iter().find(|p| p.id == provider.as_str())?;
            Some(Described {
                name: format!("@{}", p.slug),
                workspace_id: Some(p.workspace_id.clone()),
                limit: p.limits.usage.clone()?,
                recipients: vec![],
            })
        }
        LimitOwner::IntegrationWorkspace { integration, workspace } => {
            let i = snap.integration(integration.as_str())?;
            Some(Described {
                name: format!("{} in {workspace}", i.record.slug),
                workspace_id: Some(workspace.as_str().to_owned()),
                limit: i.record.workspace_limits(workspace.as_str()).usage?,
                recipients: vec![],
            })
        }
    }
}

fn amount(kind: BudgetKind, a: i64) -> String {
    match kind {
        BudgetKind::Cost => Money(a).to_string(),
        BudgetKind::Tokens => a.to_string(),
    }
}

/// The outbox payload of one alert, or `None` if its limit is gone.
pub fn payload(state: &SharedState, e: &AlertEvent) -> Option<AlertPayload> {
    let d = describe(state, e.id.owner())?;
    let u = d.limit.limit;
    Some(AlertPayload {
        event_id: tollgate_core::ids::prefixed_id("alert"),
        kind: match e.kind {
            AlertKind::Threshold => OutKind::Threshold,
            AlertKind::Exhausted => OutKind::Exhausted,
        },
        level: e.level.as_str().to_owned(),
        limit_id: e.id.to_string(),
        name: d.name,
        workspace_id: d.workspace_id,
        limit_type: u.kind,
        consumed: amount(u.kind, e.consumed),
        credit_limit: amount(u.kind, e.limit),
        alert_threshold: u.alert_threshold.map(|a| amount(u.kind, a)),
        period_start: e.period_start,
        next_reset_at: u
            .periodic_reset
            .map(|r| tollgate_core::limits::next_reset(r, e.period_start)),
        recipients: d.recipients,
    })
}

/// Records alerts in the durable outbox; the dispatcher delivers them.
pub async fn enqueue(state: &SharedState, alerts: Vec<AlertEvent>) {
    for e in &alerts {
        let Some(p) = payload(state, e) else { continue };
        if let Err(err) = state.alerts.enqueue_or_retry(p).await {
            tracing::error!(error = %err, limit = %e.id, "an alert could not be recorded");
        }
    }
}
