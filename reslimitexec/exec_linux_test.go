//go:build linux

package reslimitexec_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/reslimitexec"
)

// runIn runs fn as a reslimit run with limits l (charged to acct when not
// nil) and returns the run's usage and error.
func runIn(t *testing.T, l reslimit.Limits, acct *reslimit.Account, fn func(ctx context.Context) error) (reslimit.Usage, error) {
	t.Helper()
	var opts []reslimit.Option
	if acct != nil {
		opts = append(opts, reslimit.WithAccount(acct))
	}
	return reslimit.Run(context.Background(), l, fn, opts...)
}

func limitErr(t *testing.T, err error, r reslimit.Resource) *reslimit.LimitError {
	t.Helper()
	var le *reslimit.LimitError
	if !errors.As(err, &le) || le.Resource != r {
		t.Fatalf("error %v (%T), want a %s *LimitError", err, err, r)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		t.Fatalf("error %v is also an *exec.ExitError", err)
	}
	return le
}

// maxRSS is the peak resident memory of an exited child, from its rusage.
func maxRSS(cmd *exec.Cmd) int64 {
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		return ru.Maxrss * 1024
	}
	return 0
}

func TestEnforcementIsPtraceHere(t *testing.T) {
	t.Logf("enforcement: %s", reslimitexec.Enforcement())
	if reslimitexec.Enforcement() != "ptrace" {
		t.Skip("ptrace is not permitted here: rlimits are set just after the start")
	}
}

// The rlimits are there when the child's program starts: a shell prints
// them as its first command.
func TestRlimitsInPlaceAtStart(t *testing.T) {
	if !reslimitexec.PtraceWorks() {
		t.Skip("ptrace is not permitted here: a child may run its first command before its rlimits")
	}
	var out strings.Builder
	_, err := runIn(t, reslimit.Limits{MaxFileSize: 1 << 20, MaxCPUTime: 2500 * time.Millisecond}, nil, func(ctx context.Context) error {
		cmd := exec.Command("/bin/sh", "-c", "ulimit -f; ulimit -t")
		cmd.Stdout = &out
		return reslimitexec.Run(ctx, cmd)
	})
	if err != nil {
		t.Fatal(err)
	}
	// ulimit -f is in 512-byte blocks; -t is the CPU left rounded up + 1 s.
	if got := strings.Fields(out.String()); len(got) != 2 || got[0] != "2048" || got[1] != "4" {
		t.Fatalf("ulimit -f; ulimit -t printed %q, want 2048 and 4", out.String())
	}
}

func TestCPULimitStopsSpinner(t *testing.T) {
	const limit = 300 * time.Millisecond
	var cmd *exec.Cmd
	u, err := runIn(t, reslimit.Limits{MaxCPUTime: limit, Timeout: time.Minute}, nil, func(ctx context.Context) error {
		cmd = self("spin")
		return reslimitexec.Run(ctx, cmd)
	})
	le := limitErr(t, err, reslimit.CPUTime)
	child := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	t.Logf("stopped: %v; child rusage CPU %v, run CPU %v (limit %v, overshoot %v)", le, child, u.CPUTime, limit, u.CPUTime-limit)
	if u.CPUTime < limit {
		t.Fatalf("run CPU %v, want at least the limit %v", u.CPUTime, limit)
	}
	if u.CPUTime > limit+2*time.Second {
		t.Fatalf("run CPU %v: the spinner ran far past the limit %v", u.CPUTime, limit)
	}
	if child > u.CPUTime {
		t.Fatalf("child used %v by its rusage but the run was charged %v", child, u.CPUTime)
	}
}

// A grandchild that spins while the child only waits for it is stopped by
// the run's CPU limit: descendants' CPU counts.
func TestGrandchildCPUCounted(t *testing.T) {
	const limit = 300 * time.Millisecond
	u, gc, err := runDescendant(t, reslimit.Limits{MaxCPUTime: limit, Timeout: time.Minute}, self("forkspin"))
	limitErr(t, err, reslimit.CPUTime)
	t.Logf("run CPU %v (limit %v)", u.CPUTime, limit)
	waitGone(t, gc)
}

