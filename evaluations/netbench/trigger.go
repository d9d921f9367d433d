package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fdxkafka/fdxkafka/client/participant"
	"github.com/fdxkafka/fdxkafka/evaluations/invoker"
	"github.com/fdxkafka/fdxkafka/function"
	"github.com/fdxkafka/fdxkafka/internal/cli"
)

// triggerReport is what `netbench trigger` writes: every invocation's
// summary (the function's JSON answer) and the trigger's own cost.
type triggerReport struct {
	Summaries []participant.Summary `json:"summaries"`
	Failures  []string              `json:"failures,omitempty"`
	processCost
}

// triggerPoll is how often the trigger reads the aggregator's round: the
// delay between a model's publication and its invocations, as a serverless
// trigger's latency.
const triggerPoll = 20 * time.Millisecond

// runTrigger is `netbench trigger`, run in the aggregator's namespace: it
// follows the aggregator's round on its metrics endpoint (loopback, so it
// adds nothing to the link), and for each new round invokes the HTTP
// function once per client, with "round": r and "rounds": 1, as the
// serverless pattern does: nothing runs between rounds. -functions lists
// URL=first-last groups (one function server per client host).
func runTrigger(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("netbench trigger", flag.ContinueOnError)
	fs.SetOutput(stderr)
	metricsURL := fs.String("metrics", "", "the aggregator's /metrics URL")
	fns := fs.String("functions", "", "comma-separated URL=first-last: the function serving those client ids")
	ch := fs.String("channel", "kafka", "kafka or grpc")
	broker := fs.String("broker", "", "the payload's broker")
	job := fs.String("job", "", "job id")
	rounds := fs.Int("rounds", 1, "rounds")
	inflight := fs.Int("max-inflight", 64, "most invocations in flight per function server")
	timeout := fs.Duration("timeout", 30*time.Minute, "give up after this long")
	out := fs.String("out", "", "write the report (JSON) here")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	type group struct {
		url      string
		first, n int
	}
	var groups []group
	for g := range strings.SplitSeq(*fns, ",") {
		url, ids, ok := strings.Cut(g, "=")
		lo, hi, ok2 := strings.Cut(ids, "-")
		a, err1 := strconv.Atoi(lo)
		b, err2 := strconv.Atoi(hi)
		if !ok || !ok2 || err1 != nil || err2 != nil || b < a {
			return cli.Usagef("trigger: -functions entry %q: want URL=first-last", g)
		}
		groups = append(groups, group{url: url, first: a, n: b - a + 1})
	}
	if *metricsURL == "" || *out == "" || *job == "" || len(groups) == 0 {
		return cli.Usagef("trigger: -metrics, -functions, -job and -out are required")
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	var (
		rep triggerReport
		mu  sync.Mutex
		wg  sync.WaitGroup
	)
	hc := &http.Client{Timeout: 2 * time.Second}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *inflight}}
	fire := func(round int64) {
		for _, g := range groups {
			wg.Go(func() {
				_, outs, err := invoker.Run(ctx, invoker.Config{
					URL: g.url, N: g.n, Concurrency: *inflight, Client: client, MaxAttempts: 3,
					Body: func(i int) ([]byte, error) {
						return json.Marshal(map[string]any{"broker": *broker, "channel": *ch, "job": *job,
							"client_id": strconv.Itoa(g.first + i), "round": round, "rounds": 1, "timeout_s": 1800})
					},
				})
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					rep.Failures = append(rep.Failures, fmt.Sprintf("round %d at %s: %v", round, g.url, err))
				}
				for _, o := range outs {
					if !o.OK() {
						rep.Failures = append(rep.Failures, fmt.Sprintf("round %d client %d: %s", round, g.first+o.Index, o.Err))
						continue
					}
					var r function.Response
					if err := json.Unmarshal([]byte(o.Body), &r); err != nil {
						rep.Failures = append(rep.Failures, fmt.Sprintf("round %d client %d: answer: %v", round, g.first+o.Index, err))
						continue
					}
					rep.Summaries = append(rep.Summaries, r.Summary)
				}
			})
		}
	}
	var fired int64
	tick := time.NewTicker(triggerPoll)
	defer tick.Stop()
	for fired < int64(*rounds) {
		select {
		case <-ctx.Done():
			wg.Wait()
			return fmt.Errorf("trigger: fired %d of %d rounds: %w", fired, *rounds, ctx.Err())
		case <-tick.C:
		}
		r, err := currentRound(ctx, hc, *metricsURL)
		if err != nil {
			continue // the aggregator is starting
		}
		for fired < min(r, int64(*rounds)) {
			fired++
			fire(fired)
		}
	}
	wg.Wait()
	rep.measure()
	if err := writeReport(*out, rep); err != nil {
		return err
	}
	if len(rep.Failures) > 0 {
		return fmt.Errorf("%d invocations failed; first: %s", len(rep.Failures), rep.Failures[0])
	}
	return nil
}

// currentRound reads fdx_current_round from the aggregator's metrics.
func currentRound(ctx context.Context, hc *http.Client, url string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "fdx_current_round") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("metrics line %q: %w", line, err)
		}
		return int64(v), nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no fdx_current_round in %s", url)
}
