-- COMPACT. A: cluster, instance, lease ms, index. Moves this slave to the
-- lowest free index below the live count; returns the new index or -1.
local lease, idx = tonumber(A[3]), tonumber(A[4])
local n = live_n(cluster, now)
if idx < n then return -1 end
for j = 0, n - 1 do
  local who = holder(j)
  if who == nil then
    redis.call('HDEL', hkey, tostring(idx))
    redis.call('ZREM', mkey, tostring(idx))
    hold(j, lease)
    return j
  end
end
return -1
