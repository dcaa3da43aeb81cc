//! ConverseStream's binary event stream (`application/vnd.amazon.eventstream`):
//! frames decoded as bytes arrive (they may split anywhere), events
//! translated into OpenAI chunks by the shared [`ChunkWriter`].

use super::converse::{map_stop, usage_from};
use crate::openai_shape::ChunkWriter;
use crate::sse::{Flow, Translate};
use crate::{Endpoint, ProviderError, StreamItem};
use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::{HeaderValue, Message};
use bytes::{Bytes, BytesMut};
use serde_json::Value;
use std::collections::HashMap;
use tollgate_core::token_usage::Usage;

/// The HTTP status an event-stream exception stands for.
fn exception_status(kind: &str) -> u16 {
    match kind {
        "throttlingException" => 429,
        "validationException" => 400,
        "accessDeniedException" => 403,
        "serviceUnavailableException" => 503,
        "modelStreamErrorException" => 424,
        "modelTimeoutException" => 408,
        _ => 500,
    }
}

fn header_str<'a>(m: &'a Message, name: &str) -> Option<&'a str> {
    m.headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| match h.value() {
            HeaderValue::String(s) => Some(s.as_str()),
            _ => None,
        })
}

/// Decodes ConverseStream's binary frames (bytes may split anywhere) and
/// turns its events into OpenAI chunks.
pub(super) struct EventStreamTranslator {
    decoder: MessageFrameDecoder,
    buf: BytesMut,
    w: ChunkWriter,
    opened: bool,
    /// Content block index → position among the answer's tool calls.
    tool_blocks: HashMap<u64, usize>,
    /// `messageStop` arrived: the answer is complete.
    stopped: bool,
    usage: Option<Usage>,
    wants_usage: bool,
}

type Out = Vec<Result<StreamItem, ProviderError>>;

impl EventStreamTranslator {
    pub(super) fn new(endpoint: Endpoint, model: &str, wants_usage: bool) -> Self {
        Self {
            decoder: MessageFrameDecoder::new(),
            buf: BytesMut::new(),
            w: ChunkWriter::new(endpoint, model),
            opened: false,
            tool_blocks: HashMap::new(),
            stopped: false,
            usage: None,
            wants_usage,
        }
    }

    /// Feeds bytes; translates every frame they complete.
    fn push(&mut self, chunk: &[u8], out: &mut Out) {
        self.buf.extend_from_slice(chunk);
        loop {
            match self.decoder.decode_frame(&mut self.buf) {
                Ok(DecodedFrame::Complete(m)) => self.message(&m, out),
                Ok(DecodedFrame::Incomplete) => return,
                Err(e) => {
                    out.push(Err(ProviderError::InvalidResponse(format!(
                        "bad event-stream frame: {e}"
                    ))));
                    return;
                }
            }
            if out.iter().any(Result::is_err) {
                return;
            }
        }
    }

    fn open(&mut self, out: &mut Out) {
        if !self.opened {
            self.opened = true;
            out.extend(self.w.role(0).map(Ok));
        }
    }

    fn message(&mut self, m: &Message, out: &mut Out) {
        let payload: Value = serde_json::from_slice(m.payload()).unwrap_or(Value::Null);
        match header_str(m, ":message-type").unwrap_or("event") {
            "exception" => {
                let kind = header_str(m, ":exception-type").unwrap_or("exception");
                let message = payload
                    .get("message")
                    .or_else(|| payload.get("Message"))
                    .and_then(Value::as_str)
                    .unwrap_or(kind)
                    .to_owned();
                out.push(Err(ProviderError::Upstream {
                    status: exception_status(kind),
                    message,
                    retry_after: None,
                }));
                return;
            }
            "error" => {
                let message = header_str(m, ":error-message")
                    .or(header_str(m, ":error-code"))
                    .unwrap_or("event stream error")
                    .to_owned();
                out.push(Err(ProviderError::Upstream {
                    status: 500,
                    message,
                    retry_after: None,
                }));
                return;
            }
            _ => {}
        }
        let block = payload.get("contentBlockIndex").and_then(Value::as_u64).unwrap_or(0);
        match header_str(m, ":event-type").unwrap_or("") {
            "messageStart" => self.open(out),
            "contentBlockStart" => {
                if let Some(tu) = payload.pointer("/start/toolUse").filter(|_| self.w.is_chat()) {
                    self.open(out);
                    let position = self.tool_blocks.len();
                    self.tool_blocks.insert(block, position);
                    let id = tu.get("toolUseId").and_then(Value::as_str).unwrap_or_default();
                    let name = tu.get("name").and_then(Value::as_str).unwrap_or_default();
                    out.push(Ok(self.w.tool_call(0, position, Some((id, name)), "")));
                }
            }
            "contentBlockDelta" => {
                if let Some(t) = payload.pointer("/delta/text").and_then(Value::as_str) {
                    self.open(out);
                    if !t.is_empty() {
                        out.push(Ok(self.w.text(0, t)));
                    }
                }
                if let Some(input) = payload.pointer("/delta/toolUse/input").and_then(Value::as_str) {
                    if let Some(&position) = self.tool_blocks.get(&block) {
                        out.push(Ok(self.w.tool_call(0, position, None, input)));
                    }
                }
            }
            "messageStop" => {
                self.open(out);
                let reason = payload.get("stopReason").and_then(Value::as_str).unwrap_or("end_turn");
                out.push(Ok(self.w.finish(0, map_stop(reason, !self.tool_blocks.is_empty()))));
                self.stopped = true;
            }
            "metadata" => {
                if let Some(u) = payload.get("usage").and_then(usage_from) {
                    self.usage = Some(u);
                }
            }
            // contentBlockStop and events this proxy has no use for.
            _ => {}
        }
    }
}

