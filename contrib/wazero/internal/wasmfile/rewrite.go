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

// Meter is what MeterBody adds to a function: the fuel global, the
// function to call when the fuel runs out ((i64) -> i64: it takes the fuel
// left, negative, and returns the fuel after a refill, not negative) and
// the function indices' remapping.
type Meter struct {
	Global uint32
	Refuel uint32
	Remap  func(uint32) uint32
}

// MeterBody returns c rewritten to count its instructions. The function
// keeps the fuel in a local of its own (one is added, after its other
// locals): it takes the fuel from the global when it starts (leaving 0
// there) and puts it back around every call it makes and before it
// returns, so that the fuel is in one place at a time and a trap loses
// what the trapping frame held rather than leaving it to be spent again.
// Every straight-line run of instructions (the function's start, a loop's
// body, each arm of an if, what follows the end of a block or if, a br_if,
// a br, br_table, return or unreachable) subtracts its number of
// instructions from the fuel when it starts. The fuel is checked — when
// negative, the refuel function is called with it and returns the new
// fuel — at the function's start, at each loop iteration and before the
// function returns. A loop whose back edges are all br has its header's
// count added to the run that enters it and to each run that branches back
// (which checks instead), so that an iteration costs one subtraction and
// one check. nparams is the number of the function's parameters.
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
	f := analyze(c.Body, ins)
	runs := splitRuns(ins, f)
	e := mt.sequences(fuel)
	c.Body = e.emit(c.Body, ins, f, runs)
	c.Locals = append(c.Locals[:len(c.Locals):len(c.Locals)], Local{N: 1, Type: I64})
	return c, nil
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
	mt *Meter
	// put: global = fuel. take: fuel = global; global = 0. zero: global = 0.
	put, take, zero []byte
	// A run: pre, i64.const N, then post when it checks (fuel -= N; if
	// fuel < 0 { fuel = refuel(fuel) }), else sub (fuel -= N). check: the
	// check alone.
	pre, post, sub, check []byte
}

// sequences returns the sequences for a function whose fuel is local fuel.
func (mt *Meter) sequences(fuel uint64) *emitter {
	idx := func(b []byte, op byte, x uint64) []byte { return AppendU32(append(b, op), uint32(x)) }
	e := &emitter{mt: mt}
	e.put = idx(idx(nil, OpLocalGet, fuel), OpGlobalSet, uint64(mt.Global))
	e.zero = idx([]byte{OpI64Const, 0}, OpGlobalSet, uint64(mt.Global))
	e.take = append(idx(idx(nil, OpGlobalGet, uint64(mt.Global)), OpLocalSet, fuel), e.zero...)
	e.pre = idx(nil, OpLocalGet, fuel)
	refill := []byte{OpI64Const, 0, OpI64LtS, OpIf, BlockEmpty}
	refill = idx(refill, OpLocalGet, fuel)
	refill = idx(refill, OpCall, uint64(mt.Refuel))
	refill = idx(refill, OpLocalSet, fuel)
	refill = append(refill, OpEnd)
	e.post = append(idx([]byte{OpI64Sub}, OpLocalTee, fuel), refill...)
	e.sub = idx([]byte{OpI64Sub}, OpLocalSet, fuel)
	e.check = append(idx(nil, OpLocalGet, fuel), refill...)
	return e
}

// emit returns the metered body: the fuel taken, then each run's charge
// followed by its instructions.
func (e *emitter) emit(body []byte, ins []Instr, f *flow, runs []run) []byte {
	out := make([]byte, 0, 2*len(body)+len(e.take)+len(e.pre)+len(e.post)+8)
	out = append(out, e.take...)
	for _, r := range runs {
		out = e.charge(out, r)
		for i := r.start; i < r.end; i++ {
			out = e.instr(out, body, ins[i], f.exits[i])
		}
	}
	return out
}

// charge appends what starts run r: its cost subtracted, the fuel checked.
func (e *emitter) charge(out []byte, r run) []byte {
	switch {
	case r.cost > 0 && r.check:
		out = append(out, e.pre...)
		out = append(out, OpI64Const)
		out = AppendS64(out, r.cost)
		out = append(out, e.post...)
	case r.cost > 0:
		out = append(out, e.pre...)
		out = append(out, OpI64Const)
		out = AppendS64(out, r.cost)
		out = append(out, e.sub...)
	case r.check:
		out = append(out, e.check...)
	}
	return out
}

// instr appends instruction in of body: a call with the fuel put back
// around it, an exit with the fuel checked and put back first.
func (e *emitter) instr(out, body []byte, in Instr, exit bool) []byte {
	switch {
	case in.Op == OpCall || in.Op == OpCallIndirect:
		out = append(out, e.put...)
		out = appendInstr(out, body, in, e.mt.Remap)
		return append(out, e.take...)
	case exit:
		out = append(out, e.check...)
		out = append(out, e.put...)
		out = appendInstr(out, body, in, e.mt.Remap)
		if in.Op == OpBrIf {
			out = append(out, e.zero...) // not taken: the frame keeps the fuel
		}
		return out
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
