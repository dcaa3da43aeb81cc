-- Tollgate's limit counters in Redis (see redis.rs). One script: each call
-- is one atomic step; ARGV[1] names the operation.
--
-- A counter is a hash, <prefix>{<group>}:c:<counter key>, with the fields
--   n  consumed in the window
--   r  reserved: the sum of its live reservations
--   t  set once the threshold alert fired in this window
--   x  set once the limit alert fired in this window
-- and a sorted set, <prefix>{<group>}:l:<counter key>, of its reservations:
-- member "<reservation id>:<check>|<amount>", score the end of its lease (ms
-- on the gateway's clock). A reservation whose lease ended (its replica died
-- holding it) is dropped, and its amount given back, by the next call that
-- reads the counter. Both expire a while after their window ends.
-- <prefix>{<group>}:epoch marks the group's counters as rebuilt from the
-- request log on this Redis server: it holds the server's run_id. Without
-- it, or with another server's (a replica promoted by a failover may have
-- missed the last writes of its master, which replicated them
-- asynchronously; a server restarted from a snapshot lost what came after
-- it), admission answers "restore".
--
-- The script knows no limit rule: the caller works them out as bounds and
-- ranges (tollgate_core::admission: Plan::bounds, BudgetMarks::firing) and
-- the script compares and adds. Amounts are integers 0 ..= 2^63-1 sent as
-- decimal strings. Lua's numbers are doubles, exact only below 2^53, so an
-- amount is held as two limbs {high, low} in base 10^9, and sums saturate at
-- 2^63-1 as the Rust side's do.

local BASE = 1000000000
local MAX = {9223372036, 854775807}
local ZERO = {0, 0}

-- A decimal string (or false/'' for a missing field) as {high, low}.
local function amount(s)
  if not s or s == '' then return ZERO end
  local len = string.len(s)
  if len <= 9 then return {0, tonumber(s)} end
  return {tonumber(string.sub(s, 1, len - 9)), tonumber(string.sub(s, len - 8))}
end

local function text(a)
  if a[1] == 0 then return string.format('%d', a[2]) end
  return string.format('%d%09d', a[1], a[2])
end

local function le(a, b)
  return a[1] < b[1] or (a[1] == b[1] and a[2] <= b[2])
end

local function lt(a, b)
  return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2])
end

-- a + b, at most 2^63-1.
local function add(a, b)
  local hi, lo = a[1] + b[1], a[2] + b[2]
  if lo >= BASE then hi, lo = hi + 1, lo - BASE end
  local s = {hi, lo}
  if le(s, MAX) then return s end
  return MAX
end

-- a - b, at least 0.
local function sub(a, b)
  if le(a, b) then return ZERO end
  local hi, lo = a[1] - b[1], a[2] - b[2]
  if lo < 0 then hi, lo = hi - 1, lo + BASE end
  return {hi, lo}
end

