//! Mocks of Google's model APIs: the Gemini API
//! (`/v1beta/models/{model}:generateContent`, `:streamGenerateContent?alt=sse`,
//! `:batchEmbedContents`, key in `x-goog-api-key` or `?key=`) and Vertex AI
//! (`/v1/projects/{p}/locations/{r}/publishers/google/models/{model}:…` and
//! `:predict`, plus the OAuth token endpoint `/token`).
//!
//! They check what Google checks: the API key; for Vertex the JWT assertion
//! (RS256 signature against the service account's public key, `iss`, `aud`
//! = this endpoint, `scope`, `exp`), then the issued bearer token and the
//! project and region in the path. Answers are deterministic: the
//! [`Control`]'s reply and usage, a `functionCall` to the first declared
//! function when the request offers tools (and is not answering one), and
//! fixed-pattern embeddings.

use crate::control::{self, Control};
use crate::{record, Journal, MockServer, Recorded};
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::StatusCode;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;

/// A TEST-ONLY RSA private key (PKCS#8 PEM) for fake Vertex service
/// accounts. It protects nothing: never use it outside tests.
pub const TEST_ONLY_SERVICE_ACCOUNT_PRIVATE_KEY: &str = "-----BEGIN PRIVATE KEY-----\n\
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCm2ewga2hNE6fH\n\
yipJQsSMsujz7Xao6IrZKNpcI7YGvQb2vMOqVawceSKsADsDiHRJZxiGffsDQx2/\n\
GMitnnbAAygg64Y80trHbgeVFDHkASW74JiBEan6TBVf+2X3Py18qEo6vNOovNCt\n\
O1iaHwB3fRET5YLnu5KMoD9to98uB7tnNLti2jnoxLZAP9CWeRk8tNiEvmKG90D3\n\
0BWEacsrbMi6JE/05yQoX7aMdt6Tcwlq4Ao8bEJKmrM82O7Krld2CoF3i+z+DOMw\n\
rzQRPkO3sFJCjKzWxJUKVzK8wmz03k5bk9PbvGXF/pjN4GBRe/uVhE0hseSV/GTp\n\
wIOny36tAgMBAAECggEAAc5Bcy9eY1knW27par4NfP1RrpQfEOBlYkjCJjWfum5w\n\
xRpRXsZLFMrN0IE3Ikhng8TZG9mAri4bhA4rW8+ndtgB5utNmlpo0jgzXk5n5NEL\n\
XL9nPxxXE9WfdJi2p4iYQC1dEkopWz3h30IRaSeVPHXOycGV21apFRsF3LSljWy1\n\
BW+odDbls8+Pi6S4RRL/99n2AzSxNpNCXs/T/mLRZJkl9ISomYK4AOeJeIuA01dE\n\
J/kuZC2c+YwyY+IUWgqiHX68OaXIMcReeTl0enlV9qttxY69a3Wdo1QFqLOHv3o/\n\
LgeLEQNif4udXJUAdHCcHADTR5aYfjsd3uNJTlylmQKBgQDVoWoa/zRuMh5U1xPs\n\
i1WCi6aJRuiXU/hkNXLUloYXIU0aVYff7kpiC22ynt5+etHDkyFkS2XzUmFQb/rQ\n\
D/Q6TgQBW0EBaLK8j0+0qFcypht3gWLaKuIJhVvrEVuLDw6+gzDWU3wzQfDhtyh/\n\
HGF32YAh8IzXu9saTKLOdO68tQKBgQDH8WavO+g9VgCUDMOb7c4epBZjwVNXa35L\n\
okJAwwFKUCHT3wU/3m67klP3cilXZkpJRoXwQbGztJNImliqjUDewcBlzcjbUrwm\n\
mLx1PR1pUVO5pI3nLF5QWEHCT2IHKZR9m6rfu+Iqx97TcS8omvT1ZCZbOpMEyxx4\n\
5zvG1NptGQKBgQCG9t9OBwVcyRUYjHjt7GktfITOHZo8YLSAurO9UwuL+WH4zSh2\n\
dNlRb97yBiSSy41SfdWOw4O5YcZRRy2x3SJy427sXHaJKVgigHferqvIN+EKcxe8\n\
tXLwiOw1alXnWK/79G4aOcwxpetE7q4LACcjzKmCx7JzaR9XUitZO87IMQKBgFXK\n\
Jp0Zv1RSCn173JKTPtW24kR7Nx9TaCVbwcG36l3QdDNMhhwZfLnO12hc+5Acu9Ml\n\
B2NHTNAmsut8Dn9fjG4IBF2qJny0yzZkYriLOItv8dS93oVKbE1dERompZEdLjGX\n\
EYJeQ3THvbxL3Eg39NM13Z9XSq3L2LOnw+ZUfkRBAoGAUJOR6/tenZEOzzD5QB3w\n\
VZgVQrIV4uOYLVben6dkFTKC9YLmQFbeKQ7TCEqJatG8fhCy87Hm6sqsPKYW6Yyj\n\
NuP7e4Ghg/birRvt+8yNGvH7RvX0fCqJyNAr9/HokShAxJLO0lGouj3uIAF3hTkh\n\
NlxPgCHGP4y7TzfxHKmJdVA=\n\
-----END PRIVATE KEY-----\n\
";

