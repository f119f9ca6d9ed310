package reslimit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reslimit/reslimit/internal/threadcpu"
)

func newAcct(t *testing.T, l AccountLimits, opts ...AccountOption) *Account {
	t.Helper()
	a, err := NewAccount("acme", l, opts...)
	require.NoError(t, err)
	return a
}

func TestAccountBadInput(t *testing.T) {
	_, err := NewAccount("", AccountLimits{})
	assert.ErrorIs(t, err, ErrInvalidArgument)
	_, err = NewAccount("x", AccountLimits{MaxTotalOperations: -1})
	assert.ErrorIs(t, err, ErrInvalidLimits)
	_, err = NewAccount("x", AccountLimits{}, WithHistorySize(-1))
	assert.ErrorIs(t, err, ErrInvalidArgument)
	a := newAcct(t, AccountLimits{})
	assert.ErrorIs(t, a.SetLimit(Timeout, 5), ErrInvalidArgument)
	assert.ErrorIs(t, a.SetLimit(Resource(99), 5), ErrInvalidArgument)
	assert.ErrorIs(t, a.SetLimit(Operations, -5), ErrInvalidLimits)
	_, err = a.Begin(Limits{MaxOperations: -1})
	assert.ErrorIs(t, err, ErrInvalidLimits)

	var nilA *Account
	_, err = nilA.Begin(Strict())
	assert.ErrorIs(t, err, ErrInvalidArgument)
	assert.Equal(t, AccountStats{}, nilA.Stats())
	assert.False(t, exhausted(nilA))

	l := mustLedger(t, AccountLimits{})
	_, err = l.open("")
	assert.ErrorIs(t, err, ErrInvalidArgument)
	assert.ErrorIs(t, l.Account("").Err(), ErrInvalidArgument) // never nil: it refuses every run
	bad, err := NewLedger(AccountLimits{MaxEvaluations: -1})
	assert.ErrorIs(t, err, ErrInvalidLimits, "invalid defaults are reported at construction")
	assert.Nil(t, bad)
	_, err = NewLedger(AccountLimits{}, WithAccountOptions(WithHistorySize(-1)))
	assert.ErrorIs(t, err, ErrInvalidArgument, "so are invalid account options")
}

func TestAccountChargesCumulativeTotals(t *testing.T) {
	a := newAcct(t, AccountLimits{})
	for i := 0; i < 3; i++ {
		tr, err := a.Begin(Unlimited())
		require.NoError(t, err)
		require.NoError(t, tr.TrackOperations(int64(10*(i+1))))
		require.NoError(t, tr.TrackCall())
		require.NoError(t, tr.TrackMemory(int64(100*(i+1))))
		require.NoError(t, tr.AddCPUTime(time.Millisecond))
		tr.End()
	}
	s := a.Stats()
	assert.Equal(t, int64(60), s.Operations)
	assert.Equal(t, int64(3), s.Calls)
	assert.Equal(t, int64(600), s.TotalMemoryBytes)
	assert.Equal(t, int64(0), s.MemoryBytes, "End gives back what a run forgot to release")
	assert.Equal(t, int64(300), s.PeakMemoryBytes)
	assert.Equal(t, 3*time.Millisecond, s.CPUTime)
	assert.Equal(t, int64(3), s.Evaluations)
	assert.Equal(t, Largest{PeakMemoryBytes: 300, Operations: 30}, s.Largest)
	assert.False(t, s.Exhausted)
	assert.Nil(t, s.LimitStatus)
}

func TestAccountLiveRunsShowInStats(t *testing.T) {
	a := newAcct(t, AccountLimits{MaxTotalOperations: 1000})
	tr, err := a.Begin(Unlimited())
	require.NoError(t, err)
	require.NoError(t, tr.TrackOperations(7))
	require.NoError(t, tr.TrackMemory(50))
	s := a.Stats()
	assert.Equal(t, int64(7), s.Operations, "usage, not reservations")
	assert.Equal(t, int64(50), s.MemoryBytes)
	assert.Equal(t, int64(1), s.Running)
	assert.Equal(t, LimitStatus{Used: 7, Limit: 1000, Remaining: 993}, s.LimitStatus[Operations])
	tr.End()
	assert.Equal(t, int64(0), a.Stats().Running)
}

