// Package participant is the client side of a federation: what one client
// does in a round (fetch the global model, train on its own shard, send the
// update), how it dials an aggregator over either channel (Transport), and
// the long-running client's loop over every round (Follow). The Cloud
// Function and the long-running client both run it.
package participant

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/model"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// ErrRoundClosed means the requested round's model was already superseded.
var ErrRoundClosed = channel.ErrRoundClosed

// Participant trains for one client identity at a time. It is safe for
// concurrent use: the catalog caches the read-only data sets.
type Participant struct {
	Data *dataset.Catalog
	Log  *slog.Logger
}

// Options select what to take part in.
type Options struct {
	Job      string
	ClientID string
	// Round, when > 0, is the first round to train: the call waits for a
	// model at least that new.
	Round int64
	// Exact makes a newer model than Round an error (ErrRoundClosed)
	// instead of a round to join.
	Exact bool
	// Rounds is how many successive rounds to take part in (default 1).
	Rounds int
}

// RoundResult describes one round's local work.
type RoundResult struct {
	Round     int64   `json:"round"`
	Examples  int     `json:"examples"`
	Loss      float64 `json:"train_loss"`
	Accuracy  float64 `json:"train_accuracy"`
	FetchMs   float64 `json:"fetch_ms"`
	TrainMs   float64 `json:"train_ms"`
	PublishMs float64 `json:"publish_ms"`
}

// Summary is the answer of one invocation.
type Summary struct {
	Job      string        `json:"job"`
	ClientID string        `json:"client_id"`
	Rounds   []RoundResult `json:"rounds"`
	// Final is true when the job's final model was seen: nothing left to do.
	Final bool `json:"final"`
	// LastRound is the round of the last model fetched.
	LastRound int64 `json:"last_round"`
	// Traffic of this invocation's channel client (see channel.Stats for
	// what counts as a message on each channel).
	MessagesSent     int64 `json:"messages_sent"`
	MessagesReceived int64 `json:"messages_received"`
	BytesSent        int64 `json:"bytes_sent"`
	BytesReceived    int64 `json:"bytes_received"`
}

// Run takes part in opt.Rounds rounds through ch.
func (p *Participant) Run(ctx context.Context, ch channel.Client, opt Options) (sum Summary, err error) {
	if opt.Rounds <= 0 {
		opt.Rounds = 1
	}
	log := p.logger().With("job", opt.Job, "client_id", opt.ClientID)
	sum = Summary{Job: opt.Job, ClientID: opt.ClientID}
	defer func() {
		st := ch.Stats()
		sum.MessagesSent, sum.MessagesReceived = st.MessagesSent, st.MessagesReceived
		sum.BytesSent, sum.BytesReceived = st.BytesSent, st.BytesReceived
	}()
	want := opt.Round
	for i := 0; i < opt.Rounds; i++ {
		start := time.Now()
		m, err := ch.Model(ctx, want)
		if err != nil {
			return sum, fmt.Errorf("fetch model: %w", err)
		}
		received := time.Now()
		if m.GetJob() != "" && m.GetJob() != opt.Job {
			return sum, fmt.Errorf("model belongs to job %q, not %q", m.GetJob(), opt.Job)
		}
		sum.LastRound = m.GetRound()
		if i == 0 && opt.Exact && opt.Round > 0 && m.GetRound() != opt.Round {
			// Also when the job has finished: the round asked for is
			// closed either way.
			return sum, fmt.Errorf("round %d: %w (the aggregator is at round %d, final %v)", opt.Round, ErrRoundClosed, m.GetRound(), m.GetFinal())
		}
		if m.GetFinal() {
			sum.Final = true
			log.InfoContext(ctx, "job finished", "round", m.GetRound())
			return sum, nil
		}
		res, u, err := p.train(ctx, m, opt.ClientID)
		if err != nil {
			return sum, fmt.Errorf("round %d: %w", m.GetRound(), err)
		}
		res.FetchMs = ms(received.Sub(start))
		u.Timings.ModelReceived = timestamppb.New(received)
		sent := time.Now()
		u.Timings.Sent = timestamppb.New(sent)
		if err := ch.Submit(ctx, u); err != nil {
			return sum, fmt.Errorf("round %d: %w", m.GetRound(), err)
		}
		res.PublishMs = ms(time.Since(sent))
		sum.Rounds = append(sum.Rounds, res)
		log.InfoContext(ctx, "round done", "round", res.Round, "examples", res.Examples,
			"loss", res.Loss, "accuracy", res.Accuracy, "fetch_ms", res.FetchMs, "train_ms", res.TrainMs, "publish_ms", res.PublishMs)
		want = m.GetRound() + 1
	}
	return sum, nil
}

