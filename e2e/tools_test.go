package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetratelabs/wazero"
	"go.starlark.net/starlark"
	"go.starlark.net/syntax"

	"github.com/reslimit/reslimit"
	reslimitstarlark "github.com/reslimit/reslimit/contrib/starlark"
	reslimitwazero "github.com/reslimit/reslimit/contrib/wazero"
	"github.com/reslimit/reslimit/reslimitexec"
	"github.com/reslimit/reslimit/reslimithttp"
)

// The response headers in which the handler says what a request was
// granted (on success and on refusal alike), and that it ran at all.
const (
	hdrStarted = "X-E2e-Started"
	hdrOps     = "X-E2e-Operations"
	hdrCalls   = "X-E2e-Calls"
	hdrMem     = "X-E2e-Total-Memory"
)

// The tools' fixed costs. Every tool but exec costs exactly the same on
// every call that succeeds, so what a request was granted is known from
// the tools it ran; TestToolCosts checks these numbers against a ledger
// without a store (where billing is exact).
const (
	// host: charged on the request's own run, no nesting.
	hostOps, hostCalls = 3, 1
	// ops: a Limit'ed tool (20 ops, 3 calls, 64 KiB acquired and
	// released) that calls another Limit'ed tool (15 ops, 2 calls): 35
	// operations and 5 calls, as in issue 19 item 1.
	outerOps, outerCalls, innerOps, innerCalls = 20, 3, 15, 2
	toolOps, toolCalls                         = outerOps + innerOps, outerCalls + innerCalls
	toolMem                                    = 64 << 10
	// overrun: a Limit'ed tool with MaxOperations 50 that asks for 60:
	// granted exactly 50, then refused by its own limit (503).
	overrunLimit, overrunAsks = 50, 60
	// wasm: one instantiation of a module with one 64 KiB page, and
	// fib(wasmN), which makes wasmCalls guest calls (counted with
	// CountCalls).
	wasmN, wasmMem = 10, 64 << 10
	// exec: one child, one call.
	execCalls = 1
	// stall: a Limit'ed tool that waits until its own Timeout stops it.
	stallTimeout = 50 * time.Millisecond
	// bigfile: a Limit'ed tool whose child process writes bigfileWrites
	// bytes to a file, past the tool's MaxFileSize of bigfileLimit: the
	// kernel stops the child (SIGXFSZ), a file_size stop of the tool.
	bigfileLimit, bigfileWrites = 4 << 10, 64 << 10
)

// wasmCalls is the number of calls fib(n) makes, itself included.
func wasmCalls(n int) int64 {
	if n < 2 {
		return 1
	}
	return 1 + wasmCalls(n-1) + wasmCalls(n-2)
}

// starSrc is the Starlark tool's script: a fixed number of steps.
const starSrc = `
def f(n):
    s = 0
    for i in range(n):
        s += i * i
    return s
r = f(20)
`

// starSteps runs starSrc bare (no reslimit) and returns its step count.
func starSteps(tb testing.TB) int64 {
	tb.Helper()
	thread := &starlark.Thread{}
	if _, err := starlark.ExecFileOptions(&syntax.FileOptions{}, thread, "tool.star", starSrc, nil); err != nil {
		tb.Fatal(err)
	}
	return int64(thread.ExecutionSteps())
}

// fibModule is a WebAssembly module, assembled by hand (the guests of
// contrib/wazero/internal/wasmbin are internal to that module):
//
//	(module
//	  (memory (export "memory") 1)
//	  (func $fib (export "fib") (param $n i32) (result i64)
//	    (if (result i64) (i32.lt_u (local.get $n) (i32.const 2))
//	      (then (i64.extend_i32_u (local.get $n)))
//	      (else (i64.add
//	        (call $fib (i32.sub (local.get $n) (i32.const 1)))
//	        (call $fib (i32.sub (local.get $n) (i32.const 2))))))))
func fibModule() []byte {
	section := func(id byte, content ...byte) []byte {
		return append([]byte{id, byte(len(content))}, content...) // every section is < 128 bytes
	}
	body := []byte{
		0x00,       // no locals
		0x20, 0x00, // local.get 0
		0x41, 0x02, // i32.const 2
		0x49,       // i32.lt_u
		0x04, 0x7e, // if (result i64)
		0x20, 0x00, // local.get 0
		0xad,                                     // i64.extend_i32_u
		0x05,                                     // else
		0x20, 0x00, 0x41, 0x01, 0x6b, 0x10, 0x00, // call fib(n-1)
		0x20, 0x00, 0x41, 0x02, 0x6b, 0x10, 0x00, // call fib(n-2)
		0x7c, // i64.add
		0x0b, // end if
		0x0b, // end func
	}
	out := []byte{0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00}
	out = append(out, section(1, 0x01, 0x60, 0x01, 0x7f, 0x01, 0x7e)...) // type (i32) -> i64
	out = append(out, section(3, 0x01, 0x00)...)                         // one function of type 0
	out = append(out, section(5, 0x01, 0x00, 0x01)...)                   // one memory, min 1 page
	out = append(out, section(7, 0x02,
		0x03, 'f', 'i', 'b', 0x00, 0x00,
		0x06, 'm', 'e', 'm', 'o', 'r', 'y', 0x02, 0x00)...) // exports
	out = append(out, section(10, append([]byte{0x01, byte(len(body))}, body...)...)...)
	return out
}

