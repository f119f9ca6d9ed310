package reslimit

// Fleets: a Ledger with a Store shares its tenants' cumulative limits with
// other replicas. The ledger's syncer reports usage and takes leases of
// the fleet-wide quota (syncRound); each account's fleetState is its quota.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/reslimit/reslimit/store"
)

// FailurePolicy says what a store-backed ledger's accounts do while the
// Store cannot be reached. Usage is counted locally in every case and
// reported when the store is back: billing is delayed, never lost, never
// doubled. Its value is its name (it prints as "fail_local", ...); the
// zero value is FailLocal.
type FailurePolicy string

const (
	// FailLocal keeps serving from the allowance (lease) the replica
	// holds, which the store keeps counting, and once it is used up from a
	// conservative fallback share: a tenth of what the tenant had left
	// fleet-wide when the outage began, or, for a tenant this replica never
	// managed to load from the store, min(1% of its limit, the lease floor
	// of 1024 operations, 64 calls, 1 MiB, 8 evaluations). The fleet can
	// pass a limit by at most those shares, one per replica.
	FailLocal FailurePolicy = "fail_local"
	// FailOpen stops enforcing cumulative limits while the store fails:
	// neither Begin nor charges are refused for them until a sync
	// succeeds. Usage is still counted and reported later. The rates
	// are not enforced either.
	FailOpen FailurePolicy = "fail_open"
	// FailClosed serves only from the lease the replica holds while the
	// store fails, and refuses what it does not cover.
	FailClosed FailurePolicy = "fail_closed"
)

// WithStore makes the ledger keep its tenants' cumulative totals in s,
// shared with the other replicas that use the same store: a background
// syncer reports this replica's usage and leases allowance, while charges
// stay local and lock-free. Close the ledger to stop the syncer. Each
// round trip to s (a sync, a tenant's first load) is bounded by 2s, or
// sooner by the store's own timeout (redisstore.WithTimeout).
func WithStore(s store.Store) LedgerOption {
	return func(l *Ledger) {
		if s == nil {
			l.setErr(fmt.Errorf("%w: WithStore(nil)", ErrInvalidArgument))
		}
		l.fleet.store = s
		_, l.fleet.periodStore = s.(store.PeriodLoader)
	}
}

// WithReplica names this replica in the store (default: host name, process
// id and a random suffix). Every process sharing a store needs its own.
func WithReplica(id string) LedgerOption {
	return func(l *Ledger) {
		l.needStore("WithReplica")
		if id == "" {
			l.setErr(fmt.Errorf("%w: WithReplica(\"\")", ErrInvalidArgument))
		}
		l.fleet.replica = id
	}
}

// WithSyncInterval sets how often each tenant is synced with the store at
// least (default 1s). A tenant whose lease runs low is synced sooner.
//
// The replica announces to the store a lease period of 3 intervals (at
// least 100ms), which stores use to tell live replicas from gone ones. The
// store never reclaims a lease when it expires: the unused lease of a
// replica that stops without Close keeps counting against the limit (it
// may have been used).
func WithSyncInterval(d time.Duration) LedgerOption {
	return func(l *Ledger) {
		l.needStore("WithSyncInterval")
		if d <= 0 {
			l.setErr(fmt.Errorf("%w: WithSyncInterval(%v): not positive", ErrInvalidArgument, d))
		}
		l.fleet.interval = d
	}
}

// WithFailurePolicy sets what accounts do while the store fails (default
// FailLocal).
func WithFailurePolicy(p FailurePolicy) LedgerOption {
	return func(l *Ledger) {
		l.needStore("WithFailurePolicy")
		switch p {
		case "":
			p = FailLocal
		case FailLocal, FailOpen, FailClosed:
		default:
			l.setErr(fmt.Errorf("%w: unknown failure policy %q", ErrInvalidArgument, string(p)))
		}
		l.fleet.policy = p
	}
}

// WithLeaseWait bounds how long a charge that finds its replica's
// allowance used up waits for the syncer to lease more before it is
// refused (default 100ms); when it ends while the lease is on its way, the
// charge waits for that answer too (at most a sync's 2s). The wait
// happens on the slow path only.
func WithLeaseWait(d time.Duration) LedgerOption {
	return func(l *Ledger) {
		l.needStore("WithLeaseWait")
		if d < 0 {
			l.setErr(fmt.Errorf("%w: WithLeaseWait(%v): negative", ErrInvalidArgument, d))
		}
		l.fleet.leaseWait, l.fleet.leaseWaitSet = d, true
	}
}

// WithPerProcessRates keeps each tenant's rates (EvaluationsPerSecond,
// OperationsPerSecond and their bursts) per process, as a ledger without
// a Store has them: each replica enforces the whole rate on its own, so
// that N replicas grant up to N times it. By default a store-backed
// ledger's rates hold fleet-wide (see docs/fleet.md).
func WithPerProcessRates() LedgerOption {
	return func(l *Ledger) {
		l.needStore("WithPerProcessRates")
		l.fleet.localRates = true
	}
}

// WithLogger makes the ledger log what its fleet syncer meets: the store
// starting to fail (Warn) and answering again (Info), a tenant's totals
// that could not be loaded (Warn), and the store having lost reports this
// replica made (Error), which the replica then makes again. Nil logs
// nothing (the default).
func WithLogger(logger *slog.Logger) LedgerOption {
	return func(l *Ledger) {
		l.needStore("WithLogger")
		l.fleet.logger = logger
	}
}

func (l *Ledger) logf(level slog.Level, msg string, args ...any) {
	if l.fleet.logger != nil {
		l.fleet.logger.Log(context.Background(), level, msg, args...)
	}
}

// needStore records that option name configures the fleet: NewLedger
// refuses it without WithStore.
func (l *Ledger) needStore(name string) {
	if l.storeOpt == "" {
		l.storeOpt = name
	}
}

func (l *Ledger) setErr(err error) {
	if l.optErr == nil {
		l.optErr = err
	}
}

