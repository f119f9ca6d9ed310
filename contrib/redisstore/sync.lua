-- sync.lua applies one replica's report for one tenant and computes its
-- grant, atomically, with exactly the semantics of reslimit.MemoryStore.Sync.
-- See the package documentation for the key layout.
--
-- KEYS[1]      tenant hash               prefix:{tenant}
-- KEYS[2]      lease expiries (zset)     prefix:{tenant}:leases
-- ARGV[1]      replica id
-- ARGV[2]      seq, decimal uint64 without leading zeros
-- ARGV[3]      lease TTL, whole milliseconds
-- ARGV[4]      "1" for a Final sync, else "0"
-- ARGV[5..8]   used operations, calls, memory, evaluations
-- ARGV[9]      used CPU time, whole microseconds
-- ARGV[10]     used CPU time, the sub-microsecond rest in ns (0..999)
-- ARGV[11..14] want operations, calls, memory, evaluations
-- ARGV[15..18] limit operations, calls, memory, evaluations (0 = none,
--              at most 2^53-1)
-- ARGV[19..22] return operations, calls, memory, evaluations (unused
--              allowance given back before the grant)
-- ARGV[23..26] least grant operations, calls, memory, evaluations (a grant
--              below it is not made)
--
-- Returns 18 values (decimal strings, or nil for 0): the 17 below, then the
-- replica's last applied seq:
--   committed ops calls mem cpu_us evals,
--   reported  ops calls mem cpu_us cpu_ns evals        (this replica)
--   unused    ops calls mem evals                      (allowance - reported)
--   allowance cpu_us cpu_ns                            (see below)
--
-- Hash fields: the tenant's committed totals ops, calls, mem, cpu_us, evals;
-- out_<r> = sum over replicas of unused_<r> (so a grant is O(1) in the number
-- of replicas); per replica (field "<kind>:<replica>", kinds contain no ':'):
-- seq, ops, calls, mem, cpu_us, cpu_ns, evals (reported), u_ops, u_calls,
-- u_mem, u_evals (unused allowance, never negative at rest), acpu_us and
-- acpu_ns (the allowance's CPU time: MemoryStore sets a replica's whole
-- allowance, CPU time included, to what it reported when its lease is
-- given back with Final). Zero values are not stored.
--
-- Lua numbers are doubles: counters that must be exact (committed, reported)
-- are kept as decimal strings and added exactly (as doubles below 2^53, digit
-- by digit above). The grant uses doubles: its operands are bounded by the
-- limit (at most 2^53-1), so it is exact too.
--
-- The script reads everything with one HMGET, computes, then writes with one
-- HSET and one HDEL (plus the lease set): a handful of commands per call, as
-- each command costs about a microsecond inside a script.

-- Redis before 5 replicates scripts verbatim; TIME needs effects replication.
if redis.replicate_commands then redis.replicate_commands() end

local h, z, me = KEYS[1], KEYS[2], ARGV[1]
local R = {'ops', 'calls', 'mem', 'evals'} -- leased, ARGV 5..8, 11..14, 15..18
local OUT = {'out_ops', 'out_calls', 'out_mem', 'out_evals'}
local TOT = {'ops', 'calls', 'mem', 'cpu_us', 'evals'}
-- This replica's field names, built once.
local M = {}
for _, k in ipairs({'seq', 'ops', 'calls', 'mem', 'cpu_us', 'cpu_ns', 'evals', 'acpu_us', 'acpu_ns'}) do
  M[k] = k .. ':' .. me
end
local MU = {}
for i, r in ipairs(R) do MU[i] = 'u_' .. r .. ':' .. me end
local EXACT = 9007199254740992             -- 2^53
local MAXINT = '9223372036854775807'

