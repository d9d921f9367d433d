// Package nbresult is what netbench writes to netbench.json and how its
// runs become figures: a run's record (Result), the median of a cell's
// successful runs (Row), the N from which Kafka reaches all devices before
// gRPC (Crossovers) and the cell the testbed's headline goal is judged on
// (GoalRows). The netbench command writes the records and renders its own
// page from them; evaluations/report renders the PoC's table in
// evaluations/README.md from the same rows, so both pages show the same
// medians.
package nbresult

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/fdxkafka/fdxkafka/evaluations/netbench/testbed"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/model"
)

// FileName is the results file in netbench's results directory.
const FileName = "netbench.json"

// Channel configurations a cell runs on.
const (
	GRPC   = "grpc"
	Kafka1 = "kafka1" // one broker, model topic of one partition
	Kafka3 = "kafka3" // three brokers, --model-partitions 3
)

// Channels are the channel configurations in the order tables show them.
var Channels = []string{GRPC, Kafka1, Kafka3}

// Invocation modes.
const (
	ModeLong  = "long"  // long-running clients, one connection for all rounds
	ModeRound = "round" // the HTTP function invoked once per client and round
)

// Cell is one measurement: a model, N clients, a link rate, a channel.
type Cell struct {
	Model   string `json:"model"`
	Clients int    `json:"clients"`
	LinkBps int64  `json:"link_bps"`
	Channel string `json:"channel"`
	Mode    string `json:"mode"`
}

// Key names the cell: model/N/rate/channel/mode.
func (c Cell) Key() string {
	return fmt.Sprintf("%s/%d/%s/%s/%s", c.Model, c.Clients, RateName(c.LinkBps), c.Channel, c.Mode)
}

// Brokers is how many brokers the cell's channel needs.
func (c Cell) Brokers() int {
	switch c.Channel {
	case Kafka1:
		return 1
	case Kafka3:
		return 3
	}
	return 0
}

// PeerKey names a cell without its channel: the cells of one key are the
// channels measured on the same model, N, link and mode.
func PeerKey(c Cell) string {
	c.Channel = ""
	return c.Key()
}

// ModelBytes is the model's size S: its parameters as float32.
func ModelBytes(kind string) (int64, error) {
	if mb, ok := strings.CutPrefix(kind, model.KindSyntheticPrefix); ok {
		n, err := strconv.Atoi(mb)
		if err != nil || n < 1 {
			return 0, fmt.Errorf("model %q: want synthetic:<MB>", kind)
		}
		return int64(n) * 1_000_000, nil
	}
	net, err := model.New(kind, 784, 10, 1)
	if err != nil {
		return 0, err
	}
	return int64(net.NumParams()) * 4, nil
}

// RateName prints a rate as 100m, 1g, 10g.
func RateName(bps int64) string {
	switch {
	case bps >= 1e9 && bps%1e9 == 0:
		return strconv.FormatInt(bps/1e9, 10) + "g"
	case bps >= 1e6 && bps%1e6 == 0:
		return strconv.FormatInt(bps/1e6, 10) + "m"
	}
	return strconv.FormatInt(bps, 10)
}

// RateLabel prints a rate for people: 1 Gbit/s.
func RateLabel(bps int64) string {
	switch {
	case bps >= 1e9:
		return strconv.FormatFloat(float64(bps)/1e9, 'g', 4, 64) + " Gbit/s"
	default:
		return strconv.FormatFloat(float64(bps)/1e6, 'g', 4, 64) + " Mbit/s"
	}
}

// Result is one run of a cell.
type Result struct {
	Cell
	Repeat     int    `json:"repeat"`
	Rounds     int    `json:"rounds"`
	Brokers    int    `json:"brokers"`
	Partitions int    `json:"model_partitions,omitempty"`
	Job        string `json:"job"`
	StartedAt  string `json:"started_at"`
	ModelBytes int64  `json:"model_bytes"`
	Error      string `json:"error,omitempty"`
	// Command is the netbench command line that ran this cell.
	Command string `json:"command,omitempty"`

	// Messages counts every transmitted message as the stress harness
	// does (evaluations/README.md): Kafka every record produced plus every
	// record fetched; gRPC every message, counted at the client end.
	Messages   int64         `json:"messages"`
	Aggregator channel.Stats `json:"aggregator_traffic"`
	Clients    channel.Stats `json:"clients_traffic"`

	PerRound []RoundFig `json:"per_round"`
	// RoundMs and PropagationMs are means over rounds 2..R (round 1
	// includes the clients' start); FirstPropagationMs is round 1's.
	RoundMs            float64 `json:"round_ms"`
	PropagationMs      float64 `json:"propagation_ms"`
	PropagationMaxMs   float64 `json:"propagation_max_ms"`
	FirstPropagationMs float64 `json:"first_round_propagation_ms"`

	// Links: what each host's link carried during the cell (tc -s).
	Links map[string]testbed.LinkCounters `json:"links"`
	// AggEgressBytes is the aggregator link's egress; ModelsSent the
	// models it sent out (Kafka: every published model, R+1, goes to the
	// brokers once; gRPC: the R round models, each to every client; the
	// final model is fetched by nobody); AggEgressPerModel is
	// AggEgressBytes/(ModelsSent·S).
	AggEgressBytes    int64   `json:"agg_egress_bytes"`
	AggIngressBytes   int64   `json:"agg_ingress_bytes"`
	ModelsSent        int     `json:"models_sent"`
	AggEgressPerModel float64 `json:"agg_egress_per_model_s"`
	BusiestBroker     string  `json:"busiest_broker,omitempty"`
	BusiestBrokerOut  int64   `json:"busiest_broker_egress_bytes,omitempty"`

	// BoundMs is the physical limit of one round's fan-out: N·S/L over
	// gRPC (every copy leaves the aggregator's link), N·S/(K·L) over
	// Kafka with K brokers. Efficiency is BoundMs / PropagationMs: 1 means
	// the fan-out ran at line rate.
	BoundMs    float64 `json:"bound_ms"`
	Efficiency float64 `json:"efficiency"`

	CPU CPUFigures `json:"cpu"`
}

// TotalMs is the job's time: its rounds' durations summed.
func (r *Result) TotalMs() float64 {
	var t float64
	for _, f := range r.PerRound {
		t += f.DurationMs
	}
	return t
}

// RoundFig is one round of a run.
type RoundFig struct {
	Round         int64   `json:"round"`
	DurationMs    float64 `json:"duration_ms"`
	PropagationMs float64 `json:"propagation_ms"`
}

// CPUFigures: CPU seconds per process over the cell, and the machine's
// busy share (all processes, ours and others', of both cores).
type CPUFigures struct {
	WallSec     float64            `json:"wall_s"`
	Processes   map[string]float64 `json:"process_cpu_s"`
	MachineBusy float64            `json:"machine_busy"`
	SoftIRQ     float64            `json:"machine_softirq"`
	OursShare   float64            `json:"ours_share"`
	MaxRSSMB    map[string]float64 `json:"max_rss_mb,omitempty"`
}

// File is netbench.json: every run of every cell.
type File struct {
	Note    string    `json:"note"`
	Results []*Result `json:"results"`
}

// Parse reads netbench.json's content.
func Parse(b []byte) ([]*Result, error) {
	var f File
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", FileName, err)
	}
	return f.Results, nil
}
