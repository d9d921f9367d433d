package validate_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"

	"google.golang.org/protobuf/proto"

	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	"github.com/fdxkafka/fdxkafka/aggregator/validate"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/model"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// check validates u as the only update of the round e describes and
// returns its values and the norm the validator measured.
func check(u *fdxv1.Update, e validate.Expect) (*validate.Values, float64, *rules.Rejection) {
	r := validate.NewRound(e)
	v, rej := r.CheckValues(u, proto.Size(u))
	if rej != nil {
		return nil, 0, rej
	}
	r.Admit(u)
	return v, r.AdmittedNorms()[0], nil
}

// refWeights is weights as it was before the values were read in place:
// tensor.Decode's full copy, then one pass per check. The tests below hold
// the view path to its verdicts, details and values, bit for bit.
func refWeights(u *fdxv1.Update, e validate.Expect) ([][]float32, float64, *rules.Rejection) {
	vals, err := tensor.Decode(u.GetParams(), e.Specs)
	if err != nil {
		if refIsNonFinite(u.GetParams(), e.Specs) {
			return nil, 0, rules.Reject(rules.NonFinite, "%v", err)
		}
		return nil, 0, rules.Reject(rules.WrongShape, "%v", err)
	}
	async := e.Async != nil
	if async {
		for i := range vals {
			for j, x := range vals[i] {
				if f := float32(float64(e.Global[i][j]) + float64(x)); math.IsInf(float64(f), 0) {
					return nil, 0, rules.Reject(rules.NonFinite, "global plus delta overflows in %q", e.Specs[i].Name)
				}
			}
		}
	}
	if u.GetIsDelta() && !async {
		for i := range vals {
			for j := range vals[i] {
				vals[i][j] += e.Global[i][j]
				if f := float64(vals[i][j]); math.IsInf(f, 0) || math.IsNaN(f) {
					return nil, 0, rules.Reject(rules.NonFinite, "global plus delta overflows in %q", e.Specs[i].Name)
				}
			}
		}
	}
	var ss float64
	for i := range vals {
		for j, x := range vals[i] {
			d := float64(x)
			if !async {
				d -= float64(e.Global[i][j])
			}
			ss += d * d
		}
	}
	norm := math.Sqrt(ss)
	if e.MaxNorm > 0 && norm > e.MaxNorm {
		return nil, 0, rules.Reject(rules.NormBound, "update norm %.4g over the bound %.4g", norm, e.MaxNorm)
	}
	var maxAbs float64
	for _, v := range vals {
		for _, x := range v {
			maxAbs = max(maxAbs, math.Abs(float64(x)))
		}
	}
	if t := float64(u.GetNumExamples()) * maxAbs; t >= math.Ldexp(1, rules.MaxTermLog2) {
		return nil, 0, rules.Reject(rules.OutOfRange, "num_examples %d times |value| %.4g is not below 2^%d", u.GetNumExamples(), maxAbs, rules.MaxTermLog2)
	}
	return vals, norm, nil
}

func refIsNonFinite(ts []*fdxv1.Tensor, specs []tensor.Spec) bool {
	if len(ts) != len(specs) {
		return false
	}
	for i, t := range ts {
		if t.GetName() != specs[i].Name || fmt.Sprint(t.GetShape()) != fmt.Sprint(specs[i].Shape) {
			return false
		}
		v, err := tensor.Float32s(nil, t)
		if err != nil || len(v) != specs[i].Size() {
			return false
		}
	}
	return true
}

// ingestExpect is a logistic regression round with a seeded global model.
func ingestExpect(t testing.TB) validate.Expect {
	t.Helper()
	specs, err := model.SpecsFor(model.KindLogReg, 784, 10)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	global := make([][]float32, len(specs))
	for i, sp := range specs {
		global[i] = make([]float32, sp.Size())
		for j := range global[i] {
			global[i][j] = float32(rng.NormFloat64() / 10)
		}
	}
	return validate.Expect{Job: "ingest", Round: 2, Specs: specs, Global: global, MaxNorm: 1e3}
}

// perturbed is global plus seeded noise of standard deviation sd.
func perturbed(rng *rand.Rand, global [][]float32, sd float64) [][]float32 {
	out := make([][]float32, len(global))
	for i, g := range global {
		out[i] = make([]float32, len(g))
		for j, x := range g {
			out[i][j] = x + float32(rng.NormFloat64()*sd)
		}
	}
	return out
}

