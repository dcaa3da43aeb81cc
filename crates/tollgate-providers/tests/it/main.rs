//! Integration tests of every provider adapter against its testkit mock.

// Integration tests: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod anthropic;
mod azure;
mod bedrock;
mod conformance;
mod google;
mod openai;
mod support;
mod vertex;