func TestAccountCumulativeLimitEnforcedWhenCharged(t *testing.T) {
	a := newAcct(t, AccountLimits{MaxTotalOperations: 10})
	t1, err := a.Begin(Unlimited())
	require.NoError(t, err)
	t2, err := a.Begin(Limits{MaxOperations: 100})
	require.NoError(t, err)
	require.NoError(t, t1.TrackOperations(6))
	require.NoError(t, t2.TrackOperations(4))
	err = t2.TrackOperation()
	le := requireLimit(t, err, Operations, 10, 10, 1)
	assert.Equal(t, "acme", le.Tenant, "names the level")
	err = t1.TrackOperation()
	requireLimit(t, err, Operations, 10, 10, 1)
	assert.Equal(t, int64(6), t1.Usage().Operations)
	assert.Equal(t, int64(4), t2.Usage().Operations)
	assert.True(t, exhausted(a))
	r, ok := a.Exhausted()
	assert.True(t, ok)
	assert.Equal(t, Operations, r)
	t1.End()
	t2.End()
	assert.Equal(t, int64(10), a.Stats().Operations)
	assert.Equal(t, int64(2), a.Stats().Refusals[Operations])

	_, err = a.Begin(Unlimited())
	requireLimit(t, err, Operations, 10, 10, 0)
	assert.Equal(t, int64(2), a.Stats().Evaluations, "a refused Begin is not an evaluation")
}

func TestRunLevelRefusalLeavesAccountUntouched(t *testing.T) {
	a := newAcct(t, AccountLimits{MaxTotalOperations: 100, MaxMemory: 1000})
	tr, err := a.Begin(Limits{MaxOperations: 5, MaxMemoryBytes: 10})
	require.NoError(t, err)
	require.NoError(t, tr.TrackOperations(5))
	le := requireLimit(t, tr.TrackOperation(), Operations, 5, 5, 1)
	assert.Empty(t, le.Tenant, "a per-run limit")
	le = requireLimit(t, tr.TrackMemory(11), Memory, 10, 0, 11)
	assert.Empty(t, le.Tenant)
	s := a.Stats()
	assert.Equal(t, int64(5), s.Operations)
	assert.Equal(t, int64(0), s.MemoryBytes)
	assert.Equal(t, int64(0), s.TotalMemoryBytes)
	assert.Nil(t, s.Refusals)
	tr.End()
}

func TestAccountMemoryHeldAtOnce(t *testing.T) {
	a := newAcct(t, AccountLimits{MaxMemory: 100, MaxTotalMemory: 250})
	t1, _ := a.Begin(Unlimited())
	t2, _ := a.Begin(Unlimited())
	g1, err := t1.AcquireMemory(60)
	require.NoError(t, err)
	_, err = t2.AcquireMemory(41)
	le := requireLimit(t, err, Memory, 100, 60, 41)
	assert.Equal(t, "acme", le.Tenant)
	assert.Equal(t, int64(0), t2.Usage().MemoryBytes, "refused at the account: the run's counter is unchanged")
	assert.Equal(t, int64(0), t2.Usage().TotalMemoryBytes)
	g1.Release() // memory comes back: the refusal was transient
	g2, err := t2.AcquireMemory(100)
	require.NoError(t, err)
	g2.Release()
	// 160 charged in total; 91 more passes the cumulative 250.
	_, err = t1.AcquireMemory(91)
	requireLimit(t, err, TotalMemory, 250, 160, 91)
	assert.Equal(t, int64(0), a.Stats().MemoryBytes, "held memory rolled back after the total refused")
	assert.Equal(t, int64(100), a.Stats().PeakMemoryBytes)
	t1.End()
	t2.End()
}

