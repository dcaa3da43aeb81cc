//! Routing configs (Portkey's config object): parsing with errors that name
//! the bad field, the compiled [`Plan`] the gateway walks, and the pure rules
//! it needs: which statuses move on or retry, backoff with jitter, the wait a
//! `retry-after` asks for (a delay, or an HTTP date read against the caller's
//! clock), and the weighted (optionally sticky) choice of a
//! load-balanced target. No I/O: the gateway owns the clock, the sleeping and
//! the circuit-breaker state.
//!
//! The wire form ([`ConfigSpec`]) is a tree: a node with `targets` is a group
//! (its `strategy.mode` is `single`, `fallback` or `loadbalance`); a node
//! without is a leaf that names a provider. `retry`, `request_timeout`,
//! `provider` and `override_params` set on a node apply to every target under
//! it unless the target sets its own (`override_params` merge, the target's
//! keys winning). `circuit_breaker` is Tollgate's extension.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::time::Duration;

/// Most retries a target may ask for (Portkey's limit).
pub const MAX_RETRY_ATTEMPTS: u32 = 5;
/// Statuses retried when `retry.on_status_codes` is not given.
pub const DEFAULT_RETRY_STATUSES: [u16; 5] = [429, 500, 502, 503, 504];
/// The status a request timeout counts as for `on_status_codes` (Portkey's).
pub const TIMEOUT_STATUS: u16 = 408;
/// The first backoff wait; each further retry doubles it.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// The longest a request may spend waiting between retries, in total; an
/// upstream asking for a longer wait ends the retries.
pub const MAX_TOTAL_WAIT: Duration = Duration::from_secs(60);
/// Deepest nesting of targets accepted.
pub const MAX_DEPTH: usize = 8;
/// Most leaf targets in one config.
pub const MAX_TARGETS: usize = 64;

/// `strategy.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Single,
    Fallback,
    Loadbalance,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategySpec {
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_status_codes: Option<Vec<u16>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_status_codes: Option<Vec<u16>>,
    /// Wait what the upstream's `retry-after`, `retry-after-ms` or
    /// `x-ms-retry-after-ms` asks for (Tollgate's default: true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_retry_after_headers: Option<bool>,
}

/// Tollgate's extension: skip a target for `cooldown_ms` after it failed
/// `failures` times within `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    pub failures: u32,
    pub window_ms: u64,
    pub cooldown_ms: u64,
}

/// A config node as sent (the header, a saved config, a default config).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<StrategySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<ConfigSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_params: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
}

/// Why a config was refused: the field (a path such as `targets[1].weight`)
/// and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config: {field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

fn bad(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: if field.is_empty() {
            "config".into()
        } else {
            field.into()
        },
        message: message.into(),
    }
}

/// When to retry a target, and how often.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 = none).
    pub attempts: u32,
    pub on_status_codes: Option<Vec<u16>>,
    pub use_retry_after: bool,
}

impl RetryPolicy {
    /// Is a failure with `status` retried?
    pub fn retries(&self, status: u16) -> bool {
        match &self.on_status_codes {
            Some(codes) => codes.contains(&status),
            None => DEFAULT_RETRY_STATUSES.contains(&status),
        }
    }
}

/// A target that names a provider.
#[derive(Debug, Clone, PartialEq)]
pub struct Leaf {
    /// Where it sits, as Portkey reports it: `config.targets[1]`.
    pub path: String,
    /// The provider slug, without `@` (inherited when not set here).
    pub provider: Option<String>,
    pub override_params: Option<Map<String, Value>>,
    pub retry: RetryPolicy,
    pub request_timeout: Option<Duration>,
    pub circuit_breaker: Option<CircuitBreaker>,
}

/// A group of targets and how to use them.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub path: String,
    pub mode: Mode,
    pub on_status_codes: Option<Vec<u16>>,
    /// Children with their load-balancing weights.
    pub targets: Vec<(f64, Node)>,
}

