//! The gateway (data plane): `POST /v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings` and `GET /v1/models`.
//!
//! One request's path, top to bottom in [`handle`]:
//! 1. `parse`: authenticate the workspace key and read the body; then
//!    `resolve` for the target: resolve the provider, check access and the
//!    model policy, work out the price and the worst case — all from the
//!    in-memory snapshot.
//! 2. [`attempt`], one governed attempt: admit the worst case against every
//!    applicable limit, send through the protocol's adapter (credentials
//!    opened inside it), relay the answer ([`relay`]: whole, or streamed
//!    chunk by chunk), settle the reservation with the actual usage and log.
//!
//! With a routing config, [`routing`] walks its targets, each one a
//! `resolve` + [`attempt`].

pub mod models;
pub mod relay;
pub mod routing;

use crate::auth::{self, AuthFailure};
use crate::error::GatewayError;
use crate::snapshot::{KeyEntry, Route, Snapshot};
use crate::state::SharedState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_core::admission::{Demand, LimitCheck, RateHeaders, Rule};
use tollgate_core::catalogue::{Protocol, Tokenizer};
use tollgate_core::limits::RateKind;
use tollgate_core::money::Money;
use tollgate_core::records::KeyType;
use tollgate_core::routing::Failure;
use tollgate_core::usage::ModelPrice;
use tollgate_providers::{tokens, Call, Endpoint, ProviderError, Target, UpstreamResponse};
use tollgate_store::usage::UsageRecord;

pub fn router() -> Router<SharedState> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models::list))
}

async fn chat_completions(State(state): State<SharedState>, headers: HeaderMap, body: Bytes) -> Response {
    handle(state, Endpoint::ChatCompletions, headers, body).await
}

async fn completions(State(state): State<SharedState>, headers: HeaderMap, body: Bytes) -> Response {
    handle(state, Endpoint::Completions, headers, body).await
}

async fn embeddings(State(state): State<SharedState>, headers: HeaderMap, body: Bytes) -> Response {
    handle(state, Endpoint::Embeddings, headers, body).await
}

/// The name an endpoint is logged under.
pub fn endpoint_name(e: Endpoint) -> &'static str {
    match e {
        Endpoint::ChatCompletions => "chat.completions",
        Endpoint::Completions => "completions",
        Endpoint::Embeddings => "embeddings",
    }
}

/// Output tokens assumed for the worst case when neither the request nor
/// the catalogue bounds them.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 4096;
/// Longest accepted `x-portkey-trace-id`.
const MAX_TRACE_ID: usize = 128;

/// Everything worked out about a request before it is admitted.
pub struct Prepared {
    /// The control plane this request was resolved against, start to end.
    pub snap: Arc<Snapshot>,
    pub key: Arc<KeyEntry>,
    pub route: Arc<Route>,
    pub body: Value,
    /// The model as the upstream knows it.
    pub model: String,
    pub stream: bool,
    pub client_wants_usage: bool,
    pub endpoint: Endpoint,
    pub price: Option<ModelPrice>,
    pub tokenizer: Tokenizer,
    /// The most output the request can produce (its `max_tokens`, else the
    /// model's maximum from the catalogue, else a default).
    pub max_output: u64,
    /// `custom_host` of the model, else of the integration, else the catalogue's.
    pub base_url: Option<String>,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub log_bodies: bool,
}

fn invalid(message: impl Into<String>, param: Option<&str>) -> GatewayError {
    GatewayError::InvalidRequest {
        message: message.into(),
        param: param.map(str::to_owned),
    }
}

