// Command foldrss measures the aggregator's peak resident memory while it
// folds one round of large updates from Kafka (by default 20 updates of
// 100 MB), to show what folding chunk by chunk saves. A child process (this command
// with -role produce) first sends -updates synthetic updates of -mb MB
// through the Kafka channel, in 1 MiB chunks, and exits; then this process
// runs a one-round FedAvg job over them with the real coordinator and
// channel, sampling its RSS (/proc/self/statm) every 10 ms, and prints the
// peak per phase: start (build and publish the initial model), collect
// (receive, validate and fold the updates), close (finish the mean, encode
// and publish the next model), and the kernel's high-water mark.
//
// It uses only APIs that exist before and after chunk-by-chunk folding, so
// the same file builds on both to compare them.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/coordinator"
	"github.com/fdxkafka/fdxkafka/aggregator/round"
	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	"github.com/fdxkafka/fdxkafka/internal/cli"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
	"github.com/fdxkafka/fdxkafka/shared/model"
	"github.com/fdxkafka/fdxkafka/shared/rules"
)

func main() { cli.Main("foldrss", run) }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("foldrss", flag.ContinueOnError)
	fs.SetOutput(stderr)
	brokers := fs.String("brokers", "127.0.0.1:9092", "Kafka bootstrap list")
	mb := fs.Int("mb", 100, "synthetic model size in MB")
	updates := fs.Int("updates", 20, "updates in the round")
	role := fs.String("role", "aggregate", `"aggregate" (measures), or "produce" (the child that sends the updates)`)
	job := fs.String("job", "", "job id (produce: the aggregator's)")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	kind := fmt.Sprintf("synthetic:%d", *mb)
	if *role == "produce" {
		return produce(ctx, *brokers, *job, kind, *updates)
	}
	if *job == "" {
		*job = fmt.Sprintf("foldrss-%d-%s", *mb, strconv.FormatInt(time.Now().UnixNano(), 36))
	}
	return aggregate(ctx, *brokers, *job, kind, *mb, *updates, stdout, stderr)
}

// options are the channel settings both sides use: 1 MiB chunks, updates
// of up to the model's size plus room for their envelope.
func options(brokers, job, kind string) (kafkachan.Options, kafkachan.TopicOptions, error) {
	specs, err := model.SpecsFor(kind, 784, 10)
	if err != nil {
		return kafkachan.Options{}, kafkachan.TopicOptions{}, err
	}
	n := 0
	for _, s := range specs {
		n += s.Size()
	}
	return kafkachan.Options{Brokers: brokers, Job: job},
		kafkachan.TopicOptions{UpdatePartitions: 1, MaxMessageBytes: kafkachan.MessageBytesFor(n) + 1<<20}, nil
}

// produce sends the updates, one client at a time.
func produce(ctx context.Context, brokers, job, kind string, updates int) error {
	o, _, err := options(brokers, job, kind)
	if err != nil {
		return err
	}
	for k := range updates {
		net, err := model.New(kind, 784, 10, uint64(1000+k))
		if err != nil {
			return err
		}
		u := &fdxv1.Update{Job: job, ClientId: fmt.Sprintf("c%02d", k), BaseRound: 1, NumExamples: int64(10 + k), Params: net.Tensors()}
		net = nil
		c, err := kafkachan.Dial(ctx, kafkachan.ClientOptions{Options: o, MaxMessageBytes: 512 << 20})
		if err != nil {
			return err
		}
		err = c.Submit(ctx, u)
		c.Close()
		if err != nil {
			return fmt.Errorf("submit %s: %w", u.GetClientId(), err)
		}
		u = nil
		runtime.GC()
	}
	return nil
}

// sampler tracks, per phase, the peak RSS, the peak live Go heap (as of
// the last GC: what the program holds, whatever the GC's pacing lets the
// heap grow to) and the peak of RSS less Go's resident memory (C
// allocations, the binary).
type sampler struct {
	mu    sync.Mutex
	phase string
	peak  map[string]int64
	live  map[string]int64
	other map[string]int64
	order []string
	page  int64
	m     []metrics.Sample
}

func newSampler() *sampler {
	return &sampler{peak: map[string]int64{}, live: map[string]int64{}, other: map[string]int64{}, page: int64(os.Getpagesize()),
		m: []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}}
}

func (s *sampler) set(phase string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.phase = phase
	if _, ok := s.peak[phase]; !ok {
		s.order = append(s.order, phase)
		s.peak[phase] = 0
	}
	s.sampleLocked()
}

