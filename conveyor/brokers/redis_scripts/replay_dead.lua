-- replay_dead: put dead letters back at the end of their ready list, oldest
-- first, with their priority and a fresh delivery count.
-- ARGV: prefix, queue, id... (no ids: all of the queue's dead letters).
-- Returns how many dead letters were taken.  One whose id is stored again
-- meanwhile (re-sent by a producer) is taken but not stored twice.

local queue = ARGV[2]
local ids = {}
if #ARGV > 2 then
  for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('ZRANGE', dead_key(queue), 0, -1)
end
local taken = 0
for _, id in ipairs(ids) do
  local packed = redis.call('HGET', deadmsg_key(queue), id)
  if packed then
    local a = string.find(packed, ':', 1, true)
    local b = string.find(packed, ':', a + 1, true)
    local c = string.find(packed, ':', b + 1, true)
    local prio = string.sub(packed, a + 1, b - 1)
    local body = string.sub(packed, c + 1 + tonumber(string.sub(packed, b + 1, c - 1)))
    redis.call('HDEL', deadmsg_key(queue), id)
    redis.call('ZREM', dead_key(queue), id)
    taken = taken + 1
    if redis.call('HSETNX', MSG, id, body) == 1 then
      if prio ~= '0' then redis.call('HSET', PRIO, id, prio) end
      redis.call('RPUSH', ready_key(queue, prio), id)
    end
  end
end
if taken > 0 then wake(queue) end
return taken
