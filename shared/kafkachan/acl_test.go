package kafkachan

import (
	"errors"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
)

// attacker is a plain Kafka client with the client principal's
// credentials: what a participant could run instead of our code.
func attacker(t *testing.T, props map[string]string, extra kafka.ConfigMap) kafka.ConfigMap {
	t.Helper()
	cm := kafka.ConfigMap{"bootstrap.servers": "", "go.logs.channel.enable": true}
	for k, v := range props {
		cm[k] = v
	}
	for k, v := range extra {
		cm[k] = v
	}
	return cm
}

// wantDenied checks that err is Kafka's refusal code.
func wantDenied(t *testing.T, what string, err error, code kafka.ErrorCode) {
	t.Helper()
	var ke kafka.Error
	if !errors.As(err, &ke) || ke.Code() != code {
		t.Errorf("%s: %v; want %v", what, err, code)
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

// pollError polls c until it reports an error with code, failing on any
// record. Other errors (the client principal's group lookups are refused
// too) are logged and passed over.
func pollError(t *testing.T, c *kafka.Consumer, what string, code kafka.ErrorCode) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		var err error
		switch ev := c.Poll(100).(type) {
		case *kafka.Message:
			if ev.TopicPartition.Error == nil {
				t.Fatalf("%s: read a record at %v", what, ev.TopicPartition)
			}
			err = ev.TopicPartition.Error
		case kafka.Error:
			err = ev
		default:
			continue
		}
		var ke kafka.Error
		if errors.As(err, &ke) && ke.Code() == code {
			t.Logf("%s: %v", what, err)
			return
		}
		t.Logf("%s: passing over %v", what, err)
	}
	t.Fatalf("%s: no %v within 30 s", what, code)
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
		cm := attacker(t, cliProps, kafka.ConfigMap{"bootstrap.servers": sb.Brokers, "message.timeout.ms": 20000})
		p, err := kafka.NewProducer(&cm)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		go func() {
			for range p.Logs() {
			}
		}()
		topic := ModelTopic(job)
		done := make(chan kafka.Event, 1)
		forged := []byte("forged final model")
		if err := p.Produce(&kafka.Message{TopicPartition: kafka.TopicPartition{Topic: &topic, Partition: 0}, Value: forged}, done); err != nil {
			t.Fatal(err)
		}
		m := (<-done).(*kafka.Message)
		wantDenied(t, "producing to the model topic", m.TopicPartition.Error, kafka.ErrTopicAuthorizationFailed)
		hist, err := History(ctx, agg)
		if err != nil || len(hist) != 1 || hist[0].GetRound() != 1 {
			t.Errorf("model history after the attempt: %d models, %v; want only round 1", len(hist), err)
		}
	})

	t.Run("client cannot read the updates topic", func(t *testing.T) {
		cm := attacker(t, cliProps, kafka.ConfigMap{"bootstrap.servers": sb.Brokers, "group.id": "fdx." + job + ".reader"})
		c, err := kafka.NewConsumer(&cm)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		go func() {
			for range c.Logs() {
			}
		}()
		topic := UpdatesTopic(job)
		if err := c.Assign([]kafka.TopicPartition{{Topic: &topic, Partition: 0, Offset: kafka.OffsetBeginning}}); err != nil {
			t.Fatal(err)
		}
		pollError(t, c, "reading the updates topic", kafka.ErrTopicAuthorizationFailed)
	})

	t.Run("client cannot join the aggregator's group", func(t *testing.T) {
		// The model topic is readable: only the group can refuse.
		cm := attacker(t, cliProps, kafka.ConfigMap{"bootstrap.servers": sb.Brokers, "group.id": GroupID(job), "auto.offset.reset": "earliest"})
		c, err := kafka.NewConsumer(&cm)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		go func() {
			for range c.Logs() {
			}
		}()
		if err := c.Subscribe(ModelTopic(job), nil); err != nil {
			t.Fatal(err)
		}
		pollError(t, c, "joining the aggregator's group", kafka.ErrGroupAuthorizationFailed)
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
