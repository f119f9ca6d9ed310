package reslimit

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reslimit/reslimit/internal/threadcpu"
)

// spinUntilStopped burns CPU until the run is stopped, checking TrackOperation.
func spinUntilStopped(ctx context.Context) error {
	tr := FromContext(ctx)
	for {
		if err := tr.TrackOperation(); err != nil {
			return err
		}
	}
}

func TestRunCountsAndReturnsUsage(t *testing.T) {
	u, err := Run(context.Background(), Limits{MaxOperations: 10}, func(ctx context.Context) error {
		tr := FromContext(ctx)
		require.NotNil(t, tr)
		for i := 0; i < 4; i++ {
			if err := tr.TrackOperation(); err != nil {
				return err
			}
		}
		return tr.TrackMemory(100)
	})
	require.NoError(t, err)
	assert.Equal(t, int64(4), u.Operations)
	assert.Equal(t, int64(100), u.PeakMemoryBytes)
	assert.Positive(t, u.WallTime)
}

func TestRunReturnsFnError(t *testing.T) {
	boom := errors.New("boom")
	_, err := Run(context.Background(), Strict(), func(context.Context) error { return boom })
	assert.Same(t, boom, err)
}

func TestRunBadInput(t *testing.T) {
	_, err := Run(context.Background(), Strict(), nil)
	assert.ErrorIs(t, err, ErrInvalidArgument)
	called := false
	_, err = Run(context.Background(), Limits{MaxCPUTime: -1}, func(context.Context) error { called = true; return nil })
	assert.ErrorIs(t, err, ErrInvalidLimits)
	_, err = Run(context.Background(), Strict(), func(context.Context) error { called = true; return nil }, WithAccount(nil))
	assert.ErrorIs(t, err, ErrInvalidArgument)
	assert.False(t, called)
}

func TestRunSpinningIsStoppedForCPU(t *testing.T) {
	if !threadcpu.Supported {
		t.Skip("needs per-thread CPU clocks")
	}
	limit := 100 * time.Millisecond
	u, err := Run(context.Background(), Limits{MaxCPUTime: limit, Timeout: 10 * time.Second}, func(ctx context.Context) error {
		return spinUntilStopped(ctx)
	})
	var le *LimitError
	require.ErrorAs(t, err, &le)
	assert.Equal(t, CPUTime, le.Resource, "stopped for CPU, not timeout")
	assert.Greater(t, le.Used, int64(limit))
	assert.GreaterOrEqual(t, u.CPUTime, limit)
	assert.Less(t, u.CPUTime, limit+500*time.Millisecond, "the watchdog samples often enough")
}

func TestRunSleepingUsesAlmostNoCPU(t *testing.T) {
	if !threadcpu.Supported {
		t.Skip("needs per-thread CPU clocks")
	}
	u, err := Run(context.Background(), Limits{MaxCPUTime: 100 * time.Millisecond}, func(ctx context.Context) error {
		select {
		case <-time.After(400 * time.Millisecond): // the work: sleeping, not synchronisation
			return nil
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	})
	require.NoError(t, err)
	assert.Less(t, u.CPUTime, 50*time.Millisecond)
	assert.GreaterOrEqual(t, u.WallTime, 400*time.Millisecond)
}

func TestRunCountsCPUOfGoHelpers(t *testing.T) {
	if !threadcpu.Supported {
		t.Skip("needs per-thread CPU clocks")
	}
	u, err := Run(context.Background(), Limits{MaxCPUTime: 80 * time.Millisecond, Timeout: 10 * time.Second}, func(ctx context.Context) error {
		tr := FromContext(ctx)
		tr.Go(func() { _ = spinUntilStopped(ctx) })
		<-ctx.Done() // the caller only waits; the helper burns the CPU
		return ctx.Err()
	})
	var le *LimitError
	require.ErrorAs(t, err, &le)
	assert.Equal(t, CPUTime, le.Resource)
	assert.GreaterOrEqual(t, u.CPUTime, 80*time.Millisecond)
}

func TestRunTimeout(t *testing.T) {
	var cause error
	u, err := Run(context.Background(), Limits{Timeout: 30 * time.Millisecond}, func(ctx context.Context) error {
		<-ctx.Done()
		cause = context.Cause(ctx)
		return ctx.Err() // the caller still gets the *LimitError
	})
	var le *LimitError
	require.ErrorAs(t, err, &le)
	assert.Equal(t, Timeout, le.Resource)
	assert.Equal(t, int64(30*time.Millisecond), le.Limit)
	assert.GreaterOrEqual(t, le.Used, int64(30*time.Millisecond), "reports the real elapsed time")
	assert.Same(t, le, cause, "the run's context has the *LimitError as its cause")
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.GreaterOrEqual(t, u.WallTime, 30*time.Millisecond)
}

func TestRunParentCancellationStopsTheRun(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{})
	go func() { <-started; cancel() }()
	_, err := Run(ctx, Unlimited(), func(ctx context.Context) error {
		close(started)
		return spinUntilStopped(ctx)
	})
	assert.ErrorIs(t, err, context.Canceled)
}

