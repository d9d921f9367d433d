package rules

import (
	"testing"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
)

func TestValidateJob(t *testing.T) {
	for _, bad := range []string{"", "a b", "a/b", "ü", string(make([]byte, 129))} {
		if ValidateJob(bad) == nil {
			t.Errorf("ValidateJob(%q) = nil", bad)
		}
	}
	if err := ValidateJob("mnist-1.a_b"); err != nil {
		t.Errorf("ValidateJob: %v", err)
	}
}

func TestValidateClientID(t *testing.T) {
	long := string(make([]byte, MaxClientIDLen+1))
	for _, bad := range []string{"", long} {
		if ValidateClientID(bad) == nil {
			t.Errorf("ValidateClientID(%d bytes) = nil", len(bad))
		}
	}
	if err := ValidateClientID(long[:MaxClientIDLen]); err != nil {
		t.Errorf("ValidateClientID(%d bytes): %v", MaxClientIDLen, err)
	}
}

// Every wire enum value has exactly one label and back, so a rejection
// keeps its meaning across the gRPC boundary.
func TestReasonsRoundTrip(t *testing.T) {
	n := len(fdxv1.RejectReason_name) - 1 // less UNSPECIFIED
	rs := Reasons()
	if len(rs) != n {
		t.Fatalf("Reasons() has %d entries, the wire enum %d", len(rs), n)
	}
	seen := map[Reason]bool{}
	for i, r := range rs {
		if seen[r] {
			t.Errorf("%q listed twice", r)
		}
		seen[r] = true
		if got := r.Proto(); got != fdxv1.RejectReason(i+1) {
			t.Errorf("%q.Proto() = %v, want %v (wire order)", r, got, fdxv1.RejectReason(i+1))
		}
		if back := ReasonOf(r.Proto()); back != r {
			t.Errorf("ReasonOf(%v) = %q, want %q", r.Proto(), back, r)
		}
	}
	if ReasonOf(fdxv1.RejectReason_REJECT_REASON_UNSPECIFIED) != "" || ReasonOf(999) != "" {
		t.Error("UNSPECIFIED or an unknown enum value has a label")
	}
	if Reason("nope").Proto() != fdxv1.RejectReason_REJECT_REASON_UNSPECIFIED {
		t.Error("an unknown label maps to a wire value")
	}
}

func TestPartitionSpecRoundTrip(t *testing.T) {
	s := dataset.PartitionSpec{Scheme: "dirichlet", NumPartitions: 7, Seed: 3, Alpha: 0.25, ShardsPerClient: 2}
	if got := PartitionSpec(ProtoPartitionSpec(s)); got != s {
		t.Errorf("round trip = %+v, want %+v", got, s)
	}
	if got := PartitionSpec(nil); got != (dataset.PartitionSpec{}) {
		t.Errorf("PartitionSpec(nil) = %+v, want zero", got)
	}
}
