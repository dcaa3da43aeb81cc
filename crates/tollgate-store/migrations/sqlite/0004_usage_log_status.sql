-- The request log filtered by status (errors), newest first, without
-- scanning every row: the dashboard's and GET /v1/logs?status_code=.
CREATE INDEX usage_log_status_time ON usage_log (status_code, created_at_ms, seq);
