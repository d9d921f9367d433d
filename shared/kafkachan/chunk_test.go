package kafkachan

import (
	"context"
	"crypto/ed25519"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
	"github.com/fdxkafka/fdxkafka/shared/trust"
)

// randomModel is a model of n seeded random float32 values.
func randomModel(job string, round int64, n int) *fdxv1.GlobalModel {
	r := rand.New(rand.NewPCG(uint64(round), 7))
	vals := make([]float32, n)
	for i := range vals {
		vals[i] = float32(r.NormFloat64())
	}
	return &fdxv1.GlobalModel{Job: job, Round: round, Params: []*fdxv1.Tensor{tensor.FromFloat32("w", []int64{int64(n)}, vals)}}
}

// TestChunkedModelAndUpdate moves an 8 MB signed model and an 8 MB
// authenticated update through the broker in 1 MiB chunks, while the
// topics stay at one chunk's size.
func TestChunkedModelAndUpdate(t *testing.T) {
	brokers, job := kafkatest.Brokers(t), kafkatest.Job(t)
	ctx := testCtx(t, 180*time.Second)
	const n = 2_000_000 // 8 MB of float32
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	signer := trust.NewSigner(priv)
	verifier := trust.NewVerifier(signer.Public())
	sopt := ServerOptions{
		Options:      Options{Brokers: brokers, Job: job, Verifier: verifier},
		TopicOptions: TopicOptions{UpdatePartitions: 3, MaxMessageBytes: MessageBytesFor(n)},
		Signer:       signer,
		Tokens:       map[string]string{"c1": "token-1"},
	}
	s, err := NewServer(ctx, sopt)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m1 := randomModel(job, 1, n)
	if err := s.Publish(ctx, m1); err != nil {
		t.Fatalf("Publish 8 MB model: %v", err)
	}
	for _, topic := range []string{ModelTopic(job), UpdatesTopic(job)} {
		if got := topicMaxBytes(ctx, t, brokers, topic); got > 2<<20 {
			t.Errorf("%s max.message.bytes = %d; want one chunk's size, not the model's", topic, got)
		}
	}
	copt := ClientOptions{Options: Options{Brokers: brokers, Job: job, Verifier: verifier}, Token: "token-1"}
	c, err := Dial(ctx, copt)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := c.Model(ctx, 1)
	if err != nil || !proto.Equal(got, m1) {
		t.Fatalf("client Model(1) = round %d, %v; want model 1 bit for bit", got.GetRound(), err)
	}

	// Model 2 arrives while the client waits for it.
	m2 := randomModel(job, 2, n)
	published := make(chan error, 1)
	go func() { published <- s.Publish(ctx, m2) }()
	got, err = c.Model(ctx, 2)
	if err != nil || !proto.Equal(got, m2) {
		t.Fatalf("client Model(2) = round %d, %v; want model 2 bit for bit", got.GetRound(), err)
	}
	if err := <-published; err != nil {
		t.Fatalf("Publish 2: %v", err)
	}
	// A new client starts with the chunked model on top of the log.
	c2 := dial(t, brokers, job)
	if got, err := c2.Model(ctx, 0); err != nil || !proto.Equal(got, m2) {
		t.Fatalf("cold client Model(0) = round %d, %v; want model 2", got.GetRound(), err)
	}
	if st := c2.Stats(); st.RecordsRejected != 0 {
		t.Errorf("cold client rejected %d records; want 0 (chunks before its first window are not bad records)", st.RecordsRejected)
	}

	u := &fdxv1.Update{Job: job, ClientId: "c1", BaseRound: 2, NumExamples: 3, Params: m1.Params}
	before := c.Stats().MessagesSent
	if err := c.Submit(ctx, u); err != nil {
		t.Fatalf("Submit 8 MB update: %v", err)
	}
	size := proto.Size(u)
	chunks := (size + DefaultChunkBytes - 1) / DefaultChunkBytes
	if sent := c.Stats().MessagesSent - before; sent != int64(chunks+1) {
		t.Errorf("Submit produced %d records; want %d chunks and a manifest", sent, chunks)
	}
	d, err := s.Next(ctx)
	if err != nil || d.Rejection != nil || d.Err != nil || !proto.Equal(d.Update, u) {
		t.Fatalf("Next = rejection %v, err %v, %v; want the update whole", d.Rejection, d.Err, err)
	}
	if d.Size != size+len("c1") {
		t.Errorf("delivery size %d; want the whole update's %d", d.Size, size+len("c1"))
	}
	s.Close()

	// The restarted aggregator restores from the chunked model.
	s2, err := NewServer(ctx, sopt)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if latest, err := s2.Latest(ctx, nil); err != nil || !proto.Equal(latest, m2) {
		t.Fatalf("Latest after restart = round %d, %v; want model 2", latest.GetRound(), err)
	}
}

