package reslimit

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/reslimit/reslimit/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Regression tests of issue 10: the fleet keeps its promises under faults.

// countingStore counts Sync calls and the tenants they carry, and can be
// slowed down (as a store across a network is) and reset (as a Redis
// restarted without its data is).
type countingStore struct {
	mu      sync.Mutex
	mem     *store.Memory
	delay   time.Duration
	calls   atomic.Int64
	tenants atomic.Int64
}

func newCountingStore() *countingStore { return &countingStore{mem: store.NewMemory()} }

func (s *countingStore) shared() *store.Memory {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mem
}

// reset loses everything the store held.
func (s *countingStore) reset() {
	s.mu.Lock()
	s.mem = store.NewMemory()
	s.mu.Unlock()
}

func (s *countingStore) Sync(ctx context.Context, req store.SyncRequest) (store.SyncResponse, error) {
	s.calls.Add(1)
	s.tenants.Add(int64(len(req.Tenants)))
	if s.delay > 0 {
		time.Sleep(s.delay) // the round trip's latency (set only in synctest bubbles: fake time)
	}
	return s.shared().Sync(ctx, req)
}

func (s *countingStore) Load(ctx context.Context, tenant string) (store.Totals, error) {
	return s.shared().Load(ctx, tenant)
}

// Item 1: a charge that finds no lease yet waits for it (within
// WithLeaseWait) instead of being refused while the lease is in flight.
func TestFleetNoFalseRefusalsAtStartup(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		shared := newCountingStore()
		shared.delay = 2 * time.Millisecond // a round trip to the shared
		limits := AccountLimits{MaxTotalOperations: 1_000_000_000_000}
		var refusals atomic.Int64
		var last atomic.Value
		var wg sync.WaitGroup
		for _, id := range []string{"r1", "r2"} {
			l := mustLedger(t, limits, WithStore(shared), WithReplica(id), WithSyncInterval(time.Second))
			for range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range 10 {
						tr, err := l.Account("t").Begin(Unlimited())
						if err != nil {
							refusals.Add(1)
							last.Store(err)
							continue
						}
						for range 5000 {
							if err := tr.TrackOperation(); err != nil {
								refusals.Add(1)
								last.Store(err)
								break
							}
						}
						tr.End()
					}
				}()
			}
			defer func() { require.NoError(t, l.Close(context.Background())) }()
		}
		wg.Wait()
		assert.Zero(t, refusals.Load(), "runs refused with 0.00001%% of the quota used; last: %v", last.Load())
	})
}

// Item 2: a replica loads a tenant's committed totals when it first opens
// it; a tenant it could never load gets a small fallback, not a tenth of
// its limit.
func TestFleetLoadsTotalsOnOpen(t *testing.T) {
	shared := &flakyStore{Store: store.NewMemory()}
	const limit = 10_000
	old := newFleetLedger(t, shared, "old", AccountLimits{MaxTotalOperations: limit})
	assert.Equal(t, int64(limit), hammer(t, old, 2))
	require.NoError(t, old.Close(context.Background()))

	fresh := newFleetLedger(t, shared, "fresh", AccountLimits{MaxTotalOperations: limit}, WithSyncInterval(time.Hour))
	s := fresh.Account("t").Stats()
	assert.Equal(t, int64(limit), s.Operations, "the committed totals, before any sync")
	assert.True(t, s.Exhausted)
	assert.True(t, s.Fleet.Loaded)

	// A pod started during an outage: it could load nothing.
	shared.down.Store(true)
	for i := range 3 {
		pod := newFleetLedger(t, shared, "pod-"+string(rune('a'+i)), AccountLimits{MaxTotalOperations: limit}, WithLeaseWait(time.Millisecond))
		got := hammer(t, pod, 2)
		assert.LessOrEqual(t, got, int64(limit/100), "a never-loaded tenant gets at most 1%% of its limit")
		assert.False(t, pod.Account("t").Stats().Fleet.Loaded)
		shared.down.Store(false)
		require.NoError(t, pod.Close(context.Background()))
		shared.down.Store(true)
	}
	shared.down.Store(false)
}

