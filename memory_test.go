package reslimit

import (
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

// hammerMemory runs workers goroutines that each hold at most perWorker
// bytes of tr at once (guards and TrackMemory/ReleaseMemory by turns)
// while read is called in a loop; it returns when the workers are done.
func hammerMemory(t *testing.T, tr *Tracker, workers int, perWorker int64, rounds int, read func()) {
	t.Helper()
	var wg sync.WaitGroup
	var done atomic.Bool
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, 1))
			for i := 0; i < rounds; i++ {
				n := 1 + rng.Int64N(perWorker)
				if i%2 == 0 {
					g, err := tr.AcquireMemory(n)
					if err != nil {
						t.Errorf("AcquireMemory(%d): %v", n, err)
						return
					}
					g.Release()
					continue
				}
				if err := tr.TrackMemory(n); err != nil {
					t.Errorf("TrackMemory(%d): %v", n, err)
					return
				}
				if err := tr.ReleaseMemory(n); err != nil {
					t.Errorf("ReleaseMemory(%d): %v", n, err)
					return
				}
			}
		}(uint64(w))
	}
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for !done.Load() {
			read()
		}
	}()
	wg.Wait()
	done.Store(true)
	<-readerDone
}

// A reading of the bytes held is a value that was true at some instant:
// with 8 goroutines each holding at most 100 bytes, no reading (Usage,
// AppendReadings) shows more than 800, and no acquire that fits is
// refused (the workers fail the test on any error), with and without an
// account.
func TestMemoryReadingsNeverShowMoreThanHeld(t *testing.T) {
	const workers, per = 8, 100
	for _, withAccount := range []bool{false, true} {
		var tr *Tracker
		if withAccount {
			a := newAcct(t, AccountLimits{MaxMemory: workers * per})
			var err error
			tr, err = a.Begin(Limits{MaxMemoryBytes: 1000})
			require.NoError(t, err)
		} else {
			tr = newT(t, Limits{MaxMemoryBytes: 1000})
		}
		var worst atomic.Int64
		var buf []Reading
		hammerMemory(t, tr, workers, per, 20000, func() {
			u := tr.Usage()
			raiseMax(&worst, u.MemoryBytes)
			if u.MemoryBytes < 0 {
				t.Errorf("Usage().MemoryBytes = %d", u.MemoryBytes)
			}
			buf = tr.AppendReadings(buf[:0])
			for _, r := range buf {
				if r.Resource == Memory {
					raiseMax(&worst, r.Used)
				}
			}
		})
		require.LessOrEqual(t, worst.Load(), int64(workers*per), "account %v: a reading showed more memory held than was ever held", withAccount)
		tr.End()
	}
}

// The Monitor polling such a tracker sends no LimitExceeded and no
// HighUsage for memory: nothing was refused and the limit was never near.
func TestMonitorNoFalseMemoryEvents(t *testing.T) {
	tr := newT(t, Limits{MaxMemoryBytes: 1000})
	m := newTestMonitor(t, MonitorConfig{WarningThreshold: 0.9, EventBuffer: 1024})
	require.NoError(t, m.Register("busy", tr))
	hammerMemory(t, tr, 8, 100, 20000, m.Poll)
	m.Poll()
	st := m.Stats()
	require.Zero(t, st.LimitsExceeded, "false LimitExceeded events")
	require.Zero(t, st.Warnings, "false HighUsage events")
}

// Mixed sizes: TrackMemory/guards racing End must leave the account holding nothing.
func TestMemoryRacesWithEndMixedSizes(t *testing.T) {
	a := newAcct(t, AccountLimits{})
	for trial := 0; trial < 3000; trial++ {
		tr, err := a.Begin(Unlimited())
		require.NoError(t, err)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				<-start
				for i := 0; i < 20; i++ {
					switch g {
					case 0:
						if guard, err := tr.AcquireMemory(1); err == nil {
							runtime.Gosched()
							guard.Release()
						}
					default:
						_ = tr.TrackMemory(int64(g + 1))
					}
				}
			}(g)
		}
		close(start)
		runtime.Gosched()
		tr.End()
		wg.Wait()
		require.Equal(t, int64(0), a.Stats().MemoryBytes, "trial %d: account holds memory of an ended run", trial)
	}
}
