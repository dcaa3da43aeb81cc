//! How every adapter talks to its upstream, in one place: opening secrets,
//! building URLs and headers, sending under a deadline, reading bodies,
//! streaming them, and turning a failure into a [`ProviderError`] (the
//! unreachable-host message, a non-2xx answer's message or excerpt, the
//! `retry-after` the upstream asked for).
//!
//! Adapters differ only in how their protocol words an error: each passes
//! an [`ErrorMessage`] that picks the message out of a non-2xx body
//! ([`openai_message`] for OpenAI, Azure and Anthropic; Google's and AWS's
//! live beside their adapters). Whatever it cannot read becomes an
//! [`excerpt`] of the body, cut at [`MAX_EXCERPT`] bytes on a character
//! boundary.

use crate::{ProviderError, Target};
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use parking_lot::Mutex;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::LazyLock;
use std::time::Duration;
use tokio::time::Instant;
use tollgate_core::secrets::{Secret, SecretSource};
use url::Url;

/// At most this many bytes of a body are kept as an error message.
pub const MAX_EXCERPT: usize = 512;

/// Picks the upstream's own message out of a non-2xx answer (headers and
/// body), in the protocol's envelope; `None` when there is none.
pub(crate) type ErrorMessage = fn(&HeaderMap, &[u8]) -> Option<String>;

// ---------------------------------------------------------------------------
// Secrets, configuration, URLs and headers
// ---------------------------------------------------------------------------

/// Opens the secret field `name`. A blank value (empty or only whitespace)
/// counts as unset. A failure to open is a configuration error whose
/// message never holds the secret.
pub(crate) fn open_secret(secrets: &dyn SecretSource, name: &str) -> Result<Option<Secret<String>>, ProviderError> {
    let opened = secrets
        .open(name)
        .map_err(|e| ProviderError::Config(format!("cannot open secret {name}: {e}")))?;
    Ok(opened.filter(|v| !v.expose().trim().is_empty()))
}

/// [`open_secret`] on a call's credentials.
pub(crate) fn secret(target: &Target<'_>, name: &str) -> Result<Option<Secret<String>>, ProviderError> {
    open_secret(target.secrets, name)
}

/// A configuration string, if set and not blank (trimmed).
pub(crate) fn config_str<'a>(config: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    config
        .get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// `base` and `path` joined with exactly one slash.
pub fn join_url(base: &str, path: &str) -> String {
    format!("{}/{}", base.trim_end_matches('/'), path.trim_start_matches('/'))
}

/// How many parsed upstream URLs [`post`] keeps; past it, it starts over.
const PARSED_URLS: usize = 1024;

/// A `POST` to `url`. reqwest parses a URL given as text on every request
/// (about 7,000 instructions, a few percent of what a request costs) and
/// takes a parsed `Url` as it is, so the URLs already parsed are kept, by
/// their text: an upstream's URL is the same for every request to it (and
/// holds no secret: credentials go in headers). A URL that does not parse
/// goes to reqwest as text, which refuses it as before.
pub(crate) fn post(http: &reqwest::Client, url: &str) -> reqwest::RequestBuilder {
    static PARSED: LazyLock<Mutex<foldhash::HashMap<Box<str>, Url>>> = LazyLock::new(Mutex::default);
    let cached = PARSED.lock().get(url).cloned();
    let parsed = cached.or_else(|| {
        let parsed = Url::parse(url).ok()?;
        let mut all = PARSED.lock();
        if all.len() >= PARSED_URLS {
            all.clear();
        }
        all.insert(url.into(), parsed.clone());
        Some(parsed)
    });
    match parsed {
        Some(u) => http.post(u),
        None => http.post(url),
    }
}

