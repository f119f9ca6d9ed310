package reslimit

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A run whose CPU time nothing measures makes its tracker only when its
// function asks for it. These tests check that the tracker behaves the same
// whenever it is made: before, during or after the run's timeout or its
// caller's cancellation, from many goroutines at once, and after the run.

func TestRunTrackerIsOnePerRunFromEveryGoroutine(t *testing.T) {
	const n = 16
	var got [n]*Tracker
	u, err := Run(context.Background(), Limits{MaxOperations: 1000}, func(ctx context.Context) error {
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				tr := FromContext(ctx)
				got[i] = tr
				_ = tr.TrackOperation()
			})
		}
		close(start)
		wg.Wait()
		return nil
	})
	require.NoError(t, err)
	require.NotNil(t, got[0])
	for i := range n {
		assert.Same(t, got[0], got[i], "goroutine %d", i)
	}
	assert.Equal(t, int64(n), u.Operations, "every goroutine counted on the one tracker")
}

func TestRunWithoutTrackerReportsWallTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		boom := errors.New("boom")
		u, err := Run(context.Background(), Limits{MaxOperations: 1}, func(ctx context.Context) error {
			time.Sleep(time.Second) // the run's wall time, on the fake clock
			return boom
		})
		assert.Same(t, boom, err)
		assert.Equal(t, Usage{WallTime: time.Second}, u)
	})
}

func TestRunTrackerAfterTheRunIsEnded(t *testing.T) {
	var kept context.Context
	_, err := Run(context.Background(), Limits{MaxOperations: 10, Timeout: time.Hour}, func(ctx context.Context) error {
		kept = ctx
		return nil
	})
	require.NoError(t, err)
	tr := FromContext(kept)
	require.NotNil(t, tr, "a context kept past its run still has a tracker")
	assert.ErrorIs(t, tr.TrackOperation(), ErrClosed)
	assert.Equal(t, Limits{MaxOperations: 10, Timeout: time.Hour}, tr.Limits())

	// A tracker made during the run is the one found afterwards.
	_, err = Run(context.Background(), Limits{}, func(ctx context.Context) error {
		kept = ctx
		return FromContext(ctx).TrackOperations(3)
	})
	require.NoError(t, err)
	assert.Equal(t, int64(3), FromContext(kept).Usage().Operations)
	assert.ErrorIs(t, FromContext(kept).TrackOperation(), ErrClosed)
}

func TestRunTrackerMadeAfterTheTimeoutIsStopped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var opErr error
		_, err := Run(context.Background(), Limits{Timeout: time.Second}, func(ctx context.Context) error {
			<-ctx.Done()
			opErr = FromContext(ctx).TrackOperation()
			return nil
		})
		var le *LimitError
		require.ErrorAs(t, err, &le)
		assert.Equal(t, Timeout, le.Resource)
		assert.Equal(t, int64(time.Second), le.Used)
		assert.Same(t, le, opErr, "TrackOperation of a tracker made after the timeout reports it")
	})
}

func TestRunTrackerMadeAfterCancellationIsStopped(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	why := errors.New("caller gave up")
	_, err := Run(ctx, Limits{Timeout: time.Hour}, func(ctx context.Context) error {
		cancel(why)
		<-ctx.Done()
		return FromContext(ctx).TrackOperation()
	})
	assert.Same(t, why, err, "TrackOperation reports the caller's cause at once")
}

func TestRunCallerCancellationBeforeTimeoutWins(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		_, err := Run(ctx, Limits{Timeout: time.Second}, func(ctx context.Context) error {
			cancel()
			<-ctx.Done()
			time.Sleep(2 * time.Second) // the timeout passes (fake clock) while fn is still busy
			return ctx.Err()
		})
		assert.ErrorIs(t, err, context.Canceled)
		var le *LimitError
		assert.False(t, errors.As(err, &le), "the run was cancelled by its caller, not stopped by its timeout: %v", err)
	})
}

// The timeout fires while the function is making its tracker: whichever
// comes first, the tracker is stopped and the run reports the timeout.
func TestRunTimeoutRacesTrackerCreation(t *testing.T) {
	for i := 0; i < 300; i++ {
		_, err := Run(context.Background(), Limits{Timeout: time.Duration(i%7+1) * time.Microsecond}, func(ctx context.Context) error {
			tr := FromContext(ctx)
			<-ctx.Done()
			var le *LimitError
			if !errors.As(tr.TrackOperation(), &le) || le.Resource != Timeout {
				return errors.New("TrackOperation does not report the timeout")
			}
			return nil
		})
		var le *LimitError
		require.ErrorAs(t, err, &le, "iteration %d", i)
		require.Equal(t, Timeout, le.Resource)
	}
}

