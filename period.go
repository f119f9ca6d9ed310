package reslimit

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/reslimit/reslimit/store"
)

// Period is one closed billing period of one tenant: what its runs were
// charged from Start to End (an invoice line). Every unit a run is
// charged lands in exactly one period, the one open when it was charged,
// also while runs are going when the period closes.
type Period struct {
	// Tenant is the account's name.
	Tenant string
	// Number is the period's number: 1 for an account's first period,
	// one more at every close. A ledger numbers its periods itself (see
	// Ledger.ClosePeriod), and every account it opens takes its number.
	Number uint64
	// Start and End bound the period: End is when it was closed.
	Start, End time.Time
	// Totals are the cumulative quantities charged in the period:
	// operations, calls, bytes charged (TotalMemory), CPU time and
	// evaluations (runs started).
	store.Totals
	// PeakMemoryBytes is the most memory the tenant's runs held at once
	// during the period.
	PeakMemoryBytes int64
	// Final is true when the totals can no longer change. A period closed
	// on an account without a Store is always final.
	Final bool
}

// Reset closes the account's open billing period and returns its totals,
// atomically: every unit charged to the account lands in exactly one
// period, the closed one or the new one, also while runs are going (what
// a live run uses after the close counts in the new period). Reset zeroes
// the cumulative totals (so that the cumulative limits start over), the
// peak (which starts again at what is held now), the largest run, the
// history and the evaluation count, and keeps the limits, the refusal
// counts and what live runs hold at once.
//
// With a Store, the returned Period holds what this replica charged in
// the period; summing the replicas' lines for a period gives the fleet's.
// With a store that keeps periods (a store.PeriodLoader: store.Memory, the Redis
// store), the close is fleet-wide: the next sync moves the tenant's period
// in the store on (the other replicas close theirs when the store tells
// them, see Ledger.Periods), the usage charged before the close is billed
// to the closed period whenever it is reported, and the fleet-wide totals
// and quotas start over (the store's LoadPeriod reads a period's fleet
// totals and whether they are final). With another store, the store's totals and
// the quotas do not start over.
func (a *Account) Reset() Period {
	if a == nil {
		return Period{}
	}
	return a.closePeriod(time.Now(), 0)
}

// closePeriod closes the open period at end and opens period next (the
// open one's number plus one when next is 0).
func (a *Account) closePeriod(end time.Time, next uint64) Period {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.closePeriodLocked(end, next)
}

func (a *Account) closePeriodLocked(end time.Time, next uint64) Period {
	p := Period{Tenant: a.name, Number: a.mu.periodNo, Start: a.mu.periodStart, End: end, Final: true}
	if p.Start.IsZero() || p.Start.After(end) {
		p.Start = end
	}
	var meters, live [numMeters]int64
	for i := range numMeters {
		// Freeze every live run's meter (its unused room, and its child
		// runs', comes back), so that its usage cannot move while it is
		// split between the periods; its next charge takes the slow path,
		// which waits for a.mu and counts in the new period.
		for t := range a.mu.live {
			t.reclaimChildren(i)
			if v := t.revoke(i); i == mOps {
				a.refundOpsLocked(v)
			}
		}
		meters[i] = a.mu.committed[i]
		for t := range a.mu.live {
			u := t.consumed(i)
			meters[i] = satAdd(meters[i], u-t.base[i])
			live[i] = satAdd(live[i], u)
			t.base[i] = u
		}
		a.mu.committed[i] = 0
		a.mu.reserved[i] = 0 // no live run holds room, nothing committed
	}
	cpu, liveCPU := a.mu.cpu, time.Duration(0)
	for t := range a.mu.live {
		// cpuLast only grows and is sampled without a.mu: read it once.
		c := t.cpuLast.Load()
		cpu = satAddDur(cpu, time.Duration(c-t.cpuBase))
		liveCPU = satAddDur(liveCPU, time.Duration(c))
		t.cpuBase = c
	}
	p.Operations, p.Calls, p.TotalMemory = meters[mOps], meters[mCalls], meters[mTotal]
	p.CPUTime = cpu
	p.Evaluations = a.mu.evals
	p.PeakMemoryBytes = a.peak.Swap(a.held.Load())
	a.mu.cpu = 0
	a.mu.evals = 0
	a.mu.largest = Largest{}
	clear(a.mu.hist)
	a.mu.histNext, a.mu.histLen = 0, 0
	if next == 0 {
		next = a.mu.periodNo + 1
	}
	// The split point of a store's reports: what this process used until
	// now (its life totals: what the live runs used, as frozen here, and
	// what the fleet's side keeps) belongs to the closed period.
	if a.quota != nil {
		lt := store.Totals{CPUTime: liveCPU}
		for i, r := range meterResource {
			tset(&lt, r, live[i])
		}
		a.quota.periodClosedLocked(p.Number, lt)
	}
	a.mu.periodNo, a.mu.periodStart = next, end
	return p
}

