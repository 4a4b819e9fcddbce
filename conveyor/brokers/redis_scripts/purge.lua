-- purge: drop a queue's ready and delayed messages (not the leased ones).
-- ARGV: prefix, queue.  Returns how many were dropped.
-- Expired leases are reclaimed first, so purge agrees with stats about what
-- is "ready".

local queue = ARGV[2]
local now = now_ms()
while reclaim_expired(queue, now) > 0 do end
local doomed = {}
for _, key in ipairs(ready_keys(queue)) do
  for _, id in ipairs(redis.call('LRANGE', key, 0, -1)) do doomed[#doomed + 1] = id end
  redis.call('DEL', key)
end
for _, id in ipairs(redis.call('ZRANGE', delayed_key(queue), 0, -1)) do
  doomed[#doomed + 1] = id
end
redis.call('DEL', delayed_key(queue))
drop_message(doomed)
return #doomed
