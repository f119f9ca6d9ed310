package reslimit

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSlotsEdgeRuleAndRelease(t *testing.T) {
	tr := newT(t, Limits{MaxConcurrent: 2})
	g1, err := tr.TryAcquireSlot()
	require.NoError(t, err)
	g2, err := tr.TryAcquireSlot()
	require.NoError(t, err)
	_, err = tr.TryAcquireSlot()
	requireLimit(t, err, Concurrency, 2, 2, 1)
	assert.Equal(t, int64(2), tr.Usage().Concurrent)
	assert.True(t, g1.held())
	g1.Release()
	assert.False(t, g1.held())
	g1.Release() // idempotent: must not free a second slot
	assert.Equal(t, int64(1), tr.Usage().Concurrent)
	g3, err := tr.TryAcquireSlot()
	require.NoError(t, err)
	_, err = tr.TryAcquireSlot()
	require.Error(t, err)
	g2.Release()
	g3.Release()
	assert.Equal(t, int64(0), tr.Usage().Concurrent)
	var zero Guard
	zero.Release()
	var nilG *Guard
	nilG.Release()
}

func TestAcquireSlotWaitsFirstComeFirstServed(t *testing.T) {
	tr := newT(t, Limits{MaxConcurrent: 1})
	held, err := tr.TryAcquireSlot()
	require.NoError(t, err)

	const waiters = 5
	order := make(chan int, waiters)
	var wg sync.WaitGroup
	for i := 0; i < waiters; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			g, err := tr.AcquireSlot(context.Background())
			if err != nil {
				t.Error(err)
				return
			}
			order <- i
			g.Release()
		}(i)
		// Wait until waiter i is queued before starting the next one, so
		// that arrival order is known.
		require.Eventually(t, func() bool { return tr.slots.waiting.Load() == int64(i+1) }, 5*time.Second, time.Millisecond)
	}
	_, err = tr.TryAcquireSlot()
	requireLimit(t, err, Concurrency, 1, 1, 1)
	held.Release()
	wg.Wait()
	close(order)
	var got []int
	for i := range order {
		got = append(got, i)
	}
	assert.Equal(t, []int{0, 1, 2, 3, 4}, got)
	assert.Equal(t, int64(0), tr.Usage().Concurrent)
}

func TestAcquireSlotCancelledHoldsNothing(t *testing.T) {
	tr := newT(t, Limits{MaxConcurrent: 1})
	held, err := tr.TryAcquireSlot()
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error)
	go func() {
		_, err := tr.AcquireSlot(ctx)
		errc <- err
	}()
	require.Eventually(t, func() bool { return tr.slots.waiting.Load() == 1 }, 5*time.Second, time.Millisecond)

	// A second waiter queued behind the cancelled one gets the slot.
	got := make(chan Guard)
	go func() {
		g, err := tr.AcquireSlot(context.Background())
		if err != nil {
			t.Error(err)
		}
		got <- g
	}()
	require.Eventually(t, func() bool { return tr.slots.waiting.Load() == 2 }, 5*time.Second, time.Millisecond)
	cancel()
	assert.ErrorIs(t, <-errc, context.Canceled)
	held.Release()
	g := <-got
	assert.Equal(t, int64(1), tr.Usage().Concurrent)
	g.Release()
	assert.Equal(t, int64(0), tr.Usage().Concurrent)

	_, err = tr.AcquireSlot(ctx)
	assert.ErrorIs(t, err, context.Canceled, "an ended context fails at once")
}

// Waiters that give up race with releases; no slot may be lost or leaked
// and every waiter that is still waiting is eventually served.
func TestSlotsNoLostWakeups(t *testing.T) {
	const limit = 3
	tr := newT(t, Limits{MaxConcurrent: limit})
	var inside, maxInside atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				ctx := context.Background()
				var cancel context.CancelFunc = func() {}
				if (g+i)%4 == 0 {
					ctx, cancel = context.WithTimeout(ctx, time.Duration(i%3)*time.Microsecond)
				}
				guard, err := tr.AcquireSlot(ctx)
				cancel()
				if err != nil {
					continue
				}
				n := inside.Add(1)
				for {
					m := maxInside.Load()
					if n <= m || maxInside.CompareAndSwap(m, n) {
						break
					}
				}
				inside.Add(-1)
				guard.Release()
			}
		}(g)
	}
	wg.Wait()
	assert.LessOrEqual(t, maxInside.Load(), int64(limit))
	assert.Equal(t, int64(0), tr.Usage().Concurrent)
	assert.Equal(t, int64(0), tr.slots.waiting.Load())
	for i := 0; i < limit; i++ {
		_, err := tr.TryAcquireSlot()
		require.NoError(t, err, "every slot is free again")
	}
}

func TestGuardAfterEndIsHarmless(t *testing.T) {
	tr, err := NewTracker(Limits{MaxMemoryBytes: 10, MaxConcurrent: 1})
	require.NoError(t, err)
	m, err := tr.AcquireMemory(5)
	require.NoError(t, err)
	s, err := tr.TryAcquireSlot()
	require.NoError(t, err)
	u := tr.End()
	assert.Equal(t, int64(5), u.MemoryBytes)
	m.Release()
	s.Release()
	assert.Equal(t, u, tr.Usage())
}

func TestSlotOverReleasePanics(t *testing.T) {
	var s slots
	s.limit = 1
	require.True(t, s.tryAcquire())
	s.release()
	assert.PanicsWithValue(t, "reslimit: slot released more times than acquired (count -1)", s.release)
	assert.Equal(t, int64(0), s.count.Load(), "the counter stays consistent")
}

// held reports whether the guard still holds something: false once it, or
// a copy of it, was released.
func (g *Guard) held() bool {
	return g != nil && g.n != 0 && g.cell.Load() == g.gen
}
