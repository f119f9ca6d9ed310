// Package reslimitstarlark binds reslimit's limits to Starlark scripts run
// by go.starlark.net, with no cooperation from the script:
//
//   - Operations, exactly: the interpreter's execution steps
//     (starlark.Thread.ExecutionSteps) are charged to the run of the
//     thread's context as operations, in batches of at most Batch steps
//     (DefaultBatch unless WithBatch says otherwise). Each batch is sized
//     to what the run and its tenant may still use
//     (Tracker.Remaining(reslimit.Operations)), so a script alone in its
//     run is stopped after exactly MaxOperations steps (or exactly what
//     the tenant's MaxTotalOperations leaves it), with every step it ran
//     charged. When something else charges the same run or tenant while
//     the script runs, a batch it was granted may no longer fit when it is
//     charged: the script is then stopped at that batch's end, at most
//     Batch steps past the limit, and those steps are not charged (no
//     counter ever passes its limit).
//   - CPU time, timeout and cancellation: the script runs on the run's
//     goroutine, so its CPU time is the run's; the run's cancellation (its
//     CPU time, its timeout, its caller) cancels the thread
//     (starlark.Thread.Cancel), which stops at its next step (a built-in
//     function running a long operation, like sorting a huge list, is
//     stopped when it returns).
//   - The script's error when stopped is an *Error whose Err is the run's
//     *reslimit.LimitError (or the cancellation's cause): errors.As finds
//     it, and the *starlark.EvalError with the script's backtrace.
//
// Not bound: memory. Starlark offers no allocation hook; a script's
// allocations are bounded only indirectly, by its steps (a list appended
// to in a loop grows by one element per few steps) — a single step such as
// [0] * n or "x" * n may allocate up to about 1 GiB elements, the
// interpreter's own cap. Bound the process as a whole (GOMEMLIMIT,
// a cgroup) where scripts are untrusted.
//
// Outside a run (reslimit.FromContext(ctx) == nil) nothing is charged; the
// thread is still cancelled when ctx is done.
//
// # Options
//
// Invalid values are errors at construction: Thread (and so ExecFile and
// Call) returns an error wrapping reslimit.ErrInvalidArgument for a zero
// WithBatch, a nil WithPrint or a nil context, and runs nothing, rather
// than ignoring the value. A nil Option is skipped.
package reslimitstarlark

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/reslimit/reslimit"
	"go.starlark.net/starlark"
	"go.starlark.net/syntax"
)

// DefaultBatch is the number of steps charged at once by default: at about
// 20-50 ns a step, a batch is some tens of microseconds of work.
const DefaultBatch = 1000

// Option configures Thread.
type Option func(*config)

type config struct {
	batch uint64
	name  string
	print func(*starlark.Thread, string)
	err   error // the first invalid option
}

func (c *config) setErr(err error) {
	if c.err == nil {
		c.err = err
	}
}

// WithBatch sets the number of steps charged at once (at most n steps run
// past a limit when the script shares its run or tenant with concurrent
// work). 0 is invalid.
func WithBatch(n uint64) Option {
	return func(c *config) {
		if n == 0 {
			c.setErr(fmt.Errorf("%w: reslimitstarlark: WithBatch(0)", reslimit.ErrInvalidArgument))
			return
		}
		c.batch = n
	}
}

// WithName sets the thread's name.
func WithName(name string) Option { return func(c *config) { c.name = name } }

// WithPrint sets the thread's print function (by default print writes to
// standard error, as in go.starlark.net). A nil print is invalid.
func WithPrint(print func(thread *starlark.Thread, msg string)) Option {
	return func(c *config) {
		if print == nil {
			c.setErr(fmt.Errorf("%w: reslimitstarlark: WithPrint(nil)", reslimit.ErrInvalidArgument))
			return
		}
		c.print = print
	}
}

// localKey is the thread-local key of a thread's *state.
const localKey = "reslimitstarlark.state"

