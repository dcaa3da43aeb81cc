//! The OpenAI chat request, typed: parsed once by the gateway, validated
//! once, and handed to every adapter as [`ChatRequest`].
//!
//! Every struct keeps the fields it does not name in an `extra` map, so
//! that whatever a provider accepts (new parameters, new content part
//! types, vendor extensions) passes through: serialising a request (the
//! map flattened back) gives back the JSON it was read from (objects
//! compare equal; a `null` top-level parameter is dropped, which OpenAI
//! reads as absent). Reading is `deserialize_with_extra!`, below: a field
//! left out is its type's default.

use crate::Endpoint;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Number, Value};
use std::borrow::Cow;
use std::fmt;

/// An OpenAI chat-completions request.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChatRequest {
    /// Empty when the client sent none (the gateway refuses it).
    pub model: String,
    /// `None` when absent or `null` (the gateway refuses both).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    /// `"none"`, `"auto"`, `"required"` or `{"type":"function","function":{"name":…}}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Every other parameter, passed through as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatRequest {
    /// The messages (none when the field is absent).
    pub fn messages(&self) -> &[Message] {
        self.messages.as_deref().unwrap_or_default()
    }

    /// `max_completion_tokens` (the newer name), else `max_tokens`.
    pub fn output_limit(&self) -> Option<u64> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// `stop` as a list.
    pub fn stop_sequences(&self) -> Option<Vec<&str>> {
        self.stop.as_ref().map(|s| match s {
            Stop::One(s) => vec![s.as_str()],
            Stop::Many(v) => v.iter().map(String::as_str).collect(),
        })
    }

    /// Whether the client asked for the usage chunk of a stream.
    pub fn wants_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// Asks an OpenAI-shaped upstream to stream with its usage chunk
    /// (`stream: true`, `stream_options.include_usage: true`, other stream
    /// options kept): the gateway's books need it whatever the client wants.
    pub fn ask_stream_usage(&mut self) {
        self.stream = Some(true);
        self.stream_options
            .get_or_insert_with(StreamOptions::default)
            .include_usage = Some(true);
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StreamOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `stop`: one sequence or several.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `response_format`: `{"type": "text" | "json_object" | "json_schema", …}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<JsonSchema>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct JsonSchema {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A tool the model may call.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Tool {
    /// `function` (the default when absent) or a provider's own kind.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionDef>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Tool {
    /// The function of a `function` tool.
    pub fn function(&self) -> Option<&FunctionDef> {
        match self.kind.as_deref() {
            None | Some("function") => self.function.as_ref(),
            Some(_) => None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FunctionDef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON schema.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    pub role: Role,
    #[serde(skip_serializing_if = "Content::is_absent")]
    pub content: Content,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The calls an assistant message made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// The call a `tool` message answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Message {
    /// A message of `role` with text content.
    pub fn text(role: Role, text: impl Into<String>) -> Message {
        Message {
            role,
            content: Content::Text(text.into()),
            name: None,
            tool_calls: None,
            tool_call_id: None,
            extra: Map::new(),
        }
    }

    pub fn tool_calls(&self) -> &[ToolCall] {
        self.tool_calls.as_deref().unwrap_or_default()
    }
}

/// A message's `role`. Roles this gateway does not know pass through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
    Other(String),
}

impl Role {
    pub fn as_str(&self) -> &str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
            Role::Function => "function",
            Role::Other(s) => s,
        }
    }

    /// The role named `s`, if this gateway knows it.
    fn known(s: &str) -> Option<Role> {
        Some(match s {
            "system" => Role::System,
            "developer" => Role::Developer,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            "function" => Role::Function,
            _ => return None,
        })
    }
}

impl Serialize for Role {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Role {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Role;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a role string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Role, E> {
                Ok(match Role::known(v) {
                    Some(role) => role,
                    None => Role::Other(v.to_owned()),
                })
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Role, E> {
                Ok(Role::known(&v).unwrap_or(Role::Other(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Stop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTING: &str = "a string or an array of strings";
        match TextOrList::read(d, EXPECTING)? {
            TextOrList::Text(s) => Ok(Stop::One(s)),
            TextOrList::List(all) => Ok(Stop::Many(all)),
            TextOrList::Null => Err(de::Error::invalid_type(de::Unexpected::Unit, &EXPECTING)),
        }
    }
}

/// A field that is a string or an array (`stop`, `content`), or `null`,
/// read in one pass.
enum TextOrList<T> {
    Text(String),
    List(Vec<T>),
    Null,
}

impl<'de, T: Deserialize<'de>> TextOrList<T> {
    fn read<D: Deserializer<'de>>(d: D, expecting: &'static str) -> Result<Self, D::Error> {
        struct V<T>(&'static str, std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = TextOrList<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(self.0)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(TextOrList::Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(TextOrList::Text(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(TextOrList::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(TextOrList::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut all = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(item) = seq.next_element()? {
                    all.push(item);
                }
                Ok(TextOrList::List(all))
            }
        }
        d.deserialize_any(V(expecting, std::marker::PhantomData))
    }
}

/// A message's `content`: absent, `null`, a string or an array of parts.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Content {
    #[default]
    Absent,
    Null,
    Text(String),
    Parts(Vec<ContentPart>),
}

impl Content {
    fn is_absent(&self) -> bool {
        matches!(self, Content::Absent)
    }

    /// The text: the string, or the `text` parts joined with `separator`
    /// (other parts left out).
    pub fn joined_text(&self, separator: &str) -> String {
        match self {
            Content::Absent | Content::Null => String::new(),
            Content::Text(s) => s.clone(),
            Content::Parts(parts) => parts
                .iter()
                .filter_map(|p| p.text.as_deref())
                .collect::<Vec<_>>()
                .join(separator),
        }
    }
}

impl Serialize for Content {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Content::Absent | Content::Null => s.serialize_unit(),
            Content::Text(t) => s.serialize_str(t),
            Content::Parts(p) => p.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(
            match TextOrList::read(d, "a string, an array of content parts or null")? {
                TextOrList::Text(t) => Content::Text(t),
                TextOrList::List(parts) => Content::Parts(parts),
                TextOrList::Null => Content::Null,
            },
        )
    }
}

/// One part of an array `content`: `text`, `image_url`, or any other type
/// (`input_audio`, `file`, `refusal`, …), its fields kept in `extra`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ContentPart {
    /// Empty when the part has no `type`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `{"url": …, "detail": …}` (a bare URL string is accepted too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_url: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ContentPart {
    /// The URL of an `image_url` part.
    pub fn image_url(&self) -> Option<&str> {
        self.image_url
            .as_ref()
            .and_then(|u| u.get("url").or(Some(u)))
            .and_then(Value::as_str)
    }

    /// The `detail` of an `image_url` part.
    pub fn image_detail(&self) -> Option<&str> {
        self.image_url.as_ref()?.get("detail")?.as_str()
    }
}

/// A tool call on an assistant message of the history.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ToolCall {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionCall>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FunctionCall {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The arguments as a JSON string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A request body as the adapters get it: chat typed, the other endpoints
/// (completions, embeddings, native Responses and Messages relays) as JSON.
#[derive(Debug, Clone, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "a body lives in one Arc per request; boxing the chat request would add an allocation"
)]
pub enum Body {
    Chat(ChatRequest),
    Json(Value),
}

impl Body {
    /// The body of a call to `endpoint` from its JSON.
    pub fn from_json(endpoint: Endpoint, v: Value) -> Result<Body, serde_json::Error> {
        match endpoint {
            Endpoint::ChatCompletions => serde_json::from_value(v).map(Body::Chat),
            _ => Ok(Body::Json(v)),
        }
    }

    /// The chat request, if this is one.
    pub fn chat(&self) -> Option<&ChatRequest> {
        match self {
            Body::Chat(c) => Some(c),
            Body::Json(_) => None,
        }
    }

    /// The JSON body of a non-chat call.
    pub fn json(&self) -> Option<&Value> {
        match self {
            Body::Json(v) => Some(v),
            Body::Chat(_) => None,
        }
    }

    /// A top-level field of a JSON body (`None` for chat).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.json().and_then(|v| v.get(key))
    }

    /// `model`, when the client sent a non-empty string.
    pub fn model(&self) -> Option<&str> {
        match self {
            Body::Chat(c) => Some(c.model.as_str()),
            Body::Json(v) => v.get("model").and_then(Value::as_str),
        }
        .filter(|m| !m.is_empty())
    }

    /// `user`, the end user's id.
    pub fn user(&self) -> Option<&str> {
        match self {
            Body::Chat(c) => c.user.as_deref(),
            Body::Json(v) => v.get("user").and_then(Value::as_str),
        }
    }

    /// Whether the client asked for the usage chunk of a stream
    /// (`stream_options.include_usage`).
    pub fn wants_usage(&self) -> bool {
        match self {
            Body::Chat(c) => c.wants_usage(),
            Body::Json(v) => v
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
    }
}

impl Serialize for Body {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Body::Chat(c) => c.serialize(s),
            Body::Json(v) => v.serialize(s),
        }
    }
}

// Reading the structs above. serde's `#[serde(flatten)]` would first buffer
// every field of an object (each string copied into serde's own tree), then
// read the named ones out of the buffer; these impls read each field once,
// straight into its place, the others into `extra`. Like derived impls, a
// named field given twice is refused and a required one must be there.

/// An object key, borrowed from the input when it has no escapes (serde's
/// own `Cow<str>` always copies).
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Reads the value of field `name` into `slot`, refusing a second one.
fn read_field<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
    slot: &mut Option<T>,
    name: &'static str,
    map: &mut A,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(de::Error::duplicate_field(name));
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

/// `Deserialize` for `$ty`: its `optional` fields (absent: their default),
/// its `required` ones, and every other field into `extra`.
macro_rules! deserialize_with_extra {
    ($ty:ident, $expecting:literal,
     optional { $($field:ident: $fty:ty = $name:literal),* $(,)? }
     $(required { $($req:ident: $rty:ty = $rname:literal),* $(,)? })?) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<$ty, A::Error> {
                        $(let mut $field: Option<$fty> = None;)*
                        $($(let mut $req: Option<$rty> = None;)*)?
                        let mut extra = Map::new();
                        while let Some(key) = map.next_key::<Key<'de>>()? {
                            match key.0.as_ref() {
                                $($name => read_field(&mut $field, $name, &mut map)?,)*
                                $($($rname => read_field(&mut $req, $rname, &mut map)?,)*)?
                                _ => {
                                    let value = map.next_value()?;
                                    extra.insert(key.0.into_owned(), value);
                                }
                            }
                        }
                        Ok($ty {
                            $($field: $field.unwrap_or_default(),)*
                            $($($req: $req.ok_or_else(|| de::Error::missing_field($rname))?,)*)?
                            extra,
                        })
                    }
                }
                d.deserialize_map(V)
            }
        }
    };
}

