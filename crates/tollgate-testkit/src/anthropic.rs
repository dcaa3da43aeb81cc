//! Mock Anthropic Messages API (`POST /v1/messages`): checks `x-api-key`,
//! `anthropic-version`, `max_tokens`, role alternation and tool-result
//! pairing as the real API does, and answers whole messages or the real
//! event stream (text or tool_use). Its base URL is `http://127.0.0.1:PORT/v1`.

use crate::control::{self, Control};
use crate::openai::{before_answer, halves, json_response, next_id, sse_response, take};
use crate::{Journal, MockServer};
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use std::sync::Arc;

/// Configuration of the Anthropic mock.
#[derive(Debug, Clone)]
pub struct AnthropicMock {
    /// The key `x-api-key` must carry.
    pub api_key: String,
    pub control: Control,
}

impl Default for AnthropicMock {
    fn default() -> Self {
        Self {
            api_key: "sk-ant-test".into(),
            control: Control::default(),
        }
    }
}

#[derive(Clone)]
struct AppState {
    journal: Journal,
    config: Arc<AnthropicMock>,
}

/// Starts the Anthropic mock on a free port.
pub async fn start(config: AnthropicMock) -> std::io::Result<MockServer> {
    let journal = Journal::default();
    MockServer::start(router(config, journal.clone()), journal).await
}

/// The mock's routes for a long-running process (`tollgate mock-upstream
/// --protocol anthropic`): requests are checked as usual but not kept.
pub fn standalone_router(config: AnthropicMock) -> Router {
    let journal = Journal::default();
    crate::forgetful(router(config, journal.clone()), journal)
}

fn router(config: AnthropicMock, journal: Journal) -> Router {
    let state = AppState {
        journal,
        config: Arc::new(config),
    };
    Router::new()
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .fallback(|| async { anthropic_error(404, "Not found") })
        .with_state(state)
}

/// The base URL clients use: `http://127.0.0.1:PORT/v1`.
pub fn base_url(server: &MockServer) -> String {
    format!("{}/v1", server.url())
}

/// Anthropic's error body, typed by status as the API does.
pub fn anthropic_error(status: u16, message: &str) -> Response {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    json_response(
        status,
        &json!({"type": "error", "error": {"type": kind, "message": message}}),
    )
}

/// What the real API rejects in a request body, as its message.
fn validate(body: &Value) -> Result<(), String> {
    if body.get("model").and_then(Value::as_str).is_none() {
        return Err("model: Field required".into());
    }
    if body.get("max_tokens").and_then(Value::as_u64).is_none() {
        return Err("max_tokens: Field required".into());
    }
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("messages: Field required")?;
    if messages.is_empty() {
        return Err("messages: at least one message is required".into());
    }
    let mut previous: Option<&Value> = None;
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        if role != "user" && role != "assistant" {
            return Err(format!("messages.{i}.role: Input should be 'user' or 'assistant'"));
        }
        if let Some(p) = previous {
            if p.get("role").and_then(Value::as_str) == Some(role) {
                return Err(format!(
                    "messages: roles must alternate between \"user\" and \"assistant\", but found multiple \"{role}\" roles in a row"
                ));
            }
        }
        match m.get("content") {
            Some(Value::String(s)) if !s.is_empty() => {}
            Some(Value::Array(blocks)) if !blocks.is_empty() => {
                for (j, block) in blocks.iter().enumerate() {
                    check_block(block, previous).map_err(|e| format!("messages.{i}.content.{j}: {e}"))?;
                }
            }
            _ => return Err(format!("messages.{i}: all messages must have non-empty content")),
        }
        previous = Some(m);
    }
    Ok(())
}

fn check_block(block: &Value, previous: Option<&Value>) -> Result<(), String> {
    match block.get("type").and_then(Value::as_str) {
        Some("text") => match block.get("text").and_then(Value::as_str) {
            Some(t) if !t.is_empty() => Ok(()),
            _ => Err("text content blocks must be non-empty".into()),
        },
        Some("tool_result") => {
            let id = block.get("tool_use_id").and_then(Value::as_str).unwrap_or_default();
            let used = previous
                .and_then(|p| p.get("content"))
                .and_then(Value::as_array)
                .is_some_and(|c| {
                    c.iter()
                        .any(|b| b.get("type") == Some(&json!("tool_use")) && b.get("id") == Some(&json!(id)))
                });
            if used {
                Ok(())
            } else {
                Err(format!("unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."))
            }
        }
        Some("tool_use") | Some("image") => Ok(()),
        _ => Err("Input tag does not match any of the expected tags".into()),
    }
}

