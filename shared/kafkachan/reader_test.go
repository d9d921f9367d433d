package kafkachan

import (
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
)

// produceModel writes a model record outside the server: in an aborted
// transaction when abort is set, else as a plain (non-transactional)
// record, the two tails the client's early stop must not be fooled by.
func produceModel(t *testing.T, brokers, job string, round int64, abort bool) {
	t.Helper()
	ctx := testCtx(t, 60*time.Second)
	opts := []kgo.Opt{kgo.RequiredAcks(kgo.AllISRAcks()), kgo.RecordPartitioner(keyPartitioner())}
	if abort {
		opts = append(opts, kgo.TransactionalID("test-abort-"+job))
	}
	p := rawClient(t, brokers, opts...)
	if abort {
		if err := p.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
	}
	b, err := proto.Marshal(model(job, round, 10))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.ProduceSync(ctx, &kgo.Record{Topic: ModelTopic(job), Partition: 0, Value: b}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	if abort {
		if err := p.EndTransaction(ctx, kgo.TryAbort); err != nil {
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
