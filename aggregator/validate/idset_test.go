package validate

import (
	"slices"
	"strconv"
	"testing"
)

// TestIDSet checks that numbered and named ids are kept apart exactly:
// "7" and "07" are different clients, and every id comes back as given.
func TestIDSet(t *testing.T) {
	ids := []string{"0", "7", "07", "00", "63", "64", "100000", "4194303", "4194304", "12345678", "-1", "+1", " 1", "1e3", "client-a", "é"}
	var s idSet
	for _, id := range ids {
		if s.has(id) {
			t.Fatalf("%q in the set before it was added", id)
		}
		s.add(id)
		s.add(id)
		if !s.has(id) {
			t.Fatalf("%q not in the set after it was added", id)
		}
	}
	for _, id := range []string{"1", "6", "70", "000", "4194302", "client-b", ""} {
		if s.has(id) {
			t.Errorf("%q in the set, never added", id)
		}
	}
	want := slices.Sorted(slices.Values(ids))
	if got := s.sorted(); !slices.Equal(got, want) {
		t.Errorf("sorted() = %q, want %q", got, want)
	}
	if len(s.dense) > maxDenseID/64 {
		t.Errorf("bitmap of %d words, over the bound %d", len(s.dense), maxDenseID/64)
	}
}

// TestIDSetFleet adds ids "0".."N-1" in a scrambled order: every one is
// found, one bit each, and they come back sorted as strings.
func TestIDSetFleet(t *testing.T) {
	const n = 5000
	var s idSet
	want := make([]string, n)
	for i := range n {
		k := (i * 7919) % n
		s.add(strconv.Itoa(k))
		want[i] = strconv.Itoa(i)
	}
	slices.Sort(want)
	if s.other != nil || s.n != n {
		t.Fatalf("%d dense ids and map %v, want %d dense", s.n, s.other, n)
	}
	if got := s.sorted(); !slices.Equal(got, want) {
		t.Errorf("sorted() differs from the ids added")
	}
}
