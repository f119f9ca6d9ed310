// Package reslimitwazero binds reslimit's limits to WebAssembly guests run
// by wazero (github.com/tetratelabs/wazero), with no cooperation from the
// guest:
//
//   - Memory, exactly: a module instantiated with a context from
//     WithTracker allocates its linear memory through wazero's
//     experimental.MemoryAllocator, and every byte of it is charged to the
//     run of that context (reslimit.FromContext) as memory held, so to the
//     run's MaxMemoryBytes and its tenant's MaxMemory. A growth that does
//     not fit is refused: the guest's memory.grow returns -1 (the guest
//     sees out-of-memory, the host does not), and when the guest traps on
//     it, Err (and Call, Instantiate) return an *Error wrapping the
//     *reslimit.LimitError{Resource: reslimit.Memory}. Closing the module
//     gives the bytes back.
//   - CPU time and timeout: wazero runs a guest on the calling goroutine,
//     so inside reslimit.Run or a reslimit.Limit'ed function its CPU time
//     is the run's thread CPU time. With Config (WithCloseOnContextDone)
//     the run's cancellation by its watchdog stops a guest spinning in
//     (loop br 0), and the caller gets the run's cpu_time or timeout
//     *reslimit.LimitError, not wazero's exit error. This has a price that
//     is wazero's: with WithCloseOnContextDone, wazero v1.12 leaves the
//     guest's machine code for Go at every loop iteration to check the
//     module (about 35 ns each here, so a tight loop runs tens of times
//     slower; see BENCHMARKS.md). Without Config, memory and CPU
//     accounting cost next to nothing, but the run's cancellation stops
//     the guest only when it returns to or calls the host.
//   - Instructions, as operations, for a module rewritten by Instrument:
//     its guest counts them inside its machine code and bills its run
//     what it ran, a batch at most at a time and exactly when each call
//     returns, so MaxOperations and MaxTotalOperations bind it, and a
//     stopped run (timeout, CPU time, cancellation) stops it within a
//     batch of instructions (microseconds), without Config and at a
//     fraction of Config's cost (BENCHMARKS.md). Instantiate provides the
//     host function it imports.
//   - Function calls, optionally: a module compiled with a context from
//     CountCalls charges each call of one of its functions as one
//     reslimit call (Tracker.TrackCall), so MaxCalls binds; this
//     costs a trip from the guest's machine code to Go per call (see
//     BENCHMARKS.md).
//   - Host functions exported to the guest get the call's context, so they
//     charge through reslimit.FromContext(ctx); to stop the guest they
//     panic with the error (wazero turns the panic into the call's error,
//     which Err leaves wrapping the *reslimit.LimitError).
//
// Outside a run (reslimit.FromContext(ctx) == nil) nothing is charged or
// limited, as everywhere in reslimit.
//
// What is not bound: the memory wazero itself uses for a module (its
// compiled code, its call stack — up to wazero's own ceiling of a few
// hundred MiB for deep recursion — tables and globals) and the transient
// copy a growth makes; the goroutine wazero starts per call to watch the
// context (it ends with the call).
package reslimitwazero

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/reslimit/reslimit"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"
	"github.com/tetratelabs/wazero/sys"
)

// Config returns c set up for guests under reslimit: WithCloseOnContextDone,
// so that a run's cancellation (its timeout, its CPU time, its caller)
// stops a guest that never returns to the host.
func Config(c wazero.RuntimeConfig) wazero.RuntimeConfig {
	return c.WithCloseOnContextDone(true)
}

// stateKey is the context key of a *state.
type stateKey struct{}

// state is what WithTracker puts in a context: the run's tracker and the
// last memory refusal, which tells Err why a guest trapped.
type state struct {
	tr      *reslimit.Tracker
	refused atomic.Pointer[reslimit.LimitError]
}

// WithTracker returns ctx set up so that a module instantiated with it
// allocates its linear memory charged to the run of ctx
// (reslimit.FromContext(ctx)). Use the returned context for the module's
// calls too, so that Err can tell a trap caused by a refused growth. When
// ctx carries no run, or is set up for its run already, ctx is returned as
// it is.
//
// The memory of a module stays charged to the run that instantiated it
// until the module is closed (or the run ends, which gives back whatever
// the run holds). A module instantiated in one run and called in another
// can no longer grow once its run has ended: instantiate per run.
//
// wazero gives a memory allocator no way to refuse a module's initial
// memory (its declared minimum) other than panicking: Instantiate turns
// that panic into the *Error; with wazero's InstantiateModule directly, a
// module whose initial memory does not fit panics with an *Error.
func WithTracker(ctx context.Context) context.Context {
	tr := reslimit.FromContext(ctx)
	if tr == nil {
		return ctx
	}
	if st, ok := ctx.Value(stateKey{}).(*state); ok && st.tr == tr {
		return ctx // set up already
	}
	st := &state{tr: tr}
	ctx = context.WithValue(ctx, stateKey{}, st)
	return experimental.WithMemoryAllocator(ctx, allocator{st})
}