/// The public half of [`TEST_ONLY_SERVICE_ACCOUNT_PRIVATE_KEY`].
pub const TEST_ONLY_SERVICE_ACCOUNT_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAptnsIGtoTROnx8oqSULE\n\
jLLo8+12qOiK2SjaXCO2Br0G9rzDqlWsHHkirAA7A4h0SWcYhn37A0MdvxjIrZ52\n\
wAMoIOuGPNLax24HlRQx5AElu+CYgRGp+kwVX/tl9z8tfKhKOrzTqLzQrTtYmh8A\n\
d30RE+WC57uSjKA/baPfLge7ZzS7Yto56MS2QD/QlnkZPLTYhL5ihvdA99AVhGnL\n\
K2zIuiRP9OckKF+2jHbek3MJauAKPGxCSpqzPNjuyq5XdgqBd4vs/gzjMK80ET5D\n\
t7BSQoys1sSVClcyvMJs9N5OW5PT27xlxf6YzeBgUXv7lYRNIbHklfxk6cCDp8t+\n\
rQIDAQAB\n\
-----END PUBLIC KEY-----\n\
";

/// The service account the Vertex mock expects by default.
pub const TEST_CLIENT_EMAIL: &str = "tollgate-test@test-project.iam.gserviceaccount.com";

/// The bearer-token scope Vertex needs.
const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// A service-account key file, as Google issues them, for the test key.
pub fn service_account_json(client_email: &str, token_uri: &str, project_id: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": "test-key-1",
        "private_key": TEST_ONLY_SERVICE_ACCOUNT_PRIVATE_KEY,
        "client_email": client_email,
        "client_id": "100000000000000000000",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    })
    .to_string()
}

/// What the Vertex mock accepts.
#[derive(Debug, Clone)]
pub struct VertexConfig {
    pub project: String,
    pub region: String,
    pub client_email: String,
    /// PEM public key the JWT assertion must verify against.
    pub public_key_pem: String,
    pub control: Control,
}

impl VertexConfig {
    /// The test service account ([`TEST_CLIENT_EMAIL`], test key) for
    /// `project` in `region`.
    pub fn new(project: &str, region: &str, control: Control) -> Self {
        Self {
            project: project.to_owned(),
            region: region.to_owned(),
            client_email: TEST_CLIENT_EMAIL.to_owned(),
            public_key_pem: TEST_ONLY_SERVICE_ACCOUNT_PUBLIC_KEY.to_owned(),
            control,
        }
    }
}