// Item 3: near the limit, leases too small for the charges that wait are
// given back, so the fleet reaches the limit; a tenant at its limit costs
// the store about one call per replica per sync interval.
func TestFleetNearTheLimitReachesItAndBacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const limit, charge = 10_000, 7
		const interval = 100 * time.Millisecond
		shared := newCountingStore()
		// The fleet has used 9,989: 11 are left, and each replica's first
		// lease is a quarter of that at most (2), too small for a charge.
		_, err := shared.Sync(context.Background(), store.SyncRequest{Replica: "earlier", Final: true,
			Tenants: []store.TenantSync{{Tenant: "t", Seq: 1, Used: store.Totals{Operations: limit - 11}}}})
		require.NoError(t, err)
		granted := atomic.Int64{}
		granted.Store(limit - 11)
		var ledgers []*Ledger
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for _, id := range []string{"r1", "r2", "r3"} {
			l := mustLedger(t, AccountLimits{MaxTotalOperations: limit}, WithStore(shared), WithReplica(id), WithSyncInterval(interval))
			ledgers = append(ledgers, l)
			for range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						tr, err := l.Account("t").Begin(Unlimited())
						if err == nil {
							if tr.TrackOperations(charge) == nil {
								granted.Add(charge)
							}
							tr.End()
						}
						time.Sleep(time.Millisecond) // a client's next request, 1ms later on the fake clock
					}
				}()
			}
		}
		// Within about an interval the fleet grants all it can.
		start := time.Now()
		for granted.Load() <= limit-charge && time.Since(start) < 30*interval {
			time.Sleep(time.Millisecond) // how long it takes is measured on the fake clock
		}
		took := time.Since(start)
		startCalls := shared.calls.Load()
		t.Logf("reached %d after %v, %d shared calls", granted.Load(), took, startCalls)
		assert.Greater(t, granted.Load(), int64(limit-charge), "the fleet stalls short of the limit")
		assert.LessOrEqual(t, took, 2*interval, "a charge that fits in what is left waits for leases to lapse")
		assert.LessOrEqual(t, granted.Load(), int64(limit))
		// At the limit, with clients still knocking every millisecond.
		calls := shared.calls.Load()
		time.Sleep(10 * interval) // ten sync intervals of the fake clock
		perReplicaPerInterval := float64(shared.calls.Load()-calls) / 3 / 10
		t.Logf("granted %d of %d; %.1f shared calls per replica per interval at the limit", granted.Load(), limit, perReplicaPerInterval)
		assert.LessOrEqual(t, perReplicaPerInterval, 1.5, "a tenant at its limit storms the store")
		close(stop)
		wg.Wait()
		for _, l := range ledgers {
			require.NoError(t, l.Close(context.Background()))
		}
		c, _ := shared.Load(context.Background(), "t")
		assert.Equal(t, granted.Load(), c.Operations)
	})
}

// Item 4: a replica killed without Close: its lease still counts against
// the quota after it expires (it may have used it), and the bill shows
// only what it reported.
func TestFleetCrashedReplicasLeaseStaysCounted(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	shared := store.NewMemoryAt(func() time.Time { return time.Unix(0, now.Load()) })
	const limit = 10_000
	dead := newFleetLedger(t, shared, "dead", AccountLimits{MaxTotalOperations: limit}, withLeaseTTL(time.Second), WithSyncInterval(time.Hour))
	tr, err := dead.Account("t").Begin(Unlimited())
	require.NoError(t, err)
	require.NoError(t, tr.TrackOperations(100))
	tr.End()
	require.NoError(t, dead.Sync(context.Background()))
	lease := dead.Account("t").Stats().Fleet.Lease.Operations
	require.Positive(t, lease)
	// Its syncer dies (it can no longer report), it spends its lease, and
	// it dies.
	dead.fleet.stopLoop()
	<-dead.fleet.done
	tr, err = dead.Account("t").Begin(Unlimited())
	require.NoError(t, err)
	var unreported int64
	for tr.TrackOperation() == nil {
		unreported++
	}
	dead.fleet.closed.Store(true)
	assert.Equal(t, lease, unreported)

	now.Add(int64(time.Hour)) // long past its lease
	live := newFleetLedger(t, shared, "live", AccountLimits{MaxTotalOperations: limit})
	got := hammer(t, live, 2)
	assert.LessOrEqual(t, 100+unreported+got, int64(limit), "the fleet passed the limit: %d reported + %d unreported + %d", 100, unreported, got)
	assert.GreaterOrEqual(t, 100+got, int64(limit)-lease, "what is stranded is at most the dead replica's lease")
	require.NoError(t, live.Close(context.Background()))
	c, _ := shared.Load(context.Background(), "t")
	assert.Equal(t, 100+got, c.Operations, "the bill shows what was reported")
}

