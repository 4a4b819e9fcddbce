-- enqueue_one: store one message sent now without an idempotency key (a
-- plain `.delay()`); enqueue_plain.lua takes chunks of them, enqueue.lua the
-- rest.  ARGV: prefix, queue, priority (0..9), id, body.
-- Returns what enqueue.lua returns: {1, id} when the id is already stored
-- (nothing is written then), {} when it was stored now.
--
-- enqueue_plain.lua's writes for one message, in a script without the
-- _common.lua prelude: every key is built only where it is used, and no
-- helper closure is made per call.  The prelude's top-level keys and
-- closures were a sixth of this script's server time (docs/performance.md,
-- round two, fourth pass).  The key names are the ones _common.lua builds
-- (P:msg, P:prio, P:ready:{q}:{p}, P:wake:{q}, P:queues);
-- tests/unit/test_redis_enqueue.py checks the stored keys against enqueue.lua's.
--
-- As _common.lua's announce(): the queue is registered when a wake token is
-- pushed; a waiting token means it is registered and no consumer is idle.

local P, queue, prio, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('HSETNX', P .. ':msg', id, ARGV[5]) == 0 then return {1, id} end
if prio ~= '0' then redis.call('HSET', P .. ':prio', id, prio) end
redis.call('RPUSH', P .. ':ready:' .. queue .. ':' .. prio, id)
local wake = P .. ':wake:' .. queue
if redis.call('LLEN', wake) == 0 then
  redis.call('SADD', P .. ':queues', queue)
  redis.call('LPUSH', wake, '1')
end
return {}
