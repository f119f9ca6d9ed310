//go:build linux

package reslimitexec_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/reslimitexec"
)

func init() { childModes["threads"] = childThreads }

// osThreads returns the OS threads of this process (/proc/self/status).
func osThreads() int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return -1
}

// childThreads (threads N concurrent|serial default|sampling) starts N
// children (/bin/cat on a pipe, so that they run until all have started),
// each under a tracker with limits, from N goroutines at once or one after the
// other, and prints this process's OS threads before and while they run.
// The Go runtime keeps the threads it made, so the second figure is the
// peak.
func childThreads(args []string) int {
	n, _ := strconv.Atoi(args[0])
	var opts []reslimitexec.Option
	if args[2] == "sampling" {
		opts = append(opts, reslimitexec.WithoutCgroup())
	}
	before := osThreads()
	release := make(chan struct{})
	started := make(chan error, n)
	done := make(chan error, n)
	run := func() {
		// A tracker of its own, not reslimit.Run: a run with a CPU limit
		// pins its goroutine to a thread to measure it (the core's cost,
		// not the child's).
		tr, err := reslimit.NewTracker(reslimit.Limits{MaxCPUTime: time.Minute, MaxMemoryBytes: 1 << 30, Timeout: time.Minute})
		if err != nil {
			started <- err
			done <- err
			return
		}
		defer tr.End()
		cmd := exec.Command("/bin/cat")
		in, err := cmd.StdinPipe()
		if err != nil {
			started <- err
			done <- err
			return
		}
		defer in.Close()
		p, err := reslimitexec.Start(reslimit.NewContext(context.Background(), tr), cmd, opts...)
		started <- err
		if err != nil {
			done <- err
			return
		}
		<-release
		in.Close()
		done <- p.Wait()
	}
	for range n {
		if args[1] == "serial" {
			go run()
			if err := <-started; err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 2
			}
		} else {
			go run()
		}
	}
	if args[1] != "serial" {
		for range n {
			if err := <-started; err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 2
			}
		}
	}
	during := osThreads()
	close(release)
	for range n {
		if err := <-done; err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
	}
	fmt.Println(before, during)
	return 0
}

// 200 children running at once cost at most one OS thread each, on both
// backends, counted in a fresh process (the test binary as a child): a
// running child holds none (its exit is waited for in the runtime's
// poller, through a pidfd), a start holds one while it forks, waits for
// the ptrace stop and sets the limits. So 200 children started one after
// the other make next to no threads, and 200 started at once from 200
// goroutines at most one each.
func TestThreadsPerChild(t *testing.T) {
	const n = 200
	// The runtime's own threads, beyond those of the children: sysmon,
	// the template thread, GC workers, and those that ran Go code while
	// others were in system calls (7 at most seen on 2 cores).
	slack := 4*runtime.GOMAXPROCS(0) + 8
	for _, backend := range []string{"default", "sampling"} {
		for _, how := range []string{"serial", "concurrent"} {
			t.Run(backend+"/"+how, func(t *testing.T) {
				cmd := self("threads", strconv.Itoa(n), how, backend)
				out, err := cmd.Output()
				if err != nil {
					t.Fatalf("%v: %s", err, out)
				}
				var before, during int
				if _, err := fmt.Sscan(string(out), &before, &during); err != nil {
					t.Fatalf("output %q: %v", out, err)
				}
				t.Logf("%d children running, started %s: %d threads before, %d with them (%.2f per child)", n, how, before, during, float64(during-before)/n)
				// Serial: a running child that held a thread would add n;
				// the runtime adds a few more under load (threads left
				// from system calls), so allow half. Concurrent: at most
				// one per child, while they start.
				limit := slack + n/2
				if how == "concurrent" {
					limit = slack + n
				}
				if during-before > limit {
					t.Fatalf("%d children made %d threads, want at most %d", n, during-before, limit)
				}
			})
		}
	}
}
