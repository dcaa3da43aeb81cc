//! Integration tests of tollgate-store, one module per feature, in one binary
//! to keep link times down.

// Integration tests: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod analytics;
mod counters;
mod journal;
mod notify;
mod postgres;
mod redis_breakers;
mod redis_cluster;
mod redis_counters;
mod request_log;
mod usage_outage;
