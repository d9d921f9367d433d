package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// RoundReport is one round as the fleet saw it.
type RoundReport struct {
	Round   int64 `json:"round"`
	Updates int   `json:"updates"`
	Bytes   int64 `json:"bytes"`
	// BuildMs builds the round's model variants.
	BuildMs float64 `json:"build_ms"`
	// SendMs runs from the first update produced to the last acknowledged.
	SendMs float64 `json:"send_ms"`
	// CloseMs runs from the last update acknowledged (the last one the
	// round needs, durable in the broker) to the next model being visible
	// to a reader.
	CloseMs float64 `json:"close_ms"`
	// IngestMs runs from the first update produced to the next model being
	// visible: the aggregator's time to take in the round.
	IngestMs float64 `json:"ingest_ms"`
	// UpdatesPerSec and MBPerSec are the aggregator's ingest rate,
	// Updates / IngestMs. They cannot exceed SendPerSec, the fleet's own
	// rate: when they are close, the fleet, not the aggregator, was the
	// limit.
	UpdatesPerSec float64 `json:"updates_per_s"`
	MBPerSec      float64 `json:"mb_per_s"`
	SendPerSec    float64 `json:"send_per_s"`
	// Downloads, FanOutMs and FanOutBytes are the gRPC mode's fan-out: the
	// round's N model downloads, the time from the first request to the
	// last model received, and the bytes the aggregator sent for them (at
	// the wire, as the fleet's connections count them). On Kafka the
	// brokers fan the model out, not the aggregator.
	Downloads   int     `json:"downloads,omitempty"`
	FanOutMs    float64 `json:"fan_out_ms,omitempty"`
	FanOutBytes int64   `json:"fan_out_bytes,omitempty"`
}

// generate plays the fleet: for each round's model as it appears, it sends
// one valid update per client id 0..N-1 through a few producers, and
// times the round.
func generate(ctx context.Context, cfg Config) ([]RoundReport, error) {
	opt := kafkachan.Options{Brokers: cfg.Brokers, Job: cfg.Job, Properties: cfg.KafkaProperties, Logger: cfg.Log.With("part", "fleet")}
	watcher, err := kafkachan.Dial(ctx, kafkachan.ClientOptions{Options: opt})
	if err != nil {
		return nil, err
	}
	defer watcher.Close()
	m, err := watcher.Model(ctx, 1)
	if err != nil {
		return nil, err
	}
	var f *fleet
	var out []RoundReport
	for !m.GetFinal() {
		if f == nil {
			if f, err = newFleet(ctx, cfg, m); err != nil {
				return nil, err
			}
			defer f.close()
		}
		rr, err := f.round(ctx, m)
		if err != nil {
			return nil, err
		}
		next, err := watcher.Model(ctx, m.GetRound()+1)
		if err != nil {
			return nil, err
		}
		visible := time.Now()
		rr.CloseMs = ms(visible.Sub(f.lastAck))
		rr.IngestMs = ms(visible.Sub(f.firstSent))
		rr.UpdatesPerSec = float64(rr.Updates) / visible.Sub(f.firstSent).Seconds()
		rr.MBPerSec = float64(rr.Bytes) / 1e6 / visible.Sub(f.firstSent).Seconds()
		cfg.Log.Info("round closed", "round", rr.Round, "updates", rr.Updates, "updates_per_s", int(rr.UpdatesPerSec),
			"send_per_s", int(rr.SendPerSec), "close_ms", rr.CloseMs)
		out = append(out, rr)
		m = next
	}
	return out, nil
}

// fleet holds the producers and the per-round update templates.
type fleet struct {
	cfg       Config
	producers []*kgo.Client
	topic     string
	firstSent time.Time
	lastAck   time.Time
}

func newFleet(ctx context.Context, cfg Config, m *fdxv1.GlobalModel) (*fleet, error) {
	size := 0
	for _, t := range m.GetParams() {
		size += len(t.GetData())
	}
	f := &fleet{cfg: cfg, topic: kafkachan.UpdatesTopic(cfg.Job)}
	opt := kafkachan.Options{Brokers: cfg.Brokers, Job: cfg.Job, Properties: cfg.KafkaProperties, Logger: cfg.Log.With("part", "fleet")}
	opts, err := opt.ClientOpts(
		kgo.DefaultProduceTopic(f.topic),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(5*time.Millisecond),
		kgo.ProducerBatchMaxBytes(int32(kafkachan.MessageBytesFor(size/4))),
		kgo.ProducerBatchCompression(kgo.NoCompression()),
		// Bound what the producers buffer: the fleet must not eat the
		// memory the aggregator is measured on.
		kgo.MaxBufferedBytes(64<<20),
	)
	if err != nil {
		return nil, fmt.Errorf("fleet producer: %w", err)
	}
	for range cfg.Producers {
		cl, err := kgo.NewClient(opts...)
		if err != nil {
			f.close()
			return nil, fmt.Errorf("fleet producer: %w", err)
		}
		f.producers = append(f.producers, cl)
		// Connect now, so that the first round's timing is not the
		// connection setup's.
		mctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err = kadm.NewClient(cl).Metadata(mctx, f.topic)
		cancel()
		if err != nil {
			f.close()
			return nil, fmt.Errorf("fleet producer: %w", err)
		}
	}
	return f, nil
}

