package job

import (
	"fmt"
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
	if s.FractionFit == 0 {
		s.FractionFit = 1
	}
	if s.MinAvailableClients == 0 {
		s.MinAvailableClients = s.Partition.NumPartitions
	}
	if s.FractionEvaluate > 0 && s.Holdout == 0 {
		s.Holdout = DefaultHoldout
	}
	if s.FractionFit < 1 && s.Strategy.SamplingRate == 0 {
		if n := len(s.population()); n > 0 {
			s.Strategy.SamplingRate = float64(rules.SampleSize(n, s.FractionFit, s.MinClients)) / float64(n)
		}
	}
}

func (s Spec) validateSampling() error {
	switch {
	case !(s.FractionFit > 0 && s.FractionFit <= 1):
		return fmt.Errorf("fraction-fit %v outside (0, 1]", s.FractionFit)
	case !(s.FractionEvaluate >= 0 && s.FractionEvaluate <= 1):
		return fmt.Errorf("fraction-evaluate %v outside [0, 1]", s.FractionEvaluate)
	case s.MinEvaluateClients < 0:
		return fmt.Errorf("min-evaluate-clients %d is negative", s.MinEvaluateClients)
	case s.MinAvailableClients < 0:
		return fmt.Errorf("min-available-clients %d is negative", s.MinAvailableClients)
	case !(s.Holdout >= 0 && s.Holdout < 1):
		return fmt.Errorf("holdout %v outside [0, 1)", s.Holdout)
	}
	if sp := s.sampling(); sp != nil {
		n := len(sp.Population)
		if s.FractionFit < 1 && n < max(s.MinClients, s.TargetClients) {
			return fmt.Errorf("a population of %d clients (min-available-clients) cannot give min-fit-clients %d", n, max(s.MinClients, s.TargetClients))
		}
		if s.FractionEvaluate > 0 && n < s.MinEvaluateClients {
			return fmt.Errorf("a population of %d clients (min-available-clients) cannot give min-evaluate-clients %d", n, s.MinEvaluateClients)
		}
	}
	return nil
}

// population is the client ids the rounds sample: the client list, sorted,
// or "0".."N-1".
func (s Spec) population() []string {
	if s.Allowed != nil {
		ids := make([]string, 0, len(s.Allowed))
		for id := range s.Allowed {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		return ids
	}
	ids := make([]string, s.MinAvailableClients)
	for i := range ids {
		ids[i] = strconv.Itoa(i)
	}
	return ids
}

// sampling is the coordinator's sampling config, nil when every client
// trains and none evaluates.
func (s Spec) sampling() *coordinator.Sampling {
	if s.FractionFit >= 1 && s.FractionEvaluate == 0 {
		return nil
	}
	return &coordinator.Sampling{Seed: s.Seed, Population: s.population(), FractionFit: s.FractionFit,
		FractionEvaluate: s.FractionEvaluate, MinEvaluate: s.MinEvaluateClients}
}