// Item 5: a store that lost its data (a Redis restarted without
// persistence) is detected, reported and restored from what the live
// replicas reported.
func TestFleetStoreResetIsDetectedAndRestored(t *testing.T) {
	shared := newCountingStore()
	const limit = 50_000
	var logs bytes.Buffer
	var logMu sync.Mutex
	logger := slog.New(slog.NewTextHandler(lockedWriter{&logs, &logMu}, nil))
	l1 := newFleetLedger(t, shared, "r1", AccountLimits{MaxTotalOperations: limit}, WithLogger(logger))
	l2 := newFleetLedger(t, shared, "r2", AccountLimits{MaxTotalOperations: limit})
	for _, l := range []*Ledger{l1, l2} {
		tr, err := l.Account("t").Begin(Unlimited())
		require.NoError(t, err)
		require.NoError(t, tr.TrackOperations(15_000))
		tr.End()
		require.NoError(t, l.Sync(context.Background()))
	}
	c, _ := shared.Load(context.Background(), "t")
	require.Equal(t, int64(30_000), c.Operations)

	shared.reset()
	require.Eventually(t, func() bool {
		c, _ := shared.Load(context.Background(), "t")
		return c.Operations == 30_000
	}, 10*time.Second, 5*time.Millisecond, "the live replicas report again what they had reported")
	s := l1.Account("t").Stats()
	assert.Positive(t, s.Fleet.StoreResets)
	assert.False(t, s.Fleet.LastStoreReset.IsZero())
	logMu.Lock()
	assert.Contains(t, logs.String(), "lost reports")
	logMu.Unlock()

	got := hammer(t, l1, 2) + hammer(t, l2, 2)
	assert.LessOrEqual(t, 30_000+got, int64(limit), "the quota came back")
	require.NoError(t, l1.Close(context.Background()))
	require.NoError(t, l2.Close(context.Background()))
	c, _ = shared.Load(context.Background(), "t")
	assert.Equal(t, 30_000+got, c.Operations, "nothing lost, nothing doubled")
}

type lockedWriter struct {
	b  *bytes.Buffer
	mu *sync.Mutex
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// Item 6: FailOpen stops enforcing cumulative limits while the store
// fails, also on a replica that synced; FleetStats reads as numbers.
func TestFleetFailOpenFailsOpen(t *testing.T) {
	shared := &flakyStore{Store: store.NewMemory()}
	l := newFleetLedger(t, shared, "r1", AccountLimits{MaxTotalOperations: 100, MaxEvaluations: 1},
		WithFailurePolicy(FailOpen), WithLeaseWait(time.Second))
	acct := l.Account("t")
	tr, err := acct.Begin(Unlimited())
	require.NoError(t, err)
	require.NoError(t, tr.TrackOperations(100))
	tr.End()
	require.NoError(t, l.Sync(context.Background()))
	require.True(t, exhausted(acct))

	shared.down.Store(true)
	require.Error(t, l.Sync(context.Background()))
	tr, err = acct.Begin(Unlimited())
	require.NoError(t, err, "FailOpen: no cumulative limit while the shared fails")
	assert.NoError(t, tr.TrackOperations(50))
	tr.End()
	s := acct.Stats()
	assert.True(t, s.Fleet.Fallback)
	for _, v := range []int64{s.Fleet.Lease.Operations, s.Fleet.Lease.Evaluations, s.Fleet.Lease.Calls, s.Fleet.Lease.TotalMemory} {
		assert.Less(t, v, int64(1_000_000), "FleetStats.Lease: %+v", s.Fleet.Lease)
	}

	shared.down.Store(false)
	require.NoError(t, l.Sync(context.Background()))
	_, err = acct.Begin(Unlimited())
	assert.ErrorIs(t, err, ErrLimitExceeded, "enforced again once the shared answers")
	require.NoError(t, l.Close(context.Background()))
	c, _ := shared.Load(context.Background(), "t")
	assert.Equal(t, int64(150), c.Operations, "billed in full")
	assert.Equal(t, int64(2), c.Evaluations)
}

// Item 3, the stall itself: 11 operations are left, two replicas hold
// leases of 2, and a charge of 9 waits on one of them. It is granted
// within about a sync interval, and waiting for it does not storm the
// store.
func TestFleetChargeThatFitsIsGrantedNearTheLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const limit = 10_000
		const interval = 100 * time.Millisecond
		shared := newCountingStore()
		_, err := shared.Sync(context.Background(), store.SyncRequest{Replica: "earlier", Final: true,
			Tenants: []store.TenantSync{{Tenant: "t", Seq: 1, Used: store.Totals{Operations: limit - 11}}}})
		require.NoError(t, err)
		var ledgers []*Ledger
		for _, id := range []string{"r1", "r2"} {
			l := mustLedger(t, AccountLimits{MaxTotalOperations: limit}, WithStore(shared), WithReplica(id), WithSyncInterval(interval))
			ledgers = append(ledgers, l)
			l.Account("t")
			require.NoError(t, l.Sync(context.Background()))
			require.Equal(t, int64(2), l.Account("t").Stats().Fleet.Lease.Operations)
		}
		calls := shared.calls.Load()
		start := time.Now()
		var ok bool
		for !ok && time.Since(start) < 10*interval {
			tr, err := ledgers[0].Account("t").Begin(Unlimited())
			require.NoError(t, err)
			ok = tr.TrackOperations(9) == nil
			tr.End()
			time.Sleep(time.Millisecond) // a client's next try, on the fake clock
		}
		took := time.Since(start)
		t.Logf("granted: %v after %v, %d shared calls", ok, took, shared.calls.Load()-calls)
		assert.True(t, ok, "a charge of 9 with 11 left is never granted")
		assert.LessOrEqual(t, took, 2*interval)
		assert.LessOrEqual(t, shared.calls.Load()-calls, int64(10))
		for _, l := range ledgers {
			require.NoError(t, l.Close(context.Background()))
		}
	})
}

