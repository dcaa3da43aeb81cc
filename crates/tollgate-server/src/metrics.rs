//! Prometheus metrics (`GET /metrics`), recorded once per request from its
//! log record. Labels are workspace, provider, model and status; to keep
//! their cardinality bounded, at most [`MAX_VALUES`] distinct values of each
//! label are kept and later ones are reported as `other`.

use metrics::{counter, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use parking_lot::RwLock;
use std::collections::HashSet;
use std::sync::OnceLock;
use tollgate_store::usage::UsageRecord;

/// Distinct values kept per label.
pub const MAX_VALUES: usize = 200;

/// Installs the global recorder once and returns its handle.
pub fn install() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}

struct Bounded(RwLock<HashSet<String>>);

impl Bounded {
    fn get(&self, v: &str) -> String {
        if self.0.read().contains(v) {
            return v.to_owned();
        }
        let mut w = self.0.write();
        if w.len() < MAX_VALUES {
            w.insert(v.to_owned());
            v.to_owned()
        } else {
            "other".to_owned()
        }
    }
}

fn labels() -> &'static [Bounded; 3] {
    static L: OnceLock<[Bounded; 3]> = OnceLock::new();
    L.get_or_init(|| std::array::from_fn(|_| Bounded(RwLock::new(HashSet::new()))))
}

/// Records one request's series.
pub fn record(r: &UsageRecord) {
    let [ws, prov, model] = labels();
    let ws = ws.get(r.workspace_id.as_deref().unwrap_or("none"));
    let provider = prov.get(r.provider_slug.as_deref().unwrap_or("none"));
    let model = model.get(r.model.as_deref().unwrap_or("none"));
    let status = r.status_code.to_string();
    let base = [("workspace", ws), ("provider", provider), ("model", model)];
    let with_status = || {
        let mut l: Vec<(&'static str, String)> = base.to_vec();
        l.push(("status", status.clone()));
        l
    };
    counter!("tollgate_requests_total", &with_status()).increment(1);
    histogram!("tollgate_request_duration_seconds", &with_status()).record(r.latency_us as f64 / 1e6);
    if r.prompt_tokens > 0 || r.completion_tokens > 0 {
        let mut l = base.to_vec();
        l.push(("type", "prompt".to_owned()));
        counter!("tollgate_tokens_total", &l).increment(r.prompt_tokens);
        l.pop();
        l.push(("type", "completion".to_owned()));
        counter!("tollgate_tokens_total", &l).increment(r.completion_tokens);
    }
    if let Some(c) = r.cost_picos.filter(|c| *c > 0) {
        // Micro-dollars keep the counter an integer.
        counter!("tollgate_cost_microdollars_total", &base).increment((c / 1_000_000) as u64);
    }
    if let Some(t) = r.ttft_us {
        histogram!("tollgate_time_to_first_token_seconds", &base).record(t as f64 / 1e6);
    }
}
