package reslimit

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/reslimit/reslimit/internal/threadcpu"
)

// cacheLine is the assumed size of a CPU cache line; hot counters are padded
// to it so that goroutines charging different counters do not contend.
const cacheLine = 64

// unlimitedFill is how much room a meter takes at once when neither the run
// nor its account limits the resource. It is refilled when used up.
const unlimitedFill = 1 << 50

// The metered (monotonic, cumulative) resources of a tracker.
const (
	mOps = iota
	mCalls
	mTotal
	numMeters
)

var meterResource = [numMeters]Resource{mOps: Operations, mCalls: Calls, mTotal: TotalMemory}

// meter counts one cumulative resource. avail is the room the run may take
// without the slow path; the hot path is a single CAS on it, and a request
// that does not fit goes to Tracker.refill, which checks the run's limit and
// the account's and adds room. What the run has used is filled - avail.
type meter struct {
	avail atomic.Int64
	_     [cacheLine - 8]byte
}

// room returns the room counter of meter i.
func (t *Tracker) room(i int) *atomic.Int64 {
	if i == mTotal {
		return &t.mem.room
	}
	return &t.meters[i].avail
}

// stopState holds why a run was stopped (Tracker.cause): the first reason
// wins, and every later charge is refused with it.
type stopState struct{ err error }

// Tracker counts what one run (or one long-lived component) consumes and
// refuses requests that would take it over its Limits. Its counters are
// lock-free atomics; every method is safe for concurrent use. Methods on a
// nil *Tracker are no-ops that succeed, so instrumented code runs unchanged
// when nothing limits it.
//
// A Tracker is created by NewTracker, Account.Begin, Run or Limit, and
// finished with End, after which tracking returns ErrClosed. The zero
// Tracker counts with no limits, like NewTracker(Limits{}), except that it
// never started: its wall time reads 0.
type Tracker struct {
	// The hot lines, one each: the operations and calls meters, the
	// memory line and the slots.
	meters [mTotal]meter // operations, calls
	// The memory line: what TrackMemory and the guards write, together, so
	// that a contended acquire moves one cache line between cores. The bytes
	// held are derived: charged (the TotalMemory meter's usage, filled -
	// room) minus released, so an acquire is one CAS on room and a release
	// one CAS on rel. gen is a sequence lock (odd while a refill or revoke
	// changes a meter's filled and room together) that lets the hot path
	// and the readings read filled and room consistently without a lock.
	mem struct {
		room atomic.Int64 // room of the TotalMemory meter: what may be charged without a refill
		rel  atomic.Int64 // bytes released, cumulatively
		gen  atomic.Uint64
		_    [cacheLine - 24]byte
	}
	slots slots // one line

	// Read by every reading (Usage, the Monitor's polls) and by charges,
	// seldom written: three lines after the hot ones, so that a poll of
	// a tracker reads seven lines (192 bytes: limits, filled, refused,
	// maxFile and cpuLast).
	limits  Limits
	filled  [numMeters]atomic.Int64 // room ever added, less what was revoked
	refused [numResources]atomic.Int64
	maxFile atomic.Int64
	cpuLast atomic.Int64 // last sampled CPU time, ns, including cpuExtra

	// Read by every memory charge, written when it rises: away from the
	// memory line, whose owner changes with every contended charge.
	peak     atomic.Int64
	closed   atomic.Bool
	cause    atomic.Pointer[stopState] // first reason the run was stopped
	cpuExtra atomic.Int64              // AddCPUTime, ns

	skipCPU bool          // Run/Limit with nothing that needs CPU time: no thread clock
	pinRes  atomic.Uint32 // pinKind reserved by Run for its own goroutine (see reservePin)
	name    string
	acct    *Account
	// parent is the run this one was started in (a nested Run or Limit
	// call), or nil. Every operation and call the run counts is drawn from
	// the parent's meters (and so from its limits and its account), and
	// the memory it holds is held by the parent too.
	parent   *Tracker
	childMu  sync.Mutex // guards children; taken before a child's meterMu
	children []*Tracker // live child runs, whose unused room can be reclaimed
	start    time.Time
	cancel   func(error) // cancels the run's context, if any
	// stopAfter unregisters the halt on the caller's cancellation of a
	// tracker made by a runCtx.
	stopAfter func() bool

	mu      sync.Mutex // serialises refills and End
	meterMu sync.Mutex // leaf lock: writes of filled and lent, consistent reads of meters
	// lent is the room of operations and calls drawn by child runs that
	// are still live: counted as used by this run's meters (it is
	// reserved), but not consumed until a child uses it. Guarded by
	// meterMu, and changed together with the room (see consumed).
	lent       [mTotal]int64
	base       [numMeters]int64 // guarded by acct.mu: usage already charged before an account Reset
	cpuBase    int64            // guarded by acct.mu
	evaluation int64            // 1-based number of the run in its account

	cpuMu      sync.Mutex
	threads    []cpuThread
	cpuDone    time.Duration // CPU of threads that have finished
	cpuTimer   *time.Timer
	timeoutTmr *time.Timer

	goWG    sync.WaitGroup
	goPanic atomic.Pointer[panicValue]

	endOnce sync.Once
	final   Usage

	// stops, on a run nested in no other, is the stops its tree counted
	// (see noteStop); nil until the first.
	stops atomic.Pointer[stopSet]
}

type cpuThread struct {
	id    uint64
	clk   threadcpu.Clock
	start time.Duration
	pin   pinKind // pinWall: not pinned, start is wall time
}

type panicValue struct{ v any }

