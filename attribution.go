package reslimit

// Accounts: one tenant's cumulative totals, limits and history over many
// runs.
//
// Glossary of the accounting code (here, in tracker.go and in fleet.go):
//
//   - meter: one cumulative quantity a run counts (operations, calls, bytes
//     charged); its room is what the run may still take on the hot path,
//     with one CAS, and its filled is all the room it was ever given, so
//     that used = filled - room.
//   - room, refill: the hot path takes from room; when room is short the
//     slow path (Tracker.refill) checks the run's limit, then the
//     account's, and adds room.
//   - grant, chunk: what an account adds to a run's room at a refill: what
//     the request needs plus a chunk ahead that shrinks as the limit nears.
//   - reserved: the room an account has handed to its live runs plus what
//     ended runs used (committed): the limit minus reserved is free.
//   - reclaim, revoke: taking unused room back from live runs (revoke is
//     one run's room; reclaim is every run's), when the free room is short
//     or a limit changes.
//   - base: a live run's usage when its account was last Reset; what it
//     uses after counts in the new period.
//   - held: memory held at once (charged minus released), as opposed to
//     the cumulative total charged.
//   - quota: with a Store, what decides an account's cumulative limits
//     fleet-wide (fleetState, fleet.go); without one (nil) the account
//     decides them here. The account and the fleet code see each other
//     through the seam's two interfaces only (quota and fleetAccount,
//     seam.go).
//   - lease, allowance (fleet.go): with a Store, the part of the fleet-wide
//     quota the store has granted this replica; reports tell the store
//     what was used, leases cap what this replica may grant its runs.
//   - halt, stop, drain: a run is stopped (halt) with a reason; its room is
//     drained so that every later charge takes the slow path and is
//     refused with that reason.
//
// Lock order, first to last (a lock is never taken while holding one
// after it):
//
//	Ledger.periods.hookMu (a WithPeriodClosed call; the hook may Sync)
//	→ Ledger.fleet.finalMu (one final report) → Ledger.fleet.syncMu (one
//	sync round) → Ledger.periods.closeMu (a close, the kept lines, the
//	hook's queue) → Ledger.mu → Tracker.mu (a child run's before its
//	parent's: a child's refill draws from its parent) → Account.mu →
//	Tracker.childMu (a parent's before its children's) → Tracker.meterMu
//	(a leaf), and Account.mu → Tracker.cpuMu.
//
// Leaves taken alone: Tracker.slots.mu (a run's concurrency slots and
// their queue), pins.mu (the measured-thread cap), stopSet.mu (the stops
// a tree of nested runs counted, taken under Tracker.mu), the Monitor's
// locks. The hot paths (take, the guards' fast paths, TrackOperation)
// take no lock. Where a mutex guards a few fields, they are grouped with
// it as mu struct{ sync.Mutex; ... } (Account.mu, periods.closeMu,
// slots.mu, pins.mu), and a ...Locked method requires that it is held.

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/reslimit/reslimit/store"
)

// AccountLimits bounds what one tenant may consume over many runs. A field
// of 0 means no limit; a negative field is invalid. All are cumulative over
// the account's life (or since Reset), except MaxMemory and MaxConcurrent,
// which bound what the tenant's runs hold at once.
type AccountLimits struct {
	// MaxMemory bounds the bytes held at once by all the tenant's runs.
	MaxMemory int64
	// MaxTotalMemory bounds the bytes charged with TrackMemory, cumulatively.
	MaxTotalMemory int64
	// MaxTotalOperations bounds the operations counted, cumulatively.
	MaxTotalOperations int64
	// MaxCalls bounds the calls counted with TrackCall, cumulatively.
	MaxCalls int64
	// MaxCPUTime bounds the CPU time used, cumulatively.
	MaxCPUTime time.Duration
	// MaxEvaluations bounds the runs started.
	MaxEvaluations int64
	// MaxConcurrent bounds the runs in progress at once.
	MaxConcurrent int64

	// EvaluationsPerSecond bounds the rate at which runs start, with a
	// token bucket that refills at this rate and holds EvaluationBurst
	// (0: one second's worth, at least 1). A run started too soon is
	// refused with an EvaluationRate *LimitError whose RetryAfter says
	// when a retry can succeed. 0 means no rate. In a ledger with a
	// Store the rates hold fleet-wide (see WithPerProcessRates and
	// docs/fleet.md).
	EvaluationsPerSecond float64
	EvaluationBurst      int
	// OperationsPerSecond bounds the rate at which the tenant's runs
	// count operations, with a bucket of OperationBurst (0: one second's
	// worth, at least 1); a refusal is an OperationRate *LimitError. It is
	// charged when a run's room is refilled, in chunks: see rate.go.
	OperationsPerSecond float64
	OperationBurst      int
}

