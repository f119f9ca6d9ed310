package wasmfile

// Opcodes the instrumenter looks at or writes.
const (
	OpUnreachable  byte = 0x00
	OpNop          byte = 0x01
	OpBlock        byte = 0x02
	OpLoop         byte = 0x03
	OpIf           byte = 0x04
	OpElse         byte = 0x05
	OpEnd          byte = 0x0b
	OpBr           byte = 0x0c
	OpBrIf         byte = 0x0d
	OpBrTable      byte = 0x0e
	OpReturn       byte = 0x0f
	OpCall         byte = 0x10
	OpCallIndirect byte = 0x11
	OpLocalGet     byte = 0x20
	OpLocalSet     byte = 0x21
	OpLocalTee     byte = 0x22
	OpGlobalGet    byte = 0x23
	OpGlobalSet    byte = 0x24
	OpI32Const     byte = 0x41
	OpI64Const     byte = 0x42
	OpI64LtS       byte = 0x53
	OpI64Sub       byte = 0x7d
	OpRefFunc      byte = 0xd2
	OpPrefixFC     byte = 0xfc
	OpPrefixFD     byte = 0xfd
	BlockEmpty     byte = 0x40
)

// Instr is one decoded instruction: Op (and Sub for the 0xFC and 0xFD
// prefixes) and where it lies in its body: [Start, End). For call and
// ref.func, Func is the function index and FuncAt where its LEB128 starts;
// for local.* and global.* Idx is the local's or global's index.
type Instr struct {
	Op         byte
	Sub        uint32
	Start, End int
	Func       uint32
	FuncAt     int
	Idx        uint32
}

// Decode decodes the instruction at b[pos:]; base is the offset of b[0]
// in the module, for errors.
func Decode(b []byte, pos, base int) (Instr, error) {
	r := &reader{b: b, pos: pos, base: base}
	in := Instr{Start: pos}
	op, err := r.byte()
	if err != nil {
		return in, err
	}
	in.Op = op
	switch {
	case op == OpUnreachable, op == OpNop, op == OpElse, op == OpEnd, op == OpReturn:
	case op == OpBlock, op == OpLoop, op == OpIf:
		err = blockType(r)
	case op == OpBr, op == OpBrIf:
		_, err = r.u32()
	case op == OpBrTable:
		var n uint32
		if n, err = r.vecLen(1); err == nil {
			for i := uint32(0); i <= n && err == nil; i++ { // n labels and the default
				_, err = r.u32()
			}
		}
	case op == OpCall, op == OpRefFunc:
		in.FuncAt = r.pos
		in.Func, err = r.u32()
	case op == OpCallIndirect:
		if _, err = r.u32(); err == nil {
			_, err = r.u32()
		}
	case op == 0x1a, op == 0x1b: // drop, select
	case op == 0x1c: // select t*
		_, err = valTypes(r)
	case op >= 0x20 && op <= 0x26: // local.*, global.*, table.get/set
		in.Idx, err = r.u32()
	case op >= 0x28 && op <= 0x3e: // loads and stores
		err = memArg(r)
	case op == 0x3f, op == 0x40: // memory.size, memory.grow
		_, err = r.u32()
	case op == OpI32Const:
		_, err = r.sleb(32)
	case op == OpI64Const:
		_, err = r.sleb(64)
	case op == 0x43:
		_, err = r.bytes(4)
	case op == 0x44:
		_, err = r.bytes(8)
	case op >= 0x45 && op <= 0xc4: // numeric, sign extension
	case op == 0xd0: // ref.null t
		var t byte
		if t, err = r.byte(); err == nil && !isRefType(t) {
			err = r.errorf("ref.null of 0x%02x", t)
		}
	case op == 0xd1: // ref.is_null
	case op == OpPrefixFC:
		in.Sub, err = r.u32()
		if err == nil {
			err = prefixFC(r, in.Sub)
		}
	case op == OpPrefixFD:
		in.Sub, err = r.u32()
		if err == nil {
			err = prefixFD(r, in.Sub)
		}
	default:
		err = r.errorf("unknown opcode 0x%02x", op)
	}
	in.End = r.pos
	return in, err
}

func blockType(r *reader) error {
	if r.pos < len(r.b) {
		c := r.b[r.pos]
		if c == BlockEmpty || isValType(c) {
			r.pos++
			return nil
		}
	}
	t, err := r.sleb(33)
	if err == nil && t < 0 {
		err = r.errorf("unknown block type %d", t)
	}
	return err
}

func memArg(r *reader) error {
	if _, err := r.u32(); err != nil { // alignment
		return err
	}
	_, err := r.u32() // offset
	return err
}

// prefixFC: saturating truncations, bulk memory and table instructions.
func prefixFC(r *reader, sub uint32) error {
	var err error
	switch {
	case sub <= 7: // trunc_sat
	case sub == 8: // memory.init data mem
		if _, err = r.u32(); err == nil {
			_, err = r.u32()
		}
	case sub == 9, sub == 11, sub == 13, sub == 15, sub == 16, sub == 17: // one index
		_, err = r.u32()
	case sub == 10, sub == 12, sub == 14: // two indices
		if _, err = r.u32(); err == nil {
			_, err = r.u32()
		}
	default:
		err = r.errorf("unknown instruction 0xfc %d", sub)
	}
	return err
}

// prefixFD: 128-bit SIMD.
func prefixFD(r *reader, sub uint32) error {
	var err error
	switch {
	case sub <= 11, sub == 92, sub == 93: // loads, store, load_zero
		err = memArg(r)
	case sub == 12, sub == 13: // v128.const, i8x16.shuffle
		_, err = r.bytes(16)
	case sub >= 21 && sub <= 34: // extract_lane, replace_lane
		_, err = r.byte()
	case sub >= 84 && sub <= 91: // load_lane, store_lane
		if err = memArg(r); err == nil {
			_, err = r.byte()
		}
	case sub <= 0xff: // no immediate (wazero refuses the unassigned ones)
	default:
		err = r.errorf("unknown instruction 0xfd %d", sub)
	}
	return err
}
