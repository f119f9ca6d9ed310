package reslimit

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/reslimit/reslimit/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// flakyStore wraps a Store and fails every call while down is set.
type flakyStore struct {
	store.Store
	down  atomic.Bool
	calls atomic.Int64
}

var errStoreDown = errors.New("store down")

func (s *flakyStore) Load(ctx context.Context, tenant string) (store.Totals, error) {
	if s.down.Load() {
		return store.Totals{}, errStoreDown
	}
	return s.Store.Load(ctx, tenant)
}

func (s *flakyStore) Sync(ctx context.Context, req store.SyncRequest) (store.SyncResponse, error) {
	s.calls.Add(1)
	if s.down.Load() {
		return store.SyncResponse{}, errStoreDown
	}
	return s.Store.Sync(ctx, req)
}

func newFleetLedger(t *testing.T, s store.Store, replica string, defaults AccountLimits, opts ...LedgerOption) *Ledger {
	t.Helper()
	opts = append([]LedgerOption{WithStore(s), WithReplica(replica), WithSyncInterval(20 * time.Millisecond)}, opts...)
	l := mustLedger(t, defaults, opts...)
	require.NoError(t, l.optErr)
	t.Cleanup(func() { _ = l.Close(context.Background()) })
	return l
}

// hammer charges operations on tenant "t" from several goroutines until the
// fleet refuses (a fresh run gets nothing), and returns how many were granted.
func hammer(t *testing.T, l *Ledger, workers int) int64 {
	var granted atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				tr, err := l.Account("t").Begin(Limits{MaxOperations: 700})
				if err != nil {
					return // the tenant is exhausted fleet-wide
				}
				n := 0
				for tr.TrackOperation() == nil {
					n++
				}
				granted.Add(int64(n))
				tr.End()
				if n == 0 {
					return // a fresh run got nothing: the fleet has none to give now
				}
			}
		}()
	}
	wg.Wait()
	return granted.Load()
}

func TestFleetOfReplicasNeverPassesTheLimit(t *testing.T) {
	const limit = 30_000
	shared := store.NewMemory()
	var ledgers []*Ledger
	for _, id := range []string{"r1", "r2", "r3"} {
		ledgers = append(ledgers, newFleetLedger(t, shared, id, AccountLimits{MaxTotalOperations: limit}))
	}
	var total atomic.Int64
	var wg sync.WaitGroup
	for _, l := range ledgers {
		wg.Add(1)
		go func(l *Ledger) {
			defer wg.Done()
			total.Add(hammer(t, l, 4))
		}(l)
	}
	wg.Wait()
	assert.LessOrEqual(t, total.Load(), int64(limit), "the fleet grants at most the limit")
	assert.GreaterOrEqual(t, total.Load(), int64(limit*95/100), "and at least 95%% of it before refusing")
	for _, l := range ledgers {
		require.NoError(t, l.Close(context.Background()))
	}
	committed, err := shared.Load(context.Background(), "t")
	require.NoError(t, err)
	assert.Equal(t, total.Load(), committed.Operations, "committed equals what the replicas granted")
}

func TestFleetStatsAreFleetWide(t *testing.T) {
	shared := store.NewMemory()
	l1 := newFleetLedger(t, shared, "r1", AccountLimits{MaxTotalOperations: 1000})
	l2 := newFleetLedger(t, shared, "r2", AccountLimits{MaxTotalOperations: 1000})
	for _, l := range []*Ledger{l1, l2} {
		tr, err := l.Account("acme").Begin(Unlimited())
		require.NoError(t, err)
		require.NoError(t, tr.TrackOperations(100))
		tr.End()
	}
	require.NoError(t, l1.Sync(context.Background()))
	require.NoError(t, l2.Sync(context.Background()))
	require.NoError(t, l1.Sync(context.Background()))
	s := l1.Account("acme").Stats()
	assert.Equal(t, int64(200), s.Operations)
	assert.Equal(t, int64(2), s.Evaluations)
	assert.Equal(t, LimitStatus{Used: 200, Limit: 1000, Remaining: 800}, s.LimitStatus[Operations])
	require.NotNil(t, s.Fleet)
	assert.Equal(t, "r1", s.Fleet.Replica)
	assert.Equal(t, store.Totals{}, store.Totals{Operations: s.Fleet.Unreported.Operations})
	assert.Positive(t, s.Fleet.Syncs)

	// Unreported local usage shows at once on its own replica.
	tr, _ := l2.Account("acme").Begin(Unlimited())
	require.NoError(t, tr.TrackOperations(5))
	assert.Equal(t, int64(205), l2.Account("acme").Stats().Operations)
	tr.End()
}

