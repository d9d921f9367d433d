package dataset

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/big"
	"slices"
	"strings"
	"sync"
	"testing"
)

// loadMNISTTrain decodes MNIST once for all tests of the package, which would
// otherwise spend most of their time in gzip. Tests must not modify it.
var loadMNISTTrain = sync.OnceValues(func() (*Set, error) {
	return NewCatalog().Load(NameMNIST, SplitTrain)
})

func mnistTrainLabels(tb testing.TB) []uint8 {
	tb.Helper()
	s, err := loadMNISTTrain()
	if err != nil {
		tb.Fatal(err)
	}
	return s.Labels
}

// checkPartition fails the test unless parts is numParts non-empty, strictly
// ascending index lists that together hold each of 0..n-1 exactly once.
func checkPartition(t *testing.T, parts [][]int, n, numParts int) {
	t.Helper()
	if len(parts) != numParts {
		t.Fatalf("got %d partitions, want %d", len(parts), numParts)
	}
	seen := make([]bool, n)
	total := 0
	for p, part := range parts {
		if len(part) == 0 {
			t.Errorf("partition %d is empty", p)
		}
		for j, i := range part {
			if i < 0 || i >= n {
				t.Fatalf("partition %d holds index %d, out of range [0,%d)", p, i, n)
			}
			if j > 0 && part[j-1] >= i {
				t.Fatalf("partition %d is not strictly ascending at position %d: %d then %d", p, j, part[j-1], i)
			}
			if seen[i] {
				t.Fatalf("index %d appears in more than one partition", i)
			}
			seen[i] = true
		}
		total += len(part)
	}
	if total != n {
		t.Errorf("partitions hold %d indices, want all %d", total, n)
	}
}

func TestPartitionDisjointAndComplete(t *testing.T) {
	mnist := mnistTrainLabels(t)
	small := Synthetic(1001, 1, 10, 5).Labels
	for _, spec := range []PartitionSpec{
		{Scheme: SchemeIID, NumPartitions: 1},
		{Scheme: SchemeIID, NumPartitions: 7},
		{Scheme: SchemeIID, NumPartitions: 100},
		{Scheme: SchemeShards, NumPartitions: 1},
		{Scheme: SchemeShards, NumPartitions: 7, ShardsPerClient: 3},
		{Scheme: SchemeShards, NumPartitions: 100},
		{Scheme: SchemeDirichlet, NumPartitions: 1, Alpha: 0.5},
		{Scheme: SchemeDirichlet, NumPartitions: 7, Alpha: 0.1},
		{Scheme: SchemeDirichlet, NumPartitions: 100, Alpha: 0.5},
		{Scheme: SchemeDirichlet, NumPartitions: 100, Alpha: 1e-300},
		{Scheme: SchemeDirichlet, NumPartitions: 100, Alpha: 1e6},
	} {
		for _, labels := range [][]uint8{mnist, small} {
			t.Run(fmt.Sprintf("%+v/n=%d", spec, len(labels)), func(t *testing.T) {
				parts, err := Partition(labels, 10, spec)
				if err != nil {
					t.Fatal(err)
				}
				checkPartition(t, parts, len(labels), spec.NumPartitions)
			})
		}
	}
}

// TestPartitionAsManyPartsAsExamples covers the tightest legal case.
func TestPartitionAsManyPartsAsExamples(t *testing.T) {
	labels := []uint8{0, 0, 0, 1, 1, 2}
	for _, scheme := range []string{SchemeIID, SchemeDirichlet} {
		parts, err := Partition(labels, 3, PartitionSpec{Scheme: scheme, NumPartitions: 6, Alpha: 0.1})
		if err != nil {
			t.Fatalf("%s: %v", scheme, err)
		}
		checkPartition(t, parts, 6, 6)
	}
	parts, err := Partition(labels, 3, PartitionSpec{Scheme: SchemeShards, NumPartitions: 3})
	if err != nil {
		t.Fatal(err)
	}
	checkPartition(t, parts, 6, 3)
}

