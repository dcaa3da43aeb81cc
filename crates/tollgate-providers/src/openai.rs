//! The OpenAI adapter, for OpenAI and every OpenAI-compatible provider
//! (groq, mistral, together, ollama, ...), and the OpenAI-shaped exchange it
//! shares with Azure: send, relay the body unchanged, pick out `usage`.
//!
//! Requests and responses are already in OpenAI's format, so nothing is
//! re-serialised on the way back: a whole body is relayed as the upstream's
//! bytes, a stream as the upstream's own `data:` payloads. Only `usage` is
//! parsed, with a struct that skips everything else.

use crate::chat::Body;
use crate::sse::{self, Flow, SseEvent, Translate};
use crate::transport::{self, add_custom_headers, bearer, header_value, join_url, openai_message, secret};
use crate::{Adapter, Call, ProviderError, StreamItem, Target, UpstreamResponse};
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde::de::IgnoredAny;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::LazyLock;
use std::time::Duration;
use tollgate_core::token_usage::Usage;

/// OpenAI and OpenAI-compatible providers.
#[derive(Debug, Default)]
pub struct OpenAi;

#[async_trait::async_trait]
impl Adapter for OpenAi {
    async fn send(&self, http: &reqwest::Client, call: Call<'_>) -> Result<UpstreamResponse, ProviderError> {
        if call.endpoint == crate::Endpoint::Messages {
            return Err(crate::not_native(call.endpoint));
        }
        let base = call
            .target
            .base_url
            .ok_or_else(|| ProviderError::Config("no base URL for an OpenAI-compatible provider".into()))?;
        let url = join_url(base, call.endpoint.openai_path());
        let mut headers = HeaderMap::new();
        // Local servers (ollama, LM Studio) take no key.
        if let Some(key) = secret(&call.target, "key")? {
            headers.insert(AUTHORIZATION, bearer(&key, "key")?);
        }
        for (name, header) in [
            ("openai_organization", "openai-organization"),
            ("openai_project", "openai-project"),
        ] {
            if let Some(v) = transport::config_str(call.target.config, name) {
                headers.insert(HeaderName::from_static(header), header_value(v, name)?);
            }
        }
        relay(http, &url, headers, &call).await
    }
}

/// `GET {base}/responses/{id}`: a stored response, as the upstream's bytes.
pub async fn get_response(
    http: &reqwest::Client,
    target: &Target<'_>,
    id: &str,
    timeout: Duration,
) -> Result<Bytes, ProviderError> {
    let base = target
        .base_url
        .ok_or_else(|| ProviderError::Config("no base URL for an OpenAI-compatible provider".into()))?;
    let mut url = url::Url::parse(&join_url(base, "/responses"))
        .map_err(|e| ProviderError::Config(format!("invalid base URL: {e}")))?;
    url.path_segments_mut()
        .map_err(|_| ProviderError::Config("the base URL cannot take a path".into()))?
        .push(id);
    let mut headers = HeaderMap::new();
    if let Some(key) = secret(target, "key")? {
        headers.insert(AUTHORIZATION, bearer(&key, "key")?);
    }
    add_custom_headers(&mut headers, target)?;
    transport::send_whole(
        http.get(url).headers(headers),
        transport::deadline(timeout),
        openai_message,
    )
    .await
    .map(|(_, b)| b)
}

/// Usage as OpenAI reports it.
#[derive(Debug, Default, Deserialize)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Debug, Default, Deserialize)]
struct PromptDetails {
    cached_tokens: Option<u64>,
}

impl WireUsage {
    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens.unwrap_or(0),
            completion_tokens: self.completion_tokens.unwrap_or(0),
            cached_tokens: self
                .prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
        }
    }
}

/// The `usage` of an OpenAI-format body (chat, completions, embeddings).
/// The whole body is checked to be one JSON object (the rest is skipped, not
/// kept): anything else is an invalid answer, not one to relay. A `usage`
/// that cannot be read counts as none (the gateway then estimates).
pub fn parse_usage(body: &[u8]) -> Result<Option<Usage>, ProviderError> {
    /// `usage` is kept as its raw text and read on its own, so that a
    /// `usage` of an unexpected shape is ignored rather than failing the
    /// answer, without building a `Value` tree of it.
    #[derive(Deserialize)]
    struct UsageOnly<'a> {
        #[serde(borrow)]
        usage: Option<&'a serde_json::value::RawValue>,
    }
    let not_object = |why: String| ProviderError::InvalidResponse(format!("the answer is not a JSON object: {why}"));
    // serde would also read a struct from an array.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(not_object("it does not start with {".into()));
    }
    let parsed = serde_json::from_slice::<UsageOnly>(body).map_err(|e| not_object(e.to_string()))?;
    Ok(parsed
        .usage
        .and_then(|raw| serde_json::from_str::<Option<WireUsage>>(raw.get()).ok().flatten())
        .map(|u| u.usage()))
}

