package reslimitexec_test

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"time"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/reslimitexec"
)

// ExampleRun runs a shell command inside a reslimit run: the child is
// bound by what the run may still use (here 2 s of CPU time, 256 MiB and
// 10 s of wall time), and what it uses is charged to the run.
func ExampleRun() {
	limits := reslimit.Limits{MaxCPUTime: 2 * time.Second, MaxMemoryBytes: 256 << 20, Timeout: 10 * time.Second}
	var out bytes.Buffer
	usage, err := reslimit.Run(context.Background(), limits, func(ctx context.Context) error {
		cmd := exec.Command("/bin/sh", "-c", "echo hi")
		cmd.Stdout = &out
		return reslimitexec.Run(ctx, cmd)
	})
	fmt.Printf("output: %s", out.String())
	fmt.Println("error:", err)
	fmt.Println("calls charged:", usage.Calls)
	// Output:
	// output: hi
	// error: <nil>
	// calls charged: 1
}
