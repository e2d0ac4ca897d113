-- RENEW. A: cluster, instance, lease ms, index, -, the jobs this slave holds
-- (newline-separated, '' when idle), busy executors, executors. 1 renewed,
-- 0 lost. An index nobody holds (forgotten after two silent leases, or
-- Redis lost its data) is taken back only while every job this slave holds
-- still sits in that index's in-progress list: once a new holder has
-- re-queued one, it is theirs and this slave must stop building it.
-- Renewing also publishes the executors in use (K.executors, index →
-- `<busy> <total> <lease expiry ms>`) for the hook's /metrics.
local lease, idx, jobs = tonumber(A[3]), tonumber(A[4]), A[6]
local function renewed()
  hold(idx, lease)
  redis.call('HSET', K.executors .. cluster, tostring(idx), A[7] .. ' ' .. A[8] .. ' ' .. (now + lease))
  return 1
end
local who = holder(idx)
if who == instance then return renewed() end
if who ~= nil then return 0 end
for job in string.gmatch(jobs, '[^\n]+') do
  if not redis.call('LPOS', K.working .. cluster .. ':' .. idx, job) then return 0 end
end
return renewed()