impl Group {
    /// Does a failed target pass the request on to the next one? A gateway
    /// failure (no answer: timeout, unreachable) always does; a status does
    /// when `on_status_codes` lists it, or always when it is not given.
    pub fn moves_on(&self, failure: Failure) -> bool {
        match failure {
            Failure::NoAnswer(_) => true,
            Failure::Status(s) => self.on_status_codes.as_ref().is_none_or(|c| c.contains(&s)),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Leaf(Leaf),
    Group(Group),
}

/// How an attempt failed, for the routing rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// An answer with this status: the upstream's, or a refusal by Tollgate
    /// (412 budget, 429 rate limit, 403/404/412 resolution and policy).
    Status(u16),
    /// No answer from the upstream (timeout: 408; unreachable or broken: 502).
    NoAnswer(u16),
}

impl Failure {
    pub fn status(self) -> u16 {
        match self {
            Failure::Status(s) | Failure::NoAnswer(s) => s,
        }
    }
}

/// A compiled config.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub root: Node,
    /// The config as given, normalised (for the admin API).
    pub spec: ConfigSpec,
}

impl Plan {
    /// Parses and validates a config object.
    pub fn from_value(value: Value) -> Result<Plan, ConfigError> {
        if !value.is_object() {
            return Err(bad("config", "must be a JSON object"));
        }
        let spec: ConfigSpec = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            bad(&field, e.into_inner().to_string())
        })?;
        Plan::compile(spec)
    }

    /// Parses the `x-portkey-config` header's JSON text.
    pub fn from_json(text: &[u8]) -> Result<Plan, ConfigError> {
        let value: Value =
            serde_json::from_slice(text).map_err(|e| bad("config", format!("is not valid JSON: {e}")))?;
        Plan::from_value(value)
    }

    pub fn compile(spec: ConfigSpec) -> Result<Plan, ConfigError> {
        let mut leaves = 0;
        let root = compile_node(&spec, &Inherited::default(), "", "config", 0, &mut leaves)?;
        Ok(Plan { root, spec })
    }

    /// The provider named at the top level (a default config's `provider`).
    pub fn top_provider(&self) -> Option<&str> {
        match &self.root {
            Node::Leaf(l) => l.provider.as_deref(),
            Node::Group(_) => None,
        }
    }
}

/// What a node passes down to its targets.
#[derive(Default, Clone)]
struct Inherited {
    provider: Option<String>,
    override_params: Option<Map<String, Value>>,
    retry: Option<RetrySpec>,
    request_timeout: Option<u64>,
}

fn join(field: &str, name: &str) -> String {
    if field.is_empty() {
        name.to_owned()
    } else {
        format!("{field}.{name}")
    }
}

fn check_codes(codes: &Option<Vec<u16>>, field: &str) -> Result<(), ConfigError> {
    if let Some(c) = codes {
        if let Some(i) = c.iter().position(|s| !(100..=599).contains(s)) {
            return Err(bad(&format!("{field}[{i}]"), "must be an HTTP status code (100-599)"));
        }
    }
    Ok(())
}

