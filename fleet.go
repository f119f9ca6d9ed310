package reslimit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// FailurePolicy says what a store-backed ledger's accounts do while the
// Store cannot be reached. Usage is counted locally in every case and
// reported when the store is back: billing is delayed, never lost, never
// doubled.
type FailurePolicy uint8

const (
	// FailLocal keeps serving from the allowance the replica holds until
	// its lease expires, and then (or once it is used up) from a
	// conservative fallback share: a tenth of what the tenant had left
	// fleet-wide when the outage began. The fleet can pass a limit by at
	// most those shares (plus the allowance runs already hold, at most a
	// chunk per run).
	FailLocal FailurePolicy = iota
	// FailOpen stops enforcing cumulative limits while the store fails.
	FailOpen
	// FailClosed refuses new allowance once the replica's lease has expired
	// while the store fails.
	FailClosed
)

func (p FailurePolicy) String() string {
	switch p {
	case FailLocal:
		return "fail_local"
	case FailOpen:
		return "fail_open"
	case FailClosed:
		return "fail_closed"
	}
	return fmt.Sprintf("FailurePolicy(%d)", uint8(p))
}

// WithStore makes the ledger keep its tenants' cumulative totals in s,
// shared with the other replicas that use the same store: a background
// syncer reports this replica's usage and leases allowance, while charges
// stay local and lock-free. Close the ledger to stop the syncer.
func WithStore(s Store) LedgerOption {
	return func(l *Ledger) {
		if s == nil {
			l.setErr(fmt.Errorf("%w: WithStore(nil)", ErrInvalidArgument))
		}
		l.store = s
	}
}

// WithReplica names this replica in the store (default: host name, process
// id and a random suffix). Every process sharing a store needs its own.
func WithReplica(id string) LedgerOption {
	return func(l *Ledger) {
		if id == "" {
			l.setErr(fmt.Errorf("%w: WithReplica(\"\")", ErrInvalidArgument))
		}
		l.replica = id
	}
}

// WithSyncInterval sets how often each tenant is synced with the store at
// least (default 1s). A tenant whose lease runs low is synced sooner.
func WithSyncInterval(d time.Duration) LedgerOption {
	return func(l *Ledger) {
		if d <= 0 {
			l.setErr(fmt.Errorf("%w: WithSyncInterval(%v): not positive", ErrInvalidArgument, d))
		}
		l.interval = d
	}
}

// WithLeaseTTL sets how long the store keeps allowance reserved for this
// replica without a sync (default: 3 sync intervals, at least 100ms). The
// allowance of a replica that stops without Close is reclaimed after it.
func WithLeaseTTL(d time.Duration) LedgerOption {
	return func(l *Ledger) {
		if d <= 0 {
			l.setErr(fmt.Errorf("%w: WithLeaseTTL(%v): not positive", ErrInvalidArgument, d))
		}
		l.ttl = d
	}
}

// WithFailurePolicy sets what accounts do while the store fails (default
// FailLocal).
func WithFailurePolicy(p FailurePolicy) LedgerOption {
	return func(l *Ledger) {
		if p > FailClosed {
			l.setErr(fmt.Errorf("%w: unknown %v", ErrInvalidArgument, p))
		}
		l.policy = p
	}
}

// WithSyncTimeout bounds one sync round trip (default 2s).
func WithSyncTimeout(d time.Duration) LedgerOption {
	return func(l *Ledger) {
		if d <= 0 {
			l.setErr(fmt.Errorf("%w: WithSyncTimeout(%v): not positive", ErrInvalidArgument, d))
		}
		l.syncTimeout = d
	}
}

// WithLeaseWait bounds how long a charge that finds its replica's
// allowance used up waits for the syncer to lease more before it is
// refused (default 100ms). The wait happens on the slow path only.
func WithLeaseWait(d time.Duration) LedgerOption {
	return func(l *Ledger) {
		if d < 0 {
			l.setErr(fmt.Errorf("%w: WithLeaseWait(%v): negative", ErrInvalidArgument, d))
		}
		l.leaseWait, l.leaseWaitSet = d, true
	}
}

