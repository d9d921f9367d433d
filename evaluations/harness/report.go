package harness

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/job"
	"github.com/fdxkafka/fdxkafka/shared/channel"
)

// Report is one evaluation: the same federation run over each channel.
// evaluations/README.md defines every figure.
type Report struct {
	Setup     Setup            `json:"setup"`
	StartedAt time.Time        `json:"started_at"`
	WallMs    float64          `json:"wall_ms"`
	Channels  []*ChannelReport `json:"channels"`
	// Overhead is the invocation overhead probe (see Overhead).
	Overhead []OverheadReport `json:"invocation_overhead,omitempty"`
	Notes    []string         `json:"notes,omitempty"`
}

// Setup is the configuration a report was measured with.
type Setup struct {
	Clients      int        `json:"clients"`
	HTTPClients  int        `json:"http_clients"`
	LocalClients int        `json:"local_clients"`
	Rounds       int        `json:"rounds"`
	MinClients   int        `json:"minclients"`
	Invocation   Invocation `json:"invocation"`
	MaxInFlight  int        `json:"max_inflight,omitempty"`
	// DialConcurrency bounds long-running clients connecting at once.
	DialConcurrency int    `json:"dial_concurrency"`
	Model           string `json:"model"`
	Dataset         string `json:"dataset"`
	Partition       string `json:"partition"`
	Partitions      int    `json:"partitions"`
	MaxExamples     int    `json:"max_examples"`
	EvalExamples    int    `json:"eval_examples"`
	Seed            uint64 `json:"seed"`
	// Broker is "embedded" or the real bootstrap list.
	Broker string `json:"broker"`
	// Lightweight is true when clients train on capped synthetic shards, so
	// that the figures are about transport, not about learning.
	Lightweight bool `json:"lightweight"`
}

func setupOf(c Config) Setup {
	b := c.Broker
	if b == "" {
		b = "embedded"
	}
	return Setup{
		Clients: c.Clients, HTTPClients: c.HTTPClients(), LocalClients: c.Clients - c.HTTPClients(),
		Rounds: c.Rounds, MinClients: c.Clients, Invocation: c.Invocation, MaxInFlight: c.MaxInFlight, DialConcurrency: c.DialConcurrency,
		Model: c.Model, Dataset: c.Dataset, Partition: c.Partition, Partitions: c.Clients,
		MaxExamples: c.MaxExamples, EvalExamples: c.EvalExamples, Seed: c.Seed, Broker: b,
		Lightweight: c.Dataset == "synthetic" && c.MaxExamples > 0,
	}
}

