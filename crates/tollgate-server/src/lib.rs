//! placeholder
pub mod alerts;
