-- MOVE_ONE. KEYS: from, to; A: id. Moves the job, if it is still the oldest
-- of `from`, to the front of `to`.
if redis.call('LINDEX', KEYS[1], -1) ~= A[1] then return 0 end
redis.call('RPOP', KEYS[1])
redis.call('RPUSH', KEYS[2], A[1])
return 1
