//! The test harness: a Tollgate server started in process on port 0 with its
//! own temporary data directory, and a small JSON client; and `tollgate serve`
//! as a child process, as an operator runs it.
//!
//! Every in-process server keeps its data where `TOLLGATE_TEST_BACKEND` says
//! ([`tollgate_testkit::backend`]): by default SQLite in its data directory
//! with counters in process; with `postgres`, a PostgreSQL database and a
//! Redis key prefix of its own, dropped with the [`App`]. A test's own
//! settings (its `tweak`) win over the switch's.

use parking_lot::Mutex;
use reqwest::Method;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tollgate_core::clock::{SharedClock, SystemClock};
use tollgate_server::config::{Config, FileConfig};
use tollgate_server::server::{self, Running};
use tollgate_testkit::backend::Storage;

pub struct App {
    pub url: String,
    pub admin_key: String,
    pub http: reqwest::Client,
    pub running: Option<Running>,
    pub dir: TempDir,
    pub config: Config,
    /// Where the data lives (after `running`, which it outlives).
    pub _storage: Storage,
}

pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Resp {
    /// The admin error code, e.g. `AB07`.
    pub fn code(&self) -> &str {
        self.body["data"]["errorCode"].as_str().unwrap_or("")
    }
    /// The gateway error type.
    pub fn error_type(&self) -> &str {
        self.body["error"]["type"].as_str().unwrap_or("")
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A configuration on port 0 with its data in `dir`, on the embedded SQLite
/// database whatever the switch says (for tests that set up a backend
/// themselves).
pub fn config_for(dir: &std::path::Path) -> Config {
    FileConfig {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.to_path_buf()),
        master_key: Some("11".repeat(32)),
        ..Default::default()
    }
    .resolve()
    .expect("config")
}

/// [`config_for`] `dir`, with its data in `storage`.
pub fn config_on(dir: &std::path::Path, storage: &Storage) -> Config {
    let mut config = config_for(dir);
    if let Some(url) = storage.database_url() {
        config.database = tollgate_store::Location::from_url(Some(url), dir).expect("database url");
    }
    if let Some((url, prefix)) = storage.redis() {
        config.redis_url = Some(url.to_owned().into());
        config.redis_key_prefix = prefix.to_owned();
    }
    config
}

impl App {
    pub async fn start() -> App {
        Self::start_with(|_| {}, Arc::new(SystemClock)).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config), clock: SharedClock) -> App {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::create().await;
        let mut config = config_on(dir.path(), &storage);
        tweak(&mut config);
        let running = server::start(config.clone(), clock).await.expect("server starts");
        let admin_key = running.first_admin_key.clone().expect("first start prints a key");
        App {
            url: format!("http://{}", running.addr),
            admin_key,
            http: reqwest::Client::new(),
            running: Some(running),
            dir,
            config,
            _storage: storage,
        }
    }

    /// Stops and starts again on the same data directory.
    pub async fn restart(&mut self, clock: SharedClock) {
        if let Some(r) = self.running.take() {
            r.stop().await.expect("clean stop");
        }
        let running = server::start(self.config.clone(), clock)
            .await
            .expect("server restarts");
        assert!(running.first_admin_key.is_none(), "a restart prints no new key");
        self.url = format!("http://{}", running.addr);
        self.running = Some(running);
    }

    pub fn state(&self) -> &tollgate_server::state::SharedState {
        &self.running.as_ref().expect("running").state
    }

    pub async fn call(&self, method: Method, path: &str, key: Option<&str>, body: Option<Value>) -> Resp {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(k) = key {
            req = req.header("x-portkey-api-key", k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Resp { status, headers, body }
    }

    pub async fn get(&self, path: &str, key: &str) -> Resp {
        self.call(Method::GET, path, Some(key), None).await
    }
    pub async fn post(&self, path: &str, key: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(key), Some(body)).await
    }
    pub async fn put(&self, path: &str, key: &str, body: Value) -> Resp {
        self.call(Method::PUT, path, Some(key), Some(body)).await
    }
    pub async fn delete(&self, path: &str, key: &str) -> Resp {
        self.call(Method::DELETE, path, Some(key), None).await
    }

    /// POSTs `body` to the chat completions endpoint as `key`.
    pub async fn completion(&self, key: &str, body: Value) -> Resp {
        self.post("/v1/chat/completions", key, body).await
    }

    /// Creates a workspace and returns its id.
    pub async fn workspace(&self, name: &str) -> String {
        let r = self
            .post("/v1/admin/workspaces", &self.admin_key, json!({"name": name}))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.body["id"].as_str().expect("id").to_owned()
    }

    /// Creates a workspace key with `scopes` and returns (id, key).
    pub async fn workspace_key(&self, ws: &str, scopes: &[&str]) -> (String, String) {
        let r = self
            .post(
                "/v1/api-keys/workspace/service",
                &self.admin_key,
                json!({"name": "k", "workspace_id": ws, "scopes": scopes}),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        (
            r.body["id"].as_str().expect("id").to_owned(),
            r.body["key"].as_str().expect("key").to_owned(),
        )
    }

    /// Provisions integration `slug` as `PUT /v1/integrations/{slug}/workspaces`
    /// with `{"workspaces": workspaces}`, which must succeed.
    pub async fn provision(&self, slug: &str, workspaces: Value) {
        let path = format!("/v1/integrations/{slug}/workspaces");
        let r = self
            .put(&path, &self.admin_key, json!({ "workspaces": workspaces }))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }

    /// Creates an OpenAI-compatible integration pointing at `base_url`,
    /// provisioned to `workspaces`.
    pub async fn openai_integration(&self, slug: &str, base_url: &str, key: &str, workspaces: &[&str]) {
        self.integration("openai", slug, key, json!({"custom_host": base_url}), workspaces)
            .await;
    }

    /// Creates an integration `slug` of `provider` holding `key`, with
    /// `configurations`, provisioned to `workspaces`.
    pub async fn integration(&self, provider: &str, slug: &str, key: &str, configurations: Value, workspaces: &[&str]) {
        let r = self
            .post(
                "/v1/integrations",
                &self.admin_key,
                json!({"name": slug, "slug": slug, "ai_provider_id": provider, "key": key, "configurations": configurations}),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        if !workspaces.is_empty() {
            let entries: Vec<Value> = workspaces.iter().map(|w| json!({"id": w, "enabled": true})).collect();
            let r = self
                .put(
                    &format!("/v1/integrations/{slug}/workspaces"),
                    &self.admin_key,
                    json!({"workspaces": entries}),
                )
                .await;
            assert_eq!(r.status, 200, "{:?}", r.body);
        }
    }

    /// POSTs a chat completion as `key` with extra `headers`, and returns the
    /// raw response (for headers and streamed bodies).
    pub async fn chat_raw(&self, key: &str, headers: &[(&str, &str)], body: &Value) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}/v1/chat/completions", self.url))
            .bearer_auth(key)
            .json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("request")
    }

    /// Runs one statement straight on the server's database, whichever
    /// backend it is (for tests that break or inspect what lies beneath).
    pub async fn execute(&self, sql: &str) {
        match &self.config.database {
            tollgate_store::Location::Sqlite(_) => {
                let pool = self.state().store.sqlite_pool().expect("the SQLite pool");
                sqlx::query(sql).execute(pool).await.expect(sql);
            }
            tollgate_store::Location::Postgres(url) => {
                let pool = sqlx::PgPool::connect(url).await.expect("the test database");
                sqlx::query(sql).execute(&pool).await.expect(sql);
                pool.close().await;
            }
        }
    }

    /// Waits until every request so far is in the request log.
    pub async fn flush_logs(&self) {
        self.state().usage.flush().await;
    }
}

/// A response's `content-type`, or "" without one.
pub fn content_type(r: &reqwest::Response) -> String {
    r.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// A clock for tests that need to move time.
pub fn manual_clock(at: &str) -> (tollgate_core::clock::ManualClock, SharedClock) {
    let t = chrono::DateTime::parse_from_rfc3339(at)
        .expect("time")
        .with_timezone(&chrono::Utc);
    let c = tollgate_core::clock::ManualClock::new(t);
    let shared: SharedClock = Arc::new(c.clone());
    (c, shared)
}

/// An admin call to the server at `url` (a child process):
/// (status, JSON body or null).
pub async fn call_at(url: &str, method: Method, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{url}{path}"))
        .header("x-portkey-api-key", key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// On the server at `url`: an OpenAI-compatible integration `m` holding
/// `secret` and pointing at `mock_url`, provisioned to the default
/// workspace; returns (the workspace's id, a new key of it).
pub async fn wire_up(url: &str, admin: &str, secret: &str, mock_url: &str) -> (String, String) {
    let (s, b) = call_at(
        url,
        Method::POST,
        "/v1/integrations",
        admin,
        Some(
            json!({"name": "m", "slug": "m", "ai_provider_id": "openai", "key": secret,
            "configurations": {"custom_host": mock_url}}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (_, ws) = call_at(url, Method::GET, "/v1/admin/workspaces/default", admin, None).await;
    let ws = ws["id"].as_str().expect("id").to_owned();
    let (s, _) = call_at(
        url,
        Method::PUT,
        "/v1/integrations/m/workspaces",
        admin,
        Some(json!({"workspaces": [{"id": ws}]})),
    )
    .await;
    assert_eq!(s, 200);
    let (_, k) = call_at(
        url,
        Method::POST,
        "/v1/api-keys/workspace/service",
        admin,
        Some(json!({"workspace_id": ws})),
    )
    .await;
    let key = k["key"].as_str().expect("key").to_owned();
    (ws, key)
}

/// The built `tollgate` binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// Appends a pipe's lines to `sink`, on a thread of its own, so that
/// nothing the child prints is lost or blocks it.
fn drain_into(pipe: impl Read + Send + 'static, sink: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut s = sink.lock();
            s.push_str(&line);
            s.push('\n');
        }
    });
}

/// Collects a child's stdout and stderr lines into one text.
pub fn capture(child: &mut Child) -> Arc<Mutex<String>> {
    let output = Arc::new(Mutex::new(String::new()));
    if let Some(p) = child.stdout.take() {
        drain_into(p, output.clone());
    }
    if let Some(p) = child.stderr.take() {
        drain_into(p, output.clone());
    }
    output
}

/// A `tollgate serve` child process; dropped, it is killed.
pub struct Proc {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    /// `http://127.0.0.1:PORT`, from its "listening on" line.
    pub url: String,
}

impl Proc {
    /// `serve` on `dir` with its own key file.
    pub fn serve(dir: &Path) -> Proc {
        Self::serve_with(dir, &[])
    }

    /// `serve` on `dir` on a free port, with `TOLLGATE_*` settings in `env`
    /// (`TOLLGATE_MASTER_KEY` only if `env` has it); returns once it listens.
    pub fn serve_with(dir: &Path, env: &[(&str, &str)]) -> Proc {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .env_remove("TOLLGATE_MASTER_KEY")
            .env("TOLLGATE_LOG_LEVEL", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tollgate");
        let (stdout, stderr) = (Arc::new(Mutex::new(String::new())), Arc::new(Mutex::new(String::new())));
        if let Some(p) = child.stdout.take() {
            drain_into(p, stdout.clone());
        }
        if let Some(p) = child.stderr.take() {
            drain_into(p, stderr.clone());
        }
        // Owned from here on, so that a failed start still kills the child.
        let mut p = Proc {
            child,
            stdout,
            stderr,
            url: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        p.url = loop {
            let text = p.stderr();
            if let Some(url) = text.lines().find_map(|l| l.strip_prefix("Tollgate is listening on ")) {
                break url.trim().to_owned();
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("tollgate exited with {status}: {text}");
            }
            assert!(Instant::now() < deadline, "tollgate did not start: {text}");
            std::thread::sleep(Duration::from_millis(20));
        };
        p
    }

    /// `HOST:PORT` it listens on.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// What it printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().clone()
    }

    /// What it printed on stderr (its log) so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().clone()
    }

    /// The first admin key, printed on stdout; "listening" comes on stderr,
    /// read by another thread, so the key may land a moment later.
    pub fn first_key(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(k) = self.stdout().split_whitespace().find(|w| w.starts_with("tg-")) {
                return k.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "the first admin key is printed on stdout: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then waits for a clean exit; returns the exit status and
    /// the whole log.
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // The reader threads catch up with the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return (status, self.stderr());
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
