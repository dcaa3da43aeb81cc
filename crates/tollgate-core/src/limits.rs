//! Budgets (usage limits) and rate limits: their wire shapes, validation and
//! the calendar windows they count in.
//!
//! Windows are derived from the clock alone (UTC minute, hour, day; the ISO
//! week starting Sunday; the calendar month), so a reset is just a new window
//! key and needs no job to run.

use crate::money::{parse_scaled, Money, MAX_BUDGET_USD, PICOS_PER_USD};
use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetKind {
    Cost,
    Tokens,
}

/// When a budget starts again from zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeriodicReset {
    Weekly,
    Monthly,
}

/// An amount in a budget's own unit: picodollars for cost, tokens for tokens.
pub type Amount = i64;

/// A budget as configured: `{type, credit_limit, alert_threshold, periodic_reset}`.
///
/// `credit_limit` and `alert_threshold` are held in the budget's unit
/// ([`Amount`]); on the wire they are dollars or tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UsageLimit {
    pub kind: BudgetKind,
    pub credit_limit: Amount,
    pub alert_threshold: Option<Amount>,
    pub periodic_reset: Option<PeriodicReset>,
}

/// Why a limit was refused at the admin API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LimitError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, LimitError> {
    Err(LimitError(msg.into()))
}

/// The wire form of a usage limit, as clients send it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageLimitWire {
    #[serde(rename = "type", default)]
    kind: Option<BudgetKind>,
    credit_limit: Option<serde_json::Number>,
    #[serde(default)]
    alert_threshold: Option<serde_json::Number>,
    #[serde(default)]
    periodic_reset: Option<PeriodicReset>,
    /// Read-only on output; tolerated on input so that a client can send back what it read.
    #[serde(default)]
    #[allow(dead_code)]
    next_usage_reset_at: Option<serde_json::Value>,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<serde_json::Value>,
}

impl UsageLimit {
    /// Validates and converts the wire form. `credit_limit` must be at least $1
    /// for cost and 100 for tokens; `alert_threshold` must be below it.
    pub fn from_json(v: &serde_json::Value) -> Result<UsageLimit, LimitError> {
        let w: UsageLimitWire =
            serde_json::from_value(v.clone()).map_err(|e| LimitError(format!("invalid usage limit: {e}")))?;
        let kind = w.kind.unwrap_or(BudgetKind::Cost);
        let Some(limit) = w.credit_limit else {
            return err("usage limit needs credit_limit");
        };
        let to_amount = |n: &serde_json::Number, what: &str| -> Result<Amount, LimitError> {
            let text = n.to_string();
            let v = match kind {
                BudgetKind::Cost => parse_scaled(&text, 12),
                BudgetKind::Tokens => {
                    parse_scaled(&text, 0).filter(|_| !text.contains(['.', 'e', 'E']) || n.as_u64().is_some())
                }
            };
            match v.and_then(|v| i64::try_from(v).ok()) {
                Some(v) if v >= 0 => Ok(v),
                _ => err(format!(
                    "{what} must be a non-negative {}",
                    match kind {
                        BudgetKind::Cost => "number of dollars",
                        BudgetKind::Tokens => "whole number of tokens",
                    }
                )),
            }
        };
        let credit_limit = to_amount(&limit, "credit_limit")?;
        match kind {
            BudgetKind::Cost if credit_limit < PICOS_PER_USD => {
                return err("credit_limit for a cost budget must be at least 1 (US dollar)")
            }
            BudgetKind::Cost if credit_limit > MAX_BUDGET_USD * PICOS_PER_USD => {
                return err(format!(
                    "credit_limit for a cost budget must be at most {MAX_BUDGET_USD}"
                ))
            }
            BudgetKind::Tokens if credit_limit < 100 => {
                return err("credit_limit for a token budget must be at least 100 (tokens)")
            }
            _ => {}
        }
        let alert_threshold = match &w.alert_threshold {
            Some(n) => {
                let a = to_amount(n, "alert_threshold")?;
                if a >= credit_limit {
                    return err("alert_threshold must be below credit_limit");
                }
                Some(a)
            }
            None => None,
        };
        Ok(UsageLimit {
            kind,
            credit_limit,
            alert_threshold,
            periodic_reset: w.periodic_reset,
        })
    }

