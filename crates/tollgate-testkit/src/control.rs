//! A run-time control handle for the mock upstreams: what usage to report,
//! which error to answer with, how long to wait, whether to cut a stream
//! halfway, and counters of credential exchanges (Vertex OAuth token calls,
//! STS AssumeRole calls) kept apart from model calls so tests can assert
//! caching. Cheap to clone; every clone steers the same mock. Also the
//! helpers the Google and Bedrock mocks share (streamed bodies, canned
//! tool arguments and embeddings) and a server replaying recorded
//! transcripts.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

/// Token counts a mock reports for every answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MockUsage {
    pub prompt: u64,
    pub completion: u64,
    pub cached: u64,
}

impl Default for MockUsage {
    fn default() -> Self {
        Self {
            prompt: 12,
            completion: 7,
            cached: 0,
        }
    }
}

#[derive(Debug)]
struct State {
    usage: MockUsage,
    reply: String,
    failure: Option<(u16, String)>,
    /// Model calls the failure still applies to (`None`: until `succeed`).
    failures_left: Option<usize>,
    /// `retry-after-ms` sent with a failure.
    retry_after_ms: Option<u64>,
    /// `retry-after` sent with a failure, verbatim (seconds or an HTTP date).
    retry_after: Option<String>,
    stream_exception: Option<(String, String)>,
    latency: Duration,
    cut_stream: bool,
    stall_stream: bool,
    auth_calls: usize,
    streams_opened: usize,
    streams_closed: usize,
}

impl Default for State {
    fn default() -> Self {
        Self {
            usage: MockUsage::default(),
            reply: "Hello from the mock upstream.".to_owned(),
            failure: None,
            failures_left: None,
            retry_after_ms: None,
            retry_after: None,
            stream_exception: None,
            latency: Duration::ZERO,
            cut_stream: false,
            stall_stream: false,
            auth_calls: 0,
            streams_opened: 0,
            streams_closed: 0,
        }
    }
}

/// Steers a running mock.
#[derive(Debug, Clone, Default)]
pub struct Control(Arc<Mutex<State>>);

impl Control {
    pub fn new() -> Self {
        Self::default()
    }

    /// Usage reported from now on.
    pub fn set_usage(&self, prompt: u64, completion: u64, cached: u64) {
        self.0.lock().usage = MockUsage {
            prompt,
            completion,
            cached,
        };
    }
    pub fn usage(&self) -> MockUsage {
        self.0.lock().usage
    }

    /// Text of every answer that is not a tool call; streams send it a word
    /// at a time.
    pub fn set_reply(&self, text: &str) {
        self.0.lock().reply = text.to_owned();
    }
    pub fn reply(&self) -> String {
        self.0.lock().reply.clone()
    }

    /// Model calls answer `status` with `message` in the provider's error
    /// body until [`Control::succeed`]. Authentication is still checked
    /// first, and credential exchanges are not affected.
    pub fn fail(&self, status: u16, message: &str) {
        let mut s = self.0.lock();
        s.failure = Some((status, message.to_owned()));
        s.failures_left = None;
    }
    /// Like [`Control::fail`], for the next `times` model calls only.
    pub fn fail_times(&self, times: usize, status: u16, message: &str) {
        let mut s = self.0.lock();
        s.failure = Some((status, message.to_owned()));
        s.failures_left = Some(times);
    }
    pub fn succeed(&self) {
        let mut s = self.0.lock();
        s.failure = None;
        s.failures_left = None;
        s.stream_exception = None;
    }
    /// The failure for this model call, if any (counting down a
    /// [`Control::fail_times`]).
    pub fn failure(&self) -> Option<(u16, String)> {
        let mut s = self.0.lock();
        match s.failures_left {
            Some(0) => {
                s.failure = None;
                s.failures_left = None;
            }
            Some(n) if s.failure.is_some() => s.failures_left = Some(n - 1),
            _ => {}
        }
        s.failure.clone()
    }
    /// Failures carry `retry-after-ms: ms` (OpenAI-compatible mock).
    pub fn set_retry_after_ms(&self, ms: Option<u64>) {
        self.0.lock().retry_after_ms = ms;
    }
    pub fn retry_after_ms(&self) -> Option<u64> {
        self.0.lock().retry_after_ms
    }
    /// Failures carry `retry-after: value` verbatim, e.g. an HTTP date
    /// (OpenAI-compatible mock).
    pub fn set_retry_after(&self, value: Option<&str>) {
        self.0.lock().retry_after = value.map(str::to_owned);
    }
    pub fn retry_after(&self) -> Option<String> {
        self.0.lock().retry_after.clone()
    }

