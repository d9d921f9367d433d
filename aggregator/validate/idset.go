package validate

import (
	"maps"
	"slices"
	"strconv"
)

// maxDenseID bounds the numeric client ids idSet keeps as bits: a bitmap of
// up to 2^22 ids is 512 KiB, which is all a sender can make a round
// allocate by choosing large numbers; larger ids go to the map.
const maxDenseID = 1 << 22

// idSet is the set of client ids admitted in a round. A round may admit
// 100,000 clients or more, and fleets number their clients: the canonical
// decimal ids "0", "1", ... below maxDenseID are one bit each, where a
// map[string] costs about 40 bytes per id (the string, its header and the
// map's slot), several MB a round. Other ids go to the map.
type idSet struct {
	dense []uint64
	n     int // ids in dense
	other map[string]struct{}
}

// denseID returns id as a number when it is a canonical decimal below
// maxDenseID: digits only, no sign, no leading zero (so that the number
// gives back the very same string).
func denseID(id string) (int, bool) {
	if id == "" || len(id) > 7 || (id[0] == '0' && len(id) > 1) {
		return 0, false
	}
	k := 0
	for i := range len(id) {
		c := id[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		k = 10*k + int(c-'0')
	}
	return k, k < maxDenseID
}

func (s *idSet) has(id string) bool {
	if k, ok := denseID(id); ok {
		return k/64 < len(s.dense) && s.dense[k/64]&(1<<(k%64)) != 0
	}
	_, ok := s.other[id]
	return ok
}

func (s *idSet) add(id string) {
	if k, ok := denseID(id); ok {
		if w := k / 64; w >= len(s.dense) {
			s.dense = slices.Grow(s.dense, w+1-len(s.dense))[:w+1]
		}
		if s.dense[k/64]&(1<<(k%64)) == 0 {
			s.dense[k/64] |= 1 << (k % 64)
			s.n++
		}
		return
	}
	if s.other == nil {
		s.other = map[string]struct{}{}
	}
	s.other[id] = struct{}{}
}

// sorted returns the ids in the set, sorted as strings.
func (s *idSet) sorted() []string {
	ids := make([]string, 0, s.n+len(s.other))
	for w, bits := range s.dense {
		for b := range 64 {
			if bits&(1<<b) != 0 {
				ids = append(ids, strconv.Itoa(64*w+b))
			}
		}
	}
	ids = slices.AppendSeq(ids, maps.Keys(s.other))
	slices.Sort(ids)
	return ids
}
