package rules

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"slices"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
)

// The roles a round samples clients for.
const (
	RoleFit      = "fit"
	RoleEvaluate = "evaluate"
)

// The metric names of federated evaluation in an update: the global model's
// loss and accuracy on the client's held-out examples, and how many there
// were. Other names starting "eval_" are evaluation metrics too.
const (
	MetricEvalLoss     = "eval_loss"
	MetricEvalAccuracy = "eval_accuracy"
	MetricEvalExamples = "eval_examples"
)

// MaxListedSample is the largest sample a model record names client by
// client; a larger one travels as its threshold alone (see Sampling).
const MaxListedSample = 10_000

// SampleHash is the draw of one client for one role in one round: the first
// eight bytes of SHA-256 over the seed, the round, the role and the client
// id. A round's sample is the population members with the lowest hashes, so
// the hash is both how the aggregator draws and how a client tests its
// membership against the published threshold.
func SampleHash(seed uint64, round int64, role, clientID string) uint64 {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], seed)
	binary.BigEndian.PutUint64(b[8:], uint64(round))
	h := sha256.New()
	h.Write(b[:])
	h.Write([]byte(role))
	h.Write([]byte{0})
	h.Write([]byte(clientID))
	return binary.BigEndian.Uint64(h.Sum(nil))
}

// SampleSize is Flower's sample size: max(⌊fraction·population⌋, minimum),
// at least one and at most the population. A fraction of 1 or more takes
// everyone.
func SampleSize(population int, fraction float64, minimum int) int {
	if fraction >= 1 {
		return population
	}
	k := int(math.Floor(fraction * float64(population)))
	return min(max(k, minimum, 1), population)
}

// Draw returns the k members of population with the lowest SampleHash for
// (seed, round, role), sorted, and the largest of their hashes: the
// threshold that selects exactly them. It fails on a duplicate id or a k
// outside [1, len(population)].
func Draw(seed uint64, round int64, role string, population []string, k int) ([]string, uint64, error) {
	if k < 1 || k > len(population) {
		return nil, 0, fmt.Errorf("sample of %d from a population of %d", k, len(population))
	}
	type drawn struct {
		id string
		h  uint64
	}
	all := make([]drawn, len(population))
	for i, id := range population {
		all[i] = drawn{id, SampleHash(seed, round, role, id)}
	}
	// Ties in a 64-bit hash are astronomically rare; ordering them by id
	// keeps the draw a function of the population set, not of its order.
	slices.SortFunc(all, func(a, b drawn) int { return cmp.Or(cmp.Compare(a.h, b.h), cmp.Compare(a.id, b.id)) })
	for i := 1; i < len(all); i++ {
		if all[i].id == all[i-1].id {
			return nil, 0, fmt.Errorf("client %q appears twice in the population", all[i].id)
		}
	}
	threshold := all[k-1].h
	// Every member at or below the threshold is in: with a tie at the
	// threshold that is one more than k, as a client's own test would say.
	var ids []string
	for _, d := range all {
		if d.h > threshold {
			break
		}
		ids = append(ids, d.id)
	}
	slices.Sort(ids)
	return ids, threshold, nil
}

// Sampled tells whether clientID is asked to train (RoleFit) or evaluate
// (RoleEvaluate) in the round of model m. Without a Sampling every client
// trains and none evaluates. The test needs only the record's threshold,
// not its list, so it holds for a fleet of any size; it cannot tell a
// client outside the job's population, which the aggregator refuses.
func Sampled(m *fdxv1.GlobalModel, role, clientID string) bool {
	s := m.GetSampling()
	if s == nil {
		return role == RoleFit
	}
	h := SampleHash(s.GetSeed(), m.GetRound(), role, clientID)
	switch role {
	case RoleFit:
		return s.GetFitCount() > 0 && h <= s.GetFitThreshold()
	case RoleEvaluate:
		return s.GetEvaluateCount() > 0 && h <= s.GetEvaluateThreshold()
	}
	return false
}
