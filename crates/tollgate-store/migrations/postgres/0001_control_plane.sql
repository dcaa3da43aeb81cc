-- Control plane on PostgreSQL: the same tables as SQLite's 0001 and 0005
-- (records as JSON documents beside the columns that are indexed or must be
-- unique), with BIGINT milliseconds and identity columns for insertion order.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

CREATE TABLE workspaces (
    id   TEXT PRIMARY KEY NOT NULL,
    slug TEXT NOT NULL UNIQUE,
    data TEXT NOT NULL
);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    workspace_id TEXT REFERENCES workspaces (id) ON DELETE CASCADE,
    data         TEXT NOT NULL
);
CREATE INDEX api_keys_ws ON api_keys (workspace_id);

CREATE TABLE integrations (
    id           TEXT PRIMARY KEY NOT NULL,
    slug         TEXT NOT NULL UNIQUE,
    workspace_id TEXT REFERENCES workspaces (id) ON DELETE CASCADE,
    data         TEXT NOT NULL
);
CREATE INDEX integrations_ws ON integrations (workspace_id);

CREATE TABLE providers (
    id             TEXT PRIMARY KEY NOT NULL,
    workspace_id   TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    integration_id TEXT NOT NULL REFERENCES integrations (id) ON DELETE CASCADE,
    slug           TEXT NOT NULL,
    data           TEXT NOT NULL,
    UNIQUE (workspace_id, slug)
);
CREATE INDEX providers_integration ON providers (integration_id);

CREATE TABLE audit_logs (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    at_ms       BIGINT NOT NULL,
    actor       TEXT,
    action      TEXT NOT NULL,
    object_type TEXT NOT NULL,
    object_id   TEXT NOT NULL,
    details     TEXT NOT NULL
);
CREATE INDEX audit_logs_object ON audit_logs (object_type, object_id);
CREATE INDEX audit_logs_at ON audit_logs (at_ms);

CREATE TABLE configs (
    id           TEXT PRIMARY KEY,
    slug         TEXT NOT NULL UNIQUE,
    workspace_id TEXT REFERENCES workspaces (id) ON DELETE CASCADE,
    data         TEXT NOT NULL
);
CREATE INDEX configs_ws ON configs (workspace_id);

CREATE TABLE config_versions (
    seq           BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    version_id    TEXT PRIMARY KEY,
    config_id     TEXT NOT NULL REFERENCES configs (id) ON DELETE CASCADE,
    created_at_ms BIGINT NOT NULL,
    config        TEXT NOT NULL
);
CREATE INDEX config_versions_config ON config_versions (config_id, created_at_ms);
