-- dead_letters: a page of dead letters, newest first.
-- ARGV: prefix, queue, offset, limit.  Returns {id, packed, id, packed, ...}
-- (packed as written by dead_letter.lua).

local queue, offset, limit = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if limit <= 0 then return {} end
local ids = redis.call('ZREVRANGE', dead_key(queue), offset, offset + limit - 1)
if #ids == 0 then return {} end
local packed = hmget(deadmsg_key(queue), ids)
local out = {}
for i, id in ipairs(ids) do
  if packed[i] then
    out[#out + 1] = id
    out[#out + 1] = packed[i]
  end
end
return out
