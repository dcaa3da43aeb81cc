//! The Vertex AI adapter: Gemini models served from
//! `{region}-aiplatform.googleapis.com`, authenticated with an OAuth access
//! token obtained from the integration's service account.
//!
//! The access token comes from the OAuth JWT-bearer flow: a JWT (RS256,
//! signed with the service account's private key; iss = client_email, scope
//! cloud-platform, aud = token_uri, valid one hour) is POSTed to the
//! account's `token_uri`. Tokens are cached per service account until
//! [`REFRESH_MARGIN`] before they expire; the refresh happens under a
//! per-account lock, so many concurrent requests cause one exchange. Time
//! comes from the injected clock so tests move past the expiry by hand.
//! Bodies are the Gemini format shared with the Gemini API adapter
//! (`gemini_format`); embeddings use the `:predict` endpoint.

use crate::credential_cache::{CredentialCache, Expiring};
use crate::openai_shape::{self, bad_request};
use crate::transport::{self, bearer, config_str, open_secret, path_segment};
use crate::{gemini_format, Adapter, Call, Endpoint, ProviderError, UpstreamResponse};
use bytes::Bytes;
use chrono::Duration;
use reqwest::header::AUTHORIZATION;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use tollgate_core::clock::{SharedClock, SystemClock};
use tollgate_core::secrets::Secret;
use tollgate_core::token_usage::Usage;
use zeroize::Zeroizing;

/// Google's token endpoint, for service accounts whose JSON names none.
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The OAuth scope Vertex AI needs.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// A cached token is replaced this long before it expires, so a request
/// never leaves with a token that dies on the way.
pub const REFRESH_MARGIN: Duration = Duration::minutes(5);
/// Region used when the integration sets none.
pub const DEFAULT_REGION: &str = "us-central1";
/// How long the signed assertion is valid (Google's maximum).
const ASSERTION_LIFETIME_SECS: i64 = 3600;

/// An access token and when it stops being valid.
type CachedToken = Expiring<Secret<String>>;

/// The Vertex AI adapter, holding the access-token cache.
pub struct Vertex {
    clock: SharedClock,
    tokens: CredentialCache<Secret<String>>,
}

impl Default for Vertex {
    fn default() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }
}

impl std::fmt::Debug for Vertex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vertex")
            .field("cached_accounts", &self.tokens.len())
            .finish()
    }
}

/// The fields of a service-account key file that the flow needs.
#[derive(Deserialize)]
struct ServiceAccountFile {
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
    #[serde(default)]
    project_id: Option<String>,
}

/// A service account, its private key held as a secret (zeroed when
/// dropped, redacted from `Debug`).
#[derive(Debug)]
struct ServiceAccount {
    client_email: String,
    private_key: Secret<String>,
    private_key_id: Option<String>,
    token_uri: String,
    project_id: Option<String>,
}

