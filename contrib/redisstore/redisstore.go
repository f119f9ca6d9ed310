// Package redisstore is a store.Store on Redis (standalone, Sentinel or
// Cluster, through github.com/redis/go-redis/v9), so that a fleet of
// replicas shares each tenant's cumulative quotas and bill:
//
//	rdb := redis.NewClient(&redis.Options{Addr: addr}) // or a ClusterClient
//	store, err := redisstore.New(rdb)
//	ledger, err := reslimit.NewLedger(defaults, reslimit.WithStore(store), reslimit.WithReplica(id))
//
// It behaves exactly like store.Memory (the conformance suite in
// store/storetest checks it against a real Redis server), with these
// differences, all at magnitudes a real fleet does not reach or inputs
// store.Memory takes silently:
//
//   - CPU time is stored (and leased) in whole microseconds. The sub-microsecond rest of
//     each report is carried per (replica, tenant) and added once it makes a
//     whole microsecond, so Reported.CPUTime is exactly the sum of what the
//     replica sent, and Committed.CPUTime is short by less than 1µs per
//     replica (never more, never above the sum).
//   - Limits and Wants above 2^53-1 (9.0e15) are treated as 2^53-1: the grant
//     is computed in the Lua script, whose numbers are float64.
//     Committed and reported totals are exact 64-bit integers; a report
//     that would overflow one is refused whole.
//   - Requests are validated: an empty replica or tenant, a negative Used,
//     Want or Limit field, or a negative LeaseTTL is an error wrapping
//     reslimit.ErrInvalidArgument, and nothing is applied.
//   - The lease set keeps each replica's lease expiry in whole
//     milliseconds of the Redis server's clock (TIME), for inspection:
//     like store.Memory, the store never reclaims allowance when a lease
//     expires (a vanished replica may have used it).
//
// # Round trips and failures
//
// Sync sends all the tenants of a request in one pipeline of EVALSHA calls
// (one round trip per node on a Cluster, which routes each tenant to its
// slot), split into pipelines of at most WithMaxBatch tenants. Every round
// trip has its own timeout (WithTimeout; make the client with
// ContextTimeoutEnabled so that go-redis applies it to socket I/O). The
// script is loaded with SCRIPT
// LOAD the first time a server answers NOSCRIPT (after a restart, a
// failover or SCRIPT FLUSH), and the calls that failed are sent again;
// nothing runs twice, as a NOSCRIPT call did nothing. When Sync returns an
// error, some of the request's tenants may have been applied: retrying the
// same request (same Seq numbers) is safe, as every report is applied at
// most once per (replica, tenant, Seq).
//
// # Key layout
//
// With the default prefix "reslimit", each tenant has two keys, in one
// Cluster slot thanks to the {tenant} hash tag ('%', '{' and '}' in a
// tenant name are written %25, %7B and %7D):
//
//	reslimit:{tenant}         hash: committed totals ops, calls, mem,
//	                          cpu_us, evals; out_ops, out_calls, out_mem,
//	                          out_evals, out_cpu_us (the sum of the
//	                          replicas' unused allowance); and per replica, "<kind>:<replica>"
//	                          fields seq, ops, calls, mem, cpu_us, cpu_ns,
//	                          evals (reported), u_ops, u_calls, u_mem,
//	                          u_evals, u_cpu_us (unused allowance).
//	                          Zero values are not stored.
//	reslimit:{tenant}:leases  sorted set: replica → lease expiry, in ms of
//	                          the Redis server's clock (live replicas;
//	                          expired entries are pruned on writes).
//
// These two keys hold the tenant's open billing period (see
// store.TenantSync.Period); the hash also holds "period", the open
// period's number (absent for 1), and per replica "per:<replica>", the
// period its unused allowance is for (absent for 1). A deployment that
// never closes a period keeps exactly these keys. When a replica reports
// for a later period, the open one's committed totals move to
// reslimit:{tenant}:p<N> (hash: ops, calls, mem, cpu_us, evals) and its
// lease set is renamed reslimit:{tenant}:p<N>:leases; the replicas' final
// reports for the period (store.ClosedReport) are added there and take
// them out of its lease set. Period N is final when its lease set holds no
// live lease. With WithPeriodRetention, these keys expire after the
// retention once the period is final.
//
// The open period's keys have no TTL: they are the bill. A replica's fields stay after it
// is gone (they make a late retry of its reports harmless), so use replica
// ids that are unique per process start, not per host, and expect about
// 100 bytes per (replica, tenant) pair that ever synced.
//
// # Redis settings that matter for billing
//
//   - appendonly yes (and appendfsync everysec or always): committed totals
//     survive a restart; with RDB snapshots alone a crash loses the usage
//     reported since the last snapshot, and the replicas, whose reports
//     were acknowledged, will not send it again.
//   - maxmemory-policy noeviction: an evicted tenant hash is a lost bill and
//     a reset quota. With noeviction, a full Redis refuses writes and the
//     ledgers keep the usage unreported until it has room again.
//   - On a Cluster or with replicas, failover may lose the last writes
//     acknowledged by the old primary (Redis replication is asynchronous);
//     WAIT is not used.
package redisstore

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/store"
)

