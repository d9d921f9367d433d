package coordinator

import (
	"errors"
	"fmt"
	"math"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/rules"
)

// Sampling asks a fraction of the job's clients to train, and a fraction to
// evaluate, in each round, as Flower's fraction_fit and fraction_evaluate
// do. The fit sample's minimum is Config.MinClients (Flower's
// min_fit_clients).
//
// The draw is a function of (Seed, round) only: each population member's
// rules.SampleHash, lowest first, so a restarted aggregator draws the same
// clients and the model record needs to carry only the threshold (the
// k-th lowest hash) for any client to test its own membership. A list of
// the k ids is added for samples up to rules.MaxListedSample. A threshold
// rather than a list is what scales: a fleet of millions of serverless
// clients reads one number, and the aggregator tests an update in O(1).
type Sampling struct {
	// Seed keys the draw.
	Seed uint64
	// Population is the ids drawn from (Flower's available clients): the
	// job's client list, or "0".."N-1" for min-available-clients N.
	Population []string
	// FractionFit in (0, 1]; 0 or 1 asks every client to train, including
	// ids outside the population.
	FractionFit float64
	// FractionEvaluate in [0, 1]: 0 turns federated evaluation off.
	FractionEvaluate float64
	// MinEvaluate is Flower's min_evaluate_clients.
	MinEvaluate int
}

func (s *Sampling) validate(minFit int) error {
	switch {
	case s == nil:
		return nil
	case !(s.FractionFit >= 0 && s.FractionFit <= 1):
		return fmt.Errorf("fraction-fit %v outside [0, 1]", s.FractionFit)
	case !(s.FractionEvaluate >= 0 && s.FractionEvaluate <= 1):
		return fmt.Errorf("fraction-evaluate %v outside [0, 1]", s.FractionEvaluate)
	case s.MinEvaluate < 0:
		return fmt.Errorf("min-evaluate-clients %d is negative", s.MinEvaluate)
	case len(s.Population) == 0 && (s.samplesFit() || s.FractionEvaluate > 0):
		return errors.New("sampling needs a population of clients (min-available-clients or a client list)")
	case s.samplesFit() && len(s.Population) < minFit:
		return fmt.Errorf("population of %d clients is below min-fit-clients %d", len(s.Population), minFit)
	case s.FractionEvaluate > 0 && len(s.Population) < s.MinEvaluate:
		return fmt.Errorf("population of %d clients is below min-evaluate-clients %d", len(s.Population), s.MinEvaluate)
	}
	seen := make(map[string]bool, len(s.Population))
	for _, id := range s.Population {
		if err := rules.ValidateClientID(id); err != nil {
			return fmt.Errorf("population: %w", err)
		}
		if seen[id] {
			return fmt.Errorf("population: client %q twice", id)
		}
		seen[id] = true
	}
	return nil
}

func (s *Sampling) samplesFit() bool { return s != nil && s.FractionFit > 0 && s.FractionFit < 1 }

// roundPlan is what a round asks: the strategy's plan, and the samples it
// draws.
type roundPlan struct {
	round int64
	plan  strategy.Plan
	// record is the model record's Sampling; nil when every client trains
	// and none evaluates.
	record *fdxv1.Sampling
	// fit is the training sample, nil for every client; eval the
	// evaluation sample, nil for none.
	fit, eval map[string]bool
}

// jobPlan is the plan the job's flags give, before the strategy's hook.
func (c *Coordinator) jobPlan() strategy.Plan {
	p := strategy.Plan{
		FractionFit:  1,
		MinFit:       c.cfg.MinClients,
		LearningRate: c.cfg.Train.GetLearningRate(),
		LocalEpochs:  int(c.cfg.Train.GetLocalEpochs()),
		ProximalMu:   c.cfg.Train.GetProximalMu(),
	}
	if s := c.cfg.Sampling; s != nil {
		if s.samplesFit() {
			p.FractionFit = s.FractionFit
		}
		p.FractionEvaluate, p.MinEvaluate = s.FractionEvaluate, s.MinEvaluate
	}
	return p
}

