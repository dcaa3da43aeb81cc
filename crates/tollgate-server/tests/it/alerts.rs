//! Alert delivery end to end over real sockets: a tiny SMTP server and an axum
//! webhook receiver, both on port 0, fed by the outbox-driven dispatcher. Time
//! is a manual clock, so backoff is driven by moving it, not by sleeping.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use chrono::{DateTime, Duration, TimeZone, Utc};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha2::Sha256;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tollgate_core::clock::{ManualClock, SharedClock};
use tollgate_core::limits::BudgetKind;
use tollgate_server::alerts::{AlertConfig, AlertError, AlertKind, AlertPayload, DeliveryReport, Dispatcher};
use tollgate_store::outbox::{ChannelState, Outbox};

pub(crate) const SECRET: &str = "whsec-test-0123456789";
const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 10, 12, 0, 0).unwrap()
}

fn alert(event_id: &str, limit_id: &str) -> AlertPayload {
    AlertPayload {
        event_id: event_id.into(),
        kind: AlertKind::Threshold,
        level: "api_key".into(),
        limit_id: limit_id.into(),
        name: "prod key".into(),
        workspace_id: Some("ws-team-a-1a2b3c".into()),
        limit_type: BudgetKind::Cost,
        consumed: "80.5".into(),
        credit_limit: "100".into(),
        alert_threshold: Some("80".into()),
        period_start: Utc.with_ymd_and_hms(2025, 3, 1, 0, 0, 0).unwrap(),
        next_reset_at: Some(Utc.with_ymd_and_hms(2025, 4, 1, 0, 0, 0).unwrap()),
        recipients: vec!["owner@example.com".into(), "not an address".into()],
    }
}

// ---- a tiny SMTP server -------------------------------------------------

#[derive(Debug)]
pub(crate) struct Mail {
    pub(crate) from: String,
    pub(crate) rcpt: Vec<String>,
    pub(crate) data: String,
}

impl Mail {
    /// The message with header folding and quoted-printable soft breaks undone.
    pub(crate) fn text(&self) -> String {
        self.data.replace("=\n", "").replace("\n ", " ")
    }
}

/// Answers EHLO/MAIL/RCPT/DATA/QUIT like a permissive server and hands every
/// accepted message to the returned channel.
fn smtp_server(listener: TcpListener) -> mpsc::UnboundedReceiver<Mail> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut lines = BufReader::new(r).lines();
                w.write_all(b"220 test.local ESMTP\r\n").await.unwrap();
                let (mut from, mut rcpt, mut data, mut in_data) = (String::new(), Vec::new(), String::new(), false);
                while let Ok(Some(line)) = lines.next_line().await {
                    if in_data {
                        if line == "." {
                            in_data = false;
                            let mail = Mail {
                                from: std::mem::take(&mut from),
                                rcpt: std::mem::take(&mut rcpt),
                                data: std::mem::take(&mut data),
                            };
                            let _ = tx.send(mail);
                            w.write_all(b"250 2.0.0 queued\r\n").await.unwrap();
                        } else {
                            data.push_str(line.strip_prefix('.').unwrap_or(&line));
                            data.push('\n');
                        }
                        continue;
                    }
                    let upper = line.to_ascii_uppercase();
                    let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                        b"250 test.local\r\n"
                    } else if upper.starts_with("MAIL FROM:") {
                        from = line[10..].trim().to_string();
                        b"250 2.1.0 ok\r\n"
                    } else if upper.starts_with("RCPT TO:") {
                        rcpt.push(line[8..].trim().trim_matches(['<', '>']).to_string());
                        b"250 2.1.5 ok\r\n"
                    } else if upper == "DATA" {
                        in_data = true;
                        b"354 go ahead\r\n"
                    } else if upper == "QUIT" {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    if w.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    rx
}

// ---- a webhook receiver -------------------------------------------------

#[derive(Debug, Clone)]
pub(crate) struct Hit {
    pub(crate) event_id: String,
    pub(crate) signature_ok: bool,
    pub(crate) body: serde_json::Value,
    pub(crate) answered: StatusCode,
}

#[derive(Clone)]
pub(crate) struct Receiver {
    hits: Arc<Mutex<Vec<Hit>>>,
    /// Requests still to answer with 500.
    failures_left: Arc<AtomicUsize>,
    tx: mpsc::UnboundedSender<Hit>,
}

