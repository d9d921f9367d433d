package kafkachan

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
)

// TestCommitOutcomeUnknown cancels a round's context just before its
// commit: the server cannot know whether the commit happened, so it says
// channel.ErrOutcomeUnknown, never retries, and refuses every later round.
// A restarted server reads what the broker committed (round 1 or 2, never
// a partial round) and goes on from there.
func TestCommitOutcomeUnknown(t *testing.T) {
	brokers, job := kafkatest.Brokers(t), kafkatest.Job(t)
	ctx := testCtx(t, 2*time.Minute)
	roundCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	opt := ServerOptions{
		Options:            Options{Brokers: brokers, Job: job},
		TopicOptions:       TopicOptions{UpdatePartitions: 1},
		TransactionTimeout: 10 * time.Second,
		BeforeCommit: func(round int64) {
			if round == 2 {
				cancel()
			}
		},
	}
	s, err := NewServer(ctx, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Publish(ctx, model(job, 1, 4)); err != nil {
		t.Fatalf("Publish 1: %v", err)
	}
	err = s.Publish(roundCtx, model(job, 2, 4))
	if !errors.Is(err, channel.ErrOutcomeUnknown) {
		t.Fatalf("Publish 2 cancelled at its commit = %v; want channel.ErrOutcomeUnknown", err)
	}
	t.Logf("Publish 2: %v", err)
	if err := s.Publish(ctx, model(job, 3, 4)); !errors.Is(err, channel.ErrOutcomeUnknown) {
		t.Fatalf("Publish 3 after an unknown outcome = %v; want it refused with channel.ErrOutcomeUnknown", err)
	}
	s.Close()

	opt.BeforeCommit = nil
	s2, err := NewServer(ctx, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	latest, err := s2.Latest(ctx, nil)
	if err != nil || (latest.GetRound() != 1 && latest.GetRound() != 2) {
		t.Fatalf("Latest after restart = round %d, %v; want 1 or 2", latest.GetRound(), err)
	}
	t.Logf("the cancelled commit of round 2 %s", map[bool]string{true: "took effect", false: "did not take effect"}[latest.GetRound() == 2])
	next := latest.GetRound() + 1
	if err := s2.Publish(ctx, model(job, next, 4)); err != nil {
		t.Fatalf("Publish %d after restart: %v", next, err)
	}
	hist, err := History(ctx, Options{Brokers: brokers, Job: job})
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range hist {
		if m.GetRound() != int64(i+1) {
			t.Fatalf("history rounds %v; want 1..%d each once", rounds(hist), next)
		}
	}
	if len(hist) != int(next) {
		t.Fatalf("history rounds %v; want 1..%d each once", rounds(hist), next)
	}
}

func rounds(hist []*fdxv1.GlobalModel) []int64 {
	out := make([]int64, len(hist))
	for i, m := range hist {
		out[i] = m.GetRound()
	}
	return out
}
