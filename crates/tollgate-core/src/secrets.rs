//! The seam through which an adapter opens a credential. The store seals
//! secrets; the adapter asks for one field at the moment it builds the
//! upstream request and gets it back in a buffer that is zeroed on drop.

use zeroize::Zeroizing;

/// A credential's secret fields, still sealed until asked for.
pub trait SecretSource: Send + Sync {
    /// Opens the secret field `name`. `Ok(None)` when the field is not set;
    /// `Err` when it is set but cannot be opened (wrong master key, corrupt
    /// record): the message must not contain the secret.
    fn open(&self, name: &str) -> Result<Option<Zeroizing<String>>, String>;
}

/// Plain in-memory secrets, for tests and for the mock-upstream quick start.
#[derive(Default, Clone)]
pub struct PlainSecrets(pub Vec<(String, String)>);

impl SecretSource for PlainSecrets {
    fn open(&self, name: &str) -> Result<Option<Zeroizing<String>>, String> {
        Ok(self
            .0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| Zeroizing::new(v.clone())))
    }
}

impl std::fmt::Debug for PlainSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PlainSecrets(..)")
    }
}
