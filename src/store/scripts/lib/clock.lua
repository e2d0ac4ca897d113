-- Redis's clock in milliseconds: leases and live counts are judged by one
-- clock, not by each process's.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
