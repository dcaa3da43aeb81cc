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

//!
//! Parts: `sts` (AssumeRole), `sign` (SigV4), `converse` (request and
//! whole-answer translation), `eventstream` (ConverseStream decoding and
//! chunk translation); this module holds the adapter, its credentials and
//! the runtime calls.

mod converse;
mod eventstream;
mod sign;
mod sts;

use crate::credential_cache::{CredentialCache, Expiring};
use crate::openai_shape::{self, bad_request};
use crate::transport::{self, config_str, open_secret, path_segment};
use crate::{sse, Adapter, Call, Endpoint, ProviderError, UpstreamResponse};
use bytes::Bytes;
use chrono::Duration;
use converse::{converse_body, converse_response};
use eventstream::EventStreamTranslator;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use serde_json::{json, Value};
use sign::Signer;
use std::sync::Arc;
use tollgate_core::clock::{SharedClock, SystemClock};
use tollgate_core::secrets::Secret;
use tollgate_core::token_usage::Usage;

/// Region used when the integration sets none.
pub const DEFAULT_REGION: &str = "us-east-1";
/// Cached STS credentials are replaced this long before they expire.
pub const STS_REFRESH_MARGIN: Duration = Duration::minutes(5);
/// Session name for AssumeRole when the integration sets none
/// (`aws_role_session_name`); it shows in the account's CloudTrail.
const DEFAULT_SESSION_NAME: &str = "tollgate";

/// A set of AWS credentials: secrets, zeroed when dropped and redacted
/// from `Debug`.
#[derive(Clone, Debug)]
struct AwsKeys {
    access_key_id: Secret<String>,
    secret_access_key: Secret<String>,
    session_token: Option<Secret<String>>,
}

impl AwsKeys {
    fn from_secrets(secrets: &dyn tollgate_core::secrets::SecretSource) -> Result<Self, ProviderError> {
        let missing = |f: &str| ProviderError::Config(format!("{f} is not set"));
        Ok(Self {
            access_key_id: open_secret(secrets, "aws_access_key_id")?.ok_or_else(|| missing("aws_access_key_id"))?,
            secret_access_key: open_secret(secrets, "aws_secret_access_key")?
                .ok_or_else(|| missing("aws_secret_access_key"))?,
            session_token: open_secret(secrets, "aws_session_token")?,
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
                    keys.access_key_id.expose(),
                    external_id.unwrap_or("")
                );
                let session = config_str(config, "aws_role_session_name").unwrap_or(DEFAULT_SESSION_NAME);
                self.sts
                    .get(cache_key, || {
                        sts::assume_role(
                            http,
                            &self.clock,
                            &keys,
                            region,
                            &endpoint,
                            role,
                            external_id,
                            session,
                            deadline,
                        )
                    })
                    .await
            }
            other => Err(ProviderError::Config(format!("unknown aws_auth_type {other}"))),
        }
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
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, transport::header_value(accept, "accept")?);
        for (k, v) in signed {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| ProviderError::Config(format!("cannot sign the request: bad header {k}")))?;
            headers.insert(name, transport::header_value(&v, k)?);
        }
        // Custom headers go out unsigned: SigV4 only requires host and the
        // x-amz-* headers to be signed.
        transport::add_custom_headers(&mut headers, &call.target)?;
        transport::send(
            transport::post(http, url).headers(headers).body(body),
            deadline,
            aws_message,
        )
        .await
    }
}

/// The message of an AWS JSON error (`{"message": …}`), else the error
/// type from `x-amzn-errortype` (`ValidationException:http://internal…`:
/// the name is what a user can act on).
fn aws_message(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    v.get("message")
        .or_else(|| v.get("Message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| {
            let t = headers.get("x-amzn-errortype")?.to_str().ok()?;
            Some(t.split(':').next().unwrap_or(t).to_owned())
        })
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
        let deadline = transport::deadline(call.timeout);
        let region = config_str(call.target.config, "aws_region").unwrap_or(DEFAULT_REGION);
        url_safe_region(region)?;
        let host = match call.target.base_url {
            Some(base) => base.trim_end_matches('/').to_owned(),
            None => format!("https://bedrock-runtime.{region}.amazonaws.com"),
        };
        let model_url = format!("{host}/model/{}", path_segment("model", call.target.model)?);
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
            return Ok(UpstreamResponse::Stream(sse::translate(
                transport::body_stream(resp),
                t,
            )));
        }
        let url = format!("{model_url}/converse");
        let resp = self
            .post(http, &call, &keys, region, &url, body, "application/json", deadline)
            .await?;
        let answer = transport::parse_json(&transport::read_body(resp, deadline).await?)?;
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
        let inputs = openai_shape::embedding_inputs(call.body)?;
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
                    let v = transport::parse_json(&transport::read_body(resp, deadline).await?)?;
                    let vector = openai_shape::vector(v.get("embedding"))?;
                    Ok::<_, ProviderError>((vector, v.get("inputTextTokenCount").and_then(Value::as_u64)))
                }
            });
            let answers = futures::future::try_join_all(calls).await?;
            let counted: Option<u64> = answers.iter().map(|(_, n)| *n).sum();
            let tokens = counted.unwrap_or_else(|| openai_shape::estimate_tokens(&inputs));
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
            let v = transport::parse_json(&transport::read_body(resp, deadline).await?)?;
            let vectors = v
                .get("embeddings")
                .and_then(Value::as_array)
                .ok_or_else(|| ProviderError::InvalidResponse("answer has no embeddings".into()))?
                .iter()
                .map(|e| openai_shape::vector(Some(e)))
                .collect::<Result<Vec<_>, _>>()?;
            if vectors.len() != inputs.len() {
                return Err(ProviderError::InvalidResponse(format!(
                    "{} embeddings for {} inputs",
                    vectors.len(),
                    inputs.len()
                )));
            }
            // Cohere on Bedrock reports no token counts.
            (vectors, openai_shape::estimate_tokens(&inputs))
        } else {
            return Err(ProviderError::Unsupported(format!(
                "embeddings on Bedrock need an amazon.titan-embed or cohere.embed model, not {model}"
            )));
        };
        let out = openai_shape::embeddings_body(call.body, model, vectors, tokens);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_errors_and_regions() {
        let aws_error = |status, error_type: Option<&str>, body: &[u8]| {
            let mut headers = HeaderMap::new();
            if let Some(t) = error_type {
                headers.insert("x-amzn-errortype", HeaderValue::from_str(t).unwrap());
            }
            transport::upstream_error(status, &headers, body, aws_message)
        };
        let e = aws_error(400, Some("ValidationException:http://x"), b"{}");
        assert!(
            matches!(e, ProviderError::Upstream { status: 400, ref message, .. } if message == "ValidationException")
        );
        let e = aws_error(500, None, b"oops");
        assert!(matches!(e, ProviderError::Upstream { status: 500, ref message, .. } if message == "oops"));
        let e = aws_error(400, Some("X"), br#"{"message":"bad model"}"#);
        assert!(matches!(e, ProviderError::Upstream { ref message, .. } if message == "bad model"));
        assert!(url_safe_region("us-east-1").is_ok());
        assert!(url_safe_region("evil.com/").is_err());
    }

    #[test]
    fn keys_are_redacted_from_debug() {
        let keys = AwsKeys {
            access_key_id: Secret::from("AKIDEXAMPLE"),
            secret_access_key: Secret::from("wJalrXUtnFEMI"),
            session_token: Some(Secret::from("session-token-value")),
        };
        let shown = format!("{keys:?}");
        for secret in ["AKIDEXAMPLE", "wJalrXUtnFEMI", "session-token-value"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}
