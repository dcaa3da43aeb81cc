//! The Gemini `generateContent` wire format, shared by the Gemini API
//! ([`crate::google`]) and Vertex AI ([`crate::vertex`]), which serves Gemini
//! models with the same bodies: OpenAI chat/completions requests →
//! `GenerateContentRequest`, `GenerateContentResponse` → `chat.completion` /
//! `text_completion`, the `alt=sse` stream → OpenAI chunks, and Google's error
//! body → [`ProviderError::Upstream`]. The two adapters differ only in URL and
//! authentication, which they pass in.

use crate::chat::{Body, ChatRequest, Message, Role};
use crate::openai_shape::{self, bad_request, Choice, ChunkWriter, Part, Sampling, ToolCall};
use crate::sse::{Flow, SseEvent, Translate};
use crate::transport;
use crate::{Call, Endpoint, ProviderError, StreamItem, UpstreamResponse};
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use tollgate_core::token_usage::Usage;

/// JSON-Schema keywords Gemini's OpenAPI-subset schema rejects; OpenAI
/// clients (and Pydantic-generated schemas) send them routinely.
const UNSUPPORTED_SCHEMA_KEYS: &[&str] = &["$schema", "additionalProperties", "strict"];

/// Translates a chat or completions request into a `GenerateContentRequest`.
pub(crate) fn request_body(endpoint: Endpoint, body: &Body) -> Result<Value, ProviderError> {
    let mut out = Map::new();
    match endpoint {
        Endpoint::ChatCompletions => {
            let chat = openai_shape::chat_request(body)?;
            let (system, contents) = translate_messages(chat.messages())?;
            if !system.is_empty() {
                out.insert("systemInstruction".into(), json!({ "parts": system }));
            }
            out.insert("contents".into(), Value::Array(contents));
            if let Some(tools) = tools(chat) {
                out.insert("tools".into(), tools);
            }
            if let Some(config) = tool_config(chat)? {
                out.insert("toolConfig".into(), config);
            }
        }
        Endpoint::Completions => {
            let prompt = openai_shape::completion_prompt(body)?;
            out.insert(
                "contents".into(),
                json!([{ "role": "user", "parts": [{ "text": prompt }] }]),
            );
        }
        Endpoint::Embeddings => return Err(bad_request("embeddings do not use generateContent")),
        Endpoint::Responses | Endpoint::Messages => return Err(crate::not_native(endpoint)),
    }
    let config = generation_config(body);
    if !config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(config));
    }
    Ok(Value::Object(out))
}

/// Splits OpenAI messages into the system instruction's parts and the
/// `contents` turns. Gemini wants strictly alternating `user`/`model` turns,
/// so consecutive messages of one role merge into one turn; tool results
/// travel as `functionResponse` parts of a user turn.
fn translate_messages(messages: &[Message]) -> Result<(Vec<Value>, Vec<Value>), ProviderError> {
    // A tool result names only its call id; Gemini wants the function name.
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    for m in messages {
        for call in m.tool_calls() {
            if let (Some(id), Some(name)) = (
                call.id.as_deref(),
                call.function.as_ref().and_then(|f| f.name.as_deref()),
            ) {
                call_names.insert(id, name);
            }
        }
    }

    let mut system = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    for m in messages {
        match &m.role {
            Role::System | Role::Developer => {
                for part in openai_shape::parts_of(&m.content)? {
                    match part {
                        Part::Text(t) => system.push(json!({ "text": t })),
                        _ => return Err(bad_request("system messages may only hold text")),
                    }
                }
            }
            Role::User => {
                let parts = openai_shape::parts_of(&m.content)?
                    .into_iter()
                    .map(user_part)
                    .collect::<Vec<_>>();
                openai_shape::push_turn(&mut contents, "user", "parts", parts);
            }
            Role::Assistant => {
                let mut parts = Vec::new();
                let text = openai_shape::text_of(&m.content);
                if !text.is_empty() {
                    parts.push(json!({ "text": text }));
                }
                for call in openai_shape::history_tool_calls(m, false)? {
                    let args = parse_arguments(call.arguments)?;
                    parts.push(json!({ "functionCall": { "name": call.name, "args": args } }));
                }
                openai_shape::push_turn(&mut contents, "model", "parts", parts);
            }
            role @ (Role::Tool | Role::Function) => {
                let name = match role {
                    Role::Tool => {
                        let id = m
                            .tool_call_id
                            .as_deref()
                            .ok_or_else(|| bad_request("tool message without tool_call_id"))?;
                        call_names
                            .get(id)
                            .copied()
                            .ok_or_else(|| bad_request(format!("tool message answers unknown tool_call_id {id}")))?
                    }
                    _ => m
                        .name
                        .as_deref()
                        .ok_or_else(|| bad_request("function message without name"))?,
                };
                let text = openai_shape::text_of(&m.content);
                // `response` must be an object: a JSON object result goes as
                // is, anything else is wrapped.
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(o)) => Value::Object(o),
                    _ => json!({ "content": text }),
                };
                openai_shape::push_turn(
                    &mut contents,
                    "user",
                    "parts",
                    vec![json!({ "functionResponse": { "name": name, "response": response } })],
                );
            }
            other => return Err(bad_request(format!("unknown message role {}", other.as_str()))),
        }
    }
    Ok((system, contents))
}