/// The trace id of a request: the client's, or a new one.
fn trace_id(headers: &HeaderMap) -> String {
    headers
        .get("x-portkey-trace-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= MAX_TRACE_ID)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// One gateway request, start to finish: without a routing config, one
/// governed attempt; with one, [`routing::run`] walks its targets, each
/// attempt governed the same way.
pub async fn handle(state: SharedState, endpoint: Endpoint, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let mut rec = UsageRecord {
        id: tollgate_core::ids::prefixed_id("req"),
        created_at: state.now(),
        trace_id: trace_id(&headers),
        endpoint: endpoint_name(endpoint).to_owned(),
        ..Default::default()
    };
    let (parsed, json) = match parse(&state, endpoint, &headers, &body, &mut rec) {
        Ok(p) => p,
        Err(e) => return relay::fail(&state, rec, started, e, RateHeaders::default()),
    };
    if parsed.log_bodies {
        rec.request_body = Some(String::from_utf8_lossy(&body).into_owned());
    }
    match routing::plan_for(&parsed, &headers) {
        Err(e) => relay::fail(&state, rec, started, e, RateHeaders::default()),
        Ok(Some(plan)) => routing::run(&state, &parsed, &headers, &json, &plan, rec, started).await,
        Ok(None) => {
            let prep = match resolve(&state, &parsed, json, &headers, Pick::default(), &mut rec) {
                Ok(p) => p,
                Err(e) => return relay::fail(&state, rec, started, e, RateHeaders::default()),
            };
            match attempt(&state, prep, rec, started, false).await {
                Attempt::Answered(resp) => resp,
                Attempt::Failed(f) => f.render(&state, started),
            }
        }
    }
}

/// What one governed attempt came to.
pub enum Attempt {
    /// The client's answer: a whole success, or a stream under way.
    Answered(Response),
    Failed(Box<Failed>),
}

/// A failed attempt, not yet logged: routing decides whether it is the
/// request's last word ([`Failed::render`]) or is passed over
/// ([`Failed::supersede`]).
pub struct Failed {
    pub error: GatewayError,
    /// How it failed, for the routing rules.
    pub failure: Failure,
    /// The wait the upstream asked for before another try.
    pub retry_after: Option<Duration>,
    pub rate: RateHeaders,
    closing: Closing,
}

/// How a failed attempt's books are closed.
enum Closing {
    /// Nothing reserved any more: log the record.
    Record(Box<UsageRecord>),
    /// A stream that failed before its first byte: settle what it used.
    Stream(Box<relay::Books>),
}

impl Failed {
    pub fn refused(error: GatewayError, rec: UsageRecord, rate: RateHeaders) -> Failed {
        let status = error.wire().0.as_u16();
        Failed {
            failure: Failure::Status(status),
            error,
            retry_after: None,
            rate,
            closing: Closing::Record(Box::new(rec)),
        }
    }

    /// The attempt's log record (its target and retry fields are set by routing).
    pub fn record_mut(&mut self) -> &mut UsageRecord {
        match &mut self.closing {
            Closing::Record(r) => r,
            Closing::Stream(b) => b.record_mut(),
        }
    }

    /// The client's answer: the error, logged as the final attempt.
    pub fn render(self, state: &SharedState, started: Instant) -> Response {
        match self.closing {
            Closing::Record(rec) => relay::fail(state, *rec, started, self.error, self.rate),
            Closing::Stream(books) => {
                let trace = books.trace_id().to_owned();
                let mut resp = self.error.clone().into_response();
                decorate(&mut resp, &trace, &self.rate);
                books.fail(self.error);
                resp
            }
        }
    }

    /// Logged as an attempt the client did not get the answer of.
    pub fn supersede(mut self, state: &SharedState, started: Instant) {
        self.record_mut().superseded = true;
        match self.closing {
            Closing::Record(rec) => relay::log_failure(state, *rec, started, &self.error),
            Closing::Stream(books) => books.fail(self.error),
        }
    }
}

/// The wait an upstream asked for before another try.
fn asked_wait(e: &ProviderError) -> Option<Duration> {
    match e {
        ProviderError::Upstream { retry_after, .. } => *retry_after,
        _ => None,
    }
}

/// How an adapter failure counts for routing: the upstream's status, or no
/// answer at all (a timeout counts as 408, as Portkey's does).
fn provider_failure(e: &ProviderError) -> Failure {
    match e {
        ProviderError::Upstream { status, .. } => Failure::Status(*status),
        ProviderError::Unsupported(_) => Failure::Status(400),
        ProviderError::Timeout => Failure::NoAnswer(tollgate_core::routing::TIMEOUT_STATUS),
        _ => Failure::NoAnswer(502),
    }
}

/// One governed attempt: admit the worst case against every limit of its
/// target, send, and relay the answer (settling and logging it). A failure
/// comes back unlogged with its reservation released or settled. With
/// `hold_first`, a stream is answered only once its first frame arrived, so
/// that a stream failing before its first byte can still fall back.
pub async fn attempt(
    state: &SharedState,
    prep: Prepared,
    rec: UsageRecord,
    started: Instant,
    hold_first: bool,
) -> Attempt {
    let checks = applicable_checks(&prep);
    let demand = worst_case(&prep, &checks);
    let reservation = match crate::limits::admit(state, &checks, demand).await {
        Ok(r) => r,
        Err(e) => return Attempt::Failed(Box::new(Failed::refused(e, rec, RateHeaders::default()))),
    };
    let rate_headers = reservation.headers();
    let call = Call {
        endpoint: prep.endpoint,
        target: Target {
            base_url: prep.base_url.as_deref(),
            config: &prep.route.integration.record.configurations,
            secrets: &prep.route.integration.secrets,
            headers: &prep.headers,
            model: &prep.model,
        },
        body: &prep.body,
        stream: prep.stream,
        client_wants_usage: prep.client_wants_usage,
        timeout: prep.timeout,
    };
    let upstream_started = Instant::now();
    let sent = state.adapters.send(prep.route.integration.spec.protocol, call).await;
    match sent {
        Err(e) => {
            crate::limits::release(state, reservation).await;
            Attempt::Failed(Box::new(Failed {
                failure: provider_failure(&e),
                retry_after: asked_wait(&e),
                error: upstream_error(e),
                rate: rate_headers,
                closing: Closing::Record(Box::new(rec)),
            }))
        }
        Ok(UpstreamResponse::Whole { status, body, usage }) => Attempt::Answered(
            relay::whole(
                state,
                rec,
                &prep,
                reservation,
                started,
                upstream_started,
                status,
                body,
                usage,
            )
            .await,
        ),
        Ok(UpstreamResponse::Stream(stream)) => {
            let relayed = relay::stream(state.clone(), rec, prep, reservation, started, upstream_started, stream);
            if !hold_first {
                return Attempt::Answered(relayed.respond());
            }
            match relayed.first().await {
                Ok(relayed) => Attempt::Answered(relayed.respond()),
                Err((books, e)) => Attempt::Failed(Box::new(Failed {
                    failure: provider_failure(&e),
                    retry_after: asked_wait(&e),
                    error: upstream_error(e),
                    rate: rate_headers,
                    closing: Closing::Stream(Box::new(books)),
                })),
            }
        }
    }
}

/// Every limit that applies: integration × workspace, provider, API key,
/// workspace, in that order (the first to refuse is the one reported).
fn applicable_checks(prep: &Prepared) -> Vec<LimitCheck> {
    let ws = &prep.route.provider.workspace_id;
    let ws_checks = prep.snap.workspace_checks(ws);
    let mut checks = Vec::with_capacity(prep.route.checks.len() + prep.key.checks.len() + ws_checks.len());
    checks.extend_from_slice(&prep.route.checks);
    checks.extend_from_slice(&prep.key.checks);
    checks.extend_from_slice(ws_checks);
    checks
}

/// The request's worst case against the limits that apply: prompt tokens
/// (an upper bound) plus the most output it can produce, and their cost.
/// Only token and cost limits need it; with none, the tokenizer is not run.
fn worst_case(prep: &Prepared, checks: &[LimitCheck]) -> Demand {
    let needs_tokens = checks.iter().any(|c| match c.rule {
        Rule::Budget { .. } => true,
        Rule::Rate(r) => r.kind == RateKind::Tokens,
    });
    if !needs_tokens {
        return Demand::default();
    }
    let prompt = tokens::prompt_upper_bound(prep.endpoint, &prep.body, prep.tokenizer);
    Demand {
        tokens: prompt + prep.max_output,
        cost: prep
            .price
            .map(|p| p.input.cost(prompt).saturating_add(p.output.cost(prep.max_output)))
            .unwrap_or(Money::ZERO),
    }
}

/// Maps an adapter failure to the gateway error API.md prescribes.
pub fn upstream_error(e: ProviderError) -> GatewayError {
    match e {
        ProviderError::Upstream { status, message, .. } if (400..500).contains(&status) => {
            GatewayError::UpstreamClient { status, message }
        }
        ProviderError::Upstream { status, message, .. } => {
            GatewayError::Upstream(format!("upstream returned {status}: {message}"))
        }
        ProviderError::Timeout => GatewayError::Timeout,
        ProviderError::Unsupported(m) => invalid(m, None),
        other => GatewayError::Upstream(other.to_string()),
    }
}

/// Authenticates and authorises the caller for the gateway.
pub fn gateway_key(snap: &Snapshot, now: DateTime<Utc>, headers: &HeaderMap) -> Result<Arc<KeyEntry>, GatewayError> {
    let key = auth::authenticate(snap, now, headers)
        .map_err(|f: AuthFailure| GatewayError::Authentication(f.message().into()))?;
    if key.record.key_type != KeyType::Workspace {
        return Err(GatewayError::Permission(
            "organisation admin keys manage the control plane; call the gateway with a workspace API key".into(),
        ));
    }
    if !auth::grants(&key.record.scopes, "completions.write") {
        return Err(GatewayError::Permission(
            "this API key lacks the 'completions.write' scope".into(),
        ));
    }
    Ok(key)
}

/// What is known about a request before a target is chosen: the caller,
/// and the settings that hold whichever target answers.
pub struct Parsed {
    /// The control plane this request is resolved against, start to end.
    pub snap: Arc<Snapshot>,
    pub key: Arc<KeyEntry>,
    pub workspace_id: String,
    pub endpoint: Endpoint,
    /// The request timeout (`x-portkey-request-timeout`, else the server's).
    pub timeout: Duration,
    pub log_bodies: bool,
    /// The request names its provider itself (`x-portkey-provider` or an
    /// `@slug/` model), so a default config does not apply.
    pub names_provider: bool,
}

/// What a config target adds to the request: its provider, parameters and
/// timeout. The default (nothing) resolves the request as sent.
#[derive(Default, Clone, Copy)]
pub struct Pick<'a> {
    /// The provider slug (without `@`).
    pub provider: Option<&'a str>,
    pub override_params: Option<&'a serde_json::Map<String, Value>>,
    pub timeout: Option<Duration>,
}

/// Authenticates the caller and reads the request: no I/O.
fn parse(
    state: &SharedState,
    endpoint: Endpoint,
    headers: &HeaderMap,
    raw: &Bytes,
    rec: &mut UsageRecord,
) -> Result<(Parsed, Value), GatewayError> {
    let snap = state.snapshot();
    let key = gateway_key(&snap, state.now(), headers)?;
    rec.api_key_id = Some(key.record.id.clone());
    let workspace_id = key.record.workspace_id.clone().unwrap_or_default();
    rec.workspace_id = Some(workspace_id.clone());
    rec.metadata = metadata(headers)?;
    let timeout = match headers.get("x-portkey-request-timeout") {
        None => Duration::from_millis(state.config.request_timeout_ms),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
            .ok_or_else(|| {
                invalid(
                    "x-portkey-request-timeout must be a positive number of milliseconds",
                    None,
                )
            })?,
    };
    let body: Value =
        serde_json::from_slice(raw).map_err(|e| invalid(format!("request body is not valid JSON: {e}"), None))?;
    let obj = body
        .as_object()
        .ok_or_else(|| invalid("request body must be a JSON object", None))?;
    let names_provider = headers.contains_key("x-portkey-provider")
        || obj
            .get("model")
            .and_then(Value::as_str)
            .is_some_and(|m| m.starts_with('@'));
    let log_bodies = snap.workspaces.get(&workspace_id).is_some_and(|w| w.log_bodies);
    Ok((
        Parsed {
            snap,
            key,
            workspace_id,
            endpoint,
            timeout,
            log_bodies,
            names_provider,
        },
        body,
    ))
}

/// Resolves the request for one target, all from the snapshot (no I/O):
/// the target's parameters, the provider (the target's, else
/// `x-portkey-provider`, else `@slug/model`), access, the model policy
/// (412 before anything is sent), the price, the tokenizer and the most
/// output the request can produce.
fn resolve(
    state: &SharedState,
    parsed: &Parsed,
    mut body: Value,
    headers: &HeaderMap,
    pick: Pick<'_>,
    rec: &mut UsageRecord,
) -> Result<Prepared, GatewayError> {
    let endpoint = parsed.endpoint;
    let snap = &parsed.snap;
    let workspace_id = parsed.workspace_id.as_str();
    if let (Some(o), Some(params)) = (body.as_object_mut(), pick.override_params) {
        for (k, v) in params {
            o.insert(k.clone(), v.clone());
        }
    }
    let Some(obj) = body.as_object() else {
        return Err(invalid("request body must be a JSON object", None));
    };
    let model_field = obj
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| invalid("'model' is required: use '@provider/model'", Some("model")))?;
    let required = match endpoint {
        Endpoint::ChatCompletions => "messages",
        Endpoint::Completions => "prompt",
        Endpoint::Embeddings => "input",
    };
    match obj.get(required) {
        Some(Value::Array(a)) if endpoint == Endpoint::ChatCompletions && a.is_empty() => {
            return Err(invalid("'messages' must not be empty", Some("messages")))
        }
        Some(Value::Array(_)) => {}
        Some(Value::String(_)) if endpoint != Endpoint::ChatCompletions => {}
        _ => return Err(invalid(format!("'{required}' is required"), Some(required))),
    }
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("'stream' must be a boolean", Some("stream"))),
    };
    if stream && endpoint == Endpoint::Embeddings {
        return Err(invalid("embeddings cannot be streamed", Some("stream")));
    }
    let max_tokens = match obj.get("max_completion_tokens").or_else(|| obj.get("max_tokens")) {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| invalid("'max_tokens' must be a non-negative integer", Some("max_tokens")))?,
        ),
    };
    let client_wants_usage = obj
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);

    // Resolution: the target's provider, else the x-portkey-provider header,
    // else `@slug/model`.
    let (slug, model) = match pick.provider {
        Some(slug) => (slug, strip_provider(model_field)),
        None => resolve_names(headers, model_field)?,
    };
    let Some(route) = snap.route(workspace_id, slug).cloned() else {
        // An integration of that slug exists but was never provisioned here.
        if snap.integration_by_slug(slug).is_some() {
            return Err(GatewayError::Permission(format!(
                "provider '@{slug}' is not provisioned to this workspace"
            )));
        }
        return Err(GatewayError::NotFound(format!(
            "provider '@{slug}' not found in this workspace"
        )));
    };
    let integration = &route.integration;
    rec.provider_slug = Some(route.provider.slug.clone());
    rec.integration_id = Some(integration.record.id.clone());
    rec.integration_slug = Some(integration.record.slug.clone());
    rec.ai_provider_id = Some(integration.record.ai_provider_id.clone());
    rec.model = Some(model.to_owned());
    rec.streamed = stream;
    if route.access.is_none() {
        return Err(GatewayError::Permission(format!(
            "provider '@{slug}' is not provisioned to this workspace"
        )));
    }
    if integration.record.status != tollgate_core::records::IntegrationStatus::Active {
        return Err(GatewayError::Permission(format!(
            "the integration behind '@{slug}' is archived"
        )));
    }
    if route.provider.expires_at.is_some_and(|t| t <= state.now()) {
        return Err(GatewayError::Permission(format!("provider '@{slug}' has expired")));
    }

    // Model policy: the integration's allow-list, then the workspace's.
    let entry = integration.models.get(model);
    let allowed = match entry {
        Some(e) => e.enabled,
        None => integration.record.allow_all_models,
    };
    if !allowed {
        return Err(GatewayError::ModelNotAllowed(format!(
            "model '{model}' is not allowed for integration '{}'",
            integration.record.slug
        )));
    }
    if route.workspace_models.as_ref().is_some_and(|m| !m.contains(model)) {
        return Err(GatewayError::ModelNotAllowed(format!(
            "model '{model}' is not enabled for this workspace"
        )));
    }

    // Price and tokenizer: the model's own, else its base model's catalogue entry.
    let provider_id = integration.record.ai_provider_id.as_str();
    let catalogue_model = entry.and_then(|e| e.base_model_slug.as_deref()).unwrap_or(model);
    let info = snap
        .prices
        .model(provider_id, catalogue_model)
        .or_else(|| snap.prices.model(provider_id, model));
    let price = entry.and_then(|e| e.price).or_else(|| info.map(|i| i.price));
    let tokenizer = info.map(|i| i.tokenizer).unwrap_or_default();
    let max_output = match endpoint {
        Endpoint::Embeddings => 0,
        _ => max_tokens
            .or_else(|| info.and_then(|i| i.max_output_tokens))
            .unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS),
    };
    let base_url = entry
        .and_then(|e| e.custom_host.clone())
        .or_else(|| integration.record.custom_host().map(str::to_owned))
        .or_else(|| match integration.spec.protocol {
            Protocol::OpenAi | Protocol::Anthropic | Protocol::Google => integration.spec.default_base_url.clone(),
            _ => None,
        });
    let headers = entry.map(|e| e.custom_headers.clone()).unwrap_or_default();
    let model = model.to_owned();
    if let Some(o) = body.as_object_mut() {
        o.insert("model".into(), Value::String(model.clone()));
    }
    Ok(Prepared {
        snap: snap.clone(),
        key: parsed.key.clone(),
        route,
        body,
        model,
        stream,
        client_wants_usage,
        endpoint,
        price,
        tokenizer,
        max_output,
        base_url,
        headers,
        timeout: pick.timeout.unwrap_or(parsed.timeout),
        log_bodies: parsed.log_bodies,
    })
}

