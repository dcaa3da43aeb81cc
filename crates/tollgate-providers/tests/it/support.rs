//! Helpers the adapter tests share: a fixture that owns what a [`Call`]
//! borrows, and readers for whole answers, streams and errors.

use futures::StreamExt;
use serde_json::{json, Map, Value};
use std::time::Duration;
use tollgate_core::secrets::PlainSecrets;
use tollgate_core::token_usage::Usage;
use tollgate_providers::chat::Body;
use tollgate_providers::{Adapter, Call, Endpoint, ProviderError, StreamItem, Target, UpstreamResponse};

/// What the mocks are told to answer (multi-byte text crosses chunk edges).
pub const REPLY: &str = "Bonjour, caf\u{e9} \u{2615} and \u{65e5}\u{672c} from the mock.";

/// Owns what a [`Call`] borrows.
pub struct Fixture {
    pub base_url: Option<String>,
    pub config: Map<String, Value>,
    pub secrets: PlainSecrets,
    pub headers: Vec<(String, String)>,
    pub model: String,
    pub timeout: Duration,
}

impl Fixture {
    pub fn new(base_url: Option<String>, key: Option<&str>, model: &str) -> Self {
        Self {
            base_url,
            config: Map::new(),
            secrets: PlainSecrets(key.map(|k| vec![("key".to_owned(), k.into())]).unwrap_or_default()),
            headers: Vec::new(),
            model: model.to_owned(),
            timeout: Duration::from_secs(10),
        }
    }

    pub fn call<'a>(&'a self, endpoint: Endpoint, body: &'a Body, stream: bool, wants_usage: bool) -> Call<'a> {
        Call {
            endpoint,
            target: Target {
                base_url: self.base_url.as_deref(),
                config: &self.config,
                secrets: &self.secrets,
                headers: &self.headers,
                model: &self.model,
            },
            body,
            stream,
            client_wants_usage: wants_usage,
            timeout: self.timeout,
        }
    }

    /// Sends one call through `adapter` with a fresh HTTP client.
    pub async fn send(
        &self,
        adapter: &dyn Adapter,
        endpoint: Endpoint,
        body: &Value,
        stream: bool,
        wants_usage: bool,
    ) -> Result<UpstreamResponse, ProviderError> {
        let body = body_of(endpoint, body);
        adapter
            .send(&http(), self.call(endpoint, &body, stream, wants_usage))
            .await
    }
}

/// The body of a call to `endpoint` as the gateway hands it over: chat
/// typed, the rest as JSON.
pub fn body_of(endpoint: Endpoint, body: &Value) -> Body {
    Body::from_json(endpoint, body.clone()).expect("a well-typed request body")
}

pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// A whole answer's JSON body and usage.
pub fn whole(r: Result<UpstreamResponse, ProviderError>) -> (Value, Option<Usage>) {
    match r {
        Ok(UpstreamResponse::Whole { status, body, usage }) => {
            assert_eq!(status, 200);
            (serde_json::from_slice(&body).expect("JSON body"), usage)
        }
        Ok(UpstreamResponse::Stream(_)) => panic!("expected a whole answer"),
        Err(e) => panic!("call failed: {e:?}"),
    }
}

/// What a stream yielded.
#[derive(Debug, Default)]
pub struct Collected {
    pub raw: Vec<bytes::Bytes>,
    pub frames: Vec<Value>,
    pub usage: Vec<Usage>,
    pub error: Option<ProviderError>,
}

impl Collected {
    /// The first value at `pointer` in any frame.
    pub fn first(&self, pointer: &str) -> &Value {
        self.frames
            .iter()
            .find_map(|f| f.pointer(pointer))
            .unwrap_or_else(|| panic!("no frame has {pointer}"))
    }

    /// Every string at `pointer`, frame by frame.
    pub fn strs(&self, pointer: &str) -> Vec<&str> {
        self.frames
            .iter()
            .filter_map(|f| f.pointer(pointer).and_then(Value::as_str))
            .collect()
    }

    /// The strings at `pointer` joined: a stream's text.
    pub fn text(&self, pointer: &str) -> String {
        self.strs(pointer).concat()
    }
}

