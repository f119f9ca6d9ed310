package wasmfile

import "fmt"

// RemapFuncs returns expr (a constant expression or a function body's
// instructions) with the function index of every call and ref.func
// replaced by remap's.
func RemapFuncs(expr []byte, remap func(uint32) uint32) ([]byte, error) {
	out := make([]byte, 0, len(expr)+4)
	for pos := 0; pos < len(expr); {
		in, err := Decode(expr, pos, 0)
		if err != nil {
			return nil, err
		}
		out = appendInstr(out, expr, in, remap)
		pos = in.End
	}
	return out, nil
}

// appendInstr appends the instruction in of body to out, its function
// index remapped.
func appendInstr(out, body []byte, in Instr, remap func(uint32) uint32) []byte {
	if in.Op == OpCall || in.Op == OpRefFunc {
		out = append(out, body[in.Start:in.FuncAt]...)
		return AppendU32(out, remap(in.Func))
	}
	return append(out, body[in.Start:in.End]...)
}

// Meter is what MeterBody adds to a function: the fuel global, the mark
// global, the function to call to settle the bill and refuel, the number
// of imported functions (a call of one is a call of the host) and the
// function indices' remapping.
//
// The fuel is the number of instructions the guest may still run before
// it asks again; the mark is what the fuel was when the bill was last
// settled, so that mark − fuel instructions were counted since and not
// billed yet. The refuel function, (i64, i64) -> i64, takes that count
// and how many of them are the block about to start, bills them, and
// returns the new fuel (not negative), which becomes the mark too.
type Meter struct {
	Global   uint32 // the fuel; the module's own globals come before it
	Mark     uint32
	Funcs    uint32 // the module's functions (imported and its own), before the rewrite
	Refuel   uint32
	Imported uint32
	Remap    func(uint32) uint32
}

// MeterBody returns c rewritten to count its instructions. The function
// keeps the fuel in a local of its own (one is added, after its other
// locals): it takes the fuel from the global when it starts and puts it
// back around every call it makes and before it returns, so that the
// global holds the fuel whenever the function is not running. Every
// straight-line run of instructions (the function's start, a loop's body,
// each arm of an if, what follows the end of a block or if, a br_if, a
// br, br_table, return or unreachable) subtracts its number of
// instructions from the fuel when it starts. The fuel is checked — when
// negative, the refuel function is called to bill what was counted and
// returns the new fuel — at the function's start, at each loop iteration
// and before the function returns; before a call of an imported function
// (the host) the bill is settled the same way. A loop whose back edges are
// all br has its header's count added to the run that enters it and to
// each run that branches back (which checks instead), so that an
// iteration costs one subtraction and one check. nparams is the number of
// the function's parameters.
func (mt *Meter) MeterBody(c Code, nparams int) (Code, error) {
	fuel := uint64(nparams)
	for _, l := range c.Locals {
		fuel += uint64(l.N)
	}
	if fuel >= 1<<31 {
		return c, fmt.Errorf("%w: too many locals", ErrMalformed)
	}
	ins, err := decodeBody(c.Body)
	if err != nil {
		return c, err
	}
	if err := mt.checkIndices(ins, fuel); err != nil {
		return c, err
	}
	f := analyze(c.Body, ins)
	runs := splitRuns(ins, f)
	e := mt.sequences(fuel)
	c.Body = e.emit(c.Body, ins, f, runs)
	c.Locals = append(c.Locals[:len(c.Locals):len(c.Locals)], Local{N: 1, Type: I64})
	return c, nil
}

// checkIndices refuses a body that names a local, global or function the
// module does not have: after the rewrite such an index would name the
// fuel local, the fuel or mark global or a wrapper, and let a crafted
// guest set its own fuel. (wazero refuses such a module when it is not
// instrumented; Instrument must refuse it too.) nlocals is the number of
// the function's locals, parameters included.
func (mt *Meter) checkIndices(ins []Instr, nlocals uint64) error {
	for _, in := range ins {
		switch {
		case in.Op >= OpLocalGet && in.Op <= 0x22 && uint64(in.Idx) >= nlocals:
			return fmt.Errorf("%w: local %d of %d", ErrMalformed, in.Idx, nlocals)
		case (in.Op == OpGlobalGet || in.Op == 0x24) && in.Idx >= mt.Global:
			return fmt.Errorf("%w: global %d of %d", ErrMalformed, in.Idx, mt.Global)
		case (in.Op == OpCall || in.Op == OpRefFunc) && in.Func >= mt.Funcs:
			return fmt.Errorf("%w: function %d of %d", ErrMalformed, in.Func, mt.Funcs)
		}
	}
	return nil
}

