//! Budget alert delivery: email over SMTP and a signed webhook, driven by the
//! durable outbox in `tollgate_store::outbox`.
//!
//! The gateway only enqueues (through [`AlertHandle::enqueue`]); the
//! [`Dispatcher`] background task delivers, so an SMTP server or webhook
//! receiver that is slow or down never holds up a request. Each channel is
//! retried on its own with capped exponential backoff, and the outbox's
//! dedupe key makes an alert go out once per limit per period.
//!
//! # Webhook
//!
//! `POST <alert_webhook_url>` with the [`AlertPayload`] as JSON and headers:
//!
//! - `x-tollgate-event-id`: the alert's event id; the same on every retry, so
//!   a receiver can drop duplicates.
//! - `x-tollgate-timestamp`: unix seconds when this attempt was signed.
//! - `x-tollgate-signature`: `sha256=<hex>`, the HMAC-SHA256, keyed with
//!   `alert_webhook_secret`, of the timestamp header's value, a `.`, and the
//!   exact body bytes (`"{timestamp}.{body}"`). Including the timestamp lets a
//!   receiver refuse replays of an old request; see [`verify_webhook_signature`].
//!   Sent only when a secret is configured.
//!
//! Any 2xx answer counts as delivered; anything else, including redirects
//! (which are not followed), is retried.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration as StdDuration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tollgate_core::clock::SharedClock;
use tollgate_core::limits::BudgetKind;
use tollgate_core::secrets::Secret;
use tollgate_store::outbox::{retry_delay, Enqueued, Outbox, OutboxEntry, OutboxError};

pub use tollgate_store::outbox::{AlertKind, AlertPayload, Channel};

/// Header carrying the alert's event id.
pub const EVENT_ID_HEADER: &str = "x-tollgate-event-id";
/// Header carrying the unix-seconds timestamp that is part of the signature.
pub const TIMESTAMP_HEADER: &str = "x-tollgate-timestamp";
/// Header carrying `sha256=<hex HMAC>`.
pub const SIGNATURE_HEADER: &str = "x-tollgate-signature";

/// How long one SMTP exchange may take.
const SMTP_TIMEOUT: StdDuration = StdDuration::from_secs(20);
/// How long one webhook call may take.
const WEBHOOK_TIMEOUT: StdDuration = StdDuration::from_secs(10);
/// How long a claimed delivery belongs to its dispatcher: longer than an
/// attempt can take (see the timeouts above); a dispatcher that dies
/// meanwhile leaves the channel due again after it.
const CLAIM_LEASE: chrono::TimeDelta = chrono::TimeDelta::minutes(5);
/// Default time between two outbox polls when nothing wakes the dispatcher.
const DEFAULT_POLL: StdDuration = StdDuration::from_secs(5);
/// Alerts read from the outbox per round.
const BATCH: u32 = 50;

/// The `From:` of alert e-mails: `alert_from`, else `tollgate@<hostname>`
/// when `smtp_url` is set (`None` without SMTP). Logs the sender in use.
pub fn sender(config: &crate::config::Config) -> Option<String> {
    config
        .smtp_url
        .as_ref()
        .map(|u| u.expose().as_str())
        .filter(|u| !u.trim().is_empty())?;
    let from = match config.alert_from.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(set) => set.to_owned(),
        None => {
            let host = hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .map(|h| h.trim_end_matches('.').to_owned())
                .filter(|h| {
                    !h.is_empty()
                        && h.len() <= 253
                        && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                })
                .unwrap_or_else(|| "localhost".to_owned());
            format!("tollgate@{host}")
        }
    };
    let why = if config.alert_from.as_deref().is_some_and(|s| !s.trim().is_empty()) {
        "alert_from"
    } else {
        "default: alert_from is not set"
    };
    tracing::info!(from = %from, source = why, "alert e-mails are sent from {from}");
    Some(from)
}

