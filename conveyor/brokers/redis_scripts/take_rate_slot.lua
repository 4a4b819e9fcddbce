-- take_rate_slot: reserve one start slot under several global rate limits.
-- ARGV: prefix, within_us, then name, interval_us pairs.  Returns the
-- microseconds from now (server clock) to the caller's slot: the latest of
-- the names' next free slots.  When that is at most within_us the slot is
-- taken under every name (each one's next free slot moves its interval past
-- it); otherwise nothing changes.  Keys expire once their bucket would be full
-- again, so idle limits cost nothing.  Microseconds: "5000/s" must not round
-- to a zero interval.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local slot = now
for i = 3, #ARGV, 2 do
  local nxt = tonumber(redis.call('GET', P .. ':rate:' .. ARGV[i]) or '0')
  if nxt > slot then slot = nxt end
end
local wait = slot - now
if wait <= tonumber(ARGV[2]) then
  for i = 3, #ARGV, 2 do
    local interval = tonumber(ARGV[i + 1])
    local ttl_ms = math.floor((wait + interval) / 1000) + 1000
    redis.call('SET', P .. ':rate:' .. ARGV[i], string.format('%d', slot + interval), 'PX', ttl_ms)
  end
end
return wait
