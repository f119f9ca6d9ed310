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
	"text/tabwriter"
	"time"

	"github.com/reslimit/reslimit"
)

func main() {
	limits := reslimit.Limits{
		MaxMemoryBytes: 1 << 20,
		MaxOperations:  10_000,
		MaxCPUTime:     150 * time.Millisecond,
		Timeout:        time.Second,
	}
	type call struct {
		name string
		fn   func(ctx context.Context) error
	}
	calls := []call{
		{"fits", func(ctx context.Context) error {
			tr := reslimit.FromContext(ctx)
			g, err := tr.AcquireMemory(64 << 10)
			if err != nil {
				return err
			}
			defer g.Release()
			return tr.TrackOperations(500)
		}},
		{"allocates 4 MiB", func(ctx context.Context) error {
			g, err := reslimit.FromContext(ctx).AcquireMemory(4 << 20)
			defer g.Release()
			return err
		}},
		{"loops 1M times", func(ctx context.Context) error {
			tr := reslimit.FromContext(ctx)
			for i := 0; i < 1_000_000; i++ {
				if err := tr.TrackOperation(); err != nil {
					return err
				}
			}
			return nil
		}},
		{"spins on the CPU", func(ctx context.Context) error {
			x := 0
			for ctx.Err() == nil { // the watchdog cancels ctx when the CPU is used up
				for i := 0; i < 1000; i++ {
					x += i
				}
			}
			return ctx.Err()
		}},
		{"sleeps 400ms", func(ctx context.Context) error {
			select {
			case <-time.After(400 * time.Millisecond):
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}},
		{"waits forever", func(ctx context.Context) error {
			<-ctx.Done()
			return ctx.Err()
		}},
	}

	fmt.Printf("limits: memory %d B, operations %d, CPU %v, timeout %v (CPU clock: %s)\n\n",
		limits.MaxMemoryBytes, limits.MaxOperations, limits.MaxCPUTime, limits.Timeout, reslimit.CPUClock())
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "CALL\tRESULT\tOPS\tPEAK MEM\tCPU\tWALL")
	for _, c := range calls {
		u, err := reslimit.Run(context.Background(), limits, c.fn)
		result := "ok"
		var le *reslimit.LimitError
		switch {
		case errors.As(err, &le):
			result = "stopped: " + le.Resource.String()
		case err != nil:
			result = "error: " + err.Error()
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%v\t%v\n", c.name, result, u.Operations, u.PeakMemoryBytes,
			u.CPUTime.Round(time.Millisecond), u.WallTime.Round(time.Millisecond))
	}
	w.Flush()
}