    /// Converts an amount in this budget's unit to its wire number.
    pub fn amount_json(&self, a: Amount) -> serde_json::Value {
        match self.kind {
            BudgetKind::Cost => serde_json::json!(Money(a).as_usd_f64()),
            BudgetKind::Tokens => serde_json::json!(a),
        }
    }

    /// The wire form, with `next_usage_reset_at` computed for `now`.
    pub fn to_json(&self, now: DateTime<Utc>) -> serde_json::Value {
        serde_json::json!({
            "type": self.kind,
            "credit_limit": self.amount_json(self.credit_limit),
            "alert_threshold": self.alert_threshold.map(|a| self.amount_json(a)),
            "periodic_reset": self.periodic_reset,
            "next_usage_reset_at": self.periodic_reset.map(|r| next_reset(r, now).to_rfc3339()),
        })
    }

    /// The start of the budget period containing `now`; for a budget with no
    /// reset, the time it was set (`set_at`), which is where counting starts.
    pub fn period_start(&self, now: DateTime<Utc>, set_at: DateTime<Utc>) -> DateTime<Utc> {
        match self.periodic_reset {
            None => set_at,
            Some(r) => period_start(r, now).max(set_at),
        }
    }
}

/// The start of the reset period that contains `t`.
pub fn period_start(r: PeriodicReset, t: DateTime<Utc>) -> DateTime<Utc> {
    let day = t.date_naive();
    let start = match r {
        PeriodicReset::Weekly => day - Duration::days(day.weekday().num_days_from_sunday() as i64),
        PeriodicReset::Monthly => day.with_day(1).unwrap_or(day),
    };
    midnight(start)
}

/// The first reset strictly after `t`.
pub fn next_reset(r: PeriodicReset, t: DateTime<Utc>) -> DateTime<Utc> {
    let start = period_start(r, t).date_naive();
    let next = match r {
        PeriodicReset::Weekly => start + Duration::days(7),
        PeriodicReset::Monthly => {
            let (y, m) = if start.month() == 12 {
                (start.year() + 1, 1)
            } else {
                (start.year(), start.month() + 1)
            };
            NaiveDate::from_ymd_opt(y, m, 1).unwrap_or(start)
        }
    };
    midnight(next)
}

fn midnight(d: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&d.and_time(chrono::NaiveTime::MIN))
}

/// What a rate limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateKind {
    Requests,
    Tokens,
}

/// The window of a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateUnit {
    Rpm,
    Rph,
    Rpd,
}

impl RateUnit {
    pub fn seconds(self) -> i64 {
        match self {
            RateUnit::Rpm => 60,
            RateUnit::Rph => 3_600,
            RateUnit::Rpd => 86_400,
        }
    }

    /// The fixed UTC window `[start, end)` that contains `t`.
    pub fn window(self, t: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        let start = match self {
            RateUnit::Rpm => t.with_second(0).and_then(|t| t.with_nanosecond(0)),
            RateUnit::Rph => t
                .with_minute(0)
                .and_then(|t| t.with_second(0))
                .and_then(|t| t.with_nanosecond(0)),
            RateUnit::Rpd => Some(midnight(t.date_naive())),
        }
        .unwrap_or(t);
        (start, start + Duration::seconds(self.seconds()))
    }
}

/// A rate limit: `{type, unit, value}`. `value: 0` disables what it applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    #[serde(rename = "type", default = "default_rate_kind")]
    pub kind: RateKind,
    pub unit: RateUnit,
    pub value: u64,
}

fn default_rate_kind() -> RateKind {
    RateKind::Requests
}

impl RateLimit {
    pub fn from_json(v: &serde_json::Value) -> Result<RateLimit, LimitError> {
        serde_json::from_value(v.clone()).map_err(|e| LimitError(format!("invalid rate limit: {e}")))
    }
}

/// Reads "an object or a one-element array" (API.md) as at most one item.
/// `null`, `[]` and an absent field are `None`.
pub fn one_or_none(v: Option<&serde_json::Value>) -> Result<Option<&serde_json::Value>, LimitError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Array(items)) => match items.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one)),
            _ => err("at most one limit of each kind may be set at a level"),
        },
        Some(o @ serde_json::Value::Object(_)) => Ok(Some(o)),
        Some(_) => err("a limit must be an object or a one-element array"),
    }
}