// Validate returns nil for valid limits, or an error wrapping
// ErrInvalidLimits that names every negative field.
func (l AccountLimits) Validate() error {
	var errs []error
	for _, r := range accountResources {
		if v := l.get(r); v < 0 {
			errs = append(errs, fmt.Errorf("%w: account limit %s is negative (%d)", ErrInvalidLimits, r, v))
		}
	}
	errs = append(errs, validRate("EvaluationsPerSecond", l.EvaluationsPerSecond, "EvaluationBurst", l.EvaluationBurst)...)
	errs = append(errs, validRate("OperationsPerSecond", l.OperationsPerSecond, "OperationBurst", l.OperationBurst)...)
	return errors.Join(errs...)
}

// accountResources are the resources an Account can limit, in a stable order.
var accountResources = [...]Resource{Memory, TotalMemory, Operations, Calls, CPUTime, Evaluations, Concurrency}

// cumulative reports whether an account limit on r accumulates (and can be
// exhausted) rather than bounding what is held at once.
func cumulative(r Resource) bool { return r != Memory && r != Concurrency }

func (l AccountLimits) get(r Resource) int64 {
	switch r {
	case Memory:
		return l.MaxMemory
	case TotalMemory:
		return l.MaxTotalMemory
	case Operations:
		return l.MaxTotalOperations
	case Calls:
		return l.MaxCalls
	case CPUTime:
		return int64(l.MaxCPUTime)
	case Evaluations:
		return l.MaxEvaluations
	case Concurrency:
		return l.MaxConcurrent
	}
	return 0
}

func isAccountResource(r Resource) bool {
	for _, a := range accountResources {
		if a == r {
			return true
		}
	}
	return false
}

// AccountOption configures NewAccount.
type AccountOption func(*accountConfig)

type accountConfig struct {
	history int
	err     error
}

// defaultHistorySize is the number of runs an Account remembers by default.
const defaultHistorySize = 100

// WithHistorySize sets how many of the latest runs History keeps (default
// 100; 0 keeps none; negative is invalid).
func WithHistorySize(n int) AccountOption {
	return func(c *accountConfig) {
		if n < 0 {
			c.err = fmt.Errorf("%w: WithHistorySize(%d): negative size", ErrInvalidArgument, n)
		}
		c.history = n
	}
}

// Account layers one tenant's cumulative totals, history and limit status
// over many runs, and enforces the tenant's AccountLimits across all of its
// runs, also concurrent ones. Every method is safe for concurrent use.
// Make accounts with NewAccount or Ledger.Account: the zero Account reads
// as empty and refuses every run with an error saying so.
//
// A run's charges are checked against the run's own Limits and the
// account's, all or nothing. To keep a busy tenant's hot path on its run's
// own counters, a run reserves allowance from its account in chunks that
// shrink as the limit nears (so the limit holds exactly) and gives back
// what it did not use at End.
type Account struct {
	name   string
	err    error // set on an account that refuses every run (see Ledger.Account)
	limits [numResources]atomic.Int64
	peak   atomic.Int64 // read by every memory charge, written when it rises
	// held, which every memory charge and release of the account's runs
	// writes, has a cache line of its own: on the line of what they only
	// read, the other cores would lose that line at each charge.
	_    [cacheLine - 8]byte
	held atomic.Int64 // memory held now by live runs
	_    [cacheLine - 8]byte
	// refused counts tenant-level refusals per resource; Reset keeps them.
	refused [numResources]atomic.Int64
	// stops counts the runs stopped by their own limits, per resource
	// (see stops.go); Reset keeps them.
	stops [numResources]atomic.Int64

	// mu guards the account's runs, its totals since Reset, its history,
	// its rates and its open period (live is set once, by NewAccount: a
	// nil live is a zero Account).
	mu struct {
		sync.Mutex
		live      map[*Tracker]struct{}
		reserved  [numMeters]int64 // committed plus room handed to live runs, while limited (unused with a Store: leases bound the room)
		committed [numMeters]int64
		cpu       time.Duration // CPU of ended runs
		evals     int64
		largest   Largest
		cpuTimer  *time.Timer // the CPU watchdog while runs are measured, with a CPU limit
		hist      []HistoryEntry
		histNext  int
		histLen   int
		rates     accountRates
		// The open billing period (see Reset): its number and start.
		periodNo    uint64
		periodStart time.Time
	}
	quota quota // where the cumulative limits are decided fleet-wide, with a Store (seam.go); nil: here; set before the account is shared
	// schedule is the ledger's period schedule (WithPeriod,
	// WithPeriodSchedule), or nil; set before the account is shared.
	schedule func(time.Time) time.Time
}

