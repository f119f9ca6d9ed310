package reslimit

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// Option configures Run and Limit.
type Option func(*runConfig)

type runConfig struct {
	limits   Limits
	acct     *Account
	cpu      bool
	name     string
	queue    time.Duration
	queueSet bool
	err      error
}

// WithAccount charges every run to acct: its usage counts towards the
// account's cumulative limits, and the account can refuse the run before it
// starts. It takes precedence over an account in the context.
func WithAccount(acct *Account) Option {
	return func(c *runConfig) {
		if acct == nil {
			c.err = fmt.Errorf("%w: WithAccount(nil)", ErrInvalidArgument)
		}
		c.acct = acct
	}
}

// WithCPUTime makes Run (or the calls of a function wrapped by Limit)
// measure the run's CPU time even when it is not limited by MaxCPUTime and
// not charged to an Account. Measuring costs a few system calls per run
// (reading the thread's CPU clock at its start and end) and pins the run's
// goroutine to its OS thread while it runs.
func WithCPUTime() Option { return func(c *runConfig) { c.cpu = true } }

// WithName names the runs (Tracker.Name), for monitoring and logs.
func WithName(name string) Option { return func(c *runConfig) { c.name = name } }

// WithQueue lets a call of a function wrapped by Limit that finds every
// MaxConcurrent slot busy wait, first come first served, for at most
// maxWait (0: until its context ends) before it fails with a Concurrency
// *LimitError. Without it such a call fails at once. A negative maxWait
// is invalid.
func WithQueue(maxWait time.Duration) Option {
	return func(c *runConfig) {
		if maxWait < 0 {
			c.err = fmt.Errorf("%w: WithQueue(%v): negative wait", ErrInvalidArgument, maxWait)
		}
		c.queue, c.queueSet = maxWait, true
	}
}

func newRunConfig(opts []Option) runConfig {
	var c runConfig
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	return c
}

type trackerKey struct{}
type accountKey struct{}

// NewContext returns a copy of ctx that carries t, for FromContext. Like
// context.WithValue, it panics for a nil ctx.
func NewContext(ctx context.Context, t *Tracker) context.Context {
	return context.WithValue(ctx, trackerKey{}, t)
}

// FromContext returns the Tracker of the limited run that ctx belongs to,
// or nil (whose methods are no-ops) when there is none or ctx is nil. Every call within
// one run returns the same Tracker. A context kept after its run has ended
// yields the run's Tracker, ended: tracking returns ErrClosed. (If the run
// never asked for it, that Tracker counted nothing; its Err says how the
// run was stopped, and its WallTime is the run's under Run, 0 under Limit.)
func FromContext(ctx context.Context) *Tracker {
	if ctx == nil {
		return nil
	}
	t, _ := ctx.Value(trackerKey{}).(*Tracker)
	return t
}

// ContextWithAccount returns a copy of ctx that charges the runs started
// with it by Run or a function wrapped by Limit to acct, so the tenant can
// be chosen per request. WithAccount takes precedence. A nil acct makes
// those runs fail with an error wrapping ErrInvalidArgument, rather than
// run unbilled. Like context.WithValue, it panics for a nil ctx. Inside
// such a run, FromContext(ctx).Account() is the account.
func ContextWithAccount(ctx context.Context, acct *Account) context.Context {
	return context.WithValue(ctx, accountKey{}, acct)
}

var errNilContextAccount = fmt.Errorf("%w: ContextWithAccount(nil): the run's tenant has no account", ErrInvalidArgument)

// contextAccount returns the account ctx charges, or an error when
// ContextWithAccount set a nil one.
func contextAccount(ctx context.Context) (*Account, error) {
	a, ok := ctx.Value(accountKey{}).(*Account)
	if ok && a == nil {
		return nil, errNilContextAccount
	}
	return a, nil
}