enum Auth {
    ApiKey(String),
    Vertex {
        project: String,
        region: String,
        client_email: String,
        key: jsonwebtoken::DecodingKey,
        issued: Mutex<HashSet<String>>,
    },
}

#[derive(Clone)]
struct Mock {
    journal: Journal,
    control: Control,
    auth: Arc<Auth>,
}

/// Starts a Gemini API mock that accepts `api_key`.
pub async fn start_gemini(api_key: &str, control: Control) -> std::io::Result<MockServer> {
    start(Auth::ApiKey(api_key.to_owned()), control).await
}

/// Starts a Vertex AI mock (model paths and `/token`).
pub async fn start_vertex(config: VertexConfig) -> std::io::Result<MockServer> {
    let control = config.control.clone();
    start(vertex_auth(config)?, control).await
}

/// The Gemini mock's routes for a long-running process (`tollgate
/// mock-upstream --protocol gemini`): requests are checked as usual but not
/// kept.
pub fn standalone_gemini_router(api_key: &str, control: Control) -> Router {
    let journal = Journal::default();
    crate::forgetful(
        router(Auth::ApiKey(api_key.to_owned()), control, journal.clone()),
        journal,
    )
}

/// The Vertex mock's routes for a long-running process (`tollgate
/// mock-upstream --protocol vertex`): requests are checked as usual but not
/// kept.
pub fn standalone_vertex_router(config: VertexConfig) -> std::io::Result<Router> {
    let control = config.control.clone();
    let journal = Journal::default();
    let router = router(vertex_auth(config)?, control, journal.clone());
    Ok(crate::forgetful(router, journal))
}

fn vertex_auth(config: VertexConfig) -> std::io::Result<Auth> {
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(config.public_key_pem.as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    Ok(Auth::Vertex {
        project: config.project,
        region: config.region,
        client_email: config.client_email,
        key,
        issued: Mutex::new(HashSet::new()),
    })
}

async fn start(auth: Auth, control: Control) -> std::io::Result<MockServer> {
    let journal = Journal::default();
    MockServer::start(router(auth, control, journal.clone()), journal).await
}

fn router(auth: Auth, control: Control, journal: Journal) -> Router {
    let mock = Mock {
        journal,
        control,
        auth: Arc::new(auth),
    };
    Router::new().fallback(handle).with_state(mock)
}

/// Google's error body.
fn google_error(status: u16, message: &str) -> Response {
    let name = match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    let body = json!({"error": {"code": status, "message": message, "status": name}});
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json; charset=UTF-8")],
        body.to_string(),
    )
        .into_response()
}

fn json_response(v: Value) -> Response {
    ([("content-type", "application/json; charset=UTF-8")], v.to_string()).into_response()
}

async fn handle(State(mock): State<Mock>, req: Request) -> Response {
    let r = record(&mock.journal, req).await;
    if r.method != "POST" {
        return google_error(404, "not found");
    }
    if r.path == "/token" {
        return token(&mock, &r);
    }
    // `{prefix}/models/{model}:{method}`
    let Some((prefix, rest)) = r.path.rsplit_once("/models/") else {
        return google_error(404, &format!("no such path {}", r.path));
    };
    let Some((model, method)) = rest.split_once(':') else {
        return google_error(404, &format!("no such path {}", r.path));
    };
    if let Some(refusal) = authorize(&mock, &r, prefix) {
        return refusal;
    }
    mock.control.delay().await;
    if let Some((status, message)) = mock.control.failure() {
        return google_error(status, &message);
    }
    let body: Value = match serde_json::from_slice(&r.body) {
        Ok(v) => v,
        Err(_) => return google_error(400, "Invalid JSON payload received."),
    };
    let vertex = matches!(*mock.auth, Auth::Vertex { .. });
    match method {
        "generateContent" | "streamGenerateContent" => {
            if body.get("contents").and_then(Value::as_array).is_none_or(Vec::is_empty) {
                return google_error(400, "* GenerateContentRequest.contents: contents is not specified");
            }
            if method == "generateContent" {
                json_response(generate(&mock.control, &body, model))
            } else if query_param(&r, "alt") == Some("sse") {
                stream(&mock.control, &body, model)
            } else {
                google_error(400, "this mock serves streamGenerateContent only with alt=sse")
            }
        }
        "batchEmbedContents" if !vertex => batch_embed(&body, model),
        "predict" if vertex => predict(&body),
        _ => google_error(404, &format!("method {method} not found")),
    }
}

