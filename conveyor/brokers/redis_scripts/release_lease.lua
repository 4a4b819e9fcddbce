-- release_lease: delete the named lease only if this holder has it.
-- ARGV: prefix, name, holder.  Returns 1 if released.

local key = P .. ':mutex:' .. ARGV[2]
if redis.call('GET', key) == ARGV[3] then
  redis.call('DEL', key)
  return 1
end
return 0
