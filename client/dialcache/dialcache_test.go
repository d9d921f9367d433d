package dialcache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/grpcchan"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// grpcServer starts a real aggregator-side gRPC server with a model.
func grpcServer(t *testing.T, job string) string {
	t.Helper()
	s, err := grpcchan.NewServer(grpcchan.ServerOptions{Addr: "127.0.0.1:0", Job: job})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.Publish(testCtx(t), &fdxv1.GlobalModel{Job: job, Round: 1}); err != nil {
		t.Fatal(err)
	}
	return s.Addr()
}

// counted wraps a dial function and counts its calls.
func counted(n *atomic.Int64, dial func(context.Context) (channel.Client, error)) func(context.Context) (channel.Client, error) {
	return func(ctx context.Context) (channel.Client, error) {
		n.Add(1)
		return dial(ctx)
	}
}

func grpcDial(addr, job string) func(context.Context) (channel.Client, error) {
	return func(ctx context.Context) (channel.Client, error) {
		return grpcchan.Dial(ctx, grpcchan.ClientOptions{Addr: addr, Job: job})
	}
}

// waitClosed waits until a gRPC client reports itself shut down.
func waitClosed(t *testing.T, cl channel.Client) {
	t.Helper()
	ctx := testCtx(t)
	for cl.(HealthChecker).Healthy(ctx) == nil {
		select {
		case <-ctx.Done():
			t.Fatal("evicted client was never closed")
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// TestKafkaReuse dials once over the embedded (or real) broker and serves
// a second invocation from the cache with the same working client.
func TestKafkaReuse(t *testing.T) {
	brokers, job := kafkatest.Brokers(t), kafkatest.Job(t)
	ctx := testCtx(t)
	s, err := kafkachan.NewServer(ctx, kafkachan.ServerOptions{Options: kafkachan.Options{Brokers: brokers, Job: job}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Publish(ctx, &fdxv1.GlobalModel{Job: job, Round: 1}); err != nil {
		t.Fatal(err)
	}
	c := New(Options{})
	defer c.Close()
	var dials atomic.Int64
	dial := counted(&dials, func(ctx context.Context) (channel.Client, error) {
		return kafkachan.Dial(ctx, kafkachan.ClientOptions{Options: kafkachan.Options{Brokers: brokers, Job: job}})
	})
	key := Key{Channel: "kafka", Broker: brokers, Job: job}
	var first channel.Client
	for i, wantWarm := range []bool{false, true} {
		cl, release, warm, err := c.Get(ctx, key, dial)
		if err != nil {
			t.Fatalf("Get %d: %v", i, err)
		}
		if warm != wantWarm {
			t.Errorf("Get %d: warm = %v, want %v", i, warm, wantWarm)
		}
		if i == 0 {
			first = cl
		} else if cl != first {
			t.Errorf("Get %d returned a different client than the cached one", i)
		}
		if m, err := cl.Model(ctx, 1); err != nil || m.GetRound() != 1 {
			t.Fatalf("Model through cached client = round %d, %v", m.GetRound(), err)
		}
		if err := cl.Submit(ctx, &fdxv1.Update{Job: job, ClientId: fmt.Sprint(i), BaseRound: 1}); err != nil {
			t.Fatalf("Submit through cached client: %v", err)
		}
		release(nil)
	}
	if dials.Load() != 1 {
		t.Errorf("%d dials for two invocations; want 1", dials.Load())
	}
	if c.Len() != 1 {
		t.Errorf("cache holds %d idle clients, want 1", c.Len())
	}
}

// TestConcurrentLeasesAndBound runs more concurrent invocations than the
// cache may keep: each gets a client of its own, and releasing them all
// keeps MaxIdle and closes the rest.
func TestConcurrentLeasesAndBound(t *testing.T) {
	job := kafkatest.Job(t)
	addr := grpcServer(t, job)
	ctx := testCtx(t)
	c := New(Options{MaxIdle: 2})
	defer c.Close()
	var dials atomic.Int64
	key := Key{Channel: "grpc", Broker: addr, Job: job}
	const n = 6
	clients := make([]channel.Client, n)
	releases := make([]func(error), n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl, release, _, err := c.Get(ctx, key, counted(&dials, grpcDial(addr, job)))
			if err != nil {
				errs <- err
				return
			}
			if _, err := cl.Model(ctx, 1); err != nil {
				errs <- err
			}
			clients[i], releases[i] = cl, release
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := map[channel.Client]bool{}
	for _, cl := range clients {
		if seen[cl] {
			t.Fatal("two concurrent invocations were given the same client")
		}
		seen[cl] = true
	}
	for _, r := range releases {
		r(nil)
		r(nil) // a second release is a no-op
	}
	if c.Len() != 2 {
		t.Fatalf("cache holds %d idle clients, want MaxIdle 2", c.Len())
	}
	// The first four released were evicted, oldest first, and closed.
	for _, cl := range clients[:n-2] {
		waitClosed(t, cl)
	}
	for _, cl := range clients[n-2:] {
		if err := cl.(HealthChecker).Healthy(ctx); err != nil {
			t.Errorf("kept client unhealthy: %v", err)
		}
	}
}

// TestEvictions covers the three ways out of the cache: a failed
// invocation, a failed health check, and idle time.
func TestEvictions(t *testing.T) {
	job := kafkatest.Job(t)
	addr := grpcServer(t, job)
	ctx := testCtx(t)
	now := time.Unix(1e9, 0)
	var clock sync.Mutex
	c := New(Options{IdleTimeout: time.Minute, Now: func() time.Time { clock.Lock(); defer clock.Unlock(); return now }})
	defer c.Close()
	var dials atomic.Int64
	dial := counted(&dials, grpcDial(addr, job))
	key := Key{Channel: "grpc", Broker: addr, Job: job}
	get := func() (channel.Client, func(error), bool) {
		t.Helper()
		cl, release, warm, err := c.Get(ctx, key, dial)
		if err != nil {
			t.Fatal(err)
		}
		return cl, release, warm
	}

	// A rejected update leaves the connection fine: kept.
	cl, release, _ := get()
	release(fmt.Errorf("round 1: %w", channel.ErrRejected))
	if cl2, release, warm := get(); !warm || cl2 != cl {
		t.Fatal("client released after a rejection was not reused")
	} else {
		// A transport failure evicts it.
		release(errors.New("stream reset"))
	}
	waitClosed(t, cl)
	if c.Len() != 0 {
		t.Fatalf("cache holds %d clients after an eviction", c.Len())
	}

	// A client that went bad while idle fails its health check.
	cl, release, warm := get()
	if warm {
		t.Fatal("Get after an eviction reused a client")
	}
	release(nil)
	cl.Close()
	if cl2, release, warm := get(); warm || cl2 == cl {
		t.Fatal("unhealthy client was reused")
	} else {
		release(nil)
	}

	// Idle past the timeout: evicted at the next Get.
	idle, release, _ := get() // the healthy one just released
	release(nil)
	clock.Lock()
	now = now.Add(time.Minute)
	clock.Unlock()
	if cl2, release, warm := get(); warm || cl2 == idle {
		t.Fatal("client idle past the timeout was reused")
	} else {
		release(nil)
	}
	waitClosed(t, idle)
	if got := dials.Load(); got != 4 {
		t.Errorf("%d dials; want 4 (first, after error, after health check, after idle)", got)
	}
}

func TestDigest(t *testing.T) {
	a := Digest(map[string]string{"sasl.username": "u", "sasl.password": "p"})
	b := Digest(map[string]string{"sasl.password": "p", "sasl.username": "u"})
	if a != b {
		t.Error("Digest depends on map order")
	}
	for _, other := range []string{
		Digest(map[string]string{"sasl.username": "u", "sasl.password": "q"}),
		Digest(map[string]string{"sasl.username": "u", "sasl.password": "p"}, "token"),
		Digest(map[string]string{"sasl.usernam": "eu", "sasl.password": "p"}),
	} {
		if other == a {
			t.Errorf("different settings share digest %s", a)
		}
	}
}

// TestClosed refuses Gets after Close and closes what is released later.
func TestClosed(t *testing.T) {
	job := kafkatest.Job(t)
	addr := grpcServer(t, job)
	ctx := testCtx(t)
	c := New(Options{})
	key := Key{Channel: "grpc", Broker: addr, Job: job}
	cl, release, _, err := c.Get(ctx, key, grpcDial(addr, job))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	release(nil)
	waitClosed(t, cl)
	if _, _, _, err := c.Get(ctx, key, grpcDial(addr, job)); !errors.Is(err, ErrClosed) {
		t.Errorf("Get after Close = %v, want ErrClosed", err)
	}
}