// state is a thread's accounting.
type state struct {
	ctx     context.Context
	tr      *reslimit.Tracker
	batch   uint64
	charged uint64 // steps charged to tr
	reason  atomic.Pointer[error]

	stopWatch func() bool   // stops the context.AfterFunc
	watchDone chan struct{} // closed when the AfterFunc has run
	finished  bool
}

// Thread returns a new thread whose steps are charged to the run of ctx
// (reslimit.FromContext(ctx)) as operations, in batches, and that is
// cancelled when ctx is done. Call Finish when done with it: it charges
// the last partial batch and stops watching ctx. (ExecFile and Call do
// both.) The thread is one goroutine's, like any starlark.Thread.
//
// A nil ctx or an invalid option value is reported as an error wrapping
// reslimit.ErrInvalidArgument, and no thread is returned.
func Thread(ctx context.Context, opts ...Option) (*starlark.Thread, error) {
	if ctx == nil {
		return nil, fmt.Errorf("%w: reslimitstarlark: nil context", reslimit.ErrInvalidArgument)
	}
	c := config{batch: DefaultBatch}
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	if c.err != nil {
		return nil, c.err
	}
	thread := &starlark.Thread{Name: c.name, Print: c.print}
	st := &state{ctx: ctx, tr: reslimit.FromContext(ctx), batch: c.batch}
	thread.SetLocal(localKey, st)
	if st.tr != nil {
		thread.OnMaxSteps = st.onMaxSteps
		thread.SetMaxExecutionSteps(st.grant(1))
	}
	if ctx.Done() != nil {
		st.watchDone = make(chan struct{})
		st.stopWatch = context.AfterFunc(ctx, func() {
			defer close(st.watchDone)
			st.cancel(thread, stopReason(ctx))
		})
	}
	return thread, nil
}

func stateOf(thread *starlark.Thread) *state {
	st, _ := thread.Local(localKey).(*state)
	return st
}

// grant returns the maxSteps that lets steps s.. run up to the next batch
// boundary: at most a batch, and no more than the run may still use.
func (st *state) grant(s uint64) uint64 {
	g := st.batch
	if left, ok := st.tr.Remaining(reslimit.Operations); ok && uint64(left) < g {
		g = uint64(left)
	}
	return s + g
}

// onMaxSteps is called by the interpreter before it runs step s =
// thread.Steps, once the steps granted (1..s-1) have run: it charges them
// and grants the next batch, or stops the thread.
func (st *state) onMaxSteps(thread *starlark.Thread) {
	s := thread.Steps
	if err := st.chargeUpTo(s - 1); err != nil {
		st.cancel(thread, err)
		return
	}
	next := st.grant(s)
	if next == s {
		// Nothing left: the refusal says why (and counts it).
		err := st.tr.TrackOperation()
		if err == nil {
			// Room appeared meanwhile (a limit raised): the step is charged.
			st.charged = s
			thread.SetMaxExecutionSteps(st.grant(s + 1))
			return
		}
		st.cancel(thread, err)
		return
	}
	thread.SetMaxExecutionSteps(next)
}

// chargeUpTo charges the steps up to executed not charged yet.
func (st *state) chargeUpTo(executed uint64) error {
	if st.tr == nil || executed <= st.charged {
		return nil
	}
	if err := st.tr.TrackOperations(int64(executed - st.charged)); err != nil {
		return err
	}
	st.charged = executed
	return nil
}

// cancel stops the thread at its next step, for err (the first reason
// stays).
func (st *state) cancel(thread *starlark.Thread, err error) {
	if st.reason.CompareAndSwap(nil, &err) {
		thread.Cancel(err.Error())
	}
}

// stopReason is why ctx is done: the run's *reslimit.LimitError, or the
// cancellation's cause.
func stopReason(ctx context.Context) error {
	cause := context.Cause(ctx)
	var le *reslimit.LimitError
	if errors.As(cause, &le) {
		return cause
	}
	if err := reslimit.FromContext(ctx).Err(); err != nil && errors.As(err, &le) {
		return err
	}
	return cause
}

