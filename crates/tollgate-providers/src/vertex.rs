//! TODO: being written
#[derive(Debug, Default)]
pub struct Vertex;
#[async_trait::async_trait]
impl crate::Adapter for Vertex {
    async fn send(
        &self,
        _http: &reqwest::Client,
        _call: crate::Call<'_>,
    ) -> Result<crate::UpstreamResponse, crate::ProviderError> {
        Err(crate::ProviderError::Unsupported("not yet implemented".into()))
    }
}
