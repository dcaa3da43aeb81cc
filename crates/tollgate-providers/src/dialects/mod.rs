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

use crate::sse::SseParser;
use serde::Deserialize;
use serde_json::Value;

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

/// The chat chunks in relayed frames.
pub(crate) fn chunks(parser: &mut SseParser, frame: &[u8]) -> Vec<Chunk> {
    parser
        .push(frame)
        .into_iter()
        .filter_map(|ev| serde_json::from_str::<Chunk>(&ev.data).ok())
        .collect()
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

#[derive(Debug, Deserialize)]
pub(crate) struct FunctionDelta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub arguments: Option<String>,
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
