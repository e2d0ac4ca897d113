-- QUEUED. A: the slave's queue, a repository, how many of its oldest jobs
-- to look at. The job (push) and commit of each of those that is still
-- `queued` and of that repository, oldest first, as {push, sha, ...}: what
-- a fetch for this repository may bring into the mirror at the same time.
-- Reads only.
local q, repo, depth = A[1], A[2], tonumber(A[3])
local out = {}
local ids = redis.call('LRANGE', q, -depth, -1)
for i = #ids, 1, -1 do
  local state, r, push, sha = unpack(redis.call('HMGET', K.build .. ids[i], 'state', 'repo', 'push', 'sha'))
  if state == 'queued' and r == repo and push and sha then
    out[#out + 1] = push
    out[#out + 1] = sha
  end
end
return out