// tool is one step of a request: it returns what it was granted, also when
// it fails.
type tool func(ctx context.Context, _ struct{}) (granted, error)

// tools are the service's tools, by name (see toolHandler).
type tools struct {
	byName    map[string]tool
	starSteps int64
	wasmCalls int64
	wasmiOps  int64 // the instructions fib(wasmN) executes, instrumented
}

// toolLimits are the limits of each Limit'ed tool but overrun and spin.
var toolLimits = reslimit.Limits{Timeout: 20 * time.Second}

// newTools builds the tools; the WebAssembly runtime is closed when tb ends.
func newTools(tb testing.TB) *tools {
	tb.Helper()
	tl := &tools{starSteps: starSteps(tb), wasmCalls: wasmCalls(wasmN)}
	tl.byName = map[string]tool{
		"host":    hostTool,
		"ops":     opsTool(),
		"overrun": overrunTool(),
		"star":    tl.starTool(),
		"wasm":    tl.wasmTool(tb),
		"wasmi":   tl.wasmiTool(tb),
		"exec":    reslimit.Limit(execTool, toolLimits),
		"spin":    reslimit.Limit(spinTool, reslimit.Limits{}),
		"stall":   reslimit.Limit(stallTool, reslimit.Limits{Timeout: stallTimeout}),
		"bigfile": bigfileTool(tb.TempDir()),
	}
	return tl
}

// countGranted charges n operations and m calls one at a time on tr,
// counting in g what was granted.
func countGranted(tr *reslimit.Tracker, g *granted, n, m int) error {
	for range n {
		if err := tr.TrackOperation(); err != nil {
			return err
		}
		g.Operations++
	}
	for range m {
		if err := tr.TrackCall(); err != nil {
			return err
		}
		g.Calls++
	}
	return nil
}

// toolUsage is what the tool's own run was charged: the guests' partial
// work when they are stopped is known only from it.
func toolUsage(ctx context.Context) granted {
	u := reslimit.FromContext(ctx).Usage()
	return granted{Operations: u.Operations, Calls: u.Calls, TotalMemory: u.TotalMemoryBytes}
}

// hostTool is charged on the request's own run, no nesting.
func hostTool(ctx context.Context, _ struct{}) (granted, error) {
	var g granted
	return g, countGranted(reslimit.FromContext(ctx), &g, hostOps, hostCalls)
}

// opsTool is a Limit'ed tool that counts, acquires and releases memory,
// and calls another Limit'ed tool.
func opsTool() tool {
	inner := reslimit.Limit(func(ctx context.Context, _ struct{}) (granted, error) {
		var g granted
		return g, countGranted(reslimit.FromContext(ctx), &g, innerOps, innerCalls)
	}, toolLimits)
	return reslimit.Limit(func(ctx context.Context, in struct{}) (granted, error) {
		var g granted
		tr := reslimit.FromContext(ctx)
		if err := countGranted(tr, &g, outerOps, outerCalls); err != nil {
			return g, err
		}
		guard, err := tr.AcquireMemory(toolMem)
		if err != nil {
			return g, err
		}
		g.TotalMemory += toolMem
		guard.Release()
		h, err := inner(ctx, in) // a tool calling a tool
		return g.add(h), err
	}, toolLimits)
}

// overrunTool asks for more operations than its own limit allows.
func overrunTool() tool {
	return reslimit.Limit(func(ctx context.Context, _ struct{}) (granted, error) {
		var g granted
		return g, countGranted(reslimit.FromContext(ctx), &g, overrunAsks, 0)
	}, reslimit.Limits{MaxOperations: overrunLimit, Timeout: 20 * time.Second})
}

