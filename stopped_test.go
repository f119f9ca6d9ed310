package reslimit

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A stopped run refuses every further charge with the reason it was
// stopped, not only TrackOperation; releasing still works.
func TestStoppedRunRefusesEveryCharge(t *testing.T) {
	for _, withAccount := range []bool{false, true} {
		var opts []Option
		if withAccount {
			opts = append(opts, WithAccount(newAcct(t, AccountLimits{MaxTotalOperations: 1 << 40})))
		}
		var stop *LimitError
		_, err := Run(context.Background(), Limits{MaxCPUTime: time.Hour}, func(ctx context.Context) error {
			tr := FromContext(ctx)
			require.NoError(t, tr.TrackOperations(5)) // the run has room in hand now
			g, err := tr.AcquireMemory(10)
			require.NoError(t, err)
			// Stopped by its CPU time, at once.
			require.ErrorAs(t, tr.AddCPUTime(2*time.Hour), &stop)
			require.ErrorIs(t, tr.TrackOperation(), stop)
			require.ErrorIs(t, tr.TrackOperations(3), stop)
			require.ErrorIs(t, tr.TrackCall(), stop)
			require.ErrorIs(t, tr.TrackMemory(1), stop)
			_, err = tr.AcquireMemory(1)
			require.ErrorIs(t, err, stop)
			_, err = tr.TryAcquireSlot()
			require.ErrorIs(t, err, stop)
			require.ErrorIs(t, tr.CheckFileSize(1), stop)
			g.Release()
			require.Equal(t, int64(0), tr.Usage().MemoryBytes)
			require.Equal(t, int64(5), tr.Usage().Operations)
			return nil
		}, opts...)
		require.ErrorIs(t, err, stop)
		require.Equal(t, CPUTime, stop.Resource)
	}
}

// A run whose context is done before it starts runs nothing and charges
// nothing: its function never sees a context TrackOperation would not report.
func TestRunWithDoneContextRunsNothing(t *testing.T) {
	a := newAcct(t, AccountLimits{})
	ctx, cancel := context.WithCancelCause(context.Background())
	cause := errors.New("gone")
	cancel(cause)
	for _, l := range []Limits{Unlimited(), Strict()} {
		ran := false
		_, err := Run(ctx, l, func(context.Context) error { ran = true; return nil }, WithAccount(a))
		require.ErrorIs(t, err, cause)
		require.False(t, ran)
		tool := Limit(func(context.Context, int) (int, error) { ran = true; return 0, nil }, l)
		_, err = tool(ctx, 1)
		require.ErrorIs(t, err, cause)
		require.False(t, ran)
	}
	require.Zero(t, a.Stats().Evaluations)
}