// fleet is the store-backed part of a Ledger.
type fleet struct {
	store       store.Store
	periodStore bool // the store keeps billing periods (a store.PeriodLoader)
	replica     string
	interval    time.Duration
	ttl         time.Duration
	policy      FailurePolicy
	syncTimeout time.Duration
	leaseWait   time.Duration
	localRates  bool // WithPerProcessRates

	leaseWaitSet bool
	stopOnce     sync.Once
	finalMu      sync.Mutex // one final report at a time (Close, Sync, a hook's Sync)
	finalDone    atomic.Bool

	seq          atomic.Uint64
	closed       atomic.Bool
	resync       atomic.Bool // the store lost data: sync every tenant
	storeFailing atomic.Bool
	logger       *slog.Logger
	kick         chan struct{}
	stopLoop     context.CancelFunc
	done         chan struct{}
	syncMu       sync.Mutex // one sync round at a time, so reports go out in order
	retired      []*Account // removed accounts with usage still to report; guarded by Ledger.mu
}

func (l *Ledger) startFleet() {
	if l.fleet.policy == "" {
		l.fleet.policy = FailLocal
	}
	if l.fleet.replica == "" {
		l.fleet.replica = defaultReplicaID()
	}
	if l.fleet.interval == 0 {
		l.fleet.interval = time.Second
	}
	if l.fleet.ttl == 0 {
		l.fleet.ttl = max(3*l.fleet.interval, 100*time.Millisecond)
	}
	if l.fleet.syncTimeout == 0 {
		l.fleet.syncTimeout = 2 * time.Second
	}
	if !l.fleet.leaseWaitSet {
		l.fleet.leaseWait = 100 * time.Millisecond
	}
	// Sequence numbers start at the clock so that a restarted replica with
	// the same id keeps increasing them.
	l.fleet.seq.Store(uint64(time.Now().UnixNano()))
	l.fleet.kick = make(chan struct{}, 1)
	l.fleet.done = make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	l.fleet.stopLoop = cancel
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
	case l.fleet.kick <- struct{}{}:
	default:
	}
}

func (l *Ledger) syncLoop(ctx context.Context) {
	defer close(l.fleet.done)
	tick := time.NewTicker(max(l.fleet.interval/4, time.Millisecond))
	defer tick.Stop()
	lastProbe := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-l.fleet.kick:
		}
		_ = l.syncRound(ctx, false, false)
		if now := time.Now(); now.Sub(lastProbe) >= l.fleet.interval {
			lastProbe = now
			l.probeStore(ctx)
		}
	}
}

