//! The gateway (data plane): `POST /v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings`, `/v1/responses` (and `GET /v1/responses/{id}`),
//! `/v1/messages` (and `/v1/messages/count_tokens`), `GET /v1/models` and
//! `GET /v1/models/{id}`. The API called ([`dialect::Api`]) decides how the
//! body becomes the upstream call and how the answer is shaped; the pipeline
//! below is the same for all of them.
//!
//! One request's path, top to bottom in [`handle`]:
//! 1. `parse`: authenticate the workspace key and read the body; then
//!    `resolve` for the target: resolve the provider, check access and the
//!    model policy, decide between a native relay and a translation, work out
//!    the price and the worst case — all from the in-memory snapshot.
//! 2. [`attempt`], one governed attempt: admit the worst case against every
//!    applicable limit, send through the protocol's adapter (credentials
//!    opened inside it), relay the answer ([`relay`]: whole, or streamed
//!    chunk by chunk), settle the reservation with the actual usage and log.
//!
//! With a routing config, [`routing`] walks its targets, each one a
//! `resolve` + [`attempt`].

pub mod count;
pub mod dialect;
pub mod models;
pub mod native;
pub mod relay;
pub mod routing;

use self::dialect::{Api, Shape};
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
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_core::admission::{Demand, LimitCheck, RateHeaders, Rule};
use tollgate_core::catalogue::{Protocol, Tokenizer};
use tollgate_core::ids::{is_valid_model_id, MAX_MODEL_ID_LEN, MAX_SLUG_LEN};
use tollgate_core::limits::RateKind;
use tollgate_core::money::Money;
use tollgate_core::records::KeyType;
use tollgate_core::routing::Failure;
use tollgate_core::token_usage::ModelPrice;
use tollgate_providers::chat::{Body, ChatRequest};
use tollgate_providers::{tokens, Call, Endpoint, ProviderError, Target, UpstreamResponse};
use tollgate_store::request_log::LogRecord;

pub fn router() -> Router<SharedState> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/responses", post(responses))
        .route("/v1/responses/{id}", get(native::get_response))
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(native::count_tokens))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{*id}", get(models::retrieve))
}

async fn chat_completions(State(state): State<SharedState>, headers: HeaderMap, body: Bytes) -> Response {
    handle(state, Api::OpenAi(Endpoint::ChatCompletions), headers, body).await
}

async fn completions(State(state): State<SharedState>, headers: HeaderMap, body: Bytes) -> Response {
    handle(state, Api::OpenAi(Endpoint::Completions), headers, body).await
}

async fn embeddings(State(state): State<SharedState>, headers: HeaderMap, body: Bytes) -> Response {
    handle(state, Api::OpenAi(Endpoint::Embeddings), headers, body).await
}

async fn responses(State(state): State<SharedState>, headers: HeaderMap, body: Bytes) -> Response {
    handle(state, Api::Responses, headers, body).await
}

async fn messages(State(state): State<SharedState>, headers: HeaderMap, body: Bytes) -> Response {
    handle(state, Api::Messages, headers, body).await
}

/// The name an endpoint is logged under.
pub fn endpoint_name(e: Endpoint) -> &'static str {
    match e {
        Endpoint::ChatCompletions => "chat.completions",
        Endpoint::Completions => "completions",
        Endpoint::Embeddings => "embeddings",
        Endpoint::Responses => "responses",
        Endpoint::Messages => "messages",
    }
}

/// Output tokens assumed for the worst case when neither the request nor
/// the catalogue bounds them.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 4096;
/// The most output tokens a request may ask for (`max_tokens`,
/// `max_completion_tokens`, `max_output_tokens`): far above any model's, far
/// below anything that could overflow the worst-case arithmetic.
pub const MAX_OUTPUT_TOKENS: u64 = 100_000_000;
/// The most choices (`n`) a request may ask for.
pub const MAX_CHOICES: u64 = 128;
/// Longest accepted `x-portkey-trace-id`.
const MAX_TRACE_ID: usize = 128;

