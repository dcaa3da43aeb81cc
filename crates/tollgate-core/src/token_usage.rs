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

/// The most tokens one request is believed to use, per field. An upstream
/// may report anything (a custom host can point anywhere): larger figures are
/// clamped to this, so that no sum over the request log can overflow.
pub const MAX_REQUEST_TOKENS: u64 = 1_000_000_000;

impl Usage {
    /// Prompt plus completion tokens, saturating.
    pub fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    /// This usage with every figure at most [`MAX_REQUEST_TOKENS`] (and the
    /// cached tokens at most the prompt tokens), and whether anything was
    /// clamped.
    pub fn clamped(self) -> (Usage, bool) {
        let prompt_tokens = self.prompt_tokens.min(MAX_REQUEST_TOKENS);
        let u = Usage {
            prompt_tokens,
            completion_tokens: self.completion_tokens.min(MAX_REQUEST_TOKENS),
            cached_tokens: self.cached_tokens.min(prompt_tokens),
        };
        (u, u != self)
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
    fn absurd_usage_is_clamped_and_totals_saturate() {
        let huge = Usage {
            prompt_tokens: u64::MAX,
            completion_tokens: i64::MAX as u64,
            cached_tokens: u64::MAX,
        };
        assert_eq!(huge.total(), u64::MAX);
        let (u, clamped) = huge.clamped();
        assert!(clamped);
        assert_eq!(u.prompt_tokens, MAX_REQUEST_TOKENS);
        assert_eq!(u.completion_tokens, MAX_REQUEST_TOKENS);
        assert_eq!(u.cached_tokens, MAX_REQUEST_TOKENS);
        assert_eq!(u.total(), 2 * MAX_REQUEST_TOKENS);
        let sane = Usage {
            prompt_tokens: 10,
            completion_tokens: 5,
            cached_tokens: 3,
        };
        assert_eq!(sane.clamped(), (sane, false));
    }

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
