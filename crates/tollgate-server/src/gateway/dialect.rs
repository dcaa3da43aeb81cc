//! The API a client called, and what that changes about a gateway request:
//! how its body becomes the upstream call, how the answer is shaped and how
//! errors are rendered. Governance (admission, settlement, the log) does not
//! depend on it.
//!
//! - OpenAI's endpoints: the body is relayed (or translated by the adapter)
//!   and the answer comes back in OpenAI's format, as before.
//! - The Responses API: relayed natively to OpenAI-protocol providers (the
//!   response id is remembered, so `GET /v1/responses/{id}` finds the
//!   upstream again); anywhere else translated to chat and the answer shaped
//!   back by [`tollgate_providers::dialects::responses`].
//! - The Messages API: relayed natively to Anthropic; anywhere else
//!   translated to chat (Bedrock and Vertex through their adapters) and
//!   shaped back by [`tollgate_providers::dialects::messages`]. Errors come
//!   in Anthropic's `{"type": "error", "error": {...}}` shape.

use crate::error::GatewayError;
use axum::body::Bytes;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use tollgate_providers::dialects::messages::{self, MessagesShaper};
use tollgate_providers::dialects::responses::{self, Echo, ResponsesShaper};
use tollgate_providers::dialects::StreamShaper;
use tollgate_providers::Endpoint;

/// The API a client called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    OpenAi(Endpoint),
    Responses,
    Messages,
}

impl Api {
    /// The name the request log records.
    pub fn log_name(self) -> &'static str {
        match self {
            Api::OpenAi(e) => super::endpoint_name(e),
            Api::Responses => "responses",
            Api::Messages => "messages",
        }
    }

    /// A gateway error in this API's shape.
    pub fn error_response(self, e: GatewayError) -> Response {
        match self {
            Api::Messages => anthropic_error(e),
            _ => e.into_response(),
        }
    }
}

/// An error in Anthropic's shape, with the gateway's status.
pub fn anthropic_error(e: GatewayError) -> Response {
    e.log_detail();
    let (status, _, _) = e.wire();
    let body =
        json!({"type": "error", "error": {"type": messages::error_type(status.as_u16()), "message": e.message()}});
    let mut resp = (status, axum::Json(body)).into_response();
    if let Some(secs) = e.retry_after() {
        resp.headers_mut().insert("retry-after", HeaderValue::from(secs));
    }
    resp
}

/// How the answer goes back to the client.
pub enum Shape {
    /// As the adapter returns it (OpenAI's format, or a native relay of
    /// Messages).
    AsIs,
    /// A native Responses relay: as is, with the response id remembered
    /// for `GET /v1/responses/{id}`.
    NativeResponses { workspace: String, provider: String },
    /// Translated through chat: back into a `response` object / events.
    Responses(Box<Echo>),
    /// Translated through chat: back into a `message` object / events.
    Messages,
}

/// Invalid dialect requests are the client's fault: 400.
pub fn invalid(e: tollgate_providers::dialects::Invalid) -> GatewayError {
    GatewayError::InvalidRequest {
        message: e.message,
        param: e.param.map(str::to_owned),
    }
}

impl Shape {
    /// A whole answer in the client's API.
    pub fn whole(&self, body: Bytes, model: &str, now: i64, ids: &ResponseIds) -> Result<Bytes, GatewayError> {
        let bad = |e: tollgate_providers::dialects::Invalid| GatewayError::Upstream(e.message);
        match self {
            Shape::AsIs => Ok(body),
            Shape::NativeResponses { workspace, provider } => {
                #[derive(serde::Deserialize)]
                struct IdOnly {
                    id: Option<String>,
                }
                if let Some(id) = serde_json::from_slice::<IdOnly>(&body).ok().and_then(|r| r.id) {
                    ids.remember(id, workspace, provider);
                }
                Ok(body)
            }
            Shape::Responses(echo) => responses::from_chat(&body, echo, now).map(Bytes::from).map_err(bad),
            Shape::Messages => messages::from_chat(&body, model).map(Bytes::from).map_err(bad),
        }
    }

    /// The stream shaper, if frames need one (`None`: OpenAI chunks as is).
    pub fn streamer(
        self,
        api: Api,
        model: &str,
        now: i64,
        ids: std::sync::Arc<ResponseIds>,
    ) -> Option<Box<dyn StreamShaper>> {
        match self {
            Shape::AsIs if api == Api::Messages => Some(Box::new(Native { ids: None, api })),
            Shape::AsIs => None,
            Shape::NativeResponses { workspace, provider } => Some(Box::new(Native {
                ids: Some((ids, workspace, provider)),
                api,
            })),
            Shape::Responses(echo) => Some(Box::new(ResponsesShaper::new(*echo, model.to_owned(), now))),
            Shape::Messages => Some(Box::new(MessagesShaper::new(model.to_owned()))),
        }
    }
}

