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
// ImportName, of type (i64, i64) -> i64. Instantiate (or InstantiateHost)
// provides it.
const (
	ImportModule = "reslimit"
	ImportName   = "refuel"
)

// DefaultBatch is the most guest instructions an instrumented module may
// run on credit, before it bills them and asks again: at a few
// instructions per nanosecond, some microseconds of work, so the host's
// check costs the guest about a percent and a stopped run stops its guest
// within microseconds. The credit is smaller when the run or its tenant
// has fewer operations left.
const DefaultBatch = 10_000

// ErrInstrumented is returned by Instrument for a module that imports
// anything from ImportModule: one it instrumented already (instrument the
// original instead), or one crafted to call the host function itself and
// run unmetered. Instrument never passes such a module through.
var ErrInstrumented = errors.New("reslimitwazero: the module imports from " + ImportModule + ": instrumented already, or crafted to escape metering")

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
// at every loop iteration and before every return; when it is negative
// (the guest has used its credit), the guest calls the host function
// ImportModule.ImportName, which bills the run of the call's context,
// with Tracker.TrackOperations, the instructions the guest counted since
// its last bill, and gives it a new credit: DefaultBatch, fewer when the
// run or its tenant has less left. The guest also bills what it counted
// before each call of a host function and when a call from the host
// returns (each exported function, and the start function, is exported
// through a wrapper that settles the bill; its name is SettleName). When
// a bill is refused (the guest ran past the limit, or the run was
// stopped: timeout, CPU time, cancellation), the host charges what the
// guest ran up to the limit and the guest traps: the call's error wraps
// the *reslimit.LimitError (or the stop's cause). Outside a run the host
// function only checks the call's context, so an instrumented guest also
// stops when its context is done.
//
// The bound: every operation billed was run by the guest, and after each
// call from the host (reslimitwazero.Call or wazero's) returns, or when
// the guest is stopped by a host function (WASI's proc_exit, a host
// function that panics), its run was billed exactly the instructions it
// ran. Nothing is billed ahead, so nothing is given back. A guest runs at
// most its credit before it bills, and its credit is at most what the run
// and its tenant have left, so it is stopped at most one path through a
// function's body (no loop iteration, call or return on it) past
// MaxOperations, or what MaxTotalOperations leaves it; when other work
// charges the same run or tenant at the same time, at most DefaultBatch
// and that path past it. What a guest ran and could not be billed: past
// the limit (that path); after its run was stopped (a stopped run refuses
// every charge: at most DefaultBatch and a path); and when it traps of its
// own (unreachable, an access out of bounds, a division by zero, a stack
// overflow), what it ran since its last bill, at most DefaultBatch and a
// path, which the trapping frame's counter held. What counts: every
// instruction reached, a block's in full when the block starts (one that
// traps or exits midway was counted whole); block, loop, if, else and end
// count when control falls through them; a call of a host function is
// one instruction, whatever the host does; a wrapper's instructions do not
// count.
//
// The module must be well formed: Instrument checks the structure of every
// section and instruction and returns an error describing the first flaw;
// it does not check types (wazero validates the result when it compiles
// it, and a module wazero accepts gives a result wazero accepts). The
// result imports one more function, so the indices of the module's own
// functions move up by one: calls, ref.func, exports, the start function,
// element segments and the name section are rewritten to match. It has
// two more globals, and one more function per function exported or
// started (the wrappers, after the module's own), with a declarative
// element segment for the functions wrapped. A module with no function
// bodies is returned as it is. A module that imports from ImportModule
// (one Instrument made, or one crafted to call the host function itself)
// is refused with ErrInstrumented, and so is one whose code names a local,
// global or function it does not have (which after the rewrite would name
// what Instrument added): Instrument is safe on untrusted input.
func Instrument(wasm []byte) ([]byte, error) {
	out, err := instrument(wasm)
	if err != nil {
		return nil, fmt.Errorf("reslimitwazero: Instrument: %w", err)
	}
	return out, nil
}

// fuelType is the type of the host function: (i64, i64) -> i64.
var fuelType = wasmfile.FuncType{Params: []byte{wasmfile.I64, wasmfile.I64}, Results: []byte{wasmfile.I64}}

