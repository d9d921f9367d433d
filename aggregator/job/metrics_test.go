package job

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/metrics"
	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
)

// scrape fetches /metrics and returns the samples whose names start with
// fdx_, keyed by the sample line's name and labels.
func scrape(ctx context.Context, addr string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: HTTP %d", resp.StatusCode)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "fdx_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("sample %q: %w", line, err)
		}
		// Drop the constant labels so keys stay short.
		name := line[:i]
		if j := strings.IndexByte(name, '{'); j >= 0 {
			labels := strings.Split(strings.Trim(name[j:], "{}"), ",")
			var keep []string
			for _, l := range labels {
				if !strings.HasPrefix(l, "fdx_job=") && !strings.HasPrefix(l, "channel=") {
					keep = append(keep, l)
				}
			}
			name = name[:j]
			if len(keep) > 0 {
				name += "{" + strings.Join(keep, ",") + "}"
			}
		}
		out[name] = v
	}
	return out, sc.Err()
}

// TestMetricsDuringJob scrapes the aggregator's /metrics while a job runs
// and after it ends.
func TestMetricsDuringJob(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	jobID := kafkatest.Job(t)
	m := metrics.New(jobID, "kafka")
	addr, err := metrics.Serve(ctx, "127.0.0.1:0", m.Handler(), nil)
	if err != nil {
		t.Fatal(err)
	}
	const clients, rounds = 3, 4
	o := Spec{Job: jobID, Rounds: RoundsSpec{MinClients: clients, NumRounds: rounds},
		Data: DataSpec{Dataset: "synthetic", MaxExamples: 100, EvalExamples: 200, Partition: dataset.PartitionSpec{NumPartitions: clients}}}
	// Mid-job: wait until a round has closed, then look at what it says.
	type sample struct {
		m   map[string]float64
		err error
	}
	midc := make(chan sample, 1)
	go func() {
		for {
			m, err := scrape(ctx, addr)
			if err == nil && m["fdx_rounds_completed_total"] >= 1 {
				midc <- sample{m, nil}
				return
			}
			select {
			case <-ctx.Done():
				midc <- sample{m, fmt.Errorf("no round completed in /metrics: %v", err)}
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	res := runFederation(t, resolve(t, o, nil), ChannelConfig{Transport: Kafka, Brokers: kafkatest.Brokers(t)}, Env{Metrics: m}, clients)
	mid := <-midc
	if mid.err != nil {
		t.Fatal(mid.err)
	}
	if mid.m["fdx_updates_accepted_total"] < clients || mid.m["fdx_current_round"] < 1 {
		t.Errorf("mid-job metrics: accepted %v current round %v", mid.m["fdx_updates_accepted_total"], mid.m["fdx_current_round"])
	}
	if _, ok := mid.m[`fdx_updates_rejected_total{reason="norm_bound"}`]; !ok {
		t.Errorf("rejection counter for norm_bound missing; have %v", mid.m)
	}
	end, err := scrape(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]float64{
		"fdx_rounds_completed_total":                       rounds,
		"fdx_updates_accepted_total":                       clients * rounds,
		`fdx_channel_messages_total{direction="sent"}`:     float64(res.Stats.MessagesSent),
		`fdx_channel_messages_total{direction="received"}`: float64(res.Stats.MessagesReceived),
		"fdx_round_duration_seconds_count":                 rounds,
		`fdx_updates_rejected_total{reason="wrong_shape"}`: 0,
		`fdx_update_bytes_total{result="rejected"}`:        0,
		"fdx_model_accuracy_ratio":                         res.Rounds[rounds-1].Accuracy,
	} {
		if got, ok := end[name]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", name, got, ok, want)
		}
	}
}
