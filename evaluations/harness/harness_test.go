package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
)

// smallConfig is a run small enough for a test: 6 lightweight clients, half
// of them through the function's HTTP handler, 2 rounds on both channels.
// With FDX_KAFKA_BROKERS set the Kafka runs use that broker.
func smallConfig(t *testing.T, data *dataset.Catalog) Config {
	t.Helper()
	broker := ""
	if kafkatest.Real() {
		broker = kafkatest.Brokers(t)
	}
	return Config{
		Clients: 6, Rounds: 2, HTTPShare: 0.5, Channels: []string{Kafka, GRPC, GRPCDurable},
		Dataset: dataset.NameSynthetic, MaxExamples: 50, EvalExamples: 200,
		Broker: broker, JobPrefix: kafkatest.Job(t), Timeout: 3 * time.Minute, Data: data,
	}
}

func run(t *testing.T, cfg Config) *Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(rep.Channels) != len(cfg.Channels) {
		t.Fatalf("%d channel reports, want %d", len(rep.Channels), len(cfg.Channels))
	}
	return rep
}

// TestMessageCountsMatchProtocol checks every counter against what the
// protocol implies for c clients, h of them function invocations, and r
// rounds, each client taking part in every round:
//
//   - Kafka: the aggregator produces r+1 models (initial, one per round, the
//     final one) and fetches c·r updates; clients produce c·r updates and
//     fetch c·r models (each client reads the model of each round once; no
//     client waits for the final model).
//   - gRPC: every connection starts with one health check; a round is one
//     GetModel and one SubmitUpdate, each a request and an answer. With one
//     connection per client, the aggregator sends and receives c + 2·c·r
//     messages, of which c·r are model downloads.
func TestMessageCountsMatchProtocol(t *testing.T) {
	cfg := smallConfig(t, dataset.NewCatalog())
	rep := run(t, cfg)
	c, r := int64(cfg.Clients), int64(cfg.Rounds)
	for _, ch := range rep.Channels {
		t.Run(ch.Channel, func(t *testing.T) {
			checkCommon(t, ch, c, r)
			switch ch.Channel {
			case Kafka:
				wantStats(t, "aggregator", ch.Aggregator, r+1, c*r)
				wantStats(t, "clients", ch.Clients, c*r, c*r)
				if want := (r + 1) + 3*c*r; ch.Messages != want {
					t.Errorf("messages %d, want %d", ch.Messages, want)
				}
			case GRPC, GRPCDurable:
				per := c + 2*c*r
				wantStats(t, "aggregator", ch.Aggregator, per, per)
				wantStats(t, "clients", ch.Clients, per, per)
				if ch.Messages != 2*per {
					t.Errorf("messages %d, want %d", ch.Messages, 2*per)
				}
			}
			if ch.Dials != c {
				t.Errorf("dials %d, want one per client (%d)", ch.Dials, c)
			}
		})
	}
	if k, g := rep.Channels[0], rep.Channels[1]; k.FinalModel != g.FinalModel {
		t.Errorf("final models differ: kafka %s, grpc %s", k.FinalModel, g.FinalModel)
	}
	// Kafka fans the model out through the broker: the aggregator sends
	// each model once, gRPC once per client.
	if k, g := rep.Channels[0], rep.Channels[1]; k.Aggregator.BytesSent*c/(r+1) > g.Aggregator.BytesSent*2 {
		t.Errorf("kafka aggregator egress %d not far below grpc's %d", k.Aggregator.BytesSent, g.Aggregator.BytesSent)
	}

	dir := t.TempDir()
	jsonPath := filepath.Join(dir, "out", "stress.json")
	if err := WriteJSON(jsonPath, rep); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("JSON report does not parse: %v", err)
	}
	if len(back.Channels) != len(cfg.Channels) || back.Channels[1].Messages != rep.Channels[1].Messages || len(back.Channels[0].Rounds) != cfg.Rounds {
		t.Errorf("JSON round trip lost data: %+v", back.Channels)
	}
	files, err := WritePlots(dir, rep)
	if err != nil {
		t.Fatal(err)
	}
	wantPNGs(t, files, PlotRoundTime, PlotPropagation, PlotAccuracy)

	var md bytes.Buffer
	if err := WriteMarkdown(&md, rep); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| kafka |", "| grpc |", "| 2 |", "3 via the function's HTTP handler"} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, md.String())
		}
	}
}

// TestPerRoundInvocation invokes the function clients once per round. On
// gRPC each invocation is a new connection with its own health check and
// the model downloads stay c·r. On Kafka a fresh invocation reads the
// newest committed model; should the round's commit not be visible yet
// (a real broker writes transaction markers after acknowledging the
// commit) it reads the previous model first, so each of the h·r
// invocations may add one download.
func TestPerRoundInvocation(t *testing.T) {
	cfg := smallConfig(t, dataset.NewCatalog())
	cfg.Invocation, cfg.MaxInFlight = PerRound, 2
	rep := run(t, cfg)
	c, r := int64(cfg.Clients), int64(cfg.Rounds)
	h := int64(cfg.HTTPClients())
	for _, ch := range rep.Channels {
		t.Run(ch.Channel, func(t *testing.T) {
			checkRounds(t, ch, c, r)
			dials := h*r + (c - h)
			if ch.Dials != dials {
				t.Errorf("dials %d, want %d", ch.Dials, dials)
			}
			switch ch.Channel {
			case Kafka:
				wantStats(t, "aggregator", ch.Aggregator, r+1, c*r)
				if ch.ModelDownloads < c*r || ch.ModelDownloads > c*r+h*r {
					t.Errorf("model downloads %d, want %d to %d", ch.ModelDownloads, c*r, c*r+h*r)
				}
			case GRPC, GRPCDurable:
				if ch.ModelDownloads != c*r {
					t.Errorf("model downloads %d, want clients x rounds = %d", ch.ModelDownloads, c*r)
				}
				per := dials + 2*c*r
				wantStats(t, "aggregator", ch.Aggregator, per, per)
				wantStats(t, "clients", ch.Clients, per, per)
			}
		})
	}
}

