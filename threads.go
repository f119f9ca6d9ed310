package reslimit

import (
	"context"

	"runtime"
	"sync"
	"time"

	"github.com/reslimit/reslimit/internal/threadcpu"
)

// defaultMaxMeasuredRuns is how many goroutines of the whole process may be
// pinned to an OS thread at once for measuring CPU time (a run of Run or
// Limit whose CPU time is measured, and each goroutine started with
// Tracker.Go): far from Go's limit of 10,000 threads however many runs
// sleep at once.
//
// Where CPU time is measured a run's goroutine is pinned to its thread
// while its function runs, since the thread's CPU clock is what is read.
// Beyond the cap:
//
//   - a run started by Run or a Limit'ed function waits, first come first
//     served, for a pinned run to end. Its context ending first returns the
//     context's cause, and its Timeout passing first returns its Timeout
//     *LimitError; either way nothing ran and nothing was charged. (The
//     Timeout bounds the wait; the run's own Timeout starts when it starts.)
//   - a run started inside another run (its context carries the other
//     run's Tracker) and a goroutine started with Tracker.Go do not wait,
//     since what they would wait for may be waiting for them: they run
//     unpinned, and their CPU time is their wall time (an upper bound, as
//     where thread clocks do not exist).
//
// A run started inside another run on the same goroutine (whose thread is
// pinned already) takes no second place. A run that waits for another
// measured run started with a context not derived from its own can wait
// for it to get a place: bound such waits with a Timeout or a context.
//
// Where thread CPU clocks do not exist (not Linux) nothing is pinned and
// the cap does not apply. Run's doc and docs/semantics.md say this to users.
const defaultMaxMeasuredRuns = 1000

// setMaxMeasuredRuns sets the cap of defaultMaxMeasuredRuns (n below 1 is
// taken as 1) and returns the previous setting; tests lower it.
func setMaxMeasuredRuns(n int) int {
	if n < 1 {
		n = 1
	}
	pins.mu.Lock()
	prev := pins.mu.limit
	pins.mu.limit = n
	pins.dispatchLocked()
	pins.mu.Unlock()
	return prev
}

// pinKind says how a goroutine attached to a run is measured.
type pinKind uint8

const (
	pinNone   pinKind = iota // no reservation (Tracker.pin)
	pinSlot                  // pinned, holding a place under the cap
	pinNested                // pinned already by an enclosing run on this goroutine
	pinWall                  // not pinned: wall time stands in for CPU time
)

// pins bounds the goroutines pinned to threads at once.
var pins = newPinPool(defaultMaxMeasuredRuns)

// pinPool is the places under the cap of pinned goroutines, and who holds
// and waits for them.
type pinPool struct {
	mu struct {
		sync.Mutex
		limit int          // the cap (defaultMaxMeasuredRuns)
		held  int          // places held
		queue []*pinWaiter // waiting for a place, first come first served
		byTid map[int]int  // threads pinned for a run: depth of attachments
	}
}

func newPinPool(limit int) *pinPool {
	p := &pinPool{}
	p.mu.limit = limit
	p.mu.byTid = map[int]int{}
	return p
}

type pinWaiter struct {
	ready   chan struct{}
	granted bool // guarded by pinPool.mu
}

// dispatchLocked hands free places to waiters in arrival order. It
// requires that p.mu is held.
func (p *pinPool) dispatchLocked() {
	for len(p.mu.queue) > 0 && p.mu.held < p.mu.limit {
		w := p.mu.queue[0]
		p.mu.queue[0] = nil
		p.mu.queue = p.mu.queue[1:]
		p.mu.held++
		w.granted = true
		close(w.ready)
	}
}

// pinnedHereLocked reports whether the calling goroutine's thread is pinned
// for a run. (A pinned thread runs only the goroutine locked to it, so if
// it is, that goroutine is the caller.) It requires that p.mu is held.
func (p *pinPool) pinnedHereLocked() bool {
	return len(p.mu.byTid) > 0 && p.mu.byTid[threadcpu.Tid()] > 0
}

