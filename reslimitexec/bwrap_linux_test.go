//go:build linux

package reslimitexec_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/reslimitexec"
)

// The recipe of docs/untrusted-code.md ("Sandboxing: reslimitexec around
// bwrap"): a child run by reslimitexec under bubblewrap has no network and
// sees only /usr (read-only) and a private /tmp, and its limits and bill
// hold as without bwrap.

func init() { childModes["connect"] = childConnect }

// childConnect (connect ADDR) dials ADDR over TCP and reports on stdout
// "connected" (exit 0) or "failed: <error>" (exit 3).
func childConnect(args []string) int {
	c, err := net.DialTimeout("tcp", args[0], 10*time.Second)
	if err != nil {
		fmt.Println("failed:", err)
		return 3
	}
	c.Close()
	fmt.Println("connected")
	return 0
}

// bwrapArgs are bwrap's options of the recipe: every namespace bwrap can
// make (no network: a loopback of its own), /usr read-only with /bin,
// /sbin and /lib* as on the host, a private /proc, /dev and /tmp, and the
// sandbox killed with bwrap.
func bwrapArgs() []string {
	args := []string{
		"--unshare-all", "--die-with-parent", "--new-session",
		"--ro-bind", "/usr", "/usr",
		"--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
	}
	for _, d := range []string{"/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"} {
		if target, err := os.Readlink(d); err == nil {
			args = append(args, "--symlink", target, d) // merged /usr: /bin -> usr/bin
		} else if _, err := os.Stat(d); err == nil {
			args = append(args, "--ro-bind", d, d)
		}
	}
	return args
}

// bwrapCmd returns a command running prog under bwrap, with extra options
// (binds) after the recipe's.
func bwrapCmd(extra []string, prog ...string) *exec.Cmd {
	args := append(bwrapArgs(), extra...)
	args = append(args, "--")
	return exec.Command("bwrap", append(args, prog...)...)
}

// needBwrap skips the test where bwrap is not installed or cannot make its
// namespaces here (a container without CAP_SYS_ADMIN whose seccomp profile
// refuses user namespaces, a kernel without them).
func needBwrap(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("bwrap"); err != nil {
		t.Skip("bwrap not found: install bubblewrap (Debian: apt-get install bubblewrap)")
	}
	out, err := bwrapCmd(nil, "/bin/sh", "-c", "echo ok").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Skipf("bwrap cannot make its sandbox here: %v: %s", err, bytesTrim(out))
	}
}

func bytesTrim(b []byte) string { return strings.TrimSpace(string(b)) }

// selfUnderBwrap runs the test binary as a child in mode under bwrap, the
// binary bound read-only at its own path (after the private /tmp, which
// go test's build directory may be under).
func selfUnderBwrap(t *testing.T, mode string, args ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := bwrapCmd([]string{"--ro-bind", exe, exe, "--setenv", childEnv, mode}, append([]string{exe}, args...)...)
	cmd.Stderr = os.Stderr
	return cmd
}

// pending reports whether ln has a connection waiting to be accepted,
// without waiting: a connect that succeeded completed its handshake
// (queued it) before the connecting process saw it succeed.
func pending(t *testing.T, ln *net.TCPListener) bool {
	t.Helper()
	rc, err := ln.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var perr error
	if err := rc.Control(func(fd uintptr) {
		n, perr = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0)
	}); err != nil {
		t.Fatal(err)
	}
	if perr != nil {
		t.Fatal(perr)
	}
	return n > 0
}

