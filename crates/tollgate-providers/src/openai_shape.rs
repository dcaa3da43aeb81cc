//! The OpenAI shape, read and written in one place, for every adapter that
//! translates from another wire format (Anthropic, Gemini API, Vertex AI,
//! Bedrock): reading the client's OpenAI request (message content, stop
//! sequences, prompts, embedding inputs) and writing OpenAI answers
//! (`chat.completion`, `text_completion`, their stream chunks, usage
//! objects, embedding lists). One copy, so every adapter answers in exactly
//! the same shape.

use crate::chat::{Body, ChatRequest, Content, Message};
use crate::{Endpoint, ProviderError, StreamItem};
use base64::Engine;
use serde_json::{json, Map, Number, Value};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use tollgate_core::token_usage::Usage;

/// A fresh id such as `chatcmpl-1f3a…` or `call_9b2c…`. Ids only need to be
/// unique, not secret: the std hasher's per-instance random keys plus a
/// counter are enough without pulling in a random-number crate.
pub(crate) fn new_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    format!("{prefix}{:016x}{:04x}", h.finish(), n & 0xffff)
}

/// Seconds since the epoch for `created` fields. A label on the answer, not
/// a rule that depends on time, so it reads the wall clock.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A malformed client request.
pub(crate) fn bad_request(msg: impl Into<String>) -> ProviderError {
    ProviderError::Unsupported(msg.into())
}

/// OpenAI's `usage` object. `prompt_tokens` includes the cached tokens.
pub(crate) fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total(),
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

/// A tool call the model made, in OpenAI's terms.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as a JSON string, as OpenAI sends them.
    pub arguments: String,
}

/// One translated answer choice.
#[derive(Debug, Clone, Default)]
pub(crate) struct Choice {
    pub index: u64,
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: Option<&'static str>,
}

/// What labels an answer: its id, `created` and model.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub id: String,
    pub created: i64,
    pub model: String,
}

impl Meta {
    /// A fresh id (`chatcmpl-…` for chat, `cmpl-…` for completions) and the
    /// current time, for upstreams whose answers carry neither.
    pub(crate) fn fresh(endpoint: Endpoint, model: &str) -> Self {
        Self {
            id: new_id(if endpoint == Endpoint::ChatCompletions {
                "chatcmpl-"
            } else {
                "cmpl-"
            }),
            created: unix_now(),
            model: model.to_owned(),
        }
    }
}

/// A whole OpenAI answer: `chat.completion` for chat, `text_completion` for
/// completions, with a fresh id.
pub(crate) fn whole_body(endpoint: Endpoint, model: &str, choices: Vec<Choice>, usage: Option<&Usage>) -> Value {
    whole_body_with(endpoint, Meta::fresh(endpoint, model), choices, usage)
}

/// [`whole_body`] labelled with `meta` (an upstream's own id and time).
pub(crate) fn whole_body_with(endpoint: Endpoint, meta: Meta, choices: Vec<Choice>, usage: Option<&Usage>) -> Value {
    let chat = endpoint == Endpoint::ChatCompletions;
    let choices: Vec<Value> = choices
        .into_iter()
        .map(|c| {
            if chat {
                let mut message = Map::new();
                message.insert("role".into(), json!("assistant"));
                let content = if c.text.is_empty() && !c.tool_calls.is_empty() {
                    Value::Null
                } else {
                    Value::String(c.text)
                };
                message.insert("content".into(), content);
                if !c.tool_calls.is_empty() {
                    message.insert("tool_calls".into(), tool_calls_json(&c.tool_calls, false));
                }
                json!({
                    "index": c.index,
                    "message": message,
                    "logprobs": null,
                    "finish_reason": c.finish_reason.unwrap_or("stop"),
                })
            } else {
                json!({
                    "index": c.index,
                    "text": c.text,
                    "logprobs": null,
                    "finish_reason": c.finish_reason.unwrap_or("stop"),
                })
            }
        })
        .collect();
    let object = if chat { "chat.completion" } else { "text_completion" };
    let mut body = json!({
        "id": meta.id,
        "object": object,
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
    });
    if let Some(u) = usage {
        body["usage"] = usage_json(u);
    }
    body
}

