//! Mock OpenAI API (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings`, `/v1/models`) and the OpenAI-shaped answers the Azure
//! mock reuses, steered at run time by a shared [`Control`]. This is also
//! what `tollgate mock-upstream` serves ([`serve_forever`]), so the default
//! path does no sleeping, and locks are held only to read the control,
//! never across an await.

use crate::control::{self, Control, MockUsage};
use crate::{record, Journal, MockServer, Recorded};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// `created` in every answer: fixed, so answers are reproducible.
pub const MOCK_CREATED: u64 = 1_700_000_000;

/// Configuration of the OpenAI mock.
#[derive(Debug, Clone, Default)]
pub struct OpenAiMock {
    /// The key `Authorization: Bearer` must carry; `None` accepts any or none
    /// (like a local server).
    pub api_key: Option<String>,
    pub control: Control,
}

#[derive(Clone)]
struct AppState {
    /// `None` when serving a benchmark: nothing accumulates.
    journal: Option<Journal>,
    control: Control,
    api_key: Option<Arc<str>>,
    /// Responses kept for `GET /v1/responses/{id}`.
    stored: crate::responses::Stored,
}

/// Starts the OpenAI mock on a free port; its base URL is [`base_url`].
pub async fn start(config: OpenAiMock) -> std::io::Result<MockServer> {
    let journal = Journal::default();
    MockServer::start(router(config, Some(journal.clone())), journal).await
}

/// The base URL clients use: `http://127.0.0.1:PORT/v1`.
pub fn base_url(server: &MockServer) -> String {
    format!("{}/v1", server.url())
}

/// The mock's routes. With `journal: None` requests are not recorded.
pub fn router(config: OpenAiMock, journal: Option<Journal>) -> Router {
    let state = AppState {
        journal,
        control: config.control,
        api_key: config.api_key.map(Arc::from),
        stored: crate::responses::Stored::default(),
    };
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/responses", post(responses))
        .route("/v1/responses/{id}", get(stored_response))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .with_state(state)
}

/// Serves the mock on `127.0.0.1:port` until the process ends, without a
/// journal and without a key check (`tollgate mock-upstream`).
pub async fn serve_forever(port: u16) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(
        listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        }),
        router(OpenAiMock::default(), None),
    )
    .await
}

/// Reads a request, recording it when a journal is kept.
pub(crate) async fn take(journal: Option<&Journal>, req: Request) -> Recorded {
    match journal {
        Some(j) => record(j, req).await,
        None => crate::read(req).await,
    }
}

/// A JSON response.
pub(crate) fn json_response(status: u16, body: &Value) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    r
}

/// OpenAI's error body.
pub(crate) fn openai_error(
    status: u16,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "param": param, "code": code}}),
    )
}

fn error_type(status: u16) -> &'static str {
    match status {
        401 => "invalid_request_error",
        429 => "rate_limit_exceeded",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

/// Waits the configured latency, then returns the configured failure, if any.
pub(crate) async fn before_answer(control: &Control) -> Option<(u16, String)> {
    control.delay().await;
    control.failure()
}

fn check_bearer(state: &AppState, req: &Recorded) -> Option<Response> {
    let expected = state.api_key.as_deref()?;
    match req.header("authorization").and_then(|h| h.strip_prefix("Bearer ")) {
        None => Some(openai_error(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            "invalid_request_error",
            None,
            None,
        )),
        Some(k) if k != expected => {
            let shown: String = k.chars().take(4).collect();
            Some(openai_error(
                401,
                &format!("Incorrect API key provided: {shown}****. You can find your API key at https://platform.openai.com/account/api-keys."),
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            ))
        }
        Some(_) => None,
    }
}

/// Parses the body as a JSON object, or answers OpenAI's 400.
// The error is the handler's answer; boxing it would only add noise.
#[allow(clippy::result_large_err)]
pub(crate) fn parse_body(req: &Recorded) -> Result<Value, Response> {
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(v) if v.is_object() => Ok(v),
        _ => Err(openai_error(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
            "invalid_request_error",
            None,
            None,
        )),
    }
}