// defaultPeriodsKept is how many closed periods a Ledger keeps readable
// by default (see WithPeriodsKept).
const defaultPeriodsKept = 12

// WithPeriod makes the ledger close the period of every tenant every d,
// at the multiples of d since the zero time (time.Time.Truncate): with d =
// time.Hour, on the hour. d must be positive. See WithPeriodSchedule.
func WithPeriod(d time.Duration) LedgerOption {
	return func(l *Ledger) {
		if d <= 0 {
			l.setErr(fmt.Errorf("%w: WithPeriod(%v): not positive", ErrInvalidArgument, d))
			return
		}
		l.periods.next = func(now time.Time) time.Time { return now.Truncate(d).Add(d) }
	}
}

// WithPeriodSchedule makes the ledger close the period of every tenant at
// the times next returns: next(now) is the end of the period open at now
// (after now), for example the first instant of the next month:
//
//	reslimit.WithPeriodSchedule(func(now time.Time) time.Time {
//		y, m, _ := now.UTC().Date()
//		return time.Date(y, m+1, 1, 0, 0, 0, 0, time.UTC)
//	})
//
// A goroutine closes the periods (as ClosePeriod, with End the scheduled
// time); Ledger.Close stops it. A next that returns a time not after now
// is retried a second later. Account.Stats calls next too, with the open
// period's start, for AccountStats.PeriodEnd: next must be cheap and safe
// for concurrent use.
func WithPeriodSchedule(next func(now time.Time) time.Time) LedgerOption {
	return func(l *Ledger) {
		if next == nil {
			l.setErr(fmt.Errorf("%w: WithPeriodSchedule(nil)", ErrInvalidArgument))
			return
		}
		l.periods.next = next
	}
}

// WithPeriodsKept sets how many closed periods (closes of every tenant's
// period, by ClosePeriod or the schedule) Periods returns: the latest n
// (default 12; 0 keeps none; negative is invalid).
func WithPeriodsKept(n int) LedgerOption {
	return func(l *Ledger) {
		if n < 0 {
			l.setErr(fmt.Errorf("%w: WithPeriodsKept(%d): negative", ErrInvalidArgument, n))
			return
		}
		l.periods.keep, l.periods.keepSet = n, true
	}
}

// WithPeriodClosed calls fn with the invoice lines of every close the
// ledger did not return to a caller: each period the schedule (WithPeriod,
// WithPeriodSchedule) closes, and, with a store that keeps periods, each
// close this replica made because the store said another replica closed a
// tenant's period (see ClosePeriod). Lines from ClosePeriod go to its
// caller instead. fn is called one close at a time, in the order of the
// closes, from a goroutine of the ledger (so that it may use the ledger,
// Sync included, but not Close it), and never after Close returned: Close
// waits for it, unless Close's context ends first, and delivers the
// closes its own final report makes before it returns.
func WithPeriodClosed(fn func(lines []Period)) LedgerOption {
	return func(l *Ledger) { l.periods.hook = fn }
}