// checkCommon checks what holds on every channel: every client's update
// aggregated each round, c·r model downloads, figures filled in.
func checkCommon(t *testing.T, ch *ChannelReport, c, r int64) {
	t.Helper()
	if ch.ModelDownloads != c*r {
		t.Errorf("model downloads %d, want clients x rounds = %d", ch.ModelDownloads, c*r)
	}
	checkRounds(t, ch, c, r)
	// Timing split: the publication is part of the round, the overhead
	// is the round less training.
	if ch.PublishMeanMs <= 0 || ch.PublishMeanMs > ch.RoundMeanMs || ch.OverheadMeanMs > ch.RoundMeanMs || ch.OverheadMeanMs <= 0 {
		t.Errorf("round %.1f ms, publication %.1f ms, overhead %.1f ms: want 0 < publication, overhead <= round",
			ch.RoundMeanMs, ch.PublishMeanMs, ch.OverheadMeanMs)
	}
	if ch.GOMAXPROCS < 1 {
		t.Errorf("%s run: GOMAXPROCS %d not reported", ch.Channel, ch.GOMAXPROCS)
	}
}

// checkRounds is checkCommon without the download count.
func checkRounds(t *testing.T, ch *ChannelReport, c, r int64) {
	t.Helper()
	if ch.UpdatesAccepted != c*r {
		t.Errorf("updates accepted %d, want %d", ch.UpdatesAccepted, c*r)
	}
	if len(ch.Rounds) != int(r) {
		t.Fatalf("%d rounds reported, want %d", len(ch.Rounds), r)
	}
	for _, rr := range ch.Rounds {
		if rr.Clients != int(c) || rr.DurationMs <= 0 || rr.PropagationMs <= 0 || rr.LocalPropagationMs <= 0 || rr.TrainMeanMs <= 0 {
			t.Errorf("round %+v: want %d clients and positive times", rr, c)
		}
	}
	if ch.RoundsMs <= 0 || ch.TrainTotalMs <= 0 || ch.FinalAccuracy < 0.5 || ch.FinalModel == "" {
		t.Errorf("report %+v: missing figures", ch)
	}
	if ch.Aggregator.BytesReceived <= 0 || ch.Aggregator.BytesSent <= 0 {
		t.Errorf("aggregator bytes %+v, want both directions", ch.Aggregator)
	}
}

func wantStats(t *testing.T, who string, got channel.Stats, sent, received int64) {
	t.Helper()
	if got.MessagesSent != sent || got.MessagesReceived != received {
		t.Errorf("%s sent %d and received %d messages, want %d and %d", who, got.MessagesSent, got.MessagesReceived, sent, received)
	}
}

func wantPNGs(t *testing.T, files []string, names ...string) {
	t.Helper()
	if len(files) != len(names) {
		t.Fatalf("wrote %v, want %v", files, names)
	}
	for i, f := range files {
		if filepath.Base(f) != names[i] {
			t.Errorf("plot %d is %s, want %s", i, f, names[i])
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) {
			t.Errorf("%s does not start with the PNG signature", f)
		}
	}
}

// TestSweep runs a tiny sweep and checks its table and plots.
func TestSweep(t *testing.T) {
	cfg := smallConfig(t, dataset.NewCatalog())
	cfg.Rounds, cfg.Invocation, cfg.MaxInFlight = 1, PerRound, 4
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	sw, err := Sweep(ctx, cfg, []int{2, 4})
	if err != nil {
		t.Fatal(err)
	}
	if len(sw.Runs) != 2 || sw.Runs[1].Setup.Clients != 4 {
		t.Fatalf("sweep runs %+v, want 2 and 4 clients", sw.Runs)
	}
	for _, rep := range sw.Runs {
		for _, ch := range rep.Channels {
			if n := int64(rep.Setup.Clients); ch.ModelDownloads != n || ch.UpdatesAccepted != n {
				t.Errorf("%d clients on %s: %d downloads, %d updates; want %d each", n, ch.Channel, ch.ModelDownloads, ch.UpdatesAccepted, n)
			}
		}
	}
	files, err := WriteSweepPlots(t.TempDir(), sw)
	if err != nil {
		t.Fatal(err)
	}
	wantPNGs(t, files, PlotSweepMessages, PlotSweepEgress, PlotSweepPropagation)
	var md bytes.Buffer
	if err := WriteSweepMarkdown(&md, sw); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Count(md.String(), "\n| "), 1+2*len(cfg.Channels); got != want {
		t.Errorf("sweep table has %d rows, want header and %d:\n%s", got, want-1, md.String())
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no clients", Config{Rounds: 1}, "-clients"},
		{"no rounds", Config{Clients: 1}, "-rounds"},
		{"bad share", Config{Clients: 1, Rounds: 1, HTTPShare: 1.5}, "-http-share"},
		{"bad channel", Config{Clients: 1, Rounds: 1, Channels: []string{"mqtt"}}, "mqtt"},
		{"twice", Config{Clients: 1, Rounds: 1, Channels: []string{"grpc", "grpc"}}, "twice"},
		{"bad invocation", Config{Clients: 1, Rounds: 1, Invocation: "sometimes"}, "-invocation"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate() = %v, want an error naming %q", err, tc.want)
			}
		})
	}
}