// HistoryEntry records one finished run of an Account.
type HistoryEntry struct {
	// Time is when the run ended.
	Time time.Time
	// Evaluation is the run's 1-based number since the account's last Reset.
	Evaluation int64
	// PeakMemoryBytes is the most memory the run held at once, in bytes.
	PeakMemoryBytes int64
	Operations      int64
	Calls           int64
	CPUTime         time.Duration
	WallTime        time.Duration
	// Err is why the run failed (a *LimitError, fn's error), or nil.
	Err error
}

// Largest describes the heaviest single run: its peak memory in bytes and
// its operations (each the maximum over runs, not necessarily of one run).
type Largest struct {
	PeakMemoryBytes int64
	Operations      int64
}

// LimitStatus is one limited resource of an account: Used and Limit in the
// resource's unit, and Remaining = max(0, Limit-Used).
type LimitStatus struct {
	Used      int64
	Limit     int64
	Remaining int64
}

// AccountStats is a snapshot of an account. Memory in bytes.
type AccountStats struct {
	// MemoryBytes is held now by the account's live runs.
	MemoryBytes int64
	// TotalMemoryBytes is every byte charged, cumulatively.
	TotalMemoryBytes int64
	// PeakMemoryBytes is the most held at once across runs.
	PeakMemoryBytes int64
	Operations      int64
	Calls           int64
	CPUTime         time.Duration
	// Evaluations counts the runs started (since Reset).
	Evaluations int64
	// Period and PeriodStart are the number (1 for the first) and start
	// of the open billing period, which Reset closes.
	Period      uint64
	PeriodStart time.Time
	// PeriodEnd is when the open period is scheduled to close: for an
	// account of a Ledger with WithPeriod or WithPeriodSchedule, the
	// schedule's next close after PeriodStart; zero otherwise (periods
	// then close only with Reset or Ledger.ClosePeriod).
	PeriodEnd time.Time
	// Running is the number of runs in progress now.
	Running int64
	// Largest is the heaviest single finished run.
	Largest Largest
	// Exhausted is true when some cumulative limit has no room left.
	Exhausted bool
	// LimitStatus has an entry for every resource with a limit.
	LimitStatus map[Resource]LimitStatus
	// Refusals counts the requests refused by the account's limits, per
	// resource (only resources with refusals). Reset does not clear it.
	Refusals map[Resource]int64
	// RunStops counts the account's runs that were stopped by one of
	// their own per-run Limits (memory, cpu_time, timeout, file_size,
	// operations, a child process's processes, ...), per resource (only
	// resources with stops): the runs that ended with a *LimitError
	// without a Tenant, each counted once, on the account it is billed to,
	// also when a run nested in another passes its stop on (see
	// Tracker.EndWithError). Refusals counts the account's own limits;
	// RunStops, the runs'. It is cumulative over the account's life in
	// this process: neither Reset nor a period close clears it, and with
	// a Store it counts this replica's runs only.
	RunStops map[Resource]int64
	// Fleet describes the account's store-backed state, or is nil when
	// the ledger has no Store. With a Store, the cumulative totals above
	// (and LimitStatus, Exhausted) are fleet-wide: what the store has
	// committed plus what this replica has not reported yet.
	Fleet *FleetStats
}

// NewAccount returns an account named name (the tenant, non-empty) with
// limits l. It returns an error wrapping ErrInvalidLimits for negative
// limits and ErrInvalidArgument for an empty name or a bad option.
func NewAccount(name string, l AccountLimits, opts ...AccountOption) (*Account, error) {
	if name == "" {
		return nil, fmt.Errorf("%w: empty account name", ErrInvalidArgument)
	}
	if err := l.Validate(); err != nil {
		return nil, err
	}
	cfg := accountConfig{history: defaultHistorySize}
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if cfg.err != nil {
		return nil, cfg.err
	}
	a := &Account{name: name}
	a.mu.live, a.mu.periodNo, a.mu.periodStart = make(map[*Tracker]struct{}), 1, time.Now()
	for _, r := range accountResources {
		a.limits[r].Store(l.get(r))
	}
	a.mu.rates.setLocked(l)
	if cfg.history > 0 {
		a.mu.hist = make([]HistoryEntry, cfg.history)
	}
	return a, nil
}

// Name returns the account's (tenant's) name.
func (a *Account) Name() string {
	if a == nil {
		return ""
	}
	return a.name
}

var (
	errNilAccount  = fmt.Errorf("%w: nil *Account", ErrInvalidArgument)
	errZeroAccount = fmt.Errorf("%w: a zero Account runs nothing: make accounts with NewAccount or Ledger.Account", ErrInvalidArgument)
)

