package reslimit

import (
	"context"
	"math"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRateLimitsValidate(t *testing.T) {
	for _, l := range []AccountLimits{
		{EvaluationsPerSecond: -1}, {EvaluationsPerSecond: math.NaN()}, {OperationsPerSecond: math.Inf(1)},
		{EvaluationsPerSecond: 1, EvaluationBurst: -1}, {OperationsPerSecond: 1, OperationBurst: -1},
	} {
		require.ErrorIs(t, l.Validate(), ErrInvalidLimits, "%+v", l)
		_, err := NewAccount("a", l)
		require.ErrorIs(t, err, ErrInvalidLimits)
	}
	a := newAcct(t, AccountLimits{EvaluationsPerSecond: 2.5, OperationsPerSecond: 10, OperationBurst: 3})
	assert.Equal(t, AccountLimits{EvaluationsPerSecond: 2.5, OperationsPerSecond: 10, OperationBurst: 3}, a.Limits())
	require.ErrorIs(t, a.SetLimit(EvaluationRate, 1), ErrInvalidArgument, "rates are set with SetLimits")
	require.ErrorIs(t, a.SetLimits(AccountLimits{OperationsPerSecond: -1}), ErrInvalidLimits)
	require.NoError(t, a.SetLimits(AccountLimits{}))
	assert.Equal(t, AccountLimits{}, a.Limits())
}

func requireRate(t *testing.T, err error, r Resource, limit, used, requested int64, retry time.Duration) {
	t.Helper()
	le := requireLimit(t, err, r, limit, used, requested)
	assert.Equal(t, "acme", le.Tenant)
	assert.Equal(t, retry, le.RetryAfter, "RetryAfter")
	if retry > 0 {
		assert.Contains(t, le.Error(), ", retry after "+retry.String())
	}
}

// Runs start at most at the evaluation rate: a refusal says when a retry
// succeeds, counts no evaluation, and the retry then succeeds.
func TestEvaluationRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := newAcct(t, AccountLimits{EvaluationsPerSecond: 2})
		for range 2 { // the burst: one second's worth
			tr, err := a.Begin(Limits{})
			require.NoError(t, err)
			tr.End()
		}
		_, err := a.Begin(Limits{})
		requireRate(t, err, EvaluationRate, 2, 2, 1, 500*time.Millisecond)
		s := a.Stats()
		assert.Equal(t, int64(2), s.Evaluations, "a refused run is no evaluation")
		assert.Equal(t, int64(1), s.Refusals[EvaluationRate])

		time.Sleep(400 * time.Millisecond) // the bucket refills 0.8 token on the fake clock
		_, err = a.Begin(Limits{})
		requireRate(t, err, EvaluationRate, 2, 2, 1, 100*time.Millisecond) // 0.8 token: none whole
		time.Sleep(100 * time.Millisecond)                                 // RetryAfter, on the fake clock
		tr, err := a.Begin(Limits{})
		require.NoError(t, err, "the retry after RetryAfter succeeds")
		tr.End()

		// Through Run, the refusal is Run's error.
		_, err = Run(context.Background(), Limits{}, func(context.Context) error { return nil }, WithAccount(a))
		requireRate(t, err, EvaluationRate, 2, 2, 1, 500*time.Millisecond)

		// Raising the rate takes effect at once, with the tokens left.
		require.NoError(t, a.SetLimits(AccountLimits{EvaluationsPerSecond: 100, EvaluationBurst: 100}))
		time.Sleep(10 * time.Millisecond) // one token at the new rate, on the fake clock
		tr, err = a.Begin(Limits{})
		require.NoError(t, err)
		tr.End()
	})
}

// With a larger burst the tokens are taken in batches: the burst is
// still exact, and so is the wait after it.
func TestEvaluationRateBatches(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := newAcct(t, AccountLimits{EvaluationsPerSecond: 100, EvaluationBurst: 160})
		n := 0
		for {
			tr, err := a.Begin(Limits{})
			if err != nil {
				requireRate(t, err, EvaluationRate, 160, 160, 1, 10*time.Millisecond)
				break
			}
			tr.End()
			n++
		}
		assert.Equal(t, 160, n, "the burst, exactly")
		time.Sleep(time.Second) // a second of refill on the fake clock
		n = 0
		for {
			tr, err := a.Begin(Limits{})
			if err != nil {
				break
			}
			tr.End()
			n++
		}
		assert.Equal(t, 100, n, "a second's worth")
	})
}

