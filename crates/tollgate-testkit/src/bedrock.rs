//! A mock of AWS Bedrock runtime and STS on one server.
//!
//! Runtime: `POST /model/{modelId}/converse`, `/converse-stream` (real binary
//! `application/vnd.amazon.eventstream` frames) and `/invoke` (Titan and
//! Cohere embeddings). STS: `POST /` with `Action=AssumeRole`, answering
//! AWS's XML with temporary credentials that the runtime then accepts.
//!
//! Every request's SigV4 signature is recomputed with `aws-sigv4` from the
//! request as received and the known secret (service `bedrock` or `sts`, the
//! configured region); a missing, malformed or wrong signature, an unknown
//! key or a wrong session token gets AWS's 403. The runtime also requires
//! `Content-Type: application/json`. STS checks the role and external id.
//! Answers follow the [`Control`]: usage, reply, errors, latency, cut or
//! failing streams; a `toolUse` when the request offers tools and is not
//! answering one.

use crate::control::{self, Control};
use crate::{record, Journal, MockServer, Recorded};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::StatusCode;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// What the mock accepts.
#[derive(Debug, Clone)]
pub struct BedrockConfig {
    pub region: String,
    /// The integration's long-term keys (they sign runtime calls directly
    /// and STS calls).
    pub access_key_id: String,
    pub secret_access_key: String,
    /// The only role STS lets these keys assume.
    pub role_arn: String,
    /// The external id the role's trust policy requires, if any.
    pub external_id: Option<String>,
    pub control: Control,
}

impl BedrockConfig {
    /// Test keys and role for `region`.
    pub fn new(region: &str, control: Control) -> Self {
        Self {
            region: region.to_owned(),
            access_key_id: "AKIATOLLGATETEST0001".to_owned(),
            secret_access_key: "tollgate/test+secret/AAAAAAAAAAAAAAAAAAAAAAAA".to_owned(),
            role_arn: "arn:aws:iam::123456789012:role/tollgate-test".to_owned(),
            external_id: Some("tollgate-external-1".to_owned()),
            control,
        }
    }
}

/// Temporary credentials STS handed out: secret and session token.
type Issued = HashMap<String, (String, String)>;

#[derive(Clone)]
struct Mock {
    journal: Journal,
    config: Arc<BedrockConfig>,
    issued: Arc<Mutex<Issued>>,
}

/// Starts the mock (runtime and STS on the same address).
pub async fn start(config: BedrockConfig) -> std::io::Result<MockServer> {
    let journal = Journal::default();
    MockServer::start(router(config, journal.clone()), journal).await
}

/// The mock's routes for a long-running process (`tollgate mock-upstream
/// --protocol bedrock`): requests are checked as usual but not kept.
pub fn standalone_router(config: BedrockConfig) -> Router {
    let journal = Journal::default();
    crate::forgetful(router(config, journal.clone()), journal)
}

fn router(config: BedrockConfig, journal: Journal) -> Router {
    let mock = Mock {
        journal,
        config: Arc::new(config),
        issued: Arc::new(Mutex::new(HashMap::new())),
    };
    Router::new().fallback(handle).with_state(mock)
}

/// An AWS JSON-protocol error.
fn aws_error(status: u16, kind: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json"), ("x-amzn-errortype", kind)],
        json!({ "message": message }).to_string(),
    )
        .into_response()
}

/// The error type AWS names for a status.
fn kind_for(status: u16) -> &'static str {
    match status {
        400 => "ValidationException",
        403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        _ => "InternalServerException",
    }
}

/// An STS (Query protocol) error.
fn sts_error(status: u16, code: &str, message: &str) -> Response {
    let body = format!(
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n  <Error>\n    <Type>Sender</Type>\n    <Code>{code}</Code>\n    <Message>{}</Message>\n  </Error>\n  <RequestId>00000000-0000-0000-0000-000000000000</RequestId>\n</ErrorResponse>\n",
        xml_escape(message)
    );
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN),
        [("content-type", "text/xml")],
        body,
    )
        .into_response()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Why a signature was refused: status, AWS error code, message.