// starTool runs starSrc under contrib/starlark.
func (tl *tools) starTool() tool {
	return reslimit.Limit(func(ctx context.Context, _ struct{}) (granted, error) {
		_, err := reslimitstarlark.ExecFile(ctx, &syntax.FileOptions{}, "tool.star", starSrc, nil)
		if err != nil {
			return toolUsage(ctx), err
		}
		return granted{Operations: tl.starSteps}, nil
	}, toolLimits)
}

// wasmTool instantiates fibModule under contrib/wazero and calls
// fib(wasmN); its runtime is closed when tb ends.
func (tl *tools) wasmTool(tb testing.TB) tool {
	tb.Helper()
	ctx := context.Background()
	rt := wazero.NewRuntimeWithConfig(ctx, reslimitwazero.Config(wazero.NewRuntimeConfig()))
	tb.Cleanup(func() { _ = rt.Close(context.Background()) })
	compiled, err := rt.CompileModule(reslimitwazero.CountCalls(ctx), fibModule())
	if err != nil {
		tb.Fatalf("compiling the guest: %v", err)
	}
	return reslimit.Limit(func(ctx context.Context, _ struct{}) (granted, error) {
		ctx = reslimitwazero.WithTracker(ctx)
		mod, err := reslimitwazero.Instantiate(ctx, rt, compiled, wazero.NewModuleConfig().WithName(""))
		if err != nil {
			return toolUsage(ctx), err
		}
		defer mod.Close(ctx)
		res, err := reslimitwazero.Call(ctx, mod.ExportedFunction("fib"), wasmN)
		if err != nil {
			return toolUsage(ctx), err
		}
		if res[0] != 55 {
			return toolUsage(ctx), fmt.Errorf("fib(%d) = %d", wasmN, res[0])
		}
		return granted{Calls: tl.wasmCalls, TotalMemory: wasmMem}, nil
	}, toolLimits)
}

// wasmiTool instantiates fibModule instrumented (reslimitwazero.Instrument:
// one operation per guest instruction, billed exactly at each call's
// return) without reslimitwazero.Config, and calls fib(wasmN). It measures
// once how many instructions that is (wasmiOps).
func (tl *tools) wasmiTool(tb testing.TB) tool {
	tb.Helper()
	ctx := context.Background()
	wasm, err := reslimitwazero.Instrument(fibModule())
	if err != nil {
		tb.Fatalf("instrumenting the guest: %v", err)
	}
	rt := wazero.NewRuntime(ctx)
	tb.Cleanup(func() { _ = rt.Close(context.Background()) })
	compiled, err := rt.CompileModule(ctx, wasm)
	if err != nil {
		tb.Fatalf("compiling the instrumented guest: %v", err)
	}
	call := func(ctx context.Context) (granted, error) {
		mod, err := reslimitwazero.Instantiate(ctx, rt, compiled, wazero.NewModuleConfig().WithName(""))
		if err != nil {
			return toolUsage(ctx), err
		}
		defer mod.Close(ctx)
		res, err := reslimitwazero.Call(ctx, mod.ExportedFunction("fib"), wasmN)
		if err != nil {
			return toolUsage(ctx), err
		}
		if res[0] != 55 {
			return toolUsage(ctx), fmt.Errorf("fib(%d) = %d", wasmN, res[0])
		}
		return granted{Operations: reslimit.FromContext(ctx).Usage().Operations, TotalMemory: wasmMem}, nil
	}
	u, err := reslimit.Run(ctx, reslimit.Limits{}, func(ctx context.Context) error {
		_, err := call(ctx)
		return err
	})
	if err != nil || u.Operations == 0 {
		tb.Fatalf("measuring the instrumented guest: %v (%d operations)", err, u.Operations)
	}
	tl.wasmiOps = u.Operations
	return reslimit.Limit(func(ctx context.Context, _ struct{}) (granted, error) {
		g, err := call(ctx)
		if err == nil && g.Operations != tl.wasmiOps {
			return g, fmt.Errorf("the guest ran %d instructions, %d before", g.Operations, tl.wasmiOps)
		}
		return g, err
	}, toolLimits)
}

// execTool runs one child under reslimitexec.
func execTool(ctx context.Context, _ struct{}) (granted, error) {
	err := reslimitexec.Run(ctx, exec.Command("/bin/true"))
	g := toolUsage(ctx) // the child's resident memory is charged as sampled: only its run knows
	if err == nil && g.Calls != execCalls {
		return g, fmt.Errorf("the child's run counted %d calls, want %d", g.Calls, execCalls)
	}
	return g, err
}

