//! Anthropic's Messages API (`POST /v1/messages`) ↔ OpenAI chat, for
//! providers other than Anthropic.
//!
//! Request: `system` (string or text blocks), `messages` with text, image,
//! `tool_use` and `tool_result` blocks, custom `tools`, `tool_choice`,
//! `max_tokens`, `temperature`, `top_p`, `stop_sequences`, `metadata.user_id`.
//! Answer: a `message` object, or Anthropic's stream events
//! (`message_start`, `content_block_start`, `content_block_delta` with
//! `text_delta` / `input_json_delta`, `content_block_stop`, `message_delta`
//! with usage, `message_stop`).

use super::{
    function_tool, id_part, invalid, push_event, put_sampling, put_stream, shape_frame, text_of, typed, ChatCompletion,
    ChatUsage, ChunkEvents, ChunkStream, Invalid, StreamShaper, ToolDelta,
};
use crate::chat::ChatRequest;
use serde::Deserialize;
use serde_json::{json, Map, Number, Value};

/// A Messages API request, as far as translation reads it.
#[derive(Debug, Deserialize)]
pub struct MessagesRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<InMessage>,
    #[serde(default)]
    pub system: Option<Value>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub temperature: Option<Number>,
    #[serde(default)]
    pub top_p: Option<Number>,
    #[serde(default)]
    pub stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub tools: Option<Vec<InTool>>,
    #[serde(default)]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default)]
    pub metadata: Option<Metadata>,
    /// `top_k`, `thinking`, `service_tier`, ...: not translated.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
pub struct InMessage {
    pub role: String,
    pub content: Value,
}

#[derive(Debug, Deserialize)]
pub struct InTool {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub input_schema: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct ToolChoice {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub disable_parallel_tool_use: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub user_id: Option<String>,
}

/// One content block of a message.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    Image {
        source: ImageSource,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        #[serde(default)]
        content: Value,
        #[serde(default)]
        is_error: Option<bool>,
    },
    /// Earlier thinking is not replayed to other providers.
    Thinking {},
    RedactedThinking {},
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ImageSource {
    Base64 {
        media_type: String,
        data: String,
    },
    Url {
        url: String,
    },
    #[serde(other)]
    Other,
}

impl MessagesRequest {
    pub fn parse(body: &Value) -> Result<Self, Invalid> {
        Self::deserialize(body).map_err(|e| invalid(format!("invalid Messages request: {e}"), None))
    }

    pub fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }

    /// The equivalent OpenAI chat request (`model` set by the gateway).
    pub fn to_chat(&self) -> Result<ChatRequest, Invalid> {
        let mut messages = Vec::new();
        match &self.system {
            None | Some(Value::Null) => {}
            Some(s @ (Value::String(_) | Value::Array(_))) => {
                let text = text_of(s);
                if !text.is_empty() {
                    messages.push(json!({"role": "system", "content": text}));
                }
            }
            Some(_) => {
                return Err(invalid(
                    "system must be a string or a list of text blocks",
                    Some("system"),
                ))
            }
        }
        if self.messages.is_empty() {
            return Err(invalid("messages: at least one message is required", Some("messages")));
        }
        for m in &self.messages {
            push_message(&mut messages, m)?;
        }
        let mut out = Map::new();
        out.insert("model".into(), json!(self.model.clone().unwrap_or_default()));
        out.insert("messages".into(), Value::Array(messages));
        let max = self
            .max_tokens
            .ok_or_else(|| invalid("max_tokens: Field required", Some("max_tokens")))?;
        out.insert("max_tokens".into(), max.into());
        put_sampling(&mut out, self.temperature.as_ref(), self.top_p.as_ref());
        if let Some(s) = self.stop_sequences.as_ref().filter(|s| !s.is_empty()) {
            out.insert("stop".into(), json!(s));
        }
        if let Some(u) = self.metadata.as_ref().and_then(|m| m.user_id.as_ref()) {
            out.insert("user".into(), json!(u));
        }
        let has_tools = self.tools.as_ref().is_some_and(|t| !t.is_empty());
        if let Some(tools) = self.tools.as_ref().filter(|t| !t.is_empty()) {
            out.insert(
                "tools".into(),
                Value::Array(tools.iter().map(chat_tool).collect::<Result<_, _>>()?),
            );
        }
        if let Some(c) = &self.tool_choice {
            let choice = match c.kind.as_str() {
                "auto" => json!("auto"),
                "any" => json!("required"),
                "none" => json!("none"),
                "tool" => {
                    let name = c
                        .name
                        .as_deref()
                        .ok_or_else(|| invalid("tool_choice of type tool needs a name", Some("tool_choice")))?;
                    json!({"type": "function", "function": {"name": name}})
                }
                other => {
                    return Err(invalid(
                        format!("tool_choice type '{other}' is not supported"),
                        Some("tool_choice"),
                    ))
                }
            };
            if has_tools {
                out.insert("tool_choice".into(), choice);
                if c.disable_parallel_tool_use == Some(true) {
                    out.insert("parallel_tool_calls".into(), false.into());
                }
            }
        }
        put_stream(&mut out, self.is_stream());
        typed(out)
    }
}

