package job

import (
	"errors"
	"strings"
	"testing"

	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/model"
)

// TestCompressedUpdates runs the same logistic-regression job with float32,
// float16 and int8 updates: the compressed ones are half and a quarter the
// size, and cost little accuracy.
func TestCompressedUpdates(t *testing.T) {
	data := dataset.NewCatalog()
	brokers := kafkatest.Brokers(t)
	perUpdate := map[string]float64{}
	acc := map[string]float64{}
	for _, enc := range []string{"float32", "float16", "int8", "topk:0.05"} {
		spec := Spec{Job: kafkatest.Job(t), Seed: 5, Rounds: RoundsSpec{MinClients: 3, NumRounds: 2},
			Training: TrainingSpec{Model: "logreg", UpdateEncoding: enc},
			Data:     DataSpec{MaxExamples: 300, EvalExamples: 2000, Partition: dataset.PartitionSpec{NumPartitions: 3}}}
		res := runFederation(t, resolve(t, spec, data), ChannelConfig{Transport: Kafka, Brokers: brokers}, Env{}, 3)
		if len(res.Rounds) != 2 || len(res.Rejected) != 0 {
			t.Fatalf("%s: %d rounds, rejections %v", enc, len(res.Rounds), res.Rejected)
		}
		perUpdate[enc] = float64(res.Stats.BytesReceived) / 6
		acc[enc] = res.Rounds[1].Accuracy
		t.Logf("%s: %.0f bytes per update, accuracy %.4f", enc, perUpdate[enc], acc[enc])
	}
	if r := perUpdate["float16"] / perUpdate["float32"]; r > 0.55 {
		t.Errorf("float16 updates are %.2f of float32's size; want about 0.5", r)
	}
	if r := perUpdate["int8"] / perUpdate["float32"]; r > 0.3 {
		t.Errorf("int8 updates are %.2f of float32's size; want about 0.25", r)
	}
	// Top-k sends 5% of the entries at 8 bytes each: 0.1 of float32.
	if r := perUpdate["topk:0.05"] / perUpdate["float32"]; r > 0.12 {
		t.Errorf("top-k 5%% updates are %.2f of float32's size; want about 0.1", r)
	}
	// Without error feedback (these clients are serverless calls) top-k
	// learns more slowly, but it learns: the initial model is at chance.
	if a := acc["topk:0.05"]; a < 0.5 {
		t.Errorf("top-k 5%% reaches accuracy %.4f after two rounds; want above 0.5", a)
	}
	for _, enc := range []string{"float16", "int8"} {
		if d := acc["float32"] - acc[enc]; d > 0.02 {
			t.Errorf("%s costs %.4f accuracy against float32; want under 0.02", enc, d)
		}
	}
}

