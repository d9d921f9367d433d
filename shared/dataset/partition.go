package dataset

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"math/bits"
	"slices"
)

// Partition schemes.
const (
	// SchemeIID deals a random permutation of the examples into
	// NumPartitions parts whose sizes differ by at most one.
	SchemeIID = "iid"
	// SchemeShards is the pathological non-IID split of the FedAvg paper
	// (McMahan et al. 2017): sort the examples by label, cut them into
	// NumPartitions*ShardsPerClient equal shards and give every partition
	// ShardsPerClient random shards, so it sees only a few labels.
	SchemeShards = "shards"
	// SchemeDirichlet splits every class among the partitions with
	// proportions drawn from a symmetric Dirichlet(Alpha) distribution (Hsu
	// et al. 2019): small Alpha gives each partition few classes, large
	// Alpha approaches IID. Partition sizes vary.
	SchemeDirichlet = "dirichlet"
)

// DefaultShardsPerClient is the ShardsPerClient of SchemeShards when the spec
// leaves it zero: the FedAvg paper's 2.
const DefaultShardsPerClient = 2

// PartitionSpec says how a data set is split among the clients of a job. It
// mirrors fdx.v1.PartitionSpec: every client derives its own shard from the
// job's spec and its client id, so no data assignment travels over the wire.
type PartitionSpec struct {
	// Scheme is SchemeIID, SchemeShards or SchemeDirichlet.
	Scheme string
	// NumPartitions is the number of parts; clients map onto them with
	// ShardIndex.
	NumPartitions int
	// Seed makes the split reproducible; every client of a job must use the
	// same one.
	Seed uint64
	// Alpha is the Dirichlet concentration for SchemeDirichlet; ignored
	// otherwise.
	Alpha float64
	// ShardsPerClient is the number of label-sorted shards per partition for
	// SchemeShards (0 means DefaultShardsPerClient); ignored otherwise.
	ShardsPerClient int
}

// Validate checks the spec on its own; Partition additionally checks it
// against the data (for example that there are at least as many examples as
// partitions).
func (p PartitionSpec) Validate() error {
	if p.NumPartitions < 1 {
		return fmt.Errorf("partition spec: num partitions %d, want >= 1", p.NumPartitions)
	}
	switch p.Scheme {
	case SchemeIID:
	case SchemeShards:
		if p.ShardsPerClient < 0 {
			return fmt.Errorf("partition spec: shards per client %d, want >= 1 (or 0 for the default %d)",
				p.ShardsPerClient, DefaultShardsPerClient)
		}
		if p.shardsPerClient() > math.MaxInt/p.NumPartitions {
			return fmt.Errorf("partition spec: %d partitions x %d shards per client overflows int",
				p.NumPartitions, p.shardsPerClient())
		}
	case SchemeDirichlet:
		if !(p.Alpha > 0) || math.IsInf(p.Alpha, 1) {
			return fmt.Errorf("partition spec: dirichlet alpha %v, want finite and > 0", p.Alpha)
		}
	case "":
		return fmt.Errorf("partition spec: scheme is empty, want %q, %q or %q", SchemeIID, SchemeShards, SchemeDirichlet)
	default:
		return fmt.Errorf("partition spec: unknown scheme %q, want %q, %q or %q",
			p.Scheme, SchemeIID, SchemeShards, SchemeDirichlet)
	}
	return nil
}

func (p PartitionSpec) shardsPerClient() int {
	if p.ShardsPerClient == 0 {
		return DefaultShardsPerClient
	}
	return p.ShardsPerClient
}

// canonical returns the spec with defaults filled in and the fields its scheme
// ignores zeroed, so that specs meaning the same split compare equal.
func (p PartitionSpec) canonical() PartitionSpec {
	c := PartitionSpec{Scheme: p.Scheme, NumPartitions: p.NumPartitions, Seed: p.Seed}
	switch p.Scheme {
	case SchemeShards:
		c.ShardsPerClient = p.shardsPerClient()
	case SchemeDirichlet:
		c.Alpha = p.Alpha
	}
	return c
}

