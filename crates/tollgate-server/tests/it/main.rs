//! The server's integration tests: one binary, one module per feature.

// Integration tests: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod admin;
mod alerts;
mod analytics;
mod cli;
mod connections;
mod dashboard;
mod dialects;
mod durability;
mod gateway;
mod hardening;
mod input_bounds;
mod limits;
mod metrics;
mod nginx;
mod pg_outage;
mod postgres;
mod protocols;
mod provisioning;
mod redis;
mod redis_cluster;
mod rejections;
mod replica_lock;
mod replicas;
mod routing;
mod support;