fn query_param<'a>(r: &'a Recorded, name: &str) -> Option<&'a str> {
    r.query
        .as_deref()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Checks the caller's credentials and path; `Some` is the refusal.
fn authorize(mock: &Mock, r: &Recorded, prefix: &str) -> Option<Response> {
    match &*mock.auth {
        Auth::ApiKey(expected) => {
            if prefix != "/v1beta" && prefix != "/v1" {
                return Some(google_error(404, &format!("no such path {}", r.path)));
            }
            let given = r.header("x-goog-api-key").or_else(|| query_param(r, "key"));
            match given {
                None => Some(google_error(
                    403,
                    "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
                )),
                Some(k) if k != expected => Some(google_error(400, "API key not valid. Please pass a valid API key.")),
                Some(_) => None,
            }
        }
        Auth::Vertex {
            project,
            region,
            issued,
            ..
        } => {
            let token = r.header("authorization").and_then(|h| h.strip_prefix("Bearer "));
            if !token.is_some_and(|t| issued.lock().contains(t)) {
                return Some(google_error(
                    401,
                    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
                ));
            }
            let expected = format!("/v1/projects/{project}/locations/{region}/publishers/google");
            if prefix != expected {
                return Some(google_error(
                    403,
                    &format!("Permission denied on resource project/location in {prefix}"),
                ));
            }
            None
        }
    }
}

/// Decodes `application/x-www-form-urlencoded` values.
fn form_value(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let raw = text
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)?
        .1;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn oauth_error(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [("content-type", "application/json; charset=utf-8")],
        json!({"error": error, "error_description": description}).to_string(),
    )
        .into_response()
}

/// The OAuth token endpoint: JWT-bearer grant only.
fn token(mock: &Mock, r: &Recorded) -> Response {
    let Auth::Vertex {
        client_email,
        key,
        issued,
        ..
    } = &*mock.auth
    else {
        return google_error(404, "no such path /token");
    };
    if form_value(&r.body, "grant_type").as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return oauth_error("unsupported_grant_type", "Invalid grant_type");
    }
    let Some(assertion) = form_value(&r.body, "assertion") else {
        return oauth_error("invalid_request", "Missing required parameter: assertion");
    };
    let host = r.header("host").unwrap_or("localhost");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[format!("http://{host}/token")]);
    validation.set_issuer(&[client_email.as_str()]);
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    let claims = match jsonwebtoken::decode::<Value>(&assertion, key, &validation) {
        Ok(t) => t.claims,
        Err(e) => {
            let description = match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => "Invalid JWT Signature.".to_owned(),
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe."
                        .to_owned()
                }
                other => format!("Invalid JWT: {other:?}"),
            };
            return oauth_error("invalid_grant", &description);
        }
    };
    let scope_ok = claims
        .get("scope")
        .and_then(Value::as_str)
        .is_some_and(|s| s.split(' ').any(|s| s == CLOUD_PLATFORM_SCOPE));
    if !scope_ok {
        return oauth_error("invalid_scope", "Invalid OAuth scope or ID token audience provided.");
    }
    let iat = claims.get("iat").and_then(Value::as_i64).unwrap_or(0);
    let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
    if exp <= iat || exp - iat > 3600 {
        return oauth_error(
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.",
        );
    }
    let n = mock.control.count_auth_call();
    let access_token = format!("ya29.mock-access-token-{n}");
    issued.lock().insert(access_token.clone());
    json_response(json!({"access_token": access_token, "expires_in": 3599, "token_type": "Bearer"}))
}

