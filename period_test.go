package reslimit

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/reslimit/reslimit/store"
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
				if tr.TrackOperation() == nil {
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
			periods, open := chargeWhileClosing(a, &c)
			require.Greater(t, len(periods), 2)
			requirePeriodsHoldAll(t, periods, open, &c)
			a.mu.Lock()
			defer a.mu.Unlock()
			assert.Equal(t, a.mu.committed, a.mu.reserved, "no reservation left behind")
		})
	}
}

// chargeWhileClosing has 8 goroutines charge a with hammerRun (half of them
// nested) while another closes a's period again and again; the runs go on
// past their 300 each until at least 3 periods closed while they ran, so
// that the closes race with them however the goroutines are scheduled. It
// returns the closed periods, the last of them the open period closed
// afterwards, and the open period's Stats just before that close.
func chargeWhileClosing(a *Account, c *charged) ([]Period, AccountStats) {
	var closes atomic.Int64
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
			closes.Add(1)
		}
	}()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 15))
			for i := 0; i < 300 || closes.Load() < 3; i++ {
				hammerRun(a, rng, g%2 == 1, c)
			}
		})
	}
	wg.Wait()
	close(stop)
	<-closer
	open := a.Stats()
	return append(periods, a.Reset()), open
}

// requirePeriodsHoldAll checks that periods are numbered from 1 and follow
// each other without a gap, that the last is the open period whose Stats
// were open, and that together they hold every unit c counted.
func requirePeriodsHoldAll(t *testing.T, periods []Period, open AccountStats, c *charged) {
	t.Helper()
	var sum store.Totals
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
		Totals:          store.Totals{Operations: 50, Calls: 1, TotalMemory: 64, CPUTime: time.Millisecond, Evaluations: 2},
		PeakMemoryBytes: 64,
	}, p)
	s := a.Stats()
	assert.Equal(t, uint64(2), s.Period)
	assert.Equal(t, p.End, s.PeriodStart)

	require.NoError(t, live.TrackOperations(5), "a live run's later usage counts in the new period")
	require.NoError(t, live.AddCPUTime(time.Millisecond))
	live.End()
	p = a.Reset()
	assert.Equal(t, store.Totals{Operations: 5, CPUTime: time.Millisecond}, p.Totals)
	assert.Equal(t, int64(64), p.PeakMemoryBytes, "held at the close: the new period's peak starts there")
	assert.Equal(t, uint64(2), p.Number)

	var nilAcct *Account
	assert.Equal(t, Period{}, nilAcct.Reset())
}

func chargeOps(t *testing.T, a *Account, n int64) {
	t.Helper()
	tr, err := a.Begin(Limits{})
	require.NoError(t, err)
	require.NoError(t, tr.TrackOperations(n))
	tr.End()
}