// Partition splits the examples with the given labels (each below classes)
// into spec.NumPartitions lists of example indices. Every index appears in
// exactly one list, each list is sorted ascending and non-empty, and the
// result is a pure function of the arguments, identical on every platform:
// each client of a federation computes it independently and must agree with
// the others.
//
// It takes milliseconds for MNIST's 60000 examples, so a stateless Cloud
// Function can afford to recompute it per request.
func Partition(labels []uint8, classes int, spec PartitionSpec) ([][]int, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if classes < 1 || classes > maxClasses {
		return nil, fmt.Errorf("partition: %d classes, want 1..%d", classes, maxClasses)
	}
	if err := checkLabels(labels, classes); err != nil {
		return nil, fmt.Errorf("partition: %w", err)
	}
	n := len(labels)
	if n < spec.NumPartitions {
		return nil, fmt.Errorf("partition: %d partitions for %d examples; every partition needs one", spec.NumPartitions, n)
	}
	switch spec.Scheme {
	case SchemeIID:
		return partitionIID(n, spec), nil
	case SchemeShards:
		return partitionShards(labels, classes, spec)
	case SchemeDirichlet:
		return partitionDirichlet(labels, classes, spec), nil
	}
	// Unreachable: Validate accepts only the schemes above.
	return nil, fmt.Errorf("partition: unknown scheme %q", spec.Scheme)
}

// partitionIID deals a random permutation of 0..n-1 into contiguous runs; the
// first n mod P partitions get one extra example.
func partitionIID(n int, spec PartitionSpec) [][]int {
	perm := make([]int, n)
	for i := range perm {
		perm[i] = i
	}
	shuffle(newRNG(spec.Seed, streamIID), perm)
	parts := make([][]int, spec.NumPartitions)
	base, extra := n/spec.NumPartitions, n%spec.NumPartitions
	start := 0
	for p := range parts {
		size := base
		if p < extra {
			size++
		}
		// The full slice expression keeps an append to one part from
		// overwriting the next.
		parts[p] = perm[start : start+size : start+size]
		slices.Sort(parts[p])
		start += size
	}
	return parts
}

// partitionShards implements SchemeShards. The label sort is stable, so the
// shards, and with them the split, do not depend on any sort algorithm.
// Shard boundaries need not coincide with label boundaries, so a shard can
// hold the tail of one label and the head of the next.
func partitionShards(labels []uint8, classes int, spec PartitionSpec) ([][]int, error) {
	n := len(labels)
	k := spec.shardsPerClient()
	numShards := spec.NumPartitions * k
	if numShards > n {
		return nil, fmt.Errorf("partition: %d partitions x %d shards per client = %d shards for %d examples; every shard needs one",
			spec.NumPartitions, k, numShards, n)
	}
	byLabel := sortByLabel(labels, classes)
	shards := make([]int, numShards)
	for i := range shards {
		shards[i] = i
	}
	shuffle(newRNG(spec.Seed, streamShards), shards)

	parts := make([][]int, spec.NumPartitions)
	out := make([]int, 0, n)
	for p := range parts {
		start := len(out)
		for _, s := range shards[p*k : (p+1)*k] {
			out = append(out, byLabel[shardStart(s, n, numShards):shardStart(s+1, n, numShards)]...)
		}
		parts[p] = out[start:len(out):len(out)]
		slices.Sort(parts[p])
	}
	return parts, nil
}

// shardStart returns where shard s of numShards <= n equal shards of n
// examples begins; shard sizes differ by at most one. It computes in 64 bits
// because s*n can overflow a 32-bit int.
func shardStart(s, n, numShards int) int {
	return int(int64(s) * int64(n) / int64(numShards))
}

// sortByLabel returns 0..len(labels)-1 stably sorted by label (counting sort).
func sortByLabel(labels []uint8, classes int) []int {
	offsets := make([]int, classes+1)
	for _, l := range labels {
		offsets[int(l)+1]++
	}
	for c := range classes {
		offsets[c+1] += offsets[c]
	}
	out := make([]int, len(labels))
	for i, l := range labels {
		out[offsets[l]] = i
		offsets[l]++
	}
	return out
}

// partitionDirichlet implements SchemeDirichlet. For every class, in label
// order, it shuffles the class's examples and cuts them at the cumulative
// sums of proportions drawn from Dirichlet(Alpha, ..., Alpha). A small alpha
// can leave a partition with no example at all; since a client with an empty
// shard cannot train, each such partition then takes one example from the
// partition that is largest at that moment (lowest index on ties). That
// changes the split only where it would otherwise be unusable.
func partitionDirichlet(labels []uint8, classes int, spec PartitionSpec) [][]int {
	r := newRNG(spec.Seed, streamDirichlet)
	numParts := spec.NumPartitions
	byLabel := sortByLabel(labels, classes)
	parts := make([][]int, numParts)
	logs := make([]float64, numParts)
	weights := make([]float64, numParts)
	start := 0
	for c := range classes {
		end := start
		for end < len(byLabel) && int(labels[byLabel[end]]) == c {
			end++
		}
		members := byLabel[start:end]
		start = end
		if len(members) == 0 {
			continue
		}
		shuffle(r, members)
		dirichletWeights(r, spec.Alpha, logs, weights)
		var total, cum float64
		for _, w := range weights {
			total += w
		}
		prev := 0
		for p, w := range weights {
			cum += w
			cut := len(members)
			if p < numParts-1 {
				cut = min(max(int(float64(len(members))*(cum/total)), prev), len(members))
			}
			parts[p] = append(parts[p], members[prev:cut]...)
			prev = cut
		}
	}
	for p := range parts {
		if len(parts[p]) > 0 {
			continue
		}
		largest := 0
		for q := range parts {
			if len(parts[q]) > len(parts[largest]) {
				largest = q
			}
		}
		last := len(parts[largest]) - 1
		parts[p] = append(parts[p], parts[largest][last])
		parts[largest] = parts[largest][:last]
	}
	for _, part := range parts {
		slices.Sort(part)
	}
	return parts
}

