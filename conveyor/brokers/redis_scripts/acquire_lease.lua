-- acquire_lease: take a free named lease or renew one this holder has.
-- ARGV: prefix, name, holder, ttl_ms.  Returns 1, or 0 if another holds it.
-- Expiry is Redis's own (PX), so the holders' clocks do not matter.

local key = P .. ':mutex:' .. ARGV[2]
local current = redis.call('GET', key)
if current and current ~= ARGV[3] then return 0 end
redis.call('SET', key, ARGV[3], 'PX', ARGV[4])
return 1
