-- START. A: id, in-progress list, slave name, now, SLAVE_MAX_ATTEMPTS, the
-- slave's running branches (`<repo>:<branch>`, newline-separated).
-- A record still `running` when it is started again means the attempt
-- before died with its slave (a graceful stop or a lost lease sets it back
-- to `queued` through ABANDON). After `max` such deaths the build is failed
-- instead of started: a build that kills its slave must not hold an index
-- forever. A build of the same branch running here or elsewhere makes it
-- wait (`busy`): two builds of a branch never run at once on one slave.
local id, working, slave, now, max, busy = A[1], A[2], A[3], A[4], tonumber(A[5]), A[6]
local key = K.build .. id
local state = redis.call('HGET', key, 'state')
if not state or state == 'passed' or state == 'failed' or state == 'canceled' then
  redis.call('LREM', working, 1, id)
  return false
end
local repo, branch = unpack(redis.call('HMGET', key, 'repo', 'branch'))
if branch_busy(repo .. ':' .. branch, id, busy) then return {'busy'} end
redis.call('SET', K.running .. repo .. ':' .. branch, id)
local pkey = K.pending .. repo .. ':' .. branch
if redis.call('GET', pkey) == id then redis.call('DEL', pkey) end
if state == 'running' then
  local died = redis.call('HINCRBY', key, 'died', 1)
  if died >= max then
    local why = '* gave up after ' .. died .. ' attempts: the slave died during each'
    record_result(id, working, 'failed', cjson.encode({why}), '0', now)
    local f = redis.call('HMGET', key, 'push', 'sha')
    return {'gaveup', tostring(died), f[1] or '', f[2] or ''}
  end
end
local attempt = redis.call('HINCRBY', key, 'attempt', 1)
redis.call('HSET', key, 'state', 'running', 'started_at', now, 'slave', slave)
local f = redis.call('HMGET', key, 'push', 'sha', 'reset')
return {tostring(attempt), f[1], f[2], f[3] or '0'}