/// What [`path_segment`] leaves as is: RFC 3986 unreserved characters.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One URL path segment made from `value` (a model, deployment, region or
/// project name), percent-encoded: everything but RFC 3986 unreserved
/// characters, so `/`, `?`, `#` and `%` cannot change the URL's shape.
/// Bedrock model ids carry `:` and ARNs carry `/`, and SigV4 signs the path
/// exactly as sent. An empty segment, `.` or `..` would be read as a path
/// step rather than a name, so it is refused (`what` names the field).
pub(crate) fn path_segment(what: &str, value: &str) -> Result<String, ProviderError> {
    Ok(percent_encoding::utf8_percent_encode(segment_name(what, value)?, SEGMENT).to_string())
}

/// `value` if it can be one path segment once encoded: not empty, `.` or
/// `..` (for `url`'s segment setter, which encodes the rest itself).
pub(crate) fn segment_name<'a>(what: &str, value: &'a str) -> Result<&'a str, ProviderError> {
    if matches!(value, "" | "." | "..") {
        return Err(ProviderError::Unsupported(format!(
            "{what} {value:?} cannot be used in a URL path"
        )));
    }
    Ok(value)
}

/// A header value, refusing control characters. The error names the field,
/// never the value (it may be a key).
pub(crate) fn header_value(value: &str, field: &str) -> Result<HeaderValue, ProviderError> {
    let mut v = HeaderValue::from_str(value)
        .map_err(|_| ProviderError::Config(format!("{field} is not a valid header value")))?;
    v.set_sensitive(true);
    Ok(v)
}

/// `Bearer {token}` as a header value.
pub(crate) fn bearer(token: &Secret<String>, field: &str) -> Result<HeaderValue, ProviderError> {
    let value = zeroize::Zeroizing::new(format!("Bearer {}", token.expose()));
    header_value(&value, field)
}

/// Adds the target's custom headers (a custom model's `custom_headers`); a
/// name or value that cannot be a header is a configuration error.
pub(crate) fn add_custom_headers(headers: &mut HeaderMap, target: &Target<'_>) -> Result<(), ProviderError> {
    for (k, v) in target.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| ProviderError::Config(format!("invalid custom header name {k:?}")))?;
        headers.insert(name, header_value(v, k)?);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Sending and reading
// ---------------------------------------------------------------------------

/// The instant by which a whole exchange must be done.
pub(crate) fn deadline(timeout: Duration) -> Instant {
    Instant::now() + timeout
}

/// Sends `req` and waits for the response headers until `deadline`,
/// whatever the status.
pub(crate) async fn send_raw(
    req: reqwest::RequestBuilder,
    deadline: Instant,
) -> Result<reqwest::Response, ProviderError> {
    match tokio::time::timeout_at(deadline, req.send()).await {
        Ok(r) => r.map_err(ProviderError::from_reqwest),
        Err(_) => Err(ProviderError::Timeout),
    }
}

/// Reads a whole body within what is left of the deadline.
pub(crate) async fn read_body(resp: reqwest::Response, deadline: Instant) -> Result<Bytes, ProviderError> {
    let url = resp.url().clone();
    match tokio::time::timeout_at(deadline, resp.bytes()).await {
        Ok(r) => r.map_err(|e| body_error(e, &url)),
        Err(_) => Err(ProviderError::Timeout),
    }
}

/// A body read failure, naming the host: reqwest leaves the URL off body
/// errors.
fn body_error(e: reqwest::Error, url: &url::Url) -> ProviderError {
    let e = if e.url().is_some() { e } else { e.with_url(url.clone()) };
    ProviderError::from_reqwest(e)
}

/// Sends `req` and waits for a 2xx response's headers until `deadline`; the
/// body is left to the caller (a stream flows as long as the upstream keeps
/// sending; a whole answer is read with [`read_body`] under the same
/// deadline). A non-2xx answer's body is read within the deadline and
/// becomes [`upstream_error`]; if it cannot be read, the status stands
/// alone (it still tells a retry from a refusal).
pub(crate) async fn send(
    req: reqwest::RequestBuilder,
    deadline: Instant,
    message: ErrorMessage,
) -> Result<reqwest::Response, ProviderError> {
    let resp = send_raw(req, deadline).await?;
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = read_body(resp, deadline).await.unwrap_or_default();
    Err(upstream_error(status, &headers, &body, message))
}