/// The model of a string that may name a provider (`@slug/model` → `model`).
fn strip_provider(model: &str) -> &str {
    model
        .strip_prefix('@')
        .and_then(|m| m.split_once('/'))
        .map(|(_, m)| m)
        .filter(|m| !m.is_empty())
        .unwrap_or(model)
}

/// `(provider slug, model)` from the header or the model string.
fn resolve_names<'a>(headers: &'a HeaderMap, model: &'a str) -> Result<(&'a str, &'a str), GatewayError> {
    if let Some(h) = headers.get("x-portkey-provider") {
        let h = h
            .to_str()
            .map_err(|_| invalid("x-portkey-provider must be text", None))?;
        let slug = h.trim().trim_start_matches('@');
        if slug.is_empty() {
            return Err(invalid(
                "x-portkey-provider must name a provider, e.g. @openai-prod",
                None,
            ));
        }
        // A model string that repeats the provider is accepted too.
        let model = model
            .strip_prefix('@')
            .and_then(|m| m.strip_prefix(slug))
            .and_then(|m| m.strip_prefix('/'))
            .unwrap_or(model);
        return Ok((slug, model));
    }
    let Some(rest) = model.strip_prefix('@') else {
        return Err(GatewayError::NotFound(format!(
            "model '{model}' names no provider: use '@provider/model' or the x-portkey-provider header"
        )));
    };
    match rest.split_once('/') {
        Some((slug, m)) if !slug.is_empty() && !m.is_empty() => Ok((slug, m)),
        _ => Err(GatewayError::NotFound(format!(
            "model string '{model}' is not of the form '@provider/model'"
        ))),
    }
}

