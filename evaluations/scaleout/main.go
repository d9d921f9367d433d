// Command scaleout measures FedAvg fold throughput of the Kafka scale-out
// (package aggregator/scaleout) with 1, 2, ... workers: it fills the
// updates topic with one round of N valid, distinct updates, then starts
// the leader and W workers in this process and times how long the round
// takes to close (the model of round 2 committed). The single aggregator
// (the coordinator) drains the same kind of round for comparison.
//
//	go run ./evaluations/scaleout -clients 10000 -workers 1,2
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/fdxkafka/fdxkafka/aggregator/coordinator"
	"github.com/fdxkafka/fdxkafka/aggregator/round"
	"github.com/fdxkafka/fdxkafka/aggregator/scaleout"
	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/embedded"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
	"github.com/fdxkafka/fdxkafka/shared/model"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "scaleout:", err)
		os.Exit(1)
	}
}

type opts struct {
	brokers    string
	clients    int
	partitions int
	workers    []int
	modelKind  string
	flushEvery int
}

func run() error {
	var o opts
	var workers string
	flag.StringVar(&o.brokers, "broker", "", "Kafka bootstrap list (default: an embedded broker)")
	flag.IntVar(&o.clients, "clients", 10000, "updates in the round")
	flag.IntVar(&o.partitions, "update-partitions", 4, "partitions of the updates topic")
	flag.StringVar(&workers, "workers", "1,2", "worker counts to measure (0: the single aggregator)")
	flag.StringVar(&o.modelKind, "model", "logreg", "logreg or 2nn")
	flag.IntVar(&o.flushEvery, "flush-every", 1024, "updates per partial")
	flag.Parse()
	for _, w := range strings.Split(workers, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(w))
		if err != nil || n < 0 {
			return fmt.Errorf("-workers %q: want counts", workers)
		}
		o.workers = append(o.workers, n)
	}
	if o.brokers == "" {
		b, err := embedded.Start(embedded.Options{Addr: "127.0.0.1:0"})
		if err != nil {
			return err
		}
		defer b.Close()
		o.brokers = b.Addr()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	fmt.Printf("model %s, %d updates, %d partitions, broker %s\n", o.modelKind, o.clients, o.partitions, o.brokers)
	fmt.Printf("%-8s %-10s %-12s %-10s\n", "workers", "close_s", "updates/s", "cpu_s")
	for _, w := range o.workers {
		secs, cpu, err := measure(ctx, o, w)
		if err != nil {
			return fmt.Errorf("%d workers: %w", w, err)
		}
		fmt.Printf("%-8d %-10.2f %-12.0f %-10.2f\n", w, secs, float64(o.clients)/secs, cpu)
	}
	return nil
}

func cpuNow() float64 {
	var r syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &r)
	return time.Duration(r.Utime.Nano() + r.Stime.Nano()).Seconds()
}