fn usage_metadata(control: &Control) -> Value {
    let u = control.usage();
    let mut m = json!({
        "promptTokenCount": u.prompt,
        "candidatesTokenCount": u.completion,
        "totalTokenCount": u.prompt.saturating_add(u.completion),
    });
    if u.cached > 0 {
        m["cachedContentTokenCount"] = json!(u.cached);
    }
    m
}

/// The function to call, if the request offers tools and is not already
/// answering a call.
fn function_call(body: &Value) -> Option<Value> {
    let decls: Vec<&Value> = body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("functionDeclarations").and_then(Value::as_array))
        .flatten()
        .collect();
    let config = body.pointer("/toolConfig/functionCallingConfig");
    if decls.is_empty() || config.and_then(|c| c.get("mode")).and_then(Value::as_str) == Some("NONE") {
        return None;
    }
    let answering = body
        .get("contents")
        .and_then(Value::as_array)
        .and_then(|c| c.last())
        .and_then(|t| t.get("parts"))
        .and_then(Value::as_array)
        .is_some_and(|parts| parts.iter().any(|p| p.get("functionResponse").is_some()));
    if answering {
        return None;
    }
    let allowed = config
        .and_then(|c| c.get("allowedFunctionNames"))
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str);
    let decl = decls
        .iter()
        .find(|d| allowed.is_none_or(|name| d.get("name").and_then(Value::as_str) == Some(name)))?;
    Some(json!({
        "functionCall": {
            "name": decl.get("name").cloned().unwrap_or(Value::Null),
            "args": control::tool_arguments(decl.get("parameters")),
        }
    }))
}

fn generate(control: &Control, body: &Value, model: &str) -> Value {
    let parts = match function_call(body) {
        Some(call) => json!([call]),
        None => json!([{"text": control.reply()}]),
    };
    json!({
        "candidates": [{
            "content": {"role": "model", "parts": parts},
            "finishReason": "STOP",
            "index": 0,
        }],
        "usageMetadata": usage_metadata(control),
        "modelVersion": model,
    })
}

