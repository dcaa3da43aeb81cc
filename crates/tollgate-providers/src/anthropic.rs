//! The Anthropic Messages adapter: OpenAI chat and completions requests
//! translated to `POST /messages`, and Anthropic's answers (whole or
//! streamed) translated back to `chat.completion` / `text_completion`
//! objects and `chat.completion.chunk` frames.

use crate::chat::{Body, Content, ContentPart, Message, Role, Tool};
use crate::openai_shape::{self, Choice, ChunkWriter, Meta, Sampling, ToolCall};
use crate::sse::{self, Flow, SseEvent, Translate};
use crate::transport::{self, add_custom_headers, header_value, join_url, openai_message, secret};
use crate::{Adapter, Call, Endpoint, ProviderError, StreamItem, UpstreamResponse};
use base64::Engine;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tollgate_core::token_usage::Usage;

/// The API version every request declares.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
/// Anthropic requires `max_tokens`; OpenAI clients often leave it out.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// Anthropic's Messages API.
#[derive(Debug, Default)]
pub struct Anthropic;

#[async_trait::async_trait]
impl Adapter for Anthropic {
    async fn send(&self, http: &reqwest::Client, call: Call<'_>) -> Result<UpstreamResponse, ProviderError> {
        if call.endpoint == Endpoint::Embeddings {
            return Err(ProviderError::Unsupported(
                "Anthropic has no embeddings endpoint".into(),
            ));
        }
        let base = call
            .target
            .base_url
            .ok_or_else(|| ProviderError::Config("no base URL for Anthropic".into()))?;
        if call.endpoint == Endpoint::Responses {
            return Err(crate::not_native(call.endpoint));
        }
        let native = call.endpoint == Endpoint::Messages;
        let body = if native {
            // The client's own Messages request, `model` already rewritten.
            serde_json::to_vec(call.body)
        } else {
            serde_json::to_vec(&to_messages_request(
                call.endpoint,
                call.body,
                call.target.model,
                call.stream,
            )?)
        };
        let headers = headers(&call.target)?;
        let body = body.map_err(|e| ProviderError::Unsupported(e.to_string()))?;
        let req = transport::post(http, &join_url(base, "/messages"))
            .headers(headers)
            .body(body);
        if native {
            return relay_native(req, call.stream, call.timeout).await;
        }
        let deadline = transport::deadline(call.timeout);
        if call.stream {
            let resp = transport::send(req, deadline, openai_message).await?;
            let t = AnthropicStream::new(call.endpoint, call.client_wants_usage, openai_shape::unix_now());
            Ok(UpstreamResponse::Stream(sse::translate(sse::response_events(resp), t)))
        } else {
            let (status, body) = transport::send_whole(req, deadline, openai_message).await?;
            let (body, usage) = from_messages_response(call.endpoint, &body, openai_shape::unix_now())?;
            Ok(UpstreamResponse::Whole {
                status,
                body,
                usage: Some(usage),
            })
        }
    }
}

/// The request headers: key, API version (the target's custom headers, which
/// carry a client's `anthropic-version` / `anthropic-beta`, override it).
fn headers(target: &crate::Target<'_>) -> Result<HeaderMap, ProviderError> {
    let key =
        secret(target, "key")?.ok_or_else(|| ProviderError::Config("the Anthropic integration has no key".into()))?;
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(HeaderName::from_static("x-api-key"), header_value(key.expose(), "key")?);
    headers.insert(
        HeaderName::from_static("anthropic-version"),
        HeaderValue::from_static(ANTHROPIC_VERSION),
    );
    add_custom_headers(&mut headers, target)?;
    Ok(headers)
}

/// A Messages request relayed as is: the upstream's body or events go back
/// unchanged; only usage is read.
async fn relay_native(
    req: reqwest::RequestBuilder,
    stream: bool,
    timeout: std::time::Duration,
) -> Result<UpstreamResponse, ProviderError> {
    let deadline = transport::deadline(timeout);
    if stream {
        let resp = transport::send(req, deadline, openai_message).await?;
        return Ok(UpstreamResponse::Stream(sse::translate(
            sse::response_events(resp),
            NativeStream::default(),
        )));
    }
    let (status, body) = transport::send_whole(req, deadline, openai_message).await?;
    #[derive(Deserialize)]
    struct UsageOnly {
        #[serde(default)]
        usage: Option<WireUsage>,
    }
    let usage = serde_json::from_slice::<UsageOnly>(&body)
        .ok()
        .and_then(|u| u.usage)
        .map(|u| u.usage());
    Ok(UpstreamResponse::Whole { status, body, usage })
}

