package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/contrib/redisstore"
	"github.com/reslimit/reslimit/reslimithttp"
	"github.com/reslimit/reslimit/store"
)

// The variables that point the tests at a real Redis server, as in
// contrib/redisstore: RESLIMIT_REDIS_ADDR is host:port of a disposable
// redis-server; with RESLIMIT_REQUIRE_REDIS set, a missing address fails
// the tests instead of skipping them.
const (
	addrEnv    = "RESLIMIT_REDIS_ADDR"
	requireEnv = "RESLIMIT_REQUIRE_REDIS"
)

// redisAddr returns $RESLIMIT_REDIS_ADDR, or skips tb (fails it under
// RESLIMIT_REQUIRE_REDIS) when it is unset.
func redisAddr(tb testing.TB) string {
	tb.Helper()
	addr := os.Getenv(addrEnv)
	if addr == "" {
		if os.Getenv(requireEnv) != "" {
			tb.Fatalf("%s is set but %s is not: the end-to-end tests need a real redis-server", requireEnv, addrEnv)
		}
		tb.Skip(addrEnv + " is not set: skipping the end-to-end tests on a real Redis server (set it to host:port of a disposable redis-server)")
	}
	return addr
}

// newRedisClient returns a client of the Redis server at addr, closed when
// tb ends, after checking that the server answers.
func newRedisClient(tb testing.TB, addr string) *redis.Client {
	tb.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	tb.Cleanup(func() { _ = rdb.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		tb.Fatalf("Redis at %s: %v", addr, err)
	}
	return rdb
}

// privateRedis starts a redis-server of the test's own on a free loopback
// port (for a test that flushes it), stopped when tb ends. It needs
// $RESLIMIT_REDIS_ADDR like the other tests (so that they run or skip
// together) and redis-server on PATH.
func privateRedis(tb testing.TB) *redis.Client {
	tb.Helper()
	redisAddr(tb)
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		tb.Fatalf("%s is set but redis-server is not on PATH: %v", addrEnv, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().(*net.TCPAddr)
	ln.Close()
	cmd := exec.Command(bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(addr.Port),
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
		"--dir", tb.TempDir())
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	rdb := redis.NewClient(&redis.Options{Addr: addr.String(), ContextTimeoutEnabled: true})
	tb.Cleanup(func() { _ = rdb.Close() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := rdb.Ping(ctx).Err()
		cancel()
		if err == nil {
			return rdb
		}
		if time.Now().After(deadline) {
			tb.Fatalf("the private redis-server on %s did not start: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// newStore returns a Redis store under a key prefix unique to this test
// run, whose keys are deleted when tb ends. Every replica of a test shares
// it (the same prefix on the same server is one store).
func newStore(tb testing.TB, rdb *redis.Client) *redisstore.Store {
	tb.Helper()
	var b [8]byte
	_, _ = rand.Read(b[:])
	prefix := "reslimit-e2e-" + hex.EncodeToString(b[:])
	st, err := redisstore.New(rdb, redisstore.WithKeyPrefix(prefix))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		iter := rdb.Scan(ctx, 0, prefix+":*", 1000).Iterator()
		var keys []string
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
		}
		if len(keys) > 0 {
			_ = rdb.Del(ctx, keys...).Err()
		}
	})
	return st
}

// e2eLeaseWait is every replica's WithLeaseWait (see newFleet).
const e2eLeaseWait = 10 * time.Second

// fleetConfig describes a fleet of replicas of the service.
type fleetConfig struct {
	replicas int
	// plans are the tenants and their limits (per billing period,
	// fleet-wide through the store); a tenant not in plans is unknown
	// (401).
	plans map[string]reslimit.AccountLimits
	// period closes every tenant's billing period every period, on every
	// replica (WithPeriod); 0 closes none on a schedule.
	period time.Duration
	// sync is the ledgers' sync interval (default 50ms).
	sync time.Duration
	// request bounds each request (the middleware's limits).
	request reslimit.Limits
	// handler serves the requests inside the middleware (default
	// toolHandler).
	handler http.Handler
	// rdb is the Redis server (default: the one at $RESLIMIT_REDIS_ADDR).
	rdb *redis.Client
	// ledgerOpts are more options for every ledger.
	ledgerOpts []reslimit.LedgerOption
}

// fleet is a running fleet: replicas of one service on one store.
type fleet struct {
	t        *testing.T
	cfg      fleetConfig
	rdb      *redis.Client
	store    *redisstore.Store
	replicas []*replica
	client   *http.Client
}

// replica is one replica: its ledger, its HTTP server, and the invoice
// lines it produced (from its WithPeriodClosed hook and from the closes
// the test made with ClosePeriod).
type replica struct {
	id     string
	ledger *reslimit.Ledger
	srv    *httptest.Server

	mu     sync.Mutex
	lines  []reslimit.Period
	closed bool
}

func (r *replica) addLines(lines []reslimit.Period) {
	r.mu.Lock()
	r.lines = append(r.lines, lines...)
	r.mu.Unlock()
}

// Lines returns every invoice line the replica produced so far.
func (r *replica) Lines() []reslimit.Period {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]reslimit.Period(nil), r.lines...)
}

// ClosePeriod closes the replica's period by hand; its lines count as the
// replica's (ClosePeriod returns them instead of passing them to the hook).
func (r *replica) ClosePeriod() []reslimit.Period {
	lines := r.ledger.ClosePeriod()
	r.addLines(lines)
	return lines
}

// newFleet starts cfg.replicas replicas on one store, each a ledger
// (replica ids r1, r2, ...) behind reslimithttp.Middleware on an httptest
// server. Everything is closed when the test ends (Close has usually been
// called by the test before).
func newFleet(t *testing.T, cfg fleetConfig) *fleet {
	t.Helper()
	if cfg.rdb == nil {
		cfg.rdb = newRedisClient(t, redisAddr(t))
	}
	if cfg.sync == 0 {
		cfg.sync = 50 * time.Millisecond
	}
	if cfg.handler == nil {
		cfg.handler = toolHandler(newTools(t))
	}
	f := &fleet{t: t, cfg: cfg, rdb: cfg.rdb, store: newStore(t, cfg.rdb)}
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	f.client = &http.Client{Transport: tr}
	t.Cleanup(tr.CloseIdleConnections)
	tenantOf := func(r *http.Request) (string, error) {
		name := r.Header.Get("X-Tenant")
		if _, ok := cfg.plans[name]; !ok {
			return "", fmt.Errorf("no plan for %q", name)
		}
		return name, nil
	}
	for i := range cfg.replicas {
		rep := &replica{id: "r" + strconv.Itoa(i+1)}
		opts := []reslimit.LedgerOption{
			reslimit.WithStore(f.store),
			reslimit.WithReplica(rep.id),
			reslimit.WithSyncInterval(cfg.sync),
			reslimit.WithTenantLimits(func(tenant string) reslimit.AccountLimits { return cfg.plans[tenant] }),
			reslimit.WithPeriodsKept(1 << 12),
			reslimit.WithPeriodClosed(rep.addLines),
			// A charge that finds its lease used up waits this long for
			// the syncer to lease more before it is refused "for want of a
			// lease in time" (default 100ms). The tests tell real refusals
			// from false ones; on a loaded machine the syncer (every
			// cfg.sync) may not keep up within 100ms, and that refusal,
			// by design, would read as a false one. Real shortages are
			// still refused at once (the store answered short, or the
			// quota is used).
			reslimit.WithLeaseWait(e2eLeaseWait),
		}
		if cfg.period > 0 {
			opts = append(opts, reslimit.WithPeriod(cfg.period))
		}
		opts = append(opts, cfg.ledgerOpts...)
		l, err := reslimit.NewLedger(reslimit.AccountLimits{}, opts...)
		if err != nil {
			t.Fatal(err)
		}
		rep.ledger = l
		var mwOpts []reslimithttp.Option
		if cfg.period > 0 {
			period := cfg.period
			mwOpts = append(mwOpts, reslimithttp.WithResetTime(func(string) time.Time {
				return time.Now().Truncate(period).Add(period)
			}))
		}
		mw, err := reslimithttp.Middleware(l, tenantOf, cfg.request, mwOpts...)
		if err != nil {
			t.Fatal(err)
		}
		rep.srv = httptest.NewServer(mw(cfg.handler))
		t.Cleanup(rep.srv.Close)
		t.Cleanup(func() { _ = rep.close() })
		f.replicas = append(f.replicas, rep)
	}
	return f
}

// close closes the replica's ledger once (its final report).
func (r *replica) close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return r.ledger.Close(ctx)
}

// Close closes every replica's ledger (final reports), after the load.
func (f *fleet) Close() {
	f.t.Helper()
	for _, r := range f.replicas {
		if err := r.close(); err != nil {
			f.t.Errorf("closing replica %s: %v", r.id, err)
		}
	}
}

// SyncAll syncs every replica in turn, twice, so that a close one made
// reaches the others through the store.
func (f *fleet) SyncAll() {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 2 {
		for _, r := range f.replicas {
			if err := r.ledger.Sync(ctx); err != nil {
				f.t.Errorf("Sync of %s: %v", r.id, err)
			}
		}
	}
}

// storePeriod reads a tenant's period n from the store (0: the open one).
func (f *fleet) storePeriod(tenant string, n uint64) store.Period {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sp, err := f.store.LoadPeriod(ctx, tenant, n)
	if err != nil {
		f.t.Fatalf("LoadPeriod(%s, %d): %v", tenant, n, err)
	}
	return sp
}

// granted is what requests were granted, by the load generator's count:
// runs started (evaluations), operations, calls and bytes charged.
type granted struct {
	Evaluations, Operations, Calls, TotalMemory int64
}

func (g granted) add(h granted) granted {
	return granted{g.Evaluations + h.Evaluations, g.Operations + h.Operations, g.Calls + h.Calls, g.TotalMemory + h.TotalMemory}
}

func (g granted) String() string {
	return fmt.Sprintf("evals=%d ops=%d calls=%d mem=%d", g.Evaluations, g.Operations, g.Calls, g.TotalMemory)
}

// totalsOf reads the deterministic part of t (CPU time is compared apart).
func totalsOf(t store.Totals) granted {
	return granted{t.Evaluations, t.Operations, t.Calls, t.TotalMemory}
}

// response is what a client learns of one request.
type response struct {
	status  int
	started bool    // the handler ran: one evaluation was charged
	granted granted // what the handler was granted (see toolHandler)
	body    reslimithttp.ErrorBody
	retry   string // the Retry-After header
	raw     string
}

// do sends one request for tenant to replica r, asking for the tools in
// plan (see toolHandler).
func (f *fleet) do(ctx context.Context, r *replica, tenant string, plan string) (response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.srv.URL+"/tools?plan="+plan, nil)
	if err != nil {
		return response{}, err
	}
	req.Header.Set("X-Tenant", tenant)
	resp, err := f.client.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, err
	}
	out := response{status: resp.StatusCode, raw: strings.TrimSpace(string(b)), retry: resp.Header.Get("Retry-After")}
	out.started = resp.Header.Get(hdrStarted) == "1"
	num := func(h string) int64 {
		v, _ := strconv.ParseInt(resp.Header.Get(h), 10, 64)
		return v
	}
	if out.started {
		out.granted = granted{Evaluations: 1, Operations: num(hdrOps), Calls: num(hdrCalls), TotalMemory: num(hdrMem)}
	}
	if resp.StatusCode != http.StatusOK {
		if err := json.Unmarshal(b, &out.body); err != nil {
			return out, fmt.Errorf("status %d with a body that is not an ErrorBody: %q", resp.StatusCode, out.raw)
		}
	}
	return out, nil
}

