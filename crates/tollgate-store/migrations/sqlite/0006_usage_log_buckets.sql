-- The histogram bucket (`analytics::bucket_of`) of each request's latency,
-- time to first token and gateway overhead, written with the row so that
-- analytics over long raw stretches groups by a column instead of computing
-- the bucket per row. Rows logged before this migration have NULL here and
-- are bucketed by the same function written in SQL.
ALTER TABLE usage_log ADD COLUMN latency_bucket INTEGER;
ALTER TABLE usage_log ADD COLUMN ttft_bucket INTEGER;
ALTER TABLE usage_log ADD COLUMN overhead_bucket INTEGER;
