package reslimit

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/reslimit/reslimit/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A live run that holds room but is idle for a while must keep its
// tenant's lease renewed; otherwise the store reclaims the lease, grants it
// to another replica, and the run's room takes the fleet past the limit.
func TestFleetIdleRunRoomOutlivesLease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const limit = 20_000
		shared := store.NewMemory()
		ttl := 40 * time.Millisecond
		l1 := newFleetLedger(t, shared, "r1", AccountLimits{MaxTotalOperations: limit}, withLeaseTTL(ttl))
		l2 := newFleetLedger(t, shared, "r2", AccountLimits{MaxTotalOperations: limit}, withLeaseTTL(ttl))
		tr, err := l1.Account("t").Begin(Unlimited())
		require.NoError(t, err)
		var used int64
		for i := 0; i < 3000; i++ { // grow the run's chunk
			require.NoError(t, tr.TrackOperation())
			used++
		}
		room := tr.room(mOps).Load()
		t.Logf("idle run holds %d ops of room", room)
		require.Positive(t, room)
		// The run waits (say, for an LLM answer) for ten lease TTLs on the
		// bubble's fake clock, the store's and the syncers' clock too; r1
		// never syncs "t" again.
		time.Sleep(10 * ttl)
		synctest.Wait()

		got2 := hammer(t, l2, 2)         // r2 gets everything the shared thinks is left
		for tr.TrackOperation() == nil { // the run resumes and spends its room
			used++
		}
		tr.End()
		require.NoError(t, l1.Close(context.Background()))
		require.NoError(t, l2.Close(context.Background()))
		c, _ := shared.Load(context.Background(), "t")
		t.Logf("r1 %d + r2 %d = %d, committed %d, limit %d", used, got2, used+got2, c.Operations, limit)
		assert.LessOrEqual(t, used+got2, int64(limit), "the fleet granted past the limit")
	})
}

// A removed tenant with nothing left to report is settled and forgotten by
// the background syncer, not kept in l.fleet.retired for ever.
func TestFleetRetiredIdleAccountNeverForgotten(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		shared := store.NewMemory()
		l := newFleetLedger(t, shared, "r1", AccountLimits{}, WithSyncInterval(5*time.Millisecond))
		tr, _ := l.Account("gone").Begin(Unlimited())
		require.NoError(t, tr.TrackOperations(1))
		tr.End()
		for s := l.Account("gone").Stats(); s.Fleet.Unreported.Operations != 0 || s.Fleet.Syncs == 0; s = l.Account("gone").Stats() {
			time.Sleep(5 * time.Millisecond) // a sync interval of the fake clock
		}
		l.Remove("gone")
		time.Sleep(200 * time.Millisecond) // 40 sync intervals of the fake clock
		synctest.Wait()
		l.mu.RLock()
		n := len(l.fleet.retired)
		l.mu.RUnlock()
		assert.Zero(t, n, "a removed, fully reported account stays in l.fleet.retired forever")
	})
}

// Close gives back the lease of a removed tenant too: it is settled only in
// the Final round.
func TestFleetCloseKeepsLeaseOfRemovedTenant(t *testing.T) {
	shared := store.NewMemory()
	l := newFleetLedger(t, shared, "r1", AccountLimits{MaxTotalOperations: 1000}, withLeaseTTL(time.Minute))
	tr, _ := l.Account("t").Begin(Unlimited())
	require.NoError(t, tr.TrackOperations(10))
	tr.End()
	require.NoError(t, l.Sync(context.Background()))
	l.Remove("t")
	require.NoError(t, l.Close(context.Background()))
	l2 := newFleetLedger(t, shared, "r2", AccountLimits{MaxTotalOperations: 1000})
	assert.Equal(t, int64(990), hammer(t, l2, 2), "Close gives back the allowance this replica holds")
}

