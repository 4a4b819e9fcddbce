-- discard_dead: delete dead letters for good.
-- ARGV: prefix, queue, id... (no ids: all of them).  Returns how many.

local queue = ARGV[2]
if #ARGV == 2 then
  local n = redis.call('ZCARD', dead_key(queue))
  redis.call('DEL', dead_key(queue), deadmsg_key(queue))
  return n
end
local n = 0
for i = 3, #ARGV do
  n = n + redis.call('ZREM', dead_key(queue), ARGV[i])
  redis.call('HDEL', deadmsg_key(queue), ARGV[i])
end
return n
