-- The live slaves of a cluster, the N of routing: members whose score (the
-- time the index stops counting, ms) is after `now`.
local function live_n(cluster, now)
  return redis.call('ZCOUNT', K.members .. cluster, '(' .. now, '+inf')
end