func (l *Ledger) setErr(err error) {
	if l.err == nil {
		l.err = err
	}
}

// fleet is the store-backed part of a Ledger.
type fleet struct {
	store       Store
	replica     string
	interval    time.Duration
	ttl         time.Duration
	policy      FailurePolicy
	syncTimeout time.Duration
	leaseWait   time.Duration

	leaseWaitSet bool
	stopOnce     sync.Once
	finalDone    atomic.Bool

	seq      atomic.Uint64
	closed   atomic.Bool
	kick     chan struct{}
	stopLoop context.CancelFunc
	done     chan struct{}
	syncMu   sync.Mutex // one sync round at a time, so reports go out in order
	retired  []*Account // removed accounts with usage still to report; guarded by Ledger.mu
}

func (l *Ledger) startFleet() {
	if l.replica == "" {
		l.replica = defaultReplicaID()
	}
	if l.interval == 0 {
		l.interval = time.Second
	}
	if l.ttl == 0 {
		l.ttl = max(3*l.interval, 100*time.Millisecond)
	}
	if l.syncTimeout == 0 {
		l.syncTimeout = 2 * time.Second
	}
	if !l.leaseWaitSet {
		l.leaseWait = 100 * time.Millisecond
	}
	// Sequence numbers start at the clock so that a restarted replica with
	// the same id keeps increasing them.
	l.seq.Store(uint64(time.Now().UnixNano()))
	l.kick = make(chan struct{}, 1)
	l.done = make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	l.stopLoop = cancel
	go l.syncLoop(ctx)
}

func defaultReplicaID() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

func (l *Ledger) kickSyncer() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

func (l *Ledger) syncLoop(ctx context.Context) {
	defer close(l.done)
	tick := time.NewTicker(max(l.interval/4, time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-l.kick:
		}
		_ = l.syncRound(ctx, false, false)
	}
}

// Sync reports every tenant's unreported usage to the store and refreshes
// their leases and fleet-wide totals now, in one round trip. Without a
// store it does nothing. After a Close whose final report failed, Sync
// retries that report; after a successful Close it returns ErrClosed.
func (l *Ledger) Sync(ctx context.Context) error {
	if ctx == nil {
		return errNilContext
	}
	if l.store == nil || l.done == nil {
		return l.err
	}
	if l.closed.Load() {
		if l.finalDone.Load() {
			return ErrClosed
		}
		return l.finalReport(ctx)
	}
	return l.syncRound(ctx, true, false)
}

