//! The `tollgate-loadgen` binary: `run` sends one step of open-loop load at
//! any URL and prints its statistics as JSON; `bench` is the full
//! direct-versus-Tollgate benchmark that `bench/run` starts.

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http::{HeaderName, HeaderValue};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tollgate_loadgen::bench::{self, BenchConfig, Pinning, RoutingConfig, Scenario, SearchConfig};
use tollgate_loadgen::load::{self, Mode, Plan, Target};
use tollgate_loadgen::scaleout::ScaleoutConfig;
use tollgate_loadgen::{procs, report};

#[derive(Debug, Parser)]
#[command(
    name = "tollgate-loadgen",
    about = "Open-loop fixed-rate load generator (latency measured from the schedule)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One step of load at URL; prints the statistics as JSON.
    Run(RunArgs),
    /// The Tollgate benchmark (what bench/run runs).
    Bench(Box<BenchArgs>),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Repeat to spread the load: request i goes to the (i mod n)-th URL.
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// Requests per second.
    #[arg(long)]
    rate: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured seconds on the same schedule first.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    #[arg(long, default_value_t = 1024)]
    concurrency: usize,
    /// Per request, seconds from its due time.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Read answers as server-sent events (success = ends with [DONE]).
    #[arg(long)]
    stream: bool,
    /// `Name: value`, repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// The POST body (JSON text).
    #[arg(long, default_value = "{}")]
    body: String,
    /// The status that counts as an answer [default: any 2xx].
    #[arg(long)]
    expect_status: Option<u16>,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// The `tollgate` binary.
    #[arg(long, env = "TOLLGATE_BIN")]
    tollgate_bin: PathBuf,
    /// Where the JSON report goes.
    #[arg(long)]
    out: PathBuf,
    /// Tiny rates and one-second steps: checks the harness runs, nothing more.
    #[arg(long)]
    smoke: bool,
    /// What to measure, comma-separated: gateway (direct versus through
    /// Tollgate, then the search), routing (no config, a single-target
    /// config and one fallback hop), scaleout (replicas on PostgreSQL and
    /// Redis) [default: gateway; smoke: gateway,routing,scaleout].
    #[arg(long, value_delimiter = ',')]
    scenarios: Option<Vec<String>>,
    /// Rates of the scaleout scenario, comma-separated [default: 100,1000,3000; smoke: 20].
    #[arg(long, value_delimiter = ',')]
    scaleout_rates: Option<Vec<f64>>,
    /// Replica counts of the scaleout scenario, increasing, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    scaleout_replicas: Vec<usize>,
    /// The PostgreSQL server the scaleout scenario creates its scratch database on (no database in the URL).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    postgres: String,
    /// The Redis server of the scaleout scenario (it uses a key prefix of its own).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Keep every PostgreSQL and Redis process on these CPUs (a taskset -c
    /// list, e.g. 0) while the scaleout steps run, so that they do not take
    /// the replicas' core; their CPUs are given back afterwards. Needs the
    /// right to change those processes' affinity (root, or their user).
    #[arg(long)]
    pin_services: Option<String>,
    /// Requests per second of each of the routing scenario's six steps [default: 200; smoke: 20].
    #[arg(long)]
    routing_rate: Option<f64>,
    /// Rounds of the routing scenario (each runs its six steps once) [default: 3; smoke: 1].
    #[arg(long)]
    routing_rounds: Option<usize>,
    /// Run a routing round's six steps back to back instead of at the same time.
    #[arg(long)]
    routing_sequential: bool,
    /// Rates in requests per second, comma-separated [default: 100,1000,3000,5000; smoke: 20,50].
    #[arg(long, value_delimiter = ',')]
    rates: Option<Vec<f64>>,
    /// Modes, comma-separated: whole, stream.
    #[arg(long, value_delimiter = ',', default_value = "whole,stream")]
    modes: Vec<String>,
    /// Measured seconds per step [default: 10; smoke: 1].
    #[arg(long)]
    duration: Option<f64>,
    /// Warm-up seconds per step [default: 2; smoke: 0.3].
    #[arg(long)]
    warmup: Option<f64>,
    #[arg(long, default_value_t = 1024)]
    concurrency: usize,
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Do not pin the processes to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// CPUs (taskset -c list) for the load generator.
    #[arg(long, default_value = "0")]
    pin_loadgen: String,
    /// CPUs for the mock upstream.
    #[arg(long, default_value = "0")]
    pin_mock: String,
    /// CPUs for Tollgate.
    #[arg(long, default_value = "1")]
    pin_tollgate: String,
    /// nginx for the reference proxy, run beside Tollgate in every gateway
    /// step [default: nginx on PATH, else /usr/sbin/nginx; none: no reference steps].
    #[arg(long)]
    reference_nginx: Option<PathBuf>,
    /// Leave the reference proxy out.
    #[arg(long)]
    no_reference: bool,
    /// Skip the search for the highest sustained rate.
    #[arg(long)]
    no_search: bool,
    #[arg(long, default_value_t = 10.0)]
    search_p99_ms: f64,
    /// Measured seconds per search probe [default: 5; smoke: 1].
    #[arg(long)]
    search_duration: Option<f64>,
    /// Most search probes [default: 8; smoke: 2].
    #[arg(long)]
    search_probes: Option<usize>,
    #[arg(long, default_value_t = 40_000.0)]
    search_max_rate: f64,
    /// Seconds the search may take [default: 150; smoke: 10].
    #[arg(long)]
    search_budget: Option<f64>,
    /// Seconds after which no new step starts.
    #[arg(long, default_value_t = 900.0)]
    max_wall: f64,
    /// Recorded in the report.
    #[arg(long, default_value = "")]
    command_line: String,
    #[arg(long, default_value = "")]
    git_commit: String,
}

