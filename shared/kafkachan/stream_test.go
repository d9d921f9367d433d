package kafkachan

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/fdxkafka/fdxkafka/aggregator/coordinator"
	"github.com/fdxkafka/fdxkafka/aggregator/round"
	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	fdxmodel "github.com/fdxkafka/fdxkafka/shared/model"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
	"github.com/fdxkafka/fdxkafka/shared/updatestream"
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

// sendStreamUpdates sends the job's updates: the bad ones first (when
// asked), so that a round sees them before it closes, then the good ones.
// It returns the number of good ones.
func sendStreamUpdates(t *testing.T, ctx context.Context, brokers, job string, withBad bool) int {
	t.Helper()
	good, whole, bad := streamUpdates(t, job)
	var msgs []*kgo.Record
	transfer := func(u *fdxv1.Update) ([]*kgo.Record, *kgo.Record) {
		return updateTransferSized(t, job, u, streamChunk)
	}
	if withBad {
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
	}
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
	return len(good) + 1
}

// streamServer opens the job's server: one updates partition, so that
// updates are read in the order sent.
func streamServer(t *testing.T, ctx context.Context, brokers, job string) *Server {
	t.Helper()
	s, err := NewServer(ctx, ServerOptions{
		Options:      Options{Brokers: brokers, Job: job},
		TopicOptions: TopicOptions{UpdatePartitions: 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// runStreamRound runs the one-round job over srv.
func runStreamRound(ctx context.Context, t *testing.T, srv channel.Server, job string, clients int, hold bool) (*coordinator.Result, error) {
	strat, err := strategy.New(strategy.Config{Name: "fedavg"})
	if err != nil {
		t.Fatal(err)
	}
	co, err := coordinator.New(coordinator.Config{
		Job: round.Job{ID: job, NumRounds: 1, MinClients: clients, MaxNorm: 10,
			Train: &fdxv1.TrainConfig{Model: fdxmodel.Kind2NN, Seed: streamSeed}, InDim: streamInDim, Classes: streamLabels},
		HoldUpdates: hold,
	}, srv, strat, nil, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return co.Run(ctx)
}

// runStreamJob runs the job once, streaming or holding updates, and returns
// its result and the most update bytes the server held at once.
func runStreamJob(t *testing.T, ctx context.Context, brokers string, hold bool) (*coordinator.Result, int64) {
	job := kafkatest.Job(t)
	s := streamServer(t, ctx, brokers, job)
	defer s.Close()
	n := sendStreamUpdates(t, ctx, brokers, job, true)
	res, err := runStreamRound(ctx, t, s, job, n, hold)
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
}

// envStreamKill runs TestStreamedFoldKilled's child aggregator:
// "brokers|job".
const envStreamKill = "FDX_TEST_STREAM_KILL_CHILD"

// killingServer kills its process with SIGKILL half way through pass 2 of
// the second streamed update: the round holds one update and part of
// another.
type killingServer struct {
	*Server
	streamed int
}

func (k *killingServer) Next(ctx context.Context) (channel.Delivery, error) {
	d, err := k.Server.Next(ctx)
	if d.Stream != nil {
		if k.streamed++; k.streamed == 2 {
			replay := d.Stream.Replay
			d.Stream.Replay = func(ctx context.Context, sink updatestream.Sink) error {
				return replay(ctx, &killAfter{Sink: sink, left: 100_000})
			}
		}
	}
	return d, err
}

// killAfter passes values on until left are folded, then kills the process.
type killAfter struct {
	updatestream.Sink
	left int
}

func (k *killAfter) Values(i, off int, vals []float32) error {
	if k.left -= len(vals); k.left < 0 {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
	return k.Sink.Values(i, off, vals)
}

// TestStreamedFoldKilled kills the aggregator with SIGKILL while it folds
// a streamed update chunk by chunk (pass 2). Its round was never published:
// the restarted aggregator resumes from the last committed round, reads
// the updates again from the committed offsets and publishes the model a
// run without the kill publishes, bit for bit.
func TestStreamedFoldKilled(t *testing.T) {
	if v := os.Getenv(envStreamKill); v != "" {
		brokers, job, _ := strings.Cut(v, "|")
		ctx := testCtx(t, 120*time.Second)
		s := streamServer(t, ctx, brokers, job)
		_, err := runStreamRound(ctx, t, &killingServer{Server: s}, job, 7, false)
		t.Fatalf("Run returned %v; the process should have been killed in pass 2", err)
	}
	brokers := kafkatest.Brokers(t)
	ctx := testCtx(t, 240*time.Second)
	job := kafkatest.Job(t)
	s := streamServer(t, ctx, brokers, job)
	n := sendStreamUpdates(t, ctx, brokers, job, false)
	s.Close()

	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestStreamedFoldKilled$", "-test.count=1")
	cmd.Env = append(os.Environ(), envStreamKill+"="+brokers+"|"+job)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child aggregator = %v; want killed by SIGKILL in pass 2\n%s", err, out)
	}

	s2 := streamServer(t, ctx, brokers, job)
	defer s2.Close()
	if m, err := s2.Latest(ctx, nil); err != nil || m.GetRound() != 1 {
		t.Fatalf("Latest after the kill = round %d, %v; want the initial model, round 1", m.GetRound(), err)
	}
	restarted, err := runStreamRound(ctx, t, s2, job, n, false)
	if err != nil {
		t.Fatalf("restarted aggregator: %v", err)
	}
	if restarted.Resumed != 1 {
		t.Errorf("restart resumed from round %d, want 1", restarted.Resumed)
	}

	refJob := kafkatest.Job(t) + "-ref"
	ref := streamServer(t, ctx, brokers, refJob)
	defer ref.Close()
	sendStreamUpdates(t, ctx, brokers, refJob, false)
	want, err := runStreamRound(ctx, t, ref, refJob, n, true)
	if err != nil {
		t.Fatal(err)
	}
	a, b := restarted.Final.GetParams(), want.Final.GetParams()
	if len(a) != len(b) || len(a) == 0 {
		t.Fatalf("final models of %d and %d tensors", len(a), len(b))
	}
	for i := range a {
		if !slices.Equal(a[i].GetData(), b[i].GetData()) {
			t.Fatalf("tensor %s: the model after the kill differs from the model of an uninterrupted run", a[i].GetName())
		}
	}
}
