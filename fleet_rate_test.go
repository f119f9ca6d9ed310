package reslimit

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reslimit/reslimit/store"
)

// Fleet-wide rates (issue 24). These tests run replicas on one
// store.Memory in a testing/synctest bubble: the clock is fake, so a
// test of 10 seconds of traffic takes a moment and never depends on the
// machine's speed. Clients send a request every millisecond (1,000 a
// second per replica, far above the rate).

const (
	fleetRatePerSec = 100.0
	fleetRateBurst  = 100
)

// replicaStore counts one replica's calls to the shared store, and can
// be taken down.
type replicaStore struct {
	store.Store
	calls atomic.Int64
	down  *atomic.Bool
}

func (s *replicaStore) Sync(ctx context.Context, req store.SyncRequest) (store.SyncResponse, error) {
	s.calls.Add(1)
	if s.down != nil && s.down.Load() {
		return store.SyncResponse{}, errStoreDown
	}
	return s.Store.Sync(ctx, req)
}

func (s *replicaStore) Load(ctx context.Context, tenant string) (store.Totals, error) {
	if s.down != nil && s.down.Load() {
		return store.Totals{}, errStoreDown
	}
	return s.Store.Load(ctx, tenant)
}

type rateFleet struct {
	start   time.Time
	ledgers []*Ledger
	stores  []*replicaStore
	down    atomic.Bool
}

// newRateFleet makes n replicas of a ledger whose tenants have limits, on
// one Memory store (in a synctest bubble).
func newRateFleet(t *testing.T, n int, limits AccountLimits, opts ...LedgerOption) *rateFleet {
	shared := store.NewMemory()
	f := &rateFleet{start: time.Now()}
	for i := range n {
		rs := &replicaStore{Store: shared, down: &f.down}
		o := append([]LedgerOption{WithStore(rs), WithReplica(fmt.Sprintf("r%d", i))}, opts...)
		f.ledgers = append(f.ledgers, mustLedger(t, limits, o...))
		f.stores = append(f.stores, rs)
	}
	t.Cleanup(func() {
		f.down.Store(false)
		for _, l := range f.ledgers {
			assert.NoError(t, l.Close(context.Background()))
		}
	})
	return f
}

// grants records when runs began (since the fleet's start).
type grants struct {
	mu      sync.Mutex
	at      []time.Duration
	refused []*LimitError
}

func (g *grants) times() []time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := append([]time.Duration(nil), g.at...)
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// hammer sends replica i's tenant "t" a request every millisecond from
// from until until (since the fleet's start), each one run started and
// ended at once.
func (f *rateFleet) hammer(t *testing.T, g *grants, i int, from, until time.Duration) {
	t.Helper()
	acct := f.ledgers[i].Account("t")
	time.Sleep(time.Until(f.start.Add(from)))
	for time.Since(f.start) < until {
		tr, err := acct.Begin(Unlimited())
		var le *LimitError
		switch {
		case err == nil:
			g.mu.Lock()
			g.at = append(g.at, time.Since(f.start))
			g.mu.Unlock()
			tr.End()
		case errors.As(err, &le) && le.Resource == EvaluationRate:
			g.mu.Lock()
			g.refused = append(g.refused, le)
			g.mu.Unlock()
		default:
			t.Errorf("Begin: %v", err)
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// maxInWindow is the most grants in any window of length w.
func maxInWindow(at []time.Duration, w time.Duration) int {
	most, j := 0, 0
	for i := range at {
		for at[i]-at[j] > w {
			j++
		}
		most = max(most, i-j+1)
	}
	return most
}

func countBetween(at []time.Duration, from, to time.Duration) int {
	n := 0
	for _, a := range at {
		if a >= from && a < to {
			n++
		}
	}
	return n
}

// The window bound: 3 replicas hammering one tenant's fleet-wide rate get,
// in any window of length w, at most burst + rate·w + the tokens held at
// its start (at most a burst per replica), and in the long run the rate.
func TestFleetRateWindowBound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const replicas = 3
		f := newRateFleet(t, replicas, AccountLimits{EvaluationsPerSecond: fleetRatePerSec})
		var g grants
		var wg sync.WaitGroup
		for i := range replicas {
			wg.Go(func() { f.hammer(t, &g, i, 0, 10*time.Second) })
		}
		wg.Wait()
		at := g.times()
		for _, w := range []time.Duration{0, 10 * time.Millisecond, 100 * time.Millisecond, time.Second, 3 * time.Second, 10 * time.Second} {
			bound := fleetRateBurst + fleetRatePerSec*w.Seconds() + replicas*fleetRateBurst
			most := maxInWindow(at, w)
			t.Logf("window %-6v most %5d  burst+rate·w %6.0f  bound %6.0f", w, most, fleetRateBurst+fleetRatePerSec*w.Seconds(), bound)
			assert.LessOrEqual(t, float64(most), bound, "window %v", w)
		}
		// Per process, each replica would have granted burst + rate·10s.
		assert.LessOrEqual(t, len(at), fleetRateBurst+int(fleetRatePerSec*10)+replicas*fleetRateBurst/10,
			"10s of 3 replicas: the fleet's rate, not 3 times it")
		assert.GreaterOrEqual(t, len(at), int(0.9*fleetRatePerSec*10), "the fleet gets its rate")
	})
}

