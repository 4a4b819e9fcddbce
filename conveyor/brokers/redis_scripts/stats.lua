-- stats: {ready, delayed, inflight, dead, oldest_age_ms} per queue, flattened.
-- ARGV: prefix, queue...
-- Reads only.  A delayed message that is already due, or a lease that has
-- already expired, counts as ready: that is what the next reserve will see.
-- oldest_age_ms: how long the oldest ready message has waited, from the
-- "created" time in the body at the head of each priority list (its send
-- time, also for one that waited for an ETA first), or from the due time of
-- a due delayed message or lapsed lease; 0 with nothing ready, -1 when no
-- head says when it was sent (not a Conveyor body).

local function sent_ms(id)
  local body = redis.call('HGET', MSG, id)
  if not body then return nil end
  local ok, doc = pcall(cjson.decode, body)
  if ok and type(doc) == 'table' and type(doc['created']) == 'number' then
    return doc['created'] * 1000
  end
  return nil
end

local function oldest_since(queue, now)
  local since = nil
  for _, key in ipairs(ready_keys(queue)) do
    local head = redis.call('LINDEX', key, 0)
    if head then
      local sent = sent_ms(head)
      if sent and (since == nil or sent < since) then since = sent end
    end
  end
  for _, key in ipairs({delayed_key(queue), inflight_key(queue)}) do
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    local due = tonumber(first[2])
    if due and due <= now and (since == nil or due < since) then since = due end
  end
  return since
end

local now = now_ms()
local out = {}
for i = 2, #ARGV do
  local queue = ARGV[i]
  local ready = 0
  for _, key in ipairs(ready_keys(queue)) do ready = ready + redis.call('LLEN', key) end
  local due = redis.call('ZCOUNT', delayed_key(queue), '-inf', now)
  local expired = redis.call('ZCOUNT', inflight_key(queue), '-inf', now)
  local delayed = redis.call('ZCARD', delayed_key(queue)) - due
  local inflight = redis.call('ZCARD', inflight_key(queue)) - expired
  local age = 0
  if ready + due + expired > 0 then
    local since = oldest_since(queue, now)
    age = since and math.max(0, math.floor(now - since)) or -1
  end
  out[#out + 1] = ready + due + expired
  out[#out + 1] = delayed
  out[#out + 1] = inflight
  out[#out + 1] = redis.call('ZCARD', dead_key(queue))
  out[#out + 1] = age
end
return out
