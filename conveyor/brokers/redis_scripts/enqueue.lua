-- enqueue: store messages, each at most once.
-- ARGV: prefix, then two per message: a header and the body.  The header is
--   id \n queue \n priority (0..9) \n eta_ms ('' = now) \n idempotency key ('' = none) \n key ttl_ms
-- (two arguments instead of seven: packing arguments is most of a producer's
-- cost, so this nearly doubles enqueue_many's rate).
-- Returns {n, owner, ...} only for the messages *not* stored under their own
-- id: n is the message's position (1-based) and owner the id that already
-- holds it (the same id, or the earlier owner of its idempotency key).  The
-- id check, the key's SET NX and the push happen in this one script, so
-- concurrent producers cannot both win.
-- Writes are grouped: one HSET for all bodies, one RPUSH per ready list, one
-- ZADD per delayed set, whatever the batch size.

local function split_header(header)
  local out, pos = {}, 1
  for _ = 1, 5 do
    local stop = string.find(header, '\n', pos, true)
    out[#out + 1] = string.sub(header, pos, stop - 1)
    pos = stop + 1
  end
  out[#out + 1] = string.sub(header, pos)
  return out
end

-- The id already owning this idempotency key, or nil after claiming it.
local function key_owner(id, idem, ttl)
  local key = P .. ':idem:' .. idem
  if redis.call('SET', key, id, 'NX', 'PX', ttl) then return nil end
  local owner = redis.call('GET', key)
  if owner then return owner end
  redis.call('SET', key, id, 'PX', ttl)
  return nil
end

local now = now_ms()
local headers, ids = {}, {}
for i = 2, #ARGV, 2 do
  local header = split_header(ARGV[i])
  headers[#headers + 1] = header
  ids[#ids + 1] = header[1]
end
local existing = hmget(MSG, ids)

local others, seen, touched = {}, {}, {}
local bodies, prios, ready, delayed = {}, {}, {}, {}
for n, header in ipairs(headers) do
  local id, queue, prio, eta, idem, ttl = unpack(header)
  local owner = nil
  if existing[n] or seen[id] then
    owner = id
  elseif idem ~= '' then
    owner = key_owner(id, idem, ttl)
  end
  if owner then
    others[#others + 1], others[#others + 2] = n, owner
  else
    seen[id] = true
    touched[queue] = true
    bodies[#bodies + 1], bodies[#bodies + 2] = id, ARGV[2 * n + 1]
    if prio ~= '0' then prios[#prios + 1], prios[#prios + 2] = id, prio end
    local due = tonumber(eta)
    if due and due > now then
      group(delayed, delayed_key(queue), due, id)
    else
      group(ready, ready_key(queue, prio), id)
    end
  end
end

in_slices(bodies, 'HSET', MSG)
in_slices(prios, 'HSET', PRIO)
for key, list in pairs(ready) do in_slices(list, 'RPUSH', key) end
for key, list in pairs(delayed) do in_slices(list, 'ZADD', key) end
-- A delayed message wakes a consumer too, so it re-reads the earliest ETA
-- and sleeps exactly until then.
for queue in pairs(touched) do
  redis.call('SADD', QUEUES, queue)
  wake(queue)
end
return others