func (s *sampler) sampleLocked() {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	rss := pages * s.page
	s.peak[s.phase] = max(s.peak[s.phase], rss)
	metrics.Read(s.m)
	s.live[s.phase] = max(s.live[s.phase], int64(s.m[0].Value.Uint64()))
	goRes := int64(s.m[1].Value.Uint64()) - int64(s.m[2].Value.Uint64())
	s.other[s.phase] = max(s.other[s.phase], rss-goRes)
}

func (s *sampler) run(ctx context.Context) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.mu.Lock()
			s.sampleLocked()
			s.mu.Unlock()
		}
	}
}

// observer moves the sampler through the phases.
type observer struct {
	s        *sampler
	accepted atomic.Int32
	want     int32
	heapAt   atomic.Uint64 // Go heap in use when the last update was folded
}

func (o *observer) RoundStarted(int64) { o.s.set("collect") }
func (o *observer) UpdateAccepted(string, int) {
	if o.accepted.Add(1) == o.want {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		o.heapAt.Store(ms.HeapInuse)
		o.s.set("close")
	}
}
func (o *observer) UpdateRejected(r rules.Reason, id string, _ int) {
	slog.Warn("update rejected", "client", id, "reason", r)
}
func (o *observer) RoundClosed(coordinator.RoundRecord) {}

func aggregate(ctx context.Context, brokers, job, kind string, mb, updates int, stdout, stderr io.Writer) error {
	o, to, err := options(brokers, job, kind)
	if err != nil {
		return err
	}
	srv, err := kafkachan.NewServer(ctx, kafkachan.ServerOptions{Options: o, TopicOptions: to})
	if err != nil {
		return err
	}
	defer srv.Close()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	start := time.Now()
	cmd := exec.CommandContext(ctx, self, "-role", "produce", "-brokers", brokers, "-job", job, "-mb", strconv.Itoa(mb), "-updates", strconv.Itoa(updates))
	cmd.Stdout, cmd.Stderr = stderr, stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("producer: %w", err)
	}
	produced := time.Since(start)

	s := newSampler()
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	s.set("start")
	go s.run(sctx)
	obs := &observer{s: s, want: int32(updates)}
	strat, err := strategy.New(strategy.Config{Name: "fedavg"})
	if err != nil {
		return err
	}
	co, err := coordinator.New(coordinator.Config{Job: round.Job{ID: job, NumRounds: 1, MinClients: updates,
		Train: &fdxv1.TrainConfig{Model: kind, Seed: 1}, InDim: 784, Classes: 10}}, srv, strat, nil, obs, slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		return err
	}
	start = time.Now()
	res, err := co.Run(ctx)
	if err != nil {
		return err
	}
	ran := time.Since(start)
	stop()
	status, _ := os.ReadFile("/proc/self/status")
	hwm := ""
	for _, l := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			hwm = strings.TrimSpace(strings.TrimPrefix(l, "VmHWM:"))
		}
	}
	specs, _ := model.SpecsFor(kind, 784, 10)
	params := 0
	for _, sp := range specs {
		params += sp.Size()
	}
	mbOf := func(b int64) string { return fmt.Sprintf("%.0f MB", float64(b)/1e6) }
	fmt.Fprintf(stdout, "model %s: %d parameters, %s as float32; %d updates (%d MB each) sent in %.1f s; round of %d clients folded and published in %.1f s\n",
		kind, params, mbOf(int64(4*params)), updates, mb, produced.Seconds(), res.Rounds[0].Clients, ran.Seconds())
	fmt.Fprintf(stdout, "aggregate (fold and finish) %.1f s of the round\n", res.Rounds[0].AggregateMs/1000)
	for _, ph := range s.order {
		fmt.Fprintf(stdout, "peak RSS %-8s %s (%.2f× the model); peak live Go heap %s; peak RSS outside Go's heap %s\n",
			ph+":", mbOf(s.peak[ph]), float64(s.peak[ph])/float64(4*params), mbOf(s.live[ph]), mbOf(s.other[ph]))
	}
	fmt.Fprintf(stdout, "VmHWM: %s\n", hwm)
	fmt.Fprintf(stdout, "Go heap in use after the last fold: %s; accumulator alone (16 B/param): %s; global model (float32): %s\n",
		mbOf(int64(obs.heapAt.Load())), mbOf(int64(16*params)), mbOf(int64(4*params)))
	if h, ok := any(srv).(interface{ HeldUpdateBytes() (int64, int64) }); ok {
		_, peak := h.HeldUpdateBytes()
		fmt.Fprintf(stdout, "update bytes held by the channel at most: %d\n", peak)
	} else {
		fmt.Fprintln(stdout, "update bytes held by the channel at most: (not counted in this build)")
	}
	return nil
}
