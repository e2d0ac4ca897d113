-- REQUEUE_IDS. KEYS: the in-progress list, its queue; A: ids. Puts back at
-- the front of the queue each id still in the in-progress list (stranded
-- there: a take whose reply was lost). Returns how many moved.
local moved = 0
for i = 1, #A do
  if redis.call('LREM', KEYS[1], 1, A[i]) == 1 then
    redis.call('RPUSH', KEYS[2], A[i])
    moved = moved + 1
  end
end
return moved
