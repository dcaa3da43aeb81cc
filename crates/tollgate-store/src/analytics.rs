//! Analytics over the request log: the aggregate ([`Agg`]) every metric is
//! derived from, the daily roll-ups that keep large ranges fast, and the
//! query planner that answers a [`Query`] from roll-ups and raw rows.
//!
//! Roll-ups (`usage_daily`) hold one row per UTC day and (workspace, API key,
//! provider, AI provider, model, status code) with exact integer sums and
//! sparse log-scale histograms of latency, time to first token and gateway
//! overhead. [`roll_up`] updates them in the same transaction that inserts the
//! request-log rows, so they are never behind the log.
//!
//! A query is split into whole days read from roll-ups and partial days at
//! either end read from raw rows, so every figure is exact for any time range
//! except percentiles, which come from histograms once a roll-up is involved
//! (relative error at most 1/32, about 3.1%: see [`Dist`]). Queries whose
//! filters are per request (token or cost range, metadata) or whose buckets
//! are finer than a day read raw rows only, day by day to bound memory.

use crate::dialect::{statement_chunks, Backend};
use crate::request_log::LogRecord;
use sqlx::postgres::PgConnection;
use sqlx::{Pool, Postgres, QueryBuilder, Sqlite, SqliteConnection};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Milliseconds in a UTC day.
pub const DAY_MS: i64 = 86_400_000;
/// Milliseconds in a minute.
pub const MINUTE_MS: i64 = 60_000;
/// Most values a [`Dist`] keeps for exact percentiles before it relies on
/// its histogram alone.
const EXACT_MAX: usize = 200_000;
/// Sub-buckets per power of two: 2^4 = 16, so a bucket spans at most 1/16 of
/// its lower bound and its midpoint is within 1/32 of any value in it.
const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;

/// The histogram bucket of `v`: values below 32 have a bucket each; above,
/// every power of two is split into 16 equal sub-buckets.
pub fn bucket_of(v: u64) -> u16 {
    if v < SUB {
        return v as u16;
    }
    let lz = 63 - v.leading_zeros();
    let sub = (v >> (lz - SUB_BITS)) & (SUB - 1);
    ((u64::from(lz - SUB_BITS + 1)) * SUB + sub) as u16
}

/// The histogram buckets of one request, stored with its log row (see
/// [`raw_histograms`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buckets {
    pub latency: i64,
    pub ttft: Option<i64>,
    pub overhead: Option<i64>,
}

impl Buckets {
    /// The buckets of the values as the log stores them (at most `i64::MAX`).
    pub fn of(r: &LogRecord) -> Buckets {
        let stored = |v: u64| v.min(i64::MAX as u64);
        let b = |v: u64| i64::from(bucket_of(v));
        let latency = stored(r.latency_us);
        Buckets {
            latency: b(latency),
            ttft: r.ttft_us.map(|t| b(stored(t))),
            overhead: r.upstream_latency_us.map(|u| b(latency.saturating_sub(stored(u)))),
        }
    }
}

/// The `[low, high)` range of values bucket `b` holds.
pub fn bucket_range(b: u16) -> (u64, u64) {
    let b = u64::from(b);
    if b < SUB {
        return (b, b + 1);
    }
    let exp = b / SUB - 1; // how far the sub-bucket width is shifted
    let sub = b % SUB;
    ((SUB + sub) << exp, (SUB + sub + 1) << exp)
}

/// The value reported for bucket `b`: exact for one-value buckets, else
/// the midpoint.
fn bucket_value(b: u16) -> u64 {
    let (lo, hi) = bucket_range(b);
    if hi - lo == 1 {
        lo
    } else {
        lo + (hi - lo) / 2
    }
}

/// A distribution of microsecond values: a histogram always, and the
/// values themselves while they all came from raw rows (so percentiles over
/// raw rows are exact).
#[derive(Debug, Clone)]
pub struct Dist {
    /// Count per bucket, dense (at most ~1000 buckets), grown as needed.
    hist: Vec<u64>,
    n: u64,
    exact: Option<Vec<u64>>,
}

impl Default for Dist {
    fn default() -> Self {
        Dist {
            hist: Vec::new(),
            n: 0,
            exact: Some(Vec::new()),
        }
    }
}

impl Dist {
    pub fn count(&self) -> u64 {
        self.n
    }

    fn bump(&mut self, b: u16, c: u64) {
        let i = usize::from(b);
        if self.hist.len() <= i {
            self.hist.resize(i + 1, 0);
        }
        self.hist[i] += c;
    }

    pub fn add(&mut self, v: u64) {
        self.bump(bucket_of(v), 1);
        self.n += 1;
        if let Some(e) = &mut self.exact {
            if e.len() < EXACT_MAX {
                e.push(v);
            } else {
                self.exact = None;
            }
        }
    }

    /// Adds another distribution.
    pub fn merge(&mut self, o: &Dist) {
        if o.n == 0 {
            return;
        }
        if self.hist.len() < o.hist.len() {
            self.hist.resize(o.hist.len(), 0);
        }
        for (a, b) in self.hist.iter_mut().zip(&o.hist) {
            *a += b;
        }
        self.n += o.n;
        self.exact = match (self.exact.take(), &o.exact) {
            (Some(mut a), Some(b)) if a.len() + b.len() <= EXACT_MAX => {
                a.extend_from_slice(b);
                Some(a)
            }
            _ => None,
        };
    }

    /// Nearest-rank percentile, `per_mille` / 1000: the smallest value with
    /// at least ⌈q·n⌉ values at or below it. `None` without values.
    pub fn quantile(&self, per_mille: u64) -> Option<u64> {
        if self.n == 0 {
            return None;
        }
        let rank = (per_mille * self.n).div_ceil(1000).max(1);
        if let Some(e) = &self.exact {
            let mut v = e.clone();
            let i = (rank as usize - 1).min(v.len().saturating_sub(1));
            let (_, x, _) = v.select_nth_unstable(i);
            return Some(*x);
        }
        let mut seen = 0;
        for (b, c) in self.hist.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_value(b as u16));
            }
        }
        self.hist.iter().rposition(|c| *c > 0).map(|b| bucket_value(b as u16))
    }

    /// Sparse little-endian (bucket u16, count u64) pairs.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (b, c) in self.hist.iter().enumerate().filter(|(_, c)| **c > 0) {
            out.extend_from_slice(&(b as u16).to_le_bytes());
            out.extend_from_slice(&c.to_le_bytes());
        }
        out
    }

    /// Adds a roll-up row's encoded histogram; its values are not known, so
    /// from then on percentiles come from buckets.
    pub fn merge_encoded(&mut self, bytes: &[u8]) {
        let mut added = 0;
        for chunk in bytes.chunks_exact(10) {
            let b = u16::from_le_bytes([chunk[0], chunk[1]]);
            let mut c = [0u8; 8];
            c.copy_from_slice(&chunk[2..10]);
            let c = u64::from_le_bytes(c);
            self.bump(b, c);
            added += c;
        }
        if added > 0 {
            self.n += added;
            self.exact = None;
        }
    }

    /// Adds `c` values known only by their bucket `b` (summed by SQL); from
    /// then on percentiles come from buckets.
    pub fn add_bucket(&mut self, b: u16, c: u64) {
        if c > 0 {
            self.bump(b, c);
            self.n += c;
            self.exact = None;
        }
    }

    /// The histogram of a roll-up row.
    pub fn decode(bytes: &[u8]) -> Dist {
        let mut d = Dist::default();
        d.merge_encoded(bytes);
        d
    }
}

/// What one request contributes: the request-log columns analytics reads.
#[derive(Debug, Clone, Default)]
pub struct Fact {
    pub created_at_ms: i64,
    pub dims: Dims,
    pub error_type: Option<String>,
    pub refusal: Option<String>,
    pub streamed: bool,
    pub cancelled: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub total_tokens: u64,
    pub cost_picos: Option<i64>,
    pub latency_us: u64,
    pub ttft_us: Option<u64>,
    pub upstream_latency_us: Option<u64>,
    /// The value of the grouped metadata key, when grouping by one.
    pub metadata_value: Option<String>,
    /// An attempt a config retried or fell back from: not the answer the
    /// client got, so not a request of its own.
    pub superseded: bool,
}