/// Where alerts go. Empty fields disable a channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertConfig {
    /// `smtp://host:port` (plain), `smtp://host:port?tls=required` (STARTTLS)
    /// or `smtps://host:port` (implicit TLS); credentials as
    /// `smtp://user:password@host`.
    pub smtp_url: Option<Secret<String>>,
    /// The `From:` address; required when `smtp_url` is set.
    pub alert_from: Option<String>,
    /// Admin addresses that receive every alert.
    pub alert_emails: Vec<String>,
    /// May carry a token in its path (chat-service hooks).
    pub webhook_url: Option<Secret<String>>,
    /// HMAC key for `x-tollgate-signature`.
    pub webhook_secret: Option<Secret<String>>,
}

impl AlertConfig {
    /// Splits a comma-separated address list (`TOLLGATE_ALERT_EMAILS`),
    /// dropping blanks.
    pub fn parse_emails(list: &str) -> Vec<String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// Why alerts could not be configured or delivered.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("smtp_url is invalid: {0}")]
    SmtpUrl(String),
    #[error("alert_from is required when smtp_url is set")]
    MissingFrom,
    #[error("{field} has an invalid email address {address:?}")]
    BadAddress { field: &'static str, address: String },
    #[error("alert_webhook_url is invalid: {0}")]
    WebhookUrl(String),
    #[error("cannot build the webhook HTTP client: {0}")]
    HttpClient(String),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("cannot build the alert email: {0}")]
    Email(String),
    #[error("SMTP delivery failed: {0}")]
    Smtp(String),
    #[error("webhook delivery failed: {0}")]
    Webhook(String),
    #[error("cannot sign the webhook: {0}")]
    Signing(String),
}

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &str, timestamp: &str, body: &[u8]) -> Result<HmacSha256, AlertError> {
    // HMAC accepts keys of any length, so this never fails in practice.
    let mut m = HmacSha256::new_from_slice(secret.as_bytes()).map_err(|e| AlertError::Signing(e.to_string()))?;
    m.update(timestamp.as_bytes());
    m.update(b".");
    m.update(body);
    Ok(m)
}

/// The `x-tollgate-signature` value for `body` sent at `timestamp` (unix
/// seconds): `sha256=` and the hex HMAC-SHA256 of `"{timestamp}.{body}"`.
pub fn webhook_signature(secret: &str, timestamp: i64, body: &[u8]) -> Result<String, AlertError> {
    let m = mac(secret, &timestamp.to_string(), body)?;
    Ok(format!("sha256={}", hex::encode(m.finalize().into_bytes())))
}

/// What a receiver does: checks the signature in constant time and that the
/// timestamp is within `tolerance` of `now`, refusing replays of old requests.
pub fn verify_webhook_signature(
    secret: &str,
    timestamp_header: &str,
    body: &[u8],
    signature_header: &str,
    now: DateTime<Utc>,
    tolerance: chrono::Duration,
) -> bool {
    let Ok(ts) = timestamp_header.parse::<i64>() else {
        return false;
    };
    if (now.timestamp() - ts).abs() > tolerance.num_seconds() {
        return false;
    }
    let Some(sig) = signature_header
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    match mac(secret, timestamp_header, body) {
        Ok(m) => m.verify_slice(&sig).is_ok(),
        Err(_) => false,
    }
}

/// The SMTP side, ready to send.
struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    admins: Vec<Mailbox>,
}

/// The webhook side, ready to send.
struct Webhook {
    url: reqwest::Url,
    secret: Option<Secret<String>>,
    client: reqwest::Client,
}

/// How one delivery attempt went.
enum Outcome {
    Sent,
    Skipped(&'static str),
    Failed(AlertError),
}

/// What one [`Dispatcher::run_once`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    pub sent: u32,
    pub failed: u32,
    pub skipped: u32,
}

/// How often an alert that the outbox could not take because the database
/// was unreachable is offered again.
pub const ALERT_RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Enqueues alerts and wakes the dispatcher. Cheap to clone; this is what the
/// gateway keeps.
#[derive(Clone)]
pub struct AlertHandle {
    outbox: Outbox,
    clock: SharedClock,
    notify: Arc<Notify>,
}

impl AlertHandle {
    /// Records `alert` in the outbox (once per limit, period and kind) and, if
    /// it is new, wakes the dispatcher at once.
    pub async fn enqueue(&self, alert: &AlertPayload) -> Result<Enqueued, AlertError> {
        let e = self.outbox.enqueue(alert, self.clock.now()).await?;
        if e.new {
            self.notify();
        }
        Ok(e)
    }

