//! Budgets and rate limits through the gateway: exact under concurrency,
//! the 412/429 wire forms, immutability, resets, restarts and alerts.

use crate::gateway::{chat, setup_on, Setup};
use crate::support::{manual_clock, App, Resp};
use futures::future::join_all;
use serde_json::{json, Value};
use tollgate_core::clock::{ManualClock, SharedClock};
use tollgate_testkit::control::Control;
use tollgate_testkit::MockServer;

struct Lim {
    app: App,
    mock: MockServer,
    control: Control,
    clock: ManualClock,
    ws: String,
    key: String,
}

async fn lim_with(tweak: impl FnOnce(&mut tollgate_server::config::Config)) -> Lim {
    // Mid-minute, so that no rate window rolls over during a test.
    let (clock, shared): (ManualClock, SharedClock) = manual_clock("2026-11-26T10:00:30Z");
    let Setup {
        app,
        mock,
        control,
        ws,
        key,
    } = setup_on(App::start_with(tweak, shared).await, "Lim", false).await;
    Lim {
        app,
        mock,
        control,
        clock,
        ws,
        key,
    }
}

async fn lim() -> Lim {
    lim_with(|_| {}).await
}

impl Lim {
    async fn provision(&self, entry: Value) -> Resp {
        let mut e = entry;
        e["id"] = json!(self.ws);
        self.app
            .put(
                "/v1/integrations/oai/workspaces",
                &self.app.admin_key,
                json!({"workspaces": [e]}),
            )
            .await
    }

    async fn burst(&self, n: usize, body: Value) -> Vec<Resp> {
        join_all((0..n).map(|_| self.chat_as(&self.key, &body))).await
    }

    /// A chat completion as `key`.
    async fn chat_as(&self, key: &str, body: &Value) -> Resp {
        self.app.completion(key, body.clone()).await
    }

    /// Sends `n` chat completions one after another, each admitted.
    async fn admit(&self, n: usize, key: &str, body: &Value) {
        for _ in 0..n {
            assert_eq!(self.chat_as(key, body).await.status, 200);
        }
    }

    /// Creates a provider on `oai` in the workspace with `usage_limits`.
    async fn provider(&self, name: &str, slug: &str, usage_limits: Value) -> Resp {
        self.app
            .post(
                "/v1/providers",
                &self.app.admin_key,
                json!({"name": name, "slug": slug, "integration_id": "oai", "workspace_id": self.ws,
                "usage_limits": usage_limits}),
            )
            .await
    }

    /// Creates a workspace key with `fields` and returns (id, key).
    async fn key_with(&self, fields: Value) -> (String, String) {
        let mut body = fields;
        body["workspace_id"] = json!(self.ws);
        let r = self
            .app
            .post("/v1/api-keys/workspace/service", &self.app.admin_key, body)
            .await;
        (
            r.body["id"].as_str().unwrap().to_owned(),
            r.body["key"].as_str().unwrap().to_owned(),
        )
    }

    /// Prices `gpt-4o` at 0 per input token and `cents` per output token,
    /// and has the mock report 1,000 output tokens a request.
    async fn price_output(&self, cents: f64) {
        let r = self
            .app
            .put("/v1/integrations/oai/models", &self.app.admin_key, json!({"models": [{"slug": "gpt-4o", "enabled": true,
                "pricing_config": {"type": "static", "pay_as_you_go": {"request_token": {"price": 0}, "response_token": {"price": cents}}}}]}))
            .await;
        assert_eq!(r.status, 200);
        self.control.set_usage(10, 1000, 0);
    }

    fn set_time(&self, rfc3339: &str) {
        self.clock
            .set(chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap().into());
    }

    async fn logged(&self) -> Vec<Value> {
        self.app.flush_logs().await;
        let r = self.app.get("/v1/logs?page_size=1000", &self.app.admin_key).await;
        r.body["data"].as_array().unwrap().clone()
    }
}

