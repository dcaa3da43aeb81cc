//! Who a limit belongs to ([`LimitOwner`]), and the counter key it counts
//! under ([`LimitId`]: the owner with its key rendered once).
//!
//! A limit is set on one of four owners, one per [`Level`]. Its counters are
//! keyed by text rendered from the owner, here and nowhere else:
//!
//! | owner | counter key |
//! |---|---|
//! | an integration in a workspace | `iw:<integration id>:<workspace id>` |
//! | a provider record | `prv:<provider id>` |
//! | an API key | `key:<API key id>` |
//! | a workspace | `ws:<workspace id>` |
//!
//! The key is part of every Redis counter key, of the alert outbox's
//! dedupe keys and of the `limit_id` the analytics API shows, so its form
//! must never change. All the limits of a request are in the counter group
//! of its workspace ([`counter_group`]), whose text is the workspace owner's
//! key.

use crate::admission::Level;
use crate::ids::{ApiKeyId, IntegrationId, ProviderId, WorkspaceId};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// What a limit is set on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitOwner {
    /// An integration's limits for one workspace (`workspace_limits`).
    IntegrationWorkspace {
        integration: IntegrationId,
        workspace: WorkspaceId,
    },
    /// A workspace's provider record.
    Provider(ProviderId),
    ApiKey(ApiKeyId),
    Workspace(WorkspaceId),
}

const INTEGRATION_WORKSPACE: &str = "iw";
const PROVIDER: &str = "prv";
const API_KEY: &str = "key";
const WORKSPACE: &str = "ws";

impl LimitOwner {
    /// The level its limits are checked at.
    pub fn level(&self) -> Level {
        match self {
            LimitOwner::IntegrationWorkspace { .. } => Level::IntegrationWorkspace,
            LimitOwner::Provider(_) => Level::Provider,
            LimitOwner::ApiKey(_) => Level::ApiKey,
            LimitOwner::Workspace(_) => Level::Workspace,
        }
    }

    /// The counter key (see the module docs).
    pub fn key(&self) -> String {
        match self {
            LimitOwner::IntegrationWorkspace { integration, workspace } => {
                render(INTEGRATION_WORKSPACE, integration.as_str(), Some(workspace.as_str()))
            }
            LimitOwner::Provider(p) => render(PROVIDER, p.as_str(), None),
            LimitOwner::ApiKey(k) => render(API_KEY, k.as_str(), None),
            LimitOwner::Workspace(w) => render(WORKSPACE, w.as_str(), None),
        }
    }

    /// Reads a counter key back into its owner (a `limit_id` read from
    /// storage); `None` if it is not one. The inverse of [`key`](Self::key)
    /// for every owner whose integration id has no `:` (the ids Tollgate
    /// issues, `int-<uuid>`, never do): the key is split at its first `:`
    /// after `iw:`, while provider, API key and workspace ids may hold `:`.
    pub fn parse(key: &str) -> Option<LimitOwner> {
        let (kind, rest) = key.split_once(':')?;
        match kind {
            INTEGRATION_WORKSPACE => rest.split_once(':').map(|(i, w)| LimitOwner::IntegrationWorkspace {
                integration: IntegrationId::new(i),
                workspace: WorkspaceId::new(w),
            }),
            PROVIDER => Some(LimitOwner::Provider(ProviderId::new(rest))),
            API_KEY => Some(LimitOwner::ApiKey(ApiKeyId::new(rest))),
            WORKSPACE => Some(LimitOwner::Workspace(WorkspaceId::new(rest))),
            _ => None,
        }
    }
}

impl fmt::Display for LimitOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

/// The counter group of a workspace's limits, `ws:<workspace id>`: the
/// hash tag `{ws:<workspace id>}` of all their keys in Redis. An API key
/// with no workspace has the group `ws:`.
pub fn counter_group(workspace: &str) -> String {
    render(WORKSPACE, workspace, None)
}

/// The one renderer of counter keys: `<kind>:<id>[:<second id>]`.
fn render(kind: &str, id: &str, second: Option<&str>) -> String {
    let mut s = String::with_capacity(kind.len() + 2 + id.len() + second.map_or(0, str::len));
    s.push_str(kind);
    s.push(':');
    s.push_str(id);
    if let Some(second) = second {
        s.push(':');
        s.push_str(second);
    }
    s
}

/// A limit's owner with its counter key, rendered once when the limit is
/// loaded: cloning it (once per admitted check) is one reference count, and
/// the counters hash and compare the key. Two ids are equal when their keys
/// are.
#[derive(Clone)]
pub struct LimitId(Arc<Rendered>);