    /// [`AlertHandle::enqueue`]; if the database is unreachable, the alert
    /// is offered again every [`ALERT_RETRY_EVERY`] in the background until
    /// the outbox takes it (the outbox keeps one per limit, period and kind,
    /// so a retry never doubles it). Such an alert is lost only if the
    /// process stops before the database returns.
    pub async fn enqueue_or_retry(&self, alert: AlertPayload) -> Result<(), AlertError> {
        match self.enqueue(&alert).await {
            Err(AlertError::Outbox(e)) if e.is_unavailable() => {
                tracing::warn!(error = %e, limit = %alert.limit_id, "the database is unreachable: the alert is recorded when it returns");
                let handle = self.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(ALERT_RETRY_EVERY).await;
                        match handle.enqueue(&alert).await {
                            Ok(_) => return,
                            Err(AlertError::Outbox(e)) if e.is_unavailable() => {}
                            Err(e) => {
                                tracing::error!(error = %e, limit = %alert.limit_id, "an alert could not be recorded");
                                return;
                            }
                        }
                    }
                });
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// Wakes the dispatcher for an immediate pass (a wake-up sent while it is
    /// busy is kept for its next wait, never lost).
    pub fn notify(&self) {
        self.notify.notify_one();
    }
}

/// Delivers what the outbox holds. Run it with [`Dispatcher::spawn`], or
/// drive it by hand with [`Dispatcher::run_once`].
pub struct Dispatcher {
    outbox: Outbox,
    clock: SharedClock,
    mailer: Option<Mailer>,
    webhook: Option<Webhook>,
    notify: Arc<Notify>,
    poll_interval: StdDuration,
}

impl Dispatcher {
    /// Checks `config` and prepares both channels. Nothing is contacted yet:
    /// an unreachable server shows up as failed (and retried) deliveries.
    pub fn new(outbox: Outbox, config: &AlertConfig, clock: SharedClock) -> Result<Dispatcher, AlertError> {
        Ok(Dispatcher {
            mailer: build_mailer(config)?,
            webhook: build_webhook(config)?,
            outbox,
            clock,
            notify: Arc::new(Notify::new()),
            poll_interval: DEFAULT_POLL,
        })
    }

    /// How often to look at the outbox when nothing wakes the dispatcher
    /// (this is what picks up retries whose backoff has elapsed).
    pub fn with_poll_interval(mut self, every: StdDuration) -> Dispatcher {
        self.poll_interval = every;
        self
    }

    pub fn handle(&self) -> AlertHandle {
        AlertHandle {
            outbox: self.outbox.clone(),
            clock: self.clock.clone(),
            notify: self.notify.clone(),
        }
    }

    /// Whether any channel is configured.
    pub fn is_enabled(&self) -> bool {
        self.mailer.is_some() || self.webhook.is_some()
    }

    /// Delivers every channel of every alert that is due now, recording each
    /// outcome in the outbox.
    pub async fn run_once(&self) -> Result<DeliveryReport, AlertError> {
        let mut report = DeliveryReport::default();
        let now = self.clock.now();
        let mut seen = std::collections::HashSet::new();
        loop {
            let batch = self.outbox.due(now, BATCH).await?;
            let full = batch.len() == BATCH as usize;
            let mut progressed = false;
            for entry in batch {
                // Guards against a row that stays due (e.g. its update failed).
                if !seen.insert(entry.id.clone()) {
                    continue;
                }
                progressed = true;
                self.deliver_entry(&entry, now, &mut report).await?;
            }
            if !full || !progressed {
                return Ok(report);
            }
        }
    }

