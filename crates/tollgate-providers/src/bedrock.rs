//! The AWS Bedrock adapter: Converse (`/model/{id}/converse`) for whole
//! answers, ConverseStream (`/model/{id}/converse-stream`, binary
//! `application/vnd.amazon.eventstream` frames) for streams, InvokeModel
//! (`/model/{id}/invoke`) for Titan and Cohere embeddings.
//!
//! Requests are signed with SigV4 (service `bedrock`) using the
//! integration's access keys, or, with `aws_auth_type: "assumedRole"`, with
//! temporary credentials from STS AssumeRole (itself signed with the
//! integration's keys). Temporary credentials are cached per access key,
//! role and external id until [`STS_REFRESH_MARGIN`] before they expire,
//! refreshed under a per-role lock so concurrent requests cause one
//! AssumeRole; time (signing and expiry) comes from the injected clock.

use crate::chat_shape::{self, bad_request, config_str, Choice, ChunkWriter, Part, ToolCall};
use crate::credential_cache::{CredentialCache, Expiring};
use crate::sse::{self, Flow, Translate};
use crate::{Adapter, Call, Endpoint, ProviderError, StreamItem, UpstreamResponse};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::{HeaderValue, Message};
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Duration, Utc};
use futures::stream::StreamExt;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use tollgate_core::clock::{SharedClock, SystemClock};
use tollgate_core::usage::Usage;
use zeroize::Zeroizing;

/// Region used when the integration sets none.
pub const DEFAULT_REGION: &str = "us-east-1";
/// Cached STS credentials are replaced this long before they expire.
pub const STS_REFRESH_MARGIN: Duration = Duration::minutes(5);
/// Session name for AssumeRole when the integration sets none
/// (`aws_role_session_name`); it shows in the account's CloudTrail.
const DEFAULT_SESSION_NAME: &str = "tollgate";

/// A set of AWS credentials, zeroed when dropped.
#[derive(Clone)]
struct AwsKeys {
    access_key_id: Zeroizing<String>,
    secret_access_key: Zeroizing<String>,
    session_token: Option<Zeroizing<String>>,
}

impl AwsKeys {
    fn from_secrets(secrets: &dyn tollgate_core::secrets::SecretSource) -> Result<Self, ProviderError> {
        let missing = |f: &str| ProviderError::Config(format!("{f} is not set"));
        Ok(Self {
            access_key_id: chat_shape::open_secret(secrets, "aws_access_key_id")?
                .ok_or_else(|| missing("aws_access_key_id"))?,
            secret_access_key: chat_shape::open_secret(secrets, "aws_secret_access_key")?
                .ok_or_else(|| missing("aws_secret_access_key"))?,
            session_token: chat_shape::open_secret(secrets, "aws_session_token")?,
        })
    }
}

/// Temporary credentials from AssumeRole and their expiry.
type TempCreds = Expiring<AwsKeys>;

/// The Bedrock adapter, holding the STS credential cache.
pub struct Bedrock {
    clock: SharedClock,
    sts: CredentialCache<AwsKeys>,
}

impl Default for Bedrock {
    fn default() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }
}

impl std::fmt::Debug for Bedrock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bedrock")
            .field("cached_roles", &self.sts.len())
            .finish()
    }
}

/// Where a request goes and who signs it.
struct Signer<'a> {
    keys: &'a AwsKeys,
    region: &'a str,
    service: &'a str,
    time: std::time::SystemTime,
}

impl Signer<'_> {
    /// The SigV4 headers (`authorization`, `x-amz-date`, and
    /// `x-amz-security-token` for temporary credentials) for a request with
    /// the given signed headers and body. `host` is signed from the URL.
    fn headers(
        &self,
        method: &str,
        url: &str,
        signed: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Vec<(&'static str, String)>, ProviderError> {
        let fail = |e: &dyn std::fmt::Display| ProviderError::Config(format!("cannot sign the request: {e}"));
        let identity = Credentials::new(
            self.keys.access_key_id.as_str(),
            self.keys.secret_access_key.as_str(),
            self.keys.session_token.as_ref().map(|t| t.as_str().to_owned()),
            None,
            "tollgate-integration",
        )
        .into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(self.region)
            .name(self.service)
            .time(self.time)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| fail(&e))?
            .into();
        let request = SignableRequest::new(method, url, signed.iter().copied(), SignableBody::Bytes(body))
            .map_err(|e| fail(&e))?;
        let (instructions, _) = sign(request, &params).map_err(|e| fail(&e))?.into_parts();
        let (headers, _) = instructions.into_parts();
        Ok(headers.iter().map(|h| (h.name(), h.value().to_owned())).collect())
    }
}

