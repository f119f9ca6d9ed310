package reslimit

import (
	"context"
	"errors"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reslimit/reslimit/internal/threadcpu"
)

// Issue 11, item 9: each measured run pins an OS thread; no setting of
// reslimit may make the process run out of threads.

func osThreads(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip("no /proc/self/status")
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			require.NoError(t, err)
			return n
		}
	}
	t.Skip("no thread count")
	return 0
}

func withMaxMeasuredRuns(t *testing.T, n int) {
	prev := setMaxMeasuredRuns(n)
	t.Cleanup(func() { setMaxMeasuredRuns(prev) })
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	require.Eventually(t, cond, 30*time.Second, time.Millisecond, what)
}

func TestMeasuredRunsPinBoundedThreads(t *testing.T) {
	if !threadcpu.Supported {
		t.Skip("nothing is pinned where thread clocks do not exist")
	}
	const limit, runs = 4, 200
	withMaxMeasuredRuns(t, limit)
	base := osThreads(t)
	release := make(chan struct{})
	var started atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, runs)
	for i := 0; i < runs; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := Run(context.Background(), Limits{}, func(ctx context.Context) error {
				started.Add(1)
				<-release // sleeps while pinned
				return nil
			}, WithCPUTime())
			errs <- err
		}()
	}
	waitFor(t, "runs up to the cap pinned, the rest queued", func() bool {
		held, waiting := measuredRuns()
		return started.Load() == limit && held == limit && waiting == runs-limit
	})
	threads := osThreads(t)
	assert.LessOrEqual(t, threads, base+limit+32, "threads: %d before, %d with %d sleeping runs", base, threads, runs)
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	assert.Equal(t, int64(runs), started.Load())
	held, waiting := measuredRuns()
	assert.Zero(t, held)
	assert.Zero(t, waiting)
}

// A run waiting for a place ends with its context or its Timeout, having
// run and charged nothing.
func TestMeasuredRunWaitEndsWithContextOrTimeout(t *testing.T) {
	if !threadcpu.Supported {
		t.Skip("nothing is pinned where thread clocks do not exist")
	}
	withMaxMeasuredRuns(t, 1)
	acct, err := NewAccount("t", AccountLimits{})
	require.NoError(t, err)
	release := make(chan struct{})
	holding := make(chan struct{})
	done := make(chan error)
	go func() {
		_, err := Run(context.Background(), Limits{}, func(ctx context.Context) error {
			close(holding)
			<-release
			return nil
		}, WithAccount(acct))
		done <- err
	}()
	<-holding

	ran := false
	cause := errors.New("caller gave up")
	ctx, cancel := context.WithCancelCause(context.Background())
	waited := make(chan error)
	go func() {
		_, err := Run(ctx, Limits{}, func(context.Context) error { ran = true; return nil }, WithAccount(acct))
		waited <- err
	}()
	waitFor(t, "queued", func() bool { _, w := measuredRuns(); return w == 1 })
	cancel(cause)
	assert.ErrorIs(t, <-waited, cause)

	_, err = Run(context.Background(), Limits{Timeout: time.Millisecond}, func(context.Context) error { ran = true; return nil }, WithAccount(acct))
	var le *LimitError
	require.ErrorAs(t, err, &le)
	assert.Equal(t, Timeout, le.Resource)
	assert.False(t, ran)
	assert.Equal(t, int64(1), acct.Stats().Evaluations, "the runs that waited were not charged")

	close(release)
	require.NoError(t, <-done)
	_, waiting := measuredRuns()
	assert.Zero(t, waiting)
}

// Runs inside a pinned run, on its goroutine or another, and Go helpers
// never wait for a place their own run holds.
func TestMeasuredRunsNestedDoNotDeadlock(t *testing.T) {
	withMaxMeasuredRuns(t, 1)
	var inner, helper, other atomic.Bool
	u, err := Run(context.Background(), Limits{}, func(ctx context.Context) error {
		// Same goroutine: the thread is pinned already.
		if _, err := Run(ctx, Limits{}, func(ctx context.Context) error {
			inner.Store(true)
			return nil
		}, WithCPUTime()); err != nil {
			return err
		}
		tr := FromContext(ctx)
		tr.Go(func() { helper.Store(true) })
		errc := make(chan error)
		go func() {
			_, err := Run(ctx, Limits{}, func(ctx context.Context) error {
				other.Store(true)
				x := 0
				for i := 0; i < 1e6; i++ {
					x += i
				}
				runtime.KeepAlive(x)
				return nil
			}, WithCPUTime())
			errc <- err
		}()
		return <-errc
	}, WithCPUTime())
	require.NoError(t, err)
	assert.True(t, inner.Load())
	assert.True(t, helper.Load())
	assert.True(t, other.Load())
	assert.GreaterOrEqual(t, u.CPUTime, time.Duration(0))
	held, waiting := measuredRuns()
	assert.Zero(t, held)
	assert.Zero(t, waiting)
}

func TestMaxMeasuredRunsSetting(t *testing.T) {
	prev := setMaxMeasuredRuns(7)
	defer setMaxMeasuredRuns(prev)
	assert.Equal(t, defaultMaxMeasuredRuns, prev)
	assert.Equal(t, 7, setMaxMeasuredRuns(0))
	assert.Equal(t, 1, setMaxMeasuredRuns(7), "below 1 is taken as 1")
}
