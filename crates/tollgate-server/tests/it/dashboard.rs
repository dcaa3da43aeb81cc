//! The dashboard over HTTP: sign-in and sessions, CSRF, security headers,
//! escaping, the base path, workspace confinement, and API errors shown by
//! their fields. (The whole flow in a real browser is tests/sdk/test_dashboard.py.)

use crate::support::{manual_clock, App};
use serde_json::json;
use std::sync::Arc;
use tollgate_core::clock::SystemClock;

/// A browser without a cookie jar of its own: one session cookie, kept by hand.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

struct Page {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers.get("location").and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    fn csrf(&self) -> String {
        let at = self.body.find("name=\"_csrf\" value=\"").expect("a CSRF field") + 20;
        self.body[at..at + 64].to_owned()
    }
}

impl Browser {
    fn new(app: &App) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            base: app.url.clone(),
            cookie: None,
        }
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Page {
        let req = match &self.cookie {
            Some(c) => req.header("cookie", format!("tollgate_session={c}")),
            None => req,
        };
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        if let Some(set) = headers.get("set-cookie").and_then(|v| v.to_str().ok()) {
            let value = set
                .split(';')
                .next()
                .and_then(|p| p.strip_prefix("tollgate_session="))
                .unwrap_or("");
            self.cookie = (!value.is_empty()).then(|| value.to_owned());
        }
        let body = resp.text().await.expect("body");
        Page { status, headers, body }
    }

    async fn get(&mut self, path: &str) -> Page {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let req = self.http.post(format!("{}{path}", self.base)).form(form);
        self.send(req).await
    }

    async fn sign_in(&mut self, sign_in_path: &str, key: &str) -> Page {
        self.post(sign_in_path, &[("api_key", key)]).await
    }
}