impl Bedrock {
    /// A Bedrock adapter reading time from `clock`.
    pub fn with_clock(clock: SharedClock) -> Self {
        Self {
            sts: CredentialCache::new(clock.clone(), STS_REFRESH_MARGIN),
            clock,
        }
    }

    /// The credentials that sign runtime calls: the integration's own keys,
    /// or temporary ones for the configured role.
    async fn credentials(
        &self,
        http: &reqwest::Client,
        call: &Call<'_>,
        region: &str,
        deadline: tokio::time::Instant,
    ) -> Result<AwsKeys, ProviderError> {
        let keys = AwsKeys::from_secrets(call.target.secrets)?;
        let config = call.target.config;
        match config_str(config, "aws_auth_type").unwrap_or("accessKey") {
            "accessKey" => Ok(keys),
            "assumedRole" => {
                let role = config_str(config, "aws_role_arn")
                    .ok_or_else(|| ProviderError::Config("aws_role_arn is not set".into()))?;
                let external_id = config_str(config, "aws_external_id");
                let endpoint = match config_str(config, "aws_sts_endpoint") {
                    Some(e) => e.to_owned(),
                    None => format!("https://sts.{region}.amazonaws.com/"),
                };
                // The base key is part of the cache key: an integration whose
                // own keys are wrong must not ride on another's session.
                let cache_key = format!(
                    "{}\n{role}\n{}\n{endpoint}",
                    keys.access_key_id.as_str(),
                    external_id.unwrap_or("")
                );
                let session = config_str(config, "aws_role_session_name").unwrap_or(DEFAULT_SESSION_NAME);
                self.sts
                    .get(cache_key, || {
                        self.assume_role(http, &keys, region, &endpoint, role, external_id, session, deadline)
                    })
                    .await
            }
            other => Err(ProviderError::Config(format!("unknown aws_auth_type {other}"))),
        }
    }