fn compile_node(
    spec: &ConfigSpec,
    parent: &Inherited,
    field: &str,
    path: &str,
    depth: usize,
    leaves: &mut usize,
) -> Result<Node, ConfigError> {
    if depth > MAX_DEPTH {
        return Err(bad(field, format!("targets nest deeper than {MAX_DEPTH} levels")));
    }
    if let Some(w) = spec.weight {
        if !w.is_finite() || w < 0.0 {
            return Err(bad(&join(field, "weight"), "must be a number of at least 0"));
        }
    }
    if spec.request_timeout == Some(0) {
        return Err(bad(
            &join(field, "request_timeout"),
            "must be a positive number of milliseconds",
        ));
    }
    if let Some(r) = &spec.retry {
        if r.attempts > MAX_RETRY_ATTEMPTS {
            return Err(bad(
                &join(field, "retry.attempts"),
                format!("must be at most {MAX_RETRY_ATTEMPTS}"),
            ));
        }
        check_codes(&r.on_status_codes, &join(field, "retry.on_status_codes"))?;
    }
    let provider = match &spec.provider {
        None => None,
        Some(p) => {
            let slug = p.trim().trim_start_matches('@');
            if slug.is_empty() {
                return Err(bad(
                    &join(field, "provider"),
                    "must name a provider, e.g. \"@openai-prod\"",
                ));
            }
            Some(slug.to_owned())
        }
    };
    let override_params = match (&parent.override_params, &spec.override_params) {
        (p, None) => p.clone(),
        (None, Some(o)) => Some(o.clone()),
        (Some(p), Some(o)) => {
            let mut m = p.clone();
            m.extend(o.iter().map(|(k, v)| (k.clone(), v.clone())));
            Some(m)
        }
    };
    if let Some(Value::String(_)) | None = override_params.as_ref().and_then(|o| o.get("model")) {
    } else {
        return Err(bad(&join(field, "override_params.model"), "must be a string"));
    }
    let here = Inherited {
        provider: provider.or_else(|| parent.provider.clone()),
        override_params,
        retry: spec.retry.clone().or_else(|| parent.retry.clone()),
        request_timeout: spec.request_timeout.or(parent.request_timeout),
    };
    match (&spec.targets, &spec.strategy) {
        (None, Some(_)) => Err(bad(&join(field, "targets"), "is required with a strategy")),
        (Some(_), None) => Err(bad(&join(field, "strategy"), "is required with targets")),
        (Some(targets), Some(strategy)) => {
            if spec.circuit_breaker.is_some() {
                return Err(bad(
                    &join(field, "circuit_breaker"),
                    "belongs on a target that names a provider",
                ));
            }
            check_codes(&strategy.on_status_codes, &join(field, "strategy.on_status_codes"))?;
            if targets.is_empty() {
                return Err(bad(&join(field, "targets"), "must hold at least one target"));
            }
            let mut out = Vec::with_capacity(targets.len());
            for (i, t) in targets.iter().enumerate() {
                let f = format!("{}[{i}]", join(field, "targets"));
                let p = format!("{path}.targets[{i}]");
                let node = compile_node(t, &here, &f, &p, depth + 1, leaves)?;
                out.push((t.weight.unwrap_or(1.0), node));
            }
            if strategy.mode == Mode::Loadbalance && !out.iter().any(|(w, _)| *w > 0.0) {
                return Err(bad(
                    &join(field, "targets"),
                    "loadbalance needs at least one target with a weight above 0",
                ));
            }
            Ok(Node::Group(Group {
                path: path.to_owned(),
                mode: strategy.mode,
                on_status_codes: strategy.on_status_codes.clone(),
                targets: out,
            }))
        }
        (None, None) => {
            *leaves += 1;
            if *leaves > MAX_TARGETS {
                return Err(bad(field, format!("a config may hold at most {MAX_TARGETS} targets")));
            }
            if let Some(cb) = &spec.circuit_breaker {
                let f = join(field, "circuit_breaker");
                if cb.failures == 0 {
                    return Err(bad(&format!("{f}.failures"), "must be at least 1"));
                }
                if cb.window_ms == 0 {
                    return Err(bad(&format!("{f}.window_ms"), "must be at least 1"));
                }
                if cb.cooldown_ms == 0 {
                    return Err(bad(&format!("{f}.cooldown_ms"), "must be at least 1"));
                }
            }
            let retry = here
                .retry
                .map(|r| RetryPolicy {
                    attempts: r.attempts,
                    on_status_codes: r.on_status_codes,
                    use_retry_after: r.use_retry_after_headers.unwrap_or(true),
                })
                .unwrap_or_default();
            Ok(Node::Leaf(Leaf {
                path: path.to_owned(),
                provider: here.provider,
                override_params: here.override_params,
                retry,
                request_timeout: here.request_timeout.map(Duration::from_millis),
                circuit_breaker: spec.circuit_breaker,
            }))
        }
    }
}

/// The wait before retry number `retry` (0 for the first retry): exponential
/// from [`BACKOFF_BASE`] with jitter, `jitter` being uniform in [0, 1): the
/// wait lies between half and all of `BACKOFF_BASE × 2^retry`.
pub fn backoff(retry: u32, jitter: f64) -> Duration {
    let full = BACKOFF_BASE.saturating_mul(1u32 << retry.min(10));
    let factor = 0.5 + 0.5 * jitter.clamp(0.0, 1.0);
    full.mul_f64(factor)
}

