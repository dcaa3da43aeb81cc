//! The harness must not rot: `bench/run --smoke` starts the mock and a
//! Tollgate, runs a few one-second steps at tiny rates and writes its JSON;
//! its scale-out part needs the machine's PostgreSQL and Redis.
//! Each gateway step also runs through nginx, the reference proxy.
//! Only that it runs and what the JSON holds is asserted, never timing.
//! `bench/instructions` likewise: it runs and prints a count.

// Integration tests: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `TOLLGATE_BIN`, else the `tollgate` built beside this crate's binary,
/// else a debug build of it.
fn tollgate_bin(loadgen: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("TOLLGATE_BIN") {
        return PathBuf::from(p);
    }
    let beside = loadgen.with_file_name("tollgate");
    if !beside.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "tollgate-server", "--bin", "tollgate"])
            .current_dir(workspace_root())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building tollgate failed");
    }
    beside
}

/// Runs a harness script (`bench/run`, `bench/instructions`) on the
/// `tollgate` and `tollgate-loadgen` under test; fails the test, with its
/// output, unless it succeeds; returns its standard output.
fn run_script<S: AsRef<OsStr>>(script: &Path, args: impl IntoIterator<Item = S>) -> String {
    let loadgen = PathBuf::from(env!("CARGO_BIN_EXE_tollgate-loadgen"));
    let tollgate = tollgate_bin(&loadgen);
    let run = Command::new(script)
        .args(args)
        .env("TOLLGATE_BIN", &tollgate)
        .env("LOADGEN_BIN", &loadgen)
        .output()
        .unwrap_or_else(|e| panic!("{} starts: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{} failed:\n{stdout}\n{}",
        script.display(),
        String::from_utf8_lossy(&run.stderr)
    );
    stdout
}

#[test]
fn smoke_run_writes_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smoke.json");
    let stdout = run_script(
        &workspace_root().join("bench/run"),
        [OsStr::new("--smoke"), OsStr::new("--out"), out.as_os_str()],
    );
    assert!(stdout.contains("| rate (req/s) |"), "the table is printed: {stdout}");

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for key in [
        "started_at",
        "finished_at",
        "git_commit",
        "command",
        "machine",
        "config",
        "setup",
        "targets",
        "notes",
    ] {
        assert!(report.get(key).is_some(), "missing {key}");
    }
    assert!(report["machine"]["nproc"].as_u64().is_some());
    assert!(report["machine"]["cpu_model"].is_string());
    assert_eq!(report["config"]["smoke"], true);
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 4, "two rates × two modes");
    for s in steps {
        for side in ["direct", "tollgate"] {
            for p in ["p50", "p90", "p99", "max"] {
                assert!(s[side]["latency_ms"][p].is_number(), "{side}.latency_ms.{p}");
            }
            assert!(s[side]["success_rate"].is_number());
            assert!(s[side]["achieved_rps"].is_number());
        }
        for p in ["p50", "p90", "p99", "max"] {
            assert!(s["added_ms"][p].is_number());
        }
        assert!(s["tollgate_cpu_ms_per_1000_requests"].is_number());
        assert!(s["other_processes_cpu_s"].is_number());
        assert!(s["tollgate_peak_rss_mb"].as_f64().is_some_and(|m| m > 0.0));
        if s["mode"] == "stream" {
            assert!(s["tollgate"]["ttfb_ms"]["p99"].is_number());
            assert!(s["added_ttfb_ms"]["p99"].is_number());
        }
        // The same step through the reference proxy (nginx; scripts/test
        // installs it): every request answered, its CPU read.
        let r = &s["reference"];
        assert_eq!(r["stats"]["errors"], 0, "{}", r["stats"]["error_kinds"]);
        assert_eq!(
            r["stats"]["ok"], s["tollgate"]["ok"],
            "as many answers as through Tollgate"
        );
        assert!(r["added_ms"]["p99"].is_number());
        assert!(r["cpu_ms_per_1000_requests"].is_number());
        // A ratio, unless nginx's CPU stayed under one clock tick.
        assert_eq!(
            r["tollgate_cpu_ratio"].is_number(),
            r["cpu_ms_per_1000_requests"].as_f64().is_some_and(|c| c > 0.0),
            "{r}"
        );
        if s["mode"] == "stream" {
            assert!(r["added_ttfb_ms"]["p99"].is_number());
        }
    }
    assert!(
        report["setup"]["reference_proxy"]["config"]
            .as_str()
            .is_some_and(|c| c.contains("proxy_pass")),
        "{}",
        report["setup"]
    );
    assert!(
        stdout.contains("through the reference proxy"),
        "its table is printed: {stdout}"
    );
    assert!(
        stdout.contains("The same figures through the reference proxy (nginx), same run:")
            && stdout.contains("nginx added p99 at 20 req/s (whole)"),
        "the reference's figures beside the targets: {stdout}"
    );
    // The limits were in force on the sanity request.
    assert!(
        report["setup"]["sanity_response"]["x-ratelimit-limit-requests"].is_string(),
        "{}",
        report["setup"]
    );
    let search = &report["search"];
    assert!(search["probes"].is_array() && search["criterion"].is_string() && search["stopped_because"].is_string());
    assert!(report["targets"].as_array().is_some_and(|t| !t.is_empty()));

    // The routing scenario: one round of six steps, each answered as expected
    // (the failed ones with the failing mock's 503, through Tollgate a 502), and the derived figures.
    let routing = &report["routing"];
    let rounds = routing["rounds"].as_array().expect("routing rounds");
    assert_eq!(rounds.len(), 1, "{routing}");
    for step in [
        "direct",
        "no_config",
        "single",
        "failed_direct",
        "failed_through",
        "fallback",
    ] {
        let st = &rounds[0][step];
        assert_eq!(st["errors"], 0, "{step}: {}", st["error_kinds"]);
        assert!(st["latency_ms"]["p50"].as_f64().is_some_and(|v| v > 0.0), "{step}");
    }
    for fig in [
        "no_config_added_ms",
        "single_vs_no_config_ms",
        "hop_ms",
        "hop_vs_failed_through_ms",
    ] {
        assert!(rounds[0][fig]["p50"].is_number(), "{fig}");
        assert!(routing["summary"][fig]["p99"]["median"].is_number(), "{fig}");
    }
    let sanity = &report["setup"]["routing"]["sanity_responses"];
    assert_eq!(
        sanity["fallback"]["x-portkey-last-used-option-index"],
        "config.targets[1]"
    );
    assert_eq!(sanity["failed_direct"]["status"], 503);
    assert_eq!(sanity["failed_through"]["status"], 502);
    let names: Vec<&str> = report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.iter().any(|n| n.contains("fallback hop")), "{names:?}");
    assert!(
        stdout.contains("fallback hop"),
        "the routing table is printed: {stdout}"
    );

    // The scale-out scenario: one replica, then three, on a scratch
    // PostgreSQL database and Redis key prefix, both gone afterwards.
    let so = &report["scaleout"];
    let steps = so["steps"].as_array().expect("scaleout steps");
    assert_eq!(steps.len(), 4, "replicas 1 and 3 × one rate × two modes: {so}");
    for (s, n) in steps.iter().zip([1, 1, 3, 3]) {
        assert_eq!(s["replicas"], n);
        assert_eq!(s["through"]["errors"], 0, "{}", s["through"]["error_kinds"]);
        assert_eq!(s["direct"]["errors"], 0);
        assert!(s["added_ms"]["p99"].is_number());
        // The Redis floor: every pair of round trips answered.
        assert_eq!(s["redis_floor"]["errors"], 0, "{}", s["redis_floor"]["error_kinds"]);
        assert_eq!(s["redis_floor"]["ok"], s["redis_floor"]["requests"]);
        assert!(s["redis_floor"]["latency_ms"]["p99"].as_f64().is_some_and(|v| v > 0.0));
        assert_eq!(s["replica_cpu_s"].as_array().map(Vec::len), Some(n));
        // Each of the machine's CPUs, in percent; the step kept some busy.
        let busy: Vec<f64> = s["cpu_busy_percent"]
            .as_array()
            .expect("cpu_busy_percent")
            .iter()
            .map(|v| v.as_f64().expect("a percentage"))
            .collect();
        let cpus = tollgate_loadgen::procfs::machine_cpu()
            .expect("/proc/stat")
            .per_cpu
            .len();
        assert_eq!(busy.len(), cpus, "{busy:?}");
        assert!(busy.iter().all(|p| (0.0..=100.0).contains(p)), "{busy:?}");
        assert!(busy.iter().any(|p| *p > 0.0), "{busy:?}");
        assert_eq!(s["replica_peak_rss_mb"].as_array().map(Vec::len), Some(n));
        assert!(s["cpu_ms_per_1000_requests"].as_f64().is_some_and(|v| v > 0.0));
        assert!(s["postgres_all_cpu_s"].is_number() && s["redis_cpu_s"].is_number());
        // Admission and settlement are a Redis script each (2 per request; a
        // settlement may land just after the step ends).
        assert!(
            s["redis_round_trips_per_request"].as_f64().is_some_and(|v| v > 1.5),
            "{}",
            s["redis_calls"]
        );
        assert!(s["redis_calls_per_request"].as_f64() >= s["redis_round_trips_per_request"].as_f64());
    }
    assert!(
        so["setup"]["services_pinned"]
            .as_str()
            .is_some_and(|s| s.starts_with("no")),
        "PostgreSQL and Redis are left where they are unless --pin-services is given"
    );
    let sanity = so["setup"]["sanity_responses"].as_array().unwrap();
    assert_eq!(sanity.len(), 3, "one sanity request per replica");
    assert!(so["setup"]["key_rate_limit"]["value"].is_number());
    assert_eq!(so["cleanup"]["database_dropped"], true);
    assert!(so["cleanup"]["redis_keys_deleted"].as_u64().is_some_and(|n| n > 0));
    let database = so["database"].as_str().unwrap().to_owned();
    let prefix = so["redis_key_prefix"].as_str().unwrap().to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (databases, keys) = rt.block_on(async {
        let pg = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
            .await
            .unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(&database)
            .fetch_one(&pg)
            .await
            .unwrap();
        let mut r = redis::Client::open("redis://127.0.0.1:6379")
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut r)
            .await
            .unwrap();
        (n, keys)
    });
    assert_eq!(databases, 0, "{database} was dropped");
    assert!(keys.is_empty(), "the run's Redis keys were deleted: {keys:?}");
    assert!(names.iter().any(|n| n.contains("scaleout")), "{names:?}");
    assert!(stdout.contains("Scale-out"), "the scale-out table is printed: {stdout}");
    assert!(
        stdout.contains("| each CPU busy (%) |"),
        "with each CPU's busy time: {stdout}"
    );
}

