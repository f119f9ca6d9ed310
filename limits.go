package reslimit

import (
	"errors"
	"fmt"
	"time"
)

// Limits bounds one run (or one long-lived component) tracked by a Tracker.
// A field of 0 means "no limit"; a negative field is invalid.
//
// The edge rule holds for every field: usage equal to the limit is allowed,
// a request that would take usage above it is refused.
//
// Limits is a plain value, safe to copy and to share read-only.
type Limits struct {
	// MaxMemoryBytes bounds the bytes held at once (TrackMemory,
	// AcquireMemory), in bytes.
	MaxMemoryBytes int64
	// MaxCPUTime bounds the CPU time the run uses. See Usage.CPUTime for
	// what is measured.
	MaxCPUTime time.Duration
	// MaxFileSize bounds the size in bytes of one file (CheckFileSize) or
	// one stream (LimitReader, LimitWriter).
	MaxFileSize int64
	// MaxOperations bounds the operations counted (TrackOperation).
	MaxOperations int64
	// MaxConcurrent bounds the slots held at once (AcquireSlot); on a
	// function wrapped by Limit, the calls in progress at once.
	MaxConcurrent int64
	// Timeout bounds the wall time of a run started by Run or Limit, or the
	// life of a Tracker before it is stopped.
	Timeout time.Duration
}

// Validate returns nil for valid limits, or an error wrapping
// ErrInvalidLimits that names every negative field.
func (l Limits) Validate() error {
	var errs []error
	check := func(name string, v int64) {
		if v < 0 {
			errs = append(errs, fmt.Errorf("%w: %s is negative (%d)", ErrInvalidLimits, name, v))
		}
	}
	check("MaxMemoryBytes", l.MaxMemoryBytes)
	check("MaxCPUTime", int64(l.MaxCPUTime))
	check("MaxFileSize", l.MaxFileSize)
	check("MaxOperations", l.MaxOperations)
	check("MaxConcurrent", l.MaxConcurrent)
	check("Timeout", int64(l.Timeout))
	return errors.Join(errs...)
}

// limit returns the per-run limit for r in the resource's unit (0 = none).
func (l Limits) limit(r Resource) int64 {
	switch r {
	case Memory:
		return l.MaxMemoryBytes
	case CPUTime:
		return int64(l.MaxCPUTime)
	case FileSize:
		return l.MaxFileSize
	case Operations:
		return l.MaxOperations
	case Concurrency:
		return l.MaxConcurrent
	case Timeout:
		return int64(l.Timeout)
	}
	return 0
}