/// `POST /messages/count_tokens` with the client's Messages body (model
/// rewritten): Anthropic's own count, `{"input_tokens": N}`.
pub async fn count_tokens(
    http: &reqwest::Client,
    target: &crate::Target<'_>,
    body: &Value,
    timeout: std::time::Duration,
) -> Result<Bytes, ProviderError> {
    let base = target
        .base_url
        .ok_or_else(|| ProviderError::Config("no base URL for Anthropic".into()))?;
    let body = serde_json::to_vec(body).map_err(|e| ProviderError::Unsupported(e.to_string()))?;
    let req = http
        .post(join_url(base, "/messages/count_tokens"))
        .headers(headers(target)?)
        .body(body);
    transport::send_whole(req, transport::deadline(timeout), openai_message)
        .await
        .map(|(_, b)| b)
}

/// Relays a Messages event stream unchanged (each event with its name) and
/// takes the usage from `message_start` and `message_delta`.
#[derive(Debug, Default)]
pub struct NativeStream {
    usage: WireUsage,
}

#[derive(Deserialize)]
struct NativePeek {
    #[serde(rename = "type")]
    kind: Option<String>,
    message: Option<NativeStartPeek>,
    usage: Option<WireUsage>,
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct NativeStartPeek {
    #[serde(default)]
    usage: Option<WireUsage>,
}

impl Translate for NativeStream {
    fn event(&mut self, ev: SseEvent, out: &mut Vec<Result<StreamItem, ProviderError>>) -> Flow {
        let Ok(peek) = serde_json::from_str::<NativePeek>(&ev.data) else {
            out.push(Err(ProviderError::InvalidResponse(
                "Anthropic stream event is not JSON".into(),
            )));
            return Flow::Stop;
        };
        let kind = peek.kind.as_deref().or(ev.event.as_deref());
        if kind == Some("error") {
            let e = peek.error;
            out.push(Err(ProviderError::Upstream {
                status: error_status(e.as_ref().and_then(|e| e.kind.as_deref())),
                message: e
                    .and_then(|e| e.message)
                    .unwrap_or_else(|| "error in upstream stream".into()),
                retry_after: None,
            }));
            return Flow::Stop;
        }
        out.push(Ok(StreamItem::Frame(sse::event_frame(kind, ev.data.as_bytes()))));
        if let Some(u) = peek.message.and_then(|m| m.usage) {
            self.usage = u;
        }
        if let Some(u) = &peek.usage {
            self.usage.merge(u);
        }
        if kind == Some("message_stop") {
            out.push(Ok(StreamItem::Usage(self.usage.usage())));
            return Flow::Stop;
        }
        Flow::Continue
    }