    async fn deliver_entry(
        &self,
        entry: &OutboxEntry,
        now: DateTime<Utc>,
        report: &mut DeliveryReport,
    ) -> Result<(), AlertError> {
        for channel in Channel::ALL {
            if !entry.is_due(channel, now) {
                continue;
            }
            // Another replica's dispatcher may have read the same entry.
            let seen = entry.channel(channel).next_attempt_at;
            if !self.outbox.claim(&entry.id, channel, seen, now + CLAIM_LEASE).await? {
                tracing::debug!(alert_id = %entry.id, channel = channel.as_str(), "alert taken by another dispatcher");
                continue;
            }
            let outcome = match channel {
                Channel::Email => self.send_email(&entry.payload).await,
                Channel::Webhook => self.send_webhook(&entry.payload).await,
            };
            match outcome {
                Outcome::Sent => {
                    report.sent += 1;
                    tracing::info!(alert_id = %entry.id, channel = channel.as_str(), "alert delivered");
                    self.outbox.mark_sent(&entry.id, channel, self.clock.now()).await?;
                }
                Outcome::Skipped(why) => {
                    report.skipped += 1;
                    tracing::debug!(alert_id = %entry.id, channel = channel.as_str(), why, "alert channel skipped");
                    self.outbox.mark_skipped(&entry.id, channel, self.clock.now()).await?;
                }
                Outcome::Failed(err) => {
                    report.failed += 1;
                    let failures = entry.channel(channel).attempts.saturating_add(1);
                    let next = self.clock.now() + retry_delay(failures);
                    tracing::warn!(
                        alert_id = %entry.id, channel = channel.as_str(), failures, retry_at = %next,
                        error = %err, "alert delivery failed"
                    );
                    self.outbox
                        .mark_failed(&entry.id, channel, &err.to_string(), next)
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn send_email(&self, alert: &AlertPayload) -> Outcome {
        let Some(m) = &self.mailer else {
            return Outcome::Skipped("smtp_url is not configured");
        };
        let mut to: Vec<Mailbox> = m.admins.clone();
        for r in &alert.recipients {
            match r.parse::<Mailbox>() {
                Ok(mb) => to.push(mb),
                // Addresses are checked when a key is created; one that still
                // fails here must not block the others.
                Err(_) => tracing::warn!(alert_id = %alert.event_id, address = %r, "skipping invalid alert recipient"),
            }
        }
        let mut seen = std::collections::HashSet::new();
        to.retain(|mb| seen.insert(mb.email.to_string().to_ascii_lowercase()));
        if to.is_empty() {
            return Outcome::Skipped("no email recipients");
        }
        let (subject, body) = render_email(alert);
        let mut builder = Message::builder()
            .from(m.from.clone())
            .subject(subject)
            .message_id(Some(format!("<{}@tollgate>", alert.event_id)))
            .header(ContentType::TEXT_PLAIN);
        for mb in to {
            builder = builder.to(mb);
        }
        let msg = match builder.body(body) {
            Ok(msg) => msg,
            Err(e) => return Outcome::Failed(AlertError::Email(e.to_string())),
        };
        match m.transport.send(msg).await {
            Ok(_) => Outcome::Sent,
            Err(e) => Outcome::Failed(AlertError::Smtp(e.to_string())),
        }
    }

    async fn send_webhook(&self, alert: &AlertPayload) -> Outcome {
        let Some(w) = &self.webhook else {
            return Outcome::Skipped("alert_webhook_url is not configured");
        };
        let body = match serde_json::to_vec(alert) {
            Ok(b) => b,
            Err(e) => return Outcome::Failed(AlertError::Webhook(e.to_string())),
        };
        let ts = self.clock.now().timestamp();
        let mut req = w
            .client
            .post(w.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(EVENT_ID_HEADER, &alert.event_id)
            .header(TIMESTAMP_HEADER, ts.to_string());
        if let Some(secret) = &w.secret {
            match webhook_signature(secret.expose(), ts, &body) {
                Ok(sig) => req = req.header(SIGNATURE_HEADER, sig),
                Err(e) => return Outcome::Failed(e),
            }
        }
        match req.body(body).send().await {
            Ok(resp) if resp.status().is_success() => Outcome::Sent,
            Ok(resp) => Outcome::Failed(AlertError::Webhook(format!("receiver answered {}", resp.status()))),
            // The URL may carry a token: keep it out of logs and the outbox.
            Err(e) => Outcome::Failed(AlertError::Webhook(e.without_url().to_string())),
        }
    }

    /// Runs until `shutdown` is cancelled: a pass over the outbox, then a wait
    /// for a wake-up, the poll interval, or shutdown. An in-flight pass is
    /// finished before stopping; what is left stays in the outbox for the
    /// next start.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.run_once().await {
                tracing::error!(error = %e, "alert dispatcher pass failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep(self.poll_interval) => {}
            }
        }
    }

    /// Spawns [`Dispatcher::run`] on the current tokio runtime.
    pub fn spawn(self, shutdown: CancellationToken) -> (AlertHandle, JoinHandle<()>) {
        let handle = self.handle();
        (handle, tokio::spawn(self.run(shutdown)))
    }
}

fn build_mailer(config: &AlertConfig) -> Result<Option<Mailer>, AlertError> {
    let Some(url) = config
        .smtp_url
        .as_ref()
        .map(|u| u.expose().as_str())
        .filter(|u| !u.trim().is_empty())
    else {
        return Ok(None);
    };
    // lettre's messages do not echo the URL, so the password stays out.
    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.trim())
        .map_err(|e| AlertError::SmtpUrl(e.to_string()))?
        .timeout(Some(SMTP_TIMEOUT))
        .build();
    let from = config
        .alert_from
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(AlertError::MissingFrom)?;
    let from = parse_mailbox("alert_from", from)?;
    let admins = config
        .alert_emails
        .iter()
        .map(|a| parse_mailbox("alert_emails", a))
        .collect::<Result<_, _>>()?;
    Ok(Some(Mailer {
        transport,
        from,
        admins,
    }))
}

fn parse_mailbox(field: &'static str, s: &str) -> Result<Mailbox, AlertError> {
    s.trim().parse().map_err(|_| AlertError::BadAddress {
        field,
        address: s.to_owned(),
    })
}

fn build_webhook(config: &AlertConfig) -> Result<Option<Webhook>, AlertError> {
    let Some(url) = config
        .webhook_url
        .as_ref()
        .map(|u| u.expose().as_str())
        .filter(|u| !u.trim().is_empty())
    else {
        return Ok(None);
    };
    let url = reqwest::Url::parse(url.trim()).map_err(|e| AlertError::WebhookUrl(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(AlertError::WebhookUrl(format!(
            "scheme {} is not http or https",
            url.scheme()
        )));
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(WEBHOOK_TIMEOUT)
        .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| AlertError::HttpClient(e.to_string()))?;
    Ok(Some(Webhook {
        url,
        secret: config.webhook_secret.clone().filter(|s| !s.expose().is_empty()),
        client,
    }))
}

fn level_label(level: &str) -> &str {
    match level {
        "api_key" => "API key",
        "provider" => "provider",
        "workspace" => "workspace",
        "integration_workspace" | "integration" => "integration (workspace)",
        other => other,
    }
}

fn amount(kind: BudgetKind, v: &str) -> String {
    match kind {
        BudgetKind::Cost => format!("${v}"),
        BudgetKind::Tokens => format!("{v} tokens"),
    }
}

/// Subject and plain-text body of an alert email.
pub fn render_email(a: &AlertPayload) -> (String, String) {
    // A name with line breaks must not spill into other header lines.
    let name: String = a.name.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let what = format!("{} \"{name}\"", level_label(&a.level));
    let consumed = amount(a.limit_type, &a.consumed);
    let limit = amount(a.limit_type, &a.credit_limit);
    let subject = match a.kind {
        AlertKind::Threshold => format!("[Tollgate] Budget alert: {what} has used {consumed} of {limit}"),
        AlertKind::Exhausted => format!("[Tollgate] Budget exhausted: {what} has used {consumed} of {limit}"),
    };
    let mut body = String::new();
    body.push_str(&match a.kind {
        AlertKind::Threshold => {
            format!(
                "The {what} has reached its alert threshold.\nRequests continue until the limit itself is reached.\n\n"
            )
        }
        AlertKind::Exhausted => {
            format!("The {what} has exhausted its budget.\nRequests under it are refused until the budget resets.\n\n")
        }
    });
    let unit = match a.limit_type {
        BudgetKind::Cost => "cost (US dollars)",
        BudgetKind::Tokens => "tokens",
    };
    body.push_str(&format!(
        "Limit:            {} {} (id {})\n",
        level_label(&a.level),
        name,
        a.limit_id
    ));
    if let Some(ws) = &a.workspace_id {
        body.push_str(&format!("Workspace:        {ws}\n"));
    }
    body.push_str(&format!("Budget type:      {unit}\n"));
    body.push_str(&format!("Consumed:         {consumed}\n"));
    body.push_str(&format!("Limit:            {limit}\n"));
    if let Some(t) = &a.alert_threshold {
        body.push_str(&format!("Alert threshold:  {}\n", amount(a.limit_type, t)));
    }
    body.push_str(&format!("Period start:     {}\n", a.period_start.to_rfc3339()));
    match a.next_reset_at {
        Some(t) => body.push_str(&format!("Next reset:       {}\n", t.to_rfc3339())),
        None => body.push_str("Next reset:       none (the limit does not reset periodically)\n"),
    }
    body.push_str(&format!("Event id:         {}\n", a.event_id));
    (subject, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn payload(kind: AlertKind, limit_type: BudgetKind) -> AlertPayload {
        AlertPayload {
            event_id: "evt-1".into(),
            kind,
            level: "api_key".into(),
            limit_id: "key-123".into(),
            name: "prod\r\nBcc: evil@example.com".into(),
            workspace_id: Some("ws-a".into()),
            limit_type,
            consumed: "80.25".into(),
            credit_limit: "100".into(),
            alert_threshold: Some("80".into()),
            period_start: Utc.with_ymd_and_hms(2025, 3, 1, 0, 0, 0).unwrap(),
            next_reset_at: None,
            recipients: vec![],
        }
    }

    #[test]
    fn email_text_names_the_limit_and_amounts() {
        let (s, b) = render_email(&payload(AlertKind::Threshold, BudgetKind::Cost));
        assert!(!s.contains('\n') && !s.contains('\r'));
        assert!(s.contains("Budget alert") && s.contains("API key") && s.contains("$80.25 of $100"));
        assert!(b.contains("key-123") && b.contains("Alert threshold:  $80") && b.contains("ws-a"));
        assert!(b.contains("does not reset"));
        let (s, b) = render_email(&payload(AlertKind::Exhausted, BudgetKind::Tokens));
        assert!(s.contains("Budget exhausted") && s.contains("80.25 tokens of 100 tokens"));
        assert!(b.contains("refused"));
    }

    #[test]
    fn signature_round_trip_and_rejections() {
        let now = Utc.with_ymd_and_hms(2025, 3, 1, 0, 0, 0).unwrap();
        let ts = now.timestamp();
        let body = br#"{"a":1}"#;
        let sig = webhook_signature("s3cret", ts, body).unwrap();
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        let tol = chrono::Duration::minutes(5);
        let ok = |secret: &str, t: &str, b: &[u8], s: &str, at| verify_webhook_signature(secret, t, b, s, at, tol);
        assert!(ok("s3cret", &ts.to_string(), body, &sig, now));
        assert!(!ok("other", &ts.to_string(), body, &sig, now));
        assert!(!ok("s3cret", &(ts + 1).to_string(), body, &sig, now));
        assert!(!ok("s3cret", &ts.to_string(), br#"{"a":2}"#, &sig, now));
        assert!(!ok("s3cret", &ts.to_string(), body, &sig[7..], now));
        assert!(!ok("s3cret", &ts.to_string(), body, "sha256=zz", now));
        assert!(!ok("s3cret", "yesterday", body, &sig, now));
        assert!(!ok(
            "s3cret",
            &ts.to_string(),
            body,
            &sig,
            now + chrono::Duration::minutes(6)
        ));
    }

    #[test]
    fn config_debug_hides_secrets() {
        let c = AlertConfig {
            smtp_url: Some("smtp://user:hunter2@mail:25".into()),
            webhook_secret: Some("whsec-xyz".into()),
            webhook_url: Some("https://hooks.example.com/t/token123".into()),
            ..Default::default()
        };
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2") && !d.contains("whsec-xyz") && !d.contains("token123"));
    }

    #[test]
    fn parse_emails_splits_and_trims() {
        assert_eq!(AlertConfig::parse_emails(" a@x.io, ,b@y.io,"), ["a@x.io", "b@y.io"]);
        assert!(AlertConfig::parse_emails("").is_empty());
    }
}
