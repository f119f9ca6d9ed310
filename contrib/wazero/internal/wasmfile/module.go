// Package wasmfile reads and writes the WebAssembly binary format
// (version 1, with the WebAssembly 2.0 features wazero enables by default:
// multi-value, bulk memory, reference types, sign extension, non-trapping
// float-to-int conversions and 128-bit SIMD), for reslimitwazero.Instrument.
//
// Parse checks the structure of every section and every instruction
// (lengths, LEB128 encodings, opcodes and their immediates, section order)
// but not types: wazero validates the module it compiles. Encode writes the
// module back; sections left alone are written byte for byte as read.
package wasmfile

import (
	"fmt"
)

// Section ids.
const (
	SecCustom    byte = 0
	SecType      byte = 1
	SecImport    byte = 2
	SecFunction  byte = 3
	SecTable     byte = 4
	SecMemory    byte = 5
	SecGlobal    byte = 6
	SecExport    byte = 7
	SecStart     byte = 8
	SecElement   byte = 9
	SecCode      byte = 10
	SecData      byte = 11
	SecDataCount byte = 12
)

// order is the rank of each known section in a module.
var order = [...]int{
	SecType: 1, SecImport: 2, SecFunction: 3, SecTable: 4, SecMemory: 5, SecGlobal: 6,
	SecExport: 7, SecStart: 8, SecElement: 9, SecDataCount: 10, SecCode: 11, SecData: 12,
}

// Value types.
const (
	I32       byte = 0x7f
	I64       byte = 0x7e
	F32       byte = 0x7d
	F64       byte = 0x7c
	V128      byte = 0x7b
	FuncRef   byte = 0x70
	ExternRef byte = 0x6f
)

func isValType(t byte) bool {
	switch t {
	case I32, I64, F32, F64, V128, FuncRef, ExternRef:
		return true
	}
	return false
}

func isRefType(t byte) bool { return t == FuncRef || t == ExternRef }

// Import kinds (and export kinds).
const (
	KindFunc   byte = 0
	KindTable  byte = 1
	KindMemory byte = 2
	KindGlobal byte = 3
)

// FuncType is a function type.
type FuncType struct{ Params, Results []byte }

// Import is an import: Desc is its description after the kind byte, as
// read; Type is the type index of a function import.
type Import struct {
	Module, Name string
	Kind         byte
	Type         uint32
	Desc         []byte
}

// Global is a defined global: its type (value type, mutability) and the
// constant expression that initialises it (with its end).
type Global struct {
	Type, Mut byte
	Init      []byte
}

// Export is an export.
type Export struct {
	Name  string
	Kind  byte
	Index uint32
}

// Elem is an element segment. Flags is its encoding (0-7); Table, Offset
// (a constant expression), ElemType (the element kind byte 0x00 or a
// reference type) are present as Flags says; Funcs holds the function
// indices of flags 0-3, Exprs the expressions of flags 4-7.
type Elem struct {
	Flags    uint32
	Table    uint32
	Offset   []byte
	ElemType byte
	Funcs    []uint32
	Exprs    [][]byte
}

// Code is a function body: its local declarations and its instructions
// (with the final end).
type Code struct {
	Locals []Local
	Body   []byte
}

// Local is a run of N locals of type Type.
type Local struct {
	N    uint32
	Type byte
}

// Section is a section as read: its id and content (for a custom
// section, the name included).
type Section struct {
	ID      byte
	Content []byte
}

// Module is a parsed module. Sections lists every section in order;
// the decoded fields are those of the known sections.
type Module struct {
	Sections []Section

	Types   []FuncType
	Imports []Import
	Funcs   []uint32 // type index of each defined function
	Globals []Global
	Exports []Export
	Start   *uint32
	Elems   []Elem
	Codes   []Code

	// NumFuncImports and NumGlobalImports count the imports of each kind.
	NumFuncImports, NumGlobalImports uint32
}