// wire returns u as the aggregator receives it: marshalled and decoded
// again, so that its tensors' bytes are the protobuf decoder's own.
func wire(t testing.TB, u *fdxv1.Update) *fdxv1.Update {
	t.Helper()
	b, err := proto.Marshal(u)
	if err != nil {
		t.Fatal(err)
	}
	out := &fdxv1.Update{}
	if err := proto.Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// unaligned moves every tensor's data to an odd address, where it cannot
// be read in place.
func unaligned(u *fdxv1.Update) *fdxv1.Update {
	u = proto.Clone(u).(*fdxv1.Update)
	for _, t := range u.Params {
		buf := make([]byte, len(t.Data)+1)
		copy(buf[1:], t.Data)
		t.Data = buf[1:]
	}
	return u
}

// ingestCases are updates that take each path of weights: full float32
// weights (read in place), deltas, float16 and int8, asynchronous deltas,
// and each way to be refused.
func ingestCases(t testing.TB) map[string]struct {
	u *fdxv1.Update
	e validate.Expect
} {
	e := ingestExpect(t)
	rng := rand.New(rand.NewPCG(5, 6))
	base := func() *fdxv1.Update {
		return &fdxv1.Update{Job: e.Job, ClientId: "c1", BaseRound: e.Round, NumExamples: 30,
			Params: tensor.Encode(perturbed(rng, e.Global, 1e-2), e.Specs)}
	}
	delta := func(dtype fdxv1.DType) *fdxv1.Update {
		u := base()
		d := perturbed(rng, make2(e.Global), 1e-2)
		ts, err := tensor.EncodeAs(d, e.Specs, dtype)
		if err != nil {
			t.Fatal(err)
		}
		u.IsDelta, u.Params = true, ts
		return u
	}
	cases := map[string]struct {
		u *fdxv1.Update
		e validate.Expect
	}{}
	add := func(name string, u *fdxv1.Update, e validate.Expect) {
		cases[name] = struct {
			u *fdxv1.Update
			e validate.Expect
		}{wire(t, u), e}
	}
	add("float32 weights", base(), e)
	add("float32 delta", delta(fdxv1.DType_DTYPE_FLOAT32), e)
	add("float16 delta", delta(fdxv1.DType_DTYPE_FLOAT16), e)
	add("int8 delta", delta(fdxv1.DType_DTYPE_INT8), e)
	f16 := base()
	f16.Params[1] = tensor.FromFloat16(e.Specs[1].Name, e.Specs[1].Shape, e.Global[1])
	add("float16 weights", f16, e)
	i8 := base()
	i8.Params[0] = tensor.FromInt8(e.Specs[0].Name, e.Specs[0].Shape, e.Global[0])
	add("int8 weights", i8, e)
	async := e
	async.Async = &validate.Async{}
	add("async float32 delta", delta(fdxv1.DType_DTYPE_FLOAT32), async)
	add("async int8 delta", delta(fdxv1.DType_DTYPE_INT8), async)

	nan := base()
	nan.Params[0] = tensor.FromFloat32(e.Specs[0].Name, e.Specs[0].Shape, withValue(e.Global[0], 77, float32(math.NaN())))
	add("NaN", nan, e)
	inf := base()
	inf.Params[1] = tensor.FromFloat32(e.Specs[1].Name, e.Specs[1].Shape, withValue(e.Global[1], 9, float32(math.Inf(-1))))
	add("-Inf in the last tensor", inf, e)
	nanShape := base()
	nanShape.Params[0] = tensor.FromFloat32(e.Specs[0].Name, e.Specs[0].Shape, withValue(e.Global[0], 1, float32(math.NaN())))
	nanShape.Params[1].Data = nanShape.Params[1].Data[4:]
	add("NaN and a short tensor", nanShape, e)
	short := base()
	short.Params[0].Data = short.Params[0].Data[:len(short.Params[0].Data)-4]
	add("short tensor", short, e)
	odd := base()
	odd.Params[0].Data = append(odd.Params[0].Data, 0)
	add("data not a multiple of 4", odd, e)
	shape := base()
	shape.Params[0].Shape = []int64{784, 10}
	add("transposed shape", shape, e)
	few := base()
	few.Params = few.Params[:1]
	add("one tensor missing", few, e)
	name := base()
	name.Params[1].Name = "bias"
	add("wrong name", name, e)
	dtype := base()
	dtype.Params[1].Dtype = fdxv1.DType(42)
	add("unknown dtype", dtype, e)
	far := base()
	far.Params = tensor.Encode(perturbed(rng, e.Global, 100), e.Specs)
	add("norm over the bound", far, e)
	huge := base()
	huge.NumExamples = rules.MaxWeight
	huge.Params = tensor.Encode(withValueAll(e.Global, 0, 7, 0x1p60), e.Specs)
	noNorm := e
	noNorm.MaxNorm = 0
	add("out of range", huge, noNorm)
	over := delta(fdxv1.DType_DTYPE_FLOAT32)
	over.Params[0] = tensor.FromFloat32(e.Specs[0].Name, e.Specs[0].Shape, withValue(make2(e.Global)[0], 5, math.MaxFloat32))
	bigGlobal := noNorm
	bigGlobal.Global = withValueAll(e.Global, 0, 5, math.MaxFloat32)
	add("delta overflows the global", over, bigGlobal)
	asyncOver := bigGlobal
	asyncOver.Async = &validate.Async{}
	add("async delta overflows the global", over, asyncOver)
	i8inf := base()
	i8inf.Params[1] = tensor.FromInt8(e.Specs[1].Name, e.Specs[1].Shape, e.Global[1])
	i8inf.Params[1].Scale = float32(math.Inf(1))
	add("int8 infinite scale", i8inf, e)
	return cases
}

func make2(like [][]float32) [][]float32 {
	out := make([][]float32, len(like))
	for i := range like {
		out[i] = make([]float32, len(like[i]))
	}
	return out
}

func withValue(xs []float32, j int, v float32) []float32 {
	out := append([]float32(nil), xs...)
	out[j] = v
	return out
}

func withValueAll(vals [][]float32, i, j int, v float32) [][]float32 {
	out := make([][]float32, len(vals))
	for k := range vals {
		out[k] = append([]float32(nil), vals[k]...)
	}
	out[i][j] = v
	return out
}

// TestWeightsMatchDecodePath: for every path, reading in place (and, for
// the same bytes at an odd address, decoding) gives the verdict, the
// detail and the values, bit for bit, that the full decode gave, and its
// norm to rounding.
func TestWeightsMatchDecodePath(t *testing.T) {
	// The verdict each case is built for, so that the cases keep covering
	// every path.
	want := map[string]rules.Reason{
		"float32 weights": "", "float32 delta": "", "float16 delta": "", "int8 delta": "",
		"float16 weights": "", "int8 weights": "", "async float32 delta": "", "async int8 delta": "",
		"NaN": rules.NonFinite, "-Inf in the last tensor": rules.NonFinite, "int8 infinite scale": rules.NonFinite,
		"delta overflows the global": rules.NonFinite, "async delta overflows the global": rules.NonFinite,
		"NaN and a short tensor": rules.WrongShape, "short tensor": rules.WrongShape,
		"data not a multiple of 4": rules.WrongShape, "transposed shape": rules.WrongShape,
		"one tensor missing": rules.WrongShape, "wrong name": rules.WrongShape, "unknown dtype": rules.WrongShape,
		"norm over the bound": rules.NormBound, "out of range": rules.OutOfRange,
	}
	accepted := 0
	norms := map[string]float64{}
	cases := ingestCases(t)
	if len(cases) != len(want) {
		t.Fatalf("%d cases, %d verdicts", len(cases), len(want))
	}
	for name, c := range cases {
		if _, _, rej := refWeights(c.u, c.e); reason(rej) != want[name] {
			t.Errorf("%s: the decode path's verdict %v, want %q", name, rej, want[name])
		}
		for _, variant := range []string{"aligned", "unaligned"} {
			u := c.u
			if variant == "unaligned" {
				u = unaligned(u)
			}
			t.Run(name+"/"+variant, func(t *testing.T) {
				wantVals, wantNorm, wantRej := refWeights(u, c.e)
				vals, norm, rej := check(u, c.e)
				if reason(rej) != reason(wantRej) {
					t.Fatalf("verdict %v, want %v", rej, wantRej)
				}
				// One detail changed on purpose: with a NaN in one tensor and
				// a wrong size in a later one, the wrong_shape verdict used to
				// carry the NaN's description; it now names the wrong size.
				if name != "NaN and a short tensor" && fmt.Sprint(rej) != fmt.Sprint(wantRej) {
					t.Fatalf("verdict %v, want %v", rej, wantRej)
				}
				if rej != nil {
					return
				}
				accepted++
				// The norm sums in four lanes now (validate.sumSquares), not
				// in one: the same to rounding, and the same bits read in
				// place or from the unaligned copy.
				if math.Abs(norm-wantNorm) > 1e-12*wantNorm {
					t.Errorf("norm %v, want %v", norm, wantNorm)
				}
				if variant == "aligned" {
					norms[name] = norm
				} else if math.Float64bits(norm) != math.Float64bits(norms[name]) {
					t.Errorf("norm %v read from an odd address, %v in place", norm, norms[name])
				}
				if !sameBits(vals.Params(), wantVals) {
					t.Errorf("values differ from the decode path's")
				}
				// Block by block, in the accumulator's blocks and others.
				for _, blk := range []int{256, 7, 10000} {
					for i, want := range wantVals {
						for off := 0; off < len(want); off += blk {
							scratch := make([]float32, min(blk, len(want)-off))
							if !sameBits([][]float32{vals.Block(i, off, scratch)}, [][]float32{want[off : off+len(scratch)]}) {
								t.Fatalf("Block(%d, %d) of %d differs from the decode path's", i, off, len(scratch))
							}
						}
					}
				}
			})
		}
	}
	if accepted == 0 {
		t.Fatal("no case accepted")
	}
}

func reason(r *rules.Rejection) rules.Reason {
	if r == nil {
		return ""
	}
	return r.Reason
}

func sameBits(a, b [][]float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if len(a[i]) != len(b[i]) {
			return false
		}
		for j := range a[i] {
			if math.Float32bits(a[i][j]) != math.Float32bits(b[i][j]) {
				return false
			}
		}
	}
	return true
}

