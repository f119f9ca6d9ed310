package e2e

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/reslimit/reslimit"
)

// TestFleetWideRate is issue 24 composed: a tenant's evaluation rate
// holds for the whole fleet (two replicas behind the middleware, on one
// Redis), not per replica; every refusal is a 429 with an honest
// Retry-After; and the bill counts exactly the requests that ran.
func TestFleetWideRate(t *testing.T) {
	const perSec, burst, replicas = 50.0, 10, 2
	plans := map[string]reslimit.AccountLimits{"rated": {EvaluationsPerSecond: perSec, EvaluationBurst: burst}}
	f := newFleet(t, fleetConfig{replicas: replicas, plans: plans, request: reslimit.Limits{Timeout: 20 * time.Second}})

	var mu sync.Mutex
	var got granted
	var started, refused int
	begin := time.Now()
	const d = 2 * time.Second
	var wg sync.WaitGroup
	for _, r := range f.replicas {
		for range 2 {
			wg.Go(func() {
				for time.Since(begin) < d {
					resp, err := f.do(context.Background(), r, "rated", "host")
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					got = got.add(resp.granted)
					if resp.started {
						started++
					}
					if resp.status != http.StatusOK {
						refused++
						if msg := checkRefusal(resp, "rated", true, false); msg != "" {
							t.Error(msg)
						}
						if resp.body.Resource != reslimit.EvaluationRate.String() {
							t.Errorf("refused for %s, want evaluation_rate: %s", resp.body.Resource, resp.raw)
						}
					}
					mu.Unlock()
					time.Sleep(2 * time.Millisecond)
				}
			})
		}
	}
	wg.Wait()
	elapsed := time.Since(begin).Seconds()
	bound := burst + perSec*elapsed + replicas*burst
	t.Logf("%d requests ran, %d refused in %.2fs (fleet-wide bound %.0f; per replica it would be about %.0f)",
		started, refused, elapsed, bound, replicas*(burst+perSec*elapsed))
	if float64(started) > bound {
		t.Errorf("%d runs in %.2fs: more than the fleet-wide bound %.0f", started, elapsed, bound)
	}
	if float64(started) < 0.5*perSec*elapsed {
		t.Errorf("%d runs in %.2fs: the fleet starved (rate %v)", started, elapsed, perSec)
	}
	if refused == 0 {
		t.Error("no request was refused: the load did not reach the rate")
	}
	checkBill(t, f, map[string]granted{"rated": got})
}