// A child under bwrap cannot connect to a listener on the host's loopback;
// the same child without bwrap can.
func TestBwrapNoNetwork(t *testing.T) {
	needBwrap(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := l.(*net.TCPListener)
	defer ln.Close()
	addr := ln.Addr().String()
	limits := reslimit.Limits{MaxCPUTime: 10 * time.Second, MaxMemoryBytes: 256 << 20, Timeout: time.Minute}

	// Under bwrap: the child reports the failure, the listener has
	// nothing to accept.
	var out strings.Builder
	u, err := runIn(t, limits, nil, func(ctx context.Context) error {
		cmd := selfUnderBwrap(t, "connect", addr)
		cmd.Stdout = &out
		return reslimitexec.Run(ctx, cmd)
	})
	t.Logf("under bwrap: %v; child said %q; run CPU %v, peak %d KiB", err, strings.TrimSpace(out.String()), u.CPUTime, u.PeakMemoryBytes>>10)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 || !strings.HasPrefix(out.String(), "failed: ") {
		t.Fatalf("under bwrap: error %v, output %q; want the child's exit 3 after its dial failed", err, out.String())
	}
	if pending(t, ln) {
		t.Fatal("under bwrap: the listener got a connection")
	}

	// The control: the same child without bwrap connects.
	out.Reset()
	_, err = runIn(t, limits, nil, func(ctx context.Context) error {
		cmd := self("connect", addr)
		cmd.Stdout = &out
		return reslimitexec.Run(ctx, cmd)
	})
	if err != nil || strings.TrimSpace(out.String()) != "connected" {
		t.Fatalf("without bwrap: error %v, output %q; want connected", err, out.String())
	}
	if err := ln.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	c, err := ln.Accept() // queued before the child printed "connected"
	if err != nil {
		t.Fatalf("without bwrap: the listener got no connection: %v", err)
	}
	c.Close()
}

// A child under bwrap sees /usr read-only and a private /tmp, and none of
// the host's other files.
func TestBwrapFiles(t *testing.T) {
	needBwrap(t)
	dir := t.TempDir() // under the host's /tmp (or TMPDIR)
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	_, err := runIn(t, reslimit.Limits{Timeout: time.Minute}, nil, func(ctx context.Context) error {
		cmd := bwrapCmd(nil, "/bin/sh", "-c", `
			test -e "$1" && echo "sees $1"
			touch /usr/reslimitexec-bwrap 2>/dev/null && echo "wrote /usr"
			echo x > /tmp/mine && echo "tmp ok"`, "sh", secret)
		cmd.Stdout = &out
		return reslimitexec.Run(ctx, cmd)
	})
	if err != nil || strings.TrimSpace(out.String()) != "tmp ok" {
		t.Fatalf("error %v, output %q; want only %q", err, out.String(), "tmp ok")
	}
}

// markedProcs returns the host pids of the live (not zombie) processes
// whose command line contains marker.
func markedProcs(t *testing.T, marker string) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cl, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !strings.Contains(string(cl), marker) {
			continue
		}
		if st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); strings.Contains(string(st), ") Z ") {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// procCgroup returns the memory (v1) or unified (v2) cgroup of pid, as
// this process sees it.
func procCgroup(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	var unified string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		switch {
		case strings.Contains(","+f[1]+",", ",memory,"):
			return f[2]
		case f[0] == "0" && f[1] == "":
			unified = f[2]
		}
	}
	return unified
}

// A spinner in a session of its own inside bwrap's PID namespace, whose
// parent exited (it is reparented to bwrap's init, still in the child's
// tree), is stopped by the run's MaxCPUTime with a cpu_time *LimitError,
// billed about the limit and killed with its run, and the child counts one
// call, on both backends; with a cgroup backend it is in the child's
// cgroup. The spinner waits on stdin until the test has found it, so
// nothing depends on how fast it spins.
func TestBwrapLimitsAndBill(t *testing.T) {
	needBwrap(t)
	t.Run("default", func(t *testing.T) { testBwrapLimitsAndBill(t, reslimitexec.Enforcement()) })
	t.Run("sampling", func(t *testing.T) {
		reslimitexec.ForceSampling(t)
		testBwrapLimitsAndBill(t, "sampling")
	})
}

var bwrapMarkers int

// testBwrapLimitsAndBill is TestBwrapLimitsAndBill on the backend enf.
func testBwrapLimitsAndBill(t *testing.T, enf string) {
	cgroup := enf == "cgroup1" || enf == "cgroup2"
	if cgroup {
		needCgroup(t)
	}
	const limit = 300 * time.Millisecond
	bwrapMarkers++
	marker := fmt.Sprintf("reslimitexec-bwrap-spin-%d-%d", os.Getpid(), bwrapMarkers)
	inR, inW := pipe(t)
	outR, outW := pipe(t)

	var p *reslimitexec.Process
	var spinners []int // the sandbox's processes, host pids
	u, err := runIn(t, reslimit.Limits{MaxCPUTime: limit, Timeout: time.Minute}, nil, func(ctx context.Context) error {
		// sh (pid 2 in the sandbox) starts a spinner in a session of
		// its own from a subshell that exits at once (so the spinner's
		// parent is bwrap's init, pid 1 in the sandbox), then sleeps. The
		// spinner says it is ready, then waits for a line before it
		// spins.
		cmd := bwrapCmd(nil, "/bin/sh", "-c", `(setsid /bin/sh -c 'echo ready; read go; while :; do :; done' "$0" &); exec sleep 3600`, marker)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, os.Stderr
		var err error
		if p, err = reslimitexec.Start(ctx, cmd); err != nil {
			return err
		}
		outW.Close()
		line, err := bufio.NewReader(outR).ReadString('\n')
		if line != "ready\n" {
			inW.Close()
			return fmt.Errorf("the sandbox said %q (%v), want ready; then: %v", line, err, p.Wait())
		}
		// Every process of the sandbox but sleep carries the marker:
		// bwrap, its init in the sandbox (pid 1), sh (pid 2, until it
		// execs sleep) and the spinner, which has run its echo.
		spinners = markedProcs(t, marker)
		if cgroup {
			want := procCgroup(t, p.Pid())
			if !strings.Contains(want, "reslimitexec-") {
				t.Errorf("bwrap is in cgroup %q, not one of reslimitexec's", want)
			}
			for _, pid := range spinners {
				if got := procCgroup(t, pid); got != want {
					t.Errorf("sandboxed process %d is in cgroup %q, bwrap in %q", pid, got, want)
				}
			}
		}
		if _, err := inW.WriteString("go\n"); err != nil {
			return err
		}
		return p.Wait()
	})
	if len(spinners) < 2 {
		t.Fatalf("found %d processes marked %s, want at least sh and the spinner; run: %v", len(spinners), marker, err)
	}
	limitErr(t, err, reslimit.CPUTime)
	checkBwrapBill(t, enf, err, u, p.Usage(), limit, spinners)
	for _, pid := range spinners {
		waitGone(t, pid)
	}
	if left := markedProcs(t, marker); len(left) > 0 {
		t.Fatalf("sandboxed processes %v outlived their run", left)
	}
}

