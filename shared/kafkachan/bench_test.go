package kafkachan

import (
	"context"
	"testing"
	"time"

	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
)

// BenchmarkColdInvocation is the transport side of a cold function
// invocation: dial, first model, one submit, close, each phase reported in
// ms/op. Timing goals live here and in evaluations/, not in tests.
func BenchmarkColdInvocation(b *testing.B) {
	brokers, job := kafkatest.Brokers(b), kafkatest.Job(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	s, err := NewServer(ctx, ServerOptions{Options: Options{Brokers: brokers, Job: job}, TopicOptions: TopicOptions{UpdatePartitions: 3}})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for r := int64(1); r <= 3; r++ {
		if err := s.Publish(ctx, model(job, r, 7850)); err != nil {
			b.Fatal(err)
		}
	}
	var dial, first, submit, closing time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		c, err := Dial(ctx, ClientOptions{Options: Options{Brokers: brokers, Job: job}})
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if m, err := c.Model(ctx, 3); err != nil || m.GetRound() != 3 {
			b.Fatalf("Model = round %d, %v", m.GetRound(), err)
		}
		t2 := time.Now()
		if err := c.Submit(ctx, &fdxv1.Update{Job: job, ClientId: "bench", BaseRound: 3}); err != nil {
			b.Fatal(err)
		}
		t3 := time.Now()
		c.Close()
		t4 := time.Now()
		dial += t1.Sub(t0)
		first += t2.Sub(t1)
		submit += t3.Sub(t2)
		closing += t4.Sub(t3)
	}
	n := float64(b.N)
	b.ReportMetric(float64(dial.Microseconds())/1000/n, "dial-ms/op")
	b.ReportMetric(float64(first.Microseconds())/1000/n, "model-ms/op")
	b.ReportMetric(float64(submit.Microseconds())/1000/n, "submit-ms/op")
	b.ReportMetric(float64(closing.Microseconds())/1000/n, "close-ms/op")
	b.ReportMetric(float64((dial+first+submit).Microseconds())/1000/n, "answer-ms/op")
}

// BenchmarkColdModelFetch times a new client's first Model of a 100 MB
// chunked model on one partition (dial excluded): the cold path of a
// large model, read where its manifest says and reassembled.
func BenchmarkColdModelFetch(b *testing.B) {
	brokers, job := kafkatest.Brokers(b), kafkatest.Job(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	const n = 25 << 20 // float32s: 100 MiB
	s, err := NewServer(ctx, ServerOptions{Options: Options{Brokers: brokers, Job: job},
		TopicOptions: TopicOptions{UpdatePartitions: 1, MaxMessageBytes: 4*n + 1<<20}})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if err := s.Publish(ctx, model(job, 1, n)); err != nil {
		b.Fatal(err)
	}
	var fetch time.Duration
	b.SetBytes(4 * n)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		c, err := Dial(ctx, ClientOptions{Options: Options{Brokers: brokers, Job: job}})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		t0 := time.Now()
		if m, err := c.Model(ctx, 1); err != nil || m.GetRound() != 1 {
			b.Fatalf("Model = round %d, %v", m.GetRound(), err)
		}
		fetch += time.Since(t0)
		b.StopTimer()
		c.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(fetch.Microseconds())/1000/float64(b.N), "fetch-ms/op")
}
