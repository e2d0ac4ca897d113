-- wrk script: POSTs signed GitHub push deliveries, cycling over pre-signed bodies.
-- usage: wrk -t2 -c32 -d10s --latency -s bench/post.lua http://127.0.0.1:PORT -- BODIES PATH
--   BODIES: one delivery per line, "<hex HMAC-SHA256 of body>\t<minified JSON body>"
--   PATH:   the request path ("/" for the hook, "/hooks/ci-push" for adnanh/webhook)
-- Every request is pre-formatted in init(), so wrk spends no time building them.

local nthreads = 0

function setup(thread)
  thread:set("tid", nthreads)
  nthreads = nthreads + 1
end

local reqs = {}
local i = 0

function init(args)
  local file, path = args[1], args[2] or "/"
  for line in io.lines(file) do
    local sig, body = line:match("^(%x+)\t(.*)$")
    if sig then
      reqs[#reqs + 1] = wrk.format("POST", path, {
        ["Content-Type"] = "application/json",
        ["User-Agent"] = "GitHub-Hookshot/bench",
        ["X-GitHub-Event"] = "push",
        ["X-Hub-Signature-256"] = "sha256=" .. sig,
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