// Parse parses a module, checking its structure.
func Parse(b []byte) (*Module, error) {
	if len(b) < 8 || string(b[:4]) != "\x00asm" {
		return nil, fmt.Errorf("%w: no WebAssembly magic number", ErrMalformed)
	}
	if string(b[4:8]) != "\x01\x00\x00\x00" {
		return nil, fmt.Errorf("%w: version %x is not 1", ErrMalformed, b[4:8])
	}
	m := &Module{}
	r := &reader{b: b, pos: 8}
	last := 0
	for !r.done() {
		id, err := r.byte()
		if err != nil {
			return nil, err
		}
		size, err := r.u32()
		if err != nil {
			return nil, err
		}
		start := r.pos
		content, err := r.bytes(size)
		if err != nil {
			return nil, err
		}
		sr := &reader{b: content, base: start}
		if id != SecCustom {
			if int(id) >= len(order) {
				return nil, fmt.Errorf("%w: at offset %d: unknown section %d", ErrMalformed, start, id)
			}
			if order[id] <= last {
				return nil, fmt.Errorf("%w: at offset %d: section %d out of order or repeated", ErrMalformed, start, id)
			}
			last = order[id]
		}
		if err := m.parseSection(id, sr); err != nil {
			return nil, err
		}
		if !sr.done() {
			return nil, sr.errorf("%d bytes left at the end of section %d", len(sr.b)-sr.pos, id)
		}
		m.Sections = append(m.Sections, Section{ID: id, Content: content})
	}
	if len(m.Funcs) != len(m.Codes) {
		return nil, fmt.Errorf("%w: %d functions declared, %d bodies", ErrMalformed, len(m.Funcs), len(m.Codes))
	}
	return m, nil
}

// parseSection parses the content of section id (a known one) into m.
func (m *Module) parseSection(id byte, r *reader) error {
	return sectionParsers[id](m, r)
}

// sectionParsers parses the content of each known section, by id.
var sectionParsers = [...]func(m *Module, r *reader) error{
	SecCustom:    (*Module).parseCustom,
	SecType:      (*Module).parseTypes,
	SecImport:    (*Module).parseImports,
	SecFunction:  (*Module).parseFunctions,
	SecTable:     (*Module).parseTables,
	SecMemory:    (*Module).parseMemories,
	SecGlobal:    (*Module).parseGlobals,
	SecExport:    (*Module).parseExports,
	SecStart:     (*Module).parseStart,
	SecElement:   (*Module).parseElems,
	SecDataCount: (*Module).parseDataCount,
	SecCode:      (*Module).parseCodes,
	SecData:      (*Module).parseData,
}

// vec reads a vector of items, each read by item and taking at least min
// bytes.
func vec[T any](r *reader, min int, item func(*reader) (T, error)) ([]T, error) {
	n, err := r.vecLen(min)
	if err != nil {
		return nil, err
	}
	items := make([]T, 0, n)
	for range n {
		x, err := item(r)
		if err != nil {
			return nil, err
		}
		items = append(items, x)
	}
	return items, nil
}

// each reads a vector of items that are checked, not kept: each is read
// by item and takes at least min bytes.
func each(r *reader, min int, item func(*reader) error) error {
	n, err := r.vecLen(min)
	if err != nil {
		return err
	}
	for range n {
		if err := item(r); err != nil {
			return err
		}
	}
	return nil
}

// parseCustom checks a custom section's name and skips its content.
func (m *Module) parseCustom(r *reader) error {
	_, err := r.name()
	r.pos = len(r.b)
	return err
}

func (m *Module) parseTypes(r *reader) (err error) {
	m.Types, err = vec(r, 3, funcType)
	return err
}

func funcType(r *reader) (FuncType, error) {
	var ft FuncType
	c, err := r.byte()
	if err != nil {
		return ft, err
	}
	if c != 0x60 {
		return ft, r.errorf("type form 0x%02x is not a function type", c)
	}
	if ft.Params, err = valTypes(r); err != nil {
		return ft, err
	}
	ft.Results, err = valTypes(r)
	return ft, err
}

func (m *Module) parseImports(r *reader) (err error) {
	m.Imports, err = vec(r, 4, m.importEntry)
	return err
}

