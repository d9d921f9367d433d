package kafkachan

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
)

// TestListedModelOnOnePartition: a chunked model on a one-partition model
// topic has a manifest listing its chunks' offsets, which a new client
// reads once each, straight from there. A model whose manifest has no list
// (as older aggregators wrote) is still read, by a new and by a waiting
// client. A forged list, pointing at another transfer's chunks or
// swapping two of its own, is refused and counted; clients and a
// restarted aggregator keep the good model.
func TestListedModelOnOnePartition(t *testing.T) {
	brokers, job := kafkatest.Brokers(t), kafkatest.Job(t)
	ctx := testCtx(t, 180*time.Second)
	const n = 700_000 // 2.8 MB: 3 chunks
	s := newServer(t, brokers, job, MessageBytesFor(n))
	m1 := randomModel(job, 1, n)
	if err := s.Publish(ctx, m1); err != nil {
		t.Fatal(err)
	}
	s.Close()

	// The manifest lists where the chunks are, and they are there.
	var man *fdxv1.TransferManifest
	var chunkAt []int64
	for _, msg := range readPartition(ctx, t, brokers, ModelTopic(job), 0, true) {
		if header(msg, headerSpread) != nil {
			chunkAt = append(chunkAt, msg.Offset)
		}
		if isManifest(msg) {
			man = &fdxv1.TransferManifest{}
			if err := proto.Unmarshal(msg.Value, man); err != nil {
				t.Fatal(err)
			}
		}
	}
	if man == nil || len(chunkAt) != 3 || !slices.Equal(man.GetChunkOffsets(), chunkAt) ||
		!slices.Equal(man.GetChunkPartitions(), []int32{0, 0, 0}) {
		t.Fatalf("manifest lists chunks at partitions %v offsets %v; want partition 0 offsets %v", man.GetChunkPartitions(), man.GetChunkOffsets(), chunkAt)
	}

	// A new client reads the manifest, then each chunk once.
	c1 := dial(t, brokers, job)
	if got, err := c1.Model(ctx, 0); err != nil || !proto.Equal(got, m1) {
		t.Fatalf("new client Model(0) = round %d, %v; want model 1 bit for bit", got.GetRound(), err)
	}
	if st, size := c1.Stats(), int64(proto.Size(m1)); st.BytesReceived > size*11/10 || st.RecordsRejected != 0 {
		t.Errorf("new client read %d bytes for a %d-byte model, rejected %d records; want each chunk once, none rejected", st.BytesReceived, size, st.RecordsRejected)
	}

	// A model whose manifest lists nothing, while a client waits for it.
	m2 := randomModel(job, 2, n)
	b, err := proto.Marshal(m2)
	if err != nil {
		t.Fatal(err)
	}
	chunks, last, err := transferRecords(ModelTopic(job), 0, []byte("2"), b, DefaultChunkBytes)
	if err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() {
		got, err := c1.Model(ctx, 2)
		if err == nil && !proto.Equal(got, m2) {
			err = fmt.Errorf("got round %d, not model 2 bit for bit", got.GetRound())
		}
		waited <- err
	}()
	rawProduce(ctx, t, brokers, append(chunks, last))
	if err := <-waited; err != nil {
		t.Fatalf("waiting client Model(2), a manifest without a list: %v", err)
	}
	if got, err := dial(t, brokers, job).Model(ctx, 0); err != nil || !proto.Equal(got, m2) {
		t.Fatalf("new client Model(0) = round %d, %v; want model 2, its manifest without a list", got.GetRound(), err)
	}

	// Forged lists: model 1's chunks for model 3, and model 4's own two
	// first chunks swapped.
	forgeSpread(ctx, t, brokers, randomModel(job, 3, n), 1, func(_ []*kgo.Record, man *fdxv1.TransferManifest) {
		if man != nil {
			copy(man.ChunkOffsets, chunkAt)
		}
	})
	forgeSpread(ctx, t, brokers, randomModel(job, 4, n), 1, func(_ []*kgo.Record, man *fdxv1.TransferManifest) {
		if man != nil {
			man.ChunkOffsets[0], man.ChunkOffsets[1] = man.ChunkOffsets[1], man.ChunkOffsets[0]
		}
	})
	s2 := newServer(t, brokers, job, MessageBytesFor(n))
	defer s2.Close()
	keptGoodModel(ctx, t, brokers, job, m2, s2)
}