// Usage is a snapshot of what a run has consumed. Memory and file sizes are
// in bytes. Each field is read atomically; fields read at slightly
// different instants while the run is busy.
type Usage struct {
	// MemoryBytes is the memory held now (at End: held when the run ended).
	MemoryBytes int64
	// PeakMemoryBytes is the most memory held at once.
	PeakMemoryBytes int64
	// TotalMemoryBytes is every byte charged with TrackMemory, cumulatively.
	TotalMemoryBytes int64
	// Operations counts TrackOperation and TrackOperations.
	Operations int64
	// Calls counts TrackCall.
	Calls int64
	// CPUTime is the CPU time used. A Run measures it when MaxCPUTime is
	// set, the run is charged to an Account, or WithCPUTime is given;
	// otherwise only AddCPUTime counts. On Linux it is read from the CPU
	// clocks of the OS threads that ran the work. On other platforms (and
	// for a run nested in another, or a Tracker.Go goroutine, that found
	// no place to pin its thread: see Run) the wall time of the run's
	// goroutines stands in for it: an upper bound for work on one thread,
	// which charges a sleeping run as if it computed.
	CPUTime time.Duration
	// WallTime is the time since the tracker was created (at End: its life).
	WallTime time.Duration
	// Concurrent is the number of slots held now.
	Concurrent int64
	// LargestFileBytes is the largest size seen by CheckFileSize or a
	// limited stream.
	LargestFileBytes int64
	// Refusals counts the requests of this run that were refused by a
	// per-run limit.
	Refusals int64
}

// NewTracker returns a tracker for one run bounded by l, detached from any
// account. A Timeout in l starts counting now: when it passes, TrackOperation returns
// a *LimitError{Resource: Timeout}. It returns an error wrapping
// ErrInvalidLimits for invalid limits.
func NewTracker(l Limits) (*Tracker, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	return newTracker(l, nil, "", nil), nil
}

func newTracker(l Limits, acct *Account, name string, cancel func(error)) *Tracker {
	return newTrackerAt(l, acct, name, cancel, time.Time{})
}

// wallTime is the time since the run started (0 for a zero Tracker).
func (t *Tracker) wallTime() time.Duration {
	if t.start.IsZero() {
		return 0
	}
	return time.Since(t.start)
}

// newTrackerAt is newTracker for a run that starts at now (if not zero).
func newTrackerAt(l Limits, acct *Account, name string, cancel func(error), now time.Time) *Tracker {
	t := newRunTracker(l, acct, name, cancel)
	if now.IsZero() {
		now = time.Now()
	}
	t.start = now
	if l.Timeout > 0 {
		t.timeoutTmr = time.AfterFunc(l.Timeout, t.timedOut)
	}
	return t
}

// newRunTracker is newTracker for a run whose timeout and start time its
// runCtx keeps.
func newRunTracker(l Limits, acct *Account, name string, cancel func(error)) *Tracker {
	t := &Tracker{limits: l, acct: acct, name: name, cancel: cancel}
	t.slots.limit = l.MaxConcurrent
	return t
}

func (t *Tracker) timedOut() {
	el := time.Since(t.start)
	t.halt(&LimitError{Resource: Timeout, Limit: int64(t.limits.Timeout), Used: int64(el)})
}

// halt stops the run with err: TrackOperation returns it and the run's context (if
// any) is cancelled with it as the cause. Only the first reason sticks.
func (t *Tracker) halt(err error) {
	if t.closed.Load() {
		return // a timer that fires while End runs stops nothing
	}
	s := &stopState{err: err}
	if !t.cause.CompareAndSwap(nil, s) {
		// Stopped already: make sure TrackOperation says so before returning, even
		// if the first halt has not drained the run yet.
		t.drain()
		return
	}
	t.drain()
	if le, ok := err.(*LimitError); ok && le.Resource.valid() {
		if le.Tenant == "" {
			t.refused[le.Resource].Add(1)
		} else if t.acct != nil {
			t.acct.refused[le.Resource].Add(1) // once per stopped run
		}
	}
	if t.cancel != nil {
		t.cancel(err)
	}
}

// drain takes back the room of a stopped run, so that its next charge
// takes the slow path, which refuses it with the reason the run was
// stopped. Called without t.mu and the account's lock held.
func (t *Tracker) drain() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed.Load() {
		return // End took everything back
	}
	a := t.acct
	if a != nil {
		a.mu.Lock()
		defer a.mu.Unlock()
	}
	for i := range numMeters {
		r := t.revoke(i)
		if a != nil && a.limits[meterResource[i]].Load() > 0 {
			a.mu.reserved[i] -= r
		}
	}
}

// stopped returns why the run refuses every charge: the reason it was
// stopped, or ErrClosed after End; nil while it runs.
func (t *Tracker) stopped() error {
	if t.closed.Load() {
		return ErrClosed
	}
	if s := t.cause.Load(); s != nil {
		return s.err
	}
	return nil
}

// Limits returns the limits the tracker was created with.
func (t *Tracker) Limits() Limits {
	if t == nil {
		return Limits{}
	}
	return t.limits
}

// Name returns the name given with WithName (or the account's run name), or "".
func (t *Tracker) Name() string {
	if t == nil {
		return ""
	}
	return t.name
}

// Account returns the account the run is charged to, or nil.
func (t *Tracker) Account() *Account {
	if t == nil {
		return nil
	}
	return t.acct
}

// Err returns why the run was stopped (a *LimitError for its timeout, CPU
// time or its tenant's CPU quota, or the cancellation cause of its
// context), or nil while it has not been stopped. End does not count as a stop.
func (t *Tracker) Err() error {
	if t == nil {
		return nil
	}
	if s := t.cause.Load(); s != nil {
		return s.err
	}
	return nil
}

// take charges n units of meter i: one CAS when the run has room.
func (t *Tracker) take(i int, n int64) error {
	m := t.room(i)
	for {
		a := m.Load()
		if a < n {
			return t.refill(i, n, true)
		}
		if m.CompareAndSwap(a, a-n) {
			return nil
		}
	}
}