fn count(rs: &[Resp], status: u16) -> usize {
    rs.iter().filter(|r| r.status == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rpm_50_admits_exactly_50_of_200_concurrent() {
    let l = lim().await;
    assert_eq!(
        l.provision(json!({"enabled": true, "rate_limits": [{"type": "requests", "unit": "rpm", "value": 50}]}))
            .await
            .status,
        200
    );
    let rs = l.burst(200, chat("@oai/gpt-4o")).await;
    assert_eq!(count(&rs, 200), 50);
    assert_eq!(count(&rs, 429), 150);
    assert_eq!(l.mock.calls(), 50);
    let refused = rs.iter().find(|r| r.status == 429).unwrap();
    assert_eq!(refused.error_type(), "integration_rate_limit_error");
    assert_eq!(
        refused.header("retry-after"),
        Some("30"),
        "seconds to the end of the minute"
    );
    let ok = rs.iter().find(|r| r.status == 200).unwrap();
    assert_eq!(ok.header("x-ratelimit-limit-requests"), Some("50"));
    assert!(ok.header("x-ratelimit-remaining-requests").is_some());
    assert_eq!(ok.header("x-ratelimit-reset-requests"), Some("30s"));
    // The next minute is a new window.
    l.clock.advance(chrono::Duration::seconds(30));
    assert_eq!(l.chat_as(&l.key, &chat("@oai/gpt-4o")).await.status, 200);
}

/// Prices `gpt-4o` at 0 per input token and 0.03 cents per output token, so
/// that 1,000 output tokens cost exactly $0.30.
async fn thirty_cent_requests(l: &Lim) -> Value {
    l.price_output(0.03).await;
    let mut body = chat("@oai/gpt-4o");
    body["max_tokens"] = json!(1000);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_one_dollar_budget_admits_exactly_three_thirty_cent_requests() {
    let l = lim().await;
    let body = thirty_cent_requests(&l).await;
    assert_eq!(
        l.provision(json!({"enabled": true, "usage_limits": {"type": "cost", "credit_limit": 1}}))
            .await
            .status,
        200
    );
    let rs = l.burst(64, body).await;
    assert_eq!(count(&rs, 200), 3);
    assert_eq!(count(&rs, 412), 61);
    let refused = rs.iter().find(|r| r.status == 412).unwrap();
    assert_eq!(refused.error_type(), "integration_exhaust_error");
    assert_eq!(refused.body["error"]["code"], "04");
    let spent: f64 = l.logged().await.iter().filter_map(|r| r["cost"].as_f64()).sum();
    assert!((spent - 0.9).abs() < 1e-9, "spent {spent}");
    let exact: Vec<String> = l
        .logged()
        .await
        .iter()
        .filter_map(|r| r["cost_exact"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(exact, vec!["0.3"; 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_budget_is_never_overspent() {
    let l = lim().await;
    l.control.set_usage(10, 40, 0);
    let mut body = chat("@oai/gpt-4o");
    body["max_tokens"] = json!(40);
    let r = l
        .app
        .put(
            &format!("/v1/admin/workspaces/{}", l.ws),
            &l.app.admin_key,
            json!({"usage_limits": [{"type": "tokens", "credit_limit": 1000}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(l.provision(json!({"enabled": true})).await.status, 200);
    let rs = l.burst(64, body).await;
    let ok = count(&rs, 200);
    assert!(ok > 0 && count(&rs, 412) == 64 - ok);
    let refused = rs.iter().find(|r| r.status == 412).unwrap();
    assert_eq!(refused.error_type(), "workspace_exhaust_error");
    let tokens: u64 = l
        .logged()
        .await
        .iter()
        .map(|r| r["usage"]["total_tokens"].as_u64().unwrap_or(0))
        .sum();
    assert!(tokens <= 1000, "recorded {tokens} tokens");
    assert_eq!(tokens, ok as u64 * 50);
}

#[tokio::test]
async fn limits_are_immutable_and_reset_usage_zeroes_consumption() {
    let l = lim().await;
    let body = thirty_cent_requests(&l).await;
    let limit = json!({"type": "cost", "credit_limit": 1, "periodic_reset": "monthly"});
    assert_eq!(
        l.provision(json!({"enabled": true, "usage_limits": limit}))
            .await
            .status,
        200
    );
    l.admit(3, &l.key, &body).await;
    assert_eq!(l.chat_as(&l.key, &body).await.status, 412);
    // Resending the same limit is not an edit; changing it is refused.
    assert_eq!(
        l.provision(json!({"enabled": true, "usage_limits": limit}))
            .await
            .status,
        200
    );
    let r = l
        .provision(json!({"enabled": true, "usage_limits": {"type": "cost", "credit_limit": 2}}))
        .await;
    assert_eq!((r.status, r.code()), (409, "AB07"));
    let r = l
        .provision(json!({"enabled": true, "rate_limits": {"type": "requests", "unit": "rpm", "value": 0}}))
        .await;
    assert_eq!(r.status, 200, "a limit of the other kind can still be added");
    let r = l.chat_as(&l.key, &body).await;
    assert_eq!(r.status, 412, "the budget is checked first");
    // reset_usage zeroes the budget; the rate limit of 0 now refuses.
    l.clock.advance(chrono::Duration::milliseconds(1));
    assert_eq!(
        l.provision(json!({"enabled": true, "reset_usage": true})).await.status,
        200
    );
    let r = l.chat_as(&l.key, &body).await;
    assert_eq!((r.status, r.error_type()), (429, "integration_rate_limit_error"));
    assert!(r.body["error"]["message"].as_str().unwrap().contains("disabled"));
    let grants = l.app.get("/v1/integrations/oai/workspaces", &l.app.admin_key).await;
    let g = &grants.body["workspaces"][0];
    assert_eq!(g["usage_limits"]["next_usage_reset_at"], "2026-12-01T00:00:00+00:00");
    assert!(g["rate_limits"].is_object());
}

#[tokio::test]
async fn provider_budgets_exhaust_and_come_back_at_the_reset() {
    let l = lim().await;
    let body = thirty_cent_requests(&l).await;
    assert_eq!(l.provision(json!({"enabled": true})).await.status, 200);
    let r = l
        .provider(
            "weekly",
            "weekly",
            json!({"type": "cost", "credit_limit": 1, "periodic_reset": "weekly"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let mut body = body;
    body["model"] = json!("@weekly/gpt-4o");
    l.admit(3, &l.key, &body).await;
    let r = l.chat_as(&l.key, &body).await;
    assert_eq!((r.status, r.error_type()), (412, "provider_exhaust_error"));
    let path = format!("/v1/providers/weekly?workspace_id={}", l.ws);
    // $0.90 of $1 is not yet "exhausted"; a request's worst case just does not fit.
    assert_eq!(l.app.get(&path, &l.app.admin_key).await.body["status"], "active");
    // Sunday 00:00 UTC: a new week.
    l.set_time("2026-11-29T00:00:01Z");
    assert_eq!(l.chat_as(&l.key, &body).await.status, 200);
}

#[tokio::test]
async fn consumed_budget_survives_a_restart() {
    let mut l = lim().await;
    let body = thirty_cent_requests(&l).await;
    let (_, key) = l
        .key_with(json!({"usage_limits": {"type": "cost", "credit_limit": 1}}))
        .await;
    assert_eq!(l.provision(json!({"enabled": true})).await.status, 200);
    l.admit(3, &key, &body).await;
    let clock: SharedClock = std::sync::Arc::new(l.clock.clone());
    l.app.restart(clock).await;
    let r = l.chat_as(&key, &body).await;
    assert_eq!(
        (r.status, r.error_type()),
        (412, "api_key_exhaust_error"),
        "a restart hands out no fresh budget"
    );
    let _ = &l.key;
}

#[tokio::test]
async fn exactly_one_alert_email_and_webhook_per_threshold() {
    let (smtp_port, mut mails) = crate::alerts::smtp_on_port_0().await;
    let (hook_url, receiver, _hits) = crate::alerts::webhook_receiver(0).await;
    let l = lim_with(|c| {
        c.smtp_url = Some(format!("smtp://127.0.0.1:{smtp_port}").into());
        c.alert_from = Some("tollgate@example.com".into());
        c.alert_emails = vec!["admin@example.com".into()];
        c.alert_webhook_url = Some(hook_url.into());
        c.alert_webhook_secret = Some(crate::alerts::SECRET.into());
    })
    .await;
    let body = thirty_cent_requests(&l).await;
    let (_, key) = l
        .key_with(json!({"alert_emails": ["owner@example.com"],
            "usage_limits": {"type": "cost", "credit_limit": 10, "alert_threshold": 0.5}}))
        .await;
    assert_eq!(l.provision(json!({"enabled": true})).await.status, 200);
    // Two requests ($0.60) cross the $0.50 threshold once.
    l.admit(4, &key, &body).await;
    let mail = tokio::time::timeout(std::time::Duration::from_secs(10), mails.recv())
        .await
        .expect("an email")
        .expect("open");
    assert!(
        mail.rcpt.iter().any(|r| r.contains("owner@example.com")),
        "{:?}",
        mail.rcpt
    );
    assert!(mail.rcpt.iter().any(|r| r.contains("admin@example.com")));
    for _ in 0..100 {
        if !receiver.accepted().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let hits = receiver.accepted();
    assert_eq!(hits.len(), 1);
    assert!(hits[0].signature_ok);
    assert_eq!(hits[0].body["kind"], "threshold");
    assert_eq!(hits[0].body["consumed"], "0.6");
    // Nothing more arrives for the same threshold.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), mails.recv())
            .await
            .is_err()
    );
    assert_eq!(receiver.accepted().len(), 1);
}

#[tokio::test]
async fn an_exhausted_provider_reads_exhausted_until_its_reset() {
    let l = lim().await;
    l.price_output(0.025).await;
    assert_eq!(l.provision(json!({"enabled": true})).await.status, 200);
    let r = l
        .provider(
            "m",
            "monthly",
            json!({"type": "cost", "credit_limit": 1, "periodic_reset": "monthly"}),
        )
        .await;
    assert_eq!(r.status, 200);
    let body = json!({"model": "@monthly/gpt-4o", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]});
    l.admit(4, &l.key, &body).await;
    let path = format!("/v1/providers/monthly?workspace_id={}", l.ws);
    assert_eq!(l.app.get(&path, &l.app.admin_key).await.body["status"], "exhausted");
    let list = l
        .app
        .get(&format!("/v1/providers?workspace_id={}", l.ws), &l.app.admin_key)
        .await;
    assert!(list.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["slug"] == "monthly" && p["status"] == "exhausted"));
    let r = l.chat_as(&l.key, &body).await;
    assert_eq!((r.status, r.error_type()), (412, "provider_exhaust_error"));
    // The 1st of the month, 00:00 UTC.
    l.set_time("2026-12-01T00:00:00Z");
    assert_eq!(l.app.get(&path, &l.app.admin_key).await.body["status"], "active");
    assert_eq!(l.chat_as(&l.key, &body).await.status, 200);
}

#[tokio::test]
async fn reset_usage_on_a_key_starts_its_budget_afresh() {
    let l = lim().await;
    let body = thirty_cent_requests(&l).await;
    assert_eq!(l.provision(json!({"enabled": true})).await.status, 200);
    let (id, key) = l
        .key_with(json!({"usage_limits": {"type": "cost", "credit_limit": 1}}))
        .await;
    l.admit(3, &key, &body).await;
    assert_eq!(l.chat_as(&key, &body).await.status, 412);
    l.clock.advance(chrono::Duration::milliseconds(1));
    let r = l
        .app
        .put(
            &format!("/v1/api-keys/{id}"),
            &l.app.admin_key,
            json!({"reset_usage": true}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(l.chat_as(&key, &body).await.status, 200);
}