impl ServiceAccount {
    fn parse(json: &str) -> Result<Self, ProviderError> {
        // serde's message may quote the input, which holds the private key:
        // report only where parsing failed.
        let f: ServiceAccountFile = serde_json::from_str(json).map_err(|e| {
            ProviderError::Config(format!(
                "vertex_service_account_json is not a service-account key file (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        if f.client_email.trim().is_empty() {
            return Err(ProviderError::Config(
                "vertex_service_account_json has no client_email".into(),
            ));
        }
        Ok(Self {
            client_email: f.client_email,
            private_key: Secret::from(f.private_key),
            private_key_id: f.private_key_id,
            token_uri: f.token_uri.unwrap_or_else(|| DEFAULT_TOKEN_URI.to_owned()),
            project_id: f.project_id,
        })
    }

    fn cache_key(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.client_email,
            self.token_uri,
            self.private_key_id.as_deref().unwrap_or("")
        )
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<i64>,
}

impl Vertex {
    /// A Vertex adapter reading time from `clock`.
    pub fn with_clock(clock: SharedClock) -> Self {
        Self {
            tokens: CredentialCache::new(clock.clone(), REFRESH_MARGIN),
            clock,
        }
    }

    /// A valid access token for `sa`, from the cache or a fresh exchange.
    async fn access_token(
        &self,
        http: &reqwest::Client,
        sa: &ServiceAccount,
        deadline: tokio::time::Instant,
    ) -> Result<Secret<String>, ProviderError> {
        self.tokens
            .get(sa.cache_key(), || self.exchange(http, sa, deadline))
            .await
    }

    /// The JWT-bearer exchange at the account's token endpoint.
    async fn exchange(
        &self,
        http: &reqwest::Client,
        sa: &ServiceAccount,
        deadline: tokio::time::Instant,
    ) -> Result<CachedToken, ProviderError> {
        let now = self.clock.now();
        let iat = now.timestamp();
        let claims = Claims {
            iss: &sa.client_email,
            scope: SCOPE,
            aud: &sa.token_uri,
            iat,
            exp: iat + ASSERTION_LIFETIME_SECS,
        };
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = sa.private_key_id.clone();
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(sa.private_key.expose().as_bytes()).map_err(|_| {
            ProviderError::Config("the service account's private_key is not a PEM RSA private key".into())
        })?;
        let assertion = Zeroizing::new(
            jsonwebtoken::encode(&header, &claims, &key)
                .map_err(|e| ProviderError::Config(format!("cannot sign the token request: {e}")))?,
        );
        let req = transport::post(http, &sa.token_uri).form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion.as_str()),
        ]);
        let (status, body) = transport::exchange(req, deadline).await?;
        if !(200..300).contains(&status) {
            // OAuth errors: {"error": "invalid_grant", "error_description": "..."}.
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let message = v
                .get("error_description")
                .or_else(|| v.get("error"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| transport::excerpt(&body))
                .unwrap_or_else(|| "(empty body)".to_owned());
            return Err(ProviderError::Auth(format!(
                "token endpoint returned {status}: {message}"
            )));
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|_| ProviderError::Auth("token endpoint answer has no access_token".into()))?;
        Ok(CachedToken {
            value: Secret::from(answer.access_token),
            expires_at: now + Duration::seconds(answer.expires_in.unwrap_or(3600)),
        })
    }
}

/// A project id or region goes into the URL: refuse anything that could
/// change its shape.
fn url_safe(name: &str, value: &str) -> Result<(), ProviderError> {
    if value.is_empty()
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ProviderError::Config(format!("{name} {value:?} is not valid")));
    }
    Ok(())
}

#[async_trait::async_trait]
impl Adapter for Vertex {
    async fn send(&self, http: &reqwest::Client, call: Call<'_>) -> Result<UpstreamResponse, ProviderError> {
        let deadline = transport::deadline(call.timeout);
        let json = open_secret(call.target.secrets, "vertex_service_account_json")?
            .ok_or_else(|| ProviderError::Config("vertex_service_account_json is not set".into()))?;
        let sa = ServiceAccount::parse(json.expose())?;
        drop(json);
        let config = call.target.config;
        let region = config_str(config, "vertex_region").unwrap_or(DEFAULT_REGION);
        let project = config_str(config, "vertex_project_id")
            .or(sa.project_id.as_deref())
            .ok_or_else(|| ProviderError::Config("vertex_project_id is not set".into()))?;
        url_safe("vertex_region", region)?;
        url_safe("vertex_project_id", project)?;
        let host = match call.target.base_url {
            Some(base) => base.trim_end_matches('/').to_owned(),
            None if region == "global" => "https://aiplatform.googleapis.com".to_owned(),
            None => format!("https://{region}-aiplatform.googleapis.com"),
        };
        let model = path_segment("model", call.target.model)?;
        let model_url = format!("{host}/v1/projects/{project}/locations/{region}/publishers/google/models/{model}");

        let token = self.access_token(http, &sa, deadline).await?;
        let auth = (AUTHORIZATION, bearer(&token, "access token")?);
        match call.endpoint {
            Endpoint::Embeddings => predict(http, &call, &model_url, auth, deadline).await,
            Endpoint::ChatCompletions | Endpoint::Completions => {
                gemini_format::generate(http, &call, &model_url, auth).await
            }
            Endpoint::Responses | Endpoint::Messages => Err(crate::not_native(call.endpoint)),
        }
    }
}