func TestRunPanicReleasesAndReraises(t *testing.T) {
	acct, err := NewAccount("p", AccountLimits{MaxConcurrent: 1})
	require.NoError(t, err)
	assert.PanicsWithValue(t, "kaboom", func() {
		_, _ = Run(context.Background(), Strict(), func(ctx context.Context) error {
			_ = FromContext(ctx).TrackMemory(1000)
			panic("kaboom")
		}, WithAccount(acct))
	})
	s := acct.Stats()
	assert.Equal(t, int64(0), s.Running)
	assert.Equal(t, int64(0), s.MemoryBytes)
	h := acct.History()
	require.Len(t, h, 1)
	assert.ErrorIs(t, h[0].Err, ErrPanicked)
	// The slot came back: another run can start.
	_, err = Run(context.Background(), Strict(), func(context.Context) error { return nil }, WithAccount(acct))
	assert.NoError(t, err)
}

func TestRunPanicInGoHelperIsReraised(t *testing.T) {
	assert.PanicsWithValue(t, "helper", func() {
		_, _ = Run(context.Background(), Strict(), func(ctx context.Context) error {
			FromContext(ctx).Go(func() { panic("helper") })
			return nil
		})
	})
}

func TestLimitConcurrentFailsFastWhenFull(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 2)
	tool := Limit(func(ctx context.Context, in int) (int, error) {
		entered <- struct{}{}
		<-release
		return in * 2, nil
	}, Limits{MaxConcurrent: 2})

	var wg sync.WaitGroup
	results := make(chan int, 2)
	for i := 1; i <= 2; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			out, err := tool(context.Background(), i)
			assert.NoError(t, err)
			results <- out
		}(i)
	}
	<-entered
	<-entered
	_, err := tool(context.Background(), 3)
	requireLimit(t, err, Concurrency, 2, 2, 1)
	close(release)
	wg.Wait()
	close(results)
	sum := 0
	for r := range results {
		sum += r
	}
	assert.Equal(t, 6, sum)
	out, err := tool(context.Background(), 5)
	require.NoError(t, err)
	assert.Equal(t, 10, out)
}

func TestLimitWithQueueWaits(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	var calls atomic.Int64
	tool := Limit(func(ctx context.Context, in string) (string, error) {
		if calls.Add(1) == 1 {
			entered <- struct{}{}
			<-release
		}
		return in + "!", nil
	}, Limits{MaxConcurrent: 1}, WithQueue(0))

	firstDone := make(chan struct{})
	go func() {
		defer close(firstDone)
		_, err := tool(context.Background(), "a")
		assert.NoError(t, err)
	}()
	<-entered
	second := make(chan string)
	go func() {
		out, err := tool(context.Background(), "b")
		assert.NoError(t, err)
		second <- out
	}()
	close(release)
	assert.Equal(t, "b!", <-second)
	<-firstDone
}

