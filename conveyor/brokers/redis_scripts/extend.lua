-- extend: renew leases to lease_ms from now (server time).
-- ARGV: prefix, lease_ms, then (id, token, queue) per delivery.
-- Returns 1 per lease still held (and renewed), else 0.

local deadline = now_ms() + tonumber(ARGV[2])
local ids, queues, ok = check_leases(3)
local results, by_queue = {}, {}
for i, id in ipairs(ids) do
  if ok[i] then
    group(by_queue, inflight_key(queues[i]), deadline, id)
    results[i] = 1
  else
    results[i] = 0
  end
end
for key, pairs_ in pairs(by_queue) do in_slices(pairs_, 'ZADD', key, 'XX') end
return results
