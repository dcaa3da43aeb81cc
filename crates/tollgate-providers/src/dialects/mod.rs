//! Front-end API dialects other than OpenAI chat: the Responses API
//! ([`responses`]) and Anthropic's Messages API ([`messages`]).
//!
//! Translation only, no transport. Each dialect turns its request into an
//! OpenAI chat request (which every adapter speaks), and turns the OpenAI
//! chat answer back: a whole `chat.completion` body, or a stream of
//! `chat.completion.chunk` frames through a stateful [`StreamShaper`]. Where
//! the upstream speaks the dialect itself (Responses on OpenAI, Messages on
//! Anthropic) the gateway relays it natively instead and none of this runs.

pub mod messages;
pub mod responses;

use crate::chat::ChatRequest;
use crate::sse::SseParser;
use serde::Deserialize;
use serde_json::{json, Map, Number, Value};

/// A request the dialect cannot express as a chat request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub message: String,
    pub param: Option<&'static str>,
}

pub(crate) fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Invalid {
    Invalid {
        message: message.into(),
        param,
    }
}

/// The translated request, typed as the adapters take it.
pub(crate) fn typed(chat: Map<String, Value>) -> Result<ChatRequest, Invalid> {
    serde_json::from_value(Value::Object(chat))
        .map_err(|e| invalid(format!("the request cannot be expressed as a chat request: {e}"), None))
}

/// Turns a translated stream of OpenAI chat chunk frames into the
/// dialect's events.
pub trait StreamShaper: Send + 'static {
    /// One or more relayed frames (`data: {chunk}\n\n`), in order; appends
    /// the dialect's events to `out`.
    fn frame(&mut self, frame: &[u8], out: &mut Vec<u8>);
    /// The stream ended normally: the closing events.
    fn finish(&mut self, out: &mut Vec<u8>);
    /// The stream failed: the dialect's error event (`kind` is the error
    /// type, as in the gateway's error table).
    fn fail(&mut self, status: u16, kind: &str, message: &str, out: &mut Vec<u8>);
}