// readPid reads a pid printed on a line of r.
// runDescendant runs cmd (which prints the pid of a descendant it started
// on its first line of output) in a run limited by l and returns the run's
// usage, the descendant's pid and the run's error.
func runDescendant(t *testing.T, l reslimit.Limits, cmd *exec.Cmd) (reslimit.Usage, int, error) {
	t.Helper()
	var pid int
	u, err := runIn(t, l, nil, func(ctx context.Context) error {
		out, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		p, err := reslimitexec.Start(ctx, cmd)
		if err != nil {
			return err
		}
		pid = readPid(t, out)
		return p.Wait()
	})
	return u, pid, err
}

func readPid(t *testing.T, r interface{ Read([]byte) (int, error) }) int {
	t.Helper()
	line, err := bufio.NewReader(r).ReadString('\n')
	pid, perr := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || perr != nil {
		t.Fatalf("reading the grandchild's pid: %q %v %v", line, err, perr)
	}
	return pid
}

// waitGone waits until process pid no longer runs (it may remain a zombie
// of whatever reaps orphans here).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if err == unix.ESRCH {
		return
	}
	if err != nil {
		t.Fatalf("pidfd_open(%d): %v", pid, err)
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		// A pidfd is readable once its process has exited.
		n, err := unix.Poll(fds, int((30 * time.Second).Milliseconds()))
		if err == unix.EINTR {
			continue
		}
		if n != 1 {
			t.Fatalf("grandchild %d survived (poll: %d, %v)", pid, n, err)
		}
		return
	}
}

