package reslimit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestResourceNames(t *testing.T) {
	want := map[Resource]string{
		Memory: "memory", TotalMemory: "total_memory", CPUTime: "cpu_time",
		FileSize: "file_size", Operations: "operations", Concurrency: "concurrent_operations",
		Timeout: "timeout", Calls: "function_calls", Evaluations: "evaluations",
		EvaluationRate: "evaluation_rate", OperationRate: "operation_rate", Processes: "processes",
	}
	require.Len(t, Resources(), len(want))
	for r, name := range want {
		assert.Equal(t, name, r.String())
		b, err := r.MarshalText()
		require.NoError(t, err)
		assert.Equal(t, name, string(b))
		var p Resource
		require.NoError(t, p.UnmarshalText([]byte(name)))
		assert.Equal(t, r, p)
	}
	assert.Equal(t, "resource(0)", Resource(0).String())
	_, err := Resource(0).MarshalText()
	assert.Error(t, err)
	var bogus Resource
	assert.Error(t, bogus.UnmarshalText([]byte("bogus")))
	assert.Equal(t, Resource(0), bogus, "unchanged")

	b, err := json.Marshal(map[Resource]int{Operations: 1})
	require.NoError(t, err)
	assert.JSONEq(t, `{"operations":1}`, string(b))
	var back map[Resource]int
	require.NoError(t, json.Unmarshal(b, &back))
	assert.Equal(t, 1, back[Operations])
}

func TestLimitErrorMatchesAndFormats(t *testing.T) {
	le := &LimitError{Resource: Operations, Limit: 10, Used: 10, Requested: 1}
	wrapped := fmt.Errorf("tool failed: %w", le)
	assert.ErrorIs(t, wrapped, ErrLimitExceeded)
	var got *LimitError
	require.ErrorAs(t, wrapped, &got)
	assert.Same(t, le, got)
	assert.Equal(t, "reslimit: operations limit 10 exceeded: used 10, requested 1", le.Error())
	assert.NotErrorIs(t, le, context.DeadlineExceeded)

	to := &LimitError{Resource: Timeout, Limit: int64(time.Second), Used: int64(1500 * time.Millisecond)}
	assert.Equal(t, "reslimit: timeout limit 1s exceeded: used 1.5s", to.Error())
	assert.ErrorIs(t, to, context.DeadlineExceeded)

	ten := &LimitError{Resource: Evaluations, Limit: 3, Used: 3, Requested: 1, Tenant: "acme"}
	assert.Equal(t, `reslimit: tenant "acme" evaluations limit 3 exceeded: used 3, requested 1`, ten.Error())
	assert.False(t, errors.Is(ErrClosed, ErrLimitExceeded))
}

func TestLimitsValidateAndPresets(t *testing.T) {
	for _, l := range []Limits{Default(), Strict(), Relaxed(), Unlimited()} {
		assert.NoError(t, l.Validate())
	}
	assert.Equal(t, Limits{10 << 20, 5 * time.Second, 5 << 20, 10_000, 10, 10 * time.Second}, Strict())
	assert.Equal(t, Limits{100 << 20, 30 * time.Second, 50 << 20, 1_000_000, 100, 60 * time.Second}, Default())
	assert.Equal(t, Limits{1 << 30, 5 * time.Minute, 500 << 20, 100_000_000, 1000, 10 * time.Minute}, Relaxed())
	assert.Equal(t, Limits{}, Unlimited())

	err := Limits{MaxOperations: -1, Timeout: -time.Second}.Validate()
	require.ErrorIs(t, err, ErrInvalidLimits)
	assert.Contains(t, err.Error(), "MaxOperations")
	assert.Contains(t, err.Error(), "Timeout")

	_, err = NewTracker(Limits{MaxMemoryBytes: -5})
	assert.ErrorIs(t, err, ErrInvalidLimits)
}