/// Text embeddings through `:predict`.
async fn predict(
    http: &reqwest::Client,
    call: &Call<'_>,
    model_url: &str,
    auth: (reqwest::header::HeaderName, reqwest::header::HeaderValue),
    deadline: tokio::time::Instant,
) -> Result<UpstreamResponse, ProviderError> {
    if call.stream {
        return Err(bad_request("embeddings cannot be streamed"));
    }
    let inputs = openai_shape::embedding_inputs(call.body)?;
    let instances: Vec<Value> = inputs.iter().map(|t| json!({ "content": t })).collect();
    let mut body = json!({ "instances": instances });
    if let Some(d) = call.body.get("dimensions").and_then(Value::as_u64) {
        body["parameters"] = json!({ "outputDimensionality": d });
    }
    let url = format!("{model_url}:predict");
    let resp = gemini_format::post(http, &url, auth, call, &body, deadline).await?;
    let answer = transport::parse_json(&transport::read_body(resp, deadline).await?)?;
    let predictions = answer
        .get("predictions")
        .and_then(Value::as_array)
        .ok_or_else(|| ProviderError::InvalidResponse("answer has no predictions".into()))?;
    if predictions.len() != inputs.len() {
        return Err(ProviderError::InvalidResponse(format!(
            "{} predictions for {} inputs",
            predictions.len(),
            inputs.len()
        )));
    }
    let mut vectors = Vec::with_capacity(predictions.len());
    let mut reported: Option<u64> = None;
    for p in predictions {
        vectors.push(openai_shape::vector(p.pointer("/embeddings/values"))?);
        // token_count arrives as a JSON number that may be written as 5.0.
        if let Some(n) = p.pointer("/embeddings/statistics/token_count") {
            let n = n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0).round() as u64));
            reported = Some(reported.unwrap_or(0) + n.unwrap_or(0));
        }
    }
    let tokens = reported.unwrap_or_else(|| openai_shape::estimate_tokens(&inputs));
    let out = openai_shape::embeddings_body(call.body, call.target.model, vectors, tokens);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_service_account_json_is_a_config_error_without_the_key() {
        let e = ServiceAccount::parse(r#"{"private_key": "SECRET-KEY-MATERIAL"}"#)
            .err()
            .unwrap();
        assert!(matches!(e, ProviderError::Config(ref m) if !m.contains("SECRET")));
        let e = ServiceAccount::parse("not json").err().unwrap();
        assert!(matches!(e, ProviderError::Config(_)));
        let e = ServiceAccount::parse(r#"{"client_email": " ", "private_key": "k"}"#)
            .err()
            .unwrap();
        assert!(matches!(e, ProviderError::Config(_)));
        let sa = ServiceAccount::parse(r#"{"client_email": "a@b", "private_key": "k"}"#).unwrap();
        assert_eq!(sa.token_uri, DEFAULT_TOKEN_URI);
        let sa = ServiceAccount::parse(r#"{"client_email": "a@b", "private_key": "SECRET-KEY-MATERIAL"}"#).unwrap();
        assert!(
            !format!("{sa:?}").contains("SECRET"),
            "the private key is redacted from Debug"
        );
    }

    #[test]
    fn url_parts_are_checked() {
        assert!(url_safe("r", "us-central1").is_ok());
        assert!(url_safe("r", "us/central").is_err());
        assert!(url_safe("r", "").is_err());
    }
}
