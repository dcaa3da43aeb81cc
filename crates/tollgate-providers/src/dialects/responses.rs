//! OpenAI's Responses API (`POST /v1/responses`) ↔ OpenAI chat, for
//! providers without a native Responses API.
//!
//! Request: `input` (a string, or items: messages, `function_call`,
//! `function_call_output`), `instructions`, function `tools`, `tool_choice`,
//! `max_output_tokens`, `temperature`, `top_p`, `text.format` (JSON schema or
//! JSON object), `parallel_tool_calls`, `user`, `metadata` (echoed back).
//! Answer: a `response` object with `message` and `function_call` output
//! items, or the Responses stream events (`response.created`,
//! `response.output_item.added`, `response.output_text.delta`,
//! `response.function_call_arguments.delta`/`.done`, ...,
//! `response.completed` with usage).

use super::{
    function_tool, id_part, invalid, push_event, put_sampling, put_stream, shape_frame, text_of, typed, ChatCompletion,
    ChatUsage, ChunkEvents, ChunkStream, Invalid, StreamShaper, ToolDelta,
};
use crate::chat::ChatRequest;
use serde::Deserialize;
use serde_json::{json, Map, Number, Value};

/// A Responses API request, as far as translation reads it.
#[derive(Debug, Deserialize)]
pub struct ResponsesRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub input: Option<Value>,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub tools: Option<Vec<Tool>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    #[serde(default)]
    pub temperature: Option<Number>,
    #[serde(default)]
    pub top_p: Option<Number>,
    #[serde(default)]
    pub text: Option<TextConfig>,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub store: Option<bool>,
    /// Everything else (`include`, `reasoning`, `truncation`, ...): not
    /// translated.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A tool definition. Only `function` tools translate.
