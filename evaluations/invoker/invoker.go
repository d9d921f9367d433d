// Package invoker fires a deployed HTTP Cloud Function many times at once,
// as the PoC's `npm test` did for its cloud-function clients: N POSTs of the
// function's JSON payload, at most Concurrency in flight, each retried with
// exponential backoff when the platform answers 429 (too many requests, e.g.
// instances still scaling out) or 5xx (e.g. a cold start timing out), and a
// summary of the status codes and latencies.
package invoker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// maxBody caps how much of a response body an Outcome keeps.
const maxBody = 64 << 10

// Config describes a batch of invocations.
type Config struct {
	// URL is the function's HTTPS trigger.
	URL string
	// N is the number of invocations.
	N int
	// Concurrency bounds invocations in flight (default 10).
	Concurrency int
	// Body returns invocation i's JSON payload.
	Body func(i int) ([]byte, error)
	// Header is added to every request (e.g. Authorization for a function
	// that requires authentication).
	Header http.Header
	// MaxAttempts per invocation, the first included (default 5).
	MaxAttempts int
	// Backoff is the wait before the first retry (default 1 s); it doubles
	// with each retry, up to MaxBackoff (default 30 s), with up to 50%
	// random jitter so retries of many invocations spread out. A
	// Retry-After header, when longer, wins (still capped by MaxBackoff).
	Backoff    time.Duration
	MaxBackoff time.Duration
	// AttemptTimeout bounds one attempt (0: none beyond ctx). It should
	// exceed the function's own timeout.
	AttemptTimeout time.Duration
	// Client sends the requests (default: a client without a timeout of
	// its own, since attempts have AttemptTimeout).
	Client *http.Client
	// Log receives one line per failed attempt; nil discards.
	Log *slog.Logger
}

// Outcome is one invocation's result.
type Outcome struct {
	Index int `json:"index"`
	// Status is the final answer's HTTP status; 0 when no answer came.
	Status   int `json:"status"`
	Attempts int `json:"attempts"`
	// LatencyMs runs from the first attempt's start to the final answer,
	// retries and backoff included; LastMs is the final attempt alone.
	LatencyMs float64 `json:"latency_ms"`
	LastMs    float64 `json:"last_attempt_ms"`
	Err       string  `json:"error,omitempty"`
	// Body is the final answer's body (the function's JSON summary).
	Body string `json:"body,omitempty"`
}

// OK reports whether the invocation ended with a 2xx answer.
func (o Outcome) OK() bool { return o.Status >= 200 && o.Status < 300 }

// Summary aggregates a batch.
type Summary struct {
	Invocations int `json:"invocations"`
	Succeeded   int `json:"succeeded"`
	Failed      int `json:"failed"`
	Attempts    int `json:"attempts"`
	Retries     int `json:"retries"`
	// FinalStatus counts invocations by final status (0: no answer);
	// AttemptStatus counts every attempt.
	FinalStatus   map[int]int `json:"final_status"`
	AttemptStatus map[int]int `json:"attempt_status"`
	// Latency over successful invocations, retries included.
	Latency Percentiles `json:"latency_ms"`
	WallMs  float64     `json:"wall_ms"`
	// MaxInFlight is the most requests that were in flight at once.
	MaxInFlight int `json:"max_inflight"`
}

