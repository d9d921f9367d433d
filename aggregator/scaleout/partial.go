// Package scaleout spreads a FedAvg round over several processes through
// Kafka (aggregator --role worker / --role leader).
//
// Workers join the aggregator's consumer group over fdx.<job>.updates, so
// Kafka assigns each a share of the update partitions. A worker validates
// its updates (package validate, as the single aggregator does) and folds
// the valid ones into an exact accumulator (accumulator.Accumulator). Every
// batch it publishes the accumulator, the batch's contributors and their
// update norms as a partial, in one transaction with the offsets of the
// updates the batch consumed (kafkachan.Server.PublishPartial). The leader
// reads committed partials, merges those of the open round and, once their
// counts reach MinClients, publishes the next model in one transaction with
// the partials' offsets.
//
// Why the model is bit-identical to a single aggregator's on the same
// updates: the accumulator holds Σ weight·x exactly, Merge adds exact sums,
// and the mean is rounded once at the end; integer addition does not care
// how the updates were split between workers. Why nothing is lost or
// counted twice: an update's offset is committed in the same transaction as
// the partial that holds it, and a partial's offset in the same transaction
// as the model that merged it; a killed worker's open transaction is
// aborted (its successor, with the same transactional id, fences it), so
// its updates are read again from the last committed offset.
//
// Only FedAvg: the other strategies are not sums (robust ones need every
// update at once, FedOpt keeps server state), so their partials would not
// merge exactly.
package scaleout

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
)

// partial is one worker batch of one round.
type partial struct {
	Round        int64
	Count        int64
	Weight       int64
	Contributors []string
	// Norms of the admitted updates, for the next round's norm bound.
	Norms []float64
	// Rejected counts refused updates per reason.
	Rejected map[string]int64
	// Acc is the marshalled accumulator.Accumulator; empty when Count is 0.
	Acc []byte
}

const partialMagic = "FDXP1"

// maxPartialItems bounds the lists a decoded partial may claim, so a
// damaged record cannot make the leader allocate without bound.
const maxPartialItems = 1 << 24

func (p *partial) marshal() []byte {
	b := append([]byte(nil), partialMagic...)
	b = binary.AppendVarint(b, p.Round)
	b = binary.AppendVarint(b, p.Count)
	b = binary.AppendVarint(b, p.Weight)
	b = binary.AppendUvarint(b, uint64(len(p.Contributors)))
	for _, c := range p.Contributors {
		b = binary.AppendUvarint(b, uint64(len(c)))
		b = append(b, c...)
	}
	b = binary.AppendUvarint(b, uint64(len(p.Norms)))
	for _, n := range p.Norms {
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(n))
	}
	reasons := make([]string, 0, len(p.Rejected))
	for r := range p.Rejected {
		reasons = append(reasons, r)
	}
	slices.Sort(reasons)
	b = binary.AppendUvarint(b, uint64(len(reasons)))
	for _, r := range reasons {
		b = binary.AppendUvarint(b, uint64(len(r)))
		b = append(b, r...)
		b = binary.AppendVarint(b, p.Rejected[r])
	}
	b = binary.AppendUvarint(b, uint64(len(p.Acc)))
	return append(b, p.Acc...)
}

// errPartial reports a partial record that does not decode.
var errPartial = errors.New("malformed partial")

type reader struct {
	b   []byte
	err error
}

func (r *reader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = errPartial
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) count() int {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 || v > maxPartialItems {
		r.err = errPartial
		return 0
	}
	r.b = r.b[n:]
	return int(v)
}

func (r *reader) bytes(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n > len(r.b) {
		r.err = errPartial
		return nil
	}
	out := r.b[:n:n]
	r.b = r.b[n:]
	return out
}

func unmarshalPartial(b []byte) (*partial, error) {
	if len(b) < len(partialMagic) || string(b[:len(partialMagic)]) != partialMagic {
		return nil, fmt.Errorf("%w: no magic", errPartial)
	}
	r := &reader{b: b[len(partialMagic):]}
	p := &partial{Round: r.varint(), Count: r.varint(), Weight: r.varint(), Rejected: map[string]int64{}}
	n := r.count()
	for range n {
		if r.err != nil {
			break
		}
		p.Contributors = append(p.Contributors, string(r.bytes(r.count())))
	}
	n = r.count()
	if raw := r.bytes(8 * n); r.err == nil {
		p.Norms = make([]float64, n)
		for i := range p.Norms {
			p.Norms[i] = math.Float64frombits(binary.LittleEndian.Uint64(raw[8*i:]))
		}
	}
	n = r.count()
	for range n {
		if r.err != nil {
			break
		}
		reason := string(r.bytes(r.count()))
		p.Rejected[reason] += r.varint()
	}
	p.Acc = r.bytes(r.count())
	switch {
	case r.err != nil:
		return nil, r.err
	case len(r.b) != 0:
		return nil, fmt.Errorf("%w: %d trailing bytes", errPartial, len(r.b))
	case p.Count < 0 || int64(len(p.Contributors)) != p.Count || len(p.Norms) != len(p.Contributors):
		return nil, fmt.Errorf("%w: count %d with %d contributors and %d norms", errPartial, p.Count, len(p.Contributors), len(p.Norms))
	case (p.Count == 0) != (len(p.Acc) == 0):
		return nil, fmt.Errorf("%w: count %d with %d accumulator bytes", errPartial, p.Count, len(p.Acc))
	}
	return p, nil
}
