-- Helpers prepended to every broker script (see conveyor/brokers/redis.py for
-- the key layout).  ARGV[1] is always the key prefix; scripts build their keys
-- from it, like Dramatiq's dispatch.lua, because which queue keys a call
-- touches depends on stored data (a message's priority, an expired lease).
-- That ties the broker to one Redis primary: Redis Cluster is not supported.
--
-- Times are milliseconds of the *server's* clock (TIME), so a client with a
-- skewed clock neither sees delayed messages early nor expires leases wrongly.

local P = ARGV[1]
local MSG = P .. ':msg'
local PRIO = P .. ':prio'
local TOKEN = P .. ':token'
local DELIV = P .. ':deliv'
local QUEUES = P .. ':queues'
-- How many due or expired messages one call moves per queue: bounds the
-- time a single script holds the server when a large backlog comes due.
local MOVE_LIMIT = 1000
-- Lua's unpack() is limited by the C stack; commands take ids in slices.
local SLICE = 1000

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function ready_key(queue, prio) return P .. ':ready:' .. queue .. ':' .. prio end
local function delayed_key(queue) return P .. ':delayed:' .. queue end
local function inflight_key(queue) return P .. ':inflight:' .. queue end
local function dead_key(queue) return P .. ':dead:' .. queue end
local function deadmsg_key(queue) return P .. ':deadmsg:' .. queue end

local function ready_keys(queue)
  local keys = {}
  for prio = 9, 0, -1 do keys[#keys + 1] = ready_key(queue, prio) end
  return keys
end

-- Leave one token on the queue's wake list for a consumer blocked in BLPOP.
-- One is enough: a consumer that takes a full batch and leaves messages
-- behind passes the signal on (see reserve.lua).  Usually a token is already
-- there (no consumer is idle), and then this is a single LLEN.
local function wake(queue)
  local key = P .. ':wake:' .. queue
  if redis.call('LLEN', key) == 0 then redis.call('LPUSH', key, '1') end
end

-- What an enqueue does for each queue it stored to: register the queue (for
-- listings and stats) and wake a consumer.  While a token is waiting both are
-- done already: every token is pushed after its queue was registered (here,
-- or by a script handing back messages that some enqueue registered), and
-- nothing unregisters a queue, so then this is a single LLEN (no SADD).
local function announce(queue)
  local key = P .. ':wake:' .. queue
  if redis.call('LLEN', key) == 0 then
    redis.call('SADD', QUEUES, queue)
    redis.call('LPUSH', key, '1')
  end
end

-- Run `command key item...` over a long list in slices (SLICE is even, so
-- field/value or score/member pairs are never split).
local function in_slices(items, command, key, option)
  for i = 1, #items, SLICE do
    local last = math.min(i + SLICE - 1, #items)
    if option then
      redis.call(command, key, option, unpack(items, i, last))
    else
      redis.call(command, key, unpack(items, i, last))
    end
  end
end

-- HMGET for any number of fields (in slices), values in field order.
local function hmget(key, fields)
  local values = {}
  for i = 1, #fields, SLICE do
    local part = redis.call('HMGET', key, unpack(fields, i, math.min(i + SLICE - 1, #fields)))
    for j = 1, #part do values[i + j - 1] = part[j] end
  end
  return values
end

-- Append values to the list kept under `key` in `groups` (one command per
-- key later, instead of one per message).
local function group(groups, key, ...)
  local list = groups[key]
  if not list then
    list = {}
    groups[key] = list
  end
  for _, value in ipairs({...}) do list[#list + 1] = value end
end

-- Read (id, token, queue) triples from ARGV[first..]; ok[i] tells whether
-- the i-th token still holds its lease (one HMGET for the whole batch).
local function check_leases(first)
  local ids, tokens, queues, ok = {}, {}, {}, {}
  for i = first, #ARGV, 3 do
    ids[#ids + 1], tokens[#tokens + 1], queues[#queues + 1] = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  end
  if #ids == 0 then return ids, queues, ok end
  local held = hmget(TOKEN, ids)
  for i = 1, #ids do ok[i] = held[i] == tokens[i] end
  return ids, queues, ok
end

local function priority_of(stored)
  if stored then return stored end
  return '0'
end

-- A lease that is held: the stored token equals the caller's.
local function holds(id, token)
  return redis.call('HGET', TOKEN, id) == token
end

-- Forget everything kept about a message except where it is queued.
local function drop_message(ids)
  if #ids == 0 then return end
  in_slices(ids, 'HDEL', MSG)
  in_slices(ids, 'HDEL', PRIO)
  in_slices(ids, 'HDEL', TOKEN)
  in_slices(ids, 'HDEL', DELIV)
end

-- Delayed messages whose time has come join the back of their ready list.
local function promote_due(queue, now)
  local key = delayed_key(queue)
  local ids = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, MOVE_LIMIT)
  if #ids == 0 then return 0 end
  local prios = redis.call('HMGET', PRIO, unpack(ids))
  for i, id in ipairs(ids) do
    redis.call('RPUSH', ready_key(queue, priority_of(prios[i])), id)
  end
  redis.call('ZREM', key, unpack(ids))
  return #ids
end

-- Leases that ran out: their worker died or stalled.  The messages go to the
-- front of their ready list (they were first in line once already) and the
-- old token is forgotten, which fences the stale holder.
local function reclaim_expired(queue, now)
  local key = inflight_key(queue)
  local ids = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, MOVE_LIMIT)
  if #ids == 0 then return 0 end
  local prios = redis.call('HMGET', PRIO, unpack(ids))
  for i = #ids, 1, -1 do
    redis.call('LPUSH', ready_key(queue, priority_of(prios[i])), ids[i])
  end
  redis.call('HDEL', TOKEN, unpack(ids))
  redis.call('ZREM', key, unpack(ids))
  return #ids
end
