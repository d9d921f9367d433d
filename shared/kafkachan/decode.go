package kafkachan

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
)

// Field numbers of the bytes unmarshalModel aliases (proto/fdx/v1/fdx.proto).
const (
	fieldModelParams protowire.Number = 3 // GlobalModel.params
	fieldTensorData  protowire.Number = 4 // Tensor.data
)

// unmarshalModel decodes a reassembled chunked model. It is proto.Unmarshal
// except that the tensors' data alias b instead of being copied: b is the
// whole that fetchSpread allocated for this model alone, and one more copy
// of a 100 MB model's tensors, into memory the process touches for the
// first time, cost about a tenth of a new client's fetch. Every other field
// goes through proto.Unmarshal, so the model decodes as it would there.
func unmarshalModel(b []byte) (*fdxv1.GlobalModel, error) {
	m := &fdxv1.GlobalModel{}
	var rest []byte
	for in := b; len(in) > 0; {
		num, typ, n := protowire.ConsumeTag(in)
		if n < 0 {
			return nil, fmt.Errorf("model field: %w", protowire.ParseError(n))
		}
		if num == fieldModelParams && typ == protowire.BytesType {
			v, k := protowire.ConsumeBytes(in[n:])
			if k < 0 {
				return nil, fmt.Errorf("model tensor %d: %w", len(m.Params), protowire.ParseError(k))
			}
			t, err := unmarshalTensor(v)
			if err != nil {
				return nil, fmt.Errorf("model tensor %d: %w", len(m.Params), err)
			}
			m.Params = append(m.Params, t)
			in = in[n+k:]
			continue
		}
		k := protowire.ConsumeFieldValue(num, typ, in[n:])
		if k < 0 {
			return nil, fmt.Errorf("model field %d: %w", num, protowire.ParseError(k))
		}
		rest = append(rest, in[:n+k]...)
		in = in[n+k:]
	}
	if err := (proto.UnmarshalOptions{Merge: true}).Unmarshal(rest, m); err != nil {
		return nil, err
	}
	return m, nil
}

// unmarshalTensor decodes a Tensor whose data aliases b.
func unmarshalTensor(b []byte) (*fdxv1.Tensor, error) {
	t := &fdxv1.Tensor{}
	var rest []byte
	var data []byte
	for in := b; len(in) > 0; {
		num, typ, n := protowire.ConsumeTag(in)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		if num == fieldTensorData && typ == protowire.BytesType {
			v, k := protowire.ConsumeBytes(in[n:])
			if k < 0 {
				return nil, protowire.ParseError(k)
			}
			data = v[:len(v):len(v)] // the last one wins, as in proto; no append reaches past it
			in = in[n+k:]
			continue
		}
		k := protowire.ConsumeFieldValue(num, typ, in[n:])
		if k < 0 {
			return nil, protowire.ParseError(k)
		}
		rest = append(rest, in[:n+k]...)
		in = in[n+k:]
	}
	if err := (proto.UnmarshalOptions{Merge: true}).Unmarshal(rest, t); err != nil {
		return nil, err
	}
	if len(data) > 0 {
		t.Data = data
	}
	return t, nil
}
