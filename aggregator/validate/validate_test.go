package validate_test

import (
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/fdxkafka/fdxkafka/aggregator/accumulator"
	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	"github.com/fdxkafka/fdxkafka/aggregator/validate"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/model"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

const (
	job         = "mnist"
	round       = 4
	maxNorm     = 50
	maxExamples = 60000
	maxBytes    = 1 << 20
)

// logregExpect returns what round 4 of a 784x10 logistic regression job
// expects, with a global model whose values are all distinct.
func logregExpect(t *testing.T) validate.Expect {
	t.Helper()
	specs, err := model.SpecsFor(model.KindLogReg, 784, 10)
	if err != nil {
		t.Fatal(err)
	}
	global := make([][]float32, len(specs))
	for i, sp := range specs {
		global[i] = make([]float32, sp.Size())
		for j := range global[i] {
			global[i][j] = float32(math.Sin(float64(7*i+j))) / 8
		}
	}
	return validate.Expect{
		Job: job, Round: round, Specs: specs, Global: global,
		MaxNorm: maxNorm, MaxExamples: maxExamples, MaxBytes: maxBytes,
	}
}

// shifted returns global plus d in every coordinate.
func shifted(global [][]float32, d float32) [][]float32 {
	out := make([][]float32, len(global))
	for i := range global {
		out[i] = make([]float32, len(global[i]))
		for j, g := range global[i] {
			out[i][j] = g + d
		}
	}
	return out
}

// validUpdate is a client's full weights, 0.01 from the global model in
// every coordinate (norm about 0.89).
func validUpdate(e validate.Expect) *fdxv1.Update {
	return &fdxv1.Update{
		Job: job, ClientId: "client-7", BaseRound: round, NumExamples: 600,
		Params: tensor.Encode(shifted(e.Global, 0.01), e.Specs),
	}
}

func int8Tensor(name string, shape []int64, n int, scale float32) *fdxv1.Tensor {
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i % 256)
	}
	return &fdxv1.Tensor{Name: name, Shape: shape, Dtype: fdxv1.DType_DTYPE_INT8, Data: data, Scale: scale}
}

