-- Analytics roll-ups: one row per UTC day and (workspace, API key, provider,
-- AI provider, model, status code), updated in the same transaction as the
-- request-log rows it sums. Absent dimensions are stored as '' so that the
-- primary key can cover them. Histograms are sparse (bucket u16, count u64)
-- little-endian pairs; see tollgate_store::analytics.
CREATE TABLE usage_daily (
    day_ms              INTEGER NOT NULL,
    workspace_id        TEXT NOT NULL,
    api_key_id          TEXT NOT NULL,
    provider_slug       TEXT NOT NULL,
    ai_provider_id      TEXT NOT NULL,
    model               TEXT NOT NULL,
    status_code         INTEGER NOT NULL,
    requests            INTEGER NOT NULL DEFAULT 0,
    successful          INTEGER NOT NULL DEFAULT 0,
    status_4xx          INTEGER NOT NULL DEFAULT 0,
    status_5xx          INTEGER NOT NULL DEFAULT 0,
    upstream_errors     INTEGER NOT NULL DEFAULT 0,
    timeouts            INTEGER NOT NULL DEFAULT 0,
    refused_rate_limit  INTEGER NOT NULL DEFAULT 0,
    refused_budget      INTEGER NOT NULL DEFAULT 0,
    refused_policy      INTEGER NOT NULL DEFAULT 0,
    refused_auth        INTEGER NOT NULL DEFAULT 0,
    refused_permission  INTEGER NOT NULL DEFAULT 0,
    cancelled           INTEGER NOT NULL DEFAULT 0,
    streamed            INTEGER NOT NULL DEFAULT 0,
    prompt_tokens       INTEGER NOT NULL DEFAULT 0,
    completion_tokens   INTEGER NOT NULL DEFAULT 0,
    cached_tokens       INTEGER NOT NULL DEFAULT 0,
    total_tokens        INTEGER NOT NULL DEFAULT 0,
    cost_picos          INTEGER NOT NULL DEFAULT 0,
    priced_requests     INTEGER NOT NULL DEFAULT 0,
    priced_tokens       INTEGER NOT NULL DEFAULT 0,
    latency_sum_us      INTEGER NOT NULL DEFAULT 0,
    latency_max_us      INTEGER NOT NULL DEFAULT 0,
    gen_tokens          INTEGER NOT NULL DEFAULT 0,
    gen_us              INTEGER NOT NULL DEFAULT 0,
    latency_hist        BLOB,
    ttft_hist           BLOB,
    overhead_hist       BLOB,
    PRIMARY KEY (day_ms, workspace_id, api_key_id, provider_slug, ai_provider_id, model, status_code)
) WITHOUT ROWID;

-- Requests per minute and workspace: the peak-requests-per-minute metric.
CREATE TABLE usage_minute (
    minute_ms     INTEGER NOT NULL,
    workspace_id  TEXT NOT NULL,
    requests      INTEGER NOT NULL,
    PRIMARY KEY (minute_ms, workspace_id)
) WITHOUT ROWID;

-- Days before `rollup_from_ms` (rows logged before this migration) are read
-- from the raw request log, so upgrading never gives wrong figures.
CREATE TABLE analytics_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO analytics_meta (key, value)
    SELECT 'rollup_from_ms', COALESCE(MAX(created_at_ms) + 1, 0) FROM usage_log;

