//! Prometheus metrics (`GET /metrics`), recorded once per request from its
//! log record.
//!
//! Series (labels `workspace`, `provider`, `model`, `status` unless noted):
//! - `tollgate_requests_total`
//! - `tollgate_request_duration_seconds` (histogram)
//! - `tollgate_tokens_total{type=prompt|completion|cached}` (no `status`)
//! - `tollgate_cost_microdollars_total` (no `status`)
//! - `tollgate_time_to_first_token_seconds` (histogram, streams; no `status`)
//! - `tollgate_gateway_overhead_seconds` (histogram: latency minus upstream
//!   latency; no `status`)
//! - `tollgate_refused_total{workspace, reason}` (rate_limit, budget, policy,
//!   auth, permission)
//! - `tollgate_streamed_total`, `tollgate_cancelled_total` (`workspace` only)
//!
//! Cardinality is bounded, and a label only takes values the control plane
//! knows: a model is named only if the snapshot knows it for the request's
//! provider (a model entry of the integration, a catalogue model of its
//! provider, or the workspace's model grant), else it is `other`; no value
//! is longer than [`MAX_LABEL_LEN`] bytes (a longer model is `other`, a
//! longer workspace or provider slug is cut); at most [`MAX_VALUES`]
//! distinct values of each label are kept, later ones are reported as
//! `other`; status codes outside 100–599 are reported as `other`.
//!
//! `record` is cheap: label values are interned once, and the metric handles
//! of each label combination are created once and then found with one read
//! lock and one hash lookup, without allocating.

use foldhash::{HashMap, HashMapExt};
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use parking_lot::RwLock;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tollgate_store::request_log::LogRecord;

use crate::snapshot::Snapshot;

/// Distinct values kept per label.
pub const MAX_VALUES: usize = 200;
/// The longest label value, in bytes.
pub const MAX_LABEL_LEN: usize = 128;

/// `v` cut to [`MAX_LABEL_LEN`] bytes at a character boundary.
fn capped(v: &str) -> &str {
    if v.len() <= MAX_LABEL_LEN {
        return v;
    }
    let mut cut = MAX_LABEL_LEN;
    while !v.is_char_boundary(cut) {
        cut -= 1;
    }
    &v[..cut]
}

/// The `model` label of a request: the model if `snap` knows it for the
/// request's workspace and provider, else `other`.
fn model_label<'a>(snap: &Snapshot, r: &'a LogRecord) -> &'a str {
    let Some(model) = r.model.as_deref() else {
        return "none";
    };
    let known = model.len() <= MAX_LABEL_LEN
        && match (r.workspace_id.as_deref(), r.provider_slug.as_deref()) {
            (Some(ws), Some(slug)) => snap.is_known_model(ws, slug, model),
            _ => false,
        };
    if known {
        model
    } else {
        "other"
    }
}

/// Installs the global recorder once and returns its handle.
pub fn install() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ])
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}

/// Interned values of one label.
struct Bounded(RwLock<HashSet<Arc<str>>>);

impl Bounded {
    fn get(&self, v: &str) -> Arc<str> {
        if let Some(a) = self.0.read().get(v) {
            return a.clone();
        }
        let mut w = self.0.write();
        if let Some(a) = w.get(v) {
            return a.clone();
        }
        if w.len() < MAX_VALUES {
            let a: Arc<str> = Arc::from(v);
            w.insert(a.clone());
            a
        } else {
            other()
        }
    }
}

fn other() -> Arc<str> {
    static OTHER: OnceLock<Arc<str>> = OnceLock::new();
    OTHER.get_or_init(|| Arc::from("other")).clone()
}

/// The handles of one (workspace, provider, model, status) combination.
struct Series {
    requests: Counter,
    duration: Histogram,
    prompt: Counter,
    completion: Counter,
    cached: Counter,
    cost_micros: Counter,
    /// Picodollars recorded so far, so that whole microdollars are added to
    /// the counter without losing the sub-microdollar remainders.
    cost_picos: AtomicU64,
    ttft: Histogram,
    overhead: Histogram,
    streamed: Counter,
    cancelled: Counter,
    refused: [Counter; 5],
}

const REASONS: [&str; 5] = ["rate_limit", "budget", "policy", "auth", "permission"];

impl Series {
    fn new(ws: &Arc<str>, provider: &Arc<str>, model: &Arc<str>, status: &str) -> Series {
        let s = |v: &Arc<str>| v.to_string();
        let base = [("workspace", s(ws)), ("provider", s(provider)), ("model", s(model))];
        let with = |k: &'static str, v: &str| {
            let mut l = base.to_vec();
            l.push((k, v.to_owned()));
            l
        };
        let ws_only = [("workspace", s(ws))];
        Series {
            requests: metrics::counter!("tollgate_requests_total", &with("status", status)),
            duration: metrics::histogram!("tollgate_request_duration_seconds", &with("status", status)),
            prompt: metrics::counter!("tollgate_tokens_total", &with("type", "prompt")),
            completion: metrics::counter!("tollgate_tokens_total", &with("type", "completion")),
            cached: metrics::counter!("tollgate_tokens_total", &with("type", "cached")),
            cost_micros: metrics::counter!("tollgate_cost_microdollars_total", &base),
            cost_picos: AtomicU64::new(0),
            ttft: metrics::histogram!("tollgate_time_to_first_token_seconds", &base),
            overhead: metrics::histogram!("tollgate_gateway_overhead_seconds", &base),
            streamed: metrics::counter!("tollgate_streamed_total", &ws_only),
            cancelled: metrics::counter!("tollgate_cancelled_total", &ws_only),
            refused: REASONS.map(|r| {
                metrics::counter!(
                    "tollgate_refused_total",
                    &[("workspace", s(ws)), ("reason", r.to_owned())]
                )
            }),
        }
    }
}

