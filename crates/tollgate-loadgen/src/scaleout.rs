//! The `scaleout` scenario ([`crate::bench::Scenario::Scaleout`]): Tollgate
//! as it runs behind a load balancer, with the control plane and request log
//! in PostgreSQL and the limit counters in Redis. It creates a scratch
//! database and a Redis key prefix of its own, starts one replica (`tollgate
//! serve` on both), sets up the same governance as the gateway scenario plus
//! a rate limit on the key, and at each rate and mode runs a step straight at
//! the mock and one through the replicas; then it starts more replicas (three
//! by default) and repeats, the load generator sending requests to the
//! replicas in turn. Besides the added latency it reads every replica's CPU
//! and peak memory, PostgreSQL's and Redis's CPU and Redis's commands. The
//! scratch database is dropped and the prefix's keys deleted at the end,
//! whether the scenario succeeded or not.

use crate::bench::{
    check, direct_targets, govern, mode_index, plan, sanity, through_targets, Added, BenchConfig, BenchError,
    TargetCheck, MASTER_KEY,
};
use crate::load::{self, HttpClient, Mode, Plan, StepStats, Target};
use crate::procfs;
use crate::procs::{self, PinnedServices, Proc};
use redis::aio::MultiplexedConnection;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The rate limit on the workspace key: high enough never to trip.
const KEY_RPM: u64 = 40_000_000;
/// The bound on added p99 at 1,000 req/s with counters in Redis.
pub const ADDED_P99_LIMIT_MS: f64 = 1.5;
/// The rate that bound is given for.
pub const TARGET_RATE: f64 = 1000.0;
/// Connecting to PostgreSQL or Redis, and each call to them, waits at most this.
const SERVICE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most `SCAN` pages read when deleting the run's keys (1,000 keys a page).
const MAX_SCAN_PAGES: usize = 100_000;

/// What the scenario is told.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleoutConfig {
    /// Requests per second of each step.
    pub rates: Vec<f64>,
    /// Replica counts, in increasing order (replicas are added, never stopped).
    pub replicas: Vec<usize>,
    /// The PostgreSQL server, a URL without a database.
    pub postgres: String,
    /// The Redis server.
    pub redis: String,
    /// CPUs (a `taskset -c` list) to keep PostgreSQL and Redis on while the
    /// steps run, e.g. the load generator's, so that they do not take the
    /// replicas' core; `None`: the scheduler places them.
    pub pin_services: Option<String>,
}

/// The services `pin_services` pins: PostgreSQL's processes (the server and
/// its backends) and Redis.
const SERVICES: &[&str] = &["postgres", "redis-server"];

/// One rate and mode with a number of replicas.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleoutStep {
    pub replicas: usize,
    pub rate: f64,
    pub mode: Mode,
    pub direct: StepStats,
    /// The machine's Redis floor: two script calls in a row (`EVAL "return
    /// 1" 0`), as many round trips as a request through a replica makes,
    /// sent by the load generator on the same schedule (run between the
    /// direct and the through step, so its calls are not counted below).
    pub redis_floor: StepStats,
    /// Through the replicas, requests spread over them in turn.
    pub through: StepStats,
    pub added_ms: Added,
    /// Streams: added time to first byte.
    pub added_ttfb_ms: Option<Added>,
    /// Requests sent through the replicas in the step (warm-up included);
    /// every CPU figure below is over the same whole step.
    pub requests_total: u64,
    /// Each replica's utime + stime.
    pub replica_cpu_s: Vec<f64>,
    /// All replicas' CPU per 1,000 requests.
    pub cpu_ms_per_1000_requests: f64,
    /// Each replica's CPU per 1,000 of the requests it was sent.
    pub replica_cpu_ms_per_1000_requests: Vec<f64>,
    pub user_cpu_s: f64,
    pub system_cpu_s: f64,
    /// Each replica's VmHWM after the step.
    pub replica_peak_rss_mb: Vec<f64>,
    /// CPU of the PostgreSQL backends connected to the scratch database.
    pub postgres_backends_cpu_s: f64,
    /// CPU of every `postgres` process (the backends above, the WAL writer,
    /// the checkpointer, and other users' backends).
    pub postgres_all_cpu_s: f64,
    pub postgres_all_cpu_ms_per_1000_requests: f64,
    /// Redis's `used_cpu_user + used_cpu_sys` (`INFO cpu`).
    pub redis_cpu_s: f64,
    pub redis_cpu_ms_per_1000_requests: f64,
    /// Calls by command (`INFO commandstats`, the probe's own `INFO` left
    /// out). The commands a script runs count here too, and Redis is
    /// shared, so another user's commands would as well.
    pub redis_calls: BTreeMap<String, u64>,
    pub redis_calls_per_request: f64,
    /// Script calls (`EVALSHA`, `EVAL`, ...) per request: Tollgate's round
    /// trips to Redis, since admission and settlement are one script each.
    pub redis_round_trips_per_request: f64,
    /// Machine-wide busy CPU in the through step that went to none of the
    /// replicas, the mock, the load generator, PostgreSQL and Redis.
    pub other_processes_cpu_s: f64,
    /// How busy each of the machine's CPUs was during the through step, in
    /// percent (`/proc/stat`): how much room the machine had left, whoever
    /// used it.
    pub cpu_busy_percent: Vec<f64>,
}