/// The wait an upstream asked for, as it said it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// A delay: `retry-after-ms`, `x-ms-retry-after-ms`, or `retry-after`
    /// in seconds.
    Delay(Duration),
    /// A point in time: `retry-after` as an HTTP date (RFC 9110).
    At(DateTime<Utc>),
}

impl RetryAfter {
    /// How long to wait from `now` (the gateway's clock); a date already
    /// past asks for no wait.
    pub fn wait(self, now: DateTime<Utc>) -> Duration {
        match self {
            RetryAfter::Delay(d) => d,
            RetryAfter::At(at) => (at - now).to_std().unwrap_or(Duration::ZERO),
        }
    }
}

/// The wait an upstream asked for: `retry-after-ms`, `x-ms-retry-after-ms`
/// (milliseconds), else `retry-after`, in seconds or as an HTTP date in any
/// of RFC 9110's three forms (IMF-fixdate, RFC 850, asctime). `get` looks a
/// header up by its lower-case name. A value that is neither is ignored.
pub fn retry_after<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<RetryAfter> {
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(ms) = get(name).and_then(|v| v.trim().parse::<f64>().ok()) {
            // A wait too long for a `Duration` is ignored like a bad value.
            if let Ok(d) = Duration::try_from_secs_f64(ms / 1000.0) {
                return Some(RetryAfter::Delay(d));
            }
        }
    }
    let v = get("retry-after")?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok().map(RetryAfter::Delay);
    }
    httpdate::parse_http_date(v)
        .ok()
        .map(|t| RetryAfter::At(DateTime::<Utc>::from(t)))
}