    fn end(&mut self, out: &mut Vec<Result<StreamItem, ProviderError>>) {
        out.push(Err(sse::cut_error()));
    }
}

fn unsupported(msg: impl Into<String>) -> ProviderError {
    ProviderError::Unsupported(msg.into())
}

// ---------------------------------------------------------------------------
// Request: OpenAI → Anthropic
// ---------------------------------------------------------------------------

/// Translates an OpenAI chat or completions body into a Messages request.
pub fn to_messages_request(endpoint: Endpoint, body: &Body, model: &str, stream: bool) -> Result<Value, ProviderError> {
    let sampling = Sampling::of(body);
    if sampling.n.is_some_and(|n| n > 1) {
        return Err(unsupported("n > 1 is not supported on Anthropic"));
    }
    let mut out = Map::new();
    out.insert("model".into(), Value::String(model.to_owned()));
    match endpoint {
        Endpoint::ChatCompletions => {
            let chat = openai_shape::chat_request(body)?;
            let (system, turns) = convert_messages(chat.messages())?;
            if !system.is_empty() {
                out.insert("system".into(), Value::String(system.join("\n\n")));
            }
            out.insert("messages".into(), Value::Array(turns));
            if let Some(tools) = chat.tools.as_deref().filter(|t| !t.is_empty()) {
                out.insert("tools".into(), convert_tools(tools)?);
            }
            if let Some(choice) = convert_tool_choice(chat.tool_choice.as_ref(), chat.parallel_tool_calls)? {
                out.insert("tool_choice".into(), choice);
            }
        }
        Endpoint::Completions => {
            let prompt = match body.get("prompt") {
                Some(Value::String(s)) => s.as_str(),
                Some(Value::Array(a)) if a.len() == 1 => a[0]
                    .as_str()
                    .ok_or_else(|| unsupported("prompt must be a string on Anthropic"))?,
                _ => return Err(unsupported("prompt must be one string on Anthropic")),
            };
            out.insert(
                "messages".into(),
                json!([{"role": "user", "content": [{"type": "text", "text": prompt}]}]),
            );
        }
        Endpoint::Embeddings => return Err(unsupported("Anthropic has no embeddings endpoint")),
        Endpoint::Responses | Endpoint::Messages => return Err(crate::not_native(endpoint)),
    }
    let max_tokens = sampling.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    out.insert("max_tokens".into(), max_tokens.into());
    for (key, v) in [("temperature", sampling.temperature), ("top_p", sampling.top_p)] {
        if let Some(v) = v {
            out.insert(key.into(), Value::Number(v.clone()));
        }
    }
    if let Some(stop) = sampling.stop.filter(|s| !s.is_empty()) {
        out.insert("stop_sequences".into(), json!(stop));
    }
    if let Some(user) = sampling.user {
        out.insert("metadata".into(), json!({ "user_id": user }));
    }
    if stream {
        out.insert("stream".into(), Value::Bool(true));
    }
    Ok(Value::Object(out))
}

/// System texts, and user/assistant turns with same-role neighbours merged
/// (Anthropic requires the roles to alternate).
fn convert_messages(messages: &[Message]) -> Result<(Vec<String>, Vec<Value>), ProviderError> {
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in messages {
        let content = &m.content;
        let (role, blocks) = match &m.role {
            Role::System | Role::Developer => {
                let text = text_of(content)?;
                if !text.is_empty() {
                    system.push(text);
                }
                continue;
            }
            Role::User => ("user", user_blocks(content)?),
            Role::Assistant => ("assistant", assistant_blocks(m)?),
            Role::Tool => {
                let id = m
                    .tool_call_id
                    .as_deref()
                    .ok_or_else(|| unsupported("a tool message needs tool_call_id"))?;
                let block = json!({"type": "tool_result", "tool_use_id": id, "content": text_of(content)?});
                ("user", vec![block])
            }
            other => {
                return Err(unsupported(format!(
                    "message role {:?} is not supported on Anthropic",
                    other.as_str()
                )))
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let turns = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    Ok((system, turns))
}

/// The text of a string or an array of text parts.
fn text_of(content: &Content) -> Result<String, ProviderError> {
    match content {
        Content::Absent | Content::Null => Ok(String::new()),
        Content::Text(s) => Ok(s.clone()),
        Content::Parts(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for p in parts {
                match p.kind.as_str() {
                    "text" | "refusal" => texts.push(
                        p.text
                            .as_deref()
                            .or_else(|| p.extra.get("refusal").and_then(Value::as_str))
                            .unwrap_or_default(),
                    ),
                    _ => return Err(unsupported("only text parts are supported here")),
                }
            }
            Ok(texts.join("\n"))
        }
    }
}

fn text_block(text: &str) -> Option<Value> {
    // Anthropic rejects empty text blocks.
    (!text.is_empty()).then(|| json!({"type": "text", "text": text}))
}

fn user_blocks(content: &Content) -> Result<Vec<Value>, ProviderError> {
    match content {
        Content::Text(s) => Ok(text_block(s).into_iter().collect()),
        Content::Parts(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for p in parts {
                match p.kind.as_str() {
                    "text" => out.extend(text_block(p.text.as_deref().unwrap_or_default())),
                    "image_url" => out.push(image_block(p)?),
                    "" => return Err(unsupported("every content part needs a type")),
                    other => {
                        return Err(unsupported(format!(
                            "content part {other:?} is not supported on Anthropic"
                        )))
                    }
                }
            }
            Ok(out)
        }
        Content::Absent | Content::Null => Ok(Vec::new()),
    }
}

/// An `image_url` part: a data URL becomes a base64 source, an http(s) URL
/// a url source.
fn image_block(part: &ContentPart) -> Result<Value, ProviderError> {
    let url = part.image_url().ok_or_else(|| unsupported("image_url needs a url"))?;
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').ok_or_else(|| unsupported("malformed data URL"))?;
        let media_type = meta
            .strip_suffix(";base64")
            .ok_or_else(|| unsupported("image data URLs must be base64"))?;
        if base64::engine::general_purpose::STANDARD.decode(data).is_err() {
            return Err(unsupported("image data URL is not valid base64"));
        }
        return Ok(json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    Err(unsupported("image_url must be an http(s) or data URL"))
}

fn assistant_blocks(message: &Message) -> Result<Vec<Value>, ProviderError> {
    let mut out: Vec<Value> = text_block(&text_of(&message.content)?).into_iter().collect();
    for c in message.tool_calls() {
        let id = c.id.as_deref().ok_or_else(|| unsupported("a tool call needs an id"))?;
        let f = c
            .function
            .as_ref()
            .ok_or_else(|| unsupported("a tool call needs a function"))?;
        let name = f
            .name
            .as_deref()
            .ok_or_else(|| unsupported("a tool call needs a function name"))?;
        let args = f.arguments.as_deref().unwrap_or_default();
        let input: Value = if args.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str(args).map_err(|_| unsupported("tool call arguments are not valid JSON"))?
        };
        out.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
    }
    Ok(out)
}

fn convert_tools(tools: &[Tool]) -> Result<Value, ProviderError> {
    let mut out = Vec::with_capacity(tools.len());
    for t in tools {
        let f = t
            .function()
            .ok_or_else(|| unsupported("only function tools are supported on Anthropic"))?;
        let name = f.name.as_deref().ok_or_else(|| unsupported("a tool needs a name"))?;
        let mut tool = Map::new();
        tool.insert("name".into(), name.into());
        if let Some(d) = &f.description {
            tool.insert("description".into(), d.as_str().into());
        }
        let schema = f
            .parameters
            .clone()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        tool.insert("input_schema".into(), schema);
        out.push(Value::Object(tool));
    }
    Ok(Value::Array(out))
}

fn convert_tool_choice(choice: Option<&Value>, parallel: Option<bool>) -> Result<Option<Value>, ProviderError> {
    let mut out = match choice {
        None | Some(Value::Null) => {
            if parallel == Some(false) {
                json!({"type": "auto"})
            } else {
                return Ok(None);
            }
        }
        Some(Value::String(s)) => match s.as_str() {
            "auto" => json!({"type": "auto"}),
            "none" => json!({"type": "none"}),
            "required" => json!({"type": "any"}),
            other => return Err(unsupported(format!("tool_choice {other:?} is not supported"))),
        },
        Some(v) => {
            let name = v
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| unsupported("tool_choice must name a function"))?;
            json!({"type": "tool", "name": name})
        }
    };
    if parallel == Some(false) && out["type"] != "none" {
        out["disable_parallel_tool_use"] = Value::Bool(true);
    }
    Ok(Some(out))
}

// ---------------------------------------------------------------------------
// Response: Anthropic → OpenAI
// ---------------------------------------------------------------------------

#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct WireUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl WireUsage {
    /// Later reports (message_delta) override what they carry.
    fn merge(&mut self, later: &WireUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later.cache_creation_input_tokens.or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later.cache_read_input_tokens.or(self.cache_read_input_tokens);
    }

    /// OpenAI's terms: prompt tokens include cache reads and writes.
    fn usage(&self) -> Usage {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        Usage {
            prompt_tokens: self
                .input_tokens
                .unwrap_or(0)
                .saturating_add(cached)
                .saturating_add(self.cache_creation_input_tokens.unwrap_or(0)),
            completion_tokens: self.output_tokens.unwrap_or(0),
            cached_tokens: cached,
        }
    }
}

/// OpenAI's `finish_reason` for an Anthropic `stop_reason`.
pub fn finish_reason(stop_reason: Option<&str>) -> Option<&'static str> {
    Some(match stop_reason? {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn and anything newer.
        _ => "stop",
    })
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    /// Thinking and other block types have no OpenAI equivalent.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessagesResponse {
    id: String,
    model: String,
    #[serde(default)]
    content: Vec<Block>,
    stop_reason: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

/// Translates a Messages response into an OpenAI body and its usage.
pub fn from_messages_response(endpoint: Endpoint, body: &[u8], created: i64) -> Result<(Bytes, Usage), ProviderError> {
    let r: MessagesResponse =
        serde_json::from_slice(body).map_err(|e| ProviderError::InvalidResponse(format!("Anthropic message: {e}")))?;
    let usage = r.usage.usage();
    let mut choice = Choice {
        // A whole OpenAI answer always names its reason.
        finish_reason: Some(finish_reason(r.stop_reason.as_deref()).unwrap_or("stop")),
        ..Choice::default()
    };
    for b in r.content {
        match b {
            Block::Text { text } => choice.text.push_str(&text),
            Block::ToolUse { id, name, input } => choice.tool_calls.push(ToolCall {
                id,
                name,
                arguments: input.to_string(),
            }),
            Block::Other => {}
        }
    }
    let meta = Meta {
        id: r.id,
        created,
        model: r.model,
    };
    let out = openai_shape::whole_body_with(endpoint, meta, vec![choice], Some(&usage));
    let bytes = serde_json::to_vec(&out).map_err(|e| ProviderError::InvalidResponse(e.to_string()))?;
    Ok((Bytes::from(bytes), usage))
}

// ---------------------------------------------------------------------------
// Stream: Anthropic events → OpenAI chunks
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: u64,
        content_block: Block,
    },
    ContentBlockDelta {
        index: u64,
        delta: ContentDelta,
    },
    MessageDelta {
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<WireUsage>,
    },
    MessageStop,
    Error {
        error: ErrorBody,
    },
    /// ping, content_block_stop and event types added later.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct StartMessage {
    id: String,
    model: String,
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ContentDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    /// thinking_delta, signature_delta, ...
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessageDeltaBody {
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    message: Option<String>,
}

/// The HTTP status Anthropic uses for an error type.
fn error_status(kind: Option<&str>) -> u16 {
    match kind {
        Some("invalid_request_error") => 400,
        Some("authentication_error") => 401,
        Some("permission_error") => 403,
        Some("not_found_error") => 404,
        Some("request_too_large") => 413,
        Some("rate_limit_error") => 429,
        Some("overloaded_error") => 529,
        _ => 500,
    }
}

/// Translates a Messages event stream into OpenAI chunks, written by the
/// shared [`ChunkWriter`] under the message's own id and model.
#[derive(Debug)]
pub struct AnthropicStream {
    endpoint: Endpoint,
    client_wants_usage: bool,
    created: i64,
    w: ChunkWriter,
    usage: WireUsage,
    /// (Anthropic content-block index, OpenAI tool-call position).
    tools: Vec<(u64, usize)>,
}

impl AnthropicStream {
    pub fn new(endpoint: Endpoint, client_wants_usage: bool, created: i64) -> Self {
        Self {
            endpoint,
            client_wants_usage,
            created,
            // Relabelled by `message_start`, which comes first.
            w: ChunkWriter::with_meta(
                endpoint,
                Meta {
                    id: String::new(),
                    created,
                    model: String::new(),
                },
            ),
            usage: WireUsage::default(),
            tools: Vec::new(),
        }
    }
}

impl Translate for AnthropicStream {
    fn event(&mut self, ev: SseEvent, out: &mut Vec<Result<StreamItem, ProviderError>>) -> Flow {
        let parsed = match serde_json::from_str::<Event>(&ev.data) {
            Ok(e) => e,
            Err(e) => {
                out.push(Err(ProviderError::InvalidResponse(format!(
                    "Anthropic stream event: {e}"
                ))));
                return Flow::Stop;
            }
        };
        match parsed {
            Event::MessageStart { message } => {
                let meta = Meta {
                    id: message.id,
                    created: self.created,
                    model: message.model,
                };
                self.w = ChunkWriter::with_meta(self.endpoint, meta);
                self.usage = message.usage;
                out.extend(self.w.role(0).map(Ok));
            }
            Event::ContentBlockStart { index, content_block } => match content_block {
                Block::Text { text } if !text.is_empty() => out.push(Ok(self.w.text(0, &text))),
                Block::ToolUse { id, name, .. } if self.w.is_chat() => {
                    let position = self.tools.len();
                    self.tools.push((index, position));
                    out.push(Ok(self.w.tool_call(0, position, Some((&id, &name)), "")));
                }
                _ => {}
            },
            Event::ContentBlockDelta { index, delta } => match delta {
                ContentDelta::TextDelta { text } => out.push(Ok(self.w.text(0, &text))),
                ContentDelta::InputJsonDelta { partial_json } => {
                    let tool = self.tools.iter().find(|(i, _)| *i == index).map(|(_, n)| *n);
                    if let (Some(position), false) = (tool, partial_json.is_empty()) {
                        out.push(Ok(self.w.tool_call(0, position, None, &partial_json)));
                    }
                }
                ContentDelta::Other => {}
            },
            Event::MessageDelta { delta, usage } => {
                if let Some(u) = usage {
                    self.usage.merge(&u);
                }
                if let Some(finish) = finish_reason(delta.stop_reason.as_deref()) {
                    out.push(Ok(self.w.finish(0, finish)));
                }
            }
            Event::MessageStop => {
                let usage = self.usage.usage();
                if self.client_wants_usage {
                    out.push(Ok(self.w.usage(&usage)));
                }
                out.push(Ok(StreamItem::Usage(usage)));
                return Flow::Stop;
            }
            Event::Error { error } => {
                out.push(Err(ProviderError::Upstream {
                    status: error_status(error.kind.as_deref()),
                    message: error.message.unwrap_or_else(|| "error in upstream stream".into()),
                    retry_after: None,
                }));
                return Flow::Stop;
            }
            Event::Other => {}
        }
        Flow::Continue
    }

