package job

import (
	"testing"

	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
)

// TestCompressedUpdates runs the same logistic-regression job with float32,
// float16 and int8 updates: the compressed ones are half and a quarter the
// size, and cost little accuracy.
func TestCompressedUpdates(t *testing.T) {
	data := dataset.NewCatalog()
	brokers := kafkatest.Brokers(t)
	perUpdate := map[string]float64{}
	acc := map[string]float64{}
	for _, enc := range []string{"float32", "float16", "int8"} {
		spec := Spec{Job: kafkatest.Job(t), MinClients: 3, NumRounds: 2, Model: "logreg", MaxExamples: 300, EvalExamples: 2000,
			Partition: dataset.PartitionSpec{NumPartitions: 3}, Seed: 5, UpdateEncoding: enc}
		res := runFederation(t, spec, ChannelConfig{Transport: Kafka, Brokers: brokers}, Env{Data: data}, 3)
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
	for _, enc := range []string{"float16", "int8"} {
		if d := acc["float32"] - acc[enc]; d > 0.02 {
			t.Errorf("%s costs %.4f accuracy against float32; want under 0.02", enc, d)
		}
	}
}
