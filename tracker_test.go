package reslimit

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func newT(t *testing.T, l Limits) *Tracker {
	t.Helper()
	tr, err := NewTracker(l)
	require.NoError(t, err)
	t.Cleanup(func() { tr.End() })
	return tr
}

func requireLimit(t *testing.T, err error, r Resource, limit, used, requested int64) *LimitError {
	t.Helper()
	require.ErrorIs(t, err, ErrLimitExceeded)
	var le *LimitError
	require.ErrorAs(t, err, &le)
	assert.Equal(t, r, le.Resource, "resource")
	assert.Equal(t, limit, le.Limit, "limit")
	assert.Equal(t, used, le.Used, "used")
	assert.Equal(t, requested, le.Requested, "requested")
	return le
}

func TestOperationsEdgeRule(t *testing.T) {
	tr := newT(t, Limits{MaxOperations: 3})
	for i := 0; i < 3; i++ {
		require.NoError(t, tr.TrackOperation())
	}
	requireLimit(t, tr.TrackOperation(), Operations, 3, 3, 1)
	requireLimit(t, tr.TrackOperation(), Operations, 3, 3, 1) // and again: still nothing counted
	assert.Equal(t, int64(3), tr.Usage().Operations, "refused requests are not counted")
	assert.Equal(t, int64(2), tr.Usage().Refusals)
}

func TestTrackOperationsAllOrNothing(t *testing.T) {
	tr := newT(t, Limits{MaxOperations: 10})
	require.NoError(t, tr.TrackOperations(7))
	requireLimit(t, tr.TrackOperations(4), Operations, 10, 7, 4)
	assert.Equal(t, int64(7), tr.Usage().Operations)
	require.NoError(t, tr.TrackOperations(3))
	require.NoError(t, tr.TrackOperations(0))
	assert.ErrorIs(t, tr.TrackOperations(-1), ErrInvalidArgument)
	assert.Equal(t, int64(10), tr.Usage().Operations)
}

func TestUnlimitedStillCounts(t *testing.T) {
	tr := newT(t, Unlimited())
	for i := 0; i < 1000; i++ {
		require.NoError(t, tr.TrackOperation())
	}
	require.NoError(t, tr.TrackOperations(1<<51)) // larger than one unlimited fill
	require.NoError(t, tr.TrackCall())
	require.NoError(t, tr.TrackMemory(5000))
	require.NoError(t, tr.CheckFileSize(1<<40))
	u := tr.Usage()
	assert.Equal(t, int64(1000+1<<51), u.Operations)
	assert.Equal(t, int64(1), u.Calls)
	assert.Equal(t, int64(5000), u.MemoryBytes)
	assert.Equal(t, int64(5000), u.TotalMemoryBytes)
	assert.Equal(t, int64(1<<40), u.LargestFileBytes)
}

func TestMemoryEdgeRuleAndRelease(t *testing.T) {
	tr := newT(t, Limits{MaxMemoryBytes: 100})
	require.NoError(t, tr.TrackMemory(60))
	requireLimit(t, tr.TrackMemory(41), Memory, 100, 60, 41)
	require.NoError(t, tr.TrackMemory(40))
	u := tr.Usage()
	assert.Equal(t, int64(100), u.MemoryBytes)
	assert.Equal(t, int64(100), u.TotalMemoryBytes, "refused bytes are not in the total")

	require.NoError(t, tr.ReleaseMemory(70))
	err := tr.ReleaseMemory(31)
	require.ErrorIs(t, err, ErrInvalidArgument, "over-release")
	assert.Contains(t, err.Error(), "only 30 are held")
	require.NoError(t, tr.TrackMemory(70))
	u = tr.Usage()
	assert.Equal(t, int64(100), u.MemoryBytes)
	assert.Equal(t, int64(100), u.PeakMemoryBytes)
	assert.Equal(t, int64(170), u.TotalMemoryBytes)

	assert.ErrorIs(t, tr.TrackMemory(-1), ErrInvalidArgument)
	assert.ErrorIs(t, tr.ReleaseMemory(-1), ErrInvalidArgument)
	assert.Equal(t, int64(100), tr.Usage().MemoryBytes)
}

