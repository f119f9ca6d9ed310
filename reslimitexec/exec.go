package reslimitexec

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"sync"
	"time"

	"github.com/reslimit/reslimit"
)

// Option configures Run and Start.
type Option func(*config)

type config struct {
	dataLimit   bool
	maxProcs    int64
	maxProcsSet bool
	noCgroup    bool
	cgParent    string
	backend     backendRef // a backend chosen by the package's tests
	err         error
}

// DefaultMaxProcesses is the cap on the processes and threads of a
// child's tree when WithMaxProcesses is not given.
const DefaultMaxProcesses = 1024

// WithMaxProcesses caps the number of tasks (processes and threads, as
// the kernel's pids controller counts them) in the child's tree at once at
// n; 0 means no cap, and the default is DefaultMaxProcesses. With a cgroup
// backend the kernel refuses a fork past the cap (the tree never holds
// more than n); the run is then stopped, its tree killed, and the caller
// gets a *reslimit.LimitError{Resource: reslimit.Processes}. With the
// sampling backend the tree's tasks are counted at each sample, so it can
// pass the cap between samples before it is killed. A negative n makes
// Start fail with an error wrapping reslimit.ErrInvalidLimits.
func WithMaxProcesses(n int64) Option {
	return func(c *config) {
		if n < 0 {
			c.err = fmt.Errorf("%w: reslimitexec: WithMaxProcesses(%d): negative", reslimit.ErrInvalidLimits, n)
			return
		}
		c.maxProcs, c.maxProcsSet = n, true
	}
}

// WithoutCgroup runs the child without a cgroup even where one could be
// made: the "ptrace" (or "after-start") sampling backend, as Enforcement
// describes. For tests of that backend, and for callers that put the child
// in a cgroup of their own.
func WithoutCgroup() Option { return func(c *config) { c.noCgroup = true } }

// WithCgroupParent makes the child's cgroup under the cgroup at path (as
// /proc/self/cgroup writes it, e.g. "/system.slice/app.service/children")
// in each hierarchy used, instead of under this process's own cgroup. With
// it, Start fails with the reason when no cgroup can be made there (by
// default it falls back to sampling). For cgroup v2 the parent must not
// hold processes itself (the kernel's "no internal processes" rule) and
// must have, or be allowed to enable, the memory and pids controllers for
// its children: a systemd unit with Delegate=yes gives such a subtree.
func WithCgroupParent(path string) Option {
	return func(c *config) {
		if path == "" || path[0] != '/' {
			c.err = fmt.Errorf("%w: reslimitexec: WithCgroupParent(%q): want an absolute cgroup path", reslimit.ErrInvalidArgument, path)
			return
		}
		c.cgParent = path
	}
}

// WithDataLimit also sets the child's RLIMIT_DATA to the memory the run may
// still hold (Linux only), so an allocation past it fails in the child at
// once instead of the child being killed after its resident memory was
// sampled past the limit. The child then reports the failure its own way
// (a MemoryError, an *exec.ExitError for the caller). Programs that
// reserve large writable mappings up front (binaries built with -race,
// some language runtimes) may not start under it. Without a memory limit
// it does nothing.
func WithDataLimit() Option { return func(c *config) { c.dataLimit = true } }

// Usage is what a child process (with its descendants) has been charged so
// far: CPU time, and resident memory in bytes.
type Usage struct {
	// CPUTime is the user+system CPU time charged to the run.
	CPUTime time.Duration
	// MemoryBytes is the resident memory held now (0 once it exited).
	MemoryBytes int64
	// PeakMemoryBytes is the most resident memory seen at once: the
	// samples, and the child's peak RSS from its rusage at exit when that
	// figure is the child's own (on Linux a child's rusage may report the
	// peak of the process that started it; such a figure is not used).
	PeakMemoryBytes int64
	// PeakProcesses is the most tasks (processes and threads) seen at once
	// in the child's tree: the cgroup's pids.peak with a cgroup backend,
	// else the samples (0 where nothing was sampled).
	PeakProcesses int64
}

// Process is a child started by Start. Wait must be called to release its
// resources; its methods are safe for concurrent use.
type Process struct {
	cmd  *exec.Cmd
	ctx  context.Context
	t    *reslimit.Tracker
	b    bounds
	plat platform

	stdio    *stdio        // the copying of the caller's non-file stdio
	exited   chan struct{} // the child has exited (not yet reaped)
	watchEnd chan struct{} // the watchdog has returned

	mu    sync.Mutex
	cause error // why the watchdog killed the child (limit, ctx)
	late  error // a limit the child's last sample passed, after it exited
	usage Usage

	waitOnce sync.Once
	waitErr  error
}

// bounds are what the run may still use when the child starts.
type bounds struct {
	cpu, mem, file          int64 // ns, bytes, bytes
	cpuSet, memSet, fileSet bool
	memOwn                  bool // mem is bound by the run's own limit
	dataLimit               bool
	maxProcs                int64 // tasks in the tree; 0: no cap
	noCgroup                bool
	cgParent                string
	backend                 backendRef
}

