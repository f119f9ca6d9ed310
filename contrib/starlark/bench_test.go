package reslimitstarlark_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/reslimit/reslimit"
	reslimitstarlark "github.com/reslimit/reslimit/contrib/starlark"
	"go.starlark.net/starlark"
)

// BenchmarkSteps: one call of a Starlark function running a loop (about
// 100,000 steps), bare and with its steps charged to a run in batches
// (MaxOperations set, so every batch also asks what is left).
func BenchmarkSteps(b *testing.B) {
	globals, err := starlark.ExecFileOptions(fileOpts, &starlark.Thread{}, "bench.star", `
def work(n):
    t = 0
    for i in range(n):
        t += i * i
    return t
`, nil)
	if err != nil {
		b.Fatal(err)
	}
	work := globals["work"]
	args := starlark.Tuple{starlark.MakeInt(25000)}
	var steps uint64
	b.Run("bare", func(b *testing.B) {
		for b.Loop() {
			thread := &starlark.Thread{}
			if _, err := starlark.Call(thread, work, args, nil); err != nil {
				b.Fatal(err)
			}
			steps = thread.ExecutionSteps()
		}
		b.ReportMetric(float64(steps), "steps/op")
	})
	for _, batch := range []uint64{100, reslimitstarlark.DefaultBatch, 10000} {
		b.Run("charged/batch="+strconv.FormatUint(batch, 10), func(b *testing.B) {
			_, err := reslimit.Run(context.Background(), reslimit.Limits{MaxOperations: 1 << 60}, func(ctx context.Context) error {
				for b.Loop() {
					if _, err := reslimitstarlark.Call(ctx, work, args, nil, reslimitstarlark.WithBatch(batch)); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		})
	}
}
