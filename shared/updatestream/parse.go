// Package updatestream parses a serialized fdx.v1.Update as its bytes
// arrive, in pieces of any size, and hands the tensor values to a Sink
// without ever holding the whole message: the aggregator's way of
// validating and folding a chunked update chunk by chunk, so that its
// memory per update stays one chunk, not the whole update.
//
// The parser relies on the order in which Go (and every protobuf
// implementation that serializes in field-number order) writes a Tensor:
// name, shape and dtype before data. It decodes float32 and float16 data.
// An int8 tensor's scale (field 5) follows its data, so its values cannot be
// known while they stream: such a tensor, one of another encoding, a tensor
// field repeated after the data, or anything the parser does not follow
// makes Write fail with ErrNotStreamable, and the caller
// falls back to decoding the whole message as before. Fields of the Update
// other than params (job, client id, metrics, timings, is_delta, …) may come
// in any order: they are kept, as raw bytes, and decoded at the end.
package updatestream

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// ErrNotStreamable means the message cannot be parsed as a stream (see the
// package comment); it may still be a valid Update.
var ErrNotStreamable = errors.New("update not streamable")

// Sink receives the tensors of an update in order.
type Sink interface {
	// Tensor announces tensor i (0, 1, …) before its values: its header
	// and the byte length of its data.
	Tensor(i int, name string, shape []int64, dtype fdxv1.DType, dataBytes int) error
	// Values hands the decoded values of tensor i starting at element
	// off. vals is reused once Values returns. Values of a dtype the
	// parser cannot decode are not handed over (Tensor saw the dtype).
	Values(i, off int, vals []float32) error
}

// Field numbers of fdx.v1.Update and fdx.v1.Tensor the parser follows.
const (
	updateParams = 5
	tensorData   = 4
	tensorScale  = 5
)

// DefaultMaxHeader bounds the bytes the parser keeps: the Update's fields
// other than params, and one tensor's header. Names, shapes, metrics and
// timings are tiny; a message needing more is decoded whole instead.
const DefaultMaxHeader = 1 << 20

// batchValues is how many values one Values call hands over at most: 64 KiB
// of float32, so the parser's own buffer stays small whatever the chunk size.
const batchValues = 16 << 10

type state int

const (
	stHead state = iota // reading a field's tag and length or value
	stCopy              // copying a length-delimited field into env or hdr
	stData              // streaming a tensor's data
)

// Parser parses one serialized Update. Not safe for concurrent use.
type Parser struct {
	sink      Sink
	maxHeader int

	st   state
	head []byte // the field header being read
	// inTensor: inside a params entry, with trem bytes of it left.
	inTensor bool
	trem     int
	// copying: crem bytes to copy into *cdst.
	crem int
	cdst *[]byte
	// env holds the Update's fields other than params; hdr the current
	// tensor's fields other than data.
	env, hdr []byte
	// tensor is the index of the current tensor; dataSeen says its data
	// began; elem is its element size (0: not decoded); off the next
	// element; drem the data bytes left.
	tensor   int
	dataSeen bool
	elem     int
	dtype    fdxv1.DType
	off      int
	drem     int
	carry    []byte
	vals     []float32
	err      error
	total    int64
}

// New returns a parser that hands tensors to sink and keeps at most
// maxHeader bytes of non-tensor fields (0: DefaultMaxHeader).
func New(sink Sink, maxHeader int) *Parser {
	if maxHeader <= 0 {
		maxHeader = DefaultMaxHeader
	}
	return &Parser{sink: sink, maxHeader: maxHeader}
}

// Held is the number of bytes the parser holds: what it keeps of the
// message besides the values it handed on.
func (p *Parser) Held() int {
	return cap(p.head) + cap(p.env) + cap(p.hdr) + cap(p.carry) + 4*cap(p.vals)
}

// Bytes is the number of bytes written so far.
func (p *Parser) Bytes() int64 { return p.total }

