// Package threadcpu reads the CPU clock of an OS thread, so that reslimit
// can measure the real CPU time of work pinned to that thread.
package threadcpu

// Clock identifies the CPU clock of one OS thread. It can be read from any
// goroutine of the process while the thread lives.
type Clock struct {
	id  int32
	tid int
}

// Supported reports whether this platform measures per-thread CPU time.
// Where it does not, Self returns ok == false and callers fall back.
const Supported = supported
