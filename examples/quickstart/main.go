// Command quickstart wraps a few toy tools with reslimit limits and prints
// what happened to each call: one that fits, one refused for memory, one
// for operations, one stopped for CPU time while another that only sleeps
// is not, and one stopped by its timeout.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"text/tabwriter"
	"time"

	"github.com/reslimit/reslimit"
)

// limits bound every call of the demo.
var limits = reslimit.Limits{
	MaxMemoryBytes: 1 << 20,
	MaxOperations:  10_000,
	MaxCPUTime:     150 * time.Millisecond,
	Timeout:        time.Second,
}

// A call is one toy tool, run once under limits.
type call struct {
	name string
	fn   func(ctx context.Context) error
}

var calls = []call{
	{"fits", fits},
	{"allocates 4 MiB", allocates4MiB},
	{"loops 1M times", loops1M},
	{"spins on the CPU", spins},
	{"sleeps 400ms", sleeps400ms},
	{"waits forever", waitsForever},
}

func main() {
	clock := "thread" // reslimit reads the threads' CPU clocks on Linux
	if runtime.GOOS != "linux" {
		clock = "wall" // elsewhere wall time stands in for CPU time
	}
	fmt.Printf("limits: memory %d B, operations %d, CPU %v, timeout %v (CPU clock: %s)\n\n",
		limits.MaxMemoryBytes, limits.MaxOperations, limits.MaxCPUTime, limits.Timeout, clock)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "CALL\tRESULT\tOPS\tPEAK MEM\tCPU\tWALL")
	for _, c := range calls {
		u, err := reslimit.Run(context.Background(), limits, c.fn)
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%v\t%v\n", c.name, result(err), u.Operations, u.PeakMemoryBytes,
			u.CPUTime.Round(time.Millisecond), u.WallTime.Round(time.Millisecond))
	}
	w.Flush()
}

// result says how a call ended: ok, stopped by which limit, or another error.
func result(err error) string {
	var le *reslimit.LimitError
	switch {
	case errors.As(err, &le):
		return "stopped: " + le.Resource.String()
	case err != nil:
		return "error: " + err.Error()
	}
	return "ok"
}

// fits holds 64 KiB and counts 500 operations: well within the limits.
func fits(ctx context.Context) error {
	tr := reslimit.FromContext(ctx)
	g, err := tr.AcquireMemory(64 << 10)
	if err != nil {
		return err
	}
	defer g.Release()
	return tr.TrackOperations(500)
}

// allocates4MiB asks for four times the memory limit and is refused.
func allocates4MiB(ctx context.Context) error {
	g, err := reslimit.FromContext(ctx).AcquireMemory(4 << 20)
	defer g.Release()
	return err
}

// loops1M counts a million operations and is stopped at the 10,000th.
func loops1M(ctx context.Context) error {
	tr := reslimit.FromContext(ctx)
	for i := 0; i < 1_000_000; i++ {
		if err := tr.TrackOperation(); err != nil {
			return err
		}
	}
	return nil
}

// spins burns CPU without tracking anything until its context ends.
func spins(ctx context.Context) error {
	x := 0
	for ctx.Err() == nil { // the watchdog cancels ctx when the CPU is used up
		for i := 0; i < 1000; i++ {
			x += i
		}
	}
	return ctx.Err()
}

// sleeps400ms takes wall time but no CPU: it finishes.
func sleeps400ms(ctx context.Context) error {
	select {
	case <-time.After(400 * time.Millisecond):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitsForever never returns by itself: the timeout stops it.
func waitsForever(ctx context.Context) error {
	<-ctx.Done()
	return ctx.Err()
}