/// The tool the mock calls: `tool_choice` `any`/`tool`, or `auto` (the
/// default) when the last user turn is not only tool results.
fn tool_to_call(body: &Value) -> Option<(String, String)> {
    let tools = body.get("tools")?.as_array()?;
    let first = tools.first()?;
    let tool = match body.pointer("/tool_choice/type").and_then(Value::as_str) {
        Some("none") => return None,
        Some("any") => first,
        Some("tool") => {
            let name = body.pointer("/tool_choice/name")?.as_str()?;
            tools
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some(name))?
        }
        _ => {
            let last = body.get("messages")?.as_array()?.last()?;
            let only_results = last
                .get("content")
                .and_then(Value::as_array)
                .is_some_and(|c| c.iter().all(|b| b.get("type") == Some(&json!("tool_result"))));
            if only_results {
                return None;
            }
            first
        }
    };
    Some((
        tool.get("name")?.as_str()?.to_owned(),
        control::tool_arguments(tool.get("input_schema")).to_string(),
    ))
}

/// `POST /v1/messages/count_tokens`: the words of every text in the
/// system prompt, messages and tools (the mocks' deterministic count).
async fn count_tokens(State(state): State<AppState>, req: Request) -> Response {
    let rec = take(Some(&state.journal), req).await;
    match rec.header("x-api-key") {
        None => return anthropic_error(401, "x-api-key header is required"),
        Some(k) if k != state.config.api_key => return anthropic_error(401, "invalid x-api-key"),
        Some(_) => {}
    }
    if rec.header("anthropic-version").is_none() {
        return anthropic_error(400, "anthropic-version: header is required");
    }
    let body: Value = match serde_json::from_slice(&rec.body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return anthropic_error(400, "There was an error parsing the body of your request."),
    };
    if body.get("model").and_then(Value::as_str).is_none() {
        return anthropic_error(400, "model: Field required");
    }
    if !body.get("messages").is_some_and(Value::is_array) {
        return anthropic_error(400, "messages: Field required");
    }
    if body.get("max_tokens").is_some() {
        return anthropic_error(400, "max_tokens: Extra inputs are not permitted");
    }
    fn words(v: &Value) -> u64 {
        match v {
            Value::String(s) => control::words(s),
            Value::Array(a) => a.iter().map(words).sum(),
            Value::Object(o) => o
                .iter()
                .filter(|(k, _)| *k != "type" && *k != "role")
                .map(|(_, v)| words(v))
                .sum(),
            _ => 0,
        }
    }
    let n: u64 = ["system", "messages", "tools"]
        .iter()
        .filter_map(|k| body.get(*k))
        .map(words)
        .sum();
    json_response(200, &json!({ "input_tokens": n }))
}