func TestFileSize(t *testing.T) {
	tr := newT(t, Limits{MaxFileSize: 10})
	require.NoError(t, tr.CheckFileSize(10))
	requireLimit(t, tr.CheckFileSize(11), FileSize, 10, 0, 11)
	assert.ErrorIs(t, tr.CheckFileSize(-1), ErrInvalidArgument)
	assert.Equal(t, int64(10), tr.Usage().LargestFileBytes)
}

func TestLimitWriter(t *testing.T) {
	tr := newT(t, Limits{MaxFileSize: 10})
	var buf bytes.Buffer
	w := tr.LimitWriter(&buf)
	n, err := w.Write([]byte("12345"))
	require.NoError(t, err)
	assert.Equal(t, 5, n)
	n, err = w.Write([]byte("6789ABC"))
	assert.Equal(t, 5, n)
	requireLimit(t, err, FileSize, 10, 5, 7)
	assert.Equal(t, "123456789A", buf.String(), "nothing past the limit is written")
	_, err = w.Write([]byte("x"))
	assert.ErrorIs(t, err, ErrLimitExceeded)
	assert.Equal(t, 10, buf.Len())

	exact := newT(t, Limits{MaxFileSize: 3})
	var b2 bytes.Buffer
	_, err = exact.LimitWriter(&b2).Write([]byte("abc"))
	require.NoError(t, err, "exactly the limit is allowed")

	var nilT *Tracker
	assert.Equal(t, io.Writer(&buf), nilT.LimitWriter(&buf))
}

func TestLimitReader(t *testing.T) {
	tr := newT(t, Limits{MaxFileSize: 10})
	data, err := io.ReadAll(tr.LimitReader(strings.NewReader("0123456789")))
	require.NoError(t, err, "exactly the limit reads to EOF")
	assert.Equal(t, "0123456789", string(data))

	data, err = io.ReadAll(tr.LimitReader(strings.NewReader("0123456789X")))
	requireLimit(t, err, FileSize, 10, 10, 1)
	assert.Equal(t, "0123456789", string(data))

	// Small reads that land exactly on the limit before the excess.
	r := tr.LimitReader(io.MultiReader(strings.NewReader("01234"), strings.NewReader("56789"), strings.NewReader("XYZ")))
	data, err = io.ReadAll(r)
	assert.ErrorIs(t, err, ErrLimitExceeded)
	assert.Equal(t, "0123456789", string(data))
}

func TestNilTrackerIsNoOp(t *testing.T) {
	var tr *Tracker
	assert.NoError(t, tr.TrackOperation())
	assert.NoError(t, tr.TrackOperations(5))
	assert.NoError(t, tr.TrackCall())
	assert.NoError(t, tr.TrackMemory(5))
	assert.NoError(t, tr.ReleaseMemory(5))
	assert.NoError(t, tr.CheckFileSize(5))
	assert.NoError(t, tr.CheckCPUTime())
	assert.NoError(t, tr.AddCPUTime(time.Second))
	assert.NoError(t, tr.Err())
	g, err := tr.AcquireMemory(10)
	assert.NoError(t, err)
	g.Release()
	g, err = tr.TryAcquireSlot()
	assert.NoError(t, err)
	g.Release()
	g, err = tr.AcquireSlot(t.Context())
	assert.NoError(t, err)
	g.Release()
	assert.Equal(t, Usage{}, tr.Usage())
	assert.Equal(t, Usage{}, tr.End())
	assert.Equal(t, Limits{}, tr.Limits())
	assert.Nil(t, tr.AppendReadings(nil))
	done := make(chan struct{})
	tr.Go(func() { close(done) })
	<-done
}