    /// STS AssumeRole (Query API, form body, XML answer).
    #[allow(clippy::too_many_arguments)]
    async fn assume_role(
        &self,
        http: &reqwest::Client,
        keys: &AwsKeys,
        region: &str,
        endpoint: &str,
        role: &str,
        external_id: Option<&str>,
        session: &str,
        deadline: tokio::time::Instant,
    ) -> Result<TempCreds, ProviderError> {
        // The serializer is not Send: finish it before the first await.
        let body = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("Action", "AssumeRole")
                .append_pair("Version", "2011-06-15")
                .append_pair("RoleArn", role)
                .append_pair("RoleSessionName", session)
                .append_pair("DurationSeconds", "3600");
            if let Some(id) = external_id {
                form.append_pair("ExternalId", id);
            }
            form.finish().into_bytes()
        };
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let signer = Signer {
            keys,
            region,
            service: "sts",
            time: self.clock.now().into(),
        };
        let signed = signer.headers("POST", endpoint, &[("content-type", content_type)], &body)?;
        let mut req = http.post(endpoint).header("content-type", content_type).body(body);
        for (k, v) in signed {
            req = req.header(k, v);
        }
        let resp = chat_shape::send(req, deadline).await?;
        let status = resp.status();
        let text = chat_shape::read_body(resp, deadline).await?;
        let xml = String::from_utf8_lossy(&text);
        if !status.is_success() {
            let code = xml_tag(&xml, "Code").unwrap_or_default();
            let message = xml_tag(&xml, "Message").unwrap_or_else(|| chat_shape::excerpt(&text));
            return Err(ProviderError::Auth(format!(
                "STS AssumeRole returned {}: {code}: {message}",
                status.as_u16()
            )));
        }
        let field =
            |tag: &str| xml_tag(&xml, tag).ok_or_else(|| ProviderError::Auth(format!("STS answer has no {tag}")));
        let expiration = field("Expiration")?;
        let expires_at = DateTime::parse_from_rfc3339(&expiration)
            .map_err(|_| ProviderError::Auth(format!("STS Expiration {expiration:?} is not a timestamp")))?
            .with_timezone(&Utc);
        Ok(TempCreds {
            value: AwsKeys {
                access_key_id: Zeroizing::new(field("AccessKeyId")?),
                secret_access_key: Zeroizing::new(field("SecretAccessKey")?),
                session_token: Some(Zeroizing::new(field("SessionToken")?)),
            },
            expires_at,
        })
    }

    /// POSTs a signed JSON body to the runtime and maps an AWS error answer.
    #[allow(clippy::too_many_arguments)]
    async fn post(
        &self,
        http: &reqwest::Client,
        call: &Call<'_>,
        keys: &AwsKeys,
        region: &str,
        url: &str,
        body: Vec<u8>,
        accept: &str,
        deadline: tokio::time::Instant,
    ) -> Result<reqwest::Response, ProviderError> {
        let signer = Signer {
            keys,
            region,
            service: "bedrock",
            time: self.clock.now().into(),
        };
        let signed = signer.headers("POST", url, &[("content-type", "application/json")], &body)?;
        let mut req = http
            .post(url)
            .header("content-type", "application/json")
            .header("accept", accept)
            .body(body);
        for (k, v) in signed {
            req = req.header(k, v);
        }
        // Custom headers go out unsigned: SigV4 only requires host and the
        // x-amz-* headers to be signed.
        for (k, v) in call.target.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = chat_shape::send(req, deadline).await?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let error_type = resp
                .headers()
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = chat_shape::read_body(resp, deadline).await.unwrap_or_default();
            return Err(aws_error(status, error_type.as_deref(), &body));
        }
        Ok(resp)
    }
}

/// The text of the first `<tag>…</tag>` in an STS answer, with XML's
/// predefined entities decoded. STS answers are small, flat and
/// namespace-free in their element names, so this is all the XML it takes.
fn xml_tag(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&close)?;
    let raw = xml[start..start + len].trim();
    Some(
        raw.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// An AWS JSON error (`{"message": …}`, type in `x-amzn-errortype`) →
/// [`ProviderError::Upstream`] with AWS's own message.
fn aws_error(status: u16, error_type: Option<&str>, body: &[u8]) -> ProviderError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = v
        .get("message")
        .or_else(|| v.get("Message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| {
            // `ValidationException:http://internal.amazon.com/...`: the name
            // is what a user can act on.
            error_type.map(|t| t.split(':').next().unwrap_or(t).to_owned())
        })
        .unwrap_or_else(|| chat_shape::excerpt(body));
    ProviderError::Upstream {
        status,
        message,
        retry_after: None,
    }
}

fn url_safe_region(region: &str) -> Result<(), ProviderError> {
    if region.is_empty() || !region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(ProviderError::Config(format!("aws_region {region:?} is not valid")));
    }
    Ok(())
}

