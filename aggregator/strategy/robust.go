package strategy

import (
	"cmp"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/fdxkafka/fdxkafka/aggregator/accumulator"
)

type robustKind uint8

const (
	kindMedian robustKind = iota + 1
	kindTrimmedMean
	kindKrum
	kindBulyan
)

// robust implements the Byzantine-robust rules, which need every update of
// the round at once and so hold a copy of each (O(clients × model) memory).
// Order independence comes from sorting: updates by client id before
// anything is computed, values per coordinate by a total order. The
// coordinate-wise rules ignore NumExamples, as Flower's do: weighting would
// let one client claiming many examples move the median at will.
type robust struct {
	Default
	name string
	kind robustKind
	trim float64 // trimmed mean: fraction cut from each end
	f    int     // Krum, Bulyan: tolerated Byzantine clients
	m    int     // Krum: updates averaged; 1 for Krum, 0 for n − f
}

func (r *robust) Name() string { return r.name }

func (r *robust) Begin(global [][]float32) (Round, error) {
	sizes, err := checkGlobal(r.name, global)
	if err != nil {
		return nil, err
	}
	return newRound(r.name, sizes, &holdRound{cfg: r, sizes: sizes, total: sum(sizes)}), nil
}

func (r *robust) State() ([]byte, error) { return nil, nil }

func (r *robust) Restore(state []byte) error { return restoreStateless(r.name, state) }

type heldUpdate struct {
	id string
	n  int64
	x  []float32 // all tensors, flattened
}

// holdRound keeps a copy of every update until Finish.
type holdRound struct {
	cfg   *robust
	sizes []int
	total int
	ups   []heldUpdate
}

func (h *holdRound) add(u Update) error {
	x, err := u.flat(h.total)
	if err != nil {
		return err
	}
	h.ups = append(h.ups, heldUpdate{id: u.ClientID, n: u.NumExamples, x: x})
	return nil
}

func (h *holdRound) finish() ([][]float32, error) {
	slices.SortFunc(h.ups, func(a, b heldUpdate) int { return cmp.Compare(a.id, b.id) })
	var flat []float32
	switch h.cfg.kind {
	case kindMedian:
		flat = coordinatewise(h.ups, h.total, median)
	case kindTrimmedMean:
		k := int(h.cfg.trim * float64(len(h.ups))) // as Flower and scipy.stats.trim_mean
		flat = coordinatewise(h.ups, h.total, func(keys []uint32) float32 { return trimmedMean(keys, k) })
	case kindKrum:
		var err error
		if flat, err = krum(h.ups, h.sizes, h.cfg.f, h.cfg.m); err != nil {
			return nil, err
		}
	case kindBulyan:
		var err error
		if flat, err = bulyan(h.ups, h.total, h.cfg.f); err != nil {
			return nil, err
		}
	}
	return accumulator.Split(flat, h.sizes), nil
}

// orderKey maps float32 bits to a uint32 that sorts like the values, with
// −0 before +0: a total order, so ties cannot leave the outcome to the sort.
func orderKey(x float32) uint32 {
	b := math.Float32bits(x)
	return b ^ (uint32(int32(b)>>31) | 1<<31)
}

func fromOrderKey(k uint32) float32 {
	if k&(1<<31) != 0 {
		return math.Float32frombits(k ^ 1<<31)
	}
	return math.Float32frombits(^k)
}

// coordinatewise applies agg to the sorted values of each coordinate.
func coordinatewise(ups []heldUpdate, total int, agg func(sorted []uint32) float32) []float32 {
	out := make([]float32, total)
	keys := make([]uint32, len(ups))
	for j := range out {
		for i := range ups {
			keys[i] = orderKey(ups[i].x[j])
		}
		slices.Sort(keys)
		out[j] = agg(keys)
	}
	return out
}

// median of sorted keys; for an even count the mean of the middle two,
// computed in float64 (exact unless their exponents differ by more than 29)
// and rounded once to float32.
func median(keys []uint32) float32 {
	n := len(keys)
	if n%2 == 1 {
		return fromOrderKey(keys[n/2])
	}
	a, b := float64(fromOrderKey(keys[n/2-1])), float64(fromOrderKey(keys[n/2]))
	return float32((a + b) / 2)
}

// trimmedMean drops k values from each end of sorted keys (len > 2k, which
// a fraction below 0.5 guarantees) and averages the rest in float64, summed
// in sorted order so the result does not depend on arrival order.
func trimmedMean(keys []uint32, k int) float32 {
	kept := keys[k : len(keys)-k]
	var s float64
	for _, key := range kept {
		s += float64(fromOrderKey(key))
	}
	return float32(s / float64(len(kept)))
}

