//go:build linux

package reslimitexec_test

import (
	"context"
	"errors"
	"fmt"
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

// needCgroup skips the test where no cgroup backend is in force, and
// checks (and cleans up) after it that every cgroup it made was removed.
func needCgroup(t *testing.T) string {
	t.Helper()
	e := reslimitexec.Enforcement()
	if e != "cgroup1" && e != "cgroup2" {
		t.Skipf("no cgroup backend here (enforcement %q): needs root or a delegated cgroup subtree", e)
	}
	t.Cleanup(func() {
		for _, d := range reslimitexec.CgroupLeftovers() {
			t.Errorf("cgroup %s left behind", d)
			if err := reslimitexec.RemoveCgroup(d); err != nil {
				t.Errorf("removing %s: %v", d, err)
			}
		}
	})
	return e
}

func readPidFile(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func TestCgroupEnforcement(t *testing.T) {
	e := needCgroup(t)
	var p *reslimitexec.Process
	_, err := runIn(t, reslimit.Limits{MaxMemoryBytes: 64 << 20}, nil, func(ctx context.Context) error {
		var err error
		if p, err = reslimitexec.Start(ctx, exec.Command("/bin/true")); err != nil {
			return err
		}
		return p.Wait()
	})
	if err != nil {
		t.Fatal(err)
	}
	if p.Enforcement() != e {
		t.Fatalf("the child got %q, want %q", p.Enforcement(), e)
	}
	// Forced sampling.
	if err := reslimitexec.Run(context.Background(), exec.Command("/bin/true"), reslimitexec.WithoutCgroup()); err != nil {
		t.Fatal(err)
	}
}

// A grandchild in a session of its own that spins on after the child
// exited (setsid, double fork) dies with the child's run, and Run returns
// once it is gone.
func TestCgroupSetsidEscapeeKilled(t *testing.T) {
	needCgroup(t)
	pidFile := filepath.Join(t.TempDir(), "pid")
	var out strings.Builder
	_, err := runIn(t, reslimit.Limits{MaxCPUTime: time.Minute}, nil, func(ctx context.Context) error {
		cmd := self("escape", pidFile, "spin")
		cmd.Stdout = &out
		return reslimitexec.Run(ctx, cmd)
	})
	if err != nil {
		t.Fatal(err)
	}
	gc := readPidFile(t, pidFile)
	// Gone already: Run returned once the cgroup was empty.
	if err := syscallKill0(gc); err == nil {
		if st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", gc)); !strings.Contains(string(st), ") Z ") {
			t.Fatalf("the setsid grandchild %d still runs after Run returned: %s", gc, st)
		}
	}
	waitGone(t, gc)
}

// The same escapee, spinning while its parent waits, is stopped by the
// run's CPU limit and billed.
func TestCgroupSetsidSpinnerBilled(t *testing.T) {
	needCgroup(t)
	if _, err := exec.LookPath("setsid"); err != nil {
		t.Skip("setsid not found")
	}
	const limit = 300 * time.Millisecond
	pidFile := filepath.Join(t.TempDir(), "pid")
	u, err := runIn(t, reslimit.Limits{MaxCPUTime: limit, Timeout: time.Minute}, nil, func(ctx context.Context) error {
		// The shell forks a setsid spinner, then its parent exits: the
		// spinner is reparented away from the child's tree at once.
		cmd := exec.Command("/bin/sh", "-c", `(setsid "$0" & echo $! > "$1") ; exec sleep 3600`, os.Args[0], pidFile)
		cmd.Env = append(os.Environ(), "RESLIMITEXEC_TEST_CHILD=spin")
		return reslimitexec.Run(ctx, cmd)
	})
	limitErr(t, err, reslimit.CPUTime)
	t.Logf("run CPU %v (limit %v)", u.CPUTime, limit)
	if u.CPUTime < limit {
		t.Fatalf("run CPU %v, want at least the limit %v", u.CPUTime, limit)
	}
	waitGone(t, readPidFile(t, pidFile))
}

// Orphans' CPU is billed: processes whose parent exited (reaped by init,
// not by anything in the child's tree).
func TestCgroupOrphansBilled(t *testing.T) {
	needCgroup(t)
	const n, ms = 100, 20 // as issue 21 measures it
	u, err := runIn(t, reslimit.Limits{MaxCPUTime: time.Minute, Timeout: time.Minute}, nil, func(ctx context.Context) error {
		return reslimitexec.Run(ctx, self("orphans", strconv.Itoa(n), strconv.Itoa(ms)))
	})
	if err != nil {
		t.Fatal(err)
	}
	want := time.Duration(n*ms) * time.Millisecond
	t.Logf("%d orphans of %d ms CPU each: run billed %v (they used at least %v)", n, ms, u.CPUTime, want)
	if u.CPUTime < want*9/10 {
		t.Fatalf("billed %v, want at least 90%% of %v", u.CPUTime, want)
	}
}

