package scaleout

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// TestWorkerRoundOneNormBound: in round 1, with no median from a round
// before, an insider sends every weight as -50 halfway through the round.
// The worker holds it, refuses it as norm_bound against the round's own
// median at its next flush, the round closes on the honest clients, and
// the models are the single aggregator's bit for bit.
func TestWorkerRoundOneNormBound(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	brokers := kafkatest.Brokers(t)
	want := reference(ctx, t, brokers)

	job := kafkatest.Job(t)
	cfg := testConfig(job)
	done := startLeader(ctx, t, brokers, job)
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	w := startWorker(wctx, t, &wg, brokers, job, "w0", 1000)
	waitAssigned(ctx, t, w)

	specs, err := cfgSpecs(cfg)
	if err != nil {
		t.Fatal(err)
	}
	evil := make([][]float32, len(specs))
	for i, s := range specs {
		evil[i] = make([]float32, s.Size())
		for j := range evil[i] {
			evil[i][j] = -50
		}
	}
	insider, err := kafkachan.Dial(ctx, kafkachan.ClientOptions{Options: kafkachan.Options{Brokers: brokers, Job: job}})
	if err != nil {
		t.Fatal(err)
	}
	defer insider.Close()
	got := driveWith(ctx, t, brokers, job, cfg, func(r int64) {
		if r != 1 {
			return
		}
		u := &fdxv1.Update{Job: job, ClientId: "insider", BaseRound: 1, NumExamples: 16, Params: tensor.Encode(evil, specs)}
		if err := insider.Submit(ctx, u); err != nil {
			t.Fatalf("insider: %v", err)
		}
	})
	res := <-done
	if res.err != nil {
		t.Fatalf("leader: %v", res.err)
	}
	if n := res.recs[0].Rejected[string(rules.NormBound)]; n != 1 {
		t.Errorf("round 1 rejected %v, want the insider as norm_bound", res.recs[0].Rejected)
	}
	sameModels(t, want, got)
}