/// [`send`], then the whole 2xx body within the same deadline.
pub(crate) async fn send_whole(
    req: reqwest::RequestBuilder,
    deadline: Instant,
    message: ErrorMessage,
) -> Result<(u16, Bytes), ProviderError> {
    let resp = send(req, deadline, message).await?;
    let status = resp.status().as_u16();
    Ok((status, read_body(resp, deadline).await?))
}

/// A credential exchange (OAuth token, STS): the status and the whole body,
/// read within the deadline, whatever the status (the caller words its own
/// [`ProviderError::Auth`]).
pub(crate) async fn exchange(req: reqwest::RequestBuilder, deadline: Instant) -> Result<(u16, Bytes), ProviderError> {
    let resp = send_raw(req, deadline).await?;
    let status = resp.status().as_u16();
    Ok((status, read_body(resp, deadline).await?))
}

/// A streaming response's body, chunk by chunk; a transport error ends it
/// (mapped as [`ProviderError::from_reqwest`]). Dropping the stream drops
/// the upstream request.
pub(crate) fn body_stream(resp: reqwest::Response) -> BoxStream<'static, Result<Bytes, ProviderError>> {
    let url = resp.url().clone();
    resp.bytes_stream()
        .map(move |r| r.map_err(|e| body_error(e, &url)))
        .boxed()
}

/// Parses a whole JSON answer.
pub(crate) fn parse_json(body: &[u8]) -> Result<Value, ProviderError> {
    serde_json::from_slice(body).map_err(|e| ProviderError::InvalidResponse(format!("answer is not JSON: {e}")))
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// The error for a non-2xx answer: the protocol's own message (`message`),
/// else an [`excerpt`] of the body, else `HTTP {status}`; with the wait the
/// upstream's headers ask for (`retry-after-ms`, `x-ms-retry-after-ms`,
/// `retry-after`).
pub(crate) fn upstream_error(status: u16, headers: &HeaderMap, body: &[u8], message: ErrorMessage) -> ProviderError {
    let message = message(headers, body)
        .or_else(|| excerpt(body))
        .unwrap_or_else(|| format!("HTTP {status}"));
    ProviderError::Upstream {
        status,
        message,
        retry_after: tollgate_core::routing::retry_after(|name| headers.get(name).and_then(|v| v.to_str().ok())),
    }
}

/// The message of an OpenAI-style error body: `error.message` (OpenAI,
/// Azure and Anthropic all put it there), else a top-level `message`.
pub(crate) fn openai_message(_: &HeaderMap, body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Envelope {
        error: Option<ErrorBody>,
        message: Option<String>,
    }
    #[derive(Deserialize)]
    struct ErrorBody {
        message: Option<String>,
    }
    let e = serde_json::from_slice::<Envelope>(body).ok()?;
    e.error.and_then(|b| b.message).or(e.message)
}

/// A short, printable excerpt of a body for an error message: trimmed, cut
/// at [`MAX_EXCERPT`] bytes on a character boundary (marked with `…`);
/// `None` for a blank body.
pub fn excerpt(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if text.len() <= MAX_EXCERPT {
        return Some(text.to_owned());
    }
    let mut end = MAX_EXCERPT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(format!("{}…", &text[..end]))
}

impl ProviderError {
    /// Maps a reqwest failure: a timeout is [`ProviderError::Timeout`],
    /// anything else [`ProviderError::Unreachable`], naming the host (and
    /// port) and the cause from the error's source chain (connection refused,
    /// DNS failure, TLS error, reset...). The path and query are left out:
    /// they may carry a key, as Gemini's did; headers never appear.
    pub fn from_reqwest(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            return ProviderError::Timeout;
        }
        let host = e
            .url()
            .and_then(|u| u.host_str().map(|h| (h.to_owned(), u.port_or_known_default())))
            .map(|(h, port)| match port {
                Some(p) => format!("{h}:{p}"),
                None => h,
            })
            .unwrap_or_else(|| "the upstream".to_owned());
        let what = if e.is_connect() {
            "cannot connect to"
        } else if e.is_body() || e.is_decode() {
            "the answer broke off from"
        } else {
            "the request failed to"
        };
        let e = e.without_url();
        // reqwest's own text ("error sending request") says less than `what`.
        let cause = match std::error::Error::source(&e) {
            Some(source) => causes(source),
            None => e.to_string(),
        };
        ProviderError::Unreachable(format!("{what} {host}: {cause}"))
    }
}