    fn end(&mut self, out: &mut Vec<Result<StreamItem, ProviderError>>) {
        out.push(Err(sse::cut_error()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::testing::frames;

    fn chat(body: Value) -> Result<Value, ProviderError> {
        to_messages_request(
            Endpoint::ChatCompletions,
            &request(Endpoint::ChatCompletions, body),
            "claude-x",
            false,
        )
    }

    /// The body of a call to `endpoint`, as the adapter gets it.
    fn request(endpoint: Endpoint, body: Value) -> Body {
        Body::from_json(endpoint, body).unwrap()
    }

    #[test]
    fn system_and_parameters_are_mapped() {
        let out = chat(json!({"model": "ignored", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "system", "content": [{"type": "text", "text": "Be kind."}]},
            {"role": "user", "content": "Hi"}],
            "max_tokens": 100, "temperature": 0.2, "top_p": 0.9, "stop": "END", "user": "u-1"}))
        .unwrap();
        assert_eq!(
            out,
            json!({"model": "claude-x", "system": "Be brief.\n\nBe kind.",
                   "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                   "max_tokens": 100, "temperature": 0.2, "top_p": 0.9, "stop_sequences": ["END"],
                   "metadata": {"user_id": "u-1"}})
        );
    }

    #[test]
    fn max_tokens_prefers_max_completion_tokens_and_defaults() {
        let m = json!([{"role": "user", "content": "Hi"}]);
        assert_eq!(chat(json!({"messages": m})).unwrap()["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(
            chat(json!({"messages": m, "max_tokens": 5, "max_completion_tokens": 7})).unwrap()["max_tokens"],
            7
        );
        let s = to_messages_request(
            Endpoint::ChatCompletions,
            &request(Endpoint::ChatCompletions, json!({"messages": m, "stop": ["a", "b"]})),
            "c",
            true,
        )
        .unwrap();
        assert_eq!(s["stream"], true);
        assert_eq!(s["stop_sequences"], json!(["a", "b"]));
    }

    #[test]
    fn consecutive_roles_are_merged_and_tools_round_trip() {
        let out = chat(json!({"messages": [
            {"role": "user", "content": "What's the weather?"},
            {"role": "user", "content": [{"type": "text", "text": "In Paris."}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "Thanks"}]}))
        .unwrap();
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "What's the weather?"},
                                              {"type": "text", "text": "In Paris."}]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "noon"},
                    {"type": "text", "text": "Thanks"}]}
            ])
        );
    }

    #[test]
    fn images_become_base64_or_url_sources() {
        let out = chat(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "Look"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}}]}]}))
        .unwrap();
        assert_eq!(
            out["messages"][0]["content"],
            json!([
                {"type": "text", "text": "Look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}])
        );
        for bad in [
            "data:image/png,raw",
            "data:image/png;base64,@@@",
            "ftp://x/y.png",
            "data:nocomma",
        ] {
            let r = chat(json!({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": bad}}]}]}));
            assert!(matches!(r, Err(ProviderError::Unsupported(_))), "{bad}");
        }
    }

    #[test]
    fn tools_and_tool_choice_are_mapped() {
        let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
            {"type": "function", "function": {"name": "noop"}}]);
        let m = json!([{"role": "user", "content": "Hi"}]);
        let out = chat(json!({"messages": m, "tools": tools, "tool_choice": "required"})).unwrap();
        assert_eq!(
            out["tools"],
            json!([{"name": "get_weather", "description": "Weather",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
                   {"name": "noop", "input_schema": {"type": "object", "properties": {}}}])
        );
        assert_eq!(out["tool_choice"], json!({"type": "any"}));
        let cases = [
            (json!("auto"), json!({"type": "auto"})),
            (json!("none"), json!({"type": "none"})),
            (
                json!({"type": "function", "function": {"name": "noop"}}),
                json!({"type": "tool", "name": "noop"}),
            ),
        ];
        for (choice, want) in cases {
            let out = chat(json!({"messages": m, "tools": tools, "tool_choice": choice})).unwrap();
            assert_eq!(out["tool_choice"], want);
        }
        let out = chat(json!({"messages": m, "tools": tools, "parallel_tool_calls": false})).unwrap();
        assert_eq!(
            out["tool_choice"],
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
        assert!(chat(json!({"messages": m})).unwrap().get("tool_choice").is_none());
        assert!(chat(json!({"messages": m, "tool_choice": "sometimes"})).is_err());
        assert!(chat(json!({"messages": m, "tool_choice": {"type": "function"}})).is_err());
        assert!(chat(json!({"messages": m, "tools": [{"type": "code_interpreter"}]})).is_err());
    }

    #[test]
    fn invalid_requests_are_unsupported() {
        let bad = [
            json!({}),
            json!({"messages": [{"role": "function", "content": "x"}]}),
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
            json!({"messages": [{"role": "user", "content": "x"}], "n": 2}),
            json!({"messages": [{"role": "system", "content": [{"type": "image_url"}]}]}),
            json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{"}}]}]}),
            json!({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}]}),
        ];
        for b in bad {
            assert!(matches!(chat(b.clone()), Err(ProviderError::Unsupported(_))), "{b}");
        }
        // Malformed messages never reach an adapter: they are not a chat request.
        for b in [
            json!({"messages": [{"content": "no role"}]}),
            json!({"messages": [{"role": "user", "content": 5}]}),
        ] {
            assert!(Body::from_json(Endpoint::ChatCompletions, b.clone()).is_err(), "{b}");
        }
        let emb = to_messages_request(Endpoint::Embeddings, &Body::Json(json!({"input": "x"})), "c", false);
        assert!(matches!(emb, Err(ProviderError::Unsupported(_))));
    }

    #[test]
    fn completions_prompt_becomes_one_user_message() {
        for prompt in [json!("Say hi"), json!(["Say hi"])] {
            let out = to_messages_request(
                Endpoint::Completions,
                &Body::Json(json!({"prompt": prompt, "max_tokens": 16})),
                "c",
                false,
            )
            .unwrap();
            assert_eq!(
                out["messages"],
                json!([{"role": "user", "content": [{"type": "text", "text": "Say hi"}]}])
            );
            assert_eq!(out["max_tokens"], 16);
        }
        for bad in [json!(["a", "b"]), json!([1]), json!(null)] {
            let r = to_messages_request(Endpoint::Completions, &Body::Json(json!({"prompt": bad})), "c", false);
            assert!(matches!(r, Err(ProviderError::Unsupported(_))));
        }
    }

    #[test]
    fn whole_response_becomes_a_chat_completion() {
        let body = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"},
                        {"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 20, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 5}});
        let (out, usage) =
            from_messages_response(Endpoint::ChatCompletions, body.to_string().as_bytes(), 1700000000).unwrap();
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 18,
                completion_tokens: 20,
                cached_tokens: 5
            }
        );
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            out,
            json!({"id": "msg_1", "object": "chat.completion", "created": 1700000000, "model": "claude-x",
                   "choices": [{"index": 0, "logprobs": null, "finish_reason": "tool_calls", "message": {
                       "role": "assistant", "content": "Checking.",
                       "tool_calls": [{"id": "toolu_1", "type": "function",
                                       "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
                   "usage": {"prompt_tokens": 18, "completion_tokens": 20, "total_tokens": 38,
                             "prompt_tokens_details": {"cached_tokens": 5}}})
        );
    }

    #[test]
    fn whole_response_as_text_completion_and_stop_reasons() {
        let body = br#"{"id":"msg_2","model":"claude-x","content":[{"type":"text","text":"Hi"}],"stop_reason":"max_tokens","usage":{"input_tokens":1,"output_tokens":2}}"#;
        let (out, _) = from_messages_response(Endpoint::Completions, body, 1).unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out["object"], "text_completion");
        assert_eq!(out["choices"][0]["text"], "Hi");
        assert_eq!(out["choices"][0]["finish_reason"], "length");
        assert_eq!(finish_reason(Some("end_turn")), Some("stop"));
        assert_eq!(finish_reason(Some("stop_sequence")), Some("stop"));
        assert_eq!(finish_reason(Some("refusal")), Some("content_filter"));
        assert_eq!(finish_reason(None), None);
        assert!(matches!(
            from_messages_response(Endpoint::ChatCompletions, b"{}", 1),
            Err(ProviderError::InvalidResponse(_))
        ));
    }

    fn replay(text: &str, endpoint: Endpoint, wants_usage: bool) -> Vec<Result<StreamItem, ProviderError>> {
        sse::testing::replay(AnthropicStream::new(endpoint, wants_usage, 42), text)
    }

    #[test]
    fn replays_text_stream() {
        let out = replay(
            include_str!("../tests/fixtures/anthropic_text_stream.txt"),
            Endpoint::ChatCompletions,
            true,
        );
        let c = frames(&out);
        assert_eq!(c[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
        assert_eq!(c[0]["id"], "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY");
        assert_eq!(c[0]["object"], "chat.completion.chunk");
        let text: String = c
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Hello! Caf\u{e9} \u{2615}");
        assert_eq!(c[c.len() - 2]["choices"][0]["finish_reason"], "stop");
        let last = &c[c.len() - 1];
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["prompt_tokens"], 35);
        assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], 10);
        assert_eq!(
            out.last().unwrap().as_ref().unwrap(),
            &StreamItem::Usage(Usage {
                prompt_tokens: 35,
                completion_tokens: 15,
                cached_tokens: 10
            })
        );
        let without = replay(
            include_str!("../tests/fixtures/anthropic_text_stream.txt"),
            Endpoint::ChatCompletions,
            false,
        );
        assert_eq!(frames(&without).len(), c.len() - 1);
        assert!(matches!(without.last(), Some(Ok(StreamItem::Usage(_)))));
    }

    #[test]
    fn replays_tool_use_stream() {
        let out = replay(
            include_str!("../tests/fixtures/anthropic_tool_stream.txt"),
            Endpoint::ChatCompletions,
            false,
        );
        let c = frames(&out);
        let calls: Vec<&Value> = c
            .iter()
            .filter_map(|c| c.pointer("/choices/0/delta/tool_calls/0"))
            .collect();
        assert_eq!(
            calls[0],
            &json!({"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function",
                    "function": {"name": "get_weather", "arguments": ""}})
        );
        let args: String = calls
            .iter()
            .filter_map(|c| c["function"]["arguments"].as_str())
            .collect();
        assert_eq!(args, r#"{"location": "San Francisco, CA"}"#);
        assert!(calls[1..].iter().all(|c| c.get("id").is_none() && c["index"] == 0));
        assert_eq!(c.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
        assert!(
            matches!(out.last(), Some(Ok(StreamItem::Usage(u))) if u.completion_tokens == 89 && u.prompt_tokens == 472)
        );
    }

    #[test]
    fn completions_stream_yields_text_completion_chunks() {
        let out = replay(
            include_str!("../tests/fixtures/anthropic_text_stream.txt"),
            Endpoint::Completions,
            true,
        );
        let c = frames(&out);
        assert!(c.iter().all(|c| c["object"] == "text_completion"));
        let text: String = c.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
        assert_eq!(text, "Hello! Caf\u{e9} \u{2615}");
        assert!(c.last().unwrap()["usage"].is_object());
    }

    #[test]
    fn stream_errors_and_cuts() {
        let err = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":1}}}\n\n\
                   event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
        let out = replay(err, Endpoint::ChatCompletions, true);
        assert!(
            matches!(out.last(), Some(Err(ProviderError::Upstream { status: 529, message, .. })) if message == "Overloaded")
        );
        let text = include_str!("../tests/fixtures/anthropic_text_stream.txt");
        let cut = &text[..text.find("event: message_delta").unwrap()];
        let out = replay(cut, Endpoint::ChatCompletions, true);
        assert!(out[..out.len() - 1].iter().all(Result::is_ok));
        assert!(matches!(out.last(), Some(Err(ProviderError::Unreachable(_)))));
        let garbage = replay("data: not json\n\n", Endpoint::ChatCompletions, true);
        assert!(matches!(garbage[..], [Err(ProviderError::InvalidResponse(_))]));
        assert_eq!(error_status(Some("rate_limit_error")), 429);
        assert_eq!(error_status(None), 500);
    }
}
