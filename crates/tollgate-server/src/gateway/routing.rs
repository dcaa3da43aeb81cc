//! Routing: a layer around the one governed attempt ([`super::attempt`]).
//!
//! A request's config comes from `x-portkey-config` (an object, or a saved
//! config's `pc-…` slug), else the API key's default config, else the
//! workspace's (defaults apply only when the request does not name its
//! provider itself). Without one, the gateway makes one attempt as before
//! and nothing here runs.
//!
//! With one, [`run`] walks the plan: a fallback group tries its targets in
//! order while the failure is one it moves on from; a load-balanced group
//! picks one target by weight (sticky by `x-portkey-sticky-key` or the
//! body's `user`); a target retries the statuses its `retry` names, with
//! exponential backoff and jitter or the wait the upstream asked for.
//! Every attempt is admitted against its own target's limits, settled and
//! logged under the request's trace id with its target path, its retry
//! number and whether the client got its answer. The response says which
//! target answered (`x-portkey-last-used-option-index`) and after how many
//! retries (`x-portkey-retry-attempt-count`). Circuit breakers keep their
//! state in a [`BreakerStore`]: this process's memory, or Redis (shared by
//! every replica) when `redis_url` is set.

use super::{attempt, resolve, Attempt, Failed, Parsed, Pick};
use crate::error::GatewayError;
use crate::snapshot::DefaultConfig;
use crate::state::SharedState;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_core::admission::RateHeaders;
use tollgate_core::routing::{self as rules, CircuitBreaker, ConfigError, Failure, Group, Leaf, Mode, Node, Plan};
use tollgate_providers::chat::Body;
use tollgate_store::request_log::LogRecord;

pub const LAST_USED_OPTION_INDEX: &str = "x-portkey-last-used-option-index";
pub const RETRY_ATTEMPT_COUNT: &str = "x-portkey-retry-attempt-count";

fn config_error(e: ConfigError) -> GatewayError {
    GatewayError::InvalidRequest {
        message: e.to_string(),
        param: Some(e.field),
    }
}

/// The config that applies to a request, if any. With none, nothing is
/// allocated.
pub fn plan_for(parsed: &Parsed, headers: &HeaderMap) -> Result<Option<Arc<Plan>>, GatewayError> {
    if let Some(v) = headers.get("x-portkey-config") {
        let text = v
            .to_str()
            .map_err(|_| GatewayError::InvalidRequest {
                message: "x-portkey-config must be text: a JSON object or a saved config's id".into(),
                param: Some("config".into()),
            })?
            .trim();
        if text.starts_with('{') {
            return Plan::from_json(text.as_bytes())
                .map(|p| Some(Arc::new(p)))
                .map_err(config_error);
        }
        return match parsed.snap.config(text, Some(&parsed.workspace_id)) {
            Some(c) => Ok(Some(c.plan.clone())),
            None => Err(GatewayError::InvalidRequest {
                message: format!(
                    "config '{text}' not found (x-portkey-config takes a JSON object or a saved config's id)"
                ),
                param: Some("config".into()),
            }),
        };
    }
    if parsed.names_provider {
        return Ok(None);
    }
    let default = parsed
        .key
        .default_config
        .as_ref()
        .or_else(|| parsed.snap.workspace_default(&parsed.workspace_id));
    match default {
        None => Ok(None),
        Some(DefaultConfig::Plan(p)) => Ok(Some(p.clone())),
        Some(DefaultConfig::Missing(what)) => Err(GatewayError::InvalidRequest {
            message: format!("the default config of this API key or workspace is not usable: {what}"),
            param: Some("config".into()),
        }),
    }
}

/// Where the circuit breakers of routing targets keep their state: failed
/// attempts within the window, and until when a target is skipped. Keys are
/// `workspace id/provider slug`; times are the gateway clock's, in Unix
/// milliseconds.
///
/// The default, [`LocalBreakers`], lives in this process, so each replica
/// has its own breakers. A shared implementation (`RedisBreakers`, with
/// `redis_url`) goes into [`crate::state::Parts::breakers`]; one that cannot reach
/// its store should answer "closed" rather than fail the request.
#[async_trait::async_trait]
pub trait BreakerStore: Send + Sync + 'static {
    /// Is the target skipped at `now_ms`?
    async fn is_open(&self, key: &str, now_ms: i64) -> bool;

    /// Notes an attempt's outcome: `cb.failures` failures within
    /// `cb.window_ms` open the breaker for `cb.cooldown_ms`, after which the
    /// count starts again. A success closes it and clears the count.
    async fn note(&self, key: &str, cb: &CircuitBreaker, now_ms: i64, ok: bool);
}

