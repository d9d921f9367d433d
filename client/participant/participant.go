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
	"maps"
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
	// Residual, when set, is the client's error-feedback memory for top-k
	// updates, kept across calls by a long-running client (Follow). Nil
	// sends each top-k update without memory, as a serverless call must.
	Residual *tensor.Residual
}

// What a client did in a round (RoundResult.Status).
const (
	// StatusTrained: trained and sent an update (with its evaluation of
	// the global model if it was sampled to evaluate too).
	StatusTrained = "trained"
	// StatusEvaluated: sampled to evaluate only; sent its figures.
	StatusEvaluated = "evaluated"
	// StatusNotSampled: in neither of the round's samples; did nothing.
	StatusNotSampled = "not_sampled"
)

// NoteNotSampled is the summary's note when the client's last round did
// not ask it to do anything.
const NoteNotSampled = "not sampled this round"

// RoundResult describes one round's local work.
type RoundResult struct {
	Round     int64   `json:"round"`
	Status    string  `json:"status"`
	Examples  int     `json:"examples"`
	Loss      float64 `json:"train_loss"`
	Accuracy  float64 `json:"train_accuracy"`
	FetchMs   float64 `json:"fetch_ms"`
	TrainMs   float64 `json:"train_ms"`
	PublishMs float64 `json:"publish_ms"`
	// EvalLoss and EvalAccuracy are the global model's figures on the
	// client's held-out examples, when it was sampled to evaluate.
	EvalLoss     *float64 `json:"eval_loss,omitempty"`
	EvalAccuracy *float64 `json:"eval_accuracy,omitempty"`
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
	// Note explains a summary without training: NoteNotSampled.
	Note string `json:"note,omitempty"`
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
		// An asynchronous job has no round to miss: a newer model is
		// simply the one to train on.
		async := m.GetTrainConfig().GetAsync() && !m.GetFinal()
		if i == 0 && opt.Exact && opt.Round > 0 && m.GetRound() != opt.Round && !async {
			// Also when the job has finished: the round asked for is
			// closed either way.
			return sum, fmt.Errorf("round %d: %w (the aggregator is at round %d, final %v)", opt.Round, ErrRoundClosed, m.GetRound(), m.GetFinal())
		}
		if m.GetFinal() {
			sum.Final = true
			log.InfoContext(ctx, "job finished", "round", m.GetRound())
			return sum, nil
		}
		fit, eval := rules.Sampled(m, rules.RoleFit, opt.ClientID), rules.Sampled(m, rules.RoleEvaluate, opt.ClientID)
		sum.Note = ""
		if !fit && !eval {
			// Answer at once: training would only be refused.
			sum.Rounds = append(sum.Rounds, RoundResult{Round: m.GetRound(), Status: StatusNotSampled, FetchMs: ms(received.Sub(start))})
			sum.Note = NoteNotSampled
			log.InfoContext(ctx, "not sampled this round", "round", m.GetRound())
			want = m.GetRound() + 1
			continue
		}
		res, u, err := p.work(ctx, m, opt.ClientID, fit, eval, opt.Residual)
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

// work does what the round asks of the client: train (fit), evaluate the
// global model on its held-out examples (eval), or both, and builds the
// message to send: an update, or an evaluate-only one.
func (p *Participant) work(ctx context.Context, m *fdxv1.GlobalModel, clientID string, fit, eval bool, residual *tensor.Residual) (RoundResult, *fdxv1.Update, error) {
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
	shard, held, err := dataset.Holdout(shard, cfg.GetHoldoutFraction())
	if err != nil {
		return RoundResult{}, nil, fmt.Errorf("client %q shard: %w", clientID, err)
	}
	if held.Len() == 0 {
		// No held-out examples (a job without a holdout, or a tiny shard):
		// evaluate on the training shard rather than stall the round.
		held = shard
	}
	net, err := model.New(cfg.GetModel(), full.Dim, full.Classes, cfg.GetSeed())
	if err != nil {
		return RoundResult{}, nil, err
	}
	if err := net.SetTensors(m.GetParams()); err != nil {
		return RoundResult{}, nil, fmt.Errorf("global model: %w", err)
	}
	var evalMetrics map[string]float64
	var res RoundResult
	if eval {
		em, err := net.Evaluate(held)
		if err != nil {
			return RoundResult{}, nil, fmt.Errorf("evaluate: %w", err)
		}
		evalMetrics = map[string]float64{rules.MetricEvalLoss: em.Loss, rules.MetricEvalAccuracy: em.Accuracy, rules.MetricEvalExamples: float64(held.Len())}
		res.EvalLoss, res.EvalAccuracy = &em.Loss, &em.Accuracy
	}
	if !fit {
		res.Round, res.Status = m.GetRound(), StatusEvaluated
		return res, &fdxv1.Update{
			Job: m.GetJob(), ClientId: clientID, BaseRound: m.GetRound(), EvaluateOnly: true,
			NumExamples: int64(held.Len()), Metrics: evalMetrics, Timings: &fdxv1.Timings{},
		}, nil
	}
	// Two kinds of update send the step rather than the weights: an
	// asynchronous aggregator's, which folds it into a model that may by now
	// be versions ahead of the one we trained on, and a compressed one,
	// whose small values float16 and int8 keep well (and of which top-k
	// sends the largest).
	dtype := cfg.GetUpdateDtype()
	compressed := dtype != fdxv1.DType_DTYPE_UNSPECIFIED && dtype != fdxv1.DType_DTYPE_FLOAT32
	var global [][]float32
	if cfg.GetAsync() || compressed {
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
	u := &fdxv1.Update{
		Job:         m.GetJob(),
		ClientId:    clientID,
		BaseRound:   m.GetRound(),
		NumExamples: int64(st.Examples),
		Params:      net.Tensors(),
		Metrics:     map[string]float64{"loss": st.Loss, "accuracy": st.Accuracy},
		Timings: &fdxv1.Timings{
			TrainStart: timestamppb.New(trainStart),
			TrainEnd:   timestamppb.New(trainEnd),
		},
	}
	if global != nil {
		var step []*fdxv1.Tensor
		if dtype == fdxv1.DType_DTYPE_SPARSE_FLOAT32 {
			step, err = residual.EncodeTopK(delta(net.Params(), global), net.Specs(), cfg.GetTopkFraction())
		} else {
			step, err = tensor.EncodeAs(delta(net.Params(), global), net.Specs(), dtype)
		}
		if err != nil {
			return RoundResult{}, nil, fmt.Errorf("encode update: %w", err)
		}
		u.Params, u.IsDelta = step, true
	}
	maps.Copy(u.Metrics, evalMetrics)
	res.Round, res.Status = m.GetRound(), StatusTrained
	res.Examples, res.Loss, res.Accuracy = st.Examples, st.Loss, st.Accuracy
	res.TrainMs = ms(trainEnd.Sub(trainStart))
	return res, u, nil
}

// delta returns local − global elementwise.
func delta(local, global [][]float32) [][]float32 {
	out := make([][]float32, len(local))
	for i := range local {
		out[i] = make([]float32, len(local[i]))
		for j, x := range local[i] {
			out[i][j] = float32(float64(x) - float64(global[i][j]))
		}
	}
	return out
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
