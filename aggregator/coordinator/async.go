package coordinator

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	"github.com/fdxkafka/fdxkafka/aggregator/validate"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
)

// Async configures the asynchronous mode, FedBuff (Nguyen et al. 2022):
// there is no round barrier. Each valid update is folded as it arrives,
// scaled by s(τ) = 1/(1+τ)^a where τ is the current version minus the
// version it was trained on, and every BufferSize updates the buffer's mean
// steps the model to a new version, published like a synchronous round's
// model (on Kafka one transaction with the consumed offsets). A version is
// a round: Config.NumRounds counts them, and model rounds are versions.
//
// Clients send deltas against the version they trained on (the model
// record's train config says async, see participant). The alternative,
// full weights and the aggregator subtracting the base version, would make
// the aggregator keep the last max-staleness versions and restore them
// after a crash from the model topic's history (and the gRPC state file,
// which keeps only the newest model): a delta means the same whatever
// version it arrives at, so a restart needs only the newest model.
type Async struct {
	// BufferSize K: a new version every K valid updates, ≥ 1.
	BufferSize int
	// Exponent is a in s(τ) = 1/(1+τ)^a; 0 means 0.5 (FedBuff's), a
	// negative value means a = 0 (no staleness discount), as in
	// strategy.BufferConfig.
	Exponent float64
	// MaxStaleness rejects updates with τ above it (stale_round); 0 means
	// no limit.
	MaxStaleness int64
	// ServerLR is η_g, the step applied to the buffer's mean (0: 1).
	ServerLR float64
	// Weighted weighs each delta by its example count as well as s(τ);
	// false averages over the K updates, as FedBuff does.
	Weighted bool
}

// Validate reports the first bad field.
func (a *Async) Validate() error {
	switch {
	case a.BufferSize < 1:
		return fmt.Errorf("buffer size %d: want at least 1", a.BufferSize)
	case a.MaxStaleness < 0:
		return fmt.Errorf("max staleness %d is negative", a.MaxStaleness)
	case math.IsNaN(a.Exponent) || math.IsInf(a.Exponent, 0):
		return fmt.Errorf("staleness exponent %v is not finite", a.Exponent)
	case a.ServerLR < 0 || math.IsNaN(a.ServerLR) || math.IsInf(a.ServerLR, 0):
		return fmt.Errorf("server learning rate %v: want a finite value ≥ 0", a.ServerLR)
	}
	return nil
}

// asyncState is what an asynchronous model record carries in its
// strategy_state for a restart to continue exactly: the buffer is empty at
// every version, so only the duplicate guard is left.
type asyncState struct {
	// LastBase is validate.Async.LastBase, pruned (see prune).
	LastBase map[string]int64 `json:"last_base,omitempty"`
}

func (c *Coordinator) asyncState() ([]byte, error) {
	if len(c.lastBase) == 0 {
		return nil, nil
	}
	// encoding/json writes map keys sorted: the same state gives the same
	// bytes, so versions stay bit-identical between runs.
	return json.Marshal(asyncState{LastBase: c.lastBase})
}

func (c *Coordinator) restoreAsync(b []byte) error {
	c.lastBase = map[string]int64{}
	if len(b) == 0 {
		return nil
	}
	var st asyncState
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("async state: %w", err)
	}
	for id, r := range st.LastBase {
		if r < 1 {
			return fmt.Errorf("async state: client %q at base round %d", id, r)
		}
		c.lastBase[id] = r
	}
	return nil
}

// prune drops from the duplicate guard the clients whose last base round
// no longer matters at version next: any update trained on a round that
// old is refused as stale anyway. Without a staleness bound nothing can be
// dropped and the guard holds one entry per contributing client.
func (c *Coordinator) prune(last map[string]int64, next int64) map[string]int64 {
	if s := c.cfg.Async.MaxStaleness; s > 0 {
		for id, b := range last {
			if b < next-s {
				delete(last, id)
			}
		}
	}
	return last
}

// version collects BufferSize updates on top of version cur and publishes
// the next version. Which updates make a version, and their staleness,
// depend only on the order the loop reads them in and on cur: on Kafka
// that is the updates topic's order (a single partition in async mode),
// which a restart re-reads from the last committed version on.
func (c *Coordinator) version(ctx context.Context, cur *fdxv1.GlobalModel, params [][]float32) (*fdxv1.GlobalModel, [][]float32, RoundRecord, error) {
	a := c.cfg.Async
	v := cur.GetRound()
	c.obs.RoundStarted(v)
	buf, err := strategy.NewBuffer(c.job.Sizes(), strategy.BufferConfig{
		Exponent: a.Exponent, MaxStaleness: uint64(a.MaxStaleness), ServerLR: a.ServerLR, Weighted: a.Weighted,
	})
	if err != nil {
		return nil, nil, RoundRecord{Round: v}, fmt.Errorf("version %d: %w", v, err)
	}
	var stale, staleSum, staleMax int64
	st := &roundState{
		rec: RoundRecord{Round: v, Rejected: map[string]int64{}},
		// No sampling in async mode: every client may send at any time.
		plan:      &roundPlan{round: v},
		published: cur.GetPublishedAt().AsTime(),
	}
	e := c.expect(v, params, st.plan)
	e.Async = &validate.Async{MaxStaleness: a.MaxStaleness, LastBase: c.lastBase}
	// An async version is not a round of its own to bound norms by: no
	// self-bound (factor 0).
	c.openIntake(st, validate.NewRound(e), 0,
		func(u *fdxv1.Update, delta *validate.Values) error {
			tau := v - u.GetBaseRound() // validate bounds it to [0, MaxStaleness]
			if err := buf.Add(u.GetNumExamples(), uint64(tau), delta.Params()); err != nil {
				return err
			}
			if tau > 0 {
				stale++
			}
			staleSum += tau
			staleMax = max(staleMax, tau)
			return nil
		})
	for st.in.Check().Count() < a.BufferSize {
		d, err := c.ch.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return nil, nil, st.rec, fmt.Errorf("version %d: receive: %w", v, err)
		}
		if err := st.in.Take(ctx, d); err != nil {
			return nil, nil, st.rec, fmt.Errorf("version %d: %w", v, err)
		}
	}
	start := time.Now()
	next, err := buf.Apply(params)
	st.finish += time.Since(start)
	if err != nil {
		// Validation keeps global + each delta finite, so only a server
		// learning rate above 1 can get here: stop rather than publish
		// a model with infinities.
		return nil, nil, st.rec, fmt.Errorf("version %d: aggregate: %w", v, err)
	}
	n := float64(st.in.Check().Count())
	st.rec.Strategy = map[string]float64{
		"staleness_mean": float64(staleSum) / n,
		"staleness_max":  float64(staleMax),
		"stale_fraction": float64(stale) / n,
	}
	nm, err := c.close(ctx, st, next)
	if err != nil {
		return nil, nil, st.rec, fmt.Errorf("version %d: %w", v, err)
	}
	return nm, next, st.rec, nil
}