func TestFleetEvaluationsLimitAcrossReplicas(t *testing.T) {
	shared := store.NewMemory()
	l1 := newFleetLedger(t, shared, "r1", AccountLimits{MaxEvaluations: 5})
	l2 := newFleetLedger(t, shared, "r2", AccountLimits{MaxEvaluations: 5})
	started := 0
	for i := 0; i < 10; i++ {
		l := []*Ledger{l1, l2}[i%2]
		if tr, err := l.Account("t").Begin(Unlimited()); err == nil {
			started++
			tr.End()
		} else {
			assert.ErrorIs(t, err, ErrLimitExceeded)
		}
	}
	assert.LessOrEqual(t, started, 5)
	require.NoError(t, l1.Close(context.Background()))
	require.NoError(t, l2.Close(context.Background()))
	c, _ := shared.Load(context.Background(), "t")
	assert.Equal(t, int64(started), c.Evaluations)
}

func TestFleetFailLocalKeepsServingAndBillsLater(t *testing.T) {
	shared := &flakyStore{Store: store.NewMemory()}
	const limit = 100_000
	l := newFleetLedger(t, shared, "r1", AccountLimits{MaxTotalOperations: limit})
	acct := l.Account("t")
	tr, err := acct.Begin(Unlimited())
	require.NoError(t, err)
	require.NoError(t, tr.TrackOperations(1000))
	require.NoError(t, l.Sync(context.Background()))

	shared.down.Store(true)
	require.ErrorIs(t, l.Sync(context.Background()), errStoreDown)
	var granted int64 = 1000
	for i := 0; i < 20_000; i++ {
		if tr.TrackOperation() != nil {
			break
		}
		granted++
	}
	s := acct.Stats()
	assert.True(t, s.Fleet.Fallback)
	assert.Positive(t, s.Fleet.SyncErrors)
	assert.Equal(t, errStoreDown.Error(), s.Fleet.LastError)
	assert.Greater(t, granted, int64(1000), "keeps serving from its lease and the fallback share")
	assert.LessOrEqual(t, granted, int64(limit), "within bounds")
	tr.End()

	shared.down.Store(false)
	require.NoError(t, l.Sync(context.Background()))
	require.NoError(t, l.Close(context.Background()))
	c, _ := shared.Load(context.Background(), "t")
	assert.Equal(t, granted, c.Operations, "nothing lost, nothing double-counted")
	assert.Equal(t, int64(1), c.Evaluations)
}

func TestFleetFailClosedAndFailOpen(t *testing.T) {
	for _, tc := range []struct {
		policy FailurePolicy
		wantOK bool
	}{{FailClosed, false}, {FailOpen, true}} {
		t.Run(string(tc.policy), func(t *testing.T) {
			shared := &flakyStore{Store: store.NewMemory()}
			shared.down.Store(true)
			l := newFleetLedger(t, shared, "r1", AccountLimits{MaxTotalOperations: 10}, WithFailurePolicy(tc.policy), WithLeaseWait(time.Millisecond))
			_ = l.Sync(context.Background())
			tr, err := l.Account("t").Begin(Unlimited())
			require.NoError(t, err)
			err = tr.TrackOperations(5)
			if tc.wantOK {
				assert.NoError(t, err)
			} else {
				assert.ErrorIs(t, err, ErrLimitExceeded)
			}
			tr.End()
		})
	}
}

func TestFleetRemoveStillReports(t *testing.T) {
	shared := store.NewMemory()
	l := newFleetLedger(t, shared, "r1", AccountLimits{})
	tr, _ := l.Account("gone").Begin(Unlimited())
	require.NoError(t, tr.TrackOperations(42))
	tr.End()
	l.Remove("gone")
	require.NoError(t, l.Sync(context.Background()))
	c, _ := shared.Load(context.Background(), "gone")
	assert.Equal(t, int64(42), c.Operations)
	l.mu.RLock()
	assert.Empty(t, l.fleet.retired, "forgotten once reported")
	l.mu.RUnlock()
}

func TestFleetCloseIsFinal(t *testing.T) {
	shared := store.NewMemory()
	l := newFleetLedger(t, shared, "r1", AccountLimits{MaxTotalOperations: 1000})
	tr, _ := l.Account("t").Begin(Unlimited())
	require.NoError(t, tr.TrackOperations(10))
	tr.End()
	require.NoError(t, l.Close(context.Background()))
	require.NoError(t, l.Close(context.Background()), "idempotent")
	_, err := l.Account("t").Begin(Unlimited())
	assert.ErrorIs(t, err, ErrClosed)
	assert.ErrorIs(t, l.Sync(context.Background()), ErrClosed)
	// The final report gave the lease back: another replica gets it all.
	l2 := newFleetLedger(t, shared, "r2", AccountLimits{MaxTotalOperations: 1000})
	assert.Equal(t, int64(990), hammer(t, l2, 2))
}

func TestLedgerOptionErrors(t *testing.T) {
	for _, o := range []LedgerOption{WithStore(nil), WithReplica(""), WithSyncInterval(0),
		WithFailurePolicy("fail_sometimes"), WithLeaseWait(-1)} {
		l, err := NewLedger(AccountLimits{}, o)
		assert.ErrorIs(t, err, ErrInvalidArgument, "reported at construction")
		assert.Nil(t, l)
	}
	var in Ledger
	assert.NoError(t, in.Sync(context.Background()), "no shared: nothing to do")
}

