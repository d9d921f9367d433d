package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/fdxkafka/fdxkafka/client/participant"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
)

// The channels a fleet runs on.
const (
	ChannelKafka = participant.ChannelKafka
	ChannelGRPC  = participant.ChannelGRPC
)

const (
	// defaultConns is a handful of connections: enough that one HTTP/2
	// connection's single reader and writer are not the fleet's limit, few
	// enough that N clients are plainly not N connections.
	defaultConns = 8
	// defaultInFlight keeps the aggregator's round loop, which folds one
	// update at a time, always fed on loopback, while bounding what waits
	// in its memory: every submitted update is held, decoded, until the
	// loop answers it, so in-flight calls cost the aggregator InFlight ×
	// the update size, which would otherwise be measured as its RSS.
	defaultInFlight = 128
)

// grpcFleet plays N clients over a bounded pool of gRPC connections, each
// one the real participant's client (participant.Transport.Dial).
type grpcFleet struct {
	cfg  Config
	pool []channel.Client
	// firstSent and lastAck bound the round's updates, as in fleet.
	firstSent time.Time
	lastAck   time.Time
}

// generateGRPC plays the fleet over the gRPC channel at addr: for each
// round's model, N downloads of it (the fan-out), then N updates, and
// times the round as generate does.
func generateGRPC(ctx context.Context, cfg Config, addr string) ([]RoundReport, error) {
	tr := participant.Transport{Logger: cfg.Log.With("part", "fleet")}
	dial := func(id string) (channel.Client, error) {
		return tr.Dial(ctx, participant.Target{Channel: ChannelGRPC, Broker: addr, Job: cfg.Job, ClientID: id})
	}
	// The watcher has a connection of its own, so that seeing the next
	// model is not queued behind the fleet's calls.
	watcher, err := dial("fleet-watcher")
	if err != nil {
		return nil, err
	}
	defer watcher.Close()
	g := &grpcFleet{cfg: cfg}
	defer g.close()
	for k := range cfg.Conns {
		c, err := dial(fmt.Sprintf("fleet-conn-%d", k))
		if err != nil {
			return nil, err
		}
		g.pool = append(g.pool, c)
	}
	m, err := watcher.Model(ctx, 1)
	if err != nil {
		return nil, err
	}
	var out []RoundReport
	type seen struct {
		m       *fdxv1.GlobalModel
		visible time.Time
		err     error
	}
	for !m.GetFinal() {
		// The watcher waits for the next model from the start of the
		// round, as a gRPC client does: the aggregator stops serving as
		// soon as it has published the final model, so a request made
		// after that would find nobody, and one already waiting is
		// answered.
		nextCh := make(chan seen, 1)
		go func(round int64) {
			next, err := watcher.Model(ctx, round+1)
			nextCh <- seen{next, time.Now(), err}
		}(m.GetRound())
		rr, err := g.round(ctx, m)
		if err != nil {
			return nil, err
		}
		s := <-nextCh
		if s.err != nil {
			return nil, s.err
		}
		next, visible := s.m, s.visible
		rr.CloseMs = ms(visible.Sub(g.lastAck))
		rr.IngestMs = ms(visible.Sub(g.firstSent))
		rr.UpdatesPerSec = float64(rr.Updates) / visible.Sub(g.firstSent).Seconds()
		rr.MBPerSec = float64(rr.Bytes) / 1e6 / visible.Sub(g.firstSent).Seconds()
		cfg.Log.Info("round closed", "round", rr.Round, "downloads", rr.Downloads, "fan_out_ms", rr.FanOutMs,
			"fan_out_mb", float64(rr.FanOutBytes)/1e6, "updates", rr.Updates, "updates_per_s", int(rr.UpdatesPerSec),
			"send_per_s", int(rr.SendPerSec), "close_ms", rr.CloseMs)
		out = append(out, rr)
		m = next
	}
	return out, nil
}

func (g *grpcFleet) close() {
	for _, c := range g.pool {
		c.Close()
	}
}

// received is the bytes the fleet's connections have received so far.
func (g *grpcFleet) received() int64 {
	var n int64
	for _, c := range g.pool {
		n += c.Stats().BytesReceived
	}
	return n
}

// round downloads model m once per client, then sends every client's
// update for it and waits for the aggregator's answers; an update refused
// fails the run, since every one the fleet sends is valid.
func (g *grpcFleet) round(ctx context.Context, m *fdxv1.GlobalModel) (RoundReport, error) {
	round := m.GetRound()
	rr := RoundReport{Round: round}
	before := g.received()
	start := time.Now()
	var downloads atomic.Int64
	last, err := g.each(ctx, func(ctx context.Context, c channel.Client, i int) error {
		got, err := c.Model(ctx, round)
		if err != nil {
			return fmt.Errorf("client %d: download: %w", i, err)
		}
		if got.GetRound() != round {
			return fmt.Errorf("client %d: downloaded round %d, want %d", i, got.GetRound(), round)
		}
		downloads.Add(1)
		return nil
	})
	if err != nil {
		// How far the fan-out got says how it failed (a timeout at the
		// last few downloads, or at the first).
		return rr, fmt.Errorf("round %d fan-out, after %d of %d downloads, %.1f MB, %.1f s: %w",
			round, downloads.Load(), g.cfg.Clients, float64(g.received()-before)/1e6, time.Since(start).Seconds(), err)
	}
	rr.Downloads = int(downloads.Load())
	rr.FanOutMs = ms(last.Sub(start))
	rr.FanOutBytes = g.received() - before
	g.cfg.Log.Info("fan-out done", "round", round, "downloads", rr.Downloads, "fan_out_ms", rr.FanOutMs, "fan_out_mb", float64(rr.FanOutBytes)/1e6)

	start = time.Now()
	f := &fleet{cfg: g.cfg}
	t, err := f.build(m)
	if err != nil {
		return rr, err
	}
	prefixes, err := t.decodedPrefixes()
	if err != nil {
		return rr, err
	}
	rr.BuildMs = ms(time.Since(start))
	var accepted, bytes atomic.Int64
	g.firstSent = time.Now()
	last, err = g.each(ctx, func(ctx context.Context, c channel.Client, i int) error {
		u := t.message(g.cfg, prefixes, round, i)
		if err := c.Submit(ctx, u); err != nil {
			return fmt.Errorf("client %d: %w", i, err)
		}
		accepted.Add(1)
		bytes.Add(int64(proto.Size(u)))
		return nil
	})
	if err != nil {
		return rr, fmt.Errorf("round %d updates, after %d of %d accepted: %w", round, accepted.Load(), g.cfg.Clients, err)
	}
	g.lastAck = last
	rr.Updates = int(accepted.Load())
	rr.Bytes = bytes.Load()
	rr.SendMs = ms(last.Sub(g.firstSent))
	rr.SendPerSec = float64(rr.Updates) / last.Sub(g.firstSent).Seconds()
	return rr, nil
}

