//go:build linux

package reslimitexec

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/reslimit/reslimit"
)

// Watchdog sampling: after the CPU time left divided by the threads that
// can use it, and the memory left divided by memRate, within
// [minInterval, maxInterval].
const (
	minInterval = 2 * time.Millisecond
	maxInterval = 50 * time.Millisecond
	// memRate is the fastest a child is assumed to make memory resident,
	// in bytes per second (a thread touching fresh pages; measured well
	// under it here, see BENCHMARKS.md).
	memRate = 4 << 30
)

type platform struct {
	pgid int
	smp  sampler
	// cg is the child's cgroup (nil: the sampling backend); enforcement
	// names the backend.
	cg          *cgroup
	enforcement string
	// xfsz counts the SIGXFSZ the child's tree raised (see
	// xfsz_linux.go); -1: not counted.
	xfsz int
	// pidfd is the child's pidfd in the runtime's poller (nil: kernel
	// before 5.10), for waitExit to wait without a thread of its own.
	pidfd *os.File
	// selfMaxRSS is this process's peak RSS (bytes) just after the child
	// started (after its execve): a bound on the peak the child inherited
	// in its rusage (see ownMaxRSS).
	selfMaxRSS int64
}

// ptraceWorks probes once whether a child may be started stopped at its
// first instruction: it starts a child with PTRACE_TRACEME that execs a
// path that does not exist. PTRACE_TRACEME comes first, so EPERM means
// ptrace is forbidden, ENOENT that it works; no program runs either way.
var ptraceWorks = sync.OnceValue(func() bool {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	_, err := os.StartProcess("/nonexistent/reslimitexec-ptrace-probe", []string{"probe"},
		&os.ProcAttr{Sys: &syscall.SysProcAttr{Ptrace: true}})
	return errors.Is(err, syscall.ENOENT)
})

// Enforcement names the backend that bounds a child started by default
// (without WithoutCgroup or WithCgroupParent):
//   - "cgroup2": each child runs in a cgroup v2 of its own, cloned into it
//     (CLONE_INTO_CGROUP), with memory.max, pids.max and cgroup.kill;
//   - "cgroup1": each child runs in a cgroup of its own in the v1 memory,
//     pids, cpuacct and freezer hierarchies, moved in while it is stopped
//     by ptrace after its execve, before its first instruction;
//   - "ptrace": no cgroup can be made (not root, no delegated subtree);
//     CPU and memory are sampled from /proc, and the rlimits are in place
//     before the child's first instruction (ptrace);
//   - "after-start": as "ptrace", but ptrace is not permitted, so the
//     rlimits are set just after the child starts;
//   - "none": not Linux (see the package doc).
//
// It finds the backend once (making and removing a probe cgroup, and
// starting a probe process). Process.Enforcement says which one a given
// child got. Safe for concurrent use.
func Enforcement() string {
	if b, err := defaultBackend(); err == nil {
		return b.name()
	}
	return samplingEnforcement()
}

func samplingEnforcement() string {
	if ptraceWorks() {
		return "ptrace"
	}
	return "after-start"
}

// Enforcement names the backend that bounds this child (see the function
// Enforcement).
func (p *Process) Enforcement() string { return p.plat.enforcement }

func (p *Process) start() error {
	p.plat.xfsz = -1
	cmd := p.cmd
	attr, err := childAttr(cmd.SysProcAttr)
	if err != nil {
		return err
	}
	cg, err := p.makeCgroup(&attr)
	if err != nil {
		return err
	}
	p.useBackend(cg, &attr)
	rl := p.rlimits()
	// cgroup1: the child is moved into its cgroup during the ptrace stop.
	traced := (len(rl) > 0 || cg != nil && !cg.v2) && ptraceWorks()
	attr.Ptrace = traced
	cmd.SysProcAttr = &attr
	if traced {
		// The tracer is the thread that forks: the ptrace calls must come
		// from it (limitChild's included).
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
	}
	if err := cmd.Start(); err != nil {
		if cg != nil {
			cg.remove()
		}
		return err
	}
	pid := cmd.Process.Pid
	p.plat.pgid = pid
	p.plat.selfMaxRSS = selfMaxRSS()
	if p.plat.xfsz, err = limitChild(pid, traced, cg, rl, p.b.fileSet); err != nil {
		p.abortStart(pid, cg)
		return fmt.Errorf("reslimitexec: setting the limits of the child: %w", err)
	}
	p.plat.pidfd = openPidfd(pid)
	go p.waitExit()
	go p.watch()
	return nil
}