// refill is the slow path of take: it checks the run's limit and the
// account's, adds room and takes n, or refuses without changing anything.
func (t *Tracker) refill(i int, n int64, take bool) error {
	if n < 0 {
		return fmt.Errorf("%w: negative %s request %d", ErrInvalidArgument, meterResource[i], n)
	}
	m := t.room(i)
	t.mu.Lock()
	defer t.mu.Unlock()
	for {
		if err := t.stopped(); err != nil {
			return err // a stopped run refuses every further charge
		}
		a := m.Load()
		if a >= n {
			if !take {
				return nil // room enough: the caller takes it
			}
			if m.CompareAndSwap(a, a-n) {
				return nil
			}
			continue
		}
		res := meterResource[i]
		t.meterMu.Lock()
		filled := t.filled[i].Load()
		t.meterMu.Unlock()
		used := filled - a
		lim := t.limits.limit(res)
		if lim > 0 && n > lim-used {
			if i != mTotal && t.reclaimChildren(i) > 0 {
				continue // child runs held room they had not used
			}
			t.refused[res].Add(1)
			return &LimitError{Resource: res, Limit: lim, Used: used, Requested: n}
		}
		// A request past a limit is refused as such whatever its size
		// (by the account, in grant, if it limits res); only a request
		// that nothing limits can be refused for overflowing the counter.
		if lim == 0 && n > maxUsage-used && (t.acct == nil || t.acct.limits[res].Load() == 0) {
			return fmt.Errorf("%w: %s request %d overflows usage %d", ErrInvalidArgument, res, n, used)
		}
		room := int64(unlimitedFill)
		if lim > 0 {
			room = lim - filled
		}
		if err := t.addRoomFor(i, n, n-a, room, filled); err != nil {
			return err
		}
	}
}

// addRoomFor adds room to meter i for a request of n that needs want more
// than the run has at hand, up to room (what the run's own limit leaves):
// from the run's parent, its account or, with neither, all of room.
func (t *Tracker) addRoomFor(i int, n, want, room, filled int64) error {
	if p := t.parent; p != nil && i != mTotal {
		// A child run: what it counts is drawn from its parent first.
		// With an account of its own as well, exactly what is needed is
		// drawn from both; otherwise some room ahead, as the parent can
		// spare it.
		extra := int64(0)
		if t.acct == nil {
			extra = min(chunkCap[i], 2*filled+64, room-want)
		}
		g, err := p.lend(i, want, extra)
		if err != nil {
			return err
		}
		if t.acct == nil {
			t.addRoom(i, g)
		} else if err := t.acct.grant(t, i, n, g, g); err != nil {
			p.unlend(i, g) // give the parent back what it lent
			return err
		}
		return nil
	}
	if t.acct != nil {
		return t.acct.grant(t, i, n, want, room)
	}
	t.addRoom(i, max(room, want)) // want > room only for requests larger than unlimitedFill
	return nil
}

// maxUsage caps every counter far below overflow.
const maxUsage = 1 << 62

func (t *Tracker) addRoom(i int, g int64) {
	t.meterMu.Lock()
	t.mem.gen.Add(1)
	t.filled[i].Add(g)
	t.room(i).Add(g)
	t.mem.gen.Add(1)
	t.meterMu.Unlock()
}

// revoke takes back the room of meter i that the run has not used and
// returns it. A child run's room of operations and calls was drawn from
// its parent, which gets it back. Called with acct.mu or t.mu held.
func (t *Tracker) revoke(i int) int64 {
	t.meterMu.Lock()
	t.mem.gen.Add(1)
	r := t.room(i).Swap(0)
	t.filled[i].Add(-r)
	t.mem.gen.Add(1)
	t.meterMu.Unlock()
	if p := t.parent; p != nil && i != mTotal && r > 0 {
		p.unlend(i, r)
	}
	return r
}

// unlend takes back r of meter i (operations or calls) that a child run
// drew and did not use.
func (t *Tracker) unlend(i int, r int64) {
	t.meterMu.Lock()
	t.room(i).Add(r)
	t.lent[i] -= r
	t.meterMu.Unlock()
}

// lend draws room for a child run from meter i (operations or calls): want
// as any charge would be (checking the run's limits, its account's and its
// own parent's), and up to extra more from the room the run has at hand,
// leaving it at least half. It returns what was drawn. What is drawn moves
// from the run's room to its lent count in one step under meterMu, so that
// consumed never counts it as used by this run.
func (t *Tracker) lend(i int, want, extra int64) (int64, error) {
	m := t.room(i)
	for {
		t.meterMu.Lock()
		a := m.Load()
		if a >= want {
			g := want + max(0, min(extra, (a-want)/2))
			if m.CompareAndSwap(a, a-g) {
				t.lent[i] += g
				t.meterMu.Unlock()
				return g, nil
			}
			t.meterMu.Unlock()
			continue
		}
		t.meterMu.Unlock()
		// Not enough room: the slow path of a charge adds it (or refuses),
		// without taking it.
		if err := t.refill(i, want, false); err != nil {
			return 0, err
		}
	}
}

// reclaimChildren takes back the room of meter i that the run's live child
// runs drew but have not used, and returns how much that was.
func (t *Tracker) reclaimChildren(i int) int64 {
	t.childMu.Lock()
	defer t.childMu.Unlock()
	var sum int64
	for _, c := range t.children {
		if c.acct != nil {
			continue // drew only what it used; its account books what it holds
		}
		c.reclaimChildren(i)
		sum += c.revoke(i) // gives it back to t
	}
	return sum
}

// adopt makes t a child run of parent. Called before t is shared.
func (t *Tracker) adopt(parent *Tracker) {
	t.parent = parent
	parent.childMu.Lock()
	parent.children = append(parent.children, t)
	parent.childMu.Unlock()
}

// chargesTo reports whether the run, or a run it is nested in, is charged
// to acct.
func (t *Tracker) chargesTo(acct *Account) bool {
	if t == nil || acct == nil {
		return false
	}
	for r := t; r != nil; r = r.parent {
		if r.acct == acct {
			return true
		}
	}
	return false
}

// orphan removes the ended child run t from its parent's live children;
// what t drew and used is the parent's own usage from then on.
func (t *Tracker) orphan() {
	p := t.parent
	if p == nil {
		return
	}
	p.childMu.Lock()
	for k, c := range p.children {
		if c == t {
			last := len(p.children) - 1
			p.children[k] = p.children[last]
			p.children[last] = nil
			p.children = p.children[:last]
			break
		}
	}
	p.meterMu.Lock()
	for i := range mTotal {
		p.lent[i] -= t.filled[i].Load()
	}
	p.meterMu.Unlock()
	p.childMu.Unlock()
}