#[derive(Debug, Clone, Deserialize)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parameters: Option<Value>,
    #[serde(default)]
    pub strict: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TextConfig {
    #[serde(default)]
    pub format: Option<TextFormat>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TextFormat {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub schema: Option<Value>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub strict: Option<bool>,
}

/// One input item. Messages may leave out `type`.
#[derive(Debug, Deserialize)]
struct Item {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    call_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
    #[serde(default)]
    output: Option<Value>,
}

impl ResponsesRequest {
    pub fn parse(body: &Value) -> Result<Self, Invalid> {
        Self::deserialize(body).map_err(|e| invalid(format!("invalid Responses request: {e}"), None))
    }

    pub fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }

    /// The equivalent OpenAI chat request (`model` set by the gateway).
    pub fn to_chat(&self) -> Result<ChatRequest, Invalid> {
        let mut messages = Vec::new();
        if let Some(i) = self.instructions.as_deref().filter(|i| !i.is_empty()) {
            messages.push(json!({"role": "system", "content": i}));
        }
        match &self.input {
            Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
            Some(Value::Array(items)) => {
                for raw in items {
                    let item: Item = serde_json::from_value(raw.clone())
                        .map_err(|e| invalid(format!("invalid input item: {e}"), Some("input")))?;
                    push_item(&mut messages, item)?;
                }
            }
            _ => {
                return Err(invalid(
                    "'input' is required: a string or a list of items",
                    Some("input"),
                ))
            }
        }
        if messages.is_empty() {
            return Err(invalid("'input' must not be empty", Some("input")));
        }
        let mut out = Map::new();
        out.insert("model".into(), json!(self.model.clone().unwrap_or_default()));
        out.insert("messages".into(), Value::Array(messages));
        if let Some(tools) = self.tools.as_ref().filter(|t| !t.is_empty()) {
            out.insert(
                "tools".into(),
                Value::Array(tools.iter().map(chat_tool).collect::<Result<_, _>>()?),
            );
        }
        if let Some(choice) = &self.tool_choice {
            out.insert("tool_choice".into(), chat_tool_choice(choice)?);
        }
        if let Some(n) = self.max_output_tokens {
            out.insert("max_tokens".into(), n.into());
        }
        put_sampling(&mut out, self.temperature.as_ref(), self.top_p.as_ref());
        if let Some(p) = self.parallel_tool_calls {
            if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
                out.insert("parallel_tool_calls".into(), p.into());
            }
        }
        if let Some(u) = &self.user {
            out.insert("user".into(), json!(u));
        }
        if let Some(f) = self.text.as_ref().and_then(|t| t.format.as_ref()) {
            match f.kind.as_str() {
                "text" => {}
                "json_object" => {
                    out.insert("response_format".into(), json!({"type": "json_object"}));
                }
                "json_schema" => {
                    let mut schema = Map::new();
                    schema.insert(
                        "name".into(),
                        json!(f.name.clone().unwrap_or_else(|| "response".into())),
                    );
                    if let Some(s) = &f.schema {
                        schema.insert("schema".into(), s.clone());
                    }
                    if let Some(d) = &f.description {
                        schema.insert("description".into(), json!(d));
                    }
                    if let Some(s) = f.strict {
                        schema.insert("strict".into(), s.into());
                    }
                    out.insert(
                        "response_format".into(),
                        json!({"type": "json_schema", "json_schema": schema}),
                    );
                }
                other => {
                    return Err(invalid(
                        format!("text.format type '{other}' is not supported"),
                        Some("text"),
                    ))
                }
            }
        }
        put_stream(&mut out, self.is_stream());
        typed(out)
    }

    /// The request fields a `response` object repeats.
    pub fn echo(&self) -> Echo {
        Echo {
            instructions: self.instructions.clone(),
            tools: self
                .tools
                .as_ref()
                .map(|t| {
                    t.iter()
                        .map(|t| {
                            json!({"type": t.kind, "name": t.name, "description": t.description,
                                   "parameters": t.parameters, "strict": t.strict.unwrap_or(false)})
                        })
                        .collect()
                })
                .unwrap_or_default(),
            tool_choice: self.tool_choice.clone().unwrap_or_else(|| json!("auto")),
            temperature: self.temperature.clone(),
            top_p: self.top_p.clone(),
            max_output_tokens: self.max_output_tokens,
            metadata: self.metadata.clone().unwrap_or_default(),
            parallel_tool_calls: self.parallel_tool_calls.unwrap_or(true),
            text: match self.text.as_ref().and_then(|t| t.format.as_ref()) {
                Some(f) if f.kind == "json_schema" => json!({"format": {"type": "json_schema",
                    "name": f.name, "schema": f.schema, "description": f.description, "strict": f.strict}}),
                Some(f) => json!({"format": {"type": f.kind}}),
                None => json!({"format": {"type": "text"}}),
            },
            user: self.user.clone(),
            store: self.store.unwrap_or(false),
        }
    }
}