#[tokio::test]
async fn sign_in_makes_a_strict_httponly_session_and_keeps_the_key_on_the_server() {
    let app = App::start().await;
    let mut b = Browser::new(&app);
    let home = b.get("/").await;
    assert_eq!(home.status, 303);
    assert_eq!(home.location(), "/ui/sign-in");
    let form = b.get("/ui/sign-in").await;
    assert!(
        form.body.contains("type=\"password\" name=\"api_key\""),
        "{}",
        form.body
    );

    let wrong = b.sign_in("/ui/sign-in", "tg-not-a-key").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("invalid API key"));
    assert!(wrong.headers.get("set-cookie").is_none());

    let ok = b.sign_in("/ui/sign-in", &app.admin_key).await;
    assert_eq!(ok.status, 303);
    assert_eq!(ok.location(), "/ui/integrations");
    let cookie = ok.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Path=/"));
    assert!(!cookie.contains("Secure"), "plain http: {cookie}");
    assert!(!cookie.contains(&app.admin_key));
    let session = b.cookie.clone().expect("session cookie");
    assert_eq!(session.len(), 64, "256 random bits, hex");
    let page = b.get("/ui/integrations").await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains(&app.admin_key), "the key never reaches the browser");

    // Over HTTPS (behind a proxy) the cookie is Secure.
    let https = b
        .http
        .post(format!("{}/ui/sign-in", app.url))
        .header("x-forwarded-proto", "https")
        .form(&[("api_key", app.admin_key.as_str())])
        .send()
        .await
        .unwrap();
    assert!(https.headers()["set-cookie"].to_str().unwrap().contains("; Secure"));

    // Signing out ends the session on the server; the old cookie is useless.
    let csrf = page.csrf();
    let out = b.post("/ui/sign-out", &[("_csrf", &csrf)]).await;
    assert_eq!(out.status, 303);
    assert!(out.headers["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    b.cookie = Some(session);
    let after = b.get("/ui/integrations").await;
    assert_eq!(after.status, 303);
    assert_eq!(after.location(), "/ui/sign-in");
}

#[tokio::test]
async fn every_change_needs_the_sessions_csrf_token() {
    let app = App::start().await;
    let mut b = Browser::new(&app);
    b.sign_in("/ui/sign-in", &app.admin_key).await;
    let page = b.get("/ui/workspaces").await;
    let csrf = page.csrf();

    let missing = b.post("/ui/workspaces", &[("name", "no-token")]).await;
    assert_eq!(missing.status, 403);
    let wrong = b
        .post("/ui/workspaces", &[("name", "bad-token"), ("_csrf", &"0".repeat(64))])
        .await;
    assert_eq!(wrong.status, 403);
    // Another session's token is no good either.
    let mut other = Browser::new(&app);
    other.sign_in("/ui/sign-in", &app.admin_key).await;
    let theirs = other.get("/ui/workspaces").await.csrf();
    assert_ne!(theirs, csrf);
    let crossed = b
        .post("/ui/workspaces", &[("name", "crossed"), ("_csrf", &theirs)])
        .await;
    assert_eq!(crossed.status, 403);
    // No session at all: back to sign-in, nothing changed.
    let mut anon = Browser::new(&app);
    let signed_out = anon.post("/ui/workspaces", &[("name", "anon"), ("_csrf", &csrf)]).await;
    assert_eq!(signed_out.status, 303);
    let names = app.get("/v1/admin/workspaces", &app.admin_key).await.body.to_string();
    for refused in ["no-token", "bad-token", "crossed", "anon"] {
        assert!(!names.contains(refused), "{refused} was created: {names}");
    }

    let ok = b
        .post("/ui/workspaces", &[("name", "made-here"), ("_csrf", &csrf)])
        .await;
    assert_eq!(ok.status, 303, "{}", ok.body);
    let names = app.get("/v1/admin/workspaces", &app.admin_key).await.body.to_string();
    assert!(names.contains("made-here"));
}

#[tokio::test]
async fn pages_carry_security_headers_and_no_inline_script() {
    let app = App::start().await;
    let mut b = Browser::new(&app);
    let mut pages = vec![b.get("/ui/sign-in").await, b.get("/ui/assets/app.js").await];
    b.sign_in("/ui/sign-in", &app.admin_key).await;
    for path in [
        "/ui/integrations",
        "/ui/integrations?tab=connected",
        "/ui/integrations/new?provider=openai",
        "/ui/workspaces",
        "/ui/keys",
        "/ui/logs",
        "/ui/analytics",
        "/ui/audit",
    ] {
        let p = b.get(path).await;
        assert_eq!(p.status, 200, "{path}: {}", p.body);
        pages.push(p);
    }
    for p in &pages {
        let csp = p.headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'self'") && csp.contains("script-src 'self'"));
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert_eq!(p.headers["x-frame-options"], "DENY");
        assert_eq!(p.headers["x-content-type-options"], "nosniff");
        assert_eq!(p.headers["referrer-policy"], "same-origin");
        // Every script is the one file; no inline handlers or styles.
        assert_eq!(
            p.body.matches("<script").count(),
            p.body.matches("<script src=").count()
        );
        for attr in [" onclick=", " onerror=", " onload=", " style="] {
            assert!(!p.body.contains(attr), "{attr} in {}", p.body);
        }
    }
}

#[tokio::test]
async fn names_are_shown_as_text() {
    let app = App::start().await;
    let evil = "<img src=x onerror=alert(1)>";
    let r = app
        .post(
            "/v1/integrations",
            &app.admin_key,
            json!({"name": evil, "slug": "evil", "ai_provider_id": "openai", "key": "sk-x"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let mut b = Browser::new(&app);
    b.sign_in("/ui/sign-in", &app.admin_key).await;
    for path in ["/ui/integrations?tab=connected", "/ui/integrations/evil"] {
        let p = b.get(path).await;
        assert!(
            p.body.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{path}: {}",
            p.body
        );
        assert!(!p.body.contains("<img"), "{path}");
    }
}

#[tokio::test]
async fn the_base_path_prefixes_every_route_link_and_the_cookie() {
    let app = App::start_with(|c| c.public_base_path = "/tollgate".into(), Arc::new(SystemClock)).await;
    let mut b = Browser::new(&app);
    let home = b.get("/tollgate").await;
    assert_eq!(home.status, 303);
    assert_eq!(home.location(), "/tollgate/ui/sign-in");
    assert_eq!(b.get("/tollgate/").await.location(), "/tollgate/ui/sign-in");
    // Nothing is served outside the prefix (the API keeps /v1).
    assert_eq!(b.get("/ui/sign-in").await.status, 404);
    assert_eq!(b.get("/").await.status, 404);
    let ok = b.sign_in("/tollgate/ui/sign-in", &app.admin_key).await;
    assert_eq!(ok.location(), "/tollgate/ui/integrations");
    assert!(ok.headers["set-cookie"].to_str().unwrap().contains("Path=/tollgate;"));
    for path in [
        "/tollgate/ui/integrations",
        "/tollgate/ui/workspaces",
        "/tollgate/ui/logs",
        "/tollgate/ui/analytics",
    ] {
        let p = b.get(path).await;
        assert_eq!(p.status, 200, "{path}");
        for attr in ["href=\"", "action=\"", "src=\""] {
            for (i, _) in p.body.match_indices(attr) {
                let v = &p.body[i + attr.len()..];
                assert!(
                    v.starts_with("/tollgate/") || v.starts_with('#'),
                    "{path}: {attr}{}",
                    &v[..v.len().min(40)]
                );
            }
        }
    }
    assert_eq!(b.get("/tollgate/ui/assets/app.css").await.status, 200);
}

#[tokio::test]
async fn a_workspace_session_sees_and_changes_only_its_workspace() {
    let app = App::start().await;
    let own = app.workspace("Own team").await;
    let other = app.workspace("Hidden team").await;
    let r = app
        .post(
            "/v1/integrations",
            &app.admin_key,
            json!({"name": "hidden-int", "ai_provider_id": "openai", "key": "sk-x", "workspace_id": other}),
        )
        .await;
    assert_eq!(r.status, 200);
    let (_, key) = app
        .workspace_key(
            &own,
            &[
                "workspace_integrations.*",
                "logs.view",
                "analytics.view",
                "completions.write",
            ],
        )
        .await;
    let mut b = Browser::new(&app);
    b.sign_in("/ui/sign-in", &key).await;
    let page = b.get("/ui/integrations?tab=workspace").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("My workspace"));
    for hidden in ["Hidden team", "hidden-int", ">Audit log<", ">API keys<", ">Workspaces<"] {
        assert!(!page.body.contains(hidden), "{hidden} shown to a workspace admin");
    }
    assert_eq!(
        b.get("/ui/workspaces").await.location(),
        format!("/ui/workspaces/{own}")
    );
    // Another workspace answers as an unknown one does (the API does not
    // reveal that it exists).
    let foreign = b.get(&format!("/ui/workspaces/{other}")).await;
    assert_eq!(foreign.status, 404);
    assert!(!foreign.body.contains("Hidden team"));
    assert_eq!(b.get("/ui/workspaces/ws-no-such-one").await.status, 404);
    assert_eq!(b.get("/ui/keys").await.status, 403, "API keys are the organisation's");
    assert_eq!(b.get("/ui/audit").await.status, 403);
    let logs = b.get(&format!("/ui/logs?workspace_id={other}")).await;
    assert!(!logs.body.contains("Hidden team"));
    assert!(logs.body.contains("only its own workspace"), "{}", logs.body);

    // An integration made here belongs to the session's workspace.
    let csrf = page.csrf();
    let made = b
        .post(
            "/ui/integrations/new",
            &[
                ("_csrf", &csrf),
                ("ai_provider_id", "openai"),
                ("name", "Ours"),
                ("slug", "ours"),
                ("key", "sk-ours"),
            ],
        )
        .await;
    assert_eq!(made.status, 303, "{}", made.body);
    let i = app.get("/v1/integrations/ours", &app.admin_key).await;
    assert_eq!(i.body["workspace_id"], json!(own));
}

#[tokio::test]
async fn sessions_end_when_idle_or_when_the_key_goes() {
    let (clock, shared) = manual_clock("2026-03-02T10:00:00Z");
    let app = App::start_with(|_| {}, shared).await;
    let mut b = Browser::new(&app);
    b.sign_in("/ui/sign-in", &app.admin_key).await;
    clock.advance(chrono::Duration::minutes(29));
    assert_eq!(b.get("/ui/logs").await.status, 200);
    clock.advance(chrono::Duration::minutes(29));
    assert_eq!(b.get("/ui/logs").await.status, 200, "use restarts the idle time");
    clock.advance(chrono::Duration::minutes(31));
    let idle = b.get("/ui/logs").await;
    assert_eq!(idle.status, 303);
    assert_eq!(idle.location(), "/ui/sign-in");

    let ws = app.workspace("Team").await;
    let (id, key) = app.workspace_key(&ws, &["logs.view"]).await;
    let mut w = Browser::new(&app);
    w.sign_in("/ui/sign-in", &key).await;
    assert_eq!(w.get("/ui/logs").await.status, 200);
    assert_eq!(
        app.delete(&format!("/v1/api-keys/{id}"), &app.admin_key).await.status,
        200
    );
    let revoked = w.get("/ui/logs").await;
    assert_eq!(revoked.status, 303);
    assert_eq!(revoked.location(), "/ui/sign-in?expired=1");
}

#[tokio::test]
async fn api_validation_errors_sit_beside_their_field() {
    let app = App::start().await;
    let mut b = Browser::new(&app);
    b.sign_in("/ui/sign-in", &app.admin_key).await;
    let csrf = b.get("/ui/integrations/new?provider=openai").await.csrf();
    let bad = b
        .post(
            "/ui/integrations/new",
            &[
                ("_csrf", &csrf),
                ("ai_provider_id", "openai"),
                ("name", "Bad host"),
                ("key", "sk-secret-value"),
                ("custom_host", "ftp://nowhere"),
            ],
        )
        .await;
    assert_eq!(bad.status, 400);
    let at = bad
        .body
        .find("id=\"f-custom_host-err\"")
        .expect("error beside custom_host");
    assert!(bad.body[at..].starts_with("id=\"f-custom_host-err\" role=\"alert\">custom_host must be"));
    assert!(bad.body.contains("ftp://nowhere"), "what was typed is kept");
    assert!(!bad.body.contains("sk-secret-value"), "a secret is never shown back");

    let filtered = b.get("/ui/logs?cost_min=lots").await;
    assert!(filtered.body.contains("id=\"f-cost_min-err\""), "{}", filtered.body);
}

#[tokio::test]
async fn logs_filter_by_cost() {
    let app = App::start().await;
    let r = app.get("/v1/logs?cost_min=abc", &app.admin_key).await;
    assert_eq!(r.status, 400);
    assert!(r.body["data"]["message"].as_str().unwrap().contains("cost_min"));
    let r = app.get("/v1/logs?cost_max=-1", &app.admin_key).await;
    assert_eq!(r.status, 400);
    let r = app.get("/v1/logs?cost_min=0&cost_max=0.5", &app.admin_key).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

#[tokio::test]
async fn provisioning_forms_set_limits_reset_usage_and_revoke() {
    let app = App::start().await;
    let ws = app.workspace("Team").await;
    app.post(
        "/v1/integrations",
        &app.admin_key,
        json!({"name": "Prov", "slug": "prov", "ai_provider_id": "openai", "key": "sk-x"}),
    )
    .await;
    let mut b = Browser::new(&app);
    b.sign_in("/ui/sign-in", &app.admin_key).await;
    let page = b.get("/ui/integrations/prov/workspaces").await;
    assert!(page.body.contains("cannot be edited once set"));
    let csrf = page.csrf();
    let limit = format!("credit_limit.{ws}");
    let rate = format!("rate_value.{ws}");
    let saved = b
        .post(
            "/ui/integrations/prov/workspaces",
            &[
                ("_csrf", &csrf),
                ("access", "specific"),
                ("known", &ws),
                ("ws", &ws),
                (&format!("budget_type.{ws}"), "cost"),
                (&limit, "10"),
                (&format!("alert_threshold.{ws}"), "8"),
                (&format!("periodic_reset.{ws}"), "weekly"),
                (&format!("rate_type.{ws}"), "requests"),
                (&format!("rate_unit.{ws}"), "rpm"),
                (&rate, "30"),
            ],
        )
        .await;
    assert_eq!(saved.status, 303, "{}", saved.body);
    let access = app.get("/v1/integrations/prov/workspaces", &app.admin_key).await.body;
    let entry = &access["workspaces"][0];
    assert_eq!(entry["enabled"], json!(true));
    assert_eq!(entry["usage_limits"]["credit_limit"], json!(10.0));
    assert_eq!(entry["usage_limits"]["periodic_reset"], json!("weekly"));
    assert_eq!(entry["rate_limits"]["value"], json!(30));

    // A set limit is shown, not offered for editing; the bar has its reset.
    let page = b.get("/ui/integrations/prov/workspaces").await;
    assert!(!page.body.contains(&format!("name=\"{limit}\"")));
    assert!(page.body.contains("<meter"), "{}", page.body);
    assert!(page.body.contains("next reset"));

    // An invalid limit is the API's error, shown on the page; nothing changes.
    let other = app.workspace("Other").await;
    let bad = b
        .post(
            "/ui/integrations/prov/workspaces",
            &[
                ("_csrf", &csrf),
                ("known", &other),
                ("ws", &other),
                (&format!("credit_limit.{other}"), "0.5"),
            ],
        )
        .await;
    assert_eq!(bad.status, 200);
    assert!(bad.body.contains("class=\"error banner\""), "{}", bad.body);
    assert!(bad.body.contains("credit_limit"));
    let access = app.get("/v1/integrations/prov/workspaces", &app.admin_key).await.body;
    assert_eq!(access["workspaces"].as_array().unwrap().len(), 1);

    let reset = b
        .post("/ui/integrations/prov/workspaces", &[("_csrf", &csrf), ("reset", &ws)])
        .await;
    assert_eq!(reset.status, 303);
    let audit = app
        .get("/v1/audit-logs?object_type=integration", &app.admin_key)
        .await
        .body;
    assert!(
        audit.to_string().contains("reset_usage") || audit["total"].as_u64().unwrap() >= 3,
        "{audit}"
    );

    let revoke = b
        .post("/ui/integrations/prov/workspaces", &[("_csrf", &csrf), ("revoke", &ws)])
        .await;
    assert_eq!(revoke.status, 303);
    let access = app.get("/v1/integrations/prov/workspaces", &app.admin_key).await.body;
    assert_eq!(access["workspaces"][0]["enabled"], json!(false));
}

#[tokio::test]
async fn model_forms_pick_models_and_price_a_custom_one() {
    let app = App::start().await;
    app.post(
        "/v1/integrations",
        &app.admin_key,
        json!({"name": "M", "slug": "m", "ai_provider_id": "openai", "key": "sk-x"}),
    )
    .await;
    let mut b = Browser::new(&app);
    b.sign_in("/ui/sign-in", &app.admin_key).await;
    let csrf = b.get("/ui/integrations/m/models").await.csrf();
    let bad_headers = b
        .post(
            "/ui/integrations/m/models",
            &[
                ("_csrf", &csrf),
                ("allow_all", "no"),
                ("custom_slug", "ft"),
                ("custom_headers", "no colon"),
            ],
        )
        .await;
    assert!(bad_headers.body.contains("id=\"f-custom_headers\""));
    assert!(
        bad_headers.body.contains("&#39;no colon&#39; is not name: value")
            || bad_headers.body.contains("'no colon' is not name: value")
    );
    let bad_host = b
        .post(
            "/ui/integrations/m/models",
            &[
                ("_csrf", &csrf),
                ("allow_all", "no"),
                ("custom_slug", "ft"),
                ("model_custom_host", "nope"),
            ],
        )
        .await;
    assert!(
        bad_host.body.contains("id=\"f-model_custom_host-err\""),
        "{}",
        bad_host.body
    );
    let ok = b
        .post(
            "/ui/integrations/m/models",
            &[
                ("_csrf", &csrf),
                ("allow_all", "no"),
                ("model", "gpt-4o"),
                ("model", "gpt-4o-mini"),
                ("custom_slug", "ft"),
                ("base_model_slug", "gpt-4o"),
                ("model_custom_host", "http://127.0.0.1:9/v1"),
                ("custom_headers", "x-tenant: a"),
                ("input_price", "0.0005"),
                ("output_price", "0.002"),
            ],
        )
        .await;
    assert_eq!(ok.status, 303, "{}", ok.body);
    let models = app.get("/v1/integrations/m/models", &app.admin_key).await.body;
    assert_eq!(models["allow_all_models"], json!(false));
    let text = models.to_string();
    for want in ["gpt-4o-mini", "\"ft\"", "x-tenant", "0.0005"] {
        assert!(text.contains(want), "{want} in {text}");
    }
    // Unticking a model disables it.
    let csrf = b.get("/ui/integrations/m/models").await.csrf();
    let r = b
        .post(
            "/ui/integrations/m/models",
            &[
                ("_csrf", &csrf),
                ("allow_all", "no"),
                ("model", "gpt-4o"),
                ("was_enabled", "gpt-4o"),
                ("was_enabled", "gpt-4o-mini"),
            ],
        )
        .await;
    assert_eq!(r.status, 303);
    let models = app.get("/v1/integrations/m/models", &app.admin_key).await.body;
    let mini = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["slug"] == "gpt-4o-mini")
        .unwrap();
    assert_eq!(mini["enabled"], json!(false));
}

#[tokio::test]
async fn keys_are_shown_once_rotated_and_revoked() {
    let app = App::start().await;
    let ws = app.workspace("Team").await;
    let mut b = Browser::new(&app);
    b.sign_in("/ui/sign-in", &app.admin_key).await;
    let csrf = b.get("/ui/keys").await.csrf();
    let bad = b
        .post(
            "/ui/keys",
            &[
                ("_csrf", &csrf),
                ("name", "k"),
                ("workspace_id", &ws),
                ("scope", "nope.write"),
            ],
        )
        .await;
    assert!(bad.body.contains("unknown scope"), "{}", bad.body);
    let made = b
        .post(
            "/ui/keys",
            &[
                ("_csrf", &csrf),
                ("name", "team-key"),
                ("workspace_id", &ws),
                ("scope", "completions.write"),
                ("credit_limit", "5"),
                ("rate_value", "10"),
                ("expires_at", "2099-01-01"),
            ],
        )
        .await;
    assert_eq!(made.status, 200, "{}", made.body);
    assert!(made.body.contains("shown only once"));
    let keys = app
        .get(&format!("/v1/api-keys?workspace_id={ws}"), &app.admin_key)
        .await
        .body;
    let k = &keys["data"][0];
    assert_eq!(k["usage_limits"]["credit_limit"], json!(5.0));
    assert_eq!(k["rate_limits"][0]["value"], json!(10));
    assert!(k["expires_at"].as_str().unwrap().starts_with("2099-01-01"));
    let id = k["id"].as_str().unwrap().to_owned();
    // The page shows the new key once; the list shows only its mask.
    let listed = b.get("/ui/keys").await;
    assert!(!listed.body.contains("shown only once"));

    let rotated = b.post(&format!("/ui/keys/{id}/rotate"), &[("_csrf", &csrf)]).await;
    assert_eq!(rotated.status, 200);
    assert!(rotated.body.contains("shown only once"));
    let revoked = b.post(&format!("/ui/keys/{id}/revoke"), &[("_csrf", &csrf)]).await;
    assert_eq!(revoked.status, 303);
    assert_eq!(app.get(&format!("/v1/api-keys/{id}"), &app.admin_key).await.status, 404);
    let missing = b.post(&format!("/ui/keys/{id}/revoke"), &[("_csrf", &csrf)]).await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn logs_can_skip_the_total() {
    let app = App::start().await;
    let r = app.get("/v1/logs?with_total=false", &app.admin_key).await;
    assert_eq!(r.status, 200);
    assert!(r.body["total"].is_null());
    assert_eq!(app.get("/v1/logs", &app.admin_key).await.body["total"], json!(0));
    let r = app.get("/v1/logs?with_total=maybe", &app.admin_key).await;
    assert_eq!(r.status, 400);
    assert!(r.body["data"]["message"].as_str().unwrap().contains("with_total"));
}

#[tokio::test]
async fn the_logs_page_filters_real_requests_by_cost_and_status() {
    let s = crate::gateway::setup().await;
    let ok = s.app.chat_raw(&s.key, &[], &crate::gateway::chat("@oai/gpt-4o")).await;
    assert_eq!(ok.status(), 200);
    let refused = s.app.chat_raw(&s.key, &[], &crate::gateway::chat("@nope/gpt-4o")).await;
    assert_eq!(refused.status(), 404);
    s.app.flush_logs().await;
    let cost = |q: &str| {
        let app = &s.app;
        let q = q.to_owned();
        async move { app.get(&format!("/v1/logs?{q}"), &app.admin_key).await.body["total"].clone() }
    };
    assert_eq!(cost("cost_min=0.0000001").await, json!(1));
    assert_eq!(cost("cost_min=1").await, json!(0));
    assert_eq!(cost("cost_max=1&status_code=200").await, json!(1));

    let mut b = Browser::new(&s.app);
    b.sign_in("/ui/sign-in", &s.app.admin_key).await;
    let all = b.get("/ui/logs").await;
    assert!(all.body.contains("Matching requests 1–2"), "{}", all.body);
    let errors = b.get("/ui/logs?status_code=404").await;
    assert!(errors.body.contains("Matching requests 1–1"));
    assert!(!errors.body.contains(">200<"));
    let none = b.get("/ui/logs?cost_min=5").await;
    assert!(none.body.contains("No matching requests"));
    assert!(!none.body.contains("rel=\"next\""));
}