// used returns what meter i has used.
func (t *Tracker) used(i int) int64 {
	t.meterMu.Lock()
	u := t.filled[i].Load() - t.room(i).Load()
	t.meterMu.Unlock()
	return u
}

// consumed returns what meter i of the run and of the live runs nested in
// it has consumed: what they used, less the room the nested runs drew and
// have not used yet. It is what an account bills for a live run. Every
// change of a run's meters leaves its filled - room - lent as it is or
// raises it (a charge), and an ended child's usage moves to its parent
// under the parent's childMu, which the reading holds: so a reading never
// counts room that may come back, and readings only grow.
func (t *Tracker) consumed(i int) int64 {
	t.childMu.Lock()
	defer t.childMu.Unlock()
	t.meterMu.Lock()
	u := t.filled[i].Load() - t.room(i).Load()
	if i != mTotal {
		u -= t.lent[i]
	}
	t.meterMu.Unlock()
	if i != mTotal {
		for _, c := range t.children {
			u = satAdd(u, c.consumed(i))
		}
	}
	return u
}

// TrackOperation counts one operation; it is also the check for hot
// loops. It returns a *LimitError when the run (or its account) has no
// operation left, the reason the run was stopped (its timeout, its CPU
// time, its context's cancellation, or ErrClosed after End), and nil
// otherwise. It allocates nothing, reads no clock, makes no system call
// and costs one CAS when the run has room.
//
// Once a run is stopped, every charge (TrackOperation, TrackOperations,
// TrackCall, TrackMemory, AcquireMemory, the slots, CheckFileSize) is
// refused with the same reason; ReleaseMemory and Guard.Release still give
// back, and AddCPUTime still counts what was spent. A run stopped by its
// caller's cancellation learns of it from a goroutine that package context
// starts: TrackOperation reports it within microseconds, possibly just
// after ctx.Done() is closed.
func (t *Tracker) TrackOperation() error {
	if t == nil {
		return nil
	}
	return t.take(mOps, 1)
}

// TrackOperations counts n operations at once, all or nothing. n must not be
// negative. A request past the run's or its account's limit is a
// *LimitError whatever its size; a request that nothing limits is refused
// with ErrInvalidArgument only when it would take the run's count past 2⁶².
func (t *Tracker) TrackOperations(n int64) error {
	if t == nil {
		return nil
	}
	if n <= 0 {
		return t.checkZero(n, Operations)
	}
	return t.take(mOps, n)
}

func (t *Tracker) checkZero(n int64, r Resource) error {
	if n < 0 {
		return fmt.Errorf("%w: negative %s request %d", ErrInvalidArgument, r, n)
	}
	return t.stopped()
}

// TrackCall counts one function call (an external API call, a sub-tool),
// for attribution and for the account's MaxCalls.
func (t *Tracker) TrackCall() error {
	if t == nil {
		return nil
	}
	return t.take(mCalls, 1)
}

// TrackMemory charges n bytes as held (until ReleaseMemory) and adds them to
// the run's total. It is refused with Memory when the bytes held would pass
// MaxMemoryBytes (or the account's MaxMemory), or with TotalMemory when the
// account's MaxTotalMemory would be passed; a refusal leaves every counter
// as it was. (A TrackMemory that races with End may return ErrClosed after
// End counted its bytes.)
func (t *Tracker) TrackMemory(n int64) error {
	if t == nil {
		return nil
	}
	if n <= 0 {
		return t.checkZero(n, Memory)
	}
	if err := t.stopped(); err != nil {
		return err
	}
	lim := t.limits.MaxMemoryBytes
	a, p := t.acct, t.parent
	var acctHeld int64
	if a != nil || p != nil {
		var err error
		if acctHeld, err = t.holdAbove(n, lim); err != nil {
			return err
		}
	}
	held, err := t.acquire(n, lim)
	if err != nil {
		if a != nil {
			a.releaseMemory(n)
		}
		t.releaseUp(n)
		return err
	}
	if t.closed.Load() {
		// End ran meanwhile. If it did not take these bytes back with the
		// rest, give them back here.
		if t.unhold(n) {
			if a != nil {
				a.releaseMemory(n)
			}
			t.releaseUp(n)
		}
		return ErrClosed
	}
	raiseMax(&t.peak, held)
	if a != nil {
		raiseMax(&a.peak, acctHeld)
	}
	return nil
}

// holdAbove charges n bytes to the runs t is nested in and to its
// account, after checking the run's own limit lim; it returns what the
// account holds with them. On a refusal nothing stays charged.
func (t *Tracker) holdAbove(n, lim int64) (int64, error) {
	a, p := t.acct, t.parent
	// Refused by the run's own limit before the account is asked. A run's
	// bytes are charged to its account before the run, and given back
	// after, so the account holds at least what the run holds: when the
	// request fits under that bound (read on the line the account's charge
	// takes next), it fits; only otherwise (and for every child run, kept
	// simple) are the run's own bytes read, exactly.
	if lim > 0 && (p != nil || n > lim-a.held.Load()) {
		if h := t.heldNow(); n > lim-h {
			t.refused[Memory].Add(1)
			return 0, &LimitError{Resource: Memory, Limit: lim, Used: h, Requested: n}
		}
	}
	if p != nil {
		// What a child run holds, the runs it is nested in hold too.
		if err := p.TrackMemory(n); err != nil {
			return 0, err
		}
	}
	if a == nil {
		return 0, nil
	}
	acctHeld, err := a.holdMemory(n)
	if err == nil {
		return acctHeld, nil
	}
	t.releaseUp(n)
	if err == errHeldOverflow {
		// Nothing limits the bytes held: the account's MaxTotalMemory may
		// still refuse the request.
		if err := t.refill(mTotal, n, false); err != nil {
			return 0, err
		}
		return 0, fmt.Errorf("%w: memory request %d overflows the account's %d", ErrInvalidArgument, n, a.held.Load())
	}
	return 0, err
}

