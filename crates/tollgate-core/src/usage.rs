//! Token usage as an upstream reports it, and what it costs.

use crate::money::{Money, Price};
use serde::{Deserialize, Serialize};

/// Tokens used by one request, in OpenAI's terms: `prompt_tokens` includes
/// `cached_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    #[serde(default)]
    pub cached_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// The price of a model: per input, output and cached-input token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ModelPrice {
    pub input: Price,
    pub output: Price,
    /// Price of a cached prompt token; the input price when the provider has none.
    pub cached_input: Price,
}

impl ModelPrice {
    pub const FREE: ModelPrice = ModelPrice {
        input: Price::FREE,
        output: Price::FREE,
        cached_input: Price::FREE,
    };

    /// The exact cost of `usage` at this price.
    pub fn cost(&self, usage: &Usage) -> Money {
        let cached = usage.cached_tokens.min(usage.prompt_tokens);
        let uncached = usage.prompt_tokens - cached;
        self.input
            .cost(uncached)
            .saturating_add(self.cached_input.cost(cached))
            .saturating_add(self.output.cost(usage.completion_tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_exact_and_splits_cached_tokens() {
        let price = ModelPrice {
            input: Price::parse_usd_per_million("2.5").unwrap(),
            output: Price::parse_usd_per_million("10").unwrap(),
            cached_input: Price::parse_usd_per_million("1.25").unwrap(),
        };
        let u = Usage {
            prompt_tokens: 1000,
            completion_tokens: 200,
            cached_tokens: 400,
        };
        // 600 × 2.5e-6 + 400 × 1.25e-6 + 200 × 1e-5 = 0.0015 + 0.0005 + 0.002
        assert_eq!(price.cost(&u), Money::parse_usd("0.004").unwrap());
        assert_eq!(ModelPrice::FREE.cost(&u), Money::ZERO);
        assert_eq!(u.total(), 1200);
    }
}
