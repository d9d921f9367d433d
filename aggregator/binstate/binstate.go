// Package binstate reads the little-endian binary state that the
// aggregation code saves in checkpoints (accumulator sums, server
// optimizer moments, privacy accounting). A Decoder remembers its first
// shortfall, so a caller reads every field and checks once, and every
// error it returns wraps the caller's sentinel (for example
// strategy.ErrBadState), so that a corrupt checkpoint is reported as
// such wherever it is detected.
package binstate

import (
	"encoding/binary"
	"fmt"
)

// Decoder reads fields from a byte slice.
type Decoder struct {
	b   []byte
	bad error
	err error
}

// NewDecoder reads b; errors wrap bad.
func NewDecoder(b []byte, bad error) *Decoder { return &Decoder{b: b, bad: bad} }

// Err is the first shortfall, or nil.
func (d *Decoder) Err() error { return d.err }

// Len is the number of bytes not read yet.
func (d *Decoder) Len() int { return len(d.b) }

// Bytes returns the next n bytes (a view), or nil after a shortfall.
func (d *Decoder) Bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b) {
		d.err = fmt.Errorf("%w: truncated", d.bad)
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

// U8 reads one byte.
func (d *Decoder) U8() uint8 {
	if p := d.Bytes(1); p != nil {
		return p[0]
	}
	return 0
}

// U32 reads a little-endian uint32.
func (d *Decoder) U32() uint32 {
	if p := d.Bytes(4); p != nil {
		return binary.LittleEndian.Uint32(p)
	}
	return 0
}

// U64 reads a little-endian uint64.
func (d *Decoder) U64() uint64 {
	if p := d.Bytes(8); p != nil {
		return binary.LittleEndian.Uint64(p)
	}
	return 0
}

// Uvarint reads an unsigned varint.
func (d *Decoder) Uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = fmt.Errorf("%w: bad varint", d.bad)
		return 0
	}
	d.b = d.b[n:]
	return v
}