// memCharged reads the memory meter's room and the bytes charged
// (filled minus room) consistently, with a sequence-lock read.
func (t *Tracker) memCharged() (room, charged int64) {
	for {
		g := t.mem.gen.Load()
		room = t.mem.room.Load()
		charged = t.filled[mTotal].Load() - room
		if g&1 == 0 && t.mem.gen.Load() == g {
			return room, charged
		}
	}
}

// memState reads the memory meter for a release: the bytes released are
// read first. Bytes charged only grow, so the bytes held it implies are
// never less than were held when released was read; a CAS on rel then
// proves the reading current, and a release it allows fits.
func (t *Tracker) memState() (room, charged, released int64) {
	released = t.mem.rel.Load()
	room, charged = t.memCharged()
	return room, charged, released
}

// memAcquireState reads the memory meter for an acquire: the bytes
// released are read last. A CAS on the room then proves that nothing was
// charged since, so the bytes held it implies were held exactly when
// released was read, and fewer (never more) when the CAS lands. (Reading
// released first, as memState does, could count bytes charged and released
// meanwhile as held, and refuse an acquire that fits.)
func (t *Tracker) memAcquireState() (room, charged, released int64) {
	room, charged = t.memCharged()
	released = t.mem.rel.Load()
	return room, charged, released
}

// memHeld returns the bytes charged and held, as they were at one instant:
// the bytes released are read before and after the bytes charged, and the
// reading is taken again until they agree. (A reading whose parts come
// from different instants could show bytes charged and released meanwhile
// as held.) Under a storm of releases it gives up after memHeldTries and
// returns a bound: no more than was held at some instant, and no more than
// the run's limit.
func (t *Tracker) memHeld() (charged, held int64) {
	m := t.readMeters()
	return m.charged, m.held
}

// meterReading is what readMeters reads: the operations and calls used,
// and the bytes of memory charged and held.
type meterReading struct {
	ops, calls, charged, held int64
}

// readMeters reads the meters without a lock, each pair of filled and
// room consistently (a sequence-lock read: every change of a filled count
// bumps mem.gen around it) and the bytes held as they were at one instant
// (see memHeld). It is what Usage and the Monitor's readings cost.
func (t *Tracker) readMeters() meterReading {
	for try := 0; ; try++ {
		r1 := t.mem.rel.Load()
		g := t.mem.gen.Load()
		var m meterReading
		m.ops = t.filled[mOps].Load() - t.meters[mOps].avail.Load()
		m.calls = t.filled[mCalls].Load() - t.meters[mCalls].avail.Load()
		m.charged = t.filled[mTotal].Load() - t.mem.room.Load()
		stable := g&1 == 0 && t.mem.gen.Load() == g
		r2 := t.mem.rel.Load()
		if !stable {
			continue // a refill or revoke in progress: a short wait
		}
		m.held = m.charged - r1
		if r1 == r2 || try >= memHeldTries {
			if r1 != r2 {
				// m.held is no less than was held when r1 was read, but
				// may count bytes charged and released since as held:
				// bound it by the limit, which the bytes held never pass.
				if lim := t.limits.MaxMemoryBytes; lim > 0 && m.held > lim {
					m.held = lim
				}
			}
			return m
		}
	}
}

const memHeldTries = 64

// heldNow returns the bytes held now (see memHeld).
func (t *Tracker) heldNow() int64 {
	_, h := t.memHeld()
	return h
}

// acquire charges n bytes held and to the total in one CAS on the memory
// meter's room, checking the run's limit lim on the bytes held; it returns
// the bytes held with them.
func (t *Tracker) acquire(n, lim int64) (int64, error) {
	for {
		room, charged, released := t.memAcquireState()
		held := charged - released
		// (held+n cannot overflow: the bytes held are at most those
		// charged, and refill keeps charged+n in range.)
		if lim > 0 && n > lim-held {
			t.refused[Memory].Add(1)
			return 0, &LimitError{Resource: Memory, Limit: lim, Used: held, Requested: n}
		}
		if room < n {
			// Add room (checking the account's MaxTotalMemory), then try again.
			if err := t.refill(mTotal, n, false); err != nil {
				return 0, err
			}
			continue
		}
		if t.mem.room.CompareAndSwap(room, room-n) {
			return held + n, nil
		}
	}
}

// raiseMax sets *p to v if v is larger.
func raiseMax(p *atomic.Int64, v int64) {
	for {
		c := p.Load()
		if v <= c || p.CompareAndSwap(c, v) {
			return
		}
	}
}

// ReleaseMemory gives back n bytes charged with TrackMemory. Releasing more
// than is held returns an error wrapping ErrInvalidArgument and changes
// nothing.
func (t *Tracker) ReleaseMemory(n int64) error {
	if t == nil {
		return nil
	}
	if n <= 0 {
		return t.checkZero(n, Memory)
	}
	if t.closed.Load() {
		return ErrClosed
	}
	return t.release(n)
}

// unhold releases n held bytes, unless fewer are held. (Between the check
// and the CAS the bytes held can only grow: refills and revokes change the
// room and filled alike, and every other release moves rel, failing the CAS.)
func (t *Tracker) unhold(n int64) bool {
	for {
		_, charged, released := t.memState()
		if n > charged-released {
			return false
		}
		if t.mem.rel.CompareAndSwap(released, released+n) {
			return true
		}
	}
}

// giveBack releases everything held and returns how much that was. Called
// by End, after the meters were revoked, so nothing more can be charged.
func (t *Tracker) giveBack() int64 {
	for {
		_, charged, released := t.memState()
		if t.mem.rel.CompareAndSwap(released, charged) {
			return charged - released
		}
	}
}

// release gives back n held bytes to the run and then to its account (only
// what the run gave back, so that a race with End, which takes back what
// the run holds, cannot release anything twice).
func (t *Tracker) release(n int64) error {
	if !t.unhold(n) {
		if t.closed.Load() {
			return ErrClosed
		}
		return fmt.Errorf("%w: releasing %d bytes of memory but only %d are held", ErrInvalidArgument, n, t.heldNow())
	}
	if a := t.acct; a != nil {
		a.releaseMemory(n)
	}
	t.releaseUp(n)
	return nil
}

