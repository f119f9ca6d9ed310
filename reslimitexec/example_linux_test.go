package reslimitexec_test

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"time"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/reslimitexec"
)

// ExampleRun_cpuTime stops a child that spins past the CPU time its run
// may use: the whole process group is killed, and the caller gets the
// run's *reslimit.LimitError. (On Linux, where the CPU time of a running
// child is sampled; elsewhere it is charged only once the child exits.)
func ExampleRun_cpuTime() {
	limits := reslimit.Limits{MaxCPUTime: 100 * time.Millisecond, Timeout: time.Minute}
	_, err := reslimit.Run(context.Background(), limits, func(ctx context.Context) error {
		return reslimitexec.Run(ctx, exec.Command("/bin/sh", "-c", "while :; do :; done"))
	})
	var le *reslimit.LimitError
	if errors.As(err, &le) {
		fmt.Println("stopped by:", le.Resource, "limit", time.Duration(le.Limit))
	}
	fmt.Println("is ErrLimitExceeded:", errors.Is(err, reslimit.ErrLimitExceeded))
	// Output:
	// stopped by: cpu_time limit 100ms
	// is ErrLimitExceeded: true
}
