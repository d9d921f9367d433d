package job

import (
	"testing"

	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
)

// TestSyntheticLargeModel runs a 6 MB synthetic model over both channels:
// Kafka and gRPC move every model and update in 1 MiB chunks, and both channels end
// with the bit-identical model.
func TestSyntheticLargeModel(t *testing.T) {
	data := dataset.NewCatalog()
	spec := Spec{Job: kafkatest.Job(t), Seed: 11, Rounds: RoundsSpec{MinClients: 2, NumRounds: 2}, Training: TrainingSpec{Model: "synthetic:6"},
		Data: DataSpec{MaxExamples: 50, EvalExamples: 100, Partition: dataset.PartitionSpec{NumPartitions: 2}}}
	kres := runFederation(t, resolve(t, spec, data), ChannelConfig{Transport: Kafka, Brokers: kafkatest.Brokers(t)}, Env{}, 2)
	gres := runFederation(t, resolve(t, spec, data), ChannelConfig{Transport: GRPC, Listen: "127.0.0.1:0"}, Env{}, 2)
	// The same job with each model's chunks spread over 3 partitions.
	spec.Job += "-spread"
	sres := runFederation(t, resolve(t, spec, data), ChannelConfig{Transport: Kafka, Brokers: kafkatest.Brokers(t), ModelPartitions: 3}, Env{}, 2)
	for _, res := range []*Result{kres, gres, sres} {
		if len(res.Rounds) != 2 || res.Final.GetRound() != 3 || len(res.Rejected) != 0 {
			t.Fatalf("%s: %d rounds, final round %d, rejections %v; want 2 rounds, final round 3, none rejected", res.Channel, len(res.Rounds), res.Final.GetRound(), res.Rejected)
		}
		for _, r := range res.Rounds {
			if r.Clients != 2 {
				t.Errorf("%s round %d: %d clients, want 2", res.Channel, r.Round, r.Clients)
			}
		}
	}
	if kd, gd, sd := Digest(kres.Final), Digest(gres.Final), Digest(sres.Final); kd != gd || kd != sd {
		t.Errorf("final models differ: kafka %s, grpc %s, kafka spread over 3 partitions %s", kd, gd, sd)
	}
	// 3 models of 6 MB: 6 chunks and a manifest each.
	if kres.Stats.MessagesSent != 3*7 || kres.Stats.BytesSent < 18_000_000 {
		t.Errorf("kafka aggregator sent %d records, %d bytes; want 21 records (3 models in 6 chunks + manifest), over 18 MB", kres.Stats.MessagesSent, kres.Stats.BytesSent)
	}
	// 4 updates, each 6 chunks and a manifest.
	if kres.Stats.MessagesReceived < 4*7 {
		t.Errorf("kafka aggregator received %d records; want at least 28 (4 chunked updates)", kres.Stats.MessagesReceived)
	}
	// gRPC streams the same chunks: a manifest and 6 chunks per update.
	if gres.Stats.MessagesReceived < 4*7 {
		t.Errorf("grpc aggregator received %d messages; want at least 28 (4 updates streamed in chunks)", gres.Stats.MessagesReceived)
	}
}
