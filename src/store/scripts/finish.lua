-- FINISH. A: id, attempt, in-progress list, state, log (JSON list), seconds,
-- now, the live-log stream, its cap, its end field, its TTL once ended, its
-- line field, then the live log's last lines (those the publisher handed back).
-- Returns 1 stored, 2 canceled meanwhile (stays canceled), 0 superseded.
local id, attempt, working, state, log, seconds, now = A[1], A[2], A[3], A[4], A[5], A[6], A[7]
local stream, cap, field, ttl, line_field = A[8], A[9], A[10], A[11], A[12]
local key = K.build .. id
if redis.call('HGET', key, 'attempt') ~= attempt then return 0 end
-- stored already by this attempt (a retry after the answer was lost): nothing more
local was = redis.call('HGET', key, 'state')
if was == 'passed' or was == 'failed' then return 1 end
-- the live log's last lines and its last entry, with the record: a follower
-- wakes once it is stored
local function ended(result)
  for i = 13, #A do
    redis.call('XADD', stream, 'MAXLEN', '~', cap, '*', line_field, A[i])
  end
  redis.call('XADD', stream, 'MAXLEN', '~', cap, '*', field, result)
  redis.call('EXPIRE', stream, ttl)
end
-- canceled while it ran: stays canceled (counted once, by the cancel); the
-- log so far and why it was canceled replace the one-line log
if was == 'canceled' then
  local lines = cjson.decode(log)
  lines[#lines + 1] = '[canceled] ' .. (redis.call('HGET', key, 'cancel') or '')
  redis.call('HSET', key, 'log', cjson.encode(lines), 'seconds', seconds)
  redis.call('LREM', working, 1, id)
  ended('canceled')
  return 2
end
record_result(id, working, state, log, seconds, now)
ended(state)
return 1