func TestBeginRefusesEvaluationsAndConcurrency(t *testing.T) {
	a := newAcct(t, AccountLimits{MaxEvaluations: 3, MaxConcurrent: 2})
	t1, err := a.Begin(Unlimited())
	require.NoError(t, err)
	t2, err := a.Begin(Unlimited())
	require.NoError(t, err)
	_, err = a.Begin(Unlimited())
	requireLimit(t, err, Concurrency, 2, 2, 1)
	t1.End()
	t3, err := a.Begin(Unlimited())
	require.NoError(t, err)
	t2.End()
	t3.End()
	_, err = a.Begin(Unlimited())
	requireLimit(t, err, Evaluations, 3, 3, 1)
	assert.Equal(t, int64(3), a.Stats().Evaluations, "exactly 3 runs started")
	assert.True(t, exhausted(a))
}

func TestFailedRunIsAnEvaluationWithItsError(t *testing.T) {
	a := newAcct(t, AccountLimits{})
	boom := errors.New("boom")
	_, err := Run(context.Background(), Limits{MaxOperations: 1}, func(ctx context.Context) error {
		tr := FromContext(ctx)
		_ = tr.TrackOperation()
		return tr.TrackOperation()
	}, WithAccount(a))
	require.ErrorIs(t, err, ErrLimitExceeded)
	_, err = Run(context.Background(), Unlimited(), func(context.Context) error { return boom }, WithAccount(a))
	require.ErrorIs(t, err, boom)
	_, err = Run(context.Background(), Limits{Timeout: 5 * time.Millisecond}, func(ctx context.Context) error {
		<-ctx.Done()
		return nil
	}, WithAccount(a))
	require.ErrorIs(t, err, context.DeadlineExceeded)
	h := a.History()
	require.Len(t, h, 3)
	assert.ErrorIs(t, h[0].Err, ErrLimitExceeded)
	assert.Equal(t, int64(1), h[0].Operations)
	assert.Equal(t, int64(1), h[0].Evaluation)
	assert.Same(t, boom, h[1].Err)
	var le *LimitError
	require.ErrorAs(t, h[2].Err, &le)
	assert.Equal(t, Timeout, le.Resource)
	assert.Equal(t, int64(3), h[2].Evaluation)
	assert.Equal(t, int64(3), a.Stats().Evaluations)
}

func TestHistoryRing(t *testing.T) {
	a := newAcct(t, AccountLimits{}, WithHistorySize(3))
	for i := 1; i <= 5; i++ {
		tr, _ := a.Begin(Unlimited())
		_ = tr.TrackOperations(int64(i))
		tr.End()
	}
	h := a.History()
	require.Len(t, h, 3)
	assert.Equal(t, []int64{3, 4, 5}, []int64{h[0].Operations, h[1].Operations, h[2].Operations})
	assert.Equal(t, []int64{3, 4, 5}, []int64{h[0].Evaluation, h[1].Evaluation, h[2].Evaluation})
	h[0].Operations = 99
	assert.Equal(t, int64(3), a.History()[0].Operations, "a copy")

	none := newAcct(t, AccountLimits{}, WithHistorySize(0))
	tr, _ := none.Begin(Unlimited())
	tr.End()
	assert.Empty(t, none.History())
	assert.Len(t, newAcct(t, AccountLimits{}).mu.hist, defaultHistorySize)
}

func TestSetLimitTakesEffectAtOnce(t *testing.T) {
	a := newAcct(t, AccountLimits{})
	tr, err := a.Begin(Unlimited())
	require.NoError(t, err)
	require.NoError(t, tr.TrackOperations(50))
	assert.Zero(t, a.Limits().MaxTotalOperations)

	require.NoError(t, a.SetLimit(Operations, 40))
	assert.Equal(t, int64(40), a.Limits().MaxTotalOperations)
	assert.True(t, exhausted(a), "lowering below usage exhausts")
	requireLimit(t, tr.TrackOperation(), Operations, 40, 50, 1)

	require.NoError(t, a.SetLimit(Operations, 60))
	assert.False(t, exhausted(a), "raising clears exhaustion")
	require.NoError(t, tr.TrackOperations(10))
	requireLimit(t, tr.TrackOperation(), Operations, 60, 60, 1)

	require.NoError(t, a.SetLimit(Operations, 0))
	require.NoError(t, tr.TrackOperations(1000))
	assert.Zero(t, a.Limits().MaxTotalOperations)
	_, limited := a.Stats().LimitStatus[Operations]
	assert.False(t, limited)
	tr.End()
	assert.Equal(t, int64(1060), a.Stats().Operations)
}

