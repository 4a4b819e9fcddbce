-- dead_letter: move a leased message to its queue's dead letters.
-- ARGV: prefix, id, token, queue, reason.
-- The dead letter is stored as "failed_ms:priority:reason_bytes:" .. reason .. body
-- in the deadmsg hash, and indexed by failure time in the dead sorted set.
-- Returns 1, or 0 when the token no longer holds the lease.

local id, token, queue, reason = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if not holds(id, token) then return 0 end
local body = redis.call('HGET', MSG, id) or ''
local prio = priority_of(redis.call('HGET', PRIO, id))
local now = now_ms()
redis.call('ZREM', inflight_key(queue), id)
drop_message({id})
redis.call('ZADD', dead_key(queue), now, id)
redis.call('HSET', deadmsg_key(queue), id, now .. ':' .. prio .. ':' .. #reason .. ':' .. reason .. body)
return 1