/// How the run cleaned up after itself.
#[derive(Debug, Clone, Serialize)]
pub struct Cleanup {
    pub database_dropped: bool,
    pub redis_keys_deleted: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleoutReport {
    /// The scratch database (dropped at the end).
    pub database: String,
    pub redis_key_prefix: String,
    pub setup: Value,
    pub steps: Vec<ScaleoutStep>,
    pub cleanup: Cleanup,
}

/// A scratch database and Redis key prefix, as [`with_scratch`] hands them out.
pub struct Scratch {
    pub database: String,
    pub database_url: String,
    pub redis_url: String,
    pub redis_key_prefix: String,
}

/// A connection to the server's `postgres` database, for `CREATE` and
/// `DROP DATABASE` and to find the scratch database's backends.
struct PgAdmin(PgPool);

impl PgAdmin {
    async fn connect(server: &str) -> Result<PgAdmin, BenchError> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(SERVICE_TIMEOUT)
            .connect(&format!("{server}/postgres"))
            .await?;
        Ok(PgAdmin(pool))
    }

    async fn execute(&self, sql: &str) -> Result<(), BenchError> {
        sqlx::query(sql).execute(&self.0).await?;
        Ok(())
    }

    /// The pids of the backends connected to `database`.
    async fn backends(&self, database: &str) -> Result<Vec<u32>, BenchError> {
        let pids: Vec<i32> = sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = $1")
            .bind(database)
            .fetch_all(&self.0)
            .await?;
        Ok(pids.into_iter().filter_map(|p| u32::try_from(p).ok()).collect())
    }
}

/// Redis's CPU and calls so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RedisInfo {
    pub cpu_s: f64,
    pub calls: BTreeMap<String, u64>,
}

/// Reads `INFO cpu commandstats` text: `used_cpu_user` + `used_cpu_sys`,
/// and each `cmdstat_<command>:calls=<n>,...` line. Lines it does not know
/// are skipped.
pub fn parse_info(text: &str) -> RedisInfo {
    let mut info = RedisInfo::default();
    for line in text.lines() {
        let Some((k, v)) = line.trim().split_once(':') else {
            continue;
        };
        if k == "used_cpu_user" || k == "used_cpu_sys" {
            info.cpu_s += v.parse::<f64>().unwrap_or(0.0);
        } else if let Some(cmd) = k.strip_prefix("cmdstat_") {
            let calls = v
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(n) = calls {
                info.calls.insert(cmd.to_owned(), n);
            }
        }
    }
    info
}

/// Whether a command (as `INFO commandstats` names it) runs a script: one
/// round trip from the client, however many commands the script runs.
fn is_script_call(cmd: &str) -> bool {
    matches!(
        cmd,
        "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro"
    )
}