fn secs(s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("bad number of seconds: {s}"))
}

fn parse_mode(m: &str) -> anyhow::Result<Mode> {
    match m.trim() {
        "whole" => Ok(Mode::Whole),
        "stream" => Ok(Mode::Stream),
        other => anyhow::bail!("unknown mode {other:?} (whole or stream)"),
    }
}

fn parse_scenario(s: &str) -> anyhow::Result<Scenario> {
    Scenario::parse(s).with_context(|| format!("unknown scenario {s:?} (gateway, routing or scaleout)"))
}

fn bench_config(a: &BenchArgs) -> anyhow::Result<BenchConfig> {
    let smoke = a.smoke;
    let scenarios = match &a.scenarios {
        Some(list) => list
            .iter()
            .map(|s| parse_scenario(s))
            .collect::<anyhow::Result<Vec<_>>>()?,
        None if smoke => vec![Scenario::Gateway, Scenario::Routing, Scenario::Scaleout],
        None => vec![Scenario::Gateway],
    };
    if scenarios.is_empty() {
        anyhow::bail!("--scenarios needs at least one of gateway, routing, scaleout");
    }
    let scaleout = scaleout_config(a)?;
    let routing_rate = pick_rate(a.routing_rate, smoke)?;
    let routing_rounds = a.routing_rounds.unwrap_or(if smoke { 1 } else { 3 });
    if routing_rounds == 0 {
        anyhow::bail!("--routing-rounds must be at least 1");
    }
    let pick = |v: Option<f64>, full: f64, small: f64| v.unwrap_or(if smoke { small } else { full });
    let pinning = if a.no_pin {
        None
    } else if std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) < 2 || !procs::taskset_available() {
        eprintln!("note: fewer than 2 CPUs or no taskset: not pinning");
        None
    } else {
        Some(Pinning {
            loadgen: a.pin_loadgen.clone(),
            mock: a.pin_mock.clone(),
            tollgate: a.pin_tollgate.clone(),
        })
    };
    Ok(BenchConfig {
        tollgate_bin: a.tollgate_bin.clone(),
        scenarios,
        routing: RoutingConfig {
            rate: routing_rate,
            rounds: routing_rounds,
            together: !a.routing_sequential,
        },
        scaleout,
        rates: a.rates.clone().unwrap_or_else(|| {
            if smoke {
                vec![20.0, 50.0]
            } else {
                vec![100.0, 1000.0, 3000.0, 5000.0]
            }
        }),
        modes: a.modes.iter().map(|m| parse_mode(m)).collect::<anyhow::Result<_>>()?,
        duration: secs(pick(a.duration, 10.0, 1.0))?,
        warmup: secs(pick(a.warmup, 2.0, 0.3))?,
        concurrency: a.concurrency,
        timeout: secs(a.timeout)?,
        cooldown: secs(if smoke { 0.1 } else { 1.0 })?,
        pinning,
        reference: if a.no_reference {
            None
        } else {
            match &a.reference_nginx {
                Some(p) if p.is_file() => Some(p.clone()),
                Some(p) => anyhow::bail!("--reference-nginx {}: no such file", p.display()),
                None => tollgate_loadgen::reference::find_nginx(),
            }
        },
        search: SearchConfig {
            enabled: !a.no_search,
            p99_bound_ms: a.search_p99_ms,
            duration: secs(pick(a.search_duration, 5.0, 1.0))?,
            warmup: secs(if smoke { 0.2 } else { 1.0 })?,
            max_probes: a.search_probes.unwrap_or(if smoke { 2 } else { 8 }),
            max_rate: a.search_max_rate,
            budget: secs(pick(a.search_budget, 150.0, 10.0))?,
        },
        max_wall: secs(a.max_wall)?,
        out: a.out.clone(),
        smoke,
        command: a.command_line.clone(),
        git_commit: a.git_commit.clone(),
    })
}