// Run runs fn as one limited run with its own Tracker (reachable with
// FromContext(ctx) inside fn) and returns what it consumed.
//
// Where nothing measures the run's CPU time (see below), the Tracker is
// made by the first FromContext, so a run that never asks for it costs
// little more than its policy checks; its Usage then holds only WallTime.
// The Tracker behaves the same whenever it is made: one made after the
// run's Timeout or its caller's cancellation is already stopped.
//
// fn runs on the calling goroutine. Where the run's CPU time is measured —
// when l.MaxCPUTime is set, the run is charged to an Account, or
// WithCPUTime is given — the goroutine is locked to its OS thread while fn
// runs, so that its CPU time can be read from the thread's CPU clock (at
// most 1,000 runs of the process at once: beyond that Run waits, first
// come first served, for a place, bounded by ctx and l.Timeout, before
// anything is charged; a run inside another run does not wait, and counts
// its wall time as CPU time instead);
// otherwise Usage.CPUTime stays 0 (and AddCPUTime still adds). When the run's Timeout
// passes or its CPU time (or its account's) is used up, its context is
// cancelled with the *LimitError as context.Cause and TrackOperation starts returning
// it; Run then returns that *LimitError, whatever fn returned. Cancellation
// is cooperative: Run returns when fn and every goroutine it started with
// Tracker.Go have returned. A panic in fn ends the run, releasing what it
// held, and is re-raised.
//
// A run started with the context of another run (or of a Tracker put in
// ctx with NewContext) is that run's child, as a call of a tool wrapped
// with Limit inside a request served by reslimithttp.Middleware is: the
// operations and calls it counts are drawn from its parent, the memory it
// holds is held by its parent too, and its CPU time is its parent's too
// (whichever goroutine it runs on). So its limits are the tighter of its
// own and what its parent has left, and it is billed to its parent's
// tenant. An account in ctx or given with WithAccount that the parent is
// charged to already is not charged again; another account is charged as
// well. (A parent's Usage counts the room its live children drew ahead,
// at most a few thousand operations each, until they end or the parent
// needs it back.) A run started with the context of a run that has ended
// fails with ErrClosed.
//
// Run is refused before fn starts (with the account's *LimitError) when the
// account allows no more evaluations, no more concurrent runs, or is
// exhausted. Invalid limits, a nil fn or a nil ctx return an error (the
// last two wrapping ErrInvalidArgument) and run nothing; so does a ctx
// that is done already (Run returns its context.Cause).
func Run(ctx context.Context, l Limits, fn func(ctx context.Context) error, opts ...Option) (Usage, error) {
	if ctx == nil {
		return Usage{}, errNilContext
	}
	if fn == nil {
		return Usage{}, fmt.Errorf("%w: Run with a nil function", ErrInvalidArgument)
	}
	if err := l.Validate(); err != nil {
		return Usage{}, err
	}
	c := newRunConfig(opts)
	if c.err != nil {
		return Usage{}, c.err
	}
	c.limits = l
	return run(ctx, &c, fn, true)
}

// run runs fn as one limited run. wantUsage false (Limit) spares reading
// the clock at the end of a run whose tracker was never asked for.
func run(ctx context.Context, c *runConfig, fn func(ctx context.Context) error, wantUsage bool) (Usage, error) {
	// A run started inside another run is its child: it draws from the
	// enclosing run (and so from that run's limits and tenant).
	parent := FromContext(ctx)
	if parent != nil && parent.closed.Load() {
		return Usage{}, fmt.Errorf("%w: the run this context belongs to has ended", ErrClosed)
	}
	if ctx.Err() != nil {
		// Cancelled before it started: run nothing, charge nothing.
		return Usage{}, context.Cause(ctx)
	}
	l := c.limits
	acct := c.acct
	if acct == nil {
		var err error
		if acct, err = contextAccount(ctx); err != nil {
			return Usage{}, err
		}
	}
	if parent.chargesTo(acct) {
		acct = nil // charged through the parent already
	}
	if acct == nil && l.MaxCPUTime == 0 && !c.cpu && (parent == nil || parent.skipCPU) {
		// Nothing measures this run's CPU time: its tracker is made only
		// if fn asks for it.
		return runLazy(ctx, c, fn, wantUsage, parent)
	}
	// Measuring CPU time pins the run's goroutine to its thread: wait for
	// a place under defaultMaxMeasuredRuns before anything is charged.
	pin, err := reservePin(ctx, l.Timeout, parent != nil)
	if err != nil {
		return Usage{}, err
	}
	// The run's own context: its limits, a panic or a Go helper's panic
	// can stop it.
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var t *Tracker
	if acct != nil {
		if t, err = acct.begin(l, c.name, cancel, parent); err != nil {
			unreserve(pin)
			return Usage{}, err
		}
	} else {
		t = newTracker(l, nil, c.name, cancel)
		if parent != nil {
			t.adopt(parent)
		}
	}
	t.pinRes.Store(uint32(pin)) // taken by runTracked's attach
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() { t.halt(context.Cause(ctx)) })
		defer stop()
	}
	return runTracked(NewContext(rctx, t), t, fn)
}