// TestViewsAreReadInPlaceAndNeverWritten: full float32 weights are the
// message's own bytes (no copy), and checking and folding them, with
// every averaging and robust strategy, leaves those bytes as they were.
func TestViewsAreReadInPlaceAndNeverWritten(t *testing.T) {
	e := ingestExpect(t)
	rng := rand.New(rand.NewPCG(7, 8))
	u := wire(t, &fdxv1.Update{Job: e.Job, ClientId: "c1", BaseRound: e.Round, NumExamples: 30,
		Params: tensor.Encode(perturbed(rng, e.Global, 1e-2), e.Specs)})
	before := proto.Clone(u).(*fdxv1.Update)
	v, _, rej := check(u, e)
	if rej != nil {
		t.Fatal(rej)
	}
	vals := v.Params()
	if _, aliased, _ := tensor.View(u.Params[0]); !aliased {
		t.Skip("this machine cannot read float32 tensors in place (big-endian)")
	}
	if &vals[0][0] != (*float32)(unsafePointer(u.Params[0].Data)) {
		t.Fatal("float32 weights were copied, want them read in place")
	}
	for _, name := range strategy.Names() {
		s, err := strategy.New(strategy.Config{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		r, err := s.Begin(e.Global)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Add(strategy.Update{ClientID: "c1", NumExamples: 30, Checked: v}); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		_, _ = r.Finish() // Krum and adaptive DP refuse one update: only the bytes matter here
		if !proto.Equal(u, before) {
			t.Fatalf("%s changed the update's bytes", name)
		}
	}
}

// TestFoldPathsBitIdentical: a round of updates (full float32 weights,
// float16 and int8 deltas, int8 weights; light and heavy) gives the same model, bit
// for bit, whether the strategies fold the validated values in place and
// block by block (Checked), the same bytes at odd addresses (decoded block
// by block), or the old decode path's full copies (Params, through the
// checked Accumulator.Add); in any order.
func TestFoldPathsBitIdentical(t *testing.T) {
	e := ingestExpect(t)
	e.MaxNorm = 0
	rng := rand.New(rand.NewPCG(9, 10))
	var ups []*fdxv1.Update
	for i := range 15 {
		u := &fdxv1.Update{Job: e.Job, ClientId: fmt.Sprint("c", i), BaseRound: e.Round, NumExamples: int64(1 + i*i*1000)}
		if i >= 13 {
			// Heavier than one fold takes (the accumulator's maxPartWeight,
			// 2^29 − 1): folded in parts, each reading the values again.
			u.NumExamples = rules.MaxWeight - int64(i)
		}
		var err error
		switch i % 5 {
		case 0, 1:
			u.Params = tensor.Encode(perturbed(rng, e.Global, 1e-2), e.Specs)
		case 2, 3:
			u.IsDelta = true
			u.Params, err = tensor.EncodeAs(perturbed(rng, make2(e.Global), 1e-2), e.Specs, []fdxv1.DType{fdxv1.DType_DTYPE_FLOAT16, fdxv1.DType_DTYPE_INT8}[i%5-2])
		case 4:
			u.Params, err = tensor.EncodeAs(perturbed(rng, e.Global, 1e-2), e.Specs, fdxv1.DType_DTYPE_INT8)
		}
		if err != nil {
			t.Fatal(err)
		}
		ups = append(ups, wire(t, u))
	}
	for _, name := range []string{"fedavg", "fedadam", "median"} {
		model := func(order []int, path string) [][]float32 {
			s, err := strategy.New(strategy.Config{Name: name})
			if err != nil {
				t.Fatal(err)
			}
			r, err := s.Begin(e.Global)
			if err != nil {
				t.Fatal(err)
			}
			for _, i := range order {
				u := ups[i]
				su := strategy.Update{ClientID: u.ClientId, NumExamples: u.NumExamples}
				switch path {
				case "decode":
					vals, _, rej := refWeights(u, e)
					if rej != nil {
						t.Fatal(rej)
					}
					su.Params = vals
				case "unaligned":
					u = unaligned(u)
					fallthrough
				default:
					v, _, rej := check(u, e)
					if rej != nil {
						t.Fatal(rej)
					}
					su.Checked = v
				}
				if err := r.Add(su); err != nil {
					t.Fatal(err)
				}
			}
			m, err := r.Finish()
			if err != nil {
				t.Fatal(err)
			}
			return m
		}
		want := model(rng.Perm(len(ups)), "decode")
		for _, path := range []string{"checked", "unaligned"} {
			if got := model(rng.Perm(len(ups)), path); !sameBits(got, want) {
				t.Errorf("%s: the %s path gives another model than the decode path", name, path)
			}
		}
	}
}

// BenchmarkIngestPath is the aggregator's work per logistic regression
// update once the record is decoded: check the values and fold them into a
// FedAvg round. "decode" is what the fleet's raw consumer does with the
// same update (tensor.Float32s into a reused buffer); "before" is the
// former path (tensor.Decode's full copy, a pass per check, then the
// checked Accumulator.Add), "after" the validator's Values folded by the
// trusted path (Round.CheckValues, strategy.Update.Checked).
func BenchmarkIngestPath(b *testing.B) {
	cases := ingestCases(b)
	for _, bc := range []struct{ name, cas string }{
		{"float32", "float32 weights"},
		{"float32-delta", "float32 delta"},
		{"float16-delta", "float16 delta"},
		{"int8-delta", "int8 delta"},
	} {
		c := cases[bc.cas]
		bytes := int64(proto.Size(c.u))
		b.Run(bc.name+"/decode", func(b *testing.B) {
			b.SetBytes(bytes)
			var buf []float32
			for b.Loop() {
				for _, t := range c.u.Params {
					var err error
					if buf, err = tensor.Float32s(buf[:0], t); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
		for _, path := range []string{"before", "after"} {
			b.Run(bc.name+"/"+path, func(b *testing.B) {
				b.SetBytes(bytes)
				b.ReportAllocs()
				s, err := strategy.New(strategy.Config{Name: "fedavg"})
				if err != nil {
					b.Fatal(err)
				}
				r, err := s.Begin(c.e.Global)
				if err != nil {
					b.Fatal(err)
				}
				// One validator for the benchmark: an update of a client
				// already checked (not admitted) is checked again in full.
				check := validate.NewRound(c.e)
				size := proto.Size(c.u)
				for b.Loop() {
					su := strategy.Update{ClientID: "c1", NumExamples: c.u.NumExamples}
					if path == "before" {
						vals, _, rej := refWeights(c.u, c.e)
						if rej != nil {
							b.Fatal(rej)
						}
						su.Params = vals
					} else {
						v, rej := check.CheckValues(c.u, size)
						if rej != nil {
							b.Fatal(rej)
						}
						su.Checked = v
					}
					if err := r.Add(su); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func unsafePointer(b []byte) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(b)) }