// updateTransfer returns the records of u's chunked transfer, each value a
// copy that a test may damage.
func updateTransfer(t *testing.T, job string, u *fdxv1.Update) ([]*kgo.Record, *kgo.Record) {
	t.Helper()
	return updateTransferSized(t, job, u, DefaultChunkBytes)
}

// updateTransferSized is updateTransfer with chunks of chunkBytes.
func updateTransferSized(t *testing.T, job string, u *fdxv1.Update, chunkBytes int) ([]*kgo.Record, *kgo.Record) {
	t.Helper()
	b, err := proto.Marshal(u)
	if err != nil {
		t.Fatal(err)
	}
	chunks, man, err := transferRecords(UpdatesTopic(job), byKey, []byte(u.GetClientId()), b, chunkBytes)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range chunks {
		c.Value = slices.Clone(c.Value)
	}
	return chunks, man
}

func update(job, client string, n int) *fdxv1.Update {
	return &fdxv1.Update{Job: job, ClientId: client, BaseRound: 1, NumExamples: 1, Params: randomModel(job, 9, n).Params}
}

// verdict is what the server made of one delivery: "ok" or the reason.
func verdict(t *testing.T, s *Server, ctx context.Context) (key, v string) {
	t.Helper()
	d, err := s.Next(ctx)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	switch {
	case d.Rejection != nil:
		return d.Key, string(d.Rejection.Reason)
	case d.Err != nil:
		return d.Key, "err: " + d.Err.Error()
	}
	return d.ClientID(), "ok"
}

// TestBadUpdateTransfers sends chunked updates that are corrupt, lack a
// chunk, or are abandoned mid-way, and checks each is dropped under its
// reason while intact ones of the same clients still arrive.
func TestBadUpdateTransfers(t *testing.T) {
	brokers, job := kafkatest.Brokers(t), kafkatest.Job(t)
	ctx := testCtx(t, 120*time.Second)
	const n = 700_000 // 2.8 MB: 3 chunks
	s := newServer(t, brokers, job, MessageBytesFor(n))
	defer s.Close()

	var msgs []*kgo.Record
	// "corrupt": one flipped byte in chunk 1; then an intact transfer.
	chunks, man := updateTransfer(t, job, update(job, "corrupt", n))
	chunks[1].Value[100] ^= 1
	msgs = append(append(msgs, chunks...), man)
	chunks, man = updateTransfer(t, job, update(job, "corrupt", n))
	msgs = append(append(msgs, chunks...), man)
	// "missing": chunk 1 never arrives.
	chunks, man = updateTransfer(t, job, update(job, "missing", n))
	msgs = append(append(msgs, chunks[0], chunks[2]), man)
	// "abandoned": its sender died after two chunks and sent again.
	chunks, _ = updateTransfer(t, job, update(job, "abandoned", n))
	msgs = append(msgs, chunks[:2]...)
	chunks, man = updateTransfer(t, job, update(job, "abandoned", n))
	msgs = append(append(msgs, chunks...), man)
	// "forged": a manifest whose SHA-256 is not the whole's.
	chunks, man = updateTransfer(t, job, update(job, "forged", n))
	m := &fdxv1.TransferManifest{}
	if err := proto.Unmarshal(man.Value, m); err != nil {
		t.Fatal(err)
	}
	m.Sha256[0] ^= 1
	man.Value, _ = proto.Marshal(m)
	msgs = append(append(msgs, chunks...), man)
	rawProduce(ctx, t, brokers, msgs)

	want := map[string][]string{
		"corrupt":   {string(rules.Checksum), "ok"},
		"missing":   {string(rules.Incomplete)},
		"abandoned": {string(rules.Incomplete), "ok"},
		"forged":    {string(rules.Checksum)},
	}
	got := map[string][]string{}
	for range 6 {
		k, v := verdict(t, s, ctx)
		got[k] = append(got[k], v)
	}
	for k, w := range want {
		if !slices.Equal(got[k], w) {
			t.Errorf("%s: verdicts %v; want %v", k, got[k], w)
		}
	}
	if s.updates.buffered != 0 {
		t.Errorf("%d bytes still buffered after every transfer ended", s.updates.buffered)
	}
}

