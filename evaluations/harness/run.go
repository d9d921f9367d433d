package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/job"
	"github.com/fdxkafka/fdxkafka/aggregator/metrics"
	"github.com/fdxkafka/fdxkafka/client/participant"
	"github.com/fdxkafka/fdxkafka/function"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/embedded"
)

// session is one channel's run: the job, its clients and what they report.
// Its state lives here, not in package variables, so runs never share it.
type session struct {
	cfg     Config
	channel string
	job     string
	fnURL   string
	http    *http.Client
	part    *participant.Participant
	// dialer opens long-running clients' channels as the function does.
	dialer  participant.Transport
	log     *slog.Logger
	cancel  context.CancelCauseFunc
	clients sync.WaitGroup

	mu          sync.Mutex
	invocations []invocation
	// localProp is, per round, the longest a long-running client took to
	// receive the round's model after it was published.
	localProp map[int64]time.Duration
	done      atomic.Int64
	// dialGate bounds concurrent dials of long-running clients.
	dialGate chan struct{}
	// maxThreads is the most OS threads the process had during the run.
	maxThreads atomic.Int64
}

// invocation is what one client connection reported: an HTTP invocation of
// the function or a long-running client's whole run.
type invocation struct {
	ClientID string
	HTTP     bool
	Summary  participant.Summary
	// Dials is how many channel connections it opened (one per invocation).
	Dials int
}

// runChannel runs one job over ch and measures it.
func runChannel(ctx context.Context, cfg Config, ch, fnURL string) (*ChannelReport, error) {
	ctx, cancelTimeout := context.WithTimeout(ctx, cfg.Timeout)
	defer cancelTimeout()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	s := &session{
		cfg:     cfg,
		channel: ch,
		job:     fmt.Sprintf("%s-%s-%d-%d", cfg.JobPrefix, ch, cfg.Clients, time.Now().UnixNano()),
		fnURL:   fnURL,
		// Invocations last as long as the job; the request's timeout_s,
		// enforced by the function, is what bounds them.
		http:      &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}},
		part:      &participant.Participant{Data: cfg.Data, Log: quiet(cfg.Log, "client")},
		dialer:    participant.Transport{KafkaProperties: cfg.KafkaProperties, Logger: quiet(cfg.Log, "client")},
		log:       cfg.Log.With("channel", ch),
		cancel:    cancel,
		localProp: map[int64]time.Duration{},
		dialGate:  make(chan struct{}, cfg.DialConcurrency),
	}
	defer s.http.CloseIdleConnections()

	spec, err := job.Spec{
		Job:      s.job,
		Seed:     cfg.Seed,
		Rounds:   job.RoundsSpec{MinClients: cfg.Clients, NumRounds: cfg.Rounds},
		Training: job.TrainingSpec{Model: cfg.Model},
		Data: job.DataSpec{
			Dataset:      cfg.Dataset,
			Partition:    dataset.PartitionSpec{Scheme: cfg.Partition, NumPartitions: cfg.Clients},
			MaxExamples:  cfg.MaxExamples,
			EvalExamples: cfg.EvalExamples,
		},
	}.Resolve(cfg.Data)
	if err != nil {
		return nil, fmt.Errorf("job %s: %w", s.job, err)
	}
	brokerName := "grpc://127.0.0.1 (in process)"
	cc := job.ChannelConfig{Transport: job.GRPC, Listen: "127.0.0.1:0"}
	switch ch {
	case GRPCDurable:
		dir, err := os.MkdirTemp("", "fdx-stress-state-")
		if err != nil {
			return nil, fmt.Errorf("state dir: %w", err)
		}
		defer os.RemoveAll(dir)
		cc.StateFile = filepath.Join(dir, "aggregator.state")
		brokerName = "grpc://127.0.0.1 (in process, --state-file)"
	case Kafka:
		cc = job.ChannelConfig{Transport: job.Kafka, Brokers: cfg.Broker, KafkaProperties: cfg.KafkaProperties}
		brokerName = cfg.Broker
		if cfg.Broker == "" {
			// The harness, not the job, owns the embedded broker, so that
			// it outlives the aggregator exactly as a real broker would
			// and clients close against a live broker.
			b, err := embedded.Start(embedded.Options{Addr: "127.0.0.1:0"})
			if err != nil {
				return nil, err
			}
			defer b.Close()
			cc.Brokers, brokerName = b.Addr(), "embedded (kfake, in process)"
		}
	}
	// The job's Prometheus metrics are the harness's view of the
	// aggregator while it runs: they drive per-round invocations and the
	// progress lines.
	env := job.Env{Log: quiet(s.log, "aggregator"), Metrics: metrics.New(s.job, ch)}
	gomaxprocs := runtime.GOMAXPROCS(0)
	threadsBefore := threads()
	started := make(chan int64, cfg.Rounds+1)
	stopWatch := s.watch(ctx, env.Metrics, started)
	defer stopWatch()
	ready := func(addr string) { s.startClients(ctx, addr, started) }

	s.log.Info("run starting", "job", s.job, "clients", cfg.Clients, "http_clients", cfg.HTTPClients(),
		"rounds", cfg.Rounds, "model", cfg.Model, "dataset", cfg.Dataset, "broker", brokerName)
	start := time.Now()
	res, err := job.RunOn(ctx, spec, cc, env, ready)
	jobMs := msSince(start)
	if err != nil {
		cancel(err)
	}
	// Clients have submitted their last update when the job ends; waiting
	// for them collects their summaries and closes their connections.
	s.clients.Wait()
	wallMs := msSince(start)
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) && err == nil {
		err = cause
	}
	if err != nil {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(err, cause) {
			err = fmt.Errorf("%w (first failure: %v)", err, cause)
		}
		return nil, fmt.Errorf("job %s: %w", s.job, err)
	}
	s.log.Info("run finished", "job", s.job, "wall_ms", int64(wallMs))
	cr := s.report(res, brokerName, jobMs, wallMs)
	cr.GOMAXPROCS = gomaxprocs
	cr.Threads = max(int(s.maxThreads.Load())-threadsBefore, 0)
	cr.ThreadsPerClient = float64(cr.Threads) / float64(cfg.Clients)
	return cr, nil
}

