-- Upsert index entries, each only if it is still what the writer read (compare and set).
--
-- KEYS[1]  {p}:ev:task   HASH  task id -> index entry JSON (with its timeline, "tl")
-- KEYS[2]  {p}:ev:tasks  ZSET  task id -> updated_at (ZADD GT: the score only moves forward)
-- ARGV     repeated groups of four: task id, the entry the writer read ("" for none),
--          the entry to store, its updated_at
--
-- The writer merged the new entry and timeline with what it read (newest entry wins,
-- timelines are joined); if another writer changed the entry since, the merge is stale
-- and the task id is returned so the writer reads and merges again.
local conflicts = {}
for i = 1, #ARGV, 4 do
  local id = ARGV[i]
  local current = redis.call('HGET', KEYS[1], id) or ''
  if current == ARGV[i + 1] then
    redis.call('HSET', KEYS[1], id, ARGV[i + 2])
    redis.call('ZADD', KEYS[2], 'GT', ARGV[i + 3], id)
  else
    conflicts[#conflicts + 1] = id
  end
end
return conflicts
