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
// function to call when it runs out ((i64) -> i64: it takes the fuel left,
// negative, and returns the fuel after a refill, not negative) and the
// function indices' remapping.
type Meter struct {
	Global uint32
	Refuel uint32
	Remap  func(uint32) uint32
}

// MeterBody returns c rewritten to count its instructions: at the start of
// every straight-line run of instructions (the function's start, a loop's
// body, each arm of an if, after the end of a block or if, after br_if,
// and after br, br_table, return and unreachable), the run's number of
// instructions is subtracted from the fuel global; when the fuel goes
// negative, the refuel function is called with it. nparams is the number
// of the function's parameters; an i64 local is added for the fuel.
func (mt *Meter) MeterBody(c Code, nparams int) (Code, error) {
	tmp := uint64(nparams)
	for _, l := range c.Locals {
		tmp += uint64(l.N)
	}
	if tmp >= 1<<31 {
		return c, fmt.Errorf("%w: too many locals", ErrMalformed)
	}
	body := c.Body
	var ins []Instr
	for pos := 0; pos < len(body); {
		in, err := Decode(body, pos, 0)
		if err != nil {
			return c, err
		}
		ins = append(ins, in)
		pos = in.End
	}
	// leader[i]: instruction i starts a run.
	leader := make([]bool, len(ins)+1)
	leader[0] = true
	var loops []bool // for each open block: is it a loop
	for i, in := range ins {
		switch in.Op {
		case OpBlock, OpIf:
			loops = append(loops, false)
		case OpLoop:
			loops = append(loops, true)
		}
		switch in.Op {
		case OpLoop, OpIf, OpElse, OpBrIf, OpBr, OpBrTable, OpReturn, OpUnreachable:
			leader[i+1] = true
		case OpEnd:
			if len(loops) > 0 {
				// After a block or if: a branch target. After a loop
				// only the loop's last run falls through.
				leader[i+1] = !loops[len(loops)-1]
				loops = loops[:len(loops)-1]
			}
		}
	}
	pre := []byte{OpGlobalGet}
	pre = AppendU32(pre, mt.Global)
	post := []byte{OpI64Sub, OpLocalTee}
	post = AppendU32(post, uint32(tmp))
	post = append(post, OpGlobalSet)
	post = AppendU32(post, mt.Global)
	post = append(post, OpLocalGet)
	post = AppendU32(post, uint32(tmp))
	post = append(post, OpI64Const, 0, OpI64LtS, OpIf, BlockEmpty, OpLocalGet)
	post = AppendU32(post, uint32(tmp))
	post = append(post, OpCall)
	post = AppendU32(post, mt.Refuel)
	post = append(post, OpGlobalSet)
	post = AppendU32(post, mt.Global)
	post = append(post, OpEnd)

	out := make([]byte, 0, len(body)+len(body)/2+len(pre)+len(post)+4)
	for i := 0; i < len(ins); {
		j := i + 1
		for j < len(ins) && !leader[j] {
			j++
		}
		out = append(out, pre...)
		out = append(out, OpI64Const)
		out = AppendS64(out, int64(j-i))
		out = append(out, post...)
		for ; i < j; i++ {
			out = appendInstr(out, body, ins[i], mt.Remap)
		}
	}
	c.Body = out
	c.Locals = append(c.Locals[:len(c.Locals):len(c.Locals)], Local{N: 1, Type: I64})
	return c, nil
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
