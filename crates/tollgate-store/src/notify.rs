//! Telling every replica that the control plane changed.
//!
//! Every control-plane change bumps the control version in its own
//! transaction ([`Tx::bump_control_version`](crate::Tx::bump_control_version)).
//! On PostgreSQL that transaction also runs `pg_notify` on
//! [`CONTROL_CHANNEL`] with the new version, which PostgreSQL delivers only
//! if and when the transaction commits; [`Store::watch_control`] listens on
//! that channel. On SQLite nothing is sent and the watch never fires: one
//! process holds the data directory, and the caller's poll of the control
//! version stays the only way to see a change made by the CLI.
//!
//! Notifications are a fast path, not a guarantee: a listener whose
//! connection drops misses what is sent until it reconnects, so after every
//! reconnection the watch reports [`ControlEvent::Resync`], and callers keep
//! polling the version as a backstop.

use crate::db::Db;
use crate::Store;
use sqlx::postgres::{PgListener, PgPool};
use std::time::Duration;
use tokio::sync::mpsc;

/// The PostgreSQL channel that carries control-plane changes. A constant:
/// nothing user-controlled goes into a channel name.
pub const CONTROL_CHANNEL: &str = "tollgate_control";

/// Events queued for a slow reader before further ones are dropped. Dropping
/// loses nothing: each event only says "read the control version again", and
/// the queued ones already make the reader do that.
const QUEUE: usize = 16;

/// The first wait before reconnecting a lost listener; doubled after each
/// failure up to [`RECONNECT_MAX`].
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// What [`ControlChanges::next`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlEvent {
    /// A change committed with this control version.
    Changed(i64),
    /// The listener connected or reconnected: changes committed before
    /// that were not seen, so the version must be read again. The first
    /// event on PostgreSQL, once the listener is live.
    Resync,
}

/// A stream of control-plane change events (see the module docs). Dropping
/// it stops the listener.
#[derive(Debug)]
pub struct ControlChanges {
    /// `None` on a backend without notifications (SQLite).
    rx: Option<mpsc::Receiver<ControlEvent>>,
}

impl ControlChanges {
    /// The next event. On SQLite this never resolves.
    pub async fn next(&mut self) -> ControlEvent {
        match &mut self.rx {
            Some(rx) => match rx.recv().await {
                Some(event) => event,
                // The listener task ended (its runtime is shutting down).
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// Does this backend send notifications at all?
    pub fn is_live(&self) -> bool {
        self.rx.is_some()
    }
}

impl Store {
    /// Watches for control-plane changes committed by any process on this
    /// database. On PostgreSQL this spawns a listener task (it must be
    /// called inside a Tokio runtime) that reports [`ControlEvent::Resync`]
    /// once it listens and again after every reconnection (with back-off
    /// from 100 ms to 5 s); on SQLite the returned watch never fires.
    pub fn watch_control(&self) -> ControlChanges {
        match &self.db {
            Db::Sqlite(_) => ControlChanges { rx: None },
            Db::Postgres(pool) => {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(listen(pool.clone(), tx));
                ControlChanges { rx: Some(rx) }
            }
        }
    }
}

/// Queues `event` unless the queue is full (see [`QUEUE`]). False once the
/// watch is dropped.
fn send(tx: &mpsc::Sender<ControlEvent>, event: ControlEvent) -> bool {
    !matches!(tx.try_send(event), Err(mpsc::error::TrySendError::Closed(_)))
}

/// Connects a listener on [`CONTROL_CHANNEL`], retrying with back-off until
/// it succeeds or the watch is dropped. Only the first failure is logged at
/// warn (the database may stay away for a while: one line per outage, not
/// one per attempt), and the success after it.
async fn connect(pool: &PgPool, tx: &mpsc::Sender<ControlEvent>) -> Option<PgListener> {
    let mut wait = RECONNECT_MIN;
    let mut failures = 0u32;
    loop {
        let attempt = async {
            let mut listener = PgListener::connect_with(pool).await?;
            // Reconnect ourselves, so that we know when to resync.
            listener.eager_reconnect(false);
            listener.listen(CONTROL_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match attempt.await {
            Ok(listener) => {
                if failures > 0 {
                    tracing::warn!(failures, "listening for control-plane changes again");
                }
                return Some(listener);
            }
            Err(e) if failures == 0 => {
                tracing::warn!(error = %e, "listening for control-plane changes failed; retrying with back-off until the database answers")
            }
            Err(e) => tracing::debug!(error = %e, retry_in = ?wait, "listening for control-plane changes failed"),
        }
        failures += 1;
        tokio::select! {
            _ = tx.closed() => return None,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(RECONNECT_MAX);
    }
}

/// The listener task: forwards notifications until the watch is dropped.
async fn listen(pool: PgPool, tx: mpsc::Sender<ControlEvent>) {
    loop {
        let Some(mut listener) = connect(&pool, &tx).await else {
            return;
        };
        // Whatever was sent before this listener existed was missed: since
        // the watch began (the first time) or since the connection was lost.
        if !send(&tx, ControlEvent::Resync) {
            return;
        }
        loop {
            let received = tokio::select! {
                _ = tx.closed() => return,
                r = listener.try_recv() => r,
            };
            match received {
                Ok(Some(n)) => {
                    // The payload is a version this crate wrote; anything
                    // else still means "look again".
                    let event = n.payload().parse().map_or(ControlEvent::Resync, ControlEvent::Changed);
                    if !send(&tx, event) {
                        return;
                    }
                }
                Ok(None) => {
                    tracing::warn!("the control-plane listener lost its connection; reconnecting");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the control-plane listener failed; reconnecting");
                    break;
                }
            }
        }
    }
}
