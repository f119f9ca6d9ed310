-- sync.lua applies one replica's report for one tenant and computes its
-- grant, atomically, with exactly the semantics of reslimit.MemoryStore.Sync.
-- See the package documentation for the key layout.
--
-- KEYS[1]      tenant hash               prefix:{tenant}
-- KEYS[2]      lease expiries (zset)     prefix:{tenant}:leases
-- KEYS[3]      closed periods' prefix    prefix:{tenant}:p (period N is
--              kept at KEYS[3]..N and KEYS[3]..N..':leases' once closed;
--              the open period at KEYS[1] and KEYS[2]; same hash tag)
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
-- ARGV[27]     the report's billing period (>= 1)
-- ARGV[28]     retention of closed periods' keys, ms (0: kept)
-- ARGV[29]     n, the number of closed periods reported, then n times 7
--              values: period, used operations, calls, memory,
--              evaluations, CPU time us, CPU time ns rest
-- ARGV[30+7n]  lost before: periods before it lost reports (0: none); the
--              tenant hash's field "lost" keeps the largest
-- ARGV[31+7n..34+7n] want, limit, return and least grant of CPU time, whole
--              microseconds: CPU time is leased like the others
-- ARGV[35+7n..42+7n] the evaluation rate's, then the operation rate's,
--              tokens per second, burst, want and return (see
--              reslimit/store.Rate; per second 0: no rate)
--
-- Returns 22 values (decimal strings, or nil for 0): the 16 below, then the
-- replica's last applied seq, then the tenant's open period, then for the
-- evaluation rate and the operation rate the tokens granted and the tokens
-- left in the bucket (a decimal number, nil without a rate):
--   committed ops calls mem cpu_us evals,
--   reported  ops calls mem cpu_us cpu_ns evals        (this replica)
--   unused    ops calls mem evals cpu_us               (allowance - reported)
--
-- Hash fields: the tenant's committed totals ops, calls, mem, cpu_us, evals;
-- out_<r> = sum over replicas of unused_<r> (so a grant is O(1) in the number
-- of replicas); per replica (field "<kind>:<replica>", kinds contain no ':'):
-- seq, ops, calls, mem, cpu_us, cpu_ns, evals (reported), u_ops, u_calls,
-- u_mem, u_evals, u_cpu_us (unused allowance, never negative at rest), per
-- (the period its unused allowance is for, absent for 1). "lost": the periods before it lost reports (absent: none). "period" is the tenant's open period (absent for 1): the
-- committed totals and out_* are the open period's. "rate_e" and "rate_o"
-- are the tenant's fleet-wide rate buckets, "<tokens>:<server time, us>"
-- (absent: full). Zero values are not stored.
--
-- Billing periods (see reslimit.TenantSync.Period): a report for a period
-- after the open one moves the open period's committed totals to the
-- closed period's hash and renames its lease set, and the new period
-- starts from zero (a replica's unused allowance of an earlier period no
-- longer counts in out_*); a report for an earlier period is added to that
-- period's hash and refreshes the replica's lease there. With a retention,
-- a closed period's keys written by a call expire retention after the
-- latest lease in its set, or after now.
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

local h, z, pbase, me = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
-- Leased: ARGV 5..8, 11..14, 15..18, 19..22, 23..26, and CPU time's (used at
-- ARGV 9, the rest at the end; see lease below).
local R = {'ops', 'calls', 'mem', 'evals', 'cpu_us'}
local NR = #R
local OUT = {'out_ops', 'out_calls', 'out_mem', 'out_evals', 'out_cpu_us'}
local TOT = {'ops', 'calls', 'mem', 'cpu_us', 'evals'}
-- This replica's field names, built once.
local M = {}
for _, k in ipairs({'seq', 'ops', 'calls', 'mem', 'cpu_us', 'cpu_ns', 'evals', 'per'}) do
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
  M.ops, M.calls, M.mem, M.cpu_us, M.cpu_ns, M.evals, MU[1], MU[2], MU[3], MU[4], MU[5],
  'out_ops', 'out_calls', 'out_mem', 'out_evals', 'out_cpu_us', M.seq, 'period', M.per, 'lost',
  'rate_e', 'rate_o'}
local NANS = 16 -- the answer's counters: fields[1..NANS]
-- lease(k, i): the k-th lease argument (0 used, 1 want, 2 limit, 3 return,
-- 4 least grant) of leased resource i.
local tail = 31 + 7 * tonumber(ARGV[29])
local function lease(k, i)
  if i <= 4 then
    if k == 0 then return ARGV[4 + i] end
    return ARGV[6 + 4 * k + i]
  end
  if k == 0 then return ARGV[9] end
  return ARGV[tail + k - 1]
