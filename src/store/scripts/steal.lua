-- STEAL. A: cluster, own index, SLAVE_STEAL_AFTER seconds, now, the slave's
-- running branches (newline-separated), its in-progress list, its name, how
-- many of each sibling queue's oldest jobs to look at.
-- Of the oldest few jobs of every sibling queue, the oldest that waited
-- longer than the threshold, is `queued` (never one whose record says
-- running: a requeued attempt of a dead slave) and whose branch is not
-- building anywhere moves to this slave's in-progress list, in this one
-- step: no two slaves take the same job. Returns {id, from} or nil.
local cluster, own, after, now, busy, working, slave, depth =
  A[1], tonumber(A[2]), tonumber(A[3]), tonumber(A[4]), A[5], A[6], A[7], tonumber(A[8])
local top = tonumber(redis.call('HGET', K.maxindex, cluster) or '-1')
local best, from, oldest
for i = 0, top do
  if i ~= own then
    local q = K.queue .. cluster .. ':' .. i
    for _, id in ipairs(redis.call('LRANGE', q, -depth, -1)) do
      local state, at, repo, branch = unpack(redis.call('HMGET', K.build .. id, 'state', 'queued_at', 'repo', 'branch'))
      at = tonumber(at)
      if state == 'queued' and at and now - at >= after and (not oldest or at < oldest)
        and not branch_busy(repo .. ':' .. branch, id, busy) then
        best, from, oldest = id, i, at
      end
    end
  end
end
if not best then return false end
redis.call('LREM', K.queue .. cluster .. ':' .. from, -1, best)
redis.call('LPUSH', working, best)
redis.call('HSET', K.build .. best, 'stolen', cluster .. '-' .. from, 'slave', slave)
return {best, cluster .. '-' .. from}