pub async fn collect(r: Result<UpstreamResponse, ProviderError>) -> Collected {
    let mut stream = match r {
        Ok(UpstreamResponse::Stream(s)) => s,
        Ok(UpstreamResponse::Whole { .. }) => panic!("expected a stream"),
        Err(e) => panic!("call failed: {e:?}"),
    };
    let mut out = Collected::default();
    while let Some(item) = stream.next().await {
        match item {
            Ok(StreamItem::Frame(f)) => {
                let text = std::str::from_utf8(&f).expect("UTF-8 frame");
                let payload = text
                    .strip_prefix("data: ")
                    .and_then(|t| t.strip_suffix("\n\n"))
                    .expect("one data: frame");
                assert_ne!(payload, "[DONE]", "[DONE] is the relay's to add");
                out.frames.push(serde_json::from_str(payload).expect("JSON chunk"));
                out.raw.push(f);
            }
            Ok(StreamItem::Usage(u)) => out.usage.push(u),
            Err(e) => {
                assert!(out.error.is_none(), "nothing after an error");
                out.error = Some(e);
            }
        }
    }
    out
}

pub fn upstream(r: Result<UpstreamResponse, ProviderError>) -> (u16, String) {
    match r {
        Err(ProviderError::Upstream { status, message, .. }) => (status, message),
        Err(e) => panic!("expected an upstream error, got {e:?}"),
        Ok(_) => panic!("expected an upstream error, got an answer"),
    }
}

pub fn expect_err(r: Result<UpstreamResponse, ProviderError>) -> ProviderError {
    match r {
        Err(e) => e,
        Ok(_) => panic!("expected an error"),
    }
}

/// A URL nothing listens on.
pub async fn dead_url() -> String {
    let l = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}/v1")
}

pub fn weather_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

/// Asserts what a stream the mock broke off yields: the frames sent before
/// the break, no usage, then an [`ProviderError::Unreachable`].
pub fn assert_cut(got: &Collected) {
    assert!(!got.frames.is_empty());
    assert!(got.usage.is_empty());
    assert!(
        matches!(got.error, Some(ProviderError::Unreachable(_))),
        "{:?}",
        got.error
    );
}

/// Usage with these prompt, completion and cached token counts.
pub fn tokens(prompt_tokens: u64, completion_tokens: u64, cached_tokens: u64) -> Usage {
    Usage {
        prompt_tokens,
        completion_tokens,
        cached_tokens,
    }
}

/// Asserts that a whole answer reports `want` both in its OpenAI `usage`
/// object and to the gateway's accounting.
pub fn assert_usage(answer: &Value, reported: Option<Usage>, want: Usage) {
    assert_eq!(answer["usage"]["prompt_tokens"], want.prompt_tokens);
    assert_eq!(answer["usage"]["completion_tokens"], want.completion_tokens);
    assert_eq!(
        answer["usage"]["prompt_tokens_details"]["cached_tokens"],
        want.cached_tokens
    );
    assert_eq!(reported, Some(want));
}

/// Model names that would change the shape of a URL if put into its path
/// unencoded: dot segments, `/`, `?`, `#` and `%`.
pub const HOSTILE_MODELS: &[&str] = &[
    "../../v1beta/cachedContents?x=",
    "a/../../../b",
    "m#frag",
    "%2e%2e/%2E%2E/x",
    "models/../x",
];

/// Model names that are themselves a path step: refused before anything is sent.
pub const DOT_MODELS: &[&str] = &[".", ".."];

/// Asserts that every request the mock saw stayed under `prefix`, with no
/// query other than `allowed_query`, and with no `..` step left in it.
pub fn assert_confined(requests: &[tollgate_testkit::Recorded], prefix: &str, allowed_query: Option<&str>) {
    assert!(!requests.is_empty(), "the mock saw no request");
    for r in requests {
        assert!(r.path.starts_with(prefix), "{} escaped {prefix}", r.path);
        assert!(
            !r.path
                .split('/')
                .any(|s| s == ".." || s == "." || s.eq_ignore_ascii_case("%2e%2e")),
            "{} keeps a dot segment",
            r.path
        );
        assert!(!r.path[prefix.len()..].contains("/.."), "{}", r.path);
        assert_eq!(r.query.as_deref(), allowed_query, "query of {}", r.path);
    }
}