// Close stops new work and makes a final report: Begin on the ledger's
// accounts returns ErrClosed from now on, and so does every later charge
// of a run still in progress (end runs before Close: what they used until
// now is reported). Close then reports every tenant's usage, gives back
// the allowance this replica holds, and stops the syncer, waiting for it.
// If the final report fails, Close returns the store's error and the usage
// is still unreported: call Close or Sync again to retry. Without a store
// Close does nothing.
func (l *Ledger) Close(ctx context.Context) error {
	if ctx == nil {
		return errNilContext
	}
	if l.store == nil || l.done == nil {
		return nil
	}
	l.closed.Store(true)
	l.stopOnce.Do(l.stopLoop)
	select {
	case <-l.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	return l.finalReport(ctx)
}

// finalReport freezes live runs, reports everything and gives the leases back.
func (l *Ledger) finalReport(ctx context.Context) error {
	if l.finalDone.Load() {
		return nil
	}
	l.mu.RLock()
	accts := make([]*Account, 0, len(l.accts)+len(l.retired))
	for _, a := range l.accts {
		accts = append(accts, a)
	}
	accts = append(accts, l.retired...)
	l.mu.RUnlock()
	for _, a := range accts {
		a.mu.Lock()
		for t := range a.live { // their next charge finds no room and ErrClosed
			for i := range numMeters {
				t.revoke(i)
			}
		}
		a.mu.Unlock()
	}
	if err := l.syncRound(ctx, true, false); err != nil {
		return err
	}
	if err := l.syncRound(ctx, true, true); err != nil {
		return err
	}
	l.finalDone.Store(true)
	return nil
}

// syncRound syncs the due tenants (all of them with all) in one Store.Sync.
func (l *Ledger) syncRound(ctx context.Context, all, final bool) error {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	l.mu.RLock()
	accts := make([]*Account, 0, len(l.accts)+len(l.retired))
	for _, a := range l.accts {
		accts = append(accts, a)
	}
	accts = append(accts, l.retired...)
	l.mu.RUnlock()

	now := time.Now()
	req := SyncRequest{Replica: l.replica, LeaseTTL: l.ttl, Final: final}
	var owners []*Account
	for _, a := range accts {
		a.mu.Lock()
		if all || a.fleet.dueLocked(a, now) {
			req.Tenants = append(req.Tenants, a.fleet.reportLocked(a))
			owners = append(owners, a)
		}
		a.mu.Unlock()
	}
	if len(owners) == 0 {
		return nil
	}
	sctx, cancel := context.WithTimeout(ctx, l.syncTimeout)
	resp, err := l.store.Sync(sctx, req)
	cancel()
	if err == nil && len(resp.Tenants) != len(req.Tenants) {
		err = fmt.Errorf("reslimit: store answered %d tenants for %d", len(resp.Tenants), len(req.Tenants))
	}
	settled := false
	for k, a := range owners {
		a.mu.Lock()
		if err != nil {
			a.fleet.failLocked(a, err)
		} else {
			a.fleet.applyLocked(req.Tenants[k], resp.Tenants[k], now)
			// Settle a removed account once all is reported (during Close,
			// only in the Final round, which gives its lease back).
			if a.fleet.retired && (final || !l.closed.Load()) && len(a.live) == 0 && reportable(a.lifeLocked()) == a.fleet.reported {
				a.fleet.retired = false // all reported: the ledger can forget it
				settled = true
			}
		}
		a.mu.Unlock()
	}
	if settled {
		l.mu.Lock()
		kept := l.retired[:0]
		for _, a := range l.retired {
			a.mu.Lock()
			if a.fleet.retired {
				kept = append(kept, a)
			}
			a.mu.Unlock()
		}
		clear(l.retired[len(kept):])
		l.retired = kept
		l.mu.Unlock()
	}
	return err
}

// FleetStats is an account's store-backed state on this replica.
type FleetStats struct {
	// Replica is this replica's id in the store.
	Replica string
	// Committed is the tenant's fleet-wide totals as of the last sync.
	Committed Totals
	// Unreported is what this replica used that the store has not
	// acknowledged yet.
	Unreported Totals
	// Lease is the allowance this replica holds and has not handed out,
	// per leased resource with a limit.
	Lease Totals
	// LastSync is when the last successful sync was sent (zero if none).
	LastSync time.Time
	// Syncs and SyncErrors count the sync round trips of this tenant.
	Syncs, SyncErrors int64
	// LastError is the last sync's error, or "".
	LastError string
	// Fallback is true while the store fails and the failure policy rules.
	Fallback bool
}

// fleetState is an Account's store-backed state; guarded by the account's mu.
type fleetState struct {
	ledger      *Ledger
	committed   Totals // fleet-wide, from the store
	reported    Totals // this process's usage the store has acknowledged
	outstanding Totals // allowance beyond reported, from the store
	leaseAtSync Totals
	fallback    Totals
	lastUsed    Totals // the last report's Used: the recent rate
	pending     *TenantSync
	leaseUntil  time.Time
	lastSync    time.Time
	syncs       int64
	syncErrors  int64
	lastErr     string
	failing     bool
	wantSync    bool
	retired     bool          // removed from the ledger, still to be reported
	refreshed   chan struct{} // closed and replaced after every sync attempt
}

func newFleetState(l *Ledger) *fleetState {
	return &fleetState{ledger: l, refreshed: make(chan struct{})}
}

// leaseFloor is the smallest allowance a replica asks for at a time.
var leaseFloor = map[Resource]int64{Operations: 1024, Calls: 64, TotalMemory: 1 << 20, Evaluations: 8}

// dueLocked reports whether the syncer should sync the tenant now: a
// report is pending, a charge asked for it, the tenant was removed and is
// still to be settled, or the interval has passed and the tenant has
// something to report or live runs (whose room must stay covered by a
// live lease). A tenant idle on this replica costs the store nothing: its
// lease lapses, and its next charge asks for one.
func (f *fleetState) dueLocked(a *Account, now time.Time) bool {
	if f.pending != nil || f.wantSync || f.retired || f.lastSync.IsZero() {
		return true
	}
	return now.Sub(f.lastSync) >= f.ledger.interval &&
		(len(a.live) > 0 || reportable(a.lifeLocked()) != f.reported)
}

// capLocked is how much of r this process may hand out in all. A lease
// that has expired counts for nothing: the store may have given it to
// other replicas.
func (f *fleetState) capLocked(r Resource) int64 {
	c := f.reported.Get(r)
	if !time.Now().After(f.leaseUntil) {
		c += f.outstanding.Get(r)
	}
	if f.failing {
		switch f.ledger.policy {
		case FailOpen:
			return maxUsage
		case FailLocal:
			c += f.fallback.Get(r)
		}
	}
	return c
}

// noteLeft asks for an early sync when less than a tenth of the lease is left.
func (f *fleetState) noteLeft(r Resource, left int64) {
	if left*10 < f.leaseAtSync.Get(r) || left <= 0 {
		if !f.wantSync {
			f.wantSync = true
			f.ledger.kickSyncer()
		}
	}
}

func (a *Account) issuedFleetLocked(r Resource) int64 {
	if r == Evaluations {
		return a.lifeEvals
	}
	for i, mr := range meterResource {
		if mr == r {
			return a.issuedLocked(i)
		}
	}
	return 0
}

// fleetReserveLocked makes sure this process may hand out want more of r
// (for a request of n), waiting for the syncer to lease more when needed.
// It refuses when the tenant is out of r fleet-wide or no lease comes.
// Called with a.mu held; it may release and retake it while waiting.
func (a *Account) fleetReserveLocked(r Resource, n, want int64, meter int, except *Tracker, issued func() int64) error {
	f := a.fleet
	for attempt := 0; ; attempt++ {
		if f.ledger.closed.Load() {
			return ErrClosed
		}
		lim := a.limits[r].Load()
		if lim == 0 {
			return nil
		}
		used := a.usageLocked(r)
		refuse := func() error {
			a.refused[r].Add(1)
			return &LimitError{Resource: r, Limit: lim, Used: used, Requested: n, Tenant: a.name}
		}
		if used > lim-n {
			return refuse()
		}
		if f.capLocked(r)-issued() >= want {
			return nil
		}
		if meter >= 0 {
			a.reclaimLocked(meter, except)
			if f.capLocked(r)-issued() >= want {
				return nil
			}
		}
		f.wantSync = true // whether or not we wait, ask for a lease
		f.ledger.kickSyncer()
		if attempt >= 2 || f.ledger.leaseWait == 0 {
			return refuse()
		}
		ch := f.refreshed
		a.mu.Unlock()
		timer := time.NewTimer(f.ledger.leaseWait)
		select {
		case <-ch:
		case <-timer.C:
		}
		timer.Stop()
		a.mu.Lock()
	}
}

// reportLocked returns the tenant's report: the unacknowledged one again,
// or a new one with what was used since the last acknowledged report.
func (f *fleetState) reportLocked(a *Account) TenantSync {
	if f.pending != nil {
		return *f.pending
	}
	used := reportable(a.lifeLocked()).Sub(f.reported)
	for _, r := range [...]Resource{Operations, Calls, TotalMemory, CPUTime, Evaluations} {
		if used.Get(r) < 0 { // cannot happen: usage only grows; never send a negative report
			used.Set(r, 0)
		}
	}
	ts := TenantSync{Tenant: a.name, Seq: f.ledger.seq.Add(1), Used: used}
	for _, r := range accountResources {
		ts.Limit.Set(r, a.limits[r].Load())
	}
	for _, r := range leasedResources {
		lim := a.limits[r].Load()
		if lim == 0 {
			continue
		}
		target := max(leaseFloor[r], 2*f.lastUsed.Get(r), 2*used.Get(r))
		// Near the limit ask for a shrinking share, so that the other
		// replicas still find some and the last grants are small and exact.
		target = min(target, max(1, (lim-a.usageLocked(r))/4))
		left := f.capLocked(r) - a.issuedFleetLocked(r)
		ts.Want.Set(r, max(0, target-left))
	}
	f.pending = &ts
	return ts
}

// reportable cuts CPU time to whole microseconds, the unit stores keep.
func reportable(t Totals) Totals {
	t.CPUTime = t.CPUTime.Truncate(time.Microsecond)
	return t
}

func (f *fleetState) applyLocked(ts TenantSync, st TenantState, sent time.Time) {
	if st.Seq > ts.Seq {
		// The store applied a later report of this replica and tenant (a
		// restarted replica with the same id whose clock went back): ours
		// was ignored. Send it again under a greater number.
		for {
			cur := f.ledger.seq.Load()
			if cur >= st.Seq || f.ledger.seq.CompareAndSwap(cur, st.Seq) {
				break
			}
		}
		f.pending.Seq = f.ledger.seq.Add(1)
		f.wantSync = true
		close(f.refreshed)
		f.refreshed = make(chan struct{})
		return
	}
	f.pending = nil
	f.reported = f.reported.Add(ts.Used)
	f.lastUsed = ts.Used
	f.committed = st.Committed
	var out Totals
	for _, r := range leasedResources {
		out.Set(r, max(0, st.Allowance.Get(r)-st.Reported.Get(r)))
	}
	f.outstanding, f.leaseAtSync = out, out
	f.leaseUntil = sent.Add(f.ledger.ttl)
	f.lastSync = sent
	f.syncs++
	f.failing, f.fallback, f.lastErr, f.wantSync = false, Totals{}, "", false
	close(f.refreshed)
	f.refreshed = make(chan struct{})
}

func (f *fleetState) failLocked(a *Account, err error) {
	if !f.failing && f.ledger.policy == FailLocal {
		for _, r := range leasedResources {
			if lim := a.limits[r].Load(); lim > 0 {
				left := lim - a.usageLocked(r) - (f.capLocked(r) - a.issuedFleetLocked(r))
				f.fallback.Set(r, max(0, left/10))
			}
		}
	}
	f.failing = true
	f.syncErrors++
	f.lastErr = err.Error()
	close(f.refreshed)
	f.refreshed = make(chan struct{})
}

func (f *fleetState) statsLocked(a *Account) FleetStats {
	fs := FleetStats{
		Replica: f.ledger.replica, Committed: f.committed, LastSync: f.lastSync,
		Syncs: f.syncs, SyncErrors: f.syncErrors, LastError: f.lastErr, Fallback: f.failing,
	}
	fs.Unreported = a.lifeLocked().Sub(f.reported)
	for _, r := range leasedResources {
		if a.limits[r].Load() > 0 {
			fs.Lease.Set(r, max(0, f.capLocked(r)-a.issuedFleetLocked(r)))
		}
	}
	return fs
}