func TestPartitionDeterministic(t *testing.T) {
	labels := mnistTrainLabels(t)
	for _, spec := range []PartitionSpec{
		{Scheme: SchemeIID, NumPartitions: 10, Seed: 1},
		{Scheme: SchemeShards, NumPartitions: 10, Seed: 1},
		{Scheme: SchemeDirichlet, NumPartitions: 10, Seed: 1, Alpha: 0.3},
	} {
		t.Run(spec.Scheme, func(t *testing.T) {
			a, err := Partition(labels, 10, spec)
			if err != nil {
				t.Fatal(err)
			}
			b, err := Partition(labels, 10, spec)
			if err != nil {
				t.Fatal(err)
			}
			if !equalParts(a, b) {
				t.Error("the same spec gives two different partitions")
			}
			spec.Seed = 2
			c, err := Partition(labels, 10, spec)
			if err != nil {
				t.Fatal(err)
			}
			if equalParts(a, c) {
				t.Error("seeds 1 and 2 give the same partition")
			}
		})
	}
}

func equalParts(a, b [][]int) bool {
	return slices.EqualFunc(a, b, func(x, y []int) bool { return slices.Equal(x, y) })
}

// fingerprint hashes a partition, so that a test can pin a large one.
func fingerprint(parts [][]int) uint64 {
	h := fnv.New64a()
	for _, part := range parts {
		fmt.Fprintln(h, part)
	}
	return h.Sum64()
}

// TestPartitionGolden pins the partitions of MNIST. Every client of a job
// recomputes its shard independently, possibly from a different build, so a
// change to any scheme (or to the random numbers it draws) must be
// deliberate: it would make old and new clients train on overlapping data.
func TestPartitionGolden(t *testing.T) {
	labels := mnistTrainLabels(t)
	for _, tc := range []struct {
		spec  PartitionSpec
		first []int // The first indices of partition 0.
		want  uint64
	}{
		{PartitionSpec{Scheme: SchemeIID, NumPartitions: 100, Seed: 7}, []int{177, 530, 640, 693, 878}, 0xd160ada26a5c2df7},
		{PartitionSpec{Scheme: SchemeShards, NumPartitions: 100, Seed: 7}, []int{587, 593, 604, 609, 618}, 0xa5b8969bb8e841ff},
		{PartitionSpec{Scheme: SchemeDirichlet, NumPartitions: 100, Seed: 7, Alpha: 0.5}, []int{60, 385, 387, 396, 400}, 0xe22fe7f73ae6fd1f},
	} {
		parts, err := Partition(labels, 10, tc.spec)
		if err != nil {
			t.Fatal(err)
		}
		got, first := fingerprint(parts), parts[0][:5]
		if got != tc.want || !slices.Equal(first, tc.first) {
			t.Errorf("Partition(MNIST, %+v): fingerprint %#x, partition 0 starts %v; want %#x, %v",
				tc.spec, got, first, tc.want, tc.first)
		}
	}
}