// DefaultPrefix is the key prefix of a Store made without WithKeyPrefix.
const DefaultPrefix = "reslimit"

// DefaultTimeout bounds each Redis round trip of a Store made without
// WithTimeout.
const DefaultTimeout = 2 * time.Second

// DefaultMaxBatch is the most tenants a Store made without WithMaxBatch
// sends in one pipeline.
const DefaultMaxBatch = 1000

// maxExact is the largest integer a Lua number (float64) holds exactly.
const maxExact = 1<<53 - 1

//go:embed sync.lua
var syncSource string

// syncScript applies one tenant's report; see sync.lua.
var syncScript = redis.NewScript(syncSource)

// Store is a store.Store on Redis. It is safe for concurrent use. Its
// zero value is not usable: make one with New.
type Store struct {
	rdb       redis.UniversalClient
	prefix    string
	timeout   time.Duration
	maxBatch  int
	retention time.Duration
}

var (
	_ store.Store        = (*Store)(nil)
	_ store.TenantLister = (*Store)(nil)
	_ store.PeriodLoader = (*Store)(nil)
)

// Option configures a Store made by New.
type Option func(*Store) error

// WithKeyPrefix sets the prefix of every key the store uses (default
// "reslimit"): tenant t is kept at prefix:{t} and prefix:{t}:leases. The
// prefix must be non-empty and hold no '{' or '}', which would change the
// Cluster hash tag.
func WithKeyPrefix(prefix string) Option {
	return func(s *Store) error {
		if prefix == "" || strings.ContainsAny(prefix, "{}") {
			return fmt.Errorf("%w: redisstore: key prefix %q is empty or holds '{' or '}'", reslimit.ErrInvalidArgument, prefix)
		}
		s.prefix = prefix
		return nil
	}
}

// WithTimeout bounds every Redis round trip (default 2s), on top of the
// caller's context. It must be positive.
//
// go-redis bounds socket reads and writes by the context's deadline only
// when the client was made with ContextTimeoutEnabled: true (in
// redis.Options, redis.ClusterOptions, ...). Without it, a server that
// stops answering holds a call for the client's ReadTimeout (default 3s)
// or DialTimeout (default 5s) instead.
func WithTimeout(d time.Duration) Option {
	return func(s *Store) error {
		if d <= 0 {
			return fmt.Errorf("%w: redisstore: timeout %v is not positive", reslimit.ErrInvalidArgument, d)
		}
		s.timeout = d
		return nil
	}
}

// WithMaxBatch sets the most tenants sent in one pipeline (default 1000);
// a larger request takes several round trips, one after the other. It
// must be positive.
func WithMaxBatch(n int) Option {
	return func(s *Store) error {
		if n <= 0 {
			return fmt.Errorf("%w: redisstore: max batch %d is not positive", reslimit.ErrInvalidArgument, n)
		}
		s.maxBatch = n
		return nil
	}
}

// WithPeriodRetention makes the keys of closed billing periods
// (prefix:{t}:p<N> and prefix:{t}:p<N>:leases) expire d after the period
// is final: after the last final report of a replica that held a lease
// for it, or when the last such lease expires, whichever comes first
// (each write to a closed period's keys sets their expiry again). After
// that, LoadPeriod reads the period as final with zero totals: read the
// invoice before. 0, the default, keeps closed periods for ever; d must
// not be negative. The open period's keys never expire.
func WithPeriodRetention(d time.Duration) Option {
	return func(s *Store) error {
		if d < 0 {
			return fmt.Errorf("%w: redisstore: period retention %v is negative", reslimit.ErrInvalidArgument, d)
		}
		s.retention = d
		return nil
	}
}