// probeStore checks, with one Load per sync interval, that the store still
// knows what this replica saw committed for one of its tenants (a random
// one that this replica reported for); if not, the store lost data, and
// every tenant is synced now so that each finds out and reports again.
// It is how a replica whose tenants are all idle notices a Redis that
// restarted without its data.
func (l *Ledger) probeStore(ctx context.Context) {
	var probe *Account
	var seen store.Totals
	l.mu.RLock()
	for _, a := range l.accts { // random order
		a.lock()
		if f := a.fleetState(); f.loaded && f.pending == nil && !f.reported.IsZero() {
			probe, seen = a, f.committed
		}
		a.unlock()
		if probe != nil {
			break
		}
	}
	l.mu.RUnlock()
	if probe == nil {
		return
	}
	lctx, cancel := context.WithTimeout(ctx, l.fleet.syncTimeout)
	tot, err := l.fleet.store.Load(lctx, probe.tenant())
	cancel()
	if err != nil {
		return
	}
	for _, r := range reportedResources {
		if tget(tot, r) < tget(seen, r) {
			l.fleet.resync.Store(true)
			l.kickSyncer()
			return
		}
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
	if l.fleet.store == nil || l.fleet.done == nil {
		return nil
	}
	if l.fleet.closed.Load() {
		if l.fleet.finalDone.Load() {
			return ErrClosed
		}
		if err := l.finalReport(ctx); err != nil {
			return err
		}
		l.endHooks() // the retry made the final report: nothing more to deliver
		return nil
	}
	return l.syncRound(ctx, true, false)
}

// Close ends a store-backed ledger: Begin on its accounts returns
// ErrClosed from now on, and so does every later charge of a run still in
// progress (end runs before Close: what they used until now is reported).
// Close then reports every tenant's usage, gives back the allowance this
// replica holds, and stops the syncer, waiting for it. If the final report
// fails, Close returns the store's error and the usage is still
// unreported: call Close or Sync again to retry.
//
// Close also stops the goroutine that closes periods on a schedule
// (WithPeriod), waiting for it, and, once the final report is made, the
// one that passes closes to the WithPeriodClosed hook, after it delivered
// the last; it does not close the open period.
//
// A ledger without a Store has nothing to report: Close stops the
// schedule and the hook's goroutine, and changes nothing else (its
// accounts keep working).
func (l *Ledger) Close(ctx context.Context) error {
	if ctx == nil {
		return errNilContext
	}
	if err := l.stopPeriods(ctx); err != nil {
		return err
	}
	if l.fleet.store != nil && l.fleet.done != nil {
		l.fleet.closed.Store(true)
		l.fleet.stopOnce.Do(l.fleet.stopLoop)
		select {
		case <-l.fleet.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := l.finalReport(ctx); err != nil {
			return err // the hooks keep going: a retry may close more periods
		}
	}
	return l.stopHooks(ctx)
}

// finalReport freezes live runs, reports everything and gives the leases back.
func (l *Ledger) finalReport(ctx context.Context) error {
	l.fleet.finalMu.Lock()
	defer l.fleet.finalMu.Unlock()
	if l.fleet.finalDone.Load() {
		return nil
	}
	l.mu.RLock()
	accts := make([]*Account, 0, len(l.accts)+len(l.fleet.retired))
	for _, a := range l.accts {
		accts = append(accts, a)
	}
	accts = append(accts, l.fleet.retired...)
	l.mu.RUnlock()
	for _, a := range accts {
		a.lock()
		a.drainLocked() // their next charge finds no room and ErrClosed
		a.unlock()
	}
	if err := l.syncRound(ctx, true, false); err != nil {
		return err
	}
	if err := l.syncRound(ctx, true, true); err != nil {
		return err
	}
	l.fleet.finalDone.Store(true)
	return nil
}

// syncRound syncs the due tenants (all of them with all) in one Store.Sync.
func (l *Ledger) syncRound(ctx context.Context, all, final bool) error {
	l.fleet.syncMu.Lock()
	defer l.fleet.syncMu.Unlock()
	now := time.Now()
	req, owners := l.buildRequest(all, final, now)
	if len(owners) == 0 {
		return nil
	}
	sctx, cancel := context.WithTimeout(ctx, l.fleet.syncTimeout)
	resp, err := l.fleet.store.Sync(sctx, req)
	cancel()
	if err == nil && len(resp.Tenants) != len(req.Tenants) {
		err = fmt.Errorf("reslimit: store answered %d tenants for %d", len(resp.Tenants), len(req.Tenants))
	}
	if err != nil && !l.fleet.storeFailing.Swap(true) {
		l.logf(slog.LevelWarn, "reslimit: fleet: the store fails; the failure policy rules", "replica", l.fleet.replica, "policy", string(l.fleet.policy), "err", err)
	} else if err == nil && l.fleet.storeFailing.Swap(false) {
		l.logf(slog.LevelInfo, "reslimit: fleet: the store answers again", "replica", l.fleet.replica)
	}
	lines, settled := l.applyAnswers(req, resp, owners, err, final, now)
	if len(lines) > 0 {
		l.keepLines(lines)
	}
	if settled {
		l.forgetSettled()
	}
	return err
}

// buildRequest returns the report of every tenant due for a sync (every
// tenant with all, or after the store lost data), and their accounts.
func (l *Ledger) buildRequest(all, final bool, now time.Time) (store.SyncRequest, []*Account) {
	l.mu.RLock()
	accts := make([]*Account, 0, len(l.accts)+len(l.fleet.retired))
	for _, a := range l.accts {
		accts = append(accts, a)
	}
	accts = append(accts, l.fleet.retired...)
	l.mu.RUnlock()
	if l.fleet.resync.Swap(false) {
		all = true // the store lost data: every tenant reports again
	}
	req := store.SyncRequest{Replica: l.fleet.replica, LeaseTTL: l.fleet.ttl, Final: final}
	var owners []*Account
	for _, a := range accts {
		a.lock()
		if f := a.fleetState(); all || f.dueLocked(now) {
			req.Tenants = append(req.Tenants, f.reportLocked(now))
			f.inFlight = true
			owners = append(owners, a)
		}
		a.unlock()
	}
	return req, owners
}

// applyAnswers applies the store's answer (or its failure, err) to each
// account that reported, and returns the invoice lines of the closes the
// store made and whether a removed account is settled (all reported:
// during Close, only in the Final round, which gives its lease back).
func (l *Ledger) applyAnswers(req store.SyncRequest, resp store.SyncResponse, owners []*Account, err error, final bool, now time.Time) ([]Period, bool) {
	settled := false
	var lines []Period
	for k, a := range owners {
		a.lock()
		f := a.fleetState()
		f.lastAttempt = now
		f.inFlight = false
		if err != nil {
			f.failLocked(err)
		} else {
			f.applyLocked(req.Tenants[k], resp.Tenants[k], now)
			lines = append(lines, f.lines...)
			f.lines = nil
			if f.retired && (final || !l.fleet.closed.Load()) && a.runningLocked() == 0 && reportable(f.lifeLocked()) == f.reported {
				f.retired = false // all reported: the ledger can forget it
				settled = true
			}
		}
		a.unlock()
	}
	return lines, settled
}

// forgetSettled drops the removed accounts whose usage is all reported.
func (l *Ledger) forgetSettled() {
	l.mu.Lock()
	defer l.mu.Unlock()
	kept := l.fleet.retired[:0]
	for _, a := range l.fleet.retired {
		a.lock()
		if a.fleetState().retired {
			kept = append(kept, a)
		}
		a.unlock()
	}
	clear(l.fleet.retired[len(kept):])
	l.fleet.retired = kept
}

// FleetStats is an account's store-backed state on this replica. Every
// field is a plain count, time or message.
type FleetStats struct {
	// Replica is this replica's id in the store.
	Replica string
	// Committed is the tenant's fleet-wide totals as of the last sync (or
	// the Load made when this replica opened the tenant).
	Committed store.Totals
	// Unreported is what this replica used that the store has not
	// acknowledged yet.
	Unreported store.Totals
	// Lease is the allowance this replica holds and has not handed out,
	// per leased resource with a limit (with FailLocal during an outage,
	// the fallback share included; with FailOpen, what it would hold: no
	// limit is enforced while Fallback is true).
	Lease store.Totals
	// LastSync is when the last successful sync was sent (zero if none).
	LastSync time.Time
	// Syncs and SyncErrors count the sync round trips of this tenant.
	Syncs, SyncErrors int64
	// LastError is the last sync's error, or "".
	LastError string
	// Fallback is true while the store fails and the failure policy rules.
	Fallback bool
	// Loaded is true once the tenant's committed totals came from the
	// store (by Load when the replica opened it, or by a sync).
	Loaded bool
	// StoreResets counts the times the store answered that it no longer
	// knew reports this replica had made for the tenant (a Redis restarted
	// without its data); each time, the replica reported them again.
	// LastStoreReset is when it last happened (zero if never).
	StoreResets    int64
	LastStoreReset time.Time
}

// fleetState is an Account's store-backed state, guarded by the account's
// mu: the quota (seam.go) of an account whose ledger has a Store. The
// account consults it only through that interface, and it sees the
// account only as a fleetAccount; the ledger's syncer (syncRound) builds
// reports from it and applies the store's answers.
type fleetState struct {
	ledger *Ledger
	acct   fleetAccount // the account whose quota it is, seen through the seam (seam.go)
	// life is this process's life totals of the tenant, never Reset, but
	// for what its live runs used: what its ended runs used, and the runs
	// it began (see lifeLocked).
	life      store.Totals
	committed store.Totals // fleet-wide, from the store
	reported  store.Totals // this process's usage (life totals) the store has acknowledged
	// offset is what the store lost of this process's reports and was not
	// reported again (usage of closed periods, which is never billed to
	// another): the store's Reported for this replica plus offset is
	// reported.
	offset store.Totals
	// lostBefore, when not 0, is sent with every report until one is
	// acknowledged: the store lost reports of periods before it.
	lostBefore  uint64
	outstanding store.Totals // allowance beyond reported, from the store
	returning   store.Totals // lease given back by the report in flight
	leaseAtSync store.Totals
	fallback    store.Totals
	lastUsed    store.Totals // the last report's Used: the recent rate
	need        store.Totals // the largest lease a waiting charge needs, since the last report
	pending     *store.TenantSync
	pendingNo   uint64 // the number of the report in pending
	builtNo     uint64 // reports built so far
	answeredNo  uint64 // the number of the last report the store answered
	short       uint32 // bit r: the last answer granted less than asked of r
	lastSync    time.Time
	lastAttempt time.Time
	activeAt    time.Time // the last report with usage or a waiting charge
	lastReset   time.Time
	graceUntil  time.Time // after a store reset: no lease asked for until then
	syncs       int64
	syncErrors  int64
	resets      int64
	lost        store.Totals // what the store lost of this replica's reports, cumulatively (Monitor's StoreReset)
	lastErr     string
	failing     bool
	wantSync    bool
	inFlight    bool // a report of this tenant is on its way to the store
	cpuAsk      bool // the CPU watchdog asked for more lease: sync now
	rateAsk     bool // a request waits for a fleet-wide rate's lease: sync now
	loaded      bool
	retired     bool          // removed from the ledger, still to be reported
	refreshed   chan struct{} // closed and replaced after every sync attempt
	loadOnce    sync.Once

	// Billing periods (with a PeriodLoader store): closes are this
	// replica's local closes whose final reports the store has not
	// acknowledged, oldest first, pendingCloses how many of them the
	// report in flight carries, base the life totals at the latest close
	// (usage up to it belongs to closed periods), and lines the periods
	// closed because the store said the tenant's period moved on, for the
	// ledger to keep.
	closes        []fleetClose
	pendingCloses int
	base          store.Totals
	lines         []Period
}

// fleetClose is a local close of a period: its number, and this
// process's life totals at the close.
type fleetClose struct {
	period uint64
	life   store.Totals
}

// periodClosedLocked records a local close of period n at life totals life:
// the usage up to it is reported to period n, the lease held for it is no
// good in the next one, and the fleet-wide totals start over (the store
// says how far the other replicas went at the next sync).
func (f *fleetState) periodClosedLocked(n uint64, live store.Totals) {
	if !f.ledger.fleet.periodStore {
		return
	}
	life := reportable(addTotals(f.life, live))
	f.closes = append(f.closes, fleetClose{period: max(n, 1), life: life})
	f.base = life
	f.committed, f.outstanding, f.leaseAtSync, f.returning = store.Totals{}, store.Totals{}, store.Totals{}, store.Totals{}
	f.short = 0
	f.wantSync = true
	f.ledger.kickSyncer()
}

// lifeLocked returns this process's usage of the fleet quantities, never
// Reset: what its ended runs used and the runs it began, plus what its
// live runs used.
func (f *fleetState) lifeLocked() store.Totals {
	return addTotals(f.life, f.acct.liveUsageLocked())
}

// addTotals returns t plus u, field by field, saturating.
func addTotals(t, u store.Totals) store.Totals {
	for _, r := range reportedResources {
		tset(&t, r, satAdd(tget(t, r), tget(u, r)))
	}
	return t
}

func (f *fleetState) runBegunLocked() { f.life.Evaluations++ }

func (f *fleetState) runEndedLocked(used store.Totals) { f.life = addTotals(f.life, used) }

// issuedLocked returns how much of r this process has handed out in all:
// of a meter, what ended runs used plus what live runs were given; of
// Evaluations and CPU time, what was used (CPU time is counted after it
// is spent).
func (f *fleetState) issuedLocked(r Resource) int64 {
	switch r {
	case Evaluations:
		return f.life.Evaluations
	case CPUTime:
		return int64(reportable(f.lifeLocked()).CPUTime)
	}
	return satAdd(tget(f.life, r), f.acct.liveIssuedLocked(r))
}

// floorLocked is what of r this process used before its open period, or
// reported, whichever is more: leases and unreported usage count from it.
func (f *fleetState) floorLocked(r Resource) int64 {
	return max(tget(f.reported, r), tget(f.base, r))
}

func newFleetState(l *Ledger, a fleetAccount) *fleetState {
	return &fleetState{ledger: l, acct: a, refreshed: make(chan struct{}), activeAt: time.Now()}
}

// The quota interface (seam.go).

func (f *fleetState) errLocked() error {
	if f.ledger.fleet.closed.Load() {
		return ErrClosed // the ledger made its final report
	}
	return nil
}

func (f *fleetState) reserveRunLocked() error {
	a := f.acct
	if a.limit(CPUTime) > 0 {
		// A run may begin once this process holds some of the fleet's CPU
		// time (see Account.cpuTick). (First: the evaluation's lease,
		// which the run takes, is the one not to wait for after.)
		if err := f.reserveLocked(CPUTime, 1, 1, -1, nil, func() int64 { return f.issuedLocked(CPUTime) }); err != nil {
			return err
		}
	}
	if a.limit(Evaluations) > 0 {
		return f.reserveLocked(Evaluations, 1, 1, -1, nil, func() int64 { return f.issuedLocked(Evaluations) })
	}
	return nil
}

// usageLocked is the fleet-wide usage of r: what the store committed for
// every replica, plus what this process used and has not reported.
func (f *fleetState) usageLocked(r Resource) int64 {
	return satAdd(tget(f.committed, r), max(0, tget(f.lifeLocked(), r)-f.floorLocked(r)))
}

func (f *fleetState) lostLocked(r Resource) int64 { return tget(f.lost, r) }

// openFleet loads a's committed totals from the store the first time the
// account is opened (later callers wait for that first load), so that a
// replica never takes a tenant it has not synced yet for a new one. The
// load is bounded by the sync timeout; if it fails, the first sync loads
// the totals instead, and until then the tenant counts as never loaded
// (see FailLocal).
func (l *Ledger) openFleet(a *Account) {
	f := a.fleetState()
	if f == nil {
		return
	}
	f.loadOnce.Do(func() { l.loadFleet(f) })
}

// loadFleet is openFleet's first load of f's tenant.
func (l *Ledger) loadFleet(f *fleetState) {
	a := f.acct
	ctx, cancel := context.WithTimeout(context.Background(), l.fleet.syncTimeout)
	var tot store.Totals
	var open uint64
	var err error
	if pl, ok := l.fleet.store.(store.PeriodLoader); ok {
		var sp store.Period
		sp, err = pl.LoadPeriod(ctx, a.tenant(), 0)
		tot, open = sp.Totals, sp.Open
	} else {
		tot, err = l.fleet.store.Load(ctx, a.tenant())
	}
	cancel()
	if err != nil {
		l.logf(slog.LevelWarn, "reslimit: fleet: loading a tenant's totals failed", "tenant", a.tenant(), "err", err)
		return
	}
	a.lock()
	defer a.unlock()
	if f.loaded {
		return // a sync answer is newer
	}
	if open > a.periodLocked() && f.lifeLocked().IsZero() && len(f.closes) == 0 {
		// A tenant new to this replica joins the store's period.
		a.setPeriodLocked(open)
	}
	if max(open, 1) == max(a.periodLocked(), 1) {
		f.committed = tot
	}
	f.loaded = true
}

// leaseFloor is the smallest allowance a replica asks for at a time; it
// also bounds the fallback share of a tenant never loaded.
var leaseFloor = map[Resource]int64{Operations: 1024, Calls: 64, TotalMemory: 1 << 20, Evaluations: 8, CPUTime: int64(100 * time.Millisecond)}

func bit(r Resource) uint32 { return 1 << uint(r) }

// dueLocked reports whether the syncer should sync the tenant now: a
// report is pending, a charge asked for a lease (at most once per interval
// when the store last had none to give: a tenant at its limit costs the
// store about one call per interval), the tenant was removed and is still
// to be settled, the store lost data, or the interval has passed and the
// tenant has something to report or holds a lease it did not use (which
// it gives back). A tenant idle on this replica costs the store nothing
// after that.
func (f *fleetState) dueLocked(now time.Time) bool {
	if f.failing && now.Sub(f.lastAttempt) < f.ledger.fleet.interval/4 {
		return false // the store fails: retry at the syncer's pace, not per charge
	}
	if f.pending != nil || f.retired || f.lastSync.IsZero() || len(f.closes) > 0 {
		return true
	}
	elapsed := now.Sub(f.lastSync) >= f.ledger.fleet.interval
	if f.wantSync {
		return f.short == 0 || elapsed || f.cpuAsk || f.rateAsk
	}
	if !elapsed {
		return false
	}
	a := f.acct
	if reportable(f.lifeLocked()) != f.reported || f.rateLeaseHeldLocked() {
		return true
	}
	for _, r := range leasedResources {
		if a.limit(r) > 0 && f.leaseLocked(r)-f.issuedLocked(r) > 0 {
			return true
		}
	}
	return false
}

// leaseLocked is how much of r this process may hand out in all by its
// lease (and, with FailLocal during an outage, the fallback share). The
// store never reclaims a lease, so it stays good until given back.
func (f *fleetState) leaseLocked(r Resource) int64 {
	c := f.floorLocked(r) + tget(f.outstanding, r) - tget(f.returning, r)
	if f.failing && f.ledger.fleet.policy == FailLocal {
		c += tget(f.fallback, r)
	}
	return c
}

// capLocked is how much of r this process may hand out in all.
func (f *fleetState) capLocked(r Resource) int64 {
	if f.failing && f.ledger.fleet.policy == FailOpen {
		return maxUsage
	}
	return f.leaseLocked(r)
}

// unboundLocked reports whether the account enforces no cumulative
// limit now: the store fails and the policy is FailOpen.
func (f *fleetState) unboundLocked() bool {
	return f.failing && f.ledger.fleet.policy == FailOpen
}

// noteLeft asks for an early sync when less than a tenth of the lease is left.
func (f *fleetState) noteLeft(r Resource, left int64) {
	if left*10 < tget(f.leaseAtSync, r) || left <= 0 {
		if !f.wantSync {
			f.wantSync = true
			f.ledger.kickSyncer()
		}
	}
}

// cpuLeftLocked is how much more CPU time this process's runs of the
// tenant may use under its lease (0 or less: none). Once half of the
// lease is used, it asks the store for more: CPU time is counted after it
// is spent, so it cannot wait for a lease the way a charge does.
func (f *fleetState) cpuLeftLocked() int64 {
	if f.unboundLocked() {
		return maxUsage
	}
	left := f.capLocked(CPUTime) - f.issuedLocked(CPUTime)
	if (left*2 < tget(f.leaseAtSync, CPUTime) || left <= 0) && !f.cpuAsk {
		// Sync now, even when the last answer was short (runs cannot
		// wait): at most once per sample of the CPU watchdog.
		f.cpuAsk, f.wantSync = true, true
		f.ledger.kickSyncer()
	}
	return left
}

// reserveLocked makes sure this process may hand out want more of r
// (for a request of n), waiting up to WithLeaseWait for the syncer to
// lease more when needed. It refuses only for a real shortage: the tenant
// is out of r fleet-wide by this replica's view, or the store answered a
// request made for this charge (or, within the last sync interval, any
// request) with less than asked; or when no lease came in time. Called
// with a.mu held; it may release and retake it while waiting.
func (f *fleetState) reserveLocked(r Resource, n, want int64, meter int, except *Tracker, issued func() int64) error {
	a := f.acct
	var w leaseWaiter
	for {
		if f.ledger.fleet.closed.Load() {
			return ErrClosed
		}
		lim := a.limit(r)
		if lim == 0 || f.unboundLocked() {
			return nil
		}
		used := a.usageLocked(r)
		if used > lim-n {
			return a.refuseLocked(r, lim, used, n)
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
		// Ask for a lease that covers this charge.
		if w := want + max(0, issued()-f.capLocked(r)); w > tget(f.need, r) {
			tset(&f.need, r, w)
		}
		f.wantSync = true
		f.ledger.kickSyncer()
		wait, ok := w.next(f, r)
		if !ok {
			return a.refuseLocked(r, lim, used, n)
		}
		ch := f.refreshed
		a.unlock()
		timer := time.NewTimer(wait)
		select {
		case <-ch:
		case <-timer.C:
		}
		timer.Stop()
		a.lock()
	}
}

// leaseWaiter is the state of a charge waiting for a lease in
// reserveLocked.
type leaseWaiter struct {
	registered, extended bool
	myNo                 uint64 // the reports built when it began to wait
	attempts             int64  // the sync attempts made then
	deadline             time.Time
}

// next decides, with f's mu held, whether the charge waits for a lease of
// r any longer, and for how long; false: it is refused. It is refused when
// the store had less to give than this replica asked for (the fleet is
// short now; the next sync, within an interval, asks for the charge whole,
// giving back the lease that is too small for it), when the store failed a
// sync made since the charge asked (the failure policy ruled on it), or
// when no lease came within WithLeaseWait — once more within the sync
// timeout if a lease is in flight or about to be asked for.
func (w *leaseWaiter) next(f *fleetState, r Resource) (time.Duration, bool) {
	if f.short&bit(r) != 0 && (!w.registered || f.answeredNo > w.myNo) {
		return 0, false
	}
	now := time.Now()
	if !w.registered {
		w.registered, w.myNo, w.deadline = true, f.builtNo, now.Add(f.ledger.fleet.leaseWait)
		w.attempts = f.syncs + f.syncErrors
	}
	if f.failing && f.syncs+f.syncErrors > w.attempts {
		return 0, false
	}
	wait := w.deadline.Sub(now)
	if wait <= 0 {
		if !(f.inFlight || f.wantSync) || w.extended || f.ledger.fleet.leaseWait == 0 {
			return 0, false // no lease in time
		}
		// The extension is a deadline of its own: an answer that brings
		// no lease (one for a period closed meanwhile) wakes the charge,
		// which waits on for the sync that follows.
		w.extended, wait = true, f.ledger.fleet.syncTimeout
		w.deadline = now.Add(wait)
	}
	return wait, true
}

// reportLocked returns the tenant's report: the unacknowledged one again,
// or a new one with what was used since the last acknowledged report, the
// lease it asks for, and the lease it gives back.
func (f *fleetState) reportLocked(now time.Time) store.TenantSync {
	if f.pending != nil {
		return *f.pending
	}
	a := f.acct
	closed, prev := f.closedReportsLocked()
	used := nonNegative(reportable(f.lifeLocked()).Sub(prev)) // usage only grows: never send a negative report
	ts := store.TenantSync{Tenant: a.tenant(), Seq: f.ledger.fleet.seq.Add(1), Used: used, Closed: closed}
	if f.ledger.fleet.periodStore {
		ts.Period = max(a.periodLocked(), 1)
		ts.LostBefore = min(f.lostBefore, ts.Period)
	}
	f.pendingCloses = len(f.closes)
	for _, r := range accountResources {
		tset(&ts.Limit, r, a.limit(r))
	}
	f.leaseRequestLocked(&ts, now)
	f.rateRequestLocked(&ts, now)
	f.need = store.Totals{}
	f.cpuAsk = false
	f.builtNo++
	f.pendingNo = f.builtNo
	f.pending = &ts
	return ts
}

// closedReportsLocked splits what this replica has not reported at its
// local closes: what was used up to a close is that period's final
// report. It returns the reports and the life totals they bring the
// reported ones to.
func (f *fleetState) closedReportsLocked() ([]store.ClosedReport, store.Totals) {
	prev := f.reported
	var closed []store.ClosedReport
	for _, c := range f.closes {
		u := nonNegative(c.life.Sub(prev)) // (negative: reported past the close already)
		closed = append(closed, store.ClosedReport{Period: c.period, Used: u})
		prev = prev.Add(u)
	}
	return closed, prev
}

// nonNegative returns t with every negative field set to 0.
func nonNegative(t store.Totals) store.Totals {
	for _, r := range reportedResources {
		if tget(t, r) < 0 {
			tset(&t, r, 0)
		}
	}
	return t
}

// leaseRequestLocked sets what ts asks for and gives back of each leased
// resource the tenant limits.
func (f *fleetState) leaseRequestLocked(ts *store.TenantSync, now time.Time) {
	a := f.acct
	for _, r := range leasedResources {
		if tget(ts.Used, r) != 0 || tget(f.need, r) != 0 {
			f.activeAt = now
		}
	}
	// Idle: nothing used nor asked for in a whole interval.
	idle := now.Sub(f.activeAt) >= f.ledger.fleet.interval
	grace := now.Before(f.graceUntil)
	for _, r := range leasedResources {
		if a.limit(r) == 0 {
			continue
		}
		left := f.leaseLocked(r) - f.issuedLocked(r)
		need := tget(f.need, r)
		target := f.leaseTargetLocked(r, tget(ts.Used, r), now)
		switch {
		case grace:
			tset(&ts.Return, r, max(0, left))
		case need > left && f.short&bit(r) != 0:
			// Stuck near the limit: a lease too small for the charge that
			// waits strands quota. Give it back and ask for the charge
			// whole or nothing, so that some replica gets it whole.
			tset(&ts.Return, r, max(0, left))
			tset(&ts.MinGrant, r, need)
			tset(&ts.Want, r, max(target, need))
		case idle && left > 0 && (r != CPUTime || a.runningLocked() == 0):
			// Unused for a whole interval: give the lease back, so that
			// the other replicas can have it. (Live runs use CPU time
			// that shows only when the watchdog samples it.)
			tset(&ts.Return, r, left)
		default:
			// (left < 0 only while reports the store lost are reported
			// again: they are not a reason to ask for more.)
			tset(&ts.Want, r, max(0, max(target, need)-max(left, 0)))
		}
		tset(&f.returning, r, tget(ts.Return, r))
	}
}

// leaseTargetLocked is the lease of r this replica aims to hold: enough
// for about two intervals at the recent rate (used since the last sync,
// scaled to an interval when syncs come sooner, as in a busy start-up, or
// the last report's), at least the floor; near the limit a shrinking
// share, so that the other replicas still find some and the last grants
// are small and exact.
func (f *fleetState) leaseTargetLocked(r Resource, used int64, now time.Time) int64 {
	target := max(leaseFloor[r], 2*tget(f.lastUsed, r), 2*used)
	if elapsed := now.Sub(f.lastSync); !f.lastSync.IsZero() && elapsed < f.ledger.fleet.interval {
		scaled := 2 * float64(used) * float64(f.ledger.fleet.interval) / float64(max(elapsed, time.Millisecond))
		target = max(target, int64(min(scaled, maxUsage)))
	}
	a := f.acct
	return min(target, max(1, (a.limit(r)-a.usageLocked(r))/4))
}

// reportable cuts CPU time to whole microseconds, the unit stores keep.
func reportable(t store.Totals) store.Totals {
	t.CPUTime = t.CPUTime.Truncate(time.Microsecond)
	return t
}

func (f *fleetState) applyLocked(ts store.TenantSync, st store.TenantState, sentAt time.Time) {
	if st.Seq > ts.Seq {
		f.resendStaleLocked(st.Seq)
		return
	}
	// A healthy store never forgets: what it says this replica reported is
	// at least what the replica knows it reported, and the committed
	// totals never go back.
	expected := f.reported.Add(ts.Used)
	for _, c := range ts.Closed {
		expected = expected.Add(c.Used)
	}
	// The answer is about the period the report was for, still open here
	// and in the store.
	a := f.acct
	sent, storePeriod := max(ts.Period, 1), max(st.Period, 1)
	if !f.ledger.fleet.periodStore {
		sent, storePeriod = max(a.periodLocked(), 1), max(a.periodLocked(), 1)
	}
	current := sent == max(a.periodLocked(), 1) && storePeriod == sent
	lostNow, lost := f.storeLostLocked(expected, st, current)
	reported := f.reportAgainLocked(ts, expected, lostNow, lost, sent)
	short := f.shortLocked(ts, st, current)
	f.pending = nil
	f.answeredNo = f.pendingNo
	f.reported = reported
	f.lastUsed = ts.Used
	f.closes = append([]fleetClose(nil), f.closes[f.pendingCloses:]...)
	f.pendingCloses = 0
	if storePeriod > max(a.periodLocked(), 1) {
		// The store's period moved on (another replica closed it): close
		// the tenant's here too, at the store's number.
		f.lines = append(f.lines, a.closePeriodLocked(time.Now(), storePeriod))
		current = false
	}
	if storePeriod == max(a.periodLocked(), 1) {
		f.committed = st.Committed
	}
	var out store.Totals
	if current {
		// (A lease granted for a period closed since is no good now.)
		for _, r := range leasedResources {
			tset(&out, r, max(0, tget(st.Allowance, r)-tget(st.Reported, r)))
		}
	}
	f.outstanding, f.leaseAtSync, f.returning = out, out, store.Totals{}
	f.short = short
	f.lastSync = sentAt
	f.syncs++
	f.failing, f.fallback, f.lastErr, f.loaded = false, store.Totals{}, "", true
	f.wantSync = !current
	if lost {
		f.storeResetLocked(lostNow, sentAt)
	}
	f.applyRatesLocked(st, time.Now())
	f.refreshLocked()
}

// refreshLocked wakes the charges waiting for a sync of the tenant.
func (f *fleetState) refreshLocked() {
	close(f.refreshed)
	f.refreshed = make(chan struct{})
}

// resendStaleLocked handles a store that applied a later report of this
// replica and tenant (seq; a restarted replica with the same id whose
// clock went back): ours was ignored, and is sent again under a greater
// number.
func (f *fleetState) resendStaleLocked(seq uint64) {
	for {
		cur := f.ledger.fleet.seq.Load()
		if cur >= seq || f.ledger.fleet.seq.CompareAndSwap(cur, seq) {
			break
		}
	}
	f.pending.Seq = f.ledger.fleet.seq.Add(1)
	f.wantSync = true
	f.refreshLocked()
}

// storeLostLocked compares the store's answer with what this replica
// expects it to hold (expected, its life totals reported): it returns what
// the store lost of this replica's reports, and whether it lost anything
// (also the committed totals of the current period going back).
func (f *fleetState) storeLostLocked(expected store.Totals, st store.TenantState, current bool) (store.Totals, bool) {
	var lostNow store.Totals
	lost := false
	if st.Seq == 0 {
		return lostNow, false // a store that does not track sequence numbers
	}
	for _, r := range reportedResources {
		if got := satAdd(tget(st.Reported, r), tget(f.offset, r)); got < tget(expected, r) {
			tset(&lostNow, r, tget(expected, r)-got)
			lost = true
		}
		if current && f.loaded && tget(st.Committed, r) < tget(f.committed, r) {
			lost = true
		}
	}
	return lostNow, lost
}

// reportAgainLocked returns what this replica counts as reported after
// the answer to ts: expected, less what the store lost and is to be
// reported again. With periods in the store that is only what was
// acknowledged in the open period (beyond the latest close): usage of a
// closed period is never billed to another, the period is marked lost
// instead (and the store's count stays behind by offset).
func (f *fleetState) reportAgainLocked(ts store.TenantSync, expected, lostNow store.Totals, lost bool, sent uint64) store.Totals {
	reported := expected
	switch {
	case lost && f.ledger.fleet.periodStore:
		before := expected.Sub(ts.Used) // acknowledged before this report
		for _, r := range reportedResources {
			again := min(tget(lostNow, r), max(0, tget(before, r)-tget(f.base, r)))
			tset(&reported, r, tget(expected, r)-again)
			tset(&f.offset, r, tget(f.offset, r)+tget(lostNow, r)-again)
		}
		f.lostBefore = sent
	case lost:
		// Without periods in the store, everything lost is reported again.
		reported = expected.Sub(lostNow)
	case ts.LostBefore != 0 && ts.LostBefore >= f.lostBefore:
		f.lostBefore = 0 // the store marked them
	}
	return reported
}

// shortLocked returns the leased resources of which the store granted
// less than ts asked for (bit r), judged by what it should hold unused
// for this replica now had it granted all.
func (f *fleetState) shortLocked(ts store.TenantSync, st store.TenantState, current bool) uint32 {
	var short uint32
	for _, r := range leasedResources {
		prev := max(0, tget(f.outstanding, r)-tget(ts.Used, r))
		prev -= min(prev, tget(ts.Return, r))
		if w := tget(ts.Want, r); current && w > 0 && tget(st.Allowance, r)-tget(st.Reported, r) < prev+w {
			short |= bit(r)
		}
	}
	return short
}

// storeResetLocked records that the store no longer knows reports this
// replica made (a Redis restarted without its data, lostNow of them): they
// are reported again at once, and every other tenant is synced too, so
// that the committed totals and the quota come back to what the live
// replicas granted. For an interval, while the other replicas report
// again, no lease is asked for and what was granted against the totals
// the store had lost is given back.
func (f *fleetState) storeResetLocked(lostNow store.Totals, sentAt time.Time) {
	f.resets++
	f.lastReset = time.Now()
	f.lost = f.lost.Add(lostNow)
	f.wantSync = true
	f.short = 0
	f.graceUntil = sentAt.Add(f.ledger.fleet.interval)
	f.ledger.fleet.resync.Store(true)
	f.ledger.kickSyncer()
	f.ledger.logf(slog.LevelError, "reslimit: fleet: the store lost reports of this replica; reporting them again",
		"tenant", f.acct.tenant(), "replica", f.ledger.fleet.replica,
		"operations", lostNow.Operations, "function_calls", lostNow.Calls,
		"total_memory", lostNow.TotalMemory, "evaluations", lostNow.Evaluations)
}

// reportedResources are the quantities a replica reports to the store.
var reportedResources = [...]Resource{Operations, Calls, TotalMemory, CPUTime, Evaluations}

func (f *fleetState) failLocked(err error) {
	a := f.acct
	if !f.failing && f.ledger.fleet.policy == FailLocal {
		for _, r := range leasedResources {
			if lim := a.limit(r); lim > 0 {
				if !f.loaded {
					// Never loaded: its usage elsewhere is unknown.
					tset(&f.fallback, r, min(leaseFloor[r], lim/100))
					continue
				}
				left := lim - a.usageLocked(r) - (f.leaseLocked(r) - f.issuedLocked(r))
				tset(&f.fallback, r, max(0, left/10))
			}
		}
		f.failRatesLocked()
	}
	f.failing = true
	f.syncErrors++
	f.lastErr = err.Error()
	f.refreshLocked()
}

func (f *fleetState) statsLocked() *FleetStats {
	a := f.acct
	fs := FleetStats{
		Replica: f.ledger.fleet.replica, Committed: f.committed, LastSync: f.lastSync,
		Syncs: f.syncs, SyncErrors: f.syncErrors, LastError: f.lastErr, Fallback: f.failing,
		Loaded: f.loaded, StoreResets: f.resets, LastStoreReset: f.lastReset,
	}
	fs.Unreported = f.lifeLocked().Sub(f.reported)
	for _, r := range leasedResources {
		if a.limit(r) > 0 {
			tset(&fs.Lease, r, max(0, f.leaseLocked(r)-f.issuedLocked(r)))
		}
	}
	return &fs
}

// roomLocked is how much of meter i this replica may hand out now by its
// lease of the fleet-wide quota (see Account.grantLocked), after waiting
// for (or fetching) a lease within WithLeaseWait when it is short. Called
// with a.mu and t.mu held.
func (f *fleetState) roomLocked(t *Tracker, i int, n, want int64) (int64, error) {
	res := meterResource[i]
	issued := func() int64 { return f.issuedLocked(res) }
	if err := f.reserveLocked(res, n, want, i, t, issued); err != nil {
		return 0, err
	}
	return f.capLocked(res) - issued(), nil
}

// grantedLocked asks for an early sync when the grant left little of the
// lease (see noteLeft).
func (f *fleetState) grantedLocked(i int, left int64) { f.noteLeft(meterResource[i], left) }

// keepLines keeps the lines of periods closed because the store said that
// their tenant's period moved on (another replica closed it), as one close
// in Periods.
func (l *Ledger) keepLines(lines []Period) {
	sort.Slice(lines, func(i, j int) bool { return lines[i].Tenant < lines[j].Tenant })
	l.periods.closeMu.Lock()
	defer l.periods.closeMu.Unlock()
	l.periods.keepLocked(lines)
	l.queueHookLocked(lines)
}

// tget returns t's quantity of r (CPU time in nanoseconds), or 0 for a
// resource store.Totals does not hold.
func tget(t store.Totals, r Resource) int64 {
	switch r {
	case Operations:
		return t.Operations
	case Calls:
		return t.Calls
	case TotalMemory:
		return t.TotalMemory
	case CPUTime:
		return int64(t.CPUTime)
	case Evaluations:
		return t.Evaluations
	}
	return 0
}

// tset sets t's quantity of r (CPU time in nanoseconds); other resources
// are ignored.
func tset(t *store.Totals, r Resource, v int64) {
	switch r {
	case Operations:
		t.Operations = v
	case Calls:
		t.Calls = v
	case TotalMemory:
		t.TotalMemory = v
	case CPUTime:
		t.CPUTime = time.Duration(v)
	case Evaluations:
		t.Evaluations = v
	}
}

// leasedResources are the fleet quantities a replica needs an allowance
// (lease) for before it hands them out (see package store). CPU time,
// measured after it is spent, is leased too: a replica stops its tenant's
// runs when their CPU time passes its lease and the store has no more to
// give.
var leasedResources = [...]Resource{Operations, Calls, TotalMemory, Evaluations, CPUTime}