// ledgerPeriods is a Ledger's billing-period state.
type ledgerPeriods struct {
	next    func(time.Time) time.Time // the schedule, or nil
	hook    func([]Period)
	keep    int
	keepSet bool
	stop    chan struct{} // closed by Close: the schedule's goroutine returns
	done    chan struct{}
	once    sync.Once

	// closeMu makes one close at a time, and guards what closes write.
	closeMu struct {
		sync.Mutex
		kept [][]Period // the latest closes
		// queued are the closes for the hook, in the order they were
		// made (the schedule's and the store's): deliverLoop calls the
		// hook, so that it never runs inside a close or a sync (it may
		// call Sync).
		queued [][]Period
	}
	number  uint64     // the open period's number (0 reads as 1); guarded by Ledger.mu
	removed []*Account // removed accounts (without a store.Store) still to bill; guarded by Ledger.mu

	hookMu   sync.Mutex // one hook call at a time; it guards no field
	wake     chan struct{}
	hookStop chan struct{}
	hookDone chan struct{}
	hookOnce sync.Once
}

func (p *ledgerPeriods) open() uint64 { return max(p.number, 1) }

func (l *Ledger) startPeriods() {
	if l.periods.next == nil {
		return
	}
	l.periods.stop = make(chan struct{})
	l.periods.done = make(chan struct{})
	go l.periodLoop()
}

