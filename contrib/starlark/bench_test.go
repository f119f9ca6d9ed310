package reslimitstarlark_test

import (
	"context"
	"strconv"
	"testing"
	"time"

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

// BenchmarkStepsPaired runs the bare and the charged call alternately in
// each op and reports both times and their ratio, so that a busy machine
// slows both alike (the plain benchmarks above drift with the load).
func BenchmarkStepsPaired(b *testing.B) {
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
	var bare, charged time.Duration
	_, err = reslimit.Run(context.Background(), reslimit.Limits{MaxOperations: 1 << 60}, func(ctx context.Context) error {
		for b.Loop() {
			t0 := time.Now()
			if _, err := starlark.Call(&starlark.Thread{}, work, args, nil); err != nil {
				return err
			}
			t1 := time.Now()
			if _, err := reslimitstarlark.Call(ctx, work, args, nil); err != nil {
				return err
			}
			bare += t1.Sub(t0)
			charged += time.Since(t1)
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(bare.Nanoseconds())/float64(b.N), "bare-ns/op")
	b.ReportMetric(float64(charged.Nanoseconds())/float64(b.N), "charged-ns/op")
	b.ReportMetric(float64(charged)/float64(bare), "ratio")
}