// importEntry reads an import and counts it among m's imports of its
// kind.
func (m *Module) importEntry(r *reader) (Import, error) {
	var im Import
	var err error
	if im.Module, err = r.name(); err != nil {
		return im, err
	}
	if im.Name, err = r.name(); err != nil {
		return im, err
	}
	if im.Kind, err = r.byte(); err != nil {
		return im, err
	}
	start := r.pos
	switch im.Kind {
	case KindFunc:
		im.Type, err = r.u32()
		m.NumFuncImports++
	case KindTable:
		err = tableType(r)
	case KindMemory:
		err = memType(r)
	case KindGlobal:
		err = globalType(r, nil, nil)
		m.NumGlobalImports++
	default:
		err = r.errorf("unknown import kind 0x%02x", im.Kind)
	}
	if err != nil {
		return im, err
	}
	im.Desc = r.b[start:r.pos]
	return im, nil
}

func (m *Module) parseFunctions(r *reader) (err error) {
	m.Funcs, err = vec(r, 1, (*reader).u32)
	return err
}

func (m *Module) parseTables(r *reader) error { return each(r, 3, tableType) }

func (m *Module) parseMemories(r *reader) error { return each(r, 2, memType) }

func (m *Module) parseGlobals(r *reader) (err error) {
	m.Globals, err = vec(r, 3, global)
	return err
}

func global(r *reader) (Global, error) {
	var g Global
	if err := globalType(r, &g.Type, &g.Mut); err != nil {
		return g, err
	}
	var err error
	g.Init, err = constExpr(r)
	return g, err
}

func (m *Module) parseExports(r *reader) (err error) {
	m.Exports, err = vec(r, 3, export)
	return err
}

func export(r *reader) (Export, error) {
	var e Export
	var err error
	if e.Name, err = r.name(); err != nil {
		return e, err
	}
	if e.Kind, err = r.byte(); err != nil {
		return e, err
	}
	if e.Kind > KindGlobal {
		return e, r.errorf("unknown export kind 0x%02x", e.Kind)
	}
	e.Index, err = r.u32()
	return e, err
}

func (m *Module) parseStart(r *reader) error {
	s, err := r.u32()
	if err != nil {
		return err
	}
	m.Start = &s
	return nil
}

func (m *Module) parseElems(r *reader) (err error) {
	m.Elems, err = vec(r, 2, elem)
	return err
}

func (m *Module) parseDataCount(r *reader) error {
	_, err := r.u32()
	return err
}

func (m *Module) parseCodes(r *reader) (err error) {
	m.Codes, err = vec(r, 2, codeEntry)
	return err
}

// codeEntry reads a function body with its size.
func codeEntry(r *reader) (Code, error) {
	size, err := r.u32()
	if err != nil {
		return Code{}, err
	}
	start := r.pos
	body, err := r.bytes(size)
	if err != nil {
		return Code{}, err
	}
	return code(&reader{b: body, base: r.base + start})
}

func (m *Module) parseData(r *reader) error { return each(r, 2, dataSegment) }

// dataSegment checks a data segment: its flags, its memory and offset when
// active, and its bytes.
func dataSegment(r *reader) error {
	flags, err := r.u32()
	if err != nil {
		return err
	}
	switch flags {
	case 0:
		_, err = constExpr(r)
	case 1:
	case 2:
		if _, err = r.u32(); err == nil {
			_, err = constExpr(r)
		}
	default:
		err = r.errorf("unknown data segment flags %d", flags)
	}
	if err != nil {
		return err
	}
	size, err := r.u32()
	if err != nil {
		return err
	}
	_, err = r.bytes(size)
	return err
}

func valTypes(r *reader) ([]byte, error) {
	n, err := r.vecLen(1)
	if err != nil {
		return nil, err
	}
	ts, err := r.bytes(n)
	if err != nil {
		return nil, err
	}
	for _, t := range ts {
		if !isValType(t) {
			return nil, r.errorf("unknown value type 0x%02x", t)
		}
	}
	return ts, nil
}