-- A counter's {consumed, reserved, whether its hash exists} at `now`,
-- after giving back the reservations whose lease has ended. A counter that
-- never holds reservations (a request-rate limit's: `reserving` false) has
-- no leases to read.
local function load(hash, leases, now, reserving)
  local fields = redis.call('HMGET', hash, 'n', 'r')
  local reserved = amount(fields[2])
  if reserving then
    local ended = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
    if #ended > 0 then
      for _, member in ipairs(ended) do
        reserved = sub(reserved, amount(string.match(member, '|(%d+)$')))
      end
      redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
      redis.call('HSET', hash, 'r', text(reserved))
    end
  end
  return {amount(fields[1]), reserved, fields[1] ~= false or fields[2] ~= false}
end

-- This Redis server's run_id: new with every start of every server, and
-- not replicated. A server that does not tell it (INFO renamed away, a
-- Redis-compatible server without the field) is '-': its counters are then
-- trusted as long as the epoch exists, as an empty Redis still shows.
local function instance()
  local info = redis.pcall('INFO', 'server')
  if type(info) ~= 'string' then return '-' end
  return string.match(info, 'run_id:(%x+)') or '-'
end

local op = ARGV[1]

if op == 'admit' then
  -- KEYS: the group's epoch, then each check's hash and leases.
  -- ARGV: now (ms), lease end (ms), then per check seven values: max used
  -- and max consumed ('' if nothing fits), consume, reserve, the
  -- reservation's member ('' if nothing is reserved), ttl (ms; '' for no
  -- expiry), whether the counter holds reservations ('1' or '0').
  -- A window's keys all expire at its end plus a grace, so the hash gets
  -- its expiry when this call creates it, and the leases (which Redis
  -- deletes when their last member goes) whenever a member is added.
  -- Answers {'restore'}, {'refused', check, consumed, reserved, then every
  -- check's consumed and reserved as they stood}, or {'ok', then every
  -- check's consumed and reserved after its own admission}.
  if redis.call('GET', KEYS[1]) ~= instance() then return {'restore'} end
  local now, lease_end = ARGV[2], ARGV[3]
  local n = (#KEYS - 1) / 2
  local counts, before, after = {}, {}, {}
  for i = 1, n do
    local hash = KEYS[2 * i]
    if not counts[hash] then
      counts[hash] = load(hash, KEYS[2 * i + 1], now, ARGV[3 + i * 7] == '1')
    end
    before[i] = counts[hash]
  end
  -- All or nothing: nothing is written until every check fits.
  for i = 1, n do
    local a = 3 + (i - 1) * 7
    local hash = KEYS[2 * i]
    local c = counts[hash]
    local max_used, max_consumed = ARGV[a + 1], ARGV[a + 2]
    if max_used == '' or not le(add(c[1], c[2]), amount(max_used)) or not le(c[1], amount(max_consumed)) then
      local out = {'refused', tostring(i), text(c[1]), text(c[2])}
      for j = 1, n do
        out[#out + 1] = text(before[j][1])
        out[#out + 1] = text(before[j][2])
      end
      return out
    end
    -- A new table, so that `before` keeps what stood.
    c = {add(c[1], amount(ARGV[a + 3])), add(c[2], amount(ARGV[a + 4])), c[3]}
    counts[hash] = c
    after[i] = c
  end
  local out, written = {'ok'}, {}
  for i = 1, n do
    local a = 3 + (i - 1) * 7
    local hash, leases = KEYS[2 * i], KEYS[2 * i + 1]
    local c = counts[hash]
    local member, ttl = ARGV[a + 5], ARGV[a + 6]
    if not written[hash] then
      written[hash] = true
      redis.call('HSET', hash, 'n', text(c[1]), 'r', text(c[2]))
      if ttl ~= '' and not c[3] then redis.call('PEXPIRE', hash, ttl) end
    end
    if member ~= '' then
      redis.call('ZADD', leases, lease_end, member)
      if ttl ~= '' then redis.call('PEXPIRE', leases, ttl) end
    end
    out[#out + 1] = text(after[i][1])
    out[#out + 1] = text(after[i][2])
  end
  return out

elseif op == 'settle' then
  -- KEYS: each held counter's hash and leases.
  -- ARGV per counter, seven values: the reservation's member ('' if nothing
  -- was reserved), the amount reserved, the amount to add to consumed, then
  -- the ranges lo, hi of consumption (before) in which the threshold and
  -- the limit alerts fire ('' for none).
  -- Answers, per counter: consumed after ('' if the counter is gone:
  -- forgotten, expired with its window, or lost with Redis's data), and
  -- whether each alert fired ('1' or '0').
  local out = {}
  for i = 1, #KEYS / 2 do
    local a = 1 + (i - 1) * 7
    local hash, leases = KEYS[2 * i - 1], KEYS[2 * i]
    local fields = redis.call('HMGET', hash, 'n', 'r')
    if fields[1] == false and fields[2] == false then
      out[#out + 1] = ''
      out[#out + 1] = '0'
      out[#out + 1] = '0'
    else
      local member = ARGV[a + 1]
      local r = amount(fields[2])
      -- Only a reservation still held is given back (its lease may have ended).
      if member ~= '' and redis.call('ZREM', leases, member) == 1 then
        r = sub(r, amount(ARGV[a + 2]))
      end
      local before = amount(fields[1])
      local after = add(before, amount(ARGV[a + 3]))
      redis.call('HSET', hash, 'n', text(after), 'r', text(r))
      out[#out + 1] = text(after)
      for k, field in ipairs({'t', 'x'}) do
        local lo, hi = ARGV[a + 2 + 2 * k], ARGV[a + 3 + 2 * k]
        local fired = '0'
        if lo ~= '' and le(amount(lo), before) and lt(before, amount(hi))
            and redis.call('HSETNX', hash, field, '1') == 1 then
          fired = '1'
        end
        out[#out + 1] = fired
      end
    end
  end
  return out

elseif op == 'status' then
  -- KEYS: hash, leases. ARGV: now (ms). Answers {consumed, reserved}.
  local c = load(KEYS[1], KEYS[2], ARGV[2], true)
  return {text(c[1]), text(c[2])}

elseif op == 'reset' then
  -- KEYS: hash.
  if redis.call('EXISTS', KEYS[1]) == 1 then
    redis.call('HSET', KEYS[1], 'n', '0')
    redis.call('HDEL', KEYS[1], 't', 'x')
  end
  return {'ok'}

elseif op == 'restore' then
  -- KEYS: hash, leases. ARGV: consumed, whether the threshold and the limit
  -- alerts are already past ('1' or '0'), ttl (ms; '' for no expiry).
  redis.call('HSET', KEYS[1], 'n', ARGV[2])
  for k, field in ipairs({'t', 'x'}) do
    if ARGV[2 + k] == '1' then
      redis.call('HSET', KEYS[1], field, '1')
    else
      redis.call('HDEL', KEYS[1], field)
    end
  end
  if ARGV[5] ~= '' then
    redis.call('PEXPIRE', KEYS[1], ARGV[5])
    redis.call('PEXPIRE', KEYS[2], ARGV[5])
  end
  return {'ok'}

elseif op == 'begin' then
  -- KEYS: the group's epoch and rebuild lock. ARGV: this process's token,
  -- the lock's life (ms). Answers {'done'}, {'ours', this server's run_id}
  -- or {'theirs'}.
  local here = instance()
  if redis.call('GET', KEYS[1]) == here then return {'done'} end
  if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return {'ours', here} end
  return {'theirs'}

elseif op == 'restored' then
  -- KEYS: the group's epoch and rebuild lock. ARGV: this process's token,
  -- the run_id 'begin' answered. Marks the group rebuilt only on the server
  -- the rebuild began on: after a failover in the middle of it, some of its
  -- writes went to the old server, and the next admission asks again.
  -- Answers {'ok'} or {'lost'}.
  local here = instance()
  if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
  if ARGV[3] ~= here then return {'lost'} end
  redis.call('SET', KEYS[1], here)
  return {'ok'}
end

return redis.error_reply('unknown counter operation ' .. tostring(op))
