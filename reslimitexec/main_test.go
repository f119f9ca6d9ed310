package reslimitexec_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/reslimitexec"
)

// childEnv names the mode in which the test binary runs as a child process.
const childEnv = "RESLIMITEXEC_TEST_CHILD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(child(mode, os.Args[1:]))
	}
	goleak.VerifyTestMain(m)
}

// sink keeps the allocations of the alloc child alive.
var sink [][]byte

// childModes are the modes of the test binary as a child process; each
// gets the arguments after the program name and returns the exit status.
var childModes = map[string]func(args []string) int{
	"spin":      func([]string) int { return childSpin() },
	"sleep":     func([]string) int { return sleepUntilKilled() },
	"forkspin":  func([]string) int { return childFork("spin") },
	"forksleep": func([]string) int { return childFork("sleep") },
	"alloc":     childAlloc,
	"write":     childWrite,
	"term":      func([]string) int { return childTerm() },
	"bigparent": childBigParent,
	"escape":    childEscape,
	"burn":      childBurn,
	"orphans":   childOrphans,
	"spawn":     childSpawn,
	"ignoreterm": func([]string) int {
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ready")
		return sleepUntilKilled()
	},
}

// child is the test binary as a child process.
func child(mode string, args []string) int {
	if f, ok := childModes[mode]; ok {
		return f(args)
	}
	fmt.Fprintln(os.Stderr, "unknown child mode", mode)
	return 2
}

// sleepUntilKilled is a child that holds on (to its memory, its
// descendants) until the test kills it: the wait is what it is for.
func sleepUntilKilled() int {
	time.Sleep(time.Hour)
	return 2 // not killed within the hour
}

func childSpin() int {
	for i := 0; ; i++ {
		if i < 0 {
			return 1
		}
	}
}

// childFork (forkspin, forksleep): a grandchild that spins (or sleeps),
// its pid on stdout; then wait for it.
func childFork(mode string) int {
	gc := exec.Command(os.Args[0])
	gc.Env = append(os.Environ(), childEnv+"="+mode)
	gc.Stderr = os.Stderr
	if err := gc.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Println(gc.Process.Pid)
	_ = gc.Wait()
	return 2
}

// holdMiB allocates n MiB, touching every page, and keeps them in sink.
func holdMiB(n int) {
	for range n {
		b := make([]byte, 1<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		sink = append(sink, b)
	}
}

// childAlloc (alloc MiB): hold MiB, touched 1 MiB at a time, until killed.
func childAlloc(args []string) int {
	n, _ := strconv.Atoi(args[0])
	holdMiB(n)
	return sleepUntilKilled()
}

// childWrite (write PATH): write 64 KiB blocks until an error.
func childWrite(args []string) int {
	f, err := os.Create(args[0])
	if err != nil {
		return 2
	}
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 3
		}
	}
}

// childTerm (term): exit 0 on SIGTERM, announcing it is ready on stdout.
func childTerm() int {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM)
	fmt.Println("ready")
	<-c
	return 0
}

// childBigParent (bigparent MiB LIMIT_MiB PROGRAM): hold MiB, then run
// PROGRAM under LIMIT; print the child's and the run's peaks, then the
// error, if any.
func childBigParent(args []string) int {
	n, _ := strconv.Atoi(args[0])
	limit, _ := strconv.Atoi(args[1])
	holdMiB(n)
	var p *reslimitexec.Process
	u, err := reslimit.Run(context.Background(), reslimit.Limits{MaxMemoryBytes: int64(limit) << 20, Timeout: time.Minute},
		func(ctx context.Context) error {
			var err error
			if p, err = reslimitexec.Start(ctx, exec.Command(args[2])); err != nil {
				return err
			}
			return p.Wait()
		})
	var cu reslimitexec.Usage
	if p != nil {
		cu = p.Usage()
	}
	fmt.Println(cu.PeakMemoryBytes, u.PeakMemoryBytes, len(sink))
	if err != nil {
		fmt.Println(err)
		return 1
	}
	return 0
}

// childEscape (escape PIDFILE [MODE]): start a grandchild in MODE (sleep)
// in a session of its own, holding this process's stdout; write its pid to
// PIDFILE, print "done" and exit.
func childEscape(args []string) int {
	mode := "sleep"
	if len(args) > 1 {
		mode = args[1]
	}
	gc := exec.Command(os.Args[0])
	gc.Env = append(os.Environ(), childEnv+"="+mode)
	gc.Stdout, gc.Stderr = os.Stdout, os.Stderr
	gc.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := gc.Start(); err != nil { // returns after its execve: it has left the group
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := os.WriteFile(args[0], []byte(strconv.Itoa(gc.Process.Pid)), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Println("done")
	return 0
}

// childBurn (burn MS): use MS milliseconds of CPU, then exit.
func childBurn(args []string) int {
	ms, _ := strconv.Atoi(args[0])
	for {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			return 2
		}
		used := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		if used >= time.Duration(ms)*time.Millisecond {
			return 0
		}
	}
}

// childOrphans (orphans N MS): N processes that burn MS ms each, orphaned
// by an intermediate process; wait (without reaping them) until they have
// all exited, then exit.
func childOrphans(args []string) int {
	pr, pw, err := os.Pipe()
	if err != nil {
		return 2
	}
	mid := exec.Command(os.Args[0], args...)
	mid.Env = append(os.Environ(), childEnv+"=spawn")
	mid.Stdout, mid.Stderr = pw, os.Stderr
	if err := mid.Run(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	pw.Close()
	_, _ = io.Copy(io.Discard, pr) // EOF: every burner has exited
	return 0
}

// childSpawn (spawn N MS): start N burners holding stdout, exit at once.
func childSpawn(args []string) int {
	n, _ := strconv.Atoi(args[0])
	for range n {
		b := exec.Command(os.Args[0], args[1])
		b.Env = append(os.Environ(), childEnv+"=burn")
		b.Stdout, b.Stderr = os.Stdout, os.Stderr
		if err := b.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
	}
	return 0
}

// self returns a command running the test binary as a child in mode.
func self(mode string, args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), childEnv+"="+mode)
	cmd.Stderr = os.Stderr
	return cmd
}
