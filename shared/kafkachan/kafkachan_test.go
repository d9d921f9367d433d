package kafkachan

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

func testCtx(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func model(job string, round int64, n int) *fdxv1.GlobalModel {
	vals := make([]float32, n)
	for i := range vals {
		vals[i] = float32(round) + float32(i)/float32(n)
	}
	return &fdxv1.GlobalModel{Job: job, Round: round, Params: []*fdxv1.Tensor{tensor.FromFloat32("w", []int64{int64(n)}, vals)}}
}

func newServer(t *testing.T, brokers, job string, maxBytes int) *Server {
	t.Helper()
	s, err := NewServer(testCtx(t, 60*time.Second), ServerOptions{
		Options:      Options{Brokers: brokers, Job: job},
		TopicOptions: TopicOptions{UpdatePartitions: 3, MaxMessageBytes: maxBytes},
	})
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	return s
}

func dial(t *testing.T, brokers, job string) *Client {
	t.Helper()
	c, err := Dial(testCtx(t, 30*time.Second), ClientOptions{Options: Options{Brokers: brokers, Job: job}})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestRoundTripAndResume runs one round through the broker, then restarts
// the server side and checks that it resumes from the committed model and
// does not see the committed update again, while an update sent after the
// last commit is delivered exactly once more.
func TestRoundTripAndResume(t *testing.T) {
	brokers, job := kafkatest.Brokers(t), kafkatest.Job(t)
	ctx := testCtx(t, 120*time.Second)
	s := newServer(t, brokers, job, 0)
	if m, err := s.Latest(ctx, nil); err != nil || m != nil {
		t.Fatalf("Latest on a new job = %v, %v; want nil, nil", m, err)
	}
	if err := s.Publish(ctx, model(job, 1, 10)); err != nil {
		t.Fatalf("Publish 1: %v", err)
	}
	c := dial(t, brokers, job)
	m, err := c.Model(ctx, 1)
	if err != nil || m.GetRound() != 1 {
		t.Fatalf("client Model = round %d, %v; want round 1", m.GetRound(), err)
	}
	if err := c.Submit(ctx, &fdxv1.Update{Job: job, ClientId: "a", BaseRound: 1, NumExamples: 5}); err != nil {
		t.Fatalf("Submit: %v", err)
	}
	d, err := s.Next(ctx)
	if err != nil || d.Update.GetClientId() != "a" || d.Key != "a" {
		t.Fatalf("Next = %+v, %v; want update from a", d, err)
	}
	if err := s.Publish(ctx, model(job, 2, 10)); err != nil {
		t.Fatalf("Publish 2: %v", err)
	}
	if m, err := c.Model(ctx, 2); err != nil || m.GetRound() != 2 {
		t.Fatalf("client Model(2) = round %d, %v", m.GetRound(), err)
	}
	// Sent after the commit: must come back after a restart.
	if err := c.Submit(ctx, &fdxv1.Update{Job: job, ClientId: "b", BaseRound: 2, NumExamples: 5}); err != nil {
		t.Fatalf("Submit b: %v", err)
	}
	if d, err := s.Next(ctx); err != nil || d.Update.GetClientId() != "b" {
		t.Fatalf("Next = %+v, %v; want b", d, err)
	}
	s.Close()

	s2 := newServer(t, brokers, job, 0)
	defer s2.Close()
	latest, err := s2.Latest(ctx, nil)
	if err != nil || latest.GetRound() != 2 {
		t.Fatalf("Latest after restart = round %d, %v; want 2", latest.GetRound(), err)
	}
	d, err = s2.Next(ctx)
	if err != nil || d.Update.GetClientId() != "b" {
		t.Fatalf("Next after restart = %+v, %v; want the uncommitted update b", d, err)
	}
	short, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if d, err := s2.Next(short); err == nil {
		t.Fatalf("Next delivered %v again; want nothing more", d.Update.GetClientId())
	}
	st := c.Stats()
	if st.MessagesSent != 2 || st.MessagesReceived < 2 {
		t.Errorf("client stats %+v: want 2 sent, >= 2 received", st)
	}
}

// TestLargeModel publishes a 6 MB model, which travels in chunks (see
// chunk_test.go for their failure modes), and checks the two limits: the
// server's own on the whole model, and the broker's on one record.
func TestLargeModel(t *testing.T) {
	brokers, job := kafkatest.Brokers(t), kafkatest.Job(t)
	ctx := testCtx(t, 120*time.Second)
	const n = 1_500_000 // 6 MB of float32
	s := newServer(t, brokers, job, MessageBytesFor(n))
	defer s.Close()
	if err := s.Publish(ctx, model(job, 1, n)); err != nil {
		t.Fatalf("Publish 6 MB model: %v", err)
	}
	c := dial(t, brokers, job)
	m, err := c.Model(ctx, 1)
	if err != nil {
		t.Fatalf("Model: %v", err)
	}
	vals, err := tensor.Float32s(nil, m.GetParams()[0])
	if err != nil || len(vals) != n || vals[n-1] != 1+float32(n-1)/float32(n) {
		t.Fatalf("model values: len %d, err %v", len(vals), err)
	}
	// A model over the server's own limit is refused before it is sent.
	if err := s.Publish(ctx, model(job, 2, 2*n)); err == nil || !strings.Contains(err.Error(), "over the job's limit") {
		t.Fatalf("Publish of a model over the server's limit = %v, want the client-side refusal", err)
	}
	// The broker itself refuses a record over the topic's limit: an
	// operator lowers the limit below one chunk under the server, and the
	// next model fails at the broker with a clear error.
	lowerMaxMessageBytes(ctx, t, brokers, ModelTopic(job), 512<<10)
	err = s.Publish(ctx, model(job, 2, n))
	if !errors.Is(err, kerr.MessageTooLarge) {
		t.Fatalf("Publish of a 6 MB model to a topic limited to 512 KiB = %v, want the broker's MESSAGE_TOO_LARGE", err)
	}
	t.Logf("broker refused: %v", err)
}

// TestUnreachable points a client at a port where nothing listens.
func TestUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err = Dial(ctx, ClientOptions{Options: Options{Brokers: addr, Job: kafkatest.Job(t)}})
	if !errors.Is(err, channel.ErrUnreachable) {
		t.Fatalf("Dial(%s) = %v; want ErrUnreachable", addr, err)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("Dial took %v, over its 3 s timeout by far", el)
	}
}
