//! The Google Gemini API adapter (`generativelanguage.googleapis.com`):
//! `models/{model}:generateContent`, `:streamGenerateContent?alt=sse` and
//! `:batchEmbedContents`, authenticated with the integration's key in the
//! `x-goog-api-key` header. The key never goes in the URL, where it would
//! end up in access logs and error messages. The body translation is shared
//! with Vertex AI in `gemini_format`.

use crate::openai_shape::{self, bad_request};
use crate::transport::{self, header_value, open_secret, path_segment};
use crate::{gemini_format, Adapter, Call, Endpoint, ProviderError, UpstreamResponse};
use bytes::Bytes;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{json, Value};

/// The catalogue's default base URL, used when the target has none.
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com/v1beta";

/// The Gemini API adapter. Stateless: the key is opened per request.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gemini;

#[async_trait::async_trait]
impl Adapter for Gemini {
    async fn send(&self, http: &reqwest::Client, call: Call<'_>) -> Result<UpstreamResponse, ProviderError> {
        let key = open_secret(call.target.secrets, "key")?
            .ok_or_else(|| ProviderError::Config("the Gemini API key (key) is not set".into()))?;
        let base = call.target.base_url.unwrap_or(DEFAULT_BASE_URL).trim_end_matches('/');
        // Clients sometimes pass Google's resource name (`models/gemini-…`).
        let model = call.target.model.strip_prefix("models/").unwrap_or(call.target.model);
        let model_url = format!("{base}/models/{}", path_segment("model", model)?);
        let auth = (
            HeaderName::from_static("x-goog-api-key"),
            header_value(key.expose(), "key")?,
        );
        match call.endpoint {
            Endpoint::Embeddings => embed(http, &call, &model_url, model, auth).await,
            Endpoint::ChatCompletions | Endpoint::Completions => {
                gemini_format::generate(http, &call, &model_url, auth).await
            }
            Endpoint::Responses | Endpoint::Messages => Err(crate::not_native(call.endpoint)),
        }
    }
}

/// `:batchEmbedContents`: one request per input, answered in order.
async fn embed(
    http: &reqwest::Client,
    call: &Call<'_>,
    model_url: &str,
    model: &str,
    auth: (HeaderName, HeaderValue),
) -> Result<UpstreamResponse, ProviderError> {
    if call.stream {
        return Err(bad_request("embeddings cannot be streamed"));
    }
    let deadline = transport::deadline(call.timeout);
    let inputs = openai_shape::embedding_inputs(call.body)?;
    let dimensions = call.body.get("dimensions").and_then(Value::as_u64);
    let requests: Vec<Value> = inputs
        .iter()
        .map(|text| {
            let mut r = json!({ "model": format!("models/{model}"), "content": { "parts": [{ "text": text }] } });
            if let Some(d) = dimensions {
                r["outputDimensionality"] = json!(d);
            }
            r
        })
        .collect();
    let url = format!("{model_url}:batchEmbedContents");
    let body = json!({ "requests": requests });
    let resp = gemini_format::post(http, &url, auth, call, &body, deadline).await?;
    let answer = transport::parse_json(&transport::read_body(resp, deadline).await?)?;
    let embeddings = answer
        .get("embeddings")
        .and_then(Value::as_array)
        .ok_or_else(|| ProviderError::InvalidResponse("answer has no embeddings".into()))?;
    if embeddings.len() != inputs.len() {
        return Err(ProviderError::InvalidResponse(format!(
            "{} embeddings for {} inputs",
            embeddings.len(),
            inputs.len()
        )));
    }
    let vectors = embeddings
        .iter()
        .map(|e| openai_shape::vector(e.get("values")))
        .collect::<Result<Vec<_>, _>>()?;
    // batchEmbedContents reports no token counts: estimate them.
    let tokens = answer
        .pointer("/usageMetadata/promptTokenCount")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| openai_shape::estimate_tokens(&inputs));
    let out = openai_shape::embeddings_body(call.body, call.target.model, vectors, tokens);
    Ok(UpstreamResponse::Whole {
        status: 200,
        body: Bytes::from(out.to_string()),
        usage: Some(tollgate_core::token_usage::Usage {
            prompt_tokens: tokens,
            completion_tokens: 0,
            cached_tokens: 0,
        }),
    })
}