func TestLimitQueueTimesOut(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{})
	tool := Limit(func(ctx context.Context, _ int) (int, error) {
		close(entered)
		<-release
		return 0, nil
	}, Limits{MaxConcurrent: 1}, WithQueue(20*time.Millisecond))
	done := make(chan struct{})
	go func() { defer close(done); _, _ = tool(context.Background(), 0) }()
	<-entered
	_, err := tool(context.Background(), 1)
	requireLimit(t, err, Concurrency, 1, 1, 1)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = tool(ctx, 2)
	assert.ErrorIs(t, err, context.Canceled)
	close(release)
	<-done
}

func TestLimitBadInput(t *testing.T) {
	var nilFn func(context.Context, int) (int, error)
	_, err := Limit(nilFn, Strict())(context.Background(), 1)
	assert.ErrorIs(t, err, ErrInvalidArgument)
	_, err = Limit(func(context.Context, int) (int, error) { return 0, nil }, Limits{MaxOperations: -1})(context.Background(), 1)
	assert.ErrorIs(t, err, ErrInvalidLimits)
	_, err = Limit(func(context.Context, int) (int, error) { return 0, nil }, Strict(), WithQueue(-time.Second))(context.Background(), 1)
	assert.ErrorIs(t, err, ErrInvalidArgument)
}

func TestLimitPerCallTrackers(t *testing.T) {
	tool := Limit(func(ctx context.Context, n int64) (int64, error) {
		tr := FromContext(ctx)
		return tr.Usage().Operations, tr.TrackOperations(n)
	}, Limits{MaxOperations: 5}, WithName("counter"))
	for i := 0; i < 3; i++ {
		before, err := tool(context.Background(), 5)
		require.NoError(t, err, "each call has its own budget")
		assert.Zero(t, before)
	}
	_, err := tool(context.Background(), 6)
	requireLimit(t, err, Operations, 5, 0, 6)
}

func TestLimitPanicReleasesSlot(t *testing.T) {
	tool := Limit(func(ctx context.Context, p bool) (int, error) {
		if p {
			panic("tool panic")
		}
		return 1, nil
	}, Limits{MaxConcurrent: 1})
	assert.PanicsWithValue(t, "tool panic", func() { _, _ = tool(context.Background(), true) })
	out, err := tool(context.Background(), false)
	require.NoError(t, err)
	assert.Equal(t, 1, out)
}

func TestFromContextWithoutRun(t *testing.T) {
	assert.Nil(t, FromContext(context.Background()))
	assert.NoError(t, FromContext(context.Background()).TrackOperation())
	tr := newT(t, Unlimited())
	assert.Same(t, tr, FromContext(NewContext(context.Background(), tr)))
}

func TestRunMeasuresCPUOnlyWhenSomethingNeedsIt(t *testing.T) {
	if !threadcpu.Supported {
		t.Skip("needs per-thread CPU clocks")
	}
	// Burn 20 ms of this thread's CPU, however busy the machine is (a
	// wall-clock spin gets less CPU than its length when the cores are
	// shared); give up after 5 s of wall time.
	spin := func(ctx context.Context) error {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		start, deadline := threadcpu.Current(), time.Now().Add(5*time.Second)
		for threadcpu.Current()-start < 20*time.Millisecond && time.Now().Before(deadline) {
		}
		return nil
	}
	u, err := Run(context.Background(), Limits{MaxOperations: 10}, spin)
	require.NoError(t, err)
	assert.Zero(t, u.CPUTime, "no CPU limit, no account: not measured")
	u, err = Run(context.Background(), Limits{MaxOperations: 10}, spin, WithCPUTime())
	require.NoError(t, err)
	assert.GreaterOrEqual(t, u.CPUTime, 10*time.Millisecond)
	acct, _ := NewAccount("a", AccountLimits{})
	u, err = Run(context.Background(), Unlimited(), spin, WithAccount(acct))
	require.NoError(t, err)
	assert.GreaterOrEqual(t, u.CPUTime, 10*time.Millisecond, "billing needs it")
	assert.Equal(t, u.CPUTime, acct.Stats().CPUTime)
}
