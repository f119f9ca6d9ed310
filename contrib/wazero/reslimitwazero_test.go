package reslimitwazero_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/reslimit/reslimit"
	reslimitwazero "github.com/reslimit/reslimit/contrib/wazero"
	"github.com/reslimit/reslimit/contrib/wazero/internal/wasmbin"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const page = 65536

// setup returns a runtime set up by Config and the guests compiled in it,
// with call counting when count is true.
func setup(t testing.TB, count bool) (wazero.Runtime, wazero.CompiledModule) {
	t.Helper()
	return setupWith(t, count, true)
}

// setupWith is setup, with Config (termination) only when terminate is true.
func setupWith(t testing.TB, count, terminate bool) (wazero.Runtime, wazero.CompiledModule) {
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
	compiled, err := rt.CompileModule(cctx, wasmbin.Guests().Bytes())
	if err != nil {
		t.Fatal(err)
	}
	return rt, compiled
}

// instantiate instantiates compiled charged to ctx's run, closing it at the
// end of the test (or earlier by the caller).
func instantiate(t testing.TB, ctx context.Context, rt wazero.Runtime, compiled wazero.CompiledModule) api.Module {
	t.Helper()
	mod, err := reslimitwazero.Instantiate(ctx, rt, compiled, wazero.NewModuleConfig().WithName(""))
	if err != nil {
		t.Fatal(err)
	}
	return mod
}

func limitErr(t *testing.T, err error, want reslimit.Resource) *reslimit.LimitError {
	t.Helper()
	var le *reslimit.LimitError
	if !errors.As(err, &le) {
		t.Fatalf("error %v (%T) is not a *reslimit.LimitError", err, err)
	}
	if le.Resource != want {
		t.Fatalf("stopped by %s, want %s: %v", le.Resource, want, err)
	}
	return le
}

