//! Provider adapters: one module per wire protocol, behind one interface.
//!
//! The gateway speaks OpenAI's format to clients whatever the provider. For a
//! request it hands an [`Adapter`] the client's OpenAI-format body (a typed
//! [`chat::ChatRequest`] for chat, JSON for the other endpoints; model name
//! already resolved to the upstream's), the [`Target`] (base URL, non-secret
//! configuration, custom headers) and the sealed credentials. The adapter
//! translates, signs and sends the request, and answers with an
//! [`UpstreamResponse`] in OpenAI's format: a whole body, or a stream of
//! OpenAI chat-completion chunks (each already framed as one SSE `data:` event)
//! with the usage the upstream reported.
//!
//! Modules:
//! - [`openai`]: OpenAI and every OpenAI-compatible provider.
//! - [`azure`]: Azure OpenAI deployments.
//! - [`chat`]: the typed OpenAI chat request ([`chat::ChatRequest`]) and
//!   the [`chat::Body`] every adapter receives.
//! - [`anthropic`]: Anthropic Messages API.
//! - [`google`]: Google Gemini API (`generateContent`).
//! - [`vertex`]: Vertex AI (service-account JWT → OAuth token, Gemini models).
//! - [`bedrock`]: AWS Bedrock Converse / ConverseStream, in parts: `sts`,
//!   `sign` (SigV4), `converse`, `eventstream`.
//! - [`transport`]: what every adapter shares on the wire: opening secrets
//!   (blank is unset), URL segments, headers, sending and reading under a
//!   deadline, body streams, and mapping failures to [`ProviderError`]
//!   (unreachable hosts, non-2xx messages, excerpts, `retry-after`).
//! - `openai_shape`: reading OpenAI requests and writing OpenAI answers,
//!   chunks and usage, for every adapter that translates (Anthropic, Gemini,
//!   Vertex, Bedrock).
//! - `gemini_format`: the Gemini body format shared by Gemini and Vertex.
//! - [`sse`]: server-sent-event framing and the stream-translation loop
//!   shared by the streaming adapters.
//! - `credential_cache`: the expiring-credential cache behind Vertex tokens
//!   and STS keys.
//! - [`tokens`]: token estimation with tiktoken.

pub mod anthropic;
pub mod azure;
pub mod bedrock;
pub mod chat;
mod credential_cache;
pub mod dialects;
mod gemini_format;
pub mod google;
pub mod openai;
mod openai_shape;
pub mod sse;
pub mod tokens;
pub mod transport;
pub mod vertex;

use bytes::Bytes;
use futures::stream::BoxStream;
use std::sync::Arc;
use std::time::Duration;
use tollgate_core::catalogue::Protocol;
use tollgate_core::secrets::SecretSource;
use tollgate_core::token_usage::Usage;

/// The endpoint an upstream call goes to, in the client's wire format.
///
/// The first three are OpenAI's, which every adapter translates. The last
/// two are native pass-through: the body is already in the upstream's own
/// format (the Responses API to OpenAI, the Messages API to Anthropic) and is
/// relayed with only `model` rewritten; see [`Endpoint::is_native`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    /// OpenAI's Responses API (`POST /responses`), relayed.
    Responses,
    /// Anthropic's Messages API (`POST /messages`), relayed.
    Messages,
}

impl Endpoint {
    /// The path under an OpenAI-compatible base URL.
    pub fn openai_path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Responses => "/responses",
            Endpoint::Messages => "/messages",
        }
    }

    /// A native pass-through endpoint (its body is not OpenAI chat's).
    pub fn is_native(self) -> bool {
        matches!(self, Endpoint::Responses | Endpoint::Messages)
    }

    /// Whether `protocol` relays this endpoint natively.
    pub fn native_on(self, protocol: Protocol) -> bool {
        matches!(
            (self, protocol),
            (Endpoint::Responses, Protocol::OpenAi | Protocol::AzureOpenAi) | (Endpoint::Messages, Protocol::Anthropic)
        )
    }
}

/// The error for a native endpoint sent to an adapter that does not speak it.
pub(crate) fn not_native(endpoint: Endpoint) -> ProviderError {
    ProviderError::Unsupported(format!(
        "{} is not relayed natively by this provider",
        endpoint.openai_path()
    ))
}

/// Where and how to reach the upstream for one request.
pub struct Target<'a> {
    /// `custom_host` (model-level, then integration-level) or the catalogue's
    /// default base URL. `None` where the protocol derives it (Azure, Bedrock,
    /// Vertex).
    pub base_url: Option<&'a str>,
    /// The integration's non-secret configuration (`azure_resource_name`,
    /// `aws_region`, `vertex_project_id`, `openai_organization`, ...).
    pub config: &'a serde_json::Map<String, serde_json::Value>,
    /// The integration's secret fields (`key`, `aws_secret_access_key`, ...),
    /// opened only while the request is built.
    pub secrets: &'a dyn SecretSource,
    /// Extra headers sent upstream (a custom model's `custom_headers`).
    pub headers: &'a [(String, String)],
    /// The model name as the upstream knows it (no `@slug/` prefix).
    pub model: &'a str,
}

