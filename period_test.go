package reslimit

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// charged is what a hammer's runs were charged, as they saw it.
type charged struct {
	ops, calls, total, evals atomic.Int64
	cpu                      atomic.Int64
}

// hammerRun runs one evaluation on a that charges a random mix of
// operations, calls, memory and CPU time, and adds what succeeded to c.
// With nested, the work runs in Run with a run nested in it that draws
// from it (the child's room comes back at a close).
func hammerRun(a *Account, rng *rand.Rand, nested bool, c *charged) {
	work := func(tr *Tracker) {
		for k := rng.IntN(40); k > 0; k-- {
			switch rng.IntN(5) {
			case 0, 1:
				n := int64(1 + rng.IntN(50))
				if tr.TrackOperations(n) == nil {
					c.ops.Add(n)
				}
			case 2:
				if tr.TrackCall() == nil {
					c.calls.Add(1)
				}
			case 3:
				n := int64(1 + rng.IntN(4096))
				if tr.TrackMemory(n) == nil {
					c.total.Add(n)
					_ = tr.ReleaseMemory(n)
				}
			case 4:
				if tr.Step() == nil {
					c.ops.Add(1)
				}
			}
		}
	}
	if !nested {
		tr, err := a.Begin(Limits{})
		if err != nil {
			return
		}
		c.evals.Add(1)
		work(tr)
		_ = tr.AddCPUTime(time.Duration(1 + rng.IntN(1000)))
		u := tr.End()
		c.cpu.Add(int64(u.CPUTime))
		return
	}
	began := false
	u, _ := Run(context.Background(), Limits{}, func(ctx context.Context) error {
		began = true
		work(FromContext(ctx))
		_, _ = Run(ctx, Limits{MaxOperations: 500}, func(ctx context.Context) error {
			work(FromContext(ctx))
			return nil
		})
		work(FromContext(ctx))
		return nil
	}, WithAccount(a))
	if began {
		c.evals.Add(1)
		c.cpu.Add(int64(u.CPUTime))
	}
}

// Many goroutines charge an account through live runs (some nested)
// while another closes its period again and again: the closed periods
// plus the open one hold every unit charged exactly once, for every
// counter, and the periods follow each other without a gap.
func TestPeriodsLoseNoUnitWhileRunsGo(t *testing.T) {
	for _, tc := range []struct {
		name   string
		limits AccountLimits
	}{
		{"unlimited", AccountLimits{}},
		// Limits make the runs reserve room in chunks and reclaim it.
		{"limited", AccountLimits{MaxTotalOperations: 40_000, MaxCalls: 800, MaxTotalMemory: 16 << 20, MaxEvaluations: 100}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newAcct(t, tc.limits)
			var c charged
			var wg sync.WaitGroup
			for g := range 8 {
				wg.Go(func() {
					rng := rand.New(rand.NewPCG(uint64(g), 15))
					for range 300 {
						hammerRun(a, rng, g%2 == 1, &c)
					}
				})
			}
			stop := make(chan struct{})
			var periods []Period
			closer := make(chan struct{})
			go func() {
				defer close(closer)
				for {
					select {
					case <-stop:
						return
					default:
					}
					periods = append(periods, a.Reset())
				}
			}()
			wg.Wait()
			close(stop)
			<-closer
			open := a.Stats()
			periods = append(periods, a.Reset())
			require.Greater(t, len(periods), 2)

			var sum Totals
			for k, p := range periods {
				assert.Equal(t, "acme", p.Tenant)
				assert.Equal(t, uint64(k+1), p.Number)
				assert.True(t, p.Final)
				assert.False(t, p.End.Before(p.Start))
				if k > 0 {
					assert.Equal(t, periods[k-1].End, p.Start, "periods follow each other")
				}
				assert.GreaterOrEqual(t, p.Evaluations, int64(0))
				assert.GreaterOrEqual(t, p.TotalMemory, int64(0))
				assert.GreaterOrEqual(t, p.CPUTime, time.Duration(0))
				sum = sum.Add(p.Totals)
			}
			last := periods[len(periods)-1]
			assert.Equal(t, open.Operations, last.Operations, "the open period's Stats is what closes")
			assert.Equal(t, open.Evaluations, last.Evaluations)
			assert.Equal(t, c.ops.Load(), sum.Operations, "operations")
			assert.Equal(t, c.calls.Load(), sum.Calls, "calls")
			assert.Equal(t, c.total.Load(), sum.TotalMemory, "bytes charged")
			assert.Equal(t, c.evals.Load(), sum.Evaluations, "evaluations")
			assert.Equal(t, time.Duration(c.cpu.Load()), sum.CPUTime, "CPU time")
			t.Logf("%d periods, %+v", len(periods), sum)

			a.mu.Lock()
			defer a.mu.Unlock()
			assert.Equal(t, a.committed, a.reserved, "no reservation left behind")
		})
	}
}

func TestResetReturnsTheClosedPeriod(t *testing.T) {
	a := newAcct(t, AccountLimits{MaxTotalOperations: 100})
	first := a.Stats().PeriodStart
	done, err := a.Begin(Limits{})
	require.NoError(t, err)
	require.NoError(t, done.TrackOperations(30))
	require.NoError(t, done.TrackCall())
	require.NoError(t, done.AddCPUTime(time.Millisecond))
	done.End()
	live, err := a.Begin(Limits{})
	require.NoError(t, err)
	require.NoError(t, live.TrackOperations(20))
	require.NoError(t, live.TrackMemory(64))

	p := a.Reset()
	assert.Equal(t, Period{
		Tenant: "acme", Number: 1, Start: first, End: p.End, Final: true,
		Totals:          Totals{Operations: 50, Calls: 1, TotalMemory: 64, CPUTime: time.Millisecond, Evaluations: 2},
		PeakMemoryBytes: 64,
	}, p)
	s := a.Stats()
	assert.Equal(t, uint64(2), s.Period)
	assert.Equal(t, p.End, s.PeriodStart)

	require.NoError(t, live.TrackOperations(5), "a live run's later usage counts in the new period")
	require.NoError(t, live.AddCPUTime(time.Millisecond))
	live.End()
	p = a.Reset()
	assert.Equal(t, Totals{Operations: 5, CPUTime: time.Millisecond}, p.Totals)
	assert.Equal(t, int64(64), p.PeakMemoryBytes, "held at the close: the new period's peak starts there")
	assert.Equal(t, uint64(2), p.Number)

	var nilAcct *Account
	assert.Equal(t, Period{}, nilAcct.Reset())
}