// ChannelReport holds one channel's measurements.
type ChannelReport struct {
	Channel string `json:"channel"`
	Job     string `json:"job"`
	Broker  string `json:"broker"`

	// Messages is every message transmitted: for Kafka every record
	// produced plus every record fetched by each consumer; for gRPC every
	// message in either direction, counted once (at the client's end).
	Messages int64 `json:"messages"`
	// Bytes is the payload bytes of those messages, counted the same way.
	Bytes int64 `json:"bytes"`
	// ModelDownloads is how many copies of a global model reached clients.
	ModelDownloads int64 `json:"model_downloads"`
	// UpdatesAccepted is the updates the aggregator aggregated.
	UpdatesAccepted int64 `json:"updates_accepted"`
	// Dials is the channel connections clients opened.
	Dials int64 `json:"dials"`
	// Aggregator is the aggregator's own channel counters (egress =
	// BytesSent, ingress = BytesReceived); Clients sums every client's.
	Aggregator channel.Stats `json:"aggregator"`
	Clients    channel.Stats `json:"clients"`

	// RoundsMs runs from publishing the first model to publishing the
	// final one: the time for all rounds.
	RoundsMs float64 `json:"rounds_ms"`
	// JobMs is the aggregator job's whole life (data load, topic creation,
	// rounds, shutdown); WallMs adds waiting for every client to return.
	JobMs  float64 `json:"job_ms"`
	WallMs float64 `json:"wall_ms"`
	// Propagation of updated models: the mean and the maximum, over rounds
	// 2..N, of the round's propagation time (RoundReport.PropagationMs).
	// Round 1's model is the initial one, which clients receive while
	// still starting up; it is reported apart (with one round only, the
	// figures are round 1's).
	PropagationMeanMs  float64 `json:"propagation_mean_ms"`
	PropagationMaxMs   float64 `json:"propagation_max_ms"`
	FirstPropagationMs float64 `json:"first_round_propagation_ms"`
	// The same over long-running local clients only (0 without any).
	LocalPropagationMeanMs  float64 `json:"local_propagation_mean_ms"`
	LocalPropagationMaxMs   float64 `json:"local_propagation_max_ms"`
	FirstLocalPropagationMs float64 `json:"first_round_local_propagation_ms"`
	// Training time summed over every client and round, and its mean per
	// client-round.
	TrainTotalMs float64 `json:"train_total_ms"`
	TrainMeanMs  float64 `json:"train_mean_ms"`
	// RoundMeanMs is the mean round time over rounds 2..N, the figure the
	// channels are compared by (round 1 includes client start-up).
	RoundMeanMs float64 `json:"round_mean_ms"`
	// PublishMeanMs is the mean, over rounds 2..N, of closing a round on
	// the channel (RoundReport.PublishMs): Kafka's round transaction, apart
	// from the fan-out that propagation measures.
	PublishMeanMs float64 `json:"round_publish_mean_ms"`
	// OverheadMeanMs is the mean over rounds 2..N of RoundReport.OverheadMs.
	OverheadMeanMs float64 `json:"round_overhead_mean_ms"`
	// SubmitMeanMs is the clients' mean time to submit an update, over
	// rounds 2..N.
	SubmitMeanMs float64 `json:"client_submit_mean_ms"`
	// GOMAXPROCS the run had, and the most OS threads
	// the process had during the run, above what it had before it.
	GOMAXPROCS       int     `json:"gomaxprocs"`
	Threads          int     `json:"threads"`
	ThreadsPerClient float64 `json:"threads_per_client"`

	InitialAccuracy float64          `json:"initial_accuracy"`
	FinalAccuracy   float64          `json:"final_accuracy"`
	FinalModel      string           `json:"final_model_sha256"`
	Rejected        map[string]int64 `json:"rejected,omitempty"`
	Rounds          []RoundReport    `json:"rounds"`
}

// RoundReport is one round.
type RoundReport struct {
	Round   int64 `json:"round"`
	Clients int   `json:"clients"`
	// DurationMs runs from publishing the round's model to publishing the
	// next one.
	DurationMs float64 `json:"duration_ms"`
	// PropagationMs is the longest time any contributor took to receive
	// the round's model after it was published.
	PropagationMs float64 `json:"propagation_ms"`
	// LocalPropagationMs is the same over long-running local clients only,
	// measured where they receive the model.
	LocalPropagationMs float64 `json:"local_propagation_ms"`
	AggregateMs        float64 `json:"aggregate_ms"`
	// PublishMs is closing the round on the channel: the Kafka round
	// transaction, the gRPC model store (and state file).
	PublishMs float64 `json:"publish_ms"`
	// OverheadMs is the round time minus the slowest contributor's
	// training time: what the federation, not learning, cost.
	OverheadMs float64 `json:"overhead_ms"`
	Accuracy   float64 `json:"accuracy"`
	Loss       float64 `json:"loss"`
	// Client-side means and maxima over this round's contributors.
	TrainMeanMs   float64 `json:"train_mean_ms"`
	TrainMaxMs    float64 `json:"train_max_ms"`
	FetchMeanMs   float64 `json:"fetch_mean_ms"`
	PublishMeanMs float64 `json:"publish_mean_ms"`
}

