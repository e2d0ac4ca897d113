-- CLAIM. A: cluster, instance, lease ms, fixed index or -1, allow a new index.
-- Returns the index held, or -1.
local lease, fixed, allow_new = tonumber(A[3]), tonumber(A[4]), A[5] == '1'
if fixed >= 0 then
  if not free(fixed) then return -1 end
  hold(fixed, lease)
  return fixed
end
local top = highest()
for idx = 0, top do
  if free(idx) then hold(idx, lease) return idx end
end
if not allow_new then return -1 end
hold(top + 1, lease)
return top + 1