/// `x-portkey-metadata`: a JSON object of strings.
fn metadata(headers: &HeaderMap) -> Result<Option<serde_json::Map<String, Value>>, GatewayError> {
    let Some(v) = headers.get("x-portkey-metadata") else {
        return Ok(None);
    };
    let bad = || invalid("x-portkey-metadata must be a JSON object of strings", None);
    let m: serde_json::Map<String, Value> = serde_json::from_slice(v.as_bytes()).map_err(|_| bad())?;
    if m.values().any(|v| !v.is_string()) || m.len() > 64 {
        return Err(bad());
    }
    Ok(Some(m))
}

/// Adds `x-portkey-trace-id` and the `x-ratelimit-*` headers.
pub fn decorate(resp: &mut Response, trace_id: &str, rate: &RateHeaders) {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(trace_id) {
        h.insert("x-portkey-trace-id", v);
    }
    for (kind, figures) in [("requests", rate.requests), ("tokens", rate.tokens)] {
        if let Some(f) = figures {
            h.insert(header_name("limit", kind), HeaderValue::from(f.limit));
            h.insert(header_name("remaining", kind), HeaderValue::from(f.remaining));
            if let Ok(v) = HeaderValue::from_str(&format!("{}s", f.reset_secs)) {
                h.insert(header_name("reset", kind), v);
            }
        }
    }
}

