//! Identical analytics questions share one answer. The dashboard's
//! analytics page asks the API for five graphs over the same range at once,
//! and every graph reads the same cells; pollers repeat a question until the
//! log moves. A question is keyed by the request-log batches this process has
//! committed, so an answer never hides a write that came before the question
//! (the analytics routes flush the log first, then ask).
//!
//! Answers are computed once for everyone asking while they are computed.
//! They are kept for later questions only where this process is the log's
//! only writer (SQLite, held by `serve.lock`); on a shared database another
//! replica may have written since, so there an answer is shared only by the
//! questions that waited for it.

use crate::analytics::{Cells, Query};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::OnceCell;

/// Most answers kept at once.
const MAX_KEPT: usize = 8;
/// Larger answers (minute graphs over days, groups of many keys) are not
/// kept: a cell holds three histograms (a few KiB), so that the kept
/// answers stay within a few tens of MiB, and such questions are rarely
/// repeated. A week by the hour is 168 cells.
const MAX_KEPT_CELLS: usize = 500;

/// (log version, the question, raw rows read one by one).
type Key = (u64, String, i64);
type Slot = Arc<OnceCell<Arc<Cells>>>;

#[derive(Debug)]
pub(crate) struct QueryCache {
    /// Request-log batches this process has committed.
    version: AtomicU64,
    keep: bool,
    slots: Mutex<HashMap<Key, Slot>>,
}

impl QueryCache {
    /// `keep`: whether answers outlive their question (single writer).
    pub(crate) fn new(keep: bool) -> QueryCache {
        QueryCache {
            version: AtomicU64::new(0),
            keep,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Called by the request-log writer after each commit.
    pub(crate) fn committed(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// The answer to `q`: computed by `compute`, or shared with the same
    /// question asked since the last commit. A failed computation is not
    /// kept; whoever waits on it computes again.
    pub(crate) async fn answer<F, Fut, E>(&self, q: &Query, exact_rows: i64, compute: F) -> Result<Cells, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Cells, E>>,
    {
        let version = self.version.load(Ordering::Acquire);
        let key: Key = (version, format!("{q:?}"), exact_rows);
        let slot = {
            let mut slots = self.slots.lock();
            slots.retain(|k, s| k.0 == version && (s.get().is_none() || self.keep));
            if slots.len() >= MAX_KEPT {
                slots.retain(|_, s| s.get().is_none());
            }
            slots.entry(key.clone()).or_default().clone()
        };
        let answer = slot
            .get_or_try_init(|| async { compute().await.map(Arc::new) })
            .await
            .map(|c| Cells::clone(c));
        if !self.keep || answer.as_ref().is_ok_and(|c| c.len() > MAX_KEPT_CELLS) {
            let mut slots = self.slots.lock();
            if slots.get(&key).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                slots.remove(&key);
            }
        }
        answer
    }

    #[cfg(test)]
    fn kept(&self) -> usize {
        self.slots.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::{Agg, Filter};
    use std::sync::atomic::AtomicUsize;

    fn q(from_ms: i64) -> Query {
        Query {
            filter: Filter {
                from_ms,
                to_ms: from_ms + 1,
                ..Default::default()
            },
            interval: None,
            group: None,
            distinct: true,
        }
    }

    fn cells(n: u64) -> Cells {
        let mut c = Cells::new();
        c.insert(
            (0, String::new()),
            Agg {
                requests: n,
                ..Default::default()
            },
        );
        c
    }

    #[tokio::test]
    async fn questions_asked_together_are_answered_once() {
        let cache = Arc::new(QueryCache::new(false));
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, wait) = tokio::sync::watch::channel(false);
        let ask = |cache: Arc<QueryCache>, runs: Arc<AtomicUsize>, mut wait: tokio::sync::watch::Receiver<bool>| async move {
            cache
                .answer(&q(1), 0, || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    let _ = wait.wait_for(|go| *go).await;
                    Ok::<_, ()>(cells(7))
                })
                .await
        };
        let tasks: Vec<_> = (0..5)
            .map(|_| tokio::spawn(ask(cache.clone(), runs.clone(), wait.clone())))
            .collect();
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        release.send(true).unwrap();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap()[&(0, String::new())].requests, 7);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Not kept without being the only writer: the next question computes.
        assert_eq!(cache.kept(), 0);
        cache
            .answer(&q(1), 0, || async { Ok::<_, ()>(cells(8)) })
            .await
            .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_kept_answer_lasts_until_the_next_commit() {
        let cache = QueryCache::new(true);
        let first = cache
            .answer(&q(1), 0, || async { Ok::<_, ()>(cells(1)) })
            .await
            .unwrap();
        let again = cache
            .answer(&q(1), 0, || async { Ok::<_, ()>(cells(2)) })
            .await
            .unwrap();
        assert_eq!(first[&(0, String::new())].requests, 1);
        assert_eq!(again[&(0, String::new())].requests, 1);
        // Another question, or the same with other raw reading, is its own.
        let other = cache
            .answer(&q(2), 0, || async { Ok::<_, ()>(cells(3)) })
            .await
            .unwrap();
        assert_eq!(other[&(0, String::new())].requests, 3);
        let exact = cache
            .answer(&q(1), 5, || async { Ok::<_, ()>(cells(4)) })
            .await
            .unwrap();
        assert_eq!(exact[&(0, String::new())].requests, 4);
        cache.committed();
        let after = cache
            .answer(&q(1), 0, || async { Ok::<_, ()>(cells(5)) })
            .await
            .unwrap();
        assert_eq!(after[&(0, String::new())].requests, 5);
        // Answers of older versions are gone.
        assert_eq!(cache.kept(), 1);
    }

    #[tokio::test]
    async fn failures_and_large_answers_are_not_kept() {
        let cache = QueryCache::new(true);
        let failed: Result<Cells, &str> = cache.answer(&q(1), 0, || async { Err("locked") }).await;
        assert!(failed.is_err());
        let ok = cache
            .answer(&q(1), 0, || async { Ok::<_, &str>(cells(1)) })
            .await
            .unwrap();
        assert_eq!(ok[&(0, String::new())].requests, 1);
        let big = cache
            .answer(&q(2), 0, || async {
                let mut c = Cells::new();
                for i in 0..=MAX_KEPT_CELLS as i64 {
                    c.insert((i, String::new()), Agg::default());
                }
                Ok::<_, &str>(c)
            })
            .await
            .unwrap();
        assert_eq!(big.len(), MAX_KEPT_CELLS + 1);
        assert_eq!(cache.kept(), 1);
        // The kept ones are bounded.
        for i in 10..(10 + 2 * MAX_KEPT as i64) {
            cache
                .answer(&q(i), 0, || async { Ok::<_, &str>(cells(1)) })
                .await
                .unwrap();
        }
        assert!(cache.kept() <= MAX_KEPT);
    }
}
