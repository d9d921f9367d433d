package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/fdxkafka/fdxkafka/client/participant"
	"github.com/fdxkafka/fdxkafka/internal/cli"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
)

// clientsReport is what one `netbench clients` process writes: each
// long-running client's summary and the process's own cost.
type clientsReport struct {
	Host      string                `json:"host"`
	Summaries []participant.Summary `json:"summaries"`
	Failures  []string              `json:"failures,omitempty"`
	processCost
}

// processCost is what a helper process of the testbed cost: CPU time and
// peak memory, from getrusage at its end.
type processCost struct {
	CPUSec   float64 `json:"cpu_s"`
	MaxRSSMB float64 `json:"max_rss_mb"`
}

// measure fills c from this process's resource usage so far.
func (c *processCost) measure() {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		c.CPUSec = tv(ru.Utime) + tv(ru.Stime)
		c.MaxRSSMB = float64(ru.Maxrss) / 1024
	}
}

// writeReport writes a helper process's report as JSON to path.
func writeReport(path string, rep any) error {
	b, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("report %s: %w", path, err)
	}
	return nil
}

// runClients is `netbench clients`: long-running clients ids first..last,
// in this process (which runs inside a client host's namespace), each with
// its own channel connection for all rounds, as the harness's local
// clients. At most -dial-concurrency dial at once, each retried with
// backoff: devices come online over time, not in one instant.
func runClients(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("netbench clients", flag.ContinueOnError)
	fs.SetOutput(stderr)
	ch := fs.String("channel", "kafka", "kafka or grpc")
	broker := fs.String("broker", "", "Kafka bootstrap list or the gRPC aggregator's host:port")
	job := fs.String("job", "", "job id")
	first := fs.Int("first", 0, "first client id")
	n := fs.Int("n", 1, "number of clients")
	rounds := fs.Int("rounds", 1, "rounds each client takes part in")
	dialConc := fs.Int("dial-concurrency", 16, "most clients dialing at once")
	out := fs.String("out", "", "write the report (JSON) here")
	host := fs.String("host", "", "this host's name, for the report")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if *out == "" || *job == "" || *broker == "" || *n < 1 {
		return cli.Usagef("clients: -out, -job, -broker and -n ≥ 1 are required")
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	part := &participant.Participant{Data: dataset.NewCatalog(), Log: log}
	tr := participant.Transport{Logger: log}
	gate := make(chan struct{}, max(*dialConc, 1))
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	rep := clientsReport{Host: *host}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range *n {
		id := strconv.Itoa(*first + i)
		wg.Go(func() {
			sum, err := oneClient(ctx, part, tr, gate, participant.Target{Channel: *ch, Broker: *broker, Job: *job, ClientID: id}, *rounds)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				rep.Failures = append(rep.Failures, fmt.Sprintf("client %s: %v", id, err))
				// Every round waits for every client: one lost client
				// stalls the job, so the others stop too.
				cancel(fmt.Errorf("client %s: %w", id, err))
				return
			}
			rep.Summaries = append(rep.Summaries, sum)
		})
	}
	wg.Wait()
	rep.measure()
	if err := writeReport(*out, rep); err != nil {
		return err
	}
	if len(rep.Failures) > 0 {
		return fmt.Errorf("%d of %d clients failed; first: %s", len(rep.Failures), *n, rep.Failures[0])
	}
	return nil
}

// oneClient dials (through gate, retrying) and takes part in rounds rounds.
func oneClient(ctx context.Context, part *participant.Participant, tr participant.Transport, gate chan struct{}, t participant.Target, rounds int) (participant.Summary, error) {
	select {
	case gate <- struct{}{}:
	case <-ctx.Done():
		return participant.Summary{}, context.Cause(ctx)
	}
	var (
		err     error
		backoff = 250 * time.Millisecond
	)
	for attempt := 1; ; attempt++ {
		ch, derr := tr.Dial(ctx, t)
		if derr == nil {
			<-gate
			defer ch.Close()
			return part.Run(ctx, ch, participant.Options{Job: t.Job, ClientID: t.ClientID, Rounds: rounds})
		}
		err = derr
		// The aggregator may not listen yet (gRPC) or the broker may be
		// busy: a device retries.
		if attempt == 20 || ctx.Err() != nil {
			<-gate
			return participant.Summary{}, fmt.Errorf("dial after %d attempts: %w", attempt, errors.Join(err, context.Cause(ctx)))
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
