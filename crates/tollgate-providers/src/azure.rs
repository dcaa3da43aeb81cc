//! The Azure OpenAI adapter: deployment URLs, `api-version` and the
//! `api-key` header. Requests and answers are OpenAI-shaped, so the exchange
//! itself is [`crate::openai::relay`]. The Responses API is relayed natively
//! at `{base}/openai/responses` (not per deployment: `model` names the
//! deployment), and stored responses are fetched from there.

use crate::chat::Body;
use crate::openai::relay;
use crate::transport::{self, add_custom_headers, config_str, header_value, openai_message, secret, segment_name};
use crate::{Adapter, Call, Endpoint, ProviderError, Target, UpstreamResponse};
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName};
use serde_json::Value;
use std::time::Duration;

/// The inference API version used when the integration sets none (the
/// latest generally available one).
pub const DEFAULT_API_VERSION: &str = "2024-10-21";

/// The API version of the Responses API calls (older versions, the
/// inference default included, do not serve `/openai/responses`).
pub const RESPONSES_API_VERSION: &str = "2025-04-01-preview";

/// Azure OpenAI deployments.
#[derive(Debug, Default)]
pub struct Azure;

#[async_trait::async_trait]
impl Adapter for Azure {
    async fn send(&self, http: &reqwest::Client, call: Call<'_>) -> Result<UpstreamResponse, ProviderError> {
        match call.endpoint {
            Endpoint::Messages => Err(crate::not_native(call.endpoint)),
            Endpoint::Responses => {
                // The Responses API takes the deployment as `model`.
                let url = responses_url(&call.target, None)?;
                let deployment = deployment(call.target.config, call.target.model);
                let mut body = call.body.clone();
                let object = match &mut body {
                    Body::Json(Value::Object(o)) => o,
                    _ => {
                        return Err(ProviderError::Unsupported(
                            "the request body must be a JSON object".into(),
                        ))
                    }
                };
                object.insert("model".into(), Value::String(deployment.to_owned()));
                let call = Call { body: &body, ..call };
                relay(http, url.as_str(), key_header(&call.target)?, &call).await
            }
            _ => {
                let url = request_url(&call.target, call.endpoint)?;
                relay(http, url.as_str(), key_header(&call.target)?, &call).await
            }
        }
    }
}

/// The `api-key` header with the integration's key.
fn key_header(target: &Target<'_>) -> Result<HeaderMap, ProviderError> {
    let key = secret(target, "key")?
        .ok_or_else(|| ProviderError::Config("the Azure OpenAI integration has no key".into()))?;
    let mut headers = HeaderMap::new();
    headers.insert(HeaderName::from_static("api-key"), header_value(key.expose(), "key")?);
    Ok(headers)
}

/// `GET {base}/openai/responses/{id}`: a stored response, as the upstream's bytes.
pub async fn get_response(
    http: &reqwest::Client,
    target: &Target<'_>,
    id: &str,
    timeout: Duration,
) -> Result<Bytes, ProviderError> {
    let url = responses_url(target, Some(id))?;
    let mut headers = key_header(target)?;
    add_custom_headers(&mut headers, target)?;
    transport::send_whole(
        http.get(url).headers(headers),
        transport::deadline(timeout),
        openai_message,
    )
    .await
    .map(|(_, b)| b)
}

/// `{base}/openai/responses[/{id}]?api-version=...` (the id percent-encoded
/// as one segment).
pub fn responses_url(target: &Target<'_>, id: Option<&str>) -> Result<url::Url, ProviderError> {
    let mut url = base_url(target)?;
    {
        let mut segments = url
            .path_segments_mut()
            .map_err(|_| ProviderError::Config("the Azure base URL cannot take a path".into()))?;
        segments.pop_if_empty().extend(["openai", "responses"]);
        if let Some(id) = id {
            segments.push(segment_name("response id", id)?);
        }
    }
    url.query_pairs_mut().append_pair("api-version", RESPONSES_API_VERSION);
    Ok(url)
}