// New returns a Store on rdb (a *redis.Client, *redis.ClusterClient,
// failover client or *redis.Ring; with a Ring, give every replica the same
// shards). It does not contact Redis: the script is loaded on first use,
// so a ledger can start while Redis is down. The caller keeps ownership of
// rdb and closes it after the ledgers that use the store are closed.
func New(rdb redis.UniversalClient, opts ...Option) (*Store, error) {
	if rdb == nil {
		return nil, fmt.Errorf("%w: redisstore: nil client", reslimit.ErrInvalidArgument)
	}
	s := &Store{rdb: rdb, prefix: DefaultPrefix, timeout: DefaultTimeout, maxBatch: DefaultMaxBatch}
	for _, o := range opts {
		if err := o(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Keys returns the names of tenant's hash and lease sorted set (see the
// package documentation), for inspection and administration.
func (s *Store) Keys(tenant string) (hash, leases string) {
	hash = s.prefix + ":{" + escapeTag(tenant) + "}"
	return hash, hash + ":leases"
}

// escapeTag keeps a tenant name from ending the hash tag early.
var tagEscaper = strings.NewReplacer("%", "%25", "{", "%7B", "}", "%7D")

func escapeTag(tenant string) string { return tagEscaper.Replace(tenant) }

// call is one tenant's script call.
type call struct {
	keys []string
	args []any
}

// Sync implements store.Store: it applies each tenant's report and
// grant with one script call, all of them pipelined.
func (s *Store) Sync(ctx context.Context, req store.SyncRequest) (store.SyncResponse, error) {
	if err := ctx.Err(); err != nil {
		return store.SyncResponse{}, err
	}
	calls, err := s.calls(req)
	if err != nil {
		return store.SyncResponse{}, err
	}
	resp := store.SyncResponse{Tenants: make([]store.TenantState, len(req.Tenants))}
	for lo := 0; lo < len(calls); lo += s.maxBatch {
		hi := min(lo+s.maxBatch, len(calls))
		if err := s.run(ctx, calls[lo:hi], resp.Tenants[lo:hi]); err != nil {
			return store.SyncResponse{}, fmt.Errorf("redisstore: sync: %w", err)
		}
		for i := lo; i < hi; i++ {
			resp.Tenants[i].Tenant = req.Tenants[i].Tenant
		}
	}
	return resp, nil
}

// calls validates req and builds the script calls.
func (s *Store) calls(req store.SyncRequest) ([]call, error) {
	if req.Replica == "" {
		return nil, fmt.Errorf("%w: redisstore: sync without a replica id", reslimit.ErrInvalidArgument)
	}
	if req.LeaseTTL < 0 {
		return nil, fmt.Errorf("%w: redisstore: negative lease TTL %v", reslimit.ErrInvalidArgument, req.LeaseTTL)
	}
	ttl := strconv.FormatInt(int64((req.LeaseTTL+time.Millisecond-1)/time.Millisecond), 10)
	if req.LeaseTTL > 0 && req.LeaseTTL+time.Millisecond-1 < 0 { // overflow: ~292 years
		ttl = strconv.FormatInt(int64(req.LeaseTTL/time.Millisecond), 10)
	}
	retention := int64((s.retention + time.Millisecond - 1) / time.Millisecond)
	final := "0"
	if req.Final {
		final = "1"
	}
	calls := make([]call, len(req.Tenants))
	for i, ts := range req.Tenants {
		if ts.Tenant == "" {
			return nil, fmt.Errorf("%w: redisstore: sync of an empty tenant name", reslimit.ErrInvalidArgument)
		}
		if err := validPeriods(ts); err != nil {
			return nil, err
		}
		if err := nonNegative(ts); err != nil {
			return nil, err
		}
		for _, r := range [...]store.Rate{ts.EvaluationRate, ts.OperationRate} {
			if err := r.Validate(); err != nil {
				return nil, fmt.Errorf("%w: redisstore: tenant %q: %v", reslimit.ErrInvalidArgument, ts.Tenant, err)
			}
		}
		cpu := int64(ts.Used.CPUTime)
		hash, leases := s.Keys(ts.Tenant)
		calls[i] = call{keys: []string{hash, leases, hash + ":p"}, args: []any{
			req.Replica, strconv.FormatUint(ts.Seq, 10), ttl, final,
			itoa(ts.Used.Operations), itoa(ts.Used.Calls), itoa(ts.Used.TotalMemory), itoa(ts.Used.Evaluations),
			itoa(cpu / 1000), itoa(cpu % 1000),
			exact(ts.Want.Operations), exact(ts.Want.Calls), exact(ts.Want.TotalMemory), exact(ts.Want.Evaluations),
			exact(ts.Limit.Operations), exact(ts.Limit.Calls), exact(ts.Limit.TotalMemory), exact(ts.Limit.Evaluations),
			exact(ts.Return.Operations), exact(ts.Return.Calls), exact(ts.Return.TotalMemory), exact(ts.Return.Evaluations),
			exact(ts.MinGrant.Operations), exact(ts.MinGrant.Calls), exact(ts.MinGrant.TotalMemory), exact(ts.MinGrant.Evaluations),
			strconv.FormatUint(max(ts.Period, 1), 10), itoa(retention), itoa(int64(len(ts.Closed))),
		}}
		for _, c := range ts.Closed {
			cpu := int64(c.Used.CPUTime)
			calls[i].args = append(calls[i].args, strconv.FormatUint(c.Period, 10),
				itoa(c.Used.Operations), itoa(c.Used.Calls), itoa(c.Used.TotalMemory), itoa(c.Used.Evaluations),
				itoa(cpu/1000), itoa(cpu%1000))
		}
		calls[i].args = append(calls[i].args, strconv.FormatUint(ts.LostBefore, 10),
			// CPU time's lease, in whole microseconds: ask for at least
			// the nanoseconds wanted, never limit or give back more.
			exact(usCeil(ts.Want.CPUTime)), exact(int64(ts.Limit.CPUTime/time.Microsecond)),
			exact(int64(ts.Return.CPUTime/time.Microsecond)), exact(usCeil(ts.MinGrant.CPUTime)))
		for _, r := range [...]store.Rate{ts.EvaluationRate, ts.OperationRate} {
			calls[i].args = append(calls[i].args, strconv.FormatFloat(r.PerSecond, 'f', -1, 64),
				exact(r.Burst), exact(r.Want), exact(r.Return))
		}
	}
	return calls, nil
}

// maxPeriod bounds period numbers, which the script keeps as float64.
const maxPeriod = maxExact

// validPeriods checks a report's periods as store.Memory does:
// its closed periods come before its period, each once.
func validPeriods(ts store.TenantSync) error {
	p := max(ts.Period, 1)
	if p > maxPeriod {
		return fmt.Errorf("%w: redisstore: tenant %q: period %d is too large", reslimit.ErrInvalidArgument, ts.Tenant, p)
	}
	if ts.LostBefore > p {
		return fmt.Errorf("%w: redisstore: tenant %q: lost periods before %d, after the report's period %d", reslimit.ErrInvalidArgument, ts.Tenant, ts.LostBefore, p)
	}
	for i, c := range ts.Closed {
		if c.Period == 0 || c.Period >= p {
			return fmt.Errorf("%w: redisstore: tenant %q: closed period %d is not before period %d", reslimit.ErrInvalidArgument, ts.Tenant, c.Period, p)
		}
		for _, d := range ts.Closed[:i] {
			if d.Period == c.Period {
				return fmt.Errorf("%w: redisstore: tenant %q: closed period %d reported twice", reslimit.ErrInvalidArgument, ts.Tenant, c.Period)
			}
		}
		u := c.Used
		if u.Operations < 0 || u.Calls < 0 || u.TotalMemory < 0 || u.CPUTime < 0 || u.Evaluations < 0 {
			return fmt.Errorf("%w: redisstore: tenant %q: negative Used %+v for closed period %d", reslimit.ErrInvalidArgument, ts.Tenant, u, c.Period)
		}
	}
	return nil
}

func nonNegative(ts store.TenantSync) error {
	for _, f := range []struct {
		name string
		t    store.Totals
	}{{"Used", ts.Used}, {"Want", ts.Want}, {"Limit", ts.Limit}, {"Return", ts.Return}, {"MinGrant", ts.MinGrant}} {
		t := f.t
		if t.Operations < 0 || t.Calls < 0 || t.TotalMemory < 0 || t.CPUTime < 0 || t.Evaluations < 0 {
			return fmt.Errorf("%w: redisstore: tenant %q: negative %s %+v", reslimit.ErrInvalidArgument, ts.Tenant, f.name, t)
		}
	}
	return nil
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }

// usCeil is d in whole microseconds, rounded up.
func usCeil(d time.Duration) int64 {
	us := int64(d / time.Microsecond)
	if d%time.Microsecond > 0 {
		us++
	}
	return us
}

// exact caps v at the largest integer the script computes with exactly.
func exact(v int64) string { return itoa(min(v, maxExact)) }

// run sends one pipeline of calls and fills out. Calls answered NOSCRIPT
// (they did nothing) are sent again once the script is loaded.
func (s *Store) run(ctx context.Context, calls []call, out []store.TenantState) error {
	todo := make([]int, len(calls))
	for i := range todo {
		todo[i] = i
	}
	// First EVALSHA; on NOSCRIPT, SCRIPT LOAD (on every shard of a Cluster)
	// and EVALSHA again; a server that still lacks the script (a Ring
	// shard, a failover in between) gets the script itself with EVAL.
	for attempt := 0; len(todo) > 0; attempt++ {
		switch attempt {
		case 0:
		case 1:
			lctx, cancel := context.WithTimeout(ctx, s.timeout)
			err := syncScript.Load(lctx, s.rdb).Err()
			cancel()
			if err != nil {
				return fmt.Errorf("loading the script: %w", err)
			}
		default:
		}
		cmds, err := s.pipeline(ctx, calls, todo, attempt < 2)
		if err != nil {
			return err
		}
		var again []int
		for k, i := range todo {
			cmd := cmds[k]
			if err := cmd.Err(); err != nil {
				if attempt < 2 && redis.HasErrorPrefix(err, "NOSCRIPT") {
					again = append(again, i)
					continue
				}
				return err
			}
			st, err := parseState(cmd.Val())
			if err != nil {
				return err
			}
			out[i] = st
		}
		todo = again
	}
	return nil
}

// pipeline sends calls[i] for i in todo in one pipeline, with EVALSHA or
// EVAL, and returns their commands. It fails only when no command got an
// answer.
func (s *Store) pipeline(ctx context.Context, calls []call, todo []int, sha bool) ([]*redis.Cmd, error) {
	pctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	cmds := make([]*redis.Cmd, len(todo))
	pipe := s.rdb.Pipeline()
	for k, i := range todo {
		c := calls[i]
		if sha {
			cmds[k] = syncScript.EvalSha(pctx, pipe, c.keys, c.args...)
		} else {
			cmds[k] = syncScript.Eval(pctx, pipe, c.keys, c.args...)
		}
	}
	_, err := pipe.Exec(pctx)
	if err != nil && !isRedisError(err) {
		// A transport error or timeout: no answer to rely on. (Some calls
		// may have been applied; a retry of the request is safe.)
		return nil, err
	}
	return cmds, nil
}

// isRedisError reports whether err is an error reply of the server (as
// opposed to a network error or timeout).
func isRedisError(err error) bool {
	var rerr redis.Error
	return errors.As(err, &rerr) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled)
}

// parseState reads the script's 22 values: 16 counters, the last
// sequence number applied for the replica, the tenant's open period and
// its two rates' grants and buckets.
func parseState(v any) (store.TenantState, error) {
	vals, ok := v.([]any)
	if !ok || len(vals) != 22 {
		return store.TenantState{}, fmt.Errorf("unexpected script reply %#v", v)
	}
	var rates [2]store.RateState
	for k := range rates {
		g, err := parseInt(vals[18+2*k])
		if err != nil {
			return store.TenantState{}, err
		}
		rates[k].Granted = g
		if s, ok := vals[19+2*k].(string); ok {
			if rates[k].Tokens, err = strconv.ParseFloat(s, 64); err != nil {
				return store.TenantState{}, fmt.Errorf("bad rate bucket %q: %w", s, err)
			}
		}
	}
	period, err := parseInt(vals[17])
	if err != nil || period < 1 {
		return store.TenantState{}, fmt.Errorf("bad open period %#v: %v", vals[17], err)
	}
	var seq uint64
	if s, ok := vals[16].(string); ok {
		var err error
		if seq, err = strconv.ParseUint(s, 10, 64); err != nil {
			return store.TenantState{}, fmt.Errorf("bad stored seq %q: %w", s, err)
		}
	}
	vals = vals[:16]
	n := make([]int64, len(vals))
	for i, x := range vals {
		var err error
		if n[i], err = parseInt(x); err != nil {
			return store.TenantState{}, err
		}
	}
	st := store.TenantState{
		Committed: store.Totals{Operations: n[0], Calls: n[1], TotalMemory: n[2],
			CPUTime: time.Duration(n[3]) * time.Microsecond, Evaluations: n[4]},
		Reported: store.Totals{Operations: n[5], Calls: n[6], TotalMemory: n[7],
			CPUTime: time.Duration(n[8])*time.Microsecond + time.Duration(n[9]), Evaluations: n[10]},
	}
	st.Allowance = store.Totals{Operations: n[5] + n[11], Calls: n[6] + n[12], TotalMemory: n[7] + n[13],
		CPUTime: st.Reported.CPUTime + time.Duration(n[15])*time.Microsecond, Evaluations: n[10] + n[14]}
	st.Seq = seq
	st.Period = uint64(period)
	st.EvaluationRate, st.OperationRate = rates[0], rates[1]
	return st, nil
}

// parseInt reads one hash value (nil for an absent field, which is 0).
func parseInt(x any) (int64, error) {
	switch x := x.(type) {
	case nil:
		return 0, nil
	case string:
		n, err := strconv.ParseInt(x, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("bad stored value %q: %w", x, err)
		}
		return n, nil
	case int64:
		return x, nil
	}
	return 0, fmt.Errorf("unexpected stored value %#v", x)
}

// ListTenants implements store.TenantLister: it SCANs for the tenant
// hashes (prefix:{*}, TYPE hash) on the server, or on every master of a
// Cluster (every shard of a Ring) one after the other, calling fn from one
// goroutine, and reads each batch's committed totals
// with one pipelined HMGET. It holds one SCAN batch (about 1000 keys) in
// memory at a time. As SCAN guarantees, a tenant present for the whole
// listing is listed, possibly twice (during a Cluster resharding or a
// rehash); a tenant created or deleted meanwhile may or may not be.
func (s *Store) ListTenants(ctx context.Context, fn func(tenant string, committed store.Totals) error) error {
	// The nodes are listed one after the other, so that fn is never called
	// concurrently (ForEachMaster and ForEachShard run in parallel).
	var mu sync.Mutex
	var nodes []*redis.Client
	collect := func(_ context.Context, c *redis.Client) error {
		mu.Lock()
		nodes = append(nodes, c)
		mu.Unlock()
		return nil
	}
	var err error
	switch c := s.rdb.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, collect)
	case *redis.Client:
		nodes = append(nodes, c)
	case *redis.Ring:
		err = c.ForEachShard(ctx, collect)
	default:
		return fmt.Errorf("%w: redisstore: ListTenants needs a *redis.Client, *redis.ClusterClient or *redis.Ring, not %T", reslimit.ErrInvalidArgument, s.rdb)
	}
	if err != nil {
		return fmt.Errorf("redisstore: list tenants: %w", err)
	}
	for _, c := range nodes {
		if err := s.listNode(ctx, c, fn); err != nil {
			return err
		}
	}
	return nil
}