async fn messages(State(state): State<AppState>, req: Request) -> Response {
    let rec = take(Some(&state.journal), req).await;
    let control = &state.config.control;
    match rec.header("x-api-key") {
        None => return anthropic_error(401, "x-api-key header is required"),
        Some(k) if k != state.config.api_key => return anthropic_error(401, "invalid x-api-key"),
        Some(_) => {}
    }
    if let Some((status, message)) = before_answer(control).await {
        return anthropic_error(status, &message);
    }
    if rec.header("anthropic-version").is_none() {
        return anthropic_error(400, "anthropic-version: header is required");
    }
    let body: Value = match serde_json::from_slice(&rec.body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return anthropic_error(400, "There was an error parsing the body of your request."),
    };
    if let Err(message) = validate(&body) {
        return anthropic_error(400, &message);
    }
    let model = body["model"].as_str().unwrap_or_default();
    let id = format!("msg_mock{}", next_id());
    let tool = tool_to_call(&body).map(|(name, args)| (format!("toolu_mock{}", next_id()), name, args));
    let u = control.usage();
    let reply = control.reply();
    // The control's usage is in OpenAI's terms: cached tokens are cache reads.
    let input = u.prompt.saturating_sub(u.cached);
    let stop_reason = if tool.is_some() { "tool_use" } else { "end_turn" };
    if body.get("stream").and_then(Value::as_bool) != Some(true) {
        let mut content = Vec::new();
        if let Some((tid, name, args)) = &tool {
            let input: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
            content.push(json!({"type": "tool_use", "id": tid, "name": name, "input": input}));
        } else {
            content.push(json!({"type": "text", "text": reply}));
        }
        return json_response(
            200,
            &json!({"id": id, "type": "message", "role": "assistant", "model": model, "content": content,
                    "stop_reason": stop_reason, "stop_sequence": null,
                    "usage": {"input_tokens": input, "output_tokens": u.completion,
                              "cache_creation_input_tokens": 0, "cache_read_input_tokens": u.cached}}),
        );
    }
    let event = |v: Value| {
        let name = v["type"].as_str().unwrap_or_default().to_owned();
        Bytes::from(format!("event: {name}\ndata: {v}\n\n"))
    };
    let mut frames = vec![event(json!({"type": "message_start", "message": {
        "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": input, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": u.cached, "output_tokens": 1}}}))];
    match &tool {
        Some((tid, name, args)) => {
            frames.push(event(json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "tool_use", "id": tid, "name": name, "input": {}}})));
            frames.push(event(json!({"type": "ping"})));
            let (head, tail) = halves(args);
            for part in ["", head, tail] {
                frames.push(event(json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": part}})));
            }
        }
        None => {
            frames.push(event(json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}})));
            frames.push(event(json!({"type": "ping"})));
            for p in control::pieces(&reply) {
                frames.push(event(json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": p}})));
            }
        }
    }
    frames.push(event(json!({"type": "content_block_stop", "index": 0})));
    frames.push(event(json!({"type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": null},
        "usage": {"output_tokens": u.completion}})));
    frames.push(event(json!({"type": "message_stop"})));
    sse_response(frames, control, |kind, message| {
        event(json!({"type": "error", "error": {"type": kind, "message": message}}))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(messages: Value) -> Value {
        json!({"model": "claude", "max_tokens": 10, "messages": messages})
    }

    #[test]
    fn validates_like_the_real_api() {
        assert!(validate(&req(json!([{"role": "user", "content": "hi"}]))).is_ok());
        assert!(validate(&json!({"model": "c", "messages": []}))
            .unwrap_err()
            .contains("max_tokens"));
        assert!(validate(&req(json!([]))).is_err());
        let twice = req(json!([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]));
        assert!(validate(&twice).unwrap_err().contains("alternate"));
        let system = req(json!([{"role": "system", "content": "a"}]));
        assert!(validate(&system).is_err());
        let empty_text = req(json!([{"role": "user", "content": [{"type": "text", "text": ""}]}]));
        assert!(validate(&empty_text).unwrap_err().contains("non-empty"));
        let orphan =
            req(json!([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "x"}]}]));
        assert!(validate(&orphan).unwrap_err().contains("tool_use_id"));
        let paired = req(json!([
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "w", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "x"}]}]));
        assert!(validate(&paired).is_ok());
        assert_eq!(tool_to_call(&paired), None);
    }

    #[test]
    fn calls_tools_when_asked() {
        let mut b = req(json!([{"role": "user", "content": "hi"}]));
        b["tools"] = json!([{"name": "a", "input_schema": {"type": "object", "properties": {"x": {"type": "boolean"}}}},
                            {"name": "b", "input_schema": {"type": "object"}}]);
        assert_eq!(tool_to_call(&b), Some(("a".into(), r#"{"x":true}"#.into())));
        b["tool_choice"] = json!({"type": "tool", "name": "b"});
        assert_eq!(tool_to_call(&b), Some(("b".into(), "{}".into())));
        b["tool_choice"] = json!({"type": "none"});
        assert_eq!(tool_to_call(&b), None);
    }
}