    /// Streams end with an in-band error (Bedrock: an exception frame of
    /// type `kind`, e.g. `throttlingException`) after their first half.
    pub fn fail_stream(&self, kind: &str, message: &str) {
        self.0.lock().stream_exception = Some((kind.to_owned(), message.to_owned()));
    }
    pub fn stream_exception(&self) -> Option<(String, String)> {
        self.0.lock().stream_exception.clone()
    }

    /// Delay before every model answer (credential exchanges excluded).
    pub fn set_latency(&self, latency: Duration) {
        self.0.lock().latency = latency;
    }
    pub fn latency(&self) -> Duration {
        self.0.lock().latency
    }

    /// Streams break off (the connection is dropped) after half their events.
    pub fn cut_stream(&self, on: bool) {
        self.0.lock().cut_stream = on;
    }
    pub fn cuts_stream(&self) -> bool {
        self.0.lock().cut_stream
    }

    /// Streams send their first half, then go silent without closing (a
    /// stalled upstream): for idle timeouts and client cancellation.
    pub fn stall_stream(&self, on: bool) {
        self.0.lock().stall_stream = on;
    }

    /// How a stream ends under the current control.
    pub fn stream_end(&self) -> StreamEnd {
        let s = self.0.lock();
        if s.cut_stream {
            StreamEnd::Cut
        } else if s.stall_stream {
            StreamEnd::Stall
        } else {
            StreamEnd::Complete
        }
    }

    /// Credential exchanges served so far (OAuth token or STS AssumeRole).
    pub fn auth_calls(&self) -> usize {
        self.0.lock().auth_calls
    }
    pub(crate) fn count_auth_call(&self) -> usize {
        let mut s = self.0.lock();
        s.auth_calls += 1;
        s.auth_calls
    }

    /// Streamed answers the mock has started sending.
    pub fn streams_opened(&self) -> usize {
        self.0.lock().streams_opened
    }

    /// Streamed answers whose body the server has let go of: sent to the
    /// end, cut, or dropped because the client went away. A stalled stream
    /// is closed only when its client drops the request.
    pub fn streams_closed(&self) -> usize {
        self.0.lock().streams_closed
    }

    /// Counts a stream as opened; the guard counts it closed when dropped.
    pub(crate) fn open_stream(&self) -> StreamGuard {
        self.0.lock().streams_opened += 1;
        StreamGuard(self.clone())
    }

    /// Waits out the configured latency.
    pub(crate) async fn delay(&self) {
        let d = self.latency();
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }
}

/// Splits a reply into stream pieces: words with their trailing space.
pub(crate) fn pieces(text: &str) -> Vec<String> {
    let mut out: Vec<String> = text.split_inclusive(' ').map(str::to_owned).collect();
    if out.is_empty() {
        out.push(String::new());
    }
    out
}

/// Deterministic arguments for a tool call: a minimal valid instance of its
/// parameters schema (an object even without one).
pub(crate) fn tool_arguments(schema: Option<&serde_json::Value>) -> serde_json::Value {
    match schema.map(schema_instance) {
        Some(v @ serde_json::Value::Object(_)) => v,
        _ => serde_json::json!({}),
    }
}

/// A minimal instance of a JSON schema, as a model following it would
/// answer: every declared property of an object (so strict schemas hold),
/// `"mock"` for strings, 1 for numbers, `true` for booleans, one item in an
/// array, the first of an `enum`, `const`, `anyOf`/`oneOf` choice; local
/// `$ref`s (`#/$defs/...`, `#/definitions/...`) are followed.
pub fn schema_instance(schema: &serde_json::Value) -> serde_json::Value {
    instance(schema, schema, 0)
}

fn instance(s: &serde_json::Value, root: &serde_json::Value, depth: u32) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    if depth > 16 {
        return Value::Null;
    }
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let target = r.strip_prefix('#').and_then(|p| root.pointer(p));
        return target.map_or(Value::Null, |t| instance(t, root, depth + 1));
    }
    if let Some(c) = s.get("const") {
        return c.clone();
    }
    if let Some(first) = s.get("enum").and_then(Value::as_array).and_then(|e| e.first()) {
        return first.clone();
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(first) = s.get(key).and_then(Value::as_array).and_then(|a| {
            a.iter()
                .find(|b| b.get("type").and_then(Value::as_str) != Some("null"))
                .or(a.first())
        }) {
            return instance(first, root, depth + 1);
        }
    }
    let kind = match s.get("type") {
        Some(Value::String(t)) => t.to_ascii_lowercase(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null")
            .to_owned(),
        _ if s.get("properties").is_some() => "object".into(),
        _ => "string".into(),
    };
    match kind.as_str() {
        "object" => {
            let mut out = Map::new();
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                for (name, prop) in props {
                    out.insert(name.clone(), instance(prop, root, depth + 1));
                }
            }
            Value::Object(out)
        }
        "array" => {
            let n = s.get("minItems").and_then(Value::as_u64).unwrap_or(1).clamp(1, 8);
            let item = s.get("items").map_or(json!("mock"), |i| instance(i, root, depth + 1));
            Value::Array(vec![item; n as usize])
        }
        "integer" | "number" => s.get("minimum").cloned().unwrap_or(json!(1)),
        "boolean" => json!(true),
        "null" => Value::Null,
        _ => json!("mock"),
    }
}