// krum implements Krum and Multi-Krum (Blanchard et al. 2017, "Machine
// Learning with Adversaries: Byzantine Tolerant Gradient Descent"). Each
// update is scored by the sum of squared distances to its n − f − 2 nearest
// neighbours; with m = 1 the lowest-scoring update is returned as is,
// otherwise the m lowest are averaged by example count (as Flower does) with
// the exact accumulator. Equal scores are broken by client id (ups is sorted
// by id and the selection sort is stable).
func krum(ups []heldUpdate, sizes []int, f, m int) ([]float32, error) {
	n := len(ups)
	if n <= 2*f+2 {
		return nil, fmt.Errorf("%w: Krum with f=%d needs more than %d updates, has %d", ErrTooFewUpdates, f, 2*f+2, n)
	}
	if m == 0 {
		m = n - f
	}
	if m > n-f {
		return nil, fmt.Errorf("%w: Multi-Krum averaging m=%d needs m ≤ n − f, has n=%d, f=%d", ErrTooFewUpdates, m, n, f)
	}
	dist := squaredDistances(ups)
	k := n - f - 2
	scores := make([]float64, n)
	row := make([]float64, 0, n-1)
	for i := range ups {
		row = row[:0]
		for j := range ups {
			if j != i {
				row = append(row, dist[i*n+j])
			}
		}
		slices.Sort(row)
		var s float64
		for _, d := range row[:k] {
			s += d
		}
		scores[i] = s
	}
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(scores[a], scores[b]) })
	if m == 1 {
		return ups[order[0]].x, nil
	}
	acc, err := accumulator.New(sizes)
	if err != nil {
		return nil, err
	}
	for _, i := range order[:m] {
		if err := acc.Add(ups[i].n, accumulator.Split(ups[i].x, sizes)); err != nil {
			return nil, fmt.Errorf("client %q: %w", ups[i].id, err)
		}
	}
	return acc.MeanFlat()
}

// squaredDistances returns the n × n matrix of squared Euclidean distances
// between the updates. Krum costs O(n² × model), so rows are spread over
// the available CPUs; every entry is computed by the same sequential code
// whichever goroutine runs it, so the result does not depend on scheduling.
func squaredDistances(ups []heldUpdate) []float64 {
	n := len(ups)
	dist := make([]float64, n*n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				for j := i + 1; j < n; j++ {
					d := squaredDistance(ups[i].x, ups[j].x)
					dist[i*n+j], dist[j*n+i] = d, d
				}
			}
		})
	}
	wg.Wait()
	return dist
}

// squaredDistance sums in float64 over four fixed interleaved partial sums
// (for instruction-level parallelism); the order is fixed, so the result is
// deterministic. Products are rounded explicitly to keep FMA out.
func squaredDistance(a, b []float32) float64 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float64
	i := 0
	for ; i+4 <= len(a); i += 4 {
		d0 := float64(a[i]) - float64(b[i])
		d1 := float64(a[i+1]) - float64(b[i+1])
		d2 := float64(a[i+2]) - float64(b[i+2])
		d3 := float64(a[i+3]) - float64(b[i+3])
		s0 += float64(d0 * d0)
		s1 += float64(d1 * d1)
		s2 += float64(d2 * d2)
		s3 += float64(d3 * d3)
	}
	for ; i < len(a); i++ {
		d := float64(a[i]) - float64(b[i])
		s0 += float64(d * d)
	}
	return (s0 + s1) + (s2 + s3)
}

// bulyan implements Bulyan (El Mhamdi, Guerraoui, Rouault 2018, "The Hidden
// Vulnerability of Distributed Learning in Byzantium") over Krum, as Flower
// does. It needs n ≥ 4f + 3 updates. First it selects θ = n − 2f of them by
// iterated Krum: each iteration scores the updates not yet selected against
// one another and moves the best one into the selection. Then, coordinate by
// coordinate, it averages the β = θ − 2f selected values closest to their
// median. ups is sorted by client id, which breaks every tie: equal Krum
// scores go to the smaller id, equal distances to the median to the smaller
// value, so the result does not depend on arrival order.
//
// Once fewer than f + 3 updates remain to score, Krum's n − f − 2 nearest
// neighbours would be fewer than one; as in Flower, at least one is used.
func bulyan(ups []heldUpdate, total, f int) ([]float32, error) {
	n := len(ups)
	if n < 4*f+3 {
		return nil, fmt.Errorf("%w: Bulyan with f=%d needs at least %d updates, has %d", ErrTooFewUpdates, f, 4*f+3, n)
	}
	theta, beta := n-2*f, n-4*f
	dist := squaredDistances(ups)
	remaining := make([]int, n)
	for i := range remaining {
		remaining[i] = i
	}
	selected := make([]heldUpdate, 0, theta)
	row := make([]float64, 0, n)
	for len(selected) < theta {
		best, bestScore := 0, math.Inf(1)
		k := max(1, len(remaining)-f-2)
		for bi, i := range remaining {
			row = row[:0]
			for _, j := range remaining {
				if j != i {
					row = append(row, dist[i*n+j])
				}
			}
			slices.Sort(row)
			var score float64
			for _, d := range row[:min(k, len(row))] {
				score += d
			}
			if score < bestScore { // strict: ties keep the smaller id
				best, bestScore = bi, score
			}
		}
		selected = append(selected, ups[remaining[best]])
		remaining = slices.Delete(remaining, best, best+1)
	}
	return coordinatewise(selected, total, func(keys []uint32) float32 { return closestMean(keys, beta) }), nil
}

// closestMean averages the beta values of sorted keys closest to their
// median (as median computes it). Those values form a contiguous run of the
// sorted keys, grown from the median outwards, taking the lower value when
// both candidates are equally close; the run is summed in float64 in sorted
// order and rounded once.
func closestMean(keys []uint32, beta int) float32 {
	med := float64(median(keys))
	// keys[:hi] are below the median, keys[hi:] at or above it.
	hi, _ := slices.BinarySearch(keys, orderKey(float32(med)))
	lo := hi - 1 // next candidate below; hi is the next one above
	for taken := 0; taken < beta; taken++ {
		switch {
		case lo < 0:
			hi++
		case hi >= len(keys):
			lo--
		case float64(fromOrderKey(keys[hi]))-med < med-float64(fromOrderKey(keys[lo])):
			hi++
		default:
			lo--
		}
	}
	var s float64
	for _, key := range keys[lo+1 : hi] {
		s += float64(fromOrderKey(key))
	}
	return float32(s / float64(beta))
}
