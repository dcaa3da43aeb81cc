-- The request log, its analytics roll-ups and the alert outbox on
-- PostgreSQL: the tables of SQLite's 0002-0006 and the outbox, as they stand
-- after those migrations. Integers are BIGINT (SQLite's INTEGER is 64-bit),
-- flags BOOLEAN, histograms BYTEA. `metadata` is JSONB (filtered and grouped
-- by `metadata ->> key`); the writer stores it without NUL characters, which
-- JSONB cannot hold.
CREATE TABLE usage_log (
    seq                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                  TEXT NOT NULL UNIQUE,
    created_at_ms       BIGINT NOT NULL,
    trace_id            TEXT NOT NULL,
    workspace_id        TEXT,
    api_key_id          TEXT,
    integration_id      TEXT,
    integration_slug    TEXT,
    provider_slug       TEXT,
    ai_provider_id      TEXT,
    model               TEXT,
    endpoint            TEXT NOT NULL,
    status_code         BIGINT NOT NULL,
    error_type          TEXT,
    refusal             TEXT,
    streamed            BOOLEAN NOT NULL DEFAULT FALSE,
    cancelled           BOOLEAN NOT NULL DEFAULT FALSE,
    prompt_tokens       BIGINT NOT NULL DEFAULT 0,
    completion_tokens   BIGINT NOT NULL DEFAULT 0,
    cached_tokens       BIGINT NOT NULL DEFAULT 0,
    total_tokens        BIGINT NOT NULL DEFAULT 0,
    tokens_estimated    BOOLEAN NOT NULL DEFAULT FALSE,
    cost_picos          BIGINT,
    latency_us          BIGINT NOT NULL,
    ttft_us             BIGINT,
    upstream_latency_us BIGINT,
    metadata            JSONB,
    request_body        TEXT,
    response_body       TEXT,
    target_path         TEXT,
    retry_attempt       BIGINT NOT NULL DEFAULT 0,
    attempt             BIGINT NOT NULL DEFAULT 0,
    is_final            BOOLEAN NOT NULL DEFAULT TRUE,
    latency_bucket      BIGINT,
    ttft_bucket         BIGINT,
    overhead_bucket     BIGINT
);
CREATE INDEX usage_log_time ON usage_log (created_at_ms);
CREATE INDEX usage_log_ws_time ON usage_log (workspace_id, created_at_ms);
CREATE INDEX usage_log_key_time ON usage_log (api_key_id, created_at_ms);
CREATE INDEX usage_log_trace ON usage_log (trace_id);
CREATE INDEX usage_log_status_time ON usage_log (status_code, created_at_ms, seq);

-- Roll-ups: one row per UTC day and (workspace, API key, provider, AI
-- provider, model, status code); absent dimensions are ''. Histograms are
-- sparse (bucket u16, count u64) little-endian pairs (tollgate_store::analytics).
CREATE TABLE usage_daily (
    day_ms              BIGINT NOT NULL,
    workspace_id        TEXT NOT NULL,
    api_key_id          TEXT NOT NULL,
    provider_slug       TEXT NOT NULL,
    ai_provider_id      TEXT NOT NULL,
    model               TEXT NOT NULL,
    status_code         BIGINT NOT NULL,
    requests            BIGINT NOT NULL DEFAULT 0,
    successful          BIGINT NOT NULL DEFAULT 0,
    status_4xx          BIGINT NOT NULL DEFAULT 0,
    status_5xx          BIGINT NOT NULL DEFAULT 0,
    upstream_errors     BIGINT NOT NULL DEFAULT 0,
    timeouts            BIGINT NOT NULL DEFAULT 0,
    refused_rate_limit  BIGINT NOT NULL DEFAULT 0,
    refused_budget      BIGINT NOT NULL DEFAULT 0,
    refused_policy      BIGINT NOT NULL DEFAULT 0,
    refused_auth        BIGINT NOT NULL DEFAULT 0,
    refused_permission  BIGINT NOT NULL DEFAULT 0,
    cancelled           BIGINT NOT NULL DEFAULT 0,
    streamed            BIGINT NOT NULL DEFAULT 0,
    prompt_tokens       BIGINT NOT NULL DEFAULT 0,
    completion_tokens   BIGINT NOT NULL DEFAULT 0,
    cached_tokens       BIGINT NOT NULL DEFAULT 0,
    total_tokens        BIGINT NOT NULL DEFAULT 0,
    cost_picos          BIGINT NOT NULL DEFAULT 0,
    priced_requests     BIGINT NOT NULL DEFAULT 0,
    priced_tokens       BIGINT NOT NULL DEFAULT 0,
    latency_sum_us      BIGINT NOT NULL DEFAULT 0,
    latency_max_us      BIGINT NOT NULL DEFAULT 0,
    gen_tokens          BIGINT NOT NULL DEFAULT 0,
    gen_us              BIGINT NOT NULL DEFAULT 0,
    attempts            BIGINT NOT NULL DEFAULT 0,
    latency_hist        BYTEA,
    ttft_hist           BYTEA,
    overhead_hist       BYTEA,
    PRIMARY KEY (day_ms, workspace_id, api_key_id, provider_slug, ai_provider_id, model, status_code)
);

-- Requests per minute and workspace: the peak-requests-per-minute metric.
CREATE TABLE usage_minute (
    minute_ms     BIGINT NOT NULL,
    workspace_id  TEXT NOT NULL,
    requests      BIGINT NOT NULL,
    PRIMARY KEY (minute_ms, workspace_id)
);

-- The log starts empty here, so the roll-ups cover it from the epoch (as
-- SQLite's 0003 does on an empty log).
CREATE TABLE analytics_meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO analytics_meta (key, value) VALUES ('rollup_from_ms', 0);

-- The alert outbox (SQLite's is created by Outbox::init): here, so that
-- replicas starting together do not race on creating it.
CREATE TABLE IF NOT EXISTS alert_outbox (
    id TEXT PRIMARY KEY,
    dedupe_key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    limit_id TEXT NOT NULL,
    workspace_id TEXT,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    sent_at BIGINT,
    email_state TEXT NOT NULL,
    email_attempts BIGINT NOT NULL DEFAULT 0,
    email_next_at BIGINT NOT NULL,
    email_error TEXT,
    email_done_at BIGINT,
    webhook_state TEXT NOT NULL,
    webhook_attempts BIGINT NOT NULL DEFAULT 0,
    webhook_next_at BIGINT NOT NULL,
    webhook_error TEXT,
    webhook_done_at BIGINT
);
CREATE INDEX IF NOT EXISTS alert_outbox_email_due ON alert_outbox (email_state, email_next_at);
CREATE INDEX IF NOT EXISTS alert_outbox_webhook_due ON alert_outbox (webhook_state, webhook_next_at);