/// `tool_calls` as OpenAI writes them; in stream chunks each also carries
/// its position (`index`).
fn tool_calls_json(calls: &[ToolCall], with_index: bool) -> Value {
    Value::Array(
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut v = json!({
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                });
                if with_index {
                    v["index"] = json!(i);
                }
                v
            })
            .collect(),
    )
}

/// Writes the chunks of one streamed answer: same id, `created` and model
/// on every chunk, as OpenAI does.
#[derive(Debug, Clone)]
pub(crate) struct ChunkWriter {
    meta: Meta,
    chat: bool,
}

impl ChunkWriter {
    /// Chunks with a fresh id and the current time.
    pub(crate) fn new(endpoint: Endpoint, model: &str) -> Self {
        Self::with_meta(endpoint, Meta::fresh(endpoint, model))
    }

    /// Chunks labelled with `meta` (an upstream's own id and time).
    pub(crate) fn with_meta(endpoint: Endpoint, meta: Meta) -> Self {
        Self {
            meta,
            chat: endpoint == Endpoint::ChatCompletions,
        }
    }

    pub(crate) fn is_chat(&self) -> bool {
        self.chat
    }

    fn frame(&self, choices: Value, usage: Option<&Usage>) -> StreamItem {
        let mut chunk = json!({
            "id": self.meta.id,
            "object": if self.chat { "chat.completion.chunk" } else { "text_completion" },
            "created": self.meta.created,
            "model": self.meta.model,
            "choices": choices,
        });
        if let Some(u) = usage {
            chunk["usage"] = usage_json(u);
        }
        StreamItem::Frame(crate::sse::data_frame(chunk.to_string().as_bytes()))
    }

    /// A chunk opening a choice: the assistant role (chat only).
    pub(crate) fn role(&self, index: u64) -> Option<StreamItem> {
        self.chat.then(|| {
            self.frame(
                json!([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
                None,
            )
        })
    }

    /// A chunk carrying text.
    pub(crate) fn text(&self, index: u64, text: &str) -> StreamItem {
        if self.chat {
            self.frame(
                json!([{"index": index, "delta": {"content": text}, "logprobs": null, "finish_reason": null}]),
                None,
            )
        } else {
            self.frame(
                json!([{"index": index, "text": text, "logprobs": null, "finish_reason": null}]),
                None,
            )
        }
    }

    /// A chunk carrying (part of) a tool call at position `position` of the
    /// choice's calls. The first piece carries id and name, later pieces only
    /// argument text, as OpenAI streams them.
    pub(crate) fn tool_call(
        &self,
        index: u64,
        position: usize,
        id_and_name: Option<(&str, &str)>,
        arguments: &str,
    ) -> StreamItem {
        let mut call = json!({"index": position, "function": {"arguments": arguments}});
        if let Some((id, name)) = id_and_name {
            call["id"] = json!(id);
            call["type"] = json!("function");
            call["function"]["name"] = json!(name);
        }
        self.frame(
            json!([{"index": index, "delta": {"tool_calls": [call]}, "logprobs": null, "finish_reason": null}]),
            None,
        )
    }

    /// The chunk that closes a choice.
    pub(crate) fn finish(&self, index: u64, reason: &str) -> StreamItem {
        if self.chat {
            self.frame(
                json!([{"index": index, "delta": {}, "logprobs": null, "finish_reason": reason}]),
                None,
            )
        } else {
            self.frame(
                json!([{"index": index, "text": "", "logprobs": null, "finish_reason": reason}]),
                None,
            )
        }
    }

    /// The usage-only chunk OpenAI sends last under
    /// `stream_options.include_usage`.
    pub(crate) fn usage(&self, u: &Usage) -> StreamItem {
        self.frame(json!([]), Some(u))
    }
}

/// The text of an OpenAI message `content`: a string, or the concatenated
/// `text` parts of an array. Non-text parts are left out.
pub(crate) fn text_of(content: &Content) -> String {
    content.joined_text("")
}

/// A part of a user message's content.
pub(crate) enum Part<'a> {
    Text(&'a str),
    /// An image from a `data:` URL: media type and base64 data.
    InlineImage {
        mime: &'a str,
        data: &'a str,
    },
    /// An image by reference (`https://`, `gs://`).
    ImageUrl(&'a str),
}

/// The parts of an OpenAI message `content` (a string or an array of parts).
pub(crate) fn parts_of(content: &Content) -> Result<Vec<Part<'_>>, ProviderError> {
    match content {
        Content::Absent | Content::Null => Ok(Vec::new()),
        Content::Text(s) => Ok(vec![Part::Text(s)]),
        Content::Parts(items) => items
            .iter()
            .map(|p| match p.kind.as_str() {
                "text" => Ok(Part::Text(p.text.as_deref().unwrap_or(""))),
                "image_url" => {
                    let url = p
                        .image_url()
                        .ok_or_else(|| bad_request("image_url part without a url"))?;
                    Ok(match parse_data_url(url) {
                        Some((mime, data)) => Part::InlineImage { mime, data },
                        None => Part::ImageUrl(url),
                    })
                }
                "" => Err(bad_request(
                    "content part type (missing) is not supported by this provider",
                )),
                other => Err(bad_request(format!(
                    "content part type {other} is not supported by this provider"
                ))),
            })
            .collect(),
    }
}

/// One tool call on an assistant message of the client's history.
pub(crate) struct HistoryToolCall<'a> {
    /// The call's `id`; always present when it was asked for.
    pub(crate) id: Option<&'a str>,
    pub(crate) name: &'a str,
    /// The `function.arguments` JSON string, empty when absent.
    pub(crate) arguments: &'a str,
}

/// The `tool_calls` of an assistant message, each checked for a function
/// name and, with `need_id`, an id.
pub(crate) fn history_tool_calls(message: &Message, need_id: bool) -> Result<Vec<HistoryToolCall<'_>>, ProviderError> {
    message
        .tool_calls()
        .iter()
        .map(|call| {
            let id = call.id.as_deref();
            if need_id && id.is_none() {
                return Err(bad_request("tool call without an id"));
            }
            let function = call.function.as_ref();
            let name = function
                .and_then(|f| f.name.as_deref())
                .ok_or_else(|| bad_request("tool call without a function name"))?;
            let arguments = function.and_then(|f| f.arguments.as_deref()).unwrap_or("");
            Ok(HistoryToolCall { id, name, arguments })
        })
        .collect()
}

