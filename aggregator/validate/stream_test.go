package validate_test

import (
	"errors"
	"math"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/fdxkafka/fdxkafka/aggregator/validate"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
	"github.com/fdxkafka/fdxkafka/shared/updatestream"
)

// scanned parses u's bytes in pieces of n into a Scan of r; ok is false if
// the parser refused them (the caller would check u whole).
func scanned(t *testing.T, r *validate.Round, u *fdxv1.Update, n int) (*validate.Scan, *fdxv1.Update, int, bool) {
	t.Helper()
	b, err := proto.Marshal(u)
	if err != nil {
		t.Fatal(err)
	}
	s := r.NewScan()
	p := updatestream.New(s, 0)
	for rest := b; len(rest) > 0; rest = rest[min(n, len(rest)):] {
		if err := p.Write(rest[:min(n, len(rest))]); err != nil {
			if !errors.Is(err, updatestream.ErrNotStreamable) {
				t.Fatalf("parse: %v", err)
			}
			return nil, nil, 0, false
		}
	}
	env, err := p.Close()
	if err != nil {
		t.Fatal(err)
	}
	return s, env, len(b), true
}

// TestCheckStreamedAgrees runs updates good and bad through Check and
// through a Scan and CheckStreamed: same verdict, and for an accepted one
// the same norm (the next round's bound depends on it).
func TestCheckStreamedAgrees(t *testing.T) {
	base := logregExpect(t)
	w, b := base.Specs[0], base.Specs[1]
	set := func(i, j int, v float32) func(*fdxv1.Update) {
		return func(u *fdxv1.Update) {
			p := shifted(base.Global, 0.01)
			p[i][j] = v
			u.Params = tensor.Encode(p, base.Specs)
		}
	}
	last := w.Size() - 1
	for _, tc := range []struct {
		name   string
		update func(*fdxv1.Update)
		expect func(*validate.Expect)
		// whole: the parser leaves it to the whole path.
		whole bool
	}{
		{name: "valid"},
		{name: "valid delta", update: func(u *fdxv1.Update) {
			u.IsDelta = true
			u.Params = tensor.Encode([][]float32{slices.Repeat([]float32{0.003}, w.Size()), slices.Repeat([]float32{-0.2}, b.Size())}, base.Specs)
		}},
		{name: "valid float16", update: func(u *fdxv1.Update) {
			u.Params, _ = tensor.EncodeAs(shifted(base.Global, 0.01), base.Specs, fdxv1.DType_DTYPE_FLOAT16)
		}},
		{name: "stale", update: func(u *fdxv1.Update) { u.BaseRound-- }},
		{name: "not sampled", expect: func(e *validate.Expect) { e.Sample = map[string]bool{} }},
		{name: "zero examples", update: func(u *fdxv1.Update) { u.NumExamples = 0 }},
		{name: "NaN in the last value", update: set(1, b.Size()-1, float32(math.NaN()))},
		{name: "Inf in the weights", update: set(0, last, float32(math.Inf(-1)))},
		{name: "norm over the bound", update: set(0, 17, 60)},
		{name: "delta norm over the bound", update: func(u *fdxv1.Update) {
			u.IsDelta = true
			u.Params = tensor.Encode([][]float32{make([]float32, w.Size()), slices.Repeat([]float32{16}, b.Size())}, base.Specs)
		}},
		{name: "delta overflows", update: func(u *fdxv1.Update) {
			u.IsDelta = true
			d := [][]float32{make([]float32, w.Size()), make([]float32, b.Size())}
			d[0][5] = math.MaxFloat32
			u.Params = tensor.Encode(d, base.Specs)
		}, expect: func(e *validate.Expect) { e.MaxNorm = 0; e.Global[0][5] = math.MaxFloat32 }},
		{name: "out of range", update: set(1, 0, 1e22), expect: func(e *validate.Expect) { e.MaxNorm = 0 }},
		{name: "missing tensor", update: func(u *fdxv1.Update) { u.Params = u.Params[:1] }},
		{name: "extra tensor", update: func(u *fdxv1.Update) {
			u.Params = append(u.Params, tensor.FromFloat32("x", []int64{1}, []float32{0}))
		}},
		{name: "swapped", update: func(u *fdxv1.Update) { u.Params[0], u.Params[1] = u.Params[1], u.Params[0] }},
		{name: "short data", update: func(u *fdxv1.Update) { u.Params[1].Data = u.Params[1].Data[:37] }},
		{name: "unknown dtype", update: func(u *fdxv1.Update) { u.Params[1].Dtype = 99 }, whole: true},
		{name: "NaN and wrong shape", update: func(u *fdxv1.Update) {
			set(0, 3, float32(math.NaN()))(u)
			u.Params[1].Shape = []int64{11}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := logregExpect(t)
			if tc.expect != nil {
				tc.expect(&e)
			}
			u := validUpdate(e)
			if tc.update != nil {
				tc.update(u)
			}
			whole := validate.NewRound(e)
			_, want := whole.Check(u, proto.Size(u))
			for _, n := range []int{1 << 20, 4096, 7} {
				r := validate.NewRound(e)
				s, env, size, ok := scanned(t, r, u, n)
				if ok == tc.whole {
					t.Fatalf("pieces of %d: streamable %v, want %v", n, ok, !tc.whole)
				}
				if !ok {
					continue
				}
				got, decided := r.CheckStreamed(env, size, s)
				if !decided {
					t.Fatal("CheckStreamed could not decide")
				}
				if (got == nil) != (want == nil) || (got != nil && got.Reason != want.Reason) {
					t.Fatalf("pieces of %d: streamed %v, whole %v", n, got, want)
				}
				if want == nil {
					whole.Admit(u)
					r.Admit(env)
					if a, b := whole.AdmittedNorms(), r.AdmittedNorms(); !slices.Equal(a, b) {
						t.Fatalf("norms: streamed %v, whole %v", b, a)
					}
					whole = validate.NewRound(e)
					whole.Check(u, proto.Size(u))
				}
			}
		})
	}
	// A scan of another round cannot decide.
	e := logregExpect(t)
	r1, r2 := validate.NewRound(e), validate.NewRound(e)
	s, env, size, _ := scanned(t, r1, validUpdate(e), 1<<20)
	if _, ok := r2.CheckStreamed(env, size, s); ok {
		t.Error("a round decided from another round's scan")
	}
	if rej, ok := r1.CheckStreamed(env, size, s); !ok || rej != nil {
		t.Errorf("own round: %v, %v", rej, ok)
	}
	_ = rules.NormBound
}