// openPidfd returns a non-blocking pidfd of process pid, in the runtime's
// network poller (epoll), or nil if there is none.
func openPidfd(pid int) *os.File {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return nil
	}
	return os.NewFile(uintptr(fd), "pidfd")
}

// childAttr returns the SysProcAttr of the child: a copy of the caller's
// (which must not ask for Ptrace), in a new process group unless Setsid
// makes the child lead one.
func childAttr(caller *syscall.SysProcAttr) (syscall.SysProcAttr, error) {
	var attr syscall.SysProcAttr
	if caller != nil {
		if caller.Ptrace {
			return attr, fmt.Errorf("%w: reslimitexec: cmd.SysProcAttr.Ptrace is set: the child cannot be traced by its caller", reslimit.ErrInvalidArgument)
		}
		attr = *caller
	}
	if !attr.Setsid { // a session leader leads its own group already
		attr.Setpgid, attr.Pgid = true, 0
	}
	return attr, nil
}

// useBackend records the backend that bounds the child (cg, or sampling
// when cg is nil) and, for cgroup2, clones the child into cg.
func (p *Process) useBackend(cg *cgroup, attr *syscall.SysProcAttr) {
	p.plat.cg = cg
	p.plat.enforcement = samplingEnforcement()
	if cg != nil {
		p.plat.enforcement = "cgroup1"
		if cg.v2 {
			p.plat.enforcement = "cgroup2"
			attr.UseCgroupFD, attr.CgroupFD = true, cg.fd
		}
	}
}

// limitChild puts the just-started child pid under its limits: when traced,
// during the ptrace stop after its execve (joining cg for cgroup1, setting
// the rlimits rl, opening the SIGXFSZ counter when countXfsz, detaching),
// which must be called from the thread that started it; otherwise by
// setting rl at once (a child that exited already is not an error). It
// returns the SIGXFSZ counter (-1: none; counting is best effort).
func limitChild(pid int, traced bool, cg *cgroup, rl []rlimit, countXfsz bool) (xfsz int, err error) {
	xfsz = -1
	defer func() {
		if err != nil && xfsz >= 0 {
			unix.Close(xfsz)
			xfsz = -1
		}
	}()
	if !traced {
		if countXfsz {
			xfsz, _ = openXfszCounter(pid)
		}
		if len(rl) == 0 {
			return xfsz, nil
		}
		if err := setRlimits(pid, rl); err != nil && !errors.Is(err, unix.ESRCH) {
			return xfsz, err
		}
		return xfsz, nil
	}
	stopped, err := waitTrap(pid)
	if err != nil || !stopped {
		return xfsz, err
	}
	if cg != nil && !cg.v2 {
		if err := cg.join(pid); err != nil {
			return xfsz, err
		}
	}
	if err := setRlimits(pid, rl); err != nil {
		return xfsz, err
	}
	if countXfsz {
		xfsz, _ = openXfszCounter(pid)
	}
	return xfsz, unix.PtraceDetach(pid)
}

// abortStart kills a child that could not be put under its limits, with
// its group, reaps it and removes its cgroup.
func (p *Process) abortStart(pid int, cg *cgroup) {
	_ = unix.Kill(-pid, unix.SIGKILL)
	_ = unix.Kill(pid, unix.SIGKILL)
	_ = p.cmd.Wait()
	if cg != nil {
		cg.kill(time.Now().Add(killBound))
		cg.remove()
	}
}

// makeCgroup makes the child's cgroup, or returns nil for the sampling
// backend (WithoutCgroup, no backend here, or a caller's own
// UseCgroupFD with cgroup2).
func (p *Process) makeCgroup(attr *syscall.SysProcAttr) (*cgroup, error) {
	if p.b.noCgroup || forceSampling.Load() {
		return nil, nil
	}
	be := p.b.backend
	if be == nil {
		var err error
		if be, err = backendFor(p.b.cgParent); err != nil {
			if p.b.cgParent != "" {
				return nil, err
			}
			return nil, nil
		}
	}
	if be.v2 && attr.UseCgroupFD {
		return nil, nil
	}
	var mem int64
	if p.b.memSet {
		mem = max(p.b.mem, 1)
	}
	return newCgroup(be, mem, p.b.maxProcs)
}

// forceSampling puts every child on the sampling backend, as
// WithoutCgroup does: for the package's tests of that backend.
var forceSampling atomic.Bool