func TestUpdateRejects(t *testing.T) {
	base := logregExpect(t)
	w, b := base.Specs[0], base.Specs[1]
	// Duplicate needs round state (TestDuplicateFromEnvelope); Undecodable,
	// NotStored, Unauthenticated, Incomplete and Checksum come from the
	// transport, and the coordinator's and kafkachan's tests cover them.
	tested := map[rules.Reason]bool{rules.Duplicate: true, rules.Undecodable: true, rules.NotStored: true, rules.Unauthenticated: true,
		rules.Incomplete: true, rules.Checksum: true}
	// setValue sets one value of tensor i of the update to v.
	setValue := func(i, j int, v float32) func(*fdxv1.Update) {
		return func(u *fdxv1.Update) {
			p := shifted(base.Global, 0.01)
			p[i][j] = v
			u.Params = tensor.Encode(p, base.Specs)
		}
	}
	for _, tc := range []struct {
		name   string
		update func(u *fdxv1.Update)
		expect func(e *validate.Expect)
		size   int // 0: the encoded size
		want   rules.Reason
	}{
		{name: "over the size limit", size: maxBytes + 1, want: rules.Oversize},
		{name: "other job", update: func(u *fdxv1.Update) { u.Job = "fashion" }, want: rules.WrongJob},
		{name: "no job", update: func(u *fdxv1.Update) { u.Job = "" }, want: rules.WrongJob},
		{name: "empty client id", update: func(u *fdxv1.Update) { u.ClientId = "" }, want: rules.BadClientID},
		{name: "client id too long", update: func(u *fdxv1.Update) { u.ClientId = strings.Repeat("x", rules.MaxClientIDLen+1) }, want: rules.BadClientID},
		{
			name:   "client not allowed",
			expect: func(e *validate.Expect) { e.Allowed = map[string]bool{"client-8": true} },
			want:   rules.UnknownClient,
		},
		{
			name:   "client not sampled",
			expect: func(e *validate.Expect) { e.Sample = map[string]bool{"client-8": true} },
			want:   rules.NotSampled,
		},
		{
			name:   "unsampled and stale: stale first",
			update: func(u *fdxv1.Update) { u.BaseRound = round - 1 },
			expect: func(e *validate.Expect) { e.Sample = map[string]bool{} },
			want:   rules.StaleRound,
		},
		{name: "stale round", update: func(u *fdxv1.Update) { u.BaseRound = round - 1 }, want: rules.StaleRound},
		{name: "round zero", update: func(u *fdxv1.Update) { u.BaseRound = 0 }, want: rules.StaleRound},
		{name: "future round", update: func(u *fdxv1.Update) { u.BaseRound = round + 1 }, want: rules.FutureRound},
		{name: "zero examples", update: func(u *fdxv1.Update) { u.NumExamples = 0 }, want: rules.BadNumExamples},
		{name: "negative examples", update: func(u *fdxv1.Update) { u.NumExamples = -5 }, want: rules.BadNumExamples},
		{name: "examples over the cap", update: func(u *fdxv1.Update) { u.NumExamples = maxExamples + 1 }, want: rules.BadNumExamples},
		{
			name:   "examples over the strategy limit, no cap",
			update: func(u *fdxv1.Update) { u.NumExamples = accumulator.MaxWeight + 1 },
			expect: func(e *validate.Expect) { e.MaxExamples = 0 },
			want:   rules.BadNumExamples,
		},
		{
			name:   "examples over the strategy limit, cap above it",
			update: func(u *fdxv1.Update) { u.NumExamples = math.MaxInt64 },
			expect: func(e *validate.Expect) { e.MaxExamples = math.MaxInt64 },
			want:   rules.BadNumExamples,
		},
		{name: "no tensors", update: func(u *fdxv1.Update) { u.Params = nil }, want: rules.WrongShape},
		{name: "missing bias", update: func(u *fdxv1.Update) { u.Params = u.Params[:1] }, want: rules.WrongShape},
		{
			name: "extra tensor",
			update: func(u *fdxv1.Update) {
				u.Params = append(u.Params, tensor.FromFloat32("fc1.bias", []int64{1}, []float32{0}))
			},
			want: rules.WrongShape,
		},
		{name: "tensors swapped", update: func(u *fdxv1.Update) { u.Params[0], u.Params[1] = u.Params[1], u.Params[0] }, want: rules.WrongShape},
		{name: "wrong name", update: func(u *fdxv1.Update) { u.Params[0].Name = "fc0.weights" }, want: rules.WrongShape},
		{name: "transposed", update: func(u *fdxv1.Update) { u.Params[0].Shape = []int64{784, 10} }, want: rules.WrongShape},
		{name: "flattened", update: func(u *fdxv1.Update) { u.Params[0].Shape = []int64{7840} }, want: rules.WrongShape},
		{name: "short data", update: func(u *fdxv1.Update) { u.Params[1].Data = u.Params[1].Data[:36] }, want: rules.WrongShape},
		{name: "long data", update: func(u *fdxv1.Update) { u.Params[1].Data = append(u.Params[1].Data, 0, 0, 0, 0) }, want: rules.WrongShape},
		{name: "unknown dtype", update: func(u *fdxv1.Update) { u.Params[1].Dtype = 99 }, want: rules.WrongShape},
		{name: "int8 with float32 length", update: func(u *fdxv1.Update) { u.Params[1].Dtype = fdxv1.DType_DTYPE_INT8 }, want: rules.WrongShape},
		{name: "nil tensor", update: func(u *fdxv1.Update) { u.Params[1] = nil }, want: rules.WrongShape},
		{name: "NaN weight", update: setValue(0, 1234, float32(math.NaN())), want: rules.NonFinite},
		{name: "+Inf bias", update: setValue(1, 9, float32(math.Inf(1))), want: rules.NonFinite},
		{name: "-Inf weight", update: setValue(0, 0, float32(math.Inf(-1))), want: rules.NonFinite},
		{
			name:   "int8 with infinite scale",
			update: func(u *fdxv1.Update) { u.Params[1] = int8Tensor(b.Name, b.Shape, b.Size(), float32(math.Inf(1))) },
			want:   rules.NonFinite,
		},
		{
			name: "delta overflows",
			update: func(u *fdxv1.Update) {
				u.IsDelta = true
				d := [][]float32{make([]float32, w.Size()), make([]float32, b.Size())}
				d[0][5] = math.MaxFloat32
				u.Params = tensor.Encode(d, base.Specs)
			},
			expect: func(e *validate.Expect) { e.MaxNorm = 0; e.Global[0][5] = math.MaxFloat32 },
			want:   rules.NonFinite,
		},
		{name: "norm over the bound", update: setValue(0, 17, 60), want: rules.NormBound},
		{
			name: "delta norm over the bound",
			update: func(u *fdxv1.Update) {
				u.IsDelta = true
				u.Params = tensor.Encode([][]float32{make([]float32, w.Size()), slices.Repeat([]float32{16}, b.Size())}, base.Specs)
			},
			want: rules.NormBound, // sqrt(10 * 16^2) = 50.6
		},
		{
			name:   "value times examples out of range",
			update: setValue(1, 0, 1e22), // 600 * 1e22 = 6e24 > 2^80 = 1.2e24
			expect: func(e *validate.Expect) { e.MaxNorm = 0 },
			want:   rules.OutOfRange,
		},
		{
			name:   "value times examples exactly 2^80",
			update: func(u *fdxv1.Update) { setValue(0, 3, 0x1p78)(u); u.NumExamples = 4 },
			expect: func(e *validate.Expect) { e.MaxNorm = 0 },
			want:   rules.OutOfRange,
		},
		{
			name:   "largest float, one example",
			update: func(u *fdxv1.Update) { setValue(0, 3, -math.MaxFloat32)(u); u.NumExamples = 1 },
			expect: func(e *validate.Expect) { e.MaxNorm = 0 },
			want:   rules.OutOfRange,
		},
	} {
		tested[tc.want] = true
		t.Run(tc.name, func(t *testing.T) {
			e := logregExpect(t)
			if tc.expect != nil {
				tc.expect(&e)
			}
			u := validUpdate(e)
			if tc.update != nil {
				tc.update(u)
			}
			size := tc.size
			if size == 0 {
				size = proto.Size(u)
			}
			vals, rej := validate.Update(u, size, e)
			if rej == nil {
				t.Fatalf("accepted; want rejected as %s", tc.want)
			}
			if vals != nil {
				t.Errorf("returned values with rejection %v", rej)
			}
			if rej.Reason != tc.want {
				t.Errorf("rejected as %v, want %s", rej, tc.want)
			}
			if !strings.HasPrefix(rej.Error(), string(tc.want)+": ") || rej.Detail == "" {
				t.Errorf("Error() = %q, want %q and a detail", rej.Error(), tc.want+": ")
			}
		})
	}
	for _, r := range rules.Reasons() {
		if !tested[r] {
			t.Errorf("no test case for reason %q", r)
		}
	}
}

