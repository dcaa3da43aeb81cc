//! Tollgate deployed as docs/DEPLOY.md says: three `tollgate serve`
//! processes on one PostgreSQL database and one Redis, with the same master
//! key and each its own data directory, behind Debian's nginx running the
//! example `deploy/nginx.conf` itself, TLS included (only the replica
//! addresses, ports and certificate paths replaced). Limits hold exactly across the replicas, consumption,
//! resets and alerts are the same whichever replica answers, a revoked key
//! is refused everywhere within a second, streams pass through nginx as they
//! come, and a dashboard session works on every replica.
//!
//! The in-process tests (replicas.rs, and the store's counter and notify
//! tests) cover the pieces; this one runs the processes an operator runs.

use crate::gateway::{upstream, UPSTREAM_KEY};
use crate::postgres::TestDb;
use crate::support::{capture, Proc, BIN};
use futures::future::join_all;
use futures::StreamExt;
use parking_lot::Mutex;
use reqwest::{Client, Method};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tollgate_testkit::control::Control;
use tollgate_testkit::openai;

const NGINX: &str = "/usr/sbin/nginx";
/// The example operators copy; the test runs this very text.
const SITE: &str = include_str!("../../../../deploy/nginx.conf");
/// The example's replica addresses, listeners and certificate directory,
/// replaced by the test's.
const EXAMPLE_REPLICAS: [&str; 3] = ["10.0.0.11:8787", "10.0.0.12:8787", "10.0.0.13:8787"];
const EXAMPLE_HTTP: &str = "listen 80;";
const EXAMPLE_HTTPS: &str = "listen 443 ssl http2;";
const EXAMPLE_CERTS: &str = "/etc/letsencrypt/live/gateway.example.com/";
/// The longest a change through one replica (a revocation, a reset) may take
/// to reach another.
const CHANGED_EVERYWHERE_WITHIN: Duration = Duration::from_secs(1);

/// `deploy/nginx.conf` with the test's replica addresses, ports and
/// certificates: each example value must be there, so that an edit of the
/// example that the test would no longer follow fails here.
fn site(replicas: [&str; 3], http_port: u16, https_port: u16, certs: &Path) -> String {
    let mut conf = SITE.to_owned();
    let mut swap = |example: &str, real: &str| {
        assert!(conf.contains(example), "deploy/nginx.conf has {example}");
        conf = conf.replace(example, real);
    };
    for (example, real) in EXAMPLE_REPLICAS.iter().zip(replicas) {
        swap(example, real);
    }
    swap(EXAMPLE_HTTP, &format!("listen 127.0.0.1:{http_port};"));
    swap(EXAMPLE_HTTPS, &format!("listen 127.0.0.1:{https_port} ssl http2;"));
    swap(EXAMPLE_CERTS, &format!("{}/", certs.display()));
    conf
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Runs `openssl` in `dir`; it must succeed.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test certificate authority and, signed by it, the certificate for
/// 127.0.0.1 that nginx serves (`fullchain.pem`, `privkey.pem` in `dir`,
/// named as Let's Encrypt names them). Returns the authority's PEM.
fn certificates(dir: &Path) -> Vec<u8> {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=Tollgate test CA",
            ],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            &["req"][..],
            &ec,
            &["-keyout", "privkey.pem", "-out", "leaf.csr", "-subj", "/CN=127.0.0.1"],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "fullchain.pem",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ],
    );
    std::fs::read(dir.join("ca.pem")).expect("ca.pem")
}

/// Debian's nginx as a child process (`daemon off`), its prefix, pid file,
/// certificates and temporary files in a directory of its own, the site
/// included inside `http { }` as /etc/nginx/nginx.conf does with conf.d;
/// stopped with SIGQUIT (graceful) when dropped.
struct Nginx {
    child: Child,
    output: Arc<Mutex<String>>,
    /// `https://127.0.0.1:PORT`.
    url: String,
    /// `http://127.0.0.1:PORT`, which only redirects.
    plain_url: String,
    /// The certificate authority that signed nginx's certificate.
    ca: Vec<u8>,
    _dir: TempDir,
}

