package job

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/fdxkafka/fdxkafka/client/dialcache"
	"github.com/fdxkafka/fdxkafka/function"
	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
)

// TestWarmInvocationAfterFinal: a function instance that keeps its
// channels (as a deployed one does) takes part in every round of a job;
// once the final model is out, the same instance is invoked again, reuses
// its channel, and answers that the job is finished rather than train on
// the round its channel read last.
func TestWarmInvocationAfterFinal(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	data := dataset.NewCatalog()
	const rounds = 2
	spec := Spec{Job: kafkatest.Job(t), Rounds: RoundsSpec{MinClients: 1, NumRounds: rounds},
		Data: DataSpec{Dataset: "synthetic", MaxExamples: 50, EvalExamples: 100}}
	brokers := kafkatest.Brokers(t)
	cc := ChannelConfig{Transport: Kafka, Brokers: brokers}
	fn := httptest.NewServer(function.NewServer(function.Config{Data: data, Cache: dialcache.New(dialcache.Options{MaxIdle: 2})}))
	defer fn.Close()
	first := make(chan invocation, 1)
	ready := func(addr string) {
		go func() { first <- invoke(fn.URL, addr, "kafka", spec.Job, "0", rounds) }()
	}
	res, err := RunOn(ctx, resolve(t, spec, data), cc, Env{}, ready)
	if err != nil {
		t.Fatal(err)
	}
	if inv := <-first; inv.code != http.StatusOK || len(inv.resp.Rounds) != rounds {
		t.Fatalf("first invocation: HTTP %d, %d rounds: %s", inv.code, len(inv.resp.Rounds), inv.body)
	}
	// A commit's markers land shortly after the commit returns: wait
	// until a new reader sees the final model.
	for {
		c, err := kafkachan.Dial(ctx, kafkachan.ClientOptions{Options: kafkachan.Options{Brokers: brokers, Job: spec.Job}})
		if err != nil {
			t.Fatal(err)
		}
		m, err := c.Model(ctx, 0)
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		if m.GetFinal() {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no new reader saw the final model of round %d", res.Final.GetRound())
		case <-time.After(20 * time.Millisecond):
		}
	}
	inv := invoke(fn.URL, brokers, "kafka", spec.Job, "0", 1)
	if inv.code != http.StatusOK || !inv.resp.Warm || !inv.resp.Final || len(inv.resp.Rounds) != 0 || inv.resp.LastRound != res.Final.GetRound() {
		t.Fatalf("warm invocation after the final model: HTTP %d warm %v final %v, %d rounds trained, last round %d; want a warm channel, final, no training, round %d: %s",
			inv.code, inv.resp.Warm, inv.resp.Final, len(inv.resp.Rounds), inv.resp.LastRound, res.Final.GetRound(), inv.body)
	}
}