/// The sampling parameters the translating adapters map, read from a typed
/// chat request or a completions body, in one place.
#[derive(Debug, Default)]
pub(crate) struct Sampling<'a> {
    /// `max_completion_tokens` (the newer name) or `max_tokens`.
    pub max_tokens: Option<u64>,
    pub n: Option<u64>,
    pub temperature: Option<&'a Number>,
    pub top_p: Option<&'a Number>,
    pub presence_penalty: Option<&'a Number>,
    pub frequency_penalty: Option<&'a Number>,
    pub seed: Option<&'a Number>,
    /// `stop` as a list (OpenAI accepts a string or an array).
    pub stop: Option<Vec<&'a str>>,
    pub user: Option<&'a str>,
}

impl<'a> Sampling<'a> {
    pub(crate) fn of(body: &'a Body) -> Self {
        match body {
            Body::Chat(c) => Sampling {
                max_tokens: c.output_limit(),
                n: c.n,
                temperature: c.temperature.as_ref(),
                top_p: c.top_p.as_ref(),
                presence_penalty: c.presence_penalty.as_ref(),
                frequency_penalty: c.frequency_penalty.as_ref(),
                seed: c.seed.as_ref(),
                stop: c.stop_sequences(),
                user: body.user(),
            },
            Body::Json(v) => {
                let count = |k: &str| v.get(k).and_then(Value::as_u64);
                let number = |k: &str| match v.get(k) {
                    Some(Value::Number(n)) => Some(n),
                    _ => None,
                };
                Sampling {
                    max_tokens: count("max_completion_tokens").or_else(|| count("max_tokens")),
                    n: count("n"),
                    temperature: number("temperature"),
                    top_p: number("top_p"),
                    presence_penalty: number("presence_penalty"),
                    frequency_penalty: number("frequency_penalty"),
                    seed: number("seed"),
                    stop: match v.get("stop") {
                        Some(Value::String(s)) => Some(vec![s.as_str()]),
                        Some(Value::Array(a)) => Some(a.iter().filter_map(Value::as_str).collect()),
                        _ => None,
                    },
                    user: body.user(),
                }
            }
        }
    }
}