// backendRef is a cgroup backend picked for a child by the package's
// tests (nil: the one found for this process).
type backendRef = *cgBackend

type rlimit struct {
	res int
	v   uint64
}

// rlimits returns the rlimits the child gets from the run's bounds.
func (p *Process) rlimits() []rlimit {
	var rl []rlimit
	if p.b.fileSet {
		rl = append(rl, rlimit{unix.RLIMIT_FSIZE, uint64(p.b.file)})
	}
	if p.b.cpuSet {
		// A backstop: whole seconds, one more than left (the watchdog
		// stops the child first); SIGXCPU at it, SIGKILL a second later.
		s := uint64((time.Duration(p.b.cpu)+time.Second-1)/time.Second) + 1
		rl = append(rl, rlimit{unix.RLIMIT_CPU, s})
	}
	if p.b.dataLimit && p.b.memSet {
		rl = append(rl, rlimit{unix.RLIMIT_DATA, uint64(max(p.b.mem, 1))})
	}
	return rl
}

// setRlimits lowers the child's rlimits to rl (never raising one it has).
func setRlimits(pid int, rl []rlimit) error {
	for _, r := range rl {
		var old unix.Rlimit
		if err := unix.Prlimit(pid, r.res, nil, &old); err != nil {
			return err
		}
		cur, hard := min(r.v, old.Max), old.Max
		if r.res == unix.RLIMIT_CPU {
			hard = min(r.v+1, old.Max) // SIGKILL one second after SIGXCPU
		} else {
			hard = cur
		}
		if err := unix.Prlimit(pid, r.res, &unix.Rlimit{Cur: cur, Max: hard}, nil); err != nil {
			return err
		}
	}
	return nil
}

// selfMaxRSS returns this process's peak resident memory in bytes
// (getrusage RUSAGE_SELF), 0 if it cannot be read.
func selfMaxRSS() int64 {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return ru.Maxrss * 1024 // KiB on Linux
}

// ownMaxRSS returns the child's peak resident memory from its rusage's
// maxrss (bytes), or 0 when that figure may not be the child's own.
//
// At execve Linux records the peak RSS of the address space being
// replaced in the process's maxrss, and reports the larger of that and
// the new program's peak at exit. The address space a child of this
// process replaces is this process's: Go starts children with
// CLONE_VM|CLONE_VFORK (and a fork's copy starts with the parent's
// resident pages). So maxrss is at least what this process had held by
// then: never more than selfMaxRSS, read after the execve. A maxrss above
// it is the child's own peak (or a descendant's it reaped); one at or
// below it says nothing about the child, and the samples stand alone.
func (p *Process) ownMaxRSS(maxRSS int64) int64 {
	if maxRSS <= p.plat.selfMaxRSS {
		return 0
	}
	return maxRSS
}

// si_code values of SIGCHLD (linux/signal.h).
const (
	cldTrapped = 4
	cldStopped = 5
)

// sigchld is the start of the SIGCHLD siginfo that waitid fills in.
type sigchld struct {
	signo, errno, code, _ int32
	pid, uid, status      int32
}

// waitTrap waits, without reaping, until the traced child stops after its
// execve (true) or dies (false: killed before it could run).
func waitTrap(pid int) (bool, error) {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WSTOPPED|unix.WEXITED|unix.WNOWAIT, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false, err
		}
		c := (*sigchld)(unsafe.Pointer(&info)).code
		return c == cldTrapped || c == cldStopped, nil
	}
}

// waitExit closes p.exited when the child has exited, leaving it to be
// reaped by cmd.Wait (so its process group id cannot be reused while the
// watchdog may still kill the group). With a pidfd it parks in the
// runtime's poller until the pidfd is readable (the child exited), which
// holds no OS thread; without one it blocks a thread in waitid.
func (p *Process) waitExit() {
	defer close(p.exited)
	if f := p.plat.pidfd; f != nil {
		defer f.Close()
		if rc, err := f.SyscallConn(); err == nil {
			err = rc.Read(func(uintptr) bool { return exitedNow(p.plat.pgid) })
			if err == nil {
				return
			}
		}
	}
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, p.plat.pgid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			return
		}
	}
}

// exitedNow reports whether the child pid has exited (without reaping it);
// an error (it was reaped) counts as exited.
func exitedNow(pid int) bool {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT|unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		return err != nil || (*sigchld)(unsafe.Pointer(&info)).pid != 0
	}
}