// Settle returns the body of a function of nparams parameters that calls
// function f with them and then settles the bill of what f ran, leaving
// f's results: Instrument exports it in f's place, so that a call from the
// host is billed exactly when it returns.
func (mt *Meter) Settle(f uint32, nparams int) Code {
	var b []byte
	for i := range nparams {
		b = AppendU32(append(b, OpLocalGet), uint32(i))
	}
	b = AppendU32(append(b, OpCall), f)
	// mark = fuel = refuel(mark - fuel, 0)
	b = AppendU32(append(b, OpGlobalGet), mt.Mark)
	b = AppendU32(append(b, OpGlobalGet), mt.Global)
	b = append(b, OpI64Sub, OpI64Const, 0)
	b = AppendU32(append(b, OpCall), mt.Refuel)
	b = AppendU32(append(b, OpGlobalSet), mt.Mark)
	b = AppendU32(append(b, OpGlobalGet), mt.Mark)
	b = AppendU32(append(b, OpGlobalSet), mt.Global)
	return Code{Body: append(b, OpEnd)}
}

// decodeBody decodes every instruction of a function body.
func decodeBody(body []byte) ([]Instr, error) {
	var ins []Instr
	for pos := 0; pos < len(body); {
		in, err := Decode(body, pos, 0)
		if err != nil {
			return nil, err
		}
		ins = append(ins, in)
		pos = in.End
	}
	return ins, nil
}

// block is a block, loop or if of a body being analysed.
type block struct {
	at     int  // index of its instruction
	loop   bool // a loop
	merge  bool // a loop all of whose branches are br
	brs    []int
	header int // index of its header run
}

// flow is the control flow of a body: leader[i] tells that instruction i
// starts a run, exits[i] that instruction i may leave the function (the
// fuel is put back first); loops lists the body's loops.
type flow struct {
	leader, exits []bool
	loops         []*block
	open          []*block // while analysing: the open blocks, innermost last
}

// analyze finds the runs' leaders, the exits and the loops of a body.
func analyze(body []byte, ins []Instr) *flow {
	f := &flow{leader: make([]bool, len(ins)+1), exits: make([]bool, len(ins))}
	f.leader[0] = true
	for i, in := range ins {
		switch in.Op {
		case OpBlock, OpIf:
			f.open = append(f.open, &block{at: i})
		case OpLoop:
			l := &block{at: i, loop: true, merge: true}
			f.open = append(f.open, l)
			f.loops = append(f.loops, l)
		}
		switch in.Op {
		case OpLoop, OpIf, OpElse, OpUnreachable:
			f.leader[i+1] = true
		case OpReturn:
			f.leader[i+1] = true
			f.exits[i] = true
		case OpBr, OpBrIf, OpBrTable:
			f.leader[i+1] = true
			f.branch(i, in, labels(body, in))
		case OpEnd:
			f.end(i)
		}
	}
	return f
}

// branch records the targets of branch instruction i: the function (an
// exit) or the loops it branches back to.
func (f *flow) branch(i int, in Instr, targets []uint32) {
	for _, l := range targets {
		if uint64(l) >= uint64(len(f.open)) {
			f.exits[i] = true
			continue
		}
		t := f.open[len(f.open)-1-int(l)]
		if !t.loop {
			continue
		}
		if in.Op == OpBr {
			t.brs = append(t.brs, i)
		} else {
			t.merge = false
		}
	}
}

// end closes the innermost open block at instruction i, or is the
// function's end.
func (f *flow) end(i int) {
	if len(f.open) == 0 {
		f.exits[i] = true
		return
	}
	// After a block or if: a branch target. After a loop only the loop's
	// last run falls through.
	f.leader[i+1] = !f.open[len(f.open)-1].loop
	f.open = f.open[:len(f.open)-1]
}

// run is a straight-line run of instructions [start, end), its cost, and
// whether the fuel is checked at its start (at the function's start and
// at each iteration of every loop).
type run struct {
	start, end int
	cost       int64
	check      bool
	header     bool
}