/// Everything worked out about a request before it is admitted.
pub struct Prepared {
    /// The control plane this request was resolved against, start to end.
    pub snap: Arc<Snapshot>,
    pub key: Arc<KeyEntry>,
    pub route: Arc<Route>,
    /// The request body, a chat request typed (shared, so that large
    /// prompts can be counted off the async workers without a copy).
    pub body: Arc<Body>,
    /// Its size in bytes as received.
    pub body_len: usize,
    /// The API the client called, and how its answer is shaped.
    pub api: Api,
    pub shape: Shape,
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

/// The trace id of a request: the client's, or a new one. A new one is a
/// UUID v7, which begins with its time: the request log's index of trace
/// ids then grows at its end, as its other indexes do, instead of taking
/// each id on a random page (up to 600,000 rows, a row cost 40-45 µs to
/// write with these, 61-73 µs and growing with random ones: the
/// `log_growth` example of `tollgate-store`, docs/PERFORMANCE.md).
fn trace_id(headers: &HeaderMap) -> String {
    headers
        .get("x-portkey-trace-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= MAX_TRACE_ID)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

/// One gateway request, start to finish: without a routing config, one
/// governed attempt; with one, [`routing::run`] walks its targets, each
/// attempt governed the same way.
///
/// The request's state machine is tens of kilobytes; it lives in one heap
/// allocation, so that the router's layers, which each move the future
/// they wrap, move a pointer rather than copy it four times per request.
pub async fn handle(state: SharedState, api: Api, headers: HeaderMap, body: Bytes) -> Response {
    Box::pin(handle_boxed(state, api, headers, body)).await
}

async fn handle_boxed(state: SharedState, api: Api, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    // Boxed, as the reservation's holds are: the record goes through every
    // step of the request, and into each step's future.
    let mut rec = Box::new(LogRecord {
        id: tollgate_core::ids::prefixed_id("req"),
        created_at: state.now(),
        trace_id: trace_id(&headers),
        endpoint: api.log_name().to_owned(),
        ..Default::default()
    });
    let (parsed, request) = match parse(&state, api, &headers, &body, &mut rec) {
        Ok(p) => p,
        Err(e) => return relay::fail(&state, api, rec, started, e, RateHeaders::default()),
    };
    if parsed.log_bodies {
        rec.request_body = Some(String::from_utf8_lossy(&body).into_owned());
    }
    match routing::plan_for(&parsed, &headers) {
        Err(e) => relay::fail(&state, api, rec, started, e, RateHeaders::default()),
        Ok(Some(plan)) => routing::run(&state, &parsed, &headers, &request, &plan, rec, started).await,
        Ok(None) => {
            let prep = match resolve(&state, &parsed, request, &headers, Pick::default(), &mut rec) {
                Ok(p) => p,
                Err(e) => return relay::fail(&state, api, rec, started, e, RateHeaders::default()),
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
    /// The API the client called: errors come in its shape.
    api: Api,
    closing: Closing,
}

/// How a failed attempt's books are closed.
enum Closing {
    /// Nothing reserved any more: log the record.
    Record(Box<LogRecord>),
    /// A stream that failed before its first byte: settle what it used.
    Stream(Box<relay::Books>),
}

impl Failed {
    pub fn refused(api: Api, error: GatewayError, rec: Box<LogRecord>, rate: RateHeaders) -> Failed {
        let status = error.wire().0.as_u16();
        Failed {
            failure: Failure::Status(status),
            error,
            retry_after: None,
            rate,
            api,
            closing: Closing::Record(rec),
        }
    }

    /// The attempt's log record (its target and retry fields are set by routing).
    pub fn record_mut(&mut self) -> &mut LogRecord {
        match &mut self.closing {
            Closing::Record(r) => r,
            Closing::Stream(b) => b.record_mut(),
        }
    }

    /// The client's answer: the error, logged as the final attempt.
    pub fn render(self, state: &SharedState, started: Instant) -> Response {
        match self.closing {
            Closing::Record(rec) => relay::fail(state, self.api, rec, started, self.error, self.rate),
            Closing::Stream(books) => {
                let trace = books.trace_id().to_owned();
                let mut resp = self.api.error_response(self.error.clone());
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
            Closing::Record(rec) => relay::log_failure(state, rec, started, &self.error),
            Closing::Stream(books) => books.fail(self.error),
        }
    }
}

/// The wait an upstream asked for before another try; an HTTP date is read
/// against the gateway's clock.
fn asked_wait(state: &SharedState, e: &ProviderError) -> Option<Duration> {
    match e {
        ProviderError::Upstream {
            retry_after: Some(asked),
            ..
        } => Some(asked.wait(state.now())),
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
    rec: Box<LogRecord>,
    started: Instant,
    hold_first: bool,
) -> Attempt {
    let api = prep.api;
    let checks = applicable_checks(&prep);
    let demand = worst_case(&prep, &checks).await;
    let reservation =
        match crate::limit_check::admit(state, &prep.route.provider_record.workspace_id, &checks, demand).await {
            Ok(r) => r,
            Err((e, rate)) => return Attempt::Failed(Box::new(Failed::refused(api, e, rec, rate))),
        };
    let rate_headers = reservation.headers();
    // From here until the upstream answers, a client that goes away leaves
    // a 499 record and settles what was sent.
    let waiting = relay::Waiting::new(state, rec, reservation, started, &prep);
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
    let Some((rec, reservation)) = waiting.answered() else {
        return Attempt::Answered(GatewayError::Internal("a request's books were closed twice".into()).into_response());
    };
    match sent {
        // The upstream answered 2xx, but not readably: it was billed. The
        // failure paths' futures are boxed: rare, and the request's state
        // machine (moved at every await) stays small.
        Err(e @ ProviderError::InvalidResponse(_)) => Attempt::Answered(
            Box::pin(relay::unreadable(
                state,
                rec,
                &prep,
                reservation,
                started,
                upstream_started,
                upstream_error(e),
            ))
            .await,
        ),
        Err(e) => {
            Box::pin(crate::limit_check::release(state, reservation)).await;
            Attempt::Failed(Box::new(Failed {
                failure: provider_failure(&e),
                retry_after: asked_wait(state, &e),
                error: upstream_error(e),
                rate: rate_headers,
                api,
                closing: Closing::Record(rec),
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
            match Box::pin(relayed.first()).await {
                Ok(relayed) => Attempt::Answered(relayed.respond()),
                Err((books, e)) => Attempt::Failed(Box::new(Failed {
                    failure: provider_failure(&e),
                    retry_after: asked_wait(state, &e),
                    error: upstream_error(e),
                    rate: rate_headers,
                    api,
                    closing: Closing::Stream(Box::new(books)),
                })),
            }
        }
    }
}

/// Every limit that applies: integration × workspace, provider, API key,
/// workspace, in that order (the first to refuse is the one reported).
fn applicable_checks(prep: &Prepared) -> Vec<LimitCheck> {
    let ws = &prep.route.provider_record.workspace_id;
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
async fn worst_case(prep: &Prepared, checks: &[LimitCheck]) -> Demand {
    let needs_tokens = checks.iter().any(|c| match c.rule {
        Rule::Budget { .. } => true,
        Rule::Rate(r) => r.kind == RateKind::Tokens,
    });
    if !needs_tokens {
        return Demand::default();
    }
    let (endpoint, body, tokenizer) = (prep.endpoint, prep.body.clone(), prep.tokenizer);
    let prompt = count::tokens(prep.body_len, move || {
        tokens::prompt_upper_bound(endpoint, &body, tokenizer)
    })
    .await;
    Demand {
        tokens: prompt.saturating_add(prep.max_output),
        cost: prep
            .price
            .map(|p| p.input.cost(prompt).saturating_add(p.output.cost(prep.max_output)))
            .unwrap_or(Money::ZERO),
    }
}

/// Maps an adapter failure to the gateway error API.md prescribes. An
/// unreachable upstream is logged at warn: its message names the host and
/// the cause, which the operator can act on.
pub fn upstream_error(e: ProviderError) -> GatewayError {
    if let ProviderError::Unreachable(cause) = &e {
        tracing::warn!(cause = %cause, "upstream unreachable");
    }
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
    /// The API the client called.
    pub api: Api,
    /// The body's size in bytes as received.
    pub body_len: usize,
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
    api: Api,
    headers: &HeaderMap,
    raw: &Bytes,
    rec: &mut LogRecord,
) -> Result<(Parsed, Body), GatewayError> {
    let snap = state.snapshot();
    let key = gateway_key(&snap, state.now(), headers)?;
    rec.api_key_id = Some(key.record.id.clone());
    let workspace_id = key.record.workspace_id.clone().unwrap_or_default();
    rec.workspace_id = Some(workspace_id.clone());
    rec.metadata = metadata(headers)?;
    // The client may shorten the server's own deadline, never lengthen it.
    let cap = state.config.request_timeout_ms;
    let timeout = match headers.get("x-portkey-request-timeout") {
        None => Duration::from_millis(cap),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map(|ms| Duration::from_millis(ms.min(cap)))
            .ok_or_else(|| {
                invalid(
                    "x-portkey-request-timeout must be a positive number of milliseconds",
                    None,
                )
            })?,
    };
    let body = read_body(api, raw)?;
    let names_provider = headers.contains_key("x-portkey-provider") || body.model().is_some_and(|m| m.starts_with('@'));
    let log_bodies = snap.workspaces.get(&workspace_id).is_some_and(|w| w.log_bodies);
    Ok((
        Parsed {
            snap,
            key,
            workspace_id,
            api,
            body_len: raw.len(),
            timeout,
            log_bodies,
            names_provider,
        },
        body,
    ))
}

/// The body as its API reads it, parsed once: a chat request typed, any
/// other a JSON object.
fn read_body(api: Api, raw: &[u8]) -> Result<Body, GatewayError> {
    let not_json = |e: serde_json::Error| invalid(format!("request body is not valid JSON: {e}"), None);
    if api != Api::OpenAi(Endpoint::ChatCompletions) {
        let body: Value = serde_json::from_slice(raw).map_err(not_json)?;
        if !body.is_object() {
            return Err(invalid("request body must be a JSON object", None));
        }
        return Ok(Body::Json(body));
    }
    serde_json::from_slice::<ChatRequest>(raw)
        .map(Body::Chat)
        .map_err(|e| match e.classify() {
            serde_json::error::Category::Data => match serde_json::from_slice::<Value>(raw) {
                Ok(v) => mistyped(&v, &e),
                Err(e) => not_json(e),
            },
            _ => not_json(e),
        })
}

/// The body with a routing target's `override_params` set over its
/// fields; a chat request is read again, so that its fields stay typed.
fn with_params(body: Body, params: &serde_json::Map<String, Value>) -> Result<Body, GatewayError> {
    let (mut v, chat) = match body {
        Body::Chat(c) => (
            serde_json::to_value(c).map_err(|e| GatewayError::Internal(e.to_string()))?,
            true,
        ),
        Body::Json(v) => (v, false),
    };
    if let Value::Object(o) = &mut v {
        for (k, p) in params {
            o.insert(k.clone(), p.clone());
        }
    }
    if !chat {
        return Ok(Body::Json(v));
    }
    ChatRequest::deserialize(&v)
        .map(Body::Chat)
        .map_err(|e| mistyped(&v, &e))
}

/// The JSON object of a body that is not a chat request.
fn json_body(body: &Body) -> Result<&Value, GatewayError> {
    body.json()
        .filter(|v| v.is_object())
        .ok_or_else(|| invalid("request body must be a JSON object", None))
}

/// Why JSON that is not a chat request is refused: in the words of the
/// gateway's own checks where one of them refuses it (naming the field),
/// else serde's.
fn mistyped(v: &Value, e: &serde_json::Error) -> GatewayError {
    if !v.is_object() {
        return invalid("request body must be a JSON object", None);
    }
    let endpoint = Endpoint::ChatCompletions;
    let checked = model_field(v.get("model").and_then(Value::as_str))
        .and_then(|_| check_required(endpoint, v))
        .and_then(|_| json_limits(endpoint, v));
    match checked {
        Err(refused) => refused,
        Ok(_) => invalid(format!("invalid chat request: {e}"), None),
    }
}

/// The `model` a request names, required, and bounded before it is echoed
/// in any message or resolved.
fn model_field(model: Option<&str>) -> Result<&str, GatewayError> {
    let model = model
        .filter(|m| !m.is_empty())
        .ok_or_else(|| invalid("'model' is required: use '@provider/model'", Some("model")))?;
    if model.len() > MAX_MODEL_ID_LEN + MAX_SLUG_LEN + 2 || !model.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad_model_id());
    }
    Ok(model)
}

/// Resolves the request for one target, all from the snapshot (no I/O):
/// the target's parameters, the provider (the target's, else
/// `x-portkey-provider`, else `@slug/model`), access, the model policy
/// (412 before anything is sent), native relay or translation, the price,
/// the tokenizer and the most output the request can produce.
fn resolve(
    state: &SharedState,
    parsed: &Parsed,
    body: Body,
    headers: &HeaderMap,
    pick: Pick<'_>,
    rec: &mut LogRecord,
) -> Result<Prepared, GatewayError> {
    let api = parsed.api;
    let snap = parsed.snap.clone();
    let key = parsed.key.clone();
    let workspace_id = parsed.workspace_id.clone();
    let mut body = match pick.override_params {
        Some(params) => with_params(body, params)?,
        None => body,
    };
    let model_field = model_field(body.model())?;
    if let Api::OpenAi(endpoint) = api {
        match &body {
            Body::Chat(chat) => check_messages(chat)?,
            Body::Json(_) => check_required(endpoint, json_body(&body)?)?,
        }
    }

    let (route, model_name) = resolve_route(state, &snap, &workspace_id, headers, pick.provider, model_field, rec)?;
    let model = model_name.as_str();
    let slug = route.provider_record.slug.as_str();
    let integration = &route.integration;
    let entry = integration.models.get(model);
    // The API's request as the upstream call: relayed natively where the
    // provider speaks it, else translated to chat.
    let (endpoint, shape, client_wants_usage) = match api {
        Api::OpenAi(e) => (e, Shape::AsIs, body.wants_usage()),
        Api::Responses if Endpoint::Responses.native_on(integration.spec.protocol) => (
            Endpoint::Responses,
            Shape::NativeResponses {
                workspace: workspace_id.clone(),
                provider: route.provider_record.slug.clone(),
            },
            false,
        ),
        Api::Responses => {
            let r = tollgate_providers::dialects::responses::ResponsesRequest::parse(json_body(&body)?)
                .map_err(dialect::invalid)?;
            if r.previous_response_id.is_some() {
                return Err(invalid(
                    format!(
                        "previous_response_id needs a provider that stores responses (OpenAI, Azure OpenAI); '@{slug}' is {}: send the whole conversation as 'input' instead",
                        integration.record.ai_provider_id
                    ),
                    Some("previous_response_id"),
                ));
            }
            body = Body::Chat(r.to_chat().map_err(dialect::invalid)?);
            // The shaper needs the usage chunk to report usage.
            (Endpoint::ChatCompletions, Shape::Responses(Box::new(r.echo())), true)
        }
        Api::Messages if Endpoint::Messages.native_on(integration.spec.protocol) => {
            if body.get("max_tokens").is_none() {
                return Err(invalid("max_tokens: Field required", Some("max_tokens")));
            }
            (Endpoint::Messages, Shape::AsIs, false)
        }
        Api::Messages => {
            let m = tollgate_providers::dialects::messages::MessagesRequest::parse(json_body(&body)?)
                .map_err(dialect::invalid)?;
            body = Body::Chat(m.to_chat().map_err(dialect::invalid)?);
            (Endpoint::ChatCompletions, Shape::Messages, true)
        }
    };
    let (stream, max_tokens, choices) = stream_and_max_tokens(endpoint, &body)?;
    rec.streamed = stream;

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
            .unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS)
            .saturating_mul(choices),
    };
    let base_url = base_url(&route, model);
    let mut upstream_headers = entry.map(|e| e.custom_headers.clone()).unwrap_or_default();
    if endpoint == Endpoint::Messages {
        upstream_headers.extend(anthropic_headers(headers));
    }
    let model = model_name;
    match &mut body {
        Body::Chat(chat) => {
            chat.model.clone_from(&model);
            if stream {
                chat.ask_stream_usage();
            }
        }
        Body::Json(Value::Object(o)) => {
            o.insert("model".into(), Value::String(model.clone()));
        }
        Body::Json(_) => {}
    }
    Ok(Prepared {
        snap,
        key,
        route,
        body_len: parsed.body_len,
        body: Arc::new(body),
        api,
        shape,
        model,
        stream,
        client_wants_usage,
        endpoint,
        price,
        tokenizer,
        max_output,
        base_url,
        headers: upstream_headers,
        timeout: pick.timeout.unwrap_or(parsed.timeout),
        log_bodies: parsed.log_bodies,
    })
}

/// `custom_host` of the model, else of the integration, else the catalogue's.
pub fn base_url(route: &Route, model: &str) -> Option<String> {
    let integration = &route.integration;
    integration
        .models
        .get(model)
        .and_then(|e| e.custom_host.clone())
        .or_else(|| integration.record.custom_host().map(str::to_owned))
        .or_else(|| match integration.spec.protocol {
            Protocol::OpenAi | Protocol::Anthropic | Protocol::Google => integration.spec.default_base_url.clone(),
            _ => None,
        })
}

/// The client's `anthropic-version` and `anthropic-beta`, which a native
/// Messages relay passes on.
pub fn anthropic_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    ["anthropic-version", "anthropic-beta"]
        .into_iter()
        .filter_map(|name| {
            let v = headers.get(name)?.to_str().ok()?;
            Some((name.to_owned(), v.to_owned()))
        })
        .collect()
}

/// The field an OpenAI endpoint cannot do without (`body` untyped).
fn check_required(endpoint: Endpoint, body: &Value) -> Result<(), GatewayError> {
    let required = match endpoint {
        Endpoint::ChatCompletions => "messages",
        Endpoint::Completions => "prompt",
        _ => "input",
    };
    match body.get(required) {
        Some(Value::Array(a)) if endpoint == Endpoint::ChatCompletions && a.is_empty() => Err(no_messages()),
        Some(Value::Array(_)) => Ok(()),
        Some(Value::String(_)) if endpoint != Endpoint::ChatCompletions => Ok(()),
        _ => Err(missing(required)),
    }
}

/// A chat request's `messages`: present and not empty.
fn check_messages(chat: &ChatRequest) -> Result<(), GatewayError> {
    match &chat.messages {
        None => Err(missing("messages")),
        Some(m) if m.is_empty() => Err(no_messages()),
        Some(_) => Ok(()),
    }
}

fn missing(field: &'static str) -> GatewayError {
    invalid(format!("'{field}' is required"), Some(field))
}

fn no_messages() -> GatewayError {
    invalid("'messages' must not be empty", Some("messages"))
}

/// `stream`, the request's own bound on output tokens (`max_tokens` /
/// `max_completion_tokens`, the larger of the two; the Responses API's
/// `max_output_tokens`) and the number of choices `n`, each within bounds.
fn stream_and_max_tokens(endpoint: Endpoint, body: &Body) -> Result<(bool, Option<u64>, u64), GatewayError> {
    let chat = match body {
        Body::Chat(chat) => chat,
        Body::Json(v) => return json_limits(endpoint, v),
    };
    // Both are checked; the larger bounds the worst case whichever the
    // upstream heeds.
    let max_tokens = within(
        "max_completion_tokens",
        chat.max_completion_tokens,
        0,
        MAX_OUTPUT_TOKENS,
    )?
    .max(within("max_tokens", chat.max_tokens, 0, MAX_OUTPUT_TOKENS)?);
    let choices = within("n", chat.n, 1, MAX_CHOICES)?.unwrap_or(1);
    Ok((chat.stream.unwrap_or(false), max_tokens, choices))
}

/// [`stream_and_max_tokens`] of an untyped body.
fn json_limits(endpoint: Endpoint, body: &Value) -> Result<(bool, Option<u64>, u64), GatewayError> {
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("'stream' must be a boolean", Some("stream"))),
    };
    if stream && endpoint == Endpoint::Embeddings {
        return Err(invalid("embeddings cannot be streamed", Some("stream")));
    }
    let Some(obj) = body.as_object() else {
        return Err(invalid("request body must be a JSON object", None));
    };
    let max_tokens = match endpoint {
        Endpoint::Responses => bounded(obj, "max_output_tokens", 0, MAX_OUTPUT_TOKENS)?,
        Endpoint::Messages => bounded(obj, "max_tokens", 0, MAX_OUTPUT_TOKENS)?,
        _ => bounded(obj, "max_completion_tokens", 0, MAX_OUTPUT_TOKENS)?.max(bounded(
            obj,
            "max_tokens",
            0,
            MAX_OUTPUT_TOKENS,
        )?),
    };
    let choices = bounded(obj, "n", 1, MAX_CHOICES)?.unwrap_or(1);
    Ok((stream, max_tokens, choices))
}

fn bad_model_id() -> GatewayError {
    invalid(
        format!(
            "'model' must be at most {MAX_MODEL_ID_LEN} characters of printable ASCII without spaces, e.g. '@provider/model'"
        ),
        Some("model"),
    )
}

/// The integer field `name` of the body, if present (`null` counts as absent),
/// which must lie in `min..=max`.
fn bounded(
    obj: &serde_json::Map<String, Value>,
    name: &'static str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, GatewayError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| out_of_bounds(name, min, max))
            .and_then(|n| within(name, Some(n), min, max)),
    }
}

/// `value` of the field `name`, if any, which must lie in `min..=max`.
fn within(name: &'static str, value: Option<u64>, min: u64, max: u64) -> Result<Option<u64>, GatewayError> {
    match value {
        Some(n) if !(min..=max).contains(&n) => Err(out_of_bounds(name, min, max)),
        _ => Ok(value),
    }
}

fn out_of_bounds(name: &str, min: u64, max: u64) -> GatewayError {
    invalid(format!("'{name}' must be an integer from {min} to {max}"), Some(name))
}

/// The route of a request (header or `@slug/model`) and the model as the
/// upstream knows it, with every check of access and model policy; fills in
/// the record's provider fields as soon as they are known.
pub fn resolve_route(
    state: &SharedState,
    snap: &Snapshot,
    workspace_id: &str,
    headers: &HeaderMap,
    provider: Option<&str>,
    model_field: &str,
    rec: &mut LogRecord,
) -> Result<(Arc<Route>, String), GatewayError> {
    // Resolution: a routing target's provider, else the x-portkey-provider
    // header, else `@slug/model`.
    let (slug, model) = match provider {
        Some(slug) => (slug, strip_provider(model_field)),
        None => resolve_names(headers, model_field)?,
    };
    if !is_valid_model_id(model) {
        return Err(bad_model_id());
    }
    let Some(route) = snap.route(workspace_id, slug).cloned() else {
        // An organisation integration not provisioned here is refused as
        // such; another workspace's answers as an unknown slug does, so
        // that its existence is not revealed.
        if snap
            .integration_by_slug(slug)
            .is_some_and(|i| i.record.workspace_id.is_none())
        {
            return Err(GatewayError::Permission(format!(
                "provider '@{slug}' is not provisioned to this workspace"
            )));
        }
        return Err(GatewayError::NotFound(format!(
            "provider '@{slug}' not found in this workspace"
        )));
    };
    let integration = &route.integration;
    rec.provider_slug = Some(route.provider_record.slug.clone());
    rec.integration_id = Some(integration.record.id.clone());
    rec.integration_slug = Some(integration.record.slug.clone());
    rec.ai_provider_id = Some(integration.record.ai_provider_id.clone());
    rec.model = Some(model.to_owned());
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
    if route.provider_record.expires_at.is_some_and(|t| t <= state.now()) {
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

    let model = model.to_owned();
    Ok((route, model))
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
    fn trace_ids_are_the_clients_or_new_ones_in_time_order() {
        let mut h = HeaderMap::new();
        let ids: Vec<String> = (0..64).map(|_| trace_id(&h)).collect();
        for id in &ids {
            let u = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(u.get_version(), Some(uuid::Version::SortRand), "{id}");
        }
        // Each sorts after the one before, as index keys that grow at the end.
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        h.insert("x-portkey-trace-id", HeaderValue::from_static("client-trace-1"));
        assert_eq!(trace_id(&h), "client-trace-1");
        // Empty or too long: a new one instead.
        h.insert("x-portkey-trace-id", HeaderValue::from_static(""));
        assert!(uuid::Uuid::parse_str(&trace_id(&h)).is_ok());
        let long = "t".repeat(MAX_TRACE_ID + 1);
        h.insert("x-portkey-trace-id", HeaderValue::from_str(&long).unwrap());
        assert!(uuid::Uuid::parse_str(&trace_id(&h)).is_ok());
    }

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

    /// The message and `param` of a 400.
    fn refusal(e: GatewayError) -> (String, Option<String>) {
        match e {
            GatewayError::InvalidRequest { message, param } => (message, param),
            other => panic!("not a 400: {other:?}"),
        }
    }

    fn chat_body(v: Value) -> Result<Body, GatewayError> {
        read_body(Api::OpenAi(Endpoint::ChatCompletions), &serde_json::to_vec(&v).unwrap())
    }

    #[test]
    fn a_chat_body_is_read_typed_and_refused_naming_the_field() {
        let ok =
            chat_body(serde_json::json!({"model": "@a/b", "messages": [{"role": "user", "content": "x"}], "top_k": 3}));
        let Ok(Body::Chat(chat)) = ok else { panic!("typed") };
        assert_eq!(
            (chat.model.as_str(), &chat.extra["top_k"]),
            ("@a/b", &serde_json::json!(3))
        );
        let chat_api = Api::OpenAi(Endpoint::ChatCompletions);
        assert!(refusal(read_body(chat_api, b"{oops").unwrap_err())
            .0
            .contains("not valid JSON"));
        assert_eq!(
            refusal(read_body(chat_api, b"[1]").unwrap_err()).0,
            "request body must be a JSON object"
        );
        let m = serde_json::json!([{"role": "user", "content": "x"}]);
        for (body, param) in [
            (serde_json::json!({"model": 5, "messages": m}), Some("model")),
            (serde_json::json!({"model": "@a/b", "messages": {}}), Some("messages")),
            (
                serde_json::json!({"model": "@a/b", "messages": m, "stream": "yes"}),
                Some("stream"),
            ),
            (
                serde_json::json!({"model": "@a/b", "messages": m, "max_tokens": "10"}),
                Some("max_tokens"),
            ),
            (
                serde_json::json!({"model": "@a/b", "messages": m, "max_completion_tokens": -1}),
                Some("max_completion_tokens"),
            ),
            (serde_json::json!({"model": "@a/b", "messages": m, "n": 1.5}), Some("n")),
            (
                serde_json::json!({"model": "@a/b", "messages": [{"role": "user", "content": 5}]}),
                None,
            ),
            (
                serde_json::json!({"model": "@a/b", "messages": m, "temperature": "hot"}),
                None,
            ),
        ] {
            let (message, got) = refusal(chat_body(body.clone()).unwrap_err());
            assert_eq!(got.as_deref(), param, "{body}: {message}");
            if param.is_none() {
                assert!(message.starts_with("invalid chat request: "), "{message}");
            }
        }
        // Other APIs keep their JSON.
        let b = read_body(Api::OpenAi(Endpoint::Embeddings), br#"{"input": 5}"#).unwrap();
        assert_eq!(b.get("input"), Some(&serde_json::json!(5)));
        assert!(read_body(Api::Responses, b"3").is_err());
    }

    #[test]
    fn a_targets_params_stay_typed() {
        let body = chat_body(
            serde_json::json!({"model": "@a/b", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5}),
        )
        .unwrap();
        let params = serde_json::json!({"max_tokens": 7, "top_k": 1});
        let Ok(Body::Chat(chat)) = with_params(body.clone(), params.as_object().unwrap()) else {
            panic!("typed")
        };
        assert_eq!(
            (chat.max_tokens, &chat.extra["top_k"]),
            (Some(7), &serde_json::json!(1))
        );
        let bad = serde_json::json!({"n": "x"});
        let (_, param) = refusal(with_params(body, bad.as_object().unwrap()).unwrap_err());
        assert_eq!(param.as_deref(), Some("n"));
        let json = with_params(
            Body::Json(serde_json::json!({"input": "x"})),
            params.as_object().unwrap(),
        )
        .unwrap();
        assert_eq!(json.get("max_tokens"), Some(&serde_json::json!(7)));
    }

    #[test]
    fn typed_limits_are_bounded_like_json_ones() {
        let limits = |v: Value| {
            let Ok(body @ Body::Chat(_)) = chat_body(v.clone()) else {
                panic!("typed")
            };
            let typed = stream_and_max_tokens(Endpoint::ChatCompletions, &body).map_err(refusal);
            assert_eq!(
                typed,
                json_limits(Endpoint::ChatCompletions, &v).map_err(refusal),
                "{v}"
            );
            typed
        };
        let m = serde_json::json!([]);
        assert_eq!(limits(serde_json::json!({"messages": m})), Ok((false, None, 1)));
        assert_eq!(
            limits(serde_json::json!({"stream": true, "max_tokens": 9, "max_completion_tokens": 4, "n": 128})),
            Ok((true, Some(9), 128))
        );
        for bad in [
            serde_json::json!({"n": 0}),
            serde_json::json!({"n": 129}),
            serde_json::json!({"max_tokens": MAX_OUTPUT_TOKENS + 1}),
            serde_json::json!({"max_completion_tokens": u64::MAX}),
        ] {
            assert!(limits(bad).is_err());
        }
        assert!(check_messages(&ChatRequest::default()).is_err());
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

#[cfg(test)]
mod future_size {
    use super::*;

    fn size_of_future<A, B, C, D, F: std::future::Future>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// What the router's layers move per request stays small: they used to
    /// copy the whole request state machine four times per request. The
    /// boxed state machine is still copied once into its box, and each
    /// nested future is moved into its parent when awaited, so the rare
    /// paths (failures, alerts) are boxed where they are awaited (12.3 KB
    /// before that, 8.7 KB after), and so are the request's record and the
    /// reservation's holds, which every step carries (2.3 KB since).
    #[test]
    fn the_handler_future_the_layers_move_is_small() {
        let whole = size_of_future(handle_boxed);
        let moved = size_of_future(handle);
        assert!(moved <= 512, "{moved} bytes");
        assert!(whole > 8 * moved, "the boxed state machine: {whole} bytes");
        assert!(whole <= 3 * 1024, "the boxed state machine grew to {whole} bytes");
    }
}