#[async_trait::async_trait]
impl Adapter for Bedrock {
    async fn send(&self, http: &reqwest::Client, call: Call<'_>) -> Result<UpstreamResponse, ProviderError> {
        let deadline = chat_shape::deadline(call.timeout);
        let region = config_str(call.target.config, "aws_region").unwrap_or(DEFAULT_REGION);
        url_safe_region(region)?;
        let host = match call.target.base_url {
            Some(base) => base.trim_end_matches('/').to_owned(),
            None => format!("https://bedrock-runtime.{region}.amazonaws.com"),
        };
        let model_url = format!("{host}/model/{}", chat_shape::path_segment("model", call.target.model)?);
        // Translate first: a request Bedrock cannot take should not cost an
        // AssumeRole.
        let converse = match call.endpoint {
            Endpoint::Embeddings => None,
            _ => Some(converse_body(call.endpoint, call.body)?),
        };
        let keys = self.credentials(http, &call, region, deadline).await?;
        let Some(converse) = converse else {
            return self.embed(http, &call, &keys, region, &model_url, deadline).await;
        };
        let body = converse.to_string().into_bytes();
        if call.stream {
            let url = format!("{model_url}/converse-stream");
            let resp = self
                .post(
                    http,
                    &call,
                    &keys,
                    region,
                    &url,
                    body,
                    "application/vnd.amazon.eventstream",
                    deadline,
                )
                .await?;
            let t = EventStreamTranslator::new(call.endpoint, call.target.model, call.client_wants_usage);
            let body = resp.bytes_stream().map(|r| r.map_err(ProviderError::from_reqwest));
            return Ok(UpstreamResponse::Stream(sse::translate(body.boxed(), t)));
        }
        let url = format!("{model_url}/converse");
        let resp = self
            .post(http, &call, &keys, region, &url, body, "application/json", deadline)
            .await?;
        let answer = chat_shape::parse_json(&chat_shape::read_body(resp, deadline).await?)?;
        let (out, usage) = converse_response(call.endpoint, call.target.model, &answer)?;
        Ok(UpstreamResponse::Whole {
            status: 200,
            body: Bytes::from(out.to_string()),
            usage,
        })
    }
}

impl Bedrock {
    /// Embeddings through InvokeModel, in the model family's own body:
    /// Titan takes one text per call, Cohere a batch.
    async fn embed(
        &self,
        http: &reqwest::Client,
        call: &Call<'_>,
        keys: &AwsKeys,
        region: &str,
        model_url: &str,
        deadline: tokio::time::Instant,
    ) -> Result<UpstreamResponse, ProviderError> {
        if call.stream {
            return Err(bad_request("embeddings cannot be streamed"));
        }
        let inputs = chat_shape::embedding_inputs(call.body)?;
        let url = format!("{model_url}/invoke");
        let model = call.target.model;
        let dimensions = call.body.get("dimensions").and_then(Value::as_u64);
        let (vectors, tokens) = if model.contains("amazon.titan-embed") {
            let calls = inputs.iter().map(|text| {
                let mut body = json!({ "inputText": text });
                if let Some(d) = dimensions {
                    body["dimensions"] = json!(d);
                }
                let url = &url;
                async move {
                    let resp = self
                        .post(
                            http,
                            call,
                            keys,
                            region,
                            url,
                            body.to_string().into_bytes(),
                            "application/json",
                            deadline,
                        )
                        .await?;
                    let v = chat_shape::parse_json(&chat_shape::read_body(resp, deadline).await?)?;
                    let vector = chat_shape::vector(v.get("embedding"))?;
                    Ok::<_, ProviderError>((vector, v.get("inputTextTokenCount").and_then(Value::as_u64)))
                }
            });
            let answers = futures::future::try_join_all(calls).await?;
            let counted: Option<u64> = answers.iter().map(|(_, n)| *n).sum();
            let tokens = counted.unwrap_or_else(|| chat_shape::estimate_tokens(&inputs));
            (answers.into_iter().map(|(v, _)| v).collect::<Vec<_>>(), tokens)
        } else if model.contains("cohere.embed") {
            let body = json!({ "texts": inputs, "input_type": "search_document" });
            let resp = self
                .post(
                    http,
                    call,
                    keys,
                    region,
                    &url,
                    body.to_string().into_bytes(),
                    "application/json",
                    deadline,
                )
                .await?;
            let v = chat_shape::parse_json(&chat_shape::read_body(resp, deadline).await?)?;
            let vectors = v
                .get("embeddings")
                .and_then(Value::as_array)
                .ok_or_else(|| ProviderError::InvalidResponse("answer has no embeddings".into()))?
                .iter()
                .map(|e| chat_shape::vector(Some(e)))
                .collect::<Result<Vec<_>, _>>()?;
            if vectors.len() != inputs.len() {
                return Err(ProviderError::InvalidResponse(format!(
                    "{} embeddings for {} inputs",
                    vectors.len(),
                    inputs.len()
                )));
            }
            // Cohere on Bedrock reports no token counts.
            (vectors, chat_shape::estimate_tokens(&inputs))
        } else {
            return Err(ProviderError::Unsupported(format!(
                "embeddings on Bedrock need an amazon.titan-embed or cohere.embed model, not {model}"
            )));
        };
        let out = chat_shape::embeddings_body(call.body, model, vectors, tokens);
        Ok(UpstreamResponse::Whole {
            status: 200,
            body: Bytes::from(out.to_string()),
            usage: Some(Usage {
                prompt_tokens: tokens,
                completion_tokens: 0,
                cached_tokens: 0,
            }),
        })
    }
}

