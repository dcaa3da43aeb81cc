//! The open-loop generator: one step of fixed-rate load against one target
//! (or several in turn, or any operation: [`run_op`]).
//!
//! Requests are sent on a schedule (request `i` is due at `start + i / rate`),
//! whatever happened to the earlier ones, and each request's latency is
//! measured from the time it was *due*, not from when it actually left. A
//! server that stalls therefore shows the stall in every request scheduled
//! during it (no coordinated omission). The schedule is kept by a dedicated OS
//! thread, because tokio's timer has a 1 ms resolution, which at 5,000 req/s
//! would batch five requests per tick and add up to 1 ms of fake latency.
//!
//! Concurrency is bounded by a semaphore: a request that finds every slot
//! taken waits for one, and that wait counts in its latency. Every request is
//! bounded by a timeout counted from its due time, so a step always ends.

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// The HTTP client every step uses: HTTP/1.1, keep-alive, no Nagle.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Highest latency the histograms hold (beyond it values are clamped).
const HIST_MAX_US: u64 = 120_000_000;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("rate must be positive and finite, got {0}")]
    BadRate(f64),
    #[error("concurrency must be at least 1")]
    BadConcurrency,
    #[error("histogram: {0}")]
    Histogram(String),
    #[error("the dispatcher thread failed: {0}")]
    Dispatcher(String),
    #[error("no target to send to")]
    NoTargets,
}

/// Whole answers, or server-sent events read to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Whole,
    Stream,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Whole => "whole",
            Mode::Stream => "stream",
        }
    }
}

/// What to send: always a POST with a fixed body.
#[derive(Debug, Clone)]
pub struct Target {
    pub uri: Uri,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// The status that counts as an answer (`None`: any 2xx). Set to time a
    /// request that is meant to fail, e.g. an upstream answering 503.
    pub expect_status: Option<u16>,
}

/// One step: how fast, how long, and the bounds.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Requests per second.
    pub rate: f64,
    /// Measured part of the step.
    pub duration: Duration,
    /// Sent on the same schedule before `duration`, not measured.
    pub warmup: Duration,
    /// Most requests in flight at once.
    pub concurrency: usize,
    /// Per request, counted from its due time.
    pub timeout: Duration,
    pub mode: Mode,
    /// When the first request is due (`None`: a few milliseconds from now).
    /// Steps run at the same time are given starts a fraction of an interval
    /// apart, so that their requests take turns instead of arriving together.
    pub start: Option<Instant>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// The outcome of one step (measured requests only).
#[derive(Debug, Clone, Serialize)]
pub struct StepStats {
    pub mode: Mode,
    pub target_rps: f64,
    pub duration_s: f64,
    /// Requests due in the measured window.
    pub requests: u64,
    /// Requests sent in the whole step, warm-up included.
    pub requests_total: u64,
    pub ok: u64,
    pub errors: u64,
    /// Errors by kind (`status_429`, `timeout`, `connect`, ...).
    pub error_kinds: BTreeMap<String, u64>,
    pub success_rate: f64,
    /// Requests actually sent per second over the measured window.
    pub sent_rps: f64,
    /// Successful answers per second, from the window's start to the last answer.
    pub achieved_rps: f64,
    /// From due time to the complete answer.
    pub latency_ms: Percentiles,
    /// From due time to the first body byte (streams only).
    pub ttfb_ms: Option<Percentiles>,
    /// How late requests left against their schedule (generator health).
    pub send_lag_ms: Percentiles,
    pub max_in_flight: u64,
}

/// A client tuned for a load generator: a pool as large as the concurrency.
pub fn client(concurrency: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_keepalive(Some(Duration::from_secs(30)));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

struct Collector {
    latency: Histogram<u64>,
    ttfb: Histogram<u64>,
    lag: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    last_done: Option<Instant>,
}

impl Collector {
    fn new() -> Result<Collector, LoadError> {
        let h = || Histogram::new_with_bounds(1, HIST_MAX_US, 3).map_err(|e| LoadError::Histogram(e.to_string()));
        Ok(Collector {
            latency: h()?,
            ttfb: h()?,
            lag: h()?,
            ok: 0,
            errors: BTreeMap::new(),
            last_done: None,
        })
    }
}

/// What one request came to.
struct Outcome {
    sent: Instant,
    first_byte: Option<Instant>,
    done: Instant,
    result: Result<(), String>,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).clamp(1, HIST_MAX_US)
}

