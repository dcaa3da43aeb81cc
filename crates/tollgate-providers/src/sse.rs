//! Server-sent events: an incremental parser over a byte stream, and the
//! plumbing that turns an upstream's SSE body into a stream of translated
//! [`StreamItem`]s.
//!
//! The parser follows the WHATWG event-stream rules: lines end with `\r\n`,
//! `\n` or `\r`; `data:` lines are joined with `\n`; a blank line dispatches
//! the event; lines starting with `:` are comments; one leading space after
//! the colon is dropped. Bytes are buffered until a whole line is there, so a
//! chunk may end anywhere (inside a UTF-8 sequence, between `\r` and `\n`).

use crate::{ProviderError, StreamItem};
use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt};

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, if the event had one (`message` is the default
    /// type, left as `None`).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The `id:` field, if any.
    pub id: Option<String>,
}

/// An incremental SSE parser: feed it chunks, take out complete events.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the current, incomplete line.
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a `\n` opening the next one belongs
    /// to the same line ending.
    after_cr: bool,
    /// The byte-order mark may only appear at the very start.
    started: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
    id: Option<String>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one chunk and returns every event it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        let mut rest = chunk;
        if !self.started && !rest.is_empty() {
            self.line.extend_from_slice(rest);
            // Wait for three bytes before deciding whether a BOM is there.
            if self.line.len() < 3 && b"\xEF\xBB\xBF".starts_with(&self.line) {
                return out;
            }
            self.started = true;
            let buffered = std::mem::take(&mut self.line);
            let body = buffered.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&buffered);
            self.scan(body, &mut out);
            return out;
        }
        if self.after_cr {
            self.after_cr = false;
            if let Some(stripped) = rest.strip_prefix(b"\n") {
                rest = stripped;
            }
        }
        self.scan(rest, &mut out);
        out
    }

    /// True when bytes or fields of an unfinished event are buffered: a
    /// stream that ends now was cut inside an event.
    pub fn has_pending(&self) -> bool {
        !self.line.is_empty() || self.has_data
    }

    fn scan(&mut self, mut rest: &[u8], out: &mut Vec<SseEvent>) {
        while let Some(pos) = memchr::memchr2(b'\n', b'\r', rest) {
            let ending = rest[pos];
            if self.line.is_empty() {
                self.process_line(&rest[..pos], out);
            } else {
                self.line.extend_from_slice(&rest[..pos]);
                let line = std::mem::take(&mut self.line);
                self.process_line(&line, out);
                // Keep the allocation for the next line.
                self.line = line;
                self.line.clear();
            }
            rest = &rest[pos + 1..];
            if ending == b'\r' {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.line.extend_from_slice(rest);
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        // Valid UTF-8 (the norm) takes the fast validation path and borrows.
        let value = match std::str::from_utf8(value) {
            Ok(v) => std::borrow::Cow::Borrowed(v),
            Err(_) => String::from_utf8_lossy(value),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&value);
                self.has_data = true;
            }
            b"event" => self.event = Some(value.into_owned()),
            b"id" if !value.contains('\0') => self.id = Some(value.into_owned()),
            // `retry` and unknown fields do not matter to a proxy.
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = self.event.take().filter(|e| !e.is_empty() && e != "message");
        if !self.has_data {
            return;
        }
        self.has_data = false;
        out.push(SseEvent {
            event,
            data: std::mem::take(&mut self.data),
            id: self.id.clone(),
        });
    }
}

/// Turns an upstream byte stream (a body from [`crate::transport`]) into a
/// stream of events. A transport error ends the stream with that error.
pub fn events<S>(body: S) -> BoxStream<'static, Result<SseEvent, ProviderError>>
where
    S: Stream<Item = Result<Bytes, ProviderError>> + Send + 'static,
{
    let state = (body.boxed(), SseParser::new(), false);
    futures::stream::unfold(state, |(mut body, mut parser, done)| async move {
        if done {
            return None;
        }
        loop {
            match body.next().await {
                Some(Ok(chunk)) => {
                    let evs = parser.push(&chunk);
                    if !evs.is_empty() {
                        let items: Vec<_> = evs.into_iter().map(Ok).collect();
                        return Some((items, (body, parser, false)));
                    }
                }
                Some(Err(e)) => {
                    return Some((vec![Err(e)], (body, parser, true)));
                }
                None => return None,
            }
        }
    })
    .flat_map(futures::stream::iter)
    .boxed()
}