func TestSetLimitRevokesUnusedReservations(t *testing.T) {
	a := newAcct(t, AccountLimits{MaxTotalOperations: 1_000_000})
	tr, _ := a.Begin(Unlimited())
	require.NoError(t, tr.TrackOperation()) // reserves a chunk
	require.NoError(t, a.SetLimit(Operations, 3))
	require.NoError(t, tr.TrackOperations(2))
	requireLimit(t, tr.TrackOperation(), Operations, 3, 3, 1)
	tr.End()
}

func TestResetKeepsLimitsAndLiveHoldings(t *testing.T) {
	a := newAcct(t, AccountLimits{MaxTotalOperations: 100, MaxEvaluations: 2})
	done, _ := a.Begin(Unlimited())
	_ = done.TrackOperations(30)
	done.End()
	live, _ := a.Begin(Unlimited())
	require.NoError(t, live.TrackOperations(20))
	g, err := live.AcquireMemory(64)
	require.NoError(t, err)
	_, err = a.Begin(Unlimited())
	require.Error(t, err)

	a.Reset()
	s := a.Stats()
	assert.Equal(t, int64(0), s.Operations)
	assert.Equal(t, int64(0), s.Evaluations)
	assert.Equal(t, int64(64), s.MemoryBytes, "what live runs hold stays counted")
	assert.Equal(t, int64(64), s.PeakMemoryBytes)
	assert.Equal(t, Largest{}, s.Largest)
	assert.Empty(t, a.History())
	assert.Equal(t, int64(100), a.Limits().MaxTotalOperations, "limits are kept")

	require.NoError(t, live.TrackOperations(100), "the new period has the whole quota")
	requireLimit(t, live.TrackOperation(), Operations, 100, 100, 1)
	g.Release()
	live.End()
	s = a.Stats()
	assert.Equal(t, int64(100), s.Operations, "only usage after Reset counts")
	assert.Len(t, a.History(), 1)
}

// Many goroutines run many evaluations of one account against a
// cumulative limit: exactly the limit is charged, never more, and after
// every run has ended the totals are exact.
func TestHammerAccountExact(t *testing.T) {
	const limit = 20_000
	a := newAcct(t, AccountLimits{MaxTotalOperations: limit, MaxCalls: limit})
	var granted, calls atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 12; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for run := 0; ; run++ {
				tr, err := a.Begin(Limits{MaxOperations: int64(500 + 37*g)})
				if err != nil {
					require.ErrorIs(t, err, ErrLimitExceeded)
					return
				}
				for {
					err := tr.TrackOperation()
					if err != nil {
						break
					}
					granted.Add(1)
					if tr.TrackCall() == nil {
						calls.Add(1)
					}
				}
				tr.End()
			}
		}(g)
	}
	wg.Wait()
	assert.Equal(t, int64(limit), granted.Load())
	s := a.Stats()
	assert.Equal(t, int64(limit), s.Operations)
	assert.Equal(t, int64(limit), calls.Load())
	assert.Equal(t, int64(limit), s.Calls)
	assert.Equal(t, int64(0), s.Running)
	a.mu.Lock()
	assert.Equal(t, a.mu.committed, a.mu.reserved, "no reservation left behind")
	a.mu.Unlock()
}

func TestAccountCPUQuotaStopsRuns(t *testing.T) {
	if !threadcpu.Supported {
		t.Skip("needs per-thread CPU clocks")
	}
	a := newAcct(t, AccountLimits{MaxCPUTime: 60 * time.Millisecond})
	_, err := Run(context.Background(), Limits{Timeout: 10 * time.Second}, spinUntilStopped, WithAccount(a))
	var le *LimitError
	require.ErrorAs(t, err, &le)
	assert.Equal(t, CPUTime, le.Resource)
	assert.Equal(t, "acme", le.Tenant)
	assert.True(t, exhausted(a))
	_, err = Run(context.Background(), Strict(), spinUntilStopped, WithAccount(a))
	require.ErrorAs(t, err, &le)
	assert.Equal(t, CPUTime, le.Resource, "refused before it runs")
}

