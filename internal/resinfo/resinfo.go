// Package resinfo says how the exporters of this repository (reslimithttp's
// JSON, contrib/prometheus, contrib/grpc) write a reslimit.Resource: the unit
// of its values, a value in that unit, what kind of quantity it is, and an
// account's figure for it.
// It is internal so that reslimit's own API stays small; code outside the
// repository that needs the same knows it from the resources' docs.
package resinfo

import "github.com/reslimit/reslimit"

// Unit returns the unit in which exporters write r's values: "bytes",
// "seconds" or "count". Inside reslimit, CPUTime and Timeout are
// nanoseconds; see BaseValue.
func Unit(r reslimit.Resource) string {
	switch r {
	case reslimit.Memory, reslimit.TotalMemory, reslimit.FileSize:
		return "bytes"
	case reslimit.CPUTime, reslimit.Timeout:
		return "seconds"
	}
	return "count"
}

// BaseValue converts v, a value of r in reslimit's unit, to r's Unit:
// nanoseconds become seconds, the rest is unchanged.
func BaseValue(r reslimit.Resource, v int64) float64 {
	if r == reslimit.CPUTime || r == reslimit.Timeout {
		return float64(v) / 1e9
	}
	return float64(v)
}

// Rate reports whether r is a rate (EvaluationRate, OperationRate): a
// token bucket that refills with time, whose refusals say when a retry
// can succeed (reslimit.LimitError.RetryAfter).
func Rate(r reslimit.Resource) bool {
	return r == reslimit.EvaluationRate || r == reslimit.OperationRate
}

// Held reports whether r counts what is held at once (Memory, the
// Concurrency of slots or runs in progress), which goes down again when
// released, rather than what accumulates (TotalMemory, CPUTime,
// Operations, Calls, Evaluations), bounds one item (FileSize, the Timeout
// of one run) or a rate (EvaluationRate, OperationRate).
func Held(r reslimit.Resource) bool {
	return r == reslimit.Memory || r == reslimit.Concurrency
}

// Used returns the figure of s for resource r, in reslimit's unit:
// MemoryBytes for Memory, TotalMemoryBytes for TotalMemory, CPUTime for
// CPUTime, Operations, Calls for Calls, Evaluations, and Running for
// Concurrency; 0 for a resource an account does not count.
func Used(s *reslimit.AccountStats, r reslimit.Resource) int64 {
	switch r {
	case reslimit.Memory:
		return s.MemoryBytes
	case reslimit.TotalMemory:
		return s.TotalMemoryBytes
	case reslimit.CPUTime:
		return int64(s.CPUTime)
	case reslimit.Operations:
		return s.Operations
	case reslimit.Calls:
		return s.Calls
	case reslimit.Evaluations:
		return s.Evaluations
	case reslimit.Concurrency:
		return s.Running
	}
	return 0
}