fn push_item(messages: &mut Vec<Value>, item: Item) -> Result<(), Invalid> {
    match item.kind.as_deref() {
        None | Some("message") => {
            let role = match item.role.as_deref() {
                Some("user") => "user",
                Some("assistant") => "assistant",
                // Other providers know no `developer` role.
                Some("system" | "developer") => "system",
                _ => {
                    return Err(invalid(
                        "a message item needs a role: user, assistant, system or developer",
                        Some("input"),
                    ))
                }
            };
            let content = item.content.unwrap_or(Value::Null);
            let content = match content {
                Value::String(s) => Value::String(s),
                Value::Array(parts) if role == "user" => {
                    Value::Array(parts.iter().map(chat_part).collect::<Result<_, _>>()?)
                }
                Value::Array(parts) => {
                    for p in &parts {
                        chat_part(p)?;
                    }
                    Value::String(text_of(&Value::Array(parts)))
                }
                _ => {
                    return Err(invalid(
                        "a message's content must be a string or a list of parts",
                        Some("input"),
                    ))
                }
            };
            messages.push(json!({"role": role, "content": content}));
        }
        Some("function_call") => {
            let call = json!({"id": item.call_id.unwrap_or_default(), "type": "function",
                "function": {"name": item.name.unwrap_or_default(), "arguments": item.arguments.unwrap_or_default()}});
            // Consecutive calls (and a call right after the assistant's
            // text) belong to one assistant turn.
            match messages.last_mut() {
                Some(last) if last["role"] == "assistant" => {
                    if let Some(calls) = last.get_mut("tool_calls").and_then(Value::as_array_mut) {
                        calls.push(call);
                    } else if let Some(o) = last.as_object_mut() {
                        o.insert("tool_calls".into(), json!([call]));
                    }
                }
                _ => messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        Some("function_call_output") => {
            let output = item.output.as_ref().map(text_of).unwrap_or_default();
            messages.push(json!({"role": "tool", "tool_call_id": item.call_id.unwrap_or_default(), "content": output}));
        }
        // Reasoning summaries have no chat equivalent; the answer does not need them.
        Some("reasoning") => {}
        Some("item_reference") => {
            return Err(invalid(
                "item references need a provider that stores responses (OpenAI)",
                Some("input"),
            ))
        }
        Some(other) => {
            return Err(invalid(
                format!("input items of type '{other}' are not supported for this provider"),
                Some("input"),
            ))
        }
    }
    Ok(())
}

fn chat_part(p: &Value) -> Result<Value, Invalid> {
    match p.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text" | "text") => {
            Ok(json!({"type": "text", "text": p.get("text").and_then(Value::as_str).unwrap_or_default()}))
        }
        Some("refusal") => {
            Ok(json!({"type": "text", "text": p.get("refusal").and_then(Value::as_str).unwrap_or_default()}))
        }
        Some("input_image") => match p.get("image_url").and_then(Value::as_str) {
            Some(url) => {
                let mut image = json!({ "url": url });
                if let Some(d) = p.get("detail").filter(|d| d.is_string()) {
                    image["detail"] = d.clone();
                }
                Ok(json!({"type": "image_url", "image_url": image}))
            }
            None => Err(invalid(
                "input_image needs an image_url for this provider (file ids are not supported)",
                Some("input"),
            )),
        },
        other => Err(invalid(
            format!(
                "content parts of type '{}' are not supported for this provider",
                other.unwrap_or("(none)")
            ),
            Some("input"),
        )),
    }
}

fn chat_tool(t: &Tool) -> Result<Value, Invalid> {
    if t.kind != "function" {
        return Err(invalid(
            format!(
                "tools of type '{}' are not supported for this provider: only function tools",
                t.kind
            ),
            Some("tools"),
        ));
    }
    let name = t
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid("a function tool needs a name", Some("tools")))?;
    Ok(function_tool(
        name,
        t.description.as_deref(),
        t.parameters.as_ref(),
        t.strict,
    ))
}

fn chat_tool_choice(c: &Value) -> Result<Value, Invalid> {
    match c {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => Ok(c.clone()),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("tool_choice of type function needs a name", Some("tool_choice")))?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(invalid(
            "tool_choice must be auto, none, required or a function",
            Some("tool_choice"),
        )),
    }
}

/// Request fields a `response` object repeats.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    pub instructions: Option<String>,
    pub tools: Vec<Value>,
    pub tool_choice: Value,
    pub temperature: Option<Number>,
    pub top_p: Option<Number>,
    pub max_output_tokens: Option<u64>,
    pub metadata: Map<String, Value>,
    pub parallel_tool_calls: bool,
    pub text: Value,
    pub user: Option<String>,
    pub store: bool,
}

/// What names a `response` object.
struct Head<'a> {
    id: &'a str,
    model: &'a str,
    created: i64,
}