/// (workspace, provider, model) interned addresses and the status code.
type SeriesKey = (usize, usize, usize, u16);

struct Registry {
    workspaces: Bounded,
    providers: Bounded,
    models: Bounded,
    /// Keyed by the interned values' addresses (stable: interned values are
    /// never dropped) and the status code.
    series: RwLock<HashMap<SeriesKey, Arc<Series>>>,
}

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| Registry {
        workspaces: Bounded(RwLock::new(HashSet::new())),
        providers: Bounded(RwLock::new(HashSet::new())),
        models: Bounded(RwLock::new(HashSet::new())),
        series: RwLock::new(HashMap::new()),
    })
}

fn addr(a: &Arc<str>) -> usize {
    Arc::as_ptr(a) as *const u8 as usize
}

/// The handles of a request's label combination, created on first use.
fn series(snap: &Snapshot, r: &LogRecord) -> Arc<Series> {
    let reg = registry();
    let ws = reg.workspaces.get(capped(r.workspace_id.as_deref().unwrap_or("none")));
    let provider = reg.providers.get(capped(r.provider_slug.as_deref().unwrap_or("none")));
    let model = reg.models.get(model_label(snap, r));
    let status = if (100..600).contains(&r.status_code) {
        r.status_code
    } else {
        0
    };
    let key = (addr(&ws), addr(&provider), addr(&model), status);
    if let Some(s) = reg.series.read().get(&key) {
        return s.clone();
    }
    let label = if status == 0 {
        "other".to_owned()
    } else {
        status.to_string()
    };
    reg.series
        .write()
        .entry(key)
        .or_insert_with(|| Arc::new(Series::new(&ws, &provider, &model, &label)))
        .clone()
}

/// Records one request's series; `snap` decides which label values are
/// known.
pub fn record(snap: &Snapshot, r: &LogRecord) {
    let s = series(snap, r);
    s.requests.increment(1);
    s.duration.record(r.latency_us as f64 / 1e6);
    if r.prompt_tokens > 0 {
        s.prompt.increment(r.prompt_tokens);
    }
    if r.completion_tokens > 0 {
        s.completion.increment(r.completion_tokens);
    }
    if r.cached_tokens > 0 {
        s.cached.increment(r.cached_tokens);
    }
    if let Some(c) = r.cost_picos.filter(|c| *c > 0) {
        let c = c as u64;
        let before = s.cost_picos.fetch_add(c, Ordering::Relaxed);
        let whole = (before + c) / 1_000_000 - before / 1_000_000;
        if whole > 0 {
            s.cost_micros.increment(whole);
        }
    }
    if let Some(t) = r.ttft_us {
        s.ttft.record(t as f64 / 1e6);
    }
    if let Some(u) = r.upstream_latency_us {
        s.overhead.record(r.latency_us.saturating_sub(u) as f64 / 1e6);
    }
    if r.streamed {
        s.streamed.increment(1);
    }
    if r.cancelled {
        s.cancelled.increment(1);
    }
    if let Some(i) = r
        .refusal
        .as_deref()
        .and_then(|why| REASONS.iter().position(|x| *x == why))
    {
        s.refused[i].increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded_and_interned() {
        let b = Bounded(RwLock::new(HashSet::new()));
        let first = b.get("a");
        assert!(Arc::ptr_eq(&first, &b.get("a")), "the same value is interned once");
        for i in 0..MAX_VALUES * 2 {
            b.get(&format!("v{i}"));
        }
        assert_eq!(&*b.get("new-after-the-cap"), "other");
        assert_eq!(b.0.read().len(), MAX_VALUES);
    }

    #[test]
    fn unknown_or_long_models_are_other_and_values_are_capped() {
        let snap = Snapshot::default();
        let mut r = LogRecord {
            workspace_id: Some("w".repeat(1000)),
            provider_slug: Some("p".into()),
            model: Some("gpt-4o".into()),
            ..Default::default()
        };
        assert_eq!(model_label(&snap, &r), "other", "no route in the snapshot: unknown");
        r.model = Some("m".repeat(MAX_LABEL_LEN + 1));
        assert_eq!(model_label(&snap, &r), "other");
        r.model = None;
        assert_eq!(model_label(&snap, &r), "none");
        assert_eq!(capped(r.workspace_id.as_deref().unwrap()).len(), MAX_LABEL_LEN);
        let multibyte = "é".repeat(MAX_LABEL_LEN);
        assert!(capped(&multibyte).len() <= MAX_LABEL_LEN);
    }

    #[test]
    fn cost_remainders_are_not_lost() {
        let handle = install();
        let r = LogRecord {
            workspace_id: Some("ws-metrics-test".into()),
            cost_picos: Some(400_000), // 0.4 microdollars
            status_code: 200,
            ..Default::default()
        };
        for _ in 0..5 {
            record(&Snapshot::default(), &r);
        }
        // 5 × 0.4 = 2 whole microdollars.
        let text = handle.map(|h| h.render()).unwrap_or_default();
        let line = text
            .lines()
            .find(|l| l.starts_with("tollgate_cost_microdollars_total") && l.contains("ws-metrics-test"))
            .unwrap_or_default()
            .to_owned();
        assert!(line.ends_with(" 2"), "{line}");
    }
}