// errNilContext is returned by the functions that take a context when
// given a nil one.
var errNilContext = fmt.Errorf("%w: nil context.Context", ErrInvalidArgument)

func runTracked(ctx context.Context, t *Tracker, fn func(ctx context.Context) error) (Usage, error) {
	id := t.attach()
	finished := false
	defer func() {
		if !finished {
			// fn panicked: stop the run, so that its Go helpers waiting
			// on ctx.Done() return, wait for them, clean up and let the
			// panic go on.
			t.detach(id)
			t.halt(ErrPanicked)
			t.goWG.Wait()
			t.finish(ErrPanicked)
		}
	}()
	err := fn(ctx)
	t.detach(id)
	t.goWG.Wait()
	finished = true
	return t.endRun(err)
}

// Limit wraps fn so that every call runs limited by l, as by Run: each call
// gets its own Tracker (memory, CPU time, operations, file size and timeout
// apply per call), while MaxConcurrent bounds the calls in progress at once
// across all callers of the returned function. A call that finds every
// slot busy fails at once with a Concurrency *LimitError, unless WithQueue
// lets it wait. The returned function is safe for concurrent use.
//
// Invalid limits, options or a nil fn make every call return that error; a
// call with a nil context returns an error wrapping ErrInvalidArgument.
func Limit[In, Out any](fn func(context.Context, In) (Out, error), l Limits, opts ...Option) func(context.Context, In) (Out, error) {
	c := newRunConfig(opts)
	err := c.err
	if err == nil {
		err = l.Validate()
	}
	if err == nil && fn == nil {
		err = fmt.Errorf("%w: Limit of a nil function", ErrInvalidArgument)
	}
	if err != nil {
		return func(context.Context, In) (Out, error) {
			var zero Out
			return zero, err
		}
	}
	c.limits = l
	sem := &slots{limit: l.MaxConcurrent}
	return func(ctx context.Context, in In) (Out, error) {
		var out Out
		if ctx == nil {
			return out, errNilContext
		}
		if sem.limit > 0 {
			if err := acquireCall(ctx, sem, &c); err != nil {
				return out, err
			}
			defer sem.release()
		}
		_, err := run(ctx, &c, func(ctx context.Context) error {
			var err error
			out, err = fn(ctx, in)
			return err
		}, false)
		return out, err
	}
}

func acquireCall(ctx context.Context, sem *slots, c *runConfig) error {
	if !c.queueSet {
		if sem.tryAcquire() {
			return nil
		}
		return sem.limitError("")
	}
	wctx := ctx
	if c.queue > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, c.queue)
		defer cancel()
	}
	if err := sem.acquire(wctx); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return sem.limitError("")
	}
	return nil
}

// runCtx is the context a run's function gets when nothing measures the
// run's CPU time: the caller's deadline, cancellation and values, the run's
// own cancellation (by its Timeout, a stop of its Tracker, or a panic), and
// the run's Tracker, which is made by the first FromContext. A run whose
// function never asks for its tracker nor waits on its context costs one
// small allocation (and, with a Timeout, a cancellable context and a timer).
type runCtx struct {
	context.Context                           // the caller's context
	cfg             *runConfig                // limits and name of the run
	start           time.Time                 // when the run started
	own             atomic.Pointer[ownCtx]    // the run's cancellable context, once needed
	tr              atomic.Pointer[Tracker]   // the run's tracker once made; endedRun after the run
	stopped         atomic.Pointer[stopState] // the timeout's error; endedStop once the run ended
	wall            time.Duration             // the run's wall time, set by Run before tr becomes endedRun
	parent          *Tracker                  // the run this one is nested in, or nil
}

