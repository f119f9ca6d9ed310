package reslimitwazero_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/reslimit/reslimit"
	reslimitwazero "github.com/reslimit/reslimit/contrib/wazero"
	"github.com/reslimit/reslimit/contrib/wazero/internal/wasmbin"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"
)

// instrumentedGuests returns the guests, instrumented.
func instrumentedGuests(t testing.TB) []byte {
	t.Helper()
	wasm, err := reslimitwazero.Instrument(wasmbin.Guests().Bytes())
	if err != nil {
		t.Fatal(err)
	}
	return wasm
}

// compileWith compiles wasm in a new runtime (with Config when terminate
// is true, counting calls when count is).
func compileWith(t testing.TB, wasm []byte, count, terminate bool) (wazero.Runtime, wazero.CompiledModule) {
	t.Helper()
	ctx := context.Background()
	cfg := wazero.NewRuntimeConfig()
	if terminate {
		cfg = reslimitwazero.Config(cfg)
	}
	rt := wazero.NewRuntimeWithConfig(ctx, cfg)
	t.Cleanup(func() { _ = rt.Close(ctx) })
	cctx := ctx
	if count {
		cctx = reslimitwazero.CountCalls(ctx)
	}
	compiled, err := rt.CompileModule(cctx, wasm)
	if err != nil {
		t.Fatal(err)
	}
	return rt, compiled
}

// sumOps is the number of instructions sum(n) executes, as Instrument
// counts them: (loop) once; each of the n+1 tests of the loop's condition
// (local.get, local.get, i32.lt_u, if); each of the n iterations' 12
// instructions (to br 1); and on leaving, the loop's end, local.get and
// the function's end.
func sumOps(n int64) int64 { return 1 + 4*(n+1) + 12*n + 3 }

// An instrumented guest computes what it computed, and its run is charged
// exactly the instructions it ran when the run's MaxOperations is exactly
// that; one operation less and it is stopped before its last block, with
// the operations *LimitError, charged no more than the limit.
func TestInstrumentChargesEveryInstruction(t *testing.T) {
	rt, compiled := compileWith(t, instrumentedGuests(t), false, false)
	brt, bcompiled := compileWith(t, wasmbin.Guests().Bytes(), false, false)
	call := func(ctx context.Context, rt wazero.Runtime, c wazero.CompiledModule, fn string, arg uint64) (uint64, error) {
		ctx = reslimitwazero.WithTracker(ctx)
		mod := instantiate(t, ctx, rt, c)
		defer mod.Close(ctx)
		res, err := reslimitwazero.Call(ctx, mod.ExportedFunction(fn), arg)
		if err != nil {
			return 0, err
		}
		return res[0], nil
	}
	for _, n := range []int64{0, 1, 1000, 12345} {
		want, err := call(context.Background(), brt, bcompiled, "sum", uint64(n))
		if err != nil {
			t.Fatal(err)
		}
		var got uint64
		u, err := reslimit.Run(context.Background(), reslimit.Limits{MaxOperations: sumOps(n)}, func(ctx context.Context) (err error) {
			got, err = call(ctx, rt, compiled, "sum", uint64(n))
			return err
		})
		if err != nil {
			t.Fatalf("sum(%d) with MaxOperations %d: %v", n, sumOps(n), err)
		}
		if got != want {
			t.Errorf("sum(%d) = %d instrumented, %d bare", n, got, want)
		}
		if u.Operations != sumOps(n) {
			t.Errorf("sum(%d): %d operations charged, want %d", n, u.Operations, sumOps(n))
		}
		u, err = reslimit.Run(context.Background(), reslimit.Limits{MaxOperations: sumOps(n) - 1}, func(ctx context.Context) (err error) {
			_, err = call(ctx, rt, compiled, "sum", uint64(n))
			return err
		})
		le := limitErr(t, err, reslimit.Operations)
		if le.Limit != sumOps(n)-1 || u.Operations > sumOps(n)-1 {
			t.Errorf("sum(%d): stopped by %+v after %d operations charged, want the limit %d", n, le, u.Operations, sumOps(n)-1)
		}
	}
	// Outside a run: the same result, nothing to charge.
	got, err := call(context.Background(), rt, compiled, "fib", 20)
	if err != nil || got != 6765 {
		t.Errorf("fib(20) outside a run = %d, %v", got, err)
	}
}