fn user_part(p: Part<'_>) -> Value {
    match p {
        Part::Text(t) => json!({ "text": t }),
        Part::InlineImage { mime, data } => json!({ "inlineData": { "mimeType": mime, "data": data } }),
        Part::ImageUrl(url) => json!({ "fileData": { "mimeType": mime_from_extension(url), "fileUri": url } }),
    }
}

/// Gemini needs a media type for `fileData`; guess it from the extension.
fn mime_from_extension(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url).to_ascii_lowercase();
    match path.rsplit('.').next() {
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("heic") => "image/heic",
        Some("pdf") => "application/pdf",
        _ => "image/jpeg",
    }
}

/// Tool-call arguments (a JSON string) as the object Gemini wants.
fn parse_arguments(args: &str) -> Result<Value, ProviderError> {
    if args.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(args) {
        Ok(Value::Object(o)) => Ok(Value::Object(o)),
        _ => Err(bad_request("tool call arguments must be a JSON object")),
    }
}

/// OpenAI `tools` → one `functionDeclarations` tool.
fn tools(body: &ChatRequest) -> Option<Value> {
    let decls: Vec<Value> = body
        .tools
        .as_ref()?
        .iter()
        .filter_map(|t| t.function())
        .map(|f| {
            let mut d = Map::new();
            d.insert("name".into(), json!(f.name));
            if let Some(desc) = &f.description {
                d.insert("description".into(), json!(desc));
            }
            // Gemini rejects an object schema without properties; a function
            // without parameters simply omits them.
            if let Some(params) = &f.parameters {
                let empty = params
                    .get("properties")
                    .and_then(Value::as_object)
                    .is_none_or(Map::is_empty);
                if !empty {
                    d.insert("parameters".into(), clean_schema(params));
                }
            }
            Value::Object(d)
        })
        .collect();
    (!decls.is_empty()).then(|| json!([{ "functionDeclarations": decls }]))
}

/// A copy of a JSON schema without the keywords Gemini rejects.
fn clean_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(k, _)| !UNSUPPORTED_SCHEMA_KEYS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), clean_schema(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(clean_schema).collect()),
        other => other.clone(),
    }
}

/// OpenAI `tool_choice` → `toolConfig.functionCallingConfig`.
fn tool_config(body: &ChatRequest) -> Result<Option<Value>, ProviderError> {
    let config = match &body.tool_choice {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => match s.as_str() {
            "none" => json!({ "mode": "NONE" }),
            "auto" => json!({ "mode": "AUTO" }),
            "required" => json!({ "mode": "ANY" }),
            other => return Err(bad_request(format!("unknown tool_choice {other}"))),
        },
        Some(v) => {
            let name = v
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad_request("tool_choice must name a function"))?;
            json!({ "mode": "ANY", "allowedFunctionNames": [name] })
        }
    };
    Ok(Some(json!({ "functionCallingConfig": config })))
}