func TestContextWithAccountChoosesTenant(t *testing.T) {
	ledger := mustLedger(t, AccountLimits{MaxEvaluations: 1})
	tool := Limit(func(ctx context.Context, n int64) (string, error) {
		return FromContext(ctx).Account().Name(), FromContext(ctx).TrackOperations(n)
	}, Strict())
	for _, tenant := range []string{"a", "b"} {
		ctx := ContextWithAccount(context.Background(), ledger.Account(tenant))
		name, err := tool(ctx, 3)
		require.NoError(t, err)
		assert.Equal(t, tenant, name)
		_, err = tool(ctx, 1)
		requireLimit(t, err, Evaluations, 1, 1, 1)
	}
	snap := ledger.Snapshot()
	assert.Equal(t, int64(3), snap["a"].Operations)
	assert.Equal(t, int64(3), snap["b"].Operations)
}

func TestLedger(t *testing.T) {
	l := mustLedger(t, AccountLimits{MaxTotalOperations: 5}, WithAccountOptions(WithHistorySize(2)))
	a := l.Account("zeta")
	assert.Same(t, a, l.Account("zeta"))
	l.Account("alpha")
	_, ok := l.Lookup("missing")
	assert.False(t, ok)
	got, ok := l.Lookup("alpha")
	assert.True(t, ok)
	assert.Equal(t, "alpha", got.Name())
	assert.Equal(t, []string{"alpha", "zeta"}, l.Tenants())
	assert.Equal(t, int64(5), a.Limits().MaxTotalOperations)
	assert.Len(t, a.mu.hist, 2)
	l.Remove("zeta")
	assert.Equal(t, []string{"alpha"}, l.Tenants())
	assert.NotSame(t, a, l.Account("zeta"))
	snap := l.Snapshot()
	assert.Len(t, snap, 2)
	assert.Equal(t, LimitStatus{Limit: 5, Remaining: 5}, snap["alpha"].LimitStatus[Operations])
}

func TestLedgerConcurrentAccountCreation(t *testing.T) {
	l := mustLedger(t, AccountLimits{})
	var wg sync.WaitGroup
	accts := make([]*Account, 16)
	for i := range accts {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			accts[i] = l.Account(fmt.Sprintf("t%d", i%4))
			tr, err := accts[i].Begin(Unlimited())
			if assert.NoError(t, err) {
				_ = tr.TrackOperation()
				tr.End()
			}
		}(i)
	}
	wg.Wait()
	assert.Len(t, l.Tenants(), 4)
	for _, s := range l.Snapshot() {
		assert.Equal(t, int64(4), s.Operations)
	}
}

func TestAccountReadings(t *testing.T) {
	a := newAcct(t, AccountLimits{MaxEvaluations: 1})
	tr, _ := a.Begin(Unlimited())
	_, err := a.Begin(Unlimited())
	require.Error(t, err)
	var rs []Reading
	rs = a.AppendReadings(rs)
	for _, r := range rs {
		if r.Resource == Evaluations {
			assert.Equal(t, Reading{Resource: Evaluations, Used: 1, Limit: 1, Refusals: 1}, r)
		}
	}
	assert.Len(t, rs, len(accountResources))
	tr.End()
}

func TestSetLimits(t *testing.T) {
	a := newAcct(t, AccountLimits{MaxEvaluations: 1})
	want := AccountLimits{MaxMemory: 1, MaxTotalMemory: 2, MaxTotalOperations: 3, MaxCalls: 4, MaxCPUTime: 5, MaxEvaluations: 6, MaxConcurrent: 7}
	require.NoError(t, a.SetLimits(want))
	assert.Equal(t, want, a.Limits())
	err := a.SetLimits(AccountLimits{MaxTotalOperations: -1, MaxEvaluations: 9})
	assert.ErrorIs(t, err, ErrInvalidLimits)
	assert.Equal(t, want, a.Limits(), "invalid limits change nothing")
}

