-- ENQUEUE. A: repo, branch, sha, push (the job's JSON), crc, hints
-- (space-separated), delivery id or '', now, default branch or '', reset
-- ('1'/'0'), delivery TTL seconds, HISTORY_KEEP, cancel the branch's running
-- build ('1'/'0': Rust's CancelRunning::applies decided), routing rule, jump
-- points (space-separated), event (the record's `event`, a name Rust's
-- payload::Event gave; a coalesced build takes the newer push's), alone ('1':
-- a build of its own, queue::Job::alone: it coalesces into no pending build,
-- becomes none, and is not remembered as the branch's last push; '0'), the
-- job's JSON as a coalesced build stores it (its `before` dropped: the
-- commits of the push it replaces are not in before..sha, so its changed
-- files are unknown), title (the head commit's first line, payload::title;
-- a coalesced build takes the newer).
-- Returns {'queued', id, slave, canceled id or ''}, {'coalesced', id, slave},
-- {'duplicate', id, ''}, {'routing', agreed, ''} or {'noslave', live clusters, ''}.
local repo, branch, sha, push, crc, hints, delivery, now, default_branch, reset =
  A[1], A[2], A[3], A[4], tonumber(A[5]), A[6], A[7], A[8], A[9], A[10]
if delivery ~= '' then
  local seen = redis.call('GET', K.delivery .. delivery)
  if seen then return {'duplicate', seen, ''} end
end
-- the routing rule (A[14]) is the one the hooks agreed on (K.routing)
local rule, points = A[14], A[15]
local agreed = redis.call('GET', K.routing)
if not agreed then redis.call('SET', K.routing, rule)
elseif agreed ~= rule then return {'routing', agreed, ''} end
-- Whether a cluster name offers every wanted hint: its tokens are the name's
-- parts between '-', lower-cased (Rust's routing::cluster_tokens; a test in
-- tests/routing.rs holds the two together over many names).
local function offers(name, wanted)
  local tokens = {}
  for t in string.gmatch(name, '[^-]+') do tokens[string.lower(t)] = true end
  for _, h in ipairs(wanted) do if not tokens[h] then return false end end
  return true
end
-- the cluster: first by (name length, name) offering every hint, with live slaves
local wanted = {}
for h in string.gmatch(hints, '%S+') do wanted[#wanted + 1] = h end
local names = redis.call('SMEMBERS', K.clusters)
table.sort(names, function(a, b) if #a ~= #b then return #a < #b end return a < b end)
local tms = now_ms()
local cluster, n = nil, 0
local live = {}
for _, name in ipairs(names) do
  local count = live_n(name, tms)
  if count > 0 then
    live[#live + 1] = name
    if not cluster and offers(name, wanted) then cluster, n = name, count end
  end
end
if not cluster then return {'noslave', table.concat(live, ', '), ''} end
local bkey = repo .. ':' .. branch
local function remember()
  redis.call('SET', K.push .. bkey, push)
  if default_branch ~= '' then redis.call('SET', K.default .. repo, default_branch) end
end
-- coalesce: a newer push replaces the commit of the pending build
local alone = A[17] == '1'
local pending = (not alone) and redis.call('GET', K.pending .. bkey)
if pending and redis.call('HGET', K.build .. pending, 'state') == 'queued' then
  redis.call('HSET', K.build .. pending, 'sha', sha, 'push', A[18], 'event', A[16], 'title', A[19])
  if reset == '1' then redis.call('HSET', K.build .. pending, 'reset', '1') end
  remember()
  if delivery ~= '' then redis.call('SET', K.delivery .. delivery, pending, 'EX', A[11]) end
  return {'coalesced', pending, redis.call('HGET', K.build .. pending, 'slave')}
end
-- the index: Rust's routing::Routing::index, selected from what the hook computed
-- (a test holds the two together): mod, CRC32 mod n; jump, the largest jump point < n
local index = crc % n
if rule == 'jump' then
  index = 0
  for p in string.gmatch(points, '%d+') do
    if tonumber(p) >= n then break end
    index = tonumber(p)
  end
end
local slave = cluster .. '-' .. index
local id = tostring(redis.call('INCR', K.seq))
local previous = redis.call('GET', K.last .. bkey)
redis.call('HSET', K.build .. id, 'id', id, 'repo', repo, 'branch', branch, 'sha', sha,
  'event', A[16], 'state', 'queued', 'ok', 'false', 'log', '[]', 'slave', slave, 'cluster', cluster,
  'queued_at', now, 'attempt', '0', 'push', push, 'reset', reset, 'title', A[19])
redis.call('SET', K.last .. bkey, id)
if not alone then
  redis.call('SET', K.pending .. bkey, id)
  remember()
end
-- retention, the one rule: the last HISTORY_KEEP builds of a branch stay; older
-- records (and their live logs) are deleted, unless still queued or running or
-- the branch's latest finished build (then the list waits one push longer)
local hkey = K.history .. bkey
redis.call('LPUSH', hkey, id)
redis.call('SADD', K.repos, repo)
redis.call('SADD', K.branches .. repo, branch)
local keep, done = tonumber(A[12]), redis.call('GET', K.done .. bkey)
while redis.call('LLEN', hkey) > keep do
  local old = redis.call('LINDEX', hkey, -1)
  local state = redis.call('HGET', K.build .. old, 'state')
  if state == 'queued' or state == 'running' or old == done then break end
  redis.call('RPOP', hkey)
  redis.call('DEL', K.build .. old, K.log .. old)
end
redis.call('LPUSH', K.queue .. cluster .. ':' .. index, id)
if delivery ~= '' then redis.call('SET', K.delivery .. delivery, id, 'EX', A[11]) end
-- HOOK_CANCEL_RUNNING, as Rust applied it to this branch (A[13]): a newer
-- commit cancels the branch's running build
local canceled = ''
if previous and A[13] == '1' and redis.call('HGET', K.build .. previous, 'state') == 'running' then
  cancel_build(previous, 'superseded by build ' .. id, now)
  canceled = previous
end
return {'queued', id, slave, canceled}
