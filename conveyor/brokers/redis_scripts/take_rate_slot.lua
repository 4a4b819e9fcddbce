-- take_rate_slot: reserve the next start slot of a global rate limit.
-- ARGV: prefix, name, interval_us, within_us.  Returns the microseconds from
-- now (server clock) to the next free slot; when that is at most within_us
-- the slot is the caller's and the next one moves interval_us past it.
-- The key expires once the bucket would be full again, so idle limits cost
-- nothing.  Microseconds: "5000/s" must not round to a zero interval.

local key = P .. ':rate:' .. ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[3])
local nxt = tonumber(redis.call('GET', key) or '0')
local slot = math.max(now, nxt)
local wait = slot - now
if wait <= tonumber(ARGV[4]) then
  local ttl_ms = math.floor((wait + interval) / 1000) + 1000
  redis.call('SET', key, string.format('%d', slot + interval), 'PX', ttl_ms)
end
return wait