/// Translates a chat or completions request into a Converse body.
fn converse_body(endpoint: Endpoint, body: &Value) -> Result<Value, ProviderError> {
    let mut out = Map::new();
    match endpoint {
        Endpoint::ChatCompletions => {
            let messages = body
                .get("messages")
                .and_then(Value::as_array)
                .ok_or_else(|| bad_request("messages must be an array"))?;
            let (system, turns, used_tools) = translate_messages(messages)?;
            if !system.is_empty() {
                out.insert("system".into(), Value::Array(system));
            }
            out.insert("messages".into(), Value::Array(turns));
            if let Some(tc) = tool_config(body, used_tools)? {
                out.insert("toolConfig".into(), tc);
            }
        }
        Endpoint::Completions => {
            let prompt = chat_shape::completion_prompt(body)?;
            out.insert(
                "messages".into(),
                json!([{ "role": "user", "content": [{ "text": prompt }] }]),
            );
        }
        Endpoint::Embeddings => return Err(bad_request("embeddings do not use Converse")),
        Endpoint::Responses | Endpoint::Messages => return Err(crate::not_native(endpoint)),
    }
    let mut inference = Map::new();
    if let Some(n) = chat_shape::max_tokens(body) {
        inference.insert("maxTokens".into(), json!(n));
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP")] {
        if let Some(v) = body.get(from).filter(|v| v.is_number()) {
            inference.insert(to.into(), v.clone());
        }
    }
    if let Some(stop) = chat_shape::stop_sequences(body) {
        inference.insert("stopSequences".into(), json!(stop));
    }
    if !inference.is_empty() {
        out.insert("inferenceConfig".into(), Value::Object(inference));
    }
    Ok(Value::Object(out))
}

/// OpenAI messages → Converse `system` blocks and `messages` (user and
/// assistant turns strictly alternating: consecutive same-role messages
/// merge; tool results are `toolResult` blocks of a user turn). Also says
/// whether the history holds tool blocks (Bedrock then requires
/// `toolConfig`).
fn translate_messages(messages: &[Value]) -> Result<(Vec<Value>, Vec<Value>, bool), ProviderError> {
    let mut system = Vec::new();
    let mut turns: Vec<Value> = Vec::new();
    let mut used_tools = false;
    for m in messages {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| bad_request("every message needs a role"))?;
        match role {
            "system" | "developer" => {
                let text = chat_shape::text_of(m.get("content"));
                if !text.is_empty() {
                    system.push(json!({ "text": text }));
                }
            }
            "user" => {
                let mut blocks = Vec::new();
                for part in chat_shape::parts_of(m.get("content"))? {
                    match part {
                        Part::Text("") => {}
                        Part::Text(t) => blocks.push(json!({ "text": t })),
                        Part::InlineImage { mime, data } => {
                            let format = match mime.strip_prefix("image/") {
                                Some("jpg") | Some("jpeg") => "jpeg",
                                Some(f @ ("png" | "gif" | "webp")) => f,
                                _ => return Err(bad_request(format!("Bedrock cannot take images of type {mime}"))),
                            };
                            blocks.push(json!({ "image": { "format": format, "source": { "bytes": data } } }));
                        }
                        Part::ImageUrl(_) => {
                            return Err(bad_request("Bedrock needs images inline, as data: URLs"));
                        }
                    }
                }
                chat_shape::push_turn(&mut turns, "user", "content", blocks);
            }
            "assistant" => {
                let mut blocks = Vec::new();
                let text = chat_shape::text_of(m.get("content"));
                if !text.is_empty() {
                    blocks.push(json!({ "text": text }));
                }
                for call in chat_shape::history_tool_calls(m, true)? {
                    let input = if call.arguments.trim().is_empty() {
                        json!({})
                    } else {
                        serde_json::from_str::<Value>(call.arguments)
                            .map_err(|_| bad_request("tool call arguments must be JSON"))?
                    };
                    let (id, name) = (call.id, call.name);
                    blocks.push(json!({ "toolUse": { "toolUseId": id, "name": name, "input": input } }));
                    used_tools = true;
                }
                chat_shape::push_turn(&mut turns, "assistant", "content", blocks);
            }
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad_request("tool message without tool_call_id"))?;
                let text = chat_shape::text_of(m.get("content"));
                chat_shape::push_turn(
                    &mut turns,
                    "user",
                    "content",
                    vec![json!({ "toolResult": { "toolUseId": id, "content": [{ "text": text }] } })],
                );
                used_tools = true;
            }
            other => return Err(bad_request(format!("unknown message role {other}"))),
        }
    }
    Ok((system, turns, used_tools))
}

