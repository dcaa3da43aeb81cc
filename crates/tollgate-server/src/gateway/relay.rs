//! Relaying the upstream's answer to the client, and closing the books on a
//! request: usage (reported, or estimated with the tokenizer), exact cost,
//! settlement of the reservation, the request-log record and the metrics.
//!
//! Streams are relayed frame by frame as they arrive. If the client goes
//! away, the relay is dropped, which drops the upstream stream (cancelling
//! the upstream request) and settles what was generated so far.
//!
//! The settlement is durable before the client has the whole answer: a
//! whole answer's body is returned, and a stream's final frame (`[DONE]` or
//! the error) is sent, only once the request's record is committed to the
//! request log, which start-up rebuilds the counters from. So a crash never
//! forgets usage that a client received.

use super::dialect::Api;
use super::{decorate, Prepared};
use crate::error::GatewayError;
use crate::state::SharedState;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use futures::stream::BoxStream;
use futures::Stream;
use serde::Deserialize;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tollgate_core::admission::RateHeaders;
use tollgate_core::catalogue::Tokenizer;
use tollgate_core::token_usage::{ModelPrice, Usage};
use tollgate_providers::dialects::StreamShaper;
use tollgate_providers::{tokens, Endpoint, ProviderError, StreamItem};
use tollgate_store::counters::Reservation;
use tollgate_store::request_log::LogRecord;

fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

/// Renders a refusal or failure, and logs it.
pub fn fail(
    state: &SharedState,
    api: Api,
    rec: Box<LogRecord>,
    started: Instant,
    e: GatewayError,
    rate: RateHeaders,
) -> Response {
    let mut resp = api.error_response(e.clone());
    decorate(&mut resp, &rec.trace_id, &rate);
    log_failure(state, rec, started, &e);
    resp
}

/// Logs a refusal or failure (of a request, or of one attempt of it).
pub fn log_failure(state: &SharedState, mut rec: Box<LogRecord>, started: Instant, e: &GatewayError) {
    let (status, kind, _) = e.wire();
    rec.status_code = status.as_u16();
    rec.error_type = Some(kind);
    rec.refusal = e.refusal().map(str::to_owned);
    rec.latency_us = micros(started);
    crate::metrics::record(&state.snapshot(), &rec);
    state.usage.record(rec);
}

/// Fills in usage and cost, settles, and logs; returns once the record is
/// committed. Absurd usage (beyond
/// [`tollgate_core::token_usage::MAX_REQUEST_TOKENS`] a field) is clamped and
/// flagged at warn.
async fn close_books(
    state: &SharedState,
    mut rec: Box<LogRecord>,
    reservation: Reservation,
    usage: Usage,
    estimated: bool,
    price: Option<ModelPrice>,
) {
    let (usage, clamped) = if estimated { (usage, false) } else { usage.clamped() };
    if clamped {
        tracing::warn!(
            provider = rec.ai_provider_id.as_deref().unwrap_or(""),
            model = rec.model.as_deref().unwrap_or(""),
            trace_id = %rec.trace_id,
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            "the upstream reported absurd usage: clamped"
        );
    }
    rec.prompt_tokens = usage.prompt_tokens;
    rec.completion_tokens = usage.completion_tokens;
    rec.cached_tokens = usage.cached_tokens;
    rec.total_tokens = usage.total();
    rec.tokens_estimated = estimated;
    let cost = price.map(|p| p.cost(&usage));
    if cost.is_none() {
        tracing::warn!(
            model = rec.model.as_deref().unwrap_or(""),
            provider = rec.ai_provider_id.as_deref().unwrap_or(""),
            "no price known for this model: cost logged as null"
        );
    }
    rec.cost_picos = cost.map(|c| c.picos());
    crate::limit_check::settle(state, reservation, usage.total(), cost).await;
    crate::metrics::record(&state.snapshot(), &rec);
    state.usage.commit(rec).await;
}

#[derive(Deserialize)]
struct WholeText {
    #[serde(default)]
    choices: Vec<ChoiceText>,
}