// Begin starts a run bounded by l and charged to the account; finish it
// with End (or EndWithError). It is refused, before anything runs and without
// counting an evaluation, with an Evaluations *LimitError when
// MaxEvaluations runs have started, with Concurrency when MaxConcurrent
// runs are in progress, and with the exhausted resource when some other
// cumulative limit has no room left.
func (a *Account) Begin(l Limits) (*Tracker, error) {
	if a == nil {
		return nil, errNilAccount
	}
	if err := l.Validate(); err != nil {
		return nil, err
	}
	return a.begin(l, "", nil, nil)
}

func (a *Account) begin(l Limits, name string, cancel func(error), parent *Tracker) (*Tracker, error) {
	if a.err != nil {
		return nil, a.err
	}
	if a.mu.live == nil {
		return nil, errZeroAccount
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var w rateWaiter
	for {
		a.mu.rates.noWait = w.expired
		t, err := a.beginLocked(l, name, cancel, parent)
		a.mu.rates.noWait = false
		if err != errRateWait {
			return t, err
		}
		w.wait(a.fleetState()) // a fleet-wide rate's lease is on its way
	}
}

// beginLocked is begin with a.mu held, once: errRateWait says to wait for
// a sync and begin again.
func (a *Account) beginLocked(l Limits, name string, cancel func(error), parent *Tracker) (*Tracker, error) {
	q := a.quota
	if q != nil {
		if err := q.errLocked(); err != nil {
			return nil, err
		}
	}
	open := q != nil && q.unboundLocked()
	if lim := a.limits[Evaluations].Load(); lim > 0 && !open {
		used := a.usageLocked(Evaluations)
		if used >= lim {
			a.refused[Evaluations].Add(1)
			return nil, &LimitError{Resource: Evaluations, Limit: lim, Used: used, Requested: 1, Tenant: a.name}
		}
	}
	if q != nil && !open {
		// (It may wait for a lease, releasing a.mu: before the checks
		// that hold until the run is added.)
		if err := q.reserveRunLocked(); err != nil {
			return nil, err
		}
	}
	if lim := a.limits[Concurrency].Load(); lim > 0 && int64(len(a.mu.live)) >= lim {
		a.refused[Concurrency].Add(1)
		return nil, &LimitError{Resource: Concurrency, Limit: lim, Used: int64(len(a.mu.live)), Requested: 1, Tenant: a.name}
	}
	if r, used, lim, ok := a.exhaustedLocked(); ok && !open {
		a.refused[r].Add(1)
		return nil, &LimitError{Resource: r, Limit: lim, Used: used, Tenant: a.name}
	}
	var now time.Time // the run's start: read once for the rate too
	if a.mu.rates.evals != nil {
		now = time.Now()
		if err := a.takeEvaluationLocked(now); err != nil {
			return nil, err
		}
	}
	a.mu.evals++
	if q != nil {
		q.runBegunLocked()
	}
	t := newTrackerAt(l, a, name, cancel, now)
	if parent != nil {
		t.adopt(parent)
	}
	t.evaluation = a.mu.evals
	a.mu.live[t] = struct{}{}
	return t, nil
}

// grant adds room for meter i to t (whose refill needs want more to take
// n), checking the account's limit, if any, through its quota. It is
// called with t.mu held.
func (a *Account) grant(t *Tracker, i int, n, want, room int64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	var w rateWaiter
	for {
		a.mu.rates.noWait = w.expired
		err := a.grantLocked(t, i, n, want, room)
		a.mu.rates.noWait = false
		if err != errRateWait {
			return err
		}
		w.wait(a.fleetState()) // a fleet-wide rate's lease is on its way
	}
}

// grantLocked is grant with a.mu held, once: errRateWait says to wait for
// a sync and try again. The room a grant may take comes from the account's
// limit (localRoomLocked) or, with a Store, from this replica's lease of
// the fleet's (its quota's roomLocked).
func (a *Account) grantLocked(t *Tracker, i int, n, want, room int64) error {
	q := a.quota
	if q != nil {
		if err := q.errLocked(); err != nil {
			return err
		}
	}
	res := meterResource[i]
	if a.limits[res].Load() == 0 {
		return a.grantUnlimitedLocked(t, i, n, want, room)
	}
	var free int64
	var err error
	if q == nil {
		free, err = a.localRoomLocked(t, i, n, want)
	} else {
		free, err = q.roomLocked(t, i, n, want)
		if err == nil && a.limits[res].Load() == 0 { // removed while we waited for a lease
			return a.grantUnlimitedLocked(t, i, n, want, room)
		}
	}
	if err != nil {
		return err
	}
	g, err := a.fillLocked(t, i, n, want, want+chunk(t, i, free-want, room-want, len(a.mu.live)))
	if err != nil {
		return err
	}
	if q == nil {
		a.mu.reserved[i] += g
	} else {
		q.grantedLocked(i, free-g)
	}
	return nil
}

// localRoomLocked is how much of meter i, whose limit is set, the account
// may hand out now without a Store: the limit minus what is reserved,
// reclaimed from the other live runs when short of want, so that the
// limit holds exactly.
func (a *Account) localRoomLocked(t *Tracker, i int, n, want int64) (int64, error) {
	res := meterResource[i]
	free := a.limits[res].Load() - a.mu.reserved[i]
	if free < want {
		a.reclaimLocked(i, t)
		free = a.limits[res].Load() - a.mu.reserved[i]
	}
	if free < want {
		return 0, a.refuseLocked(res, a.limits[res].Load(), a.usageLocked(res), n)
	}
	return free, nil
}

// grantUnlimitedLocked adds room to t when the account does not limit
// meter i: under a.mu, so that a SetLimit that races with this refill
// revokes the room it adds.
func (a *Account) grantUnlimitedLocked(t *Tracker, i int, n, want, room int64) error {
	if want > maxUsage-t.filled[i].Load() {
		// The limit was removed since refill looked: nothing limits this
		// request, and it would overflow the run's counter.
		return fmt.Errorf("%w: %s request %d overflows usage", ErrInvalidArgument, meterResource[i], n)
	}
	g := max(room, want)
	if i == mOps && a.mu.rates.ops != nil {
		g = want + rateChunk(t, i, room-want)
	}
	if _, err := a.fillLocked(t, i, n, want, g); err != nil {
		return err
	}
	return nil
}

// chunk returns the room a grant adds beyond what the run needs: a share
// of the free room (free) that shrinks as it runs out and as more runs
// share it (live), at most chunkCap, what the run's own limit leaves
// (room) and about twice what the run has used, so that it grows with the
// run's own rate.
func chunk(t *Tracker, i int, free, room int64, live int) int64 {
	extra := min(free/int64(4*live+4), chunkCap[i], room)
	if u := t.filled[i].Load(); extra > 2*u+64 {
		extra = 2*u + 64
	}
	return max(extra, 0)
}

// fillLocked adds g (at least want) of room for meter i to t, after the
// operations rate, if any, allowed it (which may grant less, never less
// than want), and returns what was added.
func (a *Account) fillLocked(t *Tracker, i int, n, want, g int64) (int64, error) {
	if i == mOps && a.mu.rates.ops != nil {
		var err error
		if g, err = a.takeOpsLocked(t, n, want, g); err != nil {
			return 0, err
		}
	}
	t.addRoom(i, g)
	return g, nil
}

// rateChunk is the room ahead a grant of meter i to t may take when no
// limit bounds it but a rate does (at most max): as with a limit, it
// grows with the run's own usage.
func rateChunk(t *Tracker, i int, most int64) int64 {
	return max(0, min(chunkCap[i], 2*t.filled[i].Load()+64, most))
}

// chunkCap bounds the allowance a run reserves beyond what it asked for.
var chunkCap = [numMeters]int64{mOps: 4096, mCalls: 256, mTotal: 4 << 20}

// reclaimLocked takes back the unused room of meter i from every live run
// but except.
func (a *Account) reclaimLocked(i int, except *Tracker) {
	for r := range a.mu.live {
		if r != except {
			r.reclaimChildren(i)
			v := r.revoke(i)
			a.mu.reserved[i] -= v
			if i == mOps {
				a.refundOpsLocked(v)
			}
		}
	}
}

// usedLocked returns the account's usage of meter i since Reset.
func (a *Account) usedLocked(i int) int64 {
	u := a.mu.committed[i]
	for r := range a.mu.live {
		u = satAdd(u, r.consumed(i)-r.base[i])
	}
	return u
}

func (a *Account) cpuLocked() time.Duration {
	d := a.mu.cpu
	for r := range a.mu.live {
		d = satAddDur(d, time.Duration(r.cpuLast.Load()-r.cpuBase))
	}
	return d
}

// usageLocked returns the account's usage of any resource; with a Store,
// fleet-wide for the cumulative ones.
func (a *Account) usageLocked(r Resource) int64 {
	if q := a.quota; q != nil && cumulative(r) {
		return q.usageLocked(r)
	}
	switch r {
	case Memory:
		return a.held.Load()
	case TotalMemory:
		return a.usedLocked(mTotal)
	case Operations:
		return a.usedLocked(mOps)
	case Calls:
		return a.usedLocked(mCalls)
	case CPUTime:
		return int64(a.cpuLocked())
	case Evaluations:
		return a.mu.evals
	case Concurrency:
		return int64(len(a.mu.live))
	}
	return 0
}

func (a *Account) exhaustedLocked() (Resource, int64, int64, bool) {
	for _, r := range accountResources {
		if !cumulative(r) {
			continue
		}
		if lim := a.limits[r].Load(); lim > 0 {
			if u := a.usageLocked(r); u >= lim {
				return r, u, lim, true
			}
		}
	}
	return 0, 0, 0, false
}

// errHeldOverflow is holdMemory's refusal of a request that no MaxMemory
// limits but that would overflow the bytes held.
var errHeldOverflow = errors.New("reslimit: memory held overflows")

// holdMemory charges n bytes held at once against MaxMemory and returns
// what the account holds with them.
func (a *Account) holdMemory(n int64) (int64, error) {
	lim := a.limits[Memory].Load()
	for {
		h := a.held.Load()
		if lim > 0 && n > lim-h {
			a.refused[Memory].Add(1)
			return 0, &LimitError{Resource: Memory, Limit: lim, Used: h, Requested: n, Tenant: a.name}
		}
		if n > maxUsage-h {
			return 0, errHeldOverflow // no limit: the caller says why
		}
		nh := h + n
		if a.held.CompareAndSwap(h, nh) {
			return nh, nil
		}
	}
}

func (a *Account) releaseMemory(n int64) { a.held.Add(-n) }

// watchCPU arms the account's CPU watchdog, if the account limits CPU
// time and the watchdog is not armed: a run of it started measuring a
// thread.
func (a *Account) watchCPU() {
	if a.limits[CPUTime].Load() == 0 {
		return
	}
	a.mu.Lock()
	if a.mu.cpuTimer == nil {
		a.mu.cpuTimer = time.AfterFunc(minCPUSample, a.cpuTick)
	}
	a.mu.Unlock()
}

// cpuTick is the account's CPU watchdog: it reads the CPU clocks of every
// live run of the account, stops them all with the account's CPUTime
// *LimitError once their total passes MaxCPUTime, and otherwise samples
// again after what is left divided by the threads measured (so that the
// tenant's CPU quota is overshot by at most about minCPUSample per thread
// running, like a run's own limit, plus how late timers fire).
func (a *Account) cpuTick() {
	lim := a.limits[CPUTime].Load()
	a.mu.Lock()
	threads := 0
	for r := range a.mu.live {
		_, n := r.sampleCPUThreads()
		threads += n
	}
	if lim == 0 || threads == 0 {
		a.mu.cpuTimer = nil // armed again by the next run that measures a thread
		a.mu.Unlock()
		return
	}
	used := a.usageLocked(CPUTime)
	left := lim - used
	stop := left < 0
	if l := a.cpuLeftLocked(); l < maxUsage {
		// With a store, this process's runs use the fleet's CPU time
		// under the lease it holds: they stop when it is used up. The
		// next sample comes when half of what is left is used, so that
		// more is asked for before it runs out.
		stop = stop || l <= 0
		left = min(left, l/2)
	}
	if !stop {
		a.mu.cpuTimer.Reset(sampleInterval(time.Duration(left), threads))
		a.mu.Unlock()
		return
	}
	a.mu.cpuTimer = nil
	err := &LimitError{Resource: CPUTime, Limit: lim, Used: used, Tenant: a.name}
	runs := make([]*Tracker, 0, len(a.mu.live))
	for r := range a.mu.live {
		runs = append(runs, r)
	}
	a.mu.Unlock()
	for _, r := range runs {
		r.halt(err)
	}
}

// cpuLeftLocked is how much more CPU time the account's runs may use
// under this replica's lease of the fleet's (maxUsage: no lease binds
// them, as without a Store).
func (a *Account) cpuLeftLocked() int64 {
	if a.quota == nil {
		return maxUsage
	}
	return a.quota.cpuLeftLocked()
}

// checkCPU returns the account's CPUTime *LimitError when its live and
// finished runs have used more than MaxCPUTime.
func (a *Account) checkCPU() error {
	lim := a.limits[CPUTime].Load()
	if lim == 0 {
		return nil
	}
	a.mu.Lock()
	used := time.Duration(a.usageLocked(CPUTime))
	a.mu.Unlock()
	if int64(used) > lim { // counted as a refusal when it stops a run (Tracker.halt)
		return &LimitError{Resource: CPUTime, Limit: lim, Used: int64(used), Tenant: a.name}
	}
	return nil
}

// end finishes t's run: gives back its unused room and the memory it still
// holds, commits its usage and records it. Called with t.mu held.
func (a *Account) end(t *Tracker, cpu time.Duration, runErr error) Usage {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := range numMeters {
		t.reclaimChildren(i)
		r := t.revoke(i)
		if a.limits[meterResource[i]].Load() > 0 {
			a.mu.reserved[i] -= r
		}
		if i == mOps {
			a.refundOpsLocked(r)
		}
	}
	u := t.snapshot(cpu, t.wallTime())
	if h := t.giveBack(); h > 0 {
		a.held.Add(-h)
		t.releaseUp(h)
	}
	delete(a.mu.live, t)
	used := store.Totals{CPUTime: cpu}
	for i := range numMeters {
		a.mu.committed[i] = satAdd(a.mu.committed[i], t.filled[i].Load()-t.base[i])
		tset(&used, meterResource[i], t.filled[i].Load())
	}
	a.mu.cpu = satAddDur(a.mu.cpu, cpu-time.Duration(t.cpuBase))
	if a.quota != nil {
		a.quota.runEndedLocked(used)
	}
	a.mu.largest.PeakMemoryBytes = max(a.mu.largest.PeakMemoryBytes, u.PeakMemoryBytes)
	a.mu.largest.Operations = max(a.mu.largest.Operations, u.Operations)
	if len(a.mu.hist) > 0 {
		a.mu.hist[a.mu.histNext] = HistoryEntry{
			Time: time.Now(), Evaluation: t.evaluation, PeakMemoryBytes: u.PeakMemoryBytes,
			Operations: u.Operations, Calls: u.Calls, CPUTime: u.CPUTime,
			WallTime: u.WallTime, Err: runErr,
		}
		a.mu.histNext = (a.mu.histNext + 1) % len(a.mu.hist)
		a.mu.histLen = min(a.mu.histLen+1, len(a.mu.hist))
	}
	return u
}

// Stats returns a snapshot of the account: totals of its finished and live
// runs, what is held now, the status of every limit, its refusals and run
// stops, and its billing period.
func (a *Account) Stats() AccountStats {
	if a == nil {
		return AccountStats{}
	}
	s := a.stats()
	if a.schedule != nil {
		// The schedule is the caller's function: called without a.mu.
		if end := a.schedule(s.PeriodStart); end.After(s.PeriodStart) {
			s.PeriodEnd = end
		}
	}
	s.Refusals = counts(&a.refused)
	s.RunStops = counts(&a.stops)
	return s
}

// stats is Stats but for the counters that need no lock and PeriodEnd.
func (a *Account) stats() AccountStats {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := AccountStats{
		MemoryBytes:      a.held.Load(),
		TotalMemoryBytes: a.usageLocked(TotalMemory),
		PeakMemoryBytes:  a.peak.Load(),
		Operations:       a.usageLocked(Operations),
		Calls:            a.usageLocked(Calls),
		CPUTime:          time.Duration(a.usageLocked(CPUTime)),
		Evaluations:      a.usageLocked(Evaluations),
		Running:          int64(len(a.mu.live)),
		Largest:          a.mu.largest,
		Period:           a.mu.periodNo,
		PeriodStart:      a.mu.periodStart,
	}
	for _, r := range accountResources {
		lim := a.limits[r].Load()
		if lim == 0 {
			continue
		}
		if s.LimitStatus == nil {
			s.LimitStatus = make(map[Resource]LimitStatus)
		}
		u := a.usageLocked(r)
		s.LimitStatus[r] = LimitStatus{Used: u, Limit: lim, Remaining: max(0, lim-u)}
		if cumulative(r) && u >= lim {
			s.Exhausted = true
		}
	}
	if a.quota != nil {
		s.Fleet = a.quota.statsLocked()
	}
	return s
}

// Exhausted reports whether some cumulative limit (TotalMemory,
// Operations, Calls, CPUTime, Evaluations) has no room left (used >=
// limit), and which one first. It follows the current limits, so SetLimit
// changes it at once.
func (a *Account) Exhausted() (Resource, bool) {
	if a == nil {
		return 0, false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	r, _, _, ok := a.exhaustedLocked()
	return r, ok
}

// History returns a copy of the latest finished runs, oldest first.
func (a *Account) History() []HistoryEntry {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]HistoryEntry, 0, a.mu.histLen)
	start := (a.mu.histNext - a.mu.histLen + len(a.mu.hist)) % max(len(a.mu.hist), 1)
	for k := 0; k < a.mu.histLen; k++ {
		out = append(out, a.mu.hist[(start+k)%len(a.mu.hist)])
	}
	return out
}