// allocator implements experimental.MemoryAllocator for one run.
type allocator struct{ st *state }

// Allocate implements experimental.MemoryAllocator. Nothing is allocated
// (or charged) until wazero asks for the initial size.
func (a allocator) Allocate(_, max uint64) experimental.LinearMemory {
	return &linearMemory{st: a.st, max: max}
}

// linearMemory is a guest's linear memory: a Go slice whose capacity is
// charged to the run as memory held.
type linearMemory struct {
	st  *state
	max uint64

	mu      sync.Mutex
	buf     []byte
	charged int64 // cap(buf), charged to st.tr
	started bool  // the initial size was asked for
	freed   bool
}

// Reallocate implements experimental.LinearMemory: it grows the memory to
// size bytes, charging the bytes it allocates first. It returns nil (the
// guest's memory.grow returns -1) when they do not fit.
func (m *linearMemory) Reallocate(size uint64) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.freed {
		return nil
	}
	initial := !m.started
	m.started = true
	if size <= uint64(cap(m.buf)) {
		if m.buf == nil {
			m.buf = []byte{}
		}
		m.buf = m.buf[:size]
		return m.buf
	}
	// Grow geometrically, as append would, when that fits; else exactly.
	newCap := size
	if c := 2 * uint64(cap(m.buf)); !initial && c > newCap {
		newCap = min(c, max(m.max, size))
		if left, ok := m.st.tr.Remaining(reslimit.Memory); ok && uint64(left) < newCap-uint64(m.charged) {
			newCap = size // would be refused: ask for what the guest asked
		}
	}
	err := m.st.tr.TrackMemory(int64(newCap) - m.charged)
	if err != nil && newCap > size {
		newCap = size
		err = m.st.tr.TrackMemory(int64(newCap) - m.charged)
	}
	if err != nil {
		var le *reslimit.LimitError
		if !errors.As(err, &le) {
			// Stopped or ended run: refuse as a memory limit would, with
			// the reason kept in the Error's message.
			le = nil
		}
		if le != nil {
			m.st.refused.Store(le)
		}
		if initial {
			// wazero indexes the initial buffer without checking it:
			// refuse by panicking, which Instantiate recovers.
			panic(&Error{Err: err, Guest: errInitialMemory})
		}
		return nil
	}
	nb := make([]byte, size, newCap)
	copy(nb, m.buf)
	m.buf = nb
	m.charged = int64(newCap)
	return m.buf
}

// Free implements experimental.LinearMemory: the bytes are given back.
func (m *linearMemory) Free() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.freed {
		return
	}
	m.freed = true
	m.buf = nil
	if m.charged > 0 {
		// ErrClosed after the run ended: End gave everything back.
		_ = m.st.tr.ReleaseMemory(m.charged)
		m.charged = 0
	}
}

var errInitialMemory = errors.New("reslimitwazero: the module's initial memory does not fit")

// Error is the error of a guest that reslimit stopped: Err is why (a
// *reslimit.LimitError, or the cause of the run's cancellation), Guest the
// error wazero reported (a trap, or its *sys.ExitError). errors.As finds
// the *reslimit.LimitError through it, and errors.Is/As the guest's error.
type Error struct {
	Err   error
	Guest error
}

// Error returns the reason, with the first line of the guest's error.
func (e *Error) Error() string {
	g := e.Guest.Error()
	if i := strings.IndexByte(g, '\n'); i >= 0 {
		g = g[:i]
	}
	return fmt.Sprintf("%v (guest: %s)", e.Err, g)
}

// Unwrap returns the reason and the guest's error.
func (e *Error) Unwrap() []error { return []error{e.Err, e.Guest} }

