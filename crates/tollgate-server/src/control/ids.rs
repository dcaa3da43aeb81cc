//! Typed ids of control-plane objects, so that a slug or another object's
//! id cannot be passed where an id is meant (integrations are audited by
//! slug but deleted by id, for one). Records keep plain strings, as stored.

use std::fmt;

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

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

/// The kind of object an audit entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectType {
    Workspace,
    ApiKey,
    Integration,
    Provider,
    Config,
}

impl ObjectType {
    /// As the audit trail records it.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectType::Workspace => "workspace",
            ObjectType::ApiKey => "api_key",
            ObjectType::Integration => "integration",
            ObjectType::Provider => "provider",
            ObjectType::Config => "config",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_show_as_their_text_and_object_types_as_audited() {
        let id = IntegrationId::new("int-1");
        assert_eq!((id.as_str(), id.to_string()), ("int-1", "int-1".to_owned()));
        assert_eq!(
            [
                ObjectType::Workspace,
                ObjectType::ApiKey,
                ObjectType::Integration,
                ObjectType::Provider,
                ObjectType::Config
            ]
            .map(ObjectType::as_str),
            ["workspace", "api_key", "integration", "provider", "config"]
        );
    }
}
