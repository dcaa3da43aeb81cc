//! The server's integration tests: one binary, one module per feature.

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
mod postgres;
mod protocols;
mod provisioning;
mod redis;
mod rejections;
mod replicas;
mod routing;
mod support;