/// Bedrock frames its own events, so the translator takes the body's raw
/// chunks and decodes the frames itself.
impl Translate<Bytes> for EventStreamTranslator {
    fn event(&mut self, chunk: Bytes, out: &mut Out) -> Flow {
        self.push(&chunk, out);
        Flow::Continue
    }

    /// The body ended: owe the usage, or report a cut answer.
    fn end(&mut self, out: &mut Out) {
        if !self.stopped || !self.buf.is_empty() {
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

/// Replays recorded event-stream bytes through the translator, for tests of
/// the decoder and translation without a server.
#[cfg(test)]
fn replay(bytes: &[u8], split: usize, wants_usage: bool) -> Vec<Result<StreamItem, ProviderError>> {
    let mut t = EventStreamTranslator::new(Endpoint::ChatCompletions, "m", wants_usage);
    let mut out = Vec::new();
    for piece in bytes.chunks(split.max(1)) {
        t.push(piece, &mut out);
    }
    t.end(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::testing::frames;
    use aws_smithy_eventstream::frame::write_message_to;
    use aws_smithy_types::event_stream::Header;
    use serde_json::json;

    fn event(kind: &str, payload: Value) -> Vec<u8> {
        let m = Message::new(Bytes::from(payload.to_string()))
            .add_header(Header::new(":event-type", HeaderValue::String(kind.to_owned().into())))
            .add_header(Header::new(
                ":message-type",
                HeaderValue::String("event".to_owned().into()),
            ))
            .add_header(Header::new(
                ":content-type",
                HeaderValue::String("application/json".to_owned().into()),
            ));
        let mut buf = Vec::new();
        write_message_to(&m, &mut buf).unwrap();
        buf
    }

    #[test]
    fn tool_use_stream_decodes_at_any_split() {
        let mut bytes = Vec::new();
        bytes.extend(event("messageStart", json!({"role": "assistant", "p": "abc"})));
        bytes.extend(event(
            "contentBlockStart",
            json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tu1", "name": "weather"}}}),
        ));
        bytes.extend(event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"city\":"}}}),
        ));
        bytes.extend(event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "\"Paris\"}"}}}),
        ));
        bytes.extend(event("contentBlockStop", json!({"contentBlockIndex": 1})));
        bytes.extend(event("messageStop", json!({"stopReason": "tool_use"})));
        bytes.extend(event(
            "metadata",
            json!({"usage": {"inputTokens": 9, "outputTokens": 4, "totalTokens": 13, "cacheReadInputTokens": 2}}),
        ));
        for split in [1, 3, 7, 64, bytes.len()] {
            let out = replay(&bytes, split, true);
            let chunks = frames(&out);
            assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
            assert_eq!(chunks[1]["choices"][0]["delta"]["tool_calls"][0]["id"], "tu1");
            let args: String = chunks
                .iter()
                .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
                .collect();
            assert_eq!(args, "{\"city\":\"Paris\"}");
            assert_eq!(chunks[4]["choices"][0]["finish_reason"], "tool_calls");
            assert_eq!(chunks[5]["usage"]["prompt_tokens"], 11);
            assert_eq!(
                out.last().unwrap().as_ref().unwrap(),
                &StreamItem::Usage(Usage {
                    prompt_tokens: 11,
                    completion_tokens: 4,
                    cached_tokens: 2
                })
            );
        }
    }

    #[test]
    fn corrupt_and_truncated_streams_fail() {
        let mut bytes = event("messageStart", json!({"role": "assistant"}));
        let n = bytes.len();
        bytes[n - 1] ^= 0xff; // breaks the message CRC
        assert!(replay(&bytes, 5, false).iter().any(Result::is_err));
        let bytes = event("messageStart", json!({"role": "assistant"}));
        let out = replay(&bytes[..bytes.len() - 3], 5, false);
        assert!(out.last().unwrap().is_err());
    }
}