// Run starts cmd under the limits of the run in ctx, as Start does, and
// waits for it to finish, as Process.Wait does. It returns nil when the
// child exited with status 0 within its limits.
func Run(ctx context.Context, cmd *exec.Cmd, opts ...Option) error {
	p, err := Start(ctx, cmd, opts...)
	if err != nil {
		return err
	}
	return p.Wait()
}

// Start starts cmd under the limits of the run in ctx (see the package
// doc) and returns at once; the caller must call Wait.
//
// Nothing is started, and nothing charged, when cmd is nil or was started
// already, ctx is done (the error is context.Cause(ctx)), or the run has
// been stopped, has ended, or has no CPU time or memory left, or its
// account has a cumulative limit used up (the error is the run's stop
// reason, reslimit.ErrClosed, or a *reslimit.LimitError). Otherwise the
// child counts as one function call of the run (Tracker.TrackCall), which
// the account's MaxCalls can refuse.
//
// Start sets cmd.SysProcAttr (a copy of the caller's, if any) to put the
// child in a new process group (unless Setsid already makes it lead one; a
// Pgid set by the caller is replaced) and, on Linux, to stop it at its
// first instruction (PTRACE_TRACEME); a cmd that sets SysProcAttr.Ptrace
// itself is refused. Call Process.Wait, not cmd.Wait: reaping the child
// behind the watchdog's back could let it signal a reused process group.
//
// A cmd.Stdin, cmd.Stdout or cmd.Stderr that is not an *os.File is
// copied by reslimitexec rather than by exec.Cmd, through pipes of its own
// (the fields hold the caller's values again when Start returns), so that
// Wait's wait for the copying is bounded (see DefaultWaitDelay).
//
// Run and Start may be called from any number of goroutines at once, each
// with its own cmd.
func Start(ctx context.Context, cmd *exec.Cmd, opts ...Option) (*Process, error) {
	if ctx == nil {
		return nil, fmt.Errorf("%w: reslimitexec: nil context", reslimit.ErrInvalidArgument)
	}
	if cmd == nil {
		return nil, fmt.Errorf("%w: reslimitexec: nil *exec.Cmd", reslimit.ErrInvalidArgument)
	}
	if cmd.Process != nil {
		return nil, fmt.Errorf("%w: reslimitexec: the command was already started", reslimit.ErrInvalidArgument)
	}
	c := config{maxProcs: DefaultMaxProcesses}
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	if c.err != nil {
		return nil, c.err
	}
	if ctx.Err() != nil {
		return nil, context.Cause(ctx)
	}
	t := reslimit.FromContext(ctx)
	b, err := admit(t)
	if err != nil {
		return nil, err
	}
	b.dataLimit, b.maxProcs, b.noCgroup, b.cgParent = c.dataLimit, c.maxProcs, c.noCgroup, c.cgParent
	b.backend = c.backend
	p := &Process{cmd: cmd, ctx: ctx, t: t, b: b, exited: make(chan struct{}), watchEnd: make(chan struct{})}
	if p.stdio, err = redirect(cmd); err != nil {
		return nil, err
	}
	err = p.start()
	p.stdio.started(cmd, err == nil)
	if err != nil {
		return nil, err
	}
	return p, nil
}

// admit checks that the run may start a child and returns what it may
// still use. It charges one call, the only charge it makes.
func admit(t *reslimit.Tracker) (bounds, error) {
	var b bounds
	if t == nil {
		return b, nil
	}
	// CheckFileSize(0) counts nothing: it fails only when the run was
	// stopped (with the reason) or has ended (ErrClosed).
	if err := t.CheckFileSize(0); err != nil {
		return b, err
	}
	for _, r := range []reslimit.Resource{reslimit.CPUTime, reslimit.Memory} {
		if left, ok := t.Remaining(r); ok && left == 0 {
			return b, usedUp(t, r)
		}
	}
	if a := t.Account(); a != nil {
		if r, ok := a.Exhausted(); ok {
			return b, usedUp(t, r)
		}
	}
	b.cpu, b.cpuSet = t.Remaining(reslimit.CPUTime)
	b.mem, b.memSet = t.Remaining(reslimit.Memory)
	if l := t.Limits(); b.memSet && l.MaxMemoryBytes > 0 {
		b.memOwn = l.MaxMemoryBytes-t.Usage().MemoryBytes <= b.mem
	}
	b.file, b.fileSet = t.Remaining(reslimit.FileSize)
	if err := t.TrackCall(); err != nil {
		return b, err
	}
	return b, nil
}

