package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
)

// TestFleetRoundsCloseWithEveryClient plays 50 clients for 2 rounds against
// the aggregator (on the embedded broker, or on FDX_KAFKA_BROKERS): every
// round must close with exactly the fleet's 50 contributors, and the raw
// consumer must read back every update the fleet sent.
func TestFleetRoundsCloseWithEveryClient(t *testing.T) {
	const clients, rounds = 50, 2
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := Run(ctx, Config{
		Brokers:   os.Getenv("FDX_KAFKA_BROKERS"),
		Job:       fmt.Sprintf("fleet-test-%d", time.Now().UnixNano()),
		Clients:   clients,
		Rounds:    rounds,
		Producers: 3, // 50 does not divide evenly: every producer's share is sent
		Variants:  4,
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := slices.Repeat([]int{clients}, rounds); !slices.Equal(rep.Contributors, want) {
		t.Fatalf("contributors per round %v, want %v", rep.Contributors, want)
	}
	if len(rep.Rounds) != rounds {
		t.Fatalf("%d rounds measured, want %d", len(rep.Rounds), rounds)
	}
	for _, r := range rep.Rounds {
		if r.Updates != clients || r.Bytes <= 0 || r.UpdatesPerSec <= 0 || r.CloseMs < 0 {
			t.Errorf("round %d: %+v", r.Round, r)
		}
	}
	if rep.Raw.Updates != clients*rounds {
		t.Errorf("raw consumer read %d records, want %d", rep.Raw.Updates, clients*rounds)
	}
	if !rep.Aggregator.InProcess || rep.Aggregator.CPUSeconds <= 0 || rep.Aggregator.PeakRSSMB <= 0 {
		t.Errorf("aggregator cost %+v", rep.Aggregator)
	}
}

// TestUpdatesAreDistinct checks the templates: every client's update
// decodes to the round's shapes, and no two are equal.
func TestUpdatesAreDistinct(t *testing.T) {
	cfg := Config{Job: "distinct", Clients: 20, Rounds: 1, Variants: 3}
	cfg.defaults()
	m := testModel()
	f := &fleet{cfg: cfg}
	tpl, err := f.build(m)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for i := range cfg.Clients {
		b, err := tpl.update(cfg, m.GetRound(), i)
		if err != nil {
			t.Fatal(err)
		}
		u := decodeUpdate(t, b)
		if u.GetClientId() != fmt.Sprint(i) || u.GetBaseRound() != m.GetRound() || u.GetJob() != cfg.Job || u.GetNumExamples() != cfg.Examples {
			t.Fatalf("client %d: update %v", i, u)
		}
		if len(u.GetParams()) != len(m.GetParams()) {
			t.Fatalf("client %d: %d tensors, want %d", i, len(u.GetParams()), len(m.GetParams()))
		}
		for k, p := range u.GetParams() {
			if p.GetName() != m.GetParams()[k].GetName() || len(p.GetData()) != len(m.GetParams()[k].GetData()) {
				t.Fatalf("client %d tensor %d: %s of %d bytes", i, k, p.GetName(), len(p.GetData()))
			}
		}
		key := fmt.Sprint(u.GetParams())
		if j, dup := seen[key]; dup {
			t.Fatalf("clients %d and %d sent the same parameters", j, i)
		}
		seen[key] = i
	}
}

// TestFleetGRPCRoundsCloseWithEveryClient plays 50 clients for 2 rounds
// against the aggregator on its gRPC channel, over 3 connections with at
// most 7 calls in flight (neither divides 50): every round must download
// the model exactly 50 times, have exactly 50 updates accepted and close
// with 50 contributors, and the aggregator's own counters must show it
// served every download and answered every update.
func TestFleetGRPCRoundsCloseWithEveryClient(t *testing.T) {
	const clients, rounds = 50, 2
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := Run(ctx, Config{
		Channel:  ChannelGRPC,
		Job:      fmt.Sprintf("fleet-grpc-test-%d", time.Now().UnixNano()),
		Clients:  clients,
		Rounds:   rounds,
		Conns:    3,
		InFlight: 7,
		Variants: 4,
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := slices.Repeat([]int{clients}, rounds); !slices.Equal(rep.Contributors, want) {
		t.Fatalf("contributors per round %v, want %v", rep.Contributors, want)
	}
	if len(rep.Rounds) != rounds {
		t.Fatalf("%d rounds measured, want %d", len(rep.Rounds), rounds)
	}
	var fanOut int64
	for i, r := range rep.Rounds {
		if r.Round != int64(i+1) || r.Downloads != clients || r.Updates != clients || r.Bytes <= 0 || r.FanOutBytes <= 0 {
			t.Errorf("round %d: %+v", i+1, r)
		}
		fanOut += r.FanOutBytes
	}
	// Every download and every answer is a message the aggregator sent;
	// the fan-out's bytes are all among what it counted as sent.
	if st := rep.Traffic; st.MessagesSent < 2*clients*rounds || st.BytesSent < fanOut || st.MessagesReceived < clients*rounds {
		t.Errorf("aggregator traffic %+v, want ≥ %d messages and %d bytes sent, ≥ %d received", st, 2*clients*rounds, fanOut, clients*rounds)
	}
	if rep.Raw.Updates != 0 || rep.Conns != 3 || rep.Producers != 0 {
		t.Errorf("report %+v: a gRPC run has no raw consumer or producers", rep)
	}
}

// TestGRPCUpdateIsTheTemplate checks that the message the gRPC mode
// submits for a client is the very update the Kafka mode encodes for it.
func TestGRPCUpdateIsTheTemplate(t *testing.T) {
	cfg := Config{Job: "distinct", Clients: 10, Rounds: 1, Variants: 3}
	cfg.defaults()
	m := testModel()
	tpl, err := (&fleet{cfg: cfg}).build(m)
	if err != nil {
		t.Fatal(err)
	}
	prefixes, err := tpl.decodedPrefixes()
	if err != nil {
		t.Fatal(err)
	}
	for i := range cfg.Clients {
		b, err := tpl.update(cfg, m.GetRound(), i)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := tpl.message(cfg, prefixes, m.GetRound(), i), decodeUpdate(t, b); !proto.Equal(got, want) {
			t.Fatalf("client %d: message %v, template %v", i, got, want)
		}
	}
}

// TestGRPCConfigRefusesKafkaFlags: a gRPC run has no broker to use.
func TestGRPCConfigRefusesKafkaFlags(t *testing.T) {
	cfg := Config{Channel: ChannelGRPC, Brokers: "127.0.0.1:9092", Clients: 1, Rounds: 1}
	cfg.defaults()
	if err := cfg.validate(); err == nil {
		t.Fatal("gRPC run with -broker accepted")
	}
	cfg = Config{Channel: "carrier-pigeon", Clients: 1, Rounds: 1}
	cfg.defaults()
	if err := cfg.validate(); err == nil {
		t.Fatal("unknown channel accepted")
	}
}
