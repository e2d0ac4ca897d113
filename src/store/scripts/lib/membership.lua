-- Shared by the membership verbs. A: cluster, instance, lease ms, index (or
-- -1), allow a new index ('1'/'0'), then the verb's own.
-- K.holders: index → `<instance> <lease expiry ms>`; K.members: index → the
-- time it stops counting in N (expiry + one more lease).
local cluster, instance = A[1], A[2]
local hkey, mkey = K.holders .. cluster, K.members .. cluster
local now = now_ms()
-- indexes that no longer count: forget them
for _, idx in ipairs(redis.call('ZRANGEBYSCORE', mkey, '-inf', now)) do
  redis.call('ZREM', mkey, idx)
  redis.call('HDEL', hkey, idx)
end
local function holder(idx)
  local v = redis.call('HGET', hkey, tostring(idx))
  if not v then return nil, 0 end
  local who, exp = string.match(v, '(%S+) (%d+)')
  return who, tonumber(exp)
end
local function free(idx)
  local who, exp = holder(idx)
  return who == nil or who == instance or exp < now
end
local function hold(idx, lease)
  redis.call('HSET', hkey, tostring(idx), instance .. ' ' .. (now + lease))
  redis.call('ZADD', mkey, now + 2 * lease, tostring(idx))
  redis.call('SADD', K.clusters, cluster)
  local top = tonumber(redis.call('HGET', K.maxindex, cluster) or '-1')
  if idx > top then redis.call('HSET', K.maxindex, cluster, idx) end
end
local function highest()
  local top = -1
  for _, idx in ipairs(redis.call('HKEYS', hkey)) do
    if tonumber(idx) > top then top = tonumber(idx) end
  end
  return top
end
