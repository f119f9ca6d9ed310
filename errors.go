package reslimit

import (
	"context"
	"errors"
	"strconv"
	"time"
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
	// CPUTime is CPU time in nanoseconds (real CPU time where the platform
	// allows; see Tracker.CPUClock).
	CPUTime
	// FileSize is the size in bytes of one file or stream.
	FileSize
	// Operations is a count of operations (TrackOperation, Step).
	Operations
	// Concurrency is the number of operations or runs in progress at once.
	Concurrency
	// Timeout is wall-clock time in nanoseconds.
	Timeout
	// Calls is a count of function calls (TrackCall).
	Calls
	// Evaluations is a count of runs started on an Account.
	Evaluations

	numResources = int(Evaluations) + 1
)

var resourceNames = [numResources]string{
	Memory:      "memory",
	TotalMemory: "total_memory",
	CPUTime:     "cpu_time",
	FileSize:    "file_size",
	Operations:  "operations",
	Concurrency: "concurrent_operations",
	Timeout:     "timeout",
	Calls:       "function_calls",
	Evaluations: "evaluations",
}

// Resources lists every valid Resource in a stable order.
func Resources() []Resource {
	out := make([]Resource, 0, numResources-1)
	for r := Memory; int(r) < numResources; r++ {
		out = append(out, r)
	}
	return out
}

// Valid reports whether r is one of the defined resources.
func (r Resource) Valid() bool { return r >= Memory && int(r) < numResources }

// String returns the resource's stable snake_case name, such as "cpu_time",
// or "resource(N)" for an invalid value.
func (r Resource) String() string {
	if r.Valid() {
		return resourceNames[r]
	}
	return "resource(" + strconv.Itoa(int(r)) + ")"
}

// MarshalText implements encoding.TextMarshaler with the String name. It
// fails for an invalid resource.
func (r Resource) MarshalText() ([]byte, error) {
	if !r.Valid() {
		return nil, errors.New("reslimit: cannot marshal invalid " + r.String())
	}
	return []byte(resourceNames[r]), nil
}

// UnmarshalText implements encoding.TextUnmarshaler, accepting the names
// that String returns.
func (r *Resource) UnmarshalText(b []byte) error {
	p, err := ParseResource(string(b))
	if err != nil {
		return err
	}
	*r = p
	return nil
}

// ParseResource returns the Resource whose String name is s.
func ParseResource(s string) (Resource, error) {
	for r := Memory; int(r) < numResources; r++ {
		if resourceNames[r] == s {
			return r, nil
		}
	}
	return 0, errors.New("reslimit: unknown resource " + strconv.Quote(s))
}

// isTime reports whether the resource's values are nanoseconds.
func (r Resource) isTime() bool { return r == CPUTime || r == Timeout }

var (
	// ErrLimitExceeded is matched (with errors.Is) by every refusal: every
	// *LimitError, and every error that wraps one.
	ErrLimitExceeded = errors.New("reslimit: limit exceeded")
	// ErrInvalidLimits is wrapped by errors about negative or otherwise
	// invalid limits.
	ErrInvalidLimits = errors.New("reslimit: invalid limits")
	// ErrClosed is returned when a Tracker is used after End, or a Monitor
	// or Ledger after it was stopped or closed.
	ErrClosed = errors.New("reslimit: use after close")
	// ErrInvalidArgument is wrapped by errors about bad arguments other than
	// limits: negative sizes, nil functions, empty names, over-release.
	ErrInvalidArgument = errors.New("reslimit: invalid argument")
	// ErrPanicked is why a run whose function (or a goroutine it started
	// with Tracker.Go) panicked was stopped: Tracker.Err and the run's
	// HistoryEntry.Err match it with errors.Is. The panic itself is
	// re-raised, never swallowed.
	ErrPanicked = errors.New("reslimit: run panicked")
)

// LimitError reports a request that was refused because it would take a
// resource above its limit, or a run stopped because it used a resource up
// (CPU time, timeout).
//
// Values are in the resource's unit: bytes, counts, or nanoseconds for
// CPUTime and Timeout. Used is the usage before the refused request;
// Requested is what was asked for (0 for a run that was stopped). Tenant is
// empty for a per-run limit and the Account's name for a cumulative
// (tenant-level) one.
type LimitError struct {
	Resource  Resource
	Limit     int64
	Used      int64
	Requested int64
	Tenant    string
}

func (e *LimitError) fmt(v int64) string {
	if e.Resource.isTime() {
		return time.Duration(v).String()
	}
	return strconv.FormatInt(v, 10)
}

// Error describes the refusal, for example
// "reslimit: operations limit 10 exceeded: used 10, requested 1".
func (e *LimitError) Error() string {
	b := make([]byte, 0, 96)
	b = append(b, "reslimit: "...)
	if e.Tenant != "" {
		b = append(b, "tenant "...)
		b = strconv.AppendQuote(b, e.Tenant)
		b = append(b, ' ')
	}
	b = append(b, e.Resource.String()...)
	b = append(b, " limit "...)
	b = append(b, e.fmt(e.Limit)...)
	b = append(b, " exceeded: used "...)
	b = append(b, e.fmt(e.Used)...)
	if e.Requested != 0 {
		b = append(b, ", requested "...)
		b = append(b, e.fmt(e.Requested)...)
	}
	return string(b)
}

// Is reports true for ErrLimitExceeded, and for a Timeout error also for
// context.DeadlineExceeded, so code that checks for deadlines keeps working.
func (e *LimitError) Is(target error) bool {
	if target == ErrLimitExceeded {
		return true
	}
	return e.Resource == Timeout && target == context.DeadlineExceeded
}