fn generation_config(body: &Body) -> Map<String, Value> {
    let sampling = Sampling::of(body);
    let mut c = Map::new();
    if let Some(n) = sampling.max_tokens {
        c.insert("maxOutputTokens".into(), json!(n));
    }
    if let Some(n) = sampling.n {
        c.insert("candidateCount".into(), json!(n));
    }
    for (to, v) in [
        ("temperature", sampling.temperature),
        ("topP", sampling.top_p),
        ("presencePenalty", sampling.presence_penalty),
        ("frequencyPenalty", sampling.frequency_penalty),
        ("seed", sampling.seed),
    ] {
        if let Some(v) = v {
            c.insert(to.into(), Value::Number(v.clone()));
        }
    }
    if let Some(stop) = sampling.stop {
        c.insert("stopSequences".into(), json!(stop));
    }
    let format = body.chat().and_then(|c| c.response_format.as_ref());
    match format.map(|f| f.kind.as_str()) {
        Some("json_object") => {
            c.insert("responseMimeType".into(), json!("application/json"));
        }
        Some("json_schema") => {
            c.insert("responseMimeType".into(), json!("application/json"));
            if let Some(schema) = format
                .and_then(|f| f.json_schema.as_ref())
                .and_then(|s| s.schema.as_ref())
            {
                c.insert("responseSchema".into(), clean_schema(schema));
            }
        }
        _ => {}
    }
    c
}

/// `usageMetadata` → usage. `promptTokenCount` already includes the cached
/// part; thinking tokens are billed as output, so they count as completion.
pub(crate) fn usage_from(meta: &Value) -> Option<Usage> {
    let get = |k: &str| meta.get(k).and_then(Value::as_u64).unwrap_or(0);
    meta.as_object()?;
    Some(Usage {
        prompt_tokens: get("promptTokenCount").saturating_add(get("toolUsePromptTokenCount")),
        completion_tokens: get("candidatesTokenCount").saturating_add(get("thoughtsTokenCount")),
        cached_tokens: get("cachedContentTokenCount"),
    })
}

/// Gemini's `finishReason` → OpenAI's `finish_reason`.
fn map_finish(reason: &str, has_calls: bool) -> &'static str {
    if has_calls {
        return "tool_calls";
    }
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => "content_filter",
        _ => "stop",
    }
}

/// The parts of one candidate that belong to the answer: thought summaries
/// are left out.
fn answer_parts(c: &Value) -> impl Iterator<Item = &Value> {
    c.pointer("/content/parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|part| part.get("thought").and_then(Value::as_bool) != Some(true))
}

/// The text and function calls of one candidate.
fn candidate_parts(c: &Value) -> (String, Vec<ToolCall>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for part in answer_parts(c) {
        if let Some(t) = part.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if let Some(fc) = part.get("functionCall") {
            calls.push(tool_call(fc));
        }
    }
    (text, calls)
}

fn tool_call(fc: &Value) -> ToolCall {
    ToolCall {
        id: fc
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| openai_shape::new_id("call_")),
        name: fc.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
        arguments: fc.get("args").map(Value::to_string).unwrap_or_else(|| "{}".into()),
    }
}

fn blocked(resp: &Value) -> bool {
    resp.pointer("/promptFeedback/blockReason").is_some()
}