/// OpenAI's 400 for a missing required parameter.
pub(crate) fn missing(param: &str) -> Response {
    openai_error(
        400,
        &format!("Missing required parameter: '{param}'."),
        "invalid_request_error",
        Some(param),
        Some("missing_required_parameter"),
    )
}

/// Everything before the answer: record, wait, injected error, key, body.
#[allow(clippy::result_large_err)]
async fn prologue(state: &AppState, req: Request) -> Result<Value, Response> {
    let rec = take(state.journal.as_ref(), req).await;
    if let Some(denied) = check_bearer(state, &rec) {
        return Err(denied);
    }
    if let Some((status, message)) = before_answer(&state.control).await {
        let mut resp = openai_error(status, &message, error_type(status), None, None);
        if let Some(ms) = state.control.retry_after_ms() {
            resp.headers_mut()
                .insert("retry-after-ms", axum::http::HeaderValue::from(ms));
        }
        if let Some(v) = state
            .control
            .retry_after()
            .and_then(|v| axum::http::HeaderValue::from_str(&v).ok())
        {
            resp.headers_mut().insert("retry-after", v);
        }
        return Err(resp);
    }
    let body = parse_body(&rec)?;
    if body.get("model").and_then(Value::as_str).is_none() {
        return Err(openai_error(
            400,
            "you must provide a model parameter",
            "invalid_request_error",
            None,
            None,
        ));
    }
    Ok(body)
}