fn blocks(content: &Value) -> Result<Vec<Block>, Invalid> {
    match content {
        Value::String(s) => Ok(vec![Block::Text { text: s.clone() }]),
        Value::Array(_) => Vec::<Block>::deserialize(content)
            .map_err(|e| invalid(format!("invalid content block: {e}"), Some("messages"))),
        _ => Err(invalid(
            "content must be a string or a list of blocks",
            Some("messages"),
        )),
    }
}

fn push_message(messages: &mut Vec<Value>, m: &InMessage) -> Result<(), Invalid> {
    let blocks = blocks(&m.content)?;
    match m.role.as_str() {
        "user" => {
            // Tool results first (they answer the assistant's calls), then the rest.
            let mut parts = Vec::new();
            for b in blocks {
                match b {
                    Block::ToolResult {
                        tool_use_id,
                        content,
                        is_error,
                    } => {
                        let mut text = text_of(&content);
                        if is_error == Some(true) {
                            text = format!("Error: {text}");
                        }
                        messages.push(json!({"role": "tool", "tool_call_id": tool_use_id, "content": text}));
                    }
                    Block::Text { text } => parts.push(json!({"type": "text", "text": text})),
                    Block::Image { source } => parts.push(image_part(source)?),
                    Block::ToolUse { .. } => {
                        return Err(invalid(
                            "tool_use blocks belong to assistant messages",
                            Some("messages"),
                        ))
                    }
                    Block::Thinking {} | Block::RedactedThinking {} => {}
                    Block::Other => {
                        return Err(invalid(
                            "this content block type is not supported for this provider",
                            Some("messages"),
                        ))
                    }
                }
            }
            if !parts.is_empty() {
                let content = if parts.iter().all(|p| p["type"] == "text") {
                    json!(parts
                        .iter()
                        .filter_map(|p| p["text"].as_str())
                        .collect::<Vec<_>>()
                        .join("\n"))
                } else {
                    Value::Array(parts)
                };
                messages.push(json!({"role": "user", "content": content}));
            }
        }
        "assistant" => {
            let mut text = String::new();
            let mut calls = Vec::new();
            for b in blocks {
                match b {
                    Block::Text { text: t } => text.push_str(&t),
                    Block::ToolUse { id, name, input } => {
                        let args = if input.is_null() {
                            "{}".to_owned()
                        } else {
                            input.to_string()
                        };
                        calls
                            .push(json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}));
                    }
                    Block::Thinking {} | Block::RedactedThinking {} => {}
                    _ => {
                        return Err(invalid(
                            "assistant messages hold text and tool_use blocks",
                            Some("messages"),
                        ))
                    }
                }
            }
            let mut msg = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
            if !calls.is_empty() {
                msg["tool_calls"] = Value::Array(calls);
            }
            messages.push(msg);
        }
        other => {
            return Err(invalid(
                format!("message role '{other}' is not user or assistant"),
                Some("messages"),
            ))
        }
    }
    Ok(())
}

