package rules

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"testing"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
)

func TestSetContributors(t *testing.T) {
	for _, n := range []int{0, 3, MaxListedContributors, MaxListedContributors + 1, 100_000} {
		ids := make([]string, n)
		var want bytes.Buffer
		for i := range ids {
			ids[i] = fmt.Sprintf("c%06d", i)
			want.WriteString(ids[i] + "\n")
		}
		m := &fdxv1.GlobalModel{Contributors: []string{"stale"}}
		SetContributors(m, ids)
		if m.GetNumContributors() != int64(n) {
			t.Errorf("%d ids: num_contributors %d", n, m.GetNumContributors())
		}
		if sum := sha256.Sum256(want.Bytes()); !bytes.Equal(m.GetContributorsSha256(), sum[:]) {
			t.Errorf("%d ids: digest %x, want %x", n, m.GetContributorsSha256(), sum)
		}
		listed := n <= MaxListedContributors
		if got := len(m.GetContributors()); listed && got != n || !listed && got != 0 {
			t.Errorf("%d ids: %d listed (limit %d)", n, got, MaxListedContributors)
		}
	}
}
