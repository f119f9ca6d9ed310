package reslimit

import (
	"math"
	"sync/atomic"
	"time"
)

// Counters never wrap: sums that could pass the range of an int64 (an
// account's totals over many runs, CPU time added with AddCPUTime) stop at
// math.MaxInt64 instead.

// satAdd returns a+b, or the bound of int64 it would pass.
func satAdd(a, b int64) int64 {
	s := a + b
	if (s > a) != (b > 0) {
		if b > 0 {
			return math.MaxInt64
		}
		return math.MinInt64
	}
	return s
}

// satAddDur is satAdd for durations.
func satAddDur(a, b time.Duration) time.Duration {
	return time.Duration(satAdd(int64(a), int64(b)))
}

// satAddAtomic adds d (not negative) to *p, stopping at math.MaxInt64.
func satAddAtomic(p *atomic.Int64, d int64) {
	for {
		v := p.Load()
		if p.CompareAndSwap(v, satAdd(v, d)) {
			return
		}
	}
}