func TestRunFinishesTrackerMadeByGoHelper(t *testing.T) {
	u, err := Run(context.Background(), Limits{MaxOperations: 100}, func(ctx context.Context) error {
		tr := FromContext(ctx)
		for range 4 {
			tr.Go(func() { _ = FromContext(ctx).TrackOperations(5) })
		}
		return nil
	})
	require.NoError(t, err)
	assert.Equal(t, int64(20), u.Operations, "Run waited for the helpers before it ended the tracker")
}

func TestLimitDerivedContextsSeeTheRun(t *testing.T) {
	type key struct{}
	tool := Limit(func(ctx context.Context, _ int) (bool, error) {
		child, cancel := context.WithCancel(context.WithValue(ctx, key{}, 1))
		defer cancel()
		same := FromContext(child) == FromContext(ctx) && child.Value(key{}) == 1
		<-child.Done() // the run's timeout reaches contexts derived from it
		return same, context.Cause(child)
	}, Limits{Timeout: 10 * time.Millisecond})
	same, err := tool(context.Background(), 0)
	assert.True(t, same)
	var le *LimitError
	require.ErrorAs(t, err, &le)
	assert.Equal(t, Timeout, le.Resource)
}

// Regressions found in review of the late-made tracker.

// A halt that loses to another must not return before TrackOperation reports the
// first: the winner may not have got that far.
func TestSecondStopReasonStillStopsTheRun(t *testing.T) {
	tr := newT(t, Unlimited())
	first := errors.New("first")
	tr.cause.Store(&stopState{err: first}) // a halt that has set the cause, not yet stop
	tr.halt(errors.New("second"))
	assert.Same(t, first, tr.TrackOperation())
	assert.Same(t, first, tr.Err())
}

// By the time the function sees ctx.Done() for the timeout, its tracker's
// TrackOperation and Err report it (the tracker is stopped before the context is
// cancelled).
func TestRunReportsTimeoutOnceDone(t *testing.T) {
	for i := 0; i < 1000; i++ {
		var opErr, trErr error
		_, _ = Run(context.Background(), Limits{Timeout: 20 * time.Microsecond}, func(ctx context.Context) error {
			tr := FromContext(ctx)
			<-ctx.Done()
			opErr, trErr = tr.TrackOperation(), tr.Err()
			return nil
		})
		require.Error(t, opErr, "iteration %d", i)
		require.Error(t, trErr, "iteration %d", i)
	}
}

// The timeout fires, then the caller cancels, then the function asks for
// its tracker: the tracker reports the timeout, which came first.
func TestRunTrackerMadeAfterTimeoutThenCancellation(t *testing.T) {
	for i := 0; i < 2000; i++ {
		ctx, cancel := context.WithCancelCause(context.Background())
		var opErr error
		_, err := Run(ctx, Limits{Timeout: time.Microsecond}, func(ctx context.Context) error {
			<-ctx.Done() // the timeout
			cancel(errors.New("caller"))
			opErr = FromContext(ctx).TrackOperation()
			return nil
		})
		cancel(nil)
		var le *LimitError
		require.ErrorAs(t, opErr, &le, "iteration %d", i)
		require.ErrorAs(t, err, &le, "iteration %d", i)
	}
}

// An enclosing run's timeout cancels a nested run: the nested run returns
// that *LimitError whether or not its function asked for its tracker, and
// whether or not it measures CPU time.
func TestRunNestedInTimedOutRunReturnsItsLimitError(t *testing.T) {
	for _, mode := range []string{"measured", "no tracker", "tracker"} {
		t.Run(mode, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var inner error
				_, _ = Run(context.Background(), Limits{Timeout: time.Second}, func(ctx context.Context) error {
					var opts []Option
					if mode == "measured" {
						opts = append(opts, WithCPUTime())
					}
					_, inner = Run(ctx, Limits{}, func(ctx context.Context) error {
						if mode == "tracker" {
							_ = FromContext(ctx)
						}
						<-ctx.Done()
						time.Sleep(time.Millisecond) // busy a moment after the cancellation (fake clock)
						return ctx.Err()
					}, opts...)
					return nil
				})
				var le *LimitError
				require.ErrorAs(t, inner, &le)
				assert.Equal(t, Timeout, le.Resource)
			})
		})
	}
}

// A context kept after a run that timed out without asking for its
// tracker yields one ended tracker that says how the run ended.
func TestRunKeptContextAfterTimeoutWithoutTracker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var kept context.Context
		_, err := Run(context.Background(), Limits{Timeout: time.Second}, func(ctx context.Context) error {
			kept = ctx
			<-ctx.Done()
			return nil
		})
		var le *LimitError
		require.ErrorAs(t, err, &le)
		tr := FromContext(kept)
		assert.Same(t, tr, FromContext(kept), "one tracker, also after the run")
		time.Sleep(time.Hour) // long after the run, on the fake clock
		assert.Same(t, le, tr.Err())
		u := tr.Usage()
		assert.Equal(t, time.Second, u.WallTime, "the run's wall time, not the time since")
		assert.Equal(t, int64(1), u.Refusals, "the timeout")
	})
}