/// OpenAI `tools`/`tool_choice` → `toolConfig`. Converse has no "none":
/// the tools are then left out, unless the history holds tool blocks (which
/// Bedrock refuses without a `toolConfig`), in which case the model chooses.
fn tool_config(body: &Value, used_tools: bool) -> Result<Option<Value>, ProviderError> {
    let tools: Vec<Value> = body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| t.get("type").and_then(Value::as_str).unwrap_or("function") == "function")
        .filter_map(|t| t.get("function"))
        .map(|f| {
            let mut spec = Map::new();
            spec.insert("name".into(), f.get("name").cloned().unwrap_or(Value::Null));
            if let Some(d) = f.get("description") {
                spec.insert("description".into(), d.clone());
            }
            let schema = f
                .get("parameters")
                .cloned()
                .unwrap_or_else(|| json!({ "type": "object", "properties": {} }));
            spec.insert("inputSchema".into(), json!({ "json": schema }));
            json!({ "toolSpec": spec })
        })
        .collect();
    if tools.is_empty() {
        return Ok(None);
    }
    let choice = match body.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(json!({ "auto": {} })),
            "required" => Some(json!({ "any": {} })),
            "none" if !used_tools => return Ok(None),
            "none" => None,
            other => return Err(bad_request(format!("unknown tool_choice {other}"))),
        },
        Some(v) => {
            let name = v
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad_request("tool_choice must name a function"))?;
            Some(json!({ "tool": { "name": name } }))
        }
    };
    let mut config = json!({ "tools": tools });
    if let Some(c) = choice {
        config["toolChoice"] = c;
    }
    Ok(Some(config))
}

/// Converse `usage` → usage. Bedrock's `inputTokens` leaves out cache reads
/// and writes; OpenAI's `prompt_tokens` includes them, with cache reads as
/// `cached_tokens`.
fn usage_from(u: &Value) -> Option<Usage> {
    u.as_object()?;
    let get = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cached = get("cacheReadInputTokens");
    Some(Usage {
        prompt_tokens: get("inputTokens")
            .saturating_add(cached)
            .saturating_add(get("cacheWriteInputTokens")),
        completion_tokens: get("outputTokens"),
        cached_tokens: cached,
    })
}

/// Converse `stopReason` → OpenAI `finish_reason`.
fn map_stop(reason: &str, has_calls: bool) -> &'static str {
    match reason {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "content_filtered" | "guardrail_intervened" => "content_filter",
        _ if has_calls => "tool_calls",
        _ => "stop",
    }
}

