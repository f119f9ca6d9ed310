//go:build linux

package reslimitexec

import (
	"bufio"
	"errors"
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
)

// fakeCgroup2 is a directory that mimics a cgroup v2 of cgroupfs: regular
// files, holding what the test writes.
func fakeCgroup2(t *testing.T, files map[string]string) *cgroup {
	t.Helper()
	dir := t.TempDir()
	for name, s := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return &cgroup{v2: true, dir: dir, fd: -1}
}

func readTrim(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// The limits written to a cgroup v2: memory.max, memory.swap.max,
// memory.oom.group and pids.max.
func TestCgroup2FilesLimits(t *testing.T) {
	c := fakeCgroup2(t, map[string]string{"memory.max": "", "memory.swap.max": "", "memory.oom.group": "", "pids.max": ""})
	if err := c.limitV2(64<<20, 32); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"memory.max": "67108864", "memory.swap.max": "0", "memory.oom.group": "1", "pids.max": "32"} {
		if got := readTrim(t, filepath.Join(c.dir, name)); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	// No limit asked: nothing written (the files need not exist).
	if err := fakeCgroup2(t, nil).limitV2(0, 0); err != nil {
		t.Fatalf("no limits: %v", err)
	}
	// A limit the hierarchy cannot hold (its controller is not enabled:
	// no file) is an error; swap and oom.group are best effort.
	if err := fakeCgroup2(t, map[string]string{"pids.max": ""}).limitV2(1<<20, 0); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("memory limit without memory.max: %v", err)
	}
	if err := fakeCgroup2(t, map[string]string{"memory.max": ""}).limitV2(0, 8); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("process cap without pids.max: %v", err)
	}
}