// negStore records any report with a negative Used field (redisstore
// rejects such a request whole, with ErrInvalidArgument).
type negStore struct {
	store.Store
	mu  sync.Mutex
	neg []store.Totals
}

func (s *negStore) Sync(ctx context.Context, req store.SyncRequest) (store.SyncResponse, error) {
	for _, ts := range req.Tenants {
		u := ts.Used
		if u.Operations < 0 || u.Calls < 0 || u.TotalMemory < 0 || u.CPUTime < 0 || u.Evaluations < 0 {
			s.mu.Lock()
			s.neg = append(s.neg, u)
			s.mu.Unlock()
		}
	}
	return s.Store.Sync(ctx, req)
}

// syncWhileClean syncs l over and over for up to d, stopping early once a
// report with a negative Used has been seen.
func (s *negStore) syncWhileClean(l *Ledger, d time.Duration) {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); {
		_ = l.Sync(context.Background())
		s.mu.Lock()
		n := len(s.neg)
		s.mu.Unlock()
		if n > 0 {
			return
		}
	}
}

// A TrackMemory refused by the account's MaxMemory, racing with syncs,
// never makes a report with negative usage.
func TestFleetRefusedTrackMemoryNeverReportsNegativeUsage(t *testing.T) {
	shared := &negStore{Store: store.NewMemory()}
	l := newFleetLedger(t, shared, "r1", AccountLimits{MaxMemory: 10}, WithSyncInterval(time.Hour))
	tr, _ := l.Account("t").Begin(Unlimited())
	g, err := tr.AcquireMemory(10) // the tenant holds its MaxMemory
	require.NoError(t, err)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			_ = tr.TrackMemory(1) // refused with Memory: must change nothing
		}
	}()
	shared.syncWhileClean(l, time.Second)
	close(stop)
	wg.Wait()
	g.Release()
	tr.End()
	assert.Empty(t, shared.neg, "reports with negative Used")
}

// Concurrent CPU samples must never move a run's CPU time back, or a report
// would carry a negative CPUTime.
func TestFleetCPUSamplesNeverMoveBack(t *testing.T) {
	shared := &negStore{Store: store.NewMemory()}
	l := newFleetLedger(t, shared, "r1", AccountLimits{}, WithSyncInterval(time.Hour))
	tr, _ := l.Account("t").Begin(Unlimited())
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
					_ = tr.AddCPUTime(time.Microsecond)
				}
			}
		}()
	}
	shared.syncWhileClean(l, time.Second)
	close(stop)
	wg.Wait()
	tr.End()
	assert.Empty(t, shared.neg)
}

// With WithLeaseWait(0) a refusal for want of lease still asks the syncer
// for one, so an idle tenant whose lease lapsed is served again soon.
func TestFleetLeaseWaitZeroStillAsksForALease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		shared := store.NewMemory()
		l := newFleetLedger(t, shared, "r1", AccountLimits{MaxEvaluations: 100},
			WithSyncInterval(5*time.Millisecond), withLeaseTTL(20*time.Millisecond), WithLeaseWait(0))
		acct := l.Account("t")
		for acct.Stats().Fleet.Syncs == 0 {
			time.Sleep(time.Millisecond) // the fake clock moves on to the first sync
		}
		require.NoError(t, beginWithin(acct, time.Second), "never served at first")
		time.Sleep(100 * time.Millisecond) // idle on the fake clock: the lease is given back
		synctest.Wait()
		err := beginWithin(acct, 500*time.Millisecond)
		assert.NoError(t, err, "1 of 100 evaluations used, refused for 500ms")
	})
}

// beginWithin begins (and ends) a run on acct every 5ms of the clock until
// one is granted or d has passed, and returns the last refusal. In a
// synctest bubble, the clock is the bubble's fake one.
func beginWithin(acct *Account, d time.Duration) error {
	var last error
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		tr, err := acct.Begin(Unlimited())
		if err == nil {
			tr.End()
			return nil
		}
		last = err
	}
	return last
}
