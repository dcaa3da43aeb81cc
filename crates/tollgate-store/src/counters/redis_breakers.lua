-- One circuit breaker's outcome, atomically (see redis_breakers.rs).
-- KEYS[1]: the failures (a sorted set, scored by time), KEYS[2]: open until.
-- ARGV: "ok" | "fail", now, since, failures, open_until, keep_fails_ms,
-- keep_open_ms, member.
if ARGV[1] == 'ok' then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 0
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[8])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[7])
  redis.call('DEL', KEYS[1])
  return 1
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 0
