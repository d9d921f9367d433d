package kafkachan

import (
	"context"
	"crypto/ed25519"
	"errors"
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
	"github.com/fdxkafka/fdxkafka/shared/trust"
)

// TestSpreadModel: with ModelPartitions 3 an 8 MB model's chunks land on
// all three partitions of the model topic, inside the round transaction;
// a client and a restarted aggregator read it whole where the signed
// manifest says.
func TestSpreadModel(t *testing.T) {
	brokers, job := kafkatest.Brokers(t), kafkatest.Job(t)
	ctx := testCtx(t, 180*time.Second)
	const n = 2_000_000 // 8 MB of float32: 8 chunks
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	signer := trust.NewSigner(priv)
	verifier := trust.NewVerifier(signer.Public())
	sopt := ServerOptions{
		Options:      Options{Brokers: brokers, Job: job, Verifier: verifier},
		TopicOptions: TopicOptions{UpdatePartitions: 1, ModelPartitions: 3, MaxMessageBytes: MessageBytesFor(n)},
		Signer:       signer,
	}
	s, err := NewServer(ctx, sopt)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m1 := randomModel(job, 1, n)
	if err := s.Publish(ctx, m1); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	c, err := Dial(ctx, ClientOptions{Options: Options{Brokers: brokers, Job: job, Verifier: verifier}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := c.Model(ctx, 1); err != nil || !proto.Equal(got, m1) {
		t.Fatalf("client Model(1) = round %d, %v; want model 1 bit for bit", got.GetRound(), err)
	}

	// Every partition holds chunks: 8 chunks over 3 partitions are 3, 3
	// and 2, each partition also holding its commit marker, and partition
	// 0 the manifest.
	ends, err := admin(t, brokers).ListEndOffsets(ctx, ModelTopic(job))
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range []int64{3 + 1 + 1, 3 + 1, 2 + 1} {
		end, _ := ends.Lookup(ModelTopic(job), int32(p))
		if end.Err != nil || end.Offset != want {
			t.Errorf("model partition %d ends at %d (%v); want %d (its chunks, manifest and commit marker)", p, end.Offset, end.Err, want)
		}
	}

	// Model 2 arrives while the client waits for it.
	m2 := randomModel(job, 2, n)
	published := make(chan error, 1)
	before := c.Stats().BytesReceived
	go func() { published <- s.Publish(ctx, m2) }()
	if got, err := c.Model(ctx, 2); err != nil || !proto.Equal(got, m2) {
		t.Fatalf("client Model(2) = round %d, %v; want model 2 bit for bit", got.GetRound(), err)
	}
	// The chunks on partition 0, which the waiting reader passed, are
	// not fetched again: 3 of 8 chunks would add 37%.
	if got, size := c.Stats().BytesReceived-before, int64(proto.Size(m2)); got > size*11/10 {
		t.Errorf("client read %d bytes for a %d-byte model; want each chunk once", got, size)
	}
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	s.Close()

	s2, err := NewServer(ctx, sopt)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if latest, err := s2.Latest(ctx, nil); err != nil || !proto.Equal(latest, m2) {
		t.Fatalf("restarted aggregator's Latest = round %d, %v; want model 2 bit for bit", latest.GetRound(), err)
	}
}

// forgeSpread writes model m spread over parts partitions, its manifest
// listing the chunks, as a writer outside the transaction could, after
// tamper edits its chunks and manifest.
func forgeSpread(ctx context.Context, t *testing.T, brokers string, m *fdxv1.GlobalModel, parts int, tamper func(chunks []*kgo.Record, man *fdxv1.TransferManifest)) {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	chunks, last, err := transferRecords(ModelTopic(m.GetJob()), 0, []byte(strconv.FormatInt(m.GetRound(), 10)), b, DefaultChunkBytes)
	if err != nil {
		t.Fatal(err)
	}
	spread(chunks, parts)
	man := &fdxv1.TransferManifest{}
	if err := proto.Unmarshal(last.Value, man); err != nil {
		t.Fatal(err)
	}
	tamper(chunks, nil)
	rawProduce(ctx, t, brokers, chunks)
	for _, c := range chunks {
		man.ChunkPartitions = append(man.ChunkPartitions, c.Partition)
		man.ChunkOffsets = append(man.ChunkOffsets, c.Offset)
	}
	tamper(nil, man)
	if last.Value, err = proto.Marshal(man); err != nil {
		t.Fatal(err)
	}
	rawProduce(ctx, t, brokers, []*kgo.Record{last})
}

// TestBadSpreadModel: spread models whose chunk does not match its CRC, or
// whose manifest points past the chunks, are dropped and counted; clients
// and a restarted aggregator keep the good model.
func TestBadSpreadModel(t *testing.T) {
	brokers, job := kafkatest.Brokers(t), kafkatest.Job(t)
	ctx := testCtx(t, 120*time.Second)
	const n = 700_000 // 2.8 MB: 3 chunks
	sopt := ServerOptions{
		Options:      Options{Brokers: brokers, Job: job},
		TopicOptions: TopicOptions{UpdatePartitions: 1, ModelPartitions: 3, MaxMessageBytes: MessageBytesFor(n)},
	}
	s, err := NewServer(ctx, sopt)
	if err != nil {
		t.Fatal(err)
	}
	good := randomModel(job, 1, n)
	if err := s.Publish(ctx, good); err != nil {
		t.Fatal(err)
	}
	s.Close()
	forgeSpread(ctx, t, brokers, randomModel(job, 2, n), 3, func(chunks []*kgo.Record, _ *fdxv1.TransferManifest) {
		if chunks != nil {
			chunks[1].Value = slices.Clone(chunks[1].Value)
			chunks[1].Value[7] ^= 0x80
		}
	})
	forgeSpread(ctx, t, brokers, randomModel(job, 3, n), 3, func(_ []*kgo.Record, man *fdxv1.TransferManifest) {
		if man != nil {
			man.ChunkOffsets[2] += 100
		}
	})

	s2, err := NewServer(ctx, sopt)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	keptGoodModel(ctx, t, brokers, job, good, s2)
}

// envKillSpreadChild makes TestKilledMidSpreadTransfer the aggregator that
// dies: "brokers|job".
const envKillSpreadChild = "FDX_TEST_SPREAD_KILL_CHILD"

// TestKilledMidSpreadTransfer SIGKILLs an aggregator inside its round
// transaction after 4 of the 6 chunks of a spread model are on the broker,
// on all three partitions, and before the manifest. Readers keep the
// previous model and never read the aborted chunks; the successor
// publishes the round whole.
func TestKilledMidSpreadTransfer(t *testing.T) {
	const n = 1_500_000 // 6 MB: 6 chunks
	topts := TopicOptions{UpdatePartitions: 1, ModelPartitions: 3, MaxMessageBytes: MessageBytesFor(n)}
	if v := os.Getenv(envKillSpreadChild); v != "" {
		brokers, job, _ := strings.Cut(v, "|")
		s, err := NewServer(testCtx(t, 60*time.Second), ServerOptions{
			Options: Options{Brokers: brokers, Job: job}, TopicOptions: topts,
			AfterChunk: func(_ int64, i int) {
				if i == 3 {
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
	sopt := ServerOptions{Options: Options{Brokers: brokers, Job: job}, TopicOptions: topts}
	s, err := NewServer(ctx, sopt)
	if err != nil {
		t.Fatal(err)
	}
	m1 := randomModel(job, 1, n)
	if err := s.Publish(ctx, m1); err != nil {
		t.Fatal(err)
	}
	s.Close()

	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestKilledMidSpreadTransfer$", "-test.count=1")
	cmd.Env = append(os.Environ(), envKillSpreadChild+"="+brokers+"|"+job)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child aggregator = %v; want killed by SIGKILL mid-transfer\n%s", err, out)
	}

	c := dial(t, brokers, job)
	if m, err := c.Model(ctx, 0); err != nil || !proto.Equal(m, m1) {
		t.Fatalf("client Model(0) after the kill = round %d, %v; want model 1", m.GetRound(), err)
	}
	s2, err := NewServer(ctx, sopt)
	if err != nil {
		t.Fatal(err)
	}
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