/// The deployment serving `model`: the `azure_deployment_config` entry for
/// that model slug, else the default entry, else the model name itself.
pub fn deployment<'a>(config: &'a serde_json::Map<String, Value>, model: &'a str) -> &'a str {
    let entries = config
        .get("azure_deployment_config")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let name = |e: &'a Value| {
        e.get("azure_deployment_name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    entries
        .iter()
        .find(|e| e.get("azure_model_slug").and_then(Value::as_str) == Some(model))
        .and_then(name)
        .or_else(|| {
            entries
                .iter()
                .find(|e| e.get("is_default").and_then(Value::as_bool) == Some(true))
                .and_then(name)
        })
        .unwrap_or(model)
}

/// `{base}/openai/deployments/{deployment}/{path}?api-version=...`, where
/// `base` is the custom host or `https://{azure_resource_name}.openai.azure.com`.
pub fn request_url(target: &Target<'_>, endpoint: Endpoint) -> Result<url::Url, ProviderError> {
    // The URL's own segment setter encodes the name (`/`, `?`, `#`, `%`
    // included) but silently drops `.` and `..`: those are refused here.
    let deployment = segment_name("deployment", deployment(target.config, target.model))?;
    let mut url = base_url(target)?;
    let version = config_str(target.config, "azure_api_version").unwrap_or(DEFAULT_API_VERSION);
    {
        let mut segments = url
            .path_segments_mut()
            .map_err(|_| ProviderError::Config("the Azure base URL cannot take a path".into()))?;
        segments
            .pop_if_empty()
            .extend(["openai", "deployments", deployment])
            .extend(endpoint.openai_path().trim_start_matches('/').split('/'));
    }
    url.query_pairs_mut().append_pair("api-version", version);
    Ok(url)
}

/// The custom host, else `https://{azure_resource_name}.openai.azure.com`.
fn base_url(target: &Target<'_>) -> Result<url::Url, ProviderError> {
    let base = match target.base_url {
        Some(b) => b.to_owned(),
        None => {
            let resource = config_str(target.config, "azure_resource_name")
                .ok_or_else(|| ProviderError::Config("azure_resource_name is not set".into()))?;
            // A resource name is a DNS label: anything else would change the host.
            if !resource.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(ProviderError::Config(
                    "azure_resource_name is not a valid resource name".into(),
                ));
            }
            format!("https://{resource}.openai.azure.com")
        }
    };
    url::Url::parse(&base).map_err(|e| ProviderError::Config(format!("invalid Azure base URL: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tollgate_core::secrets::PlainSecrets;

    fn map(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn url_for(config: &Value, base: Option<&str>, model: &str, endpoint: Endpoint) -> Result<String, ProviderError> {
        let config = map(config.clone());
        let secrets = PlainSecrets::default();
        let target = Target {
            base_url: base,
            config: &config,
            secrets: &secrets,
            headers: &[],
            model,
        };
        request_url(&target, endpoint).map(|u| u.to_string())
    }

    #[test]
    fn picks_the_deployment_by_model_then_default_then_name() {
        let config = map(json!({"azure_deployment_config": [
            {"azure_deployment_name": "dep-mini", "azure_model_slug": "gpt-4o-mini", "is_default": false},
            {"azure_deployment_name": "dep-main", "azure_model_slug": "gpt-4o", "is_default": true}
        ]}));
        assert_eq!(deployment(&config, "gpt-4o-mini"), "dep-mini");
        assert_eq!(deployment(&config, "gpt-4o"), "dep-main");
        assert_eq!(deployment(&config, "other"), "dep-main");
        let no_default = map(json!({"azure_deployment_config": [
            {"azure_deployment_name": "dep-mini", "azure_model_slug": "gpt-4o-mini"}]}));
        assert_eq!(deployment(&no_default, "gpt-35"), "gpt-35");
        assert_eq!(deployment(&serde_json::Map::new(), "gpt-4o"), "gpt-4o");
    }

    #[test]
    fn builds_resource_urls() {
        let config = json!({"azure_resource_name": "acme-eu", "azure_api_version": "2024-06-01"});
        assert_eq!(
            url_for(&config, None, "gpt-4o", Endpoint::ChatCompletions).unwrap(),
            "https://acme-eu.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01"
        );
        let config = json!({"azure_resource_name": "acme"});
        assert_eq!(
            url_for(&config, None, "text-embedding-3-small", Endpoint::Embeddings).unwrap(),
            format!(
                "https://acme.openai.azure.com/openai/deployments/text-embedding-3-small/embeddings?api-version={DEFAULT_API_VERSION}"
            )
        );
    }

    #[test]
    fn custom_host_replaces_the_resource_host() {
        let config = json!({"azure_resource_name": "acme"});
        for base in ["http://127.0.0.1:9/", "http://127.0.0.1:9"] {
            assert_eq!(
                url_for(&config, Some(base), "dep a/b", Endpoint::Completions).unwrap(),
                format!(
                    "http://127.0.0.1:9/openai/deployments/dep%20a%2Fb/completions?api-version={DEFAULT_API_VERSION}"
                )
            );
        }
    }

    #[test]
    fn responses_urls_are_per_resource_and_encode_the_id() {
        let config = map(json!({"azure_resource_name": "acme", "azure_api_version": "2024-06-01"}));
        let secrets = PlainSecrets::default();
        let target = |base| Target {
            base_url: base,
            config: &config,
            secrets: &secrets,
            headers: &[],
            model: "gpt-4o",
        };
        assert_eq!(
            responses_url(&target(None), None).unwrap().as_str(),
            format!("https://acme.openai.azure.com/openai/responses?api-version={RESPONSES_API_VERSION}")
        );
        assert_eq!(
            responses_url(&target(Some("http://127.0.0.1:9/")), Some("resp_1/x?y"))
                .unwrap()
                .as_str(),
            format!("http://127.0.0.1:9/openai/responses/resp_1%2Fx%3Fy?api-version={RESPONSES_API_VERSION}")
        );
        assert!(responses_url(&target(None), Some("..")).is_err());
    }

    #[test]
    fn missing_or_bad_configuration_is_a_config_error() {
        let missing = url_for(&json!({}), None, "m", Endpoint::ChatCompletions);
        assert!(matches!(missing, Err(ProviderError::Config(_))));
        let hostile = url_for(
            &json!({"azure_resource_name": "evil.com/x?"}),
            None,
            "m",
            Endpoint::ChatCompletions,
        );
        assert!(matches!(hostile, Err(ProviderError::Config(_))));
        let bad_base = url_for(&json!({}), Some("not a url"), "m", Endpoint::ChatCompletions);
        assert!(matches!(bad_base, Err(ProviderError::Config(_))));
        let no_path = url_for(&json!({}), Some("mailto:x@y"), "m", Endpoint::ChatCompletions);
        assert!(matches!(no_path, Err(ProviderError::Config(_))));
    }
}