/// A JSON body with `stream: true` and `stream_options.include_usage:
/// true` (keeping any other stream option), serialised without copying the
/// rest of the request.
struct WithUsage<'a>(&'a Map<String, Value>);

impl Serialize for WithUsage<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        for (k, v) in self.0 {
            if k != "stream" && k != "stream_options" {
                m.serialize_entry(k, v)?;
            }
        }
        m.serialize_entry("stream", &true)?;
        let mut options = match self.0.get("stream_options") {
            Some(Value::Object(o)) => o.clone(),
            _ => Map::new(),
        };
        options.insert("include_usage".into(), Value::Bool(true));
        m.serialize_entry("stream_options", &options)?;
        m.end()
    }
}

/// The request body to send upstream for an OpenAI-shaped call. A streamed
/// call asks for the usage chunk; the gateway's chat requests already do
/// ([`crate::chat::ChatRequest::ask_stream_usage`]), so they are serialised as they are.
pub fn request_body(call: &Call<'_>) -> Result<Vec<u8>, ProviderError> {
    // The Responses API reports usage in its last event unasked.
    let with_usage = call.stream && call.endpoint != crate::Endpoint::Responses;
    let encoded = match call.body {
        Body::Chat(chat) if with_usage && !(chat.stream == Some(true) && chat.wants_usage()) => {
            let mut chat = chat.clone();
            chat.ask_stream_usage();
            serde_json::to_vec(&chat)
        }
        Body::Json(json) if with_usage => {
            let map = json
                .as_object()
                .ok_or_else(|| ProviderError::Unsupported("the request body must be a JSON object".into()))?;
            serde_json::to_vec(&WithUsage(map))
        }
        body => serde_json::to_vec(body),
    };
    encoded.map_err(|e| ProviderError::Unsupported(format!("cannot encode the request: {e}")))
}

/// Sends an OpenAI-shaped call to `url` with `headers` (credentials), plus
/// the target's custom headers, and relays the answer. Shared by the OpenAI
/// and Azure adapters.
pub async fn relay(
    http: &reqwest::Client,
    url: &str,
    mut headers: HeaderMap,
    call: &Call<'_>,
) -> Result<UpstreamResponse, ProviderError> {
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    add_custom_headers(&mut headers, &call.target)?;
    let body = request_body(call)?;
    let req = transport::post(http, url).headers(headers).body(body);
    let responses = call.endpoint == crate::Endpoint::Responses;
    let deadline = transport::deadline(call.timeout);
    if call.stream {
        let resp = transport::send(req, deadline, openai_message).await?;
        let events = sse::response_events(resp);
        Ok(UpstreamResponse::Stream(if responses {
            sse::translate(events, ResponsesStream::default())
        } else {
            sse::translate(events, OpenAiStream::new(call.client_wants_usage))
        }))
    } else {
        let (status, body) = transport::send_whole(req, deadline, openai_message).await?;
        let usage = if responses {
            parse_responses_usage(&body)
        } else {
            parse_usage(&body)?
        };
        Ok(UpstreamResponse::Whole { status, body, usage })
    }
}

/// Usage as the Responses API reports it.
#[derive(Debug, Default, Deserialize)]
struct ResponsesUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    input_tokens_details: Option<PromptDetails>,
}

impl ResponsesUsage {
    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.input_tokens.unwrap_or(0),
            completion_tokens: self.output_tokens.unwrap_or(0),
            cached_tokens: self
                .input_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
        }
    }
}

/// The `usage` of a Responses API `response` object.
pub fn parse_responses_usage(body: &[u8]) -> Option<Usage> {
    #[derive(Deserialize)]
    struct UsageOnly {
        usage: Option<ResponsesUsage>,
    }
    serde_json::from_slice::<UsageOnly>(body)
        .ok()
        .and_then(|u| u.usage)
        .map(|u| u.usage())
}

/// Relays a Responses API stream: every event as received (with its event
/// name), the usage taken from the terminal `response.completed`,
/// `response.incomplete` or `response.failed` event.
#[derive(Debug, Default)]
pub struct ResponsesStream {
    finished: bool,
}