func TestReasons(t *testing.T) {
	seen := map[rules.Reason]bool{}
	for _, r := range rules.Reasons() {
		if seen[r] {
			t.Errorf("reason %q listed twice", r)
		}
		seen[r] = true
		if r == "" || strings.Trim(string(r), "abcdefghijklmnopqrstuvwxyz_") != "" {
			t.Errorf("reason %q is not a snake_case metric label", r)
		}
	}
}

func TestUpdateAccepts(t *testing.T) {
	base := logregExpect(t)
	b := base.Specs[1]
	for _, tc := range []struct {
		name   string
		update func(u *fdxv1.Update)
		expect func(e *validate.Expect)
		size   int
		want   func(e validate.Expect) [][]float32
	}{
		{
			name: "weights",
			want: func(e validate.Expect) [][]float32 { return shifted(e.Global, 0.01) },
		},
		{
			name:   "delta",
			update: func(u *fdxv1.Update) { u.IsDelta = true; u.Params = tensor.Encode(deltas(base.Specs), base.Specs) },
			want: func(e validate.Expect) [][]float32 {
				d := deltas(e.Specs)
				for i := range d {
					for j := range d[i] {
						d[i][j] = e.Global[i][j] + d[i][j]
					}
				}
				return d
			},
		},
		{
			name:   "int8 bias",
			update: func(u *fdxv1.Update) { u.Params[1] = int8Tensor(b.Name, b.Shape, b.Size(), 1.0/1024) },
			want: func(e validate.Expect) [][]float32 {
				p := shifted(e.Global, 0.01)
				for j := range p[1] {
					p[1][j] = float32(j) / 1024
				}
				return p
			},
		},
		{
			name: "norm exactly at the bound",
			update: func(u *fdxv1.Update) {
				u.IsDelta = true
				u.Params = tensor.Encode(oneHot(base.Specs, 0, 3, maxNorm), base.Specs)
			},
			// 0.25 + 50 is exact in float32, so the norm is exactly 50.
			expect: func(e *validate.Expect) { e.Global[0][3] = 0.25 },
			want: func(e validate.Expect) [][]float32 {
				p := shifted(e.Global, 0)
				p[0][3] = 50.25
				return p
			},
		},
		{
			name: "value times examples just below 2^80",
			update: func(u *fdxv1.Update) {
				u.NumExamples = 3
				u.Params = tensor.Encode(oneHot(base.Specs, 1, 2, 0x1p78), base.Specs)
			},
			expect: func(e *validate.Expect) { e.MaxNorm = 0 },
			want:   func(e validate.Expect) [][]float32 { return oneHot(e.Specs, 1, 2, 0x1p78) },
		},
		{
			name: "no limits configured",
			update: func(u *fdxv1.Update) {
				u.NumExamples = accumulator.MaxWeight
				u.Params = tensor.Encode(shifted(base.Global, 100), base.Specs)
			},
			expect: func(e *validate.Expect) { e.MaxNorm, e.MaxExamples, e.MaxBytes = 0, 0, 0 },
			size:   1 << 30,
			want:   func(e validate.Expect) [][]float32 { return shifted(e.Global, 100) },
		},
		{
			name: "allowed client, exactly at the limits",
			update: func(u *fdxv1.Update) {
				u.NumExamples = maxExamples
				u.ClientId = strings.Repeat("c", rules.MaxClientIDLen)
			},
			expect: func(e *validate.Expect) {
				e.Allowed = map[string]bool{strings.Repeat("c", rules.MaxClientIDLen): true}
			},
			size: maxBytes,
			want: func(e validate.Expect) [][]float32 { return shifted(e.Global, 0.01) },
		},
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
			size := tc.size
			if size == 0 {
				size = proto.Size(u)
			}
			got, rej := validate.Update(u, size, e)
			if rej != nil {
				t.Fatalf("rejected: %v", rej)
			}
			want := tc.want(e)
			if len(got) != len(want) {
				t.Fatalf("got %d tensors, want %d", len(got), len(want))
			}
			for i := range want {
				if len(got[i]) != len(want[i]) {
					t.Fatalf("tensor %d: %d values, want %d", i, len(got[i]), len(want[i]))
				}
				for j := range want[i] {
					if math.Float32bits(got[i][j]) != math.Float32bits(want[i][j]) {
						t.Fatalf("tensor %d value %d = %v, want %v", i, j, got[i][j], want[i][j])
					}
				}
			}
		})
	}
}