// What the backend reads from a cgroup v2: cpu.stat usage_usec,
// memory.current and memory.peak, memory.events oom_kill, pids.events max,
// pids.current and pids.peak.
func TestCgroup2FilesStats(t *testing.T) {
	c := fakeCgroup2(t, map[string]string{
		"cpu.stat":       "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\nnr_periods 0\n",
		"memory.current": "1048576\n",
		"memory.peak":    "2097152\n",
		"memory.events":  "low 0\nhigh 0\nmax 7\noom 1\noom_kill 0\noom_group_kill 0\n",
		"pids.events":    "max 0\n",
		"pids.current":   "3\n",
		"pids.peak":      "5\n",
	})
	want := cgStats{cpu: 1500 * time.Millisecond, mem: 1 << 20, peak: 2 << 20, tasks: 3, tasksPeak: 5}
	if st := c.stats(); st != want {
		t.Fatalf("stats %+v, want %+v", st, want)
	}
	// Kernels without memory.peak or pids.peak: the current figures.
	os.Remove(filepath.Join(c.dir, "memory.peak"))
	os.Remove(filepath.Join(c.dir, "pids.peak"))
	if st := c.stats(); st.peak != 1<<20 || st.tasksPeak != 3 {
		t.Fatalf("without the peak files: %+v", st)
	}
	write := func(name, s string) {
		if err := os.WriteFile(filepath.Join(c.dir, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("memory.events", "low 0\nhigh 0\nmax 9\noom 2\noom_kill 1\noom_group_kill 1\n")
	write("pids.events", "max 4\n")
	if st := c.stats(); st.oomKills != 1 || st.pidsMax != 4 {
		t.Fatalf("events: %+v, want oom_kill 1 and max 4", st)
	}
}

// The run is charged what the cgroup v2 files say, and an OOM kill or a
// fork refused at the cap in them is the run's *LimitError.
func TestCgroup2FilesCharged(t *testing.T) {
	const mem, procs = 64 << 20, 32
	files := map[string]string{
		"cpu.stat":       "usage_usec 250000\n",
		"memory.current": "10485760\n",
		"memory.peak":    "20971520\n",
		"memory.events":  "oom_kill 0\n",
		"pids.events":    "max 0\n",
		"pids.current":   "2\n",
		"pids.peak":      "6\n",
	}
	newProc := func(t *testing.T) (*Process, *cgroup) {
		tr, err := reslimit.NewTracker(reslimit.Limits{MaxMemoryBytes: mem, MaxCPUTime: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.End() })
		b := bounds{mem: mem, memSet: true, memOwn: true, cpu: int64(time.Second), cpuSet: true, maxProcs: procs}
		c := fakeCgroup2(t, files)
		return &Process{t: tr, b: b, plat: platform{cg: c}}, c
	}
	t.Run("usage", func(t *testing.T) {
		p, c := newProc(t)
		if err := p.chargeCgroup(c.stats()); err != nil {
			t.Fatal(err)
		}
		u, ru := p.Usage(), p.t.Usage()
		if u.CPUTime != 250*time.Millisecond || u.MemoryBytes != 10<<20 || u.PeakProcesses != 6 {
			t.Fatalf("child usage %+v", u)
		}
		if ru.CPUTime != 250*time.Millisecond || ru.MemoryBytes != 10<<20 {
			t.Fatalf("run usage %+v", ru)
		}
	})
	t.Run("oom_kill", func(t *testing.T) {
		p, c := newProc(t)
		os.WriteFile(filepath.Join(c.dir, "memory.events"), []byte("oom 1\noom_kill 1\n"), 0o644)
		var le *reslimit.LimitError
		if err := p.chargeCgroup(c.stats()); !errors.As(err, &le) || le.Resource != reslimit.Memory || le.Limit != mem || le.Used != 20<<20 {
			t.Fatalf("after an OOM kill: %v, want a memory *LimitError at the peak", err)
		}
	})
	t.Run("pids.events max", func(t *testing.T) {
		p, c := newProc(t)
		os.WriteFile(filepath.Join(c.dir, "pids.events"), []byte("max 1\n"), 0o644)
		var le *reslimit.LimitError
		if err := p.chargeCgroup(c.stats()); !errors.As(err, &le) || le.Resource != reslimit.Processes || le.Limit != procs {
			t.Fatalf("after a fork refused: %v, want a processes *LimitError", err)
		}
	})
	t.Run("cpu past the limit", func(t *testing.T) {
		p, c := newProc(t)
		os.WriteFile(filepath.Join(c.dir, "cpu.stat"), []byte("usage_usec 1200000\n"), 0o644)
		var le *reslimit.LimitError
		if err := p.chargeCgroup(c.stats()); !errors.As(err, &le) || le.Resource != reslimit.CPUTime {
			t.Fatalf("1.2 s of a 1 s limit: %v, want a cpu_time *LimitError", err)
		}
	})
}

// On a real cgroup2 mount: cgroup.kill kills every process of the group,
// a setsid one included, and waitEmptyV2 waits (on cgroup.events, not to
// its deadline) until the group is empty.
func TestCgroup2KillAndWaitEmpty(t *testing.T) {
	parent, _ := MountCgroup2(t)
	c, err := newCgroup(&cgBackend{v2: true, parent: parent}, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.remove()
	if _, err := os.Stat(filepath.Join(c.dir, "cgroup.kill")); err != nil {
		t.Skipf("no cgroup.kill (Linux < 5.14): %v", err)
	}
	checkKillsTheGroup(t, c)
	if err := c.remove(); err != nil {
		t.Fatal(err)
	}
	// A new cgroup: Linux 6.18 kills a child cloned into one that was
	// killed before (reslimitexec never reuses one).
	c, err = newCgroup(&cgBackend{v2: true, parent: parent}, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	checkWaitsUntilEmpty(t, c)
	if err := c.remove(); err != nil {
		t.Fatal(err)
	}
}

// startInCgroup starts /bin/sh -c script cloned into c and returns it with
// the pid the script prints first.
func startInCgroup(t *testing.T, c *cgroup, script string) (*exec.Cmd, int) {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: c.fd}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	pid, perr := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || perr != nil {
		t.Fatalf("reading a pid: %q %v %v; the shell: %v", line, err, perr, waitStatus(cmd))
	}
	return cmd, pid
}

// checkKillsTheGroup: a shell holding a setsid sleep (which would escape
// its process group) in c: waitEmptyV2 waits to its deadline while it is
// populated, and kill (cgroup.kill) empties it, escapee included.
func checkKillsTheGroup(t *testing.T, c *cgroup) {
	cmd, escapee := startInCgroup(t, c, `setsid sleep 3600 >/dev/null & echo $!; exec sleep 3600`)
	defer cmd.Wait()
	if n := len(c.procs()); n != 2 {
		t.Fatalf("%d processes in the cgroup, want 2: %v", n, c.procs())
	}
	begin := time.Now()
	if c.waitEmptyV2(time.Now().Add(100 * time.Millisecond)) {
		t.Fatal("waitEmptyV2 returned true for a populated cgroup")
	}
	if took := time.Since(begin); took < 90*time.Millisecond {
		t.Fatalf("waitEmptyV2 gave up after %v, before its deadline", took)
	}
	begin = time.Now()
	if !c.kill(time.Now().Add(killBound)) {
		t.Fatalf("kill: the cgroup still holds %v", c.procs())
	}
	t.Logf("cgroup.kill of 2 processes, until empty: %v", time.Since(begin))
	if err := unix.Kill(escapee, 0); err == nil {
		if st, _ := os.ReadFile("/proc/" + strconv.Itoa(escapee) + "/stat"); !strings.Contains(string(st), ") Z ") {
			t.Fatalf("the setsid sleep %d survived: %s", escapee, st)
		}
	}
	if ws := waitStatus(cmd); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("the child ended with %v, want SIGKILL", ws)
	}
}

// checkWaitsUntilEmpty: a group that empties on its own: waitEmptyV2
// returns when it does, long before its deadline (cgroup.events notifies
// the change).
func checkWaitsUntilEmpty(t *testing.T, c *cgroup) {
	cmd, _ := startInCgroup(t, c, `echo $$; exec sleep 0.2`)
	begin := time.Now()
	if !c.waitEmptyV2(time.Now().Add(30 * time.Second)) {
		t.Fatal("waitEmptyV2: still populated")
	}
	took := time.Since(begin)
	t.Logf("a 0.2 s sleep: the cgroup was empty after %v", took)
	if took > 10*time.Second {
		t.Fatalf("waitEmptyV2 took %v for a 0.2 s sleep", took)
	}
	_ = cmd.Wait()
}

func waitStatus(cmd *exec.Cmd) syscall.WaitStatus {
	_ = cmd.Wait()
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	return ws
}
