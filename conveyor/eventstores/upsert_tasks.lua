-- Upsert index entries, each only if it is still what the writer read (compare and set).
--
-- KEYS[1]  {p}:ev:entry  HASH  task id -> index entry (a JSON array ending with its timeline)
-- KEYS[2]  {p}:ev:tasks  ZSET  task id -> updated_at (ZADD GT: the score only moves forward)
-- ARGV     repeated groups of four: task id, the entry the writer read ("" for none),
--          the entry to store, its updated_at
--
-- The writer merged the new entry and timeline with what it read (newest entry wins,
-- timelines are joined); if another writer changed the entry since, the merge is stale
-- and the task id is returned so the writer reads and merges again.  Most tasks are
-- new (one HSETNX each); the index scores go in one ZADD per 1,000 tasks.
local conflicts = {}
local scores = {}
local function flush()
  if #scores > 0 then
    redis.call('ZADD', KEYS[2], 'GT', unpack(scores))
    scores = {}
  end
end
for i = 1, #ARGV, 4 do
  local id, expected = ARGV[i], ARGV[i + 1]
  local stored
  if expected == '' then
    stored = redis.call('HSETNX', KEYS[1], id, ARGV[i + 2]) == 1
  else
    stored = redis.call('HGET', KEYS[1], id) == expected
    if stored then
      redis.call('HSET', KEYS[1], id, ARGV[i + 2])
    end
  end
  if stored then
    scores[#scores + 1] = ARGV[i + 3]
    scores[#scores + 1] = id
    if #scores >= 2000 then
      flush()
    end
  else
    conflicts[#conflicts + 1] = id
  end
end
flush()
return conflicts
