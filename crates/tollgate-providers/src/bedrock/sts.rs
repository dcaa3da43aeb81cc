//! STS AssumeRole: temporary credentials for `aws_auth_type:
//! "assumedRole"`, requested with a SigV4-signed Query API call and read
//! from its XML answer.

use super::sign::Signer;
use super::{AwsKeys, TempCreds};
use crate::transport;
use crate::ProviderError;
use chrono::{DateTime, Utc};
use tollgate_core::clock::SharedClock;
use tollgate_core::secrets::Secret;

/// STS AssumeRole (Query API, form body, XML answer).
#[allow(clippy::too_many_arguments)]
pub(super) async fn assume_role(
    http: &reqwest::Client,
    clock: &SharedClock,
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
        time: clock.now().into(),
    };
    let signed = signer.headers("POST", endpoint, &[("content-type", content_type)], &body)?;
    let mut req = transport::post(http, endpoint)
        .header("content-type", content_type)
        .body(body);
    for (k, v) in signed {
        req = req.header(k, v);
    }
    let (status, text) = transport::exchange(req, deadline).await?;
    let xml = String::from_utf8_lossy(&text);
    if !(200..300).contains(&status) {
        let code = xml_tag(&xml, "Code").unwrap_or_default();
        let message = xml_tag(&xml, "Message")
            .or_else(|| transport::excerpt(&text))
            .unwrap_or_else(|| "(empty body)".to_owned());
        return Err(ProviderError::Auth(format!(
            "STS AssumeRole returned {status}: {code}: {message}"
        )));
    }
    let field = |tag: &str| xml_tag(&xml, tag).ok_or_else(|| ProviderError::Auth(format!("STS answer has no {tag}")));
    let expiration = field("Expiration")?;
    let expires_at = DateTime::parse_from_rfc3339(&expiration)
        .map_err(|_| ProviderError::Auth(format!("STS Expiration {expiration:?} is not a timestamp")))?
        .with_timezone(&Utc);
    Ok(TempCreds {
        value: AwsKeys {
            access_key_id: Secret::from(field("AccessKeyId")?),
            secret_access_key: Secret::from(field("SecretAccessKey")?),
            session_token: Some(Secret::from(field("SessionToken")?)),
        },
        expires_at,
    })
}

/// The text of the first `<tag>…</tag>` in an STS answer, with XML's
/// predefined entities decoded. STS answers are small, flat and
/// namespace-free in their element names, so this is all the XML it takes.
pub(super) fn xml_tag(xml: &str, tag: &str) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_tags_are_read_and_unescaped() {
        assert_eq!(xml_tag("<a><B> x&amp;y </B></a>", "B").as_deref(), Some("x&y"));
        assert_eq!(xml_tag("<a/>", "B"), None);
    }
}