// killGroup kills the child's process group, and the descendants that left
// it (setpgid, setsid) while their parent in the tree still lives: the
// tree is walked again just before, so that only processes found now are
// killed (a pid from an older sample could belong to another process by
// now).
func (p *Process) killGroup() {
	if cg := p.plat.cg; cg != nil {
		cg.kill(time.Now().Add(killBound))
		return
	}
	s := &p.plat.smp
	s.walk(p.plat.pgid)
	_ = unix.Kill(-p.plat.pgid, unix.SIGKILL)
	for i, pid := range s.pids {
		if s.pgrps[i] != p.plat.pgid {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	}
}

// limitKill stops the child because of err (a limit, or the run's end).
func (p *Process) limitKill(err error) {
	p.setCause(err)
	p.killGroup()
}

// watch is the watchdog: it samples and charges the child's tree while it
// runs, kills it on a limit or when ctx is done, and kills what is left of
// its group when it exits.
func (p *Process) watch() {
	defer close(p.watchEnd)
	done := p.ctx.Done()
	var tick, grace <-chan time.Time
	var timer *time.Timer
	if p.t != nil {
		timer = time.NewTimer(minInterval)
		defer timer.Stop()
		tick = timer.C
	}
	var graceTimer *time.Timer
	defer func() {
		if graceTimer != nil {
			graceTimer.Stop()
		}
	}()
	for {
		select {
		case <-p.exited:
			if p.t != nil && p.getCause() == nil {
				// The zombie's times include all it reaped. A limit they
				// pass is reported by Wait (the child is gone already).
				var err error
				if cg := p.plat.cg; cg != nil {
					err = p.chargeCgroup(cg.stats())
				} else {
					err = p.chargeSample(p.plat.smp.walk(p.plat.pgid))
				}
				if err != nil {
					p.setLate(err)
				}
			}
			p.killGroup()
			return
		case <-done:
			done = nil
			select {
			case <-p.exited:
				continue // it exited first: its own result stands
			default:
			}
			p.setCause(ctxErr(p.ctx, p.t))
			if p.cmd.Cancel != nil {
				_ = p.cmd.Cancel()
			}
			if p.cmd.Cancel != nil && p.cmd.WaitDelay > 0 {
				graceTimer = time.NewTimer(p.cmd.WaitDelay)
				grace = graceTimer.C
			} else {
				p.killGroup()
			}
			tick = nil
		case <-grace:
			grace = nil
			p.killGroup()
		case <-tick:
			if next, ok := p.sample(); ok {
				timer.Reset(next)
			} else {
				tick = nil // killed: wait for it to exit
			}
		}
	}
}

// sample samples and charges the child's tree, and returns when to sample
// next, or false when it killed the child.
func (p *Process) sample() (time.Duration, bool) {
	// CheckFileSize(0) charges nothing: it fails when the run was stopped
	// (by its tenant, its timeout) or has ended, leaving its child behind.
	if err := p.t.CheckFileSize(0); err != nil {
		p.limitKill(err)
		return 0, false
	}
	var threads int
	if cg := p.plat.cg; cg != nil {
		st := cg.stats()
		if err := p.chargeCgroup(st); err != nil {
			p.limitKill(err)
			return 0, false
		}
		threads = int(st.tasks)
	} else {
		ts := p.plat.smp.walk(p.plat.pgid)
		if err := p.chargeSample(ts); err != nil {
			p.limitKill(err)
			return 0, false
		}
		p.notePeakProcesses(int64(ts.threads))
		if p.b.maxProcs > 0 && int64(ts.threads) > p.b.maxProcs {
			p.limitKill(p.procErr())
			return 0, false
		}
		threads = ts.threads
	}
	next := maxInterval
	if left, ok := p.t.Remaining(reslimit.CPUTime); ok {
		n := min(max(threads, 1), runtime.NumCPU())
		next = min(next, time.Duration(left)/time.Duration(n))
	}
	if left, ok := p.t.Remaining(reslimit.Memory); ok {
		next = min(next, time.Duration(left*int64(time.Second)/memRate))
	}
	if left, ok := p.t.Remaining(reslimit.Timeout); ok {
		next = min(next, time.Duration(left)+time.Millisecond)
	}
	return max(next, minInterval), true
}

// chargeCgroup charges what the child's cgroup used to the run; an OOM
// kill in it (the memory the run had left is used up) or a fork refused at
// the task cap is a limit error.
func (p *Process) chargeCgroup(st cgStats) error {
	p.notePeakProcesses(st.tasksPeak)
	if st.oomKills > 0 && p.b.memSet {
		return p.memErr(st)
	}
	if st.pidsMax > 0 && p.b.maxProcs > 0 {
		return p.procErr()
	}
	if err := p.chargeCPU(st.cpu); err != nil {
		return err
	}
	return p.chargeMemory(st.mem)
}

// memErr is the error for a child whose cgroup met its memory limit, the
// memory the run (and its tenant) had left when it started.
func (p *Process) memErr(st cgStats) error {
	le := &reslimit.LimitError{Resource: reslimit.Memory, Limit: p.b.mem, Used: st.peak, Requested: 1}
	if p.b.memOwn {
		le.Limit = p.t.Limits().MaxMemoryBytes
		le.Used = le.Limit - p.b.mem + st.peak
	} else if a := p.t.Account(); a != nil {
		le.Tenant = a.Name()
		if ls, ok := a.Stats().LimitStatus[reslimit.Memory]; ok {
			le.Limit, le.Used = ls.Limit, ls.Limit-p.b.mem+st.peak
		}
	}
	return le
}

// chargeSample charges a sample's CPU time and memory to the run.
func (p *Process) chargeSample(ts treeSample) error {
	if err := p.chargeCPU(ts.cpu); err != nil {
		return err
	}
	return p.chargeMemory(ts.rss)
}

func (p *Process) wait() error {
	<-p.watchEnd
	werr := p.cmd.Wait()
	if ioErr := p.stdio.wait(p.cmd.WaitDelay); werr == nil {
		werr = ioErr
	}
	var cpu time.Duration
	var maxRSS int64
	var ws syscall.WaitStatus
	if ps := p.cmd.ProcessState; ps != nil {
		cpu = ps.UserTime() + ps.SystemTime()
		if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
			maxRSS = p.ownMaxRSS(ru.Maxrss * 1024) // KiB on Linux
		}
		ws, _ = ps.Sys().(syscall.WaitStatus)
	}
	var xfsz int64
	if p.plat.xfsz >= 0 {
		// The child and its tree are gone (but for descendants that left
		// the group under the sampling backend): their counts are in.
		xfsz = readXfszCounter(p.plat.xfsz)
		unix.Close(p.plat.xfsz)
		p.plat.xfsz = -1
	}
	var cgErr error
	if cg := p.plat.cg; cg != nil {
		// The watchdog emptied the group when the child exited: these are
		// its final figures, orphans' CPU and tmpfs pages included.
		st := cg.stats()
		p.notePeakProcesses(st.tasksPeak)
		cpu, maxRSS = max(cpu, st.cpu), st.peak
		if st.oomKills > 0 && p.b.memSet {
			p.setCause(p.memErr(st))
		} else if st.pidsMax > 0 && p.b.maxProcs > 0 {
			p.setCause(p.procErr())
		}
		cgErr = cg.remove()
	}
	var ferr error
	if p.t != nil {
		ferr = p.finish(max(cpu, p.Usage().CPUTime), maxRSS)
	}
	if werr == nil {
		werr = cgErr
	}
	if c := p.getCause(); c != nil {
		return c
	}
	if p.b.fileSet && (xfsz > 0 || ws.Signaled() && ws.Signal() == syscall.SIGXFSZ ||
		ws.Exited() && ws.ExitStatus() == 128+int(syscall.SIGXFSZ)) {
		return p.fileErr()
	}
	if ferr == nil {
		ferr = p.getLate()
	}
	if ferr != nil {
		return ferr
	}
	if p.b.cpuSet && ws.Signaled() && ws.Signal() == syscall.SIGXCPU {
		// RLIMIT_CPU's backstop fired (the final charge above normally
		// reports it first): the limit is what the run had left.
		return &reslimit.LimitError{Resource: reslimit.CPUTime, Limit: p.b.cpu, Used: int64(cpu)}
	}
	return werr
}

// fileErr is the error for a child stopped by RLIMIT_FSIZE: the run's
// FileSize refusal (counted as one), for a write of at least one byte
// past the limit.
func (p *Process) fileErr() error {
	err := p.t.CheckFileSize(p.b.file + 1)
	var le *reslimit.LimitError
	if errors.As(err, &le) && le.Resource == reslimit.FileSize {
		return err
	}
	return &reslimit.LimitError{Resource: reslimit.FileSize, Limit: p.b.file, Requested: p.b.file + 1}
}