func limits(r *reader, memory bool) error {
	flag, err := r.byte()
	if err != nil {
		return err
	}
	switch {
	case flag == 0:
		_, err = r.u32()
		return err
	case flag == 1:
		if _, err = r.u32(); err != nil {
			return err
		}
		_, err = r.u32()
		return err
	case memory && flag == 3: // shared memory (threads): left to wazero
		if _, err = r.u32(); err != nil {
			return err
		}
		_, err = r.u32()
		return err
	}
	return r.errorf("unknown limits flag 0x%02x", flag)
}

// memType checks a memory's limits.
func memType(r *reader) error { return limits(r, true) }

func tableType(r *reader) error {
	t, err := r.byte()
	if err != nil {
		return err
	}
	if !isRefType(t) {
		return r.errorf("table of 0x%02x is not a reference type", t)
	}
	return limits(r, false)
}

func globalType(r *reader, typ, mut *byte) error {
	t, err := r.byte()
	if err != nil {
		return err
	}
	if !isValType(t) {
		return r.errorf("unknown value type 0x%02x", t)
	}
	mu, err := r.byte()
	if err != nil {
		return err
	}
	if mu > 1 {
		return r.errorf("unknown mutability 0x%02x", mu)
	}
	if typ != nil {
		*typ, *mut = t, mu
	}
	return nil
}

// constExpr reads a constant expression up to its end and returns its
// bytes, end included.
func constExpr(r *reader) ([]byte, error) {
	start := r.pos
	for {
		in, err := Decode(r.b, r.pos, r.base)
		if err != nil {
			return nil, err
		}
		r.pos = in.End
		if in.Op == OpEnd {
			return r.b[start:r.pos], nil
		}
	}
}

func elem(r *reader) (Elem, error) {
	var e Elem
	var err error
	if e.Flags, err = r.u32(); err != nil {
		return e, err
	}
	if e.Flags > 7 {
		return e, r.errorf("unknown element segment flags %d", e.Flags)
	}
	active := e.Flags&1 == 0
	if active && e.Flags&2 != 0 {
		if e.Table, err = r.u32(); err != nil {
			return e, err
		}
	}
	if active {
		if e.Offset, err = constExpr(r); err != nil {
			return e, err
		}
	}
	if e.Flags&3 != 0 { // an element kind or reference type follows
		if e.ElemType, err = r.byte(); err != nil {
			return e, err
		}
		if e.Flags&4 == 0 && e.ElemType != 0 {
			return e, r.errorf("unknown element kind 0x%02x", e.ElemType)
		}
		if e.Flags&4 != 0 && !isRefType(e.ElemType) {
			return e, r.errorf("element type 0x%02x is not a reference type", e.ElemType)
		}
	}
	n, err := r.vecLen(1)
	if err != nil {
		return e, err
	}
	for range n {
		if e.Flags&4 == 0 {
			f, err := r.u32()
			if err != nil {
				return e, err
			}
			e.Funcs = append(e.Funcs, f)
		} else {
			x, err := constExpr(r)
			if err != nil {
				return e, err
			}
			e.Exprs = append(e.Exprs, x)
		}
	}
	return e, nil
}

func code(r *reader) (Code, error) {
	var c Code
	n, err := r.vecLen(2)
	if err != nil {
		return c, err
	}
	var total uint64
	for range n {
		var l Local
		if l.N, err = r.u32(); err != nil {
			return c, err
		}
		if l.Type, err = r.byte(); err != nil {
			return c, err
		}
		if !isValType(l.Type) {
			return c, r.errorf("unknown value type 0x%02x", l.Type)
		}
		total += uint64(l.N)
		if total > 1<<31 {
			return c, r.errorf("too many locals")
		}
		c.Locals = append(c.Locals, l)
	}
	c.Body = r.b[r.pos:]
	// The body: instructions, its blocks nested, up to the end that
	// closes the function, which must be its last byte.
	depth := 0
	for pos := r.pos; ; {
		in, err := Decode(r.b, pos, r.base)
		if err != nil {
			return c, err
		}
		pos = in.End
		switch in.Op {
		case OpBlock, OpLoop, OpIf:
			depth++
		case OpEnd:
			if depth == 0 {
				if pos != len(r.b) {
					return c, r.errorf("%d bytes after the function's end", len(r.b)-pos)
				}
				r.pos = pos
				return c, nil
			}
			depth--
		}
	}
}