impl From<&LogRecord> for Fact {
    fn from(r: &LogRecord) -> Fact {
        Fact {
            created_at_ms: r.created_at.timestamp_millis(),
            dims: Dims {
                workspace_id: r.workspace_id.clone().unwrap_or_default(),
                api_key_id: r.api_key_id.clone().unwrap_or_default(),
                provider_slug: r.provider_slug.clone().unwrap_or_default(),
                ai_provider_id: r.ai_provider_id.clone().unwrap_or_default(),
                model: r.model.clone().unwrap_or_default(),
                status_code: r.status_code,
            },
            error_type: r.error_type.clone(),
            refusal: r.refusal.clone(),
            streamed: r.streamed,
            cancelled: r.cancelled,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            cached_tokens: r.cached_tokens,
            total_tokens: r.total_tokens,
            cost_picos: r.cost_picos,
            latency_us: r.latency_us,
            ttft_us: r.ttft_us,
            upstream_latency_us: r.upstream_latency_us,
            metadata_value: None,
            superseded: r.superseded,
        }
    }
}

/// The dimensions a roll-up row is keyed by; `""` means absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dims {
    pub workspace_id: String,
    pub api_key_id: String,
    pub provider_slug: String,
    pub ai_provider_id: String,
    pub model: String,
    pub status_code: u16,
}

/// Every sum, count and distribution the metrics are derived from.
#[derive(Debug, Clone, Default)]
pub struct Agg {
    /// Requests: the final attempt of each (a request routed through a
    /// config may make several attempts; only its last one counts here).
    pub requests: u64,
    /// Every attempt made, final or not.
    pub attempts: u64,
    /// Status 2xx.
    pub successful: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    /// `error_type = upstream_error` (upstream 5xx, unreachable, or its 4xx relayed).
    pub upstream_errors: u64,
    pub timeouts: u64,
    pub refused_rate_limit: u64,
    pub refused_budget: u64,
    pub refused_policy: u64,
    pub refused_auth: u64,
    pub refused_permission: u64,
    pub cancelled: u64,
    pub streamed: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub total_tokens: u64,
    /// Sum over requests with a known price, in picodollars.
    pub cost_picos: i128,
    pub priced_requests: u64,
    pub priced_tokens: u64,
    pub latency_sum_us: u128,
    pub latency_max_us: u64,
    /// Completion tokens and upstream time of successful requests that
    /// generated output: the basis of output tokens per second.
    pub gen_tokens: u64,
    pub gen_us: u64,
    pub latency: Dist,
    pub ttft: Dist,
    /// Latency minus upstream latency, for requests that reached an upstream.
    pub overhead: Dist,
    pub api_keys: HashSet<String>,
    pub models: HashSet<String>,
    pub workspaces: HashSet<String>,
    pub providers: HashSet<String>,
}

/// The roll-up table's counter columns, in [`Agg::counters`] order.
const COUNTER_COLS: [&str; 25] = [
    "requests",
    "successful",
    "status_4xx",
    "status_5xx",
    "upstream_errors",
    "timeouts",
    "refused_rate_limit",
    "refused_budget",
    "refused_policy",
    "refused_auth",
    "refused_permission",
    "cancelled",
    "streamed",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "total_tokens",
    "cost_picos",
    "priced_requests",
    "priced_tokens",
    "latency_sum_us",
    "latency_max_us",
    "gen_tokens",
    "gen_us",
    "attempts",
];

fn clamp_i64(v: i128) -> i64 {
    v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

impl Agg {
    pub fn failed(&self) -> u64 {
        self.requests - self.successful
    }

    fn note_dims(&mut self, d: &Dims) {
        for (set, v) in [
            (&mut self.api_keys, &d.api_key_id),
            (&mut self.models, &d.model),
            (&mut self.workspaces, &d.workspace_id),
            (&mut self.providers, &d.provider_slug),
        ] {
            if !v.is_empty() && !set.contains(v.as_str()) {
                set.insert(v.clone());
            }
        }
    }

    /// Adds one request.
    pub fn add(&mut self, f: &Fact) {
        self.note_dims(&f.dims);
        self.add_counts(f);
    }

    /// Adds one request's counts, leaving the distinct sets alone (roll-up rows
    /// carry their dimensions in their key).
    fn add_counts(&mut self, f: &Fact) {
        self.attempts += 1;
        // An attempt that was retried or fell back from spent tokens and
        // money, but is not a request of its own.
        // Token counts come from upstreams and the log: saturate, never wrap.
        self.prompt_tokens = self.prompt_tokens.saturating_add(f.prompt_tokens);
        self.completion_tokens = self.completion_tokens.saturating_add(f.completion_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(f.cached_tokens);
        self.total_tokens = self.total_tokens.saturating_add(f.total_tokens);
        if let Some(c) = f.cost_picos {
            self.cost_picos = self.cost_picos.saturating_add(i128::from(c));
            self.priced_tokens = self.priced_tokens.saturating_add(f.total_tokens);
        }
        if f.superseded {
            return;
        }
        let s = f.dims.status_code;
        self.requests += 1;
        let ok = (200..300).contains(&s);
        self.successful += u64::from(ok);
        self.status_4xx += u64::from((400..500).contains(&s));
        self.status_5xx += u64::from((500..600).contains(&s));
        match f.error_type.as_deref() {
            Some("upstream_error") => self.upstream_errors += 1,
            Some("timeout_error") => self.timeouts += 1,
            _ => {}
        }
        match f.refusal.as_deref() {
            Some("rate_limit") => self.refused_rate_limit += 1,
            Some("budget") => self.refused_budget += 1,
            Some("policy") => self.refused_policy += 1,
            Some("auth") => self.refused_auth += 1,
            Some("permission") => self.refused_permission += 1,
            _ => {}
        }
        self.cancelled += u64::from(f.cancelled);
        self.streamed += u64::from(f.streamed);
        if f.cost_picos.is_some() {
            self.priced_requests += 1;
        }
        self.latency_sum_us += u128::from(f.latency_us);
        self.latency_max_us = self.latency_max_us.max(f.latency_us);
        self.latency.add(f.latency_us);
        if let Some(t) = f.ttft_us {
            self.ttft.add(t);
        }
        if let Some(u) = f.upstream_latency_us {
            self.overhead.add(f.latency_us.saturating_sub(u));
            if ok && u > 0 && f.completion_tokens > 0 {
                self.gen_tokens = self.gen_tokens.saturating_add(f.completion_tokens);
                self.gen_us = self.gen_us.saturating_add(u);
            }
        }
    }

    /// Adds another aggregate.
    pub fn merge(&mut self, o: &Agg) {
        self.merge_counts(o);
        for (a, b) in [
            (&mut self.api_keys, &o.api_keys),
            (&mut self.models, &o.models),
            (&mut self.workspaces, &o.workspaces),
            (&mut self.providers, &o.providers),
        ] {
            for v in b {
                if !a.contains(v) {
                    a.insert(v.clone());
                }
            }
        }
    }

    fn merge_counts(&mut self, o: &Agg) {
        self.add_counters(o);
        self.latency.merge(&o.latency);
        self.ttft.merge(&o.ttft);
        self.overhead.merge(&o.overhead);
    }

    /// Adds another aggregate's counters, leaving distributions alone.
    fn add_counters(&mut self, o: &Agg) {
        let mut c = self.counters();
        let oc = o.counters();
        for (i, v) in c.iter_mut().enumerate() {
            if COUNTER_COLS[i] == "latency_max_us" {
                *v = (*v).max(oc[i]);
            } else {
                *v = v.saturating_add(oc[i]);
            }
        }
        self.set_counters(&c);
    }

    fn counters(&self) -> [i128; 25] {
        [
            self.requests.into(),
            self.successful.into(),
            self.status_4xx.into(),
            self.status_5xx.into(),
            self.upstream_errors.into(),
            self.timeouts.into(),
            self.refused_rate_limit.into(),
            self.refused_budget.into(),
            self.refused_policy.into(),
            self.refused_auth.into(),
            self.refused_permission.into(),
            self.cancelled.into(),
            self.streamed.into(),
            self.prompt_tokens.into(),
            self.completion_tokens.into(),
            self.cached_tokens.into(),
            self.total_tokens.into(),
            self.cost_picos,
            self.priced_requests.into(),
            self.priced_tokens.into(),
            self.latency_sum_us as i128,
            self.latency_max_us.into(),
            self.gen_tokens.into(),
            self.gen_us.into(),
            self.attempts.into(),
        ]
    }

    fn set_counters(&mut self, c: &[i128; 25]) {
        let u = |v: i128| v.clamp(0, i128::from(u64::MAX)) as u64;
        self.requests = u(c[0]);
        self.successful = u(c[1]);
        self.status_4xx = u(c[2]);
        self.status_5xx = u(c[3]);
        self.upstream_errors = u(c[4]);
        self.timeouts = u(c[5]);
        self.refused_rate_limit = u(c[6]);
        self.refused_budget = u(c[7]);
        self.refused_policy = u(c[8]);
        self.refused_auth = u(c[9]);
        self.refused_permission = u(c[10]);
        self.cancelled = u(c[11]);
        self.streamed = u(c[12]);
        self.prompt_tokens = u(c[13]);
        self.completion_tokens = u(c[14]);
        self.cached_tokens = u(c[15]);
        self.total_tokens = u(c[16]);
        self.cost_picos = c[17];
        self.priced_requests = u(c[18]);
        self.priced_tokens = u(c[19]);
        self.latency_sum_us = c[20].max(0) as u128;
        self.latency_max_us = u(c[21]);
        self.gen_tokens = u(c[22]);
        self.gen_us = u(c[23]);
        self.attempts = u(c[24]);
    }
}

/// A (provider, model) pair of the `ai_org_model` filter; `provider` matches
/// the AI provider id (`openai`) or the provider slug.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelMatch {
    pub provider: Option<String>,
    pub model: String,
}

/// Which requests a query covers. Empty lists mean "any".
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Inclusive start, milliseconds since the epoch.
    pub from_ms: i64,
    /// Exclusive end.
    pub to_ms: i64,
    /// `None`: every workspace.
    pub workspace_ids: Option<Vec<String>>,
    pub api_key_ids: Vec<String>,
    pub provider_slugs: Vec<String>,
    pub models: Vec<ModelMatch>,
    pub status_codes: Vec<u16>,
    pub total_tokens_min: Option<u64>,
    pub total_tokens_max: Option<u64>,
    /// Inclusive bounds in picodollars; a request without a known price never
    /// matches a cost bound.
    pub cost_min_picos: Option<i64>,
    pub cost_max_picos: Option<i64>,
    /// Every key must be present in the request's metadata with this value.
    pub metadata: Vec<(String, String)>,
    /// The filter is known to match nothing (e.g. a cache status Tollgate
    /// never produces).
    pub nothing: bool,
}