// fail ends the run: a federation whose every round waits for all clients
// cannot finish once one client is lost.
func (s *session) fail(err error) {
	s.log.Error("run failed", "err", err)
	s.cancel(err)
}

// startClients launches every client; it is called once the aggregator
// accepts connections.
func (s *session) startClients(ctx context.Context, addr string, started <-chan int64) {
	nHTTP := s.cfg.HTTPClients()
	for i := nHTTP; i < s.cfg.Clients; i++ {
		s.clients.Add(1)
		go func() {
			defer s.clients.Done()
			s.runLocal(ctx, addr, strconv.Itoa(i))
		}()
	}
	if nHTTP == 0 {
		return
	}
	if s.cfg.Invocation == PerRound {
		s.clients.Add(1)
		go func() {
			defer s.clients.Done()
			s.dispatchRounds(ctx, addr, nHTTP, started)
		}()
		return
	}
	for i := range nHTTP {
		s.clients.Add(1)
		go func() {
			defer s.clients.Done()
			s.invoke(ctx, addr, strconv.Itoa(i), 0, s.cfg.Rounds)
		}()
	}
}

// dispatchRounds invokes every HTTP client once per round, as soon as the
// round's model is published, with at most MaxInFlight invocations at once.
func (s *session) dispatchRounds(ctx context.Context, addr string, nHTTP int, started <-chan int64) {
	limit := s.cfg.MaxInFlight
	if limit <= 0 {
		limit = nHTTP
	}
	sem := make(chan struct{}, limit)
	var wg sync.WaitGroup
	defer wg.Wait()
	for range s.cfg.Rounds {
		var round int64
		select {
		case round = <-started:
		case <-ctx.Done():
			return
		}
		for i := range nHTTP {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				s.invoke(ctx, addr, strconv.Itoa(i), round, 1)
			}()
		}
	}
}