/// A `response` object around `output`.
fn response_object(
    echo: &Echo,
    head: Head<'_>,
    status: &str,
    output: Vec<Value>,
    usage: Option<&ChatUsage>,
    finish: Option<&str>,
) -> Value {
    let Head { id, model, created } = head;
    let incomplete = (status == "incomplete").then(
        || json!({"reason": if finish == Some("content_filter") { "content_filter" } else { "max_output_tokens" }}),
    );
    let output_text: String = output
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p.get("text").and_then(Value::as_str).map(str::to_owned))
        .collect();
    json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": false,
        "error": null,
        "incomplete_details": incomplete,
        "instructions": echo.instructions,
        "max_output_tokens": echo.max_output_tokens,
        "model": model,
        "output": output,
        "output_text": output_text,
        "parallel_tool_calls": echo.parallel_tool_calls,
        "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null},
        "store": echo.store,
        "temperature": echo.temperature,
        "text": echo.text,
        "tool_choice": echo.tool_choice,
        "tools": echo.tools,
        "top_p": echo.top_p,
        "truncation": "disabled",
        "usage": usage.map(usage_json),
        "user": echo.user,
        "metadata": echo.metadata,
    })
}

fn usage_json(u: &ChatUsage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached()},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning()},
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

fn status_of(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length" | "content_filter") => "incomplete",
        _ => "completed",
    }
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"id": id, "type": "message", "status": status, "role": "assistant",
           "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
}

fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"id": id, "type": "function_call", "status": status, "call_id": call_id,
           "name": name, "arguments": arguments})
}

/// A whole OpenAI chat answer as a `response` object.
pub fn from_chat(body: &[u8], echo: &Echo, created: i64) -> Result<Vec<u8>, Invalid> {
    let mut chat = ChatCompletion::parse(body)?;
    let base = id_part(chat.id.as_deref());
    let (finish, message) = chat.take_first();
    let mut output = Vec::new();
    let text = message.text();
    if !text.is_empty() || message.tool_calls.is_empty() {
        output.push(message_item(&format!("msg_{base}"), text, "completed"));
    }
    for (i, c) in message.tool_calls.iter().enumerate() {
        output.push(call_item(
            &format!("fc_{base}_{i}"),
            &c.id,
            &c.function.name,
            &c.function.arguments,
            "completed",
        ));
    }
    let r = response_object(
        echo,
        Head {
            id: &format!("resp_{base}"),
            model: chat.model.as_deref().unwrap_or_default(),
            created,
        },
        status_of(finish.as_deref()),
        output,
        chat.usage.as_ref(),
        finish.as_deref(),
    );
    Ok(r.to_string().into_bytes())
}

#[derive(Debug)]
enum OutItem {
    Message {
        id: String,
        text: String,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
        chat_index: u32,
    },
}

/// Chat chunks → Responses stream events.
pub struct ResponsesShaper {
    stream: ChunkStream,
    echo: Echo,
    model: String,
    created: i64,
    id: Option<String>,
    seq: u64,
    items: Vec<OutItem>,
    /// The open message item (index into `items`).
    text_item: Option<usize>,
}

impl ResponsesShaper {
    pub fn new(echo: Echo, model: String, created: i64) -> Self {
        Self {
            stream: ChunkStream::default(),
            echo,
            model,
            created,
            id: None,
            seq: 0,
            items: Vec::new(),
            text_item: None,
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, name: &str, mut data: Value) {
        data["type"] = json!(name);
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        push_event(out, name, &data);
    }

    fn response(&self, status: &str, output: Vec<Value>, usage: Option<&ChatUsage>) -> Value {
        response_object(
            &self.echo,
            Head {
                id: self.id.as_deref().unwrap_or("resp_tollgate"),
                model: &self.model,
                created: self.created,
            },
            status,
            output,
            usage,
            self.stream.finish.as_deref(),
        )
    }

    fn base(&self) -> String {
        self.id
            .as_deref()
            .unwrap_or("resp_tollgate")
            .trim_start_matches("resp_")
            .to_owned()
    }
}

impl ChunkEvents for ResponsesShaper {
    fn stream(&mut self) -> &mut ChunkStream {
        &mut self.stream
    }

