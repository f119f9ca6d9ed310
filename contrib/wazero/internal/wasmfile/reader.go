package wasmfile

import (
	"errors"
	"fmt"
	"math"
	"unicode/utf8"
)

// ErrMalformed is wrapped by every error about bytes that are not a
// well-formed module.
var ErrMalformed = errors.New("malformed WebAssembly module")

// reader reads the binary format from b, checking every bound.
type reader struct {
	b   []byte
	pos int
	// base is the offset of b[0] in the module, for error messages.
	base int
}

func (r *reader) errorf(format string, args ...any) error {
	return fmt.Errorf("%w: at offset %d: %s", ErrMalformed, r.base+r.pos, fmt.Sprintf(format, args...))
}

func (r *reader) done() bool { return r.pos >= len(r.b) }

func (r *reader) byte() (byte, error) {
	if r.pos >= len(r.b) {
		return 0, r.errorf("unexpected end")
	}
	c := r.b[r.pos]
	r.pos++
	return c, nil
}

func (r *reader) bytes(n uint32) ([]byte, error) {
	if uint64(n) > uint64(len(r.b)-r.pos) {
		return nil, r.errorf("%d bytes announced, %d left", n, len(r.b)-r.pos)
	}
	s := r.b[r.pos : r.pos+int(n)]
	r.pos += int(n)
	return s, nil
}

// u32 reads an unsigned LEB128 of at most 32 bits.
func (r *reader) u32() (uint32, error) {
	var v uint32
	for i := 0; i < 5; i++ {
		c, err := r.byte()
		if err != nil {
			return 0, err
		}
		if i == 4 && c&0xf0 != 0 {
			return 0, r.errorf("u32 out of range")
		}
		v |= uint32(c&0x7f) << (7 * i)
		if c&0x80 == 0 {
			return v, nil
		}
	}
	return 0, r.errorf("u32 too long")
}

// sleb reads a signed LEB128 of at most bits bits (32, 33 or 64).
func (r *reader) sleb(bits int) (int64, error) {
	var v int64
	maxBytes := (bits + 6) / 7
	shift := 0
	for i := 0; i < maxBytes; i++ {
		c, err := r.byte()
		if err != nil {
			return 0, err
		}
		if i == maxBytes-1 {
			// The unused bits of the last byte must be the sign's
			// extension.
			used := bits - 7*i // value bits in this byte, sign included
			if used < 7 {
				rest := int8(c<<1) >> (used + 1) // the bits above the used ones, sign-extended
				sign := int8(c<<(8-used)) >> 7
				if c&0x80 != 0 || rest != sign {
					return 0, r.errorf("s%d out of range", bits)
				}
			} else if c&0x80 != 0 {
				return 0, r.errorf("s%d too long", bits)
			}
		}
		v |= int64(c&0x7f) << shift
		shift += 7
		if c&0x80 == 0 {
			if shift < 64 && c&0x40 != 0 {
				v |= -1 << shift
			}
			return v, nil
		}
	}
	return 0, r.errorf("s%d too long", bits)
}

// vecLen reads the length of a vector whose elements take at least min
// bytes each, refusing lengths the remaining bytes cannot hold.
func (r *reader) vecLen(min int) (uint32, error) {
	n, err := r.u32()
	if err != nil {
		return 0, err
	}
	if min > 0 && uint64(n)*uint64(min) > uint64(len(r.b)-r.pos) {
		return 0, r.errorf("vector of %d elements in %d bytes", n, len(r.b)-r.pos)
	}
	return n, nil
}

func (r *reader) name() (string, error) {
	n, err := r.u32()
	if err != nil {
		return "", err
	}
	b, err := r.bytes(n)
	if err != nil {
		return "", err
	}
	if !utf8.Valid(b) {
		return "", r.errorf("name is not UTF-8")
	}
	return string(b), nil
}

// AppendU32 appends v as an unsigned LEB128.
func AppendU32(b []byte, v uint32) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

// AppendS64 appends v as a signed LEB128.
func AppendS64(b []byte, v int64) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

func appendName(b []byte, s string) []byte {
	b = AppendU32(b, uint32(len(s)))
	return append(b, s...)
}

// checkLen refuses a length that the format cannot write.
func checkLen(n int) error {
	if n > math.MaxUint32 {
		return fmt.Errorf("%w: %d bytes do not fit a section", ErrMalformed, n)
	}
	return nil
}