// splitRuns cuts a body into its runs, marks those that check the fuel
// and merges loop headers into their predecessors where it can.
func splitRuns(ins []Instr, f *flow) []run {
	var runs []run
	runOf := make([]int, len(ins))
	for i := 0; i < len(ins); {
		j := i + 1
		for j < len(ins) && !f.leader[j] {
			j++
		}
		for k := i; k < j; k++ {
			runOf[k] = len(runs)
		}
		runs = append(runs, run{start: i, end: j, cost: int64(j - i)})
		i = j
	}
	runs[0].check = true
	for _, l := range f.loops {
		if l.at+1 < len(ins) {
			l.header = runOf[l.at+1]
			runs[l.header].check, runs[l.header].header = true, true
		} else {
			l.merge = false
		}
	}
	for _, l := range f.loops {
		if l.merge {
			mergeHeader(runs, runOf, l)
		}
	}
	return runs
}

// mergeHeader: for a loop whose every back edge is a br, its header's cost
// is charged by the run that enters the loop and by each run that
// branches back (which then checks the fuel), so that an iteration is one
// check — unless one of those runs is a loop header itself.
func mergeHeader(runs []run, runOf []int, l *block) {
	preds := []int{runOf[l.at]}
	for _, b := range l.brs {
		preds = append(preds, runOf[b])
	}
	for _, p := range preds {
		if p == l.header || runs[p].header {
			return
		}
	}
	for k, p := range preds {
		runs[p].cost += runs[l.header].cost
		if k > 0 {
			runs[p].check = true
		}
	}
	runs[l.header].cost, runs[l.header].check = 0, false
}

// emitter holds the instruction sequences MeterBody inserts, for one
// function (whose fuel local they name).
type emitter struct {
	mt   *Meter
	fuel uint64
	// put: global = fuel. take: fuel = global.
	put, take []byte
}

// sequences returns the sequences for a function whose fuel is local fuel.
func (mt *Meter) sequences(fuel uint64) *emitter {
	e := &emitter{mt: mt, fuel: fuel}
	e.put = appendIdx(appendIdx(nil, OpLocalGet, fuel), OpGlobalSet, uint64(mt.Global))
	e.take = appendIdx(appendIdx(nil, OpGlobalGet, uint64(mt.Global)), OpLocalSet, fuel)
	return e
}

// appendIdx appends op with its index immediate x.
func appendIdx(b []byte, op byte, x uint64) []byte { return AppendU32(append(b, op), uint32(x)) }

// emit returns the metered body: the fuel taken, then each run's charge
// followed by its instructions.
func (e *emitter) emit(body []byte, ins []Instr, f *flow, runs []run) []byte {
	out := make([]byte, 0, 2*len(body)+len(e.take)+32)
	out = append(out, e.take...)
	for _, r := range runs {
		out = e.charge(out, r)
		for i := r.start; i < r.end; i++ {
			out = e.instr(out, body, ins[i], f.exits[i])
		}
	}
	return out
}

// charge appends what starts run r: fuel -= cost, and when the run
// checks, if fuel < 0 { settle }.
func (e *emitter) charge(out []byte, r run) []byte {
	if r.cost > 0 {
		out = appendIdx(out, OpLocalGet, e.fuel)
		out = AppendS64(append(out, OpI64Const), r.cost)
		out = append(out, OpI64Sub)
		if !r.check {
			return appendIdx(out, OpLocalSet, e.fuel)
		}
		out = appendIdx(out, OpLocalTee, e.fuel)
	} else if r.check {
		out = appendIdx(out, OpLocalGet, e.fuel)
	} else {
		return out
	}
	out = append(out, OpI64Const, 0, OpI64LtS, OpIf, BlockEmpty)
	out = e.settle(out, r.cost)
	return append(out, OpEnd)
}

// settle appends the call of the refuel function: mark = fuel =
// refuel(mark - fuel, need), need being the cost of the run starting.
func (e *emitter) settle(out []byte, need int64) []byte {
	out = appendIdx(out, OpGlobalGet, uint64(e.mt.Mark))
	out = appendIdx(out, OpLocalGet, e.fuel)
	out = append(out, OpI64Sub)
	out = AppendS64(append(out, OpI64Const), need)
	out = appendIdx(out, OpCall, uint64(e.mt.Refuel))
	out = appendIdx(out, OpLocalTee, e.fuel)
	return appendIdx(out, OpGlobalSet, uint64(e.mt.Mark))
}

