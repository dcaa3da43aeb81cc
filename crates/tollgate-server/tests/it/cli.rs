//! The `tollgate` binary as a user runs it: first start, admin keys, config
//! errors, graceful shutdown, secrets out of debug logs, master-key rotation
//! and price import.

use crate::support::{self, call_at, Proc, BIN};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tollgate_testkit::control::Control;
use tollgate_testkit::openai::{self, OpenAiMock};
use tollgate_testkit::MockServer;

const SECRET: &str = "sk-live-DEBUG-LOG-MUST-NOT-SHOW-THIS-0123456789";

/// The first-start admin key: on stdout (alone on its line), never in the
/// log stream on stderr.
fn first_key(p: &Proc) -> String {
    let k = p.first_key();
    assert!(!p.stderr().contains(&k), "the key stays out of stderr: {}", p.stderr());
    k
}

/// Waits (up to 30 s) until `child`'s log, collected in `err`, says it
/// listens.
fn wait_listening(child: &mut Child, err: &Mutex<String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !err.lock().contains("Tollgate is listening on") {
        if let Ok(Some(s)) = child.try_wait() {
            panic!("exited with {s}: {}", err.lock());
        }
        assert!(Instant::now() < deadline, "{}", err.lock());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env_remove("TOLLGATE_MASTER_KEY")
        .output()
        .expect("run")
}

/// Polls until `f` is true (the server reloads CLI changes within a second).
async fn eventually<F: std::future::Future<Output = bool>>(mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "condition never became true");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn first_start_prints_a_key_once_and_sigterm_drains() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::serve_with(dir.path(), &[]);
    let key = first_key(&p);
    assert!(
        p.stderr().contains("x-portkey-api-key"),
        "one line telling the user what to do"
    );
    let (status, body) = call_at(&p.url, reqwest::Method::GET, "/v1/admin/workspaces", &key, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"][0]["slug"], "default");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("master.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert!(dir.path().join("tollgate.db").exists());
    let (status, _) = p.terminate();
    assert!(status.success(), "graceful exit on SIGTERM");
    // A second start prints no key; another one comes from the CLI, alone on stdout.
    let p = Proc::serve_with(dir.path(), &[]);
    assert!(
        !p.stderr().contains("tg-") && !p.stdout().contains("tg-"),
        "{}",
        p.stderr()
    );
    let out = run(&["admin-key", "create"], dir.path());
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let new_key = printed.trim();
    assert!(
        new_key.starts_with("tg-") && !new_key.contains(char::is_whitespace),
        "{printed:?}"
    );
    let url = p.url.clone();
    eventually(|| {
        let (url, k) = (url.clone(), new_key.to_owned());
        async move {
            call_at(&url, reqwest::Method::GET, "/v1/admin/workspaces", &k, None)
                .await
                .0
                == 200
        }
    })
    .await;
    p.terminate();
}

#[tokio::test]
async fn configuration_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.toml");
    std::fs::write(&cfg, "listen = \"127.0.0.1:0\"\nlisten_port = 1\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen_port"));
    let out = Command::new(BIN)
        .args(["serve", "--listen", "nope", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen"));
    let out = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .env("TOLLGATE_MASTER_KEY", "abc")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .to_lowercase()
        .contains("master key"));
}

#[tokio::test]
async fn a_wrong_master_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::serve_with(dir.path(), &[("TOLLGATE_MASTER_KEY", &"ab".repeat(32))]);
    p.terminate();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("TOLLGATE_MASTER_KEY", "cd".repeat(32))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not match"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Wires the server at `url` up to `mock_url` (see [`support::wire_up`])
/// with the integration key [`SECRET`]; returns a workspace key.
async fn wire_up(url: &str, admin: &str, mock_url: &str) -> String {
    support::wire_up(url, admin, SECRET, mock_url).await.1
}

