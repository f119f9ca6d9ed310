package reslimit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// Guard holds something acquired from a Tracker (memory, a concurrency
// slot) until Release gives it back. It is a small value: acquiring and
// releasing allocate nothing. Write
//
//	g, err := tr.AcquireMemory(n)
//	if err != nil { return err }
//	defer g.Release()
//
// Release is idempotent through the same variable; do not copy a Guard and
// release both copies. A Guard is not safe for concurrent use; the Tracker
// behind it is. The zero Guard holds nothing.
type Guard struct {
	t *Tracker // memory: the tracker charged
	s *slots   // a slot: the semaphore it came from
	n int64    // what is held: bytes of memory, or 1 slot; 0 once released
}

// Release gives back what the guard holds. Calling it again, or on the zero
// Guard, does nothing. Memory released after its tracker has ended is
// ignored (End already gave it back). Release panics with a "reslimit:"
// message when the tracker holds less memory than the guard (its bytes
// were already given back with ReleaseMemory): a programming error.
func (g *Guard) Release() {
	if g != nil && g.n != 0 {
		g.release()
	}
}

func (g *Guard) release() {
	n := g.n
	g.n = 0 // the pointers stay: clearing them would cost a write barrier
	if s := g.s; s != nil {
		s.release()
		return
	}
	t := g.t
	if t.acct == nil && t.parent == nil {
		// Fast path: unhold, written out here so that Release makes no
		// further call; a run with an account gives the bytes back to it
		// too, in release.
		for {
			_, charged, released := t.memState()
			if n > charged-released {
				break
			}
			if t.mem.rel.CompareAndSwap(released, released+n) {
				return
			}
		}
	}
	// Only mixing ReleaseMemory with guards can make this fail; after End
	// (ErrClosed), End already gave the bytes back.
	if err := t.release(n); err != nil && !errors.Is(err, ErrClosed) {
		panic("reslimit: Guard.Release: " + err.Error())
	}
}

// Held reports whether the guard still holds something.
func (g *Guard) Held() bool { return g != nil && g.n != 0 }

// AcquireMemory charges n bytes like TrackMemory and returns a Guard whose
// Release gives them back.
func (t *Tracker) AcquireMemory(n int64) (Guard, error) {
	if t == nil {
		return Guard{}, nil
	}
	if t.acct == nil && t.parent == nil && n > 0 {
		// Fast path: one attempt to charge the bytes in one CAS when the
		// meter has room and the run's limit allows (see acquire).
		lim := t.limits.MaxMemoryBytes
		for {
			room, charged, released := t.memAcquireState()
			held := charged - released
			if room < n || (lim > 0 && n > lim-held) {
				break
			}
			if !t.mem.total.CompareAndSwap(room, room-n) {
				continue // lost a race: look again
			}
			if !t.closed.Load() {
				raiseMax(&t.mem.peak, held+n)
				return Guard{t: t, n: n}, nil
			}
			// End ran meanwhile: give the bytes back unless End took them,
			// and let TrackMemory report ErrClosed.
			t.unhold(n)
			break
		}
	}
	return t.acquireMemory(n)
}

func (t *Tracker) acquireMemory(n int64) (Guard, error) {
	if err := t.TrackMemory(n); err != nil {
		return Guard{}, err
	}
	if n == 0 {
		return Guard{}, nil
	}
	return Guard{t: t, n: n}, nil
}

// TryAcquireSlot takes one of the run's MaxConcurrent slots, or fails at
// once with a *LimitError{Resource: Concurrency} when all are busy or
// goroutines are already waiting for one. With no MaxConcurrent it only
// counts.
func (t *Tracker) TryAcquireSlot() (Guard, error) {
	if t == nil {
		return Guard{}, nil
	}
	if err := t.stopped(); err != nil {
		return Guard{}, err
	}
	if !t.slots.tryAcquire() {
		t.refused[Concurrency].Add(1)
		return Guard{}, t.slots.limitError("")
	}
	return Guard{s: &t.slots, n: 1}, nil
}

// AcquireSlot takes one of the run's MaxConcurrent slots, waiting first
// come first served until one frees or ctx ends. When ctx ends first it
// returns the context's error and holds nothing.
func (t *Tracker) AcquireSlot(ctx context.Context) (Guard, error) {
	if t == nil {
		return Guard{}, nil
	}
	if err := t.stopped(); err != nil {
		return Guard{}, err
	}
	if err := t.slots.acquire(ctx); err != nil {
		return Guard{}, err
	}
	return Guard{s: &t.slots, n: 1}, nil
}

// slots is a counting semaphore with a lock-free fast path and a FIFO
// queue of waiters. limit 0 means unlimited (only counted).
type slots struct {
	count   atomic.Int64
	waiting atomic.Int64
	_       [cacheLine - 16]byte
	limit   int64

	mu    sync.Mutex
	queue []*slotWaiter
}

type slotWaiter struct {
	ready chan struct{}
}

func (s *slots) limitError(tenant string) *LimitError {
	return &LimitError{Resource: Concurrency, Limit: s.limit, Used: s.count.Load(), Requested: 1, Tenant: tenant}
}

func (s *slots) tryAcquire() bool {
	if s.limit == 0 {
		s.count.Add(1)
		return true
	}
	if s.waiting.Load() > 0 {
		return false // first come first served: waiters go first
	}
	for {
		c := s.count.Load()
		if c >= s.limit {
			return false
		}
		if s.count.CompareAndSwap(c, c+1) {
			return true
		}
	}
}

func (s *slots) acquire(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.tryAcquire() {
		return nil
	}
	w := &slotWaiter{ready: make(chan struct{})}
	s.mu.Lock()
	s.queue = append(s.queue, w)
	s.waiting.Add(1)
	s.dispatchLocked() // a slot may have freed since tryAcquire
	s.mu.Unlock()
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for i, q := range s.queue {
		if q == w {
			s.queue = append(s.queue[:i], s.queue[i+1:]...)
			s.waiting.Add(-1)
			s.mu.Unlock()
			return ctx.Err()
		}
	}
	s.mu.Unlock()
	// Granted while ctx ended: pass the slot on and report the cancellation.
	s.release()
	return ctx.Err()
}

// dispatchLocked hands free slots to waiters in arrival order.
func (s *slots) dispatchLocked() {
	for len(s.queue) > 0 {
		c := s.count.Load()
		if c >= s.limit {
			return
		}
		if !s.count.CompareAndSwap(c, c+1) {
			continue
		}
		w := s.queue[0]
		s.queue[0] = nil
		s.queue = s.queue[1:]
		s.waiting.Add(-1)
		close(w.ready)
	}
}

func (s *slots) release() {
	if c := s.count.Add(-1); c < 0 {
		s.count.Add(1)
		panic(fmt.Sprintf("reslimit: slot released more times than acquired (count %d)", c))
	}
	if s.waiting.Load() > 0 {
		s.mu.Lock()
		s.dispatchLocked()
		s.mu.Unlock()
	}
}
