// Package wasmbin assembles small WebAssembly modules in Go, for the tests,
// benchmarks and example of reslimitwazero: no pure-Go WAT compiler is
// available to this repository, so each guest is written here as its WAT
// text (in its doc comment) and the same instructions spelled with the
// opcodes of the WebAssembly 1.0 binary format. Nothing is checked in as a
// binary: the modules are built when a test or the example runs.
package wasmbin

// Value types.
const (
	I32 byte = 0x7f
	I64 byte = 0x7e
)

// Opcodes used by the guests (WebAssembly 1.0, section 5.4).
const (
	OpUnreachable byte = 0x00
	OpBlock       byte = 0x02
	OpLoop        byte = 0x03
	OpIf          byte = 0x04
	OpElse        byte = 0x05
	OpEnd         byte = 0x0b
	OpBr          byte = 0x0c
	OpBrIf        byte = 0x0d
	OpReturn      byte = 0x0f
	OpCall        byte = 0x10
	OpDrop        byte = 0x1a
	OpLocalGet    byte = 0x20
	OpLocalSet    byte = 0x21
	OpLocalTee    byte = 0x22
	OpI32Store    byte = 0x36
	OpMemorySize  byte = 0x3f
	OpMemoryGrow  byte = 0x40
	OpI32Const    byte = 0x41
	OpI64Const    byte = 0x42
	OpI32Eqz      byte = 0x45
	OpI32Eq       byte = 0x46
	OpI32LtS      byte = 0x48
	OpI32LtU      byte = 0x49
	OpI32Add      byte = 0x6a
	OpI32Sub      byte = 0x6b
	OpI32Mul      byte = 0x6c
	OpI64Add      byte = 0x7c
	OpI64Mul      byte = 0x7e
	OpI64ExtendU  byte = 0xad
	BlockVoid     byte = 0x40 // the empty block type
)

// Func is one function of a module: its type, the types of its locals
// (beyond its parameters), its body (instructions without the final end)
// and the name it is exported under ("" for none).
type Func struct {
	Params, Results []byte
	Locals          []byte
	Body            []byte
	Export          string
}

// Import is an imported function.
type Import struct {
	Module, Name    string
	Params, Results []byte
}

// Module is a module to assemble. Functions are indexed imports first, then
// Funcs in order. MemoryMin/MemoryMax are in 64 KiB pages; HasMemory adds
// one memory (exported as "memory"), MemoryMax 0 meaning no maximum.
type Module struct {
	Imports              []Import
	Funcs                []Func
	HasMemory            bool
	MemoryMin, MemoryMax uint32
}

// Bytes assembles m into the binary format.
func (m *Module) Bytes() []byte {
	out := []byte{0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00}
	out = appendSection(out, 1, m.typeSection())
	if len(m.Imports) > 0 {
		out = appendSection(out, 2, m.importSection())
	}
	out = appendSection(out, 3, m.functionSection())
	if m.HasMemory {
		out = appendSection(out, 5, m.memorySection())
	}
	out = appendSection(out, 7, m.exportSection())
	return appendSection(out, 10, m.codeSection())
}

// typeSection: one type per import and per function, in that order.
func (m *Module) typeSection() []byte {
	var types []byte
	n := 0
	addType := func(params, results []byte) {
		types = append(types, 0x60)
		types = appendVec(types, params)
		types = appendVec(types, results)
		n++
	}
	for _, im := range m.Imports {
		addType(im.Params, im.Results)
	}
	for _, f := range m.Funcs {
		addType(f.Params, f.Results)
	}
	return append(U32(nil, uint32(n)), types...)
}

func (m *Module) importSection() []byte {
	sec := U32(nil, uint32(len(m.Imports)))
	for i, im := range m.Imports {
		sec = appendName(sec, im.Module)
		sec = appendName(sec, im.Name)
		sec = append(sec, 0x00) // a function
		sec = U32(sec, uint32(i))
	}
	return sec
}

func (m *Module) functionSection() []byte {
	sec := U32(nil, uint32(len(m.Funcs)))
	for i := range m.Funcs {
		sec = U32(sec, uint32(len(m.Imports)+i))
	}
	return sec
}

func (m *Module) memorySection() []byte {
	sec := []byte{0x01}
	if m.MemoryMax > 0 {
		sec = append(sec, 0x01)
		sec = U32(sec, m.MemoryMin)
		return U32(sec, m.MemoryMax)
	}
	sec = append(sec, 0x00)
	return U32(sec, m.MemoryMin)
}

// exportSection: the functions with an export name, then the memory.
func (m *Module) exportSection() []byte {
	var exports []byte
	ne := 0
	for i, f := range m.Funcs {
		if f.Export != "" {
			exports = appendName(exports, f.Export)
			exports = append(exports, 0x00)
			exports = U32(exports, uint32(len(m.Imports)+i))
			ne++
		}
	}
	if m.HasMemory {
		exports = appendName(exports, "memory")
		exports = append(exports, 0x02, 0x00)
		ne++
	}
	return append(U32(nil, uint32(ne)), exports...)
}

func (m *Module) codeSection() []byte {
	code := U32(nil, uint32(len(m.Funcs)))
	for _, f := range m.Funcs {
		var body []byte
		body = U32(body, uint32(len(f.Locals)))
		for _, l := range f.Locals {
			body = append(body, 0x01, l)
		}
		body = append(body, f.Body...)
		body = append(body, OpEnd)
		code = U32(code, uint32(len(body)))
		code = append(code, body...)
	}
	return code
}

// U32 appends v as an unsigned LEB128.
func U32(b []byte, v uint32) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v != 0 {
			b = append(b, c|0x80)
			continue
		}
		return append(b, c)
	}
}

// S64 appends v as a signed LEB128 (the immediate of i32.const and i64.const).
func S64(b []byte, v int64) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

// I32Const returns the instruction i32.const v.
func I32Const(v int32) []byte { return S64([]byte{OpI32Const}, int64(v)) }

// I64Const returns the instruction i64.const v.
func I64Const(v int64) []byte { return S64([]byte{OpI64Const}, v) }

// Ops concatenates instructions.
func Ops(parts ...any) []byte {
	var b []byte
	for _, p := range parts {
		switch p := p.(type) {
		case byte:
			b = append(b, p)
		case int:
			b = U32(b, uint32(p))
		case []byte:
			b = append(b, p...)
		default:
			panic("wasmbin.Ops: unexpected part")
		}
	}
	return b
}

func appendVec(b, items []byte) []byte {
	b = U32(b, uint32(len(items)))
	return append(b, items...)
}

func appendName(b []byte, s string) []byte {
	b = U32(b, uint32(len(s)))
	return append(b, s...)
}

func appendSection(b []byte, id byte, content []byte) []byte {
	b = append(b, id)
	b = U32(b, uint32(len(content)))
	return append(b, content...)
}