impl Filter {
    /// Whether some condition can be checked on raw rows only.
    fn per_request(&self) -> bool {
        self.total_tokens_min.is_some()
            || self.total_tokens_max.is_some()
            || self.cost_min_picos.is_some()
            || self.cost_max_picos.is_some()
            || !self.metadata.is_empty()
    }

    /// The conditions on dimension columns, shared by the raw table
    /// (`nullable`: absent values are NULL) and the roll-ups (absent = '').
    fn push_dims<'a, DB: Backend>(&'a self, qb: &mut QueryBuilder<'a, DB>) {
        let list = |qb: &mut QueryBuilder<'a, DB>, col: &str, vals: &'a [String]| {
            if vals.is_empty() {
                return;
            }
            qb.push(format!(" AND {col} IN ("));
            for (i, v) in vals.iter().enumerate() {
                qb.push(if i == 0 { "" } else { ", " });
                DB::bind_str(qb, v);
            }
            qb.push(")");
        };
        if let Some(ws) = &self.workspace_ids {
            if ws.is_empty() {
                qb.push(" AND FALSE");
            }
            list(qb, "workspace_id", ws);
        }
        list(qb, "api_key_id", &self.api_key_ids);
        list(qb, "provider_slug", &self.provider_slugs);
        if !self.status_codes.is_empty() {
            qb.push(" AND status_code IN (");
            for (i, s) in self.status_codes.iter().enumerate() {
                qb.push(if i == 0 { "" } else { ", " });
                DB::bind_i64(qb, i64::from(*s));
            }
            qb.push(")");
        }
        if !self.models.is_empty() {
            qb.push(" AND (FALSE");
            for m in &self.models {
                qb.push(" OR (model = ");
                DB::bind_str(qb, &m.model);
                if let Some(p) = &m.provider {
                    qb.push(" AND (ai_provider_id = ");
                    DB::bind_str(qb, p);
                    qb.push(" OR provider_slug = ");
                    DB::bind_str(qb, p);
                    qb.push(")");
                }
                qb.push(")");
            }
            qb.push(")");
        }
    }

    fn push_raw<'a, DB: Backend>(&'a self, qb: &mut QueryBuilder<'a, DB>, from: i64, to: i64) {
        qb.push(" WHERE created_at_ms >= ");
        DB::bind_i64(qb, from);
        qb.push(" AND created_at_ms < ");
        DB::bind_i64(qb, to);
        self.push_dims(qb);
        if let Some(v) = self.total_tokens_min {
            qb.push(" AND total_tokens >= ");
            DB::bind_i64(qb, i64::try_from(v).unwrap_or(i64::MAX));
        }
        if let Some(v) = self.total_tokens_max {
            qb.push(" AND total_tokens <= ");
            DB::bind_i64(qb, i64::try_from(v).unwrap_or(i64::MAX));
        }
        if let Some(v) = self.cost_min_picos {
            qb.push(" AND cost_picos >= ");
            DB::bind_i64(qb, v);
        }
        if let Some(v) = self.cost_max_picos {
            qb.push(" AND cost_picos <= ");
            DB::bind_i64(qb, v);
        }
        for (k, v) in &self.metadata {
            qb.push(" AND ");
            DB::push_metadata(qb, k);
            qb.push(" = ");
            DB::bind_str(qb, v);
        }
    }
}

/// Graph bucket widths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    Minute,
    Hour,
    Day,
    /// Weeks start on Sunday 00:00 UTC, as budget weeks do.
    Week,
}

impl Interval {
    pub fn parse(s: &str) -> Option<Interval> {
        match s {
            "minute" => Some(Interval::Minute),
            "hour" => Some(Interval::Hour),
            "day" => Some(Interval::Day),
            "week" => Some(Interval::Week),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Interval::Minute => "minute",
            Interval::Hour => "hour",
            Interval::Day => "day",
            Interval::Week => "week",
        }
    }

    /// The start of the bucket holding `ms`.
    pub fn floor(self, ms: i64) -> i64 {
        match self {
            Interval::Minute => ms.div_euclid(MINUTE_MS) * MINUTE_MS,
            Interval::Hour => ms.div_euclid(3_600_000) * 3_600_000,
            Interval::Day => ms.div_euclid(DAY_MS) * DAY_MS,
            Interval::Week => {
                // 1970-01-01 was a Thursday: day 0 is 4 days after a Sunday.
                let day = ms.div_euclid(DAY_MS);
                (day - (day + 4).rem_euclid(7)) * DAY_MS
            }
        }
    }

    /// The start of the bucket after the one starting at `start`.
    pub fn next(self, start: i64) -> i64 {
        match self {
            Interval::Minute => start + MINUTE_MS,
            Interval::Hour => start + 3_600_000,
            Interval::Day => start + DAY_MS,
            Interval::Week => start + 7 * DAY_MS,
        }
    }

    /// Whether day roll-ups can feed buckets of this width.
    fn whole_days(self) -> bool {
        matches!(self, Interval::Day | Interval::Week)
    }
}

/// What to group requests by besides time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    ApiKey,
    Workspace,
    Provider,
    Model,
    /// `ai_provider_id__model`, the form of the `ai_org_model` filter.
    AiModel,
    AiService,
    StatusCode,
    Metadata(String),
}

impl GroupBy {
    fn key(&self, f: &Fact) -> String {
        let d = &f.dims;
        match self {
            GroupBy::ApiKey => d.api_key_id.clone(),
            GroupBy::Workspace => d.workspace_id.clone(),
            GroupBy::Provider => d.provider_slug.clone(),
            GroupBy::Model => d.model.clone(),
            GroupBy::AiModel => format!("{}__{}", d.ai_provider_id, d.model),
            GroupBy::AiService => d.ai_provider_id.clone(),
            GroupBy::StatusCode => d.status_code.to_string(),
            GroupBy::Metadata(_) => f.metadata_value.clone().unwrap_or_default(),
        }
    }
}

/// One analytics question.
#[derive(Debug, Clone)]
pub struct Query {
    pub filter: Filter,
    pub interval: Option<Interval>,
    pub group: Option<GroupBy>,
    /// Whether the cells need their distinct API keys, models, workspaces
    /// and providers (the `unique_*` metrics); summing them in SQL costs
    /// about as much as every counter together.
    pub distinct: bool,
}

/// Aggregates keyed by (bucket start or 0 without an interval, group key or
/// "" without a grouping).
pub type Cells = BTreeMap<(i64, String), Agg>;

/// Where one stretch of the query range is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    Raw(i64, i64),
    Rollup(i64, i64),
}

