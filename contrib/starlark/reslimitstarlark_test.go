package reslimitstarlark_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/reslimit/reslimit"
	reslimitstarlark "github.com/reslimit/reslimit/contrib/starlark"
	"go.starlark.net/starlark"
	"go.starlark.net/syntax"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var fileOpts = &syntax.FileOptions{While: true, TopLevelControl: true, GlobalReassign: true, Set: true}

// A script that behaves: a few thousand steps.
const behaves = `
def fib(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a

total = 0
for i in range(300):
    total += fib(i % 30)
`

// A script that loops forever.
const loops = `
def spin():
    n = 0
    while True:
        n += 1
spin()
`

// A script that builds an ever bigger list.
const hoards = `
def hoard():
    l = []
    while True:
        l.append("x" * 100)
hoard()
`

// bareSteps runs src on a plain thread and returns its step count.
func bareSteps(t *testing.T, src string) uint64 {
	t.Helper()
	thread := &starlark.Thread{}
	if _, err := starlark.ExecFileOptions(fileOpts, thread, "bare.star", src, nil); err != nil {
		t.Fatal(err)
	}
	return thread.ExecutionSteps()
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

// Every step of a script is charged, exactly, whatever the batch.
func TestStepsChargedExactly(t *testing.T) {
	n := bareSteps(t, behaves)
	for _, batch := range []uint64{1, 7, reslimitstarlark.DefaultBatch, 1 << 40} {
		u, err := reslimit.Run(context.Background(), reslimit.Limits{}, func(ctx context.Context) error {
			globals, err := reslimitstarlark.ExecFile(ctx, fileOpts, "behaves.star", behaves, nil, reslimitstarlark.WithBatch(batch))
			if err == nil && globals["total"] == nil {
				t.Error("no result")
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if u.Operations != int64(n) {
			t.Errorf("batch %d: %d operations charged, want the %d steps", batch, u.Operations, n)
		}
	}
}

// MaxOperations stops a script after exactly that many steps, all of them
// charged, whatever the batch.
func TestMaxOperationsBindsExactly(t *testing.T) {
	n := bareSteps(t, behaves)
	limit := int64(n/2 + 7)
	for _, batch := range []uint64{1, 100, reslimitstarlark.DefaultBatch} {
		var steps uint64
		u, err := reslimit.Run(context.Background(), reslimit.Limits{MaxOperations: limit}, func(ctx context.Context) error {
			thread, err := reslimitstarlark.Thread(ctx, reslimitstarlark.WithBatch(batch))
			if err != nil {
				return err
			}
			_, err = starlark.ExecFileOptions(fileOpts, thread, "behaves.star", behaves, nil)
			_ = reslimitstarlark.Finish(thread)
			steps = thread.ExecutionSteps()
			return reslimitstarlark.Err(thread, err)
		})
		le := limitErr(t, err, reslimit.Operations)
		if le.Limit != limit {
			t.Errorf("limit %d, want %d", le.Limit, limit)
		}
		if u.Operations != limit {
			t.Errorf("batch %d: %d operations charged, want %d", batch, u.Operations, limit)
		}
		if steps-1 != uint64(limit) { // the last step counted saw the cancellation
			t.Errorf("batch %d: %d steps ran, want %d", batch, steps-1, limit)
		}
	}
}

// The tenant's MaxTotalOperations binds across runs, exactly; the stopped
// script's error carries the tenant, and the *starlark.EvalError too.
func TestTenantTotalOperations(t *testing.T) {
	n := int64(bareSteps(t, behaves))
	ledger := mustLedger(t, reslimit.AccountLimits{MaxTotalOperations: n + n/3})
	acct := ledger.Account("acme")
	run := func() error {
		_, err := reslimit.Run(context.Background(), reslimit.Limits{}, func(ctx context.Context) error {
			_, err := reslimitstarlark.ExecFile(ctx, fileOpts, "behaves.star", behaves, nil)
			return err
		}, reslimit.WithAccount(acct))
		return err
	}
	if err := run(); err != nil {
		t.Fatal(err)
	}
	err := run()
	le := limitErr(t, err, reslimit.Operations)
	if le.Tenant != "acme" || le.Limit != n+n/3 {
		t.Errorf("unexpected %+v", le)
	}
	var ee *starlark.EvalError
	if !errors.As(err, &ee) {
		t.Errorf("the script's *starlark.EvalError is not in %v", err)
	}
	if got := acct.Stats().Operations; got != n+n/3 {
		t.Errorf("the tenant was charged %d operations, want %d", got, n+n/3)
	}
}

// A script that loops forever is stopped by the run's CPU time, and the
// caller gets the cpu_time *LimitError; the steps it ran are charged up to
// its last batch.
func TestLoopStoppedByCPUTime(t *testing.T) {
	limit := 100 * time.Millisecond
	var inner error
	u, err := reslimit.Run(context.Background(), reslimit.Limits{MaxCPUTime: limit}, func(ctx context.Context) error {
		_, inner = reslimitstarlark.ExecFile(ctx, fileOpts, "loops.star", loops, nil)
		return inner
	})
	limitErr(t, err, reslimit.CPUTime)
	limitErr(t, inner, reslimit.CPUTime)
	var se *reslimitstarlark.Error
	if !errors.As(inner, &se) {
		t.Errorf("the script's error %v (%T) is not a *reslimitstarlark.Error", inner, inner)
	}
	if u.CPUTime < limit || u.Operations == 0 {
		t.Errorf("usage %+v", u)
	}
	t.Logf("stopped after %v CPU, %d steps: %v", u.CPUTime, u.Operations, inner)
}

// The same with the timeout, in a function wrapped by Limit.
func TestLoopStoppedByTimeout(t *testing.T) {
	tool := reslimit.Limit(func(ctx context.Context, src string) (starlark.StringDict, error) {
		return reslimitstarlark.ExecFile(ctx, fileOpts, "loops.star", src, nil)
	}, reslimit.Limits{Timeout: 100 * time.Millisecond})
	_, err := tool(context.Background(), loops)
	limitErr(t, err, reslimit.Timeout)
}

// The caller's cancellation stops the script with its cause.
func TestLoopStoppedByCaller(t *testing.T) {
	stop := errors.New("caller gave up")
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	predeclared := starlark.StringDict{
		"give_up": starlark.NewBuiltin("give_up", func(*starlark.Thread, *starlark.Builtin, starlark.Tuple, []starlark.Tuple) (starlark.Value, error) {
			cancel(stop)
			return starlark.None, nil
		}),
	}
	_, err := reslimit.Run(ctx, reslimit.Limits{MaxCPUTime: time.Minute}, func(ctx context.Context) error {
		_, err := reslimitstarlark.ExecFile(ctx, fileOpts, "gives_up.star", "give_up()\n"+loops, predeclared)
		if !errors.Is(err, stop) {
			t.Errorf("the script returned %v, want the caller's cause", err)
		}
		return err
	})
	if !errors.Is(err, stop) {
		t.Fatalf("got %v, want the caller's cause", err)
	}
}

// A script building a huge list is stopped by its steps under Strict(); the
// host is fine and the tenant's next evaluation works. (Its memory is not
// charged: Starlark has no allocation hook.)
func TestHugeList(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{})
	acct := ledger.Account("acme")
	run := func(src string) (reslimit.Usage, error) {
		return reslimit.Run(context.Background(), reslimit.Strict(), func(ctx context.Context) error {
			_, err := reslimitstarlark.ExecFile(ctx, fileOpts, "script.star", src, nil)
			return err
		}, reslimit.WithAccount(acct))
	}
	u, err := run(hoards)
	limitErr(t, err, reslimit.Operations)
	if u.Operations != reslimit.Strict().MaxOperations {
		t.Errorf("%d operations, want %d", u.Operations, reslimit.Strict().MaxOperations)
	}
	if _, err := run("l = [x * x for x in range(100)]\n"); err != nil {
		t.Fatalf("the next evaluation failed: %v", err)
	}
	if st := acct.Stats(); st.Evaluations != 2 {
		t.Errorf("%d evaluations", st.Evaluations)
	}
}

// Call runs a function of a script's globals, charged like ExecFile.
func TestCall(t *testing.T) {
	globals, err := reslimitstarlark.ExecFile(context.Background(), fileOpts, "behaves.star", behaves, nil)
	if err != nil {
		t.Fatal(err)
	}
	u, err := reslimit.Run(context.Background(), reslimit.Limits{MaxOperations: 1000}, func(ctx context.Context) error {
		v, err := reslimitstarlark.Call(ctx, globals["fib"], starlark.Tuple{starlark.MakeInt(20)}, nil)
		if err == nil && v.String() != "6765" {
			t.Errorf("fib(20) = %v", v)
		}
		return err
	})
	if err != nil || u.Operations == 0 {
		t.Fatalf("usage %+v, %v", u, err)
	}
	_, err = reslimit.Run(context.Background(), reslimit.Limits{MaxOperations: 1000}, func(ctx context.Context) error {
		_, err := reslimitstarlark.Call(ctx, globals["fib"], starlark.Tuple{starlark.MakeInt(100000)}, nil)
		return err
	})
	limitErr(t, err, reslimit.Operations)
}

// Outside a run nothing is charged and a script runs as without reslimit.
func TestNoRun(t *testing.T) {
	thread, err := reslimitstarlark.Thread(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if thread.OnMaxSteps != nil {
		t.Error("a thread outside a run has an OnMaxSteps")
	}
	if _, err := starlark.ExecFileOptions(fileOpts, thread, "behaves.star", behaves, nil); err != nil {
		t.Fatal(err)
	}
	if err := reslimitstarlark.Finish(thread); err != nil {
		t.Fatal(err)
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