// TestUpdateDoesNotModifyGlobal checks that a delta is added to a copy.
func TestUpdateDoesNotModifyGlobal(t *testing.T) {
	e := logregExpect(t)
	before := shifted(e.Global, 0)
	u := validUpdate(e)
	u.IsDelta = true
	if _, rej := validate.Update(u, proto.Size(u), e); rej != nil {
		t.Fatal(rej)
	}
	for i := range before {
		if !slices.Equal(before[i], e.Global[i]) {
			t.Fatalf("Update changed Expect.Global tensor %d", i)
		}
	}
}

// deltas returns small distinct values of the specs' sizes.
func deltas(specs []tensor.Spec) [][]float32 {
	d := make([][]float32, len(specs))
	for i, sp := range specs {
		d[i] = make([]float32, sp.Size())
		for j := range d[i] {
			d[i][j] = float32(math.Cos(float64(3*i+j))) / 100
		}
	}
	return d
}

// oneHot returns zeros of the specs' sizes but v at tensor i, index j.
func oneHot(specs []tensor.Spec, i, j int, v float32) [][]float32 {
	d := make([][]float32, len(specs))
	for k, sp := range specs {
		d[k] = make([]float32, sp.Size())
	}
	d[i][j] = v
	return d
}

// fuzzExpect is a small model, "w" [3,2] and "b" [2], for FuzzUpdate. The
// seed corpus in testdata/fuzz/FuzzUpdate encodes updates against it.
func fuzzExpect() validate.Expect {
	return validate.Expect{
		Job:   "fuzz",
		Round: 3,
		Specs: []tensor.Spec{{Name: "w", Shape: []int64{3, 2}}, {Name: "b", Shape: []int64{2}}},
		Global: [][]float32{
			{0.5, -0.25, 1, 0, 2, -3},
			{0.125, 7},
		},
		MaxNorm:     10,
		MaxExamples: 1000,
		MaxBytes:    512,
	}
}