/// The messages of a chat call (an untyped body has none).
pub(crate) fn chat_request(body: &Body) -> Result<&ChatRequest, ProviderError> {
    body.chat()
        .filter(|c| c.messages.is_some())
        .ok_or_else(|| bad_request("messages must be an array"))
}

/// Appends `items` to the history as a turn of `role`, under `field`
/// (`content` for Bedrock, `parts` for Gemini). Both protocols want turns to
/// alternate, so consecutive items of one role join the previous turn; an
/// empty list adds nothing.
pub(crate) fn push_turn(turns: &mut Vec<Value>, role: &str, field: &str, items: Vec<Value>) {
    if items.is_empty() {
        return;
    }
    if let Some(last) = turns.last_mut() {
        if last["role"] == role {
            if let Some(existing) = last[field].as_array_mut() {
                existing.extend(items);
                return;
            }
        }
    }
    turns.push(json!({ "role": role, field: items }));
}

/// Splits `data:<mime>;base64,<data>` into media type and data.
pub(crate) fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let mime = meta.strip_suffix(";base64")?;
    Some((mime, data))
}

/// The single prompt of a `/completions` request. Several prompts would mean
/// several independent completions, which these protocols cannot batch.
pub(crate) fn completion_prompt(body: &Body) -> Result<String, ProviderError> {
    match body.get("prompt") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => Ok(a[0].as_str().unwrap_or_default().to_owned()),
        Some(Value::Array(_)) => Err(bad_request("only a single text prompt is supported by this provider")),
        _ => Err(bad_request("prompt is required")),
    }
}

/// The texts of an embeddings request (`input`: a string or an array of
/// strings; token arrays cannot be sent to these providers).
pub(crate) fn embedding_inputs(body: &Body) -> Result<Vec<String>, ProviderError> {
    match body.get("input") {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad_request("input must be a string or an array of strings for this provider"))
            })
            .collect(),
        _ => Err(bad_request("input must be a non-empty string or array of strings")),
    }
}

/// OpenAI's embeddings list. With `encoding_format: "base64"` (what the
/// `openai` SDKs ask for by default) each vector is little-endian f32 bytes
/// in base64, as OpenAI sends it.
pub(crate) fn embeddings_body(request: &Body, model: &str, vectors: Vec<Vec<f64>>, prompt_tokens: u64) -> Value {
    let base64 = request.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    })
}

/// Reads a JSON array of numbers (an embedding vector).
pub(crate) fn vector(v: Option<&Value>) -> Result<Vec<f64>, ProviderError> {
    v.and_then(Value::as_array)
        .ok_or_else(|| ProviderError::InvalidResponse("embedding vector missing".into()))?
        .iter()
        .map(|x| {
            x.as_f64()
                .ok_or_else(|| ProviderError::InvalidResponse("embedding value is not a number".into()))
        })
        .collect()
}