// A tenant's MaxTotalOperations binds its guests: runs are refused once
// the tenant's operations are used up, never charged past the limit; each
// run is billed exactly what its guest ran (the refused one what it ran
// before it was stopped).
func TestInstrumentTenantTotal(t *testing.T) {
	rt, compiled := compileWith(t, instrumentedGuests(t), false, false)
	const total = 100_000
	ledger := mustLedger(t, reslimit.AccountLimits{MaxTotalOperations: total})
	acct := ledger.Account("acme")
	ran := int64(0)
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		_, err = reslimit.Run(context.Background(), reslimit.Limits{}, func(ctx context.Context) error {
			ctx = reslimitwazero.WithTracker(ctx)
			mod := instantiate(t, ctx, rt, compiled)
			defer mod.Close(ctx)
			_, err := reslimitwazero.Call(ctx, mod.ExportedFunction("sum"), 1000)
			return err
		}, reslimit.WithAccount(acct))
		if err == nil {
			ran += sumOps(1000)
		}
	}
	le := limitErr(t, err, reslimit.Operations)
	if le.Tenant != "acme" {
		t.Errorf("refused by %+v, want the tenant's", le)
	}
	st := acct.Stats()
	if st.Operations > total {
		t.Errorf("the tenant was charged %d operations, past its %d", st.Operations, total)
	}
	runs := ran / sumOps(1000)
	if ran > total || st.Operations < ran || st.Operations-ran >= sumOps(1000) {
		t.Errorf("guests ran %d instructions in %d runs, the tenant was charged %d (limit %d)", ran, runs, st.Operations, total)
	}
	t.Logf("%d runs of sum(1000) (%d instructions each) under a total of %d: charged %d", runs, sumOps(1000), total, st.Operations)
}

// Each call is billed exactly the instructions it ran when it returns,
// whether it is made with Call or wazero's Call, many on one module.
func TestInstrumentBillsEachCall(t *testing.T) {
	rt, compiled := compileWith(t, instrumentedGuests(t), false, false)
	for _, limit := range []int64{0, 4 * sumOps(1000)} {
		var after []int64
		u, err := reslimit.Run(context.Background(), reslimit.Limits{MaxOperations: limit}, func(ctx context.Context) error {
			ctx = reslimitwazero.WithTracker(ctx)
			mod := instantiate(t, ctx, rt, compiled)
			defer mod.Close(ctx)
			sum := mod.ExportedFunction("sum")
			for i := range 4 {
				var err error
				if i%2 == 0 {
					_, err = reslimitwazero.Call(ctx, sum, 1000)
				} else {
					_, err = sum.Call(ctx, 1000)
				}
				if err != nil {
					return err
				}
				after = append(after, reslimit.FromContext(ctx).Usage().Operations)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("MaxOperations %d: %v", limit, err)
		}
		for i, ops := range after {
			if want := int64(i+1) * sumOps(1000); ops != want {
				t.Errorf("MaxOperations %d: after call %d, %d operations billed, want %d", limit, i+1, ops, want)
			}
		}
		if u.Operations != 4*sumOps(1000) {
			t.Errorf("MaxOperations %d: %d operations billed, want %d", limit, u.Operations, 4*sumOps(1000))
		}
	}
}

// A guest stopped by a host function (as WASI's proc_exit stops it) is
// billed exactly what it ran: the bill is settled before every call of
// the host. charge_forever runs its loop instruction, then 3 per
// iteration (i32.const, call, br), counted when the iteration starts.
func TestInstrumentBillsHostExit(t *testing.T) {
	ctx := context.Background()
	rt := wazero.NewRuntime(ctx)
	t.Cleanup(func() { _ = rt.Close(ctx) })
	stop := errors.New("host: enough")
	var calls, exitAt int
	_, err := rt.NewHostModuleBuilder("env").NewFunctionBuilder().
		WithFunc(func(context.Context, int32) {
			if calls++; calls == exitAt {
				panic(stop)
			}
		}).Export("charge").Instantiate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wasm, err := reslimitwazero.Instrument(wasmbin.HostCaller().Bytes())
	if err != nil {
		t.Fatal(err)
	}
	compiled, err := rt.CompileModule(ctx, wasm)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []int{1, 2, 100, 5000} {
		calls, exitAt = 0, k
		u, err := reslimit.Run(ctx, reslimit.Limits{MaxOperations: 1 << 40}, func(ctx context.Context) error {
			ctx = reslimitwazero.WithTracker(ctx)
			mod := instantiate(t, ctx, rt, compiled)
			defer mod.Close(ctx)
			_, err := reslimitwazero.Call(ctx, mod.ExportedFunction("charge_forever"))
			return err
		})
		if !errors.Is(err, stop) {
			t.Fatalf("exit at call %d: %v", k, err)
		}
		if want := int64(1 + 3*k); u.Operations != want {
			t.Errorf("exit at call %d: %d operations billed, want %d", k, u.Operations, want)
		}
	}
}

// A spinning instrumented guest is stopped by its run's timeout, CPU time
// or caller without Config (WithCloseOnContextDone).
func TestInstrumentStopsSpinWithoutConfig(t *testing.T) {
	rt, compiled := compileWith(t, instrumentedGuests(t), false, false)
	spin := func(ctx context.Context) error {
		ctx = reslimitwazero.WithTracker(ctx)
		mod := instantiate(t, ctx, rt, compiled)
		defer mod.Close(ctx)
		_, err := reslimitwazero.Call(ctx, mod.ExportedFunction("spin"))
		return err
	}
	t.Run("timeout", func(t *testing.T) {
		start := time.Now()
		_, err := reslimit.Run(context.Background(), reslimit.Limits{Timeout: 50 * time.Millisecond}, spin)
		limitErr(t, err, reslimit.Timeout)
		t.Logf("stopped after %v", time.Since(start))
	})
	t.Run("cpu", func(t *testing.T) {
		u, err := reslimit.Run(context.Background(), reslimit.Limits{MaxCPUTime: 50 * time.Millisecond}, spin)
		limitErr(t, err, reslimit.CPUTime)
		t.Logf("stopped after %v of CPU time, %d operations", u.CPUTime, u.Operations)
	})
	t.Run("caller", func(t *testing.T) {
		stop := errors.New("caller gave up")
		ctx, cancel := context.WithCancelCause(context.Background())
		time.AfterFunc(20*time.Millisecond, func() { cancel(stop) })
		_, err := reslimit.Run(ctx, reslimit.Limits{}, spin)
		if !errors.Is(err, stop) {
			t.Errorf("got %v, want the caller's cause", err)
		}
	})
	t.Run("no run", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		err := spin(ctx)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("got %v, want the context's deadline", err)
		}
	})
	t.Run("operations", func(t *testing.T) {
		u, err := reslimit.Run(context.Background(), reslimit.Limits{MaxOperations: 1_000_000}, spin)
		limitErr(t, err, reslimit.Operations)
		if u.Operations != 1_000_000 {
			t.Errorf("%d operations charged, want the limit", u.Operations)
		}
	})
}