// One replica with all the traffic gets at least 90% of the fleet rate
// within about a sync interval, and so does another after the traffic
// moved to it.
func TestFleetRateFollowsTheTraffic(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newRateFleet(t, 2, AccountLimits{EvaluationsPerSecond: fleetRatePerSec})
		var g grants
		f.hammer(t, &g, 0, 0, 5*time.Second)
		f.hammer(t, &g, 1, 5*time.Second, 10*time.Second)
		at := g.times()
		const settle = time.Second // the default sync interval
		for _, span := range [][2]time.Duration{{settle, 5 * time.Second}, {5*time.Second + settle, 10 * time.Second}} {
			n := countBetween(at, span[0], span[1])
			want := 0.9 * fleetRatePerSec * (span[1] - span[0]).Seconds()
			t.Logf("%v..%v: %d granted (90%% of the rate: %.0f)", span[0], span[1], n, want)
			assert.GreaterOrEqual(t, float64(n), want, "%v..%v", span[0], span[1])
		}
	})
}

// RetryAfter is honest fleet-wide: a retry after it succeeds when nobody
// else competes, whichever replica it comes to.
func TestFleetRateRetryAfterHonest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newRateFleet(t, 2, AccountLimits{EvaluationsPerSecond: 10, EvaluationBurst: 5})
		for round := range 20 {
			acct := f.ledgers[round%2].Account("t")
			var le *LimitError
			for {
				tr, err := acct.Begin(Unlimited())
				if err != nil {
					require.ErrorAs(t, err, &le)
					break
				}
				tr.End()
			}
			require.Equal(t, EvaluationRate, le.Resource)
			require.Positive(t, le.RetryAfter)
			time.Sleep(le.RetryAfter)
			tr, err := acct.Begin(Unlimited())
			require.NoError(t, err, "round %d: a retry after %v", round, le.RetryAfter)
			tr.End()
		}
	})
}

// A tenant at its rate costs the store about one call per replica per
// sync interval (a batch), never one per request.
func TestFleetRateStoreCalls(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const replicas = 2
		f := newRateFleet(t, replicas, AccountLimits{EvaluationsPerSecond: fleetRatePerSec})
		var g grants
		var wg sync.WaitGroup
		for i := range replicas {
			wg.Go(func() { f.hammer(t, &g, i, 0, 10*time.Second) })
		}
		wg.Wait()
		for i, s := range f.stores {
			perSec := float64(s.calls.Load()) / 10
			t.Logf("replica %d: %.1f store calls a second for %d requests a second", i, perSec, 1000)
			assert.LessOrEqual(t, perSec, 3.0, "replica %d", i)
		}
	})
}

// With the store down, FailLocal grants each replica a tenth of the rate
// (and burst) beside its lease; FailClosed its lease only; FailOpen
// anything.
func TestFleetRateFailurePolicies(t *testing.T) {
	for _, tc := range []struct {
		policy   FailurePolicy
		min, max int // runs granted in 10s of outage, after the lease
	}{
		{FailLocal, 90, 120},
		{FailClosed, 0, fleetRateBurst},
		{FailOpen, 9000, 10000},
	} {
		t.Run(string(tc.policy), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newRateFleet(t, 1, AccountLimits{EvaluationsPerSecond: fleetRatePerSec}, WithFailurePolicy(tc.policy))
				var before, during grants
				f.hammer(t, &before, 0, 0, 2*time.Second)
				f.down.Store(true)
				f.hammer(t, &during, 0, 2*time.Second, 12*time.Second)
				n := len(during.times())
				t.Logf("%v: %d runs in 10s of outage", tc.policy, n)
				assert.GreaterOrEqual(t, n, tc.min)
				assert.LessOrEqual(t, n, tc.max+fleetRateBurst)
			})
		})
	}
}

