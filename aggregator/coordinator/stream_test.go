package coordinator_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/fdxkafka/fdxkafka/aggregator/accumulator"
	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/updatestream"
)

// streamServer is a fakeServer that streams: Next scans each queued update
// with the round's sink (pass 1) and delivers it as a channel.Stream whose
// Replay parses the bytes again, or, for a client in failReplay, stops half
// way with an error (a broker lost mid pass 2).
type streamServer struct {
	*fakeServer
	raw        chan *fdxv1.Update
	newSink    func() updatestream.Sink
	failReplay map[string]bool
	streamed   int
	wholes     int // Whole calls
}

func (s *streamServer) StreamUpdates(f func() updatestream.Sink) { s.newSink = f }

func (s *streamServer) Next(ctx context.Context) (channel.Delivery, error) {
	select {
	case u := <-s.raw:
		b, err := proto.Marshal(u)
		if err != nil {
			return channel.Delivery{}, err
		}
		if s.newSink == nil {
			return channel.Delivery{Update: u, Size: len(b)}, nil
		}
		sink := s.newSink()
		p := updatestream.New(sink, 0)
		if err := p.Write(b); err != nil {
			return channel.Delivery{}, err
		}
		env, err := p.Close()
		if err != nil {
			return channel.Delivery{}, err
		}
		s.streamed++
		fail := s.failReplay[u.GetClientId()]
		return channel.Delivery{Update: env, Size: len(b), Stream: &channel.Stream{
			Sink: sink,
			Replay: func(_ context.Context, sink updatestream.Sink) error {
				p := updatestream.New(sink, 0)
				if fail {
					if err := p.Write(b[:len(b)/2]); err != nil {
						return err
					}
					return errors.New("broker unreachable")
				}
				if err := p.Write(b); err != nil {
					return err
				}
				_, err := p.Close()
				return err
			},
			Whole: func(context.Context) (*fdxv1.Update, error) {
				s.wholes++
				return u, nil
			},
		}}, nil
	case <-ctx.Done():
		return channel.Delivery{}, ctx.Err()
	}
}

// TestStreamedReplayFails: when pass 2 of an accepted streamed update fails
// mid-way, the job stops with the error and the round's model is never
// published; streamed updates before it and rejected ones are as in the
// whole path.
func TestStreamedReplayFails(t *testing.T) {
	specs := testSpecs(t)
	srv := &streamServer{fakeServer: newFakeServer(), raw: make(chan *fdxv1.Update, 8), failReplay: map[string]bool{"c2": true}}
	srv.raw <- newUpdate(specs, "c1", 1, 10, localParams(specs, 1))
	srv.raw <- newUpdate(specs, "far", 1, 10, filled(specs, 3)) // norm 3·√15 > testMaxNorm
	srv.raw <- newUpdate(specs, "c2", 1, 10, localParams(specs, 2))
	srv.raw <- newUpdate(specs, "c3", 1, 10, localParams(specs, 3))
	c := newCoordinator(t, testConfig(3), srv, nil)
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	res, err := c.Run(ctx)
	if err == nil || !errors.Is(err, accumulator.ErrPartialFold) || !strings.Contains(err.Error(), "not published") {
		t.Fatalf("Run = %v; want the job to stop on the failed fold, saying the round is not published", err)
	}
	if n := len(srv.models()); n != 1 {
		t.Errorf("%d models published; want only the initial one", n)
	}
	if res.Rejected["norm_bound"] != 1 || srv.streamed != 3 {
		t.Errorf("rejected %v, %d streamed; want the far update refused from its scan, 3 streamed", res.Rejected, srv.streamed)
	}
}

// TestStreamedMatchesWhole: the same updates, streamed or whole, give the
// bit-identical model; a robust strategy turns streaming off.
func TestStreamedMatchesWhole(t *testing.T) {
	specs := testSpecs(t)
	run := func(sc strategy.Config, stream bool) ([]*fdxv1.Tensor, int) {
		srv := &streamServer{fakeServer: newFakeServer(), raw: make(chan *fdxv1.Update, 8)}
		for k := range 4 {
			u := newUpdate(specs, "c"+string(rune('0'+k)), 1, int64(10+k), localParams(specs, k))
			if k == 2 {
				u.IsDelta = true
			}
			srv.raw <- u
		}
		cfg := testConfig(4)
		cfg.HoldUpdates = !stream
		c := newCoordinatorWith(t, sc, cfg, srv, nil)
		ctx, cancel := context.WithTimeout(context.Background(), testWait)
		defer cancel()
		res, err := c.Run(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return res.Final.GetParams(), srv.streamed
	}
	for _, name := range []string{"fedavg", "fedadam"} {
		streamed, n := run(strategy.Config{Name: name}, true)
		whole, _ := run(strategy.Config{Name: name}, false)
		if n != 4 {
			t.Errorf("%s: %d updates streamed, want 4", name, n)
		}
		for i := range whole {
			if !proto.Equal(streamed[i], whole[i]) {
				t.Fatalf("%s: tensor %s differs between streamed and whole updates", name, whole[i].GetName())
			}
		}
	}
	if _, n := run(strategy.Config{Name: "median"}, true); n != 0 {
		t.Errorf("median: %d updates streamed; want none (it holds updates)", n)
	}
}

// staleSinkServer streams every update with the first round's sinks, as
// when a transfer began before the round it is delivered in.
type staleSinkServer struct {
	*streamServer
	first func() updatestream.Sink
}

func (s *staleSinkServer) StreamUpdates(f func() updatestream.Sink) {
	if s.first == nil {
		s.first = f
	}
	s.streamServer.StreamUpdates(s.first)
}

// TestStreamedScanOfAnotherRound: an update scanned with an earlier round's
// model is read again whole and checked against its own round, giving the
// model of the whole path.
func TestStreamedScanOfAnotherRound(t *testing.T) {
	specs := testSpecs(t)
	run := func(stale bool) *fdxv1.GlobalModel {
		inner := &streamServer{fakeServer: newFakeServer(), raw: make(chan *fdxv1.Update, 8)}
		var srv channel.Server = inner
		if stale {
			srv = &staleSinkServer{streamServer: inner}
		}
		inner.raw <- newUpdate(specs, "c1", 1, 10, localParams(specs, 1))
		inner.raw <- newUpdate(specs, "c2", 2, 10, localParams(specs, 2))
		cfg := testConfig(1)
		cfg.NumRounds = 2
		cfg.HoldUpdates = !stale
		c := newCoordinator(t, cfg, srv, nil)
		ctx, cancel := context.WithTimeout(context.Background(), testWait)
		defer cancel()
		res, err := c.Run(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Rounds) != 2 || res.Rounds[1].Clients != 1 || len(res.Rejected) != 0 {
			t.Fatalf("rounds %+v, rejected %v; want 2 rounds of one client each", res.Rounds, res.Rejected)
		}
		if stale && inner.wholes != 1 {
			t.Errorf("%d updates read again whole; want the one scanned in round 1 and delivered in round 2", inner.wholes)
		}
		return res.Final
	}
	if got, want := run(true), run(false); !proto.Equal(&fdxv1.GlobalModel{Params: got.GetParams()}, &fdxv1.GlobalModel{Params: want.GetParams()}) {
		t.Error("the model with a stale scan differs from the whole path's")
	}
}
