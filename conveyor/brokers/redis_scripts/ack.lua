-- ack: finished messages leave the broker.
-- ARGV: prefix, then (id, token, queue) per delivery.
-- Returns 1 per delivery whose token still held the lease, else 0 (and that
-- message is left untouched: its lease moved on to another consumer).

local ids, queues, ok = check_leases(2)
local results, done, by_queue, seen = {}, {}, {}, {}
for i, id in ipairs(ids) do
  if ok[i] and not seen[id] then
    seen[id] = true
    done[#done + 1] = id
    group(by_queue, inflight_key(queues[i]), id)
    results[i] = 1
  else
    results[i] = 0
  end
end
for key, members in pairs(by_queue) do in_slices(members, 'ZREM', key) end
drop_message(done)
return results
