-- reserve: lease up to `count` ready messages.
-- ARGV: prefix, count, lease_ms, token_base, queue...
-- Returns {hint_ms, then per ready list popped: queue, priority, n, then n
-- times id, body, deliveries, revoked}.  ``revoked`` is 1 when
-- P:revoked:<task id> exists (the task id is the message id up to its first
-- ``~``), so the consumer needs no separate revocation round trip per batch.  The i-th message overall (from 1) has token
-- token_base .. i; the client rebuilds it rather than reading it back, and
-- queue and priority come once per list: the reply is half the size.
-- hint_ms matters only when nothing was taken: milliseconds until the earliest
-- delayed message or lease of these queues comes due (-1: none), which the
-- client uses to cap its BLPOP on the wake lists.
--
-- Order: priority 0 up to 9 (0 most urgent, as Celery on Redis); within a priority, queues in the order given;
-- within a queue, first in first out.  LMPOP (Redis 7) pops from the first
-- non-empty list of a key list ordered exactly so, a whole batch at a time.
-- Tokens are token_base .. n: the client makes token_base random (Lua has no
-- good randomness), n keeps them unique within the call.

local count = tonumber(ARGV[2])
local lease_ms = tonumber(ARGV[3])
local token_base = ARGV[4]
local queues = {}
for i = 5, #ARGV do queues[#queues + 1] = ARGV[i] end

-- Lease popped ids of one ready list: six commands for the whole slice, or
-- five for a single id (a woken consumer's usual slice), whose delivery
-- count is bumped by one HINCRBY instead of a read and a write.
local function lease(queue, prio, ids, deadline, taken, out)
  local bodies = redis.call('HMGET', MSG, unpack(ids))
  local counts = #ids > 1 and redis.call('HMGET', DELIV, unpack(ids))
  local revoked_keys = {}
  for i, id in ipairs(ids) do revoked_keys[i] = P .. ':revoked:' .. string.match(id, '^[^~]*') end
  local revoked = redis.call('MGET', unpack(revoked_keys))
  local leases, tokens, deliveries = {}, {}, {}
  local header = #out
  out[header + 1], out[header + 2], out[header + 3] = queue, prio, 0
  for i, id in ipairs(ids) do
    local body = bodies[i]
    if body then  -- an id without a body is an orphan: drop it
      taken = taken + 1
      local token = token_base .. taken
      local n
      if counts then
        n = (tonumber(counts[i]) or 0) + 1
        deliveries[#deliveries + 1], deliveries[#deliveries + 2] = id, n
      else
        n = redis.call('HINCRBY', DELIV, id, 1)
      end
      leases[#leases + 1], leases[#leases + 2] = deadline, id
      tokens[#tokens + 1], tokens[#tokens + 2] = id, token
      local k = #out
      out[k + 1], out[k + 2], out[k + 3] = id, body, n
      out[k + 4] = revoked[i] and 1 or 0
    end
  end
  out[header + 3] = #leases / 2
  if #leases > 0 then
    redis.call('ZADD', inflight_key(queue), unpack(leases))
    redis.call('HSET', TOKEN, unpack(tokens))
  end
  if #deliveries > 0 then redis.call('HSET', DELIV, unpack(deliveries)) end
  return taken
end

local function first_score(key)
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if first[2] then return tonumber(first[2]) end
  return nil
end

local function next_due_in(now)
  local best = -1
  for _, queue in ipairs(queues) do
    for _, key in ipairs({delayed_key(queue), inflight_key(queue)}) do
      local due = first_score(key)
      if due then
        local wait = math.max(0, due - now)
        if best < 0 or wait < best then best = wait end
      end
    end
  end
  return best
end

-- Due delayed messages and lapsed leases are moved (promote_due,
-- reclaim_expired) only when the sorted set's first score says some are:
-- one peek per set instead of a range query, and the peeks are the hint
-- when nothing is taken (next_due_in reads them again only if something
-- was moved).
local now = now_ms()
local soonest, moved = -1, false
local function move_due(key, move, queue)
  local due = first_score(key)
  if not due then return end
  if due <= now then
    move(queue, now)
    moved = true
  elseif soonest < 0 or due - now < soonest then
    soonest = due - now
  end
end
for _, queue in ipairs(queues) do
  move_due(delayed_key(queue), promote_due, queue)
  move_due(inflight_key(queue), reclaim_expired, queue)
end

-- LMPOP numkeys key... LEFT COUNT n, keys by priority, then queue order:
-- P:ready:{q}: is joined once per queue and the digit appended (a number
-- would be formatted per key), and the key LMPOP names is found by its
-- position in this list (strings are interned: == is a pointer compare).
local DIGITS = {'0', '1', '2', '3', '4', '5', '6', '7', '8', '9'}
local heads = {}
for i, queue in ipairs(queues) do heads[i] = P .. ':ready:' .. queue .. ':' end
local nq = #queues
local args, n = {0}, 1
for prio = 1, 10 do
  local digit = DIGITS[prio]
  for i = 1, nq do
    n = n + 1
    args[n] = heads[i] .. digit
  end
end
args[1] = n - 1
args[n + 1], args[n + 2], args[n + 3] = 'LEFT', 'COUNT', 0
local count_at = n + 3

local out = {0}
local taken = 0
local deadline = now + lease_ms
while taken < count do
  args[count_at] = math.min(count - taken, SLICE)
  local popped = redis.call('LMPOP', unpack(args))
  if not popped then break end
  local key, at = popped[1], 2
  while args[at] ~= key do at = at + 1 end
  local k = at - 2  -- 0-based: priority k // nq, queue k % nq
  taken = lease(queues[k % nq + 1], (k - k % nq) / nq, popped[2], deadline, taken, out)
end

if taken >= count then
  -- A full batch may have left messages behind while other consumers sleep
  -- on the single wake token this call's consumer used up: pass it on.
  for _, queue in ipairs(queues) do
    if redis.call('EXISTS', unpack(ready_keys(queue))) > 0 then wake(queue) end
  end
elseif taken == 0 then
  out[1] = moved and next_due_in(now) or soonest
end
return out
