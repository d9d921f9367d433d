package coordinator_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// TestRoundOneNormBound: in round 1, with no median from a round before,
// an insider with a valid identity sends every weight as -50, first, so
// that no bound exists yet when it arrives. It is refused as norm_bound
// against the round's own median, the round waits for one more honest
// update instead, and the model is the honest clients' alone, bit for bit.
func TestRoundOneNormBound(t *testing.T) {
	specs := testSpecs(t)
	honest := []*fdxv1.Update{
		newUpdate(specs, "a", 1, 10, localParams(specs, 1)),
		newUpdate(specs, "b", 1, 25, localParams(specs, 2)),
		newUpdate(specs, "c", 1, 7, localParams(specs, 3)),
		newUpdate(specs, "d", 1, 12, localParams(specs, 4)),
	}
	insider := newUpdate(specs, "insider", 1, 60, filled(specs, -50))
	cfg := testConfig(len(honest))
	cfg.MaxNorm, cfg.NormFactor = 0, 10

	run := func(ups ...*fdxv1.Update) (*fdxv1.GlobalModel, map[string]int64, []string, *replies) {
		t.Helper()
		rep := newReplies()
		srv := newFakeServer()
		for _, u := range ups {
			srv.updates <- rep.deliver(u.GetClientId(), u, 0)
		}
		ctx, cancel := context.WithTimeout(t.Context(), testWait)
		defer cancel()
		res, err := newCoordinator(t, cfg, srv, nil).Run(ctx)
		if err != nil {
			t.Fatalf("run: %v", err)
		}
		return res.Final, res.Rejected, res.Rounds[0].Contributors, rep
	}
	want, _, _, _ := run(honest...)
	got, rejected, contributors, rep := run(append([]*fdxv1.Update{insider}, honest...)...)

	if v := rep.get("insider"); v.calls != 1 || v.accepted || !strings.HasPrefix(v.reason, string(rules.NormBound)) {
		t.Errorf("insider: answered %d times, accepted %v, reason %q; want one norm_bound refusal", v.calls, v.accepted, v.reason)
	}
	for _, u := range honest {
		if v := rep.get(u.GetClientId()); v.calls != 1 || !v.accepted {
			t.Errorf("%s: answered %d times, accepted %v; want accepted once", u.GetClientId(), v.calls, v.accepted)
		}
	}
	if rejected[string(rules.NormBound)] != 1 {
		t.Errorf("rejected %v, want one norm_bound", rejected)
	}
	if !slices.Equal(contributors, []string{"a", "b", "c", "d"}) {
		t.Errorf("contributors %v, want the honest four", contributors)
	}
	g, err := tensor.Decode(got.GetParams(), specs)
	if err != nil {
		t.Fatal(err)
	}
	w, err := tensor.Decode(want.GetParams(), specs)
	if err != nil {
		t.Fatal(err)
	}
	if !bitsEqual(g, w) {
		t.Errorf("model with the insider refused differs from the honest clients' model")
	}
}
