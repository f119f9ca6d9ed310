package reslimit

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// runRecover calls f on a new goroutine and returns what it panicked with
// (nil if it returned), failing the test if f does not return within a
// generous bound instead of hanging the test binary.
func runRecover(t *testing.T, f func()) (v any) {
	t.Helper()
	done := make(chan any, 1)
	go func() {
		defer func() { done <- recover() }()
		f()
	}()
	select {
	case v = <-done:
		return v
	case <-time.After(30 * time.Second):
		t.Fatal("the run hung")
		return nil
	}
}

// A panic in fn cancels the run's context, waits for the Go helpers that
// wait on it, and is re-raised, whatever measures the run: nothing, a
// Timeout, CPU time, an account. The helper may have taken ctx.Done()
// before it asked for its tracker.
func TestRunPanicStopsGoHelpersAndIsReRaised(t *testing.T) {
	cases := map[string]struct {
		l    Limits
		opts []Option
	}{
		"nothing measured": {l: Unlimited()},
		"timeout":          {l: Limits{Timeout: time.Hour}},
		"cpu time":         {l: Limits{MaxCPUTime: time.Hour}},
		"account":          {l: Unlimited(), opts: []Option{WithAccount(newAcct(t, AccountLimits{}))}},
	}
	for name, tc := range cases {
		for _, doneFirst := range []bool{false, true} {
			helperSaw := make(chan error, 1)
			v := runRecover(t, func() {
				_, _ = Run(context.Background(), tc.l, func(ctx context.Context) error {
					var done <-chan struct{}
					if doneFirst {
						done = ctx.Done()
					}
					tr := FromContext(ctx)
					tr.Go(func() {
						if done == nil {
							done = ctx.Done()
						}
						<-done
						helperSaw <- context.Cause(ctx)
					})
					panic("boom")
				}, tc.opts...)
			})
			require.Equal(t, "boom", v, "%s (Done first %v)", name, doneFirst)
			select {
			case err := <-helperSaw:
				assert.ErrorIs(t, err, ErrPanicked, name)
			default:
				t.Fatalf("%s: Run returned before its Go helper", name)
			}
		}
	}
}

// A panic in a Go helper stops the run: fn, waiting on its context, sees
// the cancellation, and Run re-raises the helper's panic.
func TestRunGoHelperPanicStopsRunAndIsReRaised(t *testing.T) {
	for _, l := range []Limits{Unlimited(), {MaxCPUTime: time.Hour}} {
		v := runRecover(t, func() {
			_, _ = Run(context.Background(), l, func(ctx context.Context) error {
				FromContext(ctx).Go(func() { panic("helper") })
				<-ctx.Done()
				require.ErrorIs(t, FromContext(ctx).Err(), ErrPanicked)
				return ctx.Err()
			})
		})
		require.Equal(t, "helper", v)
	}
}

// On a tracker outside Run, a Go helper's panic stops the tracker (Err,
// TrackOperation) and End re-raises it once; it is never swallowed.
func TestTrackerGoPanicReRaisedByEnd(t *testing.T) {
	tr := newT(t, Unlimited())
	tr.Go(func() { panic("lost?") })
	tr.goWG.Wait()
	require.ErrorIs(t, tr.Err(), ErrPanicked)
	require.ErrorIs(t, tr.TrackOperation(), ErrPanicked)
	v := runRecover(t, func() { tr.End() })
	require.Equal(t, "lost?", v)
	require.Nil(t, runRecover(t, func() { tr.End() }), "a second End re-raises nothing")

	a := newAcct(t, AccountLimits{})
	tr2, err := a.Begin(Unlimited())
	require.NoError(t, err)
	tr2.Go(func() { panic(errors.New("x")) })
	tr2.goWG.Wait()
	v = runRecover(t, func() { tr2.EndWithError(nil) })
	require.EqualError(t, v.(error), "x")
	h := a.History()
	require.Len(t, h, 1)
	require.ErrorIs(t, h[0].Err, ErrPanicked)
}