/// The events of a streaming response's body.
pub fn response_events(resp: reqwest::Response) -> BoxStream<'static, Result<SseEvent, ProviderError>> {
    events(crate::transport::body_stream(resp))
}

/// Whether a translated stream goes on after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The upstream said it is finished (`[DONE]`, `message_stop`).
    Stop,
}

/// Turns upstream events into items for the client, one protocol each.
/// `E` is what the upstream's body is cut into before translation: parsed
/// SSE events, or raw chunks where the protocol frames its own (Bedrock's
/// binary event stream).
pub trait Translate<E = SseEvent>: Send + 'static {
    /// Handles one event, pushing what it yields onto `out`. Pushing an `Err`
    /// ends the stream after the items before it.
    fn event(&mut self, ev: E, out: &mut Vec<Result<StreamItem, ProviderError>>) -> Flow;

    /// The upstream closed the stream without a [`Flow::Stop`]: push what is
    /// still owed, or an error if the answer is incomplete.
    fn end(&mut self, out: &mut Vec<Result<StreamItem, ProviderError>>);
}

/// The error for a stream that ended before the upstream said it was done.
pub fn cut_error() -> ProviderError {
    ProviderError::Unreachable("upstream closed the stream before it finished".into())
}

/// Runs `t` over `events`, ending at the first error or [`Flow::Stop`].
pub fn translate<E: Send + 'static, T: Translate<E>>(
    events: BoxStream<'static, Result<E, ProviderError>>,
    t: T,
) -> BoxStream<'static, Result<StreamItem, ProviderError>> {
    futures::stream::unfold((events, t, false), |(mut events, mut t, done)| async move {
        if done {
            return None;
        }
        let mut out = Vec::new();
        loop {
            let finished = match events.next().await {
                Some(Ok(ev)) => t.event(ev, &mut out) == Flow::Stop,
                Some(Err(e)) => {
                    out.push(Err(e));
                    true
                }
                None => {
                    t.end(&mut out);
                    true
                }
            };
            // Nothing after an error is relayed.
            let failed = match out.iter().position(Result::is_err) {
                Some(i) => {
                    out.truncate(i + 1);
                    true
                }
                None => false,
            };
            if finished || failed || !out.is_empty() {
                return Some((out, (events, t, finished || failed)));
            }
        }
    })
    .flat_map(futures::stream::iter)
    .boxed()
}

/// Frames one JSON payload as an SSE `data:` event.
/// A payload with line breaks (pretty-printed JSON) becomes several `data:`
/// lines, which the client's parser joins back.
pub fn data_frame(json: &[u8]) -> Bytes {
    let mut f = Vec::with_capacity(json.len() + 8);
    if !json.contains(&b'\n') {
        // Nearly every payload is one line: found with `memchr`, not
        // split byte by byte.
        f.extend_from_slice(b"data: ");
        f.extend_from_slice(json.strip_suffix(b"\r").unwrap_or(json));
        f.extend_from_slice(b"\n\n");
        return Bytes::from(f);
    }
    for line in json.split(|&b| b == b'\n') {
        f.extend_from_slice(b"data: ");
        f.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        f.push(b'\n');
    }
    f.push(b'\n');
    Bytes::from(f)
}

/// Frames one JSON payload as an SSE event with an `event:` line when a
/// name is given (the Responses and Messages APIs name their events).
pub fn event_frame(name: Option<&str>, json: &[u8]) -> Bytes {
    let Some(name) = name.filter(|n| !n.is_empty() && !n.contains(['\n', '\r'])) else {
        return data_frame(json);
    };
    let data = data_frame(json);
    let mut f = Vec::with_capacity(name.len() + 8 + data.len());
    f.extend_from_slice(b"event: ");
    f.extend_from_slice(name.as_bytes());
    f.push(b'\n');
    f.extend_from_slice(&data);
    Bytes::from(f)
}