// report turns the job's result and the clients' summaries into figures.
func (s *session) report(res *job.Result, broker string, jobMs, wallMs float64) *ChannelReport {
	s.mu.Lock()
	invs := slices.Clone(s.invocations)
	localProp := maps.Clone(s.localProp)
	s.mu.Unlock()

	cr := &ChannelReport{
		Channel: s.channel, Job: s.job, Broker: broker,
		Aggregator: res.Stats, JobMs: jobMs, WallMs: wallMs,
		InitialAccuracy: res.Initial.Accuracy, Rejected: res.Rejected,
	}
	if res.Final != nil {
		cr.FinalModel = job.Digest(res.Final)
	}
	type agg struct {
		n                      int
		train, trainMax, fetch float64
		publish                float64
	}
	perRound := map[int64]*agg{}
	var submits int64
	for _, inv := range invs {
		st := channel.Stats{MessagesSent: inv.Summary.MessagesSent, MessagesReceived: inv.Summary.MessagesReceived,
			BytesSent: inv.Summary.BytesSent, BytesReceived: inv.Summary.BytesReceived}
		cr.Clients = cr.Clients.Add(st)
		cr.Dials += int64(inv.Dials)
		for _, r := range inv.Summary.Rounds {
			submits++
			a := perRound[r.Round]
			if a == nil {
				a = &agg{}
				perRound[r.Round] = a
			}
			a.n++
			a.train += r.TrainMs
			a.trainMax = max(a.trainMax, r.TrainMs)
			a.fetch += r.FetchMs
			a.publish += r.PublishMs
			cr.TrainTotalMs += r.TrainMs
		}
	}
	if submits > 0 {
		cr.TrainMeanMs = cr.TrainTotalMs / float64(submits)
	}
	switch s.channel {
	case Kafka:
		// Each record crosses the network once into the broker and once
		// out of it to each consumer: both ends' counts are transfers.
		cr.Messages = res.Stats.MessagesSent + res.Stats.MessagesReceived + cr.Clients.MessagesSent + cr.Clients.MessagesReceived
		cr.Bytes = res.Stats.BytesSent + res.Stats.BytesReceived + cr.Clients.BytesSent + cr.Clients.BytesReceived
		// Clients fetch nothing but model records.
		cr.ModelDownloads = cr.Clients.MessagesReceived
	case GRPC, GRPCDurable:
		// A gRPC message goes straight between a client and the
		// aggregator, and both ends count it: count it once, at the
		// client's end, whose counters are final when the client returns.
		cr.Messages = cr.Clients.MessagesSent + cr.Clients.MessagesReceived
		cr.Bytes = cr.Clients.BytesSent + cr.Clients.BytesReceived
		// A client receives one health-check answer per connection, one
		// answer per update, and otherwise models.
		cr.ModelDownloads = cr.Clients.MessagesReceived - cr.Dials - submits
	}
	var propSum, localSum, roundSum, pubSum, overSum, submitSum float64
	var steady int
	for _, r := range res.Rounds {
		rr := RoundReport{Round: r.Round, Clients: r.Clients, DurationMs: r.DurationMs, PropagationMs: r.PropagationMs,
			LocalPropagationMs: ms(localProp[r.Round]), AggregateMs: r.AggregateMs, PublishMs: r.PublishMs,
			Accuracy: r.Accuracy, Loss: r.Loss}
		if a := perRound[r.Round]; a != nil && a.n > 0 {
			rr.TrainMeanMs, rr.TrainMaxMs = a.train/float64(a.n), a.trainMax
			rr.FetchMeanMs, rr.PublishMeanMs = a.fetch/float64(a.n), a.publish/float64(a.n)
		}
		rr.OverheadMs = rr.DurationMs - rr.TrainMaxMs
		cr.Rounds = append(cr.Rounds, rr)
		cr.UpdatesAccepted += int64(r.Clients)
		cr.RoundsMs += r.DurationMs
		cr.FinalAccuracy = r.Accuracy
		if r.Round == 1 {
			cr.FirstPropagationMs, cr.FirstLocalPropagationMs = rr.PropagationMs, rr.LocalPropagationMs
			if len(res.Rounds) > 1 {
				continue
			}
		}
		steady++
		roundSum += rr.DurationMs
		pubSum += rr.PublishMs
		overSum += rr.OverheadMs
		submitSum += rr.PublishMeanMs
		propSum += rr.PropagationMs
		localSum += rr.LocalPropagationMs
		cr.PropagationMaxMs = max(cr.PropagationMaxMs, rr.PropagationMs)
		cr.LocalPropagationMaxMs = max(cr.LocalPropagationMaxMs, rr.LocalPropagationMs)
	}
	if steady > 0 {
		n := float64(steady)
		cr.RoundMeanMs, cr.PublishMeanMs, cr.OverheadMeanMs, cr.SubmitMeanMs = roundSum/n, pubSum/n, overSum/n, submitSum/n
		cr.PropagationMeanMs = propSum / float64(steady)
		cr.LocalPropagationMeanMs = localSum / float64(steady)
	}
	return cr
}

// WriteJSON writes v, indented, to path, creating its directory.
func WriteJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