/// Circuit breakers in this process's memory (the default store).
#[derive(Default)]
pub struct LocalBreakers(Mutex<HashMap<String, BreakerState>>);

#[derive(Default)]
struct BreakerState {
    failures: VecDeque<i64>,
    open_until: i64,
}

impl LocalBreakers {
    fn open_at(&self, key: &str, now_ms: i64) -> bool {
        self.0.lock().get(key).is_some_and(|b| b.open_until > now_ms)
    }

    fn record(&self, key: &str, cb: &CircuitBreaker, now_ms: i64, ok: bool) {
        let mut map = self.0.lock();
        if ok {
            map.remove(key);
            return;
        }
        let b = map.entry(key.to_owned()).or_default();
        let since = now_ms.saturating_sub(i64::try_from(cb.window_ms).unwrap_or(i64::MAX));
        while b.failures.front().is_some_and(|t| *t <= since) {
            b.failures.pop_front();
        }
        b.failures.push_back(now_ms);
        if b.failures.len() >= cb.failures as usize {
            b.open_until = now_ms.saturating_add(i64::try_from(cb.cooldown_ms).unwrap_or(i64::MAX));
            b.failures.clear();
        }
    }
}

#[async_trait::async_trait]
impl BreakerStore for LocalBreakers {
    async fn is_open(&self, key: &str, now_ms: i64) -> bool {
        self.open_at(key, now_ms)
    }

    async fn note(&self, key: &str, cb: &CircuitBreaker, now_ms: i64, ok: bool) {
        self.record(key, cb, now_ms, ok)
    }
}

/// The scale-out store: shared by every replica on the same Redis.
#[async_trait::async_trait]
impl BreakerStore for tollgate_store::counters::RedisBreakers {
    async fn is_open(&self, key: &str, now_ms: i64) -> bool {
        tollgate_store::counters::RedisBreakers::is_open(self, key, now_ms).await
    }

    async fn note(&self, key: &str, cb: &CircuitBreaker, now_ms: i64, ok: bool) {
        tollgate_store::counters::RedisBreakers::note(self, key, cb.failures, cb.window_ms, cb.cooldown_ms, now_ms, ok)
            .await
    }
}

/// Where the walk ended: the target, its retries, and the answer.
struct Done {
    path: String,
    retries: u32,
    result: Result<Response, Box<Failed>>,
}

type Walking<'w> = Pin<Box<dyn Future<Output = Done> + Send + 'w>>;

struct Walk<'a> {
    state: &'a SharedState,
    parsed: &'a Parsed,
    headers: &'a HeaderMap,
    body: &'a Body,
    /// The request's record, from which each attempt's is made.
    template: &'a LogRecord,
    started: Instant,
    /// Attempts made so far.
    attempts: u32,
    /// Time spent waiting between retries so far.
    waited: Duration,
    /// The point a sticky key maps to, for load balancing.
    sticky: Option<f64>,
}

