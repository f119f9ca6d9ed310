package reslimit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"
)

// Guard holds something acquired from a Tracker (memory, a concurrency
// slot) until Release gives it back. It is a small value: acquiring and
// releasing allocate nothing (except a word per guard while thousands of
// guards are held at once in the process). Write
//
//	g, err := tr.AcquireMemory(n)
//	if err != nil { return err }
//	defer g.Release()
//
// Release is idempotent, also across copies: a Guard passed or stored by
// value and released through several copies gives back what it holds
// once, and a copy kept after its guard was released never gives back
// what a later guard holds. A Guard is not safe for concurrent use (two
// copies released at once by two goroutines are: one of them gives back);
// the Tracker behind it is. The zero Guard holds nothing.
//
// Copy-safety has a price: a guard claims an identity cell when acquired
// and moves it on when released, two atomic instructions more than
// TrackMemory and ReleaseMemory, which charge and give back the same bytes
// (about 10 ns per pair here; see BENCHMARKS.md). In a hot loop where the
// release plainly follows the charge, they do without a guard.
type Guard struct {
	t    *Tracker
	cell *atomic.Uint64 // the guard's identity: it holds gen while the guard holds
	gen  uint64         // odd: what the guard wrote to cell when acquired
	n    int64          // bytes of memory held, or slotGuard; 0 once released through this copy
}

// slotGuard is Guard.n for a guard that holds one concurrency slot.
const slotGuard = -1

// Guard identities. A cell is even while free and odd while a guard holds
// it; release moves it on by one, so that a stale copy of a released guard
// no longer matches its cell. The cells of every tracker's guards come from
// one process-wide table, so that no tracker pays for a table of its own;
// a goroutine starts looking on a cache line picked from the address of
// its stack, so that goroutines acquiring at once (on one shared tracker
// or on many) use different lines and do not contend for them. A guard
// that finds no free cell among guardProbe gets a cell of its own (an
// allocation, only while very many guards are held at once).
const (
	guardLines = 512 // cache lines of 8 cells: 4,096 cells, 32 KiB
	guardProbe = 32  // cells looked at before allocating one
)

type guardLine struct {
	cells [8]atomic.Uint64
}

var guardTable [guardLines]guardLine

// claimGuard returns a free identity cell, marked held, and its value.
func claimGuard() (*atomic.Uint64, uint64) {
	var probe byte
	// Goroutine stacks start at 2 KiB and sit side by side: hash the
	// address at 1 KiB so that neighbouring stacks get different lines.
	h := uint64(uintptr(unsafe.Pointer(&probe))>>10) * 0x9E3779B97F4A7C15
	line := uint(h>>40) % guardLines
	for k := range uint(guardProbe) {
		c := &guardTable[(line+k/8)%guardLines].cells[k%8]
		if v := c.Load(); v&1 == 0 && c.CompareAndSwap(v, v+1) {
			return c, v + 1
		}
	}
	c := new(atomic.Uint64)
	c.Store(1)
	return c, 1
}

// memGuard returns a guard for n bytes of memory the caller has charged.
func (t *Tracker) memGuard(n int64) Guard {
	c, gen := claimGuard()
	return Guard{t: t, cell: c, gen: gen, n: n}
}

// Release gives back what the guard holds. Calling it again, on a copy of
// a released guard, or on the zero Guard, does nothing. Memory released
// after its tracker has ended is ignored (End already gave it back).
// Release panics with a "reslimit:" message when the tracker holds less
// memory than the guard (its bytes were already given back with
// ReleaseMemory): a programming error.
func (g *Guard) Release() {
	if g != nil && g.n != 0 {
		g.release()
	}
}

func (g *Guard) release() {
	n := g.n
	g.n = 0 // the pointers stay: clearing them would cost a write barrier
	if !g.cell.CompareAndSwap(g.gen, g.gen+1) {
		return // released already, through a copy
	}
	t := g.t
	if n == slotGuard {
		t.slots.release()
		return
	}
	if t.memFastPath() {
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

// memFastPath reports whether the guards of t may charge and release
// memory on the tracker's own meter alone (one CAS each), with nothing
// else (an account) to charge.
func (t *Tracker) memFastPath() bool { return t.acct == nil && t.parent == nil }

// AcquireMemory charges n bytes like TrackMemory and returns a Guard whose
// Release gives them back.
func (t *Tracker) AcquireMemory(n int64) (Guard, error) {
	if t == nil {
		return Guard{}, nil
	}
	if n > 0 && t.memFastPath() {
		// Fast path: one attempt to charge the bytes in one CAS when the
		// meter has room and the run's limit allows (see acquire).
		lim := t.limits.MaxMemoryBytes
		for {
			room, charged, released := t.memAcquireState()
			held := charged - released
			if room < n || (lim > 0 && n > lim-held) {
				break
			}
			if !t.mem.room.CompareAndSwap(room, room-n) {
				continue // lost a race: look again
			}
			if !t.closed.Load() {
				raiseMax(&t.peak, held+n)
				return t.memGuard(n), nil
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
	return t.memGuard(n), nil
}

// newSlotGuard returns a guard for a slot the caller has taken.
func (t *Tracker) newSlotGuard() Guard {
	c, gen := claimGuard()
	return Guard{t: t, cell: c, gen: gen, n: slotGuard}
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
	return t.newSlotGuard(), nil
}

// AcquireSlot takes one of the run's MaxConcurrent slots, waiting first
// come first served until one frees or ctx ends. When ctx ends first it
// returns the context's error and holds nothing. A nil ctx returns an
// error wrapping ErrInvalidArgument.
func (t *Tracker) AcquireSlot(ctx context.Context) (Guard, error) {
	if ctx == nil {
		return Guard{}, errNilContext
	}
	if t == nil {
		return Guard{}, nil
	}
	if err := t.stopped(); err != nil {
		return Guard{}, err
	}
	if err := t.slots.acquire(ctx); err != nil {
		return Guard{}, err
	}
	return t.newSlotGuard(), nil
}

// slots is a counting semaphore with a lock-free fast path and a FIFO
// queue of waiters. limit 0 means unlimited (only counted).
type slots struct {
	count   atomic.Int64
	waiting atomic.Int64 // len(mu.queue), read without the lock
	limit   int64

	mu struct {
		sync.Mutex
		queue []*slotWaiter // first come first served
	}
	_ [cacheLine - 56]byte // one cache line in all
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
	s.mu.queue = append(s.mu.queue, w)
	s.waiting.Add(1)
	s.dispatchLocked() // a slot may have freed since tryAcquire
	s.mu.Unlock()
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for i, q := range s.mu.queue {
		if q == w {
			s.mu.queue = append(s.mu.queue[:i], s.mu.queue[i+1:]...)
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

// dispatchLocked hands free slots to waiters in arrival order. It
// requires that s.mu is held.
func (s *slots) dispatchLocked() {
	for len(s.mu.queue) > 0 {
		c := s.count.Load()
		if c >= s.limit {
			return
		}
		if !s.count.CompareAndSwap(c, c+1) {
			continue
		}
		w := s.mu.queue[0]
		s.mu.queue[0] = nil
		s.mu.queue = s.mu.queue[1:]
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