func TestEndClosesTracker(t *testing.T) {
	tr, err := NewTracker(Limits{MaxOperations: 100})
	require.NoError(t, err)
	require.NoError(t, tr.TrackOperations(5))
	require.NoError(t, tr.TrackMemory(10))
	u1 := tr.End()
	assert.Equal(t, int64(5), u1.Operations)
	assert.Equal(t, int64(10), u1.MemoryBytes)
	for name, err := range map[string]error{
		"TrackOperation":   tr.TrackOperation(),
		"TrackOperations0": tr.TrackOperations(0),
		"TrackCall":        tr.TrackCall(),
		"TrackMemory":      tr.TrackMemory(1),
		"ReleaseMemory":    tr.ReleaseMemory(1),
		"CheckFileSize":    tr.CheckFileSize(1),
		"CheckCPUTime":     tr.CheckCPUTime(),
		"AddCPUTime":       tr.AddCPUTime(1),
	} {
		assert.ErrorIs(t, err, ErrClosed, name)
	}
	_, err = tr.TryAcquireSlot()
	assert.ErrorIs(t, err, ErrClosed)
	_, err = tr.AcquireMemory(1)
	assert.ErrorIs(t, err, ErrClosed)
	u2 := tr.End()
	assert.Equal(t, u1, u2, "End twice returns the same usage")
	assert.Equal(t, u1, tr.Usage())
	assert.NoError(t, tr.Err(), "End is not a stop")
}

// Many goroutines hammer one limited tracker: exactly the limit is
// granted, never more.
func TestHammerOperationsExact(t *testing.T) {
	const limit = 10_000
	tr := newT(t, Limits{MaxOperations: limit})
	var granted sync.WaitGroup
	var mu sync.Mutex
	total := 0
	for g := 0; g < 16; g++ {
		granted.Add(1)
		go func() {
			defer granted.Done()
			n := 0
			for i := 0; i < limit; i++ {
				if tr.TrackOperation() == nil {
					n++
				}
			}
			mu.Lock()
			total += n
			mu.Unlock()
		}()
	}
	granted.Wait()
	assert.Equal(t, limit, total)
	assert.Equal(t, int64(limit), tr.Usage().Operations)
}

func TestHammerMixedSizesNeverExceeds(t *testing.T) {
	const limit = 5_000
	tr := newT(t, Limits{MaxOperations: limit})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var total int64
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			var n int64
			size := int64(g%3 + 1)
			for i := 0; i < limit; i++ {
				if tr.TrackOperations(size) == nil {
					n += size
				}
			}
			mu.Lock()
			total += n
			mu.Unlock()
		}(g)
	}
	wg.Wait()
	assert.LessOrEqual(t, total, int64(limit))
	assert.GreaterOrEqual(t, total, int64(limit-2), "requests of 1 fill the last units")
	assert.Equal(t, total, tr.Usage().Operations)
}

func TestHammerMemoryNeverExceeds(t *testing.T) {
	const limit = 1000
	tr := newT(t, Limits{MaxMemoryBytes: limit})
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				n := int64(i%97 + 1)
				guard, err := tr.AcquireMemory(n)
				if err != nil {
					require.ErrorIs(t, err, ErrLimitExceeded)
					continue
				}
				if h := tr.Usage().MemoryBytes; h > limit {
					t.Errorf("held %d > limit", h)
				}
				guard.Release()
				guard.Release() // idempotent
			}
		}(g)
	}
	wg.Wait()
	u := tr.Usage()
	assert.Equal(t, int64(0), u.MemoryBytes)
	assert.LessOrEqual(t, u.PeakMemoryBytes, int64(limit))
	assert.Positive(t, u.PeakMemoryBytes)
}

