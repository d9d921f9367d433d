// Package round holds what every way of running a job shares about a
// round: taking its updates in (Intake: validate, accept, fold, admit,
// reply) and building, checking and publishing the global models that
// open and close it (Job). The synchronous rounds and asynchronous
// versions of package coordinator and the workers and leader of package
// scaleout all go through it, so the rules a round applies are written
// once.
package round

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fdxkafka/fdxkafka/aggregator/validate"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/model"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// MetricMedianNorm names the metric in which a model carries the median
// update norm of the round that made it: the next round's norm bound
// (Job.NormBound) reads it back, so that a restarted aggregator, or a
// scale-out worker that sees only the model, bounds norms as the
// aggregator that closed the round would.
const MetricMedianNorm = "update_norm_median"

// Job is what every round of a job shares, whichever way the job runs:
// what its models are and carry, and what a valid update to one of its
// rounds looks like. It builds and checks the job's model records.
type Job struct {
	// ID is the job's id, which every model and update names.
	ID         string
	NumRounds  int
	MinClients int
	// Train is carried by every model; its Model, Dataset and Seed also
	// define the initial parameters, and its model_dtype the grid models
	// are published on.
	Train *fdxv1.TrainConfig
	// InDim and Classes size the network.
	InDim, Classes int
	// RoundTimeout, when > 0, gives every model but the final one a
	// deadline that long after its publication.
	RoundTimeout time.Duration
	// MaxNorm and NormFactor bound each update's ||local - global||: see
	// NormBound. NormFactor also bounds a round without a median before it
	// by its own (Intake).
	MaxNorm, NormFactor float64
	// MaxExamples bounds the examples an update may claim; ExamplesOf,
	// when set, is each client's shard size: no client may claim to have
	// trained on more.
	MaxExamples int64
	ExamplesOf  func(clientID string) (int64, error)
	// MaxUpdateBytes bounds an update's encoded size.
	MaxUpdateBytes int
	// Allowed, when non-nil, restricts which client ids may contribute.
	Allowed map[string]bool

	specs []tensor.Spec
}

// NewJob checks j's fields and sizes its tensors.
func NewJob(j Job) (*Job, error) {
	m := &j
	switch {
	case m.ID == "":
		return nil, errors.New("no job id")
	case m.NumRounds < 1:
		return nil, fmt.Errorf("numrounds %d: want at least 1", m.NumRounds)
	case m.MinClients < 1:
		return nil, fmt.Errorf("minclients %d: want at least 1", m.MinClients)
	case m.Train == nil:
		return nil, errors.New("no train config")
	}
	switch d := m.Train.GetModelDtype(); d {
	case fdxv1.DType_DTYPE_UNSPECIFIED, fdxv1.DType_DTYPE_FLOAT32, fdxv1.DType_DTYPE_FLOAT16:
	default:
		// An int8 model would put the global weights themselves on a
		// 255-level grid per tensor; int8 is for updates (deltas).
		return nil, fmt.Errorf("model encoding %v: want float32 or float16", d)
	}
	specs, err := model.SpecsFor(m.Train.GetModel(), m.InDim, m.Classes)
	if err != nil {
		return nil, err
	}
	m.specs = specs
	return m, nil
}

// Expect is what a valid update to round r looks like, the round starting
// from global and the round before it having median norm median (0:
// none). The caller adds what its mode asks besides: samples, or the
// asynchronous rules.
func (m *Job) Expect(r int64, global [][]float32, median float64) validate.Expect {
	return validate.Expect{
		Job: m.ID, Round: r, Specs: m.specs, Global: global,
		MaxNorm: m.NormBound(median), MaxExamples: m.MaxExamples, MaxBytes: m.MaxUpdateBytes,
		Allowed: m.Allowed, ExamplesOf: m.ExamplesOf,
	}
}

// Specs returns the shapes of the job's tensors.
func (m *Job) Specs() []tensor.Spec { return m.specs }

// Sizes returns the number of values of each tensor.
func (m *Job) Sizes() []int {
	sizes := make([]int, len(m.specs))
	for i, s := range m.specs {
		sizes[i] = s.Size()
	}
	return sizes
}

// NumParams returns the number of values of a model.
func (m *Job) NumParams() int {
	n := 0
	for _, s := range m.specs {
		n += s.Size()
	}
	return n
}

// Initial returns the job's seeded initial parameters, on the model
// encoding's grid.
func (m *Job) Initial() ([][]float32, error) {
	net, err := model.New(m.Train.GetModel(), m.InDim, m.Classes, m.Train.GetSeed())
	if err != nil {
		return nil, err
	}
	params := net.Params()
	if err := m.Snap(params); err != nil {
		return nil, fmt.Errorf("initial model: %w", err)
	}
	return params, nil
}

