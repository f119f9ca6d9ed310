package reslimit

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRemainingIsTheTighterOfRunAccountAndParent(t *testing.T) {
	var nilT *Tracker
	v, ok := nilT.Remaining(Memory)
	assert.False(t, ok)
	assert.Zero(t, v)

	a := newAcct(t, AccountLimits{MaxMemory: 500, MaxTotalOperations: 100, MaxCPUTime: time.Second})
	_, err := Run(context.Background(), Limits{MaxMemoryBytes: 1000, MaxOperations: 1000, MaxFileSize: 50, Timeout: time.Hour}, func(ctx context.Context) error {
		parent := FromContext(ctx)
		require.NoError(t, parent.TrackMemory(100))
		require.NoError(t, parent.TrackOperations(30))
		v, ok := parent.Remaining(Memory)
		assert.True(t, ok)
		assert.Equal(t, int64(400), v, "the account's 500 less 100 held")
		v, _ = parent.Remaining(Operations)
		assert.Equal(t, int64(70), v)
		v, _ = parent.Remaining(FileSize)
		assert.Equal(t, int64(50), v)
		v, _ = parent.Remaining(CPUTime)
		assert.LessOrEqual(t, v, int64(time.Second))
		_, ok = parent.Remaining(Calls)
		assert.False(t, ok)
		_, err := Run(ctx, Limits{MaxMemoryBytes: 200, MaxFileSize: 80}, func(ctx context.Context) error {
			child := FromContext(ctx)
			require.NoError(t, child.TrackMemory(50))
			v, _ := child.Remaining(Memory)
			assert.Equal(t, int64(150), v, "the child's own 200 less 50")
			v, _ = child.Remaining(FileSize)
			assert.Equal(t, int64(50), v, "the parent's 50")
			v, ok = child.Remaining(Timeout)
			assert.True(t, ok)
			assert.Greater(t, v, int64(time.Minute))
			return nil
		})
		return err
	}, WithAccount(a))
	require.NoError(t, err)
}