// ownCtx is the cancellable child of the caller's context that a run's
// function sees through its runCtx.
type ownCtx struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
}

// endedRun marks the tracker slot of a runCtx whose run is over; it is
// never handed out.
var endedRun = new(Tracker)

// endedStop marks the stopped slot of a runCtx whose run ended before its
// timeout.
var endedStop = &stopState{}

// owned returns the run's cancellable context, making it on first use: at
// the start of a run with a Timeout, otherwise when the function first
// waits on Done or when something stops the run.
func (rc *runCtx) owned() *ownCtx {
	if o := rc.own.Load(); o != nil {
		return o
	}
	ctx, cancel := context.WithCancelCause(rc.Context)
	o := &ownCtx{ctx: ctx, cancel: cancel}
	if rc.own.CompareAndSwap(nil, o) {
		return o
	}
	cancel(nil)
	return rc.own.Load()
}

// Done returns a channel closed when the run is stopped or its caller's
// context is done.
func (rc *runCtx) Done() <-chan struct{} { return rc.owned().ctx.Done() }

// Err reports why Done was closed, like the Err of package context.
func (rc *runCtx) Err() error {
	if o := rc.own.Load(); o != nil {
		return o.ctx.Err()
	}
	return rc.Context.Err() // nothing stopped the run: only the caller can have
}

// Value returns the run's Tracker for FromContext, and otherwise the
// values of the run's context.
func (rc *runCtx) Value(key any) any {
	if key == any(trackerKey{}) {
		return rc.tracker()
	}
	if o := rc.own.Load(); o != nil {
		return o.ctx.Value(key) // so that context.Cause finds the run's cause
	}
	return rc.Context.Value(key)
}

// cancelRun cancels the run's context with cause err.
func (rc *runCtx) cancelRun(err error) { rc.owned().cancel(err) }

// String names the context, like those of package context.
func (rc *runCtx) String() string { return "reslimit.runContext" }

// tracker returns the run's tracker, making it on first use. After the run
// it returns an ended tracker, on which tracking returns ErrClosed.
func (rc *runCtx) tracker() *Tracker {
	for {
		t := rc.tr.Load()
		if t == endedRun {
			return rc.endedTracker()
		}
		if t != nil {
			return t
		}
		t = newRunTracker(rc.cfg.limits, nil, rc.cfg.name, rc.cancelRun)
		t.skipCPU = true
		t.start = rc.start
		t.parent = rc.parent
		if rc.Context.Done() != nil {
			t.stopAfter = context.AfterFunc(rc.Context, func() {
				if err := rc.why(); err != nil {
					t.halt(err)
				}
			})
		}
		if !rc.tr.CompareAndSwap(nil, t) {
			if t.stopAfter != nil {
				t.stopAfter()
			}
			continue // made by another goroutine meanwhile, or the run ended
		}
		if p := rc.parent; p != nil {
			p.childMu.Lock()
			p.children = append(p.children, t)
			p.childMu.Unlock()
		}
		// Stopped before the tracker existed: the tracker says so too.
		if err := rc.why(); err != nil {
			t.halt(err)
		}
		return t
	}
}

// why returns why the run was stopped, or nil: its timeout, if that came
// first, or its caller's cancellation cause.
func (rc *runCtx) why() error {
	if s := rc.stopped.Load(); s != nil && s != endedStop {
		return s.err
	}
	if rc.Context.Err() != nil {
		return context.Cause(rc.Context)
	}
	return nil
}

// endedTracker returns the tracker of a run that ended without one: made
// once, stopped as the run was, and ended with the run's wall time.
func (rc *runCtx) endedTracker() *Tracker {
	t := newRunTracker(rc.cfg.limits, nil, rc.cfg.name, nil)
	t.skipCPU = true
	t.start = rc.start
	if err := rc.why(); err != nil {
		t.halt(err)
	}
	t.finish(nil)
	t.final.WallTime = rc.wall // not yet shared: no one else reads final
	if rc.tr.CompareAndSwap(endedRun, t) {
		return t
	}
	return rc.tr.Load()
}

