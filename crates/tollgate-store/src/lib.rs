//! Tollgate's storage.
//!
//! - [`db`]: opening the database (SQLite in WAL mode for the embedded
//!   default) and running migrations.
//! - [`control`]: the control-plane records (workspaces, API keys,
//!   integrations, providers) and the audit trail.
//! - [`usage`]: the request log and its batching background writer.

pub mod analytics;
pub mod control;
pub mod counters;
pub mod db;
pub mod outbox;
pub mod secrets;
pub mod usage;

pub use control::{ControlData, Store, StoreError, Tx};
/// Database errors, as the driver reports them.
pub use sqlx::Error as DbError;