// each runs call for clients 0..N-1, at most InFlight at once, worker w on
// connection w mod Conns, and returns when the last call ended, with that
// time. The first error stops the rest and is returned.
func (g *grpcFleet) each(ctx context.Context, call func(ctx context.Context, c channel.Client, i int) error) (time.Time, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var mu sync.Mutex
	var last time.Time
	var wg sync.WaitGroup
	for w := range min(g.cfg.InFlight, g.cfg.Clients) {
		c := g.pool[w%len(g.pool)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			var end time.Time
			for {
				i := int(next.Add(1) - 1)
				if i >= g.cfg.Clients || ctx.Err() != nil {
					break
				}
				if err := call(ctx, c, i); err != nil {
					cancel(err) // the first cause is kept
					break
				}
				end = time.Now()
			}
			mu.Lock()
			if end.After(last) {
				last = end
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return last, err
	}
	return last, nil
}

// decodedPrefixes are the variants' prefixes as messages, for building
// updates the gRPC client marshals itself.
func (t *templates) decodedPrefixes() ([]*fdxv1.Update, error) {
	out := make([]*fdxv1.Update, len(t.prefixes))
	for k, b := range t.prefixes {
		out[k] = &fdxv1.Update{}
		if err := proto.Unmarshal(b, out[k]); err != nil {
			return nil, fmt.Errorf("variant %d: %w", k, err)
		}
	}
	return out, nil
}

// message is client i's update as a message: the same update as
// t.update(i) encodes, sharing its variant's tensors (read-only; gRPC
// marshals them concurrently, which protobuf allows).
func (t *templates) message(cfg Config, prefixes []*fdxv1.Update, round int64, i int) *fdxv1.Update {
	p := prefixes[i%len(prefixes)]
	own := t.own(cfg, round, i)
	return &fdxv1.Update{
		Job: p.GetJob(), BaseRound: p.GetBaseRound(), NumExamples: p.GetNumExamples(), ClientId: own.GetClientId(),
		Params: append(slices.Clip(p.GetParams()), own.GetParams()...),
	}
}

// writeGRPCTable is writeTable for the gRPC mode: the fan-out's columns
// instead of the raw consumer.
func writeGRPCTable(w io.Writer, r *Report) {
	fmt.Fprintf(w, "Fleet: %d clients, model %s, gRPC over %d connections, at most %d calls in flight\n\n",
		r.Clients, r.Model, r.Conns, r.InFlight)
	fmt.Fprintln(w, "| round | downloads | fan-out ms | fan-out MB | updates | MB | ingest updates/s | ingest MB/s | fleet send/s | round close ms |")
	fmt.Fprintln(w, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, rr := range r.Rounds {
		fmt.Fprintf(w, "| %d | %d | %.1f | %.1f | %d | %.1f | %.0f | %.1f | %.0f | %.1f |\n", rr.Round, rr.Downloads, rr.FanOutMs,
			float64(rr.FanOutBytes)/1e6, rr.Updates, float64(rr.Bytes)/1e6, rr.UpdatesPerSec, rr.MBPerSec, rr.SendPerSec, rr.CloseMs)
	}
	where := "child process"
	if r.Aggregator.InProcess {
		where = "whole process, fleet included"
	}
	fmt.Fprintf(w, "\nAggregator (%s): CPU %.2f s, peak RSS %.1f MB, wall %.0f ms; contributors per round %v\n",
		where, r.Aggregator.CPUSeconds, r.Aggregator.PeakRSSMB, r.Aggregator.WallMs, r.Contributors)
	writeTraffic(w, r)
	if !r.Aggregator.InProcess {
		// The fleet shares the machine: when it is busy decoding N
		// downloads, the fan-out time is partly its own.
		fmt.Fprintf(w, "Fleet process (the %d clients): CPU %.2f s\n", r.Clients, r.FleetCPUSeconds)
	}
}

// writeTraffic prints the aggregator's own traffic counters, and its egress
// per round: on Kafka the models it writes once, on gRPC every download
// it serves.
func writeTraffic(w io.Writer, r *Report) {
	s := r.Traffic
	perRound := 0.0
	if len(r.Rounds) > 0 {
		perRound = float64(s.BytesSent) / 1e6 / float64(len(r.Rounds))
	}
	fmt.Fprintf(w, "Aggregator traffic (its counters): sent %.1f MB in %d messages (%.2f MB per round), received %.1f MB in %d messages\n",
		float64(s.BytesSent)/1e6, s.MessagesSent, perRound, float64(s.BytesReceived)/1e6, s.MessagesReceived)
}