/// Parses an optional usage limit in either accepted shape.
pub fn parse_usage_limit(v: Option<&serde_json::Value>) -> Result<Option<UsageLimit>, LimitError> {
    one_or_none(v)?.map(UsageLimit::from_json).transpose()
}

/// Parses an optional rate limit in either accepted shape.
pub fn parse_rate_limit(v: Option<&serde_json::Value>) -> Result<Option<RateLimit>, LimitError> {
    one_or_none(v)?.map(RateLimit::from_json).transpose()
}

/// Serde helpers so that stored limits round-trip through JSON columns.
impl Serialize for UsageLimit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        StoredUsageLimit::from(*self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for UsageLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        StoredUsageLimit::deserialize(d).map(Into::into)
    }
}

/// Storage form: amounts in the budget's own integer unit, no float anywhere.
#[derive(Serialize, Deserialize)]
struct StoredUsageLimit {
    kind: BudgetKind,
    credit_limit: Amount,
    alert_threshold: Option<Amount>,
    periodic_reset: Option<PeriodicReset>,
}

impl From<UsageLimit> for StoredUsageLimit {
    fn from(u: UsageLimit) -> Self {
        Self {
            kind: u.kind,
            credit_limit: u.credit_limit,
            alert_threshold: u.alert_threshold,
            periodic_reset: u.periodic_reset,
        }
    }
}