/// Splits `[from, to)` into raw edges and whole roll-up days.
fn plan(q: &Query, rollup_from_ms: i64) -> Vec<Piece> {
    let (from, to) = (q.filter.from_ms, q.filter.to_ms);
    if from >= to {
        return Vec::new();
    }
    let rollups_fit = !q.filter.per_request()
        && !matches!(q.group, Some(GroupBy::Metadata(_)))
        && q.interval.is_none_or(Interval::whole_days);
    let first_day = ceil_day(from.max(rollup_from_ms));
    let last_day = to.div_euclid(DAY_MS) * DAY_MS;
    if !rollups_fit || first_day >= last_day {
        return vec![Piece::Raw(from, to)];
    }
    let mut out = Vec::with_capacity(3);
    if from < first_day {
        out.push(Piece::Raw(from, first_day));
    }
    out.push(Piece::Rollup(first_day, last_day));
    if last_day < to {
        out.push(Piece::Raw(last_day, to));
    }
    out
}

fn ceil_day(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS) * DAY_MS + if ms.rem_euclid(DAY_MS) == 0 { 0 } else { DAY_MS }
}

/// The first moment the roll-ups cover completely.
pub(crate) async fn rollup_from<DB: Backend>(pool: &Pool<DB>) -> Result<i64, sqlx::Error> {
    let qb = QueryBuilder::new("SELECT value FROM analytics_meta WHERE key = 'rollup_from_ms'");
    match DB::fetch_all(pool, qb).await?.first() {
        Some(r) => DB::get_i64(r, 0),
        None => Ok(i64::MAX),
    }
}

/// The first and last request-log times: `(min, max)` of `created_at_ms`,
/// or `None` for an empty log. Two index lookups.
pub(crate) async fn data_bounds<DB: Backend>(pool: &Pool<DB>) -> Result<Option<(i64, i64)>, sqlx::Error> {
    // Two scalar subqueries: SQLite answers each with one index seek, where
    // `SELECT MIN(x), MAX(x)` would scan the whole index.
    let qb = QueryBuilder::new(
        "SELECT (SELECT MIN(created_at_ms) FROM usage_log), (SELECT MAX(created_at_ms) FROM usage_log)",
    );
    let Some(r) = DB::fetch_all(pool, qb).await?.into_iter().next() else {
        return Ok(None);
    };
    Ok(DB::get_opt_i64(&r, 0)?.zip(DB::get_opt_i64(&r, 1)?))
}

impl Filter {
    /// Narrows the time range to the requests that exist, so that the cost
    /// of a query follows the data, not the range asked for (a range from
    /// the year 1000 reads what a range from the first request reads).
    pub(crate) async fn clamp_to_data<DB: Backend>(&mut self, pool: &Pool<DB>) -> Result<(), sqlx::Error> {
        match data_bounds(pool).await? {
            Some((min, max)) => {
                self.from_ms = self.from_ms.max(min);
                self.to_ms = self.to_ms.min(max.saturating_add(1));
            }
            None => self.to_ms = self.from_ms,
        }
        if self.to_ms < self.from_ms {
            self.to_ms = self.from_ms;
        }
        Ok(())
    }
}

/// The first request-log time at or after `from`, if before `to`.
async fn next_row_at<DB: Backend>(pool: &Pool<DB>, from: i64, to: i64) -> Result<Option<i64>, sqlx::Error> {
    let mut qb = QueryBuilder::new("SELECT MIN(created_at_ms) FROM usage_log WHERE created_at_ms >= ");
    DB::bind_i64(&mut qb, from);
    let t = match DB::fetch_all(pool, qb).await?.first() {
        Some(r) => DB::get_opt_i64(r, 0)?,
        None => None,
    };
    Ok(t.filter(|t| *t < to))
}

/// Raw stretches of at most this many requests are read row by row, so
/// that their percentiles are exact; longer ones are summed by the
/// database, with percentiles from histograms as for roll-ups.
pub const RAW_ROWS_EXACT: i64 = 20_000;

/// Answers `q`, reading raw stretches of at most `exact_rows` requests row
/// by row and summing longer ones in SQL.
pub(crate) async fn aggregate_with<DB: Backend>(
    pool: &Pool<DB>,
    q: &Query,
    exact_rows: i64,
) -> Result<Cells, sqlx::Error> {
    let mut cells = Cells::new();
    if q.filter.nothing {
        return Ok(cells);
    }
    let from = rollup_from(pool).await?;
    for piece in plan(q, from) {
        let (src, a, b) = match piece {
            Piece::Raw(a, b) if at_most_rows(pool, a, b, exact_rows).await? => {
                raw_by_row(pool, q, a, b, &mut cells).await?;
                continue;
            }
            Piece::Raw(a, b) => (Source::Raw, a, b),
            Piece::Rollup(a, b) => (Source::Rollup, a, b),
        };
        // SQLite sums in 64 bits and stops at an overflow; reading row by
        // row then saturates instead, so no figure ever wraps. (PostgreSQL
        // sums BIGINT exactly in NUMERIC.)
        let mut part = Cells::new();
        match summed(pool, q, src, a, b, &mut part).await {
            Ok(()) => {
                for (k, agg) in part {
                    cells.entry(k).or_default().merge(&agg);
                }
            }
            Err(e) if is_overflow(&e) => match src {
                Source::Raw => raw_by_row(pool, q, a, b, &mut cells).await?,
                Source::Rollup => rollups(pool, q, a, b, &mut cells).await?,
            },
            Err(e) => return Err(e),
        }
    }
    Ok(cells)
}

fn is_overflow(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.message().contains("integer overflow"))
}

/// Whether `[from, to)` holds at most `n` requests (one index range, read
/// no further than `n + 1` entries).
async fn at_most_rows<DB: Backend>(pool: &Pool<DB>, from: i64, to: i64, n: i64) -> Result<bool, sqlx::Error> {
    let mut qb = QueryBuilder::new("SELECT COUNT(*) FROM (SELECT 1 FROM usage_log WHERE created_at_ms >= ");
    DB::bind_i64(&mut qb, from);
    qb.push(" AND created_at_ms < ");
    DB::bind_i64(&mut qb, to);
    qb.push(" LIMIT ");
    DB::bind_i64(&mut qb, n.saturating_add(1));
    qb.push(") AS s");
    let count = match DB::fetch_all(pool, qb).await?.first() {
        Some(r) => DB::get_i64(r, 0)?,
        None => 0,
    };
    Ok(count <= n)
}

/// Reads `[from, to)` row by row: day by day, so that a long raw stretch
/// never sits in memory whole; days without requests are skipped with one
/// index lookup, so a sparse range costs what its data costs.
async fn raw_by_row<DB: Backend>(
    pool: &Pool<DB>,
    q: &Query,
    from: i64,
    to: i64,
    cells: &mut Cells,
) -> Result<(), sqlx::Error> {
    let mut start = from;
    while start < to {
        let Some(at) = next_row_at(pool, start, to).await? else {
            break;
        };
        start = start.max(at);
        let end = (start.div_euclid(DAY_MS) * DAY_MS + DAY_MS).min(to);
        raw(pool, q, start, end, cells).await?;
        start = end;
    }
    Ok(())
}

/// Where [`summed`] reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Raw,
    Rollup,
}

impl Source {
    /// A dimension column; absent values are `''` either way.
    fn dim(self, col: &str) -> String {
        match self {
            Source::Raw => format!("COALESCE({col}, '')"),
            Source::Rollup => col.to_owned(),
        }
    }
}

/// The dimension sets a cell keeps, in [`summed`]'s column order.
const DISTINCT_DIMS: [&str; 4] = ["api_key_id", "model", "workspace_id", "provider_slug"];
/// The roll-up histogram columns, in [`Agg`]'s order.
const HIST_COLS: [&str; 3] = ["latency_hist", "ttft_hist", "overhead_hist"];