// stopPeriods stops the schedule's goroutine and waits for it.
func (l *Ledger) stopPeriods(ctx context.Context) error {
	if l.periods.stop == nil {
		return nil
	}
	l.periods.once.Do(func() { close(l.periods.stop) })
	select {
	case <-l.periods.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l *Ledger) periodLoop() {
	defer close(l.periods.done)
	for {
		now := time.Now()
		at := l.periods.next(now)
		wait := at.Sub(now)
		if wait <= 0 {
			wait, at = time.Second, now.Add(time.Second)
		}
		timer := time.NewTimer(wait)
		select {
		case <-l.periods.stop:
			timer.Stop()
			return
		case <-timer.C:
		}
		l.closePeriodFor(at, true)
	}
}

// startHooks starts the goroutine that passes closes to the
// WithPeriodClosed hook (deliverLoop), if the ledger may make any: it has a
// schedule or a store that keeps periods.
func (l *Ledger) startHooks() {
	if l.periods.hook == nil || (l.periods.next == nil && !l.fleet.periodStore) {
		return
	}
	l.periods.wake = make(chan struct{}, 1)
	l.periods.hookStop = make(chan struct{})
	l.periods.hookDone = make(chan struct{})
	go l.deliverLoop()
}

func (l *Ledger) deliverLoop() {
	defer close(l.periods.hookDone)
	for {
		select {
		case <-l.periods.wake:
			l.deliverQueued()
		case <-l.periods.hookStop:
			l.deliverQueued()
			return
		}
	}
}

// queueHookLocked queues the lines of a close for the hook. Called with
// l.periods.closeMu held, so that the queue keeps the order of the closes.
func (l *Ledger) queueHookLocked(lines []Period) {
	if l.periods.wake == nil {
		return
	}
	l.periods.closeMu.queued = append(l.periods.closeMu.queued, lines)
	select {
	case l.periods.wake <- struct{}{}:
	default:
	}
}

// deliverQueued passes the queued closes to the hook, oldest first, one
// at a time (deliverLoop, and Close after it stopped).
func (l *Ledger) deliverQueued() {
	l.periods.hookMu.Lock()
	defer l.periods.hookMu.Unlock()
	for {
		l.periods.closeMu.Lock()
		q := l.periods.closeMu.queued
		l.periods.closeMu.queued = nil
		l.periods.closeMu.Unlock()
		if len(q) == 0 {
			return
		}
		for _, lines := range q {
			l.periods.hook(lines)
		}
	}
}

// endHooks tells deliverLoop to return once it has delivered what is
// queued. It does not wait: it may be called from the hook (a Sync that
// completed the final report).
func (l *Ledger) endHooks() {
	if l.periods.hookStop != nil {
		l.periods.hookOnce.Do(func() { close(l.periods.hookStop) })
	}
}

// stopHooks ends deliverLoop and waits for it (bounded by ctx), then
// delivers what was queued after it returned.
func (l *Ledger) stopHooks(ctx context.Context) error {
	if l.periods.hookStop == nil {
		return nil
	}
	l.endHooks()
	select {
	case <-l.periods.hookDone:
	default:
		select {
		case <-l.periods.hookDone:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	l.deliverQueued()
	return nil
}

// ClosePeriod closes the open billing period of every tenant at once
// (each atomically, as Account.Reset, with the same End) and returns the
// invoice lines, sorted by tenant: one per account the ledger holds, and
// one for each tenant removed since the last close (its usage until
// Remove, and that of its runs still going, is billed too). The ledger
// numbers its periods: every line has the same Number, and the accounts
// the ledger opens later belong to the next period from their creation.
// The latest closes stay readable with Periods.
//
// With a Store, each line holds what this replica charged in the period:
// the lines of every replica for a period sum to the fleet's usage in it.
// With a store that keeps periods (see Account.Reset), the close is
// fleet-wide and a store-backed tenant's lines are numbered by the store's
// period, which the replicas share; when the store says another replica
// closed a tenant's period, this replica closes its own at its next sync,
// keeps that line in Periods as a close of its own and passes it to the
// WithPeriodClosed hook.
func (l *Ledger) ClosePeriod() []Period {
	return l.closePeriodFor(time.Now(), false)
}

// closePeriodFor closes the open period at end and returns its lines; the
// schedule's closes (hook) go to the WithPeriodClosed hook too.
func (l *Ledger) closePeriodFor(end time.Time, hook bool) []Period {
	l.periods.closeMu.Lock()
	defer l.periods.closeMu.Unlock()
	l.mu.Lock()
	number := l.periods.open()
	l.periods.number = number + 1
	accts := make([]*Account, 0, len(l.accts)+len(l.periods.removed))
	for _, a := range l.accts {
		accts = append(accts, a)
	}
	accts = append(accts, l.periods.removed...)
	l.mu.Unlock()

	byTenant := make(map[string]int, len(accts))
	lines := make([]Period, 0, len(accts))
	for _, a := range accts {
		var p Period
		if l.fleet.periodStore {
			// A fleet tenant's periods are numbered by the store.
			p = a.closePeriod(end, 0)
		} else {
			p = a.closePeriod(end, number+1)
			p.Number = number
		}
		if k, ok := byTenant[p.Tenant]; ok {
			lines[k] = lines[k].merge(p) // a removed account and its successor
			continue
		}
		byTenant[p.Tenant] = len(lines)
		lines = append(lines, p)
	}
	sort.Slice(lines, func(i, j int) bool { return lines[i].Tenant < lines[j].Tenant })

	// Forget the removed accounts that have nothing left to bill.
	l.mu.Lock()
	kept := l.periods.removed[:0]
	for _, a := range l.periods.removed {
		a.mu.Lock()
		if len(a.mu.live) > 0 {
			kept = append(kept, a)
		}
		a.mu.Unlock()
	}
	clear(l.periods.removed[len(kept):])
	l.periods.removed = kept
	l.mu.Unlock()

	l.periods.keepLocked(lines)
	if hook {
		l.queueHookLocked(slices.Clone(lines))
	}
	return slices.Clone(lines)
}

// keepLocked keeps the lines of one close, dropping the oldest close past
// WithPeriodsKept. It requires that p.closeMu is held.
func (p *ledgerPeriods) keepLocked(lines []Period) {
	keep := p.keep
	if !p.keepSet {
		keep = defaultPeriodsKept
	}
	if keep > 0 {
		if len(p.closeMu.kept) >= keep {
			copy(p.closeMu.kept, p.closeMu.kept[1:])
			p.closeMu.kept = p.closeMu.kept[:len(p.closeMu.kept)-1]
		}
		p.closeMu.kept = append(p.closeMu.kept, lines)
	}
}

// merge adds q, another line of the same tenant and period, to p.
func (p Period) merge(q Period) Period {
	p.Totals = p.Totals.Add(q.Totals)
	p.PeakMemoryBytes = max(p.PeakMemoryBytes, q.PeakMemoryBytes)
	if q.Start.Before(p.Start) {
		p.Start = q.Start
	}
	p.Final = p.Final && q.Final
	return p
}

// Periods returns the invoice lines of the latest closed periods (see
// WithPeriodsKept), oldest period first and sorted by tenant within a
// period. The result is a copy.
func (l *Ledger) Periods() []Period {
	l.periods.closeMu.Lock()
	defer l.periods.closeMu.Unlock()
	var out []Period
	for _, lines := range l.periods.closeMu.kept {
		out = append(out, lines...)
	}
	return out
}