// train runs local training from m and builds the update.
func (p *Participant) train(ctx context.Context, m *fdxv1.GlobalModel, clientID string) (RoundResult, *fdxv1.Update, error) {
	cfg := m.GetTrainConfig()
	if cfg == nil {
		return RoundResult{}, nil, errors.New("model carries no train config")
	}
	full, err := p.Data.Load(cfg.GetDataset(), dataset.SplitTrain)
	if err != nil {
		return RoundResult{}, nil, err
	}
	spec := rules.PartitionSpec(cfg.GetPartition())
	shard, err := p.Data.ClientShard(cfg.GetDataset(), dataset.SplitTrain, spec, clientID, int(cfg.GetMaxExamples()))
	if err != nil {
		return RoundResult{}, nil, fmt.Errorf("client %q shard: %w", clientID, err)
	}
	net, err := model.New(cfg.GetModel(), full.Dim, full.Classes, cfg.GetSeed())
	if err != nil {
		return RoundResult{}, nil, err
	}
	if err := net.SetTensors(m.GetParams()); err != nil {
		return RoundResult{}, nil, fmt.Errorf("global model: %w", err)
	}
	// Compressed updates carry the delta from the global model, whose
	// small values float16 and int8 keep well.
	dtype := cfg.GetUpdateDtype()
	compressed := dtype != fdxv1.DType_DTYPE_UNSPECIFIED && dtype != fdxv1.DType_DTYPE_FLOAT32
	var global [][]float32
	if compressed {
		global = net.Params()
	}
	trainStart := time.Now()
	st, err := net.Train(ctx, shard, model.TrainOptions{
		LearningRate: cfg.GetLearningRate(),
		BatchSize:    int(cfg.GetBatchSize()),
		Epochs:       int(cfg.GetLocalEpochs()),
		Seed:         Seed(cfg.GetSeed(), clientID, m.GetRound()),
		ProximalMu:   cfg.GetProximalMu(),
	})
	if err != nil {
		return RoundResult{}, nil, fmt.Errorf("train: %w", err)
	}
	trainEnd := time.Now()
	params := net.Tensors()
	if compressed {
		delta := net.Params()
		for i := range delta {
			for j := range delta[i] {
				delta[i][j] -= global[i][j]
			}
		}
		if params, err = tensor.EncodeAs(delta, net.Specs(), dtype); err != nil {
			return RoundResult{}, nil, fmt.Errorf("encode update: %w", err)
		}
	}
	u := &fdxv1.Update{
		Job:         m.GetJob(),
		ClientId:    clientID,
		BaseRound:   m.GetRound(),
		NumExamples: int64(st.Examples),
		IsDelta:     compressed,
		Params:      params,
		Metrics:     map[string]float64{"loss": st.Loss, "accuracy": st.Accuracy},
		Timings: &fdxv1.Timings{
			TrainStart: timestamppb.New(trainStart),
			TrainEnd:   timestamppb.New(trainEnd),
		},
	}
	return RoundResult{
		Round:    m.GetRound(),
		Examples: st.Examples,
		Loss:     st.Loss,
		Accuracy: st.Accuracy,
		TrainMs:  ms(trainEnd.Sub(trainStart)),
	}, u, nil
}

// Seed derives a client's training seed for a round from the job seed, so
// every client shuffles differently and every rerun identically.
func Seed(jobSeed uint64, clientID string, round int64) uint64 {
	h := fnv.New64a()
	fmt.Fprintf(h, "%d/%s/%d", jobSeed, clientID, round)
	return h.Sum64()
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func (p *Participant) logger() *slog.Logger {
	if p.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return p.Log
}
