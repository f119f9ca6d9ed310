package reslimitwazero_test

import (
	"bytes"
	"context"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	reslimitwazero "github.com/reslimit/reslimit/contrib/wazero"
	"github.com/reslimit/reslimit/contrib/wazero/internal/wasmbin"
	"github.com/reslimit/reslimit/contrib/wazero/internal/wasmfile"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
)

// diffRuntime returns a runtime for differential runs (with Config, so
// that a call that loops is stopped by its context) with the host module.
func diffRuntime(t testing.TB) wazero.Runtime {
	t.Helper()
	ctx := context.Background()
	// At most 16 MiB of memory: a fuzzed module may ask for 4 GiB.
	rt := wazero.NewRuntimeWithConfig(ctx, reslimitwazero.Config(wazero.NewRuntimeConfig()).WithMemoryLimitPages(256))
	t.Cleanup(func() { _ = rt.Close(ctx) })
	if err := reslimitwazero.InstantiateHost(ctx, rt); err != nil {
		t.Fatal(err)
	}
	return rt
}

// checkInstrumented: when wazero compiles wasm, Instrument's result
// compiles too; when the module instantiates without imports, its
// instrumented copy does, and every exported function with numeric
// parameters returns the same results (or traps) in both, called in the
// same order with a few arguments. It reports whether wasm compiled.
func checkInstrumented(t testing.TB, rt wazero.Runtime, name string, wasm []byte) bool {
	t.Helper()
	ctx := context.Background()
	out, ierr := reslimitwazero.Instrument(wasm) // never panics
	bc, err := rt.CompileModule(ctx, wasm)
	if err != nil {
		return false
	}
	defer bc.Close(ctx)
	if ierr != nil {
		t.Errorf("%s: wazero compiles it, Instrument: %v", name, ierr)
		return true
	}
	ic, err := rt.CompileModule(ctx, out)
	if err != nil {
		t.Errorf("%s: wazero compiles it, not instrumented: %v", name, err)
		return true
	}
	defer ic.Close(ctx)
	if len(bc.ImportedFunctions())+len(bc.ImportedMemories()) > 0 || len(ic.ImportedFunctions()) > 1 {
		return true
	}
	bm, im, ok := instantiatePair(t, rt, name, bc, ic)
	if ok {
		defer bm.Close(ctx)
		defer im.Close(ctx)
		compareExports(t, name, bc.ExportedFunctions(), bm, im)
	}
	return true
}

// instantiatePair instantiates the bare and the instrumented module
// (without running a start function); both or neither must succeed. ok is
// false unless both did.
func instantiatePair(t testing.TB, rt wazero.Runtime, name string, bc, ic wazero.CompiledModule) (bm, im api.Module, ok bool) {
	t.Helper()
	ctx := context.Background()
	cfg := wazero.NewModuleConfig().WithName("").WithStartFunctions()
	bm, berr := rt.InstantiateModule(ctx, bc, cfg)
	im, ierr := rt.InstantiateModule(ctx, ic, cfg)
	if (berr == nil) != (ierr == nil) {
		t.Errorf("%s: instantiation bare: %v, instrumented: %v", name, berr, ierr)
	}
	if berr == nil && ierr == nil {
		return bm, im, true
	}
	if bm != nil {
		bm.Close(ctx)
	}
	if im != nil {
		im.Close(ctx)
	}
	return nil, nil, false
}

// compareExports calls each exported function with numeric parameters and
// results (in name order, with the arguments 0, then 1, then 7) in both
// instances and compares what they return, until one loops, overflows
// its stack or differs.
func compareExports(t testing.TB, name string, fns map[string]api.FunctionDefinition, bm, im api.Module) {
	t.Helper()
	names := make([]string, 0, len(fns))
	for n := range fns {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, arg := range []uint64{0, 1, 7} {
		for _, n := range names {
			def := fns[n]
			if slices.ContainsFunc(def.ParamTypes(), notNumeric) || slices.ContainsFunc(def.ResultTypes(), func(t api.ValueType) bool { return t == api.ValueTypeExternref }) {
				continue
			}
			args := make([]uint64, len(def.ParamTypes()))
			for i := range args {
				args[i] = arg
			}
			if !compareCall(t, name+": "+n, def, args, bm.ExportedFunction(n), im.ExportedFunction(n)) {
				return
			}
		}
	}
}

// compareCall calls bare and instrumented with args and compares their
// results; it reports whether the comparison may go on (false when the
// bare call loops, overflows its stack, or the two differ in failing).
func compareCall(t testing.TB, what string, def api.FunctionDefinition, args []uint64, bare, instrumented api.Function) bool {
	t.Helper()
	ctx := context.Background()
	cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	bres, berr := bare.Call(cctx, args...)
	looped := cctx.Err() != nil
	cancel()
	if looped {
		return false // it loops (or the machine is slow): states may differ from here
	}
	cctx, cancel = context.WithTimeout(ctx, 10*time.Second)
	ires, ierr := instrumented.Call(cctx, args...)
	cancel()
	diffCalls.Add(1)
	if (berr == nil) != (ierr == nil) {
		t.Errorf("%s%v: bare %v, instrumented %v", what, args, berr, ierr)
		return false
	}
	if !sameResults(def.ResultTypes(), bres, ires) {
		t.Errorf("%s%v = %v bare, %v instrumented", what, args, bres, ires)
	}
	return berr == nil || !strings.Contains(berr.Error(), "stack overflow")
}

func notNumeric(t api.ValueType) bool {
	switch t {
	case api.ValueTypeI32, api.ValueTypeI64, api.ValueTypeF32, api.ValueTypeF64:
		return false
	}
	return true
}

func sameResults(types []api.ValueType, a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] == b[i] {
			continue
		}
		if i < len(types) && isNaN(types[i], a[i]) && isNaN(types[i], b[i]) {
			continue
		}
		if i < len(types) && types[i] == 0x70 && (a[i] == 0) == (b[i] == 0) {
			continue // references to functions of two instances
		}
		return false
	}
	return true
}

