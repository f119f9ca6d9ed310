package wasmfile

import "slices"

// Encode writes a module made of sections, in the order given.
func Encode(sections []Section) ([]byte, error) {
	n := 8
	for _, s := range sections {
		if err := checkLen(len(s.Content)); err != nil {
			return nil, err
		}
		n += 6 + len(s.Content)
	}
	out := make([]byte, 0, n)
	out = append(out, "\x00asm\x01\x00\x00\x00"...)
	for _, s := range sections {
		out = append(out, s.ID)
		out = AppendU32(out, uint32(len(s.Content)))
		out = append(out, s.Content...)
	}
	return out, nil
}

// Put returns sections with s in place of the known section of its id, or
// inserted where the order of sections puts it.
func Put(sections []Section, s Section) []Section {
	for i, t := range sections {
		if t.ID == s.ID {
			sections[i] = s
			return sections
		}
	}
	// After the last known section that comes before it (custom sections
	// placed after that one stay after it).
	at := 0
	for i, t := range sections {
		if t.ID != SecCustom && order[t.ID] < order[s.ID] {
			at = i + 1
		}
	}
	return slices.Insert(sections, at, s)
}

// TypeSection encodes a type section.
func TypeSection(types []FuncType) Section {
	b := AppendU32(nil, uint32(len(types)))
	for _, t := range types {
		b = append(b, 0x60)
		b = AppendU32(b, uint32(len(t.Params)))
		b = append(b, t.Params...)
		b = AppendU32(b, uint32(len(t.Results)))
		b = append(b, t.Results...)
	}
	return Section{ID: SecType, Content: b}
}

// ImportSection encodes an import section.
func ImportSection(imports []Import) Section {
	b := AppendU32(nil, uint32(len(imports)))
	for _, im := range imports {
		b = appendName(b, im.Module)
		b = appendName(b, im.Name)
		b = append(b, im.Kind)
		b = append(b, im.Desc...)
	}
	return Section{ID: SecImport, Content: b}
}

// GlobalSection encodes a global section.
func GlobalSection(globals []Global) Section {
	b := AppendU32(nil, uint32(len(globals)))
	for _, g := range globals {
		b = append(b, g.Type, g.Mut)
		b = append(b, g.Init...)
	}
	return Section{ID: SecGlobal, Content: b}
}

// ExportSection encodes an export section.
func ExportSection(exports []Export) Section {
	b := AppendU32(nil, uint32(len(exports)))
	for _, e := range exports {
		b = appendName(b, e.Name)
		b = append(b, e.Kind)
		b = AppendU32(b, e.Index)
	}
	return Section{ID: SecExport, Content: b}
}

// StartSection encodes a start section.
func StartSection(f uint32) Section {
	return Section{ID: SecStart, Content: AppendU32(nil, f)}
}

// ElementSection encodes an element section.
func ElementSection(elems []Elem) Section {
	b := AppendU32(nil, uint32(len(elems)))
	for _, e := range elems {
		b = AppendU32(b, e.Flags)
		active := e.Flags&1 == 0
		if active && e.Flags&2 != 0 {
			b = AppendU32(b, e.Table)
		}
		if active {
			b = append(b, e.Offset...)
		}
		if e.Flags&3 != 0 {
			b = append(b, e.ElemType)
		}
		if e.Flags&4 == 0 {
			b = AppendU32(b, uint32(len(e.Funcs)))
			for _, f := range e.Funcs {
				b = AppendU32(b, f)
			}
		} else {
			b = AppendU32(b, uint32(len(e.Exprs)))
			for _, x := range e.Exprs {
				b = append(b, x...)
			}
		}
	}
	return Section{ID: SecElement, Content: b}
}

// CodeSection encodes a code section.
func CodeSection(codes []Code) (Section, error) {
	b := AppendU32(nil, uint32(len(codes)))
	var fn []byte
	for _, c := range codes {
		fn = AppendU32(fn[:0], uint32(len(c.Locals)))
		for _, l := range c.Locals {
			fn = AppendU32(fn, l.N)
			fn = append(fn, l.Type)
		}
		fn = append(fn, c.Body...)
		if err := checkLen(len(fn)); err != nil {
			return Section{}, err
		}
		b = AppendU32(b, uint32(len(fn)))
		b = append(b, fn...)
	}
	return Section{ID: SecCode, Content: b}, nil
}

// FunctionSection encodes a function section: the type index of each
// function defined.
func FunctionSection(funcs []uint32) Section {
	b := AppendU32(nil, uint32(len(funcs)))
	for _, t := range funcs {
		b = AppendU32(b, t)
	}
	return Section{ID: SecFunction, Content: b}
}
