package kafkachan

import (
	"context"
	"errors"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
)

// attacker is a plain kgo client with the client principal's credentials
// (props): what a participant could run instead of our code.
func attacker(t *testing.T, brokers string, props map[string]string, extra ...kgo.Opt) *kgo.Client {
	t.Helper()
	opts, err := Options{Brokers: brokers, Job: "attacker", Properties: props}.clientOpts(extra...)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// wantDenied checks that err is Kafka's refusal want.
func wantDenied(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Errorf("%s: %v; want %v", what, err, want)
	}
}

// wantUnauthenticated checks that a kafkachan error is marked
// channel.ErrUnauthenticated (not retried as unreachable) and says why.
func wantUnauthenticated(t *testing.T, what string, err error, msg string) {
	t.Helper()
	if !errors.Is(err, channel.ErrUnauthenticated) {
		t.Errorf("%s: %v; want channel.ErrUnauthenticated", what, err)
		return
	}
	if errors.Is(err, channel.ErrUnreachable) {
		t.Errorf("%s: %v is also marked unreachable", what, err)
	}
	if !strings.Contains(err.Error(), msg) {
		t.Errorf("%s: %q does not say %q", what, err, msg)
	}
}

// pollError polls c until it reports want, failing on any record. Other
// errors (the client principal's group lookups are refused too) are
// logged and passed over.
func pollError(ctx context.Context, t *testing.T, c *kgo.Client, what string, want error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		fs := c.PollFetches(ctx)
		fs.EachRecord(func(r *kgo.Record) { t.Fatalf("%s: read a record at %s[%d]@%d", what, r.Topic, r.Partition, r.Offset) })
		found := false
		fs.EachError(func(_ string, _ int32, err error) {
			if errors.Is(err, want) {
				t.Logf("%s: %v", what, err)
				found = true
			} else if ctx.Err() == nil {
				t.Logf("%s: passing over %v", what, err)
			}
		})
		if found {
			return
		}
	}
	t.Fatalf("%s: no %v within 30 s", what, want)
}

// TestACLs runs against kafka.sh's secure mode, with the ACLs that
// `kafka.sh acls JOB` grants: the aggregator runs its job, a client reads
// models and submits updates, and the client principal can do nothing
// else: not write the model topic, not read the updates topic, not join
// the aggregator's group, not act as the aggregator. Refusals surface as
// channel.ErrUnauthenticated with a clear message.
func TestACLs(t *testing.T) {
	sb := kafkatest.SecureBroker(t)
	job := kafkatest.Job(t)
	sb.Grant(t, job)
	aggProps, cliProps := sb.Props(t, "aggregator"), sb.Props(t, "client")
	ctx := testCtx(t, 3*time.Minute)
	agg := Options{Brokers: sb.Brokers, Job: job, Properties: aggProps, Logger: testLogger(t)}
	cli := Options{Brokers: sb.Brokers, Job: job, Properties: cliProps, Logger: testLogger(t)}

	s, err := NewServer(ctx, ServerOptions{Options: agg})
	if err != nil {
		t.Fatalf("aggregator principal: NewServer: %v", err)
	}
	defer s.Close()
	if err := s.Publish(ctx, model(job, 1, 4)); err != nil {
		t.Fatalf("aggregator principal: Publish: %v", err)
	}

	t.Run("client reads models and submits updates", func(t *testing.T) {
		c, err := Dial(ctx, ClientOptions{Options: cli})
		if err != nil {
			t.Fatalf("client principal: Dial: %v", err)
		}
		defer c.Close()
		if m, err := c.Model(ctx, 1); err != nil || m.GetRound() != 1 {
			t.Fatalf("client principal: Model = round %d, %v; want round 1", m.GetRound(), err)
		}
		if err := c.Submit(ctx, &fdxv1.Update{Job: job, ClientId: "a", BaseRound: 1, NumExamples: 3}); err != nil {
			t.Fatalf("client principal: Submit: %v", err)
		}
		d, err := s.Next(ctx)
		if err != nil || d.Update.GetClientId() != "a" {
			t.Fatalf("aggregator Next = %v, %v; want a's update", d.Update, err)
		}
	})

	t.Run("client cannot write the model topic", func(t *testing.T) {
		p := attacker(t, sb.Brokers, cliProps, kgo.RecordDeliveryTimeout(20*time.Second), kgo.RecordPartitioner(keyPartitioner()))
		forged := []byte("forged final model")
		err := p.ProduceSync(ctx, &kgo.Record{Topic: ModelTopic(job), Partition: 0, Value: forged}).FirstErr()
		wantDenied(t, "producing to the model topic", err, kerr.TopicAuthorizationFailed)
		hist, err := History(ctx, agg)
		if err != nil || len(hist) != 1 || hist[0].GetRound() != 1 {
			t.Errorf("model history after the attempt: %d models, %v; want only round 1", len(hist), err)
		}
	})

	t.Run("client cannot read the updates topic", func(t *testing.T) {
		c := attacker(t, sb.Brokers, cliProps,
			kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{UpdatesTopic(job): {0: kgo.NewOffset().AtStart()}}))
		pollError(ctx, t, c, "reading the updates topic", kerr.TopicAuthorizationFailed)
	})

	t.Run("client cannot join the aggregator's group", func(t *testing.T) {
		// The model topic is readable: only the group can refuse.
		c := attacker(t, sb.Brokers, cliProps, kgo.ConsumerGroup(GroupID(job)), kgo.ConsumeTopics(ModelTopic(job)),
			kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
		pollError(ctx, t, c, "joining the aggregator's group", kerr.GroupAuthorizationFailed)
	})

	t.Run("client cannot act as the aggregator", func(t *testing.T) {
		_, err := NewServer(testCtx(t, time.Minute), ServerOptions{Options: cli})
		wantUnauthenticated(t, "NewServer as the client principal", err, "no ACL allows")
	})

	t.Run("client of a job without ACLs", func(t *testing.T) {
		other := cli
		other.Job = job + "-other"
		c, err := Dial(ctx, ClientOptions{Options: other})
		if err != nil {
			t.Fatalf("Dial: %v", err)
		}
		defer c.Close()
		_, err = c.Model(testCtx(t, time.Minute), 1)
		wantUnauthenticated(t, "Model of an ungranted job", err, "no ACL allows")
		err = c.Submit(testCtx(t, time.Minute), &fdxv1.Update{Job: other.Job, ClientId: "a", BaseRound: 1})
		wantUnauthenticated(t, "Submit to an ungranted job", err, "no ACL allows")
	})

	t.Run("wrong password", func(t *testing.T) {
		bad := cli
		bad.Properties = maps.Clone(cliProps)
		bad.Properties["sasl.password"] = "not-the-password"
		start := time.Now()
		_, err := Dial(testCtx(t, 20*time.Second), ClientOptions{Options: bad})
		wantUnauthenticated(t, "Dial with a wrong password", err, "refused the SASL login")
		t.Logf("Dial with a wrong password failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
		_, err = NewServer(testCtx(t, 20*time.Second), ServerOptions{Options: bad})
		wantUnauthenticated(t, "NewServer with a wrong password", err, "refused the SASL login")
	})
}
