-- Routing configs: saved configs (pc-… slugs), every version kept, and the
-- request log's attempt columns (one row per attempt under a trace id).
CREATE TABLE configs (
    id           TEXT PRIMARY KEY,
    slug         TEXT NOT NULL UNIQUE,
    workspace_id TEXT REFERENCES workspaces (id) ON DELETE CASCADE,
    data         TEXT NOT NULL
);
CREATE INDEX configs_ws ON configs (workspace_id);

CREATE TABLE config_versions (
    version_id    TEXT PRIMARY KEY,
    config_id     TEXT NOT NULL REFERENCES configs (id) ON DELETE CASCADE,
    created_at_ms INTEGER NOT NULL,
    config        TEXT NOT NULL
);
CREATE INDEX config_versions_config ON config_versions (config_id, created_at_ms);

-- The config target an attempt went to (`config.targets[1]`; null without a config).
ALTER TABLE usage_log ADD COLUMN target_path TEXT;
-- Which retry of its target this attempt was (0 = the first try).
ALTER TABLE usage_log ADD COLUMN retry_attempt INTEGER NOT NULL DEFAULT 0;
-- The attempt's place in its request (0, 1, ...).
ALTER TABLE usage_log ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;
-- 1 for the attempt whose answer the client got: request counts use only these.
ALTER TABLE usage_log ADD COLUMN is_final INTEGER NOT NULL DEFAULT 1;

-- Analytics: every attempt, beside `requests` (final attempts only).
ALTER TABLE usage_daily ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