func TestPartitionIIDBalanced(t *testing.T) {
	labels := mnistTrainLabels(t)
	parts, err := Partition(labels, 10, PartitionSpec{Scheme: SchemeIID, NumPartitions: 7})
	if err != nil {
		t.Fatal(err)
	}
	for p, part := range parts {
		// 60000 = 7*8571 + 3.
		if want := 8571 + btoi(p < 3); len(part) != want {
			t.Errorf("partition %d has %d examples, want %d", p, len(part), want)
		}
		if frac := maxClassFraction(labels, part, 10); frac > 0.15 {
			t.Errorf("partition %d: largest class is %.2f of it, want about 0.11", p, frac)
		}
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// maxClassFraction returns the share of part's most common label.
func maxClassFraction(labels []uint8, part []int, classes int) float64 {
	counts := make([]int, classes)
	for _, i := range part {
		counts[labels[i]]++
	}
	return float64(slices.Max(counts)) / float64(len(part))
}

func distinctLabels(labels []uint8, part []int) int {
	var seen [256]bool
	n := 0
	for _, i := range part {
		if !seen[labels[i]] {
			seen[labels[i]] = true
			n++
		}
	}
	return n
}

func TestPartitionShardsLabelSkew(t *testing.T) {
	// 10 classes of 120 examples, in a scrambled order: shards of 60, 40, 30
	// or 20 examples never straddle two labels.
	labels := make([]uint8, 1200)
	for i := range labels {
		labels[i] = uint8(i % 10)
	}
	shuffle(newRNG(99, 0), labels)
	for _, tc := range []struct{ parts, perClient int }{{10, 2}, {15, 2}, {10, 3}, {20, 3}, {12, 5}} {
		spec := PartitionSpec{Scheme: SchemeShards, NumPartitions: tc.parts, ShardsPerClient: tc.perClient, Seed: 3}
		parts, err := Partition(labels, 10, spec)
		if err != nil {
			t.Fatal(err)
		}
		checkPartition(t, parts, len(labels), tc.parts)
		for p, part := range parts {
			if d := distinctLabels(labels, part); d > tc.perClient {
				t.Errorf("%+v: partition %d has %d distinct labels, want <= %d", spec, p, d, tc.perClient)
			}
			if want := len(labels) / tc.parts; len(part) != want {
				t.Errorf("%+v: partition %d has %d examples, want %d", spec, p, len(part), want)
			}
		}
	}

	// MNIST, as in the FedAvg paper: 200 shards of 300. A shard may straddle
	// two labels, so a client sees at most 4, and most see 2.
	mnist := mnistTrainLabels(t)
	spec := PartitionSpec{Scheme: SchemeShards, NumPartitions: 100, Seed: 1}
	parts, err := Partition(mnist, 10, spec)
	if err != nil {
		t.Fatal(err)
	}
	atMostTwo := 0
	for p, part := range parts {
		d := distinctLabels(mnist, part)
		if d > 4 || len(part) != 600 {
			t.Errorf("partition %d: %d examples of %d labels, want 600 of at most 4", p, len(part), d)
		}
		if d <= 2 {
			atMostTwo++
		}
	}
	if atMostTwo < 80 {
		t.Errorf("%d of 100 partitions have at most 2 labels, want most", atMostTwo)
	}
	spec.ShardsPerClient = DefaultShardsPerClient
	explicit, err := Partition(mnist, 10, spec)
	if err != nil {
		t.Fatal(err)
	}
	if !equalParts(parts, explicit) {
		t.Errorf("ShardsPerClient 0 and %d give different partitions", DefaultShardsPerClient)
	}
}

func TestPartitionDirichletSkew(t *testing.T) {
	labels := mnistTrainLabels(t)
	meanMaxFraction := func(alpha float64) float64 {
		parts, err := Partition(labels, 10, PartitionSpec{Scheme: SchemeDirichlet, NumPartitions: 20, Seed: 11, Alpha: alpha})
		if err != nil {
			t.Fatal(err)
		}
		var sum float64
		for _, part := range parts {
			sum += maxClassFraction(labels, part, 10)
		}
		return sum / float64(len(parts))
	}
	skewed, mild, uniform := meanMaxFraction(0.05), meanMaxFraction(1), meanMaxFraction(1000)
	t.Logf("mean share of a partition's largest class: alpha 0.05: %.3f, 1: %.3f, 1000: %.3f", skewed, mild, uniform)
	if !(skewed > mild && mild > uniform) {
		t.Errorf("largest-class share does not fall as alpha grows: %.3f, %.3f, %.3f", skewed, mild, uniform)
	}
	if skewed < 0.7 {
		t.Errorf("alpha 0.05: largest class is %.3f of a partition on average, want > 0.7", skewed)
	}
	if uniform > 0.13 {
		t.Errorf("alpha 1000: largest class is %.3f of a partition on average, want about 0.11", uniform)
	}
}

func TestPartitionErrors(t *testing.T) {
	labels := []uint8{0, 1, 2, 0, 1, 2}
	for _, tc := range []struct {
		name    string
		labels  []uint8
		classes int
		spec    PartitionSpec
		want    string
	}{
		{"invalid spec", labels, 3, PartitionSpec{Scheme: "random", NumPartitions: 2}, `unknown scheme "random"`},
		{"more partitions than examples", labels, 3, PartitionSpec{Scheme: SchemeIID, NumPartitions: 7}, "7 partitions for 6 examples"},
		{"no examples", nil, 3, PartitionSpec{Scheme: SchemeDirichlet, NumPartitions: 1, Alpha: 1}, "1 partitions for 0 examples"},
		{"more shards than examples", labels, 3, PartitionSpec{Scheme: SchemeShards, NumPartitions: 4}, "8 shards for 6 examples"},
		{"label out of range", labels, 2, PartitionSpec{Scheme: SchemeIID, NumPartitions: 2}, "label 2 of example 2"},
		{"no classes", labels, 0, PartitionSpec{Scheme: SchemeIID, NumPartitions: 2}, "0 classes"},
		{"too many classes", labels, 257, PartitionSpec{Scheme: SchemeIID, NumPartitions: 2}, "257 classes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parts, err := Partition(tc.labels, tc.classes, tc.spec)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Partition = %v, %v, want error containing %q", parts, err, tc.want)
			}
		})
	}
}