// SetLimit changes the account's limit on r (0 removes it). It takes
// effect at once, for the next request of any run: raising a limit clears
// exhaustion, lowering it below usage exhausts the account. Allowance that
// live runs reserved but have not used is taken back.
func (a *Account) SetLimit(r Resource, v int64) error {
	if a == nil {
		return errNilAccount
	}
	if r.isRate() {
		return fmt.Errorf("%w: set the account's %s with SetLimits", ErrInvalidArgument, r)
	}
	if !isAccountResource(r) {
		return fmt.Errorf("%w: an account cannot limit %s", ErrInvalidArgument, r)
	}
	if v < 0 {
		return fmt.Errorf("%w: account limit %s is negative (%d)", ErrInvalidLimits, r, v)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.limits[r].Store(v)
	for i, mr := range meterResource {
		if mr == r && v > 0 {
			a.resyncLocked(i)
		}
	}
	return nil
}

// Limits returns all of the account's current limits (what SetLimit and
// SetLimits set; a limit of 0 is none). Stats().LimitStatus has them by
// Resource, for the resources with a limit.
func (a *Account) Limits() AccountLimits {
	if a == nil {
		return AccountLimits{}
	}
	a.mu.Lock()
	r := a.mu.rates
	a.mu.Unlock()
	return AccountLimits{
		MaxMemory:            a.limits[Memory].Load(),
		MaxTotalMemory:       a.limits[TotalMemory].Load(),
		MaxTotalOperations:   a.limits[Operations].Load(),
		MaxCalls:             a.limits[Calls].Load(),
		MaxCPUTime:           time.Duration(a.limits[CPUTime].Load()),
		MaxEvaluations:       a.limits[Evaluations].Load(),
		MaxConcurrent:        a.limits[Concurrency].Load(),
		EvaluationsPerSecond: r.evalsPerSec,
		EvaluationBurst:      r.evalBurst,
		OperationsPerSecond:  r.opsPerSec,
		OperationBurst:       r.opBurst,
	}
}

// SetLimits replaces all of the account's limits at once, as SetLimit does
// for one. Invalid limits change nothing.
func (a *Account) SetLimits(l AccountLimits) error {
	if a == nil {
		return errNilAccount
	}
	if err := l.Validate(); err != nil {
		return err
	}
	for _, r := range accountResources {
		if err := a.SetLimit(r, l.get(r)); err != nil {
			return err
		}
	}
	a.mu.Lock()
	a.mu.rates.setLocked(l)
	a.mu.Unlock()
	return nil
}

// resyncLocked takes back every live run's unused room of meter i and
// recomputes what is reserved.
func (a *Account) resyncLocked(i int) {
	sum := a.mu.committed[i]
	for t := range a.mu.live {
		v := t.revoke(i)
		if i == mOps {
			a.refundOpsLocked(v)
		}
		sum += t.used(i) - t.base[i]
	}
	a.mu.reserved[i] = sum
}

// AppendReadings implements Source with the account's usage, limits,
// tenant-level refusals and run stops (Reading.RunStops) for every
// resource an account can limit; a reading of each rate that is set or
// refused something, with the burst as Limit and the tokens in use (the
// burst less what a request could take now) as Used; and a reading of
// each other resource that stopped runs of the account (a per-run limit
// such as timeout or file_size: its run stops alone, with Used and Limit
// 0).
func (a *Account) AppendReadings(dst []Reading) []Reading {
	if a == nil {
		return dst
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, r := range accountResources {
		rd := Reading{Resource: r, Used: a.usageLocked(r), Limit: a.limits[r].Load(), Refusals: a.refused[r].Load(), RunStops: a.stops[r].Load()}
		if cumulative(r) && a.quota != nil {
			rd.StoreLost = a.quota.lostLocked(r)
		}
		dst = append(dst, rd)
	}
	var now time.Time
	for _, r := range [...]Resource{EvaluationRate, OperationRate} {
		lim, credit := a.mu.rates.evals, a.mu.rates.evalCredit
		if r == OperationRate {
			lim, credit = a.mu.rates.ops, a.mu.rates.opCredit
		}
		n := a.refused[r].Load()
		if n == 0 && lim == nil {
			continue
		}
		rd := Reading{Resource: r, Refusals: n}
		if lim != nil {
			if now.IsZero() {
				now = time.Now()
			}
			// Tokens the account took ahead (credit) can still be used:
			// they are not in use.
			burst := int64(lim.Burst())
			left := max(0, min(burst, int64(bucketTokens(lim, now))+credit))
			rd.Limit, rd.Used = burst, burst-left
		}
		dst = append(dst, rd)
	}
	for r := Memory; int(r) < numResources; r++ {
		if n := a.stops[r].Load(); n > 0 && !r.isRate() && !isAccountResource(r) {
			dst = append(dst, Reading{Resource: r, RunStops: n})
		}
	}
	return dst
}