// fuzzSeeds are updates against fuzzExpect: valid weights, a valid delta,
// and a few rejected ones.
func fuzzSeeds() []*fdxv1.Update {
	e := fuzzExpect()
	valid := func() *fdxv1.Update {
		return &fdxv1.Update{
			Job: e.Job, ClientId: "c1", BaseRound: e.Round, NumExamples: 12,
			Params: tensor.Encode([][]float32{{0.5, -0.5, 1, 0.5, 2, -2}, {0, 6}}, e.Specs),
		}
	}
	delta := valid()
	delta.IsDelta = true
	delta.Params = tensor.Encode([][]float32{{0.1, 0.2, 0.3, 0.4, 0.5, 0.6}, {-1, 1}}, e.Specs)
	nan := valid()
	nan.Params[1] = tensor.FromFloat32("b", []int64{2}, []float32{float32(math.NaN()), 0})
	shape := valid()
	shape.Params[0].Shape = []int64{2, 3}
	stale := valid()
	stale.BaseRound = 2
	far := valid()
	far.Params[0] = tensor.FromFloat32("w", []int64{3, 2}, []float32{100, 0, 0, 0, 0, 0})
	return []*fdxv1.Update{valid(), delta, nan, shape, stale, far}
}

func FuzzUpdate(f *testing.F) {
	for _, u := range fuzzSeeds() {
		b, err := proto.Marshal(u)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		var u fdxv1.Update
		if proto.Unmarshal(data, &u) != nil {
			return // the coordinator rejects it as undecodable
		}
		checkUpdate(t, &u, len(data), fuzzExpect())
		// Without limits only the values themselves bound an update.
		unbounded := fuzzExpect()
		unbounded.MaxNorm, unbounded.MaxExamples, unbounded.MaxBytes = 0, 0, 0
		checkUpdate(t, &u, len(data), unbounded)
	})
}