// checkBwrapBill checks the bill of a sandboxed spinner stopped by the
// run's CPU limit: the run's CPU about the limit, most of it the child's,
// and one call.
func checkBwrapBill(t *testing.T, enf string, err error, u reslimit.Usage, cu reslimitexec.Usage, limit time.Duration, spinners []int) {
	t.Helper()
	t.Logf("%s: stopped by %v; run CPU %v, child CPU %v (limit %v), calls %d; sandboxed pids %v",
		enf, err, u.CPUTime, cu.CPUTime, limit, u.Calls, spinners)
	if u.CPUTime < limit || u.CPUTime > 2*limit {
		t.Errorf("run CPU %v, want about the limit %v (at least it, at most twice)", u.CPUTime, limit)
	}
	// The run's CPU is the child's and what its own goroutine used.
	if cu.CPUTime < limit*3/4 || cu.CPUTime > u.CPUTime {
		t.Errorf("child CPU %v, want most of the run's %v (limit %v)", cu.CPUTime, u.CPUTime, limit)
	}
	if u.Calls != 1 {
		t.Errorf("run calls %d, want 1 (the child)", u.Calls)
	}
}

// The sandbox's private /tmp is a tmpfs: with a cgroup backend what the
// child writes there is memory it holds, so 200 MiB under 64 MiB is
// stopped with memory. (On the sampling backend it is not counted: bound
// it with bwrap's --size instead, tested in TestBwrapTmpfsSize.)
func TestBwrapTmpfsCounted(t *testing.T) {
	needBwrap(t)
	needCgroup(t)
	const limit = 64 << 20
	u, err := runIn(t, reslimit.Limits{MaxMemoryBytes: limit, Timeout: time.Minute}, nil, func(ctx context.Context) error {
		return reslimitexec.Run(ctx, bwrapCmd(nil, "/bin/sh", "-c", `head -c 200M /dev/zero > /tmp/big`))
	})
	le := limitErr(t, err, reslimit.Memory)
	t.Logf("200 MiB to the sandbox's /tmp under 64 MiB: %v; run peak %d MiB", le, u.PeakMemoryBytes>>20)
	if u.PeakMemoryBytes > limit || u.MemoryBytes != 0 {
		t.Fatalf("run memory: peak %d (limit %d), held %d after the child", u.PeakMemoryBytes, limit, u.MemoryBytes)
	}
}

// bwrap's --size bounds the private /tmp on any backend: the writer gets
// ENOSPC.
func TestBwrapTmpfsSize(t *testing.T) {
	needBwrap(t)
	if help, _ := exec.Command("bwrap", "--help").CombinedOutput(); !strings.Contains(string(help), "--size") {
		t.Skip("this bwrap has no --size (an older bubblewrap)")
	}
	reslimitexec.ForceSampling(t)
	var out strings.Builder
	_, err := runIn(t, reslimit.Limits{MaxMemoryBytes: 256 << 20, Timeout: time.Minute}, nil, func(ctx context.Context) error {
		cmd := bwrapCmd([]string{"--size", strconv.Itoa(16 << 20), "--tmpfs", "/tmp"},
			"/bin/sh", "-c", `head -c 200M /dev/zero > /tmp/big; echo $?; wc -c < /tmp/big`)
		cmd.Stdout = &out
		return reslimitexec.Run(ctx, cmd)
	})
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(out.String())
	if len(f) != 2 || f[0] == "0" || f[1] != strconv.Itoa(16<<20) {
		t.Fatalf("output %q: want head's failure and a file of exactly %d bytes", out.String(), 16<<20)
	}
}

// pipe returns an os.Pipe closed when t ends.
func pipe(t *testing.T) (*os.File, *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.Close()
		w.Close()
	})
	return r, w
}