local function int(n) return string.format('%.0f', n) end
local function num(v) if v then return tonumber(v) end return 0 end
-- gt reports whether decimal a > decimal b (no leading zeros, no float).
local function gt(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
-- add returns a + b for decimal strings of non-negative integers, exactly.
local function add(a, b)
  local x, y = tonumber(a), tonumber(b)
  if x + y < EXACT then return int(x + y) end
  local d, carry, i, j = {}, 0, #a, #b
  while i > 0 or j > 0 or carry > 0 do
    local s = carry
    if i > 0 then s = s + string.byte(a, i) - 48; i = i - 1 end
    if j > 0 then s = s + string.byte(b, j) - 48; j = j - 1 end
    d[#d + 1] = s % 10
    carry = (s - s % 10) / 10
  end
  local out = {}
  for k = #d, 1, -1 do out[#out + 1] = d[k] end
  return table.concat(out)
end

-- val caches the hash fields read or written (nil = 0); set records a write.
local val, dirty = {}, {}
local function set(f, s)
  if s == '0' then s = nil end
  if val[f] ~= s then
    if dirty[f] == nil then dirty[#dirty + 1] = f end
    dirty[f] = true
    val[f] = s
  end
end

-- The fields of the answer first (see the header), then what else is read.
local fields = {'ops', 'calls', 'mem', 'cpu_us', 'evals',
  M.ops, M.calls, M.mem, M.cpu_us, M.cpu_ns, M.evals, MU[1], MU[2], MU[3], MU[4], M.acpu_us, M.acpu_ns,
  'out_ops', 'out_calls', 'out_mem', 'out_evals', M.seq}
local got = redis.call('HMGET', h, unpack(fields))
for i, f in ipairs(fields) do
  if got[i] then val[f] = got[i] end
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- 1. Allowance is never reclaimed when a lease expires: a replica that
-- vanished may have used it. The lease set only tells live replicas from
-- gone ones; expired entries are pruned when writing.

-- 2. This replica's report, at most once per seq.
local uOld, uNew = {}, {}
for i = 1, 4 do
  uOld[i] = num(val[MU[i]])
  uNew[i] = uOld[i]
end
local applied = gt(ARGV[2], val[M.seq] or '0')
if applied then
  set(M.seq, ARGV[2])
  for i, r in ipairs(R) do
    local used = ARGV[4 + i]
    if used ~= '0' then
      set(r, add(val[r] or '0', used))
      set(M[r], add(val[M[r]] or '0', used))
    end
  end
  -- CPU time: whole microseconds, carrying the sub-microsecond rest.
  local us, rest = ARGV[9], num(val[M.cpu_ns]) + tonumber(ARGV[10])
  if rest >= 1000 then
    rest = rest - 1000
    us = add(us, '1')
  end
  if us ~= '0' then
    set('cpu_us', add(val['cpu_us'] or '0', us))
    set(M.cpu_us, add(val[M.cpu_us] or '0', us))
  end
  set(M.cpu_ns, int(rest))

  -- 3. Give back what the replica returns, then grant up to want (nothing
  -- below the least grant) while committed + every replica's unused
  -- allowance stays within the limit. Unused allowance is never below 0:
  -- a report past the allowance lifts it to what was reported.
  for i, r in ipairs(R) do
    local raw = uOld[i] - tonumber(ARGV[4 + i])
    local u = math.max(math.max(raw, 0) - tonumber(ARGV[18 + i]), 0)
    local want, lim = tonumber(ARGV[10 + i]), tonumber(ARGV[14 + i])
    if lim > 0 and want > 0 then
      local held = num(val[r]) + (num(val[OUT[i]]) - uOld[i]) + u
      local grant = math.min(want, lim - held)
      if grant < tonumber(ARGV[22 + i]) then grant = 0 end
      if grant > 0 then u = u + grant end
    end
    uNew[i] = u
  end
end

-- 4. Final gives back every unused allowance.
local final = ARGV[4] == '1'
if final then
  for i = 1, 4 do uNew[i] = 0 end
  set(M.acpu_us, val[M.cpu_us] or '0')
  set(M.acpu_ns, val[M.cpu_ns] or '0')
end
for i = 1, 4 do
  if uNew[i] ~= uOld[i] then
    set(MU[i], int(uNew[i]))
    set(OUT[i], int(num(val[OUT[i]]) + uNew[i] - uOld[i]))
  end
end

-- Refuse (before any write) a report that would overflow a 64-bit counter,
-- so that an error never leaves a half-applied report. (Reported totals
-- are at most the committed ones.)
for _, r in ipairs(TOT) do
  local v = val[r] or '0'
  if #v > #MAXINT or (#v == #MAXINT and v > MAXINT) then
    return redis.error_reply('ERR reslimit: counter overflow')
  end
end

-- 5. Write.
local hset, hdel = {}, {}
for _, f in ipairs(dirty) do
  if val[f] then
    hset[#hset + 1] = f
    hset[#hset + 1] = val[f]
  else
    hdel[#hdel + 1] = f
  end
end
if #hset > 0 then redis.call('HSET', h, unpack(hset)) end
if #hdel > 0 then redis.call('HDEL', h, unpack(hdel)) end
redis.call('ZREMRANGEBYSCORE', z, '-inf', '(' .. int(now))
if final then redis.call('ZREM', z, me) end
if applied and not final then
  -- The lease runs from now, by the server's clock.
  redis.call('ZADD', z, int(now + tonumber(ARGV[3])), me)
end

local res = {}
for i = 1, 17 do res[i] = val[fields[i]] or false end
res[18] = val[M.seq] or false -- the last seq applied for this replica
return res