func instrument(wasm []byte) ([]byte, error) {
	m, err := wasmfile.Parse(wasm)
	if err != nil {
		return nil, err
	}
	if err := checkModule(m); err != nil {
		return nil, err
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
	return rw.encode(append(codes, rw.settlers()...))
}

// checkModule refuses a module that imports from ImportModule, or whose
// exports name a function or global it does not have (after the rewrite
// they would name what Instrument adds: the fuel global, say).
func checkModule(m *wasmfile.Module) error {
	for _, im := range m.Imports {
		if im.Module == ImportModule {
			return ErrInstrumented
		}
	}
	nfuncs := uint64(m.NumFuncImports) + uint64(len(m.Funcs))
	nglobals := uint64(m.NumGlobalImports) + uint64(len(m.Globals))
	for _, e := range m.Exports {
		if (e.Kind == wasmfile.KindFunc && uint64(e.Index) >= nfuncs) || (e.Kind == wasmfile.KindGlobal && uint64(e.Index) >= nglobals) {
			return fmt.Errorf("%w: export %q names index %d, which the module does not have", wasmfile.ErrMalformed, e.Name, e.Index)
		}
	}
	if m.Start != nil && uint64(*m.Start) >= nfuncs {
		return fmt.Errorf("%w: start function %d of %d", wasmfile.ErrMalformed, *m.Start, nfuncs)
	}
	return nil
}

// rewriter instruments a parsed module: the host function is imported
// after the module's function imports, so its own functions' indices move
// up by one; the fuel and mark globals are added after its globals; a
// settling wrapper of each exported function and of the start function
// is added after its functions, and exported (or started) in its place.
type rewriter struct {
	m     *wasmfile.Module
	meter *wasmfile.Meter
	// wrapped lists the (remapped) functions that get a wrapper, the k-th
	// wrapper's index being first+k; wrapper maps a function to its wrapper.
	wrapped []uint32
	wrapper map[uint32]uint32
	first   uint32
	named   bool // the module's name section was kept (and names the wrappers)
}

func newRewriter(m *wasmfile.Module) (*rewriter, error) {
	nfuncs := uint64(m.NumFuncImports) + uint64(len(m.Funcs))
	nglobals := uint64(m.NumGlobalImports) + uint64(len(m.Globals))
	if nfuncs+uint64(len(m.Exports))+2 >= math.MaxUint32 || nglobals+1 >= math.MaxUint32 || len(m.Types) >= math.MaxUint32 {
		return nil, fmt.Errorf("%w: too many functions, globals or types", wasmfile.ErrMalformed)
	}
	rw := &rewriter{m: m, wrapper: map[uint32]uint32{}, first: uint32(nfuncs) + 1}
	rw.meter = &wasmfile.Meter{
		Global: uint32(nglobals), Mark: uint32(nglobals) + 1, Funcs: uint32(nfuncs),
		Refuel: m.NumFuncImports, Imported: m.NumFuncImports, Remap: rw.remap,
	}
	return rw, nil
}

// wrap returns the wrapper of function f (remapped), adding one when f
// is the module's own and has none yet; f itself for an import (or an
// index out of range, which wazero refuses).
func (rw *rewriter) wrap(f uint32) uint32 {
	if f < rw.m.NumFuncImports || f >= rw.first {
		return f
	}
	w, ok := rw.wrapper[f]
	if !ok {
		w = rw.first + uint32(len(rw.wrapped))
		rw.wrapper[f] = w
		rw.wrapped = append(rw.wrapped, f)
	}
	return w
}

// settlers returns the wrappers' bodies, and adds their types to the
// function section.
func (rw *rewriter) settlers() []wasmfile.Code {
	m := rw.m
	codes := make([]wasmfile.Code, 0, len(rw.wrapped))
	for _, f := range rw.wrapped {
		t := m.Funcs[f-m.NumFuncImports-1]
		m.Funcs = append(m.Funcs, t)
		codes = append(codes, rw.meter.Settle(f, len(m.Types[t].Params)))
	}
	return codes
}

// remap is the new index of function f.
func (rw *rewriter) remap(f uint32) uint32 {
	if f < rw.m.NumFuncImports {
		return f
	}
	return f + 1
}

// remapRefs remaps the function indices of the globals' initial values,
// the exports and the start function (to their wrappers) and the element
// segments.
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
			m.Exports[i].Index = rw.wrap(rw.remap(m.Exports[i].Index))
		}
	}
	if m.Start != nil {
		s := rw.wrap(rw.remap(*m.Start))
		m.Start = &s
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
			s = wasmfile.StartSection(*m.Start)
		case wasmfile.SecElement:
			s = wasmfile.ElementSection(rw.elems())
		case wasmfile.SecCode:
			var err error
			if s, err = wasmfile.CodeSection(codes); err != nil {
				return nil, err
			}
		case wasmfile.SecCustom:
			var keep bool
			if s, keep = rw.renameSection(s); !keep {
				continue
			}
		}
		sections = append(sections, s)
	}
	if !rw.named && len(rw.wrapped) > 0 {
		content, _ := wasmfile.NameFuncs(nil, rw.wrappers(), SettleName)
		sections = append(sections, wasmfile.Section{ID: wasmfile.SecCustom, Content: append([]byte(nameSection), content...)})
	}
	types := append(m.Types[:len(m.Types):len(m.Types)], fuelType)
	imports := append(m.Imports[:len(m.Imports):len(m.Imports)], wasmfile.Import{
		Module: ImportModule, Name: ImportName, Kind: wasmfile.KindFunc,
		Desc: wasmfile.AppendU32(nil, uint32(len(m.Types))),
	})
	zero := wasmfile.Global{Type: wasmfile.I64, Mut: 1, Init: []byte{wasmfile.OpI64Const, 0, wasmfile.OpEnd}}
	globals := append(m.Globals[:len(m.Globals):len(m.Globals)], zero, zero) // the fuel, the mark
	sections = wasmfile.Put(sections, wasmfile.TypeSection(types))
	sections = wasmfile.Put(sections, wasmfile.FunctionSection(m.Funcs))
	if len(rw.wrapped) > 0 {
		sections = wasmfile.Put(sections, wasmfile.ElementSection(rw.elems()))
	}
	sections = wasmfile.Put(sections, wasmfile.ImportSection(imports))
	sections = wasmfile.Put(sections, wasmfile.GlobalSection(globals))
	return wasmfile.Encode(sections)
}

