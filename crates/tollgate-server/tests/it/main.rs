//! The server's integration tests: one binary, one module per feature.

mod admin;
mod analytics;
mod gateway;
mod limits;
mod protocols;
mod provisioning;
mod alerts;
mod cli;
mod support;
