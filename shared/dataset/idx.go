package dataset

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// Magic numbers of the IDX files that make up MNIST
// (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type byte (0x08 =
// unsigned byte), and the number of dimensions.
const (
	idxMagicLabels = 0x0000_0801 // 2049: ubyte, 1 dimension (count).
	idxMagicImages = 0x0000_0803 // 2051: ubyte, 3 dimensions (count, rows, cols).
)

// readIDX reads an unsigned-byte IDX file whose magic number must be magic and
// whose dimensions must equal want, and returns its data.
//
// The dimensions are checked against the expected ones before any data is
// allocated, so a corrupt header claiming billions of elements costs nothing.
// The reader must end exactly where the data does: trailing bytes mean the
// file is not what we think it is, and for a gzip stream reading to EOF is also
// what makes the gzip reader verify its checksum.
func readIDX(r io.Reader, magic uint32, want []int) ([]byte, error) {
	ndim := int(magic & 0xff)
	if len(want) != ndim {
		return nil, fmt.Errorf("idx: magic %d implies %d dimensions, caller expects %d", magic, ndim, len(want))
	}
	// The magic number is checked before the dimensions are read, so that a
	// wrong file (labels for images, say) is reported as such even when it is
	// shorter than the header we expected.
	var magicBytes [4]byte
	if _, err := io.ReadFull(r, magicBytes[:]); err != nil {
		return nil, fmt.Errorf("idx: reading magic number: %w", unexpectedEOF(err))
	}
	if got := binary.BigEndian.Uint32(magicBytes[:]); got != magic {
		return nil, fmt.Errorf("idx: bad magic number %d (%#08x), want %d (%#08x)", got, got, magic, magic)
	}
	header := make([]byte, 4*ndim)
	if _, err := io.ReadFull(r, header); err != nil {
		return nil, fmt.Errorf("idx: reading %d dimensions: %w", ndim, unexpectedEOF(err))
	}
	dims := make([]int, ndim)
	for i := range dims {
		// Dimensions are uint32 and only compared against want, which the
		// caller sized to fit in memory, so neither the int conversion nor
		// the product below can overflow once they match.
		dims[i] = int(binary.BigEndian.Uint32(header[4*i:]))
	}
	if !slices.Equal(dims, want) {
		return nil, fmt.Errorf("idx: dimensions %v, want %v", dims, want)
	}
	size := 1
	for _, d := range dims {
		size *= d
	}
	data := make([]byte, size)
	if n, err := io.ReadFull(r, data); err != nil {
		return nil, fmt.Errorf("idx: reading data: got %d of %d bytes: %w", n, size, unexpectedEOF(err))
	}
	// Reading on to EOF (at most one byte is kept) detects trailing data.
	rest, err := io.ReadAll(io.LimitReader(r, 1))
	if err != nil {
		return nil, fmt.Errorf("idx: reading end of file: %w", err)
	}
	if len(rest) > 0 {
		return nil, fmt.Errorf("idx: trailing data after %d data bytes", size)
	}
	return data, nil
}

// unexpectedEOF turns a clean io.EOF, which io.ReadFull returns when it read
// nothing at all, into io.ErrUnexpectedEOF: inside an IDX file any EOF before
// the data ends is a truncation.
func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