/// The parts of a Responses stream event the relay looks at.
#[derive(Deserialize)]
struct ResponsesEventPeek {
    #[serde(rename = "type")]
    kind: Option<String>,
    response: Option<ResponseUsagePeek>,
    message: Option<String>,
    code: Option<Value>,
}

#[derive(Deserialize)]
struct ResponseUsagePeek {
    usage: Option<ResponsesUsage>,
}

impl Translate for ResponsesStream {
    fn event(&mut self, ev: SseEvent, out: &mut Vec<Result<StreamItem, ProviderError>>) -> Flow {
        let data = ev.data.trim();
        if data == "[DONE]" {
            return Flow::Stop;
        }
        if data.is_empty() {
            return Flow::Continue;
        }
        let peek = serde_json::from_str::<ResponsesEventPeek>(data).ok();
        let kind = peek.as_ref().and_then(|p| p.kind.as_deref()).or(ev.event.as_deref());
        if kind == Some("error") {
            let status = peek
                .as_ref()
                .and_then(|p| p.code.as_ref())
                .and_then(|c| c.as_u64().or_else(|| c.as_str().and_then(|s| s.parse().ok())))
                .and_then(|c| u16::try_from(c).ok())
                .filter(|c| (400..600).contains(c))
                .unwrap_or(500);
            out.push(Err(ProviderError::Upstream {
                status,
                message: peek
                    .and_then(|p| p.message)
                    .unwrap_or_else(|| "error in upstream stream".into()),
                retry_after: None,
            }));
            return Flow::Stop;
        }
        out.push(Ok(StreamItem::Frame(sse::event_frame(kind, data.as_bytes()))));
        if matches!(
            kind,
            Some("response.completed" | "response.incomplete" | "response.failed")
        ) {
            self.finished = true;
            if let Some(u) = peek.and_then(|p| p.response).and_then(|r| r.usage) {
                out.push(Ok(StreamItem::Usage(u.usage())));
            }
            return Flow::Stop;
        }
        Flow::Continue
    }

    fn end(&mut self, out: &mut Vec<Result<StreamItem, ProviderError>>) {
        if !self.finished {
            out.push(Err(sse::cut_error()));
        }
    }
}

/// Relays an OpenAI stream: every payload as received, usage picked out,
/// the usage-only chunk dropped unless the client asked for it.
#[derive(Debug)]
pub struct OpenAiStream {
    client_wants_usage: bool,
    /// A chunk with a `finish_reason` arrived: a close without `[DONE]`
    /// after it is a complete answer (some compatible servers omit it).
    finished: bool,
}

impl OpenAiStream {
    pub fn new(client_wants_usage: bool) -> Self {
        Self {
            client_wants_usage,
            finished: false,
        }
    }
}