impl Nginx {
    fn start(replicas: [&str; 3]) -> Nginx {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} is missing: apt-get install nginx (scripts/test does)"
        );
        // The ports are free when chosen; another test may bind one before
        // nginx does.
        'attempts: for attempt in 0.. {
            let dir = tempfile::tempdir().expect("tempdir");
            // nginx's workers run as an unprivileged user when the master is root.
            std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
            let ca = certificates(dir.path());
            let (http_port, https_port) = (free_port(), free_port());
            let d = dir.path().display();
            std::fs::write(
                dir.path().join("tollgate.conf"),
                site(replicas, http_port, https_port, dir.path()),
            )
            .expect("site");
            let main = format!(
                "worker_processes 2;\n\
                 events {{ worker_connections 2048; }}\n\
                 http {{\n\
                 \x20   access_log off;\n\
                 \x20   client_body_temp_path {d}/client_body;\n\
                 \x20   proxy_temp_path {d}/proxy;\n\
                 \x20   fastcgi_temp_path {d}/fastcgi;\n\
                 \x20   uwsgi_temp_path {d}/uwsgi;\n\
                 \x20   scgi_temp_path {d}/scgi;\n\
                 \x20   include {d}/tollgate.conf;\n\
                 }}\n"
            );
            let conf = dir.path().join("nginx.conf");
            std::fs::write(&conf, main).expect("nginx.conf");
            let mut child = Command::new(NGINX)
                .arg("-p")
                .arg(dir.path())
                .args(["-e", "stderr", "-c"])
                .arg(&conf)
                .arg("-g")
                .arg(format!("daemon off; pid {d}/nginx.pid;"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn nginx");
            let output = capture(&mut child);
            let mut n = Nginx {
                child,
                output,
                url: format!("https://127.0.0.1:{https_port}"),
                plain_url: format!("http://127.0.0.1:{http_port}"),
                ca,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            for port in [http_port, https_port] {
                while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                    if let Ok(Some(status)) = n.child.try_wait() {
                        let output = n.output.lock().clone();
                        // Another test took a port between `free_port` and
                        // nginx's bind: try again on others.
                        if output.contains("Address already in use") && attempt < 4 {
                            continue 'attempts;
                        }
                        panic!("nginx exited with {status}: {output}");
                    }
                    assert!(Instant::now() < deadline, "nginx did not start: {}", n.output.lock());
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            return n;
        }
        unreachable!("the loop returns or panics")
    }

    /// A client that trusts nginx's certificate, following no redirects.
    fn client(&self) -> Client {
        Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&self.ca).expect("CA"))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        use rustix::process::{kill_process, Pid, Signal};
        // The master's SIGQUIT stops its workers too; SIGKILL would orphan them.
        if let Some(pid) = Pid::from_raw(self.child.id() as i32) {
            let _ = kill_process(pid, Signal::QUIT);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One answer: status and JSON body (or the text as a JSON string).
async fn call(http: &Client, method: Method, url: &str, key: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = http.request(method, url).header("x-portkey-api-key", key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// An admin call that must succeed.
async fn admin(http: &Client, method: Method, url: &str, key: &str, body: Value) -> Value {
    let body = (!body.is_null()).then_some(body);
    let (status, b) = call(http, method, url, key, body).await;
    assert_eq!(status, 200, "{url}: {b}");
    b
}

/// A chat completion's status; an answer other than 200 and the expected
/// refusals (401, 412, 429) is printed, so that a failure shows it.
async fn chat(http: &Client, base: &str, key: &str, body: &Value) -> u16 {
    let r = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    // Read to the end: the answer is whole only then.
    let text = r.text().await.expect("body");
    if ![200, 401, 412, 429].contains(&status) {
        eprintln!("{status} from {base}: {text}");
    }
    status
}

/// `GET /v1/models` as `key` straight to a replica: 200, or 401 once the
/// key is gone.
async fn models_status(http: &Client, base: &str, key: &str) -> u16 {
    http.get(format!("{base}/v1/models"))
        .bearer_auth(key)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

/// The replica's `tollgate_requests_total` answered with `status`, summed
/// over every other label.
async fn requests_total(http: &Client, base: &str, admin_key: &str, status: u16) -> u64 {
    let (s, text) = call(http, Method::GET, &format!("{base}/metrics"), admin_key, None).await;
    assert_eq!(s, 200, "{text}");
    let label = format!("status=\"{status}\"");
    text.as_str()
        .expect("text")
        .lines()
        .filter(|l| l.starts_with("tollgate_requests_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// API key `key_id`'s budget as one replica reports it: (consumed, reserved).
async fn key_budget(http: &Client, base: &str, admin_key: &str, key_id: &str) -> (Value, Value) {
    let b = admin(
        http,
        Method::GET,
        &format!("{base}/v1/analytics/summary"),
        admin_key,
        Value::Null,
    )
    .await;
    let budget = b["data"]["budgets"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["limit_id"] == format!("key:{key_id}").as_str()))
        .unwrap_or_else(|| panic!("the key's budget on {base}: {b}"))
        .clone();
    (budget["consumed"].clone(), budget["reserved"].clone())
}

/// Waits until every replica knows `key` (control changes arrive in order,
/// so the last one made means all of them).
async fn until_every_replica_knows(http: &Client, replicas: &[&Proc], key: &str) {
    for r in replicas {
        let deadline = Instant::now() + Duration::from_secs(10);
        while models_status(http, &r.url, key).await != 200 {
            assert!(Instant::now() < deadline, "{} never saw the new key", r.url);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Sleeps until at least `room` is left in the current calendar minute, so
/// that a burst against a per-minute limit falls in one window.
async fn with_room_in_the_minute(room: Duration) {
    use chrono::Timelike;
    let now = chrono::Utc::now();
    let elapsed = Duration::from_millis(u64::from(now.second()) * 1000 + u64::from(now.timestamp_subsec_millis()));
    if Duration::from_secs(60).saturating_sub(elapsed) < room {
        tokio::time::sleep(Duration::from_secs(60) - elapsed + Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_behind_nginx_hold_limits_alerts_and_revocations_exactly() {
    let db = TestDb::create().await;
    let redis = tollgate_testkit::backend::RedisKeys::new();
    let master_key = "77".repeat(32);
    let (smtp_port, mut mails) = crate::alerts::smtp_on_port_0().await;
    let smtp_url = format!("smtp://127.0.0.1:{smtp_port}");
    let control = Control::new();
    let mock = upstream(&control).await;
    let env = [
        ("TOLLGATE_DATABASE_URL", db.url.as_str()),
        ("TOLLGATE_REDIS_URL", redis.url()),
        ("TOLLGATE_REDIS_KEY_PREFIX", redis.prefix()),
        ("TOLLGATE_MASTER_KEY", master_key.as_str()),
        ("TOLLGATE_SMTP_URL", smtp_url.as_str()),
        ("TOLLGATE_ALERT_FROM", "tollgate@example.com"),
        ("TOLLGATE_ALERT_EMAILS", "ops@example.com"),
    ];
    let dirs: Vec<TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();

    // First start as docs/DEPLOY.md says: the first admin key from the
    // command line, then the replicas, which print none.
    let out = Command::new(BIN)
        .args(["admin-key", "create", "--data-dir"])
        .arg(dirs[0].path())
        .envs(env)
        .output()
        .expect("admin-key create");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let admin_key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(admin_key.starts_with("tg-"), "{admin_key}");
    let procs: Vec<Proc> = dirs.iter().map(|d| Proc::serve_with(d.path(), &env)).collect();
    let replicas: Vec<&Proc> = procs.iter().collect();
    let (a, b, c) = (replicas[0], replicas[1], replicas[2]);
    let nginx = Nginx::start([a.addr(), b.addr(), c.addr()]);
    let lb = nginx.url.as_str();
    let http = nginx.client();
    let (s, health) = call(&http, Method::GET, &format!("{lb}/health/ready"), "", None).await;
    assert_eq!(s, 200, "{health}");
    // Plain HTTP only redirects to HTTPS.
    let r = http
        .get(format!("{}/v1/models", nginx.plain_url))
        .send()
        .await
        .expect("http");
    assert_eq!(r.status(), 308);
    let to = r
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .unwrap_or_default();
    assert!(
        to.starts_with("https://127.0.0.1") && to.ends_with("/v1/models"),
        "{to}"
    );

    // Set up through nginx, as any admin client would: an integration whose
    // answers cost $0.30 (1,000 output tokens at 0.03 cents), a workspace
    // with 50 requests a minute, a key with a $1 budget that alerts at 50%.
    let ad = admin_key.as_str();
    admin(
        &http,
        Method::POST,
        &format!("{lb}/v1/integrations"),
        ad,
        json!({"name": "oai", "slug": "oai", "ai_provider_id": "openai", "key": UPSTREAM_KEY,
               "configurations": {"custom_host": openai::base_url(&mock)}}),
    )
    .await;
    admin(
        &http,
        Method::PUT,
        &format!("{lb}/v1/integrations/oai/models"),
        ad,
        json!({"models": [{"slug": "gpt-4o", "enabled": true, "pricing_config": {"type": "static",
               "pay_as_you_go": {"request_token": {"price": 0}, "response_token": {"price": 0.03}}}}]}),
    )
    .await;
    control.set_usage(10, 1000, 0);
    let mut ws = Vec::new();
    for name in ["rate", "budget"] {
        let w = admin(
            &http,
            Method::POST,
            &format!("{lb}/v1/admin/workspaces"),
            ad,
            json!({"name": name}),
        )
        .await;
        ws.push(w["id"].as_str().unwrap().to_owned());
    }
    admin(
        &http,
        Method::PUT,
        &format!("{lb}/v1/integrations/oai/workspaces"),
        ad,
        json!({"workspaces": [
            {"id": ws[0], "enabled": true, "rate_limits": [{"type": "requests", "unit": "rpm", "value": 50}]},
            {"id": ws[1], "enabled": true}]}),
    )
    .await;
    let key = |body: Value| {
        let http = http.clone();
        async move {
            let k = admin(
                &http,
                Method::POST,
                &format!("{lb}/v1/api-keys/workspace/service"),
                ad,
                body,
            )
            .await;
            (
                k["id"].as_str().unwrap().to_owned(),
                k["key"].as_str().unwrap().to_owned(),
            )
        }
    };
    let (_, rate_key) = key(json!({"name": "rate", "workspace_id": ws[0], "scopes": ["completions.write"]})).await;
    let (budget_id, budget_key) = key(
        json!({"name": "budget", "workspace_id": ws[1], "scopes": ["completions.write"],
        "alert_emails": ["owner@example.com"],
        "usage_limits": {"type": "cost", "credit_limit": 1, "alert_threshold": 0.5}}),
    )
    .await;
    let (doomed_id, doomed_key) =
        key(json!({"name": "doomed", "workspace_id": ws[1], "scopes": ["completions.write"]})).await;
    until_every_replica_knows(&http, &replicas, &doomed_key).await;
    let body = json!({"model": "@oai/gpt-4o", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]});

    // 200 concurrent requests against 50 a minute: exactly 50 answers,
    // served by all three replicas.
    with_room_in_the_minute(Duration::from_secs(40)).await;
    let minute = |t: chrono::DateTime<chrono::Utc>| t.timestamp() / 60;
    let started = chrono::Utc::now();
    let before: Vec<(u64, u64)> = join_all(replicas.iter().map(|r| async {
        (
            requests_total(&http, &r.url, ad, 200).await,
            requests_total(&http, &r.url, ad, 429).await,
        )
    }))
    .await;
    let statuses = join_all((0..200).map(|_| chat(&http, lb, &rate_key, &body))).await;
    let after: Vec<(u64, u64)> = join_all(replicas.iter().map(|r| async {
        (
            requests_total(&http, &r.url, ad, 200).await,
            requests_total(&http, &r.url, ad, 429).await,
        )
    }))
    .await;
    assert_eq!(
        minute(started),
        minute(chrono::Utc::now()),
        "the burst must fall in one rate window; it took from {started}"
    );
    let count = |s: &[u16], code: u16| s.iter().filter(|x| **x == code).count();
    assert_eq!(
        (count(&statuses, 200), count(&statuses, 429)),
        (50, 150),
        "{statuses:?}"
    );
    let per_replica: Vec<(u64, u64)> = before.iter().zip(&after).map(|(b, a)| (a.0 - b.0, a.1 - b.1)).collect();
    eprintln!("answered (200, 429) per replica: {per_replica:?}");
    assert_eq!(per_replica.iter().map(|p| p.0).sum::<u64>(), 50, "{per_replica:?}");
    assert_eq!(per_replica.iter().map(|p| p.1).sum::<u64>(), 150, "{per_replica:?}");
    assert!(
        per_replica.iter().all(|p| p.0 + p.1 > 0),
        "every replica answered: {per_replica:?}"
    );

    // A $1 budget, $0.30 requests, 64 at once: exactly 3 admitted.
    let statuses = join_all((0..64).map(|_| chat(&http, lb, &budget_key, &body))).await;
    assert_eq!((count(&statuses, 200), count(&statuses, 412)), (3, 61), "{statuses:?}");
    // Every replica reads the same consumption, nothing left reserved.
    for r in &replicas {
        assert_eq!(
            key_budget(&http, &r.url, ad, &budget_id).await,
            (json!(0.9), json!(0.0)),
            "{}",
            r.url
        );
    }
    // The 50% threshold was crossed once: one e-mail, whichever replica
    // settled the crossing request and however many replicas deliver alerts.
    let mail = tokio::time::timeout(Duration::from_secs(30), mails.recv())
        .await
        .expect("an alert e-mail")
        .expect("the SMTP mock runs");
    assert!(
        mail.rcpt.iter().any(|r| r.contains("owner@example.com")),
        "{:?}",
        mail.rcpt
    );
    assert!(
        mail.rcpt.iter().any(|r| r.contains("ops@example.com")),
        "{:?}",
        mail.rcpt
    );
    if let Ok(Some(second)) = tokio::time::timeout(Duration::from_secs(3), mails.recv()).await {
        panic!(
            "a second alert e-mail:\n{}\n---- after ----\n{}",
            second.text(),
            mail.text()
        );
    }
    // A reset through B holds on B at once, and on A and C as soon as the
    // change reaches them (within a second).
    let reset_at = Instant::now();
    admin(
        &http,
        Method::PUT,
        &format!("{}/v1/api-keys/{budget_id}", b.url),
        ad,
        json!({"reset_usage": true}),
    )
    .await;
    let fresh = (json!(0.0), json!(0.0));
    assert_eq!(key_budget(&http, &b.url, ad, &budget_id).await, fresh, "B, at once");
    for r in [a, c] {
        loop {
            let got = key_budget(&http, &r.url, ad, &budget_id).await;
            if got == fresh {
                break;
            }
            assert!(
                reset_at.elapsed() < CHANGED_EVERYWHERE_WITHIN,
                "{} still counts the budget from before the reset: {got:?}",
                r.url
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(chat(&http, lb, &budget_key, &body).await, 200);
    for r in &replicas {
        assert_eq!(
            key_budget(&http, &r.url, ad, &budget_id).await.0,
            json!(0.3),
            "{}",
            r.url
        );
    }

    // A stream through nginx arrives as the upstream sends it: the first
    // words while the upstream still holds the rest back.
    control.set_reply("alpha beta gamma delta epsilon zeta");
    control.stall_stream(true);
    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let r = http
        .post(format!("{lb}/v1/chat/completions"))
        .bearer_auth(&doomed_key)
        .json(&stream_body)
        .send()
        .await
        .expect("stream");
    assert_eq!(r.status(), 200);
    let mut chunks = r.bytes_stream();
    let mut seen = String::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while !seen.contains("alpha") {
            let chunk = chunks.next().await.expect("more of the stream").expect("chunk");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the first words did not come through nginx: {seen:?}"));
    assert!(!seen.contains("[DONE]") && !seen.contains("zeta"), "{seen}");
    drop(chunks);
    control.stall_stream(false);
    let whole = http
        .post(format!("{lb}/v1/chat/completions"))
        .bearer_auth(&doomed_key)
        .json(&stream_body)
        .send()
        .await
        .expect("stream")
        .text()
        .await
        .expect("whole stream");
    assert!(
        whole.contains("zeta") && whole.trim_end().ends_with("data: [DONE]"),
        "{whole}"
    );

    // A dashboard session made through nginx works on every replica nginx
    // sends it to in turn (sessions are in the database).
    let browser = nginx.client();
    let signed_in = browser
        .post(format!("{lb}/ui/sign-in"))
        .form(&[("api_key", ad)])
        .send()
        .await
        .expect("sign in");
    assert_eq!(signed_in.status(), 303);
    let set_cookie = signed_in
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie")
        .to_owned();
    // nginx said X-Forwarded-Proto: https.
    assert!(set_cookie.contains("; Secure"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap_or_default();
    for _ in 0..6 {
        let page = browser
            .get(format!("{lb}/ui/integrations"))
            .header("cookie", cookie)
            .send()
            .await
            .expect("page");
        assert_eq!(page.status(), 200, "every replica serves the session");
    }

    // A key revoked through A: A refuses it on its very next request, B
    // and C within a second of the revocation being sent.
    for r in &replicas {
        assert_eq!(models_status(&http, &r.url, &doomed_key).await, 200);
    }
    let revoked_at = Instant::now();
    admin(
        &http,
        Method::DELETE,
        &format!("{}/v1/api-keys/{doomed_id}", a.url),
        ad,
        Value::Null,
    )
    .await;
    let answered_in = revoked_at.elapsed();
    assert_eq!(models_status(&http, &a.url, &doomed_key).await, 401, "A, at once");
    let waits = join_all([b, c].map(|r| {
        let http = http.clone();
        let (url, key) = (r.url.clone(), doomed_key.clone());
        async move {
            while models_status(&http, &url, &key).await != 401 {
                assert!(
                    revoked_at.elapsed() < Duration::from_secs(10),
                    "{url} still admits the key"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            revoked_at.elapsed()
        }
    }))
    .await;
    eprintln!("revocation through A answered after {answered_in:?}; B and C refused the key after {waits:?}");
    assert!(waits.iter().all(|w| *w < CHANGED_EVERYWHERE_WITHIN), "{waits:?}");
    assert_eq!(chat(&http, lb, &doomed_key, &body).await, 401, "through nginx");

    drop(nginx);
    drop(procs);
    db.drop_db().await;
}
