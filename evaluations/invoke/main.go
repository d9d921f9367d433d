// Command invoke fires a deployed FDxKafka Cloud Function N times at once,
// the Go replacement for the PoC's `npm test`: each invocation POSTs the
// PoC's JSON payload {"broker", "client_id", "channel"} (plus job, round,
// rounds and timeout_s when given) with client ids first-id, first-id+1, ...
// It retries 429 and 5xx answers with exponential backoff and prints a
// summary of status codes and latencies.
//
//	go run ./evaluations/invoke -url https://REGION-PROJECT.cloudfunctions.net/fdx-client \
//	    -broker 10.128.0.5:9092 -channel kafka -job mnist -n 50 -concurrency 50 -rounds 5 \
//	    -token "$(gcloud auth print-identity-token)"
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/fdxkafka/fdxkafka/evaluations/harness"
	"github.com/fdxkafka/fdxkafka/evaluations/invoker"
	"github.com/fdxkafka/fdxkafka/internal/cli"
)

func main() { cli.Main("invoke", run) }

type options struct {
	url, broker, channel, job, token, jsonPath, logLevel string
	n, concurrency, firstID, rounds, retries             int
	round                                                int64
	timeoutS                                             float64
	backoff, maxBackoff, attemptTimeout                  time.Duration
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("invoke", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.url, "url", os.Getenv("FDX_FUNCTION_URL"), "the function's HTTPS trigger URL (default $FDX_FUNCTION_URL)")
	fs.StringVar(&o.broker, "broker", "", "\"broker\" in the payload: Kafka bootstrap host:port, or the gRPC aggregator's address")
	fs.StringVar(&o.channel, "channel", "kafka", "\"channel\" in the payload: kafka or grpc")
	fs.StringVar(&o.job, "job", "", "\"job\" in the payload (omitted when empty: the function's default)")
	fs.IntVar(&o.n, "n", 50, "number of invocations (one client id each)")
	fs.IntVar(&o.concurrency, "concurrency", 50, "most invocations in flight at once")
	fs.IntVar(&o.firstID, "first-id", 0, "client id of the first invocation; the others follow")
	fs.IntVar(&o.rounds, "rounds", 0, "\"rounds\" in the payload: rounds each invocation takes part in (0: omitted, the function does 1)")
	fs.Int64Var(&o.round, "round", 0, "\"round\" in the payload: the round to take part in (0: omitted, the newest)")
	fs.Float64Var(&o.timeoutS, "timeout-s", 0, "\"timeout_s\" in the payload (0: omitted, the function's default)")
	fs.StringVar(&o.token, "token", os.Getenv("FDX_ID_TOKEN"), "bearer token for an authenticated function, e.g. $(gcloud auth print-identity-token) (default $FDX_ID_TOKEN)")
	fs.IntVar(&o.retries, "retries", 4, "retries per invocation after a 429, a 5xx or no answer")
	fs.DurationVar(&o.backoff, "backoff", time.Second, "wait before the first retry; doubles per retry, with jitter")
	fs.DurationVar(&o.maxBackoff, "max-backoff", 30*time.Second, "longest wait between retries")
	fs.DurationVar(&o.attemptTimeout, "attempt-timeout", 0, "limit on one attempt (default: timeout_s + 60 s, or 10 min)")
	fs.StringVar(&o.jsonPath, "json", "", "also write the summary and every outcome as JSON to this file")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	if err := cli.Parse(fs, args); err != nil {
		return nil, err
	}
	switch {
	case o.url == "":
		return nil, errors.New("-url: missing (or set FDX_FUNCTION_URL)")
	case o.broker == "":
		return nil, errors.New("-broker: missing; the function needs the address of the broker or aggregator")
	case o.n < 1:
		return nil, fmt.Errorf("-n %d: want at least 1", o.n)
	case o.retries < 0:
		return nil, fmt.Errorf("-retries %d: want 0 or more", o.retries)
	case o.firstID < 0:
		return nil, fmt.Errorf("-first-id %d: want 0 or more", o.firstID)
	}
	if o.attemptTimeout == 0 {
		o.attemptTimeout = 10 * time.Minute
		if o.timeoutS > 0 {
			o.attemptTimeout = time.Duration(o.timeoutS*float64(time.Second)) + time.Minute
		}
	}
	return o, nil
}

// body builds invocation i's payload; optional fields are left out so that
// the function's own defaults apply, as with the PoC's three-field payload.
func (o *options) body(i int) ([]byte, error) {
	p := map[string]any{"broker": o.broker, "client_id": strconv.Itoa(o.firstID + i), "channel": o.channel}
	if o.job != "" {
		p["job"] = o.job
	}
	if o.rounds > 0 {
		p["rounds"] = o.rounds
	}
	if o.round > 0 {
		p["round"] = o.round
	}
	if o.timeoutS > 0 {
		p["timeout_s"] = o.timeoutS
	}
	return json.Marshal(p)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	lvl, err := cli.LogLevel("-log-level", o.logLevel)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	hdr := http.Header{}
	if o.token != "" {
		hdr.Set("Authorization", "Bearer "+o.token)
	}
	log.Info("invoking", "url", o.url, "n", o.n, "concurrency", o.concurrency, "channel", o.channel, "broker", o.broker)
	sum, out, err := invoker.Run(ctx, invoker.Config{
		URL: o.url, N: o.n, Concurrency: o.concurrency, Body: o.body, Header: hdr,
		MaxAttempts: o.retries + 1, Backoff: o.backoff, MaxBackoff: o.maxBackoff,
		AttemptTimeout: o.attemptTimeout, Log: log,
	})
	if sum != nil {
		if werr := invoker.WriteSummary(stdout, sum); werr != nil {
			return fmt.Errorf("write summary: %w", werr)
		}
		for _, oc := range out {
			if !oc.OK() {
				log.Error("invocation failed", "client_id", o.firstID+oc.Index, "status", oc.Status, "attempts", oc.Attempts, "err", oc.Err)
			}
		}
		if o.jsonPath != "" {
			if werr := harness.WriteJSON(o.jsonPath, map[string]any{"summary": sum, "outcomes": out}); werr != nil {
				return werr
			}
		}
	}
	if err != nil {
		return err
	}
	if sum.Failed > 0 {
		return fmt.Errorf("%d of %d invocations failed", sum.Failed, sum.Invocations)
	}
	return nil
}
