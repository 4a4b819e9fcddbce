-- enqueue: store messages, each at most once.
-- ARGV: prefix, then two per message: a header and the body.  The header is
--   id \n queue \n priority (0..9) \n eta_ms ('' = now) \n idempotency key ('' = none) \n key ttl_ms
--   (the ttl is '' when there is no key)
-- (two arguments instead of seven: packing arguments is most of a producer's
-- cost, so this nearly doubles enqueue_many's rate).
-- Returns {n, owner, ...} only for the messages *not* stored under their own
-- id: n is the message's position (1-based) and owner the id that already
-- holds it (the same id, or the earlier owner of its idempotency key).  The
-- id check, the key's SET NX and the push happen in this one script, so
-- concurrent producers cannot both win.
-- Writes are grouped: one HSET for all bodies, one RPUSH per ready list, one
-- ZADD per delayed set, whatever the batch size (and one HMGET for the "already
-- stored" check: HSETNX per message would be a thousand calls per chunk).

-- One pattern match per header (cheaper than five finds and six subs).
local HEADER = '^([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n(.*)$'

-- The id already owning this idempotency key, or nil after claiming it.
local function key_owner(id, idem, ttl)
  local key = P .. ':idem:' .. idem
  if redis.call('SET', key, id, 'NX', 'PX', ttl) then return nil end
  local owner = redis.call('GET', key)
  if owner then return owner end
  redis.call('SET', key, id, 'PX', ttl)
  return nil
end

-- Ready ids grouped by queue, then priority: nested tables, so no key string
-- is built per message (one RPUSH per list at the end).
local function add_ready(ready, queue, prio, id)
  local by_prio = ready[queue]
  if not by_prio then
    by_prio = {}
    ready[queue] = by_prio
  end
  local list = by_prio[prio]
  if not list then
    list = {}
    by_prio[prio] = list
  end
  list[#list + 1] = id
end

local now = nil  -- read (TIME) only when some message has an ETA
local count = (#ARGV - 1) / 2
-- Parallel arrays, not a table per message: this loop is most of the script.
local ids, queues, prios, etas, idems, ttls = {}, {}, {}, {}, {}, {}
for n = 1, count do
  ids[n], queues[n], prios[n], etas[n], idems[n], ttls[n] = string.match(ARGV[2 * n], HEADER)
end
local existing = hmget(MSG, ids)

local others, seen, touched = {}, {}, {}
local bodies, prio_fields, ready, delayed = {}, {}, {}, {}
local n_bodies, n_prios = 0, 0
for n = 1, count do
  local id, queue, prio = ids[n], queues[n], prios[n]
  local owner = nil
  if existing[n] or seen[id] then
    owner = id
  elseif idems[n] ~= '' then
    owner = key_owner(id, idems[n], ttls[n])
  end
  if owner then
    others[#others + 1], others[#others + 2] = n, owner
  else
    seen[id] = true
    touched[queue] = true
    bodies[n_bodies + 1], bodies[n_bodies + 2] = id, ARGV[2 * n + 1]
    n_bodies = n_bodies + 2
    if prio ~= '0' then
      prio_fields[n_prios + 1], prio_fields[n_prios + 2] = id, prio
      n_prios = n_prios + 2
    end
    local due = tonumber(etas[n])
    if due and not now then now = now_ms() end
    if due and due > now then
      group(delayed, delayed_key(queue), due, id)
    else
      add_ready(ready, queue, prio, id)
    end
  end
end

in_slices(bodies, 'HSET', MSG)
in_slices(prio_fields, 'HSET', PRIO)
for queue, by_prio in pairs(ready) do
  for prio, list in pairs(by_prio) do in_slices(list, 'RPUSH', ready_key(queue, prio)) end
end
for key, list in pairs(delayed) do in_slices(list, 'ZADD', key) end
-- A delayed message wakes a consumer too, so it re-reads the earliest ETA
-- and sleeps exactly until then.
for queue in pairs(touched) do
  announce(queue)
end
return others
