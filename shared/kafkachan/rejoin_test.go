package kafkachan

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
)

// TestFencedConsumerRejoins: when the group coordinator fences the
// aggregator's static member mid-round (a broker failover can, as seen on a
// 3-broker cluster after SIGKILL of the coordinator), Next rejoins instead
// of failing the job; the open round's uncommitted records come again, and
// the round still commits.
//
// It needs Apache Kafka: kfake does not fence a replaced static member.
func TestFencedConsumerRejoins(t *testing.T) {
	if !kafkatest.Real() {
		t.Skipf("kfake does not fence static members; runs on the real broker (%s)", kafkatest.EnvBrokers)
	}
	brokers := kafkatest.Brokers(t)
	job := kafkatest.Job(t)
	ctx := testCtx(t, 2*time.Minute)
	s := newServer(t, brokers, job, 0)
	defer s.Close()
	if err := s.Publish(ctx, model(job, 1, 4)); err != nil {
		t.Fatal(err)
	}
	c := dial(t, brokers, job)
	if err := c.Submit(ctx, &fdxv1.Update{Job: job, ClientId: "a", BaseRound: 1}); err != nil {
		t.Fatal(err)
	}
	if d, err := s.Next(ctx); err != nil || d.Update.GetClientId() != "a" {
		t.Fatalf("Next = %v, %v; want a's update", d.Update, err)
	}

	// Another member with the aggregator's group.instance.id takes the
	// static membership over: the server's consumer is fenced.
	fence(t, brokers, job, s)

	if err := c.Submit(ctx, &fdxv1.Update{Job: job, ClientId: "b", BaseRound: 1}); err != nil {
		t.Fatal(err)
	}
	// The fence reaches the server at its next heartbeat, maybe after it
	// fetched b; from then on Next re-reads the round from the last commit.
	var got, after []string
	for s.rejoins == 0 || !slices.Contains(after, "a") || !slices.Contains(after, "b") {
		d, err := s.Next(ctx)
		if err != nil {
			t.Fatalf("Next after the fence: %v (got %v so far)", err, got)
		}
		got = append(got, d.Update.GetClientId())
		if s.rejoins > 0 {
			after = append(after, d.Update.GetClientId())
		}
	}
	t.Logf("deliveries %v, %v of them after %d rejoin(s)", got, after, s.rejoins)
	if s.rejoins != 1 {
		t.Errorf("the server rejoined %d times; want 1", s.rejoins)
	}
	if err := s.Publish(ctx, model(job, 2, 4)); err != nil {
		t.Fatalf("Publish after the rejoin: %v", err)
	}
	hist, err := History(ctx, Options{Brokers: brokers, Job: job})
	if err != nil || len(hist) != 2 {
		t.Fatalf("history: %d models, %v; want 2", len(hist), err)
	}
}

// fence makes another member take s's static membership over, as a second
// aggregator of the job would, and closes it.
func fence(t *testing.T, brokers, job string, s *Server) {
	t.Helper()
	assigned := make(chan struct{}, 1)
	other := rawClient(t, brokers, kgo.ConsumerGroup(GroupID(job)), kgo.InstanceID(s.role.instance),
		kgo.ConsumeTopics(UpdatesTopic(job)), kgo.SessionTimeout(10*time.Second), kgo.DisableAutoCommit(),
		kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			if len(m[UpdatesTopic(job)]) > 0 {
				select {
				case assigned <- struct{}{}:
				default:
				}
			}
		}))
	joined := testCtx(t, time.Minute)
	for len(assigned) == 0 {
		poll, cancel := context.WithTimeout(joined, 100*time.Millisecond)
		other.PollFetches(poll)
		cancel()
		if joined.Err() != nil {
			t.Fatal("the second member got no partitions within a minute")
		}
	}
	other.Close()
}