/// A native stream: frames as the upstream sent them; no `[DONE]` (neither
/// API sends one); errors in the API's shape; a Responses id remembered.
struct Native {
    ids: Option<(std::sync::Arc<ResponseIds>, String, String)>,
    api: Api,
}

impl StreamShaper for Native {
    fn frame(&mut self, frame: &[u8], out: &mut Vec<u8>) {
        if let Some((ids, ws, provider)) = &self.ids {
            if let Some(id) = created_id(frame) {
                ids.remember(id, ws, provider);
                self.ids = None;
            }
        }
        out.extend_from_slice(frame);
    }

    fn finish(&mut self, _out: &mut Vec<u8>) {}

    fn fail(&mut self, status: u16, kind: &str, message: &str, out: &mut Vec<u8>) {
        let (name, data) = if self.api == Api::Messages {
            (
                "error",
                json!({"type": "error", "error": {"type": messages::error_type(status), "message": message}}),
            )
        } else {
            (
                "error",
                json!({"type": "error", "code": kind, "message": message, "param": null}),
            )
        };
        out.extend_from_slice(format!("event: {name}\ndata: {data}\n\n").as_bytes());
    }
}

/// The response id in a `response.created` event, if `frame` holds one.
fn created_id(frame: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Created {
        #[serde(rename = "type")]
        kind: String,
        response: Option<Inner>,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        id: String,
    }
    let mut parser = tollgate_providers::sse::SseParser::new();
    parser.push(frame).into_iter().find_map(|ev| {
        let c: Created = serde_json::from_str(&ev.data).ok()?;
        (c.kind == "response.created").then_some(c.response?.id)
    })
}

/// Most response ids remembered; the oldest are forgotten first.
const MAX_RESPONSE_IDS: usize = 100_000;

/// Which workspace and provider produced each natively relayed response,
/// so that `GET /v1/responses/{id}` reaches the upstream that stores it.
/// In memory and bounded: an id from before a restart (or older than the
/// last 100,000) is unknown, as any id Tollgate never relayed.
#[derive(Default)]
pub struct ResponseIds {
    inner: Mutex<Remembered>,
}

#[derive(Default)]
struct Remembered {
    /// id → (workspace, provider slug).
    by_id: HashMap<String, (String, String)>,
    order: VecDeque<String>,
}

impl ResponseIds {
    pub fn remember(&self, id: String, workspace: &str, provider: &str) {
        let mut g = self.inner.lock();
        let r = &mut *g;
        let owner = (workspace.to_owned(), provider.to_owned());
        if r.by_id.insert(id.clone(), owner).is_none() {
            r.order.push_back(id);
            while r.order.len() > MAX_RESPONSE_IDS {
                if let Some(old) = r.order.pop_front() {
                    r.by_id.remove(&old);
                }
            }
        }
    }

    /// `(workspace, provider slug)` of a remembered response.
    pub fn get(&self, id: &str) -> Option<(String, String)> {
        self.inner.lock().by_id.get(id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_ids_are_bounded_and_found() {
        let ids = ResponseIds::default();
        for i in 0..MAX_RESPONSE_IDS + 5 {
            ids.remember(format!("resp_{i}"), "ws", "p");
        }
        assert_eq!(ids.get("resp_0"), None);
        assert_eq!(
            ids.get(&format!("resp_{}", MAX_RESPONSE_IDS + 4)),
            Some(("ws".into(), "p".into()))
        );
    }

    #[test]
    fn created_id_is_read_from_a_frame() {
        let f = b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\"}}\n\n";
        assert_eq!(created_id(f).as_deref(), Some("resp_1"));
        assert_eq!(created_id(b"data: {\"type\":\"response.output_text.delta\"}\n\n"), None);
    }

    #[test]
    fn messages_errors_are_anthropic_shaped() {
        let r = anthropic_error(GatewayError::Authentication("bad key".into()));
        assert_eq!(r.status(), 401);
        let r = anthropic_error(GatewayError::RateLimited {
            level: crate::error::LimitLevel::Workspace,
            message: "x".into(),
            retry_after_secs: 3,
        });
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "3");
    }
}