// Percentiles of a latency distribution, in milliseconds.
type Percentiles struct {
	Min  float64 `json:"min"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

func (c *Config) defaults() error {
	if c.URL == "" {
		return errors.New("no function URL")
	}
	if c.N < 0 {
		return fmt.Errorf("%d invocations: want 0 or more", c.N)
	}
	if c.Body == nil {
		return errors.New("no payload")
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 10
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 5
	}
	if c.Backoff <= 0 {
		c.Backoff = time.Second
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 30 * time.Second
	}
	if c.Client == nil {
		c.Client = &http.Client{Transport: &http.Transport{
			Proxy: http.ProxyFromEnvironment, MaxIdleConnsPerHost: c.Concurrency, IdleConnTimeout: 90 * time.Second,
		}}
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return nil
}

// batch is one Run's shared state.
type batch struct {
	cfg      Config
	inFlight atomic.Int64
	peak     atomic.Int64
	mu       sync.Mutex
	attempts map[int]int
}

// Run invokes the function cfg.N times and waits for every invocation. An
// invocation that fails is reported in its Outcome, not as an error; the
// error is for a bad Config or a cancelled ctx.
func Run(ctx context.Context, cfg Config) (*Summary, []Outcome, error) {
	if err := cfg.defaults(); err != nil {
		return nil, nil, fmt.Errorf("invoker: %w", err)
	}
	b := &batch{cfg: cfg, attempts: map[int]int{}}
	start := time.Now()
	out := make([]Outcome, cfg.N)
	sem := make(chan struct{}, cfg.Concurrency)
	var wg sync.WaitGroup
	for i := range cfg.N {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			out[i] = Outcome{Index: i, Err: ctx.Err().Error()}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out[i] = b.invoke(ctx, i)
		}()
	}
	wg.Wait()
	sum := summarize(out, b.attempts, time.Since(start), int(b.peak.Load()))
	if err := ctx.Err(); err != nil {
		return sum, out, fmt.Errorf("invoker: %w", err)
	}
	return sum, out, nil
}

// invoke runs one invocation's attempts.
func (b *batch) invoke(ctx context.Context, i int) Outcome {
	o := Outcome{Index: i}
	body, err := b.cfg.Body(i)
	if err != nil {
		o.Err = fmt.Sprintf("payload: %v", err)
		return o
	}
	start := time.Now()
	wait := b.cfg.Backoff
	for o.Attempts < b.cfg.MaxAttempts {
		o.Attempts++
		attemptStart := time.Now()
		status, resp, retryAfter, err := b.attempt(ctx, body)
		o.LastMs = ms(time.Since(attemptStart))
		o.Status, o.Body, o.Err = status, resp, ""
		if err != nil {
			o.Err = err.Error()
		}
		b.mu.Lock()
		b.attempts[status]++
		b.mu.Unlock()
		if !retryable(status, err) || ctx.Err() != nil {
			break
		}
		if o.Attempts == b.cfg.MaxAttempts {
			break
		}
		d := wait + time.Duration(rand.Int64N(int64(wait)/2+1))
		d = min(max(d, retryAfter), b.cfg.MaxBackoff)
		b.cfg.Log.Warn("invocation failed; retrying", "index", i, "attempt", o.Attempts, "status", status, "err", err, "backoff", d)
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
		if ctx.Err() != nil {
			break
		}
		wait = min(2*wait, b.cfg.MaxBackoff)
	}
	o.LatencyMs = ms(time.Since(start))
	if !o.OK() && o.Err == "" {
		o.Err = fmt.Sprintf("HTTP %d: %s", o.Status, strings.TrimSpace(o.Body))
	}
	return o
}

// attempt POSTs once; status 0 means no answer (err says why).
func (b *batch) attempt(ctx context.Context, body []byte) (status int, resp string, retryAfter time.Duration, err error) {
	n := b.inFlight.Add(1)
	defer b.inFlight.Add(-1)
	for {
		p := b.peak.Load()
		if n <= p || b.peak.CompareAndSwap(p, n) {
			break
		}
	}
	if b.cfg.AttemptTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, b.cfg.AttemptTimeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return 0, "", 0, fmt.Errorf("request: %w", err)
	}
	for k, vs := range b.cfg.Header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	req.Header.Set("Content-Type", "application/json")
	r, err := b.cfg.Client.Do(req)
	if err != nil {
		return 0, "", 0, err // a *url.Error: it names the method and URL
	}
	defer r.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
	if err != nil {
		return r.StatusCode, string(rb), 0, fmt.Errorf("read answer: %w", err)
	}
	return r.StatusCode, string(rb), parseRetryAfter(r.Header.Get("Retry-After")), nil
}

// retryable says whether an attempt is worth repeating: no answer at all,
// 429, or a server error. Other 4xx answers (bad payload, 409 round
// closed) would fail the same way again.
func retryable(status int, err error) bool {
	switch {
	case status == 0:
		return err != nil
	case status == http.StatusTooManyRequests:
		return true
	case status >= 500 && status != http.StatusNotImplemented:
		return true
	}
	return false
}

// parseRetryAfter reads a Retry-After header given in seconds (the form
// Google's front ends send); dates are ignored.
func parseRetryAfter(v string) time.Duration {
	s, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || s < 0 {
		return 0
	}
	return time.Duration(s) * time.Second
}

func summarize(out []Outcome, attempts map[int]int, wall time.Duration, peak int) *Summary {
	s := &Summary{Invocations: len(out), FinalStatus: map[int]int{}, AttemptStatus: attempts, WallMs: ms(wall), MaxInFlight: peak}
	var lat []float64
	for _, o := range out {
		s.FinalStatus[o.Status]++
		s.Attempts += o.Attempts
		s.Retries += max(o.Attempts-1, 0)
		if o.OK() {
			s.Succeeded++
			lat = append(lat, o.LatencyMs)
		} else {
			s.Failed++
		}
	}
	s.Latency = percentiles(lat)
	return s
}

// percentiles uses the nearest-rank method.
func percentiles(v []float64) Percentiles {
	if len(v) == 0 {
		return Percentiles{}
	}
	v = slices.Clone(v)
	slices.Sort(v)
	rank := func(p float64) float64 {
		i := int(p*float64(len(v))+0.999999) - 1
		return v[min(max(i, 0), len(v)-1)]
	}
	var sum float64
	for _, x := range v {
		sum += x
	}
	return Percentiles{Min: v[0], P50: rank(0.5), P90: rank(0.9), P99: rank(0.99), Max: v[len(v)-1], Mean: sum / float64(len(v))}
}

// WriteSummary writes s for a person: counts, status codes, latencies.
func WriteSummary(w io.Writer, s *Summary) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%d invocations in %.1f s: %d succeeded, %d failed; %d attempts (%d retries), at most %d in flight\n",
		s.Invocations, s.WallMs/1000, s.Succeeded, s.Failed, s.Attempts, s.Retries, s.MaxInFlight)
	b.WriteString("\n| status | final | all attempts |\n|---|--:|--:|\n")
	codes := map[int]bool{}
	for c := range s.FinalStatus {
		codes[c] = true
	}
	for c := range s.AttemptStatus {
		codes[c] = true
	}
	sorted := make([]int, 0, len(codes))
	for c := range codes {
		sorted = append(sorted, c)
	}
	slices.Sort(sorted)
	for _, c := range sorted {
		name := strconv.Itoa(c)
		if c == 0 {
			name = "no answer"
		} else if t := http.StatusText(c); t != "" {
			name += " " + t
		}
		fmt.Fprintf(&b, "| %s | %d | %d |\n", name, s.FinalStatus[c], s.AttemptStatus[c])
	}
	if l := s.Latency; s.Succeeded > 0 {
		fmt.Fprintf(&b, "\nLatency of successful invocations (retries included): min %.0f ms, p50 %.0f ms, p90 %.0f ms, p99 %.0f ms, max %.0f ms, mean %.0f ms\n",
			l.Min, l.P50, l.P90, l.P99, l.Max, l.Mean)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