// invoke POSTs the PoC's JSON payload (plus job, rounds and timeout) to the
// function and records its summary.
func (s *session) invoke(ctx context.Context, addr, id string, round int64, rounds int) {
	req := map[string]any{
		"broker": addr, "client_id": id, "channel": wire(s.channel), "job": s.job,
		"rounds": rounds, "timeout_s": min(s.cfg.Timeout, time.Hour).Seconds(),
	}
	if round > 0 {
		req["round"] = round
	}
	body, err := json.Marshal(req)
	if err != nil {
		s.fail(fmt.Errorf("client %s: encode request: %w", id, err))
		return
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, s.fnURL, bytes.NewReader(body))
	if err != nil {
		s.fail(fmt.Errorf("client %s: %w", id, err))
		return
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := s.http.Do(hreq)
	if err != nil {
		if ctx.Err() == nil {
			s.fail(fmt.Errorf("client %s: invoke function: %w", id, err))
		}
		return
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.fail(fmt.Errorf("client %s: read function response: %w", id, err))
		return
	}
	if resp.StatusCode != http.StatusOK {
		if ctx.Err() == nil {
			s.fail(fmt.Errorf("client %s round %d: function answered HTTP %d: %s", id, round, resp.StatusCode, bytes.TrimSpace(b)))
		}
		return
	}
	var r function.Response
	if err := json.Unmarshal(b, &r); err != nil {
		s.fail(fmt.Errorf("client %s: decode function response %q: %w", id, b, err))
		return
	}
	s.record(invocation{ClientID: id, HTTP: true, Summary: r.Summary, Dials: 1})
}

// runLocal is a long-running local client: one connection kept open for all
// rounds, the PoC's "local clients". It reads its channel's counters
// directly, which the function's Follow loop does not expose.
func (s *session) runLocal(ctx context.Context, addr, id string) {
	ch, err := s.connect(ctx, addr, id)
	if err != nil {
		if ctx.Err() == nil {
			s.fail(fmt.Errorf("client %s: %w", id, err))
		}
		return
	}
	defer ch.Close()
	sum, err := s.part.Run(ctx, &timedClient{Client: ch, s: s}, participant.Options{Job: s.job, ClientID: id, Rounds: s.cfg.Rounds})
	if err != nil {
		if ctx.Err() == nil {
			s.fail(fmt.Errorf("client %s: %w", id, err))
		}
		return
	}
	s.record(invocation{ClientID: id, Summary: sum, Dials: 1})
}

// connect dials for a long-running client. At most DialConcurrency dial at
// once, and a failed dial is retried with backoff, as participant.Follow does:
// hundreds of Kafka clients (each a producer and a consumer) connecting in
// the same instant overwhelm an embedded broker on a small machine, which
// real devices, coming online over time, would not do.
func (s *session) connect(ctx context.Context, addr, id string) (channel.Client, error) {
	select {
	case s.dialGate <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-s.dialGate }()
	backoff := 250 * time.Millisecond
	for attempt := 1; ; attempt++ {
		ch, err := s.dial(ctx, addr, id)
		if err == nil || attempt == dialAttempts || ctx.Err() != nil {
			return ch, err
		}
		s.log.Warn("client dial failed; retrying", "client_id", id, "attempt", attempt, "err", err, "backoff", backoff)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff *= 2
	}
}

// dialAttempts bounds connect's attempts.
const dialAttempts = 5

func (s *session) dial(ctx context.Context, addr, id string) (channel.Client, error) {
	return s.dialer.Dial(ctx, participant.Target{Broker: addr, ClientID: id, Channel: wire(s.channel), Job: s.job})
}

// timedClient notes when each model reaches a long-running client, so that
// their propagation time can be told apart from the function clients'.
type timedClient struct {
	channel.Client
	s *session
}

func (c *timedClient) Model(ctx context.Context, minRound int64) (*fdxv1.GlobalModel, error) {
	m, err := c.Client.Model(ctx, minRound)
	if err == nil && m.GetPublishedAt() != nil && !m.GetFinal() {
		d := time.Since(m.GetPublishedAt().AsTime())
		c.s.mu.Lock()
		c.s.localProp[m.GetRound()] = max(c.s.localProp[m.GetRound()], d)
		c.s.mu.Unlock()
	}
	return m, err
}

func (s *session) record(inv invocation) {
	s.done.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.invocations = append(s.invocations, inv)
}