/// One upstream call.
pub struct Call<'a> {
    pub endpoint: Endpoint,
    pub target: Target<'a>,
    /// The client's request body, with `model` already set to
    /// [`Target::model`]: typed for chat, JSON otherwise.
    pub body: &'a chat::Body,
    /// `stream: true` was asked for (chat and completions only).
    pub stream: bool,
    /// The client asked for `stream_options.include_usage`; when false, a
    /// usage-only chunk the adapter obtained for accounting is not relayed.
    pub client_wants_usage: bool,
    /// Deadline for the whole upstream exchange (headers for a stream).
    pub timeout: Duration,
}

/// An upstream answer, in OpenAI's format.
pub enum UpstreamResponse {
    /// A whole response: status (2xx), OpenAI-format JSON body, and the usage
    /// it reported, if any.
    Whole {
        status: u16,
        body: Bytes,
        usage: Option<Usage>,
    },
    /// A stream of SSE frames for the client, each a complete
    /// `data: {chunk}\n\n` event, ending without `data: [DONE]` (the relay
    /// adds it). [`StreamItem::Usage`] items carry the usage for accounting.
    Stream(BoxStream<'static, Result<StreamItem, ProviderError>>),
}

/// One item of a translated stream.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// A complete SSE event to relay to the client as is.
    Frame(Bytes),
    /// Usage reported by the upstream (may arrive once, at the end).
    Usage(Usage),
}

/// Why an upstream call failed. Messages never contain credentials.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The upstream answered with a non-2xx status; `message` is its own.
    /// `retry_after` is the wait it asked for (`retry-after-ms`,
    /// `x-ms-retry-after-ms`, `retry-after` in seconds or as an HTTP date),
    /// where it sent one; the gateway reads a date against its clock.
    #[error("upstream returned {status}: {message}")]
    Upstream {
        status: u16,
        message: String,
        retry_after: Option<tollgate_core::routing::RetryAfter>,
    },
    /// The upstream did not answer within the deadline.
    #[error("upstream timed out")]
    Timeout,
    /// The upstream could not be reached or broke the connection.
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// The upstream's answer could not be understood.
    #[error("invalid upstream response: {0}")]
    InvalidResponse(String),
    /// The integration's configuration is incomplete or invalid for this call.
    #[error("integration misconfigured: {0}")]
    Config(String),
    /// The client's request cannot be expressed in this protocol (for example
    /// embeddings on Anthropic).
    #[error("{0}")]
    Unsupported(String),
    /// A credential exchange (Vertex OAuth token, STS AssumeRole) failed.
    #[error("credential exchange failed: {0}")]
    Auth(String),
}

/// A protocol implementation.
#[async_trait::async_trait]
pub trait Adapter: Send + Sync {
    /// Translates, signs and sends one call.
    async fn send(&self, http: &reqwest::Client, call: Call<'_>) -> Result<UpstreamResponse, ProviderError>;
}

/// Every adapter, sharing one pooled HTTP client and the credential caches
/// (Vertex access tokens, STS credentials).
pub struct Adapters {
    http: reqwest::Client,
    openai: openai::OpenAi,
    azure: azure::Azure,
    anthropic: anthropic::Anthropic,
    google: google::Gemini,
    vertex: vertex::Vertex,
    bedrock: bedrock::Bedrock,
}

impl Adapters {
    /// Builds the shared client: connection pool, TCP_NODELAY, keep-alive,
    /// HTTP/2 where the upstream offers it (ALPN).
    pub fn new() -> Result<Arc<Self>, ProviderError> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .tcp_keepalive(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ProviderError::Config(e.to_string()))?;
        Ok(Arc::new(Self::with_client(http)))
    }

    pub fn with_client(http: reqwest::Client) -> Self {
        Self {
            http,
            openai: openai::OpenAi,
            azure: azure::Azure,
            anthropic: anthropic::Anthropic,
            google: google::Gemini,
            vertex: vertex::Vertex::default(),
            bedrock: bedrock::Bedrock::default(),
        }
    }

    pub fn get(&self, p: Protocol) -> &dyn Adapter {
        match p {
            Protocol::OpenAi => &self.openai,
            Protocol::AzureOpenAi => &self.azure,
            Protocol::Anthropic => &self.anthropic,
            Protocol::Google => &self.google,
            Protocol::VertexAi => &self.vertex,
            Protocol::Bedrock => &self.bedrock,
        }
    }

    /// Anthropic's token count for a Messages body (not a billed call).
    pub async fn anthropic_count_tokens(
        &self,
        target: &Target<'_>,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<Bytes, ProviderError> {
        anthropic::count_tokens(&self.http, target, body, timeout).await
    }

    /// `GET /responses/{id}` on an upstream that stores responses (OpenAI
    /// or Azure OpenAI; not billed).
    pub async fn get_response(
        &self,
        protocol: Protocol,
        target: &Target<'_>,
        id: &str,
        timeout: Duration,
    ) -> Result<Bytes, ProviderError> {
        match protocol {
            Protocol::AzureOpenAi => azure::get_response(&self.http, target, id, timeout).await,
            _ => openai::get_response(&self.http, target, id, timeout).await,
        }
    }

    /// Sends `call` through the adapter for `protocol`.
    pub async fn send(&self, protocol: Protocol, call: Call<'_>) -> Result<UpstreamResponse, ProviderError> {
        self.get(protocol).send(&self.http, call).await
    }
}
