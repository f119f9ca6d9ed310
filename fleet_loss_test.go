package reslimit

import (
	"context"
	"sync"
	"testing"

	"github.com/reslimit/reslimit/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// wipeableStore is a MemoryStore that can lose all its data, as a Redis
// restarted without persistence does; it keeps periods (PeriodLoader).
type wipeableStore struct {
	mu  sync.Mutex
	mem *store.Memory
}

func (s *wipeableStore) shared() *store.Memory {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mem
}

func (s *wipeableStore) wipe() {
	s.mu.Lock()
	s.mem = store.NewMemory()
	s.mu.Unlock()
}

func (s *wipeableStore) Sync(ctx context.Context, req store.SyncRequest) (store.SyncResponse, error) {
	return s.shared().Sync(ctx, req)
}

func (s *wipeableStore) Load(ctx context.Context, tenant string) (store.Totals, error) {
	return s.shared().Load(ctx, tenant)
}

func (s *wipeableStore) LoadPeriod(ctx context.Context, tenant string, n uint64) (store.Period, error) {
	return s.shared().LoadPeriod(ctx, tenant, n)
}

// The store loses its data after a period closed (issue 19.5): the
// replicas report again what they had reported for the open period, and
// only that, so the open period's totals and quota start from what was
// charged in it; the closed period reads as lost, never final, and no
// unit of it is billed to the open period.
func TestFleetStoreLossAfterACloseBillsNothingToTheOpenPeriod(t *testing.T) {
	ctx := context.Background()
	shared := &wipeableStore{mem: store.NewMemory()}
	lim := AccountLimits{MaxTotalOperations: 1000}
	r1 := newFleetLedger(t, shared, "r1", lim)
	r2 := newFleetLedger(t, shared, "r2", lim)
	syncAll := func() {
		for range 3 {
			require.NoError(t, r1.Sync(ctx))
			require.NoError(t, r2.Sync(ctx))
		}
	}
	chargeOps(t, r1.Account("beta"), 300)
	chargeOps(t, r2.Account("beta"), 200)
	syncAll()
	lines := r1.ClosePeriod()
	require.Len(t, lines, 1)
	assert.Equal(t, int64(300), lines[0].Operations)
	syncAll()
	require.Equal(t, uint64(2), r2.Account("beta").Stats().Period, "r2 followed the close")
	chargeOps(t, r1.Account("beta"), 50)
	chargeOps(t, r2.Account("beta"), 40)
	syncAll()
	sp, err := shared.LoadPeriod(ctx, "beta", 1)
	require.NoError(t, err)
	require.Equal(t, int64(500), sp.Operations)
	require.True(t, sp.Final)

	shared.wipe()
	syncAll()
	assert.Positive(t, r1.Account("beta").Stats().Fleet.StoreResets)

	open, err := shared.LoadPeriod(ctx, "beta", 2)
	require.NoError(t, err)
	assert.Equal(t, uint64(2), open.Open)
	assert.Equal(t, int64(90), open.Operations, "the open period holds what was charged in it, no more")
	closed, err := shared.LoadPeriod(ctx, "beta", 1)
	require.NoError(t, err)
	assert.True(t, closed.Lost, "the closed period lost its reports")
	assert.False(t, closed.Final, "a period that lost reports is never final")

	// The open period's quota starts from what was charged in it: 910
	// more fit, fleet-wide, and no more.
	granted := hammerTenant(r1.Account("beta"), r2.Account("beta"))
	assert.Equal(t, int64(910), granted)
	syncAll()
	open, err = shared.LoadPeriod(ctx, "beta", 2)
	require.NoError(t, err)
	assert.Equal(t, int64(1000), open.Operations)

	// Later reports land where they were charged: no unit of period 1
	// reaches period 2 after the loss either.
	st := r1.Account("beta").Stats()
	assert.Equal(t, int64(1000), st.Operations)
}

// hammerTenant charges one operation at a time on each account in turn
// until both refuse, and returns how many were granted.
func hammerTenant(accts ...*Account) int64 {
	var n int64
	for {
		progress := false
		for _, a := range accts {
			tr, err := a.Begin(Limits{})
			if err != nil {
				continue
			}
			for tr.TrackOperation() == nil {
				n++
				progress = true
			}
			tr.End()
		}
		if !progress {
			return n
		}
	}
}
