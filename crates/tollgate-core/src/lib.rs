//! Tollgate's domain: the types and rules every other crate shares, with no I/O.
//!
//! - [`admission`]: the arithmetic of admitting requests against limits and settling them.
//! - [`ids`]: ids, slugs and API key material.
//! - [`money`]: exact money (integer picodollars) and prices.
//! - [`clock`]: the injectable clock every time-dependent rule reads.
//! - [`limits`]: budgets and rate limits, their validation and their windows.
//! - [`limit_owner`]: who a limit belongs to, and the counter key it counts under.
//! - [`catalogue`]: the providers and models Tollgate knows, shipped as data.
//! - [`token_usage`]: token usage as reported by an upstream, and its cost.
//! - [`routing`]: routing configs (fallback, load balancing, retries, timeouts).

pub mod admission;
pub mod catalogue;
pub mod clock;
pub mod ids;
pub mod limit_owner;
pub mod limits;
pub mod money;
pub mod records;
pub mod routing;
pub mod secrets;
pub mod token_usage;

pub use clock::{Clock, ManualClock, SystemClock};
pub use money::{Money, Price};
