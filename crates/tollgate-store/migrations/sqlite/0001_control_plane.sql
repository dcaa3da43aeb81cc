-- Control plane: each record is a JSON document (see tollgate_core::records)
-- beside the columns that are indexed or must be unique.
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
    workspace_id TEXT REFERENCES workspaces(id) ON DELETE CASCADE,
    data         TEXT NOT NULL
);

CREATE TABLE integrations (
    id           TEXT PRIMARY KEY NOT NULL,
    slug         TEXT NOT NULL UNIQUE,
    workspace_id TEXT REFERENCES workspaces(id) ON DELETE CASCADE,
    data         TEXT NOT NULL
);

CREATE TABLE providers (
    id             TEXT PRIMARY KEY NOT NULL,
    workspace_id   TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    integration_id TEXT NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    slug           TEXT NOT NULL,
    data           TEXT NOT NULL,
    UNIQUE (workspace_id, slug)
);

CREATE TABLE audit_logs (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    at_ms       INTEGER NOT NULL,
    actor       TEXT,
    action      TEXT NOT NULL,
    object_type TEXT NOT NULL,
    object_id   TEXT NOT NULL,
    details     TEXT NOT NULL
);
CREATE INDEX audit_logs_object ON audit_logs (object_type, object_id);
CREATE INDEX audit_logs_at ON audit_logs (at_ms);