async fn complete(url: &str, key: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "@m/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `serve` on a fresh data directory with `env`, wired up to an upstream
/// that wants [`SECRET`].
struct Wired {
    _mock: MockServer,
    dir: tempfile::TempDir,
    p: Proc,
    admin: String,
    /// A key of the default workspace.
    key: String,
}

async fn wired(env: &[(&str, &str)]) -> Wired {
    let mock = openai::start(OpenAiMock {
        api_key: Some(SECRET.into()),
        control: Control::new(),
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::serve_with(dir.path(), env);
    let admin = first_key(&p);
    let key = wire_up(&p.url, &admin, &openai::base_url(&mock)).await;
    Wired {
        _mock: mock,
        dir,
        p,
        admin,
        key,
    }
}

#[tokio::test]
async fn debug_logs_never_show_a_secret() {
    let Wired { _mock, dir, p, key, .. } = wired(&[("TOLLGATE_LOG", "debug")]).await;
    assert_eq!(
        complete(&p.url, &key).await,
        200,
        "the upstream accepted the opened secret"
    );
    let (_, logs) = p.terminate();
    assert!(logs.contains("DEBUG"), "debug logging was on");
    assert!(
        !logs.contains("DEBUG-LOG-MUST-NOT-SHOW-THIS"),
        "a secret reached the log"
    );
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("DEBUG-LOG-MUST-NOT-SHOW-THIS"));
    }
}

#[tokio::test]
async fn rotating_the_master_key_keeps_the_server_working() {
    let Wired {
        _mock,
        dir,
        p,
        admin,
        key,
    } = wired(&[]).await;
    assert_eq!(complete(&p.url, &key).await, 200);
    let before = std::fs::read(dir.path().join("master.key")).unwrap();
    let out = run(&["rotate-master-key"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_ne!(std::fs::read(dir.path().join("master.key")).unwrap(), before);
    // The running server picks the new key up and keeps serving.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(complete(&p.url, &key).await, 200, "{}", p.stderr());
    p.terminate();
    // And a fresh start with the new key file works too.
    let p = Proc::serve_with(dir.path(), &[]);
    assert_eq!(complete(&p.url, &key).await, 200);
    let (_, audit) = call_at(
        &p.url,
        reqwest::Method::GET,
        "/v1/audit-logs?object_type=master_key",
        &admin,
        None,
    )
    .await;
    assert_eq!(audit["total"], 1);
    p.terminate();
}

#[tokio::test]
async fn prices_import_replaces_the_table() {
    let control = Control::new();
    control.set_usage(1_000_000, 0, 0);
    let mock = openai::start(OpenAiMock { api_key: None, control }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::serve_with(dir.path(), &[]);
    let admin = first_key(&p);
    let key = wire_up(&p.url, &admin, &openai::base_url(&mock)).await;
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"taken_at": "x", "models": [{"provider": "openai", "model": "gpt-4o", "input": "-1", "output": "1"}]}"#,
    )
    .unwrap();
    let out = run(&["prices", "import", bad.to_str().unwrap()], dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("gpt-4o"));
    let good = dir.path().join("prices.json");
    std::fs::write(&good, r#"{"taken_at": "2026-11-01", "models": [{"provider": "openai", "model": "gpt-4o", "input": "7", "output": "1"}]}"#).unwrap();
    let out = run(&["prices", "import", good.to_str().unwrap()], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(complete(&p.url, &key).await, 200);
    let url = p.url.clone();
    eventually(|| {
        let (url, admin) = (url.clone(), admin.clone());
        async move {
            let (_, logs) = call_at(&url, reqwest::Method::GET, "/v1/logs", &admin, None).await;
            logs["data"][0]["cost_exact"] == "7"
        }
    })
    .await;
    p.terminate();
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// No message says the same thing twice ("X: X").
fn assert_no_repeats(msg: &str) {
    let parts: Vec<&str> = msg.trim().split(": ").collect();
    for w in parts.windows(2) {
        assert_ne!(w[0].trim(), w[1].trim(), "repeated: {msg}");
    }
    for p in &parts {
        if p.len() > 8 {
            assert_eq!(msg.matches(p).count(), 1, "{p:?} twice in {msg}");
        }
    }
}

#[test]
fn commands_other_than_serve_refuse_a_missing_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("tollgate-dat"); // a typo
    let prices = dir.path().join("prices.json");
    std::fs::write(&prices, "{}").unwrap();
    let prices = prices.to_str().unwrap();
    for args in [
        vec!["admin-key", "create"],
        vec!["rotate-master-key"],
        vec!["prices", "import", prices],
        vec!["seed-usage", "--rows", "1"],
    ] {
        let out = run(&args, &missing);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = stderr_of(&out);
        assert!(err.contains(&missing.display().to_string()), "{args:?}: {err}");
        assert!(err.contains("does not exist"), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?} printed {:?}", out.stdout);
        assert!(!missing.exists(), "{args:?} created the directory");
    }
    // The data directory may also come from the environment or a file.
    let out = Command::new(BIN)
        .args(["admin-key", "create"])
        .env("TOLLGATE_DATA_DIR", &missing)
        .env_remove("TOLLGATE_MASTER_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!missing.exists());
}

#[test]
fn a_second_serve_on_the_same_data_dir_is_refused_until_the_first_dies() {
    let dir = tempfile::tempdir().unwrap();
    let first = Proc::serve_with(dir.path(), &[]);
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("TOLLGATE_MASTER_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success(), "a second server started");
    let err = stderr_of(&out);
    assert!(err.contains("in use by another"), "{err}");
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    // A SIGKILL releases the lock: the next start works.
    first.kill_9();
    let again = Proc::serve_with(dir.path(), &[]);
    again.terminate();
}

#[test]
fn config_errors_name_the_line_and_key_and_say_things_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.toml");
    let serve = |extra: &[(&str, &str)]| {
        let mut c = Command::new(BIN);
        c.args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(dir.path());
        for (k, v) in extra {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    // A type error on line 3.
    std::fs::write(&cfg, "# settings\nlog_level = \"info\"\nmax_body_bytes = \"ten\"\n").unwrap();
    let err = stderr_of(&serve(&[]));
    assert!(err.contains("line 3") && err.contains("max_body_bytes"), "{err}");
    assert_no_repeats(&err);
    // A syntax error on line 2.
    std::fs::write(&cfg, "log_level = \"info\"\nrequest_timeout_ms = \n").unwrap();
    let err = stderr_of(&serve(&[]));
    assert!(err.contains("line 2") && err.contains("request_timeout_ms"), "{err}");
    // An invalid log level, from the file or the environment.
    std::fs::write(&cfg, "log_level = \"loud\"\n").unwrap();
    let out = serve(&[]);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("log_level") && err.contains("loud"), "{err}");
    std::fs::write(&cfg, "").unwrap();
    let err = stderr_of(&serve(&[("TOLLGATE_LOG_LEVEL", "verbose")]));
    assert!(err.contains("log_level") && err.contains("verbose"), "{err}");
    // A file that cannot be read: the OS error once.
    let out = Command::new(BIN)
        .args(["serve", "--config", "/nonexistent/tollgate.toml"])
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert!(err.contains("/nonexistent/tollgate.toml"), "{err}");
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
    assert_no_repeats(&err);
    // Neither do start-up errors repeat their cause.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let err = stderr_of(&run(&["admin-key", "create"], &file));
    assert_no_repeats(&err);
}

#[test]
fn listen_accepts_host_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "localhost:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("TOLLGATE_MASTER_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let err = support::capture(&mut child);
    wait_listening(&mut child, &err);
    let _ = child.kill();
    let _ = child.wait();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "no-such-host.invalid:8787", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("no-such-host.invalid"), "{}", stderr_of(&out));
}

#[test]
fn each_command_lists_only_its_options_and_serve_names_the_environment() {
    let help = |args: &[&str]| {
        let out = Command::new(BIN).args(args).arg("--help").output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let serve = help(&["serve"]);
    for s in tollgate_server::config::SETTINGS {
        assert!(serve.contains(s.env), "serve --help lacks {}:\n{serve}", s.env);
    }
    for args in [
        &["admin-key", "create"][..],
        &["rotate-master-key"][..],
        &["prices", "import"][..],
        &["seed-usage"][..],
    ] {
        let h = help(args);
        assert!(h.contains("--data-dir"), "{args:?}: {h}");
        assert!(
            !h.contains("--listen") && !h.contains("--metrics-listen"),
            "{args:?}: {h}"
        );
    }
    let mock = help(&["mock-upstream"]);
    assert!(!mock.contains("--data-dir") && !mock.contains("--config"), "{mock}");
}

#[test]
fn smtp_without_alert_from_uses_a_default_sender() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::serve_with(dir.path(), &[("TOLLGATE_SMTP_URL", "smtp://127.0.0.1:1")]);
    let err = p.stderr();
    assert!(err.contains("alert e-mails are sent from tollgate@"), "{err}");
    let (status, _) = p.terminate();
    assert!(status.success());
    let p = Proc::serve_with(
        dir.path(),
        &[
            ("TOLLGATE_SMTP_URL", "smtp://127.0.0.1:1"),
            ("TOLLGATE_ALERT_FROM", "ops@example.com"),
        ],
    );
    assert!(p.stderr().contains("sent from ops@example.com"), "{}", p.stderr());
    p.terminate();
}

/// (soft, hard) "Max open files" of a process.
fn open_file_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line")
        .to_owned();
    let v: Vec<&str> = line.split_whitespace().collect();
    (v[3].to_owned(), v[4].to_owned())
}

#[test]
fn serve_raises_the_soft_open_file_limit_to_the_hard_one() {
    let hard = open_file_limits(std::process::id()).1;
    if hard == "256" {
        return; // Nothing to raise on this machine.
    }
    let dir = tempfile::tempdir().unwrap();
    // bash lowers its soft limit, then becomes tollgate.
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -Sn 256 && exec {BIN} serve --listen 127.0.0.1:0 --data-dir {}",
            dir.path().display()
        ))
        .env_remove("TOLLGATE_MASTER_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = support::capture(&mut child);
    wait_listening(&mut child, &err);
    let (soft, hard) = open_file_limits(child.id());
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(soft, hard, "the soft limit was not raised");
}

#[tokio::test]
async fn mock_upstream_fail_status_answers_every_model_call_with_it() {
    // Out of range: refused before anything starts.
    let out = Command::new(BIN)
        .args(["mock-upstream", "--port", "0", "--fail-status", "200"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("--fail-status") && err.contains("400..=599"), "{err}");

    let mut child = Command::new(BIN)
        .args(["mock-upstream", "--port", "0", "--fail-status", "503"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = support::capture(&mut child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let base = loop {
        let text = stderr.lock().clone();
        if let Some(rest) = text.split("base_url=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "the mock printed no base URL: {text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let resp = reqwest::Client::new()
        .post(format!("{base}/chat/completions"))
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("--fail-status"),
        "{body}"
    );
}