/// A stable number in [0, 1) for a sticky key: the same key picks the same
/// target on every replica.
pub fn sticky_point(key: &str) -> f64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// The weighted choice among `weights` for a point in [0, 1); targets of
/// weight 0 are never chosen. `None` when no weight is above 0.
pub fn choose_weighted(weights: impl Iterator<Item = f64> + Clone, point: f64) -> Option<usize> {
    let total: f64 = weights.clone().filter(|w| *w > 0.0).sum();
    if total <= 0.0 {
        return None;
    }
    let mut at = point.clamp(0.0, 1.0) * total;
    let mut last = None;
    for (i, w) in weights.enumerate() {
        if w <= 0.0 {
            continue;
        }
        last = Some(i);
        if at < w {
            return Some(i);
        }
        at -= w;
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use serde_json::json;

    fn err(v: Value) -> ConfigError {
        Plan::from_value(v).unwrap_err()
    }

    #[test]
    fn a_fallback_config_compiles_with_inheritance() {
        let p = Plan::from_value(json!({
            "strategy": {"mode": "fallback", "on_status_codes": [429, 503]},
            "retry": {"attempts": 2},
            "override_params": {"temperature": 0.1, "model": "gpt-4o"},
            "targets": [
                {"provider": "@a"},
                {"provider": "b", "override_params": {"model": "claude"}, "request_timeout": 500,
                 "retry": {"attempts": 0}},
            ]
        }))
        .unwrap();
        let Node::Group(g) = &p.root else { panic!() };
        assert_eq!(g.mode, Mode::Fallback);
        assert!(g.moves_on(Failure::Status(429)));
        assert!(!g.moves_on(Failure::Status(400)));
        assert!(g.moves_on(Failure::NoAnswer(408)), "a gateway failure always moves on");
        let Node::Leaf(a) = &g.targets[0].1 else { panic!() };
        assert_eq!(a.path, "config.targets[0]");
        assert_eq!(a.provider.as_deref(), Some("a"));
        assert_eq!(a.retry.attempts, 2);
        assert_eq!(a.override_params.as_ref().unwrap()["model"], "gpt-4o");
        let Node::Leaf(b) = &g.targets[1].1 else { panic!() };
        assert_eq!(b.provider.as_deref(), Some("b"));
        assert_eq!(b.retry.attempts, 0);
        assert_eq!(b.request_timeout, Some(Duration::from_millis(500)));
        let o = b.override_params.as_ref().unwrap();
        assert_eq!(o["model"], "claude");
        assert_eq!(o["temperature"], 0.1);
    }

    #[test]
    fn without_on_status_codes_any_failure_moves_on() {
        let p = Plan::from_value(json!({"strategy": {"mode": "fallback"}, "targets": [{"provider": "@a"}]})).unwrap();
        let Node::Group(g) = &p.root else { panic!() };
        assert!(g.moves_on(Failure::Status(400)));
        assert!(g.moves_on(Failure::Status(412)));
    }

    #[test]
    fn a_single_provider_config_is_a_leaf() {
        let p = Plan::from_value(json!({"provider": "@openai-prod", "retry": {"attempts": 3}})).unwrap();
        assert_eq!(p.top_provider(), Some("openai-prod"));
        let Node::Leaf(l) = &p.root else { panic!() };
        assert_eq!(l.path, "config");
        assert!(l.retry.retries(503));
        assert!(!l.retry.retries(400));
        assert!(l.retry.use_retry_after);
    }

    #[test]
    fn invalid_configs_name_the_field() {
        let cases = [
            (
                json!({"strategy": {"mode": "fallback"}, "targets": [{"provider": "@a"}, {"provider": "@b", "weight": -1}]}),
                "targets[1].weight",
            ),
            (
                json!({"strategy": {"mode": "fallback"}, "targets": [{"provider": "@a", "weight": "x"}]}),
                "targets[0].weight",
            ),
            (json!({"retry": {"attempts": 6}}), "retry.attempts"),
            (
                json!({"retry": {"attempts": 2, "on_status_codes": [429, 9000]}}),
                "retry.on_status_codes",
            ),
            (
                json!({"strategy": {"mode": "roundrobin"}, "targets": []}),
                "strategy.mode",
            ),
            (json!({"strategy": {"mode": "fallback"}, "targets": []}), "targets"),
            (json!({"strategy": {"mode": "fallback"}}), "targets"),
            (json!({"targets": [{"provider": "@a"}]}), "strategy"),
            (json!({"provider": "@"}), "provider"),
            (json!({"request_timeout": 0}), "request_timeout"),
            (json!({"cache": {"mode": "simple"}}), "cache"),
            (
                json!({"strategy": {"mode": "loadbalance"}, "targets": [{"provider": "@a", "weight": 0}]}),
                "targets",
            ),
            (
                json!({"provider": "@a", "circuit_breaker": {"failures": 0, "window_ms": 1, "cooldown_ms": 1}}),
                "circuit_breaker.failures",
            ),
            (
                json!({"strategy": {"mode": "fallback"}, "targets": [{"strategy": {"mode": "fallback"}, "targets": [{"provider": "@a", "retry": {"attempts": 9}}]}]}),
                "targets[0].targets[0].retry.attempts",
            ),
            (
                json!({"provider": "@a", "override_params": {"model": 5}}),
                "override_params.model",
            ),
        ];
        for (v, field) in cases {
            let e = err(v.clone());
            assert!(e.field.starts_with(field), "{v}: got {e}");
            assert!(e.to_string().contains(field));
        }
        assert_eq!(err(json!([1])).field, "config");
        assert!(Plan::from_json(b"{nope").is_err());
        let unknown = err(json!({"cache": {"mode": "simple"}}));
        assert!(unknown.message.contains("cache"), "{unknown}");
    }

    #[test]
    fn nesting_and_size_are_bounded() {
        let mut v = json!({"provider": "@a"});
        for _ in 0..=MAX_DEPTH {
            v = json!({"strategy": {"mode": "fallback"}, "targets": [v]});
        }
        assert!(err(v).message.contains("deeper"));
        let many: Vec<Value> = (0..=MAX_TARGETS).map(|_| json!({"provider": "@a"})).collect();
        assert!(err(json!({"strategy": {"mode": "fallback"}, "targets": many}))
            .message
            .contains("at most"));
    }

    #[test]
    fn backoff_grows_with_jitter_and_retry_after_is_read() {
        assert_eq!(backoff(0, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(0, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(2, 0.0), Duration::from_millis(200));
        assert!(backoff(3, 0.5) > backoff(2, 0.99));
        let h = |pairs: &'static [(&'static str, &'static str)]| {
            move |n: &str| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| *v)
        };
        let delay = |d| Some(RetryAfter::Delay(d));
        assert_eq!(retry_after(h(&[("retry-after", "2")])), delay(Duration::from_secs(2)));
        assert_eq!(
            retry_after(h(&[("retry-after", "2"), ("retry-after-ms", "150")])),
            delay(Duration::from_millis(150))
        );
        assert_eq!(
            retry_after(h(&[("x-ms-retry-after-ms", "75")])),
            delay(Duration::from_millis(75))
        );
        assert_eq!(retry_after(h(&[("retry-after", "-1")])), None);
        assert_eq!(
            retry_after(h(&[("retry-after", "1e300")])),
            None,
            "too long to be a Duration"
        );
        assert_eq!(retry_after(h(&[("retry-after-ms", "1e300")])), None);
        assert_eq!(retry_after(h(&[("retry-after-ms", "-5")])), None);
        assert_eq!(retry_after(h(&[("retry-after", "soon")])), None);
        assert_eq!(
            retry_after(h(&[("retry-after", "Wed, 21 Oct 2015 25:28:00 GMT")])),
            None
        );
        assert_eq!(retry_after(h(&[])), None);
    }

    #[test]
    fn retry_after_as_an_http_date_is_waited_out_against_the_clock() {
        use crate::clock::{Clock, ManualClock};
        let at: DateTime<Utc> = "2015-10-21T07:28:00Z".parse().unwrap();
        let h = |v: &'static str| move |n: &str| (n == "retry-after").then_some(v);
        // RFC 9110's three forms of the same instant.
        for v in [
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Wednesday, 21-Oct-15 07:28:00 GMT",
            "Wed Oct 21 07:28:00 2015",
        ] {
            assert_eq!(retry_after(h(v)), Some(RetryAfter::At(at)), "{v}");
        }
        let clock = ManualClock::new(at - chrono::Duration::milliseconds(2_500));
        let asked = retry_after(h("Wed, 21 Oct 2015 07:28:00 GMT")).unwrap();
        assert_eq!(asked.wait(clock.now()), Duration::from_millis(2_500));
        clock.advance(chrono::Duration::seconds(2));
        assert_eq!(asked.wait(clock.now()), Duration::from_millis(500));
        clock.advance(chrono::Duration::seconds(10));
        assert_eq!(
            asked.wait(clock.now()),
            Duration::ZERO,
            "a date already past asks for no wait"
        );
        // A delay does not depend on the clock.
        let d = RetryAfter::Delay(Duration::from_secs(3));
        assert_eq!(d.wait(clock.now()), Duration::from_secs(3));
    }

    #[test]
    fn weighted_choice_holds_the_split_over_ten_thousand() {
        let weights = [0.7, 0.0, 0.3];
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let mut counts = [0usize; 3];
        for _ in 0..10_000 {
            let i = choose_weighted(weights.iter().copied(), rng.gen::<f64>()).unwrap();
            counts[i] += 1;
        }
        assert_eq!(counts[1], 0, "weight 0 is never chosen");
        let share = counts[0] as f64 / 10_000.0;
        assert!((share - 0.7).abs() <= 0.02, "{counts:?}");
        assert_eq!(choose_weighted([0.0, 0.0].into_iter(), 0.5), None);
        assert_eq!(choose_weighted([1.0, 1.0].into_iter(), 0.9999), Some(1));
        assert_eq!(choose_weighted([1.0, 0.0].into_iter(), 1.0), Some(0));
    }

    #[test]
    fn sticky_keys_are_stable_and_spread() {
        assert_eq!(sticky_point("user-1"), sticky_point("user-1"));
        let mut counts = [0usize; 2];
        for i in 0..10_000 {
            let p = sticky_point(&format!("user-{i}"));
            assert!((0.0..1.0).contains(&p));
            counts[choose_weighted([0.5, 0.5].into_iter(), p).unwrap()] += 1;
        }
        assert!((counts[0] as f64 / 10_000.0 - 0.5).abs() <= 0.02, "{counts:?}");
    }
}
