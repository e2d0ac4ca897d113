-- CANCEL. A: repo, branch, id ('' for the branch's latest), why, now.
-- Returns {was, id} when it was queued or running, {'finished', id, state},
-- or {'none', id or ''}.
local repo, branch, id, why, now = A[1], A[2], A[3], A[4], A[5]
if id == '' then
  id = redis.call('GET', K.last .. repo .. ':' .. branch)
  if not id then return {'none', ''} end
end
local state, owner = unpack(redis.call('HMGET', K.build .. id, 'state', 'repo'))
if not state or owner ~= repo then return {'none', id} end
local was = cancel_build(id, why, now)
if was then return {was, id} end
return {'finished', id, state}