func TestPartitionSpecValidate(t *testing.T) {
	for _, tc := range []struct {
		spec PartitionSpec
		want string // Empty for a valid spec.
	}{
		{PartitionSpec{Scheme: SchemeIID, NumPartitions: 1}, ""},
		{PartitionSpec{Scheme: SchemeIID, NumPartitions: 10, Alpha: -1, ShardsPerClient: -1}, ""},
		{PartitionSpec{Scheme: SchemeShards, NumPartitions: 100}, ""},
		{PartitionSpec{Scheme: SchemeShards, NumPartitions: 100, ShardsPerClient: 5}, ""},
		{PartitionSpec{Scheme: SchemeDirichlet, NumPartitions: 10, Alpha: 0.1}, ""},
		{PartitionSpec{Scheme: SchemeIID, NumPartitions: 0}, "num partitions 0"},
		{PartitionSpec{Scheme: SchemeDirichlet, NumPartitions: -3, Alpha: 1}, "num partitions -3"},
		{PartitionSpec{Scheme: "", NumPartitions: 10}, "scheme is empty"},
		{PartitionSpec{Scheme: "IID", NumPartitions: 10}, `unknown scheme "IID"`},
		{PartitionSpec{Scheme: SchemeShards, NumPartitions: 10, ShardsPerClient: -1}, "shards per client -1"},
		{PartitionSpec{Scheme: SchemeShards, NumPartitions: math.MaxInt, ShardsPerClient: 2}, "overflows"},
		{PartitionSpec{Scheme: SchemeDirichlet, NumPartitions: 10}, "alpha 0"},
		{PartitionSpec{Scheme: SchemeDirichlet, NumPartitions: 10, Alpha: -0.5}, "alpha -0.5"},
		{PartitionSpec{Scheme: SchemeDirichlet, NumPartitions: 10, Alpha: math.NaN()}, "alpha NaN"},
		{PartitionSpec{Scheme: SchemeDirichlet, NumPartitions: 10, Alpha: math.Inf(1)}, "alpha +Inf"},
	} {
		err := tc.spec.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v.Validate() = %v, want nil", tc.spec, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%+v.Validate() = %v, want error containing %q", tc.spec, err, tc.want)
		}
	}
}

func TestShardIndex(t *testing.T) {
	fnvMod := func(s string, n int) int {
		h := fnv.New64a()
		h.Write([]byte(s))
		return int(h.Sum64() % uint64(n))
	}
	huge := "123456789012345678901234567890"
	hugeMod, _ := new(big.Int).SetString(huge, 10)
	hugeMod.Mod(hugeMod, big.NewInt(97))
	for _, tc := range []struct {
		id   string
		n    int
		want int
	}{
		{"0", 10, 0},
		{"7", 10, 7},
		{"17", 10, 7},
		{"007", 10, 7},
		{"3", 1, 0},
		{"18446744073709551615", 10, 5}, // MaxUint64.
		{"18446744073709551616", 10, 6}, // MaxUint64 + 1.
		{huge, 97, int(hugeMod.Int64())},
		{"9", math.MaxInt, 9},
		{"client-a", 10, fnvMod("client-a", 10)},
		{"-1", 10, fnvMod("-1", 10)},
		{"+1", 10, fnvMod("+1", 10)},
		{" 1", 10, fnvMod(" 1", 10)},
		{"1.0", 10, fnvMod("1.0", 10)},
		{"", 10, fnvMod("", 10)},
		{"٣", 10, fnvMod("٣", 10)}, // A non-ASCII digit.
	} {
		if got := ShardIndex(tc.id, tc.n); got != tc.want {
			t.Errorf("ShardIndex(%q, %d) = %d, want %d", tc.id, tc.n, got, tc.want)
		}
	}
	// Named clients land in range and spread over the partitions.
	hit := make([]int, 10)
	for i := range 1000 {
		p := ShardIndex(fmt.Sprintf("device-%d", i), 10)
		if p < 0 || p >= 10 {
			t.Fatalf("ShardIndex(device-%d, 10) = %d, out of range", i, p)
		}
		hit[p]++
	}
	for p, h := range hit {
		if h < 50 {
			t.Errorf("partition %d got %d of 1000 named clients, want about 100", p, h)
		}
	}
}

