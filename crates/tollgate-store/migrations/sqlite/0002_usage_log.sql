-- The request log: one row per gateway request, written in batches.
CREATE TABLE usage_log (
    seq                 INTEGER PRIMARY KEY AUTOINCREMENT,
    id                  TEXT NOT NULL UNIQUE,
    created_at_ms       INTEGER NOT NULL,
    trace_id            TEXT NOT NULL,
    workspace_id        TEXT,
    api_key_id          TEXT,
    integration_id      TEXT,
    integration_slug    TEXT,
    provider_slug       TEXT,
    ai_provider_id      TEXT,
    model               TEXT,
    endpoint            TEXT NOT NULL,
    status_code         INTEGER NOT NULL,
    error_type          TEXT,
    refusal             TEXT,
    streamed            INTEGER NOT NULL DEFAULT 0,
    cancelled           INTEGER NOT NULL DEFAULT 0,
    prompt_tokens       INTEGER NOT NULL DEFAULT 0,
    completion_tokens   INTEGER NOT NULL DEFAULT 0,
    cached_tokens       INTEGER NOT NULL DEFAULT 0,
    total_tokens        INTEGER NOT NULL DEFAULT 0,
    tokens_estimated    INTEGER NOT NULL DEFAULT 0,
    cost_picos          INTEGER,
    latency_us          INTEGER NOT NULL,
    ttft_us             INTEGER,
    upstream_latency_us INTEGER,
    metadata            TEXT,
    request_body        TEXT,
    response_body       TEXT
);
CREATE INDEX usage_log_time ON usage_log (created_at_ms);
CREATE INDEX usage_log_ws_time ON usage_log (workspace_id, created_at_ms);
CREATE INDEX usage_log_key_time ON usage_log (api_key_id, created_at_ms);
CREATE INDEX usage_log_trace ON usage_log (trace_id);