#[derive(Deserialize)]
struct ChoiceText {
    #[serde(default)]
    message: Option<MessageText>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct MessageText {
    #[serde(default)]
    content: Option<String>,
}

/// The generated text of a whole OpenAI-format answer, for estimation.
fn whole_text(body: &[u8]) -> String {
    let Ok(w) = serde_json::from_slice::<WholeText>(body) else {
        return String::new();
    };
    w.choices
        .into_iter()
        .filter_map(|c| c.message.and_then(|m| m.content).or(c.text))
        .collect::<Vec<_>>()
        .join("")
}

/// The generated text of relayed chunk frames, for estimation.
fn streamed_text(frames: &[Bytes]) -> String {
    let mut text = String::new();
    for frame in frames {
        // A frame may hold several events once coalesced.
        for data in frame.split(|b| *b == b'\n').filter_map(|l| l.strip_prefix(b"data: ")) {
            if let Ok(c) = serde_json::from_slice::<ChunkText>(data.trim_ascii_end()) {
                for ch in c.choices {
                    if let Some(t) = ch.delta.and_then(|d| d.content).or(ch.text) {
                        text.push_str(&t);
                    }
                }
            }
        }
    }
    text
}

/// The status logged for a request whose client went away before the answer
/// (nginx's "client closed request").
pub const CLIENT_CLOSED: u16 = 499;

/// A request sent upstream and not yet answered. If the client goes away
/// meanwhile, the handler is dropped with it, and so is this: the request is
/// then logged with status 499 and settled with its prompt, counted (the
/// upstream has received it; what it generated is unknown), exactly once.
pub struct Waiting {
    books: Option<(Box<LogRecord>, Reservation)>,
    state: SharedState,
    started: Instant,
    endpoint: Endpoint,
    body: Arc<tollgate_providers::chat::Body>,
    body_len: usize,
    tokenizer: Tokenizer,
    price: Option<ModelPrice>,
}

impl Waiting {
    pub fn new(
        state: &SharedState,
        rec: Box<LogRecord>,
        reservation: Reservation,
        started: Instant,
        prep: &Prepared,
    ) -> Waiting {
        Waiting {
            books: Some((rec, reservation)),
            state: state.clone(),
            started,
            endpoint: prep.endpoint,
            body: prep.body.clone(),
            body_len: prep.body_len,
            tokenizer: prep.tokenizer,
            price: prep.price,
        }
    }