// A Monitor watching a store-backed ledger sends StoreReset when the store
// lost this replica's reports (and the replica reported them again), with
// how much was lost; once per loss, not every poll.
func TestMonitorSeesStoreResets(t *testing.T) {
	shared := newCountingStore()
	l := newFleetLedger(t, shared, "r1", AccountLimits{MaxTotalOperations: 50_000})
	tr, err := l.Account("t").Begin(Unlimited())
	require.NoError(t, err)
	require.NoError(t, tr.TrackOperations(15_000))
	tr.End()
	require.NoError(t, l.Sync(context.Background()))

	m := newTestMonitor(t, MonitorConfig{})
	require.NoError(t, m.RegisterLedger("tenant/", l))
	assert.Empty(t, pollKinds(t, m))

	shared.reset()
	require.Eventually(t, func() bool {
		c, _ := shared.Load(context.Background(), "t")
		return c.Operations == 15_000
	}, 10*time.Second, 5*time.Millisecond, "the replica reports again what it had reported")
	m.Poll()
	var resets []Event
	for _, ev := range drain(t, m) {
		if ev.Kind == StoreReset {
			resets = append(resets, ev)
		}
	}
	require.NotEmpty(t, resets)
	var ops int64
	for _, ev := range resets {
		assert.Equal(t, "tenant/t", ev.Component)
		if ev.Resource == Operations {
			ops += ev.Used
		}
	}
	assert.Equal(t, int64(15_000), ops, "the operations the shared lost")
	assert.Empty(t, pollKinds(t, m), "once per loss")
	assert.Positive(t, m.Stats().StoreResets)
	require.NoError(t, l.Close(context.Background()))
}

// gateStore holds the first Sync in the store until gate is closed, and
// answers every later one after a delay (a slow store).
type gateStore struct {
	*store.Memory
	once    sync.Once
	entered chan struct{}
	gate    chan struct{}
	delay   time.Duration
}

func (g *gateStore) Sync(ctx context.Context, req store.SyncRequest) (store.SyncResponse, error) {
	first := false
	g.once.Do(func() {
		first = true
		close(g.entered)
		<-g.gate
	})
	if !first {
		time.Sleep(g.delay)
	}
	return g.Memory.Sync(ctx, req)
}

// A charge waiting for a lease past WithLeaseWait, while the lease it
// asked for is on its way, is woken by an answer that brings none (the
// period closed meanwhile, so the answer's lease is no good): it waits on
// for the sync that follows, within the sync timeout, and is not refused
// (it was: the extension had no deadline of its own).
func TestFleetChargeWaitsOnPastAnAnswerWithoutLease(t *testing.T) {
	gs := &gateStore{Memory: store.NewMemory(), entered: make(chan struct{}), gate: make(chan struct{}), delay: 50 * time.Millisecond}
	l := newFleetLedger(t, gs, "r1", AccountLimits{MaxTotalOperations: 1_000_000},
		WithLeaseWait(time.Millisecond), withSyncTimeout(10*time.Second))
	tr, err := l.Account("acme").Begin(Limits{})
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- tr.TrackOperation() }()
	<-gs.entered // the sync that carries the charge's lease request is in the store
	// (Give the charge time to pass its 1ms WithLeaseWait and wait on for
	// the lease in flight; if it has not, the test only checks less.)
	time.Sleep(50 * time.Millisecond)
	l.ClosePeriod()
	close(gs.gate)
	require.NoError(t, <-done, "a false refusal: the lease came with the next sync")
	tr.End()
}