impl Receiver {
    pub(crate) fn accepted(&self) -> Vec<Hit> {
        self.hits
            .lock()
            .iter()
            .filter(|h| h.answered == StatusCode::OK)
            .cloned()
            .collect()
    }
}

/// Checks the signature the way a receiver would, independently of the
/// library's helper: HMAC-SHA256 over `"{timestamp}.{body}"`.
pub(crate) fn signature_ok(headers: &HeaderMap, body: &[u8]) -> bool {
    let get = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let ts = get("x-tollgate-timestamp");
    if ts.parse::<i64>().is_err() {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    get("x-tollgate-signature") == format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let answered = if r
        .failures_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    let hit = Hit {
        event_id: headers
            .get("x-tollgate-event-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .into(),
        signature_ok: signature_ok(&headers, &body),
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        answered,
    };
    r.hits.lock().push(hit.clone());
    let _ = r.tx.send(hit);
    answered
}

pub(crate) async fn webhook_receiver(fail_first: usize) -> (String, Receiver, mpsc::UnboundedReceiver<Hit>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let r = Receiver {
        hits: Arc::default(),
        failures_left: Arc::new(AtomicUsize::new(fail_first)),
        tx,
    };
    let app = axum::Router::new()
        .route("/hooks/alerts", post(hook))
        .with_state(r.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/alerts", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, r, rx)
}

// ---- harness --------------------------------------------------------------

struct Harness {
    _dir: tempfile::TempDir,
    outbox: Outbox,
    clock: ManualClock,
    dispatcher: Dispatcher,
}

async fn harness(config: AlertConfig) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let pool = tollgate_store::db::open_sqlite(&dir.path().join("t.db")).await.unwrap();
    let outbox = Outbox::new(pool);
    outbox.init().await.unwrap();
    let clock = ManualClock::new(t0());
    let shared: SharedClock = Arc::new(clock.clone());
    let dispatcher = Dispatcher::new(outbox.clone(), &config, shared).unwrap();
    Harness {
        _dir: dir,
        outbox,
        clock,
        dispatcher,
    }
}

fn config(smtp_port: Option<u16>, webhook_url: Option<String>) -> AlertConfig {
    AlertConfig {
        smtp_url: smtp_port.map(|p| format!("smtp://127.0.0.1:{p}").into()),
        alert_from: Some("Tollgate <tollgate@example.com>".into()),
        alert_emails: vec!["admin@example.com".into()],
        webhook_url: webhook_url.map(Into::into),
        webhook_secret: Some(SECRET.into()),
    }
}

pub(crate) async fn smtp_on_port_0() -> (u16, mpsc::UnboundedReceiver<Mail>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    (l.local_addr().unwrap().port(), smtp_server(l))
}

fn report(sent: u32, failed: u32, skipped: u32) -> DeliveryReport {
    DeliveryReport { sent, failed, skipped }
}

// ---- tests ------------------------------------------------------------------

#[tokio::test]
async fn one_email_and_one_signed_webhook_per_alert() {
    let (port, mut mails) = smtp_on_port_0().await;
    let (url, recv, _) = webhook_receiver(0).await;
    let h = harness(config(Some(port), Some(url))).await;

    assert!(
        h.dispatcher
            .handle()
            .enqueue(&alert("evt-1", "key-1"))
            .await
            .unwrap()
            .new
    );
    assert_eq!(h.dispatcher.run_once().await.unwrap(), report(2, 0, 0));
    // Nothing left to do: a second pass sends nothing.
    assert_eq!(h.dispatcher.run_once().await.unwrap(), report(0, 0, 0));

    let mail = mails.try_recv().unwrap();
    assert!(mails.try_recv().is_err(), "exactly one email");
    assert_eq!(mail.from, "<tollgate@example.com>");
    let mut rcpt = mail.rcpt.clone();
    rcpt.sort();
    assert_eq!(rcpt, ["admin@example.com", "owner@example.com"]);
    let text = mail.text();
    assert!(
        text.contains("Subject: [Tollgate] Budget alert: API key \"prod key\" has used $80.5 of $100"),
        "{text}"
    );
    assert!(text.contains("Message-ID: <evt-1@tollgate>"), "{text}");
    for needle in [
        "key-1",
        "Consumed:         $80.5",
        "Limit:            $100",
        "Alert threshold:  $80",
        "2025-04-01",
    ] {
        assert!(text.contains(needle), "{needle} missing in {text}");
    }

    let hits = recv.hits.lock().clone();
    assert_eq!(hits.len(), 1, "exactly one POST");
    assert!(hits[0].signature_ok);
    assert_eq!(hits[0].event_id, "evt-1");
    assert_eq!(hits[0].body["kind"], "threshold");
    assert_eq!(hits[0].body["limit_id"], "key-1");
    assert_eq!(hits[0].body["consumed"], "80.5");
    assert_eq!(hits[0].body["limit_type"], "cost");

    let e = h.outbox.get("evt-1").await.unwrap().unwrap();
    assert_eq!(
        (e.email.state, e.webhook.state),
        (ChannelState::Sent, ChannelState::Sent)
    );
    assert_eq!(
        h.outbox.count_sent(Some("ws-team-a-1a2b3c"), None, None).await.unwrap(),
        1
    );
}

#[tokio::test]
async fn enqueued_twice_for_same_limit_and_period_is_delivered_once() {
    let (port, mut mails) = smtp_on_port_0().await;
    let (url, recv, _) = webhook_receiver(0).await;
    let h = harness(config(Some(port), Some(url))).await;
    let handle = h.dispatcher.handle();

    assert!(handle.enqueue(&alert("evt-a", "key-1")).await.unwrap().new);
    let again = handle.enqueue(&alert("evt-b", "key-1")).await.unwrap();
    assert!(!again.new);
    assert_eq!(again.id, "evt-a");
    h.dispatcher.run_once().await.unwrap();
    // Enqueued again after delivery (e.g. after a restart): still nothing new.
    assert!(!handle.enqueue(&alert("evt-c", "key-1")).await.unwrap().new);
    h.dispatcher.run_once().await.unwrap();

    assert!(mails.try_recv().is_ok());
    assert!(mails.try_recv().is_err());
    assert_eq!(recv.hits.lock().len(), 1);
}

/// Replicas on one PostgreSQL database each run a dispatcher over the same
/// outbox, and each may read an alert as due before another has sent it:
/// every alert still goes out once on each channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dispatchers_of_several_replicas_deliver_each_alert_once() {
    let (port, mut mails) = smtp_on_port_0().await;
    let (url, recv, _) = webhook_receiver(0).await;
    let db = crate::postgres::TestDb::create().await;
    let shared: SharedClock = Arc::new(ManualClock::new(t0()));
    let mut dispatchers = Vec::new();
    for _ in 0..3 {
        let store = tollgate_store::Store::open(&tollgate_store::Location::Postgres(db.url.clone()))
            .await
            .unwrap();
        let d = Dispatcher::new(store.outbox(), &config(Some(port), Some(url.clone())), shared.clone()).unwrap();
        dispatchers.push(d);
    }
    for i in 0..5 {
        let e = dispatchers[i % 3]
            .handle()
            .enqueue(&alert(&format!("evt-{i}"), &format!("key-{i}")))
            .await
            .unwrap();
        assert!(e.new);
    }
    let reports = futures::future::join_all(dispatchers.iter().map(|d| d.run_once())).await;
    let sent: u32 = reports.into_iter().map(|r| r.unwrap().sent).sum();
    assert_eq!(sent, 10, "5 e-mails and 5 webhooks");
    let mut emails = 0;
    while let Ok(Some(_)) = tokio::time::timeout(std::time::Duration::from_millis(500), mails.recv()).await {
        emails += 1;
    }
    assert_eq!(emails, 5);
    assert_eq!(recv.hits.lock().len(), 5);
    db.drop_db().await;
}

#[tokio::test]
async fn smtp_down_then_up_retries_the_email_only() {
    // A port that refuses connections: bind, note it, close it.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (url, recv, _) = webhook_receiver(0).await;
    let h = harness(config(Some(port), Some(url))).await;
    h.dispatcher.handle().enqueue(&alert("evt-1", "key-1")).await.unwrap();

    assert_eq!(h.dispatcher.run_once().await.unwrap(), report(1, 1, 0));
    let e = h.outbox.get("evt-1").await.unwrap().unwrap();
    assert_eq!(e.email.state, ChannelState::Pending);
    assert_eq!(e.email.attempts, 1);
    assert_eq!(e.email.next_attempt_at, t0() + Duration::seconds(30));
    assert!(e.email.last_error.as_deref().unwrap_or_default().contains("SMTP"));
    assert_eq!(e.webhook.state, ChannelState::Sent);

    // The SMTP server comes up on that port.
    let mut mails = smtp_server(TcpListener::bind(("127.0.0.1", port)).await.unwrap());
    // Not retried before its backoff has elapsed.
    h.clock.advance(Duration::seconds(29));
    assert_eq!(h.dispatcher.run_once().await.unwrap(), report(0, 0, 0));
    h.clock.advance(Duration::seconds(1));
    assert_eq!(h.dispatcher.run_once().await.unwrap(), report(1, 0, 0));

    let mail = mails.try_recv().unwrap();
    assert!(mail.text().contains("evt-1"));
    assert!(mails.try_recv().is_err());
    assert_eq!(recv.hits.lock().len(), 1, "the webhook is not sent again");
    let e = h.outbox.get("evt-1").await.unwrap().unwrap();
    assert_eq!((e.email.state, e.email.attempts), (ChannelState::Sent, 1));
}

#[tokio::test]
async fn webhook_500_then_200_is_delivered_once_after_retry() {
    let (url, recv, _) = webhook_receiver(1).await;
    // No SMTP: only the webhook matters here.
    let h = harness(config(None, Some(url))).await;
    h.dispatcher.handle().enqueue(&alert("evt-1", "key-1")).await.unwrap();

    assert_eq!(h.dispatcher.run_once().await.unwrap(), report(0, 1, 1));
    let e = h.outbox.get("evt-1").await.unwrap().unwrap();
    assert!(e.webhook.last_error.as_deref().unwrap_or_default().contains("500"));

    h.clock.advance(Duration::seconds(30));
    assert_eq!(h.dispatcher.run_once().await.unwrap(), report(1, 0, 0));
    h.clock.advance(Duration::hours(2));
    assert_eq!(h.dispatcher.run_once().await.unwrap(), report(0, 0, 0));

    let hits = recv.hits.lock().clone();
    assert_eq!(hits.len(), 2);
    assert!(hits.iter().all(|h| h.event_id == "evt-1" && h.signature_ok));
    assert_eq!(recv.accepted().len(), 1);
}

#[tokio::test]
async fn no_smtp_configured_skips_email_without_error() {
    let (url, recv, _) = webhook_receiver(0).await;
    let h = harness(config(None, Some(url))).await;
    h.dispatcher.handle().enqueue(&alert("evt-1", "key-1")).await.unwrap();
    assert_eq!(h.dispatcher.run_once().await.unwrap(), report(1, 0, 1));
    let e = h.outbox.get("evt-1").await.unwrap().unwrap();
    assert_eq!(e.email.state, ChannelState::Skipped);
    assert_eq!(e.email.last_error, None);
    assert_eq!(e.webhook.state, ChannelState::Sent);
    assert_eq!(recv.accepted().len(), 1);
}

#[tokio::test]
async fn nothing_configured_skips_both_channels() {
    let h = harness(AlertConfig::default()).await;
    assert!(!h.dispatcher.is_enabled());
    h.dispatcher.handle().enqueue(&alert("evt-1", "key-1")).await.unwrap();
    assert_eq!(h.dispatcher.run_once().await.unwrap(), report(0, 0, 2));
    assert_eq!(h.outbox.count_sent(None, None, None).await.unwrap(), 0);
}

#[tokio::test]
async fn email_without_any_recipient_is_skipped() {
    let (port, mut mails) = smtp_on_port_0().await;
    let mut c = config(Some(port), None);
    c.alert_emails.clear();
    let h = harness(c).await;
    let mut a = alert("evt-1", "key-1");
    a.recipients = vec!["still not an address".into()];
    h.dispatcher.handle().enqueue(&a).await.unwrap();
    assert_eq!(h.dispatcher.run_once().await.unwrap(), report(0, 0, 2));
    assert!(mails.try_recv().is_err());
}

#[tokio::test]
async fn unreachable_webhook_backs_off_and_keeps_url_out_of_the_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let h = harness(config(
        None,
        Some(format!("http://127.0.0.1:{port}/hook?token=tok-SECRET")),
    ))
    .await;
    h.dispatcher.handle().enqueue(&alert("evt-1", "key-1")).await.unwrap();
    assert_eq!(h.dispatcher.run_once().await.unwrap(), report(0, 1, 1));
    h.clock.advance(Duration::seconds(30));
    assert_eq!(h.dispatcher.run_once().await.unwrap(), report(0, 1, 0));
    let e = h.outbox.get("evt-1").await.unwrap().unwrap();
    assert_eq!(e.webhook.attempts, 2);
    // Second failure: 60 s after the second attempt.
    assert_eq!(e.webhook.next_attempt_at, t0() + Duration::seconds(90));
    let err = e.webhook.last_error.unwrap();
    assert!(err.contains("webhook") && !err.contains("tok-SECRET"), "{err}");
}