func (f *fleet) close() {
	for _, p := range f.producers {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		p.Flush(ctx)
		cancel()
		p.Close()
	}
}

// templates are one round's encoded update parts. An update is the
// concatenation of a variant's prefix (job, round, num_examples and every
// tensor but the last, perturbed) and the client's own part (its id and
// its own perturbation of the last tensor): concatenated protobuf
// messages merge, and repeated fields keep their order.
type templates struct {
	prefixes [][]byte
	global   [][]float32
	last     *fdxv1.Tensor
}

func (f *fleet) build(m *fdxv1.GlobalModel) (*templates, error) {
	ts := m.GetParams()
	if len(ts) == 0 {
		return nil, errors.New("model has no tensors")
	}
	t := &templates{last: ts[len(ts)-1]}
	for _, x := range ts {
		v, err := tensor.Float32s(nil, x)
		if err != nil {
			return nil, fmt.Errorf("model round %d: %w", m.GetRound(), err)
		}
		t.global = append(t.global, v)
	}
	for k := range f.cfg.Variants {
		rng := rand.New(rand.NewPCG(f.cfg.Seed, uint64(m.GetRound())<<32|uint64(k)))
		u := &fdxv1.Update{Job: f.cfg.Job, BaseRound: m.GetRound(), NumExamples: f.cfg.Examples}
		for i, x := range ts[:len(ts)-1] {
			u.Params = append(u.Params, tensor.FromFloat32(x.GetName(), x.GetShape(), perturb(rng, t.global[i], f.cfg.Spread)))
		}
		b, err := proto.Marshal(u)
		if err != nil {
			return nil, err
		}
		t.prefixes = append(t.prefixes, b)
	}
	return t, nil
}

// update returns client i's encoded update.
func (t *templates) update(cfg Config, round int64, i int) ([]byte, error) {
	prefix := t.prefixes[i%len(t.prefixes)]
	return proto.MarshalOptions{}.MarshalAppend(slices.Clip(prefix), t.own(cfg, round, i))
}

// own is client i's own part of its update: its id and its perturbation of
// the last tensor.
func (t *templates) own(cfg Config, round int64, i int) *fdxv1.Update {
	rng := rand.New(rand.NewPCG(cfg.Seed^0x9e3779b97f4a7c15, uint64(round)<<32|uint64(i)))
	return &fdxv1.Update{
		ClientId: strconv.Itoa(i),
		Params:   []*fdxv1.Tensor{tensor.FromFloat32(t.last.GetName(), t.last.GetShape(), perturb(rng, t.global[len(t.global)-1], cfg.Spread))},
	}
}

func perturb(rng *rand.Rand, x []float32, spread float64) []float32 {
	out := make([]float32, len(x))
	for i, v := range x {
		out[i] = v + float32(rng.NormFloat64()*spread)
	}
	return out
}

// round sends every client's update for model m and waits for the
// broker's acknowledgements.
func (f *fleet) round(ctx context.Context, m *fdxv1.GlobalModel) (RoundReport, error) {
	rr := RoundReport{Round: m.GetRound(), Updates: f.cfg.Clients}
	start := time.Now()
	t, err := f.build(m)
	if err != nil {
		return rr, err
	}
	rr.BuildMs = ms(time.Since(start))
	var bytes atomic.Int64
	var mu sync.Mutex
	var lastAck time.Time
	f.firstSent = time.Now()
	errs := make(chan error, len(f.producers))
	var wg sync.WaitGroup
	for j, p := range f.producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := f.send(ctx, p, t, m.GetRound(), j, &bytes)
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			if n.After(lastAck) {
				lastAck = n
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	if err := errors.Join(collect(errs)...); err != nil {
		return rr, err
	}
	f.lastAck = lastAck
	rr.Bytes = bytes.Load()
	rr.SendMs = ms(lastAck.Sub(f.firstSent))
	rr.SendPerSec = float64(rr.Updates) / lastAck.Sub(f.firstSent).Seconds()
	return rr, nil
}

// send produces the updates of clients j, j+P, j+2P, ... through p and
// returns when the last is acknowledged, with that time.
func (f *fleet) send(ctx context.Context, p *kgo.Client, t *templates, round int64, j int, bytes *atomic.Int64) (time.Time, error) {
	var (
		mu   sync.Mutex
		last time.Time
		werr error
		wg   sync.WaitGroup
	)
	for i := j; i < f.cfg.Clients; i += len(f.producers) {
		v, err := t.update(f.cfg, round, i)
		if err != nil {
			wg.Wait()
			return time.Time{}, err
		}
		key := []byte(strconv.Itoa(i))
		wg.Add(1)
		// Produce blocks while the buffer is full, until ctx ends.
		p.Produce(ctx, &kgo.Record{Key: key, Value: v}, func(r *kgo.Record, err error) {
			defer wg.Done()
			mu.Lock()
			defer mu.Unlock()
			last = time.Now()
			if err != nil {
				werr = cmp.Or(werr, fmt.Errorf("client %s: %w", r.Key, err))
			}
		})
		bytes.Add(int64(len(v) + len(key)))
	}
	wg.Wait()
	if werr != nil {
		return time.Time{}, werr
	}
	if last.IsZero() {
		last = f.firstSent
	}
	return last, nil
}

func collect(errs <-chan error) []error {
	var out []error
	for err := range errs {
		out = append(out, err)
	}
	return out
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