async fn chat(State(state): State<AppState>, req: Request) -> Response {
    let body = match prologue(&state, req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !body.get("messages").is_some_and(Value::is_array) {
        return missing("messages");
    }
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    chat_answer(&body, &model, &state.control)
}

async fn responses(State(state): State<AppState>, req: Request) -> Response {
    match prologue(&state, req).await {
        Ok(body) => crate::responses::create(&body, &state.control, &state.stored),
        Err(r) => r,
    }
}

async fn stored_response(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    req: Request,
) -> Response {
    let rec = take(state.journal.as_ref(), req).await;
    if let Some(denied) = check_bearer(&state, &rec) {
        return denied;
    }
    crate::responses::get(&id, &state.stored)
}

async fn completions(State(state): State<AppState>, req: Request) -> Response {
    let body = match prologue(&state, req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if body.get("prompt").is_none() {
        return missing("prompt");
    }
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    completion_answer(&body, &model, &state.control)
}

async fn embeddings(State(state): State<AppState>, req: Request) -> Response {
    let body = match prologue(&state, req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    embeddings_answer(&body, &model, &state.control)
}

async fn models(State(state): State<AppState>, req: Request) -> Response {
    let rec = take(state.journal.as_ref(), req).await;
    if let Some(denied) = check_bearer(&state, &rec) {
        return denied;
    }
    let data: Vec<Value> = [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-3.5-turbo-instruct",
        "text-embedding-3-small",
    ]
    .iter()
    .map(|id| json!({"id": id, "object": "model", "created": MOCK_CREATED, "owned_by": "openai"}))
    .collect();
    json_response(200, &json!({"object": "list", "data": data}))
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

fn usage_json(u: &MockUsage) -> Value {
    json!({
        "prompt_tokens": u.prompt,
        "completion_tokens": u.completion,
        "total_tokens": u.prompt.saturating_add(u.completion),
        "prompt_tokens_details": {"cached_tokens": u.cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    })
}

/// A tool call the mock decides to make: `(name, arguments JSON)`.
///
/// It calls a tool when the request offers tools and asks for one: a named
/// `tool_choice` or `required`, or `auto` (the default) when the last
/// message comes from the user rather than a tool result.
pub fn tool_to_call(body: &Value) -> Option<(String, String)> {
    let tools = body.get("tools")?.as_array()?;
    let first = tools.first()?;
    let by_name = |name: &str| {
        tools
            .iter()
            .find(|t| t.pointer("/function/name").and_then(Value::as_str) == Some(name))
    };
    let tool = match body.get("tool_choice") {
        Some(Value::String(s)) if s == "none" => return None,
        Some(Value::String(s)) if s == "required" => first,
        Some(Value::Object(o)) => by_name(o.get("function")?.get("name")?.as_str()?)?,
        _ => {
            let last = body.get("messages")?.as_array()?.last()?;
            if last.get("role").and_then(Value::as_str) != Some("user") {
                return None;
            }
            first
        }
    };
    let f = tool.get("function")?;
    Some((
        f.get("name")?.as_str()?.to_owned(),
        control::tool_arguments(f.get("parameters")).to_string(),
    ))
}

/// An SSE body of `frames`. A cut keeps the first half and drops the
/// connection; an in-band failure (`fail_stream`) keeps the first half and
/// ends with `error` (OpenAI's error chunk, or an Anthropic `error` event).
pub(crate) fn sse_response(
    mut frames: Vec<Bytes>,
    control: &Control,
    error: impl FnOnce(&str, &str) -> Bytes,
) -> Response {
    if let Some((kind, message)) = control.stream_exception() {
        frames.truncate((frames.len() / 2).max(1));
        frames.push(error(&kind, &message));
    }
    control::stream_body(frames, control, "text/event-stream; charset=utf-8")
}

/// OpenAI's in-band stream error chunk.
fn stream_error(kind: &str, message: &str) -> Bytes {
    data(&json!({"error": {"message": message, "type": kind, "param": null, "code": null}}))
}

fn data(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// An SSE event with an optional `event:` line.
pub(crate) fn data_event(name: Option<&str>, v: &Value) -> Bytes {
    crate::responses::event_bytes(name, v)
}

fn include_usage(body: &Value) -> bool {
    body.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true)
}

fn is_stream(body: &Value) -> bool {
    body.get("stream").and_then(Value::as_bool) == Some(true)
}

/// A chat completion (whole or streamed) answering `body`.
pub(crate) fn chat_answer(body: &Value, model: &str, control: &Control) -> Response {
    let id = format!("chatcmpl-mock{}", next_id());
    let tool = tool_to_call(body);
    let call_id = format!("call_mock{}", next_id());
    let finish = if tool.is_some() { "tool_calls" } else { "stop" };
    let usage = control.usage();
    let reply = structured_reply(body.get("response_format"), control);
    // `n` choices, each the same answer.
    let n = body.get("n").and_then(Value::as_u64).unwrap_or(1).clamp(1, 16);
    if !is_stream(body) {
        let message = match &tool {
            Some((name, args)) => json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}]}),
            None => json!({"role": "assistant", "content": reply, "refusal": null}),
        };
        let choices: Vec<Value> = (0..n)
            .map(|i| json!({"index": i, "message": message, "logprobs": null, "finish_reason": finish}))
            .collect();
        return json_response(
            200,
            &json!({"id": id, "object": "chat.completion", "created": MOCK_CREATED, "model": model,
                    "system_fingerprint": "fp_mock",
                    "choices": choices,
                    "usage": usage_json(&usage)}),
        );
    }
    let with_usage = include_usage(body);
    let chunk = |delta: Value, finish: Option<&str>| {
        let choices: Vec<Value> = (0..n)
            .map(|i| json!({"index": i, "delta": delta, "logprobs": null, "finish_reason": finish}))
            .collect();
        let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": MOCK_CREATED, "model": model,
                           "system_fingerprint": "fp_mock",
                           "choices": choices});
        if with_usage {
            c["usage"] = Value::Null;
        }
        data(&c)
    };
    let mut frames = Vec::new();
    match &tool {
        Some((name, args)) => {
            frames.push(chunk(
                json!({"role": "assistant", "content": null, "tool_calls": [
                    {"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
                None,
            ));
            let (head, tail) = halves(args);
            for part in [head, tail] {
                frames.push(chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}),
                    None,
                ));
            }
        }
        None => {
            frames.push(chunk(
                json!({"role": "assistant", "content": "", "refusal": null}),
                None,
            ));
            for p in control::pieces(&reply) {
                frames.push(chunk(json!({ "content": p }), None));
            }
        }
    }
    frames.push(chunk(json!({}), Some(finish)));
    if with_usage {
        frames.push(data(
            &json!({"id": id, "object": "chat.completion.chunk", "created": MOCK_CREATED,
                                 "model": model, "system_fingerprint": "fp_mock", "choices": [],
                                 "usage": usage_json(&usage)}),
        ));
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    sse_response(frames, control, stream_error)
}

/// The answer's text: a minimal instance of a requested JSON schema
/// (`response_format` `json_schema`, or the Responses API's `text.format`),
/// a JSON object for `json_object`, else the control's reply.
pub(crate) fn structured_reply(format: Option<&Value>, control: &Control) -> String {
    let Some(f) = format else {
        return control.reply();
    };
    match f.get("type").and_then(Value::as_str) {
        Some("json_schema") => {
            // Chat nests the schema under `json_schema`; Responses does not.
            let schema = f
                .pointer("/json_schema/schema")
                .or_else(|| f.get("schema"))
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"}));
            control::schema_instance(&schema).to_string()
        }
        Some("json_object") => json!({ "reply": control.reply() }).to_string(),
        _ => control.reply(),
    }
}

/// `text` split in two at a character boundary (tool arguments arrive in
/// pieces).
pub(crate) fn halves(text: &str) -> (&str, &str) {
    let mid = text
        .char_indices()
        .nth(text.chars().count() / 2)
        .map_or(text.len(), |(i, _)| i);
    text.split_at(mid)
}

/// A text completion (whole or streamed).
pub(crate) fn completion_answer(body: &Value, model: &str, control: &Control) -> Response {
    let id = format!("cmpl-mock{}", next_id());
    let usage = control.usage();
    let reply = control.reply();
    if !is_stream(body) {
        return json_response(
            200,
            &json!({"id": id, "object": "text_completion", "created": MOCK_CREATED, "model": model,
                    "choices": [{"text": reply, "index": 0, "logprobs": null, "finish_reason": "stop"}],
                    "usage": usage_json(&usage)}),
        );
    }
    let chunk = |text: &str, finish: Option<&str>| {
        data(
            &json!({"id": id, "object": "text_completion", "created": MOCK_CREATED, "model": model,
                     "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]}),
        )
    };
    let mut frames: Vec<Bytes> = control::pieces(&reply).iter().map(|p| chunk(p, None)).collect();
    frames.push(chunk("", Some("stop")));
    if include_usage(body) {
        frames.push(data(
            &json!({"id": id, "object": "text_completion", "created": MOCK_CREATED, "model": model,
                                 "choices": [], "usage": usage_json(&usage)}),
        ));
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    sse_response(frames, control, stream_error)
}

/// Embeddings: one deterministic 8-dimension vector per input.
pub(crate) fn embeddings_answer(body: &Value, model: &str, control: &Control) -> Response {
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if !items.is_empty() => items.iter().map(Value::to_string).collect(),
        _ => return missing("input"),
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| json!({"object": "embedding", "index": i, "embedding": control::embedding(text, 8)}))
        .collect();
    let u = control.usage().prompt;
    json_response(
        200,
        &json!({"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": u, "total_tokens": u}}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decides_tool_calls_like_a_model_would() {
        let tools = json!([{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}},
            {"type": "function", "function": {"name": "noop"}}]);
        let user = json!([{"role": "user", "content": "hi"}]);
        let after_tool =
            json!([{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "c", "content": "x"}]);
        let call = |messages: &Value, choice: Option<Value>| {
            let mut b = json!({"messages": messages, "tools": tools});
            if let Some(c) = choice {
                b["tool_choice"] = c;
            }
            tool_to_call(&b)
        };
        assert_eq!(
            call(&user, None),
            Some(("get_weather".into(), r#"{"city":"mock","days":1}"#.into()))
        );
        assert_eq!(call(&after_tool, None), None);
        assert_eq!(
            call(&after_tool, Some(json!("required"))).map(|c| c.0),
            Some("get_weather".into())
        );
        assert_eq!(call(&user, Some(json!("none"))), None);
        assert_eq!(
            call(&user, Some(json!({"type": "function", "function": {"name": "noop"}}))),
            Some(("noop".into(), "{}".into()))
        );
        assert_eq!(tool_to_call(&json!({"messages": user})), None);
    }

    #[test]
    fn halves_split_at_character_boundaries() {
        assert_eq!(halves("abcd"), ("ab", "cd"));
        assert_eq!(halves("\u{e9}\u{e9}\u{e9}"), ("\u{e9}", "\u{e9}\u{e9}"));
        assert_eq!(halves(""), ("", ""));
    }
}