func TestShardIndexPanicsOnNonPositiveN(t *testing.T) {
	for _, n := range []int{0, -1} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("ShardIndex(\"1\", %d) did not panic", n)
				}
			}()
			ShardIndex("1", n)
		}()
	}
}

func TestClientShard(t *testing.T) {
	set := Synthetic(103, 4, 10, 8)
	spec := PartitionSpec{Scheme: SchemeDirichlet, NumPartitions: 5, Seed: 2, Alpha: 1}
	parts, err := Partition(set.Labels, set.Classes, spec)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for p := range 5 {
		shard, err := ClientShard(set, spec, fmt.Sprint(p), 0)
		if err != nil {
			t.Fatal(err)
		}
		want, err := set.Subset(parts[p])
		if err != nil {
			t.Fatal(err)
		}
		if !equalSets(shard, want) {
			t.Errorf("ClientShard(%q) is not the subset of partition %d", fmt.Sprint(p), p)
		}
		total += shard.Len()
	}
	if total != set.Len() {
		t.Errorf("clients 0..4 hold %d examples together, want %d", total, set.Len())
	}

	// Client 7 maps to partition 2; the cap keeps its first examples.
	capped, err := ClientShard(set, spec, "7", 3)
	if err != nil {
		t.Fatal(err)
	}
	want, err := set.Subset(parts[2][:3])
	if err != nil {
		t.Fatal(err)
	}
	if !equalSets(capped, want) {
		t.Errorf("ClientShard(7, max 3) = labels %v, want %v", capped.Labels, want.Labels)
	}
	capped.Pixels[0]++
	if set.Pixels[parts[2][0]*set.Dim] == capped.Pixels[0] {
		t.Error("ClientShard shares memory with the set")
	}
	if big, err := ClientShard(set, spec, "2", 1000); err != nil || big.Len() != len(parts[2]) {
		t.Errorf("ClientShard(2, max 1000) = %d examples, %v, want the whole partition of %d", big.Len(), err, len(parts[2]))
	}

	for _, tc := range []struct {
		name string
		set  *Set
		spec PartitionSpec
		want string
	}{
		{"nil set", nil, spec, "set is nil"},
		{"short pixels", &Set{Pixels: set.Pixels[:10], Labels: set.Labels, Dim: 4, Classes: 10}, spec, "pixels"},
		{"bad label", &Set{Pixels: make([]uint8, 8), Labels: []uint8{1, 4}, Dim: 4, Classes: 3}, spec, "label 4"},
		{"bad spec", set, PartitionSpec{Scheme: SchemeDirichlet, NumPartitions: 5}, "alpha"},
	} {
		if _, err := ClientShard(tc.set, tc.spec, "1", 0); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: ClientShard = %v, want error containing %q", tc.name, err, tc.want)
		}
	}
}

func equalSets(a, b *Set) bool {
	return a.Dim == b.Dim && a.Classes == b.Classes &&
		slices.Equal(a.Labels, b.Labels) && slices.Equal(a.Pixels, b.Pixels)
}