// globEscaper escapes the glob characters of SCAN's MATCH.
var globEscaper = strings.NewReplacer(`\`, `\\`, "*", `\*`, "?", `\?`, "[", `\[`, "]", `\]`)

func (s *Store) listNode(ctx context.Context, c *redis.Client, fn func(string, store.Totals) error) error {
	pattern := globEscaper.Replace(s.prefix) + ":{*}"
	var cursor uint64
	for {
		sctx, cancel := context.WithTimeout(ctx, s.timeout)
		keys, next, err := c.ScanType(sctx, cursor, pattern, 1000, "hash").Result()
		cancel()
		if err != nil {
			return fmt.Errorf("redisstore: list tenants: %w", err)
		}
		if len(keys) > 0 {
			pctx, cancel := context.WithTimeout(ctx, s.timeout)
			pipe := c.Pipeline()
			cmds := make([]*redis.SliceCmd, len(keys))
			for i, k := range keys {
				cmds[i] = pipe.HMGet(pctx, k, "ops", "calls", "mem", "cpu_us", "evals")
			}
			_, err := pipe.Exec(pctx)
			cancel()
			if err != nil && !errors.Is(err, redis.Nil) {
				return fmt.Errorf("redisstore: list tenants: %w", err)
			}
			for i, k := range keys {
				tenant, ok := s.tenantOf(k)
				if !ok {
					continue
				}
				tot, err := parseTotals(cmds[i].Val())
				if err != nil {
					return fmt.Errorf("redisstore: list tenants: %s: %w", k, err)
				}
				if err := fn(tenant, tot); err != nil {
					return err
				}
			}
		}
		if next == 0 {
			return nil
		}
		cursor = next
	}
}

// tenantOf returns the tenant whose hash is key.
func (s *Store) tenantOf(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, s.prefix+":{")
	if !ok || !strings.HasSuffix(rest, "}") {
		return "", false
	}
	return tagUnescaper.Replace(rest[:len(rest)-1]), true
}

var tagUnescaper = strings.NewReplacer("%25", "%", "%7B", "{", "%7D", "}")

// parseTotals reads HMGET ops calls mem cpu_us evals.
func parseTotals(vals []any) (store.Totals, error) {
	var n [5]int64
	for i, x := range vals {
		var err error
		if n[i], err = parseInt(x); err != nil {
			return store.Totals{}, err
		}
	}
	return store.Totals{Operations: n[0], Calls: n[1], TotalMemory: n[2],
		CPUTime: time.Duration(n[3]) * time.Microsecond, Evaluations: n[4]}, nil
}

// Load implements store.Store: it returns tenant's committed totals,
// with one HMGET. A tenant that never synced has zero totals.
func (s *Store) Load(ctx context.Context, tenant string) (store.Totals, error) {
	if tenant == "" {
		return store.Totals{}, fmt.Errorf("%w: redisstore: load of an empty tenant name", reslimit.ErrInvalidArgument)
	}
	lctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	hash, _ := s.Keys(tenant)
	vals, err := s.rdb.HMGet(lctx, hash, "ops", "calls", "mem", "cpu_us", "evals").Result()
	if err != nil {
		return store.Totals{}, fmt.Errorf("redisstore: load %q: %w", tenant, err)
	}
	tot, err := parseTotals(vals)
	if err != nil {
		return store.Totals{}, fmt.Errorf("redisstore: load %q: %w", tenant, err)
	}
	return tot, nil
}

//go:embed period.lua
var periodSource string

// periodScript reads one billing period; see period.lua.
var periodScript = redis.NewScript(periodSource)

// LoadPeriod implements store.PeriodLoader: it reads a tenant's
// committed totals for a billing period (0: the open one), and whether
// they are final, atomically, with one script call. A closed period whose
// keys expired (WithPeriodRetention) reads as final with zero totals; one
// charged before the store lost its data (store.TenantSync.LostBefore)
// reads as lost, never final.
func (s *Store) LoadPeriod(ctx context.Context, tenant string, period uint64) (store.Period, error) {
	if tenant == "" {
		return store.Period{}, fmt.Errorf("%w: redisstore: load of an empty tenant name", reslimit.ErrInvalidArgument)
	}
	if period > maxPeriod {
		return store.Period{}, fmt.Errorf("%w: redisstore: period %d is too large", reslimit.ErrInvalidArgument, period)
	}
	lctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	hash, leases := s.Keys(tenant)
	v, err := periodScript.Run(lctx, s.rdb, []string{hash, leases, hash + ":p"}, strconv.FormatUint(period, 10)).Result()
	if err != nil {
		return store.Period{}, fmt.Errorf("redisstore: load period %d of %q: %w", period, tenant, err)
	}
	vals, ok := v.([]any)
	if !ok || len(vals) != 9 {
		return store.Period{}, fmt.Errorf("redisstore: load period %d of %q: unexpected script reply %#v", period, tenant, v)
	}
	var n [9]int64
	for i, x := range vals {
		if n[i], err = parseInt(x); err != nil {
			return store.Period{}, fmt.Errorf("redisstore: load period %d of %q: %w", period, tenant, err)
		}
	}
	tot, _ := parseTotals(vals[2:7])
	return store.Period{Tenant: tenant, Open: uint64(n[0]), Number: uint64(n[1]), Totals: tot, Final: n[7] == 1, Lost: n[8] == 1}, nil
}
