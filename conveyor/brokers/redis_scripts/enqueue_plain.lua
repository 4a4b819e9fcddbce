-- enqueue_plain: store two or more messages that share one queue and priority
-- and have no ETA and no idempotency key (a group's members, a chord header,
-- send_many without options); enqueue_one.lua takes one such message,
-- enqueue.lua everything else.
-- ARGV: prefix, queue, priority (0..9), then id and body per message.
-- Returns what enqueue.lua returns: {n, id, ...} for each message (n its
-- 1-based position) whose id is already stored; {} when all were stored.
-- No header to parse per message: about a third less of enqueue.lua's
-- server time for a batch.

local queue, prio = ARGV[2], ARGV[3]
local count = (#ARGV - 3) / 2
local ready = ready_key(queue, prio)
local ids = {}
for n = 1, count do ids[n] = ARGV[2 * n + 2] end
local existing = hmget(MSG, ids)
local others, seen, bodies, fresh, prio_fields = {}, {}, {}, {}, {}
for n = 1, count do
  local id = ids[n]
  if existing[n] or seen[id] then
    others[#others + 1], others[#others + 2] = n, id
  else
    seen[id] = true
    bodies[#bodies + 1], bodies[#bodies + 2] = id, ARGV[2 * n + 3]
    fresh[#fresh + 1] = id
    if prio ~= '0' then
      prio_fields[#prio_fields + 1], prio_fields[#prio_fields + 2] = id, prio
    end
  end
end
if #fresh == 0 then return others end
in_slices(bodies, 'HSET', MSG)
in_slices(prio_fields, 'HSET', PRIO)
in_slices(fresh, 'RPUSH', ready)
announce(queue)
return others