func TestFleetCloseRetriesAfterStoreFailure(t *testing.T) {
	shared := &flakyStore{Store: store.NewMemory()}
	l := newFleetLedger(t, shared, "r1", AccountLimits{})
	tr, _ := l.Account("t").Begin(Unlimited())
	require.NoError(t, tr.TrackOperations(42))
	tr.End()
	shared.down.Store(true)
	require.ErrorIs(t, l.Close(context.Background()), errStoreDown)
	shared.down.Store(false)
	require.NoError(t, l.Sync(context.Background()), "Sync retries the final report")
	c, _ := shared.Load(context.Background(), "t")
	assert.Equal(t, int64(42), c.Operations)
	assert.ErrorIs(t, l.Sync(context.Background()), ErrClosed)
	require.NoError(t, l.Close(context.Background()))
}

func TestFleetCloseFreezesLiveRuns(t *testing.T) {
	shared := store.NewMemory()
	l := newFleetLedger(t, shared, "r1", AccountLimits{MaxTotalOperations: 1000})
	tr, err := l.Account("t").Begin(Unlimited())
	require.NoError(t, err)
	require.NoError(t, tr.TrackOperations(5))
	require.NoError(t, tr.TrackCall())
	require.NoError(t, l.Close(context.Background()))
	assert.ErrorIs(t, tr.TrackOperations(100), ErrClosed)
	assert.ErrorIs(t, tr.TrackCall(), ErrClosed, "unleased resources are frozen too")
	tr.End()
	c, _ := shared.Load(context.Background(), "t")
	assert.Equal(t, int64(5), c.Operations)
	assert.Equal(t, int64(1), c.Calls)
}

func TestFleetRemoveThenReopenRevives(t *testing.T) {
	shared := &flakyStore{Store: store.NewMemory()}
	l := newFleetLedger(t, shared, "r1", AccountLimits{})
	old := l.Account("t")
	tr, _ := old.Begin(Unlimited())
	require.NoError(t, tr.TrackOperations(10))
	tr.End()
	shared.down.Store(true)
	require.Error(t, l.Sync(context.Background()))
	l.Remove("t")
	assert.Same(t, old, l.Account("t"), "reopened before it was reported: the same account")
	shared.down.Store(false)
	tr, _ = l.Account("t").Begin(Unlimited())
	require.NoError(t, tr.TrackOperations(5))
	tr.End()
	require.NoError(t, l.Sync(context.Background())) // the pending report, resent as it was
	require.NoError(t, l.Sync(context.Background())) // then what came after it
	c, _ := shared.Load(context.Background(), "t")
	assert.Equal(t, int64(15), c.Operations)
	assert.Equal(t, int64(2), c.Evaluations)
}

func TestFleetRetiredWithCPUIsForgotten(t *testing.T) {
	shared := store.NewMemory()
	l := newFleetLedger(t, shared, "r1", AccountLimits{})
	_, err := Run(context.Background(), Unlimited(), func(ctx context.Context) error {
		return FromContext(ctx).AddCPUTime(1500 * time.Nanosecond)
	}, WithAccount(l.Account("t")))
	require.NoError(t, err)
	l.Remove("t")
	require.NoError(t, l.Sync(context.Background()))
	l.mu.RLock()
	assert.Empty(t, l.fleet.retired)
	l.mu.RUnlock()
}

// A report the store ignored as stale (another report with a greater Seq
// was applied for the same replica and tenant) is sent again, not dropped.
func TestFleetStaleReportIsResent(t *testing.T) {
	shared := store.NewMemory()
	_, err := shared.Sync(context.Background(), store.SyncRequest{Replica: "r1", LeaseTTL: time.Minute,
		Tenants: []store.TenantSync{{Tenant: "t", Seq: 1 << 62, Used: store.Totals{Operations: 7}}}})
	require.NoError(t, err)
	l := newFleetLedger(t, shared, "r1", AccountLimits{})
	tr, _ := l.Account("t").Begin(Unlimited())
	require.NoError(t, tr.TrackOperations(3))
	tr.End()
	_ = l.Sync(context.Background()) // ignored as stale, renumbered
	require.NoError(t, l.Sync(context.Background()))
	c, _ := shared.Load(context.Background(), "t")
	assert.Equal(t, int64(10), c.Operations)
}

// The zero MemoryStore is an empty store that ledgers can share.
func TestZeroMemoryStoreIsUsable(t *testing.T) {
	var shared store.Memory
	l := newFleetLedger(t, &shared, "r1", AccountLimits{MaxTotalOperations: 100})
	tr, err := l.Account("t").Begin(Unlimited())
	require.NoError(t, err)
	require.NoError(t, tr.TrackOperations(42))
	tr.End()
	require.NoError(t, l.Sync(context.Background()))
	c, err := shared.Load(context.Background(), "t")
	require.NoError(t, err)
	assert.Equal(t, int64(42), c.Operations)
}