// usedUp returns the *LimitError for a resource r of which the run has
// nothing left: its own limit's, or else its tenant's.
func usedUp(t *reslimit.Tracker, r reslimit.Resource) error {
	l, u := t.Limits(), t.Usage()
	switch {
	case r == reslimit.CPUTime && l.MaxCPUTime > 0 && u.CPUTime >= l.MaxCPUTime:
		return &reslimit.LimitError{Resource: r, Limit: int64(l.MaxCPUTime), Used: int64(u.CPUTime), Requested: 1}
	case r == reslimit.Memory && l.MaxMemoryBytes > 0 && u.MemoryBytes >= l.MaxMemoryBytes:
		return &reslimit.LimitError{Resource: r, Limit: l.MaxMemoryBytes, Used: u.MemoryBytes, Requested: 1}
	}
	le := &reslimit.LimitError{Resource: r, Requested: 1}
	if a := t.Account(); a != nil {
		le.Tenant = a.Name()
		if st, ok := a.Stats().LimitStatus[r]; ok {
			le.Limit, le.Used = st.Limit, st.Used
		}
	}
	return le
}

// procErr is the error for a tree that reached its process cap.
func (p *Process) procErr() error {
	return &reslimit.LimitError{Resource: reslimit.Processes, Limit: p.b.maxProcs, Used: p.b.maxProcs, Requested: 1}
}

// Pid returns the child's process id (and process group id).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Usage returns what the child has been charged so far.
func (p *Process) Usage() Usage {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.usage
}

// Wait waits for the child to exit and for its output to be copied (for
// at most 2×DefaultWaitDelay after the child exited or was killed, or
// 2×cmd.WaitDelay when that is set: see DefaultWaitDelay), gives back the
// memory it was holding, charges its final CPU time and returns:
//   - the *reslimit.LimitError that stopped it (CPUTime or Memory, found by
//     the watchdog, or FileSize, when it was killed by SIGXFSZ);
//   - context.Cause(ctx) when ctx was done before it exited (for a run's
//     context: the run's timeout *LimitError, or its caller's cause);
//   - a *LimitError found by the final accounting (CPU time over the
//     limit by the child's rusage, or a peak RSS the run could not hold);
//   - otherwise what exec.Cmd.Wait returned (nil, *exec.ExitError, ...),
//     or, if that is nil, the error of copying the child's standard input
//     or output (exec.ErrWaitDelay when Wait stopped waiting for it).
//
// Calling Wait again returns the same error.
func (p *Process) Wait() error {
	p.waitOnce.Do(func() { p.waitErr = p.wait() })
	return p.waitErr
}

func (p *Process) setCause(err error) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cause != nil {
		return false
	}
	p.cause = err
	return true
}

func (p *Process) setLate(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.late == nil {
		p.late = err
	}
}

func (p *Process) getLate() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.late
}

func (p *Process) getCause() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cause
}

// notePeakProcesses records a count of tasks in the tree.
func (p *Process) notePeakProcesses(n int64) {
	p.mu.Lock()
	p.usage.PeakProcesses = max(p.usage.PeakProcesses, n)
	p.mu.Unlock()
}

// chargeCPU charges the child's CPU time up to total (cumulative, for the
// whole tree) and returns the error AddCPUTime returned, if any.
func (p *Process) chargeCPU(total time.Duration) error {
	p.mu.Lock()
	d := total - p.usage.CPUTime
	if d <= 0 {
		p.mu.Unlock()
		return nil
	}
	p.usage.CPUTime = total
	p.mu.Unlock()
	return p.t.AddCPUTime(d)
}

// chargeMemory makes the memory the run holds for the child rss bytes. A
// growth the run cannot hold is not charged: its error is returned.
func (p *Process) chargeMemory(rss int64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := rss - p.usage.MemoryBytes
	switch {
	case d > 0:
		if err := p.t.TrackMemory(d); err != nil {
			return err
		}
	case d < 0:
		if err := p.t.ReleaseMemory(-d); err != nil {
			return err
		}
	}
	p.usage.MemoryBytes = rss
	p.usage.PeakMemoryBytes = max(p.usage.PeakMemoryBytes, rss)
	return nil
}

// finish gives back the memory held for the child, after recording a
// peak (its rusage's maxrss) higher than any sample, and charges the final
// CPU time. It returns the first limit error the final figures hit.
func (p *Process) finish(cpu time.Duration, maxRSS int64) error {
	var err error
	if maxRSS > p.Usage().PeakMemoryBytes {
		if e := p.chargeMemory(maxRSS); e != nil && !errors.Is(e, reslimit.ErrClosed) {
			err = e
		}
	}
	if e := p.chargeMemory(0); e != nil && err == nil && !errors.Is(e, reslimit.ErrClosed) {
		err = e
	}
	if e := p.chargeCPU(cpu); e != nil && err == nil && !errors.Is(e, reslimit.ErrClosed) {
		err = e
	}
	return err
}

// ctxErr is the error for a child killed because ctx was done.
func ctxErr(ctx context.Context, t *reslimit.Tracker) error {
	if err := context.Cause(ctx); err != nil {
		return err
	}
	return t.Err()
}