// measure runs one job: publish round 1, fill the topic, then time the
// round's close with w workers (0: the single aggregator).
func measure(ctx context.Context, o opts, w int) (float64, float64, error) {
	job := fmt.Sprintf("scaleout-%d-%d", w, time.Now().UnixNano())
	const inDim, classes = 784, 10
	cfg := scaleout.Config{Job: round.Job{ID: job, NumRounds: 1, MinClients: o.clients,
		Train: &fdxv1.TrainConfig{Model: o.modelKind, Seed: 1}, InDim: inDim, Classes: classes}}
	specs, err := model.SpecsFor(o.modelKind, inDim, classes)
	if err != nil {
		return 0, 0, err
	}
	so := kafkachan.ServerOptions{Options: kafkachan.Options{Brokers: o.brokers, Job: job},
		TopicOptions: kafkachan.TopicOptions{UpdatePartitions: o.partitions}}
	// Round 1's model comes from the leader (or the coordinator); the
	// updates are perturbations of the same initial parameters.
	net, err := model.New(o.modelKind, inDim, classes, 1)
	if err != nil {
		return 0, 0, err
	}
	if err := kafkachan.EnsureTopics(ctx, so.Options, kafkachan.TopicOptions{UpdatePartitions: o.partitions, Partials: true}); err != nil {
		return 0, 0, err
	}
	if err := fill(ctx, o, job, net.Params(), specs); err != nil {
		return 0, 0, err
	}
	start, cpu0 := time.Now(), cpuNow()
	if w == 0 {
		srv, err := kafkachan.NewServer(ctx, so)
		if err != nil {
			return 0, 0, err
		}
		defer srv.Close()
		strat, _ := strategy.New(strategy.Config{Name: "fedavg"})
		co, err := coordinator.New(coordinator.Config{Job: cfg.Job}, srv, strat, nil, nil, nil)
		if err != nil {
			return 0, 0, err
		}
		if _, err := co.Run(ctx); err != nil {
			return 0, 0, err
		}
		return time.Since(start).Seconds(), cpuNow() - cpu0, nil
	}
	lo := so
	lo.MaxMessageBytes = scaleout.LeaderMessageBytes(kafkachan.MessageBytesFor(net.NumParams()))
	lch, err := kafkachan.NewLeader(ctx, lo)
	if err != nil {
		return 0, 0, err
	}
	defer lch.Close()
	leader, err := scaleout.NewLeader(cfg, lch, nil)
	if err != nil {
		return 0, 0, err
	}
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	for i := range w {
		name := "w" + strconv.Itoa(i)
		ch, err := kafkachan.NewWorker(ctx, so, name)
		if err != nil {
			return 0, 0, err
		}
		wk, err := scaleout.NewWorker(cfg, name, ch, nil)
		if err != nil {
			return 0, 0, err
		}
		wk.FlushEvery = o.flushEvery
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer ch.Close()
			if err := wk.Run(wctx); err != nil && !errors.Is(err, context.Canceled) {
				fmt.Fprintln(os.Stderr, "worker", name, err)
			}
		}()
	}
	if _, _, err := leader.Run(ctx); err != nil {
		return 0, 0, err
	}
	return time.Since(start).Seconds(), cpuNow() - cpu0, nil
}

// fill produces one valid update per client for round 1: a perturbation
// of the initial parameters (one of 8 variants, plus a per-client change
// of the last tensor so that no two are equal).
func fill(ctx context.Context, o opts, job string, global [][]float32, specs []tensor.Spec) error {
	popts, err := kafkachan.Options{Brokers: o.brokers, Job: job}.ClientOpts(kgo.DefaultProduceTopic(kafkachan.UpdatesTopic(job)),
		kgo.ProducerLinger(5*time.Millisecond), kgo.RequiredAcks(kgo.AllISRAcks()), kgo.MaxBufferedRecords(1024))
	if err != nil {
		return err
	}
	p, err := kgo.NewClient(popts...)
	if err != nil {
		return err
	}
	defer p.Close()
	var variants [][][]float32
	for v := range 8 {
		rng := rand.New(rand.NewPCG(1, uint64(v)))
		vv := make([][]float32, len(global))
		for k, g := range global {
			vv[k] = make([]float32, len(g))
			for j, x := range g {
				vv[k][j] = x + float32(rng.NormFloat64()*1e-3)
			}
		}
		variants = append(variants, vv)
	}
	var (
		mu    sync.Mutex
		first error
	)
	for i := range o.clients {
		v := variants[i%len(variants)]
		local := append([][]float32(nil), v...)
		last := append([]float32(nil), v[len(v)-1]...)
		last[i%len(last)] += 1e-4 * float32(i/len(last)+1)
		local[len(local)-1] = last
		u := &fdxv1.Update{Job: job, ClientId: strconv.Itoa(i), BaseRound: 1, NumExamples: 10, Params: tensor.Encode(local, specs)}
		b, err := proto.Marshal(u)
		if err != nil {
			return err
		}
		// Produce blocks while 1,024 records are buffered.
		p.Produce(ctx, &kgo.Record{Key: []byte(u.ClientId), Value: b}, func(_ *kgo.Record, err error) {
			if err != nil {
				mu.Lock()
				first = cmp.Or(first, err)
				mu.Unlock()
			}
		})
	}
	if err := p.Flush(ctx); err != nil {
		return err
	}
	mu.Lock()
	defer mu.Unlock()
	return first
}