// planFor returns round's plan; the last one is cached, since the round
// loop asks twice (publishing the model, opening the round).
func (c *Coordinator) planFor(round int64) (*roundPlan, error) {
	if c.plan != nil && c.plan.round == round {
		return c.plan, nil
	}
	p := c.policy.ConfigureEvaluate(round, c.policy.ConfigureFit(round, c.jobPlan()))
	rp := &roundPlan{round: round, plan: p}
	s := c.cfg.Sampling
	if s == nil || (!(p.FractionFit < 1) && !(p.FractionEvaluate > 0)) {
		c.plan = rp
		return rp, nil
	}
	rec := &fdxv1.Sampling{Seed: s.Seed, Population: int64(len(s.Population)),
		FractionFit: 1, FitThreshold: math.MaxUint64, FitCount: int32(min(len(s.Population), math.MaxInt32))}
	if p.FractionFit < 1 {
		ids, th, err := rules.Draw(s.Seed, round, rules.RoleFit, s.Population, rules.SampleSize(len(s.Population), p.FractionFit, p.MinFit))
		if err != nil {
			return nil, fmt.Errorf("round %d fit sample: %w", round, err)
		}
		rec.FractionFit, rec.FitThreshold, rec.FitCount = p.FractionFit, th, int32(len(ids))
		if len(ids) <= rules.MaxListedSample {
			rec.FitClients = ids
		}
		rp.fit = set(ids)
	}
	if p.FractionEvaluate > 0 {
		ids, th, err := rules.Draw(s.Seed, round, rules.RoleEvaluate, s.Population, rules.SampleSize(len(s.Population), p.FractionEvaluate, p.MinEvaluate))
		if err != nil {
			return nil, fmt.Errorf("round %d evaluation sample: %w", round, err)
		}
		rec.FractionEvaluate, rec.EvaluateThreshold, rec.EvaluateCount = p.FractionEvaluate, th, int32(len(ids))
		if len(ids) <= rules.MaxListedSample {
			rec.EvaluateClients = ids
		}
		rp.eval = set(ids)
	}
	rp.record = rec
	c.plan = rp
	return rp, nil
}

func set(ids []string) map[string]bool {
	m := make(map[string]bool, len(ids))
	for _, id := range ids {
		m[id] = true
	}
	return m
}

// configure sets what model m asks of its round: the plan's train config
// and samples. The final model samples nobody; its train config still
// says how the job trained (FedProx's μ, say) to whoever reads it.
func (c *Coordinator) configure(m *fdxv1.GlobalModel) error {
	var p strategy.Plan
	var record *fdxv1.Sampling
	if m.GetFinal() {
		p = c.policy.ConfigureFit(m.GetRound(), c.jobPlan())
	} else {
		rp, err := c.planFor(m.GetRound())
		if err != nil {
			return err
		}
		p, record = rp.plan, rp.record
	}
	tc := c.cfg.Train
	if p.LearningRate != tc.GetLearningRate() || p.LocalEpochs != int(tc.GetLocalEpochs()) || p.ProximalMu != tc.GetProximalMu() {
		tc = proto.CloneOf(tc)
		tc.LearningRate, tc.LocalEpochs, tc.ProximalMu = p.LearningRate, int32(p.LocalEpochs), p.ProximalMu
	}
	m.TrainConfig = tc
	m.Sampling = record
	return nil
}

// fitTarget is the number of updates that closes the round before its
// deadline: the whole fit sample when there is one.
func (rp *roundPlan) fitTarget(cfg Config) int {
	if rp == nil || rp.fit == nil {
		return cfg.TargetClients
	}
	return len(rp.fit)
}

// sampledIDs returns the fit sample, sorted (nil: everyone).
func (rp *roundPlan) sampledIDs() []string {
	if rp == nil || rp.fit == nil {
		return nil
	}
	ids := make([]string, 0, len(rp.fit))
	for id := range rp.fit {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}
