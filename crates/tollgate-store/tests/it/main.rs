//! Integration tests of tollgate-store, one module per feature, in one binary
//! to keep link times down.

mod counters;
mod redis_counters;
