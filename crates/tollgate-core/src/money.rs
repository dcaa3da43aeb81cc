//! Exact money. Amounts are integer picodollars (10⁻¹² USD) in an `i64`, so
//! sums and comparisons are exact and an `i64` holds up to about $9.2 million,
//! well past any budget Tollgate accepts ([`MAX_BUDGET_USD`]). Prices are
//! picodollars per token, which represents every published per-token price
//! (down to $0.000001 per million tokens) without rounding.
//!
//! Decimal input (Portkey's cents-per-token prices, dollar budgets) is parsed
//! from its decimal text, never through a float.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Picodollars in one US dollar.
pub const PICOS_PER_USD: i64 = 1_000_000_000_000;
/// Picodollars in one US cent.
pub const PICOS_PER_CENT: i64 = 10_000_000_000;
/// The largest cost budget accepted, in dollars.
pub const MAX_BUDGET_USD: i64 = 1_000_000;

/// An exact amount of US dollars, in picodollars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Money(pub i64);

impl Money {
    pub const ZERO: Money = Money(0);

    pub fn from_usd(dollars: i64) -> Money {
        Money(dollars.saturating_mul(PICOS_PER_USD))
    }

    /// Parses a decimal number of dollars (`"12.5"`, `"1e-3"`).
    pub fn parse_usd(s: &str) -> Option<Money> {
        parse_scaled(s, 12).and_then(|v| i64::try_from(v).ok()).map(Money)
    }

    pub fn picos(self) -> i64 {
        self.0
    }

    pub fn saturating_add(self, o: Money) -> Money {
        Money(self.0.saturating_add(o.0))
    }

    /// The amount in dollars as a float, for display in JSON only.
    pub fn as_usd_f64(self) -> f64 {
        // Split to keep the integer part exact before the division.
        (self.0 / PICOS_PER_USD) as f64 + (self.0 % PICOS_PER_USD) as f64 / PICOS_PER_USD as f64
    }
}

impl fmt::Display for Money {
    /// Exact decimal dollars, trailing zeros trimmed: `0.0045`, `12`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let neg = self.0 < 0;
        let abs = self.0.unsigned_abs();
        let whole = abs / PICOS_PER_USD as u64;
        let frac = abs % PICOS_PER_USD as u64;
        if neg {
            f.write_str("-")?;
        }
        if frac == 0 {
            write!(f, "{whole}")
        } else {
            let digits = format!("{frac:012}");
            write!(f, "{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

/// A price per token, in picodollars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Price(pub i64);

impl Price {
    pub const FREE: Price = Price(0);

    /// From Portkey's unit, US cents per token (`0.00025` = $2.50 per million).
    pub fn parse_cents_per_token(s: &str) -> Option<Price> {
        parse_scaled(s, 10)
            .and_then(|v| i64::try_from(v).ok())
            .filter(|v| *v >= 0)
            .map(Price)
    }

    /// From dollars per million tokens, the unit of the shipped price table.
    pub fn parse_usd_per_million(s: &str) -> Option<Price> {
        parse_scaled(s, 6)
            .and_then(|v| i64::try_from(v).ok())
            .filter(|v| *v >= 0)
            .map(Price)
    }

    /// This price in cents per token, exact, as decimal text.
    pub fn cents_per_token(self) -> String {
        scaled_to_string(self.0 as i128, 10)
    }

    /// This price in dollars per million tokens, exact, as decimal text.
    pub fn usd_per_million(self) -> String {
        scaled_to_string(self.0 as i128, 6)
    }

    /// The cost of `tokens` tokens at this price, saturating.
    pub fn cost(self, tokens: u64) -> Money {
        let v = (self.0 as i128) * (tokens as i128);
        Money(v.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
    }
}

/// Parses decimal text (optionally with an exponent) into an integer scaled by
/// `10^scale`, rounding half away from zero past the last representable digit.
/// Returns `None` for anything that is not a finite decimal number or that does
/// not fit.
pub fn parse_scaled(s: &str, scale: u32) -> Option<i128> {
    let s = s.trim();
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], s[i + 1..].parse::<i32>().ok()?),
        None => (s, 0),
    };
    let (neg, mantissa) = match mantissa.as_bytes().first()? {
        b'-' => (true, &mantissa[1..]),
        b'+' => (false, &mantissa[1..]),
        _ => (false, mantissa),
    };
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((i, f)) => (i, f),
        None => (mantissa, ""),
    };
    if (int_part.is_empty() && frac_part.is_empty())
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // All digits as one integer, and the power of ten it must be multiplied by.
    let digits: String = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    let shift = scale as i64 + exp as i64 - frac_part.len() as i64;
    if digits.is_empty() {
        return Some(0);
    }
    if digits.len() > 38 {
        return None;
    }
    let n: i128 = digits.parse().ok()?;
    let v = if shift >= 0 {
        let p = 10i128.checked_pow(u32::try_from(shift).ok()?)?;
        n.checked_mul(p)?
    } else {
        let drop = u32::try_from(-shift).ok()?;
        if drop > 38 {
            0
        } else {
            let p = 10i128.pow(drop);
            let q = n / p;
            if (n % p) * 2 >= p {
                q + 1
            } else {
                q
            }
        }
    };
    Some(if neg { -v } else { v })
}

fn scaled_to_string(v: i128, scale: u32) -> String {
    let p = 10i128.pow(scale);
    let (neg, a) = (v < 0, v.unsigned_abs());
    let whole = a / p as u128;
    let frac = a % p as u128;
    let sign = if neg { "-" } else { "" };
    if frac == 0 {
        format!("{sign}{whole}")
    } else {
        let digits = format!("{frac:0width$}", width = scale as usize);
        format!("{sign}{whole}.{}", digits.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_decimal_text_exactly() {
        assert_eq!(parse_scaled("0.00025", 10), Some(2_500_000));
        assert_eq!(parse_scaled("1e-7", 10), Some(1000));
        assert_eq!(parse_scaled("2.5E2", 0), Some(250));
        assert_eq!(parse_scaled("-1.5", 1), Some(-15));
        assert_eq!(parse_scaled("0.15", 1), Some(2), "rounds half away from zero");
        assert_eq!(parse_scaled("0.000", 3), Some(0));
        assert_eq!(parse_scaled("abc", 3), None);
        assert_eq!(parse_scaled("", 3), None);
        assert_eq!(parse_scaled(".", 3), None);
        assert_eq!(parse_scaled("1e999", 3), None);
    }

    #[test]
    fn portkey_cent_prices_become_picodollars() {
        // 0.00025 cents per token = $2.50 per million tokens.
        let p = Price::parse_cents_per_token("0.00025").unwrap();
        assert_eq!(p, Price::parse_usd_per_million("2.5").unwrap());
        assert_eq!(p.cost(1_000_000), Money::parse_usd("2.5").unwrap());
        assert_eq!(p.cents_per_token(), "0.00025");
        assert_eq!(p.usd_per_million(), "2.5");
        // A price that is not a whole number of picodollars per million tokens still is per token.
        let cached = Price::parse_usd_per_million("0.01875").unwrap();
        assert_eq!(cached.cost(3), Money(56_250));
        assert!(Price::parse_cents_per_token("-1").is_none());
    }

    #[test]
    fn money_displays_exact_dollars() {
        assert_eq!(Money::parse_usd("0.0045").unwrap().to_string(), "0.0045");
        assert_eq!(Money::from_usd(12).to_string(), "12");
        assert_eq!(Money(-1).to_string(), "-0.000000000001");
        assert_eq!(Money::parse_usd("0.3").unwrap().as_usd_f64(), 0.3);
    }
}
