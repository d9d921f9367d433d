package harness

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/metrics"
)

// watchInterval is how often the harness reads the aggregator's metrics. It
// bounds the delay between a model's publication and the per-round
// invocations it triggers, like a serverless trigger's latency.
const watchInterval = 20 * time.Millisecond

// aggState is a snapshot of the aggregator's metrics.
type aggState struct {
	round, completed, accepted int64
	accuracy                   float64
	msgsSent, msgsRecv         int64
}

// readState gathers the job's registry without HTTP.
func readState(m *metrics.Metrics) (aggState, error) {
	fams, err := m.Registry().Gather()
	if err != nil {
		return aggState{}, fmt.Errorf("gather aggregator metrics: %w", err)
	}
	var st aggState
	for _, f := range fams {
		for _, mt := range f.GetMetric() {
			switch f.GetName() {
			case "fdx_current_round":
				st.round = int64(mt.GetGauge().GetValue())
			case "fdx_rounds_completed_total":
				st.completed = int64(mt.GetCounter().GetValue())
			case "fdx_updates_accepted_total":
				st.accepted = int64(mt.GetCounter().GetValue())
			case "fdx_model_accuracy_ratio":
				st.accuracy = mt.GetGauge().GetValue()
			case "fdx_channel_messages_total":
				for _, l := range mt.GetLabel() {
					if l.GetName() != "direction" {
						continue
					}
					if l.GetValue() == "sent" {
						st.msgsSent = int64(mt.GetCounter().GetValue())
					} else {
						st.msgsRecv = int64(mt.GetCounter().GetValue())
					}
				}
			}
		}
	}
	return st, nil
}

// watch follows the aggregator until stopped: it sends each newly started
// round on started (whose buffer holds every round, so it never blocks),
// logs each closed round, and logs a progress line every ProgressEvery.
func (s *session) watch(ctx context.Context, m *metrics.Metrics, started chan<- int64) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(watchInterval)
		defer t.Stop()
		begin := time.Now()
		lastProgress := begin
		var prev aggState
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if n := int64(threads()); n > s.maxThreads.Load() {
				s.maxThreads.Store(n)
			}
			st, err := readState(m)
			if err != nil {
				s.log.Warn("progress unavailable", "err", err)
				continue
			}
			for r := prev.round + 1; r <= st.round; r++ {
				started <- r
			}
			if st.completed > prev.completed {
				s.log.Info("round closed", "round", st.completed, "of", s.cfg.Rounds, "accuracy", fmt.Sprintf("%.4f", st.accuracy),
					"updates", st.accepted, "aggregator_msgs_sent", st.msgsSent, "aggregator_msgs_received", st.msgsRecv,
					"elapsed", time.Since(begin).Round(100*time.Millisecond))
			}
			if s.cfg.ProgressEvery > 0 && time.Since(lastProgress) >= s.cfg.ProgressEvery {
				lastProgress = time.Now()
				s.log.Info("progress", "round", st.round, "of", s.cfg.Rounds,
					"updates_this_round", st.accepted-int64(s.cfg.Clients)*st.completed, "clients", s.cfg.Clients,
					"client_runs_done", s.done.Load(), "elapsed", time.Since(begin).Round(time.Second))
			}
			prev = st
		}
	}()
	return func() { close(done); wg.Wait() }
}