// reservePin reserves how the run about to start on the calling goroutine
// will be measured: nested on a thread pinned already, a place under the
// cap, or (for a run inside another run, when the cap is reached) wall
// time. A top-level run waits for a place until ctx ends or timeout (if
// not 0) passes.
func reservePin(ctx context.Context, timeout time.Duration, inner bool) (pinKind, error) {
	if !threadcpu.Supported {
		return pinWall, nil
	}
	p := pins
	p.mu.Lock()
	if p.pinnedHereLocked() {
		p.mu.Unlock()
		return pinNested, nil
	}
	if len(p.mu.queue) == 0 && p.mu.held < p.mu.limit {
		p.mu.held++
		p.mu.Unlock()
		return pinSlot, nil
	}
	if inner {
		p.mu.Unlock()
		return pinWall, nil
	}
	if err := ctx.Err(); err != nil {
		p.mu.Unlock()
		return pinNone, context.Cause(ctx)
	}
	w := &pinWaiter{ready: make(chan struct{})}
	p.mu.queue = append(p.mu.queue, w)
	p.mu.Unlock()

	start := time.Now()
	var expired <-chan time.Time
	if timeout > 0 {
		tm := time.NewTimer(timeout)
		defer tm.Stop()
		expired = tm.C
	}
	var err error
	select {
	case <-w.ready:
		return pinSlot, nil
	case <-ctx.Done():
		err = context.Cause(ctx)
	case <-expired:
		err = &LimitError{Resource: Timeout, Limit: int64(timeout), Used: int64(time.Since(start))}
	}
	p.mu.Lock()
	if w.granted {
		// Granted meanwhile: pass the place on.
		p.mu.held--
		p.dispatchLocked()
	} else {
		for i, q := range p.mu.queue {
			if q == w {
				p.mu.queue = append(p.mu.queue[:i], p.mu.queue[i+1:]...)
				break
			}
		}
	}
	p.mu.Unlock()
	return pinNone, err
}

// tryPin is reservePin for a goroutine that must not wait (a Tracker.Go
// helper, a tracker not made by Run).
func tryPin() pinKind {
	if !threadcpu.Supported {
		return pinWall
	}
	p := pins
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pinnedHereLocked() {
		return pinNested
	}
	if len(p.mu.queue) == 0 && p.mu.held < p.mu.limit {
		p.mu.held++
		return pinSlot
	}
	return pinWall
}

// unreserve gives back a reservation that no goroutine used.
func unreserve(k pinKind) {
	if k == pinSlot {
		pins.mu.Lock()
		pins.mu.held--
		pins.dispatchLocked()
		pins.mu.Unlock()
	}
}

// pinThread pins the calling goroutine to its thread as k says (it may be
// pinNone: then it reserves without waiting) and returns how it is
// measured.
func pinThread(k pinKind) pinKind {
	if k == pinNone {
		k = tryPin()
	}
	if k == pinWall {
		return k
	}
	runtime.LockOSThread()
	tid := threadcpu.Tid()
	pins.mu.Lock()
	pins.mu.byTid[tid]++
	pins.mu.Unlock()
	return k
}

// unpinThread undoes pinThread on the same goroutine.
func unpinThread(k pinKind) {
	if k == pinWall {
		return
	}
	tid := threadcpu.Tid()
	pins.mu.Lock()
	if pins.mu.byTid[tid]--; pins.mu.byTid[tid] <= 0 {
		delete(pins.mu.byTid, tid)
	}
	if k == pinSlot {
		pins.mu.held--
		pins.dispatchLocked()
	}
	pins.mu.Unlock()
	runtime.UnlockOSThread()
}

// measuredRuns returns the places held and the runs waiting, for tests.
func measuredRuns() (held, waiting int) {
	pins.mu.Lock()
	defer pins.mu.Unlock()
	return pins.mu.held, len(pins.mu.queue)
}