/// The per-request counters as aggregates over raw rows, in
/// [`COUNTER_COLS`] order: the SQL twin of [`Agg::add_counts`].
fn raw_counter_sums<DB: Backend>() -> [String; 25] {
    let n = DB::count;
    let count = |cond: String| format!("COUNT(*) FILTER (WHERE is_final AND {cond})");
    let status = |lo: u16, hi: u16| count(format!("{} BETWEEN {lo} AND {hi}", DB::int("status_code")));
    let is = |col: &str, v: &str| count(format!("{col} = '{v}'"));
    let generated = |what: String| {
        format!(
            "SUM(CASE WHEN is_final AND {} BETWEEN 200 AND 299 AND {} > 0 AND {} > 0 THEN {what} ELSE 0 END)",
            DB::int("status_code"),
            n("upstream_latency_us"),
            n("completion_tokens")
        )
    };
    [
        "COUNT(*) FILTER (WHERE is_final)".to_owned(),
        status(200, 299),
        status(400, 499),
        status(500, 599),
        is("error_type", "upstream_error"),
        is("error_type", "timeout_error"),
        is("refusal", "rate_limit"),
        is("refusal", "budget"),
        is("refusal", "policy"),
        is("refusal", "auth"),
        is("refusal", "permission"),
        count("cancelled".to_owned()),
        count("streamed".to_owned()),
        format!("SUM({})", n("prompt_tokens")),
        format!("SUM({})", n("completion_tokens")),
        format!("SUM({})", n("cached_tokens")),
        format!("SUM({})", n("total_tokens")),
        format!("SUM({})", DB::int("cost_picos")),
        count("cost_picos IS NOT NULL".to_owned()),
        format!(
            "SUM(CASE WHEN cost_picos IS NOT NULL THEN {} ELSE 0 END)",
            n("total_tokens")
        ),
        format!("SUM(CASE WHEN is_final THEN {} ELSE 0 END)", n("latency_us")),
        format!("MAX(CASE WHEN is_final THEN {} ELSE 0 END)", n("latency_us")),
        generated(n("completion_tokens")),
        generated(n("upstream_latency_us")),
        "COUNT(*)".to_owned(),
    ]
}

/// [`bucket_of`] in SQL, for an integer expression `v` of at least 0: a
/// binary search over the power of two, then the 16 sub-buckets.
fn bucket_sql(v: &str) -> String {
    fn tree(v: &str, lo: u32, hi: u32) -> String {
        if hi - lo == 1 {
            return format!(
                "({} + (({v} >> {}) & {}))",
                (u64::from(lo) - 3) * SUB,
                lo - SUB_BITS,
                SUB - 1
            );
        }
        let mid = (lo + hi) / 2;
        format!(
            "CASE WHEN {v} < {} THEN {} ELSE {} END",
            1u64 << mid,
            tree(v, lo, mid),
            tree(v, mid, hi)
        )
    }
    format!("CASE WHEN {v} < {SUB} THEN {v} ELSE {} END", tree(v, SUB_BITS, 63))
}

/// Pushes the cell columns `t` (the start of the time unit the interval is
/// made of, or 0) and `g` (the group key, or '').
fn push_cell<'a, DB: Backend>(qb: &mut QueryBuilder<'a, DB>, q: &'a Query, src: Source) {
    let t = match (q.interval, src) {
        (None, _) => "CAST(0 AS BIGINT)".to_owned(),
        (Some(_), Source::Rollup) => "day_ms".to_owned(),
        (Some(i), Source::Raw) => {
            let unit = match i {
                Interval::Minute => MINUTE_MS,
                Interval::Hour => 3_600_000,
                Interval::Day | Interval::Week => DAY_MS,
            };
            // Floor division, also before 1970 (both backends truncate).
            format!(
                "(CASE WHEN created_at_ms >= 0 THEN created_at_ms / {unit} \
                 ELSE -((-created_at_ms + {}) / {unit}) END) * {unit}",
                unit - 1
            )
        }
    };
    qb.push(t).push(" AS t, ");
    let d = |c: &str| src.dim(c);
    match &q.group {
        None => {
            qb.push("''");
        }
        Some(GroupBy::ApiKey) => {
            qb.push(d("api_key_id"));
        }
        Some(GroupBy::Workspace) => {
            qb.push(d("workspace_id"));
        }
        Some(GroupBy::Provider) => {
            qb.push(d("provider_slug"));
        }
        Some(GroupBy::Model) => {
            qb.push(d("model"));
        }
        Some(GroupBy::AiModel) => {
            qb.push(format!("{} || '__' || {}", d("ai_provider_id"), d("model")));
        }
        Some(GroupBy::AiService) => {
            qb.push(d("ai_provider_id"));
        }
        Some(GroupBy::StatusCode) => {
            qb.push(match src {
                Source::Raw => format!("CAST({} AS TEXT)", DB::count("status_code")),
                Source::Rollup => format!("CAST({} AS TEXT)", DB::least(&DB::greatest("status_code", "0"), "999")),
            });
        }
        Some(GroupBy::Metadata(k)) => {
            DB::push_metadata(qb, k);
        }
    }
    qb.push(" AS g");
}

/// The three histogram kinds of [`raw_histograms`], joined to each row;
/// `CROSS JOIN` keeps the log as SQLite's outer loop, so it is read once.
const KINDS: &str = " CROSS JOIN (SELECT CAST(0 AS BIGINT) AS k UNION ALL SELECT 1 UNION ALL SELECT 2) AS kinds";

/// Pushes `FROM … WHERE …` for `[from, to)` of `src`, with `join` after
/// the raw log's name.
fn push_source<'a, DB: Backend>(
    qb: &mut QueryBuilder<'a, DB>,
    q: &'a Query,
    src: Source,
    from: i64,
    to: i64,
    join: &str,
) {
    match src {
        Source::Raw => {
            qb.push(" FROM usage_log").push(join);
            q.filter.push_raw(qb, from, to);
            if let Some(GroupBy::Metadata(k)) = &q.group {
                // Grouping by a metadata key covers the requests that carry it.
                qb.push(" AND ");
                DB::push_metadata(qb, k);
                qb.push(" IS NOT NULL");
            }
        }
        Source::Rollup => {
            qb.push(" FROM usage_daily WHERE day_ms >= ");
            DB::bind_i64(qb, from);
            qb.push(" AND day_ms < ");
            DB::bind_i64(qb, to);
            q.filter.push_dims(qb);
        }
    }
}

/// Sums `[from, to)` of `src` in SQL, one row per cell (a roll-up day or a
/// raw time unit, and a group): the counters, the distinct dimensions (hex,
/// so that no value can be mistaken for the separator) and the histograms
/// (roll-up blobs concatenated; raw values bucketed by [`bucket_sql`]).
async fn summed<DB: Backend>(
    pool: &Pool<DB>,
    q: &Query,
    src: Source,
    from: i64,
    to: i64,
    cells: &mut Cells,
) -> Result<(), sqlx::Error> {
    let mut qb: QueryBuilder<DB> = QueryBuilder::new("SELECT ");
    push_cell(&mut qb, q, src);
    match src {
        Source::Raw => {
            for s in raw_counter_sums::<DB>() {
                qb.push(", ").push(DB::exact(&s));
            }
        }
        Source::Rollup => {
            for c in COUNTER_COLS {
                let f = if c == "latency_max_us" { "MAX" } else { "SUM" };
                qb.push(", ").push(DB::exact(&format!("{f}({c})")));
            }
        }
    }
    for c in DISTINCT_DIMS {
        if q.distinct {
            qb.push(", ").push(DB::distinct_hex_agg(&src.dim(c)));
        } else {
            qb.push(", CAST(NULL AS TEXT)");
        }
    }
    if src == Source::Rollup {
        for c in HIST_COLS {
            qb.push(", ").push(DB::blob_hex_agg(c));
        }
    }
    push_source(&mut qb, q, src, from, to, "");
    qb.push(" GROUP BY t, g");
    // Raw histograms are a second pass over the rows: it runs beside the
    // counters on another connection (readers do not block each other), so
    // a long raw stretch costs the longer of the two, not their sum.
    let mut hist = Cells::new();
    let rows = match src {
        Source::Raw => {
            let (rows, ()) = tokio::try_join!(DB::fetch_all(pool, qb), raw_histograms(pool, q, from, to, &mut hist))?;
            rows
        }
        Source::Rollup => DB::fetch_all(pool, qb).await?,
    };
    let first_dim = 2 + COUNTER_COLS.len();
    let first_hist = first_dim + DISTINCT_DIMS.len();
    let mut scratch = Agg::default();
    for r in rows {
        let cell = cells.entry(cell_of::<DB>(q, &r)?).or_default();
        let mut c = [0i128; 25];
        for (i, v) in c.iter_mut().enumerate() {
            *v = DB::get_exact(&r, 2 + i)?.unwrap_or(0);
        }
        scratch.set_counters(&c);
        cell.add_counters(&scratch);
        for (i, set) in [
            &mut cell.api_keys,
            &mut cell.models,
            &mut cell.workspaces,
            &mut cell.providers,
        ]
        .into_iter()
        .enumerate()
        {
            for h in DB::get_opt_str(&r, first_dim + i)?.unwrap_or_default().split(',') {
                if let Some(v) = hex::decode(h).ok().and_then(|b| String::from_utf8(b).ok()) {
                    if !v.is_empty() && !set.contains(v.as_str()) {
                        set.insert(v);
                    }
                }
            }
        }
        if src == Source::Rollup {
            for (i, d) in [&mut cell.latency, &mut cell.ttft, &mut cell.overhead]
                .into_iter()
                .enumerate()
            {
                for h in DB::get_opt_str(&r, first_hist + i)?.unwrap_or_default().split(',') {
                    if let Ok(b) = hex::decode(h) {
                        d.merge_encoded(&b);
                    }
                }
            }
        }
    }
    for (k, h) in hist {
        cells.entry(k).or_default().merge(&h);
    }
    Ok(())
}

