//! Ids, slugs, API key material, and typed ids of control-plane objects.
//!
//! Slugs follow `^[a-zA-Z0-9_-]+$` (API.md). Workspace ids read
//! `ws-<slug>-<6 hex>`. API keys carry 256 bits of entropy and are stored only
//! as their SHA-256 hash: a hash of a high-entropy secret needs no slow KDF.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Longest slug accepted anywhere.
pub const MAX_SLUG_LEN: usize = 64;

/// True when `s` is a valid slug: non-empty, at most [`MAX_SLUG_LEN`] chars of
/// `[a-zA-Z0-9_-]`.
pub fn is_valid_slug(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_SLUG_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Longest model id accepted (the model's own name, without `@provider/`).
pub const MAX_MODEL_ID_LEN: usize = 256;

/// True when `s` can be a model id: 1 to [`MAX_MODEL_ID_LEN`] bytes of
/// printable ASCII without spaces (`!` to `~`). Providers' ids use letters,
/// digits and `-._:/@`; anything else an adapter puts into a URL is
/// percent-encoded there.
pub fn is_valid_model_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_MODEL_ID_LEN && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Derives a slug from a display name: lower-case, runs of other characters
/// become one `-`, trimmed. Falls back to `item` when nothing is left.
pub fn slugify(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    out.truncate(MAX_SLUG_LEN - 7);
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        out.push_str("item");
    }
    out
}

/// `n` random bytes as lower-case hex.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// A new workspace id: `ws-<slug>-<6 hex>`.
pub fn workspace_id(slug: &str) -> String {
    format!("ws-{slug}-{}", random_hex(3))
}

/// A new opaque id with a short type prefix, e.g. `ak-…`, `int-…`.
pub fn prefixed_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// Prefix of every API key Tollgate issues; makes keys recognisable in leaks.
pub const API_KEY_PREFIX: &str = "tg-";

/// A new API key: the prefix and 32 random bytes (256 bits) as hex.
pub fn new_api_key() -> String {
    format!("{API_KEY_PREFIX}{}", random_hex(32))
}

/// The SHA-256 of an API key, as stored and as looked up.
pub fn hash_api_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Masks a secret for display: its first and last few characters with `*`
/// between. Short secrets are masked whole so that little is revealed.
pub fn mask_secret(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    let n = chars.len();
    if n <= 8 {
        return "*".repeat(n.max(4));
    }
    let show = if n >= 20 { 4 } else { 2 };
    let head: String = chars[..show].iter().collect();
    let tail: String = chars[n - show..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(8))
}

// Typed ids of control-plane objects, so that a slug or another object's
// id cannot be passed where an id is meant (integrations are audited by
// slug but deleted by id, for one; a limit's owner names an integration
// and a workspace side by side). Records keep plain strings, as stored.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// `ws-<slug>-<hex>`.
    WorkspaceId
);
id_type!(
    /// `ak-…`.
    ApiKeyId
);
id_type!(
    /// `int-…`.
    IntegrationId
);
id_type!(
    /// `prv-…`.
    ProviderId
);
id_type!(
    /// A UUID.
    ConfigId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_are_bounded_printable_ascii() {
        for ok in [
            "gpt-4o",
            "meta-llama/Llama-3:8b@v1",
            "anthropic.claude-3-haiku-20240307-v1:0",
            &"m".repeat(256),
        ] {
            assert!(is_valid_model_id(ok), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "a\tb",
            "nul\0",
            "caf\u{e9}",
            "line\n",
            "\u{7f}",
            &"m".repeat(257),
        ] {
            assert!(!is_valid_model_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn slugs_are_validated() {
        assert!(is_valid_slug("open-ai_prod1"));
        assert!(!is_valid_slug(""));
        assert!(!is_valid_slug("has space"));
        assert!(!is_valid_slug("dots.no"));
        assert!(!is_valid_slug(&"a".repeat(65)));
    }

    #[test]
    fn slugify_derives_valid_slugs() {
        assert_eq!(slugify("Team A / Prod"), "team-a-prod");
        assert_eq!(slugify("  --OpenAI  "), "openai");
        assert_eq!(slugify("€€€"), "item");
        let long = slugify(&"x".repeat(200));
        assert!(is_valid_slug(&long));
    }

    #[test]
    fn keys_are_long_and_distinct() {
        let a = new_api_key();
        let b = new_api_key();
        assert_ne!(a, b);
        assert_eq!(a.len(), API_KEY_PREFIX.len() + 64);
        assert_ne!(hash_api_key(&a), hash_api_key(&b));
    }

    #[test]
    fn workspace_ids_have_the_documented_shape() {
        let id = workspace_id("team-a");
        assert!(id.starts_with("ws-team-a-"));
        assert_eq!(id.len(), "ws-team-a-".len() + 6);
    }

    #[test]
    fn typed_ids_show_as_their_text() {
        let id = IntegrationId::new("int-1");
        assert_eq!((id.as_str(), id.to_string()), ("int-1", "int-1".to_owned()));
    }

    #[test]
    fn masking_hides_the_middle() {
        assert_eq!(mask_secret("sk-abcdefghijklmnopqrstuvwxyz"), "sk-a********wxyz");
        assert_eq!(mask_secret("short"), "*****");
        assert!(!mask_secret("0123456789abc").contains("456"));
    }
}
