package job

import (
	"slices"
	"strconv"

	"github.com/fdxkafka/fdxkafka/aggregator/coordinator"
	"github.com/fdxkafka/fdxkafka/shared/rules"
)

// DefaultHoldout is the fraction of each shard held out for federated
// evaluation when the job evaluates and names no fraction.
const DefaultHoldout = 0.2

// withSamplingDefaults fills the sampling fields: no fraction means
// everyone trains and no one evaluates; the population defaults to one
// client per data partition; DP-FedAvg's accountant is told the sampling
// rate the fit sample actually has.
func (s *Spec) withSamplingDefaults() {
	sp := &s.Sampling
	if sp.FractionFit == 0 {
		sp.FractionFit = 1
	}
	if sp.MinAvailableClients == 0 {
		sp.MinAvailableClients = s.Data.Partition.NumPartitions
	}
	if sp.FractionEvaluate > 0 && s.Data.Holdout == 0 {
		s.Data.Holdout = DefaultHoldout
	}
	if sp.FractionFit < 1 && s.Strategy.SamplingRate == 0 {
		if n := s.populationSize(); n > 0 {
			s.Strategy.SamplingRate = float64(rules.SampleSize(n, sp.FractionFit, s.Rounds.MinClients)) / float64(n)
		}
	}
}

func (s Spec) validateSampling() *SpecError {
	sp := s.Sampling
	switch {
	case !(sp.FractionFit > 0 && sp.FractionFit <= 1):
		return specErrorf("Sampling.FractionFit", "fraction-fit %v outside (0, 1]", sp.FractionFit)
	case !(sp.FractionEvaluate >= 0 && sp.FractionEvaluate <= 1):
		return specErrorf("Sampling.FractionEvaluate", "fraction-evaluate %v outside [0, 1]", sp.FractionEvaluate)
	case sp.MinEvaluateClients < 0:
		return specErrorf("Sampling.MinEvaluateClients", "min-evaluate-clients %d is negative", sp.MinEvaluateClients)
	case sp.MinAvailableClients < 0:
		return specErrorf("Sampling.MinAvailableClients", "min-available-clients %d is negative", sp.MinAvailableClients)
	case !(s.Data.Holdout >= 0 && s.Data.Holdout < 1):
		return specErrorf("Data.Holdout", "holdout %v outside [0, 1)", s.Data.Holdout)
	}
	if s.samples() {
		n, fit := s.populationSize(), max(s.Rounds.MinClients, s.Rounds.TargetClients)
		if sp.FractionFit < 1 && n < fit {
			return specErrorf("Sampling.MinAvailableClients", "a population of %d clients (min-available-clients) cannot give min-fit-clients %d", n, fit)
		}
		if sp.FractionEvaluate > 0 && n < sp.MinEvaluateClients {
			return specErrorf("Sampling.MinAvailableClients", "a population of %d clients (min-available-clients) cannot give min-evaluate-clients %d", n, sp.MinEvaluateClients)
		}
	}
	return nil
}

// populationSize is the number of client ids the rounds sample.
func (s Spec) populationSize() int {
	if s.Security.Allowed != nil {
		return len(s.Security.Allowed)
	}
	return s.Sampling.MinAvailableClients
}

// population is the client ids the rounds sample: the client list, sorted,
// or "0".."N-1".
func (s Spec) population() []string {
	if s.Security.Allowed != nil {
		ids := make([]string, 0, len(s.Security.Allowed))
		for id := range s.Security.Allowed {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		return ids
	}
	ids := make([]string, s.Sampling.MinAvailableClients)
	for i := range ids {
		ids[i] = strconv.Itoa(i)
	}
	return ids
}

// samples reports whether rounds sample their clients: not when every
// client trains and none evaluates.
func (s Spec) samples() bool {
	return !(s.Sampling.FractionFit >= 1 && s.Sampling.FractionEvaluate == 0)
}

// sampling is the coordinator's sampling config, nil when the rounds do
// not sample.
func (s Spec) sampling() *coordinator.Sampling {
	if !s.samples() {
		return nil
	}
	sp := s.Sampling
	return &coordinator.Sampling{Seed: s.Seed, Population: s.population(), FractionFit: sp.FractionFit,
		FractionEvaluate: sp.FractionEvaluate, MinEvaluate: sp.MinEvaluateClients}
}