/// The latency, time-to-first-token and overhead histograms of `[from, to)`
/// in one pass over the rows: each row is counted once per kind (a cross
/// join with the three kinds, the log kept as the outer loop).
async fn raw_histograms<DB: Backend>(
    pool: &Pool<DB>,
    q: &Query,
    from: i64,
    to: i64,
    cells: &mut Cells,
) -> Result<(), sqlx::Error> {
    let n = DB::count;
    // Buckets are counted per (cell, kind, bucket), then folded into one
    // "bucket:count,…" text per (cell, kind), so that few rows cross over.
    let mut qb: QueryBuilder<DB> = QueryBuilder::new(format!(
        "SELECT t, g, k, {} FROM (SELECT ",
        DB::text_agg("CAST(b AS TEXT) || ':' || CAST(n AS TEXT)")
    ));
    push_cell(&mut qb, q, Source::Raw);
    qb.push(format!(
        ", k, CASE k WHEN 0 THEN COALESCE(latency_bucket, {}) WHEN 1 THEN COALESCE(ttft_bucket, {}) \
         ELSE COALESCE(overhead_bucket, {}) END AS b, COUNT(*) AS n",
        bucket_sql(&n("latency_us")),
        bucket_sql(&n("ttft_us")),
        bucket_sql(&DB::greatest(
            &format!("{} - {}", n("latency_us"), n("upstream_latency_us")),
            "0"
        )),
    ));
    push_source(&mut qb, q, Source::Raw, from, to, KINDS);
    qb.push(
        " AND is_final AND (k = 0 OR (k = 1 AND ttft_us IS NOT NULL) OR (k = 2 AND upstream_latency_us IS NOT NULL)) \
         GROUP BY t, g, k, b) AS s GROUP BY t, g, k",
    );
    for r in DB::fetch_all(pool, qb).await? {
        let cell = cells.entry(cell_of::<DB>(q, &r)?).or_default();
        let d = match DB::get_i64(&r, 2)? {
            0 => &mut cell.latency,
            1 => &mut cell.ttft,
            _ => &mut cell.overhead,
        };
        for pair in DB::get_opt_str(&r, 3)?.unwrap_or_default().split(',') {
            if let Some((b, c)) = pair.split_once(':') {
                if let (Ok(b), Ok(c)) = (b.parse::<u16>(), c.parse::<u64>()) {
                    d.add_bucket(b, c);
                }
            }
        }
    }
    Ok(())
}

/// The cell a summed row belongs to.
fn cell_of<DB: Backend>(q: &Query, r: &DB::Row) -> Result<(i64, String), sqlx::Error> {
    let t = DB::get_i64(r, 0)?;
    let g = DB::get_opt_str(r, 1)?;
    Ok((bucket_start(q, t), g.unwrap_or_default()))
}

/// The start of the bucket holding `ms`, or 0 without an interval.
fn bucket_start(q: &Query, ms: i64) -> i64 {
    q.interval.map(|i| i.floor(ms)).unwrap_or(0)
}

/// The request-log columns analytics reads; counts are read as integers
/// whatever a damaged row holds (a real or text value counts as its
/// integer part; sums saturate).
fn raw_cols<DB: Backend>() -> String {
    let i = DB::int;
    format!(
        "created_at_ms, workspace_id, api_key_id, provider_slug, ai_provider_id, model, {}, error_type, refusal, \
         streamed, cancelled, {}, {}, {}, {}, {}, {}, {}, {}, is_final",
        i("status_code"),
        i("prompt_tokens"),
        i("completion_tokens"),
        i("cached_tokens"),
        i("total_tokens"),
        i("cost_picos"),
        i("latency_us"),
        i("ttft_us"),
        i("upstream_latency_us"),
    )
}

fn cell_key(q: &Query, bucket_ms: i64, f: &Fact) -> (i64, String) {
    let g = q.group.as_ref().map(|g| g.key(f)).unwrap_or_default();
    (bucket_start(q, bucket_ms), g)
}

async fn raw<DB: Backend>(
    pool: &Pool<DB>,
    q: &Query,
    from: i64,
    to: i64,
    cells: &mut Cells,
) -> Result<(), sqlx::Error> {
    let mut qb: QueryBuilder<DB> = QueryBuilder::new(format!("SELECT {}", raw_cols::<DB>()));
    let meta_key = match &q.group {
        Some(GroupBy::Metadata(k)) => Some(k.as_str()),
        _ => None,
    };
    if let Some(k) = meta_key {
        qb.push(", ");
        DB::push_metadata(&mut qb, k);
    }
    qb.push(" FROM usage_log");
    q.filter.push_raw(&mut qb, from, to);
    if let Some(k) = meta_key {
        // Grouping by a metadata key covers the requests that carry it.
        qb.push(" AND ");
        DB::push_metadata(&mut qb, k);
        qb.push(" IS NOT NULL");
    }
    let rows = DB::fetch_all(pool, qb).await?;
    for r in rows {
        let s = |c: usize| -> Result<String, sqlx::Error> { Ok(DB::get_opt_str(&r, c)?.unwrap_or_default()) };
        let u = |c: usize| -> Result<u64, sqlx::Error> { Ok(DB::get_i64(&r, c)?.max(0) as u64) };
        let ou =
            |c: usize| -> Result<Option<u64>, sqlx::Error> { Ok(DB::get_opt_i64(&r, c)?.map(|v| v.max(0) as u64)) };
        let metadata_value = match meta_key {
            Some(_) => DB::get_opt_str(&r, 20)?,
            None => None,
        };
        let f = Fact {
            created_at_ms: DB::get_i64(&r, 0)?,
            dims: Dims {
                workspace_id: s(1)?,
                api_key_id: s(2)?,
                provider_slug: s(3)?,
                ai_provider_id: s(4)?,
                model: s(5)?,
                status_code: u(6)? as u16,
            },
            error_type: DB::get_opt_str(&r, 7)?,
            refusal: DB::get_opt_str(&r, 8)?,
            streamed: DB::get_bool(&r, 9)?,
            cancelled: DB::get_bool(&r, 10)?,
            prompt_tokens: u(11)?,
            completion_tokens: u(12)?,
            cached_tokens: u(13)?,
            total_tokens: u(14)?,
            cost_picos: DB::get_opt_i64(&r, 15)?,
            latency_us: u(16)?,
            ttft_us: ou(17)?,
            upstream_latency_us: ou(18)?,
            metadata_value,
            superseded: !DB::get_bool(&r, 19)?,
        };
        cells.entry(cell_key(q, f.created_at_ms, &f)).or_default().add(&f);
    }
    Ok(())
}

async fn rollups<DB: Backend>(
    pool: &Pool<DB>,
    q: &Query,
    from: i64,
    to: i64,
    cells: &mut Cells,
) -> Result<(), sqlx::Error> {
    let mut qb: QueryBuilder<DB> = QueryBuilder::new(format!("SELECT {ROLLUP_COLS} FROM usage_daily WHERE day_ms >= "));
    DB::bind_i64(&mut qb, from);
    qb.push(" AND day_ms < ");
    DB::bind_i64(&mut qb, to);
    q.filter.push_dims(&mut qb);
    let rows = DB::fetch_all(pool, qb).await?;
    let mut counters = Agg::default();
    for r in rows {
        let (day, dims) = decode_dims::<DB>(&r)?;
        let f = Fact {
            dims,
            ..Default::default()
        };
        let cell = cells.entry(cell_key(q, day, &f)).or_default();
        cell.note_dims(&f.dims);
        // Counters through a scratch aggregate, histograms straight from
        // their bytes: nothing allocated per row beyond its key.
        counters.set_counters(&decode_counters::<DB>(&r)?);
        cell.add_counters(&counters);
        for (i, d) in [&mut cell.latency, &mut cell.ttft, &mut cell.overhead]
            .into_iter()
            .enumerate()
        {
            if let Some(b) = DB::get_opt_bytes(&r, FIRST_HIST + i)? {
                d.merge_encoded(b);
            }
        }
    }
    Ok(())
}