type Refusal = (u16, &'static str, String);

/// Recomputes the request's SigV4 signature and compares it with the one
/// sent.
fn verify(mock: &Mock, r: &Recorded, service: &str) -> Result<(), Refusal> {
    let Some(auth) = r.header("authorization") else {
        return Err((
            403,
            "MissingAuthenticationTokenException",
            "Missing Authentication Token".into(),
        ));
    };
    let malformed = || {
        (
            403,
            "IncompleteSignatureException",
            format!("Authorization header requires 'Credential', 'SignedHeaders' and 'Signature': {auth}"),
        )
    };
    let fields = auth.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(malformed)?;
    let field = |name: &str| {
        fields
            .split(", ")
            .find_map(|f| f.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
    };
    let credential = field("Credential").ok_or_else(malformed)?;
    let signed_headers = field("SignedHeaders").ok_or_else(malformed)?;
    field("Signature").ok_or_else(malformed)?;
    let scope: Vec<&str> = credential.split('/').collect();
    if scope.len() != 5 || scope[4] != "aws4_request" {
        return Err(malformed());
    }
    let (key_id, scope_region, scope_service) = (scope[0], scope[2], scope[3]);
    if scope_region != mock.config.region || scope_service != service {
        return Err((
            403,
            "InvalidSignatureException",
            format!(
                "Credential should be scoped to a valid region and service ({}/{service}), not {scope_region}/{scope_service}.",
                mock.config.region
            ),
        ));
    }
    let sent_token = r.header("x-amz-security-token");
    let secret = if key_id == mock.config.access_key_id {
        mock.config.secret_access_key.clone()
    } else {
        // Only runtime calls accept STS's temporary credentials.
        let issued = mock.issued.lock().get(key_id).cloned().filter(|_| service != "sts");
        match issued {
            Some((secret, token)) if sent_token == Some(token.as_str()) => secret,
            _ => {
                return Err((
                    403,
                    "UnrecognizedClientException",
                    "The security token included in the request is invalid.".into(),
                ))
            }
        }
    };
    let time = r
        .header("x-amz-date")
        .and_then(|d| chrono::NaiveDateTime::parse_from_str(d, "%Y%m%dT%H%M%SZ").ok())
        .map(|d| std::time::SystemTime::from(d.and_utc()))
        .ok_or_else(|| {
            (
                403,
                "IncompleteSignatureException",
                "Date must be in ISO-8601 'basic format'. Got an absent or invalid X-Amz-Date.".to_owned(),
            )
        })?;
    let mut headers = Vec::new();
    for name in signed_headers.split(';') {
        let value = r.header(name).ok_or_else(malformed)?;
        headers.push((name, value));
    }
    let host = r.header("host").unwrap_or("localhost");
    let uri = match &r.query {
        Some(q) => format!("http://{host}{}?{q}", r.path),
        None => format!("http://{host}{}", r.path),
    };
    let identity = Credentials::new(key_id, secret, sent_token.map(str::to_owned), None, "mock").into();
    let internal = |e: &dyn std::fmt::Display| (500, "InternalFailure", e.to_string());
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(&mock.config.region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| internal(&e))?
        .into();
    let request = SignableRequest::new(&r.method, uri, headers.into_iter(), SignableBody::Bytes(&r.body))
        .map_err(|e| internal(&e))?;
    let (instructions, _) = sign(request, &params).map_err(|e| internal(&e))?.into_parts();
    let expected = instructions
        .headers()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.to_owned());
    if expected.as_deref() != Some(auth) {
        return Err((
            403,
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.".into(),
        ));
    }
    Ok(())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn form(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(&v.replace('+', " "))))
        .collect()
}

async fn handle(State(mock): State<Mock>, req: Request) -> Response {
    let r = record(&mock.journal, req).await;
    if r.method != "POST" {
        return aws_error(404, "UnknownOperationException", "not found");
    }
    if r.path == "/" {
        return sts(&mock, &r);
    }
    if let Err((status, kind, message)) = verify(&mock, &r, "bedrock") {
        return aws_error(status, kind, &message);
    }
    let segments: Vec<&str> = r.path.trim_start_matches('/').split('/').collect();
    let ["model", model, action] = segments.as_slice() else {
        return aws_error(404, "UnknownOperationException", &format!("no such path {}", r.path));
    };
    let model = percent_decode(model);
    let content_type = r.header("content-type").unwrap_or("");
    if !content_type.starts_with("application/json") {
        return aws_error(
            415,
            "UnsupportedMediaTypeException",
            &format!("Content-Type {content_type:?} is not supported; use application/json"),
        );
    }
    let control = &mock.config.control;
    control.delay().await;
    if let Some((status, message)) = control.failure() {
        return aws_error(status, kind_for(status), &message);
    }
    let Ok(body) = serde_json::from_slice::<Value>(&r.body) else {
        return aws_error(
            400,
            "ValidationException",
            "Malformed input request, please reformat your input and try again.",
        );
    };
    match *action {
        "converse" | "converse-stream" => {
            if body.get("messages").and_then(Value::as_array).is_none_or(Vec::is_empty) {
                return aws_error(
                    400,
                    "ValidationException",
                    "A conversation must start with a user message.",
                );
            }
            if *action == "converse" {
                converse(control, &body)
            } else {
                converse_stream(control, &body)
            }
        }
        "invoke" => invoke(&model, &body),
        other => aws_error(404, "UnknownOperationException", &format!("unknown operation {other}")),
    }
}