/// A whole Converse answer → OpenAI body and usage.
fn converse_response(endpoint: Endpoint, model: &str, v: &Value) -> Result<(Value, Option<Usage>), ProviderError> {
    let content = v
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .ok_or_else(|| ProviderError::InvalidResponse("answer has no output.message".into()))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in content {
        if let Some(t) = block.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if let Some(tu) = block.get("toolUse") {
            tool_calls.push(ToolCall {
                id: tu
                    .get("toolUseId")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| chat_shape::new_id("call_")),
                name: tu.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
                arguments: tu.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into()),
            });
        }
    }
    let reason = v.get("stopReason").and_then(Value::as_str).unwrap_or("end_turn");
    let usage = v.get("usage").and_then(usage_from);
    let choice = Choice {
        index: 0,
        finish_reason: Some(map_stop(reason, !tool_calls.is_empty())),
        text,
        tool_calls,
    };
    Ok((
        chat_shape::whole_body(endpoint, model, vec![choice], usage.as_ref()),
        usage,
    ))
}

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
struct EventStreamTranslator {
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
    fn new(endpoint: Endpoint, model: &str, wants_usage: bool) -> Self {
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

    #[test]
    fn messages_translate_to_converse() {
        let body = json!({
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "see"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpg;base64,/9j/"}}]},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                {"role": "tool", "tool_call_id": "t1", "content": "42"},
                {"role": "user", "content": "and?"}
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": "none",
            "max_completion_tokens": 20, "temperature": 0, "stop": ["x"]
        });
        let c = converse_body(Endpoint::ChatCompletions, &body).unwrap();
        assert_eq!(c["system"], json!([{"text": "be brief"}]));
        let turns = c["messages"].as_array().unwrap();
        assert_eq!(turns.len(), 3);
        assert_eq!(turns[0]["content"][1]["image"]["format"], "jpeg");
        assert_eq!(turns[1]["content"][0]["toolUse"]["input"], json!({"a": 1}));
        assert_eq!(turns[2]["content"][0]["toolResult"]["toolUseId"], "t1");
        assert_eq!(turns[2]["content"][1]["text"], "and?");
        // "none" with tool history keeps the tools, without a choice.
        assert!(c["toolConfig"].get("toolChoice").is_none());
        assert_eq!(
            c["inferenceConfig"],
            json!({"maxTokens": 20, "temperature": 0, "stopSequences": ["x"]})
        );
    }

    #[test]
    fn tool_choices_and_bad_requests() {
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        for (choice, expected) in [
            (json!("auto"), json!({"auto": {}})),
            (json!("required"), json!({"any": {}})),
            (
                json!({"type": "function", "function": {"name": "f"}}),
                json!({"tool": {"name": "f"}}),
            ),
        ] {
            let c = converse_body(
                Endpoint::ChatCompletions,
                &json!({"messages": [], "tools": tools, "tool_choice": choice}),
            )
            .unwrap();
            assert_eq!(c["toolConfig"]["toolChoice"], expected);
        }
        let none = converse_body(
            Endpoint::ChatCompletions,
            &json!({"messages": [], "tools": tools, "tool_choice": "none"}),
        )
        .unwrap();
        assert!(none.get("toolConfig").is_none());
        let url_image = json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]});
        assert!(converse_body(Endpoint::ChatCompletions, &url_image).is_err());
        let tiff = json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AA"}}]}]});
        assert!(converse_body(Endpoint::ChatCompletions, &tiff).is_err());
        assert!(converse_body(Endpoint::ChatCompletions, &json!({"messages": [{"role": "x"}]})).is_err());
        assert!(converse_body(
            Endpoint::ChatCompletions,
            &json!({"messages": [], "tools": tools, "tool_choice": "maybe"})
        )
        .is_err());
    }

    #[test]
    fn stop_reasons_map() {
        assert_eq!(map_stop("end_turn", false), "stop");
        assert_eq!(map_stop("stop_sequence", false), "stop");
        assert_eq!(map_stop("max_tokens", false), "length");
        assert_eq!(map_stop("tool_use", true), "tool_calls");
        assert_eq!(map_stop("guardrail_intervened", false), "content_filter");
        assert_eq!(map_stop("content_filtered", false), "content_filter");
    }

    #[test]
    fn xml_and_errors() {
        assert_eq!(xml_tag("<a><B> x&amp;y </B></a>", "B").as_deref(), Some("x&y"));
        assert_eq!(xml_tag("<a/>", "B"), None);
        let e = aws_error(400, Some("ValidationException:http://x"), b"{}");
        assert!(
            matches!(e, ProviderError::Upstream { status: 400, ref message, .. } if message == "ValidationException")
        );
        let e = aws_error(500, None, b"oops");
        assert!(matches!(e, ProviderError::Upstream { status: 500, ref message, .. } if message == "oops"));
        assert!(url_safe_region("us-east-1").is_ok());
        assert!(url_safe_region("evil.com/").is_err());
    }
}