end
local got = redis.call('HMGET', h, unpack(fields))
for i, f in ipairs(fields) do
  if got[i] then val[f] = got[i] end
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nowus = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- 1. Allowance is never reclaimed when a lease expires: a replica that
-- vanished may have used it. The lease set only tells live replicas from
-- gone ones; expired entries are pruned when writing.

-- Billing periods.
local function pnum(v) if v then return tonumber(v) end return 1 end
local target = tonumber(ARGV[27])
local retention = tonumber(ARGV[28])
local open = pnum(val['period'])
local myper = pnum(val[M.per])
-- closed[p]: the committed totals of closed period p read or written
-- (fields of TOT, decimal strings), and which were touched.
local closed, touched = {}, {}
local function closedOf(p)
  if closed[p] == nil then
    local g = redis.call('HMGET', pbase .. int(p), unpack(TOT))
    local c = {}
    for i, f in ipairs(TOT) do c[f] = g[i] or '0' end
    closed[p] = c
    touched[#touched + 1] = p
  end
  return closed[p]
end
local function leasesOf(p)
  if p == open then return z end
  return pbase .. int(p) .. ':leases'
end
local moved = nil -- the period closed by this call
-- addUsed adds a report (ops, calls, mem, evals, cpu_us with the ns rest
-- carried per replica) to period p's committed totals and to what this
-- replica reported.
local function addUsed(p, used, us, ns)
  local c = nil
  if p ~= open then c = closedOf(p) end
  local function commit(f, v)
    if c then c[f] = add(c[f], v) else set(f, add(val[f] or '0', v)) end
  end
  for i = 1, 4 do -- CPU time below, with its rest
    local r = R[i]
    if used[i] ~= '0' then
      commit(r, used[i])
      set(M[r], add(val[M[r]] or '0', used[i]))
    end
  end
  local rest = num(val[M.cpu_ns]) + tonumber(ns)
  if rest >= 1000 then
    rest = rest - 1000
    us = add(us, '1')
  end
  if us ~= '0' then
    commit('cpu_us', us)
    set(M.cpu_us, add(val[M.cpu_us] or '0', us))
  end
  set(M.cpu_ns, int(rest))
end

-- 2. This replica's report, at most once per seq.
local uOld, uNew = {}, {}
for i = 1, NR do
  uOld[i] = num(val[MU[i]])
  uNew[i] = uOld[i]
end
local applied = gt(ARGV[2], val[M.seq] or '0')
local inOld = false -- uOld counts in out_* (before this call)
local zrem = {}     -- lease sets this replica leaves
if applied then
  set(M.seq, ARGV[2])
  local lostBefore = tonumber(ARGV[tail - 1])
  if lostBefore > num(val['lost']) then set('lost', int(lostBefore)) end
  if target > open then
    -- Close the open period: its totals go to its own keys, and the new
    -- one starts from zero.
    local c = {}
    for _, f in ipairs(TOT) do
      c[f] = val[f] or '0'
      set(f, nil)
    end
    for _, f in ipairs(OUT) do set(f, nil) end
    closed[open], moved = c, open
    touched[#touched + 1] = open
    if target == 1 then set('period', nil) else set('period', int(target)) end
    open = target
  end
  inOld = myper == open and moved == nil
  local u = {}
  for i = 1, NR do u[i] = uOld[i] end
  -- Final reports of closed periods give their leases back.
  local n = tonumber(ARGV[29])
  for k = 0, n - 1 do
    local b = 29 + 7 * k
    local p = tonumber(ARGV[b + 1])
    local used = {ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5], ARGV[b + 6]}
    addUsed(p, used, ARGV[b + 6], ARGV[b + 7])
    zrem[#zrem + 1] = p
    for i = 1, NR do
      if myper == p then u[i] = 0 else u[i] = u[i] - tonumber(used[i]) end
    end
  end
  if myper < target then
    -- A lease of an earlier period is no good in this one.
    for i = 1, NR do u[i] = 0 end
    myper = target
  end
  addUsed(target, {ARGV[5], ARGV[6], ARGV[7], ARGV[8]}, ARGV[9], ARGV[10])

  -- 3. Give back what the replica returns, then grant up to want (nothing
  -- below the least grant) while committed + every replica's unused
  -- allowance stays within the limit. Unused allowance is never below 0:
  -- a report past the allowance lifts it to what was reported. Nothing is
  -- granted for a period that is not the open one.
  local grants = target == open and myper == target
  for i, r in ipairs(R) do
    local raw = u[i] - tonumber(lease(0, i))
    local v = math.max(math.max(raw, 0) - tonumber(lease(3, i)), 0)
    local want, lim = tonumber(lease(1, i)), tonumber(lease(2, i))
    if grants and lim > 0 and want > 0 then
      local others = num(val[OUT[i]])
      if inOld then others = others - uOld[i] end
      local held = num(val[r]) + others + v
      local grant = math.min(want, lim - held)
      if grant < tonumber(lease(4, i)) then grant = 0 end
      if grant > 0 then v = v + grant end
    end
    uNew[i] = v
  end
  if myper == 1 then set(M.per, nil) else set(M.per, int(myper)) end
end

-- 3b. The fleet-wide rates: refill each bucket to now, put back what the
-- replica returns (up to the burst), then take up to want whole tokens.
local RATE = {'rate_e', 'rate_o'}
-- dec writes a bucket's tokens, rounded down to 1e-9 token, without an
-- exponent.
local function dec(x) return string.format('%.9f', math.floor(x * 1e9) / 1e9) end
local rates = {}
for k = 1, 2 do
  local b = tail + 4 * k
  local ps, burst = tonumber(ARGV[b]), tonumber(ARGV[b + 1])
  local g, tok = 0, false
  if ps > 0 then
    tok = burst
    local v = val[RATE[k]]
    if v then
      local sep = string.find(v, ':', 1, true)
      local was, at = tonumber(string.sub(v, 1, sep - 1)), tonumber(string.sub(v, sep + 1))
      tok = math.min(burst, was + ps * math.max(0, nowus - at) / 1000000)
    end
    if applied then
      tok = math.min(burst, tok + tonumber(ARGV[b + 3]))
      g = math.min(tonumber(ARGV[b + 2]), math.floor(tok))
      tok = tok - g
      set(RATE[k], dec(tok) .. ':' .. int(nowus))
    end
    tok = dec(tok)
  end
  rates[2 * k - 1] = int(g)
  rates[2 * k] = tok
end

-- 4. Final gives back every unused allowance.
local final = ARGV[4] == '1'
if final then
  for i = 1, NR do uNew[i] = 0 end
end
if not applied then inOld = myper == open end
local inNew = myper == open
for i = 1, NR do
  if uNew[i] ~= uOld[i] then set(MU[i], int(uNew[i])) end
  local d = 0
  if inNew then d = d + uNew[i] end
  if inOld then d = d - uOld[i] end
  if d ~= 0 then set(OUT[i], int(num(val[OUT[i]]) + d)) end
end

-- Refuse (before any write) a report that would overflow a 64-bit counter,
-- so that an error never leaves a half-applied report. (Reported totals
-- are at most the sum of the committed ones.)
local function over(v)
  v = v or '0'
  return #v > #MAXINT or (#v == #MAXINT and v > MAXINT)
end
for _, r in ipairs(TOT) do
  if over(val[r]) or over(val[M[r] or '']) then
    return redis.error_reply('ERR reslimit: counter overflow')
  end
end
for _, p in ipairs(touched) do
  for _, f in ipairs(TOT) do
    if over(closed[p][f]) then
      return redis.error_reply('ERR reslimit: counter overflow')
    end
  end
end

-- 5. Write.
if moved and redis.call('EXISTS', z) == 1 then
  redis.call('RENAME', z, leasesOf(moved))
end
for _, p in ipairs(touched) do
  local c, hs, hd = closed[p], {}, {}
  for _, f in ipairs(TOT) do
    if c[f] ~= '0' then
      hs[#hs + 1] = f
      hs[#hs + 1] = c[f]
    else
      hd[#hd + 1] = f
    end
  end
  if #hs > 0 then redis.call('HSET', pbase .. int(p), unpack(hs)) end
  if #hd > 0 then redis.call('HDEL', pbase .. int(p), unpack(hd)) end
end
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
for _, p in ipairs(zrem) do
  redis.call('ZREM', leasesOf(p), me)
  touched[#touched + 1] = p
end
local lz = leasesOf(math.min(target, open))
redis.call('ZREMRANGEBYSCORE', lz, '-inf', '(' .. int(now))
if lz ~= z then
  redis.call('ZREMRANGEBYSCORE', z, '-inf', '(' .. int(now))
  touched[#touched + 1] = math.min(target, open)
end
if final then redis.call('ZREM', lz, me) end
if applied and not final then
  -- The lease runs from now, by the server's clock.
  redis.call('ZADD', lz, int(now + tonumber(ARGV[3])), me)
end
if retention > 0 then
  -- A closed period's keys expire retention after it is final (at the
  -- latest lease in its set), counted from its last write.
  for _, p in ipairs(touched) do
    if p < open then
      local lk = leasesOf(p)
      local at = now
      local top = redis.call('ZRANGE', lk, -1, -1, 'WITHSCORES')
      if top[2] then at = math.max(at, tonumber(top[2])) end
      at = int(at + retention)
      redis.call('PEXPIREAT', pbase .. int(p), at)
      redis.call('PEXPIREAT', lk, at)
    end
  end
end

local res = {}
for i = 1, NANS do res[i] = val[fields[i]] or false end
res[NANS + 1] = val[M.seq] or false -- the last seq applied for this replica
res[NANS + 2] = int(open)
for k = 1, 4 do res[NANS + 2 + k] = rates[k] end
return res