/// Estimated prompt tokens of embedding inputs, for upstreams that report
/// none.
pub(crate) fn estimate_tokens(texts: &[String]) -> u64 {
    texts
        .iter()
        .map(|t| crate::tokens::count_text(t, tollgate_core::catalogue::Tokenizer::Cl100kBase))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(v: Value) -> Message {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn history_tool_calls_need_a_name_and_an_id_when_asked() {
        let m = message(json!({"role": "assistant", "tool_calls": [
            {"id": "c1", "function": {"name": "f", "arguments": "{}"}},
            {"function": {"name": "g"}}]}));
        let calls = history_tool_calls(&m, false).unwrap();
        assert_eq!(
            (calls[0].id, calls[0].name, calls[0].arguments),
            (Some("c1"), "f", "{}")
        );
        assert_eq!((calls[1].id, calls[1].name, calls[1].arguments), (None, "g", ""));
        assert!(matches!(history_tool_calls(&m, true), Err(ProviderError::Unsupported(ref e)) if e.contains("id")));
        let nameless = message(json!({"role": "assistant", "tool_calls": [{"id": "c1", "function": {}}]}));
        assert!(
            matches!(history_tool_calls(&nameless, false), Err(ProviderError::Unsupported(ref e)) if e.contains("name"))
        );
        assert!(
            history_tool_calls(&message(json!({"role": "assistant", "content": "hi"})), true)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn push_turn_joins_a_role_and_skips_nothing() {
        let mut turns = Vec::new();
        push_turn(&mut turns, "user", "parts", vec![json!(1)]);
        push_turn(&mut turns, "user", "parts", vec![json!(2)]);
        push_turn(&mut turns, "model", "parts", Vec::new());
        push_turn(&mut turns, "model", "parts", vec![json!(3)]);
        assert_eq!(
            turns,
            vec![
                json!({"role": "user", "parts": [1, 2]}),
                json!({"role": "model", "parts": [3]})
            ]
        );
    }

    #[test]
    fn sampling_reads_typed_chat_and_json_alike() {
        let v = json!({"max_tokens": 5, "max_completion_tokens": 7, "n": 2, "temperature": 0.5, "top_p": 1,
                       "presence_penalty": 0.1, "frequency_penalty": 0.2, "seed": 3, "stop": "x", "user": "u"});
        let chat = Body::from_json(Endpoint::ChatCompletions, v.clone()).unwrap();
        let json = Body::Json(v);
        for body in [&chat, &json] {
            let s = Sampling::of(body);
            assert_eq!(
                (s.max_tokens, s.n, s.stop, s.user),
                (Some(7), Some(2), Some(vec!["x"]), Some("u"))
            );
            let numbers = [s.temperature, s.top_p, s.presence_penalty, s.frequency_penalty, s.seed];
            assert_eq!(
                numbers.map(|n| n.map(ToString::to_string)),
                ["0.5", "1", "0.1", "0.2", "3"].map(|n| Some(n.to_owned()))
            );
        }
        let loose = Body::Json(json!({"max_tokens": 4, "stop": ["a", 1, "b"], "temperature": "hot"}));
        let s = Sampling::of(&loose);
        assert_eq!(
            (s.max_tokens, s.stop, s.temperature),
            (Some(4), Some(vec!["a", "b"]), None)
        );
        assert!(chat_request(&json).is_err());
        assert!(chat_request(&Body::from_json(Endpoint::ChatCompletions, json!({})).unwrap()).is_err());
    }

    #[test]
    fn ids_are_unique_and_prefixed() {
        let a = new_id("call_");
        let b = new_id("call_");
        assert!(a.starts_with("call_"));
        assert_ne!(a, b);
    }

    #[test]
    fn data_urls_split() {
        assert_eq!(
            parse_data_url("data:image/png;base64,AAAA"),
            Some(("image/png", "AAAA"))
        );
        assert_eq!(parse_data_url("https://x/y.png"), None);
        assert_eq!(parse_data_url("data:text/plain,hello"), None);
    }

    #[test]
    fn base64_embeddings_are_f32_le() {
        let body = embeddings_body(
            &Body::Json(json!({"encoding_format": "base64"})),
            "m",
            vec![vec![1.0, -2.0]],
            3,
        );
        let b64 = body["data"][0]["embedding"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        assert_eq!(&bytes[..4], &1.0f32.to_le_bytes());
        assert_eq!(&bytes[4..], &(-2.0f32).to_le_bytes());
        assert_eq!(body["usage"]["prompt_tokens"], 3);
    }

    #[test]
    fn inputs_and_prompts_are_validated() {
        assert_eq!(embedding_inputs(&Body::Json(json!({"input": "a"}))).unwrap(), vec!["a"]);
        assert!(embedding_inputs(&Body::Json(json!({"input": [1, 2]}))).is_err());
        assert!(embedding_inputs(&Body::Json(json!({}))).is_err());
        assert_eq!(completion_prompt(&Body::Json(json!({"prompt": ["x"]}))).unwrap(), "x");
        assert!(completion_prompt(&Body::Json(json!({"prompt": ["x", "y"]}))).is_err());
        assert!(completion_prompt(&Body::Json(json!({}))).is_err());
        let audio: Content = serde_json::from_value(json!([{"type": "input_audio"}])).unwrap();
        assert!(matches!(parts_of(&audio), Err(ProviderError::Unsupported(ref e)) if e.contains("input_audio")));
        let untyped: Content = serde_json::from_value(json!([{"text": "x"}])).unwrap();
        assert!(matches!(parts_of(&untyped), Err(ProviderError::Unsupported(ref e)) if e.contains("(missing)")));
    }
}
