// Package dataset provides the training data of a federation: MNIST embedded
// in the binary, a synthetic generator for tests that need no MNIST, and the
// partition schemes (IID, label shards, Dirichlet) by which a client derives
// its own shard from the job's partition spec and its client id.
package dataset

import "fmt"

// Set is a labelled data set kept as raw bytes: MNIST as float64 would take
// 376 MB, as bytes 47 MB, which matters inside a 512 MB Cloud Function.
// Feature j of example i is Pixels[i*Dim+j] / 255.
type Set struct {
	Pixels  []uint8
	Labels  []uint8
	Dim     int
	Classes int
}

// Len returns the number of examples.
func (s *Set) Len() int { return len(s.Labels) }

// Subset returns the examples at idx, in that order, sharing no memory with s.
func (s *Set) Subset(idx []int) (*Set, error) {
	out := &Set{
		Pixels:  make([]uint8, 0, len(idx)*s.Dim),
		Labels:  make([]uint8, 0, len(idx)),
		Dim:     s.Dim,
		Classes: s.Classes,
	}
	for _, i := range idx {
		if i < 0 || i >= s.Len() {
			return nil, fmt.Errorf("subset: index %d out of range [0,%d)", i, s.Len())
		}
		out.Pixels = append(out.Pixels, s.Pixels[i*s.Dim:(i+1)*s.Dim]...)
		out.Labels = append(out.Labels, s.Labels[i])
	}
	return out, nil
}