// releaseUp gives n bytes a child run held back to the runs it is nested
// in. (One that has ended gave everything back already.)
func (t *Tracker) releaseUp(n int64) {
	if p := t.parent; p != nil && n > 0 {
		_ = p.release(n)
	}
}

// CheckFileSize checks that a file of n bytes fits MaxFileSize and records
// the largest size seen. It counts nothing else.
func (t *Tracker) CheckFileSize(n int64) error {
	if t == nil {
		return nil
	}
	if n < 0 {
		return fmt.Errorf("%w: negative file size %d", ErrInvalidArgument, n)
	}
	if err := t.stopped(); err != nil {
		return err
	}
	if lim := t.limits.MaxFileSize; lim > 0 && n > lim {
		t.refused[FileSize].Add(1)
		return &LimitError{Resource: FileSize, Limit: lim, Used: 0, Requested: n}
	}
	t.noteFile(n)
	return nil
}

func (t *Tracker) noteFile(n int64) {
	raiseMax(&t.maxFile, n)
}

// AddCPUTime adds CPU time measured elsewhere (a child process's rusage,
// say) to the run. It returns a *LimitError{Resource: CPUTime} and stops
// the run when that takes it over MaxCPUTime; the time is counted either
// way, since it was already spent. The CPU time counted stops at
// math.MaxInt64 nanoseconds rather than wrap.
func (t *Tracker) AddCPUTime(d time.Duration) error {
	if t == nil {
		return nil
	}
	if d < 0 {
		return fmt.Errorf("%w: negative CPU time %v", ErrInvalidArgument, d)
	}
	if t.closed.Load() {
		return ErrClosed
	}
	satAddAtomic(&t.cpuExtra, int64(d))
	err := t.CheckCPUTime()
	if p := t.parent; p != nil {
		// The runs this one is nested in used that CPU time too.
		if perr := p.AddCPUTime(d); err == nil && perr != nil && perr != ErrClosed {
			err = perr
		}
	}
	return err
}

// CPUTime returns the CPU time the run has used so far, reading the CPU
// clocks of its threads now.
func (t *Tracker) CPUTime() time.Duration {
	if t == nil {
		return 0
	}
	if t.closed.Load() {
		return t.Usage().CPUTime
	}
	return t.sampleCPU()
}

// CheckCPUTime reads the run's CPU time now and returns a
// *LimitError{Resource: CPUTime} (and stops the run) when it is over
// MaxCPUTime, or over the account's cumulative MaxCPUTime.
func (t *Tracker) CheckCPUTime() error {
	if t == nil {
		return nil
	}
	if t.closed.Load() {
		return ErrClosed
	}
	if err := t.checkRunCPU(); err != nil {
		return err
	}
	if t.acct != nil {
		if err := t.acct.checkCPU(); err != nil {
			t.halt(err)
			return t.Err()
		}
	}
	return nil
}

// checkRunCPU reads the run's CPU time and stops the run when it is over
// MaxCPUTime.
func (t *Tracker) checkRunCPU() error {
	used := t.sampleCPU()
	if lim := t.limits.MaxCPUTime; lim > 0 && used > lim {
		err := &LimitError{Resource: CPUTime, Limit: int64(lim), Used: int64(used)}
		t.halt(err)
		return t.Err()
	}
	return nil
}

// attach pins the calling goroutine to its OS thread and starts counting
// that thread's CPU time for the run (or, beyond defaultMaxMeasuredRuns,
// its wall time). The caller must call detach with the returned id on the same
// goroutine.
func (t *Tracker) attach() uint64 {
	if t.skipCPU {
		return 0
	}
	pin := pinThread(pinKind(t.pinRes.Swap(uint32(pinNone))))
	var clk threadcpu.Clock
	now := wallNow()
	if pin != pinWall {
		clk, _ = threadcpu.Self()
		now = cpuNow()
	}
	th := cpuThread{id: threadSeq.Add(1), clk: clk, start: now, pin: pin}
	t.addThread(th)
	// The runs this one is nested in count the thread too, unless it is
	// one of theirs already (a child run on its parent's goroutine).
	for p := t.parent; p != nil; p = p.parent {
		if !p.skipCPU {
			p.addThread(th)
		}
	}
	return th.id
}

// threadSeq numbers the attachments of threads to runs.
var threadSeq atomic.Uint64

// addThread starts counting the CPU time of a thread for the run, unless
// the run counts that (pinned) thread already, and arms the run's
// watchdog and its account's.
func (t *Tracker) addThread(th cpuThread) {
	t.cpuMu.Lock()
	if threadcpu.Supported && th.pin != pinWall {
		for _, o := range t.threads {
			if o.pin != pinWall && o.clk == th.clk {
				t.cpuMu.Unlock()
				return
			}
		}
	}
	t.threads = append(t.threads, th)
	if t.cpuTimer == nil && t.limits.MaxCPUTime > 0 && !t.closed.Load() {
		t.cpuTimer = time.AfterFunc(t.cpuInterval(0, 1), t.cpuTick)
	}
	t.cpuMu.Unlock()
	if t.acct != nil {
		t.acct.watchCPU() // the tenant's CPU quota is watched per account
	}
}

func (t *Tracker) detach(id uint64) {
	if id == 0 {
		return // CPU time is not measured for this run
	}
	pin := pinWall
	for r := t; r != nil; r = r.parent {
		if k, ok := r.dropThread(id); ok && r == t {
			pin = k
		}
	}
	unpinThread(pin)
}

// dropThread stops counting the thread attached as id, if the run counts
// it, and returns how that thread was pinned.
func (t *Tracker) dropThread(id uint64) (pinKind, bool) {
	t.cpuMu.Lock()
	defer t.cpuMu.Unlock()
	for i := range t.threads {
		if t.threads[i].id == id {
			pin := t.threads[i].pin
			now := wallNow()
			if pin != pinWall {
				now = cpuNow()
			}
			t.cpuDone += now - t.threads[i].start
			t.threads[i] = t.threads[len(t.threads)-1]
			t.threads = t.threads[:len(t.threads)-1]
			return pin, true
		}
	}
	return 0, false
}