// Operations are counted at most at the operation rate, exactly: a refusal
// changes nothing, and runs' unused room comes back as credit.
func TestOperationRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := newAcct(t, AccountLimits{OperationsPerSecond: 100})
		tr, err := a.Begin(Limits{})
		require.NoError(t, err)
		require.NoError(t, tr.TrackOperations(70))
		// The grant took a chunk ahead: the bucket is empty, the run has
		// 30 of room, and the refusal needs 1 more token.
		requireRate(t, tr.TrackOperations(31), OperationRate, 100, 100, 31, 10*time.Millisecond)
		require.NoError(t, tr.TrackOperations(30), "the refusal took no token")
		requireRate(t, tr.TrackOperation(), OperationRate, 100, 100, 1, 10*time.Millisecond)
		requireRate(t, tr.TrackOperations(101), OperationRate, 100, 100, 101, 0) // never: past the burst
		time.Sleep(10 * time.Millisecond)                                        // RetryAfter, on the fake clock
		require.NoError(t, tr.TrackOperation())
		assert.Equal(t, int64(0), tr.Usage().Refusals, "no per-run refusal: the account's")
		tr.End()
		assert.Equal(t, int64(3), a.Stats().Refusals[OperationRate])
		assert.Equal(t, int64(101), a.Stats().Operations)

		// Short runs that each take a chunk ahead give it back: ten runs of
		// one operation each fit in a burst of 10.
		require.NoError(t, a.SetLimits(AccountLimits{OperationsPerSecond: 10}))
		time.Sleep(time.Second) // the bucket refills, on the fake clock
		for k := range 10 {
			tr, err := a.Begin(Limits{})
			require.NoError(t, err)
			require.NoError(t, tr.TrackOperation(), "run %d", k)
			tr.End()
		}
		tr, err = a.Begin(Limits{})
		require.NoError(t, err)
		requireRate(t, tr.TrackOperation(), OperationRate, 10, 10, 1, 100*time.Millisecond)
		tr.End()

		// A live run's unused chunk is taken back for another run.
		time.Sleep(time.Second) // the bucket refills, on the fake clock
		hog, err := a.Begin(Limits{})
		require.NoError(t, err)
		require.NoError(t, hog.TrackOperation()) // takes the whole bucket as room
		other, err := a.Begin(Limits{})
		require.NoError(t, err)
		require.NoError(t, other.TrackOperations(9), "the hog's unused room is reclaimed")
		requireRate(t, hog.TrackOperation(), OperationRate, 10, 10, 1, 100*time.Millisecond)
		hog.End()
		other.End()
	})
}

// Many runs of one tenant count operations as fast as they can for a
// while: the operations counted never pass what the bucket allowed (the
// burst plus the rate times the time, plus at most one burst of credit),
// and the totals stay exact.
func TestOperationRateHammer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const perSec, burst = 1000, 100
		a := newAcct(t, AccountLimits{OperationsPerSecond: perSec, OperationBurst: burst, MaxTotalOperations: 1 << 20})
		start := time.Now()
		var mu sync.Mutex
		var counted int64
		var wg sync.WaitGroup
		for g := range 6 {
			wg.Go(func() {
				for time.Since(start) < 2*time.Second {
					tr, err := a.Begin(Limits{})
					require.NoError(t, err)
					for k := 0; k < 50+g*10; k++ {
						if err := tr.TrackOperations(int64(1 + k%3)); err == nil {
							mu.Lock()
							counted += int64(1 + k%3)
							mu.Unlock()
						} else {
							var le *LimitError
							require.ErrorAs(t, err, &le)
							require.Equal(t, OperationRate, le.Resource)
							require.Positive(t, le.RetryAfter)
							time.Sleep(le.RetryAfter) // as a client would, on the fake clock
						}
					}
					tr.End()
				}
			})
		}
		wg.Wait()
		elapsed := time.Since(start)
		allowed := int64(burst + perSec*elapsed.Seconds() + burst)
		assert.LessOrEqual(t, counted, allowed)
		assert.Greater(t, counted, int64(perSec*elapsed.Seconds()/2), "the rate is reached, not starved")
		assert.Equal(t, counted, a.Stats().Operations)
		a.mu.Lock()
		defer a.mu.Unlock()
		assert.Equal(t, a.mu.committed, a.mu.reserved, "no reservation left behind")
		t.Logf("%d operations in %v at %d/s", counted, elapsed, perSec)
	})
}

// A Monitor reports a tenant's rate refusals as LimitExceeded, with the
// bucket (burst 1, the token in use) as Limit and Used; the bucket used up
// is HighUsage first.
func TestMonitorSeesRateRefusals(t *testing.T) {
	a := newAcct(t, AccountLimits{EvaluationsPerSecond: 0.001})
	m, err := NewMonitor(MonitorConfig{EventBuffer: 10})
	require.NoError(t, err)
	require.NoError(t, m.Register("tenant/acme", a))
	m.Poll()
	tr, err := a.Begin(Limits{})
	require.NoError(t, err)
	tr.End()
	_, err = a.Begin(Limits{})
	require.ErrorIs(t, err, ErrLimitExceeded)
	m.Poll()
	ev := <-m.Events()
	assert.Equal(t, Event{Time: ev.Time, Component: "tenant/acme", Resource: EvaluationRate, Kind: HighUsage, Used: 1, Limit: 1, Ratio: 1}, ev)
	ev = <-m.Events()
	assert.Equal(t, Event{Time: ev.Time, Component: "tenant/acme", Resource: EvaluationRate, Kind: LimitExceeded, Used: 1, Limit: 1, Ratio: 1, Refusals: 1}, ev)
	m.Stop()
}
