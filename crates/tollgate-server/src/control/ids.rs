//! Typed ids of control-plane objects (defined in [`tollgate_core::ids`],
//! so that limit owners use them too), and the object types of the audit
//! trail.

pub use tollgate_core::ids::{ApiKeyId, ConfigId, IntegrationId, ProviderId, WorkspaceId};

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
    fn object_types_read_as_audited() {
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
