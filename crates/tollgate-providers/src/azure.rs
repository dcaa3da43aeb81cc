//! The Azure OpenAI adapter: deployment URLs, `api-version` and the
//! `api-key` header. Requests and answers are OpenAI-shaped, so the exchange
//! itself is [`crate::openai::relay`].

use crate::openai::{header_value, relay, secret};
use crate::{Adapter, Call, Endpoint, ProviderError, Target, UpstreamResponse};
use reqwest::header::{HeaderMap, HeaderName};
use serde_json::Value;

/// The inference API version used when the integration sets none (the
/// latest generally available one).
pub const DEFAULT_API_VERSION: &str = "2024-10-21";

/// Azure OpenAI deployments.
#[derive(Debug, Default)]
pub struct Azure;

#[async_trait::async_trait]
impl Adapter for Azure {
    async fn send(&self, http: &reqwest::Client, call: Call<'_>) -> Result<UpstreamResponse, ProviderError> {
        if call.endpoint.is_native() {
            return Err(crate::not_native(call.endpoint));
        }
        let url = request_url(&call.target, call.endpoint)?;
        let key = secret(&call.target, "key")?
            .ok_or_else(|| ProviderError::Config("the Azure OpenAI integration has no key".into()))?;
        let mut headers = HeaderMap::new();
        headers.insert(HeaderName::from_static("api-key"), header_value(key.as_str(), "key")?);
        relay(http, url.as_str(), headers, &call).await
    }
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
    let base = match target.base_url {
        Some(b) => b.to_owned(),
        None => {
            let resource = target
                .config
                .get("azure_resource_name")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty())
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
    // The URL's own segment setter encodes the name (`/`, `?`, `#`, `%`
    // included) but silently drops `.` and `..`: those are refused here.
    let deployment = crate::chat_shape::segment_name("deployment", deployment(target.config, target.model))?;
    let mut url = url::Url::parse(&base).map_err(|e| ProviderError::Config(format!("invalid Azure base URL: {e}")))?;
    let version = target
        .config
        .get("azure_api_version")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        .unwrap_or(DEFAULT_API_VERSION);
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
