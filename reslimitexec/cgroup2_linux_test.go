//go:build linux

package reslimitexec_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/reslimitexec"
)

// The cgroup2 backend on a cgroup2 hierarchy the test mounts. Where the
// memory and pids controllers are bound to cgroup v1 (as on the CI
// machine) the hierarchy still gives membership, cpu.stat, cgroup.kill and
// cgroup.events: the children get no memory limit and no process cap here
// (WithMaxProcesses(0)); the controller files are tested in
// cgroup2_files_linux_test.go.

// cgroup2Opts are the options that run a child in a cgroup of parent.
func cgroup2Opts(parent string) []reslimitexec.Option {
	return []reslimitexec.Option{reslimitexec.WithCgroup2In(parent), reslimitexec.WithMaxProcesses(0)}
}

// noCgroupsLeft fails the test if a child's cgroup is left in parent.
func noCgroupsLeft(t *testing.T, parent string) {
	t.Helper()
	if left := reslimitexec.CgroupsIn(parent); len(left) > 0 {
		t.Fatalf("cgroups left behind in %s: %v", parent, left)
	}
}

// The child is in its cgroup from its first instruction (cloned into it):
// /proc/self/cgroup, read by the child's program, names it.
func TestCgroup2Membership(t *testing.T) {
	parent, mnt := reslimitexec.MountCgroup2(t)
	var out strings.Builder
	var p *reslimitexec.Process
	_, err := runIn(t, reslimit.Limits{MaxCPUTime: time.Minute, Timeout: time.Minute}, nil, func(ctx context.Context) error {
		cmd := exec.Command("/bin/cat", "/proc/self/cgroup")
		cmd.Stdout = &out
		var err error
		if p, err = reslimitexec.Start(ctx, cmd, cgroup2Opts(parent)...); err != nil {
			return err
		}
		return p.Wait()
	})
	if err != nil {
		t.Fatal(err)
	}
	if p.Enforcement() != "cgroup2" {
		t.Fatalf("the child got %q, want cgroup2", p.Enforcement())
	}
	want := "0::" + strings.TrimPrefix(parent, mnt) + "/" + reslimitexec.CgroupPrefix()
	var got string
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(line, "0::") {
			got = line
		}
	}
	t.Logf("the child's cgroup v2: %s", got)
	if !strings.HasPrefix(got, want) {
		t.Fatalf("/proc/self/cgroup of the child:\n%s\nwant its v2 line to start with %s", out.String(), want)
	}
	noCgroupsLeft(t, parent)
}

// A setsid grandchild that spins on after the child exited dies with the
// run (cgroup.kill), Run returns once the group is empty (cgroup.events),
// and the cgroup is removed.
func TestCgroup2SetsidEscapeeKilled(t *testing.T) {
	parent, _ := reslimitexec.MountCgroup2(t)
	pidFile := filepath.Join(t.TempDir(), "pid")
	var out strings.Builder
	_, err := runIn(t, reslimit.Limits{MaxCPUTime: time.Minute, Timeout: time.Minute}, nil, func(ctx context.Context) error {
		cmd := self("escape", pidFile, "spin")
		cmd.Stdout = &out
		return reslimitexec.Run(ctx, cmd, cgroup2Opts(parent)...)
	})
	if err != nil {
		t.Fatal(err)
	}
	gc := readPidFile(t, pidFile)
	if st, err := os.ReadFile("/proc/" + strconv.Itoa(gc) + "/stat"); err == nil && !strings.Contains(string(st), ") Z ") {
		t.Fatalf("the setsid grandchild %d still runs after Run returned: %s", gc, st)
	}
	waitGone(t, gc)
	noCgroupsLeft(t, parent)
}

// On the run's timeout a sleeping child and its setsid grandchild die
// together; the CPU time of the tree is the cgroup's (cpu.stat).
func TestCgroup2TimeoutKillsTree(t *testing.T) {
	parent, _ := reslimitexec.MountCgroup2(t)
	u, gc, err := runDescendantWith(t, reslimit.Limits{Timeout: 300 * time.Millisecond},
		exec.Command("/bin/sh", "-c", `setsid sleep 3600 & echo $!; wait`), cgroup2Opts(parent)...)
	limitErr(t, err, reslimit.Timeout)
	waitGone(t, gc)
	noCgroupsLeft(t, parent)
	t.Logf("run CPU %v", u.CPUTime)
}

// A spinner is billed from the cgroup's cpu.stat and stopped at the run's
// CPU limit.
func TestCgroup2CPUBilled(t *testing.T) {
	parent, _ := reslimitexec.MountCgroup2(t)
	const limit = 300 * time.Millisecond
	var p *reslimitexec.Process
	u, err := runIn(t, reslimit.Limits{MaxCPUTime: limit, Timeout: time.Minute}, nil, func(ctx context.Context) error {
		var err error
		if p, err = reslimitexec.Start(ctx, self("forkspin"), cgroup2Opts(parent)...); err != nil {
			return err
		}
		return p.Wait()
	})
	limitErr(t, err, reslimit.CPUTime)
	t.Logf("run CPU %v (limit %v), child %v", u.CPUTime, limit, p.Usage().CPUTime)
	if u.CPUTime < limit || u.CPUTime > limit+2*time.Second {
		t.Fatalf("run CPU %v, want at least the limit %v and not far past it", u.CPUTime, limit)
	}
	noCgroupsLeft(t, parent)
}

// runDescendantWith is runDescendant with options for Start.
func runDescendantWith(t *testing.T, l reslimit.Limits, cmd *exec.Cmd, opts ...reslimitexec.Option) (reslimit.Usage, int, error) {
	t.Helper()
	var pid int
	u, err := runIn(t, l, nil, func(ctx context.Context) error {
		out, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		p, err := reslimitexec.Start(ctx, cmd, opts...)
		if err != nil {
			return err
		}
		pid = readPid(t, out)
		return p.Wait()
	})
	return u, pid, err
}
