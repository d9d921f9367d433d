package scaleout

import (
	"context"
	"crypto/ed25519"
	"errors"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fdxkafka/fdxkafka/aggregator/accumulator"
	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
	"github.com/fdxkafka/fdxkafka/shared/trust"
)

// rawClient is what anyone who can reach the broker holds: a plain
// producer and reader, no transaction, none of the job's keys.
func rawClient(t *testing.T, brokers string, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

func produce(ctx context.Context, t *testing.T, cl *kgo.Client, recs ...*kgo.Record) {
	t.Helper()
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
}

// forgedAccumulator is a well-formed accumulator of n updates of weight
// 1000 each, every value 50: what an attacker would like merged.
func forgedAccumulator(t *testing.T, cfg Config, n int) []byte {
	t.Helper()
	specs, err := cfgSpecs(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sizes := make([]int, len(specs))
	vals := make([][]float32, len(specs))
	for i, s := range specs {
		sizes[i] = s.Size()
		vals[i] = make([]float32, s.Size())
		for j := range vals[i] {
			vals[i][j] = 50
		}
	}
	acc, err := accumulator.New(sizes)
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		if err := acc.Add(1000, vals); err != nil {
			t.Fatal(err)
		}
	}
	b, err := acc.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// hostileConfig is testConfig with the partial key a deployment derives
// from its model key.
func hostileConfig(t *testing.T, job string) Config {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(job)
	cfg.PartialKey = trust.NewSigner(priv).DeriveKey("partials")
	return cfg
}

// attackerPartial is a well-formed partial of round claiming clients,
// sealed with a key of the attacker's own (nil: no MAC at all).
func attackerPartial(cfg Config, key []byte, worker string, round int64, clients []string, acc []byte) []byte {
	p := &partial{Round: round, Count: int64(len(clients)), Weight: 1000 * int64(len(clients)),
		Contributors: clients, Norms: make([]float64, len(clients)), Acc: acc}
	return p.seal(key, cfg.ID, worker)
}

// partialsOf reads the committed partials of a job's topic as the leader
// would, and calls found with each one that verifies until it returns true.
func partialsOf(ctx context.Context, t *testing.T, brokers string, cfg Config, found func(*kgo.Record, *partial) bool) {
	t.Helper()
	cl := rawClient(t, brokers, kgo.ConsumeTopics(kafkachan.PartialsTopic(cfg.ID)),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	for {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("waiting for a partial: %v", ctx.Err())
		}
		for _, r := range fs.Records() {
			if p, err := openPartial(cfg.PartialKey, cfg.ID, string(r.Key), r.Value); err == nil && found(r, p) {
				return
			}
		}
	}
}

// TestLeaderSurvivesHostilePartials writes what an attacker who can reach
// the broker can write to fdx.<job>.partials while a scaled-out job runs:
// garbage, a partial of round 2^40, forged well-formed partial claiming
// the round's clients with overwhelming weights, a genuine partial of an
// earlier round replayed, and a genuine partial of the open round replayed
// after the leader merged it. The leader skips and counts them all, never
// stops, and its models are the single aggregator's bit for bit.
func TestLeaderSurvivesHostilePartials(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	brokers := kafkatest.Brokers(t)
	want := reference(ctx, t, brokers)

	job := kafkatest.Job(t)
	cfg := hostileConfig(t, job)
	// Partials small enough to travel as single records, which is what the
	// attacker replays.
	opt := serverOptions(brokers, job)
	opt.ChunkBytes = 0
	started := startLeaderWith(ctx, t, opt, cfg)
	// A leader that stops ends the drive at once, not at the deadline.
	dctx, stopDrive := context.WithCancel(ctx)
	defer stopDrive()
	var res leaderResult
	done := make(chan struct{})
	go func() {
		defer close(done)
		if res = <-started; res.err != nil {
			stopDrive()
		}
	}()
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	w0 := startWorkerWith(wctx, t, &wg, opt, cfg, "w0", 3)
	w1 := startWorkerWith(wctx, t, &wg, opt, cfg, "w1", 5)
	waitAssigned(ctx, t, w0, w1)

	raw := rawClient(t, brokers, kgo.DefaultProduceTopic(kafkachan.PartialsTopic(job)))
	var clients []string
	for i := range testClients {
		clients = append(clients, clientName(i))
	}
	forged := forgedAccumulator(t, cfg, testClients)
	produce(ctx, t, raw,
		&kgo.Record{Key: []byte("w0"), Value: []byte("not a partial at all")},
		// Garbage with a MAC under the job's key (a worker's bug, or a
		// stolen key): it authenticates and still does not decode.
		&kgo.Record{Key: []byte("w0"), Value: append([]byte("garbage"), partialMAC(cfg.PartialKey, job, "w0", []byte("garbage"))...)},
		// The future round sealed with the job's own key: it
		// authenticates, and still must not stop the leader.
		&kgo.Record{Key: []byte("w0"), Value: attackerPartial(cfg, cfg.PartialKey, "w0", 1<<40, clients, forged)},
		&kgo.Record{Key: []byte("w1"), Value: attackerPartial(cfg, nil, "w1", 1, clients, forged)},
		&kgo.Record{Key: []byte("w1"), Value: attackerPartial(cfg, []byte("the attacker's own key, 32 bytes"), "w1", 1, clients, forged)},
	)
	var replayed []string
	defer func() {
		select {
		case <-done:
			if res.err != nil {
				t.Errorf("leader stopped: %v", res.err)
			}
		default:
		}
	}()
	got := driveWith(dctx, t, brokers, job, cfg, func(r int64) {
		// A genuine partial of this round, once the leader can have
		// merged it, and (from round 2) one of the round before.
		for _, round := range []int64{r, r - 1} {
			if round < 1 {
				continue
			}
			partialsOf(dctx, t, brokers, cfg, func(rec *kgo.Record, p *partial) bool {
				if p.Round != round || p.Count == 0 {
					return false
				}
				produce(dctx, t, raw, &kgo.Record{Key: rec.Key, Value: rec.Value, Headers: rec.Headers})
				replayed = append(replayed, string(rec.Key))
				return true
			})
		}
	})
	<-done
	if res.err != nil {
		return // reported by the deferred check
	}
	skipped := map[string]int{}
	late := 0
	for _, r := range res.recs {
		t.Logf("round %d: %d clients from %d partials, per worker %v, late %d, skipped %v", r.Round, r.Clients, r.Partials, r.Workers, r.Late, r.Skipped)
		for k, v := range r.Skipped {
			skipped[k] += v
		}
		late += r.Late
	}
	// bad_mac: the garbage, the unsealed and the foreign-key partial.
	wantSkipped := map[string]int{"malformed": 1, "future_round": 1, "bad_mac": 3, "duplicate": testRounds}
	if !maps.Equal(skipped, wantSkipped) {
		t.Errorf("skipped %v, want %v (replayed %v)", skipped, wantSkipped, replayed)
	}
	// Each replay of round r-1 is read in round r, as late.
	if late < testRounds-1 {
		t.Errorf("%d late partials, want at least the %d replays of closed rounds", late, testRounds-1)
	}
	sameModels(t, want, got)
}

// TestPartialMAC checks that a sealed partial opens only as what it was
// sealed as: the same key, job and worker.
func TestPartialMAC(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	p := &partial{Round: 3, Count: 1, Weight: 10, Contributors: []string{"c1"}, Norms: []float64{1}, Acc: []byte{1}}
	v := p.seal(key, "job", "w0")
	if got, err := openPartial(key, "job", "w0", v); err != nil || got.Round != 3 {
		t.Fatalf("open the sealed partial: %v, %+v", err, got)
	}
	for name, open := range map[string]func() error{
		"other worker": func() error { _, err := openPartial(key, "job", "w1", v); return err },
		"other job":    func() error { _, err := openPartial(key, "job2", "w0", v); return err },
		"other key":    func() error { _, err := openPartial([]byte("another key"), "job", "w0", v); return err },
		"unsealed":     func() error { _, err := openPartial(key, "job", "w0", p.marshal()); return err },
		"short":        func() error { _, err := openPartial(key, "job", "w0", v[:10]); return err },
	} {
		if err := open(); !errors.Is(err, errPartialMAC) {
			t.Errorf("%s: err %v, want errPartialMAC", name, err)
		}
	}
	flipped := append([]byte(nil), v...)
	flipped[len(partialMagic)] ^= 2 // the round
	if _, err := openPartial(key, "job", "w0", flipped); !errors.Is(err, errPartialMAC) {
		t.Errorf("a partial with its round changed opened: %v", err)
	}
}
