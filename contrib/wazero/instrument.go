package reslimitwazero

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"sync"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/contrib/wazero/internal/wasmfile"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
)

// The host function an instrumented module imports: ImportModule's
// ImportName, of type (i64) -> i64. Instantiate (or InstantiateHost)
// provides it.
const (
	ImportModule = "reslimit"
	ImportName   = "refuel"
)

// DefaultBatch is the number of guest instructions an instrumented module
// is given (and its run charged) at a time: at a few instructions per
// nanosecond, some microseconds of work, so the host's check costs the
// guest about a percent and a stopped run stops its guest within
// microseconds.
const DefaultBatch = 10_000

// ErrInstrumented is returned by Instrument for a module that imports
// ImportModule's ImportName with another type than Instrument gives it.
var ErrInstrumented = errors.New("reslimitwazero: the module imports " + ImportModule + "." + ImportName + " with another type")

// Instrument returns wasm (a module in the WebAssembly binary format)
// rewritten to charge the run it is called in one operation per
// WebAssembly instruction it executes, so that the run's MaxOperations and
// its tenant's MaxTotalOperations bind the guest, and a run that is
// stopped (its timeout, its CPU time, its caller's cancellation) stops
// the guest within a batch of instructions, without Config.
//
// The instructions are counted per basic block: each straight-line run of
// instructions (a function's start, a loop's body, each arm of an if, what
// follows a block, an if or a br_if) subtracts its length from a fuel
// counter when it starts. The counter lives in a local of the function
// running and moves through a mutable i64 global that Instrument adds
// around calls and returns. It is checked at the start of every function,
// at every loop iteration and before every return; when it is negative,
// the guest calls the host function ImportModule.ImportName, which charges
// the run of the call's context a batch of operations with
// Tracker.TrackOperations — DefaultBatch, fewer when the run or its
// tenant has less left, at least what the guest ran past its fuel — and
// traps when that is refused or the run was stopped: the call's error
// wraps the *reslimit.LimitError (or the stop's cause). Outside a run the
// host function only checks the call's context, so an instrumented guest
// also stops when its context is done.
//
// The bound: operations are charged ahead, a batch at a time, so no
// counter passes its limit; between two checks a guest may run past the
// fuel it was charged by at most one path through a function's body (no
// loop iteration, call or return on it), which the next check charges or
// refuses. So a guest is stopped at most that path past MaxOperations (or
// what MaxTotalOperations leaves it), and its run is billed at most one
// batch more than it ran: the fuel left in the module when the guest
// returns or traps is not given back (a later call of the same module
// spends what a return left). Instantiate per run. What counts: every
// instruction reached, a block's in full when the block starts (one that
// traps or exits midway was counted whole); block, loop, if, else and end
// count when control falls through them; a call of a host function is
// one instruction, whatever the host does.
//
// The module must be well formed: Instrument checks the structure of every
// section and instruction and returns an error describing the first flaw;
// it does not check types (wazero validates the result when it compiles
// it, and a module wazero accepts gives a result wazero accepts). The
// result imports one more function, so the indices of the module's own
// functions move up by one: calls, ref.func, exports, the start function,
// element segments and the name section are rewritten to match. A module
// with no function bodies is returned as it is, as is one that Instrument
// made (it imports ImportName already).
func Instrument(wasm []byte) ([]byte, error) {
	out, err := instrument(wasm)
	if err != nil {
		return nil, fmt.Errorf("reslimitwazero: Instrument: %w", err)
	}
	return out, nil
}

// fuelType is the type of the host function: (i64) -> i64.
var fuelType = wasmfile.FuncType{Params: []byte{wasmfile.I64}, Results: []byte{wasmfile.I64}}

func instrument(wasm []byte) ([]byte, error) {
	m, err := wasmfile.Parse(wasm)
	if err != nil {
		return nil, err
	}
	if done, err := instrumented(m); done || err != nil {
		if err != nil {
			return nil, err
		}
		return wasm, nil
	}
	if len(m.Codes) == 0 {
		return wasm, nil
	}
	rw, err := newRewriter(m)
	if err != nil {
		return nil, err
	}
	if err := rw.remapRefs(); err != nil {
		return nil, err
	}
	codes, err := rw.meterCodes()
	if err != nil {
		return nil, err
	}
	return rw.encode(codes)
}