func TestAddCPUTime(t *testing.T) {
	tr := newT(t, Limits{MaxCPUTime: 100 * time.Millisecond})
	require.NoError(t, tr.AddCPUTime(100*time.Millisecond), "equal to the limit is allowed")
	err := tr.AddCPUTime(time.Millisecond)
	le := requireLimit(t, err, CPUTime, int64(100*time.Millisecond), int64(101*time.Millisecond), 0)
	assert.Contains(t, le.Error(), "101ms")
	assert.ErrorIs(t, tr.TrackOperation(), ErrLimitExceeded, "a stopped run's TrackOperation reports the stop")
	assert.ErrorIs(t, tr.Err(), ErrLimitExceeded)
	assert.ErrorIs(t, tr.AddCPUTime(-1), ErrInvalidArgument)
}

func TestStandaloneTimeoutStopsTheRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := newT(t, Limits{Timeout: 20 * time.Millisecond})
		require.NoError(t, tr.TrackOperation())
		time.Sleep(20 * time.Millisecond) // the timeout passes on the bubble's fake clock
		synctest.Wait()                   // and its timer has fired
		var le *LimitError
		require.ErrorAs(t, tr.Err(), &le, "the timeout stopped the run by itself")
		require.ErrorAs(t, tr.TrackOperation(), &le)
		assert.Equal(t, Timeout, le.Resource)
		assert.GreaterOrEqual(t, le.Used, int64(20*time.Millisecond))
	})
}

func TestReadingsReportUsageAndRefusals(t *testing.T) {
	tr := newT(t, Limits{MaxOperations: 1, MaxMemoryBytes: 10})
	require.NoError(t, tr.TrackOperation())
	require.Error(t, tr.TrackOperation())
	require.NoError(t, tr.TrackMemory(4))
	rs := tr.AppendReadings(make([]Reading, 0, 16))
	byRes := map[Resource]Reading{}
	for _, r := range rs {
		byRes[r.Resource] = r
	}
	assert.Equal(t, Reading{Resource: Operations, Used: 1, Limit: 1, Refusals: 1}, byRes[Operations])
	assert.Equal(t, Reading{Resource: Memory, Used: 4, Limit: 10}, byRes[Memory])
	assert.Equal(t, 0.0, testing.AllocsPerRun(100, func() { rs = tr.AppendReadings(rs[:0]) }))
}

func TestHotPathsAllocateNothing(t *testing.T) {
	tr := newT(t, Limits{MaxOperations: 1 << 40, MaxMemoryBytes: 1 << 40, MaxConcurrent: 4})
	allocs := testing.AllocsPerRun(1000, func() {
		_ = tr.TrackOperation()
		_ = tr.TrackMemory(8)
		_ = tr.ReleaseMemory(8)
		g, _ := tr.AcquireMemory(8)
		g.Release()
		s, _ := tr.TryAcquireSlot()
		s.Release()
	})
	assert.Zero(t, allocs)
}

func TestOverflowIsAnError(t *testing.T) {
	tr := newT(t, Unlimited())
	require.NoError(t, tr.TrackOperations(maxUsage-1))
	err := tr.TrackOperations(maxUsage)
	assert.ErrorIs(t, err, ErrInvalidArgument)
	assert.False(t, errors.Is(err, ErrLimitExceeded))
	assert.Equal(t, int64(maxUsage-1), tr.Usage().Operations)
}

func TestLimitedStreamsAfterEnd(t *testing.T) {
	tr, err := NewTracker(Limits{MaxFileSize: 10})
	require.NoError(t, err)
	r := tr.LimitReader(strings.NewReader("abc"))
	var buf bytes.Buffer
	w := tr.LimitWriter(&buf)
	tr.End()
	_, err = r.Read(make([]byte, 4))
	assert.ErrorIs(t, err, ErrClosed)
	_, err = w.Write([]byte("x"))
	assert.ErrorIs(t, err, ErrClosed)
	assert.Zero(t, buf.Len())
}
