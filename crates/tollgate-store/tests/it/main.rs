//! Integration tests of tollgate-store, one module per feature, in one binary
//! to keep link times down.

mod analytics;
mod counters;
mod notify;
mod postgres;
mod redis_breakers;
mod redis_counters;
mod usage_outage;