/// Runs one step and returns its statistics.
pub async fn run(client: &HttpClient, target: Arc<Target>, plan: &Plan) -> Result<StepStats, LoadError> {
    run_spread(client, &[target], plan).await
}

/// Runs one step whose requests go to `targets` in turn (request `i` to
/// `targets[i % n]`), e.g. several replicas behind no load balancer; the
/// statistics cover them all.
pub async fn run_spread(client: &HttpClient, targets: &[Arc<Target>], plan: &Plan) -> Result<StepStats, LoadError> {
    if targets.is_empty() {
        return Err(LoadError::NoTargets);
    }
    let (client, targets, mode) = (client.clone(), targets.to_vec(), plan.mode);
    run_op(plan, move |i| {
        // `i % len` < len, so the index is in range.
        let target = targets[(i % targets.len() as u64) as usize].clone();
        let client = client.clone();
        async move { exchange(&client, &target, mode).await }
    })
    .await
}

/// Runs one step of any operation on the open-loop schedule of `plan`:
/// `op(i)` is the `i`-th request, and answers when its first byte came (if
/// that means anything) and whether it succeeded (else an error kind).
/// Latency is measured from each request's due time, as for HTTP.
pub async fn run_op<F, Fut>(plan: &Plan, op: F) -> Result<StepStats, LoadError>
where
    F: Fn(u64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = (Option<Instant>, Result<(), String>)> + Send + 'static,
{
    if !(plan.rate.is_finite() && plan.rate > 0.0) {
        return Err(LoadError::BadRate(plan.rate));
    }
    if plan.concurrency == 0 {
        return Err(LoadError::BadConcurrency);
    }
    let total = ((plan.warmup + plan.duration).as_secs_f64() * plan.rate).round() as u64;
    let warm = (plan.warmup.as_secs_f64() * plan.rate).round() as u64;
    let interval_ns = 1e9 / plan.rate;
    let collector = Arc::new(Mutex::new(Collector::new()?));
    let slots = Arc::new(Semaphore::new(plan.concurrency));
    let in_flight = Arc::new(AtomicU64::new(0));
    let max_in_flight = Arc::new(AtomicU64::new(0));
    // A little slack so the first due times are not already past.
    let start = plan.start.unwrap_or_else(|| Instant::now() + Duration::from_millis(5));
    let measured_from = start + Duration::from_nanos((warm as f64 * interval_ns) as u64);

    let handle = tokio::runtime::Handle::current();
    let (plan_c, col) = (plan.clone(), collector.clone());
    let (inf, maxinf) = (in_flight.clone(), max_in_flight.clone());
    // The dispatcher sleeps until each due time and hands the request to the
    // runtime; it never waits for answers.
    let dispatcher = std::thread::Builder::new()
        .name("loadgen-dispatch".into())
        .spawn(move || {
            let mut handles = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
            for i in 0..total {
                let due = start + Duration::from_nanos((i as f64 * interval_ns) as u64);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let measured = i >= warm;
                let fut = one(op(i), plan_c.timeout, due, slots.clone(), inf.clone(), maxinf.clone());
                let col = col.clone();
                handles.push(handle.spawn(async move {
                    let outcome = fut.await;
                    if measured {
                        record(&col, due, outcome);
                    }
                }));
            }
            handles
        })
        .map_err(|e| LoadError::Dispatcher(e.to_string()))?;
    let handles = tokio::task::spawn_blocking(move || dispatcher.join())
        .await
        .map_err(|e| LoadError::Dispatcher(e.to_string()))?
        .map_err(|_| LoadError::Dispatcher("panicked".into()))?;
    // Every request ends by its due time plus the timeout; this only waits.
    for h in handles {
        let _ = h.await;
    }

    let c = collector
        .lock()
        .map_err(|_| LoadError::Dispatcher("collector poisoned".into()))?;
    let requests = total - warm;
    let errors: u64 = c.errors.values().sum();
    let window = plan.duration.as_secs_f64();
    let achieved_window = c
        .last_done
        .map(|d| d.saturating_duration_since(measured_from).as_secs_f64())
        .unwrap_or(0.0);
    Ok(StepStats {
        mode: plan.mode,
        target_rps: plan.rate,
        duration_s: window,
        requests,
        requests_total: total,
        ok: c.ok,
        errors,
        error_kinds: c.errors.clone(),
        success_rate: if requests == 0 {
            0.0
        } else {
            c.ok as f64 / requests as f64
        },
        sent_rps: if window > 0.0 { c.lag.len() as f64 / window } else { 0.0 },
        achieved_rps: if achieved_window > 0.0 {
            c.ok as f64 / achieved_window.max(window)
        } else {
            0.0
        },
        latency_ms: Percentiles::of(&c.latency),
        ttfb_ms: (plan.mode == Mode::Stream).then(|| Percentiles::of(&c.ttfb)),
        send_lag_ms: Percentiles::of(&c.lag),
        max_in_flight: max_in_flight.load(Ordering::Relaxed),
    })
}

fn record(col: &Mutex<Collector>, due: Instant, o: Option<Outcome>) {
    let Ok(mut c) = col.lock() else { return };
    let Some(o) = o else {
        *c.errors.entry("timeout".into()).or_default() += 1;
        return;
    };
    // Lag is recorded for every request that left, answered or not.
    let _ = c.lag.record(micros(o.sent.saturating_duration_since(due)));
    c.last_done = Some(c.last_done.map_or(o.done, |d| d.max(o.done)));
    match o.result {
        Ok(()) => {
            c.ok += 1;
            let _ = c.latency.record(micros(o.done.saturating_duration_since(due)));
            if let Some(f) = o.first_byte {
                let _ = c.ttfb.record(micros(f.saturating_duration_since(due)));
            }
        }
        Err(kind) => *c.errors.entry(kind).or_default() += 1,
    }
}

/// One request: wait for a slot, then run it (for HTTP: send, read the
/// answer to its end). `None` when the deadline (due + timeout) passed
/// first.
async fn one(
    op: impl std::future::Future<Output = (Option<Instant>, Result<(), String>)>,
    timeout: Duration,
    due: Instant,
    slots: Arc<Semaphore>,
    in_flight: Arc<AtomicU64>,
    max_in_flight: Arc<AtomicU64>,
) -> Option<Outcome> {
    let deadline = tokio::time::Instant::from_std(due + timeout);
    tokio::time::timeout_at(deadline, async move {
        let _slot = slots.acquire_owned().await.ok()?;
        let _counted = InFlight::enter(in_flight, &max_in_flight);
        let sent = Instant::now();
        let (first_byte, result) = op.await;
        Some(Outcome {
            sent,
            first_byte,
            done: Instant::now(),
            result,
        })
    })
    .await
    .ok()
    .flatten()
}

/// Counts a request in flight until dropped, so a timed-out request is
/// uncounted too.
struct InFlight(Arc<AtomicU64>);

impl InFlight {
    fn enter(counter: Arc<AtomicU64>, max: &AtomicU64) -> InFlight {
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        max.fetch_max(n, Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sends the request and reads the whole answer. Success is a 2xx (or the
/// target's `expect_status`) whose body is complete: non-empty for a whole
/// answer, ending in `[DONE]` for a stream.
async fn exchange(client: &HttpClient, target: &Target, mode: Mode) -> (Option<Instant>, Result<(), String>) {
    let mut builder = Request::builder().method(Method::POST).uri(target.uri.clone());
    for (k, v) in &target.headers {
        builder = builder.header(k, v);
    }
    let req = match builder.body(Full::new(target.body.clone())) {
        Ok(r) => r,
        Err(_) => return (None, Err("bad_request".into())),
    };
    let resp = match client.request(req).await {
        Ok(r) => r,
        Err(e) if e.is_connect() => return (None, Err("connect".into())),
        Err(_) => return (None, Err("io".into())),
    };
    let status = resp.status();
    let mut body = resp.into_body();
    let mut first_byte = None;
    let mut len = 0usize;
    // The last few bytes, to see whether a stream ended with `[DONE]`.
    let mut tail: Vec<u8> = Vec::with_capacity(64);
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return (first_byte, Err("body".into()));
        };
        if let Ok(data) = frame.into_data() {
            if data.is_empty() {
                continue;
            }
            first_byte.get_or_insert_with(Instant::now);
            len += data.len();
            tail.extend_from_slice(&data[data.len().saturating_sub(32)..]);
            let cut = tail.len().saturating_sub(32);
            tail.drain(..cut);
        }
    }
    let expected = match target.expect_status {
        Some(s) => status.as_u16() == s,
        None => status.is_success(),
    };
    if !expected {
        return (first_byte, Err(format!("status_{}", status.as_u16())));
    }
    let complete = match mode {
        Mode::Whole => len > 0,
        Mode::Stream => tail.windows(6).any(|w| w == b"[DONE]"),
    };
    if complete {
        (first_byte, Ok(()))
    } else {
        (first_byte, Err("incomplete".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A tiny HTTP/1.1 server answering every request with `answer`, or
    /// never answering when `answer` is `None`.
    async fn server(answer: Option<&'static str>) -> String {
        counting_server(answer).await.0
    }

    /// [`server`], and how many requests it has read.
    async fn counting_server(answer: Option<&'static str>) -> (String, Arc<AtomicU64>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let count = Arc::new(AtomicU64::new(0));
        let counted = count.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else { return };
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // One request: headers, then Content-Length bytes.
                        let head_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        while buf.len() < head_end + len {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.drain(..head_end + len);
                        counted.fetch_add(1, Ordering::Relaxed);
                        let Some(a) = answer else {
                            // Hold the connection open, never answer.
                            let _ = s.read(&mut chunk).await;
                            return;
                        };
                        if s.write_all(a.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (format!("http://{addr}/v1/chat/completions"), count)
    }

    fn target(url: &str) -> Arc<Target> {
        Arc::new(Target {
            uri: url.parse().unwrap(),
            headers: vec![],
            body: Bytes::from_static(b"{}"),
            expect_status: None,
        })
    }

    fn plan(mode: Mode) -> Plan {
        Plan {
            rate: 200.0,
            duration: Duration::from_millis(200),
            warmup: Duration::from_millis(50),
            concurrency: 16,
            timeout: Duration::from_millis(300),
            mode,
            start: None,
        }
    }

    const WHOLE: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
    const STREAM: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 29\r\n\r\ndata: {\"x\":1}\n\ndata: [DONE]\n\n";
    const CUT: &str =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 15\r\n\r\ndata: {\"x\":1}\n\n";
    const REFUSED: &str = "HTTP/1.1 429 Too Many Requests\r\ncontent-length: 2\r\n\r\n{}";

    #[tokio::test]
    async fn whole_answers_are_counted_and_measured() {
        let url = server(Some(WHOLE)).await;
        let s = run(&client(16), target(&url), &plan(Mode::Whole)).await.unwrap();
        assert_eq!(s.requests, 40);
        assert_eq!(s.requests_total, 50);
        assert_eq!((s.ok, s.errors), (40, 0), "{:?}", s.error_kinds);
        assert!(s.latency_ms.max >= s.latency_ms.p50 && s.latency_ms.p50 > 0.0);
        assert!(s.ttfb_ms.is_none());
    }

    #[tokio::test]
    async fn streams_must_end_with_done() {
        let url = server(Some(STREAM)).await;
        let s = run(&client(16), target(&url), &plan(Mode::Stream)).await.unwrap();
        assert_eq!(s.ok, 40, "{:?}", s.error_kinds);
        assert!(s.ttfb_ms.is_some_and(|t| t.p50 > 0.0));
        let url = server(Some(CUT)).await;
        let s = run(&client(16), target(&url), &plan(Mode::Stream)).await.unwrap();
        assert_eq!(s.error_kinds.get("incomplete"), Some(&40));
        assert_eq!(s.success_rate, 0.0);
    }

    #[tokio::test]
    async fn failures_are_classified() {
        let url = server(Some(REFUSED)).await;
        let s = run(&client(16), target(&url), &plan(Mode::Whole)).await.unwrap();
        assert_eq!(s.error_kinds.get("status_429"), Some(&40));
        // A status that is expected counts as an answer and is timed ...
        let mut expecting = (*target(&url)).clone();
        expecting.expect_status = Some(429);
        let s = run(&client(16), Arc::new(expecting.clone()), &plan(Mode::Whole))
            .await
            .unwrap();
        assert_eq!((s.ok, s.errors), (40, 0), "{:?}", s.error_kinds);
        assert!(s.latency_ms.p50 > 0.0);
        // ... and then a 2xx is not.
        let url = server(Some(WHOLE)).await;
        expecting.uri = url.parse().unwrap();
        let s = run(&client(16), Arc::new(expecting), &plan(Mode::Whole)).await.unwrap();
        assert_eq!(s.error_kinds.get("status_200"), Some(&40), "{:?}", s.error_kinds);
        let url = server(None).await;
        let s = run(&client(16), target(&url), &plan(Mode::Whole)).await.unwrap();
        assert_eq!(s.error_kinds.get("timeout"), Some(&40), "{:?}", s.error_kinds);
        // A port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = run(
            &client(16),
            target(&format!("http://127.0.0.1:{port}/")),
            &plan(Mode::Whole),
        )
        .await
        .unwrap();
        assert_eq!(s.error_kinds.get("connect"), Some(&40), "{:?}", s.error_kinds);
    }

    #[tokio::test]
    async fn spread_load_takes_turns_across_targets() {
        let mut urls = Vec::new();
        let mut counts = Vec::new();
        for _ in 0..3 {
            let (u, c) = counting_server(Some(WHOLE)).await;
            urls.push(target(&u));
            counts.push(c);
        }
        let s = run_spread(&client(16), &urls, &plan(Mode::Whole)).await.unwrap();
        assert_eq!((s.ok, s.errors), (40, 0), "{:?}", s.error_kinds);
        // 50 requests in turn over three servers: 17, 17, 16.
        let got: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        assert_eq!(got, vec![17, 17, 16]);
        // One that fails shows in the statistics of the whole step.
        let (bad, _) = counting_server(Some(REFUSED)).await;
        urls[1] = target(&bad);
        let s = run_spread(&client(16), &urls, &plan(Mode::Whole)).await.unwrap();
        assert_eq!(s.ok + s.errors, 40);
        // Measured are requests 10..50; those with i % 3 == 1 went to it.
        assert_eq!(s.error_kinds.get("status_429"), Some(&14), "{:?}", s.error_kinds);
        assert!(matches!(
            run_spread(&client(1), &[], &plan(Mode::Whole)).await,
            Err(LoadError::NoTargets)
        ));
    }

    /// Any operation runs on the schedule: each request is `op(i)` once,
    /// its result counted under its error kind, and one that outlives the
    /// timeout counted as a timeout.
    #[tokio::test]
    async fn any_operation_runs_on_the_schedule() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let s = run_op(&plan(Mode::Whole), move |i| {
            log.lock().unwrap().push(i);
            async move {
                match i % 4 {
                    0 => (None, Err("odd_one".to_owned())),
                    1 => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        (None, Ok(()))
                    }
                    _ => (None, Ok(())),
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            (0..50).collect::<Vec<u64>>(),
            "each request once, in order"
        );
        // 40 measured (the first 10 are the warm-up): 10 of each kind.
        assert_eq!(s.requests, 40);
        assert_eq!(s.ok, 20, "{:?}", s.error_kinds);
        assert_eq!(s.error_kinds.get("odd_one"), Some(&10));
        assert_eq!(s.error_kinds.get("timeout"), Some(&10));
    }

    #[tokio::test]
    async fn bad_plans_are_refused() {
        let t = target("http://127.0.0.1:9/");
        let mut p = plan(Mode::Whole);
        p.rate = 0.0;
        assert!(matches!(
            run(&client(1), t.clone(), &p).await,
            Err(LoadError::BadRate(_))
        ));
        p.rate = f64::NAN;
        assert!(matches!(
            run(&client(1), t.clone(), &p).await,
            Err(LoadError::BadRate(_))
        ));
        let mut p = plan(Mode::Whole);
        p.concurrency = 0;
        assert!(matches!(run(&client(1), t, &p).await, Err(LoadError::BadConcurrency)));
    }
}