/// The messages of `e`'s source chain, innermost last, without the repeats
/// that wrapping errors often add ("X: X").
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        // A wrapper often ends with its source's text: keep the shorter.
        if let Some(last) = parts.last_mut() {
            if let Some(stripped) = last.strip_suffix(&text) {
                *last = stripped.trim_end_matches([':', ' ']).to_owned();
            }
        }
        if !text.is_empty() && !parts.contains(&text) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.retain(|p| !p.is_empty());
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::routing::RetryAfter;
    use tollgate_core::secrets::PlainSecrets;

    fn message_of(body: &[u8]) -> String {
        match upstream_error(502, &HeaderMap::new(), body, openai_message) {
            ProviderError::Upstream { status, message, .. } => {
                assert_eq!(status, 502);
                message
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn posts_go_to_the_url_given_and_bad_ones_are_refused_as_before() {
        let http = reqwest::Client::new();
        for _ in 0..2 {
            let req = post(&http, "http://127.0.0.1:9/v1/chat/completions?api-version=1")
                .build()
                .unwrap();
            assert_eq!(req.method(), reqwest::Method::POST);
            assert_eq!(
                req.url().as_str(),
                "http://127.0.0.1:9/v1/chat/completions?api-version=1"
            );
        }
        for bad in ["not a url", "data:text/plain,hi", "http://"] {
            let ours = post(&http, bad).build().unwrap_err();
            let theirs = http.post(bad).build().unwrap_err();
            assert_eq!(ours.to_string(), theirs.to_string(), "{bad}");
            assert!(ours.is_builder(), "{bad}");
        }
    }

    #[test]
    fn error_messages_come_from_the_body() {
        let openai = br#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error"}}"#;
        let anthropic = br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#;
        let top_level = br#"{"message":"bad gateway"}"#;
        let cases: [(&[u8], &str); 6] = [
            (openai, "Incorrect API key provided"),
            (anthropic, "slow down"),
            (top_level, "bad gateway"),
            (b"  plain text  ", "plain text"),
            (b"", "HTTP 502"),
            (b" \n ", "HTTP 502"),
        ];
        for (body, want) in cases {
            assert_eq!(message_of(body), want);
        }
    }

    #[test]
    fn excerpts_are_cut_on_a_char_boundary_at_one_limit() {
        // 'é' is two bytes: 1000 of them cannot be cut at 512 exactly
        // without splitting one unless the cut lands between them.
        for text in ["é".repeat(1000), format!("a{}", "é".repeat(1000)), "x".repeat(600)] {
            let cut = excerpt(text.as_bytes()).unwrap();
            let kept = cut.strip_suffix('…').unwrap();
            assert!(
                kept.len() <= MAX_EXCERPT && kept.len() > MAX_EXCERPT - 4,
                "{}",
                kept.len()
            );
            assert!(text.starts_with(kept));
        }
        assert_eq!(excerpt(b"short").as_deref(), Some("short"));
        assert_eq!(excerpt(b"   "), None);
        let exact = "y".repeat(MAX_EXCERPT);
        assert_eq!(excerpt(exact.as_bytes()), Some(exact));
    }

    #[test]
    fn retry_after_comes_from_the_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after-ms", HeaderValue::from_static("1500"));
        match upstream_error(429, &headers, b"{}", openai_message) {
            ProviderError::Upstream { retry_after, .. } => {
                assert_eq!(retry_after, Some(RetryAfter::Delay(Duration::from_millis(1500))))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn blank_secrets_are_unset_everywhere() {
        let secrets = PlainSecrets(vec![
            ("empty".into(), Secret::default()),
            ("spaces".into(), " \t\n".into()),
            ("key".into(), " sk-1 ".into()),
        ]);
        assert!(open_secret(&secrets, "empty").unwrap().is_none());
        assert!(open_secret(&secrets, "spaces").unwrap().is_none());
        assert!(open_secret(&secrets, "missing").unwrap().is_none());
        let key = open_secret(&secrets, "key").unwrap().unwrap();
        assert_eq!(key.expose(), " sk-1 ");
        assert!(!format!("{key:?}").contains("sk-1"), "Debug redacts");
    }

    #[test]
    fn joins_urls_and_checks_headers() {
        assert_eq!(
            join_url("http://h/v1/", "/chat/completions"),
            "http://h/v1/chat/completions"
        );
        assert_eq!(join_url("http://h/v1", "/embeddings"), "http://h/v1/embeddings");
        assert!(matches!(header_value("a\nb", "key"), Err(ProviderError::Config(m)) if !m.contains("a\nb")));
        assert!(header_value("v", "f").unwrap().is_sensitive());
    }

    /// A server that answers every connection with `answer` (raw HTTP),
    /// then closes it; `None` accepts and never answers.
    async fn raw_server(answer: Option<&'static str>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    match answer {
                        Some(a) => {
                            let _ = sock.write_all(a.as_bytes()).await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                });
            }
        });
        format!("http://{addr}/x")
    }

    #[tokio::test]
    async fn an_unreadable_error_body_keeps_the_status() {
        // 503 whose body breaks off: the status still tells a retry apart.
        let url = raw_server(Some(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 100\r\nretry-after: 2\r\n\r\npartial",
        ))
        .await;
        let http = reqwest::Client::new();
        let e = send_whole(http.get(&url), deadline(Duration::from_secs(5)), openai_message)
            .await
            .unwrap_err();
        match e {
            ProviderError::Upstream {
                status,
                message,
                retry_after,
            } => {
                assert_eq!(status, 503);
                assert_eq!(message, "HTTP 503");
                assert_eq!(retry_after, Some(RetryAfter::Delay(Duration::from_secs(2))));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_silent_upstream_times_out_at_the_deadline() {
        let url = raw_server(None).await;
        let http = reqwest::Client::new();
        let e = send_whole(http.get(&url), deadline(Duration::from_millis(100)), openai_message).await;
        assert!(matches!(e, Err(ProviderError::Timeout)), "{e:?}");
        let e = exchange(http.get(&url), deadline(Duration::from_millis(100))).await;
        assert!(matches!(e, Err(ProviderError::Timeout)), "{e:?}");
    }

    #[tokio::test]
    async fn a_2xx_body_that_breaks_off_is_unreachable() {
        let url = raw_server(Some("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")).await;
        let http = reqwest::Client::new();
        let e = send_whole(http.get(&url), deadline(Duration::from_secs(5)), openai_message).await;
        match e {
            Err(ProviderError::Unreachable(m)) => {
                assert!(m.starts_with("the answer broke off from 127.0.0.1:"), "{m}");
                assert!(!m.contains("/x"), "no path: {m}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn path_segments_are_encoded() {
        let seg = |s| path_segment("model", s).unwrap();
        assert_eq!(
            seg("anthropic.claude-3-haiku-20240307-v1:0"),
            "anthropic.claude-3-haiku-20240307-v1%3A0"
        );
        assert_eq!(seg("arn:aws:x/y"), "arn%3Aaws%3Ax%2Fy");
        assert_eq!(
            seg("../../v1beta/cachedContents?x=#%2e"),
            "..%2F..%2Fv1beta%2FcachedContents%3Fx%3D%23%252e"
        );
        assert_eq!(seg("caf\u{e9} a"), "caf%C3%A9%20a");
        for bad in ["", ".", ".."] {
            assert!(matches!(path_segment("model", bad), Err(ProviderError::Unsupported(_))));
        }
    }
}