// instrumented tells whether m imports the host function already (it is
// instrumented), or returns ErrInstrumented when it imports it with
// another type.
func instrumented(m *wasmfile.Module) (bool, error) {
	for _, im := range m.Imports {
		if im.Module != ImportModule || im.Name != ImportName {
			continue
		}
		if im.Kind == wasmfile.KindFunc && int(im.Type) < len(m.Types) &&
			bytes.Equal(m.Types[im.Type].Params, fuelType.Params) && bytes.Equal(m.Types[im.Type].Results, fuelType.Results) {
			return true, nil
		}
		return false, ErrInstrumented
	}
	return false, nil
}

// rewriter instruments a parsed module: the host function is imported
// after the module's function imports, so its own functions' indices move
// up by one, and the fuel global is added after its globals.
type rewriter struct {
	m     *wasmfile.Module
	meter *wasmfile.Meter
}

func newRewriter(m *wasmfile.Module) (*rewriter, error) {
	nfuncs := uint64(m.NumFuncImports) + uint64(len(m.Funcs))
	nglobals := uint64(m.NumGlobalImports) + uint64(len(m.Globals))
	if nfuncs >= math.MaxUint32 || nglobals >= math.MaxUint32 || len(m.Types) >= math.MaxUint32 {
		return nil, fmt.Errorf("%w: too many functions, globals or types", wasmfile.ErrMalformed)
	}
	rw := &rewriter{m: m}
	rw.meter = &wasmfile.Meter{Global: uint32(nglobals), Refuel: m.NumFuncImports, Remap: rw.remap}
	return rw, nil
}

// remap is the new index of function f.
func (rw *rewriter) remap(f uint32) uint32 {
	if f < rw.m.NumFuncImports {
		return f
	}
	return f + 1
}

// remapRefs remaps the function indices of the globals' initial values,
// the exports and the element segments.
func (rw *rewriter) remapRefs() error {
	m := rw.m
	var err error
	for i := range m.Globals {
		if m.Globals[i].Init, err = wasmfile.RemapFuncs(m.Globals[i].Init, rw.remap); err != nil {
			return err
		}
	}
	for i := range m.Exports {
		if m.Exports[i].Kind == wasmfile.KindFunc {
			m.Exports[i].Index = rw.remap(m.Exports[i].Index)
		}
	}
	for i := range m.Elems {
		e := &m.Elems[i]
		for k, f := range e.Funcs {
			e.Funcs[k] = rw.remap(f)
		}
		for k, x := range e.Exprs {
			if e.Exprs[k], err = wasmfile.RemapFuncs(x, rw.remap); err != nil {
				return err
			}
		}
	}
	return nil
}

// meterCodes returns the module's function bodies metered.
func (rw *rewriter) meterCodes() ([]wasmfile.Code, error) {
	m := rw.m
	codes := make([]wasmfile.Code, len(m.Codes))
	for i, c := range m.Codes {
		t := m.Funcs[i]
		if int64(t) >= int64(len(m.Types)) {
			return nil, fmt.Errorf("%w: function %d has type %d of %d", wasmfile.ErrMalformed, i, t, len(m.Types))
		}
		var err error
		if codes[i], err = rw.meter.MeterBody(c, len(m.Types[t].Params)); err != nil {
			return nil, err
		}
	}
	return codes, nil
}