/// The SSE answer: one event per word (or one for a function call), the
/// last with the finish reason and the full usage, framed with `\r\n` as
/// Google's front end does.
fn stream(control: &Control, body: &Value, model: &str) -> Response {
    let mut events: Vec<Value> = Vec::new();
    let prompt_only = json!({"promptTokenCount": control.usage().prompt});
    match function_call(body) {
        Some(call) => events.push(json!({
            "candidates": [{"content": {"role": "model", "parts": [call]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": usage_metadata(control),
            "modelVersion": model,
        })),
        None => {
            let pieces = control::pieces(&control.reply());
            let last = pieces.len() - 1;
            for (i, piece) in pieces.into_iter().enumerate() {
                let mut candidate = json!({"content": {"role": "model", "parts": [{"text": piece}]}, "index": 0});
                let usage = if i == last {
                    candidate["finishReason"] = json!("STOP");
                    usage_metadata(control)
                } else {
                    prompt_only.clone()
                };
                events.push(json!({"candidates": [candidate], "usageMetadata": usage, "modelVersion": model}));
            }
        }
    }
    let frames: Vec<Bytes> = events
        .iter()
        .map(|e| Bytes::from(format!("data: {e}\r\n\r\n")))
        .collect();
    control::stream_body(frames, control, "text/event-stream")
}

fn batch_embed(body: &Value, model: &str) -> Response {
    let Some(requests) = body.get("requests").and_then(Value::as_array) else {
        return google_error(400, "* BatchEmbedContentsRequest.requests: requests is not specified");
    };
    let expected = format!("models/{model}");
    let mut embeddings = Vec::new();
    for r in requests {
        if r.get("model").and_then(Value::as_str) != Some(expected.as_str()) {
            return google_error(
                400,
                &format!("Model names should match: {expected} in the URL and in every request"),
            );
        }
        let text: String = r
            .pointer("/content/parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect();
        let dims = r.get("outputDimensionality").and_then(Value::as_u64).unwrap_or(4) as usize;
        embeddings.push(json!({"values": control::embedding(&text, dims)}));
    }
    json_response(json!({"embeddings": embeddings}))
}

fn predict(body: &Value) -> Response {
    let Some(instances) = body.get("instances").and_then(Value::as_array) else {
        return google_error(400, "instances is required");
    };
    let dims = body
        .pointer("/parameters/outputDimensionality")
        .and_then(Value::as_u64)
        .unwrap_or(4) as usize;
    let predictions: Vec<Value> = instances
        .iter()
        .map(|i| {
            let text = i.get("content").and_then(Value::as_str).unwrap_or_default();
            json!({"embeddings": {
                "values": control::embedding(text, dims),
                // Vertex writes the count as a float.
                "statistics": {"token_count": control::words(text) as f64, "truncated": false},
            }})
        })
        .collect();
    json_response(json!({"predictions": predictions, "metadata": {"billableCharacterCount": 1}}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::raw::request;

    const CONTENTS: &str = r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#;

    #[tokio::test]
    async fn gemini_mock_checks_the_key_and_the_request() {
        let control = Control::new();
        let s = start_gemini("k", control.clone()).await.unwrap();
        let path = "/v1beta/models/m:generateContent";
        let body = CONTENTS.as_bytes();
        assert_eq!(request(&s, "POST", path, &[], body).await.status, 403);
        let wrong = request(&s, "POST", path, &[("x-goog-api-key", "no")], body).await;
        assert_eq!(wrong.status, 400);
        assert!(wrong.body.contains("API key not valid"));
        let ok = request(&s, "POST", &format!("{path}?key=k"), &[], body).await;
        assert_eq!(ok.status, 200);
        let v: Value = serde_json::from_str(&ok.body).unwrap();
        assert_eq!(v["usageMetadata"]["promptTokenCount"], 12);
        let key = [("x-goog-api-key", "k")];
        assert_eq!(request(&s, "POST", path, &key, b"{}").await.status, 400);
        assert_eq!(request(&s, "POST", path, &key, b"nope").await.status, 400);
        let no_sse = "/v1beta/models/m:streamGenerateContent";
        assert_eq!(request(&s, "POST", no_sse, &key, body).await.status, 400);
        assert_eq!(
            request(&s, "POST", "/v1beta/models/m:predict", &key, body).await.status,
            404
        );
        assert_eq!(
            request(&s, "POST", "/v2/models/m:generateContent", &key, body)
                .await
                .status,
            404
        );
        assert_eq!(request(&s, "POST", "/v1beta/models/m", &key, body).await.status, 404);
        assert_eq!(request(&s, "POST", "/elsewhere", &key, body).await.status, 404);
        assert_eq!(request(&s, "POST", "/token", &key, body).await.status, 404);
        assert_eq!(request(&s, "GET", path, &key, b"").await.status, 404);
        let embed = r#"{"requests":[{"model":"models/other","content":{"parts":[{"text":"x"}]}}]}"#;
        let path = "/v1beta/models/m:batchEmbedContents";
        assert_eq!(request(&s, "POST", path, &key, embed.as_bytes()).await.status, 400);
        assert_eq!(request(&s, "POST", path, &key, b"{}").await.status, 400);
        control.fail(500, "boom");
        let failed = request(&s, "POST", "/v1beta/models/m:generateContent", &key, body).await;
        assert_eq!(failed.status, 500);
        assert!(failed.body.contains("\"INTERNAL\""));
        assert_eq!(s.calls(), 15);
        assert_eq!(control.auth_calls(), 0);
    }

    fn assertion(claims: Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(TEST_ONLY_SERVICE_ACCOUNT_PRIVATE_KEY.as_bytes()).unwrap();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &key,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn vertex_mock_checks_the_assertion_the_token_and_the_path() {
        let control = Control::new();
        let s = start_vertex(VertexConfig::new("p", "r1", control.clone()))
            .await
            .unwrap();
        let model = "/v1/projects/p/locations/r1/publishers/google/models/m:generateContent";
        assert_eq!(request(&s, "POST", model, &[], CONTENTS.as_bytes()).await.status, 401);

        let form = [("content-type", "application/x-www-form-urlencoded")];
        let grant = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";
        let token = |body: String| {
            let s = &s;
            async move { request(s, "POST", "/token", &form, body.as_bytes()).await }
        };
        let a = token("grant_type=password".into()).await;
        assert_eq!((a.status, a.body.contains("unsupported_grant_type")), (400, true));
        let a = token(grant.into()).await;
        assert_eq!((a.status, a.body.contains("invalid_request")), (400, true));
        let a = token(format!("{grant}&assertion=not.a.jwt")).await;
        assert_eq!((a.status, a.body.contains("invalid_grant")), (400, true));

        let now = chrono::Utc::now().timestamp();
        let aud = format!("http://{}/token", s.addr);
        let good =
            json!({"iss": TEST_CLIENT_EMAIL, "scope": CLOUD_PLATFORM_SCOPE, "aud": aud, "iat": now, "exp": now + 3600});
        let mut wrong_scope = good.clone();
        wrong_scope["scope"] = json!("https://www.googleapis.com/auth/drive");
        let a = token(format!("{grant}&assertion={}", assertion(wrong_scope))).await;
        assert_eq!((a.status, a.body.contains("invalid_scope")), (400, true));
        let mut too_long = good.clone();
        too_long["exp"] = json!(now + 7200);
        let a = token(format!("{grant}&assertion={}", assertion(too_long))).await;
        assert_eq!((a.status, a.body.contains("short-lived")), (400, true));
        let mut wrong_aud = good.clone();
        wrong_aud["aud"] = json!("https://oauth2.googleapis.com/token");
        assert_eq!(
            token(format!("{grant}&assertion={}", assertion(wrong_aud)))
                .await
                .status,
            400
        );
        let mut expired = good.clone();
        expired["iat"] = json!(now - 7200);
        expired["exp"] = json!(now - 3600);
        let a = token(format!("{grant}&assertion={}", assertion(expired))).await;
        assert_eq!((a.status, a.body.contains("short-lived")), (400, true));
        assert_eq!(control.auth_calls(), 0);

        let a = token(format!("{grant}&assertion={}", assertion(good))).await;
        assert_eq!(a.status, 200);
        let issued: Value = serde_json::from_str(&a.body).unwrap();
        let bearer = format!("Bearer {}", issued["access_token"].as_str().unwrap());
        let auth = [("authorization", bearer.as_str())];
        let other = "/v1/projects/q/locations/r1/publishers/google/models/m:generateContent";
        assert_eq!(request(&s, "POST", other, &auth, CONTENTS.as_bytes()).await.status, 403);
        assert_eq!(request(&s, "POST", model, &auth, CONTENTS.as_bytes()).await.status, 200);
        let batch = "/v1/projects/p/locations/r1/publishers/google/models/m:batchEmbedContents";
        assert_eq!(request(&s, "POST", batch, &auth, CONTENTS.as_bytes()).await.status, 404);
        let predict = "/v1/projects/p/locations/r1/publishers/google/models/m:predict";
        assert_eq!(request(&s, "POST", predict, &auth, b"{}").await.status, 400);
        assert_eq!(control.auth_calls(), 1);
    }

    #[test]
    fn form_values_are_decoded() {
        assert_eq!(form_value(b"a=1&b=x%3Ay+z", "b").as_deref(), Some("x:y z"));
        assert_eq!(form_value(b"a=1", "b"), None);
        assert_eq!(form_value(b"b=%zz", "b"), None);
    }
}
