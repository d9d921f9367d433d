package rules

import (
	"math"
	"slices"
	"strconv"
	"testing"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
)

func TestSampleSizeIsFlowers(t *testing.T) {
	for _, tc := range []struct {
		n        int
		fraction float64
		minimum  int
		want     int
	}{
		{100, 0.1, 2, 10},   // ⌊0.1·100⌋
		{100, 0.01, 2, 2},   // the minimum wins
		{10, 0.55, 0, 5},    // floor, not round
		{10, 0.01, 0, 1},    // never empty
		{10, 0.5, 20, 10},   // never above the population
		{10, 1, 2, 10},      // everyone
		{7, 0.999, 0, 6},    // ⌊6.993⌋
		{50, 0.2, 10, 10},   // equal
		{50, 0.3, 10, 15},   // fraction wins
		{1, 0.5, 0, 1},      // a population of one
		{3, 0.34, 0, 1},     // ⌊1.02⌋
		{1000, 0.5, 1, 500}, // large
	} {
		if got := SampleSize(tc.n, tc.fraction, tc.minimum); got != tc.want {
			t.Errorf("SampleSize(%d, %v, %d) = %d, want %d", tc.n, tc.fraction, tc.minimum, got, tc.want)
		}
	}
}

func population(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = strconv.Itoa(i)
	}
	return ids
}

// TestDrawIsAFunctionOfSeedAndRound: the same (seed, round, role) draws the
// same clients whatever the population's order; the threshold selects
// exactly them, as a client's own test (Sampled) says; other rounds,
// roles and seeds draw differently.
func TestDrawIsAFunctionOfSeedAndRound(t *testing.T) {
	pop := population(200)
	ids, th, err := Draw(7, 3, RoleFit, pop, 20)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 20 || !slices.IsSorted(ids) {
		t.Fatalf("drew %v, want 20 sorted ids", ids)
	}
	rev := slices.Clone(pop)
	slices.Reverse(rev)
	again, th2, _ := Draw(7, 3, RoleFit, rev, 20)
	if !slices.Equal(ids, again) || th != th2 {
		t.Errorf("the population's order changed the draw: %v vs %v", ids, again)
	}
	m := &fdxv1.GlobalModel{Round: 3, Sampling: &fdxv1.Sampling{Seed: 7, FitThreshold: th, FitCount: 20}}
	var members []string
	for _, id := range pop {
		if Sampled(m, RoleFit, id) {
			members = append(members, id)
		}
		if Sampled(m, RoleEvaluate, id) {
			t.Errorf("client %s evaluates in a record without an evaluation sample", id)
		}
	}
	slices.Sort(members)
	if !slices.Equal(members, ids) {
		t.Errorf("the threshold selects %v, the draw %v", members, ids)
	}
	for _, other := range []struct {
		seed  uint64
		round int64
		role  string
	}{{8, 3, RoleFit}, {7, 4, RoleFit}, {7, 3, RoleEvaluate}} {
		o, _, _ := Draw(other.seed, other.round, other.role, pop, 20)
		if slices.Equal(o, ids) {
			t.Errorf("%+v draws the same sample as seed 7 round 3 fit", other)
		}
	}
	// Over many rounds every client is drawn about k/N of the time.
	counts := map[string]int{}
	const rounds = 500
	for r := range int64(rounds) {
		s, _, _ := Draw(1, r+1, RoleFit, pop, 20)
		for _, id := range s {
			counts[id]++
		}
	}
	for _, id := range pop {
		// Binomial(500, 0.1): mean 50, sd 6.7; 6 sd either side.
		if c := counts[id]; c < 10 || c > 90 {
			t.Errorf("client %s drawn %d times in %d rounds, want about 50", id, c, rounds)
		}
	}
}

func TestDrawErrors(t *testing.T) {
	if _, _, err := Draw(1, 1, RoleFit, population(5), 0); err == nil {
		t.Error("a sample of 0 drawn")
	}
	if _, _, err := Draw(1, 1, RoleFit, population(5), 6); err == nil {
		t.Error("a sample larger than the population drawn")
	}
	if _, _, err := Draw(1, 1, RoleFit, []string{"a", "b", "a"}, 2); err == nil {
		t.Error("a population with a duplicate accepted")
	}
	all, th, err := Draw(1, 1, RoleFit, population(5), 5)
	if err != nil || len(all) != 5 {
		t.Errorf("everyone: %v, %v", all, err)
	}
	if th == math.MaxUint64 {
		t.Log("threshold happens to be the largest hash") // legal, just unlikely
	}
}

func TestSampledWithoutSampling(t *testing.T) {
	m := &fdxv1.GlobalModel{Round: 2}
	if !Sampled(m, RoleFit, "x") || Sampled(m, RoleEvaluate, "x") || Sampled(m, "other", "x") {
		t.Error("without a Sampling every client trains and none evaluates")
	}
	empty := &fdxv1.GlobalModel{Round: 2, Sampling: &fdxv1.Sampling{FitThreshold: math.MaxUint64}}
	if Sampled(empty, RoleFit, "x") {
		t.Error("a fit count of 0 samples a client")
	}
}