// TestWholeBuilder: chunks put in any order make the whole; a chunk of the
// wrong size or CRC, and a whole whose SHA-256 differs, are refused; and a
// manifest whose sizes cannot make up the whole is not accepted at all.
func TestWholeBuilder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	whole := make([]byte, 2500)
	for i := range whole {
		whole[i] = byte(rng.Uint32())
	}
	chunks, last, err := transferRecords("t", 0, nil, whole, 1000)
	if err != nil {
		t.Fatal(err)
	}
	listed := func() *fdxv1.TransferManifest {
		man := &fdxv1.TransferManifest{}
		if err := proto.Unmarshal(last.Value, man); err != nil {
			t.Fatal(err)
		}
		man.ChunkPartitions, man.ChunkOffsets = []int32{0, 0, 0}, []int64{0, 1, 2}
		return man
	}
	build := func(man *fdxv1.TransferManifest, order []int, value func(i int) []byte) ([]byte, error) {
		w := newWholeBuilder(man)
		defer w.close()
		for _, i := range order {
			if err := w.put(i, value(i)); err != nil {
				return nil, err
			}
		}
		if !w.complete() {
			t.Fatalf("%d of 3 chunks after putting all", w.got)
		}
		return w.finish()
	}
	chunk := func(i int) []byte { return chunks[i].Value }
	if got, err := build(listed(), []int{2, 0, 1, 0}, chunk); err != nil || !bytes.Equal(got, whole) {
		t.Fatalf("chunks 2, 0, 1 and 0 again = %v; want the whole", err)
	}
	if _, err := build(listed(), []int{0, 1, 2}, func(i int) []byte { return chunk(2 - i) }); err == nil {
		t.Error("chunks in the wrong places were accepted")
	}
	if _, err := build(listed(), []int{0, 1, 2}, func(i int) []byte {
		c := slices.Clone(chunk(i))
		c[len(c)-1] ^= 1
		return c
	}); err == nil {
		t.Error("a chunk that does not match its CRC-32C was accepted")
	}
	forged := listed()
	forged.Sha256[0] ^= 1
	if _, err := build(forged, []int{0, 1, 2}, chunk); err == nil {
		t.Error("a whole that does not match the SHA-256 was accepted")
	}

	for name, edit := range map[string]func(*fdxv1.TransferManifest){
		"total over the chunks":      func(m *fdxv1.TransferManifest) { m.TotalSize = 3001 },
		"total under the chunks":     func(m *fdxv1.TransferManifest) { m.TotalSize = 2000 },
		"chunk size 0":               func(m *fdxv1.TransferManifest) { m.ChunkSize = 0 },
		"over the transfer limit":    func(m *fdxv1.TransferManifest) { m.ChunkSize, m.TotalSize = maxTransferBytes, 3*maxTransferBytes },
		"fewer offsets than chunks":  func(m *fdxv1.TransferManifest) { m.ChunkOffsets = m.ChunkOffsets[:2] },
		"fewer partitions than them": func(m *fdxv1.TransferManifest) { m.ChunkPartitions = nil },
		"fewer CRCs than chunks":     func(m *fdxv1.TransferManifest) { m.ChunkCrc32C = m.ChunkCrc32C[:2] },
	} {
		man := listed()
		edit(man)
		if listingConsistent(man) {
			t.Errorf("%s: manifest accepted", name)
		}
	}
	if !listingConsistent(listed()) {
		t.Error("the true manifest is not accepted")
	}
}

// TestUnmarshalModel: the aliasing decoder of reassembled models decodes
// what proto.Unmarshal does, every field, and refuses what it refuses.
func TestUnmarshalModel(t *testing.T) {
	m := randomModel("job", 7, 1000)
	m.Params = append(m.Params, &fdxv1.Tensor{Name: "q", Shape: []int64{2, 3}, Dtype: fdxv1.DType_DTYPE_INT8, Data: []byte{1, 2, 3, 4, 5, 6}, Scale: 0.5},
		&fdxv1.Tensor{Name: "empty", Shape: []int64{0}})
	m.TrainConfig = &fdxv1.TrainConfig{LocalEpochs: 2, LearningRate: 0.1, UpdateDtype: fdxv1.DType_DTYPE_FLOAT16}
	m.Final, m.Contributors, m.Metrics = true, []string{"a", "b"}, map[string]float64{"accuracy": 0.9}
	m.StrategyState, m.NumRounds, m.MinClients = []byte("state"), 9, 3
	m.Sampling = &fdxv1.Sampling{Seed: 4, FitClients: []string{"a"}}
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	// A repeated data field: the last one wins, as in proto.
	b = protowire.AppendTag(b, fieldModelParams, protowire.BytesType)
	var tb []byte
	tb = protowire.AppendTag(tb, fieldTensorData, protowire.BytesType)
	tb = protowire.AppendBytes(tb, []byte{9, 9})
	tb = protowire.AppendTag(tb, fieldTensorData, protowire.BytesType)
	tb = protowire.AppendBytes(tb, []byte{7})
	b = protowire.AppendBytes(b, tb)

	want := &fdxv1.GlobalModel{}
	if err := proto.Unmarshal(b, want); err != nil {
		t.Fatal(err)
	}
	got, err := unmarshalModel(b)
	if err != nil || !proto.Equal(got, want) {
		t.Fatalf("unmarshalModel = %v, %v; want what proto.Unmarshal decodes", got, err)
	}
	if last := got.Params[len(got.Params)-1].GetData(); !bytes.Equal(last, []byte{7}) || cap(last) != 1 {
		t.Errorf("repeated data decoded as %v (cap %d); want the last, capped", last, cap(last))
	}
	for cut := 1; cut < len(b); cut += len(b) / 97 {
		perr := proto.Unmarshal(b[:cut], &fdxv1.GlobalModel{})
		if _, err := unmarshalModel(b[:cut]); (err == nil) != (perr == nil) {
			t.Errorf("cut at %d: unmarshalModel err %v, proto.Unmarshal err %v", cut, err, perr)
		}
	}
}