/// Routes a request through `plan`.
pub async fn run(
    state: &SharedState,
    parsed: &Parsed,
    headers: &HeaderMap,
    body: &Body,
    plan: &Plan,
    template: Box<LogRecord>,
    started: Instant,
) -> Response {
    let sticky = headers
        .get("x-portkey-sticky-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| body.user())
        .filter(|k| !k.is_empty())
        .map(rules::sticky_point);
    let mut walk = Walk {
        state,
        parsed,
        headers,
        body,
        template: &template,
        started,
        attempts: 0,
        waited: Duration::ZERO,
        sticky,
    };
    let done = walk.node(&plan.root).await;
    let mut resp = match done.result {
        Ok(resp) => resp,
        Err(f) => f.render(state, started),
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&done.path) {
        h.insert(LAST_USED_OPTION_INDEX, v);
    }
    h.insert(RETRY_ATTEMPT_COUNT, HeaderValue::from(done.retries));
    resp
}

impl<'a> Walk<'a> {
    fn node<'w>(&'w mut self, node: &'w Node) -> Walking<'w> {
        Box::pin(async move {
            match node {
                Node::Leaf(l) => self.leaf(l).await,
                Node::Group(g) => self.group(g).await,
            }
        })
    }

    async fn group(&mut self, g: &Group) -> Done {
        match g.mode {
            Mode::Single => self.node(&g.targets[0].1).await,
            Mode::Loadbalance => {
                let point = self.sticky.unwrap_or_else(rand::random::<f64>);
                let i = rules::choose_weighted(g.targets.iter().map(|(w, _)| *w), point).unwrap_or(0);
                self.node(&g.targets[i].1).await
            }
            Mode::Fallback => {
                let last = g.targets.len() - 1;
                let mut i = 0;
                loop {
                    let done = self.node(&g.targets[i].1).await;
                    match done.result {
                        Err(f) if i < last && g.moves_on(f.failure) => {
                            f.supersede(self.state, self.started);
                            i += 1;
                        }
                        _ => return done,
                    }
                }
            }
        }
    }

    /// The record of one attempt: the request's, under a new id, with the
    /// target and retry it belongs to.
    fn record(&self, leaf: &Leaf, retry: u32) -> Box<LogRecord> {
        let t = self.template;
        Box::new(LogRecord {
            id: tollgate_core::ids::prefixed_id("req"),
            created_at: self.state.now(),
            trace_id: t.trace_id.clone(),
            endpoint: t.endpoint.clone(),
            api_key_id: t.api_key_id.clone(),
            workspace_id: t.workspace_id.clone(),
            metadata: t.metadata.clone(),
            request_body: t.request_body.clone(),
            target_path: Some(leaf.path.clone()),
            retry_attempt: retry,
            attempt: self.attempts,
            ..Default::default()
        })
    }

    async fn leaf(&mut self, leaf: &Leaf) -> Done {
        let breaker = leaf.circuit_breaker.map(|cb| {
            let key = format!(
                "{}/{}",
                self.parsed.workspace_id,
                leaf.provider.as_deref().unwrap_or(&leaf.path)
            );
            (cb, key)
        });
        let mut retry = 0;
        loop {
            let mut rec = self.record(leaf, retry);
            if let Some((_, key)) = &breaker {
                if self
                    .state
                    .breakers
                    .is_open(key, self.state.now().timestamp_millis())
                    .await
                {
                    let e =
                        GatewayError::Upstream(format!("target {} skipped: its circuit breaker is open", leaf.path));
                    let mut f = Box::new(Failed::refused(self.parsed.api, e, rec, RateHeaders::default()));
                    f.failure = Failure::NoAnswer(503);
                    return Done {
                        path: leaf.path.clone(),
                        retries: retry,
                        result: Err(f),
                    };
                }
            }
            let pick = Pick {
                provider: leaf.provider.as_deref(),
                override_params: leaf.override_params.as_ref(),
                timeout: leaf.request_timeout,
            };
            let outcome = match resolve(self.state, self.parsed, self.body.clone(), self.headers, pick, &mut rec) {
                Ok(prep) => attempt(self.state, prep, rec, self.started, true).await,
                Err(e) => Attempt::Failed(Box::new(Failed::refused(
                    self.parsed.api,
                    e,
                    rec,
                    RateHeaders::default(),
                ))),
            };
            self.attempts += 1;
            if let Some((cb, key)) = &breaker {
                let ok = matches!(outcome, Attempt::Answered(_));
                self.state
                    .breakers
                    .note(key, cb, self.state.now().timestamp_millis(), ok)
                    .await;
            }
            let f = match outcome {
                Attempt::Answered(resp) => {
                    return Done {
                        path: leaf.path.clone(),
                        retries: retry,
                        result: Ok(resp),
                    }
                }
                Attempt::Failed(f) => f,
            };
            if retry < leaf.retry.attempts && leaf.retry.retries(f.failure.status()) {
                let asked = f.retry_after.filter(|_| leaf.retry.use_retry_after);
                let wait = asked.unwrap_or_else(|| rules::backoff(retry, rand::random::<f64>()));
                if self.waited + wait <= rules::MAX_TOTAL_WAIT {
                    f.supersede(self.state, self.started);
                    tokio::time::sleep(wait).await;
                    self.waited += wait;
                    retry += 1;
                    continue;
                }
            }
            return Done {
                path: leaf.path.clone(),
                retries: retry,
                result: Err(f),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_breaker_opens_after_failures_in_the_window_and_cools_down() {
        // Through the trait, as the gateway uses it.
        let b: Arc<dyn BreakerStore> = Arc::new(LocalBreakers::default());
        let cb = CircuitBreaker {
            failures: 2,
            window_ms: 1_000,
            cooldown_ms: 5_000,
        };
        b.note("k", &cb, 0, false).await;
        assert!(!b.is_open("k", 1).await);
        // The first failure left the window: still one failure.
        b.note("k", &cb, 1_500, false).await;
        assert!(!b.is_open("k", 1_501).await);
        b.note("k", &cb, 1_600, false).await;
        assert!(b.is_open("k", 1_601).await);
        assert!(b.is_open("k", 6_599).await);
        assert!(!b.is_open("k", 6_600).await);
        b.note("k", &cb, 7_000, false).await;
        b.note("k", &cb, 7_001, true).await;
        b.note("k", &cb, 7_002, false).await;
        assert!(!b.is_open("k", 7_003).await, "a success starts the count again");
        assert!(!b.is_open("other", 7_003).await);
    }
}
