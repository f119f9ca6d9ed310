package reslimit

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/reslimit/reslimit/store"
)

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
	ErrInvalidArgument = store.ErrInvalidArgument
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
//
// For a rate (EvaluationRate, OperationRate), Limit is the bucket's size
// (the burst), Used the part of it in use (the burst minus the tokens
// left), and RetryAfter how long until the request could be granted
// (0 when it never can: more than the burst was requested).
type LimitError struct {
	Resource  Resource
	Limit     int64
	Used      int64
	Requested int64
	Tenant    string
	// RetryAfter is, for a rate, the wait after which the same request
	// can succeed (if nothing else takes the tokens first); 0 otherwise.
	RetryAfter time.Duration
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
	if e.RetryAfter > 0 {
		b = append(b, ", retry after "...)
		b = append(b, e.RetryAfter.String()...)
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
