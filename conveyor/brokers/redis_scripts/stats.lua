-- stats: {ready, delayed, inflight, dead} per queue, flattened.
-- ARGV: prefix, queue...
-- Reads only.  A delayed message that is already due, or a lease that has
-- already expired, counts as ready: that is what the next reserve will see.

local now = now_ms()
local out = {}
for i = 2, #ARGV do
  local queue = ARGV[i]
  local ready = 0
  for _, key in ipairs(ready_keys(queue)) do ready = ready + redis.call('LLEN', key) end
  local due = redis.call('ZCOUNT', delayed_key(queue), '-inf', now)
  local expired = redis.call('ZCOUNT', inflight_key(queue), '-inf', now)
  local delayed = redis.call('ZCARD', delayed_key(queue)) - due
  local inflight = redis.call('ZCARD', inflight_key(queue)) - expired
  out[#out + 1] = ready + due + expired
  out[#out + 1] = delayed
  out[#out + 1] = inflight
  out[#out + 1] = redis.call('ZCARD', dead_key(queue))
end
return out