deserialize_with_extra!(ChatRequest, "a chat completions request object",
    optional {
        model: String = "model",
        messages: Option<Vec<Message>> = "messages",
        stream: Option<bool> = "stream",
        stream_options: Option<StreamOptions> = "stream_options",
        max_tokens: Option<u64> = "max_tokens",
        max_completion_tokens: Option<u64> = "max_completion_tokens",
        n: Option<u64> = "n",
        temperature: Option<Number> = "temperature",
        top_p: Option<Number> = "top_p",
        presence_penalty: Option<Number> = "presence_penalty",
        frequency_penalty: Option<Number> = "frequency_penalty",
        seed: Option<Number> = "seed",
        stop: Option<Stop> = "stop",
        tools: Option<Vec<Tool>> = "tools",
        tool_choice: Option<Value> = "tool_choice",
        parallel_tool_calls: Option<bool> = "parallel_tool_calls",
        response_format: Option<ResponseFormat> = "response_format",
        user: Option<String> = "user",
    }
);
deserialize_with_extra!(StreamOptions, "an object of stream options",
    optional { include_usage: Option<bool> = "include_usage" }
);
deserialize_with_extra!(ResponseFormat, "a response format object",
    optional { kind: String = "type", json_schema: Option<JsonSchema> = "json_schema" }
);
deserialize_with_extra!(JsonSchema, "a JSON schema object",
    optional { schema: Option<Value> = "schema" }
);
deserialize_with_extra!(Tool, "a tool object",
    optional { kind: Option<String> = "type", function: Option<FunctionDef> = "function" }
);
deserialize_with_extra!(FunctionDef, "a function object",
    optional {
        name: Option<String> = "name",
        description: Option<String> = "description",
        parameters: Option<Value> = "parameters",
    }
);
deserialize_with_extra!(Message, "a message object",
    optional {
        content: Content = "content",
        name: Option<String> = "name",
        tool_calls: Option<Vec<ToolCall>> = "tool_calls",
        tool_call_id: Option<String> = "tool_call_id",
    }
    required { role: Role = "role" }
);
deserialize_with_extra!(ContentPart, "a content part object",
    optional { kind: String = "type", text: Option<String> = "text", image_url: Option<Value> = "image_url" }
);
deserialize_with_extra!(ToolCall, "a tool call object",
    optional {
        id: Option<String> = "id",
        kind: Option<String> = "type",
        function: Option<FunctionCall> = "function",
    }
);
deserialize_with_extra!(FunctionCall, "a function call object",
    optional { name: Option<String> = "name", arguments: Option<String> = "arguments" }
);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Real-world bodies: SDK defaults, vision, audio, tools, vendor
    /// extensions, unknown roles and part types.
    fn bodies() -> Vec<Value> {
        vec![
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
            json!({"model": "@oai/gpt-4o", "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]},
                {"role": "user", "name": "ann", "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                    {"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}},
                    {"type": "file", "file": {"file_id": "file-1"}},
                    {"type": "some_future_part", "whatever": [1, 2, {"a": null}]}]},
                {"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "42"},
                {"role": "function", "name": "legacy", "content": "{}"},
                {"role": "ipython", "content": "out", "x-vendor": true}],
                "stream": true, "stream_options": {"include_usage": false, "chunk_size": 3},
                "max_tokens": 100, "max_completion_tokens": 200, "n": 2,
                "temperature": 0.7, "top_p": 1, "presence_penalty": -0.5, "frequency_penalty": 0, "seed": 12345678901u64,
                "stop": ["\n", "END"], "logit_bias": {"50256": -100}, "logprobs": true, "top_logprobs": 3,
                "tools": [{"type": "function", "function": {"name": "f", "description": "d", "strict": true,
                           "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}},
                          {"type": "web_search_preview", "search_context_size": "low"}],
                "tool_choice": {"type": "function", "function": {"name": "f"}}, "parallel_tool_calls": false,
                "response_format": {"type": "json_schema", "json_schema": {"name": "s", "strict": true, "schema": {"type": "object"}}},
                "user": "u-1", "metadata": {"k": "v"}, "store": false, "reasoning_effort": "low",
                "modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"},
                "prediction": {"type": "content", "content": "x"}, "service_tier": "auto",
                "functions": [{"name": "g", "parameters": {}}], "function_call": "auto",
                "safe_prompt": true, "repetition_penalty": 1.1, "top_k": 40}),
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": "END",
                   "response_format": {"type": "json_object"}, "tool_choice": "auto"}),
        ]
    }

    #[test]
    fn bodies_round_trip_with_unknown_fields_and_parts() {
        for body in bodies() {
            let typed: ChatRequest = serde_json::from_value(body.clone()).unwrap();
            assert_eq!(serde_json::to_value(&typed).unwrap(), body);
            // And from bytes, as the gateway reads it.
            let bytes = serde_json::to_vec(&body).unwrap();
            let typed: ChatRequest = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(serde_json::to_value(&typed).unwrap(), body);
        }
    }

    #[test]
    fn fields_are_typed() {
        let r: ChatRequest = serde_json::from_value(bodies().swap_remove(1)).unwrap();
        let m = r.messages();
        assert_eq!(m.len(), 7);
        assert_eq!(m[0].role, Role::System);
        assert_eq!(m[6].role, Role::Other("ipython".into()));
        assert_eq!(m[6].extra["x-vendor"], true);
        let Content::Parts(parts) = &m[2].content else {
            panic!("parts expected")
        };
        assert_eq!(parts[1].image_url(), Some("data:image/png;base64,AAAA"));
        assert_eq!(parts[1].image_detail(), Some("low"));
        assert_eq!(parts[4].kind, "some_future_part");
        assert_eq!(m[3].content, Content::Null);
        assert_eq!(
            m[3].tool_calls()[0].function.as_ref().unwrap().name.as_deref(),
            Some("f")
        );
        assert_eq!(m[4].tool_call_id.as_deref(), Some("call_1"));
        assert_eq!(r.output_limit(), Some(200));
        assert_eq!(r.stop_sequences(), Some(vec!["\n", "END"]));
        assert!(!r.wants_usage());
        assert_eq!(r.tools.as_ref().unwrap()[1].function(), None);
        assert_eq!(r.response_format.as_ref().unwrap().kind, "json_schema");
        assert!(r.extra.contains_key("logit_bias"));
        assert_eq!(m[2].content.joined_text("|"), "what is this?");
    }

    #[test]
    fn wrong_types_are_refused() {
        for bad in [
            json!({"model": "m", "max_tokens": -1}),
            json!({"model": "m", "max_tokens": 1.5}),
            json!({"model": "m", "n": "2"}),
            json!({"model": "m", "stream": "yes"}),
            json!({"model": 5}),
            json!({"model": "m", "messages": {}}),
            json!({"model": "m", "messages": [{"content": "no role"}]}),
            json!({"model": "m", "messages": [{"role": "user", "content": 5}]}),
            json!([1, 2]),
        ] {
            assert!(serde_json::from_value::<ChatRequest>(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn stream_usage_is_asked_for_keeping_other_options() {
        let mut r: ChatRequest =
            serde_json::from_value(json!({"model": "m", "stream_options": {"chunk_size": 3}})).unwrap();
        assert!(!r.wants_usage());
        r.ask_stream_usage();
        assert!(r.wants_usage());
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"model": "m", "stream": true, "stream_options": {"include_usage": true, "chunk_size": 3}})
        );
    }

    #[test]
    fn bodies_of_other_endpoints_stay_json() {
        let b = Body::from_json(Endpoint::Embeddings, json!({"input": "x"})).unwrap();
        assert_eq!(b.get("input"), Some(&json!("x")));
        assert!(b.chat().is_none());
        let c = Body::from_json(Endpoint::ChatCompletions, json!({"model": "m"})).unwrap();
        assert_eq!(c.chat().map(|c| c.model.as_str()), Some("m"));
        assert_eq!(c.get("model"), None);
        assert!(Body::from_json(Endpoint::ChatCompletions, json!({"n": "x"})).is_err());
        for body in [&b, &c] {
            assert_eq!((body.user(), body.wants_usage()), (None, false));
        }
        assert_eq!(b.model(), None);
        let b = Body::Json(json!({"model": "m", "user": "u", "stream_options": {"include_usage": true}}));
        let c = Body::from_json(Endpoint::ChatCompletions, b.json().unwrap().clone()).unwrap();
        for body in [&b, &c] {
            assert_eq!(
                (body.model(), body.user(), body.wants_usage()),
                (Some("m"), Some("u"), true)
            );
        }
        assert_eq!(Body::Json(json!({"model": ""})).model(), None);
    }

    #[test]
    fn named_fields_are_read_once_and_unknown_ones_keep_the_last_copy() {
        for (body, field) in [
            (&br#"{"model":"a","model":"b"}"#[..], "model"),
            (br#"{"model":"m","messages":[{"role":"user","role":"user"}]}"#, "role"),
            (
                br#"{"model":"m","stream_options":{"include_usage":true,"include_usage":false}}"#,
                "include_usage",
            ),
        ] {
            let e = serde_json::from_slice::<ChatRequest>(body).unwrap_err();
            assert!(e.to_string().contains(&format!("duplicate field `{field}`")), "{e}");
        }
        let r: ChatRequest = serde_json::from_slice(br#"{"model":"m","x":1,"x":2}"#).unwrap();
        assert_eq!(r.extra["x"], 2);
        // A key with escapes names its field all the same.
        let r: ChatRequest = serde_json::from_slice(br#"{"mod\u0065l":"m","st\u006fp":["a"],"\u0078":1}"#).unwrap();
        assert_eq!((r.model.as_str(), r.stop_sequences()), ("m", Some(vec!["a"])));
        assert_eq!(r.extra["x"], 1);
    }

    #[test]
    fn errors_name_what_is_wrong() {
        for (body, says) in [
            (
                &br#"{"model":"m","messages":[{"content":"no role"}]}"#[..],
                "missing field `role`",
            ),
            (br#"{"model":"m","stop":5}"#, "expected a string or an array of strings"),
            (br#"{"model":"m","stop":["a",1]}"#, "expected a string"),
            (
                br#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
                "expected a string, an array of content parts or null",
            ),
            (br#"{"model":"m","messages":[{"role":5}]}"#, "expected a role string"),
            (br#"[1,2]"#, "expected a chat completions request object"),
            (br#"{"model":"m","messages":["hi"]}"#, "expected a message object"),
            (
                br#"{"model":"m","tools":[{"function":[]}]}"#,
                "expected a function object",
            ),
            (br#"{"model":"m","max_tokens":-1}"#, "expected u64"),
        ] {
            let e = serde_json::from_slice::<ChatRequest>(body).unwrap_err();
            assert!(e.to_string().contains(says), "{}: {e}", String::from_utf8_lossy(body));
        }
    }
}
