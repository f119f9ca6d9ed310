package redisstore_test

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/store"
)

// Fleet-wide rates on a real Redis (and Cluster): replicas hammer one
// tenant's evaluation rate, on the real clock. The exact bounds and the
// share a single replica gets are tested on a fake clock in the core
// (fleet_rate_test.go); here the bound that must hold whatever the
// timing: in any window of length w the fleet grants at most burst +
// rate·w + a burst per replica (the leases held at its start).

const (
	redisRatePerSec = 200.0
	redisRateBurst  = 40
)

// hammerRate sends each ledger's tenant "t" a run every half millisecond
// for d, and returns when the runs began, since start, sorted.
func hammerRate(t *testing.T, ledgers []*reslimit.Ledger, d time.Duration) []time.Duration {
	t.Helper()
	var mu sync.Mutex
	var at []time.Duration
	start := time.Now()
	var wg sync.WaitGroup
	for _, l := range ledgers {
		wg.Go(func() {
			acct := l.Account("t")
			for time.Since(start) < d {
				tr, err := acct.Begin(reslimit.Limits{})
				var le *reslimit.LimitError
				switch {
				case err == nil:
					mu.Lock()
					at = append(at, time.Since(start))
					mu.Unlock()
					tr.End()
				case errors.As(err, &le) && le.Resource == reslimit.EvaluationRate:
				default:
					t.Errorf("Begin: %v", err)
					return
				}
				time.Sleep(500 * time.Microsecond)
			}
		})
	}
	wg.Wait()
	sort.Slice(at, func(i, j int) bool { return at[i] < at[j] })
	return at
}

// checkRateWindows asserts the window bound for n replicas.
func checkRateWindows(t *testing.T, at []time.Duration, n int, d time.Duration) {
	t.Helper()
	for _, w := range []time.Duration{0, 50 * time.Millisecond, 250 * time.Millisecond, time.Second, d} {
		most, j := 0, 0
		for i := range at {
			for at[i]-at[j] > w {
				j++
			}
			most = max(most, i-j+1)
		}
		bound := redisRateBurst + redisRatePerSec*w.Seconds() + float64(n*redisRateBurst)
		t.Logf("window %-6v most %4d (burst+rate·w %4.0f, bound %4.0f)", w, most, redisRateBurst+redisRatePerSec*w.Seconds(), bound)
		assert.LessOrEqual(t, float64(most), bound, "window %v", w)
	}
	// The fleet is not starved either (loosely: the machine may be slow).
	assert.GreaterOrEqual(t, float64(len(at)), 0.5*redisRatePerSec*d.Seconds(), "the fleet gets most of its rate")
}

func rateReplicas(t *testing.T, st store.Store, n int) []*reslimit.Ledger {
	var ls []*reslimit.Ledger
	for i := range n {
		ls = append(ls, replica(t, st, fmt.Sprintf("r%d", i),
			reslimit.AccountLimits{EvaluationsPerSecond: redisRatePerSec, EvaluationBurst: redisRateBurst}))
	}
	return ls
}

func TestFleetRateOnRedis(t *testing.T) {
	st, _ := newStore(t, client(t))
	const n, d = 3, 2 * time.Second
	at := hammerRate(t, rateReplicas(t, st, n), d)
	checkRateWindows(t, at, n, d)
}

func TestFleetRateOnCluster(t *testing.T) {
	st := newClusterStore(t, clusterClient(t))
	const n, d = 3, 2 * time.Second
	at := hammerRate(t, rateReplicas(t, st, n), d)
	checkRateWindows(t, at, n, d)
}

// A Redis stopped and restarted without its data: the outage is served
// by FailLocal's share (a tenth of the rate per replica), and the
// bucket, lost, starts full again: at most one burst more.
func TestFleetRateOnRedisRestart(t *testing.T) {
	p, st := restartableRedis(t)
	ls := rateReplicas(t, st, 2)

	const phase = time.Second
	up := hammerRate(t, ls, phase)
	p.stop()
	down := hammerRate(t, ls, phase)
	p.start(t)
	back := hammerRate(t, ls, 2*phase)

	perPhase := redisRateBurst + redisRatePerSec*phase.Seconds()
	assert.LessOrEqual(t, float64(len(up)), perPhase+2*redisRateBurst)
	// The outage: the leases held, then a tenth of the rate and burst each.
	assert.LessOrEqual(t, float64(len(down)), 2*(redisRateBurst+redisRatePerSec/10*phase.Seconds()+redisRateBurst/10)+1)
	// Back: the lost bucket starts full once more.
	assert.LessOrEqual(t, float64(len(back)), redisRateBurst+redisRatePerSec*2*phase.Seconds()+3*redisRateBurst)
	assert.Positive(t, len(back), "served again once Redis is back")
	t.Logf("granted: %d up, %d down, %d back", len(up), len(down), len(back))
}
