//! A keyed cache of short-lived credentials (Vertex access tokens, STS
//! temporary keys) shared by the adapters that exchange one credential for
//! another.
//!
//! Each key has its own slot behind an async lock, so concurrent requests for
//! the same key cause one exchange while other keys go on; a cached value is
//! replaced `margin` before it expires, so a request never leaves with a
//! credential that dies on the way. Time comes from the injected clock so
//! tests can move past the expiry by hand.

use crate::ProviderError;
use chrono::{DateTime, Duration, Utc};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use tollgate_core::clock::SharedClock;

/// A credential and when it stops being valid.
pub(crate) struct Expiring<T> {
    pub(crate) value: T,
    pub(crate) expires_at: DateTime<Utc>,
}

/// One key's slot; its async lock serialises refreshes.
type Slot<T> = Arc<tokio::sync::Mutex<Option<Expiring<T>>>>;

/// Cached credentials by key, refreshed on demand.
pub(crate) struct CredentialCache<T> {
    clock: SharedClock,
    margin: Duration,
    slots: parking_lot::Mutex<HashMap<String, Slot<T>>>,
}

impl<T: Clone> CredentialCache<T> {
    /// An empty cache that refreshes `margin` before expiry, by `clock`.
    pub(crate) fn new(clock: SharedClock, margin: Duration) -> Self {
        Self {
            clock,
            margin,
            slots: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// How many keys have a slot (for `Debug` output).
    pub(crate) fn len(&self) -> usize {
        self.slots.lock().len()
    }

    /// The cached value for `key` while it is fresh, else the result of
    /// `refresh`, which is stored on success. A failed refresh leaves the old
    /// entry in place and is returned as is.
    pub(crate) async fn get<F, Fut>(&self, key: String, refresh: F) -> Result<T, ProviderError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Expiring<T>, ProviderError>>,
    {
        let slot = self.slots.lock().entry(key).or_default().clone();
        let mut cached = slot.lock().await;
        if let Some(c) = cached.as_ref() {
            if self.clock.now() < c.expires_at - self.margin {
                return Ok(c.value.clone());
            }
        }
        let fresh = refresh().await?;
        let out = fresh.value.clone();
        *cached = Some(fresh);
        Ok(out)
    }
}
