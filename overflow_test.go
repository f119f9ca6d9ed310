package reslimit

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Issue 11, item 6: counters never wrap, and a request past a limit is a
// *LimitError whatever its size.

func TestAccountTotalsSaturate(t *testing.T) {
	acct, err := NewAccount("big", AccountLimits{})
	require.NoError(t, err)
	var live []*Tracker
	for i := 0; i < 5; i++ {
		tr, err := acct.Begin(Limits{})
		require.NoError(t, err)
		require.NoError(t, tr.TrackOperations(1<<61))
		require.NoError(t, tr.TrackMemory(1<<61))
		require.NoError(t, tr.ReleaseMemory(1<<61))
		require.NoError(t, tr.AddCPUTime(1<<61))
		if i%2 == 0 {
			tr.End()
		} else {
			live = append(live, tr)
		}
		s := acct.Stats()
		assert.Positive(t, s.Operations, "run %d: operations", i)
		assert.Positive(t, s.TotalMemoryBytes, "run %d: total memory", i)
		assert.Positive(t, s.CPUTime, "run %d: CPU time", i)
		assert.GreaterOrEqual(t, s.MemoryBytes, int64(0), "run %d: memory held", i)
		for _, r := range acct.AppendReadings(nil) {
			assert.GreaterOrEqual(t, r.Used, int64(0), "run %d: %s reading", i, r.Resource)
		}
	}
	s := acct.Stats()
	assert.Equal(t, int64(math.MaxInt64), s.Operations, "5 × 2^61 saturates")
	assert.Equal(t, time.Duration(math.MaxInt64), s.CPUTime)
	for _, tr := range live {
		tr.End()
	}
	s = acct.Stats()
	assert.Equal(t, int64(math.MaxInt64), s.Operations)
	assert.Equal(t, int64(math.MaxInt64), s.TotalMemoryBytes)
	assert.Equal(t, time.Duration(math.MaxInt64), s.CPUTime)
	for _, h := range acct.History() {
		assert.Positive(t, h.Operations)
	}
}

func TestAddCPUTimeSaturates(t *testing.T) {
	tr := newT(t, Limits{})
	require.NoError(t, tr.AddCPUTime(math.MaxInt64/2))
	require.NoError(t, tr.AddCPUTime(math.MaxInt64/2))
	require.NoError(t, tr.AddCPUTime(math.MaxInt64/2))
	assert.Equal(t, time.Duration(math.MaxInt64), tr.CPUTime())
	assert.Equal(t, time.Duration(math.MaxInt64), tr.Usage().CPUTime)
	assert.Equal(t, time.Duration(math.MaxInt64), tr.End().CPUTime)

	// Inside a run whose thread CPU time is measured too.
	u, err := Run(t.Context(), Limits{}, func(ctx context.Context) error {
		tr := FromContext(ctx)
		for range 3 {
			if err := tr.AddCPUTime(math.MaxInt64 / 2); err != nil {
				return err
			}
		}
		if d := tr.CPUTime(); d < 0 {
			t.Errorf("CPUTime %v", d)
		}
		return nil
	}, WithCPUTime())
	require.NoError(t, err)
	assert.Equal(t, time.Duration(math.MaxInt64), u.CPUTime)
}

func requireLimitErr(t *testing.T, err error, r Resource, tenant string) {
	t.Helper()
	var le *LimitError
	require.True(t, errors.As(err, &le), "want a *LimitError{%s}, got %v", r, err)
	assert.Equal(t, r, le.Resource)
	assert.Equal(t, tenant, le.Tenant)
	assert.Equal(t, int64(math.MaxInt64), le.Requested)
	assert.False(t, errors.Is(err, ErrInvalidArgument))
}

func TestHugeRequestPastALimitIsALimitError(t *testing.T) {
	const huge = math.MaxInt64
	t.Run("run limits", func(t *testing.T) {
		tr := newT(t, Limits{MaxOperations: 10, MaxMemoryBytes: 10, MaxFileSize: 10, MaxCPUTime: time.Hour})
		requireLimitErr(t, tr.TrackOperations(huge), Operations, "")
		requireLimitErr(t, tr.TrackMemory(huge), Memory, "")
		_, err := tr.AcquireMemory(huge)
		requireLimitErr(t, err, Memory, "")
		requireLimitErr(t, tr.CheckFileSize(huge), FileSize, "")
		u := tr.Usage()
		assert.Zero(t, u.Operations)
		assert.Zero(t, u.MemoryBytes)
		err = tr.AddCPUTime(huge)
		var le *LimitError
		require.True(t, errors.As(err, &le), "%v", err)
		assert.Equal(t, CPUTime, le.Resource)
	})
	t.Run("run limits after use", func(t *testing.T) {
		tr := newT(t, Limits{MaxOperations: 10, MaxMemoryBytes: 10})
		require.NoError(t, tr.TrackOperations(5))
		require.NoError(t, tr.TrackMemory(5))
		requireLimitErr(t, tr.TrackOperations(huge), Operations, "")
		requireLimitErr(t, tr.TrackMemory(huge), Memory, "")
		var le *LimitError
		require.ErrorAs(t, tr.TrackOperations(huge-4), &le)
		assert.Equal(t, Operations, le.Resource)
		assert.Equal(t, int64(5), le.Used)
	})
	t.Run("account limits", func(t *testing.T) {
		acct, err := NewAccount("t", AccountLimits{MaxMemory: 10, MaxTotalOperations: 10, MaxCalls: 10, MaxCPUTime: time.Hour})
		require.NoError(t, err)
		tr, err := acct.Begin(Limits{})
		require.NoError(t, err)
		defer tr.End()
		requireLimitErr(t, tr.TrackOperations(huge), Operations, "t")
		requireLimitErr(t, tr.TrackMemory(huge), Memory, "t")
		_, err = tr.AcquireMemory(huge)
		requireLimitErr(t, err, Memory, "t")
		err = tr.AddCPUTime(huge)
		var le *LimitError
		require.True(t, errors.As(err, &le), "%v", err)
		assert.Equal(t, CPUTime, le.Resource)
		assert.Equal(t, "t", le.Tenant)
		assert.Zero(t, acct.Stats().Operations)
		assert.Zero(t, acct.Stats().MemoryBytes)
	})
	t.Run("account total memory", func(t *testing.T) {
		acct, err := NewAccount("t", AccountLimits{MaxTotalMemory: 10})
		require.NoError(t, err)
		tr, err := acct.Begin(Limits{})
		require.NoError(t, err)
		defer tr.End()
		requireLimitErr(t, tr.TrackMemory(huge), TotalMemory, "t")
		_, err = tr.AcquireMemory(huge)
		requireLimitErr(t, err, TotalMemory, "t")
		assert.Zero(t, acct.Stats().MemoryBytes)
		assert.Zero(t, tr.Usage().MemoryBytes)
	})
	t.Run("no limit at all", func(t *testing.T) {
		tr := newT(t, Limits{})
		err := tr.TrackOperations(huge)
		assert.ErrorIs(t, err, ErrInvalidArgument)
		assert.False(t, errors.Is(err, ErrLimitExceeded))
	})
}
