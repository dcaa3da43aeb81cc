//! SigV4 signing of Bedrock runtime and STS requests (`aws-sigv4`).

use super::AwsKeys;
use crate::ProviderError;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};

/// Where a request goes and who signs it.
pub(super) struct Signer<'a> {
    pub(super) keys: &'a AwsKeys,
    pub(super) region: &'a str,
    pub(super) service: &'a str,
    pub(super) time: std::time::SystemTime,
}

impl Signer<'_> {
    /// The SigV4 headers (`authorization`, `x-amz-date`, and
    /// `x-amz-security-token` for temporary credentials) for a request with
    /// the given signed headers and body. `host` is signed from the URL.
    pub(super) fn headers(
        &self,
        method: &str,
        url: &str,
        signed: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Vec<(&'static str, String)>, ProviderError> {
        let fail = |e: &dyn std::fmt::Display| ProviderError::Config(format!("cannot sign the request: {e}"));
        let identity = Credentials::new(
            self.keys.access_key_id.expose(),
            self.keys.secret_access_key.expose(),
            self.keys.session_token.as_ref().map(|t| t.expose().to_owned()),
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