// Write parses the next piece of the message. After an error, every
// further call returns it.
func (p *Parser) Write(b []byte) error {
	if p.err != nil {
		return p.err
	}
	p.total += int64(len(b))
	if err := p.write(b); err != nil {
		p.err = err
		p.vals, p.env, p.hdr = nil, nil, nil
	}
	return p.err
}

func (p *Parser) write(b []byte) error {
	for len(b) > 0 {
		switch p.st {
		case stData:
			n := min(len(b), p.drem)
			if err := p.data(b[:n]); err != nil {
				return err
			}
			b = b[n:]
			p.drem -= n
			p.trem -= n
			if p.drem == 0 {
				p.carry = p.carry[:0]
				p.st = stHead
				if err := p.tensorMaybeEnds(); err != nil {
					return err
				}
			}
		case stCopy:
			n := min(len(b), p.crem)
			*p.cdst = append(*p.cdst, b[:n]...)
			b = b[n:]
			p.crem -= n
			if p.inTensor {
				p.trem -= n
			}
			if p.crem == 0 {
				p.st = stHead
				if p.inTensor {
					if err := p.tensorMaybeEnds(); err != nil {
						return err
					}
				}
			}
		default:
			p.head = append(p.head, b[0])
			b = b[1:]
			if err := p.field(); err != nil {
				return err
			}
		}
	}
	return nil
}

// more reports whether a failed parse of the header, with code n, only
// needs more bytes.
func (p *Parser) more(n int) error {
	if errors.Is(protowire.ParseError(n), io.ErrUnexpectedEOF) && len(p.head) < 2*binary.MaxVarintLen64 {
		return nil
	}
	return fmt.Errorf("field header: %w", protowire.ParseError(n))
}

// field tries to read a complete field header from p.head and acts on it.
func (p *Parser) field() error {
	h := p.head
	num, typ, n := protowire.ConsumeTag(h)
	if n < 0 {
		return p.more(n)
	}
	var blen uint64
	switch typ {
	case protowire.VarintType:
		_, m := protowire.ConsumeVarint(h[n:])
		if m < 0 {
			return p.more(m)
		}
	case protowire.Fixed32Type:
		if len(h) < n+4 {
			return nil
		}
	case protowire.Fixed64Type:
		if len(h) < n+8 {
			return nil
		}
	case protowire.BytesType:
		l, m := protowire.ConsumeVarint(h[n:])
		if m < 0 {
			return p.more(m)
		}
		blen = l
	default:
		return fmt.Errorf("%w: wire type %d", ErrNotStreamable, typ)
	}
	p.head = p.head[:0]
	if blen > math.MaxInt32 {
		return fmt.Errorf("field %d of %d bytes", num, blen)
	}
	if p.inTensor {
		return p.tensorField(h, num, typ, int(blen))
	}
	if num == updateParams && typ == protowire.BytesType {
		p.inTensor, p.trem = true, int(blen)
		p.hdr, p.dataSeen, p.elem, p.off = p.hdr[:0], false, 0, 0
		return p.tensorMaybeEnds()
	}
	return p.keep(&p.env, h, typ, int(blen))
}

// keep appends a field, header h and its blen payload bytes, to *dst.
func (p *Parser) keep(dst *[]byte, h []byte, typ protowire.Type, blen int) error {
	if len(p.env)+len(p.hdr)+len(h)+blen > p.maxHeader {
		return fmt.Errorf("%w: over %d bytes of fields besides tensor data", ErrNotStreamable, p.maxHeader)
	}
	*dst = append(*dst, h...)
	if typ == protowire.BytesType && blen > 0 {
		p.st, p.crem, p.cdst = stCopy, blen, dst
	}
	return nil
}