    /// The upstream answered (or failed): the books go back to the caller.
    /// Always `Some`: they are taken only here (which consumes `self`) or
    /// when dropped.
    pub fn answered(mut self) -> Option<(Box<LogRecord>, Reservation)> {
        self.books.take()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some((mut rec, reservation)) = self.books.take() else {
            return;
        };
        rec.status_code = CLIENT_CLOSED;
        rec.cancelled = true;
        rec.error_type = Some("client_closed_request".into());
        rec.latency_us = micros(self.started);
        let state = self.state.clone();
        let (endpoint, body, tokenizer, price) = (self.endpoint, self.body.clone(), self.tokenizer, self.price);
        let size = self.body_len;
        tokio::spawn(async move {
            let usage = prompt_only(endpoint, body, size, tokenizer).await;
            close_books(&state, rec, reservation, usage, true, price).await;
        });
    }
}

/// The usage of a request whose prompt the upstream received but whose
/// output is unknown: its prompt, estimated, and nothing generated.
async fn prompt_only(
    endpoint: Endpoint,
    body: Arc<tollgate_providers::chat::Body>,
    size: usize,
    tokenizer: Tokenizer,
) -> Usage {
    let prompt_tokens = super::count::tokens(size, move || tokens::estimate_prompt(endpoint, &body, tokenizer)).await;
    Usage {
        prompt_tokens,
        completion_tokens: 0,
        cached_tokens: 0,
    }
}

/// Fails a request that the upstream answered (and so billed): settles
/// `usage` and logs the failure, then renders it.
#[allow(clippy::too_many_arguments)]
async fn fail_settled(
    state: &SharedState,
    prep: &Prepared,
    mut rec: Box<LogRecord>,
    reservation: Reservation,
    started: Instant,
    e: GatewayError,
    usage: Usage,
    estimated: bool,
) -> Response {
    let rate = reservation.headers();
    let (status, kind, _) = e.wire();
    rec.status_code = status.as_u16();
    rec.error_type = Some(kind);
    let trace_id = rec.trace_id.clone();
    rec.latency_us = micros(started);
    close_books(state, rec, reservation, usage, estimated, prep.price).await;
    let mut resp = prep.api.error_response(e);
    decorate(&mut resp, &trace_id, &rate);
    resp
}

/// A 2xx answer that the adapter could not read (not JSON, or missing what
/// its protocol requires): the upstream received the prompt and billed it,
/// so the request is settled with its prompt, estimated (what it generated
/// is unknown), and fails as the adapter's error says (a 502).
pub async fn unreadable(
    state: &SharedState,
    mut rec: Box<LogRecord>,
    prep: &Prepared,
    reservation: Reservation,
    started: Instant,
    upstream_started: Instant,
    e: GatewayError,
) -> Response {
    rec.upstream_latency_us = Some(micros(upstream_started));
    let usage = prompt_only(prep.endpoint, prep.body.clone(), prep.body_len, prep.tokenizer).await;
    fail_settled(state, prep, rec, reservation, started, e, usage, true).await
}

/// A whole answer.
#[allow(clippy::too_many_arguments)]
pub async fn whole(
    state: &SharedState,
    mut rec: Box<LogRecord>,
    prep: &Prepared,
    reservation: Reservation,
    started: Instant,
    upstream_started: Instant,
    status: u16,
    body: Bytes,
    usage: Option<Usage>,
) -> Response {
    rec.upstream_latency_us = Some(micros(upstream_started));
    rec.status_code = status;
    let (usage, estimated) = match usage {
        Some(u) => (u, false),
        None => {
            let (endpoint, request, tokenizer, answer) =
                (prep.endpoint, prep.body.clone(), prep.tokenizer, body.clone());
            let usage = super::count::tokens(prep.body_len.saturating_add(body.len()), move || Usage {
                prompt_tokens: tokens::estimate_prompt(endpoint, &request, tokenizer),
                completion_tokens: tokens::count_text(&whole_text(&answer), tokenizer),
                cached_tokens: 0,
            })
            .await;
            (usage, true)
        }
    };
    // The answer in the API the client called (a translated one was read
    // for its text above as the chat answer it is).
    let shaped = prep
        .shape
        .whole(body.clone(), &prep.model, state.now().timestamp(), &state.response_ids);
    let shaped = match shaped {
        Ok(b) => b,
        Err(e) => {
            // The upstream answered (and billed): settle, but fail the
            // request. Rare: boxed, so that the request's state stays small.
            return Box::pin(fail_settled(
                state,
                prep,
                rec,
                reservation,
                started,
                e,
                usage,
                estimated,
            ))
            .await;
        }
    };
    if prep.log_bodies {
        rec.response_body = Some(String::from_utf8_lossy(&shaped).into_owned());
    }
    let rate = reservation.headers();
    let trace_id = rec.trace_id.clone();
    rec.latency_us = micros(started);
    close_books(state, rec, reservation, usage, estimated, prep.price).await;
    let mut resp = Response::new(Body::from(shaped));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    decorate(&mut resp, &trace_id, &rate);
    resp
}

/// A streamed answer: the relay is set up at once and frames flow as the
/// upstream sends them, once [`Relayed::respond`] hands it to the client.
pub fn stream(
    state: SharedState,
    rec: Box<LogRecord>,
    prep: Prepared,
    reservation: Reservation,
    started: Instant,
    upstream_started: Instant,
    inner: BoxStream<'static, Result<StreamItem, ProviderError>>,
) -> Relayed {
    let rate = reservation.headers();
    let trace_id = rec.trace_id.clone();
    let timeout = prep.timeout;
    let shaper = prep.shape.streamer(
        prep.api,
        &prep.model,
        state.now().timestamp(),
        state.response_ids.clone(),
    );
    let books = Books {
        state,
        rec,
        reservation: Some(reservation),
        started,
        upstream_started,
        usage: None,
        frames: Vec::new(),
        endpoint: prep.endpoint,
        body: prep.body,
        body_len: prep.body_len,
        tokenizer: prep.tokenizer,
        price: prep.price,
    };
    Relayed {
        relay: Relay {
            inner,
            shaper,
            books: Some(books),
            done: false,
            pending: None,
            idle: Idle::new(timeout),
            closing: None,
        },
        trace_id,
        rate,
    }
}

/// A stream relay not yet handed to the client.
pub struct Relayed {
    relay: Relay,
    trace_id: String,
    rate: RateHeaders,
}

impl Relayed {
    /// The streamed response.
    pub fn respond(self) -> Response {
        let mut resp = Response::new(Body::from_stream(self.relay));
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        decorate(&mut resp, &self.trace_id, &self.rate);
        resp
    }

