//go:build linux

package threadcpu

import (
	"time"

	"golang.org/x/sys/unix"
)

const supported = true

// Linux encodes a thread's CPU clock as ((^tid) << 3) | CPUCLOCK_PERTHREAD
// (4) | CPUCLOCK_SCHED (2); this is what pthread_getcpuclockid returns.
const perThreadSched = 4 | 2

// Self returns the clock of the calling goroutine's current OS thread. The
// caller must have locked the goroutine to its thread (runtime.LockOSThread)
// for the clock to mean anything.
func Self() (Clock, bool) {
	tid := unix.Gettid()
	return Clock{id: int32((^tid)<<3 | perThreadSched), tid: tid}, true
}

// Read returns the thread's CPU time so far. It fails once the thread has
// exited.
func (c Clock) Read() (time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(c.id, &ts); err != nil {
		return 0, err
	}
	return time.Duration(ts.Nano()), nil
}

// Current returns the CPU time of the calling thread. It is a system call:
// the vDSO serves the wall clocks, not the thread CPU clocks.
func Current() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// Tid returns the id of the calling goroutine's current OS thread.
func Tid() int { return unix.Gettid() }
