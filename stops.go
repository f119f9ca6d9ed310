package reslimit

import (
	"errors"
	"sync"
	"sync/atomic"
)

// Run stops: runs that ended stopped by one of their own per-run Limits,
// counted per resource on the account they are billed to
// (AccountStats.RunStops), as opposed to the account's own refusals
// (AccountStats.Refusals).
//
// A run counts as stopped when it ends (End, EndWithError, Run, a call of
// a function wrapped by Limit) with a *LimitError of a per-run limit (one
// without a Tenant): the one that stopped it (its timeout, its CPU time)
// or the one its function returned (its memory, operations or file size
// refused, a child process or guest stopped by what the run had left).
// A stop passed up from a nested run to the runs it is nested in (a tool's
// error that the request returns) is one stop: the runs of a tree (a run
// and the runs nested in it) remember the stops they counted, the latest
// stopSetSize of them, and count each *LimitError once.

// stopSetSize is how many of the latest stops a tree of nested runs
// remembers, to count each once.
const stopSetSize = 8

// stopSet is the latest stops a tree of nested runs counted, kept on its
// root run (Tracker.stops). mu is a leaf lock.
type stopSet struct {
	mu   sync.Mutex
	errs [stopSetSize]*LimitError
	next int
}

// add records le and reports whether it was not recorded already.
func (s *stopSet) add(le *LimitError) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.errs {
		if e == le {
			return false
		}
	}
	s.errs[s.next] = le
	s.next = (s.next + 1) % len(s.errs)
	return true
}

// runStop returns the *LimitError of a per-run limit that err is or wraps,
// or nil for any other error (a tenant's refusal included).
func runStop(err error) *LimitError {
	var le *LimitError
	if err == nil || !errors.As(err, &le) || le == nil || le.Tenant != "" || !le.Resource.valid() {
		return nil
	}
	return le
}

// billedAccount returns the account the run is billed to: its own, or
// else that of the nearest run it is nested in that has one; nil if none.
func (t *Tracker) billedAccount() *Account {
	for r := t; r != nil; r = r.parent {
		if r.acct != nil {
			return r.acct
		}
	}
	return nil
}

// noteStop counts the end of t, whose run ended with runErr, as a run stop
// of the account it is billed to, if runErr is a per-run limit's
// *LimitError that no run of t's tree counted yet. Called once per run, by
// finish.
func (t *Tracker) noteStop(runErr error) {
	le := runStop(runErr)
	if le == nil {
		return
	}
	a := t.billedAccount()
	if a == nil {
		return
	}
	root := t
	for root.parent != nil {
		root = root.parent
	}
	s := root.stops.Load()
	if s == nil {
		s = new(stopSet)
		if !root.stops.CompareAndSwap(nil, s) {
			s = root.stops.Load()
		}
	}
	if s.add(le) {
		a.stops[le.Resource].Add(1)
	}
}

// counts returns the non-zero counts of c by resource, or nil when all
// are zero.
func counts(c *[numResources]atomic.Int64) map[Resource]int64 {
	var out map[Resource]int64
	for r := range c {
		if n := c[r].Load(); n > 0 {
			if out == nil {
				out = make(map[Resource]int64)
			}
			out[Resource(r)] = n
		}
	}
	return out
}