func isNaN(t api.ValueType, v uint64) bool {
	switch t {
	case api.ValueTypeF32:
		return math.IsNaN(float64(math.Float32frombits(uint32(v))))
	case api.ValueTypeF64:
		return math.IsNaN(math.Float64frombits(v))
	}
	return false
}

// diffCalls counts the functions compared.
var diffCalls atomic.Int64

var (
	specOnce  sync.Once
	specFiles []string
)

// specModules lists the WebAssembly 2.0 spec test modules that come with
// wazero's module (in the module cache), or nothing when they cannot be
// found.
func specModules() []string {
	specOnce.Do(func() {
		out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/tetratelabs/wazero").Output()
		if err != nil {
			return
		}
		dir := filepath.Join(strings.TrimSpace(string(out)), "internal", "integration_test", "spectest", "v2", "testdata")
		specFiles, _ = filepath.Glob(filepath.Join(dir, "*.wasm"))
	})
	return specFiles
}

// Every module of the WebAssembly 2.0 spec tests that wazero compiles
// still compiles instrumented and computes the same.
func TestInstrumentSpecModules(t *testing.T) {
	files := specModules()
	if len(files) == 0 {
		t.Skip("wazero's spec test modules are not in the module cache")
	}
	rt := diffRuntime(t)
	n := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if checkInstrumented(t, rt, filepath.Base(f), b) {
			n++
		}
	}
	t.Logf("%d modules of %d compile and behave alike instrumented (%d calls compared)", n, len(files), diffCalls.Load())
	if n < 1000 {
		t.Errorf("only %d spec modules compiled", n)
	}
}

// FuzzInstrument: Instrument never panics (it returns a module or an
// error), and any module it accepts that wazero compiles still compiles
// instrumented and computes the same. Seeded with the guests and (when
// found) a sample of the spec test modules.
func FuzzInstrument(f *testing.F) {
	f.Add(wasmbin.Guests().Bytes())
	f.Add(wasmbin.HostCaller().Bytes())
	for i, file := range specModules() {
		if i%50 != 0 {
			continue
		}
		if b, err := os.ReadFile(file); err == nil {
			f.Add(b)
		}
	}
	rt := diffRuntime(f)
	f.Fuzz(func(t *testing.T, wasm []byte) {
		out, err := reslimitwazero.Instrument(wasm)
		if err == nil && out == nil {
			t.Fatal("Instrument returned nil and no error")
		}
		if err != nil && !strings.HasPrefix(err.Error(), "reslimitwazero: ") {
			t.Fatalf("unclear error %v", err)
		}
		if err != nil {
			// wazero's decoder makes vectors as long as a module says
			// (a type of 2³² parameters is 32 GiB): bytes Instrument
			// refuses are not given to it. TestInstrumentSpecModules
			// checks that Instrument accepts the modules wazero does.
			return
		}
		if !namesWellFormed(wasm) {
			return // wazero would allocate the vectors its name section announces
		}
		checkInstrumented(t, rt, "input", wasm)
	})
}

// namesWellFormed tells whether wasm's name section (if any) is well
// formed, each vector no longer than its bytes allow.
func namesWellFormed(wasm []byte) bool {
	m, err := wasmfile.Parse(wasm)
	if err != nil {
		return false
	}
	for _, s := range m.Sections {
		if s.ID == wasmfile.SecCustom && bytes.HasPrefix(s.Content, []byte("\x04name")) {
			if _, ok := wasmfile.RemapNames(s.Content[5:], func(f uint32) uint32 { return f }); !ok {
				return false
			}
		}
	}
	return true
}