// dirichletWeights fills weights with values proportional to a draw from the
// symmetric Dirichlet(alpha) distribution, the largest being 1: the
// normalised Gamma(alpha) variates X_i.
//
// It works with s_i = log X_i, scaled by alpha when alpha < 1. There X_i =
// Y_i * U_i^(1/alpha) with Y_i ~ Gamma(alpha+1) (Marsaglia and Tsang 2000,
// section 6), so alpha*log X_i = alpha*log Y_i + log U_i stays finite for
// any alpha, while X_i itself underflows to 0 for alpha around 0.01 and
// log X_i overflows to -Inf for alpha below about 1e-307. The ratios
// X_i/X_max = exp((s_i - s_max)/alpha) are then always well defined.
func dirichletWeights(r *rng, alpha float64, s, weights []float64) {
	scale := 1.0
	if alpha < 1 {
		scale = alpha
	}
	maxS := math.Inf(-1)
	for i := range s {
		if alpha < 1 {
			logY := r.logGamma(alpha + 1)
			logU := math.Log(r.float64Open())
			s[i] = float64(alpha*logY) + logU
		} else {
			s[i] = r.logGamma(alpha)
		}
		maxS = max(maxS, s[i])
	}
	for i := range s {
		weights[i] = math.Exp((s[i] - maxS) / scale)
	}
}

// ShardIndex maps a client id onto one of n partitions. An id made only of
// ASCII digits is read as the decimal number k (of any length) and maps to
// k mod n, so clients "0" to "n-1" get distinct partitions; any other id,
// including "+1", "-1", " 1" and "", maps to its FNV-1a 64-bit hash mod n,
// which spreads named clients evenly but may put two on one partition.
// ShardIndex panics if n < 1, like a division by zero would.
func ShardIndex(clientID string, n int) int {
	if n < 1 {
		panic(fmt.Sprintf("dataset.ShardIndex: n = %d, want >= 1", n))
	}
	mod := uint64(n)
	if isDecimal(clientID) {
		// Horner's rule mod n, with a 128-bit intermediate so that neither
		// long ids nor large n overflow.
		var rem uint64
		for i := range len(clientID) {
			hi, lo := bits.Mul64(rem, 10)
			lo, carry := bits.Add64(lo, uint64(clientID[i]-'0'), 0)
			rem = bits.Rem64(hi+carry, lo, mod)
		}
		return int(rem)
	}
	h := fnv.New64a()
	h.Write([]byte(clientID)) // A hash.Hash never returns an error.
	return int(h.Sum64() % mod)
}

func isDecimal(s string) bool {
	if s == "" {
		return false
	}
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// ClientShard returns the examples of set that spec assigns to clientID: the
// partition ShardIndex(clientID, spec.NumPartitions), in ascending index
// order, capped to its first maxExamples examples when maxExamples > 0. The
// result shares no memory with set.
func ClientShard(set *Set, spec PartitionSpec, clientID string, maxExamples int) (*Set, error) {
	if err := set.Validate(); err != nil {
		return nil, fmt.Errorf("client shard: %w", err)
	}
	parts, err := Partition(set.Labels, set.Classes, spec)
	if err != nil {
		return nil, fmt.Errorf("client shard: %w", err)
	}
	return shardOf(set, parts, clientID, maxExamples)
}

// shardOf returns clientID's part of set under the precomputed parts.
func shardOf(set *Set, parts [][]int, clientID string, maxExamples int) (*Set, error) {
	if len(parts) == 0 {
		return nil, errors.New("client shard: no partitions")
	}
	idx := parts[ShardIndex(clientID, len(parts))]
	if maxExamples > 0 && len(idx) > maxExamples {
		idx = idx[:maxExamples]
	}
	shard, err := set.Subset(idx)
	if err != nil {
		return nil, fmt.Errorf("client shard of %q: %w", clientID, err)
	}
	return shard, nil
}
