package reslimit

import (
	"errors"
	"strconv"
)

// Resource names one kind of consumption that reslimit counts and can
// limit. The zero value is not a valid resource.
type Resource uint8

// The resources. Their String names are stable: they appear in errors,
// JSON, metrics labels and logs.
const (
	// Memory is bytes held at once (TrackMemory minus ReleaseMemory).
	Memory Resource = iota + 1
	// TotalMemory is bytes charged with TrackMemory, cumulatively; releases
	// do not lower it.
	TotalMemory
	// CPUTime is CPU time in nanoseconds (real CPU time on Linux; see
	// Usage.CPUTime).
	CPUTime
	// FileSize is the size in bytes of one file or stream.
	FileSize
	// Operations is a count of operations (TrackOperation).
	Operations
	// Concurrency is what is in progress at once: on a run, the slots
	// held (AcquireSlot, Limits.MaxConcurrent); on an account, its runs in
	// progress (AccountLimits.MaxConcurrent). Its name,
	// "concurrent_operations", is kept for metric labels.
	Concurrency
	// Timeout is wall-clock time in nanoseconds.
	Timeout
	// Calls is a count of function calls (TrackCall).
	Calls
	// Evaluations is a count of runs started on an Account.
	Evaluations
	// EvaluationRate is the rate at which an Account starts runs
	// (AccountLimits.EvaluationsPerSecond), a token bucket.
	EvaluationRate
	// OperationRate is the rate at which an Account's runs count
	// operations (AccountLimits.OperationsPerSecond), a token bucket.
	OperationRate
	// Processes is a count of processes (and threads) at once in a child
	// process's tree (reslimitexec.WithMaxProcesses).
	Processes

	numResources = int(Processes) + 1
)

var resourceNames = [numResources]string{
	Memory:         "memory",
	TotalMemory:    "total_memory",
	CPUTime:        "cpu_time",
	FileSize:       "file_size",
	Operations:     "operations",
	Concurrency:    "concurrent_operations",
	Timeout:        "timeout",
	Calls:          "function_calls",
	Evaluations:    "evaluations",
	EvaluationRate: "evaluation_rate",
	OperationRate:  "operation_rate",
	Processes:      "processes",
}

// Resources lists every valid Resource in a stable order.
func Resources() []Resource {
	out := make([]Resource, 0, numResources-1)
	for r := Memory; int(r) < numResources; r++ {
		out = append(out, r)
	}
	return out
}

// valid reports whether r is one of the defined resources.
func (r Resource) valid() bool { return r >= Memory && int(r) < numResources }

// String returns the resource's stable snake_case name, such as "cpu_time",
// or "resource(N)" for an invalid value.
func (r Resource) String() string {
	if r.valid() {
		return resourceNames[r]
	}
	return "resource(" + strconv.Itoa(int(r)) + ")"
}

// MarshalText implements encoding.TextMarshaler with the String name. It
// fails for an invalid resource.
func (r Resource) MarshalText() ([]byte, error) {
	if !r.valid() {
		return nil, errors.New("reslimit: cannot marshal invalid " + r.String())
	}
	return []byte(resourceNames[r]), nil
}

// UnmarshalText implements encoding.TextUnmarshaler, accepting the names
// that String returns (it is how a name is parsed: r.UnmarshalText([]byte(s))).
// An unknown name is an error and leaves r unchanged.
func (r *Resource) UnmarshalText(b []byte) error {
	for p := Memory; int(p) < numResources; p++ {
		if resourceNames[p] == string(b) {
			*r = p
			return nil
		}
	}
	return errors.New("reslimit: unknown resource " + strconv.Quote(string(b)))
}

// isRate reports whether r is a rate (EvaluationRate, OperationRate).
func (r Resource) isRate() bool { return r == EvaluationRate || r == OperationRate }

// isTime reports whether the resource's values are nanoseconds.
func (r Resource) isTime() bool { return r == CPUTime || r == Timeout }
