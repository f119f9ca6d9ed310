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

// testFleetPeriods runs the fleet-wide period scenario on store: r1
// closes period 1 while r2 holds usage charged in it; r2 learns of the
// close from the store and closes its own; every unit is billed to the
// period it was charged in, period 1 is final once both sent their final
// reports, and the fleet-wide quota starts over in period 2.
func testFleetPeriods(t *testing.T, shared interface {
	store.Store
	store.PeriodLoader
}) {
	ctx := context.Background()
	lim := AccountLimits{MaxTotalOperations: 100}
	r1 := newFleetLedger(t, shared, "r1", lim)
	r2 := newFleetLedger(t, shared, "r2", lim)
	chargeOps(t, r1.Account("acme"), 60)
	chargeOps(t, r2.Account("acme"), 30)
	require.NoError(t, r1.Sync(ctx))

	lines := r1.ClosePeriod()
	require.Len(t, lines, 1)
	assert.Equal(t, uint64(1), lines[0].Number)
	assert.Equal(t, int64(60), lines[0].Operations)
	require.NoError(t, r1.Sync(ctx)) // the shared's period moves to 2
	sp, err := shared.LoadPeriod(ctx, "acme", 0)
	require.NoError(t, err)
	assert.Equal(t, uint64(2), sp.Open)

	// r2 reports its 30 after the close: they are billed to period 1, and
	// r2 closes its period 1 too.
	require.NoError(t, r2.Sync(ctx))
	require.NoError(t, r2.Sync(ctx))
	assert.Equal(t, uint64(2), r2.Account("acme").Stats().Period)
	kept := r2.Periods()
	require.Len(t, kept, 1)
	assert.Equal(t, uint64(1), kept[0].Number)
	assert.Equal(t, int64(30), kept[0].Operations)
	sp, err = shared.LoadPeriod(ctx, "acme", 1)
	require.NoError(t, err)
	assert.Equal(t, store.Period{Tenant: "acme", Number: 1, Open: 2, Totals: store.Totals{Operations: 60 + 30, Evaluations: 2}, Final: true},
		withoutCPU(sp))

	// The quota starts over: 90 were used in period 1, and 60 more fit in
	// period 2 (r2 holds part of its quota as a lease).
	chargeOps(t, r1.Account("acme"), 60)
	require.NoError(t, r1.Sync(ctx))
	require.NoError(t, r2.Sync(ctx))
	sp, err = shared.LoadPeriod(ctx, "acme", 2)
	require.NoError(t, err)
	assert.Equal(t, int64(60), sp.Operations)
	assert.False(t, sp.Final, "the open period")
}

func withoutCPU(sp store.Period) store.Period {
	sp.CPUTime = 0
	return sp
}

func TestFleetPeriodsMemoryStore(t *testing.T) {
	testFleetPeriods(t, store.NewMemory())
}

// A close that the store makes (another replica closed the tenant's
// period) reaches WithPeriodClosed like a scheduled one, from a goroutine
// of the ledger, so that the hook may use the ledger (here, Sync); and
// Close delivers the closes its own final report makes before it returns.
func TestFleetStoreClosesReachTheHook(t *testing.T) {
	ctx := context.Background()
	shared := store.NewMemory()
	lim := AccountLimits{MaxTotalOperations: 100}
	manual := WithSyncInterval(time.Hour) // syncs only when the test says
	r1 := newFleetLedger(t, shared, "r1", lim, manual)

	var mu sync.Mutex
	var got [][]Period
	delivered := make(chan struct{}, 4)
	var r2 *Ledger
	r2 = newFleetLedger(t, shared, "r2", lim, manual, WithPeriodClosed(func(lines []Period) {
		// The hook may use the ledger (during Close, Sync waits for Close's
		// final report, or says the ledger is closed).
		if err := r2.Sync(ctx); err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("Sync from the hook: %v", err)
		}
		mu.Lock()
		got = append(got, lines)
		mu.Unlock()
		delivered <- struct{}{}
	}))
	chargeOps(t, r1.Account("acme"), 60)
	chargeOps(t, r2.Account("acme"), 30)
	require.NoError(t, r1.Sync(ctx))
	r1.ClosePeriod()
	require.NoError(t, r1.Sync(ctx)) // the shared's period moves to 2
	require.NoError(t, r2.Sync(ctx)) // r2 learns of the close and closes its own
	select {
	case <-delivered:
	case <-time.After(10 * time.Second):
		t.Fatal("the shared's close never reached the hook")
	}
	mu.Lock()
	require.Len(t, got, 1)
	require.Len(t, got[0], 1)
	assert.Equal(t, uint64(1), got[0][0].Number)
	assert.Equal(t, int64(30), got[0][0].Operations)
	mu.Unlock()

	// r3 learns of the next close only from Close's final report.
	var r3Lines [][]Period
	r3 := newFleetLedger(t, shared, "r3", lim, manual, WithPeriodClosed(func(lines []Period) {
		r3Lines = append(r3Lines, lines) // Close waits for the hook: no lock needed after it
	}))
	chargeOps(t, r3.Account("acme"), 5)
	require.NoError(t, r3.Sync(ctx))
	r1.ClosePeriod()
	require.NoError(t, r1.Sync(ctx)) // period 3 opens
	require.NoError(t, r3.Close(ctx))
	require.Len(t, r3Lines, 1, "Close delivered its final report's close")
	assert.Equal(t, uint64(2), r3Lines[0][0].Number)
	assert.Equal(t, int64(5), r3Lines[0][0].Operations)
}

