package redisstore_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/contrib/redisstore"
	"github.com/reslimit/reslimit/store"
)

// Ledger-level tests: several replicas (ledgers) share one real Redis.

func replica(t *testing.T, st store.Store, id string, limits reslimit.AccountLimits, opts ...reslimit.LedgerOption) *reslimit.Ledger {
	t.Helper()
	opts = append([]reslimit.LedgerOption{reslimit.WithStore(st), reslimit.WithReplica(id),
		reslimit.WithSyncInterval(fleetInterval)}, opts...)
	l := mustLedger(t, limits, opts...)
	err := l.Account("probe-options").Err()
	require.NoError(t, err)
	l.Remove("probe-options")
	t.Cleanup(func() { _ = l.Close(context.Background()) })
	return l
}

// hammer charges operations on tenant from several goroutines until a
// fresh run gets nothing, and returns how many were granted.
func hammer(l *reslimit.Ledger, tenant string, workers int) int64 {
	var granted atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A refusal near the limit says the fleet is short now: other
			// replicas may hold leases they give back once idle (within a
			// sync interval). A worker stops only when every try for a
			// while (a few intervals, syncing between) is refused.
			var refusedSince time.Time
			for {
				n := run(l, tenant)
				granted.Add(int64(n))
				if n > 0 {
					refusedSince = time.Time{}
					continue
				}
				if refusedSince.IsZero() {
					refusedSince = time.Now()
				} else if time.Since(refusedSince) > 5*fleetInterval {
					return
				}
				_ = l.Sync(context.Background())
				time.Sleep(fleetInterval / 5) // the time the other replicas need to give back idle leases
			}
		}()
	}
	wg.Wait()
	return granted.Load()
}

// run charges operations on a fresh run of tenant until it is refused, and
// returns how many were granted.
func run(l *reslimit.Ledger, tenant string) int {
	tr, err := l.Account(tenant).Begin(reslimit.Limits{MaxOperations: 900})
	if err != nil {
		return 0
	}
	n := 0
	for tr.TrackOperation() == nil {
		n++
	}
	tr.End()
	return n
}

// fleetInterval is the sync interval of the replicas these tests make.
const fleetInterval = 50 * time.Millisecond

func TestFleetOnRedisNeverPassesTheLimit(t *testing.T) {
	rdb := client(t)
	st, _ := newStore(t, rdb)
	const limit = 40_000
	limits := reslimit.AccountLimits{MaxTotalOperations: limit}
	var ledgers []*reslimit.Ledger
	for i := 0; i < 3; i++ {
		ledgers = append(ledgers, replica(t, st, fmt.Sprintf("r%d", i), limits))
	}
	var total atomic.Int64
	var wg sync.WaitGroup
	for _, l := range ledgers {
		wg.Add(1)
		go func(l *reslimit.Ledger) {
			defer wg.Done()
			total.Add(hammer(l, "acme", 4))
		}(l)
	}
	wg.Wait()
	assert.LessOrEqual(t, total.Load(), int64(limit), "the fleet grants at most the limit")
	assert.GreaterOrEqual(t, total.Load(), int64(limit*95/100), "and at least 95% of it before refusing")
	for _, l := range ledgers {
		require.NoError(t, l.Close(context.Background()))
	}
	committed, err := st.Load(context.Background(), "acme")
	require.NoError(t, err)
	assert.Equal(t, total.Load(), committed.Operations, "committed equals the sum of what the replicas granted")
}

// A replica that stopped without Close keeps its unused lease counted
// against the limit after the lease expires (it may have used it): the
// fleet never passes the limit, and what is stranded is that lease.
func TestFleetOnRedisKeepsAStoppedReplicasLeaseCounted(t *testing.T) {
	rdb := client(t)
	st, _ := newStore(t, rdb)
	const limit = 20_000
	// A replica takes a lease and stops without Close: it never syncs again.
	resp, err := st.Sync(context.Background(), store.SyncRequest{Replica: "dead", LeaseTTL: 100 * time.Millisecond,
		Tenants: []store.TenantSync{{Tenant: "acme", Seq: 1, Used: store.Totals{Operations: 1000}, Want: store.Totals{Operations: 5000},
			Limit: store.Totals{Operations: limit}}}})
	require.NoError(t, err)
	require.Equal(t, int64(6000), resp.Tenants[0].Allowance.Operations)
	time.Sleep(300 * time.Millisecond) // its lease expires, by Redis's clock

	live := replica(t, st, "live", reslimit.AccountLimits{MaxTotalOperations: limit}, reslimit.WithLeaseWait(20*time.Millisecond))
	got := hammer(live, "acme", 2)
	assert.Equal(t, int64(limit-6000), got, "the dead replica's lease still counts; the rest is granted")
	require.NoError(t, live.Close(context.Background()))
	c, err := st.Load(context.Background(), "acme")
	require.NoError(t, err)
	assert.Equal(t, 1000+got, c.Operations, "the bill shows what was reported")
}