// wallEpoch stands in for a thread CPU clock where none exists.
var wallEpoch = time.Now()

func cpuNow() time.Duration {
	if threadcpu.Supported {
		return threadcpu.Current()
	}
	return wallNow()
}

// wallNow is the clock of a goroutine measured by its wall time.
func wallNow() time.Duration { return time.Since(wallEpoch) }

func (t *Tracker) sampleCPU() time.Duration {
	d, _ := t.sampleCPUThreads()
	return d
}

// sampleCPUThreads reads the run's CPU time now, as sampleCPU, and returns
// it with the number of threads it is measured on.
func (t *Tracker) sampleCPUThreads() (time.Duration, int) {
	t.cpuMu.Lock()
	n := len(t.threads)
	d := t.cpuDone
	for _, th := range t.threads {
		var now time.Duration
		if th.pin == pinWall {
			now = wallNow()
		} else if threadcpu.Supported {
			v, err := th.clk.Read()
			if err != nil {
				continue
			}
			now = v
		} else {
			now = cpuNow()
		}
		if now > th.start {
			d += now - th.start
		}
	}
	t.cpuMu.Unlock()
	d = satAddDur(d, time.Duration(t.cpuExtra.Load()))
	raiseMax(&t.cpuLast, int64(d)) // concurrent samples must not move it back
	return time.Duration(t.cpuLast.Load()), n
}

// Watchdog sampling bounds: a run is sampled at most every minCPUSample and
// at least every maxCPUSample while it has threads attached.
const (
	minCPUSample = 10 * time.Millisecond
	maxCPUSample = 250 * time.Millisecond
)

// cpuInterval picks when to sample next: one thread cannot use more CPU
// than the wall time that passes, so sampling after remaining/threads
// cannot overshoot a limit by more than minCPUSample per thread.
func (t *Tracker) cpuInterval(used time.Duration, threads int) time.Duration {
	return sampleInterval(t.limits.MaxCPUTime-used, threads)
}

// sampleInterval returns when to sample next a CPU budget of which left
// remains, used by threads threads: left/threads, within
// [minCPUSample, maxCPUSample].
func sampleInterval(left time.Duration, threads int) time.Duration {
	threads = max(threads, 1)
	return min(max(left/time.Duration(threads), minCPUSample), maxCPUSample)
}

func (t *Tracker) cpuTick() {
	if t.closed.Load() || t.cause.Load() != nil {
		return
	}
	if err := t.checkRunCPU(); err != nil {
		return
	}
	t.cpuMu.Lock()
	if !t.closed.Load() && t.cpuTimer != nil {
		n := len(t.threads)
		if n > 0 {
			t.cpuTimer.Reset(t.cpuInterval(time.Duration(t.cpuLast.Load()), n))
		} else {
			t.cpuTimer = nil // re-armed by the next attach
		}
	}
	t.cpuMu.Unlock()
}

// Go runs fn in a new goroutine pinned to its own OS thread, whose CPU time
// is counted as the run's (where the run measures CPU time, see Run). Run
// (and a function wrapped by Limit) waits for every goroutine started with
// Go before it returns.
//
// A panic in fn stops the run (its context is cancelled and TrackOperation, Err
// report an error saying so) and is re-raised where the run ends: by Run,
// or by End (or EndWithError) on a tracker that is not inside Run. On such a
// tracker call End only after those goroutines are done: a panic of a
// goroutine still running when End has re-raised nothing, or has
// returned, is not recovered and crashes the program, as any goroutine's
// panic does.
func (t *Tracker) Go(fn func()) {
	if t == nil {
		go fn()
		return
	}
	t.goWG.Add(1)
	go func() {
		defer t.goWG.Done()
		id := t.attach()
		defer t.detach(id)
		defer func() {
			if r := recover(); r != nil {
				t.goPanicked(r)
			}
		}()
		fn()
	}()
}

// goPanicked records the panic v of a goroutine started with Go and stops
// the run. If the run has already ended (End took what was recorded), it
// panics again on the calling goroutine: no panic is ever swallowed.
func (t *Tracker) goPanicked(v any) {
	p := &panicValue{v: v}
	if !t.goPanic.CompareAndSwap(nil, p) {
		if t.goPanic.Load() == panicTaken {
			panic(v) // the run ended before this panic: nobody else will raise it
		}
		return // another helper's panic is raised first
	}
	t.halt(fmt.Errorf("%w: a goroutine started with Tracker.Go panicked: %v", ErrPanicked, v))
	if t.closed.Load() && t.goPanic.CompareAndSwap(p, panicTaken) {
		panic(v) // End ran meanwhile and did not see it
	}
}

// panicTaken marks goPanic once the run's end has taken (and re-raised)
// what was recorded there.
var panicTaken = &panicValue{}

// raiseGoPanic re-raises the recorded panic of a goroutine started with
// Go, once; it is called where the run ends.
func (t *Tracker) raiseGoPanic() {
	if p := t.goPanic.Swap(panicTaken); p != nil && p != panicTaken {
		panic(p.v)
	}
}

// Usage returns a snapshot of what the run has consumed so far (after End:
// what it consumed in all). It reads the CPU clocks of the run's threads.
func (t *Tracker) Usage() Usage {
	if t == nil {
		return Usage{}
	}
	if t.closed.Load() {
		t.mu.Lock() // wait for End to finish writing final
		u := t.final
		t.mu.Unlock()
		return u
	}
	return t.snapshot(t.sampleCPU(), t.wallTime())
}

func (t *Tracker) snapshot(cpu, wall time.Duration) Usage {
	var u Usage
	m := t.readMeters()
	u.Operations, u.Calls = m.ops, m.calls
	u.TotalMemoryBytes, u.MemoryBytes = m.charged, m.held
	u.PeakMemoryBytes = t.peak.Load()
	u.CPUTime = cpu
	u.WallTime = wall
	u.Concurrent = t.slots.count.Load()
	u.LargestFileBytes = t.maxFile.Load()
	for i := range t.refused {
		u.Refusals += t.refused[i].Load()
	}
	return u
}