/// The columns of a roll-up row, in the order the decoders read them.
const ROLLUP_COLS: &str = "day_ms, workspace_id, api_key_id, provider_slug, ai_provider_id, model, status_code, \
     requests, successful, status_4xx, status_5xx, upstream_errors, timeouts, refused_rate_limit, refused_budget, \
     refused_policy, refused_auth, refused_permission, cancelled, streamed, prompt_tokens, completion_tokens, \
     cached_tokens, total_tokens, cost_picos, priced_requests, priced_tokens, latency_sum_us, latency_max_us, \
     gen_tokens, gen_us, attempts, latency_hist, ttft_hist, overhead_hist";
const FIRST_COUNTER: usize = 7;
const FIRST_HIST: usize = FIRST_COUNTER + COUNTER_COLS.len();

fn decode_dims<DB: Backend>(r: &DB::Row) -> Result<(i64, Dims), sqlx::Error> {
    let s = |i: usize| -> Result<String, sqlx::Error> { Ok(DB::get_opt_str(r, i)?.unwrap_or_default()) };
    Ok((
        DB::get_i64(r, 0)?,
        Dims {
            workspace_id: s(1)?,
            api_key_id: s(2)?,
            provider_slug: s(3)?,
            ai_provider_id: s(4)?,
            model: s(5)?,
            status_code: DB::get_i64(r, 6)?.clamp(0, 999) as u16,
        },
    ))
}

fn decode_counters<DB: Backend>(r: &DB::Row) -> Result<[i128; 25], sqlx::Error> {
    let mut c = [0i128; 25];
    for (i, v) in c.iter_mut().enumerate() {
        *v = i128::from(DB::get_i64(r, FIRST_COUNTER + i)?);
    }
    Ok(c)
}

fn decode_rollup<DB: Backend>(r: &DB::Row) -> Result<(i64, Agg, Dims), sqlx::Error> {
    let (day, dims) = decode_dims::<DB>(r)?;
    let mut agg = Agg::default();
    agg.set_counters(&decode_counters::<DB>(r)?);
    let blob = |i: usize| -> Result<Dist, sqlx::Error> {
        Ok(DB::get_opt_bytes(r, FIRST_HIST + i)?
            .map(Dist::decode)
            .unwrap_or_default())
    };
    agg.latency = blob(0)?;
    agg.ttft = blob(1)?;
    agg.overhead = blob(2)?;
    Ok((day, agg, dims))
}

/// Most roll-up keys per statement (35 bound values each: SQLite allows
/// 32766 per statement, PostgreSQL 65535), and most minute rows (3 each);
/// a batch's are written in [`statement_chunks`] of at most these.
const ROLLUP_CHUNK: usize = 512;
const MINUTE_CHUNK: usize = 4096;

/// Per (day, dimensions) roll-up deltas, in key order (so that writers on
/// PostgreSQL lock rows in one order), and requests per (minute, workspace).
type Deltas = (Vec<((i64, Dims), Agg)>, Vec<((i64, String), i64)>);

fn deltas(rows: &[LogRecord]) -> Deltas {
    let mut days: BTreeMap<(i64, Dims), Agg> = BTreeMap::new();
    let mut minutes: BTreeMap<(i64, String), i64> = BTreeMap::new();
    for r in rows {
        let f = Fact::from(r);
        let day = f.created_at_ms.div_euclid(DAY_MS) * DAY_MS;
        let minute = f.created_at_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
        if !f.superseded {
            *minutes.entry((minute, f.dims.workspace_id.clone())).or_default() += 1;
        }
        days.entry((day, f.dims.clone())).or_default().add_counts(&f);
    }
    (days.into_iter().collect(), minutes.into_iter().collect())
}

/// `SELECT` of the roll-up rows keyed like `chunk`, then `suffix`.
fn select_rollups<'a, DB: Backend>(chunk: &'a [((i64, Dims), Agg)], suffix: &str) -> QueryBuilder<'a, DB> {
    let mut qb = QueryBuilder::new(format!(
        "SELECT {ROLLUP_COLS} FROM usage_daily \
         WHERE (day_ms, workspace_id, api_key_id, provider_slug, ai_provider_id, model, status_code) IN (VALUES "
    ));
    push_rollup_keys(&mut qb, chunk);
    qb.push(")").push(suffix);
    qb
}

/// `(day, dims…), …` of `chunk`.
fn push_rollup_keys<'a, DB: Backend>(qb: &mut QueryBuilder<'a, DB>, chunk: &'a [((i64, Dims), Agg)]) {
    for (i, ((day, d), _)) in chunk.iter().enumerate() {
        qb.push(if i == 0 { "(" } else { ", (" });
        DB::bind_i64(qb, *day);
        for v in [
            &d.workspace_id,
            &d.api_key_id,
            &d.provider_slug,
            &d.ai_provider_id,
            &d.model,
        ] {
            qb.push(", ");
            DB::bind_str(qb, v);
        }
        qb.push(", ");
        DB::bind_i64(qb, i64::from(d.status_code));
        qb.push(")");
    }
}

/// Each delta of `chunk` added to the stored row of its key (`existing`).
fn merged(chunk: &[((i64, Dims), Agg)], mut existing: HashMap<(i64, Dims), Agg>) -> Vec<Agg> {
    chunk
        .iter()
        .map(|(k, delta)| {
            let mut agg = existing.remove(k).unwrap_or_default();
            agg.merge_counts(delta);
            agg
        })
        .collect()
}

/// `{insert} usage_daily (…) VALUES …` of the merged rows of `chunk`.
fn write_rollups<'a, DB: Backend>(
    insert: &str,
    chunk: &'a [((i64, Dims), Agg)],
    merged: Vec<Agg>,
) -> QueryBuilder<'a, DB> {
    let cols = COUNTER_COLS.join(", ");
    let mut qb = QueryBuilder::new(format!(
        "{insert} usage_daily (day_ms, workspace_id, api_key_id, provider_slug, ai_provider_id, model, \
         status_code, {cols}, latency_hist, ttft_hist, overhead_hist) VALUES "
    ));
    for (i, (((day, d), _), agg)) in chunk.iter().zip(merged).enumerate() {
        qb.push(if i == 0 { "(" } else { ", (" });
        DB::bind_i64(&mut qb, *day);
        for v in [
            &d.workspace_id,
            &d.api_key_id,
            &d.provider_slug,
            &d.ai_provider_id,
            &d.model,
        ] {
            qb.push(", ");
            DB::bind_str(&mut qb, v);
        }
        qb.push(", ");
        DB::bind_i64(&mut qb, i64::from(d.status_code));
        for v in agg.counters() {
            qb.push(", ");
            DB::bind_i64(&mut qb, clamp_i64(v));
        }
        for h in [&agg.latency, &agg.ttft, &agg.overhead] {
            qb.push(", ");
            DB::bind_bytes(&mut qb, h.encode());
        }
        qb.push(")");
    }
    qb
}

/// `INSERT … usage_minute … ON CONFLICT` adding `chunk`'s requests.
fn add_minutes<'a, DB: Backend>(chunk: &'a [((i64, String), i64)]) -> QueryBuilder<'a, DB> {
    let mut qb = QueryBuilder::new("INSERT INTO usage_minute (minute_ms, workspace_id, requests) VALUES ");
    for (i, ((m, ws), n)) in chunk.iter().enumerate() {
        qb.push(if i == 0 { "(" } else { ", (" });
        DB::bind_i64(&mut qb, *m);
        qb.push(", ");
        DB::bind_str(&mut qb, ws);
        qb.push(", ");
        DB::bind_i64(&mut qb, *n);
        qb.push(")");
    }
    qb.push(
        " ON CONFLICT (minute_ms, workspace_id) DO UPDATE SET requests = usage_minute.requests + excluded.requests",
    );
    qb
}