// Snap puts new global parameters on the grid of the job's model encoding,
// before they are evaluated, published or used as the next round's global:
// the model clients decode is then the aggregator's own, value for value
// (see TrainConfig.model_dtype).
func (m *Job) Snap(params [][]float32) error {
	if m.Train.GetModelDtype() != fdxv1.DType_DTYPE_FLOAT16 {
		return nil
	}
	if err := tensor.SnapHalf(params); err != nil {
		return fmt.Errorf("float16 model encoding: %w", err)
	}
	return nil
}

// Record builds the record of round's model from parameters that Snap has
// put on their grid. Metrics and state may be nil.
func (m *Job) Record(round int64, params [][]float32, contributors []string, metrics map[string]float64, state []byte) *fdxv1.GlobalModel {
	now := time.Now()
	ts := tensor.Encode(params, m.specs)
	if m.Train.GetModelDtype() == fdxv1.DType_DTYPE_FLOAT16 {
		// NewJob admitted only float32 and float16.
		ts, _ = tensor.EncodeAs(params, m.specs, fdxv1.DType_DTYPE_FLOAT16)
	}
	if metrics == nil {
		metrics = map[string]float64{}
	}
	rec := &fdxv1.GlobalModel{
		Job:           m.ID,
		Round:         round,
		Params:        ts,
		TrainConfig:   m.Train,
		Final:         round > int64(m.NumRounds),
		PublishedAt:   timestamppb.New(now),
		Metrics:       metrics,
		StrategyState: state,
		NumRounds:     int64(m.NumRounds),
		MinClients:    int32(m.MinClients),
	}
	rules.SetContributors(rec, contributors)
	if m.RoundTimeout > 0 && !rec.Final {
		rec.Deadline = timestamppb.New(now.Add(m.RoundTimeout))
	}
	return rec
}

// Restorable accepts a model this job can resume from or work on: its
// own, with a round inside the job and the job's tensor shapes. A channel
// walks back past records that fail (a forged or damaged model on the
// topic).
func (m *Job) Restorable(g *fdxv1.GlobalModel) error {
	if err := rules.CheckModel(g, m.ID); err != nil {
		return err
	}
	if r := g.GetRound(); r > int64(m.NumRounds)+1 {
		return fmt.Errorf("model round %d is past this job's final round %d", r, m.NumRounds+1)
	}
	if _, err := tensor.Decode(g.GetParams(), m.specs); err != nil {
		return fmt.Errorf("model round %d: %w", g.GetRound(), err)
	}
	return nil
}

// Decode returns a restorable model's parameters.
func (m *Job) Decode(g *fdxv1.GlobalModel) ([][]float32, error) {
	params, err := tensor.Decode(g.GetParams(), m.specs)
	if err != nil {
		return nil, fmt.Errorf("model round %d: %w", g.GetRound(), err)
	}
	return params, nil
}

// NormBound is the bound on ||local - global|| of the updates to a round
// whose previous round's median norm was median: MaxNorm, or NormFactor
// times median, whichever is smaller; 0 for none (a round with no median
// before it, without MaxNorm: see SelfBound).
func (m *Job) NormBound(median float64) float64 {
	b := m.MaxNorm
	if k := m.NormFactor * median; k > 0 && (b == 0 || k < b) {
		b = k
	}
	return b
}

// SelfBound is the factor by which a round whose previous round's median
// norm was median bounds norms by its own median instead (NewIntake's
// selfBound): NormFactor for the first round, or one restarted from a
// model without a median; 0 for a round the median before it bounds.
func (m *Job) SelfBound(median float64) float64 {
	if median != 0 {
		return 0
	}
	return max(m.NormFactor, 0)
}

// MedianOf returns the median norm model g carries for the round it opens.
func MedianOf(g *fdxv1.GlobalModel) float64 { return g.GetMetrics()[MetricMedianNorm] }

// Publisher is where models go: the aggregator's channel, or a scale-out
// leader's.
type Publisher interface {
	Publish(ctx context.Context, m *fdxv1.GlobalModel) error
}

// PublishTimeout bounds closing a round once it has begun.
const PublishTimeout = 2 * time.Minute

// Publish closes a round by publishing its model on p. It ignores ctx's
// cancellation: a shutdown signal that arrives mid-transaction lets the
// transaction finish (bounded by PublishTimeout) rather than leave it to
// the broker's timeout, so a restart finds the round either committed or
// not begun.
func Publish(ctx context.Context, p Publisher, g *fdxv1.GlobalModel) error {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), PublishTimeout)
	defer cancel()
	return p.Publish(pctx, g)
}
