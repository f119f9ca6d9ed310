// Command plugins: tenants run untrusted code in-process — a WebAssembly
// plugin on wazero (instrumented: its instructions are operations) and a
// Starlark script — under reslimit.Strict()
// (tightened so the demo takes a few seconds). Some guests behave, some
// spin, hoard memory, recurse or loop forever; none cooperates. The first
// table shows which were stopped and by what, the second what each tenant
// was charged.
//
//	cd contrib/wazero && go run ./examples/plugins
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/reslimit/reslimit"
	reslimitstarlark "github.com/reslimit/reslimit/contrib/starlark"
	reslimitwazero "github.com/reslimit/reslimit/contrib/wazero"
	"github.com/reslimit/reslimit/contrib/wazero/internal/wasmbin"
	"github.com/tetratelabs/wazero"
	"go.starlark.net/syntax"
)

// The Starlark scripts tenants send.
var scripts = map[string]string{
	"report": `
def score(xs):
    total = 0
    for x in xs:
        total += x * x
    return total % 1000
result = score(range(200))
`,
	"hoard": `
def hoard():
    rows = []
    while True:
        rows.append({"id": len(rows), "name": "row"})
hoard()
`,
	"forever": `
def forever():
    n = 0
    while True:
        n += 1
forever()
`,
}

// A request: a tenant runs a wasm plugin function or a Starlark script.
type request struct {
	tenant, kind, name string
	arg                uint64
}

var requests = []request{
	{"acme", "wasm", "fib", 20},
	{"acme", "starlark", "report", 0},
	{"globex", "wasm", "grow", 0},
	{"globex", "starlark", "hoard", 0},
	{"initech", "wasm", "spin", 0},
	{"initech", "starlark", "report", 0},
	{"umbrella", "starlark", "forever", 0},
	{"umbrella", "wasm", "recurse", 0},
	{"umbrella", "starlark", "report", 0}, // refused: the tenant's calls are used up
	{"acme", "wasm", "sum", 1000},
}

func main() {
	ctx := context.Background()

	// One runtime for all tenants.
	rt := wazero.NewRuntime(ctx)
	defer rt.Close(ctx)
	plugin := compilePlugin(ctx, rt)

	// Every tenant's plan: at most 50,000 guest function calls in all.
	ledger, err := reslimit.NewLedger(reslimit.AccountLimits{MaxCalls: 50000})
	if err != nil {
		log.Fatal(err)
	}
	tool := reslimit.Limit(func(ctx context.Context, r request) (string, error) {
		if r.kind == "wasm" {
			return runPlugin(ctx, rt, plugin, r)
		}
		return runScript(ctx, r)
	}, limits())

	printOutcomes(ctx, ledger, tool)
	fmt.Println()
	printBills(ledger)

	// The host is healthy: every guest's memory was given back and no
	// goroutine was left behind.
	fmt.Printf("\nhost: %d goroutine(s), guest memory held by all tenants: %d bytes\n",
		runtime.NumGoroutine(), heldByAll(ledger))
}

// compilePlugin instruments the plugin: each of its instructions is an
// operation charged to its run, so MaxOperations binds it and a run's
// timeout or CPU time stops it at its next block (no Config needed);
// CountCalls (at compile time) bills each guest function call.
func compilePlugin(ctx context.Context, rt wazero.Runtime) wazero.CompiledModule {
	wasm, err := reslimitwazero.Instrument(wasmbin.Guests().Bytes())
	if err != nil {
		log.Fatal(err)
	}
	plugin, err := rt.CompileModule(reslimitwazero.CountCalls(ctx), wasm)
	if err != nil {
		log.Fatal(err)
	}
	return plugin
}