/// An SSE event `name` carrying `data`, appended to `out`.
pub(crate) fn push_event(out: &mut Vec<u8>, name: &str, data: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Serialising a Value cannot fail.
    out.extend_from_slice(data.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// The half of a [`StreamShaper`] that differs by dialect: its events for
/// what the chat chunks carry. [`shape_frame`] reads the chunks and calls it.
pub(crate) trait ChunkEvents {
    /// The state every dialect keeps across chunks.
    fn stream(&mut self) -> &mut ChunkStream;
    /// A chunk names the upstream model (called before `start`).
    fn model(&mut self, model: &str);
    /// The opening events, once (`chat_id`: the chat answer's id, if known).
    fn start(&mut self, chat_id: Option<&str>, out: &mut Vec<u8>);
    /// A text (or refusal) delta; the driver passes only non-empty ones.
    fn text(&mut self, text: &str, out: &mut Vec<u8>);
    /// A tool call delta.
    fn tool(&mut self, delta: &ToolDelta, out: &mut Vec<u8>);
}

/// What a shaper tracks across chat chunks, whatever the dialect.
#[derive(Default)]
pub(crate) struct ChunkStream {
    parser: SseParser,
    /// The last `finish_reason` of choice 0.
    pub finish: Option<String>,
    /// The last usage a chunk carried.
    pub usage: Option<ChatUsage>,
}

/// [`StreamShaper::frame`] for every dialect: the chat chunks in relayed
/// frames, turned into `e`'s events. Only choice 0 is read.
pub(crate) fn shape_frame(e: &mut impl ChunkEvents, frame: &[u8], out: &mut Vec<u8>) {
    let chunks: Vec<Chunk> = e
        .stream()
        .parser
        .push(frame)
        .into_iter()
        .filter_map(|ev| serde_json::from_str(&ev.data).ok())
        .collect();
    for chunk in chunks {
        if let Some(m) = &chunk.model {
            e.model(m);
        }
        e.start(chunk.id.as_deref(), out);
        if let Some(u) = chunk.usage {
            e.stream().usage = Some(u);
        }
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(delta) = choice.delta {
                if let Some(t) = delta
                    .content
                    .as_deref()
                    .or(delta.refusal.as_deref())
                    .filter(|t| !t.is_empty())
                {
                    e.text(t, out);
                }
                for d in &delta.tool_calls {
                    e.tool(d, out);
                }
            }
            if let Some(f) = choice.finish_reason {
                e.stream().finish = Some(f);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The OpenAI chat answer, as far as the dialects read it.
// ---------------------------------------------------------------------------

#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct ChatUsage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    pub completion_tokens_details: Option<CompletionDetails>,
}

impl ChatUsage {
    pub fn cached(&self) -> u64 {
        self.prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0)
    }
    pub fn reasoning(&self) -> u64 {
        self.completion_tokens_details
            .as_ref()
            .and_then(|d| d.reasoning_tokens)
            .unwrap_or(0)
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct PromptDetails {
    pub cached_tokens: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct CompletionDetails {
    pub reasoning_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChatCompletion {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub choices: Vec<ChatChoice>,
    #[serde(default)]
    pub usage: Option<ChatUsage>,
}

impl ChatCompletion {
    /// A whole chat answer.
    pub fn parse(body: &[u8]) -> Result<Self, Invalid> {
        serde_json::from_slice(body).map_err(|e| invalid(format!("unreadable chat answer: {e}"), None))
    }

    /// Choice 0's `finish_reason` and message (empty if there is none).
    pub fn take_first(&mut self) -> (Option<String>, ChatMessage) {
        let choice = std::mem::take(&mut self.choices).into_iter().next();
        let finish = choice.as_ref().and_then(|c| c.finish_reason.clone());
        (finish, choice.and_then(|c| c.message).unwrap_or_default())
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChatChoice {
    #[serde(default)]
    pub message: Option<ChatMessage>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ChatMessage {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub refusal: Option<String>,
    #[serde(default)]
    pub tool_calls: Vec<ChatToolCall>,
}

impl ChatMessage {
    /// The text, or else the refusal.
    pub fn text(&self) -> &str {
        self.content.as_deref().or(self.refusal.as_deref()).unwrap_or_default()
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChatToolCall {
    #[serde(default)]
    pub id: String,
    pub function: ChatFunction,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChatFunction {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Chunk {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    #[serde(default)]
    pub usage: Option<ChatUsage>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChunkChoice {
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub delta: Option<Delta>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Delta {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub refusal: Option<String>,
    #[serde(default)]
    pub tool_calls: Vec<ToolDelta>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ToolDelta {
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub function: Option<FunctionDelta>,
}

impl ToolDelta {
    /// The function name, if this delta carries it.
    pub fn name(&self) -> Option<&str> {
        self.function.as_ref()?.name.as_deref()
    }

    /// The arguments fragment, if this delta carries a non-empty one.
    pub fn arguments(&self) -> Option<&str> {
        self.function.as_ref()?.arguments.as_deref().filter(|a| !a.is_empty())
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct FunctionDelta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub arguments: Option<String>,
}

// ---------------------------------------------------------------------------
// The OpenAI chat request, as the dialects write it.
// ---------------------------------------------------------------------------

/// A chat `function` tool (`parameters` defaults to an empty object schema).
pub(crate) fn function_tool(
    name: &str,
    description: Option<&str>,
    parameters: Option<&Value>,
    strict: Option<bool>,
) -> Value {
    let mut f = Map::new();
    f.insert("name".into(), json!(name));
    if let Some(d) = description {
        f.insert("description".into(), json!(d));
    }
    f.insert(
        "parameters".into(),
        parameters
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
    );
    if let Some(s) = strict {
        f.insert("strict".into(), s.into());
    }
    json!({"type": "function", "function": f})
}

/// The sampling settings every dialect passes on as they are.
pub(crate) fn put_sampling(out: &mut Map<String, Value>, temperature: Option<&Number>, top_p: Option<&Number>) {
    if let Some(t) = temperature {
        out.insert("temperature".into(), Value::Number(t.clone()));
    }
    if let Some(t) = top_p {
        out.insert("top_p".into(), Value::Number(t.clone()));
    }
}

/// A streamed request asks for usage in the last chunk (the shapers report it).
pub(crate) fn put_stream(out: &mut Map<String, Value>, stream: bool) {
    if stream {
        out.insert("stream".into(), true.into());
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
}

/// An id fragment safe to embed in another id: the chat answer's id with
/// anything but letters, digits, `_` and `-` dropped.
pub(crate) fn id_part(id: Option<&str>) -> String {
    let s: String = id
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(64)
        .collect();
    if s.is_empty() {
        "tollgate".into()
    } else {
        s
    }
}

/// The text of a content value: a string, or the texts of its parts.
pub(crate) fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}