func TestSleepingChildChargedLittle(t *testing.T) {
	acct, err := reslimit.NewAccount("sleepy", reslimit.AccountLimits{MaxCPUTime: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	var p *reslimitexec.Process
	u, err := runIn(t, reslimit.Limits{}, acct, func(ctx context.Context) error {
		var err error
		if p, err = reslimitexec.Start(ctx, exec.Command("sleep", "0.3")); err != nil {
			return err
		}
		return p.Wait()
	})
	if err != nil {
		t.Fatal(err)
	}
	cu := p.Usage()
	t.Logf("sleep 0.3: child CPU %v, peak RSS %d KiB; run CPU %v, wall %v", cu.CPUTime, cu.PeakMemoryBytes>>10, u.CPUTime, u.WallTime)
	if cu.CPUTime > 100*time.Millisecond {
		t.Fatalf("a sleeping child was charged %v of CPU", cu.CPUTime)
	}
	if cu.PeakMemoryBytes <= 0 || u.PeakMemoryBytes < cu.PeakMemoryBytes {
		t.Fatalf("peak memory: child %d, run %d: want the child's in the run's", cu.PeakMemoryBytes, u.PeakMemoryBytes)
	}
	if u.MemoryBytes != 0 || acct.Stats().MemoryBytes != 0 {
		t.Fatalf("memory still held after the child exited: run %d, account %d", u.MemoryBytes, acct.Stats().MemoryBytes)
	}
}

// The child's CPU and memory appear in the run's Usage and the tenant's
// Stats and History.
func TestUsageBilledToTenant(t *testing.T) {
	ledger, err := reslimit.NewLedger(reslimit.AccountLimits{MaxCPUTime: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	acct := ledger.Account("acme")
	const limit = 200 * time.Millisecond
	u, err := runIn(t, reslimit.Limits{MaxCPUTime: limit, Timeout: time.Minute}, acct, func(ctx context.Context) error {
		return reslimitexec.Run(ctx, self("spin"))
	})
	limitErr(t, err, reslimit.CPUTime)
	st := acct.Stats()
	h := acct.History()
	if len(h) != 1 {
		t.Fatalf("history has %d entries, want 1", len(h))
	}
	t.Logf("run: CPU %v, peak %d KiB; tenant: CPU %v, peak %d KiB, calls %d; history: CPU %v, memory %d KiB, err %v",
		u.CPUTime, u.PeakMemoryBytes>>10, st.CPUTime, st.PeakMemoryBytes>>10, st.Calls, h[0].CPUTime, h[0].PeakMemoryBytes>>10, h[0].Err)
	if u.CPUTime < limit || st.CPUTime < limit || h[0].CPUTime < limit {
		t.Fatalf("CPU: run %v, tenant %v, history %v: want each at least %v", u.CPUTime, st.CPUTime, h[0].CPUTime, limit)
	}
	if u.PeakMemoryBytes <= 0 || st.PeakMemoryBytes <= 0 || h[0].PeakMemoryBytes <= 0 {
		t.Fatalf("peak memory: run %d, tenant %d, history %d: want the child's RSS", u.PeakMemoryBytes, st.PeakMemoryBytes, h[0].PeakMemoryBytes)
	}
	if st.MemoryBytes != 0 {
		t.Fatalf("tenant still holds %d bytes", st.MemoryBytes)
	}
	if st.Calls != 1 {
		t.Fatalf("tenant calls %d, want 1 (the child)", st.Calls)
	}
}

// baselineRSS is the resident memory of a sleeping test-binary child.
func baselineRSS(t *testing.T) int64 {
	t.Helper()
	var p *reslimitexec.Process
	_, err := runIn(t, reslimit.Limits{MaxMemoryBytes: 1 << 40, Timeout: 500 * time.Millisecond}, nil, func(ctx context.Context) error {
		var err error
		p, err = reslimitexec.Start(ctx, self("sleep"))
		if err != nil {
			return err
		}
		return p.Wait()
	})
	limitErr(t, err, reslimit.Timeout)
	return p.Usage().PeakMemoryBytes
}

func TestMemoryLimitStopsAllocator(t *testing.T) {
	base := baselineRSS(t)
	limit := base + 64<<20
	var cmd *exec.Cmd
	u, err := runIn(t, reslimit.Limits{MaxMemoryBytes: limit, Timeout: time.Minute}, nil, func(ctx context.Context) error {
		cmd = self("alloc", "1024")
		return reslimitexec.Run(ctx, cmd)
	})
	le := limitErr(t, err, reslimit.Memory)
	peak := maxRSS(cmd)
	t.Logf("child baseline RSS %d MiB, limit %d MiB: %v; child peak RSS %d MiB; run peak %d MiB",
		base>>20, limit>>20, le, peak>>20, u.PeakMemoryBytes>>20)
	if u.PeakMemoryBytes > limit {
		t.Fatalf("the run held %d bytes, over its limit %d", u.PeakMemoryBytes, limit)
	}
	if peak > 512<<20 {
		t.Fatalf("the child reached %d MiB before being stopped (limit %d MiB)", peak>>20, limit>>20)
	}
	if u.MemoryBytes != 0 {
		t.Fatalf("the run still holds %d bytes", u.MemoryBytes)
	}
}

// The tenant's MaxMemory (bytes held at once across its runs) binds a
// child too.
func TestTenantMemoryStopsAllocator(t *testing.T) {
	base := baselineRSS(t)
	acct, err := reslimit.NewAccount("small", reslimit.AccountLimits{MaxMemory: base + 32<<20})
	if err != nil {
		t.Fatal(err)
	}
	_, err = runIn(t, reslimit.Limits{Timeout: time.Minute}, acct, func(ctx context.Context) error {
		return reslimitexec.Run(ctx, self("alloc", "1024"))
	})
	le := limitErr(t, err, reslimit.Memory)
	if le.Tenant != "small" {
		t.Fatalf("error %v: want the tenant's limit", le)
	}
	if st := acct.Stats(); st.MemoryBytes != 0 || st.PeakMemoryBytes > base+32<<20 {
		t.Fatalf("tenant memory: held %d, peak %d", st.MemoryBytes, st.PeakMemoryBytes)
	}
}

// A Python child allocating 1 GiB under a 64 MiB limit, with RSS sampling
// alone and with the RLIMIT_DATA option.
func TestPythonAllocation(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not found")
	}
	const limit = 64 << 20
	for _, tc := range []struct {
		name string
		opts []reslimitexec.Option
	}{{"sampling", nil}, {"rlimit_data", []reslimitexec.Option{reslimitexec.WithDataLimit()}}} {
		t.Run(tc.name, func(t *testing.T) {
			var cmd *exec.Cmd
			start := time.Now()
			_, err := runIn(t, reslimit.Limits{MaxMemoryBytes: limit, Timeout: time.Minute}, nil, func(ctx context.Context) error {
				cmd = exec.Command(py, "-c", "b = bytearray(1 << 30)")
				return reslimitexec.Run(ctx, cmd, tc.opts...)
			})
			peak := maxRSS(cmd)
			t.Logf("python bytearray(1 GiB), limit 64 MiB, %s: %v after %v; child peak RSS %d MiB", tc.name, err, time.Since(start).Round(time.Millisecond), peak>>20)
			if err == nil {
				t.Fatal("the allocation succeeded")
			}
			if tc.opts == nil {
				limitErr(t, err, reslimit.Memory)
			}
			if peak > 256<<20 {
				t.Fatalf("the child reached %d MiB", peak>>20)
			}
		})
	}
}

func TestFileSizeLimit(t *testing.T) {
	const limit = 1 << 20
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		cmd  func(path string) *exec.Cmd
		want func(t *testing.T, err error)
	}{
		{"head killed by SIGXFSZ", func(path string) *exec.Cmd {
			return exec.Command("head", "-c", "10000000", "/dev/zero")
		}, nil},
		{"shell reports 153", func(path string) *exec.Cmd {
			return exec.Command("/bin/sh", "-c", `head -c 10000000 /dev/zero > "$1"; exit $?`, "sh", path)
		}, nil},
		{"go child gets EFBIG", func(path string) *exec.Cmd {
			return self("write", path)
		}, func(t *testing.T, err error) {
			// Go ignores SIGXFSZ: the write fails and the child exits 3;
			// a file_size error where the signal is counted (a tracefs is
			// mounted: see TestFileSizeIgnoredSIGXFSZ).
			var ee *exec.ExitError
			var le *reslimit.LimitError
			if errors.As(err, &le) && le.Resource == reslimit.FileSize {
				return
			}
			if !errors.As(err, &ee) || ee.ExitCode() != 3 {
				t.Fatalf("error %v, want the child's exit status 3 (or file_size)", err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
			u, err := runIn(t, reslimit.Limits{MaxFileSize: limit, Timeout: time.Minute}, nil, func(ctx context.Context) error {
				cmd := tc.cmd(path)
				if cmd.Args[0] == "head" {
					f, err := os.Create(path)
					if err != nil {
						return err
					}
					defer f.Close()
					cmd.Stdout = f
				}
				return reslimitexec.Run(ctx, cmd)
			})
			if tc.want != nil {
				tc.want(t, err)
			} else {
				le := limitErr(t, err, reslimit.FileSize)
				if le.Limit != limit || u.Refusals != 1 {
					t.Fatalf("error %v, refusals %d: want the limit %d, one refusal", le, u.Refusals, limit)
				}
			}
			fi, serr := os.Stat(path)
			if serr != nil {
				t.Fatal(serr)
			}
			t.Logf("%v; file size %d", err, fi.Size())
			if fi.Size() > limit {
				t.Fatalf("the file has %d bytes, over the limit %d", fi.Size(), limit)
			}
		})
	}
}

// On the run's timeout the whole group dies, grandchild included.
func TestTimeoutKillsGroup(t *testing.T) {
	_, gc, err := runDescendant(t, reslimit.Limits{Timeout: 300 * time.Millisecond}, self("forksleep"))
	limitErr(t, err, reslimit.Timeout)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%v is not context.DeadlineExceeded", err)
	}
	waitGone(t, gc)
}

// A child that exits leaves nothing of its group running.
func TestExitKillsLeftovers(t *testing.T) {
	var out strings.Builder
	err := reslimitexec.Run(context.Background(), func() *exec.Cmd {
		// The grandchild sleeps in the background, the child exits at once.
		cmd := exec.Command("/bin/sh", "-c", `sleep 3600 >/dev/null 2>&1 & echo $!`)
		cmd.Stdout = &out
		return cmd
	}())
	if err != nil {
		t.Fatal(err)
	}
	pid, perr := strconv.Atoi(strings.TrimSpace(out.String()))
	if perr != nil {
		t.Fatal(perr)
	}
	waitGone(t, pid)
}

func TestCancelCause(t *testing.T) {
	cause := errors.New("caller gave up")
	ctx, cancel := context.WithCancelCause(context.Background())
	cmd := self("forksleep")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p, err := reslimitexec.Start(ctx, cmd) // no tracker: unlimited, uncharged
	if err != nil {
		t.Fatal(err)
	}
	gc := readPid(t, out)
	cancel(cause)
	if err := p.Wait(); err != cause {
		t.Fatalf("Wait: %v, want the context's cause", err)
	}
	waitGone(t, gc)
}

// cmd.Cancel is called first, and the group killed after cmd.WaitDelay.
func TestCancelAndWaitDelay(t *testing.T) {
	for _, mode := range []string{"term", "ignoreterm"} {
		t.Run(mode, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cmd := self(mode)
			// Cancel needs a command made by CommandContext; its own
			// context never ends here.
			cc := exec.CommandContext(context.Background(), cmd.Path, cmd.Args[1:]...)
			cc.Env, cc.Stderr = cmd.Env, cmd.Stderr
			cmd = cc
			called := make(chan struct{})
			cmd.Cancel = func() error { close(called); return cmd.Process.Signal(syscall.SIGTERM) }
			// Long enough for a child that handles SIGTERM to exit on a
			// loaded machine; the one that ignores it is killed after it.
			cmd.WaitDelay = 10 * time.Second
			if mode == "ignoreterm" {
				cmd.WaitDelay = 100 * time.Millisecond
			}
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			p, err := reslimitexec.Start(ctx, cmd)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
				t.Fatal(err)
			}
			cancel()
			err = p.Wait()
			<-called
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Wait: %v, want context.Canceled", err)
			}
			ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
			if mode == "term" && !(ws.Exited() && ws.ExitStatus() == 0) {
				t.Fatalf("the child did not exit on its own after Cancel: %v", cmd.ProcessState)
			}
			if mode == "ignoreterm" && !(ws.Signaled() && ws.Signal() == syscall.SIGKILL) {
				t.Fatalf("the child was not killed after WaitDelay: %v", cmd.ProcessState)
			}
		})
	}
}

