-- enqueue_one: store one message with no ETA and no idempotency key (a plain
-- `.delay()`); enqueue.lua takes everything else.
-- ARGV: prefix, id, queue, priority (0..9), body.
-- Returns what enqueue.lua returns for a batch of one: {} when stored,
-- {1, id} when a message with this id is already stored.
-- HSETNX is the "already stored" check and the write in one command, and no
-- header is parsed: about half of enqueue.lua's server time for one message.

local id, queue, prio = ARGV[2], ARGV[3], ARGV[4]
if redis.call('HSETNX', MSG, id, ARGV[5]) == 0 then return {1, id} end
if prio ~= '0' then redis.call('HSET', PRIO, id, prio) end
redis.call('RPUSH', ready_key(queue, prio), id)
redis.call('SADD', QUEUES, queue)
wake(queue)
return {}