// End finishes the run: it stops its timers, gives back what it still holds
// (memory, unused allowance) to its account, charges the account and
// records the run in the account's history. It returns the run's usage.
// Later tracking returns ErrClosed; calling End again returns the same
// usage. End does not wait for goroutines started with Go; it re-raises
// the panic of one that panicked (see Go).
func (t *Tracker) End() Usage {
	if t == nil {
		return Usage{}
	}
	u := t.finish(nil)
	t.raiseGoPanic()
	return u
}

// EndWithError is End for a run that failed: err (if not nil) is recorded with
// the run in its account's history. A run stopped by its own limits records
// that *LimitError even when err is nil. A run that ends with a per-run
// limit's *LimitError (err, or the one that stopped it) counts as a run
// stop of the account it is billed to (AccountStats.RunStops), once: a
// run that ends with a stop a run nested in it counted does not count it
// again.
func (t *Tracker) EndWithError(err error) Usage {
	if t == nil {
		return Usage{}
	}
	u := t.finish(err)
	t.raiseGoPanic()
	return u
}

func (t *Tracker) finish(runErr error) Usage {
	t.endOnce.Do(func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		t.closed.Store(true)
		t.cpuMu.Lock()
		if t.cpuTimer != nil {
			t.cpuTimer.Stop()
			t.cpuTimer = nil
		}
		t.cpuMu.Unlock()
		if t.timeoutTmr != nil {
			t.timeoutTmr.Stop()
		}
		if runErr == nil {
			runErr = t.Err()
		}
		cpu := time.Duration(t.cpuExtra.Load())
		if !t.skipCPU {
			cpu = t.sampleCPU()
		}
		if t.acct != nil {
			t.final = t.acct.end(t, cpu, runErr)
		} else {
			for i := range numMeters {
				t.reclaimChildren(i)
				t.revoke(i)
			}
			t.final = t.snapshot(cpu, t.wallTime())
			if t.parent != nil {
				t.releaseUp(t.giveBack())
			}
		}
		t.noteStop(runErr)
		t.orphan()
	})
	return t.final
}

// AppendReadings implements Source: it appends the run's current usage and
// limits, with the count of refusals so far, for every resource a tracker
// counts. It reads the CPU time last sampled, not the clock.
func (t *Tracker) AppendReadings(dst []Reading) []Reading {
	if t == nil {
		return dst
	}
	m := t.readMeters()
	ops, calls, total, held := m.ops, m.calls, m.charged, m.held
	l := &t.limits
	r := &t.refused
	var elapsed int64
	if l.Timeout > 0 { // read the clock only where a timeout can be near
		elapsed = int64(time.Since(t.start))
	}
	// Written in place (not append's temporaries copied after): a poll
	// reads thousands of trackers.
	n := len(dst)
	dst = slices.Grow(dst, 8)[:n+8]
	d := (*[8]Reading)(dst[n:])
	d[0] = Reading{Resource: Memory, Used: held, Limit: l.MaxMemoryBytes, Refusals: r[Memory].Load()}
	d[1] = Reading{Resource: TotalMemory, Used: total, Refusals: r[TotalMemory].Load()}
	d[2] = Reading{Resource: Operations, Used: ops, Limit: l.MaxOperations, Refusals: r[Operations].Load()}
	d[3] = Reading{Resource: Calls, Used: calls, Refusals: r[Calls].Load()}
	d[4] = Reading{Resource: CPUTime, Used: t.cpuLast.Load(), Limit: int64(l.MaxCPUTime), Refusals: r[CPUTime].Load()}
	d[5] = Reading{Resource: Concurrency, Used: t.slots.count.Load(), Limit: l.MaxConcurrent, Refusals: r[Concurrency].Load()}
	d[6] = Reading{Resource: FileSize, Used: t.maxFile.Load(), Limit: l.MaxFileSize, Refusals: r[FileSize].Load()}
	d[7] = Reading{Resource: Timeout, Used: elapsed, Limit: int64(l.Timeout), Refusals: r[Timeout].Load()}
	return dst
}

// Remaining returns how much more of r the run may use now, in r's unit
// (bytes, a count, or nanoseconds for CPUTime and Timeout), and whether
// anything limits it: the tighter of the run's own limit, its account's
// (for Memory, TotalMemory, CPUTime, Operations and Calls) and, for a run
// nested in another, what that run may still use. For Memory it is what
// may still be held at once; for FileSize, the size one more file may
// have. It never returns a negative amount. On a nil Tracker it returns
// (0, false). It is safe for concurrent use, and is what code that cannot
// count as it goes (a child process, say) may be given up front.
func (t *Tracker) Remaining(r Resource) (int64, bool) {
	if t == nil {
		return 0, false
	}
	left, limited := int64(0), false
	tighten := func(v int64) {
		v = max(v, 0)
		if !limited || v < left {
			left, limited = v, true
		}
	}
	switch r {
	case Memory:
		if lim := t.limits.MaxMemoryBytes; lim > 0 {
			tighten(lim - t.heldNow())
		}
	case TotalMemory:
	case CPUTime:
		if lim := t.limits.MaxCPUTime; lim > 0 {
			tighten(int64(lim - t.CPUTime()))
		}
	case FileSize:
		if lim := t.limits.MaxFileSize; lim > 0 {
			tighten(lim)
		}
	case Operations:
		if lim := t.limits.MaxOperations; lim > 0 {
			tighten(lim - t.used(mOps))
		}
	case Calls:
	case Timeout:
		if lim := t.limits.Timeout; lim > 0 {
			tighten(int64(lim - time.Since(t.start)))
		}
	default:
		return 0, false
	}
	if a := t.acct; a != nil && r != FileSize && r != Timeout {
		if lim := a.limits[r].Load(); lim > 0 {
			a.mu.Lock()
			u := a.usageLocked(r)
			a.mu.Unlock()
			tighten(lim - u)
		}
	}
	if p := t.parent; p != nil {
		if v, ok := p.Remaining(r); ok {
			tighten(v)
		}
	}
	return left, limited
}