    fn model(&mut self, model: &str) {
        if self.model.is_empty() {
            self.model = model.to_owned();
        }
    }

    fn start(&mut self, chat_id: Option<&str>, out: &mut Vec<u8>) {
        if self.id.is_some() {
            return;
        }
        self.id = Some(format!("resp_{}", id_part(chat_id)));
        let r = self.response("in_progress", Vec::new(), None);
        self.emit(out, "response.created", json!({ "response": r }));
        let r = self.response("in_progress", Vec::new(), None);
        self.emit(out, "response.in_progress", json!({ "response": r }));
    }

    fn text(&mut self, delta: &str, out: &mut Vec<u8>) {
        let idx = match self.text_item {
            Some(i) => i,
            None => {
                let id = format!("msg_{}_{}", self.base(), self.items.len());
                self.items.push(OutItem::Message {
                    id: id.clone(),
                    text: String::new(),
                });
                let i = self.items.len() - 1;
                self.text_item = Some(i);
                self.emit(out, "response.output_item.added", json!({"output_index": i,
                    "item": {"id": id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}}));
                self.emit(
                    out,
                    "response.content_part.added",
                    json!({"item_id": id, "output_index": i, "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
                );
                i
            }
        };
        if delta.is_empty() {
            return;
        }
        let id = match &mut self.items[idx] {
            OutItem::Message { id, text } => {
                text.push_str(delta);
                id.clone()
            }
            OutItem::Call { id, .. } => id.clone(),
        };
        self.emit(
            out,
            "response.output_text.delta",
            json!({"item_id": id, "output_index": idx,
            "content_index": 0, "delta": delta, "logprobs": []}),
        );
    }

    fn tool(&mut self, d: &ToolDelta, out: &mut Vec<u8>) {
        let found = self
            .items
            .iter()
            .position(|i| matches!(i, OutItem::Call { chat_index, .. } if *chat_index == d.index));
        let idx = match found {
            Some(i) => i,
            None => {
                let i = self.items.len();
                let id = format!("fc_{}_{i}", self.base());
                let call_id = d.id.clone().unwrap_or_else(|| format!("call_{}_{i}", self.base()));
                let name = d.name().unwrap_or_default().to_owned();
                self.emit(
                    out,
                    "response.output_item.added",
                    json!({"output_index": i,
                    "item": call_item(&id, &call_id, &name, "", "in_progress")}),
                );
                self.items.push(OutItem::Call {
                    id,
                    call_id,
                    name,
                    arguments: String::new(),
                    chat_index: d.index,
                });
                i
            }
        };
        let Some(args) = d.arguments() else {
            return;
        };
        let id = match &mut self.items[idx] {
            OutItem::Call { id, arguments, .. } => {
                arguments.push_str(args);
                id.clone()
            }
            OutItem::Message { id, .. } => id.clone(),
        };
        self.emit(
            out,
            "response.function_call_arguments.delta",
            json!({"item_id": id, "output_index": idx, "delta": args}),
        );
    }
}

impl StreamShaper for ResponsesShaper {
    fn frame(&mut self, frame: &[u8], out: &mut Vec<u8>) {
        shape_frame(self, frame, out);
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.start(None, out);
        if self.items.is_empty() {
            // An empty answer is still one (empty) message.
            self.text("", out);
        }
        let mut output = Vec::new();
        let items = std::mem::take(&mut self.items);
        for (i, item) in items.iter().enumerate() {
            match item {
                OutItem::Message { id, text } => {
                    self.emit(
                        out,
                        "response.output_text.done",
                        json!({"item_id": id, "output_index": i,
                        "content_index": 0, "text": text, "logprobs": []}),
                    );
                    self.emit(out, "response.content_part.done", json!({"item_id": id, "output_index": i,
                        "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": [], "logprobs": []}}));
                    let full = message_item(id, text, "completed");
                    self.emit(
                        out,
                        "response.output_item.done",
                        json!({"output_index": i, "item": full}),
                    );
                    output.push(full);
                }
                OutItem::Call {
                    id,
                    call_id,
                    name,
                    arguments,
                    ..
                } => {
                    self.emit(
                        out,
                        "response.function_call_arguments.done",
                        json!({"item_id": id, "output_index": i,
                        "name": name, "arguments": arguments}),
                    );
                    let full = call_item(id, call_id, name, arguments, "completed");
                    self.emit(
                        out,
                        "response.output_item.done",
                        json!({"output_index": i, "item": full}),
                    );
                    output.push(full);
                }
            }
        }
        let status = status_of(self.stream.finish.as_deref());
        let usage = self.stream.usage.clone();
        let r = self.response(status, output, usage.as_ref());
        let name = if status == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.emit(out, name, json!({ "response": r }));
    }

    fn fail(&mut self, _status: u16, kind: &str, message: &str, out: &mut Vec<u8>) {
        self.emit(out, "error", json!({"code": kind, "message": message, "param": null}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> ResponsesRequest {
        ResponsesRequest::parse(&v).unwrap()
    }

    #[test]
    fn string_input_and_instructions_become_messages() {
        let chat = req(json!({"model": "m", "input": "Hi", "instructions": "Be brief.",
                              "max_output_tokens": 50, "temperature": 0.2, "metadata": {"a": "b"}}))
        .to_chat()
        .map(|c| serde_json::to_value(c).unwrap())
        .unwrap();
        assert_eq!(
            chat["messages"],
            json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
        );
        assert_eq!(chat["max_tokens"], 50);
        assert_eq!(chat["temperature"], 0.2);
        assert!(chat.get("metadata").is_none());
        assert!(chat.get("stream").is_none());
    }

    #[test]
    fn items_tools_and_formats_translate() {
        let chat = req(json!({"model": "m", "stream": true, "input": [
            {"role": "developer", "content": "rules"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "weather?"},
                {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"}]},
            {"type": "reasoning", "id": "r1", "summary": []},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "It is sunny."}]}
        ], "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": true}],
           "tool_choice": {"type": "function", "name": "get_weather"},
           "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": true}}}))
        .to_chat()
        .map(|c| serde_json::to_value(c).unwrap())
        .unwrap();
        let m = chat["messages"].as_array().unwrap();
        assert_eq!(m[0], json!({"role": "system", "content": "rules"}));
        assert_eq!(
            m[1]["content"][1],
            json!({"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}})
        );
        assert_eq!(m[2]["tool_calls"].as_array().unwrap().len(), 2);
        assert_eq!(m[3], json!({"role": "tool", "tool_call_id": "c1", "content": "sunny"}));
        assert_eq!(m[4], json!({"role": "assistant", "content": "It is sunny."}));
        assert_eq!(chat["tools"][0]["function"]["name"], "get_weather");
        assert_eq!(chat["tools"][0]["function"]["strict"], true);
        assert_eq!(
            chat["tool_choice"],
            json!({"type": "function", "function": {"name": "get_weather"}})
        );
        assert_eq!(chat["response_format"]["json_schema"]["name"], "w");
        assert_eq!(chat["stream_options"]["include_usage"], true);
    }

    #[test]
    fn what_cannot_translate_is_refused_with_the_field() {
        let cases = [
            json!({"input": [{"type": "web_search_call", "id": "x"}]}),
            json!({"input": "x", "tools": [{"type": "web_search"}]}),
            json!({"input": "x", "tool_choice": 3}),
            json!({"input": "x", "text": {"format": {"type": "grammar"}}}),
            json!({"input": [{"type": "item_reference", "id": "x"}]}),
            json!({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
            json!({"input": [{"content": "no role"}]}),
            json!({}),
            json!({"input": []}),
        ];
        for c in cases {
            assert!(req(c.clone()).to_chat().is_err(), "{c}");
        }
        assert!(ResponsesRequest::parse(&json!({"input": "x", "max_output_tokens": "many"})).is_err());
    }

    #[test]
    fn whole_answer_becomes_a_response() {
        let chat = json!({"id": "chatcmpl-1", "model": "gpt-x", "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": "Let me check.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 2}}});
        let echo = req(json!({"input": "x", "metadata": {"k": "v"}})).echo();
        let r: Value = serde_json::from_slice(&from_chat(chat.to_string().as_bytes(), &echo, 7).unwrap()).unwrap();
        assert_eq!(r["object"], "response");
        assert_eq!(r["id"], "resp_chatcmpl-1");
        assert_eq!(r["status"], "completed");
        assert_eq!(r["output"][0]["content"][0]["text"], "Let me check.");
        assert_eq!(r["output"][1]["type"], "function_call");
        assert_eq!(r["output"][1]["call_id"], "call_1");
        assert_eq!(r["usage"]["input_tokens"], 10);
        assert_eq!(r["usage"]["input_tokens_details"]["cached_tokens"], 2);
        assert_eq!(r["usage"]["total_tokens"], 15);
        assert_eq!(r["metadata"]["k"], "v");
        let cut = json!({"choices": [{"finish_reason": "length", "message": {"content": "abc"}}]});
        let r: Value = serde_json::from_slice(&from_chat(cut.to_string().as_bytes(), &echo, 7).unwrap()).unwrap();
        assert_eq!(r["status"], "incomplete");
        assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
        assert!(from_chat(b"nope", &echo, 7).is_err());
    }

    fn events(out: &[u8]) -> Vec<(String, Value)> {
        crate::sse::SseParser::new()
            .push(out)
            .into_iter()
            .map(|e| (e.event.unwrap_or_default(), serde_json::from_str(&e.data).unwrap()))
            .collect()
    }

    #[test]
    fn stream_of_text_and_tool_calls_becomes_responses_events() {
        let mut s = ResponsesShaper::new(req(json!({"input": "x"})).echo(), String::new(), 7);
        let mut out = Vec::new();
        let frames = [
            json!({"id": "c1", "model": "gpt-x", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "He"}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "llo"}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_9", "function": {"name": "f", "arguments": ""}}]}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}, "finish_reason": "tool_calls"}]}),
            json!({"id": "c1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}),
        ];
        // Two frames coalesced into one write, the rest one by one.
        let joined = format!("data: {}\n\ndata: {}\n\n", frames[0], frames[1]);
        s.frame(joined.as_bytes(), &mut out);
        for f in &frames[2..] {
            s.frame(format!("data: {f}\n\n").as_bytes(), &mut out);
        }
        s.finish(&mut out);
        let ev = events(&out);
        let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (i, (name, data)) in ev.iter().enumerate() {
            assert_eq!(data["type"], name.as_str());
            assert_eq!(data["sequence_number"], i);
        }
        assert_eq!(ev[0].1["response"]["status"], "in_progress");
        assert_eq!(ev[9].1["text"], "Hello");
        assert_eq!(ev[12].1["arguments"], "{\"a\":1}");
        assert_eq!(ev[6].1["item"]["call_id"], "call_9");
        let done = &ev[14].1["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["model"], "gpt-x");
        assert_eq!(done["usage"]["output_tokens"], 4);
        assert_eq!(done["output"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn empty_and_failed_streams_still_close() {
        let mut s = ResponsesShaper::new(Echo::default(), "m".into(), 7);
        let mut out = Vec::new();
        s.finish(&mut out);
        let ev = events(&out);
        assert_eq!(ev.last().unwrap().0, "response.completed");
        assert_eq!(ev.last().unwrap().1["response"]["output"][0]["content"][0]["text"], "");
        let mut out = Vec::new();
        s.fail(502, "upstream_error", "boom", &mut out);
        let ev = events(&out);
        assert_eq!(ev[0].0, "error");
        assert_eq!(ev[0].1["message"], "boom");
    }
}
