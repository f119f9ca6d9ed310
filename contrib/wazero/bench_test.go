package reslimitwazero_test

import (
	"context"
	"testing"
	"time"

	"github.com/reslimit/reslimit"
	reslimitwazero "github.com/reslimit/reslimit/contrib/wazero"
	"github.com/reslimit/reslimit/contrib/wazero/internal/wasmbin"
	"github.com/tetratelabs/wazero"
)

// benchLimits bound memory, CPU time and wall time (so the CPU clock is
// read and the watchdog runs), loosely enough for a benchmark's loop.
var benchLimits = reslimit.Limits{MaxMemoryBytes: 10 << 20, MaxCPUTime: time.Hour, Timeout: time.Hour}

// variants are the ways a guest is run: bare wazero; under a reslimit run
// with the memory allocator and the run's CPU/timeout accounting but
// without Config (a guest that never returns is then not stopped); with
// Config (WithCloseOnContextDone: stops it); and with call counting too.
var variants = []struct {
	name             string
	reslimit         bool
	terminate, count bool
}{
	{"bare", false, false, false},
	{"reslimit-noterminate", true, false, false},
	{"reslimit", true, true, false},
	{"reslimit+calls", true, true, true},
}

// benchCall calls fn(arg) of the guests per op, in a module instantiated
// once, for each variant.
func benchCall(b *testing.B, fn string, arg uint64) {
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			rt, compiled := setupWith(b, v.count, v.terminate)
			body := func(ctx context.Context) error {
				ctx = reslimitwazero.WithTracker(ctx)
				mod := instantiate(b, ctx, rt, compiled)
				defer mod.Close(ctx)
				f := mod.ExportedFunction(fn)
				for b.Loop() {
					if _, err := reslimitwazero.Call(ctx, f, arg); err != nil {
						return err
					}
				}
				return nil
			}
			var err error
			if v.reslimit {
				_, err = reslimit.Run(context.Background(), benchLimits, body)
			} else {
				err = body(context.Background())
			}
			if err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkGuestLoop: sum(100000), a tight loop of 100,000 iterations of
// a few instructions, one guest call per op.
func BenchmarkGuestLoop(b *testing.B) { benchCall(b, "sum", 100000) }

// BenchmarkGuestCalls: fib(20), 21,891 guest function calls per op and no
// loop (ns/op / 21891 is the cost per call).
func BenchmarkGuestCalls(b *testing.B) { benchCall(b, "fib", 20) }

// BenchmarkEvaluation: a whole evaluation per op — instantiate the
// module, call fib(20), close it — bare, and as one reslimit run (memory
// charged, CPU time measured, timeout watched), for each variant.
func BenchmarkEvaluation(b *testing.B) {
	eval := func(ctx context.Context, rt wazero.Runtime, compiled wazero.CompiledModule) error {
		mod, err := reslimitwazero.Instantiate(ctx, rt, compiled, wazero.NewModuleConfig().WithName(""))
		if err != nil {
			return err
		}
		defer mod.Close(ctx)
		_, err = reslimitwazero.Call(ctx, mod.ExportedFunction("fib"), 20)
		return err
	}
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			rt, compiled := setupWith(b, v.count, v.terminate)
			for b.Loop() {
				var err error
				if v.reslimit {
					_, err = reslimit.Run(context.Background(), benchLimits, func(ctx context.Context) error {
						return eval(ctx, rt, compiled)
					})
				} else {
					err = eval(context.Background(), rt, compiled)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPaired runs the bare and a reslimit variant of the same call
// alternately in each op and reports both times and their ratio, so that
// a busy machine slows both alike.
func BenchmarkPaired(b *testing.B) {
	cases := []struct {
		name, fn  string
		arg       uint64
		terminate bool
		count     bool
	}{
		{"loop/noterminate", "sum", 100000, false, false},
		{"loop/terminate", "sum", 100000, true, false},
		{"calls/terminate", "fib", 20, true, false},
		{"calls/terminate+count", "fib", 20, true, true},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			ctx := context.Background()
			brt := wazero.NewRuntime(ctx)
			defer brt.Close(ctx)
			bmod, err := brt.Instantiate(ctx, wasmbin.Guests().Bytes())
			if err != nil {
				b.Fatal(err)
			}
			bfn := bmod.ExportedFunction(c.fn)
			rt, compiled := setupWith(b, c.count, c.terminate)
			var bare, limited time.Duration
			_, err = reslimit.Run(ctx, benchLimits, func(ctx context.Context) error {
				ctx = reslimitwazero.WithTracker(ctx)
				mod := instantiate(b, ctx, rt, compiled)
				defer mod.Close(ctx)
				fn := mod.ExportedFunction(c.fn)
				for b.Loop() {
					t0 := time.Now()
					if _, err := bfn.Call(context.Background(), c.arg); err != nil {
						return err
					}
					t1 := time.Now()
					if _, err := reslimitwazero.Call(ctx, fn, c.arg); err != nil {
						return err
					}
					bare += t1.Sub(t0)
					limited += time.Since(t1)
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(bare.Nanoseconds())/float64(b.N), "bare-ns/op")
			b.ReportMetric(float64(limited.Nanoseconds())/float64(b.N), "reslimit-ns/op")
			b.ReportMetric(float64(limited)/float64(bare), "ratio")
		})
	}
}

// BenchmarkEvaluationPaired: a whole evaluation (instantiate, fib(20),
// close), bare and as a reslimit run with its memory charged, CPU time
// measured and timeout watched, without termination checks.
func BenchmarkEvaluationPaired(b *testing.B) {
	ctx := context.Background()
	brt := wazero.NewRuntime(ctx)
	defer brt.Close(ctx)
	bcompiled, err := brt.CompileModule(ctx, wasmbin.Guests().Bytes())
	if err != nil {
		b.Fatal(err)
	}
	rt, compiled := setupWith(b, false, false)
	eval := func(ctx context.Context, rt wazero.Runtime, compiled wazero.CompiledModule) error {
		mod, err := reslimitwazero.Instantiate(ctx, rt, compiled, wazero.NewModuleConfig().WithName(""))
		if err != nil {
			return err
		}
		defer mod.Close(ctx)
		_, err = reslimitwazero.Call(ctx, mod.ExportedFunction("fib"), 20)
		return err
	}
	var bare, limited time.Duration
	for b.Loop() {
		t0 := time.Now()
		if err := eval(ctx, brt, bcompiled); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		_, err := reslimit.Run(ctx, benchLimits, func(ctx context.Context) error {
			return eval(reslimitwazero.WithTracker(ctx), rt, compiled)
		})
		if err != nil {
			b.Fatal(err)
		}
		bare += t1.Sub(t0)
		limited += time.Since(t1)
	}
	b.ReportMetric(float64(bare.Nanoseconds())/float64(b.N), "bare-ns/op")
	b.ReportMetric(float64(limited.Nanoseconds())/float64(b.N), "reslimit-ns/op")
	b.ReportMetric(float64(limited)/float64(bare), "ratio")
}