/// Helpers for the adapters' unit tests of their stream translators.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Flow, SseParser, Translate};
    use crate::{ProviderError, StreamItem};
    use serde_json::Value;

    /// Feeds a recorded SSE transcript through `t` as [`super::translate`]
    /// would: up to a [`Flow::Stop`], else to the end of the text.
    pub(crate) fn replay<T: Translate>(mut t: T, text: &str) -> Vec<Result<StreamItem, ProviderError>> {
        let mut out = Vec::new();
        for ev in SseParser::new().push(text.as_bytes()) {
            if t.event(ev, &mut out) == Flow::Stop {
                return out;
            }
        }
        t.end(&mut out);
        out
    }

    /// The JSON payloads of the frames among `items`, each checked to be one
    /// complete `data:` event.
    pub(crate) fn frames(items: &[Result<StreamItem, ProviderError>]) -> Vec<Value> {
        items
            .iter()
            .filter_map(|i| match i {
                Ok(StreamItem::Frame(f)) => {
                    let text = std::str::from_utf8(f).unwrap();
                    assert!(text.starts_with("data: ") && text.ends_with("\n\n"), "{text:?}");
                    Some(serde_json::from_str(&text[6..text.len() - 2]).unwrap())
                }
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_owned),
            data: data.to_owned(),
            id: None,
        }
    }

    fn parse_in_pieces(input: &[u8], sizes: &[usize]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        let mut rest = input;
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes[i % sizes.len()].clamp(1, rest.len());
            out.extend(p.push(&rest[..n]));
            rest = &rest[n..];
            i += 1;
        }
        out
    }

    #[test]
    fn parses_basic_events_and_fields() {
        let input = b"event: ping\ndata: {}\n\n: comment\ndata: a\ndata:b\ndata:  c\n\nid: 7\ndata\n\n";
        let mut p = SseParser::new();
        let evs = p.push(input);
        assert_eq!(evs.len(), 3);
        assert_eq!(evs[0], ev(Some("ping"), "{}"));
        assert_eq!(evs[1], ev(None, "a\nb\n c"));
        assert_eq!(evs[2].data, "");
        assert_eq!(evs[2].id.as_deref(), Some("7"));
        assert!(!p.has_pending());
    }

    #[test]
    fn event_without_data_is_not_dispatched_and_does_not_leak_its_type() {
        let mut p = SseParser::new();
        let evs = p.push(b"event: lonely\n\ndata: x\n\n");
        assert_eq!(evs, vec![ev(None, "x")]);
    }

    #[test]
    fn every_line_ending_is_accepted() {
        let mut p = SseParser::new();
        let evs = p.push(b"data: a\r\n\r\ndata: b\r\rdata: c\n\n");
        assert_eq!(evs, vec![ev(None, "a"), ev(None, "b"), ev(None, "c")]);
    }

    #[test]
    fn bom_is_stripped_even_when_split() {
        let input = b"\xEF\xBB\xBFdata: x\n\n";
        for sizes in [[1usize], [2], [3], [4]] {
            assert_eq!(parse_in_pieces(input, &sizes), vec![ev(None, "x")], "{sizes:?}");
        }
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        // Multi-byte UTF-8 (é, 日本, emoji), CRLF, CR and LF endings.
        let input =
            "event: a\r\ndata: h\u{e9}llo \u{65e5}\u{672c}\r\n\r\ndata: \u{1f600}\rdata: 2\r\rdata: end\n\n".as_bytes();
        let whole = SseParser::new().push(input);
        assert_eq!(
            whole,
            vec![
                ev(Some("a"), "h\u{e9}llo \u{65e5}\u{672c}"),
                ev(None, "\u{1f600}\n2"),
                ev(None, "end")
            ]
        );
        for cut in 0..=input.len() {
            let mut p = SseParser::new();
            let mut got = p.push(&input[..cut]);
            got.extend(p.push(&input[cut..]));
            assert_eq!(got, whole, "split at {cut}");
        }
        for size in 1..8 {
            assert_eq!(parse_in_pieces(input, &[size]), whole, "pieces of {size}");
        }
        assert_eq!(parse_in_pieces(input, &[1, 3, 2, 5]), whole);
    }

    #[test]
    fn cr_at_end_of_chunk_then_lf_is_one_line_ending() {
        let mut p = SseParser::new();
        let mut got = p.push(b"data: a\r");
        got.extend(p.push(b"\n"));
        got.extend(p.push(b"\r"));
        got.extend(p.push(b"\ndata: b\n\n"));
        assert_eq!(got, vec![ev(None, "a"), ev(None, "b")]);
    }

    #[test]
    fn unfinished_event_is_pending() {
        let mut p = SseParser::new();
        assert!(p.push(b"data: {\"a\"").is_empty());
        assert!(p.has_pending());
        assert!(p.push(b":1}\n").is_empty());
        assert!(p.has_pending());
        assert_eq!(p.push(b"\n"), vec![ev(None, "{\"a\":1}")]);
        assert!(!p.has_pending());
    }

    fn fixture_events(text: &str) -> Vec<SseEvent> {
        let whole = SseParser::new().push(text.as_bytes());
        for size in [1usize, 2, 7, 13, 64] {
            assert_eq!(parse_in_pieces(text.as_bytes(), &[size]), whole);
        }
        whole
    }

    #[test]
    fn replays_recorded_openai_transcripts() {
        let evs = fixture_events(include_str!("../tests/fixtures/openai_chat_stream.txt"));
        assert!(evs.iter().all(|e| e.event.is_none()));
        assert_eq!(evs.last().map(|e| e.data.as_str()), Some("[DONE]"));
        for e in &evs[..evs.len() - 1] {
            let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
            assert_eq!(v["object"], "chat.completion.chunk");
        }
        let tools = fixture_events(include_str!("../tests/fixtures/openai_tool_stream.txt"));
        assert_eq!(tools.last().map(|e| e.data.as_str()), Some("[DONE]"));
        assert!(tools.len() > 3);
    }

    #[test]
    fn replays_recorded_anthropic_transcripts() {
        for text in [
            include_str!("../tests/fixtures/anthropic_text_stream.txt"),
            include_str!("../tests/fixtures/anthropic_tool_stream.txt"),
        ] {
            let evs = fixture_events(text);
            assert_eq!(evs.first().and_then(|e| e.event.as_deref()), Some("message_start"));
            assert_eq!(evs.last().and_then(|e| e.event.as_deref()), Some("message_stop"));
            for e in &evs {
                let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
                assert_eq!(v["type"].as_str(), e.event.as_deref());
            }
        }
    }

    struct Echo;

    impl Translate for Echo {
        fn event(&mut self, ev: SseEvent, out: &mut Vec<Result<StreamItem, ProviderError>>) -> Flow {
            if ev.data == "stop" {
                return Flow::Stop;
            }
            if ev.data == "fail" {
                out.push(Err(ProviderError::InvalidResponse("fail".into())));
                out.push(Ok(StreamItem::Frame(Bytes::from_static(b"after"))));
                return Flow::Continue;
            }
            out.push(Ok(StreamItem::Frame(data_frame(ev.data.as_bytes()))));
            Flow::Continue
        }
        fn end(&mut self, out: &mut Vec<Result<StreamItem, ProviderError>>) {
            out.push(Err(cut_error()));
        }
    }

    fn body(chunks: &[&'static str]) -> BoxStream<'static, Result<Bytes, ProviderError>> {
        let owned: Vec<Result<Bytes, ProviderError>> =
            chunks.iter().map(|c| Ok(Bytes::from_static(c.as_bytes()))).collect();
        futures::stream::iter(owned).boxed()
    }

    async fn run(chunks: &[&'static str]) -> Vec<Result<StreamItem, ProviderError>> {
        translate(events(body(chunks)), Echo).collect().await
    }

    #[tokio::test]
    async fn translate_stops_at_stop_and_at_first_error() {
        let got = run(&["data: a\n\nda", "ta: b\n\ndata: stop\n\ndata: c\n\n"]).await;
        let frames: Vec<_> = got.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(
            frames,
            vec![
                StreamItem::Frame(Bytes::from_static(b"data: a\n\n")),
                StreamItem::Frame(Bytes::from_static(b"data: b\n\n"))
            ]
        );
        let got = run(&["data: a\n\ndata: fail\n\ndata: c\n\n"]).await;
        assert_eq!(got.len(), 2);
        assert!(matches!(got[1], Err(ProviderError::InvalidResponse(_))));
    }

    #[test]
    fn data_frame_splits_multi_line_payloads() {
        assert_eq!(&data_frame(b"{}")[..], b"data: {}\n\n");
        assert_eq!(
            &data_frame(b"{}\r")[..],
            b"data: {}\n\n",
            "a lone line loses its CR too"
        );
        let f = data_frame(b"{\n  \"a\": 1\r\n}");
        assert_eq!(&f[..], b"data: {\ndata:   \"a\": 1\ndata: }\n\n");
        assert_eq!(SseParser::new().push(&f), vec![ev(None, "{\n  \"a\": 1\n}")]);
    }

    #[tokio::test]
    async fn translate_reports_an_early_end() {
        let got = run(&["data: a\n\n"]).await;
        assert_eq!(got.len(), 2);
        assert!(matches!(got[1], Err(ProviderError::Unreachable(_))));
    }
}