// WithPerProcessRates keeps the rates per process: each replica grants
// the whole rate.
func TestFleetRatePerProcess(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newRateFleet(t, 2, AccountLimits{EvaluationsPerSecond: fleetRatePerSec}, WithPerProcessRates())
		var g grants
		var wg sync.WaitGroup
		for i := range 2 {
			wg.Go(func() { f.hammer(t, &g, i, 0, 5*time.Second) })
		}
		wg.Wait()
		n := len(g.times())
		assert.GreaterOrEqual(t, n, 2*int(fleetRatePerSec*5), "each replica its own rate")
		for _, s := range f.stores {
			assert.LessOrEqual(t, s.calls.Load(), int64(20), "no store call for the rates")
		}
	})
}

// A replica killed without Close strands at most its lease: the others
// get the rate once the bucket refilled.
func TestFleetRateKilledReplica(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newRateFleet(t, 1, AccountLimits{EvaluationsPerSecond: fleetRatePerSec})
		// The killed replica took a whole burst and never came back.
		resp, err := f.stores[0].Store.Sync(context.Background(), store.SyncRequest{Replica: "killed", LeaseTTL: time.Second,
			Tenants: []store.TenantSync{{Tenant: "t", Seq: 1, EvaluationRate: store.Rate{PerSecond: fleetRatePerSec, Burst: fleetRateBurst, Want: fleetRateBurst}}}})
		require.NoError(t, err)
		require.Equal(t, int64(fleetRateBurst), resp.Tenants[0].EvaluationRate.Granted)
		var g grants
		f.hammer(t, &g, 0, 0, 5*time.Second)
		n := len(g.times())
		assert.LessOrEqual(t, n, int(fleetRatePerSec*5), "the stranded lease is never granted again")
		assert.GreaterOrEqual(t, n, int(0.9*fleetRatePerSec*4), "the rate, after the bucket refilled")
	})
}

// The operation rate holds fleet-wide too: 2 replicas counting operations
// as fast as they may get the rate between them.
func TestFleetOperationRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const perSec, burst = 10_000.0, 10_000
		f := newRateFleet(t, 2, AccountLimits{OperationsPerSecond: perSec})
		var counted atomic.Int64
		var wg sync.WaitGroup
		for i := range 2 {
			wg.Go(func() {
				acct := f.ledgers[i].Account("t")
				for time.Since(f.start) < 5*time.Second {
					tr, err := acct.Begin(Unlimited())
					require.NoError(t, err)
					for range 100 {
						if err := tr.TrackOperation(); err != nil {
							require.ErrorIs(t, err, ErrLimitExceeded)
							break
						}
					}
					counted.Add(tr.Usage().Operations)
					tr.End()
					time.Sleep(time.Millisecond)
				}
			})
		}
		wg.Wait()
		n := counted.Load()
		t.Logf("%d operations in 5s on 2 replicas at %v a second fleet-wide", n, perSec)
		assert.LessOrEqual(t, n, int64(burst+perSec*5+2*burst))
		assert.GreaterOrEqual(t, n, int64(0.9*perSec*5))
	})
}

// Close gives a replica's lease back: another replica gets those tokens.
func TestFleetRateCloseGivesBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		shared := store.NewMemory()
		limits := AccountLimits{EvaluationsPerSecond: 1e-9, EvaluationBurst: 10} // no refill to speak of
		a := mustLedger(t, limits, WithStore(shared), WithReplica("a"))
		tr, err := a.Account("t").Begin(Unlimited())
		require.NoError(t, err)
		tr.End()
		require.NoError(t, a.Close(context.Background()))
		b := mustLedger(t, limits, WithStore(shared), WithReplica("b"))
		defer func() { require.NoError(t, b.Close(context.Background())) }()
		n := 0
		for ; n < 20; n++ {
			tr, err := b.Account("t").Begin(Unlimited())
			if err != nil {
				break
			}
			tr.End()
		}
		assert.Equal(t, 9, n, "the burst less the one run a made: a's lease came back")
	})
}
