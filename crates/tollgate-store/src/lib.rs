//! Tollgate's storage. Everything the server keeps goes through [`Store`],
//! whichever database backs it.
//!
//! - [`db`]: the backends ([`db::Location`]: the embedded SQLite database in
//!   the data directory unless `database_url` names another), opening and
//!   migrating them.
//! - [`control`]: the control-plane records (workspaces, API keys,
//!   integrations, providers, configs) and the audit trail.
//! - [`request_log`]: the request log and its batching background writer.
//! - [`journal`]: where that writer puts each record before its request is
//!   answered, so that the database commit can come later, in batches.
//! - [`spill`]: where that writer keeps records while PostgreSQL is down.
//! - [`analytics`]: the aggregate, roll-ups and query planner.
//! - `dialect`: what the request log and analytics need of a backend's SQL
//!   and driver, so that their queries are written once.
//! - [`outbox`]: the durable outbox of budget alerts.
//! - [`notify`]: telling every replica that the control plane changed.
//! - [`sessions`]: dashboard sign-in sessions, shared by every replica.
//! - [`counters`]: limit counters (in memory).
//! - [`secrets`]: envelope encryption of secret fields.
//! - [`transfer`]: copying the embedded database into PostgreSQL
//!   (`tollgate migrate --to`).

pub mod analytics;
pub mod control;
pub mod counters;
pub mod db;
mod dialect;
pub mod guards;
pub mod journal;
pub mod notify;
pub mod outbox;
mod query_cache;
mod repo;
pub mod request_log;
pub mod secrets;
pub mod sessions;
pub mod spill;
pub mod transfer;

pub use control::{ControlData, Store, StoreError, Tx};
pub use db::Location;
pub use notify::{ControlChanges, ControlEvent};
pub use repo::{Analytics, RequestLog};