// Finish charges the steps the thread ran since its last batch boundary
// and stops watching its context (waiting for the watcher if it is
// running, so nothing is left behind). It returns the refusal of that
// charge, if any: nil for a script that ran within its limits, the
// reason the run stopped for a script cut short (whose last partial batch
// is then not charged). Calling it again does nothing. A thread not made
// by Thread is left alone.
func Finish(thread *starlark.Thread) error {
	st := stateOf(thread)
	if st == nil || st.finished {
		return nil
	}
	st.finished = true
	if st.stopWatch != nil && !st.stopWatch() {
		<-st.watchDone
	}
	executed := thread.Steps
	if st.reason.Load() != nil && executed > 0 {
		executed-- // the step that saw the cancellation did not run
	}
	if st.tr == nil {
		return nil
	}
	err := st.chargeUpTo(executed)
	if err != nil {
		st.reason.CompareAndSwap(nil, &err)
	}
	return err
}

// Error is the error of a script that reslimit stopped: Err is why (the
// run's *reslimit.LimitError, or the cause of its cancellation), Script
// the interpreter's error (a *starlark.EvalError with the backtrace).
type Error struct {
	Err    error
	Script error
}

// Error returns the reason and where the script was.
func (e *Error) Error() string {
	var ee *starlark.EvalError
	if errors.As(e.Script, &ee) && len(ee.CallStack) > 0 {
		return fmt.Sprintf("%v (script stopped at %s)", e.Err, ee.CallStack.At(0).Pos)
	}
	return e.Err.Error()
}

// Unwrap returns the reason and the script's error.
func (e *Error) Unwrap() []error {
	if e.Script == nil {
		return []error{e.Err}
	}
	return []error{e.Err, e.Script}
}

// Err maps the error of a script run on thread: when reslimit stopped the
// thread, it returns an *Error whose Err is the reason; other errors, and
// nil, are returned as they are.
func Err(thread *starlark.Thread, err error) error {
	if err == nil {
		return nil
	}
	if st := stateOf(thread); st != nil {
		if r := st.reason.Load(); r != nil {
			return &Error{Err: *r, Script: err}
		}
	}
	return err
}

// ExecFile runs a Starlark file (as starlark.ExecFileOptions) on a new
// Thread of ctx, charged to ctx's run, and returns its globals. A script
// stopped by a limit returns an *Error wrapping the *reslimit.LimitError.
// A nil opts means syntax.LegacyFileOptions(). A nil ctx or an invalid
// option value is an error, as for Thread, and nothing runs.
func ExecFile(ctx context.Context, opts *syntax.FileOptions, filename string, src any, predeclared starlark.StringDict, o ...Option) (starlark.StringDict, error) {
	if opts == nil {
		opts = syntax.LegacyFileOptions()
	}
	thread, err := Thread(ctx, o...)
	if err != nil {
		return nil, err
	}
	globals, err := starlark.ExecFileOptions(opts, thread, filename, src, predeclared)
	return globals, finish(thread, err)
}

// Call calls a Starlark callable (a function of a script's globals, say)
// on a new Thread of ctx, charged to ctx's run, like ExecFile.
func Call(ctx context.Context, fn starlark.Value, args starlark.Tuple, kwargs []starlark.Tuple, o ...Option) (starlark.Value, error) {
	thread, err := Thread(ctx, o...)
	if err != nil {
		return nil, err
	}
	v, err := starlark.Call(thread, fn, args, kwargs)
	return v, finish(thread, err)
}

// finish ends a thread that returned err: a script stopped by reslimit
// gets its reason; one that finished but whose last steps did not fit
// gets that refusal.
func finish(thread *starlark.Thread, err error) error {
	ferr := Finish(thread)
	if err != nil {
		return Err(thread, err)
	}
	if ferr != nil {
		return &Error{Err: ferr}
	}
	return nil
}