// timedOut stops the run for its Timeout, unless the caller's context was
// cancelled first or the run is over. The tracker, if made, is stopped
// before the run's context is cancelled, so that TrackOperation and Err report the
// timeout by the time the function sees ctx.Done().
func (rc *runCtx) timedOut() {
	if rc.Context.Err() != nil {
		return // the caller's cancellation came first
	}
	el := time.Since(rc.start)
	err := &LimitError{Resource: Timeout, Limit: int64(rc.cfg.limits.Timeout), Used: int64(el)}
	if !rc.stopped.CompareAndSwap(nil, &stopState{err: err}) {
		return // the run is over
	}
	if t := rc.tr.Load(); t != nil && t != endedRun {
		t.halt(err)
	}
	rc.cancelRun(err)
}

// runLazy is run for a run whose CPU time nothing measures.
func runLazy(ctx context.Context, c *runConfig, fn func(ctx context.Context) error, wantUsage bool, parent *Tracker) (Usage, error) {
	rc := &runCtx{Context: ctx, cfg: c, start: time.Now(), parent: parent}
	if to := c.limits.Timeout; to > 0 {
		rc.owned()
		timer := time.AfterFunc(to, rc.timedOut)
		defer timer.Stop()
	}
	defer func() {
		if o := rc.own.Load(); o != nil {
			o.cancel(nil)
		}
	}()
	finished := false
	defer func() {
		if !finished {
			// fn panicked: stop the run, so that its Go helpers waiting
			// on ctx.Done() return, wait for them, clean up and let the
			// panic go on.
			if t := rc.tr.Load(); t != nil && t != endedRun {
				t.halt(ErrPanicked)
			}
			rc.cancelRun(ErrPanicked)
			rc.end(ErrPanicked, false)
		}
	}()
	err := fn(rc)
	finished = true
	return rc.end(err, wantUsage)
}

// end ends the run whose function returned err: it waits for the
// goroutines started with Tracker.Go, finishes the tracker (if one was
// made) and returns the usage and the run's error: the *LimitError that
// stopped it, if any, whatever fn returned. A panic of a Go helper is
// re-raised.
func (rc *runCtx) end(err error, wantUsage bool) (Usage, error) {
	if wantUsage {
		rc.wall = time.Since(rc.start)
	}
	t := rc.tr.Load()
	if t == nil && rc.tr.CompareAndSwap(nil, endedRun) {
		// No tracker was asked for. The run was stopped by its timeout if
		// that fired, or by a limit of its caller's (an enclosing run's)
		// if that cancelled it, as a tracker would have recorded.
		if !rc.stopped.CompareAndSwap(nil, endedStop) {
			err = rc.stopped.Load().err
		} else if rc.Context.Err() != nil {
			var le *LimitError
			if errors.As(context.Cause(rc.Context), &le) {
				err = le
			}
		}
		return Usage{WallTime: rc.wall}, err
	}
	t = rc.tr.Load()
	t.goWG.Wait()
	if !rc.stopped.CompareAndSwap(nil, endedStop) {
		t.halt(rc.stopped.Load().err) // the timer may not have got that far
	} else if rc.Context.Err() != nil {
		t.halt(context.Cause(rc.Context)) // the AfterFunc may not have run yet
	}
	if t.stopAfter != nil {
		t.stopAfter()
	}
	if err == ErrPanicked {
		return t.finish(err), err
	}
	return t.endRun(err)
}

// endRun finishes the tracker of a run whose function returned err and
// whose Go helpers are done: a helper's panic is re-raised, and the
// *LimitError that stopped the run, if any, replaces err.
func (t *Tracker) endRun(err error) (Usage, error) {
	if p := t.goPanic.Load(); p != nil {
		t.finish(ErrPanicked)
		t.raiseGoPanic()
	}
	if s := t.cause.Load(); s != nil {
		var le *LimitError
		if errors.As(s.err, &le) {
			err = le
		}
	}
	return t.finish(err), err
}