/// A deterministic embedding for `text` of `dims` values.
pub(crate) fn embedding(text: &str, dims: usize) -> Vec<f64> {
    let len = text.len() as f64;
    (0..dims).map(|i| ((len + i as f64) % 7.0) / 8.0 - 0.25).collect()
}

/// Whitespace-separated words: the mocks' deterministic token count.
pub(crate) fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// How a mock's streamed answer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// Every frame, then the end.
    Complete,
    /// The first half, then the connection drops (a broken upstream).
    Cut,
    /// The first half, then silence with the connection open (a stalled one).
    Stall,
}

/// Counts its stream closed when dropped (with the response body).
#[derive(Debug)]
pub(crate) struct StreamGuard(Control);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0 .0.lock().streams_closed += 1;
    }
}

/// A body stream that holds a [`StreamGuard`] until it is dropped.
struct Guarded<S> {
    inner: S,
    _guard: StreamGuard,
}

impl<S: futures::Stream + Unpin> futures::Stream for Guarded<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        std::pin::Pin::new(&mut self.inner).poll_next(cx)
    }
}

/// A streaming answer of `frames`, each flushed on its own, ending as the
/// control says ([`Control::stream_end`]), and counted open and closed.
pub(crate) fn stream_body(
    frames: Vec<axum::body::Bytes>,
    control: &Control,
    content_type: &'static str,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use futures::StreamExt;
    let end = control.stream_end();
    let guard = control.open_stream();
    let keep = match end {
        StreamEnd::Complete => frames.len(),
        StreamEnd::Cut | StreamEnd::Stall => (frames.len() / 2).max(1),
    };
    let items: Vec<Result<axum::body::Bytes, std::io::Error>> = frames
        .into_iter()
        .take(keep)
        .map(Ok)
        .chain((end == StreamEnd::Cut).then(|| Err(std::io::Error::other("stream cut by the mock"))))
        .collect();
    // Yielding between frames lets the server flush each one before the
    // next, so a cut really comes after the frames before it.
    let body = futures::stream::iter(items).then(|item| async {
        tokio::task::yield_now().await;
        item
    });
    let body = body.chain(
        futures::stream::iter((end == StreamEnd::Stall).then_some(()))
            .then(|()| async { std::future::pending::<Result<axum::body::Bytes, std::io::Error>>().await }),
    );
    // The guard lives as long as the body: the server drops it when the
    // stream ends or the client goes away.
    let body = Guarded {
        inner: body.boxed(),
        _guard: guard,
    };
    ([("content-type", content_type)], axum::body::Body::from_stream(body)).into_response()
}

/// Starts a server that answers every request with `body` (a recorded
/// transcript), sent in `chunk`-byte pieces so that the client's parser
/// meets boundaries anywhere. Requests are still recorded.
pub async fn start_replay(
    body: Vec<u8>,
    content_type: &'static str,
    chunk: usize,
) -> std::io::Result<crate::MockServer> {
    let journal = crate::Journal::default();
    let recorder = journal.clone();
    let router = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let pieces: Vec<axum::body::Bytes> = body
            .chunks(chunk.max(1))
            .map(axum::body::Bytes::copy_from_slice)
            .collect();
        let recorder = recorder.clone();
        async move {
            crate::record(&recorder, req).await;
            stream_body(pieces, &Control::default(), content_type)
        }
    });
    crate::MockServer::start(router, journal).await
}

/// A bare HTTP/1.1 client for the mocks' own tests (the test kit does not
/// depend on an HTTP client crate).
#[cfg(test)]
pub(crate) mod raw {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A response: status, headers (lower-case names) and body text.
    pub(crate) struct Answer {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body: String,
    }

    impl Answer {
        pub(crate) fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
        }
    }

    /// Sends one request and reads the whole answer (`Connection: close`).
    pub(crate) async fn request(
        server: &crate::MockServer,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer {
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\nconnection: close\r\n",
            server.addr,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
            .collect();
        Answer {
            status,
            headers,
            body: body.to_owned(),
        }
    }
}
