-- LISTING. A: a repository ('' for every one), then the record fields to
-- list. One JSON text (cjson: one string to read, not one per field: the
-- listing is polled): for each repository (every one: the set of
-- repositories) with a listed branch, [name, default branch ('' when none
-- is known), [[branch, [field values, null when absent]], ...]], the
-- branches those whose latest build's record is there and names that
-- repository and branch. Reads only.
local fields, at = {}, {}
for i = 2, #A do
  fields[#fields + 1] = A[i]
  at[A[i]] = #fields
end
-- The record must name the repository and branch it is listed under.
if not at.repo or not at.branch then return redis.error_reply('LISTING: the fields must hold repo and branch') end
local repos
if A[1] == '' then repos = redis.call('SMEMBERS', K.repos) else repos = {A[1]} end
local out = {}
for _, repo in ipairs(repos) do
  local listed = {}
  for _, branch in ipairs(redis.call('SMEMBERS', K.branches .. repo)) do
    local id = redis.call('GET', K.last .. repo .. ':' .. branch)
    if id then
      local values = redis.call('HMGET', K.build .. id, unpack(fields))
      if values[1] and values[at.repo] == repo and values[at.branch] == branch then
        for i = 1, #fields do
          if not values[i] then values[i] = cjson.null end
        end
        listed[#listed + 1] = {branch, values}
      end
    end
  end
  if #listed > 0 then
    out[#out + 1] = {repo, redis.call('GET', K.default .. repo) or '', listed}
  end
end
if #out == 0 then return '[]' end
return cjson.encode(out)
