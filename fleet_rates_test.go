package reslimit

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/reslimit/reslimit/store"
)

// TestFleetStoreCallRates measures what one replica costs the store: Sync
// round trips and tenant reports (one Lua script call each on Redis) per
// second, with the default 1s sync interval, for 1, 100 and 10,000
// tenants at rest, busy, and at their limit. It runs on a fake clock
// (testing/synctest), so 20 simulated seconds take a moment. It only runs
// when RESLIMIT_STORE_CALLS is set; BENCHMARKS.md has its output:
//
//	RESLIMIT_STORE_CALLS=1 go test -run TestFleetStoreCallRates -v .
func TestFleetStoreCallRates(t *testing.T) {
	if os.Getenv("RESLIMIT_STORE_CALLS") == "" {
		t.Skip("set RESLIMIT_STORE_CALLS=1 to measure the shared's call rates")
	}
	t.Logf("%-8s %-8s %14s %18s %12s", "tenants", "state", "Sync calls/s", "tenant reports/s", "Loads/s")
	for _, n := range []int{1, 100, 10_000} {
		for _, state := range []string{"at rest", "busy", "at limit"} {
			synctest.Test(t, func(t *testing.T) {
				calls, reports, loads := storeCallRate(t, n, state)
				t.Logf("%-8d %-8s %14.1f %18.1f %12.1f", n, state, calls, reports, loads)
			})
		}
	}
}

type loadCountingStore struct {
	*countingStore
	loads atomic.Int64
}

func (s *loadCountingStore) Load(ctx context.Context, tenant string) (store.Totals, error) {
	s.loads.Add(1)
	return s.countingStore.Load(ctx, tenant)
}

func storeCallRate(t *testing.T, n int, state string) (calls, reports, loads float64) {
	const limit = 1_000_000
	shared := &loadCountingStore{countingStore: newCountingStore()}
	l := mustLedger(t, AccountLimits{MaxTotalOperations: limit}, WithStore(shared), WithReplica("r1"))
	defer func() { _ = l.Close(context.Background()) }()
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("tenant-%05d", i)
	}
	charge := func(name string, ops int64) {
		tr, err := l.Account(name).Begin(Unlimited())
		if err != nil {
			return
		}
		_ = tr.TrackOperations(ops)
		tr.End()
	}
	// Every tenant is used once (at its limit: all of it), then settles.
	for _, name := range names {
		if state == "at limit" {
			charge(name, limit)
		} else {
			charge(name, 10)
		}
	}
	time.Sleep(5 * time.Second) // the fleet settles: 5 fake seconds of syncs
	synctest.Wait()
	c0, r0, l0 := shared.calls.Load(), shared.tenants.Load(), shared.loads.Load()
	const window = 20 * time.Second
	for end := time.Now().Add(window); time.Now().Before(end); {
		if state != "at rest" {
			// Each tenant's clients come 10 times a second: busy tenants
			// are charged, tenants at their limit are refused.
			for _, name := range names {
				charge(name, 10)
			}
		}
		time.Sleep(100 * time.Millisecond) // the clients' pace, on the fake clock
	}
	synctest.Wait()
	secs := window.Seconds()
	return float64(shared.calls.Load()-c0) / secs, float64(shared.tenants.Load()-r0) / secs, float64(shared.loads.Load()-l0) / secs
}