func TestLedgerClosePeriodInvoicesEveryTenant(t *testing.T) {
	l := mustLedger(t, AccountLimits{}, WithPeriodsKept(2))
	chargeOps(t, l.Account("b"), 2)
	chargeOps(t, l.Account("a"), 1)
	live, err := l.Account("c").Begin(Limits{})
	require.NoError(t, err)
	require.NoError(t, live.TrackOperations(3))

	lines := l.ClosePeriod()
	require.Len(t, lines, 3)
	for k, want := range []struct {
		tenant string
		ops    int64
	}{{"a", 1}, {"b", 2}, {"c", 3}} {
		assert.Equal(t, want.tenant, lines[k].Tenant, "sorted by tenant")
		assert.Equal(t, want.ops, lines[k].Operations)
		assert.Equal(t, uint64(1), lines[k].Number)
		assert.Equal(t, lines[0].End, lines[k].End, "one End for every tenant")
		assert.True(t, lines[k].Final)
	}

	// A tenant removed in period 2 is still billed for it, with its runs
	// still going; a tenant created in period 2 belongs to it.
	require.NoError(t, live.TrackOperations(4))
	l.Remove("c")
	chargeOps(t, l.Account("c"), 5) // a fresh account for c: merged into one line
	chargeOps(t, l.Account("d"), 6)
	assert.Equal(t, uint64(2), l.Account("d").Stats().Period)
	lines = l.ClosePeriod()
	require.Len(t, lines, 4)
	assert.Equal(t, "c", lines[2].Tenant)
	assert.Equal(t, int64(9), lines[2].Operations, "the removed account's usage and its successor's")
	assert.Equal(t, int64(6), lines[3].Operations)
	assert.Equal(t, uint64(2), lines[3].Number)

	require.NoError(t, live.TrackOperations(7))
	live.End()
	lines = l.ClosePeriod()
	assert.Equal(t, int64(7), lines[2].Operations, "the removed run's last usage, billed at the next close")
	lines = l.ClosePeriod()
	require.Len(t, lines, 4, "the removed account is forgotten once its runs ended and it was billed")
	for _, p := range lines {
		assert.Equal(t, store.Totals{}, p.Totals)
	}

	kept := l.Periods()
	require.Len(t, kept, 8, "the latest 2 closes")
	assert.Equal(t, uint64(3), kept[0].Number)
	assert.Equal(t, uint64(4), kept[7].Number)
}

func TestLedgerPeriodOptions(t *testing.T) {
	for _, o := range []LedgerOption{WithPeriod(0), WithPeriod(-time.Second), WithPeriodSchedule(nil), WithPeriodsKept(-1)} {
		_, err := NewLedger(AccountLimits{}, o)
		require.ErrorIs(t, err, ErrInvalidArgument)
	}
	l := mustLedger(t, AccountLimits{}, WithPeriodsKept(0))
	chargeOps(t, l.Account("a"), 1)
	require.Len(t, l.ClosePeriod(), 1)
	assert.Empty(t, l.Periods(), "none kept")
	require.NoError(t, l.Close(context.Background()), "no schedule: nothing to stop")

	var zero Ledger
	chargeOps(t, zero.Account("z"), 1)
	lines := zero.ClosePeriod()
	require.Len(t, lines, 1)
	assert.Equal(t, uint64(1), lines[0].Number)
	assert.Len(t, zero.Periods(), 1)
}

// A ledger with WithPeriod closes every tenant's period on the hour, with
// the hour as End, keeps the latest closes, hands them to the hook, and
// Close stops its goroutine (goleak and synctest check it).
func TestLedgerClosesPeriodsOnSchedule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		hooked := make(chan []Period, 10)
		l := mustLedger(t, AccountLimits{MaxTotalOperations: 10}, WithPeriod(time.Hour), WithPeriodsKept(2),
			WithPeriodClosed(func(lines []Period) { hooked <- lines }))
		start := time.Now()
		hour := start.Truncate(time.Hour).Add(time.Hour)
		a := l.Account("acme")
		chargeOps(t, a, 10)
		_, err := a.Begin(Limits{})
		require.ErrorIs(t, err, ErrLimitExceeded, "the period's quota is used up")

		time.Sleep(hour.Sub(start) + time.Minute) // the fake clock passes the hour
		synctest.Wait()
		lines := <-hooked
		require.Len(t, lines, 1)
		assert.Equal(t, Period{Tenant: "acme", Number: 1, Start: start, End: hour, Totals: store.Totals{Operations: 10, Evaluations: 1}, Final: true}, lines[0])
		chargeOps(t, a, 10) // the quota starts over in the new period

		time.Sleep(2 * time.Hour) // two more hours of the fake clock
		synctest.Wait()
		<-hooked
		lines = <-hooked
		assert.Equal(t, hour.Add(2*time.Hour), lines[0].End)
		assert.Equal(t, uint64(3), lines[0].Number)
		kept := l.Periods()
		require.Len(t, kept, 2)
		assert.Equal(t, int64(10), kept[0].Operations)
		assert.Equal(t, hour, kept[0].Start)
		assert.Equal(t, int64(0), kept[1].Operations)

		require.NoError(t, l.Close(context.Background()))
		require.NoError(t, l.Close(context.Background()), "Close again is fine")
		time.Sleep(3 * time.Hour) // hours of the fake clock after Close
		synctest.Wait()
		assert.Empty(t, hooked, "no close after Close")
	})
}