// encode writes the instrumented module: the sections rewritten, the
// type, import and global sections with what Instrument adds.
func (rw *rewriter) encode(codes []wasmfile.Code) ([]byte, error) {
	m := rw.m
	sections := make([]wasmfile.Section, 0, len(m.Sections)+3)
	for _, s := range m.Sections {
		switch s.ID {
		case wasmfile.SecExport:
			s = wasmfile.ExportSection(m.Exports)
		case wasmfile.SecStart:
			s = wasmfile.StartSection(rw.remap(*m.Start))
		case wasmfile.SecElement:
			s = wasmfile.ElementSection(m.Elems)
		case wasmfile.SecCode:
			var err error
			if s, err = wasmfile.CodeSection(codes); err != nil {
				return nil, err
			}
		case wasmfile.SecCustom:
			var keep bool
			if s, keep = renameSection(s, rw.remap); !keep {
				continue
			}
		}
		sections = append(sections, s)
	}
	types := append(m.Types[:len(m.Types):len(m.Types)], fuelType)
	imports := append(m.Imports[:len(m.Imports):len(m.Imports)], wasmfile.Import{
		Module: ImportModule, Name: ImportName, Kind: wasmfile.KindFunc,
		Desc: wasmfile.AppendU32(nil, uint32(len(m.Types))),
	})
	globals := append(m.Globals[:len(m.Globals):len(m.Globals)],
		wasmfile.Global{Type: wasmfile.I64, Mut: 1, Init: []byte{wasmfile.OpI64Const, 0, wasmfile.OpEnd}})
	sections = wasmfile.Put(sections, wasmfile.TypeSection(types))
	sections = wasmfile.Put(sections, wasmfile.ImportSection(imports))
	sections = wasmfile.Put(sections, wasmfile.GlobalSection(globals))
	return wasmfile.Encode(sections)
}

// renameSection remaps the function indices of a name section; a
// malformed one is dropped. Other custom sections are kept as they are.
func renameSection(s wasmfile.Section, remap func(uint32) uint32) (wasmfile.Section, bool) {
	const name = "\x04name"
	if !bytes.HasPrefix(s.Content, []byte(name)) {
		return s, true
	}
	content, ok := wasmfile.RemapNames(s.Content[len(name):], remap)
	if !ok {
		return s, false
	}
	s.Content = append([]byte(name), content...)
	return s, true
}

// InstantiateHost instantiates in rt the host module that instrumented
// modules import (ImportModule), unless rt has a module of that name
// already. Instantiate calls it for a module that needs it; call it
// before instantiating an instrumented module with rt.InstantiateModule.
func InstantiateHost(ctx context.Context, rt wazero.Runtime) error {
	hostMu.Lock()
	defer hostMu.Unlock()
	if rt.Module(ImportModule) != nil {
		return nil
	}
	_, err := rt.NewHostModuleBuilder(ImportModule).
		NewFunctionBuilder().
		WithGoModuleFunction(api.GoModuleFunc(refuel), []api.ValueType{api.ValueTypeI64}, []api.ValueType{api.ValueTypeI64}).
		WithName(ImportName).
		Export(ImportName).
		Instantiate(context.WithoutCancel(ctx))
	if err != nil {
		return fmt.Errorf("reslimitwazero: instantiating the host module %q: %w", ImportModule, err)
	}
	return nil
}

// hostMu serialises InstantiateHost's check and instantiation.
var hostMu sync.Mutex

// importsRefuel tells whether compiled imports the host function.
func importsRefuel(compiled wazero.CompiledModule) bool {
	for _, f := range compiled.ImportedFunctions() {
		if mod, name, ok := f.Import(); ok && mod == ImportModule && name == ImportName {
			return true
		}
	}
	return false
}

// refuel is the host function: stack[0] is the fuel left, negative (its
// opposite is what the block starting needs); it charges the run of ctx
// a batch that covers it and returns the fuel after, or stops the guest.
func refuel(ctx context.Context, _ api.Module, stack []uint64) {
	fuel := int64(stack[0])
	need := int64(1)
	if fuel < 0 {
		need = -fuel
	}
	tr := reslimit.FromContext(ctx)
	if tr == nil {
		if ctx.Err() != nil {
			panic(context.Cause(ctx))
		}
		stack[0] = uint64(fuel + max(need, DefaultBatch))
		return
	}
	g := int64(DefaultBatch)
	if left, ok := tr.Remaining(reslimit.Operations); ok && left < g {
		g = left
	}
	g = max(g, need)
	err := tr.TrackOperations(g)
	if err != nil && g > need {
		// Another charge took the room meanwhile: what the block needs.
		g = need
		err = tr.TrackOperations(g)
	}
	if err != nil {
		panic(err) // wazero makes it the call's error
	}
	stack[0] = uint64(fuel + g)
}
