//! The server's integration tests: one binary, one module per feature.

mod admin;
mod alerts;
mod analytics;
mod cli;
mod gateway;
mod limits;
mod protocols;
mod provisioning;
mod routing;
mod support;
