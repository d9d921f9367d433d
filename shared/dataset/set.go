// Package dataset provides the training data of a federation: MNIST embedded
// in the binary, a synthetic generator for tests that need no MNIST, and the
// partition schemes (IID, label shards, Dirichlet) by which a client derives
// its own shard from the job's partition spec and its client id.
package dataset

import (
	"errors"
	"fmt"
)

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

// Validate reports whether s is internally consistent: a positive Dim, a
// Classes count that uint8 labels can address, len(Pixels) == Len()*Dim and
// every label below Classes. Sets from this package are valid; Validate is
// for sets built elsewhere, which Subset and the partitions would otherwise
// index out of range.
func (s *Set) Validate() error {
	switch {
	case s == nil:
		return errors.New("set is nil")
	case s.Dim < 1:
		return fmt.Errorf("set: dim %d, want >= 1", s.Dim)
	case s.Classes < 1 || s.Classes > maxClasses:
		return fmt.Errorf("set: %d classes, want 1..%d", s.Classes, maxClasses)
	case len(s.Pixels) != len(s.Labels)*s.Dim:
		return fmt.Errorf("set: %d pixels for %d examples of dim %d, want %d",
			len(s.Pixels), len(s.Labels), s.Dim, len(s.Labels)*s.Dim)
	}
	if err := checkLabels(s.Labels, s.Classes); err != nil {
		return fmt.Errorf("set: %w", err)
	}
	return nil
}

// maxClasses is the number of classes a uint8 label can name.
const maxClasses = 256

// checkLabels reports the first label that is not below classes.
func checkLabels(labels []uint8, classes int) error {
	for i, l := range labels {
		if int(l) >= classes {
			return fmt.Errorf("label %d of example %d out of range [0,%d)", l, i, classes)
		}
	}
	return nil
}