// redisProcess is a redis-server of the test's own, with an append-only file
// so that committed totals survive a stop and a start.
type redisProcess struct {
	addr, dir     string
	noPersistence bool // a restart loses everything
	cmd           *exec.Cmd
}

func (p *redisProcess) start(t *testing.T) {
	t.Helper()
	_, port, _ := net.SplitHostPort(p.addr)
	aof := "yes"
	if p.noPersistence {
		aof = "no"
	}
	p.cmd = exec.Command("redis-server", "--bind", "127.0.0.1", "--port", port, "--dir", p.dir,
		"--save", "", "--appendonly", aof, "--appendfsync", "always", "--daemonize", "no")
	require.NoError(t, p.cmd.Start())
	require.Eventually(t, func() bool {
		c, err := net.Dial("tcp", p.addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, 10*time.Second, 20*time.Millisecond, "redis-server did not start")
}

func (p *redisProcess) stop() {
	if p.cmd != nil && p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(os.Interrupt)
		_ = p.cmd.Wait()
		p.cmd = nil
	}
}

// restartableRedis starts a redis-server of the test's own (no data
// kept across a restart) and returns it and a store on it, with short
// timeouts.
func restartableRedis(t *testing.T) (*redisProcess, *redisstore.Store) {
	t.Helper()
	client(t) // skips without RESLIMIT_REDIS_ADDR
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("%s is set but redis-server is not on PATH: %v", addrEnv, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &redisProcess{addr: ln.Addr().String(), dir: t.TempDir()}
	ln.Close()
	p.start(t)
	t.Cleanup(p.stop)
	rdb := redis.NewClient(&redis.Options{Addr: p.addr, ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	st, err := redisstore.New(rdb, redisstore.WithTimeout(300*time.Millisecond))
	require.NoError(t, err)
	return p, st
}

func TestFleetOnRedisSurvivesARedisRestart(t *testing.T) {
	p, st := restartableRedis(t)
	const limit = 1_000_000
	l := replica(t, st, "r1", reslimit.AccountLimits{MaxTotalOperations: limit}, reslimit.WithLeaseWait(time.Second))
	acct := l.Account("acme")

	var granted, runs int64
	work := func(ops int) {
		tr, err := acct.Begin(reslimit.Limits{})
		if err != nil {
			return
		}
		runs++
		for i := 0; i < ops && tr.TrackOperation() == nil; i++ {
			granted++
		}
		tr.End()
	}
	for i := 0; i < 20; i++ {
		work(500)
	}
	require.NoError(t, l.Sync(context.Background()))
	before := granted

	p.stop() // Redis goes away mid-run
	for i := 0; i < 20; i++ {
		work(500)
	}
	assert.Greater(t, granted, before, "FailLocal keeps serving")
	assert.LessOrEqual(t, granted, int64(limit), "within bounds")
	require.Eventually(t, func() bool { return acct.Stats().Fleet.Fallback }, 5*time.Second, 10*time.Millisecond)

	p.start(t) // and comes back with what it had committed
	require.Eventually(t, func() bool { return l.Sync(context.Background()) == nil }, 10*time.Second, 50*time.Millisecond)
	require.NoError(t, l.Close(context.Background()))
	committed, err := st.Load(context.Background(), "acme")
	require.NoError(t, err)
	assert.Equal(t, granted, committed.Operations, "nothing lost, nothing double-counted")
	assert.Equal(t, runs, committed.Evaluations)
}

// mustLedger returns reslimit.NewLedger(defaults, opts...), failing tb on
// an error.
func mustLedger(tb testing.TB, defaults reslimit.AccountLimits, opts ...reslimit.LedgerOption) *reslimit.Ledger {
	tb.Helper()
	l, err := reslimit.NewLedger(defaults, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	return l
}
