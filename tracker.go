package reslimit

import (
	"fmt"
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
		return &t.mem.total
	}
	return &t.meters[i].avail
}

// stopState is what Step reports once a run is stopped.
type stopState struct{ err error }

var closedStop = &stopState{err: ErrClosed}

// Tracker counts what one run (or one long-lived component) consumes and
// refuses requests that would take it over its Limits. Its counters are
// lock-free atomics; every method is safe for concurrent use. Methods on a
// nil *Tracker are no-ops that succeed, so instrumented code runs unchanged
// when nothing limits it.
//
// A Tracker is created by NewTracker, Account.Begin, Run or Limit, and
// finished with End, after which tracking returns ErrClosed.
type Tracker struct {
	meters [mTotal]meter // operations, calls
	// The memory line: what TrackMemory and the guards touch, together, so
	// that a contended acquire moves one cache line between cores. The bytes
	// held are derived: charged (the TotalMemory meter's usage, filled -
	// total) minus released, so an acquire is one CAS on total and a release
	// one CAS on rel. gen is a sequence lock (odd while a refill or revoke
	// changes filled and total together) that lets the hot path read filled
	// and total consistently without a lock.
	mem struct {
		total atomic.Int64 // room of the TotalMemory meter
		rel   atomic.Int64 // bytes released, cumulatively
		peak  atomic.Int64
		gen   atomic.Uint64
		cells [4]atomic.Uint64 // identities of memory guards (see claimGuard)
	}
	stop atomic.Pointer[stopState]

	maxFile  atomic.Int64
	cpuLast  atomic.Int64 // last sampled CPU time, ns, including cpuExtra
	cpuExtra atomic.Int64 // AddCPUTime, ns
	closed   atomic.Bool
	refused  [numResources]atomic.Int64
	slots    slots
	guards   atomic.Pointer[guardTable] // more identities of guards, made on first need

	limits  Limits
	skipCPU bool          // Run/Limit with nothing that needs CPU time: no thread clock
	pinRes  atomic.Uint32 // pinKind reserved by Run for its own goroutine (see reservePin)
	name    string
	acct    *Account
	start   time.Time
	cancel  func(error) // cancels the run's context, if any
	// stopAfter unregisters the halt on the caller's cancellation of a
	// tracker made by a runCtx.
	stopAfter func() bool

	mu         sync.Mutex              // serialises refills and End
	meterMu    sync.Mutex              // leaf lock: writes of filled, consistent reads of meters
	filled     [numMeters]atomic.Int64 // room ever added, less what was revoked
	base       [numMeters]int64        // guarded by acct.mu: usage already charged before an account Reset
	cpuBase    int64                   // guarded by acct.mu
	evaluation int64                   // 1-based number of the run in its account

	cpuMu      sync.Mutex
	threads    []cpuThread
	threadSeq  uint64
	cpuDone    time.Duration // CPU of threads that have finished
	cpuTimer   *time.Timer
	timeoutTmr *time.Timer
	cause      atomic.Pointer[stopState] // first reason the run was stopped

	goWG    sync.WaitGroup
	goPanic atomic.Pointer[panicValue]

	endOnce sync.Once
	final   Usage
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
	// Operations counts TrackOperation, TrackOperations and Step.
	Operations int64
	// Calls counts TrackCall.
	Calls int64
	// CPUTime is the CPU time used (see Tracker.CPUClock). A Run measures it
	// when MaxCPUTime is set, the run is charged to an Account, or WithCPUTime
	// is given; otherwise only AddCPUTime counts.
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
// account. A Timeout in l starts counting now: when it passes, Step returns
// a *LimitError{Resource: Timeout}. It returns an error wrapping
// ErrInvalidLimits for invalid limits.
func NewTracker(l Limits) (*Tracker, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	return newTracker(l, nil, "", nil), nil
}

func newTracker(l Limits, acct *Account, name string, cancel func(error)) *Tracker {
	t := newRunTracker(l, acct, name, cancel)
	t.start = time.Now()
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

// halt stops the run with err: Step returns it and the run's context (if
// any) is cancelled with it as the cause. Only the first reason sticks.
func (t *Tracker) halt(err error) {
	if t.closed.Load() {
		return // a timer that fires while End runs stops nothing
	}
	s := &stopState{err: err}
	if !t.cause.CompareAndSwap(nil, s) {
		// Stopped already: make sure Step says so before returning, even
		// if the first halt has not got that far.
		t.stop.CompareAndSwap(nil, t.cause.Load())
		return
	}
	t.stop.CompareAndSwap(nil, s)
	if le, ok := err.(*LimitError); ok && le.Resource.Valid() {
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
		if t.closed.Load() {
			return ErrClosed
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
		want := n - a
		if t.acct != nil {
			granted, err := t.acct.grant(t, i, n, want, room)
			if err != nil {
				return err
			}
			if granted {
				continue
			}
		}
		if room < want {
			room = want // only for requests larger than unlimitedFill
		}
		t.addRoom(i, room)
	}
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
// returns it. Called with acct.mu or t.mu held.
func (t *Tracker) revoke(i int) int64 {
	t.meterMu.Lock()
	t.mem.gen.Add(1)
	r := t.room(i).Swap(0)
	t.filled[i].Add(-r)
	t.mem.gen.Add(1)
	t.meterMu.Unlock()
	return r
}

// used returns what meter i has used.
func (t *Tracker) used(i int) int64 {
	t.meterMu.Lock()
	u := t.filled[i].Load() - t.room(i).Load()
	t.meterMu.Unlock()
	return u
}

// TrackOperation counts one operation. It returns a *LimitError when the
// run (or its account) has no operation left, and ErrClosed after End. It
// allocates nothing and costs one CAS when the run has room.
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
	if t.closed.Load() {
		return ErrClosed
	}
	return nil
}

// Step is the check for hot loops: it returns the reason the run was
// stopped (its timeout, its CPU time, its context's cancellation, or
// ErrClosed after End), and otherwise counts one operation like
// TrackOperation. It reads no clock and makes no system call.
func (t *Tracker) Step() error {
	if t == nil {
		return nil
	}
	if s := t.stop.Load(); s != nil {
		return s.err
	}
	return t.take(mOps, 1)
}

// TrackCall counts one function call (an external API call, a sub-tool),
// for attribution and for the account's MaxFunctionCalls.
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
	if t.closed.Load() {
		return ErrClosed
	}
	lim := t.limits.MaxMemoryBytes
	a := t.acct
	var acctHeld int64
	if a != nil {
		// Refused by the run's own limit before the account is asked.
		if h := t.heldNow(); lim > 0 && n > lim-h {
			t.refused[Memory].Add(1)
			return &LimitError{Resource: Memory, Limit: lim, Used: h, Requested: n}
		}
		var err error
		if acctHeld, err = a.holdMemory(n); err != nil {
			if err == errHeldOverflow {
				// Nothing limits the bytes held: the account's
				// MaxTotalMemory may still refuse the request.
				if err := t.refill(mTotal, n, false); err != nil {
					return err
				}
				return fmt.Errorf("%w: memory request %d overflows the account's %d", ErrInvalidArgument, n, a.held.Load())
			}
			return err
		}
	}
	held, err := t.acquire(n, lim)
	if err != nil {
		if a != nil {
			a.releaseMemory(n)
		}
		return err
	}
	if t.closed.Load() {
		// End ran meanwhile. If it did not take these bytes back with the
		// rest, give them back here.
		if t.unhold(n) && a != nil {
			a.releaseMemory(n)
		}
		return ErrClosed
	}
	raiseMax(&t.mem.peak, held)
	if a != nil {
		raiseMax(&a.peak, acctHeld)
	}
	return nil
}

// memState reads the memory meter: the room, the bytes charged (filled and
// room read consistently, with a sequence-lock read) and the bytes
// released. Released is read first: bytes charged only grow, so the bytes
// held it implies are never less than were held when it was read; a CAS on
// rel (release) or on the room (acquire) then proves the reading current.
func (t *Tracker) memState() (room, charged, released int64) {
	for {
		released = t.mem.rel.Load()
		g := t.mem.gen.Load()
		room = t.mem.total.Load()
		charged = t.filled[mTotal].Load() - room
		if g&1 == 0 && t.mem.gen.Load() == g {
			return room, charged, released
		}
	}
}

// heldNow returns the bytes held now.
func (t *Tracker) heldNow() int64 {
	_, charged, released := t.memState()
	return charged - released
}

// acquire charges n bytes held and to the total in one CAS on the memory
// meter's room, checking the run's limit lim on the bytes held; it returns
// the bytes held with them.
func (t *Tracker) acquire(n, lim int64) (int64, error) {
	for {
		room, charged, released := t.memState()
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
		if t.mem.total.CompareAndSwap(room, room-n) {
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
	return nil
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
	if t.closed.Load() {
		return ErrClosed
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
	return t.CheckCPUTime()
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
	used := t.sampleCPU()
	if lim := t.limits.MaxCPUTime; lim > 0 && used > lim {
		err := &LimitError{Resource: CPUTime, Limit: int64(lim), Used: int64(used)}
		t.halt(err)
		return t.Err()
	}
	if t.acct != nil {
		if err := t.acct.checkCPU(); err != nil {
			t.halt(err)
			return t.Err()
		}
	}
	return nil
}

// CPUClock says what CPUTime measures on this platform: "thread" where the
// CPU clocks of the OS threads that ran the work are read (Linux), or
// "wall" where they cannot be, and the wall time of the run's attached
// goroutines stands in for their CPU time (an upper bound for work on one
// thread; a sleeping run is charged as if it computed).
func (t *Tracker) CPUClock() string { return CPUClock() }

// CPUClock is the package-level form of Tracker.CPUClock.
func CPUClock() string {
	if threadcpu.Supported {
		return "thread"
	}
	return "wall"
}

// attach pins the calling goroutine to its OS thread and starts counting
// that thread's CPU time for the run (or, beyond SetMaxMeasuredRuns, its
// wall time). The caller must call detach with the returned id on the same
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
	t.cpuMu.Lock()
	t.threadSeq++
	id := t.threadSeq
	t.threads = append(t.threads, cpuThread{id: id, clk: clk, start: now, pin: pin})
	if t.cpuTimer == nil && (t.limits.MaxCPUTime > 0 || t.acct != nil) && !t.closed.Load() {
		t.cpuTimer = time.AfterFunc(t.cpuInterval(0, 1), t.cpuTick)
	}
	t.cpuMu.Unlock()
	return id
}

func (t *Tracker) detach(id uint64) {
	if id == 0 {
		return // CPU time is not measured for this run
	}
	pin := pinWall
	t.cpuMu.Lock()
	for i := range t.threads {
		if t.threads[i].id == id {
			pin = t.threads[i].pin
			now := wallNow()
			if pin != pinWall {
				now = cpuNow()
			}
			t.cpuDone += now - t.threads[i].start
			t.threads[i] = t.threads[len(t.threads)-1]
			t.threads = t.threads[:len(t.threads)-1]
			break
		}
	}
	t.cpuMu.Unlock()
	unpinThread(pin)
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
	t.cpuMu.Lock()
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
	return time.Duration(t.cpuLast.Load())
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
	next := maxCPUSample
	if lim := t.limits.MaxCPUTime; lim > 0 {
		if threads < 1 {
			threads = 1
		}
		if r := (lim - used) / time.Duration(threads); r < next {
			next = r
		}
	}
	return max(next, minCPUSample)
}

func (t *Tracker) cpuTick() {
	if t.closed.Load() || t.cause.Load() != nil {
		return
	}
	if err := t.CheckCPUTime(); err != nil {
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
// is counted as the run's (where the run measures CPU time, see Run). Run (and a function wrapped by Limit) waits for
// every goroutine started with Go before it returns; a panic in fn is
// re-raised there. On a tracker that is not inside Run, call End only after
// those goroutines are done.
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
				t.goPanic.CompareAndSwap(nil, &panicValue{v: r})
			}
		}()
		fn()
	}()
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
	return t.snapshot(t.sampleCPU(), time.Since(t.start))
}

func (t *Tracker) snapshot(cpu, wall time.Duration) Usage {
	var u Usage
	t.meterMu.Lock()
	// Released before charged (see memState): the bytes held read are
	// never negative.
	released := t.mem.rel.Load()
	u.Operations = t.filled[mOps].Load() - t.room(mOps).Load()
	u.Calls = t.filled[mCalls].Load() - t.room(mCalls).Load()
	u.TotalMemoryBytes = t.filled[mTotal].Load() - t.mem.total.Load()
	u.MemoryBytes = u.TotalMemoryBytes - released
	t.meterMu.Unlock()
	u.PeakMemoryBytes = t.mem.peak.Load()
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
// usage. End does not wait for goroutines started with Go.
func (t *Tracker) End() Usage {
	if t == nil {
		return Usage{}
	}
	return t.finish(nil)
}

// Finish is End for a run that failed: err (if not nil) is recorded with
// the run in its account's history. A run stopped by its own limits records
// that *LimitError even when err is nil.
func (t *Tracker) Finish(err error) Usage {
	if t == nil {
		return Usage{}
	}
	return t.finish(err)
}

func (t *Tracker) finish(runErr error) Usage {
	t.endOnce.Do(func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		t.closed.Store(true)
		t.stop.Store(closedStop)
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
				t.revoke(i)
			}
			t.final = t.snapshot(cpu, time.Since(t.start))
		}
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
	t.meterMu.Lock()
	released := t.mem.rel.Load() // first, as in snapshot
	ops := t.filled[mOps].Load() - t.room(mOps).Load()
	calls := t.filled[mCalls].Load() - t.room(mCalls).Load()
	total := t.filled[mTotal].Load() - t.mem.total.Load()
	held := total - released
	t.meterMu.Unlock()
	l := &t.limits
	r := &t.refused
	var elapsed int64
	if l.Timeout > 0 { // read the clock only where a timeout can be near
		elapsed = int64(time.Since(t.start))
	}
	return append(dst,
		Reading{Resource: Memory, Used: held, Limit: l.MaxMemoryBytes, Refusals: r[Memory].Load()},
		Reading{Resource: TotalMemory, Used: total, Refusals: r[TotalMemory].Load()},
		Reading{Resource: Operations, Used: ops, Limit: l.MaxOperations, Refusals: r[Operations].Load()},
		Reading{Resource: Calls, Used: calls, Refusals: r[Calls].Load()},
		Reading{Resource: CPUTime, Used: t.cpuLast.Load(), Limit: int64(l.MaxCPUTime), Refusals: r[CPUTime].Load()},
		Reading{Resource: Concurrency, Used: t.slots.count.Load(), Limit: l.MaxConcurrent, Refusals: r[Concurrency].Load()},
		Reading{Resource: FileSize, Used: t.maxFile.Load(), Limit: l.MaxFileSize, Refusals: r[FileSize].Load()},
		Reading{Resource: Timeout, Used: elapsed, Limit: int64(l.Timeout), Refusals: r[Timeout].Load()},
	)
}

// Reading is one resource's state as a Source reports it to a Monitor: the
// usage and the limit (0 = none) in the resource's unit, and how many
// requests for it have been refused so far (a cumulative count).
type Reading struct {
	Resource Resource
	Used     int64
	Limit    int64
	Refusals int64
}

// Source is something a Monitor can poll: *Tracker and *Account implement
// it. AppendReadings appends one Reading per resource and returns the
// extended slice; it must be safe for concurrent use, must not block for
// long, and should not allocate when dst has room.
type Source interface {
	AppendReadings(dst []Reading) []Reading
}
