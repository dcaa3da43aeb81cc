//! Integration tests of every provider adapter against its testkit mock.

mod anthropic;
mod azure;
mod bedrock;
mod conformance;
mod google;
mod openai;
mod support;
mod vertex;