func TestLedgerTenantLimits(t *testing.T) {
	plans := map[string]AccountLimits{"pro": {MaxTotalOperations: 1000}, "bad": {MaxEvaluations: -1}}
	l := mustLedger(t, AccountLimits{MaxTotalOperations: 10}, WithTenantLimits(func(tenant string) AccountLimits {
		if p, ok := plans[tenant]; ok {
			return p
		}
		return AccountLimits{MaxTotalOperations: 10}
	}))
	assert.Equal(t, int64(1000), l.Account("pro").Limits().MaxTotalOperations)
	assert.Equal(t, int64(10), l.Account("free").Limits().MaxTotalOperations)
	_, err := l.open("bad")
	assert.ErrorIs(t, err, ErrInvalidLimits)
}

// A run's own memory limit is checked exactly whatever the account's other
// runs hold (the account's bytes held only bound the run's).
func TestRunMemoryLimitExactBesideOtherRuns(t *testing.T) {
	a := newAcct(t, AccountLimits{MaxMemory: 10_000})
	big, err := a.Begin(Unlimited())
	require.NoError(t, err)
	defer big.End()
	require.NoError(t, big.TrackMemory(900))
	small, err := a.Begin(Limits{MaxMemoryBytes: 100})
	require.NoError(t, err)
	defer small.End()
	require.NoError(t, small.TrackMemory(60))
	require.NoError(t, small.TrackMemory(40), "exactly the run's limit")
	requireLimit(t, small.TrackMemory(1), Memory, 100, 100, 1)
	assert.Equal(t, int64(1000), a.Stats().MemoryBytes, "the refusal charged the account nothing")
	require.NoError(t, small.ReleaseMemory(100))
	requireLimit(t, small.TrackMemory(101), Memory, 100, 0, 101)
	require.NoError(t, small.TrackMemory(100))
}

func TestRefusedMemoryLeavesAccountPeak(t *testing.T) {
	a := newAcct(t, AccountLimits{MaxTotalMemory: 100})
	tr, err := a.Begin(Unlimited())
	require.NoError(t, err)
	requireLimit(t, tr.TrackMemory(200), TotalMemory, 100, 0, 200)
	s := a.Stats()
	assert.Zero(t, s.PeakMemoryBytes, "a refused request changes no counter")
	assert.Zero(t, s.MemoryBytes)
	assert.Zero(t, tr.Usage().PeakMemoryBytes)
	tr.End()
}

// TrackMemory, guards and End race: held memory never goes negative and
// the account holds nothing once the run has ended; Release never panics.
func TestMemoryRacesWithEnd(t *testing.T) {
	a := newAcct(t, AccountLimits{})
	for trial := 0; trial < 200; trial++ {
		tr, err := a.Begin(Unlimited())
		require.NoError(t, err)
		var wg sync.WaitGroup
		for g := 0; g < 3; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				for i := 0; i < 50; i++ {
					if g == 0 {
						_ = tr.TrackMemory(1)
						continue
					}
					if guard, err := tr.AcquireMemory(1); err == nil {
						guard.Release()
					}
				}
			}(g)
		}
		tr.End()
		wg.Wait()
		require.GreaterOrEqual(t, tr.heldNow(), int64(0))
		require.Equal(t, int64(0), a.Stats().MemoryBytes, "trial %d", trial)
	}
}

func TestHaltIgnoresInvalidCause(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(&LimitError{Resource: Resource(200)})
	_, err := Run(ctx, Unlimited(), spinUntilStopped) // until halt has run
	assert.ErrorIs(t, err, ErrLimitExceeded, "a parent's limit error is passed on, without a panic")
}

// exhausted reports whether some cumulative limit of a is used up.
func exhausted(a *Account) bool {
	_, ok := a.Exhausted()
	return ok
}