// tensorField acts on a field of the current tensor, whose header h is read.
func (p *Parser) tensorField(h []byte, num protowire.Number, typ protowire.Type, blen int) error {
	p.trem -= len(h)
	if p.trem < 0 || (typ == protowire.BytesType && blen > p.trem) {
		return errors.New("tensor field overruns its tensor")
	}
	switch {
	case num == tensorData && typ == protowire.BytesType:
		if p.dataSeen {
			return fmt.Errorf("%w: tensor %d has its data twice", ErrNotStreamable, p.tensor)
		}
		if err := p.announce(blen); err != nil {
			return err
		}
		if blen > 0 {
			p.st, p.drem = stData, blen
			return nil
		}
	case p.dataSeen && num == tensorScale && typ == protowire.Fixed32Type && p.dtype != fdxv1.DType_DTYPE_INT8:
		// A float tensor's values do not depend on a scale.
	case p.dataSeen:
		return fmt.Errorf("%w: tensor %d has field %d after its data", ErrNotStreamable, p.tensor, num)
	default:
		if err := p.keep(&p.hdr, h, typ, blen); err != nil {
			return err
		}
		if p.st == stCopy {
			return nil
		}
	}
	return p.tensorMaybeEnds()
}

// announce decodes the current tensor's header and tells the sink.
func (p *Parser) announce(dataBytes int) error {
	t := &fdxv1.Tensor{}
	if err := proto.Unmarshal(p.hdr, t); err != nil {
		return fmt.Errorf("tensor %d header: %w", p.tensor, err)
	}
	p.dataSeen, p.dtype, p.off = true, t.GetDtype(), 0
	switch t.GetDtype() {
	case fdxv1.DType_DTYPE_FLOAT32:
		p.elem = 4
	case fdxv1.DType_DTYPE_FLOAT16:
		p.elem = 2
	default:
		// int8's scale comes after its data; a sparse or unknown
		// encoding is left to the whole message's decoder, which knows
		// it (or refuses it).
		return fmt.Errorf("%w: tensor %d in %v", ErrNotStreamable, p.tensor, t.GetDtype())
	}
	return p.sink.Tensor(p.tensor, t.GetName(), t.GetShape(), t.GetDtype(), dataBytes)
}

// tensorMaybeEnds closes the current tensor once its bytes are read.
func (p *Parser) tensorMaybeEnds() error {
	if p.trem > 0 || p.st != stHead {
		return nil
	}
	if !p.dataSeen {
		if err := p.announce(0); err != nil {
			return err
		}
	}
	p.inTensor = false
	p.tensor++
	return nil
}

// data decodes tensor data bytes, with what the previous piece left of an
// element.
func (p *Parser) data(b []byte) error {
	if p.elem == 0 {
		return nil
	}
	if len(p.carry) > 0 {
		k := min(p.elem-len(p.carry), len(b))
		p.carry = append(p.carry, b[:k]...)
		b = b[k:]
		if len(p.carry) < p.elem {
			return nil
		}
		if err := p.emit(p.carry); err != nil {
			return err
		}
		p.carry = p.carry[:0]
	}
	whole := len(b) - len(b)%p.elem
	for len(b[:whole]) > 0 {
		k := min(whole, batchValues*p.elem)
		if err := p.emit(b[:k]); err != nil {
			return err
		}
		b, whole = b[k:], whole-k
	}
	p.carry = append(p.carry, b...)
	return nil
}

// emit decodes whole elements and hands them to the sink.
func (p *Parser) emit(b []byte) error {
	n := len(b) / p.elem
	if cap(p.vals) < n {
		p.vals = make([]float32, min(batchValues, max(n, 1024)))
	}
	vals, err := tensor.DecodeValues(p.vals[:n], b, p.dtype)
	if err != nil {
		return err
	}
	if err := p.sink.Values(p.tensor, p.off, vals); err != nil {
		return err
	}
	p.off += n
	return nil
}

// Close ends the message and returns its fields other than params (Params
// is nil; the sink saw the tensors). It fails if the message is truncated.
func (p *Parser) Close() (*fdxv1.Update, error) {
	if p.err != nil {
		return nil, p.err
	}
	if p.inTensor || p.st != stHead || len(p.head) > 0 {
		return nil, errors.New("update truncated")
	}
	u := &fdxv1.Update{}
	if err := proto.Unmarshal(p.env, u); err != nil {
		return nil, err
	}
	return u, nil
}

// Tensors is the number of tensors seen.
func (p *Parser) Tensors() int { return p.tensor }
