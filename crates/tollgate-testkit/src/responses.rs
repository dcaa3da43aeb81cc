//! The OpenAI mock's Responses API: `POST /v1/responses` (whole and
//! streamed: text, function calls, `text.format` JSON schemas) and
//! `GET /v1/responses/{id}` for stored responses (`store` defaults to true,
//! as at OpenAI). `previous_response_id` must name a stored response.
//! Written from OpenAI's documented wire format, independently of the
//! gateway's translators, so that tests of one check the other.

use crate::control::{self, Control, MockUsage};
use crate::openai::{data_event, halves, json_response, next_id, openai_error, structured_reply, MOCK_CREATED};
use axum::body::Bytes;
use axum::response::Response;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Most responses kept for `GET /v1/responses/{id}`.
const MAX_STORED: usize = 10_000;

/// Stored responses by id, oldest forgotten first.
#[derive(Clone, Default)]
pub struct Stored(Arc<Mutex<Kept>>);

#[derive(Default)]
struct Kept {
    by_id: HashMap<String, Value>,
    order: VecDeque<String>,
}

impl Stored {
    fn put(&self, id: &str, r: &Value) {
        let mut g = self.0.lock();
        g.by_id.insert(id.to_owned(), r.clone());
        g.order.push_back(id.to_owned());
        while g.order.len() > MAX_STORED {
            if let Some(old) = g.order.pop_front() {
                g.by_id.remove(&old);
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<Value> {
        self.0.lock().by_id.get(id).cloned()
    }
}

/// The function call the mock makes: the first function tool (or the
/// named one), unless the input ends with a tool result or
/// `tool_choice` is `none`.
fn tool_to_call(body: &Value) -> Option<(String, String)> {
    let tools: Vec<&Value> = body
        .get("tools")?
        .as_array()?
        .iter()
        .filter(|t| t.get("type").and_then(Value::as_str) == Some("function"))
        .collect();
    let first = *tools.first()?;
    let tool = match body.get("tool_choice") {
        Some(Value::String(s)) if s == "none" => return None,
        Some(Value::String(s)) if s == "required" => first,
        Some(Value::Object(o)) => {
            let name = o.get("name")?.as_str()?;
            *tools
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some(name))?
        }
        _ => {
            let last_is_result = body
                .get("input")
                .and_then(Value::as_array)
                .and_then(|items| items.last())
                .and_then(|i| i.get("type"))
                .and_then(Value::as_str)
                == Some("function_call_output");
            if last_is_result {
                return None;
            }
            first
        }
    };
    Some((
        tool.get("name")?.as_str()?.to_owned(),
        control::tool_arguments(tool.get("parameters")).to_string(),
    ))
}

fn usage_json(u: &MockUsage) -> Value {
    json!({"input_tokens": u.prompt, "input_tokens_details": {"cached_tokens": u.cached},
           "output_tokens": u.completion, "output_tokens_details": {"reasoning_tokens": 0},
           "total_tokens": u.prompt + u.completion})
}

/// Answers `POST /v1/responses`.
pub(crate) fn create(body: &Value, control: &Control, stored: &Stored) -> Response {
    match body.get("input") {
        Some(Value::String(_) | Value::Array(_)) => {}
        _ => return crate::openai::missing("input"),
    }
    let previous = body.get("previous_response_id").and_then(Value::as_str);
    if let Some(p) = previous {
        if stored.get(p).is_none() {
            return openai_error(
                400,
                &format!("Previous response with id '{p}' not found."),
                "invalid_request_error",
                Some("previous_response_id"),
                Some("previous_response_not_found"),
            );
        }
    }
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let n = next_id();
    let id = format!("resp_mock{n}");
    let usage = control.usage();
    let tool = tool_to_call(body);
    let item = match &tool {
        Some((name, args)) => json!({"id": format!("fc_mock{n}"), "type": "function_call", "status": "completed",
            "call_id": format!("call_mock{n}"), "name": name, "arguments": args}),
        None => {
            let text = structured_reply(body.pointer("/text/format"), control);
            json!({"id": format!("msg_mock{n}"), "type": "message", "status": "completed", "role": "assistant",
                   "content": [{"type": "output_text", "text": text, "annotations": []}]})
        }
    };
    let response = |status: &str, output: Vec<Value>, usage: Option<Value>| {
        json!({"id": id, "object": "response", "created_at": MOCK_CREATED, "status": status, "error": null,
               "incomplete_details": null, "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
               "model": model, "output": output, "parallel_tool_calls": true, "previous_response_id": previous,
               "reasoning": {"effort": null, "summary": null}, "store": body.get("store").and_then(Value::as_bool).unwrap_or(true),
               "temperature": 1.0, "text": body.get("text").cloned().unwrap_or_else(|| json!({"format": {"type": "text"}})),
               "tool_choice": body.get("tool_choice").cloned().unwrap_or_else(|| json!("auto")),
               "tools": body.get("tools").cloned().unwrap_or_else(|| json!([])), "top_p": 1.0, "truncation": "disabled",
               "usage": usage, "user": null, "metadata": body.get("metadata").cloned().unwrap_or_else(|| json!({}))})
    };
    let done = response("completed", vec![item.clone()], Some(usage_json(&usage)));
    if body.get("store").and_then(Value::as_bool) != Some(false) {
        stored.put(&id, &done);
    }
    if body.get("stream").and_then(Value::as_bool) != Some(true) {
        return json_response(200, &done);
    }
    let mut seq = 0u64;
    let mut frames = Vec::new();
    let mut ev = |mut v: Value| {
        v["sequence_number"] = json!(seq);
        seq += 1;
        let name = v["type"].as_str().unwrap_or_default().to_owned();
        frames.push(data_event(Some(&name), &v));
    };
    ev(json!({"type": "response.created", "response": response("in_progress", vec![], None)}));
    ev(json!({"type": "response.in_progress", "response": response("in_progress", vec![], None)}));
    let item_id = item["id"].clone();
    match &tool {
        Some((_, args)) => {
            let mut open = item.clone();
            open["status"] = json!("in_progress");
            open["arguments"] = json!("");
            ev(json!({"type": "response.output_item.added", "output_index": 0, "item": open}));
            let (head, tail) = halves(args);
            for part in [head, tail] {
                ev(
                    json!({"type": "response.function_call_arguments.delta", "item_id": item_id, "output_index": 0, "delta": part}),
                );
            }
            ev(
                json!({"type": "response.function_call_arguments.done", "item_id": item_id, "output_index": 0, "arguments": args}),
            );
        }
        None => {
            let text = item["content"][0]["text"].as_str().unwrap_or_default().to_owned();
            ev(json!({"type": "response.output_item.added", "output_index": 0, "item":
                {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}}));
            ev(
                json!({"type": "response.content_part.added", "item_id": item_id, "output_index": 0, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []}}),
            );
            for p in control::pieces(&text) {
                ev(
                    json!({"type": "response.output_text.delta", "item_id": item_id, "output_index": 0, "content_index": 0, "delta": p}),
                );
            }
            ev(
                json!({"type": "response.output_text.done", "item_id": item_id, "output_index": 0, "content_index": 0, "text": text}),
            );
            ev(
                json!({"type": "response.content_part.done", "item_id": item_id, "output_index": 0, "content_index": 0,
                "part": {"type": "output_text", "text": text, "annotations": []}}),
            );
        }
    }
    ev(json!({"type": "response.output_item.done", "output_index": 0, "item": item}));
    ev(json!({"type": "response.completed", "response": done}));
    crate::openai::sse_response(frames, control, |kind, message| {
        data_event(
            Some("error"),
            &json!({"type": "error", "code": kind, "message": message, "param": null, "sequence_number": 0}),
        )
    })
}

/// Answers `GET /v1/responses/{id}`.
pub(crate) fn get(id: &str, stored: &Stored) -> Response {
    match stored.get(id) {
        Some(r) => json_response(200, &r),
        None => openai_error(
            404,
            &format!("Response with id '{id}' not found."),
            "invalid_request_error",
            None,
            None,
        ),
    }
}

/// An SSE event, with an `event:` line when named.
pub(crate) fn event_bytes(name: Option<&str>, v: &Value) -> Bytes {
    match name {
        Some(n) => Bytes::from(format!("event: {n}\ndata: {v}\n\n")),
        None => Bytes::from(format!("data: {v}\n\n")),
    }
}
