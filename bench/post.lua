-- wrk script: POSTs signed GitHub push deliveries, cycling over pre-signed bodies.
-- usage: wrk -t2 -c32 -d10s --latency -s bench/post.lua http://127.0.0.1:PORT -- BODIES PATH [ALGO]
--   BODIES: one delivery per line, "<hex HMAC of body>\t<minified JSON body>"
--   PATH:   the request path ("/" for the hook, "/hooks/ci-push" for adnanh/webhook,
--           "/change_hook/github" for Buildbot)
--   ALGO:   sha256 (default: X-Hub-Signature-256) or sha1 (X-Hub-Signature, the only one
--           Buildbot's github hook checks)
-- Every request is pre-formatted in init(), so wrk spends no time building them.

local nthreads = 0

function setup(thread)
  thread:set("tid", nthreads)
  nthreads = nthreads + 1
end

local reqs = {}
local i = 0

function init(args)
  local file, path, algo = args[1], args[2] or "/", args[3] or "sha256"
  local header = algo == "sha1" and "X-Hub-Signature" or "X-Hub-Signature-256"
  for line in io.lines(file) do
    local sig, body = line:match("^(%x+)\t(.*)$")
    if sig then
      reqs[#reqs + 1] = wrk.format("POST", path, {
        ["Content-Type"] = "application/json",
        ["User-Agent"] = "GitHub-Hookshot/bench",
        ["X-GitHub-Event"] = "push",
        [header] = algo .. "=" .. sig,
      }, body)
    end
  end
  -- threads start at different deliveries
  i = ((tid or 0) * 397) % #reqs
end

function request()
  i = i % #reqs + 1
  return reqs[i]
end