/// Calls between two readings, by command; the probe's own `INFO` left out
/// (Redis counts a command once it has run: the first reading's is among
/// the calls the second one reads, the second's is not). The admission
/// script's own `INFO` (the server's run_id) stays.
fn calls_between(before: &RedisInfo, after: &RedisInfo) -> BTreeMap<String, u64> {
    after
        .calls
        .iter()
        .map(|(cmd, n)| {
            let probe = u64::from(cmd == "info");
            let since = n.saturating_sub(before.calls.get(cmd).copied().unwrap_or(0));
            (cmd.clone(), since.saturating_sub(probe))
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// The benchmark's own connection to Redis.
struct RedisProbe(MultiplexedConnection);

async fn bounded<T>(what: &str, f: impl Future<Output = Result<T, redis::RedisError>>) -> Result<T, BenchError> {
    match tokio::time::timeout(SERVICE_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(BenchError::Timeout(format!("Redis: {what}"))),
    }
}

impl RedisProbe {
    async fn connect(url: &str) -> Result<RedisProbe, BenchError> {
        let client = redis::Client::open(url)?;
        let conn = bounded("connect", client.get_multiplexed_async_connection()).await?;
        Ok(RedisProbe(conn))
    }

    async fn info(&mut self) -> Result<RedisInfo, BenchError> {
        let text: String = bounded(
            "INFO",
            redis::cmd("INFO")
                .arg("cpu")
                .arg("commandstats")
                .query_async(&mut self.0),
        )
        .await?;
        Ok(parse_info(&text))
    }

    /// One step of the Redis floor ([`ScaleoutStep::redis_floor`]) on
    /// `plan`'s schedule: each request is two script calls in a row.
    async fn two_round_trips(&self, plan: &Plan) -> Result<StepStats, BenchError> {
        let conn = self.0.clone();
        let plan = Plan {
            mode: Mode::Whole,
            ..plan.clone()
        };
        Ok(load::run_op(&plan, move |_| {
            let mut c = conn.clone();
            async move {
                for _ in 0..2 {
                    let r: Result<i64, _> = redis::cmd("EVAL").arg("return 1").arg(0).query_async(&mut c).await;
                    if r.is_err() {
                        return (None, Err("redis".into()));
                    }
                }
                (None, Ok(()))
            }
        })
        .await?)
    }

    /// Deletes every key that starts with `prefix` (which holds no glob
    /// characters); returns how many there were.
    async fn delete_prefix(&mut self, prefix: &str) -> Result<u64, BenchError> {
        let pattern = format!("{prefix}*");
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        for _ in 0..MAX_SCAN_PAGES {
            let (next, keys): (u64, Vec<String>) = bounded(
                "SCAN",
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut self.0),
            )
            .await?;
            if !keys.is_empty() {
                let n: u64 = bounded("UNLINK", redis::cmd("UNLINK").arg(&keys).query_async(&mut self.0)).await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
        Err(BenchError::Timeout(format!(
            "Redis: deleting {pattern} took more than {MAX_SCAN_PAGES} SCAN pages"
        )))
    }
}

/// Creates a scratch database and picks a Redis key prefix, both named
/// after `tag` (lower-case letters, digits and `_`), runs `f` with them, then
/// drops the database (closing its connections) and deletes the prefix's
/// keys, whether `f` succeeded or not. `f`'s error comes first; a cleanup
/// that fails after a success is the error.
pub async fn with_scratch<T, F, Fut>(cfg: &ScaleoutConfig, tag: &str, f: F) -> Result<(T, Cleanup), BenchError>
where
    F: FnOnce(Scratch) -> Fut,
    Fut: Future<Output = Result<T, BenchError>>,
{
    if tag.is_empty()
        || !tag
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(BenchError::Sanity(format!("bad scratch name {tag:?}")));
    }
    let database = format!("tollgate_bench_{tag}");
    let prefix = format!("tollgate-bench-{tag}:");
    // Both services are reached before anything is created, so a failure
    // here leaves nothing behind.
    let mut redis = RedisProbe::connect(&cfg.redis).await?;
    let pg = PgAdmin::connect(&cfg.postgres).await?;
    pg.execute(&format!("CREATE DATABASE {database}")).await?;
    let scratch = Scratch {
        database: database.clone(),
        database_url: format!("{}/{database}", cfg.postgres),
        redis_url: cfg.redis.clone(),
        redis_key_prefix: prefix.clone(),
    };
    let result = f(scratch).await;
    let dropped = pg
        .execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .await;
    let deleted = redis.delete_prefix(&prefix).await;
    pg.0.close().await;
    let value = match result {
        Ok(v) => v,
        Err(e) => {
            if let Err(d) = &dropped {
                eprintln!("scaleout: could not drop database {database}: {d}");
            }
            if let Err(d) = &deleted {
                eprintln!("scaleout: could not delete Redis keys {prefix}*: {d}");
            }
            return Err(e);
        }
    };
    dropped?;
    Ok((
        value,
        Cleanup {
            database_dropped: true,
            redis_keys_deleted: deleted?,
        },
    ))
}

/// One running replica.
struct Replica {
    proc: Proc,
    /// Whole and streamed targets through it.
    through: [Arc<Target>; 2],
}

/// What the replicas share.
struct Fleet<'a> {
    cfg: &'a BenchConfig,
    dir: &'a Path,
    env: Vec<(&'static str, String)>,
    replicas: Vec<Replica>,
}

/// Generous: a debug build migrating a fresh database takes seconds.
const READY_WITHIN: Duration = Duration::from_secs(90);

impl Fleet<'_> {
    /// A replica's own data directory (the `serve.lock` is per directory;
    /// everything else is in PostgreSQL).
    fn data_dir(&self, n: usize) -> Result<PathBuf, BenchError> {
        let d = self.dir.join(format!("replica-{n}"));
        std::fs::create_dir_all(&d).map_err(BenchError::TempDir)?;
        Ok(d)
    }

    /// Starts replica number `replicas.len() + 1` and waits until it listens.
    async fn start_one(&mut self) -> Result<(Proc, String), BenchError> {
        let n = self.replicas.len() + 1;
        let data = self.data_dir(n)?;
        let port = procs::free_port()?;
        let mut p = Proc::spawn(
            &format!("tollgate replica {n}"),
            &self.cfg.tollgate_bin,
            &[
                "serve".into(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--data-dir".into(),
                data.display().to_string(),
            ],
            &self.env,
            self.cfg.pinning.as_ref().map(|p| p.tollgate.as_str()),
            &self.dir.join(format!("replica-{n}.log")),
        )?;
        p.wait_ready(port, READY_WITHIN).await?;
        Ok((p, format!("http://127.0.0.1:{port}")))
    }
}

/// The CPU readings around a through step.
struct Reading {
    replicas: Vec<(f64, f64)>,
    ours: f64,
    pg_backends: BTreeMap<u32, f64>,
    pg_all: BTreeMap<u32, f64>,
    redis: RedisInfo,
    machine: procfs::MachineCpu,
}

async fn read(
    fleet: &Fleet<'_>,
    mock: &Proc,
    pg: &PgAdmin,
    database: &str,
    redis: &mut RedisProbe,
) -> Result<Reading, BenchError> {
    let replicas = fleet
        .replicas
        .iter()
        .map(|r| procfs::cpu_split(r.proc.pid()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Reading {
        replicas,
        ours: procfs::cpu_seconds(mock.pid())? + procfs::cpu_seconds(std::process::id())?,
        pg_backends: procfs::cpu_of(pg.backends(database).await?),
        pg_all: procfs::cpu_of_named("postgres")?,
        redis: redis.info().await?,
        machine: procfs::machine_cpu()?,
    })
}

/// Requests of a step's `total` that request-in-turn sends to replica `k` of `n`.
fn share(total: u64, n: usize, k: usize) -> u64 {
    let (n, k) = (n as u64, k as u64);
    total / n + u64::from(k < total % n)
}

/// CPU milliseconds per 1,000 requests.
pub(crate) fn per_1000(cpu_s: f64, requests: u64) -> f64 {
    cpu_s * 1e6 / requests.max(1) as f64
}

struct Probes<'a> {
    mock: &'a Proc,
    pg: &'a PgAdmin,
    database: &'a str,
    redis: &'a mut RedisProbe,
}

/// Direct, then through every running replica, at one rate and mode.
async fn step(
    client: &HttpClient,
    fleet: &Fleet<'_>,
    direct: &[Arc<Target>; 2],
    p: &mut Probes<'_>,
    rate: f64,
    mode: Mode,
) -> Result<ScaleoutStep, BenchError> {
    let cfg = fleet.cfg;
    let pl = plan(cfg, rate, mode, cfg.duration, cfg.warmup);
    let direct = load::run(client, direct[mode_index(mode)].clone(), &pl).await?;
    tokio::time::sleep(cfg.cooldown).await;
    let redis_floor = p.redis.two_round_trips(&pl).await?;
    tokio::time::sleep(cfg.cooldown).await;
    let targets: Vec<Arc<Target>> = fleet
        .replicas
        .iter()
        .map(|r| r.through[mode_index(mode)].clone())
        .collect();
    let r0 = read(fleet, p.mock, p.pg, p.database, p.redis).await?;
    let through = load::run_spread(client, &targets, &pl).await?;
    let r1 = read(fleet, p.mock, p.pg, p.database, p.redis).await?;
    let mut rss = Vec::with_capacity(fleet.replicas.len());
    for r in &fleet.replicas {
        rss.push(procfs::memory(r.proc.pid())?.hwm_kib as f64 * 1024.0 / 1e6);
    }
    tokio::time::sleep(cfg.cooldown).await;

    let n = fleet.replicas.len();
    let total = through.requests_total;
    let split: Vec<(f64, f64)> = r0
        .replicas
        .iter()
        .zip(&r1.replicas)
        .map(|(a, b)| ((b.0 - a.0).max(0.0), (b.1 - a.1).max(0.0)))
        .collect();
    let replica_cpu_s: Vec<f64> = split.iter().map(|(u, s)| u + s).collect();
    let cpu: f64 = replica_cpu_s.iter().sum();
    let pg_all = procfs::cpu_between(&r0.pg_all, &r1.pg_all);
    let redis_cpu = (r1.redis.cpu_s - r0.redis.cpu_s).max(0.0);
    let redis_calls = calls_between(&r0.redis, &r1.redis);
    let calls: u64 = redis_calls.values().sum();
    let scripts: u64 = redis_calls
        .iter()
        .filter(|(c, _)| is_script_call(c))
        .map(|(_, n)| n)
        .sum();
    let accounted = cpu + (r1.ours - r0.ours) + pg_all + redis_cpu;
    Ok(ScaleoutStep {
        replicas: n,
        rate,
        mode,
        added_ms: Added::of(&through.latency_ms, &direct.latency_ms),
        added_ttfb_ms: match (&through.ttfb_ms, &direct.ttfb_ms) {
            (Some(t), Some(d)) => Some(Added::of(t, d)),
            _ => None,
        },
        requests_total: total,
        cpu_ms_per_1000_requests: per_1000(cpu, total),
        replica_cpu_ms_per_1000_requests: replica_cpu_s
            .iter()
            .enumerate()
            .map(|(k, c)| per_1000(*c, share(total, n, k)))
            .collect(),
        user_cpu_s: split.iter().map(|(u, _)| u).sum(),
        system_cpu_s: split.iter().map(|(_, s)| s).sum(),
        replica_cpu_s,
        replica_peak_rss_mb: rss,
        postgres_backends_cpu_s: procfs::cpu_between(&r0.pg_backends, &r1.pg_backends),
        postgres_all_cpu_s: pg_all,
        postgres_all_cpu_ms_per_1000_requests: per_1000(pg_all, total),
        redis_cpu_s: redis_cpu,
        redis_cpu_ms_per_1000_requests: per_1000(redis_cpu, total),
        redis_calls_per_request: calls as f64 / total.max(1) as f64,
        redis_round_trips_per_request: scripts as f64 / total.max(1) as f64,
        redis_calls,
        other_processes_cpu_s: ((r1.machine.busy_s - r0.machine.busy_s) - accounted).max(0.0),
        cpu_busy_percent: procfs::busy_percent(&r0.machine.per_cpu, &r1.machine.per_cpu),
        direct,
        redis_floor,
        through,
    })
}

/// The scenario: scratch database and prefix, the mock, the replicas, the
/// steps. Stops starting steps at `deadline`.
pub async fn run(
    cfg: &BenchConfig,
    client: &HttpClient,
    deadline: Instant,
    notes: &mut Vec<String>,
) -> Result<ScaleoutReport, BenchError> {
    let dir = tempfile::Builder::new()
        .prefix("tollgate-bench-")
        .tempdir()
        .map_err(BenchError::TempDir)?;
    // The temporary directory's random name names the database and prefix.
    let tag: String = dir
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .trim_start_matches("tollgate-bench-")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase();
    let dir_path = dir.path();
    let ((database, prefix, setup, steps), cleanup) = with_scratch(&cfg.scaleout, &tag, |s| async move {
        let database = s.database.clone();
        let prefix = s.redis_key_prefix.clone();
        let (setup, steps) = measure(cfg, client, dir_path, s, deadline, notes).await?;
        Ok((database, prefix, setup, steps))
    })
    .await?;
    Ok(ScaleoutReport {
        database,
        redis_key_prefix: prefix,
        setup,
        steps,
        cleanup,
    })
}

async fn measure(
    cfg: &BenchConfig,
    client: &HttpClient,
    dir: &Path,
    s: Scratch,
    deadline: Instant,
    notes: &mut Vec<String>,
) -> Result<(Value, Vec<ScaleoutStep>), BenchError> {
    let sc = &cfg.scaleout;
    let env = vec![
        ("TOLLGATE_MASTER_KEY", MASTER_KEY.to_owned()),
        ("TOLLGATE_LOG", "warn".to_owned()),
        ("TOLLGATE_DATABASE_URL", s.database_url.clone()),
        ("TOLLGATE_REDIS_URL", s.redis_url.clone()),
        ("TOLLGATE_REDIS_KEY_PREFIX", s.redis_key_prefix.clone()),
    ];
    let mock_port = procs::free_port()?;
    let mut mock = Proc::spawn(
        "mock upstream (scaleout)",
        &cfg.tollgate_bin,
        &["mock-upstream".into(), "--port".into(), mock_port.to_string()],
        &env,
        cfg.pinning.as_ref().map(|p| p.mock.as_str()),
        &dir.join("mock.log"),
    )?;
    mock.wait_ready(mock_port, READY_WITHIN).await?;
    let mock_base = format!("http://127.0.0.1:{mock_port}/v1");
    let mut fleet = Fleet {
        cfg,
        dir,
        env,
        replicas: Vec::new(),
    };
    // The admin key goes into the database before the first replica starts.
    let admin_dir = fleet.data_dir(0)?;
    let admin_key = procs::output(
        "tollgate admin-key create (PostgreSQL)",
        &cfg.tollgate_bin,
        &[
            "admin-key".into(),
            "create".into(),
            "--data-dir".into(),
            admin_dir.display().to_string(),
        ],
        &fleet.env,
    )?;
    let (first, first_url) = fleet.start_one().await?;
    let gov = govern(client, &first_url, &admin_key, &mock_base, Some(KEY_RPM)).await?;
    fleet.replicas.push(Replica {
        proc: first,
        through: through_targets(&first_url, &gov.key)?,
    });
    let mut sanity_responses = vec![sanity(client, &fleet.replicas[0].through[0], &gov.key).await?];
    let direct = direct_targets(&mock_base)?;
    let pg = PgAdmin::connect(&sc.postgres).await?;
    let mut redis = RedisProbe::connect(&s.redis_url).await?;
    let mut steps = Vec::new();
    // PostgreSQL and Redis off the replicas' core for the steps, if asked:
    // given their CPUs back when this returns, also on an error.
    let pinned = match &sc.pin_services {
        Some(cpus) => Some((PinnedServices::pin(SERVICES, cpus)?, cpus)),
        None => None,
    };
    'counts: for &count in &sc.replicas {
        while fleet.replicas.len() < count {
            let (p, url) = fleet.start_one().await?;
            let through = through_targets(&url, &gov.key)?;
            sanity_responses.push(sanity(client, &through[0], &gov.key).await?);
            fleet.replicas.push(Replica { proc: p, through });
        }
        for &rate in &sc.rates {
            for &mode in &cfg.modes {
                let what = format!("scaleout {count} replica(s), {rate} req/s {}", mode.name());
                if !cfg.fits(3, deadline, what, notes) {
                    break 'counts;
                }
                let mut probes = Probes {
                    mock: &mock,
                    pg: &pg,
                    database: &s.database,
                    redis: &mut redis,
                };
                let st = step(client, &fleet, &direct, &mut probes, rate, mode).await?;
                eprintln!("{}", crate::report::scaleout_line(&st));
                steps.push(st);
            }
        }
    }
    pg.0.close().await;
    let mut setup = gov.setup;
    setup["services_pinned"] = match &pinned {
        Some((p, cpus)) => json!({"services": SERVICES, "cpus": cpus, "threads": p.threads()}),
        None => json!("no: the scheduler places PostgreSQL and Redis (--pin-services CPUS pins them)"),
    };
    drop(pinned);
    setup["sanity_responses"] = json!(sanity_responses);
    setup["request_log"] = json!("on (PostgreSQL, the scratch database)");
    setup["counters"] = json!("Redis (TOLLGATE_REDIS_URL, a key prefix of the run's own)");
    setup["tollgate_log_level"] = json!("warn (TOLLGATE_LOG)");
    setup["spread"] = json!("request i goes to replica i mod n (no load balancer)");
    // The replicas stop (and drain their request logs) before the scratch
    // database is dropped.
    drop(fleet);
    drop(mock);
    Ok((setup, steps))
}

/// The target against this run: added p99 at 1,000 req/s, for each
/// replica count and mode run, and no errors. A step with errors misses
/// its latency target whatever its percentiles say (they cover only the
/// answered requests, and none at all when every request failed).
pub fn targets(r: &ScaleoutReport, cfg: &ScaleoutConfig, modes: &[Mode]) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    for &n in &cfg.replicas {
        for &mode in modes {
            let step = r
                .steps
                .iter()
                .find(|s| s.replicas == n && s.rate == TARGET_RATE && s.mode == mode);
            let errors = step.map_or(0, |s| s.through.errors);
            let mut c = check(
                format!(
                    "scaleout, {n} replica(s) on PostgreSQL + Redis: added p99 at {TARGET_RATE:.0} req/s ({})",
                    mode.name()
                ),
                format!("<= {ADDED_P99_LIMIT_MS} ms, no errors"),
                step.map(|s| s.added_ms.p99),
                |v| v <= ADDED_P99_LIMIT_MS && errors == 0,
            );
            if errors > 0 {
                c.name = format!("{} ({errors} errors)", c.name);
            }
            out.push(c);
        }
    }
    out.push(check(
        "errors through the replicas (scaleout steps)".into(),
        "0".into(),
        (!r.steps.is_empty()).then(|| r.steps.iter().map(|s| s.through.errors as f64).sum()),
        |v| v == 0.0,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_text_is_read() {
        let text = "# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.25\r\nused_cpu_sys_children:9\r\n\r\n# Commandstats\r\ncmdstat_evalsha:calls=10,usec=5,usec_per_call=0.5\r\ncmdstat_info:calls=3,usec=1\r\ncmdstat_odd:usec=1\r\nnonsense\r\n";
        let i = parse_info(text);
        assert_eq!(i.cpu_s, 3.75);
        assert_eq!(
            i.calls,
            BTreeMap::from([("evalsha".to_owned(), 10), ("info".to_owned(), 3)])
        );
        let later =
            parse_info("cmdstat_evalsha:calls=30\ncmdstat_info:calls=9\ncmdstat_get:calls=2\ncmdstat_ping:calls=0\n");
        // Of the 6 `INFO`s, one was the first reading: 5 came from scripts.
        assert_eq!(
            calls_between(&i, &later),
            BTreeMap::from([
                ("evalsha".to_owned(), 20),
                ("get".to_owned(), 2),
                ("info".to_owned(), 5)
            ])
        );
        let only_the_probe = parse_info("cmdstat_evalsha:calls=10\ncmdstat_info:calls=4\n");
        assert_eq!(calls_between(&i, &only_the_probe), BTreeMap::new());
        assert!(is_script_call("evalsha") && is_script_call("eval"));
        assert!(!is_script_call("hget") && !is_script_call("get"));
    }

    #[test]
    fn requests_in_turn_are_shared_out() {
        assert_eq!((0..3).map(|k| share(50, 3, k)).collect::<Vec<_>>(), vec![17, 17, 16]);
        assert_eq!(share(7, 1, 0), 7);
        assert_eq!(per_1000(0.5, 1000), 500.0);
        assert_eq!(per_1000(0.5, 0), 500_000.0);
    }

    fn stats(errors: u64, p99: f64) -> StepStats {
        let lat = crate::load::Percentiles {
            p99,
            ..Default::default()
        };
        StepStats {
            mode: Mode::Whole,
            target_rps: TARGET_RATE,
            duration_s: 1.0,
            requests: 1000,
            requests_total: 1000,
            ok: 1000 - errors,
            errors,
            error_kinds: BTreeMap::new(),
            success_rate: 1.0,
            sent_rps: TARGET_RATE,
            achieved_rps: TARGET_RATE,
            latency_ms: lat,
            ttfb_ms: None,
            send_lag_ms: lat,
            max_in_flight: 1,
        }
    }

    fn step_with(errors: u64, added_p99: f64) -> ScaleoutStep {
        let (through, direct) = (stats(errors, 1.0 + added_p99), stats(0, 1.0));
        ScaleoutStep {
            replicas: 1,
            rate: TARGET_RATE,
            mode: Mode::Whole,
            added_ms: Added::of(&through.latency_ms, &direct.latency_ms),
            added_ttfb_ms: None,
            redis_floor: stats(0, 0.2),
            direct,
            through,
            requests_total: 1000,
            replica_cpu_s: vec![0.1],
            cpu_ms_per_1000_requests: 100.0,
            replica_cpu_ms_per_1000_requests: vec![100.0],
            user_cpu_s: 0.05,
            system_cpu_s: 0.05,
            replica_peak_rss_mb: vec![20.0],
            postgres_backends_cpu_s: 0.0,
            postgres_all_cpu_s: 0.0,
            postgres_all_cpu_ms_per_1000_requests: 0.0,
            redis_cpu_s: 0.0,
            redis_cpu_ms_per_1000_requests: 0.0,
            redis_calls: BTreeMap::new(),
            redis_calls_per_request: 0.0,
            redis_round_trips_per_request: 0.0,
            other_processes_cpu_s: 0.0,
            cpu_busy_percent: vec![40.0, 50.0],
        }
    }

    #[test]
    fn the_target_needs_low_added_p99_and_no_errors() {
        let verdict = |steps: Vec<ScaleoutStep>| {
            let r = ScaleoutReport {
                database: "d".into(),
                redis_key_prefix: "p:".into(),
                setup: Value::Null,
                steps,
                cleanup: Cleanup {
                    database_dropped: true,
                    redis_keys_deleted: 0,
                },
            };
            let t = targets(&r, &config(), &[Mode::Whole]);
            (t[0].met, t[1].met)
        };
        assert_eq!(verdict(vec![step_with(0, 1.0)]), (Some(true), Some(true)));
        assert_eq!(verdict(vec![step_with(0, 2.0)]), (Some(false), Some(true)));
        // Every request failed: the percentiles are empty (0), so the added
        // latency is negative, and still the target is missed.
        assert_eq!(verdict(vec![step_with(1000, -1.0)]), (Some(false), Some(false)));
        assert_eq!(verdict(vec![]), (None, None));
    }

    fn config() -> ScaleoutConfig {
        ScaleoutConfig {
            rates: vec![10.0],
            replicas: vec![1],
            postgres: tollgate_postgres(),
            redis: "redis://127.0.0.1:6379".into(),
            pin_services: None,
        }
    }

    fn tollgate_postgres() -> String {
        std::env::var("TOLLGATE_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
    }

    async fn database_exists(name: &str) -> bool {
        let pg = PgAdmin::connect(&tollgate_postgres()).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(name)
            .fetch_one(&pg.0)
            .await
            .unwrap();
        n > 0
    }

    async fn keys(prefix: &str) -> Vec<String> {
        let mut r = RedisProbe::connect("redis://127.0.0.1:6379").await.unwrap();
        redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut r.0)
            .await
            .unwrap()
    }

    /// Writes a table into the scratch database and two keys under the prefix.
    async fn use_scratch(s: &Scratch) {
        let pool = PgPool::connect(&s.database_url).await.unwrap();
        sqlx::query("CREATE TABLE t (x INT)").execute(&pool).await.unwrap();
        // Left open on purpose: the drop must close it.
        std::mem::forget(pool);
        let mut r = RedisProbe::connect(&s.redis_url).await.unwrap();
        for k in ["a", "{ws:1}:b"] {
            let () = redis::cmd("SET")
                .arg(format!("{}{k}", s.redis_key_prefix))
                .arg(1)
                .query_async(&mut r.0)
                .await
                .unwrap();
        }
    }

    fn unique_tag(what: &str) -> String {
        format!(
            "test_{what}_{}_{}",
            std::process::id(),
            chrono::Utc::now().timestamp_micros()
        )
    }

    #[tokio::test]
    async fn scratch_is_cleaned_up_after_success() {
        let tag = unique_tag("ok");
        let (name, cleanup) = with_scratch(&config(), &tag, |s| async move {
            use_scratch(&s).await;
            assert!(database_exists(&s.database).await);
            assert_eq!(keys(&s.redis_key_prefix).await.len(), 2);
            Ok((s.database, s.redis_key_prefix))
        })
        .await
        .unwrap();
        assert!(!database_exists(&name.0).await);
        assert!(keys(&name.1).await.is_empty());
        assert!(cleanup.database_dropped);
        assert_eq!(cleanup.redis_keys_deleted, 2);
    }

    #[tokio::test]
    async fn scratch_is_cleaned_up_after_failure() {
        let tag = unique_tag("fail");
        let mut seen = None;
        let e = with_scratch(&config(), &tag, |s| {
            seen = Some((s.database.clone(), s.redis_key_prefix.clone()));
            async move {
                use_scratch(&s).await;
                Err::<(), _>(BenchError::Sanity("the scenario failed".into()))
            }
        })
        .await
        .unwrap_err();
        assert!(
            matches!(e, BenchError::Sanity(ref m) if m == "the scenario failed"),
            "{e}"
        );
        let (db, prefix) = seen.unwrap();
        assert!(!database_exists(&db).await);
        assert!(keys(&prefix).await.is_empty());
    }

    #[tokio::test]
    async fn unreachable_services_and_bad_names_are_errors() {
        let port = procs::free_port().unwrap();
        let mut c = config();
        c.redis = format!("redis://127.0.0.1:{port}");
        let e = with_scratch(&c, "x", |_| async { Ok(()) }).await.unwrap_err();
        assert!(matches!(e, BenchError::Redis(_)), "{e}");
        let mut c = config();
        c.postgres = format!("postgres://postgres@127.0.0.1:{port}");
        let e = with_scratch(&c, "x", |_| async { Ok(()) }).await.unwrap_err();
        assert!(matches!(e, BenchError::Postgres(_)), "{e}");
        for bad in ["", "Upper", "semi;colon"] {
            let e = with_scratch(&config(), bad, |_| async { Ok(()) }).await.unwrap_err();
            assert!(matches!(e, BenchError::Sanity(_)), "{bad}: {e}");
        }
    }
}