/// The routing scenario's rate: given, else 200 (smoke: 20); positive and finite.
fn pick_rate(given: Option<f64>, smoke: bool) -> anyhow::Result<f64> {
    let r = given.unwrap_or(if smoke { 20.0 } else { 200.0 });
    if !(r.is_finite() && r > 0.0) {
        anyhow::bail!("--routing-rate must be a positive number, got {r}");
    }
    Ok(r)
}

/// The scaleout scenario's settings: positive rates, replica counts that
/// rise from at least 1.
fn scaleout_config(a: &BenchArgs) -> anyhow::Result<ScaleoutConfig> {
    let rates = a.scaleout_rates.clone().unwrap_or_else(|| {
        if a.smoke {
            vec![20.0]
        } else {
            vec![100.0, 1000.0, 3000.0]
        }
    });
    if rates.is_empty() || rates.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
        anyhow::bail!("--scaleout-rates must be positive numbers, got {rates:?}");
    }
    let replicas = a.scaleout_replicas.clone();
    if replicas.first().is_none_or(|&n| n == 0) || replicas.windows(2).any(|w| w[1] <= w[0]) {
        anyhow::bail!("--scaleout-replicas must rise from at least 1, e.g. 1,3; got {replicas:?}");
    }
    Ok(ScaleoutConfig {
        rates,
        replicas,
        postgres: a.postgres.trim_end_matches('/').to_owned(),
        redis: a.redis.clone(),
        pin_services: a.pin_services.clone(),
    })
}

fn run_targets(a: &RunArgs) -> anyhow::Result<(Vec<Arc<Target>>, Plan)> {
    let mut headers = vec![(
        HeaderName::from_static("content-type"),
        HeaderValue::from_static("application/json"),
    )];
    for h in &a.headers {
        let (k, v) = h
            .split_once(':')
            .with_context(|| format!("header {h:?} is not `Name: value`"))?;
        headers.push((HeaderName::try_from(k.trim())?, HeaderValue::try_from(v.trim())?));
    }
    let body = Bytes::from(a.body.clone());
    let targets = a
        .urls
        .iter()
        .map(|u| {
            Ok(Arc::new(Target {
                uri: u.parse().with_context(|| format!("bad URL {u:?}"))?,
                headers: headers.clone(),
                body: body.clone(),
                expect_status: a.expect_status,
            }))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let plan = Plan {
        rate: a.rate,
        duration: secs(a.duration)?,
        warmup: secs(a.warmup)?,
        concurrency: a.concurrency,
        timeout: secs(a.timeout)?,
        mode: if a.stream { Mode::Stream } else { Mode::Whole },
        start: None,
    };
    Ok((targets, plan))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Pinning happens before the runtime starts, so every runtime thread
    // inherits it and tokio sizes its worker pool to the pinned CPUs.
    let bench_cfg = match &cli.command {
        Command::Bench(a) => {
            let cfg = bench_config(a)?;
            if let Some(p) = &cfg.pinning {
                procs::pin_self(&p.loadgen)?;
            }
            Some(cfg)
        }
        Command::Run(_) => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match (cli.command, bench_cfg) {
            (Command::Run(a), _) => {
                let (targets, plan) = run_targets(&a)?;
                let client = load::client(plan.concurrency);
                let stats = load::run_spread(&client, &targets, &plan).await?;
                println!("{}", serde_json::to_string_pretty(&stats)?);
            }
            (Command::Bench(_), Some(cfg)) => {
                let out = cfg.out.clone();
                let r = bench::run(cfg).await?;
                println!("{}", report::table(&r));
                eprintln!("wrote {}", out.display());
            }
            (Command::Bench(_), None) => anyhow::bail!("bench configuration missing"),
        }
        Ok(())
    })
}
