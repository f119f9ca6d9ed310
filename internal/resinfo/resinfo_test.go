package resinfo_test

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/internal/resinfo"
)

func TestUnitAndBaseValue(t *testing.T) {
	want := map[reslimit.Resource]string{
		reslimit.Memory: "bytes", reslimit.TotalMemory: "bytes", reslimit.FileSize: "bytes",
		reslimit.CPUTime: "seconds", reslimit.Timeout: "seconds",
		reslimit.Operations: "count", reslimit.Concurrency: "count", reslimit.Calls: "count",
		reslimit.Evaluations: "count", reslimit.EvaluationRate: "count", reslimit.OperationRate: "count",
		reslimit.Processes: "count",
	}
	for _, r := range reslimit.Resources() {
		assert.Equal(t, want[r], resinfo.Unit(r), "%v", r)
	}
	assert.Equal(t, 1.5, resinfo.BaseValue(reslimit.CPUTime, 1_500_000_000))
	assert.Equal(t, 0.25, resinfo.BaseValue(reslimit.Timeout, 250_000_000))
	assert.Equal(t, float64(1<<20), resinfo.BaseValue(reslimit.Memory, 1<<20))
	assert.Equal(t, float64(7), resinfo.BaseValue(reslimit.Operations, 7))
}

func TestKinds(t *testing.T) {
	for _, r := range reslimit.Resources() {
		rate := r == reslimit.EvaluationRate || r == reslimit.OperationRate
		held := r == reslimit.Memory || r == reslimit.Concurrency
		assert.Equal(t, rate, resinfo.Rate(r), "Rate(%v)", r)
		assert.Equal(t, held, resinfo.Held(r), "Held(%v)", r)
	}
}

func TestUsed(t *testing.T) {
	s := reslimit.AccountStats{MemoryBytes: 1, TotalMemoryBytes: 2, CPUTime: 3, Operations: 4,
		Calls: 5, Evaluations: 6, Running: 7}
	want := map[reslimit.Resource]int64{
		reslimit.Memory: 1, reslimit.TotalMemory: 2, reslimit.CPUTime: 3, reslimit.Operations: 4,
		reslimit.Calls: 5, reslimit.Evaluations: 6, reslimit.Concurrency: 7,
	}
	for _, r := range reslimit.Resources() {
		assert.Equal(t, want[r], resinfo.Used(&s, r), "%v", r)
	}
}