// instr appends instruction in of body: a call with the fuel put back
// around it (the bill settled first when it calls the host), an exit with
// the fuel checked and put back first.
func (e *emitter) instr(out, body []byte, in Instr, exit bool) []byte {
	switch {
	case in.Op == OpCall || in.Op == OpCallIndirect:
		if in.Op == OpCall && in.Func < e.mt.Imported {
			out = e.settle(out, 0)
		}
		out = append(out, e.put...)
		out = appendInstr(out, body, in, e.mt.Remap)
		return append(out, e.take...)
	case exit:
		out = e.charge(out, run{check: true})
		out = append(out, e.put...)
	}
	return appendInstr(out, body, in, e.mt.Remap)
}

// labels returns the labels of a br, br_if or br_table.
func labels(body []byte, in Instr) []uint32 {
	r := &reader{b: body[:in.End], pos: in.Start + 1}
	n := uint32(0)
	if in.Op == OpBrTable {
		n, _ = r.u32()
	}
	ls := make([]uint32, 0, n+1)
	for k := uint32(0); k <= n; k++ {
		l, err := r.u32()
		if err != nil {
			break // Decode read them: not reached
		}
		ls = append(ls, l)
	}
	return ls
}

// RemapNames returns the content of a "name" custom section (after its
// name) with the function indices of its function, local and label names
// remapped, or false when it is malformed.
func RemapNames(content []byte, remap func(uint32) uint32) ([]byte, bool) {
	r := &reader{b: content}
	var out []byte
	for !r.done() {
		id, err := r.byte()
		if err != nil {
			return nil, false
		}
		size, err := r.u32()
		if err != nil {
			return nil, false
		}
		sub, err := r.bytes(size)
		if err != nil {
			return nil, false
		}
		if id >= 1 && id <= 3 { // function names; local names; label names
			s := &reader{b: sub}
			n, err := s.vecLen(2)
			if err != nil {
				return nil, false
			}
			nb := AppendU32(nil, n)
			for range n {
				f, err := s.u32()
				if err != nil {
					return nil, false
				}
				nb = AppendU32(nb, remap(f))
				start := s.pos
				if id == 1 {
					_, err = s.name()
				} else {
					var m uint32
					if m, err = s.vecLen(2); err == nil {
						for k := uint32(0); k < m && err == nil; k++ {
							if _, err = s.u32(); err == nil {
								_, err = s.name()
							}
						}
					}
				}
				if err != nil {
					return nil, false
				}
				nb = append(nb, sub[start:s.pos]...)
			}
			if !s.done() {
				return nil, false
			}
			sub = nb
		}
		out = append(out, id)
		out = AppendU32(out, uint32(len(sub)))
		out = append(out, sub...)
	}
	return out, true
}

// NameFuncs returns the content of a "name" custom section (after its
// name; empty for a new one) with name given to the functions funcs, whose
// indices must be above every function it names already, or false when it
// is malformed.
func NameFuncs(content []byte, funcs []uint32, name string) ([]byte, bool) {
	var entries []byte
	for _, f := range funcs {
		entries = appendName(AppendU32(entries, f), name)
	}
	r := &reader{b: content}
	var out []byte
	added := false
	add := func(n uint32, named []byte) {
		sub := append(AppendU32(nil, n+uint32(len(funcs))), named...)
		sub = append(sub, entries...)
		out = append(AppendU32(append(out, 1), uint32(len(sub))), sub...)
		added = true
	}
	for !r.done() {
		start := r.pos
		id, err := r.byte()
		if err != nil {
			return nil, false
		}
		size, err := r.u32()
		if err != nil {
			return nil, false
		}
		sub, err := r.bytes(size)
		if err != nil {
			return nil, false
		}
		switch {
		case id == 1:
			s := &reader{b: sub}
			n, err := s.u32()
			if err != nil {
				return nil, false
			}
			add(n, sub[s.pos:])
			continue
		case id > 1 && !added:
			add(0, nil)
		}
		out = append(out, content[start:r.pos]...)
	}
	if !added {
		add(0, nil)
	}
	return out, true
}