    /// Waits for the stream's first frame (or its end) before anything is
    /// sent, so that a stream failing before its first byte can still move
    /// to another target. A failure hands back the books, still open.
    pub async fn first(mut self) -> Result<Relayed, (Books, ProviderError)> {
        use futures::StreamExt;
        let limit = self.relay.idle.limit;
        loop {
            let item = match tokio::time::timeout(limit, self.relay.inner.next()).await {
                Ok(item) => item,
                Err(_) => Some(Err(ProviderError::Timeout)),
            };
            match item {
                Some(Ok(StreamItem::Usage(u))) => {
                    if let Some(b) = self.relay.books.as_mut() {
                        b.on_usage(u);
                    }
                }
                Some(Err(e)) => match self.relay.books.take() {
                    Some(books) => {
                        self.relay.done = true;
                        return Err((books, e));
                    }
                    None => {
                        self.relay.pending = Some(Some(Err(e)));
                        return Ok(self);
                    }
                },
                other => {
                    self.relay.idle.touch();
                    self.relay.pending = Some(other);
                    return Ok(self);
                }
            }
        }
    }
}

/// What a stream must account for when it ends, however it ends.
pub struct Books {
    state: SharedState,
    rec: Box<LogRecord>,
    reservation: Option<Reservation>,
    started: Instant,
    upstream_started: Instant,
    usage: Option<Usage>,
    /// The frames relayed so far (shared, not copied), kept only until the
    /// upstream reports usage: without a report they are counted at the end.
    frames: Vec<Bytes>,
    /// The request, to count its prompt if the upstream reports no usage.
    endpoint: Endpoint,
    body: Arc<tollgate_providers::chat::Body>,
    body_len: usize,
    tokenizer: Tokenizer,
    price: Option<ModelPrice>,
}

#[derive(Deserialize)]
struct ChunkText {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<MessageText>,
    #[serde(default)]
    text: Option<String>,
}

impl Books {
    pub fn record_mut(&mut self) -> &mut LogRecord {
        &mut self.rec
    }

    pub fn trace_id(&self) -> &str {
        &self.rec.trace_id
    }

    /// Closes the books of a stream that failed: what it used is settled.
    pub fn fail(self, e: GatewayError) {
        if let Some(closing) = self.finish(Outcome::Failed(e)) {
            tokio::spawn(closing);
        }
    }

    /// The upstream reported usage: the frames kept for estimation are no
    /// longer needed.
    fn on_usage(&mut self, usage: Usage) {
        self.usage = Some(usage);
        self.frames = Vec::new();
    }

    fn on_frame(&mut self, frame: &Bytes) {
        if self.rec.ttft_us.is_none() {
            self.rec.ttft_us = Some(micros(self.started));
        }
        if self.usage.is_none() {
            self.frames.push(frame.clone());
        }
    }