// Err maps the error of an instantiation or a call made with ctx (a
// context from WithTracker, or any context of a run): when the guest was
// stopped because a memory growth was refused, or by the run's
// cancellation (its CPU time, its timeout, its caller), it returns an
// *Error whose Err is the *reslimit.LimitError (or the cancellation's
// cause). Other errors, and nil, are returned as they are; an error from a
// listener or host function that charged the run already wraps the
// *reslimit.LimitError.
func Err(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	var exit *sys.ExitError
	if errors.As(err, &exit) {
		switch exit.ExitCode() {
		case sys.ExitCodeContextCanceled, sys.ExitCodeDeadlineExceeded:
			if ctx.Err() != nil {
				return &Error{Err: stopReason(ctx), Guest: err}
			}
		}
	}
	if st, ok := ctx.Value(stateKey{}).(*state); ok {
		if le := st.refused.Swap(nil); le != nil {
			return &Error{Err: le, Guest: err}
		}
		// A trap after the run was stopped (a growth refused because it
		// was): its reason.
		if serr := st.tr.Err(); serr != nil {
			return &Error{Err: serr, Guest: err}
		}
	}
	return err
}

// stopReason is why ctx is done: its cause, or rather the run's
// *reslimit.LimitError when the tracker recorded one.
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

// Instantiate instantiates compiled in rt with WithTracker(ctx) (its
// memory charged to the run of ctx) and maps its error with Err. A module
// whose initial memory does not fit is refused with an *Error wrapping the
// *reslimit.LimitError, and nothing stays allocated or charged. A module
// made by Instrument gets the host function it imports (InstantiateHost).
func Instantiate(ctx context.Context, rt wazero.Runtime, compiled wazero.CompiledModule, cfg wazero.ModuleConfig) (mod api.Module, err error) {
	ctx = WithTracker(ctx)
	if importsRefuel(compiled) {
		if err := InstantiateHost(ctx, rt); err != nil {
			return nil, err
		}
	}
	defer func() {
		if r := recover(); r != nil {
			e, ok := r.(*Error)
			if !ok || e.Guest != errInitialMemory {
				panic(r)
			}
			mod, err = nil, e
		}
	}()
	mod, err = rt.InstantiateModule(ctx, compiled, cfg)
	return mod, Err(ctx, err)
}

// Call calls fn with ctx (a context from WithTracker) and maps its error
// with Err: a memory refusal, the run's CPU time or timeout come back as an
// *Error wrapping the *reslimit.LimitError.
func Call(ctx context.Context, fn api.Function, params ...uint64) ([]uint64, error) {
	if st, ok := ctx.Value(stateKey{}).(*state); ok {
		st.refused.Store(nil) // a refusal the guest survived earlier is not this call's
	}
	res, err := fn.Call(ctx, params...)
	return res, Err(ctx, err)
}

// CountCalls returns ctx set up so that a module compiled with it (by
// wazero.Runtime.CompileModule: wazero attaches listeners at compile time)
// charges each call of one of its functions to the run of the context it
// is called with, as one reslimit call (Tracker.TrackCall), so that the
// run's tenant's MaxCalls binds and its bill counts them. A call
// that is refused stops the guest: the call's error wraps the
// *reslimit.LimitError{Resource: reslimit.Calls}. Calls of host functions
// are not counted (count them in the host function if they matter).
//
// Listeners cost: every guest function call leaves the guest's machine
// code for Go and back (BENCHMARKS.md has the numbers).
func CountCalls(ctx context.Context) context.Context {
	return experimental.WithFunctionListenerFactory(ctx, callCounter{})
}

// callCounter is the FunctionListenerFactory of CountCalls and its listener.
type callCounter struct{}

// NewFunctionListener implements experimental.FunctionListenerFactory:
// a call of the wrapper that Instrument exports in place of a function is
// not counted (the function's is).
func (callCounter) NewFunctionListener(def api.FunctionDefinition) experimental.FunctionListener {
	if def.Name() == SettleName {
		return nil
	}
	return callCounter{}
}

// Before implements experimental.FunctionListener: one call.
func (callCounter) Before(ctx context.Context, _ api.Module, _ api.FunctionDefinition, _ []uint64, _ experimental.StackIterator) {
	if err := reslimit.FromContext(ctx).TrackCall(); err != nil {
		panic(err) // wazero makes it the call's error
	}
}

// After implements experimental.FunctionListener.
func (callCounter) After(context.Context, api.Module, api.FunctionDefinition, []uint64) {}

// Abort implements experimental.FunctionListener.
func (callCounter) Abort(context.Context, api.Module, api.FunctionDefinition, error) {}
