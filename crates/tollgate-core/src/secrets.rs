//! [`Secret`], the one wrapper for a secret held in memory, and the seam
//! through which an adapter opens a credential. The store seals secrets; the
//! adapter asks for one field at the moment it builds the upstream request
//! and gets it back as a [`Secret`].

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

/// A secret held in memory (master key, API key plaintext, SMTP URL with its
/// password, webhook secret, provider credential): zeroed on drop, and its
/// `Debug` prints `[redacted]`. The value is reached only through
/// [`Secret::expose`], so every use is visible in the code.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T: Zeroize>(Zeroizing<T>);

impl<T: Zeroize> Secret<T> {
    pub fn new(value: T) -> Secret<T> {
        Secret(Zeroizing::new(value))
    }

    /// The value itself; do not log or format it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T: Zeroize> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<String> for Secret<String> {
    fn from(value: String) -> Secret<String> {
        Secret::new(value)
    }
}

impl From<&str> for Secret<String> {
    fn from(value: &str) -> Secret<String> {
        Secret::new(value.to_owned())
    }
}

/// A credential's secret fields, still sealed until asked for.
pub trait SecretSource: Send + Sync {
    /// Opens the secret field `name`. `Ok(None)` when the field is not set;
    /// `Err` when it is set but cannot be opened (wrong master key, corrupt
    /// record): the message must not contain the secret.
    fn open(&self, name: &str) -> Result<Option<Secret<String>>, String>;
}

/// Plain in-memory secrets, for tests and for the mock-upstream quick start.
#[derive(Default, Clone, Debug)]
pub struct PlainSecrets(pub Vec<(String, Secret<String>)>);

impl SecretSource for PlainSecrets {
    fn open(&self, name: &str) -> Result<Option<Secret<String>>, String> {
        Ok(self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_debugs_as_redacted_and_exposes_its_value() {
        let s = Secret::from("sk-live-123");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some([redacted])");
        assert_eq!(s.expose(), "sk-live-123");
        assert_eq!(s, Secret::new("sk-live-123".to_owned()));
    }

    #[test]
    fn plain_secrets_open_by_name_and_hide_values_from_debug() {
        let p = PlainSecrets(vec![("api_key".into(), Secret::from("sk-1"))]);
        let opened = p.open("api_key").unwrap().unwrap();
        assert_eq!(opened.expose(), "sk-1");
        assert!(p.open("other").unwrap().is_none());
        assert!(!format!("{p:?}").contains("sk-1"));
    }
}