/// `bench/instructions` on debug binaries at a tiny rate: it finds the one
/// profile of `tollgate serve`, and prints a count per request; bad options
/// are refused before anything runs.
#[test]
fn instructions_are_counted_per_request() {
    let script = workspace_root().join("bench/instructions");
    let stdout = run_script(
        &script,
        ["--modes", "whole", "--rate", "20", "--short", "1", "--long", "2"],
    );
    let count: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("whole")?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no count for whole answers: {stdout}"));
    // A request through the gateway takes hundreds of thousands of
    // instructions (millions in a debug build), never a handful.
    assert!(count > 50_000, "{stdout}");
    let profiles = stdout
        .lines()
        .find_map(|l| l.strip_prefix("profiles: "))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|p| Path::new(p).parent().map(Path::to_path_buf))
        .unwrap_or_else(|| panic!("no profiles line: {stdout}"));
    assert!(profiles.join("whole-2.callgrind").exists(), "{}", profiles.display());
    std::fs::remove_dir_all(&profiles).unwrap();

    for (args, says) in [
        (
            &["--short", "2", "--long", "2"][..],
            "--long must be longer than --short",
        ),
        (&["--bogus"][..], "unknown option --bogus"),
    ] {
        let bad = Command::new(&script)
            .args(args)
            .output()
            .expect("bench/instructions starts");
        assert_eq!(bad.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&bad.stderr).contains(says), "{args:?}");
    }
}

/// A reference proxy that is not there is refused before anything starts.
#[test]
fn a_missing_reference_nginx_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate-loadgen"))
        .args(["bench", "--tollgate-bin", "/bin/true", "--out"])
        .arg(dir.path().join("r.json"))
        .args(["--reference-nginx", "/nonexistent/nginx"])
        .output()
        .expect("tollgate-loadgen starts");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--reference-nginx /nonexistent/nginx: no such file"),
        "{stderr}"
    );
    assert!(!dir.path().join("r.json").exists(), "nothing ran");
}
