// Package reslimitexec runs child processes under the limits of a reslimit
// run, so that MaxCPUTime, MaxMemoryBytes (and the tenant's MaxMemory and
// MaxCPUTime) and MaxFileSize bind a program that does not call reslimit:
// a python3 -c "<code an LLM wrote>", a user's shell script.
//
//	cmd := exec.Command("python3", "-c", code)
//	cmd.Stdout = &out
//	err := reslimitexec.Run(ctx, cmd) // ctx: inside reslimit.Run / Limit, or reslimit.NewContext
//	var le *reslimit.LimitError
//	if errors.As(err, &le) { ... } // cpu_time, memory, file_size, timeout
//
// # Bounds
//
// The bounds are what the run in ctx (reslimit.FromContext) may still use
// when the child starts, the tighter of the run's own limits, its account's
// and its parent run's (Tracker.Remaining), and the run's context for the
// wall time. Without a tracker in ctx the child runs unlimited and
// uncharged (the nil-tracker rule); only ctx's cancellation still kills it.
//
// # Backends, on Linux
//
// Where this process may make cgroups (root, or a delegated subtree), each
// child runs in a cgroup of its own, made under this process's cgroup (or
// WithCgroupParent's) and removed after it: "cgroup2" (the child is
// cloned into it, CLONE_INTO_CGROUP) or "cgroup1" (the memory, pids,
// cpuacct and freezer hierarchies; the child is moved in during the ptrace
// stop after its execve, before its first instruction). Enforcement and
// Process.Enforcement name the backend. Membership cannot be left, so with
// a cgroup:
//
//   - CPU time is the cgroup's (cpuacct.usage, cpu.stat): every process
//     that ever ran in it, orphans and setsid escapees included, charged
//     live by the watchdog and exactly at the end;
//   - memory held and its peak are the cgroup's (memory.usage_in_bytes and
//     max_usage_in_bytes, memory.current and memory.peak), so page cache
//     and tmpfs files (/dev/shm) the tree writes count; the kernel holds
//     the tree to the memory the run (and its tenant) had left when it
//     started (memory.limit_in_bytes, memory.max), and an OOM kill in the
//     group is a *reslimit.LimitError{Resource: Memory};
//   - the kernel caps the tasks (processes and threads) of the tree at
//     WithMaxProcesses (DefaultMaxProcesses); a fork refused at the cap
//     stops the run with a *reslimit.LimitError{Resource: Processes};
//   - on a limit, the timeout, cancellation, or the child's exit, every
//     process in the group is killed (cgroup.kill; v1: freeze, kill each,
//     thaw, until empty), and Wait returns once the group is empty (at
//     most 5 s after the kill: a process stuck in the kernel past that
//     leaves its cgroup behind, named reslimitexec-<pid>-<n>).
//
// Without a cgroup (WithoutCgroup, or none can be made) the sampling
// backend below applies ("ptrace" or "after-start").
//
// # What is enforced, on Linux (the sampling backend)
//
//   - CPU time: a watchdog samples the user+system CPU of the child and of
//     its descendants (the process CPU clock of each process in the tree,
//     plus what each has reaped from its own children) and charges what it
//     finds to the run with Tracker.AddCPUTime, so the run's MaxCPUTime and
//     the tenant's CPU quota (and its watchdog) see it while the child runs.
//     When the run has no CPU time left the process group is killed and
//     the caller gets a *reslimit.LimitError{Resource: CPUTime}. The
//     watchdog samples after the CPU left divided by the threads that could
//     use it (between 2 ms and 50 ms), so the overshoot is about one
//     sampling interval per CPU. At exit the final figure is the larger of
//     what was sampled and the child's rusage. RLIMIT_CPU is set to the CPU
//     left rounded up to whole seconds, plus one, as a backstop.
//   - Memory: the resident set size (VmRSS) of the child and its
//     descendants counts as memory the run holds (TrackMemory and
//     ReleaseMemory of the changes), so the run's Usage, the tenant's
//     MaxMemory and a Monitor see it; it is given back when the child exits.
//     A child whose RSS would take the run past what it may hold is killed
//     and the caller gets a *reslimit.LimitError{Resource: Memory}. RSS is
//     sampled (see "Memory: sampling, and the rlimit option" below), so a
//     child can be seen above the limit by what it allocates in one
//     sampling interval; the interval shrinks as the child nears the limit.
//     At exit the peak is also taken from the child's rusage, but only
//     when it is above this process's own peak: Linux reports in a child's
//     rusage the peak of the address space its execve replaced, which for
//     a child started by Go (vfork) is this process's, so a smaller figure
//     is not the child's and a short-lived child started by a large server
//     is billed only what was sampled.
//   - File size: RLIMIT_FSIZE is set to the run's MaxFileSize, so no file
//     the child (or a descendant) writes grows past it; the writer gets
//     SIGXFSZ (or EFBIG, if it ignores the signal, as Python and Go
//     programs do). A child killed by SIGXFSZ, or exiting with status 153
//     (128+SIGXFSZ: a shell reporting a command killed by it), yields a
//     *reslimit.LimitError{Resource: FileSize}. So does a tree that raised
//     SIGXFSZ and ignored it, whatever its exit status, where a tracefs is
//     mounted (systemd mounts /sys/kernel/tracing) and perf events are
//     permitted (root, CAP_PERFMON): a perf counter of the
//     signal:signal_generate tracepoint, filtered to SIGXFSZ, is opened on
//     the child before its first instruction and inherited by every thread
//     and process it starts (the kernel fires the tracepoint before it
//     finds the signal ignored). Elsewhere a child that ignores the signal
//     reports EFBIG its own way. (Either way, a SIGXFSZ the tree sends with
//     kill counts as one raised.)
//   - Wall time and cancellation: when ctx is done (the run's Timeout, its
//     caller's cancellation, its tenant stopping it) the whole process
//     group is killed with SIGKILL: the child, its descendants in the group,
//     and those that left it (setsid, setpgid) while their parent in the
//     child's tree still runs. If cmd.Cancel is set it is called first and the
//     group gets cmd.WaitDelay to exit before it is killed. The error is
//     context.Cause(ctx): the run's timeout *reslimit.LimitError, or the
//     caller's cause. When the child exits, what is left of its process
//     group is killed too, and a child still running when its run ends
//     (Start without Wait) is killed with reslimit.ErrClosed: a run's
//     processes do not outlive it, uncharged.
//
// The limits are in place before the child's program runs its first
// instruction: the child is started with PTRACE_TRACEME, so the kernel
// stops it right after execve; the parent sets its rlimits with prlimit
// and detaches. Where ptrace is not permitted (a seccomp profile, Yama
// ptrace_scope 3, a parent that is itself traced) the rlimits are set
// right after the child starts, and the child runs unlimited by them from
// its execve until the prlimit lands (measured: 6 of 300 /bin/sh children
// ran their first command before it; 0 of 300 with ptrace); Enforcement
// reports which.
// The sampled limits (CPU, memory) are sampled from the start either way.
//
// # Memory: sampling, and the rlimit option
//
// RSS sampling is the default because it measures what the tenant's
// MaxMemory means (memory held) and stops the child with a Memory
// *LimitError. WithDataLimit adds RLIMIT_DATA set to the memory left, so
// an allocation past it fails in the child (malloc returns NULL; Python
// raises MemoryError) before any page is touched; the child then fails in
// its own way (an *exec.ExitError), and programs that reserve large
// writable mappings up front (binaries built with -race, some runtimes)
// cannot start under it. See docs/untrusted-code.md in the reslimit
// repository for the measurements.
//
// # Elsewhere
//
// On other platforms Run and Start build and degrade: no rlimits and no
// sampling; the child (not its group) is killed when ctx is done, and its
// CPU time is charged after it exits from its rusage (which may take the
// run over MaxCPUTime after the fact: the error is then the CPU
// *LimitError). Enforcement returns "none" there.
//
// # Not a sandbox
//
// This is resource limiting, not isolation: the child can use the network
// and read and write any file its user can. Without a cgroup it can also
// leave the process group with setsid or setpgid (and, once its parent
// has exited, escape the watchdog and the kill), and use memory that is
// not resident (swap) or not its own (the page cache, tmpfs files). Run
// it under a separate user, namespaces, seccomp or a VM when it must not
// do those things: docs/untrusted-code.md in the reslimit repository has a
// recipe that runs the child as bwrap (bubblewrap) under Run, so that
// bwrap cuts the network and the files while Run bounds and bills it.
//
// # Options
//
// Invalid values are errors at construction, which for this package is
// Start (and Run): before anything is started or charged it returns an
// error wrapping reslimit.ErrInvalidLimits (a negative WithMaxProcesses) or
// reslimit.ErrInvalidArgument (a WithCgroupParent path that is not
// absolute, a nil context or command), rather than ignoring the value. A
// nil Option is skipped.
package reslimitexec
