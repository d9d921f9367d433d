package dataset

import (
	"errors"
	"fmt"
	"sync"
)

// Data set names and splits accepted by Catalog.Load. They are the values of
// fdx.v1.TrainConfig.dataset.
const (
	NameMNIST     = "mnist"
	NameSynthetic = "synthetic"

	SplitTrain = "train"
	SplitTest  = "test"
)

// The catalog's synthetic data set: MNIST's shape at a tenth of its size, from
// a fixed seed so that every process of a federation sees the same data. Its
// two splits are the two ends of Synthetic(SyntheticTrainLen+SyntheticTestLen,
// SyntheticDim, SyntheticClasses, SyntheticSeed), and so share one
// distribution.
const (
	SyntheticTrainLen        = 6000
	SyntheticTestLen         = 1000
	SyntheticDim             = 784
	SyntheticClasses         = 10
	SyntheticSeed     uint64 = 0xfd0_ca7a
)

// maxCachedPartitions bounds the partition cache. A job uses one spec, so a
// process normally needs one entry; the bound only keeps a stream of distinct
// specs from growing memory without limit (an MNIST partition is 480 KB).
const maxCachedPartitions = 8

// Catalog loads the named data sets on first use and keeps them, and the
// partitions computed from them, for the life of the Catalog. A process that
// serves many requests (a warm Cloud Function instance, the aggregator) should
// keep one Catalog so it decodes MNIST once (about half a second and 55 MB
// for both splits) rather than per request.
//
// A Catalog is safe for concurrent use and must not be copied after first
// use. The zero value is ready to use, as is NewCatalog's result.
type Catalog struct {
	mnistTrain, mnistTest lazySet
	synthetic             lazySet // Both splits, back to back.

	mu    sync.Mutex
	parts map[partitionKey]*lazyParts
	order []partitionKey // Insertion order of parts, oldest first.
}

// NewCatalog returns an empty Catalog.
func NewCatalog() *Catalog { return &Catalog{} }

// Load returns split (SplitTrain or SplitTest) of the data set name
// (NameMNIST or NameSynthetic): MNIST has 60000 training and 10000 test
// examples of 784 pixels in 10 classes; the synthetic set is described at
// SyntheticTrainLen.
//
// The returned Set is shared by every caller of this Catalog: treat it, its
// Pixels and its Labels as read-only. Subset and ClientShard return private
// copies for anyone who needs to modify data.
func (c *Catalog) Load(name, split string) (*Set, error) {
	if split != SplitTrain && split != SplitTest {
		return nil, fmt.Errorf("dataset %q: unknown split %q, want %q or %q", name, split, SplitTrain, SplitTest)
	}
	switch name {
	case NameMNIST:
		lazy := &c.mnistTrain
		if split == SplitTest {
			lazy = &c.mnistTest
		}
		return lazy.get(func() (*Set, error) {
			s, err := mnistSplitOf(split)
			if err != nil {
				return nil, err
			}
			return loadMNIST(mnistFiles, s)
		})
	case NameSynthetic:
		all, err := c.synthetic.get(func() (*Set, error) {
			return Synthetic(SyntheticTrainLen+SyntheticTestLen, SyntheticDim, SyntheticClasses, SyntheticSeed), nil
		})
		if err != nil {
			return nil, err
		}
		if split == SplitTrain {
			return slice(all, 0, SyntheticTrainLen), nil
		}
		return slice(all, SyntheticTrainLen, all.Len()), nil
	default:
		return nil, fmt.Errorf("unknown dataset %q, want %q or %q", name, NameMNIST, NameSynthetic)
	}
}

// ClientShard is the package-level ClientShard applied to c.Load(name,
// split). It caches the partition by spec, so that after the first request of
// a job a shard costs only the copy of its examples.
func (c *Catalog) ClientShard(name, split string, spec PartitionSpec, clientID string, maxExamples int) (*Set, error) {
	set, err := c.Load(name, split)
	if err != nil {
		return nil, fmt.Errorf("client shard: %w", err)
	}
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("client shard: %w", err)
	}
	parts, err := c.partition(name, split, set, spec)
	if err != nil {
		return nil, fmt.Errorf("client shard of %s/%s: %w", name, split, err)
	}
	return shardOf(set, parts, clientID, maxExamples)
}

// ShardSize is the number of examples c.ClientShard would return, without
// copying them: the aggregator bounds every client's num_examples by it, for
// each of up to 100,000 clients a round, and needs no pixels for that.
func (c *Catalog) ShardSize(name, split string, spec PartitionSpec, clientID string, maxExamples int) (int, error) {
	set, err := c.Load(name, split)
	if err != nil {
		return 0, fmt.Errorf("client shard: %w", err)
	}
	if err := spec.Validate(); err != nil {
		return 0, fmt.Errorf("client shard: %w", err)
	}
	parts, err := c.partition(name, split, set, spec)
	if err != nil {
		return 0, fmt.Errorf("client shard of %s/%s: %w", name, split, err)
	}
	if len(parts) == 0 {
		return 0, errors.New("client shard: no partitions")
	}
	n := len(parts[ShardIndex(clientID, len(parts))])
	if maxExamples > 0 {
		n = min(n, maxExamples)
	}
	return n, nil
}

// partitionKey identifies a cached partition. The spec is canonical, so specs
// that differ only in fields their scheme ignores share an entry.
type partitionKey struct {
	name, split string
	spec        PartitionSpec
}

// lazyParts computes one partition once, even when many requests ask for it
// at the same time.
type lazyParts struct {
	once  sync.Once
	parts [][]int
	err   error
}

// partition returns Partition(set.Labels, set.Classes, spec) from the cache or
// computes and caches it. The result is shared and must not be modified.
func (c *Catalog) partition(name, split string, set *Set, spec PartitionSpec) ([][]int, error) {
	key := partitionKey{name: name, split: split, spec: spec.canonical()}
	c.mu.Lock()
	entry, ok := c.parts[key]
	if !ok {
		if c.parts == nil {
			c.parts = make(map[partitionKey]*lazyParts)
		}
		if len(c.order) >= maxCachedPartitions {
			// Callers already holding the evicted entry keep using it.
			delete(c.parts, c.order[0])
			c.order = c.order[1:]
		}
		entry = &lazyParts{}
		c.parts[key] = entry
		c.order = append(c.order, key)
	}
	c.mu.Unlock()
	// Computed outside c.mu so that a slow partition holds up only the
	// requests that need the same one.
	entry.once.Do(func() {
		entry.parts, entry.err = Partition(set.Labels, set.Classes, key.spec)
	})
	return entry.parts, entry.err
}

// lazySet loads a Set once. A failed load is not retried: the data is
// embedded in the binary, so a second attempt would fail the same way.
type lazySet struct {
	once sync.Once
	set  *Set
	err  error
}

func (l *lazySet) get(load func() (*Set, error)) (*Set, error) {
	l.once.Do(func() { l.set, l.err = load() })
	return l.set, l.err
}

// slice returns examples [from, to) of s, sharing s's memory; the capacity
// limits keep an append to one slice from writing into its neighbour.
func slice(s *Set, from, to int) *Set {
	return &Set{
		Pixels:  s.Pixels[from*s.Dim : to*s.Dim : to*s.Dim],
		Labels:  s.Labels[from:to:to],
		Dim:     s.Dim,
		Classes: s.Classes,
	}
}