#[tokio::test]
async fn background_dispatcher_wakes_on_enqueue_and_stops_on_shutdown() {
    let (port, mut mails) = smtp_on_port_0().await;
    let (url, _recv, mut hooks) = webhook_receiver(0).await;
    // Polling alone would take an hour: only the wake-up can deliver in time.
    let h = harness(config(Some(port), Some(url))).await;
    let dispatcher = h.dispatcher.with_poll_interval(std::time::Duration::from_secs(3600));
    let stop = CancellationToken::new();
    let (handle, task) = dispatcher.spawn(stop.clone());

    handle.enqueue(&alert("evt-1", "key-1")).await.unwrap();
    let mail = tokio::time::timeout(WAIT, mails.recv()).await.unwrap().unwrap();
    assert!(mail.text().contains("evt-1"));
    let hit = tokio::time::timeout(WAIT, hooks.recv()).await.unwrap().unwrap();
    assert!(hit.signature_ok);

    stop.cancel();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    assert!(mails.try_recv().is_err());
    assert!(hooks.try_recv().is_err());
    let e = h.outbox.get("evt-1").await.unwrap().unwrap();
    assert_eq!(
        (e.email.state, e.webhook.state),
        (ChannelState::Sent, ChannelState::Sent)
    );
}

#[tokio::test]
async fn invalid_configuration_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pool = tollgate_store::db::open_sqlite(&dir.path().join("t.db")).await.unwrap();
    let outbox = Outbox::new(pool);
    let clock: SharedClock = Arc::new(ManualClock::new(t0()));
    let base = config(Some(25), None);
    let try_new = |c: AlertConfig| Dispatcher::new(outbox.clone(), &c, clock.clone()).err();

    let e = try_new(AlertConfig {
        smtp_url: Some("ftp://user:hunter2@mail".into()),
        ..base.clone()
    });
    assert!(
        matches!(&e, Some(AlertError::SmtpUrl(m)) if !m.contains("hunter2")),
        "{e:?}"
    );
    assert!(matches!(
        try_new(AlertConfig {
            smtp_url: Some("not a url".into()),
            ..base.clone()
        }),
        Some(AlertError::SmtpUrl(_))
    ));
    assert!(matches!(
        try_new(AlertConfig {
            alert_from: None,
            ..base.clone()
        }),
        Some(AlertError::MissingFrom)
    ));
    assert!(matches!(
        try_new(AlertConfig {
            alert_from: Some("nobody".into()),
            ..base.clone()
        }),
        Some(AlertError::BadAddress {
            field: "alert_from",
            ..
        })
    ));
    assert!(matches!(
        try_new(AlertConfig {
            alert_emails: vec!["ok@example.com".into(), "bad@".into()],
            ..base.clone()
        }),
        Some(AlertError::BadAddress {
            field: "alert_emails",
            ..
        })
    ));
    assert!(matches!(
        try_new(AlertConfig {
            webhook_url: Some("ftp://hooks.example.com/x".into()),
            ..base.clone()
        }),
        Some(AlertError::WebhookUrl(_))
    ));
    assert!(matches!(
        try_new(AlertConfig {
            webhook_url: Some("::".into()),
            ..base.clone()
        }),
        Some(AlertError::WebhookUrl(_))
    ));
    // smtps:// and credentials in the URL are accepted.
    assert!(try_new(AlertConfig {
        smtp_url: Some("smtps://user:p%40ss@mail.example.com:465".into()),
        ..base.clone()
    })
    .is_none());
    assert!(try_new(base).is_none());
}

#[tokio::test]
async fn outbox_failures_surface_from_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let pool = tollgate_store::db::open_sqlite(&dir.path().join("t.db")).await.unwrap();
    // No init: the outbox table does not exist.
    let outbox = Outbox::new(pool);
    let clock: SharedClock = Arc::new(ManualClock::new(t0()));
    let d = Dispatcher::new(outbox, &AlertConfig::default(), clock).unwrap();
    assert!(matches!(d.run_once().await, Err(AlertError::Outbox(_))));
    assert!(matches!(
        d.handle().enqueue(&alert("e", "l")).await,
        Err(AlertError::Outbox(_))
    ));
}