func TestCatalogClientShard(t *testing.T) {
	c := NewCatalog()
	mnist, err := c.Load(NameMNIST, SplitTrain)
	if err != nil {
		t.Fatal(err)
	}
	spec := PartitionSpec{Scheme: SchemeShards, NumPartitions: 100, Seed: 4}
	want, err := ClientShard(mnist, spec, "42", 0)
	if err != nil {
		t.Fatal(err)
	}
	// Concurrent requests share one cached partition and agree with the
	// uncached path; an explicit default ShardsPerClient hits the same entry.
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			s := spec
			if i%2 == 1 {
				s.ShardsPerClient = DefaultShardsPerClient
			}
			got, err := c.ClientShard(NameMNIST, SplitTrain, s, "42", 0)
			if err != nil {
				t.Error(err)
				return
			}
			if !equalSets(got, want) {
				t.Errorf("request %d: Catalog.ClientShard differs from ClientShard", i)
			}
		})
	}
	wg.Wait()
	// ShardSize counts what ClientShard copies, capped or not.
	for _, id := range []string{"42", "7", "client-x"} {
		for _, maxEx := range []int{0, 3} {
			shard, err := c.ClientShard(NameMNIST, SplitTrain, spec, id, maxEx)
			if err != nil {
				t.Fatal(err)
			}
			n, err := c.ShardSize(NameMNIST, SplitTrain, spec, id, maxEx)
			if err != nil || n != shard.Len() {
				t.Errorf("ShardSize(%q, max %d) = %d, %v; ClientShard has %d examples", id, maxEx, n, err, shard.Len())
			}
		}
	}
	c.mu.Lock()
	entries := len(c.parts)
	c.mu.Unlock()
	if entries != 1 {
		t.Errorf("cache holds %d partitions after requests for one spec, want 1", entries)
	}

	// Many distinct specs stay within the cache bound and still give
	// correct shards.
	for seed := range uint64(2 * maxCachedPartitions) {
		s := PartitionSpec{Scheme: SchemeIID, NumPartitions: 10, Seed: seed}
		got, err := c.ClientShard(NameSynthetic, SplitTrain, s, "3", 50)
		if err != nil {
			t.Fatal(err)
		}
		train, err := c.Load(NameSynthetic, SplitTrain)
		if err != nil {
			t.Fatal(err)
		}
		direct, err := ClientShard(train, s, "3", 50)
		if err != nil {
			t.Fatal(err)
		}
		if !equalSets(got, direct) || got.Len() != 50 {
			t.Errorf("seed %d: cached shard of %d examples differs from direct one of %d", seed, got.Len(), direct.Len())
		}
	}
	c.mu.Lock()
	entries, order := len(c.parts), len(c.order)
	c.mu.Unlock()
	if entries != maxCachedPartitions || order != maxCachedPartitions {
		t.Errorf("cache holds %d entries (%d in order), want %d", entries, order, maxCachedPartitions)
	}

	for _, tc := range []struct {
		name, split string
		spec        PartitionSpec
		want        string
	}{
		{"emnist", SplitTrain, spec, "unknown dataset"},
		{NameMNIST, SplitTrain, PartitionSpec{Scheme: SchemeIID}, "num partitions 0"},
		{NameSynthetic, SplitTest, PartitionSpec{Scheme: SchemeIID, NumPartitions: 1001}, "1001 partitions for 1000 examples"},
	} {
		if _, err := c.ClientShard(tc.name, tc.split, tc.spec, "1", 0); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ClientShard(%q, %q, %+v) = %v, want error containing %q", tc.name, tc.split, tc.spec, err, tc.want)
		}
	}
}

func BenchmarkPartitionMNIST(b *testing.B) {
	labels := mnistTrainLabels(b)
	for _, spec := range []PartitionSpec{
		{Scheme: SchemeIID, NumPartitions: 100},
		{Scheme: SchemeShards, NumPartitions: 100},
		{Scheme: SchemeDirichlet, NumPartitions: 100, Alpha: 0.5},
		{Scheme: SchemeDirichlet, NumPartitions: 1000, Alpha: 0.1},
	} {
		b.Run(fmt.Sprintf("%s/P=%d", spec.Scheme, spec.NumPartitions), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Partition(labels, 10, spec); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkClientShardMNIST(b *testing.B) {
	c := NewCatalog()
	spec := PartitionSpec{Scheme: SchemeDirichlet, NumPartitions: 100, Alpha: 0.5}
	b.Run("uncached", func(b *testing.B) {
		set, err := c.Load(NameMNIST, SplitTrain)
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if _, err := ClientShard(set, spec, "17", 0); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("catalog", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.ClientShard(NameMNIST, SplitTrain, spec, "17", 0); err != nil {
				b.Fatal(err)
			}
		}
	})
}