// checkUpdate checks the invariants of validate.Update's verdict on u.
func checkUpdate(t *testing.T, u *fdxv1.Update, size int, e validate.Expect) {
	t.Helper()
	global := slices.Clone(e.Global)
	for i := range global {
		global[i] = slices.Clone(global[i])
	}
	vals, rej := validate.Update(u, size, e)
	if !slices.EqualFunc(e.Global, global, slices.Equal) {
		t.Fatalf("Update changed the global model to %v", e.Global)
	}
	if rej != nil {
		if !slices.Contains(rules.Reasons(), rej.Reason) {
			t.Fatalf("rejected with unknown reason %q (%v)", rej.Reason, rej)
		}
		if vals != nil {
			t.Fatalf("rejected (%v) but returned values", rej)
		}
		return
	}
	maxExamples := e.MaxExamples
	if maxExamples == 0 {
		maxExamples = accumulator.MaxWeight
	}
	if (e.MaxBytes > 0 && size > e.MaxBytes) || u.GetJob() != e.Job || u.GetBaseRound() != e.Round ||
		u.GetClientId() == "" || len(u.GetClientId()) > rules.MaxClientIDLen ||
		u.GetNumExamples() < 1 || u.GetNumExamples() > maxExamples {
		t.Fatalf("accepted an update of %d bytes, job %q, round %d, client %q, %d examples",
			size, u.GetJob(), u.GetBaseRound(), u.GetClientId(), u.GetNumExamples())
	}
	if len(vals) != len(e.Specs) {
		t.Fatalf("accepted with %d tensors, want %d", len(vals), len(e.Specs))
	}
	var ss float64
	for i, sp := range e.Specs {
		if len(vals[i]) != sp.Size() {
			t.Fatalf("tensor %q has %d values, want %d", sp.Name, len(vals[i]), sp.Size())
		}
		for j, x := range vals[i] {
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
				t.Fatalf("accepted non-finite %v in %q at %d", x, sp.Name, j)
			}
			d := float64(x) - float64(e.Global[i][j])
			ss += d * d
		}
	}
	if n := math.Sqrt(ss); e.MaxNorm > 0 && n > e.MaxNorm {
		t.Fatalf("accepted an update of norm %v over the bound %v", n, e.MaxNorm)
	}
	// Whatever validation accepts, every strategy must accept too:
	// otherwise a round would fail after the update was acknowledged.
	for _, name := range strategy.Names() {
		s, err := strategy.New(strategy.Config{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		r, err := s.Begin(e.Global)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Add(strategy.Update{ClientID: u.GetClientId(), NumExamples: u.GetNumExamples(), Params: vals}); err != nil {
			t.Fatalf("validated update refused by %s: %v", name, err)
		}
		if name != "fedavg" {
			continue
		}
		mean, err := r.Finish()
		if err != nil {
			t.Fatalf("fedavg of one validated update: %v", err)
		}
		if !slices.EqualFunc(mean, vals, slices.Equal) {
			t.Fatalf("fedavg of one update %v is not the update %v", mean, vals)
		}
	}
}

// TestFuzzUpdateCorpus checks that the checked-in seeds of FuzzUpdate get
// the verdicts their names promise, so that the corpus keeps covering both
// acceptance and the rejection paths.
func TestFuzzUpdateCorpus(t *testing.T) {
	want := map[string]rules.Reason{
		"valid_weights":       "",
		"valid_int8_bias":     "",
		"huge_delta":          rules.NormBound,
		"future_round":        rules.FutureRound,
		"huge_shape":          rules.WrongShape,
		"int8_infinite_scale": rules.NonFinite,
		"minus_inf_weight":    rules.NonFinite,
		"no_client_id":        rules.BadClientID,
		"oversize":            rules.Oversize,
		"too_many_examples":   rules.BadNumExamples,
		"wrong_job":           rules.WrongJob,
		"truncated":           rules.Undecodable,
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzUpdate")
	files, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(want) {
		t.Errorf("%s holds %d files, want %d", dir, len(files), len(want))
	}
	for name, reason := range want {
		text, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Error(err)
			continue
		}
		lit, ok := strings.CutPrefix(strings.TrimSpace(string(text)), "go test fuzz v1\n[]byte(")
		if !ok || !strings.HasSuffix(lit, ")") {
			t.Errorf("%s: not a go test fuzz v1 file with one []byte", name)
			continue
		}
		data, err := strconv.Unquote(strings.TrimSuffix(lit, ")"))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		var u fdxv1.Update
		if err := proto.Unmarshal([]byte(data), &u); err != nil {
			if reason != rules.Undecodable {
				t.Errorf("%s: does not decode: %v", name, err)
			}
			continue
		}
		_, rej := validate.Update(&u, len(data), fuzzExpect())
		switch {
		case reason == "" && rej != nil:
			t.Errorf("%s: rejected (%v), want accepted", name, rej)
		case reason != "" && (rej == nil || rej.Reason != reason):
			t.Errorf("%s: verdict %v, want %s", name, rej, reason)
		}
	}
}

// TestDuplicateFromEnvelope: a second update of an admitted client is a
// duplicate whatever its tensors hold, since the envelope is checked before
// the tensors are decoded; a checked but not admitted one is not.
func TestDuplicateFromEnvelope(t *testing.T) {
	e := logregExpect(t)
	r := validate.NewRound(e)
	u := validUpdate(e)
	if _, rej := r.Check(u, proto.Size(u)); rej != nil {
		t.Fatalf("first update: %v", rej)
	}
	// Not admitted (say the channel failed to store it): it may come again.
	if _, rej := r.Check(u, proto.Size(u)); rej != nil {
		t.Fatalf("update checked but not admitted, sent again: %v", rej)
	}
	r.Admit(u)
	garbage := proto.Clone(u).(*fdxv1.Update)
	garbage.Params = []*fdxv1.Tensor{{Name: "junk", Data: []byte{1, 2, 3}}}
	if _, rej := r.Check(garbage, proto.Size(garbage)); rej == nil || rej.Reason != rules.Duplicate {
		t.Errorf("second update with undecodable tensors: %v, want duplicate", rej)
	}
	if r.Count() != 1 || len(r.Admitted()) != 1 || r.Admitted()[0] != u.GetClientId() {
		t.Errorf("Count %d, Admitted %q; want just %q", r.Count(), r.Admitted(), u.GetClientId())
	}
}