// limits: Strict() is 10 MiB, 5 s CPU, 10,000 operations, 10 s timeout;
// the demo tightens memory and time, and allows 2,000,000 operations
// (Starlark steps, WebAssembly instructions).
func limits() reslimit.Limits {
	l := reslimit.Strict()
	l.MaxMemoryBytes = 1 << 20
	l.MaxOperations = 2_000_000
	l.MaxCPUTime = 300 * time.Millisecond
	l.Timeout = time.Second
	return l
}

// runPlugin instantiates the plugin for this run and calls the function
// the request names.
func runPlugin(ctx context.Context, rt wazero.Runtime, plugin wazero.CompiledModule, r request) (string, error) {
	ctx = reslimitwazero.WithTracker(ctx) // for the instantiation and the calls
	mod, err := reslimitwazero.Instantiate(ctx, rt, plugin, wazero.NewModuleConfig().WithName(""))
	if err != nil {
		return "", err
	}
	defer mod.Close(ctx) // gives the guest's memory back
	args := []uint64{}
	if r.name == "fib" || r.name == "sum" {
		args = append(args, r.arg)
	}
	res, err := reslimitwazero.Call(ctx, mod.ExportedFunction(r.name), args...)
	if err != nil {
		return "", err
	}
	if len(res) > 0 {
		return fmt.Sprint(res[0]), nil
	}
	return "", nil
}

var fileOpts = &syntax.FileOptions{While: true, TopLevelControl: true, GlobalReassign: true}

// runScript runs the Starlark script the request names.
func runScript(ctx context.Context, r request) (string, error) {
	globals, err := reslimitstarlark.ExecFile(ctx, fileOpts, r.name+".star", scripts[r.name], nil)
	if err != nil {
		return "", err
	}
	if v, ok := globals["result"]; ok {
		return v.String(), nil
	}
	return "", nil
}

// printOutcomes runs every request as its tenant and prints which guests
// were stopped and by what.
func printOutcomes(ctx context.Context, ledger *reslimit.Ledger, tool func(context.Context, request) (string, error)) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "TENANT\tGUEST\tOUTCOME\tDETAIL")
	for _, r := range requests {
		out, err := tool(reslimit.ContextWithAccount(ctx, ledger.Account(r.tenant)), r)
		outcome, detail := "ok", out
		var le *reslimit.LimitError
		switch {
		case errors.As(err, &le):
			outcome = "stopped: " + le.Resource.String()
			detail = limitText(le)
		case err != nil:
			outcome = "failed"
			detail = firstLine(err.Error())
		}
		fmt.Fprintf(w, "%s\t%s %s\t%s\t%s\n", r.tenant, r.kind, r.name, outcome, detail)
	}
	w.Flush()
}

// printBills prints what each tenant was charged.
func printBills(ledger *reslimit.Ledger) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "TENANT\tEVALUATIONS\tOPERATIONS\tCALLS\tPEAK MEMORY\tCPU\tHELD NOW\t")
	for _, name := range ledger.Tenants() {
		s := ledger.Account(name).Stats()
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d KiB\t%v\t%d\t\n", name, s.Evaluations, s.Operations,
			s.Calls, s.PeakMemoryBytes>>10, s.CPUTime.Round(time.Millisecond), s.MemoryBytes)
	}
	w.Flush()
}

func limitText(le *reslimit.LimitError) string {
	who := "run"
	if le.Tenant != "" {
		who = "tenant " + le.Tenant
	}
	switch le.Resource {
	case reslimit.CPUTime, reslimit.Timeout:
		return fmt.Sprintf("%s limit %v", who, time.Duration(le.Limit))
	case reslimit.Memory:
		return fmt.Sprintf("%s limit %d KiB, held %d KiB, asked %d KiB more", who, le.Limit>>10, le.Used>>10, le.Requested>>10)
	}
	return fmt.Sprintf("%s limit %d, used %d", who, le.Limit, le.Used)
}

func heldByAll(l *reslimit.Ledger) int64 {
	var n int64
	for _, s := range l.Snapshot() {
		n += s.MemoryBytes
	}
	return n
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
