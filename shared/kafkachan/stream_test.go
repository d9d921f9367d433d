package kafkachan

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"google.golang.org/protobuf/proto"

	"github.com/fdxkafka/fdxkafka/aggregator/coordinator"
	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	fdxmodel "github.com/fdxkafka/fdxkafka/shared/model"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// streamJob is a one-round FedAvg job of the 2NN (199,210 parameters, an
// update of 797 KB) whose clients send 32 KiB chunks.
const (
	streamChunk  = 32 << 10
	streamInDim  = 784
	streamLabels = 10
	streamSeed   = 11
)

// streamUpdates returns the job's good updates and bad ones (by client id).
// Good: float32 chunked; a delta in float16, chunked; int8, chunked (not
// streamable: read again whole); one sent whole (one record).
func streamUpdates(t *testing.T, job string) (good []*fdxv1.Update, whole *fdxv1.Update, bad map[string]*fdxv1.Update) {
	t.Helper()
	net, err := fdxmodel.New(fdxmodel.Kind2NN, streamInDim, streamLabels, streamSeed)
	if err != nil {
		t.Fatal(err)
	}
	specs, err := fdxmodel.SpecsFor(fdxmodel.Kind2NN, streamInDim, streamLabels)
	if err != nil {
		t.Fatal(err)
	}
	global := net.Params()
	near := func(seed uint64, step float64) [][]float32 {
		r := rand.New(rand.NewPCG(seed, 3))
		out := make([][]float32, len(global))
		for i, g := range global {
			out[i] = make([]float32, len(g))
			for j := range g {
				out[i][j] = g[j] + float32(r.NormFloat64()*step)
			}
		}
		return out
	}
	upd := func(client string, n int64, ts []*fdxv1.Tensor) *fdxv1.Update {
		return &fdxv1.Update{Job: job, ClientId: client, BaseRound: 1, NumExamples: n, Params: ts}
	}
	for k := range 4 {
		good = append(good, upd("c"+string(rune('0'+k)), int64(100+37*k), tensor.Encode(near(uint64(k), 1e-3), specs)))
	}
	delta := near(50, 1e-3)
	for i := range delta {
		for j := range delta[i] {
			delta[i][j] -= global[i][j]
		}
	}
	ts, _ := tensor.EncodeAs(delta, specs, fdxv1.DType_DTYPE_FLOAT16)
	d := upd("delta16", 300, ts)
	d.IsDelta = true
	good = append(good, d)
	ts, _ = tensor.EncodeAs(near(51, 1e-3), specs, fdxv1.DType_DTYPE_INT8)
	good = append(good, upd("int8", 250, ts))
	whole = upd("whole", 90, tensor.Encode(near(52, 1e-3), specs))

	bad = map[string]*fdxv1.Update{}
	for _, id := range []string{"corrupt", "missing", "forged"} {
		bad[id] = upd(id, 10, tensor.Encode(near(60, 1e-3), specs))
	}
	bad["far"] = upd("far", 10, tensor.Encode(near(61, 0.1), specs)) // norm ≈ 45
	nan := near(62, 1e-3)
	last := nan[len(nan)-1]
	last[len(last)-1] = float32(math.NaN())
	bad["nan"] = upd("nan", 10, tensor.Encode(nan, specs))
	return good, whole, bad
}