// nameSection is the name of the name section, as it starts its content.
const nameSection = "\x04name"

// SettleName is the name the wrappers that Instrument exports in place of
// the module's own functions have in its name section: each calls the
// function it wraps and settles the bill of what it ran. CountCalls does
// not count their calls.
const SettleName = "reslimit.settle"

// renameSection remaps the function indices of a name section and names
// the wrappers; a malformed one is dropped. Other custom sections are
// kept as they are.
func (rw *rewriter) renameSection(s wasmfile.Section) (wasmfile.Section, bool) {
	if !bytes.HasPrefix(s.Content, []byte(nameSection)) {
		return s, true
	}
	content, ok := wasmfile.RemapNames(s.Content[len(nameSection):], rw.remap)
	if ok && len(rw.wrapped) > 0 {
		content, ok = wasmfile.NameFuncs(content, rw.wrappers(), SettleName)
	}
	if !ok || rw.named {
		return s, false
	}
	rw.named = true
	s.Content = append([]byte(nameSection), content...)
	return s, true
}

// wrappers lists the wrappers' indices.
func (rw *rewriter) wrappers() []uint32 {
	ws := make([]uint32, len(rw.wrapped))
	for k := range ws {
		ws[k] = rw.first + uint32(k)
	}
	return ws
}

// elems returns the element segments, with a declarative one for the
// wrapped functions: a function that ref.func names must be declared, and
// an export (now the wrapper's) no longer declares it.
func (rw *rewriter) elems() []wasmfile.Elem {
	if len(rw.wrapped) == 0 {
		return rw.m.Elems
	}
	return append(rw.m.Elems[:len(rw.m.Elems):len(rw.m.Elems)], wasmfile.Elem{Flags: 3, Funcs: rw.wrapped})
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
		WithGoModuleFunction(api.GoModuleFunc(refuel), []api.ValueType{api.ValueTypeI64, api.ValueTypeI64}, []api.ValueType{api.ValueTypeI64}).
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

// refuel is the host function. stack[0] is the number of instructions
// the guest counted since its bill was last settled, stack[1] how many of
// them are the block about to start (0 at a call of the host or the end of
// an exported call). It bills them to the run of ctx and returns the
// guest's new fuel: what it may run before it calls again, DefaultBatch or
// what the run and its tenant have left if less. When the bill is refused
// (the guest ran past the limit, or the run was stopped) it stops the
// guest.
func refuel(ctx context.Context, _ api.Module, stack []uint64) {
	tr := reslimit.FromContext(ctx)
	if tr == nil {
		if ctx.Err() != nil {
			panic(context.Cause(ctx))
		}
		stack[0] = DefaultBatch
		return
	}
	if err := bill(tr, int64(stack[0]), int64(stack[1])); err != nil {
		panic(err) // wazero makes it the call's error
	}
	fuel := int64(DefaultBatch)
	if left, ok := tr.Remaining(reslimit.Operations); ok && left < fuel {
		fuel = left
	}
	stack[0] = uint64(fuel)
}

// bill charges tr the spent instructions the guest counted, need of which
// are a block it has not started. When that is refused it charges what
// the guest ran (spent - need), up to the limit, and returns the refusal.
func bill(tr *reslimit.Tracker, spent, need int64) error {
	err := tr.TrackOperations(spent)
	if err == nil {
		return nil
	}
	ran := min(spent-need, spent)
	left, ok := tr.Remaining(reslimit.Operations)
	if !ok || left <= 0 || ran <= 0 {
		return err
	}
	n := min(left, ran)
	if tr.TrackOperations(n) != nil {
		return err
	}
	if again := tr.TrackOperations(spent - n); again != nil {
		return again // the refusal, with what was charged
	}
	return nil
}
