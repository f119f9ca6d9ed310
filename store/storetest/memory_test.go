package storetest_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/reslimit/reslimit/store"
	"github.com/reslimit/reslimit/store/storetest"
)

// TestMemoryStore runs the conformance suite against the reference
// implementation itself, on the real clock (its leases expire in real
// time: the suite sleeps past them).
func TestMemoryStore(t *testing.T) {
	storetest.Run(t, storetest.Config{
		New: func(*testing.T) store.Store { return store.NewMemory() },
	})
}

// TestMemoryStoreFakeClock runs the suite against the reference
// implementation on a fake clock of each subtest's own, which Advance
// moves: no subtest waits for a lease to expire.
func TestMemoryStoreFakeClock(t *testing.T) {
	var mu sync.Mutex
	clocks := map[*testing.T]*atomic.Int64{} // each subtest's time, in Unix nanoseconds
	storetest.Run(t, storetest.Config{
		New: func(t *testing.T) store.Store {
			c := new(atomic.Int64)
			c.Store(time.Now().UnixNano())
			mu.Lock()
			clocks[t] = c
			mu.Unlock()
			return store.NewMemoryAt(func() time.Time { return time.Unix(0, c.Load()) })
		},
		Advance: func(t *testing.T, d time.Duration) {
			mu.Lock()
			c := clocks[t]
			mu.Unlock()
			c.Add(int64(d))
		},
	})
}
