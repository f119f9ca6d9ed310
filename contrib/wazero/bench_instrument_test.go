package reslimitwazero_test

import (
	"context"
	"testing"
	"time"

	"github.com/reslimit/reslimit"
	reslimitwazero "github.com/reslimit/reslimit/contrib/wazero"
	"github.com/reslimit/reslimit/contrib/wazero/internal/wasmbin"
)

// paired runs the functions of fs one after the other in each op and reports each
// one's ns/op under its name and its ratio to the first's, so that a busy
// machine slows them alike.
func paired(b *testing.B, names []string, fs []func() error) {
	b.Helper()
	total := make([]time.Duration, len(fs))
	for op := 0; b.Loop(); op++ {
		for k := range fs {
			i := (op + k) % len(fs) // each goes first in turn (the first pays for the others' garbage)
			t0 := time.Now()
			if err := fs[i](); err != nil {
				b.Fatal(err)
			}
			total[i] += time.Since(t0)
		}
	}
	for i, name := range names {
		b.ReportMetric(float64(total[i].Nanoseconds())/float64(b.N), name+"-ns/op")
		if i > 0 {
			b.ReportMetric(float64(total[i])/float64(total[0]), name+"/"+names[0])
		}
	}
}

// BenchmarkInstrumentedLoop: sum(10⁷), a loop of 10⁷ iterations of 16
// instructions, bare; instrumented and charged (a run with MaxOperations
// set, so every batch also asks what is left; no Config); and bare with
// Config (WithCloseOnContextDone), today's way to stop a spinning guest.
func BenchmarkInstrumentedLoop(b *testing.B) {
	const n = 10_000_000
	ctx := context.Background()
	brt, bc := compileWith(b, wasmbin.Guests().Bytes(), false, false)
	crt, cc := compileWith(b, wasmbin.Guests().Bytes(), false, true)
	irt, ic := compileWith(b, instrumentedGuests(b), false, false)
	bare := instantiate(b, ctx, brt, bc).ExportedFunction("sum")
	_, err := reslimit.Run(ctx, reslimit.Limits{MaxOperations: 1 << 62, Timeout: time.Hour}, func(ctx context.Context) error {
		ctx = reslimitwazero.WithTracker(ctx)
		withConfig := instantiate(b, ctx, crt, cc).ExportedFunction("sum")
		instrumented := instantiate(b, ctx, irt, ic).ExportedFunction("sum")
		call := func(f interface {
			Call(context.Context, ...uint64) ([]uint64, error)
		}, ctx context.Context) func() error {
			return func() error { _, err := f.Call(ctx, n); return err }
		}
		paired(b, []string{"bare", "instrumented", "config"}, []func() error{
			call(bare, context.Background()), call(instrumented, ctx), call(withConfig, ctx),
		})
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}

// BenchmarkInstrumentedGoProgram: testdata/wasip1 (a Go program built for
// wasip1: sort, map, SHA-256, JSON, goroutines, floats over 20,000
// numbers) run end to end under WASI — instantiate, _start, close — bare,
// and instrumented in a run that charges its instructions.
func BenchmarkInstrumentedGoProgram(b *testing.B) {
	wasm := wasip1Program(b)
	inst, err := reslimitwazero.Instrument(wasm)
	if err != nil {
		b.Fatal(err)
	}
	brt, bc := wasiRuntime(b, wasm)
	irt, ic := wasiRuntime(b, inst)
	var want string
	paired(b, []string{"bare", "instrumented"}, []func() error{
		func() (err error) {
			want, err = runWASI(b, context.Background(), brt, bc, "20000")
			return err
		},
		func() error {
			_, err := reslimit.Run(context.Background(), reslimit.Limits{MaxOperations: 1 << 62}, func(ctx context.Context) error {
				got, err := runWASI(b, ctx, irt, ic, "20000")
				if err == nil && got != want {
					b.Fatalf("instrumented output %q, bare %q", got, want)
				}
				return err
			})
			return err
		},
	})
}

// BenchmarkInstrument: Instrument on the Go program (MB/s is its speed).
func BenchmarkInstrument(b *testing.B) {
	for _, c := range []struct {
		name string
		wasm []byte
	}{{"guests", wasmbin.Guests().Bytes()}, {"goprogram", wasip1Program(b)}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(c.wasm)))
			b.ReportAllocs()
			var out []byte
			for b.Loop() {
				var err error
				if out, err = reslimitwazero.Instrument(c.wasm); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(out))/float64(len(c.wasm)), "size-ratio")
		})
	}
}
