-- Dashboard sign-in sessions, in the database so that every replica serves
-- every session (no sticky routing). The session id is stored only as its
-- SHA-256; the API key it signs in as is sealed under the master key.
CREATE TABLE dashboard_sessions (
    id_hash       TEXT PRIMARY KEY,
    key_hash      TEXT NOT NULL,
    sealed_key    TEXT NOT NULL,
    csrf          TEXT NOT NULL,
    workspace_id  TEXT,
    key_name      TEXT NOT NULL,
    last_seen_ms  BIGINT NOT NULL
);
CREATE INDEX dashboard_sessions_key_hash ON dashboard_sessions (key_hash);
CREATE INDEX dashboard_sessions_last_seen ON dashboard_sessions (last_seen_ms);