fn image_part(source: ImageSource) -> Result<Value, Invalid> {
    let url = match source {
        ImageSource::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
        ImageSource::Url { url } => url,
        ImageSource::Other => return Err(invalid("image sources must be base64 or url", Some("messages"))),
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn chat_tool(t: &InTool) -> Result<Value, Invalid> {
    if let Some(kind) = t.kind.as_deref().filter(|k| *k != "custom") {
        return Err(invalid(
            format!("tool type '{kind}' is a server tool of Anthropic's and is not supported for this provider"),
            Some("tools"),
        ));
    }
    Ok(function_tool(
        &t.name,
        t.description.as_deref(),
        t.input_schema.as_ref(),
        None,
    ))
}

/// Anthropic's `stop_reason` for an OpenAI `finish_reason`.
fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

fn usage_json(u: Option<&ChatUsage>) -> Value {
    let u = u.cloned().unwrap_or_default();
    let cached = u.cached();
    json!({
        "input_tokens": u.prompt_tokens.saturating_sub(cached),
        "output_tokens": u.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    })
}

/// A whole OpenAI chat answer as a `message` object.
pub fn from_chat(body: &[u8], model: &str) -> Result<Vec<u8>, Invalid> {
    let mut chat = ChatCompletion::parse(body)?;
    let (finish, message) = chat.take_first();
    let mut content = Vec::new();
    let text = message.text();
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    for c in &message.tool_calls {
        let input: Value = serde_json::from_str(&c.function.arguments).unwrap_or_else(|_| json!({}));
        content.push(json!({"type": "tool_use", "id": c.id, "name": c.function.name, "input": input}));
    }
    let m = json!({
        "id": format!("msg_{}", id_part(chat.id.as_deref())),
        "type": "message",
        "role": "assistant",
        "model": chat.model.as_deref().unwrap_or(model),
        "content": content,
        "stop_reason": stop_reason(finish.as_deref()),
        "stop_sequence": null,
        "usage": usage_json(chat.usage.as_ref()),
    });
    Ok(m.to_string().into_bytes())
}

/// The content block being streamed.
enum Open {
    Text,
    Tool(u32),
}

/// Chat chunks → Anthropic stream events.
pub struct MessagesShaper {
    stream: ChunkStream,
    model: String,
    started: bool,
    /// Index of the next content block.
    next: u64,
    open: Option<Open>,
}

impl MessagesShaper {
    pub fn new(model: String) -> Self {
        Self {
            stream: ChunkStream::default(),
            model,
            started: false,
            next: 0,
            open: None,
        }
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if self.open.take().is_some() {
            push_event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": self.next - 1}),
            );
        }
    }
}

impl ChunkEvents for MessagesShaper {
    fn stream(&mut self) -> &mut ChunkStream {
        &mut self.stream
    }

    fn model(&mut self, model: &str) {
        if !self.started {
            self.model = model.to_owned();
        }
    }

    fn start(&mut self, chat_id: Option<&str>, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        push_event(
            out,
            "message_start",
            &json!({"type": "message_start", "message": {
            "id": format!("msg_{}", id_part(chat_id)), "type": "message", "role": "assistant",
            "model": self.model, "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0}}}),
        );
    }

    fn text(&mut self, t: &str, out: &mut Vec<u8>) {
        if !matches!(self.open, Some(Open::Text)) {
            self.close(out);
            push_event(
                out,
                "content_block_start",
                &json!({"type": "content_block_start", "index": self.next,
                "content_block": {"type": "text", "text": ""}}),
            );
            self.open = Some(Open::Text);
            self.next += 1;
        }
        push_event(
            out,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": self.next - 1,
            "delta": {"type": "text_delta", "text": t}}),
        );
    }

    fn tool(&mut self, d: &ToolDelta, out: &mut Vec<u8>) {
        // A new tool call starts a new block; a chat upstream streams one
        // call's arguments before the next call's.
        if !matches!(self.open, Some(Open::Tool(i)) if i == d.index) {
            self.close(out);
            let name = d.name().unwrap_or_default();
            let id =
                d.id.clone()
                    .unwrap_or_else(|| format!("toolu_{}_{}", d.index, self.next));
            push_event(
                out,
                "content_block_start",
                &json!({"type": "content_block_start", "index": self.next,
                "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
            );
            self.open = Some(Open::Tool(d.index));
            self.next += 1;
        }
        if let Some(args) = d.arguments() {
            push_event(
                out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": self.next - 1,
                "delta": {"type": "input_json_delta", "partial_json": args}}),
            );
        }
    }
}

impl StreamShaper for MessagesShaper {
    fn frame(&mut self, frame: &[u8], out: &mut Vec<u8>) {
        shape_frame(self, frame, out);
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.start(None, out);
        self.close(out);
        push_event(
            out,
            "message_delta",
            &json!({"type": "message_delta",
            "delta": {"stop_reason": stop_reason(self.stream.finish.as_deref()), "stop_sequence": null},
            "usage": usage_json(self.stream.usage.as_ref())}),
        );
        push_event(out, "message_stop", &json!({"type": "message_stop"}));
    }

    fn fail(&mut self, status: u16, _kind: &str, message: &str, out: &mut Vec<u8>) {
        push_event(
            out,
            "error",
            &json!({"type": "error", "error": {"type": error_type(status), "message": message}}),
        );
    }
}

/// Anthropic's error type for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 | 412 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> MessagesRequest {
        MessagesRequest::parse(&v).unwrap()
    }

    #[test]
    fn system_tools_and_tool_results_translate() {
        let chat = req(json!({"model": "m", "max_tokens": 100, "system": [{"type": "text", "text": "Be brief."}],
            "stop_sequences": ["END"], "metadata": {"user_id": "u1"}, "stream": true,
            "tools": [{"name": "get_weather", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]},
                    {"type": "text", "text": "and tomorrow?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}}]}
            ]}))
        .to_chat()
        .map(|c| serde_json::to_value(c).unwrap())
        .unwrap();
        let m = chat["messages"].as_array().unwrap();
        assert_eq!(m[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(m[1], json!({"role": "user", "content": "weather?"}));
        assert_eq!(m[2]["content"], "Checking.");
        assert_eq!(m[2]["tool_calls"][0]["function"]["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"})
        );
        assert_eq!(m[4]["content"][1]["image_url"]["url"], "data:image/png;base64,AAA");
        assert_eq!(chat["max_tokens"], 100);
        assert_eq!(chat["stop"], json!(["END"]));
        assert_eq!(chat["user"], "u1");
        assert_eq!(chat["tool_choice"], "required");
        assert_eq!(chat["parallel_tool_calls"], false);
        assert_eq!(chat["tools"][0]["function"]["parameters"], json!({"type": "object"}));
        assert_eq!(chat["stream_options"]["include_usage"], true);
    }

    #[test]
    fn what_cannot_translate_is_refused() {
        let cases = [
            json!({"messages": [{"role": "user", "content": "x"}]}),
            json!({"max_tokens": 5, "messages": []}),
            json!({"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}),
            json!({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}),
            json!({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "bash_20250124", "name": "bash"}]}),
            json!({"max_tokens": 5, "messages": [{"role": "user", "content": 3}]}),
            json!({"max_tokens": 5, "system": 3, "messages": [{"role": "user", "content": "x"}]}),
        ];
        for c in cases {
            assert!(req(c.clone()).to_chat().is_err(), "{c}");
        }
        assert!(MessagesRequest::parse(&json!({"max_tokens": 5})).is_err());
    }

    #[test]
    fn whole_answer_becomes_a_message() {
        let chat = json!({"id": "chatcmpl-1", "model": "gpt-x", "choices": [{"finish_reason": "tool_calls",
            "message": {"content": "Checking.", "tool_calls": [{"id": "call_1", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4}}});
        let m: Value = serde_json::from_slice(&from_chat(chat.to_string().as_bytes(), "m").unwrap()).unwrap();
        assert_eq!(m["type"], "message");
        assert_eq!(m["content"][0], json!({"type": "text", "text": "Checking."}));
        assert_eq!(
            m["content"][1],
            json!({"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}})
        );
        assert_eq!(m["stop_reason"], "tool_use");
        assert_eq!(m["usage"]["input_tokens"], 6);
        assert_eq!(m["usage"]["cache_read_input_tokens"], 4);
        let cut = json!({"choices": [{"finish_reason": "length", "message": {"content": "abc"}}]});
        let m: Value = serde_json::from_slice(&from_chat(cut.to_string().as_bytes(), "m").unwrap()).unwrap();
        assert_eq!(m["stop_reason"], "max_tokens");
        assert_eq!(m["model"], "m");
        assert!(from_chat(b"[", "m").is_err());
    }

    fn events(out: &[u8]) -> Vec<(String, Value)> {
        crate::sse::SseParser::new()
            .push(out)
            .into_iter()
            .map(|e| (e.event.unwrap_or_default(), serde_json::from_str(&e.data).unwrap()))
            .collect()
    }

    #[test]
    fn stream_becomes_anthropic_events() {
        let mut s = MessagesShaper::new("m".into());
        let mut out = Vec::new();
        for f in [
            json!({"id": "c1", "model": "gpt-x", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": "{\"a\""}}]}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 1, "id": "call_2", "function": {"name": "g", "arguments": "{}"}}]}, "finish_reason": "tool_calls"}]}),
            json!({"id": "c1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}),
        ] {
            s.frame(format!("data: {f}\n\n").as_bytes(), &mut out);
        }
        s.finish(&mut out);
        let ev = events(&out);
        let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        for (name, data) in &ev {
            assert_eq!(data["type"], name.as_str());
        }
        assert_eq!(ev[0].1["message"]["model"], "gpt-x");
        assert_eq!(ev[2].1["delta"], json!({"type": "text_delta", "text": "Hi"}));
        assert_eq!(ev[4].1["index"], 1);
        assert_eq!(ev[4].1["content_block"]["id"], "call_1");
        assert_eq!(ev[6].1["delta"]["partial_json"], ":1}");
        assert_eq!(ev[8].1["index"], 2);
        assert_eq!(ev[11].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(ev[11].1["usage"]["output_tokens"], 4);
        assert_eq!(ev[11].1["usage"]["input_tokens"], 3);
        let mut out = Vec::new();
        s.fail(429, "rate_limit", "slow", &mut out);
        let ev = events(&out);
        assert_eq!(ev[0].1["error"], json!({"type": "rate_limit_error", "message": "slow"}));
    }
}