// TestUpdateChunksAcrossRestart leaves an update half sent when a round
// closes: the round's commit stops at the transfer's first chunk, so the
// restarted aggregator reads the update whole.
func TestUpdateChunksAcrossRestart(t *testing.T) {
	brokers, job := kafkatest.Brokers(t), kafkatest.Job(t)
	ctx := testCtx(t, 120*time.Second)
	const n = 700_000
	s := newServer(t, brokers, job, MessageBytesFor(n))
	defer s.Close()
	u := update(job, "slow", n)
	chunks, man := updateTransfer(t, job, u)
	rawProduce(ctx, t, brokers, chunks[:2])
	for deadline := time.Now().Add(60 * time.Second); s.updates.buffered == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the server never read the first chunks")
		}
		short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		if d, err := s.Next(short); err == nil {
			t.Fatalf("Next delivered %+v from half a transfer", d)
		}
		cancel()
	}
	if err := s.Publish(ctx, model(job, 1, 10)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	rawProduce(ctx, t, brokers, append(chunks[2:], man))
	s2 := newServer(t, brokers, job, MessageBytesFor(n))
	defer s2.Close()
	d, err := s2.Next(ctx)
	if err != nil || d.Rejection != nil || !proto.Equal(d.Update, u) {
		t.Fatalf("Next after restart = rejection %v, %v; want the update whole", d.Rejection, err)
	}
}

// TestBadModelTransfers writes a corrupt and an incomplete chunked model on
// top of a good one: readers walk past both to the good one.
func TestBadModelTransfers(t *testing.T) {
	brokers, job := kafkatest.Brokers(t), kafkatest.Job(t)
	ctx := testCtx(t, 120*time.Second)
	const n = 700_000
	s := newServer(t, brokers, job, MessageBytesFor(n))
	good := randomModel(job, 1, n)
	if err := s.Publish(ctx, good); err != nil {
		t.Fatal(err)
	}
	s.Close()
	var msgs []*kgo.Record
	for i, round := range []int64{2, 3} {
		b, _ := proto.Marshal(randomModel(job, round, n))
		chunks, man, err := transferRecords(ModelTopic(job), 0, []byte(strconv.FormatInt(round, 10)), b, DefaultChunkBytes)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			chunks[2].Value = slices.Clone(chunks[2].Value)
			chunks[2].Value[7] ^= 0x80
		} else {
			chunks = chunks[1:]
		}
		msgs = append(append(msgs, chunks...), man)
	}
	rawProduce(ctx, t, brokers, msgs)

	s2 := newServer(t, brokers, job, MessageBytesFor(n))
	defer s2.Close()
	keptGoodModel(ctx, t, brokers, job, good, s2)
}