struct Rendered {
    key: Box<str>,
    owner: LimitOwner,
}

impl LimitId {
    pub fn new(owner: LimitOwner) -> LimitId {
        LimitId(Arc::new(Rendered {
            key: owner.key().into_boxed_str(),
            owner,
        }))
    }

    pub fn owner(&self) -> &LimitOwner {
        &self.0.owner
    }

    pub fn level(&self) -> Level {
        self.0.owner.level()
    }

    /// The counter key.
    pub fn as_str(&self) -> &str {
        &self.0.key
    }
}

impl From<LimitOwner> for LimitId {
    fn from(owner: LimitOwner) -> Self {
        LimitId::new(owner)
    }
}

impl PartialEq for LimitId {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.key == other.0.key
    }
}

impl Eq for LimitId {}

impl Hash for LimitId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.key.hash(state);
    }
}

impl AsRef<str> for LimitId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for LimitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for LimitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LimitId").field(&self.as_str()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iw(integration: &str, workspace: &str) -> LimitOwner {
        LimitOwner::IntegrationWorkspace {
            integration: IntegrationId::new(integration),
            workspace: WorkspaceId::new(workspace),
        }
    }

    #[test]
    fn every_owner_renders_its_documented_key_and_reads_back() {
        let cases = [
            (
                iw("int-1", "ws-a-123456"),
                "iw:int-1:ws-a-123456",
                Level::IntegrationWorkspace,
            ),
            (
                LimitOwner::Provider(ProviderId::new("prv-7")),
                "prv:prv-7",
                Level::Provider,
            ),
            (LimitOwner::ApiKey(ApiKeyId::new("ak-9")), "key:ak-9", Level::ApiKey),
            (
                LimitOwner::Workspace(WorkspaceId::new("ws-b")),
                "ws:ws-b",
                Level::Workspace,
            ),
        ];
        for (owner, key, level) in cases {
            assert_eq!(owner.key(), key);
            assert_eq!(owner.to_string(), key);
            assert_eq!(owner.level(), level);
            assert_eq!(LimitOwner::parse(key).as_ref(), Some(&owner), "{key}");
            let id = LimitId::new(owner.clone());
            assert_eq!(
                (id.as_str(), id.to_string(), id.owner(), id.level()),
                (key, key.to_owned(), &owner, level)
            );
        }
    }

    #[test]
    fn ids_holding_colons_round_trip_except_in_the_integration_id() {
        for owner in [
            iw("int-1", "ws:with:colons"),
            iw("", ""),
            LimitOwner::Provider(ProviderId::new("prv:a:b")),
            LimitOwner::ApiKey(ApiKeyId::new("key:x")),
            LimitOwner::Workspace(WorkspaceId::new(":")),
            LimitOwner::Workspace(WorkspaceId::new("")),
        ] {
            assert_eq!(LimitOwner::parse(&owner.key()), Some(owner));
        }
        // The key of an integration id with a colon is also another
        // owner's: it reads back split at the first colon.
        assert_eq!(iw("a:b", "c").key(), iw("a", "b:c").key());
        assert_eq!(LimitOwner::parse("iw:a:b:c"), Some(iw("a", "b:c")));
    }

    #[test]
    fn text_that_is_no_counter_key_reads_as_none() {
        for key in ["", "nocolon", "iw:only-one-part", "other:x", "IW:a:b", "ws", " ws:a"] {
            assert_eq!(LimitOwner::parse(key), None, "{key:?}");
        }
    }

    #[test]
    fn the_counter_group_is_the_workspace_owners_key() {
        assert_eq!(counter_group("ws-a"), "ws:ws-a");
        assert_eq!(
            counter_group("ws-a"),
            LimitOwner::Workspace(WorkspaceId::new("ws-a")).key()
        );
        assert_eq!(counter_group(""), "ws:");
    }

    #[test]
    fn limit_ids_compare_and_hash_by_key() {
        use std::collections::HashSet;
        let a = LimitId::new(iw("a:b", "c"));
        let b = LimitId::new(iw("a", "b:c"));
        assert_eq!(a, b);
        assert_eq!(a, a.clone());
        assert_ne!(a, LimitId::new(iw("a", "b")));
        let set: HashSet<LimitId> = [a, b].into_iter().collect();
        assert_eq!(set.len(), 1);
        assert_eq!(
            format!("{:?}", LimitId::new(LimitOwner::ApiKey(ApiKeyId::new("ak-1")))),
            "LimitId(\"key:ak-1\")"
        );
    }
}
