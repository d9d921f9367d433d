package round_test

import (
	"context"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/round"
	"github.com/fdxkafka/fdxkafka/aggregator/validate"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

const testJob = "round-test"

func newJob(t *testing.T, mod func(*round.Job)) *round.Job {
	t.Helper()
	m := round.Job{ID: testJob, NumRounds: 3, MinClients: 2,
		Train: &fdxv1.TrainConfig{Model: "logreg", Seed: 7}, InDim: 6, Classes: 3, NormFactor: 10}
	if mod != nil {
		mod(&m)
	}
	got, err := round.NewJob(m)
	if err != nil {
		t.Fatalf("NewJob: %v", err)
	}
	return got
}

// params returns weights every value of which is v plus a small,
// client-specific ripple.
func params(m *round.Job, k int, v float32) [][]float32 {
	p := make([][]float32, len(m.Specs()))
	for i, n := range m.Sizes() {
		p[i] = make([]float32, n)
		for j := range p[i] {
			p[i][j] = v + float32(math.Sin(float64(31*k+7*i+j)))/100
		}
	}
	return p
}

// sink records what an intake told its owner, and what each sender heard.
type sink struct {
	folded   []string
	admitted []string
	rejected map[string]rules.Reason
	replies  map[string][]string // client → "ok" or the reason, in order
	failFold error
}

func newSink() *sink {
	return &sink{rejected: map[string]rules.Reason{}, replies: map[string][]string{}}
}

func (s *sink) hooks() round.Hooks {
	return round.Hooks{
		Fold: func(u *fdxv1.Update, vals *validate.Values) error {
			if vals == nil {
				return errors.New("fold without validated values")
			}
			if s.failFold != nil {
				return s.failFold
			}
			s.folded = append(s.folded, u.GetClientId())
			return nil
		},
		Admitted: func(d channel.Delivery) { s.admitted = append(s.admitted, d.ClientID()) },
		Rejected: func(d channel.Delivery, rej *rules.Rejection) { s.rejected[d.ClientID()] = rej.Reason },
	}
}

func (s *sink) deliver(u *fdxv1.Update, accept func() error) channel.Delivery {
	id := u.GetClientId()
	return channel.NewDelivery(u, 1000, accept, func(rej *rules.Rejection) {
		if rej == nil {
			s.replies[id] = append(s.replies[id], "ok")
		} else {
			s.replies[id] = append(s.replies[id], string(rej.Reason))
		}
	})
}

func update(m *round.Job, id string, p [][]float32) *fdxv1.Update {
	return &fdxv1.Update{Job: testJob, ClientId: id, BaseRound: 1, NumExamples: 10, Params: tensor.Encode(p, m.Specs())}
}

func expect(m *round.Job, global [][]float32) validate.Expect {
	return validate.Expect{Job: testJob, Round: 1, Specs: m.Specs(), Global: global, MaxExamples: 100, MaxBytes: 1 << 20}
}

// TestIntakeOrder: a valid update is folded, admitted and answered once;
// a repeat, an undecodable record and one the channel fails to store are
// refused with their reasons and never folded.
func TestIntakeOrder(t *testing.T) {
	m := newJob(t, nil)
	global := params(m, 0, 0)
	s := newSink()
	in := round.NewIntake(validate.NewRound(expect(m, global)), 0, s.hooks(), nil)
	ctx := t.Context()
	take := func(d channel.Delivery) {
		t.Helper()
		if err := in.Take(ctx, d); err != nil {
			t.Fatalf("take %s: %v", d.ClientID(), err)
		}
	}
	take(s.deliver(update(m, "a", params(m, 1, 0.1)), nil))
	take(s.deliver(update(m, "a", params(m, 2, 0.1)), nil))
	take(s.deliver(update(m, "disk", params(m, 3, 0.1)), func() error { return errors.New("disk full") }))
	take(channel.Delivery{Err: errors.New("bad bytes"), Key: "garbled"})

	if !slices.Equal(s.folded, []string{"a"}) || !slices.Equal(s.admitted, []string{"a"}) {
		t.Errorf("folded %v, admitted %v; want a once", s.folded, s.admitted)
	}
	if got := s.replies["a"]; !slices.Equal(got, []string{"ok", string(rules.Duplicate)}) {
		t.Errorf("a heard %v, want ok then duplicate", got)
	}
	want := map[string]rules.Reason{"a": rules.Duplicate, "disk": rules.NotStored, "garbled": rules.Undecodable}
	for id, r := range want {
		if s.rejected[id] != r {
			t.Errorf("%s rejected as %q, want %q", id, s.rejected[id], r)
		}
	}
	if got := in.Check().Admitted(); !slices.Equal(got, []string{"a"}) {
		t.Errorf("validator admitted %v, want [a]", got)
	}
}

// TestIntakeFoldError: an aggregate that refuses a validated update stops
// the round, and its sender hears nothing.
func TestIntakeFoldError(t *testing.T) {
	m := newJob(t, nil)
	s := newSink()
	s.failFold = errors.New("broken aggregate")
	in := round.NewIntake(validate.NewRound(expect(m, params(m, 0, 0))), 0, s.hooks(), nil)
	err := in.Take(t.Context(), s.deliver(update(m, "a", params(m, 1, 0.1)), nil))
	if !errors.Is(err, s.failFold) {
		t.Fatalf("take: %v, want the fold's error", err)
	}
	if len(s.replies["a"]) != 0 || len(s.admitted) != 0 {
		t.Errorf("replies %v, admitted %v; want none", s.replies, s.admitted)
	}
}

// TestIntakeSelfBound: in a self-bounded round the first two updates are
// held; Decide refuses the outlier against the round's median and folds
// the rest, each answered once; with refuse false everything held folds.
func TestIntakeSelfBound(t *testing.T) {
	m := newJob(t, nil)
	global := params(m, 0, 0)
	for _, refuse := range []bool{true, false} {
		s := newSink()
		in := round.NewIntake(validate.NewRound(expect(m, global)), m.NormFactor, s.hooks(), nil)
		ctx := context.Background()
		ups := []*fdxv1.Update{update(m, "outlier", params(m, 9, 40))}
		for i, id := range []string{"a", "b", "c", "d"} {
			ups = append(ups, update(m, id, params(m, i+1, 0.1)))
		}
		for _, u := range ups {
			if err := in.Take(ctx, s.deliver(u, nil)); err != nil {
				t.Fatal(err)
			}
		}
		// outlier and a came first, with no median yet; b, c and d fold
		// at once.
		if in.Held() != 2 || !slices.Equal(s.folded, []string{"b", "c", "d"}) {
			t.Fatalf("refuse %v: held %d, folded %v; want 2 held and b, c, d folded", refuse, in.Held(), s.folded)
		}
		if len(s.replies["outlier"]) != 0 {
			t.Fatalf("the held outlier heard %v before the verdict", s.replies["outlier"])
		}
		if err := in.Decide(ctx, refuse); err != nil {
			t.Fatal(err)
		}
		wantFolded, wantOutlier := []string{"b", "c", "d", "a"}, string(rules.NormBound)
		if !refuse {
			wantFolded, wantOutlier = []string{"b", "c", "d", "outlier", "a"}, "ok"
		}
		if !slices.Equal(s.folded, wantFolded) {
			t.Errorf("refuse %v: folded %v, want %v", refuse, s.folded, wantFolded)
		}
		if got := s.replies["outlier"]; len(got) != 1 || !strings.HasPrefix(got[0], wantOutlier) {
			t.Errorf("refuse %v: outlier heard %v, want %s once", refuse, got, wantOutlier)
		}
		if in.Held() != 0 || in.Check().Count() != len(wantFolded) {
			t.Errorf("refuse %v: held %d, counted %d after Decide", refuse, in.Held(), in.Check().Count())
		}
	}
}

// TestIntakeEvaluateOnly: an evaluate-only update goes to Evaluated when
// the owner takes evaluations, and is refused as a training update when
// it does not; it never reaches the fold.
func TestIntakeEvaluateOnly(t *testing.T) {
	m := newJob(t, nil)
	e := expect(m, params(m, 0, 0))
	e.EvalSample = map[string]bool{"e": true}
	u := &fdxv1.Update{Job: testJob, ClientId: "e", BaseRound: 1, EvaluateOnly: true, NumExamples: 20,
		Metrics: map[string]float64{rules.MetricEvalLoss: 0.5, rules.MetricEvalAccuracy: 0.8}}

	s := newSink()
	var evaluated int64
	h := s.hooks()
	h.Evaluated = func(d channel.Delivery, n int64) { evaluated = n }
	if err := round.NewIntake(validate.NewRound(e), 0, h, nil).Take(t.Context(), s.deliver(u, nil)); err != nil {
		t.Fatal(err)
	}
	if evaluated != 20 || len(s.folded) != 0 || !slices.Equal(s.replies["e"], []string{"ok"}) {
		t.Errorf("evaluated %d examples, folded %v, replies %v; want 20, none, ok", evaluated, s.folded, s.replies["e"])
	}

	s = newSink()
	if err := round.NewIntake(validate.NewRound(e), 0, s.hooks(), nil).Take(t.Context(), s.deliver(u, nil)); err != nil {
		t.Fatal(err)
	}
	if len(s.folded) != 0 || len(s.replies["e"]) != 1 || s.replies["e"][0] == "ok" {
		t.Errorf("without Evaluated: folded %v, replies %v; want one refusal", s.folded, s.replies["e"])
	}
}

func TestJobRecord(t *testing.T) {
	m := newJob(t, func(m *round.Job) { m.RoundTimeout = time.Minute })
	p, err := m.Initial()
	if err != nil {
		t.Fatal(err)
	}
	first := m.Record(1, p, []string{"b", "a"}, nil, []byte("s"))
	if first.GetFinal() || first.GetDeadline() == nil || first.GetNumRounds() != 3 || first.GetMinClients() != 2 || string(first.GetStrategyState()) != "s" {
		t.Errorf("round 1 record: final %v, deadline %v, rounds %d, minclients %d", first.GetFinal(), first.GetDeadline(), first.GetNumRounds(), first.GetMinClients())
	}
	if err := m.Restorable(first); err != nil {
		t.Errorf("own model not restorable: %v", err)
	}
	got, err := m.Decode(first)
	if err != nil || !slices.EqualFunc(got, p, slices.Equal) {
		t.Errorf("decode: %v, or values differ", err)
	}
	final := m.Record(4, p, nil, nil, nil)
	if !final.GetFinal() || final.GetDeadline() != nil {
		t.Errorf("round 4 of 3: final %v, deadline %v; want final without a deadline", final.GetFinal(), final.GetDeadline())
	}

	past := m.Record(5, p, nil, nil, nil)
	other := m.Record(2, p, nil, nil, nil)
	other.Job = "another-job"
	small := newJob(t, func(m *round.Job) { m.InDim = 5 })
	for name, g := range map[string]*fdxv1.GlobalModel{
		"past the final round": past, "another job": other, "other shapes": small.Record(2, params(small, 0, 0), nil, nil, nil),
	} {
		if err := m.Restorable(g); err == nil {
			t.Errorf("%s: restorable", name)
		}
	}
}

// TestJobFloat16: a float16 job's models are snapped to the float16
// grid and published in float16, so that clients decode the
// aggregator's own values.
func TestJobFloat16(t *testing.T) {
	m := newJob(t, func(m *round.Job) {
		m.Train = &fdxv1.TrainConfig{Model: "logreg", Seed: 7, ModelDtype: fdxv1.DType_DTYPE_FLOAT16}
	})
	p := params(m, 1, 0.1)
	if err := m.Snap(p); err != nil {
		t.Fatal(err)
	}
	g := m.Record(2, p, nil, nil, nil)
	if dt := g.GetParams()[0].GetDtype(); dt != fdxv1.DType_DTYPE_FLOAT16 {
		t.Fatalf("dtype %v, want float16", dt)
	}
	got, err := m.Decode(g)
	if err != nil || !slices.EqualFunc(got, p, slices.Equal) {
		t.Errorf("decoded float16 model differs from the snapped parameters (err %v)", err)
	}
	if _, err := round.NewJob(round.Job{ID: testJob, NumRounds: 1, MinClients: 1,
		Train: &fdxv1.TrainConfig{Model: "logreg", ModelDtype: fdxv1.DType_DTYPE_INT8}, InDim: 6, Classes: 3}); err == nil {
		t.Error("an int8 model encoding was accepted")
	}
}

func TestNormBound(t *testing.T) {
	for _, tc := range []struct {
		maxNorm, factor, median, want float64
		self                          bool
	}{
		{0, 10, 0, 0, true},
		{5, 10, 0, 5, true},
		{0, 10, 0.2, 2, false},
		{1, 10, 0.2, 1, false},
		{3, 10, 0.2, 2, false},
		{0, 0, 0.2, 0, false},
	} {
		m := newJob(t, func(m *round.Job) { m.MaxNorm, m.NormFactor = tc.maxNorm, tc.factor })
		if got := m.NormBound(tc.median); got != tc.want {
			t.Errorf("max %v factor %v median %v: bound %v, want %v", tc.maxNorm, tc.factor, tc.median, got, tc.want)
		}
		want := 0.0
		if tc.self {
			want = tc.factor
		}
		if got := m.SelfBound(tc.median); got != want {
			t.Errorf("max %v factor %v median %v: self-bound factor %v, want %v", tc.maxNorm, tc.factor, tc.median, got, want)
		}
	}
}
