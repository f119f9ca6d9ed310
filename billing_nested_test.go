package reslimit

import (
	"context"
	"sync"
	"testing"

	"github.com/reslimit/reslimit/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A store-backed tenant whose runs call nested tools (Limit inside a run,
// as a tool inside a request of reslimithttp.Middleware) is billed what
// the tools used, exactly, although the ledger reports while the nested
// runs are live and hold room drawn ahead from their parents (issue 19.1:
// the room drawn ahead was reported as used, and never taken back).
func TestFleetNestedRunsBilledExactly(t *testing.T) {
	ctx := context.Background()
	shared := store.NewMemory()
	l := newFleetLedger(t, shared, "r1", AccountLimits{MaxTotalOperations: 1_000_000, MaxCalls: 1_000_000})
	acct := l.Account("acme")
	tool := Limit(func(ctx context.Context, sync func()) (struct{}, error) {
		tr := FromContext(ctx)
		for range 35 {
			if err := tr.TrackOperation(); err != nil {
				return struct{}{}, err
			}
		}
		for range 5 {
			if err := tr.TrackCall(); err != nil {
				return struct{}{}, err
			}
		}
		sync() // the ledger reports while this run is live
		return struct{}{}, nil
	}, Limits{})
	const requests = 40
	for k := range requests {
		_, err := Run(ContextWithAccount(ctx, acct), Limits{}, func(ctx context.Context) error {
			tr := FromContext(ctx)
			require.NoError(t, tr.TrackOperation())
			_, err := tool(ctx, func() { require.NoError(t, l.Sync(ctx)) })
			if k%2 == 0 {
				require.NoError(t, l.Sync(ctx)) // after the child, before the parent ends
			}
			return err
		})
		require.NoError(t, err)
	}
	require.NoError(t, l.Sync(ctx))
	got, err := shared.Load(ctx, "acme")
	require.NoError(t, err)
	assert.Equal(t, int64(requests*36), got.Operations, "operations billed by the store")
	assert.Equal(t, int64(requests*5), got.Calls, "calls billed by the store")
	st := acct.Stats()
	assert.Equal(t, int64(requests*36), st.Operations)
	assert.Equal(t, int64(requests*5), st.Calls)
}

// Concurrent requests with nested tools on two replicas, syncing all the
// while: the store's totals are exactly what the tools used.
func TestFleetNestedRunsBilledExactlyUnderContention(t *testing.T) {
	ctx := context.Background()
	shared := store.NewMemory()
	lim := AccountLimits{MaxTotalOperations: 10_000_000}
	replicas := []*Ledger{newFleetLedger(t, shared, "r1", lim), newFleetLedger(t, shared, "r2", lim)}
	type job struct {
		ops  int
		sync func() error // called while the tool's run is live, or nil
	}
	tool := Limit(func(ctx context.Context, j job) (struct{}, error) {
		tr := FromContext(ctx)
		for range j.ops {
			if err := tr.TrackOperation(); err != nil {
				return struct{}{}, err
			}
		}
		if j.sync != nil {
			if err := j.sync(); err != nil {
				return struct{}{}, err
			}
		}
		return struct{}{}, tr.TrackCall()
	}, Limits{})
	const workers, requests = 3, 60
	var wg sync.WaitGroup
	for w := range workers {
		l := replicas[w%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range requests {
				_, err := Run(ContextWithAccount(ctx, l.Account("acme")), Limits{}, func(ctx context.Context) error {
					j := job{ops: 30}
					if k%3 == 0 {
						j.sync = func() error { return l.Sync(ctx) }
					}
					if _, err := tool(ctx, j); err != nil {
						return err
					}
					_, err := tool(ctx, job{ops: 5})
					return err
				})
				assert.NoError(t, err)
			}
		}()
	}
	wg.Wait()
	for _, l := range replicas {
		require.NoError(t, l.Sync(ctx))
	}
	got, err := shared.Load(ctx, "acme")
	require.NoError(t, err)
	assert.Equal(t, int64(workers*requests*35), got.Operations)
	assert.Equal(t, int64(workers*requests*2), got.Calls)
}
