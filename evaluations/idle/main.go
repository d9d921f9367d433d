// Command idle measures what a long-running client costs while it waits
// for the next model: the fetch requests it sends the broker per second and
// the CPU it burns. N Kafka clients (kafkachan.Client, the participant's
// channel) read round 1 and then wait for round 2, which never comes, for
// a measured window.
//
// On the embedded broker every request is counted inside the broker. On a
// real broker (-broker) the broker's own CPU is read from /proc when
// -broker-pid is given, and requests are not counted.
//
//	go run ./evaluations/idle -clients 100 -window 10s
//	go run ./evaluations/idle -clients 100 -window 10s -broker 127.0.0.1:24092 -broker-pid $(cat /tmp/fdxkafka-broker-24092/kafka.pid)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"
	"google.golang.org/protobuf/types/known/timestamppb"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/embedded"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
	"github.com/fdxkafka/fdxkafka/shared/model"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "idle:", err)
		os.Exit(1)
	}
}

// counter counts broker requests by API key.
type counter struct {
	mu sync.Mutex
	n  map[int16]int64
	on atomic.Bool
}

func (c *counter) snapshot() map[int16]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[int16]int64, len(c.n))
	for k, v := range c.n {
		out[k] = v
	}
	return out
}

func run() error {
	clients := flag.Int("clients", 100, "idle clients")
	window := flag.Duration("window", 10*time.Second, "measured idle time")
	brokers := flag.String("broker", "", "Kafka bootstrap list (default: an embedded broker that counts requests)")
	brokerPID := flag.Int("broker-pid", 0, "with -broker: the broker's process id, to read its CPU")
	flag.Parse()
	if *clients < 1 || *window <= 0 {
		return fmt.Errorf("-clients %d, -window %v: want at least one client and a window", *clients, *window)
	}
	var reqs *counter
	if *brokers == "" {
		reqs = &counter{n: map[int16]int64{}}
		b, err := embedded.Start(embedded.Options{Addr: "127.0.0.1:0"})
		if err != nil {
			return err
		}
		defer b.Close()
		cl := b.Cluster()
		cl.Control(func(req kmsg.Request) (kmsg.Response, error, bool) {
			cl.KeepControl()
			if reqs.on.Load() {
				reqs.mu.Lock()
				reqs.n[req.Key()]++
				reqs.mu.Unlock()
			}
			return nil, nil, false
		})
		*brokers = b.Addr()
	}
	ctx, cancel := context.WithTimeout(context.Background(), *window+5*time.Minute)
	defer cancel()
	job := fmt.Sprintf("idle-%d-%d", *clients, time.Now().UnixNano())
	if err := publishRound1(ctx, *brokers, job); err != nil {
		return err
	}
	var wg sync.WaitGroup
	wctx, stop := context.WithCancel(ctx)
	ready := make(chan error, *clients)
	for i := range *clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := kafkachan.Dial(ctx, kafkachan.ClientOptions{Options: kafkachan.Options{Brokers: *brokers, Job: job}})
			if err != nil {
				ready <- fmt.Errorf("client %d: %w", i, err)
				return
			}
			defer c.Close()
			if _, err := c.Model(ctx, 1); err != nil {
				ready <- err
				return
			}
			ready <- nil
			if _, err := c.Model(wctx, 2); err != nil && !errors.Is(err, context.Canceled) && wctx.Err() == nil {
				fmt.Fprintln(os.Stderr, "client", i, err)
			}
		}()
	}
	for range *clients {
		if err := <-ready; err != nil {
			stop()
			wg.Wait()
			return err
		}
	}
	// Let connections settle, then measure.
	time.Sleep(2 * time.Second)
	cpu0, b0, t0 := selfCPU(), brokerCPU(*brokerPID), time.Now()
	if reqs != nil {
		reqs.on.Store(true)
	}
	time.Sleep(*window)
	secs := time.Since(t0).Seconds()
	cpu, bcpu := selfCPU()-cpu0, brokerCPU(*brokerPID)-b0
	if reqs != nil {
		reqs.on.Store(false)
	}
	stop()
	wg.Wait()
	n := float64(*clients)
	fmt.Printf("%d idle clients for %.1f s (broker %s)\n", *clients, secs, *brokers)
	fmt.Printf("client process CPU: %.3f s/s total, %.3f ms/s per client (%.4f%% of a core)\n", cpu/secs, 1000*cpu/secs/n, 100*cpu/secs/n)
	if *brokerPID != 0 {
		fmt.Printf("broker CPU: %.3f s/s total, %.3f ms/s per client\n", bcpu/secs, 1000*bcpu/secs/n)
	}
	if reqs != nil {
		snap := reqs.snapshot()
		keys := make([]int, 0, len(snap))
		var total int64
		for k, v := range snap {
			keys = append(keys, int(k))
			total += v
		}
		sort.Ints(keys)
		var parts []string
		for _, k := range keys {
			name := kmsg.NameForKey(int16(k))
			parts = append(parts, fmt.Sprintf("%s %.3f", name, float64(snap[int16(k)])/secs/n))
		}
		fmt.Printf("broker requests per client per second: %.3f (%s)\n", float64(total)/secs/n, strings.Join(parts, ", "))
		fmt.Printf("note: the embedded broker runs in this process, so the CPU above includes it\n")
	}
	return nil
}

func selfCPU() float64 {
	var r syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &r)
	return time.Duration(r.Utime.Nano() + r.Stime.Nano()).Seconds()
}

// brokerCPU reads utime+stime of pid from /proc (0 without a pid).
func brokerCPU(pid int) float64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// publishRound1 commits the job's first model through the aggregator's
// channel, as an aggregator would.
func publishRound1(ctx context.Context, brokers, job string) error {
	s, err := kafkachan.NewServer(ctx, kafkachan.ServerOptions{Options: kafkachan.Options{Brokers: brokers, Job: job}})
	if err != nil {
		return err
	}
	defer s.Close()
	net, err := model.New("logreg", 784, 10, 1)
	if err != nil {
		return err
	}
	specs, err := model.SpecsFor("logreg", 784, 10)
	if err != nil {
		return err
	}
	return s.Publish(ctx, &fdxv1.GlobalModel{Job: job, Round: 1, Params: tensor.Encode(net.Params(), specs),
		TrainConfig: &fdxv1.TrainConfig{Model: "logreg", Seed: 1}, NumRounds: 5, MinClients: 1, PublishedAt: timestamppb.Now()})
}