func TestLedgerPeriodScheduleCalendar(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		monthly := func(now time.Time) time.Time {
			y, m, _ := now.UTC().Date()
			return time.Date(y, m+1, 1, 0, 0, 0, 0, time.UTC)
		}
		l := mustLedger(t, AccountLimits{}, WithPeriodSchedule(monthly))
		chargeOps(t, l.Account("acme"), 1)
		time.Sleep(time.Until(monthly(time.Now())) + time.Second) // the fake clock passes the month
		synctest.Wait()
		kept := l.Periods()
		require.Len(t, kept, 1)
		assert.Equal(t, 1, kept[0].End.Day())
		assert.Equal(t, int64(1), kept[0].Operations)
		require.NoError(t, l.Close(context.Background()))
	})
}

// Two replicas share a store while their runs charge and each closes its
// periods again and again (each close moves the store's period on, and
// the other replica follows it): every replica's lines, summed over its
// closed periods, hold exactly what it charged, and for every period the
// replicas' lines together hold exactly what the store committed for it,
// final once both replicas have closed. So every unit is billed once, in
// the period it was charged in, whenever it reached the store.
func TestFleetReplicaPeriodsSumToTheStore(t *testing.T) {
	shared := store.NewMemory()
	var c [2]charged
	var ledgers [2]*Ledger
	var wg sync.WaitGroup
	for k := range 2 {
		l := newFleetLedger(t, shared, []string{"r1", "r2"}[k], AccountLimits{MaxTotalOperations: 1 << 40}, WithPeriodsKept(1<<20))
		ledgers[k] = l
		wg.Go(func() {
			defer func() {
				require.NoError(t, l.Close(context.Background()))
				l.ClosePeriod()
			}()
			var inner sync.WaitGroup
			for g := range 3 {
				inner.Go(func() {
					rng := rand.New(rand.NewPCG(uint64(k), uint64(g)))
					for i := range 100 {
						hammerRun(l.Account("acme"), rng, false, &c[k])
						if g == 0 && i%10 == 9 {
							// Closes among the charges of the other two
							// goroutines: driven by the work, not a timer,
							// so that they come however fast it runs.
							l.ClosePeriod()
						}
					}
				})
			}
			inner.Wait()
		})
	}
	wg.Wait()
	byPeriod := map[uint64]store.Totals{}
	var maxN uint64
	for k := range 2 {
		var sum store.Totals
		for _, p := range ledgers[k].Periods() {
			sum = sum.Add(p.Totals)
			byPeriod[p.Number] = byPeriod[p.Number].Add(p.Totals)
			maxN = max(maxN, p.Number)
		}
		assert.Equal(t, c[k].ops.Load(), sum.Operations, "replica %d", k)
		assert.Equal(t, c[k].evals.Load(), sum.Evaluations, "replica %d", k)
		assert.Equal(t, c[k].total.Load(), sum.TotalMemory, "replica %d", k)
		assert.Equal(t, c[k].calls.Load(), sum.Calls, "replica %d", k)
	}
	open, err := shared.LoadPeriod(context.Background(), "acme", 0)
	require.NoError(t, err)
	assert.Greater(t, open.Open, uint64(1), "the replicas' closes moved the shared's period on")
	for n := uint64(1); n <= maxN; n++ {
		sp, err := shared.LoadPeriod(context.Background(), "acme", n)
		require.NoError(t, err)
		want := byPeriod[n]
		want.CPUTime = sp.CPUTime // the shared keeps whole microseconds per report
		assert.Equal(t, want, sp.Totals, "period %d", n)
		if n < sp.Open {
			assert.True(t, sp.Final, "period %d: both replicas sent their final reports", n)
		}
	}
}
