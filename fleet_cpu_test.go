package reslimit

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/reslimit/reslimit/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A tenant's MaxCPUTime shared by two replicas on one store holds
// fleet-wide (issue 19.4): each replica's runs use CPU time under a lease
// of the quota and stop when it runs out, so the fleet passes the quota by
// at most about minCPUSample per thread running, as one process does (plus
// how late timers fire). Without leases each replica saw only the other's
// reported usage and the fleet passed the quota by ~50%.
func TestFleetCPUQuotaHoldsAcrossReplicas(t *testing.T) {
	const quota = 400 * time.Millisecond
	shared := store.NewMemory()
	lim := AccountLimits{MaxCPUTime: quota}
	replicas := []*Ledger{newFleetLedger(t, shared, "r1", lim), newFleetLedger(t, shared, "r2", lim)}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var refusals []error
	var stops []int64 // the fleet's CPU time when a run was stopped for it
	for _, l := range replicas {
		wg.Go(func() {
			for range 200 { // bounded: the quota stops it well before
				ran := false
				_, err := Run(ContextWithAccount(context.Background(), l.Account("acme")), Limits{}, func(ctx context.Context) error {
					ran = true
					for ctx.Err() == nil {
						burnCPU(time.Millisecond)
					}
					return nil
				})
				var le *LimitError
				if errors.As(err, &le) && le.Resource == CPUTime && ran {
					mu.Lock()
					stops = append(stops, le.Used)
					mu.Unlock()
				}
				if errors.As(err, &le) && le.Resource == CPUTime && !ran {
					mu.Lock()
					refusals = append(refusals, err)
					mu.Unlock()
					return // the fleet's quota is used up
				}
			}
		})
	}
	wg.Wait()
	require.Len(t, refusals, 2, "both replicas end refused for CPU time")
	for _, u := range stops {
		// A run is stopped when its replica's lease runs out, which
		// happens only near the quota: the leases shrink as it nears.
		assert.Greater(t, time.Duration(u), quota*3/4, "a run was stopped for CPU time far from the quota")
	}
	ctx := context.Background()
	for _, l := range replicas {
		require.NoError(t, l.Sync(ctx))
	}
	got, err := shared.Load(ctx, "acme")
	require.NoError(t, err)
	// One thread per replica: about minCPUSample each, plus timers' lateness.
	bound := quota + 2*minCPUSample + 40*time.Millisecond
	t.Logf("fleet CPU time %v of a %v quota (bound %v)", got.CPUTime, quota, bound)
	assert.LessOrEqual(t, got.CPUTime, bound)
	assert.GreaterOrEqual(t, got.CPUTime, quota*3/4, "the quota is used, not refused early")
}

// A run that waits for a CPU or evaluation lease (a.mu released) does so
// before MaxConcurrent is checked, so the check and the run's start stay
// one step: under a slow store, concurrent Begins never pass the limit.
func TestFleetLeaseWaitKeepsMaxConcurrentExact(t *testing.T) {
	slow := newCountingStore()
	slow.delay = 5 * time.Millisecond
	l := newFleetLedger(t, slow, "r1", AccountLimits{MaxConcurrent: 1, MaxCPUTime: time.Hour},
		WithLeaseWait(time.Second))
	acct := l.Account("acme")
	var live, most atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 20 {
				tr, err := acct.Begin(Limits{})
				if err != nil {
					continue // refused: MaxConcurrent
				}
				live.Add(1)
				for range 10 {
					// The account's own count of runs in progress, while
					// this one is: never more than the limit.
					st := acct.Stats()
					n := st.Running
					for {
						m := most.Load()
						if n <= m || most.CompareAndSwap(m, n) {
							break
						}
					}
					runtime.Gosched()
				}
				live.Add(-1)
				tr.End()
			}
		})
	}
	wg.Wait()
	assert.Equal(t, int64(1), most.Load(), "runs in progress at once")
}