    /// Settles and logs: the future resolves once the record is committed.
    /// Whoever holds it polls it to the end or spawns it (the relay does so
    /// if the client goes away first), so the books are always closed.
    fn finish(mut self, outcome: Outcome) -> Option<Closing> {
        self.rec.upstream_latency_us = Some(micros(self.upstream_started));
        self.rec.latency_us = micros(self.started);
        match outcome {
            Outcome::Done => self.rec.status_code = 200,
            Outcome::Cancelled => {
                self.rec.status_code = 200;
                self.rec.cancelled = true;
            }
            Outcome::Failed(e) => {
                let (status, kind, _) = e.wire();
                self.rec.status_code = status.as_u16();
                self.rec.error_type = Some(kind);
            }
        }
        let reservation = self.reservation.take()?;
        // Counting tokens may take a while for a long answer: off the async
        // workers when large (`count::tokens`).
        Some(Box::pin(async move {
            let (usage, estimated) = match self.usage {
                Some(u) => (u, false),
                // Cut or cancelled without a usage report: what was generated
                // was still produced (and billed) upstream, so it is settled
                // as estimated rather than released.
                None => {
                    let size = self.frames.iter().map(Bytes::len).sum::<usize>() + self.body_len;
                    let (endpoint, body, tokenizer) = (self.endpoint, self.body, self.tokenizer);
                    let frames = Arc::new(self.frames);
                    let usage = super::count::tokens(size, move || Usage {
                        prompt_tokens: tokens::estimate_prompt(endpoint, &body, tokenizer),
                        completion_tokens: tokens::count_text(&streamed_text(&frames), tokenizer),
                        cached_tokens: 0,
                    })
                    .await;
                    (usage, true)
                }
            };
            close_books(&self.state, self.rec, reservation, usage, estimated, self.price).await;
        }))
    }
}

/// The closing of a stream's books, from [`Books::finish`].
type Closing = Pin<Box<dyn Future<Output = ()> + Send>>;

enum Outcome {
    Done,
    Cancelled,
    Failed(GatewayError),
}

/// The client-facing stream.
struct Relay {
    inner: BoxStream<'static, Result<StreamItem, ProviderError>>,
    /// Turns OpenAI chunks into the events of the API the client called
    /// (`None`: OpenAI's own, relayed as they are).
    shaper: Option<Box<dyn StreamShaper>>,
    books: Option<Books>,
    done: bool,
    /// An end or error met while coalescing, handled on the next poll.
    pending: Option<Option<Result<StreamItem, ProviderError>>>,
    idle: Idle,
    /// The final frame, held back until the books are closed and committed
    /// (polled here: a task of its own only if the client goes away first).
    closing: Option<(Option<Closing>, Bytes)>,
}

impl Relay {
    /// Ends the stream: closes the books, then sends `last`.
    fn close(&mut self, outcome: Outcome, last: Bytes) {
        let books = self.books.take().and_then(|b| b.finish(outcome));
        self.closing = Some((books, last));
    }
}

/// The longest an upstream stream may stay silent (the request's timeout).
/// The timer is re-armed only when it fires, from the time of the last
/// item, so frames do not each pay for a timer update.
struct Idle {
    limit: std::time::Duration,
    last: tokio::time::Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Idle {
    fn new(limit: std::time::Duration) -> Self {
        let now = tokio::time::Instant::now();
        Idle {
            limit,
            last: now,
            timer: Box::pin(tokio::time::sleep_until(now + limit)),
        }
    }

    fn touch(&mut self) {
        self.last = tokio::time::Instant::now();
    }

    /// True once the stream has been silent for the whole limit.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        while self.timer.as_mut().poll(cx).is_ready() {
            let due = self.last + self.limit;
            if due <= tokio::time::Instant::now() {
                return true;
            }
            self.timer.as_mut().reset(due);
        }
        false
    }
}

const DONE_FRAME: &[u8] = b"data: [DONE]\n\n";
/// Most bytes sent to the client in one write when frames arrive together.
const COALESCE_BYTES: usize = 16 * 1024;

impl Relay {
    /// The frame for a failure: the API's error event.
    fn error_frame(&mut self, err: &GatewayError) -> Bytes {
        match self.shaper.as_mut() {
            Some(s) => {
                let (status, kind, _) = err.wire();
                let mut out = Vec::new();
                s.fail(status.as_u16(), &kind, err.message(), &mut out);
                Bytes::from(out)
            }
            None => Bytes::from(format!("data: {}\n\n", err.body())),
        }
    }