impl From<StoredUsageLimit> for UsageLimit {
    fn from(u: StoredUsageLimit) -> Self {
        Self {
            kind: u.kind,
            credit_limit: u.credit_limit,
            alert_threshold: u.alert_threshold,
            periodic_reset: u.periodic_reset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn rate_windows_are_fixed_utc_windows() {
        let now = t("2024-02-29T23:59:59.900Z");
        assert_eq!(
            RateUnit::Rpm.window(now),
            (t("2024-02-29T23:59:00Z"), t("2024-03-01T00:00:00Z"))
        );
        assert_eq!(
            RateUnit::Rph.window(now),
            (t("2024-02-29T23:00:00Z"), t("2024-03-01T00:00:00Z"))
        );
        assert_eq!(
            RateUnit::Rpd.window(now),
            (t("2024-02-29T00:00:00Z"), t("2024-03-01T00:00:00Z"))
        );
        let next = t("2024-03-01T00:00:00Z");
        assert_eq!(RateUnit::Rpm.window(next).0, next);
    }

    #[test]
    fn weekly_periods_start_sunday_midnight_utc() {
        // 2026-11-26 is a Thursday.
        let now = t("2026-11-26T10:00:00Z");
        assert_eq!(period_start(PeriodicReset::Weekly, now), t("2026-11-22T00:00:00Z"));
        assert_eq!(next_reset(PeriodicReset::Weekly, now), t("2026-11-29T00:00:00Z"));
        // A Sunday at midnight starts its own week.
        let sunday = t("2026-11-29T00:00:00Z");
        assert_eq!(period_start(PeriodicReset::Weekly, sunday), sunday);
        assert_eq!(next_reset(PeriodicReset::Weekly, sunday), t("2026-12-06T00:00:00Z"));
        // Across a year end.
        assert_eq!(
            next_reset(PeriodicReset::Weekly, t("2026-12-31T12:00:00Z")),
            t("2027-01-03T00:00:00Z")
        );
    }

    #[test]
    fn monthly_periods_handle_month_ends_and_leap_years() {
        assert_eq!(
            period_start(PeriodicReset::Monthly, t("2024-02-29T23:59:59Z")),
            t("2024-02-01T00:00:00Z")
        );
        assert_eq!(
            next_reset(PeriodicReset::Monthly, t("2024-02-29T23:59:59Z")),
            t("2024-03-01T00:00:00Z")
        );
        assert_eq!(
            next_reset(PeriodicReset::Monthly, t("2023-02-28T00:00:00Z")),
            t("2023-03-01T00:00:00Z")
        );
        assert_eq!(
            next_reset(PeriodicReset::Monthly, t("2026-12-31T23:59:59Z")),
            t("2027-01-01T00:00:00Z")
        );
        assert_eq!(
            next_reset(PeriodicReset::Monthly, t("2026-01-31T00:00:00Z")),
            t("2026-02-01T00:00:00Z")
        );
    }

    #[test]
    fn budgets_count_from_when_they_were_set() {
        let set_at = t("2026-11-26T09:00:00Z");
        let monthly =
            UsageLimit::from_json(&json!({"type":"cost","credit_limit":10,"periodic_reset":"monthly"})).unwrap();
        assert_eq!(monthly.period_start(t("2026-11-27T00:00:00Z"), set_at), set_at);
        assert_eq!(
            monthly.period_start(t("2026-12-02T00:00:00Z"), set_at),
            t("2026-12-01T00:00:00Z")
        );
        let forever = UsageLimit {
            periodic_reset: None,
            ..monthly
        };
        assert_eq!(forever.period_start(t("2027-06-01T00:00:00Z"), set_at), set_at);
    }

    #[test]
    fn usage_limits_are_validated() {
        let ok = UsageLimit::from_json(
            &json!({"type":"cost","credit_limit":100,"alert_threshold":80,"periodic_reset":"monthly"}),
        )
        .unwrap();
        assert_eq!(ok.credit_limit, 100 * PICOS_PER_USD);
        assert_eq!(ok.alert_threshold, Some(80 * PICOS_PER_USD));
        let fractional = UsageLimit::from_json(&json!({"type":"cost","credit_limit":1.5})).unwrap();
        assert_eq!(fractional.credit_limit, 1_500_000_000_000);
        let tokens = UsageLimit::from_json(&json!({"type":"tokens","credit_limit":1000})).unwrap();
        assert_eq!(tokens.credit_limit, 1000);
        for bad in [
            json!({"type":"cost","credit_limit":0.5}),
            json!({"type":"tokens","credit_limit":99}),
            json!({"type":"tokens","credit_limit":100.5}),
            json!({"type":"cost","credit_limit":10,"alert_threshold":10}),
            json!({"type":"cost","credit_limit":-5}),
            json!({"type":"cost"}),
            json!({"type":"dollars","credit_limit":5}),
            json!({"type":"cost","credit_limit":5,"surprise":1}),
            json!({"type":"cost","credit_limit":5,"periodic_reset":"daily"}),
        ] {
            assert!(UsageLimit::from_json(&bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn usage_limits_round_trip_through_storage_and_wire() {
        let u = UsageLimit::from_json(
            &json!({"type":"cost","credit_limit":2.25,"alert_threshold":1,"periodic_reset":"weekly"}),
        )
        .unwrap();
        let stored = serde_json::to_string(&u).unwrap();
        assert_eq!(serde_json::from_str::<UsageLimit>(&stored).unwrap(), u);
        let wire = u.to_json(t("2026-11-26T10:00:00Z"));
        assert_eq!(wire["credit_limit"], json!(2.25));
        assert_eq!(wire["next_usage_reset_at"], json!("2026-11-29T00:00:00+00:00"));
        assert_eq!(UsageLimit::from_json(&wire).unwrap(), u);
    }

    #[test]
    fn limits_may_be_objects_or_one_element_arrays() {
        let r = json!({"type":"requests","unit":"rpm","value":50});
        assert_eq!(
            parse_rate_limit(Some(&r)).unwrap(),
            parse_rate_limit(Some(&json!([r.clone()]))).unwrap()
        );
        assert_eq!(parse_rate_limit(Some(&json!([]))).unwrap(), None);
        assert_eq!(parse_rate_limit(Some(&json!(null))).unwrap(), None);
        assert_eq!(parse_rate_limit(None).unwrap(), None);
        assert!(parse_rate_limit(Some(&json!([r.clone(), r.clone()]))).is_err());
        assert!(parse_rate_limit(Some(&json!("rpm"))).is_err());
        assert!(parse_rate_limit(Some(&json!({"type":"requests","unit":"rps","value":1}))).is_err());
        assert!(parse_rate_limit(Some(&json!({"type":"requests","unit":"rpm","value":-1}))).is_err());
    }
}
