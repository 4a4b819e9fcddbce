-- requeue: give a leased message back, due after delay_ms.
-- ARGV: prefix, id, token, queue, delay_ms, count ('1': the hand-out counts
-- as a delivery, e.g. its worker died; '0': a graceful hand-back that does not).
-- Returns 1, or 0 when the token no longer holds the lease.

local id, token, queue = ARGV[2], ARGV[3], ARGV[4]
local delay_ms, counted = tonumber(ARGV[5]), ARGV[6] == '1'
if not holds(id, token) then return 0 end
redis.call('ZREM', inflight_key(queue), id)
redis.call('HDEL', TOKEN, id)
if not counted then redis.call('HINCRBY', DELIV, id, -1) end
if delay_ms > 0 then
  redis.call('ZADD', delayed_key(queue), now_ms() + delay_ms, id)
else
  -- The front of the line: it was handed out once already.
  redis.call('LPUSH', ready_key(queue, priority_of(redis.call('HGET', PRIO, id))), id)
end
wake(queue)
return 1
