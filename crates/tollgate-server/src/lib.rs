//! The Tollgate server: the admin API (control plane), the gateway (data
//! plane), metrics, and the `tollgate` binary's commands.
//!
//! - [`server`]: start-up (data directory, master key, database, first-run
//!   bootstrap), the router, graceful shutdown.
//! - [`state`]: shared state and the control-plane write path.
//! - [`snapshot`]: the in-memory control plane the gateway reads.
//! - [`auth`]: API keys and scopes.
//! - [`control`]: the control-plane service: every change, typed, with its
//!   validation, permissions and audit entry.
//! - [`admin`]: control-plane routes (HTTP over [`control`]).
//! - [`gateway`]: data-plane routes, one request's path end to end.
//! - [`limit_check`], [`alerts`]: limits at the gateway, and budget
//!   alerts by email and webhook through a durable outbox.
//! - [`analytics_api`]: the analytics API (its queries are in the store).
//! - [`error`]: every error and its wire form, in one table.
//! - [`dashboard`]: the admin web UI, server-rendered over the admin API.
//! - [`config`], [`cli`]: configuration and commands.

pub mod admin;
pub mod alerts;
pub mod analytics_api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod control;
pub mod dashboard;
pub mod error;
pub mod gateway;
pub mod limit_check;
pub mod metrics;
pub mod seed;
pub mod server;
pub mod snapshot;
pub mod state;
