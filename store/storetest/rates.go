package storetest

import (
	"context"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reslimit/reslimit/store"
)

// rateSync syncs one tenant's rate requests for replica at seq.
func rateSync(t *testing.T, st store.Store, replica, tenant string, seq uint64, ev, op store.Rate) store.TenantState {
	t.Helper()
	return one(t, st, replica, long, false, store.TenantSync{Tenant: tenant, Seq: seq, EvaluationRate: ev, OperationRate: op})
}

// slow is a rate that refills less than 0.01 token during a test.
const slow = 1e-5

// testRateTakeAndReturn: a bucket starts full, a grant is at most what was
// asked and what the bucket holds (whole tokens), a return goes back in
// (never past the burst), and each rate of a tenant is its own bucket.
func (s *suite) testRateTakeAndReturn(t *testing.T) {
	st := s.store(t)
	ev := store.Rate{PerSecond: slow, Burst: 10, Want: 4}
	got := rateSync(t, st, "r1", "t", 1, ev, store.Rate{})
	assert.Equal(t, int64(4), got.EvaluationRate.Granted, "a new bucket is full")
	assert.InDelta(t, 6, got.EvaluationRate.Tokens, 0.01)
	assert.Zero(t, got.OperationRate, "no operation rate asked for")

	ev.Want = 20
	op := store.Rate{PerSecond: slow, Burst: 3, Want: 2}
	got = rateSync(t, st, "r2", "t", 1, ev, op)
	assert.Equal(t, int64(6), got.EvaluationRate.Granted, "the rest of the bucket, in whole tokens")
	assert.Less(t, got.EvaluationRate.Tokens, 1.0)
	assert.Equal(t, int64(2), got.OperationRate.Granted, "the operation rate's bucket is another")

	ev.Want, ev.Return = 0, 3
	got = rateSync(t, st, "r1", "t", 2, ev, store.Rate{})
	assert.Zero(t, got.EvaluationRate.Granted)
	assert.InDelta(t, 3, got.EvaluationRate.Tokens, 0.01, "a return goes back in the bucket")

	ev.Return = 100
	got = rateSync(t, st, "r1", "t", 3, ev, store.Rate{})
	assert.InDelta(t, 10, got.EvaluationRate.Tokens, 1e-9, "never past the burst")

	ev.Return, ev.Want = 0, 1
	got = rateSync(t, st, "r1", "t", 3, ev, store.Rate{})
	assert.Zero(t, got.EvaluationRate.Granted, "a retry of an applied report grants nothing")
	assert.InDelta(t, 10, got.EvaluationRate.Tokens, 0.01, "and takes nothing")
}

// testRateRefills: the bucket refills at PerSecond by the store's clock.
func (s *suite) testRateRefills(t *testing.T) {
	st := s.store(t)
	ev := store.Rate{PerSecond: 100, Burst: 10, Want: 10}
	got := rateSync(t, st, "r1", "t", 1, ev, store.Rate{})
	require.Equal(t, int64(10), got.EvaluationRate.Granted)
	const wait = 60 * time.Millisecond // 6 tokens
	if s.cfg.Advance != nil {
		s.advance(t, wait)
	} else {
		time.Sleep(wait)
	}
	got = rateSync(t, st, "r1", "t", 2, ev, store.Rate{})
	assert.GreaterOrEqual(t, got.EvaluationRate.Granted, int64(5), "refilled at 100 a second")
	assert.LessOrEqual(t, got.EvaluationRate.Granted, int64(10))
}

// testRateInvalid: bad rate requests are refused and change nothing.
func (s *suite) testRateInvalid(t *testing.T) {
	st := s.store(t)
	for _, r := range []store.Rate{
		{PerSecond: math.NaN(), Burst: 1},
		{PerSecond: math.Inf(1), Burst: 1},
		{PerSecond: -1, Burst: 1},
		{PerSecond: 1, Burst: 0},
		{PerSecond: 1, Burst: 1, Want: -1},
		{PerSecond: 1, Burst: 1, Return: -1},
	} {
		_, err := st.Sync(context.Background(), store.SyncRequest{Replica: "r", LeaseTTL: long,
			Tenants: []store.TenantSync{{Tenant: "t", Seq: 1, Used: ops(1), OperationRate: r}}})
		assert.ErrorIs(t, err, store.ErrInvalidArgument, "rate %+v", r)
	}
	assert.Zero(t, load(t, st, "t"), "a refused sync must not be applied")
	got := rateSync(t, st, "r", "t", 1, store.Rate{Want: 5}, store.Rate{})
	assert.Zero(t, got.EvaluationRate, "no rate: no grant, no bucket")
}

// testRateHammer: replicas taking tokens at once never get more than the
// bucket held.
func (s *suite) testRateHammer(t *testing.T) {
	st := s.store(t)
	const burst, replicas, rounds = 200, 6, 60
	var granted atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, replicas)
	for i := range replicas {
		wg.Go(func() {
			for k := range rounds {
				resp, err := st.Sync(context.Background(), store.SyncRequest{Replica: fmt.Sprintf("r%d", i), LeaseTTL: long,
					Tenants: []store.TenantSync{{Tenant: "h", Seq: uint64(k + 1),
						EvaluationRate: store.Rate{PerSecond: slow, Burst: burst, Want: int64(1 + k%3)}}}})
				if err != nil {
					errs <- err
					return
				}
				granted.Add(resp.Tenants[0].EvaluationRate.Granted)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	assert.Equal(t, int64(burst), granted.Load(), "every token of the burst granted once (asked for more)")
}
