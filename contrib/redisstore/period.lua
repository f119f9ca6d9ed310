-- period.lua reads one billing period of a tenant, atomically (see
-- sync.lua for the keys).
--
-- KEYS[1] tenant hash, KEYS[2] its lease set, KEYS[3] closed periods' prefix
-- ARGV[1] the period (0: the open one)
--
-- Returns: the open period, the period, committed ops calls mem cpu_us
-- evals (nil for 0), 1 if the period is final (closed, not lost, and no
-- lease for it is live by the server's clock), and 1 if it lost reports
-- (before the tenant hash's "lost").
local h, pbase = KEYS[1], KEYS[3]
local function int(n) return string.format('%.0f', n) end
local open = tonumber(redis.call('HGET', h, 'period') or '1')
local p = tonumber(ARGV[1])
if p == 0 then p = open end
local res = {int(open), int(p), false, false, false, false, false, 0, 0}
local lost = tonumber(redis.call('HGET', h, 'lost') or '0')
if p < lost then res[9] = 1 end
local TOT = {'ops', 'calls', 'mem', 'cpu_us', 'evals'}
local key = nil
if p == open then key = h elseif p < open then key = pbase .. int(p) end
if key then
  local g = redis.call('HMGET', key, unpack(TOT))
  for i = 1, 5 do res[2 + i] = g[i] end
end
if p < open and res[9] == 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if redis.call('ZCOUNT', pbase .. int(p) .. ':leases', int(now), '+inf') == 0 then res[8] = 1 end
end
return res