/// Whether a chunk's text shows that it holds no usage, no error and no
/// finish: every `usage`, `error` and `finish_reason` in it is a key whose
/// value is `null`. Nearly every chunk of a stream is such a content chunk
/// (OpenAI's carry `"usage":null` and `"finish_reason":null`); it is
/// relayed as is, without the JSON parse that would find just that. The
/// test is exact, not a guess: inside a JSON string a quote is escaped, so
/// `"usage"` followed by `:` can only be a key; anything else (the word in
/// a message's text, another value) sends the chunk to the parse.
fn plain_chunk(text: &[u8]) -> bool {
    fn null_key(text: &[u8], at: usize, word: &[u8]) -> bool {
        let ws = |b: &[u8]| b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
        if at == 0 || text[at - 1] != b'"' {
            return false;
        }
        let Some(rest) = text[at + word.len()..].strip_prefix(b"\"") else {
            return false;
        };
        let rest = &rest[ws(rest)..];
        let Some(rest) = rest.strip_prefix(b":") else {
            return false;
        };
        rest[ws(rest)..].starts_with(b"null")
    }
    // Searchers built once: building one costs more than a search.
    static WORDS: LazyLock<[memchr::memmem::Finder<'static>; 3]> =
        LazyLock::new(|| [b"usage".as_slice(), b"error", b"finish_reason"].map(memchr::memmem::Finder::new));
    WORDS
        .iter()
        .all(|word| word.find_iter(text).all(|at| null_key(text, at, word.needle())))
}

/// The parts of a chunk the relay looks at.
#[derive(Deserialize)]
struct ChunkPeek {
    #[serde(default)]
    choices: ChoicesPeek,
    usage: Option<WireUsage>,
    error: Option<StreamError>,
}

/// What the relay needs of a chunk's `choices` (absent or `null`: none),
/// read without keeping them: whether there are any, and whether one has a
/// `finish_reason`.
#[derive(Default)]
struct ChoicesPeek {
    any: bool,
    finished: bool,
}

#[derive(Deserialize)]
struct ChoicePeek {
    finish_reason: Option<IgnoredAny>,
}

impl<'de> Deserialize<'de> for ChoicesPeek {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ChoicesPeek;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of choices or null")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<ChoicesPeek, E> {
                Ok(ChoicesPeek::default())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<ChoicesPeek, A::Error> {
                let mut peek = ChoicesPeek::default();
                while let Some(choice) = seq.next_element::<ChoicePeek>()? {
                    peek.any = true;
                    peek.finished |= choice.finish_reason.is_some();
                }
                Ok(peek)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct StreamError {
    message: Option<String>,
    code: Option<Value>,
}

impl Translate for OpenAiStream {
    fn event(&mut self, ev: SseEvent, out: &mut Vec<Result<StreamItem, ProviderError>>) -> Flow {
        let data = ev.data.trim();
        if data == "[DONE]" {
            return Flow::Stop;
        }
        if data.is_empty() {
            return Flow::Continue;
        }
        let plain = plain_chunk(data.as_bytes());
        let peek = if plain {
            None
        } else {
            serde_json::from_str::<ChunkPeek>(data).ok()
        };
        let Some(peek) = peek else {
            // A plain chunk, or not ours to judge: relay what the upstream sent.
            out.push(Ok(StreamItem::Frame(sse::data_frame(data.as_bytes()))));
            return Flow::Continue;
        };
        if let Some(err) = peek.error {
            // An error inside a 200 stream (OpenAI sends these on overload).
            let status = err
                .code
                .as_ref()
                .and_then(|c| c.as_u64().or_else(|| c.as_str().and_then(|s| s.parse().ok())))
                .and_then(|c| u16::try_from(c).ok())
                .filter(|c| (400..600).contains(c))
                .unwrap_or(500);
            out.push(Err(ProviderError::Upstream {
                status,
                message: err.message.unwrap_or_else(|| "error in upstream stream".into()),
                retry_after: None,
            }));
            return Flow::Stop;
        }
        if peek.choices.finished {
            self.finished = true;
        }
        let usage_only = !peek.choices.any && peek.usage.is_some();
        if !usage_only || self.client_wants_usage {
            out.push(Ok(StreamItem::Frame(sse::data_frame(data.as_bytes()))));
        }
        if let Some(u) = peek.usage {
            out.push(Ok(StreamItem::Usage(u.usage())));
        }
        Flow::Continue
    }

    fn end(&mut self, out: &mut Vec<Result<StreamItem, ProviderError>>) {
        if !self.finished {
            out.push(Err(sse::cut_error()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::testing::frames;
    use crate::Endpoint;
    use serde_json::json;
    use tollgate_core::secrets::PlainSecrets;

    fn replay(text: &str, wants_usage: bool) -> Vec<Result<StreamItem, ProviderError>> {
        sse::testing::replay(OpenAiStream::new(wants_usage), text)
    }

    fn usages(items: &[Result<StreamItem, ProviderError>]) -> Vec<Usage> {
        items
            .iter()
            .filter_map(|i| match i {
                Ok(StreamItem::Usage(u)) => Some(*u),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn replays_chat_stream_with_usage_chunk() {
        let text = include_str!("../tests/fixtures/openai_chat_stream.txt");
        let with = replay(text, true);
        assert!(with.iter().all(Result::is_ok));
        assert_eq!(frames(&with).len(), 5);
        assert_eq!(
            usages(&with),
            vec![Usage {
                prompt_tokens: 19,
                completion_tokens: 10,
                cached_tokens: 0
            }]
        );
        let without = replay(text, false);
        let f = frames(&without);
        assert_eq!(f.len(), 4);
        assert!(f.iter().all(|c| !c["choices"].as_array().unwrap().is_empty()));
        assert_eq!(usages(&without).len(), 1);
    }

    #[test]
    fn frames_carry_the_upstream_bytes_unchanged() {
        let text = include_str!("../tests/fixtures/openai_chat_stream.txt");
        let out = replay(text, true);
        let relayed: String = out
            .iter()
            .filter_map(|i| match i {
                Ok(StreamItem::Frame(f)) => Some(std::str::from_utf8(f).unwrap().to_owned()),
                _ => None,
            })
            .collect();
        // The transcript is the relayed frames plus the `[DONE]` the relay adds.
        assert_eq!(format!("{relayed}data: [DONE]\n\n"), text);
    }

    #[test]
    fn replays_tool_call_stream() {
        let out = replay(include_str!("../tests/fixtures/openai_tool_stream.txt"), false);
        let f = frames(&out);
        let args: String = f
            .iter()
            .filter_map(|c| c.pointer("/choices/0/delta/tool_calls/0/function/arguments"))
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(args, r#"{"location":"Paris, France"}"#);
        assert_eq!(f.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(usages(&out)[0].cached_tokens, 64);
    }

    #[test]
    fn stream_without_done_is_complete_only_after_a_finish_reason() {
        let finished = "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
        assert!(replay(finished, false).iter().all(Result::is_ok));
        let cut = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":null}]}\n\n";
        let out = replay(cut, false);
        assert_eq!(out.len(), 2);
        assert!(matches!(out[1], Err(ProviderError::Unreachable(_))));
    }

    /// The plain-chunk test fires only where the parse would find no usage,
    /// no error and no finish (so skipping the parse changes nothing), and
    /// it does fire for ordinary content chunks.
    #[test]
    fn plain_chunks_are_exactly_those_the_parse_finds_nothing_in() {
        let parse = |t: &str| serde_json::from_str::<ChunkPeek>(t).ok();
        let mut corpus: Vec<String> = Vec::new();
        for sep in [":", " : ", ":\n  "] {
            for value in [
                "null",
                "{}",
                "\"stop\"",
                "5",
                "{\"prompt_tokens\":1,\"completion_tokens\":2}",
                "nullish",
            ] {
                for key in ["usage", "error", "finish_reason", "usage_metadata", "my_error"] {
                    corpus.push(format!(r#"{{"choices":[{{"index":0,"delta":{{"content":"x"}},"finish_reason":null}}],"{key}"{sep}{value}}}"#));
                    corpus.push(format!(
                        r#"{{"choices":[{{"index":0,"delta":{{}},"{key}"{sep}{value}}}],"usage":null}}"#
                    ));
                    // The words inside a message's text.
                    corpus.push(format!(r#"{{"choices":[{{"delta":{{"content":"\"{key}\"{sep}{value} an error in usage"}},"finish_reason":null}}]}}"#));
                    corpus.push(format!(r#"{{"choices":[],"{key}"{sep}{value},"usage"{sep}null}}"#));
                }
            }
        }
        for fixture in [
            include_str!("../tests/fixtures/openai_chat_stream.txt"),
            include_str!("../tests/fixtures/openai_tool_stream.txt"),
        ] {
            corpus.extend(
                fixture
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .map(str::to_owned),
            );
        }
        let mut plain = 0;
        for text in &corpus {
            if !plain_chunk(text.as_bytes()) {
                continue;
            }
            plain += 1;
            if let Some(p) = parse(text) {
                assert!(p.usage.is_none() && p.error.is_none() && !p.choices.finished, "{text}");
            }
        }
        // Content chunks, with and without `"usage":null`, take the short way.
        for text in [
            r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"c","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason": null}]}"#,
        ] {
            assert!(plain_chunk(text.as_bytes()), "{text}");
        }
        // And anything holding a usage, an error or a finish does not.
        for text in [
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#,
            r#"{"choices":[],"usage" : {"prompt_tokens":1}}"#,
            r#"{"error":{"message":"overloaded","code":503}}"#,
        ] {
            assert!(!plain_chunk(text.as_bytes()), "{text}");
        }
        assert!(plain > 20 && plain < corpus.len(), "{plain} of {}", corpus.len());
    }

    #[test]
    fn usage_only_chunks_are_those_without_choices() {
        let usage = r#""usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}"#;
        for (choices, usage_only) in [
            ("", true),
            (r#""choices":null,"#, true),
            (r#""choices":[],"#, true),
            (r#""choices":[{"index":0,"delta":{},"finish_reason":null}],"#, false),
        ] {
            let text = format!("data: {{{choices}{usage}}}\n\ndata: [DONE]\n\n");
            let out = replay(&text, false);
            assert_eq!(frames(&out).len(), usize::from(!usage_only), "{choices}");
            assert_eq!(usages(&out).len(), 1, "{choices}");
        }
        // Choices that are not an array are not ours to judge: relayed as sent.
        let out = replay("data: {\"choices\":5}\n\ndata: [DONE]\n\n", false);
        assert!(matches!(&out[..], [Ok(StreamItem::Frame(f))] if &f[..] == b"data: {\"choices\":5}\n\n"));
    }

    #[test]
    fn error_inside_a_stream_ends_it() {
        let text = "data: {\"error\":{\"message\":\"overloaded\",\"code\":503}}\n\ndata: {\"choices\":[]}\n\n";
        let out = replay(text, true);
        assert_eq!(out.len(), 1);
        match &out[0] {
            Err(ProviderError::Upstream { status, message, .. }) => {
                assert_eq!(*status, 503);
                assert_eq!(message, "overloaded");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_json_payloads_are_relayed() {
        let out = replay("data: hello\n\ndata: [DONE]\n\n", false);
        assert_eq!(out.len(), 1);
        assert!(matches!(&out[0], Ok(StreamItem::Frame(f)) if &f[..] == b"data: hello\n\n"));
    }

    #[test]
    fn parses_usage_of_every_endpoint() {
        let chat = br#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":2}}}"#;
        assert_eq!(
            parse_usage(chat).unwrap(),
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 7,
                cached_tokens: 2
            })
        );
        let emb = br#"{"data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        assert_eq!(
            parse_usage(emb)
                .unwrap()
                .map(|u| (u.prompt_tokens, u.completion_tokens)),
            Some((8, 0))
        );
        let null_details = br#"{"usage":{"prompt_tokens":1,"completion_tokens":1,"prompt_tokens_details":null}}"#;
        assert_eq!(parse_usage(null_details).unwrap().map(|u| u.cached_tokens), Some(0));
        assert_eq!(parse_usage(b"{}").unwrap(), None);
        let odd = br#"{"usage":{"prompt_tokens":-1}}"#;
        assert_eq!(parse_usage(odd).unwrap(), None, "unreadable usage is estimated");
        for none in [&br#"{"usage":null}"#[..], br#"{"usage":"12"}"#, br#"{"usage":[1,2]}"#] {
            assert_eq!(parse_usage(none).unwrap(), None, "{}", String::from_utf8_lossy(none));
        }
        let escaped = br#"{"id":"a\"b","usage":{"prompt_tokens":3,"completion_tokens":4,"x":"\u00e9"}}"#;
        assert_eq!(parse_usage(escaped).unwrap().map(|u| u.completion_tokens), Some(4));
        for bad in [
            &b"not json"[..],
            b"",
            b"{\"a\":1",
            b"[1]",
            b"null",
            b"{} trailing",
            b"<html>",
        ] {
            assert!(
                matches!(parse_usage(bad), Err(ProviderError::InvalidResponse(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn stream_body_forces_usage_and_keeps_everything_else() {
        let json = json!({"model": "m", "messages": [], "stream": false,
                          "stream_options": {"include_usage": false, "other": 1}, "temperature": 0.5});
        let expected = json!({"model": "m", "messages": [], "stream": true,
                   "stream_options": {"include_usage": true, "other": 1}, "temperature": 0.5});
        let config = Map::new();
        let secrets = PlainSecrets::default();
        let call = |endpoint, body| Call {
            endpoint,
            target: Target {
                base_url: None,
                config: &config,
                secrets: &secrets,
                headers: &[],
                model: "m",
            },
            body,
            stream: true,
            client_wants_usage: false,
            timeout: Duration::from_secs(1),
        };
        let sent = |call: Call<'_>| serde_json::from_slice::<Value>(&request_body(&call).unwrap()).unwrap();
        let chat = Body::from_json(Endpoint::ChatCompletions, json.clone()).unwrap();
        assert_eq!(sent(call(Endpoint::ChatCompletions, &chat)), expected);
        // A chat request the gateway prepared is sent as it is.
        let mut prepared = chat.clone();
        if let Body::Chat(c) = &mut prepared {
            c.ask_stream_usage();
        }
        assert_eq!(
            prepared,
            Body::from_json(Endpoint::ChatCompletions, expected.clone()).unwrap()
        );
        assert_eq!(sent(call(Endpoint::ChatCompletions, &prepared)), expected);
        let completion = Body::Json(json);
        assert_eq!(sent(call(Endpoint::Completions, &completion)), expected);
        let not_object = Body::Json(json!([1]));
        assert!(matches!(
            request_body(&call(Endpoint::Completions, &not_object)),
            Err(ProviderError::Unsupported(_))
        ));
    }
}
