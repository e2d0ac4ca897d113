-- Shared by START, FINISH, CANCEL, STEAL and ENQUEUE: writes a finished
-- record, counts it, makes it the branch's latest finished build and
-- acknowledges the job. (Records leave by the history bound of ENQUEUE,
-- nowhere else.)

-- seconds an unread cancel list lives (its slave died or moved on)
local CANCEL_TTL = 60
local function record_result(id, working, state, log, seconds, now)
  local key = K.build .. id
  redis.call('HSET', key, 'state', state, 'ok', tostring(state == 'passed'), 'log', log,
    'seconds', seconds, 'finished_at', now)
  redis.call('HINCRBY', K.stats, state, 1)
  local repo, branch = unpack(redis.call('HMGET', key, 'repo', 'branch'))
  local dkey = K.done .. repo .. ':' .. branch
  local current = redis.call('GET', dkey)
  if not current or tonumber(current) <= tonumber(id) then redis.call('SET', dkey, id) end
  local rkey = K.running .. repo .. ':' .. branch
  if redis.call('GET', rkey) == id then redis.call('DEL', rkey) end
  redis.call('LREM', working, 1, id)
end
-- Whether another build of the branch `bkey` runs: here (`busy`, the
-- slave's running branches, newline-separated) or on any slave (the
-- running mark START sets, while that build's record says running).
local function branch_busy(bkey, id, busy)
  for b in string.gmatch(busy, '[^\n]+') do if b == bkey then return true end end
  local other = redis.call('GET', K.running .. bkey)
  return other ~= false and other ~= id and redis.call('HGET', K.build .. other, 'state') == 'running'
end
-- Cancels build id if queued (out of its queue, stored canceled) or running
-- (stored canceled now; its id pushed for the slave's cancel watcher, which
-- kills it; the slave's FINISH then adds the log so far). Returns the state
-- it had, or nil when it was neither.
local function cancel_build(id, why, now)
  local key = K.build .. id
  local state, cluster, slave, repo, branch = unpack(redis.call('HMGET', key, 'state', 'cluster', 'slave', 'repo', 'branch'))
  if state ~= 'queued' and state ~= 'running' then return nil end
  local index = string.sub(slave, #cluster + 2)
  local pkey = K.pending .. repo .. ':' .. branch
  if redis.call('GET', pkey) == id then redis.call('DEL', pkey) end
  local line = cjson.encode({'[canceled] ' .. why})
  if state == 'queued' then
    record_result(id, K.queue .. cluster .. ':' .. index, 'canceled', line, '0', now)
  else
    record_result(id, K.working .. cluster .. ':' .. index, 'canceled', line, '0', now)
    redis.call('HSET', key, 'cancel', why)
    local ckey = K.cancel .. cluster .. ':' .. index
    redis.call('LPUSH', ckey, id)
    redis.call('EXPIRE', ckey, CANCEL_TTL)
  end
  return state
end