// CountCalls still counts the guest's calls exactly (the host function
// is not one), with the instructions charged too; Config still works.
func TestInstrumentWithCountCallsAndConfig(t *testing.T) {
	for _, terminate := range []bool{false, true} {
		rt, compiled := compileWith(t, instrumentedGuests(t), true, terminate)
		u, err := runFib(t, rt, compiled, 20, 6765)
		if err != nil {
			t.Fatal(err)
		}
		if u.Calls != 21891 {
			t.Errorf("Config %v: %d calls counted, want fib(20)'s 21891", terminate, u.Calls)
		}
		if u.Operations == 0 {
			t.Errorf("Config %v: no operations charged", terminate)
		}
	}
}

// Instrument refuses what is not a module with an error, and a module
// that imports from the host's module: one it made, or one crafted to
// call the host function itself and run unmetered.
func TestInstrumentErrors(t *testing.T) {
	for _, b := range [][]byte{nil, []byte("\x00asm"), []byte("\x00asm\x02\x00\x00\x00"), []byte("\x00asm\x01\x00\x00\x00\x0a\x05\x01\x03\x00\xff\x0b")} {
		if _, err := reslimitwazero.Instrument(b); err == nil {
			t.Errorf("Instrument(%q) succeeded", b)
		}
	}
	once := instrumentedGuests(t)
	if _, err := reslimitwazero.Instrument(once); !errors.Is(err, reslimitwazero.ErrInstrumented) {
		t.Errorf("instrumenting twice: %v, want ErrInstrumented", err)
	}
}

var (
	wasip1Once sync.Once
	wasip1Wasm []byte
	wasip1Err  error
)

// wasip1Program builds testdata/wasip1 with GOOS=wasip1 GOARCH=wasm (once
// per test binary; the go command caches the build).
func wasip1Program(t testing.TB) []byte {
	t.Helper()
	wasip1Once.Do(func() {
		dir, err := os.MkdirTemp("", "reslimitwazero")
		if err != nil {
			wasip1Err = err
			return
		}
		defer os.RemoveAll(dir)
		out := filepath.Join(dir, "prog.wasm")
		cmd := exec.Command("go", "build", "-o", out, "./testdata/wasip1")
		cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
		if msg, err := cmd.CombinedOutput(); err != nil {
			wasip1Err = errors.New(string(msg) + err.Error())
			return
		}
		wasip1Wasm, wasip1Err = os.ReadFile(out)
	})
	if wasip1Err != nil {
		t.Fatalf("building testdata/wasip1: %v", wasip1Err)
	}
	return wasip1Wasm
}

