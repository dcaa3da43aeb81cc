//! `tollgate seed-usage`: fills a data directory's request log with
//! realistic synthetic rows (several workspaces, keys, providers and models;
//! successes, upstream errors, timeouts, refusals, streams, cancellations,
//! metadata) for benchmarking analytics. Rows go through the ordinary
//! request-log writer, so the analytics roll-ups are maintained exactly as
//! in production.

use crate::cli::CliError;
use crate::config::Config;
use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Map, Value};
use tollgate_store::request_log::LogRecord;

/// Rows handed to the writer before waiting for it, to bound memory.
const CHUNK: u64 = 20_000;

/// A small deterministic generator (SplitMix64): the same seed gives the
/// same data set, so benchmark runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// True with probability `per_mille` / 1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// (AI provider id, provider slug, models with their price in picodollars
/// per prompt and per completion token).
/// A model with its prompt and completion price, picodollars per token.
type Model = (&'static str, i64, i64);

const PROVIDERS: &[(&str, &str, &[Model])] = &[
    (
        "openai",
        "openai-prod",
        &[
            ("gpt-4o", 2_500_000, 10_000_000),
            ("gpt-4o-mini", 150_000, 600_000),
            ("text-embedding-3-small", 20_000, 0),
        ],
    ),
    (
        "anthropic",
        "anthropic",
        &[
            ("claude-sonnet-4", 3_000_000, 15_000_000),
            ("claude-haiku-3-5", 800_000, 4_000_000),
        ],
    ),
    ("azure-openai", "azure-eu", &[("gpt-4o", 2_500_000, 10_000_000)]),
    (
        "bedrock",
        "bedrock-us",
        &[
            ("anthropic.claude-3-haiku", 250_000, 1_250_000),
            ("amazon.titan-embed-text-v2", 20_000, 0),
        ],
    ),
    ("google", "gemini", &[("gemini-2.0-flash", 100_000, 400_000)]),
    ("groq", "groq", &[("llama-3.3-70b-versatile", 590_000, 790_000)]),
];

/// What was written.
#[derive(Debug, Clone, Copy)]
pub struct Seeded {
    pub rows: u64,
    pub seconds: f64,
}

/// Writes `rows` requests spread evenly over the `days` days before now.
pub async fn seed_usage(config: Config, rows: u64, days: u32) -> Result<Seeded, CliError> {
    let (store, _, _) = crate::server::open_store(&config).await?;
    let (log, writer) = store.spawn_log_writer()?;
    let started = std::time::Instant::now();
    let end = Utc::now();
    let span_ms = i64::from(days.max(1)) * 86_400_000;
    let start = end - Duration::milliseconds(span_ms);
    let mut rng = Rng(0x005E_ED0F_7011_6A7E);
    let mut written = 0;
    while written < rows {
        let n = CHUNK.min(rows - written);
        for i in written..written + n {
            let at = start + Duration::milliseconds((i as i128 * span_ms as i128 / rows.max(1) as i128) as i64);
            log.record(row(&mut rng, i, at));
        }
        log.flush().await;
        written += n;
    }
    drop(log);
    let _ = writer.await;
    Ok(Seeded {
        rows: written,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn row(rng: &mut Rng, i: u64, at: DateTime<Utc>) -> LogRecord {
    // 6 workspaces of 5 keys; each key mostly uses two providers.
    let ws = rng.below(6);
    let key = ws * 5 + rng.below(5);
    let prov_idx = if rng.chance(800) {
        (key % PROVIDERS.len() as u64) as usize
    } else {
        rng.below(PROVIDERS.len() as u64) as usize
    };
    let (ai_provider, slug, models) = PROVIDERS[prov_idx];
    let (model, p_price, c_price) = models[rng.below(models.len() as u64) as usize];
    let embedding = c_price == 0;
    let streamed = !embedding && rng.chance(300);
    let mut r = LogRecord {
        id: format!("seed-{i:010}"),
        created_at: at,
        trace_id: format!("trace-seed-{i:010}"),
        workspace_id: Some(format!("ws-team-{ws}-5eed{ws:02}")),
        api_key_id: Some(format!("key-seed-{key:03}")),
        integration_id: Some(format!("int-{slug}")),
        integration_slug: Some(slug.to_owned()),
        provider_slug: Some(slug.to_owned()),
        ai_provider_id: Some(ai_provider.to_owned()),
        model: Some(model.to_owned()),
        endpoint: if embedding { "embeddings" } else { "chat.completions" }.to_owned(),
        status_code: 200,
        streamed,
        ..Default::default()
    };
    if rng.chance(500) {
        let mut m = Map::new();
        m.insert("env".into(), json!(if rng.chance(700) { "prod" } else { "staging" }));
        m.insert("_user".into(), Value::String(format!("user-{}", rng.below(200))));
        r.metadata = Some(m);
    }
    let roll = rng.below(1000);
    // Refusals: Tollgate answered itself, in well under a millisecond.
    let refusal = match roll {
        0..=29 => Some(("rate_limit", 429)),
        30..=44 => Some(("budget", 412)),
        45..=49 => Some(("policy", 412)),
        50..=54 => Some(("auth", 401)),
        55..=59 => Some(("permission", 403)),
        _ => None,
    };
    if let Some((why, status)) = refusal {
        r.status_code = status;
        r.refusal = Some(why.to_owned());
        r.error_type = Some(
            match why {
                "rate_limit" => "workspace_rate_limit_error",
                "budget" => "workspace_exhaust_error",
                "policy" => "model_not_allowed_error",
                "auth" => "authentication_error",
                _ => "permission_error",
            }
            .to_owned(),
        );
        if why == "auth" || why == "permission" {
            r.provider_slug = None;
            r.model = None;
            r.ai_provider_id = None;
        }
        r.streamed = false;
        r.latency_us = 80 + rng.below(400);
        return r;
    }
    let overhead = 300 + rng.below(2_700);
    let prompt = 50 + rng.below(3_000);
    // Upstream time: 200 ms to ~6 s, skewed towards the fast end.
    let upstream = 200_000 + rng.below(1_500_000) * (1 + rng.below(4)) / (1 + rng.below(2));
    match roll {
        60..=89 => {
            r.status_code = 502;
            r.error_type = Some("upstream_error".into());
            r.upstream_latency_us = Some(upstream / 4);
            r.latency_us = upstream / 4 + overhead;
            return r;
        }
        90..=99 => {
            r.status_code = 504;
            r.error_type = Some("timeout_error".into());
            r.upstream_latency_us = Some(30_000_000);
            r.latency_us = 30_000_000 + overhead;
            return r;
        }
        100..=119 => {
            r.status_code = 400;
            r.error_type = Some("upstream_error".into());
            r.upstream_latency_us = Some(upstream / 10);
            r.latency_us = upstream / 10 + overhead;
            return r;
        }
        _ => {}
    }
    let completion = if embedding { 0 } else { 20 + rng.below(800) };
    let cached = if rng.chance(200) { prompt / 2 } else { 0 };
    r.prompt_tokens = prompt;
    r.completion_tokens = completion;
    r.cached_tokens = cached;
    r.total_tokens = prompt + completion;
    r.tokens_estimated = streamed && rng.chance(100);
    // A few models have no known price.
    r.cost_picos = (!rng.chance(30)).then(|| prompt as i64 * p_price + completion as i64 * c_price);
    r.upstream_latency_us = Some(upstream);
    r.latency_us = upstream + overhead;
    if streamed {
        r.ttft_us = Some(overhead + 80_000 + rng.below(upstream / 3));
        if rng.chance(30) {
            r.cancelled = true;
        }
    }
    r
}