// checkRefusal returns what is wrong with the status of a refused
// response, by the README and reslimithttp.StatusCode: 401 for an unknown
// tenant; 429 for a limit of the tenant (scope "tenant"), with Retry-After
// for a rate (from retry_after) and for a cumulative quota (the middleware
// knows when periods reset); 413 for a per-request file size; 503 for
// another per-request limit.
func checkRefusal(resp response, tenant string, known, resetKnown bool) string {
	b := resp.body
	var want int
	switch {
	case !known:
		want = http.StatusUnauthorized
		if b.Error != "unknown_tenant" {
			return fmt.Sprintf("unknown tenant answered %d %q, want 401 unknown_tenant", resp.status, resp.raw)
		}
		if b.Billed {
			return fmt.Sprintf("an unknown tenant's refusal says billed: %s", resp.raw)
		}
	case b.Error != "limit_exceeded":
		return fmt.Sprintf("refused with %d %q: not a limit", resp.status, resp.raw)
	case b.Scope == "tenant":
		want = http.StatusTooManyRequests
		if b.Tenant != tenant {
			return fmt.Sprintf("429 names tenant %q, want %q: %s", b.Tenant, tenant, resp.raw)
		}
		switch b.Resource {
		case reslimit.EvaluationRate.String(), reslimit.OperationRate.String():
			if b.RetryAfter <= 0 {
				// RetryAfter 0: no wait can cure it (more than the burst asked
				// for), so no Retry-After either.
				if resp.retry != "" {
					return fmt.Sprintf("%s refusal that no wait cures, with Retry-After %q: %s", b.Resource, resp.retry, resp.raw)
				}
				break
			}
			wantHdr := strconv.FormatInt(max(int64(ceilSeconds(b.RetryAfter)), 1), 10)
			if resp.retry != wantHdr {
				return fmt.Sprintf("%s refusal with Retry-After %q, want %q (retry_after %v)", b.Resource, resp.retry, wantHdr, b.RetryAfter)
			}
		case reslimit.Operations.String(), reslimit.Calls.String(), reslimit.Evaluations.String(),
			reslimit.TotalMemory.String(), reslimit.CPUTime.String():
			if resetKnown && resp.retry == "" {
				return fmt.Sprintf("cumulative %s refusal without Retry-After (WithResetTime is set): %s", b.Resource, resp.raw)
			}
		}
	case b.Scope == "request":
		// (413 is only for a request body; e2e sets no MaxFileSize, and a
		// run's own file_size is a stop like its other limits.) The run
		// had started: it is billed.
		if !b.Billed {
			return fmt.Sprintf("a run's own stop says not billed: %s", resp.raw)
		}
		want = http.StatusServiceUnavailable
	default:
		return fmt.Sprintf("refused with %d and scope %q: %s", resp.status, b.Scope, resp.raw)
	}
	if resp.status != want {
		return fmt.Sprintf("status %d, want %d for %s", resp.status, want, resp.raw)
	}
	return ""
}

func ceilSeconds(s float64) float64 {
	c := float64(int64(s))
	if c < s {
		c++
	}
	return c
}

// periodKey names one tenant's period.
type periodKey struct {
	tenant string
	n      uint64
}

// sumLines sums every replica's lines per tenant and period, and reports
// lines that appear twice for one replica, tenant and period.
func (f *fleet) sumLines(t *testing.T) map[periodKey]store.Totals {
	t.Helper()
	sum := map[periodKey]store.Totals{}
	for _, r := range f.replicas {
		seen := map[periodKey]bool{}
		for _, p := range r.Lines() {
			k := periodKey{p.Tenant, p.Number}
			if seen[k] {
				t.Errorf("replica %s: two lines for tenant %s period %d", r.id, p.Tenant, p.Number)
			}
			seen[k] = true
			sum[k] = sum[k].Add(p.Totals)
		}
	}
	return sum
}

// sortedTenants returns the keys of plans, sorted.
func sortedTenants(plans map[string]reslimit.AccountLimits) []string {
	out := make([]string, 0, len(plans))
	for t := range plans {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}