// runWASI runs a WASI program's _start in a new runtime and returns its
// standard output.
func runWASI(t testing.TB, ctx context.Context, rt wazero.Runtime, compiled wazero.CompiledModule, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cfg := wazero.NewModuleConfig().WithName("").WithStdout(&stdout).WithStderr(&stderr).WithArgs(append([]string{"prog"}, args...)...)
	mod, err := reslimitwazero.Instantiate(ctx, rt, compiled, cfg)
	if mod != nil {
		_ = mod.Close(ctx)
	}
	var exit *sys.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 0 {
		err = nil
	}
	if err != nil && stderr.Len() > 0 {
		t.Logf("stderr: %s", stderr.String())
	}
	return stdout.String(), err
}

func wasiRuntime(t testing.TB, wasm []byte) (wazero.Runtime, wazero.CompiledModule) {
	t.Helper()
	ctx := context.Background()
	rt := wazero.NewRuntime(ctx)
	t.Cleanup(func() { _ = rt.Close(ctx) })
	wasi_snapshot_preview1.MustInstantiate(ctx, rt)
	compiled, err := rt.CompileModule(ctx, wasm)
	if err != nil {
		t.Fatal(err)
	}
	return rt, compiled
}

// A Go program built for wasip1 prints the same bare and instrumented,
// and its instructions are charged to its run; MaxOperations stops it.
func TestInstrumentGoProgram(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a Go program")
	}
	bare := wasip1Program(t)
	inst, err := reslimitwazero.Instrument(bare)
	if err != nil {
		t.Fatal(err)
	}
	brt, bcompiled := wasiRuntime(t, bare)
	rt, compiled := wasiRuntime(t, inst)
	want, err := runWASI(t, context.Background(), brt, bcompiled, "2000")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(want, "float:") {
		t.Fatalf("unexpected output %q", want)
	}
	var got string
	u, err := reslimit.Run(context.Background(), reslimit.Limits{}, func(ctx context.Context) (err error) {
		got, err = runWASI(t, ctx, rt, compiled, "2000")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("instrumented output\n%s\nbare output\n%s", got, want)
	}
	if u.Operations < 1_000_000 {
		t.Errorf("only %d operations charged", u.Operations)
	}
	t.Logf("%d instructions charged", u.Operations)
	limit := u.Operations / 2
	u, err = reslimit.Run(context.Background(), reslimit.Limits{MaxOperations: limit}, func(ctx context.Context) error {
		_, err := runWASI(t, ctx, rt, compiled, "2000")
		return err
	})
	limitErr(t, err, reslimit.Operations)
	if u.Operations > limit {
		t.Errorf("%d operations charged past the limit %d", u.Operations, limit)
	}
}

// A crafted module cannot reach what Instrument adds: an import from the
// host's module (to call the host function itself), or code or exports
// naming a local, global or function the module does not have (after the
// rewrite they would name the fuel local, the fuel global or a wrapper,
// and the guest could set its own fuel) are refused. wazero refuses each
// of these modules uninstrumented; Instrument must not make them valid.
func TestInstrumentRefusesEscapes(t *testing.T) {
	head := []byte("\x00asm\x01\x00\x00\x00")
	types := []byte("\x01\x04\x01\x60\x00\x00") // one type: () -> ()
	funcs := []byte("\x03\x02\x01\x00")         // one function of type 0
	code := func(body string) []byte {          // one body, no locals
		b := append([]byte{0x00}, body...)
		e := append([]byte{byte(len(b))}, b...)
		s := append([]byte{0x01}, e...)
		return append([]byte{0x0a, byte(len(s))}, s...)
	}
	module := func(sections ...[]byte) []byte {
		m := append([]byte(nil), head...)
		for _, s := range sections {
			m = append(m, s...)
		}
		return m
	}
	importRefuel := append([]byte{0x02, 0x13, 0x01, 0x08}, "reslimit\x06refuel\x00\x00"...)
	for name, wasm := range map[string][]byte{
		"imports reslimit.refuel": module(types, importRefuel, funcs, code("\x0b")),
		"sets global 0 of 0":      module(types, funcs, code("\x42\x00\x24\x00\x0b")),
		"gets global 1 of 0":      module(types, funcs, code("\x23\x01\x1a\x0b")),
		"sets local 0 of 0":       module(types, funcs, code("\x42\x00\x21\x00\x0b")),
		"calls function 1 of 1":   module(types, funcs, code("\x10\x01\x0b")),
		"exports global 0 of 0":   module(types, funcs, []byte("\x07\x05\x01\x01g\x03\x00"), code("\x0b")),
	} {
		if _, err := reslimitwazero.Instrument(wasm); err == nil {
			t.Errorf("%s: Instrument succeeded", name)
		}
	}
	// The same shapes within range are instrumented.
	ok := module(types, funcs, code("\x0b"))
	if _, err := reslimitwazero.Instrument(ok); err != nil {
		t.Errorf("a valid module: %v", err)
	}
}