// runStreamJob runs the job once, streaming or holding updates, and returns
// its result and the most update bytes the server held at once.
func runStreamJob(t *testing.T, ctx context.Context, brokers string, hold bool) (*coordinator.Result, int64) {
	job := kafkatest.Job(t)
	s, err := NewServer(ctx, ServerOptions{
		Options:      Options{Brokers: brokers, Job: job},
		TopicOptions: TopicOptions{UpdatePartitions: 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	good, whole, bad := streamUpdates(t, job)

	// The bad ones first, so the round sees them before it closes.
	var msgs []*kafka.Message
	transfer := func(u *fdxv1.Update) ([]*kafka.Message, *kafka.Message) {
		b, err := proto.Marshal(u)
		if err != nil {
			t.Fatal(err)
		}
		chunks, man, err := transferRecords(UpdatesTopic(job), kafka.PartitionAny, []byte(u.GetClientId()), b, streamChunk)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range chunks {
			c.Value = slices.Clone(c.Value)
		}
		return chunks, man
	}
	chunks, man := transfer(bad["corrupt"])
	chunks[len(chunks)/2].Value[7] ^= 1
	msgs = append(append(msgs, chunks...), man)
	chunks, man = transfer(bad["missing"])
	msgs = append(append(msgs, chunks[:3]...), chunks[4:]...)
	msgs = append(msgs, man)
	chunks, man = transfer(bad["forged"])
	m := &fdxv1.TransferManifest{}
	if err := proto.Unmarshal(man.Value, m); err != nil {
		t.Fatal(err)
	}
	m.Sha256[5] ^= 1
	man.Value, _ = proto.Marshal(m)
	msgs = append(append(msgs, chunks...), man)
	for _, id := range []string{"far", "nan"} {
		chunks, man = transfer(bad[id])
		msgs = append(append(msgs, chunks...), man)
	}
	rawProduce(ctx, t, brokers, msgs)

	submit := func(u *fdxv1.Update, chunk int) {
		c, err := Dial(ctx, ClientOptions{Options: Options{Brokers: brokers, Job: job, ChunkBytes: chunk}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Submit(ctx, u); err != nil {
			t.Fatalf("submit %s: %v", u.GetClientId(), err)
		}
	}
	for _, u := range good {
		submit(u, streamChunk)
	}
	submit(whole, 0)

	strat, err := strategy.New(strategy.Config{Name: "fedavg"})
	if err != nil {
		t.Fatal(err)
	}
	co, err := coordinator.New(coordinator.Config{
		Job: job, NumRounds: 1, MinClients: len(good) + 1, MaxNorm: 10,
		Train: &fdxv1.TrainConfig{Model: fdxmodel.Kind2NN, Seed: streamSeed}, InDim: streamInDim, Classes: streamLabels,
		HoldUpdates: hold,
	}, s, strat, nil, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	res, err := co.Run(ctx)
	if err != nil {
		t.Fatalf("run (hold %v): %v", hold, err)
	}
	_, peak := s.HeldUpdateBytes()
	return res, peak
}

// TestStreamedFold runs the same updates, good and bad, through a round
// that streams chunked updates and one that holds them whole: the same
// rejections under the same reasons, the same contributors, a bit-identical
// model; and the streaming server never held more than a few chunks' worth
// of an update while the other held whole ones.
func TestStreamedFold(t *testing.T) {
	brokers := kafkatest.Brokers(t)
	ctx := testCtx(t, 240*time.Second)
	streamed, streamPeak := runStreamJob(t, ctx, brokers, false)
	held, holdPeak := runStreamJob(t, ctx, brokers, true)

	wantRejected := map[string]int64{"checksum": 2, "incomplete": 1, "norm_bound": 1, "non_finite": 1}
	for name, res := range map[string]*coordinator.Result{"streamed": streamed, "held": held} {
		for k, v := range wantRejected {
			if res.Rejected[k] != v {
				t.Errorf("%s: rejected %v; want %v", name, res.Rejected, wantRejected)
				break
			}
		}
		if got := res.Rounds[0].Contributors; len(got) != 7 || slices.Contains(got, "far") || slices.Contains(got, "nan") {
			t.Errorf("%s: contributors %v", name, got)
		}
	}
	a, b := streamed.Final.GetParams(), held.Final.GetParams()
	if len(a) != len(b) || len(a) == 0 {
		t.Fatalf("final models of %d and %d tensors", len(a), len(b))
	}
	for i := range a {
		if !slices.Equal(a[i].GetData(), b[i].GetData()) {
			t.Fatalf("tensor %s: streamed model differs from the model of whole updates", a[i].GetName())
		}
	}
	const updateBytes = 199_210 * 4
	if streamPeak > 256<<10 {
		t.Errorf("streaming: held up to %d bytes of updates of %d bytes; want O(chunk)", streamPeak, updateBytes)
	}
	if holdPeak < updateBytes {
		t.Errorf("holding: peak %d bytes, below one update's %d: the counter misses what it should count", holdPeak, updateBytes)
	}
	t.Logf("peak update bytes held: streaming %d, holding %d", streamPeak, holdPeak)
	_ = errors.New
}