func TestNoTrackerRunsUnlimited(t *testing.T) {
	var out strings.Builder
	cmd := exec.Command("/bin/sh", "-c", "ulimit -f; ulimit -t")
	cmd.Stdout = &out
	if err := reslimitexec.Run(context.Background(), cmd); err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(out.String()); len(got) != 2 || got[0] != "unlimited" || got[1] != "unlimited" {
		t.Fatalf("limits without a tracker: %q", out.String())
	}
	// A failing child's *exec.ExitError comes through.
	err := reslimitexec.Run(context.Background(), exec.Command("/bin/sh", "-c", "exit 7"))
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Fatalf("exit 7: %v", err)
	}
}

func TestBadInput(t *testing.T) {
	bg := context.Background()
	if err := reslimitexec.Run(bg, nil); !errors.Is(err, reslimit.ErrInvalidArgument) {
		t.Fatalf("nil cmd: %v", err)
	}
	started := exec.Command("true")
	if err := started.Run(); err != nil {
		t.Fatal(err)
	}
	if err := reslimitexec.Run(bg, started); !errors.Is(err, reslimit.ErrInvalidArgument) {
		t.Fatalf("a cmd run already: %v", err)
	}
	traced := exec.Command("true")
	traced.SysProcAttr = &syscall.SysProcAttr{Ptrace: true}
	tr, _ := reslimit.NewTracker(reslimit.Limits{MaxFileSize: 1})
	if err := reslimitexec.Run(reslimit.NewContext(bg, tr), traced); !errors.Is(err, reslimit.ErrInvalidArgument) || traced.Process != nil {
		t.Fatalf("a cmd with Ptrace set: %v", err)
	}
	tr.End()

	cause := errors.New("gone")
	ctx, cancel := context.WithCancelCause(bg)
	cancel(cause)
	cmd := exec.Command("true")
	if err := reslimitexec.Run(ctx, cmd); err != cause || cmd.Process != nil {
		t.Fatalf("cancelled ctx: %v, started %v", err, cmd.Process != nil)
	}

	// A run that has ended, and one stopped by its CPU limit.
	ended, _ := reslimit.NewTracker(reslimit.Limits{})
	ended.End()
	cmd = exec.Command("true")
	if err := reslimitexec.Run(reslimit.NewContext(bg, ended), cmd); !errors.Is(err, reslimit.ErrClosed) || cmd.Process != nil {
		t.Fatalf("ended run: %v", err)
	}
	stopped, _ := reslimit.NewTracker(reslimit.Limits{MaxCPUTime: time.Millisecond})
	defer stopped.End()
	_ = stopped.AddCPUTime(2 * time.Millisecond)
	cmd = exec.Command("true")
	before := stopped.Usage()
	if err := reslimitexec.Run(reslimit.NewContext(bg, stopped), cmd); cmd.Process != nil {
		t.Fatalf("stopped run started a child (%v)", err)
	} else {
		limitErr(t, err, reslimit.CPUTime)
	}
	if after := stopped.Usage(); after.Calls != before.Calls || after.CPUTime != before.CPUTime {
		t.Fatalf("a refused start charged: %+v -> %+v", before, after)
	}
}