/// A whole `GenerateContentResponse` → OpenAI body and usage.
pub(crate) fn whole_response(
    endpoint: Endpoint,
    model: &str,
    resp: &Value,
) -> Result<(Value, Option<Usage>), ProviderError> {
    let usage = resp.get("usageMetadata").and_then(usage_from);
    let mut choices = Vec::new();
    for (pos, c) in resp
        .get("candidates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let (text, tool_calls) = candidate_parts(c);
        let reason = c.get("finishReason").and_then(Value::as_str).unwrap_or("STOP");
        choices.push(Choice {
            index: c.get("index").and_then(Value::as_u64).unwrap_or(pos as u64),
            finish_reason: Some(map_finish(reason, !tool_calls.is_empty())),
            text,
            tool_calls,
        });
    }
    if choices.is_empty() {
        if !blocked(resp) {
            return Err(ProviderError::InvalidResponse("answer has no candidates".into()));
        }
        // The prompt itself was blocked: OpenAI reports that as a filtered,
        // empty answer.
        choices.push(Choice {
            finish_reason: Some("content_filter"),
            ..Choice::default()
        });
    }
    Ok((
        openai_shape::whole_body(endpoint, model, choices, usage.as_ref()),
        usage,
    ))
}

/// The message of Google's error body (`{"error": {"code", "message",
/// "status"}}`, or a one-element array of it as Vertex's streaming endpoints
/// send).
pub(crate) fn google_message(_: &HeaderMap, body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let err = v.get("error").or_else(|| v.get(0).and_then(|e| e.get("error")))?;
    err.get("message").and_then(Value::as_str).map(str::to_owned)
}

/// Translates the `alt=sse` stream: every event is a whole
/// `GenerateContentResponse` holding the next piece of each candidate.
pub(crate) struct StreamTranslator {
    w: ChunkWriter,
    /// Candidates whose opening (role) chunk went out.
    opened: Vec<u64>,
    /// Tool calls streamed so far, per candidate.
    calls: HashMap<u64, usize>,
    /// A candidate reported a finish reason: the answer is complete. Gemini
    /// sends no end marker, so a stream that ends without one was cut.
    finished: bool,
    usage: Option<Usage>,
    wants_usage: bool,
}

impl StreamTranslator {
    pub(crate) fn new(endpoint: Endpoint, model: &str, wants_usage: bool) -> Self {
        Self {
            w: ChunkWriter::new(endpoint, model),
            opened: Vec::new(),
            calls: HashMap::new(),
            finished: false,
            usage: None,
            wants_usage,
        }
    }

    fn open(&mut self, index: u64, out: &mut Vec<Result<StreamItem, ProviderError>>) {
        if !self.opened.contains(&index) {
            self.opened.push(index);
            out.extend(self.w.role(index).map(Ok));
        }
    }
}

impl Translate for StreamTranslator {
    fn event(&mut self, ev: SseEvent, out: &mut Vec<Result<StreamItem, ProviderError>>) -> Flow {
        let data = ev.data.trim();
        if data.is_empty() {
            return Flow::Continue;
        }
        let v: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => {
                out.push(Err(ProviderError::InvalidResponse(format!(
                    "stream event is not JSON: {e}"
                ))));
                return Flow::Stop;
            }
        };
        if let Some(err) = v.get("error") {
            let status = err
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .filter(|c| (400..600).contains(c))
                .unwrap_or(500);
            out.push(Err(transport::upstream_error(
                status,
                &HeaderMap::new(),
                data.as_bytes(),
                google_message,
            )));
            return Flow::Stop;
        }
        if let Some(u) = v.get("usageMetadata").and_then(usage_from) {
            self.usage = Some(u);
        }
        let candidates = v
            .get("candidates")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (pos, c) in candidates.iter().enumerate() {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(pos as u64);
            self.open(index, out);
            for part in answer_parts(c) {
                if let Some(t) = part.get("text").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                    out.push(Ok(self.w.text(index, t)));
                }
                if let Some(fc) = part.get("functionCall").filter(|_| self.w.is_chat()) {
                    let call = tool_call(fc);
                    let position = self.calls.entry(index).or_default();
                    out.push(Ok(self.w.tool_call(
                        index,
                        *position,
                        Some((&call.id, &call.name)),
                        &call.arguments,
                    )));
                    *position += 1;
                }
            }
            if let Some(reason) = c.get("finishReason").and_then(Value::as_str) {
                let has_calls = self.calls.get(&index).copied().unwrap_or(0) > 0;
                out.push(Ok(self.w.finish(index, map_finish(reason, has_calls))));
                self.finished = true;
            }
        }
        if candidates.is_empty() && blocked(&v) {
            self.open(0, out);
            out.push(Ok(self.w.finish(0, "content_filter")));
            self.finished = true;
        }
        Flow::Continue
    }

    fn end(&mut self, out: &mut Vec<Result<StreamItem, ProviderError>>) {
        if !self.finished {
            out.push(Err(crate::sse::cut_error()));
            return;
        }
        if let Some(u) = self.usage {
            if self.wants_usage {
                out.push(Ok(self.w.usage(&u)));
            }
            out.push(Ok(StreamItem::Usage(u)));
        }
    }
}

