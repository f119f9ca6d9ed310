//go:build !linux

package threadcpu

import (
	"errors"
	"time"
)

const supported = false

// Self reports that per-thread CPU clocks are not available here.
func Self() (Clock, bool) { return Clock{}, false }

// Read always fails on this platform.
func (c Clock) Read() (time.Duration, error) {
	return 0, errors.New("threadcpu: not supported on this platform")
}

// Current returns 0 on this platform.
func Current() time.Duration { return 0 }

// Tid returns 0: thread ids are not read on this platform.
func Tid() int { return 0 }