// periodFaultStore is a MemoryStore (which keeps periods) that can be
// taken down, and counts the final reports it is sent.
type periodFaultStore struct {
	*store.Memory
	down   atomic.Bool
	finals atomic.Int64
}

func (s *periodFaultStore) Sync(ctx context.Context, req store.SyncRequest) (store.SyncResponse, error) {
	if s.down.Load() {
		return store.SyncResponse{}, errStoreDown
	}
	if req.Final {
		s.finals.Add(1)
	}
	return s.Memory.Sync(ctx, req)
}

// A Close whose final report failed leaves the hook's goroutine running:
// the Sync that retries the report delivers the close it learns of, with
// no second Close.
func TestFleetHookAfterFailedClose(t *testing.T) {
	ctx := context.Background()
	mem := store.NewMemory()
	shared := &periodFaultStore{Memory: mem}
	manual := WithSyncInterval(time.Hour)
	r1 := newFleetLedger(t, mem, "r1", AccountLimits{}, manual)
	delivered := make(chan []Period, 4)
	r2 := newFleetLedger(t, shared, "r2", AccountLimits{}, manual,
		WithPeriodClosed(func(lines []Period) { delivered <- lines }))
	chargeOps(t, r2.Account("acme"), 7)
	require.NoError(t, r2.Sync(ctx))
	r1.Account("acme")
	r1.ClosePeriod()
	require.NoError(t, r1.Sync(ctx)) // the shared's period moves on

	shared.down.Store(true)
	require.ErrorIs(t, r2.Close(ctx), errStoreDown)
	shared.down.Store(false)
	require.NoError(t, r2.Sync(ctx), "the retry makes the final report")
	select {
	case lines := <-delivered:
		require.Len(t, lines, 1)
		assert.Equal(t, int64(7), lines[0].Operations)
	case <-time.After(10 * time.Second):
		t.Fatal("the close learnt by the retried final report never reached the hook")
	}
	require.NoError(t, r2.Close(ctx))
}

// A hook that calls Sync while Close makes its final report waits for
// that report instead of making a second one beside it.
func TestFleetHookSyncDuringCloseMakesNoSecondFinalReport(t *testing.T) {
	for range 10 {
		ctx := context.Background()
		mem := store.NewMemory()
		shared := &periodFaultStore{Memory: mem}
		manual := WithSyncInterval(time.Hour)
		r1 := newFleetLedger(t, mem, "r1", AccountLimits{}, manual)
		var r2 *Ledger
		r2 = newFleetLedger(t, shared, "r2", AccountLimits{}, manual, WithPeriodClosed(func([]Period) {
			if err := r2.Sync(ctx); err != nil && !errors.Is(err, ErrClosed) {
				t.Errorf("Sync from the hook: %v", err)
			}
		}))
		chargeOps(t, r2.Account("acme"), 3)
		require.NoError(t, r2.Sync(ctx))
		r1.Account("acme")
		r1.ClosePeriod()
		require.NoError(t, r1.Sync(ctx))
		require.NoError(t, r2.Close(ctx)) // learns of the close in its final report
		require.Equal(t, int64(1), shared.finals.Load(), "one final report")
	}
}