/// POSTs a JSON body with one authentication header (plus the target's
/// custom headers) and maps a non-2xx answer to Google's error message.
pub(crate) async fn post(
    http: &reqwest::Client,
    url: &str,
    auth: (HeaderName, HeaderValue),
    call: &Call<'_>,
    body: &Value,
    deadline: tokio::time::Instant,
) -> Result<reqwest::Response, ProviderError> {
    let mut headers = HeaderMap::new();
    headers.insert(auth.0, auth.1);
    transport::add_custom_headers(&mut headers, &call.target)?;
    transport::send(
        transport::post(http, url).headers(headers).json(body),
        deadline,
        google_message,
    )
    .await
}

/// One chat or completions call: `{model_url}:generateContent`, or
/// `{model_url}:streamGenerateContent?alt=sse` for a stream.
pub(crate) async fn generate(
    http: &reqwest::Client,
    call: &Call<'_>,
    model_url: &str,
    auth: (HeaderName, HeaderValue),
) -> Result<UpstreamResponse, ProviderError> {
    let deadline = transport::deadline(call.timeout);
    let body = request_body(call.endpoint, call.body)?;
    let url = if call.stream {
        format!("{model_url}:streamGenerateContent?alt=sse")
    } else {
        format!("{model_url}:generateContent")
    };
    let resp = post(http, &url, auth, call, &body, deadline).await?;
    if call.stream {
        let translator = StreamTranslator::new(call.endpoint, call.target.model, call.client_wants_usage);
        return Ok(UpstreamResponse::Stream(crate::sse::translate(
            crate::sse::response_events(resp),
            translator,
        )));
    }
    let bytes = transport::read_body(resp, deadline).await?;
    let (out, usage) = whole_response(call.endpoint, call.target.model, &transport::parse_json(&bytes)?)?;
    Ok(UpstreamResponse::Whole {
        status: 200,
        body: Bytes::from(out.to_string()),
        usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Translates `body` as the adapter gets it.
    fn request_body(endpoint: Endpoint, body: &Value) -> Result<Value, ProviderError> {
        super::request_body(endpoint, &Body::from_json(endpoint, body.clone()).unwrap())
    }

    #[test]
    fn messages_translate_with_merged_turns_and_tool_round_trip() {
        let body = json!({
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "user", "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                    {"type": "image_url", "image_url": {"url": "gs://b/cat.webp"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "description": "d",
                "parameters": {"type": "object", "additionalProperties": false,
                    "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": {"type": "function", "function": {"name": "weather"}},
            "max_tokens": 50, "temperature": 0.2, "top_p": 0.9, "stop": "END"
        });
        let g = request_body(Endpoint::ChatCompletions, &body).unwrap();
        assert_eq!(g["systemInstruction"], json!({"parts": [{"text": "be brief"}]}));
        let contents = g["contents"].as_array().unwrap();
        assert_eq!(contents.len(), 3);
        assert_eq!(contents[0]["role"], "user");
        assert_eq!(contents[0]["parts"].as_array().unwrap().len(), 4);
        assert_eq!(
            contents[0]["parts"][2]["inlineData"],
            json!({"mimeType": "image/png", "data": "iVBO"})
        );
        assert_eq!(contents[0]["parts"][3]["fileData"]["mimeType"], "image/webp");
        assert_eq!(contents[1]["role"], "model");
        assert_eq!(
            contents[1]["parts"][0]["functionCall"],
            json!({"name": "weather", "args": {"city": "Paris"}})
        );
        assert_eq!(
            contents[2]["parts"][0]["functionResponse"]["response"],
            json!({"temp": 21})
        );
        assert_eq!(
            contents[2]["parts"][1]["functionResponse"]["response"],
            json!({"content": "sunny"})
        );
        let decl = &g["tools"][0]["functionDeclarations"][0];
        assert!(decl["parameters"].get("additionalProperties").is_none());
        assert_eq!(
            g["toolConfig"]["functionCallingConfig"],
            json!({"mode": "ANY", "allowedFunctionNames": ["weather"]})
        );
        assert_eq!(
            g["generationConfig"],
            json!({"maxOutputTokens": 50, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]})
        );
    }

    #[test]
    fn bad_requests_are_refused() {
        let unknown_id = json!({"messages": [{"role": "tool", "tool_call_id": "x", "content": "1"}]});
        assert!(request_body(Endpoint::ChatCompletions, &unknown_id).is_err());
        assert!(request_body(Endpoint::ChatCompletions, &json!({})).is_err());
        let bad_args = json!({"messages": [{"role": "assistant", "tool_calls": [
            {"id": "a", "function": {"name": "f", "arguments": "[1]"}}]}]});
        assert!(request_body(Endpoint::ChatCompletions, &bad_args).is_err());
        let bad_choice = json!({"messages": [], "tool_choice": "sometimes"});
        assert!(request_body(Endpoint::ChatCompletions, &bad_choice).is_err());
        let bad_role = json!({"messages": [{"role": "robot", "content": "x"}]});
        assert!(request_body(Endpoint::ChatCompletions, &bad_role).is_err());
        let image_system = json!({"messages": [{"role": "system", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}]});
        assert!(request_body(Endpoint::ChatCompletions, &image_system).is_err());
    }

    #[test]
    fn tool_choice_modes() {
        for (choice, mode) in [("none", "NONE"), ("auto", "AUTO"), ("required", "ANY")] {
            let g = request_body(
                Endpoint::ChatCompletions,
                &json!({"messages": [], "tool_choice": choice}),
            )
            .unwrap();
            assert_eq!(g["toolConfig"]["functionCallingConfig"]["mode"], mode);
        }
    }

    #[test]
    fn finish_reasons_and_blocked_prompts() {
        let resp = json!({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "SAFETY"}]});
        let (body, usage) = whole_response(Endpoint::ChatCompletions, "m", &resp).unwrap();
        assert_eq!(body["choices"][0]["finish_reason"], "content_filter");
        assert!(usage.is_none());
        let resp = json!({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "MAX_TOKENS"}]});
        let (body, _) = whole_response(Endpoint::Completions, "m", &resp).unwrap();
        assert_eq!(body["choices"][0]["finish_reason"], "length");
        assert_eq!(body["object"], "text_completion");
        let resp = json!({"promptFeedback": {"blockReason": "SAFETY"}});
        let (body, _) = whole_response(Endpoint::ChatCompletions, "m", &resp).unwrap();
        assert_eq!(body["choices"][0]["finish_reason"], "content_filter");
        assert!(whole_response(Endpoint::ChatCompletions, "m", &json!({})).is_err());
    }

    #[test]
    fn errors_keep_googles_message() {
        let upstream_error =
            |status, body: &[u8]| transport::upstream_error(status, &HeaderMap::new(), body, google_message);
        let e = upstream_error(
            400,
            br#"{"error":{"code":400,"message":"bad thing","status":"INVALID_ARGUMENT"}}"#,
        );
        assert!(matches!(e, ProviderError::Upstream { status: 400, ref message, .. } if message == "bad thing"));
        let e = upstream_error(503, br#"[{"error":{"code":503,"message":"overloaded"}}]"#);
        assert!(matches!(e, ProviderError::Upstream { status: 503, ref message, .. } if message == "overloaded"));
        let e = upstream_error(502, b"<html>bad gateway</html>");
        assert!(
            matches!(e, ProviderError::Upstream { status: 502, ref message, .. } if message.contains("bad gateway"))
        );
    }
}