/// Adds `rows` to the roll-ups; called by the request-log writer in the
/// transaction that inserts them. Each chunk of touched roll-up rows costs
/// one read and one write statement, whatever the batch size (SQLite has
/// one writer at a time, so nothing changes them in between).
pub(crate) async fn roll_up(conn: &mut SqliteConnection, rows: &[LogRecord]) -> Result<(), sqlx::Error> {
    let (days, minutes) = deltas(rows);
    for chunk in statement_chunks(&days, ROLLUP_CHUNK) {
        let mut existing = HashMap::new();
        for r in select_rollups::<Sqlite>(chunk, "")
            .build()
            .fetch_all(&mut *conn)
            .await?
        {
            let (day, agg, dims) = decode_rollup::<Sqlite>(&r)?;
            existing.insert((day, dims), agg);
        }
        let merged = merged(chunk, existing);
        write_rollups::<Sqlite>("INSERT OR REPLACE INTO", chunk, merged)
            .build()
            .execute(&mut *conn)
            .await?;
    }
    for chunk in statement_chunks(&minutes, MINUTE_CHUNK) {
        add_minutes::<Sqlite>(chunk).build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// [`roll_up`] on PostgreSQL, where writers on several replicas may touch
/// the same roll-up rows at once: the rows are created first (empty, if
/// missing), then read `FOR UPDATE` (locked until the transaction ends, in
/// key order), merged and written back. Counters could be added in SQL, but
/// the histograms must be merged here, so the row lock covers both.
pub(crate) async fn roll_up_pg(conn: &mut PgConnection, rows: &[LogRecord]) -> Result<(), sqlx::Error> {
    let (days, minutes) = deltas(rows);
    for chunk in statement_chunks(&days, ROLLUP_CHUNK) {
        let mut create: QueryBuilder<Postgres> = QueryBuilder::new(
            "INSERT INTO usage_daily (day_ms, workspace_id, api_key_id, provider_slug, ai_provider_id, model, status_code) \
             VALUES ",
        );
        push_rollup_keys(&mut create, chunk);
        create.push(" ON CONFLICT DO NOTHING");
        create.build().execute(&mut *conn).await?;
        let mut existing = HashMap::new();
        let lock =
            " ORDER BY day_ms, workspace_id, api_key_id, provider_slug, ai_provider_id, model, status_code FOR UPDATE";
        for r in select_rollups::<Postgres>(chunk, lock)
            .build()
            .fetch_all(&mut *conn)
            .await?
        {
            let (day, agg, dims) = decode_rollup::<Postgres>(&r)?;
            existing.insert((day, dims), agg);
        }
        let merged = merged(chunk, existing);
        let mut write = write_rollups::<Postgres>("INSERT INTO", chunk, merged);
        write.push(
            " ON CONFLICT (day_ms, workspace_id, api_key_id, provider_slug, ai_provider_id, model, status_code) DO UPDATE SET ",
        );
        for (i, c) in COUNTER_COLS.iter().chain(HIST_COLS.iter()).enumerate() {
            write
                .push(if i == 0 { "" } else { ", " })
                .push(format!("{c} = excluded.{c}"));
        }
        write.build().execute(&mut *conn).await?;
    }
    for chunk in statement_chunks(&minutes, MINUTE_CHUNK) {
        add_minutes::<Postgres>(chunk).build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// The busiest minute: (requests in it, its start), or `None` without
/// requests. Whole minutes come from the minute roll-up when the filter
/// names nothing but time and workspaces; the rest from raw rows.
pub(crate) async fn peak_minute<DB: Backend>(pool: &Pool<DB>, f: &Filter) -> Result<Option<(u64, i64)>, sqlx::Error> {
    if f.nothing || f.from_ms >= f.to_ms {
        return Ok(None);
    }
    let dims_only_ws = !f.per_request()
        && f.api_key_ids.is_empty()
        && f.provider_slugs.is_empty()
        && f.models.is_empty()
        && f.status_codes.is_empty();
    let first = (f.from_ms.max(rollup_from(pool).await?) + MINUTE_MS - 1).div_euclid(MINUTE_MS) * MINUTE_MS;
    let last = f.to_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
    let mut best: Option<(u64, i64)> = None;
    let mut consider = |rows: Vec<DB::Row>| -> Result<(), sqlx::Error> {
        if let Some(r) = rows.first() {
            let m = DB::get_i64(r, 0)?;
            let cand = (DB::get_i64(r, 1)?.max(0) as u64, m);
            if best.is_none_or(|b| cand.0 > b.0 || (cand.0 == b.0 && cand.1 < b.1)) {
                best = Some(cand);
            }
        }
        Ok(())
    };
    let raw_peak = |from: i64, to: i64| {
        let mut qb: QueryBuilder<DB> = QueryBuilder::new(
            "SELECT (created_at_ms / 60000) * 60000 AS minute, COUNT(*) FILTER (WHERE is_final) AS n FROM usage_log",
        );
        f.push_raw(&mut qb, from, to);
        qb.push(" GROUP BY minute ORDER BY n DESC, minute ASC LIMIT 1");
        qb
    };
    if dims_only_ws && first < last {
        // A sum of request counts fits 64 bits.
        let mut qb: QueryBuilder<DB> = QueryBuilder::new(
            "SELECT minute_ms, CAST(SUM(requests) AS BIGINT) AS n FROM usage_minute WHERE minute_ms >= ",
        );
        DB::bind_i64(&mut qb, first);
        qb.push(" AND minute_ms < ");
        DB::bind_i64(&mut qb, last);
        if let Some(ws) = &f.workspace_ids {
            if ws.is_empty() {
                qb.push(" AND FALSE");
            } else {
                qb.push(" AND workspace_id IN (");
                for (i, w) in ws.iter().enumerate() {
                    qb.push(if i == 0 { "" } else { ", " });
                    DB::bind_str(&mut qb, w);
                }
                qb.push(")");
            }
        }
        qb.push(" GROUP BY minute_ms ORDER BY n DESC, minute_ms ASC LIMIT 1");
        consider(DB::fetch_all(pool, qb).await?)?;
        for (a, b) in [(f.from_ms, first), (last, f.to_ms)] {
            if a < b {
                consider(DB::fetch_all(pool, raw_peak(a, b)).await?)?;
            }
        }
    } else {
        consider(DB::fetch_all(pool, raw_peak(f.from_ms, f.to_ms)).await?)?;
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        let mut prev_hi = 0;
        for b in 0..900u16 {
            let (lo, hi) = bucket_range(b);
            assert_eq!(lo, prev_hi, "bucket {b}");
            assert!(hi > lo);
            assert_eq!(bucket_of(lo), b);
            assert_eq!(bucket_of(hi - 1), b);
            // Midpoint within 1/32 of every value in the bucket.
            let mid = bucket_value(b);
            assert!((mid - lo) * 32 <= lo.max(1) || hi - lo == 1, "bucket {b}");
            prev_hi = hi;
        }
        assert_eq!(bucket_of(u64::MAX), bucket_of(u64::MAX - 1));
    }

    #[test]
    fn exact_percentiles_while_raw_and_bounded_after_rollup() {
        let mut d = Dist::default();
        for v in 1..=100u64 {
            d.add(v * 1000);
        }
        assert_eq!(d.quantile(500), Some(50_000));
        assert_eq!(d.quantile(990), Some(99_000));
        assert_eq!(d.quantile(1000), Some(100_000));
        let h = Dist::decode(&d.encode());
        assert_eq!(h.count(), 100);
        for (q, exact) in [(500, 50_000u64), (900, 90_000), (950, 95_000), (990, 99_000)] {
            let got = h.quantile(q).unwrap();
            assert!(got.abs_diff(exact) * 32 <= exact, "{q}: {got} vs {exact}");
        }
        assert_eq!(Dist::default().quantile(500), None);
        let mut m = Dist::default();
        m.merge(&Dist::decode(&[]));
        assert!(m.exact.is_some(), "merging an empty histogram keeps exactness");
        m.merge(&h);
        assert!(m.exact.is_none());
    }

    #[test]
    fn weeks_start_on_sunday() {
        // 2026-03-04 is a Wednesday; its week starts Sunday 2026-03-01.
        let wed = chrono::DateTime::parse_from_rfc3339("2026-03-04T10:00:00Z")
            .unwrap()
            .timestamp_millis();
        let sun = chrono::DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z")
            .unwrap()
            .timestamp_millis();
        assert_eq!(Interval::Week.floor(wed), sun);
        assert_eq!(Interval::Week.floor(sun), sun);
    }

    #[test]
    fn plan_uses_rollups_for_whole_days_only() {
        let q = |from, to, interval| Query {
            filter: Filter {
                from_ms: from,
                to_ms: to,
                ..Default::default()
            },
            interval,
            group: None,
            distinct: true,
        };
        let d = DAY_MS;
        assert_eq!(
            plan(&q(d / 2, 3 * d + 5, None), 0),
            vec![
                Piece::Raw(d / 2, d),
                Piece::Rollup(d, 3 * d),
                Piece::Raw(3 * d, 3 * d + 5)
            ]
        );
        assert_eq!(plan(&q(0, 2 * d, Some(Interval::Hour)), 0), vec![Piece::Raw(0, 2 * d)]);
        // Days before the roll-ups began are read raw.
        assert_eq!(
            plan(&q(0, 3 * d, None), d + 1),
            vec![Piece::Raw(0, 2 * d), Piece::Rollup(2 * d, 3 * d)]
        );
        assert_eq!(plan(&q(5, 5, None), 0), vec![]);
        let mut meta = q(0, 3 * d, None);
        meta.filter.metadata.push(("a".into(), "b".into()));
        assert_eq!(plan(&meta, 0), vec![Piece::Raw(0, 3 * d)]);
    }
}