/// STS AssumeRole.
fn sts(mock: &Mock, r: &Recorded) -> Response {
    if let Err((status, code, message)) = verify(mock, r, "sts") {
        let code = match code {
            "InvalidSignatureException" => "SignatureDoesNotMatch",
            "UnrecognizedClientException" => "InvalidClientTokenId",
            "MissingAuthenticationTokenException" => "MissingAuthenticationToken",
            other => other,
        };
        return sts_error(status, code, &message);
    }
    let params = form(&r.body);
    let get = |k: &str| params.get(k).map(String::as_str);
    if get("Action") != Some("AssumeRole") || get("Version") != Some("2011-06-15") {
        return sts_error(
            400,
            "InvalidAction",
            "Could not find operation for this Action and Version.",
        );
    }
    let Some(session) = get("RoleSessionName").filter(|s| !s.is_empty()) else {
        return sts_error(400, "ValidationError", "RoleSessionName is required.");
    };
    let role = get("RoleArn").unwrap_or_default();
    let config = &mock.config;
    if role != config.role_arn || get("ExternalId") != config.external_id.as_deref() {
        return sts_error(
            403,
            "AccessDenied",
            &format!(
                "User: arn:aws:iam::123456789012:user/tollgate is not authorized to perform: sts:AssumeRole on resource: {role}"
            ),
        );
    }
    let duration: i64 = get("DurationSeconds").and_then(|d| d.parse().ok()).unwrap_or(3600);
    let n = config.control.count_auth_call();
    let key_id = format!("ASIATOLLGATEMOCK{n:04}");
    let secret = format!("mock/temporary+secret{n:04}");
    let token = format!("IQoJb3JpZ2luX2VjEMock/Session+Token=={n}");
    mock.issued
        .lock()
        .insert(key_id.clone(), (secret.clone(), token.clone()));
    let expiration = (chrono::Utc::now() + chrono::Duration::seconds(duration)).format("%Y-%m-%dT%H:%M:%SZ");
    let body = format!(
        "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n  <AssumeRoleResult>\n    <AssumedRoleUser>\n      <AssumedRoleId>AROAMOCK:{session}</AssumedRoleId>\n      <Arn>{role}/{session}</Arn>\n    </AssumedRoleUser>\n    <Credentials>\n      <AccessKeyId>{key_id}</AccessKeyId>\n      <SecretAccessKey>{secret}</SecretAccessKey>\n      <SessionToken>{token}</SessionToken>\n      <Expiration>{expiration}</Expiration>\n    </Credentials>\n  </AssumeRoleResult>\n  <ResponseMetadata>\n    <RequestId>00000000-0000-0000-0000-00000000000{}</RequestId>\n  </ResponseMetadata>\n</AssumeRoleResponse>\n",
        n % 10
    );
    ([("content-type", "text/xml")], body).into_response()
}

/// The tool to call, if the request offers tools and is not answering one.
fn tool_use(body: &Value) -> Option<Value> {
    let tools: Vec<&Value> = body
        .pointer("/toolConfig/tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("toolSpec"))
        .collect();
    if tools.is_empty() {
        return None;
    }
    let answering = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .and_then(|m| m.get("content"))
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|b| b.get("toolResult").is_some()));
    if answering {
        return None;
    }
    let wanted = body.pointer("/toolConfig/toolChoice/tool/name").and_then(Value::as_str);
    let spec = tools
        .iter()
        .find(|t| wanted.is_none_or(|w| t.get("name").and_then(Value::as_str) == Some(w)))?;
    Some(json!({
        "toolUseId": "tooluse_mock_1",
        "name": spec.get("name").cloned().unwrap_or(Value::Null),
        "input": control::tool_arguments(spec.pointer("/inputSchema/json")),
    }))
}