// keptGoodModel checks that, after two bad transfers on top of good, a new
// client and the restarted aggregator s2 both still read good, and the
// client counted both bad transfers.
func keptGoodModel(ctx context.Context, t *testing.T, brokers, job string, good *fdxv1.GlobalModel, s2 *Server) {
	t.Helper()
	c := dial(t, brokers, job)
	if m, err := c.Model(ctx, 0); err != nil || !proto.Equal(m, good) {
		t.Fatalf("client Model(0) = round %d, %v; want the good model 1", m.GetRound(), err)
	}
	if st := c.Stats(); st.RecordsRejected < 2 {
		t.Errorf("client rejected %d records; want both bad transfers counted", st.RecordsRejected)
	}
	if m, err := s2.Latest(ctx, nil); err != nil || !proto.Equal(m, good) {
		t.Fatalf("Latest = round %d, %v; want the good model 1", m.GetRound(), err)
	}
}

// envKillChild makes TestKilledMidTransfer the aggregator that dies:
// "brokers|job".
const envKillChild = "FDX_TEST_CHUNK_KILL_CHILD"

// TestKilledMidTransfer SIGKILLs an aggregator inside its round
// transaction after three chunks of a model are on the broker. Readers
// never see the partial model; the successor aborts it and publishes the
// round whole.
func TestKilledMidTransfer(t *testing.T) {
	const n = 1_500_000 // 6 MB: 6 chunks
	if v := os.Getenv(envKillChild); v != "" {
		brokers, job, _ := strings.Cut(v, "|")
		s, err := NewServer(testCtx(t, 60*time.Second), ServerOptions{
			Options:      Options{Brokers: brokers, Job: job},
			TopicOptions: TopicOptions{UpdatePartitions: 3, MaxMessageBytes: MessageBytesFor(n)},
			AfterChunk: func(_ int64, i int) {
				if i == 2 {
					_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				}
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		err = s.Publish(testCtx(t, 60*time.Second), randomModel(job, 2, n))
		t.Fatalf("Publish returned %v; the process should have been killed", err)
	}
	brokers, job := kafkatest.Brokers(t), kafkatest.Job(t)
	ctx := testCtx(t, 180*time.Second)
	s := newServer(t, brokers, job, MessageBytesFor(n))
	m1 := randomModel(job, 1, n)
	if err := s.Publish(ctx, m1); err != nil {
		t.Fatal(err)
	}
	s.Close()

	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestKilledMidTransfer$", "-test.count=1")
	cmd.Env = append(os.Environ(), envKillChild+"="+brokers+"|"+job)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child aggregator = %v; want killed by SIGKILL mid-transfer\n%s", err, out)
	}
	if got := chunkRecords(ctx, t, brokers, ModelTopic(job)); got < 6+3 {
		t.Fatalf("the model topic holds %d chunk records; want model 1's 6 and at least 3 of the killed transfer", got)
	}

	// The killed transaction is still open: readers see model 1 whole.
	c := dial(t, brokers, job)
	if m, err := c.Model(ctx, 0); err != nil || !proto.Equal(m, m1) {
		t.Fatalf("client Model(0) after the kill = round %d, %v; want model 1", m.GetRound(), err)
	}
	// The successor fences the dead one, aborting its transaction.
	s2 := newServer(t, brokers, job, MessageBytesFor(n))
	defer s2.Close()
	if m, err := s2.Latest(ctx, nil); err != nil || !proto.Equal(m, m1) {
		t.Fatalf("Latest after the kill = round %d, %v; want model 1", m.GetRound(), err)
	}
	m2 := randomModel(job, 2, n)
	if err := s2.Publish(ctx, m2); err != nil {
		t.Fatal(err)
	}
	if m, err := c.Model(ctx, 2); err != nil || !proto.Equal(m, m2) {
		t.Fatalf("client Model(2) = round %d, %v; want the successor's model 2", m.GetRound(), err)
	}
	if st := c.Stats(); st.RecordsRejected != 0 {
		t.Errorf("client rejected %d records; want 0: aborted chunks are never read", st.RecordsRejected)
	}
}

// chunkRecords counts the chunk records in topic's partition 0, committed
// or not.
func chunkRecords(ctx context.Context, t *testing.T, brokers, topic string) int {
	t.Helper()
	n := 0
	for _, r := range readPartition(ctx, t, brokers, topic, 0, false) {
		if isChunk(r) || header(r, headerSpread) != nil {
			n++
		}
	}
	return n
}
