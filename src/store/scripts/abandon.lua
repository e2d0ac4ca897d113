-- ABANDON. A: id, attempt. The attempt ended without a result and without its
-- slave dying (shutdown grace over, lease lost): back to `queued`, so the
-- next start does not count it as a death. The job itself stays where it
-- is (an in-progress list); whoever holds that index next re-queues it.
local key = K.build .. A[1]
if redis.call('HGET', key, 'attempt') ~= A[2] or redis.call('HGET', key, 'state') ~= 'running' then return 0 end
redis.call('HSET', key, 'state', 'queued')
return 1
