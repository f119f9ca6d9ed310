package reslimitstarlark_test

import (
	"context"
	"errors"
	"fmt"

	"go.starlark.net/syntax"

	"github.com/reslimit/reslimit"
	reslimitstarlark "github.com/reslimit/reslimit/contrib/starlark"
)

// ExampleExecFile runs Starlark scripts under MaxOperations: the
// interpreter's steps are charged to the run as operations, so a script
// that fits returns its result, and one that loops is stopped after
// exactly MaxOperations steps, with the run's *reslimit.LimitError.
func ExampleExecFile() {
	limits := reslimit.Limits{MaxOperations: 10_000}
	run := func(src string) {
		usage, err := reslimit.Run(context.Background(), limits, func(ctx context.Context) error {
			globals, err := reslimitstarlark.ExecFile(ctx, &syntax.FileOptions{}, "script.star", src, nil)
			if err == nil {
				fmt.Println("result:", globals["result"])
			}
			return err
		})
		var le *reslimit.LimitError
		if errors.As(err, &le) {
			fmt.Println("refused:", le.Resource, "limit", le.Limit)
			fmt.Println("operations charged:", usage.Operations)
		}
	}

	run(`
def total(n):
    t = 0
    for i in range(n):
        t += i * i
    return t

result = total(10)
`)
	run(`
def spin():
    n = 0
    for i in range(1000000000):
        n += i
    return n

result = spin()
`)
	// Output:
	// result: 285
	// refused: operations limit 10000
	// operations charged: 10000
}
