package kafkachan

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"google.golang.org/protobuf/proto"

	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	"github.com/fdxkafka/fdxkafka/internal/logtest"
)

// produceModel writes a model record outside the server: in an aborted
// transaction when abort is set, else as a plain (non-transactional)
// record, the two tails the client's early stop must not be fooled by.
func produceModel(t *testing.T, brokers, job string, round int64, abort bool) {
	t.Helper()
	ctx := testCtx(t, 60*time.Second)
	o := Options{Brokers: brokers, Job: job}
	base := kafka.ConfigMap{"acks": "all"}
	if abort {
		base["transactional.id"] = "test-abort-" + job
	}
	cm := o.producerConfig(base)
	p, err := kafka.NewProducer(&cm)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	go drainEvents(p, o.logger(), nil)
	if abort {
		if err := p.InitTransactions(ctx); err != nil {
			t.Fatal(err)
		}
		if err := p.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
	}
	b, err := proto.Marshal(model(job, round, 10))
	if err != nil {
		t.Fatal(err)
	}
	topic := ModelTopic(job)
	done := make(chan kafka.Event, 1)
	if err := p.Produce(&kafka.Message{TopicPartition: kafka.TopicPartition{Topic: &topic, Partition: 0}, Value: b}, done); err != nil {
		t.Fatal(err)
	}
	if m := (<-done).(*kafka.Message); m.TopicPartition.Error != nil {
		t.Fatal(m.TopicPartition.Error)
	}
	if abort {
		if err := p.AbortTransaction(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// TestModelTail checks that a cold client reads the newest committed model
// whatever ends the partition: a commit marker (the usual case, where the
// reader stops at the high watermark), an aborted round, or a plain record
// after the marker.
func TestModelTail(t *testing.T) {
	for _, tc := range []struct {
		name string
		tail func(t *testing.T, brokers, job string)
		want int64
	}{
		{"commit marker", func(*testing.T, string, string) {}, 2},
		{"aborted round", func(t *testing.T, brokers, job string) { produceModel(t, brokers, job, 3, true) }, 2},
		{"plain record", func(t *testing.T, brokers, job string) { produceModel(t, brokers, job, 3, false) }, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			brokers, job := kafkatest.Brokers(t), kafkatest.Job(t)
			ctx := testCtx(t, 60*time.Second)
			s := newServer(t, brokers, job, 0)
			defer s.Close()
			for r := int64(1); r <= 2; r++ {
				if err := s.Publish(ctx, model(job, r, 10)); err != nil {
					t.Fatalf("Publish %d: %v", r, err)
				}
			}
			tc.tail(t, brokers, job)
			c := dial(t, brokers, job)
			m, err := c.Model(ctx, 0)
			if err != nil || m.GetRound() != tc.want {
				t.Fatalf("Model = round %d, %v; want round %d", m.GetRound(), err, tc.want)
			}
		})
	}
}

// TestGoLogChannelFromProperties turns the Go log channel back on from a
// properties file's strings, and librdkafka's lines reach slog.
func TestGoLogChannelFromProperties(t *testing.T) {
	o := Options{Brokers: "127.0.0.1:1", Job: "j", Properties: map[string]string{"go.logs.channel.enable": "true", "log_level": "7", "debug": "broker"}}
	var logs logtest.SyncBuffer
	o.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cm := o.producerConfig(nil)
	if v, ok := cm["go.logs.channel.enable"].(bool); !ok || !v {
		t.Fatalf("go.logs.channel.enable = %#v, want true", cm["go.logs.channel.enable"])
	}
	p, err := kafka.NewProducer(&cm)
	if err != nil {
		t.Fatal(err)
	}
	startLogs(p, cm, o.Logger)
	ctx := testCtx(t, 30*time.Second)
	for !strings.Contains(logs.String(), "librdkafka") {
		select {
		case <-ctx.Done():
			p.Close()
			t.Fatal("no librdkafka line reached slog")
		case <-time.After(10 * time.Millisecond):
		}
	}
	p.Close()
}