// TestFloat16Models publishes float16 models on both channels: the final
// models are float16 and bit-identical across channels, the aggregator
// sends about half the bytes, the accuracy it records is that of the model
// clients decode (the global model lives on the float16 grid), and the
// accuracy cost against float32 models is small.
func TestFloat16Models(t *testing.T) {
	data := dataset.NewCatalog()
	brokers := kafkatest.Brokers(t)
	base := Spec{Seed: 5, Rounds: RoundsSpec{MinClients: 3, NumRounds: 3},
		Training: TrainingSpec{Model: "logreg", UpdateEncoding: "float16"},
		Data:     DataSpec{MaxExamples: 300, EvalExamples: 2000, Partition: dataset.PartitionSpec{NumPartitions: 3}}}
	run := func(enc string, cc ChannelConfig) *Result {
		spec := base
		spec.Job, spec.Training.ModelEncoding = kafkatest.Job(t), enc
		res := runFederation(t, resolve(t, spec, data), cc, Env{}, 3)
		if len(res.Rounds) != 3 || len(res.Rejected) != 0 {
			t.Fatalf("%s: %d rounds, rejections %v", enc, len(res.Rounds), res.Rejected)
		}
		return res
	}
	f32 := run("float32", ChannelConfig{Transport: Kafka, Brokers: brokers})
	f16 := run("float16", ChannelConfig{Transport: Kafka, Brokers: brokers})
	f16g := run("float16", ChannelConfig{Transport: GRPC, Listen: "127.0.0.1:0"})

	for _, ts := range [][]*fdxv1.Tensor{f16.Final.GetParams(), f16g.Final.GetParams()} {
		for _, tn := range ts {
			if tn.GetDtype() != fdxv1.DType_DTYPE_FLOAT16 {
				t.Fatalf("final model tensor %q has dtype %v, want FLOAT16", tn.GetName(), tn.GetDtype())
			}
		}
	}
	if a, b := Digest(f16.Final), Digest(f16g.Final); a != b {
		t.Fatalf("float16 final models differ between Kafka (%s) and gRPC (%s)", a, b)
	}
	if r := float64(f16.Stats.BytesSent) / float64(f32.Stats.BytesSent); r > 0.6 {
		t.Errorf("float16 models: the aggregator sent %.2f of float32's bytes; want about 0.5", r)
	}

	// The recorded accuracy is that of the published model, decoded.
	spec := resolve(t, base, data).Spec()
	net, err := model.New(spec.Training.Model, 784, 10, spec.Seed)
	if err != nil {
		t.Fatal(err)
	}
	if err := net.SetTensors(f16.Final.GetParams()); err != nil {
		t.Fatal(err)
	}
	test, err := data.Load(spec.Data.Dataset, dataset.SplitTest)
	if err != nil {
		t.Fatal(err)
	}
	idx := make([]int, spec.Data.EvalExamples)
	for i := range idx {
		idx[i] = i
	}
	if test, err = test.Subset(idx); err != nil {
		t.Fatal(err)
	}
	m, err := net.Evaluate(test)
	if err != nil {
		t.Fatal(err)
	}
	if got := f16.Rounds[2].Accuracy; m.Accuracy != got || m.Loss != f16.Rounds[2].Loss {
		t.Fatalf("recorded accuracy %v loss %v; the published model scores %v, %v", got, f16.Rounds[2].Loss, m.Accuracy, m.Loss)
	}
	if d := f32.Rounds[2].Accuracy - m.Accuracy; d > 0.02 {
		t.Errorf("float16 models cost %.4f accuracy against float32; want under 0.02", d)
	}
	t.Logf("float32 models: sent %d bytes, accuracy %.4f; float16: %d bytes, %.4f",
		f32.Stats.BytesSent, f32.Rounds[2].Accuracy, f16.Stats.BytesSent, m.Accuracy)
}

// TestEncodingRefused checks the encodings a job refuses.
func TestEncodingRefused(t *testing.T) {
	for _, enc := range []string{"topk:0", "topk:1.5", "topk:x", "topk", "int4"} {
		_, err := Spec{Job: "refused", Rounds: RoundsSpec{MinClients: 1, NumRounds: 1}, Training: TrainingSpec{UpdateEncoding: enc}}.Resolve(nil)
		if se := (*SpecError)(nil); !errors.As(err, &se) || se.Field != "Training.UpdateEncoding" || !strings.Contains(err.Error(), "update encoding") {
			t.Errorf("update encoding %q: got %v, want an update encoding error", enc, err)
		}
	}
	for _, enc := range []string{"int8", "bfloat16"} {
		_, err := Spec{Job: "refused", Rounds: RoundsSpec{MinClients: 1, NumRounds: 1}, Training: TrainingSpec{ModelEncoding: enc}}.Resolve(nil)
		if se := (*SpecError)(nil); !errors.As(err, &se) || se.Field != "Training.ModelEncoding" || !strings.Contains(err.Error(), "model encoding") {
			t.Errorf("model encoding %q: got %v, want a model encoding error", enc, err)
		}
	}
}