fn usage(control: &Control) -> Value {
    let u = control.usage();
    let input = u.prompt.saturating_sub(u.cached);
    let mut v = json!({
        "inputTokens": input,
        "outputTokens": u.completion,
        "totalTokens": u.prompt.saturating_add(u.completion),
    });
    if u.cached > 0 {
        v["cacheReadInputTokens"] = json!(u.cached);
    }
    v
}

fn converse(control: &Control, body: &Value) -> Response {
    let (content, stop) = match tool_use(body) {
        Some(tu) => (json!([{ "toolUse": tu }]), "tool_use"),
        None => (json!([{ "text": control.reply() }]), "end_turn"),
    };
    let answer = json!({
        "output": { "message": { "role": "assistant", "content": content } },
        "stopReason": stop,
        "usage": usage(control),
        "metrics": { "latencyMs": 42 },
    });
    ([("content-type", "application/json")], answer.to_string()).into_response()
}

/// One binary event-stream frame.
fn frame(headers: &[(&str, &str)], payload: Value) -> Bytes {
    let mut m = Message::new(Bytes::from(payload.to_string()));
    for (k, v) in headers {
        m = m.add_header(Header::new(k.to_string(), HeaderValue::String(v.to_string().into())));
    }
    let mut buf = Vec::new();
    // Writing to a Vec only fails for oversized messages, which a mock never builds.
    let _ = write_message_to(&m, &mut buf);
    Bytes::from(buf)
}