fn header_name(what: &str, kind: &str) -> axum::http::HeaderName {
    match (what, kind) {
        ("limit", "requests") => axum::http::HeaderName::from_static("x-ratelimit-limit-requests"),
        ("remaining", "requests") => axum::http::HeaderName::from_static("x-ratelimit-remaining-requests"),
        ("reset", "requests") => axum::http::HeaderName::from_static("x-ratelimit-reset-requests"),
        ("limit", _) => axum::http::HeaderName::from_static("x-ratelimit-limit-tokens"),
        ("remaining", _) => axum::http::HeaderName::from_static("x-ratelimit-remaining-tokens"),
        _ => axum::http::HeaderName::from_static("x-ratelimit-reset-tokens"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_from_header_or_model_string() {
        let mut h = HeaderMap::new();
        assert_eq!(
            resolve_names(&h, "@openai-prod/gpt-4o").unwrap(),
            ("openai-prod", "gpt-4o")
        );
        assert_eq!(
            resolve_names(&h, "@t/meta-llama/Llama-3").unwrap(),
            ("t", "meta-llama/Llama-3")
        );
        assert!(matches!(resolve_names(&h, "gpt-4o"), Err(GatewayError::NotFound(_))));
        assert!(matches!(resolve_names(&h, "@nomodel"), Err(GatewayError::NotFound(_))));
        assert!(matches!(resolve_names(&h, "@/x"), Err(GatewayError::NotFound(_))));
        h.insert("x-portkey-provider", "@prod".parse().unwrap());
        assert_eq!(resolve_names(&h, "gpt-4o").unwrap(), ("prod", "gpt-4o"));
        assert_eq!(resolve_names(&h, "@prod/gpt-4o").unwrap(), ("prod", "gpt-4o"));
        h.insert("x-portkey-provider", "@".parse().unwrap());
        assert!(matches!(
            resolve_names(&h, "gpt-4o"),
            Err(GatewayError::InvalidRequest { .. })
        ));
    }

    #[test]
    fn metadata_must_be_an_object_of_strings() {
        let mut h = HeaderMap::new();
        assert_eq!(metadata(&h).unwrap(), None);
        h.insert("x-portkey-metadata", r#"{"team":"a"}"#.parse().unwrap());
        assert_eq!(metadata(&h).unwrap().unwrap()["team"], "a");
        h.insert("x-portkey-metadata", r#"{"n":1}"#.parse().unwrap());
        assert!(metadata(&h).is_err());
        h.insert("x-portkey-metadata", "nope".parse().unwrap());
        assert!(metadata(&h).is_err());
    }

    #[test]
    fn upstream_errors_map_as_api_md_says() {
        let e = upstream_error(ProviderError::Upstream {
            status: 429,
            message: "slow down".into(),
            retry_after: None,
        });
        assert_eq!(
            e,
            GatewayError::UpstreamClient {
                status: 429,
                message: "slow down".into()
            }
        );
        assert!(matches!(
            upstream_error(ProviderError::Upstream {
                status: 503,
                message: "x".into(),
                retry_after: None,
            }),
            GatewayError::Upstream(_)
        ));
        assert_eq!(upstream_error(ProviderError::Timeout), GatewayError::Timeout);
        assert!(matches!(
            upstream_error(ProviderError::Unreachable("x".into())),
            GatewayError::Upstream(_)
        ));
        assert!(matches!(
            upstream_error(ProviderError::Unsupported("x".into())),
            GatewayError::InvalidRequest { .. }
        ));
    }
}