// Files written to /dev/shm (tmpfs) are memory the child holds.
func TestCgroupShmCounted(t *testing.T) {
	needCgroup(t)
	path := fmt.Sprintf("/dev/shm/reslimitexec-test-%d", os.Getpid())
	t.Cleanup(func() { os.Remove(path) })
	const limit = 64 << 20
	var p *reslimitexec.Process
	u, err := runIn(t, reslimit.Limits{MaxMemoryBytes: limit, Timeout: time.Minute}, nil, func(ctx context.Context) error {
		var err error
		p, err = reslimitexec.Start(ctx, exec.Command("/bin/sh", "-c", `head -c 200M /dev/zero > "$1"`, "sh", path))
		if err != nil {
			return err
		}
		return p.Wait()
	})
	le := limitErr(t, err, reslimit.Memory)
	fi, _ := os.Stat(path)
	var size int64
	if fi != nil {
		size = fi.Size()
	}
	t.Logf("200 MiB to /dev/shm under 64 MiB: %v; file %d MiB; run peak %d MiB", le, size>>20, u.PeakMemoryBytes>>20)
	if size > limit {
		t.Fatalf("the tmpfs file grew to %d bytes, past the limit", size)
	}
	if u.PeakMemoryBytes > limit || u.MemoryBytes != 0 {
		t.Fatalf("run memory: peak %d (limit %d), held %d after the child", u.PeakMemoryBytes, limit, u.MemoryBytes)
	}
}

// 300 concurrent sleeps under a cap of 32: stopped with processes, the
// tree never above the cap.
func TestCgroupProcessCap(t *testing.T) {
	needCgroup(t)
	const limit = 32
	var p *reslimitexec.Process
	_, err := runIn(t, reslimit.Limits{Timeout: 30 * time.Second}, nil, func(ctx context.Context) error {
		var err error
		cmd := exec.Command("/bin/sh", "-c", `i=0; while [ $i -lt 300 ]; do sleep 30 & i=$((i+1)); done; wait`)
		p, err = reslimitexec.Start(ctx, cmd, reslimitexec.WithMaxProcesses(limit))
		if err != nil {
			return err
		}
		return p.Wait()
	})
	le := limitErr(t, err, reslimit.Processes)
	t.Logf("%v; peak tasks %d", le, p.Usage().PeakProcesses)
	if le.Limit != limit || le.Resource.String() != "processes" {
		t.Fatalf("error %v: want the cap %d on processes", le, limit)
	}
	if pk := p.Usage().PeakProcesses; pk > limit || pk == 0 {
		t.Fatalf("peak tasks %d, want at most %d (and some)", pk, limit)
	}
}

// A fork bomb (every process waits for the two it starts, so the tree
// only grows) is capped by the kernel and stopped.
func TestCgroupForkBomb(t *testing.T) {
	needCgroup(t) // without the kernel's cap, only sampling would bound it
	_, err := runIn(t, reslimit.Limits{Timeout: 30 * time.Second}, nil, func(ctx context.Context) error {
		return reslimitexec.Run(ctx, exec.Command("/bin/sh", "-c", `b() { b & b & wait; }; b`), reslimitexec.WithMaxProcesses(64))
	})
	limitErr(t, err, reslimit.Processes)
}

func TestMaxProcessesBadInput(t *testing.T) {
	err := reslimitexec.Run(context.Background(), exec.Command("/bin/true"), reslimitexec.WithMaxProcesses(-1))
	if !errorsIs(err, reslimit.ErrInvalidLimits) {
		t.Fatalf("WithMaxProcesses(-1): %v", err)
	}
	err = reslimitexec.Run(context.Background(), exec.Command("/bin/true"), reslimitexec.WithCgroupParent("relative"))
	if !errorsIs(err, reslimit.ErrInvalidArgument) {
		t.Fatalf("WithCgroupParent(relative): %v", err)
	}
	err = reslimitexec.Run(context.Background(), exec.Command("/bin/true"), reslimitexec.WithCgroupParent("/no/such/reslimitexec/parent"))
	if err == nil {
		t.Fatal("WithCgroupParent of a missing cgroup: no error")
	}
}

func errorsIs(err, target error) bool { return errors.Is(err, target) }

// syscallKill0 reports whether process pid exists (signal 0).
func syscallKill0(pid int) error { return unix.Kill(pid, 0) }
