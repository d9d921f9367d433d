package dataset

import (
	"slices"
	"testing"
)

func TestHoldout(t *testing.T) {
	s := &Set{Dim: 1, Classes: 10}
	for i := range 100 {
		s.Pixels = append(s.Pixels, uint8(i))
		s.Labels = append(s.Labels, uint8(i/10)) // label-sorted, as a "shards" shard
	}
	train, held, err := Holdout(s, 0.2)
	if err != nil {
		t.Fatal(err)
	}
	if train.Len() != 80 || held.Len() != 20 {
		t.Fatalf("split %d/%d, want 80/20", train.Len(), held.Len())
	}
	// Disjoint and complete: every pixel value (the example's index) once.
	all := slices.Concat(train.Pixels, held.Pixels)
	slices.Sort(all)
	for i, v := range all {
		if int(v) != i {
			t.Fatalf("example %d missing or repeated: %v", i, all)
		}
	}
	// Spread evenly: the held-out part has every label twice.
	for c := range 10 {
		if n := slices.Index(held.Labels, uint8(c)); n < 0 {
			t.Errorf("label %d not held out; held labels %v", c, held.Labels)
		}
	}
	// The same split every time.
	_, again, _ := Holdout(s, 0.2)
	if !slices.Equal(held.Pixels, again.Pixels) {
		t.Error("two splits differ")
	}
	if tr, h, err := Holdout(s, 0); err != nil || tr.Len() != 100 || h.Len() != 0 {
		t.Errorf("fraction 0: %v, %v, %v; want all 100 to train", tr, h, err)
	}
	for _, bad := range []float64{-0.1, 1, 1.5} {
		if _, _, err := Holdout(s, bad); err == nil {
			t.Errorf("fraction %v accepted", bad)
		}
	}
	// The first example always trains, so only an empty shard fails.
	one := &Set{Dim: 1, Classes: 10, Pixels: []uint8{0}, Labels: []uint8{0}}
	if tr, _, err := Holdout(one, 0.99); err != nil || tr.Len() != 1 {
		t.Errorf("one example at 0.99: %v, %v; want it to train", tr, err)
	}
	if _, _, err := Holdout(&Set{Dim: 1, Classes: 10}, 0.2); err == nil {
		t.Error("an empty shard split")
	}
}
