package wasmfile

import (
	"errors"
	"math"
	"testing"
)

// Signed LEB128s: every value round-trips; encodings too long or whose
// unused bits are not the sign's extension are refused.
func TestSLEB(t *testing.T) {
	for _, bits := range []int{32, 33, 64} {
		lo, hi := int64(math.MinInt32), int64(math.MaxInt32)
		switch bits {
		case 33:
			lo, hi = -1<<32, 1<<32-1
		case 64:
			lo, hi = math.MinInt64, math.MaxInt64
		}
		for _, v := range []int64{0, 1, -1, 63, 64, -64, -65, lo, hi, lo + 1, hi - 1} {
			b := AppendS64(nil, v)
			r := &reader{b: b}
			got, err := r.sleb(bits)
			if err != nil || got != v || !r.done() {
				t.Errorf("s%d %d (% x): got %d, %v", bits, v, b, got, err)
			}
		}
		if bits < 64 {
			for _, v := range []int64{lo - 1, hi + 1} {
				if _, err := (&reader{b: AppendS64(nil, v)}).sleb(bits); !errors.Is(err, ErrMalformed) {
					t.Errorf("s%d %d out of range accepted", bits, v)
				}
			}
		}
	}
	// Padded encodings within the byte limit are fine; past it they are not.
	if v, err := (&reader{b: []byte{0xff, 0xff, 0xff, 0xff, 0x7f}}).sleb(32); err != nil || v != -1 {
		t.Errorf("padded -1: %d, %v", v, err)
	}
	if _, err := (&reader{b: []byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x00}}).sleb(32); err == nil {
		t.Error("a 6-byte s32 was accepted")
	}
}

func TestU32(t *testing.T) {
	for _, v := range []uint32{0, 127, 128, 1 << 21, math.MaxUint32} {
		r := &reader{b: AppendU32(nil, v)}
		if got, err := r.u32(); err != nil || got != v {
			t.Errorf("%d: got %d, %v", v, got, err)
		}
	}
	for _, b := range [][]byte{{0xff, 0xff, 0xff, 0xff, 0x1f}, {0x80, 0x80, 0x80, 0x80, 0x80, 0x00}, {0x80}} {
		if _, err := (&reader{b: b}).u32(); err == nil {
			t.Errorf("% x accepted", b)
		}
	}
}

// Every section and instruction can be cut anywhere: Parse returns an
// error, never panics.
func TestParseTruncated(t *testing.T) {
	m := []byte("\x00asm\x01\x00\x00\x00" +
		"\x01\x05\x01\x60\x00\x01\x7f" + // type () -> i32
		"\x03\x02\x01\x00" + // one function
		"\x0a\x09\x01\x07\x00\x41\x2a\xfd\x0f\x1a\x0b") // i32.const 42, i8x16.splat, drop, end (not type-checked)
	if _, err := Parse(m); err != nil {
		t.Fatal(err)
	}
	for i := range len(m) - 1 {
		if _, err := Parse(m[:i]); i > 8 && i != 15 && err == nil { // 8, 15: between sections
			t.Errorf("cut at %d: no error", i)
		}
	}
}