    /// Joins `first` with the frames that are already waiting, so that a
    /// burst from the upstream costs the client connection one write rather
    /// than one per frame. Stops at anything that is not a ready frame (usage,
    /// an error, the end), which the next poll handles.
    fn coalesce(&mut self, first: Bytes, cx: &mut Context<'_>) -> Bytes {
        let mut joined: Option<bytes::BytesMut> = None;
        loop {
            let len = joined.as_ref().map_or(first.len(), |j| j.len());
            if len >= COALESCE_BYTES {
                break;
            }
            // Peek without losing anything: only frames are taken here.
            match self.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(StreamItem::Frame(next)))) => {
                    if let Some(b) = self.books.as_mut() {
                        b.on_frame(&next);
                    }
                    joined
                        .get_or_insert_with(|| bytes::BytesMut::from(&first[..]))
                        .extend_from_slice(&next);
                }
                Poll::Ready(Some(Ok(StreamItem::Usage(u)))) => {
                    if let Some(b) = self.books.as_mut() {
                        b.on_usage(u);
                    }
                }
                Poll::Ready(other) => {
                    self.pending = Some(other);
                    break;
                }
                Poll::Pending => break,
            }
        }
        joined.map_or(first, bytes::BytesMut::freeze)
    }
}

impl Stream for Relay {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some((books, _)) = self.closing.as_mut() {
            if let Some(f) = books {
                if f.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                *books = None;
            }
            self.done = true;
            return Poll::Ready(
                self.closing
                    .take()
                    .filter(|(_, last)| !last.is_empty())
                    .map(|(_, last)| Ok(last)),
            );
        }
        loop {
            let next = match self.pending.take() {
                Some(item) => Poll::Ready(item),
                None => self.inner.as_mut().poll_next(cx),
            };
            if matches!(next, Poll::Ready(_)) {
                self.idle.touch();
            }
            match next {
                Poll::Pending if self.idle.expired(cx) => {
                    let err = GatewayError::Timeout;
                    let frame = self.error_frame(&err);
                    self.close(Outcome::Failed(err), frame);
                    return self.poll_next(cx);
                }
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(StreamItem::Frame(frame)))) => {
                    if let Some(b) = self.books.as_mut() {
                        b.on_frame(&frame);
                    }
                    let frame = self.coalesce(frame, cx);
                    let Some(shaper) = self.shaper.as_mut() else {
                        return Poll::Ready(Some(Ok(frame)));
                    };
                    let mut out = Vec::new();
                    shaper.frame(&frame, &mut out);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Bytes::from(out))));
                    }
                }
                Poll::Ready(Some(Ok(StreamItem::Usage(u)))) => {
                    if let Some(b) = self.books.as_mut() {
                        b.on_usage(u);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let err = super::upstream_error(e);
                    let frame = self.error_frame(&err);
                    self.close(Outcome::Failed(err), frame);
                    return self.poll_next(cx);
                }
                Poll::Ready(None) => {
                    // The last bytes: `[DONE]`, or what the API's shaper
                    // still owes (its closing events).
                    let last = match self.shaper.as_mut() {
                        None => Bytes::from_static(DONE_FRAME),
                        Some(shaper) => {
                            let mut out = Vec::new();
                            shaper.finish(&mut out);
                            Bytes::from(out)
                        }
                    };
                    self.close(Outcome::Done, last);
                    return self.poll_next(cx);
                }
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Dropped before the end: the client went away. Nobody is left to
        // wait for the commit, but the books must still be closed.
        let closing = match self.books.take() {
            Some(b) => b.finish(Outcome::Cancelled),
            None => self.closing.take().and_then(|(f, _)| f),
        };
        if let Some(f) = closing {
            tokio::spawn(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_text_reads_chat_and_completion_answers() {
        assert_eq!(
            whole_text(br#"{"choices":[{"message":{"content":"hi"}},{"message":{"content":" there"}}]}"#),
            "hi there"
        );
        assert_eq!(whole_text(br#"{"choices":[{"text":"abc"}]}"#), "abc");
        assert_eq!(whole_text(b"not json"), "");
    }

    #[test]
    fn streamed_text_reads_single_and_coalesced_frames() {
        let one = Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n");
        let two = Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\ndata: {\"choices\":[{\"text\":\"!\"}]}\n\ndata: not json\n\n",
        );
        assert_eq!(streamed_text(&[one, two]), "Hello!");
        assert_eq!(streamed_text(&[]), "");
    }
}
