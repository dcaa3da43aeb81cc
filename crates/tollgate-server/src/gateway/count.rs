//! Token counting without holding up the async workers.
//!
//! Counting a few kilobytes takes microseconds and runs inline (the hot
//! path). Counting megabytes takes tens of milliseconds to seconds: that runs
//! on tokio's blocking pool, at most one count per core at a time, so that
//! large prompts can neither stall `/health` and other requests nor take
//! every core.

use std::sync::{Arc, LazyLock};
use tokio::sync::Semaphore;

/// Inputs up to this many bytes are counted inline.
pub const INLINE_BYTES: usize = 64 * 1024;

/// One slot per core for counts off the async workers.
static SLOTS: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)));

/// Runs `count` on an input of `size` bytes: inline when small, else on the
/// blocking pool once a slot is free.
pub async fn tokens<T, F>(size: usize, count: F) -> T
where
    T: Send + 'static,
    F: Fn() -> T + Send + Sync + 'static,
{
    if size <= INLINE_BYTES {
        return count();
    }
    let count = Arc::new(count);
    // The semaphore is never closed: a slot always comes.
    let _slot = SLOTS.acquire().await.ok();
    let off = count.clone();
    match tokio::task::spawn_blocking(move || off()).await {
        Ok(v) => v,
        Err(e) => {
            // Only a shutting-down runtime gets here: count in place.
            tracing::error!(error = %e, "token counting off the async workers failed; counting inline");
            count()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn small_inputs_run_inline_and_large_ones_elsewhere() {
        let here = std::thread::current().id();
        let small = tokens(10, move || std::thread::current().id()).await;
        assert_eq!(small, here);
        let large = tokens(INLINE_BYTES + 1, move || std::thread::current().id()).await;
        assert_ne!(large, here);
    }
}