fn event(kind: &str, mut payload: Value) -> Bytes {
    // AWS pads every event with a "p" field so sizes leak nothing.
    payload["p"] = json!("abcdefghijklmnopqrstuvwxyzABCDEFGHIJ");
    frame(
        &[
            (":event-type", kind),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload,
    )
}

fn converse_stream(control: &Control, body: &Value) -> Response {
    let mut frames = vec![event("messageStart", json!({ "role": "assistant" }))];
    let stop = match tool_use(body) {
        Some(tu) => {
            frames.push(event(
                "contentBlockStart",
                json!({ "contentBlockIndex": 0, "start": { "toolUse": { "toolUseId": tu["toolUseId"], "name": tu["name"] } } }),
            ));
            let input = tu["input"].to_string();
            let (a, b) = input.split_at(input.len() / 2);
            for piece in [a, b] {
                frames.push(event(
                    "contentBlockDelta",
                    json!({ "contentBlockIndex": 0, "delta": { "toolUse": { "input": piece } } }),
                ));
            }
            "tool_use"
        }
        None => {
            for piece in control::pieces(&control.reply()) {
                frames.push(event(
                    "contentBlockDelta",
                    json!({ "contentBlockIndex": 0, "delta": { "text": piece } }),
                ));
            }
            "end_turn"
        }
    };
    frames.push(event("contentBlockStop", json!({ "contentBlockIndex": 0 })));
    frames.push(event("messageStop", json!({ "stopReason": stop })));
    frames.push(event(
        "metadata",
        json!({ "usage": usage(control), "metrics": { "latencyMs": 42 } }),
    ));
    if let Some((kind, message)) = control.stream_exception() {
        frames.truncate((frames.len() / 2).max(1));
        frames.push(frame(
            &[
                (":exception-type", kind.as_str()),
                (":content-type", "application/json"),
                (":message-type", "exception"),
            ],
            json!({ "message": message }),
        ));
    }
    control::stream_body(frames, control, "application/vnd.amazon.eventstream")
}

/// InvokeModel for the embedding families the gateway supports.
fn invoke(model: &str, body: &Value) -> Response {
    let json_answer = |v: Value| ([("content-type", "application/json")], v.to_string()).into_response();
    if model.starts_with("amazon.titan-embed") {
        let Some(text) = body.get("inputText").and_then(Value::as_str) else {
            return aws_error(
                400,
                "ValidationException",
                "Malformed input request: required key [inputText] not found",
            );
        };
        let dims = body.get("dimensions").and_then(Value::as_u64).unwrap_or(4) as usize;
        json_answer(json!({ "embedding": control::embedding(text, dims), "inputTextTokenCount": control::words(text) }))
    } else if model.starts_with("cohere.embed") {
        let (Some(texts), Some(_)) = (
            body.get("texts").and_then(Value::as_array),
            body.get("input_type").and_then(Value::as_str),
        ) else {
            return aws_error(
                400,
                "ValidationException",
                "Malformed input request: texts and input_type are required",
            );
        };
        let texts: Vec<&str> = texts.iter().filter_map(Value::as_str).collect();
        let embeddings: Vec<Vec<f64>> = texts.iter().map(|t| control::embedding(t, 4)).collect();
        json_answer(json!({
            "embeddings": embeddings,
            "id": "mock-embed-1",
            "response_type": "embeddings_floats",
            "texts": texts,
        }))
    } else {
        aws_error(400, "ValidationException", "The provided model identifier is invalid.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::raw::{request, Answer};

    /// Signs and sends a request to the mock.
    #[allow(clippy::too_many_arguments)]
    async fn signed(
        s: &MockServer,
        path: &str,
        key: (&str, &str, Option<&str>),
        region: &str,
        service: &str,
        content_type: &str,
        body: &[u8],
        sent_body: &[u8],
    ) -> Answer {
        let identity = Credentials::new(key.0, key.1, key.2.map(str::to_owned), None, "test").into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name(service)
            .time(std::time::SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let url = format!("http://{}{path}", s.addr);
        let req = SignableRequest::new(
            "POST",
            url,
            [("content-type", content_type)].into_iter(),
            SignableBody::Bytes(body),
        )
        .unwrap();
        let (instructions, _) = sign(req, &params).unwrap().into_parts();
        let mut headers: Vec<(&str, String)> = vec![("content-type", content_type.to_owned())];
        headers.extend(instructions.headers().map(|(k, v)| (k, v.to_owned())));
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        request(s, "POST", path, &headers, sent_body).await
    }

    const CONVERSE: &str = r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#;
    const PATH: &str = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse";

    #[tokio::test]
    async fn runtime_mock_checks_signatures_and_content() {
        let control = Control::new();
        let c = BedrockConfig::new("us-west-2", control.clone());
        let s = start(c.clone()).await.unwrap();
        let key = (c.access_key_id.as_str(), c.secret_access_key.as_str(), None);
        let body = CONVERSE.as_bytes();
        let json = "application/json";

        let a = request(&s, "POST", PATH, &[], body).await;
        assert_eq!(a.status, 403);
        assert_eq!(
            a.header("x-amzn-errortype"),
            Some("MissingAuthenticationTokenException")
        );
        let a = request(&s, "POST", PATH, &[("authorization", "AWS4-HMAC-SHA256 garbage")], body).await;
        assert_eq!(a.header("x-amzn-errortype"), Some("IncompleteSignatureException"));
        let a = signed(&s, PATH, key, "eu-west-1", "bedrock", json, body, body).await;
        assert_eq!(
            (a.status, a.header("x-amzn-errortype")),
            (403, Some("InvalidSignatureException"))
        );
        let a = signed(&s, PATH, key, "us-west-2", "bedrock", json, body, br#"{"messages":[]}"#).await;
        assert!(a.body.contains("signature we calculated does not match"), "{}", a.body);
        let a = signed(
            &s,
            PATH,
            ("AKIANOBODY", "x", None),
            "us-west-2",
            "bedrock",
            json,
            body,
            body,
        )
        .await;
        assert_eq!(a.header("x-amzn-errortype"), Some("UnrecognizedClientException"));
        let a = signed(&s, PATH, key, "us-west-2", "bedrock", "text/plain", body, body).await;
        assert_eq!(a.status, 415);

        let ok = signed(&s, PATH, key, "us-west-2", "bedrock", json, body, body).await;
        assert_eq!(ok.status, 200, "{}", ok.body);
        let v: Value = serde_json::from_str(&ok.body).unwrap();
        assert_eq!(v["stopReason"], "end_turn");
        assert_eq!(v["usage"]["inputTokens"], 12);
        // What the runtime refuses: bad bodies, unknown operations and
        // bodies that do not fit the model family.
        let texts: &[u8] = br#"{"texts":["a"]}"#;
        let refused: [(&str, &[u8], u16); 6] = [
            (PATH, b"{not json", 400),
            (PATH, br#"{"messages":[]}"#, 400),
            ("/model/m/unknown", body, 404),
            ("/model/amazon.titan-embed-text-v1/invoke", b"{}", 400),
            ("/model/cohere.embed-english-v3/invoke", texts, 400),
            ("/model/meta.llama3/invoke", texts, 400),
        ];
        for (path, bad, want) in refused {
            let got = signed(&s, path, key, "us-west-2", "bedrock", json, bad, bad).await;
            assert_eq!(got.status, want, "{path}");
        }
        control.fail(503, "down");
        let a = signed(&s, PATH, key, "us-west-2", "bedrock", json, body, body).await;
        assert_eq!(
            (a.status, a.header("x-amzn-errortype")),
            (503, Some("ServiceUnavailableException"))
        );
        assert_eq!(request(&s, "GET", PATH, &[], b"").await.status, 404);
    }

    #[tokio::test]
    async fn sts_mock_issues_credentials_the_runtime_accepts() {
        let control = Control::new();
        let c = BedrockConfig::new("us-west-2", control.clone());
        let s = start(c.clone()).await.unwrap();
        let key = (c.access_key_id.as_str(), c.secret_access_key.as_str(), None);
        let form = "application/x-www-form-urlencoded; charset=utf-8";
        let sts = |body: String| {
            let s = &s;
            async move { signed(s, "/", key, "us-west-2", "sts", form, body.as_bytes(), body.as_bytes()).await }
        };
        let a = request(&s, "POST", "/", &[], b"Action=AssumeRole").await;
        assert_eq!(a.status, 403);
        assert!(a.body.contains("<Code>MissingAuthenticationToken</Code>"));
        let a = sts("Action=GetCallerIdentity&Version=2011-06-15".into()).await;
        assert!(a.body.contains("<Code>InvalidAction</Code>"));
        let role = "arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Ftollgate-test";
        let base = "Action=AssumeRole&Version=2011-06-15";
        let a = sts(format!("{base}&RoleArn={role}&ExternalId=tollgate-external-1")).await;
        assert_eq!(a.status, 400);
        let a = sts(format!(
            "{base}&RoleArn=arn%3Aother&RoleSessionName=s&ExternalId=tollgate-external-1"
        ))
        .await;
        assert!(a.body.contains("<Code>AccessDenied</Code>"));
        let a = sts(format!("{base}&RoleArn={role}&RoleSessionName=s")).await;
        assert!(
            a.body.contains("<Code>AccessDenied</Code>"),
            "the external id is required"
        );
        assert_eq!(control.auth_calls(), 0);

        let a = sts(format!(
            "{base}&RoleArn={role}&RoleSessionName=s&ExternalId=tollgate-external-1"
        ))
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
        let tag = |t: &str| {
            let open = format!("<{t}>");
            let start = a.body.find(&open).unwrap() + open.len();
            let end = a.body[start..].find('<').unwrap();
            a.body[start..start + end].to_owned()
        };
        let (id, secret, token) = (tag("AccessKeyId"), tag("SecretAccessKey"), tag("SessionToken"));
        assert!(tag("Expiration").ends_with('Z'));
        assert_eq!(control.auth_calls(), 1);

        let body = CONVERSE.as_bytes();
        let json = "application/json";
        let temp = (id.as_str(), secret.as_str(), Some(token.as_str()));
        assert_eq!(
            signed(&s, PATH, temp, "us-west-2", "bedrock", json, body, body)
                .await
                .status,
            200
        );
        let no_token = (id.as_str(), secret.as_str(), None);
        let a = signed(&s, PATH, no_token, "us-west-2", "bedrock", json, body, body).await;
        assert_eq!(
            (a.status, a.header("x-amzn-errortype")),
            (403, Some("UnrecognizedClientException"))
        );
        // Temporary credentials cannot assume the role again.
        let again = format!("{base}&RoleArn={role}&RoleSessionName=s&ExternalId=tollgate-external-1");
        let a = signed(
            &s,
            "/",
            temp,
            "us-west-2",
            "sts",
            form,
            again.as_bytes(),
            again.as_bytes(),
        )
        .await;
        assert!(a.body.contains("<Code>InvalidClientTokenId</Code>"), "{}", a.body);
    }

    #[test]
    fn form_bodies_decode() {
        let f = form(b"RoleArn=arn%3Aaws&Name=a+b&Bad=%z");
        assert_eq!(f["RoleArn"], "arn:aws");
        assert_eq!(f["Name"], "a b");
        assert_eq!(f["Bad"], "%z");
    }
}