// The memory a guest grows is charged exactly: it may grow to the limit
// (19 pages: not a power of two) and no further, memory.grow fails softly,
// and closing the module gives every byte back.
func TestMemoryGrowsToTheLimitExactly(t *testing.T) {
	rt, compiled := setup(t, false)
	limit := int64(19 * page)
	u, err := reslimit.Run(context.Background(), reslimit.Limits{MaxMemoryBytes: limit}, func(ctx context.Context) error {
		ctx = reslimitwazero.WithTracker(ctx)
		tr := reslimit.FromContext(ctx)
		mod := instantiate(t, ctx, rt, compiled)
		if got := tr.Usage().MemoryBytes; got != page {
			t.Errorf("after instantiation %d bytes held, want one page (%d)", got, page)
		}
		res, err := reslimitwazero.Call(ctx, mod.ExportedFunction("grow_until_refused"))
		if err != nil {
			return err // the guest handled the refusal: no error
		}
		if res[0] != 19 {
			t.Errorf("the guest grew to %d pages, want 19", res[0])
		}
		if got := tr.Usage().MemoryBytes; got != limit {
			t.Errorf("%d bytes held, want %d", got, limit)
		}
		if n := mod.Memory().Size(); n != uint32(limit) {
			t.Errorf("guest memory is %d bytes, want %d", n, limit)
		}
		if err := mod.Close(ctx); err != nil {
			return err
		}
		if got := tr.Usage().MemoryBytes; got != 0 {
			t.Errorf("after Close %d bytes held, want 0", got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if u.PeakMemoryBytes != limit || u.Refusals == 0 {
		t.Errorf("peak %d (want %d), refusals %d (want > 0)", u.PeakMemoryBytes, limit, u.Refusals)
	}
}

// A guest that traps on a refused growth gives its caller the memory
// *LimitError, with the tenant's name when the tenant's MaxMemory refused;
// the host and the tenant's next run are fine.
func TestMemoryTrapIsTheLimitError(t *testing.T) {
	rt, compiled := setup(t, false)
	ledger := mustLedger(t, reslimit.AccountLimits{MaxMemory: 8 * page})
	acct := ledger.Account("acme")
	grow := func(ctx context.Context) error {
		ctx = reslimitwazero.WithTracker(ctx)
		mod := instantiate(t, ctx, rt, compiled)
		defer mod.Close(ctx)
		_, err := reslimitwazero.Call(ctx, mod.ExportedFunction("grow"))
		var gerr *reslimitwazero.Error
		if !errors.As(err, &gerr) {
			t.Errorf("Call returned %v (%T), want a *reslimitwazero.Error", err, err)
		}
		return err
	}
	// The run's own limit.
	_, err := reslimit.Run(context.Background(), reslimit.Limits{MaxMemoryBytes: 5 * page}, grow)
	le := limitErr(t, err, reslimit.Memory)
	if le.Limit != 5*page || le.Used+le.Requested <= le.Limit || le.Tenant != "" {
		t.Errorf("unexpected error %+v", le)
	}
	// The tenant's.
	_, err = reslimit.Run(context.Background(), reslimit.Limits{}, grow, reslimit.WithAccount(acct))
	le = limitErr(t, err, reslimit.Memory)
	if le.Limit != 8*page || le.Tenant != "acme" {
		t.Errorf("unexpected error %+v", le)
	}
	if st := acct.Stats(); st.MemoryBytes != 0 || st.PeakMemoryBytes != 8*page {
		t.Errorf("account holds %d bytes (want 0), peak %d (want %d)", st.MemoryBytes, st.PeakMemoryBytes, 8*page)
	}
	// The same tenant's next evaluation works.
	_, err = reslimit.Run(context.Background(), reslimit.Limits{}, func(ctx context.Context) error {
		ctx = reslimitwazero.WithTracker(ctx)
		mod := instantiate(t, ctx, rt, compiled)
		defer mod.Close(ctx)
		res, err := reslimitwazero.Call(ctx, mod.ExportedFunction("sum"), 1000)
		if err == nil && res[0] != 332833500 {
			t.Errorf("sum(1000) = %d", res[0])
		}
		return err
	}, reslimit.WithAccount(acct))
	if err != nil {
		t.Fatal(err)
	}
}

// A module whose initial memory does not fit is refused by Instantiate,
// with nothing left charged.
func TestInitialMemoryRefused(t *testing.T) {
	rt, compiled := setup(t, false)
	u, err := reslimit.Run(context.Background(), reslimit.Limits{MaxMemoryBytes: page - 1}, func(ctx context.Context) error {
		mod, err := reslimitwazero.Instantiate(ctx, rt, compiled, wazero.NewModuleConfig())
		if mod != nil {
			t.Error("a module was returned")
		}
		return err
	})
	le := limitErr(t, err, reslimit.Memory)
	if le.Requested != page {
		t.Errorf("requested %d, want %d", le.Requested, page)
	}
	if u.MemoryBytes != 0 || u.PeakMemoryBytes != 0 {
		t.Errorf("usage %+v, want nothing held", u)
	}
}

// A guest spinning in (loop br 0) is stopped by the run's CPU time: the
// caller gets the cpu_time *LimitError, the run's CPU time is about the
// limit, and its memory is given back.
func TestSpinStoppedByCPUTime(t *testing.T) {
	rt, compiled := setup(t, false)
	limit := 100 * time.Millisecond
	var inner error
	u, err := reslimit.Run(context.Background(), reslimit.Limits{MaxCPUTime: limit}, func(ctx context.Context) error {
		ctx = reslimitwazero.WithTracker(ctx)
		mod := instantiate(t, ctx, rt, compiled)
		defer mod.Close(ctx)
		_, inner = reslimitwazero.Call(ctx, mod.ExportedFunction("spin"))
		return inner
	})
	limitErr(t, err, reslimit.CPUTime)
	limitErr(t, inner, reslimit.CPUTime) // what the function saw
	if u.CPUTime < limit {
		t.Errorf("stopped after %v of CPU time, before the limit %v", u.CPUTime, limit)
	}
	if u.MemoryBytes != 0 {
		t.Errorf("%d bytes still held", u.MemoryBytes)
	}
	t.Logf("stopped after %v of CPU time (limit %v), wall %v", u.CPUTime, limit, u.WallTime)
}

// The same with the run's timeout, in a function wrapped by Limit.
func TestSpinStoppedByTimeout(t *testing.T) {
	rt, compiled := setup(t, false)
	tool := reslimit.Limit(func(ctx context.Context, fn string) (uint64, error) {
		ctx = reslimitwazero.WithTracker(ctx)
		mod := instantiate(t, ctx, rt, compiled)
		defer mod.Close(ctx)
		res, err := reslimitwazero.Call(ctx, mod.ExportedFunction(fn))
		if err != nil {
			limitErr(t, err, reslimit.Timeout)
			return 0, err
		}
		return res[0], nil
	}, reslimit.Limits{Timeout: 100 * time.Millisecond})
	_, err := tool(context.Background(), "spin")
	limitErr(t, err, reslimit.Timeout)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a timeout should match context.DeadlineExceeded: %v", err)
	}
}

// A guest stopped by its caller's cancellation returns the cause.
func TestSpinStoppedByCaller(t *testing.T) {
	rt, compiled := setup(t, false)
	stop := errors.New("caller gave up")
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	host := rt.NewHostModuleBuilder("env").NewFunctionBuilder().
		WithFunc(func(ctx context.Context, _ uint32) { cancel(stop) }).Export("charge")
	if _, err := host.Instantiate(ctx); err != nil {
		t.Fatal(err)
	}
	hc, err := rt.CompileModule(ctx, wasmbin.HostCaller().Bytes())
	if err != nil {
		t.Fatal(err)
	}
	_ = compiled
	_, err = reslimit.Run(ctx, reslimit.Limits{MaxCPUTime: time.Minute}, func(ctx context.Context) error {
		ctx = reslimitwazero.WithTracker(ctx)
		mod := instantiate(t, ctx, rt, hc)
		defer mod.Close(ctx)
		_, err := reslimitwazero.Call(ctx, mod.ExportedFunction("charge_forever"))
		return err
	})
	if !errors.Is(err, stop) {
		t.Fatalf("got %v, want the caller's cause", err)
	}
}

// Unbounded recursion ends in wazero's stack overflow (not a limit of
// reslimit) and leaves the host healthy; with call counting the tenant's
// MaxCalls stops it first, exactly at the limit.
func TestRecursion(t *testing.T) {
	t.Run("bare", func(t *testing.T) {
		rt, compiled := setup(t, false)
		_, err := reslimit.Run(context.Background(), reslimit.Strict(), func(ctx context.Context) error {
			ctx = reslimitwazero.WithTracker(ctx)
			mod := instantiate(t, ctx, rt, compiled)
			defer mod.Close(ctx)
			_, err := reslimitwazero.Call(ctx, mod.ExportedFunction("recurse"))
			return err
		})
		var le *reslimit.LimitError
		if err == nil || errors.As(err, &le) {
			t.Fatalf("got %v, want wazero's stack overflow", err)
		}
		t.Logf("bare recursion: %.60s", err)
	})
	t.Run("counted", func(t *testing.T) {
		rt, compiled := setup(t, true)
		ledger := mustLedger(t, reslimit.AccountLimits{MaxCalls: 1000})
		acct := ledger.Account("acme")
		_, err := reslimit.Run(context.Background(), reslimit.Strict(), func(ctx context.Context) error {
			ctx = reslimitwazero.WithTracker(ctx)
			mod := instantiate(t, ctx, rt, compiled)
			defer mod.Close(ctx)
			_, err := reslimitwazero.Call(ctx, mod.ExportedFunction("recurse"))
			return err
		}, reslimit.WithAccount(acct))
		le := limitErr(t, err, reslimit.Calls)
		if le.Tenant != "acme" {
			t.Errorf("tenant %q", le.Tenant)
		}
		if st := acct.Stats(); st.Calls != 1000 {
			t.Errorf("the tenant was charged %d calls, want 1000", st.Calls)
		}
	})
}

// Call counting charges every guest function call exactly: fib(10)
// makes 177 calls.
func TestCallCountingIsExact(t *testing.T) {
	rt, compiled := setup(t, true)
	u, err := runFib(t, rt, compiled, 10, 55)
	if err != nil {
		t.Fatal(err)
	}
	if u.Calls != 177 {
		t.Errorf("%d calls counted, want 177", u.Calls)
	}
}

// runFib calls the guest's fib(n) in a run of its own, checks that it
// returns want, and returns what the run was charged.
func runFib(t *testing.T, rt wazero.Runtime, compiled wazero.CompiledModule, n, want uint64) (reslimit.Usage, error) {
	t.Helper()
	return reslimit.Run(context.Background(), reslimit.Limits{}, func(ctx context.Context) error {
		ctx = reslimitwazero.WithTracker(ctx)
		mod := instantiate(t, ctx, rt, compiled)
		defer mod.Close(ctx)
		res, err := reslimitwazero.Call(ctx, mod.ExportedFunction("fib"), n)
		if err == nil && res[0] != want {
			t.Errorf("fib(%d) = %d, want %d", n, res[0], want)
		}
		return err
	})
}

// A host function charges the run through the call's context; a refusal
// it panics with stops the guest with that *LimitError.
func TestHostFunctionCharges(t *testing.T) {
	ctx := context.Background()
	rt := wazero.NewRuntimeWithConfig(ctx, reslimitwazero.Config(wazero.NewRuntimeConfig()))
	defer rt.Close(ctx)
	_, err := rt.NewHostModuleBuilder("env").NewFunctionBuilder().
		WithFunc(func(ctx context.Context, n uint32) {
			if err := reslimit.FromContext(ctx).TrackOperations(int64(n)); err != nil {
				panic(err)
			}
		}).Export("charge").Instantiate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hc, err := rt.CompileModule(ctx, wasmbin.HostCaller().Bytes())
	if err != nil {
		t.Fatal(err)
	}
	u, err := reslimit.Run(ctx, reslimit.Limits{MaxOperations: 100}, func(ctx context.Context) error {
		ctx = reslimitwazero.WithTracker(ctx)
		mod := instantiate(t, ctx, rt, hc)
		defer mod.Close(ctx)
		if _, err := reslimitwazero.Call(ctx, mod.ExportedFunction("charge_once"), 40); err != nil {
			return err
		}
		_, err := reslimitwazero.Call(ctx, mod.ExportedFunction("charge_forever"))
		return err
	})
	limitErr(t, err, reslimit.Operations)
	if u.Operations != 100 {
		t.Errorf("%d operations charged, want 100", u.Operations)
	}
}

// Outside a run nothing is charged and guests run as they would without
// reslimit.
func TestNoRun(t *testing.T) {
	rt, compiled := setup(t, true)
	ctx := context.Background()
	if reslimitwazero.WithTracker(ctx) != ctx {
		t.Error("WithTracker changed a context without a run")
	}
	mod := instantiate(t, ctx, rt, compiled)
	defer mod.Close(ctx)
	res, err := reslimitwazero.Call(ctx, mod.ExportedFunction("fib"), 20)
	if err != nil || res[0] != 6765 {
		t.Fatalf("fib(20) = %v, %v", res, err)
	}
}

func mustLedger(t testing.TB, l reslimit.AccountLimits) *reslimit.Ledger {
	t.Helper()
	ledger, err := reslimit.NewLedger(l)
	if err != nil {
		t.Fatal(err)
	}
	return ledger
}
