-- RELEASE. A: cluster, instance, lease ms, index. Makes the index claimable
-- now (it still counts in N for one lease, for a replacement to take it).
local idx = A[4]
local who = holder(tonumber(idx))
if who == instance then redis.call('HSET', hkey, idx, instance .. ' ' .. now) end
return 1