// A tenant whose CPU quota is used up starts nothing and is charged
// nothing more.
func TestExhaustedTenantStartsNothing(t *testing.T) {
	acct, err := reslimit.NewAccount("broke", reslimit.AccountLimits{MaxCPUTime: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	_, err = runIn(t, reslimit.Limits{Timeout: time.Minute}, acct, func(ctx context.Context) error {
		return reslimitexec.Run(ctx, self("spin"))
	})
	limitErr(t, err, reslimit.CPUTime)
	before := acct.Stats()
	if !before.Exhausted {
		t.Fatalf("tenant not exhausted: %+v", before)
	}
	var cmd *exec.Cmd
	_, err = runIn(t, reslimit.Limits{}, acct, func(ctx context.Context) error {
		cmd = exec.Command("true")
		return reslimitexec.Run(ctx, cmd)
	})
	if err == nil || (cmd != nil && cmd.Process != nil) {
		t.Fatalf("exhausted tenant: %v, started %v", err, cmd != nil && cmd.Process != nil)
	}
	t.Logf("exhausted tenant: %v", err)
	after := acct.Stats()
	if after.CPUTime != before.CPUTime || after.Calls != before.Calls {
		t.Fatalf("a refused start charged the tenant: %+v -> %+v", before, after)
	}
}

// A child left running when its run ends (Start without Wait) is killed:
// it would run uncharged.
func TestChildOfEndedRunKilled(t *testing.T) {
	tr, err := reslimit.NewTracker(reslimit.Limits{MaxMemoryBytes: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	p, err := reslimitexec.Start(reslimit.NewContext(context.Background(), tr), exec.Command("sleep", "3600"))
	if err != nil {
		t.Fatal(err)
	}
	tr.End()
	if err := p.Wait(); !errors.Is(err, reslimit.ErrClosed) {
		t.Fatalf("Wait: %v, want ErrClosed", err)
	}
}

func TestExecFailure(t *testing.T) {
	tr, _ := reslimit.NewTracker(reslimit.Limits{MaxFileSize: 1 << 20, MaxCPUTime: time.Second})
	defer tr.End()
	err := reslimitexec.Run(reslimit.NewContext(context.Background(), tr), exec.Command("/nonexistent/program"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Run of a missing program: %v", err)
	}
	if u := tr.Usage(); u.Calls != 1 || u.MemoryBytes != 0 {
		t.Fatalf("usage after a failed exec: %+v", u)
	}
}

// A live run of a tenant that another run exhausted starts no child: the
// check is reslimitexec's own (the run itself was admitted before).
func TestExhaustedTenantLiveRunStartsNothing(t *testing.T) {
	acct, err := reslimit.NewAccount("ops", reslimit.AccountLimits{MaxTotalOperations: 10})
	if err != nil {
		t.Fatal(err)
	}
	live, err := acct.Begin(reslimit.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer live.End()
	other, err := acct.Begin(reslimit.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if err := other.TrackOperations(10); err != nil {
		t.Fatal(err)
	}
	other.End()
	if _, ok := acct.Exhausted(); !ok {
		t.Fatal("the account is not exhausted")
	}
	before := live.Usage()
	cmd := exec.Command("true")
	err = reslimitexec.Run(reslimit.NewContext(context.Background(), live), cmd)
	le := limitErr(t, err, reslimit.Operations)
	if le.Tenant != "ops" || cmd.Process != nil {
		t.Fatalf("error %v, started %v", le, cmd.Process != nil)
	}
	if after := live.Usage(); after.Calls != before.Calls {
		t.Fatalf("a refused start charged a call: %+v -> %+v", before, after)
	}
}

// A descendant that left the process group (setsid) while its parent still
// runs is killed with the group.
func TestTimeoutKillsDescendantThatLeftTheGroup(t *testing.T) {
	if _, err := exec.LookPath("setsid"); err != nil {
		t.Skip("setsid not found")
	}
	_, gc, err := runDescendant(t, reslimit.Limits{Timeout: 300 * time.Millisecond}, exec.Command("/bin/sh", "-c", `setsid sleep 3600 & echo $!; wait`))
	limitErr(t, err, reslimit.Timeout)
	waitGone(t, gc)
}

// A child is billed what it held, not the peak of the process that started
// it: Linux keeps the old address space's peak RSS in the child's rusage at
// execve, and Go starts children with vfork, so the rusage peak of
// /bin/true started by a process that once held 256 MiB is 256 MiB. The
// starting process is a helper child, so that this test process's own
// peak stays small for the other tests.
func TestChildNotBilledParentPeak(t *testing.T) {
	const hold, limit = 256, 64 // MiB
	cmd := self("bigparent", strconv.Itoa(hold), strconv.Itoa(limit), "/bin/true")
	out, err := cmd.Output()
	t.Logf("a process holding %d MiB ran /bin/true under %d MiB: %q", hold, limit, out)
	if err != nil {
		t.Fatalf("/bin/true failed: %v", err)
	}
	f := strings.Fields(string(out))
	if len(f) != 3 || f[2] != strconv.Itoa(hold) {
		t.Fatalf("output %q, want the child's and the run's peaks and %d", out, hold)
	}
	for _, s := range f[:2] {
		peak, err := strconv.ParseInt(s, 10, 64)
		if err != nil || peak < 0 || peak > 16<<20 {
			t.Fatalf("/bin/true billed a peak of %s bytes (%v), want a small one", s, err)
		}
	}
}

// runBounded runs fn in a goroutine and returns its error and how long it
// took; if it has not returned within limit, it calls unblock (which must
// make fn return) and fails the test.
func runBounded(t *testing.T, limit time.Duration, fn func() error, unblock func()) (error, time.Duration) {
	t.Helper()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- fn() }()
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case err := <-done:
		return err, time.Since(start)
	case <-timer.C:
		unblock()
		err := <-done
		t.Fatalf("Run had not returned after %v (then, unblocked: %v)", limit, err)
		return nil, 0
	}
}

// The run's timeout bounds Run even when the child's output goes to a
// writer that blocks (an io.Pipe nobody reads): exec.Cmd.Wait would wait
// for the copy for ever.
func TestTimeoutWithBlockedStdoutWriter(t *testing.T) {
	const timeout = 300 * time.Millisecond
	pr, pw := io.Pipe()
	defer pr.Close() // releases a copy abandoned in pw.Write
	err, took := runBounded(t, 10*time.Second, func() error {
		_, err := runIn(t, reslimit.Limits{Timeout: timeout}, nil, func(ctx context.Context) error {
			cmd := exec.Command("/bin/sh", "-c", "echo started; exec sleep 3600")
			cmd.Stdout = pw
			return reslimitexec.Run(ctx, cmd)
		})
		return err
	}, func() { pr.Close() })
	t.Logf("Run returned after %v: %v", took, err)
	limitErr(t, err, reslimit.Timeout)
	if bound := timeout + 2*reslimitexec.DefaultWaitDelay; took > bound+2*time.Second {
		t.Fatalf("Run returned %v after its start, want about %v at most", took, bound)
	}
}

// A setsid descendant that outlives the child and holds its output pipe
// does not hold up Run past the documented bound (the sampling backend:
// with a cgroup the descendant dies with the child).
func TestDescendantHoldingStdout(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	killEscapee := func() {
		b, err := os.ReadFile(pidFile)
		if err != nil {
			return
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
			_ = unix.Kill(pid, unix.SIGKILL)
			waitGone(t, pid)
		}
	}
	defer killEscapee()
	var out strings.Builder
	err, took := runBounded(t, 10*time.Second, func() error {
		_, err := runIn(t, reslimit.Limits{Timeout: time.Minute}, nil, func(ctx context.Context) error {
			cmd := self("escape", pidFile)
			cmd.Stdout = &out
			return reslimitexec.Run(ctx, cmd, reslimitexec.WithoutCgroup())
		})
		return err
	}, killEscapee)
	t.Logf("Run returned after %v: %v; output %q", took, err, out.String())
	if !errors.Is(err, exec.ErrWaitDelay) {
		t.Fatalf("Run: %v, want exec.ErrWaitDelay", err)
	}
	if out.String() != "done\n" {
		t.Fatalf("output %q, want the child's", out.String())
	}
	if bound := 2 * reslimitexec.DefaultWaitDelay; took > bound+2*time.Second {
		t.Fatalf("Run returned %v after its start, want about %v at most", took, bound)
	}
}

// Output copied through reslimitexec's own pipes arrives whole, stdin is
// fed, and Stdout and Stderr that are one writer share one pipe (one Write
// at a time).
func TestStdioCopied(t *testing.T) {
	var out strings.Builder
	in := strings.NewReader(strings.Repeat("x", 1<<20))
	cmd := exec.Command("/bin/sh", "-c", "wc -c; echo err >&2; echo out")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = in, &out, &out
	if err := reslimitexec.Run(context.Background(), cmd); err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(out.String()); len(got) != 3 || got[0] != "1048576" || got[1] != "err" || got[2] != "out" {
		t.Fatalf("output %q", out.String())
	}
	if cmd.Stdin != in || cmd.Stdout != &out || cmd.Stderr != &out {
		t.Fatal("cmd's Stdin, Stdout, Stderr were not given back")
	}
	// A writer that fails: its error is Wait's.
	cmd = exec.Command("/bin/sh", "-c", "echo out")
	werr := errors.New("writer broke")
	cmd.Stdout = failWriter{werr}
	if err := reslimitexec.Run(context.Background(), cmd); err != werr {
		t.Fatalf("Run with a failing writer: %v", err)
	}
}

type failWriter struct{ err error }

func (w failWriter) Write([]byte) (int, error) { return 0, w.err }
