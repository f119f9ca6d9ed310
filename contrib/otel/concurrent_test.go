package reslimitotel_test

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reslimit/reslimit"
)

// Collections while runs go on, from two goroutines at once: each sees the
// evaluations counter and the operations usage never go down, and the
// collection after the runs sees their exact totals.
func TestCollectWhileBusy(t *testing.T) {
	const workers, runs, ops = 4, 200, 3
	ledger := mustLedger(t, reslimit.AccountLimits{})
	h := register(t, ledger)
	var wg sync.WaitGroup
	for w := range workers {
		a := ledger.Account([]string{"acme", "beta"}[w%2])
		wg.Go(func() {
			for range runs {
				tr, err := a.Begin(reslimit.Limits{})
				if !assert.NoError(t, err) {
					return
				}
				assert.NoError(t, tr.TrackOperations(ops))
				tr.End()
			}
		})
	}
	done := make(chan struct{})
	var collectors sync.WaitGroup
	for range 2 {
		collectors.Go(func() {
			var lastEvals, lastOps float64
			for {
				p := h.points(t)
				evals := p["reslimit.tenant.evaluations{tenant=acme}"]
				used := p["reslimit.tenant.usage.operations{resource=operations,tenant=acme}"]
				assert.GreaterOrEqual(t, evals, lastEvals)
				assert.GreaterOrEqual(t, used, lastOps)
				lastEvals, lastOps = evals, used
				select {
				case <-done:
					return
				default:
				}
			}
		})
	}
	wg.Wait()
	close(done)
	collectors.Wait()
	got := h.points(t)
	for _, tenant := range []string{"acme", "beta"} {
		require.Equal(t, float64(workers/2*runs), got["reslimit.tenant.evaluations{tenant="+tenant+"}"], tenant)
		require.Equal(t, float64(workers/2*runs*ops), got["reslimit.tenant.usage.operations{resource=operations,tenant="+tenant+"}"], tenant)
		require.Equal(t, 0.0, got["reslimit.tenant.running{tenant="+tenant+"}"], tenant)
	}
}
