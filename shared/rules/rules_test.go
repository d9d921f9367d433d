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

func TestCheckModel(t *testing.T) {
	ok := &fdxv1.GlobalModel{Job: "j", Round: 3, NumRounds: 5}
	if err := CheckModel(ok, "j"); err != nil {
		t.Errorf("valid model: %v", err)
	}
	final := &fdxv1.GlobalModel{Job: "j", Round: 6, NumRounds: 5, Final: true}
	if err := CheckModel(final, "j"); err != nil {
		t.Errorf("valid final model: %v", err)
	}
	for name, m := range map[string]*fdxv1.GlobalModel{
		"other job":               {Job: "k", Round: 3, NumRounds: 5},
		"round 0":                 {Job: "j", Round: 0, NumRounds: 5},
		"past the final round":    {Job: "j", Round: 7, NumRounds: 5},
		"round MaxInt64":          {Job: "j", Round: 1<<63 - 1, NumRounds: 5},
		"round MaxInt64, no size": {Job: "j", Round: 1<<63 - 1},
		"early final":             {Job: "j", Round: 2, NumRounds: 5, Final: true},
		"huge job":                {Job: "j", Round: 2, NumRounds: MaxRounds + 1},
		"negative rounds":         {Job: "j", Round: 2, NumRounds: -1},
	} {
		if CheckModel(m, "j") == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