// stallTool waits for its context: its run's Timeout stops it.
func stallTool(ctx context.Context, _ struct{}) (granted, error) {
	<-ctx.Done()
	return toolUsage(ctx), context.Cause(ctx)
}

// bigfileTool runs a child (head, replacing a shell) that writes
// bigfileWrites bytes to a file in dir, under a MaxFileSize of
// bigfileLimit: reslimitexec returns the FileSize *LimitError.
func bigfileTool(dir string) tool {
	var n atomic.Int64
	return reslimit.Limit(func(ctx context.Context, _ struct{}) (granted, error) {
		path := filepath.Join(dir, "big"+strconv.FormatInt(n.Add(1), 10))
		cmd := exec.Command("/bin/sh", "-c", `exec head -c "$1" /dev/zero > "$0"`, path, strconv.Itoa(bigfileWrites))
		err := reslimitexec.Run(ctx, cmd)
		return toolUsage(ctx), err
	}, reslimit.Limits{MaxFileSize: bigfileLimit, Timeout: 20 * time.Second})
}

// spinTool counts operations until it is refused.
func spinTool(ctx context.Context, _ struct{}) (granted, error) {
	var g granted
	tr := reslimit.FromContext(ctx)
	for {
		if err := tr.TrackOperation(); err != nil {
			return g, err
		}
		g.Operations++
	}
}

// cost returns what a request running plan costs when it succeeds, but
// for the memory of exec (known only from its run).
func (tl *tools) cost(plan string) granted {
	g := granted{Evaluations: 1}
	for name := range strings.SplitSeq(plan, ",") {
		switch name {
		case "host":
			g = g.add(granted{Operations: hostOps, Calls: hostCalls})
		case "ops":
			g = g.add(granted{Operations: toolOps, Calls: toolCalls, TotalMemory: toolMem})
		case "star":
			g = g.add(granted{Operations: tl.starSteps})
		case "wasm":
			g = g.add(granted{Calls: tl.wasmCalls, TotalMemory: wasmMem})
		case "wasmi":
			g = g.add(granted{Operations: tl.wasmiOps, TotalMemory: wasmMem})
		case "exec":
			g = g.add(granted{Calls: execCalls})
		}
	}
	return g
}

// toolHandler serves POST /tools?plan=a,b,c: it runs the named tools in
// order inside the request's run (reslimit.FromContext(r.Context())), and
// answers with what they were granted in the X-E2e-* headers: 200 and the
// same as JSON when all succeeded, or the first tool's error through
// reslimithttp.Error (which writes the documented status).
func toolHandler(tl *tools) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(hdrStarted, "1")
		ctx := r.Context()
		var g granted
		var err error
		for name := range strings.SplitSeq(r.URL.Query().Get("plan"), ",") {
			t, ok := tl.byName[name]
			if !ok {
				http.Error(w, "no tool "+strconv.Quote(name), http.StatusBadRequest)
				return
			}
			var h granted
			h, err = t(ctx, struct{}{})
			g = g.add(h)
			if err != nil {
				break
			}
		}
		w.Header().Set(hdrOps, strconv.FormatInt(g.Operations, 10))
		w.Header().Set(hdrCalls, strconv.FormatInt(g.Calls, 10))
		w.Header().Set(hdrMem, strconv.FormatInt(g.TotalMemory, 10))
		if err != nil {
			reslimithttp.Error(w, r, err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(g)
	})
}

// TestToolCosts checks the tools' fixed costs where billing is exact: each
// tool alone in a run of an account without a store.
func TestToolCosts(t *testing.T) {
	tl := newTools(t)
	ledger, err := reslimit.NewLedger(reslimit.AccountLimits{})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"host", "ops", "star", "wasm", "wasmi", "exec"} {
		acct := ledger.Account(name)
		var g granted
		_, err := reslimit.Run(context.Background(), reslimit.Limits{}, func(ctx context.Context) error {
			var err error
			g, err = tl.byName[name](ctx, struct{}{})
			return err
		}, reslimit.WithAccount(acct))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		want := tl.cost(name)
		if name == "exec" {
			want.TotalMemory = g.TotalMemory
		}
		st := acct.Stats()
		got := granted{st.Evaluations, st.Operations, st.Calls, st.TotalMemoryBytes}
		if g.add(granted{Evaluations: 1}) != want || got != want {
			t.Errorf("%s: the tool says it was granted %v, the account was charged %v, want %v", name, g, got, want)
		}
	}
}
